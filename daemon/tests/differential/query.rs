//! Random queries from templates: for one seed, a [`Case`] holds the source tables, the query
//! `arroyod run` executes (Arroyo's dialect: `tumble`/`hop`/`session` in GROUP BY, the window
//! struct) and the [`Oracle`] that computes the same answer with DataFusion's batch engine over
//! the whole input, without windows: a tumble is a `date_bin` group, a hop the union of
//! `date_bin` groups at each of its offsets, and a session a group computed in Rust by
//! [`crate::differential::oracle`] (sort by key and time, split at gaps).
//!
//! The same seed always gives the same case (the RNG is `StdRng`, pinned by Cargo.lock). A case
//! carries tags (template, window kind, join type, ...) that name the features it uses, so known
//! bugs can be told apart by class.

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::data::{self, Shape, Table};

#[path = "shapes.rs"]
mod shapes;

/// The query templates; a seed's template is `TEMPLATES[seed % TEMPLATES.len()]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Projection and filter, no state.
    Project,
    /// A TUMBLE aggregate, keyed or global.
    Tumble,
    /// A HOP aggregate.
    Hop,
    /// A SESSION aggregate.
    Session,
    /// A windowed aggregate with HAVING.
    Having,
    /// A windowed aggregate with DISTINCT aggregates.
    Distinct,
    /// ROW_NUMBER() per window, the top N rows kept.
    TopN,
    /// Two windowed aggregates joined on the window and a key (inner, left, right, full).
    Join,
    /// UNION ALL of two sources, as is or under a windowed aggregate.
    Union,
    /// GROUP BY without a window: debezium output, compared by its final state.
    Updating,
    /// A windowed aggregate with expressions: keys (CASE, COALESCE, string and time
    /// functions, integer division), aggregate arguments, FILTER clauses, several DISTINCTs,
    /// sometimes over a projection subquery.
    Expr,
    /// ROW_NUMBER, RANK or DENSE_RANK over a windowed aggregate with ties, per window or per
    /// window and key, filtered with `<=`, `<` or `=`.
    Rank,
    /// An updating aggregate over an inner join without windows.
    JoinAggregate,
}

