//! A full filesystem (issue 9's fault suite, 9.6's siblings), for the daemon and for
//! `arroyod run`, on a small tmpfs in a private mount namespace (a real ENOSPC): full at start,
//! and filled while a pipeline writes its checkpoints or its output log. Each ends with a
//! clear error naming the path and the reason, a non-zero exit or a failed pipeline, and no
//! hang; the daemon keeps answering. (`hardening.rs` has `arroyod run` filled by its own
//! sink and filled while it waits for a signal.)

mod harness;

use harness::fault::on_small_tmpfs;

/// Starts a daemon on `$DIR/data` with socket `$DIR/d.sock` and more flags, logging to
/// `$DIR/log`, and waits until it answers; `$pid` is its pid and `ctl` calls it.
fn start_daemon(flags: &str) -> String {
    format!(
        "ctl() {{ \"$CTL\" --socket \"$DIR/d.sock\" \"$@\"; }}
ARROYO_RESTART_BUDGET=1 ARROYO_RESTART_BACKOFF=10ms \"$BIN\" --socket \"$DIR/d.sock\" --data-dir \"$DIR/data\" {flags} 2>\"$DIR/log\" &
pid=$!
timeout 30 sh -c \"until '$CTL' --socket '$DIR/d.sock' list >/dev/null 2>&1; do sleep 0.05; done\" || echo never-answered
"
    )
}

/// Waits (bounded) until pipeline `name` is Failed, prints its status, stops the daemon
/// with SIGTERM (bounded) and prints its exit code and log.
const FAILED_THEN_TERM: &str = "timeout 60 sh -c \"until '$CTL' --socket '$DIR/d.sock' status $NAME | grep -q '^state: *Failed'; do sleep 0.1; done\" || echo never-failed
ctl status $NAME
ctl list >/dev/null && echo still-answers
rm -f \"$DIR/fill\" \"$DIR/state/fill\"
kill -TERM $pid
timeout 30 sh -c \"while kill -0 $pid 2>/dev/null; do sleep 0.05; done\" || echo hung
wait $pid
echo \"exit=$?\"
cat \"$DIR/log\" >&2
";

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_daemon_on_a_full_disk_fails_clearly_and_keeps_answering() {
    // Full at start: it refuses to start, naming the data dir.
    let out = on_small_tmpfs(
        "256k",
        "dd if=/dev/zero of=\"$DIR/fill\" bs=4k 2>/dev/null
timeout -s KILL 30 \"$BIN\" --socket \"$DIR/d.sock\" --data-dir \"$DIR/data\"
echo \"exit=$?\"",
    );
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("exit=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error:")
            && stderr.contains("/data")
            && (stderr.contains("No space left on device") || stderr.contains("disk is full")),
        "{stderr}"
    );

    // Filled under its checkpoints (the state root is a tmpfs of its own): the pipeline
    // fails naming the checkpoint's path; the daemon answers and stops cleanly.
    let script = format!(
        "mkdir \"$DIR/state\" && mount -t tmpfs -o size=256k tmpfs \"$DIR/state\" || exit 90
cat > \"$DIR/q.sql\" <<SQL
CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '100');
CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'blackhole');
INSERT INTO out SELECT counter FROM impulse;
SQL
{start}ctl submit \"$DIR/q.sql\" --name cp
timeout 30 sh -c \"until ls '$DIR'/state/*/checkpoints/*/MANIFEST >/dev/null 2>&1; do sleep 0.05; done\" || echo never-checkpointed
dd if=/dev/zero of=\"$DIR/state/fill\" bs=4k 2>/dev/null
NAME=cp
{FAILED_THEN_TERM}",
        start = start_daemon("--state-url \"$DIR/state\" --checkpoint-interval 200ms"),
    );
    let out = on_small_tmpfs("64m", &script);
    let (stdout, stderr) = text(&out);
    for bad in ["never-", "hung"] {
        assert!(!stdout.contains(bad), "{stdout}\n{stderr}");
    }
    assert!(
        stdout.contains("still-answers") && stdout.contains("exit=0"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("/state/") && stdout.contains("No space left on device"),
        "the failure names the checkpoint path and the reason:\n{stdout}\n{stderr}"
    );

    // Filled under its output log: the pipeline fails naming the log's file; `tail` still
    // reads what it holds.
    let script = format!(
        "{start}echo \"CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000'); SELECT counter FROM impulse;\" > \"$DIR/q.sql\"
ctl submit \"$DIR/q.sql\" --name preview
timeout 30 sh -c \"until '$CTL' --socket '$DIR/d.sock' tail preview -n 1 | grep -q counter; do sleep 0.05; done\" || echo never-ran
dd if=/dev/zero of=\"$DIR/fill\" bs=4k 2>/dev/null
NAME=preview
timeout 60 sh -c \"until '$CTL' --socket '$DIR/d.sock' status preview | grep -q '^state: *Failed'; do sleep 0.1; done\" || echo never-failed
ctl tail preview -n 1 >/dev/null && echo tail-answers
{FAILED_THEN_TERM}",
        start = start_daemon("--checkpoint-interval 1h"),
    );
    let out = on_small_tmpfs("8m", &script);
    let (stdout, stderr) = text(&out);
    for bad in ["never-", "hung"] {
        assert!(!stdout.contains(bad), "{stdout}\n{stderr}");
    }
    assert!(
        stdout.contains("still-answers")
            && stdout.contains("tail-answers")
            && stdout.contains("exit=0"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("/data/output/") && stdout.contains("No space left on device"),
        "the failure names the output log and the reason:\n{stdout}\n{stderr}"
    );
}

#[test]
fn a_run_whose_disk_fills_under_its_checkpoints_or_output_fails_naming_the_path() {
    for (what, query, interval, names) in [
        (
            "checkpoints",
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '100'); CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'blackhole'); INSERT INTO out SELECT counter FROM impulse;",
            "200ms",
            "/st/",
        ),
        (
            "output log",
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '2000'); SELECT counter FROM impulse;",
            "1h",
            "/st/output/",
        ),
    ] {
        let script = format!(
            "echo \"{query}\" > \"$DIR/q.sql\"
ARROYO_CHECKPOINT_INTERVAL={interval} ARROYO_RESTART_BUDGET=1 \"$BIN\" run -s \"$DIR/st\" \"$DIR/q.sql\" >/dev/null 2>\"$DIR/log\" &
pid=$!
timeout 30 sh -c \"until grep -q 'pipeline running' '$DIR/log'; do sleep 0.05; done\" || echo never-ran
timeout 30 sh -c \"until ls '$DIR'/st/state/*/checkpoints/*/MANIFEST >/dev/null 2>&1 || [ {interval} = 1h ]; do sleep 0.05; done\" || echo never-checkpointed
dd if=/dev/zero of=\"$DIR/fill\" bs=4k 2>/dev/null
timeout 60 sh -c \"while kill -0 $pid 2>/dev/null; do sleep 0.05; done\" || echo hung
wait $pid
echo \"exit=$?\"
cat \"$DIR/log\" >&2"
        );
        let out = on_small_tmpfs("8m", &script);
        let (stdout, stderr) = text(&out);
        for bad in ["never-", "hung"] {
            assert!(!stdout.contains(bad), "{what}: {stdout}\n{stderr}");
        }
        assert!(stdout.contains("exit=1"), "{what}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("error:")
                && stderr.contains(names)
                && (stderr.contains("No space left on device") || stderr.contains("disk is full")),
            "{what}: {stderr}"
        );
    }
}
