//! The WAL on the simulated disk under crashes, torn writes and failing disks
//! (`cargo sim --lib env::sim_backend::wal_tests`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::runtime::Handle;
use rand_core::RngCore;

use crate::env::sim_control::{self, DiskFaults, FsPlants, NodeId};
use crate::raft::{
    Entry, EntryKind, HardState, Index, Membership, RestoreState, Snapshot, SnapshotMeta, Term,
};
use crate::wal::{Wal, WalError, WalOptions};

const WAL_DIR: &str = "/data/wal";

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("entry {index} of term {term}")),
    }
}

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 512,
    }
}

use crate::env::testing::simulation_runtime_with_seed as runtime_with_seed;

fn create_node() -> NodeId {
    Handle::current()
        .create_node()
        .name("wal")
        .ip("10.0.0.1".parse().expect("an IP address"))
        .build()
        .id()
}

#[test]
fn a_failing_disk_poisons_the_wal() {
    runtime_with_seed(11).block_on(async {
        let node = create_node();
        let handle = Handle::current();
        handle
            .get_node(node)
            .unwrap()
            .spawn(async move {
                let (mut wal, _) = Wal::open(Path::new(WAL_DIR), options()).await.unwrap();
                wal.append(&[entry(1, 1), entry(2, 1)]).await.unwrap();
                wal.sync().await.unwrap();
                sim_control::set_disk_faults(
                    node,
                    DiskFaults {
                        fail_writes: true,
                        ..DiskFaults::default()
                    },
                );
                wal.append(&[entry(3, 1)]).await.unwrap();
                let error = wal.sync().await.unwrap_err();
                assert!(matches!(error, WalError::Io { .. }), "{error}");
                assert!(wal.poisoned().is_some());
                sim_control::set_disk_faults(node, DiskFaults::default());
                for attempt in [
                    wal.append(&[entry(3, 1)]).await,
                    wal.save_hard_state(HardState::default()).await,
                    wal.sync().await,
                ] {
                    let error = attempt.unwrap_err();
                    assert!(matches!(error, WalError::Poisoned(_)), "{error}");
                }
            })
            .await
            .unwrap();
        handle.kill(node);
        handle.restart(node);
        let restored = handle
            .get_node(node)
            .unwrap()
            .spawn(async {
                let (_, restore) = Wal::open(Path::new(WAL_DIR), options()).await.unwrap();
                restore.entries
            })
            .await
            .unwrap();
        assert_eq!(restored, vec![entry(1, 1), entry(2, 1)]);
    });
}

/// The WAL's logical content: what a restart must find.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LogicalState {
    snapshot_id: (Index, Term),
    /// (index, term) of the entries after the snapshot.
    log: Vec<(Index, Term)>,
    hard_state: HardState,
}

impl LogicalState {
    fn last_index(&self) -> Index {
        self.log
            .last()
            .map_or(self.snapshot_id.0, |&(index, _)| index)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_id.0 {
            return Some(self.snapshot_id.1);
        }
        self.log
            .iter()
            .find(|&&(i, _)| i == index)
            .map(|&(_, term)| term)
    }

    fn restored(restore: &RestoreState) -> Result<LogicalState, String> {
        for restored in &restore.entries {
            let expected = entry(restored.index, restored.term);
            if *restored != expected {
                return Err(format!("restored {restored:?}, expected {expected:?}"));
            }
        }
        Ok(LogicalState {
            snapshot_id: restore
                .snapshot
                .as_ref()
                .map_or((0, 0), |s| (s.meta.index, s.meta.term)),
            log: restore.entries.iter().map(|e| (e.index, e.term)).collect(),
            hard_state: restore.hard_state,
        })
    }
}

/// What the crash checker knows across boots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    /// The states a crash may leave: the one at the last sync, then one after each call since.
    candidates: Vec<LogicalState>,
    /// Restarts that found a state outside `candidates`.
    violations: Vec<String>,
    /// The last index every restart found (a trace for the determinism check).
    restored_last_indexes: Vec<Index>,
    /// How many syncs returned, over all boots.
    syncs: u64,
}

