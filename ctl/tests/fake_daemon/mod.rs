//! A fake arroyod for the CLI tests: the real `Arroyod` gRPC service over a Unix socket in a
//! temporary directory, with canned answers instead of an engine.
//!
//! What it answers:
//! - `submit` and `validate` reject any query mentioning `nope` (two errors, with positions;
//!   `submit` as `InvalidArgument` with the errors as `QueryErrors` in its details);
//! - `submit` records its request and stores the pipeline as given, in state `Running`, with ids
//!   `p-1`, `p-2`, ..., a checkpoint interval of 10s unless the request sets one, and a state URL
//!   `file:///var/lib/arroyod/state/<id>`;
//! - `status unavailable` fails with `Unavailable`, any other unknown pipeline with `NotFound`
//!   (so do `tail`, `stop`, `resume` and `checkpoints`);
//! - `tail` has three rows `{"n":0}`, `{"n":1}`, `{"n":2}`; with `follow` it sends the first two,
//!   then waits for [`FakeDaemon::release_tail`] before the last;
//! - `stop` records its request and leaves the pipeline `Stopped` (`Stopping` without `wait`);
//! - `resume` makes a `Stopped`, `Failed` or `Finished` pipeline `Running` again with the next
//!   generation, and refuses any other with `FailedPrecondition`;
//! - `checkpoints` has two rows, epochs 2 (retained) then 1 (garbage-collected), except for a
//!   pipeline named `fresh`, which has none (its `last_checkpoint` is 0, the others' 2).
//!
//! - `delete` removes a pipeline and names two removed locations; `restart` answers with one
//!   note; `update` sets the parallelism; `checkpoint` answers epoch 3;
//! - `logs` has two events; `metrics` two operators (`source:impulse`, `sink:preview`);
//! - `explain` of a query plans `source -> sink` with a shuffle on `k` (the errors of a query
//!   mentioning `nope`), of a pipeline the same.
//!
//! The socket is bound before [`FakeDaemon::start`] returns, so tests never wait for it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arroyod_proto::arroyod_server::{Arroyod, ArroyodServer};
use arroyod_proto::{
    Checkpoint, CheckpointsResponse, DeleteRequest, DeleteResponse, ExplainRequest,
    ExplainResponse, GraphEdge, GraphNode, InfoRequest, InfoResponse, ListRequest, ListResponse,
    LogEvent, LogsRequest, OperatorMetrics, Pipeline, PipelineMetrics, PipelineRef, QueryErrors,
    RestartRequest, RestartResponse, SqlError, StopRequest, SubmitRequest, SubmitResponse,
    TailRequest, TailRow, UpdateRequest, ValidateRequest, ValidateResponse,
};
use prost::Message as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// A running fake daemon; stops when dropped.
pub struct FakeDaemon {
    socket: PathBuf,
    service: Arc<Service>,
    shutdown: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeDaemon {
    /// Serves at `dir/arroyod.sock`.
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("arroyod.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let service = Arc::new(Service::default());
        let listener = {
            let _context = runtime.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind the socket")
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(ArroyodServer::from_arc(service.clone()))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        runtime.spawn(async move { server.await.expect("fake daemon serves") });
        Self {
            socket,
            service,
            shutdown: Some(shutdown),
            runtime: Some(runtime),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Lets a `tail --follow` send its last row and end.
    pub fn release_tail(&self) {
        self.service.tail_gate.notify_one();
    }

    /// The last submit request, if any.
    pub fn last_submit(&self) -> Option<SubmitRequest> {
        self.service.last_submit.lock().expect("lock").clone()
    }

    /// The last stop request, if any.
    pub fn last_stop(&self) -> Option<StopRequest> {
        self.service.last_stop.lock().expect("lock").clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Default)]
struct Service {
    pipelines: Mutex<Vec<Pipeline>>,
    last_submit: Mutex<Option<SubmitRequest>>,
    last_stop: Mutex<Option<StopRequest>>,
    tail_gate: Arc<Notify>,
}

impl Service {
    fn errors(query: &str) -> Vec<SqlError> {
        if query.contains("nope") {
            vec![
                SqlError {
                    message: "table nope not found".to_owned(),
                    line: 1,
                    column: 15,
                    hints: vec![],
                    source_line: query.lines().next().unwrap_or_default().to_owned(),
                },
                SqlError {
                    message: "no sink for the query".to_owned(),
                    line: 0,
                    column: 0,
                    hints: vec![],
                    source_line: String::new(),
                },
            ]
        } else {
            Vec::new()
        }
    }

    fn find(&self, id_or_name: &str) -> Result<Pipeline, Status> {
        if id_or_name == "unavailable" {
            return Err(Status::unavailable("arroyod is shutting down"));
        }
        self.pipelines
            .lock()
            .expect("lock")
            .iter()
            .find(|p| p.id == id_or_name || p.name == id_or_name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no pipeline {id_or_name}")))
    }

    /// Applies `change` to the stored pipeline and returns it as changed, or `change`'s error.
    fn update(
        &self,
        id_or_name: &str,
        change: impl FnOnce(&mut Pipeline) -> Result<(), Status>,
    ) -> Result<Pipeline, Status> {
        let id = self.find(id_or_name)?.id;
        let mut pipelines = self.pipelines.lock().expect("lock");
        let pipeline = pipelines
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| Status::not_found(format!("no pipeline {id_or_name}")))?;
        change(pipeline)?;
        Ok(pipeline.clone())
    }

    /// The canned checkpoints of `pipeline`, newest first.
    fn checkpoints_of(pipeline: &Pipeline) -> Vec<Checkpoint> {
        if pipeline.name == "fresh" {
            return Vec::new();
        }
        vec![
            Checkpoint {
                epoch: 2,
                bytes: 2_048,
                duration_ms: 1_500,
                completed_at: "2026-01-02T03:04:25Z".to_owned(),
                generation: 1,
                retained: true,
            },
            Checkpoint {
                epoch: 1,
                bytes: 512,
                duration_ms: 85,
                completed_at: "2026-01-02T03:04:15Z".to_owned(),
                generation: 1,
                retained: false,
            },
        ]
    }
}

#[tonic::async_trait]
impl Arroyod for Service {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let request = request.into_inner();
        *self.last_submit.lock().expect("lock") = Some(request.clone());
        let errors = Self::errors(&request.query);
        if !errors.is_empty() {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect();
            let details = QueryErrors { errors }.encode_to_vec();
            return Err(Status::with_details(
                tonic::Code::InvalidArgument,
                lines.join("\n"),
                details.into(),
            ));
        }
        let mut pipelines = self.pipelines.lock().expect("lock");
        let id = format!("p-{}", pipelines.len() + 1);
        let mut pipeline = Pipeline {
            name: if request.name.is_empty() {
                format!("pipeline-{}", pipelines.len() + 1)
            } else {
                request.name
            },
            state: "Running".to_owned(),
            created_at: "2026-01-02T03:04:05Z".to_owned(),
            updated_at: "2026-01-02T03:04:05Z".to_owned(),
            failure: String::new(),
            parallelism: request.parallelism,
            query: request.query,
            generation: 1,
            rows: 3,
            desired: "Running".to_owned(),
            worker_pid: 4242,
            checkpoint_interval_ms: match request.checkpoint_interval_ms {
                0 => 10_000,
                ms => ms,
            },
            state_url: format!("file:///var/lib/arroyod/state/{id}"),
            id,
            memory_limit_bytes: request.memory_limit_bytes,
            ..Pipeline::default()
        };
        pipeline.last_checkpoint = Self::checkpoints_of(&pipeline)
            .first()
            .map_or(0, |c| c.epoch);
        pipelines.push(pipeline.clone());
        Ok(Response::new(SubmitResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let errors = Self::errors(&request.into_inner().query);
        let sinks = if errors.is_empty() {
            vec!["stdout".to_owned()]
        } else {
            Vec::new()
        };
        Ok(Response::new(ValidateResponse {
            errors,
            sinks,
            warnings: vec![],
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            version: "0.0.0-fake".into(),
            pid: std::process::id(),
            uptime_ms: 3_723_000,
            ..InfoResponse::default()
        }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let pipelines = self.pipelines.lock().expect("lock").clone();
        Ok(Response::new(ListResponse { pipelines }))
    }

    async fn status(&self, request: Request<PipelineRef>) -> Result<Response<Pipeline>, Status> {
        self.find(&request.into_inner().id_or_name)
            .map(Response::new)
    }

    type TailStream = ReceiverStream<Result<TailRow, Status>>;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let request = request.into_inner();
        self.find(&request.id_or_name)?;
        let (tx, rx) = mpsc::channel(4);
        let follow = request.follow;
        let gate = self.tail_gate.clone();
        let rows: Vec<TailRow> = (0..3u64)
            .filter(|&n| n >= request.from)
            .map(|n| TailRow {
                offset: n,
                json: format!("{{\"n\":{n}}}"),
                sink: "preview".to_owned(),
                generation: 1,
                ..TailRow::default()
            })
            .collect();
        tokio::spawn(async move {
            for row in rows {
                if follow && row.offset == 2 {
                    gate.notified().await;
                }
                if tx.send(Ok(row)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<Pipeline>, Status> {
        let request = request.into_inner();
        let pipeline = self.update(&request.id_or_name, |p| {
            p.state = if request.wait { "Stopped" } else { "Stopping" }.to_owned();
            p.desired = "Stopped".to_owned();
            if request.wait {
                p.worker_pid = 0;
            }
            Ok(())
        })?;
        *self.last_stop.lock().expect("lock") = Some(request);
        Ok(Response::new(pipeline))
    }

    async fn resume(&self, request: Request<PipelineRef>) -> Result<Response<Pipeline>, Status> {
        self.update(&request.into_inner().id_or_name, |p| {
            if !matches!(p.state.as_str(), "Stopped" | "Failed" | "Finished") {
                // The real daemon's message.
                return Err(Status::failed_precondition(format!(
                    "pipeline '{}' is {}: only a stopped, failed or finished pipeline can be \
                     resumed",
                    p.name, p.state
                )));
            }
            p.state = "Running".to_owned();
            p.desired = "Running".to_owned();
            p.failure.clear();
            p.generation += 1;
            p.worker_pid = 4243;
            Ok(())
        })
        .map(Response::new)
    }

    async fn checkpoints(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<CheckpointsResponse>, Status> {
        let pipeline = self.find(&request.into_inner().id_or_name)?;
        Ok(Response::new(CheckpointsResponse {
            checkpoints: Self::checkpoints_of(&pipeline),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let pipeline = self.find(&request.id_or_name)?;
        self.pipelines
            .lock()
            .expect("lock")
            .retain(|p| p.id != pipeline.id);
        let state = format!("/var/lib/arroyod/state/{}", pipeline.id);
        let output = format!("/var/lib/arroyod/output/{}", pipeline.id);
        let (removed, kept) = if request.keep_checkpoints {
            (vec![output], vec![state])
        } else {
            (vec![state, output], vec![])
        };
        Ok(Response::new(DeleteResponse {
            pipeline: Some(pipeline),
            removed,
            kept,
        }))
    }

    async fn restart(
        &self,
        request: Request<RestartRequest>,
    ) -> Result<Response<RestartResponse>, Status> {
        let request = request.into_inner();
        let pipeline = self.update(&request.id_or_name, |p| {
            p.state = "Scheduling".to_owned();
            p.generation += 1;
            Ok(())
        })?;
        Ok(Response::new(RestartResponse {
            pipeline: Some(pipeline),
            notes: vec!["it resumes from its newest checkpoint".to_owned()],
        }))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<Pipeline>, Status> {
        let request = request.into_inner();
        self.update(&request.id_or_name, |p| {
            if request.parallelism > 0 {
                p.parallelism = request.parallelism;
            }
            p.state = "Scheduling".to_owned();
            Ok(())
        })
        .map(Response::new)
    }

    async fn checkpoint(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<Checkpoint>, Status> {
        self.find(&request.into_inner().id_or_name)?;
        Ok(Response::new(Checkpoint {
            epoch: 3,
            bytes: 4_096,
            duration_ms: 20,
            completed_at: "2026-01-02T03:04:35Z".to_owned(),
            generation: 1,
            retained: true,
        }))
    }

    type LogsStream = ReceiverStream<Result<LogEvent, Status>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.find(&request.into_inner().id_or_name)?;
        let (tx, rx) = mpsc::channel(4);
        let events = [
            (
                "state",
                "Scheduling",
                "scheduling the first worker (generation 1)",
            ),
            (
                "checkpoint",
                "Running",
                "checkpoint 1 completed: 512 bytes in 85 ms",
            ),
        ];
        for (kind, state, message) in events {
            let event = LogEvent {
                at: "2026-01-02T03:04:05.000Z".to_owned(),
                kind: kind.to_owned(),
                state: state.to_owned(),
                message: message.to_owned(),
                generation: 1,
            };
            tx.send(Ok(event)).await.expect("room for two");
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn metrics(
        &self,
        request: Request<PipelineRef>,
    ) -> Result<Response<PipelineMetrics>, Status> {
        let pipeline = self.find(&request.into_inner().id_or_name)?;
        let operator = |name: &str, rows: u64| OperatorMetrics {
            operator: name.to_owned(),
            parallelism: 1,
            rows_in: rows,
            rows_out: rows,
            bytes_out: rows * 8,
            rows_in_per_second: 100.0,
            rows_out_per_second: 100.0,
            backpressure: 0.25,
            ..OperatorMetrics::default()
        };
        Ok(Response::new(PipelineMetrics {
            pipeline: Some(pipeline),
            operators: vec![
                operator("source:impulse", 1_000),
                operator("sink:preview", 1_000),
            ],
            window_seconds: 1.0,
        }))
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let request = request.into_inner();
        if request.query.is_empty() {
            self.find(&request.id_or_name)?;
        }
        let errors = Self::errors(&request.query);
        if !errors.is_empty() {
            return Ok(Response::new(ExplainResponse {
                errors,
                ..ExplainResponse::default()
            }));
        }
        let node = |index: u32, kind: &str, label: &str| GraphNode {
            index,
            id: format!("{kind}-{index}"),
            label: label.to_owned(),
            kind: kind.to_owned(),
            parallelism: request.parallelism.max(1),
        };
        Ok(Response::new(ExplainResponse {
            nodes: vec![
                node(0, "source", "source:impulse"),
                node(1, "sink", "sink:preview"),
            ],
            edges: vec![GraphEdge {
                from: 0,
                to: 1,
                kind: "shuffle".to_owned(),
                keys: vec!["k".to_owned()],
            }],
            errors: vec![],
        }))
    }
}
