//! SQL conformance: every golden case of `../shared/conformance` (Arroyo's SQL smoke tests) runs
//! through the real `arroyod run`, at parallelism 1 and 3, and the sink file must equal the
//! golden output under the rules of that folder's README.
//!
//! The cases are read at test time from `$CARGO_MANIFEST_DIR/../../shared/conformance`, or from
//! `ARROYOD_CONFORMANCE_DIR`; they are never copied into this repository. For each
//! `queries/<name>.sql`:
//!
//! 1. The optional first line is a directive: `--fail=<Arroyo's message>` (planning must fail
//!    with an error that says the same thing, see [`same_meaning`]) or `--pk=a,b` (the key of
//!    updating output).
//! 2. `$input_dir` becomes the absolute `inputs/` folder and `$output_path` a fresh file in a
//!    temp dir; the rendered query runs as `arroyod run -p P -s <fresh state dir> <file>`
//!    under the harness deadline.
//! 3. The output file is compared with `golden/<name>.json` by [`compare`]: append output as a
//!    multiset of rows, updating (debezium) output by the final rows after replaying c/u/d.
//!
//! Each case also runs the three-way run of that README: with checkpoints at parallelism 2 and
//! its file sources paced ([`THREE_WAY`]), stopped with SIGINT (a final checkpoint) once a
//! checkpoint exists, then rerun on the same state dir at parallelism 3, which restores the
//! checkpoint and runs to the end: the output file must still equal the golden. The same
//! again stopped at parallelism 3 and restored at 1.
//!
//! [`KNOWN_FAILING`] names the cases the engine cannot run yet. They run too: a known-failing
//! case that passes fails the test, so the list never goes stale.

mod harness;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use harness::{DEADLINE, arroyod_bin, path_str, signal, try_run_query, wait_exit, wait_until};
use serde_json::Value;

/// Cases the engine does not pass yet. Remove a name when its feature lands; the test fails
/// when a listed case passes.
const KNOWN_FAILING: &[&str] = &[];

/// How a case runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Straight through at this parallelism.
    Straight(u32),
    /// Checkpoints at the first parallelism, stopped part-way, restored at the second.
    Restored(u32, u32),
}

/// Every case also runs in these modes; results must not depend on them.
const MODES: &[Mode] = &[
    Mode::Straight(1),
    Mode::Straight(3),
    THREE_WAY,
    Mode::Restored(3, 1),
];

/// The three-way run of the conformance README (and, after it in [`MODES`], the same scaling
/// down, where one subtask takes over the state of three).
const THREE_WAY: Mode = Mode::Restored(2, 3);

/// Steps the paced first run of a three-way run reads its largest input in, 10 ms apart.
const PACED_STEPS: usize = 100;

/// How many differing rows and stderr lines a failure shows.
const SHOWN_ROWS: usize = 5;
const STDERR_TAIL: usize = 20;

fn conformance_dir() -> PathBuf {
    match std::env::var_os("ARROYOD_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
    }
}

/// What a case expects, from its first-line directive.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Planning fails with (the meaning of) Arroyo's message.
    Fail(String),
    /// The sink output equals the golden; `pk` keys updating output (None: the whole row).
    Rows { pk: Option<Vec<String>> },
}

fn parse_directive(sql: &str) -> Expect {
    let first = sql.lines().next().unwrap_or("").trim();
    if let Some(message) = first.strip_prefix("--fail=") {
        Expect::Fail(message.trim().to_string())
    } else if let Some(cols) = first.strip_prefix("--pk=") {
        let pk: Vec<String> = cols
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        Expect::Rows {
            pk: (!pk.is_empty()).then_some(pk),
        }
    } else {
        Expect::Rows { pk: None }
    }
}

// ---------------------------------------------------------------------------------------------
// Error messages

