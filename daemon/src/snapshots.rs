//! The task `snapshots`: it snapshots the metadata database to `backup_url` (see
//! [`crate::backup`]) every [`BACKUP_PERIOD`] and after completed checkpoints (at most one per
//! [`BACKUP_AFTER_CHECKPOINT_GAP`], so that short checkpoint intervals do not turn into an
//! upload storm). A failed snapshot is a warning, never fatal. A snapshot under way finishes
//! before the task ends.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::backup::Backup;
use crate::engine::error_chain;
use crate::store::Store;

/// How often the metadata database is snapshotted when `backup_url` is set.
pub const BACKUP_PERIOD: Duration = Duration::from_secs(60);
/// The least time between two snapshots taken after completed checkpoints.
const BACKUP_AFTER_CHECKPOINT_GAP: Duration = Duration::from_secs(5);

/// The running task; aborted on drop.
pub struct Snapshots {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Backup>>,
}

impl Snapshots {
    /// Starts the task; the copies are made in `data_dir`.
    pub fn spawn(
        mut backup: Backup,
        store: Store,
        data_dir: PathBuf,
        mut checkpointed: watch::Receiver<u64>,
    ) -> Snapshots {
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(
            async move {
                let start = tokio::time::Instant::now() + BACKUP_PERIOD;
                let mut tick = tokio::time::interval_at(start, BACKUP_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        _ = cancelled.cancelled() => return backup,
                        _ = tick.tick() => {}
                        // After completed checkpoints, so metadata and state move together.
                        changed = checkpointed.changed() => {
                            if changed.is_err() {
                                return backup;
                            }
                            if last.is_some_and(|l| l.elapsed() < BACKUP_AFTER_CHECKPOINT_GAP) {
                                continue;
                            }
                        }
                    }
                    last = Some(tokio::time::Instant::now());
                    match backup.snapshot(&store, &data_dir).await {
                        Ok(p) => debug!(snapshot = %p.name, bytes = p.length, "metadata snapshot uploaded"),
                        Err(e) => warn!(error = %error_chain(&e), "metadata snapshot failed"),
                    }
                }
            }
            .instrument(info_span!("snapshots")),
        );
        Snapshots {
            stop,
            task: Some(task),
        }
    }

    /// Ends the task (after a snapshot under way) and hands back its [`Backup`].
    pub async fn finish(mut self) -> Option<Backup> {
        self.stop.cancel();
        let task = self.task.take()?;
        match task.await {
            Ok(backup) => Some(backup),
            Err(e) => {
                warn!(error = %e, "the snapshot task failed");
                None
            }
        }
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
