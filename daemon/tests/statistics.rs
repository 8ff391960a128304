//! Approximate and statistical aggregates through `arroyod run`, in TUMBLE, HOP and SESSION
//! windows and in an updating aggregate, at parallelism 1 and 3 and stopped and restored:
//!
//! - result types are those of DataFusion's batch engine for the same SQL, except that the
//!   t-digest ones give an integer column's type (truncated), as Arroyo does: DataFusion 55
//!   coerces their value to DOUBLE, Arroyo's DataFusion 48 did not (`sql/approx.rs`);
//! - the deterministic ones (`covar_*`, `corr`, `regr_*`, and `approx_distinct`, whose
//!   HyperLogLog merges registers by max) equal DataFusion's batch answer over the same rows
//!   within 1e-9 relative;
//! - the t-digest ones (`approx_median`, `approx_percentile_cont` in both spellings, and
//!   `approx_percentile_cont_with_weight`) are within their rank error of the exact
//!   percentile: groups here have hundreds of rows, so the digest is compressed and its merge
//!   order (parallelism, restores) changes the last digits.
//!
//! Groups of the input are large (about 300 rows a window and key) and the restored run reads
//! the file in paced steps and is stopped after its second checkpoint.

mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde_json::Value;

use harness::{DEADLINE, path_str};

/// 2024-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_704_067_200_000;
const KEYS: [&str; 3] = ["a", "b", "c"];
/// Rows of the input: 60 ms apart (about 330 per key a minute), with a 10 s pause every 1500
/// rows (the sessions of a 5 s gap).
const ROWS: usize = 6000;

/// Rank error allowed for a t-digest percentile (of 100 centroids: DataFusion's default),
/// as a fraction of the group's rows.
const RANK_ERROR: f64 = 0.02;
/// Relative error allowed for `approx_distinct` against the exact count (HyperLogLog with
/// 2^14 registers: a standard error of 0.8%).
const DISTINCT_ERROR: f64 = 0.03;

struct Row {
    ts: i64,
    k: &'static str,
    x: i64,
    y: f64,
    w: i64,
    s: String,
    /// Session number of the row (per key the same: sessions are the runs between pauses).
    seg: i64,
}

/// The input, from a fixed linear congruential generator.
fn input() -> Vec<Row> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut ts = BASE_MS;
    (0..ROWS)
        .map(|i| {
            if i > 0 && i % 1500 == 0 {
                ts += 10_000;
            }
            ts += 60;
            let x = next(2001) as i64 - 1000;
            Row {
                ts,
                k: KEYS[next(3) as usize],
                x,
                // Correlated with x, with noise: corr and regr_* have something to find.
                y: x as f64 * 0.5 + (next(4001) as f64 - 2000.0) / 8.0,
                w: next(5) as i64 + 1,
                s: format!("w{}", next(700)),
                seg: (i / 1500) as i64,
            }
        })
        .collect()
}

fn iso(ms: i64) -> String {
    let array = TimestampNanosecondArray::from(vec![ms * 1_000_000]);
    array_value_to_string(&array, 0).unwrap()
}

