//! Planning: a SQL file in Arroyo's dialect to a dataflow `Program`.
//!
//! 1. `statement::split` tokenizes the file and splits it into statements, cutting out the
//!    dialect's extensions that sqlparser does not parse (keeping every position).
//! 2. Each statement is parsed and handled on its own, so that one bad statement does not hide
//!    the errors of the next: CREATE TABLE registers a connector table in the [`Catalog`];
//!    INSERT INTO and a bare SELECT are planned by DataFusion (`SqlToRel`, then its analyzer
//!    and optimizer) and added to the dataflow by `rewrite::Builder`.
//! 3. Every error is a [`SqlError`] with the line and column it refers to: the token where the
//!    parser stopped, the span DataFusion's diagnostic names, the option that is wrong, or the
//!    start of the statement.
//!
//! Planning is pure: it reads no file and starts nothing, so `validate` is just `plan`.

mod approx;
mod balance;
#[cfg(test)]
mod dialect_tests;
mod join_keys;
mod json_fn;
mod naming;
mod optimizer;
mod provider;
mod refusal;
mod rewrite;
mod row_time;
mod statement;
mod warning;
pub mod window_fn;

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::planner::ContextProvider;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion::sql::sqlparser::ast::{
    self, CreateTableOptions, Expr as SqlExpr, ObjectName, SqlOption, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use crate::connector::{ConnectorError, ConnectorTable, Options};
use crate::dataflow::Program;
pub use provider::{Catalog, TableEntry};
use refusal::{Anchor, Refusal};

/// An error in a query, with the position it refers to (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    pub line: u32,
    pub column: u32,
}

