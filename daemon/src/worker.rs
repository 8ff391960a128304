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
//!
//! With a memory limit, the operators' state is held to a share of it by DataFusion's memory
//! pool in the engine (a subtask whose state would outgrow it fails the run, naming the
//! limit), and a watch task samples the process's resident memory every
//! [`MEMORY_SAMPLE`]: over the limit, the worker reports Failed (saying so) and exits, before
//! the kernel's OOM killer picks a process (possibly the daemon). An address-space limit
//! (`RLIMIT_AS`) well above the limit stops a runaway allocation between two samples.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{
    Checkpointing, CommitGate, CompletedCheckpoint, Confinement, DataflowError, EngineStop,
    JobSpec, NodeFigures, NodeMetrics, RunOutcome, error_chain, job,
};
use arroyod_proto::worker_control_client::WorkerControlClient;
use arroyod_proto::{StopMode, WorkerEvent, worker_command, worker_event};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
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

/// How often the resident memory is compared with the memory limit.
const MEMORY_SAMPLE: Duration = Duration::from_millis(100);

/// The process's resident memory in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Caps the address space at a multiple of `limit`: a backstop for an allocation that
/// outruns the resident-memory watch (virtual reservations of threads and allocator arenas
/// need the headroom).
fn limit_address_space(limit: u64) {
    let cap = limit.saturating_mul(4).saturating_add(4 << 30);
    let rlimit = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limits.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "setting the address-space limit failed");
    }
}

/// Watches the resident memory; over `limit`, reports Failed and exits.
async fn watch_memory(limit: u64, events: mpsc::Sender<WorkerEvent>) {
    let mut ticks = tokio::time::interval(MEMORY_SAMPLE);
    loop {
        ticks.tick().await;
        let Some(rss) = resident_bytes() else {
            continue;
        };
        if rss > limit {
            let message = format!(
                "the worker went over its memory limit of {} (resident {}): raise it with `arroyoctl update --memory-limit`, or lower the state (a shorter TTL, fewer keys, smaller windows)",
                bytesize::ByteSize(limit),
                bytesize::ByteSize(rss)
            );
            warn!(limit, rss, "memory limit exceeded; failing the pipeline");
            let failed = event(worker_event::Event::Failed(arroyod_proto::Failed {
                message,
            }));
            let _ = tokio::time::timeout(Duration::from_secs(2), events.send(failed)).await;
            // Let the report go out before the process ends.
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::process::exit(1);
        }
    }
}

/// Asks the daemon whether this generation may still commit. The daemon answers in order,
/// after the rows sent before the request, so the answer waits as long as a slow reader of
/// the rows makes it (no timeout: a daemon that goes away ends the command stream, and the
/// worker with it).
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
        matches!(rx.await, Ok(true))
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

/// The engine's confinement from its wire form.
fn confinement(c: arroyod_proto::Confinement) -> Confinement {
    let paths = |v: Vec<String>| v.into_iter().map(std::path::PathBuf::from).collect();
    Confinement {
        foreign: c.foreign,
        allowed: paths(c.allowed_paths),
        denied: paths(c.denied_paths),
    }
}

fn event(e: worker_event::Event) -> WorkerEvent {
    WorkerEvent { event: Some(e) }
}

/// What the kernel does to confine this worker (the `sandbox` module), decided in `main`
/// before the runtime exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// It confines the worker, or there is nothing to confine (the daemon's user's pipeline).
    Confines,
    /// It does not (fully), and why: the pipeline runs with its paths checked at open time
    /// only, and the Hello says so.
    DoesNot(String),
    /// Setting up the restriction failed, and why: the worker reports the pipeline Failed
    /// rather than run it unrestricted.
    Failed(String),
}

