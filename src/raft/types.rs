//! The vocabulary of the consensus core: identifiers, log entries, persistent state and messages.
//!
//! Everything here is plain data with `serde` derives, so the node can put it on the wire
//! (postcard) and into the WAL without a second set of types.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A member's identity inside one cluster. Never 0 (0 means "none" in traces).
pub type NodeId = u64;
/// A Raft term (Raft §5.1).
pub type Term = u64;
/// A log position; the first entry of a fresh log has index 1 (index 0 is the empty prefix).
pub type Index = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum EntryKind {
    /// A client command for the state machine; `data` is opaque to the core.
    Normal,
    /// The empty entry a new leader appends to commit entries of earlier terms (Raft §5.4.2, §8).
    Noop,
    /// A membership change; `data` is a postcard-encoded [`ConfChange`].
    Config,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The payload (a command for `Normal`, an encoded [`ConfChange`] for `Config`, empty for `Noop`).
    pub data: Bytes,
}

impl Entry {
    /// Approximate size on the wire, used for the byte limits of messages and proposals.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// The state every node must persist (and sync) before it answers anyone (Raft Figure 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed (persisted so a restart re-applies less work;
    /// it is never trusted beyond the persisted log).
    pub commit: Index,
}

/// The cluster's membership: who votes and who only receives the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Membership {
    /// Members whose acknowledgements count towards quorums and who may become leader.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but neither vote nor count towards a quorum.
    pub learners: BTreeSet<NodeId>,
    /// What the node layer knows of each member (name, address, incarnation), carried by the
    /// `Config` entries and snapshots so that restarts and new members learn addresses from the
    /// log. A member added without a record (core tests) has none.
    ///
    /// Invariant: every key is a voter or a learner.
    pub records: BTreeMap<NodeId, MemberRecord>,
    /// The members removed from the configuration, oldest first, at most
    /// [`REMOVED_MEMBERS_MAX`] (the oldest are forgotten). Applied from the `Remove` entries and
    /// carried in snapshots like `records`, so every node, after any restart, still knows that
    /// these incarnations were removed: their RPCs are answered 410 Gone, which stops them.
    pub removed: Vec<RemovedMember>,
}

/// How many removed members a configuration remembers.
pub const REMOVED_MEMBERS_MAX: usize = 256;

/// A member incarnation that a `Remove` change took out of the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RemovedMember {
    /// The removed member.
    pub id: NodeId,
    /// The incarnation its record named; 0 when it had no record (then every incarnation of
    /// `id` counts as removed until `id` is a member again).
    pub incarnation: u64,
}

/// A member's identity outside the core: the core only carries it through the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MemberRecord {
    /// The member's name (`--id`).
    pub name: String,
    /// Where peers reach the member (`host:port`).
    pub addr: String,
    /// Drawn when the member's data directory was created: a node that lost its disk comes
    /// back with another incarnation and is not the member the configuration names.
    pub incarnation: u64,
}

impl RemovedMember {
    /// Whether this record says incarnation `incarnation` of `id` was removed.
    pub fn covers(&self, id: NodeId, incarnation: u64) -> bool {
        self.id == id && (self.incarnation == 0 || self.incarnation == incarnation)
    }
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            records: BTreeMap::new(),
            removed: Vec::new(),
        }
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners, in ascending order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(self.learners.iter())
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
    }
}

/// A single-server membership change (thesis §4.1), carried in a `Config` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ConfChange {
    /// Add a voter (or promote a learner to voter); a member keeps its record.
    AddVoter(NodeId),
    /// Add a learner (or demote a voter to learner); a member keeps its record.
    AddLearner(NodeId),
    /// Remove a member entirely; its record's incarnation joins `Membership::removed`.
    Remove(NodeId),
    /// Add a learner with its record, or replace the record of a learner: how a node joins.
    AddLearnerWithRecord(NodeId, MemberRecord),
}

impl ConfChange {
    /// The node the change is about.
    pub fn target(&self) -> NodeId {
        match self {
            ConfChange::AddVoter(id)
            | ConfChange::AddLearner(id)
            | ConfChange::Remove(id)
            | ConfChange::AddLearnerWithRecord(id, _) => *id,
        }
    }

    /// The membership that results from applying this change to `membership`.
    pub fn apply(&self, membership: &Membership) -> Membership {
        let mut next = membership.clone();
        match self {
            ConfChange::AddVoter(id) => {
                next.learners.remove(id);
                next.voters.insert(*id);
            }
            ConfChange::AddLearner(id) => {
                next.voters.remove(id);
                next.learners.insert(*id);
            }
            ConfChange::Remove(id) => {
                next.voters.remove(id);
                next.learners.remove(id);
                let incarnation = next.records.remove(id).map_or(0, |r| r.incarnation);
                let removed = RemovedMember {
                    id: *id,
                    incarnation,
                };
                next.removed.retain(|r| *r != removed);
                next.removed.push(removed);
                if next.removed.len() > REMOVED_MEMBERS_MAX {
                    next.removed.remove(0);
                }
            }
            ConfChange::AddLearnerWithRecord(id, record) => {
                next.voters.remove(id);
                next.learners.insert(*id);
                next.records.insert(*id, record.clone());
            }
        }
        next
    }
}

/// What a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The membership as of `index`.
    pub membership: Membership,
}

/// A snapshot of the state machine at `meta.index`; `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The state machine's serialized state.
    pub data: Bytes,
}

/// A node's role (Raft §5.1, plus the pre-candidate of thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a pre-vote: asks whether it could win before raising its term.
    PreCandidate,
    /// Runs an election in a raised term.
    Candidate,
    /// Leads the cluster.
    Leader,
}

