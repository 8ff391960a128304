//! Checkpoint storage: where a pipeline's state lives under its state URL (a local path,
//! `file://`, `s3://`, `gs://`, `az://`), and the rule that makes a checkpoint exist.
//!
//! Layout: `<state>/checkpoints/<epoch, 20 digits>/<file>` for the state files of an epoch, and
//! `<state>/checkpoints/<epoch>/MANIFEST` listing every file with its length and checksum.
//!
//! Writing an epoch, in order:
//!
//! 1. Put every state file of the epoch.
//! 2. Put the MANIFEST, last: a checkpoint without a valid MANIFEST does not exist.
//! 3. Garbage-collect epochs older than the newest [`KEEP`] (only after a MANIFEST landed).
//!
//! Finding the checkpoint to restore needs nothing but the state URL: the newest epoch whose
//! MANIFEST parses and whose files all have the listed length; reading a file checks its
//! checksum, so a corrupt file is never loaded. On a local filesystem every file and its
//! directory are fsynced before the MANIFEST is written, and the MANIFEST itself after.
//!
//! Formats: the MANIFEST of format 1 onwards starts with `arroyod checkpoint <format>` and
//! checks files with CRC-32; one without that line is format 0 (the first arroyod), checked
//! with FNV-1a 64, and is read as before. A MANIFEST of a format above [`FORMAT`] is an error,
//! never skipped: restoring an older checkpoint instead would silently go back in time.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::checksum::Algorithm;
use super::durable;
use super::error::StorageError;
use super::location::Location;

/// Complete epochs kept by garbage collection.
pub const KEEP: usize = 3;
/// The name of the file that makes an epoch a checkpoint.
pub const MANIFEST: &str = "MANIFEST";
/// The checkpoint format this binary writes: 1 since the MANIFEST has a version line and
/// CRC-32 checksums. A MANIFEST without a version line is format 0 (FNV-1a 64 checksums).
pub const FORMAT: u32 = 1;
/// The first line of a MANIFEST of format 1 or later: this, a space, the format.
const FORMAT_LINE: &str = "arroyod checkpoint";

/// The checksum algorithm of a checkpoint format.
fn algorithm(format: u32) -> Algorithm {
    if format == 0 {
        Algorithm::Fnv1a64
    } else {
        Algorithm::Crc32
    }
}

/// One state file of an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub length: u64,
    pub checksum: u64,
}

/// What an epoch's MANIFEST says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The format the checkpoint was written in (0: before formats had a version).
    pub format: u32,
    pub epoch: u64,
    pub files: Vec<FileEntry>,
}

/// A MANIFEST's text, parsed.
enum Parsed {
    Manifest(Manifest),
    /// Written by a newer arroyod in a format this one does not read.
    Newer(u32),
}

impl Manifest {
    /// A `arroyod checkpoint <format>` line (format 1 onwards), an `epoch <n>` line, then one
    /// line per file: `<length> <checksum hex> <name>`.
    fn to_text(&self) -> String {
        let mut s = String::new();
        if self.format > 0 {
            s.push_str(&format!("{FORMAT_LINE} {}\n", self.format));
        }
        s.push_str(&format!("epoch {}\n", self.epoch));
        let algorithm = algorithm(self.format);
        for f in &self.files {
            let checksum = algorithm.hex(f.checksum);
            s.push_str(&format!("{} {checksum} {}\n", f.length, f.name));
        }
        s
    }

