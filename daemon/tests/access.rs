//! Access (issue 9.10): callers are checked with SO_PEERCRED, a pipeline of another user than
//! the daemon's gets none of the daemon's rights, and no pipeline may name the daemon's own
//! files, `/proc` or `/sys`. The tests run as root; other users are played with `setpriv`
//! running a copy of `arroyoctl` they may execute.

mod harness;
#[path = "harness/http.rs"]
mod http_server;
#[path = "harness/kafka.rs"]
mod kafka_broker;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::{TestDaemon, arroyoctl_bin};

/// A member of `ssl-cert` (postgres, uid 101) through its supplementary groups only.
const MEMBER: (u32, u32) = (101, 104);
/// nobody/nogroup: a member of no group the tests allow.
const STRANGER: (u32, u32) = (65534, 65534);
const GROUP: &str = "ssl-cert";

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon whose temp dir other users can traverse (its data dir stays 0700), admitting
/// `ssl-cert`, with `allowed_paths` = `<dir>/allowed`; not started.
fn shared_daemon() -> TestDaemon {
    let mut d = TestDaemon::unstarted(&[]);
    set_mode(d.dir.path(), 0o711);
    let allowed = d.dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    set_mode(&allowed, 0o755);
    let bin = d.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    set_mode(&bin, 0o755);
    std::fs::copy(arroyoctl_bin(), bin.join("arroyoctl")).unwrap();
    set_mode(&bin.join("arroyoctl"), 0o755);
    d.envs = vec![
        ("ARROYO_ALLOWED_GROUP".into(), GROUP.into()),
        ("ARROYO_ALLOWED_PATHS".into(), allowed.display().to_string()),
        ("ACCESS_TEST_SECRET".into(), "daemon-env-secret-77".into()),
    ];
    d
}

/// `arroyoctl --socket S args` run as `(uid, gid)`: with its supplementary groups from the
/// group database (as a login gives them), or none with `clear_groups`.
fn ctl_as(d: &TestDaemon, (uid, gid): (u32, u32), clear_groups: bool, args: &[&str]) -> Output {
    let groups = if clear_groups {
        "--clear-groups"
    } else {
        "--init-groups"
    };
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg(d.dir.path().join("bin/arroyoctl"))
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .env_remove("ARROYO_SOCKET")
        .output()
        .expect("running setpriv")
}

/// Writes `sql` to a file anyone may read; its path.
fn query_file(d: &TestDaemon, name: &str, sql: &str) -> PathBuf {
    let path = d.dir.path().join(format!("{name}.sql"));
    std::fs::write(&path, sql).unwrap();
    set_mode(&path, 0o644);
    path
}

/// `submit FILE` by `who`; the output.
fn submit_as(d: &TestDaemon, who: (u32, u32), name: &str, sql: &str) -> Output {
    let file = query_file(d, name, sql);
    ctl_as(
        d,
        who,
        false,
        &["submit", file.to_str().unwrap(), "--name", name],
    )
}

/// The pipeline id `submit` printed.
fn submitted(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.split_whitespace().last().unwrap().to_string()
}

/// Asserts a refused submit: exit 1 and every `needles` in its stderr.
fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected '{n}' in:\n{stderr}");
    }
}

/// A query copying the JSON rows of `from` (read with `source`: `single_file` for a file,
/// `filesystem` for a directory) into the file `to`.
fn copy_query(source: &str, from: &Path, to: &Path) -> String {
    format!(
        "CREATE TABLE src (n BIGINT) WITH (connector = '{source}', type = 'source', path = '{}', format = 'json');
         CREATE TABLE dst (n BIGINT) WITH (connector = 'single_file', type = 'sink', path = '{}');
         INSERT INTO dst SELECT n FROM src;",
        from.display(),
        to.display()
    )
}

fn single_file_copy(from: &Path, to: &Path) -> String {
    copy_query("single_file", from, to)
}

fn directory_copy(from: &Path, to: &Path) -> String {
    copy_query("filesystem", from, to)
}

