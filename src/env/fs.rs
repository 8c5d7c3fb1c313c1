//! Files through the seam: `std::fs` with real fsync in production, a crash-modelling simulated
//! disk in simulation.
//!
//! Durability contract (both backends; the simulated disk enforces it, see
//! `sim_control::DiskFaults`):
//! - data written to a file is durable only after [`File::sync`] returns `Ok`;
//! - a file's name (creation, [`rename`], [`remove_file`]) is durable only after
//!   [`sync_dir`] of its parent directory returns `Ok`;
//! - a directory's entry is durable likewise only after its parent is synced; [`create_dir_all`]
//!   does that for every directory it creates, and [`write_atomic`] syncs the directory after its
//!   rename, so both return with their result durable.
//!
//! All errors are `std::io::Error`.

use std::io;
use std::path::{Path, PathBuf};

use super::backend;

/// An open file, readable and writable at any offset. Not shared between tasks.
#[derive(Debug)]
pub struct File {
    inner: backend::fs::File,
    path: PathBuf,
}

impl File {
    /// Creates `path` (truncating it if it exists) and opens it for reading and writing. The
    /// parent directory must exist.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        let path = path.as_ref();
        let inner = backend::fs::File::create(path)
            .await
            .map_err(|error| with_path(error, "create", path))?;
        Ok(File {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Opens the existing file `path` for reading and writing.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        let path = path.as_ref();
        let inner = backend::fs::File::open(path)
            .await
            .map_err(|error| with_path(error, "open", path))?;
        Ok(File {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The path this file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `bytes` at `offset` (extending the file, zero-filled, if needed).
    pub async fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.inner
            .write_at(offset, bytes)
            .await
            .map_err(|error| with_path(error, "write", &self.path))
    }

    /// Writes all of `bytes` at the end of the file; returns the offset they were written at.
    pub async fn append(&self, bytes: &[u8]) -> io::Result<u64> {
        self.inner
            .append(bytes)
            .await
            .map_err(|error| with_path(error, "append to", &self.path))
    }

    /// Reads the whole file.
    pub async fn read_all(&self) -> io::Result<Vec<u8>> {
        self.inner
            .read_all()
            .await
            .map_err(|error| with_path(error, "read", &self.path))
    }

    /// Reads up to `len_bytes` bytes at `offset`: fewer only where the file ends (none at or
    /// past its end). Lets a caller stream a large file in bounded memory.
    pub async fn read_at(&self, offset: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        self.inner
            .read_at(offset, len_bytes)
            .await
            .map_err(|error| with_path(error, "read", &self.path))
    }

    /// The file's length in bytes.
    pub async fn len(&self) -> io::Result<u64> {
        self.inner
            .len()
            .await
            .map_err(|error| with_path(error, "stat", &self.path))
    }

    /// Whether the file is empty.
    pub async fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Truncates or extends (zero-filled) the file to `len_bytes`.
    pub async fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.inner
            .set_len(len_bytes)
            .await
            .map_err(|error| with_path(error, "resize", &self.path))
    }

    /// Makes everything written to this file so far durable (fsync).
    pub async fn sync(&self) -> io::Result<()> {
        self.inner
            .sync()
            .await
            .map_err(|error| with_path(error, "sync", &self.path))
    }
}

/// Reads the whole file at `path`.
pub async fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    backend::fs::read(path)
        .await
        .map_err(|error| with_path(error, "read", path))
}

/// Replaces the file at `path` with `bytes` so that after a crash it holds either the old or the
/// new content, never a mix: writes `path.tmp`, syncs it, renames it over `path`, syncs the
/// directory. Returns once the new content is durable.
pub async fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let path = path.as_ref();
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("write_atomic needs a file path, got {}", path.display()),
        )
    })?;
    let mut temp_name = file_name.to_os_string();
    temp_name.push(".tmp");
    let temp_path = path.with_file_name(temp_name);
    let temp = File::create(&temp_path).await?;
    temp.write_at(0, bytes).await?;
    temp.sync().await?;
    drop(temp);
    rename(&temp_path, path).await?;
    sync_dir(parent_dir(path)).await
}

/// Renames `from` to `to`, replacing `to` if it exists. Durable after [`sync_dir`].
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let (from, to) = (from.as_ref(), to.as_ref());
    backend::fs::rename(from, to).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("rename {} to {}: {error}", from.display(), to.display()),
        )
    })
}

/// Removes the file at `path`. Durable after [`sync_dir`].
pub async fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    backend::fs::remove_file(path)
        .await
        .map_err(|error| with_path(error, "remove", path))
}

/// The names (not paths) of the entries in `dir`, sorted.
pub async fn list_dir(dir: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let dir = dir.as_ref();
    backend::fs::list_dir(dir)
        .await
        .map_err(|error| with_path(error, "list", dir))
}

/// Creates `dir` and any missing parents, and makes each directory it creates durable (syncs
/// its parent), so that files later created and synced in `dir` survive a crash.
///
/// A directory that already exists is taken as durable: it was made by an earlier call, or
/// by the operator. (Syncing every ancestor would also need read access to directories we
/// did not create.)
pub async fn create_dir_all(dir: impl AsRef<Path>) -> io::Result<()> {
    let dir = dir.as_ref();
    // The missing directories, deepest first. Created by someone else meanwhile, they are
    // merely synced once more.
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || exists(ancestor).await? {
            break;
        }
        missing.push(ancestor);
    }
    backend::fs::create_dir_all(dir)
        .await
        .map_err(|error| with_path(error, "create directory", dir))?;
    for created in missing.iter().rev() {
        #[cfg(madsim)]
        if backend::fs::plants().create_dir_all_skips_parent_sync {
            continue;
        }
        sync_dir(parent_dir(created)).await?;
    }
    Ok(())
}

/// Makes the creations, renames and removals of entries in `dir` durable.
pub async fn sync_dir(dir: impl AsRef<Path>) -> io::Result<()> {
    let dir = dir.as_ref();
    backend::fs::sync_dir(dir)
        .await
        .map_err(|error| with_path(error, "sync directory", dir))
}

/// Whether a file or directory exists at `path`.
pub async fn exists(path: impl AsRef<Path>) -> io::Result<bool> {
    let path = path.as_ref();
    backend::fs::exists(path)
        .await
        .map_err(|error| with_path(error, "stat", path))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Adds what was being done, and to which path, to an I/O error (keeping its kind).
fn with_path(error: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("{action} {}: {error}", path.display()),
    )
}
