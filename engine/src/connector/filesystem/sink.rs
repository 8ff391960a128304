//! The `filesystem` sink: part files under a directory or object-store prefix.
//!
//! Per subtask, the first rows open a file `<path>/[<filename.prefix>-]<name>.<suffix>`, the
//! name made by `filename.strategy` ([`super::names`]), written by [`super::writer`]. The file
//! is closed when it reaches `rolling_policy.file_size`, `multipart.max_parts`, or has been
//! open `rolling_policy.interval` or idle `rolling_policy.inactivity_interval` (a timer checks
//! the last two while no input comes), at a checkpoint barrier and at the end of input. A
//! closed file is staged and appears only when committed ([`super::commit`]).
//!
//! Updating results (retractions) cannot be written: neither format can express them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use object_store::ObjectStore;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, info};

use super::commit::{SINK_TABLE, SinkCheckpoint, Staging};
use super::names::{self, NameStrategy};
use super::partition::{self, Partitioner, Partitioning};
use super::writer::OpenFile;
use super::{
    FileFormat, invalid, take_data_size, take_duration, take_either, take_location_and_format,
    take_positive, take_seconds,
};
use crate::connector::{ConnectorError, ConnectorTable, Options, RunError};
use crate::storage::Location;
use crate::task::{
    Background, Collector, Message, Operator, OperatorFactory, RestoredState, TaskError, TaskInfo,
    TaskState, Watermark,
};

/// Parts of a multipart upload: Arroyo's defaults.
const DEFAULT_PART_SIZE: u64 = 32 << 20;
const DEFAULT_MAX_PARTS: u64 = 1000;
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: u64 = 5 << 20;
/// Bytes of encoded rows after which a Parquet row group is cut (Arroyo's default).
const DEFAULT_ROW_GROUP_BYTES: u64 = 128 << 20;

#[derive(Debug, Clone)]
pub struct FileSystemSinkConfig {
    location: Location,
    format: FileFormat,
    compression: Compression,
    row_group_bytes: u64,
    /// `rolling_policy.file_size`: close a file once it has this many bytes.
    file_size: Option<u64>,
    /// `rolling_policy.interval`: close a file this long after it was opened.
    interval: Option<Duration>,
    /// `rolling_policy.inactivity_interval`: close a file not written for this long.
    inactivity: Option<Duration>,
    part_size: u64,
    max_parts: u64,
    prefix: Option<String>,
    /// Directories by the rows' fields and event time ([`super::partition`]).
    partitioning: Partitioning,
    suffix: String,
    strategy: NameStrategy,
}

fn parquet_compression(key: &str, value: &str) -> Result<Compression, ConnectorError> {
    Ok(match value {
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "gzip" => Compression::GZIP(GzipLevel::default()),
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        "lz4" => Compression::LZ4,
        "lz4_raw" => Compression::LZ4_RAW,
        _ => {
            return Err(invalid(
                key,
                value,
                "expected 'uncompressed', 'snappy', 'gzip', 'zstd', 'lz4' or 'lz4_raw'",
            ));
        }
    })
}

