//! One seed's run: build the madsim world (the real nodes, a client machine), run the fault
//! schedule and the workload, watch Raft safety while it runs, then heal everything and demand
//! liveness and convergence, and finally check the client history for linearizability.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use raft_kv::env;
use raft_kv::env::sim_control::{self, DiskFaults, NodeId as SimNodeId};
use raft_kv::http::client::HttpClient;
use raft_kv::node::config::node_id_of;
use raft_kv::node::{InspectScope, NodeConfig, NodeEvent, NodeHandle};
use raft_kv::raft::invariants::InvariantChecker;
use raft_kv::raft::Role;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::sync::mpsc;

use crate::coverage::cut_kind;
use crate::lease_check::{self, holder::HolderContext};
use crate::linearizability::{self, Budget, CheckResult, KvInput, Operation};
use crate::membership::Command;
use crate::recorder::Shared;
use crate::scenario::{
    Fault, Plant, Scenario, CLIENTS_DRAIN_MS_MAX, CLIENTS_STOP_MS, CONVERGE_MS_MAX, FAULTS_END_MS,
    LEADER_AFTER_HEAL_MS_MAX,
};
use crate::workload::{self, virtual_nanos, ClientContext, Ending};

/// The HTTP port every node listens on.
const PORT: u16 = 7000;
/// The clients' machine in the supervisor's links (the scenario names it `nodes_count`).
const CLIENT: usize = usize::MAX;
/// Keys of the membership operator's cuts among the active cuts (above every episode number).
const OPERATOR_CUTS: usize = 1 << 20;
/// Spare machines for nodes the membership operator starts (fresh joiners).
const SPARES_MAX: usize = 6;
/// How often the inspector looks inside every live node (virtual milliseconds).
const INSPECT_EVERY_MS: u64 = 500;
/// Virtual time after which a run is declared hung (madsim panics).
pub const TIME_LIMIT_MS: u64 = 200_000;
/// Voters crashed at most per run.
const VOTER_CRASHES_MAX: u32 = 20;
/// At most this many nodes are crashed in the middle of a snapshot write per seed.
const SNAPSHOT_CRASHES_MAX: u32 = 20;

/// A moment the monitor saw at which a node may be crashed on purpose.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// The node (raft id) was just asked for its vote in a new term.
    Voter(u64),
    /// The node (raft id) just started writing a snapshot file.
    SnapshotWriter(u64),
}
/// Lease holders per run (besides the key-value clients).
const LEASE_HOLDERS: u64 = 2;
/// Transaction clients (`workload::txn_loop`) in the seeds that run them.
const TXN_CLIENTS: u64 = 2;
/// Spacing of the ids the invariant checker knows the boots of one node by.
const BOOT_ID_STRIDE: u64 = 0x9e37_79b9_7f4a_7c15;
/// Model steps the linearizability check may take.
pub const CHECK_STEPS_MAX: u64 = 20_000_000;

fn virtual_ms() -> u64 {
    virtual_nanos() / 1_000_000
}

/// What woke the supervisor before its next scheduled moment.
enum Wake {
    /// A moment the monitor saw.
    Trigger(Trigger),
    /// A request of the membership operator.
    Command(Command),
}

