//! Elections: logical time, the election timer, pre-vote and vote (Raft §5.2, §5.4.1,
//! thesis §9.6), check-quorum (thesis §6.2) and the role changes.

use bytes::Bytes;
use rand_core::RngCore;

use crate::plants::{self, Plant};
use crate::raft::progress::Progress;
use crate::raft::quorum::{vote_result, VoteResult};
use crate::raft::{EntryKind, Index, MessageBody, NodeId, Role, Term};

use super::RaftCore;

impl RaftCore {
    /// Draws a new randomized election timeout and restarts the election timer.
    pub(super) fn reset_election_timer(&mut self) {
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
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
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
    pub(super) fn campaign_with(&mut self, pre_vote: bool, transfer: bool) {
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

    /// Thesis §9.6: would this node vote for the sender in `term`? Changes nothing here.
    pub(super) fn handle_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
    ) {
        let can_vote = term > self.term
            || self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && !self.in_lease() && self.is_up_to_date(last_index, last_term);
        let answer_term = if granted { term } else { self.term };
        self.send(from, answer_term, MessageBody::PreVoteResponse { granted });
    }

    /// Raft §5.2, §5.4.1: one vote per term, only for a candidate at least as up to date.
    pub(super) fn handle_vote(&mut self, from: NodeId, last_index: Index, last_term: Term) {
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
    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        pre_vote: bool,
    ) {
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
}
