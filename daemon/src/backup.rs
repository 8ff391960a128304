//! Snapshots of the metadata database on remote storage (`backup_url`), and their restore.
//!
//! It owns the objects under `<backup_url>/snapshots/`; it never blocks the runtime (file work
//! goes through `tokio::fs` or `spawn_blocking`) and its failures are never fatal to the
//! daemon: callers log them and go on.
//!
//! A snapshot, in order:
//!
//! 1. `VACUUM INTO` a temp file beside the database: a consistent copy of the live WAL
//!    database, taken while the daemon goes on reading and writing it.
//! 2. Open the copy and check that `PRAGMA integrity_check` answers `ok`.
//! 3. Upload it, in one atomic put, as `snapshots/<yyyymmddThhmmssZ>-<seq>.db` (UTC).
//! 4. Only after that put succeeded, overwrite `snapshots/LATEST` with the snapshot's name,
//!    length and FNV-1a 64 checksum: a half-done upload is never pointed to.
//! 5. Delete every snapshot but the newest [`KEEP`] (never the one LATEST names).
//!
//! A restore, in order:
//!
//! 1. Read `snapshots/LATEST` and download the snapshot it names.
//! 2. Check its length and checksum against LATEST; refuse it on a mismatch.
//! 3. Write it to a temp file beside the destination, fsync it, remove the destination's
//!    stale `-wal`/`-shm` files, rename it over the destination, fsync the directory.
//!
//! `arroyod run -s URL` restores with [`restore_if_any`]: when the snapshot LATEST names is
//! damaged it falls back to the newest older one that passes `PRAGMA integrity_check`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::engine::{
    Location, LocationError as ConnectorError, durable, error_chain, failpoint, fnv1a64,
};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tracing::warn;

use crate::store::{Store, StoreError, now_rfc3339};

/// How many snapshots are kept.
pub const KEEP: usize = 5;
/// The directory of the snapshots under `backup_url`.
const SNAPSHOTS: &str = "snapshots";
/// The pointer to the newest complete snapshot.
const LATEST: &str = "LATEST";
/// The local copy, in the directory given to [`Backup::snapshot`].
const TMP_COPY: &str = "arroyod.db.snapshot";

/// Errors of taking, uploading and restoring snapshots.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `backup_url` is not a local path nor a supported URL.
    #[error("backup_url '{url}'")]
    Url {
        url: String,
        #[source]
        source: ConnectorError,
    },
    /// The object store of `backup_url` cannot be set up (credentials, region).
    #[error("{0}")]
    Setup(String),
    /// `VACUUM INTO` failed.
    #[error("copying the metadata database to {}", path.display())]
    Copy {
        path: std::path::PathBuf,
        #[source]
        source: StoreError,
    },
    /// The copy could not be opened or checked.
    #[error("checking the copy {}", path.display())]
    Check {
        path: std::path::PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// `PRAGMA integrity_check` found problems in the copy.
    #[error("the copy {} fails its integrity check: {report}", path.display())]
    Integrity {
        path: std::path::PathBuf,
        report: String,
    },
    /// A local file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An object store operation failed.
    #[error("{what} {object}")]
    Remote {
        what: &'static str,
        object: String,
        #[source]
        source: object_store::Error,
    },
    /// LATEST does not parse.
    #[error("the pointer {object} is malformed: {reason}")]
    BadPointer { object: String, reason: Malformed },
    /// The snapshot's length is not the one LATEST gives.
    #[error("snapshot {object} has {actual} bytes, but LATEST says {expected}")]
    Length {
        object: String,
        expected: u64,
        actual: u64,
    },
    /// The snapshot's checksum is not the one LATEST gives.
    #[error("snapshot {object} has checksum {actual:016x}, but LATEST says {expected:016x}")]
    Checksum {
        object: String,
        expected: u64,
        actual: u64,
    },
    /// A blocking task panicked.
    #[error("a blocking file task failed")]
    Join(#[from] tokio::task::JoinError),
}

fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

/// What LATEST says: which snapshot is the newest complete one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The snapshot's object name in `snapshots/`.
    pub name: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its FNV-1a 64 checksum.
    pub checksum: u64,
}

