//! Kafka records to rows: the payloads decoded by the engine's decoders (arrow-json for
//! `json`, the Debezium envelope for `debezium_json`, the text itself for `raw_string`), the
//! metadata columns filled from the records, virtual columns computed, then the event time
//! (the event-time column, or the record's timestamp) and each partition's watermark.
//!
//! A batch of records is decoded in one pass; only when it holds a bad record is it decoded
//! again record by record, to fail naming the record or to drop it (`bad_data`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use rdkafka::Message;
use tracing::warn;

use super::KafkaError;
use crate::connector::debezium;
use crate::connector::lines::{BadData, LineFormat};
use crate::connector::{EventTimeSpec, MetadataColumn};
use crate::task::{NodeCounters, timestamp_type, with_timestamp, with_updating};

/// How far the default watermark trails the newest event time.
const DEFAULT_DELAY: i64 = 1_000_000_000;

/// What a metadata column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataField {
    /// `offset_id`: the record's offset.
    Offset,
    Partition,
    Topic,
    /// The record's timestamp (milliseconds).
    Timestamp,
    /// The record's key, as bytes.
    Key,
}

impl MetadataField {
    /// The field named in `METADATA FROM '<key>'`, and the type it is read as.
    pub fn parse(key: &str) -> Option<(MetadataField, DataType)> {
        Some(match key {
            "offset_id" => (MetadataField::Offset, DataType::Int64),
            "partition" => (MetadataField::Partition, DataType::Int32),
            "topic" => (MetadataField::Topic, DataType::Utf8),
            "timestamp" => (
                MetadataField::Timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            "key" => (MetadataField::Key, DataType::Binary),
            _ => return None,
        })
    }
}

/// Records read but not emitted yet.
#[derive(Default)]
pub(super) struct Records {
    /// Every payload, each followed by a newline.
    payloads: Vec<u8>,
    /// Where each payload ends in `payloads` (before its newline).
    ends: Vec<usize>,
    pub partitions: Vec<i32>,
    pub offsets: Vec<i64>,
    /// Milliseconds since the epoch.
    timestamps: Vec<Option<i64>>,
    /// Kept only when a metadata column wants them.
    keys: Vec<Option<Vec<u8>>>,
}

impl Records {
    pub fn push(&mut self, message: &impl Message, keep_key: bool) {
        if let Some(payload) = message.payload() {
            self.payloads.extend_from_slice(payload);
        }
        self.ends.push(self.payloads.len());
        self.payloads.push(b'\n');
        self.partitions.push(message.partition());
        self.offsets.push(message.offset());
        self.timestamps.push(message.timestamp().to_millis());
        if keep_key {
            self.keys.push(message.key().map(<[u8]>::to_vec));
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.payloads.clear();
        self.ends.clear();
        self.partitions.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.keys.clear();
    }

    fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.payloads[start..self.ends[i]]
    }
}

/// Decoded rows: the output batch, and per partition the newest watermark its rows give.
pub(super) struct Rows {
    pub batch: RecordBatch,
    pub watermarks: BTreeMap<i32, i64>,
}

/// Payload columns of some records: rows, the retraction flags of Debezium changes, and the
/// record each row came from.
struct Payload {
    rows: RecordBatch,
    retract: Option<BooleanArray>,
    source: Vec<u32>,
}

/// How a source table's rows are made from its topic's records.
pub(super) struct RowSpec {
    pub topic: String,
    pub format: LineFormat,
    pub bad_data: BadData,
    /// The table's columns.
    schema: SchemaRef,
    /// The columns decoded from payloads, in table order.
    payload: SchemaRef,
    metadata: Vec<(usize, MetadataField)>,
    generated: crate::connector::Generated,
    event_time: EventTimeSpec,
    projection: Vec<usize>,
    out_schema: SchemaRef,
}

impl RowSpec {
    pub fn new(
        config: &super::KafkaConfig,
        table: &crate::connector::ConnectorTable,
        projection: Option<Vec<usize>>,
    ) -> RowSpec {
        let schema = table.schema.clone();
        let metadata: Vec<(usize, MetadataField)> = table
            .metadata
            .iter()
            .filter_map(|MetadataColumn { index, key }| {
                MetadataField::parse(key).map(|(f, _)| (*index, f))
            })
            .collect();
        let payload: Vec<usize> = (0..schema.fields().len())
            .filter(|i| {
                !table.generated.iter().any(|(g, _)| g == i)
                    && !metadata.iter().any(|(m, _)| m == i)
            })
            .collect();
        let projection = projection.unwrap_or_else(|| (0..schema.fields().len()).collect());
        let visible = schema
            .project(&projection)
            .expect("projection within the table");
        RowSpec {
            topic: config.topic.clone(),
            format: config.format,
            bad_data: config.bad_data,
            payload: Arc::new(schema.project(&payload).expect("payload columns")),
            out_schema: if config.updating() {
                with_updating(&visible)
            } else {
                with_timestamp(&visible)
            },
            schema,
            metadata,
            generated: table.generated.clone(),
            event_time: table.event_time.clone(),
            projection,
        }
    }

