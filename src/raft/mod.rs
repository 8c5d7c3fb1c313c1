//! The consensus core: a pure, synchronous Raft state machine.
//!
//! It never touches a clock, a socket, a file or the OS random source. The driver feeds it
//! inputs and acts on its output:
//!
//! - inputs: [`Raft::tick`] (logical time), [`Raft::step`] (a message from a peer),
//!   [`Raft::propose`] (a client command), [`Raft::read_index`] (a linearizable read),
//!   [`Raft::transfer_leadership`], [`Raft::propose_conf_change`], [`Raft::compact_keeping`];
//! - output: a [`Ready`] record from [`Raft::ready`], which the driver handles in order and then
//!   acknowledges with [`Raft::advance`].
//!
//! ```text
//! loop {
//!     feed ticks, inbound messages and proposals into raft;
//!     let ready = raft.ready();
//!     send(ready.messages);                       // may leave at once
//!     wal.install(ready.snapshot); wal.append(ready.entries); wal.save(ready.hard_state);
//!     wal.sync();                                 // persist before you speak
//!     send(ready.persisted_messages);             // votes, append acknowledgements
//!     apply(ready.committed_entries); serve(ready.read_states);
//!     raft.advance(ready);
//! }
//! ```
//!
//! Layout: `core.rs` holds the state machine's fields and queries, and `core/` its behaviour
//! by concern (`election.rs`, `replication.rs`, `reads.rs`, `configuration.rs`, `step.rs` for
//! inbound messages, `ready.rs` for the output interface), `log.rs` the in-memory log and its
//! persistence markers, `progress.rs` the leader's per-follower flow control, `membership.rs` the configuration as
//! recorded in the log, `quorum.rs` and `read_only.rs` the majority and ReadIndex bookkeeping.
//! [`testkit`] drives whole clusters of cores deterministically for tests and benchmarks.

#![deny(missing_docs)]

mod core;
pub mod invariants;
mod log;
mod membership;
mod progress;
mod quorum;
mod read_only;
pub mod testkit;
#[cfg(test)]
mod tests;
mod types;

pub use types::*;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;

/// Tunables of one core. Times are in ticks; the driver decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks` (must be < `election_ticks`).
    pub heartbeat_ticks: u32,
    /// Thesis §9.6: campaign only after a pre-vote round shows the election could be won.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader within the minimum election timeout refuse votes.
    pub check_quorum: bool,
    /// At most this many entries in one `Append`.
    pub max_entries_per_append: usize,
    /// At most this many entry bytes in one `Append` (one entry is always allowed).
    pub max_bytes_per_append: u64,
    /// At most this many `Append`s in flight to one follower during pipelined replication.
    pub max_inflight_appends: usize,
    /// Proposals are refused while this many bytes of the leader's log are uncommitted.
    pub max_uncommitted_bytes: u64,
    /// Largest single proposal payload accepted.
    pub max_proposal_bytes: u64,
    /// At most this many ReadIndex requests waiting for confirmation.
    pub max_pending_reads: usize,
}

impl Config {
    /// Defaults that suit a LAN cluster with a 10 ms tick.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_append: 256,
            max_bytes_per_append: 1 << 20,
            max_inflight_appends: 64,
            max_uncommitted_bytes: 64 << 20,
            max_proposal_bytes: 8 << 20,
            max_pending_reads: 65_536,
        }
    }
}

/// Why the core refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader accepts proposals and reads; `leader` is the one this node knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
    /// The uncommitted part of the leader's log is over `max_uncommitted_bytes`.
    #[error("too many uncommitted bytes ({uncommitted} + {proposed} > {limit})")]
    UncommittedBytesExceeded {
        /// Bytes already uncommitted.
        uncommitted: u64,
        /// Bytes of this proposal.
        proposed: u64,
        /// The limit.
        limit: u64,
    },
    /// The proposal alone exceeds `max_proposal_bytes`.
    #[error("proposal of {size} bytes is over the limit of {limit}")]
    ProposalTooLarge {
        /// The proposal's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A leadership transfer is under way; proposals wait for it to end.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is still uncommitted; one at a time (thesis §4.1).
    #[error("a membership change is already pending")]
    ConfChangePending,
    /// A new leader accepts a membership change only once it committed an entry of its own term
    /// (the single-server change fix, raft-dev 2015); its `Noop` usually commits within a round.
    #[error(
        "the leader of term {term} has not yet committed an entry of its term (commit {commit})"
    )]
    TermNotCommitted {
        /// The leader's term.
        term: Term,
        /// Its commit index, still of an earlier term.
        commit: Index,
    },
    /// Too many ReadIndex requests are waiting.
    #[error("too many pending reads ({limit})")]
    TooManyPendingReads {
        /// The limit.
        limit: u64,
    },
    /// A request named a node that is not a member, or an index out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// What the driver must do, in order, before calling [`Raft::advance`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Set when role, leader or term changed since the last `Ready`.
    pub soft_state: Option<SoftState>,
    /// Set when term, vote or commit changed: persist it.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: persist it, restore the state machine from it, and
    /// discard the persisted log up to its index. Handled before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to the persisted log. If `entries[0].index` is at or below the
    /// persisted last index, the persisted log is first truncated to `entries[0].index - 1`.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once (a leader's appends, heartbeats, snapshots and
    /// `TimeoutNow`, pre-vote requests and answers).
    pub messages: Vec<Message>,
    /// Messages that may leave only after `hard_state`, `snapshot` and `entries` are synced
    /// (vote requests and answers, append and heartbeat acknowledgements): Raft's "persist
    /// before you speak".
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply to the state machine, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads that are safe to serve once the state machine has applied their index.
    pub read_states: Vec<ReadState>,
    /// Filled by the core: what `advance` acknowledges.
    ack: ReadyAck,
}

