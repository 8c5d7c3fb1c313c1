//! The environment seam: time, tasks, randomness, network, signals and files.
//!
//! Everything the node needs from the outside world goes through this module, and it is the only
//! place in `src/` that knows whether it runs in production or inside the deterministic
//! simulator (`--cfg madsim`). The API is the same in both builds:
//!
//! | concern    | production                               | simulation (`cfg(madsim)`)                  |
//! |------------|------------------------------------------|---------------------------------------------|
//! | tasks      | tokio                                    | madsim tasks on the current simulated node  |
//! | clock      | the OS monotonic clock                   | madsim's virtual clock + per-node skew/drift|
//! | randomness | OS entropy                               | madsim's seeded generator                   |
//! | network    | tokio TCP                                | madsim's simulated TCP                      |
//! | TLS        | rustls (ring) over tokio-rustls          | none: certificate files are refused         |
//! | files      | `std::fs` on the blocking pool, real fsync | our own crash-modelling simulated disk    |
//! | signals    | ctrl-c / SIGTERM, SIGHUP (reload)        | never fires                                 |
//!
//! In simulation the clock and the disk are madsim plugins: every simulation runtime must call
//! `sim_control::install` before it creates nodes (madsim's `#[madsim::test]` cannot do this,
//! so simulation tests build their own `madsim::runtime::Runtime`).

use std::future::Future;
use std::ops::{Add, AddAssign, Sub};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub mod fs;
pub mod tls;

#[cfg(not(madsim))]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod std_backend;
#[cfg(not(madsim))]
use std_backend as backend;

#[cfg(madsim)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod sim_backend;
#[cfg(madsim)]
use sim_backend as backend;

/// Control of the simulated world that the seam owns: per-node clock skew and disk faults.
#[cfg(madsim)]
pub mod sim_control {
    pub use super::sim_backend::control::*;
}

#[cfg(test)]
pub(crate) mod testing;

pub use hyper_util::rt::TokioIo;
pub use tokio::net::{TcpListener, TcpStream};
pub use tokio::task::JoinHandle;

/// Whether this build runs inside the deterministic simulator.
pub const IS_SIMULATION: bool = backend::IS_SIMULATION;

/// Whether `plant` is planted (see [`crate::plants`]): the constant `false` in production.
#[inline(always)]
pub(crate) fn plant_active(plant: crate::plants::Plant) -> bool {
    backend::plant_active(plant)
}

/// The clock reading every [`Instant`] starts from, so that a node's clock can be set behind
/// true time (negative skew) and `now() - d` exists for any `d` below about 13 days.
pub(crate) const CLOCK_BASE_NANOS: u64 = 1 << 50;

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

