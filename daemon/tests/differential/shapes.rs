//! The later templates of [`super`]: the query shapes users write beyond one aggregate of
//! plain columns.
//!
//! - `expr`: a windowed aggregate whose keys and aggregate arguments are expressions (CASE,
//!   COALESCE, string functions, integer division and modulo, casts, `date_trunc` / `extract`
//!   of the event time), with FILTER clauses and several DISTINCT aggregates; the keys are
//!   computed in the GROUP BY or by a projection subquery the aggregate reads.
//! - `rank`: ROW_NUMBER, RANK or DENSE_RANK over a windowed aggregate whose values tie, per
//!   window or per window and key, kept by `<=`, `<` or `=`.
//! - `join-aggregate`: an updating aggregate (no window) over an inner join without windows,
//!   or a TUMBLE aggregate over it. Join keys compare with `=` or `IS NOT DISTINCT FROM`.
//!
//! Every expression is the same text in both engines: the oracle computes keys as columns of
//! its source, so a session step groups by them like by plain columns.

use rand::Rng;

use super::{ANY_WINDOW, Built, Gen, Output, filtered, interval, updating_query, where_clause};

/// Key expressions; `$c` is a random integer.
const KEY_EXPRS: &[&str] = &[
    "coalesce(k, 'none')",
    "lower(s)",
    "g % 3",
    "v / 100",
    "CASE WHEN v > $c THEN 'hi' WHEN v IS NULL THEN 'none' ELSE 'lo' END",
    "substr(k, 1, 2)",
    "concat(k, '-', g)",
    "length(s)",
    "CAST(g AS DOUBLE)",
    "k IS NULL",
    "upper(k) || '!'",
    "abs(v) % 4",
    "date_trunc('second', ts)",
    "extract(second FROM ts)",
    "CAST(v AS DOUBLE) / 200",
    "g IS NOT NULL AND v > $c",
    "coalesce(g, -1) * 10 + coalesce(v, 0) % 2",
];

/// Aggregates of expressions; `$c` is a random integer.
const EXPR_AGGREGATES: &[&str] = &[
    "count(*) FILTER (WHERE v > $c)",
    "sum(v) FILTER (WHERE k IS NULL)",
    "max(f) FILTER (WHERE s LIKE 'a%')",
    "count(k) FILTER (WHERE g IS NOT NULL)",
    "count(DISTINCT s) FILTER (WHERE v > $c)",
    "sum(v * 2 + 1)",
    "sum(v / 3)",
    "min(v % 7)",
    "max(length(s))",
    "avg(CAST(v AS DOUBLE) / 3)",
    "count(CASE WHEN v > $c THEN 1 END)",
    "sum(CASE WHEN f > 0 THEN f ELSE 0 END)",
    "max(coalesce(s, ''))",
    "min(lower(s))",
    "max(concat(k, '-', s))",
    "count(DISTINCT lower(s))",
    "count(DISTINCT v % 5)",
    "count(DISTINCT coalesce(k, 'none'))",
    "sum(DISTINCT g)",
    "bool_and(v > 0)",
    "bool_or(s IS NULL)",
    "min(date_trunc('second', ts))",
    "max(extract(millisecond FROM ts))",
    "sum(coalesce(v, 0))",
    "avg(abs(v))",
    "min(CAST(g AS DOUBLE))",
    "max(CAST(f AS BIGINT))",
    "sum(CAST(v AS INT))",
    "count(*)",
    "count(v)",
    "avg(f)",
];

/// The aggregates of the rank template: counts and maxima of small groups tie often.
const RANK_AGGREGATES: &[&str] = &["count(*)", "count(v)", "max(g)", "sum(v)", "min(s)"];

/// The keys of the rank template's aggregate (the first is partitioned on per key).
const RANK_KEY_SETS: &[&[&str]] = &[&["k"], &["g"], &["k", "g"]];
/// The GROUP BY of the join-aggregate template.
const JOIN_GROUP_KEYS: &[&[&str]] = &[&[], &["l.k"], &["r.g"], &["l.k", "r.g"]];

/// The aggregates of the join-aggregate template, over `l` and `r`.
const JOIN_AGGREGATES: &[&str] = &[
    "count(*)",
    "count(r.v)",
    "sum(l.v)",
    "max(r.f)",
    "min(l.s)",
    "avg(l.v)",
    "sum(r.v) FILTER (WHERE l.v > 0)",
    "count(DISTINCT r.s)",
    "max(l.ts)",
];