    /// Whether records must keep their keys.
    pub fn wants_keys(&self) -> bool {
        self.metadata.iter().any(|(_, f)| *f == MetadataField::Key)
    }

    fn rows_error(source: ArrowError) -> KafkaError {
        KafkaError::Arrow {
            what: "rows",
            source,
        }
    }

    /// Decodes `records`; None when every record was dropped. Records dropped under
    /// `bad_data = 'drop'` are counted in `counters`.
    pub fn decode(
        &self,
        records: &Records,
        counters: &NodeCounters,
    ) -> Result<Option<Rows>, KafkaError> {
        let payload = match self.decode_all(records, 0..records.len()) {
            Ok(p) => p,
            Err(_) => self.decode_each(records, counters)?,
        };
        if payload.rows.num_rows() == 0 {
            return Ok(None);
        }
        let source = UInt32Array::from(payload.source);
        let table = self.with_metadata_and_generated(&payload.rows, records, &source)?;
        self.finish(table, payload.retract, records, source, counters)
    }

    /// Decodes the payloads of `range` in one pass; Err when one is bad.
    fn decode_all(
        &self,
        records: &Records,
        range: std::ops::Range<usize>,
    ) -> Result<Payload, ArrowError> {
        let count = range.len();
        if count == 0 {
            return Ok(Payload {
                rows: RecordBatch::new_empty(self.payload.clone()),
                retract: None,
                source: vec![],
            });
        }
        if self.format == LineFormat::Raw {
            let texts: StringArray = range
                .clone()
                .map(|i| Some(String::from_utf8_lossy(records.payload(i)).into_owned()))
                .collect();
            let rows = RecordBatch::try_new(self.payload.clone(), vec![Arc::new(texts)])?;
            return Ok(Payload {
                rows,
                retract: None,
                source: range.map(|i| i as u32).collect(),
            });
        }
        if range.clone().any(|i| records.payload(i).is_empty()) {
            return Err(ArrowError::JsonError("the record has no value".into()));
        }
        let schema = match self.format {
            LineFormat::Debezium => debezium::envelope(&self.payload),
            _ => self.payload.clone(),
        };
        let mut decoder = ReaderBuilder::new(schema)
            .with_batch_size(count.max(1) + 1)
            .with_strict_mode(false)
            .build_decoder()?;
        let start = if range.start == 0 {
            0
        } else {
            records.ends[range.start - 1] + 1
        };
        let bytes = &records.payloads[start..records.ends[range.end - 1] + 1];
        let mut read = 0;
        while read < bytes.len() {
            let n = decoder.decode(&bytes[read..])?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let decoded = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(decoder_schema(self)));
        if decoded.num_rows() != count {
            return Err(ArrowError::JsonError(format!(
                "{count} records gave {} JSON values",
                decoded.num_rows()
            )));
        }
        if self.format != LineFormat::Debezium {
            return Ok(Payload {
                rows: decoded,
                retract: None,
                source: range.map(|i| i as u32).collect(),
            });
        }
        let (rows, retract) = debezium::changes(&decoded, &self.payload)?;
        // An update gives two rows (retraction, insert); every other change one.
        let ops = decoded
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| ArrowError::JsonError("op must be a string".into()))?;
        let mut source = Vec::with_capacity(rows.num_rows());
        for (i, record) in range.enumerate() {
            let n = if ops.value(i) == "u" { 2 } else { 1 };
            source.extend(std::iter::repeat_n(record as u32, n));
        }
        Ok(Payload {
            rows,
            retract: Some(retract),
            source,
        })
    }

