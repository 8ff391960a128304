//! What a sink's written output becomes when its pipeline starts over without state (Arroyo's
//! "restart without state", `arroyoctl restart --no-state`): the new run reads its sources
//! from their start and writes everything again, with none of the previous run's checkpoints.
//!
//! For an at-least-once sink that is more of what it may always do: send rows again. For an
//! exactly-once sink it breaks the promise, since what the previous runs committed stays
//! where readers see it: the new run writes over it or beside it. The daemon refuses such a
//! restart unless forced, and says in either case what happens to each sink.

use super::filesystem::FileSystemSinkConfig;
use super::http::HttpConfig;
use super::kafka::Role;
use super::{ConnectorConfig, ConnectorTable};

/// What a run without state does to a sink's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    /// Exactly-once output the new run writes over: `single_file` creates its file again,
    /// and a `filesystem` sink with serial names commits part files under the names the
    /// previous runs used.
    Overwrites,
    /// Exactly-once output the new run adds to, so that readers see both runs: the part files
    /// of a `filesystem` sink with unique names, the transactions of an `exactly_once` Kafka
    /// sink.
    AddsTo,
    /// At-least-once output (a Kafka sink in `at_least_once` mode, a webhook): the new run
    /// sends again what the previous ones sent.
    SendsAgain,
    /// The daemon's output log (a bare SELECT, a `stdout` sink): the new run's rows follow a
    /// mark that says it started without state.
    Marked,
    /// Nothing is kept (`blackhole`).
    Discards,
}

/// A sink of a planned query: its table, where it writes, and what a run without state does
/// to its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSink {
    /// The table written to.
    pub table: String,
    /// Its connector, and where it writes, as a message may show it (no credentials).
    pub target: String,
    pub rerun: Rerun,
}

impl PlannedSink {
    /// True when a run without state mixes its output with what earlier runs committed.
    pub fn breaks_exactly_once(&self) -> bool {
        matches!(self.rerun, Rerun::Overwrites | Rerun::AddsTo)
    }

    /// What the new run does to this sink's output, in a sentence.
    pub fn describe(&self) -> String {
        let what = match self.rerun {
            Rerun::Overwrites => {
                "exactly-once: the new run writes over the output the earlier runs committed"
            }
            Rerun::AddsTo => {
                "exactly-once: the new run's output is committed beside what the earlier runs committed, which stays; readers see both"
            }
            Rerun::SendsAgain => {
                "at-least-once: the new run sends again what the earlier runs sent"
            }
            Rerun::Marked => {
                "the output log goes on; the new run's rows follow a mark that it started without state (`tail --json`: \"fresh\": true)"
            }
            Rerun::Discards => "nothing is kept",
        };
        format!("sink {} ({}): {what}", self.table, self.target)
    }
}

/// What a run without state does to the output of sink `table`.
pub fn rerun(table: &ConnectorTable) -> PlannedSink {
    let (target, rerun) = match &table.config {
        ConnectorConfig::SingleFile { path, .. } => {
            (format!("single_file {path}"), Rerun::Overwrites)
        }
        ConnectorConfig::FileSystemSink(c) => filesystem(c),
        ConnectorConfig::Kafka(c) => {
            let exactly_once = matches!(&c.role, Role::Sink(o) if o.exactly_once);
            let mode = if exactly_once {
                "exactly_once"
            } else {
                "at_least_once"
            };
            let rerun = if exactly_once {
                Rerun::AddsTo
            } else {
                Rerun::SendsAgain
            };
            (format!("kafka topic {}, {mode}", c.topic), rerun)
        }
        ConnectorConfig::Http(HttpConfig::Webhook(c)) => {
            (format!("webhook {}", c.shown()), Rerun::SendsAgain)
        }
        ConnectorConfig::Preview => ("the output log".to_string(), Rerun::Marked),
        ConnectorConfig::Stdout { .. } => ("stdout, in the output log".to_string(), Rerun::Marked),
        ConnectorConfig::Blackhole => ("blackhole".to_string(), Rerun::Discards),
        // Not a sink: planning never writes into a source table.
        ConnectorConfig::Impulse(_)
        | ConnectorConfig::Nexmark(_)
        | ConnectorConfig::FileSource(_)
        | ConnectorConfig::FileSystemSource(_)
        | ConnectorConfig::Http(_) => ("a source".to_string(), Rerun::Discards),
    };
    PlannedSink {
        table: table.name.clone(),
        target,
        rerun,
    }
}

fn filesystem(c: &FileSystemSinkConfig) -> (String, Rerun) {
    let location = c.location();
    let target = format!("filesystem {}", location.display(location.prefix()));
    if c.serial_names() {
        (target, Rerun::Overwrites)
    } else {
        (target, Rerun::AddsTo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan;

    fn reruns(sql: &str) -> Vec<(String, Rerun)> {
        plan(sql)
            .unwrap()
            .sinks
            .into_iter()
            .map(|s| (s.table, s.rerun))
            .collect()
    }

    const SOURCE: &str = "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');";

    #[test]
    fn each_sink_says_what_a_run_without_state_does_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let sql = format!(
            "{SOURCE}
             CREATE TABLE one (counter BIGINT) WITH (connector = 'single_file', path = '{d}/one.json', format = 'json', type = 'sink');
             CREATE TABLE serial (counter BIGINT) WITH (connector = 'filesystem', path = '{d}/serial', format = 'json', type = 'sink', 'filename.strategy' = 'serial');
             CREATE TABLE unique_names (counter BIGINT) WITH (connector = 'filesystem', path = '{d}/unique', format = 'json', type = 'sink');
             CREATE TABLE k_once (counter BIGINT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:9', topic = 't1', format = 'json', type = 'sink', 'sink.commit_mode' = 'exactly_once');
             CREATE TABLE k_least (counter BIGINT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:9', topic = 't2', format = 'json', type = 'sink');
             CREATE TABLE hook (counter BIGINT) WITH (connector = 'webhook', endpoint = 'http://127.0.0.1:9/in', format = 'json');
             CREATE TABLE out (counter BIGINT) WITH (connector = 'stdout', format = 'json');
             CREATE TABLE nothing (counter BIGINT) WITH (connector = 'blackhole');
             INSERT INTO one SELECT counter FROM impulse;
             INSERT INTO serial SELECT counter FROM impulse;
             INSERT INTO unique_names SELECT counter FROM impulse;
             INSERT INTO k_once SELECT counter FROM impulse;
             INSERT INTO k_least SELECT counter FROM impulse;
             INSERT INTO hook SELECT counter FROM impulse;
             INSERT INTO out SELECT counter FROM impulse;
             INSERT INTO nothing SELECT counter FROM impulse;
             SELECT counter FROM impulse;"
        );
        let got = reruns(&sql);
        let want = [
            ("one", Rerun::Overwrites),
            ("serial", Rerun::Overwrites),
            ("unique_names", Rerun::AddsTo),
            ("k_once", Rerun::AddsTo),
            ("k_least", Rerun::SendsAgain),
            ("hook", Rerun::SendsAgain),
            ("out", Rerun::Marked),
            ("nothing", Rerun::Discards),
            ("preview", Rerun::Marked),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(t, r)| (t.to_string(), *r))
                .collect::<Vec<_>>()
        );
        let described = plan(&sql).unwrap().sinks[3].describe();
        assert!(
            described.starts_with("sink k_once (kafka topic t1, exactly_once): exactly-once"),
            "{described}"
        );
    }
}
