//! Replication: `Append`, heartbeats and snapshots on both sides (Raft §5.3, §7), the
//! leader's flow control, commitment (§5.4.2) and client proposals.

use bytes::Bytes;

use crate::raft::progress::ProgressState;
use crate::raft::quorum::quorum_value;
use crate::raft::{
    Entry, EntryKind, Error, Index, MessageBody, NodeId, RejectHint, Role, Snapshot, SnapshotMeta,
    Term,
};

use super::RaftCore;

impl RaftCore {
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
    pub(super) fn handle_append(
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
    pub(super) fn handle_heartbeat(&mut self, from: NodeId, leader_commit: Index, read_seq: u64) {
        self.follow(from);
        // leader_commit <= our match index on the leader, so those entries are ours too.
        self.log.commit_to(leader_commit.min(self.log.last_index()));
        self.send(from, self.term, MessageBody::HeartbeatResponse { read_seq });
    }

    /// Raft §7: install a snapshot newer than our commit index.
    pub(super) fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
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

    /// A follower's answer to an `Append` or `InstallSnapshot`.
    pub(super) fn handle_append_response(
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
    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
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
        // (`>=` here is an equivalent mutant: an acknowledgement of round 0 confirms no read.)
        if read_seq > 0 {
            let acked = self.reads.acks.entry(from).or_insert(0);
            *acked = (*acked).max(read_seq);
            self.release_confirmed_reads();
        }
    }

    /// Restarts replication to followers whose pipeline or snapshot made no progress for a
    /// while (a lost `Append` or `InstallSnapshot` would otherwise stall them forever).
    pub(super) fn detect_stalled_followers(&mut self) {
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

    /// Sends a follower everything flow control allows right now.
    pub(super) fn send_appends_to(&mut self, to: NodeId) {
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
        // A follower in Probe is never matched up to our last index (an acknowledgement that far
        // moves it to Replicate), so `<=` here is an equivalent mutant.
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
    pub(super) fn broadcast_heartbeat(&mut self) {
        let members: Vec<NodeId> = self.progress.keys().copied().collect();
        for member in members {
            self.send_heartbeat(member);
        }
    }

    /// A leader's batched output, produced when the driver collects a `Ready`: new entries to
    /// every follower, commit news, and the heartbeat of a new read round.
    pub(super) fn flush_leader_output(&mut self) {
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
    pub(super) fn maybe_commit(&mut self) -> bool {
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

    /// Appends an entry of the current term to the leader's own log.
    pub(super) fn append_local(&mut self, kind: EntryKind, data: Bytes) -> Index {
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
    pub(super) fn ensure_leader(&self) -> Result<(), Error> {
        if self.role == Role::Leader {
            Ok(())
        } else {
            Err(Error::NotLeader {
                leader: self.leader,
            })
        }
    }

    /// Checks the proposal limits for an entry of `data_bytes` payload bytes.
    pub(super) fn check_proposal(&self, data_bytes: u64) -> Result<(), Error> {
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
}
