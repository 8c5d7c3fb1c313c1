//! A deterministic in-memory cluster of Raft cores, for scenario tests, property tests,
//! benchmarks and fuzzing. Pure: no IO, no clock, no threads.
//!
//! Each node is driven the way the real driver does it: collect a [`Ready`], persist its
//! snapshot, entries and hard state into a [`MemStorage`] (the "sync" is immediate), route its
//! messages into the network, apply its committed entries to a tiny state machine that records
//! them, and [`Raft::advance`]. The network is a FIFO queue with per-link blocking; nothing is
//! delivered unless a test asks for it.
//!
//! ```
//! use raft_kv::raft::testkit::Cluster;
//!
//! let mut cluster = Cluster::new(3, 7);
//! let leader = cluster.run_until_leader(100).expect("a leader");
//! let index = cluster.propose(leader, "x".into()).unwrap();
//! cluster.deliver_all();
//! for id in 1..=3 {
//!     assert_eq!(cluster.applied(id).last().map(|e| e.index), Some(index));
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{
    ConfChange, Config, Entry, Error, HardState, Index, Membership, Message, NodeId, Raft,
    ReadContext, ReadState, Ready, RestoreState, Role, Snapshot,
};

/// Delivery rounds `deliver_all` allows before it declares the cluster livelocked.
const DELIVERY_ROUNDS_MAX: usize = 10_000;
/// Messages in flight beyond which the network is declared flooded (a message storm is a bug).
const NETWORK_MESSAGES_MAX: usize = 1 << 20;

/// What one node persisted and synced, mimicking the driver's write-ahead log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The latest persisted snapshot.
    pub snapshot: Option<Snapshot>,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl MemStorage {
    /// What a restart reads back.
    pub fn restore_state(&self) -> RestoreState {
        RestoreState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
        }
    }

    /// The index covered by the snapshot (0 without one).
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    /// The index of the last persisted entry (or of the snapshot).
    pub fn last_index(&self) -> Index {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Persists what a `Ready` hands out, in the documented order: snapshot, entries, hard state.
    pub fn apply_ready(&mut self, ready: &Ready) {
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot = Some(snapshot.clone());
            self.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            let base = self.snapshot_index();
            assert!(
                first.index > base && first.index <= self.last_index() + 1,
                "ready entries start at {} but storage holds ({base}, {}]",
                first.index,
                self.last_index()
            );
            self.entries.truncate((first.index - base - 1) as usize);
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
    }

    /// Records a snapshot taken locally and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot);
    }
}

/// One simulated node: its core (absent while crashed), storage and state machine.
struct Node {
    /// The core; `None` while the node is crashed.
    raft: Option<Raft>,
    /// What survived the last crash.
    storage: MemStorage,
    /// The node's config.
    config: Config,
    /// The membership the node starts from when its storage holds none.
    initial_membership: Membership,
    /// The state machine: every applied entry in order (when recording), from index 1.
    applied: Vec<Entry>,
    /// The index of the last applied entry (snapshots included).
    applied_index: Index,
    /// Reads released to this node's driver.
    read_states: Vec<ReadState>,
    /// How many times the node was restarted (varies its random stream).
    restarts: u64,
}

/// N cores over an in-memory network, driven deterministically from one seed.
pub struct Cluster {
    /// Nodes by id.
    nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, oldest first.
    network: VecDeque<Message>,
    /// Directed links `(from, to)` that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// The seed every node's random stream derives from.
    seed: u64,
    /// The config every node starts from (its `id` is replaced per node).
    base_config: Config,
    /// Messages a core refused, with the reason.
    step_errors: Vec<(Message, Error)>,
    /// Whether applied entries are kept (off for benchmarks).
    record_applied: bool,
    /// Messages delivered so far.
    delivered_count: u64,
    /// Messages dropped by blocked links or crashed receivers.
    dropped_count: u64,
}

/// The state machine's snapshot format: the applied entries, postcard-encoded.
fn encode_state_machine(applied: &[Entry]) -> Bytes {
    Bytes::from(postcard::to_allocvec(applied).expect("entries always encode"))
}

/// Reads back a state machine snapshot (empty data: nothing recorded).
fn decode_state_machine(data: &Bytes) -> Vec<Entry> {
    if data.is_empty() {
        return Vec::new();
    }
    postcard::from_bytes(data).expect("snapshot data is not a testkit state machine")
}

