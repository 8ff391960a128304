//! The oracle: the expected answer of a case, computed by DataFusion's batch engine over the
//! complete input (each table a `MemTable`), never through arroyod's streaming rewrite.
//!
//! 1. Each source table is registered under its name with the rows of the generated stream.
//! 2. Each [`SessionStep`] runs its input query, computes sessions in Rust ([`sessions`]: sort
//!    by key and time, a new session where two rows of a key are at least the gap apart; the
//!    session is `[first, last + gap)`) and registers the rows with `ws`/`we` as a table.
//! 3. The case's oracle SQL runs; its batches and schema are the expected answer.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::compare::{Val, scalar};
use super::data;
use super::query::{Case, SessionStep};

/// The expected output: the oracle query's schema and rows.
pub struct Expected {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Computes the expected answer of `case`; `Err` is DataFusion's message (a generator bug).
pub fn expected(case: &Case) -> Result<Expected, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    runtime.block_on(async {
        let ctx = SessionContext::new();
        for table in &case.tables {
            register(&ctx, &table.name, data::schema(), vec![data::batch(table)])?;
        }
        for step in &case.oracle.sessions {
            let (schema, batches) = run(&ctx, &step.input).await?;
            let input =
                concat_batches(&schema, &batches).map_err(|e| format!("concatenating: {e}"))?;
            let sessioned = sessions(&input, step)?;
            register(&ctx, &step.name, sessioned.schema(), vec![sessioned])?;
        }
        let (schema, batches) = run(&ctx, &case.oracle.sql).await?;
        Ok(Expected { schema, batches })
    })
}

fn register(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(), String> {
    let table = MemTable::try_new(schema, vec![batches])
        .map_err(|e| format!("a MemTable for {name}: {e}"))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| format!("registering {name}: {e}"))?;
    Ok(())
}

/// Runs `sql`; its schema and rows.
async fn run(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| format!("planning {sql}: {e}"))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| format!("running {sql}: {e}"))?;
    Ok((schema, batches))
}

/// `input` with the columns `ws` and `we`: the start and end of each row's session.
pub fn sessions(input: &RecordBatch, step: &SessionStep) -> Result<RecordBatch, String> {
    let column = |name: &str| -> Result<&ArrayRef, String> {
        input
            .column_by_name(name)
            .ok_or_else(|| format!("the session input has no column {name}"))
    };
    let ts = column("ts")?
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or("the session input's ts is not a nanosecond timestamp")?;
    let keys: Vec<&ArrayRef> = step
        .keys
        .iter()
        .map(|k| column(k))
        .collect::<Result<_, _>>()?;
    let key_of =
        |row: usize| -> Vec<Val> { keys.iter().map(|a| scalar(a.as_ref(), row)).collect() };
    let mut order: Vec<(Vec<Val>, i64, usize)> = (0..input.num_rows())
        .map(|row| (key_of(row), ts.value(row), row))
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let gap = step.gap_ms * 1_000_000;
    let mut starts = vec![0i64; input.num_rows()];
    let mut ends = vec![0i64; input.num_rows()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && order[j].0 == order[i].0 && order[j].1 - order[j - 1].1 < gap {
            j += 1;
        }
        let (start, end) = (order[i].1, order[j - 1].1 + gap);
        for entry in &order[i..j] {
            starts[entry.2] = start;
            ends[entry.2] = end;
        }
        i = j;
    }
    let time = DataType::Timestamp(TimeUnit::Nanosecond, None);
    let mut fields: Vec<Field> = input
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("ws", time.clone(), false));
    fields.push(Field::new("we", time, false));
    let mut columns: Vec<ArrayRef> = input.columns().to_vec();
    columns.push(Arc::new(TimestampNanosecondArray::from(starts)));
    columns.push(Arc::new(TimestampNanosecondArray::from(ends)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| format!("the sessioned rows: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    /// Rows of (key, seconds) through [`sessions`]; (key, ws, we) in seconds, in row order.
    fn sessions_of(rows: &[(Option<&str>, i64)], gap_s: i64) -> Vec<(Option<String>, i64, i64)> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    rows.iter().map(|r| r.1 * 1_000_000_000),
                )),
            ],
        )
        .unwrap();
        let step = SessionStep {
            name: "s".into(),
            input: String::new(),
            keys: vec!["k".into()],
            gap_ms: gap_s * 1000,
        };
        let out = sessions(&batch, &step).unwrap();
        let ws = out
            .column(2)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        let we = out
            .column(3)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        let k = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..out.num_rows())
            .map(|i| {
                (
                    k.is_valid(i).then(|| k.value(i).to_string()),
                    ws.value(i) / 1_000_000_000,
                    we.value(i) / 1_000_000_000,
                )
            })
            .collect()
    }

    #[test]
    fn sessions_split_at_the_gap_per_key_whatever_the_row_order() {
        let a = Some("a".to_string());
        let got = sessions_of(
            &[
                (Some("a"), 10),
                (Some("b"), 11),
                (Some("a"), 2),
                (Some("a"), 5),
                (None, 3),
                (Some("a"), 14),
                (Some("a"), 19),
                (None, 4),
            ],
            5,
        );
        assert_eq!(
            got,
            vec![
                // 10 - 5 = 5 is not less than the gap: a new session, touching the first.
                (a.clone(), 10, 19),
                (Some("b".into()), 11, 16),
                (a.clone(), 2, 10),
                (a.clone(), 2, 10),
                (None, 3, 9),
                (a.clone(), 10, 19),
                (a, 19, 24),
                (None, 3, 9),
            ]
        );
    }
}
