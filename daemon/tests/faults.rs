//! Faults through the real binaries: corrupt checkpoints (issue 9.13).
//!
//! Every test writes impulse counters to a sink and checks exactly-once per counter after a
//! clean stop.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use harness::{DEADLINE, arroyod_bin, counters_in, path_str, signal, wait_exit, wait_until};

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

/// The counters of the complete lines of `out`: 0..K-1 each once (or panics naming the
/// first gap or repeat); returns K.
fn exactly_once(out: &Path) -> usize {
    let mut seen = counters_in(&std::fs::read_to_string(out).unwrap_or_default());
    let n = seen.len();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        panic!("counter {} repeated in {n} rows", w[0]);
    }
    if let Some((i, c)) = seen.iter().enumerate().find(|(i, c)| **c != *i as u64) {
        panic!("counter {i} missing ({c} in its place) in {n} rows");
    }
    n
}