/// Sleeps until `at_ms`, or returns early with a trigger the monitor saw (a voter asked for its
/// vote, a node starting a snapshot write) or a request of the membership operator.
async fn sleep_until_ms_or_trigger(
    at_ms: u64,
    triggers: &mut mpsc::UnboundedReceiver<Trigger>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Wake> {
    let now = virtual_ms();
    if at_ms <= now {
        return None;
    }
    tokio::select! {
        biased;
        trigger = triggers.recv() => trigger.map(Wake::Trigger),
        Some(command) = commands.recv() => Some(Wake::Command(command)),
        () = env::sleep(Duration::from_millis(at_ms - now)) => None,
    }
}

/// What the supervisor knows about each node.
struct NodeSlot {
    name: String,
    raft_id: u64,
    sim_id: SimNodeId,
    /// Boots so far (0 for the first). The invariant checker sees each boot as its own node:
    /// inspections show in-memory state, and a term or log suffix that was never synced may
    /// legitimately be gone after a crash (a node that bumped its term and crashed before the
    /// fsync). Safety across boots is still checked: two leaders of one term, log matching,
    /// leader completeness and state machine safety do not care which boot they see.
    boot: u64,
    /// The running node's handle (set by `on_started`, cleared on kill).
    handle: Arc<Mutex<Option<NodeHandle>>>,
    /// The flags the node starts with (the membership operator may switch them to `--join`).
    config: Arc<Mutex<NodeConfig>>,
    crashed: bool,
    paused: bool,
    disk_full: bool,
    /// The membership operator took the machine (killed for good, or wiped and not yet joined
    /// again): no fault touches it and the heal does not restart it.
    owned: bool,
    /// The operator removed it from the cluster: after the heal it must have stopped. No fault
    /// starts on it any more (one under way still ends: a full disk is mended, a crashed node
    /// restarted, and it must learn it was removed).
    removed: bool,
}

/// The simulated world of one seed, seen from the supervisor.
struct World {
    scenario: Scenario,
    shared: Shared,
    nodes: Vec<NodeSlot>,
    client_sim_id: SimNodeId,
    checker: Arc<Mutex<InvariantChecker>>,
    /// Directed links currently clogged (node indices, the client machine is `nodes_count`).
    clogged: BTreeSet<(usize, usize)>,
    /// Links each active cut episode clogs, by episode number.
    active_cuts: BTreeMap<usize, Vec<(usize, usize)>>,
    /// Active loss spikes and delay spikes, by episode number.
    active_loss: BTreeMap<usize, f64>,
    active_delay: BTreeMap<usize, u64>,
    /// Decides which voters crash (seeded from the scenario's seed).
    rng: ChaCha8Rng,
    /// Voters crashed so far.
    voter_crashes: u32,
    /// Snapshot writers crashed so far.
    snapshot_crashes: u32,
    /// Process-fault episodes that found their node owned by the membership operator, or whose
    /// node the operator took while they ran: their heal must not touch it.
    skipped_episodes: BTreeSet<usize>,
    /// Process-fault episodes started and not yet healed.
    running_process_episodes: BTreeSet<usize>,
    /// For starting spare nodes: the node event sender and every address.
    observer: mpsc::UnboundedSender<NodeEvent>,
    addrs: Vec<String>,
    /// How many of `addrs` have had a node: the clients' [`ClientContext::started`].
    started_addrs: Arc<AtomicUsize>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl World {
    fn sim_id(&self, index: usize) -> SimNodeId {
        if index == CLIENT {
            self.client_sim_id
        } else {
            self.nodes[index].sim_id
        }
    }

    fn name_of_raft_id(&self, raft_id: u64) -> String {
        self.nodes
            .iter()
            .find(|n| n.raft_id == raft_id)
            .map_or_else(|| format!("#{raft_id}"), |n| n.name.clone())
    }

    fn trace(&self, what: String) {
        self.shared.trace(format!("{:>6} ms  {what}", virtual_ms()));
    }

    /// Brings the network to the union of the active faults.
    fn apply_network(&mut self) {
        let desired: BTreeSet<(usize, usize)> =
            self.active_cuts.values().flatten().copied().collect();
        let net = NetSim::current();
        for &(src, dst) in desired.difference(&self.clogged) {
            net.clog_link(self.sim_id(src), self.sim_id(dst));
        }
        for &(src, dst) in self.clogged.difference(&desired) {
            net.unclog_link(self.sim_id(src), self.sim_id(dst));
        }
        self.clogged = desired;
        let loss = self
            .active_loss
            .values()
            .copied()
            .fold(self.scenario.packet_loss_rate, f64::max);
        let latency_ms_max = self
            .active_delay
            .values()
            .copied()
            .fold(self.scenario.latency_ms.1, u64::max);
        let latency_ms_min = self.scenario.latency_ms.0;
        net.update_config(|config| {
            config.packet_loss_rate = loss;
            config.send_latency = Duration::from_millis(latency_ms_min)
                ..Duration::from_millis(latency_ms_max.max(latency_ms_min + 1));
        });
    }

    fn disk_faults(&self, index: usize, fail_writes: bool) -> DiskFaults {
        DiskFaults {
            torn_write_probability: self
                .scenario
                .torn_write_probability
                .get(index)
                .copied()
                .unwrap_or(0.0),
            lying_fsync: self.scenario.plant == Plant::LyingFsync,
            fail_writes,
            latency_min: Duration::from_micros(self.scenario.disk_latency_us.0),
            latency_max: Duration::from_micros(self.scenario.disk_latency_us.1),
        }
    }

    fn kill(&mut self, index: usize) {
        let unsynced_bytes = sim_control::pending_bytes(self.nodes[index].sim_id);
        self.shared.lock().coverage.crashed(unsynced_bytes);
        *lock(&self.nodes[index].handle) = None;
        Handle::current().kill(self.nodes[index].sim_id);
        self.nodes[index].crashed = true;
        self.nodes[index].paused = false;
        let raft_id = self.nodes[index].raft_id;
        let in_snapshot = {
            let mut rec = self.shared.lock();
            let in_snapshot = rec.snapshots_writing.remove(&raft_id);
            rec.coverage.crashes_in_snapshot += u64::from(in_snapshot);
            in_snapshot
        };
        if in_snapshot {
            self.trace(format!(
                "the kill of {} lands during a snapshot write",
                self.nodes[index].name
            ));
        }
    }

    fn restart(&mut self, index: usize) {
        Handle::current().restart(self.nodes[index].sim_id);
        self.nodes[index].crashed = false;
        self.nodes[index].boot += 1;
    }

    /// The id the invariant checker knows node `index`'s current boot by.
    fn checker_id(&self, index: usize) -> u64 {
        let node = &self.nodes[index];
        node.raft_id
            .wrapping_add(node.boot.wrapping_mul(BOOT_ID_STRIDE))
    }

    /// `text` with every checker id replaced by the node's name (and boot).
    fn with_names(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (index, node) in self.nodes.iter().enumerate() {
            for boot in (0..=node.boot).rev() {
                let id = node.raft_id.wrapping_add(boot.wrapping_mul(BOOT_ID_STRIDE));
                let name = if boot == 0 {
                    node.name.clone()
                } else {
                    format!("{}(boot {boot})", node.name)
                };
                text = text.replace(&id.to_string(), &name);
            }
            let _ = index;
        }
        text
    }

    /// With the scenario's probability, crashes the node with raft id `voter` (just asked for
    /// its vote in a new term) and restarts it a few milliseconds later.
    async fn maybe_crash_voter(&mut self, voter: u64) {
        let Some(index) = self.nodes.iter().position(|n| n.raft_id == voter) else {
            return;
        };
        let probability = self.scenario.voter_crash_probability;
        if !self.targeted_crash_drawn(index, self.voter_crashes, VOTER_CRASHES_MAX, probability) {
            return;
        }
        self.voter_crashes += 1;
        // Let the vote reach the disk and the wire first (or not: the delay may be zero).
        self.crash_and_restart(index, "voter", 15, 20, Some("crash of a voter"))
            .await;
    }

    /// With the scenario's probability, crashes the node with raft id `writer` (it just started a
    /// snapshot write) a few milliseconds later, in the middle of the write, and restarts it.
    async fn maybe_crash_snapshot_writer(&mut self, writer: u64) {
        let Some(index) = self.nodes.iter().position(|n| n.raft_id == writer) else {
            return;
        };
        let probability = self.scenario.snapshot_crash_probability;
        if !self.targeted_crash_drawn(
            index,
            self.snapshot_crashes,
            SNAPSHOT_CRASHES_MAX,
            probability,
        ) {
            return;
        }
        self.snapshot_crashes += 1;
        self.crash_and_restart(index, "snapshot writer", 4, 200, None)
            .await;
    }

    /// Whether node `index` takes a crash aimed at a moment (a vote, a snapshot write): it is up,
    /// well before the faults end, under `crashes_max`, and the draw falls under `probability`.
    /// Draws once whatever the outcome, so the seed's random stream does not depend on it.
    fn targeted_crash_drawn(
        &mut self,
        index: usize,
        crashes: u32,
        crashes_max: u32,
        probability: f64,
    ) -> bool {
        let node = &self.nodes[index];
        let eligible = !node.crashed
            && !node.owned
            && !node.removed
            && !node.paused
            && !node.disk_full
            && virtual_ms() + 1_000 < FAULTS_END_MS;
        let draw = (self.rng.next_u64() % 10_000) as f64 / 10_000.0;
        eligible && crashes < crashes_max && draw < probability
    }

    /// After up to `delay_ms_max` ms, kills node `index` (unless it went down meanwhile) and
    /// restarts it up to `downtime_ms_max` ms later; `kind` is counted in the coverage.
    async fn crash_and_restart(
        &mut self,
        index: usize,
        role: &str,
        delay_ms_max: u64,
        downtime_ms_max: u64,
        kind: Option<&'static str>,
    ) {
        let delay_ms = self.rng.next_u64() % delay_ms_max;
        let downtime_ms = self.rng.next_u64() % downtime_ms_max;
        env::sleep(Duration::from_millis(delay_ms)).await;
        let node = &self.nodes[index];
        if node.crashed || node.paused || node.disk_full || node.owned || node.removed {
            return;
        }
        self.trace(format!(
            "fault: crash {role} {} for {downtime_ms} ms",
            node.name
        ));
        if let Some(kind) = kind {
            self.shared.lock().coverage.fault(kind);
        }
        self.kill(index);
        env::sleep(Duration::from_millis(downtime_ms)).await;
        self.trace(format!("heal: restart {role} {}", self.nodes[index].name));
        self.restart(index);
    }

    /// The leader the running nodes report, if one node leads in the highest term.
    fn current_leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            if node.crashed || node.paused {
                continue;
            }
            if let Some(handle) = lock(&node.handle).as_ref() {
                let status = handle.status();
                if status.role == Role::Leader && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, index));
                }
            }
        }
        best.map(|(_, index)| index)
    }

    fn start_episode(&mut self, number: usize) {
        let episode = self.scenario.episodes[number].clone();
        if let Some(node) = episode.fault.process_node() {
            if self.nodes[node].owned || self.nodes[node].removed {
                self.trace(format!(
                    "fault {number}: {} belongs to the membership operator, skipped",
                    self.nodes[node].name
                ));
                self.skipped_episodes.insert(number);
                return;
            }
            self.running_process_episodes.insert(number);
        }
        let label = |i: usize| self.scenario.label(i);
        let client = self.scenario.nodes_count;
        let endpoint = |i: usize| if i == client { CLIENT } else { i };
        match &episode.fault {
            Fault::Cut { shape, links } => {
                self.trace(format!(
                    "fault {number}: cut {shape} ({} links)",
                    links.len()
                ));
                let links = links
                    .iter()
                    .map(|&(a, b)| (endpoint(a), endpoint(b)))
                    .collect();
                self.active_cuts.insert(number, links);
                self.shared.lock().coverage.fault(cut_kind(shape));
            }
            Fault::IsolateLeader => match self.current_leader() {
                Some(leader) => {
                    self.trace(format!("fault {number}: isolate leader {}", label(leader)));
                    let links = (0..self.nodes.len())
                        .chain([CLIENT])
                        .filter(|&n| n != leader)
                        .flat_map(|n| [(leader, n), (n, leader)])
                        .collect();
                    self.active_cuts.insert(number, links);
                    self.shared.lock().coverage.fault("isolate leader");
                }
                None => {
                    self.trace(format!(
                        "fault {number}: isolate leader: no leader now, nothing cut"
                    ));
                    self.shared.lock().coverage.episodes_idle += 1;
                }
            },
            Fault::StrandLeader => match self.current_leader() {
                Some(leader) => {
                    self.trace(format!(
                        "fault {number}: strand leader {} (every node's link to it cut one way)",
                        label(leader)
                    ));
                    let links = (0..self.nodes.len())
                        .filter(|&n| n != leader)
                        .map(|n| (n, leader))
                        .collect();
                    self.active_cuts.insert(number, links);
                }
                None => self.trace(format!(
                    "fault {number}: strand leader: no leader now, nothing cut"
                )),
            },
            Fault::Crash { node } => {
                self.trace(format!("fault {number}: crash {}", label(*node)));
                self.shared.lock().coverage.fault("crash and restart");
                self.kill(*node);
            }
            Fault::Pause { node } => {
                self.trace(format!("fault {number}: pause {}", label(*node)));
                Handle::current().pause(self.nodes[*node].sim_id);
                self.nodes[*node].paused = true;
                self.shared.lock().coverage.fault("pause");
            }
            Fault::LossSpike { loss_rate } => {
                self.trace(format!("fault {number}: loss spike {loss_rate}"));
                self.active_loss.insert(number, *loss_rate);
                self.shared.lock().coverage.fault("loss spike");
            }
            Fault::DelaySpike { latency_ms_max } => {
                self.trace(format!("fault {number}: delay spike {latency_ms_max} ms"));
                self.active_delay.insert(number, *latency_ms_max);
                self.shared.lock().coverage.fault("delay spike");
            }
            Fault::ClockJump {
                node,
                offset_ms,
                drift_ppm,
            } => {
                self.trace(format!(
                    "fault {number}: clock of {} to {offset_ms:+} ms {drift_ppm:+} ppm",
                    label(*node)
                ));
                sim_control::set_clock_skew(
                    self.nodes[*node].sim_id,
                    offset_ms * 1_000_000,
                    *drift_ppm,
                );
                self.shared.lock().coverage.fault("clock jump");
            }
            Fault::DiskFull { node } => {
                self.trace(format!("fault {number}: disk full on {}", label(*node)));
                sim_control::set_disk_faults(
                    self.nodes[*node].sim_id,
                    self.disk_faults(*node, true),
                );
                self.nodes[*node].disk_full = true;
                self.shared.lock().coverage.fault("disk full");
            }
        }
        self.apply_network();
    }

    fn end_episode(&mut self, number: usize) {
        self.running_process_episodes.remove(&number);
        let episode = self.scenario.episodes[number].clone();
        let owned = episode
            .fault
            .process_node()
            .is_some_and(|node| self.nodes[node].owned);
        if self.skipped_episodes.contains(&number) || owned {
            return;
        }
        match &episode.fault {
            Fault::Cut { .. } | Fault::IsolateLeader | Fault::StrandLeader => {
                self.active_cuts.remove(&number);
            }
            Fault::Crash { node } => {
                self.trace(format!(
                    "heal {number}: restart {}",
                    self.scenario.label(*node)
                ));
                self.restart(*node);
            }
            Fault::Pause { node } => {
                if self.nodes[*node].paused {
                    self.trace(format!(
                        "heal {number}: resume {}",
                        self.scenario.label(*node)
                    ));
                    Handle::current().resume(self.nodes[*node].sim_id);
                    self.nodes[*node].paused = false;
                }
            }
            Fault::LossSpike { .. } => {
                self.active_loss.remove(&number);
            }
            Fault::DelaySpike { .. } => {
                self.active_delay.remove(&number);
            }
            Fault::ClockJump { .. } => {}
            Fault::DiskFull { node } => {
                self.trace(format!(
                    "heal {number}: disk fixed, restart {}",
                    self.scenario.label(*node)
                ));
                sim_control::set_disk_faults(
                    self.nodes[*node].sim_id,
                    self.disk_faults(*node, false),
                );
                self.nodes[*node].disk_full = false;
                self.kill(*node);
                self.restart(*node);
            }
        }
        if !matches!(
            episode.fault,
            Fault::Cut { .. } | Fault::IsolateLeader | Fault::StrandLeader
        ) {
            return;
        }
        self.trace(format!(
            "heal {number}: {} links stay cut",
            self.active_cuts.values().flatten().count()
        ));
        self.apply_network();
    }

    /// The nodes the configuration of the current leader names (voters and learners), but not
    /// those the operator took down for good; every node when no leader is known.
    fn final_members(&self) -> BTreeSet<usize> {
        let names: Option<BTreeSet<String>> = self.current_leader().and_then(|leader| {
            let handle = lock(&self.nodes[leader].handle).clone()?;
            Some(
                handle
                    .directory
                    .members()
                    .into_iter()
                    .map(|m| m.name)
                    .collect(),
            )
        });
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].owned)
            .filter(|&i| match &names {
                Some(names) => names.contains(&self.nodes[i].name),
                None => !self.nodes[i].removed,
            })
            .collect()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `index` runs: its node started and its driver has not stopped.
    fn running(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        !node.crashed
            && lock(&node.handle)
                .as_ref()
                .is_some_and(|h| !h.driver_stopped())
    }

    /// Hands node `index` to the membership operator: it is killed, its disk mended.
    fn take(&mut self, index: usize) {
        // A fault still running on the node is the operator's now: its heal would restart (or
        // kill and restart) a node the operator may have started again meanwhile. Restarting a
        // running machine makes the new process find the old one's port taken (seed 5340).
        let running: Vec<usize> = self
            .running_process_episodes
            .iter()
            .copied()
            .filter(|&n| self.scenario.episodes[n].fault.process_node() == Some(index))
            .filter(|n| !self.skipped_episodes.contains(n))
            .collect();
        for number in running {
            self.trace(format!(
                "fault {number}: {} taken by the membership operator, its heal skipped",
                self.nodes[index].name
            ));
            self.skipped_episodes.insert(number);
        }
        if !self.nodes[index].crashed {
            self.kill(index);
        }
        if self.nodes[index].disk_full {
            let faults = self.disk_faults(index, false);
            sim_control::set_disk_faults(self.nodes[index].sim_id, faults);
            self.nodes[index].disk_full = false;
        }
        self.nodes[index].owned = true;
    }

    /// The address a joining node asks: the leader's, else a running member's.
    fn join_addr(&self) -> Option<String> {
        let member = |i: &usize| !self.nodes[*i].removed && !self.nodes[*i].owned;
        self.current_leader()
            .filter(member)
            .or_else(|| {
                (0..self.nodes.len())
                    .filter(member)
                    .find(|&i| self.running(i))
            })
            .map(|i| self.addrs[i].clone())
    }

    /// Switches node `index`'s flags to `--join` through a running member.
    fn set_join(&mut self, index: usize) -> bool {
        let Some(join_addr) = self.join_addr() else {
            return false;
        };
        join_through(&mut lock(&self.nodes[index].config), join_addr);
        true
    }

    /// Carries out a request of the membership operator.
    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Join { reply } => {
                let index = self.nodes.len();
                if index >= self.addrs.len() {
                    let _ = reply.send(None);
                    return;
                }
                let Some(join_addr) = self.join_addr() else {
                    let _ = reply.send(None);
                    return;
                };
                let mut config = node_config(
                    &self.scenario,
                    index,
                    &self.addrs[..=index],
                    self.observer.clone(),
                );
                join_through(&mut config, join_addr);
                let name = config.name.clone();
                self.trace(format!("membership: start {name}, joining"));
                self.nodes.push(spawn_node(&self.shared, index, config));
                self.started_addrs
                    .fetch_max(self.nodes.len(), Ordering::Relaxed);
                let faults = self.disk_faults(index, false);
                sim_control::set_disk_faults(self.nodes[index].sim_id, faults);
                let _ = reply.send(Some(name));
            }
            Command::Kill { name } => {
                if let Some(index) = self.index_of(&name) {
                    self.trace(format!("membership: {name} is down for good"));
                    self.take(index);
                }
            }
            Command::WipeAndRestart { name } => {
                if let Some(index) = self.index_of(&name) {
                    self.trace(format!(
                        "membership: {name} loses its disk, restarts with the same flags"
                    ));
                    self.take(index);
                    sim_control::wipe_disk(self.nodes[index].sim_id);
                    self.restart(index);
                }
            }
            Command::Rejoin { name } => {
                if let Some(index) = self.index_of(&name) {
                    self.take(index);
                    if self.set_join(index) {
                        self.trace(format!("membership: {name} joins again, new incarnation"));
                        self.nodes[index].owned = false;
                        self.nodes[index].removed = false;
                        self.restart(index);
                    }
                }
            }
            // A removed machine is retired: no new fault starts on it (a removed node
            // restarted with its old data after its former peers restarted is not told it was
            // removed: they only remember removals seen since they started).
            Command::Removed { name } => {
                if let Some(index) = self.index_of(&name) {
                    self.nodes[index].removed = true;
                }
            }
            Command::Cut { key, pairs } => {
                let links = pairs
                    .iter()
                    .filter_map(|(a, b)| Some((self.index_of(a)?, self.index_of(b)?)))
                    .flat_map(|(a, b)| [(a, b), (b, a)])
                    .collect();
                self.trace(format!("membership: cut {pairs:?}"));
                self.active_cuts.insert(OPERATOR_CUTS + key, links);
                self.apply_network();
            }
            Command::Uncut { key } => {
                self.active_cuts.remove(&(OPERATOR_CUTS + key));
                self.apply_network();
            }
            Command::Leader { reply } => {
                let leader = self.current_leader().and_then(|index| {
                    let term = lock(&self.nodes[index].handle).as_ref()?.status().term;
                    Some((self.nodes[index].name.clone(), term))
                });
                let _ = reply.send(leader);
            }
            Command::Running { name, reply } => {
                let running = self.index_of(&name).is_some_and(|i| self.running(i));
                let _ = reply.send(running);
            }
        }
    }

    /// Looks inside every running node and feeds the invariant checker; `with_state_hash` also
    /// hashes each state machine (a pass over all of it: only the convergence check needs it).
    async fn inspect_all(&self, with_state_hash: bool) -> Vec<(usize, raft_kv::node::Inspection)> {
        let scope = InspectScope {
            log: true,
            state_hash: with_state_hash,
        };
        let mut inspections = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.crashed || node.paused {
                continue;
            }
            let Some(handle) = lock(&node.handle).clone() else {
                continue;
            };
            if let Ok(Ok(inspection)) =
                env::timeout(Duration::from_millis(300), handle.inspect(scope)).await
            {
                inspections.push((index, inspection));
            }
        }
        for (index, inspection) in &inspections {
            let status = &inspection.status;
            if status.soft_state.role != Role::Leader {
                continue;
            }
            if let Err(detail) =
                one_change_in_flight(&inspection.config_indexes, status.hard_state.commit)
            {
                self.shared.fail(
                    ONE_CHANGE_IN_FLIGHT,
                    format!(
                        "leader {} in term {}: {detail}",
                        self.nodes[*index].name, status.soft_state.term
                    ),
                    Vec::new(),
                );
            }
        }
        let views: Vec<_> = inspections
            .iter()
            .map(|(index, inspection)| {
                let mut view = inspection.view.clone();
                view.id = self.checker_id(*index);
                view
            })
            .collect();
        if !views.is_empty() {
            let verdict = lock(&self.checker).observe(&views);
            if let Err(violation) = verdict {
                self.shared.fail(
                    format!("{} (periodic inspection)", violation.property()),
                    self.with_names(&violation.to_string()),
                    Vec::new(),
                );
            }
        }
        inspections
    }
}

