//! The HTTP connectors, with Arroyo's option names: three sources that read one remote stream
//! each (`sse`, `websocket`, `polling_http`) and the `webhook` sink.
//!
//! Options every source shares: `endpoint` (required), `headers` (`'Name: value, Name2:
//! value2'`), `format` (`json`, the default, or `raw_string`: the whole message in the one
//! text column, `value TEXT` when no column is declared), `bad_data`, `event_time_field` (else
//! the arrival time, and a quiet stream still moves the watermark along with the clock). Each
//! connector's own options and its delivery guarantee are in its module.
//!
//! What holds for all of them:
//! 1. A source reads on subtask 0 only; the other subtasks tell downstream they are idle, so
//!    they never hold the watermark back, and wait for the stop.
//! 2. A dropped connection, a connection refused, a 5xx, 408 or 429 is retried with a
//!    doubling backoff (a warning, never a failure); any other 4xx, or a redirect where none
//!    is followed, fails the pipeline naming the status: retrying cannot fix it.
//! 3. `endpoint` and `headers` may hold credentials: messages and logs show the endpoint as
//!    `scheme://host:port` only, header values never, and the client's own errors lose their
//!    URL before they are kept.
//! 4. Nothing here blocks the runtime: every wait selects on the stop and on due checkpoint
//!    barriers.

mod feed;
mod polling;
mod sse;
mod webhook;
mod websocket;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use tracing::warn;

use super::lines::{BadData, LineFormat, LineReader, Rows, take_bad_data};
use super::{ConnectorError, ConnectorTable, Options, TableKind};
use crate::task::{
    ErrorKind, Fault, OperatorFactory, SourceContext, SourceEnd, SourceFactory, TaskError,
    TaskState, UserFault,
};

/// How long a TCP (and TLS) connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive probes find a peer that vanished without closing a quiet stream.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// The first wait before a reconnect or a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a source whose event time is the arrival time moves the watermark on while no
/// data comes.
const IDLE_WATERMARK_EVERY: Duration = Duration::from_secs(1);
/// The most messages a source emits as one batch.
const BATCH_MESSAGES: usize = 1024;
/// How much of a refusing answer's body an error quotes.
const DETAIL_CHARS: usize = 200;

/// An HTTP connector's settings, parsed from its table's options.
#[derive(Debug, Clone)]
pub enum HttpConfig {
    Sse(sse::SseConfig),
    WebSocket(websocket::WebSocketConfig),
    Polling(polling::PollingConfig),
    Webhook(webhook::WebhookConfig),
}

/// Errors of the HTTP connectors while they run. Connection losses and answers worth a retry
/// are not errors: they are retried and logged.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP client could not be set up (its TLS roots, say).
    #[error("setting up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The endpoint answered with a status that retrying cannot fix.
    #[error("{endpoint} answered {status}{detail}")]
    Refused {
        endpoint: String,
        status: reqwest::StatusCode,
        /// `: ` and the start of the answer's body, or nothing.
        detail: String,
    },
    /// The websocket server refused the handshake or the URL cannot be used.
    #[error("{endpoint}: the websocket connection was refused")]
    WebSocket {
        endpoint: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// Rows could not be encoded for a webhook.
    #[error("encoding rows")]
    Encode(#[source] datafusion::arrow::error::ArrowError),
    /// The webhook's delivery task ended without saying why (it panicked or was aborted).
    #[error("the webhook's delivery task ended unexpectedly")]
    DeliveryLost,
}

impl Fault for HttpError {
    fn kind(&self) -> ErrorKind {
        match self {
            HttpError::Refused { .. } | HttpError::WebSocket { .. } => {
                ErrorKind::User(UserFault::BadOption)
            }
            HttpError::Client(_) | HttpError::Encode(_) | HttpError::DeliveryLost => {
                ErrorKind::Internal
            }
        }
    }
}

/// An endpoint, and how messages show it: `scheme://host:port`, since its path, query and
/// user info may carry credentials. Its `Debug` shows no more.
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    shown: String,
}

