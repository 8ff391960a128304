//! `arroyod run`: one pipeline end to end in one command, like `arroyo run`.
//!
//! It only builds settings, starts the daemon's components through the one bootstrap sequence
//! (the state dir as data dir, no public socket: it talks to its controller directly, workers
//! attach over the private worker socket), submits or resumes the query, and prints the rows
//! of a bare SELECT to stdout as JSON lines. It exits 0 when the pipeline finishes or after
//! SIGINT/SIGTERM stopped it (with a final checkpoint; a second signal ends the run at once),
//! and 1 when it fails, the query has errors (each printed with its line:column) or a start-up
//! step fails (naming the path and the reason).
//!
//! The state dir (`-s`) makes a run resumable: it holds the SQLite metadata and the
//! checkpoints. A rerun on a state dir that holds the same pipeline (same name, same plan
//! fingerprint) resumes it from its newest checkpoint; a state dir that holds a different
//! pipeline is refused unless `--force`. `-s` may be a URL (`s3://bucket/path`, `gs://`,
//! `az://`, `file://`): checkpoints and metadata snapshots are written there, the metadata
//! database lives in a local cache dir and is restored from the newest snapshot at start.

use std::io::{Read, Write};

use tracing::{Instrument, info, info_span, warn};

use crate::bootstrap::{BootstrapError, Daemon, StartOptions};
use crate::controller::machine::{Changes, State, StopMode};
use crate::controller::{ControllerError, Pipeline, Submission, name};
use crate::engine::plan;
use crate::serve::Signals;
use crate::settings::{RunOverrides, Settings, SettingsError};

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
    #[error("installing the signal handlers")]
    Signals(#[source] std::io::Error),
    /// The state dir or an `ARROYO_*` setting is unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The daemon's components did not start.
    #[error(transparent)]
    Start(#[from] BootstrapError),
    /// The pipeline could not be stored, scheduled or stopped.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// Rows could not be written to stdout.
    #[error("writing rows to stdout")]
    Stdout(#[source] std::io::Error),
    /// The task printing rows panicked.
    #[error("printing rows")]
    Printer(#[from] tokio::task::JoinError),
}

/// Arguments of `arroyod run`, as Arroyo's RunArgs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Name of the pipeline (default: the query file's stem made a valid name, or "query").
    #[arg(short, long)]
    pub name: Option<String>,
    /// State directory or URL: the metadata and checkpoints of this run (default: a new
    /// timestamped directory under $TMPDIR/arroyod). A rerun on it resumes the pipeline.
    #[arg(short = 's', long = "state-dir")]
    pub state_dir: Option<String>,
    /// Parallelism of the pipeline (at most $ARROYO_MAX_PARALLELISM, 64 by default).
    #[arg(short, long, default_value_t = 1)]
    pub parallelism: u32,
    /// Run even if the state dir holds another pipeline (which is then forgotten), or
    /// checkpoints its metadata does not know.
    #[arg(short, long)]
    pub force: bool,
    /// Time between checkpoints, such as 10s (default: $ARROYO_CHECKPOINT_INTERVAL, 10s).
    #[arg(long)]
    pub checkpoint_interval: Option<String>,
    /// The SQL file; `-` reads stdin.
    #[arg(default_value = "-")]
    pub query: String,
}

impl RunArgs {
    /// The query's text and how errors name it.
    fn read_query(&self) -> Result<(String, String), RunError> {
        if self.query == "-" {
            let mut q = String::new();
            std::io::stdin()
                .read_to_string(&mut q)
                .map_err(|source| RunError::ReadQuery {
                    what: "the query from stdin".into(),
                    source,
                })?;
            return Ok((q, "<stdin>".to_string()));
        }
        let q = std::fs::read_to_string(&self.query).map_err(|source| RunError::ReadQuery {
            what: self.query.clone(),
            source,
        })?;
        Ok((q, self.query.clone()))
    }

    /// The pipeline's name: given, or the file stem made valid.
    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let stem = std::path::Path::new(&self.query)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .filter(|s| s != "-")
                .unwrap_or_default();
            name::sanitize(&stem)
        })
    }
}

