//! Fuzz-side shapes of Raft messages: every term, index and id drawn from a small range, so that
//! forged messages land next to the real log and reach deep paths instead of being refused at
//! the first comparison, then converted into the core's own [`Message`].

use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_kv::raft::{
    ConfChange, Entry, EntryKind, Membership, Message, MessageBody, NodeId, RejectHint, Snapshot,
    SnapshotMeta,
};

/// A term in `0..=7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallTerm(pub u64);

impl<'a> Arbitrary<'a> for SmallTerm {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(SmallTerm(u.int_in_range(0..=7)?))
    }
}

/// A log index in `0..=15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallIndex(pub u64);

impl<'a> Arbitrary<'a> for SmallIndex {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(SmallIndex(u.int_in_range(0..=15)?))
    }
}

/// A node id in `0..=5` (0 is never a member; ids above the cluster size are strangers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallId(pub NodeId);

impl<'a> Arbitrary<'a> for SmallId {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(SmallId(u.int_in_range(0..=5)?))
    }
}

/// A payload of at most 8 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallData(pub Bytes);

impl<'a> Arbitrary<'a> for SmallData {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.int_in_range(0..=8)?;
        Ok(SmallData(Bytes::copy_from_slice(u.bytes(len)?)))
    }
}

/// What a forged entry carries.
#[derive(Arbitrary, Clone, Debug)]
pub enum FuzzEntryKind {
    /// A client command.
    Normal,
    /// A leader's no-op.
    Noop,
    /// A membership change, well formed.
    Config(FuzzConfChange),
    /// A `Config` entry whose payload is whatever the fuzzer chose.
    ConfigGarbage,
}

/// A membership change naming a small id.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum FuzzConfChange {
    /// Add a voter.
    AddVoter(SmallId),
    /// Add a learner.
    AddLearner(SmallId),
    /// Remove a member.
    Remove(SmallId),
}

impl FuzzConfChange {
    /// The core's change.
    pub fn to_conf_change(self) -> ConfChange {
        match self {
            FuzzConfChange::AddVoter(id) => ConfChange::AddVoter(id.0),
            FuzzConfChange::AddLearner(id) => ConfChange::AddLearner(id.0),
            FuzzConfChange::Remove(id) => ConfChange::Remove(id.0),
        }
    }
}

/// A forged entry. Its index is `prev_log_index + 1 + position` unless `index` overrides it.
#[derive(Arbitrary, Clone, Debug)]
pub struct FuzzEntry {
    /// The entry's term.
    pub term: SmallTerm,
    /// An explicit index (a gap or an overlap), or `None` for the contiguous one.
    pub index: Option<SmallIndex>,
    /// What it carries.
    pub kind: FuzzEntryKind,
    /// Its payload (ignored for well-formed `Config` entries).
    pub data: SmallData,
}

/// A forged snapshot.
#[derive(Arbitrary, Clone, Debug)]
pub struct FuzzSnapshot {
    /// Its last index.
    pub index: SmallIndex,
    /// Its last term.
    pub term: SmallTerm,
    /// Its voters.
    pub voters: Vec<SmallId>,
    /// Its learners.
    pub learners: Vec<SmallId>,
    /// Its state machine bytes.
    pub data: SmallData,
}

/// The body of a forged message.
#[derive(Arbitrary, Clone, Debug)]
pub enum FuzzBody {
    /// A pre-vote request.
    PreVote {
        /// Candidate's last index.
        last_log_index: SmallIndex,
        /// Candidate's last term.
        last_log_term: SmallTerm,
    },
    /// A pre-vote answer.
    PreVoteResponse {
        /// Granted or not.
        granted: bool,
    },
    /// A vote request.
    Vote {
        /// Candidate's last index.
        last_log_index: SmallIndex,
        /// Candidate's last term.
        last_log_term: SmallTerm,
        /// After a `TimeoutNow`.
        transfer: bool,
    },
    /// A vote answer.
    VoteResponse {
        /// Granted or not.
        granted: bool,
    },
    /// An append.
    Append {
        /// Index before the entries.
        prev_log_index: SmallIndex,
        /// Term at `prev_log_index`.
        prev_log_term: SmallTerm,
        /// The entries.
        entries: Vec<FuzzEntry>,
        /// The leader's commit.
        leader_commit: SmallIndex,
    },
    /// An append answer.
    AppendResponse {
        /// Matched or rejected index.
        index: SmallIndex,
        /// Rejection hint.
        reject_hint: Option<(SmallIndex, SmallTerm)>,
    },
    /// A heartbeat.
    Heartbeat {
        /// The leader's commit for this follower.
        leader_commit: SmallIndex,
        /// Read round.
        read_seq: u8,
    },
    /// A heartbeat answer.
    HeartbeatResponse {
        /// Read round echoed.
        read_seq: u8,
    },
    /// A whole snapshot.
    InstallSnapshot(FuzzSnapshot),
    /// Start an election now.
    TimeoutNow,
}

