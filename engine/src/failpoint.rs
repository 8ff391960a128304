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
//! Pause points ([`pause`]): armed with `<name>=return(<path>)` while the file `<path>`
//! exists, the process creates `<path>.reached` and waits (at most [`PAUSE_DEADLINE`]) until
//! `<path>` is removed, then goes on; with `<path>` absent it goes on at once. A test can so
//! act at an exact moment of a worker without sleeping:
//! - `access_checked`: a connector's path passed its access check (`storage::access::check`)
//!   and is not opened yet.
//!
//! Switches ([`armed`]), set with `<name>=return`:
//! - `landlock_unsupported`: `arroyod worker --confine` behaves as on a kernel without
//!   Landlock (restricts nothing, and says so).
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

/// True when switch `name` is armed; always false without the feature.
pub fn armed(name: &'static str) -> bool {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |_| ()).is_some();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// The longest a pause point waits for its token to be removed.
pub const PAUSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Fires pause point `name` if it is armed (see the module documentation). It blocks the
/// calling thread: only test builds ever wait here. Without the feature it does nothing.
pub fn pause(name: &'static str) {
    #[cfg(feature = "failpoints")]
    if let Some(Some(token)) = fail::eval(name, |arg| arg) {
        wait_for_removal(name, std::path::Path::new(&token));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Says `<token>.reached`, then waits until `token` is gone (or the deadline passes).
#[cfg(feature = "failpoints")]
fn wait_for_removal(name: &str, token: &std::path::Path) {
    if !token.exists() {
        return;
    }
    let mut reached = token.as_os_str().to_os_string();
    reached.push(".reached");
    if let Err(e) = std::fs::write(&reached, name) {
        tracing::warn!(point = name, error = %e, "a pause point cannot say it was reached");
        return;
    }
    tracing::warn!(
        point = name,
        "pause point reached: waiting for its token to go"
    );
    let deadline = std::time::Instant::now() + PAUSE_DEADLINE;
    while token.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
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