    /// The slow path: record by record, failing on or dropping the bad ones.
    fn decode_each(
        &self,
        records: &Records,
        counters: &NodeCounters,
    ) -> Result<Payload, KafkaError> {
        let mut parts = Vec::new();
        let mut dropped = 0;
        let mut first_bad: Option<(usize, String)> = None;
        for i in 0..records.len() {
            match self.decode_all(records, i..i + 1) {
                Ok(p) => parts.push(p),
                Err(source) => {
                    if self.bad_data == BadData::Fail {
                        return Err(KafkaError::BadRecord {
                            topic: self.topic.clone(),
                            partition: records.partitions[i],
                            offset: records.offsets[i],
                            source,
                        });
                    }
                    let reason = source.to_string();
                    dropped += 1;
                    first_bad.get_or_insert((i, reason));
                }
            }
        }
        if let Some((i, reason)) = first_bad {
            counters.bad(dropped);
            warn!(topic = %self.topic, partition = records.partitions[i], offset = records.offsets[i], %reason, dropped, "bad_data = 'drop': records dropped");
        }
        let rows: Vec<RecordBatch> = parts.iter().map(|p| p.rows.clone()).collect();
        let schema = self.payload.clone();
        let retract = (self.format == LineFormat::Debezium).then(|| {
            parts
                .iter()
                .flat_map(|p| p.retract.iter().flat_map(|r| r.iter()))
                .collect::<BooleanArray>()
        });
        Ok(Payload {
            rows: concat_batches(&schema, &rows).map_err(Self::rows_error)?,
            retract,
            source: parts.into_iter().flat_map(|p| p.source).collect(),
        })
    }