/// Every template; [`Template::of_seed`] says which seeds each gets.
pub const TEMPLATES: [Template; 13] = [
    Template::Project,
    Template::Tumble,
    Template::Hop,
    Template::Session,
    Template::Having,
    Template::Distinct,
    Template::TopN,
    Template::Join,
    Template::Union,
    Template::Updating,
    Template::Expr,
    Template::Rank,
    Template::JoinAggregate,
];

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Project => "project",
            Template::Tumble => "tumble",
            Template::Hop => "hop",
            Template::Session => "session",
            Template::Having => "having",
            Template::Distinct => "distinct",
            Template::TopN => "topn",
            Template::Join => "join",
            Template::Union => "union",
            Template::Updating => "updating",
            Template::Expr => "expr",
            Template::Rank => "rank",
            Template::JoinAggregate => "join-aggregate",
        }
    }

    /// Seed `s` is in slot `s % 10`: the first ten [`TEMPLATES`]. The slots of project, tumble and top-N (no
    /// regression seed among them) give every other ten seeds to the later templates (join
    /// aggregate, expr, rank), so every seed of the first ten templates listed in
    /// `regressions.txt` keeps its case.
    pub fn of_seed(seed: u64) -> Template {
        let slot = TEMPLATES[(seed % 10) as usize];
        let later = (seed / 10) % 2 == 1;
        match slot {
            Template::Project if later => Template::JoinAggregate,
            Template::Tumble if later => Template::Expr,
            Template::TopN if later => Template::Rank,
            other => other,
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A window of the GROUP BY; lengths in milliseconds.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    Tumble { size: i64 },
    Hop { slide: i64, width: i64 },
    Session { gap: i64 },
}

/// An interval literal of `ms` milliseconds, in one of the forms users write.
fn interval(ms: i64) -> String {
    if ms % 60_000 == 0 {
        format!("INTERVAL '{}' MINUTE", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("INTERVAL '{} seconds'", ms / 1000)
    } else {
        format!("INTERVAL '{ms} milliseconds'")
    }
}

/// The kinds of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumble,
    Hop,
    Session,
}

/// Every kind, and the kinds two windowed inputs can be joined on.
const ANY_WINDOW: &[Kind] = &[Kind::Tumble, Kind::Hop, Kind::Session];
const JOINABLE_WINDOW: &[Kind] = &[Kind::Tumble, Kind::Hop];

impl Window {
    fn random(rng: &mut StdRng, kind: Kind) -> Window {
        match kind {
            Kind::Tumble => Window::Tumble {
                size: *[500, 1000, 2000, 5000, 10_000, 60_000]
                    .choose(rng)
                    .expect("sizes"),
            },
            Kind::Hop => {
                let slide = *[500, 1000, 2000, 5000].choose(rng).expect("slides");
                Window::Hop {
                    slide,
                    width: slide * rng.random_range(1..=4),
                }
            }
            Kind::Session => Window::Session {
                gap: *[300, 1000, 2000, 5000].choose(rng).expect("gaps"),
            },
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Window::Tumble { .. } => "tumble",
            Window::Hop { .. } => "hop",
            Window::Session { .. } => "session",
        }
    }

    /// The window function call in Arroyo's dialect.
    fn call(self) -> String {
        match self {
            Window::Tumble { size } => format!("tumble({})", interval(size)),
            Window::Hop { slide, width } => {
                format!("hop({}, {})", interval(slide), interval(width))
            }
            Window::Session { gap } => format!("session({})", interval(gap)),
        }
    }

    fn edge(self) -> i64 {
        match self {
            Window::Tumble { size } => size,
            Window::Hop { slide, .. } => slide,
            Window::Session { gap } => gap,
        }
    }
}

/// A step of the oracle computed in Rust: the rows of `input` (DataFusion SQL) get the columns
/// `ws` and `we` of their session (grouped by `keys`, split where the time between two rows of
/// a group is at least `gap`), and are registered as table `name`.
#[derive(Debug, Clone)]
pub struct SessionStep {
    pub name: String,
    pub input: String,
    pub keys: Vec<String>,
    pub gap_ms: i64,
}

/// How the expected answer is computed: the session steps first, then `sql` (DataFusion).
#[derive(Debug, Clone)]
pub struct Oracle {
    pub sessions: Vec<SessionStep>,
    pub sql: String,
}

/// What the sink gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Rows, compared as a multiset.
    Append,
    /// Debezium changes, compared by the multiset of rows left after replaying them.
    Updating,
}

/// One generated test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub seed: u64,
    pub template: Template,
    pub tables: Vec<Table>,
    /// The SELECT that `arroyod run` inserts into the sink.
    pub query: String,
    pub oracle: Oracle,
    pub output: Output,
    /// The features the case uses (`template:join`, `window:session`, `join:full`, ...).
    pub tags: BTreeSet<String>,
    /// The parallelism of the checkpointed first run and of the restored second run.
    pub restore: (u32, u32),
}

impl Case {
    /// Rows of all inputs.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.events.len()).sum()
    }

    /// Rows of the longest input.
    pub fn longest_input(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.events.len())
            .max()
            .unwrap_or(0)
    }
}

/// The case of `seed`.
pub fn generate(seed: u64) -> Case {
    let template = Template::of_seed(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Gen {
        rng: &mut rng,
        stats: StdRng::seed_from_u64(seed ^ STATS_SEED),
        null_safe: StdRng::seed_from_u64(seed ^ NULL_SAFE_SEED),
        tags: BTreeSet::new(),
        sessions: Vec::new(),
    };
    g.tag(format!("template:{template}"));
    let built = match template {
        Template::Project => g.project(),
        Template::Tumble => g.windowed(&[Kind::Tumble], Extra::None),
        Template::Hop => g.windowed(&[Kind::Hop], Extra::None),
        Template::Session => g.windowed(&[Kind::Session], Extra::None),
        Template::Having => g.windowed(ANY_WINDOW, Extra::Having),
        Template::Distinct => g.windowed(ANY_WINDOW, Extra::Distinct),
        Template::TopN => g.top_n(),
        Template::Join => g.join(),
        Template::Union => g.union(),
        Template::Updating => g.updating(),
        Template::Expr => g.expr(),
        Template::Rank => g.rank(),
        Template::JoinAggregate => g.join_aggregate(),
    };
    let restore = *[(1, 3), (2, 3), (3, 1), (3, 2), (2, 1)]
        .choose(g.rng)
        .expect("restores");
    let Gen { tags, sessions, .. } = g;
    Case {
        seed,
        template,
        tables: built.tables,
        query: built.query,
        oracle: Oracle {
            sessions,
            sql: built.oracle,
        },
        output: built.output,
        tags,
        restore,
    }
}

/// What a template builds.
struct Built {
    tables: Vec<Table>,
    query: String,
    oracle: String,
    output: Output,
}

/// A windowed aggregate's extra clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Having,
    Distinct,
}

