//! Secrets in queries. Arroyo's `{{ VAR }}` substitution takes values from the environment of
//! the process that plans (the daemon, and the worker it starts with the same environment), so
//! that credentials need not be written into a query, and so into the metadata, its snapshots
//! and `status`. Option values named like secrets (`*password*`, `*secret*`, `*key*`,
//! `*token*`) written into a query are shown as `'****'` by `status` and `list`, and are cut
//! out of error messages.
//!
//! It reads SQL as tokens (string literals with `''` escapes, quoted and bare identifiers,
//! comments), never as text patterns, so that a quote in a comment cannot shift what is
//! redacted. It never changes what is stored: the query a worker runs is the one submitted.

/// What secrets are replaced with.
pub const REDACTED: &str = "****";

/// True for an option name that holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key", "token", "credential"]
        .iter()
        .any(|word| name.contains(word))
}

/// A token of SQL text, with its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A string literal; the range includes the quotes.
    Literal,
    /// A bare or double-quoted identifier, dots included.
    Name,
    Equals,
    Other,
}

/// The tokens of `sql` that matter here, with their byte ranges; comments and blanks are
/// skipped.
fn tokens(sql: &str) -> Vec<(Token, usize, usize)> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i = (i + 2).min(b.len());
            continue;
        }
        let quoted = |quote: u8, i: &mut usize| {
            *i += 1;
            while *i < b.len() {
                if b[*i] == quote {
                    if b.get(*i + 1) == Some(&quote) {
                        *i += 2;
                        continue;
                    }
                    *i += 1;
                    return;
                }
                *i += 1;
            }
        };
        let token = match c {
            b'\'' => {
                quoted(b'\'', &mut i);
                Token::Literal
            }
            b'"' => {
                quoted(b'"', &mut i);
                Token::Name
            }
            b'=' => {
                i += 1;
                Token::Equals
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.') || b[i] >= 0x80)
                {
                    i += 1;
                }
                Token::Name
            }
            _ => {
                i += 1;
                Token::Other
            }
        };
        out.push((token, start, i));
    }
    out
}

/// The byte ranges (inside the quotes) of the values of options named like secrets:
/// `'name' = 'value'` or `name = 'value'`; and in a Kafka table's `client_configs =
/// 'k1=v1,k2=v2'`, the values of the entries named like secrets (`sasl.password`,
/// `ssl.key.password`, ...).
fn secret_ranges(sql: &str) -> Vec<(usize, usize)> {
    let t = tokens(sql);
    t.windows(3)
        .flat_map(|w| match w {
            [
                (Token::Name | Token::Literal, ns, ne),
                (Token::Equals, ..),
                (Token::Literal, vs, ve),
            ] if ve - vs >= 2 => {
                let name = sql[*ns..*ne].trim_matches(['\'', '"']);
                if name.eq_ignore_ascii_case("headers") {
                    // HTTP headers carry `Authorization`, API keys, cookies: every value.
                    entries(sql, vs + 1, ve - 1, ':', |_| true)
                } else if is_secret_name(name) {
                    vec![(vs + 1, ve - 1)]
                } else if name.eq_ignore_ascii_case("client_configs") {
                    entries(sql, vs + 1, ve - 1, '=', is_secret_name)
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        })
        .collect()
}

/// The byte ranges of the values of the `key<separator>value` entries whose key is `secret`
/// in the comma-separated list `sql[start..end]`.
fn entries(
    sql: &str,
    start: usize,
    end: usize,
    separator: char,
    secret: fn(&str) -> bool,
) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut at = start;
    for entry in sql[start..end].split(',') {
        if let Some((key, value)) = entry.split_once(separator)
            && secret(key.trim())
        {
            let value_start = at + key.len() + 1;
            let trimmed = value.trim();
            if !trimmed.is_empty() {
                let lead = value.len() - value.trim_start().len();
                ranges.push((value_start + lead, value_start + lead + trimmed.len()));
            }
        }
        at += entry.len() + 1;
    }
    ranges
}

/// The values of options named like secrets in `sql`, longest first, `''` unescaped.
pub fn secret_values(sql: &str) -> Vec<String> {
    let mut values: Vec<String> = secret_ranges(sql)
        .into_iter()
        .map(|(s, e)| sql[s..e].replace("''", "'"))
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// `sql` with the values of options named like secrets replaced by [`REDACTED`].
pub fn redact_query(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (s, e) in secret_ranges(sql) {
        out.push_str(&sql[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&sql[at..]);
    out
}

/// The shortest value [`redact`] cuts out wherever it occurs in free text: a shorter one
/// (`'id'` of a `*key*` option, a 3-letter password) would mangle every word it occurs in, so
/// it is cut out only where it stands quoted, as messages quote option values.
pub const MIN_REDACTED: usize = 4;

/// `text` with every one of `secrets` replaced by [`REDACTED`]: everywhere for those of
/// [`MIN_REDACTED`] bytes or more, only in quotes (`'abc'`, `"abc"`) for shorter ones.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| {
            if s.len() >= MIN_REDACTED {
                return t.replace(s.as_str(), REDACTED);
            }
            ['\'', '"'].iter().fold(t, |t, q| {
                t.replace(&format!("{q}{s}{q}"), &format!("{q}{REDACTED}{q}"))
            })
        })
}

/// 1-based line and column of byte `at` in `text`.
pub fn position(text: &str, at: usize) -> (u32, u32) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line as u32, column as u32)
}