#[test]
fn callers_are_checked_with_their_peer_credentials() {
    let mut d = shared_daemon();
    d.restart();
    // The socket is given to the group, so that its members can reach it at all.
    let socket = std::fs::metadata(d.socket()).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o660);
    assert_eq!(socket.gid(), 103, "the socket belongs to {GROUP}");

    // A member through a supplementary group the daemon looks up for its uid.
    let member = ctl_as(&d, MEMBER, false, &["list"]);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );

    // A socket made reachable by everyone: the daemon's own check still refuses a stranger,
    // naming its uid, and logs it with its pid.
    set_mode(&d.socket(), 0o666);
    let child = Command::new("setpriv")
        .arg(format!("--reuid={}", STRANGER.0))
        .arg(format!("--regid={}", STRANGER.1))
        .arg("--clear-groups")
        .arg(d.dir.path().join("bin/arroyoctl"))
        .arg("--socket")
        .arg(d.socket())
        .arg("list")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stranger = child.wait_with_output().unwrap();
    assert_refused(
        &stranger,
        &[
            "uid 65534 may not use this daemon",
            "members of group 'ssl-cert'",
        ],
    );
    let log = d.log();
    assert!(
        log.contains("refused a caller")
            && log.contains("uid=65534")
            && log.contains(&format!("pid={pid}")),
        "{log}"
    );
    // A member without its supplementary groups (as in a process that dropped them) is still
    // one for the group database.
    let dropped = ctl_as(&d, MEMBER, true, &["list"]);
    assert!(
        dropped.status.success(),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    // Root and the daemon's own user are always admitted.
    d.ctl_ok(&["list"]);
}

#[test]
fn a_group_members_pipeline_gets_none_of_the_daemons_rights() {
    let mut d = shared_daemon();
    let dir = d.dir.path().to_path_buf();
    let allowed = dir.join("allowed");
    // A file only root may read, outside allowed_paths, like /etc/shadow.
    let secret_dir = dir.join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let shadow = secret_dir.join("shadow");
    std::fs::write(&shadow, "{\"n\": 424242}\n").unwrap();
    set_mode(&shadow, 0o600);
    std::fs::write(allowed.join("in.json"), "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    std::os::unix::fs::symlink(&shadow, allowed.join("link.json")).unwrap();
    d.restart();

    // Outside allowed_paths, through a symlink, through `..`: refused at submit, positioned.
    let out = submit_as(
        &d,
        MEMBER,
        "shadow",
        &single_file_copy(&shadow, &allowed.join("o1.json")),
    );
    assert_refused(
        &out,
        &[
            "shadow.sql:1:",
            "may not be used",
            "allowed_paths",
            &allowed.display().to_string(),
        ],
    );
    let out = submit_as(
        &d,
        MEMBER,
        "link",
        &single_file_copy(&allowed.join("link.json"), &allowed.join("o2.json")),
    );
    assert_refused(&out, &[&format!("(which is {})", shadow.display())]);
    let dotdot = allowed.join("../secret/shadow");
    let out = submit_as(
        &d,
        MEMBER,
        "dotdot",
        &single_file_copy(&dotdot, &allowed.join("o3.json")),
    );
    assert_refused(&out, &["may not be used", "allowed_paths"]);
    // Kafka settings that read files of the host are refused.
    let kafka = "CREATE TABLE k (value TEXT) WITH (connector = 'kafka', type = 'source',
           bootstrap_servers = '127.0.0.1:9', topic = 't', format = 'raw_string',
           client_configs = 'ssl.key.location=/etc/ssl/private/server.key');
         SELECT value FROM k;";
    let out = submit_as(&d, MEMBER, "kafka", kafka);
    assert_refused(
        &out,
        &[
            "kafka.sql:3:29",
            "client_configs: ssl.key.location",
            "reads a file",
        ],
    );
    // `{{ VAR }}` takes nothing from the daemon's environment for another user.
    let env = "CREATE TABLE i WITH (connector = 'impulse', event_rate = '10', message_count = '1');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector = 'single_file', type = 'sink',
           path = '{{ ACCESS_TEST_SECRET }}');
         INSERT INTO o SELECT counter FROM i;";
    let out = submit_as(&d, MEMBER, "env", env);
    assert_refused(&out, &["ACCESS_TEST_SECRET is not set"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("daemon-env-secret-77"));

    // Under allowed_paths the member's pipeline works.
    let out = submit_as(
        &d,
        MEMBER,
        "fine",
        &single_file_copy(&allowed.join("in.json"), &allowed.join("out.json")),
    );
    let id = submitted(&out);
    d.wait_state(&id, "Finished");
    let rows = std::fs::read_to_string(allowed.join("out.json")).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");

    // A symlink that only the worker meets, in a directory it lists: refused when opened.
    let files = allowed.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("a.json"), "{\"n\": 7}\n").unwrap();
    std::os::unix::fs::symlink(&shadow, files.join("b.json")).unwrap();
    let listed = directory_copy(&files, &allowed.join("listed.json"));
    let id = submitted(&submit_as(&d, MEMBER, "listed", &listed));
    let s = d.wait_state(&id, "Failed");
    let failure = s["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("may not be used") && failure.contains(&shadow.display().to_string()),
        "{s}"
    );
    let written = std::fs::read_to_string(allowed.join("listed.json")).unwrap_or_default();
    assert!(!written.contains("424242"), "{written}");

    // The daemon's own user (root here) keeps every path it can reach.
    let id = d.submit("own", &single_file_copy(&shadow, &dir.join("own.json")));
    d.wait_state(&id, "Finished");
    assert!(
        std::fs::read_to_string(dir.join("own.json"))
            .unwrap()
            .contains("424242")
    );
}

