//! Partitioned output of the filesystem sink through `arroyod run`: `partitioning.fields` /
//! `partition_fields` / `PARTITIONED BY` make `field=value/` directories and
//! `time_partition_pattern` strftime directories of the event time, in JSON and Parquet;
//! every row is in the directory of its own values, once, also after a stop and a restore at
//! another parallelism; and `raw_string` line sinks.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::path_str;

/// Rows of the input: one every 10 s from 2024-01-01T00:00:00, three hours and more.
const ROWS: usize = 1200;
const KEYS: [&str; 3] = ["a", "b", "x/y"];

/// The input: `n` (0..ROWS), `k`, `ts`.
fn write_input(dir: &Path) -> PathBuf {
    let path = dir.join("in.json");
    let mut text = String::new();
    for n in 0..ROWS {
        let secs = n * 10;
        let ts = format!(
            "2024-01-01T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        text.push_str(
            &serde_json::json!({"n": n, "k": KEYS[n * 7 % 3], "ts": ts, "pad": "x".repeat(n % 17)})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn source(input: &Path) -> String {
    format!(
        "CREATE TABLE src (n BIGINT, k TEXT, ts TIMESTAMP NOT NULL, pad TEXT)
           WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source',
                 event_time_field = 'ts');\n",
        input.display()
    )
}

/// The directory a row of `n` must be in with the pattern `%Y/%m/%d/%H` and field `k`.
fn expected_dir(n: usize) -> String {
    let hour = n * 10 / 3600;
    // The object-store path encodes the `/` of a value, so it stays one directory.
    let k = KEYS[n * 7 % 3].replace('/', "%2F");
    format!("2024/01/01/{hour:02}/k={k}")
}

/// Reads the JSON part files under `out`: checks that each row is in its directory and that
/// every row is there once.
fn check_json_files(out: &Path) {
    let names = harness::files_under(out, false);
    assert!(!names.is_empty(), "no file under {}", out.display());
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for name in &names {
        let dir = name.parent().unwrap().to_str().unwrap().to_string();
        for line in std::fs::read_to_string(out.join(name)).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let n = row["n"].as_u64().unwrap() as usize;
            assert_eq!(dir, expected_dir(n), "row {n} in {}", name.display());
            // The partition column stays in the rows.
            assert_eq!(row["k"], KEYS[n * 7 % 3]);
            *seen.entry(n).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "rows written twice: {twice:?}");
    assert_eq!(seen.len(), ROWS, "rows missing");
}

/// The directories under `out` that hold files.
fn directories(out: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = harness::files_under(out, false)
        .iter()
        .map(|f| f.parent().unwrap().to_str().unwrap().to_string())
        .collect();
    dirs.dedup();
    dirs
}

fn sink(out: &Path, format: &str, options: &str, partitioned_by: &str) -> String {
    format!(
        "CREATE TABLE out (n BIGINT, k TEXT, pad TEXT)
           WITH (connector = 'filesystem', type = 'sink', path = '{}', format = '{format}'{options})
           {partitioned_by};\n",
        out.display()
    )
}

const INSERT: &str = "INSERT INTO out SELECT n, k, pad FROM src;";

#[test]
fn json_files_go_to_the_directories_of_their_fields_and_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    for (p, spelling) in [
        (
            1,
            ", partition_fields = 'k', time_partition_pattern = '%Y/%m/%d/%H'",
        ),
        (
            3,
            ", 'partitioning.fields' = 'k', 'partitioning.time_pattern' = '%Y/%m/%d/%H'",
        ),
    ] {
        let out = dir.path().join(format!("out-p{p}"));
        let sql = source(&input) + &sink(&out, "json", spelling, "") + INSERT;
        let rows = harness::query_rows(p, &sql);
        assert!(rows.is_empty());
        check_json_files(&out);
        // 4 hours (the last one partly) of 3 keys.
        assert_eq!(directories(&out).len(), 12, "{:?}", directories(&out));
    }
}

#[test]
fn partitioned_by_names_the_fields_and_parquet_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out");
    let sql = source(&input)
        + &sink(
            &out,
            "parquet",
            ", time_partition_pattern = '%Y/%m/%d/%H'",
            "PARTITIONED BY (k)",
        )
        + INSERT;
    assert!(harness::query_rows(2, &sql).is_empty());
    let mut dirs = directories(&out);
    dirs.sort();
    let mut want: Vec<String> = (0..ROWS).map(expected_dir).collect();
    want.sort();
    want.dedup();
    assert_eq!(dirs, want);
    for f in harness::files_under(&out, false) {
        assert!(f.to_str().unwrap().ends_with(".parquet"), "{}", f.display());
    }
    // Read back by the filesystem source, which lists the directories below its path.
    let read = harness::query_rows(
        1,
        &format!(
            "CREATE TABLE back (n BIGINT, k TEXT) WITH (connector = 'filesystem', type = 'source',
               path = '{}', format = 'parquet');
             SELECT n, k FROM back;",
            out.display()
        ),
    );
    let mut ns: Vec<u64> = read.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..ROWS as u64).collect::<Vec<_>>());
    for r in &read {
        let n = r["n"].as_u64().unwrap() as usize;
        assert_eq!(r["k"], KEYS[n * 7 % 3]);
    }
}

