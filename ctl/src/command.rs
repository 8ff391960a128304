//! The subcommands: each reads its input, makes one call to the daemon and renders the answer.
//!
//! Each command goes through the same steps:
//! 1. choose the socket (`connect` documents the chain);
//! 2. read the query file, if any, before connecting: a bad path needs no daemon to be reported;
//! 3. connect (an unreachable daemon ends here, with exit status 3);
//! 4. make one RPC; a status `Unavailable` also means the daemon cannot be reached, and a
//!    connection that breaks during the call means the daemon went away (exit 3 too, with a
//!    hint to check `list` before retrying: the request may have taken effect);
//! 5. write the answer to stdout, as text or with `--json` as JSON, and flush it.
//!
//! Nothing here decides anything about queries or pipelines: the daemon does.

use std::io::{self, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use arroyod_proto::{
    DeleteRequest, InfoRequest, ListRequest, LogsRequest, Pipeline, PipelineRef, RestartRequest,
    SubmitRequest, TailRequest, UpdateRequest,
};
use clap::CommandFactory as _;
use tonic::{Code, Status};

use crate::cli::{Cli, Command};
use crate::connect::{self, Client, ConnectError};
use crate::render;

mod lifecycle;
mod query;
mod wait;

/// Exit status of an error.
const EXIT_ERROR: u8 = 1;
/// Exit status when the daemon cannot be reached.
const EXIT_UNREACHABLE: u8 = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No channel to the daemon.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The query file (or stdin) could not be read.
    #[error("cannot read the query from {}", path.display())]
    ReadQuery {
        /// The path as given, `-` for stdin.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon refused the call; the message is the status message, one error per line.
    #[error("{}", status_message(.0))]
    Rpc(Status),
    /// The daemon answered without a field it always sets.
    #[error("the daemon answered without {0}")]
    Incomplete(&'static str),
    /// Stdout could not be written.
    #[error("cannot write to stdout")]
    Output(#[source] io::Error),
    /// A stop ended without what its mode promises (a final checkpoint).
    #[error("pipeline {pipeline} stopped without a final checkpoint: {message}")]
    UncleanStop { pipeline: String, message: String },
    /// `wait`: the pipeline ended in a state not waited for.
    #[error("pipeline {pipeline} is {state}, not {wanted}{}", failure_suffix(.failure))]
    Ended {
        pipeline: String,
        state: String,
        wanted: String,
        failure: String,
    },
    /// `wait`: the timeout passed first.
    #[error("timed out after {} waiting for pipeline {pipeline} to be {wanted}: it is {state}", humantime::format_duration(*.timeout))]
    WaitTimedOut {
        pipeline: String,
        state: String,
        wanted: String,
        timeout: Duration,
    },
    /// Man pages could not be written.
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CommandError {
    /// The exit status this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect(ConnectError::Unreachable { .. } | ConnectError::Lost { .. }) => {
                EXIT_UNREACHABLE
            }
            _ => EXIT_ERROR,
        }
    }

    /// What the user could do about it.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Self::Connect(err) => err.hints(),
            Self::UncleanStop { .. } => vec![
                "rows after that checkpoint are processed again when it resumes; see 'arroyoctl logs' for why the stop could not take one".to_owned(),
            ],
            _ => Vec::new(),
        }
    }

    /// True when stdout was closed by its reader, as `arroyoctl tail p | head` does.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, Self::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// `: <failure>`, or nothing when there is none.
fn failure_suffix(failure: &str) -> String {
    if failure.is_empty() {
        String::new()
    } else {
        format!(": {failure}")
    }
}

/// The message of a status, or the description of its code when the message is empty.
fn status_message(status: &Status) -> &str {
    if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    }
}

