//! What DataFusion's SQL planner sees of the catalog: the tables defined so far in the file,
//! and every built-in function of a default DataFusion session.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{TableReference, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

use crate::connector::ConnectorTable;

/// A table as the planner knows it.
#[derive(Debug)]
pub struct TableEntry {
    pub table: ConnectorTable,
}

impl TableSource for TableEntry {
    fn schema(&self) -> SchemaRef {
        self.table.schema.clone()
    }
}

/// The planner's catalog for one SQL file.
pub struct Catalog {
    pub state: SessionState,
    tables: HashMap<String, Arc<TableEntry>>,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            state: SessionStateBuilder::new().with_default_features().build(),
            tables: HashMap::new(),
        }
    }

    /// Adds a table; false when the name is taken.
    pub fn add_table(&mut self, table: ConnectorTable) -> bool {
        if self.tables.contains_key(&table.name) {
            return false;
        }
        self.tables
            .insert(table.name.clone(), Arc::new(TableEntry { table }));
        true
    }

    pub fn table(&self, name: &str) -> Option<&ConnectorTable> {
        self.tables.get(name).map(|e| &e.table)
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

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
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
        self.state.scalar_functions().keys().cloned().collect()
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
