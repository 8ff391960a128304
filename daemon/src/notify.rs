//! Telling the service manager how the daemon is: `READY=1` once it serves (only after the
//! signal handlers exist, so a SIGTERM right after READY stops it cleanly), `STOPPING=1` at
//! shutdown, `STATUS=` with the number of pipelines per state, and `WATCHDOG=1` while the
//! controller answers.
//!
//! The watchdog ping is earned, not timed: every half `WatchdogSec` the heartbeat asks each
//! pipeline's task to answer (through the same inbox its commands use) and pings only when
//! all did within a quarter of it. So a stuck controller stops the pings, and systemd
//! restarts the daemon. Without `NOTIFY_SOCKET` nothing is sent and no heartbeat runs.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::controller::Controller;

/// How often STATUS is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "notifying the service manager failed");
    }
}

/// True when a service manager listens.
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `STATUS=` text: the number of pipelines and how many are in each state that has any.
pub fn status_line(counts: &[(&str, i64)]) -> String {
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {}", state.to_lowercase()))
        .collect();
    match (total, parts.is_empty()) {
        (1, _) => format!("1 pipeline: {}", parts.join(", ")),
        (_, true) => format!("{total} pipelines"),
        _ => format!("{total} pipelines: {}", parts.join(", ")),
    }
}

/// The daemon is ready.
pub fn ready(controller: &Controller) {
    let status = status_line(&controller.state_counts());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The daemon is stopping.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping every pipeline"),
    ]);
}

/// The heartbeat task: STATUS updates and earned WATCHDOG pings.
pub struct Heartbeat {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts it when a service manager listens.
    pub fn start(controller: Arc<Controller>) -> Heartbeat {
        let stop = CancellationToken::new();
        if !enabled() {
            return Heartbeat { stop, task: None };
        }
        let watchdog = sd_notify::watchdog_enabled();
        let every = watchdog.map_or(STATUS_EVERY, |w| w / 2);
        let beating = beat(controller, every, watchdog.is_some(), stop.clone());
        let task = tokio::spawn(beating.instrument(info_span!("heartbeat")));
        Heartbeat {
            stop,
            task: Some(task),
        }
    }

    /// Stops it and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn beat(
    controller: Arc<Controller>,
    every: Duration,
    watchdog: bool,
    stop: CancellationToken,
) {
    let mut last_status = String::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let status = status_line(&controller.state_counts());
        if watchdog {
            if controller.probe(every / 2).await {
                send(&[NotifyState::Watchdog]);
            } else {
                warn!(patience = ?every / 2, "a pipeline's task did not answer: the watchdog is not pinged");
            }
        }
        if status != last_status {
            send(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_pipelines_per_state() {
        assert_eq!(
            status_line(&[("Running", 0), ("Stopped", 0)]),
            "0 pipelines"
        );
        assert_eq!(
            status_line(&[("Running", 1), ("Stopped", 0)]),
            "1 pipeline: 1 running"
        );
        assert_eq!(
            status_line(&[("Running", 2), ("Stopped", 1), ("Failed", 0)]),
            "3 pipelines: 2 running, 1 stopped"
        );
    }
}
