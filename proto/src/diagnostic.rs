//! The one diagnostic format of arroyod and arroyoctl, for an error at a place in a query
//! file:
//!
//! ```text
//! q.sql:2:15: error: table 'nope' not found
//!   2 | SELECT * FROM nope;
//!     |               ^
//! hint: tables are created with CREATE TABLE before they are read
//! ```
//!
//! The first line is `FILE:LINE:COL: error: message` (the parts of the position that are
//! unknown, 0, are left out); then, when the source is at hand and the line known, that line
//! with a caret under the column; then one `hint:` line per hint. Lines and columns are
//! 1-based, columns count characters. It needs nothing but `std`.

use std::fmt::Write as _;

/// An error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    /// How the file is named (`<stdin>` for standard input).
    pub file: &'a str,
    /// 1-based; 0: unknown.
    pub line: u32,
    /// 1-based, in characters; 0: unknown.
    pub column: u32,
    pub message: &'a str,
    pub hints: &'a [String],
}

impl Diagnostic<'_> {
    /// The first line: `FILE:LINE:COL: error: message`.
    pub fn headline(&self) -> String {
        self.headline_as("error")
    }

    /// The first line with another severity (`warning`).
    fn headline_as(&self, severity: &str) -> String {
        let Diagnostic {
            file,
            line,
            column,
            message,
            ..
        } = self;
        match (line, column) {
            (0, _) => format!("{file}: {severity}: {message}"),
            (line, 0) => format!("{file}:{line}: {severity}: {message}"),
            (line, column) => format!("{file}:{line}:{column}: {severity}: {message}"),
        }
    }

    /// Every line of a warning (`FILE:LINE:COL: warning: message`), like [`Self::render`].
    pub fn render_warning(&self, source: Option<&str>) -> String {
        let text = source.and_then(|s| s.lines().nth(self.line.checked_sub(1)? as usize));
        self.render_warning_line(text)
    }

    /// Every line of a warning, like [`Self::render_line`].
    pub fn render_warning_line(&self, text: Option<&str>) -> String {
        let error = self.render_line(text);
        let (_, rest) = error.split_once('\n').unwrap_or((&error, ""));
        format!("{}\n{rest}", self.headline_as("warning"))
    }

    /// Every line, with the source line and caret when `source` (the whole file) is given.
    pub fn render(&self, source: Option<&str>) -> String {
        let text = source.and_then(|s| s.lines().nth(self.line.checked_sub(1)? as usize));
        self.render_line(text)
    }

    /// Every line, with `text` (the line the error is on) and a caret when given.
    pub fn render_line(&self, text: Option<&str>) -> String {
        let mut out = self.headline();
        out.push('\n');
        if let Some(text) = text {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let _ = writeln!(out, " {number} | {text}");
            if self.column > 0 {
                // Tabs stay tabs, so the caret lines up whatever the tab width.
                let lead: String = text
                    .chars()
                    .take(self.column as usize - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let _ = writeln!(out, " {pad} | {lead}^");
            }
        }
        for hint in self.hints {
            let _ = writeln!(out, "hint: {hint}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_source_line_caret_and_hints() {
        let hints = vec!["create it first".to_string()];
        let d = Diagnostic {
            file: "q.sql",
            line: 2,
            column: 15,
            message: "table 'nope' not found",
            hints: &hints,
        };
        let source = "CREATE TABLE t (x INT);\nSELECT * FROM nope;\n";
        assert_eq!(
            d.render(Some(source)),
            "q.sql:2:15: error: table 'nope' not found\n \
             2 | SELECT * FROM nope;\n   \
             |               ^\n\
             hint: create it first\n"
        );
        assert_eq!(
            d.render(None),
            "q.sql:2:15: error: table 'nope' not found\nhint: create it first\n"
        );
    }

    #[test]
    fn unknown_parts_are_left_out_and_tabs_kept() {
        let d = Diagnostic {
            file: "<stdin>",
            line: 0,
            column: 0,
            message: "m",
            hints: &[],
        };
        assert_eq!(d.render(Some("x")), "<stdin>: error: m\n");
        let d = Diagnostic {
            line: 1,
            column: 3,
            ..d
        };
        assert_eq!(
            d.render(Some("\tab")),
            "<stdin>:1:3: error: m\n 1 | \tab\n   | \t ^\n"
        );
        let d = Diagnostic { column: 0, ..d };
        assert_eq!(d.render(Some("\tab")), "<stdin>:1: error: m\n 1 | \tab\n");
    }
}
