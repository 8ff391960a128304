//! The gRPC services: the public `Arroyod` API on the daemon's socket and the internal
//! `WorkerControl` service on its worker socket. Both are thin: they translate between protobuf
//! and the [`Controller`], and map its errors to gRPC codes (a bad query is InvalidArgument,
//! an unknown pipeline NotFound, a store failure Internal).

use std::pin::Pin;
use std::sync::Arc;

use arroyod_proto::arroyod_server::Arroyod;
use arroyod_proto::worker_control_server::WorkerControl;
use arroyod_proto::{
    Checkpoint as CheckpointMsg, CheckpointsResponse, ListRequest, ListResponse,
    Pipeline as PipelineMsg, PipelineRef, SqlError as SqlErrorMsg, StopMode, StopRequest,
    SubmitRequest, SubmitResponse, TailRequest, TailRow, ValidateRequest, ValidateResponse,
    WorkerCommand, WorkerEvent, worker_event,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::controller::{Controller, ControllerError, Pipeline, plan};

/// Rows sent per read of the tail buffer.
const TAIL_CHUNK: usize = 1024;

fn status(e: ControllerError) -> Status {
    match e {
        ControllerError::InvalidQuery(errors) => Status::invalid_argument(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        ControllerError::NotFound(_) => Status::not_found(e.to_string()),
        ControllerError::ShuttingDown => Status::unavailable(e.to_string()),
        ControllerError::NotStopped(..) => Status::failed_precondition(e.to_string()),
        ControllerError::Store(crate::store::StoreError::NameTaken(_)) => {
            Status::already_exists(e.to_string())
        }
        other => Status::internal(error_chain(&other)),
    }
}

pub use arroyod_engine::error_chain;

pub fn pipeline_msg(p: &Pipeline) -> PipelineMsg {
    let r = p.row();
    PipelineMsg {
        id: r.id,
        name: r.name,
        state: r.state,
        created_at: r.created_at,
        updated_at: r.updated_at,
        failure: r.failure,
        parallelism: r.parallelism,
        query: r.query,
        generation: r.generation,
        rows: p.tail.next_offset(),
        desired: r.desired,
        worker_pid: p.worker_pid(),
        checkpoint_interval_ms: r.checkpoint_interval_ms,
        state_url: r.state_url,
        last_checkpoint: p.last_checkpoint(),
    }
}

pub struct Api {
    pub controller: Arc<Controller>,
}

type TailStream = Pin<Box<dyn Stream<Item = Result<TailRow, Status>> + Send>>;

#[tonic::async_trait]
impl Arroyod for Api {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let r = request.into_inner();
        let interval = (r.checkpoint_interval_ms > 0)
            .then(|| std::time::Duration::from_millis(r.checkpoint_interval_ms));
        let p = self
            .controller
            .submit(r.query, r.name, r.parallelism, interval)
            .await
            .map_err(status)?;
        Ok(Response::new(SubmitResponse {
            pipeline: Some(pipeline_msg(&p)),
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let response = match plan(request.into_inner().query).await {
            Ok(planned) => ValidateResponse {
                errors: vec![],
                sinks: planned.sinks,
            },
            Err(errors) => ValidateResponse {
                errors: errors
                    .into_iter()
                    .map(|e| SqlErrorMsg {
                        message: e.message,
                        line: e.line,
                        column: e.column,
                    })
                    .collect(),
                sinks: vec![],
            },
        };
        Ok(Response::new(response))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let pipelines = self
            .controller
            .list()
            .iter()
            .map(|p| pipeline_msg(p))
            .collect();
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
            .resume(&request.into_inner().id_or_name, None)
            .await
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }

    async fn checkpoints(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<CheckpointsResponse>, Status> {
        let (p, rows) = self
            .controller
            .checkpoints(&request.into_inner().id_or_name)
            .await
            .map_err(status)?;
        // Which epochs still have their files (garbage collection keeps the newest few).
        let state_url = p.row().state_url;
        let retained: Vec<u64> = arroyod_engine::job::checkpoints(&state_url)
            .await
            .unwrap_or_default();
        let checkpoints = rows
            .into_iter()
            .map(|c| CheckpointMsg {
                epoch: c.epoch,
                bytes: c.bytes,
                duration_ms: c.duration_ms,
                completed_at: c.completed_at,
                generation: c.generation,
                retained: retained.contains(&c.epoch),
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
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = r.from;
            loop {
                let (first, rows) = p.tail.read(offset, TAIL_CHUNK);
                if rows.is_empty() {
                    if !r.follow || !p.tail.wait_for(first).await {
                        return;
                    }
                    offset = first;
                    continue;
                }
                offset = first + rows.len() as u64;
                for (i, json) in rows.into_iter().enumerate() {
                    let row = TailRow {
                        offset: first + i as u64,
                        json,
                    };
                    if tx.send(Ok(row)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<PipelineMsg>, Status> {
        let r = request.into_inner();
        let mode = match StopMode::try_from(r.mode) {
            Ok(StopMode::Unspecified) | Err(_) => StopMode::Checkpoint,
            Ok(mode) => mode,
        };
        let p = self
            .controller
            .stop(&r.id_or_name, mode, r.wait)
            .await
            .map_err(status)?;
        Ok(Response::new(pipeline_msg(&p)))
    }
}

pub struct WorkerApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl WorkerControl for WorkerApi {
    type AttachStream = ReceiverStream<Result<WorkerCommand, Status>>;

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
        let generation = hello.generation;
        let (pipeline, commands) = self.controller.attach(&hello.pipeline_id, generation)?;
        let controller = self.controller.clone();
        tokio::spawn(async move {
            loop {
                match events.message().await {
                    Ok(Some(WorkerEvent { event: Some(event) })) => {
                        if let Err(e) = controller.report(&pipeline, generation, event).await {
                            warn!(pipeline = %hello.pipeline_id, error = %error_chain(&e), "recording a worker report failed");
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        warn!(pipeline = %hello.pipeline_id, generation, error = %e, "worker connection broke");
                        break;
                    }
                }
            }
            controller.reports_ended(&pipeline, generation);
        });
        Ok(Response::new(ReceiverStream::new(commands)))
    }
}
