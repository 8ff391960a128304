//! The `kafka` connector against a real Kafka-protocol broker (tansu, on loopback), through the
//! real binaries: exactly-once through kill -9 of the worker and of the daemon, crash points
//! inside the sink's commit, restore at another parallelism, formats, metadata columns, idle
//! partitions, group offsets, start-up errors and a broker outage.
//!
//! The output topics are read with the harness's transaction-aware reader (see
//! `harness/kafka.rs`): what it calls committed is what a `read_committed` consumer of Kafka
//! reads.

mod harness;
#[path = "harness/kafka.rs"]
mod kafka_broker;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{S3Server, TestDaemon, arroyod_bin, signal, wait_exit, wait_until};
use kafka_broker::{Produce, Tansu, TxnLog};
use serde_json::{Value, json};

/// Checkpoints are taken this often.
/// How long a condition may take here: a restart of a worker, a broker round trip and a
/// checkpoint, on a loaded 2-core box while other test binaries run (the harness's 30 s was
/// exceeded there by the crash test).
const DEADLINE: Duration = Duration::from_secs(90);

const INTERVAL: &str = "300ms";
/// Input partitions.
const PARTITIONS: i32 = 4;
/// Event time of input row `i`: 50 ms apart from midnight, so 20 rows per 1-second window.
const STEP_MS: i64 = 50;
/// 2026-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_767_225_600_000;

/// `i` milliseconds after [`BASE_MS`], as the sink writes timestamps.
fn time_text(ms: i64) -> String {
    let (s, milli) = (ms / 1000, ms % 1000);
    let text = format!(
        "2026-01-01T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
    if milli == 0 {
        text
    } else {
        format!("{text}.{milli:03}")
    }
}

/// Input row `i`: key `i % 3`, value `i`, on partition `i % 4`, with its event time both in
/// the record's timestamp and in the `at` field.
fn row(i: i64) -> Produce {
    Produce {
        partition: (i % PARTITIONS as i64) as i32,
        key: Some(format!("k{}", i % 3)),
        value: json!({"k": i % 3, "n": i, "at": time_text(i * STEP_MS)}).to_string(),
        timestamp_ms: Some(BASE_MS + i * STEP_MS),
    }
}

fn rows(range: std::ops::Range<i64>) -> Vec<Produce> {
    range.map(row).collect()
}

/// One row per input partition an hour ahead: every window of the rows before closes.
fn far_ahead() -> Vec<Produce> {
    (0..PARTITIONS as i64).map(|p| row(72_000 + p)).collect()
}

/// The windowed counts rows `0..n` must give: (window start, k) -> (rows, sum of n).
fn expected_windows(n: i64) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let start = time_text(i * STEP_MS / 1000 * 1000);
        let e = out.entry((start, i % 3)).or_insert((0, 0));
        e.0 += 1;
        e.1 += i;
    }
    out
}

/// The windowed counts in the output, failing on a window seen twice.
fn windows(log: &TxnLog) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for v in log.values() {
        let key = (
            v["w"]["start"].as_str().unwrap().to_string(),
            v["k"].as_i64().unwrap(),
        );
        let counts = (v["rows"].as_i64().unwrap(), v["total"].as_i64().unwrap());
        assert!(
            out.insert(key.clone(), counts).is_none(),
            "window {key:?} is in the output twice"
        );
    }
    out
}

fn source_table(broker: &Tansu, name: &str, topic: &str, columns: &str, extra: &str) -> String {
    format!(
        "CREATE TABLE {name} ({columns}) WITH (connector = 'kafka', type = 'source', \
         bootstrap_servers = '{}', topic = '{topic}', format = 'json', \
         'source.offset' = 'earliest'{extra});\n",
        broker.bootstrap()
    )
}

fn sink_table(broker: &Tansu, name: &str, topic: &str, extra: &str) -> String {
    format!(
        "CREATE TABLE {name} WITH (connector = 'kafka', type = 'sink', bootstrap_servers = '{}', \
         topic = '{topic}', format = 'json'{extra});\n",
        broker.bootstrap()
    )
}

/// Submits `sql` at `parallelism` with checkpoints every [`INTERVAL`]; the pipeline's id.
fn submit(d: &TestDaemon, name: &str, sql: &str, parallelism: u32) -> String {
    let path = d.dir.path().join(format!("{name}.sql"));
    std::fs::write(&path, sql).unwrap();
    let p = parallelism.to_string();
    let out = d.ctl_ok(&[
        "submit",
        path.to_str().unwrap(),
        "--name",
        name,
        "--parallelism",
        &p,
        "--checkpoint-interval",
        INTERVAL,
    ]);
    out.split_whitespace().last().unwrap().to_string()
}

