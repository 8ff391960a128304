//! `nexmark`: the Nexmark benchmark's stream of an online auction site (people registering,
//! auctions opening, bids), as Arroyo's `nexmark` connector offers it.
//!
//! Options: `event_rate` (events per second over all subtasks, required), `runtime` (the source
//! emits `floor(event_rate * runtime)` events, so it runs for about that long, then finishes;
//! seconds, or a duration such as `'30s'`; unbounded when absent), `first_event_time` (ours,
//! for reproducible runs: the event time of event 0, as RFC 3339 or epoch milliseconds; the
//! wall clock at start when absent).
//!
//! The table's columns are fixed: `person`, `auction` and `bid`, nullable structs of which
//! exactly one is set per row. Event `n` is a pure function of `n` and the first event time:
//!
//! 1. its kind comes from `n % 50` (1 person, then 3 auctions, then 46 bids);
//! 2. its event time (`datetime`, and the hidden `_timestamp`) is
//!    `first_event_time + n * round(1s / event_rate)`;
//! 3. its ids follow Nexmark: people and auctions are numbered from 1000 in event order, and
//!    bids and new auctions mostly refer to recent ("hot") auctions and people;
//! 4. its other fields come from a random generator seeded with `n` and the first event time.
//!
//! Subtask `i` of `p` emits the events with `n % p == i`, so every parallelism emits the same
//! rows, and two runs with the same `first_event_time` emit identical rows. Unlike Nexmark's
//! reference generator, events leave in event-time order (no out-of-order groups of 50), so the
//! watermark, one second behind the newest event time, never makes a row late.
//!
//! Rows are written straight into one Arrow builder per struct field (no allocation per row),
//! and only the struct columns the query reads are generated.

mod columns;
mod model;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, TimestampNanosecondArray};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::time::Instant;

use super::counters::CounterState;
use super::{ConnectorError, Options, now_nanos, parse_duration};
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
    timestamp_type, with_timestamp,
};
use columns::{AuctionColumns, BidColumns, PersonColumns};
use model::{Generator, Kind, Rng, kind};

/// Most rows in one batch.
const BATCH_ROWS: u64 = 8192;
/// How far the watermark trails the newest event time.
const WATERMARK_DELAY: i64 = 1_000_000_000;
/// Shortest pause between two batches once the source has caught up with its rate, so that
/// slow rates still make batches of several rows.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    /// Nanoseconds between two events' event times (and their due times).
    delay: i64,
    /// Total events over all subtasks (None: unbounded).
    events: Option<u64>,
    /// Event time of event 0, nanoseconds since the epoch (None: the wall clock at start).
    first_event_time: Option<i64>,
}

impl NexmarkConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let event_rate = options.require_rate("nexmark", "events", 1e9)?;
        let events = options
            .take("runtime")
            .map(|v| {
                parse_duration(&v)
                    // The nudge keeps 1.003s at 1000/s from flooring to 1002 events.
                    .map(|d| (d.as_secs_f64() * event_rate + 1e-6).floor() as u64)
                    .map_err(|e| ConnectorError::InvalidOption {
                        option: "runtime".into(),
                        value: v.clone(),
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        let first_event_time = options
            .take("first_event_time")
            .map(|v| {
                parse_time(&v).ok_or_else(|| ConnectorError::InvalidOption {
                    option: "first_event_time".into(),
                    value: v.clone(),
                    reason: "expected an RFC 3339 timestamp such as '2024-01-01T00:00:00Z' \
                             or milliseconds since the epoch"
                        .into(),
                })
            })
            .transpose()?;
        Ok(NexmarkConfig {
            delay: ((1e9 / event_rate).round() as i64).max(1),
            events,
            first_event_time,
        })
    }
}

/// Parses epoch milliseconds or an RFC 3339 timestamp into nanoseconds since the epoch.
fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    match text.parse::<i64>() {
        Ok(millis) => millis.checked_mul(1_000_000),
        Err(_) => string_to_timestamp_nanos(text).ok(),
    }
}

fn person_fields() -> Fields {
    let ts = timestamp_type();
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("datetime", ts, false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

fn auction_fields() -> Fields {
    let ts = timestamp_type();
    Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("datetime", ts.clone(), false),
        Field::new("expires", ts, false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

fn bid_fields() -> Fields {
    Fields::from(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("datetime", timestamp_type(), false),
        Field::new("extra", DataType::Utf8, false),
    ])
}

/// The nexmark table's columns: one nullable struct per kind of event.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("person", DataType::Struct(person_fields()), true),
        Field::new("auction", DataType::Struct(auction_fields()), true),
        Field::new("bid", DataType::Struct(bid_fields()), true),
    ]))
}

