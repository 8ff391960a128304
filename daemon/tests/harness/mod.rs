//! The one harness for integration tests: it starts the real binaries (`arroyod`, `arroyoctl`)
//! on a temp data dir and socket, waits on conditions with deadlines (never fixed sleeps), and
//! can kill -9, terminate and restart the daemon.
#![allow(dead_code)]

pub mod fault;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single condition may take to come true.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn arroyod_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arroyod"))
}

/// `arroyoctl`, built beside `arroyod` by `cargo test --workspace`.
pub fn arroyoctl_bin() -> PathBuf {
    let path = arroyod_bin().with_file_name("arroyoctl");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Polls `cond` until it returns Some or `deadline` passes (then panics naming `what`).
pub fn wait_until<T>(deadline: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Sends `signal` (e.g. "TERM", "KILL", "INT") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Sends `signal` to every process of the process group `pgid`, as a terminal's Ctrl-C does.
pub fn signal_group(pgid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} -- -{pgid} failed");
}

/// True while a process with `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.split(' ').nth(1)?.parse().ok()
}

/// Waits for a child with a deadline.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> ExitStatus {
    wait_until(deadline, "the process to exit", || {
        child.try_wait().unwrap()
    })
}

/// Reads a child's stdout lines on a thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: vec![] }
    }

    /// Waits until at least `n` lines have been read in total.
    pub fn wait_for(&mut self, n: usize, deadline: Duration) -> &[String] {
        let end = Instant::now() + deadline;
        while self.seen.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("waiting for {n} lines, got {}: {e}", self.seen.len()),
            }
        }
        &self.seen
    }

    /// Reads every remaining line until the writer closes.
    pub fn drain(&mut self, deadline: Duration) -> &[String] {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return &self.seen,
                Err(e) => panic!("stream did not end: {e}"),
            }
        }
    }
}

/// A daemon on a temp data dir and socket.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Passed to every start of the daemon, after `--socket` and `--data-dir`.
    pub extra_args: Vec<String>,
    /// Environment of every start of the daemon (its workers inherit it).
    pub envs: Vec<(String, String)>,
    /// When set, the daemon starts in this working directory and is given its data dir as a
    /// path relative to it.
    pub cwd: Option<PathBuf>,
}

