//! `sse`: a Server-Sent Events stream read as a source.
//!
//! Options (Arroyo's): `endpoint` (`http`/`https`), `headers`, `events` (comma-separated event
//! types to keep; all when absent; an event without a type is a `message`), and the source
//! options of [`super`]. Each event's `data` is one message.
//!
//! 1. Subtask 0 sends `GET endpoint` with `Accept: text/event-stream` and, once it has seen
//!    an event id, `Last-Event-ID`.
//! 2. Events are emitted in batches of what has arrived; the id of the last event of a batch
//!    becomes the position once the batch is out. The position is what a checkpoint records.
//! 3. When the stream ends or breaks, it reconnects with `Last-Event-ID` after a backoff that
//!    starts at the server's `retry` (else 100 ms) and doubles while connections bring
//!    nothing, up to 30 s.
//!
//! Delivery: with a server that honours `Last-Event-ID`, nothing is lost or repeated across
//! reconnects, and a restored run resumes after the checkpointed event (exactly-once with an
//! exactly-once sink). A server that ignores it loses what was sent while disconnected:
//! at-most-once.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CACHE_CONTROL, HeaderName};
use tracing::info;

use super::feed::{self, Broken, Connection, Failed, Feed};
use super::{
    Endpoint, HttpError, SourceOptions, Verdict, describe, stay_idle, verdict, with_headers,
};
use crate::connector::lines::LineReader;
use crate::connector::{ConnectorError, Options};
use crate::task::{RestoredState, Source, SourceContext, SourceEnd, TaskError, TaskState};

const CONNECTOR: &str = "sse";
/// The state table of the reading subtask.
const LAST_EVENT_ID: &str = "last_event_id";

#[derive(Debug, Clone)]
pub struct SseConfig {
    pub(super) source: SourceOptions,
    /// The event types kept (None: all).
    events: Option<Vec<String>>,
}

impl SseConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let source = SourceOptions::take(CONNECTOR, options, &["http", "https"])?;
        let events = options.take("events").map(|e| {
            e.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        });
        if events.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConnectorError::InvalidOption {
                option: "events".into(),
                value: String::new(),
                reason: "name at least one event type, or leave the option out".into(),
            });
        }
        Ok(SseConfig { source, events })
    }

    fn keeps(&self, event: &Event) -> bool {
        self.events
            .as_ref()
            .is_none_or(|types| types.contains(&event.event))
    }
}

/// One subtask of an `sse` source.
pub struct SseSource {
    config: SseConfig,
    reader: LineReader,
    /// Subtask 0: the one that reads.
    reads: bool,
    /// The id of the last event emitted (or passed over by the `events` filter): the position.
    last_id: Option<String>,
    /// The id of the last event taken into the batch being built.
    taken_id: Option<String>,
    /// The batch being built brought an event.
    taken: bool,
    /// The server's `retry`: the first wait before a reconnect.
    retry: Option<Duration>,
    client: reqwest::Client,
}

impl SseSource {
    pub fn new(config: SseConfig, reader: LineReader, reads: bool) -> Result<Self, HttpError> {
        Ok(SseSource {
            config,
            reader,
            reads,
            last_id: None,
            taken_id: None,
            taken: false,
            retry: None,
            // A stream has no overall timeout; redirects are followed, as browsers do.
            client: super::client(None, true)?,
        })
    }
}

#[async_trait]
impl Feed for SseSource {
    type Item = Event;

    const WHAT: &'static str = "sse stream";

    fn endpoint(&self) -> &Endpoint {
        &self.config.source.endpoint
    }

    fn idle_after(&self) -> Option<Duration> {
        self.config.source.idle
    }

    fn reader(&mut self) -> &mut LineReader {
        &mut self.reader
    }

    async fn connect(&self) -> Result<Connection<Event>, Failed> {
        let source = &self.config.source;
        let mut request = with_headers(
            self.client.get(source.endpoint.url().clone()),
            &source.headers,
            &[(ACCEPT, "text/event-stream"), (CACHE_CONTROL, "no-cache")],
        );
        if let Some(id) = &self.last_id {
            request = request.header(HeaderName::from_static("last-event-id"), id);
        }
        info!(endpoint = %source.endpoint, last_event_id = ?self.last_id, "opening the sse stream");
        let response = request
            .send()
            .await
            .map_err(|e| Failed::Retry(describe(e)))?;
        match verdict(response.status()) {
            Verdict::Ok => Ok(Box::pin(response.bytes_stream().eventsource().map(
                |item| {
                    item.map_err(|e| {
                        Broken(match e {
                            EventStreamError::Transport(e) => describe(e),
                            other => other.to_string(),
                        })
                    })
                },
            ))),
            Verdict::Retry => Err(Failed::Retry(format!("answered {}", response.status()))),
            Verdict::Refused => Err(Failed::Fatal(
                super::refused(&source.endpoint, response).await,
            )),
        }
    }

    /// Takes an event: its data when the filter keeps it; its id and `retry` in any case.
    fn take(&mut self, event: Event, batch: &mut Vec<Bytes>) {
        self.taken = true;
        if !event.id.is_empty() {
            self.taken_id = Some(event.id.clone());
        }
        if let Some(retry) = event.retry {
            self.retry = Some(retry);
        }
        if self.config.keeps(&event) {
            batch.push(Bytes::from(event.data));
        }
    }

    fn emitted(&mut self) -> bool {
        if let Some(id) = self.taken_id.take() {
            self.last_id = Some(id);
        }
        std::mem::take(&mut self.taken)
    }

    fn retry_hint(&self) -> Option<Duration> {
        self.retry
    }
}

#[async_trait]
impl Source for SseSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        if !self.reads {
            return stay_idle(ctx).await;
        }
        feed::run(self, ctx).await
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        if self.reads {
            state.put_json(LAST_EVENT_ID, &self.last_id)?;
        }
        Ok(state)
    }

    /// The reader is subtask 0 at any parallelism: it resumes after the old reader's last id.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if self.reads {
            self.last_id = state
                .json::<Option<String>>(LAST_EVENT_ID)?
                .into_iter()
                .flatten()
                .flatten()
                .next();
        }
        Ok(())
    }
}