pub struct NexmarkFactory {
    config: NexmarkConfig,
    /// Column indices to emit, then the event time.
    projection: Vec<usize>,
    schema: SchemaRef,
    /// The first event time of a run without `first_event_time`, shared by its subtasks.
    wall_start: OnceLock<i64>,
}

impl NexmarkFactory {
    pub fn new(config: NexmarkConfig, projection: Option<Vec<usize>>) -> Self {
        let full = schema();
        let projection = projection.unwrap_or_else(|| (0..full.fields().len()).collect());
        let visible = full
            .project(&projection)
            .expect("projection within the nexmark schema");
        NexmarkFactory {
            config,
            projection,
            schema: with_timestamp(&visible),
            wall_start: OnceLock::new(),
        }
    }
}

impl SourceFactory for NexmarkFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        let first_time = self
            .config
            .first_event_time
            .unwrap_or_else(|| *self.wall_start.get_or_init(now_nanos));
        Ok(Box::new(Nexmark::new(
            &self.config,
            first_time,
            self.projection.clone(),
            self.schema.clone(),
            info.subtask as u64,
            info.parallelism as u64,
        )))
    }
}

struct Nexmark {
    generator: Generator,
    /// Events this subtask emits in total (None: unbounded).
    total: Option<u64>,
    /// Table columns to emit (0 person, 1 auction, 2 bid), then the event time.
    projection: Vec<usize>,
    schema: SchemaRef,
    fields: [Fields; 3],
    /// Where it is: its next event is `event_number(pos.next)`.
    pos: CounterState,
}

impl Nexmark {
    fn new(
        config: &NexmarkConfig,
        first_time: i64,
        projection: Vec<usize>,
        schema: SchemaRef,
        subtask: u64,
        parallelism: u64,
    ) -> Self {
        Nexmark {
            generator: Generator::new(first_time, config.delay),
            total: config
                .events
                .map(|total| total / parallelism + u64::from(total % parallelism > subtask)),
            projection,
            schema,
            fields: [person_fields(), auction_fields(), bid_fields()],
            pos: CounterState::new(subtask, parallelism, Some(first_time)),
        }
    }

    /// The global number of this subtask's `k`-th event.
    fn event_number(&self, k: u64) -> u64 {
        self.pos.counter(k)
    }

    /// How many of this subtask's events are due `elapsed` after the start (event `n` is due
    /// at `n * delay`).
    fn due(&self, elapsed: Duration) -> u64 {
        let all = (elapsed.as_nanos() / self.generator.delay as u128) as u64 + 1;
        all / self.pos.parallelism + u64::from(all % self.pos.parallelism > self.pos.subtask)
    }

