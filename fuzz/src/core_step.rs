//! Target `core_step`: typed, arbitrary sequences of ticks, message deliveries, drops,
//! duplicates, replays, forged messages, proposals, membership changes, reads, compactions,
//! partitions, crashes and restarts against a small in-memory cluster of cores
//! ([`raft_kv::raft::testkit::Cluster`]), with Raft's safety properties
//! ([`raft_kv::raft::invariants::InvariantChecker`]) asserted after every step.
//!
//! Two worlds, chosen by the input:
//! - **cluster**: 1 to 5 honest cores over an adversarial network (any pending message may be
//!   delivered, dropped, duplicated or replayed later; links cut and healed; nodes crash and
//!   restart from what they synced). Every Raft safety property must hold. Forged messages come
//!   only from non-members: votes and answers must be refused (`Err`) and change nothing.
//! - **lone**: one core (node 1 of {1, 2, 3}) whose peers are the fuzzer: every message it
//!   receives is forged, with terms and indexes in small ranges so they land next to its log.
//!   Only what one honest node guarantees on its own is checked: its term and commit never go
//!   back, it never applies two different entries at one index, it never grants two votes in
//!   one term, and every core assertion holds (a panic is a finding).
//!
//! In both worlds every ReadIndex answer must be at or above every commit index any node had
//! reached when the read was asked (Raft §6.4), and each read is answered at most once.

use std::collections::{BTreeMap, VecDeque};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_kv::raft::invariants::{entry_digest, InvariantChecker, NodeView};
use raft_kv::raft::testkit::Cluster;
use raft_kv::raft::{Index, Message, MessageBody, NodeId, Raft, ReadContext, Term};

use super::messages::{FuzzConfChange, FuzzMessage, SmallData, SmallId};

/// Actions in one input, at most.
pub const ACTIONS_MAX: usize = 400;
/// Delivered messages remembered for later replays.
pub const REPLAY_HISTORY_MAX: usize = 64;

/// One fuzz input.
#[derive(Arbitrary, Debug)]
pub struct CoreInput {
    /// The world and its tunables.
    pub setup: Setup,
    /// What happens, in order.
    pub actions: Vec<Action>,
}

/// The world and the cores' tunables.
#[derive(Arbitrary, Debug)]
pub struct Setup {
    /// The lone-core world instead of the cluster.
    pub lone: bool,
    /// Cluster size minus one (taken modulo 5).
    pub nodes_minus_one: u8,
    /// Seed of every core's random stream.
    pub seed: u64,
    /// Pre-vote on.
    pub pre_vote: bool,
    /// Check-quorum on.
    pub check_quorum: bool,
    /// Election timeout minus 3 (taken modulo 6).
    pub election_ticks_minus_three: u8,
    /// Entries per append minus one (taken modulo 4).
    pub entries_per_append_minus_one: u8,
    /// Inflight appends minus one (taken modulo 4).
    pub inflight_appends_minus_one: u8,
    /// A small uncommitted-bytes limit instead of the default.
    pub tight_uncommitted_bytes: bool,
}

/// One step.
#[derive(Arbitrary, Debug)]
pub enum Action {
    /// One tick on a node.
    Tick(SmallId),
    /// One tick on every node.
    TickAll,
    /// A node campaigns now.
    Campaign(SmallId),
    /// A proposal on a node.
    Propose(SmallId, SmallData),
    /// A membership change proposed on a node.
    ProposeConfChange(SmallId, FuzzConfChange),
    /// A ReadIndex request on a node.
    ReadIndex(SmallId),
    /// A leadership transfer asked of a node.
    TransferLeadership(SmallId, SmallId),
    /// A node snapshots its state machine at its applied index minus `back`.
    Compact(SmallId, u8),
    /// Deliver the pending message at this position (modulo the queue length).
    Deliver(u8),
    /// Deliver every pending message, oldest first.
    DeliverAll,
    /// Drop the pending message at this position.
    Drop(u8),
    /// Duplicate the pending message at this position.
    Duplicate(u8),
    /// Send again a message delivered earlier (the network delays and duplicates).
    Replay(u8),
    /// Cut both directions between two nodes.
    Cut(SmallId, SmallId),
    /// Isolate a node.
    Isolate(SmallId),
    /// Restore every link.
    Heal,
    /// Crash a node (it keeps what it synced).
    Crash(SmallId),
    /// Restart a node from what it synced.
    Restart(SmallId),
    /// A forged message to a node (cluster: from a non-member; lone: from anyone).
    Forge(SmallId, FuzzMessage),
}