    /// The table's columns: the payload's, the metadata columns (taken from each row's
    /// record), then the virtual columns computed over the others.
    fn with_metadata_and_generated(
        &self,
        payload: &RecordBatch,
        records: &Records,
        source: &UInt32Array,
    ) -> Result<RecordBatch, KafkaError> {
        let rows = payload.num_rows();
        let mut payload_columns = payload.columns().iter();
        let mut stored_fields = Vec::new();
        let mut stored = Vec::new();
        for (i, field) in self.schema.fields().iter().enumerate() {
            if self.generated.iter().any(|(g, _)| *g == i) {
                continue;
            }
            let column = match self.metadata.iter().find(|(m, _)| *m == i) {
                Some((_, f)) => {
                    let all = self.metadata_column(*f, records);
                    let picked = take(all.as_ref(), source, None).map_err(Self::rows_error)?;
                    cast(&picked, field.data_type()).map_err(Self::rows_error)?
                }
                None => payload_columns.next().expect("a payload column").clone(),
            };
            stored_fields.push(field.as_ref().clone());
            stored.push(column);
        }
        let stored_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(stored_fields));
        let stored = RecordBatch::try_new(stored_schema, stored).map_err(Self::rows_error)?;
        if self.generated.is_empty() {
            return Ok(stored);
        }
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        let mut stored_columns = stored.columns().iter();
        for (i, field) in self.schema.fields().iter().enumerate() {
            match self.generated.iter().find(|(g, _)| *g == i) {
                Some((_, expr)) => {
                    let value = expr
                        .evaluate(&stored)
                        .and_then(|v| v.into_array(rows))
                        .map_err(|source| KafkaError::Expression {
                            what: format!("column '{}'", field.name()),
                            source,
                        })?;
                    columns.push(cast(&value, field.data_type()).map_err(Self::rows_error)?);
                }
                None => columns.push(stored_columns.next().expect("a stored column").clone()),
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(Self::rows_error)
    }

    /// A metadata field for every record.
    fn metadata_column(&self, field: MetadataField, records: &Records) -> ArrayRef {
        match field {
            MetadataField::Offset => Arc::new(Int64Array::from(records.offsets.clone())),
            MetadataField::Partition => Arc::new(Int32Array::from(records.partitions.clone())),
            MetadataField::Topic => {
                Arc::new(StringArray::from(vec![self.topic.as_str(); records.len()]))
            }
            MetadataField::Timestamp => {
                Arc::new(TimestampMillisecondArray::from(records.timestamps.clone()))
            }
            MetadataField::Key => Arc::new(BinaryArray::from_iter(records.keys.iter())),
        }
    }

    /// Adds the event time (and the retraction flag), computes each partition's watermark
    /// and projects.
    fn finish(
        &self,
        mut table: RecordBatch,
        mut retract: Option<BooleanArray>,
        records: &Records,
        mut source: UInt32Array,
        counters: &NodeCounters,
    ) -> Result<Option<Rows>, KafkaError> {
        let mut times = self.event_times(&table, records, &source)?;
        if times.null_count() > 0 {
            let first = (0..times.len()).find(|i| times.is_null(*i)).unwrap_or(0);
            let record = source.value(first) as usize;
            let what = match self.event_time.field {
                Some(i) => format!("column '{}' is null", self.schema.field(i).name()),
                None => "the record has no timestamp".to_string(),
            };
            if self.bad_data == BadData::Fail {
                return Err(KafkaError::BadRecord {
                    topic: self.topic.clone(),
                    partition: records.partitions[record],
                    offset: records.offsets[record],
                    source: ArrowError::ComputeError(format!("no event time: {what}")),
                });
            }
            let keep = datafusion::arrow::compute::is_not_null(&times).map_err(Self::rows_error)?;
            let dropped = table.num_rows() - keep.true_count();
            counters.bad(dropped as u64);
            warn!(topic = %self.topic, partition = records.partitions[record], offset = records.offsets[record], dropped, "bad_data = 'drop': rows without an event time dropped");
            let filter = |a: &dyn Array| {
                datafusion::arrow::compute::filter(a, &keep).map_err(Self::rows_error)
            };
            table = datafusion::arrow::compute::filter_record_batch(&table, &keep)
                .map_err(Self::rows_error)?;
            source = filter(&source)?
                .as_any()
                .downcast_ref::<UInt32Array>()
                .expect("indices")
                .clone();
            if let Some(r) = &retract {
                retract = filter(r)?.as_any().downcast_ref::<BooleanArray>().cloned();
            }
            times = filter(&times)?
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .expect("times")
                .clone();
            if table.num_rows() == 0 {
                return Ok(None);
            }
        }
        let marks = match &self.event_time.watermark {
            None => times.clone(),
            Some(expr) => {
                let value = expr
                    .evaluate(&table)
                    .and_then(|v| v.into_array(table.num_rows()))
                    .map_err(|source| KafkaError::Expression {
                        what: "the watermark".into(),
                        source,
                    })?;
                cast(&value, &timestamp_type())
                    .map_err(Self::rows_error)?
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .expect("cast to a nanosecond timestamp")
                    .clone()
            }
        };
        let delay = if self.event_time.watermark.is_none() {
            DEFAULT_DELAY
        } else {
            0
        };
        let mut watermarks: BTreeMap<i32, i64> = BTreeMap::new();
        for (row, mark) in marks.iter().enumerate() {
            let Some(mark) = mark else { continue };
            let partition = records.partitions[source.value(row) as usize];
            let w = watermarks.entry(partition).or_insert(i64::MIN);
            *w = (*w).max(mark.saturating_sub(delay));
        }
        let mut columns: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|&i| table.column(i).clone())
            .collect();
        if let Some(r) = retract {
            columns.push(Arc::new(r));
        }
        columns.push(Arc::new(times));
        let batch =
            RecordBatch::try_new(self.out_schema.clone(), columns).map_err(Self::rows_error)?;
        Ok(Some(Rows { batch, watermarks }))
    }

    /// The event time of each row: its event-time column, or its record's timestamp.
    fn event_times(
        &self,
        table: &RecordBatch,
        records: &Records,
        source: &UInt32Array,
    ) -> Result<TimestampNanosecondArray, KafkaError> {
        let column = match self.event_time.field {
            Some(i) => cast(table.column(i), &timestamp_type()).map_err(Self::rows_error)?,
            None => {
                let millis = TimestampMillisecondArray::from(records.timestamps.clone());
                let picked = take(&millis, source, None).map_err(Self::rows_error)?;
                cast(&picked, &timestamp_type()).map_err(Self::rows_error)?
            }
        };
        Ok(column
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("cast to a nanosecond timestamp")
            .clone())
    }
}