impl Cluster {
    /// `n` voters with ids `1..=n`, default config, random streams derived from `seed`.
    pub fn new(n: u64, seed: u64) -> Cluster {
        Cluster::with_config(n, seed, |_| {})
    }

    /// Like [`Cluster::new`], with `configure` applied to every node's config.
    pub fn with_config(n: u64, seed: u64, configure: impl Fn(&mut Config)) -> Cluster {
        let mut base_config = Config::new(1);
        configure(&mut base_config);
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            network: VecDeque::new(),
            blocked: BTreeSet::new(),
            seed,
            base_config,
            step_errors: Vec::new(),
            record_applied: true,
            delivered_count: 0,
            dropped_count: 0,
        };
        let membership = Membership::with_voters(1..=n);
        for id in 1..=n {
            cluster.add_node(id, membership.clone(), RestoreState::default());
        }
        cluster
    }

    /// A cluster whose nodes restart from the given persisted states (ids `1..=n`, all voters).
    /// Used to build the paper's log figures.
    pub fn from_states(
        seed: u64,
        states: Vec<RestoreState>,
        configure: impl Fn(&mut Config),
    ) -> Cluster {
        let mut cluster = Cluster::with_config(0, seed, configure);
        let n = states.len() as u64;
        let membership = Membership::with_voters(1..=n);
        for (offset, state) in states.into_iter().enumerate() {
            cluster.add_node(offset as u64 + 1, membership.clone(), state);
        }
        cluster
    }

    /// Adds (or replaces) node `id` starting from `restore`; `initial_membership` applies when
    /// the restored state holds no configuration.
    pub fn add_node(&mut self, id: NodeId, initial_membership: Membership, restore: RestoreState) {
        let mut config = self.base_config.clone();
        config.id = id;
        let storage = MemStorage {
            hard_state: restore.hard_state,
            snapshot: restore.snapshot.clone(),
            entries: restore.entries.clone(),
        };
        let mut node = Node {
            raft: None,
            storage,
            config,
            initial_membership,
            applied: Vec::new(),
            applied_index: 0,
            read_states: Vec::new(),
            restarts: 0,
        };
        Self::boot(self.seed, &mut node);
        self.nodes.insert(id, node);
    }

    /// Builds a node's core from its storage and restores its state machine from the snapshot.
    fn boot(seed: u64, node: &mut Node) {
        let id = node.config.id;
        let stream = seed
            ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ node.restarts.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let rng = ChaCha8Rng::seed_from_u64(stream);
        let raft = Raft::new(
            node.config.clone(),
            node.initial_membership.clone(),
            node.storage.restore_state(),
            rng,
        )
        .unwrap_or_else(|error| panic!("node {id} cannot start: {error}"));
        match &node.storage.snapshot {
            Some(snapshot) => {
                node.applied = decode_state_machine(&snapshot.data);
                node.applied_index = snapshot.meta.index;
            }
            None => {
                node.applied.clear();
                node.applied_index = 0;
            }
        }
        node.read_states.clear();
        node.raft = Some(raft);
    }

    /// Stops recording applied entries (benchmarks); `applied` then stays empty.
    pub fn set_record_applied(&mut self, record: bool) {
        self.record_applied = record;
    }

    /// Every node id, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of nodes that are not crashed.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn node_entry(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.node_entry(id)
            .raft
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is crashed"))
    }

    /// The core of node `id` (panics if it is crashed).
    pub fn node(&self, id: NodeId) -> &Raft {
        self.nodes
            .get(&id)
            .and_then(|n| n.raft.as_ref())
            .unwrap_or_else(|| panic!("node {id} is missing or crashed"))
    }

    /// Mutable access to a core, for tests that drive it directly.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Raft {
        self.raft_mut(id)
    }

    /// What node `id` persisted.
    pub fn storage(&self, id: NodeId) -> &MemStorage {
        &self.nodes[&id].storage
    }

    /// The entries node `id`'s state machine applied, in order from index 1 (entries covered by
    /// a snapshot come from the snapshot's data).
    pub fn applied(&self, id: NodeId) -> &[Entry] {
        &self.nodes[&id].applied
    }

    /// The index of the last entry node `id` applied.
    pub fn applied_index(&self, id: NodeId) -> Index {
        self.nodes[&id].applied_index
    }

    /// The reads released to node `id` since it (re)started.
    pub fn read_states(&self, id: NodeId) -> &[ReadState] {
        &self.nodes[&id].read_states
    }

    /// Messages a core refused, with the reason.
    pub fn step_errors(&self) -> &[(Message, Error)] {
        &self.step_errors
    }

    /// How many messages were delivered so far.
    pub fn delivered_count(&self) -> u64 {
        self.delivered_count
    }

    /// How many messages were dropped (blocked link or crashed receiver).
    pub fn dropped_count(&self) -> u64 {
        self.dropped_count
    }

    // ---------------------------------------------------------------- inputs

    /// One tick on node `id` (no-op if crashed).
    pub fn tick(&mut self, id: NodeId) {
        if let Some(raft) = self.node_entry(id).raft.as_mut() {
            raft.tick();
        }
    }

    /// One tick on every live node.
    pub fn tick_all(&mut self) {
        for id in self.live_ids() {
            self.tick(id);
        }
    }

    /// Makes node `id` start an election (pre-vote first if enabled).
    pub fn campaign(&mut self, id: NodeId) {
        self.raft_mut(id).campaign();
    }

    /// Proposes `data` on node `id`.
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<Index, Error> {
        self.raft_mut(id).propose(data)
    }

    /// Proposes a membership change on node `id`.
    pub fn propose_conf_change(&mut self, id: NodeId, change: ConfChange) -> Result<Index, Error> {
        self.raft_mut(id).propose_conf_change(change)
    }

    /// Asks node `id` for a ReadIndex read.
    pub fn read_index(&mut self, id: NodeId, context: ReadContext) -> Result<(), Error> {
        self.raft_mut(id).read_index(context)
    }

    /// Asks leader `id` to hand leadership to `to`.
    pub fn transfer_leadership(&mut self, id: NodeId, to: NodeId) -> Result<(), Error> {
        self.raft_mut(id).transfer_leadership(to)
    }

    /// Takes a snapshot of node `id`'s state machine at `index` (which it must have applied)
    /// and compacts its core and storage.
    pub fn compact(&mut self, id: NodeId, index: Index) -> Result<(), Error> {
        self.compact_keeping(id, index, 0)
    }

    /// Like [`Cluster::compact`], but the core keeps the last `tail_entries` covered entries
    /// (storage drops them all, as the node's WAL does: a restart loses the tail).
    pub fn compact_keeping(
        &mut self,
        id: NodeId,
        index: Index,
        tail_entries: u64,
    ) -> Result<(), Error> {
        let record = self.record_applied;
        let node = self.node_entry(id);
        let data = if record {
            let covered: Vec<Entry> = node
                .applied
                .iter()
                .take_while(|e| e.index <= index)
                .cloned()
                .collect();
            encode_state_machine(&covered)
        } else {
            Bytes::new()
        };
        let raft = node
            .raft
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is crashed"));
        raft.compact_keeping(index, data, tail_entries)?;
        let snapshot = raft
            .snapshot()
            .cloned()
            .expect("compaction leaves a snapshot");
        node.storage.compact(snapshot);
        Ok(())
    }

    /// Puts a message on the network (subject to blocked links), e.g. a forged one.
    pub fn send(&mut self, message: Message) {
        if self.blocked.contains(&(message.from, message.to)) {
            self.dropped_count += 1;
        } else {
            assert!(
                self.network.len() < NETWORK_MESSAGES_MAX,
                "network flooded: {} messages in flight (seed {})",
                self.network.len(),
                self.seed
            );
            self.network.push_back(message);
        }
    }

    // ---------------------------------------------------------------- driving

    /// Drains node `id`'s `Ready`s: persist, route messages, apply, advance.
    pub fn process(&mut self, id: NodeId) {
        loop {
            let record = self.record_applied;
            let node = self.node_entry(id);
            let Some(raft) = node.raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                return;
            }
            let mut ready = raft.ready();
            node.storage.apply_ready(&ready);
            if let Some(snapshot) = &ready.snapshot {
                node.applied = if record {
                    decode_state_machine(&snapshot.data)
                } else {
                    Vec::new()
                };
                node.applied_index = snapshot.meta.index;
            }
            for entry in &ready.committed_entries {
                assert_eq!(
                    entry.index,
                    node.applied_index + 1,
                    "node {id} applies index {} after {}",
                    entry.index,
                    node.applied_index
                );
                node.applied_index = entry.index;
                if record {
                    node.applied.push(entry.clone());
                }
            }
            node.read_states.append(&mut ready.read_states);
            raft.advance(&ready);
            let outgoing: Vec<Message> = ready
                .messages
                .drain(..)
                .chain(ready.persisted_messages.drain(..))
                .collect();
            for message in outgoing {
                self.send(message);
            }
        }
    }

    /// Drains every live node's `Ready`s, in id order.
    pub fn process_all(&mut self) {
        for id in self.live_ids() {
            self.process(id);
        }
    }

    /// Delivers one message to its receiver (without processing the receiver's output).
    fn deliver(&mut self, message: Message) {
        let blocked = self.blocked.contains(&(message.from, message.to));
        let receiver = self
            .nodes
            .get_mut(&message.to)
            .and_then(|n| n.raft.as_mut());
        match receiver {
            Some(raft) if !blocked => {
                self.delivered_count += 1;
                if let Err(error) = raft.step(message.clone()) {
                    self.step_errors.push((message, error));
                }
            }
            _ => self.dropped_count += 1,
        }
    }

    /// Delivers the oldest message in flight that can be delivered and returns it; messages
    /// on blocked links or to crashed nodes ahead of it are dropped.
    pub fn deliver_one(&mut self) -> Option<Message> {
        while let Some(message) = self.network.pop_front() {
            let deliverable = !self.blocked.contains(&(message.from, message.to))
                && self
                    .nodes
                    .get(&message.to)
                    .is_some_and(|n| n.raft.is_some());
            if deliverable {
                self.deliver(message.clone());
                return Some(message);
            }
            self.dropped_count += 1;
        }
        None
    }

    /// Processes and delivers until no node has output and no message is in flight.
    pub fn deliver_all(&mut self) {
        for _ in 0..DELIVERY_ROUNDS_MAX {
            self.process_all();
            if self.network.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.network);
            for message in batch {
                self.deliver(message);
            }
        }
        panic!(
            "cluster did not quiesce within {DELIVERY_ROUNDS_MAX} delivery rounds (seed {})",
            self.seed
        );
    }

    /// A copy of the messages in flight, oldest first.
    pub fn pending_messages(&self) -> Vec<Message> {
        self.network.iter().cloned().collect()
    }

    /// Removes and returns every message in flight.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.network.drain(..).collect()
    }

    /// Drops the messages in flight for which `predicate` holds; returns how many.
    pub fn drop_messages(&mut self, predicate: impl Fn(&Message) -> bool) -> usize {
        let before = self.network.len();
        self.network.retain(|m| !predicate(m));
        let dropped = before - self.network.len();
        self.dropped_count += dropped as u64;
        dropped
    }

    // ---------------------------------------------------------------- faults

    /// Drops everything between `a` and `b`, both ways.
    pub fn drop_between(&mut self, a: NodeId, b: NodeId) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.drop_between(id, other);
            }
        }
    }

    /// Splits the cluster into groups that cannot talk to each other; unlisted nodes are each
    /// alone.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        let ids = self.ids();
        for &a in &ids {
            for &b in &ids {
                let separated = match (group_of(a), group_of(b)) {
                    (Some(x), Some(y)) => x != y,
                    _ => a != b,
                };
                if separated {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crashes node `id`: its volatile state and the messages in flight to it are lost; what
    /// it persisted survives.
    pub fn crash(&mut self, id: NodeId) {
        self.node_entry(id).raft = None;
        let before = self.network.len();
        self.network.retain(|m| m.to != id);
        self.dropped_count += (before - self.network.len()) as u64;
    }

    /// Restarts node `id` from what it persisted (crashing it first if it runs).
    pub fn restart(&mut self, id: NodeId) {
        self.crash(id);
        let seed = self.seed;
        let node = self.node_entry(id);
        node.restarts += 1;
        Self::boot(seed, node);
    }

    // ---------------------------------------------------------------- observations

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r.soft_state())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    /// Ticks every node and delivers everything until some node leads, for at most
    /// `max_ticks` rounds.
    pub fn run_until_leader(&mut self, max_ticks: u32) -> Option<NodeId> {
        for _ in 0..=max_ticks {
            self.deliver_all();
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            self.tick_all();
        }
        None
    }
}
