//! Text and JSON renderings of the daemon's answers.
//!
//! Every function writes to the writer it is given and never decides where output goes: results
//! go to stdout and diagnostics to stderr, as `command` chooses. JSON keys are the field names of
//! the proto messages, values are kept as they are (an empty string or `0` means unset, as in
//! proto3), so scripts see the same data in every rendering.

use std::io::{self, Write};

use arroyod_proto::{Pipeline, SqlError, ValidateResponse};
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
        "query": p.query,
    })
}

/// A pipeline as `<name> <id>`, or `<id>` when it has no name: the id is always the last word.
pub fn pipeline_label(p: &Pipeline) -> String {
    if p.name.is_empty() {
        p.id.clone()
    } else {
        format!("{} {}", p.name, p.id)
    }
}

/// The answer of `validate` as `{"errors": [{message, line, column}], "sinks": [..]}`.
pub fn validate_json(response: &ValidateResponse) -> Value {
    let errors: Vec<Value> = response
        .errors
        .iter()
        .map(|e| json!({ "message": e.message, "line": e.line, "column": e.column }))
        .collect();
    json!({ "errors": errors, "sinks": response.sinks })
}

/// Writes `value` pretty-printed, then a newline.
pub fn write_json(w: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value)?;
    writeln!(w)
}

/// Writes the pipelines as a table with the columns ID, NAME, STATE and CREATED.
pub fn write_table(w: &mut impl Write, pipelines: &[Pipeline]) -> io::Result<()> {
    let header = ["ID", "NAME", "STATE", "CREATED"];
    let rows: Vec<[&str; 4]> = pipelines
        .iter()
        .map(|p| [p.id.as_str(), &p.name, &p.state, &p.created_at])
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// Writes one pipeline as `key: value` lines, the query last and indented.
pub fn write_status(w: &mut impl Write, p: &Pipeline) -> io::Result<()> {
    fn or_dash(s: &str) -> &str {
        if s.is_empty() { "-" } else { s }
    }
    let worker_pid = match p.worker_pid {
        0 => "-".to_owned(),
        pid => pid.to_string(),
    };
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
            "query",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert_eq!(v["id"], "p1");
        assert_eq!(v["failure"], "");
        assert_eq!(v["rows"], 42);
        assert_eq!(v.as_object().map(|o| o.len()), Some(12));
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
            out.starts_with("id:          p1\nname:        wordcount\n"),
            "{out}"
        );
        assert!(out.contains("\nworker_pid:  -\n"), "{out}");
        assert!(out.contains("\nfailure:     boom\n"), "{out}");
        assert!(out.ends_with("query:\n    SELECT 1\n    FROM t\n"), "{out}");
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
