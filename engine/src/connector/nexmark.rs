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

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBufferBuilder, Int64Array, StringArray, StringBuilder, StructArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::time::Instant;

use super::counters::CounterState;
use super::{ConnectorError, Options, parse_duration};
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
    timestamp_type, with_timestamp,
};

/// Most rows in one batch.
const BATCH_ROWS: u64 = 8192;
/// How far the watermark trails the newest event time.
const WATERMARK_DELAY: i64 = 1_000_000_000;
/// Shortest pause between two batches once the source has caught up with its rate, so that
/// slow rates still make batches of several rows.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);

// Nexmark's model, with the reference generator's default settings.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// How far past the newest person a random person id may reach.
const PERSON_ID_LEAD: u64 = 10;
/// How far past the newest auction a random auction id may reach.
const AUCTION_ID_LEAD: u64 = 10;
/// Random auctions are among this many recent ones.
const NUM_INFLIGHT_AUCTIONS: u64 = 100;
/// Random people are among this many recent ones.
const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// A hot id is the newest id rounded down to a multiple of this.
const HOT_BUCKET: u64 = 100;
/// A bid is for a hot auction unless a draw in `0..HOT_AUCTION_ODDS` is 0.
const HOT_AUCTION_ODDS: u64 = 2;
/// A bid is by a hot bidder unless a draw in `0..HOT_BIDDER_ODDS` is 0.
const HOT_BIDDER_ODDS: u64 = 4;
/// An auction is by a hot seller unless a draw in `0..HOT_SELLER_ODDS` is 0.
const HOT_SELLER_ODDS: u64 = 4;
/// A bid comes through a hot channel unless a draw in `0..HOT_CHANNEL_ODDS` is 0.
const HOT_CHANNEL_ODDS: u64 = 2;
/// How many other channels there are.
const NUM_CHANNELS: u64 = 10_000;
/// Average sizes in bytes, reached by padding with `extra`.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
/// Shortest random string.
const MIN_STRING_LENGTH: u64 = 3;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/abo/eoci/cidro/item.htm?query=1",
    "https://www.nexmark.com/eoax/oad/cidro/item.htm?query=1",
    "https://www.nexmark.com/abo/jack/cidro/item.htm?query=1",
    "https://www.nexmark.com/abo/micah/cidro/item.htm?query=1",
];
const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Salts that keep the random streams of events and channels apart.
const SEED_SALT: u64 = 0x6e65_786d_6172_6b00;
const CHANNEL_SALT: u64 = 0x6368_616e_6e65_6c00;

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

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// A small counter-based random generator (SplitMix64): cheap to seed once per event.
struct Rng(u64);