impl FileSystemSinkConfig {
    /// Where the files are.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// True when part files are named by their index (`filename.strategy = 'serial'`): the
    /// same names on every run.
    pub fn serial_names(&self) -> bool {
        self.strategy == NameStrategy::Serial
    }

    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let (location, format) = take_location_and_format(options)?;
        let compression = take_either(
            options,
            "parquet.compression",
            "parquet_compression",
            |o, k| {
                o.take(k)
                    .map(|v| parquet_compression(k, v.trim()))
                    .transpose()
            },
        )?;
        let row_group = take_data_size(options, "parquet.row_group_size")?;
        if format != FileFormat::Parquet && (compression.is_some() || row_group.is_some()) {
            return Err(ConnectorError::Usage(
                "parquet.* options need format = 'parquet'".into(),
            ));
        }
        let part_size = take_either(
            options,
            "multipart.target_part_size",
            "target_part_size",
            take_data_size,
        )?;
        if let Some(p) = part_size
            && p < MIN_PART_SIZE
        {
            return Err(invalid(
                "multipart.target_part_size",
                &p.to_string(),
                "must be at least 5MB, the smallest part object stores take",
            ));
        }
        let strategy = match options.take("filename.strategy").as_deref() {
            None | Some("uuid_v7") => NameStrategy::UuidV7,
            Some("serial") => NameStrategy::Serial,
            Some("uuid") => NameStrategy::Uuid,
            Some("ulid") => NameStrategy::Ulid,
            Some(other) => {
                return Err(invalid(
                    "filename.strategy",
                    other,
                    "expected 'serial', 'uuid', 'uuid_v7' or 'ulid'",
                ));
            }
        };
        let prefix = options.take("filename.prefix");
        if let Some(p) = &prefix
            && (p.is_empty() || p.contains('/'))
        {
            return Err(invalid(
                "filename.prefix",
                p,
                "must be a non-empty name without '/'",
            ));
        }
        let suffix = match options.take("filename.suffix") {
            None => format.suffix().to_string(),
            Some(s) => {
                let trimmed = s.trim_start_matches('.');
                if trimmed.is_empty() || trimmed.contains('/') {
                    return Err(invalid(
                        "filename.suffix",
                        &s,
                        "must be a non-empty name without '/'",
                    ));
                }
                trimmed.to_string()
            }
        };
        let partitioning = Partitioning::from_options(options)?;
        match options.take("sink.version").as_deref() {
            None | Some("v1") | Some("v2") => {}
            Some(other) => return Err(invalid("sink.version", other, "expected 'v1' or 'v2'")),
        }
        Ok(FileSystemSinkConfig {
            location,
            format,
            compression: compression.unwrap_or(Compression::ZSTD(ZstdLevel::default())),
            row_group_bytes: match row_group {
                Some(0) => return Err(invalid("parquet.row_group_size", "0", "must be above 0")),
                r => r.unwrap_or(DEFAULT_ROW_GROUP_BYTES),
            },
            file_size: take_either(
                options,
                "rolling_policy.file_size",
                "target_file_size",
                |o, k| {
                    if k == "target_file_size" {
                        take_positive(o, k)
                    } else {
                        take_data_size(o, k)
                    }
                },
            )?,
            interval: take_either(
                options,
                "rolling_policy.interval",
                "rollover_seconds",
                |o, k| {
                    if k == "rollover_seconds" {
                        take_seconds(o, k)
                    } else {
                        take_duration(o, k)
                    }
                },
            )?,
            inactivity: take_either(
                options,
                "rolling_policy.inactivity_interval",
                "inactivity_rollover_seconds",
                |o, k| {
                    if k == "inactivity_rollover_seconds" {
                        take_seconds(o, k)
                    } else {
                        take_duration(o, k)
                    }
                },
            )?,
            part_size: part_size.unwrap_or(DEFAULT_PART_SIZE),
            max_parts: take_either(options, "multipart.max_parts", "max_parts", take_positive)?
                .unwrap_or(DEFAULT_MAX_PARTS),
            prefix,
            partitioning,
            suffix,
            strategy,
        })
    }

    /// How often the timer looks for files to close on time; None without a time policy.
    fn tick(&self) -> Option<Duration> {
        let shortest = match (self.interval, self.inactivity) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

pub struct FileSystemSinkFactory {
    config: Arc<FileSystemSinkConfig>,
    partitioner: Option<Partitioner>,
}

impl FileSystemSinkFactory {
    /// A sink of `table` writing the columns `input`; `updating` input is refused (neither
    /// format has retractions).
    pub fn new(
        table: &ConnectorTable,
        config: &FileSystemSinkConfig,
        updating: bool,
        input: &Schema,
    ) -> Result<Self, ConnectorError> {
        if updating {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window), which the filesystem sink cannot write: neither 'json' nor 'parquet' files can express retractions",
                table.name
            )));
        }
        let partitioner = (!config.partitioning.is_empty())
            .then(|| config.partitioning.resolve(&table.name, input))
            .transpose()?;
        Ok(FileSystemSinkFactory {
            config: Arc::new(config.clone()),
            partitioner,
        })
    }
}

