//! Who may use the daemon, and what the pipelines of each may reach.
//!
//! 1. **Callers.** Every call on the public socket is checked with the peer's credentials
//!    (`SO_PEERCRED`, which tonic puts in each request as [`UdsConnectInfo`]): root, the
//!    daemon's own user and members of `allowed_group` (the caller's effective group, or any
//!    group the group database lists for its uid) are let in; anyone else gets
//!    `PermissionDenied`, logged with uid and pid. An admitted call carries a [`Caller`].
//! 2. **Pipelines.** A pipeline remembers the uid that submitted it. One submitted by anyone
//!    but root or the daemon's own user is *foreign*: it gets none of the daemon's rights.
//!    Its local paths must lie under `allowed_paths` (empty: none), options that make a worker
//!    read host files or load code (Kafka `client_configs` such as `ssl.key.location`) are
//!    refused, `{{ VAR }}` takes nothing from the daemon's environment, and its worker starts
//!    with an emptied environment and builds its object stores without host credentials.
//! 3. **Everyone.** No pipeline may name the daemon's database, lock, sockets, data dir or
//!    state, `/proc` or `/sys`.
//!
//! Planning-time checks ([`refusals`]) give early, positioned errors; the worker's
//! check when a connector opens a path (the engine's `storage::access`, with the
//! [`Confinement`] this policy gives) is the authority: symlinks and `..` are resolved then.

pub mod account;

use std::path::{Path, PathBuf};

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};
use tracing::warn;

use crate::engine::{Confinement, HostAccess, HostAccessKind, SqlError, check_path};

/// Who made an admitted call: the peer process's uid and pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// The daemon's access policy, from its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's own (real) uid.
    pub daemon_uid: u32,
    /// `allowed_group`, as given and as an id.
    pub allowed_group: Option<(String, u32)>,
    /// `allowed_paths`: where foreign pipelines' files may be.
    pub allowed_paths: Vec<PathBuf>,
    /// The daemon's own files: no pipeline's path may lie under one.
    pub denied_paths: Vec<PathBuf>,
}

/// Errors of building a [`Policy`] from the settings.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `allowed_group` names no group of this host.
    #[error("allowed_group '{0}': no such group on this host")]
    UnknownGroup(String),
    /// An entry of `allowed_paths` is not an absolute path.
    #[error("allowed_paths entry '{}': must be an absolute path", .0.display())]
    RelativePath(PathBuf),
}

impl Policy {
    /// The policy of a daemon of this process's user: members of `group` (a name or a gid)
    /// admitted, foreign pipelines' files under `allowed` (absolute paths), and no pipeline's
    /// under `own`.
    pub fn new(
        group: Option<String>,
        allowed: Vec<PathBuf>,
        own: Vec<PathBuf>,
    ) -> Result<Policy, PolicyError> {
        let allowed_group = match group {
            None => None,
            Some(name) => match account::group_id(&name) {
                Some(gid) => Some((name, gid)),
                None => return Err(PolicyError::UnknownGroup(name)),
            },
        };
        if let Some(relative) = allowed.iter().find(|p| !p.is_absolute()) {
            return Err(PolicyError::RelativePath(relative.clone()));
        }
        Ok(Policy {
            daemon_uid: arroyod_proto::socket::real_uid().unwrap_or(u32::MAX),
            allowed_group,
            allowed_paths: allowed
                .iter()
                .map(|p| crate::engine::absolute_path(p))
                .collect(),
            denied_paths: own,
        })
    }

    /// True when a pipeline submitted by `submitter` (None: stored before submitters were
    /// recorded, or by `arroyod run`: the daemon's own) gets none of the daemon's rights.
    pub fn foreign(&self, submitter: Option<u32>) -> bool {
        submitter.is_some_and(|uid| uid != 0 && uid != self.daemon_uid)
    }

    /// What the worker of a pipeline submitted by `submitter` may reach.
    pub fn confinement(&self, submitter: Option<u32>) -> Confinement {
        Confinement {
            foreign: self.foreign(submitter),
            allowed: self.allowed_paths.clone(),
            denied: self.denied_paths.clone(),
        }
    }

