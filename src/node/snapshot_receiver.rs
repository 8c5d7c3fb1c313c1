//! The follower's side of a streamed snapshot transfer, as a pure state machine: it decides,
//! chunk by chunk, whether to write, ignore, ask for a resend or refuse, and the node's receiver
//! task (in `snapshot_transfer`) does the writing. Keeping the decisions free of I/O lets the
//! scenarios below pin every rule down exactly.
//!
//! A transfer is known by its sender, the sender's term, the snapshot it carries and the
//! sender's transfer id. Transfers are ordered by (term, snapshot index, transfer id): a chunk
//! of an older one is stale and the sender is told to stop; a chunk of a newer one replaces the
//! current transfer. A newer transfer of the very same snapshot from the same leader in the same
//! term (the leader restarted its sender after a timeout) resumes where the bytes stopped.

use crate::raft::{Index, NodeId, SnapshotMeta, Term};

use super::rpc::{ChunkAnswer, ChunkHeader};

/// The transfer a receiver is taking in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The sending leader.
    pub from: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// The sender's id for this attempt.
    pub transfer_id: u64,
    /// The file's declared length.
    pub total_bytes: u64,
    /// Bytes received in order from offset 0.
    /// Invariant: `received_bytes <= total_bytes`.
    pub received_bytes: u64,
}

impl Transfer {
    fn order_key(&self) -> (Term, Index, u64) {
        (self.term, self.meta.index, self.transfer_id)
    }

    /// Whether `header` carries the same file as this transfer, so its bytes can be kept.
    fn same_file(&self, header: &ChunkHeader) -> bool {
        self.from == header.from
            && self.term == header.term
            && self.meta == header.meta
            && self.total_bytes == header.total_bytes
    }

    /// Whether every byte arrived.
    pub fn is_complete(&self) -> bool {
        self.received_bytes == self.total_bytes
    }
}

/// What the receiver task must do with one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// Nothing to write; send this answer.
    Answer(ChunkAnswer),
    /// Write the chunk at `offset` of the transfer's temp file, then call
    /// [`SnapshotReceiver::handle_written`] (or [`SnapshotReceiver::handle_failed`]).
    Write {
        /// A superseded transfer whose temp file is to be removed.
        discard: Option<Transfer>,
        /// Start this transfer's temp file empty (its first chunk).
        create: bool,
        /// Where the chunk goes.
        offset: u64,
    },
}

/// The pure receiver: at most one transfer in flight (inbound transfers are bounded to one per
/// node, since only one leader at a time may send).
#[derive(Debug)]
pub struct SnapshotReceiver {
    /// Largest snapshot file accepted (the disk budget for one transfer).
    bytes_max: u64,
    /// The highest leader term any chunk carried.
    term_seen: Term,
    transfer: Option<Transfer>,
}

impl SnapshotReceiver {
    /// A receiver that refuses files over `bytes_max`.
    pub fn new(bytes_max: u64) -> SnapshotReceiver {
        SnapshotReceiver {
            bytes_max,
            term_seen: 0,
            transfer: None,
        }
    }

    /// The transfer in flight, if any.
    pub fn transfer(&self) -> Option<&Transfer> {
        self.transfer.as_ref()
    }

