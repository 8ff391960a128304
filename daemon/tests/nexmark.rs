//! The `nexmark` source through `arroyod run`: a bounded, reproducible run gives the same rows
//! at any parallelism.

mod harness;

use harness::run_query;

/// 20,000 events (1s at 20,000/s) from a fixed first event time: 400 epochs of 50 events, of
/// which 46 are bids.
const BIDS: &str = "CREATE TABLE nexmark WITH (connector = 'nexmark', event_rate = '20000', \
    runtime = '1', first_event_time = '2024-01-01T00:00:00Z'); \
    SELECT bid.auction, bid.bidder, bid.price, bid.channel, bid.url, bid.datetime, bid.extra \
    FROM nexmark WHERE bid IS NOT NULL;";

/// The rows printed by a run at `parallelism`, sorted.
fn sorted_rows(parallelism: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = run_query(
        &["-p", parallelism, "-s", state.to_str().unwrap(), "-"],
        BIDS,
    );
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

#[test]
fn bounded_nexmark_gives_the_same_bids_at_any_parallelism() {
    let one = sorted_rows("1");
    assert_eq!(one.len(), 18_400);
    for line in &one {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = v.as_object().unwrap();
        assert_eq!(row.len(), 7, "{line}");
        let id = |field: &str| {
            row.iter()
                .find(|(k, _)| k.contains(&format!("[{field}]")))
                .and_then(|(_, v)| v.as_i64())
                .unwrap_or_else(|| panic!("no {field} in {line}"))
        };
        // Ids count from 1000: 20,000 events make 1,200 auctions and 400 people, and a random
        // id may run up to 10 ahead of the newest.
        assert!((1000..2210).contains(&id("auction")), "{line}");
        assert!((1000..1410).contains(&id("bidder")), "{line}");
    }
    assert_eq!(sorted_rows("2"), one);
}
