//! The Kafka sink: rows to records (the value in the table's format, the key from
//! `sink.key_field`, the timestamp from `sink.timestamp_field` or the event time), written
//! at-least-once or exactly-once (the protocol is in the module above).
//!
//! The producer is made at the first call, not in the factory: the start-up check, the
//! fencing of older runs and the recovery of a restored checkpoint all wait on the broker,
//! and run on the blocking pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::client::{self, KafkaContext, blocking, broker_error};
use super::{Connection, KafkaConfig, KafkaError, Role, SinkOptions};
use crate::connector::lines::LineFormat;
use crate::connector::{ConnectorError, ConnectorTable};
use crate::failpoint::crash_point;
use crate::task::{
    Collector, Operator, OperatorFactory, RestoredState, TaskError, TaskInfo, TaskState,
};

/// The state table of an exactly-once sink: the records not known to be committed.
const RECORDS: &str = "kafka_records";
/// librdkafka's transaction timeout unless `client_configs` sets one: long enough for slow
/// checkpoints, short enough that a broker aborts a lost transaction on its own.
const TRANSACTION_TIMEOUT_MS: &str = "600000";

type KafkaProducer = ThreadedProducer<KafkaContext>;

/// The schema records are kept in: key, value, timestamp (milliseconds).
fn record_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, false),
        Field::new("timestamp", DataType::Int64, true),
    ]))
}

pub struct KafkaSinkFactory {
    config: KafkaConfig,
    options: SinkOptions,
    /// The input is an updating stream (a retraction flag before the event time).
    updating: bool,
}

impl KafkaSinkFactory {
    pub fn new(
        table: &ConnectorTable,
        config: &KafkaConfig,
        updating: bool,
    ) -> Result<Self, ConnectorError> {
        let Role::Sink(options) = &config.role else {
            return Err(ConnectorError::Usage(format!(
                "table '{}' is a source and cannot be written to",
                table.name
            )));
        };
        if updating && config.format != LineFormat::Debezium {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window): its format must be 'debezium_json'",
                table.name
            )));
        }
        Ok(KafkaSinkFactory {
            config: config.clone(),
            options: options.clone(),
            updating,
        })
    }
}

impl OperatorFactory for KafkaSinkFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        Ok(Box::new(KafkaSink {
            ids: Ids {
                pipeline: info.job.pipeline.clone(),
                node: info.node.clone(),
            },
            subtask: info.subtask,
            parallelism: info.parallelism,
            checkpointing: info.checkpointing,
            config: self.config.clone(),
            options: self.options.clone(),
            hidden: if self.updating { 2 } else { 1 },
            producer: None,
            marker: None,
            sealed: Vec::new(),
            current: Vec::new(),
            in_transaction: false,
            inherited: None,
        }))
    }
}

/// Names of what a sink subtask owns on the broker.
struct Ids {
    pipeline: String,
    node: String,
}

impl Ids {
    /// The stable `transactional.id` of sink subtask `subtask`.
    fn transactional(&self, subtask: usize) -> String {
        format!("arroyod-{}-{}-{subtask}", self.pipeline, self.node)
    }

    /// The consumer group that holds the epoch marker of sink subtask `subtask`.
    fn marker_group(&self, subtask: usize) -> String {
        format!("arroyod-{}-{}-{subtask}-sink", self.pipeline, self.node)
    }
}

/// Records of one batch, and whether they are in the open transaction yet.
struct Chunk {
    records: RecordBatch,
    sent: bool,
}

/// What a restore handed this subtask: the checkpoint's epoch, and for every old subtask it
/// inherits, the records that old subtask had not committed.
struct Inherited {
    epoch: u64,
    old: Vec<(usize, Vec<RecordBatch>)>,
}

/// The producer of a sink subtask and what its context saw.
#[derive(Clone)]
struct Client {
    producer: KafkaProducer,
    context: Arc<KafkaContext>,
}

