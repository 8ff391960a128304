//! `webhook`: rows POSTed to an HTTP endpoint.
//!
//! Options: `endpoint` (`http`/`https`, required) and `headers` (Arroyo's), `format` (`json`,
//! the default: each row a JSON object; `raw_string`: the one text column's value), and
//! arroyod's own batching and concurrency (Arroyo sends one request per row, 50 at a time):
//! - `batch.max_rows` (default 1): rows per request. With 1 the body is the row itself, as
//!   in Arroyo; above 1 it is a JSON array of rows (`json`) or the values one per line
//!   (`raw_string`), even when fewer rows are left to send.
//! - `batch.max_delay` (default `100ms`): the longest a row waits for its batch to fill.
//! - `max_in_flight` (default 16): requests under way at once; 1 keeps the rows in order.
//!
//! `Content-Type` is `application/json` or `text/plain; charset=utf-8` unless `headers` sets
//! it. Each request has 30 s.
//!
//! Delivery, at-least-once:
//! 1. A 2xx answer delivers a request's rows. A connection error, a timeout, a 5xx, a 408 or
//!    a 429 is retried with backoff (100 ms doubling to 5 s, or the server's `Retry-After`
//!    up to 30 s) for as long as it takes: the sink holds back its input meanwhile. Arroyo
//!    counts any answer, a 5xx included, as delivered; this sink does not.
//! 2. Any other 4xx, or a redirect (none is followed: a POST would become a GET), fails the
//!    pipeline with the status and the start of the answer's body.
//! 3. A checkpoint waits until every row before its barrier is delivered. Rows after the
//!    last checkpoint are sent again by a restored run, and a request that timed out after
//!    the server took it is sent again: a receiver that must not see a row twice
//!    de-duplicates.
//!
//! The requests go out from a delivery task the sink owns (aborted if the sink is dropped),
//! which batches rows, keeps up to `max_in_flight` requests under way and runs the batch
//! timer; the sink hands it rows over a bounded channel, so a slow endpoint holds back the
//! pipeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::error::ArrowError;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info_span};

use super::{
    Backoff, Endpoint, Headers, HttpError, RetryLog, Verdict, describe, take_format, verdict,
    with_headers,
};
use crate::connector::lines::LineFormat;
use crate::connector::sink::encode_json_lines;
use crate::connector::{ConnectorError, ConnectorTable, Options};
use crate::task::{Collector, Operator, OperatorFactory, TaskError, TaskInfo, TaskState};

const CONNECTOR: &str = "webhook";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Commands the sink may queue ahead of its delivery task.
const QUEUE: usize = 4;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    endpoint: Endpoint,
    headers: Headers,
    format: LineFormat,
    max_rows: usize,
    max_delay: Duration,
    max_in_flight: usize,
}

impl WebhookConfig {
    /// The endpoint's scheme, host and port, as messages show it.
    pub fn shown(&self) -> &str {
        &self.endpoint.shown
    }

    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let endpoint =
            Endpoint::parse(&options.require(CONNECTOR, "endpoint")?, &["http", "https"])?;
        let positive = |options: &mut Options, key: &str, default: usize| match options
            .take_parsed::<usize>(key)?
        {
            None => Ok(default),
            Some(0) => Err(ConnectorError::InvalidOption {
                option: key.into(),
                value: "0".into(),
                reason: "must be above 0".into(),
            }),
            Some(n) => Ok(n),
        };
        Ok(WebhookConfig {
            endpoint,
            headers: Headers::take(options)?,
            format: take_format(CONNECTOR, options)?,
            max_rows: positive(options, "batch.max_rows", 1)?,
            max_delay: options
                .take_duration("batch.max_delay")?
                .unwrap_or(Duration::from_millis(100)),
            max_in_flight: positive(options, "max_in_flight", 16)?,
        })
    }

    pub(super) fn format(&self) -> LineFormat {
        self.format
    }

    /// The body of a request carrying `rows`.
    fn body(&self, rows: &[Bytes]) -> Bytes {
        if self.max_rows == 1 {
            return rows[0].clone();
        }
        let size = rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2;
        let mut body = BytesMut::with_capacity(size);
        let json = self.format == LineFormat::Json;
        if json {
            body.put_u8(b'[');
        }
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                body.put_u8(if json { b',' } else { b'\n' });
            }
            body.put_slice(row);
        }
        if json {
            body.put_u8(b']');
        }
        body.freeze()
    }

    fn content_type(&self) -> &'static str {
        match self.format {
            LineFormat::Raw => "text/plain; charset=utf-8",
            _ => "application/json",
        }
    }
}

pub struct WebhookFactory {
    config: Arc<WebhookConfig>,
}

