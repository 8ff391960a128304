//! The Kafka source: one assign-only consumer per subtask (see the module above for the
//! protocol). Records are gathered into batches (up to [`MAX_BATCH`] records, or for
//! [`LINGER`] after the first) and decoded together; between two batches the source sends a
//! due checkpoint barrier with its partitions' next offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::{self, KafkaContext, blocking, broker_error};
use super::decode::{Records, RowSpec};
use super::{KafkaConfig, KafkaError, Role, SourceOptions, StartOffset};
use crate::connector::ConnectorTable;
use crate::task::{
    NodeCounters, RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError,
    TaskInfo, TaskState, error_chain,
};

/// Records decoded together at most.
const MAX_BATCH: usize = 8192;
/// How long a batch waits for more records after its first.
const LINGER: Duration = Duration::from_millis(20);

/// The state table of a Kafka source: one document per partition.
const OFFSETS: &str = "kafka_offsets";

/// Where a partition goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PartitionState {
    partition: i32,
    /// The offset of the next record to read.
    offset: i64,
    /// The newest watermark its records gave.
    watermark: Option<i64>,
}

pub struct KafkaSourceFactory {
    config: KafkaConfig,
    options: SourceOptions,
    rows: Arc<RowSpec>,
}

impl KafkaSourceFactory {
    pub fn new(
        config: &KafkaConfig,
        table: &ConnectorTable,
        projection: Option<Vec<usize>>,
    ) -> Result<Self, crate::connector::ConnectorError> {
        let Role::Source(options) = &config.role else {
            return Err(crate::connector::ConnectorError::Usage(format!(
                "table '{}' is a sink and cannot be read from",
                table.name
            )));
        };
        Ok(KafkaSourceFactory {
            config: config.clone(),
            options: options.clone(),
            rows: Arc::new(RowSpec::new(config, table, projection)),
        })
    }
}

impl SourceFactory for KafkaSourceFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        let group = match (&self.options.group_id, &self.options.group_id_prefix) {
            (Some(group), prefix) => {
                if prefix.is_some() {
                    warn!(node = %info.node, "source.group_id and source.group_id_prefix are both set: the group id wins");
                }
                group.clone()
            }
            (None, Some(prefix)) => format!("{prefix}-arroyod-{}-{}", info.job.pipeline, info.node),
            (None, None) => format!("arroyod-{}-{}-consumer", info.job.pipeline, info.node),
        };
        Ok(Box::new(KafkaSource {
            node: info.node.clone(),
            subtask: info.subtask,
            parallelism: info.parallelism,
            group,
            config: self.config.clone(),
            options: self.options.clone(),
            rows: self.rows.clone(),
            counters: info.counters.clone(),
            partitions: BTreeMap::new(),
            restored: false,
            live: BTreeMap::new(),
            all_idle: false,
        }))
    }
}

/// A partition while the source runs.
struct Live {
    /// When its last record came.
    last: Instant,
    idle: bool,
}

struct KafkaSource {
    node: String,
    subtask: usize,
    parallelism: usize,
    group: String,
    config: KafkaConfig,
    options: SourceOptions,
    rows: Arc<RowSpec>,
    /// The node's counters, where records dropped as bad data are counted.
    counters: Arc<NodeCounters>,
    /// This subtask's partitions and where each goes on: what a checkpoint records.
    partitions: BTreeMap<i32, PartitionState>,
    /// The run restored a checkpoint: a partition it does not know is new.
    restored: bool,
    live: BTreeMap<i32, Live>,
    /// Idleness was announced for every partition.
    all_idle: bool,
}

impl KafkaSource {
    fn fail(&self, e: KafkaError) -> TaskError {
        TaskError::connector(&self.node, e)
    }

    fn mine(&self, partition: i32) -> bool {
        partition as usize % self.parallelism == self.subtask
    }

    fn client_name(&self) -> String {
        format!("{}#{} consumer", self.node, self.subtask)
    }

    /// What [`connect`] needs, taken from the source so that it can checkpoint meanwhile.
    fn start_plan(&self) -> StartPlan {
        StartPlan {
            config: self.config.clone(),
            group: self.group.clone(),
            name: self.client_name(),
            known: self.partitions.clone(),
            restored: self.restored,
            offset: self.options.offset,
            read_committed: self.options.read_committed,
            subtask: self.subtask,
            parallelism: self.parallelism,
        }
    }

