//! Runs a case through the real `arroyod run` in each [`Mode`] and compares the sink file with
//! the oracle.
//!
//! Every case runs in three modes ([`modes`]): `-p 1` reading each file at once, `-p 3`
//! reading each file in 1 to 100 steps, and stopped and restored. A case lives in its own temp
//! dir (kept when it fails): `t1.json` (and `t2.json`), and per mode `case-<mode>.sql` (the
//! source tables, a `single_file` sink writing `out-<mode>.json`, and the INSERT), a state dir
//! and the runs' stderr (`run-<mode>.log`, `first-run-<mode>.log`). A restored run is two
//! runs on one state dir:
//!
//! 1. `arroyod run -p A` with checkpoints every 20 ms and its file sources paced
//!    (`ARROYO_TEST_FILE_PACE`: at most 40 steps a file, one per checkpoint), stopped with
//!    SIGINT (a final checkpoint) once checkpoint E (1 to 4) is complete;
//! 2. `arroyod run -p B` on the same state dir, which must say it resumes the pipeline, and
//!    runs to the end. The sink file (truncated to its checkpointed length on restore) must
//!    then hold exactly the expected rows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::compare::{self, Row};
use super::data;
use super::oracle::Expected;
use super::query::{Case, Output};
use crate::harness::{
    DEADLINE, arroyod_bin, newest_checkpoint, path_str, signal, wait_exit, wait_until,
};

/// At most this many steps (one per checkpoint) read a file in the first run of a restored run.
const PACED_STEPS: usize = 40;

/// How a case runs.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Straight through at this parallelism, each file read at once (one batch).
    Straight(u32),
    /// Straight through at this parallelism, each file read this many lines at a time (many
    /// batches, so watermarks, window closes and updates interleave with the data).
    Paced(u32, usize),
    /// Checkpointed at the first parallelism, stopped after the checkpoint of the given epoch,
    /// restored at the second.
    Restored(u32, u32, u64),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Straight(p) => write!(f, "-p {p}"),
            Mode::Paced(p, lines) => write!(f, "-p {p}, read {lines} lines at a time"),
            Mode::Restored(a, b, epoch) => {
                write!(
                    f,
                    "stopped at -p {a} after checkpoint {epoch}, restored at -p {b}"
                )
            }
        }
    }
}

impl Mode {
    fn file_tag(self) -> String {
        match self {
            Mode::Straight(p) => format!("p{p}"),
            Mode::Paced(p, _) => format!("p{p}-paced"),
            Mode::Restored(a, b, _) => format!("p{a}-p{b}"),
        }
    }
}

/// The modes every case runs in: parallelism 1 reading each file at once, parallelism 3
/// reading it in 1 to 100 steps, and its stop and restore.
pub fn modes(case: &Case) -> [Mode; 3] {
    let (a, b) = case.restore;
    let lines = case.longest_input();
    let steps = [1, 7, 30, 100][(case.seed / 4 % 4) as usize];
    [
        Mode::Straight(1),
        Mode::Paced(3, lines.div_ceil(steps).max(1)),
        Mode::Restored(a, b, 1 + case.seed % 4),
    ]
}

/// A case's files: its temp dir (kept when the case fails) and its input files.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// Writes the inputs of `case`.
    pub fn new(case: &Case) -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix(&format!("arroyod-diff-{}-", case.seed))
            .tempdir()
            .expect("a temp dir");
        // The JSON texts vary by their own seed, so the data and the query stay those of the
        // case's seed.
        let mut rng = StdRng::seed_from_u64(case.seed ^ 0x6a73_6f6e);
        for table in &case.tables {
            let path = dir.path().join(format!("{}.json", table.name));
            std::fs::write(&path, data::json_lines(table, &mut rng)).expect("writing an input");
        }
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn input(&self, table: &str) -> PathBuf {
        self.path().join(format!("{table}.json"))
    }

    /// The whole pipeline: the source tables, the sink writing `output`, the INSERT.
    pub fn sql(&self, case: &Case, output: &Path) -> String {
        let mut sql = String::new();
        for table in &case.tables {
            sql.push_str(&data::ddl(table, path_str(&self.input(&table.name))));
        }
        let format = match case.output {
            Output::Append => "json",
            Output::Updating => "debezium_json",
        };
        sql.push_str(&format!(
            "CREATE TABLE out WITH (connector = 'single_file', path = '{}', format = '{format}', type = 'sink');\n",
            path_str(output)
        ));
        sql.push_str(&format!("INSERT INTO out {};\n", case.query));
        sql
    }
}

/// Why a mode failed: one line, and the details (the diff, the stderr tail).
pub struct Failure {
    pub mode: Mode,
    pub reason: String,
    pub detail: String,
}

/// The last `error` line of a run's stderr (or its last line): why the run failed.
fn error_line(stderr: &str) -> &str {
    let mut lines = stderr
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let last = lines.clone().next();
    lines
        .find(|l| l.starts_with("error"))
        .or(last)
        .unwrap_or("no stderr")
}

