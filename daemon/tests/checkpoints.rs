//! Exactly-once across stops, crashes and restarts, through the real binaries: `arroyod run -s`
//! on a local state dir and on a loopback S3 server (moto), and the daemon killed with -9.
//!
//! Every test writes impulse counters to a `single_file` sink and, after each clean stop,
//! checks that the file holds the counters 0..K-1, each exactly once, and that K grew.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use harness::fault::{committed_counters, files_query, start_run_in, worker_of};
use harness::{
    DEADLINE, S3Server, TestDaemon, alive, arroyod_bin, counters_in, path_str, signal,
    signal_group, wait_exit, wait_until,
};

/// Checkpoints are taken this often in these tests.
const INTERVAL: &str = "200ms";
/// Rows a run writes before the test acts on it (at 2000 rows per second).
const STEP: usize = 300;

fn query(out: &Path) -> String {
    format!(
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000');
         CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
         INSERT INTO out SELECT counter FROM impulse;",
        out.display()
    )
}

/// The counters of the complete lines of the output file.
fn counters(out: &Path) -> Vec<u64> {
    counters_in(&std::fs::read_to_string(out).unwrap_or_default())
}

/// Asserts the file holds 0..K-1, each once; returns K.
fn exactly_once(out: &Path) -> usize {
    let mut seen = counters(out);
    let n = seen.len();
    seen.sort_unstable();
    let dups = seen.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "{dups} counters appear more than once in {n} rows");
    assert!(
        seen.iter().enumerate().all(|(i, c)| *c == i as u64),
        "the counters are not 0..{n}: first gap near {:?}",
        seen.iter()
            .enumerate()
            .find(|(i, c)| **c != *i as u64)
            .map(|(i, _)| i)
    );
    n
}

/// Asserts a rerun added at least [`STEP`] rows to the `first` a run before it left.
fn assert_grew(first: usize, last: usize) {
    assert!(
        last > first + STEP,
        "the output did not grow: {first} then {last}"
    );
}

/// Waits until the output file has more than `n` rows.
fn wait_rows(out: &Path, n: usize) {
    wait_until(DEADLINE, &format!("more than {n} rows"), || {
        (counters(out).len() > n).then_some(())
    });
}

/// `arroyod run -s STATE` of `query_file` in its own process group.
fn start_run(state: &str, query_file: &Path, envs: &[(&str, String)], log: &Path) -> Child {
    start_run_with(&["-s", state, path_str(query_file)], envs, log)
}

/// `arroyod run ARGS` in its own process group.
fn start_run_with(args: &[&str], envs: &[(&str, String)], log: &Path) -> Child {
    start_run_in(None, args, envs, log)
}

/// Stops a run with SIGINT; it must exit 0.
fn interrupt(mut run: Child, log: &Path) {
    signal(run.id(), "INT");
    let status = wait_exit(&mut run, DEADLINE);
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Starts the (killed) daemon again: its pipeline `id` resumes, writes more rows to `out`, and
/// after a stop every counter is there once.
fn restarts_exactly_once(daemon: &mut TestDaemon, id: &str, out: &Path) {
    daemon.restart();
    daemon.wait_state(id, "Running");
    let now = counters(out).len();
    wait_rows(out, now + STEP);
    daemon.ctl_ok(&["stop", id]);
    let n = exactly_once(out);
    assert!(n > now, "{n} rows after {now}");
}

struct Setup {
    _dir: tempfile::TempDir,
    out: PathBuf,
    query: PathBuf,
    log: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let query_file = dir.path().join("counters.sql");
    std::fs::write(&query_file, query(&out)).unwrap();
    Setup {
        log: dir.path().join("run.log"),
        out,
        query: query_file,
        _dir: dir,
    }
}

#[test]
fn a_run_state_dir_survives_sigint_and_kill_9_with_every_counter_once() {
    let s = setup();
    let state_dir = s.out.parent().unwrap().join("state");
    let state = path_str(&state_dir);

    // 1. Run, SIGINT: a final checkpoint, then exit 0.
    let run = start_run(state, &s.query, &[], &s.log);
    wait_rows(&s.out, STEP);
    interrupt(run, &s.log);
    let first = exactly_once(&s.out);

    // 2. Rerun: it resumes. Kill -9 its worker: restarted from the last checkpoint. Then
    //    kill -9 the whole process group.
    let run = start_run(state, &s.query, &[], &s.log);
    wait_rows(&s.out, first + STEP);
    let worker = wait_until(DEADLINE, "the worker", || worker_of(run.id()));
    signal(worker, "KILL");
    let replacement = wait_until(DEADLINE, "a new worker", || {
        worker_of(run.id()).filter(|w| *w != worker)
    });
    let now = counters(&s.out).len();
    wait_rows(&s.out, now + STEP);
    signal_group(run.id(), "KILL");
    let mut run = run;
    wait_exit(&mut run, DEADLINE);
    wait_until(DEADLINE, "the worker to die with its run", || {
        (!alive(replacement)).then_some(())
    });

    // 3. Rerun after the crash: rows after the last checkpoint are cut and written again.
    let now = counters(&s.out).len();
    let run = start_run(state, &s.query, &[], &s.log);
    wait_rows(&s.out, now + STEP);
    interrupt(run, &s.log);
    let last = exactly_once(&s.out);
    assert_grew(first, last);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("resuming it"), "{log}");

    // 4. Another query on this state dir is refused and changes nothing; --force runs it.
    let other = s.out.parent().unwrap().join("other.sql");
    let other_out = s.out.parent().unwrap().join("other.json");
    std::fs::write(
        &other,
        query(&other_out).replace("SELECT counter", "SELECT counter * 2"),
    )
    .unwrap();
    let refused = Command::new(arroyod_bin())
        .args(["run", "-s", state, path_str(&other)])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds pipeline 'counters'") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(exactly_once(&s.out), last);
    let forced = start_run_with(&["--force", "-s", state, path_str(&other)], &[], &s.log);
    wait_rows(&other_out, 10);
    interrupt(forced, &s.log);
    let doubled = counters(&other_out);
    assert!(doubled.iter().all(|c| c % 2 == 0), "{doubled:?}");
}

