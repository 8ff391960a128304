//! What the planner accepts and refuses of Arroyo's dialect, through [`plan`]: refusals with
//! their message and position, the forms Arroyo accepts, and the shape of the dataflow the
//! optimizer rules leave (one aggregation per DISTINCT, window filters above the window).

use super::*;

const IMPULSE: &str = "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');\n";

/// The one error planning `sql` (after [`IMPULSE`], on line 2 on) gives.
fn refusal(sql: &str) -> SqlError {
    let errors = plan(&format!("{IMPULSE}{sql}")).expect_err("the query is refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().expect("one error")
}

/// Plans `sql` after [`IMPULSE`]; panics with the errors.
fn accepted(sql: &str) -> PlannedQuery {
    plan(&format!("{IMPULSE}{sql}")).unwrap_or_else(|e| panic!("{sql}\n{e:?}"))
}

/// The tables the query writes to, in order.
fn sink_tables(q: &PlannedQuery) -> Vec<&str> {
    q.sinks.iter().map(|s| s.table.as_str()).collect()
}

/// The labels of the program's nodes, in order.
fn labels(q: &PlannedQuery) -> Vec<String> {
    q.program.nodes.iter().map(|n| n.label.clone()).collect()
}

/// The 1-based column of the first occurrence of `what` in line 2 of `sql`.
fn column_of(sql: &str, what: &str) -> u32 {
    sql.find(what).expect("the text is there") as u32 + 1
}

#[test]
fn a_window_function_outside_group_by_is_refused_at_its_call() {
    let sql = "SELECT hop(interval '1 second', interval '10 second') AS window, count(*) AS n FROM impulse;";
    let e = refusal(sql);
    assert_eq!(
        e.message,
        "time window function hop is not allowed in this context. Are you missing a GROUP BY clause?"
    );
    assert_eq!((e.line, e.column), (2, column_of(sql, "hop")));
}

#[test]
fn nested_aggregates_need_the_same_window() {
    let inner = "SELECT counter AS c, tumble(interval '1 minute') AS window, count(*) AS n FROM impulse GROUP BY 1, 2";
    let sql = format!(
        "SELECT count(*) AS n, tumble(interval '2 minute') AS w2 FROM ({inner}) GROUP BY 2;"
    );
    let e = refusal(&sql);
    assert!(
        e.message
            .contains("tumble(120s), does not match the window of its input, tumble(60s)"),
        "{e}"
    );
    assert_eq!(
        (e.line, e.column),
        (2, column_of(&sql, "tumble(interval '2"))
    );

    // The same window again, or the input's window column: the windows' results as groups.
    accepted(&format!(
        "SELECT count(*) AS n, tumble(interval '1 minute') AS w2 FROM ({inner}) GROUP BY 2;"
    ));
    accepted(&format!(
        "SELECT window, count(*) AS n, max(n) AS most FROM ({inner}) GROUP BY window;"
    ));
    let sessions =
        "SELECT session(interval '1 minute') AS window, count(*) AS n FROM impulse GROUP BY 1";
    let e = refusal(&format!(
        "SELECT session(interval '1 minute') AS w, count(*) FROM ({sessions}) GROUP BY 1;"
    ));
    assert!(
        e.message.contains("group by the input's window column"),
        "{e}"
    );
}

#[test]
fn an_aggregate_over_windows_must_group_by_a_window() {
    let sql = "SELECT count(*) AS n FROM (SELECT counter AS c, tumble(interval '1 minute') AS window, count(*) AS k FROM impulse GROUP BY 1, 2);";
    let e = refusal(sql);
    assert!(e.message.contains("groups by no window"), "{e}");
    assert_eq!(e.line, 2);
    let e = refusal(
        "SELECT c, count(*) AS n FROM (SELECT counter AS c, tumble(interval '1 minute') AS window FROM impulse GROUP BY 1, 2) GROUP BY c;",
    );
    assert!(e.message.contains("groups by no window"), "{e}");
}

#[test]
fn the_window_can_be_named_or_numbered_in_group_by_and_projected_through_subqueries() {
    for group in ["window", "1", "tumble(interval '1 second')"] {
        accepted(&format!(
            "SELECT tumble(interval '1 second') AS window, count(*) AS n FROM impulse GROUP BY {group};"
        ));
    }
    accepted(
        "SELECT w.start AS s, n FROM (SELECT window AS w, n FROM (SELECT tumble(interval '1 second') AS window, count(*) AS n FROM impulse GROUP BY 1));",
    );
}

#[test]
fn a_memory_table_is_written_once() {
    let sql = "CREATE TABLE m (c BIGINT);
INSERT INTO m SELECT counter FROM impulse;
INSERT INTO m SELECT counter + 1 FROM impulse;
SELECT * FROM m;";
    let errors = plan(&format!("{IMPULSE}{sql}")).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .contains("memory table 'm' already has an INSERT INTO"),
        "{errors:?}"
    );
    assert_eq!((errors[0].line, errors[0].column), (4, 1));
}