impl OperatorFactory for FileSystemSinkFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let mut state = SinkState::new(info, self.config.clone())
            .map_err(|e| TaskError::connector(&info.node, e))?;
        state.partitioner = self.partitioner.clone();
        Ok(Box::new(FileSystemSink::new(
            info,
            state,
            self.config.tick(),
            info.checkpointing,
        )))
    }
}

/// What one sink subtask writes with, shared with its timer.
pub(super) struct SinkState {
    node: String,
    store: Arc<dyn ObjectStore>,
    config: Arc<FileSystemSinkConfig>,
    subtask: usize,
    next_index: u64,
    /// The open file of each partition (one, under no directory, without partitioning).
    pub open: BTreeMap<Vec<String>, OpenFile>,
    partitioner: Option<Partitioner>,
    /// Files closed so far.
    written: u64,
    pub staging: Staging,
    /// Where an upload a dropped file leaves behind is aborted.
    background: Background,
}

impl SinkState {
    /// The writer of subtask `info`, with a new staging directory.
    pub fn new(info: &TaskInfo, config: Arc<FileSystemSinkConfig>) -> Result<Self, RunError> {
        let store = config.location.open_store()?;
        let staging = Staging::new(
            info.node.clone(),
            store.clone(),
            config.location.clone(),
            info.subtask,
            info.parallelism,
        );
        Ok(SinkState {
            node: info.node.clone(),
            store,
            config,
            subtask: info.subtask,
            next_index: 0,
            open: BTreeMap::new(),
            partitioner: None,
            written: 0,
            staging,
            background: info.background.clone(),
        })
    }

    /// A new file for `batch`'s rows in the partition directory `segments`.
    fn open_file(
        &mut self,
        batch: &RecordBatch,
        segments: &[String],
    ) -> Result<OpenFile, RunError> {
        let config = &self.config;
        let name = names::file_name(
            config.strategy,
            config.prefix.as_deref(),
            &config.suffix,
            self.next_index,
            self.subtask,
        );
        let target = partition::under(config.location.prefix(), segments).join(name.as_str());
        let location = self.staging.staged_name(&name);
        let shown = config.location.display(&location);
        self.next_index += 1;
        OpenFile::new(
            (location, shown),
            target,
            config.format,
            config.compression,
            &batch.schema(),
            self.background.clone(),
        )
    }

    fn due_on_time(&self, file: &OpenFile, now: Instant) -> bool {
        self.config
            .interval
            .is_some_and(|d| now.duration_since(file.opened) >= d)
            || self
                .config
                .inactivity
                .is_some_and(|d| now.duration_since(file.last_write) >= d)
    }

    /// Closes the files open for longer than `rolling_policy.interval` or not written for
    /// `rolling_policy.inactivity_interval`.
    pub async fn close_due(&mut self, now: Instant) -> Result<(), RunError> {
        let due: Vec<Vec<String>> = self
            .open
            .iter()
            .filter(|(_, f)| self.due_on_time(f, now))
            .map(|(p, _)| p.clone())
            .collect();
        for partition in due {
            self.close_one(&partition).await?;
        }
        Ok(())
    }

