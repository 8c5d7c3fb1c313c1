//! The behaviour behind [`super::Raft`]: elections (with pre-vote and check-quorum),
//! replication with flow control, commitment, ReadIndex, leadership transfer and single-server
//! membership changes. Pure and synchronous: inputs are calls, outputs are queued for `ready`.
//!
//! This file holds the state, the constructor, the queries and the invariant checks; the
//! behaviour is in `impl RaftCore` blocks by concern:
//!
//! | file | concern |
//! |---|---|
//! | `core/step.rs` | validating and dispatching inbound messages, the outbound queues |
//! | `core/election.rs` | ticks, election timer, pre-vote, vote, check-quorum, role changes |
//! | `core/replication.rs` | append, heartbeat and snapshot on both sides, flow control, commit, proposals |
//! | `core/reads.rs` | ReadIndex |
//! | `core/configuration.rs` | membership changes and leadership transfer |
//! | `core/ready.rs` | `has_ready`, `ready`, `advance`: the output interface |

mod configuration;
mod election;
mod reads;
mod ready;
mod replication;
mod step;

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;

use super::log::RaftLog;
use super::membership::{decode_conf_change, MembershipLog};
use super::progress::{Progress, ProgressState};
use super::read_only::ReadOnly;
use super::{
    Config, Entry, EntryKind, Error, HardState, Index, Membership, Message, NodeId, ReadState,
    RestoreState, Role, Snapshot, SoftState, Status, Term,
};

/// Ticks since the last contact with a leader when none was ever heard.
const NEVER_HEARD_TICKS: u32 = u32::MAX;

/// The state of one Raft node.
#[derive(Debug)]
pub(crate) struct RaftCore {
    /// This node's id.
    id: NodeId,
    /// Tunables.
    config: Config,
    /// Draws randomized election timeouts.
    rng: ChaCha8Rng,
    /// The latest term seen. Invariant: never decreases.
    term: Term,
    /// Whom this node voted for in `term`.
    vote: Option<NodeId>,
    /// The current role.
    role: Role,
    /// The leader of `term`, if known.
    leader: Option<NodeId>,
    /// The log and its progress markers.
    log: RaftLog,
    /// Membership as recorded in the log.
    membership: MembershipLog,
    /// Ticks since the election timer was reset (on a leader: since the last quorum check).
    election_elapsed: u32,
    /// The current randomized election timeout, in `[election_ticks, 2 * election_ticks)`.
    randomized_election_ticks: u32,
    /// A leader's ticks since its last heartbeat broadcast.
    heartbeat_elapsed: u32,
    /// Ticks since a leader last contacted this node (saturating).
    ticks_since_leader: u32,
    /// Votes received in the current (pre-)election, by voter.
    votes: BTreeMap<NodeId, bool>,
    /// A leader's view of every other member.
    progress: BTreeMap<NodeId, Progress>,
    /// The index of the latest membership change a leader may not yet see committed.
    pending_conf_index: Index,
    /// Bytes of entries this leader appended that are not yet committed.
    uncommitted_bytes: u64,
    /// The first index whose bytes count in `uncommitted_bytes` (after this leader's noop).
    uncommitted_counted_from: Index,
    /// The target of a leadership transfer in progress.
    lead_transferee: Option<NodeId>,
    /// Ticks since the transfer started.
    transfer_elapsed: u32,
    /// A leader has entries or commit news to broadcast at the next `ready`.
    broadcast_pending: bool,
    /// ReadIndex bookkeeping.
    reads: ReadOnly,
    /// Messages that may leave at once.
    messages: Vec<Message>,
    /// Messages that may leave only after the next `Ready` is persisted.
    persisted_messages: Vec<Message>,
    /// Reads confirmed and not yet handed out.
    read_states: Vec<ReadState>,
    /// The soft state last handed out.
    prev_soft_state: SoftState,
    /// The hard state last handed out.
    prev_hard_state: HardState,
}

/// Checks the config for values the core cannot work with.
fn validate_config(config: &Config) -> Result<(), Error> {
    let invalid = |why: &str| Err(Error::Invalid(format!("config: {why}")));
    if config.id == 0 {
        return invalid("id must be non-zero");
    }
    if config.election_ticks == 0 || config.election_ticks > u32::MAX / 2 {
        return invalid("election_ticks must be in 1..=u32::MAX/2");
    }
    if config.heartbeat_ticks == 0 || config.heartbeat_ticks >= config.election_ticks {
        return invalid("heartbeat_ticks must be in 1..election_ticks");
    }
    if config.max_entries_per_append == 0 || config.max_inflight_appends == 0 {
        return invalid("max_entries_per_append and max_inflight_appends must be positive");
    }
    Ok(())
}

