//! The real `arroyoctl` binary against no daemon (exit statuses, socket choice) and against
//! [`FakeDaemon`] (requests sent, renderings, exit statuses).

mod fake_daemon;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use arroyod_proto::StopMode;
use fake_daemon::FakeDaemon;
use serde_json::Value;

/// How long a streamed line may take to show up before the test fails instead of hanging.
const LINE_DEADLINE: Duration = Duration::from_secs(20);

/// `arroyoctl` with none of the variables of the socket chain set.
fn ctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arroyoctl"));
    command
        .env_remove("ARROYO_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    command
}

/// `arroyoctl --socket <daemon> args...`, run to completion.
fn run(daemon: &FakeDaemon, args: &[&str]) -> Output {
    ctl()
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .output()
        .expect("runs arroyoctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

fn write_query(dir: &Path, name: &str, sql: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, sql).expect("write the query");
    path.display().to_string()
}

/// Submits `SELECT 1` as `name`; returns the pipeline id.
fn submit(daemon: &FakeDaemon, dir: &Path, name: &str) -> String {
    let file = write_query(dir, "q.sql", "SELECT 1");
    let output = run(daemon, &["submit", &file, "--name", name]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let id = stdout(&output)
        .split_whitespace()
        .last()
        .expect("an id")
        .to_owned();
    assert!(id.starts_with("p-"), "{id}");
    id
}

fn assert_unreachable(output: &Output, socket: &Path) {
    assert_unreachable_error(output, socket);
    assert!(output.stdout.is_empty());
}

/// Exit 3, and stderr names the socket with the hint (whatever came on stdout before).
fn assert_unreachable_error(output: &Output, socket: &Path) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(3), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot reach arroyod at {}: ",
            socket.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("\nhint: is arroyod running? start it with 'arroyod' or pass --socket\n"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Without a daemon
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_socket_exits_3_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nope.sock");
    let output = ctl()
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .output()
        .expect("runs");
    assert_unreachable(&output, &socket);
}

#[test]
fn arroyo_socket_variable_chooses_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("from-env.sock");
    let output = ctl()
        .env("ARROYO_SOCKET", &socket)
        .env("XDG_RUNTIME_DIR", dir.path().join("xdg"))
        .arg("list")
        .output()
        .expect("runs");
    assert_unreachable(&output, &socket);
}

#[test]
fn socket_flag_beats_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("flag.sock");
    let output = ctl()
        .env("ARROYO_SOCKET", dir.path().join("env.sock"))
        .arg("list")
        .arg("--socket")
        .arg(&socket)
        .output()
        .expect("runs");
    assert_unreachable(&output, &socket);
}

#[test]
fn xdg_runtime_dir_holds_the_default_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = ctl()
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["status", "p"])
        .output()
        .expect("runs");
    assert_unreachable(&output, &dir.path().join("arroyod.sock"));
}

/// `version` prints the client's line first, then the daemon's; without a daemon the
/// client's line still comes, then the usual unreachable error.
#[test]
fn version_names_the_client_and_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = FakeDaemon::start(dir.path());
    let out = run(&daemon, &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("arroyoctl {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let daemon_line = lines.next().unwrap_or_default();
    assert!(
        daemon_line.starts_with("arroyod 0.0.0-fake (pid ") && daemon_line.contains("up 1h 2m 3s"),
        "{text}"
    );
    let v = json(&run(&daemon, &["--json", "version"]));
    assert_eq!(v["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon"]["version"], "0.0.0-fake");

    let socket = dir.path().join("none.sock");
    let out = ctl()
        .arg("--socket")
        .arg(&socket)
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        format!("arroyoctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_unreachable_error(&out, &socket);
}

#[test]
fn a_file_that_is_not_a_socket_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("plain-file");
    std::fs::write(&socket, "").expect("write");
    let output = ctl()
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .output()
        .expect("runs");
    assert_unreachable(&output, &socket);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &[],
        &["status"],
        &["stop", "p", "--mode", "sideways"],
        &["submit", "q.sql", "--parallelism", "many"],
        &["submit", "q.sql", "--checkpoint-interval", "0s"],
        &["submit", "q.sql", "--checkpoint-interval", "10"],
        &["resume"],
        &["checkpoints"],
    ] {
        let output = ctl().args(args).output().expect("runs");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn an_unreadable_query_is_reported_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.sql");
    let output = ctl()
        .arg("--socket")
        .arg(dir.path().join("nope.sock"))
        .arg("validate")
        .arg(&missing)
        .output()
        .expect("runs");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot read the query from {}\n  caused by: ",
            missing.display()
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Against the fake daemon
// ---------------------------------------------------------------------------------------------

#[test]
fn submit_prints_the_id_last_and_sends_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "wc.sql", "SELECT word FROM words\n");
    let output = run(
        &daemon,
        &["submit", &file, "--name", "wordcount", "--parallelism", "4"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "submitted pipeline wordcount p-1\n");

    let status = json(&run(&daemon, &["status", "p-1", "--json"]));
    assert_eq!(status["name"], "wordcount");
    assert_eq!(status["parallelism"], 4);
    assert_eq!(status["query"], "SELECT word FROM words\n");
}

#[test]
fn submit_reads_stdin_and_prints_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let mut child = ctl()
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--json", "submit", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT 2")
        .expect("writes the query");
    let output = child.wait_with_output().expect("runs");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let pipeline = json(&output);
    assert_eq!(pipeline["id"], "p-1");
    assert_eq!(pipeline["query"], "SELECT 2");
    assert_eq!(pipeline["parallelism"], 0, "the daemon chooses");
}