/// True when our error message `ours` says what Arroyo's `arroyo` says: of the significant
/// tokens of Arroyo's message (after its `Error during planning:`-style prefixes), numbers
/// with or without a unit (`3600s`) and words longer than 4 characters, at least 75% must
/// appear in ours, case-insensitively (numbers as whole tokens, words also as a prefix of
/// one of our words, so plurals match).
fn same_meaning(ours: &str, arroyo: &str) -> bool {
    let wanted = significant_tokens(strip_prefixes(arroyo));
    if wanted.is_empty() {
        return ours.to_lowercase().contains(&arroyo.trim().to_lowercase());
    }
    let have = tokens(ours);
    let found = wanted
        .iter()
        .filter(|w| {
            have.iter().any(|h| {
                if starts_with_digit(w) {
                    h == *w
                } else {
                    h.starts_with(w.as_str())
                }
            })
        })
        .count();
    found * 4 >= wanted.len() * 3
}

/// Drops leading `Some words:` prefixes (`Error during planning: `), keeping colons inside
/// the message itself (`12:00`, `a::b`).
fn strip_prefixes(message: &str) -> &str {
    let mut rest = message.trim();
    while let Some((head, tail)) = rest.split_once(':') {
        let is_prefix = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '_' || c == '-')
            && tail.starts_with(' ');
        if !is_prefix {
            break;
        }
        rest = tail.trim_start();
    }
    rest
}

fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '_'))
        .map(|t| t.trim_matches('.').to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn starts_with_digit(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_digit())
}

fn significant_tokens(message: &str) -> Vec<String> {
    tokens(message)
        .into_iter()
        .filter(|t| starts_with_digit(t) || t.chars().count() > 4)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Output comparison

/// A JSON value in the form rows are compared in: object keys sorted, timestamp strings as
/// epoch nanoseconds, floats rounded to 9 significant digits (and integral results equal to
/// integers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Canon {
    Null,
    Bool(bool),
    Int(i128),
    /// `{:.8e}` of the rounded float.
    Float(String),
    /// Nanoseconds since the epoch, UTC.
    Time(i128),
    Str(String),
    List(Vec<Canon>),
    Map(BTreeMap<String, Canon>),
}

/// 2^53: integral floats below it are exact integers.
const EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0;

fn canon(v: &Value) -> Canon {
    match v {
        Value::Null => Canon::Null,
        Value::Bool(b) => Canon::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Canon::Int(i.into())
            } else if let Some(u) = n.as_u64() {
                Canon::Int(u.into())
            } else {
                canon_float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => match parse_timestamp(s) {
            Some(nanos) => Canon::Time(nanos),
            None => Canon::Str(s.clone()),
        },
        Value::Array(items) => Canon::List(items.iter().map(canon).collect()),
        Value::Object(map) => Canon::Map(map.iter().map(|(k, v)| (k.clone(), canon(v))).collect()),
    }
}

fn canon_float(f: f64) -> Canon {
    let rounded = format!("{f:.8e}");
    let g: f64 = rounded.parse().unwrap_or(f);
    if g.fract() == 0.0 && g.abs() < EXACT_FLOAT_INT {
        Canon::Int(g as i128)
    } else {
        Canon::Float(rounded)
    }
}

/// Epoch nanoseconds of `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM|±HH]`.
fn parse_timestamp(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits].bytes().enumerate().take(9) {
            nanos += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let off = rest[1..].replace(':', "");
            if !off.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (h, m) = match off.len() {
                2 => (off.parse::<i64>().ok()?, 0),
                4 => (off[..2].parse::<i64>().ok()?, off[2..].parse::<i64>().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Canon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Canon::Null => write!(f, "null"),
            Canon::Bool(b) => write!(f, "{b}"),
            Canon::Int(i) => write!(f, "{i}"),
            Canon::Float(s) => write!(f, "{}", s.parse::<f64>().unwrap_or(f64::NAN)),
            Canon::Time(nanos) => {
                let secs = nanos.div_euclid(1_000_000_000) as i64;
                let sub = nanos.rem_euclid(1_000_000_000);
                let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
                let s = secs.rem_euclid(86_400);
                write!(
                    f,
                    "\"{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
                    s / 3600,
                    s / 60 % 60,
                    s % 60
                )?;
                if sub != 0 {
                    write!(f, ".{}", format!("{sub:09}").trim_end_matches('0'))?;
                }
                write!(f, "\"")
            }
            Canon::Str(s) => write!(f, "{}", Value::String(s.clone())),
            Canon::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    write!(f, "{}{item}", if i == 0 { "" } else { "," })?;
                }
                write!(f, "]")
            }
            Canon::Map(map) => {
                write!(f, "{{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{}:{v}", Value::String(k.clone()))?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// A line of updating output: `{"before", "after", "op": "c"|"u"|"d"|"r"}`.
fn is_change(v: &Value) -> bool {
    v.get("op").is_some_and(Value::is_string)
        && (v.get("before").is_some() || v.get("after").is_some())
}

fn parse_lines(text: &str, what: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("line {} of {what} is not JSON: {e}: {l}", i + 1))
        })
        .collect()
}

