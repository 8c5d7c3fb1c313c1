//! Membership change on the node side (issue 10): who the members are now, as the log says,
//! and the requests of the membership API, checked and turned into single-server changes.
//!
//! The core's configuration carries each member's record (name, address, incarnation), so the
//! [`Directory`] is rebuilt from it whenever it changes; `cluster.json` only seeds the first
//! configuration. A request is answered once its `Config` entry is applied (committed).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::cluster::{ClusterInfo, Member};
use super::config::{node_id_of, validate_addr, validate_name};
use super::rpc::Standing;
use crate::raft::{
    ConfChange, Error as RaftError, Index, MemberRecord, Membership, NodeId, Raft, RemovedMember,
    Role, Term,
};

/// A learner is promoted only when its log is at most this many entries behind the leader's
/// (and it answered within the check-quorum window): a voter that is far behind would stall
/// commits while it catches up (thesis §4.2.1).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1_000;

/// The members this node routes to, rebuilt from the configuration in the log.
#[derive(Debug)]
pub struct Directory {
    members: Mutex<Vec<Member>>,
    /// The members of the configuration committed at this node's commit index. Until a newer
    /// configuration commits, its dropped members are still heard: an uncommitted removal may
    /// be overwritten by another leader's log, and that leader must be heard (thesis §4.1;
    /// found by the simulator).
    committed_members: Mutex<Vec<Member>>,
    /// The removed incarnations the committed configuration remembers (`Membership::removed`,
    /// durable in the log and snapshots): their RPCs get 410 Gone, which tells a removed node to
    /// stop. Only a committed removal is told: a node told 410 on the strength of an
    /// uncommitted one would exit while it may still be a voter.
    removed: Mutex<Vec<RemovedMember>>,
    /// Set once this node learns it was removed: why. The driver stops, `/health` says
    /// `removed`, and the process exits non-zero.
    removal: Mutex<Option<String>>,
    /// Senders no configuration of this node names, with the address their RPCs said they are
    /// reached at (at most [`STRANGER_ROUTES_MAX`]). A member added after this node's log ends
    /// may lead; this node hears it (thesis §4.1) and must answer it before its log names it,
    /// else the leader never learns where this node's log ends and it never catches up (found
    /// by the simulator, seed 251). Dropped once a configuration names the sender.
    stranger_routes: Mutex<BTreeMap<NodeId, String>>,
}

/// Strangers' addresses a node keeps at most (a stranger is a member this node has not heard
/// of yet; several at once only in a cluster that changed a lot while this node was away).
pub const STRANGER_ROUTES_MAX: usize = 8;