#[test]
fn no_pipeline_may_name_the_daemons_files_proc_or_sys() {
    let mut d = shared_daemon();
    d.restart();
    let dir = d.dir.path().to_path_buf();
    let db = d.data_dir().join("arroyod.db");
    let db_length = std::fs::metadata(&db).unwrap().len();

    let environ = single_file_copy(Path::new("/proc/self/environ"), &dir.join("env.json"));
    let into_db = format!(
        "CREATE TABLE i WITH (connector = 'impulse', event_rate = '10', message_count = '1');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector = 'single_file', type = 'sink', path = '{}');
         INSERT INTO o SELECT counter FROM i;",
        db.display()
    );
    let sys = single_file_copy(
        Path::new("/sys/kernel/../../proc/1/environ"),
        &dir.join("s.json"),
    );
    for (name, sql, needle) in [
        ("environ", &environ, "/proc"),
        ("into_db", &into_db, &d.data_dir().display().to_string()),
        ("sys", &sys, "/proc"),
    ] {
        let file = query_file(&d, name, sql);
        let own = d.ctl(&["submit", file.to_str().unwrap()]);
        assert_refused(
            &own,
            &[
                "may not be used",
                "no pipeline may use a path under",
                needle,
            ],
        );
        let member = ctl_as(&d, MEMBER, false, &["submit", file.to_str().unwrap()]);
        assert_refused(&member, &["may not be used", needle]);
        let validated = d.ctl(&["validate", file.to_str().unwrap()]);
        assert_refused(&validated, &["may not be used"]);
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), db_length);

    // A symlink the worker meets only when it lists the directory: refused then, for the
    // daemon's own user too.
    let own = dir.join("own");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", own.join("x.json")).unwrap();
    let listed = directory_copy(&own, &dir.join("listed.json"));
    let id = d.submit("listed", &listed);
    let s = d.wait_state(&id, "Failed");
    assert!(
        s["failure"].as_str().unwrap_or_default().contains("/proc"),
        "{s}"
    );
    d.ctl_ok(&["list"]);
}

#[test]
fn header_values_and_secrets_in_worker_log_lines_are_never_shown() {
    let mut d = TestDaemon::unstarted(&[]);
    let secret = "t0p-s3cret-dir";
    let empty = d.dir.path().join(secret);
    std::fs::create_dir(&empty).unwrap();
    d.restart();
    // The source's directory is named like the webhook's API key: the engine's "no files to
    // read" line carries the path, and must not show it.
    let sql = format!(
        "CREATE TABLE src (n BIGINT) WITH (connector = 'filesystem', type = 'source', path = '{}', format = 'json');
         CREATE TABLE hook WITH (connector = 'webhook', endpoint = 'http://127.0.0.1:9/',
           headers = 'X-Api-Key: {secret}, X-Short: ab');
         INSERT INTO hook SELECT n FROM src;",
        empty.display()
    );
    let id = d.submit("hooked", &sql);
    d.wait_state(&id, "Finished");
    let status = d.ctl_ok(&["status", &id]);
    assert!(
        status.contains("headers = 'X-Api-Key: ****, X-Short: ****'"),
        "{status}"
    );
    let log = d.log();
    assert!(log.contains("no files to read"), "{log}");
    assert!(!log.contains(secret), "{log}");
}

