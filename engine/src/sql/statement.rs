//! Splits a SQL file into statements at the token level and undoes the parts of Arroyo's
//! dialect that sqlparser does not know, keeping every token's position:
//!
//! 1. `WATERMARK FOR col [AS expr]` inside a CREATE TABLE's column list is cut out and kept
//!    as a [`WatermarkClause`].
//! 2. A quoted option key in `WITH ('json.unstructured' = 'true')` becomes a quoted identifier.
//! 3. `METADATA FROM 'key'` after a column's type is cut out and kept as a
//!    [`MetadataClause`].
//! 4. A lone `?` is the JSON operator `json ? key`, not a placeholder.
//! 5. `PARTITIONED BY (col, ...)` after a CREATE TABLE's column list or options is cut out and
//!    kept as a [`PartitionedBy`] (sqlparser reads Hive's form, with types, and only before
//!    `WITH`).

use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use super::SqlError;

/// One statement's tokens, ready for the parser.
#[derive(Debug, Clone)]
pub struct RawStatement {
    pub tokens: Vec<TokenWithSpan>,
    /// Where its first token starts.
    pub start: Location,
    /// `WATERMARK FOR` clauses cut out of a CREATE TABLE.
    pub watermarks: Vec<WatermarkClause>,
    /// `METADATA FROM` clauses cut out of a CREATE TABLE's columns.
    pub metadata: Vec<MetadataClause>,
    /// `PARTITIONED BY (...)` cut out of a CREATE TABLE.
    pub partitioned_by: Option<PartitionedBy>,
}

/// `PARTITIONED BY (col, ...)`: the columns, or the first token that is not a column name.
#[derive(Debug, Clone)]
pub struct PartitionedBy {
    pub columns: Result<Vec<String>, NotAColumn>,
    pub start: Location,
}

/// The first token of a `PARTITIONED BY` list that is not a column name (a transform's `(`, a
/// missing name before `)`, a literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAColumn(pub String);

/// `column TYPE METADATA FROM 'key'`.
#[derive(Debug, Clone)]
pub struct MetadataClause {
    pub column: String,
    pub key: String,
    pub start: Location,
}

/// `WATERMARK FOR column [AS expr]`.
#[derive(Debug, Clone)]
pub struct WatermarkClause {
    pub column: String,
    /// The expression's tokens; None for the default delay.
    pub expr: Option<Vec<TokenWithSpan>>,
    pub start: Location,
}

fn is_word(t: &Token, kw: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == kw)
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// Tokenizes `sql` and splits it at top-level semicolons; empty statements are dropped.
pub fn split(sql: &str, dialect: &dyn Dialect) -> Result<Vec<RawStatement>, SqlError> {
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::at(e.message, e.location))?;
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0i32;
    for mut t in tokens {
        // `json ? 'key'` (JSON member test): sqlparser's generic dialect reads a lone `?` as
        // a placeholder, which a streaming query has no use for.
        if matches!(&t.token, Token::Placeholder(p) if p == "?") {
            t.token = Token::Question;
        }
        if let Token::Number(text, _) = &t.token {
            check_number(text, t.span.start)?;
        }
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                push_statement(&mut statements, std::mem::take(&mut current));
                depth = 0;
                continue;
            }
            Token::EOF => continue,
            _ => {}
        }
        current.push(t);
    }
    push_statement(&mut statements, current);
    Ok(statements)
}

/// Refuses a numeric literal no numeric type holds (DataFusion would make it an infinite
/// float: every row null or wrong).
fn check_number(text: &str, at: Location) -> Result<(), SqlError> {
    // Spellings Rust does not parse (`1_000`) are the parser's to judge.
    if !text.parse::<f64>().is_ok_and(f64::is_infinite) {
        return Ok(());
    }
    let shown: String = text.chars().take(20).collect();
    let more = if text.len() > shown.len() { "..." } else { "" };
    Err(SqlError::at(
        format!(
            "the number {shown}{more} ({} characters) is out of range of every numeric type",
            text.len()
        ),
        at,
    ))
}