/// Replays debezium changes; returns the final rows, sorted. Rows are keyed by the `pk`
/// columns, or (without a pk) counted as a multiset of whole rows.
fn replay(lines: &[Value], pk: Option<&[String]>, what: &str) -> Result<Vec<Canon>, String> {
    let key_of = |row: &Canon, n: usize| -> Result<Vec<Canon>, String> {
        let Canon::Map(map) = row else {
            return Err(format!(
                "line {n} of {what}: the row is not an object: {row}"
            ));
        };
        pk.unwrap_or_default()
            .iter()
            .map(|c| {
                map.get(c).cloned().ok_or_else(|| {
                    format!("line {n} of {what}: the row has no key column {c:?}: {row}")
                })
            })
            .collect()
    };
    let mut keyed: BTreeMap<Vec<Canon>, Canon> = BTreeMap::new();
    let mut counted: BTreeMap<Canon, usize> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let n = i + 1;
        if !is_change(line) {
            return Err(format!(
                "line {n} of {what} is not a debezium change: {line}"
            ));
        }
        let side = |name: &str| match line.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(canon(v)),
        };
        let (before, after) = (side("before"), side("after"));
        let op = line["op"].as_str().unwrap_or_default();
        let (remove, insert) = match op {
            "c" | "r" => (None, after),
            "u" => (before, after),
            "d" => (before, None),
            _ => return Err(format!("line {n} of {what} has an unknown op {op:?}")),
        };
        if op != "d" && insert.is_none() {
            return Err(format!("line {n} of {what}: op {op:?} without \"after\""));
        }
        if op != "c" && op != "r" && remove.is_none() && (op == "d" || pk.is_none()) {
            return Err(format!("line {n} of {what}: op {op:?} without \"before\""));
        }
        if pk.is_some() {
            if let Some(row) = &remove {
                keyed.remove(&key_of(row, n)?);
            }
            if let Some(row) = insert {
                keyed.insert(key_of(&row, n)?, row);
            }
        } else {
            if let Some(row) = remove {
                match counted.get_mut(&row) {
                    Some(c) if *c > 1 => *c -= 1,
                    Some(_) => {
                        counted.remove(&row);
                    }
                    None => {
                        return Err(format!(
                            "line {n} of {what} retracts a row that is not there: {row}"
                        ));
                    }
                }
            }
            if let Some(row) = insert {
                *counted.entry(row).or_default() += 1;
            }
        }
    }
    let mut rows: Vec<Canon> = if pk.is_some() {
        keyed.into_values().collect()
    } else {
        counted
            .into_iter()
            .flat_map(|(row, c)| std::iter::repeat_n(row, c))
            .collect()
    };
    rows.sort();
    Ok(rows)
}

/// Compares sink output with the golden output; `Err` is a readable diff whose first line
/// sums it up.
fn compare(ours: &str, golden: &str, pk: Option<&[String]>) -> Result<(), String> {
    let golden_lines = parse_lines(golden, "the golden")?;
    let our_lines = parse_lines(ours, "the output")?;
    let updating = golden_lines.iter().any(is_change);
    let (expected, got, unit) = if updating {
        let expected = replay(&golden_lines, pk, "the golden")?;
        let got = replay(&our_lines, pk, "the output")?;
        (expected, got, "final rows after replaying the changes")
    } else {
        let mut expected: Vec<Canon> = golden_lines.iter().map(canon).collect();
        let mut got: Vec<Canon> = our_lines.iter().map(canon).collect();
        expected.sort();
        got.sort();
        (expected, got, "rows")
    };
    let (missing, unexpected) = multiset_diff(&expected, &got);
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "output differs from golden: expected {} {unit}, got {}; {} missing, {} unexpected",
        expected.len(),
        got.len(),
        missing.len(),
        unexpected.len()
    );
    for (title, rows) in [
        ("missing (in golden, not in output)", &missing),
        ("unexpected (in output, not in golden)", &unexpected),
    ] {
        if !rows.is_empty() {
            report.push_str(&format!("\n  first {title}:"));
            for row in rows.iter().take(SHOWN_ROWS) {
                report.push_str(&format!("\n    {row}"));
            }
        }
    }
    Err(report)
}

