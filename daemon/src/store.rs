//! The metadata store: the daemon's SQLite database (WAL mode), opened with sqlx and migrated
//! with the embedded `migrations/` at start.
//!
//! It owns the rows of pipelines and their events; it never holds a transaction across an
//! await on anything but SQLite itself.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Errors of the metadata store; each names the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or a statement failed.
    #[error("metadata database {}", path.display())]
    Sqlx {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed: the database is from a newer arroyod or damaged.
    #[error("migrating the metadata database {}", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The database file could not be made private (mode 0600).
    #[error("making {} private", path.display())]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pipeline with this name exists.
    #[error("a pipeline named '{0}' already exists")]
    NameTaken(String),
}

/// A pipeline's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRow {
    pub id: String,
    pub name: String,
    pub query: String,
    pub parallelism: u32,
    pub desired: String,
    pub state: String,
    pub failure: String,
    pub generation: u64,
    pub created_at: String,
    pub updated_at: String,
    pub checkpoint_interval_ms: u64,
    /// The plan's fingerprint (see `PlannedQuery::fingerprint`).
    pub plan_hash: String,
    /// Where its checkpoints are written.
    pub state_url: String,
    /// The most memory its worker may use, in bytes; 0: no limit.
    pub memory_limit_bytes: u64,
    /// Who submitted it (the caller's uid); None: the daemon's own user. Never updated.
    pub submitter_uid: Option<u32>,
}

/// Completed checkpoints remembered per pipeline (the state URL keeps fewer: those are the
/// ones that can still be restored).
pub const CHECKPOINTS_KEPT: usize = 100;

/// A completed checkpoint, as the worker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub epoch: u64,
    pub generation: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    pub completed_at: String,
    /// The output log's next offset when it completed.
    pub output_offset: u64,
}

/// Events remembered per pipeline (the oldest go first).
pub const EVENTS_KEPT: usize = 10_000;

/// A recorded event of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub at: String,
    /// state, error, warning, restart or checkpoint.
    pub kind: String,
    /// The pipeline's state after it.
    pub state: String,
    pub generation: u64,
    pub message: String,
}

/// A pipeline row for tests: pipeline `id`, named `name-<id>`, Created.
#[cfg(test)]
pub fn test_row(id: &str) -> PipelineRow {
    PipelineRow {
        id: id.into(),
        name: format!("name-{id}"),
        query: "SELECT 1".into(),
        parallelism: 1,
        desired: "Running".into(),
        state: "Created".into(),
        failure: String::new(),
        generation: 0,
        created_at: now_rfc3339(),
        updated_at: now_rfc3339(),
        checkpoint_interval_ms: 10_000,
        plan_hash: "0123456789abcdef".into(),
        state_url: "/tmp/state".into(),
        memory_limit_bytes: 0,
        submitter_uid: None,
    }
}

/// Creates the database file `path` with mode 0600 when missing, or sets that mode: SQLite
/// gives its WAL and shared-memory files the database's mode, whatever the umask. Stored
/// queries may hold `storage.*` credentials.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    for suffix in ["-wal", "-shm"] {
        let side = path.with_file_name(format!("arroyod.db{suffix}"));
        match std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The database file, for messages.
    path: Arc<PathBuf>,
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn row(r: &sqlx::sqlite::SqliteRow) -> PipelineRow {
    PipelineRow {
        id: r.get("id"),
        name: r.get("name"),
        query: r.get("query"),
        parallelism: r.get::<i64, _>("parallelism") as u32,
        desired: r.get("desired"),
        state: r.get("state"),
        failure: r.get("failure"),
        generation: r.get::<i64, _>("generation") as u64,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        checkpoint_interval_ms: r.get::<i64, _>("checkpoint_interval_ms") as u64,
        plan_hash: r.get("plan_hash"),
        state_url: r.get("state_url"),
        memory_limit_bytes: r.get::<i64, _>("memory_limit_bytes") as u64,
        submitter_uid: r
            .get::<Option<i64>, _>("submitter_uid")
            .and_then(|uid| u32::try_from(uid).ok()),
    }
}

impl Store {
    /// Opens (creating if needed) `dir/arroyod.db` and migrates it.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("arroyod.db");
        private_file(&path).map_err(|source| StoreError::Mode {
            path: path.clone(),
            source,
        })?;
        let failed = |source| StoreError::Sqlx {
            path: path.clone(),
            source,
        };
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(failed)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(failed)?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            pool,
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn failed(&self, source: sqlx::Error) -> StoreError {
        StoreError::Sqlx {
            path: self.path.to_path_buf(),
            source,
        }
    }

