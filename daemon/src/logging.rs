//! Log output: `tracing` to stderr, in one of three shapes.
//!
//! - Text on a terminal or into a file: a timestamp, the level, the spans and the message.
//! - Text into the journal (stderr is the stream named by `JOURNAL_STREAM`, as systemd sets
//!   it for a unit): no timestamp (the journal keeps its own) and a syslog priority prefix
//!   (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace), which journald reads as
//!   the entry's level.
//! - JSON, one object per line, on request (`log_format = "json"`).
//!
//! Workers log the same way: the daemon passes its filter and format on their command line,
//! and each worker's lines carry its pipeline id and generation in a `worker` span. A worker
//! names the values of its query's secret options ([`hide`]): every line it writes, the
//! engine's and its libraries' included, has them cut out.

use std::fmt;
use std::sync::RwLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::settings::LogFormat;

/// The syslog priority journald reads from a line's `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when stderr is the journal stream systemd gave this process: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of it (sd-daemon(3) asks to compare, as a child may have inherited the
/// variable with another stderr).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Text lines for the journal: `<N>` then the level, the spans and the message, no time.
struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>{} ", priority(meta.level()), meta.level())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Values no log line may show (a worker's secret option values).
static HIDDEN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Cuts `values` out of every log line from now on.
pub fn hide(values: Vec<String>) {
    if let Ok(mut hidden) = HIDDEN.write() {
        *hidden = values;
    }
}

/// Stderr, with the [`hide`]den values cut out of each line (the formatter writes a line in
/// one call).
struct Redacting;

impl std::io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let hidden = HIDDEN.read().map(|h| h.clone()).unwrap_or_default();
        if hidden.is_empty() {
            return std::io::stderr().write(buf);
        }
        let line = crate::secrets::redact(&String::from_utf8_lossy(buf), &hidden);
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `filter`; in `format`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Redacting);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text if stderr_is_journal() => builder
            .with_ansi(false)
            .event_format(Journal)
            .fmt_fields(format::DefaultFields::new())
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hidden_values_are_cut_out_of_lines() {
        hide(vec!["s3cr3t-value".into()]);
        let mut w = Redacting;
        assert_eq!(w.write(b"connecting with s3cr3t-value\n").unwrap(), 29);
        hide(Vec::new());
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
