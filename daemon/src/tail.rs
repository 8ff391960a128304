//! The tail buffer: per pipeline, the rows of its default sink, append-only with offsets, bounded
//! in bytes (`tail_buffer_bytes`) by dropping the oldest rows. Readers follow it from any
//! offset. At-least-once: a worker restarted from a checkpoint may append rows again. When the
//! pipeline ends its rows stay (within the bound) for `tail`, and its spare capacity is freed.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// What a row costs beyond its text: the `String` and its slot.
const ROW_OVERHEAD: u64 = 32;

struct Inner {
    /// Offset of `rows[0]`.
    first: u64,
    rows: VecDeque<String>,
    /// What `rows` costs, by [`cost`].
    bytes: u64,
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
}

impl TailBuffer {
    /// A buffer of at most `capacity` bytes of rows.
    pub fn new(capacity: u64) -> Self {
        TailBuffer {
            capacity,
            inner: Mutex::new(Inner {
                first: 0,
                rows: VecDeque::new(),
                bytes: 0,
            }),
            end: watch::channel((0, false)).0,
        }
    }

    pub fn append(&self, rows: Vec<String>) {
        let mut inner = self.inner.lock().expect("tail buffer lock");
        for row in rows {
            inner.bytes += cost(&row);
            inner.rows.push_back(row);
            while inner.bytes > self.capacity {
                let Some(old) = inner.rows.pop_front() else {
                    break;
                };
                inner.bytes -= cost(&old);
                inner.first += 1;
            }
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
