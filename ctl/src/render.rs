//! Text and JSON renderings of the daemon's answers.
//!
//! Every function writes to the writer it is given and never decides where output goes: results
//! go to stdout and diagnostics to stderr, as `command` chooses. JSON keys are the field names of
//! the proto messages, values are kept as they are (an empty string or `0` means unset, as in
//! proto3), so scripts see the same data in every rendering.

use std::io::{self, Write};

use arroyod_proto::diagnostic::Diagnostic;
use arroyod_proto::{
    Checkpoint, ExplainResponse, InfoResponse, LogEvent, Pipeline, PipelineMetrics, SqlError,
    TailRow, ValidateResponse,
};
use serde_json::{Value, json};

/// A pipeline as a JSON object with every field of the `Pipeline` message.
pub fn pipeline_json(p: &Pipeline) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "state": p.state,
        "desired": p.desired,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "failure": p.failure,
        "parallelism": p.parallelism,
        "generation": p.generation,
        "rows": p.rows,
        "worker_pid": p.worker_pid,
        "checkpoint_interval_ms": p.checkpoint_interval_ms,
        "state_url": p.state_url,
        "last_checkpoint": p.last_checkpoint,
        "last_stop": p.last_stop.as_ref().map(|s| json!({
            "mode": s.mode,
            "clean": s.clean,
            "epoch": s.epoch,
            "message": s.message,
        })),
        "memory_limit_bytes": p.memory_limit_bytes,
        "subtasks": p.subtasks,
        "subtasks_ended": p.subtasks_ended,
        "restarts": p.restarts,
        "bad_rows_dropped": p.bad_rows_dropped,
        "late_rows_dropped": p.late_rows_dropped,
        "query": p.query,
    })
}

/// A checkpoint as a JSON object with every field of the `Checkpoint` message.
pub fn checkpoint_json(c: &Checkpoint) -> Value {
    json!({
        "epoch": c.epoch,
        "bytes": c.bytes,
        "duration_ms": c.duration_ms,
        "completed_at": c.completed_at,
        "generation": c.generation,
        "retained": c.retained,
    })
}

