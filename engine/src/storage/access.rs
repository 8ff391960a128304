//! Which local files a worker's connectors may open, and whether its tables' object stores may
//! use the host's credentials: the process's [`Confinement`], set once by the embedding
//! process (the daemon's worker) before the job starts, and checked by every connector at the
//! moment it opens a path, never earlier.
//!
//! A check resolves the path as the kernel would at that moment: made absolute, `.` and `..`
//! removed, then the longest part that exists canonicalized (every symlink followed) and the
//! rest appended. The result must not lie under a denied root (for every pipeline: the
//! daemon's database, lock, sockets and state, `/proc`, `/sys`) and, for a confined worker,
//! must lie under an allowed root. With no confinement set (tests, a process that embeds the
//! engine without a daemon) only `/proc` and `/sys` are denied.
//!
//! It never opens anything itself and never blocks for long: it stats and reads symlinks.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use super::error::StorageError;

/// Roots no pipeline may name, whoever submitted it.
pub const ALWAYS_DENIED: [&str; 2] = ["/proc", "/sys"];

/// What the files and stores of a worker's tables may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// The pipeline was submitted by another user than the daemon's own (or root): its paths
    /// must lie under `allowed`, and its object stores get no credentials from the host.
    pub foreign: bool,
    /// Where a foreign pipeline's files may be (empty: nowhere).
    pub allowed: Vec<PathBuf>,
    /// Where no pipeline's files may be (beside [`ALWAYS_DENIED`]).
    pub denied: Vec<PathBuf>,
}

static CONFINEMENT: OnceLock<Confinement> = OnceLock::new();

/// Sets this process's confinement; false when one was set already (it never changes).
pub fn confine(confinement: Confinement) -> bool {
    let foreign = confinement.foreign;
    let set = CONFINEMENT.set(confinement).is_ok();
    if set && foreign {
        super::error::mark_foreign();
    }
    set
}

/// True when this process runs a foreign user's pipeline: its tables' object stores must not
/// use the host's credentials.
pub fn foreign() -> bool {
    CONFINEMENT.get().is_some_and(|c| c.foreign)
}

/// `path` made absolute against the working directory and free of `.` and `..`, lexically.
pub fn lexical_absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Where `path` leads now: the longest existing prefix of its lexical absolute form
/// canonicalized (symlinks followed), the rest appended.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = lexical_absolute(path);
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// `root` as a check compares it: resolved when it exists.
fn resolved_root(root: &Path) -> PathBuf {
    resolve(root)
}

/// Why a path may not be opened.
fn refusal(path: &Path, real: &Path, reason: String) -> StorageError {
    let shown = if lexical_absolute(path) == real {
        path.display().to_string()
    } else {
        format!("{} (which is {})", path.display(), real.display())
    };
    StorageError::Denied {
        path: shown,
        reason,
    }
}

/// Checks that `path` may be opened by this process's tables now; returns where it leads.
pub fn check(path: &Path) -> Result<PathBuf, StorageError> {
    let none = Confinement::default();
    let c = CONFINEMENT.get().unwrap_or(&none);
    let real = check_with(c, path)?;
    // Tests pause here to change the path between the check and the open.
    crate::failpoint::pause("access_checked");
    Ok(real)
}

/// [`check`] against `c`.
pub fn check_with(c: &Confinement, path: &Path) -> Result<PathBuf, StorageError> {
    let real = resolve(path);
    let denied = ALWAYS_DENIED
        .iter()
        .map(PathBuf::from)
        .chain(c.denied.iter().cloned());
    for root in denied {
        if real.starts_with(&root) || real.starts_with(resolved_root(&root)) {
            return Err(refusal(
                path,
                &real,
                format!(
                    "no pipeline may use a path under {} (the daemon's own files, /proc and /sys are off limits)",
                    root.display()
                ),
            ));
        }
    }
    if c.foreign
        && !c
            .allowed
            .iter()
            .any(|root| real.starts_with(resolved_root(root)))
    {
        let reason = if c.allowed.is_empty() {
            "a pipeline of another user than the daemon's may use no local path: the daemon's allowed_paths is empty".to_string()
        } else {
            let roots: Vec<String> = c.allowed.iter().map(|r| r.display().to_string()).collect();
            format!(
                "a pipeline of another user than the daemon's may only use paths under allowed_paths ({})",
                roots.join(", ")
            )
        };
        return Err(refusal(path, &real, reason));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_dot_dots_are_followed_before_the_roots_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("link")).unwrap();
        let c = Confinement {
            foreign: true,
            allowed: vec![allowed.clone()],
            denied: vec![dir.path().join("db")],
        };
        assert!(check_with(&c, &allowed.join("new/file.json")).is_ok());
        assert!(check_with(&c, &allowed.join("link")).is_err());
        assert!(check_with(&c, &allowed.join("../outside/secret")).is_err());
        assert!(check_with(&c, &dir.path().join("db")).is_err());
        let own = Confinement {
            foreign: false,
            ..c.clone()
        };
        assert!(check_with(&own, &allowed.join("link")).is_ok());
        assert!(check_with(&own, Path::new("/proc/self/environ")).is_err());
        assert!(check_with(&own, Path::new("/sys/../proc/1/environ")).is_err());
        assert!(check_with(&own, &dir.path().join("db/arroyod.db")).is_err());
    }
}