/// Rows of sorted `expected` not matched in sorted `got`, and the reverse.
fn multiset_diff<'a>(expected: &'a [Canon], got: &'a [Canon]) -> (Vec<&'a Canon>, Vec<&'a Canon>) {
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut unexpected) = (vec![], vec![]);
    while i < expected.len() || j < got.len() {
        match (expected.get(i), got.get(j)) {
            (Some(e), Some(g)) if e == g => {
                i += 1;
                j += 1;
            }
            (Some(e), Some(g)) if e < g => {
                missing.push(e);
                i += 1;
            }
            (Some(e), None) => {
                missing.push(e);
                i += 1;
            }
            (_, Some(g)) => {
                unexpected.push(g);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (missing, unexpected)
}

// ---------------------------------------------------------------------------------------------
// Running the cases

/// A failed run: `reason` is one line, `detail` the diff and the stderr tail.
struct Failure {
    reason: String,
    detail: String,
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let from = lines.len().saturating_sub(STDERR_TAIL);
    let mut tail = format!("arroyod stderr (last {} lines):", lines.len() - from);
    for line in &lines[from..] {
        tail.push_str(&format!("\n    {line}"));
    }
    tail
}

/// The line of stderr that best says why a run failed.
fn first_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("error") || l.contains("panicked"))
        .or(lines.last())
        .map_or_else(|| "no stderr".to_string(), |l| l.to_string())
}

/// The first run of a three-way run: paced, with checkpoints every 20 ms, stopped with SIGINT
/// once a checkpoint exists. Returns its stderr, or why it went wrong.
fn stopped_part_way(
    args: &[&str],
    state: &Path,
    lines_per_step: usize,
    log: &Path,
) -> Result<String, String> {
    let mut child = std::process::Command::new(arroyod_bin())
        .arg("run")
        .args(args)
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", "20ms")
        .env("ARROYO_TEST_FILE_PACE", format!("{lines_per_step}:10"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("creating the log"))
        .spawn()
        .expect("starting arroyod run");
    let checkpointed = || {
        let Ok(pipelines) = std::fs::read_dir(state.join("state")) else {
            return false;
        };
        pipelines.flatten().any(|p| {
            std::fs::read_dir(p.path().join("checkpoints"))
                .map(|epochs| epochs.flatten().any(|e| e.path().join("MANIFEST").exists()))
                .unwrap_or(false)
        })
    };
    wait_until(DEADLINE, "a checkpoint or the end of the run", || {
        (checkpointed() || child.try_wait().unwrap().is_some()).then_some(())
    });
    let ran_to_end = child.try_wait().unwrap().is_some();
    if !ran_to_end {
        signal(child.id(), "INT");
    }
    let status = wait_exit(&mut child, DEADLINE);
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "the first run exited {status}: {}",
            first_error(&stderr)
        ));
    }
    if ran_to_end || !stderr.contains("state=Stopped") {
        return Err("the first run was not stopped part-way (it ended before a checkpoint)".into());
    }
    Ok(stderr)
}

/// The most lines of an input file `sql` reads.
fn input_lines(inputs: &Path, sql: &str) -> usize {
    std::fs::read_dir(inputs)
        .expect("listing the inputs")
        .flatten()
        .filter(|f| sql.contains(&*f.file_name().to_string_lossy()))
        .map(|f| std::fs::read_to_string(f.path()).map_or(0, |t| t.lines().count()))
        .max()
        .unwrap_or(0)
}