    /// Writes `batch` (the visible columns, then the hidden event time), each row into the
    /// file of its partition.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), RunError> {
        let now = Instant::now();
        self.close_due(now).await?;
        match self.partitioner.clone() {
            Some(partitioner) => {
                for (segments, part) in partitioner.split(batch)? {
                    self.write_to(segments, &part, now).await?;
                }
                Ok(())
            }
            None => {
                // The hidden event-time column is never written.
                let visible: Vec<usize> = (0..batch.num_columns().saturating_sub(1)).collect();
                let batch = batch.project(&visible).map_err(RunError::Encode)?;
                self.write_to(vec![], &batch, now).await
            }
        }
    }

    async fn write_to(
        &mut self,
        partition: Vec<String>,
        batch: &RecordBatch,
        now: Instant,
    ) -> Result<(), RunError> {
        if !self.open.contains_key(&partition) {
            let file = self.open_file(batch, &partition)?;
            self.open.insert(partition.clone(), file);
        }
        let config = self.config.clone();
        let file = self.open.get_mut(&partition).expect("a file is open");
        file.encode(batch, config.row_group_bytes)?;
        file.last_write = now;
        file.upload_parts(&self.store, config.part_size, config.max_parts)
            .await?;
        let full = file.parts + 1 >= config.max_parts
            || config.file_size.is_some_and(|limit| file.size() >= limit);
        if full {
            self.close_one(&partition).await?;
        }
        Ok(())
    }

    /// Closes every open file: each is finished under its staged name and waits for the next
    /// barrier.
    pub async fn close(&mut self) -> Result<(), RunError> {
        let open: Vec<Vec<String>> = self.open.keys().cloned().collect();
        for partition in open {
            self.close_one(&partition).await?;
        }
        Ok(())
    }

    /// Closes the open file of `partition`, if any.
    async fn close_one(&mut self, partition: &[String]) -> Result<(), RunError> {
        let Some(mut file) = self.open.remove(partition) else {
            return Ok(());
        };
        let size = file.finish(&self.store).await?;
        let shown = file.shown.clone();
        self.staging.stage(&file.location, &file.target).await?;
        self.written += 1;
        info!(node = %self.node, file = %shown, bytes = size, "file staged");
        Ok(())
    }

    /// At a barrier: closes the open file (everything before the barrier is then in staged
    /// files) and returns the state, with every file not committed yet.
    pub async fn barrier(&mut self) -> Result<SinkCheckpoint, RunError> {
        self.close().await?;
        Ok(self.staging.barrier(self.next_index))
    }

    /// Takes the state of every old subtask: serial names go on from the highest index, and
    /// the staging takes over (see [`Staging::restore`]).
    pub fn restore(&mut self, docs: Vec<Vec<SinkCheckpoint>>) -> Result<(), RunError> {
        let next = self.staging.restore(docs)?;
        self.next_index = self.next_index.max(next);
        Ok(())
    }

    /// The end of input: closes the open file and commits every file (no checkpoint follows).
    pub async fn finish_all(&mut self) -> Result<(), RunError> {
        self.close().await?;
        self.staging.commit_all().await
    }
}

pub(super) struct FileSystemSink {
    node: String,
    /// How often the timer runs; None without a time-based rolling policy.
    tick: Option<Duration>,
    state: Arc<Mutex<SinkState>>,
    /// Closes files on time while no input comes; started with the first batch.
    timer: Option<JoinHandle<()>>,
    /// What the timer failed with: the next call fails with it.
    failure: Arc<StdMutex<Option<RunError>>>,
    /// The run takes checkpoints: files are committed only when one completes.
    checkpointing: bool,
    /// The input ended: the last commit also removes the staging directories.
    closed: bool,
}

impl Drop for FileSystemSink {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            t.abort();
        }
    }
}

impl FileSystemSink {
    /// The sink of subtask `info`, writing with `state`; `tick`: how often the timer closes
    /// files on time.
    fn new(
        info: &TaskInfo,
        state: SinkState,
        tick: Option<Duration>,
        checkpointing: bool,
    ) -> FileSystemSink {
        FileSystemSink {
            node: info.node.clone(),
            tick,
            state: Arc::new(Mutex::new(state)),
            timer: None,
            failure: Arc::new(StdMutex::new(None)),
            checkpointing,
            closed: false,
        }
    }

    fn fail(&self, e: RunError) -> TaskError {
        TaskError::connector(&self.node, e)
    }

