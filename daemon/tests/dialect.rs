//! Arroyo's SQL dialect beyond the golden cases: small queries through `arroyod run`, each
//! checking its rows or the error it must give.

mod harness;

use harness::run_query;

fn cars() -> String {
    let inputs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/inputs/cars.json");
    inputs.display().to_string()
}

/// Runs `sql` (a bare SELECT) and returns its rows, or panics with stderr.
fn rows(sql: &str) -> Vec<serde_json::Value> {
    harness::query_rows(1, sql)
}

/// Runs `sql`, which must be refused; returns stderr.
fn refused(sql: &str) -> String {
    harness::query_refused(sql)
}

fn cars_table(extra_columns: &str, extra_options: &str) -> String {
    format!(
        "CREATE TABLE cars (timestamp TIMESTAMP, driver_id BIGINT, event_type TEXT, location TEXT{extra_columns})
         WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source'{extra_options});\n",
        cars()
    )
}

#[test]
fn virtual_columns_are_computed_from_the_others() {
    let sql = cars_table(
        ", big_id BIGINT GENERATED ALWAYS AS (driver_id * 1000) STORED",
        ", event_time_field = 'timestamp'",
    ) + "SELECT driver_id, big_id FROM cars WHERE driver_id = 100;";
    let rows = rows(&sql);
    assert!(!rows.is_empty());
    for r in rows {
        assert_eq!(r["big_id"], 100_000);
    }
}

#[test]
fn tumbling_counts_cover_every_row_once() {
    let sql = cars_table("", ", event_time_field = 'timestamp'")
        + "SELECT count(*) AS n FROM cars GROUP BY tumble(interval '1 hour');";
    let total: i64 = rows(&sql).iter().map(|r| r["n"].as_i64().unwrap()).sum();
    assert_eq!(total, 7932);
}

#[test]
fn hop_windows_count_each_row_width_over_slide_times() {
    let sql = cars_table("", ", event_time_field = 'timestamp'")
        + "SELECT count(*) AS n FROM cars GROUP BY hop(interval '10 minutes', interval '30 minutes');";
    let total: i64 = rows(&sql).iter().map(|r| r["n"].as_i64().unwrap()).sum();
    assert_eq!(total, 3 * 7932);
}

#[test]
fn updating_results_need_a_debezium_sink() {
    let err = refused(&format!(
        "{}CREATE TABLE out (n BIGINT) WITH (connector = 'single_file', path = '/dev/null', format = 'json', type = 'sink');
         INSERT INTO out SELECT count(*) FROM cars;",
        cars_table("", "")
    ));
    assert!(err.contains("debezium_json"), "{err}");
}

#[test]
fn a_bare_updating_select_prints_change_events() {
    let rows = rows(
        &(cars_table("", "") + "SELECT event_type, count(*) AS n FROM cars GROUP BY event_type;"),
    );
    // Replay creates and deletes: the final counts add up to every row.
    let mut last = std::collections::HashMap::new();
    for r in &rows {
        match r["op"].as_str().unwrap() {
            "c" => {
                last.insert(
                    r["after"]["event_type"].to_string(),
                    r["after"]["n"].as_i64().unwrap(),
                );
            }
            "d" => {
                last.remove(&r["before"]["event_type"].to_string());
            }
            other => panic!("unexpected op {other}"),
        }
    }
    assert_eq!(last.values().sum::<i64>(), 7932);
}

#[test]
fn hop_width_must_be_a_multiple_of_slide() {
    let err = refused(
        &(cars_table("", "")
            + "SELECT count(*) FROM cars GROUP BY hop(interval '40 minutes', interval '1 hour');"),
    );
    assert!(
        err.contains("hop() width 3600s currently must be a multiple of slide 2400s"),
        "{err}"
    );
}

#[test]
fn bad_data_fail_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(
        &input,
        "{\"n\": 1}\n{\"n\": 2}\n{\"n\": \"three\"}\n{\"n\": 4}\n",
    )
    .unwrap();
    let table = |bad: &str| {
        format!(
            "CREATE TABLE t (n BIGINT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source', bad_data = '{bad}');
             SELECT n FROM t;",
            input.display()
        )
    };
    let out = run_query(
        &["-s", dir.path().join("a").to_str().unwrap(), "-"],
        &table("fail"),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in.json at line 3"), "{stderr}");

    let dropped = rows(&table("drop"));
    let ns: Vec<i64> = dropped.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 2, 4]);
}

#[test]
fn json_functions() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, "{\"a\": {\"b\": [1, \"x\"]}, \"s\": \"hi\"}\n").unwrap();
    let sql = format!(
        "CREATE TABLE t (value JSON) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source', 'json.unstructured' = 'true');
         SELECT value->'s' AS quoted, value->>'s' AS plain, extract_json_string(value, '$.a.b[1]') AS x FROM t;",
        input.display()
    );
    let rows = rows(&sql);
    assert_eq!(
        rows,
        vec![serde_json::json!({"quoted": "\"hi\"", "plain": "hi", "x": "x"})]
    );
}

