//! The daemon's one door into the engine: planning, storage locations, the checkpoints under a
//! state URL, and (for `arroyod worker`) running a job.
//!
//! Every other daemon module names engine items through this one, so that the engine can move
//! them without the daemon noticing beyond this file. It owns no state and never blocks the
//! runtime: planning goes through `spawn_blocking`, storage through object_store's async API.

use std::path::{Path, PathBuf};

use object_store::ObjectStore;

use crate::secrets;

pub use arroyod_engine::error_chain;
pub use arroyod_engine::failpoint;
pub use arroyod_engine::job::{
    self, Checkpointing, CommitGate, CompletedCheckpoint, DataflowError, JobSpec, NodeFigures,
    NodeMetrics, Outcome as RunOutcome, Role, Route, Shape, StopMode as EngineStop,
};
pub use arroyod_engine::sql::{PlannedQuery, SqlError};
pub use arroyod_engine::storage::access::{
    Confinement, check_with as check_path, confine, lexical_absolute,
};
pub use arroyod_engine::storage::checksum::fnv1a64;
pub use arroyod_engine::storage::{
    CheckpointStore, Location, StorageError as CheckpointError, StorageError as LocationError,
    durable,
};
pub use arroyod_engine::{HostAccess, HostAccessKind, PlannedSink};

/// Plans `query` off the runtime (planning is pure: it reads no file and starts nothing), once
/// its `{{ VAR }}`s are substituted from this process's environment. Errors never show the
/// values of secret options.
pub async fn plan(query: String) -> Result<PlannedQuery, Vec<SqlError>> {
    plan_with_env(query, true).await
}

/// [`plan`], its `{{ VAR }}`s taken from this process's environment only when `from_env`
/// (without: every one is unset, as for a pipeline of another user than the daemon's).
pub async fn plan_with_env(query: String, from_env: bool) -> Result<PlannedQuery, Vec<SqlError>> {
    let lookup = |name: &str| from_env.then(|| std::env::var(name).ok()).flatten();
    let query = secrets::substitute(&query, lookup).map_err(|unset| {
        unset
            .into_iter()
            .map(|u| SqlError {
                message: u.to_string(),
                line: u.line,
                column: u.column,
            })
            .collect::<Vec<_>>()
    })?;
    let hidden = secrets::secret_values(&query);
    let planned = plan_on_large_stack(query).await;
    planned.map_err(|errors| {
        errors
            .into_iter()
            .map(|e| SqlError {
                message: secrets::redact(&e.message, &hidden),
                ..e
            })
            .collect()
    })
}

/// The stack of the thread that plans a query. DataFusion's planner and optimizer recurse
/// over expression trees, and a flat chain of 10,000 `OR` terms is a tree 10,000 deep; only
/// the pages used are ever touched.
pub const PLAN_STACK_BYTES: usize = 1 << 30;

/// Plans `query` on a thread of its own with a [`PLAN_STACK_BYTES`] stack (a blocking-pool
/// thread has 2 MiB), off the runtime.
async fn plan_on_large_stack(query: String) -> Result<PlannedQuery, Vec<SqlError>> {
    let failed = |message: String| {
        Err(vec![SqlError {
            message,
            line: 0,
            column: 0,
        }])
    };
    let spawned = std::thread::Builder::new()
        .name("planner".into())
        .stack_size(PLAN_STACK_BYTES)
        .spawn(move || arroyod_engine::sql::plan(&query));
    let planner = match spawned {
        Ok(planner) => planner,
        Err(e) => return failed(format!("starting the planner thread: {e}")),
    };
    // The plan comes back through the join, off the runtime's threads; a panic (already
    // reported on stderr) is an error here.
    match tokio::task::spawn_blocking(move || planner.join()).await {
        Ok(Ok(planned)) => planned,
        Ok(Err(_)) => failed("planning panicked".to_string()),
        Err(e) => failed(format!("waiting for the planner: {e}")),
    }
}

/// `path` made absolute against the working directory, with `.` and `..` resolved lexically
/// (as object_store's local paths are): done once, when settings are built.
pub fn absolute_path(path: &Path) -> PathBuf {
    lexical_absolute(path)
}