struct KafkaSink {
    ids: Ids,
    subtask: usize,
    parallelism: usize,
    checkpointing: bool,
    config: KafkaConfig,
    options: SinkOptions,
    hidden: usize,
    producer: Option<Client>,
    /// Exactly-once: the consumer of this subtask's marker group.
    marker: Option<Arc<BaseConsumer<KafkaContext>>>,
    /// Exactly-once: records before the last barrier, not committed yet.
    sealed: Vec<Chunk>,
    /// Exactly-once: records since the last barrier.
    current: Vec<Chunk>,
    in_transaction: bool,
    /// A restore not acted on yet.
    inherited: Option<Inherited>,
}

impl KafkaSink {
    fn fail(&self, e: KafkaError) -> TaskError {
        TaskError::connector(&self.ids.node, e)
    }

    fn exactly_once(&self) -> bool {
        self.options.exactly_once
    }

    fn client_name(&self, subtask: usize) -> String {
        format!("{}#{subtask} producer", self.ids.node)
    }

    /// The producer, made (and the broker checked, older runs fenced, a restore recovered)
    /// at the first call.
    async fn client(&mut self) -> Result<Client, KafkaError> {
        if let Some(client) = &self.producer {
            return Ok(client.clone());
        }
        let connection = self.config.connection.clone();
        let topic = self.config.topic.clone();
        let name = self.client_name(self.subtask);
        {
            let (connection, topic, name) = (connection.clone(), topic.clone(), name.clone());
            let abandoned = client::Abandoned::default();
            let flag = abandoned.flag();
            blocking(move || {
                let probe =
                    client::consumer(&connection, format!("{name} (start)"), "arroyod-probe", &[])?;
                client::partitions(&probe, &connection, &topic, &flag).map(|_| ())
            })
            .await?;
        }
        let client = if self.exactly_once() {
            let own = transactional(
                &connection,
                &topic,
                name,
                self.ids.transactional(self.subtask),
            )
            .await?;
            let marker = marker_consumer(&connection, &self.ids, self.subtask).await?;
            self.marker = Some(marker.clone());
            self.recover(&own, &marker).await?;
            own
        } else {
            let context = KafkaContext::new(name, &connection);
            let producer: KafkaProducer = client::base_config(&connection, &[])
                .create_with_context(context)
                .map_err(|source| KafkaError::Client {
                    broker: connection.bootstrap.clone(),
                    source: Box::new(source),
                })?;
            Client {
                context: producer.context().clone(),
                producer,
            }
        };
        info!(node = %self.ids.node, subtask = self.subtask, topic = %topic, exactly_once = self.exactly_once(), "kafka sink connected");
        self.producer = Some(client.clone());
        Ok(client)
    }

    /// After a restore: fences every old subtask this one inherits and sends again, in a
    /// new transaction, the records of those whose marker says they were never committed.
    async fn recover(
        &mut self,
        own: &Client,
        own_marker: &Arc<BaseConsumer<KafkaContext>>,
    ) -> Result<(), KafkaError> {
        let Some(inherited) = self.inherited.take() else {
            return Ok(());
        };
        let connection = self.config.connection.clone();
        let topic = self.config.topic.clone();
        for (old, batches) in inherited.old {
            let (client, marker) = if old == self.subtask {
                (own.clone(), own_marker.clone())
            } else {
                // Initialising its id aborts what a zombie of that subtask left open.
                let client = transactional(
                    &connection,
                    &topic,
                    self.client_name(old),
                    self.ids.transactional(old),
                )
                .await?;
                (client, marker_consumer(&connection, &self.ids, old).await?)
            };
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if rows == 0 {
                continue;
            }
            let committed = read_marker(&connection, &topic, &marker).await?;
            if committed.is_some_and(|m| m > inherited.epoch) {
                info!(node = %self.ids.node, subtask = self.subtask, old, epoch = inherited.epoch, rows, "the restored checkpoint's records were committed before the restart");
                continue;
            }
            client.producer.begin_transaction().map_err(broker_error(
                &connection,
                &topic,
                "beginning a transaction",
            ))?;
            for batch in &batches {
                send(&client, &topic, batch).await?;
            }
            commit(&connection, &topic, &client, &marker, Some(inherited.epoch)).await?;
            info!(node = %self.ids.node, subtask = self.subtask, old, epoch = inherited.epoch, rows, "sent again the records of the restored checkpoint that were never committed");
        }
        Ok(())
    }