impl Model {
    /// Called before each call with the state the call leads to: a crash during the call
    /// leaves the state before or after it.
    fn before_call(&mut self, state: &LogicalState) {
        self.candidates.push(state.clone());
    }

    fn after_sync(&mut self, state: &LogicalState) {
        self.candidates = vec![state.clone()];
        self.syncs += 1;
    }
}

/// Opens the WAL and checks it holds one of the states a crash may leave; then (unless
/// `check_only`) appends (also over its own suffix, as a follower does), saves hard states,
/// syncs and snapshots until the node is killed.
async fn worker(model: Arc<Mutex<Model>>, check_only: bool) {
    let opened = Wal::open(Path::new(WAL_DIR), options()).await;
    let (mut wal, restore) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let mut model = model.lock().unwrap();
            model.violations.push(format!("open failed: {error}"));
            return;
        }
    };
    let mut state = match LogicalState::restored(&restore) {
        Ok(state) => state,
        Err(violation) => {
            model.lock().unwrap().violations.push(violation);
            return;
        }
    };
    {
        let mut model = model.lock().unwrap();
        model.restored_last_indexes.push(state.last_index());
        let fresh = model.candidates.is_empty() && state == LogicalState::default();
        if !fresh && !model.candidates.contains(&state) {
            let violation = format!("restored {state:?}, expected one of {:?}", model.candidates);
            model.violations.push(violation);
            return;
        }
        assert_eq!(wal.last_index(), state.last_index());
        // What open found is durable (it synced its own repairs).
        model.candidates = vec![state.clone()];
    }
    if check_only {
        return;
    }
    let mut rng = crate::env::rng();
    let last_log_term = state
        .log
        .last()
        .map_or(state.snapshot_id.1, |&(_, term)| term);
    let mut term = state.hard_state.term.max(last_log_term).max(1);
    loop {
        match rng.next_u64() % 10 {
            0..=4 => {
                // Append, sometimes over the end of the log with a new term.
                let last = state.last_index();
                let first = if rng.next_u64() % 4 == 0 && last > state.snapshot_id.0 {
                    term += 1;
                    last - rng.next_u64() % (last - state.snapshot_id.0).min(5)
                } else {
                    last + 1
                };
                let count = 1 + rng.next_u64() % 5;
                let batch: Vec<Entry> = (first..first + count).map(|i| entry(i, term)).collect();
                state.log.retain(|&(index, _)| index < first);
                state.log.extend(batch.iter().map(|e| (e.index, e.term)));
                model.lock().unwrap().before_call(&state);
                wal.append(&batch).await.unwrap();
            }
            5 | 6 => {
                term = term.max(state.hard_state.term) + rng.next_u64() % 2;
                let hard_state = HardState {
                    term,
                    vote: Some(1 + rng.next_u64() % 3),
                    commit: state.last_index(),
                };
                state.hard_state = hard_state;
                model.lock().unwrap().before_call(&state);
                wal.save_hard_state(hard_state).await.unwrap();
            }
            7 | 8 => {
                wal.sync().await.unwrap();
                model.lock().unwrap().after_sync(&state);
            }
            _ => {
                // A snapshot inside the log (suffix kept) or, rarely, past it (log discarded).
                let last = state.last_index();
                let (index, snapshot_term) = if rng.next_u64() % 5 == 0 {
                    (last + 3, term)
                } else {
                    let index = state.snapshot_id.0 + (last - state.snapshot_id.0) / 2;
                    (index, state.term_at(index).expect("index is in the log"))
                };
                if index > state.snapshot_id.0 {
                    let snapshot = Snapshot {
                        meta: SnapshotMeta {
                            index,
                            term: snapshot_term,
                            membership: Membership::with_voters([1]),
                        },
                        data: Bytes::from(format!("state at {index}")),
                    };
                    if state.term_at(index) == Some(snapshot_term) {
                        state.log.retain(|&(i, _)| i > index);
                    } else {
                        state.log.clear();
                    }
                    state.snapshot_id = (index, snapshot_term);
                    model.lock().unwrap().before_call(&state);
                    wal.save_snapshot(&snapshot).await.unwrap();
                    model.lock().unwrap().after_sync(&state);
                }
            }
        }
    }
}

