//! The HTTP connectors (`sse`, `websocket`, `polling_http`, `webhook`) through the real
//! binaries, against real servers on loopback inside the test (see `harness/http.rs`):
//! connections dropped and refused and coming back, resumption from the checkpointed
//! position, retries of 5xx, refusals, secrets kept out of the logs, and bad options
//! refused with their positions.

mod harness;
#[path = "harness/http.rs"]
mod http_server;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{Lines, TestDaemon, arroyod_bin, query_refused, signal_group, wait_exit, wait_until};
use http_server::{HookServer, PollServer, SseServer, Step, WsServer};
use serde_json::Value;

/// How long anything that normally takes a second may take on a loaded machine.
const LONG: Duration = Duration::from_secs(90);

/// A secret the tests put into headers and URLs, which no log may show.
const SECRET: &str = "s3cr3t-t0ken";

/// An `arroyod run` of a query file, its stdout read line by line, its log in a file.
struct Run {
    child: Child,
    rows: Lines,
    log: PathBuf,
}

impl Run {
    fn start(dir: &Path, state: &str, parallelism: usize, sql: &str) -> Run {
        let query = dir.join(format!("{state}.sql"));
        std::fs::write(&query, sql).unwrap();
        let log = dir.join(format!("{state}-{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(arroyod_bin())
            .args(["run", "-p", &parallelism.to_string(), "-s"])
            .arg(dir.join(state))
            .arg(&query)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // A process group of its own, like a shell job: Ctrl-C signals the whole group.
            .process_group(0)
            .spawn()
            .unwrap();
        let rows = Lines::new(child.stdout.take().unwrap());
        Run { child, rows, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `n` rows were printed; they, parsed.
    fn wait_rows(&mut self, n: usize) -> Vec<Value> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("arroyod run exited ({status}):\n{}", self.log());
        }
        let rows = &mut self.rows;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rows.wait_for(n, LONG).to_vec()
        })) {
            Ok(lines) => parse(&lines),
            Err(_) => panic!("no {n} rows:\n{}", self.log()),
        }
    }

    /// Ctrl-C: a final checkpoint, then exit 0. Every row it printed, parsed.
    fn interrupt(mut self) -> (Vec<Value>, String) {
        signal_group(self.child.id(), "INT");
        let status = wait_exit(&mut self.child, LONG);
        assert!(status.success(), "{status}:\n{}", self.log());
        let rows = parse(self.rows.drain(LONG));
        (rows, self.log())
    }

    /// Waits for the run to end by itself: its status, rows and log.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<Value>, String) {
        let status = wait_exit(&mut self.child, LONG);
        let rows = parse(self.rows.drain(LONG));
        (status, rows, self.log())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn numbers(rows: &[Value], field: &str) -> Vec<u64> {
    rows.iter().map(|r| r[field].as_u64().unwrap()).collect()
}

/// The log must not show the secret put into headers and URLs.
fn assert_no_secret(log: &str) {
    assert!(!log.contains(SECRET), "the log shows a secret:\n{log}");
}

#[test]
fn sse_reconnects_with_last_event_id_without_loss_or_repeat() {
    // 200 events, every 4th of type `other` (filtered out). The first connection breaks off
    // after event 60 (an `other`: its id must count), the next is reset, the next answered
    // 503, the next ends cleanly after 130, the last holds.
    let server = SseServer::start(
        200,
        4,
        Duration::ZERO,
        vec![
            Step::BreakAfter(60),
            Step::Reset,
            Step::Status(503),
            Step::EndAfter(130),
            Step::Hold,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE events (n BIGINT) WITH (
            connector = 'sse',
            endpoint = '{}',
            events = 'tick',
            headers = 'Authorization: Bearer {SECRET}, X-Test: yes',
            format = 'json'
        );
        SELECT n FROM events;",
        server.server.url(&format!("/events?token={SECRET}"))
    );
    // At parallelism 2: subtask 1 idles.
    let mut run = Run::start(dir.path(), "s", 2, &sql);
    let expected: Vec<u64> = (1..=200).filter(|n| n % 4 != 0).collect();
    run.wait_rows(expected.len());
    let (rows, log) = run.interrupt();
    assert_eq!(numbers(&rows, "n"), expected, "every tick once, in order");
    let requests = server.requests();
    let resumed: Vec<Option<String>> = requests.iter().map(|r| r.header("last-event-id")).collect();
    assert_eq!(
        resumed[..5],
        [
            None,
            Some("60".into()),
            Some("60".into()),
            Some("60".into()),
            Some("130".into())
        ],
        "{requests:#?}"
    );
    for r in &requests {
        assert_eq!(
            r.header("authorization").as_deref(),
            Some(&*format!("Bearer {SECRET}"))
        );
        assert_eq!(r.header("x-test").as_deref(), Some("yes"));
        assert_eq!(r.header("accept").as_deref(), Some("text/event-stream"));
    }
    assert!(log.contains("retrying"), "{log}");
    assert_no_secret(&log);
}

#[test]
fn sse_resumes_after_the_checkpointed_event_when_run_again() {
    // An endless stream, one event each 20 ms.
    let server = SseServer::start(1_000_000, 0, Duration::from_millis(20), vec![Step::Hold]);
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE events (n BIGINT) WITH (connector = 'sse', endpoint = '{}');
         SELECT n FROM events;",
        server.server.url("/events")
    );
    let mut first = Run::start(dir.path(), "state", 1, &sql);
    first.wait_rows(20);
    let (first_rows, _) = first.interrupt();
    let first_rows = numbers(&first_rows, "n");
    let last = *first_rows.last().unwrap();
    let mut second = Run::start(dir.path(), "state", 1, &sql);
    second.wait_rows(20);
    let (second_rows, _) = second.interrupt();
    let all: Vec<u64> = first_rows
        .iter()
        .chain(&numbers(&second_rows, "n"))
        .copied()
        .collect();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].header("last-event-id"), Some(last.to_string()));
}

