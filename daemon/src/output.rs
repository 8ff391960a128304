//! The output log: per pipeline, the rows of every sink a user can read (the default sink of a
//! bare SELECT, `stdout` sinks), on disk, with offsets, bounded in bytes and rotated. It is the
//! store of record of `arroyoctl tail` and of what `arroyod run` prints.
//!
//! Layout: `<data_dir>/output/<pipeline id>/` (mode 0700) holds segment files (mode 0600) named
//! after the offset of their first row, `00000000000000000042.log`. Each line is a record:
//!
//! - a row: the row's JSON object as the sink encoded it (`{...}`); a row that is not a
//!   one-line JSON object is written as `=` and the row as a JSON string;
//! - a mark: `#` and a JSON [`Control`] object: which sink writes the rows that follow, a new
//!   worker generation (with the checkpoint it restored and the offsets it may write again),
//!   rows lost to a failed write. A segment opens with a header mark that restates the sink
//!   and generation, so a reader may start in any segment.
//!
//! Offsets count rows only. The pipeline's task is the one writer: a batch is one `write` of
//! whole lines, to the page cache (no fsync: the log survives the daemon's own crash and
//! restart, not the machine's). Readers read each segment up to the length the writer
//! published, so they never see half a line. When the segments hold more than the limit the
//! oldest go; a reader asking for an offset no segment holds any more gets a gap record naming
//! the first offset still held, never a silent skip. Reopening a log (the daemon restarted)
//! counts the rows of its last segment and cuts a torn last line.
//!
//! File I/O here is synchronous: the writer's appends are small writes to the page cache,
//! readers run in `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::warn;

/// The default sink's name.
pub const PREVIEW: &str = "preview";
/// Segments a log is cut into at most (the newest held whole, the oldest dropped first).
const SEGMENTS: u64 = 8;
/// The smallest segment.
const MIN_SEGMENT_BYTES: u64 = 4096;

/// Errors of an output log; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file or directory of the log could not be created, read or written.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Io { what, path, source }
}

/// A mark line's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Control {
    /// Restates the state at the start of a segment; not a record of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    header: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sink: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// With `generation` (not a header): the checkpoint the generation restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restored: Option<u64>,
    /// The offsets the generation may write again: `[from, to)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replayed: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    fresh: bool,
    /// Rows lost before this point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lost: Option<u64>,
}

/// How a new generation starts writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStart {
    pub generation: u64,
    /// The checkpoint it restored (None: none).
    pub restored: Option<u64>,
    /// The offsets the previous run wrote after that checkpoint, which may come again.
    pub replayed: Option<(u64, u64)>,
    /// It started without state.
    pub fresh: bool,
}

/// What a reader gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Row {
        offset: u64,
        sink: Arc<str>,
        generation: u64,
        json: String,
    },
    /// A generation starts writing before the row at `offset`.
    Start { offset: u64, start: GenerationStart },
    /// The offsets `[from, to)` are no longer held.
    Gap { from: u64, to: u64 },
    /// `rows` rows were lost before the row at `offset`.
    Lost { offset: u64, rows: u64 },
}

/// A segment file: its first row's offset and its length in bytes.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// What readers may see: rows below `next`, closed when no row will follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    next: u64,
    closed: bool,
}

struct Inner {
    /// Oldest first; the last one is written to.
    segments: Vec<Segment>,
    file: Option<File>,
    /// Offset of the next row.
    next: u64,
    sink: String,
    generation: u64,
    /// Rows not written since the last successful write.
    lost: u64,
    /// For a held log, the offset its one reader has read up to: no segment with a row from
    /// it on is dropped.
    reader: Option<u64>,
}

/// One pipeline's output log.
pub struct OutputLog {
    dir: PathBuf,
    limit: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    end: watch::Sender<End>,
    /// Woken when a held log's reader reads rows or lets go.
    consumed: Notify,
}

/// The text of one row as a line (without the newline).
fn encode_row(row: &str, out: &mut String) {
    if row.starts_with('{') && !row.contains('\n') {
        out.push_str(row);
    } else {
        out.push('=');
        out.push_str(&serde_json::to_string(row).unwrap_or_default());
    }
}

fn encode_control(c: &Control, out: &mut String) {
    out.push('#');
    out.push_str(&serde_json::to_string(c).unwrap_or_default());
}