#[test]
fn submit_sends_the_checkpoint_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "q.sql", "SELECT 1");

    let output = run(
        &daemon,
        &[
            "submit",
            &file,
            "--name",
            "fast",
            "--checkpoint-interval",
            "500ms",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let request = daemon.last_submit().expect("a submit request");
    assert_eq!(request.checkpoint_interval_ms, 500);
    let output = run(&daemon, &["status", "fast"]);
    assert!(
        stdout(&output).contains("\ncheckpoint_interval: 500ms\n"),
        "{}",
        stdout(&output)
    );

    let output = run(
        &daemon,
        &["submit", &file, "--checkpoint-interval", "2m", "--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["checkpoint_interval_ms"], 120_000);
    let request = daemon.last_submit().expect("a submit request");
    assert_eq!(request.checkpoint_interval_ms, 120_000);

    run(&daemon, &["submit", &file]);
    let request = daemon.last_submit().expect("a submit request");
    assert_eq!(request.checkpoint_interval_ms, 0, "the daemon chooses");
}

#[test]
fn a_bad_checkpoint_interval_exits_2_without_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "q.sql", "SELECT 1");
    for (value, message) in [
        ("0s", "must be above zero"),
        (
            "soon",
            "'soon' is not a duration such as 10s, 500ms, 2m or 1h",
        ),
        ("3d", "unknown time unit 'd' in '3d': use ms, s, m or h"),
    ] {
        let output = run(&daemon, &["submit", &file, "--checkpoint-interval", value]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{value}: {err}");
        assert!(
            err.contains(&format!(
                "invalid value '{value}' for '--checkpoint-interval <DUR>': {message}"
            )),
            "{err}"
        );
        assert!(output.stdout.is_empty());
    }
    assert!(daemon.last_submit().is_none());
}

/// The errors the fake daemon gives a query mentioning `nope`, as `--json` prints them.
fn nope_errors(file: &str) -> serde_json::Value {
    serde_json::json!([
        {"file": file, "message": "table nope not found", "line": 1, "column": 15, "severity": "error", "hints": []},
        {"file": file, "message": "no sink for the query", "line": 0, "column": 0, "severity": "error", "hints": []},
    ])
}

#[test]
fn submit_prints_every_error_of_a_rejected_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "bad.sql", "SELECT * FROM nope");
    let output = run(&daemon, &["submit", &file]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "{file}:1:15: error: table nope not found\n 1 | SELECT * FROM nope\n   |               ^\n\
             {file}: error: no sink for the query\n"
        )
    );
    assert!(output.stdout.is_empty());

    let output = run(&daemon, &["--json", "submit", &file]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        json(&output),
        serde_json::json!({ "errors": nope_errors(&file) })
    );
}

#[test]
fn validate_reports_ok_and_the_sinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "ok.sql", "SELECT 1");
    let output = run(&daemon, &["validate", &file]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "ok\nsinks: stdout\n");
}

