//! Hashing, copying and linking of model files, with optional progress bars.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::StoreError;

const BUFFER_SIZE: usize = 1 << 20;

/// Method by which the importer places a source file into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    Copy,
    /// Hard link, or a symlink to the absolute source path when a hard link fails
    /// (for example across filesystems).
    Link,
    /// Rename, falling back to a copy across filesystems. Used for hub downloads,
    /// which are staged inside the store's root.
    Move,
}

/// Returns a byte progress bar on stderr, or a hidden one when `enabled` is false.
pub(crate) fn progress_bar(total: u64, message: String, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("the progress template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Places `source` at `destination` and returns the SHA-256 (lowercase hex) and
/// size of what was stored.
pub(crate) fn place_file(
    source: &Path,
    destination: &Path,
    transfer: Transfer,
    progress: &ProgressBar,
) -> Result<(String, u64), StoreError> {
    match transfer {
        Transfer::Copy => copy_and_hash(source, destination, progress),
        Transfer::Link => {
            if let Err(error) = std::fs::hard_link(source, destination) {
                tracing::debug!(
                    source = %source.display(),
                    %error,
                    "hard link failed, creating a symlink instead"
                );
                let absolute = source.canonicalize().at(source)?;
                symlink(&absolute, destination).at(destination)?;
            }
            hash_file(destination, progress)
        }
        Transfer::Move => match std::fs::rename(source, destination) {
            Ok(()) => hash_file(destination, progress),
            Err(error) => {
                tracing::debug!(source = %source.display(), %error, "rename failed, copying instead");
                copy_and_hash(source, destination, progress)
            }
        },
    }
}

#[cfg(unix)]
fn symlink(original: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(original, link)
}

#[cfg(windows)]
fn symlink(original: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(original, link)
}

/// Returns the SHA-256 (lowercase hex) and size of the file at `path`.
pub(crate) fn hash_file(path: &Path, progress: &ProgressBar) -> Result<(String, u64), StoreError> {
    let mut file = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let size = hash_reader(&mut file, &mut hasher, progress).at(path)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Feeds everything `reader` yields into `hasher`, advancing `progress`, and
/// returns the number of bytes read.
pub(crate) fn hash_reader(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    progress: &ProgressBar,
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        total += read as u64;
        progress.inc(read as u64);
    }
}

/// Copies `source` to a new file at `destination` while hashing it, then
/// flushes the copy to disk.
fn copy_and_hash(
    source: &Path,
    destination: &Path,
    progress: &ProgressBar,
) -> Result<(String, u64), StoreError> {
    let mut input = File::open(source).at(source)?;
    let mut output = File::create_new(destination).at(destination)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(StoreError::io(source, error)),
        };
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read]).at(destination)?;
        total += read as u64;
        progress.inc(read as u64);
    }
    output.sync_all().at(destination)?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Writes `contents` to `path` through a temporary file in the same folder and
/// a rename, so that `path` contains either the old or the new contents.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let folder = path.parent().unwrap_or_else(|| Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(folder)
        .at(folder)?;
    temp.write_all(contents).at(temp.path())?;
    temp.as_file().sync_all().at(temp.path())?;
    temp.persist(path)
        .map_err(|error| StoreError::io(path, error.error))?;
    Ok(())
}

/// Flushes a folder's entries to disk so that a rename inside it survives a
/// crash. Only Unix can open a folder for this, so elsewhere it does nothing.
pub(crate) fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Err(error) = File::open(path).and_then(|folder| folder.sync_all()) {
        tracing::debug!(path = %path.display(), %error, "could not sync folder");
    }
    #[cfg(not(unix))]
    let _ = path;
}