fn push_statement(out: &mut Vec<RawStatement>, tokens: Vec<TokenWithSpan>) {
    let Some(first) = tokens.iter().find(|t| !is_trivia(&t.token)) else {
        return;
    };
    let start = first.span.start;
    let mut stmt = RawStatement {
        tokens,
        start,
        watermarks: vec![],
        metadata: vec![],
        partitioned_by: None,
    };
    if is_create_table(&stmt.tokens) {
        rewrite_create_table(&mut stmt);
    }
    out.push(stmt);
}

fn is_create_table(tokens: &[TokenWithSpan]) -> bool {
    let mut words = tokens.iter().filter(|t| !is_trivia(&t.token));
    if !words
        .next()
        .is_some_and(|t| is_word(&t.token, Keyword::CREATE))
    {
        return false;
    }
    for t in words {
        match &t.token {
            Token::Word(w) if w.keyword == Keyword::TABLE => return true,
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::OR | Keyword::REPLACE | Keyword::TEMPORARY | Keyword::TEMP
                ) => {}
            _ => return false,
        }
    }
    false
}

fn rewrite_create_table(stmt: &mut RawStatement) {
    let tokens = std::mem::take(&mut stmt.tokens);
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut depth = 0;
    // Which top-level parenthesis we are in: the column list, or the WITH options.
    let mut in_columns = false;
    let mut in_options = false;
    let mut seen_columns = false;
    // Where the current column's definition starts in `out`.
    let mut column_start = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match &t.token {
            Token::LParen => {
                if depth == 0 {
                    let prev = out.iter().rev().find(|t| !is_trivia(&t.token));
                    if prev.is_some_and(|p| is_word(&p.token, Keyword::WITH)) {
                        in_options = true;
                    } else if !seen_columns {
                        in_columns = true;
                        seen_columns = true;
                        column_start = out.len() + 1;
                    }
                }
                depth += 1;
            }
            Token::Comma if in_columns && depth == 1 => column_start = out.len() + 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::PARTITIONED => {
                if let Some((clause, end)) = partitioned_by(&tokens, i) {
                    stmt.partitioned_by = Some(clause);
                    i = end;
                    continue;
                }
            }
            Token::Word(w)
                if in_columns && depth == 1 && w.value.eq_ignore_ascii_case("metadata") =>
            {
                let mut rest = tokens[i + 1..]
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| !is_trivia(&t.token));
                if let (Some((_, from)), Some((k, key))) = (rest.next(), rest.next())
                    && is_word(&from.token, Keyword::FROM)
                {
                    let column = out[column_start.min(out.len())..]
                        .iter()
                        .find(|t| !is_trivia(&t.token))
                        .map(|t| match &t.token {
                            Token::Word(w) if w.quote_style.is_some() => w.value.clone(),
                            Token::Word(w) => w.value.to_ascii_lowercase(),
                            other => other.to_string(),
                        })
                        .unwrap_or_default();
                    let key = match &key.token {
                        Token::SingleQuotedString(k) | Token::DoubleQuotedString(k) => k.clone(),
                        other => other.to_string(),
                    };
                    stmt.metadata.push(MetadataClause {
                        column,
                        key,
                        start: t.span.start,
                    });
                    i += k + 2;
                    continue;
                }
            }
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    in_columns = false;
                    in_options = false;
                }
            }
            Token::Word(w)
                if in_columns && depth == 1 && w.value.eq_ignore_ascii_case("watermark") =>
            {
                let next_word = tokens[i + 1..].iter().find(|t| !is_trivia(&t.token));
                if next_word.is_some_and(|n| is_word(&n.token, Keyword::FOR)) {
                    let end = clause_end(&tokens, i);
                    stmt.watermarks
                        .push(parse_watermark(&tokens[i..end], t.span.start));
                    // Drop the comma that separated the clause from the previous column.
                    if let Some(pos) = out.iter().rposition(|t| !is_trivia(&t.token))
                        && out[pos].token == Token::Comma
                    {
                        out.truncate(pos);
                    }
                    i = end;
                    continue;
                }
            }
            Token::SingleQuotedString(key) if in_options && depth == 1 => {
                let next = tokens[i + 1..].iter().find(|t| !is_trivia(&t.token));
                if next.is_some_and(|n| n.token == Token::Eq) {
                    out.push(TokenWithSpan {
                        token: Token::Word(Word {
                            value: key.clone(),
                            quote_style: Some('"'),
                            keyword: Keyword::NoKeyword,
                        }),
                        span: t.span,
                    });
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push(t.clone());
        i += 1;
    }
    stmt.tokens = out;
}

