//! Regression tests of issue 9's daemon defects, through the real binaries: racing commands,
//! bounds, names, a daemon lost during a call, lost metadata, a full disk.

mod harness;

use std::process::{Child, Output, Stdio};

use harness::fault::{assert_lost_during_the_call, in_private_tmpfs, on_small_tmpfs};

use harness::{DEADLINE, TestDaemon, alive, parent_of, wait_until};

const UNBOUNDED: &str = "CREATE TABLE impulse WITH (connector='impulse', event_rate='100'); SELECT counter FROM impulse;";

/// The live `arroyod worker` processes whose parent is `daemon`.
fn workers_of(daemon: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            parent_of(*pid) == Some(daemon)
                && alive(*pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"worker"))
        })
        .collect()
}

/// Starts `arroyoctl ARGS` for each entry, all at once; waits for them, checking meanwhile
/// that the daemon never runs more than one worker.
fn race(d: &TestDaemon, commands: &[&[&str]]) -> Vec<Output> {
    let children: Vec<Child> = commands
        .iter()
        .map(|args| {
            d.ctl_command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let pid = child.id();
        loop {
            let live = workers_of(d.pid());
            assert!(live.len() <= 1, "workers {live:?} run at once");
            if !alive(pid) {
                break;
            }
        }
        outputs.push(child.wait_with_output().unwrap());
    }
    outputs
}

fn generation(d: &TestDaemon, id: &str) -> u64 {
    d.status(id)["generation"].as_u64().unwrap()
}

/// Issue 9.5: concurrent resumes could start two generations and let the older take the slot
/// (stuck Scheduling, a stop that hung). Commands on one pipeline are now applied in order.
#[test]
fn racing_resumes_and_stops_start_one_generation_and_stop_still_works() {
    let d = TestDaemon::start();
    let id = d.submit("race", UNBOUNDED);
    d.wait_state(&id, "Running");
    d.ctl_ok(&["stop", &id]);
    for _round in 0..3 {
        let before = generation(&d, &id);
        let resume: &[&str] = &["resume", &id];
        let resumes = race(&d, &[resume; 10]);
        let won = resumes.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{resumes:?}");
        for lost in resumes.iter().filter(|o| !o.status.success()) {
            let stderr = String::from_utf8_lossy(&lost.stderr);
            assert_eq!(lost.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("only a stopped, failed or finished"),
                "{stderr}"
            );
        }
        let s = d.wait_state(&id, "Running");
        assert_eq!(s["generation"].as_u64().unwrap(), before + 1);
        assert_eq!(
            workers_of(d.pid()),
            vec![s["worker_pid"].as_u64().unwrap() as u32]
        );

        // Resumes and stops mixed: whatever wins, one worker at most, and a stop works.
        let before = generation(&d, &id);
        let stop: &[&str] = &["stop", &id, "--no-wait"];
        let mixed: Vec<&[&str]> = (0..8)
            .map(|i| if i % 2 == 0 { resume } else { stop })
            .collect();
        let outputs = race(&d, &mixed);
        let resumed = outputs
            .iter()
            .zip(&mixed)
            .filter(|(o, args)| args[0] == "resume" && o.status.success())
            .count() as u64;
        let out = d.ctl_ok(&["stop", &id]);
        assert!(out.contains("Stopped"), "{out}");
        assert!(generation(&d, &id) <= before + resumed);
        wait_until(DEADLINE, "every worker to exit", || {
            workers_of(d.pid()).is_empty().then_some(())
        });
    }
}

/// Issue 9.6: `arroyod run` hung on a full disk, SIGINT and SIGTERM ignored. It now fails
/// naming the path and the reason, and exits non-zero, whether the disk is full at start,
/// fills under its sink, or fills under its state while it waits for a signal.
#[test]
fn a_run_on_a_full_disk_fails_naming_the_path_and_honours_signals() {
    // Full at start.
    let out = on_small_tmpfs(
        "64k",
        "dd if=/dev/zero of=\"$DIR/fill\" bs=4k 2>/dev/null\n\
         echo \"CREATE TABLE i WITH (connector='impulse', event_rate='10'); SELECT counter FROM i;\" \
           | \"$BIN\" run -s \"$DIR/st\" -\n\
         echo \"exit=$?\"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("/st") && (stderr.contains("No space left") || stderr.contains("full")),
        "{stderr}"
    );

    // Filled by its own sink.
    let sink_fills = "cat > \"$DIR/q.sql\" <<SQL
CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '200000');
CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '$DIR/out.json', type = 'sink');
INSERT INTO out SELECT counter FROM impulse;
SQL
ARROYO_CHECKPOINT_INTERVAL=200ms timeout -s KILL 60 \"$BIN\" run -s \"$DIR/st\" \"$DIR/q.sql\"
echo \"exit=$?\"";
    let out = on_small_tmpfs("3m", sink_fills);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("out.json") && stderr.contains("No space left on device"),
        "{stderr}"
    );

    // Filled by someone else while it runs; then SIGINT or SIGTERM.
    for signal in ["INT", "TERM"] {
        let script = format!(
            "cat > \"$DIR/q.sql\" <<SQL
CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '100');
SELECT counter FROM impulse;
SQL
ARROYO_CHECKPOINT_INTERVAL=1h \"$BIN\" run -s \"$DIR/st\" \"$DIR/q.sql\" >/dev/null 2>\"$DIR/log\" &
pid=$!
timeout 30 sh -c \"until grep -q 'pipeline running' '$DIR/log'; do sleep 0.05; done\" || echo never-ran
dd if=/dev/zero of=\"$DIR/fill\" bs=4k 2>/dev/null
kill -{signal} $pid
timeout 30 sh -c \"while kill -0 $pid 2>/dev/null; do sleep 0.05; done\" || echo hung
wait $pid
echo \"exit=$?\"
cat \"$DIR/log\" >&2"
        );
        let out = on_small_tmpfs("8m", &script);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains("hung") && !stdout.contains("never-ran"),
            "{stdout}\n{stderr}"
        );
        assert!(stdout.contains("exit=1"), "SIG{signal}: {stdout}\n{stderr}");
        // The database (written at the stop), or the output log (written as rows come,
        // when a row comes before the signal), names itself and the reason.
        assert!(
            stderr.contains("error:")
                && ((stderr.contains("arroyod.db") && stderr.contains("disk is full"))
                    || (stderr.contains("/output/") && stderr.contains("No space left on device"))),
            "SIG{signal}: {stderr}"
        );
    }
}