impl SqlError {
    pub fn at(message: impl Into<String>, location: Location) -> Self {
        SqlError {
            message: message.into(),
            line: location.line as u32,
            column: location.column as u32,
        }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for SqlError {}

/// A planned SQL file.
#[derive(Debug, Clone)]
pub struct PlannedQuery {
    pub(crate) program: Program,
    /// The tables written to, in the order first written (the default sink is `preview`),
    /// with what a run without state does to each.
    pub sinks: Vec<crate::connector::PlannedSink>,
    /// Identifies the pipeline across reruns: a hash of its normalised plan (the DDL as
    /// parsed and printed back, each query's logical plan), blind to whitespace, comments
    /// and keyword case.
    pub fingerprint: String,
    /// Options of its tables that read files, load code or run commands on the worker's
    /// host ([`ConnectorTable::host_access`]): for the daemon's access policy.
    pub host_access: Vec<crate::connector::HostAccess>,
    /// What plans but is probably not meant ([`warning`]): shown, never refused.
    pub warnings: Vec<SqlError>,
}

impl PlannedQuery {
    /// Its dataflow graph as it would run at `parallelism`: what `explain` shows.
    pub fn shape(&self, parallelism: usize) -> crate::dataflow::Shape {
        self.program.shape(parallelism)
    }
}

/// How deep expressions and queries may nest (parentheses, CASE, function calls, subqueries):
/// deeper is refused where the parser gave up, so that planning never exhausts its stack.
/// Flat chains (`a OR b OR ...`, `x + y + ...`) are not nesting: they parse iteratively, of
/// any length the planner's stack allows (10,000 terms and more).
pub const MAX_NESTING: usize = 256;

/// sqlparser's recursion budget: a level of nesting costs it one to three units.
const PARSER_RECURSION: usize = 3 * MAX_NESTING;

/// A parser over `tokens` with the recursion budget of [`MAX_NESTING`].
fn new_parser(dialect: &GenericDialect, tokens: Vec<TokenWithSpan>) -> Parser<'_> {
    Parser::new(dialect)
        .with_recursion_limit(PARSER_RECURSION)
        .with_tokens_with_locations(tokens)
}

fn parser_options() -> ParserOptions {
    ParserOptions {
        collect_spans: true,
        map_string_types_to_utf8view: false,
        ..ParserOptions::default()
    }
}

/// Plans `sql`; on failure returns every error found, in file order.
pub fn plan(sql: &str) -> Result<PlannedQuery, Vec<SqlError>> {
    let dialect = GenericDialect {};
    let statements = statement::split(sql, &dialect).map_err(|e| vec![e])?;
    let mut catalog = Catalog::new();
    let mut builder = rewrite::Builder::default();
    let mut errors = Vec::new();
    let mut prints = Vec::new();
    let mut warnings = Vec::new();
    for raw in &statements {
        let mut out = Output {
            prints: &mut prints,
            warnings: &mut warnings,
        };
        if let Err(e) = plan_statement(raw, &dialect, &mut catalog, &mut builder, &mut out) {
            errors.push(e);
        }
    }
    if errors.is_empty() && builder.sinks().is_empty() {
        errors.push(SqlError {
            message: "the query has no INSERT INTO and no SELECT: there is nothing to run".into(),
            line: 0,
            column: 0,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let sinks = builder.sinks().to_vec();
    let mut host_access: Vec<_> = catalog
        .connector_tables()
        .flat_map(|t| t.host_access())
        .collect();
    host_access.sort_by(|a, b| (&a.table, &a.option).cmp(&(&b.table, &b.option)));
    let fingerprint = format!(
        "{:016x}",
        crate::storage::checksum::fnv1a64(prints.join("\n;\n").as_bytes())
    );
    Ok(PlannedQuery {
        program: builder.finish(),
        sinks,
        fingerprint,
        host_access,
        warnings,
    })
}

/// What planning a statement gives besides the dataflow.
struct Output<'a> {
    /// The statement as parsed and printed back (for the fingerprint).
    prints: &'a mut Vec<String>,
    warnings: &'a mut Vec<SqlError>,
}

fn plan_statement(
    raw: &statement::RawStatement,
    dialect: &GenericDialect,
    catalog: &mut Catalog,
    builder: &mut rewrite::Builder,
    out: &mut Output,
) -> Result<(), SqlError> {
    let prints = &mut *out.prints;
    let mut parser = new_parser(dialect, raw.tokens.clone());
    let mut stmt = parser.parse_statement().map_err(|e| match e {
        // Where the parser gave up: the nesting too deep.
        ParserError::RecursionLimitExceeded => parser_error(e, parser.peek_token().span.start),
        e => parser_error(e, raw.start),
    })?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::at(
            format!("unexpected '{}' after the end of the statement", next.token),
            next.span.start,
        ));
    }
    balance::balance_chains(&mut stmt);
    if !matches!(stmt, Statement::Query(_) | Statement::Insert(_)) {
        let mut print = stmt.to_string();
        for m in &raw.metadata {
            print.push_str(&format!(" METADATA {} FROM {}", m.column, m.key));
        }
        for w in &raw.watermarks {
            // The expression as parsed and printed back, like the rest of the statement.
            let expr = w.expr.as_ref().map(|tokens| {
                new_parser(dialect, tokens.clone())
                    .parse_expr()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|_| {
                        let words: Vec<String> =
                            tokens.iter().map(|t| t.token.to_string()).collect();
                        words.join(" ")
                    })
            });
            print.push_str(&format!(
                " WATERMARK FOR {} AS {}",
                w.column.to_lowercase(),
                expr.unwrap_or_default()
            ));
        }
        prints.push(print);
    }
    match stmt {
        Statement::CreateTable(create) => {
            let name = table_name(&create.name);
            let mut table = create_table(create, raw, catalog)?;
            for m in &raw.metadata {
                let TableEntry::Connector(t) = &mut table else {
                    return Err(SqlError::at(
                        "a memory table has no metadata columns",
                        m.start,
                    ));
                };
                t.add_metadata(&m.column, &m.key)
                    .map_err(|e| SqlError::at(e.to_string(), m.start))?;
            }
            if let Some(w) = raw.watermarks.first() {
                let TableEntry::Connector(t) = &mut table else {
                    return Err(SqlError::at("a memory table has no watermark", w.start));
                };
                apply_watermark(t, w, dialect, catalog)?;
            }
            if !catalog.add(&name, table) {
                return Err(SqlError::at(
                    format!("table '{name}' is defined twice"),
                    raw.start,
                ));
            }
            Ok(())
        }
        Statement::Query(_) => {
            let plan = to_logical(stmt, catalog, raw.start)?;
            let schema: Schema = plan.schema().as_arrow().clone();
            let preview = ConnectorTable::preview(Arc::new(schema));
            prints.push(format!("SELECT\n{}", plan.display_indent_schema()));
            out.warnings.extend(warning::of_query(&plan, raw.start));
            builder
                .add_insert(&preview, &plan)
                .map_err(|e| statement_error(e, raw, dialect, catalog))
        }
        Statement::Insert(ref insert) => {
            let target = match &insert.table {
                ast::TableObject::TableName(name) => table_name(name),
                other => {
                    return Err(SqlError::at(
                        format!("cannot insert into {other}"),
                        raw.start,
                    ));
                }
            };
            let table = match catalog.get(&target).map(|e| e.as_ref()) {
                Some(TableEntry::Connector(table)) => table.clone(),
                Some(TableEntry::Memory { .. }) => {
                    return insert_into_memory(stmt, &target, catalog, raw.start);
                }
                Some(TableEntry::View { .. }) => {
                    return Err(SqlError::at(
                        format!("cannot insert into view '{target}'"),
                        raw.start,
                    ));
                }
                None => {
                    return Err(SqlError::at(
                        format!("table '{target}' not found"),
                        raw.start,
                    ));
                }
            };
            // A sink without declared columns takes the query's.
            let input = if table.schema.fields().is_empty() {
                let source = insert
                    .source
                    .clone()
                    .ok_or_else(|| SqlError::at("INSERT INTO needs a query", raw.start))?;
                to_logical(Statement::Query(source), catalog, raw.start)?
            } else {
                match to_logical(stmt, catalog, raw.start)? {
                    LogicalPlan::Dml(DmlStatement {
                        op: WriteOp::Insert(_),
                        input,
                        ..
                    }) => input.as_ref().clone(),
                    other => {
                        return Err(SqlError::at(
                            format!("unexpected plan for INSERT: {}", other.display()),
                            raw.start,
                        ));
                    }
                }
            };
            prints.push(format!(
                "INSERT INTO {target}\n{}",
                input.display_indent_schema()
            ));
            out.warnings.extend(warning::of_query(&input, raw.start));
            builder
                .add_insert(&table, &input)
                .map_err(|e| statement_error(e, raw, dialect, catalog))
        }
        Statement::CreateView(view) => {
            let name = table_name(&view.name);
            let plan = {
                let planner = SqlToRel::new_with_options(&*catalog, parser_options());
                planner
                    .sql_statement_to_plan(Statement::Query(view.query))
                    .map_err(|e| df_error(e, raw.start))?
            };
            let schema = Arc::new(plan.schema().as_arrow().clone());
            if !catalog.add(&name, TableEntry::View { schema, plan }) {
                return Err(SqlError::at(
                    format!("table '{name}' is defined twice"),
                    raw.start,
                ));
            }
            Ok(())
        }
        Statement::Set(ast::Set::SingleAssignment {
            variable, values, ..
        }) => {
            let name = variable.to_string().to_ascii_lowercase();
            if name != "updating_ttl" {
                return Err(SqlError::at(
                    format!("unknown setting '{name}' (known: updating_ttl)"),
                    raw.start,
                ));
            }
            let [value] = values.as_slice() else {
                return Err(SqlError::at(
                    "SET updating_ttl takes one interval",
                    raw.start,
                ));
            };
            let planner = SqlToRel::new_with_options(&*catalog, parser_options());
            let expr = planner
                .sql_to_expr(
                    value.clone(),
                    &DFSchema::empty(),
                    &mut PlannerContext::new(),
                )
                .map_err(|e| df_error(e, raw.start))?;
            let nanos = window_fn::interval_nanos("updating_ttl", &expr)
                .map_err(|e| df_error(e, raw.start))?;
            builder.updating_ttl = nanos;
            Ok(())
        }
        other => Err(SqlError::at(
            format!(
                "unsupported statement '{}': expected CREATE TABLE, INSERT INTO or SELECT",
                first_words(&other.to_string())
            ),
            raw.start,
        )),
    }
}