impl PartitionedBy {
    /// The option entry that stands for the clause on a table of `connector` (see
    /// `connector::filesystem::PARTITIONED_BY`); only the filesystem connector takes one.
    pub fn option(&self, connector: Option<&str>) -> Result<(String, String), SqlError> {
        if connector != Some("filesystem") {
            return Err(SqlError::at(
                "PARTITIONED BY is only supported on filesystem sink tables \
                 (or give the option partitioning.fields)",
                self.start,
            ));
        }
        match &self.columns {
            Ok(columns) if !columns.is_empty() => Ok((
                crate::connector::filesystem::PARTITIONED_BY.to_string(),
                columns.join(","),
            )),
            Ok(_) => Err(SqlError::at(
                "PARTITIONED BY needs at least one column",
                self.start,
            )),
            Err(NotAColumn(token)) => Err(SqlError::at(
                format!(
                    "PARTITIONED BY takes column names, separated by ',': unexpected '{token}' \
                     (partition transforms such as bucket() or day() are not supported; \
                     use partitioning.time_pattern for time directories)"
                ),
                self.start,
            )),
        }
    }
}

/// `PARTITIONED BY ( ... )` starting at `start`, and the index just past its `)`; None when
/// the tokens there are not that.
fn partitioned_by(tokens: &[TokenWithSpan], start: usize) -> Option<(PartitionedBy, usize)> {
    let significant: Vec<usize> = (start..tokens.len())
        .filter(|&i| !is_trivia(&tokens[i].token))
        .collect();
    let (&by, &open) = (significant.get(1)?, significant.get(2)?);
    if !is_word(&tokens[by].token, Keyword::BY) || tokens[open].token != Token::LParen {
        return None;
    }
    let mut columns = Ok(Vec::new());
    let mut expect_name = true;
    // Parentheses opened inside the clause (a transform's arguments).
    let mut depth = 0;
    for &i in &significant[3..] {
        let t = &tokens[i].token;
        match t {
            Token::LParen => {
                depth += 1;
                if columns.is_ok() {
                    columns = Err(NotAColumn("(".to_string()));
                }
            }
            Token::RParen if depth > 0 => depth -= 1,
            Token::RParen => {
                if expect_name && columns.as_ref().is_ok_and(|c: &Vec<String>| !c.is_empty()) {
                    columns = Err(NotAColumn(")".to_string()));
                }
                let clause = PartitionedBy {
                    columns,
                    start: tokens[start].span.start,
                };
                return Some((clause, i + 1));
            }
            Token::Word(w) if expect_name => {
                let name = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                if let Ok(c) = &mut columns {
                    c.push(name);
                }
                expect_name = false;
            }
            Token::Comma if !expect_name => expect_name = true,
            other => {
                if columns.is_ok() {
                    columns = Err(NotAColumn(other.to_string()));
                }
            }
        }
    }
    None
}

/// Index just past the clause starting at `start`: the next top-level `,` or `)` of the
/// column list.
fn clause_end(tokens: &[TokenWithSpan], start: usize) -> usize {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(start) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen if depth == 0 => return i,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => return i,
            _ => {}
        }
    }
    tokens.len()
}

