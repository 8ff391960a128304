//! The kernel's floor under a foreign pipeline's worker: Landlock.
//!
//! The open-time check of the engine's `storage::access` gives clear messages, but a path can
//! change between that check and the open (a symlink swapped in), and object stores open
//! files the check never sees. So the worker of a pipeline submitted by another user than the
//! daemon's also asks the kernel to refuse it every file outside what it needs:
//!
//! 1. The daemon passes the worker its [`Grant`] on the command line when it spawns it
//!    (`--confine`, `--allow PATH`..., `--state-dir PATH`): the worker knows it before it
//!    has any thread.
//! 2. First thing in `arroyod worker`, before the tokio runtime (or any other thread)
//!    exists, [`restrict`] makes a Landlock ruleset and applies it to the process's only
//!    thread; every thread made later inherits it, and it can never be lifted.
//! 3. What it allows: read and write under each of `allowed_paths` and under the pipeline's
//!    own local state directory (not the state root: other pipelines' state stays off
//!    limits); reading (and mapping code from) the system's libraries, TLS roots, DNS and
//!    time-zone files ([`SYSTEM_READ`]); `/dev/null`, `/dev/urandom`; and of `/proc` only
//!    `/proc/self/statm` (the memory watch). Nothing else: not the rest of `/etc`, not the
//!    daemon's database, sockets, state or configuration.
//! 4. It also keeps the worker from signalling processes outside its domain and from
//!    reaching abstract Unix sockets.
//! 5. A kernel without Landlock (or with an older ABI than [`ABI`]) cannot give all of this:
//!    [`restrict`] says so in its [`Enforcement`], the worker logs one warning and its Hello
//!    carries it, and the daemon records it as the pipeline's warning event. Paths are then
//!    checked only at open time. Nothing pretends otherwise.
//! 6. A ruleset the kernel supports but refuses (an error, not an old kernel) stops the
//!    pipeline: the worker reports it Failed, naming the error, and never runs it unrestricted.
//!
//! The daemon's own user's pipelines and `arroyod run` are never restricted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    ABI as LandlockAbi, Access, AccessFs, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// The Landlock ABI this ruleset is written (and tested) for: file rights of ABI 5 (with
/// device ioctls), scopes of ABI 6. Newer kernels enforce it fully.
pub const ABI: LandlockAbi = LandlockAbi::V6;

/// What a worker may read (and map as code) whatever its pipeline: shared libraries and
/// everything else under `/usr`, the dynamic loader's cache, TLS roots, the resolver's
/// files and the time zone. Missing entries are skipped.
pub const SYSTEM_READ: [&str; 18] = [
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/localtime",
    "/dev/urandom",
];

/// Files of `/proc` a worker reads: its resident memory (the memory watch) and its cgroup
/// (the standard library's count of usable CPUs, with [`cpu_quota_files`]). Never
/// `/proc/self/environ`.
pub const PROC_READ: [&str; 2] = ["/proc/self/statm", "/proc/self/cgroup"];

/// The CPU quota files of this process's own cgroup and its ancestors (cgroup v2 `cpu.max`,
/// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`), which the standard library reads to count
/// the CPUs a runtime may use: read from `cgroup`, the text of `/proc/self/cgroup`. Nothing
/// else of `/sys` is allowed.
pub fn cpu_quota_files(cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (roots, names): (&[&str], &[&str]) = if controllers.is_empty() {
            (&["/sys/fs/cgroup"], &["cpu.max"])
        } else if controllers.split(',').any(|c| c == "cpu") {
            (
                &["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"],
                &["cpu.cfs_quota_us", "cpu.cfs_period_us"],
            )
        } else {
            continue;
        };
        let own = Path::new(path.trim_start_matches('/'));
        for root in roots {
            for dir in own.ancestors() {
                for name in names {
                    files.push(Path::new(root).join(dir).join(name));
                }
            }
        }
    }
    files
}

/// What the worker of a foreign pipeline may reach besides the system's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// `allowed_paths`: read and write beneath each.
    pub allowed: Vec<PathBuf>,
    /// The pipeline's own local state directory (None: its state is in an object store).
    pub state: Option<PathBuf>,
}

impl Grant {
    /// The worker's command-line arguments that carry this grant.
    pub fn args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from("--confine")];
        for p in &self.allowed {
            args.push("--allow".into());
            args.push(p.clone().into_os_string());
        }
        if let Some(state) = &self.state {
            args.push("--state-dir".into());
            args.push(state.clone().into_os_string());
        }
        args
    }
}

/// How far the kernel enforces a worker's restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Every rule is enforced by the kernel.
    Full,
    /// Some is enforced, not all (an older Landlock ABI); the reason.
    Partial(String),
    /// Nothing is: no Landlock in this kernel; the reason.
    None(String),
}

