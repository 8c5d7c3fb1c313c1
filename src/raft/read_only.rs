//! ReadIndex bookkeeping (Raft §6.4): reads wait until a heartbeat round started after them is
//! acknowledged by a quorum in the leader's term.

use std::collections::{BTreeMap, VecDeque};

use super::types::{Index, NodeId, ReadContext, ReadState};

/// One read waiting for leadership confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingRead {
    /// The driver's token.
    pub(crate) context: ReadContext,
    /// The commit index recorded for the read (meaningful once `read_seq > 0`).
    pub(crate) index: Index,
    /// The heartbeat round that confirms it; 0 while the leader has not yet committed an entry
    /// of its term.
    pub(crate) read_seq: u64,
}

/// The leader's pending reads and the read rounds its peers acknowledged.
///
/// Invariant: `pending` is ordered by `read_seq`, with the unassigned (0) reads last.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// Reads in arrival order.
    pub(crate) pending: VecDeque<PendingRead>,
    /// Per peer, the highest read round acknowledged in the current term.
    pub(crate) acks: BTreeMap<NodeId, u64>,
    /// The latest read round started (never decreases, across terms too).
    pub(crate) read_seq: u64,
    /// A read round was started and its heartbeat is not broadcast yet.
    pub(crate) broadcast_pending: bool,
}

impl ReadOnly {
    /// Forgets every pending read and acknowledgement (a new term or a deposed leader).
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.acks.clear();
        self.broadcast_pending = false;
    }

    /// The round new reads join: the unbroadcast one, or a fresh one.
    pub(crate) fn round_for_new_read(&mut self) -> u64 {
        if !self.broadcast_pending {
            self.read_seq += 1;
            self.broadcast_pending = true;
        }
        self.read_seq
    }

    /// Releases, in order, every read whose round is at or below `confirmed_seq`.
    pub(crate) fn release_up_to(&mut self, confirmed_seq: u64, out: &mut Vec<ReadState>) {
        while let Some(front) = self.pending.front() {
            if front.read_seq == 0 || front.read_seq > confirmed_seq {
                break;
            }
            out.push(ReadState {
                context: front.context,
                index: front.index,
            });
            self.pending.pop_front();
        }
    }
}