/// Aggregates that need no DISTINCT; the same text in both engines.
const AGGREGATES: &[&str] = &[
    "count(*)", "count(v)", "count(s)", "sum(v)", "min(v)", "max(v)", "avg(v)", "sum(f)", "min(f)",
    "max(f)", "avg(f)", "min(s)", "max(s)", "min(ts)", "max(ts)",
];
/// Statistical aggregates whose merged result does not depend on how the rows were split
/// (DataFusion's HyperLogLog merges registers by max, so `approx_distinct` is one of them);
/// the same text in both engines. `approx_median` and `approx_percentile_cont` merge t-digests,
/// whose result depends on the order: `tests/statistics.rs` checks them within their error.
const STAT_AGGREGATES: &[&str] = &[
    "covar_samp(v, f)",
    "covar_pop(f, v)",
    "corr(v, f)",
    "regr_slope(f, v)",
    "regr_intercept(f, v)",
    "regr_count(v, f)",
    "regr_r2(f, v)",
    "regr_avgx(f, v)",
    "regr_avgy(f, v)",
    "regr_sxx(f, v)",
    "regr_syy(f, v)",
    "regr_sxy(f, v)",
    "stddev(f)",
    "var_pop(v)",
    "approx_distinct(s)",
    "approx_distinct(v)",
];
/// Mixed into the seed of [`Gen::null_safe`].
const NULL_SAFE_SEED: u64 = 0x4e55_4c4c_0000;
/// Mixed into the seed of [`Gen::stats`].
const STATS_SEED: u64 = 0x0051_57A7_0000;
const DISTINCT_AGGREGATES: &[&str] = &[
    "count(DISTINCT s)",
    "count(DISTINCT g)",
    "count(DISTINCT k)",
    "count(DISTINCT v)",
    "sum(DISTINCT v)",
];

/// The key sets of GROUP BY.
const KEY_SETS: &[&[&str]] = &[&[], &["k"], &["g"], &["k", "g"]];
/// The key sets of the two sides of a join.
const JOIN_KEY_SETS: &[&[&str]] = &[&[], &["k"], &["g"]];

struct Gen<'a> {
    rng: &'a mut StdRng,
    /// Draws the statistical aggregates added to a case: a stream of its own, so that adding
    /// them left every other choice of a seed (and the regression seeds) as it was.
    stats: StdRng,
    /// Draws whether a join compares its keys with `IS NOT DISTINCT FROM` (nulls match): a
    /// stream of its own, for the same reason as `stats`.
    null_safe: StdRng,
    tags: BTreeSet<String>,
    sessions: Vec<SessionStep>,
}