    fn check_timer(&self) -> Result<(), TaskError> {
        match self.failure.lock().expect("not poisoned").take() {
            Some(e) => Err(self.fail(e)),
            None => Ok(()),
        }
    }

    fn start_timer(&mut self) {
        let Some(tick) = self.tick.filter(|_| self.timer.is_none()) else {
            return;
        };
        let state = self.state.clone();
        let failure = self.failure.clone();
        let span = tracing::info_span!("rolling_timer", node = %self.node);
        self.timer = Some(tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let mut state = state.lock().await;
                    if let Err(e) = state.close_due(Instant::now()).await {
                        *failure.lock().expect("not poisoned") = Some(e);
                        return;
                    }
                }
            }
            .instrument(span),
        ));
    }

    /// Finishes a restore (see [`Staging::recover`]) if one is pending.
    async fn recover(&self) -> Result<(), TaskError> {
        let result = self.state.lock().await.staging.recover().await;
        result.map_err(|e| self.fail(e))
    }
}

#[async_trait]
impl Operator for FileSystemSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        self.check_timer()?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.recover().await?;
        self.start_timer();
        let result = self.state.lock().await.write(&batch).await;
        result.map_err(|e| self.fail(e))
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.recover().await?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        let state = self.state.clone();
        // Holding the lock, the timer is not closing a file: aborting it loses nothing.
        let mut state = state.lock().await;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.check_timer()?;
        let checkpointing = self.checkpointing;
        self.closed = true;
        let result = async {
            state.staging.recover().await?;
            if checkpointing {
                // The last epoch records the files; its completion commits them.
                state.barrier().await.map(|_| ())
            } else {
                state.finish_all().await
            }
        }
        .await;
        result.map_err(|e| self.fail(e))?;
        info!(node = %self.node, subtask = state.subtask, files = state.written, "sink closed");
        Ok(())
    }

    /// Closes the open file and records every file not committed yet (see
    /// [`SinkCheckpoint`]).
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        self.check_timer()?;
        let result = {
            let mut state = self.state.lock().await;
            match state.staging.recover().await {
                Ok(()) => state.barrier().await,
                Err(e) => Err(e),
            }
        };
        let checkpoint = result.map_err(|e| self.fail(e))?;
        let mut out = TaskState::new();
        out.put_json(SINK_TABLE, &checkpoint)?;
        Ok(out)
    }

    /// Commits the files of the restored checkpoint: see [`SinkState::restore`].
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        let docs = state.json::<SinkCheckpoint>(SINK_TABLE)?;
        // A restore comes before any input: nothing else holds the state yet.
        let mut sink = self.state.try_lock().expect("restored before any input");
        sink.restore(docs)
            .map_err(|e| TaskError::connector(&self.node, e))
    }

    async fn on_checkpoint_complete(&mut self, _epoch: u64) -> Result<(), TaskError> {
        self.check_timer()?;
        let result = {
            let mut state = self.state.lock().await;
            match state.staging.recover().await {
                Ok(()) => state.staging.commit_pending().await,
                Err(e) => Err(e),
            }
        };
        result.map_err(|e| self.fail(e))?;
        if self.closed {
            self.state.lock().await.staging.tidy().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::super::commit::STAGING_DIR;
    use super::super::testing::{names, options, restored, rows};
    use super::*;

    #[test]
    fn sink_options_in_both_spellings() {
        let mut o = options(&[
            ("path", "/data/out"),
            ("format", "parquet"),
            ("rolling_policy.file_size", "128MB"),
            ("rolling_policy.inactivity_interval", "30s"),
            ("rollover_seconds", "60"),
            ("max_parts", "10"),
            ("multipart.target_part_size", "8mb"),
            ("filename.prefix", "events"),
            ("filename.suffix", ".pq"),
            ("filename.strategy", "serial"),
            ("parquet.compression", "snappy"),
            ("sink.version", "v2"),
            ("rolling_policy.watermark_expiration", "false"),
        ]);
        let c = FileSystemSinkConfig::from_options(&mut o).unwrap();
        assert_eq!(o.unused().count(), 0);
        assert_eq!(c.file_size, Some(128 << 20));
        assert_eq!(c.inactivity, Some(Duration::from_secs(30)));
        assert_eq!(c.interval, Some(Duration::from_secs(60)));
        assert_eq!((c.max_parts, c.part_size), (10, 8 << 20));
        assert_eq!(
            (c.prefix.as_deref(), c.suffix.as_str()),
            (Some("events"), "pq")
        );
        assert_eq!(c.strategy, NameStrategy::Serial);
        assert_eq!(c.compression, Compression::SNAPPY);
        assert_eq!(c.tick(), Some(Duration::from_secs(1)));
        let c = FileSystemSinkConfig::from_options(&mut options(&[
            ("path", "/data/out"),
            ("format", "json"),
        ]))
        .unwrap();
        assert_eq!(
            (c.suffix.as_str(), c.strategy),
            ("json", NameStrategy::UuidV7)
        );
        assert_eq!(
            (c.part_size, c.max_parts),
            (DEFAULT_PART_SIZE, DEFAULT_MAX_PARTS)
        );
        assert_eq!(c.tick(), None);
    }

    /// A sink subtask writing serially named files under `dir` in parts of 1 KiB, at most 3
    /// parts a file.
    fn small_parts_sink(dir: &std::path::Path, format: &str) -> SinkState {
        let mut config = FileSystemSinkConfig::from_options(&mut options(&[
            ("path", dir.to_str().unwrap()),
            ("format", format),
            ("filename.strategy", "serial"),
            ("rolling_policy.inactivity_interval", "50ms"),
        ]))
        .unwrap();
        config.part_size = 1024;
        config.max_parts = 3;
        config.row_group_bytes = 512;
        SinkState::new(&TaskInfo::for_test(1, 2), Arc::new(config)).unwrap()
    }

    #[tokio::test]
    async fn json_files_go_up_in_parts_and_roll_at_max_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = small_parts_sink(dir.path(), "json");
        for i in 0..10 {
            sink.write(&timed(rows(i * 50, 50))).await.unwrap();
        }
        sink.finish_all().await.unwrap();
        let names = names(dir.path());
        assert!(names.len() > 2, "{names:?}");
        assert_eq!(names[0], "00000-001.json");
        let mut all = String::new();
        for name in &names {
            assert!(!name.contains('#'), "{name}");
            all.push_str(&std::fs::read_to_string(dir.path().join(name)).unwrap());
        }
        let n: Vec<i64> = all
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(n, (0..500).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn parquet_row_groups_go_up_in_parts_and_read_back() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = tempfile::tempdir().unwrap();
        let mut sink = small_parts_sink(dir.path(), "parquet");
        for i in 0..20 {
            sink.write(&timed(rows(i * 100, 100))).await.unwrap();
        }
        sink.finish_all().await.unwrap();
        let mut n = Vec::new();
        let names = names(dir.path());
        for name in &names {
            let file = std::fs::File::open(dir.path().join(name)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            assert!(reader.metadata().num_row_groups() > 1, "{name}");
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                n.extend(column.values().iter().copied());
            }
        }
        assert_eq!(n, (0..2000).collect::<Vec<_>>(), "{names:?}");
    }

    #[tokio::test]
    async fn the_timer_closes_an_idle_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = small_parts_sink(dir.path(), "json");
        let tick = state.config.tick();
        let mut sink = FileSystemSink::new(&TaskInfo::for_test(1, 2), state, tick, false);
        sink.start_timer();
        sink.state
            .lock()
            .await
            .write(&timed(rows(0, 3)))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.state.lock().await.staging.staged.is_empty() {
            assert!(Instant::now() < deadline, "the idle file was never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let token = {
            let state = sink.state.lock().await;
            assert!(state.open.is_empty());
            state.staging.token.clone()
        };
        sink.check_timer().unwrap();
        // Closed, the file waits in the staging directory for a checkpoint (or the end).
        let staging = dir.path().join(STAGING_DIR).join(&token);
        assert_eq!(names(&staging), ["00000-001.json"]);
        assert!(names(dir.path()).is_empty());
        sink.state.lock().await.finish_all().await.unwrap();
        assert_eq!(names(dir.path()), ["00000-001.json"]);
        assert!(!dir.path().join(STAGING_DIR).exists());
    }

    /// `batch` with the hidden event-time column a sink receives.
    fn timed(batch: RecordBatch) -> RecordBatch {
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            crate::TIMESTAMP_FIELD,
            crate::task::timestamp_type(),
            false,
        ));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![
            0i64;
            batch
                .num_rows(
                )
        ])));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// JSON files of about 1 KiB, serially named, under `dir`.
    fn small_files(dir: &std::path::Path) -> Arc<FileSystemSinkConfig> {
        Arc::new(
            FileSystemSinkConfig::from_options(&mut options(&[
                ("path", dir.to_str().unwrap()),
                ("format", "json"),
                ("filename.strategy", "serial"),
                ("rolling_policy.file_size", "1kb"),
            ]))
            .unwrap(),
        )
    }

    fn sink(
        config: &Arc<FileSystemSinkConfig>,
        subtask: usize,
        parallelism: usize,
    ) -> FileSystemSink {
        let info = TaskInfo::for_test(subtask, parallelism);
        let state = SinkState::new(&info, config.clone()).unwrap();
        FileSystemSink::new(&info, state, config.tick(), true)
    }

    /// The `n` of every row in the visible files of `dir`, sorted.
    fn committed(dir: &std::path::Path) -> Vec<i64> {
        let mut n: Vec<i64> = names(dir)
            .iter()
            .flat_map(|name| {
                std::fs::read_to_string(dir.join(name))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                            .as_i64()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        n.sort();
        n
    }

    /// Every file under `dir/.staging`.
    fn staged_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.join(STAGING_DIR)];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn files_appear_when_their_checkpoint_completes() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let mut s = sink(&config, 0, 1);
        let (mut out, _rx) = Collector::for_test(4);
        // A file rolls after the batch that fills it: several files.
        for i in 0..5 {
            s.process_batch(timed(rows(i * 10, 10)), 0, &mut out)
                .await
                .unwrap();
        }
        let first = s.snapshot().await.unwrap();
        let first = first.json::<SinkCheckpoint>(SINK_TABLE).unwrap();
        assert!(first[0].pending.len() > 1, "{first:?}");
        s.process_batch(timed(rows(50, 50)), 0, &mut out)
            .await
            .unwrap();
        assert!(
            names(dir.path()).is_empty(),
            "visible before the checkpoint completed"
        );
        s.on_checkpoint_complete(1).await.unwrap();
        assert_eq!(committed(dir.path()), (0..50).collect::<Vec<_>>());
        s.snapshot().await.unwrap();
        s.on_checkpoint_complete(2).await.unwrap();
        s.on_checkpoint_complete(2).await.unwrap();
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        s.on_close(&mut out).await.unwrap();
        let last = s.snapshot().await.unwrap();
        assert!(
            last.json::<SinkCheckpoint>(SINK_TABLE).unwrap()[0]
                .pending
                .is_empty()
        );
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        assert!(staged_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_restore_commits_its_checkpoint_and_drops_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let (mut out, _rx) = Collector::for_test(4);
        // A first run writes rows 0..100, takes a checkpoint, writes more, and crashes
        // before hearing that the checkpoint completed.
        let mut crashed = sink(&config, 0, 1);
        for i in 0..10 {
            crashed
                .process_batch(timed(rows(i * 10, 10)), 0, &mut out)
                .await
                .unwrap();
        }
        let checkpoint = crashed.snapshot().await.unwrap();
        crashed
            .process_batch(timed(rows(1000, 100)), 0, &mut out)
            .await
            .unwrap();
        crashed.state.lock().await.close().await.unwrap();
        drop(crashed);
        assert!(names(dir.path()).is_empty());
        let doc = checkpoint.json::<SinkCheckpoint>(SINK_TABLE).unwrap()[0].clone();
        assert!(staged_files(dir.path()).len() > doc.pending.len());

        // The rerun, at parallelism 2, replays rows 100..200 from the checkpoint.
        let from_checkpoint = restored(vec![checkpoint]);
        let mut a = sink(&config, 0, 2);
        let mut b = sink(&config, 1, 2);
        a.restore(&from_checkpoint).unwrap();
        b.restore(&from_checkpoint).unwrap();
        assert_eq!(a.state.lock().await.staging.token, doc.token);
        assert_ne!(b.state.lock().await.staging.token, doc.token);
        b.process_batch(timed(rows(150, 50)), 0, &mut out)
            .await
            .unwrap();
        // The subtask that took over the old one's state committed its checkpoint first.
        a.on_watermark(1, &mut out).await.unwrap();
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        a.process_batch(timed(rows(100, 50)), 0, &mut out)
            .await
            .unwrap();
        a.on_close(&mut out).await.unwrap();
        b.on_close(&mut out).await.unwrap();
        // At the end of input the files wait for the last epoch, which commits them.
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        for s in [&mut a, &mut b] {
            s.snapshot().await.unwrap();
            s.on_checkpoint_complete(2).await.unwrap();
        }
        assert_eq!(committed(dir.path()), (0..200).collect::<Vec<_>>());
        assert!(
            staged_files(dir.path()).is_empty(),
            "{:?}",
            staged_files(dir.path())
        );
        // Serial names go on after those of the checkpoint, on both subtasks.
        for name in names(dir.path()) {
            let index: u64 = name[..5].parse().unwrap();
            let subtask = &name[6..9];
            let before = doc.pending.iter().any(|f| f.target.ends_with(&name));
            assert!(
                before || index >= doc.next_index,
                "{name} reuses an index of the checkpoint"
            );
            assert!(before || subtask == "000" || subtask == "001", "{name}");
        }
    }

    #[tokio::test]
    async fn commits_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let mut s = SinkState::new(&TaskInfo::for_test(0, 1), config.clone()).unwrap();
        for i in 0..10 {
            s.write(&timed(rows(i * 10, 10))).await.unwrap();
        }
        let checkpoint = s.barrier().await.unwrap();
        assert!(checkpoint.pending.len() > 1);
        s.staging.commit_pending().await.unwrap();
        let once = committed(dir.path());
        assert_eq!(once, (0..100).collect::<Vec<_>>());
        // Again: the staged files are gone and the final ones there.
        for file in &checkpoint.pending {
            s.staging.commit(file).await.unwrap();
        }
        // A restore of the checkpoint whose files were committed before the crash.
        let mut rerun = SinkState::new(&TaskInfo::for_test(0, 1), config.clone()).unwrap();
        rerun.restore(vec![vec![checkpoint.clone()]]).unwrap();
        rerun.staging.recover().await.unwrap();
        assert_eq!(committed(dir.path()), once);
        // A rename that copied but did not delete (an object store's copy then delete).
        let file = &checkpoint.pending[0];
        let name = file.target.rsplit('/').next().unwrap();
        let staged = dir
            .path()
            .join(STAGING_DIR)
            .join(&checkpoint.token)
            .join(name);
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::copy(dir.path().join(name), &staged).unwrap();
        s.staging.commit(file).await.unwrap();
        assert!(!staged.exists());
        assert_eq!(committed(dir.path()), once);
        // Both gone: an error naming both.
        std::fs::remove_file(dir.path().join(name)).unwrap();
        let e = s.staging.commit(file).await.unwrap_err();
        let e = e.to_string();
        assert!(e.contains(name) && e.contains(STAGING_DIR), "{e}");
    }
}