/// SplitMix64's output function: a bijection that scatters nearby inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream of item `n` under `seed`; distinct items start far apart.
    fn new(seed: u64, n: u64) -> Rng {
        Rng(mix(seed ^ mix(n.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Person,
    Auction,
    Bid,
}

fn kind(n: u64) -> Kind {
    match n % TOTAL_PROPORTION {
        r if r < PERSON_PROPORTION => Kind::Person,
        r if r < PERSON_PROPORTION + AUCTION_PROPORTION => Kind::Auction,
        _ => Kind::Bid,
    }
}

/// The 0-based id of the newest person at event `n` (its own id if it is a person).
fn last_person(n: u64) -> u64 {
    let (epoch, offset) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    // Past the epoch's people, the newest is its last one.
    let person = if offset < PERSON_PROPORTION {
        offset
    } else {
        PERSON_PROPORTION - 1
    };
    epoch * PERSON_PROPORTION + person
}

/// The 0-based id of the newest auction at event `n` (its own id if it is an auction).
fn last_auction(n: u64) -> u64 {
    let (epoch, offset) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    if offset < PERSON_PROPORTION {
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    } else {
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    }
}

/// A 0-based person id among the recently active, possibly a little ahead of the newest.
fn random_person(n: u64, rng: &mut Rng) -> u64 {
    let newest = last_person(n);
    let active = newest.min(NUM_ACTIVE_PEOPLE);
    newest - active + rng.below(active + PERSON_ID_LEAD)
}

/// A 0-based auction id among those in flight, possibly a little ahead of the newest.
fn random_auction(n: u64, rng: &mut Rng) -> u64 {
    let newest = last_auction(n);
    rng.range(
        newest.saturating_sub(NUM_INFLIGHT_AUCTIONS),
        newest + 1 + AUCTION_ID_LEAD,
    )
}

/// A price in cents, log-uniform between 1 and 1,000,000 dollars.
fn random_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// The length of a random string shorter than `max`.
fn string_length(rng: &mut Rng, max: u64) -> usize {
    rng.range(MIN_STRING_LENGTH, max) as usize
}

/// The length of the padding that brings a record of `size` bytes to about `average` (±20%).
fn extra_length(rng: &mut Rng, size: usize, average: usize) -> usize {
    if size > average {
        return 0;
    }
    let wanted = average - size;
    let delta = (wanted as f64 * 0.2).round() as usize;
    if delta == 0 {
        wanted
    } else {
        wanted - delta + rng.below(2 * delta as u64) as usize
    }
}

/// Appends text to the value being built (the value ends at the next `append_value`).
fn put(out: &mut StringBuilder, text: &str) {
    // Writing into a string builder cannot fail.
    let _ = out.write_str(text);
}

/// Appends `len` random letters and digits to the value being built, ten per random draw.
fn put_alphanumeric(out: &mut StringBuilder, rng: &mut Rng, len: usize) {
    let mut buf = [0u8; 60];
    let mut left = len;
    while left > 0 {
        let chunk = left.min(buf.len());
        for group in buf[..chunk].chunks_mut(10) {
            let mut x = rng.next_u64();
            for b in group {
                *b = ALPHANUMERIC[(x % 62) as usize];
                x /= 62;
            }
        }
        put(out, std::str::from_utf8(&buf[..chunk]).unwrap_or_default());
        left -= chunk;
    }
}

fn text_builder(rows: usize, bytes: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, bytes)
}

fn ints(values: Vec<i64>, nulls: &NullBuffer) -> ArrayRef {
    Arc::new(Int64Array::new(values.into(), Some(nulls.clone())))
}

fn times(values: Vec<i64>, nulls: &NullBuffer) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::new(
        values.into(),
        Some(nulls.clone()),
    ))
}

fn texts(mut builder: StringBuilder, nulls: &NullBuffer) -> ArrayRef {
    let (offsets, values, _) = builder.finish().into_parts();
    Arc::new(StringArray::new(offsets, values, Some(nulls.clone())))
}

/// A struct column whose children share its validity (field access then reads NULL where the
/// struct is NULL).
fn structure(
    fields: &Fields,
    mut valid: BooleanBufferBuilder,
    children: impl FnOnce(&NullBuffer) -> Vec<ArrayRef>,
) -> Result<ArrayRef, ArrowError> {
    let nulls = NullBuffer::new(valid.finish());
    let children = children(&nulls);
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        children,
        Some(nulls),
    )?))
}

/// What a subtask's events are made from.
#[derive(Debug, Clone, Copy)]
struct Generator {
    /// Event time of event 0, nanoseconds since the epoch.
    first_time: i64,
    /// Nanoseconds between two events.
    delay: i64,
    seed: u64,
}

impl Generator {
    fn new(first_time: i64, delay: i64) -> Self {
        Generator {
            first_time,
            delay,
            seed: mix(first_time as u64 ^ SEED_SALT),
        }
    }

    fn time(&self, n: u64) -> i64 {
        self.first_time
            .saturating_add((n as i64).saturating_mul(self.delay))
    }

    /// Writes the URL of (non-hot) channel `channel`: the same for every bid through it.
    fn put_channel_url(&self, out: &mut StringBuilder, channel: u64) {
        let mut rng = Rng::new(self.seed ^ CHANNEL_SALT, channel);
        put(out, "https://www.nexmark.com/");
        for part in 0..3 {
            if part > 0 {
                put(out, "/");
            }
            let len = string_length(&mut rng, 5);
            put_alphanumeric(out, &mut rng, len);
        }
        put(out, "/item.htm?query=1");
        if rng.below(10) > 0 {
            let _ = write!(out, "&channel_id={channel}");
        }
    }
}

