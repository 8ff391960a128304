//! Two-phase commit of the sink's part files: a file is written under a staged name and
//! appears under its final name only once the checkpoint that holds its rows completed.
//!
//! Per sink subtask:
//!
//! 1. A closed file is staged: it is at `<path>/.staging/<token>/<name>` (hidden from the
//!    filesystem source and other readers; `<token>` names the subtask's staging directory),
//!    and a local one is fsynced with its directories. It does not appear yet.
//! 2. At a checkpoint barrier the (staged, final) names of every file closed and not yet
//!    committed go into the subtask's state ([`SinkCheckpoint`], table `files`, with the
//!    token and, for serial names, the next file index).
//! 3. When the checkpoint completes (its MANIFEST is written), they are committed: renamed to
//!    their final names (copy then delete in an object store; a local rename, then the
//!    directory fsynced). A commit is idempotent: a staged file gone while its final name
//!    exists was committed.
//! 4. A restore commits the files its checkpoint lists (the checkpoint completed; the crash
//!    may have come before or during their commit), then deletes what else is in the staging
//!    directories of the old subtasks it took over (subtask `i` of the old run goes to
//!    `i % parallelism`): files written after the checkpoint, which never appear. The token
//!    of the same subtask is inherited and serial names go on from the highest index
//!    recorded, so a rerun never overwrites a file a checkpoint committed. A fresh subtask
//!    draws a new token: writers of other pipelines under the same path are left alone.
//! 5. At the end of input without checkpoints the files are committed at once; with
//!    checkpoints, the last epoch records them and its completion commits them.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::names;
use crate::connector::RunError;
use crate::storage::{Location, StorageError, durable};

/// The sink's state table: one [`SinkCheckpoint`] document per subtask.
pub(super) const SINK_TABLE: &str = "files";
/// The directory under the sink's path where finished files wait for their checkpoint; hidden
/// (a leading `.`) from the filesystem source and from other readers of the directory.
pub(super) const STAGING_DIR: &str = ".staging";

/// A finished file waiting for its checkpoint to complete, by paths in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StagedFile {
    /// Where it is: under the staging directory.
    pub staged: String,
    /// The name it is committed under.
    #[serde(rename = "final")]
    pub target: String,
}

/// A sink subtask's state at a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SinkCheckpoint {
    /// Names the subtask's staging directory, `<path>/.staging/<token>`: random on a fresh
    /// start, inherited on a restore, so that a restore clears what a crashed run left there
    /// and nothing of another pipeline writing to the same path.
    pub token: String,
    /// The index of the next file (in serial names): a rerun from the checkpoint reuses the
    /// names the lost run had used after it, and never one committed before.
    pub next_index: u64,
    /// Files staged up to this checkpoint and not known to be committed: restoring the
    /// checkpoint commits them.
    pub pending: Vec<StagedFile>,
}

/// What a restored subtask does before anything else.
#[derive(Debug, Default)]
struct Recovery {
    /// Files of the restored checkpoint to commit.
    commit: Vec<StagedFile>,
    /// Staging directories (tokens) to clear once those are committed: what is left in them
    /// was written after the checkpoint and must never appear.
    clear: Vec<String>,
}

/// One sink subtask's staged files and its staging directory.
pub(super) struct Staging {
    node: String,
    store: Arc<dyn ObjectStore>,
    /// The sink's directory.
    location: Location,
    subtask: usize,
    parallelism: usize,
    /// The name of this subtask's staging directory.
    pub token: String,
    /// Files closed since the last barrier.
    pub staged: Vec<StagedFile>,
    /// Files closed before a barrier, committed when a checkpoint completes.
    pending: Vec<StagedFile>,
    /// Set by a restore; done by the first call after it.
    recovery: Option<Recovery>,
}

impl Staging {
    /// The staging of subtask `subtask` of `parallelism`, with a new staging directory.
    pub fn new(
        node: String,
        store: Arc<dyn ObjectStore>,
        location: Location,
        subtask: usize,
        parallelism: usize,
    ) -> Self {
        Staging {
            node,
            store,
            location,
            subtask,
            parallelism: parallelism.max(1),
            token: names::uuid_v7(),
            staged: Vec::new(),
            pending: Vec::new(),
            recovery: None,
        }
    }

    fn display(&self, object: &Path) -> String {
        self.location.display(object)
    }

    /// `<path>/.staging/<token>`.
    fn staging_dir(&self, token: &str) -> Path {
        self.location.prefix().clone().join(STAGING_DIR).join(token)
    }

    /// The staged name of a file called `name` in this subtask's staging directory.
    pub fn staged_name(&self, name: &str) -> Path {
        self.staging_dir(&self.token).join(name)
    }

    /// Step 1: the file at `staged` was written whole; it is made durable and waits for a
    /// barrier, then for its checkpoint, to appear as `target`.
    pub async fn stage(&mut self, staged: &Path, target: &Path) -> Result<(), RunError> {
        // The file, its staging directory, `.staging` and the sink's directory: the last two
        // may just have been made.
        self.sync_local(staged, 3).await?;
        self.staged.push(StagedFile {
            staged: staged.to_string(),
            target: target.to_string(),
        });
        Ok(())
    }

    /// For a local path: fsyncs `object` and the `dirs` directories above it (its own
    /// first), so that a file and its name survive a crash.
    async fn sync_local(&self, object: &Path, dirs: usize) -> Result<(), RunError> {
        match self.location.local_path(object) {
            Some(path) => Ok(durable::sync(path, dirs).await?),
            None => Ok(()),
        }
    }