/// One line as read back.
enum Line {
    Row(String),
    Control(Control),
    /// Not a record this binary knows: skipped.
    Unknown,
}

fn decode(line: &str) -> Line {
    if let Some(c) = line.strip_prefix('#') {
        return serde_json::from_str(c).map_or(Line::Unknown, Line::Control);
    }
    if let Some(s) = line.strip_prefix('=') {
        return serde_json::from_str(s).map_or(Line::Unknown, Line::Row);
    }
    if line.starts_with('{') {
        return Line::Row(line.to_string());
    }
    Line::Unknown
}

impl OutputLog {
    /// Opens the log in `dir` (created when missing), holding at most about `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<OutputLog, OutputError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating", dir))?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry
                .metadata()
                .map_err(io("inspecting", &entry.path()))?
                .len();
            segments.push(Segment { first, bytes });
        }
        segments.sort_by_key(|s| s.first);
        let mut inner = Inner {
            segments,
            file: None,
            next: 0,
            sink: PREVIEW.to_string(),
            generation: 0,
            lost: 0,
            reader: None,
        };
        if let Some(last) = inner.segments.last_mut() {
            let path = dir.join(segment_name(last.first));
            let scan = scan_segment(&path)?;
            if scan.whole < last.bytes {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("opening", &path))?;
                file.set_len(scan.whole)
                    .map_err(io("cutting the torn last line of", &path))?;
                last.bytes = scan.whole;
            }
            inner.next = last.first + scan.rows;
            if let Some(sink) = scan.sink {
                inner.sink = sink;
            }
            inner.generation = scan.generation;
        }
        let next = inner.next;
        let limit = limit.max(MIN_SEGMENT_BYTES);
        Ok(OutputLog {
            dir: dir.to_path_buf(),
            limit,
            segment_bytes: (limit / SEGMENTS).max(MIN_SEGMENT_BYTES),
            inner: Mutex::new(inner),
            end: watch::channel(End {
                next,
                closed: false,
            })
            .0,
            consumed: Notify::new(),
        })
    }

    /// Holds the log for one reader (`arroyod run`'s printer): from now on no row it has not
    /// [`consume`](Self::consume)d is dropped, and [`room`](Self::room) makes the pipeline wait
    /// for it instead. The pause travels back to the worker's sink through the report stream's
    /// flow control: the pipeline runs at the reader's pace, with bounded memory and disk.
    pub fn hold(&self) {
        let mut inner = self.inner.lock().expect("output log lock");
        let first = inner.segments.first().map_or(inner.next, |s| s.first);
        inner.reader = Some(first);
    }

    /// The held log's reader has read every row before `offset`: they may go.
    pub fn consume(&self, offset: u64) {
        let mut inner = self.inner.lock().expect("output log lock");
        if let Some(r) = &mut inner.reader {
            *r = (*r).max(offset);
        }
        self.retain(&mut inner);
        drop(inner);
        self.consumed.notify_waiters();
    }

    /// The held log's reader is gone: the log drops its oldest rows again.
    pub fn release(&self) {
        let mut inner = self.inner.lock().expect("output log lock");
        inner.reader = None;
        self.retain(&mut inner);
        drop(inner);
        self.consumed.notify_waiters();
    }

    /// Waits until the log is within its limit (at once unless it is held and its reader has
    /// not read the rows that would go).
    pub async fn room(&self) {
        loop {
            let consumed = self.consumed.notified();
            {
                let inner = self.inner.lock().expect("output log lock");
                let held: u64 = inner.segments.iter().map(|s| s.bytes).sum();
                if inner.reader.is_none() || held <= self.limit || inner.segments.len() <= 1 {
                    return;
                }
            }
            consumed.await;
        }
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The offset the next row gets.
    pub fn next_offset(&self) -> u64 {
        self.end.borrow().next
    }

    /// The oldest offset still held.
    pub fn first_offset(&self) -> u64 {
        let inner = self.inner.lock().expect("output log lock");
        inner.segments.first().map_or(inner.next, |s| s.first)
    }

    /// Bytes held on disk.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        let inner = self.inner.lock().expect("output log lock");
        inner.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends rows of `sink`. A failed write is returned (the pipeline's task fails the
    /// pipeline with it: a full disk is not a silent loss), and counted: a later write that
    /// succeeds records how many rows were lost.
    pub fn append(&self, sink: &str, rows: &[String]) -> Result<(), OutputError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock().expect("output log lock");
        let mut text = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 64);
        if inner.lost > 0 {
            encode_control(
                &Control {
                    lost: Some(inner.lost),
                    ..Control::default()
                },
                &mut text,
            );
            text.push('\n');
        }
        if inner.sink != sink {
            encode_control(
                &Control {
                    sink: Some(sink.to_string()),
                    ..Control::default()
                },
                &mut text,
            );
            text.push('\n');
        }
        for row in rows {
            encode_row(row, &mut text);
            text.push('\n');
        }
        match self.write(&mut inner, &text) {
            Ok(()) => {
                inner.lost = 0;
                inner.sink = sink.to_string();
                inner.next += rows.len() as u64;
                let next = inner.next;
                drop(inner);
                self.end.send_modify(|e| e.next = next);
                Ok(())
            }
            Err(e) => {
                inner.lost += rows.len() as u64;
                Err(e)
            }
        }
    }

    /// Marks the start of a new worker generation, and reopens the log for followers.
    pub fn start_generation(&self, start: GenerationStart) {
        let mut inner = self.inner.lock().expect("output log lock");
        let mut text = String::new();
        encode_control(
            &Control {
                generation: Some(start.generation),
                restored: start.restored,
                replayed: start.replayed,
                fresh: start.fresh,
                ..Control::default()
            },
            &mut text,
        );
        text.push('\n');
        match self.write(&mut inner, &text) {
            Ok(()) => inner.generation = start.generation,
            Err(e) => {
                warn!(error = %crate::engine::error_chain(&e), "writing the output log failed")
            }
        }
        drop(inner);
        self.reopen();
    }

    /// Rows will follow: followers wait for them.
    pub fn reopen(&self) {
        self.end.send_modify(|e| e.closed = false);
    }

    /// No row follows until the next generation: followers end once they have read all.
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("output log lock");
        inner.file = None;
        drop(inner);
        self.end.send_modify(|e| e.closed = true);
    }

    /// Removes the log's files; followers end, and readers find nothing more.
    pub fn remove(&self) -> Result<(), OutputError> {
        self.close();
        // A reader (a tail that began before a delete) must not be sent to files that are gone.
        self.inner.lock().expect("output log lock").segments.clear();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &self.dir)(e)),
            _ => Ok(()),
        }
    }

    /// Writes `text` (whole lines) to the active segment, rotating and applying retention
    /// first when it is full.
    fn write(&self, inner: &mut Inner, text: &str) -> Result<(), OutputError> {
        let full = inner
            .segments
            .last()
            .is_none_or(|s| s.bytes >= self.segment_bytes);
        if full {
            self.rotate(inner)?;
        }
        if inner.file.is_none() {
            let last = inner.segments.last().expect("rotate made one").first;
            let path = self.dir.join(segment_name(last));
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("opening", &path))?;
            inner.file = Some(file);
        }
        let file = inner.file.as_mut().expect("opened above");
        let last = inner.segments.last_mut().expect("a segment");
        if let Err(e) = file.write_all(text.as_bytes()) {
            let path = self.dir.join(segment_name(last.first));
            // Whatever part was written is cut, so that the file holds whole lines.
            let _ = file.set_len(last.bytes);
            inner.file = None;
            return Err(io("writing", &path)(e));
        }
        last.bytes += text.len() as u64;
        // What was just written counts at once: the log never holds more than the limit
        // for longer than a write (unless the active segment alone is above it).
        self.retain(inner);
        Ok(())
    }

    /// Starts a new segment at the next offset, with a header, and drops the oldest segments
    /// beyond the limit.
    fn rotate(&self, inner: &mut Inner) -> Result<(), OutputError> {
        let first = inner.next;
        if inner.segments.last().is_some_and(|s| s.first == first) {
            // No row since the last rotation: keep writing to it.
            return Ok(());
        }
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("creating", &path))?;
        let mut header = String::new();
        encode_control(
            &Control {
                header: true,
                sink: Some(inner.sink.clone()),
                generation: Some(inner.generation),
                ..Control::default()
            },
            &mut header,
        );
        header.push('\n');
        file.write_all(header.as_bytes())
            .map_err(io("writing", &path))?;
        inner.file = Some(file);
        inner.segments.push(Segment {
            first,
            bytes: header.len() as u64,
        });
        self.retain(inner);
        Ok(())
    }

    /// Drops the oldest segments while the segments hold more than the limit (the active one
    /// always stays).
    fn retain(&self, inner: &mut Inner) {
        let mut held: u64 = inner.segments.iter().map(|s| s.bytes).sum();
        while held > self.limit && inner.segments.len() > 1 {
            // A held log keeps the segments its reader has not read to the end.
            if inner.reader.is_some_and(|r| inner.segments[1].first > r) {
                break;
            }
            let old = inner.segments.remove(0);
            held -= old.bytes;
            let path = self.dir.join(segment_name(old.first));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %e, "removing an old output segment failed");
            }
        }
    }

    /// A reader from `from`.
    pub fn reader(self: &Arc<Self>, from: u64) -> Reader {
        Reader {
            log: self.clone(),
            offset: from,
            open: None,
        }
    }

    /// A reader of the last `n` rows held before `end` (the log's end when asked).
    pub fn reader_of_last(self: &Arc<Self>, n: u64, end: u64) -> Reader {
        let from = end.saturating_sub(n).max(self.first_offset());
        self.reader(from)
    }

    /// Waits until a row at `offset` exists or the log is closed; false when closed and
    /// `offset` is past the end.
    pub async fn wait_for(&self, offset: u64) -> bool {
        let mut rx = self.end.subscribe();
        let end = rx
            .wait_for(|e| e.next > offset || e.closed)
            .await
            .map(|e| *e);
        matches!(end, Ok(e) if e.next > offset)
    }

    /// The segment holding `offset`, and its path.
    fn locate(&self, offset: u64) -> Locate {
        let inner = self.inner.lock().expect("output log lock");
        let Some(first) = inner.segments.first() else {
            return Locate::Nothing;
        };
        if offset < first.first {
            return Locate::Gone { first: first.first };
        }
        let i = inner.segments.partition_point(|s| s.first <= offset) - 1;
        let first = inner.segments[i].first;
        Locate::In {
            first,
            path: self.dir.join(segment_name(first)),
        }
    }

    /// The bytes readers may read of the segment starting at `first` now, and whether it is
    /// the last one; None once it is gone.
    fn readable(&self, first: u64) -> Option<(u64, bool)> {
        let inner = self.inner.lock().expect("output log lock");
        let i = inner.segments.iter().position(|s| s.first == first)?;
        Some((inner.segments[i].bytes, i + 1 == inner.segments.len()))
    }
}

