//! librdkafka clients: their settings, a context that turns librdkafka's logs and errors into
//! `tracing` events (and remembers the last error, for start-up messages), and the start-up
//! check every client makes within the connection's deadline.
//!
//! Calls here block: run them on the blocking pool ([`blocking`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdError, KafkaResult};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};
use tracing::{debug, info, trace, warn};

use super::{Connection, KafkaError};

/// Runs a blocking librdkafka call on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(KafkaError::Blocking)?
}

/// Tells a blocking call that its caller went away (set when dropped), so that a start-up
/// wait does not outlive a stop.
#[derive(Default)]
pub(super) struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a client's context saw: the last error, an authentication failure, failed
/// deliveries.
pub(super) struct KafkaContext {
    /// Names the client in logs: the node and subtask, and its role.
    name: String,
    broker: String,
    last_error: Mutex<Option<String>>,
    auth_failure: Mutex<Option<String>>,
    /// The first delivery that failed (a producer's), not yet reported.
    delivery_failure: Mutex<Option<String>>,
}

impl KafkaContext {
    pub fn new(name: String, connection: &Connection) -> KafkaContext {
        KafkaContext {
            name,
            broker: connection.bootstrap.clone(),
            last_error: Mutex::new(None),
            auth_failure: Mutex::new(None),
            delivery_failure: Mutex::new(None),
        }
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("context lock").clone()
    }

    pub fn auth_failure(&self) -> Option<String> {
        self.auth_failure.lock().expect("context lock").clone()
    }

    /// The first failed delivery since the last call.
    pub fn take_delivery_failure(&self) -> Option<String> {
        self.delivery_failure.lock().expect("context lock").take()
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let client = self.name.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => warn!(client, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice => info!(client, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Info => debug!(client, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Debug => trace!(client, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: RdError, reason: &str) {
        let text = format!("{error}: {reason}");
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            *self.auth_failure.lock().expect("context lock") = Some(reason.to_string());
        }
        let mut last = self.last_error.lock().expect("context lock");
        // librdkafka repeats a broker's error at every reconnect: log each one once in a row.
        if last.as_deref() != Some(text.as_str()) {
            warn!(client = %self.name, broker = %self.broker, error = %text, "kafka client error (librdkafka retries)");
        }
        *last = Some(text);
    }
}

impl ConsumerContext for KafkaContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                debug!(client = %self.name, partitions = offsets.count(), "offsets committed to the group")
            }
            Err(e) => {
                warn!(client = %self.name, broker = %self.broker, error = %e, "committing offsets to the group failed")
            }
        }
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {}
            Err((e, message)) => {
                let mut failure = self.delivery_failure.lock().expect("context lock");
                if failure.is_none() {
                    *failure = Some(format!("partition {}: {e}", message.partition()));
                }
            }
        }
    }
}

/// The settings every client of `connection` starts from: the broker, then `auth.*` and
/// `client_configs` (which override what the connector sets before applying them).
pub(super) fn base_config(connection: &Connection, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &connection.bootstrap);
    config.set_log_level(RDKafkaLogLevel::Info);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in &connection.settings {
        config.set(k, v);
    }
    config
}

/// A consumer that never joins its group (assign only), for metadata, offsets and group
/// commits.
pub(super) fn consumer(
    connection: &Connection,
    name: String,
    group: &str,
    defaults: &[(&str, &str)],
) -> Result<BaseConsumer<KafkaContext>, KafkaError> {
    let mut all = vec![
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
        ("allow.auto.create.topics", "false"),
    ];
    all.extend_from_slice(defaults);
    base_config(connection, &all)
        .create_with_context(KafkaContext::new(name, connection))
        .map_err(|source| KafkaError::Client {
            broker: connection.bootstrap.clone(),
            source: Box::new(source),
        })
}

/// Waits until the broker answers a metadata request for `topic`: its partition ids, in
/// order. Fails at once when the topic does not exist or the credentials are refused, and
/// after the connection's start-up deadline when the broker does not answer.
pub(super) fn partitions(
    client: &BaseConsumer<KafkaContext>,
    connection: &Connection,
    topic: &str,
    abandoned: &AtomicBool,
) -> Result<Vec<i32>, KafkaError> {
    let context = client.context();
    let started = Instant::now();
    let deadline = started + connection.startup_timeout;
    loop {
        // Serves the client's callbacks: its errors reach the context.
        let _ = client.poll(Duration::ZERO);
        if abandoned.load(Ordering::Relaxed) {
            return Err(KafkaError::Abandoned);
        }
        if let Some(reason) = context.auth_failure() {
            return Err(KafkaError::Authentication {
                broker: connection.bootstrap.clone(),
                topic: topic.to_string(),
                reason,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let result = client.fetch_metadata(Some(topic), left.min(Duration::from_secs(1)));
        match result {
            Ok(metadata) => {
                let found = metadata.topics().iter().find(|t| t.name() == topic);
                let missing = found.is_none_or(|t| {
                    t.error().is_some_and(|e| {
                        RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition
                    }) || t.partitions().is_empty()
                });
                if missing {
                    return Err(KafkaError::MissingTopic {
                        broker: connection.bootstrap.clone(),
                        topic: topic.to_string(),
                    });
                }
                if let Some(t) = found.filter(|t| t.error().is_none()) {
                    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    ids.sort_unstable();
                    return Ok(ids);
                }
            }
            Err(e) if Instant::now() >= deadline => {
                let _ = client.poll(Duration::ZERO);
                return Err(KafkaError::Unreachable {
                    broker: connection.bootstrap.clone(),
                    topic: topic.to_string(),
                    waited: started.elapsed(),
                    reason: context.last_error().unwrap_or_else(|| e.to_string()),
                });
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Unreachable {
                broker: connection.bootstrap.clone(),
                topic: topic.to_string(),
                waited: started.elapsed(),
                reason: context
                    .last_error()
                    .unwrap_or_else(|| "the topic's metadata has an error".into()),
            });
        }
        // fetch_metadata waits up to its timeout when the broker is down; a refused answer
        // comes at once, so pace the retries.
        std::thread::sleep(Duration::from_millis(100).min(left));
    }
}

/// `Some(error)` when a broker call failed: wraps it with what was done.
pub(super) fn broker_error(
    connection: &Connection,
    topic: &str,
    what: impl Into<String>,
) -> impl FnOnce(RdError) -> KafkaError {
    let (broker, topic, what) = (connection.bootstrap.clone(), topic.to_string(), what.into());
    move |source| KafkaError::Broker {
        what,
        broker,
        topic,
        source: Box::new(source),
    }
}