#[test]
fn validate_prints_positioned_errors_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let file = write_query(dir.path(), "bad.sql", "SELECT * FROM nope");
    let output = run(&daemon, &["validate", &file]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "{file}:1:15: error: table nope not found\n 1 | SELECT * FROM nope\n   |               ^\n\
             {file}: error: no sink for the query\n"
        )
    );

    let output = run(&daemon, &["validate", &file, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        json(&output),
        serde_json::json!({ "errors": nope_errors(&file), "sinks": [] })
    );
}

#[test]
fn validate_names_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let mut child = ctl()
        .arg("--socket")
        .arg(daemon.socket())
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT * FROM nope")
        .expect("writes the query");
    let output = child.wait_with_output().expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("<stdin>:1:15: error: table nope not found\n"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn list_renders_a_table_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());

    let output = run(&daemon, &["list"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "ID  NAME  STATE  CREATED\n");
    assert_eq!(
        json(&run(&daemon, &["list", "--json"])),
        serde_json::json!([])
    );

    submit(&daemon, dir.path(), "wordcount");
    submit(&daemon, dir.path(), "x");
    let output = run(&daemon, &["list"]);
    assert_eq!(
        stdout(&output),
        "ID   NAME       STATE    CREATED\n\
         p-1  wordcount  Running  2026-01-02T03:04:05Z\n\
         p-2  x          Running  2026-01-02T03:04:05Z\n"
    );
    let all = json(&run(&daemon, &["--json", "list"]));
    let names: Vec<&str> = all
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["wordcount", "x"]);
}

#[test]
fn status_by_name_renders_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");

    let output = run(&daemon, &["status", "wordcount"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("id:                  {id}\n")),
        "{text}"
    );
    assert!(text.contains("\nstate:               Running\n"), "{text}");
    assert!(text.contains("\nworker_pid:          4242\n"), "{text}");
    assert!(text.contains("\ncheckpoint_interval: 10s\n"), "{text}");
    assert!(text.contains("\nlast_checkpoint:     2\n"), "{text}");
    assert!(
        text.contains(&format!(
            "\nstate_url:           file:///var/lib/arroyod/state/{id}\n"
        )),
        "{text}"
    );
    assert!(text.contains("\nfailure:             -\n"), "{text}");

    let status = json(&run(&daemon, &["status", "wordcount", "--json"]));
    for key in [
        "id",
        "name",
        "state",
        "created_at",
        "updated_at",
        "failure",
        "parallelism",
        "generation",
        "rows",
        "desired",
        "worker_pid",
        "checkpoint_interval_ms",
        "state_url",
        "last_checkpoint",
        "query",
    ] {
        assert!(status.get(key).is_some(), "no {key} in {status}");
    }
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["failure"], "");
    assert_eq!(status["checkpoint_interval_ms"], 10_000);
    assert_eq!(
        status["state_url"],
        format!("file:///var/lib/arroyod/state/{id}")
    );
    assert_eq!(status["last_checkpoint"], 2);
}

#[test]
fn status_of_a_pipeline_without_checkpoints_shows_a_dash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    submit(&daemon, dir.path(), "fresh");
    let output = run(&daemon, &["status", "fresh"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("\nlast_checkpoint:     -\n"), "{text}");
    assert_eq!(
        json(&run(&daemon, &["status", "fresh", "--json"]))["last_checkpoint"],
        0
    );
}

#[test]
fn an_unknown_pipeline_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let output = run(&daemon, &["status", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: no pipeline ghost\n");
}

#[test]
fn unavailable_status_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let output = run(&daemon, &["status", "unavailable"]);
    assert_unreachable(&output, daemon.socket());
    assert!(stderr(&output).contains(": arroyod is shutting down\n"));
}

