//! Seeded event streams: the rows of a source table, written as JSON lines for `arroyod run` and
//! as one Arrow batch for the oracle.
//!
//! Every table has the columns `ts TIMESTAMP` (event time, never null), `k TEXT` and `g BIGINT`
//! (keys), `v BIGINT`, `f DOUBLE` and `s TEXT` (values); all but `ts` may be null. A stream is
//! shaped by the query it is made for ([`Shape`]): event times pile up exactly on window
//! boundaries, jump over whole windows (empty windows), and touch the previous event of a key at
//! exactly the session gap.
//!
//! Lateness: the data is **never late**. Each event's time is at least the newest time before
//! it less the watermark's delay, so it is at or after the watermark whenever it arrives, in
//! any batching and at any pacing: the streaming result must then equal the batch result over
//! the whole input, and the oracle keeps every row.
//!
//! Floats: `f` is either a multiple of 1/8 (signed; sums are exact in any order) or a positive
//! decimal with two digits (rounding differs by order, but without cancellation, so results
//! agree to far better than the 1e-9 the comparison allows).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value};

/// 2024-01-01T00:00:00Z in milliseconds: every stream starts within an hour after it.
const BASE_MS: i64 = 1_704_067_200_000;

/// Keys that are easy to get wrong: quotes, non-ASCII, the empty string.
const ODD_KEYS: &[&str] = &["o'k", "ü-ß", "a\"b", "", "😀", "tab\tkey"];
/// Words for `s`; the first ones share prefixes for LIKE predicates.
const WORDS: &[&str] = &[
    "apple",
    "apricot",
    "banana",
    "blue",
    "cherry",
    "x",
    "",
    "naïve",
    "quo\"te",
    "back\\slash",
];

/// One input row; `ts` in milliseconds since the epoch.
#[derive(Debug, Clone)]
pub struct Event {
    pub ts: i64,
    pub k: Option<String>,
    pub g: Option<i64>,
    pub v: Option<i64>,
    pub f: Option<f64>,
    pub s: Option<String>,
}

/// How a table declares its event time and watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// `event_time_field = 'ts'`: the watermark trails the newest event by 1 s.
    Field,
    /// `WATERMARK FOR ts`: the watermark is the newest event time.
    Column,
    /// `WATERMARK FOR ts AS (ts - INTERVAL 'n milliseconds')`.
    Delay(i64),
}

impl Watermark {
    /// How far the watermark trails the newest event time, in milliseconds.
    pub fn delay_ms(self) -> i64 {
        match self {
            Watermark::Field => 1000,
            Watermark::Column => 0,
            Watermark::Delay(ms) => ms,
        }
    }
}

/// What the query a stream is made for is sensitive to.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Window boundaries fall on multiples of this (tumble size, hop slide, session gap).
    pub edge_ms: i64,
    /// The session gap, when sessions are grouped: events then touch the previous event of
    /// their group at exactly this distance.
    pub gap_ms: Option<i64>,
    /// The columns sessions are grouped by (`k`, `g`), empty for global sessions.
    pub session_keys: &'static [&'static str],
}

/// A source table: its name in both engines, its rows in file order, its watermark.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub events: Vec<Event>,
    pub watermark: Watermark,
    /// `ts TIMESTAMP NOT NULL` rather than `ts TIMESTAMP`.
    pub ts_not_null: bool,
}

/// How many of something: few, some or many.
fn cardinality(rng: &mut StdRng) -> usize {
    match rng.random_range(0..3) {
        0 => rng.random_range(1..=3),
        1 => rng.random_range(4..=20),
        _ => rng.random_range(50..=300),
    }
}

/// A null rate: none, a few, half.
fn null_rate(rng: &mut StdRng) -> f64 {
    *[0.0, 0.0, 0.05, 0.2, 0.5].choose(rng).expect("rates")
}

fn maybe<T>(rng: &mut StdRng, null_rate: f64, value: impl FnOnce(&mut StdRng) -> T) -> Option<T> {
    if rng.random_bool(null_rate) {
        None
    } else {
        Some(value(rng))
    }
}

