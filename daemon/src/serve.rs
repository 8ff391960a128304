//! `arroyod serve`: the long-lived daemon, and the pieces `arroyod run` shares with it.
//!
//! Start-up, in order: create the data dir; take its lock (a second daemon on the same dir
//! exits naming the holder's pid); open and migrate SQLite; remove a stale socket and bind
//! (mode 0660); start the snapshot task when `backup_url` is set; tell systemd READY.
//! Shutdown on SIGTERM/SIGINT: tell systemd STOPPING, stop every pipeline and wait for them
//! (and for a snapshot under way), take a last snapshot, close the store, then stop serving
//! and exit 0.
//!
//! Snapshots (see [`crate::backup`]) run every [`BACKUP_PERIOD`] and after completed
//! checkpoints (at most one per [`BACKUP_AFTER_CHECKPOINT_GAP`]) in the task `backup`; a failed
//! one is a warning, never fatal.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arroyod_proto::arroyod_server::ArroyodServer;
use arroyod_proto::worker_control_server::WorkerControlServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{Api, WorkerApi, error_chain};
use crate::backup::Backup;
use crate::config::Config;
use crate::controller::Controller;
use crate::store::{Store, StoreError};

/// Errors of starting the daemon's components.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    /// `backup_url` cannot be used.
    #[error("setting up snapshots")]
    Backup(#[from] crate::backup::BackupError),
    /// The metadata store could not be opened.
    #[error("opening the metadata store in {}", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { what, path, source }
}

/// How long shutdown waits for the servers after every pipeline stopped.
const SERVER_DRAIN: Duration = Duration::from_secs(5);
/// The least time between two snapshots taken after completed checkpoints.
const BACKUP_AFTER_CHECKPOINT_GAP: Duration = Duration::from_secs(5);

/// How often the metadata database is snapshotted when `backup_url` is set.
pub const BACKUP_PERIOD: Duration = Duration::from_secs(60);
/// How long the last snapshot at shutdown may take.
const FINAL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The exclusive lock on a data dir, held for the life of the process.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes `dir/arroyod.lock`, or fails naming the pid that holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, ServeError> {
        let path = dir.join("arroyod.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
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
            return Err(ServeError::DataDirInUse {
                dir: dir.to_path_buf(),
                lock: path,
                holder: who,
            });
        }
        let pid = format!("{}\n", std::process::id());
        arroyod_engine::storage::durable::overwrite(&mut file, pid.as_bytes())
            .map_err(io("writing", &path))?;
        Ok(DataDirLock { _file: file })
    }
}

/// Removes a stale socket at `path` and binds a new one with `mode`.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .map_err(io("setting the mode of", parent))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))?;
    Ok(listener)
}

/// The daemon's components, shared by `serve` and `run`.
pub struct Daemon {
    pub controller: Arc<Controller>,
    _lock: DataDirLock,
    servers: tokio::task::JoinSet<()>,
    stop_serving: CancellationToken,
    backups: Option<Backups>,
    data_dir: PathBuf,
}

/// The task `backup`: a snapshot every [`BACKUP_PERIOD`]; aborted on drop.
struct Backups {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Backup>>,
}

impl Backups {
    fn spawn(
        mut backup: Backup,
        store: Store,
        data_dir: PathBuf,
        mut checkpointed: tokio::sync::watch::Receiver<u64>,
    ) -> Backups {
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(
            async move {
                let start = tokio::time::Instant::now() + BACKUP_PERIOD;
                let mut tick = tokio::time::interval_at(start, BACKUP_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last: Option<tokio::time::Instant> = None;
                loop {
                    // A snapshot under way finishes before the task ends.
                    tokio::select! {
                        _ = cancelled.cancelled() => return backup,
                        _ = tick.tick() => {}
                        // After completed checkpoints, so metadata and state move together.
                        changed = checkpointed.changed() => {
                            if changed.is_err() {
                                return backup;
                            }
                            // Short checkpoint intervals must not turn into an upload storm.
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
            .instrument(info_span!("backup")),
        );
        Backups {
            stop,
            task: Some(task),
        }
    }

    /// Ends the task (after a snapshot under way) and hands back its [`Backup`].
    async fn finish(mut self) -> Option<Backup> {
        self.stop.cancel();
        let task = self.task.take()?;
        match task.await {
            Ok(backup) => Some(backup),
            Err(e) => {
                warn!(error = %e, "the backup task failed");
                None
            }
        }
    }
}

impl Drop for Backups {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
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

impl Daemon {
    /// Takes the data dir, opens the store, and serves the worker socket (and the public API
    /// on `public_socket`, when given); snapshots the store to `backup`, when given.
    pub async fn start(
        data_dir: &Path,
        public_socket: Option<&Path>,
        backup: Option<Backup>,
        settings: crate::controller::Settings,
    ) -> Result<Daemon, ServeError> {
        std::fs::create_dir_all(data_dir).map_err(io("creating data dir", data_dir))?;
        let lock = DataDirLock::acquire(data_dir)?;
        let store_error = |source| ServeError::Store {
            dir: data_dir.to_path_buf(),
            source,
        };
        let store = Store::open(data_dir).await.map_err(store_error)?;
        let worker_socket = worker_socket_path(data_dir);
        let exe =
            std::env::current_exe().map_err(io("finding the binary", Path::new("arroyod")))?;
        let controller = Controller::new(store, exe, worker_socket.clone(), settings)
            .await
            .map_err(store_error)?;
        let stop_serving = CancellationToken::new();
        let mut servers = tokio::task::JoinSet::new();

        let listener = bind_socket(&worker_socket, 0o600)?;
        let shutdown = stop_serving.clone();
        let worker_api = WorkerControlServer::new(WorkerApi {
            controller: controller.clone(),
        });
        servers.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(worker_api)
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the worker socket server failed");
            }
        });

        if let Some(socket) = public_socket {
            let listener = bind_socket(socket, 0o660)?;
            let shutdown = stop_serving.clone();
            let api = ArroyodServer::new(Api {
                controller: controller.clone(),
            });
            servers.spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(api)
                    .serve_with_incoming_shutdown(
                        UnixListenerStream::new(listener),
                        shutdown.cancelled_owned(),
                    )
                    .await;
                if let Err(e) = served {
                    warn!(error = %e, "the API server failed");
                }
            });
        }
        let backups = backup.map(|backup| {
            Backups::spawn(
                backup,
                controller.store().clone(),
                data_dir.to_path_buf(),
                controller.checkpointed(),
            )
        });
        Ok(Daemon {
            controller,
            _lock: lock,
            servers,
            stop_serving,
            backups,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Stops every pipeline, takes a last snapshot, closes the store, then stops the servers.
    pub async fn shutdown(mut self) {
        let backups = self.backups.take();
        let ((), backup) = tokio::join!(self.controller.shutdown(), async move {
            match backups {
                Some(b) => b.finish().await,
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
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    let backup = config.backup_url.as_deref().map(Backup::new).transpose()?;
    let settings = crate::controller::Settings {
        state_root: config.state_url.clone(),
        checkpoint_interval: config.checkpoint_interval(),
    };
    let daemon = Daemon::start(&config.data_dir, Some(&config.socket), backup, settings).await?;
    // Pipelines that should run (also after kill -9) start again; the worker socket is up.
    daemon.controller.resume_all().await;
    info!(
        socket = %config.socket.display(),
        data_dir = %config.data_dir.display(),
        backup_url = config.backup_url.as_deref().unwrap_or(""),
        "arroyod ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let signal = termination().await;
    info!(signal, "shutting down: stopping every pipeline");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    info!("arroyod stopped");
    Ok(())
}