/// What a `Ready` asked to persist and apply; kept apart from the public fields so the driver
/// may move those out before calling [`Raft::advance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ReadyAck {
    /// The last (index, term) of `entries`, if any.
    last_entry: Option<(Index, Term)>,
    /// The snapshot index, if a snapshot was handed out.
    snapshot_index: Option<Index>,
    /// The index of the last committed entry handed out, if any.
    last_committed: Option<Index>,
}

/// What a node restarts from: everything it had persisted and synced.
#[derive(Clone, Debug, Default)]
pub struct RestoreState {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The latest persisted snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The persisted log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// A read-only view of a core for tests, metrics and the HTTP API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// The node's role, leader and term.
    pub soft_state: SoftState,
    /// The node's term, vote and commit index.
    pub hard_state: HardState,
    /// The highest index handed out for applying.
    pub applied_index: Index,
    /// The index of the last log entry.
    pub last_index: Index,
    /// The index covered by the latest snapshot (0 if none).
    pub snapshot_index: Index,
    /// The current membership (the latest in the log, committed or not: thesis §4.1).
    pub membership: Membership,
}

// RAFT-CORE-API: the signatures below are the contract the node, the simulator, the tests and
// the fuzzers are written against; the behaviour lives in `core.rs` and `core/`.
/// The consensus core of one node.
#[derive(Debug)]
pub struct Raft {
    core: core::RaftCore,
}

impl Raft {
    /// Creates a core from what was persisted. `initial_membership` is used when neither the
    /// snapshot nor the log holds a configuration (a fresh cluster). `rng` draws election
    /// timeouts; the driver seeds it.
    ///
    /// The node starts as a follower with `applied_index` = the snapshot index: the driver
    /// restores its state machine from `restore.snapshot` and the core hands out the committed
    /// entries after it again. Entries at or below the snapshot index are ignored; the rest must
    /// be contiguous from `snapshot index + 1`, with terms not above the persisted term.
    pub fn new(
        config: Config,
        initial_membership: Membership,
        restore: RestoreState,
        rng: ChaCha8Rng,
    ) -> Result<Raft, Error> {
        Ok(Raft {
            core: core::RaftCore::new(config, initial_membership, restore, rng)?,
        })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.core.guarded(|core| core.tick())
    }