/// Spawns a task on the runtime (in simulation: on the current simulated node, so it dies when
/// the node is killed). Dropping the handle detaches the task.
#[allow(clippy::disallowed_methods)] // the seam itself
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// A reading of this node's monotonic clock, in nanoseconds since an arbitrary epoch.
///
/// In simulation the reading includes the node's clock skew and drift (see
/// [`sim_control::set_clock_skew`](self)), so two nodes may disagree about the time exactly as
/// real machines do. Readings on one node never go backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    /// The instant `nanos` nanoseconds after the clock's epoch.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant { nanos }
    }

    /// Nanoseconds since the clock's epoch.
    pub const fn as_nanos(&self) -> u64 {
        self.nanos
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later (like `std`'s saturating
    /// behaviour).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }

    /// Time from `earlier` to `self`, or `None` if `earlier` is later.
    pub fn checked_duration_since(&self, earlier: Instant) -> Option<Duration> {
        self.nanos
            .checked_sub(earlier.nanos)
            .map(Duration::from_nanos)
    }

    /// Time elapsed on this node's clock since `self`.
    pub fn elapsed(&self) -> Duration {
        now().duration_since(*self)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        let d_nanos = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_add(d_nanos).map(Instant::from_nanos)
    }

    /// `self - d`, or `None` if that is before the clock's epoch.
    pub fn checked_sub(&self, d: Duration) -> Option<Instant> {
        let d_nanos = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_sub(d_nanos).map(Instant::from_nanos)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, d: Duration) -> Instant {
        self.checked_add(d)
            .unwrap_or_else(|| panic!("instant overflow: {self:?} + {d:?}"))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d)
            .unwrap_or_else(|| panic!("instant underflow: {self:?} - {d:?}"))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturating, like [`Instant::duration_since`].
    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

/// This node's monotonic clock (skewed per node in simulation).
pub fn now() -> Instant {
    Instant::from_nanos(backend::now_nanos())
}

/// This node's wall clock, in milliseconds since the Unix epoch (skewed per node in simulation).
/// Use it for display and logs only: it may jump; [`now`] never goes backwards.
pub fn unix_time_ms() -> u64 {
    backend::unix_time_ms()
}

/// Sleeps for `d` as measured by this node's clock (in simulation a fast clock wakes early in
/// true time, a slow one late).
pub async fn sleep(d: Duration) {
    backend::sleep_true(backend::to_true_duration(d)).await
}

/// The error of [`timeout`]: the deadline passed before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Runs `fut` for at most `d` of this node's clock. The future is polled before the timer, so a
/// future that is ready wins over a deadline that passed at the same moment.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let timer = backend::sleep_true(backend::to_true_duration(d));
    tokio::pin!(fut);
    tokio::pin!(timer);
    tokio::select! {
        biased;
        out = &mut fut => Ok(out),
        () = &mut timer => Err(Elapsed),
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness and signals
// ---------------------------------------------------------------------------------------------

/// A fresh random generator: seeded from OS entropy in production, from the simulation's seed in
/// simulation (so a seed replays the same draws).
pub fn rng() -> rand_chacha::ChaCha8Rng {
    backend::rng()
}

/// Completes when the process is asked to stop (ctrl-c or SIGTERM); never in simulation, where
/// nodes are stopped by killing them.
pub async fn shutdown_signal() {
    backend::shutdown_signal().await
}

/// Requests to reload configuration files (SIGHUP); never one in simulation. Make it only when
/// there is something to reload: listening replaces SIGHUP's default action (ending the
/// process). One listener for the node's life, so a SIGHUP during a reload is not lost.
pub struct ReloadSignals {
    inner: backend::ReloadSignals,
}

impl ReloadSignals {
    /// Starts listening.
    pub fn new() -> ReloadSignals {
        ReloadSignals {
            inner: backend::ReloadSignals::new(),
        }
    }

    /// Completes at the next request to reload.
    pub async fn recv(&mut self) {
        self.inner.recv().await
    }
}

impl Default for ReloadSignals {
    fn default() -> Self {
        ReloadSignals::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

/// A TCP stream as hyper should drive it: see [`FlushWhenWritten`].
pub fn hyper_io(stream: TcpStream) -> TokioIo<FlushWhenWritten<TcpStream>> {
    TokioIo::new(FlushWhenWritten {
        inner: stream,
        unflushed: false,
    })
}

/// A stream whose `flush` does nothing when nothing was written since the last one.
///
/// Why: madsim's simulated TCP turns every flush into a packet, empty or not, and draining a
/// packet costs at least 1 ms of virtual time. hyper flushes connections with nothing buffered,
/// so on a reused connection stale empty packets piled up and every request took one network
/// latency longer than the one before (measured: 8, 10, 12, ... 62 ms over 30 calls at 2 ms
/// latency; constant 8 ms with this wrapper). On a real socket an empty flush is a no-op
/// anyway, so production behaves the same.
#[derive(Debug)]
pub struct FlushWhenWritten<S> {
    inner: S,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FlushWhenWritten<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FlushWhenWritten<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.unflushed = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Splits a stream into a read half and a write half (the simulated stream has no
/// `into_split`).
pub fn split(
    stream: TcpStream,
) -> (
    tokio::io::ReadHalf<TcpStream>,
    tokio::io::WriteHalf<TcpStream>,
) {
    tokio::io::split(stream)
}

/// Runs hyper's background futures (connection drivers) as tasks through [`spawn`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperExecutor;

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(spawn(fut));
    }
}

/// hyper's timer (header-read timeouts, keep-alive) on the seam's clock, so hyper never reaches
/// for tokio's timer directly.
///
/// hyper hands `sleep_until` a `std::time::Instant` taken from [`hyper::rt::Timer::now`]; this
/// timer answers `now` from the seam (true time, unskewed) and turns deadlines back into
/// durations, so the two always agree.
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer;

/// The sleep future [`HyperTimer`] hands to hyper.
pub struct HyperSleep {
    inner: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
}

impl std::fmt::Debug for HyperSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperSleep").finish_non_exhaustive()
    }
}

impl Future for HyperSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep {
            inner: Box::pin(backend::sleep_true(duration)),
        })
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let remaining = deadline.saturating_duration_since(backend::std_instant_now());
        self.sleep(remaining)
    }

    fn now(&self) -> std::time::Instant {
        backend::std_instant_now()
    }
}

#[cfg(test)]
mod tests;