    /// None for text that is no MANIFEST (a torn or foreign file).
    fn parse(text: &str) -> Option<Parsed> {
        let mut lines = text.lines().peekable();
        let format = match lines.peek()?.strip_prefix(FORMAT_LINE) {
            Some(version) => {
                let format: u32 = version.trim().parse().ok()?;
                lines.next();
                format
            }
            None => 0,
        };
        if format > FORMAT {
            return Some(Parsed::Newer(format));
        }
        let epoch = lines.next()?.strip_prefix("epoch ")?.parse().ok()?;
        let files = lines
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                Some(FileEntry {
                    length: parts.next()?.parse().ok()?,
                    checksum: u64::from_str_radix(parts.next()?, 16).ok()?,
                    name: parts.next()?.to_string(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Parsed::Manifest(Manifest {
            format,
            epoch,
            files,
        }))
    }
}

/// What [`CheckpointStore::newest_valid`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restorable {
    /// The newest checkpoint whose files all check out.
    pub manifest: Option<Manifest>,
    /// The newer epochs passed over, newest first.
    pub passed: Vec<Passed>,
    /// Files in the restored checkpoint's directory that its MANIFEST does not list (never
    /// read: a checkpoint is what its MANIFEST says).
    pub unlisted: Vec<String>,
}

/// An epoch passed over when looking for the checkpoint to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub epoch: u64,
    /// Why it cannot be restored.
    pub reason: String,
    /// It has a valid MANIFEST (so it completed, and is corrupt since); false: it has none
    /// (an interrupted checkpoint, or a MANIFEST damaged since).
    pub complete: bool,
}

/// The checkpoints of one pipeline.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    shown: String,
    /// Where the state is; on a local filesystem writes are fsynced.
    location: Location,
}

fn epoch_dir(epoch: u64) -> String {
    format!("{epoch:020}")
}

impl CheckpointStore {
    /// The checkpoints under `state` (a path or URL; settings from the environment).
    pub fn open(state: &str) -> Result<CheckpointStore, StorageError> {
        let location = Location::parse(state, vec![])?;
        let store = location.store()?;
        let dir = location.prefix().clone().join("checkpoints");
        Ok(CheckpointStore {
            shown: location.display(&dir),
            location,
            store,
            dir,
        })
    }

    /// Where the checkpoints are, for messages.
    pub fn display(&self) -> &str {
        &self.shown
    }

    /// The epoch a new run starts numbering at: above every epoch directory there is, even
    /// incomplete ones, so a new run never writes into the directory of an old one.
    pub async fn next_epoch(&self) -> Result<u64, StorageError> {
        Ok(self.epochs().await?.first().map_or(1, |e| e + 1))
    }

