//! Text and JSON renderings of the daemon's answers.
//!
//! Every function writes to the writer it is given and never decides where output goes: results
//! go to stdout and diagnostics to stderr, as `command` chooses. JSON keys are the field names of
//! the proto messages, values are kept as they are (an empty string or `0` means unset, as in
//! proto3), so scripts see the same data in every rendering.

use std::io::{self, Write};

use arroyod_proto::{Checkpoint, Pipeline, SqlError, ValidateResponse};
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

/// Query errors as `[{message, line, column}]`.
fn errors_json(errors: &[SqlError]) -> Value {
    errors
        .iter()
        .map(|e| json!({ "message": e.message, "line": e.line, "column": e.column }))
        .collect()
}

/// The answer of `validate` as `{"errors": [{message, line, column}], "sinks": [..]}`.
pub fn validate_json(response: &ValidateResponse) -> Value {
    json!({ "errors": errors_json(&response.errors), "sinks": response.sinks })
}

/// The errors of a refused `submit` as `{"errors": [{message, line, column}]}`.
pub fn submit_errors_json(errors: &[SqlError]) -> Value {
    json!({ "errors": errors_json(errors) })
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
    ];
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (key, value) in fields {
        writeln!(w, "{:<width$} {value}", format!("{key}:"))?;
    }
    writeln!(w, "query:")?;
    for line in p.query.trim_end().lines() {
        writeln!(w, "    {line}")?;
    }
    Ok(())
}

/// One error of a query as `<file>:<line>:<column>: error: <message>`, leaving out the parts
/// of the position that are unknown (0).
pub fn diagnostic(file: &str, e: &SqlError) -> String {
    match (e.line, e.column) {
        (0, _) => format!("{file}: error: {}", e.message),
        (line, 0) => format!("{file}:{line}: error: {}", e.message),
        (line, column) => format!("{file}:{line}:{column}: error: {}", e.message),
    }
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
            "query",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert_eq!(v["id"], "p1");
        assert_eq!(v["failure"], "");
        assert_eq!(v["rows"], 42);
        assert_eq!(v["checkpoint_interval_ms"], 10_000);
        assert_eq!(v["state_url"], "file:///var/lib/arroyod/state/p1");
        assert_eq!(v["last_checkpoint"], 7);
        assert_eq!(v.as_object().map(|o| o.len()), Some(15));
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
    fn diagnostics_leave_out_unknown_positions() {
        let e = |line, column| SqlError {
            message: "no table t".to_owned(),
            line,
            column,
        };
        assert_eq!(
            diagnostic("q.sql", &e(2, 7)),
            "q.sql:2:7: error: no table t"
        );
        assert_eq!(diagnostic("q.sql", &e(2, 0)), "q.sql:2: error: no table t");
        assert_eq!(
            diagnostic("<stdin>", &e(0, 0)),
            "<stdin>: error: no table t"
        );
    }

    #[test]
    fn validate_json_shape() {
        let v = validate_json(&ValidateResponse {
            errors: vec![SqlError {
                message: "m".to_owned(),
                line: 1,
                column: 2,
            }],
            sinks: vec!["stdout".to_owned()],
        });
        assert_eq!(
            v,
            json!({"errors": [{"message": "m", "line": 1, "column": 2}], "sinks": ["stdout"]})
        );
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
