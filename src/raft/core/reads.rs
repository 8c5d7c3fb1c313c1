//! Linearizable reads by ReadIndex (thesis §6.4).

use crate::plants::{self, Plant};
use crate::raft::quorum::quorum_value;
use crate::raft::read_only::PendingRead;
use crate::raft::{Error, ReadContext, ReadState};

use super::RaftCore;

impl RaftCore {
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
        // (Outside the simulator both plants are off, so `&&` for `||` here changes nothing
        // that the library's tests can see; the simulator's plant runs judge this line.)
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

    /// Releases every read whose round a quorum of voters acknowledged.
    pub(super) fn release_confirmed_reads(&mut self) {
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
}