/// `INSERT INTO memory_table ...`: reading the table now gives these rows; a second INSERT
/// into the same table is refused.
fn insert_into_memory(
    stmt: Statement,
    target: &str,
    catalog: &mut Catalog,
    start: Location,
) -> Result<(), SqlError> {
    let planner = SqlToRel::new_with_options(&*catalog, parser_options());
    let plan = planner
        .sql_statement_to_plan(stmt)
        .map_err(|e| df_error(e, start))?;
    let LogicalPlan::Dml(DmlStatement { input, .. }) = plan else {
        return Err(SqlError::at("unexpected plan for INSERT", start));
    };
    let Some(TableEntry::Memory { plan, schema }) = catalog.get(target).map(|e| e.as_ref()) else {
        return Err(SqlError::at(
            format!("'{target}' is not a memory table"),
            start,
        ));
    };
    // Name the columns as the table does, so every INSERT has the same schema.
    let input = LogicalPlanBuilder::from(input.as_ref().clone())
        .project(
            input
                .schema()
                .columns()
                .into_iter()
                .zip(schema.fields())
                .map(|(c, f)| datafusion::logical_expr::col(c).alias(f.name())),
        )
        .and_then(|b| b.build())
        .map_err(|e| df_error(e, start))?;
    let mut current = plan.lock().expect("memory table lock");
    if current.is_some() {
        // As in Arroyo: what reading the table gives must be one query's result.
        return Err(SqlError::at(
            format!(
                "memory table '{target}' already has an INSERT INTO: a memory table is written \
                 once (combine the queries with UNION ALL in that one INSERT)"
            ),
            start,
        ));
    }
    *current = Some(input);
    Ok(())
}

