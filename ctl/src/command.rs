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

use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arroyod_proto::{ListRequest, PipelineRef, StopRequest, SubmitRequest, TailRequest};
use arroyod_proto::{Pipeline, QueryErrors, SqlError, ValidateRequest};
use prost::Message as _;
use tonic::{Code, Status};

use crate::cli::{Cli, Command, StopMode};
use crate::connect::{self, Client, ConnectError};
use crate::render;

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
            _ => Vec::new(),
        }
    }

    /// True when stdout was closed by its reader, as `arroyoctl tail p | head` does.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, Self::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
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
        Command::Submit {
            file,
            name,
            parallelism,
            checkpoint_interval_ms,
        } => {
            return session
                .submit(&file, name, parallelism, checkpoint_interval_ms)
                .await;
        }
        Command::Validate { file } => return session.validate(&file).await,
        Command::List => session.list().await?,
        Command::Status { pipeline } => session.status(pipeline).await?,
        Command::Tail {
            pipeline,
            follow,
            from,
        } => session.tail(pipeline, follow, from).await?,
        Command::Stop {
            pipeline,
            mode,
            no_wait,
        } => session.stop(pipeline, mode, !no_wait).await?,
        Command::Resume { pipeline } => session.resume(pipeline).await?,
        Command::Checkpoints { pipeline } => session.checkpoints(pipeline).await?,
    }
    Ok(ExitCode::SUCCESS)
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

    /// A status from the daemon as an error: `Unavailable` means nothing answers at the socket.
    fn rpc_error(&self, status: Status) -> CommandError {
        rpc_error(&self.socket, status)
    }

    /// A query the daemon refuses exits 1, its errors printed as `validate` prints them.
    async fn submit(
        &self,
        file: &Path,
        name: Option<String>,
        parallelism: Option<u32>,
        checkpoint_interval_ms: Option<u64>,
    ) -> Result<ExitCode, CommandError> {
        let query = read_query(file)?;
        let request = SubmitRequest {
            query,
            name: name.unwrap_or_default(),
            // 0 lets the daemon choose, for both.
            parallelism: parallelism.unwrap_or(0),
            checkpoint_interval_ms: checkpoint_interval_ms.unwrap_or(0),
        };
        let answer = self.client().await?.submit(request).await;
        let pipeline = match answer {
            Ok(response) => response
                .into_inner()
                .pipeline
                .ok_or(CommandError::Incomplete("the pipeline"))?,
            Err(status) => {
                return match query_errors(&status) {
                    Some(errors) => {
                        if self.json {
                            write_stdout(|w| {
                                render::write_json(w, &render::submit_errors_json(&errors))
                            })?;
                        } else {
                            print_diagnostics(file, &errors);
                        }
                        Ok(ExitCode::from(EXIT_ERROR))
                    }
                    None => Err(self.rpc_error(status)),
                };
            }
        };
        // The id is the last word, for scripts: `arroyoctl submit q.sql | awk '{print $NF}'`.
        self.write_pipeline(&pipeline, |w, p| {
            writeln!(w, "submitted pipeline {}", render::pipeline_label(p))
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// Exits 1 when the query has errors, which go to stderr as diagnostics (or to stdout in
    /// the JSON answer).
    async fn validate(&self, file: &Path) -> Result<ExitCode, CommandError> {
        let query = read_query(file)?;
        let response = self
            .client()
            .await?
            .validate(ValidateRequest { query })
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner();
        if self.json {
            write_stdout(|w| render::write_json(w, &render::validate_json(&response)))?;
        } else if response.errors.is_empty() {
            write_stdout(|w| {
                writeln!(w, "ok")?;
                writeln!(w, "{}", render::sinks_line(&response.sinks))
            })?;
        } else {
            print_diagnostics(file, &response.errors);
        }
        Ok(if response.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_ERROR)
        })
    }

    async fn list(&self) -> Result<(), CommandError> {
        let pipelines = self
            .client()
            .await?
            .list(ListRequest {})
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner()
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
            .client()
            .await?
            .status(PipelineRef { id_or_name })
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner();
        self.write_pipeline(&pipeline, render::write_status)
    }

    /// Streams the rows to stdout as JSON lines, one flush per row, so that `--follow` shows
    /// each row as it comes. Writes block the only task: a slow reader slows the stream down
    /// instead of filling memory. Rows are printed the same with `--json`.
    async fn tail(&self, id_or_name: String, follow: bool, from: u64) -> Result<(), CommandError> {
        let mut rows = self
            .client()
            .await?
            .tail(TailRequest {
                id_or_name,
                from,
                follow,
            })
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner();
        while let Some(row) = rows
            .message()
            .await
            .map_err(|status| self.rpc_error(status))?
        {
            write_stdout(|w| writeln!(w, "{}", row.json))?;
        }
        Ok(())
    }

    async fn stop(
        &self,
        id_or_name: String,
        mode: StopMode,
        wait: bool,
    ) -> Result<(), CommandError> {
        let request = StopRequest {
            id_or_name,
            mode: arroyod_proto::StopMode::from(mode).into(),
            wait,
        };
        let pipeline = self
            .client()
            .await?
            .stop(request)
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner();
        self.write_pipeline(&pipeline, render::write_state)
    }

    /// The daemon refuses (`FailedPrecondition`) a pipeline that is not stopped, failed or
    /// finished; its message says so.
    async fn resume(&self, id_or_name: String) -> Result<(), CommandError> {
        let pipeline = self
            .client()
            .await?
            .resume(PipelineRef { id_or_name })
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner();
        self.write_pipeline(&pipeline, render::write_state)
    }

    /// Prints the checkpoints in the daemon's order, newest first.
    async fn checkpoints(&self, id_or_name: String) -> Result<(), CommandError> {
        let checkpoints = self
            .client()
            .await?
            .checkpoints(PipelineRef { id_or_name })
            .await
            .map_err(|status| self.rpc_error(status))?
            .into_inner()
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

/// The query errors a refused `submit` carries in its status details.
fn query_errors(status: &Status) -> Option<Vec<SqlError>> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let errors = QueryErrors::decode(status.details()).ok()?.errors;
    (!errors.is_empty()).then_some(errors)
}

/// Writes query errors to stderr as `FILE:LINE:COL: error: message` lines.
fn print_diagnostics(file: &Path, errors: &[SqlError]) {
    let label = query_label(file);
    let mut stderr = io::stderr().lock();
    for error in errors {
        // A closed stderr leaves nowhere to report to; the exit status still tells.
        let _ = writeln!(stderr, "{}", render::diagnostic(&label, error));
    }
}

/// The query in `path`, or on stdin when `path` is `-`.
fn read_query(path: &Path) -> Result<String, CommandError> {
    let read = if path == Path::new("-") {
        let mut query = String::new();
        io::stdin().read_to_string(&mut query).map(|_| query)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| CommandError::ReadQuery {
        path: path.to_path_buf(),
        source,
    })
}

/// How diagnostics name the query's file.
fn query_label(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
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
    fn stdin_is_labelled() {
        assert_eq!(query_label(Path::new("-")), "<stdin>");
        assert_eq!(query_label(Path::new("q/a.sql")), "q/a.sql");
    }

    #[test]
    fn closed_stdout_is_not_reported() {
        let err = CommandError::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(err.is_closed_stdout());
        let err = CommandError::Output(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!err.is_closed_stdout());
    }
}