#[test]
fn an_updating_result_can_go_through_a_memory_table() {
    let q = accepted(
        "CREATE TABLE counts (s BIGINT, n BIGINT);
INSERT INTO counts SELECT subtask_index, count(*) FROM impulse GROUP BY 1;
CREATE TABLE out (s BIGINT, n BIGINT) WITH (connector = 'single_file', path = '/dev/null', format = 'debezium_json', type = 'sink');
INSERT INTO out SELECT s, n FROM counts WHERE n > 1;",
    );
    assert_eq!(sink_tables(&q), ["out"]);
}

#[test]
fn order_by_and_limit_say_what_to_do_instead_without_planner_internals() {
    for (sql, keyword) in [
        (
            "SELECT counter FROM impulse ORDER BY counter LIMIT 10;",
            "ORDER",
        ),
        ("SELECT counter FROM impulse LIMIT 10;", "LIMIT"),
    ] {
        let e = refusal(sql);
        assert!(e.message.contains("ROW_NUMBER() OVER"), "{e}");
        for internal in [
            "Sort:",
            "fetch=",
            "Limit:",
            "impulse.counter",
            "not implemented",
        ] {
            assert!(!e.message.contains(internal), "{e}");
        }
        assert_eq!((e.line, e.column), (2, column_of(sql, keyword)));
    }
}

#[test]
fn joins_find_the_window_of_each_side_through_subqueries() {
    let side = |filter: &str| {
        format!(
            "SELECT tumble(interval '1 second') AS window, subtask_index AS k, count(*) AS n FROM impulse WHERE {filter} GROUP BY 1, 2"
        )
    };
    // Arroyo's own outer-join test joins on the window's start.
    for kind in ["LEFT", "RIGHT", "FULL OUTER", "INNER"] {
        for on in [
            "l.window.start = r.window.start",
            "l.window = r.window AND l.k = r.k",
        ] {
            let q = accepted(&format!(
                "SELECT l.n AS ln, r.n AS rn FROM ({}) l {kind} JOIN ({}) r ON {on};",
                side("counter % 2 = 0"),
                side("counter % 3 = 0")
            ));
            assert!(
                labels(&q).iter().any(|l| l.starts_with("join")),
                "{:?}",
                labels(&q)
            );
        }
    }
    let e = refusal(&format!(
        "SELECT l.n FROM ({}) l LEFT JOIN (SELECT tumble(interval '2 second') AS window, count(*) AS n FROM impulse GROUP BY 1) r ON l.window.start = r.window.start;",
        side("true")
    ));
    assert!(e.message.contains("different windows"), "{e}");
    let e = refusal(&format!(
        "SELECT l.n FROM ({}) l LEFT JOIN impulse r ON l.k = r.subtask_index;",
        side("true")
    ));
    assert!(e.message.contains("by no window"), "{e}");
    let e = refusal("SELECT * FROM impulse a FULL JOIN impulse b ON a.counter = b.counter;");
    assert!(
        e.message.starts_with("FULL joins need both sides grouped"),
        "{e}"
    );
}

#[test]
fn distinct_aggregates_stay_one_aggregation_in_every_window_kind() {
    for window in [
        "tumble(interval '1 second')",
        "hop(interval '1 second', interval '3 second')",
        "session(interval '1 second')",
    ] {
        let q = accepted(&format!(
            "SELECT {window} AS w, subtask_index, count(DISTINCT counter) AS d FROM impulse GROUP BY 1, 2;"
        ));
        let aggregates = labels(&q)
            .iter()
            .filter(|l| l.contains("aggregate") && !l.ends_with(":transform"))
            .count();
        assert_eq!(aggregates, 1, "{window}: {:?}", labels(&q));
    }
    let q = accepted(
        "SELECT subtask_index, sum(DISTINCT counter) AS d, min(counter) AS m FROM impulse GROUP BY 1;",
    );
    assert_eq!(
        labels(&q)
            .iter()
            .filter(|l| l.contains("aggregate") && !l.ends_with(":transform"))
            .count(),
        1,
        "{:?}",
        labels(&q)
    );
}