/// A `{{ NAME }}` whose variable is not set, at its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name} is not set (for {{{{ {name} }}}})")]
pub struct Unset {
    pub name: String,
    pub line: u32,
    pub column: u32,
}

/// The values of secret options of `sql` once its variables are substituted from this
/// process's environment: what messages about it must not show.
pub fn secrets_of(sql: &str) -> Vec<String> {
    let substituted = substitute(sql, |name| std::env::var(name).ok());
    secret_values(substituted.as_deref().unwrap_or(sql))
}

/// `sql` with each `{{ NAME }}` (NAME of letters, digits and `_`, blanks allowed inside the
/// braces) replaced by the value `lookup` gives; an unset one is an error at its position.
pub fn substitute(
    sql: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Unset>> {
    let mut out = String::with_capacity(sql.len());
    let mut errors = Vec::new();
    let mut rest = 0;
    while let Some(open) = sql[rest..].find("{{").map(|i| i + rest) {
        let Some(close) = sql[open + 2..].find("}}").map(|i| i + open + 2) else {
            break;
        };
        let name = sql[open + 2..close].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&sql[rest..open + 2]);
            rest = open + 2;
            continue;
        }
        out.push_str(&sql[rest..open]);
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => {
                let (line, column) = position(sql, open);
                errors.push(Unset {
                    name: name.to_string(),
                    line,
                    column,
                });
            }
        }
        rest = close + 2;
    }
    out.push_str(&sql[rest..]);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_options_are_found_by_name_as_tokens() {
        let sql = "CREATE TABLE t WITH (connector = 'filesystem', path = 's3://b/x',
             'storage.aws_secret_access_key' = 'it''s secret', -- 'password' = 'no'
             api_token = 'tok', format = 'json', message_key = 'id');";
        assert_eq!(secret_values(sql), vec!["it's secret", "tok", "id"]);
        let shown = redact_query(sql);
        assert!(
            !shown.contains("it''s secret") && !shown.contains("'tok'"),
            "{shown}"
        );
        assert!(
            shown.contains("'storage.aws_secret_access_key' = '****'"),
            "{shown}"
        );
        assert!(shown.contains("path = 's3://b/x'"), "{shown}");
        assert!(shown.contains("-- 'password' = 'no'"), "{shown}");
        assert!(shown.contains("message_key = '****'"), "{shown}");
        assert_eq!(
            redact(
                "bad value 'it's secret' for the key id",
                &secret_values(sql)
            ),
            "bad value '****' for the key id"
        );
    }

    #[test]
    fn short_secrets_are_cut_out_where_quoted_and_headers_are_secret() {
        let hidden = vec!["hunter22".to_string(), "abc".to_string()];
        assert_eq!(
            redact(
                "password 'abc' refused; abcd and \"abc\" and hunter22x",
                &hidden
            ),
            "password '****' refused; abcd and \"****\" and ****x"
        );
        let sql = "CREATE TABLE s WITH (connector = 'sse', endpoint = 'http://h/',
             headers = 'Authorization: Bearer t0k3n, X-Key:k', format = 'json');";
        assert_eq!(secret_values(sql), vec!["Bearer t0k3n", "k"]);
        assert!(
            redact_query(sql).contains("headers = 'Authorization: ****, X-Key:****'"),
            "{}",
            redact_query(sql)
        );
    }

    #[test]
    fn secret_entries_of_client_configs_are_redacted() {
        let sql = "CREATE TABLE k WITH (connector = 'kafka', client_configs = 'linger.ms=5, sasl.password = hunter22 ,ssl.key.password=p4ss,acks=all');";
        assert_eq!(secret_values(sql), vec!["hunter22", "p4ss"]);
        let shown = redact_query(sql);
        assert!(
            shown.contains("client_configs = 'linger.ms=5, sasl.password = **** ,ssl.key.password=****,acks=all'"),
            "{shown}"
        );
    }

    #[test]
    fn variables_are_substituted_and_unset_ones_positioned() {
        let env = |name: &str| (name == "DIR").then(|| "/data".to_string());
        assert_eq!(
            substitute("path = '{{ DIR }}/x', y = '{{DIR}}'", env).unwrap(),
            "path = '/data/x', y = '/data'"
        );
        // Not a variable: left as it is.
        assert_eq!(substitute("'{{ a b }}' {{", env).unwrap(), "'{{ a b }}' {{");
        let errors = substitute("SELECT 1;\n  x = '{{ NOPE }}'", env).unwrap_err();
        assert_eq!((errors[0].line, errors[0].column), (2, 8));
        assert!(
            errors[0].to_string().contains("NOPE is not set"),
            "{}",
            errors[0]
        );
    }
}
