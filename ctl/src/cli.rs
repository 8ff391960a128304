//! The command line of arroyoctl: global flags and one subcommand per RPC of the `Arroyod`
//! service.
//!
//! This module only describes arguments; it never connects, reads files or prints. Usage errors
//! are clap's own and exit with status 2.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Control a running arroyod: submit, inspect, tail, stop and resume streaming SQL pipelines.
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
        /// Time between checkpoints, such as `10s`, `500ms`, `2m` or `1h` [default: the
        /// daemon's checkpoint_interval]
        #[arg(long = "checkpoint-interval", value_name = "DUR", value_parser = parse_interval)]
        checkpoint_interval_ms: Option<u64>,
        /// The most memory its worker may use, such as `512MiB` or `2GB`; over it the
        /// pipeline fails [default: no limit]
        #[arg(long = "memory-limit", value_name = "SIZE", value_parser = parse_size)]
        memory_limit: Option<u64>,
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
    /// Print the rows of a pipeline's output log as JSON lines
    ///
    /// The output log holds the rows of the sinks a user can read (the default sink of a bare
    /// SELECT, `stdout` sinks), on disk with offsets, the newest `output_log_bytes` of them,
    /// also across daemon restarts. A reader behind what is held is told so (`warning: rows
    /// N..M are gone`), never skipped silently. After a restore from a checkpoint, the rows
    /// the previous run wrote since that checkpoint may come again: the restore is marked
    /// (on stderr, or as a `restore` frame with --json).
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
        /// Start at the last N rows held instead
        #[arg(short = 'n', long = "last", value_name = "N", conflicts_with = "from")]
        last: Option<u64>,
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
    /// Stop a pipeline (with a checkpoint when it runs) and start it again
    ///
    /// It resumes from its newest checkpoint. With --no-state (Arroyo's "restart without
    /// state") it starts from nothing: its sources read from their start and no checkpoint is
    /// restored. The answer says what that does to each sink; it is refused, unless --force,
    /// when exactly-once sinks (single_file, filesystem, Kafka in exactly_once mode) hold
    /// committed output that the new run would write over or beside.
    Restart {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Start from no state: a new state location, no checkpoint restored
        #[arg(long)]
        no_state: bool,
        /// With --no-state: restart even when exactly-once sinks would mix two runs' output
        #[arg(long, requires = "no_state")]
        force: bool,
    },
    /// Change a pipeline's settings: it stops with a checkpoint (when it runs) and restores
    /// from it with the new ones
    Update {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Number of parallel subtasks
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
        /// Time between checkpoints, such as `10s` or `500ms`
        #[arg(long = "checkpoint-interval", value_name = "DUR", value_parser = parse_interval)]
        checkpoint_interval_ms: Option<u64>,
        /// The most memory its worker may use, such as `512MiB`
        #[arg(long = "memory-limit", value_name = "SIZE", value_parser = parse_size)]
        memory_limit: Option<u64>,
    },
    /// Take a checkpoint of a running pipeline now, and print it once completed
    Checkpoint {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
    },
    /// Delete a stopped, failed or finished pipeline
    ///
    /// Its checkpoints and its output log are removed too, unless kept: then they stay where
    /// they are, and the answer says where.
    Delete {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Keep its checkpoints under the state URL
        #[arg(long)]
        keep_checkpoints: bool,
        /// Keep its output log under the data dir
        #[arg(long)]
        keep_output: bool,
    },
    /// Print a pipeline's recorded events: state changes, errors with their cause, restarts,
    /// checkpoints
    Logs {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Then keep printing new events
        #[arg(long, short)]
        follow: bool,
        /// Only the last N events
        #[arg(short = 'n', long = "last", value_name = "N")]
        last: Option<u32>,
    },
    /// Show a pipeline's operators live: rows in and out, rates, backpressure, watermark lag,
    /// checkpoint size
    Top {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// Time between refreshes
        #[arg(long, value_name = "DUR", value_parser = parse_interval, default_value = "1s")]
        interval: u64,
        /// Stop after this many refreshes [default: until interrupted]
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Show the dataflow graph of a query file or of a pipeline: operators, edges, shuffle
    /// keys, parallelism
    Explain {
        /// A SQL file (`-` for stdin), or the id or name of a pipeline
        #[arg(value_name = "FILE|ID|NAME")]
        target: String,
        /// Print it as Graphviz DOT (`arroyoctl explain q.sql --dot | dot -Tsvg > q.svg`)
        #[arg(long)]
        dot: bool,
        /// The parallelism to show for a query file
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
    },
    /// Print the versions of arroyoctl and of the daemon it reaches
    ///
    /// The client's line comes first and always; a daemon that cannot be reached is then an
    /// error (exit 3).
    Version,
    /// Show the daemon: version, uptime, where it keeps its data, state and snapshots,
    /// pipelines by state, and the caller as the daemon sees it
    Info,
    /// Print a completion script for a shell
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages of arroyoctl and its subcommands to a directory
    #[command(hide = true)]
    Manpages {
        /// Where to write them
        dir: PathBuf,
    },
    /// Start a stopped pipeline again from its last checkpoint and print its state
    ///
    /// A failed or finished pipeline counts as stopped; a pipeline in any other state is
    /// refused.
    Resume {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
    },
    /// List a pipeline's completed checkpoints, newest first
    ///
    /// RETAINED tells whether the checkpoint's files are still under the pipeline's state URL:
    /// older checkpoints are garbage-collected.
    Checkpoints {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
    },
    /// Wait until a pipeline is in one of the given states, and print it
    ///
    /// Exits 0 once the pipeline is in one of STATES; 1 when it ends in another final state
    /// (Stopped, Finished, Failed: a failure is printed), when it is deleted, or when the
    /// timeout passes first. For scripts: `arroyoctl submit q.sql && arroyoctl wait q`.
    Wait {
        /// Id or name of the pipeline
        #[arg(value_name = "ID|NAME")]
        pipeline: String,
        /// The states to wait for, comma-separated: Created, Scheduling, Running, Stopping,
        /// Recovering, Stopped, Finished, Failed (any case)
        #[arg(
            long = "for",
            value_name = "STATES",
            value_delimiter = ',',
            value_parser = parse_state,
            default_value = "Running"
        )]
        states: Vec<String>,
        /// How long to wait at most, such as 30s or 5m
        #[arg(long, value_name = "DUR", value_parser = parse_interval, default_value = "60s")]
        timeout: u64,
    },
}