    /// Rows to records: key, value, timestamp.
    fn records(&self, batch: &RecordBatch) -> Result<RecordBatch, KafkaError> {
        let rows = batch.num_rows();
        let failed = KafkaError::arrow("records");
        let values: BinaryArray = match self.config.format {
            LineFormat::Raw => {
                let text = cast(batch.column(0), &DataType::Utf8).map_err(failed)?;
                let text = text.as_any().downcast_ref::<StringArray>().expect("text");
                text.iter()
                    .map(|t| Some(t.unwrap_or_default().as_bytes()))
                    .collect()
            }
            format => {
                let lines = crate::connector::sink::encode_rows(
                    batch,
                    self.hidden,
                    format == LineFormat::Debezium,
                )?;
                let mut values = BinaryBuilder::with_capacity(rows, lines.len());
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    values.append_value(line);
                }
                values.finish()
            }
        };
        let schema = batch.schema();
        let column = |option: &'static str,
                      name: &Option<String>|
         -> Result<Option<ArrayRef>, KafkaError> {
            let Some(name) = name else { return Ok(None) };
            match schema.index_of(name) {
                Ok(i) if i < batch.num_columns() - self.hidden => Ok(Some(batch.column(i).clone())),
                _ => Err(KafkaError::Column {
                    option,
                    column: name.clone(),
                    topic: self.config.topic.clone(),
                }),
            }
        };
        let keys: ArrayRef = match column("sink.key_field", &self.options.key_field)? {
            Some(c) => {
                let text = cast(&c, &DataType::Utf8).map_err(failed)?;
                cast(&text, &DataType::Binary).map_err(failed)?
            }
            None => Arc::new(BinaryArray::new_null(rows)),
        };
        let time = match column("sink.timestamp_field", &self.options.timestamp_field)? {
            Some(c) => c,
            None => batch.column(batch.num_columns() - 1).clone(),
        };
        let millis = cast(&time, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .and_then(|t| cast(&t, &DataType::Int64))
            .map_err(failed)?;
        assert_eq!(values.len(), rows, "one record per row");
        RecordBatch::try_new(record_schema(), vec![keys, Arc::new(values), millis]).map_err(failed)
    }