/// The name of key number `i`: `k<i>`, or with `odd` the awkward keys first.
pub fn key_name(i: usize, odd: bool) -> String {
    match ODD_KEYS.get(i) {
        Some(k) if odd => (*k).to_string(),
        _ => format!("k{i}"),
    }
}

/// A string value of `s`.
fn word(rng: &mut StdRng, cardinality: usize) -> String {
    let i = rng.random_range(0..cardinality.max(1));
    match WORDS.get(i) {
        Some(w) => (*w).to_string(),
        None => format!("w{i}"),
    }
}

/// Generates table `name` for a query of `shape`.
pub fn table(rng: &mut StdRng, name: &str, shape: Shape) -> Table {
    let watermark = match rng.random_range(0..4) {
        0 => Watermark::Field,
        1 => Watermark::Column,
        _ => Watermark::Delay(*[250, 1000, 2000, 5000].choose(rng).expect("delays")),
    };
    let rows = match rng.random_range(0..10) {
        0..2 => rng.random_range(8..20),
        2..7 => rng.random_range(20..300),
        _ => rng.random_range(300..1500),
    };
    let delay = watermark.delay_ms();
    // Out of order by at most this much: never more than the watermark allows.
    let disorder = *[0, delay / 2, delay].choose(rng).expect("disorders");
    let edge = shape.edge_ms.max(1);
    // A step between events; some streams are dense (many events per window), some sparse.
    let step_max = (edge * rng.random_range(1..=8) / 8).max(1);
    let (p_jump, p_edge, p_touch) = (0.03, 0.15, if shape.gap_ms.is_some() { 0.2 } else { 0.0 });
    let keys = cardinality(rng);
    let odd_keys = rng.random_bool(0.3);
    let groups = cardinality(rng) as i64;
    let words = cardinality(rng);
    let (k_null, g_null, v_null, f_null, s_null) = (
        null_rate(rng),
        null_rate(rng),
        null_rate(rng),
        null_rate(rng),
        null_rate(rng),
    );
    let dyadic = rng.random_bool(0.5);
    let mut clock = BASE_MS + rng.random_range(0..3600) * 1000;
    if rng.random_bool(0.5) {
        clock += rng.random_range(0..1000);
    }
    // The newest event time of each session group, to touch it at exactly the gap.
    let mut last: HashMap<(Option<String>, Option<i64>), i64> = HashMap::new();
    let mut events = Vec::with_capacity(rows);
    for _ in 0..rows {
        if rng.random_bool(p_jump) {
            clock += edge * rng.random_range(2..6) + rng.random_range(0..edge);
        } else {
            clock += rng.random_range(0..=step_max);
        }
        let mut event = Event {
            ts: clock - rng.random_range(0..=disorder),
            k: maybe(rng, k_null, |r| key_name(r.random_range(0..keys), odd_keys)),
            g: maybe(rng, g_null, |r| r.random_range(0..groups)),
            v: maybe(rng, v_null, |r| r.random_range(-1000..=1000)),
            f: maybe(rng, f_null, |r| {
                if dyadic {
                    r.random_range(-8000..=8000) as f64 / 8.0
                } else {
                    r.random_range(0..=100_000) as f64 / 100.0
                }
            }),
            s: maybe(rng, s_null, |r| word(r, words)),
        };
        let group = (
            shape
                .session_keys
                .contains(&"k")
                .then(|| event.k.clone())
                .flatten(),
            shape
                .session_keys
                .contains(&"g")
                .then_some(event.g)
                .flatten(),
        );
        let roll: f64 = rng.random();
        if roll < p_edge {
            // Exactly on a window boundary, when that is not late.
            let boundary = clock.div_euclid(edge) * edge;
            if boundary >= clock - delay {
                event.ts = boundary;
            }
        } else if roll < p_edge + p_touch {
            // Exactly one gap after the previous event of the group: a new session that
            // touches the previous one.
            if let (Some(gap), Some(&prev)) = (shape.gap_ms, last.get(&group)) {
                let touch = prev + gap;
                if touch >= clock - delay {
                    clock = clock.max(touch);
                    event.ts = touch;
                }
            }
        }
        let newest = last.entry(group).or_insert(event.ts);
        *newest = (*newest).max(event.ts);
        events.push(event);
    }
    Table {
        name: name.to_string(),
        events,
        watermark,
        ts_not_null: rng.random_bool(0.5),
    }
}

