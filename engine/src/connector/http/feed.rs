//! The loop both streaming sources (`sse`, `websocket`) run on subtask 0: connect, read what
//! arrives in batches, reconnect with backoff when the connection ends or breaks, and between
//! batches take due checkpoints and heed the stop.
//!
//! 1. Not connected: wait until the backoff allows, then connect (a stop or a due barrier
//!    interrupts both; the attempt is made again afterwards). A retryable failure doubles the
//!    backoff; a fatal one fails the source.
//! 2. Connected: wait for the next item; then take every item already arrived, up to a batch,
//!    and emit the batch. Only then does the position move past it ([`Feed::emitted`]), so a
//!    checkpoint (taken only between batches) records exactly what was emitted.
//! 3. The connection ends or breaks: the items before are emitted first, then it reconnects.
//!    A batch that brought something resets the backoff.
//! 4. While no data comes, a source whose event time is the arrival time moves its
//!    watermark on each second; any other tells downstream it is idle once nothing has come
//!    for `idle_micros` ([`super::Quiet`]).

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tracing::info;

use super::{Backoff, Endpoint, HttpError, IDLE_WATERMARK_EVERY, MAX_BACKOFF, Quiet, RetryLog};
use crate::connector::lines::LineReader;
use crate::task::{Source, SourceContext, SourceEnd, TaskError};

/// One connection's items as they arrive; an error ends the connection (and is logged).
pub(super) type Connection<I> = Pin<Box<dyn Stream<Item = Result<I, Broken>> + Send>>;

/// Why a connection ended: logged as a warning, then the source reconnects.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Broken(pub String);

/// How a connection attempt failed.
pub(super) enum Failed {
    /// Worth another attempt: logged, not fatal.
    Retry(String),
    Fatal(HttpError),
}

/// A source that reads one remote stream over connections that may end.
#[async_trait]
pub(super) trait Feed: Source {
    type Item: Send + 'static;

    /// How the logs name the stream.
    const WHAT: &'static str;

    fn endpoint(&self) -> &Endpoint;

    /// The idle time (`idle_micros`), if idleness is on.
    fn idle_after(&self) -> Option<Duration>;

    fn reader(&mut self) -> &mut LineReader;

    /// Opens a connection, resuming where the position says.
    async fn connect(&self) -> Result<Connection<Self::Item>, Failed>;

    /// Takes one item: a message to emit into `batch`, or something to note.
    fn take(&mut self, item: Self::Item, batch: &mut Vec<Bytes>);

    /// The batch taken since the last call is out: the position moves past it. True when the
    /// batch brought anything (which resets the backoff).
    fn emitted(&mut self) -> bool;

    /// The first wait before a reconnect, when the server asked for one.
    fn retry_hint(&self) -> Option<Duration> {
        None
    }
}

/// Runs `feed` until a stop or a stopping checkpoint.
pub(super) async fn run<F: Feed>(
    feed: &mut F,
    ctx: &mut SourceContext,
) -> Result<SourceEnd, TaskError> {
    let node = ctx.info().node.clone();
    let endpoint = feed.endpoint().clone();
    let mut connection: Option<Connection<F::Item>> = None;
    let mut backoff = Backoff::default();
    let mut log = RetryLog::new(Duration::from_secs(10));
    let mut retry_at = Instant::now();
    let mut tick = tokio::time::interval(IDLE_WATERMARK_EVERY);
    let mut quiet = Quiet::new(feed.idle_after());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if ctx.should_stop() {
            return Ok(SourceEnd::Stopped);
        }
        if let Some(end) = ctx.checkpoint_if_due(|| feed.snapshot()).await? {
            return Ok(end);
        }
        let Some(items) = connection.as_mut() else {
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at) => {}
                _ = tick.tick() => {
                    quiet.tick(feed.reader(), ctx).await?;
                    continue;
                }
                _ = ctx.stopped() => continue,
            }
            let attempt = tokio::select! {
                attempt = feed.connect() => attempt,
                _ = ctx.stopped() => continue,
            };
            match attempt {
                Ok(items) => {
                    info!(endpoint = %endpoint, "connected to the {}", F::WHAT);
                    connection = Some(items);
                }
                Err(Failed::Retry(error)) => {
                    let delay = backoff.next_delay();
                    log.warn(
                        &endpoint,
                        &format!("cannot connect to the {}", F::WHAT),
                        &error,
                        delay,
                    );
                    retry_at = Instant::now() + delay;
                }
                Err(Failed::Fatal(e)) => return Err(TaskError::connector(&node, e)),
            }
            continue;
        };
        let first = tokio::select! {
            next = items.next() => next,
            _ = tick.tick() => {
                quiet.tick(feed.reader(), ctx).await?;
                continue;
            }
            _ = ctx.stopped() => continue,
        };
        let mut batch = Vec::new();
        // What ended the connection, once the items before it are out.
        let mut ended: Option<Broken> = None;
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Some(Ok(item)) => feed.take(item, &mut batch),
                Some(Err(error)) => {
                    ended = Some(error);
                    break;
                }
                None => {
                    ended = Some(Broken("the server ended it".into()));
                    break;
                }
            }
            if batch.len() >= super::BATCH_MESSAGES {
                break;
            }
            next = items.next().now_or_never();
        }
        if !batch.is_empty() {
            quiet.data();
            feed.reader().emit_messages(ctx, &batch).await?;
        }
        if feed.emitted() {
            backoff = Backoff::new(
                feed.retry_hint()
                    .unwrap_or(super::FIRST_BACKOFF)
                    .min(MAX_BACKOFF),
                MAX_BACKOFF,
            );
        }
        if let Some(error) = ended {
            connection = None;
            let delay = backoff.next_delay();
            log.warn(
                &endpoint,
                &format!("the {} broke off", F::WHAT),
                &error.0,
                delay,
            );
            retry_at = Instant::now() + delay;
        }
    }
}
