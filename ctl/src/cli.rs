//! The command line of arroyoctl: global flags and one subcommand per RPC of the `Arroyod`
//! service.
//!
//! This module only describes arguments; it never connects, reads files or prints. Usage errors
//! are clap's own and exit with status 2.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Control a running arroyod: submit, inspect, tail and stop streaming SQL pipelines.
#[derive(Debug, Parser)]
#[command(name = "arroyoctl", version, propagate_version = true)]
pub struct Cli {
    /// Unix socket of the daemon [default: $ARROYO_SOCKET, else $RUNTIME_DIRECTORY/arroyod.sock,
    /// else $XDG_RUNTIME_DIR/arroyod.sock, else /tmp/arroyod-$UID/arroyod.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print results as JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// One call to the daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan a query, store it as a pipeline and start it
    Submit {
        /// File holding the SQL, or `-` for stdin
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
        /// Name of the pipeline [default: chosen by the daemon]
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// Number of parallel subtasks [default: chosen by the daemon]
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
    },
    /// Plan a query without running it and report its errors
    Validate {
        /// File holding the SQL, or `-` for stdin
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
    },
    /// List the pipelines
    List,
    /// Show one pipeline
    Status {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
    },
    /// Print the rows of a pipeline's default sink as JSON lines
    Tail {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Keep printing new rows until the pipeline ends
        #[arg(long, short)]
        follow: bool,
        /// First row offset to print
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
    },
    /// Stop a pipeline and print its state
    Stop {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// How to stop
        #[arg(long, value_enum, default_value_t = StopMode::Checkpoint)]
        mode: StopMode,
        /// Return once the stop is requested instead of once the pipeline has stopped
        #[arg(long)]
        no_wait: bool,
    },
}

/// How `stop` ends a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StopMode {
    /// Take a final checkpoint, then stop
    Checkpoint,
    /// Stop the sources and let the rows in flight drain, then stop
    Graceful,
    /// Stop at once, without a final checkpoint
    Immediate,
}

impl From<StopMode> for arroyod_proto::StopMode {
    fn from(mode: StopMode) -> Self {
        match mode {
            StopMode::Checkpoint => Self::Checkpoint,
            StopMode::Graceful => Self::Graceful,
            StopMode::Immediate => Self::Immediate,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_after_the_subcommand_too() {
        let cli = Cli::try_parse_from(["arroyoctl", "list", "--json", "--socket", "/s.sock"])
            .expect("parses");
        assert!(cli.json);
        assert_eq!(cli.socket, Some(PathBuf::from("/s.sock")));
    }

    #[test]
    fn stop_defaults_to_checkpoint_and_waiting() {
        let cli = Cli::try_parse_from(["arroyoctl", "stop", "p"]).expect("parses");
        match cli.command {
            Command::Stop { mode, no_wait, .. } => {
                assert_eq!(mode, StopMode::Checkpoint);
                assert!(!no_wait);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parallelism_zero_is_a_usage_error() {
        let err = Cli::try_parse_from(["arroyoctl", "submit", "q.sql", "--parallelism", "0"])
            .expect_err("0 is rejected");
        assert_eq!(err.exit_code(), 2);
    }
}