/// Waits until the committed output of `topic` satisfies `done`; returns the log. On time
/// out, fails with what the topic holds and the end of the daemon's log.
fn wait_output(
    logs: impl Fn() -> String,
    broker: &Tansu,
    topic: &str,
    partitions: i32,
    what: &str,
    done: impl Fn(&TxnLog) -> bool,
) -> TxnLog {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = broker.read(topic, partitions);
        if done(&log) {
            return log;
        }
        if Instant::now() > deadline {
            let daemon = logs();
            let tail: Vec<&str> = daemon.lines().rev().take(60).collect();
            panic!(
                "timed out waiting for {what}: {} committed, {} aborted, {} open in {topic}\n--- daemon log (end) ---\n{}",
                log.committed.len(),
                log.aborted.len(),
                log.open.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `kafka source assigned` lines of a log after byte `from`.
fn assignments(log: &str, from: usize) -> Vec<String> {
    log[from.min(log.len())..]
        .lines()
        .filter(|l| l.contains("kafka source assigned"))
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    Worker,
    Daemon,
}

/// The "done when": a 4-partition topic read at parallelism 2, counted in tumbling
/// windows, written exactly-once to another topic; kill -9 after a completed checkpoint; the
/// output holds every window exactly once and the restored sources start exactly at the
/// checkpointed offsets.
fn windows_exactly_once_through(kill: Kill) {
    let broker = Tansu::start();
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("out", 2);
    let mut d = TestDaemon::start();
    let sql = source_table(
        &broker,
        "input",
        "in",
        "k BIGINT, n BIGINT, at TIMESTAMP, WATERMARK FOR at AS at - INTERVAL '1' SECOND",
        ", 'source.group_id' = 'windows'",
    ) + &sink_table(
        &broker,
        "output",
        "out",
        ", 'sink.commit_mode' = 'exactly_once', 'sink.key_field' = 'k'",
    ) + "INSERT INTO output SELECT tumble(interval '1 second') AS w, k, count(*) AS rows, sum(n) AS total
         FROM input GROUP BY tumble(interval '1 second'), k;";
    // Phase 1: ten seconds of event time, 50 rows per partition.
    broker.produce("in", &rows(0..200));
    let id = submit(&d, "windows", &sql, 2);
    // A checkpoint completed after the sources read all of phase 1: its offsets are in the
    // group, and some windows are committed.
    let phase1: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 50)).collect();
    wait_until(DEADLINE, "a checkpoint of all of phase 1", || {
        (broker.group_offsets("windows", "in", PARTITIONS) == phase1).then_some(())
    });
    wait_output(
        || d.log(),
        &broker,
        "out",
        2,
        "the first windows",
        |l| !l.committed.is_empty(),
    );
    let before = d.log().len();
    match kill {
        Kill::Worker => {
            let pid = d.status(&id)["worker_pid"].as_u64().unwrap() as u32;
            signal(pid, "KILL");
        }
        Kill::Daemon => {
            d.kill9();
            d.restart();
        }
    }
    broker.produce("in", &rows(200..400));
    broker.produce("in", &far_ahead());
    let expected = expected_windows(400);
    let log = wait_output(
        || d.log(),
        &broker,
        "out",
        2,
        "every window",
        |l| l.committed.len() >= expected.len(),
    );
    assert_eq!(windows(&log), expected, "{kill:?}");
    assert!(log.open.is_empty(), "open transactions: {:?}", log.open);
    // The restored subtasks started exactly where the checkpoint left each partition.
    let restored = wait_until(DEADLINE, "the restored sources", || {
        let lines = assignments(&d.log(), before);
        (lines.len() == 2).then_some(lines)
    });
    for (p, offset) in &phase1 {
        let at = format!("({p}, {offset})");
        assert!(
            restored.iter().any(|l| l.contains(&at)),
            "partition {p} did not resume at {offset}: {restored:?}"
        );
    }
    assert_eq!(d.status(&id)["state"], "Running");
}

#[test]
fn windows_are_exactly_once_through_kill_9_of_the_worker() {
    windows_exactly_once_through(Kill::Worker);
}

#[test]
fn windows_are_exactly_once_through_kill_9_of_the_daemon() {
    windows_exactly_once_through(Kill::Daemon);
}

/// Rows that pass through unchanged: `n` is the row number.
fn passthrough(broker: &Tansu, from: &str, to: &str, sink_extra: &str) -> String {
    source_table(broker, "input", from, "k BIGINT, n BIGINT", "")
        + &sink_table(broker, "output", to, sink_extra)
        + "INSERT INTO output SELECT k, n FROM input;"
}

/// The `n` of every committed output row, sorted; fails on a repeat.
fn numbers_once(log: &TxnLog) -> Vec<i64> {
    let mut n: Vec<i64> = log
        .values()
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    n.sort_unstable();
    let repeats: Vec<&[i64]> = n.windows(2).filter(|w| w[0] == w[1]).collect();
    assert!(repeats.is_empty(), "rows written twice: {repeats:?}");
    n
}

/// An at-least-once sink through kill -9 of the worker after a completed checkpoint: every
/// row is in the output (rows after the checkpoint may be there twice), none is lost.
#[test]
fn the_at_least_once_sink_loses_nothing_through_kill_9_of_the_worker() {
    let broker = Tansu::start();
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("out", 1);
    broker.produce("in", &rows(0..100));
    let d = TestDaemon::start();
    let sql = passthrough(
        &broker,
        "in",
        "out",
        ", 'sink.commit_mode' = 'at_least_once'",
    );
    let id = submit(&d, "alo", &sql, 2);
    wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "the first 100 rows",
        |l| l.committed.len() >= 100,
    );
    let checkpointed = wait_until(DEADLINE, "a completed checkpoint", || {
        d.status(&id)["last_checkpoint"].as_u64().filter(|&e| e > 0)
    });
    let pid = d.status(&id)["worker_pid"].as_u64().unwrap() as u32;
    signal(pid, "KILL");
    broker.produce("in", &rows(100..200));
    let log = wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "all 200 rows",
        |l| {
            let seen: std::collections::BTreeSet<i64> = l
                .values()
                .iter()
                .map(|v| v["n"].as_i64().unwrap())
                .collect();
            seen.len() == 200
        },
    );
    assert!(log.aborted.is_empty() && log.open.is_empty(), "{log:?}");
    assert!(checkpointed > 0);
    wait_until(DEADLINE, "the restarted worker", || {
        (d.status(&id)["worker_pid"].as_u64() != Some(pid as u64)
            && d.status(&id)["state"] == "Running")
            .then_some(())
    });
}