impl Enforcement {
    /// The warning to give when the kernel does not enforce everything.
    pub fn warning(&self) -> Option<String> {
        let (what, why) = match self {
            Enforcement::Full => return None,
            Enforcement::Partial(why) => ("only partly confines", why),
            Enforcement::None(why) => ("does not confine", why),
        };
        Some(format!(
            "the kernel {what} this worker ({why}): its paths are only checked at open time, which a path changed between the check and the open can escape; run on Linux 6.12 or later with Landlock enabled (lsm=...,landlock)"
        ))
    }
}

/// Errors of setting up the restriction (a kernel that has no Landlock is no error: see
/// [`Enforcement::None`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel refused the ruleset or a rule.
    #[error("restricting the worker with Landlock")]
    Landlock(#[from] landlock::RulesetError),
    /// A path of the grant cannot be opened to make its rule.
    #[error("opening {} to allow it", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
}

/// A rule for `path` with `access`, for a path that must exist.
fn rule(
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
) -> Result<PathBeneath<PathFd>, SandboxError> {
    let fd = PathFd::new(path).map_err(|source| SandboxError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(PathBeneath::new(fd, access))
}

/// Restricts this process to `grant` and the system's files. Call it while the process has
/// one thread: the restriction covers the calling thread and the threads it makes later.
pub fn restrict(grant: &Grant) -> Result<Enforcement, SandboxError> {
    if crate::engine::failpoint::armed("landlock_unsupported") {
        return Ok(Enforcement::None(
            "a test build pretends it has no Landlock".into(),
        ));
    }
    let all = AccessFs::from_all(ABI);
    let read = AccessFs::from_read(ABI);
    // Data, not programs: nothing under a granted directory is executed.
    let data = all & !AccessFs::Execute;
    let file_read = AccessFs::ReadFile;
    let null = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut granted: Vec<&Path> = grant.allowed.iter().map(PathBuf::as_path).collect();
    granted.extend(grant.state.as_deref());
    // A granted directory that does not exist yet gets no rule (and so stays unreachable).
    let existing: Vec<&Path> = granted.into_iter().filter(|p| p.exists()).collect();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        .scope(Scope::from_all(ABI))?
        .create()?
        .add_rules(path_beneath_rules(SYSTEM_READ, read))?
        .add_rules(path_beneath_rules(PROC_READ, file_read))?
        .add_rules(path_beneath_rules(cpu_quota_files(&cgroup), file_read))?
        .add_rules(path_beneath_rules(["/dev/null"], null))?;
    for path in existing {
        ruleset = ruleset.add_rule(rule(path, data)?)?;
    }
    let status = ruleset.restrict_self()?;
    Ok(match (status.ruleset, status.landlock) {
        (RulesetStatus::FullyEnforced, _) => Enforcement::Full,
        (RulesetStatus::PartiallyEnforced, LandlockStatus::Available { effective_abi, .. }) => {
            Enforcement::Partial(format!(
                "its Landlock ABI is {}, this worker asks for {}",
                effective_abi as i32, ABI as i32
            ))
        }
        (RulesetStatus::PartiallyEnforced, _) => {
            Enforcement::Partial("an older Landlock ABI".into())
        }
        (RulesetStatus::NotEnforced, LandlockStatus::NotEnabled) => {
            Enforcement::None("Landlock is built in but not enabled at boot".into())
        }
        (RulesetStatus::NotEnforced, LandlockStatus::NotImplemented) => {
            Enforcement::None(
                "it has no Landlock, or a seccomp filter such as systemd's SystemCallFilter= forbids its system calls".into(),
            )
        }
        (RulesetStatus::NotEnforced, _) => {
            Enforcement::None("it refused every Landlock right asked for".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_travels_as_worker_arguments_and_warnings_say_what_is_lost() {
        let g = Grant {
            allowed: vec!["/srv/a".into(), "/srv/b".into()],
            state: Some("/var/lib/arroyod/state/p1".into()),
        };
        let args: Vec<String> = g
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--confine",
                "--allow",
                "/srv/a",
                "--allow",
                "/srv/b",
                "--state-dir",
                "/var/lib/arroyod/state/p1"
            ]
        );
        assert_eq!(Enforcement::Full.warning(), None);
        let w = Enforcement::None("it has no Landlock".into())
            .warning()
            .unwrap();
        assert!(w.contains("only checked at open time"), "{w}");
        assert!(!SYSTEM_READ.contains(&"/etc"));
        assert!(!PROC_READ.iter().any(|p| p.contains("environ")));
        let files = cpu_quota_files("0::/system.slice/arroyod.service\n3:cpu,cpuacct:/\n");
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            shown,
            [
                "/sys/fs/cgroup/system.slice/arroyod.service/cpu.max",
                "/sys/fs/cgroup/system.slice/cpu.max",
                "/sys/fs/cgroup/cpu.max",
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us",
            ]
        );
    }
}
