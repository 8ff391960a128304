//! `arroyod serve`: the long-lived daemon. It installs its signal handlers first, runs the
//! bootstrap sequence (see [`crate::bootstrap`]) with every pipeline that should run resumed,
//! tells systemd READY, and on SIGTERM/SIGINT tells systemd STOPPING, shuts the components
//! down and exits 0.

use tracing::info;

use crate::bootstrap::{BootstrapError, Daemon, StartOptions};
use crate::settings::Settings;

/// The process's termination signals, installed once.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the SIGTERM and SIGINT handlers: from now on they no longer kill the process.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT; names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Errors that end `arroyod serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("installing the signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] BootstrapError),
}

pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let mut signals = Signals::install().map_err(ServeError::Signals)?;
    let options = StartOptions {
        resume_all: true,
        adopt_orphan_state: false,
    };
    let daemon = Daemon::start(&settings, options).await?;
    info!(
        socket = %settings.socket.as_deref().unwrap_or(std::path::Path::new("")).display(),
        data_dir = %settings.data_dir.display(),
        backup_url = settings.backup_url.as_ref().map(|u| u.as_str()).unwrap_or(""),
        "arroyod ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let signal = signals.next().await;
    info!(signal, "shutting down: stopping every pipeline");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    info!("arroyod stopped");
    Ok(())
}