/// A crash at each step of the exactly-once sink's commit (the `fail` crate's points, armed
/// for one crash across restarts): the restarted worker aborts or re-sends what it must, and
/// every row is committed exactly once.
#[test]
fn the_exactly_once_sink_recovers_from_a_crash_at_each_step_of_its_commit() {
    for (point, recovery) in [
        (
            "kafka_sink_before_commit",
            "sent again the records of the restored checkpoint",
        ),
        (
            "kafka_sink_after_commit",
            "records were committed before the restart",
        ),
        ("kafka_sink_mid_epoch", ""),
    ] {
        let broker = Tansu::start();
        broker.create_topic("in", PARTITIONS as u32);
        broker.create_topic("out", 1);
        broker.produce("in", &rows(0..300));
        let mut d = TestDaemon::unstarted(&[]);
        let token = d.dir.path().join("crash-once");
        std::fs::write(&token, b"").unwrap();
        d.envs.push((
            "FAILPOINTS".into(),
            format!("{point}=return({})", token.display()),
        ));
        d.restart();
        let sql = passthrough(
            &broker,
            "in",
            "out",
            ", 'sink.commit_mode' = 'exactly_once'",
        );
        let id = submit(&d, "crash", &sql, 2);
        // The restarted worker runs (and has recovered what the crash left).
        wait_until(DEADLINE, "the restarted worker", || {
            let s = d.status(&id);
            (s["generation"].as_u64() >= Some(2) && s["state"] == "Running").then_some(())
        });
        let waited = std::time::Instant::now();
        while !d.log().contains(recovery) {
            assert!(
                waited.elapsed() < DEADLINE,
                "{point}: no '{recovery}' in the daemon's log within {DEADLINE:?}:\n{}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = wait_output(
            || d.log(),
            &broker,
            "out",
            1,
            "every row",
            |l| l.committed.len() >= 300,
        );
        assert_eq!(numbers_once(&log), (0..300).collect::<Vec<_>>(), "{point}");
        assert!(!token.exists(), "{point} never fired");
        let daemon_log = d.log();
        assert!(
            daemon_log.contains(&format!("point=\"{point}\""))
                || daemon_log.contains(&format!("point={point}")),
            "no crash at {point}:\n{daemon_log}"
        );
        assert!(
            daemon_log.contains(recovery),
            "{point}: no '{recovery}' in the log:\n{daemon_log}"
        );
        if point != "kafka_sink_after_commit" {
            // The crashed run's transaction was aborted by the restarted one.
            assert!(!log.aborted.is_empty(), "{point}: nothing was aborted");
        }
        assert!(log.open.is_empty(), "{point}: open: {:?}", log.open);
        assert_eq!(d.status(&id)["state"], "Running", "{point}");
    }
}

/// `arroyod run -p P -s STATE` of `sql`, stopped later with SIGINT.
struct Run {
    child: Child,
}

impl Run {
    /// Starts it, its stderr appended to `log`.
    fn start(
        state: &std::path::Path,
        parallelism: u32,
        sql_file: &std::path::Path,
        log: &std::path::Path,
    ) -> Run {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(arroyod_bin())
            .args(["run", "-p", &parallelism.to_string(), "-s"])
            .arg(state)
            .args(["--checkpoint-interval", INTERVAL])
            .arg(sql_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting arroyod run");
        Run { child }
    }

    /// SIGINT: a final checkpoint, then exit 0.
    fn stop(mut self) {
        signal(self.child.id(), "INT");
        let status = wait_exit(&mut self.child, DEADLINE);
        assert!(status.success(), "arroyod run exited with {status}");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restores at parallelism 2 → 3 → 1: the sources split the checkpointed offsets anew and
/// the sink fences and recovers every old subtask's transactions; the output is exactly
/// once.
#[test]
fn a_restore_at_another_parallelism_resumes_every_partition_exactly() {
    let broker = Tansu::start();
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (state, file, log) = (
        dir.path().join("state"),
        dir.path().join("q.sql"),
        dir.path().join("run.log"),
    );
    std::fs::write(
        &file,
        passthrough(
            &broker,
            "in",
            "out",
            ", 'sink.commit_mode' = 'exactly_once'",
        ),
    )
    .unwrap();
    let mut produced = 0;
    for (parallelism, upto) in [(2, 200), (3, 400), (1, 600)] {
        broker.produce("in", &rows(produced..upto));
        produced = upto;
        let run = Run::start(&state, parallelism, &file, &log);
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_output(
            logs,
            &broker,
            "out",
            1,
            &format!("{upto} rows at -p {parallelism}"),
            |l| l.committed.len() >= upto as usize,
        );
        run.stop();
    }
    let log = broker.read("out", 1);
    assert_eq!(numbers_once(&log), (0..600).collect::<Vec<_>>());
    assert!(log.open.is_empty(), "open: {:?}", log.open);
}

/// raw_string in and out (at-least-once), and Debezium changes read as an updating stream
/// and written as Debezium changes (exactly-once).
#[test]
fn raw_string_and_debezium_formats_round_trip() {
    let broker = Tansu::start();
    for topic in ["lines", "lines_out", "cdc", "cdc_out"] {
        broker.create_topic(topic, 1);
    }
    let lines: Vec<Produce> = (0..20)
        .map(|i| Produce {
            partition: 0,
            key: None,
            value: format!("line {i}, not JSON"),
            timestamp_ms: Some(BASE_MS + i),
        })
        .collect();
    broker.produce("lines", &lines);
    let changes = [
        json!({"before": null, "after": {"k": 1, "n": 10}, "op": "c"}),
        json!({"before": null, "after": {"k": 2, "n": 5}, "op": "c"}),
        json!({"before": {"k": 1, "n": 10}, "after": {"k": 1, "n": 30}, "op": "u"}),
        json!({"before": {"k": 2, "n": 5}, "after": null, "op": "d"}),
    ];
    let cdc: Vec<Produce> = changes
        .iter()
        .enumerate()
        .map(|(i, v)| Produce {
            partition: 0,
            key: None,
            value: v.to_string(),
            timestamp_ms: Some(BASE_MS + i as i64),
        })
        .collect();
    broker.produce("cdc", &cdc);
    let b = broker.bootstrap();
    let sql = format!(
        "CREATE TABLE lines WITH (connector = 'kafka', type = 'source', bootstrap_servers = '{b}', topic = 'lines', format = 'raw_string', 'source.offset' = 'earliest');
         CREATE TABLE lines_out (value TEXT) WITH (connector = 'kafka', type = 'sink', bootstrap_servers = '{b}', topic = 'lines_out', format = 'raw_string');
         INSERT INTO lines_out SELECT upper(value) FROM lines;
         CREATE TABLE cdc (k BIGINT, n BIGINT) WITH (connector = 'kafka', type = 'source', bootstrap_servers = '{b}', topic = 'cdc', format = 'debezium_json', 'source.offset' = 'earliest');
         CREATE TABLE cdc_out WITH (connector = 'kafka', type = 'sink', bootstrap_servers = '{b}', topic = 'cdc_out', format = 'debezium_json', 'sink.commit_mode' = 'exactly_once');
         INSERT INTO cdc_out SELECT k, n FROM cdc;"
    );
    let d = TestDaemon::start();
    submit(&d, "formats", &sql, 1);
    let out = wait_output(
        || d.log(),
        &broker,
        "lines_out",
        1,
        "the lines",
        |l| l.committed.len() >= 20,
    );
    let texts: Vec<String> = out
        .committed
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect();
    let wanted: Vec<String> = (0..20).map(|i| format!("LINE {i}, NOT JSON")).collect();
    assert_eq!(texts, wanted);
    // The changes, applied in order, end at one row: k=1 with n=30.
    let last = wait_output(
        || d.log(),
        &broker,
        "cdc_out",
        1,
        "the changes",
        |l| l.committed.len() >= 5,
    );
    let mut state: Vec<Value> = Vec::new();
    for v in last.values() {
        match v["op"].as_str().unwrap() {
            "c" => state.push(v["after"].clone()),
            "d" => {
                let at = state
                    .iter()
                    .position(|s| *s == v["before"])
                    .expect("a deleted row");
                state.remove(at);
            }
            other => panic!("op {other}"),
        }
    }
    assert_eq!(state, vec![json!({"k": 1, "n": 30})]);
}

/// Metadata columns from each record, and a partition that never gets a record does not
/// hold the watermark (hence the windows) back once it is idle.
#[test]
fn metadata_columns_and_an_idle_partition() {
    let broker = Tansu::start();
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("meta", 1);
    broker.create_topic("counts", 1);
    // Partition 3 stays empty.
    let input: Vec<Produce> = (0..60)
        .map(|i| Produce {
            partition: (i % 3) as i32,
            ..row(i)
        })
        .collect();
    broker.produce("in", &input);
    // Every partition but 3 far ahead: only the idle partition 3 could hold windows back.
    let ahead: Vec<Produce> = (0..3)
        .map(|p| Produce {
            partition: p,
            ..row(72_000 + p as i64)
        })
        .collect();
    broker.produce("in", &ahead);
    let sql = source_table(
        &broker,
        "input",
        "in",
        "k BIGINT, n BIGINT, at TIMESTAMP, \
         off BIGINT METADATA FROM 'offset_id', part INT METADATA FROM 'partition', \
         src TEXT METADATA FROM 'topic', sent TIMESTAMP METADATA FROM 'timestamp', \
         rkey TEXT METADATA FROM 'key', \
         WATERMARK FOR at AS at - INTERVAL '1' SECOND",
        ", idle_micros = '1 second'",
    ) + &sink_table(&broker, "meta", "meta", "")
        + &sink_table(&broker, "counts", "counts", "")
        + "INSERT INTO meta SELECT n, off, part, src, sent, rkey FROM input WHERE n < 60;
           INSERT INTO counts SELECT tumble(interval '1 second') AS w, count(*) AS rows FROM input GROUP BY tumble(interval '1 second');";
    let d = TestDaemon::start();
    submit(&d, "meta", &sql, 1);
    let meta = wait_output(
        || d.log(),
        &broker,
        "meta",
        1,
        "the rows",
        |l| l.committed.len() >= 60,
    );
    let mut seen_offsets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for v in meta.values() {
        let n = v["n"].as_i64().unwrap();
        assert_eq!(v["part"], n % 3, "{v}");
        assert_eq!(v["src"], "in");
        assert_eq!(v["rkey"], format!("k{}", n % 3));
        assert_eq!(v["sent"], time_text(n * STEP_MS));
        seen_offsets
            .entry(n % 3)
            .or_default()
            .push(v["off"].as_i64().unwrap());
    }
    for offsets in seen_offsets.values_mut() {
        offsets.sort_unstable();
        assert_eq!(*offsets, (0..20).collect::<Vec<_>>());
    }
    // 60 rows in three 1-second windows: they close only if partition 3 is idle.
    let counts = wait_output(
        || d.log(),
        &broker,
        "counts",
        1,
        "the windows",
        |l| l.committed.len() >= 3,
    );
    let rows: Vec<i64> = counts
        .values()
        .iter()
        .map(|v| v["rows"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, vec![20, 20, 20]);
}

/// Offsets go to the consumer group when a checkpoint completes (not before), and a new
/// pipeline with `source.offset = 'group'` starts from them.
#[test]
fn group_offsets_are_committed_when_a_checkpoint_completes() {
    let broker = Tansu::start();
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("out", 1);
    broker.produce("in", &rows(0..100));
    let sql = source_table(
        &broker,
        "input",
        "in",
        "k BIGINT, n BIGINT",
        ", 'source.group_id' = 'readers'",
    )
    .replace("'source.offset' = 'earliest'", "'source.offset' = 'group'")
        + &sink_table(&broker, "output", "out", "")
        + "INSERT INTO output SELECT k, n FROM input;";
    let d = TestDaemon::start();
    // No group offsets yet: `group` falls back to auto.offset.reset, set to earliest here.
    let sql = sql.replace(
        "'source.group_id' = 'readers'",
        "'source.group_id' = 'readers', client_configs = 'auto.offset.reset=earliest'",
    );
    let path = d.dir.path().join("first.sql");
    std::fs::write(&path, &sql).unwrap();
    let out = d.ctl_ok(&[
        "submit",
        path.to_str().unwrap(),
        "--name",
        "first",
        "--checkpoint-interval",
        "2s",
    ]);
    let id = out.split_whitespace().last().unwrap().to_string();
    wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "the first 100 rows",
        |l| l.committed.len() >= 100,
    );
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 25)).collect();
    // Rows are out; until a checkpoint completes, nothing is committed to the group.
    let early = broker.group_offsets("readers", "in", PARTITIONS);
    if d.status(&id)["last_checkpoint"].as_u64().unwrap_or(0) == 0 {
        assert!(
            early.is_empty(),
            "committed before a checkpoint completed: {early:?}"
        );
    }
    wait_until(
        DEADLINE,
        "the group offsets of a completed checkpoint",
        || (broker.group_offsets("readers", "in", PARTITIONS) == ends).then_some(()),
    );
    d.ctl_ok(&["stop", &id]);
    broker.produce("in", &rows(100..140));
    submit(&d, "second", &sql, 2);
    let log = wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "the next 40 rows",
        |l| l.committed.len() >= 140,
    );
    assert_eq!(numbers_once(&log), (0..140).collect::<Vec<_>>());
}

/// A missing topic, a broker that does not answer, and refused credentials each fail the
/// pipeline with a message naming broker and topic, within the start-up deadline.
#[test]
fn start_up_errors_name_the_broker_and_the_topic() {
    let broker = Tansu::start();
    broker.create_topic("out", 1);
    let secured = Tansu::with_authentication();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    drop(silent);
    let cases = [
        (
            broker.bootstrap(),
            "nope",
            "",
            format!(
                "topic 'nope' does not exist on broker {}",
                broker.bootstrap()
            ),
        ),
        (
            down.clone(),
            "in",
            ", startup_timeout = '2s'",
            format!("broker {down} unreachable"),
        ),
        (
            secured.bootstrap(),
            "in",
            ", 'auth.type' = 'sasl', 'auth.mechanism' = 'SCRAM-SHA-256', 'auth.protocol' = 'SASL_PLAINTEXT', 'auth.username' = 'who', 'auth.password' = 'wrong'",
            format!("authentication with broker {} failed", secured.bootstrap()),
        ),
    ];
    for (bootstrap, topic, extra, wanted) in cases {
        let sql = format!(
            "CREATE TABLE input (n BIGINT) WITH (connector = 'kafka', type = 'source', bootstrap_servers = '{bootstrap}', topic = '{topic}', format = 'json'{extra});
             CREATE TABLE output WITH (connector = 'kafka', type = 'sink', bootstrap_servers = '{}', topic = 'out', format = 'json');
             INSERT INTO output SELECT n FROM input;",
            broker.bootstrap()
        );
        let started = Instant::now();
        let stderr = harness::query_refused(&sql);
        assert!(stderr.contains(&wanted), "wanted '{wanted}' in:\n{stderr}");
        assert!(
            stderr.contains(&format!("'{topic}'")),
            "the topic is not named:\n{stderr}"
        );
        // Well under the default start-up deadline (60 s): the error came from the check, not
        // from a timeout.
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "took {:?}",
            started.elapsed()
        );
        assert!(!stderr.contains("wrong"), "the password leaked:\n{stderr}");
    }
    // A sink's topic is checked too (at its first checkpoint when no row comes).
    let sql = source_table(&broker, "input", "out", "n BIGINT", "")
        + &sink_table(&broker, "output", "missing_out", "")
        + "INSERT INTO output SELECT n FROM input;";
    let state = tempfile::tempdir().unwrap();
    let out = harness::run_query(
        &[
            "--checkpoint-interval",
            INTERVAL,
            "-s",
            harness::path_str(state.path()),
            "-",
        ],
        &sql,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("topic 'missing_out' does not exist"),
        "{stderr}"
    );
}

