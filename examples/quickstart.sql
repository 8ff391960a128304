-- Quick start: an impulse source counts up at 100 rows per second; the bare SELECT prints the
-- even counters to stdout as JSON lines. The source is bounded (message_count), so the run ends
-- on its own after about two seconds. Run it with:
--   cargo run --release -p arroyod -- run examples/quickstart.sql
CREATE TABLE impulse WITH (
    connector = 'impulse',
    event_rate = '100',
    message_count = '200'
);

SELECT counter, counter * counter AS square
FROM impulse
WHERE counter % 2 = 0;
