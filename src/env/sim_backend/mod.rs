//! The simulation backend (`cfg(madsim)`): madsim's tasks, network and virtual clock, plus two
//! plugins of our own: per-node clock skew ([`clock`]) and a crash-modelling disk ([`disk`]).

use std::any::type_name;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand_core::SeedableRng;

pub(super) mod clock;
pub(super) mod control;
pub(super) mod disk;

pub(super) use clock::{now_nanos, to_true_duration, unix_time_ms};
pub(super) use disk::fs;

pub(super) const IS_SIMULATION: bool = true;

thread_local! {
    /// The plant of the simulation running on this thread (one seed per OS thread, every
    /// simulated node of it on that thread).
    static PLANT: std::cell::Cell<crate::plants::Plant> =
        const { std::cell::Cell::new(crate::plants::Plant::None) };
}

pub(super) fn plant_active(plant: crate::plants::Plant) -> bool {
    plant != crate::plants::Plant::None && PLANT.with(std::cell::Cell::get) == plant
}

pub(super) fn set_plant(plant: crate::plants::Plant) {
    PLANT.with(|cell| cell.set(plant));
}

/// The seam's plugin `S` of the current simulation, with a clear message when the runtime was
/// built without [`control::install`].
fn plugin<S: madsim::plugin::Simulator>() -> Arc<S> {
    match std::panic::catch_unwind(madsim::plugin::simulator::<S>) {
        Ok(simulator) => simulator,
        Err(_) => panic!(
            "the env seam's {} plugin is not registered: call \
             raft_kv::env::sim_control::install(&runtime) before creating nodes \
             (#[madsim::test] cannot; build a madsim::runtime::Runtime instead)",
            type_name::<S>()
        ),
    }
}

pub(super) fn std_instant_now() -> std::time::Instant {
    // madsim intercepts the OS clock: this is the virtual (true, unskewed) time.
    std::time::Instant::now()
}

pub(super) fn sleep_true(d: Duration) -> SleepOnce {
    SleepOnce {
        inner: tokio::time::sleep(d),
        armed_for: None,
    }
}

/// madsim's sleep, with one timer per sleep instead of one per poll.
///
/// madsim's `Sleep::poll` queues a new timer in the runtime's heap on every poll that finds it
/// pending, and nothing removes a timer before its deadline. A sleep polled again and again (a
/// timeout around an RPC that is woken by every packet, hyper's header-read timer, a select
/// loop) therefore left one heap entry per poll, each a boxed callback that is popped and wakes
/// its task at the deadline: the timer heap dominated the simulator's profile. A timer already
/// queued for the same task wakes it at the same deadline, so it is enough to queue one again
/// only when the waker changes.
pub(super) struct SleepOnce {
    inner: tokio::time::Sleep,
    /// The waker the queued timer will wake (`None` before the first pending poll).
    armed_for: Option<Waker>,
}

impl Future for SleepOnce {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every field is `Unpin` (madsim's sleep is a handle and an instant).
        let this = self.get_mut();
        if this.inner.is_elapsed() {
            return Poll::Ready(());
        }
        if let Some(armed_for) = &this.armed_for {
            if armed_for.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let polled = Pin::new(&mut this.inner).poll(cx);
        this.armed_for = Some(cx.waker().clone());
        polled
    }
}

pub(super) fn rng() -> rand_chacha::ChaCha8Rng {
    let seed: [u8; 32] = madsim::rand::random();
    rand_chacha::ChaCha8Rng::from_seed(seed)
}

/// Simulated nodes are never asked to reload.
pub(super) struct ReloadSignals;

impl ReloadSignals {
    pub(super) fn new() -> ReloadSignals {
        ReloadSignals
    }

    pub(super) async fn recv(&mut self) {
        std::future::pending::<()>().await
    }
}

pub(super) async fn shutdown_signal() {
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod wal_tests;