/// Runs one input; panics when a property does not hold.
pub fn run(data: &[u8]) {
    let Ok(input) = CoreInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut world = World::new(&input.setup);
    world.check("setup");
    for (step, action) in input.actions.iter().take(ACTIONS_MAX).enumerate() {
        world.apply(action);
        world.cluster.process_all();
        if world.lone {
            // The lone core's peers are the fuzzer: its own messages go nowhere, but its votes
            // are remembered.
            for message in world.cluster.take_messages() {
                world.note_vote(&message);
            }
        } else {
            for message in world.cluster.pending_messages() {
                world.note_vote(&message);
            }
        }
        world.check(&format!("step {step} ({action:?})"));
    }
}

struct World {
    cluster: Cluster,
    lone: bool,
    node_count: u64,
    checker: InvariantChecker,
    /// Per node, how many of its applied entries the checker has seen.
    applied_fed: BTreeMap<NodeId, usize>,
    /// Delivered messages, newest last.
    history: VecDeque<Message>,
    /// Outstanding reads: context -> (asking node, highest commit index anywhere when asked).
    reads: BTreeMap<ReadContext, (NodeId, Index)>,
    /// Per node, how many of its read states were checked.
    reads_seen: BTreeMap<NodeId, usize>,
    next_read_context: ReadContext,
    /// Votes granted: (voter, term) -> candidate.
    votes: BTreeMap<(NodeId, Term), NodeId>,
}

impl World {
    fn new(setup: &Setup) -> World {
        let node_count = if setup.lone {
            3
        } else {
            u64::from(setup.nodes_minus_one % 5) + 1
        };
        let election_ticks = u32::from(setup.election_ticks_minus_three % 6) + 3;
        let cluster = Cluster::with_config(node_count, setup.seed, |config| {
            config.pre_vote = setup.pre_vote;
            config.check_quorum = setup.check_quorum;
            config.election_ticks = election_ticks;
            config.heartbeat_ticks = 1;
            config.max_entries_per_append = usize::from(setup.entries_per_append_minus_one % 4) + 1;
            config.max_inflight_appends = usize::from(setup.inflight_appends_minus_one % 4) + 1;
            if setup.tight_uncommitted_bytes {
                config.max_uncommitted_bytes = 200;
            }
        });
        World {
            cluster,
            lone: setup.lone,
            node_count,
            checker: InvariantChecker::new(),
            applied_fed: BTreeMap::new(),
            history: VecDeque::new(),
            reads: BTreeMap::new(),
            reads_seen: BTreeMap::new(),
            next_read_context: 1,
            votes: BTreeMap::new(),
        }
    }

    /// A node of the world: ids map onto `1..=n` (the lone world acts on node 1 only).
    fn member(&self, id: SmallId) -> NodeId {
        if self.lone {
            1
        } else {
            id.0 % self.node_count + 1
        }
    }