impl Pointer {
    fn to_text(&self) -> String {
        format!(
            "snapshot {}\nlength {}\nfnv1a64 {:016x}\n",
            self.name, self.length, self.checksum
        )
    }

    fn parse(text: &str) -> Result<Pointer, Malformed> {
        let mut name = None;
        let mut length = None;
        let mut checksum = None;
        let number = |key: &'static str| {
            move |e: std::num::ParseIntError| Malformed::Number {
                key,
                reason: e.to_string(),
            }
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| Malformed::NoValue(line.to_string()))?;
            match key {
                "snapshot" => name = Some(value.to_string()),
                "length" => length = Some(value.parse().map_err(number("length"))?),
                "fnv1a64" => {
                    checksum = Some(u64::from_str_radix(value, 16).map_err(number("fnv1a64"))?)
                }
                other => return Err(Malformed::UnknownKey(other.to_string())),
            }
        }
        let name: String = name.ok_or(Malformed::Missing("snapshot name"))?;
        if !is_snapshot_name(&name) {
            return Err(Malformed::NotASnapshot(name));
        }
        Ok(Pointer {
            name,
            length: length.ok_or(Malformed::Missing("length"))?,
            checksum: checksum.ok_or(Malformed::Missing("fnv1a64 checksum"))?,
        })
    }
}