    /// Step 2: every file staged so far belongs to the checkpoint of this barrier; returns
    /// the state, with every file not committed yet.
    pub fn barrier(&mut self, next_index: u64) -> SinkCheckpoint {
        self.pending.append(&mut self.staged);
        SinkCheckpoint {
            token: self.token.clone(),
            next_index,
            pending: self.pending.clone(),
        }
    }

    /// Step 3: a checkpoint completed; commits the files staged before its barrier.
    ///
    /// Every pending file was staged before a barrier this subtask has passed, and the runtime
    /// delivers the completion of an epoch before the barrier of the next one (the coordinator
    /// triggers one epoch at a time), so all of them belong to the completed checkpoint or an
    /// earlier one.
    pub async fn commit_pending(&mut self) -> Result<(), RunError> {
        let files = std::mem::take(&mut self.pending);
        for (i, file) in files.iter().enumerate() {
            if let Err(e) = self.commit(file).await {
                self.pending = files[i..].to_vec();
                return Err(e);
            }
        }
        if !files.is_empty() {
            crate::failpoint::crash_point!("sink_committed");
            info!(node = %self.node, subtask = self.subtask, files = files.len(), "files committed");
        }
        Ok(())
    }

    /// Moves a staged file to its final name, where it appears whole. Idempotent: when the
    /// staged file is gone and the final one exists, an earlier commit did it.
    pub async fn commit(&mut self, file: &StagedFile) -> Result<(), RunError> {
        let parse = |p: &str| {
            Path::parse(p)
                .map_err(|e| RunError::BadCheckpoint(format!("names an invalid path '{p}': {e}")))
        };
        let (staged, target) = (parse(&file.staged)?, parse(&file.target)?);
        let (from, to) = (self.display(&staged), self.display(&target));
        let failed = |e| StorageError::store("committing", format!("{from} as {to}"))(e).into();
        match self.store.rename(&staged, &target).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => match self.store.head(&target).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(RunError::Missing {
                        target: to,
                        staged: from,
                    });
                }
                Err(e) => return Err(failed(e)),
            },
            Err(e) => return Err(failed(e)),
        }
        // The new name in its directory, and the partition directories above it up to the
        // sink's, which the rename may have made.
        let levels = target.parts().count() - self.location.prefix().parts().count();
        self.sync_local(&target, levels.max(1)).await
    }

    /// Step 4, first half: takes the state of every old subtask (`docs`, by old subtask): the
    /// staging directory of the same subtask is inherited, and the pending files and staging
    /// directories of old subtasks `i` with `i % parallelism == subtask` become this
    /// subtask's to commit and to clear. Returns the highest next file index recorded.
    pub fn restore(&mut self, docs: Vec<Vec<SinkCheckpoint>>) -> Result<u64, RunError> {
        let mut recovery = Recovery::default();
        let mut next_index = 0;
        for (old, docs) in docs.into_iter().enumerate() {
            for doc in docs {
                if doc.token.is_empty() || doc.token.contains('/') || doc.token.starts_with('.') {
                    return Err(RunError::BadCheckpoint(format!(
                        "of the sink at {} names an invalid staging directory '{}'",
                        self.display(self.location.prefix()),
                        doc.token
                    )));
                }
                next_index = next_index.max(doc.next_index);
                if old == self.subtask {
                    self.token = doc.token.clone();
                }
                if old % self.parallelism == self.subtask {
                    recovery.commit.extend(doc.pending);
                    recovery.clear.push(doc.token);
                }
            }
        }
        self.recovery = Some(recovery);
        Ok(next_index)
    }

    /// Step 4, second half, after a restore and before anything else: commits the restored
    /// checkpoint's files, then deletes whatever else is in the staging directories this
    /// subtask took over.
    pub async fn recover(&mut self) -> Result<(), RunError> {
        let Some(recovery) = self.recovery.take() else {
            return Ok(());
        };
        for file in &recovery.commit {
            self.commit(file).await?;
        }
        let mut cleared = 0;
        for token in &recovery.clear {
            let dir = self.staging_dir(token);
            let shown = self.display(&dir);
            let listed: Vec<ObjectMeta> = match self.store.list(Some(&dir)).try_collect().await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(StorageError::store("listing", shown)(e).into()),
            };
            for meta in listed {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => cleared += 1,
                    Err(e) => {
                        let shown = self.display(&meta.location);
                        return Err(StorageError::store("deleting", shown)(e).into());
                    }
                }
            }
            if token != &self.token {
                self.remove_empty_dir(&dir).await;
            }
        }
        info!(
            node = %self.node,
            subtask = self.subtask,
            committed = recovery.commit.len(),
            deleted = cleared,
            "sink recovered its checkpoint"
        );
        Ok(())
    }

    /// Step 5 without checkpoints: commits every file staged (no checkpoint follows).
    pub async fn commit_all(&mut self) -> Result<(), RunError> {
        self.pending.append(&mut self.staged);
        self.commit_pending().await?;
        self.tidy().await;
        Ok(())
    }

    /// Removes this subtask's staging directory (and `.staging`) when they are empty.
    pub async fn tidy(&mut self) {
        let own = self.staging_dir(&self.token);
        self.remove_empty_dir(&own).await;
        if let Some(staging) = own.parent() {
            self.remove_empty_dir(&staging).await;
        }
    }

    /// For a local path, removes directory `dir` if it is empty (object stores have no
    /// directories to remove).
    async fn remove_empty_dir(&mut self, dir: &Path) {
        if let Some(path) = self.location.local_path(dir) {
            // Not empty, or already gone: nothing to do either way.
            let _ = tokio::fs::remove_dir(path).await;
        }
    }
}