/// Runs the query; returns the process exit code.
pub async fn run(args: RunArgs) -> Result<i32, RunError> {
    let mut signals = Signals::install().map_err(RunError::Signals)?;
    let (query, source) = args.read_query()?;
    let settings = Settings::for_run(&RunOverrides {
        state: args.state_dir.clone(),
        checkpoint_interval: args.checkpoint_interval.clone(),
    })?;
    let planned = match plan(query.clone()).await {
        Ok(planned) => planned,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {source}:{}:{}: {}", e.line, e.column, e.message);
            }
            return Ok(1);
        }
    };
    let name = args.name();
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.display().to_string());
    let options = StartOptions {
        resume_all: false,
        adopt_orphan_state: args.force,
    };
    let daemon = tokio::select! {
        daemon = Daemon::start(&settings, options) => daemon?,
        signal = signals.next() => {
            eprintln!("error: {signal} while starting; nothing was run");
            return Ok(1);
        }
    };
    let started = tokio::select! {
        started = start_pipeline(&daemon, &args, &name, &state_dir, query, planned.fingerprint) => started,
        signal = signals.next() => {
            eprintln!("error: {signal} while starting the pipeline");
            daemon.shutdown().await;
            return Ok(1);
        }
    };
    let pipeline = match started {
        Ok(Some(p)) => p,
        Ok(None) => {
            daemon.shutdown().await;
            return Ok(1);
        }
        Err(e) => {
            daemon.shutdown().await;
            return Err(e.into());
        }
    };
    let id = pipeline.id();
    info!(pipeline = %id, name = %name, state_dir = %state_dir, "pipeline running");
    let printer = tokio::spawn(print_rows(pipeline.clone()).instrument(info_span!("printer")));
    let ended = tokio::select! {
        view = pipeline.wait_terminal() => Some(view),
        signal = signals.next() => {
            info!(signal, "stopping the pipeline with a final checkpoint");
            let controller = daemon.controller.clone();
            tokio::select! {
                stopped = controller.stop(&id, StopMode::Checkpoint, true) => {
                    stopped?;
                    Some(pipeline.view())
                }
                signal = signals.next() => {
                    warn!(signal, "a second signal: ending at once, without a final checkpoint");
                    None
                }
            }
        }
    };
    let Some(view) = ended else {
        // Dropping the components kills the worker; the next run resumes from the last
        // completed checkpoint.
        return Ok(1);
    };
    match printer.await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Ok(r) => r.map_err(RunError::Stdout)?,
        Err(e) => return Err(e.into()),
    }
    drop(pipeline);
    daemon.shutdown().await;
    if view.state == State::Failed {
        eprintln!("error: pipeline {name} failed: {}", view.failure);
        return Ok(1);
    }
    info!(state = %view.state, "pipeline ended");
    Ok(0)
}

/// Resumes the pipeline the state dir holds, or submits a new one; None when the state dir
/// holds another pipeline (reported) and `--force` was not given.
async fn start_pipeline(
    daemon: &Daemon,
    args: &RunArgs,
    name: &str,
    state_dir: &str,
    query: String,
    fingerprint: String,
) -> Result<Option<Pipeline>, ControllerError> {
    let controller = &daemon.controller;
    let held = controller.list();
    let same = held.iter().find(|p| {
        let v = p.view();
        v.name == name && v.spec.plan_hash == fingerprint
    });
    let same_id = same.map(Pipeline::id);
    let others: Vec<&Pipeline> = held.iter().filter(|p| Some(p.id()) != same_id).collect();
    if let Some(other) = others.first()
        && !args.force
    {
        let o = other.view();
        let why = if o.name == name {
            format!(
                "its plan differs from this query's (fingerprint {} there, {fingerprint} here)",
                o.spec.plan_hash
            )
        } else {
            format!("this query's pipeline is named '{name}'")
        };
        eprintln!(
            "error: state dir {state_dir} holds pipeline '{}' ({}), and {why}; resuming it with this query could corrupt its state. Use another state dir, or --force to forget it and start afresh",
            o.name, o.id
        );
        return Ok(None);
    }
    for other in others {
        let o = other.view();
        info!(pipeline = %o.id, name = %o.name, "--force: forgetting the pipeline the state dir held");
        controller.delete(&o.id).await?;
    }
    let pipeline = match same {
        Some(p) => {
            info!(pipeline = %p.id(), last_checkpoint = p.view().last_checkpoint, "the state dir holds this pipeline: resuming it");
            let changes = Changes {
                query: Some((query, fingerprint)),
                parallelism: Some(args.parallelism),
                ..Default::default()
            };
            controller.resume(&p.id(), changes).await?
        }
        None => {
            let submission = Submission {
                query,
                name: Some(name.to_string()),
                parallelism: Some(args.parallelism),
                checkpoint_interval: None,
            };
            controller.submit_planned(submission, fingerprint).await?
        }
    };
    Ok(Some(pipeline))
}

/// Prints rows as they come until the buffer closes (the pipeline ended). The buffer is held
/// for this printer: it drops no row until printed, and the pipeline waits for stdout.
async fn print_rows(pipeline: Pipeline) -> std::io::Result<()> {
    let tail = pipeline.tail();
    drop(pipeline);
    // If printing ends early (stdout closed), the buffer lets old rows go again.
    struct Release(std::sync::Arc<crate::tail::TailBuffer>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }
    let _release = Release(tail.clone());
    let mut offset = 0;
    loop {
        let (first, rows) = tail.read(offset, 4096);
        if rows.is_empty() {
            if !tail.wait_for(first).await {
                return Ok(());
            }
            offset = first;
            continue;
        }
        if first > offset {
            // Only a buffer that is not held drops rows; say so rather than skip silently.
            warn!(
                dropped = first - offset,
                "rows were dropped before they were printed"
            );
        }
        offset = first + rows.len() as u64;
        let mut text = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum());
        for row in rows {
            text.extend_from_slice(row.as_bytes());
            text.push(b'\n');
        }
        // A slow reader blocks this write: on a blocking thread, not the runtime's.
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)?;
            out.flush()
        })
        .await??;
        tail.consume(offset);
    }
}