/// The property of the check below.
pub const ONE_CHANGE_IN_FLIGHT: &str = "membership: one change in flight";

/// At most one configuration change uncommitted in a leader's log (single-server changes,
/// thesis §4.1): `config_indexes` are the configuration entries in its log, `commit` its commit
/// index.
pub fn one_change_in_flight(config_indexes: &[u64], commit: u64) -> Result<(), String> {
    let uncommitted: Vec<u64> = config_indexes
        .iter()
        .copied()
        .filter(|&index| index > commit)
        .collect();
    if uncommitted.len() > 1 {
        return Err(format!(
            "configuration changes at {uncommitted:?} all above the commit index {commit}"
        ));
    }
    Ok(())
}

/// Watches every node's events: at most one leader per term (Raft §5.2, election safety) and no
/// two nodes applying different entries at one index (§5.4.3, state machine safety).
async fn monitor(
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    checker: Arc<Mutex<InvariantChecker>>,
    shared: Shared,
    names: BTreeMap<u64, String>,
    triggers: mpsc::UnboundedSender<Trigger>,
    quota_bytes: Option<u64>,
    rate_limited: bool,
) {
    let mut quota_check = quota_bytes.map(crate::quota_check::QuotaCheck::new);
    let name = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
    while let Some(event) = events.recv().await {
        let at = virtual_ms();
        match event {
            NodeEvent::Role {
                node,
                term,
                role,
                leader,
            } => {
                shared.trace(format!(
                    "{at:>6} ms  {} is {role:?} in term {term} (leader {:?})",
                    name(node),
                    leader.map(name)
                ));
                // A follower in a new term with no leader was just asked for its vote.
                let new_term = terms.insert(node, term).is_none_or(|old| term > old);
                if new_term && role == Role::Follower && leader.is_none() {
                    let _ = triggers.send(Trigger::Voter(node));
                }
                if role == Role::Leader {
                    shared.lock().coverage.leaders_elected += 1;
                    match leaders.get(&term) {
                        Some(&other) if other != node => shared.fail(
                            "election safety (Raft §5.2)",
                            format!(
                                "{} and {} both became leader in term {term}",
                                name(other),
                                name(node)
                            ),
                            Vec::new(),
                        ),
                        _ => {
                            leaders.insert(term, node);
                        }
                    }
                }
            }
            NodeEvent::Applied {
                node,
                index,
                term,
                digest,
            } => {
                shared.trace(format!(
                    "{at:>6} ms  {} applied {index} (term {term}, digest {digest:016x})",
                    name(node)
                ));
                if let Err(violation) = lock(&checker).observe_applied(node, index, term, digest) {
                    let detail = names
                        .iter()
                        .fold(violation.to_string(), |text, (id, name)| {
                            text.replace(&id.to_string(), name)
                        });
                    shared.fail("state machine safety (Raft §5.4.3)", detail, Vec::new());
                }
            }
            NodeEvent::SnapshotWriting { node, index } => {
                shared.trace(format!(
                    "{at:>6} ms  {} writes a snapshot at {index}",
                    name(node)
                ));
                shared.lock().snapshots_writing.insert(node);
                let _ = triggers.send(Trigger::SnapshotWriter(node));
            }
            NodeEvent::SnapshotTaken {
                node,
                index,
                file_bytes,
            } => {
                shared.trace(format!(
                    "{at:>6} ms  {} took a snapshot at {index} ({file_bytes} bytes)",
                    name(node)
                ));
                let mut rec = shared.lock();
                rec.snapshots_writing.remove(&node);
                rec.coverage.snapshots_taken += 1;
            }
            NodeEvent::Changed {
                node,
                index,
                changes,
            } => {
                let changes: Vec<_> = changes.into_iter().map(watch_change).collect();
                if rate_limited {
                    let mut rec = shared.lock();
                    for change in &changes {
                        if let (crate::rate_check::GREEDY_KEY, Some(value)) =
                            (change.key.as_str(), &change.value)
                        {
                            rec.rate.applied_values.insert(value.clone());
                        }
                    }
                }
                if let Some(check) = &mut quota_check {
                    if let Err(detail) = check.observe(index, &changes) {
                        shared.fail(
                            "quota: a store holds more than the quota in force",
                            format!("{detail} (reported by {})", name(node)),
                            Vec::new(),
                        );
                    }
                }
                let observed = shared
                    .lock()
                    .watch_truth
                    .observe(&name(node), index, changes);
                if let Err(detail) = observed {
                    shared.fail("watch: nodes applied different changes", detail, Vec::new());
                }
            }
            NodeEvent::Restored { node, index } => {
                shared.trace(format!(
                    "{at:>6} ms  {} restored a snapshot at {index}",
                    name(node)
                ));
                shared.lock().coverage.snapshots_installed += 1;
            }
        }
    }
}