#[test]
fn filters_on_the_window_and_on_row_time_stay_above_the_aggregate() {
    for filter in [
        "w.start > TIMESTAMP '2024-01-01T00:00:00'",
        "row_time() > TIMESTAMP '2024-01-01T00:00:00' AND n > 1",
    ] {
        let q = accepted(&format!(
            "SELECT * FROM (SELECT tumble(interval '1 second') AS w, count(*) AS n FROM impulse GROUP BY 1) WHERE {filter};"
        ));
        let labels = labels(&q);
        let aggregate = labels
            .iter()
            .position(|l| l.starts_with("window_aggregate"))
            .expect("a window aggregate");
        // The source feeds the aggregate directly: no filter below it.
        assert!(
            !labels[..aggregate].iter().any(|l| l.contains("transform")),
            "{filter}: {labels:?}"
        );
    }
}

#[test]
fn a_filter_proven_false_lets_no_row_through() {
    accepted("SELECT counter FROM impulse WHERE counter = 1 AND counter = 2;");
    accepted("SELECT counter FROM impulse WHERE 1 = 0;");
}

#[test]
fn the_json_family_plans_with_its_types() {
    let q = accepted(
        "SELECT json_get_str(v, 'a') AS s, json_get_int(v, 'b') AS i, json_get_float(v, 'f') AS f,
           json_get_bool(v, 'ok') AS b, json_get_json(v, 'o') AS j, json_as_text(v, 'a') AS t,
           json_contains(v, 'a') AS c, json_length(v) AS l, v ? 'a' AS q,
           extract_json(v, '$.t[*].n') AS e, extract_json_string(v, '$.a') AS x,
           get_first_json_object(v, '$.o') AS o
         FROM (SELECT CAST(counter AS TEXT) AS v FROM impulse);",
    );
    assert_eq!(sink_tables(&q), ["preview"]);
}

#[test]
fn a_column_outside_the_group_by_is_named_without_planner_internals() {
    let sql = "SELECT counter FROM impulse GROUP BY tumble(interval '1 second');";
    let e = refusal(sql);
    assert_eq!(
        e.message,
        "column 'counter' must be in the GROUP BY or inside an aggregate function (such as max(counter) or count(counter))"
    );
    assert_eq!((e.line, e.column), (2, column_of(sql, "counter")));
}

#[test]
fn in_and_exists_subqueries_are_refused_as_what_the_user_wrote() {
    for sql in [
        "SELECT counter FROM impulse WHERE counter IN (SELECT counter FROM impulse);",
        "SELECT counter FROM impulse WHERE EXISTS (SELECT 1);",
        "SELECT counter FROM impulse WHERE counter NOT IN (SELECT counter FROM impulse);",
    ] {
        let e = refusal(sql);
        assert!(
            e.message.starts_with(
                "IN (SELECT ...) and EXISTS (...) subqueries (semi and anti joins) need"
            ),
            "{sql}: {e}"
        );
        assert_eq!(e.line, 2, "{sql}: {e}");
    }
}

#[test]
fn two_output_columns_of_one_name_are_named_by_their_table() {
    // What they are called is tested through `arroyod run` (daemon/tests/dialect.rs).
    accepted("SELECT a.counter, b.counter FROM impulse a JOIN impulse b ON a.counter = b.counter;");
    let q = accepted("SELECT * FROM impulse a JOIN impulse b ON a.counter = b.counter;");
    assert_eq!(sink_tables(&q), ["preview"]);
    // A sink with declared columns names them by position.
    accepted(
        "CREATE TABLE out (x BIGINT UNSIGNED, y BIGINT UNSIGNED) WITH (connector = 'blackhole');
INSERT INTO out SELECT a.counter, b.counter FROM impulse a JOIN impulse b ON a.counter = b.counter;",
    );
}