impl Gen<'_> {
    /// `$c` of an expression replaced by a random integer.
    fn constant(&mut self, expr: &str) -> String {
        let c = self.rng.random_range(-500..=500);
        expr.replace("$c", &c.to_string())
    }

    /// A windowed aggregate of expressions.
    pub(super) fn expr(&mut self) -> Built {
        let window = self.window(ANY_WINDOW);
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..self.rng.random_range(0..=2) {
            let e = *self.pick(KEY_EXPRS);
            let e = self.constant(e);
            if !keys.contains(&e) {
                keys.push(e);
            }
        }
        self.tag(format!("keys:{}", keys.len()));
        let names: Vec<String> = (0..keys.len()).map(|i| format!("e{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let tables = self.tables(1, Gen::shape(Some(window), &[]));
        let filter = self.predicate();
        let n = self.rng.random_range(1..=4);
        let mut aggregates = Vec::new();
        for i in 0..n {
            let a = *self.pick(EXPR_AGGREGATES);
            let a = self.constant(a);
            if a.contains("FILTER") {
                self.tag("aggregate:filter");
            }
            if a.contains("DISTINCT") {
                self.tag("distinct");
            }
            aggregates.push(format!("{a} AS a{i}"));
        }
        let aliased: String = keys
            .iter()
            .zip(&names)
            .map(|(e, n)| format!(", {e} AS {n}"))
            .collect();
        let source = format!(
            "SELECT *{aliased} FROM t1{}",
            where_clause(filter.as_deref())
        );
        let relation = self.window_relation(window, &source, &names);
        let oracle = Gen::oracle_aggregate(&relation, &names, &aggregates, None);
        let mut select = vec![format!("{} AS window", window.call())];
        let by_position = self.rng.random_bool(0.5);
        let mut group: Vec<String> = vec![if by_position { "1" } else { "window" }.to_string()];
        let from = if self.rng.random_bool(0.5) {
            // The aggregate reads a projection that computes the keys.
            self.tag("expr:projected");
            select.extend(names.iter().map(|n| n.to_string()));
            group.extend(names.iter().enumerate().map(|(i, n)| {
                if by_position {
                    (i + 2).to_string()
                } else {
                    n.to_string()
                }
            }));
            format!(
                "(SELECT ts, k, g, v, f, s{aliased} FROM t1{})",
                where_clause(filter.as_deref())
            )
        } else {
            self.tag("expr:grouped");
            select.extend(keys.iter().zip(&names).map(|(e, n)| format!("{e} AS {n}")));
            group.extend(keys.iter().enumerate().map(|(i, e)| {
                if by_position {
                    (i + 2).to_string()
                } else {
                    e.clone()
                }
            }));
            format!("t1{}", where_clause(filter.as_deref()))
        };
        select.extend(aggregates.iter().cloned());
        let inner = format!(
            "SELECT {} FROM {from} GROUP BY {}",
            select.join(", "),
            group.join(", ")
        );
        let (query, oracle) = self.window_output(inner, oracle, &names, aggregates.len());
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// A ranking function over a windowed aggregate, the rows of some ranks kept.
    pub(super) fn rank(&mut self) -> Built {
        let window = self.window(ANY_WINDOW);
        let keys = *self.pick(RANK_KEY_SETS);
        self.tag(format!("keys:{}", keys.join(",")));
        self.tag("subquery");
        let tables = self.tables(1, Gen::shape(Some(window), keys));
        let filter = self.predicate();
        let aggregate = format!("{} AS a0", self.pick(RANK_AGGREGATES));
        let function = *self.pick(&["ROW_NUMBER", "RANK", "DENSE_RANK"]);
        self.tag(format!("rank:{}", function.to_lowercase()));
        // Per window and key: the top rows of each `k` in each window.
        let per_key = keys.len() == 2 && self.rng.random_bool(0.5);
        if per_key {
            self.tag("rank:per-key");
        }
        let direction = *self.pick(&["DESC", "ASC"]);
        let mut order = vec![format!("a0 {direction}")];
        if function == "ROW_NUMBER" {
            // Ties broken by the keys not partitioned on, so the numbering is one answer.
            order.extend(
                keys.iter()
                    .skip(usize::from(per_key))
                    .map(|k| k.to_string()),
            );
        }
        let order = order.join(", ");
        let n = self.rng.random_range(1..=3);
        let kept = match self.rng.random_range(0..3) {
            0 => format!("rn <= {n}"),
            1 => format!("rn < {}", n + 1),
            _ => format!("rn = {n}"),
        };
        let inner = self.streaming_aggregate(
            window,
            keys,
            std::slice::from_ref(&aggregate),
            "t1",
            filter.as_deref(),
            None,
        );
        let key_list = keys.join(", ");
        let partition = if per_key { "window, k" } else { "window" };
        let query = format!(
            "SELECT ws, we, {key_list}, a0, rn FROM (SELECT window.start AS ws, window.end AS we, \
             {key_list}, a0, {function}() OVER (PARTITION BY {partition} ORDER BY {order}) AS rn \
             FROM ({inner})) WHERE {kept}"
        );
        let source = filtered("t1", filter.as_deref());
        let relation = self.window_relation(window, &source, keys);
        let agg = Gen::oracle_aggregate(&relation, keys, std::slice::from_ref(&aggregate), None);
        let oracle_partition = if per_key { "ws, we, k" } else { "ws, we" };
        let oracle = format!(
            "SELECT ws, we, {key_list}, a0, rn FROM (SELECT ws, we, {key_list}, a0, \
             {function}() OVER (PARTITION BY {oracle_partition} ORDER BY {order}) AS rn \
             FROM ({agg}) agg) ranked WHERE {kept}"
        );
        Built {
            tables,
            query,
            oracle,
            output: Output::Append,
        }
    }

    /// An updating aggregate over an inner join of two tables without windows.
    pub(super) fn join_aggregate(&mut self) -> Built {
        let mut tables = self.tables(2, Gen::shape(None, &[]));
        // The join multiplies rows: a few hundred a side keep the run short.
        for t in &mut tables {
            t.events.truncate(150);
        }
        let on = *self.pick(&[
            "l.k = r.k",
            "l.g = r.g",
            "l.k = r.k AND l.g = r.g",
            "l.k IS NOT DISTINCT FROM r.k",
            "(l.k IS NOT DISTINCT FROM r.k) AND l.g = r.g",
        ]);
        self.tag(format!("join-on:{}", on.replace(' ', "")));
        let keys = *self.pick(JOIN_GROUP_KEYS);
        self.tag(format!("keys:{}", keys.len()));
        let filter = self.rng.random_bool(0.4).then(|| {
            let c = self.rng.random_range(-500..=500);
            format!("l.v > {c} OR r.v IS NULL")
        });
        let mut select: Vec<String> = keys
            .iter()
            .map(|k| format!("{k} AS {}", k.replace('.', "")))
            .collect();
        let n = self.rng.random_range(1..=3);
        for i in 0..n {
            select.push(format!("{} AS a{i}", self.pick(JOIN_AGGREGATES)));
        }
        let having = self.rng.random_bool(0.3).then(|| {
            self.tag("having");
            let c = self.rng.random_range(0..=6);
            format!("count(*) > {c}")
        });
        if self.rng.random_bool(0.3) {
            let size = *self.pick(&[1000, 2000, 5000, 10_000]);
            self.tag("join:tumble");
            return join_tumble(size, on, keys, &select, filter.as_deref(), having, tables);
        }
        let from = format!("t1 l JOIN t2 r ON {on}");
        let (query, oracle) = updating_query(&select, &from, filter.as_deref(), keys, having);
        Built {
            tables,
            query,
            oracle,
            output: Output::Updating,
        }
    }
}

/// A TUMBLE aggregate over a windowless inner join: a joined row has the later event time of
/// its two rows (the oracle's `greatest(l.ts, r.ts)`).
fn join_tumble(
    size: i64,
    on: &str,
    keys: &[&str],
    select: &[String],
    filter: Option<&str>,
    having: Option<String>,
    tables: Vec<super::Table>,
) -> Built {
    let rest = |first: &str| {
        std::iter::once(first.to_string())
            .chain(select.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let group = |first: &str| {
        std::iter::once(first)
            .chain(keys.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let having = having.map_or(String::new(), |h| format!(" HAVING {h}"));
    let from = format!("t1 l JOIN t2 r ON {on}{}", where_clause(filter));
    let query = format!(
        "SELECT {} FROM {from} GROUP BY {}{having}",
        rest(&format!("tumble({}) AS window", interval(size))),
        group("window")
    );
    let bin = format!(
        "date_bin(INTERVAL '{size} milliseconds', greatest(l.ts, r.ts), TIMESTAMP '1970-01-01T00:00:00')"
    );
    let columns: Vec<String> = keys
        .iter()
        .map(|k| k.replace('.', ""))
        .chain((0..select.len() - keys.len()).map(|i| format!("a{i}")))
        .collect();
    let oracle = format!(
        "SELECT named_struct('start', ws, 'end', ws + INTERVAL '{size} milliseconds') AS window, {} \
         FROM (SELECT {} FROM {from} GROUP BY {}{having}) agg",
        columns.join(", "),
        rest(&format!("{bin} AS ws")),
        group(&bin)
    );
    Built {
        tables,
        query,
        oracle,
        output: Output::Append,
    }
}