fn parse_watermark(tokens: &[TokenWithSpan], start: Location) -> WatermarkClause {
    let significant: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_trivia(&t.token)).collect();
    // WATERMARK FOR <column> [AS <expr>]
    let column = match significant.get(2).map(|t| &t.token) {
        Some(Token::Word(w)) => {
            if w.quote_style.is_some() {
                w.value.clone()
            } else {
                w.value.to_ascii_lowercase()
            }
        }
        _ => String::new(),
    };
    let expr = significant
        .iter()
        .position(|t| is_word(&t.token, Keyword::AS))
        .map(|as_pos| {
            let first = significant[as_pos + 1..].first();
            let from = first
                .and_then(|f| tokens.iter().position(|t| std::ptr::eq(t, *f)))
                .unwrap_or(tokens.len());
            tokens[from..].to_vec()
        });
    WatermarkClause {
        column,
        expr,
        start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    fn text(tokens: &[TokenWithSpan]) -> String {
        tokens.iter().map(|t| t.token.to_string()).collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_and_keeps_positions() {
        let s = split("SELECT 1;\n\n  SELECT (2);;", &GenericDialect {}).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].start.line, s[1].start.column), (3, 3));
    }

    #[test]
    fn cuts_watermark_clauses_out_of_the_column_list() {
        let sql = "CREATE TABLE t (ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS (ts - INTERVAL '1' SECOND), x INT) WITH ('json.unstructured' = 'true')";
        let s = split(sql, &GenericDialect {}).unwrap();
        assert_eq!(s[0].watermarks.len(), 1);
        let w = &s[0].watermarks[0];
        assert_eq!(w.column, "ts");
        assert_eq!(text(w.expr.as_ref().unwrap()), "(ts - INTERVAL '1' SECOND)");
        let rest = text(&s[0].tokens);
        assert!(rest.contains("NOT NULL, x INT"), "{rest}");
        assert!(rest.contains("\"json.unstructured\" = 'true'"), "{rest}");
    }

    #[test]
    fn cuts_partitioned_by_out_after_the_options() {
        let sql = "CREATE TABLE t (k TEXT, \"Day\" TEXT) WITH (connector = 'filesystem') PARTITIONED BY (k, \"Day\")";
        let s = split(sql, &GenericDialect {}).unwrap();
        let p = s[0].partitioned_by.as_ref().unwrap();
        assert_eq!(p.columns, Ok(vec!["k".to_string(), "Day".to_string()]));
        assert!(text(&s[0].tokens).ends_with("(connector = 'filesystem') "));
        let sql =
            "CREATE TABLE t (k TEXT) WITH (connector = 'filesystem') PARTITIONED BY (bucket(k, 4))";
        let s = split(sql, &GenericDialect {}).unwrap();
        assert_eq!(
            s[0].partitioned_by.as_ref().unwrap().columns,
            Err(NotAColumn("(".to_string()))
        );
    }

    #[test]
    fn cuts_metadata_clauses_out_of_column_definitions() {
        let sql = "CREATE TABLE t (v TEXT, \"Off\" BIGINT METADATA FROM 'offset_id', p INT NOT NULL METADATA FROM 'partition') WITH (connector = 'kafka')";
        let s = split(sql, &GenericDialect {}).unwrap();
        let m: Vec<(&str, &str)> = s[0]
            .metadata
            .iter()
            .map(|m| (m.column.as_str(), m.key.as_str()))
            .collect();
        assert_eq!(m, vec![("Off", "offset_id"), ("p", "partition")]);
        assert_eq!(s[0].metadata[0].start.column, 38);
        let rest = text(&s[0].tokens);
        assert!(
            rest.contains("(v TEXT, \"Off\" BIGINT , p INT NOT NULL )"),
            "{rest}"
        );
    }

    #[test]
    fn watermark_without_expression_and_last_in_list() {
        let sql = "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts ) WITH (connector = 'x')";
        let s = split(sql, &GenericDialect {}).unwrap();
        assert!(s[0].watermarks[0].expr.is_none());
        assert!(
            text(&s[0].tokens)
                .replace(" ", "")
                .contains("(tsTIMESTAMP)WITH")
        );
    }
}