    /// The partitions are assigned, starting at `starts`.
    fn assigned(&mut self, starts: BTreeMap<i32, i64>) {
        let now = Instant::now();
        for (p, offset) in starts {
            let watermark = self.partitions.get(&p).and_then(|s| s.watermark);
            self.partitions.insert(
                p,
                PartitionState {
                    partition: p,
                    offset,
                    watermark,
                },
            );
            self.live.insert(
                p,
                Live {
                    last: now,
                    idle: false,
                },
            );
        }
        info!(node = %self.node, subtask = self.subtask, topic = %self.config.topic, partitions = ?self.partitions.values().map(|s| (s.partition, s.offset)).collect::<Vec<_>>(), "kafka source assigned");
    }

    /// Decodes and emits the gathered records, then the watermark they allow.
    async fn emit(
        &mut self,
        ctx: &mut SourceContext,
        records: &mut Records,
    ) -> Result<(), TaskError> {
        if records.is_empty() {
            return Ok(());
        }
        let decoded = self
            .rows
            .decode(records, &self.counters)
            .map_err(|e| self.fail(e));
        records.clear();
        if let Some(rows) = decoded? {
            for (p, w) in rows.watermarks {
                if let Some(state) = self.partitions.get_mut(&p) {
                    state.watermark = Some(state.watermark.map_or(w, |old| old.max(w)));
                }
            }
            ctx.collect(rows.batch).await?;
        }
        self.advance_watermark(ctx).await
    }

    /// Sends the lowest watermark of the partitions that are not idle (a partition that has
    /// given none yet holds it back). When all are idle: the lowest watermark any of them
    /// gave, then idleness.
    async fn advance_watermark(&mut self, ctx: &mut SourceContext) -> Result<(), TaskError> {
        let mut lowest: Option<i64> = None;
        let mut active = false;
        for (p, live) in &self.live {
            if live.idle {
                continue;
            }
            active = true;
            match self.partitions.get(p).and_then(|s| s.watermark) {
                None => return Ok(()),
                Some(w) => lowest = Some(lowest.map_or(w, |l| l.min(w))),
            }
        }
        if active {
            self.all_idle = false;
            return match lowest {
                Some(w) => ctx.watermark(w).await,
                None => Ok(()),
            };
        }
        if !self.all_idle {
            self.all_idle = true;
            let known = self.partitions.values().filter_map(|s| s.watermark).min();
            if let Some(w) = known {
                ctx.watermark(w).await?;
            }
            ctx.idle().await?;
        }
        Ok(())
    }

    /// Marks partitions without a record for the idle time as idle.
    async fn check_idle(&mut self, ctx: &mut SourceContext) -> Result<(), TaskError> {
        let Some(idle) = self.options.idle else {
            return Ok(());
        };
        let now = Instant::now();
        let mut changed = false;
        for (p, live) in &mut self.live {
            if !live.idle && now.duration_since(live.last) >= idle {
                live.idle = true;
                changed = true;
                debug!(node = %self.node, partition = p, "partition idle");
            }
        }
        if changed {
            self.advance_watermark(ctx).await?;
        }
        Ok(())
    }

    /// The next offsets to commit to the group.
    fn positions(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for s in self.partitions.values() {
            // Partitions come from the topic's metadata: adding them cannot fail.
            let _ = list.add_partition_offset(
                &self.config.topic,
                s.partition,
                Offset::Offset(s.offset),
            );
        }
        list
    }
}

/// What a subtask needs to reach its partitions.
struct StartPlan {
    config: KafkaConfig,
    group: String,
    name: String,
    /// Restored positions.
    known: BTreeMap<i32, PartitionState>,
    restored: bool,
    offset: StartOffset,
    read_committed: bool,
    subtask: usize,
    parallelism: usize,
}

