//! A seeded differential test: random event streams and random queries from templates run
//! through the real `arroyod run`, and the sink output must equal what DataFusion's batch
//! engine computes over the complete input (`differential/oracle.rs`), at parallelism 1 (each
//! file read at once) and 3 (read in steps), and when stopped part-way and restored at another
//! parallelism (`differential/runner.rs`).
//!
//! 1. Seed `s` picks a template by `s % 10` ([`Template::of_seed`]: project, tumble, hop,
//!    session, having, distinct, topn, join, union, updating; every other ten seeds of the
//!    project, tumble and topn slots go to join-aggregate, expr and rank, the shapes of
//!    `differential/shapes.rs`) and everything else: the data
//!    (`differential/data.rs`, never late), the window, keys, aggregates, predicates.
//! 2. The oracle computes the expected rows; `arroyod run` runs in each mode; the outputs are
//!    compared as multisets (append) or by the rows left after replaying the changes
//!    (updating), floats within 1e-9 relative, timestamps as values
//!    (`differential/compare.rs`).
//! 3. A case whose tags match a class of [`KNOWN_BUGS`] is not run (and not counted as
//!    passing): those classes fail today. Every failing seed found is in
//!    `differential/regressions.txt`, run by [`regression_seeds`]: always once its class is
//!    fixed, and with `ARROYO_DIFF_REGRESSIONS=1` (or a class name) while it is known.
//!
//! Knobs (environment):
//! - `ARROYO_DIFF_CASES=N`: run N cases (default [`CI_CASES`]), from seed `ARROYO_DIFF_START`
//!   (default 1) on, skipping known-bug cases, at most N/10 (rounded up) of each template;
//! - `ARROYO_DIFF_SEED=S`: run only seed S, whatever its class;
//! - `ARROYO_DIFF_KNOWN=1`: also run the cases of known-bug classes;
//! - `ARROYO_DIFF_TEMPLATE=name`: only cases of this template.
//!
//! A failure prints the seed, the template, the query, the oracle's query, the kept input
//! files and the first differing rows. `differential/FINDINGS.md` lists what was found.

mod harness;

mod differential {
    pub mod compare;
    pub mod data;
    pub mod oracle;
    pub mod query;
    pub mod runner;
}

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use differential::query::{self, Case, TEMPLATES, Template};
use differential::{oracle, runner};

/// Cases of the normal `cargo test` run: four of each template.
const CI_CASES: u64 = 52;

/// Bug classes the engine has today: a case whose tags include every tag of a class is not
/// run unless `ARROYO_DIFF_KNOWN=1`. Remove a class when its fix lands (and run
/// `ARROYO_DIFF_REGRESSIONS=<class>`).
const KNOWN_BUGS: &[KnownBug] = &[
    // Empty: every class found so far is fixed, and its seeds in `differential/regressions.txt`
    // run in every `cargo test` (FINDINGS.md lists the classes and their fixes).
];

/// A class of failures and the tags that select its cases.
struct KnownBug {
    class: &'static str,
    tags: &'static [&'static str],
}

fn known_bug(case: &Case) -> Option<&'static str> {
    KNOWN_BUGS
        .iter()
        .find(|bug| bug.tags.iter().all(|t| case.tags.contains(*t)))
        .map(|bug| bug.class)
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")),
    )
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Why a case failed: the report to print.
fn run_case(case: &Case) -> Result<(), String> {
    let expected = oracle::expected(case).map_err(|e| {
        format!(
            "seed {} ({}): the oracle failed: {e}\n  oracle query: {}",
            case.seed, case.template, case.oracle.sql
        )
    })?;
    let ws = runner::Workspace::new(case);
    for mode in runner::modes(case) {
        if let Err(failure) = runner::run(case, &ws, &expected, mode) {
            let dir = ws.dir.keep();
            return Err(report(case, &dir, &failure));
        }
    }
    Ok(())
}

fn report(case: &Case, dir: &Path, failure: &runner::Failure) -> String {
    let inputs: Vec<String> = case
        .tables
        .iter()
        .map(|t| {
            format!(
                "{}/{}.json ({} rows)",
                dir.display(),
                t.name,
                t.events.len()
            )
        })
        .collect();
    let mut text = format!(
        "seed {} ({}): {}: {}\n  replay: ARROYO_DIFF_SEED={} cargo test -p arroyod --test differential -- random_queries\n  tags: {}\n  query (arroyod): {}\n  oracle (DataFusion): {}\n",
        case.seed,
        case.template,
        failure.mode,
        failure.reason,
        case.seed,
        case.tags.iter().cloned().collect::<Vec<_>>().join(" "),
        case.query,
        case.oracle.sql,
    );
    for step in &case.oracle.sessions {
        text.push_str(&format!(
            "  oracle sessions {}: gap {} ms by [{}] over: {}\n",
            step.name,
            step.gap_ms,
            step.keys.join(", "),
            step.input
        ));
    }
    text.push_str(&format!("  input: {}", inputs.join(", ")));
    for line in failure.detail.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str(&format!("\n    {}", line.trim_start()));
    }
    text
}

/// What a run covers: the seeds in order, how many cases to run, whether known-bug classes
/// are skipped (their seeds do not count).
struct Selection {
    seeds: Box<dyn Iterator<Item = u64>>,
    cases: usize,
    /// How many cases one template may take: every case when one template is chosen.
    share: usize,
    skip_known: bool,
}

