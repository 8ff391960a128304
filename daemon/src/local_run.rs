//! `arroyod run`: one pipeline end to end in one command, like `arroyo run`.
//!
//! It starts the daemon's components with the state dir as data dir (no public socket: the
//! run talks to its controller directly, workers attach over the private worker socket),
//! submits the query, prints the rows of a bare SELECT to stdout as JSON lines, and exits
//! 0 when the pipeline finishes or after SIGINT/SIGTERM stopped it; 1 when it fails or the
//! query has errors (each printed with its line:column).

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
}

/// Arguments of `arroyod run`, as Arroyo's RunArgs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Name of the pipeline (default: the query file's stem, or "query").
    #[arg(short, long)]
    pub name: Option<String>,
    /// State directory: the SQLite metadata and local state of this run (default: a new
    /// timestamped directory under $TMPDIR/arroyod).
    #[arg(short = 's', long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// Parallelism of the pipeline.
    #[arg(short, long, default_value_t = 1)]
    pub parallelism: u32,
    /// Run even if the state dir holds another pipeline.
    #[arg(short, long)]
    pub force: bool,
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
    if let Err(errors) = plan(query.clone()).await {
        for e in &errors {
            eprintln!("error: {source}:{}:{}: {}", e.line, e.column, e.message);
        }
        return Ok(1);
    }
    let name = args.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.query)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .filter(|s| s != "-")
            .unwrap_or_else(|| "query".to_string())
    });
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        std::env::temp_dir()
            .join("arroyod")
            .join(format!("run-{stamp}"))
    });
    let daemon = Daemon::start(&state_dir, None, None).await?;
    let controller = daemon.controller.clone();
    // A rerun in the same state dir replaces the finished pipeline of the same name.
    if let Ok(old) = controller.find(&name)
        && state::is_terminal(&old.row().state)
    {
        controller
            .forget(&old)
            .await
            .map_err(crate::controller::ControllerError::from)?;
    }
    let pipeline = controller
        .submit(query, name.clone(), args.parallelism)
        .await?;
    let id = pipeline.row().id;
    info!(pipeline = %id, name = %name, state_dir = %state_dir.display(), "pipeline running");

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
