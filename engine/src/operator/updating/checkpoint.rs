//! The updating aggregate's checkpoint tables: every group as one row of the [`GROUPS`]
//! table, the argument rows of kept-values aggregates as `values<i>` tables, and how a
//! restore (at any parallelism) rebuilds the groups from them.

use super::*;

impl UpdatingOp {
    /// Every group as one row of the [`GROUPS`] table: key columns, `_rows`, `_dirty`,
    /// `_updated`, `_emitted` (whether a row was emitted), the emitted row's aggregate values,
    /// then every accumulator's state columns; and the argument rows of each kept-values
    /// aggregate `i` as rows of table `values<i>`: key columns, argument columns, `_count`.
    /// Reading an accumulator's state consumes it, so the groups are rebuilt from the tables
    /// (as a restore would rebuild them).
    pub(super) fn snapshot_groups(&mut self) -> Result<Vec<(String, RecordBatch)>> {
        if self.groups.is_empty() {
            return Ok(vec![]);
        }
        let count = self.groups.len();
        let aggregates = self.plan.aggregates.len();
        let dirty: HashSet<&OwnedRow> = self.dirty.iter().collect();
        let mut keys = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        let mut is_dirty = Vec::with_capacity(count);
        let mut updated = Vec::with_capacity(count);
        let mut emitted = Vec::with_capacity(count);
        let mut states: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(count); self.handling.iter().map(|h| h.width).sum()];
        // Per kept-values aggregate: (group key, argument row, count).
        let mut kept: Vec<Vec<(&OwnedRow, &OwnedRow, i64)>> = vec![Vec::new(); aggregates];
        for (key, group) in &mut self.groups {
            keys.push(key.row());
            rows.push(group.rows);
            is_dirty.push(dirty.contains(key));
            updated.push(group.updated);
            emitted.push(group.emitted.as_ref());
            let mut column = 0;
            for (a, slot) in group.slots.iter_mut().enumerate() {
                match slot {
                    Slot::Accumulator(acc) => {
                        for value in acc.state()? {
                            states
                                .get_mut(column)
                                .ok_or_else(|| bad_state(GROUPS))?
                                .push(value);
                            column += 1;
                        }
                    }
                    Slot::Values(values) => {
                        kept[a].extend(values.iter().map(|(row, &n)| (key, row, n)));
                    }
                }
            }
        }
        let key_names: Vec<String> = self
            .plan
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut names = key_names.clone();
        let mut columns = self.converter.convert_rows(keys)?;
        names.extend(["_rows", "_dirty", "_updated", "_emitted"].map(String::from));
        columns.push(Arc::new(Int64Array::from(rows)));
        columns.push(Arc::new(BooleanArray::from(is_dirty)));
        columns.push(Arc::new(Int64Array::from(updated)));
        columns.push(Arc::new(
            emitted
                .iter()
                .map(|e| Some(e.is_some()))
                .collect::<BooleanArray>(),
        ));
        for a in 0..aggregates {
            // A group that emitted nothing yet gets a null of the type of the others.
            let data_type = emitted
                .iter()
                .flatten()
                .map(|values| values[a].data_type())
                .next()
                .unwrap_or_else(|| self.plan.aggregates[a].expr.field().data_type().clone());
            let null = ScalarValue::try_from(&data_type)?;
            let values = emitted
                .iter()
                .map(|e| e.map_or_else(|| null.clone(), |values| values[a].clone()));
            names.push(format!("emitted{a}"));
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        for (i, values) in states.into_iter().enumerate() {
            names.push(format!("state{i}"));
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        let mut tables = vec![(GROUPS.to_string(), state_batch(names, columns)?)];
        for (a, entries) in kept.into_iter().enumerate() {
            let Some(converter) = &self.handling[a].values else {
                continue;
            };
            if entries.is_empty() {
                continue;
            }
            let mut columns = self
                .converter
                .convert_rows(entries.iter().map(|e| e.0.row()))?;
            let args = converter.convert_rows(entries.iter().map(|e| e.1.row()))?;
            let mut names = key_names.clone();
            names.extend((0..args.len()).map(|i| format!("arg{i}")));
            names.push("_count".into());
            columns.extend(args);
            columns.push(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.2),
            )));
            tables.push((format!("{VALUES}{a}"), state_batch(names, columns)?));
        }
        self.groups.clear();
        self.dirty.clear();
        self.expiry.clear();
        for (name, batch) in &tables {
            self.load(name, batch)?;
        }
        Ok(tables)
    }

    /// Adds the rows of a state table: groups of the [`GROUPS`] table, or kept argument rows
    /// of a `values<i>` table (their groups are loaded first).
    pub(super) fn load(&mut self, table: &str, batch: &RecordBatch) -> Result<()> {
        if table == GROUPS {
            return self.load_groups(batch);
        }
        let a: usize = table
            .strip_prefix(VALUES)
            .and_then(|i| i.parse().ok())
            .filter(|a| *a < self.handling.len())
            .ok_or_else(|| bad_state(table))?;
        let key_count = self.plan.key_schema.fields().len();
        let columns = batch.columns();
        let converter = self.handling[a]
            .values
            .as_ref()
            .ok_or_else(|| bad_state(table))?;
        if columns.len() < key_count + 1 {
            return Err(bad_state(table));
        }
        let keys = self.converter.convert_columns(&columns[..key_count])?;
        let args = converter.convert_columns(&columns[key_count..columns.len() - 1])?;
        let counts = columns[columns.len() - 1]
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad_state(table))?;
        for i in 0..batch.num_rows() {
            let group = self
                .groups
                .get_mut(&keys.row(i).owned())
                .ok_or_else(|| bad_state(table))?;
            let Slot::Values(kept) = &mut group.slots[a] else {
                return Err(bad_state(table));
            };
            *kept.entry(args.row(i).owned()).or_insert(0) += counts.value(i);
        }
        Ok(())
    }

    /// Adds the groups of rows of the [`GROUPS`] table.
    pub(super) fn load_groups(&mut self, batch: &RecordBatch) -> Result<()> {
        let key_count = self.plan.key_schema.fields().len();
        let aggregates = self.plan.aggregates.len();
        let columns = batch.columns();
        let widths: usize = self.handling.iter().map(|h| h.width).sum();
        // Checkpoints written before expiry have no `_updated` column: their groups count as
        // updated at the restored newest time (see `restore`).
        let has_updated = batch.schema().index_of("_updated").is_ok();
        let fixed = if has_updated { 4 } else { 3 };
        if columns.len() != key_count + fixed + aggregates + widths {
            return Err(bad_state(GROUPS));
        }
        let keys = self.converter.convert_columns(&columns[..key_count])?;
        let rows = columns[key_count]
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad_state(GROUPS))?;
        let dirty = columns[key_count + 1]
            .as_boolean_opt()
            .ok_or_else(|| bad_state(GROUPS))?;
        let updated = if has_updated {
            Some(
                columns[key_count + 2]
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| bad_state(GROUPS))?,
            )
        } else {
            None
        };
        let emitted = columns[key_count + fixed - 1]
            .as_boolean_opt()
            .ok_or_else(|| bad_state(GROUPS))?;
        let values = &columns[key_count + fixed..key_count + fixed + aggregates];
        let states = &columns[key_count + fixed + aggregates..];
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            if self.groups.contains_key(&key) {
                return Err(DataFusionError::Execution(format!(
                    "state table '{GROUPS}' holds a group twice"
                )));
            }
            let mut group = self.new_group()?;
            let mut offset = 0;
            for (slot, h) in group.slots.iter_mut().zip(&self.handling) {
                if let Slot::Accumulator(acc) = slot {
                    let state: Vec<ArrayRef> = states[offset..offset + h.width]
                        .iter()
                        .map(|c| c.slice(i, 1))
                        .collect();
                    acc.merge_batch(&state)?;
                }
                offset += h.width;
            }
            group.emitted = if emitted.value(i) {
                let row = values
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i))
                    .collect::<Result<_>>()?;
                Some(row)
            } else {
                None
            };
            group.rows = rows.value(i);
            if dirty.value(i) {
                self.dirty.push(key.clone());
            }
            match updated {
                Some(updated) => {
                    group.updated = updated.value(i);
                    self.expiry.insert((group.updated, key.clone()));
                }
                None => self.undated.push(key.clone()),
            }
            self.groups.insert(key, group);
        }
        Ok(())
    }
}