/// Why a LATEST pointer does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("line '{0}' has no value")]
    NoValue(String),
    #[error("{key}: {reason}")]
    Number { key: &'static str, reason: String },
    #[error("unknown key '{0}'")]
    UnknownKey(String),
    #[error("'{0}' is not a snapshot name")]
    NotASnapshot(String),
    #[error("no {0}")]
    Missing(&'static str),
}

/// True for `<stamp>-<seq>.db`, a plain name in `snapshots/`.
fn is_snapshot_name(name: &str) -> bool {
    name.ends_with(".db")
        && name.len() > 3
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The current UTC time as `yyyymmddThhmmssZ`.
fn utc_stamp() -> String {
    // now_rfc3339 gives `yyyy-mm-ddThh:mm:ss.mmmZ`.
    let t = now_rfc3339();
    format!(
        "{}{}{}T{}{}{}Z",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16],
        &t[17..19]
    )
}

/// The snapshots of one `backup_url`.
pub struct Backup {
    location: Location,
    store: Arc<dyn ObjectStore>,
    /// `<backup_url>/snapshots`.
    dir: ObjectPath,
    /// The next sequence number of a snapshot name.
    seq: u64,
}

impl Backup {
    /// Sets up the store of `url` (no I/O yet).
    pub fn new(url: &str) -> Result<Backup, BackupError> {
        let location = Location::parse(url, vec![]).map_err(|source| BackupError::Url {
            url: url.to_string(),
            source,
        })?;
        let store = location
            .store()
            .map_err(|e| BackupError::Setup(error_chain(&e)))?;
        let dir = location.prefix().clone().join(SNAPSHOTS);
        Ok(Backup {
            location,
            store,
            dir,
            seq: 0,
        })
    }

    /// The object `name` in `snapshots/`.
    fn object(&self, name: &str) -> ObjectPath {
        self.dir.clone().join(name)
    }

    fn remote(
        &self,
        what: &'static str,
        object: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> BackupError {
        let object = self.location.display(object);
        move |source| BackupError::Remote {
            what,
            object,
            source,
        }
    }

    /// The names of the snapshots now stored.
    async fn list(&self) -> Result<BTreeSet<String>, BackupError> {
        let listed = match self.store.list_with_delimiter(Some(&self.dir)).await {
            Ok(listed) => listed.objects,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(self.remote("listing", &self.dir)(e)),
        };
        Ok(listed
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .filter(|n| is_snapshot_name(n))
            .collect())
    }

    /// Takes one snapshot of `db` (its local copy goes in `tmp_dir`, on the database's file
    /// system), uploads it and points LATEST to it; returns what LATEST now says.
    pub async fn snapshot(
        &mut self,
        db: &Store,
        tmp_dir: &std::path::Path,
    ) -> Result<Pointer, BackupError> {
        let tmp = tmp_dir.join(TMP_COPY);
        remove_if_exists(&tmp).await?;
        let result = self.snapshot_via(db, &tmp).await;
        if let Err(e) = remove_if_exists(&tmp).await {
            warn!(error = %error_chain(&e), "removing the local snapshot copy failed");
        }
        result
    }

    async fn snapshot_via(
        &mut self,
        db: &Store,
        tmp: &std::path::Path,
    ) -> Result<Pointer, BackupError> {
        // 1-2: a consistent, checked copy.
        db.vacuum_into(tmp)
            .await
            .map_err(|source| BackupError::Copy {
                path: tmp.to_path_buf(),
                source,
            })?;
        check_integrity(tmp).await?;
        let bytes = tokio::fs::read(tmp).await.map_err(io("reading", tmp))?;

        // 3: the snapshot, under a name no snapshot has (another daemon may have written in
        // this second).
        let mut names = self.list().await?;
        let stamp = utc_stamp();
        let name = loop {
            let name = format!("{stamp}-{:06}.db", self.seq);
            self.seq += 1;
            if !names.contains(&name) {
                break name;
            }
        };
        let pointer = Pointer {
            length: bytes.len() as u64,
            checksum: fnv1a64(&bytes),
            name,
        };
        let object = self.object(&pointer.name);
        self.store
            .put(&object, bytes.into())
            .await
            .map_err(self.remote("uploading", &object))?;
        failpoint::point("snapshot_uploaded");

        // 4: the pointer, once the snapshot is complete.
        let latest = self.object(LATEST);
        self.store
            .put(&latest, pointer.to_text().into_bytes().into())
            .await
            .map_err(self.remote("writing", &latest))?;

        // 5: the old ones. A failure here leaves extra snapshots, nothing worse.
        names.insert(pointer.name.clone());
        let excess = names.len().saturating_sub(KEEP);
        for old in names.iter().take(excess).filter(|n| **n != pointer.name) {
            let object = self.object(old);
            match self.store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => warn!(
                    object = %self.location.display(&object),
                    error = %error_chain(&e),
                    "deleting an old snapshot failed"
                ),
            }
        }
        Ok(pointer)
    }

    /// Reads LATEST.
    async fn latest(&self) -> Result<Pointer, BackupError> {
        let object = self.object(LATEST);
        let bytes = self.get(&object).await?;
        let text = String::from_utf8_lossy(&bytes);
        Pointer::parse(&text).map_err(|reason| BackupError::BadPointer {
            object: self.location.display(&object),
            reason,
        })
    }

    async fn get(&self, object: &ObjectPath) -> Result<Vec<u8>, BackupError> {
        let got = self
            .store
            .get(object)
            .await
            .map_err(self.remote("reading", object))?;
        let bytes = got.bytes().await.map_err(self.remote("reading", object))?;
        Ok(bytes.to_vec())
    }
}

/// Restores the newest good snapshot of `backup_url` to `dest`: the one LATEST names when it
/// checks out, else the newest older one that passes `PRAGMA integrity_check` (the metadata
/// only names pipelines; their state is found from their state URL). Returns the snapshot's
/// name, or None when `backup_url` holds no snapshot yet.
pub async fn restore_if_any(
    backup_url: &str,
    dest: &std::path::Path,
) -> Result<Option<String>, BackupError> {
    let backup = Backup::new(backup_url)?;
    let latest = backup.object(LATEST);
    match backup.store.head(&latest).await {
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(backup.remote("reading", &latest)(e)),
        Ok(_) => {}
    }
    let refused = match restore_latest(backup_url, dest).await {
        Ok(pointer) => return Ok(Some(pointer.name)),
        Err(
            e @ (BackupError::Length { .. }
            | BackupError::Checksum { .. }
            | BackupError::BadPointer { .. }),
        ) => e,
        Err(e) => return Err(e),
    };
    warn!(error = %error_chain(&refused), "the newest snapshot is damaged; trying older ones");
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let candidate = dir.join(".arroyod.db.candidate");
    for name in backup.list().await?.into_iter().rev() {
        let bytes = backup.get(&backup.object(&name)).await?;
        let _ = tokio::fs::remove_file(&candidate).await;
        tokio::fs::write(&candidate, &bytes)
            .await
            .map_err(io("writing", &candidate))?;
        let checked = check_integrity(&candidate).await;
        remove_if_exists(&candidate).await?;
        if let Err(e) = checked {
            warn!(snapshot = %name, error = %error_chain(&e), "skipping a damaged snapshot");
            continue;
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || write_database(&dest, &bytes)).await??;
        return Ok(Some(name));
    }
    Err(refused)
}

/// Downloads the snapshot LATEST names in `backup_url`, checks it, and writes it durably to
/// `dest` (the daemon must not run on it). Returns what LATEST said.
pub async fn restore_latest(
    backup_url: &str,
    dest: &std::path::Path,
) -> Result<Pointer, BackupError> {
    let backup = Backup::new(backup_url)?;
    let pointer = backup.latest().await?;
    let object = backup.object(&pointer.name);
    let bytes = backup.get(&object).await?;
    let shown = || backup.location.display(&object);
    if bytes.len() as u64 != pointer.length {
        return Err(BackupError::Length {
            object: shown(),
            expected: pointer.length,
            actual: bytes.len() as u64,
        });
    }
    let checksum = fnv1a64(&bytes);
    if checksum != pointer.checksum {
        return Err(BackupError::Checksum {
            object: shown(),
            expected: pointer.checksum,
            actual: checksum,
        });
    }
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_database(&dest, &bytes)).await??;
    Ok(pointer)
}

