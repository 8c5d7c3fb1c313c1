//! Per-node clocks: madsim has one global virtual clock; this plugin gives each node an offset
//! and a drift rate on top of it, as real machines have.
//!
//! A node's clock is piecewise linear in true time: from the moment its skew was last set
//! (`anchor_true_nanos`) it reads `anchor_local_nanos + elapsed_true * (1 + drift_ppm / 1e6)`.
//! Readings are clamped so they never go backwards, even when a skew change moves the clock back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use madsim::plugin::Simulator;
use madsim::rand::GlobalRng;
use madsim::task::NodeId;
use madsim::time::TimeHandle;

use super::plugin;
use crate::env::CLOCK_BASE_NANOS;

/// The largest skew offset accepted, either way (half the clock base, about 6.5 days).
pub(in crate::env) const CLOCK_OFFSET_NANOS_MAX: i64 = (CLOCK_BASE_NANOS / 2) as i64;
/// The largest drift accepted, either way: 10% (real crystals are within 100 ppm).
pub(in crate::env) const CLOCK_DRIFT_PPM_MAX: i32 = 100_000;

/// One node's clock parameters.
#[derive(Clone, Copy, Debug)]
struct NodeClock {
    anchor_true_nanos: u64,
    anchor_local_nanos: u64,
    drift_ppm: i32,
    /// Invariant: every reading handed out on this node is <= `last_local_nanos`.
    last_local_nanos: u64,
}

impl NodeClock {
    fn local_nanos_at(&self, true_nanos: u64) -> u64 {
        let elapsed_true = true_nanos.saturating_sub(self.anchor_true_nanos);
        let elapsed_local =
            (elapsed_true as i128) * (1_000_000 + i128::from(self.drift_ppm)) / 1_000_000;
        let local = i128::from(self.anchor_local_nanos) + elapsed_local;
        u64::try_from(local).unwrap_or_else(|_| panic!("simulated clock out of range: {local}"))
    }
}

/// The madsim plugin holding every node's clock parameters. Skew survives node restarts (it is
/// the machine's hardware clock).
pub struct ClockSim {
    clocks: Mutex<BTreeMap<NodeId, NodeClock>>,
}

impl Simulator for ClockSim {
    fn new(_rand: &GlobalRng, _time: &TimeHandle, _config: &madsim::Config) -> Self {
        ClockSim {
            clocks: Mutex::new(BTreeMap::new()),
        }
    }
}

impl ClockSim {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, NodeClock>> {
        self.clocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets `node`'s clock to read true time + `offset_nanos` from now on, running
    /// `drift_ppm` parts per million fast (positive) or slow (negative).
    pub(in crate::env) fn set_skew(&self, node: NodeId, offset_nanos: i64, drift_ppm: i32) {
        assert!(
            offset_nanos.abs() <= CLOCK_OFFSET_NANOS_MAX,
            "clock offset {offset_nanos} ns is beyond ±{CLOCK_OFFSET_NANOS_MAX} ns"
        );
        assert!(
            drift_ppm.abs() <= CLOCK_DRIFT_PPM_MAX,
            "clock drift {drift_ppm} ppm is beyond ±{CLOCK_DRIFT_PPM_MAX} ppm"
        );
        let true_nanos = true_nanos_now();
        let mut clocks = self.lock();
        let last_local_nanos = clocks.get(&node).map_or(0, |clock| clock.last_local_nanos);
        let anchor_local = i128::from(CLOCK_BASE_NANOS + true_nanos) + i128::from(offset_nanos);
        clocks.insert(
            node,
            NodeClock {
                anchor_true_nanos: true_nanos,
                anchor_local_nanos: u64::try_from(anchor_local)
                    .expect("offset bounded by half the clock base"),
                drift_ppm,
                last_local_nanos,
            },
        );
    }

    /// `node`'s (offset, drift) relative to true time right now.
    pub(in crate::env) fn skew(&self, node: NodeId) -> (i64, i32) {
        let true_nanos = true_nanos_now();
        match self.lock().get(&node) {
            None => (0, 0),
            Some(clock) => {
                let local = i128::from(clock.local_nanos_at(true_nanos));
                let offset = local - i128::from(CLOCK_BASE_NANOS + true_nanos);
                (offset as i64, clock.drift_ppm)
            }
        }
    }

    fn now_nanos(&self, node: NodeId, true_nanos: u64) -> u64 {
        let mut clocks = self.lock();
        match clocks.get_mut(&node) {
            None => CLOCK_BASE_NANOS + true_nanos,
            Some(clock) => {
                let local = clock.local_nanos_at(true_nanos).max(clock.last_local_nanos);
                clock.last_local_nanos = local;
                local
            }
        }
    }

    fn drift_ppm(&self, node: NodeId) -> i32 {
        self.lock().get(&node).map_or(0, |clock| clock.drift_ppm)
    }
}

/// True (global virtual) time since the simulation started.
fn true_nanos_now() -> u64 {
    u64::try_from(TimeHandle::current().elapsed().as_nanos())
        .expect("simulated time does not fit in u64 nanoseconds")
}

pub(in crate::env) fn now_nanos() -> u64 {
    plugin::<ClockSim>().now_nanos(madsim::plugin::node(), true_nanos_now())
}

pub(in crate::env) fn unix_time_ms() -> u64 {
    let true_nanos = true_nanos_now();
    let local_nanos = plugin::<ClockSim>().now_nanos(madsim::plugin::node(), true_nanos);
    let skew_nanos = i128::from(local_nanos) - i128::from(CLOCK_BASE_NANOS + true_nanos);
    let wall_true_nanos = TimeHandle::current()
        .now_time()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128;
    let wall_local_ms = (wall_true_nanos + skew_nanos).max(0) / 1_000_000;
    u64::try_from(wall_local_ms).unwrap_or(u64::MAX)
}

/// The true duration in which this node's clock advances by `d` (rounded up, so a sleeper never
/// wakes before its own clock says the time is up).
pub(in crate::env) fn to_true_duration(d: Duration) -> Duration {
    let drift_ppm = plugin::<ClockSim>().drift_ppm(madsim::plugin::node());
    if drift_ppm == 0 {
        return d;
    }
    let rate = 1_000_000 + i128::from(drift_ppm);
    let true_nanos = (d.as_nanos() as i128 * 1_000_000 + rate - 1) / rate;
    Duration::from_nanos(u64::try_from(true_nanos).unwrap_or(u64::MAX))
}