/// A broker that goes away and comes back (its data on S3, on the moto server) is waited
/// for: the pipeline keeps running (no restart) and the output is exactly once.
#[test]
fn a_broker_outage_is_ridden_out() {
    let s3 = S3Server::start();
    let mut broker = Tansu::persistent(&s3);
    broker.create_topic("in", 2);
    broker.create_topic("out", 1);
    let partitions_rows = |range: std::ops::Range<i64>| -> Vec<Produce> {
        rows(range)
            .into_iter()
            .map(|mut r| {
                r.partition %= 2;
                r
            })
            .collect()
    };
    broker.produce("in", &partitions_rows(0..50));
    let d = TestDaemon::start();
    let sql = passthrough(
        &broker,
        "in",
        "out",
        ", 'sink.commit_mode' = 'exactly_once'",
    );
    let id = submit(&d, "outage", &sql, 1);
    wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "the first rows",
        |l| l.committed.len() >= 50,
    );
    let generation = d.status(&id)["generation"].clone();
    let before = d.log().len();
    broker.kill();
    wait_until(DEADLINE, "the clients to notice the outage", || {
        d.log()[before..]
            .contains("kafka client error")
            .then_some(())
    });
    broker.restart();
    broker.produce("in", &partitions_rows(50..100));
    let log = wait_output(
        || d.log(),
        &broker,
        "out",
        1,
        "every row",
        |l| l.committed.len() >= 100,
    );
    assert_eq!(numbers_once(&log), (0..100).collect::<Vec<_>>());
    let status = d.status(&id);
    assert_eq!(status["state"], "Running", "{status}");
    assert_eq!(status["generation"], generation, "the worker was restarted");
}

