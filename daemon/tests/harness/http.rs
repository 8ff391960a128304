//! Real HTTP, SSE and WebSocket servers on loopback for the HTTP connectors' tests: hyper 1
//! (HTTP/1.1) and tokio-tungstenite, each on a runtime of its own that is shut down on drop.
//! What a server does on each connection follows a script, so tests can drop a connection,
//! refuse one, or answer 503 and then come back; everything a server saw is recorded for the
//! test to check.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, std::io::Error>> + Send>>
        + Send
        + Sync,
>;

/// A whole body.
pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// A runtime that serves one listener on loopback until dropped.
pub struct Server {
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test server")
    }

    fn listener() -> (std::net::TcpListener, u16) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Serves HTTP/1.1 with `handler`; a handler error drops the connection unanswered.
    fn http(handler: Handler) -> Server {
        let runtime = Server::runtime();
        let (listener, port) = Server::listener();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handler(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            port,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What a server does with one connection (or request), in order; the last step repeats.
#[derive(Debug, Clone)]
pub enum Step {
    /// Close the connection at once, without an answer.
    Reset,
    /// Answer with this status and no stream.
    Status(u16),
    /// Serve events/messages up to this number, then break the connection off
    /// (SSE: the body ends in an error; WebSocket: TCP closes without a Close frame).
    BreakAfter(u64),
    /// Serve events/messages up to this number, then end the stream cleanly.
    EndAfter(u64),
    /// Serve every event/message there is, then keep the connection open.
    Hold,
}

/// The script of a server: the step of each connection (or request), the last one
/// repeating, or all of them over again when it cycles.
#[derive(Debug)]
struct Script {
    steps: VecDeque<Step>,
    cycle: bool,
}

impl Script {
    fn new(steps: Vec<Step>, cycle: bool) -> Arc<Mutex<Script>> {
        assert!(!steps.is_empty(), "a script with a step");
        Arc::new(Mutex::new(Script {
            steps: steps.into(),
            cycle,
        }))
    }

    fn next(&mut self) -> Step {
        if self.cycle {
            let step = self.steps.pop_front().unwrap();
            self.steps.push_back(step.clone());
            step
        } else if self.steps.len() > 1 {
            self.steps.pop_front().unwrap()
        } else {
            self.steps[0].clone()
        }
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    /// The step it was answered with.
    pub step: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// An SSE server: events `1..=total` with `id: n`, every `other_every`-th of type `other`
/// (the rest `tick`), data `{"n": n}`, sent every `pace`; a connection resumes after its
/// `Last-Event-ID`.
pub struct SseServer {
    pub server: Server,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl SseServer {
    pub fn start(total: u64, other_every: u64, pace: Duration, steps: Vec<Step>) -> SseServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Script::new(steps, false);
        let log = seen.clone();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let step = script.lock().unwrap().next();
            let log = log.clone();
            Box::pin(async move {
                let from: u64 = req
                    .headers()
                    .get("last-event-id")
                    .map(|v| v.to_str().unwrap().parse().unwrap())
                    .unwrap_or(0);
                log.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    path: req.uri().to_string(),
                    headers: req.headers().clone(),
                    body: String::new(),
                    step: format!("{step:?}"),
                });
                let (last, end) = match step {
                    Step::Reset => {
                        return Err(std::io::Error::other("reset by the script"));
                    }
                    Step::Status(code) => {
                        return Ok(response(StatusCode::from_u16(code).unwrap(), "not now"));
                    }
                    Step::BreakAfter(n) => (n, Some(true)),
                    Step::EndAfter(n) => (n, Some(false)),
                    Step::Hold => (total, None),
                };
                let events =
                    futures::stream::iter((from + 1)..=last.min(total)).then(move |n| async move {
                        tokio::time::sleep(pace).await;
                        let kind = if other_every > 0 && n % other_every == 0 {
                            "other"
                        } else {
                            "tick"
                        };
                        Ok(Frame::data(Bytes::from(format!(
                            "id: {n}\nevent: {kind}\ndata: {{\"n\": {n}}}\n\n"
                        ))))
                    });
                let tail: Pin<
                    Box<dyn futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>,
                > = match end {
                    // A moment first, so the events before are on the wire.
                    Some(true) => Box::pin(futures::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(std::io::Error::other("broken off by the script"))
                    })),
                    Some(false) => Box::pin(futures::stream::empty()),
                    // Held open: comments now and then, as servers do.
                    None => Box::pin(futures::stream::unfold((), |()| async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Ok(Frame::data(Bytes::from_static(b": idle\n\n"))), ()))
                    })),
                };
                let body = StreamBody::new(events.chain(tail));
                let mut r = Response::new(BodyExt::boxed_unsync(body));
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok(r)
            })
        });
        SseServer {
            server: Server::http(handler),
            seen,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A server that answers every request from a body the test can change, with a status
/// script.
pub struct PollServer {
    pub server: Server,
    pub body: Arc<Mutex<String>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl PollServer {
    /// `steps`, over and over: `Status(200)` (answer the body), another status (answer
    /// "busy") or `Reset`.
    pub fn start(body: &str, steps: Vec<Step>) -> PollServer {
        let current = Arc::new(Mutex::new(body.to_string()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Script::new(steps, true);
        let (body, log) = (current.clone(), seen.clone());
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let step = script.lock().unwrap().next();
            let (body, log) = (body.clone(), log.clone());
            Box::pin(async move {
                let (method, path, headers) = (
                    req.method().to_string(),
                    req.uri().to_string(),
                    req.headers().clone(),
                );
                let sent = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(std::io::Error::other)?;
                log.lock().unwrap().push(Seen {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&sent.to_bytes()).into_owned(),
                    step: format!("{step:?}"),
                });
                match step {
                    Step::Status(200) => Ok(response(StatusCode::OK, body.lock().unwrap().clone())),
                    Step::Status(code) => Ok(response(StatusCode::from_u16(code).unwrap(), "busy")),
                    Step::Reset => Err(std::io::Error::other("reset by the script")),
                    other => panic!("a poll server does not {other:?}"),
                }
            })
        });
        PollServer {
            server: Server::http(handler),
            body: current,
            seen,
        }
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    pub fn polls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A webhook receiver: answers each request by its script (`Status(code)` or `Reset`) and
/// keeps the bodies it answered 2xx, which are what was delivered.
pub struct HookServer {
    pub server: Server,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl HookServer {
    /// A 429 goes with `Retry-After: 0`; a 4xx carries `refusal` as its body.
    pub fn start(steps: Vec<Step>, refusal: &str) -> HookServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Script::new(steps, false);
        let log = seen.clone();
        let refusal = refusal.to_string();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let step = script.lock().unwrap().next();
            let (log, refusal) = (log.clone(), refusal.clone());
            Box::pin(async move {
                let (method, path, headers) = (
                    req.method().to_string(),
                    req.uri().to_string(),
                    req.headers().clone(),
                );
                let sent = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(std::io::Error::other)?;
                log.lock().unwrap().push(Seen {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&sent.to_bytes()).into_owned(),
                    step: format!("{step:?}"),
                });
                match step {
                    Step::Reset => Err(std::io::Error::other("reset by the script")),
                    Step::Status(429) => {
                        let mut r = response(StatusCode::TOO_MANY_REQUESTS, "slow down");
                        r.headers_mut().insert("retry-after", "0".parse().unwrap());
                        Ok(r)
                    }
                    Step::Status(code) if (400..500).contains(&code) => {
                        Ok(response(StatusCode::from_u16(code).unwrap(), refusal))
                    }
                    Step::Status(code) => Ok(response(StatusCode::from_u16(code).unwrap(), "")),
                    other => panic!("a webhook server does not {other:?}"),
                }
            })
        });
        HookServer {
            server: Server::http(handler),
            seen,
        }
    }

    /// The bodies answered 2xx.
    pub fn delivered(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.step == "Status(200)")
            .cloned()
            .collect()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One WebSocket connection as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct WsConnection {
    pub headers: Option<HeaderMap>,
    /// The text messages the client sent before the server started sending.
    pub subscriptions: Vec<String>,
    /// The client answered the server's pings.
    pub pongs: usize,
    pub step: String,
}

/// A WebSocket server: on each connection it reads `subscriptions` messages, then sends a
/// Ping, the messages `{"conn": c, "n": n}` for n up to its step's number (`c` counts
/// connections from 0), and a Ping after them, whose Pong shows the client read them all;
/// then it breaks off, or holds the connection open.
pub struct WsServer {
    pub port: u16,
    pub connections: Arc<Mutex<Vec<WsConnection>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl WsServer {
    pub fn start(subscriptions: usize, steps: Vec<Step>) -> WsServer {
        let runtime = Server::runtime();
        let (listener, port) = Server::listener();
        let connections = Arc::new(Mutex::new(Vec::<WsConnection>::new()));
        let log = connections.clone();
        let script = Script::new(steps, false);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let step = script.lock().unwrap().next();
                let index = {
                    let mut all = log.lock().unwrap();
                    all.push(WsConnection {
                        step: format!("{step:?}"),
                        ..WsConnection::default()
                    });
                    all.len() - 1
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let last = match step {
                        Step::Reset => return drop(stream),
                        Step::BreakAfter(n) | Step::EndAfter(n) => n,
                        Step::Hold => u64::MAX,
                        Step::Status(_) => panic!("a websocket server answers no status"),
                    };
                    let headers = Arc::new(Mutex::new(None));
                    let keep = headers.clone();
                    // tungstenite's callback type returns its large error response.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &WsRequest, resp: WsResponse| {
                        *keep.lock().unwrap() = Some(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    log.lock().unwrap()[index].headers = headers.lock().unwrap().take();
                    let mut got = Vec::new();
                    while got.len() < subscriptions {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                    log.lock().unwrap()[index].subscriptions = got;
                    if ws
                        .send(Message::Ping(Bytes::from_static(b"first")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let count = if last == u64::MAX { 30 } else { last };
                    for n in 1..=count {
                        let text = format!("{{\"conn\": {index}, \"n\": {n}}}");
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                    if ws
                        .send(Message::Ping(Bytes::from_static(b"last")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // Read until the client answered the last ping (it read everything).
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Pong(data) = message {
                            log.lock().unwrap()[index].pongs += 1;
                            if &data[..] == b"last" {
                                break;
                            }
                        }
                    }
                    match step {
                        Step::EndAfter(_) => {
                            let _ = ws.close(None).await;
                        }
                        // Held open: answer whatever comes until the server is dropped.
                        Step::Hold => while let Some(Ok(_)) = ws.next().await {},
                        // Broken off: the TCP connection closes with no Close frame.
                        _ => drop(ws),
                    }
                });
            }
        });
        WsServer {
            port,
            connections,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn connections(&self) -> Vec<WsConnection> {
        self.connections.lock().unwrap().clone()
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