enum Locate {
    Nothing,
    Gone { first: u64 },
    In { first: u64, path: PathBuf },
}

/// What scanning a segment found.
struct Scan {
    rows: u64,
    /// Bytes up to the end of the last whole line.
    whole: u64,
    sink: Option<String>,
    generation: u64,
}

fn scan_segment(path: &Path) -> Result<Scan, OutputError> {
    let file = File::open(path).map_err(io("opening", path))?;
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        rows: 0,
        whole: 0,
        sink: None,
        generation: 0,
    };
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io("reading", path))?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(scan);
        }
        scan.whole += n as u64;
        match decode(line.trim_end_matches('\n')) {
            Line::Row(_) => scan.rows += 1,
            Line::Control(c) => {
                if let Some(s) = c.sink {
                    scan.sink = Some(s);
                }
                if let Some(g) = c.generation {
                    scan.generation = g;
                }
            }
            Line::Unknown => {}
        }
    }
}

/// An open segment a reader is in.
struct Open {
    first: u64,
    reader: BufReader<File>,
    /// Bytes read of the file.
    pos: u64,
    /// Offset of the next row in the file.
    next_row: u64,
    sink: Arc<str>,
    generation: u64,
}

/// Reads a log's records in order from an offset. Blocking: call it off the runtime.
pub struct Reader {
    log: Arc<OutputLog>,
    /// The next row to give.
    offset: u64,
    open: Option<Open>,
}

