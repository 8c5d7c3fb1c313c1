//! The behaviour behind [`super::Raft`]: elections (with pre-vote and check-quorum),
//! replication with flow control, commitment, ReadIndex, leadership transfer and single-server
//! membership changes. Pure and synchronous: inputs are calls, outputs are queued for `ready`.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::plants::{self, Plant};

use super::log::RaftLog;
use super::membership::{decode_conf_change, MembershipLog};
use super::progress::{Progress, ProgressState};
use super::quorum::{quorum_value, vote_result, VoteResult};
use super::read_only::{PendingRead, ReadOnly};
use super::{
    ConfChange, Config, Entry, EntryKind, Error, HardState, Index, Membership, Message,
    MessageBody, NodeId, ReadContext, ReadState, Ready, ReadyAck, RejectHint, RestoreState, Role,
    Snapshot, SnapshotMeta, SoftState, Status, Term,
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

    // ---------------------------------------------------------------- queries

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

    // ---------------------------------------------------------------- invariants

    /// Panics with the values when a structural invariant is broken.
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

    // ---------------------------------------------------------------- time

    /// Draws a new randomized election timeout and restarts the election timer.
    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let spread = u64::from(self.config.election_ticks);
        self.randomized_election_ticks =
            self.config.election_ticks + (self.rng.next_u64() % spread) as u32;
    }

    /// One tick of logical time.
    pub(crate) fn tick(&mut self) {
        self.ticks_since_leader = self.ticks_since_leader.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// A non-leader's tick: campaign when the election timer fires.
    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_ticks {
            if self.is_voter() {
                self.campaign_with(self.config.pre_vote, false);
            } else {
                self.reset_election_timer();
            }
        }
    }

    /// A leader's tick: heartbeats, check-quorum, transfer timeout.
    fn tick_leader(&mut self) {
        self.ticks_since_leader = 0;
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.lead_transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_ticks {
                // Thesis §3.10: abort a transfer that did not finish within an election timeout.
                self.lead_transferee = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            let never_step_down = plants::active(Plant::LeaderNeverStepsDown);
            if self.config.check_quorum && !self.quorum_recently_active() && !never_step_down {
                // Thesis §6.2: a leader that cannot reach a quorum steps down.
                self.become_follower(self.term, None);
                return;
            }
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.detect_stalled_followers();
            self.broadcast_heartbeat();
        }
    }

    /// Whether a quorum of voters (this leader included if it votes) was active recently.
    fn quorum_recently_active(&self) -> bool {
        let voters = &self.membership.current().voters;
        let active = voters
            .iter()
            .filter(|&&v| v == self.id || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        active > voters.len() / 2
    }

    /// Restarts replication to followers whose pipeline or snapshot made no progress for a
    /// while (a lost `Append` or `InstallSnapshot` would otherwise stall them forever).
    fn detect_stalled_followers(&mut self) {
        let snapshot_beats_max = (self.config.election_ticks / self.config.heartbeat_ticks).max(2);
        let mut restart = Vec::new();
        for (&id, progress) in self.progress.iter_mut() {
            let moved = progress.match_index != progress.match_at_last_beat;
            progress.match_at_last_beat = progress.match_index;
            let waiting = match progress.state {
                ProgressState::Replicate => !progress.inflight_last_indexes.is_empty(),
                ProgressState::Snapshot => true,
                ProgressState::Probe => false,
            };
            if moved || !waiting {
                progress.stalled_beats = 0;
                continue;
            }
            progress.stalled_beats += 1;
            let beats_max = match progress.state {
                ProgressState::Snapshot => snapshot_beats_max,
                _ => 2,
            };
            if progress.stalled_beats >= beats_max {
                progress.become_probe();
                restart.push(id);
            }
        }
        for id in restart {
            self.send_appends_to(id);
        }
    }

    // ---------------------------------------------------------------- roles

    /// Clears the per-role state shared by every role change.
    fn reset_role_state(&mut self) {
        self.votes.clear();
        self.progress.clear();
        self.reads.reset();
        self.lead_transferee = None;
        self.transfer_elapsed = 0;
        self.broadcast_pending = false;
        self.heartbeat_elapsed = 0;
        self.uncommitted_bytes = 0;
        self.reset_election_timer();
    }

    /// Becomes a follower in `term` (a later term clears the vote).
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "node {}: becoming follower in term {term} below the current term {}",
            self.id,
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_role_state();
    }

    /// Starts a (pre-)election now, as if the election timer fired.
    pub(crate) fn campaign(&mut self) {
        self.campaign_with(self.config.pre_vote, false);
    }

    /// Starts a pre-vote round or a real election; `transfer` marks a `TimeoutNow` election.
    fn campaign_with(&mut self, pre_vote: bool, transfer: bool) {
        if self.role == Role::Leader || !self.is_voter() {
            return;
        }
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    /// Thesis §9.6: asks the voters whether they would vote, without raising the term.
    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_role_state();
        self.votes.insert(self.id, true);
        let body = MessageBody::PreVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        self.send_to_other_voters(self.term + 1, body);
        self.poll_votes();
    }

    /// Raft §5.2: raises the term, votes for itself and asks the voters.
    fn become_candidate(&mut self, transfer: bool) {
        self.term += 1;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.reset_role_state();
        self.votes.insert(self.id, true);
        let body = MessageBody::Vote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        self.send_to_other_voters(self.term, body);
        self.poll_votes();
    }

    /// Sends `body` in `term` to every voter but this node.
    fn send_to_other_voters(&mut self, term: Term, body: MessageBody) {
        let me = self.id;
        let voters: Vec<NodeId> = self.membership.current().voters.iter().copied().collect();
        for voter in voters.into_iter().filter(|&v| v != me) {
            self.send(voter, term, body.clone());
        }
    }

    /// Acts on the vote tally of the current (pre-)election.
    fn poll_votes(&mut self) {
        let voters = &self.membership.current().voters;
        let granted = voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&true))
            .count();
        let rejected = voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&false))
            .count();
        match vote_result(voters.len(), granted, rejected) {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    /// Raft §5.2, §8: takes leadership and appends a `Noop` of the new term.
    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "node {} becoming leader from {:?}",
            self.id,
            self.role
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reset_role_state();
        self.ticks_since_leader = 0;
        let last_index = self.log.last_index();
        for member in self.membership.current().members() {
            if member != self.id {
                self.progress.insert(member, Progress::new(last_index + 1));
            }
        }
        // Any membership change already in the log counts as pending until it commits.
        self.pending_conf_index = last_index;
        self.uncommitted_counted_from = last_index + 2;
        self.append_local(EntryKind::Noop, Bytes::new());
    }

    // ---------------------------------------------------------------- messages

    /// Queues a message; those whose promise rests on persisted state wait for the sync.
    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        match message.body {
            MessageBody::AppendResponse { .. } if plants::active(Plant::AckBeforeFsync) => {
                self.messages.push(message)
            }
            MessageBody::Vote { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::AppendResponse { .. }
            | MessageBody::HeartbeatResponse { .. } => self.persisted_messages.push(message),
            MessageBody::PreVote { .. }
            | MessageBody::PreVoteResponse { .. }
            | MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::TimeoutNow => self.messages.push(message),
        }
    }

    /// Rejects messages that no correct peer sends, before anything changes.
    fn validate(&self, message: &Message) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::Invalid(why));
        if message.to != self.id {
            return invalid(format!(
                "message to {} delivered to {}",
                message.to, self.id
            ));
        }
        if message.from == 0 || message.from == self.id {
            return invalid(format!("message from node {}", message.from));
        }
        if message.term == 0 {
            return invalid("message with term 0".into());
        }
        let membership = self.membership.current();
        let claims_leadership_of_my_term = message.term == self.term && self.role == Role::Leader;
        match &message.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            }
            | MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => {
                if *last_log_term > message.term || (*last_log_index == 0) != (*last_log_term == 0)
                {
                    return invalid(format!(
                        "vote request with last log ({last_log_index}, {last_log_term}) in term {}",
                        message.term
                    ));
                }
                // Thesis §4.1: requests are handled without consulting the configuration. A
                // server with a stale configuration may hold a voter that its own log calls a
                // learner or a stranger; dropping its requests deadlocked elections (found by
                // the property test with reconfiguration). A removed server cannot disrupt:
                // pre-vote and the lease check (§4.2.3) refuse it, and it cannot win without
                // the votes of servers that hold the change removing it.
            }
            MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => {
                if !membership.voters.contains(&message.from) {
                    return invalid(format!("vote response from non-voter {}", message.from));
                }
            }
            MessageBody::AppendResponse { index, reject_hint } => {
                if !membership.contains(message.from) {
                    return invalid(format!("append response from non-member {}", message.from));
                }
                if let Some(hint) = reject_hint {
                    if hint.term > message.term || hint.index > *index {
                        return invalid(format!(
                            "reject hint ({}, {}) for index {index} in term {}",
                            hint.index, hint.term, message.term
                        ));
                    }
                } else if claims_leadership_of_my_term && *index > self.log.last_index() {
                    return invalid(format!(
                        "append response acknowledges {index} beyond last index {}",
                        self.log.last_index()
                    ));
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                if !membership.contains(message.from) {
                    return invalid(format!(
                        "heartbeat response from non-member {}",
                        message.from
                    ));
                }
                if claims_leadership_of_my_term && *read_seq > self.reads.read_seq {
                    return invalid(format!(
                        "heartbeat response for read round {read_seq} beyond {}",
                        self.reads.read_seq
                    ));
                }
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                ..
            } => {
                if claims_leadership_of_my_term {
                    return invalid(format!(
                        "second leader {} in term {}",
                        message.from, self.term
                    ));
                }
                if *prev_log_term > message.term || (*prev_log_index == 0) != (*prev_log_term == 0)
                {
                    return invalid(format!(
                        "append after ({prev_log_index}, {prev_log_term}) in term {}",
                        message.term
                    ));
                }
                let mut previous_term = *prev_log_term;
                for (offset, entry) in entries.iter().enumerate() {
                    let expected = prev_log_index.checked_add(1 + offset as u64);
                    if Some(entry.index) != expected {
                        return invalid(format!(
                            "append entries not contiguous: entry {offset} has index {}",
                            entry.index
                        ));
                    }
                    if entry.term == 0 || entry.term < previous_term || entry.term > message.term {
                        return invalid(format!(
                            "append entry {} has term {} (previous {previous_term}, leader {})",
                            entry.index, entry.term, message.term
                        ));
                    }
                    if entry.kind == EntryKind::Config {
                        decode_conf_change(entry).map_err(Error::Invalid)?;
                    }
                    previous_term = entry.term;
                }
            }
            MessageBody::Heartbeat { .. } => {
                if claims_leadership_of_my_term {
                    return invalid(format!(
                        "second leader {} in term {}",
                        message.from, self.term
                    ));
                }
            }
            MessageBody::InstallSnapshot { snapshot } => {
                if claims_leadership_of_my_term {
                    return invalid(format!(
                        "second leader {} in term {}",
                        message.from, self.term
                    ));
                }
                let meta = &snapshot.meta;
                if meta.index == 0 || meta.term == 0 || meta.term > message.term {
                    return invalid(format!(
                        "snapshot at ({}, {}) in term {}",
                        meta.index, meta.term, message.term
                    ));
                }
                if meta.membership.voters.is_empty() {
                    return invalid("snapshot with no voters".into());
                }
            }
            MessageBody::TimeoutNow => {}
        }
        Ok(())
    }

    /// Handles one message from a peer.
    pub(crate) fn step(&mut self, message: Message) -> Result<(), Error> {
        self.validate(&message)?;
        if message.term > self.term {
            match &message.body {
                // Thesis §9.6: a pre-vote request never changes the receiver's state, and a
                // granted pre-vote carries the term the pre-candidate would campaign in.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Vote { transfer, .. } => {
                    if self.in_lease() && !transfer {
                        // Thesis §4.2.3: a live leader's lease shields the cluster from
                        // disruptive candidates (removed or partitioned servers).
                        return Ok(());
                    }
                    self.become_follower(message.term, None);
                }
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            self.answer_stale(&message);
            return Ok(());
        }
        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_pre_vote(from, term, last_log_index, last_log_term),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote(from, last_log_index, last_log_term),
            MessageBody::PreVoteResponse { granted } => {
                self.handle_vote_response(from, term, granted, true)
            }
            MessageBody::VoteResponse { granted } => {
                self.handle_vote_response(from, term, granted, false)
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => self.handle_append(from, prev_log_index, prev_log_term, entries, leader_commit),
            MessageBody::Heartbeat {
                leader_commit,
                read_seq,
            } => self.handle_heartbeat(from, leader_commit, read_seq),
            MessageBody::InstallSnapshot { snapshot } => self.handle_snapshot(from, snapshot),
            MessageBody::AppendResponse { index, reject_hint } => {
                self.handle_append_response(from, index, reject_hint)
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(from, read_seq)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(),
        }
        Ok(())
    }

    /// Raft §5.1: a request from an older term is rejected with the current term, so its
    /// sender learns it is stale; stale responses are dropped.
    fn answer_stale(&mut self, message: &Message) {
        let body = match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => MessageBody::HeartbeatResponse { read_seq: 0 },
            MessageBody::PreVote { .. } => MessageBody::PreVoteResponse { granted: false },
            MessageBody::Vote { .. } => MessageBody::VoteResponse { granted: false },
            _ => return,
        };
        self.send(message.from, self.term, body);
    }

    /// Thesis §9.6: would this node vote for the sender in `term`? Changes nothing here.
    fn handle_pre_vote(&mut self, from: NodeId, term: Term, last_index: Index, last_term: Term) {
        let can_vote = term > self.term
            || self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && !self.in_lease() && self.is_up_to_date(last_index, last_term);
        let answer_term = if granted { term } else { self.term };
        self.send(from, answer_term, MessageBody::PreVoteResponse { granted });
    }

    /// Raft §5.2, §5.4.1: one vote per term, only for a candidate at least as up to date.
    fn handle_vote(&mut self, from: NodeId, last_index: Index, last_term: Term) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && self.is_up_to_date(last_index, last_term);
        if granted {
            self.vote = Some(from);
            self.reset_election_timer();
        }
        self.send(from, self.term, MessageBody::VoteResponse { granted });
    }

    /// Raft §5.4.1: whether a candidate's log (`last_index`, `last_term`) is at least as up to
    /// date as ours.
    fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        plants::active(Plant::VoteWithoutLogCheck) || self.log.is_up_to_date(last_index, last_term)
    }

    /// Counts a (pre-)vote answer.
    fn handle_vote_response(&mut self, from: NodeId, term: Term, granted: bool, pre_vote: bool) {
        let (role, expected_term) = if pre_vote {
            (
                Role::PreCandidate,
                if granted { self.term + 1 } else { self.term },
            )
        } else {
            (Role::Candidate, self.term)
        };
        if self.role != role || term != expected_term {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        self.poll_votes();
    }

    /// Records contact from the leader of the current term.
    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
        self.ticks_since_leader = 0;
    }

    /// Raft §5.3 AppendEntries on a follower.
    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: Index,
    ) {
        self.follow(from);
        if prev_log_index < self.log.commit {
            // Everything up to commit matches any legitimate leader; tell it where we are.
            let index = self.log.commit;
            self.send(
                from,
                self.term,
                MessageBody::AppendResponse {
                    index,
                    reject_hint: None,
                },
            );
            return;
        }
        if self.log.term_at(prev_log_index) != Some(prev_log_term) {
            // Fast backtracking: point the leader at the last entry that could match.
            let bound = prev_log_index.min(self.log.last_index());
            let hint_index = self.log.find_conflict_by_term(bound, prev_log_term);
            let hint_term = self.log.term_at(hint_index).unwrap_or(0);
            self.send(
                from,
                self.term,
                MessageBody::AppendResponse {
                    index: prev_log_index,
                    reject_hint: Some(RejectHint {
                        index: hint_index,
                        term: hint_term,
                    }),
                },
            );
            return;
        }
        let last_new_index = prev_log_index + entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(&entries) {
            assert!(
                self.role != Role::Leader,
                "leader {} would truncate its own log at {conflict}",
                self.id
            );
            if conflict <= self.log.last_index() {
                self.log.truncate_from(conflict);
                self.membership.truncate_from(conflict);
            }
            let new_entries = entries.split_off((conflict - prev_log_index - 1) as usize);
            self.membership.observe_appended(&new_entries);
            self.log.append(new_entries);
        }
        self.log.commit_to(leader_commit.min(last_new_index));
        self.send(
            from,
            self.term,
            MessageBody::AppendResponse {
                index: last_new_index,
                reject_hint: None,
            },
        );
    }

    /// A heartbeat: the leader lives; commit what it says we hold.
    fn handle_heartbeat(&mut self, from: NodeId, leader_commit: Index, read_seq: u64) {
        self.follow(from);
        // leader_commit <= our match index on the leader, so those entries are ours too.
        self.log.commit_to(leader_commit.min(self.log.last_index()));
        self.send(from, self.term, MessageBody::HeartbeatResponse { read_seq });
    }

    /// Raft §7: install a snapshot newer than our commit index.
    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        self.follow(from);
        let index = snapshot.meta.index;
        if index <= self.log.commit {
            let commit = self.log.commit;
            self.send(
                from,
                self.term,
                MessageBody::AppendResponse {
                    index: commit,
                    reject_hint: None,
                },
            );
            return;
        }
        if self.log.term_at(index) == Some(snapshot.meta.term) {
            // We hold the snapshot's last entry: its prefix is committed, keep the log.
            self.log.commit_to(index);
        } else {
            self.membership
                .reset(snapshot.meta.membership.clone(), snapshot.meta.index);
            self.log.install_snapshot(snapshot);
        }
        self.send(
            from,
            self.term,
            MessageBody::AppendResponse {
                index,
                reject_hint: None,
            },
        );
    }

    /// Thesis §3.10: the leader asks us to campaign now.
    fn handle_timeout_now(&mut self) {
        if self.role != Role::Leader && self.is_voter() {
            self.campaign_with(false, true);
        }
    }

    /// A follower's answer to an `Append` or `InstallSnapshot`.
    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        reject_hint: Option<RejectHint>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        // A hint at index 0 (the follower holds nothing) yields 0: the answer is never above it.
        let probe_index =
            reject_hint.map(|hint| self.log.find_conflict_by_term(hint.index, hint.term));
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if let Some(probe_index) = probe_index {
            if progress.maybe_decrease_to(index, probe_index) {
                self.send_appends_to(from);
            }
            return;
        }
        let updated = progress.maybe_update(index);
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot if progress.match_index >= progress.pending_snapshot_index => {
                progress.become_replicate()
            }
            _ => {}
        }
        if progress.match_index.min(self.log.commit) > progress.commit_sent {
            self.broadcast_pending = true;
        }
        if updated {
            self.maybe_commit();
            if self.role != Role::Leader {
                return;
            }
        }
        if self.lead_transferee == Some(from)
            && self.progress.get(&from).map(|p| p.match_index) == Some(self.log.last_index())
        {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
        self.send_appends_to(from);
    }

    /// A follower confirmed our leadership (and maybe a read round).
    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if progress.state == ProgressState::Probe {
            progress.probe_sent = false;
        }
        if progress.match_index < last_index {
            self.send_appends_to(from);
        }
        if read_seq > 0 {
            let acked = self.reads.acks.entry(from).or_insert(0);
            *acked = (*acked).max(read_seq);
            self.release_confirmed_reads();
        }
    }

    // ---------------------------------------------------------------- replication

    /// Sends a follower everything flow control allows right now.
    fn send_appends_to(&mut self, to: NodeId) {
        while self.maybe_send_append(to) {}
    }

    /// Sends one `Append` (or the snapshot) to `to` if flow control allows and there is
    /// something to send; returns whether it did.
    fn maybe_send_append(&mut self, to: NodeId) -> bool {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused(self.config.max_inflight_appends) {
            return false;
        }
        let prev_log_index = progress.next_index - 1;
        if prev_log_index < self.log.log_start() {
            return self.send_snapshot(to);
        }
        let Some(prev_log_term) = self.log.term_at(prev_log_index) else {
            return false;
        };
        let probing = progress.state == ProgressState::Probe && progress.match_index < last_index;
        let entries = self
            .log
            .batch(
                progress.next_index,
                self.config.max_entries_per_append,
                self.config.max_bytes_per_append,
            )
            .to_vec();
        if entries.is_empty() && !probing {
            return false;
        }
        let sent_last_index = prev_log_index + entries.len() as u64;
        let leader_commit = self.log.commit;
        let progress = self.progress.get_mut(&to).expect("progress checked above");
        progress.sent_append(sent_last_index, !entries.is_empty());
        progress.commit_sent = progress.commit_sent.max(leader_commit.min(sent_last_index));
        self.send(
            to,
            self.term,
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            },
        );
        true
    }

    /// Raft §7: the follower needs entries we compacted; send the snapshot.
    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(snapshot) = self.log.snapshot().cloned() else {
            return false;
        };
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.become_snapshot(snapshot.meta.index);
        }
        self.send(to, self.term, MessageBody::InstallSnapshot { snapshot });
        true
    }

    /// Sends a heartbeat carrying the commit index the follower is known to hold.
    fn send_heartbeat(&mut self, to: NodeId) {
        let commit = self.log.commit;
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        let leader_commit = commit.min(progress.match_index);
        progress.commit_sent = progress.commit_sent.max(leader_commit);
        let read_seq = self.reads.read_seq;
        self.send(
            to,
            self.term,
            MessageBody::Heartbeat {
                leader_commit,
                read_seq,
            },
        );
    }

    /// Sends a heartbeat to every other member.
    fn broadcast_heartbeat(&mut self) {
        let members: Vec<NodeId> = self.progress.keys().copied().collect();
        for member in members {
            self.send_heartbeat(member);
        }
    }

    /// A leader's batched output, produced when the driver collects a `Ready`: new entries to
    /// every follower, commit news, and the heartbeat of a new read round.
    fn flush_leader_output(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members: Vec<NodeId> = self.progress.keys().copied().collect();
        if self.broadcast_pending {
            self.broadcast_pending = false;
            for &member in &members {
                self.send_appends_to(member);
            }
        }
        if self.reads.broadcast_pending {
            self.reads.broadcast_pending = false;
            self.broadcast_heartbeat();
            return;
        }
        let commit = self.log.commit;
        for member in members {
            let behind = self
                .progress
                .get(&member)
                .is_some_and(|p| commit.min(p.match_index) > p.commit_sent);
            if behind {
                self.send_heartbeat(member);
            }
        }
    }

    /// Raft §5.3, §5.4.2: commits the highest index a quorum holds, if it is of this term.
    fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let last_index = self.log.last_index();
        let voters = &self.membership.current().voters;
        let mut matches: Vec<Index> = voters
            .iter()
            .map(|&voter| {
                if voter == self.id {
                    self.log.persisted.min(last_index)
                } else {
                    self.progress.get(&voter).map_or(0, |p| p.match_index)
                }
            })
            .collect();
        let Some(index) = quorum_value(&mut matches, voters.len() / 2 + 1) else {
            return false;
        };
        // Raft §5.4.2 (Figure 8): only entries of the current term commit by counting replicas.
        if index <= self.log.commit || self.log.term_at(index) != Some(self.term) {
            return false;
        }
        let old_commit = self.log.commit;
        self.log.commit_to(index);
        self.on_commit_advanced(old_commit);
        true
    }

    /// Follow-up work once a leader's commit index moved past `old_commit`.
    fn on_commit_advanced(&mut self, old_commit: Index) {
        let commit = self.log.commit;
        let counted_from = (old_commit + 1).max(self.uncommitted_counted_from);
        let committed_bytes: u64 = self
            .log
            .slice(counted_from, commit + 1)
            .iter()
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(committed_bytes);
        self.broadcast_pending = true;
        if self.log.term_at(old_commit) != Some(self.term) {
            // The first commit of this term: reads that waited for it get a read round.
            let waiting = self.reads.pending.iter().any(|r| r.read_seq == 0);
            if waiting {
                let read_seq = self.reads.round_for_new_read();
                for read in self.reads.pending.iter_mut().filter(|r| r.read_seq == 0) {
                    read.read_seq = read_seq;
                    read.index = commit;
                }
                self.release_confirmed_reads();
            }
        }
        // Thesis §4.2.2: a leader removed from the voters steps down once the change commits.
        let removal_committed = self
            .membership
            .latest_change_index()
            .is_some_and(|index| index <= commit);
        if !self.is_voter() && removal_committed {
            self.become_follower(self.term, None);
        }
    }

    /// Releases every read whose round a quorum of voters acknowledged.
    fn release_confirmed_reads(&mut self) {
        if self.reads.pending.is_empty() {
            return;
        }
        let voters = &self.membership.current().voters;
        let mut acked: Vec<u64> = voters
            .iter()
            .map(|&voter| {
                if voter == self.id {
                    u64::MAX
                } else {
                    self.reads.acks.get(&voter).copied().unwrap_or(0)
                }
            })
            .collect();
        if let Some(confirmed) = quorum_value(&mut acked, voters.len() / 2 + 1) {
            self.reads.release_up_to(confirmed, &mut self.read_states);
        }
    }

    /// Keeps one progress per member other than this node.
    fn sync_progress_with_membership(&mut self) {
        let membership = self.membership.current().clone();
        self.progress.retain(|id, _| membership.contains(*id));
        self.reads
            .acks
            .retain(|id, _| membership.voters.contains(id));
        let next_index = self.log.last_index();
        for member in membership.members().filter(|&m| m != self.id) {
            self.progress
                .entry(member)
                .or_insert_with(|| Progress::new(next_index));
        }
        if self
            .lead_transferee
            .is_some_and(|t| !membership.voters.contains(&t))
        {
            self.lead_transferee = None;
        }
    }

    // ---------------------------------------------------------------- client requests

    /// Appends an entry of the current term to the leader's own log.
    fn append_local(&mut self, kind: EntryKind, data: Bytes) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            kind,
            data,
        };
        if index >= self.uncommitted_counted_from {
            self.uncommitted_bytes += entry.size_bytes();
        }
        self.membership
            .observe_appended(std::slice::from_ref(&entry));
        self.log.push(entry);
        self.broadcast_pending = true;
        index
    }

    /// Refuses requests on a non-leader.
    fn ensure_leader(&self) -> Result<(), Error> {
        if self.role == Role::Leader {
            Ok(())
        } else {
            Err(Error::NotLeader {
                leader: self.leader,
            })
        }
    }

    /// Checks the proposal limits for an entry of `data_bytes` payload bytes.
    fn check_proposal(&self, data_bytes: u64) -> Result<(), Error> {
        self.ensure_leader()?;
        if data_bytes > self.config.max_proposal_bytes {
            return Err(Error::ProposalTooLarge {
                size: data_bytes,
                limit: self.config.max_proposal_bytes,
            });
        }
        if self.lead_transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        let entry_bytes = data_bytes + 24;
        // One entry is always accepted on an empty pipeline, so a large proposal can progress.
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + entry_bytes > self.config.max_uncommitted_bytes
        {
            return Err(Error::UncommittedBytesExceeded {
                uncommitted: self.uncommitted_bytes,
                proposed: entry_bytes,
                limit: self.config.max_uncommitted_bytes,
            });
        }
        Ok(())
    }

    /// Appends a client command; see [`super::Raft::propose`].
    pub(crate) fn propose(&mut self, data: Bytes) -> Result<Index, Error> {
        self.check_proposal(data.len() as u64)?;
        Ok(self.append_local(EntryKind::Normal, data))
    }

    /// Appends a membership change; see [`super::Raft::propose_conf_change`].
    pub(crate) fn propose_conf_change(&mut self, change: ConfChange) -> Result<Index, Error> {
        self.ensure_leader()?;
        if self.lead_transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        if self.pending_conf_index > self.log.commit {
            return Err(Error::ConfChangePending);
        }
        // The single-server change fix (Ongaro, raft-dev 2015): until this leader committed an
        // entry of its own term, a change of an earlier leader may still be in flight unseen
        // (appended on a minority, not in this log); two changes from leaders of different
        // terms could then both commit and two disjoint majorities elect two leaders.
        if !plants::active(Plant::SkipCurrentTermCheck) && !self.committed_in_current_term() {
            return Err(Error::TermNotCommitted {
                term: self.term,
                commit: self.log.commit,
            });
        }
        let current = self.membership.current();
        let target = change.target();
        if target == 0 {
            return Err(Error::Invalid("membership change names node 0".into()));
        }
        if matches!(change, ConfChange::Remove(_)) && !current.contains(target) {
            return Err(Error::Invalid(format!("node {target} is not a member")));
        }
        if matches!(change, ConfChange::AddLearnerWithRecord(..))
            && current.voters.contains(&target)
        {
            return Err(Error::Invalid(format!(
                "node {target} is a voter; remove it before it joins again"
            )));
        }
        if change.apply(current).voters.is_empty() {
            return Err(Error::Invalid(format!("{change:?} would leave no voter")));
        }
        let data = postcard::to_allocvec(&change)
            .map_err(|error| Error::Invalid(format!("cannot encode {change:?}: {error}")))?;
        self.check_proposal(data.len() as u64)?;
        let index = self.append_local(EntryKind::Config, Bytes::from(data));
        self.pending_conf_index = index;
        self.sync_progress_with_membership();
        // The quorum changed: the commit point and confirmed reads may move.
        self.maybe_commit();
        if self.role == Role::Leader {
            self.release_confirmed_reads();
        }
        Ok(index)
    }

    /// Registers a ReadIndex request; see [`super::Raft::read_index`].
    pub(crate) fn read_index(&mut self, context: ReadContext) -> Result<(), Error> {
        self.ensure_leader()?;
        if self.reads.pending.len() >= self.config.max_pending_reads {
            return Err(Error::TooManyPendingReads {
                limit: self.config.max_pending_reads as u64,
            });
        }
        if !self.committed_in_current_term() {
            // Raft §6.4: the commit index is only known to be current once an entry of this
            // term committed; wait for it.
            self.reads.pending.push_back(PendingRead {
                context,
                index: 0,
                read_seq: 0,
            });
            return Ok(());
        }
        let index = self.log.commit;
        let voters = &self.membership.current().voters;
        let unconfirmed = plants::active(Plant::ReadWithoutConfirm)
            || plants::active(Plant::LeaderNeverStepsDown);
        if (voters.len() == 1 && voters.contains(&self.id)) || unconfirmed {
            self.read_states.push(ReadState { context, index });
            return Ok(());
        }
        let read_seq = self.reads.round_for_new_read();
        self.reads.pending.push_back(PendingRead {
            context,
            index,
            read_seq,
        });
        Ok(())
    }

    /// Starts a leadership transfer; see [`super::Raft::transfer_leadership`].
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) -> Result<(), Error> {
        self.ensure_leader()?;
        if to == self.id {
            return Ok(());
        }
        if !self.membership.current().voters.contains(&to) {
            return Err(Error::Invalid(format!(
                "cannot transfer leadership to non-voter {to}"
            )));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        self.transfer_elapsed = 0;
        let caught_up =
            self.progress.get(&to).map(|p| p.match_index) == Some(self.log.last_index());
        if caught_up {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else if let Some(progress) = self.progress.get_mut(&to) {
            // Restart replication from the known match point so a stalled pipeline cannot
            // outlast the transfer timeout.
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
            self.send_appends_to(to);
        }
        Ok(())
    }

    /// The meta a snapshot of the state machine at `index` must carry: the term there and the
    /// membership in force there (not the current one, which may be later and uncommitted).
    /// `None` unless `index` is applied and its term is still known.
    pub(crate) fn snapshot_meta_at(&self, index: Index) -> Option<SnapshotMeta> {
        if index > self.log.applied {
            return None;
        }
        Some(SnapshotMeta {
            index,
            term: self.log.term_at(index)?,
            membership: self.membership.at(index).clone(),
        })
    }

    /// Records a snapshot the driver took; see [`super::Raft::compact_keeping`].
    pub(crate) fn compact(
        &mut self,
        index: Index,
        data: Bytes,
        tail_entries: u64,
    ) -> Result<(), Error> {
        if index <= self.log.snapshot_index() {
            return Err(Error::Invalid(format!(
                "compaction to {index} at or below the snapshot index {}",
                self.log.snapshot_index()
            )));
        }
        if index > self.log.applied {
            return Err(Error::Invalid(format!(
                "compaction to {index} beyond the applied index {}",
                self.log.applied
            )));
        }
        let term = self
            .log
            .term_at(index)
            .unwrap_or_else(|| panic!("applied index {index} has no term in the log"));
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: self.membership.at(index).clone(),
            },
            data,
        };
        self.log.compact(snapshot, tail_entries);
        self.membership.compact_to(index);
        Ok(())
    }

    // ---------------------------------------------------------------- ready / advance

    /// Whether `ready` would return anything.
    pub(crate) fn has_ready(&self) -> bool {
        self.soft_state() != self.prev_soft_state
            || self.hard_state() != self.prev_hard_state
            || self.log.pending_snapshot.is_some()
            || self.log.has_unstable()
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_next_committed()
            || !self.read_states.is_empty()
            || (self.role == Role::Leader
                && (self.broadcast_pending || self.reads.broadcast_pending))
    }

    /// Collects what the driver must do next.
    pub(crate) fn ready(&mut self) -> Ready {
        self.flush_leader_output();
        let mut ready = Ready::default();
        let mut ack = ReadyAck::default();
        let soft_state = self.soft_state();
        if soft_state != self.prev_soft_state {
            self.prev_soft_state = soft_state;
            ready.soft_state = Some(soft_state);
        }
        let hard_state = self.hard_state();
        if hard_state != self.prev_hard_state {
            self.prev_hard_state = hard_state;
            ready.hard_state = Some(hard_state);
        }
        if let Some(snapshot) = self.log.pending_snapshot.take() {
            ack.snapshot_index = Some(snapshot.meta.index);
            self.log.unacked_snapshot_index = Some(snapshot.meta.index);
            ready.snapshot = Some(snapshot);
        }
        let unstable = self.log.unstable_entries();
        if let Some(last) = unstable.last() {
            ack.last_entry = Some((last.index, last.term));
            ready.entries = unstable.to_vec();
            self.log.unstable_from = self.log.last_index() + 1;
        }
        let committed = self.log.next_committed();
        if let Some(last) = committed.last() {
            ack.last_committed = Some(last.index);
            ready.committed_entries = committed.to_vec();
            self.log.applying = self.log.commit;
        }
        ready.messages = std::mem::take(&mut self.messages);
        ready.persisted_messages = std::mem::take(&mut self.persisted_messages);
        ready.read_states = std::mem::take(&mut self.read_states);
        ready.ack = ack;
        ready
    }

    /// Acknowledges a `Ready`: its entries and snapshot are persisted, its entries applied.
    pub(crate) fn advance(&mut self, ready: &Ready) {
        let ack = ready.ack;
        if let Some(index) = ack.snapshot_index {
            if self.log.unacked_snapshot_index == Some(index) {
                self.log.unacked_snapshot_index = None;
            }
            if index == self.log.snapshot_index() {
                self.log.applied = self.log.applied.max(index);
                self.log.persisted = self.log.persisted.max(index);
            }
        }
        if let Some((index, term)) = ack.last_entry {
            // Only if the acknowledged entry is still ours: a truncation in between means the
            // replacement entries are handed out (and acknowledged) again.
            if self.log.term_at(index) == Some(term) {
                self.log.persisted = self.log.persisted.max(index);
            }
        }
        if let Some(index) = ack.last_committed {
            assert!(
                index <= self.log.applying,
                "acknowledged applying {index} beyond what was handed out ({})",
                self.log.applying
            );
            self.log.applied = self.log.applied.max(index);
        }
        self.maybe_commit();
    }
}