/// A storage location as given at start, made absolute once: a local path (resolved against
/// the working directory when the settings are built, never later) or a `file://`, `s3://`,
/// `gs://` or `az://` URL. Locations stored relative to it are resolved with [`StorageUrl::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl(String);

impl StorageUrl {
    /// Checks `text` against the supported stores; a relative local path is made absolute.
    pub fn parse(text: &str) -> Result<StorageUrl, LocationError> {
        let normal = if text.contains("://") {
            text.trim_end_matches('/').to_string()
        } else {
            absolute_path(Path::new(text)).display().to_string()
        };
        Location::parse(&normal, vec![])?;
        Ok(StorageUrl(normal))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The local directory, for a local path or `file://` URL.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self.0.split_once("://") {
            None => Some(PathBuf::from(&self.0)),
            Some(("file", rest)) => Some(PathBuf::from(rest)),
            Some(_) => None,
        }
    }

    /// `relative` (a path under this location, without a leading `/`) as a full location.
    pub fn join(&self, relative: &str) -> String {
        format!("{}/{}", self.0.trim_end_matches('/'), relative)
    }

    /// The names of the directories right under this location whose checkpoints (a complete
    /// one at least) are there: the pipelines whose state lives here.
    pub async fn pipelines_with_checkpoints(&self) -> Result<Vec<String>, StateRootError> {
        let failed = |reason: String| StateRootError {
            url: self.0.clone(),
            reason,
        };
        let location = Location::parse(&self.0, vec![]).map_err(|e| failed(error_chain(&e)))?;
        if let Some(dir) = self.local_path()
            && !dir.exists()
        {
            return Ok(vec![]);
        }
        let store = location.store().map_err(|e| failed(error_chain(&e)))?;
        let listed = match store.list_with_delimiter(Some(location.prefix())).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
            Err(e) => return Err(failed(error_chain(&e))),
        };
        let mut found = Vec::new();
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let checkpoints =
                CheckpointStore::open(&self.join(&name)).map_err(|e| failed(error_chain(&e)))?;
            if checkpoints
                .latest()
                .await
                .map_err(|e| failed(error_chain(&e)))?
                .is_some()
            {
                found.push(name);
            }
        }
        found.sort();
        Ok(found)
    }
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A state location that cannot be listed or removed.
#[derive(Debug, thiserror::Error)]
#[error("the state location {url}: {reason}")]
pub struct StateRootError {
    pub url: String,
    pub reason: String,
}

/// Removes everything under the state location `url` (a deleted pipeline's checkpoints): a
/// local directory with its contents, or every object under a URL's prefix.
pub async fn remove_state(url: &str) -> Result<(), StateRootError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let failed = |reason: String| StateRootError {
        url: url.to_string(),
        reason,
    };
    let location = StorageUrl::parse(url).map_err(|e| failed(error_chain(&e)))?;
    if let Some(dir) = location.local_path() {
        return match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e.to_string())),
            _ => Ok(()),
        };
    }
    let location =
        Location::parse(location.as_str(), vec![]).map_err(|e| failed(error_chain(&e)))?;
    let store = location.store().map_err(|e| failed(error_chain(&e)))?;
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(location.prefix()))
        .try_collect()
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    for object in objects {
        match store.delete(&object.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(failed(error_chain(&e))),
        }
    }
    Ok(())
}

/// The epochs whose complete checkpoints are still under `state_url` (garbage collection
/// keeps the newest few), newest first.
pub async fn retained_epochs(state_url: &str) -> Result<Vec<u64>, CheckpointError> {
    job::checkpoints(state_url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_made_absolute_once_and_urls_kept() {
        let cwd = std::env::current_dir().unwrap();
        let url = StorageUrl::parse("st/./x/../state/").unwrap();
        assert_eq!(url.as_str(), cwd.join("st/state").display().to_string());
        assert_eq!(url.local_path(), Some(cwd.join("st/state")));
        assert_eq!(
            url.join("abc"),
            cwd.join("st/state/abc").display().to_string()
        );
        let s3 = StorageUrl::parse("s3://bucket/root/").unwrap();
        assert_eq!(s3.as_str(), "s3://bucket/root");
        assert_eq!(s3.local_path(), None);
        assert_eq!(s3.join("p1"), "s3://bucket/root/p1");
        assert!(StorageUrl::parse("ftp://host/x").is_err());
    }
}
