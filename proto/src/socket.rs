//! Where the daemon's socket lives when nothing names it: the one definition, shared by `arroyod`
//! (where it listens) and `arroyoctl` (where it connects), so that both find each other without
//! flags.
//!
//! The default socket is the first of:
//! 1. `$ARROYO_SOCKET`;
//! 2. `$RUNTIME_DIRECTORY/arroyod.sock` (systemd's `RuntimeDirectory=`; its first entry);
//! 3. `$XDG_RUNTIME_DIR/arroyod.sock`;
//! 4. `/tmp/arroyod-$UID/arroyod.sock`, with the real uid of the process.
//!
//! Empty variables count as unset. Flags and configuration files come before this chain and are
//! each binary's own. This module computes paths and checks the last step's directory
//! ([`check_fallback_dir`]): `/tmp` is shared, so another user could create `/tmp/arroyod-$UID`
//! first and receive the traffic meant for the daemon. That directory must be a real directory
//! owned by the uid with no group or other access, as ssh-agent and tmux require of theirs;
//! directories systemd creates for the unit (`RuntimeDirectory=`, group-readable by design) are
//! trusted. It never creates or connects to anything, and needs nothing but `std`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// File name of the socket inside a runtime directory.
pub const SOCKET_FILE: &str = "arroyod.sock";

/// The socket of the arroyod run by `packaging/arroyod.service`.
pub const SYSTEM_SOCKET: &str = "/run/arroyod/arroyod.sock";

/// The variables the default socket is chosen from.
#[derive(Debug, Default, Clone)]
pub struct SocketEnv {
    /// `$ARROYO_SOCKET`.
    pub arroyo_socket: Option<OsString>,
    /// `$RUNTIME_DIRECTORY`, set by systemd for `RuntimeDirectory=`.
    pub runtime_directory: Option<OsString>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<OsString>,
}

impl SocketEnv {
    /// Reads the variables of this process.
    pub fn from_process() -> Self {
        Self {
            arroyo_socket: std::env::var_os("ARROYO_SOCKET"),
            runtime_directory: std::env::var_os("RUNTIME_DIRECTORY"),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR"),
        }
    }
}

/// The default socket of this process: [`default_socket_from`] with the process's variables and
/// [`real_uid`].
///
/// Fails only when the chain gets to its last step and the real uid is unknown (no `/proc`); the
/// error says so, keeps the kind of the cause, and has the cause as its source.
pub fn default_socket() -> io::Result<PathBuf> {
    default_socket_from(&SocketEnv::from_process(), real_uid).map_err(no_default)
}

/// The default socket chosen from `env`, following the chain in the module documentation.
/// `uid` is called only when the chain gets to its last step; its error is the only one, returned
/// unchanged.
pub fn default_socket_from(
    env: &SocketEnv,
    uid: impl FnOnce() -> io::Result<u32>,
) -> io::Result<PathBuf> {
    fn set(value: Option<&OsString>) -> Option<&OsStr> {
        value.map(OsString::as_os_str).filter(|v| !v.is_empty())
    }
    if let Some(socket) = set(env.arroyo_socket.as_ref()) {
        return Ok(PathBuf::from(socket));
    }
    // systemd joins the directories of several `RuntimeDirectory=` entries with ':'.
    let runtime_directory = set(env.runtime_directory.as_ref()).and_then(|dirs| {
        let first = dirs.as_bytes().split(|&b| b == b':').next()?;
        (!first.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(first)))
    });
    if let Some(dir) = runtime_directory {
        return Ok(dir.join(SOCKET_FILE));
    }
    if let Some(dir) = set(env.xdg_runtime_dir.as_ref()) {
        return Ok(Path::new(dir).join(SOCKET_FILE));
    }
    let uid = uid()?;
    Ok(fallback_dir(uid).join(SOCKET_FILE))
}

/// The last step's directory for `uid`: `/tmp/arroyod-$UID`.
pub fn fallback_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/arroyod-{uid}"))
}

/// Checks the fallback directory `dir` of `uid`, when it exists: it must be a directory (not a
/// symlink), owned by `uid`, with no group or other access. The error (`PermissionDenied`)
/// says which and what to do.
pub fn check_fallback_dir(dir: &Path, uid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}: another user could receive arroyod's traffic through it; remove it, or \
                 pass --socket or set ARROYO_SOCKET",
                dir.display()
            ),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("is not a directory".into());
    }
    if meta.uid() != uid {
        return refuse(format!("is owned by uid {}, not {uid}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "has mode {:o}, open to its group or others (it must be 700)",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// The real uid of this process, from the first field of `Uid:` in `/proc/self/status` (the
/// owner of `/proc/self` is the effective uid, which differs under set-uid).
pub fn real_uid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_real_uid(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no Uid line in /proc/self/status",
        )
    })
}