/// The table's rows as JSON lines. Timestamps are written in several equivalent forms (UTC
/// with `Z`, an offset, or none), and nulls either as `null` or by leaving the field out.
pub fn json_lines(table: &Table, rng: &mut StdRng) -> String {
    let mut out = String::new();
    for e in &table.events {
        let mut row = Map::new();
        row.insert("ts".into(), Value::String(timestamp_text(e.ts, rng)));
        let omit_nulls = rng.random_bool(0.5);
        let mut put = |name: &str, value: Value| {
            if !(value.is_null() && omit_nulls) {
                row.insert(name.into(), value);
            }
        };
        put("k", e.k.clone().map_or(Value::Null, Value::String));
        put("g", e.g.map_or(Value::Null, Value::from));
        put("v", e.v.map_or(Value::Null, Value::from));
        put("f", e.f.map_or(Value::Null, Value::from));
        put("s", e.s.clone().map_or(Value::Null, Value::String));
        out.push_str(&Value::Object(row).to_string());
        out.push('\n');
    }
    out
}

/// `ms` as an ISO 8601 text naming the same instant.
fn timestamp_text(ms: i64, rng: &mut StdRng) -> String {
    let (offset_min, suffix) = match rng.random_range(0..4) {
        0 => (0, "Z".to_string()),
        1 => (0, String::new()),
        2 => (0, "+00:00".to_string()),
        _ => {
            let m: i64 = *[-330, -60, 60, 120, 345].choose(rng).expect("offsets");
            let sign = if m < 0 { '-' } else { '+' };
            (m, format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60))
        }
    };
    let local = timestamp_ms_to_datetime(ms + offset_min * 60_000).expect("a valid time");
    format!("{}{suffix}", local.format("%Y-%m-%dT%H:%M:%S%.3f"))
}

/// The schema of every source table in the oracle (as `arroyod` reads the JSON lines).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("k", DataType::Utf8, true),
        Field::new("g", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
    ]))
}

/// The table's rows as one Arrow batch of [`schema`].
pub fn batch(table: &Table) -> RecordBatch {
    let e = &table.events;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampNanosecondArray::from_iter_values(
            e.iter().map(|e| e.ts * 1_000_000),
        )),
        Arc::new(StringArray::from_iter(e.iter().map(|e| e.k.as_deref()))),
        Arc::new(Int64Array::from_iter(e.iter().map(|e| e.g))),
        Arc::new(Int64Array::from_iter(e.iter().map(|e| e.v))),
        Arc::new(Float64Array::from_iter(e.iter().map(|e| e.f))),
        Arc::new(StringArray::from_iter(e.iter().map(|e| e.s.as_deref()))),
    ];
    RecordBatch::try_new(schema(), columns).expect("a batch of the table schema")
}

/// The `CREATE TABLE` of a source table reading `path`.
pub fn ddl(table: &Table, path: &str) -> String {
    let ts = if table.ts_not_null {
        "ts TIMESTAMP NOT NULL"
    } else {
        "ts TIMESTAMP"
    };
    let (watermark, option) = match table.watermark {
        Watermark::Field => (String::new(), ", event_time_field = 'ts'"),
        Watermark::Column => (", WATERMARK FOR ts".to_string(), ""),
        Watermark::Delay(ms) => (
            format!(", WATERMARK FOR ts AS (ts - INTERVAL '{ms} milliseconds')"),
            "",
        ),
    };
    format!(
        "CREATE TABLE {} ({ts}, k TEXT, g BIGINT, v BIGINT, f DOUBLE, s TEXT{watermark})\n\
         WITH (connector = 'single_file', path = '{path}', format = 'json', type = 'source'{option});\n",
        table.name
    )
}

/// Milliseconds since the epoch as a SQL timestamp literal's text (`2024-01-01T00:00:01.500`).
pub fn timestamp_literal(ms: i64) -> String {
    let t = timestamp_ms_to_datetime(ms).expect("a valid time");
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}
