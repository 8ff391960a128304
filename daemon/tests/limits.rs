//! Regression tests of issue 9's defects of size and shape, through the real binaries: a slow
//! reader of `arroyod run` (2), rows beyond a message's limit (4), deep and long expressions
//! (3); and a pipeline whose state outgrows its memory limit (issue 12).

mod harness;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{DEADLINE, alive, arroyod_bin, parent_of, run_query, wait_exit};

/// The live `arroyod worker` children of `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            parent_of(*pid) == Some(parent)
                && alive(*pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"worker"))
        })
        .collect()
}

/// A field of `/proc/<pid>/<file>` written `name: value` or `name value` (None once gone).
fn proc_field(pid: u32, file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.trim_start_matches(':').trim();
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Issue 9.2: `arroyod run q.sql | (sleep 15; wc -l)` printed 138,292 of 300,000 rows, exit 0.
/// stdout now holds the pipeline back: a reader that stops reading gets every row, in order,
/// once it reads again, and `run`'s memory stays bounded meanwhile.
#[test]
fn run_prints_every_row_to_a_reader_that_pauses() {
    let rows: u64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("q.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE TABLE impulse WITH (connector='impulse', event_rate='1000000', message_count='{rows}');
             SELECT counter FROM impulse;"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut run = Command::new(arroyod_bin())
        .args([
            "run",
            "-s",
            state.to_str().unwrap(),
            query.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        // A small buffer: without backpressure it would overflow a hundred times over.
        .env("ARROYO_TAIL_BUFFER_BYTES", "65536")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_pid = run.id();
    let mut stdout = run.stdout.take().unwrap();
    let mut stderr = run.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // The reader pauses. A lossy run used to drop rows once its worker wrote more than the pipe
    // and the buffer hold (128 kB): wait until the worker wrote 8 MB (all it has is 6 MB) or
    // finished, or until 15 s passed (a held-back worker never gets that far).
    let worker = harness::wait_until(DEADLINE * 2, "the worker to start", || {
        workers_of(run_pid).first().copied()
    });
    let paused = Instant::now();
    let mut peak_rss_kb = 0;
    while paused.elapsed() < Duration::from_secs(15) {
        let Some(written) = proc_field(worker, "io", "wchar") else {
            break;
        };
        peak_rss_kb = peak_rss_kb.max(proc_field(run_pid, "status", "VmRSS").unwrap_or(0));
        if written > 8 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let worker_written = proc_field(worker, "io", "wchar").unwrap_or(u64::MAX);

    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    let status = wait_exit(&mut run, DEADLINE * 2);
    let stderr = errors.join().unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    let counters = harness::counters_in(&text);
    assert_eq!(
        counters.len() as u64,
        rows,
        "rows printed (worker had written {worker_written} bytes while the reader paused): {stderr}"
    );
    assert!(
        counters.iter().copied().eq(0..rows),
        "every row once, in order"
    );
    assert!(
        worker_written < 8 << 20,
        "the worker was not held back: it wrote {worker_written} bytes"
    );
    assert!(
        peak_rss_kb < 512 << 10,
        "run held {peak_rss_kb} kB while its reader paused"
    );
    eprintln!(
        "paused reader: worker wrote {worker_written} bytes, run's peak RSS {peak_rss_kb} kB"
    );
}

/// Issue 9.4: a batch over 4 MiB crash-looped the worker ("decoded message length too large"
/// only in a WARN, "5 restarts used up" after duplicated output). Rows now travel in messages
/// under the limit, a 5 MB row reaches `tail` whole, and a row too large for any message fails
/// the pipeline once, with a clear message.
#[test]
fn rows_beyond_four_mib_reach_the_tail_and_a_row_too_large_fails_clearly() {
    let d = harness::TestDaemon::start();
    // 200 rows of 100 kB: 20 MB, in batches far over 4 MiB.
    let id = d.submit(
        "wide",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='200');
         SELECT counter, repeat('x', 100000) AS pad FROM impulse;",
    );
    let s = d.wait_state(&id, "Finished");
    assert_eq!(s["rows"], 200, "{s}");
    assert_eq!(s["generation"], 1, "no restart: {s}");
    let tailed = d.ctl_ok(&["tail", &id]);
    assert_eq!(
        harness::counters_in(&tailed),
        (0..200).collect::<Vec<u64>>()
    );

    // One row of 5 MB, over the old limit of any message: in `tail` whole.
    let id = d.submit(
        "huge",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10', message_count='1');
         SELECT counter, repeat('y', 5000000) AS pad FROM impulse;",
    );
    d.wait_state(&id, "Finished");
    let tailed = d.ctl_ok(&["tail", &id]);
    let row: serde_json::Value = serde_json::from_str(tailed.trim()).unwrap();
    assert_eq!(row["pad"].as_str().unwrap().len(), 5_000_000);

    // A row of 40 MB fits in no message: the pipeline fails at once, saying why.
    let id = d.submit(
        "giant",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10', message_count='1');
         SELECT counter, repeat('z', 40000000) AS pad FROM impulse;",
    );
    let s = d.wait_state(&id, "Failed");
    let failure = s["failure"].as_str().unwrap();
    assert!(
        failure.contains("a row of the default sink is 400000") && failure.contains("file sink"),
        "{s}"
    );
    assert_eq!(s["generation"], 1, "no restart loop: {s}");

    // `arroyod run` prints rows over 4 MiB too.
    let state = d.dir.path().join("run-state");
    let out = harness::run_query(
        &["-s", state.to_str().unwrap(), "-"],
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='60');
         SELECT counter, repeat('x', 100000) AS pad FROM impulse;",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        harness::counters_in(&printed),
        (0..60).collect::<Vec<u64>>(),
        "{stderr}"
    );
}

const COUNTERS: &str =
    "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='100');";

/// Terms of the flat chains.
const CHAIN: usize = 1200;

/// `counter {op} 0 {joiner} counter {op} 2 {joiner} ...`: `terms` terms.
fn chain(terms: usize, op: &str, joiner: &str) -> String {
    (0..terms)
        .map(|i| format!("counter {op} {}", 2 * i))
        .collect::<Vec<_>>()
        .join(&format!(" {joiner} "))
}

/// Issue 9.3: `validate` of a WHERE with 1,000 `OR` terms, 1,000 chained `+` or a 50k-term AND
/// aborted the daemon (stack overflow). Flat chains plan (on a large stack) and run in the
/// worker; nesting past the documented bound (256) is refused with its position. Planning time
/// grows with the square of a chain's length in a debug build (1,000 terms: 2 s), so the chains
/// here are just past the sizes that used to crash.
#[test]
fn long_chains_plan_and_run_and_deep_nesting_is_refused_with_its_position() {
    // 1,200 OR terms pick the even counters; evaluated in the worker.
    let rows = harness::query_rows(
        1,
        &format!(
            "{COUNTERS} SELECT counter FROM impulse WHERE {};",
            chain(CHAIN, "=", "OR")
        ),
    );
    let got: Vec<u64> = rows
        .iter()
        .map(|r| r["counter"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..100).step_by(2).collect::<Vec<u64>>());

    // 1,200 AND terms, all true for odd counters; 1,000 chained `+`.
    let plus = vec!["1"; 1000].join(" + ");
    let rows = harness::query_rows(
        1,
        &format!(
            "{COUNTERS} SELECT counter + {plus} AS c FROM impulse WHERE {};",
            chain(CHAIN, "<>", "AND")
        ),
    );
    let got: Vec<u64> = rows.iter().map(|r| r["c"].as_u64().unwrap()).collect();
    assert_eq!(
        got,
        (1..100).step_by(2).map(|c| c + 1000).collect::<Vec<u64>>()
    );

    // 250 nested parentheses and a CASE nested 100 deep plan (CASE past ~50 used to be
    // "unexpected '0' after the end of the statement").
    let parens = format!("{}counter{}", "(".repeat(250), ")".repeat(250));
    let mut case = "counter".to_string();
    for i in 0..100 {
        case = format!("CASE WHEN counter = {i} THEN {i} ELSE {case} END");
    }
    let rows = harness::query_rows(
        1,
        &format!("{COUNTERS} SELECT {parens} AS p, {case} AS c FROM impulse;"),
    );
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r["p"] == r["c"]), "{:?}", &rows[..3]);

    // 2,000 nested parentheses: refused where the nesting passes the bound.
    let deep = format!("{}counter{}", "(".repeat(2000), ")".repeat(2000));
    let stderr = harness::query_refused(&format!("{COUNTERS}\nSELECT {deep} FROM impulse;"));
    assert!(
        stderr.contains("the query nests more than 256 levels deep here"),
        "{stderr}"
    );
    let position = stderr
        .split("<stdin>:")
        .nth(1)
        .and_then(|r| r.split(": ").next())
        .unwrap_or_default()
        .to_string();
    let (line, column) = position.split_once(':').unwrap_or_default();
    assert_eq!(line, "2", "{stderr}");
    let column: usize = column.parse().unwrap();
    assert!((250..800).contains(&column), "{stderr}");

    // The daemon validates a long AND and 1,000 chained `+`, and stays up.
    let d = harness::TestDaemon::start();
    for (name, sql) in [
        (
            "and",
            format!(
                "{COUNTERS} SELECT counter FROM impulse WHERE {};",
                chain(CHAIN, "<>", "AND")
            ),
        ),
        (
            "plus",
            format!("{COUNTERS} SELECT counter + {plus} FROM impulse;"),
        ),
    ] {
        let file = d.dir.path().join(format!("{name}.sql"));
        std::fs::write(&file, sql).unwrap();
        let out = d.ctl(&["validate", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    }
    d.ctl_ok(&["list"]);
}

/// Issue 9.14: a 5,000-digit integer literal became `inf` (every row null); a UTF-8 byte order
/// mark made line 1 bad; `bad_data = 'drop'` wrote one WARN per dropped line; a missing event
/// time under `fail` named the file but not the line.
#[test]
fn input_edge_cases_are_read_or_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let state = |name: &str| dir.path().join(name).display().to_string();

    let huge = "9".repeat(5000);
    let stderr = harness::query_refused(&format!(
        "{COUNTERS}\nSELECT counter + {huge} FROM impulse;"
    ));
    assert!(
        stderr.contains("<stdin>:2:")
            && stderr
                .contains("the number 99999999999999999999... (5000 characters) is out of range"),
        "{stderr}"
    );

    // A byte order mark before line 1.
    let input = dir.path().join("bom.json");
    std::fs::write(&input, "\u{feff}{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    let rows = harness::query_rows(
        1,
        &format!(
            "CREATE TABLE t (n BIGINT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source');
             SELECT n FROM t;",
            input.display()
        ),
    );
    assert_eq!(
        rows,
        vec![serde_json::json!({"n": 1}), serde_json::json!({"n": 2})]
    );

    // 500 bad lines dropped: ten warnings, then their count.
    let input = dir.path().join("bad.json");
    let mut text = String::new();
    for i in 0..1000 {
        if i % 2 == 0 {
            text.push_str(&format!("{{\"n\": {i}}}\n"));
        } else {
            text.push_str("not json\n");
        }
    }
    std::fs::write(&input, text).unwrap();
    let out = run_query(
        &["-s", &state("drop"), "-"],
        &format!(
            "CREATE TABLE t (n BIGINT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source', bad_data = 'drop');
             SELECT n FROM t;",
            input.display()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 500);
    assert_eq!(
        stderr.matches("dropped a bad record").count(),
        10,
        "{stderr}"
    );
    assert!(stderr.contains("dropped=500"), "{stderr}");

    // A missing event time under `fail`: the file and the line.
    let input = dir.path().join("times.json");
    std::fs::write(
        &input,
        "{\"n\": 1, \"t\": \"2024-01-01T00:00:00Z\"}\n\n{\"n\": 2, \"t\": \"2024-01-01T00:00:01Z\"}\n{\"n\": 3}\n",
    )
    .unwrap();
    let out = run_query(
        &["-s", &state("times"), "-"],
        &format!(
            "CREATE TABLE t (n BIGINT, t TIMESTAMP) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source', event_time_field = 't');
             SELECT n FROM t;",
            input.display()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("times.json at line 4") && stderr.contains("has no event time"),
        "{stderr}"
    );
}

/// Submits `sql` under a 512 MiB limit and waits for it to fail; checks that DataFusion's
/// memory pool refused the operator's state before the worker's resident memory reached the
/// limit (the resident watch's message would say "resident").
fn fails_over_its_state_limit(d: &harness::TestDaemon, name: &str, sql: &str) -> String {
    let id = d.submit_with(name, sql, &["--memory-limit", "512MiB"]);
    let waited = format!("pipeline {name} to fail");
    let s = harness::wait_until(Duration::from_secs(180), &waited, || {
        let s = d.status(&id);
        (s["state"] == "Failed").then_some(s)
    });
    let failure = s["failure"].as_str().unwrap();
    assert!(
        failure.contains("went over its memory limit of 512 MiB")
            && failure.contains("its operators' state may hold 256 MiB")
            && failure.contains("--memory-limit")
            && !failure.contains("resident"),
        "{name}: {s}"
    );
    assert_eq!(s["generation"], 1, "{name}: no restart loop: {s}");
    id
}

#[test]
fn state_over_the_memory_limit_fails_the_pipeline_clearly_and_the_daemon_lives_on() {
    let d = harness::TestDaemon::start();
    // Every counter is a group of its own: the updating aggregate's state grows without end.
    let id = fails_over_its_state_limit(
        &d,
        "groups",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10000000');
         CREATE TABLE out (counter BIGINT UNSIGNED, n BIGINT) WITH (connector = 'blackhole');
         INSERT INTO out SELECT counter, count(*) AS n FROM impulse GROUP BY counter;",
    );
    // The operators that keep rows rather than accumulators count them too: a session that
    // never closes, and a windowless join whose rows live for a day.
    fails_over_its_state_limit(
        &d,
        "session",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10000000');
         CREATE TABLE out (n BIGINT) WITH (connector = 'blackhole');
         INSERT INTO out SELECT count(*) AS n FROM impulse GROUP BY session(interval '1 day');",
    );
    fails_over_its_state_limit(
        &d,
        "join",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10000000');
         CREATE TABLE out (a BIGINT UNSIGNED, b BIGINT UNSIGNED) WITH (connector = 'blackhole');
         INSERT INTO out SELECT l.counter AS a, r.counter AS b
           FROM impulse l JOIN impulse r ON l.counter = r.counter;",
    );
    // The daemon lives on and runs other pipelines.
    assert!(alive(d.pid()));
    let other = d.submit(
        "after",
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='1000', message_count='10');
         SELECT counter FROM impulse;",
    );
    d.wait_state(&other, "Finished");
    let logs = d.ctl_ok(&["logs", &id]);
    assert!(logs.contains("memory limit of 512 MiB"), "{logs}");
}

/// Issue 9.14 and 12: the rows a pipeline drops, as bad data (`bad_data = 'drop'`) and as
/// late, are counted in `status` (and in the operators' metrics, which `status` sums).
#[test]
fn dropped_rows_are_counted_in_status() {
    let mut d = harness::TestDaemon::unstarted(&[]);
    // One line per batch, so that each row comes after the watermark of the ones before.
    d.envs = vec![("ARROYO_TEST_FILE_PACE".into(), "1:5".into())];
    d.restart();
    let input = d.dir.path().join("in.json");
    let mut lines = Vec::new();
    for s in 0..20 {
        lines.push(format!(r#"{{"n": {s}, "at": "2024-01-01T00:00:{s:02}Z"}}"#));
        if s % 3 == 2 {
            lines.push("not json".to_string());
        }
    }
    // After the watermark passed second 10: late for its window.
    for s in 0..4 {
        lines.push(format!(r#"{{"n": {s}, "at": "2024-01-01T00:00:01Z"}}"#));
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let bad = lines.iter().filter(|l| *l == "not json").count() as u64;
    let id = d.submit(
        "drops",
        &format!(
            "CREATE TABLE t (n BIGINT, at TIMESTAMP, WATERMARK FOR at AS at) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source', bad_data = 'drop');
             SELECT count(*) AS c FROM t GROUP BY tumble(interval '1 second');",
            input.display()
        ),
    );
    let s = d.wait_state(&id, "Finished");
    assert_eq!(s["bad_rows_dropped"], bad, "{s}");
    assert_eq!(s["late_rows_dropped"], 4, "{s}");
    let text = d.ctl_ok(&["status", &id]);
    assert!(text.contains(&format!("{bad} bad, 4 late")), "{text}");
}