/// Issue 9.1: a relative state dir stored its checkpoints' location relative to the working
/// directory; a rerun from elsewhere restored nothing and the sink repeated rows. Locations
/// are now relative to the state root given at start, and a restore that finds no checkpoint
/// where the metadata says one completed fails rather than start over.
#[test]
fn a_relative_state_dir_resumes_from_another_working_directory() {
    let s = setup();
    let top = s.out.parent().unwrap();
    let (a, b) = (top.join("a"), top.join("b/c"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let query = path_str(&s.query);

    let run = start_run_in::<&str>(Some(&a), &["-s", "st", query], &[], &s.log);
    wait_rows(&s.out, STEP);
    interrupt(run, &s.log);
    let first = exactly_once(&s.out);

    let run = start_run_in::<&str>(Some(&b), &["-s", "../../a/st", query], &[], &s.log);
    wait_rows(&s.out, first + STEP);
    interrupt(run, &s.log);
    let last = exactly_once(&s.out);
    assert_grew(first, last);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("resuming it"), "{log}");

    // The checkpoints are gone but the metadata remembers them: the run fails, saying why,
    // and the sink's output is left alone.
    std::fs::remove_dir_all(a.join("st/state")).unwrap();
    let out = Command::new(arroyod_bin())
        .current_dir(&b)
        .args(["run", "-s", "../../a/st", query])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("(the metadata says so)")
            && stderr.contains(&a.join("st/state").display().to_string()),
        "{stderr}"
    );
    assert_eq!(exactly_once(&s.out), last);
}