/// Runs `case` in `mode` in `ws` and compares its output with `expected`.
pub fn run(case: &Case, ws: &Workspace, expected: &Expected, mode: Mode) -> Result<(), Failure> {
    let tag = mode.file_tag();
    let output = ws.path().join(format!("out-{tag}.json"));
    let query = ws.path().join(format!("case-{tag}.sql"));
    std::fs::write(&query, ws.sql(case, &output)).expect("writing the query");
    let state = ws.path().join(format!("state-{tag}"));
    let fail = |reason: String, detail: String| Failure {
        mode,
        reason,
        detail,
    };
    let first_log = ws.path().join(format!("first-run-{tag}.log"));
    let log = ws.path().join(format!("run-{tag}.log"));
    let logs = match mode {
        Mode::Restored(..) => format!("logs: {} {}", first_log.display(), log.display()),
        _ => format!("log: {}", log.display()),
    };
    let mut stderr = String::new();
    let mut envs = Vec::new();
    let parallelism = match mode {
        Mode::Straight(p) => p,
        Mode::Paced(p, lines) => {
            envs.push(("ARROYO_TEST_FILE_PACE", format!("{lines}:0")));
            p
        }
        Mode::Restored(first, second, epoch) => {
            let lines = case.longest_input();
            stopped_part_way(first, &state, &query, &first_log, lines, epoch)
                .map_err(|reason| fail(reason, logs.clone()))?;
            stderr = std::fs::read_to_string(&first_log).unwrap_or_default();
            second
        }
    };
    let p = parallelism.to_string();
    let args = ["-p", p.as_str(), "-s", path_str(&state), path_str(&query)];
    let run = run_arroyod(&args, &envs);
    let (Ok(out) | Err(out)) = &run;
    std::fs::write(&log, &out.stderr).expect("writing the log");
    let run_stderr = String::from_utf8_lossy(&out.stderr);
    if run.is_err() {
        return Err(fail(format!("did not end within {DEADLINE:?}"), logs));
    }
    if !out.status.success() {
        let why = format!("{}: {}", out.status, error_line(&run_stderr));
        return Err(fail(why, logs));
    }
    stderr.push_str(&run_stderr);
    if matches!(mode, Mode::Restored(..)) && !stderr.contains("resuming it") {
        return Err(fail(
            "the second run did not resume the pipeline".into(),
            logs,
        ));
    }
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    let schema = expected.schema.as_ref();
    let (got, unit): (Result<Vec<Row>, String>, _) = match case.output {
        Output::Append => (compare::rows_of_json(&text, schema, "the output"), "rows"),
        Output::Updating => (
            compare::final_rows_of_changes(&text, schema, "the output"),
            "final rows after replaying the changes",
        ),
    };
    let got = got.map_err(|e| fail(e, logs.clone()))?;
    let want = compare::rows_of_batches(&expected.batches);
    match compare::diff(&want, &got, unit) {
        None => Ok(()),
        Some(report) => {
            let (reason, rows) = report.split_once('\n').unwrap_or((&report, ""));
            Err(fail(
                format!("output differs: {reason}"),
                format!(
                    "{}\n  output: {}\n  {logs}",
                    rows.trim_start_matches('\n'),
                    output.display()
                ),
            ))
        }
    }
}

/// `arroyod run ARGS` with `envs` added, to its end; `Err` when it was still running at
/// [`DEADLINE`] and had to be killed. Only stderr is kept (the sink writes a file).
fn run_arroyod(args: &[&str], envs: &[(&str, String)]) -> Result<process::Output, process::Output> {
    let mut child = Command::new(arroyod_bin())
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting arroyod run");
    // The reader hands stderr over a channel: a worker that outlives a killed run and still
    // holds the pipe cannot block the test.
    let mut pipe = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut pipe, &mut text);
        let _ = tx.send(text);
    });
    let started = Instant::now();
    let mut killed = false;
    let mut exited = || {
        if let Some(status) = child.try_wait().expect("waiting for arroyod run") {
            return Some(status);
        }
        if started.elapsed() > DEADLINE {
            killed = true;
            let _ = child.kill();
            return Some(child.wait().expect("reaping arroyod run"));
        }
        None
    };
    let status = wait_until(DEADLINE * 2, "arroyod run to end or be killed", &mut exited);
    let out = process::Output {
        status,
        stdout: Vec::new(),
        stderr: rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| b"<stderr stayed open after the exit>".to_vec()),
    };
    if killed { Err(out) } else { Ok(out) }
}

/// The first run of a restored run: checkpoints every 20 ms, file sources paced to at most
/// [`PACED_STEPS`] steps (a paced source waits for the next checkpoint between two steps, so
/// the input takes that many checkpoints to read), stopped with SIGINT once checkpoint `epoch`
/// is complete. Its stderr goes to `log`.
fn stopped_part_way(
    parallelism: u32,
    state: &Path,
    query: &Path,
    log: &Path,
    lines: usize,
    epoch: u64,
) -> Result<(), String> {
    let lines_per_step = lines.div_ceil(PACED_STEPS).max(1);
    let mut child = Command::new(arroyod_bin())
        .arg("run")
        .args([
            "-p",
            &parallelism.to_string(),
            "-s",
            path_str(state),
            path_str(query),
        ])
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", "20ms")
        .env("ARROYO_TEST_FILE_PACE", format!("{lines_per_step}:1000"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("creating the log"))
        .spawn()
        .expect("starting arroyod run");
    wait_until(DEADLINE, "a checkpoint or the end of the run", || {
        let due = newest_checkpoint(state).is_some_and(|n| n >= epoch);
        (due || child.try_wait().unwrap().is_some()).then_some(())
    });
    let ended = child.try_wait().unwrap().is_some();
    if !ended {
        signal(child.id(), "INT");
    }
    let status = wait_exit(&mut child, DEADLINE);
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "the first run failed ({status}): {}",
            error_line(&stderr)
        ));
    }
    if ended || !stderr.contains("state=Stopped") {
        return Err("the first run was not stopped part-way (it ended before a checkpoint)".into());
    }
    Ok(())
}