    /// Every complete checkpoint, newest first.
    pub async fn list(&self) -> Result<Vec<Manifest>, StorageError> {
        let mut out = Vec::new();
        for epoch in self.epochs().await? {
            if let Some(m) = self.complete(epoch).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Makes a local write durable and private: the file 0600, fsynced with its directory.
    async fn sync(&self, path: &Path) -> Result<(), StorageError> {
        match self.location.local_path(path) {
            Some(file) => durable::sync_private(file, 1).await,
            None => Ok(()),
        }
    }

    fn path(&self, epoch: u64, name: &str) -> Path {
        self.dir.clone().join(epoch_dir(epoch)).clone().join(name)
    }

    fn failed(
        &self,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(object_store::Error) -> StorageError {
        let path = format!(
            "{}/{}",
            self.shown,
            path.as_ref()
                .strip_prefix(self.dir.as_ref())
                .unwrap_or(path.as_ref())
                .trim_start_matches('/')
        );
        StorageError::store(what, path)
    }

    /// Writes the files of `epoch`, then its MANIFEST, then collects old epochs.
    pub async fn write_epoch(
        &self,
        epoch: u64,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<Manifest, StorageError> {
        // A local epoch's directory is 0700 before any file is in it.
        if let Some(dir) = self
            .location
            .local_path(&self.dir.clone().join(epoch_dir(epoch)))
        {
            durable::create_private_dir(dir).await?;
        }
        let mut entries = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            entries.push(FileEntry {
                length: bytes.len() as u64,
                checksum: algorithm(FORMAT).of(&bytes),
                name: name.clone(),
            });
            let path = self.path(epoch, &name);
            self.store
                .put(&path, bytes.into())
                .await
                .map_err(self.failed("writing", &path))?;
            self.sync(&path).await?;
        }
        let manifest = Manifest {
            format: FORMAT,
            epoch,
            files: entries,
        };
        crate::failpoint::crash_point!("checkpoint_state_written");
        let path = self.path(epoch, MANIFEST);
        self.store
            .put(&path, manifest.to_text().into_bytes().into())
            .await
            .map_err(self.failed("writing", &path))?;
        self.sync(&path).await?;
        crate::failpoint::crash_point!("checkpoint_manifest_written");
        self.collect_garbage(epoch).await?;
        Ok(manifest)
    }

    /// The epochs that have a directory, newest first.
    pub async fn epochs(&self) -> Result<Vec<u64>, StorageError> {
        let listed = match self.store.list_with_delimiter(Some(&self.dir)).await {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(self.failed("listing", &self.dir)(e)),
        };
        let mut epochs: Vec<u64> = listed
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(epochs)
    }

    /// The MANIFEST of `epoch` if it is a complete checkpoint: the MANIFEST parses and every
    /// file it lists exists with the listed length.
    async fn complete(&self, epoch: u64) -> Result<Option<Manifest>, StorageError> {
        Ok(self.check(epoch).await?.ok())
    }

    /// The MANIFEST of `epoch` if it is a complete checkpoint, or why it is not.
    async fn check(&self, epoch: u64) -> Result<Result<Manifest, Incomplete>, StorageError> {
        let path = self.path(epoch, MANIFEST);
        let text = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(self.failed("reading", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Err(Incomplete::NoManifest));
            }
            Err(e) => return Err(self.failed("reading", &path)(e)),
        };
        let manifest = match std::str::from_utf8(&text).ok().and_then(Manifest::parse) {
            None => return Ok(Err(Incomplete::Unparsable)),
            Some(Parsed::Manifest(m)) => m,
            Some(Parsed::Newer(format)) => {
                return Err(StorageError::NewerFormat {
                    path: format!("{}/{}/{MANIFEST}", self.shown, epoch_dir(epoch)),
                    format,
                    known: FORMAT,
                });
            }
        };
        if manifest.epoch != epoch {
            return Ok(Err(Incomplete::OtherEpoch(manifest.epoch)));
        }
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.dir.clone().join(epoch_dir(epoch))))
            .try_collect()
            .await
            .map_err(self.failed("listing", &self.dir))?;
        let missing = manifest.files.iter().find(|f| {
            let want = self.path(epoch, &f.name);
            !listed
                .iter()
                .any(|o| o.location == want && o.size == f.length)
        });
        Ok(match missing {
            None => Ok(manifest),
            Some(f) => Err(Incomplete::Missing {
                name: f.name.clone(),
                length: f.length,
            }),
        })
    }