fn node_config(
    scenario: &Scenario,
    index: usize,
    addrs: &[String],
    observer: mpsc::UnboundedSender<NodeEvent>,
) -> NodeConfig {
    let name = Scenario::node_name(index);
    let mut config = NodeConfig::new(name.clone(), addrs[index].clone());
    config.peers = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, a)| a.clone())
        .collect();
    config.data_dir = std::path::PathBuf::from("/data").join(&name);
    config.tick_interval = Duration::from_millis(scenario.tick_ms);
    config.election_ticks = scenario.election_ticks;
    config.heartbeat_ticks = scenario.heartbeat_ticks;
    config.request_timeout = Duration::from_millis(scenario.request_timeout_ms);
    config.rpc_timeout = Duration::from_millis(scenario.rpc_timeout_ms);
    config.snapshot_entries = scenario.snapshot_entries;
    config.snapshot_bytes = scenario.snapshot_bytes;
    config.snapshot_tail_entries = scenario.snapshot_tail_entries;
    config.snapshot_chunk_bytes = scenario.snapshot_chunk_bytes;
    config.snapshot_transfer_chunk_bytes = scenario.transfer_chunk_bytes;
    config.rpc_body_bytes_max = scenario.rpc_body_bytes_max;
    config.wal_segment_bytes_max = scenario.wal_segment_bytes_max;
    if let Some(quota_bytes) = scenario.quota_bytes {
        config.quota_bytes = quota_bytes;
    }
    config.rate_limit = scenario.rate_limit;
    config.observer = Some(observer);
    config.peer_secret = Some(crate::stranger::sim_peer_secret());
    config.auth_tokens = Some(crate::stranger::sim_tokens());
    // Small enough that lagging watchers meet 410 (compacted) in some seeds.
    config.watch.history_events_max = WATCH_HISTORY_EVENTS;
    config
}

