//! `arroyod serve`: the long-lived daemon. It installs its signal handlers first, runs the
//! bootstrap sequence (see [`crate::bootstrap`]) with every pipeline that should run resumed,
//! tells systemd READY (and then the pipelines' STATUS and earned WATCHDOG pings, see
//! [`crate::notify`]), and on SIGTERM/SIGINT tells systemd STOPPING, shuts the components down
//! and exits 0.
//!
//! SIGTERM and SIGINT are blocked from the first line of `main` until their handlers exist
//! ([`block_termination_signals`], [`Signals::install`]): one that comes in between waits,
//! pending, and is then handled. So a SIGTERM at any moment after start ends the daemon with
//! status 0.

use tracing::info;

use crate::bootstrap::{BootstrapError, Daemon, StartOptions};
use crate::notify::{self, Heartbeat};
use crate::settings::Settings;

/// SIGTERM and SIGINT, as a signal set.
fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset write only into the set, which is initialised by
    // sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread and in every thread it starts from now on (the
/// runtime's); call it first in `main`, before any thread exists. [`Signals::install`]
/// unblocks them in its own thread once handlers are in place. Child processes get an
/// unblocked mask (the standard library resets it at spawn).
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: pthread_sigmask reads a valid, initialised set and changes only this thread's
    // mask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Unblocks SIGTERM and SIGINT in this thread: one pending is delivered now.
fn unblock_termination_signals() {
    let set = termination_set();
    // SAFETY: as in block_termination_signals.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The process's termination signals, installed once.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the SIGTERM and SIGINT handlers, then unblocks the signals in this thread
    /// (see [`block_termination_signals`]): from now on they no longer kill the process.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        };
        unblock_termination_signals();
        Ok(signals)
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
    notify::ready(&daemon.controller);
    let heartbeat = Heartbeat::start(daemon.controller.clone());
    let signal = signals.next().await;
    info!(signal, "shutting down: stopping every pipeline");
    notify::stopping();
    daemon.shutdown().await;
    heartbeat.stop().await;
    info!("arroyod stopped");
    Ok(())
}