impl Directory {
    /// A directory of `members`, remembering the `removed` incarnations.
    pub fn new(members: Vec<Member>, removed: Vec<RemovedMember>) -> Directory {
        Directory {
            committed_members: Mutex::new(members.clone()),
            members: Mutex::new(members),
            removed: Mutex::new(removed),
            removal: Mutex::new(None),
            stranger_routes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a configuration this node holds (the latest or the committed one) names `id`.
    fn knows(&self, id: NodeId) -> bool {
        self.member(id).is_some()
            || self
                .committed_members
                .lock()
                .expect("directory lock poisoned")
                .iter()
                .any(|m| m.id == id)
    }

    /// Remembers where to answer `id`, a sender that no configuration of this node names yet
    /// (a member's own record wins: nothing is noted for a known sender). The newest address
    /// of a stranger wins; beyond [`STRANGER_ROUTES_MAX`] strangers, the one with the lowest id
    /// is forgotten.
    pub fn note_stranger_route(&self, id: NodeId, addr: String) {
        if self.knows(id) {
            return;
        }
        let mut routes = self
            .stranger_routes
            .lock()
            .expect("directory lock poisoned");
        routes.insert(id, addr);
        while routes.len() > STRANGER_ROUTES_MAX {
            routes.pop_first();
        }
    }

    /// The address to answer stranger `id` at, if one of its RPCs named it.
    pub fn stranger_route(&self, id: NodeId) -> Option<Member> {
        let routes = self
            .stranger_routes
            .lock()
            .expect("directory lock poisoned");
        routes.get(&id).map(|addr| Member {
            // A metrics label for the link: bounded, the name is not known yet.
            name: "(not in the log yet)".to_string(),
            id,
            addr: addr.clone(),
            incarnation: 0,
        })
    }

    /// Whether RPCs from incarnation `incarnation` of `id` are heard: a member's record must
    /// name that incarnation (a record without one, 0, from a configuration older than
    /// incarnations, accepts any); else a removed incarnation is told so (410), and anyone
    /// else is refused (403).
    pub fn standing(&self, id: NodeId, incarnation: u64) -> Standing {
        let member = self.member(id);
        let committed = self
            .committed_members
            .lock()
            .expect("directory lock poisoned")
            .iter()
            .find(|m| m.id == id)
            .cloned();
        let skip_check = crate::plants::active(crate::plants::Plant::SkipIncarnationCheck);
        for known in [&member, &committed].into_iter().flatten() {
            if known.incarnation == 0 || known.incarnation == incarnation || skip_check {
                return Standing::Member;
            }
        }
        let removed = self.removed.lock().expect("directory lock poisoned");
        if removed.iter().any(|r| r.covers(id, incarnation)) {
            Standing::Removed
        } else if member.is_some() || committed.is_some() {
            Standing::OtherIncarnation
        } else {
            Standing::Stranger
        }
    }

    /// Why this node was removed from the cluster, once it knows.
    pub fn removal(&self) -> Option<String> {
        self.removal
            .lock()
            .expect("directory lock poisoned")
            .clone()
    }

    /// Records that this node was removed (a peer answered 410, or the log says so).
    pub(super) fn mark_removed(&self, reason: String) {
        let mut removal = self.removal.lock().expect("directory lock poisoned");
        if removal.is_none() {
            *removal = Some(reason);
        }
    }

    /// Every member, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .lock()
            .expect("directory lock poisoned")
            .clone()
    }

    /// The members a node keeps links to: those of the latest configuration, and those of the
    /// committed one that the latest dropped (they are still heard, so they must also get their
    /// answers).
    pub fn linked_members(&self) -> Vec<Member> {
        let mut links = self.members();
        let committed = self
            .committed_members
            .lock()
            .expect("directory lock poisoned");
        for member in committed.iter() {
            if links.iter().all(|m| m.id != member.id) {
                links.push(member.clone());
            }
        }
        links
    }

    /// The member with `id`.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.members().into_iter().find(|m| m.id == id)
    }

    /// The member called `name`.
    pub fn member_by_name(&self, name: &str) -> Option<Member> {
        self.members().into_iter().find(|m| m.name == name)
    }

    /// Takes the members of the latest configuration (committed or not), and the members and
    /// removed incarnations of the configuration committed at this node's commit index.
    pub(super) fn replace(
        &self,
        members: Vec<Member>,
        committed_members: Vec<Member>,
        committed_removed: Vec<RemovedMember>,
    ) {
        *self.members.lock().expect("directory lock poisoned") = members;
        *self
            .committed_members
            .lock()
            .expect("directory lock poisoned") = committed_members;
        *self.removed.lock().expect("directory lock poisoned") = committed_removed;
        // `knows` takes the member locks while the routes are held; no path holds a member
        // lock while it waits for the routes (`note_stranger_route` releases them first).
        self.stranger_routes
            .lock()
            .expect("directory lock poisoned")
            .retain(|id, _| !self.knows(*id));
    }
}

/// Notices, from the committed configuration, that this node was removed.
#[derive(Debug)]
pub(super) struct SelfRemoval {
    /// This node was in a committed configuration (a joining node is not, until its own
    /// addition commits: configurations before it in the log do not name it).
    was_member: bool,
}

impl SelfRemoval {
    pub(super) fn new(raft: &Raft) -> SelfRemoval {
        SelfRemoval {
            was_member: raft.membership().contains(raft.id()),
        }
    }

