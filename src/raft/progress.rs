//! A leader's view of one follower's replication (Raft §5.3; the probe/replicate/snapshot
//! states follow the usual flow-control design of production Raft implementations).

use std::collections::VecDeque;

use super::types::Index;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// The follower's match point is unknown: one `Append` at a time, then wait for an answer.
    Probe,
    /// The follower is known to match: pipeline `Append`s optimistically.
    Replicate,
    /// An `InstallSnapshot` was sent; wait for its acknowledgement.
    Snapshot,
}

/// Per-follower replication state kept by the leader.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to be replicated on the follower.
    pub(crate) match_index: Index,
    /// The next index to send.
    pub(crate) next_index: Index,
    /// The replication mode.
    pub(crate) state: ProgressState,
    /// In `Probe`: an `Append` was sent and no answer has arrived since.
    pub(crate) probe_sent: bool,
    /// In `Snapshot`: the index of the snapshot sent.
    pub(crate) pending_snapshot_index: Index,
    /// In `Replicate`: the last index of each `Append` in flight, oldest first.
    pub(crate) inflight_last_indexes: VecDeque<Index>,
    /// Whether the follower answered anything since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// The highest commit index the follower has been told (so it is not told twice).
    pub(crate) commit_sent: Index,
    /// The match index at the previous periodic heartbeat (detects a stalled pipeline).
    pub(crate) match_at_last_beat: Index,
    /// Consecutive periodic heartbeats without the match index moving.
    pub(crate) stalled_beats: u32,
}