/// Runs generation `generation` of `pipeline_id` attached to the daemon at `socket`, as far
/// as `kernel` lets it.
pub async fn run(
    socket: PathBuf,
    pipeline_id: String,
    generation: u64,
    kernel: Kernel,
) -> Result<(), WorkerError> {
    die_with_parent();
    let channel = unix_channel(&socket)
        .await
        .map_err(|source| WorkerError::Connect {
            socket: socket.clone(),
            source,
        })?;
    let mut client = WorkerControlClient::new(channel)
        .max_decoding_message_size(arroyod_proto::MAX_MESSAGE_BYTES);
    let (events, events_rx) = mpsc::channel::<WorkerEvent>(16);
    events
        .send(event(worker_event::Event::Hello(arroyod_proto::Hello {
            pipeline_id: pipeline_id.clone(),
            generation,
            pid: std::process::id(),
            unconfined: match &kernel {
                Kernel::DoesNot(warning) => warning.clone(),
                _ => String::new(),
            },
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
    let _memory = (start.memory_limit_bytes > 0).then(|| {
        limit_address_space(start.memory_limit_bytes);
        let watch = watch_memory(start.memory_limit_bytes, events.clone());
        AbortOnDrop(tokio::spawn(watch.instrument(info_span!("memory_watch"))))
    });

    // Failure messages never carry the values of secret options.
    let hidden = Arc::new(crate::secrets::secrets_of(&start.query));
    crate::logging::hide(hidden.to_vec());
    let failed = move |message: String| {
        event(worker_event::Event::Failed(arroyod_proto::Failed {
            message: crate::secrets::redact(&message, &hidden),
        }))
    };
    if let Kernel::Failed(why) = &kernel {
        let message = format!(
            "the worker could not restrict itself to allowed_paths with Landlock, so it does not run this pipeline: {why}"
        );
        events.send(failed(message)).await?;
        return finish(events, commands).await;
    }
    // What this pipeline's tables may reach, set before anything is planned or opened: every
    // connector checks its paths against it when it opens them.
    let confinement = confinement(start.confinement.clone().unwrap_or_default());
    let foreign = confinement.foreign;
    crate::engine::confine(confinement.clone());
    let planned = match crate::engine::plan_with_env(start.query.clone(), !foreign).await {
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
    let refused = crate::access::refusals(&confinement, &planned.host_access, &start.query);
    if !refused.is_empty() {
        let reasons: Vec<String> = refused.iter().map(|e| e.to_string()).collect();
        events.send(failed(reasons.join("; "))).await?;
        return finish(events, commands).await;
    }
    let (preview_tx, mut preview_rx) = mpsc::channel::<Vec<String>>(16);
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>> = Arc::default();
    let spec = JobSpec {
        parallelism: start.parallelism as usize,
        checkpointing: checkpointing(&start, &events, &pending),
        preview: Some(preview_tx),
        pipeline: pipeline_id.clone(),
        memory_limit: Some(start.memory_limit_bytes).filter(|m| *m > 0),
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
            arroyod_proto::Running {
                restored_epoch: handle.restored().unwrap_or(0),
            },
        )))
        .await?;
    let forward = {
        let events = events.clone();
        let failed = failed.clone();
        let forwarding = async move {
            while let Some(rows) = preview_rx.recv().await {
                let messages = match rows_messages(rows) {
                    Ok(messages) => messages,
                    Err(too_large) => {
                        // Dropping the receiver ends the job too (its sink's reader is gone);
                        // the daemon keeps this first, clearer failure.
                        let _ = events.send(failed(too_large.to_string())).await;
                        break;
                    }
                };
                for json in messages {
                    let rows = event(worker_event::Event::Rows(arroyod_proto::Rows {
                        json,
                        sink: String::new(),
                    }));
                    if events.send(rows).await.is_err() {
                        return;
                    }
                }
            }
        };
        tokio::spawn(forwarding.instrument(info_span!("row_forwarder")))
    };
    let stop = handle.stopper();
    let trigger = handle.checkpoint_trigger();
    let metered = CancellationToken::new();
    let metering = {
        let events = events.clone();
        let mut meter = Meter::new(handle.operators());
        let ended = metered.clone();
        let reporting = async move {
            let mut ticks = tokio::time::interval(METRICS_EVERY);
            ticks.tick().await;
            loop {
                let last = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = ended.cancelled() => true,
                };
                if events.send(meter.report()).await.is_err() || last {
                    break;
                }
            }
        };
        tokio::spawn(reporting.instrument(info_span!("metrics_reporter")))
    };
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
                Ok(Some(arroyod_proto::WorkerCommand { command: Some(worker_command::Command::Checkpoint(_)) })) => {
                    if !trigger.request() {
                        warn!(pipeline = %pipeline_id, "a checkpoint was asked for, but this run takes none now");
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
    // Every row, completed checkpoint and count reaches the daemon before the final report.
    let _ = forward.await;
    // The counts since the last report go out last.
    metered.cancel();
    let _ = metering.await;
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

/// A row of the default sink too large for any message to the daemon.
#[derive(Debug, thiserror::Error)]
#[error(
    "a row of the default sink is {bytes} bytes, more than the {limit} bytes a message to the daemon may carry; write rows this large to a file sink instead"
)]
struct RowTooLarge {
    bytes: usize,
    limit: usize,
}

/// Splits rows into the rows of `Rows` messages: at most [`arroyod_proto::ROWS_MESSAGE_BYTES`]
/// each, a larger row alone, and none over [`arroyod_proto::MAX_MESSAGE_BYTES`].
fn rows_messages(rows: Vec<String>) -> Result<Vec<Vec<String>>, RowTooLarge> {
    use arroyod_proto::{MAX_MESSAGE_BYTES, ROW_FRAMING_BYTES, ROWS_MESSAGE_BYTES};
    // The message's own framing and the event around it.
    let limit = MAX_MESSAGE_BYTES - 64;
    let mut messages = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let cost = row.len() + ROW_FRAMING_BYTES;
        if cost > limit {
            return Err(RowTooLarge {
                bytes: row.len(),
                limit: limit - ROW_FRAMING_BYTES,
            });
        }
        if !current.is_empty() && bytes + cost > ROWS_MESSAGE_BYTES {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += cost;
        current.push(row);
    }
    if !current.is_empty() {
        messages.push(current);
    }
    Ok(messages)
}

/// How often a worker reports its operators' counters.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// Turns the engine's running totals into reports of deltas (so the daemon's totals stay
/// monotonic across worker generations) and current gauges.
struct Meter {
    operators: Vec<NodeMetrics>,
    previous: Vec<NodeFigures>,
    since: std::time::Instant,
}

impl Meter {
    fn new(operators: Vec<NodeMetrics>) -> Meter {
        let previous = vec![NodeFigures::default(); operators.len()];
        Meter {
            operators,
            previous,
            since: std::time::Instant::now(),
        }
    }

    /// The figures since the previous report.
    fn report(&mut self) -> WorkerEvent {
        let window_ms = self.since.elapsed().as_millis() as u64;
        self.since = std::time::Instant::now();
        let mut subtasks = 0;
        let mut subtasks_ended = 0;
        let operators = self
            .operators
            .iter()
            .zip(&mut self.previous)
            .map(|(node, previous)| {
                let now = node.counters.read();
                let before = std::mem::replace(previous, now);
                let delta = now.since(&before);
                let ended = now.subtasks_ended.min(node.parallelism as u64) as u32;
                subtasks += node.parallelism as u32;
                subtasks_ended += ended;
                arroyod_proto::OperatorMetrics {
                    operator: node.label.clone(),
                    parallelism: node.parallelism as u32,
                    rows_in: delta.rows_in,
                    rows_out: delta.rows_out,
                    bytes_in: delta.bytes_in,
                    bytes_out: delta.bytes_out,
                    blocked_ns: delta.blocked_ns,
                    watermark_ms: now.watermark_ms.unwrap_or(0),
                    late_rows_dropped: delta.late_rows,
                    bad_rows_dropped: delta.bad_rows,
                    checkpoint_bytes: now.checkpoint_bytes,
                    checkpoint_duration_ms: now.checkpoint_ms,
                    subtasks_ended: ended,
                    ..Default::default()
                }
            })
            .collect();
        event(worker_event::Event::Metrics(arroyod_proto::Metrics {
            operators,
            window_ms,
            subtasks,
            subtasks_ended,
        }))
    }
}

/// A task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// Closes the report stream and waits for the daemon to close its side: it does once it has
/// read every report, which takes as long as its reader of the rows makes it. Exiting sooner
/// would lose the reports still in flight.
async fn finish(
    events: mpsc::Sender<WorkerEvent>,
    mut commands: tonic::Streaming<arroyod_proto::WorkerCommand>,
) -> Result<(), WorkerError> {
    drop(events);
    while let Ok(Some(_)) = commands.message().await {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_split_into_messages_under_the_limit_and_a_huge_row_is_refused() {
        let row = "x".repeat(300_000);
        let messages = rows_messages(vec![row.clone(); 10]).unwrap();
        assert_eq!(
            messages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        let big = "y".repeat(5 << 20);
        let messages = rows_messages(vec![row.clone(), big, row]).unwrap();
        assert_eq!(
            messages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        assert!(rows_messages(vec![]).unwrap().is_empty());
        let e = rows_messages(vec!["z".repeat(arroyod_proto::MAX_MESSAGE_BYTES)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("write rows this large to a file sink"),
            "{e}"
        );
    }
}
