//! `arroyod run`: one pipeline end to end in one command, like `arroyo run`.
//!
//! It starts the daemon's components with the state dir as data dir (no public socket: the
//! run talks to its controller directly, workers attach over the private worker socket),
//! submits the query, prints the rows of a bare SELECT to stdout as JSON lines, and exits
//! 0 when the pipeline finishes or after SIGINT/SIGTERM stopped it (with a final checkpoint);
//! 1 when it fails or the query has errors (each printed with its line:column).
//!
//! The state dir (`-s`) makes a run resumable: it holds the SQLite metadata and the
//! checkpoints. A rerun on a state dir that holds the same pipeline (same name, same plan
//! fingerprint) resumes it from its newest checkpoint; a state dir that holds a different
//! pipeline is refused unless `--force`. `-s` may be a URL (`s3://bucket/path`, `gs://`,
//! `az://`, `file://`): checkpoints and metadata snapshots are written there, the metadata
//! database lives in a local cache dir and is restored from the newest snapshot at start.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use arroyod_proto::StopMode;
use arroyod_proto::state;
use tracing::info;

use crate::controller::plan;
use crate::serve::{Daemon, termination};

/// Errors of `arroyod run` (a query with errors is not one: it is reported and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The query file (or stdin) could not be read.
    #[error("reading {what}")]
    ReadQuery {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon's components did not start.
    #[error(transparent)]
    Start(#[from] crate::serve::ServeError),
    /// The pipeline could not be stored, scheduled or stopped.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
    /// Rows could not be written to stdout.
    #[error("writing rows to stdout")]
    Stdout(#[source] std::io::Error),
    /// The task printing rows panicked.
    #[error("printing rows")]
    Printer(#[from] tokio::task::JoinError),
    /// The remote state dir's metadata snapshot could not be restored.
    #[error("restoring the metadata snapshot of {url}")]
    Restore {
        url: String,
        #[source]
        source: crate::backup::BackupError,
    },
    /// The local cache of a remote state dir's metadata could not be made.
    #[error("creating {}", path.display())]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state URL or checkpoint interval is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The snapshot destination could not be set up.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

/// Where a run keeps what: the local data dir, the checkpoints' root, the snapshot target.
struct StatePlace {
    data_dir: PathBuf,
    state_root: String,
    /// Set for a remote state dir: metadata snapshots go there.
    remote: Option<String>,
}

fn place(state: Option<&str>) -> StatePlace {
    let temp = std::env::temp_dir().join("arroyod");
    match state {
        Some(url) if url.contains("://") && !url.starts_with("file://") => {
            let hash = arroyod_engine::storage::checksum::fnv1a64(url.as_bytes());
            StatePlace {
                data_dir: temp.join(format!("remote-{hash:016x}")),
                state_root: url.trim_end_matches('/').to_string(),
                remote: Some(url.to_string()),
            }
        }
        Some(dir) => {
            let dir = PathBuf::from(dir.strip_prefix("file://").unwrap_or(dir));
            StatePlace {
                state_root: dir.join("state").display().to_string(),
                data_dir: dir,
                remote: None,
            }
        }
        None => {
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let dir = temp.join(format!("run-{stamp}"));
            StatePlace {
                state_root: dir.join("state").display().to_string(),
                data_dir: dir,
                remote: None,
            }
        }
    }
}

/// Arguments of `arroyod run`, as Arroyo's RunArgs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Name of the pipeline (default: the query file's stem, or "query").
    #[arg(short, long)]
    pub name: Option<String>,
    /// State directory or URL: the metadata and checkpoints of this run (default: a new
    /// timestamped directory under $TMPDIR/arroyod). A rerun on it resumes the pipeline.
    #[arg(short = 's', long = "state-dir")]
    pub state_dir: Option<String>,
    /// Parallelism of the pipeline.
    #[arg(short, long, default_value_t = 1)]
    pub parallelism: u32,
    /// Run even if the state dir holds another pipeline (which is then forgotten).
    #[arg(short, long)]
    pub force: bool,
    /// Time between checkpoints, such as 10s (default: $ARROYO_CHECKPOINT_INTERVAL, 10s).
    #[arg(long)]
    pub checkpoint_interval: Option<String>,
    /// The SQL file; `-` reads stdin.
    #[arg(default_value = "-")]
    pub query: String,
}

/// Runs the query; returns the process exit code.
pub async fn run(args: RunArgs) -> Result<i32, RunError> {
    let (query, source) = if args.query == "-" {
        let mut q = String::new();
        std::io::stdin()
            .read_to_string(&mut q)
            .map_err(|source| RunError::ReadQuery {
                what: "the query from stdin".into(),
                source,
            })?;
        (q, "<stdin>".to_string())
    } else {
        let q = std::fs::read_to_string(&args.query).map_err(|source| RunError::ReadQuery {
            what: args.query.clone(),
            source,
        })?;
        (q, args.query.clone())
    };
    let planned = match plan(query.clone()).await {
        Ok(planned) => planned,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {source}:{}:{}: {}", e.line, e.column, e.message);
            }
            return Ok(1);
        }
    };
    let name = args.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.query)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .filter(|s| s != "-")
            .unwrap_or_else(|| "query".to_string())
    });
    let interval = match &args.checkpoint_interval {
        Some(text) => crate::config::parse_interval(text)?,
        None => match std::env::var("ARROYO_CHECKPOINT_INTERVAL") {
            Ok(text) if !text.is_empty() => crate::config::parse_interval(&text)?,
            _ => crate::config::parse_interval(crate::config::DEFAULT_CHECKPOINT_INTERVAL)?,
        },
    };
    let place = place(args.state_dir.as_deref());
    let mut backup = None;
    if let Some(url) = &place.remote {
        backup = Some(crate::backup::Backup::new(url)?);
        std::fs::create_dir_all(&place.data_dir).map_err(|source| RunError::CacheDir {
            path: place.data_dir.clone(),
            source,
        })?;
        let db = place.data_dir.join("arroyod.db");
        match crate::backup::restore_if_any(url, &db).await {
            Ok(Some(p)) => {
                info!(snapshot = %p, state = %url, "metadata restored from the newest snapshot")
            }
            Ok(None) => {
                // A new remote state dir: nothing of a local cache may leak into it.
                for suffix in ["", "-wal", "-shm"] {
                    let _ =
                        std::fs::remove_file(place.data_dir.join(format!("arroyod.db{suffix}")));
                }
            }
            Err(source) => {
                return Err(RunError::Restore {
                    url: url.clone(),
                    source,
                });
            }
        }
    }
    let settings = crate::controller::Settings {
        state_root: place.state_root.clone(),
        checkpoint_interval: interval,
    };
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| place.data_dir.display().to_string());
    let daemon = Daemon::start(&place.data_dir, None, backup, settings).await?;
    let controller = daemon.controller.clone();
    // What the state dir holds decides: resume this pipeline, refuse, or start afresh.
    let held = controller.list();
    let same = held
        .iter()
        .find(|p| p.row().name == name && p.row().plan_hash == planned.fingerprint)
        .cloned();
    let others: Vec<_> = held
        .iter()
        .filter(|p| same.as_ref().is_none_or(|s| !std::sync::Arc::ptr_eq(s, p)))
        .cloned()
        .collect();
    if let Some(other) = others.first()
        && !args.force
    {
        let o = other.row();
        let why = if o.name == name {
            format!(
                "its plan differs from this query's (fingerprint {} there, {} here)",
                o.plan_hash, planned.fingerprint
            )
        } else {
            format!("this query's pipeline is named '{name}'")
        };
        eprintln!(
            "error: state dir {state_dir} holds pipeline '{}' ({}), and {why}; resuming it with this query could corrupt its state. Use another state dir, or --force to forget it and start afresh",
            o.name, o.id
        );
        daemon.shutdown().await;
        return Ok(1);
    }
    for other in &others {
        info!(pipeline = %other.row().id, name = %other.row().name, "--force: forgetting the pipeline the state dir held");
        controller
            .forget(other)
            .await
            .map_err(crate::controller::ControllerError::from)?;
    }
    let pipeline = match same {
        Some(p) => {
            info!(pipeline = %p.row().id, last_checkpoint = p.last_checkpoint(), "the state dir holds this pipeline: resuming it");
            controller
                .resume(&p.row().id, Some((query, args.parallelism)))
                .await?
        }
        None => {
            controller
                .submit_planned(
                    query,
                    planned.fingerprint,
                    name.clone(),
                    args.parallelism,
                    Some(interval),
                )
                .await?
        }
    };
    let id = pipeline.row().id;
    info!(pipeline = %id, name = %name, state_dir = %state_dir, "pipeline running");

    // Print rows as they come until the buffer closes (the pipeline ended).
    let printer = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let mut offset = 0;
            loop {
                let (first, rows) = pipeline.tail.read(offset, 4096);
                if rows.is_empty() {
                    if !pipeline.tail.wait_for(first).await {
                        return Ok::<_, std::io::Error>(());
                    }
                    offset = first;
                    continue;
                }
                offset = first + rows.len() as u64;
                let mut out = std::io::stdout().lock();
                for row in rows {
                    out.write_all(row.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
            }
        })
    };
    tokio::select! {
        _ = pipeline.wait_terminal() => {}
        signal = termination() => {
            info!(signal, "stopping the pipeline");
            controller.stop(&id, StopMode::Checkpoint, true).await?;
        }
    }
    match printer.await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Ok(r) => r.map_err(RunError::Stdout)?,
        Err(e) => return Err(e.into()),
    }
    let row = pipeline.row();
    daemon.shutdown().await;
    if row.state == state::FAILED {
        eprintln!("error: pipeline {name} failed: {}", row.failure);
        return Ok(1);
    }
    info!(state = %row.state, "pipeline ended");
    Ok(0)
}