impl Endpoint {
    /// Parses `endpoint`, whose scheme must be one of `schemes`.
    fn parse(text: &str, schemes: &[&str]) -> Result<Endpoint, ConnectorError> {
        let invalid = |reason: String| ConnectorError::InvalidOption {
            option: "endpoint".into(),
            // The value may hold credentials: only its start is repeated.
            value: shown_prefix(text),
            reason,
        };
        let url = Url::parse(text.trim()).map_err(|e| invalid(e.to_string()))?;
        if !schemes.contains(&url.scheme()) {
            return Err(invalid(format!(
                "the scheme must be {}",
                schemes
                    .iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        if url.host_str().is_none() {
            return Err(invalid("the URL names no host".into()));
        }
        let shown = match url.port() {
            Some(port) => format!(
                "{}://{}:{port}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ),
            None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()),
        };
        Ok(Endpoint { url, shown })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// The scheme and host of what should have been a URL, for a message about it.
fn shown_prefix(text: &str) -> String {
    let text = text.trim();
    let after_scheme = text.find("://").map_or(0, |i| i + 3);
    let end = text[after_scheme..]
        .find(['/', '?', '#', '@'])
        .map_or(text.len(), |i| after_scheme + i);
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.shown)
    }
}

/// Request headers from `headers = 'Name: value, Name2: value2'`. Values are marked
/// sensitive, so their `Debug` never shows them.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(HeaderName, HeaderValue)>);

impl Headers {
    fn parse(text: &str) -> Result<Headers, ConnectorError> {
        let invalid = |value: &str, reason: &str| ConnectorError::InvalidOption {
            option: "headers".into(),
            value: value.into(),
            reason: reason.into(),
        };
        let mut headers = Vec::new();
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            // The value is never repeated in a message: it may be a credential.
            let (name, value) = pair.split_once(':').ok_or_else(|| {
                invalid(
                    pair.trim(),
                    "expected 'Name: value' pairs separated by commas",
                )
            })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(name.trim(), "not a valid header name"))?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                invalid(
                    name.as_str(),
                    "the value of this header has characters a header cannot carry",
                )
            })?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        Ok(Headers(headers))
    }

    fn take(options: &mut Options) -> Result<Headers, ConnectorError> {
        options
            .take("headers")
            .map_or(Ok(Headers::default()), |h| Headers::parse(&h))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// True when a header of this name is set.
    fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

/// What every HTTP source has: where it reads, and how messages become rows.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    endpoint: Endpoint,
    headers: Headers,
    format: LineFormat,
    bad_data: BadData,
    /// `idle_micros` / `idle_time`: with no message for this long, subtask 0 stops holding
    /// the watermark back (see [`Quiet`]).
    idle: Option<Duration>,
}

impl SourceOptions {
    /// Takes the shared source options; `schemes` are the endpoint's allowed schemes.
    fn take(
        connector: &str,
        options: &mut Options,
        schemes: &[&str],
    ) -> Result<SourceOptions, ConnectorError> {
        let endpoint = Endpoint::parse(&options.require(connector, "endpoint")?, schemes)?;
        Ok(SourceOptions {
            endpoint,
            headers: Headers::take(options)?,
            format: take_format(connector, options)?,
            bad_data: take_bad_data(options)?,
            idle: options.take_idle()?,
        })
    }
}

/// Takes `format`: `json` (the default) or `raw_string`.
fn take_format(connector: &str, options: &mut Options) -> Result<LineFormat, ConnectorError> {
    match options.take("format").as_deref() {
        None | Some("json") => Ok(LineFormat::Json),
        Some("raw_string") => Ok(LineFormat::Raw),
        Some(other) => Err(ConnectorError::InvalidOption {
            option: "format".into(),
            value: other.into(),
            reason: format!("the {connector} connector reads and writes 'json' or 'raw_string'"),
        }),
    }
}

/// The one text column of a `raw_string` table.
fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
}

/// Checks that a `raw_string` table has exactly one text column.
fn check_raw(schema: &SchemaRef) -> Result<(), ConnectorError> {
    if schema.fields().len() != 1 || schema.field(0).data_type() != &DataType::Utf8 {
        return Err(ConnectorError::Usage(
            "a raw_string table has exactly one text column (value TEXT)".into(),
        ));
    }
    Ok(())
}

/// Parses the options of an HTTP connector's table: its settings, columns and kind.
pub(super) fn from_options(
    connector: &str,
    columns: Option<SchemaRef>,
    options: &mut Options,
) -> Result<(HttpConfig, SchemaRef, TableKind), ConnectorError> {
    if connector == "webhook" {
        let config = webhook::WebhookConfig::from_options(options)?;
        let schema = columns.unwrap_or_else(|| Arc::new(Schema::empty()));
        if config.format() == LineFormat::Raw && !schema.fields().is_empty() {
            check_raw(&schema)?;
        }
        return Ok((HttpConfig::Webhook(config), schema, TableKind::Sink));
    }
    let config = match connector {
        "sse" => HttpConfig::Sse(sse::SseConfig::from_options(options)?),
        "websocket" => HttpConfig::WebSocket(websocket::WebSocketConfig::from_options(options)?),
        _ => HttpConfig::Polling(polling::PollingConfig::from_options(options)?),
    };
    let common = config.source().expect("a source");
    let schema = match (columns, common.format) {
        (Some(schema), LineFormat::Raw) => {
            check_raw(&schema)?;
            schema
        }
        (None, LineFormat::Raw) => raw_schema(),
        (Some(schema), _) => schema,
        (None, _) => {
            return Err(ConnectorError::Usage(format!(
                "a {connector} source with format 'json' needs its columns declared"
            )));
        }
    };
    Ok((config, schema, TableKind::Source))
}

impl HttpConfig {
    fn source(&self) -> Option<&SourceOptions> {
        match self {
            HttpConfig::Sse(c) => Some(&c.source),
            HttpConfig::WebSocket(c) => Some(&c.source),
            HttpConfig::Polling(c) => Some(&c.source),
            HttpConfig::Webhook(_) => None,
        }
    }