#[test]
fn partitioned_output_is_exactly_once_across_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out");
    let query = dir.path().join("q.sql");
    let sql = source(&input)
        + &sink(
            &out,
            "json",
            ", partition_fields = 'k', time_partition_pattern = '%Y/%m/%d/%H'",
            "",
        )
        + INSERT;
    std::fs::write(&query, sql).unwrap();
    harness::run_stopped_and_restored(&query, &dir.path().join("state"), (3, 2), ROWS / 30, 2);
    check_json_files(&out);
}

#[test]
fn partitioning_errors_name_the_column_or_the_clause() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out");
    let cases = [
        (
            sink(&out, "json", ", partition_fields = 'nope'", ""),
            "partitioned by 'nope', which is not one of the columns written (n, k, pad)",
        ),
        (
            sink(&out, "json", ", time_partition_pattern = '%Q'", ""),
            "not a valid strftime pattern",
        ),
        (
            sink(
                &out,
                "json",
                ", partition_fields = 'k'",
                "PARTITIONED BY (k)",
            ),
            "give either PARTITIONED BY or 'partition_fields', not both",
        ),
        (
            sink(&out, "json", "", "PARTITIONED BY (bucket(k, 4))"),
            "PARTITIONED BY takes column names",
        ),
        (
            format!(
                "CREATE TABLE out (n BIGINT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'sink') PARTITIONED BY (n);\n",
                out.display()
            ),
            "PARTITIONED BY is only supported on filesystem sink tables",
        ),
    ];
    for (table, message) in cases {
        let sql = source(&input) + &table + INSERT;
        let err = harness::query_refused(&sql);
        assert!(err.contains(message), "want {message:?} in: {err}");
    }
}

#[test]
fn raw_string_sinks_write_one_column_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("raw.txt");
    let sql = source(&input)
        + &format!(
            "CREATE TABLE out WITH (connector = 'single_file', path = '{}', format = 'raw_string', type = 'sink');
             INSERT INTO out SELECT n, concat(k, ':', CAST(n AS TEXT)) AS value FROM src WHERE n < 5;",
            out.display()
        );
    assert!(harness::query_rows(1, &sql).is_empty());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "a:0\nb:1\nx/y:2\na:3\nb:4\n"
    );
    // A single column needs no name; stdout too.
    let sql = source(&input)
        + "CREATE TABLE out WITH (connector = 'stdout', format = 'raw_string');
           INSERT INTO out SELECT k FROM src WHERE n < 3;";
    let printed = harness::run_query(&["-s", path_str(&dir.path().join("s")), "-"], &sql);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&printed.stdout), "a\nb\nx/y\n");
    // Two columns, none of them `value`; or a column that is not text.
    for (select, message) in [("n, k", "name it `value`"), ("n AS value", "cast it")] {
        let sql = source(&input)
            + &format!(
                "CREATE TABLE out WITH (connector = 'single_file', path = '{}', format = 'raw_string', type = 'sink');
                 INSERT INTO out SELECT {select} FROM src;",
                out.display()
            );
        let err = harness::query_refused(&sql);
        assert!(err.contains(message), "want {message:?} in: {err}");
    }
}