/// A pipeline's states, in Arroyo's spelling (what `status` shows).
pub const STATES: [&str; 8] = [
    "Created",
    "Scheduling",
    "Running",
    "Stopping",
    "Recovering",
    "Stopped",
    "Finished",
    "Failed",
];

/// A `--for` value that names no state.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a state: use {states}", states = STATES.join(", "))]
pub struct UnknownState(String);

/// A state named in any case, spelled as the daemon spells it.
fn parse_state(value: &str) -> Result<String, UnknownState> {
    STATES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(value.trim()))
        .map(|s| s.to_string())
        .ok_or_else(|| UnknownState(value.to_owned()))
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

/// Parses a size such as `512MiB`, `2GB` or `1048576` (bytes) into bytes, above zero.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = value
        .trim()
        .parse()
        .map_err(|e| format!("{e} (a size such as 512MiB, 2GB or 1048576)"))?;
    if size.as_u64() == 0 {
        return Err("the size must be above zero".to_owned());
    }
    Ok(size.as_u64())
}

/// Why a duration flag (`--checkpoint-interval`, `--timeout`) is not one arroyoctl can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// Not a whole number followed by a unit.
    #[error("'{0}' is not a duration such as 10s, 500ms, 2m or 1h")]
    Syntax(String),
    /// A number with a unit other than `ms`, `s`, `m` and `h`.
    #[error("unknown time unit '{unit}' in '{value}': use ms, s, m or h")]
    Unit {
        /// The interval as given.
        value: String,
        /// The unit as given.
        unit: String,
    },
    /// Zero: the daemon would checkpoint without pause, a wait would not wait.
    #[error("must be above zero")]
    Zero,
    /// More milliseconds than the request can carry.
    #[error("'{0}' is too long")]
    TooLong(String),
}

