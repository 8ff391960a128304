//! `polling_http`: an HTTP endpoint polled at an interval; each answer's body is a message
//! (with `format = 'json'`, a body may hold several JSON objects, one row each).
//!
//! Options (Arroyo's): `endpoint` (`http`/`https`), `method` (`GET`, the default, `POST`,
//! `PUT`, `PATCH`), `body` (sent with each request), `headers`, `poll_interval_ms` (the
//! time from the start of one poll to the next, 1000 by default; a slow answer delays the
//! next poll, never overlaps it), `emit_behavior` (`all`, the default: every body; `changed`:
//! a body only when it differs from the last one emitted), and the source options of
//! [`super`].
//!
//! A request has 5 s; a body over 5 MiB is skipped. A failed request or a non-2xx answer is
//! a warning, and the next poll goes on.
//!
//! Delivery: each poll is a sample; what changes and changes back between two polls is never
//! seen. With `changed`, the last body emitted is checkpointed, so a restored or resumed run
//! emits a body only if it differs from what the run had emitted at that checkpoint.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;
use tokio::time::Instant;

use super::{HttpError, IDLE_WATERMARK_EVERY, Quiet, RetryLog, SourceOptions, describe, stay_idle};
use crate::connector::lines::LineReader;
use crate::connector::{ConnectorError, Options};
use crate::task::{RestoredState, Source, SourceContext, SourceEnd, TaskError, TaskState};

const CONNECTOR: &str = "polling_http";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest body read.
const MAX_BODY: usize = 5 << 20;
/// The state table of the reading subtask (with `emit_behavior = 'changed'`).
const LAST_BODY: &str = "last_body";

/// Which bodies are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitBehavior {
    All,
    Changed,
}

#[derive(Debug, Clone)]
pub struct PollingConfig {
    pub(super) source: SourceOptions,
    method: Method,
    body: Option<String>,
    interval: Duration,
    emit: EmitBehavior,
}

impl PollingConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let source = SourceOptions::take(CONNECTOR, options, &["http", "https"])?;
        let method = match options.take("method") {
            None => Method::GET,
            Some(m) => match m.trim().to_ascii_uppercase().as_str() {
                "GET" => Method::GET,
                "POST" => Method::POST,
                "PUT" => Method::PUT,
                "PATCH" => Method::PATCH,
                _ => {
                    return Err(ConnectorError::InvalidOption {
                        option: "method".into(),
                        value: m,
                        reason: "expected 'GET', 'POST', 'PUT' or 'PATCH'".into(),
                    });
                }
            },
        };
        let interval = match options.take_parsed::<u64>("poll_interval_ms")? {
            None => Duration::from_secs(1),
            Some(0) => {
                return Err(ConnectorError::InvalidOption {
                    option: "poll_interval_ms".into(),
                    value: "0".into(),
                    reason: "must be above 0".into(),
                });
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let emit = match options.take("emit_behavior").as_deref() {
            None | Some("all") => EmitBehavior::All,
            Some("changed") => EmitBehavior::Changed,
            Some(other) => {
                return Err(ConnectorError::InvalidOption {
                    option: "emit_behavior".into(),
                    value: other.into(),
                    reason: "expected 'all' or 'changed'".into(),
                });
            }
        };
        Ok(PollingConfig {
            source,
            method,
            body: options.take("body"),
            interval,
            emit,
        })
    }
}

/// One subtask of a `polling_http` source.
pub struct PollingSource {
    config: PollingConfig,
    reader: LineReader,
    /// Subtask 0: the one that polls.
    reads: bool,
    client: reqwest::Client,
    /// The last body emitted (kept with `changed` only).
    last: Option<Bytes>,
    log: RetryLog,
}

impl PollingSource {
    pub fn new(config: PollingConfig, reader: LineReader, reads: bool) -> Result<Self, HttpError> {
        Ok(PollingSource {
            config,
            reader,
            reads,
            client: super::client(Some(REQUEST_TIMEOUT), true)?,
            last: None,
            log: RetryLog::new(Duration::from_secs(10)),
        })
    }