    pub async fn insert(&self, p: &PipelineRow) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO pipelines (id, name, query, parallelism, desired, state, failure, generation, created_at, updated_at, checkpoint_interval_ms, plan_hash, state_url, memory_limit_bytes, submitter_uid)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.query)
        .bind(p.parallelism as i64)
        .bind(&p.desired)
        .bind(&p.state)
        .bind(&p.failure)
        .bind(p.generation as i64)
        .bind(&p.created_at)
        .bind(&p.updated_at)
        .bind(p.checkpoint_interval_ms as i64)
        .bind(&p.plan_hash)
        .bind(&p.state_url)
        .bind(p.memory_limit_bytes as i64)
        .bind(p.submitter_uid.map(i64::from))
        .execute(&self.pool)
        .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::NameTaken(p.name.clone()))
            }
            other => other.map(|_| ()).map_err(|e| self.failed(e)),
        }
    }

    /// Writes what changes of `p` (state, failure, desired state, generation, query,
    /// parallelism, checkpoint interval and memory limit on a resume or update, state
    /// location), and logs an event of `kind`.
    pub async fn update(
        &self,
        p: &PipelineRow,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.update_in(p, kind, message)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn update_in(
        &self,
        p: &PipelineRow,
        kind: &str,
        message: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE pipelines SET desired = ?, state = ?, failure = ?, generation = ?, updated_at = ?, parallelism = ?, query = ?, plan_hash = ?, state_url = ?, checkpoint_interval_ms = ?, memory_limit_bytes = ? WHERE id = ?",
        )
        .bind(&p.desired)
        .bind(&p.state)
        .bind(&p.failure)
        .bind(p.generation as i64)
        .bind(&p.updated_at)
        .bind(p.parallelism as i64)
        .bind(&p.query)
        .bind(&p.plan_hash)
        .bind(&p.state_url)
        .bind(p.checkpoint_interval_ms as i64)
        .bind(p.memory_limit_bytes as i64)
        .bind(&p.id)
        .execute(&mut *tx)
        .await?;
        let event = EventRow {
            at: p.updated_at.clone(),
            kind: kind.to_string(),
            state: p.state.clone(),
            generation: p.generation,
            message: message.to_string(),
        };
        insert_event_in(&mut tx, &p.id, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an event of pipeline `id` that changes nothing else (a warning, a checkpoint).
    pub async fn insert_event(&self, id: &str, event: &EventRow) -> Result<(), StoreError> {
        let run = async {
            let mut tx = self.pool.begin().await?;
            insert_event_in(&mut tx, id, event).await?;
            tx.commit().await
        };
        run.await.map_err(|e| self.failed(e))
    }

    /// The events of pipeline `id`, oldest first; only the newest `last` when given.
    /// True when pipeline `id` has recorded an event of `kind` (in any generation).
    pub async fn has_event(&self, id: &str, kind: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM pipeline_events WHERE pipeline_id = ? AND kind = ? LIMIT 1",
        )
        .bind(id)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(found.is_some())
    }

    pub async fn events(&self, id: &str, last: Option<u32>) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, kind, state, generation, message FROM pipeline_events
             WHERE pipeline_id = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(id)
        .bind(last.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let mut events: Vec<EventRow> = rows
            .iter()
            .map(|r| EventRow {
                at: r.get("at"),
                kind: r.get("kind"),
                state: r.get("state"),
                generation: r.get::<i64, _>("generation") as u64,
                message: r.get("message"),
            })
            .collect();
        events.reverse();
        Ok(events)
    }

    /// Deletes a pipeline, its events and its checkpoint rows.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.delete_in(id).await.map_err(|e| self.failed(e))
    }

    async fn delete_in(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM pipeline_events WHERE pipeline_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM checkpoints WHERE pipeline_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM pipelines WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<PipelineRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM pipelines ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(rows.iter().map(row).collect())
    }

    /// Forgets the checkpoint rows of pipeline `id` (its state was dropped).
    pub async fn delete_checkpoints(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM checkpoints WHERE pipeline_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Records a completed checkpoint of pipeline `id`, keeping its newest
    /// [`CHECKPOINTS_KEPT`] rows (one every 10 s would otherwise grow without end).
    pub async fn insert_checkpoint(&self, id: &str, c: &CheckpointRow) -> Result<(), StoreError> {
        self.insert_checkpoint_in(id, c)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn insert_checkpoint_in(&self, id: &str, c: &CheckpointRow) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT OR REPLACE INTO checkpoints (pipeline_id, epoch, generation, bytes, duration_ms, completed_at, output_offset)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(c.epoch as i64)
        .bind(c.generation as i64)
        .bind(c.bytes as i64)
        .bind(c.duration_ms as i64)
        .bind(&c.completed_at)
        .bind(c.output_offset as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM checkpoints WHERE pipeline_id = ? AND epoch NOT IN
               (SELECT epoch FROM checkpoints WHERE pipeline_id = ? ORDER BY epoch DESC LIMIT ?)",
        )
        .bind(id)
        .bind(id)
        .bind(CHECKPOINTS_KEPT as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoints of pipeline `id`, newest first.
    pub async fn checkpoints(&self, id: &str) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT epoch, generation, bytes, duration_ms, completed_at, output_offset FROM checkpoints
             WHERE pipeline_id = ? ORDER BY epoch DESC",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(rows
            .iter()
            .map(|r| CheckpointRow {
                epoch: r.get::<i64, _>("epoch") as u64,
                generation: r.get::<i64, _>("generation") as u64,
                bytes: r.get::<i64, _>("bytes") as u64,
                duration_ms: r.get::<i64, _>("duration_ms") as u64,
                completed_at: r.get("completed_at"),
                output_offset: r.get::<i64, _>("output_offset") as u64,
            })
            .collect())
    }

    /// Writes a consistent copy of the live database to `path` with `VACUUM INTO` (readers
    /// and writers of the live database go on meanwhile). `path` must not exist.
    pub async fn vacuum_into(&self, path: &Path) -> Result<(), StoreError> {
        sqlx::query("VACUUM INTO ?")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inserts an event in `tx`, keeping the pipeline's newest [`EVENTS_KEPT`].
async fn insert_event_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    e: &EventRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pipeline_events (pipeline_id, at, state, message, kind, generation)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(&e.at)
    .bind(&e.state)
    .bind(&e.message)
    .bind(&e.kind)
    .bind(e.generation as i64)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM pipeline_events WHERE pipeline_id = ? AND seq <=
           (SELECT seq FROM pipeline_events WHERE pipeline_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
    )
    .bind(id)
    .bind(id)
    .bind(EVENTS_KEPT as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_618), (2023, 9, 18));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[tokio::test]
    async fn rows_round_trip_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut p = PipelineRow {
            name: "one".into(),
            parallelism: 2,
            submitter_uid: Some(65534),
            ..test_row("p1")
        };
        store.insert(&p).await.unwrap();
        let dup = PipelineRow {
            id: "p2".into(),
            ..p.clone()
        };
        assert!(matches!(
            store.insert(&dup).await,
            Err(StoreError::NameTaken(_))
        ));
        p.state = "Running".into();
        p.generation = 1;
        p.memory_limit_bytes = 1 << 30;
        store.update(&p, "state", "started").await.unwrap();
        let warning = EventRow {
            at: now_rfc3339(),
            kind: "warning".into(),
            state: "Running".into(),
            generation: 1,
            message: "slow".into(),
        };
        store.insert_event(&p.id, &warning).await.unwrap();
        let events = store.events(&p.id, None).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].message, "started");
        assert_eq!(events[1], warning);
        assert_eq!(store.events(&p.id, Some(1)).await.unwrap(), vec![warning]);
        store.close().await;
        // Reopen: the row survived.
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.list().await.unwrap(), vec![p.clone()]);

        // Checkpoints: newest first, the oldest beyond the kept number pruned.
        let extra = 5;
        for epoch in 1..=(CHECKPOINTS_KEPT as u64 + extra) {
            let c = CheckpointRow {
                epoch,
                generation: 1,
                bytes: epoch * 10,
                duration_ms: 3,
                completed_at: now_rfc3339(),
                output_offset: epoch * 2,
            };
            store.insert_checkpoint(&p.id, &c).await.unwrap();
        }
        let kept = store.checkpoints(&p.id).await.unwrap();
        assert_eq!(kept.len(), CHECKPOINTS_KEPT);
        assert_eq!(kept[0].epoch, CHECKPOINTS_KEPT as u64 + extra);
        assert_eq!(kept.last().unwrap().epoch, extra + 1);
        // Deleting the pipeline deletes its checkpoints.
        store.delete(&p.id).await.unwrap();
        assert!(store.checkpoints(&p.id).await.unwrap().is_empty());
    }
}