/// Issue 9.7: `-p 3000` ran the box out of memory, and 800 rows of 1 MB held 842 MB in the
/// daemon. Parallelism has a configurable bound with a clear error, and the tail buffer a
/// configurable size in bytes.
#[test]
fn parallelism_and_the_tail_buffer_are_bounded() {
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = vec![
        ("ARROYO_MAX_PARALLELISM".into(), "4".into()),
        ("ARROYO_TAIL_BUFFER_BYTES".into(), "100000".into()),
    ];
    d.restart();
    let file = d.dir.path().join("q.sql");
    std::fs::write(&file, UNBOUNDED).unwrap();
    let q = file.to_str().unwrap();
    let out = d.ctl(&["submit", q, "--parallelism", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("parallelism 5 is above max_parallelism 4"),
        "{stderr}"
    );
    assert_eq!(d.ctl_ok(&["--json", "list"]).trim(), "[]");

    // 100 rows of 10 kB: the buffer keeps the newest that fit in 100 kB.
    let id = d.submit(
        "wide",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='1000', message_count='100');
         SELECT counter, repeat('x', 10000) AS pad FROM impulse;",
    );
    let s = d.wait_state(&id, "Finished");
    assert_eq!(s["rows"], 100);
    let rows = d.ctl_ok(&["tail", &id]);
    let counters = harness::counters_in(&rows);
    assert!(
        (5..10).contains(&counters.len()),
        "{} rows kept",
        counters.len()
    );
    assert_eq!(counters.last(), Some(&99));
    assert!(rows.len() <= 100_000, "{} bytes kept", rows.len());

    // `arroyod run` has the same bound.
    let state = d.dir.path().join("run-state");
    let out = harness::run_query(
        &["-p", "3000", "-s", state.to_str().unwrap(), "-"],
        UNBOUNDED,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("parallelism 3000 is above max_parallelism 64"),
        "{stderr}"
    );
}