/// Parses a checkpoint interval into milliseconds: a whole number and a unit among `ms`, `s`,
/// `m` and `h`, such as `10s` or `500ms`.
///
/// The unit is required: a bare `10` could mean seconds or milliseconds. Zero is refused; `0`
/// in the request means "the daemon's default", which is what leaving the flag out asks for.
pub fn parse_interval(value: &str) -> Result<u64, IntervalError> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    if number.is_empty() || unit.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(IntervalError::Syntax(value.to_owned()));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(IntervalError::Unit {
                value: value.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let too_long = || IntervalError::TooLong(value.to_owned());
    let number: u64 = number.parse().map_err(|_| too_long())?;
    let millis = number.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    if millis == 0 {
        return Err(IntervalError::Zero);
    }
    Ok(millis)
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
    fn intervals_parse_into_milliseconds() {
        assert_eq!(parse_interval("1s"), Ok(1_000));
        assert_eq!(parse_interval("500ms"), Ok(500));
        assert_eq!(parse_interval("2m"), Ok(120_000));
        assert_eq!(parse_interval("10s"), Ok(10_000));
        assert_eq!(parse_interval("1h"), Ok(3_600_000));
        assert_eq!(parse_interval("0010s"), Ok(10_000));
    }

    #[test]
    fn bad_intervals_are_refused() {
        for value in ["", "s", "10", "-1s", "1.5s", " 1s", "1 s", "ten s", "1s2"] {
            assert!(
                matches!(
                    parse_interval(value),
                    Err(IntervalError::Syntax(_) | IntervalError::Unit { .. })
                ),
                "{value:?}: {:?}",
                parse_interval(value)
            );
        }
        assert_eq!(
            parse_interval("5d"),
            Err(IntervalError::Unit {
                value: "5d".to_owned(),
                unit: "d".to_owned()
            })
        );
        assert_eq!(parse_interval("0s"), Err(IntervalError::Zero));
        assert_eq!(parse_interval("0ms"), Err(IntervalError::Zero));
        assert_eq!(
            parse_interval("18446744073709551615s"),
            Err(IntervalError::TooLong("18446744073709551615s".to_owned()))
        );
        assert_eq!(
            parse_interval("99999999999999999999ms"),
            Err(IntervalError::TooLong("99999999999999999999ms".to_owned()))
        );
    }

    #[test]
    fn submit_takes_a_checkpoint_interval() {
        let cli = Cli::try_parse_from([
            "arroyoctl",
            "submit",
            "q.sql",
            "--checkpoint-interval",
            "2m",
        ])
        .expect("parses");
        match cli.command {
            Command::Submit {
                checkpoint_interval_ms,
                ..
            } => assert_eq!(checkpoint_interval_ms, Some(120_000)),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["arroyoctl", "submit", "q.sql"]).expect("parses");
        match cli.command {
            Command::Submit {
                checkpoint_interval_ms,
                ..
            } => assert_eq!(checkpoint_interval_ms, None),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_bad_checkpoint_interval_is_a_usage_error() {
        for value in ["0s", "10", "soon"] {
            let err = Cli::try_parse_from([
                "arroyoctl",
                "submit",
                "q.sql",
                "--checkpoint-interval",
                value,
            ])
            .expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{value}");
        }
    }

    #[test]
    fn sizes_parse_into_bytes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn force_needs_no_state() {
        let err = Cli::try_parse_from(["arroyoctl", "restart", "p", "--force"])
            .expect_err("--force alone is refused");
        assert_eq!(err.exit_code(), 2);
        let cli = Cli::try_parse_from(["arroyoctl", "restart", "p", "--no-state", "--force"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Restart {
                no_state: true,
                force: true,
                ..
            }
        ));
    }

    #[test]
    fn parallelism_zero_is_a_usage_error() {
        let err = Cli::try_parse_from(["arroyoctl", "submit", "q.sql", "--parallelism", "0"])
            .expect_err("0 is rejected");
        assert_eq!(err.exit_code(), 2);
    }
}