impl Gen<'_> {
    fn tag(&mut self, tag: impl Into<String>) {
        self.tags.insert(tag.into());
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        items.choose(self.rng).expect("a non-empty choice")
    }

    fn tables(&mut self, count: usize, shape: Shape) -> Vec<Table> {
        (1..=count)
            .map(|i| data::table(self.rng, &format!("t{i}"), shape))
            .collect()
    }

    fn shape(window: Option<Window>, keys: &'static [&'static str]) -> Shape {
        match window {
            Some(w) => Shape {
                edge_ms: w.edge(),
                gap_ms: match w {
                    Window::Session { gap } => Some(gap),
                    _ => None,
                },
                session_keys: keys,
            },
            None => Shape {
                edge_ms: 1000,
                gap_ms: None,
                session_keys: &[],
            },
        }
    }

    /// A window of one of `kinds`.
    fn window(&mut self, kinds: &[Kind]) -> Window {
        let kind = *self.pick(kinds);
        let w = Window::random(self.rng, kind);
        self.tag(format!("window:{}", w.kind()));
        w
    }

    fn keys(&mut self) -> &'static [&'static str] {
        let keys = *self.pick(KEY_SETS);
        self.tag(if keys.is_empty() {
            "keys:none".to_string()
        } else {
            format!("keys:{}", keys.join(","))
        });
        keys
    }

    /// A random predicate over a source table, or None.
    fn predicate(&mut self) -> Option<String> {
        if self.rng.random_bool(0.5) {
            return None;
        }
        let terms = self.rng.random_range(1..=3);
        let mut out = String::new();
        for i in 0..terms {
            if i > 0 {
                out.push_str(if self.rng.random_bool(0.6) {
                    " AND "
                } else {
                    " OR "
                });
            }
            let atom = self.atom();
            if self.rng.random_bool(0.15) {
                out.push_str(&format!("NOT ({atom})"));
            } else {
                out.push_str(&atom);
            }
        }
        self.tag("filter");
        let on_k = ["k = ", "k <> ", "k IN "]
            .iter()
            .map(|a| out.matches(a).count())
            .sum::<usize>();
        if on_k >= 2 && out.contains(" AND ") {
            // DataFusion may prove it always false (`k = 'a' AND k = 'b'`).
            self.tag("filter:k-twice");
        }
        Some(out)
    }

    fn atom(&mut self) -> String {
        let c = self.rng.random_range(-600..=600);
        let cf = self.rng.random_range(-900..=900) as f64 / 2.0;
        let key = sql_string(&data::key_name(
            self.rng.random_range(0..6),
            self.rng.random_bool(0.5),
        ));
        let other = sql_string(&data::key_name(self.rng.random_range(0..6), false));
        match self.rng.random_range(0..13) {
            0 => format!("v > {c}"),
            1 => format!("v <= {c}"),
            2 => "v IS NULL".into(),
            3 => "v IS NOT NULL".into(),
            4 => format!("f < {cf:.1}"),
            5 => format!("f >= {cf:.1}"),
            6 => format!("k = {key}"),
            7 => format!("k <> {key}"),
            8 => format!("k IN ({key}, {other})"),
            9 => format!("s LIKE '{}%'", self.pick(&["a", "b", "ap", "w1", "q"])),
            10 => format!("g % 3 = {}", self.rng.random_range(0..3)),
            11 => format!("coalesce(v, 0) > {c}"),
            _ => "length(s) > 3".into(),
        }
    }

    /// Projection expressions, aliased `c0, c1, ...`.
    fn projection(&mut self) -> Vec<String> {
        let c = self.rng.random_range(-500..=500);
        const EXPRS: &[&str] = &[
            "k",
            "g",
            "v",
            "f",
            "s",
            "ts",
            "v + g",
            "v * 2 - 1",
            "f * 2.5",
            "f / 4",
            "abs(v)",
            "v % 7",
            "upper(s)",
            "length(s)",
            "s || '-' || k",
            "coalesce(s, 'none')",
            "substr(k, 1, 2)",
            "CAST(v AS DOUBLE) / 3",
            "round(f)",
            "date_trunc('second', ts)",
            "ts + INTERVAL '1 second'",
            "v IS NULL",
            "f > 0",
            "CASE WHEN v > $c THEN 'hi' WHEN v IS NULL THEN 'none' ELSE 'lo' END",
        ];
        let n = self.rng.random_range(1..=5);
        (0..n)
            .map(|i| {
                let e = self.pick(EXPRS).replace("$c", &c.to_string());
                format!("{e} AS c{i}")
            })
            .collect()
    }

    /// Up to `most` aggregates aliased `a0, a1, ...`; with `distinct`, at least one DISTINCT
    /// aggregate.
    fn aggregates(&mut self, distinct: bool, most: usize) -> Vec<String> {
        let n = self.rng.random_range(1..=most);
        let mut out: Vec<String> = (0..n).map(|_| self.pick(AGGREGATES).to_string()).collect();
        if distinct {
            let d = self.pick(DISTINCT_AGGREGATES).to_string();
            let at = self.rng.random_range(0..=out.len());
            out.insert(at, d);
            if self.rng.random_bool(0.3) {
                out.push(self.pick(DISTINCT_AGGREGATES).to_string());
            }
            self.tag("distinct");
        }
        if self.stats.random_bool(0.4) {
            let stat = STAT_AGGREGATES
                .choose(&mut self.stats)
                .expect("a statistical aggregate");
            out.push(stat.to_string());
            self.tag("aggregate:statistical");
        }
        if (1..out.len()).any(|i| out[..i].contains(&out[i])) {
            self.tag("aggregates:repeated");
        }
        out.iter()
            .enumerate()
            .map(|(i, a)| format!("{a} AS a{i}"))
            .collect()
    }

    /// A HAVING condition.
    fn having(&mut self) -> String {
        let c = self.rng.random_range(0..=4);
        let v = self.rng.random_range(-300..=300);
        self.tag("having");
        match self.rng.random_range(0..5) {
            0 => format!("count(*) > {c}"),
            1 => format!("sum(v) > {v}"),
            2 => format!("max(f) < {v}.5"),
            3 => format!("count(v) >= {c}"),
            _ => "min(s) IS NOT NULL".into(),
        }
    }

    /// The oracle's relation of `source` (a DataFusion SELECT with `ts`) with the columns `ws`
    /// and `we` of each window a row is in: one row per (row, window).
    fn window_relation(&mut self, window: Window, source: &str, keys: &[&str]) -> String {
        match window {
            Window::Tumble { size } => format!(
                "(SELECT *, ws + INTERVAL '{size} milliseconds' AS we FROM \
                 (SELECT *, date_bin(INTERVAL '{size} milliseconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS ws \
                 FROM ({source}) src) binned)"
            ),
            Window::Hop { slide, width } => {
                let offsets: Vec<String> = (0..width / slide)
                    .map(|j| {
                        format!(
                            "SELECT *, date_bin(INTERVAL '{width} milliseconds', ts, TIMESTAMP '{}') AS ws FROM ({source}) src",
                            data::timestamp_literal(j * slide)
                        )
                    })
                    .collect();
                format!(
                    "(SELECT *, ws + INTERVAL '{width} milliseconds' AS we FROM ({}) binned)",
                    offsets.join(" UNION ALL ")
                )
            }
            Window::Session { gap } => {
                let name = format!("sessions{}", self.sessions.len());
                self.sessions.push(SessionStep {
                    name: name.clone(),
                    input: source.to_string(),
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                    gap_ms: gap,
                });
                name
            }
        }
    }

    /// The inner windowed aggregate of Arroyo's dialect: `SELECT <window> AS window, keys,
    /// aggregates FROM source [WHERE] GROUP BY ...`, grouping by position or by name.
    fn streaming_aggregate(
        &mut self,
        window: Window,
        keys: &[&str],
        aggregates: &[String],
        from: &str,
        filter: Option<&str>,
        having: Option<&str>,
    ) -> String {
        let mut select = vec![format!("{} AS window", window.call())];
        select.extend(keys.iter().map(|k| k.to_string()));
        select.extend(aggregates.iter().cloned());
        let group: Vec<String> = if self.rng.random_bool(0.5) {
            (1..=keys.len() + 1).map(|i| i.to_string()).collect()
        } else {
            std::iter::once("window".to_string())
                .chain(keys.iter().map(|k| k.to_string()))
                .collect()
        };
        format!(
            "SELECT {} FROM {from}{} GROUP BY {}{}",
            select.join(", "),
            where_clause(filter),
            group.join(", "),
            having.map_or(String::new(), |h| format!(" HAVING {h}"))
        )
    }

    /// The oracle's aggregate over a windowed relation, with the window as `ws`, `we`.
    fn oracle_aggregate(
        relation: &str,
        keys: &[&str],
        aggregates: &[String],
        having: Option<&str>,
    ) -> String {
        let mut select = vec!["ws".to_string(), "we".to_string()];
        select.extend(keys.iter().map(|k| k.to_string()));
        select.extend(aggregates.iter().cloned());
        let mut group = vec!["ws", "we"];
        group.extend(keys);
        format!(
            "SELECT {} FROM {relation} GROUP BY {}{}",
            select.join(", "),
            group.join(", "),
            having.map_or(String::new(), |h| format!(" HAVING {h}"))
        )
    }

    /// Projection and filter of one table.
    fn project(&mut self) -> Built {
        let tables = self.tables(1, Gen::shape(None, &[]));
        let filter = self.predicate();
        let select = if self.rng.random_bool(0.1) {
            "*".to_string()
        } else {
            self.projection().join(", ")
        };
        let query = format!("SELECT {select} FROM t1{}", where_clause(filter.as_deref()));
        Built {
            tables,
            oracle: query.clone(),
            query,
            output: Output::Append,
        }
    }

    /// A windowed aggregate of one of `kinds` over one table, with `extra`.
    fn windowed(&mut self, kinds: &[Kind], extra: Extra) -> Built {
        let window = self.window(kinds);
        let keys = self.keys();
        let tables = self.tables(1, Gen::shape(Some(window), keys));
        let filter = self.predicate();
        let aggregates = self.aggregates(extra == Extra::Distinct, 4);
        let having = (extra == Extra::Having).then(|| self.having());
        let inner = self.streaming_aggregate(
            window,
            keys,
            &aggregates,
            "t1",
            filter.as_deref(),
            having.as_deref(),
        );
        let source = filtered("t1", filter.as_deref());
        let relation = self.window_relation(window, &source, keys);
        let aggregate = Gen::oracle_aggregate(&relation, keys, &aggregates, having.as_deref());
        let (query, oracle) = if extra == Extra::None && self.rng.random_bool(0.25) {
            Gen::nested(&mut self.tags, inner, aggregate)
        } else {
            self.window_output(inner, aggregate, keys, aggregates.len())
        };
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// A second aggregate over a windowed one, grouped by its window.
    fn nested(tags: &mut BTreeSet<String>, inner: String, oracle: String) -> (String, String) {
        tags.insert("nested".into());
        tags.insert("subquery".into());
        (
            format!(
                "SELECT window.start AS ws, window.end AS we, n0, n1 FROM \
                 (SELECT window, count(*) AS n0, max(a0) AS n1 FROM ({inner}) GROUP BY window)"
            ),
            format!(
                "SELECT ws, we, count(*) AS n0, max(a0) AS n1 FROM ({oracle}) agg GROUP BY ws, we"
            ),
        )
    }

    /// The outer SELECT of a windowed aggregate: the window struct as is, or its start and end
    /// as columns (the aggregate then a subquery).
    fn window_output(
        &mut self,
        inner: String,
        oracle: String,
        keys: &[&str],
        aggregates: usize,
    ) -> (String, String) {
        let rest: Vec<String> = keys
            .iter()
            .map(|k| k.to_string())
            .chain((0..aggregates).map(|i| format!("a{i}")))
            .collect();
        let tail = if rest.is_empty() {
            String::new()
        } else {
            format!(", {}", rest.join(", "))
        };
        if self.rng.random_bool(0.3) {
            self.tag("output:struct");
            (
                inner,
                format!(
                    "SELECT named_struct('start', ws, 'end', we) AS window{tail} FROM ({oracle}) agg"
                ),
            )
        } else {
            self.tag("subquery");
            (
                format!("SELECT window.start AS ws, window.end AS we{tail} FROM ({inner})"),
                format!("SELECT ws, we{tail} FROM ({oracle}) agg"),
            )
        }
    }

    /// The top N rows per window by an aggregate.
    fn top_n(&mut self) -> Built {
        let window = self.window(ANY_WINDOW);
        let key = *self.pick(&["k", "g"]);
        self.tag(format!("keys:{key}"));
        self.tag("subquery");
        let keys: &'static [&'static str] = if key == "k" { &["k"] } else { &["g"] };
        let tables = self.tables(1, Gen::shape(Some(window), keys));
        let filter = self.predicate();
        let aggregate = format!(
            "{} AS a0",
            self.pick(&["count(*)", "sum(v)", "max(f)", "min(s)"])
        );
        let n = self.rng.random_range(1..=3);
        let inner = self.streaming_aggregate(
            window,
            keys,
            std::slice::from_ref(&aggregate),
            "t1",
            filter.as_deref(),
            None,
        );
        let order = format!("a0 DESC, {key}");
        let query = format!(
            "SELECT ws, we, {key}, a0, rn FROM (SELECT window.start AS ws, window.end AS we, {key}, a0, \
             ROW_NUMBER() OVER (PARTITION BY window ORDER BY {order}) AS rn FROM ({inner})) WHERE rn <= {n}"
        );
        let source = filtered("t1", filter.as_deref());
        let relation = self.window_relation(window, &source, keys);
        let agg = Gen::oracle_aggregate(&relation, keys, std::slice::from_ref(&aggregate), None);
        let oracle = format!(
            "SELECT ws, we, {key}, a0, rn FROM (SELECT ws, we, {key}, a0, \
             ROW_NUMBER() OVER (PARTITION BY ws, we ORDER BY {order}) AS rn FROM ({agg}) agg) ranked WHERE rn <= {n}"
        );
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// Two windowed aggregates joined on the window and the keys.
    fn join(&mut self) -> Built {
        let window = self.window(JOINABLE_WINDOW);
        let keys = *self.pick(JOIN_KEY_SETS);
        self.tag(if keys.is_empty() {
            "keys:none".to_string()
        } else {
            format!("keys:{}", keys.join(","))
        });
        self.tag("subquery");
        let kind = *self.pick(&["INNER", "LEFT", "RIGHT", "FULL"]);
        self.tag(format!("join:{}", kind.to_lowercase()));
        let two_tables = self.rng.random_bool(0.6);
        let tables = self.tables(
            if two_tables { 2 } else { 1 },
            Gen::shape(Some(window), keys),
        );
        if !two_tables {
            self.tag("join:self");
        }
        let right_table = if two_tables { "t2" } else { "t1" };
        let mut streaming_sides = Vec::new();
        let mut oracle_sides = Vec::new();
        for (side, table) in [("left", "t1"), ("right", right_table)] {
            let filter = self.predicate();
            let aggregates = self.aggregates(false, 2);
            if aggregates.iter().any(|a| a.starts_with("count(")) {
                // A count is never null: an outer join must make it nullable.
                self.tag(format!("join:{side}-count"));
            }
            streaming_sides.push(self.streaming_aggregate(
                window,
                keys,
                &aggregates,
                table,
                filter.as_deref(),
                None,
            ));
            let source = filtered(table, filter.as_deref());
            let relation = self.window_relation(window, &source, keys);
            oracle_sides.push((
                Gen::oracle_aggregate(&relation, keys, &aggregates, None),
                aggregates.len(),
            ));
        }
        let mut columns = vec![];
        let mut oracle_columns = vec![];
        for side in ["l", "r"] {
            columns.push(format!("{side}.window.start AS {side}ws"));
            oracle_columns.push(format!("{side}.ws AS {side}ws"));
            for k in keys {
                columns.push(format!("{side}.{k} AS {side}{k}"));
                oracle_columns.push(format!("{side}.{k} AS {side}{k}"));
            }
        }
        for (side, (_, n)) in ["l", "r"].iter().zip(&oracle_sides) {
            for i in 0..*n {
                columns.push(format!("{side}.a{i} AS {side}a{i}"));
                oracle_columns.push(format!("{side}.a{i} AS {side}a{i}"));
            }
        }
        let equal = if !keys.is_empty() && self.null_safe.random_bool(0.25) {
            self.tag("join:null-safe");
            "IS NOT DISTINCT FROM"
        } else {
            "="
        };
        let on: Vec<String> = std::iter::once("l.window = r.window".to_string())
            .chain(keys.iter().map(|k| key_condition(k, equal)))
            .collect();
        let oracle_on: Vec<String> = std::iter::once("l.ws = r.ws".to_string())
            .chain(keys.iter().map(|k| key_condition(k, equal)))
            .collect();
        let query = format!(
            "SELECT {} FROM ({}) l {kind} JOIN ({}) r ON {}",
            columns.join(", "),
            streaming_sides[0],
            streaming_sides[1],
            on.join(" AND ")
        );
        let oracle = format!(
            "SELECT {} FROM ({}) l {kind} JOIN ({}) r ON {}",
            oracle_columns.join(", "),
            oracle_sides[0].0,
            oracle_sides[1].0,
            oracle_on.join(" AND ")
        );
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// UNION ALL of two sources: projected as is, or under a windowed aggregate.
    fn union(&mut self) -> Built {
        let aggregate = self.rng.random_bool(0.5);
        let window = aggregate.then(|| self.window(ANY_WINDOW));
        let keys: &'static [&'static str] = if aggregate { self.keys() } else { &[] };
        let two_tables = self.rng.random_bool(0.7);
        let tables = self.tables(if two_tables { 2 } else { 1 }, Gen::shape(window, keys));
        let second = if two_tables { "t2" } else { "t1" };
        let (f1, f2) = (self.predicate(), self.predicate());
        let where_ = |f: &Option<String>| where_clause(f.as_deref());
        let Some(window) = window else {
            self.tag("union:rows");
            let columns = self.projection().join(", ");
            let query = format!(
                "SELECT {columns} FROM t1{} UNION ALL SELECT {columns} FROM {second}{}",
                where_(&f1),
                where_(&f2)
            );
            return Built {
                tables,
                oracle: query.clone(),
                query,
                output: Output::Append,
            };
        };
        self.tag("union:aggregate");
        let union = format!(
            "SELECT ts, k, g, v, f, s FROM t1{} UNION ALL SELECT ts, k, g, v, f, s FROM {second}{}",
            where_(&f1),
            where_(&f2)
        );
        let aggregates = self.aggregates(false, 4);
        let inner =
            self.streaming_aggregate(window, keys, &aggregates, &format!("({union})"), None, None);
        let relation = self.window_relation(window, &union, keys);
        let agg = Gen::oracle_aggregate(&relation, keys, &aggregates, None);
        let (query, oracle) = self.window_output(inner, agg, keys, aggregates.len());
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// GROUP BY without a window.
    fn updating(&mut self) -> Built {
        let keys = self.keys();
        let tables = self.tables(1, Gen::shape(None, &[]));
        let filter = self.predicate();
        let distinct = self.rng.random_bool(0.3);
        let aggregates = self.aggregates(distinct, 4);
        let having = self.rng.random_bool(0.3).then(|| self.having());
        let mut select: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        select.extend(aggregates);
        let (query, oracle) = updating_query(&select, "t1", filter.as_deref(), keys, having);
        Built {
            tables,
            query,
            oracle,
            output: Output::Updating,
        }
    }
}

/// An updating aggregate `SELECT <select> FROM <from> [WHERE] [GROUP BY keys] [HAVING]` and
/// its oracle: a streaming aggregate without keys emits nothing until a row arrives, a batch
/// aggregate without GROUP BY gives one row even over no rows.
fn updating_query(
    select: &[String],
    from: &str,
    filter: Option<&str>,
    keys: &[&str],
    having: Option<String>,
) -> (String, String) {
    let group = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    let base = format!(
        "SELECT {} FROM {from}{}{group}",
        select.join(", "),
        where_clause(filter)
    );
    let query = match &having {
        Some(h) => format!("{base} HAVING {h}"),
        None => base.clone(),
    };
    let conditions: Vec<String> = having
        .into_iter()
        .chain(keys.is_empty().then(|| "count(*) > 0".to_string()))
        .collect();
    let oracle = if conditions.is_empty() {
        base
    } else {
        format!("{base} HAVING {}", conditions.join(" AND "))
    };
    (query, oracle)
}

/// `l.<key> = r.<key>`, or with another comparison parenthesized (`IS NOT DISTINCT FROM`
/// binds looser than AND).
fn key_condition(key: &str, equal: &str) -> String {
    if equal == "=" {
        format!("l.{key} = r.{key}")
    } else {
        format!("(l.{key} {equal} r.{key})")
    }
}

/// ` WHERE <filter>`, or nothing.
fn where_clause(filter: Option<&str>) -> String {
    filter.map_or(String::new(), |f| format!(" WHERE {f}"))
}

/// `SELECT * FROM <table> [WHERE <filter>]`.
fn filtered(table: &str, filter: Option<&str>) -> String {
    format!("SELECT * FROM {table}{}", where_clause(filter))
}

/// `text` as a SQL string literal.
pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
