//! The public `Arroyod` service: one method per RPC, each a translation to a controller call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arroyod_proto::arroyod_server::Arroyod;
use arroyod_proto::{
    Checkpoint as CheckpointMsg, CheckpointsResponse, ListRequest, ListResponse,
    Pipeline as PipelineMsg, PipelineRef, StopMode as StopModeMsg, StopRequest, SubmitRequest,
    SubmitResponse, TailRequest, TailRow, ValidateRequest, ValidateResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{pipeline_msg, sql_error_msg, status};
use crate::controller::machine::{Changes, StopMode};
use crate::controller::{Controller, Submission};
use crate::engine::plan;
use crate::tail::TailBuffer;

/// Rows read from the tail buffer at a time.
const TAIL_CHUNK: usize = 1024;

pub struct Api {
    pub controller: Arc<Controller>,
}

type TailStream = Pin<Box<dyn Stream<Item = Result<TailRow, Status>> + Send>>;

/// A stop mode from the wire; unspecified is a stop with a checkpoint.
fn stop_mode(mode: i32) -> StopMode {
    match StopModeMsg::try_from(mode) {
        Ok(StopModeMsg::Graceful) => StopMode::Graceful,
        Ok(StopModeMsg::Immediate) => StopMode::Immediate,
        Ok(StopModeMsg::Checkpoint | StopModeMsg::Unspecified) | Err(_) => StopMode::Checkpoint,
    }
}

/// The rows of `tail` from `from`, as a stream; with `follow`, until the buffer closes.
fn tail_rows(tail: Arc<TailBuffer>, from: u64, follow: bool) -> TailStream {
    let stream = futures::stream::unfold(
        (tail, from, VecDeque::new()),
        move |(tail, mut offset, mut rows)| async move {
            loop {
                if let Some(row) = rows.pop_front() {
                    return Some((Ok(row), (tail, offset, rows)));
                }
                let (first, read) = tail.read(offset, TAIL_CHUNK);
                if read.is_empty() {
                    if !follow || !tail.wait_for(first).await {
                        return None;
                    }
                    offset = first;
                    continue;
                }
                offset = first + read.len() as u64;
                rows.extend(
                    read.into_iter()
                        .zip(first..)
                        .map(|(json, offset)| TailRow { offset, json }),
                );
            }
        },
    );
    Box::pin(stream)
}

#[tonic::async_trait]
impl Arroyod for Api {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let r = request.into_inner();
        let submission = Submission {
            query: r.query,
            name: Some(r.name).filter(|n| !n.is_empty()),
            parallelism: Some(r.parallelism).filter(|p| *p > 0),
            checkpoint_interval: (r.checkpoint_interval_ms > 0)
                .then(|| Duration::from_millis(r.checkpoint_interval_ms)),
        };
        let p = self.controller.submit(submission).await.map_err(status)?;
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
                errors: errors.iter().map(sql_error_msg).collect(),
                sinks: vec![],
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
        Ok(Response::new(tail_rows(p.tail(), r.from, r.follow)))
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
}