fn parse_real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The error of [`default_socket`]: the chain needed the real uid and could not get it.
#[derive(Debug)]
struct NoDefault(io::Error);

impl fmt::Display for NoDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot choose a default socket: the real uid is unknown")
    }
}

impl std::error::Error for NoDefault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn no_default(uid_error: io::Error) -> io::Error {
    io::Error::new(uid_error.kind(), NoDefault(uid_error))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    fn no_uid() -> io::Result<u32> {
        panic!("the uid must not be needed")
    }

    #[test]
    fn arroyo_socket_comes_first() {
        let env = SocketEnv {
            arroyo_socket: os("/a/x.sock"),
            runtime_directory: os("/run/arroyod"),
            xdg_runtime_dir: os("/run/user/1000"),
        };
        assert_eq!(
            default_socket_from(&env, no_uid).unwrap(),
            Path::new("/a/x.sock")
        );
    }

    #[test]
    fn runtime_directory_comes_before_xdg() {
        let env = SocketEnv {
            arroyo_socket: None,
            runtime_directory: os("/run/arroyod"),
            xdg_runtime_dir: os("/run/user/1000"),
        };
        assert_eq!(
            default_socket_from(&env, no_uid).unwrap(),
            Path::new("/run/arroyod/arroyod.sock")
        );
    }

    #[test]
    fn runtime_directory_uses_its_first_entry() {
        let env = SocketEnv {
            runtime_directory: os("/run/arroyod:/run/other"),
            ..SocketEnv::default()
        };
        assert_eq!(
            default_socket_from(&env, no_uid).unwrap(),
            Path::new("/run/arroyod/arroyod.sock")
        );
    }

    #[test]
    fn xdg_runtime_dir_comes_before_tmp() {
        let env = SocketEnv {
            xdg_runtime_dir: os("/run/user/1000"),
            ..SocketEnv::default()
        };
        assert_eq!(
            default_socket_from(&env, no_uid).unwrap(),
            Path::new("/run/user/1000/arroyod.sock")
        );
    }

    #[test]
    fn tmp_with_the_uid_comes_last() {
        assert_eq!(
            default_socket_from(&SocketEnv::default(), || Ok(1000)).unwrap(),
            Path::new("/tmp/arroyod-1000/arroyod.sock")
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let env = SocketEnv {
            arroyo_socket: os(""),
            runtime_directory: os(""),
            xdg_runtime_dir: os(""),
        };
        assert_eq!(
            default_socket_from(&env, || Ok(0)).unwrap(),
            Path::new("/tmp/arroyod-0/arroyod.sock")
        );
    }

    #[test]
    fn unknown_uid_is_an_error_only_at_the_last_step() {
        let err = default_socket_from(&SocketEnv::default(), || {
            Err(io::Error::new(io::ErrorKind::NotFound, "no proc"))
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(err.to_string(), "no proc");
    }

    #[test]
    fn no_default_says_why_and_keeps_the_cause() {
        let err = no_default(io::Error::new(io::ErrorKind::NotFound, "no proc"));
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "cannot choose a default socket: the real uid is unknown"
        );
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("no proc")
        );
    }

    #[test]
    fn real_uid_is_the_first_uid_field() {
        let status =
            "Name:\tarroyoctl\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_real_uid(status), Some(1000));
        assert_eq!(parse_real_uid("Name:\tx\n"), None);
    }

    #[test]
    fn real_uid_of_this_process_is_readable() {
        // Linux only (the daemon's platform); elsewhere the chain needs a variable.
        if Path::new("/proc/self/status").exists() {
            real_uid().expect("reads /proc/self/status");
        }
    }

    #[test]
    fn default_socket_follows_the_chain_with_this_process() {
        // Reads the variables only: tests never set them, as threads share the environment.
        if Path::new("/proc/self/status").exists() {
            assert_eq!(
                default_socket().unwrap(),
                default_socket_from(&SocketEnv::from_process(), real_uid).unwrap()
            );
        }
    }

    #[test]
    fn the_fallback_dir_must_be_private_and_ours() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let tmp = std::env::temp_dir().join(format!("arroyod-socket-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let uid = std::fs::metadata(&tmp).unwrap().uid();
        let missing = tmp.join("missing");
        assert!(check_fallback_dir(&missing, uid).is_ok());
        let dir = tmp.join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_fallback_dir(&dir, uid).is_ok());
        let err = check_fallback_dir(&dir, uid + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("is owned by uid"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = check_fallback_dir(&dir, uid).unwrap_err();
        assert!(err.to_string().contains("mode 750"), "{err}");
        let link = tmp.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_fallback_dir(&link, uid).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
