//! Inbound messages: validation, term handling and dispatch to the handlers, and the
//! outbound queues (`send`).

use crate::plants::{self, Plant};
use crate::raft::membership::decode_conf_change;
use crate::raft::{EntryKind, Error, Message, MessageBody, NodeId, Role, Term};

use super::RaftCore;

impl RaftCore {
    /// Queues a message; those whose promise rests on persisted state wait for the sync.
    pub(super) fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
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
                    // Thesis §3.10: a transfer's candidate is heard past the lease, the leader
                    // asked it to campaign; but a leader sends `TimeoutNow` only to a voter of
                    // its configuration, so the flag is believed only of a voter of this
                    // node's. Anyone else (a server added past this node's log, or one that
                    // is not a member at all: thesis §4.1 answers its requests) waits out the
                    // lease like any candidate, and cannot depose a live leader by claiming
                    // a transfer.
                    let transfer =
                        *transfer && self.membership.current().voters.contains(&message.from);
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
}