/// Runs the worker through `rounds` random crashes on a disk with `faults`; returns the model.
fn crash_rounds(seed: u64, faults: DiskFaults, rounds: usize) -> Model {
    crash_rounds_planted(seed, faults, FsPlants::default(), rounds)
}

/// [`crash_rounds`] with bugs planted in the seam's file code.
fn crash_rounds_planted(seed: u64, faults: DiskFaults, plants: FsPlants, rounds: usize) -> Model {
    runtime_with_seed(seed).block_on(async move {
        let node = create_node();
        sim_control::set_disk_faults(node, faults);
        sim_control::set_fs_plants(node, plants);
        let model = Arc::new(Mutex::new(Model::default()));
        let handle = Handle::current();
        let mut rng = crate::env::rng();
        for _ in 0..rounds {
            drop(
                handle
                    .get_node(node)
                    .unwrap()
                    .spawn(worker(Arc::clone(&model), false)),
            );
            let run_nanos = 1_000_000 + rng.next_u64() % 80_000_000;
            tokio::time::sleep(Duration::from_nanos(run_nanos)).await;
            handle.kill(node);
            handle.restart(node);
        }
        // A last boot only checks.
        sim_control::set_disk_faults(node, DiskFaults::default());
        handle
            .get_node(node)
            .unwrap()
            .spawn(worker(Arc::clone(&model), true))
            .await
            .unwrap();
        handle.kill(node);
        let model = model.lock().unwrap().clone();
        model
    })
}

fn crashy_disk() -> DiskFaults {
    DiskFaults {
        torn_write_probability: 0.5,
        latency_min: Duration::from_micros(10),
        latency_max: Duration::from_micros(500),
        ..DiskFaults::default()
    }
}

#[test]
fn synced_state_survives_random_crashes_with_torn_writes() {
    let (mut syncs, mut boots) = (0, 0);
    for seed in 0..24 {
        let model = crash_rounds(seed, crashy_disk(), 8);
        assert!(
            model.violations.is_empty(),
            "seed {seed}: {:?} (replay: MADSIM seed {seed})",
            model.violations
        );
        syncs += model.syncs;
        boots += model.restored_last_indexes.len();
    }
    assert!(
        syncs > 24 * 10 && boots > 24 * 4,
        "the workload made little progress: {syncs} syncs, {boots} boots"
    );
}

#[test]
fn crash_rounds_are_deterministic_per_seed() {
    let first = crash_rounds(3, crashy_disk(), 5);
    let second = crash_rounds(3, crashy_disk(), 5);
    assert_eq!(first, second);
}

/// The checker above can fail: with a lying fsync, synced entries are lost.
#[test]
fn a_lying_fsync_is_caught_by_the_crash_checker() {
    let lying = DiskFaults {
        lying_fsync: true,
        ..crashy_disk()
    };
    let caught = (0..8).any(|seed| !crash_rounds(seed, lying.clone(), 4).violations.is_empty());
    assert!(caught, "no seed noticed that fsync lied");
}

/// The checker catches a WAL directory whose creation was never made durable: with
/// `create_dir_all` planted to skip the parent sync, the first crash loses `/data/wal` with every
/// synced entry in it; the same seeds without the plant keep everything.
#[test]
fn a_wal_directory_created_without_a_parent_sync_is_caught_by_the_crash_checker() {
    let skip_parent_sync = FsPlants {
        create_dir_all_skips_parent_sync: true,
    };
    for seed in 0..4 {
        let planted = crash_rounds_planted(seed, crashy_disk(), skip_parent_sync, 3);
        assert!(
            planted.violations.iter().any(|violation| violation
                .contains("restored LogicalState { snapshot_id: (0, 0), log: []")),
            "seed {seed}: the lost WAL directory went unnoticed: {:?}",
            planted.violations
        );
        let fixed = crash_rounds_planted(seed, crashy_disk(), FsPlants::default(), 3);
        assert!(
            fixed.violations.is_empty(),
            "seed {seed}: {:?}",
            fixed.violations
        );
        assert!(fixed.syncs > 0, "seed {seed}: nothing was synced");
    }
}