/// A forged message between small ids.
#[derive(Arbitrary, Clone, Debug)]
pub struct FuzzMessage {
    /// The claimed sender.
    pub from: SmallId,
    /// The sender's term.
    pub term: SmallTerm,
    /// What it says.
    pub body: FuzzBody,
}

impl FuzzMessage {
    /// The core's message, addressed to `to`.
    pub fn to_message(&self, to: NodeId) -> Message {
        Message {
            from: self.from.0,
            to,
            term: self.term.0,
            body: self.body.to_body(),
        }
    }
}

impl FuzzBody {
    /// The core's message body.
    pub fn to_body(&self) -> MessageBody {
        match self {
            FuzzBody::PreVote {
                last_log_index,
                last_log_term,
            } => MessageBody::PreVote {
                last_log_index: last_log_index.0,
                last_log_term: last_log_term.0,
            },
            FuzzBody::PreVoteResponse { granted } => {
                MessageBody::PreVoteResponse { granted: *granted }
            }
            FuzzBody::Vote {
                last_log_index,
                last_log_term,
                transfer,
            } => MessageBody::Vote {
                last_log_index: last_log_index.0,
                last_log_term: last_log_term.0,
                transfer: *transfer,
            },
            FuzzBody::VoteResponse { granted } => MessageBody::VoteResponse { granted: *granted },
            FuzzBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => MessageBody::Append {
                prev_log_index: prev_log_index.0,
                prev_log_term: prev_log_term.0,
                entries: entries
                    .iter()
                    .enumerate()
                    .map(|(position, entry)| {
                        to_entry(entry, prev_log_index.0 + 1 + position as u64)
                    })
                    .collect(),
                leader_commit: leader_commit.0,
            },
            FuzzBody::AppendResponse { index, reject_hint } => MessageBody::AppendResponse {
                index: index.0,
                reject_hint: reject_hint.map(|(index, term)| RejectHint {
                    index: index.0,
                    term: term.0,
                }),
            },
            FuzzBody::Heartbeat {
                leader_commit,
                read_seq,
            } => MessageBody::Heartbeat {
                leader_commit: leader_commit.0,
                read_seq: u64::from(*read_seq),
            },
            FuzzBody::HeartbeatResponse { read_seq } => MessageBody::HeartbeatResponse {
                read_seq: u64::from(*read_seq),
            },
            FuzzBody::InstallSnapshot(snapshot) => MessageBody::InstallSnapshot {
                snapshot: to_snapshot(snapshot),
            },
            FuzzBody::TimeoutNow => MessageBody::TimeoutNow,
        }
    }
}

fn to_entry(entry: &FuzzEntry, contiguous_index: u64) -> Entry {
    let (kind, data) = match &entry.kind {
        FuzzEntryKind::Normal => (EntryKind::Normal, entry.data.0.clone()),
        FuzzEntryKind::Noop => (EntryKind::Noop, Bytes::new()),
        FuzzEntryKind::Config(change) => (
            EntryKind::Config,
            Bytes::from(
                postcard::to_stdvec(&change.to_conf_change())
                    .expect("postcard encoding of a membership change into a Vec cannot fail"),
            ),
        ),
        FuzzEntryKind::ConfigGarbage => (EntryKind::Config, entry.data.0.clone()),
    };
    Entry {
        term: entry.term.0,
        index: entry.index.map_or(contiguous_index, |index| index.0),
        kind,
        data,
    }
}

fn to_snapshot(snapshot: &FuzzSnapshot) -> Snapshot {
    let ids = |list: &[SmallId]| list.iter().map(|id| id.0).collect::<BTreeSet<NodeId>>();
    Snapshot {
        meta: SnapshotMeta {
            index: snapshot.index.0,
            term: snapshot.term.0,
            membership: Membership {
                voters: ids(&snapshot.voters),
                learners: ids(&snapshot.learners),
                records: Default::default(),
                removed: Default::default(),
            },
        },
        data: snapshot.data.0.clone(),
    }
}