/// Writes `bytes` as the database `dest`: temp file, fsync, remove the stale `-wal` and
/// `-shm` of the database it replaces, rename, fsync the directory.
fn write_database(dest: &std::path::Path, bytes: &[u8]) -> Result<(), BackupError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "arroyod.db".into());
    let staged = durable::stage(dest, bytes).map_err(io("writing a copy beside", dest))?;
    for suffix in ["-wal", "-shm"] {
        let stale = dir.join(format!("{file_name}{suffix}"));
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &stale)(e));
            }
            _ => {}
        }
    }
    staged.commit().map_err(io("renaming into", dest))
}

async fn remove_if_exists(path: &std::path::Path) -> Result<(), BackupError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Opens the copy at `path` and runs `PRAGMA integrity_check` on it.
async fn check_integrity(path: &std::path::Path) -> Result<(), BackupError> {
    let failed = |source| BackupError::Check {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .connect()
        .await
        .map_err(failed)?;
    let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(failed)?;
    conn.close().await.map_err(failed)?;
    if report != ["ok"] {
        return Err(BackupError::Integrity {
            path: path.to_path_buf(),
            report: report.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_row as row;

    fn snapshot_names(backup_dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(backup_dir.join(SNAPSHOTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| is_snapshot_name(n))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn fnv1a64_known_values_and_pointer_text() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let p = Pointer {
            name: "20240102T030405Z-000001.db".into(),
            length: 4096,
            checksum: 0xdead_beef,
        };
        assert_eq!(Pointer::parse(&p.to_text()), Ok(p));
        assert!(Pointer::parse("snapshot ../x.db\nlength 1\nfnv1a64 0\n").is_err());
        assert!(Pointer::parse("snapshot a.db\nlength 1\n").is_err());
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 16, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
            "{stamp}"
        );
    }

    #[tokio::test]
    async fn snapshots_rotate_and_restore_round_trips() {
        let data = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let url = format!("file://{}", remote.path().display());
        let db = Store::open(data.path()).await.unwrap();
        let mut backup = Backup::new(&url).unwrap();

        db.insert(&row("p1")).await.unwrap();
        let first = backup.snapshot(&db, data.path()).await.unwrap();
        db.insert(&row("p2")).await.unwrap();
        let second = backup.snapshot(&db, data.path()).await.unwrap();
        assert!(second.name > first.name, "{second:?} after {first:?}");
        let latest = std::fs::read_to_string(remote.path().join("snapshots/LATEST")).unwrap();
        assert_eq!(Pointer::parse(&latest), Ok(second.clone()));
        assert!(
            !data.path().join(TMP_COPY).exists(),
            "the local copy is removed"
        );

        // 7 snapshots in all: the newest 5 stay, LATEST's among them.
        let mut last = second;
        for _ in 0..5 {
            last = backup.snapshot(&db, data.path()).await.unwrap();
        }
        let names = snapshot_names(remote.path());
        assert_eq!(names.len(), KEEP, "{names:?}");
        assert_eq!(names.last(), Some(&last.name));
        assert!(!names.contains(&first.name));

        // Restore over a fresh dir (a plain local path works too), and open it.
        let restored = tempfile::tempdir().unwrap();
        let dest = restored.path().join("data/arroyod.db");
        let got = restore_latest(&remote.path().display().to_string(), &dest)
            .await
            .unwrap();
        assert_eq!(got, last);
        let reopened = Store::open(&restored.path().join("data")).await.unwrap();
        let ids: Vec<String> = reopened
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["p1", "p2"]);
        reopened.close().await;

        // A damaged snapshot is refused, and the destination is left alone.
        let object = remote.path().join("snapshots").join(&last.name);
        let mut bytes = std::fs::read(&object).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&object, &bytes).unwrap();
        let before = std::fs::read(&dest).unwrap();
        let err = restore_latest(&url, &dest).await.unwrap_err();
        assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), before);
        bytes.pop();
        std::fs::write(&object, &bytes).unwrap();
        let err = restore_latest(&url, &dest).await.unwrap_err();
        assert!(matches!(err, BackupError::Length { .. }), "{err}");
        db.close().await;
    }

    #[tokio::test]
    async fn a_damaged_newest_snapshot_falls_back_to_the_newest_good_one() {
        let data = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let url = remote.path().display().to_string();
        let db = Store::open(data.path()).await.unwrap();
        let mut backup = Backup::new(&url).unwrap();
        db.insert(&row("old")).await.unwrap();
        let first = backup.snapshot(&db, data.path()).await.unwrap();
        db.insert(&row("new")).await.unwrap();
        let second = backup.snapshot(&db, data.path()).await.unwrap();
        db.close().await;
        // Bit rot in the newest snapshot.
        let newest = remote.path().join(SNAPSHOTS).join(&second.name);
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&newest, bytes).unwrap();
        let restored = tempfile::tempdir().unwrap();
        let got = restore_if_any(&url, &restored.path().join("arroyod.db"))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(first.name.as_str()));
        let back = Store::open(restored.path()).await.unwrap();
        let ids: Vec<String> = back
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec!["old".to_string()]);
        back.close().await;
        // A backup URL without snapshots restores nothing.
        let empty = tempfile::tempdir().unwrap();
        let none = restore_if_any(
            &empty.path().display().to_string(),
            &restored.path().join("other.db"),
        )
        .await
        .unwrap();
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn restore_without_snapshots_fails() {
        let remote = tempfile::tempdir().unwrap();
        let dest = remote.path().join("x.db");
        let err = restore_latest(&remote.path().display().to_string(), &dest)
            .await
            .unwrap_err();
        assert!(matches!(err, BackupError::Remote { .. }), "{err}");
        assert!(
            error_chain(&err).contains("LATEST"),
            "{}",
            error_chain(&err)
        );
        assert!(!dest.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_taken_while_another_connection_writes_are_sound() {
        let data = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let db = Store::open(data.path()).await.unwrap();
        // Another connection to the same file, as another process would have.
        let writer = Store::open(data.path()).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let writing = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut n = 0u32;
                while !stop.is_cancelled() {
                    let mut r = row(&format!("w{n:05}"));
                    r.query = "x".repeat(2000);
                    writer.insert(&r).await.unwrap();
                    n += 1;
                    tokio::task::yield_now().await;
                }
                writer.close().await;
                n
            }
        });
        let mut backup = Backup::new(&remote.path().display().to_string()).unwrap();
        for _ in 0..3 {
            // snapshot() fails unless the integrity check of each copy passes.
            backup.snapshot(&db, data.path()).await.unwrap();
        }
        stop.cancel();
        let written = writing.await.unwrap();
        assert!(written > 0);
        let dest = data.path().join("restored/arroyod.db");
        restore_latest(&remote.path().display().to_string(), &dest)
            .await
            .unwrap();
        check_integrity(&dest).await.unwrap();
        db.close().await;
    }
}