    /// The newest checkpoint whose every file checks out (length and checksum), and the newer
    /// epochs passed over on the way, with why: what a restore falls back over. Reads every
    /// file of the epochs it checks.
    pub async fn newest_valid(&self) -> Result<Restorable, StorageError> {
        let mut passed = Vec::new();
        for epoch in self.epochs().await? {
            let manifest = match self.check(epoch).await? {
                Ok(m) => m,
                Err(reason) => {
                    passed.push(Passed {
                        epoch,
                        reason: reason.to_string(),
                        complete: false,
                    });
                    continue;
                }
            };
            match self.verify(&manifest).await {
                Ok(()) => {
                    let unlisted = self.unlisted(&manifest).await?;
                    return Ok(Restorable {
                        manifest: Some(manifest),
                        passed,
                        unlisted,
                    });
                }
                Err(e @ StorageError::Corrupt { .. }) => passed.push(Passed {
                    epoch,
                    reason: e.to_string(),
                    complete: true,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(Restorable {
            manifest: None,
            passed,
            unlisted: Vec::new(),
        })
    }

    /// The files of `manifest`'s epoch that it does not list, as messages name them.
    async fn unlisted(&self, manifest: &Manifest) -> Result<Vec<String>, StorageError> {
        let dir = self.dir.clone().join(epoch_dir(manifest.epoch));
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(self.failed("listing", &dir))?;
        let known = |o: &object_store::ObjectMeta| {
            o.location == self.path(manifest.epoch, MANIFEST)
                || manifest
                    .files
                    .iter()
                    .any(|f| o.location == self.path(manifest.epoch, &f.name))
        };
        Ok(listed
            .iter()
            .filter(|o| !known(o))
            .map(|o| {
                format!(
                    "{}/{}",
                    self.shown,
                    o.location
                        .as_ref()
                        .strip_prefix(self.dir.as_ref())
                        .unwrap_or(o.location.as_ref())
                        .trim_start_matches('/')
                )
            })
            .collect())
    }

    /// Reads every file of `manifest`, checking its length and checksum.
    pub async fn verify(&self, manifest: &Manifest) -> Result<(), StorageError> {
        for f in &manifest.files {
            self.read(manifest, &f.name).await?;
        }
        Ok(())
    }

    /// The newest complete checkpoint, if any.
    pub async fn latest(&self) -> Result<Option<Manifest>, StorageError> {
        for epoch in self.epochs().await? {
            if let Some(m) = self.complete(epoch).await? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Reads a file of a checkpoint, checking its length and checksum.
    pub async fn read(&self, manifest: &Manifest, name: &str) -> Result<Vec<u8>, StorageError> {
        let entry = manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| StorageError::NoSuchFile {
                epoch: manifest.epoch,
                name: name.to_string(),
            })?;
        let path = self.path(manifest.epoch, name);
        let got = self
            .store
            .get(&path)
            .await
            .map_err(self.failed("reading", &path))?;
        let bytes = got.bytes().await.map_err(self.failed("reading", &path))?;
        let corrupt = |reason: String| StorageError::Corrupt {
            path: format!("{}/{}/{name}", self.shown, epoch_dir(manifest.epoch)),
            reason,
        };
        if bytes.len() as u64 != entry.length {
            return Err(corrupt(format!(
                "{} bytes, MANIFEST says {}",
                bytes.len(),
                entry.length
            )));
        }
        if algorithm(manifest.format).of(&bytes) != entry.checksum {
            return Err(corrupt("checksum differs from the MANIFEST".into()));
        }
        Ok(bytes.to_vec())
    }

    /// Deletes every epoch older than the [`KEEP`] newest complete ones, up to `newest`.
    async fn collect_garbage(&self, newest: u64) -> Result<(), StorageError> {
        let mut kept = 0;
        for epoch in self.epochs().await? {
            if epoch > newest {
                continue;
            }
            if kept < KEEP {
                if self.complete(epoch).await?.is_some() {
                    kept += 1;
                }
                continue;
            }
            let objects: Vec<object_store::ObjectMeta> = self
                .store
                .list(Some(&self.dir.clone().join(epoch_dir(epoch))))
                .try_collect()
                .await
                .map_err(self.failed("listing", &self.dir))?;
            // The MANIFEST goes first: a half-deleted epoch is then no checkpoint at all.
            let manifest = self.path(epoch, MANIFEST);
            let _ = self.store.delete(&manifest).await;
            for o in objects.iter().filter(|o| o.location != manifest) {
                self.store
                    .delete(&o.location)
                    .await
                    .map_err(self.failed("deleting", &o.location))?;
            }
        }
        Ok(())
    }
}

/// Why an epoch's directory is not a complete checkpoint (a crash before its MANIFEST was
/// written, or damage): a restore passes over it to an older one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Incomplete {
    #[error("it has no MANIFEST")]
    NoManifest,
    #[error("its MANIFEST does not parse")]
    Unparsable,
    #[error("its MANIFEST is of epoch {0}")]
    OtherEpoch(u64),
    #[error("its file {name} is missing or not {length} bytes long")]
    Missing { name: String, length: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(epoch: u64) -> Vec<(String, Vec<u8>)> {
        vec![
            ("source-0".into(), format!("offset {epoch}").into_bytes()),
            ("window-0".into(), vec![epoch as u8; 100]),
        ]
    }

    #[tokio::test]
    async fn the_newest_complete_epoch_is_restored_and_old_ones_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(store.latest().await.unwrap(), None);
        for epoch in 1..=5 {
            store.write_epoch(epoch, files(epoch)).await.unwrap();
        }
        let latest = store.latest().await.unwrap().unwrap();
        assert_eq!(latest.epoch, 5);
        assert_eq!(store.read(&latest, "source-0").await.unwrap(), b"offset 5");
        // Only the newest KEEP epochs keep any object (a local store may leave empty
        // directories behind).
        for epoch in 1..=5 {
            let objects: Vec<object_store::ObjectMeta> = store
                .store
                .list(Some(&store.dir.clone().join(epoch_dir(epoch))))
                .try_collect()
                .await
                .unwrap();
            assert_eq!(objects.is_empty(), epoch <= 2, "epoch {epoch}: {objects:?}");
        }
    }

    #[tokio::test]
    async fn an_epoch_without_a_valid_manifest_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        store.write_epoch(1, files(1)).await.unwrap();
        // Epoch 2: files written, the MANIFEST never was (a crash in between).
        let epoch2 = dir.path().join("checkpoints").join(epoch_dir(2));
        std::fs::create_dir_all(&epoch2).unwrap();
        std::fs::write(epoch2.join("source-0"), b"offset 2").unwrap();
        assert_eq!(store.latest().await.unwrap().unwrap().epoch, 1);
        // Epoch 3: a MANIFEST that lies about a file's length.
        store.write_epoch(3, files(3)).await.unwrap();
        let epoch3 = dir.path().join("checkpoints").join(epoch_dir(3));
        std::fs::write(epoch3.join("window-0"), b"short").unwrap();
        assert_eq!(store.latest().await.unwrap().unwrap().epoch, 1);
        // Garbage is not a MANIFEST either.
        std::fs::write(epoch3.join(MANIFEST), b"\xff\xfe").unwrap();
        assert_eq!(store.latest().await.unwrap().unwrap().epoch, 1);
    }

    #[tokio::test]
    async fn a_manifest_of_format_0_is_read_with_its_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let epoch = dir.path().join("checkpoints").join(epoch_dir(4));
        std::fs::create_dir_all(&epoch).unwrap();
        std::fs::write(epoch.join("source-0"), b"offset 4").unwrap();
        let fnv = crate::storage::checksum::fnv1a64(b"offset 4");
        std::fs::write(
            epoch.join(MANIFEST),
            format!("epoch 4\n8 {fnv:016x} source-0\n"),
        )
        .unwrap();
        let latest = store.latest().await.unwrap().unwrap();
        assert_eq!((latest.format, latest.epoch), (0, 4));
        assert_eq!(store.read(&latest, "source-0").await.unwrap(), b"offset 4");
        // A new epoch is written in the current format.
        let m = store.write_epoch(5, files(5)).await.unwrap();
        assert_eq!(m.format, FORMAT);
        let text = std::fs::read_to_string(
            dir.path()
                .join("checkpoints")
                .join(epoch_dir(5))
                .join(MANIFEST),
        )
        .unwrap();
        assert!(
            text.starts_with("arroyod checkpoint 1\nepoch 5\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_manifest_of_a_newer_format_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        store.write_epoch(1, files(1)).await.unwrap();
        let epoch = dir.path().join("checkpoints").join(epoch_dir(2));
        std::fs::create_dir_all(&epoch).unwrap();
        std::fs::write(epoch.join(MANIFEST), "arroyod checkpoint 9\nepoch 2\n").unwrap();
        let err = store.latest().await.unwrap_err();
        assert!(
            err.to_string()
                .contains("format 9; this arroyod reads formats up to 1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_file_is_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let m = store.write_epoch(7, files(7)).await.unwrap();
        let file = dir
            .path()
            .join("checkpoints")
            .join(epoch_dir(7))
            .join("window-0");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let err = store.read(&m, "window-0").await.unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