    /// One poll: the body of a 2xx answer within the size cap, or a warning.
    async fn poll(&mut self) -> Option<Bytes> {
        let source = &self.config.source;
        let mut request = super::with_headers(
            self.client
                .request(self.config.method.clone(), source.endpoint.url().clone()),
            &source.headers,
            &[],
        );
        if let Some(body) = &self.config.body {
            request = request.body(body.clone());
        }
        let failed = |log: &mut RetryLog, error: &str| {
            log.warn(
                &source.endpoint,
                "polling failed",
                error,
                self.config.interval,
            );
            None
        };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(&mut self.log, &describe(e)),
        };
        if !response.status().is_success() {
            let error = format!("answered {}", response.status());
            return failed(&mut self.log, &error);
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return failed(&mut self.log, "the body is larger than 5 MiB");
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_BODY => {
                    return failed(&mut self.log, "the body is larger than 5 MiB");
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Some(Bytes::from(body)),
                Err(e) => return failed(&mut self.log, &describe(e)),
            }
        }
    }
}

#[async_trait]
impl Source for PollingSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        if !self.reads {
            return stay_idle(ctx).await;
        }
        let mut next_poll = Instant::now();
        let mut quiet = Quiet::new(self.config.source.idle);
        loop {
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            if let Some(end) = ctx.checkpoint_if_due(|| self.snapshot()).await? {
                return Ok(end);
            }
            let wake = next_poll.min(Instant::now() + IDLE_WATERMARK_EVERY);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = ctx.stopped() => continue,
            }
            if Instant::now() < next_poll {
                quiet.tick(&self.reader, ctx).await?;
                continue;
            }
            let started = Instant::now();
            let body = tokio::select! {
                body = self.poll() => body,
                // A stop, or a checkpoint first: the poll is made again after it.
                _ = ctx.stopped() => continue,
            };
            next_poll = started + self.config.interval;
            let Some(body) = body else { continue };
            if self.config.emit == EmitBehavior::Changed && self.last.as_ref() == Some(&body) {
                quiet.tick(&self.reader, ctx).await?;
                continue;
            }
            quiet.data();
            self.reader.emit_messages(ctx, &[&body]).await?;
            if self.config.emit == EmitBehavior::Changed {
                self.last = Some(body);
            }
        }
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        if self.reads && self.config.emit == EmitBehavior::Changed {
            let last = self
                .last
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            state.put_json(LAST_BODY, &last)?;
        }
        Ok(state)
    }

    /// The poller is subtask 0 at any parallelism: it compares with the old poller's last
    /// body.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if self.reads && self.config.emit == EmitBehavior::Changed {
            self.last = state
                .json::<Option<String>>(LAST_BODY)?
                .into_iter()
                .flatten()
                .flatten()
                .next()
                .map(Bytes::from);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, &str)]) -> Result<PollingConfig, ConnectorError> {
        let mut all = vec![("endpoint".to_string(), "http://localhost:9/x".to_string())];
        all.extend(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        PollingConfig::from_options(&mut Options::new(all))
    }

    #[test]
    fn options_have_arroyos_defaults_and_are_checked() {
        let c = config(&[]).unwrap();
        assert_eq!(c.method, Method::GET);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.emit, EmitBehavior::All);
        let c = config(&[
            ("method", "post"),
            ("body", "{}"),
            ("poll_interval_ms", "250"),
            ("emit_behavior", "changed"),
        ])
        .unwrap();
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.emit, EmitBehavior::Changed);
        for (key, value) in [
            ("method", "DELETE"),
            ("poll_interval_ms", "0"),
            ("poll_interval_ms", "soon"),
            ("emit_behavior", "sometimes"),
        ] {
            let err = config(&[(key, value)]).unwrap_err();
            assert!(
                matches!(&err, ConnectorError::InvalidOption { option, .. } if option == key),
                "{key}: {err}"
            );
        }
    }
}