/// Milliseconds in the largest unit that holds them whole: `10s`, `500ms`, `2m`, `1h`, as
/// `arroyoctl submit --checkpoint-interval` reads them back.
pub fn millis(ms: u64) -> String {
    match ms {
        0 => "0ms".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// A pipeline as `<name> <id>`, or `<id>` when it has no name: the id is always the last word.
pub fn pipeline_label(p: &Pipeline) -> String {
    if p.name.is_empty() {
        p.id.clone()
    } else {
        format!("{} {}", p.name, p.id)
    }
}

/// Query errors of `file` as `[{file, line, column, severity, message, hints}]`.
fn errors_json(file: &str, errors: &[SqlError]) -> Value {
    errors
        .iter()
        .map(|e| {
            json!({
                "file": file,
                "line": e.line,
                "column": e.column,
                "severity": "error",
                "message": e.message,
                "hints": e.hints,
            })
        })
        .collect()
}

/// The answer of `validate` as `{"errors": [...], "sinks": [..]}`.
pub fn validate_json(file: &str, response: &ValidateResponse) -> Value {
    let mut answer =
        json!({ "errors": errors_json(file, &response.errors), "sinks": response.sinks });
    // Only when there are any: the answer of a query without warnings stays as it was.
    if !response.warnings.is_empty() {
        let mut warnings = errors_json(file, &response.warnings);
        if let Value::Array(list) = &mut warnings {
            for w in list {
                w["severity"] = json!("warning");
            }
        }
        answer["warnings"] = warnings;
    }
    answer
}

/// The errors of a refused `submit` as `{"errors": [...]}`.
pub fn submit_errors_json(file: &str, errors: &[SqlError]) -> Value {
    json!({ "errors": errors_json(file, errors) })
}

/// Writes `value` pretty-printed, then a newline.
pub fn write_json(w: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value)?;
    writeln!(w)
}

/// Writes the pipelines as a table with the columns ID, NAME, STATE and CREATED.
pub fn write_table(w: &mut impl Write, pipelines: &[Pipeline]) -> io::Result<()> {
    let rows: Vec<[&str; 4]> = pipelines
        .iter()
        .map(|p| [p.id.as_str(), &p.name, &p.state, &p.created_at])
        .collect();
    write_columns(w, ["ID", "NAME", "STATE", "CREATED"], &rows)
}

/// Writes the checkpoints as a table with the columns EPOCH, BYTES, DURATION, COMPLETED,
/// GENERATION and RETAINED (`yes` or `no`), in the order given.
pub fn write_checkpoints(w: &mut impl Write, checkpoints: &[Checkpoint]) -> io::Result<()> {
    let rows: Vec<[String; 6]> = checkpoints
        .iter()
        .map(|c| {
            [
                c.epoch.to_string(),
                c.bytes.to_string(),
                millis(c.duration_ms),
                c.completed_at.clone(),
                c.generation.to_string(),
                if c.retained { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = [
        "EPOCH",
        "BYTES",
        "DURATION",
        "COMPLETED",
        "GENERATION",
        "RETAINED",
    ];
    write_columns(w, header, &rows)
}

/// Writes `header` and `rows` as left-aligned columns two spaces apart; the last column is not
/// padded, so lines carry no trailing spaces.
fn write_columns<const N: usize>(
    w: &mut impl Write,
    header: [&str; N],
    rows: &[[impl AsRef<str>; N]],
) -> io::Result<()> {
    let lines: Vec<[&str; N]> = std::iter::once(header)
        .chain(rows.iter().map(|row| row.each_ref().map(AsRef::as_ref)))
        .collect();
    let mut widths = [0; N];
    for row in &lines {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in lines {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// Writes `pipeline <label> is <state>`, then the failure on its own line when there is one:
/// the answer of `stop` and `resume`.
pub fn write_state(w: &mut impl Write, p: &Pipeline) -> io::Result<()> {
    writeln!(w, "pipeline {} is {}", pipeline_label(p), p.state)?;
    if !p.failure.is_empty() {
        writeln!(w, "failure: {}", p.failure)?;
    }
    Ok(())
}

/// Writes one pipeline as `key: value` lines, the query last and indented. Unset values (an
/// empty string, or `0` for a pid, an interval or an epoch) show as `-`.
pub fn write_status(w: &mut impl Write, p: &Pipeline) -> io::Result<()> {
    fn or_dash(s: &str) -> &str {
        if s.is_empty() { "-" } else { s }
    }
    fn or_dash_0(n: u64, show: impl FnOnce(u64) -> String) -> String {
        if n == 0 { "-".to_owned() } else { show(n) }
    }
    let worker_pid = or_dash_0(p.worker_pid.into(), |pid| pid.to_string());
    let fields = [
        ("id", or_dash(&p.id).to_owned()),
        ("name", or_dash(&p.name).to_owned()),
        ("state", or_dash(&p.state).to_owned()),
        ("desired", or_dash(&p.desired).to_owned()),
        ("created_at", or_dash(&p.created_at).to_owned()),
        ("updated_at", or_dash(&p.updated_at).to_owned()),
        ("parallelism", p.parallelism.to_string()),
        ("generation", p.generation.to_string()),
        ("rows", p.rows.to_string()),
        ("worker_pid", worker_pid),
        (
            "checkpoint_interval",
            or_dash_0(p.checkpoint_interval_ms, millis),
        ),
        (
            "last_checkpoint",
            or_dash_0(p.last_checkpoint, |epoch| epoch.to_string()),
        ),
        ("state_url", or_dash(&p.state_url).to_owned()),
        ("failure", or_dash(&p.failure).to_owned()),
        (
            "memory_limit",
            or_dash_0(p.memory_limit_bytes, |b| bytesize::ByteSize(b).to_string()),
        ),
        ("restarts", p.restarts.to_string()),
        (
            "dropped",
            format!("{} bad, {} late", p.bad_rows_dropped, p.late_rows_dropped),
        ),
        (
            "last_stop",
            p.last_stop.as_ref().map_or("-".to_owned(), |s| {
                format!(
                    "{} ({}): {}",
                    if s.clean { "clean" } else { "unclean" },
                    s.mode,
                    s.message
                )
            }),
        ),
    ];
    write_fields(w, &fields)?;
    writeln!(w, "query:")?;
    for line in p.query.trim_end().lines() {
        writeln!(w, "    {line}")?;
    }
    Ok(())
}

/// Writes `key: value` lines, the values aligned.
fn write_fields(w: &mut impl Write, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (key, value) in fields {
        writeln!(w, "{:<width$} {value}", format!("{key}:"))?;
    }
    Ok(())
}

/// How long the daemon has run, to the second: `3h 2m 5s`.
pub fn uptime(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// The pipelines by state, as `2 Running, 1 Stopped` (states in order), or `none`.
fn by_state(pipelines: &std::collections::HashMap<String, u32>) -> String {
    let mut states: Vec<_> = pipelines.iter().collect();
    states.sort();
    if states.is_empty() {
        return "none".to_owned();
    }
    states
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The daemon as `arroyoctl info` shows it.
pub fn write_info(w: &mut impl Write, i: &InfoResponse) -> io::Result<()> {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let caller = if i.caller_confined {
        format!(
            "uid {}, its pipelines confined to allowed_paths",
            i.caller_uid
        )
    } else {
        format!("uid {}", i.caller_uid)
    };
    let fields = [
        ("version", i.version.clone()),
        ("pid", i.pid.to_string()),
        ("started_at", i.started_at.clone()),
        ("uptime", uptime(i.uptime_ms)),
        ("socket", or_dash(&i.socket)),
        ("data_dir", or_dash(&i.data_dir)),
        ("state_url", or_dash(&i.state_url)),
        ("backup_url", or_dash(&i.backup_url)),
        ("metrics_addr", or_dash(&i.metrics_addr)),
        ("max_parallelism", i.max_parallelism.to_string()),
        ("pipelines", by_state(&i.pipelines)),
        ("caller", caller),
    ];
    write_fields(w, &fields)
}

/// The daemon as `arroyoctl --json info` shows it.
pub fn info_json(i: &InfoResponse) -> Value {
    let pipelines: serde_json::Map<String, Value> = i
        .pipelines
        .iter()
        .map(|(state, n)| (state.clone(), json!(n)))
        .collect();
    json!({
        "version": i.version,
        "pid": i.pid,
        "started_at": i.started_at,
        "uptime_ms": i.uptime_ms,
        "socket": i.socket,
        "data_dir": i.data_dir,
        "state_url": i.state_url,
        "backup_url": i.backup_url,
        "metrics_addr": i.metrics_addr,
        "max_parallelism": i.max_parallelism,
        "pipelines": pipelines,
        "caller_uid": i.caller_uid,
        "caller_confined": i.caller_confined,
    })
}

/// One error of a query in the diagnostic format of [`arroyod_proto::diagnostic`]: the
/// `<file>:<line>:<column>: error: <message>` line, the source line the daemon sent (secret
/// values redacted) with a caret, then the hints.
pub fn diagnostic(file: &str, e: &SqlError) -> String {
    Diagnostic {
        file,
        line: e.line,
        column: e.column,
        message: &e.message,
        hints: &e.hints,
    }
    .render_line(Some(e.source_line.as_str()).filter(|l| !l.is_empty()))
}

/// A warning of `validate`, rendered as a diagnostic with severity `warning`.
pub fn warning(file: &str, w: &SqlError) -> String {
    Diagnostic {
        file,
        line: w.line,
        column: w.column,
        message: &w.message,
        hints: &w.hints,
    }
    .render_warning_line(Some(w.source_line.as_str()).filter(|l| !l.is_empty()))
}

/// A record of the output log as a JSON frame: `{"offset", "sink", "generation", "row"}` for
/// a row (its JSON object, or its text when it is not JSON), `{"offset", "gap": {"from",
/// "to"}}`, `{"offset", "restore": {...}}` or `{"offset", "lost": N}` for a mark.
pub fn tail_json(r: &TailRow) -> Value {
    if let Some(gap) = &r.gap {
        return json!({ "offset": r.offset, "gap": { "from": gap.from, "to": gap.to } });
    }
    if let Some(restore) = &r.restore {
        return json!({
            "offset": r.offset,
            "restore": {
                "generation": restore.generation,
                "epoch": restore.epoch,
                "replayed": restore.replayed.as_ref().map(|o| json!({ "from": o.from, "to": o.to })),
                "fresh": restore.fresh,
            }
        });
    }
    if r.lost > 0 {
        return json!({ "offset": r.offset, "lost": r.lost });
    }
    let row =
        serde_json::from_str::<Value>(&r.json).unwrap_or_else(|_| Value::String(r.json.clone()));
    json!({ "offset": r.offset, "sink": r.sink, "generation": r.generation, "row": row })
}

/// What a mark of the output log means, for stderr; None for a row.
pub fn tail_note(r: &TailRow) -> Option<String> {
    if let Some(gap) = &r.gap {
        return Some(format!(
            "warning: rows {}..{} are gone (the output log keeps the newest output_log_bytes); continuing at {}",
            gap.from, gap.to, gap.to
        ));
    }
    if let Some(restore) = &r.restore {
        let run = format!("generation {}", restore.generation);
        return Some(match (&restore.replayed, restore.epoch, restore.fresh) {
            (_, _, true) => format!("note: {run} starts at row {} without state", r.offset),
            (Some(o), epoch, _) if epoch > 0 => format!(
                "note: {run} restored checkpoint {epoch}: rows {}..{} were written after it and may come again from row {}",
                o.from, o.to, r.offset
            ),
            (None, epoch, _) if epoch > 0 => {
                format!(
                    "note: {run} restored checkpoint {epoch} at row {}",
                    r.offset
                )
            }
            _ => format!("note: {run} starts at row {}", r.offset),
        });
    }
    (r.lost > 0).then(|| {
        format!(
            "warning: {} rows could not be written to the output log before row {} and are lost",
            r.lost, r.offset
        )
    })
}

/// An event as `AT  KIND  STATE  MESSAGE`.
pub fn log_line(e: &LogEvent) -> String {
    format!("{}  {:<10}  {:<10}  {}", e.at, e.kind, e.state, e.message)
}

/// An event as a JSON object with every field of `LogEvent`.
pub fn log_json(e: &LogEvent) -> Value {
    json!({
        "at": e.at,
        "kind": e.kind,
        "state": e.state,
        "generation": e.generation,
        "message": e.message,
    })
}

/// A count with a k/M/G suffix.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n if n.fract() == 0.0 => format!("{n:.0}"),
        n => format!("{n:.1}"),
    }
}

/// Bytes in binary units.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}KiB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

/// One refresh of `top`: a line about the pipeline, then one row per operator.
pub fn write_top(w: &mut impl Write, m: &PipelineMetrics) -> io::Result<()> {
    if let Some(p) = &m.pipeline {
        let progress = if p.subtasks > 0 && p.subtasks_ended > 0 {
            format!("  subtasks ended {}/{}", p.subtasks_ended, p.subtasks)
        } else {
            String::new()
        };
        writeln!(
            w,
            "pipeline {}  {}  generation {}  restarts {}  last checkpoint {}  output rows {}{progress}",
            pipeline_label(p),
            p.state,
            p.generation,
            p.restarts,
            if p.last_checkpoint == 0 {
                "-".to_owned()
            } else {
                p.last_checkpoint.to_string()
            },
            p.rows,
        )?;
    }
    let rows: Vec<[String; 11]> = m
        .operators
        .iter()
        .map(|o| {
            [
                o.operator.clone(),
                o.parallelism.to_string(),
                count(o.rows_in as f64),
                count(o.rows_out as f64),
                count(o.rows_in_per_second),
                count(o.rows_out_per_second),
                bytes(o.bytes_out),
                format!("{:.0}%", o.backpressure * 100.0),
                if o.watermark_ms == 0 {
                    "-".to_owned()
                } else {
                    millis(o.watermark_lag_ms.max(0) as u64)
                },
                format!("{}/{}", o.late_rows_dropped, o.bad_rows_dropped),
                if o.checkpoint_bytes == 0 {
                    "-".to_owned()
                } else {
                    format!(
                        "{} {}",
                        bytes(o.checkpoint_bytes),
                        millis(o.checkpoint_duration_ms)
                    )
                },
            ]
        })
        .collect();
    let header = [
        "OPERATOR",
        "P",
        "ROWS IN",
        "ROWS OUT",
        "IN/S",
        "OUT/S",
        "BYTES OUT",
        "BACKPRESSURE",
        "WM LAG",
        "LATE/BAD",
        "CHECKPOINT",
    ];
    write_columns(w, header, &rows)
}

/// One refresh of `top` as JSON.
pub fn top_json(m: &PipelineMetrics) -> Value {
    json!({
        "pipeline": m.pipeline.as_ref().map(pipeline_json),
        "window_seconds": m.window_seconds,
        "operators": m.operators.iter().map(|o| json!({
            "operator": o.operator,
            "parallelism": o.parallelism,
            "rows_in": o.rows_in,
            "rows_out": o.rows_out,
            "bytes_in": o.bytes_in,
            "bytes_out": o.bytes_out,
            "rows_in_per_second": o.rows_in_per_second,
            "rows_out_per_second": o.rows_out_per_second,
            "backpressure": o.backpressure,
            "watermark_ms": o.watermark_ms,
            "watermark_lag_ms": o.watermark_lag_ms,
            "late_rows_dropped": o.late_rows_dropped,
            "bad_rows_dropped": o.bad_rows_dropped,
            "checkpoint_bytes": o.checkpoint_bytes,
            "checkpoint_duration_ms": o.checkpoint_duration_ms,
            "subtasks_ended": o.subtasks_ended,
        })).collect::<Vec<_>>(),
    })
}

/// A dataflow graph as two tables: its nodes, then its edges.
pub fn write_explain(w: &mut impl Write, g: &ExplainResponse) -> io::Result<()> {
    let nodes: Vec<[String; 5]> = g
        .nodes
        .iter()
        .map(|n| {
            [
                n.index.to_string(),
                n.kind.clone(),
                n.label.clone(),
                n.parallelism.to_string(),
                n.id.clone(),
            ]
        })
        .collect();
    write_columns(w, ["#", "KIND", "OPERATOR", "PARALLELISM", "ID"], &nodes)?;
    writeln!(w)?;
    let edges: Vec<[String; 3]> = g
        .edges
        .iter()
        .map(|e| {
            [
                format!("{} -> {}", e.from, e.to),
                e.kind.clone(),
                e.keys.join(", "),
            ]
        })
        .collect();
    write_columns(w, ["EDGE", "KIND", "KEYS"], &edges)
}

/// A dataflow graph as Graphviz DOT.
pub fn explain_dot(g: &ExplainResponse) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("digraph dataflow {\n  rankdir=LR;\n  node [shape=box];\n");
    for n in &g.nodes {
        out.push_str(&format!(
            "  n{} [label=\"{}\\n{} x{}\"];\n",
            n.index,
            quote(&n.label),
            quote(&n.kind),
            n.parallelism
        ));
    }
    for e in &g.edges {
        let label = if e.keys.is_empty() {
            e.kind.clone()
        } else {
            format!("{} [{}]", e.kind, e.keys.join(", "))
        };
        out.push_str(&format!(
            "  n{} -> n{} [label=\"{}\"];\n",
            e.from,
            e.to,
            quote(&label)
        ));
    }
    out.push_str("}\n");
    out
}

/// A dataflow graph as JSON.
pub fn explain_json(g: &ExplainResponse) -> Value {
    json!({
        "nodes": g.nodes.iter().map(|n| json!({
            "index": n.index, "id": n.id, "label": n.label, "kind": n.kind,
            "parallelism": n.parallelism,
        })).collect::<Vec<_>>(),
        "edges": g.edges.iter().map(|e| json!({
            "from": e.from, "to": e.to, "kind": e.kind, "keys": e.keys,
        })).collect::<Vec<_>>(),
    })
}

/// The sinks a valid query writes to, as `sinks: a, b`.
pub fn sinks_line(sinks: &[String]) -> String {
    if sinks.is_empty() {
        "sinks: (none)".to_owned()
    } else {
        format!("sinks: {}", sinks.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(id: &str, name: &str, state: &str) -> Pipeline {
        Pipeline {
            id: id.to_owned(),
            name: name.to_owned(),
            state: state.to_owned(),
            created_at: "2026-01-02T03:04:05Z".to_owned(),
            updated_at: "2026-01-02T03:04:06Z".to_owned(),
            failure: String::new(),
            parallelism: 2,
            query: "SELECT 1\nFROM t\n".to_owned(),
            generation: 3,
            rows: 42,
            desired: "Running".to_owned(),
            worker_pid: 0,
            checkpoint_interval_ms: 10_000,
            state_url: "file:///var/lib/arroyod/state/p1".to_owned(),
            last_checkpoint: 7,
            ..Pipeline::default()
        }
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("writes to memory");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn pipeline_json_has_every_field() {
        let v = pipeline_json(&pipeline("p1", "wordcount", "Running"));
        for key in [
            "id",
            "name",
            "state",
            "desired",
            "created_at",
            "updated_at",
            "failure",
            "parallelism",
            "generation",
            "rows",
            "worker_pid",
            "checkpoint_interval_ms",
            "state_url",
            "last_checkpoint",
            "last_stop",
            "memory_limit_bytes",
            "restarts",
            "query",
            "bad_rows_dropped",
            "late_rows_dropped",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert_eq!(v["id"], "p1");
        assert_eq!(v["failure"], "");
        assert_eq!(v["rows"], 42);
        assert_eq!(v["checkpoint_interval_ms"], 10_000);
        assert_eq!(v["state_url"], "file:///var/lib/arroyod/state/p1");
        assert_eq!(v["last_checkpoint"], 7);
        assert_eq!(v.as_object().map(|o| o.len()), Some(22));
    }

    #[test]
    fn label_ends_with_the_id() {
        assert_eq!(pipeline_label(&pipeline("p1", "wc", "Running")), "wc p1");
        assert_eq!(pipeline_label(&pipeline("p1", "", "Running")), "p1");
    }

    #[test]
    fn table_aligns_columns() {
        let out = text(|w| {
            write_table(
                w,
                &[
                    pipeline("0193a", "wordcount", "Running"),
                    pipeline("7", "x", "Failed"),
                ],
            )
        });
        assert_eq!(
            out,
            "ID     NAME       STATE    CREATED\n\
             0193a  wordcount  Running  2026-01-02T03:04:05Z\n\
             7      x          Failed   2026-01-02T03:04:05Z\n"
        );
    }

    #[test]
    fn empty_table_is_the_header() {
        assert_eq!(text(|w| write_table(w, &[])), "ID  NAME  STATE  CREATED\n");
    }

    #[test]
    fn status_is_key_value_lines() {
        let mut p = pipeline("p1", "wordcount", "Failed");
        p.failure = "boom".to_owned();
        let out = text(|w| write_status(w, &p));
        assert!(
            out.starts_with(
                "id:                  p1\n\
                 name:                wordcount\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "\nworker_pid:          -\n\
                 checkpoint_interval: 10s\n\
                 last_checkpoint:     7\n\
                 state_url:           file:///var/lib/arroyod/state/p1\n\
                 failure:             boom\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("query:\n    SELECT 1\n    FROM t\n"), "{out}");
    }

    #[test]
    fn status_shows_unset_checkpointing_as_dashes() {
        let mut p = pipeline("p1", "wordcount", "Running");
        p.checkpoint_interval_ms = 0;
        p.last_checkpoint = 0;
        p.state_url = String::new();
        let out = text(|w| write_status(w, &p));
        assert!(
            out.contains(
                "\ncheckpoint_interval: -\n\
                 last_checkpoint:     -\n\
                 state_url:           -\n"
            ),
            "{out}"
        );
        p.checkpoint_interval_ms = 1_500;
        let out = text(|w| write_status(w, &p));
        assert!(out.contains("\ncheckpoint_interval: 1500ms\n"), "{out}");
    }

    #[test]
    fn millis_use_the_largest_whole_unit() {
        assert_eq!(millis(0), "0ms");
        assert_eq!(millis(500), "500ms");
        assert_eq!(millis(1_500), "1500ms");
        assert_eq!(millis(10_000), "10s");
        assert_eq!(millis(90_000), "90s");
        assert_eq!(millis(120_000), "2m");
        assert_eq!(millis(7_200_000), "2h");
    }

    #[test]
    fn state_line_names_the_pipeline_and_its_failure() {
        let mut p = pipeline("p1", "wordcount", "Running");
        assert_eq!(
            text(|w| write_state(w, &p)),
            "pipeline wordcount p1 is Running\n"
        );
        p.state = "Failed".to_owned();
        p.failure = "boom".to_owned();
        assert_eq!(
            text(|w| write_state(w, &p)),
            "pipeline wordcount p1 is Failed\nfailure: boom\n"
        );
    }

    fn checkpoint(epoch: u64, bytes: u64, duration_ms: u64, retained: bool) -> Checkpoint {
        Checkpoint {
            epoch,
            bytes,
            duration_ms,
            completed_at: format!("2026-01-02T03:04:{:02}Z", epoch),
            generation: 1,
            retained,
        }
    }

    #[test]
    fn checkpoints_table_aligns_columns() {
        let out = text(|w| {
            write_checkpoints(
                w,
                &[
                    checkpoint(12, 1_048_576, 2_000, true),
                    checkpoint(11, 96, 850, false),
                ],
            )
        });
        assert_eq!(
            out,
            "EPOCH  BYTES    DURATION  COMPLETED             GENERATION  RETAINED\n\
             12     1048576  2s        2026-01-02T03:04:12Z  1           yes\n\
             11     96       850ms     2026-01-02T03:04:11Z  1           no\n"
        );
    }

    #[test]
    fn no_checkpoints_is_the_header() {
        assert_eq!(
            text(|w| write_checkpoints(w, &[])),
            "EPOCH  BYTES  DURATION  COMPLETED  GENERATION  RETAINED\n"
        );
    }

    #[test]
    fn checkpoint_json_has_every_field() {
        assert_eq!(
            checkpoint_json(&checkpoint(3, 10, 20, true)),
            json!({
                "epoch": 3,
                "bytes": 10,
                "duration_ms": 20,
                "completed_at": "2026-01-02T03:04:03Z",
                "generation": 1,
                "retained": true,
            })
        );
    }

    #[test]
    fn diagnostics_leave_out_unknown_positions_and_show_the_source() {
        let e = |line, column| SqlError {
            message: "no table t".to_owned(),
            line,
            column,
            hints: vec![],
            source_line: String::new(),
        };
        assert_eq!(
            diagnostic("q.sql", &e(2, 7)),
            "q.sql:2:7: error: no table t\n"
        );
        let with_line = SqlError {
            source_line: "FROM x t;".to_owned(),
            ..e(2, 8)
        };
        assert_eq!(
            diagnostic("q.sql", &with_line),
            "q.sql:2:8: error: no table t\n 2 | FROM x t;\n   |        ^\n"
        );
        assert_eq!(
            diagnostic("q.sql", &e(2, 0)),
            "q.sql:2: error: no table t\n"
        );
        assert_eq!(
            diagnostic("<stdin>", &e(0, 0)),
            "<stdin>: error: no table t\n"
        );
    }

    #[test]
    fn validate_json_shape() {
        let v = validate_json(
            "q.sql",
            &ValidateResponse {
                errors: vec![SqlError {
                    message: "m".to_owned(),
                    line: 1,
                    column: 2,
                    hints: vec!["h".to_owned()],
                    source_line: String::new(),
                }],
                sinks: vec!["stdout".to_owned()],
                warnings: vec![],
            },
        );
        assert_eq!(
            v,
            json!({"errors": [{"file": "q.sql", "message": "m", "line": 1, "column": 2, "severity": "error", "hints": ["h"]}], "sinks": ["stdout"]})
        );
    }

    #[test]
    fn tail_frames_carry_offsets_and_marks_explain_themselves() {
        let row = TailRow {
            offset: 7,
            json: "{\"a\":1}".to_owned(),
            sink: "preview".to_owned(),
            generation: 2,
            ..TailRow::default()
        };
        assert_eq!(
            tail_json(&row),
            json!({"offset": 7, "sink": "preview", "generation": 2, "row": {"a": 1}})
        );
        assert_eq!(tail_note(&row), None);
        let gap = TailRow {
            offset: 0,
            gap: Some(arroyod_proto::OffsetRange { from: 0, to: 40 }),
            ..TailRow::default()
        };
        assert_eq!(
            tail_json(&gap),
            json!({"offset": 0, "gap": {"from": 0, "to": 40}})
        );
        assert!(tail_note(&gap).unwrap().contains("rows 0..40 are gone"));
        let restore = TailRow {
            offset: 90,
            restore: Some(arroyod_proto::Restore {
                generation: 3,
                epoch: 4,
                replayed: Some(arroyod_proto::OffsetRange { from: 80, to: 90 }),
                fresh: false,
            }),
            ..TailRow::default()
        };
        let note = tail_note(&restore).unwrap();
        assert!(
            note.contains("restored checkpoint 4: rows 80..90"),
            "{note}"
        );
    }

    #[test]
    fn explain_renders_as_tables_and_dot() {
        let g = ExplainResponse {
            nodes: vec![
                arroyod_proto::GraphNode {
                    index: 0,
                    id: "source-1".to_owned(),
                    label: "source:impulse".to_owned(),
                    kind: "source".to_owned(),
                    parallelism: 2,
                },
                arroyod_proto::GraphNode {
                    index: 1,
                    id: "sink-2".to_owned(),
                    label: "sink:\"out\"".to_owned(),
                    kind: "sink".to_owned(),
                    parallelism: 1,
                },
            ],
            edges: vec![arroyod_proto::GraphEdge {
                from: 0,
                to: 1,
                kind: "shuffle".to_owned(),
                keys: vec!["counter".to_owned()],
            }],
            errors: vec![],
        };
        let text = text(|w| write_explain(w, &g));
        assert!(
            text.contains("0  source  source:impulse  2            source-1"),
            "{text}"
        );
        assert!(text.contains("0 -> 1  shuffle  counter"), "{text}");
        let dot = explain_dot(&g);
        assert!(dot.starts_with("digraph dataflow {"), "{dot}");
        assert!(
            dot.contains("n0 -> n1 [label=\"shuffle [counter]\"];"),
            "{dot}"
        );
        assert!(dot.contains("sink:\\\"out\\\""), "{dot}");
    }

    #[test]
    fn sinks_line_lists_the_sinks() {
        assert_eq!(sinks_line(&[]), "sinks: (none)");
        assert_eq!(
            sinks_line(&["stdout".to_owned(), "out".to_owned()]),
            "sinks: stdout, out"
        );
    }
}
