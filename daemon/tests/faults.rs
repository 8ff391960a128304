//! The fault suite, through the real binaries: corrupt checkpoints (issue 9.13), seeded
//! kill -9 loops of the worker, of `arroyod run` and of the daemon, and crashes injected
//! between the steps of a checkpoint (the `failpoints` feature, which only test builds have).
//!
//! Every test writes impulse counters to a sink and, after a clean stop, checks exactly-once
//! per counter, reporting the first gap or repeat. The loops are seeded
//! (`ARROYO_FAULT_SEED`, printed) and run 20 kills each; `ARROYO_SOAK=1` runs ten times as
//! many. Each loop prints its figures: kills, rows, lost, repeated.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use harness::{
    DEADLINE, TestDaemon, alive, arroyod_bin, counters_in, parent_of, path_str, signal,
    signal_group, wait_exit, wait_until,
};
use rand::{Rng, SeedableRng};

/// Checkpoints are taken this often in these tests.
const INTERVAL: &str = "200ms";

/// `arroyod run -s STATE QUERY` in its own process group, logging to `log`.
fn start_run(state: &Path, query: &Path, log: &Path) -> Child {
    start_run_with(state, query, log, &[])
}

/// [`start_run`] with more environment.
fn start_run_with(state: &Path, query: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(arroyod_bin())
        .args(["run", "-s", path_str(state), path_str(query)])
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", INTERVAL)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .process_group(0)
        .spawn()
        .expect("starting arroyod run")
}

/// Stops a run with SIGINT; returns its exit status.
fn interrupt(mut run: Child) -> std::process::ExitStatus {
    signal(run.id(), "INT");
    wait_exit(&mut run, DEADLINE * 2)
}

/// The epoch directories under `state` that hold a MANIFEST, oldest first.
fn complete_epochs(state: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if e.file_name() == "MANIFEST" {
                out.push(dir.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(state, &mut out);
    out.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    out
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Flips one byte in the middle of the largest state file of the epoch at `dir` (its length
/// stays: only the checksum can tell).
fn flip_a_byte(dir: &Path) {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "MANIFEST")
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
}

/// How counters 0..K-1 fared in a sink: rows, lost and repeated counters, and the first
/// problem.
#[derive(Debug, Default)]
struct Tally {
    rows: usize,
    lost: usize,
    repeated: usize,
    first: Option<String>,
}

fn tally(mut seen: Vec<u64>) -> Tally {
    let rows = seen.len();
    seen.sort_unstable();
    let mut t = Tally {
        rows,
        ..Tally::default()
    };
    let mut expected = 0;
    for c in seen {
        if c + 1 == expected {
            t.repeated += 1;
            t.first.get_or_insert(format!("counter {c} repeated"));
        } else if c >= expected {
            t.lost += (c - expected) as usize;
            if c > expected {
                t.first.get_or_insert(format!("counter {expected} lost"));
            }
            expected = c + 1;
        }
    }
    t
}

/// The counters of the complete lines of `out`: 0..K-1 each once (or panics naming the
/// first gap or repeat); returns K.
fn exactly_once(out: &Path) -> usize {
    let t = tally(counters_in(
        &std::fs::read_to_string(out).unwrap_or_default(),
    ));
    assert!(t.first.is_none(), "{t:?}");
    t.rows
}

/// The seeded random source of a fault loop, and how many kills it makes.
fn fault_loop(name: &str) -> (rand::rngs::StdRng, usize) {
    let seed = std::env::var("ARROYO_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let kills = if std::env::var("ARROYO_SOAK").is_ok_and(|v| v == "1") {
        200
    } else {
        20
    };
    eprintln!("{name}: seed {seed} (replay: ARROYO_FAULT_SEED={seed}), {kills} kills");
    (rand::rngs::StdRng::seed_from_u64(seed), kills)
}

/// The live `arroyod worker` child of `parent`.
fn worker_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            parent_of(*pid) == Some(parent)
                && alive(*pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"worker"))
        })
}

/// Rows in the single_file sink `out` now.
fn rows_in(out: &Path) -> usize {
    counters_in(&std::fs::read_to_string(out).unwrap_or_default()).len()
}

/// Waits until `out` holds more than `n` rows.
fn wait_rows(out: &Path, n: usize) {
    wait_until(DEADLINE * 2, &format!("more than {n} rows"), || {
        (rows_in(out) > n).then_some(())
    });
}

/// Checks `out` after the loop `name` made `kills` kills, printing its figures.
fn report(name: &str, kills: usize, out: &Path) {
    let t = tally(counters_in(
        &std::fs::read_to_string(out).unwrap_or_default(),
    ));
    eprintln!(
        "{name}: kills {kills}, rows {}, lost {}, repeated {}",
        t.rows, t.lost, t.repeated
    );
    assert!(t.first.is_none(), "{name}: {t:?}");
}