/// Runs `cli`'s command; `Ok` carries the exit status (1 for a query that does not validate).
pub async fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    let socket = match cli.socket {
        Some(socket) => socket,
        None => connect::default_socket()?,
    };
    let session = Session {
        socket,
        json: cli.json,
    };
    match cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            write_stdout(|w| {
                clap_complete::generate(shell, &mut command, "arroyoctl", w);
                Ok(())
            })?;
        }
        Command::Manpages { dir } => write_manpages(&dir)?,
        Command::Submit {
            file,
            name,
            parallelism,
            checkpoint_interval_ms,
            memory_limit,
        } => {
            let request = SubmitRequest {
                query: String::new(),
                name: name.unwrap_or_default(),
                // 0 lets the daemon choose, for each.
                parallelism: parallelism.unwrap_or(0),
                checkpoint_interval_ms: checkpoint_interval_ms.unwrap_or(0),
                memory_limit_bytes: memory_limit.unwrap_or(0),
            };
            return session.submit(&file, request).await;
        }
        Command::Validate { file } => return session.validate(&file).await,
        Command::List => session.list().await?,
        Command::Version => session.version().await?,
        Command::Info => session.info().await?,
        Command::Status { pipeline } => session.status(pipeline).await?,
        Command::Tail {
            pipeline,
            follow,
            from,
            last,
        } => {
            let request = TailRequest {
                id_or_name: pipeline,
                from,
                follow,
                last: last.unwrap_or(0),
            };
            session.tail(request).await?
        }
        Command::Stop {
            pipeline,
            mode,
            no_wait,
        } => session.stop(pipeline, mode, !no_wait).await?,
        Command::Resume { pipeline } => session.resume(pipeline).await?,
        Command::Checkpoints { pipeline } => session.checkpoints(pipeline).await?,
        Command::Wait {
            pipeline,
            states,
            timeout,
        } => {
            let timeout = Duration::from_millis(timeout);
            session.wait(pipeline, &states, timeout).await?
        }
        Command::Restart {
            pipeline,
            no_state,
            force,
        } => {
            let request = RestartRequest {
                id_or_name: pipeline,
                no_state,
                force,
            };
            session.restart(request).await?
        }
        Command::Update {
            pipeline,
            parallelism,
            checkpoint_interval_ms,
            memory_limit,
        } => {
            let request = UpdateRequest {
                id_or_name: pipeline,
                parallelism: parallelism.unwrap_or(0),
                checkpoint_interval_ms: checkpoint_interval_ms.unwrap_or(0),
                memory_limit_bytes: memory_limit.unwrap_or(0),
            };
            session.update(request).await?
        }
        Command::Checkpoint { pipeline } => session.checkpoint(pipeline).await?,
        Command::Delete {
            pipeline,
            keep_checkpoints,
            keep_output,
        } => {
            let request = DeleteRequest {
                id_or_name: pipeline,
                keep_checkpoints,
                keep_output,
            };
            session.delete(request).await?
        }
        Command::Logs {
            pipeline,
            follow,
            last,
        } => {
            let request = LogsRequest {
                id_or_name: pipeline,
                follow,
                last: last.unwrap_or(0),
            };
            session.logs(request).await?
        }
        Command::Top {
            pipeline,
            interval,
            count,
        } => {
            session
                .top(pipeline, Duration::from_millis(interval), count)
                .await?
        }
        Command::Explain {
            target,
            dot,
            parallelism,
        } => return session.explain(&target, dot, parallelism).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages of arroyoctl and of each of its subcommands into `dir`.