/// A loopback HTTP listener that answers every request 403 and keeps its request heads.
struct Recorder {
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
                kept.lock().unwrap().push(head);
                let _ = stream.write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Recorder { port, heads }
    }

    /// Waits for the first request head and returns it.
    fn first(&self) -> String {
        harness::wait_until(harness::DEADLINE, "a request to the store", || {
            self.heads.lock().unwrap().first().cloned()
        })
    }
}

#[test]
fn a_group_members_object_stores_get_no_host_credentials() {
    let mut d = shared_daemon();
    d.envs.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIADAEMONKEY".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "daemon-secret".to_string(),
        ),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ]);
    d.restart();
    let s3_source = |endpoint: u16, extra: &str| {
        format!(
            "CREATE TABLE src (n BIGINT) WITH (connector = 'filesystem', type = 'source',
               path = 's3://bucket/in/', format = 'json',
               'storage.aws_endpoint' = 'http://127.0.0.1:{endpoint}', 'storage.aws_allow_http' = 'true'{extra});
             SELECT n FROM src;"
        )
    };
    // The daemon's own pipeline signs with the daemon's credentials: the test can tell.
    let own = Recorder::start();
    d.submit("own_s3", &s3_source(own.port, ""));
    let head = own.first();
    assert!(head.contains("Credential=AKIADAEMONKEY/"), "{head}");

    // A member's pipeline sends no credentials of the daemon: its requests are unsigned.
    let member = Recorder::start();
    let id = submitted(&submit_as(
        &d,
        MEMBER,
        "member_s3",
        &s3_source(member.port, ""),
    ));
    let head = member.first();
    assert!(!head.contains("AKIADAEMONKEY"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization:"),
        "{head}"
    );
    d.ctl_ok(&["stop", &id, "--mode", "immediate"]);

    // Store settings that read a credential file of the host are refused when opened.
    let quiet = Recorder::start();
    let token = ", 'storage.aws_web_identity_token_file' = '/etc/passwd', 'storage.aws_role_arn' = 'arn:aws:iam::1:role/r'";
    let id = submitted(&submit_as(
        &d,
        MEMBER,
        "token_file",
        &s3_source(quiet.port, token),
    ));
    let s = d.wait_state(&id, "Failed");
    assert!(
        s["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("storage.aws_web_identity_token_file"),
        "{s}"
    );
    assert!(quiet.heads.lock().unwrap().is_empty());
}

/// Waits for the worker to pause at `access_checked` (it made `<token>.reached`).
fn wait_paused(token: &Path) {
    let reached = PathBuf::from(format!("{}.reached", token.display()));
    harness::wait_until(
        harness::DEADLINE,
        "the worker to pause after its check",
        || reached.exists().then_some(()),
    );
    std::fs::remove_file(&reached).unwrap();
}

/// The failure of pipeline `id` once it failed.
fn failure_of(d: &TestDaemon, id: &str) -> String {
    let s = d.wait_state(id, "Failed");
    s["failure"].as_str().unwrap_or_default().to_string()
}

/// The race the open-time check cannot close: the path passes the check, then becomes a
/// symlink to a file outside allowed_paths before the open. The worker pauses between the
/// two (the `access_checked` pause point), the test swaps the path, and the kernel
/// (Landlock) refuses the open: nothing is read from or written to the file outside.
#[test]
fn a_path_swapped_for_a_symlink_after_its_check_is_refused_by_the_kernel() {
    let mut d = shared_daemon();
    let dir = d.dir.path().to_path_buf();
    let allowed = dir.join("allowed");
    let token = allowed.join("token");
    d.envs.push((
        "FAILPOINTS".into(),
        format!("access_checked=return({})", token.display()),
    ));
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret.json");
    std::fs::write(&secret, "{\"n\": 424242}\n").unwrap();
    set_mode(&secret, 0o600);
    d.restart();
    let db = d.data_dir().join("arroyod.db");

    // A source: `in.json` passes the check, then leads to the secret.
    let input = allowed.join("in.json");
    std::fs::write(&input, "{\"n\": 1}\n").unwrap();
    std::fs::write(&token, "").unwrap();
    let copied = allowed.join("copied.json");
    let id = submitted(&submit_as(
        &d,
        MEMBER,
        "swapped_source",
        &single_file_copy(&input, &copied),
    ));
    wait_paused(&token);
    std::fs::remove_file(&input).unwrap();
    std::os::unix::fs::symlink(&secret, &input).unwrap();
    std::fs::remove_file(&token).unwrap();
    let failure = failure_of(&d, &id);
    assert!(
        failure.contains("refused by the kernel") && failure.contains("in.json"),
        "{failure}"
    );
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(!logs.contains("only checked at open time"), "{logs}");

    // A sink: `sink.json` passes the check, then leads to the daemon's database, which the
    // sink's create would truncate.
    let sink = allowed.join("sink.json");
    std::fs::write(&token, "").unwrap();
    let sql = format!(
        "CREATE TABLE i WITH (connector = 'impulse', event_rate = '100', message_count = '5');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector = 'single_file', type = 'sink',
           path = '{}');
         INSERT INTO o SELECT counter FROM i;",
        sink.display()
    );
    let id = submitted(&submit_as(&d, MEMBER, "swapped_sink", &sql));
    wait_paused(&token);
    let db_length = std::fs::metadata(&db).unwrap().len();
    std::os::unix::fs::symlink(&db, &sink).unwrap();
    std::fs::remove_file(&token).unwrap();
    let failure = failure_of(&d, &id);
    assert!(
        failure.contains("refused by the kernel") && failure.contains("sink.json"),
        "{failure}"
    );
    assert!(std::fs::metadata(&db).unwrap().len() >= db_length);
    d.ctl_ok(&["list"]);

    // Nothing of the secret anywhere: not in the copy, the log, the status or the output.
    let copy = std::fs::read_to_string(&copied).unwrap_or_default();
    assert!(!copy.contains("424242"), "{copy}");
    assert!(!d.log().contains("424242"));
    for name in ["swapped_source", "swapped_sink"] {
        assert!(!d.ctl_ok(&["status", name]).contains("424242"));
    }
}