impl Progress {
    /// A fresh progress that probes from `next_index`.
    pub(crate) fn new(next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index: next_index.max(1),
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot_index: 0,
            inflight_last_indexes: VecDeque::new(),
            recent_active: false,
            commit_sent: 0,
            match_at_last_beat: 0,
            stalled_beats: 0,
        }
    }

    /// Whether the leader must hold back further `Append`s.
    pub(crate) fn is_paused(&self, inflight_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight_last_indexes.len() >= inflight_max.max(1),
            ProgressState::Snapshot => true,
        }
    }

    /// Switches to probing from `match_index + 1` (or keeps a lower `next_index`).
    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            self.next_index = (self.match_index + 1).max(self.pending_snapshot_index + 1);
        } else {
            self.next_index = self.next_index.min(self.match_index + 1).max(1);
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.pending_snapshot_index = 0;
        self.inflight_last_indexes.clear();
        self.stalled_beats = 0;
    }

    /// Switches to pipelined replication from `match_index + 1`.
    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.pending_snapshot_index = 0;
        self.inflight_last_indexes.clear();
        self.stalled_beats = 0;
    }

    /// Records that a snapshot at `index` was sent.
    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot_index = index;
        self.probe_sent = false;
        self.inflight_last_indexes.clear();
        self.stalled_beats = 0;
    }

    /// Records that an `Append` ending at `last_index` was sent.
    pub(crate) fn sent_append(&mut self, last_index: Index, carried_entries: bool) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if carried_entries {
                    self.next_index = last_index + 1;
                    self.inflight_last_indexes.push_back(last_index);
                }
            }
            ProgressState::Snapshot => {}
        }
    }

    /// Records a successful acknowledgement up to `index`; returns whether the match moved.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self
            .inflight_last_indexes
            .front()
            .is_some_and(|&last| last <= index)
        {
            self.inflight_last_indexes.pop_front();
        }
        updated
    }

    /// Handles a rejection of the `Append` whose previous index was `rejected`; `probe_index` is
    /// the leader's best guess of the highest matching index. Returns false for a stale rejection.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: Index, probe_index: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // A rejection at or below the match point answers an old, reordered append.
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = (self.match_index + 1).max(rejected.min(probe_index + 1));
                true
            }
            ProgressState::Probe => {
                // Only the answer to the probe in flight counts.
                if self.next_index == 0 || rejected != self.next_index - 1 {
                    return false;
                }
                // next <= rejected: every rejection moves the probe back by at least one.
                self.next_index = (self.match_index + 1).max(rejected.min(probe_index + 1));
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_pauses_when_the_inflight_window_is_full_and_resumes_on_acks() {
        let mut progress = Progress::new(1);
        progress.maybe_update(0);
        progress.become_replicate();
        progress.sent_append(5, true);
        progress.sent_append(9, true);
        assert!(progress.is_paused(2));
        assert_eq!(progress.next_index, 10);
        assert!(progress.maybe_update(5));
        assert!(!progress.is_paused(2));
        assert_eq!(progress.inflight_last_indexes, VecDeque::from(vec![9]));
    }

    #[test]
    fn probe_ignores_a_rejection_that_does_not_answer_the_probe_in_flight() {
        let mut progress = Progress::new(11);
        progress.sent_append(10, true);
        assert!(!progress.maybe_decrease_to(7, 3));
        assert!(progress.maybe_decrease_to(10, 3));
        assert_eq!(progress.next_index, 4);
        assert!(!progress.probe_sent);
    }

    #[test]
    fn a_probe_never_goes_back_to_or_below_the_match() {
        let mut progress = replicating(6, 10);
        assert!(progress.maybe_decrease_to(9, 8));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 9);
        progress.sent_append(8, true);
        // The hint points below the match: the probe stops right after the match.
        assert!(progress.maybe_decrease_to(8, 2));
        assert_eq!(progress.next_index, 7);
    }

    #[test]
    fn every_answered_rejection_moves_the_probe_back() {
        let mut progress = Progress::new(47);
        progress.sent_append(46, true);
        // A useless guess (at or above the rejected index) still backs off by one.
        assert!(progress.maybe_decrease_to(46, 46));
        assert_eq!(progress.next_index, 46);
    }

    /// A progress that matched `match_index` and pipelines appends up to `next_index - 1`.
    fn replicating(match_index: Index, next_index: Index) -> Progress {
        let mut progress = Progress::new(1);
        progress.maybe_update(match_index);
        progress.become_replicate();
        progress.sent_append(next_index - 1, true);
        progress
    }

    #[test]
    fn a_replicating_follower_that_becomes_probed_restarts_after_its_match() {
        let mut progress = replicating(5, 13);
        progress.sent_append(15, true);
        progress.stalled_beats = 2;
        progress.become_probe();
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 6);
        assert!(!progress.probe_sent);
        assert!(progress.inflight_last_indexes.is_empty());
        assert_eq!(progress.stalled_beats, 0);
        assert!(!progress.is_paused(1));
    }

    #[test]
    fn a_probe_after_a_snapshot_starts_past_the_snapshot_or_the_match() {
        let mut progress = replicating(5, 6);
        progress.become_snapshot(20);
        progress.stalled_beats = 1;
        assert!(progress.is_paused(8));
        progress.become_probe();
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(
            progress.next_index, 21,
            "the snapshot was sent: probe after it"
        );
        assert_eq!(progress.pending_snapshot_index, 0);
        assert_eq!(progress.stalled_beats, 0);

        // A match beyond the snapshot wins.
        let mut progress = replicating(5, 6);
        progress.become_snapshot(20);
        progress.maybe_update(25);
        progress.become_probe();
        assert_eq!(progress.next_index, 26);
    }

    #[test]
    fn an_acknowledgement_moves_match_and_next_only_forward_and_retires_inflight_appends() {
        let mut progress = replicating(5, 8);
        progress.sent_append(9, true);
        progress.sent_append(12, true);
        // A duplicate of the acknowledgement that set the match changes nothing.
        assert!(!progress.maybe_update(5));
        assert_eq!(progress.match_index, 5);
        assert_eq!(
            progress.inflight_last_indexes,
            VecDeque::from(vec![7, 9, 12])
        );
        // An acknowledgement of exactly the end of an append retires it.
        assert!(progress.maybe_update(9));
        assert_eq!(progress.match_index, 9);
        assert_eq!(progress.next_index, 13);
        assert_eq!(progress.inflight_last_indexes, VecDeque::from(vec![12]));

        // In probe, an acknowledgement beyond the probe moves next past it and ends the wait.
        let mut progress = Progress::new(4);
        progress.sent_append(3, false);
        assert!(progress.is_paused(8));
        assert!(progress.maybe_update(7));
        assert_eq!((progress.match_index, progress.next_index), (7, 8));
        assert!(!progress.probe_sent);
        // A stale acknowledgement does not end a new probe's wait.
        progress.sent_append(7, false);
        assert!(!progress.maybe_update(6));
        assert!(progress.probe_sent);
    }

    #[test]
    fn a_replicating_follower_that_rejects_above_its_match_is_probed_from_the_hint() {
        // Rejected at the match point + 1: the probe restarts right after the match.
        let mut progress = replicating(6, 13);
        assert!(progress.maybe_decrease_to(7, 10));
        assert_eq!(progress.next_index, 7);
        // The hint, when lower than the rejected index, decides (never below match + 1).
        let mut progress = replicating(6, 13);
        assert!(progress.maybe_decrease_to(12, 8));
        assert_eq!(progress.next_index, 9);
        let mut progress = replicating(6, 13);
        assert!(progress.maybe_decrease_to(12, 2));
        assert_eq!(progress.next_index, 7);
        // A snapshot in flight ignores rejections.
        progress.become_snapshot(30);
        assert!(!progress.maybe_decrease_to(12, 2));
        assert_eq!(progress.state, ProgressState::Snapshot);
    }

    #[test]
    fn replicate_ignores_a_rejection_below_its_match_and_probes_otherwise() {
        let mut progress = Progress::new(1);
        progress.maybe_update(6);
        progress.become_replicate();
        progress.sent_append(12, true);
        assert!(!progress.maybe_decrease_to(6, 2));
        assert!(progress.maybe_decrease_to(9, 8));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 9);
    }
}