    /// Marks the directory once a committed configuration no longer names this node; returns
    /// whether it did.
    pub(super) fn maybe_notice(&mut self, raft: &Raft, directory: &Directory) -> bool {
        let committed = raft.membership_index() <= raft.hard_state().commit;
        let member = raft.membership().contains(raft.id());
        if !committed {
            return false;
        }
        if member {
            self.was_member = true;
            return false;
        }
        if !self.was_member {
            return false;
        }
        directory.mark_removed(format!(
            "this node was removed from the cluster (configuration at index {})",
            raft.membership_index()
        ));
        true
    }
}

/// The members of `membership`: names and addresses from the records in the log, else (for a
/// configuration bootstrapped before records) from `cluster.json`; a member known to neither
/// is listed by its id with no address.
pub(super) fn members_of(membership: &Membership, bootstrap: &ClusterInfo) -> Vec<Member> {
    membership
        .members()
        .map(|id| match membership.records.get(&id) {
            Some(record) => Member {
                name: record.name.clone(),
                id,
                addr: record.addr.clone(),
                incarnation: record.incarnation,
            },
            None => bootstrap.member(id).cloned().unwrap_or(Member {
                name: format!("{id:x}"),
                id,
                addr: String::new(),
                incarnation: 0,
            }),
        })
        .collect()
}

/// The records of the first configuration: every bootstrap member with the incarnation its
/// hello answer gave (each node persists its incarnation before answering, so every member
/// seeds the same records).
pub(super) fn bootstrap_membership(cluster: &ClusterInfo) -> Membership {
    let mut membership = cluster.membership();
    if cluster.joined {
        membership.voters.remove(&cluster.self_id);
    }
    membership.records = cluster
        .members
        .iter()
        .filter(|m| membership.contains(m.id))
        .map(|m| {
            let record = MemberRecord {
                name: m.name.clone(),
                addr: m.addr.clone(),
                incarnation: m.incarnation,
            };
            (m.id, record)
        })
        .collect();
    membership
}

/// What the membership API asks of the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOp {
    /// `GET /v1/cluster/members`.
    List,
    /// `POST /v1/cluster/members`: add a learner (or, with `learner: false`, a voter at once).
    Add {
        /// The new member's name.
        name: String,
        /// Where peers reach it.
        addr: String,
        /// Add as a learner (the safe default).
        learner: bool,
        /// The incarnation of its data directory (0 if unknown).
        incarnation: u64,
    },
    /// `POST /v1/cluster/members/{name}/promote`.
    Promote {
        /// The learner's name.
        name: String,
    },
    /// `DELETE /v1/cluster/members/{name}`.
    Remove {
        /// The member's name.
        name: String,
    },
}

/// One member as `GET /v1/cluster/members` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's name.
    pub name: String,
    /// Its id (hex).
    pub id: String,
    /// Where peers reach it.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// The highest index known replicated on it (known on the leader only).
    pub match_index: Option<Index>,
    /// Whether it answered the leader within the check-quorum window (leader only).
    pub reachable: Option<bool>,
    /// The incarnation of its data directory (0: unknown).
    pub incarnation: u64,
}

/// `GET /v1/cluster/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// The cluster id (hex): a joining node takes it.
    pub cluster_id: String,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// The index of the change that made the current configuration: the `?cas=` value.
    pub config_index: Index,
    /// Whether a change is appended but not yet committed.
    pub change_in_flight: bool,
    /// The leader's last log index (the catch-up reference for promotion), leader only.
    pub last_index: Option<Index>,
    /// Every member, voters and learners.
    pub members: Vec<MemberView>,
}

/// What the driver answers a membership request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipAnswer {
    /// The configuration as this node sees it.
    Listed(MembersView),
    /// The change committed at `index`.
    Changed {
        /// The change's log index (the next `?cas=` value).
        index: Index,
    },
}

