//! The one start-up sequence of the daemon's components, shared by `arroyod serve` and
//! `arroyod run`, and their shutdown.
//!
//! Start, in order:
//!
//! 1. Create the data dir (mode 0700, as a local state root; the database and lock are 0600,
//!    whatever the umask) and take its lock (a second daemon on the same dir exits naming the
//!    holder's pid).
//! 2. Restore the metadata from `backup_url` when the settings say so: always for
//!    `arroyod run -s URL`, only when the database is missing or empty for the daemon.
//! 3. Open and migrate SQLite. A database that knows no pipeline beside a state root that
//!    holds checkpoints is refused: the metadata was lost (a removed data dir, a deleted or
//!    truncated `arroyod.db`), and starting afresh would silently redo what those pipelines
//!    did.
//! 4. Load the controller (every pipeline's task).
//! 5. Bind the worker socket (mode 0600) and, for the daemon, the public socket (0660); serve
//!    the metrics when `metrics_addr` is set.
//! 6. Start the snapshot task when `backup_url` is set.
//! 7. Resume the pipelines that should run, when asked (the daemon; `run` decides itself).
//!
//! Shutdown: stop every pipeline and wait for them (and for a snapshot under way), take a last
//! snapshot, close the store, then stop serving.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arroyod_proto::arroyod_server::ArroyodServer;
use arroyod_proto::worker_control_server::WorkerControlServer;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{About, Api, WorkerApi};
use crate::backup::{Backup, BackupError};
use crate::controller::{Controller, ControllerError};
use crate::engine::error_chain;
use crate::metrics::MetricsError;
use crate::settings::{MetadataRestore, Settings};
use crate::snapshots::Snapshots;
use crate::store::{Store, StoreError};

/// Errors of starting the daemon's components.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Another process holds the data dir's lock.
    #[error("data dir {} is in use by {holder} (lock file {})", dir.display(), lock.display())]
    DataDirInUse {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    /// A file or directory operation failed.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `backup_url` cannot be used, or its newest snapshot could not be restored.
    #[error("restoring the metadata from {url}")]
    Restore {
        url: String,
        #[source]
        source: Box<BackupError>,
    },
    /// The metadata store could not be opened.
    #[error("opening the metadata store")]
    Store(#[source] StoreError),
    /// The stored pipelines could not be loaded.
    #[error("loading the pipelines")]
    Load(#[source] ControllerError),
    /// The metrics could not be served.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A process answers at the socket: it is live, not stale.
    #[error(
        "another process listens at {}: a live socket is never replaced (is another arroyod running with another data dir?)",
        path.display()
    )]
    SocketInUse { path: PathBuf },
    /// The socket path names a file that is not a socket.
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    /// The database knows no pipeline, but the state root holds their checkpoints.
    #[error(
        "{} knows no pipeline, but the state root {state_root} holds checkpoints of {pipelines}: \
         the metadata was lost. Restore it (arroyod restore-db, or set backup_url to where its \
         snapshots are), or move that state away to start afresh",
        db.display()
    )]
    LostMetadata {
        db: PathBuf,
        state_root: String,
        pipelines: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let path = path.to_path_buf();
    move |source| BootstrapError::Io { what, path, source }
}

/// How long shutdown waits for the servers after every pipeline stopped.
const SERVER_DRAIN: Duration = Duration::from_secs(5);
/// How long the last snapshot at shutdown may take.
const FINAL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The exclusive lock on a data dir, held for the life of the process.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes `dir/arroyod.lock`, or fails naming the pid that holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, BootstrapError> {
        let path = dir.join("arroyod.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("pid {holder}")
            };
            return Err(BootstrapError::DataDirInUse {
                dir: dir.to_path_buf(),
                lock: path,
                holder: who,
            });
        }
        let pid = format!("{}\n", std::process::id());
        crate::engine::durable::overwrite(&mut file, pid.as_bytes())
            .map_err(io("writing", &path))?;
        Ok(DataDirLock { _file: file })
    }
}

/// Creates `dir` (and its parents) with mode 0700, or takes group and other access away from
/// one of ours that has it: the data dir and a local state root hold stored queries (which may
/// carry `storage.*` credentials) and pipelines' state, whatever the umask.
fn private_dir(dir: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    let meta = std::fs::metadata(dir).map_err(io("inspecting", dir))?;
    let ours = arroyod_proto::socket::real_uid().is_ok_and(|uid| uid == meta.uid());
    if ours && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("setting the mode of", dir))?;
    }
    Ok(())
}

