//! `arroyod worker`: the process that runs one generation of one pipeline.
//!
//! 1. It asks the kernel to kill it when its parent (the daemon) dies, and also exits when the
//!    daemon's command stream ends: a worker never outlives its daemon.
//! 2. It attaches to the daemon's worker socket, says Hello with its pipeline and generation,
//!    and receives Start (the query and parallelism).
//! 3. It plans the query, restores the newest checkpoint under the pipeline's state URL (if
//!    any), runs the dataflow, reports Running, and streams the default sink's rows.
//! 4. Before writing a checkpoint's MANIFEST it asks the daemon (CommitRequest → Commit): only
//!    the current generation may commit; then it reports the completed checkpoint.
//! 5. It reports Finished, Stopped or Failed and exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{
    Checkpointing, CommitGate, CompletedCheckpoint, DataflowError, EngineStop, JobSpec, RunOutcome,
    error_chain, job,
};
use arroyod_proto::worker_control_client::WorkerControlClient;
use arroyod_proto::{StopMode, WorkerEvent, worker_command, worker_event};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, info, info_span, warn};

/// Errors that end a worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The daemon's worker socket did not answer.
    #[error("connecting to the daemon at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon refused the worker (a stale generation) or broke the stream.
    #[error("talking to the daemon")]
    Daemon(#[from] tonic::Status),
    /// The daemon sent something out of protocol.
    #[error("unexpected message from the daemon: {0}")]
    Protocol(String),
    /// The report stream to the daemon closed.
    #[error("the daemon stopped reading reports")]
    ReportsClosed,
    /// The dataflow could not start.
    #[error("starting the dataflow")]
    Dataflow(#[from] DataflowError),
}

/// How long the daemon has to answer a CommitRequest.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the daemon whether this generation may still commit.
struct DaemonGate {
    events: mpsc::Sender<WorkerEvent>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>>,
}

#[async_trait::async_trait]
impl CommitGate for DaemonGate {
    async fn may_commit(&self, epoch: u64) -> bool {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(epoch, tx);
        let request = event(worker_event::Event::CommitRequest(
            arroyod_proto::CommitRequest { epoch },
        ));
        if self.events.send(request).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(COMMIT_TIMEOUT, rx).await, Ok(Ok(true)))
    }
}

impl From<mpsc::error::SendError<WorkerEvent>> for WorkerError {
    fn from(_: mpsc::error::SendError<WorkerEvent>) -> Self {
        WorkerError::ReportsClosed
    }
}

/// Connects a gRPC channel over the Unix socket at `path`.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Makes the kernel send SIGKILL to this process when its parent dies.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // The parent may have died before the call: then we were re-parented already.
    if std::os::unix::process::parent_id() == 1 {
        std::process::exit(1);
    }
}

fn event(e: worker_event::Event) -> WorkerEvent {
    WorkerEvent { event: Some(e) }
}

