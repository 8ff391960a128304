//! The public `Arroyod` service: one method per RPC, each a translation to a controller call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arroyod_proto::arroyod_server::Arroyod;
use arroyod_proto::{
    Checkpoint as CheckpointMsg, CheckpointsResponse, DeleteRequest, DeleteResponse,
    ExplainRequest, ExplainResponse, GraphEdge, GraphNode, InfoRequest, InfoResponse, ListRequest,
    ListResponse, LogEvent, LogsRequest, OffsetRange, OperatorMetrics, Pipeline as PipelineMsg,
    PipelineMetrics, PipelineRef, RestartRequest, RestartResponse, Restore,
    StopMode as StopModeMsg, StopRequest, SubmitRequest, SubmitResponse, TailRequest, TailRow,
    UpdateRequest, ValidateRequest, ValidateResponse,
};
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::{pipeline_msg, query_errors, sql_error_msg, status, view_msg};
use crate::access::Caller;
use crate::controller::ControllerError;
use crate::controller::machine::{Changes, StopMode};
use crate::controller::{Controller, Keep, Submission};
use crate::engine::{Role, Route, Shape, plan};
use crate::output::{OutputLog, Reader, Record};
use crate::secrets::redact_query;
use crate::store::{CheckpointRow, EventRow};

/// The uid of an admitted caller ([`crate::access::Policy::admit`]); None when the request
/// did not come through the public socket's check.
fn caller_uid<T>(request: &Request<T>) -> Option<u32> {
    request.extensions().get::<Caller>().map(|c| c.uid)
}

/// Records read from an output log at a time.
const TAIL_CHUNK: usize = 1024;

pub struct Api {
    pub controller: Arc<Controller>,
    /// What the daemon says of itself.
    pub about: super::About,
}

type TailStream = Pin<Box<dyn Stream<Item = Result<TailRow, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<LogEvent, Status>> + Send>>;

/// A stop mode from the wire; unspecified is a stop with a checkpoint.
fn stop_mode(mode: i32) -> StopMode {
    match StopModeMsg::try_from(mode) {
        Ok(StopModeMsg::Graceful) => StopMode::Graceful,
        Ok(StopModeMsg::Immediate) => StopMode::Immediate,
        Ok(StopModeMsg::Checkpoint | StopModeMsg::Unspecified) | Err(_) => StopMode::Checkpoint,
    }
}

/// A dataflow graph as the proto spells it.
fn graph_msg(shape: &Shape) -> ExplainResponse {
    let nodes = shape
        .nodes
        .iter()
        .enumerate()
        .map(|(index, n)| GraphNode {
            index: index as u32,
            id: n.id.clone(),
            label: n.label.clone(),
            kind: match n.role {
                Role::Source => "source",
                Role::Operator => "operator",
                Role::Sink => "sink",
            }
            .to_owned(),
            parallelism: n.parallelism as u32,
        })
        .collect();
    let edges = shape
        .edges
        .iter()
        .map(|e| {
            let (kind, keys) = match &e.route {
                Route::Forward => ("forward", vec![]),
                Route::Rebalance => ("rebalance", vec![]),
                Route::Shuffle(keys) => ("shuffle", keys.clone()),
            };
            GraphEdge {
                from: e.from as u32,
                to: e.to as u32,
                kind: kind.to_owned(),
                keys,
            }
        })
        .collect();
    ExplainResponse {
        nodes,
        edges,
        errors: vec![],
    }
}

/// A record of an output log as the proto spells it.
fn tail_row(record: Record) -> TailRow {
    match record {
        Record::Row {
            offset,
            sink,
            generation,
            json,
        } => TailRow {
            offset,
            json,
            sink: sink.to_string(),
            generation,
            ..TailRow::default()
        },
        Record::Start { offset, start } => TailRow {
            offset,
            generation: start.generation,
            restore: Some(Restore {
                generation: start.generation,
                epoch: start.restored.unwrap_or(0),
                replayed: start.replayed.map(|(from, to)| OffsetRange { from, to }),
                fresh: start.fresh,
            }),
            ..TailRow::default()
        },
        Record::Gap { from, to } => TailRow {
            offset: from,
            gap: Some(OffsetRange { from, to }),
            ..TailRow::default()
        },
        Record::Lost { offset, rows } => TailRow {
            offset,
            lost: rows,
            ..TailRow::default()
        },
    }
}