/// Changes each node keeps for watches in the simulation.
const WATCH_HISTORY_EVENTS: usize = 100;

/// A node's change as the watch checker holds it.
fn watch_change(change: raft_kv::kv::KeyChange) -> crate::watch_check::Change {
    crate::watch_check::Change {
        index: change.index,
        key: String::from_utf8_lossy(&change.key).into_owned(),
        value: match change.kind {
            raft_kv::kv::ChangeKind::Put { value, .. } => Some(value.to_vec()),
            raft_kv::kv::ChangeKind::Delete => None,
        },
    }
}

/// Checks every watcher against the changes the nodes applied.
fn check_watches(shared: &Shared) {
    let failures: Vec<String> = {
        let rec = shared.lock();
        rec.watchers
            .iter()
            .filter_map(|log| crate::watch_check::check(&rec.watch_truth, log).err())
            .collect()
    };
    match failures.into_iter().next() {
        Some(detail) => shared.fail("watch: a watcher's events", detail, Vec::new()),
        None => shared.trace("watch: every watcher saw exactly the committed changes".to_string()),
    }
}

/// Sets `config` to join the cluster through `join_addr` (`--join`, `--join-token`).
fn join_through(config: &mut NodeConfig, join_addr: String) {
    config.peers.clear();
    config.join = Some(join_addr);
    config.join_token = Some(crate::stranger::OPERATOR_TOKEN.to_string());
}