/// Issue 9.1, the daemon's side: started with a relative `--data-dir` from one directory, then
/// from another, it resumes its pipeline from the same checkpoints.
#[test]
fn a_daemon_with_a_relative_data_dir_resumes_from_another_working_directory() {
    let mut daemon = TestDaemon::unstarted(&["--checkpoint-interval", INTERVAL]);
    let (a, b) = (daemon.dir.path().join("a"), daemon.dir.path().join("b/c"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    daemon.cwd = Some(a);
    daemon.restart();
    let s = setup();
    let id = daemon.submit("counters", &query(&s.out));
    wait_rows(&s.out, STEP);
    wait_until(DEADLINE, "a checkpoint", || {
        (daemon.status(&id)["last_checkpoint"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    daemon.kill9();
    daemon.cwd = Some(b);
    restarts_exactly_once(&mut daemon, &id, &s.out);
    assert_eq!(
        daemon.status(&id)["state_url"],
        format!("{}/state/{id}", daemon.data_dir().display())
    );
}

/// A plain HTTP GET against the loopback S3 server; the body.
fn http_get(s3: &S3Server, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s3.port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        s3.port
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_run_state_dir_on_s3_keeps_checkpoints_and_snapshots_there_and_resumes() {
    let s3 = S3Server::start();
    s3.create_bucket("arroyod-state");
    let s = setup();
    let tmp = s.out.parent().unwrap().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut env = s3.env();
    // The local metadata cache lives under TMPDIR: the test removes it between runs.
    env.push(("TMPDIR".to_string(), tmp.display().to_string()));
    let envs: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let state = "s3://arroyod-state/runs/counters";

    let run = start_run(state, &s.query, &envs, &s.log);
    wait_rows(&s.out, STEP);
    interrupt(run, &s.log);
    let first = exactly_once(&s.out);
    let listing = http_get(&s3, "/arroyod-state?list-type=2&prefix=runs/counters/");
    assert!(listing.contains("/checkpoints/"), "{listing}");
    assert!(listing.contains("MANIFEST"), "{listing}");
    assert!(
        listing.contains("runs/counters/snapshots/LATEST"),
        "{listing}"
    );

    // Nothing local survives: the rerun finds the pipeline in the newest snapshot.
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let run = start_run(state, &s.query, &envs, &s.log);
    wait_rows(&s.out, first + STEP);
    interrupt(run, &s.log);
    let last = exactly_once(&s.out);
    assert_grew(first, last);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("metadata restored from the newest snapshot"),
        "{log}"
    );
    assert!(log.contains("resuming it"), "{log}");
}

#[test]
fn the_daemon_killed_with_9_resumes_its_pipeline_exactly_once() {
    let mut daemon = TestDaemon::start_with(&["--checkpoint-interval", INTERVAL]);
    let s = setup();
    let id = daemon.submit("counters", &query(&s.out));
    daemon.wait_state(&id, "Running");
    wait_rows(&s.out, STEP);
    wait_until(DEADLINE, "a checkpoint", || {
        (daemon.status(&id)["last_checkpoint"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let worker = daemon.status(&id)["worker_pid"].as_u64().unwrap() as u32;
    daemon.kill9();
    wait_until(DEADLINE, "the worker to die with its daemon", || {
        (!alive(worker)).then_some(())
    });

    daemon.restart();
    daemon.wait_state(&id, "Running");
    let now = counters(&s.out).len();
    wait_rows(&s.out, now + STEP);
    daemon.ctl_ok(&["stop", &id]);
    assert_eq!(daemon.status(&id)["state"], "Stopped");
    let first = exactly_once(&s.out);

    // The checkpoints are listed, and resume goes on from the last one.
    let listed: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["--json", "checkpoints", &id])).unwrap();
    let listed = listed.as_array().unwrap();
    assert!(!listed.is_empty(), "no checkpoints listed");
    daemon.ctl_ok(&["resume", &id]);
    daemon.wait_state(&id, "Running");
    wait_rows(&s.out, first + STEP);
    daemon.ctl_ok(&["stop", &id]);
    let last = exactly_once(&s.out);
    assert_grew(first, last);
}

#[test]
fn a_filesystem_sink_commits_each_row_once_across_a_worker_crash() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    let query_file = files_query(dir.path(), &files);
    let log = dir.path().join("run.log");
    let state = dir.path().join("state");
    let run = start_run(path_str(&state), &query_file, &[], &log);
    let wait_committed = |n: usize| {
        wait_until(DEADLINE, &format!("more than {n} committed rows"), || {
            (committed_counters(&files).len() > n).then_some(())
        })
    };
    wait_committed(STEP);
    let worker = wait_until(DEADLINE, "the worker", || worker_of(run.id()));
    signal(worker, "KILL");
    wait_until(DEADLINE, "a new worker", || {
        worker_of(run.id()).filter(|w| *w != worker)
    });
    let now = committed_counters(&files).len();
    wait_committed(now + STEP);
    interrupt(run, &log);
    let mut seen = committed_counters(&files);
    let n = seen.len();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..n as u64).collect::<Vec<_>>(),
        "{n} committed rows"
    );
}

#[test]
fn a_daemon_with_its_state_on_s3_resumes_after_kill_9_exactly_once() {
    let s3 = S3Server::start();
    s3.create_bucket("daemon-state");
    let mut daemon = TestDaemon::unstarted(&[
        "--checkpoint-interval",
        INTERVAL,
        "--state-url",
        "s3://daemon-state/pipelines",
    ]);
    daemon.envs = s3.env();
    daemon.restart();
    let s = setup();
    let id = daemon.submit("counters", &query(&s.out));
    assert_eq!(
        daemon.status(&id)["state_url"],
        format!("s3://daemon-state/pipelines/{id}")
    );
    wait_rows(&s.out, STEP);
    wait_until(DEADLINE, "a checkpoint", || {
        (daemon.status(&id)["last_checkpoint"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let listing = http_get(
        &s3,
        &format!("/daemon-state?list-type=2&prefix=pipelines/{id}/"),
    );
    assert!(listing.contains("MANIFEST"), "{listing}");
    daemon.kill9();
    restarts_exactly_once(&mut daemon, &id, &s.out);
}

/// The newest row per key of a Debezium sink's output, replayed: every `before` must be the
/// row last written for its key.
fn debezium_rows(out: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut rows = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(out).unwrap_or_default().lines() {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = |row: &serde_json::Value| row["product"].as_str().unwrap().to_string();
        if !change["before"].is_null() {
            let before = &change["before"];
            assert_eq!(rows.remove(&key(before)).as_ref(), Some(before), "{line}");
        }
        if !change["after"].is_null() {
            rows.insert(key(&change["after"]), change["after"].clone());
        }
    }
    rows
}

/// A checkpoint taken part-way through a Debezium file: the resumed source reads the rest at
/// once, so the batch the updating aggregate gets first retracts its group's old row, then
/// adds and retracts rows of its own. The aggregate applied a batch's changes per group in
/// the order first seen (retractions first here), took more than the group held, and
/// DataFusion's `sum` overflowed (a panic at every parallelism). Each line but the first is an
/// update, so wherever the stop falls the resumed batch is of that shape.
#[test]
fn a_debezium_aggregate_stopped_part_way_resumes_with_the_rows_left() {
    let s = setup();
    let dir = s.out.parent().unwrap();
    let input = dir.join("changes.json");
    let updates = 400;
    let change = |before: Option<i64>, after: i64| {
        let row = |q: i64| serde_json::json!({"id": 1, "product": "x", "quantity": q});
        serde_json::json!({
            "before": before.map(row),
            "after": row(after),
            "op": if before.is_some() { "u" } else { "c" },
        })
        .to_string()
    };
    let mut lines = vec![change(None, 1)];
    lines.extend((1..=updates).map(|q| change(Some(q), q + 1)));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let query = dir.join("debezium.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE TABLE changes (id INT, product TEXT, quantity INT) WITH (connector = 'single_file', path = '{}', format = 'debezium_json', type = 'source');
             CREATE TABLE totals (product TEXT PRIMARY KEY, c BIGINT, q BIGINT) WITH (connector = 'single_file', path = '{}', format = 'debezium_json', type = 'sink');
             INSERT INTO totals SELECT product, count(*), sum(quantity) FROM changes GROUP BY product;",
            input.display(),
            s.out.display()
        ),
    )
    .unwrap();
    let state_dir = dir.join("state");
    let state = path_str(&state_dir);

    // A line every 10 ms: the first checkpoint (200 ms) and the stop's fall early in the file.
    let pace = [("ARROYO_TEST_FILE_PACE", "1:10".to_string())];
    let run = start_run_with(&["-p", "2", "-s", state, path_str(&query)], &pace, &s.log);
    wait_until(DEADLINE, "a checkpoint", || {
        let pipelines = std::fs::read_dir(state_dir.join("state")).ok()?;
        pipelines
            .flatten()
            .filter_map(|p| std::fs::read_dir(p.path().join("checkpoints")).ok())
            .flatten()
            .flatten()
            .any(|epoch| epoch.path().join("MANIFEST").exists())
            .then_some(())
    });
    interrupt(run, &s.log);
    let stopped = debezium_rows(&s.out);
    let q = stopped.get("x").map_or(0, |row| row["q"].as_i64().unwrap());
    assert!(
        q < updates,
        "the run was to stop part-way through the file; it wrote q = {q}"
    );

    // Resumed at another parallelism, unpaced: the rest of the file is one batch.
    let mut run = start_run_with(&["-p", "3", "-s", state, path_str(&query)], &[], &s.log);
    let status = wait_exit(&mut run, DEADLINE);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("resuming it"), "{log}");
    let last = debezium_rows(&s.out);
    assert_eq!(
        last.get("x"),
        Some(&serde_json::json!({"product": "x", "c": 1, "q": updates + 1})),
        "{last:?}"
    );
}
