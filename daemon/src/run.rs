//! `arroyod run`: one pipeline end to end in one command, like `arroyo run`.
//!
//! It only builds settings, starts the daemon's components through the one bootstrap sequence
//! (the state dir as data dir, no public socket: it talks to its controller directly, workers
//! attach over the private worker socket), submits or resumes the query, and prints the rows
//! of a bare SELECT to stdout as JSON lines. It exits 0 when the pipeline finishes or after
//! SIGINT/SIGTERM stopped it (with a final checkpoint; a second signal, not the same one sent
//! to the process and its group, ends the run at once),
//! and 1 when it fails, the query has errors (each printed as `FILE:LINE:COL: error: ...`
//! with the source line and a caret, as `arroyoctl validate` does) or a start-up step fails
//! (naming the path and the reason).
//!
//! The state dir (`-s`) makes a run resumable: it holds the SQLite metadata and the
//! checkpoints. A rerun on a state dir that holds the same pipeline (same name, same plan
//! fingerprint) resumes it from its newest checkpoint; a state dir that holds a different
//! pipeline is refused unless `--force`. `-s` may be a URL (`s3://bucket/path`, `gs://`,
//! `az://`, `file://`): checkpoints and metadata snapshots are written there, the metadata
//! database lives in a local cache dir and is restored from the newest snapshot at start.

use std::io::{Read, Write};

use tracing::{Instrument, debug, info, info_span, warn};

use crate::bootstrap::{BootstrapError, Daemon, StartOptions};
use crate::controller::machine::{Changes, State, StopMode};
use crate::controller::{ControllerError, Pipeline, Submission, name};
use crate::engine::plan;
use crate::output::Record;
use crate::serve::Signals;
use crate::settings::{LogFormat, RunOverrides, Settings, SettingsError};

/// Signals this soon after the first are the same stop request delivered twice (to the
/// process and to its process group), not a second one.
const SAME_REQUEST: std::time::Duration = std::time::Duration::from_millis(300);

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
    /// Serve Prometheus metrics at /metrics on a loopback HOST:PORT or unix:PATH while it
    /// runs (default: $ARROYO_METRICS_ADDR, none).
    #[arg(long, value_name = "HOST:PORT|unix:PATH")]
    pub metrics_addr: Option<String>,
    /// Log lines as text or json (default: $ARROYO_LOG_FORMAT, text).
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// The most memory the worker may use, such as 512MiB or 2GB (default: no limit).
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// The SQL file; `-` reads stdin.
    #[arg(default_value = "-")]
    pub query: String,
}

