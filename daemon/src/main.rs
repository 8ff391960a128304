//! arroyod: the streaming SQL daemon.
//!
//! - `arroyod [serve]`: the long-lived daemon (systemd `Type=notify`), gRPC on a Unix socket.
//! - `arroyod run QUERY`: one pipeline end to end in one process tree, like `arroyo run`.
//! - `arroyod worker ...`: a worker process, started by the daemon only.
//! - `arroyod config`: prints the effective configuration.
//! - `arroyod restore-db --backup-url U --to PATH`: writes the newest metadata snapshot.
//! - `arroyod completions SHELL`, `arroyod manpages DIR`: what the package ships.
//!
//! Exit codes: 0 success, 1 error, 2 usage error.

mod access;
mod api;
mod backup;
mod bootstrap;
mod controller;
mod engine;
mod logging;
mod manual;
mod metrics;
mod notify;
mod output;
mod run;
mod sandbox;
mod secrets;
mod serve;
mod settings;
mod snapshots;
mod store;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use tracing::Instrument;

use settings::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "arroyod", version, about = "Streaming SQL engine and daemon")]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct ServeArgs {
    /// Unix socket of the API (default: $ARROYO_SOCKET, $RUNTIME_DIRECTORY/arroyod.sock,
    /// $XDG_RUNTIME_DIR/arroyod.sock, /tmp/arroyod-$UID/arroyod.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory of the SQLite metadata and local state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Config file (default: /etc/arroyod/arroyod.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to snapshot the metadata database: a local path or a file://, s3://, gs:// or
    /// az:// URL (default: $ARROYO_BACKUP_URL, the config file's `backup_url`, none).
    #[arg(long)]
    backup_url: Option<String>,
    /// Where pipelines' checkpoints go (default: $ARROYO_STATE_URL, the config file's
    /// `state_url`, DATA_DIR/state).
    #[arg(long)]
    state_url: Option<String>,
    /// Default time between checkpoints, such as 10s (default: $ARROYO_CHECKPOINT_INTERVAL,
    /// the config file's `checkpoint_interval`, 10s).
    #[arg(long)]
    checkpoint_interval: Option<String>,
    /// Serve Prometheus metrics at /metrics on a loopback HOST:PORT (readable by every local
    /// user) or unix:PATH (default: $ARROYO_METRICS_ADDR, the config file's `metrics_addr`,
    /// none).
    #[arg(long, value_name = "HOST:PORT|unix:PATH")]
    metrics_addr: Option<String>,
    /// Log lines as text or json (default: $ARROYO_LOG_FORMAT, the config file's
    /// `log_format`, text; text into the journal has no timestamps and syslog levels).
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (the default).
    Serve(ServeArgs),
    /// Run one query end to end, printing the rows of a bare SELECT to stdout.
    Run(run::RunArgs),
    /// Print the effective configuration.
    Config(ServeArgs),
    /// Download the newest metadata snapshot of a backup URL and write it to PATH (for
    /// `arroyod.db` in a data dir no daemon runs on).
    #[command(hide = true)]
    RestoreDb {
        /// The daemon's `backup_url`.
        #[arg(long)]
        backup_url: String,
        /// The database file to write (replaced when it exists).
        #[arg(long)]
        to: PathBuf,
    },
    /// Print a completion script for a shell.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages of arroyod and its subcommands to a directory.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Run one pipeline generation (started by the daemon).
    #[command(hide = true)]
    Worker {
        /// The daemon's worker socket.
        #[arg(long)]
        socket: PathBuf,
        #[arg(long = "pipeline")]
        pipeline: String,
        #[arg(long)]
        generation: u64,
        /// The daemon's log filter.
        #[arg(long, default_value = "warn")]
        log: String,
        /// The daemon's log format.
        #[arg(long, default_value = "text", value_parser = LogFormat::parse)]
        log_format: LogFormat,
        /// A foreign user's pipeline: restrict this process with Landlock before anything
        /// else (see the `sandbox` module).
        #[arg(long)]
        confine: bool,
        /// With `--confine`: a directory the pipeline may read and write (`allowed_paths`).
        #[arg(long = "allow")]
        allow: Vec<PathBuf>,
        /// With `--confine`: the pipeline's own local state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// The stack of every runtime thread: a worker evaluates expressions there, recursively over
/// trees as deep as planning allows (a flat chain of 10,000 terms); only the pages used are
/// ever touched.
const RUNTIME_STACK_BYTES: usize = 256 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(RUNTIME_STACK_BYTES)
        .build()
        .expect("building the tokio runtime")
}

fn main() -> ExitCode {
    // Crash points of test builds (none in a shipped binary), in every process: once.
    engine::failpoint::setup();
    let cli = Cli::parse();
    let overrides = |args: &ServeArgs| {
        // Flags after the subcommand win over flags before it.
        settings::Overrides {
            config: args.config.clone().or(cli.serve.config.clone()),
            socket: args.socket.clone().or(cli.serve.socket.clone()),
            data_dir: args.data_dir.clone().or(cli.serve.data_dir.clone()),
            backup_url: args.backup_url.clone().or(cli.serve.backup_url.clone()),
            state_url: args.state_url.clone().or(cli.serve.state_url.clone()),
            checkpoint_interval: args
                .checkpoint_interval
                .clone()
                .or(cli.serve.checkpoint_interval.clone()),
            metrics_addr: args.metrics_addr.clone().or(cli.serve.metrics_addr.clone()),
            log_format: args.log_format.clone().or(cli.serve.log_format.clone()),
        }
    };
    let result: anyhow::Result<i32> = match cli.command {
        None | Some(Command::Serve(_)) => {
            // Before any thread exists: a SIGTERM that comes before the handlers are
            // installed waits for them.
            serve::block_termination_signals();
            let overrides = match &cli.command {
                Some(Command::Serve(args)) => overrides(args),
                _ => overrides(&ServeArgs::default()),
            };
            let settings = match settings::Settings::load(&overrides) {
                Ok(s) => s,
                Err(e) => {
                    print_error(&e.into());
                    return ExitCode::from(1);
                }
            };
            logging::init(&settings.log, settings.log_format);
            runtime()
                .block_on(serve::serve(settings))
                .map(|()| 0)
                .map_err(anyhow::Error::from)
        }
        Some(Command::Config(ref args)) => match settings::Settings::load(&overrides(args)) {
            Ok(c) => {
                print!("{}", c.to_toml());
                Ok(0)
            }
            Err(e) => Err(e.into()),
        },
        Some(Command::Run(_))
            if cli.serve.socket.is_some()
                || cli.serve.data_dir.is_some()
                || cli.serve.config.is_some()
                || cli.serve.backup_url.is_some()
                || cli.serve.state_url.is_some()
                || cli.serve.checkpoint_interval.is_some()
                || cli.serve.metrics_addr.is_some()
                || cli.serve.log_format.is_some() =>
        {
            eprintln!(
                "error: --socket, --data-dir, --config, --backup-url, --state-url, --checkpoint-interval, --metrics-addr and --log-format before `run` belong to the daemon; `arroyod run` takes -s STATE_DIR and its own --checkpoint-interval, --metrics-addr and --log-format"
            );
            return ExitCode::from(2);
        }
        Some(Command::Run(args)) => {
            serve::block_termination_signals();
            let format = match args.log_format() {
                Ok(f) => f,
                Err(e) => {
                    print_error(&e.into());
                    return ExitCode::from(1);
                }
            };
            logging::init("warn,arroyod::run=info,arroyod::bootstrap=info", format);
            runtime()
                .block_on(run::run(args))
                .map_err(anyhow::Error::from)
        }
        Some(Command::Completions { shell }) => {
            manual::print_completions(Cli::command(), shell);
            Ok(0)
        }
        Some(Command::Manpages { dir }) => manual::write_pages(Cli::command(), &dir)
            .map(|_| 0)
            .map_err(anyhow::Error::from),
        Some(Command::RestoreDb { backup_url, to }) => {
            logging::init("warn", LogFormat::Text);
            runtime()
                .block_on(backup::restore_latest(&backup_url, &to))
                .map(|p| {
                    println!(
                        "restored {} ({} bytes) to {}",
                        p.name,
                        p.length,
                        to.display()
                    );
                    0
                })
                .map_err(anyhow::Error::from)
        }
        Some(Command::Worker {
            socket,
            pipeline,
            generation,
            log,
            log_format,
            confine,
            allow,
            state_dir,
        }) => {
            logging::init(&log, log_format);
            // Before the runtime: the restriction covers only threads made after it.
            let grant = sandbox::Grant {
                allowed: allow,
                state: state_dir,
            };
            let kernel = match confine.then(|| sandbox::restrict(&grant)).transpose() {
                Ok(enforcement) => match enforcement.and_then(|e| e.warning()) {
                    None => worker::Kernel::Confines,
                    Some(warning) => worker::Kernel::DoesNot(warning),
                },
                Err(e) => worker::Kernel::Failed(engine::error_chain(&e)),
            };
            let span = tracing::info_span!("worker", pipeline = %pipeline, generation);
            match &kernel {
                worker::Kernel::Confines => {}
                worker::Kernel::DoesNot(warning) => span.in_scope(|| tracing::warn!("{warning}")),
                worker::Kernel::Failed(why) => span.in_scope(|| {
                    tracing::warn!(error = %why, "the worker cannot restrict itself; it will not run the pipeline")
                }),
            }
            runtime()
                .block_on(worker::run(socket, pipeline, generation, kernel).instrument(span))
                .map(|()| 0)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            print_error(&e);
            ExitCode::from(1)
        }
    }
}