/// Plans a statement with DataFusion, then runs its analyzer (type coercion) and optimizer.
fn to_logical(
    stmt: Statement,
    catalog: &Catalog,
    start: Location,
) -> Result<LogicalPlan, SqlError> {
    let planner = SqlToRel::new_with_options(catalog, parser_options());
    let plan = planner
        .sql_statement_to_plan(stmt)
        .map_err(|e| df_error(e, start))?;
    catalog
        .state
        .optimize(&plan)
        .map_err(|e| df_error(e, start))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn table_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(normalize)
        .unwrap_or_default()
}

fn normalize(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn create_table(
    create: ast::CreateTable,
    raw: &statement::RawStatement,
    catalog: &Catalog,
) -> Result<TableEntry, SqlError> {
    let start = raw.start;
    let name = table_name(&create.name);
    let options = match create.table_options {
        CreateTableOptions::None => vec![],
        CreateTableOptions::With(options) => options,
        other => {
            return Err(SqlError::at(
                format!("unsupported table options '{other}': use WITH (key = 'value', ...)"),
                start,
            ));
        }
    };
    let mut entries = Vec::new();
    let mut positions = Vec::new();
    let mut connector = None;
    for option in options {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(SqlError::at(
                format!("unsupported table option '{option}': use key = 'value'"),
                start,
            ));
        };
        let at = key.span.start;
        let key_name = key.value.clone();
        let text = match value {
            SqlExpr::Value(v) => match v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                Value::Number(n, _) => n,
                Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            SqlExpr::Identifier(ident) => ident.value,
            other => {
                return Err(SqlError::at(
                    format!("option '{key_name}' must be a literal, not '{other}'"),
                    at,
                ));
            }
        };
        if key_name == "connector" {
            connector = Some(text);
        } else {
            positions.push((key_name.clone(), at));
            entries.push((key_name, text));
        }
    }
    if let Some(p) = &raw.partitioned_by {
        let entry = p.option(connector.as_deref())?;
        positions.push((entry.0.clone(), p.start));
        entries.push(entry);
    }
    let Some(connector) = connector else {
        if !entries.is_empty() {
            return Err(SqlError::at(
                format!("table '{name}' has options but no connector: add connector = '...'"),
                start,
            ));
        }
        let planner = SqlToRel::new_with_options(catalog, parser_options());
        let schema = planner
            .build_schema(create.columns)
            .map_err(|e| df_error(e, start))?;
        return Ok(TableEntry::Memory {
            schema: Arc::new(schema),
            plan: Mutex::new(None),
        });
    };
    // Virtual columns: (index, expression) of `GENERATED ALWAYS AS (expr)`.
    let generated_sql: Vec<(usize, SqlExpr)> = create
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.options.iter().find_map(|o| match &o.option {
                ast::ColumnOption::Generated {
                    generation_expr: Some(e),
                    ..
                } => Some((i, e.clone())),
                _ => None,
            })
        })
        .collect();
    let columns = if create.columns.is_empty() {
        None
    } else {
        let planner = SqlToRel::new_with_options(catalog, parser_options());
        let schema = planner
            .build_schema(create.columns)
            .map_err(|e| df_error(e, start))?;
        Some(Arc::new(schema))
    };
    let mut options = Options::new(entries);
    let table = ConnectorTable::new(&name, &connector, columns, &mut options).map_err(|e| {
        let at = match &e {
            ConnectorError::UnknownOption { option, .. }
            | ConnectorError::InvalidOption { option, .. } => positions
                .iter()
                .find(|(k, _)| k == option)
                .map(|(_, at)| *at)
                .unwrap_or(start),
            _ => start,
        };
        SqlError::at(e.to_string(), at)
    })?;
    let mut table = table;
    if !generated_sql.is_empty() {
        let stored: Vec<usize> = (0..table.schema.fields().len())
            .filter(|i| !generated_sql.iter().any(|(g, _)| g == i))
            .collect();
        let stored_schema = table
            .schema
            .project(&stored)
            .map_err(|e| SqlError::at(e.to_string(), start))?;
        let df_schema = DFSchema::try_from(stored_schema).map_err(|e| df_error(e, start))?;
        let planner = SqlToRel::new_with_options(catalog, parser_options());
        for (i, sql) in generated_sql {
            let expr = planner
                .sql_to_expr(sql, &df_schema, &mut PlannerContext::new())
                .map_err(|e| df_error(e, start))?;
            let physical = catalog
                .state
                .create_physical_expr(expr, &df_schema)
                .map_err(|e| df_error(e, start))?;
            table.generated.push((i, physical));
        }
    }
    Ok(TableEntry::Connector(table))
}

