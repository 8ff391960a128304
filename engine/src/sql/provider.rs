//! What DataFusion's SQL planner sees of the catalog: the tables defined so far in the file,
//! and every built-in function of a default DataFusion session.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{TableReference, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner, TypePlanner};
use datafusion::logical_expr::{
    AggregateUDF, HigherOrderUDF, LogicalPlan, ScalarUDF, TableSource, WindowUDF,
};

use crate::connector::ConnectorTable;

/// A table as the planner knows it.
#[derive(Debug)]
pub enum TableEntry {
    /// Backed by a connector.
    Connector(ConnectorTable),
    /// `CREATE VIEW name AS query`: inlined where it is read.
    View {
        schema: SchemaRef,
        plan: LogicalPlan,
    },
    /// A table without connector: what its one INSERT INTO writes is what reading it gives,
    /// as if it were a view of that query.
    Memory {
        schema: SchemaRef,
        plan: Mutex<Option<LogicalPlan>>,
    },
}

impl TableSource for TableEntry {
    fn schema(&self) -> SchemaRef {
        match self {
            TableEntry::Connector(t) => t.schema.clone(),
            TableEntry::View { schema, .. } | TableEntry::Memory { schema, .. } => schema.clone(),
        }
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        match self {
            TableEntry::Connector(_) => None,
            TableEntry::View { plan, .. } => Some(Cow::Borrowed(plan)),
            TableEntry::Memory { plan, .. } => plan
                .lock()
                .expect("memory table lock")
                .clone()
                .map(Cow::Owned),
        }
    }
}

/// Types of Arroyo's dialect that DataFusion does not know: `JSON` is text holding JSON.
#[derive(Debug)]
struct DialectTypes;

impl TypePlanner for DialectTypes {
    fn plan_type_field(
        &self,
        sql_type: &datafusion::sql::sqlparser::ast::DataType,
    ) -> Result<Option<datafusion::arrow::datatypes::FieldRef>> {
        use datafusion::sql::sqlparser::ast::DataType as Sql;
        Ok(match sql_type {
            Sql::JSON | Sql::JSONB => Some(Arc::new(datafusion::arrow::datatypes::Field::new(
                "",
                DataType::Utf8,
                true,
            ))),
            _ => None,
        })
    }
}

/// The planner's catalog for one SQL file.
pub struct Catalog {
    pub state: SessionState,
    /// The dialect's own functions: windows and JSON.
    functions: HashMap<String, Arc<ScalarUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    tables: HashMap<String, Arc<TableEntry>>,
}

impl Catalog {
    pub fn new() -> Self {
        let mut state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(super::optimizer::rules())
            .build();
        for name in super::approx::NAMES {
            if let Some(inner) = state.aggregate_functions().get(name).cloned() {
                let typed = super::approx::typed_by_input(inner);
                // Registering replaces DataFusion's function of the same name.
                let _ = datafusion::execution::FunctionRegistry::register_udaf(&mut state, typed);
            }
        }
        Catalog {
            functions: super::window_fn::window_udfs()
                .into_iter()
                .chain(super::json_fn::json_udfs())
                .chain([super::row_time::row_time_udf()])
                .map(|f| (f.name().to_string(), f))
                .collect(),
            planners: {
                let mut planners: Vec<Arc<dyn ExprPlanner>> =
                    vec![Arc::new(super::json_fn::JsonOperators)];
                planners.extend(state.expr_planners().iter().cloned());
                planners
            },
            state,
            tables: HashMap::new(),
        }
    }

    /// Adds a table or view; false when the name is taken.
    pub fn add(&mut self, name: &str, entry: TableEntry) -> bool {
        if self.tables.contains_key(name) {
            return false;
        }
        self.tables.insert(name.to_string(), Arc::new(entry));
        true
    }

    /// The connector tables defined so far.
    pub fn connector_tables(&self) -> impl Iterator<Item = &crate::connector::ConnectorTable> {
        self.tables.values().filter_map(|e| match e.as_ref() {
            TableEntry::Connector(t) => Some(t),
            _ => None,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TableEntry>> {
        self.tables.get(name)
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl ContextProvider for Catalog {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        match self.tables.get(name.table()) {
            Some(entry) => Ok(entry.clone()),
            None => plan_err!("table '{}' not found", name.table()),
        }
    }

    fn get_type_planner(&self) -> Option<Arc<dyn TypePlanner>> {
        Some(Arc::new(DialectTypes))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        if let Some(f) = self.functions.get(name) {
            return Some(f.clone());
        }
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.scalar_functions().keys().cloned().collect();
        names.extend(self.functions.keys().cloned());
        names
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}