/// Creates the machine of node `index` and starts it with `config` (the init closure reads the
/// config at every boot, so the operator can switch it to `--join`).
fn spawn_node(shared: &Shared, index: usize, config: NodeConfig) -> NodeSlot {
    let name = config.name.clone();
    let config = Arc::new(Mutex::new(config));
    let slot: Arc<Mutex<Option<NodeHandle>>> = Arc::new(Mutex::new(None));
    let slot_for_init = slot.clone();
    let shared_for_init = shared.clone();
    let config_for_init = config.clone();
    let node = Handle::current()
        .create_node()
        .name(name.clone())
        .ip(ip(&format!("10.0.0.{}", index + 1)))
        .init(move || {
            let config = lock(&config_for_init).clone();
            let slot = slot_for_init.clone();
            let shared = shared_for_init.clone();
            async move {
                let name = config.name.clone();
                let on_started = |started: &NodeHandle| *lock(&slot) = Some(started.clone());
                if let Err(error) =
                    raft_kv::server::run(config, std::future::pending(), on_started).await
                {
                    shared.trace(format!("{:>6} ms  {name} stopped: {error}", virtual_ms()));
                    *lock(&slot) = None;
                }
            }
        })
        .build();
    NodeSlot {
        raft_id: node_id_of(&name),
        name,
        sim_id: node.id(),
        boot: 0,
        handle: slot,
        config,
        crashed: false,
        paused: false,
        disk_full: false,
        owned: false,
        removed: false,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a valid simulated IP address")
}

/// Runs `scenario` in a fresh madsim runtime on this thread, recording into `shared`. Call it on
/// a fresh OS thread per seed; a panic (a node's invariant assertion, a hang past the time limit)
/// propagates and leaves `shared` with everything recorded so far.
pub fn run_scenario(scenario: &Scenario, shared: &Shared) {
    let mut runtime = Runtime::with_seed_and_config(scenario.seed, madsim::Config::default());
    sim_control::install(&runtime);
    sim_control::set_plant(scenario.plant);
    runtime.set_time_limit(Duration::from_millis(TIME_LIMIT_MS));
    let scenario = scenario.clone();
    let shared_inner = shared.clone();
    runtime.block_on(async move { supervise(scenario, shared_inner).await });
}

async fn supervise(scenario: Scenario, shared: Shared) {
    let handle = Handle::current();
    let addrs: Vec<String> = (0..scenario.nodes_count)
        .map(|i| format!("10.0.0.{}:{PORT}", i + 1))
        .collect();
    // With membership operations the clients know the spare machines' addresses too.
    let spares = if scenario.membership.is_empty() {
        0
    } else {
        SPARES_MAX
    };
    let all_addrs: Vec<String> = (0..scenario.nodes_count + spares)
        .map(|i| format!("10.0.0.{}:{PORT}", i + 1))
        .collect();
    let (observer, events) = mpsc::unbounded_channel();
    let lease_config = node_config(&scenario, 0, &addrs, observer.clone());
    let checker = Arc::new(Mutex::new(InvariantChecker::new()));
    let mut nodes = Vec::new();
    for index in 0..scenario.nodes_count {
        let config = node_config(&scenario, index, &addrs, observer.clone());
        nodes.push(spawn_node(&shared, index, config));
    }
    let client_node = handle
        .create_node()
        .name("client")
        .ip(ip("10.0.1.1"))
        .build();
    let mut world = World {
        scenario: scenario.clone(),
        shared: shared.clone(),
        nodes,
        client_sim_id: client_node.id(),
        checker: checker.clone(),
        clogged: BTreeSet::new(),
        active_cuts: BTreeMap::new(),
        active_loss: BTreeMap::new(),
        active_delay: BTreeMap::new(),
        rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x00b0_07ed_c0de_0001),
        voter_crashes: 0,
        snapshot_crashes: 0,
        skipped_episodes: BTreeSet::new(),
        running_process_episodes: BTreeSet::new(),
        observer,
        addrs: all_addrs.clone(),
        started_addrs: Arc::new(AtomicUsize::new(scenario.nodes_count)),
    };
    for index in 0..scenario.nodes_count {
        let skew = scenario.clock_skews[index];
        sim_control::set_clock_skew(
            world.nodes[index].sim_id,
            skew.offset_ms * 1_000_000,
            skew.drift_ppm,
        );
        sim_control::set_disk_faults(world.nodes[index].sim_id, world.disk_faults(index, false));
    }
    world.apply_network();
    if scenario
        .clock_skews
        .iter()
        .any(|c| c.drift_ppm.abs() > 10_000)
    {
        shared.lock().coverage.fault("clock drift over 1%");
    }
    world.trace(format!(
        "start: {} nodes, {} clients",
        scenario.nodes_count, scenario.clients_count
    ));

    let names: BTreeMap<u64, String> = (0..scenario.nodes_count + spares)
        .map(|i| {
            let name = Scenario::node_name(i);
            (node_id_of(&name), name)
        })
        .collect();
    let (triggers_tx, mut triggers) = mpsc::unbounded_channel();
    let monitor_task = env::spawn(monitor(
        events,
        checker.clone(),
        shared.clone(),
        names,
        triggers_tx,
        scenario.quota_bytes,
        scenario.rate_limit.is_some(),
    ));

    // The clients.
    let stop_clients = Arc::new(AtomicBool::new(false));
    let mut ctx = ClientContext::new(&scenario, all_addrs.clone(), shared.clone());
    ctx.started = world.started_addrs.clone();
    let mut clients = Vec::new();
    for client in 0..scenario.clients_count {
        let ctx = ctx.clone();
        let stop = stop_clients.clone();
        let think_ms = scenario.think_ms;
        let duplicate = scenario.duplicate_write_probability;
        clients.push(client_node.spawn(async move {
            workload::client_loop(client as u64, ctx, think_ms, duplicate, stop).await;
        }));
    }

    if !scenario.idle && crate::stranger::runs_in(scenario.seed, scenario.plant) {
        let members: Vec<(u64, String)> = (0..scenario.nodes_count)
            .map(|i| (node_id_of(&Scenario::node_name(i)), addrs[i].clone()))
            .collect();
        let peers = (1..scenario.nodes_count)
            .map(|i| (Scenario::node_name(i), addrs[i].clone()))
            .collect();
        let cluster_id =
            raft_kv::node::cluster::ClusterInfo::new(&Scenario::node_name(0), &addrs[0], peers)
                .cluster_id;
        let (shared, stop) = (shared.clone(), stop_clients.clone());
        clients.push(client_node.spawn(crate::stranger::stranger_loop(
            cluster_id, members, shared, stop,
        )));
    }
    if scenario.rate_limit.is_some() {
        shared.lock().coverage.rate_limit = true;
        for greedy in [false, true] {
            let (addrs, shared, stop) = (addrs.clone(), shared.clone(), stop_clients.clone());
            clients.push(client_node.spawn(async move {
                if greedy {
                    crate::rate_check::greedy_loop(addrs, shared, stop).await;
                } else {
                    crate::rate_check::polite_loop(addrs, shared, stop).await;
                }
            }));
        }
    }
    let holder_ctx = HolderContext {
        addrs: all_addrs.clone(),
        ttl_s: lease_config.lease_ttl_min().as_secs(),
        call_timeout: ctx.call_timeout,
        shared: shared.clone(),
        ledger: Arc::default(),
    };
    // Lease holders run in every seed but those planting a bug that is not about leases:
    // their traffic moves the scheduling, and so the pinned catching seeds of those plants.
    let lease_holders = if !scenario.idle
        && matches!(
            scenario.plant,
            Plant::None | Plant::LeaseCountdownNotRestarted | Plant::CompactPastTransfer
        ) {
        LEASE_HOLDERS
    } else {
        0
    };
    for holder in 0..lease_holders {
        let holder_ctx = holder_ctx.clone();
        let stop = stop_clients.clone();
        let holder = scenario.clients_count as u64 + 1 + holder;
        clients.push(client_node.spawn(async move {
            lease_check::holder::holder_loop(holder, holder_ctx, stop).await;
        }));
    }
    // Transaction clients on the group `t0`+`t1`, in the unplanted seeds and those of the
    // transaction plant only, so that the other plants' pinned catching seeds keep their
    // schedule.
    if !scenario.idle
        && matches!(
            scenario.plant,
            Plant::None | Plant::TxnNotAtomic | Plant::CompactPastTransfer
        )
    {
        for txn_client in 0..TXN_CLIENTS {
            let ctx = ctx.clone();
            let stop = stop_clients.clone();
            let think_ms = scenario.think_ms;
            let number = scenario.clients_count as u64 + 1 + LEASE_HOLDERS + txn_client;
            let rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x0074_7800_0000_0000 ^ txn_client);
            clients.push(client_node.spawn(async move {
                workload::txn_loop(number, ctx, rng, think_ms, stop).await;
            }));
        }
    }
    let expiry_bound_ms = lease_check::expiry_bound_ms(
        lease_config.tick_interval * lease_config.election_ticks.saturating_mul(2),
    );
    drop(lease_config);
    // The watchers, stopped only after the clients. They stream in the seeds of the
    // coordination plants and the unplanted ones only, so that the pinned catching seeds of the
    // other plants keep the long polls' schedule.
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let streams_allowed = matches!(
        scenario.plant,
        Plant::None
            | Plant::LeaseCountdownNotRestarted
            | Plant::WatchResumeRepeats
            | Plant::CompactPastTransfer
    );
    let watchers = if scenario.idle {
        Vec::new()
    } else {
        crate::watch_client::selectors()
    };
    for (watcher, selector) in watchers.into_iter().enumerate() {
        let ctx = ctx.clone();
        let stop = stop_watchers.clone();
        let rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x0077_a7c4_0000_0000 ^ watcher as u64);
        let streams = streams_allowed && crate::watch_client::streams(watcher as u64);
        drop(client_node.spawn(async move {
            crate::watch_client::watch_loop(watcher as u64, selector, streams, ctx, rng, stop)
                .await;
        }));
    }

    // The membership operator, stopped when the faults end.
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let stop_operator = Arc::new(AtomicBool::new(false));
    if !scenario.membership.is_empty() {
        let operator = crate::membership::Operator {
            steps: scenario.membership.clone(),
            addrs: all_addrs.clone(),
            commands: commands_tx,
            shared: shared.clone(),
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x0e3b_e750_0000_0001),
            stop: stop_operator.clone(),
            call_timeout: ctx.call_timeout,
            started: scenario.nodes_count,
        };
        drop(client_node.spawn(operator.run()));
    } else {
        drop(commands_tx);
    }

    // Phase 1: the fault schedule, with periodic inspections in between.
    let mut actions: Vec<(u64, bool, usize)> = Vec::new();
    for (number, episode) in scenario.episodes.iter().enumerate() {
        actions.push((episode.start_ms, true, number));
        actions.push((episode.end_ms(), false, number));
    }
    // Ends before starts at one instant, so a node restarted and crashed at one moment is fine.
    actions.sort_by_key(|&(at, is_start, number)| (at, is_start, number));
    let mut next_inspect_ms = INSPECT_EVERY_MS;
    let mut next_action = 0;
    while virtual_ms() < FAULTS_END_MS && !shared.failed() {
        let action_at = actions.get(next_action).map_or(FAULTS_END_MS, |a| a.0);
        let wake =
            sleep_until_ms_or_trigger(next_inspect_ms.min(action_at), &mut triggers, &mut commands)
                .await;
        match wake {
            Some(Wake::Trigger(Trigger::Voter(voter))) => {
                world.maybe_crash_voter(voter).await;
                continue;
            }
            Some(Wake::Trigger(Trigger::SnapshotWriter(writer))) => {
                world.maybe_crash_snapshot_writer(writer).await;
                continue;
            }
            Some(Wake::Command(command)) => {
                world.handle_command(command);
                continue;
            }
            None => {}
        }
        if next_inspect_ms <= action_at {
            world.inspect_all(false).await;
            next_inspect_ms = virtual_ms() + INSPECT_EVERY_MS;
            continue;
        }
        if let Some(&(_, is_start, number)) = actions.get(next_action) {
            if is_start {
                world.start_episode(number);
            } else {
                world.end_episode(number);
            }
            next_action += 1;
        }
    }

    stop_operator.store(true, Ordering::Relaxed);
    if !shared.failed() {
        let leader_ms = heal_and_check_liveness(&mut world, &stop_clients, clients, &ctx).await;
        if let Some(leader_ms) = leader_ms.filter(|_| !shared.failed()) {
            let check = client_node.spawn(async move {
                lease_check::holder::check_let_go_leases(&holder_ctx, leader_ms, expiry_bound_ms)
                    .await;
            });
            let _ = check.await;
        }
    }
    stop_clients.store(true, Ordering::Relaxed);
    shared.close_pending_as_unknown();
    check_history(&shared);
    if scenario.rate_limit.is_some() && !shared.failed() {
        crate::rate_check::check_run(&shared);
    }
    stop_watchers.store(true, Ordering::Relaxed);
    check_watches(&shared);
    shared.lock().virtual_ms = virtual_ms();
    let torn_files = world
        .nodes
        .iter()
        .map(|node| sim_control::torn_files(node.sim_id))
        .sum();
    shared.lock().coverage.faults_add("torn writes", torn_files);
    // Kill every machine so no task outlives the seed.
    for node in &world.nodes {
        handle.kill(node.sim_id);
    }
    handle.kill(world.client_sim_id);
    monitor_task.abort();
}