    /// This subtask's events `first..first + rows`, as a batch of the projected columns and
    /// the event time.
    fn batch(&self, first: u64, rows: u64) -> Result<RecordBatch, ArrowError> {
        let want = |column: usize| self.projection.contains(&column);
        let size = rows as usize;
        let mut people = want(0).then(|| PersonColumns::new(size));
        let mut auctions = want(1).then(|| AuctionColumns::new(size));
        let mut bids = want(2).then(|| BidColumns::new(size));
        let mut event_times = Vec::with_capacity(size);
        let g = &self.generator;
        for k in first..first + rows {
            let n = self.event_number(k);
            if self.pos.emitted_before(n) {
                continue;
            }
            let time = g.time(n);
            event_times.push(time);
            let mut rng = Rng::new(g.seed, n);
            let kind = kind(n);
            if let Some(c) = &mut people {
                match kind {
                    Kind::Person => c.push(n, time, &mut rng),
                    _ => c.push_null(),
                }
            }
            if let Some(c) = &mut auctions {
                match kind {
                    Kind::Auction => c.push(g, n, time, &mut rng),
                    _ => c.push_null(),
                }
            }
            if let Some(c) = &mut bids {
                match kind {
                    Kind::Bid => c.push(g, n, time, &mut rng),
                    _ => c.push_null(),
                }
            }
        }
        let mut all: [Option<ArrayRef>; 3] = [
            people.map(|c| c.finish(&self.fields[0])).transpose()?,
            auctions.map(|c| c.finish(&self.fields[1])).transpose()?,
            bids.map(|c| c.finish(&self.fields[2])).transpose()?,
        ];
        let mut columns: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|&i| all[i].take().expect("every projected column was generated"))
            .collect();
        columns.push(Arc::new(TimestampNanosecondArray::from(event_times)));
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[async_trait]
impl Source for Nexmark {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        let start = Instant::now();
        // Event numbers restart their schedule at a restore: the rate holds from now on.
        let skipped = self.pos.next;
        let mut last_batch: Option<Instant> = None;
        loop {
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            if let Some(end) = ctx.checkpoint_if_due(|| self.snapshot()).await? {
                return Ok(end);
            }
            if self.total.is_some_and(|t| self.pos.next >= t) {
                return Ok(SourceEnd::Finished);
            }
            let produced = self.pos.next - skipped;
            let mut rows = self
                .due(start.elapsed())
                .saturating_sub(produced)
                .min(BATCH_ROWS);
            if let Some(t) = self.total {
                rows = rows.min(t - self.pos.next);
            }
            if rows == 0 {
                let next_due = self.event_number(produced) as u128 * self.generator.delay as u128;
                let mut next = start + Duration::from_nanos(next_due.min(u64::MAX as u128) as u64);
                if let Some(last) = last_batch {
                    next = next.max(last + MIN_BATCH_INTERVAL);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = ctx.stopped() => {}
                }
                continue;
            }
            let batch = self
                .batch(self.pos.next, rows)
                .map_err(TaskError::batch(&ctx.info().node))?;
            self.pos.next += rows;
            let newest = self.generator.time(self.event_number(self.pos.next - 1));
            last_batch = Some(Instant::now());
            if batch.num_rows() > 0 {
                ctx.collect(batch).await?;
            }
            ctx.watermark(newest - WATERMARK_DELAY).await?;
        }
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        self.pos.snapshot()
    }

    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if let Some(pos) = CounterState::restore(state, self.pos.subtask, self.pos.parallelism)? {
            if let Some(first_time) = pos.start_time {
                self.generator = Generator::new(first_time, self.generator.delay);
            }
            self.pos = pos;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
    use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};

    use super::model::*;
    use super::*;
    use crate::connector::{ConnectorConfig, ConnectorTable};

    const JAN_2024: i64 = 1_704_067_200_000_000_000;