    /// Decides on a call from its peer credentials; an admitted request carries its
    /// [`Caller`].
    pub fn admit(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let Some(peer) = peer else {
            warn!("refused a call whose peer credentials cannot be read");
            return Err(Status::permission_denied(
                "the daemon cannot tell who is calling: refused",
            ));
        };
        let (uid, gid, pid) = (peer.uid(), peer.gid(), peer.pid());
        let member = || match &self.allowed_group {
            Some((_, group)) => gid == *group || account::groups_of(uid).contains(group),
            None => false,
        };
        if uid == 0 || uid == self.daemon_uid || member() {
            request.extensions_mut().insert(Caller { uid, pid });
            return Ok(request);
        }
        warn!(
            uid,
            gid,
            pid = pid.unwrap_or_default(),
            "refused a caller: not root, the daemon's user, nor a member of allowed_group"
        );
        let group = match &self.allowed_group {
            Some((name, _)) => format!("members of group '{name}'"),
            None => "no group (allowed_group is not set)".to_string(),
        };
        Err(Status::permission_denied(format!(
            "uid {uid} may not use this daemon: it admits root, its own user (uid {}) and {group}",
            self.daemon_uid
        )))
    }
}

/// Why a query that planned may not run under `confinement`, as errors placed where its text
/// names the value at fault (0:0 when it cannot be found): paths under the daemon's own files
/// for everyone; for a foreign pipeline, paths outside `allowed_paths` and options that read
/// host files or load code. The worker asks again before it starts (and each connector when
/// it opens a path).
pub fn refusals(
    confinement: &Confinement,
    host_access: &[HostAccess],
    query: &str,
) -> Vec<SqlError> {
    let mut errors = Vec::new();
    for a in host_access {
        let message = match a.kind {
            HostAccessKind::LocalPath => match check_path(confinement, Path::new(&a.value)) {
                Ok(_) => continue,
                Err(e) => format!("table '{}' option '{}': {e}", a.table, a.option),
            },
            _ if !confinement.foreign => continue,
            kind => format!(
                "table '{}' option '{}': it {} on the daemon's host, which a pipeline of another user than the daemon's may not",
                a.table,
                a.option,
                match kind {
                    HostAccessKind::LoadsCode => "loads code",
                    HostAccessKind::RunsCommand => "runs a command",
                    _ => "reads a file",
                }
            ),
        };
        let (line, column) = position(query, &a.value);
        errors.push(SqlError {
            message,
            line,
            column,
        });
    }
    errors
}

/// The 1-based line and column of the first string literal of `query` holding `value` (or
/// ending with it, for a path made absolute); 0:0 when none does.
fn position(query: &str, value: &str) -> (u32, u32) {
    let name = Path::new(value)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let at = query.find(&format!("'{value}'")).or_else(|| {
        let name = name?;
        query
            .find(&format!("{name}'"))
            .map(|end| query[..end].rfind('\'').unwrap_or(end))
    });
    match at {
        Some(at) => crate::secrets::position(query, at),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_name_the_literal_holding_the_value() {
        let q = "CREATE TABLE t (s TEXT) WITH (\n  path = 'in/x.json');";
        assert_eq!(position(q, "/work/in/x.json"), (2, 10));
        assert_eq!(position(q, "in/x.json"), (2, 10));
        assert_eq!(position(q, "/elsewhere"), (0, 0));
    }

    #[test]
    fn unknown_groups_and_relative_paths_are_refused() {
        let refused = Policy::new(Some("no-such-group-of-arroyod".into()), vec![], vec![]);
        assert!(matches!(refused, Err(PolicyError::UnknownGroup(_))));
        let refused = Policy::new(None, vec!["rel/dir".into()], vec![]);
        assert!(matches!(refused, Err(PolicyError::RelativePath(_))));
        let p = Policy::new(Some("0".into()), vec!["/srv/a/../b".into()], vec![]).unwrap();
        assert_eq!(p.allowed_group, Some(("0".to_string(), 0)));
        assert_eq!(p.allowed_paths, vec![PathBuf::from("/srv/b")]);
    }

    #[test]
    fn root_and_the_daemons_user_are_never_foreign() {
        let p = Policy {
            daemon_uid: 1000,
            ..Policy::default()
        };
        assert!(!p.foreign(None));
        assert!(!p.foreign(Some(0)));
        assert!(!p.foreign(Some(1000)));
        assert!(p.foreign(Some(1001)));
    }
}
