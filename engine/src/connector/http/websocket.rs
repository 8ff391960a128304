//! `websocket`: messages of a WebSocket read as a source.
//!
//! Options (Arroyo's): `endpoint` (`ws`/`wss`), `headers` (sent with the handshake),
//! `subscription_message` (one text sent after each connect; Arroyo calls it deprecated) or
//! `subscription_messages.0`, `.1`, ... (sent in order; not both forms), and the source
//! options of [`super`]. Each Text or Binary message is one message; a Ping is answered with
//! a Pong (the client sends it with its next read), a Close frame ends the connection.
//!
//! After a connection ends or breaks, the source connects again after a backoff (100 ms
//! doubling to 30 s while connections bring nothing) and sends the subscription messages
//! again.
//!
//! Delivery: at-most-once. A WebSocket has no position to resume from: what the server sends
//! while the source is disconnected, and what was emitted after the last checkpoint of a run
//! that is restored, is not read again. Nothing is checkpointed.

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::feed::{self, Broken, Connection, Failed, Feed};
use super::{CONNECT_TIMEOUT, Endpoint, HttpError, SourceOptions, Verdict, stay_idle, verdict};
use crate::connector::lines::LineReader;
use crate::connector::{ConnectorError, Options};
use crate::task::{RestoredState, Source, SourceContext, SourceEnd, TaskError, TaskState};

const CONNECTOR: &str = "websocket";
const SUBSCRIPTION: &str = "subscription_message";
const SUBSCRIPTIONS: &str = "subscription_messages.";

#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    pub(super) source: SourceOptions,
    /// Sent in order after each connect.
    subscriptions: Vec<String>,
}

impl WebSocketConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let source = SourceOptions::take(CONNECTOR, options, &["ws", "wss"])?;
        let keys: Vec<String> = options
            .unused()
            .filter(|k| k.starts_with(SUBSCRIPTIONS))
            .map(str::to_string)
            .collect();
        let mut numbered = Vec::new();
        for key in keys {
            let index: usize =
                key[SUBSCRIPTIONS.len()..]
                    .parse()
                    .map_err(|_| ConnectorError::InvalidOption {
                        option: key.clone(),
                        value: String::new(),
                        reason: format!("expected '{SUBSCRIPTIONS}N' with N a number from 0"),
                    })?;
            numbered.push((index, options.take(&key).unwrap_or_default()));
        }
        numbered.sort_by_key(|(i, _)| *i);
        let single = options.take(SUBSCRIPTION);
        let subscriptions = match single {
            Some(_) if !numbered.is_empty() => {
                return Err(ConnectorError::Usage(format!(
                    "give either '{SUBSCRIPTION}' or '{SUBSCRIPTIONS}N', not both"
                )));
            }
            Some(one) => vec![one],
            None => numbered.into_iter().map(|(_, m)| m).collect(),
        };
        Ok(WebSocketConfig {
            source,
            subscriptions,
        })
    }
}

/// One subtask of a `websocket` source.
pub struct WebSocketSource {
    config: WebSocketConfig,
    reader: LineReader,
    /// Subtask 0: the one that reads.
    reads: bool,
    /// The batch being built brought a message.
    taken: bool,
}

impl WebSocketSource {
    pub fn new(config: WebSocketConfig, reader: LineReader, reads: bool) -> Self {
        WebSocketSource {
            config,
            reader,
            reads,
            taken: false,
        }
    }

    fn refused(&self, e: tungstenite::Error) -> Failed {
        Failed::Fatal(HttpError::WebSocket {
            endpoint: self.config.source.endpoint.to_string(),
            source: Box::new(e),
        })
    }
}

#[async_trait]
impl Feed for WebSocketSource {
    type Item = Message;

    const WHAT: &'static str = "websocket";

    fn endpoint(&self) -> &Endpoint {
        &self.config.source.endpoint
    }

    fn idle_after(&self) -> Option<std::time::Duration> {
        self.config.source.idle
    }

    fn reader(&mut self) -> &mut LineReader {
        &mut self.reader
    }

    async fn connect(&self) -> Result<Connection<Message>, Failed> {
        let source = &self.config.source;
        let mut request = source
            .endpoint
            .url()
            .as_str()
            .into_client_request()
            .map_err(|e| self.refused(e))?;
        for (name, value) in source.headers.iter() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let connect = tokio_tungstenite::connect_async(request);
        let (mut socket, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(Failed::Retry("the handshake timed out".into())),
            Ok(Ok(connected)) => connected,
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status();
                return match verdict(status) {
                    Verdict::Retry | Verdict::Ok => Err(Failed::Retry(format!(
                        "the handshake was answered {status}"
                    ))),
                    Verdict::Refused => Err(self.refused(tungstenite::Error::Http(response))),
                };
            }
            Ok(Err(e @ (tungstenite::Error::Io(_) | tungstenite::Error::Protocol(_)))) => {
                return Err(Failed::Retry(e.to_string()));
            }
            Ok(Err(e)) => return Err(self.refused(e)),
        };
        for message in &self.config.subscriptions {
            socket
                .send(Message::text(message.as_str()))
                .await
                .map_err(|e| Failed::Retry(format!("sending the subscription: {e}")))?;
        }
        Ok(Box::pin(socket.map(|item| match item {
            Ok(Message::Close(frame)) => Err(Broken(match frame {
                Some(f) => format!("the server closed it ({}: {})", f.code, f.reason),
                None => "the server closed it".into(),
            })),
            Ok(message) => Ok(message),
            Err(e) => Err(Broken(e.to_string())),
        })))
    }

    /// Takes a Text or Binary message; Ping, Pong and raw frames bring nothing to emit.
    fn take(&mut self, message: Message, batch: &mut Vec<Bytes>) {
        match message {
            Message::Text(text) => batch.push(Bytes::from(text)),
            Message::Binary(data) => batch.push(data),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => return,
        }
        self.taken = true;
    }

    fn emitted(&mut self) -> bool {
        std::mem::take(&mut self.taken)
    }
}

#[async_trait]
impl Source for WebSocketSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        if !self.reads {
            return stay_idle(ctx).await;
        }
        feed::run(self, ctx).await
    }

    /// No position: a WebSocket cannot be resumed.
    fn snapshot(&self) -> Result<TaskState, TaskError> {
        Ok(TaskState::new())
    }

    fn restore(&mut self, _state: &RestoredState) -> Result<(), TaskError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, &str)]) -> Result<WebSocketConfig, ConnectorError> {
        let mut all = vec![("endpoint".to_string(), "ws://localhost:9/feed".to_string())];
        all.extend(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut options = Options::new(all);
        let config = WebSocketConfig::from_options(&mut options)?;
        assert_eq!(options.unused().count(), 0);
        Ok(config)
    }

    #[test]
    fn subscription_messages_are_sent_in_their_numbered_order() {
        let c = config(&[
            ("subscription_messages.1", "second"),
            ("subscription_messages.0", "first"),
            ("subscription_messages.10", "third"),
        ])
        .unwrap();
        assert_eq!(c.subscriptions, ["first", "second", "third"]);
        let c = config(&[("subscription_message", "only")]).unwrap();
        assert_eq!(c.subscriptions, ["only"]);
    }

    #[test]
    fn both_subscription_forms_or_a_bad_number_are_refused() {
        let err = config(&[
            ("subscription_message", "a"),
            ("subscription_messages.0", "b"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = config(&[("subscription_messages.first", "a")]).unwrap_err();
        assert!(
            matches!(&err, ConnectorError::InvalidOption { option, .. } if option == "subscription_messages.first"),
            "{err}"
        );
    }
}
