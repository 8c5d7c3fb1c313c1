//! The production backend: tokio, the OS clocks, OS entropy and `std::fs` on tokio's blocking
//! pool. The only module (with the simulation twin) allowed to call what clippy.toml bans.

use std::sync::OnceLock;
use std::time::Duration;

use rand_core::SeedableRng;

use super::CLOCK_BASE_NANOS;

pub(super) const IS_SIMULATION: bool = false;

/// Production has no planted bugs: a constant the compiler folds away.
#[inline(always)]
pub(super) const fn plant_active(_plant: crate::plants::Plant) -> bool {
    false
}

/// The process's clock epoch, taken at the first reading.
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

pub(super) fn now_nanos() -> u64 {
    let since_epoch_nanos = u64::try_from(epoch().elapsed().as_nanos())
        .expect("process uptime does not fit in u64 nanoseconds (584 years)");
    CLOCK_BASE_NANOS + since_epoch_nanos
}

pub(super) fn std_instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

pub(super) fn unix_time_ms() -> u64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_unix.as_millis()).unwrap_or(u64::MAX)
}

/// Production clocks do not drift on purpose: a local duration is a true duration.
pub(super) fn to_true_duration(d: Duration) -> Duration {
    d
}

pub(super) fn sleep_true(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(d)
}

pub(super) fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::from_os_rng()
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        biased; // every select! is biased (sim/tests/determinism_guard.rs)
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// SIGHUP, listened to from creation on.
pub(super) struct ReloadSignals {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignals {
    pub(super) fn new() -> ReloadSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hangup = signal(SignalKind::hangup())
                .map_err(|error| tracing::error!(%error, "cannot listen for SIGHUP"))
                .ok();
            ReloadSignals { hangup }
        }
        #[cfg(not(unix))]
        ReloadSignals {}
    }

    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(hangup) = &mut self.hangup {
            if hangup.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Files: `std::fs` run on tokio's blocking pool, with real fsync.
pub(super) mod fs {
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    /// Runs blocking file work off the async threads.
    async fn blocking<T, F>(work: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(join_error) => Err(io::Error::other(format!(
                "blocking file task failed: {join_error}"
            ))),
        }
    }

    /// An open file, readable and writable.
    #[derive(Debug)]
    pub(in crate::env) struct File {
        inner: Arc<std::fs::File>,
    }

    impl File {
        pub(in crate::env) async fn create(path: &Path) -> io::Result<File> {
            let path = path.to_path_buf();
            let file = blocking(move || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
            })
            .await?;
            Ok(File {
                inner: Arc::new(file),
            })
        }

        pub(in crate::env) async fn open(path: &Path) -> io::Result<File> {
            let path = path.to_path_buf();
            let file = blocking(move || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
            })
            .await?;
            Ok(File {
                inner: Arc::new(file),
            })
        }

        pub(in crate::env) async fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
            let file = Arc::clone(&self.inner);
            let bytes = bytes.to_vec();
            blocking(move || file.write_all_at(&bytes, offset)).await
        }

        pub(in crate::env) async fn append(&self, bytes: &[u8]) -> io::Result<u64> {
            let file = Arc::clone(&self.inner);
            let bytes = bytes.to_vec();
            blocking(move || {
                let offset = file.metadata()?.len();
                file.write_all_at(&bytes, offset)?;
                Ok(offset)
            })
            .await
        }

        pub(in crate::env) async fn read_all(&self) -> io::Result<Vec<u8>> {
            let file = Arc::clone(&self.inner);
            blocking(move || {
                let len_bytes = usize::try_from(file.metadata()?.len())
                    .map_err(|_| io::Error::other("file larger than memory"))?;
                let mut buffer = vec![0u8; len_bytes];
                file.read_exact_at(&mut buffer, 0)?;
                Ok(buffer)
            })
            .await
        }

        pub(in crate::env) async fn read_at(
            &self,
            offset: u64,
            len_bytes: usize,
        ) -> io::Result<Vec<u8>> {
            let file = Arc::clone(&self.inner);
            blocking(move || {
                // Never allocate past the end of the file, whatever was asked.
                let remaining_bytes = file.metadata()?.len().saturating_sub(offset);
                let want_bytes = usize::try_from(remaining_bytes)
                    .unwrap_or(usize::MAX)
                    .min(len_bytes);
                let mut buffer = vec![0u8; want_bytes];
                let mut filled = 0;
                while filled < want_bytes {
                    match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(read) => filled += read,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(error),
                    }
                }
                buffer.truncate(filled);
                Ok(buffer)
            })
            .await
        }

        pub(in crate::env) async fn len(&self) -> io::Result<u64> {
            let file = Arc::clone(&self.inner);
            blocking(move || Ok(file.metadata()?.len())).await
        }

        pub(in crate::env) async fn set_len(&self, len_bytes: u64) -> io::Result<()> {
            let file = Arc::clone(&self.inner);
            blocking(move || file.set_len(len_bytes)).await
        }

        pub(in crate::env) async fn sync(&self) -> io::Result<()> {
            let file = Arc::clone(&self.inner);
            blocking(move || file.sync_all()).await
        }
    }

    pub(in crate::env) async fn read(path: &Path) -> io::Result<Vec<u8>> {
        let path = path.to_path_buf();
        blocking(move || std::fs::read(path)).await
    }

    pub(in crate::env) async fn rename(from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || std::fs::rename(from, to)).await
    }

    pub(in crate::env) async fn remove_file(path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || std::fs::remove_file(path)).await
    }

    pub(in crate::env) async fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let mut names = Vec::new();
            for dir_entry in std::fs::read_dir(&dir)? {
                let name = dir_entry?.file_name().into_string().map_err(|raw| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("non-UTF-8 file name {raw:?} in {}", dir.display()),
                    )
                })?;
                names.push(name);
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    pub(in crate::env) async fn create_dir_all(dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::create_dir_all(dir)).await
    }

    pub(in crate::env) async fn sync_dir(dir: &Path) -> io::Result<()> {
        let dir: PathBuf = dir.to_path_buf();
        blocking(move || std::fs::File::open(dir)?.sync_all()).await
    }

    pub(in crate::env) async fn exists(path: &Path) -> io::Result<bool> {
        let path = path.to_path_buf();
        blocking(move || path.try_exists()).await
    }
}
