//! Where the daemon's socket is, and the gRPC channel over it.
//!
//! The socket is the first of:
//! 1. `--socket PATH`;
//! 2. `$ARROYO_SOCKET`;
//! 3. `$RUNTIME_DIRECTORY/arroyod.sock` (systemd's `RuntimeDirectory=`; its first entry);
//! 4. `$XDG_RUNTIME_DIR/arroyod.sock`;
//! 5. `/tmp/arroyod-$UID/arroyod.sock`, with the real uid of the process.
//!
//! Empty variables count as unset. The chain must stay the daemon's own, so that both find each
//! other without flags. Connecting is eager and never retries: a daemon that is not there is
//! reported at once, naming the socket that was tried.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use arroyod_proto::arroyod_client::ArroyodClient;
use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName as _};
use tonic::transport::{Channel, Endpoint, Uri};

/// File name of the socket inside a runtime directory.
pub const SOCKET_FILE: &str = "arroyod.sock";

/// The socket of the arroyod run by `packaging/arroyod.service`.
pub const SYSTEM_SOCKET: &str = "/run/arroyod/arroyod.sock";

/// A client of the public API, over the daemon's socket.
pub type Client = ArroyodClient<Channel>;

/// Why arroyoctl has no channel to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No flag or variable names the socket, and the real uid that the last default needs is
    /// unknown (no `/proc`).
    #[error("cannot choose a default socket: the real uid is unknown")]
    NoDefault(#[source] io::Error),
    /// Nothing answers at the socket: no daemon, a wrong path, or no permission. The reason is
    /// part of the message: it is the one line users need to see.
    #[error("cannot reach arroyod at {}: {reason}", socket.display())]
    Unreachable {
        /// The socket that was tried.
        socket: PathBuf,
        /// The I/O error, or the message of the gRPC status.
        reason: String,
    },
}

impl ConnectError {
    /// What the user could do about it.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Self::NoDefault(_) => vec!["pass --socket or set ARROYO_SOCKET".to_owned()],
            Self::Unreachable { socket, .. } => {
                let mut hints =
                    vec!["is arroyod running? start it with 'arroyod' or pass --socket".to_owned()];
                let system = Path::new(SYSTEM_SOCKET);
                if socket != system && system.exists() {
                    hints.push(format!(
                        "the arroyod service listens at {SYSTEM_SOCKET}: pass --socket \
                         {SYSTEM_SOCKET} or set ARROYO_SOCKET"
                    ));
                }
                hints
            }
        }
    }
}

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

/// The socket to use when `--socket` is not given: steps 2 to 5 of the chain in the module
/// documentation. `uid` is called only when the chain gets to its last step.
pub fn default_socket(
    env: &SocketEnv,
    uid: impl FnOnce() -> io::Result<u32>,
) -> Result<PathBuf, ConnectError> {
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
    let uid = uid().map_err(ConnectError::NoDefault)?;
    Ok(PathBuf::from(format!("/tmp/arroyod-{uid}")).join(SOCKET_FILE))
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

/// Opens a channel to the daemon at `socket` and checks that something accepts the connection.
pub async fn connect(socket: &Path) -> Result<Client, ConnectError> {
    let path = socket.to_path_buf();
    // The authority is never resolved: every connection goes to the socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let name = path.as_path().to_fs_name::<GenericFilePath>()?;
                let stream = Stream::connect(name).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| ConnectError::Unreachable {
            socket: socket.to_path_buf(),
            reason: innermost_io_error(&err).unwrap_or_else(|| err.to_string()),
        })?;
    Ok(ArroyodClient::new(channel))
}

/// The message of the I/O error at the bottom of `err`'s chain: the transport wraps it in
/// layers that say nothing more.
fn innermost_io_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut found = None;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            found = Some(io.to_string());
        }
        current = e.source();
    }
    found
}

#[cfg(test)]
mod tests {
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
            default_socket(&env, no_uid).unwrap(),
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
            default_socket(&env, no_uid).unwrap(),
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
            default_socket(&env, no_uid).unwrap(),
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
            default_socket(&env, no_uid).unwrap(),
            Path::new("/run/user/1000/arroyod.sock")
        );
    }

    #[test]
    fn tmp_with_the_uid_comes_last() {
        assert_eq!(
            default_socket(&SocketEnv::default(), || Ok(1000)).unwrap(),
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
            default_socket(&env, || Ok(0)).unwrap(),
            Path::new("/tmp/arroyod-0/arroyod.sock")
        );
    }

    #[test]
    fn unknown_uid_is_an_error_only_at_the_last_step() {
        let err = default_socket(&SocketEnv::default(), || {
            Err(io::Error::from(io::ErrorKind::NotFound))
        })
        .unwrap_err();
        assert!(matches!(err, ConnectError::NoDefault(_)), "{err:?}");
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
        // Linux only (the daemon's platform); elsewhere the chain needs --socket or a variable.
        if Path::new("/proc/self/status").exists() {
            real_uid().expect("reads /proc/self/status");
        }
    }
}