    /// Exactly-once: begins a transaction if none is open.
    fn begin(&mut self, client: &Client) -> Result<(), KafkaError> {
        if !self.in_transaction {
            client.producer.begin_transaction().map_err(broker_error(
                &self.config.connection,
                &self.config.topic,
                "beginning a transaction",
            ))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Exactly-once: commits the sealed records, with the marker of `epoch` (None: a run
    /// without checkpoints), then starts the next transaction with what came since.
    async fn commit_sealed(&mut self, epoch: Option<u64>) -> Result<(), KafkaError> {
        if self.sealed.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        self.begin(&client)?;
        for chunk in self.sealed.iter_mut().filter(|c| !c.sent) {
            send(&client, &self.config.topic, &chunk.records).await?;
            chunk.sent = true;
        }
        let marker = self
            .marker
            .clone()
            .expect("exactly-once sinks have a marker consumer");
        crash_point!("kafka_sink_before_commit");
        commit(
            &self.config.connection,
            &self.config.topic,
            &client,
            &marker,
            epoch,
        )
        .await?;
        crash_point!("kafka_sink_after_commit");
        let rows: usize = self.sealed.iter().map(|c| c.records.num_rows()).sum();
        debug!(node = %self.ids.node, subtask = self.subtask, epoch, rows, "transaction committed");
        self.sealed.clear();
        self.in_transaction = false;
        if !self.current.is_empty() {
            self.begin(&client)?;
            for chunk in &mut self.current {
                send(&client, &self.config.topic, &chunk.records).await?;
                chunk.sent = true;
            }
        }
        Ok(())
    }

    /// Waits until every record sent is delivered; fails if one was not.
    async fn flush(&mut self) -> Result<(), KafkaError> {
        let client = self.client().await?;
        let producer = client.producer.clone();
        let (connection, topic) = (self.config.connection.clone(), self.config.topic.clone());
        blocking(move || {
            producer.flush(Timeout::Never).map_err(broker_error(
                &connection,
                &topic,
                "waiting for deliveries",
            ))
        })
        .await?;
        delivery_failed(&client, &self.config.connection, &self.config.topic)
    }
}

/// Fails if a delivery failed since the last check.
fn delivery_failed(
    client: &Client,
    connection: &Connection,
    topic: &str,
) -> Result<(), KafkaError> {
    match client.context.take_delivery_failure() {
        Some(reason) => Err(KafkaError::Delivery {
            broker: connection.bootstrap.clone(),
            topic: topic.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A transactional producer with id `id`, initialised: what a previous producer with that id
/// left open is aborted, and it can never commit again.
async fn transactional(
    connection: &Connection,
    topic: &str,
    name: String,
    id: String,
) -> Result<Client, KafkaError> {
    let (connection, topic) = (connection.clone(), topic.to_string());
    blocking(move || {
        let has_timeout = connection
            .settings
            .iter()
            .any(|(k, _)| k == "transaction.timeout.ms");
        let mut defaults = vec![("transactional.id", id.as_str())];
        if !has_timeout {
            defaults.push(("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS));
        }
        let producer: KafkaProducer = client::base_config(&connection, &defaults)
            .create_with_context(KafkaContext::new(name, &connection))
            .map_err(|source| KafkaError::Client {
                broker: connection.bootstrap.clone(),
                source: Box::new(source),
            })?;
        producer
            .init_transactions(connection.startup_timeout)
            .map_err(broker_error(
                &connection,
                &topic,
                format!("initialising transactions of '{id}'"),
            ))?;
        Ok(Client {
            context: producer.context().clone(),
            producer,
        })
    })
    .await
}

/// A consumer of the marker group of sink subtask `subtask` (never joins it).
async fn marker_consumer(
    connection: &Connection,
    ids: &Ids,
    subtask: usize,
) -> Result<Arc<BaseConsumer<KafkaContext>>, KafkaError> {
    let (connection, group) = (connection.clone(), ids.marker_group(subtask));
    let name = format!("{}#{subtask} marker", ids.node);
    blocking(move || client::consumer(&connection, name, &group, &[]).map(Arc::new)).await
}

/// The marker list: partition 0 of the topic at `offset`.
fn marker_list(topic: &str, offset: Offset) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, offset)
        .expect("a partition offset");
    list
}

/// The marker committed for a sink subtask: one more than the last epoch it committed.
async fn read_marker(
    connection: &Connection,
    topic: &str,
    marker: &Arc<BaseConsumer<KafkaContext>>,
) -> Result<Option<u64>, KafkaError> {
    let (connection, topic, marker) = (connection.clone(), topic.to_string(), marker.clone());
    blocking(move || {
        let list = marker
            .committed_offsets(
                marker_list(&topic, Offset::Invalid),
                connection.startup_timeout,
            )
            .map_err(broker_error(
                &connection,
                &topic,
                "reading a sink's epoch marker",
            ))?;
        Ok(list
            .elements()
            .first()
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .map(|o| o as u64))
    })
    .await
}

/// Sends the marker of `epoch` (if any) into the open transaction and commits it, retrying
/// what librdkafka says may be retried for up to the transaction timeout.
async fn commit(
    connection: &Connection,
    topic: &str,
    client: &Client,
    marker: &Arc<BaseConsumer<KafkaContext>>,
    epoch: Option<u64>,
) -> Result<(), KafkaError> {
    let (connection, topic, client, marker) = (
        connection.clone(),
        topic.to_string(),
        client.clone(),
        marker.clone(),
    );
    blocking(move || {
        let started = Instant::now();
        let limit = Duration::from_millis(TRANSACTION_TIMEOUT_MS.parse().expect("a number"));
        let retry = |e: &RdError| {
            matches!(e, RdError::Transaction(t) if t.is_retriable()) && started.elapsed() < limit
        };
        if let Some(epoch) = epoch {
            let metadata = marker
                .group_metadata()
                .ok_or(KafkaError::NoGroupMetadata)?;
            let list = marker_list(&topic, Offset::Offset(epoch as i64 + 1));
            loop {
                match client
                    .producer
                    .send_offsets_to_transaction(&list, &metadata, Duration::from_secs(30))
                {
                    Ok(()) => break,
                    Err(e) if retry(&e) => {
                        warn!(topic = %topic, error = %e, "sending a sink's epoch marker failed; retrying");
                    }
                    Err(e) => {
                        return Err(broker_error(&connection, &topic, "sending a sink's epoch marker")(e));
                    }
                }
            }
        }
        loop {
            match client.producer.commit_transaction(Duration::from_secs(30)) {
                Ok(()) => break,
                Err(e) if retry(&e) => {
                    warn!(topic = %topic, error = %e, "committing a transaction failed; retrying");
                }
                Err(e) => return Err(broker_error(&connection, &topic, "committing a transaction")(e)),
            }
        }
        delivery_failed(&client, &connection, &topic)
    })
    .await
}

/// Sends every record of `records` (waiting while librdkafka's queue is full).
async fn send(client: &Client, topic: &str, records: &RecordBatch) -> Result<(), KafkaError> {
    let keys = records
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("binary keys");
    let values = records
        .column(1)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("binary values");
    let times = records
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("millisecond timestamps");
    for i in 0..records.num_rows() {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(values.value(i));
        if keys.is_valid(i) {
            record = record.key(keys.value(i));
        }
        if times.is_valid(i) {
            record = record.timestamp(times.value(i));
        }
        let mut pause = Duration::from_millis(1);
        loop {
            match client.producer.send(record) {
                Ok(()) => break,
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err((e, _)) => {
                    return Err(KafkaError::Delivery {
                        broker: client.context.broker().to_string(),
                        topic: topic.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Operator for KafkaSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        let records = self.records(&batch).map_err(|e| self.fail(e))?;
        let client = self.client().await.map_err(|e| self.fail(e))?;
        if !self.exactly_once() {
            send(&client, &self.config.topic, &records)
                .await
                .and_then(|()| {
                    delivery_failed(&client, &self.config.connection, &self.config.topic)
                })
                .map_err(|e| self.fail(e))?;
            return Ok(());
        }
        // Records wait while an older checkpoint's transaction is not committed yet.
        let sent = self.sealed.is_empty();
        if sent {
            if let Err(e) = self.begin(&client) {
                return Err(self.fail(e));
            }
            if let Err(e) = send(&client, &self.config.topic, &records).await {
                return Err(self.fail(e));
            }
        }
        self.current.push(Chunk { records, sent });
        Ok(())
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        if self.exactly_once() && !self.checkpointing {
            // No checkpoint will complete: everything commits now.
            self.sealed.append(&mut self.current);
            return self.commit_sealed(None).await.map_err(|e| self.fail(e));
        }
        self.flush().await.map_err(|e| self.fail(e))
    }

    /// At-least-once: every record sent is delivered. Exactly-once: the records not
    /// committed yet, delivered into the open transaction (or held back).
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        self.flush().await.map_err(|e| self.fail(e))?;
        let mut state = TaskState::new();
        if self.exactly_once() {
            if self.current.iter().any(|c| c.sent) {
                crash_point!("kafka_sink_mid_epoch");
            }
            self.sealed.append(&mut self.current);
            state.put(RECORDS, self.sealed.iter().map(|c| c.records.clone()));
        }
        Ok(state)
    }

    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if !self.exactly_once() {
            return Ok(());
        }
        // Every old subtask this one inherits, records or not: their ids must be fenced.
        let old = (0..state.parallelism)
            .filter(|old| old % self.parallelism == self.subtask)
            .map(|old| {
                let batches = state
                    .subtasks
                    .get(old)
                    .map(|s| s.table(RECORDS).to_vec())
                    .unwrap_or_default();
                (old, batches)
            })
            .collect();
        self.inherited = Some(Inherited {
            epoch: state.epoch,
            old,
        });
        Ok(())
    }

    async fn on_checkpoint_complete(&mut self, epoch: u64) -> Result<(), TaskError> {
        if self.exactly_once() {
            self.commit_sealed(Some(epoch))
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        // Reach the broker (and recover a restore) without waiting for data.
        if self.producer.is_none() {
            self.client().await.map_err(|e| self.fail(e))?;
        }
        out.broadcast(crate::task::Message::Watermark(
            crate::task::Watermark::EventTime(watermark),
        ))
        .await
    }
}
