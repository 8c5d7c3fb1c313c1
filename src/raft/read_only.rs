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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(context: ReadContext, index: Index, read_seq: u64) -> PendingRead {
        PendingRead {
            context,
            index,
            read_seq,
        }
    }

    #[test]
    fn a_confirmed_round_releases_its_reads_and_earlier_ones_in_order() {
        let mut reads = ReadOnly::default();
        reads
            .pending
            .extend([read(10, 4, 1), read(11, 6, 2), read(12, 7, 3)]);
        let mut out = Vec::new();
        reads.release_up_to(2, &mut out);
        assert_eq!(
            out,
            vec![
                ReadState {
                    context: 10,
                    index: 4
                },
                ReadState {
                    context: 11,
                    index: 6
                }
            ]
        );
        assert_eq!(reads.pending, VecDeque::from(vec![read(12, 7, 3)]));
    }

    #[test]
    fn a_read_without_a_round_waits_whatever_round_is_confirmed() {
        // A re-elected leader whose followers echo an old round must not release reads that
        // wait for the first commit of its new term.
        let mut reads = ReadOnly::default();
        reads.pending.extend([read(10, 4, 1), read(11, 0, 0)]);
        let mut out = Vec::new();
        reads.release_up_to(u64::MAX, &mut out);
        assert_eq!(
            out,
            vec![ReadState {
                context: 10,
                index: 4
            }]
        );
        assert_eq!(reads.pending, VecDeque::from(vec![read(11, 0, 0)]));
    }
}