#[test]
fn unsupported_statements_and_unknown_tables_are_named() {
    let err = refused("DROP TABLE x;\nSELECT * FROM nowhere;");
    assert!(
        err.contains("<stdin>:1:1: error: unsupported statement 'DROP TABLE'"),
        "{err}"
    );
    assert!(err.contains("<stdin>:2:"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn unnest_gives_a_row_per_element() {
    let rows = rows(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='1000', message_count='3');
         SELECT counter, unnest(make_array(counter, counter * 10)) AS v FROM impulse;",
    );
    let mut got: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r["counter"].as_u64().unwrap(), r["v"].as_u64().unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, 0), (0, 0), (1, 1), (1, 10), (2, 2), (2, 20)]);
}

#[test]
fn windowless_inner_join_matches_every_pair_at_any_parallelism() {
    let sql = "SET updating_ttl = interval '1 hour';
         CREATE TABLE a WITH (connector='impulse', event_rate='100000', message_count='1000');
         CREATE TABLE b WITH (connector='impulse', event_rate='100000', message_count='500');
         SELECT a.counter AS x, b.counter AS y FROM a JOIN b ON a.counter = b.counter * 2;";
    for p in ["1", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let out = run_query(
            &["-p", p, "-s", dir.path().join("s").to_str().unwrap(), "-"],
            sql,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pairs: Vec<(u64, u64)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["x"].as_u64().unwrap(), v["y"].as_u64().unwrap())
            })
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            (0..500).map(|y| (2 * y, y)).collect::<Vec<_>>(),
            "-p {p}"
        );
    }
}

#[test]
fn unknown_settings_and_outer_windowless_joins_are_refused() {
    let err = refused("SET colour = 'red';");
    assert!(err.contains("unknown setting 'colour'"), "{err}");
    let err = refused(
        "CREATE TABLE a WITH (connector='impulse', event_rate='10');
         CREATE TABLE b WITH (connector='impulse', event_rate='10');
         SELECT * FROM a LEFT JOIN b ON a.counter = b.counter;",
    );
    // At the JOIN, saying what is supported.
    assert!(
        err.contains(":3:31: error: LEFT joins need both sides grouped by the same window"),
        "{err}"
    );
}

/// Two output columns of one name (a join's `a.counter, b.counter`, or `SELECT *` over it)
/// are named by their table too: a JSON row with a repeated key would lose one of them.
#[test]
fn a_joins_columns_of_one_name_keep_both_values() {
    let pairs = rows(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='4');
         SELECT a.counter, b.counter, a.counter + b.counter AS total
         FROM impulse a JOIN impulse b ON a.counter = b.counter + 1;",
    );
    let mut got: Vec<(u64, u64, u64)> = pairs
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
            (n("a.counter"), n("b.counter"), n("total"))
        })
        .collect();
    got.sort();
    assert_eq!(got, [(1, 0, 1), (2, 1, 3), (3, 2, 5)]);
    let all = rows(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='2');
         SELECT * FROM impulse a JOIN impulse b ON a.counter = b.counter;",
    );
    assert_eq!(all.len(), 2, "{all:?}");
    for r in &all {
        assert_eq!(r["a.counter"], r["b.counter"], "{r}");
        assert!(
            r.get("a.timestamp").is_some() && r.get("b.subtask_index").is_some(),
            "{r}"
        );
    }
}

#[test]
fn ordered_aggregates_see_their_order_by() {
    let rows = rows(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='10', event_time_interval='1ms');
         SELECT array_agg(counter ORDER BY counter DESC) AS a, first_value(counter ORDER BY counter DESC) AS f
         FROM impulse GROUP BY tumble(interval '1 second');",
    );
    assert_eq!(
        rows,
        vec![serde_json::json!({"a": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "f": 9})]
    );
}

/// Runs `sql` through `arroyod run -` with `envs`; returns (stdout rows, stderr), or panics.
fn rows_with_env(sql: &str, envs: &[(&str, &str)]) -> (Vec<serde_json::Value>, String) {
    use std::io::Write;
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(harness::arroyod_bin())
        .args(["run", "-s", harness::path_str(&state.path().join("s")), "-"])
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (rows, stderr)
}

