//! Pipeline metrics: what workers measure, summed per pipeline and operator, kept as Prometheus
//! metrics (the `prometheus` crate's registry and text encoder) and as a live view for
//! `arroyoctl top`, and served over HTTP at `/metrics` on `metrics_addr`.
//!
//! Workers report counters as deltas since their previous report (once a second, and last at
//! their end), so totals stay monotonic across worker generations and a crashed worker loses
//! at most one report; gauges (watermark, checkpoint size and duration) are current values.
//! Labels are the pipeline's id and name and the operator: a pipeline's series are removed when
//! it is deleted.
//!
//! Series (all prefixed `arroyod_`):
//! - `operator_rows_in_total`, `operator_rows_out_total`, `operator_bytes_in_total`,
//!   `operator_bytes_out_total`: rows and bytes (Arrow buffer sizes) into and out of an
//!   operator;
//! - `operator_backpressure_seconds_total`: time its subtasks spent blocked on a full output
//!   channel;
//! - `operator_watermark_seconds` and `operator_watermark_lag_seconds`: its event-time
//!   watermark and how far that is behind the wall clock;
//! - `operator_late_rows_dropped_total`, `operator_bad_rows_dropped_total`;
//! - `operator_checkpoint_bytes`, `operator_checkpoint_seconds`: its part of the last
//!   checkpoint;
//! - `pipeline_checkpoints_total`, `pipeline_checkpoint_bytes`,
//!   `pipeline_checkpoint_seconds`, `pipeline_restarts_total`, `pipeline_output_rows_total`;
//! - `pipelines{state}`: pipelines per state.
//!
//! Never on the data path: the engine counts per batch, the worker sums and reports once a
//! second.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::engine::NodeFigures;
use crate::settings::MetricsAddr;

/// One operator's figures in a worker's report: its counters are deltas since its previous
/// report ([`NodeFigures::since`]), the rest current values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorReport {
    pub operator: String,
    pub parallelism: u32,
    pub figures: NodeFigures,
}

/// A worker's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsReport {
    pub operators: Vec<OperatorReport>,
    /// Milliseconds the deltas cover.
    pub window_ms: u64,
    pub subtasks: u32,
    pub subtasks_ended: u32,
}

/// One operator as `top` shows it: totals since the daemon started, and rates over the last
/// report's window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorLive {
    pub operator: String,
    pub parallelism: u32,
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rows_in_per_second: f64,
    pub rows_out_per_second: f64,
    /// Fraction of the window its subtasks spent blocked on output.
    pub backpressure: f64,
    pub watermark_ms: Option<i64>,
    pub watermark_lag_ms: Option<i64>,
    pub late_rows: u64,
    pub bad_rows: u64,
    pub checkpoint_bytes: u64,
    pub checkpoint_ms: u64,
    pub subtasks_ended: u32,
}

/// Rows a pipeline dropped since the daemon started, over all its operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// As bad data (`bad_data = 'drop'`).
    pub bad: u64,
    /// As late (after the watermark passed their window).
    pub late: u64,
}

/// A pipeline's live figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineLive {
    /// In the dataflow's order, as the worker reports them.
    pub operators: Vec<OperatorLive>,
    pub window_seconds: f64,
    pub subtasks: u32,
    pub subtasks_ended: u32,
    pub restarts: u64,
}

struct Series {
    rows_in: IntCounterVec,
    rows_out: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    backpressure: GaugeVec,
    watermark: GaugeVec,
    watermark_lag: GaugeVec,
    late_rows: IntCounterVec,
    bad_rows: IntCounterVec,
    op_checkpoint_bytes: IntGaugeVec,
    op_checkpoint_seconds: GaugeVec,
    checkpoints: IntCounterVec,
    checkpoint_bytes: IntGaugeVec,
    checkpoint_seconds: GaugeVec,
    restarts: IntCounterVec,
    output_rows: IntCounterVec,
    pipelines: IntGaugeVec,
}

/// Every pipeline's metrics.
pub struct Metrics {
    registry: Registry,
    series: Series,
    /// Pipeline id → its name and live figures.
    live: Mutex<HashMap<String, (String, PipelineLive)>>,
}

