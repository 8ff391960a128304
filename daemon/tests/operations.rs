//! Operating the daemon (issue 12): lifecycle commands (delete, restart, update, stop's
//! outcome), the on-disk output log (`tail --from`, `-n`, `--json`, across a restart, with
//! gaps), recorded events (`logs`), metrics over HTTP, `top`, and the service manager's
//! notifications: real binaries through the harness.

mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::{DEADLINE, Lines, TestDaemon, alive, wait_exit, wait_until};

const UNBOUNDED: &str = "CREATE TABLE impulse WITH (connector='impulse', event_rate='200'); SELECT counter FROM impulse;";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The frames of `tail --json ARGS`.
fn tail_json(d: &TestDaemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json", "tail"];
    all.extend_from_slice(args);
    d.ctl_ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `arroyoctl info` and `version` against the real daemon: its version, pid, where it keeps
/// what, its pipelines by state, and the caller as it sees it.
#[test]
fn info_and_version_describe_the_daemon() {
    let d = TestDaemon::start();
    let id = d.submit(
        "done",
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '1000', message_count = '3');
         SELECT counter FROM impulse;",
    );
    d.wait_state(&id, "Finished");
    d.submit("ticks", UNBOUNDED);
    let info: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["--json", "info"])).unwrap();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(info["pid"], d.pid(), "{info}");
    assert_eq!(info["socket"], d.socket().display().to_string(), "{info}");
    assert_eq!(
        info["data_dir"],
        d.data_dir().display().to_string(),
        "{info}"
    );
    assert_eq!(info["pipelines"]["Finished"], 1, "{info}");
    let others: u64 = ["Created", "Scheduling", "Running"]
        .iter()
        .filter_map(|s| info["pipelines"][*s].as_u64())
        .sum();
    assert_eq!(others, 1, "{info}");
    assert_eq!(info["caller_uid"], unsafe { libc::geteuid() }, "{info}");
    let text = d.ctl_ok(&["info"]);
    assert!(
        text.contains("pipelines:") && text.contains("1 Finished"),
        "{text}"
    );
    let version = d.ctl_ok(&["version"]);
    let expected = format!(
        "arroyoctl {v}\narroyod {v} (pid {}, up ",
        d.pid(),
        v = env!("CARGO_PKG_VERSION")
    );
    assert!(version.starts_with(&expected), "{version}");
}