/// Applies `WATERMARK FOR column [AS expr]`: the column becomes the event time (unless
/// `event_time_field` names another) and the watermark is the expression, or the column itself.
fn apply_watermark(
    table: &mut ConnectorTable,
    clause: &statement::WatermarkClause,
    dialect: &GenericDialect,
    catalog: &Catalog,
) -> Result<(), SqlError> {
    let Ok(index) = table.schema.index_of(&clause.column) else {
        return Err(SqlError::at(
            format!(
                "WATERMARK FOR names '{}', which is not a column of '{}'",
                clause.column, table.name
            ),
            clause.start,
        ));
    };
    if table.event_time.watermark.is_some() {
        return Err(SqlError::at(
            format!(
                "table '{}' has both WATERMARK FOR and the option watermark_field: give one",
                table.name
            ),
            clause.start,
        ));
    }
    if table.event_time.field.is_none() {
        table.event_time.field = Some(index);
    }
    let schema =
        DFSchema::try_from(table.schema.as_ref().clone()).map_err(|e| df_error(e, clause.start))?;
    let expr = match &clause.expr {
        None => {
            datafusion::logical_expr::col(datafusion::common::Column::from_name(&clause.column))
        }
        Some(tokens) => {
            let mut parser = new_parser(dialect, tokens.clone());
            let ast = parser
                .parse_expr()
                .map_err(|e| parser_error(e, clause.start))?;
            let planner = SqlToRel::new_with_options(catalog, parser_options());
            planner
                .sql_to_expr(ast, &schema, &mut PlannerContext::new())
                .map_err(|e| df_error(e, clause.start))?
        }
    };
    let physical = catalog
        .state
        .create_physical_expr(expr, &schema)
        .map_err(|e| df_error(e, clause.start))?;
    table.event_time.watermark = Some(physical);
    Ok(())
}

/// A parser error, with the position sqlparser put in its message moved into the fields.
fn parser_error(e: ParserError, fallback: Location) -> SqlError {
    let text = match e {
        ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
        ParserError::RecursionLimitExceeded => format!(
            "the query nests more than {MAX_NESTING} levels deep here (parentheses, CASE, function calls or subqueries)"
        ),
    };
    if let Some(pos) = text.rfind(" at Line: ") {
        let rest = &text[pos + " at Line: ".len()..];
        let mut parts = rest.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse().ok());
        let column = parts.next().and_then(|c| c.trim().parse().ok());
        if let (Some(line), Some(column)) = (line, column) {
            return SqlError {
                message: format!("syntax error: {}", &text[..pos]),
                line,
                column,
            };
        }
    }
    SqlError::at(format!("syntax error: {text}"), fallback)
}