    /// A factory for the source's subtasks.
    pub(super) fn source_factory(
        &self,
        table: &ConnectorTable,
        projection: Option<Vec<usize>>,
    ) -> Result<Arc<dyn SourceFactory>, ConnectorError> {
        let Some(common) = self.source() else {
            return Err(ConnectorError::Usage(format!(
                "table '{}' is a sink and cannot be read from",
                table.name
            )));
        };
        let rows = Arc::new(Rows::new(
            common.format,
            common.bad_data,
            table.schema.clone(),
            table.event_time.clone(),
            table.generated.clone(),
            projection,
        ));
        Ok(Arc::new(HttpSourceFactory {
            config: self.clone(),
            rows,
        }))
    }

    /// A factory for the webhook's subtasks; `updating` when its input is an updating result.
    pub(super) fn sink_factory(
        &self,
        table: &ConnectorTable,
        updating: bool,
    ) -> Result<Arc<dyn OperatorFactory>, ConnectorError> {
        match self {
            HttpConfig::Webhook(config) => {
                webhook::WebhookFactory::new(table, config.clone(), updating)
                    .map(|f| Arc::new(f) as Arc<dyn OperatorFactory>)
            }
            _ => Err(ConnectorError::Usage(format!(
                "table '{}' is a source and cannot be written to",
                table.name
            ))),
        }
    }
}

/// Builds the subtasks of an HTTP source.
struct HttpSourceFactory {
    config: HttpConfig,
    rows: Arc<Rows>,
}

impl SourceFactory for HttpSourceFactory {
    fn create(
        &self,
        info: &crate::task::TaskInfo,
    ) -> Result<Box<dyn crate::task::Source>, TaskError> {
        let shown = |what: &str, endpoint: &Endpoint| format!("{what} {endpoint}");
        let reader = |label: String| LineReader::new(self.rows.clone(), info, label);
        let reads = info.subtask == 0;
        Ok(match &self.config {
            HttpConfig::Sse(c) => Box::new(
                sse::SseSource::new(
                    c.clone(),
                    reader(shown("sse stream", &c.source.endpoint)),
                    reads,
                )
                .map_err(|e| TaskError::connector(&info.node, e))?,
            ),
            HttpConfig::WebSocket(c) => Box::new(websocket::WebSocketSource::new(
                c.clone(),
                reader(shown("websocket", &c.source.endpoint)),
                reads,
            )),
            HttpConfig::Polling(c) => Box::new(
                polling::PollingSource::new(
                    c.clone(),
                    reader(shown("polling_http", &c.source.endpoint)),
                    reads,
                )
                .map_err(|e| TaskError::connector(&info.node, e))?,
            ),
            HttpConfig::Webhook(_) => {
                return Err(TaskError::connector(&info.node, HttpError::DeliveryLost));
            }
        })
    }
}

/// A subtask of a source that reads on subtask 0 only: it tells downstream it is idle, then
/// takes part in checkpoints (with an empty state) until the stop.
async fn stay_idle(ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
    ctx.idle().await?;
    loop {
        if ctx.should_stop() {
            return Ok(SourceEnd::Stopped);
        }
        if let Some(end) = ctx.checkpoint_if_due(|| Ok(TaskState::new())).await? {
            return Ok(end);
        }
        ctx.stopped().await;
    }
}

/// What a reading subtask does while no message comes, each [`IDLE_WATERMARK_EVERY`]: when
/// the event time is the arrival time, it moves the watermark on with the clock; otherwise,
/// once nothing has come for the idle time, it tells downstream it is idle (Arroyo's
/// `idle_micros`), so that a quiet stream does not hold back the windows of the others. The
/// next message's watermark ends the idleness.
struct Quiet {
    after: Option<Duration>,
    since: tokio::time::Instant,
    announced: bool,
}

impl Quiet {
    fn new(after: Option<Duration>) -> Quiet {
        Quiet {
            after,
            since: tokio::time::Instant::now(),
            announced: false,
        }
    }