const OP: &[&str] = &["pipeline", "name", "operator"];
const PIPE: &[&str] = &["pipeline", "name"];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("arroyod")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(opts(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let series = Series {
            rows_in: counter("operator_rows_in_total", "Rows into an operator.", OP),
            rows_out: counter("operator_rows_out_total", "Rows out of an operator.", OP),
            bytes_in: counter(
                "operator_bytes_in_total",
                "Bytes (Arrow buffers) into an operator.",
                OP,
            ),
            bytes_out: counter(
                "operator_bytes_out_total",
                "Bytes (Arrow buffers) out of an operator.",
                OP,
            ),
            backpressure: gauge(
                "operator_backpressure_seconds_total",
                "Time an operator's subtasks spent blocked on a full output channel.",
                OP,
            ),
            watermark: gauge(
                "operator_watermark_seconds",
                "An operator's event-time watermark, seconds since the epoch.",
                OP,
            ),
            watermark_lag: gauge(
                "operator_watermark_lag_seconds",
                "How far an operator's watermark is behind the wall clock.",
                OP,
            ),
            late_rows: counter(
                "operator_late_rows_dropped_total",
                "Rows an operator dropped as late (behind the watermark).",
                OP,
            ),
            bad_rows: counter(
                "operator_bad_rows_dropped_total",
                "Records a source dropped as bad data (bad_data = 'drop').",
                OP,
            ),
            op_checkpoint_bytes: int_gauge(
                "operator_checkpoint_bytes",
                "An operator's state in the last completed checkpoint.",
                OP,
            ),
            op_checkpoint_seconds: gauge(
                "operator_checkpoint_seconds",
                "How long an operator took to snapshot its state for the last checkpoint.",
                OP,
            ),
            checkpoints: counter(
                "pipeline_checkpoints_total",
                "Checkpoints a pipeline completed.",
                PIPE,
            ),
            checkpoint_bytes: int_gauge(
                "pipeline_checkpoint_bytes",
                "Bytes of the pipeline's last completed checkpoint.",
                PIPE,
            ),
            checkpoint_seconds: gauge(
                "pipeline_checkpoint_seconds",
                "Duration of the pipeline's last completed checkpoint, barrier to MANIFEST.",
                PIPE,
            ),
            restarts: counter(
                "pipeline_restarts_total",
                "Restarts of a pipeline after its worker crashed.",
                PIPE,
            ),
            output_rows: counter(
                "pipeline_output_rows_total",
                "Rows written to the pipeline's output log.",
                PIPE,
            ),
            pipelines: int_gauge("pipelines", "Pipelines per state.", &["state"]),
        };
        Arc::new(Metrics {
            registry,
            series,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Applies a worker's report of pipeline `id`.
    pub fn report(&self, id: &str, name: &str, report: &MetricsReport) {
        let s = &self.series;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let window = Duration::from_millis(report.window_ms.max(1));
        let mut live = self.live.lock().expect("metrics lock");
        let (_, pipeline) = live
            .entry(id.to_string())
            .or_insert_with(|| (name.to_string(), PipelineLive::default()));
        pipeline.window_seconds = window.as_secs_f64();
        pipeline.subtasks = report.subtasks;
        pipeline.subtasks_ended = report.subtasks_ended;
        let mut by_name: BTreeMap<String, OperatorLive> = pipeline
            .operators
            .drain(..)
            .map(|o| (o.operator.clone(), o))
            .collect();
        for op in &report.operators {
            let r = &op.figures;
            let l = [id, name, op.operator.as_str()];
            s.rows_in.with_label_values(&l).inc_by(r.rows_in);
            s.rows_out.with_label_values(&l).inc_by(r.rows_out);
            s.bytes_in.with_label_values(&l).inc_by(r.bytes_in);
            s.bytes_out.with_label_values(&l).inc_by(r.bytes_out);
            s.backpressure
                .with_label_values(&l)
                .add(r.blocked_ns as f64 / 1e9);
            s.late_rows.with_label_values(&l).inc_by(r.late_rows);
            s.bad_rows.with_label_values(&l).inc_by(r.bad_rows);
            let lag = r.watermark_ms.map(|w| now_ms.saturating_sub(w).max(0));
            if let (Some(w), Some(lag)) = (r.watermark_ms, lag) {
                s.watermark.with_label_values(&l).set(w as f64 / 1e3);
                s.watermark_lag.with_label_values(&l).set(lag as f64 / 1e3);
            }
            if r.checkpoint_bytes > 0 || r.checkpoint_ms > 0 {
                s.op_checkpoint_bytes
                    .with_label_values(&l)
                    .set(r.checkpoint_bytes as i64);
                s.op_checkpoint_seconds
                    .with_label_values(&l)
                    .set(r.checkpoint_ms as f64 / 1e3);
            }
            let o = by_name.entry(op.operator.clone()).or_default();
            let secs = window.as_secs_f64();
            o.operator = op.operator.clone();
            o.parallelism = op.parallelism;
            o.rows_in += r.rows_in;
            o.rows_out += r.rows_out;
            o.bytes_in += r.bytes_in;
            o.bytes_out += r.bytes_out;
            o.rows_in_per_second = r.rows_in as f64 / secs;
            o.rows_out_per_second = r.rows_out as f64 / secs;
            o.backpressure =
                (r.blocked_ns as f64 / 1e9 / secs / op.parallelism.max(1) as f64).clamp(0.0, 1.0);
            if r.watermark_ms.is_some() {
                o.watermark_ms = r.watermark_ms;
                o.watermark_lag_ms = lag;
            }
            o.late_rows += r.late_rows;
            o.bad_rows += r.bad_rows;
            if r.checkpoint_bytes > 0 || r.checkpoint_ms > 0 {
                o.checkpoint_bytes = r.checkpoint_bytes;
                o.checkpoint_ms = r.checkpoint_ms;
            }
            o.subtasks_ended = r.subtasks_ended as u32;
        }
        // The worker's order (the dataflow's); operators it no longer reports keep their
        // totals, after.
        let mut ordered = Vec::with_capacity(by_name.len());
        for r in &report.operators {
            if let Some(o) = by_name.remove(&r.operator) {
                ordered.push(o);
            }
        }
        ordered.extend(by_name.into_values());
        pipeline.operators = ordered;
    }

    /// A checkpoint of pipeline `id` completed.
    pub fn checkpoint(&self, id: &str, name: &str, bytes: u64, duration_ms: u64) {
        let l = [id, name];
        let s = &self.series;
        s.checkpoints.with_label_values(&l).inc();
        s.checkpoint_bytes.with_label_values(&l).set(bytes as i64);
        s.checkpoint_seconds
            .with_label_values(&l)
            .set(duration_ms as f64 / 1e3);
    }

    /// The worker of pipeline `id` crashed and is restarted.
    pub fn restarted(&self, id: &str, name: &str) {
        self.series.restarts.with_label_values(&[id, name]).inc();
        let mut live = self.live.lock().expect("metrics lock");
        live.entry(id.to_string())
            .or_insert_with(|| (name.to_string(), PipelineLive::default()))
            .1
            .restarts += 1;
    }

    /// Rows were written to the output log of pipeline `id`.
    pub fn output_rows(&self, id: &str, name: &str, rows: u64) {
        self.series
            .output_rows
            .with_label_values(&[id, name])
            .inc_by(rows);
    }

    /// The worker of pipeline `id` ended: its rates are zero now.
    pub fn idle(&self, id: &str) {
        let mut live = self.live.lock().expect("metrics lock");
        if let Some((_, p)) = live.get_mut(id) {
            for o in &mut p.operators {
                o.rows_in_per_second = 0.0;
                o.rows_out_per_second = 0.0;
                o.backpressure = 0.0;
            }
        }
    }

    /// The rows pipeline `id` dropped, summed over its operators: what `status` shows.
    pub fn dropped(&self, id: &str) -> Dropped {
        let live = self.live.lock().expect("metrics lock");
        live.get(id)
            .map(|(_, p)| Dropped {
                bad: p.operators.iter().map(|o| o.bad_rows).sum(),
                late: p.operators.iter().map(|o| o.late_rows).sum(),
            })
            .unwrap_or_default()
    }

    /// The live figures of pipeline `id`.
    pub fn live(&self, id: &str) -> PipelineLive {
        let live = self.live.lock().expect("metrics lock");
        live.get(id).map(|(_, p)| p.clone()).unwrap_or_default()
    }

    /// Removes every series of pipeline `id` (deleted).
    pub fn forget(&self, id: &str) {
        let Some((name, p)) = self.live.lock().expect("metrics lock").remove(id) else {
            return;
        };
        let s = &self.series;
        for o in &p.operators {
            let l = [id, name.as_str(), o.operator.as_str()];
            let _ = s.rows_in.remove_label_values(&l);
            let _ = s.rows_out.remove_label_values(&l);
            let _ = s.bytes_in.remove_label_values(&l);
            let _ = s.bytes_out.remove_label_values(&l);
            let _ = s.backpressure.remove_label_values(&l);
            let _ = s.watermark.remove_label_values(&l);
            let _ = s.watermark_lag.remove_label_values(&l);
            let _ = s.late_rows.remove_label_values(&l);
            let _ = s.bad_rows.remove_label_values(&l);
            let _ = s.op_checkpoint_bytes.remove_label_values(&l);
            let _ = s.op_checkpoint_seconds.remove_label_values(&l);
        }
        let l = [id, name.as_str()];
        let _ = s.checkpoints.remove_label_values(&l);
        let _ = s.checkpoint_bytes.remove_label_values(&l);
        let _ = s.checkpoint_seconds.remove_label_values(&l);
        let _ = s.restarts.remove_label_values(&l);
        let _ = s.output_rows.remove_label_values(&l);
    }

    /// Sets the pipelines-per-state gauge.
    pub fn set_states<'a>(&self, counts: impl IntoIterator<Item = (&'a str, i64)>) {
        for (state, n) in counts {
            self.series.pipelines.with_label_values(&[state]).set(n);
        }
    }

    /// Every series in Prometheus' text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("binding the metrics address {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Renders the text of `/metrics` (refreshing what is computed at scrape time first).
pub type Render = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// A listener of the metrics server: TCP on loopback or a Unix socket.
trait Listener: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Binds a unix socket with the daemon's checks (a live socket or a plain file is never
/// replaced), or says why not.
pub type BindUnix =
    fn(
        &std::path::Path,
    ) -> Result<tokio::net::UnixListener, Box<dyn std::error::Error + Send + Sync>>;

/// Serves `render` at `/metrics` on `addr` until `stop`, in a task of `tasks` (named
/// `metrics_server`), one task per connection under it; a unix socket is bound by `bind_unix`.
pub async fn serve(
    addr: &MetricsAddr,
    render: Render,
    tasks: &mut JoinSet<()>,
    stop: CancellationToken,
    bind_unix: BindUnix,
) -> Result<(), MetricsError> {
    let bind_failed = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    match addr {
        MetricsAddr::Tcp(a) => {
            let listener = tokio::net::TcpListener::bind(a)
                .await
                .map_err(bind_failed)?;
            tasks.spawn(
                accept(listener, render, stop, None).instrument(info_span!("metrics_server")),
            );
        }
        MetricsAddr::Unix(path) => {
            let listener = bind_unix(path).map_err(|e| bind_failed(std::io::Error::other(e)))?;
            let served = accept(listener, render, stop, Some(path.clone()));
            tasks.spawn(served.instrument(info_span!("metrics_server")));
        }
    }
    Ok(())
}

/// Accepts connections until `stop`; then removes the socket file `unix`, if any.
async fn accept<L: Listener>(
    listener: L,
    render: Render,
    stop: CancellationToken,
    unix: Option<PathBuf>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    connections.spawn(
                        connection(stream, render.clone())
                            .instrument(info_span!("metrics_connection")),
                    );
                }
                Err(e) => warn!(error = %e, "accepting a metrics connection failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    if let Some(path) = unix {
        let _ = std::fs::remove_file(path);
    }
}

/// One HTTP/1 connection: `GET /metrics` gets the text, anything else 404.
async fn connection<S>(stream: S, render: Render)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let render = render.clone();
        async move {
            let response = if request.uri().path() == "/metrics" {
                Response::builder()
                    .header("content-type", prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(render())))
            } else {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(b"only /metrics is served\n")))
            };
            Ok::<_, Infallible>(response.expect("a valid response"))
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "a metrics connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, rows: u64) -> OperatorReport {
        OperatorReport {
            operator: name.into(),
            parallelism: 2,
            figures: NodeFigures {
                rows_in: rows,
                rows_out: rows,
                blocked_ns: 500_000_000,
                watermark_ms: Some(1_000),
                ..NodeFigures::default()
            },
        }
    }

    #[test]
    fn deltas_sum_into_monotonic_totals_and_forget_removes_them() {
        let m = Metrics::new();
        let report = |rows| MetricsReport {
            operators: vec![op("source:impulse", rows), op("sink:preview", rows)],
            window_ms: 1_000,
            subtasks: 4,
            subtasks_ended: 0,
        };
        m.report("p1", "ticks", &report(100));
        // A new generation reports from zero: its deltas add up.
        m.report("p1", "ticks", &report(50));
        m.checkpoint("p1", "ticks", 123, 45);
        m.restarted("p1", "ticks");
        let live = m.live("p1");
        assert_eq!(live.operators.len(), 2);
        assert_eq!(live.operators[0].operator, "source:impulse");
        assert_eq!(live.operators[0].rows_in, 150);
        assert_eq!(live.operators[0].rows_in_per_second, 50.0);
        assert_eq!(live.operators[0].backpressure, 0.25);
        assert_eq!(live.restarts, 1);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(
                "arroyod_operator_rows_in_total{name=\"ticks\",operator=\"source:impulse\",pipeline=\"p1\"} 150"
            ),
            "{text}"
        );
        assert!(
            text.contains("arroyod_pipeline_checkpoint_bytes{name=\"ticks\",pipeline=\"p1\"} 123")
        );
        m.forget("p1");
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("pipeline=\"p1\""), "{text}");
    }
}
