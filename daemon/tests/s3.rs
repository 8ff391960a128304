//! Object storage for real: the `filesystem` connector writes to and reads from a loopback
//! S3-compatible server (moto), through `arroyod run`.

mod harness;

use harness::{S3Server, path_str, run_query};

fn run(sql: &str) -> Vec<serde_json::Value> {
    let state = tempfile::tempdir().unwrap();
    let out = run_query(&["-s", path_str(&state.path().join("s")), "-"], sql);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn filesystem_round_trips_through_s3_in_json_and_parquet() {
    let s3 = S3Server::start();
    s3.create_bucket("arroyod-test");
    for format in ["json", "parquet"] {
        let url = format!("s3://arroyod-test/out-{format}");
        let options = s3.storage_options();
        run(&format!(
            "CREATE TABLE impulse WITH (connector='impulse', event_rate='100000', message_count='500');
             CREATE TABLE out (counter BIGINT) WITH (connector = 'filesystem', type = 'sink', path = '{url}', format = '{format}', {options});
             INSERT INTO out SELECT counter FROM impulse;"
        ));
        let rows = run(&format!(
            "CREATE TABLE back (counter BIGINT) WITH (connector = 'filesystem', type = 'source', path = '{url}', format = '{format}', {options});
             SELECT counter FROM back;"
        ));
        let mut counters: Vec<i64> = rows
            .iter()
            .map(|r| r["counter"].as_i64().unwrap())
            .collect();
        counters.sort();
        assert_eq!(counters, (0..500).collect::<Vec<_>>(), "{format}");
    }
}