#[test]
fn tail_prints_json_lines_from_an_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");

    let output = run(&daemon, &["tail", &id]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");

    let output = run(&daemon, &["tail", "wordcount", "--from", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "{\"n\":2}\n");
}

/// Reads the child's stdout lines on a thread, so that the test can give up on a missing line.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn tail_follow_shows_rows_as_they_come() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    submit(&daemon, dir.path(), "wordcount");
    let mut child = ctl()
        .arg("--socket")
        .arg(daemon.socket())
        .args(["tail", "wordcount", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    let lines = lines_of(&mut child);
    // The stream is still open: these rows must show up before it ends.
    assert_eq!(
        lines.recv_timeout(LINE_DEADLINE).expect("row 0"),
        "{\"n\":0}"
    );
    assert_eq!(
        lines.recv_timeout(LINE_DEADLINE).expect("row 1"),
        "{\"n\":1}"
    );
    daemon.release_tail();
    assert_eq!(
        lines.recv_timeout(LINE_DEADLINE).expect("row 2"),
        "{\"n\":2}"
    );
    assert!(lines.recv_timeout(LINE_DEADLINE).is_err(), "no more rows");
    assert_eq!(child.wait().expect("exits").code(), Some(0));
}

#[test]
fn tail_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    submit(&daemon, dir.path(), "wordcount");
    let mut child = ctl()
        .arg("--socket")
        .arg(daemon.socket())
        .args(["tail", "wordcount", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("reads row 0");
    assert_eq!(first, "{\"n\":0}\n");
    // Like `| head -1`: the reader goes away, then a row comes.
    drop(stdout);
    daemon.release_tail();
    let output = child.wait_with_output().expect("exits");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stderr(&output), "");
}

#[test]
fn stop_waits_in_checkpoint_mode_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");

    let output = run(&daemon, &["stop", "wordcount"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("pipeline wordcount {id} is Stopped\n")
    );
    let request = daemon.last_stop().expect("a stop request");
    assert_eq!(request.id_or_name, "wordcount");
    assert_eq!(request.mode(), StopMode::Checkpoint);
    assert!(request.wait);
}

#[test]
fn stop_passes_the_mode_and_no_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");

    let output = run(
        &daemon,
        &["stop", &id, "--mode", "immediate", "--no-wait", "--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["state"], "Stopping");
    let request = daemon.last_stop().expect("a stop request");
    assert_eq!(request.mode(), StopMode::Immediate);
    assert!(!request.wait);

    run(&daemon, &["stop", &id, "--mode", "graceful"]);
    let request = daemon.last_stop().expect("a stop request");
    assert_eq!(request.mode(), StopMode::Graceful);
}

#[test]
fn resume_restarts_a_stopped_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");
    let output = run(&daemon, &["stop", "wordcount"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let output = run(&daemon, &["resume", "wordcount"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("pipeline wordcount {id} is Running\n")
    );

    run(&daemon, &["stop", &id]);
    let output = run(&daemon, &["resume", &id, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let pipeline = json(&output);
    assert_eq!(pipeline["id"], id.as_str());
    assert_eq!(pipeline["state"], "Running");
    assert_eq!(pipeline["desired"], "Running");
    assert_eq!(pipeline["generation"], 3);
}

#[test]
fn resume_of_a_pipeline_that_is_not_stopped_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    submit(&daemon, dir.path(), "wordcount");

    let output = run(&daemon, &["resume", "wordcount"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: pipeline 'wordcount' is Running: only a stopped, failed or finished pipeline \
         can be resumed\n"
    );
    assert!(output.stdout.is_empty());

    let output = run(&daemon, &["resume", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: no pipeline ghost\n");
}

#[test]
fn checkpoints_render_a_table_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    let id = submit(&daemon, dir.path(), "wordcount");

    let output = run(&daemon, &["checkpoints", "wordcount"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "EPOCH  BYTES  DURATION  COMPLETED             GENERATION  RETAINED\n\
         2      2048   1500ms    2026-01-02T03:04:25Z  1           yes\n\
         1      512    85ms      2026-01-02T03:04:15Z  1           no\n"
    );

    let output = run(&daemon, &["--json", "checkpoints", &id]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        json(&output),
        serde_json::json!([
            {
                "epoch": 2,
                "bytes": 2048,
                "duration_ms": 1500,
                "completed_at": "2026-01-02T03:04:25Z",
                "generation": 1,
                "retained": true,
            },
            {
                "epoch": 1,
                "bytes": 512,
                "duration_ms": 85,
                "completed_at": "2026-01-02T03:04:15Z",
                "generation": 1,
                "retained": false,
            },
        ])
    );
}

#[test]
fn no_checkpoints_is_a_header_or_an_empty_array() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = FakeDaemon::start(dir.path());
    submit(&daemon, dir.path(), "fresh");

    let output = run(&daemon, &["checkpoints", "fresh"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "EPOCH  BYTES  DURATION  COMPLETED  GENERATION  RETAINED\n"
    );
    assert_eq!(
        json(&run(&daemon, &["checkpoints", "fresh", "--json"])),
        serde_json::json!([])
    );

    let output = run(&daemon, &["checkpoints", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: no pipeline ghost\n");
}