/// The records of an output log from `reader`, as a stream: up to `until` (the end of the
/// log when the call came, so that `tail -n N` is N rows however fast the pipeline writes),
/// or, without it, following until the log closes. Reads run off the runtime.
fn tail_rows(log: Arc<OutputLog>, reader: Reader, until: Option<u64>) -> TailStream {
    let stream = futures::stream::unfold(
        (log, Some(reader), VecDeque::new()),
        move |(log, mut reader, mut rows)| async move {
            loop {
                if let Some(row) = rows.pop_front() {
                    return Some((Ok(row), (log, reader, rows)));
                }
                let mut r = reader.take()?;
                let (r, read) = match tokio::task::spawn_blocking(move || {
                    let read = r.read(TAIL_CHUNK);
                    (r, read)
                })
                .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        let failed = Status::internal(format!("reading the output log: {e}"));
                        return Some((Err(failed), (log, None, rows)));
                    }
                };
                let records = match read {
                    Ok(records) => records,
                    Err(e) => {
                        let failed = Status::internal(crate::engine::error_chain(&e));
                        return Some((Err(failed), (log, None, rows)));
                    }
                };
                let read_any = !records.is_empty();
                rows.extend(
                    records
                        .into_iter()
                        .map(tail_row)
                        .filter(|row| until.is_none_or(|u| before_end(row, u))),
                );
                if rows.is_empty() {
                    let more = match until {
                        Some(u) => read_any && r.offset() < u,
                        None => read_any || log.wait_for(r.offset()).await,
                    };
                    if !more {
                        return None;
                    }
                }
                reader = Some(r);
            }
        },
    );
    Box::pin(stream)
}

/// Whether `row` was in the log when a bounded tail ended it at row offset `until`: rows
/// before it, and the marks (a generation's start, a gap, a loss) written at it, since a
/// mark carries the offset of the row that follows it and none may have followed yet.
fn before_end(row: &TailRow, until: u64) -> bool {
    let mark = row.restore.is_some() || row.gap.is_some() || row.lost > 0;
    row.offset < until || (mark && row.offset == until)
}

fn event_msg(e: EventRow) -> LogEvent {
    LogEvent {
        at: e.at,
        kind: e.kind,
        state: e.state,
        message: e.message,
        generation: e.generation,
    }
}