fn write_input(rows: &[Row], path: &Path) {
    let mut text = String::new();
    for r in rows {
        text.push_str(
            &serde_json::json!({"ts": iso(r.ts), "k": r.k, "x": r.x, "y": r.y, "w": r.w, "s": r.s})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The deterministic aggregates: the same text in both engines.
const EXACT: &[(&str, &str)] = &[
    ("covs", "covar_samp(x, y)"),
    ("covp", "covar_pop(y, x)"),
    ("cr", "corr(x, y)"),
    ("slope", "regr_slope(y, x)"),
    ("icpt", "regr_intercept(y, x)"),
    ("rc", "regr_count(y, x)"),
    ("r2", "regr_r2(y, x)"),
    ("sxy", "regr_sxy(y, x)"),
    ("ad", "approx_distinct(s)"),
];

/// The t-digest aggregates: (alias, SQL, what it estimates).
#[derive(Clone, Copy)]
enum Estimate {
    /// Percentile of x.
    X(f64),
    /// Percentile of y.
    Y(f64),
    /// Percentile of y weighted by w.
    WeightedY(f64),
}

const APPROX: &[(&str, &str, Estimate)] = &[
    ("med", "approx_median(x)", Estimate::X(0.5)),
    ("p90", "approx_percentile_cont(y, 0.9)", Estimate::Y(0.9)),
    (
        "p25",
        "approx_percentile_cont(0.25) WITHIN GROUP (ORDER BY y)",
        Estimate::Y(0.25),
    ),
    (
        "wp50",
        "approx_percentile_cont_with_weight(y, w, 0.5)",
        Estimate::WeightedY(0.5),
    ),
];

#[derive(Clone, Copy, Debug)]
enum Shape {
    Tumble,
    Hop,
    Session,
    Updating,
}

impl Shape {
    fn window_call(self) -> Option<&'static str> {
        match self {
            Shape::Tumble => Some("tumble(interval '1 minute')"),
            Shape::Hop => Some("hop(interval '1 minute', interval '2 minutes')"),
            Shape::Session => Some("session(interval '5 seconds')"),
            Shape::Updating => None,
        }
    }

    /// The windows (start ms, end ms) of a row at `ts` in session `seg`.
    fn windows(self, ts: i64, seg: i64) -> Vec<(i64, i64)> {
        let minute = 60_000;
        match self {
            Shape::Tumble => {
                let start = ts.div_euclid(minute) * minute;
                vec![(start, start + minute)]
            }
            Shape::Hop => {
                let last = ts.div_euclid(minute) * minute;
                vec![(last - minute, last + minute), (last, last + 2 * minute)]
            }
            Shape::Session => vec![(seg, seg)],
            Shape::Updating => vec![(0, 0)],
        }
    }
}

fn query(shape: Shape, input: &Path, output: &Path) -> String {
    let aggregates: Vec<String> = EXACT
        .iter()
        .map(|(a, sql)| format!("{sql} AS {a}"))
        .chain(APPROX.iter().map(|(a, sql, _)| format!("{sql} AS {a}")))
        .collect();
    let names: Vec<&str> = EXACT
        .iter()
        .map(|(a, _)| *a)
        .chain(APPROX.iter().map(|(a, _, _)| *a))
        .collect();
    let source = format!(
        "CREATE TABLE t (ts TIMESTAMP NOT NULL, k TEXT, x BIGINT, y DOUBLE, w BIGINT, s TEXT, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'single_file', path = '{}', format = 'json', type = 'source');\n",
        input.display()
    );
    let (format, select) = match shape.window_call() {
        Some(call) => (
            "json",
            format!(
                "SELECT window.start AS ws, k, {} FROM \
                 (SELECT {call} AS window, k, {} FROM t GROUP BY window, k)",
                names.join(", "),
                aggregates.join(", ")
            ),
        ),
        None => (
            "debezium_json",
            format!("SELECT k, {} FROM t GROUP BY k", aggregates.join(", ")),
        ),
    };
    format!(
        "{source}CREATE TABLE out WITH (connector = 'single_file', path = '{}', format = '{format}', type = 'sink');\n\
         INSERT INTO out {select};\n",
        output.display()
    )
}

/// The final rows of the sink file by (key, window start in ms; 0 without a window).
fn output_rows(
    shape: Shape,
    path: &Path,
) -> BTreeMap<(String, i64), serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let row = match shape {
            Shape::Updating => match v["op"].as_str().unwrap() {
                "d" => {
                    let before = v["before"].as_object().unwrap();
                    rows.remove(&(before["k"].as_str().unwrap().to_string(), 0));
                    continue;
                }
                _ => v["after"].as_object().unwrap().clone(),
            },
            _ => v.as_object().unwrap().clone(),
        };
        let start = match row.get("ws") {
            Some(ws) => parse_ms(ws.as_str().unwrap()),
            None => 0,
        };
        let key = (row["k"].as_str().unwrap().to_string(), start);
        assert!(
            rows.insert(key.clone(), row).is_none() || matches!(shape, Shape::Updating),
            "{shape:?}: two rows for {key:?}"
        );
    }
    rows
}

/// `2024-01-01T00:01:00` (with or without fractions) as epoch milliseconds.
fn parse_ms(text: &str) -> i64 {
    let array = datafusion::arrow::compute::cast(
        &StringArray::from(vec![text]),
        &DataType::Timestamp(TimeUnit::Nanosecond, None),
    )
    .unwrap();
    let ts = array
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .unwrap();
    ts.value(0) / 1_000_000
}

/// DataFusion's batch answer of the deterministic aggregates, by (key, window start ms); for
/// sessions the window "start" is the session number, mapped to its first row's time.
/// The answer, and whether each aggregate of [`APPROX`] has an integer type in DataFusion.
type Answer = (BTreeMap<(String, i64), Vec<Option<f64>>>, Vec<bool>);