    /// Decides what to do with a chunk of `len` bytes. The caller has checked cluster, sender
    /// and addressee.
    pub fn handle_chunk(&mut self, header: &ChunkHeader, len: u64) -> ChunkStep {
        if header.term < self.term_seen {
            return ChunkStep::Answer(ChunkAnswer::Stale);
        }
        match header.offset.checked_add(len) {
            Some(end) if end <= header.total_bytes => {}
            _ => {
                return ChunkStep::Answer(ChunkAnswer::Refused {
                    reason: format!(
                        "chunk of {len} bytes at offset {} runs past the declared {} bytes",
                        header.offset, header.total_bytes
                    ),
                })
            }
        };
        if header.total_bytes > self.bytes_max {
            return ChunkStep::Answer(ChunkAnswer::Refused {
                reason: format!(
                    "snapshot of {} bytes is over this node's limit of {} bytes",
                    header.total_bytes, self.bytes_max
                ),
            });
        }
        self.term_seen = header.term;
        let key = (header.term, header.meta.index, header.transfer_id);
        match &mut self.transfer {
            Some(current) if key < current.order_key() => {
                return ChunkStep::Answer(ChunkAnswer::Stale)
            }
            Some(current) if current.same_file(header) => {
                // The same file: a retry, a duplicate, or a resumed attempt with a newer id.
                current.transfer_id = header.transfer_id;
            }
            _ if header.offset != 0 => {
                // A new transfer must start at 0; ask for it (the current one stays until then).
                return ChunkStep::Answer(ChunkAnswer::Continue { next_offset: 0 });
            }
            _ => {
                let discard = self.transfer.replace(Transfer {
                    from: header.from,
                    term: header.term,
                    meta: header.meta.clone(),
                    transfer_id: header.transfer_id,
                    total_bytes: header.total_bytes,
                    received_bytes: 0,
                });
                return ChunkStep::Write {
                    discard,
                    create: true,
                    offset: 0,
                };
            }
        }
        let current = self.transfer.as_ref().expect("matched Some above");
        if current.is_complete() {
            return ChunkStep::Answer(ChunkAnswer::Complete);
        }
        if header.offset != current.received_bytes {
            // A duplicate (behind) or a gap (ahead): either way, continue from what we hold.
            return ChunkStep::Answer(ChunkAnswer::Continue {
                next_offset: current.received_bytes,
            });
        }
        ChunkStep::Write {
            discard: None,
            create: false,
            offset: header.offset,
        }
    }

    /// The chunk at `offset` of `len` bytes is written; returns the answer for the sender.
    pub fn handle_written(&mut self, offset: u64, len: u64) -> ChunkAnswer {
        let Some(current) = &mut self.transfer else {
            return ChunkAnswer::Stale;
        };
        assert_eq!(
            offset, current.received_bytes,
            "chunk written at {offset} but {} bytes were held",
            current.received_bytes
        );
        current.received_bytes += len;
        assert!(
            current.received_bytes <= current.total_bytes,
            "received {} of a {}-byte snapshot",
            current.received_bytes,
            current.total_bytes
        );
        if current.is_complete() {
            ChunkAnswer::Complete
        } else {
            ChunkAnswer::Continue {
                next_offset: current.received_bytes,
            }
        }
    }

    /// Writing, verifying or installing the current transfer failed: forget it, so the next
    /// chunk (or the leader's next attempt) starts over.
    pub fn handle_failed(&mut self, reason: &str) -> ChunkAnswer {
        self.transfer = None;
        ChunkAnswer::Refused {
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Membership;

    const TOTAL: u64 = 10;

    fn meta(index: Index) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term: 1,
            membership: Membership::with_voters([1, 2, 3]),
        }
    }

    fn chunk(term: Term, index: Index, transfer_id: u64, offset: u64) -> ChunkHeader {
        ChunkHeader {
            cluster_id: 9,
            from: 1,
            to: 2,
            from_incarnation: 1,
            term,
            meta: meta(index),
            transfer_id,
            offset,
            total_bytes: TOTAL,
        }
    }

    /// Delivers a chunk and, if the receiver asks for it, "writes" it.
    fn deliver(receiver: &mut SnapshotReceiver, header: &ChunkHeader, len: u64) -> ChunkAnswer {
        match receiver.handle_chunk(header, len) {
            ChunkStep::Answer(answer) => answer,
            ChunkStep::Write { offset, .. } => receiver.handle_written(offset, len),
        }
    }

    fn next(offset: u64) -> ChunkAnswer {
        ChunkAnswer::Continue {
            next_offset: offset,
        }
    }