fn selection() -> Selection {
    if let Some(seed) = env_u64("ARROYO_DIFF_SEED") {
        return Selection {
            seeds: Box::new(std::iter::once(seed)),
            cases: 1,
            share: 1,
            skip_known: false,
        };
    }
    let start = env_u64("ARROYO_DIFF_START").unwrap_or(1);
    let template = std::env::var("ARROYO_DIFF_TEMPLATE").ok().map(|name| {
        *TEMPLATES
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("ARROYO_DIFF_TEMPLATE={name:?} is not a template"))
    });
    let cases = env_u64("ARROYO_DIFF_CASES").unwrap_or(CI_CASES) as usize;
    Selection {
        seeds: Box::new(
            (start..).filter(move |s| template.is_none_or(|t| Template::of_seed(*s) == t)),
        ),
        cases,
        // Each template gets its share of the cases, so a template whose cases often fall in
        // a known-bug class is still covered.
        share: if template.is_some() {
            cases
        } else {
            cases.div_ceil(TEMPLATES.len())
        },
        skip_known: !env_flag("ARROYO_DIFF_KNOWN"),
    }
}

#[test]
fn random_queries_match_the_batch_oracle() {
    let Selection {
        seeds,
        cases,
        share,
        skip_known,
    } = selection();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut passed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ran = 0;
    let mut by_template: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in seeds {
        if ran == cases {
            break;
        }
        let template = Template::of_seed(seed).name();
        if by_template.get(template).is_some_and(|n| *n >= share) {
            continue;
        }
        let case = query::generate(seed);
        if skip_known && let Some(class) = known_bug(&case) {
            *skipped.entry(class).or_default() += 1;
            continue;
        }
        ran += 1;
        *by_template.entry(template).or_default() += 1;
        match run_case(&case) {
            Ok(()) => {
                *passed.entry(case.template.name()).or_default() += 1;
                let tags: Vec<&str> = case.tags.iter().map(String::as_str).collect();
                println!(
                    "seed {seed} ({}, {} rows): pass [{}]",
                    case.template,
                    case.rows(),
                    tags.join(" ")
                );
            }
            Err(report) => {
                println!("seed {seed} ({}): FAIL\n{report}", case.template);
                failures.push(report);
            }
        }
    }
    println!(
        "differential: {ran} cases in {:.0?}; passed by template {passed:?}; not run (known bugs) {skipped:?}",
        started.elapsed()
    );
    assert!(ran > 0, "no case ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// One line of `differential/regressions.txt`: `<seed> <template> <class>`.
struct Regression {
    seed: u64,
    template: String,
    class: String,
}

fn regressions() -> Vec<Regression> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/regressions.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let [seed, template, class] = parts[..] else {
                panic!(
                    "{}: {l:?} is not `<seed> <template> <class>`",
                    path.display()
                );
            };
            Regression {
                seed: seed.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")),
                template: template.to_string(),
                class: class.to_string(),
            }
        })
        .collect()
}

/// The failing seeds found so far. Always checked: every line names a seed of its template
/// (and, while its class is in [`KNOWN_BUGS`], a case with that class's tags). Seeds of fixed
/// classes run every time and must pass; seeds of a class still known run only with
/// `ARROYO_DIFF_REGRESSIONS=1` (every line) or `ARROYO_DIFF_REGRESSIONS=<class>`.
#[test]
fn regression_seeds() {
    let listed = regressions();
    for r in &listed {
        let case = query::generate(r.seed);
        assert_eq!(
            case.template.name(),
            r.template,
            "regressions.txt: seed {} is a {} case, not {}",
            r.seed,
            case.template,
            r.template
        );
        let bugs: Vec<&KnownBug> = KNOWN_BUGS.iter().filter(|b| b.class == r.class).collect();
        assert!(
            bugs.is_empty()
                || bugs
                    .iter()
                    .any(|b| b.tags.iter().all(|t| case.tags.contains(*t))),
            "regressions.txt: seed {} has tags {:?}, none of the tag sets of class {}",
            r.seed,
            case.tags,
            r.class
        );
    }
    // Seeds of a class still in KNOWN_BUGS fail today: run only when asked for. The others
    // are fixed classes, run every time.
    let which = std::env::var("ARROYO_DIFF_REGRESSIONS").ok();
    let open = |class: &str| KNOWN_BUGS.iter().any(|b| b.class == class);
    let chosen: Vec<&Regression> = listed
        .iter()
        .filter(|r| match &which {
            Some(w) => w == "1" || *w == r.class,
            None => !open(&r.class),
        })
        .collect();
    if let Some(w) = &which {
        assert!(!chosen.is_empty(), "no regression seed of class {w:?}");
    }
    println!(
        "regressions: {} seeds listed, {} run",
        listed.len(),
        chosen.len()
    );
    let failures: Vec<String> = chosen
        .iter()
        .filter_map(|r| {
            let outcome = run_case(&query::generate(r.seed));
            println!(
                "regression seed {} ({}): {}",
                r.seed,
                r.class,
                if outcome.is_ok() { "pass" } else { "FAIL" }
            );
            outcome.err().map(|e| format!("[{}] {e}", r.class))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} regression seeds fail:\n\n{}",
        failures.len(),
        chosen.len(),
        failures.join("\n\n")
    );
}