impl RaftCore {
    /// Builds a core from persisted state; see [`super::Raft::new`].
    pub(crate) fn new(
        config: Config,
        initial_membership: Membership,
        restore: RestoreState,
        rng: ChaCha8Rng,
    ) -> Result<RaftCore, Error> {
        validate_config(&config)?;
        let RestoreState {
            hard_state,
            snapshot,
            entries,
        } = restore;
        if hard_state.vote == Some(0) {
            return Err(Error::Invalid("restored vote for node 0".into()));
        }
        let base_membership = snapshot
            .as_ref()
            .map(|s| s.meta.membership.clone())
            .unwrap_or(initial_membership);
        let log = RaftLog::restore(snapshot, entries, hard_state.commit).map_err(Error::Invalid)?;
        if log.last_term() > hard_state.term {
            return Err(Error::Invalid(format!(
                "restored log ends in term {} after the persisted term {}",
                log.last_term(),
                hard_state.term
            )));
        }
        let all_entries = log.slice(log.first_index(), log.last_index() + 1);
        for entry in all_entries.iter().filter(|e| e.kind == EntryKind::Config) {
            decode_conf_change(entry).map_err(Error::Invalid)?;
        }
        let mut membership = MembershipLog::new(Membership::default());
        membership.reset(base_membership, log.snapshot_index());
        membership.observe_appended(all_entries);
        let mut core = RaftCore {
            id: config.id,
            rng,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            membership,
            election_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            heartbeat_elapsed: 0,
            ticks_since_leader: NEVER_HEARD_TICKS,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            uncommitted_counted_from: 0,
            lead_transferee: None,
            transfer_elapsed: 0,
            broadcast_pending: false,
            reads: ReadOnly::default(),
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            prev_soft_state: SoftState {
                role: Role::Follower,
                leader: None,
                term: hard_state.term,
            },
            prev_hard_state: hard_state,
            config,
        };
        core.reset_election_timer();
        core.check_invariants();
        Ok(core)
    }

    /// This node's id.
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    /// This node's role, leader and term.
    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// This node's term, vote and commit index.
    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }

    /// A read-only snapshot of the state.
    pub(crate) fn status(&self) -> Status {
        Status {
            id: self.id,
            soft_state: self.soft_state(),
            hard_state: self.hard_state(),
            applied_index: self.log.applied,
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_index(),
            membership: self.membership.current().clone(),
        }
    }

    /// The log entries in `[lo, hi)` held in memory.
    pub(crate) fn entries(&self, lo: Index, hi: Index) -> &[Entry] {
        self.log.slice(lo, hi)
    }

    /// The term at `index`, if known.
    pub(crate) fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The latest snapshot held.
    pub(crate) fn snapshot(&self) -> Option<&Snapshot> {
        self.log.snapshot()
    }

    /// The current membership.
    pub(crate) fn membership(&self) -> &Membership {
        self.membership.current()
    }

    /// The target of a leadership transfer in progress.
    pub(crate) fn lead_transferee(&self) -> Option<NodeId> {
        self.lead_transferee
    }

    /// The persisted index the core knows of.
    pub(crate) fn persisted_index(&self) -> Index {
        self.log.persisted
    }

    /// A leader's view of a follower's match index.
    pub(crate) fn match_index(&self, id: NodeId) -> Option<Index> {
        if id == self.id {
            return Some(self.log.persisted);
        }
        self.progress.get(&id).map(|p| p.match_index)
    }

    /// The index of the `Config` entry that produced the current membership (the snapshot
    /// index when a snapshot folded it in, 0 for the initial membership).
    pub(crate) fn membership_index(&self) -> Index {
        self.membership.current_index()
    }

    /// The membership in force at the commit index.
    pub(crate) fn committed_membership(&self) -> &Membership {
        self.membership.at(self.log.commit)
    }

    /// On a leader, the lowest index of a snapshot being sent to a follower (the followers in
    /// snapshot mode), if any.
    pub(crate) fn lowest_snapshot_in_transfer(&self) -> Option<Index> {
        self.progress
            .values()
            .filter(|p| p.state == ProgressState::Snapshot)
            .map(|p| p.pending_snapshot_index)
            .min()
    }

    /// On a leader, whether `id` answered within the current check-quorum window.
    pub(crate) fn recently_active(&self, id: NodeId) -> Option<bool> {
        if id == self.id {
            return Some(true);
        }
        self.progress.get(&id).map(|p| p.recent_active)
    }

    /// Whether this node may campaign (it is a voter).
    fn is_voter(&self) -> bool {
        self.membership.current().voters.contains(&self.id)
    }

    /// Whether this node currently honours a leader lease (check-quorum): a leader always
    /// does, a follower while it heard from its leader within an election timeout.
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && (self.role == Role::Leader
                || (self.leader.is_some() && self.ticks_since_leader < self.config.election_ticks))
    }

    /// Whether the leader has committed an entry of its own term (Raft §6.4, §8).
    fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.log.commit) == Some(self.term)
    }

    /// Panics with the values when a structural invariant is broken. (Emptied, it changes
    /// nothing a correct core does: no input through the API breaks these invariants, so the
    /// library's tests cannot see cargo-mutants' mutant of it. `RaftLog::check_invariants` is
    /// tested on a corrupted log.)
    fn check_invariants(&self) {
        self.log.check_invariants();
        if self.role == Role::Leader {
            assert!(
                self.leader == Some(self.id),
                "node {} is leader of term {} but records leader {:?}",
                self.id,
                self.term,
                self.leader
            );
        }
        if self.role == Role::Candidate {
            assert!(
                self.vote == Some(self.id),
                "candidate {} voted for {:?} in term {}",
                self.id,
                self.vote,
                self.term
            );
        }
    }

    /// Runs `operation` and checks that term and commit did not decrease and the invariants hold.
    pub(crate) fn guarded<R>(&mut self, operation: impl FnOnce(&mut Self) -> R) -> R {
        let term_before = self.term;
        let commit_before = self.log.commit;
        let result = operation(self);
        assert!(
            self.term >= term_before,
            "node {}: term decreased from {term_before} to {}",
            self.id,
            self.term
        );
        assert!(
            self.log.commit >= commit_before,
            "node {}: commit decreased from {commit_before} to {}",
            self.id,
            self.log.commit
        );
        self.check_invariants();
        result
    }
}