    /// Messages came.
    fn data(&mut self) {
        self.since = tokio::time::Instant::now();
        self.announced = false;
    }

    async fn tick(
        &mut self,
        reader: &LineReader,
        ctx: &mut SourceContext,
    ) -> Result<(), TaskError> {
        if let Some(w) = reader.arrival_watermark() {
            return ctx.watermark(w).await;
        }
        if !self.announced && self.after.is_some_and(|d| self.since.elapsed() >= d) {
            self.announced = true;
            tracing::debug!(node = %ctx.info().node, "source idle");
            ctx.idle().await?;
        }
        Ok(())
    }
}

/// The HTTP client of a connector: connection timeout and keep-alive set; `timeout` bounds a
/// whole request (None for a stream). Redirects are followed only when `follow_redirects`.
fn client(timeout: Option<Duration>, follow_redirects: bool) -> Result<reqwest::Client, HttpError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .user_agent(concat!("arroyod/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    if !follow_redirects {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    builder.build().map_err(HttpError::Client)
}

/// A request's headers: the table's, over `defaults` the connector sets unless given.
fn with_headers(
    mut request: reqwest::RequestBuilder,
    headers: &Headers,
    defaults: &[(HeaderName, &'static str)],
) -> reqwest::RequestBuilder {
    for (name, value) in defaults {
        if !headers.has(name) {
            request = request.header(name, *value);
        }
    }
    for (name, value) in headers.iter() {
        request = request.header(name, value);
    }
    request
}

/// What to do about an answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// 5xx, 408, 429: the server may answer better later.
    Retry,
    /// Any other 4xx, or a redirect: retrying cannot help.
    Refused,
}

fn verdict(status: reqwest::StatusCode) -> Verdict {
    if status.is_success() {
        Verdict::Ok
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Verdict::Retry
    } else {
        Verdict::Refused
    }
}

/// The error of a refusing answer, quoting the start of its body.
async fn refused(endpoint: &Endpoint, response: reqwest::Response) -> HttpError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(DETAIL_CHARS).collect();
    HttpError::Refused {
        endpoint: endpoint.to_string(),
        status,
        detail: if body.is_empty() {
            String::new()
        } else {
            format!(": {body}")
        },
    }
}

/// A client error with its URL removed (its message would show it), as a text for a log.
fn describe(e: reqwest::Error) -> String {
    crate::task::error_chain(&e.without_url())
}

/// A doubling wait between attempts; after a success the caller starts a new one.
#[derive(Debug, Clone)]
struct Backoff {
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { max, next: first }
    }

    /// The wait before the next attempt; the one after is twice as long, up to the cap.
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_BACKOFF, MAX_BACKOFF)
    }
}

