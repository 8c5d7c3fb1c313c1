//! Configuration: single-server membership changes (thesis §4.1, §4.2.2) and
//! leadership transfer (thesis §3.10).

use bytes::Bytes;

use crate::raft::progress::{Progress, ProgressState};
use crate::raft::{ConfChange, EntryKind, Error, Index, MessageBody, NodeId, Role};

use super::RaftCore;
use crate::plants::{self, Plant};

impl RaftCore {
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
        // No transfer can be in progress here: `propose_conf_change` refuses during one.
        debug_assert!(self.lead_transferee.is_none());
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

    /// Thesis §3.10: the leader asks us to campaign now (a leader or a non-voter does not:
    /// `campaign_with` checks).
    pub(super) fn handle_timeout_now(&mut self) {
        self.campaign_with(false, true);
    }
}