#[test]
fn watermark_field_names_the_column_whose_value_is_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    // The third row is 30 s behind the second: late for 10 s windows under the default
    // watermark (the event time less 1 s), in time under one that trails by a minute.
    std::fs::write(
        &input,
        "{\"ts\": \"2024-01-01T00:00:10\"}\n{\"ts\": \"2024-01-01T00:00:50\"}\n{\"ts\": \"2024-01-01T00:00:20\"}\n{\"ts\": \"2024-01-01T00:02:00\"}\n",
    )
    .unwrap();
    let query = |columns: &str, options: &str| {
        format!(
            "CREATE TABLE t (ts TIMESTAMP NOT NULL{columns}) WITH (connector = 'single_file', path = '{}',
               format = 'json', type = 'source', event_time_field = 'ts'{options});
             SELECT count(*) AS n FROM t GROUP BY tumble(interval '10 seconds');",
            input.display()
        )
    };
    let total =
        |rows: &[serde_json::Value]| rows.iter().map(|r| r["n"].as_i64().unwrap()).sum::<i64>();
    // One line a step: each line's watermark goes out before the next line.
    let paced = [("ARROYO_TEST_FILE_PACE", "1:0")];
    let (rows, _) = rows_with_env(&query("", ""), &paced);
    assert_eq!(total(&rows), 3, "the late row is dropped: {rows:?}");
    let (rows, _) = rows_with_env(
        &query(
            ", wm TIMESTAMP GENERATED ALWAYS AS (ts - INTERVAL '1 minute') STORED",
            ", watermark_field = 'wm'",
        ),
        &paced,
    );
    assert_eq!(total(&rows), 4, "nothing is late: {rows:?}");
    // The same as WATERMARK FOR: both at once is refused, as is a column that is not a time.
    let err = refused(&query(
        ", WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE",
        ", watermark_field = 'ts'",
    ));
    assert!(
        err.contains("both WATERMARK FOR and the option watermark_field"),
        "{err}"
    );
    let err = refused(&query(", n BIGINT", ", watermark_field = 'n'"));
    assert!(err.contains("must be a TIMESTAMP column"), "{err}");
}

#[test]
fn misspelled_functions_suggest_the_nearest_only_when_near() {
    let err = refused(&(cars_table("", "") + "SELECT apporx_median(driver_id) FROM cars;"));
    assert!(
        err.contains("unknown function 'apporx_median' (did you mean 'approx_median'?)"),
        "{err}"
    );
    let err = refused(&(cars_table("", "") + "SELECT qqqzzzxxx(driver_id) FROM cars;"));
    assert!(err.contains("unknown function 'qqqzzzxxx'"), "{err}");
    assert!(!err.contains("did you mean"), "{err}");
    // Options have theirs too.
    let err = refused(&cars_table("", ", event_tme_field = 'timestamp'"));
    assert!(err.contains("did you mean 'event_time_field'"), "{err}");
}

#[test]
fn windows_on_processing_time_are_a_warning_not_an_error() {
    let windowed = "SELECT count(*) AS n FROM cars GROUP BY tumble(interval '1 hour');";
    let (_, stderr) = rows_with_env(&(cars_table("", "") + windowed), &[]);
    assert!(
        stderr.contains("warning: windows over 'cars' run on processing time"),
        "{stderr}"
    );
    let (_, stderr) = rows_with_env(
        &(cars_table("", ", event_time_field = 'timestamp'") + windowed),
        &[],
    );
    assert!(!stderr.contains("warning:"), "{stderr}");
    // No window, no warning.
    let (_, stderr) = rows_with_env(&(cars_table("", "") + "SELECT driver_id FROM cars;"), &[]);
    assert!(!stderr.contains("warning:"), "{stderr}");
}

#[test]
fn validate_shows_warnings_and_refuses_with_positions() {
    let d = harness::TestDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, sql: String| {
        let file = dir.path().join(name);
        std::fs::write(&file, sql).unwrap();
        let out = d.ctl(&["validate", file.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(
        "warn.sql",
        cars_table("", "") + "SELECT count(*) AS n FROM cars GROUP BY tumble(interval '1 hour');",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warn.sql:3:1: warning: windows over 'cars' run on processing time"),
        "{stderr}"
    );
    let out = dir.path().join("out");
    for (sql, message) in [
        (
            format!(
                "CREATE TABLE out (driver_id BIGINT) WITH (connector = 'filesystem', type = 'sink', path = '{}', format = 'json', partition_fields = 'nope');
                 INSERT INTO out SELECT driver_id FROM cars;",
                out.display()
            ),
            "partitioned by 'nope'",
        ),
        (
            "CREATE TABLE out WITH (connector = 'stdout', format = 'raw_string');
             INSERT INTO out SELECT driver_id, event_type FROM cars;"
                .to_string(),
            "format 'raw_string', which writes one text column",
        ),
        (
            "SELECT apporx_median(driver_id) FROM cars;".to_string(),
            "did you mean 'approx_median'",
        ),
    ] {
        let (code, stderr) = check("bad.sql", cars_table("", "") + &sql);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("bad.sql:") && stderr.contains(message), "{stderr}");
    }
}
