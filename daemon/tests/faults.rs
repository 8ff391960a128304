//! The fault suite, through the real binaries: seeded kill -9 loops of the worker, of
//! `arroyod run` and of the daemon, and crashes injected between the steps of a checkpoint
//! (the `failpoints` feature, which only test builds have). Its siblings: `corruption.rs`
//! (corrupt checkpoints), `clients.rs` (concurrent clients), `disk.rs` (a full filesystem).
//!
//! Every test writes impulse counters to a sink and, after a clean stop, checks exactly-once
//! per counter, reporting the first gap or repeat. The loops are seeded
//! (`ARROYO_FAULT_SEED`, printed) and run 20 kills each; `ARROYO_SOAK=1` runs ten times as
//! many. Each loop prints its figures: kills, rows, lost, repeated.

mod harness;

use harness::fault::{
    LOOP_ENV, committed_counters, counters_query, fault_loop, files_query, interrupt, report,
    rows_in, start_run_with, tally, wait_rows, worker_of,
};
use harness::{
    DEADLINE, TestDaemon, alive, counters_in, path_str, signal, signal_group, wait_exit, wait_until,
};
use rand::Rng;

#[test]
fn kill_9_loops_of_the_worker_and_of_run_keep_every_counter_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let query = counters_query(dir.path(), &out);
    let state = dir.path().join("state");
    let log = dir.path().join("run.log");

    // The worker, killed 20 times under one run.
    let (mut rng, kills) = fault_loop("worker kill -9");
    let run = start_run_with(&state, &query, &log, &LOOP_ENV);
    let mut worker = wait_until(DEADLINE, "the worker", || worker_of(run.id()));
    for _ in 0..kills {
        wait_rows(&out, rows_in(&out) + rng.random_range(20..400));
        signal(worker, "KILL");
        let killed = worker;
        worker = wait_until(DEADLINE * 2, "a new worker", || {
            worker_of(run.id()).filter(|w| *w != killed)
        });
    }
    wait_rows(&out, rows_in(&out) + 100);
    assert!(
        interrupt(run).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    report("worker kill -9", kills, &out);

    // The whole run, killed 20 times and started again.
    let (mut rng, kills) = fault_loop("run kill -9");
    for _ in 0..kills {
        let mut run = start_run_with(&state, &query, &log, &LOOP_ENV);
        let worker = wait_until(DEADLINE * 2, "the worker", || worker_of(run.id()));
        wait_rows(&out, rows_in(&out) + rng.random_range(20..400));
        signal_group(run.id(), "KILL");
        wait_exit(&mut run, DEADLINE);
        wait_until(DEADLINE, "the worker to die with its run", || {
            (!alive(worker)).then_some(())
        });
    }
    let run = start_run_with(&state, &query, &log, &LOOP_ENV);
    wait_rows(&out, rows_in(&out) + 100);
    assert!(
        interrupt(run).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    report("run kill -9", kills, &out);
}

/// Submits the counters query to `d`; its id.
fn submit_counters(d: &TestDaemon, query: &std::path::Path) -> String {
    d.ctl_ok(&["submit", path_str(query), "--name", "counters"])
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

#[test]
fn a_kill_9_loop_of_the_daemon_keeps_every_counter_once() {
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = LOOP_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    d.restart();
    let out = d.dir.path().join("out.json");
    let query = counters_query(d.dir.path(), &out);
    let id = submit_counters(&d, &query);
    let (mut rng, kills) = fault_loop("daemon kill -9");
    for _ in 0..kills {
        d.wait_state(&id, "Running");
        wait_rows(&out, rows_in(&out) + rng.random_range(20..400));
        d.kill9();
        d.restart();
    }
    d.wait_state(&id, "Running");
    wait_rows(&out, rows_in(&out) + 100);
    d.ctl_ok(&["stop", &id]);
    report("daemon kill -9", kills, &out);
}

/// Where a crash point fires, and so what dies with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dies {
    /// The worker: `arroyod run` starts another.
    Worker,
    /// `arroyod run` itself (its worker dies with it): the test starts it again.
    Run,
}

/// A crash at each step of a checkpoint, once (the process kills itself with SIGKILL at a
/// crash point of the `failpoints` feature): in the worker, state files written, MANIFEST
/// written, checkpoint completed but not reported, and a filesystem sink's files renamed to
/// their final names; in `arroyod run`, the completed checkpoint not yet in the database, and
/// in it but not yet snapshotted. After the crash the run goes on (or is started again), and
/// every counter is in the sink once: a `single_file` sink, or the committed files of a
/// `filesystem` sink for `sink_committed`.
#[test]
fn crashes_between_checkpoint_steps_keep_every_counter_once() {
    for (point, dies) in [
        ("checkpoint_state_written", Dies::Worker),
        ("checkpoint_manifest_written", Dies::Worker),
        ("checkpoint_completed", Dies::Worker),
        ("sink_committed", Dies::Worker),
        ("checkpoint_recording", Dies::Run),
        ("checkpoint_recorded", Dies::Run),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        let out = dir.path().join("out.json");
        let to_files = point == "sink_committed";
        let query = if to_files {
            files_query(dir.path(), &files)
        } else {
            counters_query(dir.path(), &out)
        };
        let rows = || {
            if to_files {
                committed_counters(&files)
            } else {
                counters_in(&std::fs::read_to_string(&out).unwrap_or_default())
            }
        };
        let wait_more = |n: usize| {
            wait_until(
                DEADLINE * 2,
                &format!("{point}: more than {n} rows"),
                || (rows().len() > n).then_some(()),
            )
        };
        let token = dir.path().join("crash-once");
        std::fs::write(&token, "").unwrap();
        let failpoints = format!("{point}=return({})", token.display());
        let log = dir.path().join("run.log");
        let state = dir.path().join("state");
        let mut envs = LOOP_ENV.to_vec();
        envs.push(("FAILPOINTS", &failpoints));
        let mut run = start_run_with(&state, &query, &log, &envs);
        wait_until(DEADLINE * 2, &format!("the crash at {point}"), || {
            (!token.exists()).then_some(())
        });
        if dies == Dies::Run {
            let status = wait_exit(&mut run, DEADLINE);
            assert_eq!(status.code(), None, "{point}: killed by a signal");
            run = start_run_with(&state, &query, &log, &LOOP_ENV);
        }
        wait_more(rows().len() + 300);
        let status = interrupt(run);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{point}: {text}");
        assert!(
            text.contains("crash point fires") && text.contains(point),
            "{point}: {text}"
        );
        let t = tally(rows());
        eprintln!(
            "crash at {point}: kills 1, rows {}, lost {}, repeated {}",
            t.rows, t.lost, t.repeated
        );
        assert!(t.first.is_none(), "{point}: {t:?}");
    }
}

/// A daemon that dies after uploading a metadata snapshot and before pointing `LATEST` to it
/// (crash point `snapshot_uploaded`) resumes its pipeline; a later restore of the metadata
/// from the snapshots (the data dir removed) resumes it too; every counter is written once.
#[test]
fn a_crash_in_a_snapshot_upload_keeps_every_counter_once() {
    let state = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let state_url = state.path().join("root");
    let mut d = TestDaemon::unstarted(&[
        "--state-url",
        path_str(&state_url),
        "--backup-url",
        path_str(backups.path()),
    ]);
    let token = d.dir.path().join("crash-once");
    std::fs::write(&token, "").unwrap();
    d.envs = LOOP_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    d.envs.push((
        "FAILPOINTS".into(),
        format!("snapshot_uploaded=return({})", token.display()),
    ));
    d.restart();
    let out = d.dir.path().join("out.json");
    let query = counters_query(d.dir.path(), &out);
    let id = submit_counters(&d, &query);
    wait_until(DEADLINE * 2, "the crash at snapshot_uploaded", || {
        (!token.exists() && !alive(d.pid())).then_some(())
    });
    assert!(d.log().contains("crash point fires"), "{}", d.log());
    d.kill9(); // reaps it
    // The snapshot uploaded is there, LATEST does not point to it.
    let snapshots = || {
        std::fs::read_dir(backups.path().join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    let orphan = snapshots();
    assert!(orphan.iter().any(|n| n.ends_with(".db")), "{orphan:?}");
    d.restart();
    d.wait_state(&id, "Running");
    wait_rows(&out, rows_in(&out) + 300);
    // A snapshot completes after the crash (LATEST written), then the data dir is lost.
    wait_until(DEADLINE * 2, "a complete snapshot", || {
        snapshots().iter().any(|n| n == "LATEST").then_some(())
    });
    assert!(d.term().success());
    std::fs::remove_dir_all(d.data_dir()).unwrap();
    d.restart();
    d.wait_state(&id, "Running");
    assert!(
        d.log()
            .contains("metadata restored from the newest snapshot"),
        "{}",
        d.log()
    );
    wait_rows(&out, rows_in(&out) + 300);
    d.ctl_ok(&["stop", &id]);
    report("crash at snapshot_uploaded", 1, &out);
}