/// Option errors at validation: a near miss gets a "did you mean", a bad value names the
/// option, each at its line and column.
#[test]
fn option_errors_have_positions_and_suggestions() {
    let sql = "CREATE TABLE a (n BIGINT) WITH (connector = 'kafka', type = 'source',
  bootstrap_server = 'localhost:9092', topic = 't', format = 'json');
CREATE TABLE b (n BIGINT) WITH (connector = 'kafka', type = 'source', bootstrap_servers = 'localhost:9092',
  topic = 't', format = 'json', 'source.offset' = 'beginning');
CREATE TABLE c (n BIGINT) WITH (connector = 'kafak', type = 'source');
CREATE TABLE e (n BIGINT, o BIGINT METADATA FROM 'ofset_id') WITH (connector = 'kafka', type = 'source',
  bootstrap_servers = 'localhost:9092', topic = 't', format = 'json');
SELECT 1;";
    let stderr = harness::query_refused(sql);
    for wanted in [
        "2:3: error: unknown option 'bootstrap_server' for connector 'kafka' (did you mean 'bootstrap_servers'?)",
        "4:33: error: invalid value 'beginning' for option 'source.offset'",
        "unknown connector 'kafak' (did you mean 'kafka'?)",
        "6:36: error: unknown metadata 'ofset_id' (did you mean 'offset_id'?)",
    ] {
        assert!(stderr.contains(wanted), "wanted '{wanted}' in:\n{stderr}");
    }
}