#[test]
fn websocket_subscribes_again_after_a_drop_and_answers_pings() {
    // The first connection sends 30 messages and breaks off without a Close frame, the next
    // is reset, the last sends 30 and holds.
    let server = WsServer::start(2, vec![Step::BreakAfter(30), Step::Reset, Step::Hold]);
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE feed (conn BIGINT, n BIGINT) WITH (
            connector = 'websocket',
            endpoint = '{}',
            headers = 'X-Api-Key: {SECRET}',
            'subscription_messages.0' = '{{\"subscribe\": \"a\"}}',
            'subscription_messages.1' = '{{\"subscribe\": \"b\"}}'
        );
        SELECT conn, n FROM feed;",
        server.url(&format!("/feed?key={SECRET}"))
    );
    let mut run = Run::start(dir.path(), "s", 1, &sql);
    run.wait_rows(60);
    let (rows, log) = run.interrupt();
    let got: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r["conn"].as_u64().unwrap(), r["n"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(u64, u64)> = (1..=30)
        .map(|n| (0, n))
        .chain((1..=30).map(|n| (2, n)))
        .collect();
    assert_eq!(got, expected);
    let connections = server.connections();
    for i in [0, 2] {
        let c = &connections[i];
        assert_eq!(
            c.subscriptions,
            ["{\"subscribe\": \"a\"}", "{\"subscribe\": \"b\"}"],
            "connection {i}"
        );
        assert_eq!(c.pongs, 2, "connection {i} answered both pings");
        let headers = c.headers.as_ref().unwrap();
        assert_eq!(headers.get("x-api-key").unwrap(), SECRET);
    }
    assert_no_secret(&log);
}

#[test]
fn polling_http_changed_holds_across_a_stop_and_a_new_run() {
    // Every third answer is a 500: a warning, and the polls go on.
    let server = PollServer::start(
        "{\"v\": 1}",
        vec![Step::Status(200), Step::Status(200), Step::Status(500)],
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE state (v BIGINT) WITH (
            connector = 'polling_http',
            endpoint = '{}',
            poll_interval_ms = '50',
            emit_behavior = 'changed'
        );
        SELECT v FROM state;",
        server.server.url("/state")
    );
    let mut first = Run::start(dir.path(), "state", 1, &sql);
    first.wait_rows(1);
    let polls = server.polls();
    wait_until(LONG, "more polls of an unchanged body", || {
        (server.polls() >= polls + 6).then_some(())
    });
    let (rows, log) = first.interrupt();
    assert_eq!(
        numbers(&rows, "v"),
        [1],
        "an unchanged body is emitted once"
    );
    assert!(log.contains("500"), "the 500 is a warning:\n{log}");

    // The same state: the body it emitted last is still the same, so nothing comes...
    let mut second = Run::start(dir.path(), "state", 1, &sql);
    let polls = server.polls();
    wait_until(LONG, "the new run to poll", || {
        (server.polls() >= polls + 6).then_some(())
    });
    // ...until it changes.
    server.set_body("{\"v\": 2}");
    second.wait_rows(1);
    let (rows, _) = second.interrupt();
    assert_eq!(numbers(&rows, "v"), [2]);
}

