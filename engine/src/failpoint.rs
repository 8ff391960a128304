//! Crash points for tests: the one place that names the `failpoints` cargo feature.
//!
//! With the feature (the daemon's dev-dependencies enable it, so the binaries `cargo test`
//! builds have it and `cargo build` never does), [`crash_point!`] marks a place where a test
//! can make the process die as `kill -9` would: set `FAILPOINTS=<name>=return` in the
//! worker's environment (several: `a=return;b=return`, the `fail` crate's syntax), or
//! `<name>=return(<path>)` to die only while the file `<path>` exists (it is removed as the
//! process dies: once across a worker's restarts). Without the feature the macro expands to
//! nothing.
//!
//! Points in the engine (grep `crash_point!`):
//! - `kafka_sink_mid_epoch`: an exactly-once Kafka sink's records of an epoch are delivered
//!   into its open transaction; its checkpoint is not taken yet;
//! - `kafka_sink_before_commit`: its checkpoint's MANIFEST is written, its transaction not
//!   committed;
//! - `kafka_sink_after_commit`: the transaction is committed, the sink has not returned;
//! - `checkpoint_state_written`: a checkpoint's state files are written, its MANIFEST not;
//! - `checkpoint_manifest_written`: the MANIFEST is written, old epochs not yet collected;
//! - `checkpoint_completed`: the checkpoint completed, the daemon has not recorded it;
//! - `sink_committed`: a filesystem sink renamed a checkpoint's files to their final names.
//!
//! Points in the daemon and `arroyod run` (grep `failpoint::point`), fired in that process
//! (its workers die with it):
//! - `checkpoint_recording`: a worker reported a completed checkpoint, the database has no
//!   row of it yet;
//! - `checkpoint_recorded`: its row is committed, no metadata snapshot has been taken of it;
//! - `snapshot_uploaded`: a metadata snapshot is uploaded to `backup_url`, its `LATEST`
//!   pointer not yet moved to it.
//!
//! [`setup`] runs once per process, first thing in `main`.

/// Arms the crash points named in `FAILPOINTS` for the life of the process; a no-op
/// without the `failpoints` feature.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Fires crash point `name` armed with `token`: without a token the process dies; with one
/// (`name=return(/path/to/token)`) it dies only if it can remove that file, so that a crash
/// happens once across the restarts of a worker.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str, token: Option<String>) {
    if let Some(path) = &token
        && std::fs::remove_file(path).is_err()
    {
        return;
    }
    tracing::warn!(point = name, "crash point fires: the process kills itself");
    // SAFETY: kill(2) on our own pid with a signal number; it touches no memory of ours.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Fires crash point `name` if it is armed: for the processes that embed the engine (the
/// engine's own points use [`crash_point!`]). Without the feature it does nothing.
pub fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    if let Some(token) = fail::eval(name, |arg| arg) {
        crash(name, token);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Marks a crash point named `$name` (a string literal): see the module documentation.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if let Some(token) = fail::eval($name, |arg| arg) {
            $crate::failpoint::crash($name, token);
        }
    };
}
pub(crate) use crash_point;
