//! The `filesystem` connector end to end through `arroyod run`: an impulse written as JSON
//! lines or Parquet part files under a temp dir, then read back by a filesystem source; every
//! counter must come back exactly once, at parallelism 1 and 2.

mod harness;

use std::collections::BTreeMap;

use harness::path_str;

const COUNT: u64 = 1000;

fn impulse() -> String {
    format!(
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='{COUNT}');\n"
    )
}

/// Runs `sql` at parallelism `p`; returns stdout's rows, or panics with stderr.
fn run(p: usize, sql: &str) -> Vec<serde_json::Value> {
    harness::query_rows(p, sql)
}

/// Runs `sql`, which must be refused; returns stderr.
fn refused(sql: &str) -> String {
    harness::query_refused(sql)
}

/// Asserts that `rows` hold every counter below [`COUNT`] exactly once.
fn assert_every_counter_once(rows: &[serde_json::Value]) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in rows {
        *seen.entry(r["counter"].as_u64().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "counters read more than once: {twice:?}");
    assert_eq!(seen.len() as u64, COUNT, "missing counters");
    assert_eq!(seen.keys().last(), Some(&(COUNT - 1)));
}

/// Writes the impulse as `format` files with `sink_options` at `p`, reads them back at `p` and
/// checks them; returns the files' names and sizes.
fn round_trip(p: usize, format: &str, sink_options: &str) -> Vec<(String, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let path = path_str(&out);
    let written = run(
        p,
        &format!(
            "{}CREATE TABLE sink (counter BIGINT, subtask_index BIGINT, timestamp TIMESTAMP)
               WITH (connector='filesystem', type='sink', path='{path}', format='{format}'{sink_options});
             INSERT INTO sink SELECT counter, subtask_index, timestamp FROM impulse;",
            impulse()
        ),
    );
    assert!(written.is_empty(), "an INSERT prints nothing: {written:?}");
    let names = harness::files_under(&out, true);
    assert!(!names.is_empty(), "no file written under {path}");
    for name in &names {
        let n = name.to_str().unwrap();
        assert!(n.ends_with(&format!(".{format}")), "{n}");
        assert!(!n.contains('#'), "an unfinished upload was left: {n}");
    }
    let rows = run(
        p,
        &format!(
            "CREATE TABLE source (counter BIGINT, timestamp TIMESTAMP)
               WITH (connector='filesystem', type='source', path='{path}', format='{format}',
                     event_time_field='timestamp');
             SELECT counter, timestamp FROM source;"
        ),
    );
    assert_every_counter_once(&rows);
    assert!(
        rows.iter().all(|r| r["timestamp"].is_string()),
        "{:?}",
        rows[0]
    );
    names
        .iter()
        .map(|n| {
            let size = std::fs::metadata(out.join(n)).unwrap().len();
            (n.to_str().unwrap().to_string(), size)
        })
        .collect()
}

#[test]
fn json_round_trip() {
    round_trip(1, "json", "");
}

#[test]
fn parquet_round_trip() {
    round_trip(1, "parquet", "");
}

#[test]
fn json_round_trip_at_parallelism_2() {
    let names = round_trip(2, "json", "");
    // One file per writing subtask.
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn parquet_round_trip_at_parallelism_2() {
    round_trip(2, "parquet", "");
}

#[test]
fn rolled_files_are_read_once_each_across_subtasks() {
    // About 80 bytes a row: files of 4 KiB or a little more (a file rolls after the batch
    // that fills it), the last of each subtask smaller.
    let files = round_trip(
        2,
        "json",
        ", 'rolling_policy.file_size' = '4kb', 'filename.strategy' = 'serial'",
    );
    let mut by_subtask: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (name, size) in &files {
        // <file index:05>-<subtask:03>.json
        let subtask = name[6..9].to_string();
        by_subtask
            .entry(subtask)
            .or_default()
            .push((name.clone(), *size));
    }
    assert_eq!(by_subtask.len(), 2, "{files:?}");
    for files in by_subtask.values_mut() {
        files.sort();
        files.pop();
        for (name, size) in files {
            assert!(*size >= 4096, "{name} rolled at {size} bytes");
        }
    }
    round_trip(
        2,
        "parquet",
        ", target_file_size = '2048', 'parquet.compression' = 'snappy'",
    );
}

#[test]
fn serial_names_with_a_prefix() {
    let names = round_trip(
        2,
        "json",
        ", 'filename.strategy' = 'serial', 'filename.prefix' = 'part'",
    );
    let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["part-00000-000.json", "part-00000-001.json"]);
}

#[test]
fn a_regex_picks_the_files_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_str(dir.path());
    std::fs::write(dir.path().join("a.json"), "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.json"), "{\"n\": 3}\n").unwrap();
    std::fs::write(dir.path().join("c.txt"), "not json\n").unwrap();
    std::fs::write(dir.path().join(".hidden.json"), "{\"n\": 100}\n").unwrap();
    std::fs::create_dir(dir.path().join("_staging")).unwrap();
    std::fs::write(dir.path().join("_staging/d.json"), "{\"n\": 200}\n").unwrap();
    let rows = run(
        1,
        &format!(
            "CREATE TABLE source (n BIGINT)
               WITH (connector='filesystem', type='source', path='file://{path}', format='json',
                     'source.regex_pattern' = '\\.json$');
             SELECT n FROM source;"
        ),
    );
    let mut n: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    n.sort();
    assert_eq!(n, [1, 2, 3]);
}

