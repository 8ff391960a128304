//! arroyoctl: the thin client of arroyod.
//!
//! It parses the command line, makes one gRPC call to the daemon over its Unix socket and
//! renders the answer as text or JSON. It never links DataFusion or the engine: every decision
//! about queries is the daemon's.
//!
//! Exit statuses:
//! - `0`: success;
//! - `1`: an error (the daemon refused the request, a query does not validate, a file is
//!   unreadable);
//! - `2`: a usage error, reported by clap;
//! - `3`: the daemon cannot be reached at the socket.
//!
//! Errors go to stderr as `error: <message>`, then one `  caused by: ...` line per source and
//! any `hint: ...` lines; with `--json`, as one JSON object `{"error": {"message", "causes",
//! "hints", "exit_code"}}`. Results go to stdout only.
#![forbid(unsafe_code)]

mod cli;
mod command;
mod connect;
mod render;

use std::error::Error as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;
use crate::command::CommandError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command::run(cli)) {
        Ok(code) => code,
        Err(err) => report(&err, json),
    }
}

/// Prints `err` with its chain of causes and hints on stderr (as JSON with `json`); returns
/// the exit status it maps to.
fn report(err: &CommandError, json: bool) -> ExitCode {
    // A reader that went away (`arroyoctl tail x | head`) is not an error.
    if err.is_closed_stdout() {
        return ExitCode::SUCCESS;
    }
    let mut stderr = std::io::stderr().lock();
    if json {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let error = serde_json::json!({
            "error": {
                "message": err.to_string(),
                "causes": causes,
                "hints": err.hints(),
                "exit_code": err.exit_code(),
            }
        });
        let _ = writeln!(stderr, "{error}");
        return ExitCode::from(err.exit_code());
    }
    // The daemon puts one error per line in a status message: each gets its own `error:`.
    for line in err.to_string().lines() {
        let _ = writeln!(stderr, "error: {line}");
    }
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = writeln!(stderr, "  caused by: {cause}");
        source = cause.source();
    }
    for hint in err.hints() {
        let _ = writeln!(stderr, "hint: {hint}");
    }
    ExitCode::from(err.exit_code())
}
