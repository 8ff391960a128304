//! `Info`: what the daemon says of itself (`arroyoctl version`, `arroyoctl info`).

use std::collections::HashMap;
use std::time::Instant;

use arroyod_proto::InfoResponse;

use crate::access::Policy;
use crate::controller::Controller;
use crate::settings::Settings;
use crate::store::now_rfc3339;

/// What the daemon knows of itself from its start.
pub struct About {
    started: Instant,
    started_at: String,
    socket: String,
    data_dir: String,
    state_url: String,
    backup_url: String,
    metrics_addr: String,
    max_parallelism: u32,
    policy: Policy,
}

impl About {
    /// The daemon as `settings` started it, now.
    pub fn new(settings: &Settings) -> About {
        let shown = |v: Option<String>| v.unwrap_or_default();
        About {
            started: Instant::now(),
            started_at: now_rfc3339(),
            socket: shown(settings.socket.as_ref().map(|s| s.display().to_string())),
            data_dir: settings.data_dir.display().to_string(),
            state_url: settings.controller.state_root.to_string(),
            backup_url: shown(settings.backup_url.as_ref().map(ToString::to_string)),
            metrics_addr: shown(settings.metrics_addr.as_ref().map(ToString::to_string)),
            max_parallelism: settings.controller.max_parallelism,
            policy: settings.controller.access.clone(),
        }
    }

    /// The answer to `caller` (its uid as SO_PEERCRED gave it).
    pub fn response(&self, controller: &Controller, caller: Option<u32>) -> InfoResponse {
        let mut pipelines: HashMap<String, u32> = HashMap::new();
        for p in controller.list() {
            *pipelines.entry(p.view().state.to_string()).or_default() += 1;
        }
        InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: self.started_at.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self.socket.clone(),
            data_dir: self.data_dir.clone(),
            state_url: self.state_url.clone(),
            backup_url: self.backup_url.clone(),
            metrics_addr: self.metrics_addr.clone(),
            max_parallelism: self.max_parallelism,
            pipelines,
            caller_uid: caller.unwrap_or_default(),
            caller_confined: self.policy.foreign(caller),
        }
    }
}
