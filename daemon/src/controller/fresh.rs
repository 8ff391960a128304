//! Restarting a pipeline without state (`arroyoctl restart --no-state`, Arroyo's "restart
//! without state"): its checkpoints go to a new location under its own (`ID/gN`), none is
//! restored, and its sources start over.
//!
//! An exactly-once sink's committed output stays where readers see it, so the new run writes
//! over it or beside it ([`crate::engine::Rerun`]). Such a restart is refused unless forced
//! once anything was committed: a checkpoint completed in some generation, or the pipeline
//! runs (its stop takes one). Either way the answer says, per sink, what the new run does.

use super::machine::{Changes, Event, EventKind, State};
use super::{Controller, ControllerError, Pipeline, location};
use crate::engine::PlannedSink;

/// What a restart without state did, in words: one note per sink and one on the state.
pub struct FreshRestart {
    pub pipeline: Pipeline,
    pub notes: Vec<String>,
}

impl Controller {
    /// Restarts the pipeline from no state; refused (unless `force`) when an exactly-once
    /// sink holds committed output that the new run would mix with its own.
    pub async fn restart_without_state(
        &self,
        id_or_name: &str,
        force: bool,
    ) -> Result<FreshRestart, ControllerError> {
        let p = self.find(id_or_name)?;
        let v = p.view();
        let planned = self
            .plan_for(v.spec.query.clone(), v.submitter)
            .await
            .map_err(ControllerError::InvalidQuery)?;
        let running = !v.state.is_terminal() && v.state != State::Created;
        let committed = running
            || self
                .ctx
                .store
                .has_event(&v.id, EventKind::Checkpoint.as_str())
                .await?;
        let mixed: Vec<&PlannedSink> = planned
            .sinks
            .iter()
            .filter(|s| s.breaks_exactly_once())
            .collect();
        if committed && !mixed.is_empty() && !force {
            return Err(ControllerError::WouldMixOutput {
                pipeline: v.name,
                sinks: mixed.iter().map(|s| s.describe()).collect(),
            });
        }
        let fresh = format!("{}/g{}", v.id, v.generation + 1);
        let old = location::resolve(&self.ctx.settings.state_root, &v.spec.state_location);
        let new = location::resolve(&self.ctx.settings.state_root, &fresh);
        let changes = Changes {
            fresh_state: Some(fresh),
            ..Changes::default()
        };
        let pipeline = self
            .start_again(id_or_name, changes, Event::Restart)
            .await?;
        let mut notes = vec![format!(
            "it {}starts from no state: its sources read from their start, checkpoints go to {new}, and those at {old} are no longer used (they are removed with the pipeline)",
            if running {
                "stops with a checkpoint and "
            } else {
                ""
            },
        )];
        notes.extend(planned.sinks.iter().map(|s| s.describe()));
        if !committed && !mixed.is_empty() {
            notes.push(
                "no checkpoint completed before, so no exactly-once sink had committed output"
                    .to_string(),
            );
        }
        Ok(FreshRestart { pipeline, notes })
    }
}