/// The schema a decoder of `spec`'s format produces.
fn decoder_schema(spec: &RowSpec) -> SchemaRef {
    match spec.format {
        LineFormat::Debezium => debezium::envelope(&spec.payload),
        _ => spec.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn record(partition: i32, offset: i64, payload: &str) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.as_bytes().to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::CreateTime(1_000 + offset),
            partition,
            offset,
            None,
        )
    }

    fn spec(format: LineFormat, bad_data: BadData) -> RowSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("p", DataType::Int32, true),
            Field::new("k", DataType::Utf8, true),
        ]));
        RowSpec {
            topic: "t".into(),
            format,
            bad_data,
            payload: Arc::new(schema.project(&[0]).unwrap()),
            metadata: vec![(1, MetadataField::Partition), (2, MetadataField::Key)],
            generated: vec![],
            event_time: EventTimeSpec::default(),
            projection: vec![0, 1, 2],
            out_schema: if format == LineFormat::Debezium {
                with_updating(&schema)
            } else {
                with_timestamp(&schema)
            },
            schema,
        }
    }

    fn column<T: Array + 'static>(rows: &Rows, i: usize) -> &T {
        rows.batch.column(i).as_any().downcast_ref::<T>().unwrap()
    }

    fn records(items: &[(i32, i64, &str)]) -> Records {
        let mut r = Records::default();
        for (p, o, payload) in items {
            r.push(&record(*p, *o, payload), true);
        }
        r
    }

    #[test]
    fn json_records_with_metadata_and_per_partition_watermarks() {
        let s = spec(LineFormat::Json, BadData::Fail);
        let r = records(&[
            (0, 5, r#"{"n":1}"#),
            (1, 9, r#"{"n":2}"#),
            (0, 6, r#"{"n":3}"#),
        ]);
        let rows = s.decode(&r, &NodeCounters::default()).unwrap().unwrap();
        assert_eq!(rows.batch.num_rows(), 3);
        let p = column::<Int32Array>(&rows, 1);
        assert_eq!(p.values().to_vec(), vec![0, 1, 0]);
        let k = column::<StringArray>(&rows, 2);
        assert_eq!(k.value(0), "k");
        // Record timestamps 1005..1009 ms, less the default second.
        assert_eq!(rows.watermarks[&0], 1_006_000_000 - DEFAULT_DELAY);
        assert_eq!(rows.watermarks[&1], 1_009_000_000 - DEFAULT_DELAY);
    }

    #[test]
    fn a_bad_record_fails_naming_it_or_is_dropped() {
        let items = [(0, 1, r#"{"n":1}"#), (2, 7, "not json"), (0, 2, "")];
        let counters = NodeCounters::default();
        let err = spec(LineFormat::Json, BadData::Fail)
            .decode(&records(&items), &counters)
            .err()
            .unwrap();
        let err = crate::task::error_chain(&err);
        assert!(err.contains("partition 2 offset 7"), "{err}");
        let rows = spec(LineFormat::Json, BadData::Drop)
            .decode(&records(&items), &counters)
            .unwrap()
            .unwrap();
        assert_eq!(rows.batch.num_rows(), 1);
        // The dropped records are counted (issue 12: `status` and metrics show them).
        assert!(counters.read().bad_rows >= 1, "{:?}", counters.read());
    }

    #[test]
    fn debezium_updates_repeat_their_record_metadata() {
        let s = spec(LineFormat::Debezium, BadData::Fail);
        let r = records(&[
            (3, 1, r#"{"before":null,"after":{"n":1},"op":"c"}"#),
            (1, 2, r#"{"before":{"n":1},"after":{"n":2},"op":"u"}"#),
        ]);
        let rows = s.decode(&r, &NodeCounters::default()).unwrap().unwrap();
        assert_eq!(rows.batch.num_rows(), 3);
        let p = column::<Int32Array>(&rows, 1);
        assert_eq!(p.values().to_vec(), vec![3, 1, 1]);
        let retract = column::<BooleanArray>(&rows, 3);
        assert_eq!(
            retract.iter().flatten().collect::<Vec<_>>(),
            vec![false, true, false]
        );
    }
}