struct PersonColumns {
    id: Vec<i64>,
    name: StringBuilder,
    email_address: StringBuilder,
    credit_card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    datetime: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl PersonColumns {
    fn new(rows: usize) -> Self {
        let people = rows / TOTAL_PROPORTION as usize + 1;
        PersonColumns {
            id: Vec::with_capacity(rows),
            name: text_builder(rows, people * 12),
            email_address: text_builder(rows, people * 12),
            credit_card: text_builder(rows, people * 19),
            city: text_builder(rows, people * 8),
            state: text_builder(rows, people * 2),
            datetime: Vec::with_capacity(rows),
            extra: text_builder(rows, people * AVG_PERSON_BYTES),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    fn push(&mut self, n: u64, time: i64, rng: &mut Rng) {
        self.id.push(FIRST_PERSON_ID + last_person(n) as i64);

        let (first, last) = (rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
        put(&mut self.name, first);
        put(&mut self.name, " ");
        self.name.append_value(last);

        let (user, domain) = (string_length(rng, 7), string_length(rng, 5));
        put_alphanumeric(&mut self.email_address, rng, user);
        put(&mut self.email_address, "@");
        put_alphanumeric(&mut self.email_address, rng, domain);
        self.email_address.append_value(".com");

        // Four groups of four digits from one draw.
        let mut digits = rng.below(10_000_000_000_000_000);
        let mut card = [b' '; 19];
        for i in (0..19).rev().filter(|i| i % 5 != 4) {
            card[i] = b'0' + (digits % 10) as u8;
            digits /= 10;
        }
        self.credit_card
            .append_value(std::str::from_utf8(&card).unwrap_or_default());

        let (city, state) = (rng.pick(&US_CITIES), rng.pick(&US_STATES));
        self.city.append_value(city);
        self.state.append_value(state);
        self.datetime.push(time);

        let size = 8 + first.len() + 1 + last.len() + user + domain + 5 + 19 + city.len() + 2;
        let extra = extra_length(rng, size, AVG_PERSON_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    fn push_null(&mut self) {
        self.id.push(0);
        for b in [
            &mut self.name,
            &mut self.email_address,
            &mut self.credit_card,
            &mut self.city,
            &mut self.state,
            &mut self.extra,
        ] {
            b.append_value("");
        }
        self.datetime.push(0);
        self.valid.append(false);
    }

    fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.id, nulls),
                texts(self.name, nulls),
                texts(self.email_address, nulls),
                texts(self.credit_card, nulls),
                texts(self.city, nulls),
                texts(self.state, nulls),
                times(self.datetime, nulls),
                texts(self.extra, nulls),
            ]
        })
    }
}

struct AuctionColumns {
    id: Vec<i64>,
    description: StringBuilder,
    item_name: StringBuilder,
    initial_bid: Vec<i64>,
    reserve: Vec<i64>,
    datetime: Vec<i64>,
    expires: Vec<i64>,
    seller: Vec<i64>,
    category: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl AuctionColumns {
    fn new(rows: usize) -> Self {
        let auctions = rows * AUCTION_PROPORTION as usize / TOTAL_PROPORTION as usize + 1;
        AuctionColumns {
            id: Vec::with_capacity(rows),
            description: text_builder(rows, auctions * 52),
            item_name: text_builder(rows, auctions * 12),
            initial_bid: Vec::with_capacity(rows),
            reserve: Vec::with_capacity(rows),
            datetime: Vec::with_capacity(rows),
            expires: Vec::with_capacity(rows),
            seller: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            extra: text_builder(rows, auctions * AVG_AUCTION_BYTES),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    fn push(&mut self, g: &Generator, n: u64, time: i64, rng: &mut Rng) {
        self.id.push(FIRST_AUCTION_ID + last_auction(n) as i64);

        let seller = if rng.below(HOT_SELLER_ODDS) > 0 {
            last_person(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_person(n, rng)
        };
        self.seller.push(FIRST_PERSON_ID + seller as i64);
        self.category
            .push(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
        let initial_bid = random_price(rng);
        self.initial_bid.push(initial_bid);
        self.reserve.push(initial_bid + random_price(rng));
        self.datetime.push(time);

        // Auctions last twice, on average, the time it takes to open the in-flight number.
        let horizon = (NUM_INFLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION)
            .saturating_mul(g.delay as u64);
        let length = 1 + rng
            .below(horizon.saturating_mul(2).saturating_add(1))
            .max(1);
        self.expires
            .push(time.saturating_add(length.min(i64::MAX as u64) as i64));

        let name = string_length(rng, 20);
        put_alphanumeric(&mut self.item_name, rng, name);
        self.item_name.append_value("");
        let description = string_length(rng, 100);
        put_alphanumeric(&mut self.description, rng, description);
        self.description.append_value("");

        let size = 8 + name + description + 8 + 8 + 8 + 8 + 8;
        let extra = extra_length(rng, size, AVG_AUCTION_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    fn push_null(&mut self) {
        for v in [
            &mut self.id,
            &mut self.initial_bid,
            &mut self.reserve,
            &mut self.datetime,
            &mut self.expires,
            &mut self.seller,
            &mut self.category,
        ] {
            v.push(0);
        }
        for b in [&mut self.description, &mut self.item_name, &mut self.extra] {
            b.append_value("");
        }
        self.valid.append(false);
    }

    fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.id, nulls),
                texts(self.description, nulls),
                texts(self.item_name, nulls),
                ints(self.initial_bid, nulls),
                ints(self.reserve, nulls),
                times(self.datetime, nulls),
                times(self.expires, nulls),
                ints(self.seller, nulls),
                ints(self.category, nulls),
                texts(self.extra, nulls),
            ]
        })
    }
}

struct BidColumns {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: StringBuilder,
    url: StringBuilder,
    datetime: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl BidColumns {
    fn new(rows: usize) -> Self {
        BidColumns {
            auction: Vec::with_capacity(rows),
            bidder: Vec::with_capacity(rows),
            price: Vec::with_capacity(rows),
            channel: text_builder(rows, rows * 10),
            url: text_builder(rows, rows * 62),
            datetime: Vec::with_capacity(rows),
            extra: text_builder(rows, rows * (AVG_BID_BYTES - 30)),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    fn push(&mut self, g: &Generator, n: u64, time: i64, rng: &mut Rng) {
        let auction = if rng.below(HOT_AUCTION_ODDS) > 0 {
            last_auction(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_auction(n, rng)
        };
        self.auction.push(FIRST_AUCTION_ID + auction as i64);
        let bidder = if rng.below(HOT_BIDDER_ODDS) > 0 {
            last_person(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_person(n, rng)
        };
        self.bidder.push(FIRST_PERSON_ID + bidder as i64);
        self.price.push(random_price(rng));

        if rng.below(HOT_CHANNEL_ODDS) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            self.channel.append_value(HOT_CHANNELS[i]);
            self.url.append_value(HOT_URLS[i]);
        } else {
            let channel = rng.below(NUM_CHANNELS);
            let _ = write!(self.channel, "channel-{channel}");
            self.channel.append_value("");
            g.put_channel_url(&mut self.url, channel);
            self.url.append_value("");
        }
        self.datetime.push(time);

        let extra = extra_length(rng, 32, AVG_BID_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    fn push_null(&mut self) {
        for v in [
            &mut self.auction,
            &mut self.bidder,
            &mut self.price,
            &mut self.datetime,
        ] {
            v.push(0);
        }
        for b in [&mut self.channel, &mut self.url, &mut self.extra] {
            b.append_value("");
        }
        self.valid.append(false);
    }

    fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.auction, nulls),
                ints(self.bidder, nulls),
                ints(self.price, nulls),
                texts(self.channel, nulls),
                texts(self.url, nulls),
                times(self.datetime, nulls),
                texts(self.extra, nulls),
            ]
        })
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
                option: "message_count".into()
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