/// `to` as a path relative to `from` (both absolute).
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(&[])
    }

    /// Like [`TestDaemon::start`], with `extra_args` on every start of the daemon.
    pub fn start_with(extra_args: &[&str]) -> TestDaemon {
        let mut d = TestDaemon::unstarted(extra_args);
        d.restart();
        d
    }

    /// A temp data dir and socket, the daemon not started (to prepare the data dir first).
    pub fn unstarted(extra_args: &[&str]) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        TestDaemon {
            dir,
            child: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            envs: Vec::new(),
            cwd: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("arroyod.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("arroyod.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A daemon command on this data dir and socket, not started.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(arroyod_bin());
        let data_dir = match &self.cwd {
            Some(cwd) => {
                cmd.current_dir(cwd);
                relative_path(cwd, &self.data_dir())
            }
            None => self.data_dir(),
        };
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--data-dir")
            .arg(data_dir)
            .args(&self.extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("ARROYO_SOCKET")
            .env_remove("ARROYO_BACKUP_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts the daemon (again) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting arroyod");
        self.child = Some(child);
        wait_until(DEADLINE, "the daemon to answer", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("arroyod exited early ({status}):\n{}", self.log());
            }
            let out = self.ctl(&["list"]);
            out.status.success().then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn term(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, DEADLINE)
    }

    /// Runs `arroyoctl --socket S args...` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().expect("running arroyoctl")
    }

    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(arroyoctl_bin());
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }

    /// `arroyoctl ... ` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "arroyoctl {args:?} failed ({}): {}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes `sql` to a file in the temp dir and submits it; returns the pipeline id.
    pub fn submit(&self, name: &str, sql: &str) -> String {
        self.submit_with(name, sql, &[])
    }

    /// Like [`TestDaemon::submit`], with more `submit` flags (`--parallelism 2`...).
    pub fn submit_with(&self, name: &str, sql: &str, flags: &[&str]) -> String {
        let path = self.dir.path().join(format!("{name}.sql"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let mut args = vec!["submit", path.to_str().unwrap(), "--name", name];
        args.extend_from_slice(flags);
        let out = self.ctl_ok(&args);
        out.split_whitespace().last().unwrap().to_string()
    }

    /// `status --json` of a pipeline.
    pub fn status(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["--json", "status", id])).unwrap()
    }

    /// Waits until the pipeline is in `state`.
    pub fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        wait_until(DEADLINE, &format!("pipeline {id} to be {state}"), || {
            let s = self.status(id);
            (s["state"] == state).then_some(s)
        })
    }

    pub fn socket_mode(&self) -> u32 {
        std::fs::metadata(self.socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `arroyod run ARGS` with `stdin` as its input; returns its output. A run that has
/// not ended after [`DEADLINE`] is killed and fails the test.
pub fn run_query(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(arroyod_bin())
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting arroyod run");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arroyod run {args:?} did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The `counter` field of each JSON line of `text` that is complete (ends with `}`).
pub fn counters_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["counter"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Every file under `dir`, relative to it, sorted; with `hidden` false, not those under a
/// directory or name starting with `.` (a sink's staging directory).
pub fn files_under(dir: &Path, hidden: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if !hidden && path.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `arroyod run ARGS` with stdin closed, like [`run_query`], but a run still going after
/// `deadline` is killed and returned as `Err` (with what it printed so far) instead of failing
/// the test: for callers that tally outcomes, such as the conformance cases.
pub fn try_run_query(args: &[&str], deadline: Duration) -> Result<Output, Output> {
    let mut child = Command::new(arroyod_bin())
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting arroyod run");
    // Readers hand their bytes over a channel, so a worker that outlives a killed run and
    // still holds the pipes cannot block the test.
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| b"<the output pipe stayed open after exit>".to_vec())
    };
    let out = Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    };
    if timed_out { Err(out) } else { Ok(out) }
}

/// A real S3-compatible server on loopback: moto's server (PyPI `moto[server]`, installed by
/// `.ci/run`; run as `python3 -m moto.server` so no script directory needs to be on PATH), on a
/// free port, killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is missing");
        let mut server = S3Server { child, port };
        wait_until(DEADLINE, "moto's server to listen", || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "moto's server exited ({status}): pip install 'moto[server]' (.ci/run does)"
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain HTTP request (object_store does not create buckets).
    pub fn create_bucket(&self, name: &str) {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {name}: {response}"
        );
    }

    /// The environment that points object_store's S3 client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Table options that point the `filesystem` connector at this server.
    pub fn storage_options(&self) -> String {
        format!(
            "'storage.aws_endpoint' = '{}', 'storage.aws_allow_http' = 'true', \
             'storage.aws_access_key_id' = 'test', 'storage.aws_secret_access_key' = 'test', \
             'storage.aws_region' = 'us-east-1'",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sql` through `arroyod run -p P -s <fresh dir> -`, which must succeed; returns the rows
/// it printed, parsed.
pub fn query_rows(parallelism: usize, sql: &str) -> Vec<serde_json::Value> {
    let state = tempfile::tempdir().unwrap();
    let p = parallelism.to_string();
    let out = run_query(
        &["-p", &p, "-s", path_str(&state.path().join("s")), "-"],
        sql,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `sql`, which must be refused with exit 1; returns stderr.
pub fn query_refused(sql: &str) -> String {
    let state = tempfile::tempdir().unwrap();
    let out = run_query(&["-s", path_str(&state.path().join("s")), "-"], sql);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// The newest complete checkpoint (one with a MANIFEST) under the state dir of `arroyod run -s`.
pub fn newest_checkpoint(state: &Path) -> Option<u64> {
    let pipelines = std::fs::read_dir(state.join("state")).ok()?;
    pipelines
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path().join("checkpoints")).ok())
        .flat_map(|epochs| epochs.flatten())
        .filter(|e| e.path().join("MANIFEST").exists())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .max()
}

/// Runs the query file `query` with `arroyod run -p FIRST -s STATE`, checkpointing every 20 ms
/// and its file sources reading `pace_lines` lines per checkpoint, stops it with SIGINT once
/// checkpoint `epoch` is complete, then runs it again at `-p SECOND` on the same state to the
/// end; the second run must resume the pipeline. Both runs' stderr go to files beside `state`.
pub fn run_stopped_and_restored(
    query: &Path,
    state: &Path,
    (first, second): (u32, u32),
    pace_lines: usize,
    epoch: u64,
) {
    let log = state.with_extension("first.log");
    let mut child = Command::new(arroyod_bin())
        .args([
            "run",
            "-p",
            &first.to_string(),
            "-s",
            path_str(state),
            path_str(query),
        ])
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", "20ms")
        .env("ARROYO_TEST_FILE_PACE", format!("{pace_lines}:1000"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(DEADLINE, "a checkpoint of the first run", || {
        newest_checkpoint(state)
            .is_some_and(|n| n >= epoch)
            .then_some(())
    });
    signal(child.id(), "INT");
    let status = wait_exit(&mut child, DEADLINE);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the first run: {text}");
    assert!(
        text.contains("state=Stopped"),
        "not stopped part-way: {text}"
    );
    let out = try_run_query(
        &[
            "-p",
            &second.to_string(),
            "-s",
            path_str(state),
            path_str(query),
        ],
        DEADLINE * 2,
    )
    .unwrap_or_else(|o| panic!("did not end: {}", String::from_utf8_lossy(&o.stderr)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(state.with_extension("second.log"), stderr.as_bytes()).unwrap();
    assert!(out.status.success(), "the restored run: {stderr}");
    assert!(stderr.contains("resuming it"), "{stderr}");
}