/// A DataFusion error, at the span its diagnostic names or else at `fallback`.
fn df_error(e: DataFusionError, fallback: Location) -> SqlError {
    let at = e
        .diagnostic()
        .and_then(|d| d.span)
        .filter(|s| s.start.line > 0)
        .map(|s| Location::new(s.start.line, s.start.column))
        .unwrap_or(fallback);
    let message = match e.find_root() {
        DataFusionError::Diagnostic(_, inner) => inner.message().into_owned(),
        root => root.message().into_owned(),
    };
    let message = unknown_function(&message)
        .or_else(|| not_grouped(&message))
        .unwrap_or(message);
    SqlError::at(message, at)
}

/// DataFusion's "Column in SELECT must be in GROUP BY or an aggregate function: While
/// expanding wildcard, column "t.x" must appear in the GROUP BY clause ..., currently only
/// "<the group expressions, as the planner prints them>" appears ...", which speaks of a
/// wildcard the query may not have and prints intervals as Rust structs, as what it means.
fn not_grouped(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("column \"")?;
    let (column, rest) = rest.split_once('"')?;
    if !rest
        .trim_start()
        .starts_with("must appear in the GROUP BY clause")
    {
        return None;
    }
    let name = column.rsplit('.').next().unwrap_or(column);
    Some(format!(
        "column '{name}' must be in the GROUP BY or inside an aggregate function (such as max({name}) or count({name}))"
    ))
}

/// DataFusion's "Invalid function 'x'.\nDid you mean 'y'?", which names the nearest function
/// however far it is, as "unknown function 'x'" with the suggestion only when it is a near
/// miss (as the options' "did you mean").
fn unknown_function(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Invalid function '")?;
    let (name, rest) = rest.split_once("'.")?;
    let suggestion = rest
        .trim()
        .strip_prefix("Did you mean '")?
        .strip_suffix("'?")?;
    let distance = strsim::levenshtein(&name.to_lowercase(), &suggestion.to_lowercase());
    Some(if distance <= (name.chars().count() / 3).max(2) {
        format!("unknown function '{name}' (did you mean '{suggestion}'?)")
    } else {
        format!("unknown function '{name}'")
    })
}

/// An error of the rewrite of a statement: a [`Refusal`] at what it is about (a window
/// function's call, a keyword), any other at the statement's start.
fn statement_error(
    e: DataFusionError,
    raw: &statement::RawStatement,
    dialect: &GenericDialect,
    catalog: &Catalog,
) -> SqlError {
    if let DataFusionError::External(inner) = e.find_root()
        && let Some(refusal) = inner.downcast_ref::<Refusal>()
    {
        let at = anchor_location(&refusal.anchor, raw, dialect, catalog).unwrap_or(raw.start);
        return SqlError::at(refusal.message.clone(), at);
    }
    df_error(e, raw.start)
}