/// Binds a socket at `path` with `mode`. A missing parent directory is created with mode 0700;
/// the fallback directory `/tmp/arroyod-$UID` must be private and ours (see
/// [`arroyod_proto::socket::check_fallback_dir`]). What is at `path` already is replaced only
/// when it is a socket nobody answers on: a live socket belongs to another daemon, and any
/// other file is not ours to delete.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, BootstrapError> {
    use arroyod_proto::socket;
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io("creating", parent))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .map_err(io("setting the mode of", parent))?;
        }
        if let Ok(uid) = socket::real_uid()
            && parent == socket::fallback_dir(uid)
        {
            socket::check_fallback_dir(parent, uid).map_err(io("using the directory", parent))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", path)(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BootstrapError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BootstrapError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io("removing", path))?;
            info!(socket = %path.display(), "removed a stale socket");
        }
    }
    let listener = UnixListener::bind(path).map_err(io("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))?;
    Ok(listener)
}

/// Gives the public socket to `allowed_group`, so that its members can connect (mode 0660);
/// a daemon that may not (not root, not in the group) says so and goes on.
fn give_socket_to_group(socket: &Path, policy: &crate::access::Policy) {
    if let Some((name, gid)) = &policy.allowed_group
        && let Err(e) = std::os::unix::fs::chown(socket, None, Some(*gid))
    {
        warn!(socket = %socket.display(), group = %name, error = %e, "cannot give the socket to allowed_group: its members may not reach it");
    }
}

/// Where the worker socket of a data dir lives. Unix socket paths are short (108 bytes): a
/// long data dir puts it under the temp dir instead.
fn worker_socket_path(data_dir: &Path) -> PathBuf {
    let path = data_dir.join("worker.sock");
    if path.as_os_str().len() < 100 {
        return path;
    }
    std::env::temp_dir().join(format!("arroyod-worker-{}.sock", std::process::id()))
}

/// Serves `router` on `listener` until `stop` is cancelled, in the task `name`.
fn spawn_server(
    servers: &mut JoinSet<()>,
    name: &'static str,
    router: Router,
    listener: UnixListener,
    stop: CancellationToken,
) {
    let served = async move {
        let incoming = UnixListenerStream::new(listener);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            warn!(server = name, error = %e, "a gRPC server failed");
        }
    };
    servers.spawn(served.instrument(info_span!("server", name)));
}

/// What a start does beyond the common sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartOptions {
    /// Resume every pipeline that should run (the daemon).
    pub resume_all: bool,
    /// Start even beside checkpoints of pipelines the database does not know (`run --force`).
    pub adopt_orphan_state: bool,
}

/// The daemon's components, shared by `serve` and `run`.
pub struct Daemon {
    pub controller: Arc<Controller>,
    _lock: DataDirLock,
    servers: JoinSet<()>,
    stop_serving: CancellationToken,
    snapshots: Option<Snapshots>,
    data_dir: PathBuf,
    socket: Option<PathBuf>,
}

/// The database file's length, 0 when missing.
fn db_length(db: &Path) -> u64 {
    std::fs::metadata(db).map_or(0, |m| m.len())
}

/// Step 2: restores the metadata from the newest snapshot of `url` when `restore` says so.
async fn restore_metadata(
    url: &str,
    restore: MetadataRestore,
    db: &Path,
) -> Result<(), BootstrapError> {
    let missing = db_length(db) == 0;
    if restore == MetadataRestore::WhenMissing && !missing {
        return Ok(());
    }
    let failed = |source| BootstrapError::Restore {
        url: url.to_string(),
        source: Box::new(source),
    };
    match crate::backup::restore_if_any(url, db)
        .await
        .map_err(failed)?
    {
        Some(snapshot) => {
            let why = if missing {
                "the data dir had no metadata"
            } else {
                "the state dir's snapshots are the truth"
            };
            info!(%snapshot, backup_url = url, reason = why, "metadata restored from the newest snapshot");
        }
        None if restore == MetadataRestore::Always => {
            // A new remote state dir: nothing of a local cache may leak into it.
            for suffix in ["", "-wal", "-shm"] {
                let stale = db.with_file_name(format!("arroyod.db{suffix}"));
                match std::fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("removing", &stale)(e));
                    }
                    _ => {}
                }
            }
        }
        None => {}
    }
    Ok(())
}

/// Step 3's check: a database without pipelines beside checkpoints of pipelines is refused.
async fn check_metadata_not_lost(store: &Store, settings: &Settings) -> Result<(), BootstrapError> {
    if !store
        .list()
        .await
        .map_err(BootstrapError::Store)?
        .is_empty()
    {
        return Ok(());
    }
    let root = &settings.controller.state_root;
    match root.pipelines_with_checkpoints().await {
        Ok(held) if held.is_empty() => Ok(()),
        Ok(held) => Err(BootstrapError::LostMetadata {
            db: store.path().to_path_buf(),
            state_root: root.to_string(),
            pipelines: held.join(", "),
        }),
        Err(e) => {
            warn!(error = %e, "cannot tell whether the state root holds checkpoints of lost pipelines");
            Ok(())
        }
    }
}