fn write_manpages(dir: &Path) -> Result<(), CommandError> {
    let written = |path: PathBuf| {
        move |source| CommandError::WriteFile {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(written(dir.to_path_buf()))?;
    let root = Cli::command();
    let mut pages = vec![("arroyoctl".to_owned(), root.clone())];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("arroyoctl-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, command) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut out)
            .map_err(written(path.clone()))?;
        std::fs::write(&path, out).map_err(written(path.clone()))?;
    }
    Ok(())
}

/// What every command needs: the socket and the output format.
struct Session {
    socket: PathBuf,
    json: bool,
}

impl Session {
    async fn client(&self) -> Result<Client, CommandError> {
        Ok(connect::connect(&self.socket).await?)
    }

    /// Calls the daemon: `rpc` gets a connected client; the answer's message, or its status
    /// as an error.
    async fn call<T, F>(&self, rpc: impl FnOnce(Client) -> F) -> Result<T, CommandError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client().await?;
        rpc(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error(status))
    }

    /// A status from the daemon as an error: `Unavailable` means nothing answers at the socket.
    fn rpc_error(&self, status: Status) -> CommandError {
        rpc_error(&self.socket, status)
    }

    /// The client's version first (on stdout, even when the daemon cannot be reached), then
    /// the daemon's.
    async fn version(&self) -> Result<(), CommandError> {
        let client = env!("CARGO_PKG_VERSION");
        if !self.json {
            write_stdout(|w| writeln!(w, "arroyoctl {client}"))?;
        }
        let info = self.call(|mut c| async move { c.info(InfoRequest {}).await });
        let info = match info.await {
            Ok(info) => info,
            Err(e) => {
                if self.json {
                    write_stdout(|w| {
                        render::write_json(w, &serde_json::json!({ "client": client }))
                    })?;
                }
                return Err(e);
            }
        };
        write_stdout(|w| {
            if self.json {
                let v = serde_json::json!({ "client": client, "daemon": render::info_json(&info) });
                render::write_json(w, &v)
            } else {
                writeln!(
                    w,
                    "arroyod {} (pid {}, up {}, socket {})",
                    info.version,
                    info.pid,
                    render::uptime(info.uptime_ms),
                    info.socket
                )
            }
        })
    }

    async fn info(&self) -> Result<(), CommandError> {
        let info = self
            .call(|mut c| async move { c.info(InfoRequest {}).await })
            .await?;
        write_stdout(|w| {
            if self.json {
                render::write_json(w, &render::info_json(&info))
            } else {
                render::write_info(w, &info)
            }
        })
    }

    async fn list(&self) -> Result<(), CommandError> {
        let pipelines = self
            .call(|mut c| async move { c.list(ListRequest {}).await })
            .await?
            .pipelines;
        write_stdout(|w| {
            if self.json {
                let all = pipelines.iter().map(render::pipeline_json).collect();
                render::write_json(w, &serde_json::Value::Array(all))
            } else {
                render::write_table(w, &pipelines)
            }
        })
    }

    async fn status(&self, id_or_name: String) -> Result<(), CommandError> {
        let pipeline = self
            .call(|mut c| async move { c.status(PipelineRef { id_or_name }).await })
            .await?;
        self.write_pipeline(&pipeline, render::write_status)
    }

    /// Streams the rows to stdout as JSON lines, one flush per row, so that `--follow` shows
    /// each row as it comes; marks (a gap, a restore, lost rows) go to stderr. With `--json`
    /// every record is a JSON frame with its offset, marks included, on stdout. Writes block
    /// the only task: a slow reader slows the stream down instead of filling memory.
    async fn tail(&self, request: TailRequest) -> Result<(), CommandError> {
        let mut rows = self
            .call(|mut c| async move { c.tail(request).await })
            .await?;
        while let Some(row) = rows
            .message()
            .await
            .map_err(|status| self.rpc_error(status))?
        {
            if self.json {
                write_stdout(|w| {
                    serde_json::to_writer(&mut *w, &render::tail_json(&row))?;
                    writeln!(w)
                })?;
            } else if let Some(note) = render::tail_note(&row) {
                let _ = writeln!(io::stderr(), "{note}");
            } else {
                write_stdout(|w| writeln!(w, "{}", row.json))?;
            }
        }
        Ok(())
    }

    /// Prints the events as lines (JSON lines with `--json`), flushed one by one.
    async fn logs(&self, request: LogsRequest) -> Result<(), CommandError> {
        let mut events = self
            .call(|mut c| async move { c.logs(request).await })
            .await?;
        while let Some(e) = events
            .message()
            .await
            .map_err(|status| self.rpc_error(status))?
        {
            write_stdout(|w| {
                if self.json {
                    serde_json::to_writer(&mut *w, &render::log_json(&e))?;
                    writeln!(w)
                } else {
                    writeln!(w, "{}", render::log_line(&e))
                }
            })?;
        }
        Ok(())
    }

    /// Refreshes the table every `interval`, `count` times or until interrupted; on a
    /// terminal the screen is cleared first, else each refresh follows the last (with
    /// `--json`, one JSON object per line).
    async fn top(
        &self,
        id_or_name: String,
        interval: Duration,
        count: Option<u64>,
    ) -> Result<(), CommandError> {
        let mut client = self.client().await?;
        let clear = !self.json && io::stdout().is_terminal();
        let mut shown = 0;
        loop {
            let metrics = client
                .metrics(PipelineRef {
                    id_or_name: id_or_name.clone(),
                })
                .await
                .map_err(|status| self.rpc_error(status))?
                .into_inner();
            write_stdout(|w| {
                if self.json {
                    serde_json::to_writer(&mut *w, &render::top_json(&metrics))?;
                    return writeln!(w);
                }
                if clear {
                    write!(w, "\x1b[H\x1b[2J")?;
                } else if shown > 0 {
                    writeln!(w)?;
                }
                render::write_top(w, &metrics)
            })?;
            shown += 1;
            if count.is_some_and(|n| shown >= n) {
                return Ok(());
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Prints the checkpoints in the daemon's order, newest first.
    async fn checkpoints(&self, id_or_name: String) -> Result<(), CommandError> {
        let checkpoints = self
            .call(|mut c| async move { c.checkpoints(PipelineRef { id_or_name }).await })
            .await?
            .checkpoints;
        write_stdout(|w| {
            if self.json {
                let all = checkpoints.iter().map(render::checkpoint_json).collect();
                render::write_json(w, &serde_json::Value::Array(all))
            } else {
                render::write_checkpoints(w, &checkpoints)
            }
        })
    }

    /// Writes a pipeline to stdout as JSON, or as text with `text`.
    fn write_pipeline(
        &self,
        pipeline: &Pipeline,
        text: impl FnOnce(&mut io::StdoutLock<'static>, &Pipeline) -> io::Result<()>,
    ) -> Result<(), CommandError> {
        write_stdout(|w| {
            if self.json {
                render::write_json(w, &render::pipeline_json(pipeline))
            } else {
                text(w, pipeline)
            }
        })
    }
}

/// `status` as an error: `Unavailable` means nothing answers at `socket`; a status the
/// transport made (the connection broke during the call) means the daemon went away.
fn rpc_error(socket: &Path, status: Status) -> CommandError {
    if let Some(reason) = broken_connection(&status) {
        return ConnectError::Lost {
            socket: socket.to_path_buf(),
            reason,
        }
        .into();
    }
    if status.code() == Code::Unavailable {
        ConnectError::Unreachable {
            socket: socket.to_path_buf(),
            reason: status_message(&status).to_owned(),
        }
        .into()
    } else {
        CommandError::Rpc(status)
    }
}

/// What broke, when `status` was made by the transport rather than sent by the daemon: its
/// source chain holds the transport's or an I/O error.
fn broken_connection(status: &Status) -> Option<String> {
    let mut source = std::error::Error::source(status);
    let mut found = None;
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<io::Error>() {
            found = Some(e.to_string());
        } else if found.is_some() {
            // The innermost cause says the most ("connection reset", "broken pipe").
            found = Some(e.to_string());
        }
        source = e.source();
    }
    found
}

/// Runs `write` on locked stdout, then flushes it.
fn write_stdout(
    write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<(), CommandError> {
    let mut stdout = io::stdout().lock();
    write(&mut stdout)
        .and_then(|()| stdout.flush())
        .map_err(CommandError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_means_unreachable() {
        let err = rpc_error(
            Path::new("/s.sock"),
            Status::unavailable("connection reset"),
        );
        assert_eq!(err.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(
            err.to_string(),
            "cannot reach arroyod at /s.sock: connection reset"
        );
    }

    #[test]
    fn a_connection_broken_during_the_call_means_the_daemon_went_away() {
        let broken = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        let err = rpc_error(Path::new("/s.sock"), Status::from_error(Box::new(broken)));
        assert_eq!(err.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(
            err.to_string(),
            "lost arroyod at /s.sock during the call: connection reset by peer"
        );
        assert!(
            err.hints()[0].contains("arroyoctl list"),
            "{:?}",
            err.hints()
        );
    }

    #[test]
    fn other_statuses_are_errors_with_their_message() {
        let err = rpc_error(Path::new("/s.sock"), Status::not_found("no pipeline p"));
        assert_eq!(err.exit_code(), EXIT_ERROR);
        assert_eq!(err.to_string(), "no pipeline p");
        let err = rpc_error(Path::new("/s.sock"), Status::internal(""));
        assert_eq!(err.to_string(), Code::Internal.description());
    }

    #[test]
    fn closed_stdout_is_not_reported() {
        let err = CommandError::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(err.is_closed_stdout());
        let err = CommandError::Output(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!err.is_closed_stdout());
    }
}