/// Where `anchor` is in the statement `raw`, if it is there.
fn anchor_location(
    anchor: &Anchor,
    raw: &statement::RawStatement,
    dialect: &GenericDialect,
    catalog: &Catalog,
) -> Option<Location> {
    let tokens = &raw.tokens;
    let word = |i: usize, name: &str| matches!(&tokens[i].token, Token::Word(w) if w.value.eq_ignore_ascii_case(name));
    let next_significant = |i: usize| {
        tokens[i + 1..]
            .iter()
            .position(|t| !matches!(t.token, Token::Whitespace(_)))
            .map(|p| i + 1 + p)
    };
    // Calls of `name`: the index of the name and of its opening parenthesis.
    let calls = |name: &str| -> Vec<(usize, usize)> {
        (0..tokens.len())
            .filter(|&i| word(i, name))
            .filter_map(|i| {
                let open = next_significant(i)?;
                (tokens[open].token == Token::LParen).then_some((i, open))
            })
            .collect()
    };
    match anchor {
        Anchor::Statement => None,
        Anchor::Keyword(k) => (0..tokens.len())
            .find(|&i| word(i, k))
            .map(|i| tokens[i].span.start),
        Anchor::Function(name) => calls(name).first().map(|(i, _)| tokens[*i].span.start),
        Anchor::Window(spec) => {
            let calls = calls(spec.function());
            let udf = catalog.get_function_meta(spec.function())?;
            let matching = calls.iter().find(|(_, open)| {
                let mut parser =
                    Parser::new(dialect).with_tokens_with_locations(tokens[open + 1..].to_vec());
                let Ok(args) = parser.parse_comma_separated(Parser::parse_expr) else {
                    return false;
                };
                let planner = SqlToRel::new_with_options(catalog, parser_options());
                let args: Option<Vec<_>> = args
                    .into_iter()
                    .map(|a| {
                        planner
                            .sql_to_expr(a, &DFSchema::empty(), &mut PlannerContext::new())
                            .ok()
                    })
                    .collect();
                args.and_then(|args| window_fn::window_spec(&udf.call(args)).ok().flatten())
                    == Some(*spec)
            });
            matching
                .or(calls.first())
                .map(|(i, _)| tokens[*i].span.start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_layout_comments_and_keyword_case_but_not_meaning() {
        let fingerprint = |sql: &str| plan(sql).expect("plans").fingerprint;
        let base = fingerprint(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');
             CREATE TABLE t (ts TIMESTAMP, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (connector = 'single_file', path = '/in.json', type = 'source');
             SELECT counter FROM impulse WHERE counter % 2 = 0;
             SELECT n FROM t;",
        );
        let same = fingerprint(
            "-- the same pipeline, written differently
             create table impulse with (connector = 'impulse', event_rate = '10');
             CREATE TABLE t (ts TIMESTAMP, n BIGINT,
                watermark for ts as ts - interval '1' second) WITH (connector = 'single_file',
                path = '/in.json', type = 'source');
             select   counter
             from impulse   /* evens */ where counter % 2 = 0;
             SELECT n FROM t;",
        );
        assert_eq!(base, same);
        for changed in [
            // Another predicate, another option value, another watermark.
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');
             CREATE TABLE t (ts TIMESTAMP, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (connector = 'single_file', path = '/in.json', type = 'source');
             SELECT counter FROM impulse WHERE counter % 3 = 0;
             SELECT n FROM t;",
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '11');
             CREATE TABLE t (ts TIMESTAMP, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (connector = 'single_file', path = '/in.json', type = 'source');
             SELECT counter FROM impulse WHERE counter % 2 = 0;
             SELECT n FROM t;",
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');
             CREATE TABLE t (ts TIMESTAMP, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
               WITH (connector = 'single_file', path = '/in.json', type = 'source');
             SELECT counter FROM impulse WHERE counter % 2 = 0;
             SELECT n FROM t;",
        ] {
            assert_ne!(base, fingerprint(changed), "{changed}");
        }
    }

    const IMPULSE: &str = "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10');\n";

    #[test]
    fn plans_a_filtered_select() {
        let q = plan(&format!(
            "{IMPULSE}SELECT counter FROM impulse WHERE counter % 2 = 0;"
        ))
        .unwrap();
        assert_eq!(q.sinks[0].table, "preview");
        assert_eq!(q.sinks.len(), 1);
        assert!(q.program.nodes.len() >= 2, "{}", q.program.describe());
    }

    #[test]
    fn unknown_connector_and_option_are_named_with_positions() {
        let errors = plan(
            "CREATE TABLE a WITH (connector = 'kafkaa');\nCREATE TABLE b WITH (connector = 'impulse', event_rate = '1', colour = 'red');",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("unknown connector 'kafkaa'"));
        assert_eq!((errors[0].line, errors[0].column), (1, 1));
        assert!(errors[1].message.contains("unknown option 'colour'"));
        assert_eq!((errors[1].line, errors[1].column), (2, 63));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errors = plan(&format!("{IMPULSE}SELECT counter FROM WHERE")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2, "{errors:?}");
        assert!(errors[0].column > 0);
    }

    #[test]
    fn unknown_column_is_an_error() {
        let errors = plan(&format!("{IMPULSE}SELECT nope FROM impulse")).unwrap_err();
        assert!(errors[0].message.contains("nope"), "{errors:?}");
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn every_statement_reports_its_own_error() {
        let errors = plan("SELECT 1 FROM a;\nSELECT 2 FROM b;").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[1].line, 2);
    }
}
