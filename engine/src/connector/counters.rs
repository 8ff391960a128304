//! Checkpointed positions of the counter-based generators (impulse, nexmark).
//!
//! Subtask `i` of `p` emits the counters `k * p + i` for `k = 0, 1, ...`; its position is the
//! next `k`. A run restored at the same parallelism continues each subtask's `k`. At another
//! parallelism the old run becomes a [`Layer`]: the new subtasks walk their own counters from
//! the lowest one the old run had not emitted and skip those it had, so every counter is
//! emitted exactly once however often the parallelism changes.

use serde::{Deserialize, Serialize};

use crate::task::TaskError;
use crate::task::{RestoredState, TaskState};

/// The counters a run at one parallelism emitted: counter `c` iff
/// `c / parallelism < next[c % parallelism]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Layer {
    parallelism: u64,
    next: Vec<u64>,
}

impl Layer {
    fn emitted(&self, counter: u64) -> bool {
        counter / self.parallelism < self.next[(counter % self.parallelism) as usize]
    }

    /// Every counter below this one was emitted.
    fn low(&self) -> u64 {
        (0..self.parallelism)
            .map(|i| self.next[i as usize] * self.parallelism + i)
            .min()
            .unwrap_or(0)
    }
}

/// One subtask's checkpointed position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CounterState {
    pub subtask: u64,
    pub parallelism: u64,
    /// The next `k`.
    pub next: u64,
    /// The time the generator's event times count from.
    pub start_time: Option<i64>,
    /// What runs at other parallelisms emitted.
    pub earlier: Vec<Layer>,
}

const POSITION: &str = "position";

impl CounterState {
    /// Subtask `subtask` of `parallelism` at its first counter.
    pub fn new(subtask: u64, parallelism: u64, start_time: Option<i64>) -> Self {
        CounterState {
            subtask,
            parallelism,
            next: 0,
            start_time,
            earlier: Vec::new(),
        }
    }

    /// The counter at this subtask's position `k`.
    pub fn counter(&self, k: u64) -> u64 {
        k * self.parallelism + self.subtask
    }

    /// Whether an earlier run (at another parallelism) emitted `counter`.
    pub fn emitted_before(&self, counter: u64) -> bool {
        self.earlier.iter().any(|l| l.emitted(counter))
    }

    /// The position as this subtask's state.
    pub fn snapshot(&self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        state.put_json(POSITION, self)?;
        Ok(state)
    }

    /// The position subtask `subtask` of `parallelism` continues from (None: no state).
    pub fn restore(
        state: &RestoredState,
        subtask: u64,
        parallelism: u64,
    ) -> Result<Option<CounterState>, TaskError> {
        let old: Vec<CounterState> = state.json(POSITION)?.into_iter().flatten().collect();
        let Some(first) = old.first() else {
            return Ok(None);
        };
        let start_time = old.iter().filter_map(|s| s.start_time).min();
        let mut earlier = first.earlier.clone();
        if first.parallelism == parallelism && old.len() as u64 == parallelism {
            let next = old
                .iter()
                .find(|s| s.subtask == subtask)
                .map_or(0, |s| s.next);
            return Ok(Some(CounterState {
                subtask,
                parallelism,
                next,
                start_time,
                earlier,
            }));
        }
        let mut next = vec![0; first.parallelism as usize];
        for s in &old {
            if let Some(slot) = next.get_mut(s.subtask as usize) {
                *slot = s.next;
            }
        }
        let layer = Layer {
            parallelism: first.parallelism,
            next,
        };
        let low = layer.low();
        earlier.push(layer);
        // The first position of this subtask at or above `low`.
        let next = if low <= subtask {
            0
        } else {
            (low - subtask).div_ceil(parallelism)
        };
        Ok(Some(CounterState {
            subtask,
            parallelism,
            next,
            start_time,
            earlier,
        }))
    }
}
