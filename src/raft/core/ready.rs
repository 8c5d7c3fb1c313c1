//! The output interface: `has_ready`, `ready` and `advance` (persist before you speak).

use crate::raft::{Ready, ReadyAck, Role};

use super::RaftCore;

impl RaftCore {
    /// Whether `ready` would return anything.
    ///
    /// The tests overlap. A hard-state change never comes alone: a new term or vote changes the
    /// role or leader (soft state) or queues an answer, and a commit that moves queues entries
    /// to apply or an answer to the heartbeat that carried it. A snapshot to install and new
    /// unstable entries come with an answer to the leader (or, on a leader, a broadcast). So
    /// `&&` for the `||` after the hard-state or the snapshot test (mutants cargo-mutants
    /// reports) changes no answer.
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