impl RunArgs {
    /// The log format asked for (the flag, else `ARROYO_LOG_FORMAT`, else text).
    pub fn log_format(&self) -> Result<LogFormat, SettingsError> {
        crate::settings::log_format(self.log_format.clone(), None)
    }

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
        metrics_addr: args.metrics_addr.clone(),
        log_format: args.log_format.clone(),
    })?;
    let memory_limit = args
        .memory_limit
        .as_deref()
        .map(|m| crate::settings::parse_bytes("--memory-limit", m))
        .transpose()?;
    let planned = match plan(query.clone()).await {
        Ok(planned) => planned,
        Err(errors) => {
            for e in &errors {
                let d = arroyod_proto::diagnostic::Diagnostic {
                    file: &source,
                    line: e.line,
                    column: e.column,
                    message: &e.message,
                    hints: &[],
                };
                eprint!("{}", d.render(Some(&crate::secrets::redact_query(&query))));
            }
            return Ok(1);
        }
    };
    for w in &planned.warnings {
        let d = arroyod_proto::diagnostic::Diagnostic {
            file: &source,
            line: w.line,
            column: w.column,
            message: &w.message,
            hints: &[],
        };
        eprint!(
            "{}",
            d.render_warning(Some(&crate::secrets::redact_query(&query)))
        );
    }
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
        started = start_pipeline(&daemon, &args, &name, &state_dir, query, planned.fingerprint, memory_limit) => started,
        signal = signals.next() => {
            eprintln!("error: {signal} while starting the pipeline");
            daemon.shutdown().await;
            return Ok(1);
        }
    };
    let (pipeline, from) = match started {
        Ok(Some(started)) => started,
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
    let printer =
        tokio::spawn(print_rows(pipeline.clone(), from).instrument(info_span!("printer")));
    let ended = tokio::select! {
        view = pipeline.wait_terminal() => Some(view),
        signal = signals.next() => {
            info!(signal, "stopping the pipeline with a final checkpoint");
            let first = tokio::time::Instant::now();
            let controller = daemon.controller.clone();
            let mut stopping = std::pin::pin!(controller.stop(&id, StopMode::Checkpoint, true));
            loop {
                tokio::select! {
                    stopped = &mut stopping => {
                        stopped?;
                        break Some(pipeline.view());
                    }
                    signal = signals.next() => {
                        if first.elapsed() < SAME_REQUEST {
                            // `timeout`, `kill 0` and the like send one request twice: to
                            // the process and to its group.
                            debug!(signal, "the same stop request again");
                            continue;
                        }
                        warn!(signal, "a second signal: ending at once, without a final checkpoint");
                        break None;
                    }
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

/// Resumes the pipeline the state dir holds, or submits a new one, with the offset its output
/// log gets this run's rows from; None when the state dir holds another pipeline (reported)
/// and `--force` was not given.
async fn start_pipeline(
    daemon: &Daemon,
    args: &RunArgs,
    name: &str,
    state_dir: &str,
    query: String,
    fingerprint: String,
    memory_limit: Option<u64>,
) -> Result<Option<(Pipeline, u64)>, ControllerError> {
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
        let keep = crate::controller::Keep {
            checkpoints: true,
            output: false,
        };
        controller.delete(&o.id, keep).await?;
    }
    let started = match same {
        Some(p) => {
            info!(pipeline = %p.id(), last_checkpoint = p.view().last_checkpoint, "the state dir holds this pipeline: resuming it");
            let from = p.output().next_offset();
            let changes = Changes {
                query: Some((query, fingerprint)),
                parallelism: Some(args.parallelism),
                memory_limit: Some(memory_limit.unwrap_or(0)),
                ..Default::default()
            };
            (controller.resume(&p.id(), changes).await?, from)
        }
        None => {
            let submission = Submission {
                query,
                name: Some(name.to_string()),
                parallelism: Some(args.parallelism),
                checkpoint_interval: None,
                memory_limit,
                submitter: None,
            };
            (controller.submit_planned(submission, fingerprint).await?, 0)
        }
    };
    Ok(Some(started))
}

/// Prints the rows of the output log from `from` as they come, until it closes (the
/// pipeline ended). The log is held for this printer: it drops no row until printed, and the
/// pipeline waits for stdout. Lost rows (a failed write of the log) are reported on stderr.
async fn print_rows(pipeline: Pipeline, from: u64) -> std::io::Result<()> {
    let log = pipeline.output();
    drop(pipeline);
    // If printing ends early (stdout closed), the log lets old rows go again.
    struct Release(std::sync::Arc<crate::output::OutputLog>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }
    let _release = Release(log.clone());
    log.consume(from);
    let mut reader = Some(log.reader(from));
    loop {
        let mut r = reader.take().expect("put back below");
        let (r, read) = tokio::task::spawn_blocking(move || {
            let read = r.read(4096);
            (r, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        let records = read.map_err(|e| std::io::Error::other(crate::engine::error_chain(&e)))?;
        if records.is_empty() {
            if !log.wait_for(r.offset()).await {
                return Ok(());
            }
            reader = Some(r);
            continue;
        }
        let offset = r.offset();
        reader = Some(r);
        let mut text = Vec::new();
        for record in records {
            match record {
                Record::Row { json, .. } => {
                    text.extend_from_slice(json.as_bytes());
                    text.push(b'\n');
                }
                // Only a log that is not held drops rows; say so rather than skip silently.
                Record::Gap { from, to } => warn!(
                    from,
                    to,
                    "rows were dropped from the output log before they were printed (output_log_bytes)"
                ),
                Record::Lost { rows, .. } => warn!(
                    rows,
                    "rows could not be written to the output log and are lost"
                ),
                Record::Start { .. } => {}
            }
        }
        // A slow reader blocks this write: on a blocking thread, not the runtime's.
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)?;
            out.flush()
        })
        .await??;
        log.consume(offset);
    }
}