/// A group member's pipeline runs under its kernel restriction as before: it checkpoints into
/// its own state directory, a filesystem sink (object_store) commits its files under
/// allowed_paths, and a stop and resume restores from the checkpoint; an HTTP source reaches
/// its server by name (the resolver's files are readable).
#[test]
fn a_group_members_confined_pipeline_checkpoints_restores_and_reaches_the_network() {
    let mut d = shared_daemon();
    d.envs
        .push(("ARROYO_CHECKPOINT_INTERVAL".into(), "200ms".into()));
    let allowed = d.dir.path().join("allowed");
    let files = allowed.join("files");
    d.restart();
    let sql = format!(
        "CREATE TABLE i WITH (connector = 'impulse', event_rate = '200');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector = 'filesystem', type = 'sink',
           path = '{}', format = 'json');
         INSERT INTO o SELECT counter FROM i;",
        files.display()
    );
    let id = submitted(&submit_as(&d, MEMBER, "confined", &sql));
    d.wait_state(&id, "Running");
    let checkpoint = |after: u64| {
        harness::wait_until(harness::DEADLINE, "a checkpoint", || {
            let epoch = d.status(&id)["last_checkpoint"].as_u64().unwrap_or(0);
            (epoch > after).then_some(epoch)
        })
    };
    let first = checkpoint(0);
    d.ctl_ok(&["stop", &id]);
    assert_eq!(d.status(&id)["state"], "Stopped");
    let committed = |dir: &Path| {
        let mut seen = harness::fault::committed_counters(dir);
        seen.sort_unstable();
        seen
    };
    let before = committed(&files).len();
    assert!(before > 0, "no committed rows under {}", files.display());
    d.ctl_ok(&["resume", &id]);
    d.wait_state(&id, "Running");
    checkpoint(first + 1);
    d.ctl_ok(&["stop", &id]);
    let after = committed(&files);
    assert!(after.len() > before, "{} then {}", before, after.len());
    assert_eq!(
        after,
        (0..after.len() as u64).collect::<Vec<_>>(),
        "each row once, resumed where the checkpoint left off"
    );
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(!logs.contains("only checked at open time"), "{logs}");

    // `localhost` is resolved through /etc/hosts and nsswitch.conf, which the worker may read.
    let server = http_server::PollServer::start("{\"v\": 1}", vec![http_server::Step::Status(200)]);
    let url = server.server.url("/v").replace("127.0.0.1", "localhost");
    let polled = allowed.join("polled.json");
    let sql = format!(
        "CREATE TABLE p (v BIGINT) WITH (connector = 'polling_http', endpoint = '{url}',
           poll_interval_ms = '20');
         CREATE TABLE o (v BIGINT) WITH (connector = 'single_file', type = 'sink', path = '{}');
         INSERT INTO o SELECT v FROM p;",
        polled.display()
    );
    let id = submitted(&submit_as(&d, MEMBER, "polled", &sql));
    harness::wait_until(harness::DEADLINE, "rows polled from localhost", || {
        let rows = std::fs::read_to_string(&polled).unwrap_or_default();
        (rows.lines().count() >= 2).then_some(())
    });
    d.ctl_ok(&["stop", &id, "--mode", "immediate"]);

    // The memory watch reads /proc/self/statm, the one file of /proc it may: over a limit
    // far below what any worker holds, the pipeline fails saying what it measured.
    let sql = "CREATE TABLE i WITH (connector = 'impulse', event_rate = '100');
         CREATE TABLE o (counter BIGINT UNSIGNED) WITH (connector = 'blackhole');
         INSERT INTO o SELECT counter FROM i;";
    let file = query_file(&d, "watched", sql);
    let out = ctl_as(
        &d,
        MEMBER,
        false,
        &["submit", file.to_str().unwrap(), "--memory-limit", "16MiB"],
    );
    let failure = failure_of(&d, &submitted(&out));
    assert!(
        failure.contains("went over its memory limit") && failure.contains("resident"),
        "{failure}"
    );
}