/// Logs a failed attempt that will be retried: the first at once, then at most one a
/// period, with the count in between.
struct RetryLog {
    every: Duration,
    last: Option<tokio::time::Instant>,
    quiet: u64,
}

impl RetryLog {
    fn new(every: Duration) -> RetryLog {
        RetryLog {
            every,
            last: None,
            quiet: 0,
        }
    }

    fn warn(&mut self, endpoint: &Endpoint, what: &str, error: &str, retry_in: Duration) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|l| now - l < self.every) {
            self.quiet += 1;
            return;
        }
        warn!(
            endpoint = %endpoint,
            error,
            retry_in = ?retry_in,
            unlogged_failures = self.quiet,
            "{what}; retrying"
        );
        self.last = Some(now);
        self.quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(entries: &[(&str, &str)]) -> Options {
        Options::new(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn endpoints_are_shown_without_path_query_or_credentials() {
        let e = Endpoint::parse(
            "https://user:pw@hooks.example.com:8443/services/T0/B0/SECRET?token=x",
            &["https"],
        )
        .unwrap();
        assert_eq!(e.to_string(), "https://hooks.example.com:8443");
        assert!(!format!("{e:?}").contains("SECRET"));
        let err = Endpoint::parse("ws://example.com/feed?token=x", &["http", "https"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("'http' or 'https'"), "{text}");
        assert!(!text.contains("token"), "{text}");
        let err = Endpoint::parse("not a url/with?secret", &["http"]).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn headers_parse_and_never_show_their_values() {
        let h = Headers::parse("Authorization: Bearer abc123, X-Team: data").unwrap();
        let pairs: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [("authorization", "Bearer abc123"), ("x-team", "data")]
        );
        assert!(!format!("{h:?}").contains("abc123"));
        let err = Headers::parse("Authorization Bearer abc123").unwrap_err();
        assert!(err.to_string().contains("'Name: value'"), "{err}");
        let err = Headers::parse("Bad Name: x").unwrap_err();
        assert!(err.to_string().contains("not a valid header name"), "{err}");
        let err = Headers::parse("X-Token: abc\u{1}def").unwrap_err();
        assert!(!err.to_string().contains("abc"), "{err}");
    }

    #[test]
    fn statuses_are_retried_or_refused() {
        use reqwest::StatusCode as S;
        assert_eq!(verdict(S::OK), Verdict::Ok);
        assert_eq!(verdict(S::NO_CONTENT), Verdict::Ok);
        for s in [
            S::SERVICE_UNAVAILABLE,
            S::INTERNAL_SERVER_ERROR,
            S::TOO_MANY_REQUESTS,
            S::REQUEST_TIMEOUT,
        ] {
            assert_eq!(verdict(s), Verdict::Retry, "{s}");
        }
        for s in [S::BAD_REQUEST, S::UNAUTHORIZED, S::NOT_FOUND, S::FOUND] {
            assert_eq!(verdict(s), Verdict::Refused, "{s}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
    }

    #[test]
    fn sources_need_columns_for_json_and_one_text_column_for_raw() {
        let mut o = options(&[("endpoint", "http://localhost/x"), ("format", "raw_string")]);
        let (_, schema, kind) = from_options("sse", None, &mut o).unwrap();
        assert_eq!(kind, TableKind::Source);
        assert_eq!(schema.field(0).name(), "value");
        let mut o = options(&[("endpoint", "http://localhost/x")]);
        assert!(matches!(
            from_options("sse", None, &mut o),
            Err(ConnectorError::Usage(_))
        ));
        let two = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let mut o = options(&[("endpoint", "http://localhost/x"), ("format", "raw_string")]);
        assert!(from_options("polling_http", Some(two), &mut o).is_err());
        let mut o = options(&[("endpoint", "http://localhost/x"), ("format", "avro")]);
        let err = from_options("sse", Some(raw_schema()), &mut o).unwrap_err();
        assert!(matches!(err, ConnectorError::InvalidOption { option, .. } if option == "format"));
    }
}
