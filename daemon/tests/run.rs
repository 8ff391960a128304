//! `arroyod run`: one query end to end through the real binary.

mod harness;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use harness::{DEADLINE, Lines, arroyod_bin, run_query, signal, signal_group, wait_exit};

const EVEN_COUNTERS: &str = "CREATE TABLE impulse WITH (connector='impulse', event_rate='1000', message_count='200'); SELECT counter FROM impulse WHERE counter % 2 = 0;";

#[test]
fn bounded_select_prints_exactly_the_matching_rows_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = run_query(&["-s", state.to_str().unwrap(), "-"], EVEN_COUNTERS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let counters: Vec<u64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1, "{l}");
            v["counter"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(counters.len(), 100, "{stdout}");
    let set: BTreeSet<u64> = counters.into_iter().collect();
    assert_eq!(set, (0..200).step_by(2).collect());
    // Logs go to stderr, never into the results.
    assert!(!stdout.contains("INFO"));
    // The state dir holds the run's SQLite metadata.
    assert!(state.join("arroyod.db").exists());
}

/// A rerun on the state dir of a pipeline that finished resumes it from its last checkpoint,
/// taken when every source had finished: nothing is read or printed twice.
#[test]
fn the_same_state_dir_resumes_a_finished_pipeline_without_redoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for expected in [100, 0] {
        let out = run_query(&["-s", state.to_str().unwrap(), "-"], EVEN_COUNTERS);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().lines().count(),
            expected,
            "{stderr}"
        );
        if expected == 0 {
            assert!(stderr.contains("resuming it"), "{stderr}");
        }
    }
}

#[test]
fn parallel_run_gives_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = run_query(
        &["-p", "3", "-s", state.to_str().unwrap(), "-"],
        EVEN_COUNTERS,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counters = harness::counters_in(&String::from_utf8(out.stdout).unwrap());
    counters.sort();
    assert_eq!(counters, (0..200).step_by(2).collect::<Vec<_>>());
}

#[test]
fn query_errors_are_printed_with_line_and_column_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sql = "CREATE TABLE impulse WITH (connector='impulse', event_rate='10');\nSELECT nope FROM impulse;\nSELEC 1;\nCREATE TABLE t WITH (connector = 'impulse', event_rate = '1', colour = 'red');";
    let out = run_query(&["-s", state.to_str().unwrap(), "-"], sql);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("<stdin>:2:8: error: "), "{stderr}");
    // The source line, and a caret under the column.
    assert!(
        stderr.contains(" 2 | SELECT nope FROM impulse;\n   |        ^\n"),
        "{stderr}"
    );
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(
        stderr.contains("<stdin>:3:1: error: syntax error"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<stdin>:4:63: error: unknown option 'colour'"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_connector_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_query(
        &["-s", dir.path().join("s").to_str().unwrap(), "-"],
        "CREATE TABLE k WITH (connector = 'kafkaa', topic = 'x'); SELECT * FROM k;",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown connector 'kafkaa'"), "{stderr}");
}

/// `arroyod run` of an unbounded impulse query under `dir`, in a process group of its own like
/// a shell job (Ctrl-C signals the whole group), once it has printed 5 rows; stderr piped.
fn unbounded_run(dir: &std::path::Path) -> (std::process::Child, Lines) {
    let query = dir.join("q.sql");
    std::fs::write(
        &query,
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='200'); SELECT counter FROM impulse;",
    )
    .unwrap();
    let mut child = Command::new(arroyod_bin())
        .args(["run", "-s"])
        .arg(dir.join("state"))
        .arg(&query)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for(5, DEADLINE);
    (child, lines)
}

#[test]
fn sigint_stops_an_unbounded_run_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = unbounded_run(dir.path());
    signal_group(child.id(), "INT");
    let status = wait_exit(&mut child, DEADLINE);
    assert!(status.success(), "{status}");
    let rows = lines.drain(DEADLINE);
    // Every printed row is a whole JSON object, counters in order from 0 on one subtask.
    for (i, row) in rows.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(row).unwrap();
        assert_eq!(v["counter"].as_u64(), Some(i as u64));
    }
}

/// `timeout` and `kill 0` deliver one request twice, to the process and to its group: that is
/// one stop with a final checkpoint (exit 0), not the second signal that ends a run at once
/// (exit 1).
#[test]
fn a_stop_request_delivered_twice_at_once_is_one_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _lines) = unbounded_run(dir.path());
    signal(child.id(), "TERM");
    signal_group(child.id(), "TERM");
    let status = wait_exit(&mut child, DEADLINE);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(!stderr.contains("second signal"), "{stderr}");
}

#[test]
fn a_file_sink_gets_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let sql = format!(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='1000');
         CREATE TABLE sink (counter BIGINT, label TEXT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'sink');
         INSERT INTO sink SELECT counter, 'n' || CAST(counter AS TEXT) FROM impulse;",
        out_file.display()
    );
    let out = run_query(
        &["-p", "2", "-s", dir.path().join("s").to_str().unwrap(), "-"],
        &sql,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no bare SELECT, no stdout");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut seen: Vec<i64> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = v["counter"].as_i64().unwrap();
            assert_eq!(v["label"], format!("n{n}"));
            n
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
}