/// `events`, then with `follow` what `feed` brings until the pipeline is gone.
fn log_events(
    events: Vec<EventRow>,
    feed: broadcast::Receiver<EventRow>,
    follow: bool,
) -> LogStream {
    let recorded = futures::stream::iter(events.into_iter().map(|e| Ok(event_msg(e))));
    if !follow {
        return Box::pin(recorded);
    }
    let live = futures::stream::unfold(feed, |mut feed| async move {
        match feed.recv().await {
            Ok(e) => Some((Ok(event_msg(e)), feed)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let missed = LogEvent {
                    kind: "warning".into(),
                    message: format!(
                        "this follower missed {n} events (`arroyoctl logs` without --follow lists them)"
                    ),
                    ..LogEvent::default()
                };
                Some((Ok(missed), feed))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Box::pin(futures::StreamExt::chain(recorded, live))
}

fn checkpoint_msg(c: CheckpointRow, retained: bool) -> CheckpointMsg {
    CheckpointMsg {
        epoch: c.epoch,
        bytes: c.bytes,
        duration_ms: c.duration_ms,
        completed_at: c.completed_at,
        generation: c.generation,
        retained,
    }
}

#[tonic::async_trait]
impl Arroyod for Api {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let submitter = caller_uid(&request);
        let r = request.into_inner();
        let shown = redact_query(&r.query);
        let submission = Submission {
            query: r.query,
            name: Some(r.name).filter(|n| !n.is_empty()),
            parallelism: Some(r.parallelism).filter(|p| *p > 0),
            checkpoint_interval: (r.checkpoint_interval_ms > 0)
                .then(|| Duration::from_millis(r.checkpoint_interval_ms)),
            memory_limit: Some(r.memory_limit_bytes).filter(|m| *m > 0),
            submitter,
        };
        let p = self
            .controller
            .submit(submission)
            .await
            .map_err(|e| match e {
                ControllerError::InvalidQuery(errors) => query_errors(&errors, &shown),
                e => status(e),
            })?;
        Ok(Response::new(SubmitResponse {
            pipeline: Some(pipeline_msg(&p)),
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let submitter = caller_uid(&request);
        let query = request.into_inner().query;
        let shown = redact_query(&query);
        let response = match self.controller.plan_for(query, submitter).await {
            Ok(planned) => ValidateResponse {
                errors: vec![],
                sinks: planned.sinks.into_iter().map(|s| s.table).collect(),
                warnings: planned
                    .warnings
                    .iter()
                    .map(|w| sql_error_msg(w, &shown))
                    .collect(),
            },
            Err(errors) => ValidateResponse {
                errors: errors.iter().map(|e| sql_error_msg(e, &shown)).collect(),
                sinks: vec![],
                warnings: vec![],
            },
        };
        Ok(Response::new(response))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let pipelines = self.controller.list().iter().map(pipeline_msg).collect();
        Ok(Response::new(ListResponse { pipelines }))
    }

    async fn status(&self, request: Request<PipelineRef>) -> Result<Response<PipelineMsg>, Status> {
        let p = self
            .controller
            .find(&request.into_inner().id_or_name)
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }

    async fn resume(&self, request: Request<PipelineRef>) -> Result<Response<PipelineMsg>, Status> {
        let p = self
            .controller
            .resume(&request.into_inner().id_or_name, Changes::default())
            .await
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }

    async fn checkpoints(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<CheckpointsResponse>, Status> {
        let (_, rows, retained) = self
            .controller
            .checkpoints(&request.into_inner().id_or_name)
            .await
            .map_err(status)?;
        let checkpoints = rows
            .into_iter()
            .map(|c| {
                let kept = retained.contains(&c.epoch);
                checkpoint_msg(c, kept)
            })
            .collect();
        Ok(Response::new(CheckpointsResponse { checkpoints }))
    }

    type TailStream = TailStream;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let r = request.into_inner();
        let p = self.controller.find(&r.id_or_name).map_err(status)?;
        let log = p.output();
        // The end as the call came: the last rows are counted back from it, and without
        // --follow nothing past it is sent.
        let end = log.next_offset();
        let reader = if r.last > 0 {
            log.reader_of_last(r.last, end)
        } else {
            log.reader(r.from)
        };
        let until = (!r.follow).then_some(end);
        Ok(Response::new(tail_rows(log, reader, until)))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<PipelineMsg>, Status> {
        let r = request.into_inner();
        let p = self
            .controller
            .stop(&r.id_or_name, stop_mode(r.mode), r.wait)
            .await
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = request.into_inner();
        let keep = Keep {
            checkpoints: r.keep_checkpoints,
            output: r.keep_output,
        };
        let deleted = self
            .controller
            .delete(&r.id_or_name, keep)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteResponse {
            pipeline: Some(view_msg(deleted.view, 0)),
            removed: deleted.removed,
            kept: deleted.kept,
        }))
    }

    async fn restart(
        &self,
        request: Request<RestartRequest>,
    ) -> Result<Response<RestartResponse>, Status> {
        let r = request.into_inner();
        let (p, notes) = if r.no_state {
            let fresh = self
                .controller
                .restart_without_state(&r.id_or_name, r.force)
                .await
                .map_err(status)?;
            (fresh.pipeline, fresh.notes)
        } else {
            let p = self
                .controller
                .restart(&r.id_or_name, Changes::default())
                .await
                .map_err(status)?;
            let note = "it stops with a checkpoint (when it runs) and resumes from its newest checkpoint: exactly-once sinks continue where it left off";
            (p, vec![note.to_string()])
        };
        Ok(Response::new(RestartResponse {
            pipeline: Some(pipeline_msg(&p)),
            notes,
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<PipelineMsg>, Status> {
        let r = request.into_inner();
        let changes = Changes {
            parallelism: Some(r.parallelism).filter(|p| *p > 0),
            checkpoint_interval: Some(r.checkpoint_interval_ms)
                .filter(|i| *i > 0)
                .map(Duration::from_millis),
            memory_limit: Some(r.memory_limit_bytes).filter(|m| *m > 0),
            ..Changes::default()
        };
        if changes.is_empty() {
            return Err(Status::invalid_argument(
                "nothing to update: give a parallelism, a checkpoint interval or a memory limit",
            ));
        }
        let p = self
            .controller
            .restart(&r.id_or_name, changes)
            .await
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }

    async fn checkpoint(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<CheckpointMsg>, Status> {
        let c = self
            .controller
            .checkpoint_now(&request.into_inner().id_or_name)
            .await
            .map_err(status)?;
        Ok(Response::new(checkpoint_msg(c, true)))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let last = Some(r.last).filter(|n| *n > 0);
        let (events, feed) = self
            .controller
            .events(&r.id_or_name, last)
            .await
            .map_err(status)?;
        Ok(Response::new(log_events(events, feed, r.follow)))
    }

    async fn metrics(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<PipelineMetrics>, Status> {
        let p = self
            .controller
            .find(&request.into_inner().id_or_name)
            .map_err(status)?;
        let live = self.controller.metrics().live(&p.id());
        let operators = live
            .operators
            .into_iter()
            .map(|o| OperatorMetrics {
                operator: o.operator,
                parallelism: o.parallelism,
                rows_in: o.rows_in,
                rows_out: o.rows_out,
                bytes_in: o.bytes_in,
                bytes_out: o.bytes_out,
                rows_in_per_second: o.rows_in_per_second,
                rows_out_per_second: o.rows_out_per_second,
                backpressure: o.backpressure,
                watermark_ms: o.watermark_ms.unwrap_or(0),
                watermark_lag_ms: o.watermark_lag_ms.unwrap_or(0),
                late_rows_dropped: o.late_rows,
                bad_rows_dropped: o.bad_rows,
                checkpoint_bytes: o.checkpoint_bytes,
                checkpoint_duration_ms: o.checkpoint_ms,
                subtasks_ended: o.subtasks_ended,
                blocked_ns: 0,
            })
            .collect();
        Ok(Response::new(PipelineMetrics {
            pipeline: Some(pipeline_msg(&p)),
            operators,
            window_seconds: live.window_seconds,
        }))
    }

    /// A pipeline's graph is its stored query planned again at its parallelism; a query's at
    /// the parallelism asked (1 by default). Planning is pure: nothing runs.
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let caller = caller_uid(&request);
        Ok(Response::new(self.about.response(&self.controller, caller)))
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let r = request.into_inner();
        let (query, parallelism) = if r.id_or_name.is_empty() {
            (r.query, r.parallelism.max(1))
        } else {
            let view = self.controller.find(&r.id_or_name).map_err(status)?.view();
            (view.spec.query, view.spec.parallelism.max(1))
        };
        let shown = redact_query(&query);
        let response = match plan(query).await {
            Ok(planned) => graph_msg(&planned.shape(parallelism as usize)),
            Err(errors) => ExplainResponse {
                errors: errors.iter().map(|e| sql_error_msg(e, &shown)).collect(),
                ..ExplainResponse::default()
            },
        };
        Ok(Response::new(response))
    }
}