    fn options(entries: &[(&str, &str)]) -> Options {
        Options::new(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn config(rate: &str, runtime: &str) -> NexmarkConfig {
        NexmarkConfig::from_options(&mut options(&[
            ("event_rate", rate),
            ("runtime", runtime),
            ("first_event_time", "2024-01-01T00:00:00Z"),
        ]))
        .unwrap()
    }

    fn source(config: &NexmarkConfig, subtask: u64, parallelism: u64) -> Nexmark {
        Nexmark::new(
            config,
            config.first_event_time.unwrap(),
            vec![0, 1, 2],
            with_timestamp(&schema()),
            subtask,
            parallelism,
        )
    }

    /// Every row this subtask emits, in one batch.
    fn all_rows(config: &NexmarkConfig, subtask: u64, parallelism: u64) -> RecordBatch {
        let s = source(config, subtask, parallelism);
        s.batch(0, s.total.unwrap()).unwrap()
    }

    fn event_times(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(3)
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .to_vec()
    }

    fn sorted_by_time(batch: &RecordBatch) -> RecordBatch {
        let order = sort_to_indices(batch.column(3), None, None).unwrap();
        take_record_batch(batch, &order).unwrap()
    }

    #[test]
    fn options_parse_and_unknown_ones_are_reported() {
        let c = config("1000", "2.5");
        assert_eq!(c.events, Some(2500));
        assert_eq!(c.delay, 1_000_000);
        assert_eq!(c.first_event_time, Some(JAN_2024));
        let millis = NexmarkConfig::from_options(&mut options(&[
            ("event_rate", "10"),
            ("first_event_time", "1704067200000"),
        ]))
        .unwrap();
        assert_eq!(millis.first_event_time, Some(JAN_2024));
        assert_eq!(millis.events, None);
        assert_eq!(config("100", "1 minute").events, Some(6000));

        let missing = NexmarkConfig::from_options(&mut options(&[("runtime", "1")]));
        assert!(matches!(missing, Err(ConnectorError::MissingOption { .. })));
        for (key, value) in [
            ("event_rate", "0"),
            ("runtime", "soon"),
            ("first_event_time", "yesterday"),
        ] {
            let rate = if key == "event_rate" { value } else { "10" };
            let mut o = options(&[("event_rate", rate), (key, value)]);
            let err = NexmarkConfig::from_options(&mut o).unwrap_err();
            assert!(
                matches!(&err, ConnectorError::InvalidOption { option, .. } if option == key),
                "{err}"
            );
        }

        let mut o = options(&[("event_rate", "10"), ("message_count", "5")]);
        let err = ConnectorTable::new("n", "nexmark", None, &mut o).unwrap_err();
        assert_eq!(
            err,
            ConnectorError::UnknownOption {
                connector: "nexmark".into(),
                option: "message_count".into(),
                suggestion: None,
            }
        );
        let mut o = options(&[("event_rate", "10")]);
        let table = ConnectorTable::new("n", "nexmark", None, &mut o).unwrap();
        assert!(matches!(table.config, ConnectorConfig::Nexmark(_)));
        assert_eq!(table.schema, schema());
    }

    #[test]
    fn subtasks_split_the_events_exactly() {
        let c = config("1000", "1.003");
        let mut seen = Vec::new();
        for i in 0..4 {
            let b = all_rows(&c, i, 4);
            for (row, t) in event_times(&b).into_iter().enumerate() {
                let n = ((t - JAN_2024) / 1_000_000) as u64;
                assert_eq!(n % 4, i);
                let set = (0..3).filter(|&col| b.column(col).is_valid(row)).count();
                assert_eq!(set, 1, "row {row} of subtask {i}");
                seen.push(n);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..1003).collect::<Vec<u64>>());
    }

    /// Event numbers of the rows of `b` (event `n` is at `n` ms with 1000 events per second).
    fn numbers(b: &RecordBatch) -> Vec<u64> {
        event_times(b)
            .into_iter()
            .map(|t| ((t - JAN_2024) / 1_000_000) as u64)
            .collect()
    }

    /// Emits up to `rows` more of the subtask's events, as its run loop does.
    fn emit(s: &mut Nexmark, rows: u64) -> Vec<u64> {
        let rows = rows.min(s.total.unwrap() - s.pos.next);
        let b = s.batch(s.pos.next, rows).unwrap();
        s.pos.next += rows;
        numbers(&b)
    }

    #[test]
    fn a_restore_at_another_parallelism_emits_every_event_once() {
        let c = config("1000", "1");
        let restored = |subtasks: &[Nexmark]| RestoredState {
            parallelism: subtasks.len(),
            subtasks: subtasks.iter().map(|s| s.snapshot().unwrap()).collect(),
            watermark: None,
            epoch: 1,
        };
        let mut seen = Vec::new();
        let mut old: Vec<Nexmark> = (0..3).map(|i| source(&c, i, 3)).collect();
        for (i, s) in old.iter_mut().enumerate() {
            seen.extend(emit(s, 10 + 40 * i as u64));
        }
        let state = restored(&old);
        let mut mid: Vec<Nexmark> = (0..2).map(|i| source(&c, i, 2)).collect();
        for (i, s) in mid.iter_mut().enumerate() {
            s.restore(&state).unwrap();
            seen.extend(emit(s, 70 + 100 * i as u64));
        }
        let state = restored(&mid);
        for i in 0..4 {
            let mut s = source(&c, i, 4);
            s.restore(&state).unwrap();
            seen.extend(emit(&mut s, 1000));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<u64>>());
    }

    #[test]
    fn output_is_deterministic_and_the_same_at_any_parallelism() {
        let c = config("5000", "1");
        let one = all_rows(&c, 0, 1);
        assert_eq!(one, all_rows(&c, 0, 1));
        let parts: Vec<RecordBatch> = (0..3).map(|i| all_rows(&c, i, 3)).collect();
        let three = concat_batches(&one.schema(), &parts).unwrap();
        assert_eq!(sorted_by_time(&three), one);

        // Another first event time gives other data.
        let other = NexmarkConfig::from_options(&mut options(&[
            ("event_rate", "5000"),
            ("runtime", "1"),
            ("first_event_time", "2024-01-02T00:00:00Z"),
        ]))
        .unwrap();
        let bid_prices = |b: &RecordBatch| {
            let bid = b.column(2).as_struct();
            bid.column(2).as_primitive::<Int64Type>().values().to_vec()
        };
        assert_ne!(bid_prices(&one), bid_prices(&all_rows(&other, 0, 1)));
    }

    #[test]
    fn fifty_events_are_one_person_three_auctions_and_46_bids() {
        let b = all_rows(&config("50", "1"), 0, 1);
        assert_eq!(b.num_rows(), 50);
        let valid = |col: usize| b.column(col).len() - b.column(col).null_count();
        assert_eq!((valid(0), valid(1), valid(2)), (1, 3, 46));
        // Over many epochs the proportions hold, and the ids count up from 1000.
        let b = all_rows(&config("10000", "1"), 0, 1);
        let valid = |col: usize| b.column(col).len() - b.column(col).null_count();
        assert_eq!((valid(0), valid(1), valid(2)), (200, 600, 9200));
        let ids = |col: usize| -> Vec<i64> {
            let s = b.column(col).as_struct();
            let id = s.column(0).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .filter(|&r| s.is_valid(r))
                .map(|r| id.value(r))
                .collect()
        };
        assert_eq!(ids(0), (1000..1200).collect::<Vec<_>>());
        assert_eq!(ids(1), (1000..1600).collect::<Vec<_>>());
    }

    #[test]
    fn bids_refer_to_recent_auctions_and_people() {
        let b = all_rows(&config("10000", "1"), 0, 1);
        let bid = b.column(2).as_struct();
        let auction = bid.column(0).as_primitive::<Int64Type>();
        let bidder = bid.column(1).as_primitive::<Int64Type>();
        let mut auctions = BTreeSet::new();
        for r in (0..b.num_rows()).filter(|&r| bid.is_valid(r)) {
            let n = r as u64;
            let newest_auction = FIRST_AUCTION_ID + last_auction(n) as i64;
            let newest_person = FIRST_PERSON_ID + last_person(n) as i64;
            let a = auction.value(r);
            assert!(a >= FIRST_AUCTION_ID && a <= newest_auction + AUCTION_ID_LEAD as i64);
            assert!(a >= newest_auction - NUM_INFLIGHT_AUCTIONS as i64 - HOT_BUCKET as i64);
            let p = bidder.value(r);
            assert!(p >= FIRST_PERSON_ID && p <= newest_person + PERSON_ID_LEAD as i64);
            auctions.insert(a);
        }
        // Hot auctions: half the bids go to a few of them.
        assert!(auctions.len() > 10);
        // A bid's url is its channel's, whichever bid it is.
        let channel = bid.column(3).as_string::<i32>();
        let url = bid.column(4).as_string::<i32>();
        let mut urls = std::collections::HashMap::new();
        for r in (0..b.num_rows()).filter(|&r| bid.is_valid(r)) {
            let prior = urls.insert(channel.value(r), url.value(r));
            assert!(prior.is_none_or(|u| u == url.value(r)));
        }
    }

    #[test]
    fn event_times_follow_the_rate() {
        let c = config("200", "1");
        let b = all_rows(&c, 1, 2);
        let times = event_times(&b);
        assert_eq!(times.len(), 100);
        for (k, t) in times.iter().enumerate() {
            assert_eq!(*t, JAN_2024 + (2 * k as i64 + 1) * 5_000_000);
        }
        // Each struct's datetime is the event time.
        for col in 0..3 {
            let s = b.column(col).as_struct();
            let datetime = s
                .column_by_name("datetime")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>();
            for r in (0..b.num_rows()).filter(|&r| s.is_valid(r)) {
                assert_eq!(datetime.value(r), times[r]);
            }
        }
        // Due events: event n (of subtask n % 2) is due n * 5ms after the start.
        let s = source(&c, 1, 2);
        assert_eq!(s.due(Duration::ZERO), 0);
        assert_eq!(s.due(Duration::from_millis(5)), 1);
        assert_eq!(s.due(Duration::from_millis(16)), 2);
        assert_eq!(source(&c, 0, 2).due(Duration::ZERO), 1);
    }

    #[test]
    fn only_the_projected_columns_are_made() {
        let c = config("1000", "1");
        let s = Nexmark::new(
            &c,
            JAN_2024,
            vec![2],
            with_timestamp(&schema().project(&[2]).unwrap()),
            0,
            1,
        );
        let b = s.batch(0, 1000).unwrap();
        assert_eq!(b.num_columns(), 2);
        assert_eq!(b.column(0).null_count(), 80);
        let full = all_rows(&c, 0, 1);
        assert_eq!(b.column(0), full.column(2));
    }
}