/// Why a membership request was refused; each maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node does not lead (the API forwards to `leader`).
    #[error("not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// 400: a bad name, address or request.
    #[error("{0}")]
    Invalid(String),
    /// 404: no member has this name.
    #[error("no member is called {0:?}")]
    NotFound(String),
    /// 409: another change is appended and not yet committed.
    #[error("another membership change is in flight; retry once it commits")]
    InFlight,
    /// 409: the request contradicts the configuration (already a member, already a voter).
    #[error("{0}")]
    Conflict(String),
    /// 409: the learner is too far behind to vote yet.
    #[error(
        "learner {name:?} is not caught up: match index {match_index} of {last_index} \
         (at most {PROMOTE_LAG_ENTRIES_MAX} behind, and reachable); retry later"
    )]
    NotCaughtUp {
        /// The learner.
        name: String,
        /// What the leader knows replicated on it.
        match_index: Index,
        /// The leader's last index.
        last_index: Index,
    },
    /// 412: `?cas=` named another configuration.
    #[error("the configuration is at index {current}, not {expected}")]
    CasMismatch {
        /// The `cas` the client sent.
        expected: Index,
        /// The current configuration's index.
        current: Index,
    },
    /// The leader itself is to be removed: the API hands leadership over first.
    #[error("the leader cannot remove itself; leadership is handed over first")]
    IsLeader,
    /// 503 + Retry-After: the change cannot be taken now (a new leader's first commit, a
    /// leadership transfer); retrying soon works.
    #[error("{0}")]
    Unavailable(String),
    /// 503: the change's log slot went to another leader; it was not applied.
    #[error("leadership changed before the change committed; it was not applied, retry")]
    Dropped,
    /// 504: the change was taken but did not commit in time; its outcome is unknown.
    #[error("timed out; the change may still commit (check GET /v1/cluster/members)")]
    Timeout,
}

/// Changes waiting for their `Config` entry to apply, by log index.
#[derive(Default)]
pub(super) struct Waiters {
    pending: BTreeMap<
        Index,
        (
            Term,
            oneshot::Sender<Result<MembershipAnswer, MembershipError>>,
        ),
    >,
}

impl Waiters {
    /// Answers every change at or below `index` (applied now): committed if the entry at its
    /// index is the one it proposed, dropped otherwise.
    pub(super) fn applied(&mut self, index: Index, term: Term) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (pending_index, (pending_term, reply)) = entry.remove_entry();
            let answer = if pending_index == index && pending_term == term {
                Ok(MembershipAnswer::Changed { index })
            } else {
                Err(MembershipError::Dropped)
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers every waiting change whose slot a snapshot covers: its outcome is unknown.
    pub(super) fn covered_by_snapshot(&mut self, index: Index) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (_, (_, reply)) = entry.remove_entry();
            let _ = reply.send(Err(MembershipError::Timeout));
        }
    }
}

/// Handles one membership request on the driver: lists, or checks and proposes the change and
/// queues the reply until it applies.
pub(super) fn handle_request(
    raft: &mut Raft,
    cluster: &ClusterInfo,
    directory: &Directory,
    waiters: &mut Waiters,
    op: MembershipOp,
    cas: Option<Index>,
    reply: oneshot::Sender<Result<MembershipAnswer, MembershipError>>,
) {
    if op == MembershipOp::List {
        let _ = reply.send(Ok(MembershipAnswer::Listed(list(raft, cluster, directory))));
        return;
    }
    match propose(raft, directory, op, cas) {
        Ok(index) => {
            let term = raft.soft_state().term;
            waiters.pending.insert(index, (term, reply));
        }
        Err(error) => {
            let _ = reply.send(Err(error));
        }
    }
}

fn list(raft: &Raft, cluster: &ClusterInfo, directory: &Directory) -> MembersView {
    let status = raft.status();
    let membership = &status.membership;
    let members = directory
        .members()
        .into_iter()
        .map(|member| MemberView {
            role: if membership.voters.contains(&member.id) {
                "voter".into()
            } else {
                "learner".into()
            },
            match_index: raft.match_index(member.id),
            reachable: raft.recently_active(member.id),
            incarnation: membership
                .records
                .get(&member.id)
                .map_or(0, |r| r.incarnation),
            id: format!("{:x}", member.id),
            name: member.name,
            addr: member.addr,
        })
        .collect();
    let is_leader = status.soft_state.role == Role::Leader;
    MembersView {
        cluster_id: format!("{:x}", cluster.cluster_id),
        leader: status
            .soft_state
            .leader
            .map(|id| directory.member(id).map_or(format!("{id:x}"), |m| m.name)),
        config_index: raft.membership_index(),
        change_in_flight: raft.membership_index() > status.hard_state.commit,
        last_index: is_leader.then_some(status.last_index),
        members,
    }
}