/// A generation's start mark carries the offset of the row that will follow it. A bounded
/// `tail` taken before any row followed still shows it (the lifecycle test raced on this).
/// `wait`: 0 once the pipeline is in a state asked for (and it is printed); 1 when it is in
/// another final state, or when the time runs out, each said; 2 for a state that does not
/// exist.
#[test]
fn wait_ends_in_the_state_asked_for_or_says_why_not() {
    let d = TestDaemon::start();
    let id = d.submit("ticks", UNBOUNDED);
    let running = d.ctl_ok(&["wait", "ticks"]);
    assert!(
        running.contains(&format!("ticks {id} is Running")),
        "{running}"
    );
    assert_eq!(d.status(&id)["state"], "Running");

    let out = d.ctl(&["wait", &id, "--for", "finished", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 300ms waiting for pipeline ticks")
            && stderr(&out).contains("to be Finished: it is Running"),
        "{}",
        stderr(&out)
    );

    d.ctl_ok(&["stop", &id, "--no-wait"]);
    let stopped = d.ctl_ok(&["--json", "wait", &id, "--for", "stopped,FAILED"]);
    let v: serde_json::Value = serde_json::from_str(&stopped).unwrap();
    assert_eq!(v["state"], "Stopped", "{stopped}");
    let out = d.ctl(&["wait", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pipeline ticks {id} is Stopped, not Running")),
        "{}",
        stderr(&out)
    );

    let out = d.ctl(&["wait", &id, "--for", "sleeping"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'sleeping' is not a state"),
        "{}",
        stderr(&out)
    );
    let out = d.ctl(&["wait", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_start_mark_with_no_row_after_it_is_tailed() {
    let d = TestDaemon::start();
    let silent = "CREATE TABLE impulse WITH (connector='impulse', event_rate='200'); \
                  SELECT counter FROM impulse WHERE counter < 0;";
    let id = d.submit_with("silent", silent, &[]);
    wait_until(DEADLINE, "the pipeline to run", || {
        (d.status(&id)["state"] == "Running").then_some(())
    });
    let frames = tail_json(&d, &[&id]);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["offset"], 0, "{frames:?}");
    assert_eq!(frames[0]["restore"]["generation"], 1, "{frames:?}");
}

/// `restart --no-state`: refused while an exactly-once sink holds committed output unless
/// forced; forced, the new run reads from the start, writes its file over the old, marks its
/// rows in the output log as fresh and keeps its checkpoints apart; with no exactly-once sink
/// it needs no force.
#[test]
fn a_restart_without_state_says_what_it_does_to_each_sink() {
    let d = TestDaemon::start();
    let out = d.dir.path().join("out.json");
    let sql = format!(
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '1000', message_count = '50');
         CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', type = 'sink', path = '{}');
         INSERT INTO out SELECT counter FROM impulse;
         SELECT counter FROM impulse;",
        out.display()
    );
    let id = d.submit("once", &sql);
    d.wait_state(&id, "Finished");
    let first = std::fs::read_to_string(&out).unwrap();
    assert_eq!(harness::counters_in(&first), (0..50).collect::<Vec<_>>());

    // Its file holds committed output: refused, naming the sink and the way out.
    let refused = d.ctl(&["restart", "once", "--no-state"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(err.contains("would mix two runs' output"), "{err}");
    assert!(
        err.contains(&format!("sink out (single_file {})", out.display())),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let s = d.status(&id);
    assert_eq!(
        (s["state"].as_str(), s["generation"].as_u64()),
        (Some("Finished"), Some(1))
    );

    // Forced: each sink is named with what the new run does to it.
    let said = d.ctl_ok(&["restart", "once", "--no-state", "--force"]);
    assert!(said.contains("starts from no state"), "{said}");
    assert!(said.contains(&format!("{id}/g2")), "{said}");
    assert!(said.contains("sink out (single_file"), "{said}");
    assert!(said.contains("writes over the output"), "{said}");
    assert!(said.contains("sink preview (the output log)"), "{said}");
    wait_until(DEADLINE, "the fresh run to finish", || {
        let s = d.status(&id);
        (s["state"] == "Finished" && s["generation"] == 2).then_some(())
    });
    // The file was written again from the start, not appended to.
    let second = std::fs::read_to_string(&out).unwrap();
    assert_eq!(harness::counters_in(&second), (0..50).collect::<Vec<_>>());
    // The output log holds both runs, the second marked as started without state.
    let frames = tail_json(&d, &[&id]);
    let rows = frames.iter().filter(|f| f.get("row").is_some()).count();
    assert_eq!(rows, 100, "{frames:?}");
    let fresh: Vec<(u64, bool)> = frames
        .iter()
        .filter_map(|f| f.get("restore"))
        .map(|r| (r["generation"].as_u64().unwrap(), r["fresh"] == true))
        .collect();
    assert_eq!(fresh, [(1, false), (2, true)], "{frames:?}");
    // Its checkpoints went apart from the first run's; delete removes both.
    let state = d.data_dir().join("state").join(&id);
    assert!(state.join("g2").join("checkpoints").is_dir());
    assert!(state.join("checkpoints").is_dir());
    d.ctl_ok(&["delete", &id]);
    assert!(!state.exists());

    // Only the output log: nothing to force.
    let id = d.submit(
        "marked",
        "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '1000', message_count = '5');
         SELECT counter FROM impulse;",
    );
    d.wait_state(&id, "Finished");
    let said = d.ctl_ok(&["restart", &id, "--no-state"]);
    assert!(said.contains("sink preview (the output log)"), "{said}");
    assert!(!said.contains("exactly-once"), "{said}");
    wait_until(DEADLINE, "the second run to finish", || {
        let s = d.status(&id);
        (s["state"] == "Finished" && s["generation"] == 2).then_some(())
    });
    let frames = tail_json(&d, &[&id]);
    let counters: Vec<u64> = frames
        .iter()
        .filter_map(|f| f["row"]["counter"].as_u64())
        .collect();
    assert_eq!(counters, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4], "{frames:?}");
}

#[test]
fn update_restart_and_delete_through_the_lifecycle() {
    let d = TestDaemon::start();
    let id = d.submit_with("life", UNBOUNDED, &["--checkpoint-interval", "300ms"]);
    wait_until(DEADLINE, "a checkpoint", || {
        let s = d.status(&id);
        (s["state"] == "Running" && s["last_checkpoint"].as_u64() > Some(0)).then_some(())
    });
    // Ids are abbreviable: a unique prefix names the pipeline.
    assert_eq!(d.status(&id[..5])["id"], id.as_str());

    // update: it stops with a checkpoint and restores from it with the new settings.
    let out = d.ctl_ok(&[
        "update",
        &id,
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "1s",
    ]);
    assert!(out.contains(&format!("pipeline life {id} is")), "{out}");
    let s = wait_until(DEADLINE, "the update to run", || {
        let s = d.status(&id);
        (s["state"] == "Running" && s["generation"] == 2).then_some(s)
    });
    assert_eq!(s["parallelism"], 2);
    assert_eq!(s["checkpoint_interval_ms"], 1000);
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(
        logs.contains("stopping with a checkpoint to restart"),
        "{logs}"
    );
    assert!(logs.contains("restored from checkpoint"), "{logs}");
    let out = d.ctl(&["update", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to update"),
        "{}",
        stderr(&out)
    );

    // restart: the same, with the same settings.
    let out = d.ctl_ok(&["restart", &id]);
    assert!(out.contains("note: "), "{out}");
    wait_until(DEADLINE, "the restart to run", || {
        let s = d.status(&id);
        (s["state"] == "Running" && s["generation"] == 3).then_some(())
    });

    // The output log went on across the generations without a hole.
    let frames = tail_json(&d, &[&id]);
    let offsets: Vec<u64> = frames
        .iter()
        .filter(|f| f.get("row").is_some())
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    let restores: Vec<&serde_json::Value> = frames
        .iter()
        .filter(|f| f.get("restore").is_some())
        .collect();
    assert_eq!(restores.len(), 3, "{restores:?}");
    assert!(
        restores[1]["restore"]["epoch"].as_u64() > Some(0),
        "{restores:?}"
    );

    // delete refuses a running pipeline.
    let out = d.ctl(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is Running"), "{}", stderr(&out));

    // A clean stop: a final checkpoint, exit 0.
    let out = d.ctl_ok(&["stop", &id]);
    assert!(out.contains("Stopped"), "{out}");
    let s = d.status(&id);
    assert_eq!(s["last_stop"]["clean"], true, "{s}");

    // delete removes its checkpoints and output log; the name can be used again.
    let state = d.data_dir().join("state").join(&id);
    let output = d.data_dir().join("output").join(&id);
    assert!(state.exists() && output.exists());
    let out = d.ctl_ok(&["delete", "life"]);
    assert!(
        out.starts_with(&format!("deleted pipeline life {id}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("removed: {}", state.display())),
        "{out}"
    );
    assert!(!state.exists() && !output.exists());
    assert_eq!(d.ctl(&["status", &id]).status.code(), Some(1));
    let again = d.submit_with("life", UNBOUNDED, &[]);
    assert_ne!(again, id);

    // --keep-checkpoints keeps them, and says where.
    d.wait_state(&again, "Running");
    d.ctl_ok(&["stop", &again]);
    let kept = d.data_dir().join("state").join(&again);
    let out = d.ctl_ok(&["--json", "delete", &again, "--keep-checkpoints"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kept"][0], kept.display().to_string());
    assert!(kept.exists());
}

#[test]
fn a_stop_without_a_final_checkpoint_says_so_and_exits_1() {
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = vec![("ARROYO_STOP_TIMEOUT".into(), "3s".into())];
    d.restart();
    let id = d.submit_with("frozen", UNBOUNDED, &["--checkpoint-interval", "200ms"]);
    let s = wait_until(DEADLINE, "a checkpoint", || {
        let s = d.status(&id);
        (s["last_checkpoint"].as_u64() > Some(0)).then_some(s)
    });
    // A worker that does not answer: stopped (SIGSTOP) before the stop is asked.
    let worker = s["worker_pid"].as_u64().unwrap() as u32;
    harness::signal(worker, "STOP");
    let started = Instant::now();
    let out = d.ctl(&["stop", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    // Progress while it waited, then what happened and where it resumes from.
    assert!(err.contains(&format!("stopping frozen {id}: ")), "{err}");
    assert!(
        err.contains(&format!(
            "error: pipeline frozen {id} stopped without a final checkpoint"
        )),
        "{err}"
    );
    assert!(err.contains("resumes from checkpoint"), "{err}");
    let s = d.status(&id);
    assert_eq!(s["state"], "Stopped");
    assert_eq!(s["last_stop"]["clean"], false);
    wait_until(DEADLINE, "the worker to be killed", || {
        (!alive(worker)).then_some(())
    });
}

#[test]
fn a_finished_pipeline_is_not_wanted_running() {
    let d = TestDaemon::start();
    let id = d.submit(
        "done",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10000', message_count='50'); SELECT counter FROM impulse;",
    );
    let s = d.wait_state(&id, "Finished");
    assert_eq!(s["desired"], "Stopped");
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(logs.contains("every source finished"), "{logs}");
}

#[test]
fn the_output_log_is_lossless_across_a_daemon_restart_with_offsets_and_gaps() {
    let mut d = TestDaemon::start();
    let id = d.submit_with("out", UNBOUNDED, &["--checkpoint-interval", "300ms"]);
    wait_until(DEADLINE, "300 rows", || {
        (d.status(&id)["rows"].as_u64() >= Some(300)).then_some(())
    });
    // Its files are private.
    let dir = d.data_dir().join("output").join(&id);
    assert_eq!(mode(&dir), 0o700);
    for f in std::fs::read_dir(&dir).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    let before = tail_json(&d, &[&id]);
    assert!(d.term().success());
    d.restart();
    wait_until(DEADLINE, "the pipeline to write again", || {
        let s = d.status(&id);
        (s["generation"] == 2 && s["rows"].as_u64() > Some(before.len() as u64 + 50)).then_some(())
    });
    // Every frame read before the restart reads the same after it.
    let after = tail_json(&d, &[&id]);
    assert_eq!(after[..before.len()], before[..]);
    // The restore is marked, with the checkpoint it came from.
    let restore = after[before.len()..]
        .iter()
        .find(|f| f.get("restore").is_some())
        .expect("a restore mark");
    assert_eq!(restore["restore"]["generation"], 2);
    assert!(restore["restore"]["epoch"].as_u64() > Some(0), "{restore}");

    // --from and -n, in text.
    let from = d.ctl_ok(&["tail", &id, "--from", "100"]);
    let first: serde_json::Value = serde_json::from_str(from.lines().next().unwrap()).unwrap();
    assert_eq!(first["counter"], 100);
    let last = d.ctl_ok(&["tail", &id, "-n", "5"]);
    assert_eq!(last.lines().count(), 5, "{last}");
}

#[test]
fn a_reader_behind_retention_gets_an_explicit_gap() {
    let mut d = TestDaemon::unstarted(&[]);
    d.envs = vec![("ARROYO_OUTPUT_LOG_BYTES".into(), "40000".into())];
    d.restart();
    let id = d.submit(
        "wide",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='5000', message_count='2000');
         SELECT counter, repeat('x', 200) AS pad FROM impulse;",
    );
    d.wait_state(&id, "Finished");
    let frames = tail_json(&d, &[&id, "--from", "0"]);
    let gap = &frames[0]["gap"];
    let first = gap["to"].as_u64().unwrap();
    assert_eq!(gap["from"], 0);
    assert!(first > 1000, "{gap}");
    let rows: Vec<u64> = frames
        .iter()
        .filter(|f| f.get("row").is_some())
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(rows.first(), Some(&first));
    assert_eq!(rows, (first..2000).collect::<Vec<_>>());
    // In text, the gap is a warning on stderr, the rows on stdout.
    let out = d.ctl(&["tail", &id]);
    assert!(stderr(&out).contains(&format!("warning: rows 0..{first} are gone")));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        2000 - first
    );
}

#[test]
fn logs_follow_state_changes_errors_and_checkpoints() {
    let d = TestDaemon::start();
    let id = d.submit_with("logged", UNBOUNDED, &["--checkpoint-interval", "200ms"]);
    d.wait_state(&id, "Running");
    let mut follower = d
        .ctl_command(&["--json", "logs", &id, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(follower.stdout.take().unwrap());
    let events = |lines: &Lines| -> Vec<serde_json::Value> {
        lines
            .seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until(DEADLINE, "a checkpoint event", || {
        let _ = lines.wait_for(lines.seen.len() + 1, DEADLINE);
        events(&lines)
            .iter()
            .any(|e| e["kind"] == "checkpoint")
            .then_some(())
    });
    d.ctl_ok(&["stop", &id]);
    wait_until(DEADLINE, "the stop's events", || {
        let _ = lines.wait_for(lines.seen.len() + 1, DEADLINE);
        events(&lines)
            .iter()
            .any(|e| e["state"] == "Stopped")
            .then_some(())
    });
    let all = events(&lines);
    assert_eq!(all[0]["kind"], "state");
    assert!(
        all[0]["message"]
            .as_str()
            .unwrap()
            .contains("scheduling the first worker"),
        "{all:?}"
    );
    let _ = follower.kill();
    let _ = follower.wait();

    // A crash is recorded as a restart, a failure as an error with its cause.
    let id = d.submit(
        "bad",
        "CREATE TABLE src (x INT) WITH (connector='single_file', path='/nonexistent/in.json', format='json', type='source'); SELECT x FROM src;",
    );
    d.wait_state(&id, "Failed");
    let text = d.ctl_ok(&["logs", &id, "-n", "2"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" error ") && l.contains("/nonexistent/in.json")),
        "{text}"
    );
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 from `addr`; the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

#[test]
fn metrics_are_served_on_a_loopback_address() {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = TestDaemon::start_with(&["--metrics-addr", &addr]);
    // Checkpoints only on demand (an hour is beyond every deadline here).
    let id = d.submit_with("measured", UNBOUNDED, &["--checkpoint-interval", "1h"]);
    d.wait_state(&id, "Running");
    let body = http_get(&addr, "/metrics");
    assert!(
        body.contains("arroyod_pipelines{state=\"Running\"} 1"),
        "{body}"
    );
    // Output rows move.
    let rows = |body: &str| -> u64 {
        body.lines()
            .find(|l| {
                l.starts_with("arroyod_pipeline_output_rows_total")
                    && l.contains(&format!("pipeline=\"{id}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let first = wait_until(DEADLINE, "output rows", || {
        Some(rows(&http_get(&addr, "/metrics"))).filter(|n| *n > 0)
    });
    wait_until(DEADLINE, "more output rows", || {
        (rows(&http_get(&addr, "/metrics")) > first).then_some(())
    });
    // Per operator: the source's rows out and the sink's rows in move, as the worker reports.
    let operator = |body: &str, series: &str, kind: &str| -> u64 {
        body.lines()
            .find(|l| {
                l.starts_with(&format!("arroyod_operator_{series}{{"))
                    && l.contains(&format!("pipeline=\"{id}\""))
                    && l.contains(&format!("operator=\"{kind}"))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let source_out = wait_until(DEADLINE, "the source's rows out", || {
        Some(operator(
            &http_get(&addr, "/metrics"),
            "rows_out_total",
            "source:",
        ))
        .filter(|n| *n > 0)
    });
    wait_until(
        DEADLINE,
        "more rows out of the source, and into the sink",
        || {
            let body = http_get(&addr, "/metrics");
            (operator(&body, "rows_out_total", "source:") > source_out
                && operator(&body, "rows_in_total", "sink:") > 0)
                .then_some(())
        },
    );
    // An on-demand checkpoint completes long before the interval's first.
    assert_eq!(d.status(&id)["last_checkpoint"], 0);
    let out = d.ctl_ok(&["checkpoint", &id[..6]]);
    assert!(out.starts_with("checkpoint 1 of "), "{out}");
    assert_eq!(d.status(&id)["last_checkpoint"], 1);
    let body = wait_until(DEADLINE, "the source's part of the checkpoint", || {
        let body = http_get(&addr, "/metrics");
        (operator(&body, "checkpoint_bytes", "source:") > 0).then_some(body)
    });
    assert!(
        body.contains("arroyod_pipeline_checkpoints_total"),
        "{body}"
    );

    // `top` shows the pipeline.
    let top = d.ctl_ok(&["top", &id, "--count", "1"]);
    assert!(
        top.starts_with(&format!("pipeline measured {id}  Running")),
        "{top}"
    );

    // Only loopback: another address is refused at start.
    let out = std::process::Command::new(harness::arroyod_bin())
        .args(["--metrics-addr", "0.0.0.0:9464", "--data-dir"])
        .arg(d.dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only a loopback address"),
        "{}",
        stderr(&out)
    );
}

/// The messages a service manager gets on a datagram socket, as they come.
struct NotifySocket {
    socket: UnixDatagram,
    pub path: std::path::PathBuf,
    pub seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads one message if one comes within the socket's read timeout.
    fn recv(&mut self) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits until a message holding `line` came.
    fn wait_for(&mut self, line: &str) {
        let start = Instant::now();
        while self.count(line) == 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "no {line} among {:?}",
                self.seen
            );
            self.recv();
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    let mut d = TestDaemon::unstarted(&[]);
    let mut notify = NotifySocket::bind(d.dir.path());
    d.envs = vec![
        ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
        ("WATCHDOG_USEC".into(), "600000".into()),
    ];
    d.restart();
    notify.wait_for("READY=1");
    let ready = notify.seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=0 pipelines"), "{ready}");
    let id = d.submit("beating", UNBOUNDED);
    d.wait_state(&id, "Running");
    notify.wait_for("STATUS=1 pipeline: 1 running");
    // Pings keep coming while the controller answers.
    let pings = notify.count("WATCHDOG=1");
    wait_until(DEADLINE, "two more watchdog pings", || {
        notify.recv();
        (notify.count("WATCHDOG=1") >= pings + 2).then_some(())
    });
    // Workers do not talk to the service manager.
    assert!(!d.log().contains("notifying the service manager failed"));
    assert!(d.term().success());
    notify.wait_for("STOPPING=1");
}

#[test]
fn sigterm_at_any_moment_after_start_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    for delay_ms in [20u64, 40, 80, 120, 200, 300, 500, 800, 1200, 2000] {
        let data = dir.path().join(format!("data-{delay_ms}"));
        let mut child = std::process::Command::new(harness::arroyod_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        harness::signal(child.id(), "TERM");
        let status = wait_exit(&mut child, DEADLINE);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.success(),
            "SIGTERM {delay_ms} ms after start: {status}\n{err}"
        );
    }
}
