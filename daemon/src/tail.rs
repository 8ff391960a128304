//! The tail buffer: per pipeline, the rows of its default sink, append-only with offsets, bounded
//! in bytes (`tail_buffer_bytes`) by dropping the oldest rows. Readers follow it from any
//! offset. At-least-once: a worker restarted from a checkpoint may append rows again. When the
//! pipeline ends its rows stay (within the bound) for `tail`, and its spare capacity is freed.
//!
//! A buffer made [`TailBuffer::held`] (`arroyod run`, whose printer must see every row) never
//! drops a row its one reader has not [`consume`](TailBuffer::consume)d: it grows past its bound
//! by at most one append, and [`room`](TailBuffer::room) tells the pipeline's task to stop
//! reading the worker's reports until the reader catches up. That pause travels back to the
//! worker's sink through the report stream's flow control: the pipeline slows down to the
//! reader's pace, with bounded memory, and no row is lost.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Notify, watch};

/// What a row costs beyond its text: the `String` and its slot.
const ROW_OVERHEAD: u64 = 32;

struct Inner {
    /// Offset of `rows[0]`.
    first: u64,
    rows: VecDeque<String>,
    /// What `rows` costs, by [`cost`].
    bytes: u64,
    /// For a held buffer, the offset its reader has consumed up to: rows from it on are kept.
    reader: Option<u64>,
}

impl Inner {
    /// Drops the oldest rows while over `capacity`, but never one the reader has not consumed.
    fn evict(&mut self, capacity: u64) {
        while self.bytes > capacity && self.reader.is_none_or(|r| self.first < r) {
            let Some(old) = self.rows.pop_front() else {
                break;
            };
            self.bytes -= cost(&old);
            self.first += 1;
        }
    }
}

fn cost(row: &str) -> u64 {
    row.len() as u64 + ROW_OVERHEAD
}

pub struct TailBuffer {
    /// The most bytes of rows kept.
    capacity: u64,
    inner: Mutex<Inner>,
    /// Next offset, and whether the buffer is closed (no row will follow).
    end: watch::Sender<(u64, bool)>,
    /// Woken when a held buffer's reader consumes rows or lets go.
    consumed: Notify,
}

impl TailBuffer {
    /// A buffer of at most `capacity` bytes of rows.
    pub fn new(capacity: u64) -> Self {
        Self::with_reader(capacity, None)
    }

    /// A buffer of `capacity` bytes that keeps every row until its one reader consumed it.
    pub fn held(capacity: u64) -> Self {
        Self::with_reader(capacity, Some(0))
    }

    fn with_reader(capacity: u64, reader: Option<u64>) -> Self {
        TailBuffer {
            capacity,
            inner: Mutex::new(Inner {
                first: 0,
                rows: VecDeque::new(),
                bytes: 0,
                reader,
            }),
            end: watch::channel((0, false)).0,
            consumed: Notify::new(),
        }
    }

    pub fn append(&self, rows: Vec<String>) {
        let mut inner = self.inner.lock().expect("tail buffer lock");
        for row in rows {
            inner.bytes += cost(&row);
            inner.rows.push_back(row);
            inner.evict(self.capacity);
        }
        let next = inner.first + inner.rows.len() as u64;
        drop(inner);
        self.end.send_modify(|e| e.0 = next);
    }

    /// Marks the end: followers stop once they have read everything. Spare capacity is freed.
    pub fn close(&self) {
        self.inner
            .lock()
            .expect("tail buffer lock")
            .rows
            .shrink_to_fit();
        self.end.send_modify(|e| e.1 = true);
    }

    /// Waits until the buffer is within its bound (at once unless it is held and full of rows
    /// its reader has not consumed).
    pub async fn room(&self) {
        loop {
            let consumed = self.consumed.notified();
            if self.inner.lock().expect("tail buffer lock").bytes <= self.capacity {
                return;
            }
            consumed.await;
        }
    }