#[test]
fn bad_lines_fail_naming_the_file_or_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_str(dir.path());
    std::fs::write(
        dir.path().join("a.json"),
        "{\"n\": 1}\n{\"n\": \n{\"n\": 3}\n",
    )
    .unwrap();
    let table = |extra: &str| {
        format!(
            "CREATE TABLE source (n BIGINT)
               WITH (connector='filesystem', type='source', path='{path}', format='json'{extra});
             SELECT n FROM source;"
        )
    };
    let err = refused(&table(""));
    assert!(err.contains("a.json") && err.contains("line 2"), "{err}");
    let rows = run(1, &table(", bad_data = 'drop'"));
    assert_eq!(rows.len(), 2, "{rows:?}");
}

#[test]
fn updating_results_are_refused_at_planning() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused(&format!(
        "{}CREATE TABLE sink (n BIGINT)
           WITH (connector='filesystem', type='sink', path='{}', format='json');
         INSERT INTO sink SELECT count(*) FROM impulse;",
        impulse(),
        path_str(dir.path())
    ));
    assert!(err.contains("retractions"), "{err}");
    assert!(harness::files_under(dir.path(), true).is_empty());
}

#[test]
fn option_errors_name_the_option() {
    let err = refused(
        "CREATE TABLE sink WITH (connector='filesystem', type='sink', path='/tmp/x', format='csv');",
    );
    assert!(err.contains("'format'"), "{err}");
    let err = refused(
        "CREATE TABLE sink WITH (connector='filesystem', type='sink', path='/tmp/x', format='json', 'rolling_policy.file_size'='big');",
    );
    assert!(err.contains("rolling_policy.file_size"), "{err}");
}

/// JSON lines `{"n": from..to}` with an event time.
fn numbered_lines(from: u64, to: u64) -> String {
    (from..to)
        .map(|n| {
            format!(
                "{{\"n\": {n}, \"ts\": \"2024-01-01T00:{:02}:{:02}\"}}\n",
                n / 60 % 60,
                n % 60
            )
        })
        .collect()
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Every `n` read from the rows, sorted.
fn sorted_n(rows: &[serde_json::Value]) -> Vec<u64> {
    let mut n: Vec<u64> = rows.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    n.sort();
    n
}

#[test]
fn gzip_and_zstd_json_files_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("gz");
    let zst = dir.path().join("zst");
    std::fs::create_dir_all(&gz).unwrap();
    std::fs::create_dir_all(&zst).unwrap();
    // Two gzip members in one file (`cat a.gz b.gz`), and a second file.
    let members = [
        gzip(&numbered_lines(0, 500)),
        gzip(&numbered_lines(500, 1000)),
    ]
    .concat();
    std::fs::write(gz.join("a.json.gz"), members).unwrap();
    std::fs::write(gz.join("b.json.gz"), gzip(&numbered_lines(1000, 1200))).unwrap();
    let text = numbered_lines(0, 1200);
    std::fs::write(
        zst.join("a.json.zst"),
        zstd::encode_all(text.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    for (p, path, option) in [
        (1, &gz, "compression_format = 'gzip'"),
        (2, &zst, "'source.compression' = 'zstd'"),
    ] {
        let rows = run(
            p,
            &format!(
                "CREATE TABLE src (n BIGINT, ts TIMESTAMP) WITH (connector = 'filesystem',
                   type = 'source', path = '{}', format = 'json', {option});
                 SELECT n FROM src;",
                path_str(path)
            ),
        );
        assert_eq!(sorted_n(&rows), (0..1200).collect::<Vec<_>>(), "{option}");
    }
    // Compressed input is JSON's: Parquet compresses its own pages.
    let err = refused(&format!(
        "CREATE TABLE src (n BIGINT) WITH (connector = 'filesystem', type = 'source', path = '{}',
           format = 'parquet', compression_format = 'gzip');
         SELECT n FROM src;",
        path_str(&gz)
    ));
    assert!(err.contains("for format = 'json'"), "{err}");
    let err = refused(&format!(
        "CREATE TABLE src (n BIGINT) WITH (connector = 'filesystem', type = 'source', path = '{}',
           format = 'json', compression_format = 'bz2');
         SELECT n FROM src;",
        path_str(&gz)
    ));
    assert!(err.contains("expected 'none', 'gzip' or 'zstd'"), "{err}");
}

#[test]
fn a_gzip_file_resumes_in_its_decompressed_text_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.json.gz"), gzip(&numbered_lines(0, 3000))).unwrap();
    let out = dir.path().join("out.json");
    let query = dir.path().join("q.sql");
    std::fs::write(
        &query,
        format!(
            "CREATE TABLE src (n BIGINT, ts TIMESTAMP) WITH (connector = 'filesystem', type = 'source',
               path = '{}', format = 'json', compression_format = 'gzip');
             CREATE TABLE out (n BIGINT) WITH (connector = 'single_file', path = '{}', format = 'json', type = 'sink');
             INSERT INTO out SELECT n FROM src;",
            path_str(&input),
            path_str(&out)
        ),
    )
    .unwrap();
    harness::run_stopped_and_restored(&query, &dir.path().join("state"), (1, 2), 100, 3);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sorted_n(&rows), (0..3000).collect::<Vec<_>>());
}