/// A query writing impulse counters to the single_file `out`.
fn counters_query(dir: &Path, out: &Path) -> PathBuf {
    let query = dir.join("counters.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
             INSERT INTO out SELECT counter FROM impulse;",
            out.display()
        ),
    )
    .unwrap();
    query
}

/// Environment of the loops: checkpoints every 500 ms, a restart budget that lasts, and a
/// short window so that the backoff (doubled per restart within the window) stays short.
const LOOP_ENV: [(&str, &str); 4] = [
    ("ARROYO_CHECKPOINT_INTERVAL", "500ms"),
    ("ARROYO_RESTART_BUDGET", "100000"),
    ("ARROYO_RESTART_BACKOFF", "10ms"),
    ("ARROYO_RESTART_WINDOW", "1s"),
];

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
    let id = d
        .ctl_ok(&["submit", path_str(&query), "--name", "counters"])
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
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

/// A crash (SIGKILL of the worker, once) at each step of a checkpoint: state files written,
/// MANIFEST written, checkpoint completed but not yet recorded by the daemon, and a
/// filesystem sink's files committed. The run restarts its worker and every counter is
/// there once.
#[test]
fn crashes_between_checkpoint_steps_keep_every_counter_once() {
    for point in [
        "checkpoint_state_written",
        "checkpoint_manifest_written",
        "checkpoint_completed",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.json");
        let query = counters_query(dir.path(), &out);
        let token = dir.path().join("crash-once");
        std::fs::write(&token, "").unwrap();
        let failpoints = format!("{point}=return({})", token.display());
        let log = dir.path().join("run.log");
        let mut envs = LOOP_ENV.to_vec();
        envs.push(("FAILPOINTS", &failpoints));
        let run = start_run_with(&dir.path().join("state"), &query, &log, &envs);
        wait_until(DEADLINE * 2, &format!("the crash at {point}"), || {
            (!token.exists()).then_some(())
        });
        wait_rows(&out, rows_in(&out) + 300);
        let status = interrupt(run);
        assert!(
            status.success(),
            "{point}: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("crash point fires") && text.contains(point),
            "{point}: {text}"
        );
        report(point, 1, &out);
    }
}

/// Runs `query` on `state` until three checkpoints completed, then stops it with SIGINT.
fn run_to_three_checkpoints(state: &Path, query: &Path, log: &Path) {
    let run = start_run(state, query, log);
    wait_until(DEADLINE * 2, "three complete checkpoints", || {
        (complete_epochs(state).len() >= 3).then_some(())
    });
    let status = interrupt(run);
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
}

/// Issue 9.13 (and 9.11's checkpoint files, 0600): a corrupt newest checkpoint failed every rerun ("checksum differs") although
/// older complete ones existed. A rerun now falls back to the newest valid checkpoint when
/// every sink rewinds to it, and says which; with a sink that committed past it, it refuses,
/// saying why.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_newest_valid_one_when_sinks_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let query = counters_query(dir.path(), &out);
    let state = dir.path().join("state");
    let log = dir.path().join("run.log");
    run_to_three_checkpoints(&state, &query, &log);
    let first = exactly_once(&out);
    let epochs = complete_epochs(&state);
    // Checkpoints are the owner's only, whatever the umask (the tests run with 022).
    for epoch in &epochs {
        assert_eq!(mode(epoch), 0o700, "{}", epoch.display());
        for f in std::fs::read_dir(epoch).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
    let newest = epochs.last().unwrap();
    let newest_epoch: u64 = newest
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    flip_a_byte(newest);

    let run = start_run(&state, &query, &log);
    wait_rows(&out, first + 300);
    let status = interrupt(run);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.contains(&format!("checkpoint {newest_epoch} under"))
            && text.contains("checksum differs from the MANIFEST")
            && text.contains("falling back to the newest valid checkpoint"),
        "{text}"
    );
    let last = exactly_once(&out);
    assert!(last > first, "{first} then {last}");

    // A filesystem sink commits its files at each checkpoint for good: no fallback past them.
    let files = dir.path().join("files");
    let fs_query = dir.path().join("files.sql");
    std::fs::write(
        &fs_query,
        format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'filesystem', type = 'sink',
               path = '{}', format = 'json', 'rolling_policy.file_size' = '2kb');
             INSERT INTO out SELECT counter FROM impulse;",
            files.display()
        ),
    )
    .unwrap();
    let fs_state = dir.path().join("fs-state");
    let fs_log = dir.path().join("fs.log");
    run_to_three_checkpoints(&fs_state, &fs_query, &fs_log);
    flip_a_byte(complete_epochs(&fs_state).last().unwrap());
    let mut run = start_run(&fs_state, &fs_query, &fs_log);
    let status = wait_exit(&mut run, DEADLINE * 2);
    let text = std::fs::read_to_string(&fs_log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("checksum differs from the MANIFEST")
            && text.contains("committed output past it"),
        "{text}"
    );
}
