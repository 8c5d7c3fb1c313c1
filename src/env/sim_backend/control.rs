//! The supervisor's levers on the seam's simulated world. Call them from the simulation's
//! supervisor (the future given to `Runtime::block_on`) or from any node.

use std::path::Path;

use madsim::runtime::Runtime;
pub use madsim::task::NodeId;

pub use super::clock::ClockSim;
pub use super::disk::{DiskFaults, DiskSim, FsPlants};
use super::plugin;

/// Registers the seam's plugins (per-node clocks and disks) with `runtime`. Call it right after
/// creating the runtime, before creating any node.
pub fn install(runtime: &Runtime) {
    runtime.add_simulator::<ClockSim>();
    runtime.add_simulator::<DiskSim>();
}

/// Plants `plant` in every node of the simulation running on this thread (see
/// [`crate::plants`]); `Plant::None` removes it.
pub fn set_plant(plant: crate::plants::Plant) {
    super::set_plant(plant);
}

/// Sets `node`'s clock to read true time + `offset_nanos` from now on, running `drift_ppm` parts
/// per million fast (positive) or slow (negative). The node's sleeps and timeouts follow its
/// clock: a fast clock fires early in true time. A change that would move the clock backwards
/// holds it still until true time catches up (monotonic clocks never go back).
///
/// Panics if `|offset_nanos|` is over about 6.5 days or `|drift_ppm|` over 100 000.
pub fn set_clock_skew(node: NodeId, offset_nanos: i64, drift_ppm: i32) {
    plugin::<ClockSim>().set_skew(node, offset_nanos, drift_ppm);
}

/// `node`'s current clock (offset from true time in nanoseconds, drift in ppm).
pub fn clock_skew(node: NodeId) -> (i64, i32) {
    plugin::<ClockSim>().skew(node)
}

/// Sets the faults of `node`'s disk, from now on (they survive restarts).
pub fn set_disk_faults(node: NodeId, faults: DiskFaults) {
    plugin::<DiskSim>().set_faults(node, faults);
}

/// Wipes `node`'s disk (a lost or replaced drive): every file and directory is gone, durable
/// or not. Kill the node first; its faults and plants stay.
pub fn wipe_disk(node: NodeId) {
    plugin::<DiskSim>().wipe(node);
}

/// The faults currently set on `node`'s disk.
pub fn disk_faults(node: NodeId) -> DiskFaults {
    plugin::<DiskSim>().faults(node)
}

/// Plants bugs in `node`'s file code (see [`FsPlants`]), from now on (they survive restarts).
pub fn set_fs_plants(node: NodeId, plants: FsPlants) {
    plugin::<DiskSim>().set_plants(node, plants);
}

/// What the file at `path` on `node` would hold after a crash that tears nothing (`None` if the
/// file would not exist): lets a test check durability without killing the node.
pub fn durable_content(node: NodeId, path: &Path) -> Option<Vec<u8>> {
    plugin::<DiskSim>().durable_content(node, path)
}

/// How many written bytes on `node`'s disk are not yet durable.
pub fn pending_bytes(node: NodeId) -> u64 {
    plugin::<DiskSim>().pending_bytes(node)
}

/// How many files `node`'s crashes left torn so far (coverage: did torn writes happen at all?).
pub fn torn_files(node: NodeId) -> u64 {
    plugin::<DiskSim>().torn_files(node)
}