pub async fn run(socket: PathBuf, pipeline_id: String, generation: u64) -> Result<(), WorkerError> {
    die_with_parent();
    crate::engine::failpoint::setup();
    let channel = unix_channel(&socket)
        .await
        .map_err(|source| WorkerError::Connect {
            socket: socket.clone(),
            source,
        })?;
    let mut client = WorkerControlClient::new(channel);
    let (events, events_rx) = mpsc::channel::<WorkerEvent>(16);
    events
        .send(event(worker_event::Event::Hello(arroyod_proto::Hello {
            pipeline_id: pipeline_id.clone(),
            generation,
            pid: std::process::id(),
        })))
        .await?;
    let mut commands = client
        .attach(ReceiverStream::new(events_rx))
        .await?
        .into_inner();
    let start = match commands.message().await? {
        Some(arroyod_proto::WorkerCommand {
            command: Some(worker_command::Command::Start(start)),
        }) => start,
        other => {
            return Err(WorkerError::Protocol(format!(
                "expected Start, got {other:?}"
            )));
        }
    };
    info!(pipeline = %pipeline_id, generation, parallelism = start.parallelism, "worker starting");

    // Failure messages never carry the values of secret options.
    let hidden = crate::secrets::secrets_of(&start.query);
    let failed = |message: String| {
        event(worker_event::Event::Failed(arroyod_proto::Failed {
            message: crate::secrets::redact(&message, &hidden),
        }))
    };
    let planned = match crate::engine::plan(start.query.clone()).await {
        Ok(planned) => planned,
        Err(errors) => {
            let message = errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            events.send(failed(message)).await?;
            return finish(events, commands).await;
        }
    };
    let (preview_tx, mut preview_rx) = mpsc::channel::<Vec<String>>(16);
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>> = Arc::default();
    let spec = JobSpec {
        parallelism: start.parallelism as usize,
        checkpointing: checkpointing(&start, &events, &pending),
        preview: Some(preview_tx),
        pipeline: pipeline_id.clone(),
    };
    let handle = match job::start(&planned, spec).await {
        Ok(handle) => handle,
        Err(e) => {
            events.send(failed(error_chain(&e))).await?;
            return finish(events, commands).await;
        }
    };
    if let Some(epoch) = handle.restored() {
        info!(pipeline = %pipeline_id, epoch, "restored from checkpoint");
    }
    let completed_at_end = handle.checkpoints();
    let reporter = {
        let events = events.clone();
        let mut completed = handle.checkpoints();
        let reporting = async move {
            while completed.changed().await.is_ok() {
                let Some(c) = *completed.borrow_and_update() else {
                    continue;
                };
                if events.send(completed_event(&c)).await.is_err() {
                    break;
                }
            }
        };
        tokio::spawn(reporting.instrument(info_span!("checkpoint_reporter")))
    };
    events
        .send(event(worker_event::Event::Running(
            arroyod_proto::Running {},
        )))
        .await?;
    let forward = {
        let events = events.clone();
        let forwarding = async move {
            while let Some(json) = preview_rx.recv().await {
                let rows = event(worker_event::Event::Rows(arroyod_proto::Rows { json }));
                if events.send(rows).await.is_err() {
                    break;
                }
            }
        };
        tokio::spawn(forwarding.instrument(info_span!("row_forwarder")))
    };
    let stop = handle.stopper();
    let mut wait = std::pin::pin!(handle.wait());
    let outcome = loop {
        tokio::select! {
            outcome = &mut wait => break outcome,
            command = commands.message() => match command {
                Ok(Some(arroyod_proto::WorkerCommand { command: Some(worker_command::Command::Stop(s)) })) => {
                    let mode = match StopMode::try_from(s.mode) {
                        Ok(StopMode::Immediate) => EngineStop::Immediate,
                        Ok(StopMode::Graceful) => EngineStop::Graceful,
                        _ => EngineStop::Checkpoint,
                    };
                    info!(pipeline = %pipeline_id, ?mode, "stop requested");
                    // A stop never weakens one under way (a checkpoint stop may escalate).
                    stop.request(mode);
                }
                Ok(Some(arroyod_proto::WorkerCommand { command: Some(worker_command::Command::Commit(c)) })) => {
                    if let Some(tx) = pending.lock().expect("pending lock").remove(&c.epoch) {
                        let _ = tx.send(c.allowed);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    warn!(pipeline = %pipeline_id, "the daemon went away; exiting");
                    std::process::exit(1);
                }
            }
        }
    };
    // Every row and completed checkpoint reaches the daemon before the final report.
    let _ = forward.await;
    reporter.abort();
    let _ = reporter.await;
    // The last checkpoint (the one a stop takes) may have completed after the reporter's last
    // look: report it again (the daemon records a checkpoint idempotently).
    let newest = *completed_at_end.borrow();
    if let Some(c) = newest {
        events.send(completed_event(&c)).await?;
    }
    let last = match outcome {
        Ok(RunOutcome::Finished) => worker_event::Event::Finished(arroyod_proto::Finished {}),
        Ok(RunOutcome::Stopped) => worker_event::Event::Stopped(arroyod_proto::Stopped {}),
        Err(e) => {
            events.send(failed(error_chain(&e))).await?;
            return finish(events, commands).await;
        }
    };
    events.send(event(last)).await?;
    finish(events, commands).await
}

fn completed_event(c: &CompletedCheckpoint) -> WorkerEvent {
    event(worker_event::Event::CheckpointCompleted(
        arroyod_proto::CheckpointCompleted {
            epoch: c.epoch,
            bytes: c.bytes,
            duration_ms: c.duration.as_millis() as u64,
        },
    ))
}

/// The checkpointing of this run: under the pipeline's state URL (the job restores its newest
/// checkpoint, and refuses to start over when the metadata says a newer one completed), with
/// the daemon as commit gate.
fn checkpointing(
    start: &arroyod_proto::Start,
    events: &mpsc::Sender<WorkerEvent>,
    pending: &Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>>,
) -> Option<Checkpointing> {
    if start.state_url.is_empty() {
        return None;
    }
    Some(Checkpointing {
        state: start.state_url.clone(),
        interval: Duration::from_millis(start.checkpoint_interval_ms.max(1)),
        gate: Some(Arc::new(DaemonGate {
            events: events.clone(),
            pending: pending.clone(),
        })),
        expected_epoch: start.expected_epoch,
    })
}

/// Closes the report stream and waits (briefly) for the daemon to close its side.
async fn finish(
    events: mpsc::Sender<WorkerEvent>,
    mut commands: tonic::Streaming<arroyod_proto::WorkerCommand>,
) -> Result<(), WorkerError> {
    drop(events);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = commands.message().await {}
    })
    .await;
    Ok(())
}