impl Reader {
    /// The offset of the next row it gives.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Up to `max` records; empty when it has read every row written so far.
    pub fn read(&mut self, max: usize) -> Result<Vec<Record>, OutputError> {
        let mut out = Vec::new();
        // A segment found listed but missing on disk.
        let mut missing = None;
        while out.len() < max {
            if self.open.is_none() {
                match self.log.locate(self.offset) {
                    Locate::Nothing => return Ok(out),
                    Locate::Gone { first } => {
                        out.push(Record::Gap {
                            from: self.offset,
                            to: first,
                        });
                        self.offset = first;
                        continue;
                    }
                    Locate::In { first, path, .. } => {
                        let file = match File::open(&path) {
                            Ok(f) => f,
                            // Removed by retention since: locate again. Missing twice, it was
                            // removed with the whole log under this reader: nothing more.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                if missing.replace(first) == Some(first) {
                                    return Ok(out);
                                }
                                continue;
                            }
                            Err(e) => return Err(io("opening", &path)(e)),
                        };
                        self.open = Some(Open {
                            first,
                            reader: BufReader::new(file),
                            pos: 0,
                            next_row: first,
                            sink: Arc::from(PREVIEW),
                            generation: 0,
                        });
                    }
                }
            }
            let open = self.open.as_mut().expect("opened above");
            // Removed by retention while open: the open file still reads to its end.
            let (readable, last) = self.log.readable(open.first).unwrap_or((u64::MAX, false));
            let read = read_lines(open, readable, self.offset, max - out.len(), &mut out)
                .map_err(io("reading", &self.log.dir.join(segment_name(open.first))))?;
            self.offset = self.offset.max(open.next_row);
            if read {
                continue;
            }
            // Nothing more in this segment for now.
            if last {
                return Ok(out);
            }
            self.open = None;
        }
        Ok(out)
    }
}

