//! What the fault suites share: `arroyod run` in its own process group, the counters query
//! and the exactly-once check of its output (the first gap or repeat named), the seeded fault
//! loops, a private small tmpfs for full-disk tests, and the epochs of a state dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rand::SeedableRng;

use super::{
    DEADLINE, alive, arroyod_bin, counters_in, parent_of, path_str, signal, wait_exit, wait_until,
};

/// Checkpoints are taken this often in these tests.
pub const INTERVAL: &str = "200ms";

/// `arroyod run -s STATE QUERY` in its own process group, logging to `log`.
pub fn start_run(state: &Path, query: &Path, log: &Path) -> Child {
    start_run_with(state, query, log, &[])
}

/// [`start_run`] with more environment.
pub fn start_run_with(state: &Path, query: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    start_run_in(None, &["-s", path_str(state), path_str(query)], envs, log)
}

/// `arroyod run ARGS` in its own process group, in working directory `cwd` when given,
/// checkpointing every [`INTERVAL`] and logging to `log`.
pub fn start_run_in<V: AsRef<std::ffi::OsStr>>(
    cwd: Option<&Path>,
    args: &[&str],
    envs: &[(&str, V)],
    log: &Path,
) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(arroyod_bin());
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", INTERVAL)
        .envs(envs.iter().map(|(k, v)| (k, v)))
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
pub fn interrupt(mut run: Child) -> std::process::ExitStatus {
    signal(run.id(), "INT");
    wait_exit(&mut run, DEADLINE * 2)
}

/// The epoch directories under `state` that hold a MANIFEST, oldest first.
pub fn complete_epochs(state: &Path) -> Vec<PathBuf> {
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

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The largest state file of the epoch at `dir` (its MANIFEST aside).
pub fn largest_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "MANIFEST")
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path()
}

/// Flips one byte in the middle of the largest state file of the epoch at `dir` (its length
/// stays: only the checksum can tell).
pub fn flip_a_byte(dir: &Path) {
    let file = largest_file(dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
}

/// How counters 0..K-1 fared in a sink: rows, lost and repeated counters, and the first
/// problem.
#[derive(Debug, Default)]
pub struct Tally {
    pub rows: usize,
    pub lost: usize,
    pub repeated: usize,
    /// The first gap or repeat.
    pub first: Option<String>,
}

pub fn tally(mut seen: Vec<u64>) -> Tally {
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
pub fn exactly_once(out: &Path) -> usize {
    let t = tally(counters_in(
        &std::fs::read_to_string(out).unwrap_or_default(),
    ));
    assert!(t.first.is_none(), "{t:?}");
    t.rows
}

/// The seeded random source of a fault loop, and how many kills it makes.
pub fn fault_loop(name: &str) -> (rand::rngs::StdRng, usize) {
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
pub fn worker_of(parent: u32) -> Option<u32> {
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
pub fn rows_in(out: &Path) -> usize {
    counters_in(&std::fs::read_to_string(out).unwrap_or_default()).len()
}

/// Waits until `out` holds more than `n` rows.
pub fn wait_rows(out: &Path, n: usize) {
    wait_until(DEADLINE * 2, &format!("more than {n} rows"), || {
        (rows_in(out) > n).then_some(())
    });
}

/// Checks `out` after the loop `name` made `kills` kills, printing its figures.
pub fn report(name: &str, kills: usize, out: &Path) {
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
pub fn counters_query(dir: &Path, out: &Path) -> PathBuf {
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
pub const LOOP_ENV: [(&str, &str); 4] = [
    ("ARROYO_CHECKPOINT_INTERVAL", "500ms"),
    ("ARROYO_RESTART_BUDGET", "100000"),
    ("ARROYO_RESTART_BACKOFF", "10ms"),
    ("ARROYO_RESTART_WINDOW", "1s"),
];

/// Runs `script` with `sh` in a private mount namespace (a user namespace mapping us to root,
/// so it works unprivileged too) where `DIR` is a fresh tmpfs of `size`; returns its output.
/// The script's own waits are bounded with `timeout`.
pub fn on_small_tmpfs(size: &str, script: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    in_private_tmpfs(dir.path(), size, script)
}

/// Runs `script` like [`on_small_tmpfs`], with the tmpfs mounted at `dir` (`/tmp` hides the
/// host's); `$CTL` is arroyoctl, and no variable names a socket.
pub fn in_private_tmpfs(dir: &Path, size: &str, script: &str) -> Output {
    let full = format!(
        "set -u\nDIR={dir}\nBIN={bin}\nCTL={ctl}\nmount -t tmpfs -o size={size} tmpfs \"$DIR\" || exit 90\n{script}",
        dir = dir.display(),
        bin = arroyod_bin().display(),
        ctl = super::arroyoctl_bin().display(),
    );
    let mut child = Command::new("unshare")
        .args(["--map-root-user", "--mount", "sh", "-c", &full])
        .env_remove("RUST_LOG")
        .env_remove("ARROYO_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) is missing");
    let status = wait_exit(&mut child, DEADLINE * 4);
    let out = child.wait_with_output().unwrap();
    assert_ne!(
        status.code(),
        Some(90),
        "cannot mount a tmpfs in a private namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The counters in every visible JSON file under `dir` (staged files are hidden).
pub fn committed_counters(dir: &Path) -> Vec<u64> {
    fn walk(dir: &Path, out: &mut Vec<u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                let text = std::fs::read_to_string(e.path()).unwrap();
                out.extend(text.lines().map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["counter"]
                        .as_u64()
                        .unwrap()
                }));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// A query writing impulse counters to a filesystem sink in `files` (JSON, files rolled at
/// 2 kB), which commits its files at each checkpoint for good.
pub fn files_query(dir: &Path, files: &Path) -> PathBuf {
    let query = dir.join("files.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'filesystem', type = 'sink',
               path = '{}', format = 'json', 'rolling_policy.file_size' = '2kb');
             INSERT INTO out SELECT counter FROM impulse;",
            files.display()
        ),
    )
    .unwrap();
    query
}

/// Runs `query` on `state` until three checkpoints completed, then stops it with SIGINT.
pub fn run_to_three_checkpoints(state: &Path, query: &Path, log: &Path) {
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

/// Asserts that `out` is a client's answer to a daemon lost during its call: exit 3, saying
/// so, with a hint to check `list` before retrying.
pub fn assert_lost_during_the_call(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("during the call"), "{stderr}");
    assert!(
        stderr.contains("hint:") && stderr.contains("arroyoctl list"),
        "{stderr}"
    );
}
