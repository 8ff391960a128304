//! The gRPC edge, the one place that knows tonic and the proto types: the public `Arroyod`
//! service on the daemon's socket ([`public`]) and the internal `WorkerControl` service on its
//! worker socket ([`worker`]). Both are thin: they translate between protobuf and the
//! controller's domain types, and map [`ControllerError`]s to gRPC codes by whose fault they
//! are:
//!
//! - the user's (a bad query, name, parallelism or id prefix): `InvalidArgument`, a refused
//!   query with its errors as `QueryErrors` in the status details;
//! - an unknown pipeline: `NotFound`; a taken name: `AlreadyExists`;
//! - a pipeline in the wrong state, or a state URL that cannot be reached:
//!   `FailedPrecondition`, naming the pipeline or the store;
//! - a full disk under the metadata store: `ResourceExhausted`, naming the database;
//! - the daemon shutting down: `Unavailable` (the client's "cannot reach", exit 3);
//! - anything else, a broken invariant: `Internal`.
//!
//! Never `Unavailable` for a user's error: clients keep that code for a daemon they cannot
//! reach.

mod info;
mod public;
mod worker;

pub use info::About;
pub use public::Api;
pub use worker::WorkerApi;

use arroyod_proto::{Pipeline as PipelineMsg, QueryErrors, SqlError as SqlErrorMsg, StopOutcome};
use prost::Message;
use tonic::{Code, Status};

use crate::controller::protocol::PipelineView;
use crate::controller::{ControllerError, Pipeline};
use crate::engine::{SqlError, error_chain};

/// True when a message says the disk under SQLite is full.
fn disk_full(message: &str) -> bool {
    message.contains("database or disk is full") || message.contains("No space left on device")
}

/// The status of a controller error, by whose fault it is.
pub fn status(e: ControllerError) -> Status {
    let message = error_chain(&e);
    match e {
        ControllerError::InvalidQuery(errors) => query_errors(&errors, ""),
        ControllerError::InvalidName(_)
        | ControllerError::Parallelism { .. }
        | ControllerError::Ambiguous { .. } => Status::invalid_argument(message),
        ControllerError::NotFound(_) => Status::not_found(message),
        ControllerError::NameTaken(_) => Status::already_exists(message),
        ControllerError::Refused { .. }
        | ControllerError::StateUnreachable { .. }
        | ControllerError::CheckpointFailed { .. }
        | ControllerError::WouldMixOutput { .. }
        | ControllerError::RemoveState(_) => Status::failed_precondition(message),
        ControllerError::Output(_) if disk_full(&message) => Status::resource_exhausted(message),
        ControllerError::Output(_) => Status::internal(message),
        ControllerError::ShuttingDown => Status::unavailable(message),
        ControllerError::Recording { .. } | ControllerError::Store(_) if disk_full(&message) => {
            Status::resource_exhausted(message)
        }
        ControllerError::Recording { .. } | ControllerError::Store(_) => Status::internal(message),
    }
}

/// An error of a query as the wire carries it, with its line of `shown` (the query with secret
/// values redacted; empty: no line).
fn sql_error_msg(e: &SqlError, shown: &str) -> SqlErrorMsg {
    let line = (e.line as usize)
        .checked_sub(1)
        .and_then(|n| shown.lines().nth(n));
    SqlErrorMsg {
        message: e.message.clone(),
        line: e.line,
        column: e.column,
        hints: vec![],
        source_line: line.unwrap_or_default().to_string(),
    }
}

/// `InvalidArgument` for a query that does not plan: one `line:column: message` per line, and
/// the errors as `QueryErrors` in the details.
fn query_errors(errors: &[SqlError], shown: &str) -> Status {
    let text = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let details = QueryErrors {
        errors: errors.iter().map(|e| sql_error_msg(e, shown)).collect(),
    };
    Status::with_details(Code::InvalidArgument, text, details.encode_to_vec().into())
}

/// A pipeline as the proto spells it.
pub fn pipeline_msg(p: &Pipeline) -> PipelineMsg {
    view_msg(p.view(), p.output().next_offset())
}

/// A pipeline's view as the proto spells it; `rows` is its output log's next offset.
pub fn view_msg(v: PipelineView, rows: u64) -> PipelineMsg {
    PipelineMsg {
        id: v.id,
        name: v.name,
        state: v.state.as_str().to_string(),
        created_at: v.created_at,
        updated_at: v.updated_at,
        failure: v.failure,
        parallelism: v.spec.parallelism,
        query: crate::secrets::redact_query(&v.spec.query),
        generation: v.generation,
        rows,
        desired: v.desired.as_str().to_string(),
        worker_pid: v.worker_pid,
        checkpoint_interval_ms: v.spec.checkpoint_interval.as_millis() as u64,
        state_url: v.state_url,
        last_checkpoint: v.last_checkpoint,
        last_stop: v.last_stop.map(|s| StopOutcome {
            mode: s.mode.name().to_string(),
            clean: s.clean,
            epoch: s.epoch,
            message: s.message,
        }),
        memory_limit_bytes: v.spec.memory_limit,
        subtasks: v.subtasks,
        subtasks_ended: v.subtasks_ended,
        restarts: v.restarts,
        bad_rows_dropped: v.bad_rows_dropped,
        late_rows_dropped: v.late_rows_dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::machine::{Refusal, State};

    #[test]
    fn errors_map_to_codes_by_whose_fault_they_are() {
        let bad = vec![SqlError {
            message: "table nope not found".into(),
            line: 2,
            column: 8,
        }];
        let s = status(ControllerError::InvalidQuery(bad));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "2:8: table nope not found");
        let details = QueryErrors::decode(s.details()).unwrap();
        assert_eq!(details.errors[0].line, 2);
        assert_eq!(details.errors[0].message, "table nope not found");
        let refused = ControllerError::Refused {
            pipeline: "p".into(),
            refusal: Refusal::NotStopped(State::Running),
        };
        assert_eq!(status(refused).code(), Code::FailedPrecondition);
        let too_many = ControllerError::Parallelism {
            given: 3000,
            max: 64,
        };
        let s = status(too_many);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains("max_parallelism 64"),
            "{}",
            s.message()
        );
        let full = ControllerError::Recording {
            pipeline: "p".into(),
            reason: "metadata database /d/arroyod.db: database or disk is full".into(),
        };
        assert_eq!(status(full).code(), Code::ResourceExhausted);
        for user in [
            ControllerError::NotFound("x".into()),
            ControllerError::NameTaken("x".into()),
        ] {
            assert_ne!(status(user).code(), Code::Unavailable);
        }
    }
}