/// Reads lines of `open` up to `readable` bytes, pushing the records at or after `from`;
/// true when it pushed `max` records (more may follow).
fn read_lines(
    open: &mut Open,
    readable: u64,
    from: u64,
    max: usize,
    out: &mut Vec<Record>,
) -> std::io::Result<bool> {
    let mut pushed = 0;
    let mut line = String::new();
    while open.pos < readable && pushed < max {
        line.clear();
        let n = (&mut open.reader)
            .take(readable - open.pos)
            .read_line(&mut line)?;
        if n == 0 {
            break;
        }
        if !line.ends_with('\n') {
            // A line cut by a failed write: skip back and stop.
            open.reader.seek(SeekFrom::Start(open.pos))?;
            break;
        }
        open.pos += n as u64;
        match decode(line.trim_end_matches('\n')) {
            Line::Row(json) => {
                let offset = open.next_row;
                open.next_row += 1;
                if offset >= from {
                    out.push(Record::Row {
                        offset,
                        sink: open.sink.clone(),
                        generation: open.generation,
                        json,
                    });
                    pushed += 1;
                }
            }
            Line::Control(c) => {
                if let Some(s) = c.sink {
                    open.sink = Arc::from(s.as_str());
                }
                if let Some(g) = c.generation {
                    open.generation = g;
                    if !c.header && open.next_row >= from {
                        out.push(Record::Start {
                            offset: open.next_row,
                            start: GenerationStart {
                                generation: g,
                                restored: c.restored,
                                replayed: c.replayed,
                                fresh: c.fresh,
                            },
                        });
                        pushed += 1;
                    }
                }
                if let Some(rows) = c.lost
                    && open.next_row >= from
                {
                    out.push(Record::Lost {
                        offset: open.next_row,
                        rows,
                    });
                    pushed += 1;
                }
            }
            Line::Unknown => {}
        }
    }
    Ok(pushed >= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(range: std::ops::Range<u64>) -> Vec<String> {
        range.map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    fn offsets(records: &[Record]) -> Vec<u64> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Row { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rows_keep_their_offsets_across_segments_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        // 256 KiB in 32 KiB segments: the 10,000 rows take four, all held.
        let log = Arc::new(OutputLog::open(&path, 256 << 10).unwrap());
        log.start_generation(GenerationStart {
            generation: 1,
            restored: None,
            replayed: None,
            fresh: false,
        });
        for chunk in 0..100 {
            log.append(PREVIEW, &rows(chunk * 100..(chunk + 1) * 100))
                .unwrap();
        }
        assert_eq!(log.next_offset(), 10_000);
        let segments = std::fs::read_dir(&path).unwrap().count();
        assert!(segments > 1, "{segments} segments");
        let mut r = log.reader(4_321);
        let got = r.read(10).unwrap();
        assert_eq!(offsets(&got), (4_321..4_331).collect::<Vec<_>>());
        let Record::Row {
            json,
            generation,
            sink,
            ..
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!(json, "{\"n\":4321}");
        assert_eq!(*generation, 1);
        assert_eq!(&**sink, PREVIEW);
        // Reading on crosses segments without a hole.
        let mut all = offsets(&got);
        loop {
            let more = r.read(1000).unwrap();
            if more.is_empty() {
                break;
            }
            all.extend(offsets(&more));
        }
        assert_eq!(all, (4_321..10_000).collect::<Vec<_>>());

        // A torn last line (a crash mid-write) is cut at reopen; offsets go on.
        let last = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(b"{\"n\":tor")
            .unwrap();
        drop(log);
        let log = Arc::new(OutputLog::open(&path, 256 << 10).unwrap());
        assert_eq!(log.next_offset(), 10_000);
        log.append("out", &rows(10_000..10_002)).unwrap();
        let got = log.reader(9_999).read(10).unwrap();
        assert_eq!(offsets(&got), vec![9_999, 10_000, 10_001]);
        let sinks: Vec<&str> = got
            .iter()
            .filter_map(|r| match r {
                Record::Row { sink, .. } => Some(&**sink),
                _ => None,
            })
            .collect();
        assert_eq!(sinks, vec![PREVIEW, "out", "out"]);
        assert_eq!(
            log.reader_of_last(2, log.next_offset())
                .read(10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn retention_drops_old_segments_and_readers_behind_get_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(OutputLog::open(&dir.path().join("p"), 64 * 1024).unwrap());
        let wide = |i: u64| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(1000));
        for i in 0..1000 {
            log.append(PREVIEW, &[wide(i)]).unwrap();
        }
        assert!(log.bytes() <= 64 * 1024 + 8 * 1024, "{} bytes", log.bytes());
        let first = log.first_offset();
        assert!(first > 900 && first < 1000, "first held {first}");
        let got = log.reader(10).read(3).unwrap();
        assert_eq!(
            got[0],
            Record::Gap {
                from: 10,
                to: first
            }
        );
        assert_eq!(offsets(&got[1..]), vec![first, first + 1]);
    }

    /// A tail that began before its pipeline was deleted: its reader ends, it does not spin
    /// on segments whose files are gone (a `tail` of the concurrency test once hung so).
    #[test]
    fn a_reader_of_a_removed_log_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(OutputLog::open(&dir.path().join("p"), 256 << 10).unwrap());
        log.append(PREVIEW, &rows(0..100)).unwrap();
        let mut before = log.reader(10);
        let mut reading = log.reader(0);
        assert_eq!(offsets(&reading.read(5).unwrap()), vec![0, 1, 2, 3, 4]);
        log.remove().unwrap();
        assert!(before.read(10).unwrap().is_empty());
        // The open file still reads to its end; then nothing.
        let rest = reading.read(1000).unwrap();
        assert!(offsets(&rest).iter().all(|&o| o >= 5), "{rest:?}");
        assert!(reading.read(1000).unwrap().is_empty());
        assert!(log.reader(0).read(10).unwrap().is_empty());
        // The old way it spun: a listed segment whose file is gone.
        let log = Arc::new(OutputLog::open(&dir.path().join("q"), 256 << 10).unwrap());
        log.append(PREVIEW, &rows(0..10)).unwrap();
        std::fs::remove_dir_all(dir.path().join("q")).unwrap();
        assert!(log.reader(0).read(10).unwrap().is_empty());
    }

    #[test]
    fn marks_and_odd_rows_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(OutputLog::open(&dir.path().join("p"), 1 << 20).unwrap());
        log.append(
            PREVIEW,
            &["{\"a\":1}".to_string(), "plain\ntext".to_string()],
        )
        .unwrap();
        let start = GenerationStart {
            generation: 2,
            restored: Some(5),
            replayed: Some((1, 2)),
            fresh: false,
        };
        log.start_generation(start);
        log.append(PREVIEW, &["{\"a\":2}".to_string()]).unwrap();
        let got = log.reader(0).read(10).unwrap();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(matches!(&got[1], Record::Row { json, offset: 1, .. } if json == "plain\ntext"));
        assert_eq!(got[2], Record::Start { offset: 2, start });
        assert!(matches!(
            &got[3],
            Record::Row {
                offset: 2,
                generation: 2,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn followers_wake_on_rows_and_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(OutputLog::open(&dir.path().join("p"), 1 << 20).unwrap());
        let f = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_for(0).await })
        };
        log.append(PREVIEW, &rows(0..1)).unwrap();
        assert!(f.await.unwrap());
        let f = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_for(1).await })
        };
        log.close();
        assert!(!f.await.unwrap());
    }
}
