//! `impulse`: a generator of counters at a fixed rate, for tests and demos.
//!
//! Options: `event_rate` (rows per second over all subtasks, required), `message_count`
//! (total rows; unbounded when absent), `event_time_interval` (event time advances by this per
//! counter from the start time; wall-clock time when absent). Subtask `i` of `p` emits the
//! counters `c < message_count` with `c % p == i`, so every counter appears exactly once at any
//! parallelism.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, TimestampNanosecondArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::time::Instant;

use super::counters::CounterState;
use super::{ConnectorError, Options, now_nanos};
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
    timestamp_type, with_timestamp,
};

/// Most rows in one batch.
const BATCH_ROWS: u64 = 8192;
/// How far the watermark trails the newest event time.
const WATERMARK_DELAY: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub struct ImpulseConfig {
    event_rate: f64,
    message_count: Option<u64>,
    event_time_interval: Option<Duration>,
}

impl ImpulseConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let event_rate = options.require_rate("impulse", "rows", f64::INFINITY)?;
        Ok(ImpulseConfig {
            event_rate,
            message_count: options.take_parsed("message_count")?,
            event_time_interval: options.take_duration("event_time_interval")?,
        })
    }
}

/// The impulse table's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("timestamp", timestamp_type(), false),
        Field::new("counter", DataType::UInt64, false),
        Field::new("subtask_index", DataType::UInt64, false),
    ]))
}

pub struct ImpulseFactory {
    config: ImpulseConfig,
    /// Column indices to emit, then the event time.
    projection: Vec<usize>,
    schema: SchemaRef,
}

impl ImpulseFactory {
    pub fn new(config: ImpulseConfig, projection: Option<Vec<usize>>) -> Self {
        let full = schema();
        let projection = projection.unwrap_or_else(|| (0..full.fields().len()).collect());
        let visible = full
            .project(&projection)
            .expect("projection within the impulse schema");
        ImpulseFactory {
            config,
            projection,
            schema: with_timestamp(&visible),
        }
    }
}

impl SourceFactory for ImpulseFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        Ok(Box::new(Impulse {
            config: self.config.clone(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            pos: CounterState::new(info.subtask as u64, info.parallelism as u64, None),
        }))
    }
}

struct Impulse {
    config: ImpulseConfig,
    projection: Vec<usize>,
    schema: SchemaRef,
    /// Where it is: the next counter, and (with `event_time_interval`) the event time of
    /// counter 0, set at the first start.
    pos: CounterState,
}

impl Impulse {
    /// How many rows this subtask emits in total (None: unbounded).
    fn own_count(&self) -> Option<u64> {
        self.config.message_count.map(|total| {
            let (p, i) = (self.pos.parallelism, self.pos.subtask);
            total / p + u64::from(total % p > i)
        })
    }

    /// The counters of this subtask's positions `first..first + rows`, less those an earlier
    /// run emitted.
    fn counters(&self, first: u64, rows: u64) -> Vec<u64> {
        (first..first + rows)
            .map(|k| self.pos.counter(k))
            .filter(|c| !self.pos.emitted_before(*c))
            .collect()
    }