    /// The held buffer's reader has read every row before `offset`: they may go.
    pub fn consume(&self, offset: u64) {
        let mut inner = self.inner.lock().expect("tail buffer lock");
        if let Some(r) = &mut inner.reader {
            *r = (*r).max(offset);
        }
        inner.evict(self.capacity);
        drop(inner);
        self.consumed.notify_waiters();
    }

    /// The held buffer's reader is gone: the buffer drops its oldest rows again.
    pub fn release(&self) {
        let mut inner = self.inner.lock().expect("tail buffer lock");
        inner.reader = None;
        inner.evict(self.capacity);
        drop(inner);
        self.consumed.notify_waiters();
    }

    /// Bytes of rows held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.inner.lock().expect("tail buffer lock").bytes
    }

    /// Reopens the buffer for a new run of the pipeline.
    pub fn reopen(&self) {
        self.end.send_modify(|e| e.1 = false);
    }

    /// The next offset to be written.
    pub fn next_offset(&self) -> u64 {
        self.end.borrow().0
    }

    /// Up to `max` rows from `from` (or from the oldest kept row, if `from` was dropped),
    /// with the offset of the first.
    pub fn read(&self, from: u64, max: usize) -> (u64, Vec<String>) {
        let inner = self.inner.lock().expect("tail buffer lock");
        let start = from.max(inner.first);
        let skip = (start - inner.first) as usize;
        let rows = inner.rows.iter().skip(skip).take(max).cloned().collect();
        (start, rows)
    }

    /// Waits until a row at `offset` exists or the buffer is closed; false when closed and
    /// `offset` is past the end.
    pub async fn wait_for(&self, offset: u64) -> bool {
        let mut rx = self.end.subscribe();
        let state = rx
            .wait_for(|(next, closed)| *next > offset || *closed)
            .await
            .map(|s| *s);
        matches!(state, Ok((next, _)) if next > offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_rows_within_its_bytes_and_their_offsets() {
        let b = TailBuffer::new(3 * (1 + ROW_OVERHEAD));
        b.append((0..5).map(|i| i.to_string()).collect());
        assert_eq!(b.bytes(), 3 * (1 + ROW_OVERHEAD));
        assert_eq!(b.next_offset(), 5);
        assert_eq!(b.read(0, 10), (2, vec!["2".into(), "3".into(), "4".into()]));
        assert_eq!(b.read(4, 10), (4, vec!["4".into()]));
        assert_eq!(b.read(5, 10), (5, vec![]));
        // A row larger than the whole buffer is dropped at once.
        b.append(vec!["x".repeat(1000)]);
        assert_eq!(b.read(0, 10), (6, vec![]));
        assert_eq!(b.bytes(), 0);
    }

    #[tokio::test]
    async fn a_held_buffer_keeps_unread_rows_and_says_when_it_has_room() {
        let b = std::sync::Arc::new(TailBuffer::held(2 * (1 + ROW_OVERHEAD)));
        b.append((0..5).map(|i| i.to_string()).collect());
        assert_eq!(b.read(0, 10).1.len(), 5, "nothing unread is dropped");
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.room().await })
        };
        b.consume(2);
        assert_eq!(b.read(0, 10).0, 2, "consumed rows go when over the bound");
        assert!(
            !waiting.is_finished(),
            "three unread rows are over the bound"
        );
        b.consume(4);
        waiting.await.unwrap();
        assert_eq!(b.read(0, 10), (3, vec!["3".into(), "4".into()]));
        b.append(vec!["5".into(), "6".into()]);
        b.release();
        assert_eq!(b.read(0, 10), (5, vec!["5".into(), "6".into()]));
        b.room().await;
    }

    #[tokio::test]
    async fn followers_wake_on_rows_and_on_close() {
        let b = std::sync::Arc::new(TailBuffer::new(1 << 20));
        let f = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_for(0).await })
        };
        b.append(vec!["a".into()]);
        assert!(f.await.unwrap());
        let f = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_for(1).await })
        };
        b.close();
        assert!(!f.await.unwrap());
    }
}