impl Role {
    /// Lower-case name for logs, metrics and the HTTP API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// An opaque token the driver attaches to a ReadIndex request to recognize its answer.
pub type ReadContext = u64;

/// A message between two cores. `term` is the sender's term (for a pre-vote request: the term
/// the sender would campaign in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term, see the type's documentation.
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of messages cores exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Thesis §9.6: would you vote for me in `term` (the sender's term + 1)? Changes no state.
    PreVote {
        /// Index of the candidate's last log entry.
        last_log_index: Index,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
    },
    /// The answer to a pre-vote.
    PreVoteResponse {
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// Raft §5.2 RequestVote.
    Vote {
        /// Index of the candidate's last log entry.
        last_log_index: Index,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
        /// Set when the election follows a `TimeoutNow` (thesis §3.10): voters then ignore
        /// their leader lease.
        transfer: bool,
    },
    /// The answer to a vote.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Raft §5.3 AppendEntries.
    Append {
        /// Index of the entry preceding `entries`.
        prev_log_index: Index,
        /// Term of the entry at `prev_log_index`.
        prev_log_term: Term,
        /// Entries to store (may be empty).
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: Index,
    },
    /// The answer to an `Append` or `InstallSnapshot`.
    AppendResponse {
        /// On success, the highest index the follower now holds matching the leader's log
        /// (prev_log_index + entries.len()). On rejection, the rejected `prev_log_index`.
        index: Index,
        /// `None` on success. On rejection, a hint for fast backtracking: the follower's guess of
        /// the highest index that could match, and the term of its entry there.
        reject_hint: Option<RejectHint>,
    },
    /// A leader's heartbeat: asserts leadership, advances the commit index up to what the
    /// follower is known to hold, and confirms leadership for ReadIndex requests.
    Heartbeat {
        /// min(leader commit, the follower's match index).
        leader_commit: Index,
        /// The leader's read-round sequence number this heartbeat confirms (0: none).
        read_seq: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatResponse {
        /// Echo of the heartbeat's `read_seq`.
        read_seq: u64,
    },
    /// Raft §7 InstallSnapshot, sent whole.
    InstallSnapshot {
        /// The snapshot to install.
        snapshot: Snapshot,
    },
    /// Thesis §3.10: start an election now (leadership transfer).
    TimeoutNow,
}

/// The follower's hint in a rejected append (etcd-style fast backtracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RejectHint {
    /// The highest index at which the follower's log might match the leader's.
    pub index: Index,
    /// The term of the follower's entry at `index` (0 if it has none).
    pub term: Term,
}

impl MessageBody {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::TimeoutNow => "timeout_now",
        }
    }

    /// Whether a leader sends this to its followers (append, heartbeat, snapshot). A server
    /// hears a leader's traffic whoever the leader is to its own configuration (thesis §4.1):
    /// a member added after the server's log ends may lead, and the server catches up only by
    /// hearing it. It changes no vote and counts in no quorum.
    pub fn is_leader_traffic(&self) -> bool {
        match self {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => true,
            MessageBody::PreVote { .. }
            | MessageBody::Vote { .. }
            | MessageBody::PreVoteResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::AppendResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow => false,
        }
    }
}

/// A ReadIndex request that is now safe to serve: once the state machine has applied `index`,
/// a read answered from it is linearizable (Raft §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The driver's token from [`crate::raft::Raft::read_index`].
    pub context: ReadContext,
    /// The commit index the read must wait for.
    pub index: Index,
}

/// Volatile state the driver shows to the world (role and leader); reported when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of in its current term.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: Term,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_the_words_the_http_api_and_metrics_publish() {
        let names = [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ]
        .map(|role| role.as_str());
        assert_eq!(names, ["follower", "pre-candidate", "candidate", "leader"]);
    }

    #[test]
    fn message_names_are_the_snake_case_variant_names() {
        let bodies = [
            MessageBody::PreVote {
                last_log_index: 0,
                last_log_term: 0,
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::Vote {
                last_log_index: 0,
                last_log_term: 0,
                transfer: false,
            },
            MessageBody::VoteResponse { granted: true },
            MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: Vec::new(),
                leader_commit: 0,
            },
            MessageBody::AppendResponse {
                index: 0,
                reject_hint: None,
            },
            MessageBody::Heartbeat {
                leader_commit: 0,
                read_seq: 0,
            },
            MessageBody::HeartbeatResponse { read_seq: 0 },
            MessageBody::InstallSnapshot {
                snapshot: Snapshot::default(),
            },
            MessageBody::TimeoutNow,
        ];
        let names: Vec<&str> = bodies.iter().map(MessageBody::name).collect();
        assert_eq!(
            names,
            [
                "pre_vote",
                "pre_vote_response",
                "vote",
                "vote_response",
                "append",
                "append_response",
                "heartbeat",
                "heartbeat_response",
                "install_snapshot",
                "timeout_now",
            ]
        );
        // Only a leader's own traffic is heard from outside the configuration (thesis §4.1).
        let leader_traffic: Vec<&str> = bodies
            .iter()
            .filter(|body| body.is_leader_traffic())
            .map(MessageBody::name)
            .collect();
        assert_eq!(leader_traffic, ["append", "heartbeat", "install_snapshot"]);
    }

    #[test]
    fn entry_size_counts_the_payload_and_a_fixed_header() {
        let entry = Entry {
            term: 1,
            index: 1,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"hello"),
        };
        assert_eq!(entry.size_bytes(), 29);
    }
}