/// Runs one case in one mode in a fresh temp dir.
fn run_case(dir: &Path, name: &str, sql: &str, expect: &Expect, mode: Mode) -> Result<(), Failure> {
    let parallelism = match mode {
        Mode::Straight(p) | Mode::Restored(_, p) => p,
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let inputs = dir
        .join("inputs")
        .canonicalize()
        .expect("the inputs folder");
    let output = tmp.path().join("output.json");
    let query = tmp.path().join(format!("{name}.sql"));
    let rendered = sql
        .replace("$input_dir", path_str(&inputs))
        .replace("$output_path", path_str(&output));
    std::fs::write(&query, rendered).expect("writing the query");
    let state = tmp.path().join("state");
    let p = parallelism.to_string();
    let args = ["-p", p.as_str(), "-s", path_str(&state), path_str(&query)];
    // Paths in messages relative to the temp dir, so reasons read `name.sql:3:1: ...`.
    let prefix = format!("{}/", tmp.path().display());
    let fail = |reason: String, detail: String, stderr: &str| {
        let detail = if detail.is_empty() {
            stderr_tail(stderr)
        } else {
            format!("{detail}\n  {}", stderr_tail(stderr))
        };
        let shown = match mode {
            Mode::Straight(p) => format!("-p {p}"),
            Mode::Restored(a, b) => format!("stopped at -p {a}, restored at -p {b}"),
        };
        Failure {
            reason: format!("{shown}: {reason}").replace(&prefix, ""),
            detail: detail.replace(&prefix, ""),
        }
    };
    let mut first_run = String::new();
    if let (Mode::Restored(first, _), Expect::Rows { .. }) = (mode, expect) {
        let p = first.to_string();
        let first_args = ["-p", p.as_str(), "-s", path_str(&state), path_str(&query)];
        let lines = input_lines(&inputs, sql);
        let log = tmp.path().join("first-run.log");
        first_run = stopped_part_way(&first_args, &state, (lines / PACED_STEPS).max(1), &log)
            .map_err(|reason| {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                fail(reason, String::new(), &stderr)
            })?;
    }
    let out = match try_run_query(&args, DEADLINE) {
        Ok(out) => out,
        Err(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(
                format!("did not end within {DEADLINE:?}"),
                String::new(),
                &stderr,
            ));
        }
    };
    let stderr = format!("{first_run}{}", String::from_utf8_lossy(&out.stderr));
    if matches!(mode, Mode::Restored(..))
        && matches!(expect, Expect::Rows { .. })
        && !stderr.contains("resuming it")
    {
        return Err(fail(
            "the second run did not resume the pipeline".into(),
            String::new(),
            &stderr,
        ));
    }
    match expect {
        Expect::Fail(message) => {
            if out.status.success() {
                return Err(fail(
                    format!("planning succeeded, but Arroyo fails it: {message}"),
                    String::new(),
                    &stderr,
                ));
            }
            if stderr.contains("panicked") {
                return Err(fail(
                    format!("panicked ({}): {}", out.status, first_error(&stderr)),
                    String::new(),
                    &stderr,
                ));
            }
            if !same_meaning(&stderr, message) {
                return Err(fail(
                    format!(
                        "the error does not say {message:?}: {}",
                        first_error(&stderr)
                    ),
                    String::new(),
                    &stderr,
                ));
            }
            Ok(())
        }
        Expect::Rows { pk } => {
            if !out.status.success() {
                return Err(fail(
                    format!("{}: {}", out.status, first_error(&stderr)),
                    String::new(),
                    &stderr,
                ));
            }
            let golden_path = dir.join("golden").join(format!("{name}.json"));
            let golden = std::fs::read_to_string(&golden_path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", golden_path.display()));
            let Ok(ours) = std::fs::read_to_string(&output) else {
                return Err(fail(
                    "exited 0 but wrote no output file".to_string(),
                    String::new(),
                    &stderr,
                ));
            };
            compare(&ours, &golden, pk.as_deref()).map_err(|diff| {
                let (reason, rest) = diff.split_once('\n').unwrap_or((&diff, ""));
                fail(reason.to_string(), rest.trim_start().to_string(), &stderr)
            })
        }
    }
}

#[test]
fn golden_cases() {
    let dir = conformance_dir();
    let queries = dir.join("queries");
    let entries = std::fs::read_dir(&queries).unwrap_or_else(|e| {
        panic!(
            "no conformance cases at {} ({e}); set ARROYOD_CONFORMANCE_DIR",
            queries.display()
        )
    });
    let mut names: Vec<String> = entries
        .map(|e| e.expect("listing the queries").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no queries/*.sql in {}",
        queries.display()
    );

    let mut problems = vec![];
    for known in KNOWN_FAILING {
        if !names.iter().any(|n| n == known) {
            problems.push(format!(
                "KNOWN_FAILING names {known:?}, which is not a case"
            ));
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for name in &names {
        let sql = std::fs::read_to_string(queries.join(format!("{name}.sql"))).unwrap();
        let expect = parse_directive(&sql);
        let outcome = MODES
            .iter()
            .try_for_each(|&mode| run_case(&dir, name, &sql, &expect, mode));
        let known = KNOWN_FAILING.contains(&name.as_str());
        match (outcome, known) {
            (Ok(()), false) => {
                passed += 1;
                println!("case {name}: pass");
            }
            (Ok(()), true) => {
                passed += 1;
                println!("case {name}: pass (listed in KNOWN_FAILING)");
                problems.push(format!(
                    "case {name} passes now: remove it from KNOWN_FAILING"
                ));
            }
            (Err(f), true) => {
                failed += 1;
                println!("case {name}: known-failing (reason: {})", f.reason);
            }
            (Err(f), false) => {
                failed += 1;
                println!("case {name}: FAIL (reason: {})", f.reason);
                problems.push(format!("case {name} fails: {}\n  {}", f.reason, f.detail));
            }
        }
    }
    println!("conformance: {passed} passed, {failed} failed");
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// The comparison rules

fn rows(lines: &[&str]) -> String {
    lines.join("\n")
}

#[test]
fn compare_rules_key_order_does_not_matter() {
    let golden = rows(&[r#"{"a":1,"b":"x","c":{"d":true,"e":null}}"#]);
    let ours = rows(&[r#"{"c":{"e":null,"d":true},"b":"x","a":1}"#]);
    compare(&ours, &golden, None).unwrap();
    let other = rows(&[r#"{"c":{"e":null,"d":false},"b":"x","a":1}"#]);
    assert!(compare(&other, &golden, None).is_err());
}

#[test]
fn compare_rules_rows_are_a_multiset() {
    let golden = rows(&[r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":1}"#]);
    compare(
        &rows(&[r#"{"a":1}"#, r#"{"a":1}"#, r#"{"a":2}"#]),
        &golden,
        None,
    )
    .unwrap();
    // A duplicate more or less is a difference, even with the same set of rows.
    let err = compare(
        &rows(&[r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":2}"#]),
        &golden,
        None,
    )
    .unwrap_err();
    assert!(
        err.starts_with(
            "output differs from golden: expected 3 rows, got 3; 1 missing, 1 unexpected"
        ),
        "{err}"
    );
    assert!(
        err.contains(r#"{"a":1}"#) && err.contains(r#"{"a":2}"#),
        "{err}"
    );
    let err = compare(&rows(&[r#"{"a":1}"#, r#"{"a":2}"#]), &golden, None).unwrap_err();
    assert!(err.contains("expected 3 rows, got 2"), "{err}");
    // An empty output is no match for a non-empty golden, and the reverse.
    assert!(compare("", &golden, None).is_err());
    compare("", "", None).unwrap();
    assert!(
        compare("not json", &golden, None)
            .unwrap_err()
            .contains("line 1 of the output")
    );
}

#[test]
fn compare_rules_timestamps_are_values() {
    let golden = rows(&[r#"{"t":"2023-09-18T15:00:00"}"#]);
    for form in [
        "2023-09-18T15:00:00",
        "2023-09-18T15:00:00.000",
        "2023-09-18T15:00:00.000000000",
        "2023-09-18T15:00:00Z",
        "2023-09-18T15:00:00+00:00",
        "2023-09-18T17:00:00+02:00",
        "2023-09-18 15:00:00",
    ] {
        compare(&format!(r#"{{"t":"{form}"}}"#), &golden, None)
            .unwrap_or_else(|e| panic!("{form}: {e}"));
    }
    for other in [
        "2023-09-18T15:00:01",
        "2023-09-18T15:00:00.001",
        "2023-09-18T15:00:00+01:00",
    ] {
        assert!(
            compare(&format!(r#"{{"t":"{other}"}}"#), &golden, None).is_err(),
            "{other}"
        );
    }
    assert_eq!(
        parse_timestamp("2023-10-09T17:13:20.200+00:00"),
        parse_timestamp("2023-10-09T17:13:20.2")
    );
    assert_eq!(
        parse_timestamp("1970-01-01T00:00:01.5Z"),
        Some(1_500_000_000)
    );
    assert_eq!(parse_timestamp("1969-12-31T23:59:59"), Some(-1_000_000_000));
    // Not timestamps: stay strings.
    for s in [
        "2023-09-18",
        "155",
        "pickup",
        "2023-13-01T00:00:00",
        "2023-09-18T15:00:00 UTC",
    ] {
        assert_eq!(parse_timestamp(s), None, "{s}");
    }
    // Diffs show timestamps in one form.
    let t = canon(&Value::String("2023-09-18T15:00:00.250+00:00".into()));
    assert_eq!(t.to_string(), r#""2023-09-18T15:00:00.25""#);
}

#[test]
fn compare_rules_floats_to_nine_significant_digits() {
    let golden = rows(&[r#"{"avg":49.5,"n":100,"x":0.1}"#]);
    compare(
        r#"{"avg":49.50000000001,"n":100.0,"x":0.1000000000004}"#,
        &golden,
        None,
    )
    .unwrap();
    compare(r#"{"avg":49.5,"n":99.99999999999,"x":0.1}"#, &golden, None).unwrap();
    assert!(compare(r#"{"avg":49.5001,"n":100,"x":0.1}"#, &golden, None).is_err());
    assert!(compare(r#"{"avg":49.5,"n":101,"x":0.1}"#, &golden, None).is_err());
    assert!(compare(r#"{"avg":"49.5","n":100,"x":0.1}"#, &golden, None).is_err());
    // Integers stay exact however large.
    assert_ne!(
        canon(&serde_json::json!(1734539354748899u64)),
        canon(&serde_json::json!(1734539354748898u64))
    );
}

#[test]
fn compare_rules_debezium_replay_by_primary_key() {
    let pk = vec!["id".to_string()];
    let golden = rows(&[
        r#"{"before":null,"after":{"id":1,"s":"new"},"op":"c"}"#,
        r#"{"before":null,"after":{"id":2,"s":"new"},"op":"c"}"#,
        r#"{"before":{"id":1,"s":"new"},"after":{"id":1,"s":"shipped"},"op":"u"}"#,
        r#"{"before":null,"after":{"id":3,"s":"new"},"op":"c"}"#,
        r#"{"before":{"id":2,"s":"new"},"after":null,"op":"d"}"#,
    ]);
    // Other changes, same final rows {1: shipped, 3: new}.
    let ours = rows(&[
        r#"{"op":"c","after":{"s":"new","id":3},"before":null}"#,
        r#"{"op":"c","after":{"id":1,"s":"pending"},"before":null}"#,
        r#"{"op":"u","before":{"id":1,"s":"pending"},"after":{"id":1,"s":"shipped"}}"#,
    ]);
    compare(&ours, &golden, Some(&pk)).unwrap();
    // A missing delete leaves a row behind.
    let stale = rows(&[
        r#"{"op":"c","after":{"id":3,"s":"new"},"before":null}"#,
        r#"{"op":"c","after":{"id":1,"s":"shipped"},"before":null}"#,
        r#"{"op":"c","after":{"id":2,"s":"new"},"before":null}"#,
    ]);
    let err = compare(&stale, &golden, Some(&pk)).unwrap_err();
    assert!(
        err.contains("expected 2 final rows after replaying the changes, got 3"),
        "{err}"
    );
    assert!(err.contains(r#"{"id":2,"s":"new"}"#), "{err}");
    // A row without the key column cannot be replayed.
    let keyless = r#"{"op":"c","after":{"s":"new"},"before":null}"#;
    assert!(
        compare(keyless, &golden, Some(&pk))
            .unwrap_err()
            .contains("no key column")
    );
    // Updating golden, append output: an error, not a pass.
    assert!(compare(r#"{"id":1,"s":"shipped"}"#, &golden, Some(&pk)).is_err());
}

#[test]
fn compare_rules_debezium_replay_by_whole_row() {
    let golden = rows(&[r#"{"after":{"count":100,"avg":49.5},"before":null,"op":"c"}"#]);
    // Intermediate results retracted by updates and deletes; only the final rows count.
    let ours = rows(&[
        r#"{"before":null,"after":{"count":1,"avg":0.0},"op":"c"}"#,
        r#"{"before":{"count":1,"avg":0},"after":{"count":50,"avg":24.5},"op":"u"}"#,
        r#"{"before":{"avg":24.5,"count":50},"after":null,"op":"d"}"#,
        r#"{"before":null,"after":{"count":100,"avg":49.5},"op":"c"}"#,
    ]);
    compare(&ours, &golden, None).unwrap();
    // The same row twice is two rows.
    let twice = rows(&[
        r#"{"before":null,"after":{"count":100,"avg":49.5},"op":"c"}"#,
        r#"{"before":null,"after":{"count":100,"avg":49.5},"op":"c"}"#,
    ]);
    assert!(compare(&twice, &golden, None).is_err());
    // Retracting a row that was never emitted is an error.
    let ghost = r#"{"before":{"count":7,"avg":1},"after":null,"op":"d"}"#;
    assert!(
        compare(ghost, &golden, None)
            .unwrap_err()
            .contains("retracts a row that is not there")
    );
}

#[test]
fn directives_and_error_meanings() {
    assert_eq!(
        parse_directive("--pk=a, b\nSELECT 1"),
        Expect::Rows {
            pk: Some(vec!["a".into(), "b".into()])
        }
    );
    assert_eq!(parse_directive("CREATE TABLE t"), Expect::Rows { pk: None });
    assert_eq!(
        parse_directive("--fail=Error during planning: nope\nSELECT"),
        Expect::Fail("Error during planning: nope".into())
    );

    let arroyo =
        "Error during planning: hop() width 3600s currently must be a multiple of slide 2400s";
    assert_eq!(
        significant_tokens(strip_prefixes(arroyo)),
        ["width", "3600s", "currently", "multiple", "slide", "2400s"]
    );
    assert!(same_meaning(
        "error: q.sql:33:3: hop() width 3600s must be a multiple of slide 2400s",
        arroyo
    ));
    assert!(same_meaning(
        "error: q.sql:33:3: HOP WIDTH 3600s IS CURRENTLY NOT A MULTIPLE OF THE SLIDE 2400s",
        arroyo
    ));
    // The wrong numbers, or another complaint, do not count.
    assert!(!same_meaning(
        "error: hop() width 3600s must be a multiple of slide 600s",
        arroyo
    ));
    assert!(!same_meaning(
        "error: q.sql:1:1: unknown function hop",
        arroyo
    ));
    assert!(!same_meaning(
        "error: hop() width 13600s must be a multiple of slide 2400s",
        arroyo
    ));
    // Colons inside the message are not prefixes.
    assert_eq!(strip_prefixes("Error: at 12:00 x"), "at 12:00 x");
}

#[test]
fn a_case_past_its_deadline_is_a_failure_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("forever.sql");
    std::fs::write(
        &query,
        "CREATE TABLE impulse WITH (connector='impulse', event_rate='10'); SELECT counter FROM impulse;",
    )
    .unwrap();
    let state = dir.path().join("state");
    let started = std::time::Instant::now();
    let run = try_run_query(
        &["-s", path_str(&state), path_str(&query)],
        std::time::Duration::from_millis(1500),
    );
    assert!(run.is_err(), "an unbounded query ended by itself");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