/// Phase 2: heal every fault, then demand a leader, the clients' operations to finish, every
/// replica to converge, and a final read of every key. Returns when (virtual ms) the leader
/// after the heal was agreed, `None` if a check failed.
async fn heal_and_check_liveness(
    world: &mut World,
    stop_clients: &Arc<AtomicBool>,
    clients: Vec<madsim::task::JoinHandle<()>>,
    ctx: &ClientContext,
) -> Option<u64> {
    let shared = world.shared.clone();
    world.trace("heal: every fault ends".to_string());
    world.active_cuts.clear();
    world.active_loss.clear();
    world.active_delay.clear();
    world.apply_network();
    for index in 0..world.nodes.len() {
        // Machines the operator took or removed stay as they are (removed ones must stop).
        if world.nodes[index].owned || world.nodes[index].removed {
            continue;
        }
        if world.nodes[index].paused {
            Handle::current().resume(world.nodes[index].sim_id);
            world.nodes[index].paused = false;
        }
        // A node whose disk filled up stopped serving by design: fix the disk, restart it.
        let disk_was_full = world.nodes[index].disk_full;
        if disk_was_full {
            let faults = world.disk_faults(index, false);
            sim_control::set_disk_faults(world.nodes[index].sim_id, faults);
            world.nodes[index].disk_full = false;
        }
        // A crashed node, or one whose process stopped (it could not start), is restarted.
        if disk_was_full || world.nodes[index].crashed || lock(&world.nodes[index].handle).is_none()
        {
            world.trace(format!("heal: restart {}", world.nodes[index].name));
            if !world.nodes[index].crashed {
                world.kill(index);
            }
            world.restart(index);
        }
    }

    // A leader that every running node follows, within the bound.
    let heal_ms = virtual_ms();
    let leader_deadline_ms = heal_ms + LEADER_AFTER_HEAL_MS_MAX;
    let leader_ms = loop {
        if let Some(leader) = agreed_leader(world) {
            world.trace(format!(
                "liveness: {} leads, {} ms after the heal",
                world.nodes[leader].name,
                virtual_ms() - heal_ms
            ));
            break virtual_ms();
        }
        if virtual_ms() >= leader_deadline_ms {
            shared.fail(
                "liveness: leader after heal",
                format!(
                    "no leader followed by every member {LEADER_AFTER_HEAL_MS_MAX} ms after the \
                     heal; members {:?}; {}",
                    world
                        .final_members()
                        .iter()
                        .map(|&i| world.nodes[i].name.as_str())
                        .collect::<Vec<_>>(),
                    statuses(world)
                ),
                Vec::new(),
            );
            return None;
        }
        env::sleep(Duration::from_millis(50)).await;
    };

    // The clients keep going on the healed cluster, then stop; their operations must finish.
    let mut next_inspect_ms = virtual_ms();
    while virtual_ms() < CLIENTS_STOP_MS && !shared.failed() {
        if virtual_ms() >= next_inspect_ms {
            world.inspect_all(false).await;
            next_inspect_ms = virtual_ms() + INSPECT_EVERY_MS;
        }
        env::sleep(Duration::from_millis(100)).await;
    }
    stop_clients.store(true, Ordering::Relaxed);
    let drain_deadline_ms = virtual_ms() + CLIENTS_DRAIN_MS_MAX;
    let all_done = async {
        for client in clients {
            let _ = client.await;
        }
    };
    if env::timeout(Duration::from_millis(CLIENTS_DRAIN_MS_MAX), all_done)
        .await
        .is_err()
    {
        let pending: Vec<String> = shared
            .pending_ops()
            .iter()
            .map(ToString::to_string)
            .collect();
        shared.fail(
            "liveness: client operations finish",
            format!(
                "operations still pending at {drain_deadline_ms} ms: {}",
                pending.join("; ")
            ),
            Vec::new(),
        );
        return None;
    }

    // Every replica converges: same applied index, same state hash, nothing left to apply.
    let converge_deadline_ms = virtual_ms() + CONVERGE_MS_MAX;
    loop {
        let members = world.final_members();
        let inspections: Vec<_> = world
            .inspect_all(true)
            .await
            .into_iter()
            .filter(|(index, _)| members.contains(index))
            .collect();
        if shared.failed() {
            return None;
        }
        let applied: BTreeSet<u64> = inspections
            .iter()
            .map(|(_, i)| i.kv_applied_index)
            .collect();
        let hashes: BTreeSet<Option<u64>> = inspections.iter().map(|(_, i)| i.state_hash).collect();
        let caught_up = inspections
            .iter()
            .all(|(_, i)| i.kv_applied_index == i.status.hard_state.commit);
        if inspections.len() == members.len()
            && applied.len() == 1
            && hashes.len() == 1
            && caught_up
        {
            world.trace(format!(
                "liveness: replicas converged at index {:?}",
                applied.first()
            ));
            break;
        }
        if virtual_ms() >= converge_deadline_ms {
            let detail: Vec<String> = inspections
                .iter()
                .map(|(index, i)| {
                    format!(
                        "{}: applied {} commit {} last {} hash {:016x}",
                        world.nodes[*index].name,
                        i.kv_applied_index,
                        i.status.hard_state.commit,
                        i.status.last_index,
                        i.state_hash.unwrap_or_default()
                    )
                })
                .collect();
            shared.fail(
                "liveness: replicas converge",
                format!(
                    "{} of {} members answered; {}",
                    inspections.len(),
                    members.len(),
                    detail.join("; ")
                ),
                Vec::new(),
            );
            return None;
        }
        env::sleep(Duration::from_millis(100)).await;
    }

    if !check_removed_stopped(world).await {
        return None;
    }

    // No acknowledged write lost: a final linearizable read of every key joins the history.
    let final_reader = world.scenario.clients_count as u64;
    let keys = ctx.keys.clone();
    let mut ctx = ctx.clone();
    if !world.scenario.membership.is_empty() {
        // The clients know every address a node may ever have, most of them spare machines
        // that never ran: asked at random, 20 tries could all miss the few members (seed 710).
        // Only seeds with membership, so the others keep their schedule.
        let running: Vec<String> = (0..world.nodes.len())
            .filter(|&i| world.running(i))
            .map(|i| world.addrs[i].clone())
            .collect();
        if !running.is_empty() {
            ctx.addrs = running;
        }
    }
    let client_node = Handle::current()
        .get_node(world.client_sim_id)
        .expect("the client machine exists");
    let shared_reader = shared.clone();
    let reads = client_node.spawn(async move {
        let http = HttpClient::new();
        let mut rng = env::rng();
        for key in keys {
            let mut read = false;
            for _ in 0..20 {
                let call = virtual_nanos();
                let slot = shared_reader.begin_op(Operation {
                    client: final_reader,
                    key: key.clone(),
                    input: KvInput::Get,
                    call,
                    ret: None,
                    output: None,
                });
                match workload::run_operation(&http, &ctx, &mut rng, &key, &KvInput::Get, "", false)
                    .await
                {
                    Ending::Definite(output) => {
                        shared_reader.end_op(slot, Some((virtual_nanos(), output)));
                        read = true;
                        break;
                    }
                    _ => shared_reader.drop_op(slot),
                }
                env::sleep(Duration::from_millis(100)).await;
            }
            if !read {
                return Err(key);
            }
        }
        Ok(())
    });
    match reads.await {
        Ok(Ok(())) => {
            world.trace("liveness: final reads done".to_string());
            return Some(leader_ms);
        }
        Ok(Err(key)) => shared.fail(
            "liveness: final read",
            format!("key {key:?} could not be read after the heal"),
            Vec::new(),
        ),
        Err(error) => shared.fail(
            "liveness: final read",
            format!("the final reader failed: {error}"),
            Vec::new(),
        ),
    }
    None
}

