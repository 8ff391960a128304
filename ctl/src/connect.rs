//! Where the daemon's socket is, and the gRPC channel over it.
//!
//! The socket is the first of:
//! 1. `--socket PATH`;
//! 2. the default socket of [`arroyod_proto::socket`]: `$ARROYO_SOCKET`, then
//!    `$RUNTIME_DIRECTORY/arroyod.sock`, then `$XDG_RUNTIME_DIR/arroyod.sock`, then
//!    `/tmp/arroyod-$UID/arroyod.sock`.
//!
//! The default is the daemon's own, defined once in the proto crate, so that both find each other
//! without flags. Connecting is eager and never retries: a daemon that is not there is reported
//! at once, naming the socket that was tried.

use std::io;
use std::path::{Path, PathBuf};

use arroyod_proto::arroyod_client::ArroyodClient;
use arroyod_proto::socket::{self, SYSTEM_SOCKET, SocketEnv};
use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName as _};
use tonic::transport::{Channel, Endpoint, Uri};

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
    /// The fallback directory of the default socket could be another user's.
    #[error("refusing the default socket's directory")]
    UnsafeDirectory(#[source] io::Error),
    /// The connection broke during a call: the daemon went away (killed, crashed) after it
    /// may have received the request.
    #[error("lost arroyod at {} during the call: {reason}", socket.display())]
    Lost {
        /// The socket of the call.
        socket: PathBuf,
        /// What the transport said.
        reason: String,
    },
}

impl ConnectError {
    /// What the user could do about it.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Self::NoDefault(_) | Self::UnsafeDirectory(_) => {
                vec!["pass --socket or set ARROYO_SOCKET".to_owned()]
            }
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
            Self::Lost { .. } => vec![
                "the daemon may have received the request before it went away: check                  'arroyoctl list' (or 'status') before retrying a submit, stop or resume"
                    .to_owned(),
                "is arroyod running? start it with 'arroyod' or pass --socket".to_owned(),
            ],
        }
    }
}

/// The socket to use when `--socket` is not given: the default socket of
/// [`arroyod_proto::socket`], with the variables and the real uid of this process. The
/// fallback directory `/tmp/arroyod-$UID` is refused unless it is private and ours.
pub fn default_socket() -> Result<PathBuf, ConnectError> {
    let path = socket::default_socket_from(&SocketEnv::from_process(), socket::real_uid)
        .map_err(ConnectError::NoDefault)?;
    if let (Some(dir), Ok(uid)) = (path.parent(), socket::real_uid())
        && dir == socket::fallback_dir(uid)
    {
        socket::check_fallback_dir(dir, uid).map_err(ConnectError::UnsafeDirectory)?;
    }
    Ok(path)
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
    // A tailed row may be as large as a worker may send.
    Ok(ArroyodClient::new(channel).max_decoding_message_size(arroyod_proto::MAX_MESSAGE_BYTES))
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