fn batch_answer(shape: Shape, rows: &[Row]) -> Answer {
    // One row per (row, window) it belongs to, with the window start as `ws`.
    let mut ts = Vec::new();
    let mut ks = Vec::new();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut ss = Vec::new();
    let mut ws = Vec::new();
    let mut weights = Vec::new();
    for r in rows {
        for (start, _) in shape.windows(r.ts, r.seg) {
            ts.push(r.ts * 1_000_000);
            ks.push(r.k);
            xs.push(r.x);
            ys.push(r.y);
            ss.push(r.s.clone());
            ws.push(start);
            weights.push(r.w);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("k", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("y", DataType::Float64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("ws", DataType::Int64, false),
        Field::new("w", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampNanosecondArray::from(ts)),
            Arc::new(StringArray::from(ks)),
            Arc::new(Int64Array::from(xs)),
            Arc::new(Float64Array::from(ys)),
            Arc::new(StringArray::from(ss)),
            Arc::new(Int64Array::from(ws)),
            Arc::new(Int64Array::from(weights)),
        ],
    )
    .unwrap();
    let select: Vec<String> = EXACT
        .iter()
        .map(|(a, sql)| format!("CAST({sql} AS DOUBLE) AS {a}"))
        .collect();
    let approx: Vec<String> = APPROX
        .iter()
        .map(|(a, sql, _)| format!("{sql} AS {a}"))
        .collect();
    let sql = format!(
        "SELECT k, ws, min(ts) AS first, {}, {} FROM t GROUP BY k, ws",
        select.join(", "),
        approx.join(", ")
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let batches = runtime.block_on(async {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx.sql(&sql).await.unwrap().collect().await.unwrap()
    });
    let mut out = BTreeMap::new();
    let first_approx = 3 + EXACT.len();
    let integers = (0..APPROX.len())
        .map(|i| {
            batches[0]
                .schema()
                .field(first_approx + i)
                .data_type()
                .is_integer()
        })
        .collect();
    for b in &batches {
        let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let ws = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let first = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let start = match shape {
                Shape::Session => first.value(i) / 1_000_000,
                _ => ws.value(i),
            };
            let values = (0..EXACT.len())
                .map(|c| {
                    let col = b
                        .column(3 + c)
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .unwrap();
                    (!col.is_null(i)).then(|| col.value(i))
                })
                .collect();
            out.insert((k.value(i).to_string(), start), values);
        }
    }
    (out, integers)
}

/// The rows of each group, by the same key as [`batch_answer`].
fn groups(shape: Shape, rows: &[Row]) -> BTreeMap<(String, i64), Vec<&Row>> {
    let mut out: BTreeMap<(String, i64), Vec<&Row>> = BTreeMap::new();
    let mut session_start: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    for r in rows {
        session_start.entry((r.k, r.seg)).or_insert(r.ts);
    }
    for r in rows {
        for (start, _) in shape.windows(r.ts, r.seg) {
            let start = match shape {
                Shape::Session => session_start[&(r.k, r.seg)],
                _ => start,
            };
            out.entry((r.k.to_string(), start)).or_default().push(r);
        }
    }
    out
}

/// Checks that `got` is within [`RANK_ERROR`] of percentile `q` of `values` (value, weight).
fn check_percentile(what: &str, got: f64, q: f64, values: &mut [(f64, f64)]) -> Result<(), String> {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|v| v.1).sum();
    let below: f64 = values.iter().filter(|v| v.0 < got).map(|v| v.1).sum();
    let at_most: f64 = values.iter().filter(|v| v.0 <= got).map(|v| v.1).sum();
    let want = q * total;
    let slack = RANK_ERROR * total;
    if want + slack < below || want - slack > at_most {
        return Err(format!(
            "{what} = {got}: its rank is {below}..{at_most} of {total}, the percentile's is {want} (± {slack})"
        ));
    }
    Ok(())
}

/// Compares the sink's rows with the batch answer and the exact percentiles.
fn check(shape: Shape, rows: &[Row], output: &Path) -> Result<(), String> {
    let got = output_rows(shape, output);
    let (want, integers) = batch_answer(shape, rows);
    let groups = groups(shape, rows);
    let keys: Vec<_> = got.keys().cloned().collect();
    let want_keys: Vec<_> = want.keys().cloned().collect();
    if keys != want_keys {
        return Err(format!(
            "groups differ: {} in the output, {} expected; first output {:?}, first expected {:?}",
            keys.len(),
            want_keys.len(),
            keys.first(),
            want_keys.first()
        ));
    }
    for (key, row) in &got {
        for ((alias, sql), expected) in EXACT.iter().zip(&want[key]) {
            let value = row[*alias].as_f64();
            let same = match (value, expected) {
                (Some(a), Some(b)) => a == *b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return Err(format!(
                    "{shape:?} {key:?}: {sql} is {:?}, DataFusion's batch answer {expected:?}",
                    row[*alias]
                ));
            }
        }
        // regr_count is an unsigned integer, approx_distinct too: DataFusion's types.
        for alias in ["rc", "ad"] {
            if !row[alias].is_u64() {
                return Err(format!(
                    "{shape:?} {key:?}: {alias} is {} (want an integer)",
                    row[alias]
                ));
            }
        }
        let group = &groups[key];
        let exact_distinct = group
            .iter()
            .map(|r| r.s.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as f64;
        let distinct = row["ad"].as_f64().unwrap();
        if (distinct - exact_distinct).abs() > DISTINCT_ERROR * exact_distinct {
            return Err(format!(
                "{shape:?} {key:?}: approx_distinct {distinct}, exactly {exact_distinct}"
            ));
        }
        for ((alias, sql, estimate), integer) in APPROX.iter().zip(&integers) {
            // Of the BIGINT column x, Arroyo's type: an integer.
            let integer = *integer || matches!(estimate, Estimate::X(_));
            let integer = &integer;
            let value = &row[*alias];
            let what = format!("{shape:?} {key:?}: {sql}");
            // The type: an integer, or a float (written with a fraction or exponent).
            let text = value.to_string();
            if *integer != value.is_i64() || (!integer && !text.contains(['.', 'e', 'E'])) {
                return Err(format!(
                    "{what} is {value}, but its type is {}",
                    if *integer { "an integer" } else { "a float" }
                ));
            }
            let (q, mut values): (f64, Vec<(f64, f64)>) = match estimate {
                Estimate::X(q) => (*q, group.iter().map(|r| (r.x as f64, 1.0)).collect()),
                Estimate::Y(q) => (*q, group.iter().map(|r| (r.y, 1.0)).collect()),
                Estimate::WeightedY(q) => (*q, group.iter().map(|r| (r.y, r.w as f64)).collect()),
            };
            let got = value.as_f64().ok_or_else(|| format!("{what} is {value}"))?;
            check_percentile(&what, got, q, &mut values)?;
        }
    }
    Ok(())
}

/// Runs `sql` straight through at `parallelism`.
fn run_straight(dir: &Path, tag: &str, sql: &str, parallelism: u32) {
    let query = dir.join(format!("q-{tag}.sql"));
    std::fs::write(&query, sql).unwrap();
    let state = dir.join(format!("state-{tag}"));
    let p = parallelism.to_string();
    let out = harness::try_run_query(
        &["-p", &p, "-s", path_str(&state), path_str(&query)],
        DEADLINE * 2,
    )
    .unwrap_or_else(|o| panic!("did not end: {}", String::from_utf8_lossy(&o.stderr)));
    assert!(
        out.status.success(),
        "{tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sql` at parallelism 3 reading the file in paced steps, stops it after its second
/// checkpoint, and restores it at parallelism 1 to the end.
fn run_restored(dir: &Path, sql: &str) {
    let query = dir.join("q-restored.sql");
    std::fs::write(&query, sql).unwrap();
    harness::run_stopped_and_restored(&query, &dir.join("state-restored"), (3, 1), ROWS / 30, 2);
}

fn check_shape(shape: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let rows = input();
    let input = dir.path().join("in.json");
    write_input(&rows, &input);
    let mut failures = Vec::new();
    for (tag, parallelism) in [("p1", 1), ("p3", 3), ("restored", 0)] {
        let output = dir.path().join(format!("out-{tag}.json"));
        let sql = query(shape, &input, &output);
        if parallelism == 0 {
            run_restored(dir.path(), &sql);
        } else {
            run_straight(dir.path(), tag, &sql, parallelism);
        }
        if let Err(e) = check(shape, &rows, &output) {
            failures.push(format!("{tag}: {e}"));
        }
    }
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "{}\n(files kept in {})",
            failures.join("\n"),
            kept.display()
        );
    }
}

#[test]
fn tumbling_windows_give_datafusions_statistics() {
    check_shape(Shape::Tumble);
}

#[test]
fn hopping_windows_give_datafusions_statistics() {
    check_shape(Shape::Hop);
}

#[test]
fn session_windows_give_datafusions_statistics() {
    check_shape(Shape::Session);
}

#[test]
fn updating_aggregates_give_datafusions_statistics() {
    check_shape(Shape::Updating);
}