    /// Handles a message from a peer. Messages with nonsense contents (wrong receiver, sender 0
    /// or this node, term 0, non-contiguous entries, ...) and answers from non-members (vote
    /// answers from non-voters, other responses from non-members) are dropped with an
    /// `Err` saying why and change nothing. Requests (vote requests included: thesis §4.1) and a
    /// leader's `Append`, `Heartbeat`, `InstallSnapshot` and `TimeoutNow` are handled even from a
    /// node this node does not know as a member: a
    /// lagging follower may not yet hold the configuration that added its leader.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        self.core.guarded(|core| core.step(message))
    }

    /// Appends a client command to the leader's log; returns its index. The command is committed
    /// when a `committed_entries` entry with this index and the current term comes out of `ready`;
    /// an entry at this index with another term means the proposal was lost.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, Error> {
        self.core.guarded(|core| core.propose(data))
    }

    /// Proposes a single-server membership change (thesis §4.1), one at a time.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Index, Error> {
        self.core.guarded(|core| core.propose_conf_change(change))
    }

    /// Asks for a linearizable read point (Raft §6.4). Once leadership is confirmed by a
    /// heartbeat round, a [`ReadState`] with `context` comes out of `ready`. A leader that is
    /// deposed before confirmation never releases it; the driver times such reads out.
    pub fn read_index(&mut self, context: ReadContext) -> Result<(), Error> {
        self.core.guarded(|core| core.read_index(context))
    }

    /// Hands leadership to `to` (thesis §3.10): catch it up, then send `TimeoutNow`. Proposals are
    /// refused while the transfer runs; it is abandoned after an election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), Error> {
        self.core.guarded(|core| core.transfer_leadership(to))
    }

    /// Starts an election now (a pre-vote first if enabled), as if the election timer fired.
    pub fn campaign(&mut self) {
        self.core.guarded(|core| core.campaign())
    }

    /// Records a snapshot the driver took of the state machine at `index` (which must be
    /// applied) and discards the in-memory log up to it, except the last `tail_entries` entries
    /// the snapshot covers, so a follower less than that far behind catches up from the log
    /// rather than receiving the snapshot. The node passes an empty `data`: the state lives in a
    /// snapshot file, never in the core.
    pub fn compact_keeping(
        &mut self,
        index: Index,
        data: Bytes,
        tail_entries: u64,
    ) -> Result<(), Error> {
        self.core
            .guarded(|core| core.compact(index, data, tail_entries))
    }

    /// The meta of a snapshot of the state machine at the applied `index`: its term and the
    /// membership in force at that index. `None` if `index` is not applied or its term was
    /// compacted away.
    pub fn snapshot_meta_at(&self, index: Index) -> Option<SnapshotMeta> {
        self.core.snapshot_meta_at(index)
    }

    /// Whether `ready` would return anything.
    pub fn has_ready(&self) -> bool {
        self.core.has_ready()
    }

    /// Collects what the driver must do next.
    pub fn ready(&mut self) -> Ready {
        self.core.guarded(|core| core.ready())
    }

    /// Acknowledges that everything in `ready` was persisted, synced, sent and applied.
    pub fn advance(&mut self, ready: &Ready) {
        self.core.guarded(|core| core.advance(ready))
    }

    /// A snapshot of the core's state for tests, metrics and the HTTP API.
    pub fn status(&self) -> Status {
        self.core.status()
    }

    /// The log entries in `[lo, hi)` still held in memory (after the snapshot).
    pub fn entries(&self, lo: Index, hi: Index) -> &[Entry] {
        self.core.entries(lo, hi)
    }

    /// The term of the entry at `index`, if known (the snapshot's last entry included).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.core.term_at(index)
    }

    /// The latest snapshot this core holds, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.core.snapshot()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id()
    }

    /// This node's role, leader and term (cheaper than [`Raft::status`]).
    pub fn soft_state(&self) -> SoftState {
        self.core.soft_state()
    }

    /// This node's term, vote and commit index (cheaper than [`Raft::status`]).
    pub fn hard_state(&self) -> HardState {
        self.core.hard_state()
    }

    /// The current membership (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        self.core.membership()
    }

    /// The index of the `Config` entry that produced the current membership (the snapshot
    /// index if a snapshot folded it in, 0 for the initial membership): the `cas` precondition
    /// of the membership API.
    pub fn membership_index(&self) -> Index {
        self.core.membership_index()
    }

    /// The membership in force at the commit index (the latest one may not be committed yet).
    pub fn committed_membership(&self) -> &Membership {
        self.core.committed_membership()
    }

    /// On a leader, whether member `id` answered within the current check-quorum window
    /// (`None` on a non-leader or for a non-member).
    pub fn recently_active(&self, id: NodeId) -> Option<bool> {
        if self.core.soft_state().role != Role::Leader {
            return None;
        }
        self.core.recently_active(id)
    }

    /// The target of a leadership transfer in progress, if any.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.core.lead_transferee()
    }

    /// The highest log index the driver acknowledged as persisted.
    pub fn persisted_index(&self) -> Index {
        self.core.persisted_index()
    }

    /// On a leader, the highest index known to be replicated on `id` (this node: its persisted
    /// index); `None` on a non-leader or for a non-member.
    pub fn match_index(&self, id: NodeId) -> Option<Index> {
        if self.core.soft_state().role != Role::Leader {
            return None;
        }
        self.core.match_index(id)
    }

    /// On a leader, the lowest index of a snapshot it is sending to a follower; `None` on a
    /// follower or when no transfer is in progress. The follower will need the entries after
    /// it once it has installed the snapshot.
    pub fn lowest_snapshot_in_transfer(&self) -> Option<Index> {
        if self.core.soft_state().role != Role::Leader {
            return None;
        }
        self.core.lowest_snapshot_in_transfer()
    }
}