impl WebhookFactory {
    pub fn new(
        table: &ConnectorTable,
        config: WebhookConfig,
        updating: bool,
    ) -> Result<WebhookFactory, ConnectorError> {
        if updating {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window), which a webhook cannot take",
                table.name
            )));
        }
        Ok(WebhookFactory {
            config: Arc::new(config),
        })
    }
}

impl OperatorFactory for WebhookFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let client = super::client(Some(REQUEST_TIMEOUT), false)
            .map_err(|e| TaskError::connector(&info.node, e))?;
        Ok(Box::new(WebhookSink {
            node: info.node.clone(),
            subtask: info.subtask,
            config: self.config.clone(),
            client,
            delivery: None,
        }))
    }
}

/// What the sink asks of its delivery task.
enum Command {
    /// Rows to send, each encoded.
    Rows(Vec<Bytes>),
    /// Send every row received, wait until all are delivered, then answer.
    Flush(oneshot::Sender<()>),
}

/// The delivery task of a sink subtask.
struct Delivery {
    tx: mpsc::Sender<Command>,
    task: AbortOnDropHandle<Result<(), HttpError>>,
}

struct WebhookSink {
    node: String,
    subtask: usize,
    config: Arc<WebhookConfig>,
    client: reqwest::Client,
    /// Started with the first rows.
    delivery: Option<Delivery>,
}

impl WebhookSink {
    fn fail(&self, e: HttpError) -> TaskError {
        TaskError::connector(&self.node, e)
    }

    /// Each visible row of `batch`, encoded (the event time, last, is dropped).
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<Bytes>, HttpError> {
        match self.config.format {
            LineFormat::Raw => {
                let values = (batch.num_columns() == 2)
                    .then(|| batch.column(0).as_any().downcast_ref::<StringArray>())
                    .flatten()
                    .ok_or_else(|| {
                        HttpError::Encode(ArrowError::InvalidArgumentError(
                            "format 'raw_string' writes exactly one text column".into(),
                        ))
                    })?;
                Ok((0..values.len())
                    .map(|i| {
                        let text = if values.is_null(i) {
                            ""
                        } else {
                            values.value(i)
                        };
                        Bytes::copy_from_slice(text.as_bytes())
                    })
                    .collect())
            }
            _ => {
                let lines = encode_json_lines(batch, 1).map_err(|e| match e {
                    crate::connector::RunError::Encode(e) => HttpError::Encode(e),
                    other => HttpError::Encode(ArrowError::ExternalError(Box::new(other))),
                })?;
                let lines = Bytes::from(lines);
                let mut rows = Vec::with_capacity(batch.num_rows());
                let mut start = 0;
                for (i, b) in lines.iter().enumerate() {
                    if *b == b'\n' {
                        rows.push(lines.slice(start..i));
                        start = i + 1;
                    }
                }
                Ok(rows)
            }
        }
    }

    fn delivery(&mut self) -> &mut Delivery {
        self.delivery.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let span = info_span!("webhook delivery", node = %self.node, subtask = self.subtask);
            let task = deliver(self.config.clone(), self.client.clone(), rx).instrument(span);
            Delivery {
                tx,
                task: AbortOnDropHandle::new(tokio::spawn(task)),
            }
        })
    }

    /// The error the delivery task ended with (it ended: a command could not be given).
    async fn ended(&mut self) -> TaskError {
        let error = match self.delivery.take() {
            Some(d) => match d.task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) | Err(_) => HttpError::DeliveryLost,
            },
            None => HttpError::DeliveryLost,
        };
        self.fail(error)
    }

    /// Waits until every row handed over is delivered.
    async fn flush(&mut self) -> Result<(), TaskError> {
        if self.delivery.is_none() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        if self.delivery().tx.send(Command::Flush(ack)).await.is_err() || done.await.is_err() {
            return Err(self.ended().await);
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for WebhookSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = self.encode(&batch).map_err(|e| self.fail(e))?;
        if self.delivery().tx.send(Command::Rows(rows)).await.is_err() {
            return Err(self.ended().await);
        }
        Ok(())
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        self.flush().await
    }

    /// A checkpoint holds no rows: it waits until every row before it is delivered.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        self.flush().await?;
        Ok(TaskState::new())
    }
}