/// Reaches the broker, finds the subtask's partitions and where each starts, and returns a
/// consumer assigned to them, with the start offsets.
async fn connect(plan: StartPlan) -> Result<Started, KafkaError> {
    let StartPlan {
        config,
        group,
        name,
        known,
        restored,
        offset,
        read_committed,
        subtask,
        parallelism,
    } = plan;
    let (connection, topic) = (config.connection, config.topic);
    let abandoned = client::Abandoned::default();
    let flag = abandoned.flag();
    let started = blocking(move || {
        // Metadata, watermarks and group offsets come from a read_uncommitted client: a
        // read_committed one reports wrong watermarks while a transaction is open.
        let probe = client::consumer(&connection, format!("{name} (start)"), &group, &[])?;
        let all = client::partitions(&probe, &connection, &topic, &flag)?;
        let mine: Vec<i32> = all
            .into_iter()
            .filter(|p| *p as usize % parallelism == subtask)
            .collect();
        let reset_earliest = connection.settings.iter().any(|(k, v)| {
            k == "auto.offset.reset" && matches!(v.as_str(), "earliest" | "smallest" | "beginning")
        });
        let committed = if offset == StartOffset::Group && !restored {
            let mut list = TopicPartitionList::new();
            for p in &mine {
                list.add_partition_offset(&topic, *p, Offset::Invalid)
                    .map_err(broker_error(&connection, &topic, "listing partitions"))?;
            }
            probe
                .committed_offsets(list, connection.startup_timeout)
                .map_err(broker_error(
                    &connection,
                    &topic,
                    format!("reading the offsets of group '{group}'"),
                ))?
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut starts = BTreeMap::new();
        for p in mine {
            let start = match known.get(&p) {
                Some(state) => state.offset,
                None => {
                    let (low, high) = probe
                        .fetch_watermarks(&topic, p, connection.startup_timeout)
                        .map_err(broker_error(
                            &connection,
                            &topic,
                            format!("reading the offsets of partition {p}"),
                        ))?;
                    let earliest = restored
                        || offset == StartOffset::Earliest
                        || (offset == StartOffset::Group && reset_earliest);
                    match committed.get(&p) {
                        Some(o) if !restored => *o,
                        _ if earliest => low,
                        _ => high,
                    }
                }
            };
            starts.insert(p, start);
        }
        let isolation = if read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        };
        let consumer: StreamConsumer<KafkaContext> = client::base_config(
            &connection,
            &[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
                ("allow.auto.create.topics", "false"),
                ("isolation.level", isolation),
            ],
        )
        .create_with_context(KafkaContext::new(name, &connection))
        .map_err(|source| KafkaError::Client {
            broker: connection.bootstrap.clone(),
            source: Box::new(source),
        })?;
        let mut assignment = TopicPartitionList::new();
        for (p, o) in &starts {
            assignment
                .add_partition_offset(&topic, *p, Offset::Offset(*o))
                .map_err(broker_error(&connection, &topic, "listing partitions"))?;
        }
        consumer.assign(&assignment).map_err(broker_error(
            &connection,
            &topic,
            "assigning partitions",
        ))?;
        Ok((Arc::new(consumer), starts))
    })
    .await;
    drop(abandoned);
    started
}

/// A consumer assigned to its partitions, and where each starts.
type Started = (Arc<StreamConsumer<KafkaContext>>, BTreeMap<i32, i64>);