#[test]
fn polling_http_sends_its_method_body_and_headers_and_emits_every_answer() {
    let server = PollServer::start("first line\nsecond line", vec![Step::Status(200)]);
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE answers WITH (
            connector = 'polling_http',
            endpoint = '{}',
            method = 'POST',
            body = '{{\"query\": 1}}',
            headers = 'Authorization: {SECRET}',
            poll_interval_ms = '20',
            format = 'raw_string'
        );
        SELECT value FROM answers;",
        server.server.url("/q")
    );
    let mut run = Run::start(dir.path(), "s", 1, &sql);
    run.wait_rows(3);
    let (rows, log) = run.interrupt();
    for r in &rows {
        assert_eq!(
            r["value"], "first line\nsecond line",
            "a body is one raw row"
        );
    }
    let seen = server.seen.lock().unwrap().clone();
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.body, "{\"query\": 1}");
        assert_eq!(s.header("authorization").as_deref(), Some(SECRET));
    }
    assert_no_secret(&log);
}

/// Counters of the rows a webhook receiver was delivered, each request a JSON array.
fn delivered_counters(server: &HookServer) -> Vec<u64> {
    let mut counters: Vec<u64> = server
        .delivered()
        .iter()
        .flat_map(|s| {
            let rows: Vec<Value> = serde_json::from_str(&s.body).unwrap();
            rows.into_iter()
                .map(|r| r["counter"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    counters.sort();
    counters
}

#[test]
fn webhook_retries_5xx_429_and_dropped_connections_and_delivers_every_row_once() {
    let server = HookServer::start(
        vec![
            Step::Status(503),
            Step::Status(503),
            Step::Reset,
            Step::Status(429),
            Step::Status(500),
            Step::Status(200),
        ],
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '20000', message_count = '500');
         CREATE TABLE hook WITH (
            connector = 'webhook',
            endpoint = '{}',
            headers = 'Authorization: Bearer {SECRET}',
            'batch.max_rows' = '25',
            'batch.max_delay' = '50ms',
            max_in_flight = '4'
         );
         INSERT INTO hook SELECT counter FROM impulse;",
        server.server.url(&format!("/hook/{SECRET}"))
    );
    let run = Run::start(dir.path(), "s", 2, &sql);
    let (status, rows, log) = run.finish();
    assert!(status.success(), "{status}:\n{log}");
    assert!(rows.is_empty());
    // Each row delivered once: no request was answered 2xx and then sent again.
    assert_eq!(delivered_counters(&server), (0..500).collect::<Vec<_>>());
    let requests = server.requests();
    assert!(
        requests.len() > 5,
        "the failures were retried: {requests:#?}"
    );
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("authorization"), Some(format!("Bearer {SECRET}")));
    }
    // Retries are warnings: the first failure answered is logged at once (which of the
    // concurrent requests' failures comes back first varies), the rest counted.
    assert!(
        log.contains("a webhook request was not delivered; retrying")
            && ["503", "429", "500", "connection"]
                .iter()
                .any(|e| log.contains(e)),
        "retries are warnings:\n{log}"
    );
    assert_no_secret(&log);
}

#[test]
fn a_webhook_refusal_fails_the_pipeline_naming_the_status() {
    let server = HookServer::start(vec![Step::Status(400)], "field 'counter' is not allowed");
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '100');
         CREATE TABLE hook WITH (connector = 'webhook', endpoint = '{}', max_in_flight = '1');
         INSERT INTO hook SELECT counter FROM impulse;",
        server.server.url(&format!("/hook?token={SECRET}"))
    );
    let run = Run::start(dir.path(), "s", 1, &sql);
    let (status, _, log) = run.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    let shown = format!(
        "http://127.0.0.1:{} answered 400 Bad Request: field 'counter' is not allowed",
        server.server.port
    );
    assert!(log.contains(&shown), "{log}");
    assert_no_secret(&log);
    // Refused, not retried (one request under way at a time, so nothing else was sent).
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn an_sse_pipeline_into_a_webhook_runs_in_the_daemon() {
    let source = SseServer::start(
        100,
        0,
        Duration::ZERO,
        vec![Step::BreakAfter(40), Step::Hold],
    );
    let hook = HookServer::start(vec![Step::Status(200)], "");
    let d = TestDaemon::start();
    let sql = format!(
        "CREATE TABLE events (n BIGINT) WITH (connector = 'sse', endpoint = '{}');
         CREATE TABLE hook WITH (connector = 'webhook', endpoint = '{}', max_in_flight = '1');
         INSERT INTO hook SELECT n FROM events;",
        source.server.url("/events"),
        hook.server.url("/hook")
    );
    let id = d.submit("sse-to-hook", &sql);
    d.wait_state(&id, "Running");
    let delivered = || -> Vec<u64> {
        hook.delivered()
            .iter()
            .map(|s| {
                serde_json::from_str::<Value>(&s.body).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    wait_until(LONG, "every event delivered to the webhook", || {
        (delivered().len() >= 100).then_some(())
    });
    d.ctl_ok(&["stop", &id]);
    d.wait_state(&id, "Stopped");
    // One request per row, in order (one in flight), each once.
    assert_eq!(delivered(), (1..=100).collect::<Vec<_>>());
}

#[test]
fn bad_http_options_are_refused_at_their_position() {
    let sql = "CREATE TABLE a (n BIGINT) WITH (connector = 'sse', endpoint = 'http://127.0.0.1:1/x', evnts = 'tick');
CREATE TABLE b (v BIGINT) WITH (connector = 'polling_http', endpoint = 'http://127.0.0.1:1/x', emit_behavior = 'sometimes');
CREATE TABLE c WITH (connector = 'websocket', endpoint = 'http://127.0.0.1:1/x', format = 'raw_string');
CREATE TABLE d WITH (connector = 'webhook', endpoint = 'http://127.0.0.1:1/x', 'batch.max_rows' = '0');
CREATE TABLE e WITH (connector = 'websocket', endpoint = 'ws://127.0.0.1:1/x', format = 'raw_string', subscription_message = 'a', 'subscription_messages.0' = 'b');
CREATE TABLE f WITH (connector = 'polling_http', endpoint = 'http://127.0.0.1:1/x', format = 'raw_string', poll_interval_ms = 'often');
CREATE TABLE g WITH (connector = 'sse', endpoint = 'http://127.0.0.1:1/x', format = 'raw_string', headers = 'Authorization');
SELECT 1;";
    let stderr = query_refused(sql);
    for expected in [
        "<stdin>:1:87: error: unknown option 'evnts' for connector 'sse'",
        "<stdin>:2:96: error: invalid value 'sometimes' for option 'emit_behavior': expected 'all' or 'changed'",
        "<stdin>:3:47: error: invalid value 'http://127.0.0.1:1…' for option 'endpoint': the scheme must be 'ws' or 'wss'",
        "<stdin>:4:80: error: invalid value '0' for option 'batch.max_rows': must be above 0",
        "<stdin>:5:1: error: give either 'subscription_message' or 'subscription_messages.N', not both",
        "<stdin>:6:108: error: invalid value 'often' for option 'poll_interval_ms'",
        "<stdin>:7:99: error: invalid value 'Authorization' for option 'headers'",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn an_idle_source_no_longer_holds_back_the_windows_of_the_others() {
    // `quiet` answers one body, then the same one (emit_behavior 'changed': nothing more);
    // `busy` moves its event time on as the test changes its body.
    let row = |ts: &str, k: &str| format!("{{\"ts\": \"2024-01-01T{ts}\", \"k\": \"{k}\"}}");
    let quiet = PollServer::start(&row("00:00:05", "quiet"), vec![Step::Status(200)]);
    let busy = PollServer::start(&row("00:00:10", "busy"), vec![Step::Status(200)]);
    let dir = tempfile::tempdir().unwrap();
    let table = |name: &str, server: &PollServer, idle: &str| {
        format!(
            "CREATE TABLE {name} (ts TIMESTAMP NOT NULL, k TEXT, WATERMARK FOR ts) WITH (
                connector = 'polling_http', endpoint = '{}', poll_interval_ms = '50',
                emit_behavior = 'changed', idle_time = '{idle}');\n",
            server.server.url("/")
        )
    };
    let sql = table("quiet", &quiet, "1s")
        + &table("busy", &busy, "1h")
        + "SELECT window.start AS ws, n FROM (
             SELECT tumble(interval '1 minute') AS window, count(*) AS n
             FROM (SELECT ts FROM quiet UNION ALL SELECT ts FROM busy) GROUP BY window);";
    let mut run = Run::start(dir.path(), "idle", 1, &sql);
    let polls = quiet.polls();
    wait_until(LONG, "both sources to have answered", || {
        (quiet.polls() > polls + 2 && busy.polls() > 2).then_some(())
    });
    // Past the first minute: the window closes once `quiet` is idle, which its idle_time of
    // 1 s allows (without idleness its watermark, 00:00:05, would hold it open for ever).
    busy.set_body(&row("00:02:00", "busy"));
    let rows = run.wait_rows(1);
    assert_eq!(rows[0]["ws"], "2024-01-01T00:00:00");
    assert_eq!(rows[0]["n"], 2, "{rows:?}");
    let (_, log) = run.interrupt();
    assert!(!log.contains("ERROR"), "{log}");
}