/// The delivery task: batches rows, sends them with at most `max_in_flight` requests under
/// way, and answers a flush once everything before it is delivered. Ends with the first
/// request that cannot be delivered, or when the sink goes away.
async fn deliver(
    config: Arc<WebhookConfig>,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Command>,
) -> Result<(), HttpError> {
    let log = Mutex::new(RetryLog::new(Duration::from_secs(10)));
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<Bytes> = Vec::new();
    // When the oldest pending row's batch is sent, full or not.
    let mut deadline: Option<Instant> = None;
    let send = |rows: Vec<Bytes>| post(&config, &client, &log, rows);
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => done?,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                deadline = None;
                in_flight.push(send(std::mem::take(&mut pending)));
            }
            command = rx.recv(), if in_flight.len() < config.max_in_flight => match command {
                Some(Command::Rows(rows)) => {
                    for row in rows {
                        pending.push(row);
                        if pending.len() == config.max_rows {
                            while in_flight.len() >= config.max_in_flight {
                                if let Some(done) = in_flight.next().await {
                                    done?;
                                }
                            }
                            in_flight.push(send(std::mem::take(&mut pending)));
                            deadline = None;
                        }
                    }
                    if !pending.is_empty() && deadline.is_none() {
                        deadline = Some(Instant::now() + config.max_delay);
                    }
                }
                Some(Command::Flush(ack)) => {
                    if !pending.is_empty() {
                        in_flight.push(send(std::mem::take(&mut pending)));
                        deadline = None;
                    }
                    while let Some(done) = in_flight.next().await {
                        done?;
                    }
                    // The sink may be gone already; nothing is left to tell it.
                    let _ = ack.send(());
                }
                None => return Ok(()),
            },
        }
    }
}

/// Sends one request, retrying until it is delivered or refused.
async fn post(
    config: &WebhookConfig,
    client: &reqwest::Client,
    log: &Mutex<RetryLog>,
    rows: Vec<Bytes>,
) -> Result<(), HttpError> {
    let body = config.body(&rows);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let request = with_headers(
            client.post(config.endpoint.url().clone()),
            &config.headers,
            &[(CONTENT_TYPE, config.content_type())],
        )
        .body(body.clone());
        let error = match request.send().await {
            Ok(response) => match verdict(response.status()) {
                Verdict::Ok => return Ok(()),
                Verdict::Refused => return Err(super::refused(&config.endpoint, response).await),
                Verdict::Retry => {
                    let delay = retry_after(&response).unwrap_or_else(|| backoff.next_delay());
                    let error = format!("answered {}", response.status());
                    log.lock().expect("not poisoned").warn(
                        &config.endpoint,
                        "a webhook request was not delivered",
                        &error,
                        delay,
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
            Err(e) => describe(e),
        };
        let delay = backoff.next_delay();
        log.lock().expect("not poisoned").warn(
            &config.endpoint,
            "a webhook request was not delivered",
            &error,
            delay,
        );
        tokio::time::sleep(delay).await;
    }
}

/// A `Retry-After` in seconds, capped.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, &str)]) -> Result<WebhookConfig, ConnectorError> {
        let mut all = vec![(
            "endpoint".to_string(),
            "http://localhost:9/hook".to_string(),
        )];
        all.extend(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        WebhookConfig::from_options(&mut Options::new(all))
    }

    fn rows(texts: &[&str]) -> Vec<Bytes> {
        texts.iter().map(|t| Bytes::from(t.to_string())).collect()
    }

    #[test]
    fn a_request_per_row_carries_the_row_and_batches_are_arrays_or_lines() {
        let one = config(&[]).unwrap();
        assert_eq!(one.body(&rows(&["{\"a\":1}"])), "{\"a\":1}");
        let json = config(&[("batch.max_rows", "10")]).unwrap();
        assert_eq!(json.body(&rows(&["{\"a\":1}"])), "[{\"a\":1}]");
        assert_eq!(
            json.body(&rows(&["{\"a\":1}", "{\"a\":2}"])),
            "[{\"a\":1},{\"a\":2}]"
        );
        let raw = config(&[("batch.max_rows", "10"), ("format", "raw_string")]).unwrap();
        assert_eq!(raw.body(&rows(&["x", "y"])), "x\ny");
        assert_eq!(raw.content_type(), "text/plain; charset=utf-8");
    }

    #[test]
    fn batching_options_are_checked() {
        let c = config(&[
            ("batch.max_rows", "50"),
            ("batch.max_delay", "2s"),
            ("max_in_flight", "1"),
        ])
        .unwrap();
        assert_eq!(
            (c.max_rows, c.max_delay, c.max_in_flight),
            (50, Duration::from_secs(2), 1)
        );
        for (key, value) in [
            ("batch.max_rows", "0"),
            ("batch.max_rows", "many"),
            ("batch.max_delay", "soon"),
            ("max_in_flight", "0"),
        ] {
            let err = config(&[(key, value)]).unwrap_err();
            assert!(
                matches!(&err, ConnectorError::InvalidOption { option, .. } if option == key),
                "{key}: {err}"
            );
        }
    }
}