/// What woke the source up.
enum Wake {
    Record,
    RecordError(rdkafka::error::KafkaError),
    Flush,
    Tick,
    Completed(u64),
    Control,
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        let mut connecting = std::pin::pin!(connect(self.start_plan()));
        let (consumer, starts) = loop {
            tokio::select! {
                started = &mut connecting => break started.map_err(|e| self.fail(e))?,
                // A stop or a barrier before the broker answered: the restored positions
                // stand.
                _ = ctx.stopped() => {
                    if let Some(end) = ctx.checkpoint_if_due(|| self.snapshot()).await? {
                        return Ok(end);
                    }
                    if ctx.should_stop() {
                        return Ok(SourceEnd::Stopped);
                    }
                }
            }
        };
        self.assigned(starts);
        if self.partitions.is_empty() {
            info!(node = %self.node, subtask = self.subtask, "no partition to read: idle");
            self.all_idle = true;
            ctx.idle().await?;
        }
        let keep_key = self.rows.wants_keys();
        let mut records = Records::default();
        let mut flush_at: Option<Instant> = None;
        let tick = self.options.idle.map_or(Duration::from_secs(1), |i| {
            (i / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        });
        let mut ticker = tokio::time::interval(tick);
        let mut completions = ctx.completions();
        // Checkpoints taken and not known complete: their offsets, for the group.
        let mut taken: VecDeque<(u64, TopicPartitionList)> = VecDeque::new();
        let mut last_error: Option<String> = None;
        loop {
            if ctx.should_stop() {
                self.emit(ctx, &mut records).await?;
                close(consumer).await;
                return Ok(SourceEnd::Stopped);
            }
            if let Some(epoch) = ctx.due_epoch() {
                self.emit(ctx, &mut records).await?;
                flush_at = None;
                taken.push_back((epoch, self.positions()));
                if ctx.checkpoint(self.snapshot()?).await? {
                    // The run stops here: commit the stop's offsets once it completes.
                    if let Some(c) = completions.as_mut()
                        && c.wait_for(|(done, _)| *done >= epoch).await.is_ok()
                    {
                        let (consumer, list) = (consumer.clone(), self.positions());
                        let (connection, topic) =
                            (self.config.connection.clone(), self.config.topic.clone());
                        let committed = blocking(move || {
                            consumer
                                .commit(&list, CommitMode::Sync)
                                .map_err(broker_error(
                                    &connection,
                                    &topic,
                                    "committing offsets to the group",
                                ))
                        })
                        .await;
                        if let Err(e) = committed {
                            warn!(node = %self.node, error = %error_chain(&e), "committing the last offsets to the group failed");
                        }
                    }
                    close(consumer).await;
                    return Ok(SourceEnd::Checkpointed);
                }
                continue;
            }
            let wake = tokio::select! {
                biased;
                done = async { completions.as_mut()?.changed().await.ok() }, if completions.is_some() => match done {
                    Some(()) => Wake::Completed(completions.as_ref().expect("checked").borrow().0),
                    None => { completions = None; Wake::Control }
                },
                _ = ctx.stopped() => Wake::Control,
                received = consumer.recv(), if records.len() < MAX_BATCH => match received {
                    Ok(message) => {
                        let p = rdkafka::Message::partition(&message);
                        let o = rdkafka::Message::offset(&message);
                        records.push(&message, keep_key);
                        if let Some(state) = self.partitions.get_mut(&p) {
                            state.offset = o + 1;
                        }
                        if let Some(live) = self.live.get_mut(&p) {
                            live.last = Instant::now();
                            live.idle = false;
                        }
                        Wake::Record
                    }
                    Err(e) => Wake::RecordError(e),
                },
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => Wake::Flush,
                _ = ticker.tick() => Wake::Tick,
            };
            match wake {
                Wake::Record => {
                    last_error = None;
                    if records.len() >= MAX_BATCH {
                        self.emit(ctx, &mut records).await?;
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + LINGER);
                    }
                }
                Wake::Flush => {
                    self.emit(ctx, &mut records).await?;
                    flush_at = None;
                }
                Wake::RecordError(e) => {
                    // librdkafka reconnects by itself; say it once in a row.
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(node = %self.node, subtask = self.subtask, topic = %self.config.topic, error = %text, "kafka source: consumer error (retrying)");
                        last_error = Some(text);
                    }
                }
                Wake::Tick => self.check_idle(ctx).await?,
                Wake::Completed(done) => {
                    let mut newest = None;
                    while taken.front().is_some_and(|(epoch, _)| *epoch <= done) {
                        newest = taken.pop_front().map(|(_, list)| list);
                    }
                    if let Some(list) = newest
                        && let Err(e) = consumer.commit(&list, CommitMode::Async)
                    {
                        warn!(node = %self.node, error = %e, "committing offsets to the group failed");
                    }
                }
                Wake::Control => {}
            }
        }
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        for s in self.partitions.values() {
            state.put_json(OFFSETS, s)?;
        }
        Ok(state)
    }

    /// Takes the partitions of every old subtask that are this subtask's now.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        self.restored = true;
        for old in state.json::<PartitionState>(OFFSETS)? {
            for s in old {
                if self.mine(s.partition) {
                    self.partitions.insert(s.partition, s);
                }
            }
        }
        Ok(())
    }
}

/// Closes a consumer off the runtime (librdkafka's close may wait on the broker).
async fn close(consumer: Arc<StreamConsumer<KafkaContext>>) {
    let _ = blocking(move || {
        drop(consumer);
        Ok(())
    })
    .await;
}
