//! Looking at pipelines (issue 12): `arroyoctl explain` of a file and of a pipeline (text,
//! JSON, Graphviz DOT checked by a parser), `arroyoctl top` refreshing without a terminal,
//! `/metrics` of `arroyod run --metrics-addr` over a Unix socket, and the daemon's log lines
//! for the journal and as JSON: real binaries through the harness.

#[path = "harness/dot.rs"]
mod dot;
mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use harness::{DEADLINE, Lines, TestDaemon, wait_exit, wait_until};
use serde_json::Value;

/// Counters keyed by `counter % 7`: a source, a shuffle by the key, an updating aggregate and
/// the default sink.
const KEYED: &str = "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '200');
SELECT counter % 7 AS k, count(*) AS n FROM impulse GROUP BY counter % 7;
";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The node of `graph` (explain's JSON) whose kind is `kind`.
fn node<'a>(graph: &'a Value, kind: &str) -> &'a Value {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {graph}"))
}

#[test]
fn explain_shows_operators_edges_keys_and_parallelism() {
    let d = TestDaemon::start();
    let file = d.dir.path().join("keyed.sql");
    std::fs::write(&file, KEYED).unwrap();
    let file = file.to_str().unwrap();

    // A file, as JSON: source -> ... -> aggregate -> sink, the aggregate behind a shuffle by
    // its key, at the parallelism asked.
    let graph: Value =
        serde_json::from_str(&d.ctl_ok(&["--json", "explain", file, "--parallelism", "3"]))
            .unwrap();
    let nodes = graph["nodes"].as_array().unwrap();
    let edges = graph["edges"].as_array().unwrap();
    assert!(nodes.len() >= 3, "{graph}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["index"], i as u64, "{graph}");
        assert!(n["id"].as_str().unwrap().contains('-'), "{graph}");
    }
    assert!(
        node(&graph, "source")["label"]
            .as_str()
            .unwrap()
            .starts_with("source:impulse"),
        "{graph}"
    );
    assert_eq!(node(&graph, "sink")["label"], "sink:preview", "{graph}");
    assert_eq!(node(&graph, "sink")["parallelism"], 3, "{graph}");
    let shuffle = edges
        .iter()
        .find(|e| e["kind"] == "shuffle")
        .unwrap_or_else(|| panic!("no shuffle in {graph}"));
    let keys = shuffle["keys"].as_array().unwrap();
    assert!(!keys.is_empty(), "{graph}");
    assert!(
        keys.iter().all(|k| !k.as_str().unwrap().contains('@')),
        "keys without column indexes: {graph}"
    );
    let aggregate = &nodes[shuffle["to"].as_u64().unwrap() as usize];
    assert_eq!(aggregate["kind"], "operator", "{graph}");
    assert_eq!(aggregate["parallelism"], 3, "{graph}");
    for e in edges {
        assert!(
            e["from"].as_u64() < e["to"].as_u64(),
            "topological: {graph}"
        );
        assert!(
            ["forward", "rebalance", "shuffle"].contains(&e["kind"].as_str().unwrap()),
            "{graph}"
        );
    }

    // The same as a table.
    let text = d.ctl_ok(&["explain", file, "--parallelism", "3"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with('#') && lines[0].contains("PARALLELISM"),
        "{text}"
    );
    assert!(text.contains("sink:preview"), "{text}");
    let edge_header = lines.iter().position(|l| l.starts_with("EDGE")).unwrap();
    assert_eq!(lines.len() - edge_header - 1, edges.len(), "{text}");
    assert!(text.contains("shuffle"), "{text}");

    // As DOT: valid Graphviz, the same nodes and edges, the shuffle labelled with its keys.
    let dot_text = d.ctl_ok(&["explain", file, "--parallelism", "3", "--dot"]);
    let parsed = dot::parse(&dot_text).unwrap_or_else(|e| panic!("{e}:\n{dot_text}"));
    assert!(parsed.directed);
    assert_eq!(parsed.nodes.len(), nodes.len(), "{dot_text}");
    assert_eq!(parsed.edges.len(), edges.len(), "{dot_text}");
    let key = keys[0].as_str().unwrap();
    assert!(
        parsed.edges.iter().any(|(_, _, attrs)| attrs
            .iter()
            .any(|a| a.starts_with("label=shuffle [") && a.contains(key))),
        "{dot_text}"
    );
    // The checker is not blind: a graph cut short or with an undirected edge is refused.
    assert!(dot::parse(&dot_text[..dot_text.len() - 3]).is_err());
    assert!(dot::parse(&dot_text.replacen("->", "--", 1)).is_err());

    // A pipeline: its stored query at its own parallelism, by name or id prefix.
    let id = d.submit_with("keyed", KEYED, &["--parallelism", "2"]);
    let by_name: Value = serde_json::from_str(&d.ctl_ok(&["--json", "explain", "keyed"])).unwrap();
    assert_eq!(node(&by_name, "sink")["parallelism"], 2, "{by_name}");
    let by_prefix: Value =
        serde_json::from_str(&d.ctl_ok(&["--json", "explain", &id[..8]])).unwrap();
    assert_eq!(by_prefix, by_name);
    let dot_text = d.ctl_ok(&["explain", "keyed", "--dot"]);
    dot::parse(&dot_text).unwrap_or_else(|e| panic!("{e}:\n{dot_text}"));

    // A query that does not plan: its diagnostics, exit 1; an unknown pipeline: exit 1.
    let bad = d.dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT nope FROM nowhere;\n").unwrap();
    let out = d.ctl(&["explain", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}:1:", bad.display())),
        "{}",
        stderr(&out)
    );
    let out = d.ctl(&["explain", "no-such-pipeline"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-pipeline"),
        "{}",
        stderr(&out)
    );
}

/// `top --json` refreshes of a pipeline: one object per line.
fn top_json(d: &TestDaemon, id: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "top", id];
    all.extend_from_slice(args);
    d.ctl_ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The source's rows out in one `top --json` refresh.
fn source_rows_out(refresh: &Value) -> u64 {
    refresh["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operator"].as_str().unwrap().starts_with("source:"))
        .map_or(0, |o| o["rows_out"].as_u64().unwrap())
}

#[test]
fn top_refreshes_a_live_table_without_a_terminal() {
    let d = TestDaemon::start();
    let id = d.submit("watched", KEYED);
    d.wait_state(&id, "Running");
    wait_until(DEADLINE, "the worker's first report", || {
        let refresh = top_json(&d, &id, &["--count", "1"]).remove(0);
        (source_rows_out(&refresh) > 0).then_some(())
    });

    // Text into a pipe: no screen clearing, the refreshes one after the other.
    let out = d.ctl(&["top", &id, "--count", "2", "--interval", "200ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "{text:?}");
    let refreshes: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(refreshes.len(), 2, "{text}");
    for refresh in refreshes {
        let lines: Vec<&str> = refresh.lines().collect();
        assert!(
            lines[0].starts_with(&format!("pipeline watched {id}  Running")),
            "{refresh}"
        );
        assert!(
            lines[1].starts_with("OPERATOR") && lines[1].contains("BACKPRESSURE"),
            "{refresh}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("source:impulse")),
            "{refresh}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("sink:preview")),
            "{refresh}"
        );
    }

    // As JSON, three refreshes a worker report apart: the source's rows out move.
    let refreshes = top_json(&d, &id, &["--count", "3", "--interval", "1100ms"]);
    assert_eq!(refreshes.len(), 3);
    let (first, last) = (&refreshes[0], &refreshes[2]);
    assert!(
        source_rows_out(last) > source_rows_out(first),
        "{first}\n{last}"
    );
    assert_eq!(last["pipeline"]["id"], id.as_str());
    let operators = last["operators"].as_array().unwrap();
    assert!(
        operators
            .iter()
            .any(|o| o["rows_out_per_second"].as_f64().unwrap() > 0.0),
        "{last}"
    );
}

/// `GET /metrics` over HTTP/1.0 on the Unix socket at `path`; the body.
fn scrape_unix(path: &std::path::Path) -> Option<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

/// The value of the first series `name{...}` whose labels hold `label`.
fn series(body: &str, name: &str, label: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

#[test]
fn run_serves_metrics_that_move_on_its_metrics_addr() {
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("q.sql");
    std::fs::write(&query, KEYED).unwrap();
    let socket = dir.path().join("metrics.sock");
    let mut child = Command::new(harness::arroyod_bin())
        .args(["run", "-s"])
        .arg(dir.path().join("state"))
        .arg("--metrics-addr")
        .arg(format!("unix:{}", socket.display()))
        .arg(&query)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let source = "operator=\"source:impulse";
    let first = wait_until(DEADLINE, "the source's rows out", || {
        let body = scrape_unix(&socket)?;
        Some(series(&body, "arroyod_operator_rows_out_total", source)).filter(|n| *n > 0)
    });
    wait_until(
        DEADLINE,
        "more rows out of the source, into the sink",
        || {
            let body = scrape_unix(&socket)?;
            (series(&body, "arroyod_operator_rows_out_total", source) > first
                && series(
                    &body,
                    "arroyod_operator_rows_in_total",
                    "operator=\"sink:preview",
                ) > 0)
                .then_some(())
        },
    );
    // The rows still reach stdout.
    lines.wait_for(1, DEADLINE);
    harness::signal_group(child.id(), "INT");
    let status = wait_exit(&mut child, DEADLINE);
    assert!(status.success(), "{status}");
    // The socket goes with the run.
    assert!(!socket.exists());
}

/// The lines of the daemon's log that are not empty, once a worker has logged its start.
fn lines_once_a_worker_started(d: &TestDaemon) -> Vec<String> {
    wait_until(DEADLINE, "the worker's lines", || {
        let lines: Vec<String> = d
            .log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        lines
            .iter()
            .any(|l| l.contains("worker starting"))
            .then_some(lines)
    })
}

#[test]
fn log_lines_for_the_journal_carry_a_priority_and_no_timestamp() {
    let mut d = TestDaemon::unstarted(&[]);
    // As systemd does: JOURNAL_STREAM names the device and inode of the stderr it gave.
    std::fs::File::create(d.log_path()).unwrap();
    let meta = std::fs::metadata(d.log_path()).unwrap();
    d.envs = vec![(
        "JOURNAL_STREAM".into(),
        format!("{}:{}", meta.dev(), meta.ino()),
    )];
    d.restart();
    let id = d.submit("journaled", KEYED);
    d.wait_state(&id, "Running");
    let out = d.ctl(&["stop", &id, "--mode", "immediate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = lines_once_a_worker_started(&d);
    for line in &lines {
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no priority: {line}"));
        let level = match priority {
            "3" => "ERROR",
            "4" => "WARN",
            "6" => "INFO",
            "7" => "DEBUG",
            other => panic!("priority {other}: {line}"),
        };
        assert!(
            rest.starts_with(level) || (priority == "7" && rest.starts_with("TRACE")),
            "{line}"
        );
        assert!(
            !rest.chars().take(4).all(|c| c.is_ascii_digit()),
            "a timestamp: {line}"
        );
    }
    // A worker's lines name its pipeline.
    let worker = lines
        .iter()
        .find(|l| l.contains("worker starting"))
        .unwrap();
    assert!(
        worker.starts_with("<6>INFO worker{") && worker.contains(&id),
        "{worker}"
    );
}

#[test]
fn log_lines_are_json_on_request_for_the_daemon_and_its_workers() {
    let d = TestDaemon::start_with(&["--log-format", "json"]);
    let id = d.submit("structured", KEYED);
    d.wait_state(&id, "Running");
    let lines = lines_once_a_worker_started(&d);
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for o in &objects {
        assert!(o["timestamp"].is_string() && o["level"].is_string(), "{o}");
        assert!(o["fields"].is_object(), "{o}");
    }
    let worker = objects
        .iter()
        .find(|o| o["fields"]["message"] == "worker starting")
        .unwrap();
    assert_eq!(worker["level"], "INFO");
    assert!(worker.to_string().contains(&id), "{worker}");
}