/// On a kernel without Landlock a group member's pipeline still runs (its paths checked at
/// open time only), and that is said: one warning in the worker's log and a warning event of
/// the pipeline. The daemon's own user's pipelines are never restricted, and say nothing.
#[test]
fn a_kernel_without_landlock_is_said_in_the_log_and_the_events() {
    let mut d = shared_daemon();
    d.envs
        .push(("FAILPOINTS".into(), "landlock_unsupported=return".into()));
    let allowed = d.dir.path().join("allowed");
    std::fs::write(allowed.join("in.json"), "{\"n\": 1}\n").unwrap();
    d.restart();
    let id = submitted(&submit_as(
        &d,
        MEMBER,
        "unconfined",
        &single_file_copy(&allowed.join("in.json"), &allowed.join("out.json")),
    ));
    d.wait_state(&id, "Finished");
    let warning = "only checked at open time";
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(
        logs.contains(warning) && logs.contains("pretends it has no Landlock"),
        "{logs}"
    );
    assert_eq!(
        d.log().matches(warning).count(),
        2,
        "the worker's line and the daemon's"
    );
    let own = d.submit(
        "own",
        &single_file_copy(&allowed.join("in.json"), &allowed.join("own.json")),
    );
    d.wait_state(&own, "Finished");
    assert!(!d.ctl_ok(&["logs", &own]).contains(warning));
}

/// A group member's confined pipeline reads and writes Kafka (rdkafka's own threads, its name
/// lookups and TLS roots are under the worker's restriction too).
#[test]
fn a_group_members_confined_pipeline_reads_and_writes_kafka() {
    let broker = kafka_broker::Tansu::start();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    let rows: Vec<kafka_broker::Produce> = (0..20)
        .map(|n| kafka_broker::Produce {
            partition: 0,
            key: None,
            value: format!("{{\"n\": {n}}}"),
            timestamp_ms: None,
        })
        .collect();
    broker.produce("in", &rows);
    let mut d = shared_daemon();
    d.restart();
    // By name: `localhost` goes through the resolver's files.
    let bootstrap = broker.bootstrap().replace("127.0.0.1", "localhost");
    let sql = format!(
        "CREATE TABLE i (n BIGINT) WITH (connector = 'kafka', type = 'source',
           bootstrap_servers = '{bootstrap}', topic = 'in', format = 'json', 'source.offset' = 'earliest');
         CREATE TABLE o WITH (connector = 'kafka', type = 'sink', bootstrap_servers = '{bootstrap}',
           topic = 'out', format = 'json');
         INSERT INTO o SELECT n FROM i;"
    );
    let id = submitted(&submit_as(&d, MEMBER, "kafka_confined", &sql));
    harness::wait_until(harness::DEADLINE, "20 rows in topic out", || {
        (broker.read("out", 1).values().len() >= 20).then_some(())
    });
    d.ctl_ok(&["stop", &id, "--mode", "immediate"]);
}