/// Issue 9.12: names were not validated: escape codes and newlines reached `list`, and a name
/// equal to another pipeline's id shadowed it. Names are `[A-Za-z0-9_.-]{1,64}`, never shaped
/// like an id; `arroyod run` makes its default name (the file stem) valid.
#[test]
fn pipeline_names_are_validated_and_run_makes_its_default_name_valid() {
    let d = TestDaemon::start();
    let id = d.submit("first", UNBOUNDED);
    let file = d.dir.path().join("q.sql");
    std::fs::write(&file, UNBOUNDED).unwrap();
    let q = file.to_str().unwrap();
    for (name, why) in [
        ("red\u{1b}[31m", "may only hold letters, digits"),
        ("two\nlines", "may only hold letters, digits"),
        ("with space", "may only hold letters, digits"),
        (&"x".repeat(65), "longer than 64"),
        (id.as_str(), "looks like a pipeline id"),
        ("0123456789ab", "looks like a pipeline id"),
    ] {
        let out = d.ctl(&["submit", q, "--name", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name:?}: {stderr}");
        assert!(stderr.contains(why), "{name:?}: {stderr}");
    }
    let list = d.ctl_ok(&["--json", "list"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(all.len(), 1, "{list}");
    // A unique id prefix finds the pipeline too.
    assert_eq!(d.status(&id[..5])["id"], id.as_str());

    // `arroyod run`'s default name is the file stem made valid.
    let dir = tempfile::tempdir().unwrap();
    for (stem, name) in [
        ("my query (v2)", "my_query__v2_"),
        ("deadbeef0123", "query-deadbeef0123"),
    ] {
        let file = dir.path().join(format!("{stem}.sql"));
        std::fs::write(
            &file,
            "CREATE TABLE i WITH (connector='impulse', event_rate='1000', message_count='3'); SELECT counter FROM i;",
        )
        .unwrap();
        let state = dir.path().join(format!("{name}-state"));
        let out = std::process::Command::new(harness::arroyod_bin())
            .args(["run", "-s", state.to_str().unwrap(), file.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stem}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
        assert!(
            stderr.contains(&format!("name={name} ")),
            "{stem}: {stderr}"
        );
    }
}

/// Issue 9.15: a daemon killed during a call left the client with "transport error", exit 1,
/// although the request may have been applied. It is exit 3, with a hint to check `list`.
#[test]
fn a_daemon_killed_during_a_call_is_exit_3_with_a_hint() {
    let mut d = TestDaemon::start();
    let id = d.submit("frozen", UNBOUNDED);
    let worker = d.wait_state(&id, "Running")["worker_pid"].as_u64().unwrap() as u32;
    // A frozen worker never answers the stop: the call waits.
    harness::signal(worker, "STOP");
    let stop = d
        .ctl_command(&["stop", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_state(&id, "Stopping");
    d.kill9();
    assert_lost_during_the_call(&stop.wait_with_output().unwrap());
    wait_until(DEADLINE, "the worker to die with its daemon", || {
        (!alive(worker)).then_some(())
    });
}

/// Issue 9.16: a removed data dir, or an empty or missing `arroyod.db` beside a state root
/// holding checkpoints, started silently (and redid the pipelines' work from nothing). The
/// daemon refuses and says why, or restores the metadata from its snapshots.
#[test]
fn lost_metadata_is_refused_or_restored_from_snapshots() {
    let state = tempfile::tempdir().unwrap();
    let state_url = state.path().join("root");
    let backups = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::start_with(&[
        "--state-url",
        state_url.to_str().unwrap(),
        "--checkpoint-interval",
        "200ms",
    ]);
    let id = d.submit("kept", UNBOUNDED);
    d.wait_state(&id, "Running");
    wait_until(DEADLINE, "a checkpoint", || {
        (d.status(&id)["last_checkpoint"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    assert!(d.term().success());
    let db = d.data_dir().join("arroyod.db");
    let refused = |d: &TestDaemon| {
        let out = d.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("knows no pipeline")
                && stderr.contains(&id)
                && stderr.contains(state_url.to_str().unwrap()),
            "{stderr}"
        );
    };
    // An empty database file, then none at all. (The database with its WAL is kept aside.)
    let files = ["", "-wal", "-shm"].map(|s| d.data_dir().join(format!("arroyod.db{s}")));
    let saved: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    std::fs::write(&db, b"").unwrap();
    refused(&d);
    std::fs::remove_file(&db).unwrap();
    refused(&d);
    for (f, bytes) in files.iter().zip(saved) {
        let _ = std::fs::remove_file(f);
        if let Some(bytes) = bytes {
            std::fs::write(f, bytes).unwrap();
        }
    }

    // With snapshots: start once to take one, then remove the whole data dir.
    d.extra_args
        .extend(["--backup-url".into(), backups.path().display().to_string()]);
    d.restart();
    d.wait_state(&id, "Running");
    assert!(d.term().success());
    std::fs::remove_dir_all(d.data_dir()).unwrap();
    d.restart();
    let s = d.wait_state(&id, "Running");
    assert!(s["generation"].as_u64().unwrap() >= 3, "{s}");
    assert!(
        d.log()
            .contains("metadata restored from the newest snapshot")
    );
    // Without them it is refused again.
    assert!(d.term().success());
    std::fs::remove_dir_all(d.data_dir()).unwrap();
    d.extra_args.truncate(4);
    refused(&d);
}

/// The restart budget is a setting (the fault suite raises it): after `restart_budget`
/// restarts within `restart_window` a crashing pipeline fails, saying so.
#[test]
fn the_restart_budget_window_and_backoff_are_settings() {
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = vec![
        ("ARROYO_RESTART_BUDGET".into(), "2".into()),
        ("ARROYO_RESTART_WINDOW".into(), "1h".into()),
        ("ARROYO_RESTART_BACKOFF".into(), "10ms".into()),
    ];
    d.restart();
    let config = d.command().arg("config").output().unwrap();
    let config = String::from_utf8_lossy(&config.stdout);
    assert!(
        config.contains("restart_budget = 2") && config.contains("restart_backoff = \"10ms\""),
        "{config}"
    );
    let id = d.submit("crashy", UNBOUNDED);
    for generation in 1..=3 {
        let s = wait_until(DEADLINE, &format!("generation {generation} to run"), || {
            let s = d.status(&id);
            (s["state"] == "Running" && s["generation"] == generation).then_some(s)
        });
        harness::signal(s["worker_pid"].as_u64().unwrap() as u32, "KILL");
    }
    let s = d.wait_state(&id, "Failed");
    let failure = s["failure"].as_str().unwrap();
    assert!(
        failure.contains("worker exited unexpectedly") && failure.contains("2 restarts within 1h"),
        "{failure}"
    );
}

/// Issue 9.9: a live socket was deleted as "stale" (a second daemon with another data dir took
/// the path over), and `--socket notes.txt` deleted an ordinary file. Only a socket nobody
/// answers on is replaced.
#[test]
fn only_a_socket_nobody_answers_on_is_replaced() {
    let d = TestDaemon::start();
    let other = tempfile::tempdir().unwrap();
    let second = |socket: &std::path::Path| {
        std::process::Command::new(harness::arroyod_bin())
            .arg("--socket")
            .arg(socket)
            .arg("--data-dir")
            .arg(other.path().join("data"))
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = second(&d.socket());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another process listens at"), "{stderr}");
    d.ctl_ok(&["list"]);

    let notes = other.path().join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let out = second(&notes);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
}

/// Issue 9.8: another user who creates `/tmp/arroyod-$UID` first received the victim's
/// traffic. The daemon creates that fallback directory 0700, and daemon and client refuse one
/// open to others (or not theirs). Run in a private mount namespace with its own `/tmp`.
#[test]
fn the_fallback_socket_directory_must_be_private() {
    let script = r#"
D=/tmp/arroyod-$(id -u)
# A directory someone else could use: refused by both.
mkdir -m 777 "$D"
chmod 777 "$D"
"$BIN" --data-dir /tmp/data1 >/dev/null 2>/tmp/serve.err
echo "serve-open=$?"
cat /tmp/serve.err
"$CTL" list >/dev/null 2>/tmp/ctl.err
echo "ctl-open=$?"
cat /tmp/ctl.err
rmdir "$D"
# None: the daemon creates it 0700 and the client finds it.
"$BIN" --data-dir /tmp/data2 >/dev/null 2>/tmp/serve2.err &
pid=$!
timeout 30 sh -c "until [ -S '$D/arroyod.sock' ]; do sleep 0.05; done" || echo never-bound
echo "mode=$(stat -c %a "$D")"
"$CTL" list >/dev/null
echo "ctl-private=$?"
kill -TERM $pid
wait $pid
echo "serve-private=$?"
"#;
    let out = in_private_tmpfs(std::path::Path::new("/tmp"), "16m", script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "serve-open=1",
        "has mode 777",
        "ctl-open=1",
        "refusing the default socket's directory",
        "mode=700",
        "ctl-private=0",
        "serve-private=0",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Issue 9.11: with umask 022 the data dir was 0755 and the database 0644, so stored queries
/// (with any `storage.*` secrets) were readable by all. The data dir and a local state root
/// are 0700, the database, its WAL and the lock 0600, whatever the umask.
#[test]
fn the_data_dir_and_database_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let script = format!(
        "umask 022; echo \"CREATE TABLE i WITH (connector='impulse', event_rate='1000', message_count='3'); SELECT counter FROM i;\" | exec {} run -s {} -",
        harness::arroyod_bin().display(),
        state.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("state")), 0o700);
    assert_eq!(mode(&state.join("arroyod.db")), 0o600);
    assert_eq!(mode(&state.join("arroyod.lock")), 0o600);

    // The daemon: an existing data dir open to others is made private too.
    let mut d = TestDaemon::unstarted(&[]);
    std::fs::create_dir_all(d.data_dir()).unwrap();
    std::fs::set_permissions(
        d.data_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    d.restart();
    let id = d.submit("private", UNBOUNDED);
    d.wait_state(&id, "Running");
    assert_eq!(mode(&d.data_dir()), 0o700);
    for file in ["arroyod.db", "arroyod.db-wal", "arroyod.lock"] {
        assert_eq!(mode(&d.data_dir().join(file)), 0o600, "{file}");
    }
}

/// Issue 9.17: `status` printed the query with the credentials in its options to every caller.
/// Arroyo's `{{ VAR }}` takes values from the daemon's environment (so they are never stored),
/// and option values named like secrets are shown as `'****'` in `status`, `list` and errors.
#[test]
fn secrets_come_from_the_environment_and_are_never_shown() {
    let s3 = harness::S3Server::start();
    s3.create_bucket("secrets");
    let out = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = vec![
        ("TEST_OUT_DIR".into(), out.path().display().to_string()),
        ("TEST_S3_KEY_ID".into(), "key-id-from-env".into()),
    ];
    d.restart();

    // A sink path from the environment: the value is used, the placeholder stored.
    let id = d.submit(
        "envpath",
        "CREATE TABLE i WITH (connector='impulse', event_rate='1000', message_count='5');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector='single_file', type='sink',
           path='{{ TEST_OUT_DIR }}/out.json');
         INSERT INTO o SELECT counter FROM i;",
    );
    let s = d.wait_state(&id, "Finished");
    assert!(
        s["query"].as_str().unwrap().contains("{{ TEST_OUT_DIR }}"),
        "{s}"
    );
    let rows = std::fs::read_to_string(out.path().join("out.json")).unwrap();
    assert_eq!(harness::counters_in(&rows), vec![0, 1, 2, 3, 4]);

    // An unset variable is refused at its position.
    let file = d.dir.path().join("unset.sql");
    std::fs::write(&file, "CREATE TABLE i WITH (connector='impulse',\n  event_rate='{{ NOT_SET_ANYWHERE }}');\nSELECT counter FROM i;").unwrap();
    let refused = d.ctl(&["submit", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unset.sql:2:15: error: environment variable NOT_SET_ANYWHERE is not set"),
        "{stderr}"
    );

    // A secret written into the query: status and list show '****', errors too.
    let secret = "do-not-show-me-42";
    let options = format!(
        "'storage.aws_endpoint' = '{}', 'storage.aws_allow_http' = 'true', \
         'storage.aws_access_key_id' = '{{{{ TEST_S3_KEY_ID }}}}', \
         'storage.aws_secret_access_key' = '{secret}', 'storage.aws_region' = 'us-east-1'",
        s3.endpoint()
    );
    let id = d.submit(
        "s3sink",
        &format!(
            "CREATE TABLE i WITH (connector='impulse', event_rate='1000', message_count='5');
             CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector='filesystem', type='sink',
               path='s3://secrets/out', format='json', {options});
             INSERT INTO o SELECT counter FROM i;"
        ),
    );
    d.wait_state(&id, "Finished");
    for shown in [
        d.ctl_ok(&["--json", "status", &id]),
        d.ctl_ok(&["status", &id]),
        d.ctl_ok(&["--json", "list"]),
    ] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(
            shown.contains("'storage.aws_secret_access_key' = '****'"),
            "{shown}"
        );
    }
    let local = d.dir.path().join("local.sql");
    std::fs::write(
        &local,
        format!(
            "CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector='filesystem', type='sink',
               path='/tmp/x', format='json', 'storage.aws_secret_access_key' = '{secret}');
             CREATE TABLE i WITH (connector='impulse', event_rate='10');
             INSERT INTO o SELECT counter FROM i;"
        ),
    )
    .unwrap();
    for command in ["validate", "submit"] {
        let refused = d.ctl(&[command, local.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            !stderr.contains(secret) && stderr.contains("****"),
            "{stderr}"
        );
    }
}
