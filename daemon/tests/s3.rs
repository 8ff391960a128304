//! Object storage for real: the `filesystem` connector writes to and reads from a loopback
//! S3-compatible server (moto), through `arroyod run`.

mod harness;

use harness::S3Server;

fn run(sql: &str) -> Vec<serde_json::Value> {
    harness::query_rows(1, sql)
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