impl Daemon {
    /// Runs the start-up sequence of the module documentation.
    pub async fn start(
        settings: &Settings,
        options: StartOptions,
    ) -> Result<Daemon, BootstrapError> {
        let data_dir = &settings.data_dir;
        private_dir(data_dir)?;
        let lock = DataDirLock::acquire(data_dir)?;
        if let Some(local) = settings.controller.state_root.local_path() {
            private_dir(&local)?;
        }
        let db = data_dir.join("arroyod.db");
        if let Some(url) = &settings.backup_url {
            restore_metadata(url.as_str(), settings.restore, &db).await?;
        }
        let store = Store::open(data_dir).await.map_err(BootstrapError::Store)?;
        if !options.adopt_orphan_state {
            check_metadata_not_lost(&store, settings).await?;
        }
        let worker_socket = worker_socket_path(data_dir);
        let mut controller_settings = settings.controller.clone();
        controller_settings
            .access
            .denied_paths
            .push(worker_socket.clone());
        let exe =
            std::env::current_exe().map_err(io("finding the binary", Path::new("arroyod")))?;
        let worker_log = (
            settings.log.clone(),
            settings.log_format.as_str().to_string(),
        );
        let controller = Controller::load(
            store,
            exe,
            worker_socket.clone(),
            controller_settings,
            worker_log,
        )
        .await
        .map_err(BootstrapError::Load)?;
        let stop_serving = CancellationToken::new();
        let mut servers = JoinSet::new();

        let worker_api = WorkerControlServer::new(WorkerApi {
            controller: controller.clone(),
        })
        .max_decoding_message_size(arroyod_proto::MAX_MESSAGE_BYTES);
        spawn_server(
            &mut servers,
            "worker_server",
            tonic::transport::Server::builder().add_service(worker_api),
            bind_socket(&worker_socket, 0o600)?,
            stop_serving.clone(),
        );
        if let Some(socket) = &settings.socket {
            let api = ArroyodServer::new(Api {
                controller: controller.clone(),
                about: About::new(settings),
            })
            .max_decoding_message_size(arroyod_proto::MAX_MESSAGE_BYTES);
            // Every call is checked against the caller's SO_PEERCRED first.
            let policy = settings.controller.access.clone();
            let api = InterceptedService::new(api, move |r| policy.admit(r));
            let listener = bind_socket(socket, 0o660)?;
            give_socket_to_group(socket, &settings.controller.access);
            spawn_server(
                &mut servers,
                "api_server",
                tonic::transport::Server::builder().add_service(api),
                listener,
                stop_serving.clone(),
            );
        }
        if let Some(addr) = &settings.metrics_addr {
            let c = controller.clone();
            let render: crate::metrics::Render = Arc::new(move || {
                let metrics = c.metrics();
                metrics.set_states(c.state_counts());
                metrics.encode()
            });
            let bind_unix: crate::metrics::BindUnix =
                |path| bind_socket(path, 0o660).map_err(Into::into);
            crate::metrics::serve(addr, render, &mut servers, stop_serving.clone(), bind_unix)
                .await?;
            info!(metrics_addr = %addr, "serving metrics at /metrics");
        }
        let snapshots = match &settings.backup_url {
            Some(url) => {
                let backup =
                    Backup::new(url.as_str()).map_err(|source| BootstrapError::Restore {
                        url: url.to_string(),
                        source: Box::new(source),
                    })?;
                Some(Snapshots::spawn(
                    backup,
                    controller.store().clone(),
                    data_dir.clone(),
                    controller.checkpointed(),
                ))
            }
            None => None,
        };
        if options.resume_all {
            controller.resume_all().await;
        }
        Ok(Daemon {
            controller,
            _lock: lock,
            servers,
            stop_serving,
            snapshots,
            data_dir: data_dir.clone(),
            socket: settings.socket.clone(),
        })
    }

    /// Stops every pipeline, takes a last snapshot, closes the store, then stops the servers
    /// and removes the public socket.
    pub async fn shutdown(mut self) {
        let snapshots = self.snapshots.take();
        let ((), backup) = tokio::join!(self.controller.shutdown(), async move {
            match snapshots {
                Some(s) => s.finish().await,
                None => None,
            }
        });
        if let Some(mut backup) = backup {
            let store = self.controller.store();
            let last = backup.snapshot(store, &self.data_dir);
            match tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, last).await {
                Ok(Ok(p)) => {
                    info!(snapshot = %p.name, bytes = p.length, "last metadata snapshot uploaded")
                }
                Ok(Err(e)) => warn!(error = %error_chain(&e), "last metadata snapshot failed"),
                Err(_) => {
                    warn!(timeout = ?FINAL_SNAPSHOT_TIMEOUT, "last metadata snapshot timed out")
                }
            }
        }
        self.controller.store().close().await;
        self.stop_serving.cancel();
        let drained = tokio::time::timeout(SERVER_DRAIN, async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("servers did not drain in time; closing them");
            self.servers.abort_all();
        }
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}