    fn live(&self, id: NodeId) -> bool {
        self.cluster.live_ids().contains(&id)
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::Tick(id) => {
                let id = self.member(*id);
                self.cluster.tick(id);
            }
            Action::TickAll => {
                if self.lone {
                    self.cluster.tick(1);
                } else {
                    self.cluster.tick_all();
                }
            }
            Action::Campaign(id) => {
                let id = self.member(*id);
                if self.live(id) {
                    self.cluster.campaign(id);
                }
            }
            Action::Propose(id, data) => {
                let id = self.member(*id);
                if self.live(id) {
                    let _ = self.cluster.propose(id, data.0.clone());
                }
            }
            Action::ProposeConfChange(id, change) => {
                let id = self.member(*id);
                // Changes name members of the world only, so every voter is a node that runs.
                let target = SmallId(self.member(match change {
                    FuzzConfChange::AddVoter(t)
                    | FuzzConfChange::AddLearner(t)
                    | FuzzConfChange::Remove(t) => *t,
                }));
                let change = match change {
                    FuzzConfChange::AddVoter(_) => FuzzConfChange::AddVoter(target),
                    FuzzConfChange::AddLearner(_) => FuzzConfChange::AddLearner(target),
                    FuzzConfChange::Remove(_) => FuzzConfChange::Remove(target),
                };
                if self.live(id) {
                    let _ = self
                        .cluster
                        .propose_conf_change(id, change.to_conf_change());
                }
            }
            Action::ReadIndex(id) => {
                let id = self.member(*id);
                if self.live(id) {
                    let context = self.next_read_context;
                    self.next_read_context += 1;
                    let committed_anywhere = self.highest_commit();
                    if self.cluster.read_index(id, context).is_ok() {
                        self.reads.insert(context, (id, committed_anywhere));
                    }
                }
            }
            Action::TransferLeadership(id, to) => {
                let (id, to) = (self.member(*id), self.member(*to));
                if self.live(id) {
                    let _ = self.cluster.transfer_leadership(id, to);
                }
            }
            Action::Compact(id, back) => {
                let id = self.member(*id);
                if self.live(id) {
                    let index = self
                        .cluster
                        .applied_index(id)
                        .saturating_sub(u64::from(*back % 4));
                    let _ = self.cluster.compact(id, index);
                }
            }
            Action::Deliver(position) => self.deliver_at(usize::from(*position)),
            Action::DeliverAll => {
                let pending = self.cluster.pending_messages().len();
                for _ in 0..pending {
                    self.deliver_at(0);
                }
            }
            Action::Drop(position) => {
                let mut pending = self.cluster.take_messages();
                if !pending.is_empty() {
                    let position = usize::from(*position) % pending.len();
                    pending.remove(position);
                }
                self.resend(pending);
            }
            Action::Duplicate(position) => {
                let mut pending = self.cluster.take_messages();
                if !pending.is_empty() {
                    let position = usize::from(*position) % pending.len();
                    let copy = pending[position].clone();
                    pending.push(copy);
                }
                self.resend(pending);
            }
            Action::Replay(position) => {
                if !self.history.is_empty() {
                    let position = usize::from(*position) % self.history.len();
                    let message = self.history[position].clone();
                    self.cluster.send(message);
                }
            }
            Action::Cut(a, b) => {
                let (a, b) = (self.member(*a), self.member(*b));
                if a != b {
                    self.cluster.drop_between(a, b);
                }
            }
            Action::Isolate(id) => {
                let id = self.member(*id);
                self.cluster.isolate(id);
            }
            Action::Heal => self.cluster.heal(),
            Action::Crash(id) => {
                let id = self.member(*id);
                self.cluster.crash(id);
            }
            Action::Restart(id) => {
                let id = self.member(*id);
                self.cluster.restart(id);
                self.checker.node_restarted(id);
                self.reads_seen.insert(id, 0);
                self.reads.retain(|_, (asker, _)| *asker != id);
            }
            Action::Forge(to, forged) => self.forge(*to, forged),
        }
    }

    /// Puts messages back on the network in the given order.
    fn resend(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.cluster.send(message);
        }
    }

    /// Delivers the pending message at `position` (modulo the queue length).
    fn deliver_at(&mut self, position: usize) {
        let mut pending = self.cluster.take_messages();
        if pending.is_empty() {
            return;
        }
        let chosen = pending.remove(position % pending.len());
        self.cluster.send(chosen.clone());
        self.resend(pending);
        if let Some(delivered) = self.cluster.deliver_one() {
            self.note_vote(&delivered);
            if self.history.len() == REPLAY_HISTORY_MAX {
                self.history.pop_front();
            }
            self.history.push_back(delivered);
        }
    }

    fn forge(&mut self, to: SmallId, forged: &FuzzMessage) {
        let to = self.member(to);
        if !self.live(to) {
            return;
        }
        let mut message = forged.to_message(to);
        if self.lone {
            // Snapshot data must be the testkit's state machine format: empty means "nothing
            // recorded".
            if let MessageBody::InstallSnapshot { snapshot } = &mut message.body {
                snapshot.data = Bytes::new();
            }
            let _ = self.cluster.node_mut(to).step(message);
            return;
        }
        // In the honest cluster only a non-member may lie. A core accepts a leader's messages
        // (Append, Heartbeat, InstallSnapshot) from outside its configuration on purpose: a
        // joining node learns its configuration from the leader's log. A forged leader is a
        // Byzantine peer, outside what Raft defends against, so those kinds are not forged
        // here. TimeoutNow from anyone only starts an election, and a vote request from anyone is
        // weighed like any other; safety must survive both.
        let members = self.cluster.node(to).status().membership;
        if members.contains(message.from) {
            message.from = 0;
        }
        match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                return;
            }
            // Vote requests are handled whatever the configuration (thesis §4.1: a node with a
            // stale configuration must still be electable); safety must survive them.
            MessageBody::TimeoutNow | MessageBody::PreVote { .. } | MessageBody::Vote { .. } => {
                let _ = self.cluster.node_mut(to).step(message);
                return;
            }
            _ => {}
        }
        // Answers from a non-member must be refused untouched.
        let before = fingerprint(self.cluster.node(to));
        let had_ready = self.cluster.node(to).has_ready();
        let result = self.cluster.node_mut(to).step(message.clone());
        assert!(
            result.is_err(),
            "node {to} accepted {message:?} from non-member {}",
            message.from
        );
        let after = fingerprint(self.cluster.node(to));
        assert_eq!(
            before, after,
            "node {to} changed state on {message:?} from non-member {}",
            message.from
        );
        assert!(
            had_ready || !self.cluster.node(to).has_ready(),
            "node {to} has output after refusing {message:?} from non-member {}",
            message.from
        );
    }

    /// Records a granted vote and checks the voter never granted another candidate in that term.
    fn note_vote(&mut self, message: &Message) {
        if let MessageBody::VoteResponse { granted: true } = message.body {
            let earlier = self.votes.insert((message.from, message.term), message.to);
            if let Some(earlier) = earlier {
                assert_eq!(
                    earlier, message.to,
                    "node {} granted its term-{} vote to both {earlier} and {} (Raft §5.2)",
                    message.from, message.term, message.to
                );
            }
        }
    }

    fn highest_commit(&self) -> Index {
        self.cluster
            .live_ids()
            .into_iter()
            .map(|id| self.cluster.node(id).status().hard_state.commit)
            .max()
            .unwrap_or(0)
    }

    /// Checks every property on the world as it is now.
    fn check(&mut self, when: &str) {
        let mut views = Vec::new();
        for id in self.cluster.live_ids() {
            let raft = self.cluster.node(id);
            views.push(view_of(raft));
            // State machine safety: feed what the node applied since the last check.
            let applied = self.cluster.applied(id);
            let fed = self.applied_fed.entry(id).or_insert(0);
            if applied.len() < *fed {
                // The state machine was rebuilt (restart or snapshot): see it all again.
                *fed = 0;
            }
            for entry in &applied[*fed..] {
                let digest = entry_digest(entry.kind, &entry.data);
                if let Err(violation) =
                    self.checker
                        .observe_applied(id, entry.index, entry.term, digest)
                {
                    panic!("after {when}: {violation}");
                }
            }
            *fed = applied.len();
            // ReadIndex safety.
            let read_states = self.cluster.read_states(id);
            let seen = self.reads_seen.entry(id).or_insert(0);
            for read in &read_states[(*seen).min(read_states.len())..] {
                let Some((asker, committed_when_asked)) = self.reads.remove(&read.context) else {
                    panic!(
                        "after {when}: node {id} answered read {} twice or unasked",
                        read.context
                    );
                };
                assert_eq!(
                    asker, id,
                    "after {when}: read {} asked of {asker} answered by {id}",
                    read.context
                );
                assert!(
                    read.index >= committed_when_asked,
                    "after {when}: read {} on node {id} answered at index {} below the commit index {} \
                     reached before it was asked (Raft §6.4)",
                    read.context,
                    read.index,
                    committed_when_asked
                );
            }
            *seen = read_states.len();
        }
        if let Err(violation) = self.checker.observe(&views) {
            panic!("after {when}: {violation}");
        }
    }
}

/// What a refused message must leave untouched.
fn fingerprint(raft: &Raft) -> (raft_kv::raft::Status, Option<Term>) {
    let status = raft.status();
    let last_term = raft.term_at(status.last_index);
    (status, last_term)
}

/// The checker's view of one core.
fn view_of(raft: &Raft) -> NodeView {
    let status = raft.status();
    let snapshot_index = status.snapshot_index;
    let log = NodeView::digest_log(raft.entries(snapshot_index + 1, status.last_index + 1));
    NodeView {
        id: status.id,
        term: status.soft_state.term,
        role: status.soft_state.role,
        commit_index: status.hard_state.commit,
        snapshot_index,
        snapshot_term: raft.term_at(snapshot_index).unwrap_or(0),
        log,
    }
}
