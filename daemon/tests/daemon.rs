//! The daemon and its client: real binaries over a real Unix socket.

mod harness;

use std::process::Stdio;

use harness::{DEADLINE, Lines, TestDaemon, alive, parent_of, wait_exit, wait_until};

const UNBOUNDED: &str = "CREATE TABLE impulse WITH (connector='impulse', event_rate='100'); SELECT counter FROM impulse;";

#[test]
fn submit_tail_status_stop_list_and_sigterm() {
    let mut d = TestDaemon::start();
    assert_eq!(d.socket_mode(), 0o660);
    let id = d.submit("imp", UNBOUNDED);
    let status = d.wait_state(&id, "Running");
    for key in ["id", "name", "state", "created_at", "failure"] {
        assert!(
            status.get(key).is_some(),
            "status --json lacks {key}: {status}"
        );
    }
    assert_eq!(status["name"], "imp");

    // The worker is a child process of the daemon.
    let worker = status["worker_pid"].as_u64().unwrap() as u32;
    assert!(worker > 0 && alive(worker));
    assert_eq!(parent_of(worker), Some(d.pid()));

    // tail --follow shows rows as they come: more than were there when it started.
    let mut tail = d
        .ctl_command(&["tail", "imp", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(tail.stdout.take().unwrap());
    let before = d.status(&id)["rows"].as_u64().unwrap() as usize;
    lines.wait_for(before + 20, DEADLINE);
    for (i, row) in lines.seen.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(row).unwrap();
        assert_eq!(v["counter"].as_u64(), Some(i as u64));
    }

    // list shows it by name.
    let list = d.ctl_ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("imp") && l.contains("Running")),
        "{list}"
    );

    // stop waits until Stopped; the follower's stream then ends.
    let out = d.ctl_ok(&["stop", "imp"]);
    assert!(out.contains("Stopped"), "{out}");
    assert_eq!(d.status(&id)["state"], "Stopped");
    assert!(wait_exit(&mut tail, DEADLINE).success());
    wait_until(DEADLINE, "the worker to exit", || {
        (!alive(worker)).then_some(())
    });

    // tail --from skips rows.
    let from = d.ctl_ok(&["tail", "imp", "--from", "10"]);
    let first: serde_json::Value = serde_json::from_str(from.lines().next().unwrap()).unwrap();
    assert_eq!(first["counter"], 10);

    assert!(d.term().success(), "SIGTERM must end the daemon with 0");
    assert!(!d.socket().exists(), "the socket is removed at shutdown");
}

#[test]
fn sigterm_stops_running_pipelines_and_exits_0() {
    let mut d = TestDaemon::start();
    let id = d.submit("a", UNBOUNDED);
    let worker = d.wait_state(&id, "Running")["worker_pid"].as_u64().unwrap() as u32;
    assert!(d.term().success());
    assert!(!alive(worker));
    // The pipeline survives the restart as a row and, as it should run, runs again.
    d.restart();
    let s = wait_until(DEADLINE, "the pipeline to resume", || {
        let s = d.status("a");
        (s["state"] == "Running" && s["generation"] == 2).then_some(s)
    });
    assert_eq!(s["id"], id.as_str());
    assert!(d.ctl_ok(&["list"]).contains(&id));
    // A pipeline stopped by its user stays stopped across a restart.
    d.ctl_ok(&["stop", "a"]);
    assert!(d.term().success());
    d.restart();
    assert_eq!(d.status("a")["state"], "Stopped");
}

#[test]
fn a_worker_dies_with_its_daemon() {
    let mut d = TestDaemon::start();
    let id = d.submit("orphan", UNBOUNDED);
    let worker = d.wait_state(&id, "Running")["worker_pid"].as_u64().unwrap() as u32;
    d.kill9();
    wait_until(DEADLINE, "the worker to die with its daemon", || {
        (!alive(worker)).then_some(())
    });
    // After the crash the pipeline is resumed by the restarted daemon, with a new worker.
    d.restart();
    let s = wait_until(DEADLINE, "the pipeline to resume", || {
        let s = d.status(&id);
        (s["state"] == "Running" && s["generation"] == 2).then_some(s)
    });
    assert_ne!(s["worker_pid"].as_u64().unwrap() as u32, worker);
}