/// Checks `op` against the configuration and proposes it; returns the entry's index.
fn propose(
    raft: &mut Raft,
    directory: &Directory,
    op: MembershipOp,
    cas: Option<Index>,
) -> Result<Index, MembershipError> {
    let soft = raft.soft_state();
    if soft.role != Role::Leader {
        return Err(MembershipError::NotLeader {
            leader: soft.leader,
        });
    }
    let membership = raft.membership().clone();
    let config_index = raft.membership_index();
    if config_index > raft.hard_state().commit {
        return Err(MembershipError::InFlight);
    }
    if let Some(expected) = cas {
        if expected != config_index {
            return Err(MembershipError::CasMismatch {
                expected,
                current: config_index,
            });
        }
    }
    let known = |name: &str| {
        directory
            .member_by_name(name)
            .filter(|m| membership.contains(m.id))
            .ok_or_else(|| MembershipError::NotFound(name.to_string()))
    };
    let change = match op {
        MembershipOp::List => unreachable!("lists are answered before proposing"),
        MembershipOp::Add {
            name,
            addr,
            learner,
            incarnation,
        } => {
            let name = validate_name(&name).map_err(MembershipError::Invalid)?;
            let addr = validate_addr(&addr).map_err(MembershipError::Invalid)?;
            let id = node_id_of(&name);
            if membership.contains(id) {
                return Err(MembershipError::Conflict(format!(
                    "{name:?} is already a member; remove it first to replace it"
                )));
            }
            if let Some(other) = directory.members().into_iter().find(|m| m.addr == addr) {
                return Err(MembershipError::Conflict(format!(
                    "member {:?} already has address {addr}",
                    other.name
                )));
            }
            let record = MemberRecord {
                name,
                addr,
                incarnation,
            };
            if learner {
                ConfChange::AddLearnerWithRecord(id, record)
            } else {
                // A voter added directly counts in quorums before it holds any entry: only an
                // empty cluster log makes that harmless, so the API asks for a learner first.
                return Err(MembershipError::Invalid(
                    "add members as learners (\"learner\": true) and promote them once caught up"
                        .into(),
                ));
            }
        }
        MembershipOp::Promote { name } => {
            let member = known(&name)?;
            if membership.voters.contains(&member.id) {
                return Err(MembershipError::Conflict(format!(
                    "{name:?} is already a voter"
                )));
            }
            let last_index = raft.status().last_index;
            let match_index = raft.match_index(member.id).unwrap_or(0);
            let reachable = raft.recently_active(member.id).unwrap_or(false);
            if match_index + PROMOTE_LAG_ENTRIES_MAX < last_index || !reachable {
                return Err(MembershipError::NotCaughtUp {
                    name,
                    match_index,
                    last_index,
                });
            }
            ConfChange::AddVoter(member.id)
        }
        MembershipOp::Remove { name } => {
            let member = known(&name)?;
            if member.id == raft.id() {
                return Err(MembershipError::IsLeader);
            }
            ConfChange::Remove(member.id)
        }
    };
    raft.propose_conf_change(change)
        .map_err(|error| match error {
            RaftError::NotLeader { leader } => MembershipError::NotLeader { leader },
            RaftError::ConfChangePending => MembershipError::InFlight,
            RaftError::TermNotCommitted { .. } | RaftError::TransferInProgress => {
                MembershipError::Unavailable(error.to_string())
            }
            RaftError::Invalid(message) => MembershipError::Conflict(message),
            other => MembershipError::Unavailable(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Config, RestoreState};
    use rand_chacha::rand_core::SeedableRng;

    /// A single-voter leader ("n1") whose `Noop` committed, and its directory.
    fn leader() -> (Raft, Directory) {
        let cluster = ClusterInfo::new("n1", "h:1", Vec::new());
        let membership = bootstrap_membership(&cluster);
        let mut raft = Raft::new(
            Config::new(cluster.self_id),
            membership,
            RestoreState::default(),
            rand_chacha::ChaCha8Rng::seed_from_u64(1),
        )
        .unwrap();
        raft.campaign();
        settle(&mut raft);
        assert_eq!(raft.soft_state().role, Role::Leader);
        let directory = Directory::new(members_of(raft.membership(), &cluster), Vec::new());
        (raft, directory)
    }

    /// Persists and applies everything the core asks (one node: that commits it).
    fn settle(raft: &mut Raft) {
        while raft.has_ready() {
            let ready = raft.ready();
            raft.advance(&ready);
        }
    }

    fn add(name: &str, addr: &str) -> MembershipOp {
        MembershipOp::Add {
            name: name.into(),
            addr: addr.into(),
            learner: true,
            incarnation: 7,
        }
    }

    #[test]
    fn a_second_change_while_one_is_uncommitted_is_refused_as_in_flight() {
        let (mut raft, directory) = leader();
        let index = propose(&mut raft, &directory, add("n2", "h:2"), None).unwrap();
        assert_eq!(raft.membership_index(), index);
        assert_eq!(
            propose(&mut raft, &directory, add("n3", "h:3"), None),
            Err(MembershipError::InFlight)
        );
        settle(&mut raft);
        let members = members_of(raft.membership(), &ClusterInfo::new("n1", "h:1", vec![]));
        directory.replace(members.clone(), members, raft.membership().removed.clone());
        assert!(propose(&mut raft, &directory, add("n3", "h:3"), Some(index)).is_ok());
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let (mut raft, directory) = leader();
        let at = raft.membership_index();
        assert_eq!(
            propose(&mut raft, &directory, add("n2", "h:2"), Some(at + 5)),
            Err(MembershipError::CasMismatch {
                expected: at + 5,
                current: at
            })
        );
        assert!(matches!(
            propose(&mut raft, &directory, add("bad name", "h:2"), None),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            propose(&mut raft, &directory, add("n2", "no-port"), None),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            propose(&mut raft, &directory, add("n1", "h:9"), None),
            Err(MembershipError::Conflict(_))
        ));
        assert!(matches!(
            propose(&mut raft, &directory, add("n2", "h:1"), None),
            Err(MembershipError::Conflict(_))
        ));
        assert_eq!(
            propose(
                &mut raft,
                &directory,
                MembershipOp::Remove { name: "n9".into() },
                None
            ),
            Err(MembershipError::NotFound("n9".into()))
        );
        assert_eq!(
            propose(
                &mut raft,
                &directory,
                MembershipOp::Remove { name: "n1".into() },
                None
            ),
            Err(MembershipError::IsLeader)
        );
        // A learner that never answered is not caught up.
        propose(&mut raft, &directory, add("n2", "h:2"), None).unwrap();
        settle(&mut raft);
        let members = members_of(raft.membership(), &ClusterInfo::new("n1", "h:1", vec![]));
        directory.replace(members.clone(), members, raft.membership().removed.clone());
        assert!(matches!(
            propose(
                &mut raft,
                &directory,
                MembershipOp::Promote { name: "n2".into() },
                None
            ),
            Err(MembershipError::NotCaughtUp { .. })
        ));
        assert!(matches!(
            propose(
                &mut raft,
                &directory,
                MembershipOp::Promote { name: "n1".into() },
                None
            ),
            Err(MembershipError::Conflict(_))
        ));
    }

    #[test]
    fn a_stranger_is_answered_where_it_said_until_a_configuration_names_it() {
        let member = |name: &str| Member {
            name: name.into(),
            id: node_id_of(name),
            addr: format!("{name}:1"),
            incarnation: 7,
        };
        let directory = Directory::new(vec![member("a")], Vec::new());
        // A member's own record wins over what its RPCs say.
        directory.note_stranger_route(node_id_of("a"), "elsewhere:1".into());
        assert_eq!(directory.stranger_route(node_id_of("a")), None);
        // A leader added after this node's log ends is answered where it said it is.
        let leader = node_id_of("leader");
        directory.note_stranger_route(leader, "leader:9".into());
        let route = directory
            .stranger_route(leader)
            .expect("a route to the stranger");
        assert_eq!((route.id, route.addr.as_str()), (leader, "leader:9"));
        // Bounded: many strangers keep only the last few.
        for i in 0..2 * STRANGER_ROUTES_MAX as u64 {
            directory.note_stranger_route(i + 1, format!("s{i}:1"));
        }
        let kept = (1..=2 * STRANGER_ROUTES_MAX as u64 + 1)
            .chain([leader])
            .filter(|id| directory.stranger_route(*id).is_some())
            .count();
        assert_eq!(kept, STRANGER_ROUTES_MAX);
        // Once the log names it, its record is used and the route is forgotten.
        directory.note_stranger_route(leader, "leader:9".into());
        let members = vec![member("a"), member("leader")];
        directory.replace(members.clone(), members, Vec::new());
        assert_eq!(directory.stranger_route(leader), None);
        assert_eq!(
            directory.member(leader).map(|m| m.addr),
            Some("leader:1".into())
        );
    }

    #[test]
    fn the_directory_hears_members_under_their_incarnation_and_tells_removed_ones_so() {
        let member = |name: &str, incarnation: u64| Member {
            name: name.into(),
            id: node_id_of(name),
            addr: format!("{name}:1"),
            incarnation,
        };
        let (a, b, c) = (node_id_of("a"), node_id_of("b"), node_id_of("c"));
        // "a" is recorded with incarnation 5, "legacy" without one; "b" incarnation 6 was
        // removed, and every incarnation of "c" (removed without a record).
        let directory = Directory::new(
            vec![member("a", 5), member("legacy", 0)],
            vec![
                RemovedMember {
                    id: b,
                    incarnation: 6,
                },
                RemovedMember {
                    id: c,
                    incarnation: 0,
                },
            ],
        );
        assert_eq!(directory.standing(a, 5), Standing::Member);
        assert_eq!(directory.standing(a, 4), Standing::OtherIncarnation);
        assert_eq!(
            directory.standing(node_id_of("legacy"), 99),
            Standing::Member
        );
        assert_eq!(directory.standing(b, 6), Standing::Removed);
        assert_eq!(directory.standing(b, 7), Standing::Stranger);
        assert_eq!(directory.standing(c, 1), Standing::Removed);
        assert_eq!(directory.standing(node_id_of("d"), 1), Standing::Stranger);
        // "b" joins again as a new incarnation: that one is heard, the removed one still told.
        let committed = vec![member("a", 5), member("b", 8)];
        directory.replace(
            committed.clone(),
            committed,
            vec![RemovedMember {
                id: b,
                incarnation: 6,
            }],
        );
        assert_eq!(directory.standing(b, 8), Standing::Member);
        assert_eq!(directory.standing(b, 6), Standing::Removed);
        assert_eq!(directory.standing(b, 9), Standing::OtherIncarnation);
        assert_eq!(directory.removal(), None);
        // A removal not yet committed is not told, and the dropped member is still heard: the
        // removal may be overwritten by another leader's log (thesis §4.1).
        let removed_b = RemovedMember {
            id: b,
            incarnation: 8,
        };
        directory.replace(
            vec![member("a", 5)],
            vec![member("a", 5), member("b", 8)],
            vec![],
        );
        assert_eq!(directory.standing(b, 8), Standing::Member);
        assert_eq!(directory.standing(b, 7), Standing::OtherIncarnation);
        // Once it commits, b is told it is gone.
        directory.replace(vec![member("a", 5)], vec![member("a", 5)], vec![removed_b]);
        assert_eq!(directory.standing(b, 8), Standing::Removed);
        directory.mark_removed("first".into());
        directory.mark_removed("second".into());
        assert_eq!(directory.removal().as_deref(), Some("first"));
    }
}
