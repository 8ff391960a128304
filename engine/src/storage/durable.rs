//! Writes that survive a crash: a file and its name are on disk before anything refers to
//! them. Every durable local write of arroyod goes through here.
//!
//! A whole file that replaces another, in order ([`stage`], then [`Staged::commit`]):
//!
//! 1. Write it under a temp name beside its destination (`.<name>.tmp`).
//! 2. fsync the temp file.
//! 3. Rename it over the destination: readers see the old file or the new one, never a part.
//! 4. fsync the directory, so the rename survives.
//!
//! A file written in place (appended to, cut back, created empty) is fsynced with
//! [`sync_path`], and so is the directory that holds a new name ([`create`]).
//!
//! These functions block: callers on the runtime go through `spawn_blocking` (see [`sync`]).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::StorageError;

/// A file written and fsynced under a temp name, not yet at its destination.
#[derive(Debug)]
#[must_use = "a staged file appears only once committed"]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

/// The directory of `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Steps 1 and 2: writes `bytes` beside `dest` under a temp name and fsyncs it.
pub fn stage(dest: &Path, bytes: &[u8]) -> std::io::Result<Staged> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent(dest).join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(Staged {
        tmp,
        dest: dest.to_path_buf(),
    })
}

impl Staged {
    /// Steps 3 and 4: renames the file over its destination and fsyncs the directory.
    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        sync_dir(parent(&self.dest))
    }
}

/// Replaces `dest` with `bytes` durably (all four steps).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    stage(dest, bytes)?.commit()
}

/// fsyncs the directory `dir`.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the file `path` and the `dirs` directories above it, its own first, so that the
/// file, its name and the names of the directories it is in survive a crash.
pub fn sync_path(path: &Path, dirs: usize) -> std::io::Result<()> {
    File::open(path)?.sync_all()?;
    let mut dir = path.parent();
    for _ in 0..dirs {
        let Some(d) = dir else { break };
        sync_dir(parent_or_self(d))?;
        dir = d.parent();
    }
    Ok(())
}

fn parent_or_self(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// Creates `path` empty (truncating what is there) and fsyncs its directory, so that the new
/// name survives a crash as much as what is later written to it.
pub fn create(path: &Path) -> std::io::Result<File> {
    let file = File::create(path)?;
    sync_dir(parent(path))?;
    Ok(file)
}

/// Cuts an open file to `length` bytes, leaves it positioned at its end and fsyncs it.
pub fn truncate(file: &mut File, length: u64) -> std::io::Result<()> {
    file.set_len(length)?;
    file.seek(SeekFrom::Start(length))?;
    file.sync_all()
}

/// Replaces the content of an open file with `bytes` and fsyncs it (a file that must stay
/// open, such as a held lock file).
pub fn overwrite(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    truncate(file, 0)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes what `writer` buffers to its file and fsyncs the data: appends to a file whose name
/// is durable already.
pub fn flush(writer: &mut std::io::BufWriter<File>) -> std::io::Result<()> {
    writer.flush()?;
    writer.get_ref().sync_data()
}

/// [`sync_path`] on a blocking thread, for callers on the runtime.
pub async fn sync(path: PathBuf, dirs: usize) -> Result<(), StorageError> {
    let shown = path.clone();
    tokio::task::spawn_blocking(move || sync_path(&path, dirs))
        .await?
        .map_err(StorageError::io("syncing", shown.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_appears_whole_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("db");
        std::fs::write(&dest, b"old").unwrap();
        let staged = stage(&dest, b"new content").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new content");
        write_atomic(&dest, b"again").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"again");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn files_are_cut_and_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = create(&path).unwrap();
        file.write_all(b"0123456789").unwrap();
        truncate(&mut file, 4).unwrap();
        file.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123x");
        overwrite(&mut file, b"42\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"42\n");
        sync_path(&path, 2).unwrap();
    }
}