    fn batch(&self, first: u64, rows: u64, start_time: i64) -> Result<RecordBatch, ArrowError> {
        let counters = self.counters(first, rows);
        let rows = counters.len() as u64;
        let times: Vec<i64> = match self.config.event_time_interval {
            Some(interval) => counters
                .iter()
                .map(|c| start_time + (*c as i64) * interval.as_nanos() as i64)
                .collect(),
            None => vec![now_nanos(); rows as usize],
        };
        let times: ArrayRef = Arc::new(TimestampNanosecondArray::from(times));
        let all: [ArrayRef; 3] = [
            times.clone(),
            Arc::new(UInt64Array::from(counters)),
            Arc::new(UInt64Array::from(vec![self.pos.subtask; rows as usize])),
        ];
        let mut columns: Vec<ArrayRef> = self.projection.iter().map(|&i| all[i].clone()).collect();
        columns.push(times);
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[async_trait]
impl Source for Impulse {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        let rate = self.config.event_rate / self.pos.parallelism as f64;
        let total = self.own_count();
        let start = Instant::now();
        let start_time = *self.pos.start_time.get_or_insert_with(now_nanos);
        // Positions passed in this run, for the rate.
        let mut produced: u64 = 0;
        loop {
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            if let Some(end) = ctx.checkpoint_if_due(|| self.snapshot()).await? {
                return Ok(end);
            }
            if total.is_some_and(|t| self.pos.next >= t) {
                return Ok(SourceEnd::Finished);
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            let mut rows = due.saturating_sub(produced).min(BATCH_ROWS);
            if let Some(t) = total {
                rows = rows.min(t - self.pos.next);
            }
            if rows == 0 {
                let next = start + Duration::from_secs_f64((produced + 1) as f64 / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = ctx.stopped() => {}
                }
                continue;
            }
            let batch = self
                .batch(self.pos.next, rows, start_time)
                .map_err(TaskError::batch(&ctx.info().node))?;
            self.pos.next += rows;
            produced += rows;
            if batch.num_rows() == 0 {
                continue;
            }
            let newest = batch
                .column(batch.num_columns() - 1)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .and_then(|a| a.values().iter().max().copied())
                .unwrap_or_default();
            ctx.collect(batch).await?;
            ctx.watermark(newest - WATERMARK_DELAY).await?;
        }
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        self.pos.snapshot()
    }

    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if let Some(pos) = CounterState::restore(state, self.pos.subtask, self.pos.parallelism)? {
            self.pos = pos;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impulse(subtask: u64, parallelism: u64, count: u64) -> Impulse {
        Impulse {
            config: ImpulseConfig {
                event_rate: 1000.0,
                message_count: Some(count),
                event_time_interval: Some(Duration::from_millis(10)),
            },
            projection: vec![0, 1, 2],
            schema: with_timestamp(&schema()),
            pos: CounterState::new(subtask, parallelism, None),
        }
    }

    fn emit(s: &mut Impulse, rows: u64) -> Vec<u64> {
        let rows = rows.min(s.own_count().unwrap() - s.pos.next);
        let b = s.batch(s.pos.next, rows, 0).unwrap();
        s.pos.next += rows;
        let c = b.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
        c.values().to_vec()
    }

    fn restored(subtasks: &[Impulse]) -> RestoredState {
        RestoredState {
            parallelism: subtasks.len(),
            subtasks: subtasks.iter().map(|s| s.snapshot().unwrap()).collect(),
            watermark: None,
            epoch: 1,
        }
    }

    #[test]
    fn a_restore_at_another_parallelism_emits_every_counter_once() {
        // 3 subtasks get uneven distances in, then 2 take over, then 4.
        let mut seen = Vec::new();
        let mut old: Vec<Impulse> = (0..3).map(|i| impulse(i, 3, 100)).collect();
        for (i, s) in old.iter_mut().enumerate() {
            seen.extend(emit(s, 3 + 4 * i as u64));
        }
        let state = restored(&old);
        let mut mid: Vec<Impulse> = (0..2).map(|i| impulse(i, 2, 100)).collect();
        for (i, s) in mid.iter_mut().enumerate() {
            s.restore(&state).unwrap();
            seen.extend(emit(s, 5 + 9 * i as u64));
        }
        let state = restored(&mid);
        for i in 0..4 {
            let mut s = impulse(i, 4, 100);
            s.restore(&state).unwrap();
            seen.extend(emit(&mut s, 100));
        }
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<u64>>());
    }

    #[test]
    fn subtasks_split_the_counters_exactly() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let s = impulse(i, 3, 10);
            let n = s.own_count().unwrap();
            let b = s.batch(0, n, 0).unwrap();
            let c = b.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
            seen.extend(c.values().iter().copied());
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<u64>>());
    }

    #[test]
    fn event_time_follows_the_interval() {
        let s = impulse(0, 1, 3);
        let b = s.batch(0, 3, 1_000).unwrap();
        let t = b
            .column(3)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(t.values().to_vec(), vec![1_000, 10_001_000, 20_001_000]);
    }
}