#[test]
fn one_daemon_per_data_dir() {
    let d = TestDaemon::start();
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(harness::arroyod_bin())
        .arg("--socket")
        .arg(other.path().join("x.sock"))
        .arg("--data-dir")
        .arg(d.data_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pid {}", d.pid())), "{stderr}");
    // The first daemon still answers.
    d.ctl_ok(&["list"]);
}

#[test]
fn stale_socket_is_replaced() {
    let mut d = TestDaemon::start();
    d.kill9();
    assert!(d.socket().exists(), "kill -9 leaves the socket behind");
    d.restart();
    d.ctl_ok(&["list"]);
}

#[test]
fn bounded_pipeline_finishes_with_every_row() {
    let d = TestDaemon::start();
    let id = d.submit(
        "bounded",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10000', message_count='500'); SELECT counter, subtask_index FROM impulse;",
    );
    d.wait_state(&id, "Finished");
    let rows = d.ctl_ok(&["tail", &id]);
    assert_eq!(rows.lines().count(), 500);
}

#[test]
fn bad_queries_are_refused_with_positions() {
    let d = TestDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.sql");
    std::fs::write(
        &file,
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10');\nSELECT nope FROM impulse;",
    )
    .unwrap();
    let v = d.ctl(&["validate", file.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&v.stderr);
    assert!(stderr.contains("bad.sql:2:8:"), "{stderr}");
    // Submit refuses it with the same positioned errors.
    let s = d.ctl(&["submit", file.to_str().unwrap()]);
    assert_eq!(s.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&s.stderr);
    assert!(
        stderr.contains("bad.sql:2:8: error:") && stderr.contains("nope"),
        "{stderr}"
    );
    // Nothing was stored.
    assert_eq!(d.ctl_ok(&["--json", "list"]).trim(), "[]");
    // A missing pipeline is an error too.
    assert_eq!(d.ctl(&["status", "ghost"]).status.code(), Some(1));
}

#[test]
fn immediate_stop_kills_the_worker() {
    let d = TestDaemon::start();
    let id = d.submit("now", UNBOUNDED);
    let worker = d.wait_state(&id, "Running")["worker_pid"].as_u64().unwrap() as u32;
    let out = d.ctl_ok(&["stop", &id, "--mode", "immediate"]);
    assert!(out.contains("Stopped"), "{out}");
    wait_until(DEADLINE, "the worker to be killed", || {
        (!alive(worker)).then_some(())
    });
}

#[test]
fn metadata_is_snapshotted_at_shutdown_and_restores() {
    let remote = tempfile::tempdir().unwrap();
    let url = remote.path().to_str().unwrap();
    let mut d = TestDaemon::start_with(&["--backup-url", url]);
    let id = d.submit("kept", UNBOUNDED);
    d.wait_state(&id, "Running");
    assert!(d.term().success(), "{}", d.log());
    let latest = std::fs::read_to_string(remote.path().join("snapshots/LATEST"))
        .unwrap_or_else(|e| panic!("no LATEST ({e}):\n{}", d.log()));
    assert!(latest.starts_with("snapshot "), "{latest}");

    // Restore into a fresh data dir: a daemon there knows the pipeline.
    let mut fresh = TestDaemon::unstarted(&[]);
    let db = fresh.data_dir().join("arroyod.db");
    let out = std::process::Command::new(harness::arroyod_bin())
        .args(["restore-db", "--backup-url", url, "--to"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fresh.restart();
    // It was running when the daemon stopped: the daemon on the restored DB resumes it. Its
    // state location is relative to the state root, which is now the fresh data dir's: it
    // holds none of the checkpoints the metadata says completed, and the pipeline fails
    // saying so rather than start over.
    let s = fresh.wait_state("kept", "Failed");
    let failure = s["failure"].as_str().unwrap();
    assert!(
        failure.contains("(the metadata says so)")
            && failure.contains(&format!(
                "{}/{id}",
                fresh.data_dir().join("state").display()
            )),
        "{failure}"
    );
    // Given the state root where its checkpoints are, it resumes from them.
    assert!(fresh.term().success());
    let old_state = d.data_dir().join("state");
    fresh.extra_args = vec!["--state-url".into(), old_state.display().to_string()];
    fresh.restart();
    fresh.ctl_ok(&["resume", "kept"]);
    let s = fresh.wait_state("kept", "Running");
    assert_eq!(s["id"], id.as_str());

    // A damaged snapshot is refused.
    let name = latest
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("snapshot ");
    let object = remote.path().join("snapshots").join(name);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let out = std::process::Command::new(harness::arroyod_bin())
        .args(["restore-db", "--backup-url", url, "--to"])
        .arg(fresh.dir.path().join("other.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum"), "{stderr}");
}

#[test]
fn a_crashed_worker_is_restarted_with_a_new_generation() {
    let d = TestDaemon::start();
    let id = d.submit("phoenix", UNBOUNDED);
    let first = d.wait_state(&id, "Running");
    let worker = first["worker_pid"].as_u64().unwrap() as u32;
    assert_eq!(first["generation"], 1);
    harness::signal(worker, "KILL");
    let again = wait_until(DEADLINE, "a new worker to run", || {
        let s = d.status(&id);
        (s["state"] == "Running" && s["generation"] == 2).then_some(s)
    });
    let new_worker = again["worker_pid"].as_u64().unwrap() as u32;
    assert_ne!(new_worker, worker);
    assert!(alive(new_worker));
    assert_eq!(parent_of(new_worker), Some(d.pid()));
    // It still stops normally.
    assert!(d.ctl_ok(&["stop", &id]).contains("Stopped"));
}