/// Nodes the operator removed stop (exit, or report removed) within the convergence bound.
async fn check_removed_stopped(world: &World) -> bool {
    let deadline_ms = virtual_ms() + CONVERGE_MS_MAX;
    loop {
        let members = world.final_members();
        let running: Vec<&str> = (0..world.nodes.len())
            .filter(|i| world.nodes[*i].removed && !members.contains(i) && world.running(*i))
            .map(|i| world.nodes[i].name.as_str())
            .collect();
        if running.is_empty() {
            return true;
        }
        if virtual_ms() >= deadline_ms {
            world.shared.fail(
                "membership: removed nodes stop",
                format!(
                    "removed from the cluster but still running {CONVERGE_MS_MAX} ms after \
                     the replicas converged: {running:?}"
                ),
                Vec::new(),
            );
            return false;
        }
        env::sleep(Duration::from_millis(100)).await;
    }
}

/// The node every running member (of the configuration the leader holds) agrees leads, if any.
fn agreed_leader(world: &World) -> Option<usize> {
    let leader = world.current_leader()?;
    let leader_status = lock(&world.nodes[leader].handle).as_ref()?.status();
    let members = world.final_members();
    if !members.contains(&leader) {
        return None;
    }
    for index in members {
        let node = &world.nodes[index];
        let status = lock(&node.handle).as_ref()?.status();
        if status.term != leader_status.term || status.leader != Some(world.nodes[leader].raft_id) {
            return None;
        }
    }
    Some(leader)
}

fn statuses(world: &World) -> String {
    let parts: Vec<String> = world
        .nodes
        .iter()
        .map(|node| match lock(&node.handle).as_ref() {
            Some(handle) => {
                let s = handle.status();
                format!(
                    "{}: {:?} term {} leader {} commit {} applied {}",
                    node.name,
                    s.role,
                    s.term,
                    s.leader
                        .map_or_else(|| "none".to_string(), |l| world.name_of_raft_id(l)),
                    s.commit_index,
                    s.applied_index
                )
            }
            None => format!("{}: not running", node.name),
        })
        .collect();
    parts.join("; ")
}

/// Checks the whole history for linearizability; records a violation with its operations.
fn check_history(shared: &Shared) {
    let history = shared.lock().history.clone();
    match linearizability::check(&history, Budget::steps(CHECK_STEPS_MAX)) {
        CheckResult::Ok => shared.trace(format!(
            "linearizability: {} operations linearizable",
            history.len()
        )),
        CheckResult::Unknown => {
            shared.trace(format!(
                "linearizability: budget ran out on {} operations",
                history.len()
            ));
            shared.lock().inconclusive = true;
        }
        CheckResult::Violation(violation) => shared.fail(
            format!("linearizability (key {:?})", violation.key),
            violation.explanation,
            violation.ops,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::one_change_in_flight;

    #[test]
    fn a_leader_log_with_two_uncommitted_changes_breaks_the_in_flight_check() {
        let error = one_change_in_flight(&[3, 7, 9], 6).unwrap_err();
        assert!(error.contains("[7, 9]"), "{error}");
        assert!(error.contains("commit index 6"), "{error}");
    }

    #[test]
    fn one_uncommitted_change_above_committed_ones_passes_the_in_flight_check() {
        assert_eq!(one_change_in_flight(&[3, 7, 9], 7), Ok(()));
        assert_eq!(
            one_change_in_flight(&[3, 7], 2),
            Err("configuration changes at [3, 7] all above the commit index 2".to_string())
        );
        assert_eq!(one_change_in_flight(&[], 0), Ok(()));
    }
}