    #[test]
    fn chunks_are_accepted_in_offset_order_until_complete() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        assert_eq!(deliver(&mut receiver, &chunk(2, 50, 1, 0), 4), next(4));
        assert_eq!(deliver(&mut receiver, &chunk(2, 50, 1, 4), 4), next(8));
        assert_eq!(
            deliver(&mut receiver, &chunk(2, 50, 1, 8), 2),
            ChunkAnswer::Complete
        );
        assert!(receiver.transfer().unwrap().is_complete());
    }

    #[test]
    fn the_first_chunk_starts_a_fresh_temp_file() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        let step = receiver.handle_chunk(&chunk(2, 50, 1, 0), 4);
        assert_eq!(
            step,
            ChunkStep::Write {
                discard: None,
                create: true,
                offset: 0
            }
        );
    }

    #[test]
    fn a_duplicate_chunk_is_not_written_and_names_the_expected_offset() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        deliver(&mut receiver, &chunk(2, 50, 1, 4), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 1, 4), 4),
            ChunkStep::Answer(next(8))
        );
        assert_eq!(receiver.transfer().unwrap().received_bytes, 8);
    }

    #[test]
    fn a_gap_asks_for_a_resend_from_the_expected_offset() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 1, 8), 2),
            ChunkStep::Answer(next(4))
        );
    }

    #[test]
    fn a_new_transfer_that_does_not_start_at_zero_is_asked_to() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 1, 4), 4),
            ChunkStep::Answer(next(0))
        );
    }

    #[test]
    fn a_chunk_of_an_older_term_is_stale() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(3, 50, 1, 0), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 60, 7, 4), 4),
            ChunkStep::Answer(ChunkAnswer::Stale)
        );
        assert_eq!(receiver.transfer().unwrap().term, 3);
    }

    #[test]
    fn a_chunk_of_an_older_snapshot_is_stale() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 40, 2, 0), 4),
            ChunkStep::Answer(ChunkAnswer::Stale)
        );
        assert_eq!(receiver.transfer().unwrap().meta.index, 50);
    }

    #[test]
    fn a_chunk_of_an_older_transfer_of_the_same_snapshot_is_stale() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 5, 0), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 4, 4), 4),
            ChunkStep::Answer(ChunkAnswer::Stale)
        );
    }

    #[test]
    fn a_newer_snapshot_restarts_the_transfer() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        let step = receiver.handle_chunk(&chunk(2, 60, 2, 0), 4);
        assert!(
            matches!(&step, ChunkStep::Write { discard: Some(old), create: true, offset: 0 } if old.meta.index == 50),
            "{step:?}"
        );
        assert_eq!(receiver.handle_written(0, 4), next(4));
        assert_eq!(receiver.transfer().unwrap().meta.index, 60);
    }

    #[test]
    fn a_new_leader_restarts_the_transfer_even_for_the_same_snapshot() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        let mut from_new_leader = chunk(3, 50, 1, 0);
        from_new_leader.from = 3;
        assert!(matches!(
            receiver.handle_chunk(&from_new_leader, 4),
            ChunkStep::Write {
                discard: Some(_),
                create: true,
                offset: 0
            }
        ));
        assert_eq!(receiver.handle_written(0, 4), next(4));
        assert_eq!(receiver.transfer().unwrap().from, 3);
    }

    #[test]
    fn a_retried_transfer_of_the_same_file_resumes_where_the_bytes_stopped() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        deliver(&mut receiver, &chunk(2, 50, 1, 4), 4);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 2, 0), 4),
            ChunkStep::Answer(next(8))
        );
        assert_eq!(
            deliver(&mut receiver, &chunk(2, 50, 2, 8), 2),
            ChunkAnswer::Complete
        );
    }

    #[test]
    fn a_chunk_past_the_declared_size_is_refused() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 8);
        assert!(matches!(
            receiver.handle_chunk(&chunk(2, 50, 1, 8), 4),
            ChunkStep::Answer(ChunkAnswer::Refused { .. })
        ));
        assert!(matches!(
            receiver.handle_chunk(&chunk(2, 50, 1, u64::MAX), 4),
            ChunkStep::Answer(ChunkAnswer::Refused { .. })
        ));
        assert_eq!(receiver.transfer().unwrap().received_bytes, 8);
    }

    #[test]
    fn a_snapshot_over_the_disk_bound_is_refused_before_any_byte_is_written() {
        let mut receiver = SnapshotReceiver::new(TOTAL - 1);
        assert!(matches!(
            receiver.handle_chunk(&chunk(2, 50, 1, 0), 4),
            ChunkStep::Answer(ChunkAnswer::Refused { .. })
        ));
        assert_eq!(receiver.transfer(), None);
    }

    #[test]
    fn chunks_of_a_completed_transfer_answer_complete() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 10);
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 1, 0), 10),
            ChunkStep::Answer(ChunkAnswer::Complete)
        );
    }

    #[test]
    fn a_failed_write_forgets_the_transfer_so_the_next_attempt_starts_over() {
        let mut receiver = SnapshotReceiver::new(1 << 20);
        deliver(&mut receiver, &chunk(2, 50, 1, 0), 4);
        assert!(matches!(
            receiver.handle_failed("disk full"),
            ChunkAnswer::Refused { .. }
        ));
        assert_eq!(
            receiver.handle_chunk(&chunk(2, 50, 1, 4), 4),
            ChunkStep::Answer(next(0))
        );
    }
}
