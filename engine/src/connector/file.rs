//! `single_file` as a source: a JSON-lines (or raw text, or Debezium) file read from start to
//! end on one subtask, at full speed, then the source finishes.
//!
//! Options: `path`, `format` (`json`, `raw_string`, `debezium_json`), `json.unstructured`
//! (the whole line in a `value` column), `bad_data`, `wait_for_control` (Arroyo's test-only
//! pacing; accepted, only `false` is supported), `event_time_field`. The lines are decoded by
//! the reader the `filesystem` source shares ([`super::lines`]); this module opens the file,
//! resumes at the checkpointed offset and records it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::lines::{BadData, FilePosition, Generated, LineFormat, LineReader, Rows, take_bad_data};
use super::{ConnectorError, EventTimeSpec, Options};
use crate::storage::StorageError;
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
};

#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    path: String,
    format: LineFormat,
    bad_data: BadData,
}

impl FileSourceConfig {
    /// The file, as the table names it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when the source emits retractions (Debezium changes).
    pub fn updating(&self) -> bool {
        self.format == LineFormat::Debezium
    }

    pub fn from_options(options: &mut Options, schema: &SchemaRef) -> Result<Self, ConnectorError> {
        let path = options.require("single_file", "path")?;
        let unstructured = options
            .take_parsed::<bool>("json.unstructured")?
            .unwrap_or(false);
        let format = match options.take("format").as_deref() {
            None | Some("json") if unstructured => LineFormat::Raw,
            None | Some("json") => LineFormat::Json,
            Some("raw_string") => LineFormat::Raw,
            Some("debezium_json") => LineFormat::Debezium,
            Some(other) => {
                return Err(ConnectorError::InvalidOption {
                    option: "format".into(),
                    value: other.into(),
                    reason: "a single_file source reads 'json', 'debezium_json' or 'raw_string'"
                        .into(),
                });
            }
        };
        if format == LineFormat::Raw
            && (schema.fields().len() != 1 || schema.field(0).data_type() != &DataType::Utf8)
        {
            return Err(ConnectorError::Usage(
                "a raw_string or json.unstructured table has exactly one text column (value TEXT or value JSON)".into(),
            ));
        }
        let bad_data = take_bad_data(options)?;
        if options.take_parsed::<bool>("wait_for_control")? == Some(true) {
            return Err(ConnectorError::InvalidOption {
                option: "wait_for_control".into(),
                value: "true".into(),
                reason: "only 'false' is supported: the file is read at full speed".into(),
            });
        }
        Ok(FileSourceConfig {
            path,
            format,
            bad_data,
        })
    }
}

pub struct FileSourceFactory {
    path: String,
    rows: Arc<Rows>,
}

impl FileSourceFactory {
    pub fn new(
        config: FileSourceConfig,
        schema: SchemaRef,
        event_time: EventTimeSpec,
        generated: Generated,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let rows = Rows::new(
            config.format,
            config.bad_data,
            schema,
            event_time,
            generated,
            projection,
        );
        FileSourceFactory {
            path: config.path,
            rows: Arc::new(rows),
        }
    }
}

impl SourceFactory for FileSourceFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        Ok(Box::new(FileSource {
            path: self.path.clone(),
            subtask: info.subtask,
            reader: LineReader::new(self.rows.clone(), info, self.path.clone()),
        }))
    }
}

/// One subtask of a `single_file` source: subtask 0 reads the file, the others finish at once.
struct FileSource {
    path: String,
    subtask: usize,
    reader: LineReader,
}

/// The state table of a file source.
const POSITION: &str = "position";

#[async_trait]
impl Source for FileSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        if self.subtask != 0 || self.reader.position().done {
            // One reader per file: the other subtasks have nothing to do.
            return Ok(SourceEnd::Finished);
        }
        let path = self.path.clone();
        crate::storage::access::check(std::path::Path::new(&path))
            .map_err(|e| self.reader.fail(e))?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.reader.fail(StorageError::io("opening", &path)(e)))?;
        let offset = self.reader.position().offset;
        if offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| self.reader.fail(StorageError::io("seeking in", &path)(e)))?;
        }
        self.reader
            .read_lines(ctx, file, |r: &LineReader| position_state(r.position()))
            .await
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        if self.subtask == 0 {
            return position_state(self.reader.position());
        }
        Ok(TaskState::new())
    }

    /// The one reader of the file is subtask 0, at any parallelism.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if self.subtask == 0
            && let Some(position) = state
                .json::<FilePosition>(POSITION)?
                .into_iter()
                .flatten()
                .next()
        {
            self.reader.resume_at(position);
        }
        Ok(())
    }
}

/// The state of the reading subtask: how far it read.
fn position_state(position: FilePosition) -> Result<TaskState, TaskError> {
    let mut state = TaskState::new();
    state.put_json(POSITION, &position)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::dataflow::run;
    use crate::task::{ErrorKind, JobContext, UserFault, error_chain};

    /// Runs `sql` to its end without checkpoints; the error it fails with.
    async fn failure(sql: &str) -> crate::dataflow::DataflowError {
        let program = crate::sql::plan(sql).expect("plans").program;
        let handle = run(&program, 1, Arc::new(JobContext::default()), None)
            .await
            .unwrap();
        handle.wait().await.expect_err("the run fails")
    }

    fn source_of(path: &std::path::Path) -> String {
        format!(
            "CREATE TABLE t (n BIGINT) WITH (connector = 'single_file', path = '{}', type = 'source');
             SELECT n FROM t;",
            path.display()
        )
    }

    #[tokio::test]
    async fn errors_say_whose_fault_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"n\": 1}\n{\"n\": \"one\"}\n").unwrap();
        let err = failure(&source_of(&bad)).await;
        assert_eq!(err.kind(), ErrorKind::User(UserFault::BadRecord));
        let message = error_chain(&err);
        assert!(message.contains("bad.json at line 2"), "{message}");

        let missing = dir.path().join("missing.json");
        let err = failure(&source_of(&missing)).await;
        assert_eq!(err.kind(), ErrorKind::User(UserFault::Storage));
        let message = error_chain(&err);
        assert!(
            message.contains("opening") && message.contains("missing.json"),
            "{message}"
        );
    }
}
