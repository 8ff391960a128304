//! The internal `WorkerControl` service: a worker's Hello, its report stream and its command
//! stream, translated to and from the controller's domain types.

use std::pin::Pin;
use std::sync::Arc;

use arroyod_proto::worker_control_server::WorkerControl;
use arroyod_proto::{
    StopMode as StopModeMsg, WorkerCommand, WorkerEvent, worker_command, worker_event,
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::controller::Controller;
use crate::controller::machine::{CheckpointInfo, Command, Report, StopMode};
use crate::controller::protocol::{LinkBroken, ReportStream, StartSpec};
use crate::engine::NodeFigures;
use crate::metrics::{MetricsReport, OperatorReport};
use crate::output::PREVIEW;

pub struct WorkerApi {
    pub controller: Arc<Controller>,
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<WorkerCommand, Status>> + Send>>;

/// A worker's event as a report; None for what carries nothing (a second Hello, an empty
/// event).
fn report(event: worker_event::Event) -> Option<Report> {
    use worker_event::Event;
    Some(match event {
        Event::Hello(_) => return None,
        Event::Running(r) => Report::Running {
            restored: Some(r.restored_epoch).filter(|e| *e > 0),
        },
        Event::Rows(rows) => Report::Rows {
            sink: if rows.sink.is_empty() {
                PREVIEW.to_string()
            } else {
                rows.sink
            },
            rows: rows.json,
        },
        Event::Finished(_) => Report::Finished,
        Event::Stopped(_) => Report::Stopped,
        Event::Failed(f) => Report::Failed(f.message),
        Event::CommitRequest(r) => Report::CommitRequest(r.epoch),
        Event::CheckpointCompleted(c) => Report::CheckpointCompleted(CheckpointInfo {
            epoch: c.epoch,
            bytes: c.bytes,
            duration_ms: c.duration_ms,
        }),
        Event::Metrics(m) => Report::Metrics(MetricsReport {
            operators: m
                .operators
                .into_iter()
                .map(|o| OperatorReport {
                    operator: o.operator,
                    parallelism: o.parallelism,
                    figures: NodeFigures {
                        rows_in: o.rows_in,
                        rows_out: o.rows_out,
                        bytes_in: o.bytes_in,
                        bytes_out: o.bytes_out,
                        blocked_ns: o.blocked_ns,
                        watermark_ms: Some(o.watermark_ms).filter(|w| *w != 0),
                        late_rows: o.late_rows_dropped,
                        bad_rows: o.bad_rows_dropped,
                        checkpoint_bytes: o.checkpoint_bytes,
                        checkpoint_ms: o.checkpoint_duration_ms,
                        subtasks_ended: u64::from(o.subtasks_ended),
                    },
                })
                .collect(),
            window_ms: m.window_ms,
            subtasks: m.subtasks,
            subtasks_ended: m.subtasks_ended,
        }),
    })
}

fn reports(events: Streaming<WorkerEvent>) -> ReportStream {
    Box::pin(events.filter_map(|event| async move {
        match event {
            Ok(WorkerEvent { event: Some(e) }) => report(e).map(Ok),
            Ok(WorkerEvent { event: None }) => None,
            Err(status) => Some(Err(LinkBroken(status.to_string()))),
        }
    }))
}

fn stop_mode_msg(mode: StopMode) -> StopModeMsg {
    match mode {
        StopMode::Checkpoint => StopModeMsg::Checkpoint,
        StopMode::Graceful => StopModeMsg::Graceful,
        StopMode::Immediate => StopModeMsg::Immediate,
    }
}

/// A command as the wire carries it.
fn command_msg(command: Command) -> WorkerCommand {
    let command = match command {
        Command::Stop(mode) => worker_command::Command::Stop(arroyod_proto::Stop {
            mode: stop_mode_msg(mode) as i32,
        }),
        Command::Commit { epoch, allowed } => {
            worker_command::Command::Commit(arroyod_proto::Commit { epoch, allowed })
        }
        Command::Checkpoint => {
            worker_command::Command::Checkpoint(arroyod_proto::TakeCheckpoint {})
        }
    };
    WorkerCommand {
        command: Some(command),
    }
}

fn paths(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

fn start_msg(start: StartSpec) -> WorkerCommand {
    WorkerCommand {
        command: Some(worker_command::Command::Start(arroyod_proto::Start {
            pipeline_id: start.pipeline_id,
            name: start.name,
            query: start.query,
            parallelism: start.parallelism,
            state_url: start.state_url,
            checkpoint_interval_ms: start.checkpoint_interval.as_millis().max(1) as u64,
            expected_epoch: start.expected_epoch,
            memory_limit_bytes: start.memory_limit,
            confinement: Some(arroyod_proto::Confinement {
                foreign: start.confinement.foreign,
                allowed_paths: paths(&start.confinement.allowed),
                denied_paths: paths(&start.confinement.denied),
            }),
        })),
    }
}

#[tonic::async_trait]
impl WorkerControl for WorkerApi {
    type AttachStream = CommandStream;

    async fn attach(
        &self,
        request: Request<Streaming<WorkerEvent>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut events = request.into_inner();
        let hello = match events.message().await? {
            Some(WorkerEvent {
                event: Some(worker_event::Event::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("a worker must say Hello first")),
        };
        let Some(attachment) = self
            .controller
            .attach(
                &hello.pipeline_id,
                hello.generation,
                reports(events),
                Some(hello.unconfined).filter(|w| !w.is_empty()),
            )
            .await
        else {
            return Err(Status::failed_precondition(format!(
                "generation {} of pipeline {} is not current",
                hello.generation, hello.pipeline_id
            )));
        };
        let start = futures::stream::once(async move { Ok(start_msg(attachment.start)) });
        let commands =
            UnboundedReceiverStream::new(attachment.commands).map(|c| Ok(command_msg(c)));
        Ok(Response::new(Box::pin(start.chain(commands))))
    }
}
