//! Raft's safety properties (Raft paper, Figure 3) checked over plain views of a cluster.
//!
//! The checker sees only [`NodeView`]s (term, role, commit index, snapshot point and the digests
//! of the log entries), so the same code serves the in-memory core cluster of the property
//! tests, the fuzzers and the simulator. It remembers what it saw across observations, so a
//! property broken between two distant moments (two leaders of one term an hour apart, a
//! committed entry missing from a much later leader) is still caught.
//!
//! Checked on every [`InvariantChecker::observe`]:
//!
//! - **Election safety** (§5.2): at most one node is ever seen as leader of a given term.
//! - **Log matching** (§5.3): an entry is identified by (index, term). Every log that holds it
//!   holds the same digest, and the same term just before it (the snapshot term when it is the
//!   first entry after a snapshot). By induction this is the paper's property: two logs with an
//!   entry of the same index and term are identical up to it. It is checked against every log
//!   ever observed, not only the logs of one moment.
//! - **Leader completeness** (§5.4): an entry at or below a node's commit index, in that node's
//!   log, is committed. It was committed in a term no later than that node's current term (a
//!   node learns of commits only from leaders of its term or earlier); the checker records the
//!   term of the first node it saw the entry committed on as `commit_term_max`. Every leader of
//!   a term above `commit_term_max` must hold the entry, unless its snapshot covers the index.
//!   (Requiring it of every leader of a term above the *entry's* term would be wrong: a stale
//!   leader elected before the entry was committed may legally lack it.)
//! - **State machine safety** (§5.4.3): no two different entries are ever seen committed,
//!   applied ([`InvariantChecker::observe_applied`]), or snapshotted at one index.
//! - **Persistent state is monotonic** (Figure 2): a node's term never decreases; its commit
//!   index never decreases either, except after [`InvariantChecker::node_restarted`] (the
//!   commit index is volatile and may restart lower).
//! - **Views are well formed**: log indices run contiguously from `snapshot_index + 1`, entry
//!   terms are at least 1, never decrease along the log, start at or above the snapshot term
//!   and never exceed the node's term.
//!
//! The checker is incremental: per node it remembers the last log it saw and re-checks only the
//! entries that changed, so calling `observe` after every step of a simulation stays cheap
//! (linear in the number of nodes plus the changed entries, plus a copy-free comparison of each
//! log with its previous version). After a violation is reported, the checker's memory is
//! partly updated; stop using it.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::types::{Entry, EntryKind, Index, NodeId, Role, Term};

/// What the checker needs to know about one node at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's id.
    pub id: NodeId,
    /// The node's current term.
    pub term: Term,
    /// The node's role.
    pub role: Role,
    /// The node's commit index.
    pub commit_index: Index,
    /// The last index its snapshot covers (0: none).
    pub snapshot_index: Index,
    /// The term of the entry at `snapshot_index` (0: none).
    pub snapshot_term: Term,
    /// The log entries after the snapshot, in order: (index, term, [`entry_digest`]).
    pub log: Vec<(Index, Term, u64)>,
}

impl NodeView {
    /// The log part of a view, built from the entries themselves.
    pub fn digest_log(entries: &[Entry]) -> Vec<(Index, Term, u64)> {
        entries
            .iter()
            .map(|entry| {
                (
                    entry.index,
                    entry.term,
                    entry_digest(entry.kind, &entry.data),
                )
            })
            .collect()
    }

    /// The index of the last entry (the snapshot index when the log is empty).
    pub fn last_index(&self) -> Index {
        self.log
            .last()
            .map_or(self.snapshot_index, |&(index, _, _)| index)
    }

    /// The (term, digest) of the entry at `index`, if the log holds it.
    fn entry_at(&self, index: Index) -> Option<(Term, u64)> {
        let position = index.checked_sub(self.snapshot_index + 1)?;
        let &(_, term, digest) = self.log.get(usize::try_from(position).ok()?)?;
        Some((term, digest))
    }
}

/// The fingerprint of an entry's kind and payload: 64-bit FNV-1a over a kind tag byte followed by
/// the data. Fixed forever, so digests from different runs and processes compare.
pub fn entry_digest(kind: EntryKind, data: &[u8]) -> u64 {
    let tag: u8 = match kind {
        EntryKind::Normal => 1,
        EntryKind::Noop => 2,
        EntryKind::Config => 3,
    };
    let mut hasher = crate::fnv::Fnv1a64::new();
    hasher.update(&[tag]);
    hasher.update(data);
    hasher.finish()
}

/// How the checker learned that an entry sits at an index for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The entry was at or below a node's commit index.
    Committed,
    /// A node applied the entry to its state machine.
    Applied,
    /// A node's snapshot ends at the index with this term (no digest known).
    Snapshot,
}

/// One sighting of an entry at a settled index, for [`InvariantViolation::StateMachineSafety`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The node it was seen on.
    pub node: NodeId,
    /// The entry's term.
    pub term: Term,
    /// The entry's digest (`None` for a snapshot, whose last entry's digest is not known).
    pub digest: Option<u64>,
    /// How it was seen.
    pub evidence: Evidence,
}

impl fmt::Display for Sighting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.evidence {
            Evidence::Committed => "committed",
            Evidence::Applied => "applied",
            Evidence::Snapshot => "snapshotted",
        };
        write!(f, "{how} on node {} with term {}", self.node, self.term)?;
        if let Some(digest) = self.digest {
            write!(f, " and digest {digest:#018x}")?;
        }
        Ok(())
    }
}

/// A broken Raft property, with the values that show it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// Two nodes were leaders of one term.
    #[error("election safety (Raft §5.2, Figure 3) violated: term {term} had leaders {leaders:?}")]
    ElectionSafety {
        /// The term.
        term: Term,
        /// The leaders seen in it (ascending).
        leaders: Vec<NodeId>,
    },
    /// Two logs disagree about the entry identified by (index, term) or what precedes it.
    #[error(
        "log matching (Raft §5.3, Figure 3) violated: entry (index {index}, term {term}) has digest \
         {other_digest:#018x} after an entry of term {other_previous_term} on node {other}, but \
         digest {digest:#018x} after an entry of term {previous_term} on node {node}"
    )]
    LogMatching {
        /// The entry's index.
        index: Index,
        /// The entry's term.
        term: Term,
        /// The node where the disagreement was found.
        node: NodeId,
        /// The entry's digest there.
        digest: u64,
        /// The term of the entry before it there (the snapshot term if it is the first).
        previous_term: Term,
        /// The node where the entry was first seen.
        other: NodeId,
        /// The entry's digest there.
        other_digest: u64,
        /// The term of the entry before it there.
        other_previous_term: Term,
    },
    /// A leader lacks an entry committed in an earlier term.
    #[error(
        "leader completeness (Raft §5.4, Figure 3) violated: node {leader}, leader of term \
         {leader_term}, holds {found:?} (term, digest) at index {index}, but the entry (term \
         {committed_term}, digest {committed_digest:#018x}) was committed there in term \
         {commit_term_max} or earlier (first seen committed on node {witness})"
    )]
    LeaderCompleteness {
        /// The leader.
        leader: NodeId,
        /// Its term.
        leader_term: Term,
        /// The index of the missing entry.
        index: Index,
        /// The committed entry's term.
        committed_term: Term,
        /// The committed entry's digest.
        committed_digest: u64,
        /// The entry was committed in this term or earlier.
        commit_term_max: Term,
        /// The node the entry was first seen committed on.
        witness: NodeId,
        /// What the leader holds at the index (`None`: nothing, its log is shorter).
        found: Option<(Term, u64)>,
    },
    /// Two different entries were settled at one index.
    #[error(
        "state machine safety (Raft §5.4.3, Figure 3) violated at index {index}: {first}, but {second}"
    )]
    StateMachineSafety {
        /// The index.
        index: Index,
        /// The earlier sighting.
        first: Sighting,
        /// The conflicting one.
        second: Sighting,
    },
    /// A node's persisted term went down.
    #[error("term went backwards (Raft Figure 2, currentTerm is persistent) on node {node}: {before} -> {after}")]
    TermWentBackwards {
        /// The node.
        node: NodeId,
        /// Its term before.
        before: Term,
        /// Its term now.
        after: Term,
    },
    /// A node's commit index went down without a restart.
    #[error("commit index went backwards (Raft Figure 2, commitIndex only increases) on node {node} without a restart: {before} -> {after}")]
    CommitWentBackwards {
        /// The node.
        node: NodeId,
        /// Its commit index before.
        before: Index,
        /// Its commit index now.
        after: Index,
    },
    /// A view that no Raft node can be in (see the module documentation).
    #[error("malformed view of node {node}: {detail}")]
    MalformedView {
        /// The node.
        node: NodeId,
        /// What is wrong, with values.
        detail: String,
    },
}

impl InvariantViolation {
    /// The property broken, with the paper section (what a report names as the failed check).
    pub fn property(&self) -> &'static str {
        match self {
            InvariantViolation::ElectionSafety { .. } => "election safety (Raft §5.2)",
            InvariantViolation::LogMatching { .. } => "log matching (Raft §5.3)",
            InvariantViolation::LeaderCompleteness { .. } => "leader completeness (Raft §5.4)",
            InvariantViolation::StateMachineSafety { .. } => "state machine safety (Raft §5.4.3)",
            InvariantViolation::TermWentBackwards { .. } => "term is persistent (Raft Figure 2)",
            InvariantViolation::CommitWentBackwards { .. } => {
                "commit index only increases (Raft Figure 2)"
            }
            InvariantViolation::MalformedView { .. } => "well-formed node state",
        }
    }
}

/// What the checker remembers of one (index, term) entry.
#[derive(Clone, Copy, Debug)]
struct EntrySeen {
    digest: u64,
    previous_term: Term,
    node: NodeId,
}

/// What the checker remembers of a committed index.
#[derive(Clone, Copy, Debug)]
struct CommittedEntry {
    term: Term,
    digest: u64,
    /// The node it was first seen committed on.
    node: NodeId,
    /// That node's term then: the entry was committed in this term or earlier.
    commit_term_max: Term,
}

/// What the checker remembers of one node.
#[derive(Clone, Debug, Default)]
struct NodeTrack {
    term: Term,
    /// `None` right after a restart: the next commit index may be anything.
    commit_index: Option<Index>,
    snapshot_index: Index,
    /// The log as last observed.
    log: Vec<(Index, Term, u64)>,
    /// Entries of `log` up to this index were recorded as committed.
    committed_through: Index,
    /// While the node leads term `.0`, committed entries up to `.1` were verified in its log.
    leader_verified: Option<(Term, Index)>,
}

/// Checks Raft's safety properties over a sequence of cluster observations.
#[derive(Clone, Debug, Default)]
pub struct InvariantChecker {
    /// The leader seen for each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every (index, term) entry ever seen in a log.
    entries: BTreeMap<(Index, Term), EntrySeen>,
    /// Every index ever seen committed.
    committed: BTreeMap<Index, CommittedEntry>,
    /// Every index ever seen applied: (term, digest, node).
    applied: BTreeMap<Index, (Term, u64, NodeId)>,
    /// Per-node memory.
    nodes: BTreeMap<NodeId, NodeTrack>,
}

impl InvariantChecker {
    /// A checker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one observation of the cluster; call after every step. Nodes that are down may be
    /// left out; a node must not be listed twice.
    pub fn observe(&mut self, nodes: &[NodeView]) -> Result<(), InvariantViolation> {
        let mut ids = BTreeSet::new();
        let mut changed_from = Vec::with_capacity(nodes.len());
        for view in nodes {
            if !ids.insert(view.id) {
                return Err(malformed(view, "listed twice in one observation".into()));
            }
            let changed = self.changed_from(view);
            check_shape(view, changed)?;
            self.check_monotonic(view)?;
            self.check_election_safety(view)?;
            self.check_log_matching(view, changed)?;
            changed_from.push(changed);
        }
        let mut committed_through = Vec::with_capacity(nodes.len());
        for (view, &changed) in nodes.iter().zip(&changed_from) {
            committed_through.push(self.record_committed(view, changed)?);
        }
        let mut leader_verified = Vec::with_capacity(nodes.len());
        for (view, &changed) in nodes.iter().zip(&changed_from) {
            leader_verified.push(self.check_leader_completeness(view, changed)?);
        }
        for (((view, changed), through), verified) in nodes
            .iter()
            .zip(changed_from)
            .zip(committed_through)
            .zip(leader_verified)
        {
            let track = self.nodes.entry(view.id).or_default();
            track.term = view.term;
            track.commit_index = Some(view.commit_index);
            update_log(track, view, changed);
            track.snapshot_index = view.snapshot_index;
            track.committed_through = through;
            track.leader_verified = verified;
        }
        Ok(())
    }

    /// State machine safety: node `id` applied the entry at `index` with `term` and `digest`.
    pub fn observe_applied(
        &mut self,
        id: NodeId,
        index: Index,
        term: Term,
        digest: u64,
    ) -> Result<(), InvariantViolation> {
        let second = Sighting {
            node: id,
            term,
            digest: Some(digest),
            evidence: Evidence::Applied,
        };
        if let Some(committed) = self.committed.get(&index) {
            if (committed.term, committed.digest) != (term, digest) {
                return Err(InvariantViolation::StateMachineSafety {
                    index,
                    first: committed_sighting(committed),
                    second,
                });
            }
        }
        match self.applied.entry(index) {
            MapEntry::Vacant(vacant) => {
                vacant.insert((term, digest, id));
            }
            MapEntry::Occupied(occupied) => {
                let &(first_term, first_digest, first_node) = occupied.get();
                if (first_term, first_digest) != (term, digest) {
                    return Err(InvariantViolation::StateMachineSafety {
                        index,
                        first: Sighting {
                            node: first_node,
                            term: first_term,
                            digest: Some(first_digest),
                            evidence: Evidence::Applied,
                        },
                        second,
                    });
                }
            }
        }
        Ok(())
    }

    /// Node `id` crashed and restarted: its volatile commit index may come back lower. Its term
    /// is persisted and still may never decrease.
    pub fn node_restarted(&mut self, id: NodeId) {
        if let Some(track) = self.nodes.get_mut(&id) {
            track.commit_index = None;
            track.leader_verified = None;
        }
    }

    /// The highest committed entry seen so far: (index, term, digest).
    pub fn highest_committed(&self) -> Option<(Index, Term, u64)> {
        self.committed
            .last_key_value()
            .map(|(&index, committed)| (index, committed.term, committed.digest))
    }

    /// The first index at which `view`'s log differs from the one last observed on this node
    /// (everything after a difference counts as changed).
    fn changed_from(&self, view: &NodeView) -> Index {
        let first_index = view.snapshot_index + 1;
        let Some(track) = self.nodes.get(&view.id) else {
            return first_index;
        };
        let Some(offset) = view.snapshot_index.checked_sub(track.snapshot_index) else {
            return first_index;
        };
        let old = usize::try_from(offset)
            .ok()
            .and_then(|offset| track.log.get(offset..))
            .unwrap_or(&[]);
        let same = old
            .iter()
            .zip(&view.log)
            .take_while(|(old, new)| old == new)
            .count();
        first_index + same as Index
    }

    fn check_monotonic(&self, view: &NodeView) -> Result<(), InvariantViolation> {
        let Some(track) = self.nodes.get(&view.id) else {
            return Ok(());
        };
        if view.term < track.term {
            return Err(InvariantViolation::TermWentBackwards {
                node: view.id,
                before: track.term,
                after: view.term,
            });
        }
        if let Some(before) = track.commit_index {
            if view.commit_index < before {
                return Err(InvariantViolation::CommitWentBackwards {
                    node: view.id,
                    before,
                    after: view.commit_index,
                });
            }
        }
        Ok(())
    }

    fn check_election_safety(&mut self, view: &NodeView) -> Result<(), InvariantViolation> {
        if view.role != Role::Leader {
            return Ok(());
        }
        match self.leaders.entry(view.term) {
            MapEntry::Vacant(vacant) => {
                vacant.insert(view.id);
                Ok(())
            }
            MapEntry::Occupied(occupied) if *occupied.get() == view.id => Ok(()),
            MapEntry::Occupied(occupied) => {
                let mut leaders = vec![*occupied.get(), view.id];
                leaders.sort_unstable();
                Err(InvariantViolation::ElectionSafety {
                    term: view.term,
                    leaders,
                })
            }
        }
    }

    /// Checks the entries at `changed` and above, and the first entry (whose predecessor is the
    /// snapshot, which may have moved).
    fn check_log_matching(
        &mut self,
        view: &NodeView,
        changed: Index,
    ) -> Result<(), InvariantViolation> {
        let changed_position = usize::try_from(changed - (view.snapshot_index + 1))
            .expect("log position fits in usize");
        let positions = (0..view.log.len().min(1)).chain(changed_position.max(1)..view.log.len());
        for position in positions {
            let (index, term, digest) = view.log[position];
            let previous_term = match position {
                0 => view.snapshot_term,
                _ => view.log[position - 1].1,
            };
            match self.entries.entry((index, term)) {
                MapEntry::Vacant(vacant) => {
                    vacant.insert(EntrySeen {
                        digest,
                        previous_term,
                        node: view.id,
                    });
                }
                MapEntry::Occupied(occupied) => {
                    let seen = occupied.get();
                    if (seen.digest, seen.previous_term) != (digest, previous_term) {
                        return Err(InvariantViolation::LogMatching {
                            index,
                            term,
                            node: view.id,
                            digest,
                            previous_term,
                            other: seen.node,
                            other_digest: seen.digest,
                            other_previous_term: seen.previous_term,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the entries of `view` at or below its commit index that were not recorded yet;
    /// returns the new `committed_through` for the node.
    fn record_committed(
        &mut self,
        view: &NodeView,
        changed: Index,
    ) -> Result<Index, InvariantViolation> {
        if view.snapshot_index > 0 {
            let snapshot = Sighting {
                node: view.id,
                term: view.snapshot_term,
                digest: None,
                evidence: Evidence::Snapshot,
            };
            if let Some(committed) = self.committed.get(&view.snapshot_index) {
                if committed.term != view.snapshot_term {
                    return Err(InvariantViolation::StateMachineSafety {
                        index: view.snapshot_index,
                        first: committed_sighting(committed),
                        second: snapshot,
                    });
                }
            }
        }
        let recorded = self
            .nodes
            .get(&view.id)
            .map_or(0, |track| track.committed_through);
        let from = recorded.min(changed - 1).max(view.snapshot_index);
        let upto = view.commit_index.min(view.last_index());
        for index in from + 1..=upto {
            let (term, digest) = view
                .entry_at(index)
                .expect("index between snapshot and last index");
            let second = Sighting {
                node: view.id,
                term,
                digest: Some(digest),
                evidence: Evidence::Committed,
            };
            if let Some(&(first_term, first_digest, first_node)) = self.applied.get(&index) {
                if (first_term, first_digest) != (term, digest) {
                    return Err(InvariantViolation::StateMachineSafety {
                        index,
                        first: Sighting {
                            node: first_node,
                            term: first_term,
                            digest: Some(first_digest),
                            evidence: Evidence::Applied,
                        },
                        second,
                    });
                }
            }
            match self.committed.entry(index) {
                MapEntry::Vacant(vacant) => {
                    vacant.insert(CommittedEntry {
                        term,
                        digest,
                        node: view.id,
                        commit_term_max: view.term,
                    });
                }
                MapEntry::Occupied(occupied) => {
                    let first = occupied.get();
                    if (first.term, first.digest) != (term, digest) {
                        return Err(InvariantViolation::StateMachineSafety {
                            index,
                            first: committed_sighting(first),
                            second,
                        });
                    }
                }
            }
        }
        Ok(from.max(upto))
    }

    /// Raft §5.4: a leader holds every entry committed in an earlier term. Returns the node's
    /// new `leader_verified`.
    fn check_leader_completeness(
        &self,
        view: &NodeView,
        changed: Index,
    ) -> Result<Option<(Term, Index)>, InvariantViolation> {
        if view.role != Role::Leader {
            return Ok(None);
        }
        let previously = self
            .nodes
            .get(&view.id)
            .and_then(|track| track.leader_verified);
        let start = match previously {
            // Still the same leadership and the verified part of the log is unchanged; the
            // committed map never changes at a recorded index.
            Some((term, verified)) if term == view.term && verified < changed => verified,
            _ => 0,
        }
        .max(view.snapshot_index);
        let mut verified = start;
        for (&index, committed) in self.committed.range(start + 1..) {
            if committed.commit_term_max < view.term {
                let found = view.entry_at(index);
                if found != Some((committed.term, committed.digest)) {
                    return Err(InvariantViolation::LeaderCompleteness {
                        leader: view.id,
                        leader_term: view.term,
                        index,
                        committed_term: committed.term,
                        committed_digest: committed.digest,
                        commit_term_max: committed.commit_term_max,
                        witness: committed.node,
                        found,
                    });
                }
            }
            verified = index;
        }
        Ok(Some((view.term, verified)))
    }
}

fn committed_sighting(committed: &CommittedEntry) -> Sighting {
    Sighting {
        node: committed.node,
        term: committed.term,
        digest: Some(committed.digest),
        evidence: Evidence::Committed,
    }
}

fn malformed(view: &NodeView, detail: String) -> InvariantViolation {
    InvariantViolation::MalformedView {
        node: view.id,
        detail,
    }
}

/// Checks the shape of the log from `changed` on (the part before was checked when observed).
fn check_shape(view: &NodeView, changed: Index) -> Result<(), InvariantViolation> {
    if view.snapshot_index == 0 && view.snapshot_term != 0 {
        return Err(malformed(
            view,
            format!("no snapshot but snapshot term {}", view.snapshot_term),
        ));
    }
    if view.snapshot_term > view.term {
        return Err(malformed(
            view,
            format!(
                "snapshot term {} above the node's term {}",
                view.snapshot_term, view.term
            ),
        ));
    }
    let first_position = usize::try_from(changed - (view.snapshot_index + 1))
        .expect("log position fits in usize")
        .saturating_sub(1);
    let positions = (0..view.log.len().min(1)).chain(first_position.max(1)..view.log.len());
    for position in positions {
        let (index, term, _) = view.log[position];
        let expected_index = view.snapshot_index + 1 + position as Index;
        let (previous_index, previous_term) = match position {
            0 => (view.snapshot_index, view.snapshot_term),
            _ => (view.log[position - 1].0, view.log[position - 1].1),
        };
        if index != expected_index {
            return Err(malformed(
                view,
                format!("log position {position} holds index {index}, expected {expected_index}"),
            ));
        }
        if term == 0 || term < previous_term || term > view.term {
            return Err(malformed(
                view,
                format!(
                    "entry {index} has term {term} after term {previous_term} at index \
                     {previous_index} (node term {}): terms must be in [1, node term] and never \
                     decrease",
                    view.term
                ),
            ));
        }
    }
    Ok(())
}

/// Makes `track.log` equal to `view.log`, copying only what changed.
fn update_log(track: &mut NodeTrack, view: &NodeView, changed: Index) {
    match view.snapshot_index.checked_sub(track.snapshot_index) {
        Some(offset) => {
            let drop = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(track.log.len());
            track.log.drain(..drop);
        }
        None => track.log.clear(),
    }
    let keep = usize::try_from(changed - (view.snapshot_index + 1))
        .expect("log position fits in usize")
        .min(track.log.len());
    track.log.truncate(keep);
    track.log.extend_from_slice(&view.log[keep..]);
    debug_assert_eq!(track.log, view.log);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of (term, payload) pairs starting right after `snapshot_index`.
    fn log(snapshot_index: Index, entries: &[(Term, &str)]) -> Vec<(Index, Term, u64)> {
        entries
            .iter()
            .enumerate()
            .map(|(position, &(term, payload))| {
                (
                    snapshot_index + 1 + position as Index,
                    term,
                    entry_digest(EntryKind::Normal, payload.as_bytes()),
                )
            })
            .collect()
    }

    fn node(
        id: NodeId,
        term: Term,
        role: Role,
        commit_index: Index,
        entries: &[(Term, &str)],
    ) -> NodeView {
        NodeView {
            id,
            term,
            role,
            commit_index,
            snapshot_index: 0,
            snapshot_term: 0,
            log: log(0, entries),
        }
    }

    fn leader(id: NodeId, term: Term, commit_index: Index, entries: &[(Term, &str)]) -> NodeView {
        node(id, term, Role::Leader, commit_index, entries)
    }

    fn follower(id: NodeId, term: Term, commit_index: Index, entries: &[(Term, &str)]) -> NodeView {
        node(id, term, Role::Follower, commit_index, entries)
    }

    fn compacted(mut view: NodeView, snapshot_index: Index, snapshot_term: Term) -> NodeView {
        let drop = (snapshot_index - view.snapshot_index) as usize;
        view.log.drain(..drop);
        view.snapshot_index = snapshot_index;
        view.snapshot_term = snapshot_term;
        view
    }

    fn digest(payload: &str) -> u64 {
        entry_digest(EntryKind::Normal, payload.as_bytes())
    }

    #[test]
    fn entry_digest_is_fixed_fnv1a() {
        // 64-bit FNV-1a over the tag byte 0x01 then "hello" (reference value computed
        // independently; the same routine gives the standard vector 0xaf63dc4c8601ec8c for "a").
        assert_eq!(
            entry_digest(EntryKind::Normal, b"hello"),
            0xe657_88c8_60f9_c52c
        );
        assert_ne!(
            entry_digest(EntryKind::Normal, b"x"),
            entry_digest(EntryKind::Config, b"x")
        );
        assert_ne!(
            entry_digest(EntryKind::Noop, b""),
            entry_digest(EntryKind::Normal, b"")
        );
    }

    #[test]
    fn a_good_multi_step_history_passes() {
        let mut checker = InvariantChecker::new();
        let step = |checker: &mut InvariantChecker, nodes: &[NodeView]| {
            checker
                .observe(nodes)
                .unwrap_or_else(|violation| panic!("{violation}"))
        };
        // Everyone starts as a follower; node 1 campaigns and wins term 1.
        step(
            &mut checker,
            &[
                follower(1, 0, 0, &[]),
                follower(2, 0, 0, &[]),
                follower(3, 0, 0, &[]),
            ],
        );
        step(
            &mut checker,
            &[
                leader(1, 1, 0, &[(1, "noop")]),
                follower(2, 1, 0, &[]),
                follower(3, 1, 0, &[]),
            ],
        );
        // The leader replicates to node 2 and commits; node 3 lags.
        let log1 = [(1, "noop"), (1, "a"), (1, "b")];
        step(
            &mut checker,
            &[
                leader(1, 1, 2, &log1),
                follower(2, 1, 1, &log1[..2]),
                follower(3, 1, 0, &[]),
            ],
        );
        checker.observe_applied(1, 1, 1, digest("noop")).unwrap();
        checker.observe_applied(1, 2, 1, digest("a")).unwrap();
        // Node 1 is cut off holding an uncommitted entry 3; node 2 wins term 2 and overwrites
        // node 3's empty log; node 1 still believes it leads term 1 (a stale leader is legal).
        let log2 = [(1, "noop"), (1, "a"), (2, "noop2"), (2, "c")];
        step(
            &mut checker,
            &[
                leader(1, 1, 2, &log1),
                leader(2, 2, 4, &log2),
                follower(3, 2, 4, &log2),
            ],
        );
        checker.observe_applied(3, 3, 2, digest("noop2")).unwrap();
        // Node 1 hears of term 2: its uncommitted entry 3 is replaced; it compacts up to 3.
        let node1 = compacted(follower(1, 2, 4, &log2), 3, 2);
        step(
            &mut checker,
            &[
                node1.clone(),
                leader(2, 2, 4, &log2),
                follower(3, 2, 4, &log2),
            ],
        );
        // Node 3 crashes and restarts with a lower (volatile) commit index, then node 3 wins
        // term 3 and commits a new entry.
        checker.node_restarted(3);
        step(
            &mut checker,
            &[node1, leader(2, 2, 4, &log2), follower(3, 2, 1, &log2)],
        );
        let log3 = [(1, "noop"), (1, "a"), (2, "noop2"), (2, "c"), (3, "noop3")];
        step(
            &mut checker,
            &[
                compacted(follower(1, 3, 5, &log3), 3, 2),
                follower(2, 3, 4, &log2),
                leader(3, 3, 5, &log3),
            ],
        );
        checker.observe_applied(2, 4, 2, digest("c")).unwrap();
        assert_eq!(checker.highest_committed(), Some((5, 3, digest("noop3"))));
    }

    #[test]
    fn a_stale_leader_elected_before_a_commit_may_lack_the_entry() {
        // Entry (1, term 1) reaches nodes 1 and 2 only; node 3 wins term 2 without it; node 1
        // then wins term 3 and commits it. Node 3, still leader of term 2, legally lacks it.
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[
                leader(1, 1, 0, &[(1, "x")]),
                follower(2, 1, 0, &[(1, "x")]),
                follower(3, 1, 0, &[]),
            ])
            .unwrap();
        checker
            .observe(&[
                leader(1, 3, 2, &[(1, "x"), (3, "noop")]),
                follower(2, 3, 2, &[(1, "x"), (3, "noop")]),
                leader(3, 2, 0, &[(2, "y")]),
            ])
            .unwrap();
    }

    #[test]
    fn two_leaders_in_one_term_break_election_safety() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[leader(1, 2, 0, &[]), follower(2, 2, 0, &[])])
            .unwrap();
        // Much later, node 2 also claims term 2.
        checker.observe(&[follower(1, 2, 0, &[])]).unwrap();
        let violation = checker.observe(&[leader(2, 2, 0, &[])]).unwrap_err();
        assert_eq!(
            violation,
            InvariantViolation::ElectionSafety {
                term: 2,
                leaders: vec![1, 2]
            }
        );
        assert!(violation.to_string().contains("§5.2"), "{violation}");
    }

    #[test]
    fn same_index_and_term_with_different_data_breaks_log_matching() {
        let mut checker = InvariantChecker::new();
        let violation = checker
            .observe(&[
                follower(1, 1, 0, &[(1, "a")]),
                follower(2, 1, 0, &[(1, "b")]),
            ])
            .unwrap_err();
        assert_eq!(
            violation,
            InvariantViolation::LogMatching {
                index: 1,
                term: 1,
                node: 2,
                digest: digest("b"),
                previous_term: 0,
                other: 1,
                other_digest: digest("a"),
                other_previous_term: 0,
            }
        );
    }

    #[test]
    fn same_entry_after_different_prefixes_breaks_log_matching() {
        let mut checker = InvariantChecker::new();
        let violation = checker
            .observe(&[
                follower(1, 3, 0, &[(1, "a"), (3, "c")]),
                follower(2, 3, 0, &[(2, "a"), (3, "c")]),
            ])
            .unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::LogMatching {
                    index: 2,
                    term: 3,
                    previous_term: 2,
                    other_previous_term: 1,
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn an_entry_rewritten_over_time_breaks_log_matching() {
        let mut checker = InvariantChecker::new();
        checker.observe(&[follower(1, 1, 0, &[(1, "a")])]).unwrap();
        let violation = checker
            .observe(&[follower(1, 1, 0, &[(1, "b")])])
            .unwrap_err();
        assert!(
            matches!(violation, InvariantViolation::LogMatching { index: 1, .. }),
            "{violation:?}"
        );
    }

    #[test]
    fn a_snapshot_that_changes_what_precedes_an_entry_breaks_log_matching() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[follower(1, 2, 0, &[(1, "a"), (2, "b")])])
            .unwrap();
        // The log after the snapshot is unchanged, but the snapshot claims entry 1 had term 2.
        let view = compacted(follower(1, 2, 0, &[(2, "a"), (2, "b")]), 1, 2);
        let violation = checker.observe(&[view]).unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::LogMatching {
                    index: 2,
                    term: 2,
                    previous_term: 2,
                    other_previous_term: 1,
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn a_long_run_is_checked_incrementally() {
        // 3 nodes, 3000 entries appended one at a time, observed after every append: checking
        // only what changed keeps this test fast even in a debug build.
        let mut checker = InvariantChecker::new();
        let mut log = Vec::new();
        for index in 1..=3_000u64 {
            log.push((
                index,
                1,
                entry_digest(EntryKind::Normal, &index.to_le_bytes()),
            ));
            let view = |id, role, commit_index, entries: &[(Index, Term, u64)]| NodeView {
                id,
                term: 1,
                role,
                commit_index,
                snapshot_index: 0,
                snapshot_term: 0,
                log: entries.to_vec(),
            };
            let lagging = &log[..log.len() - 1];
            checker
                .observe(&[
                    view(1, Role::Leader, index - 1, &log),
                    view(2, Role::Follower, index - 1, &log),
                    view(3, Role::Follower, index - 1, lagging),
                ])
                .unwrap();
        }
        assert_eq!(
            checker.highest_committed().map(|(index, _, _)| index),
            Some(2_999)
        );
    }

    #[test]
    fn a_leader_missing_a_committed_entry_breaks_leader_completeness() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[leader(1, 1, 1, &[(1, "a")]), follower(2, 1, 1, &[(1, "a")])])
            .unwrap();
        // Node 3 leads term 2 with an empty log.
        let violation = checker
            .observe(&[follower(1, 2, 1, &[(1, "a")]), leader(3, 2, 0, &[])])
            .unwrap_err();
        assert_eq!(
            violation,
            InvariantViolation::LeaderCompleteness {
                leader: 3,
                leader_term: 2,
                index: 1,
                committed_term: 1,
                committed_digest: digest("a"),
                commit_term_max: 1,
                witness: 1,
                found: None,
            }
        );
        assert!(violation.to_string().contains("§5.4"), "{violation}");
    }

    #[test]
    fn a_leader_holding_another_entry_at_a_committed_index_breaks_leader_completeness() {
        let mut checker = InvariantChecker::new();
        checker.observe(&[leader(1, 1, 1, &[(1, "a")])]).unwrap();
        // Checked incrementally: first node 3 leads term 2 correctly, then (with the same term)
        // its log loses the entry.
        checker
            .observe(&[leader(3, 2, 0, &[(1, "a"), (2, "n")])])
            .unwrap();
        let violation = checker
            .observe(&[leader(3, 2, 0, &[(2, "n")])])
            .unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::LeaderCompleteness {
                    leader: 3,
                    index: 1,
                    found: Some((2, _)),
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn a_commit_learned_late_is_checked_against_the_current_leader() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[leader(3, 3, 0, &[(1, "a"), (3, "n")])])
            .unwrap();
        checker
            .observe(&[leader(3, 3, 0, &[(1, "a"), (3, "n")])])
            .unwrap();
        // A lagging node of term 2 shows that (2, term 1) was committed in term 2 or earlier:
        // the leader of term 3 replaced it, which Raft forbids.
        let violation = checker
            .observe(&[
                follower(1, 2, 2, &[(1, "a"), (1, "b")]),
                leader(3, 3, 0, &[(1, "a"), (3, "n")]),
            ])
            .unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::LeaderCompleteness {
                    leader: 3,
                    index: 2,
                    commit_term_max: 2,
                    found: Some((3, _)),
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn a_leader_whose_snapshot_covers_a_committed_entry_is_complete() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[leader(1, 1, 2, &[(1, "a"), (1, "b")])])
            .unwrap();
        let view = compacted(leader(2, 2, 2, &[(1, "a"), (1, "b"), (2, "n")]), 2, 1);
        checker.observe(&[view]).unwrap();
    }

    #[test]
    fn different_entries_applied_at_one_index_break_state_machine_safety() {
        let mut checker = InvariantChecker::new();
        checker.observe_applied(1, 7, 2, digest("a")).unwrap();
        checker.observe_applied(2, 7, 2, digest("a")).unwrap();
        let violation = checker.observe_applied(3, 7, 3, digest("b")).unwrap_err();
        assert_eq!(
            violation,
            InvariantViolation::StateMachineSafety {
                index: 7,
                first: Sighting {
                    node: 1,
                    term: 2,
                    digest: Some(digest("a")),
                    evidence: Evidence::Applied
                },
                second: Sighting {
                    node: 3,
                    term: 3,
                    digest: Some(digest("b")),
                    evidence: Evidence::Applied
                },
            }
        );
        assert!(violation.to_string().contains("§5.4.3"), "{violation}");
    }

    #[test]
    fn different_entries_committed_at_one_index_break_state_machine_safety() {
        let mut checker = InvariantChecker::new();
        let violation = checker
            .observe(&[
                follower(1, 2, 1, &[(1, "a")]),
                follower(2, 2, 1, &[(2, "b")]),
            ])
            .unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::StateMachineSafety {
                    index: 1,
                    first: Sighting {
                        node: 1,
                        evidence: Evidence::Committed,
                        ..
                    },
                    second: Sighting {
                        node: 2,
                        evidence: Evidence::Committed,
                        ..
                    },
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn applying_an_entry_other_than_the_committed_one_breaks_state_machine_safety() {
        let mut checker = InvariantChecker::new();
        checker.observe(&[follower(1, 1, 1, &[(1, "a")])]).unwrap();
        let violation = checker.observe_applied(2, 1, 1, digest("z")).unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::StateMachineSafety {
                    first: Sighting {
                        evidence: Evidence::Committed,
                        ..
                    },
                    second: Sighting {
                        evidence: Evidence::Applied,
                        ..
                    },
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn a_snapshot_disagreeing_with_a_committed_entry_breaks_state_machine_safety() {
        let mut checker = InvariantChecker::new();
        checker
            .observe(&[follower(1, 2, 2, &[(1, "a"), (1, "b")])])
            .unwrap();
        let view = compacted(follower(2, 2, 2, &[(1, "a"), (2, "b")]), 2, 2);
        let violation = checker.observe(&[view]).unwrap_err();
        assert!(
            matches!(
                violation,
                InvariantViolation::StateMachineSafety {
                    index: 2,
                    second: Sighting {
                        evidence: Evidence::Snapshot,
                        digest: None,
                        ..
                    },
                    ..
                }
            ),
            "{violation:?}"
        );
    }

    #[test]
    fn a_decreasing_term_is_reported_even_after_a_restart() {
        let mut checker = InvariantChecker::new();
        checker.observe(&[follower(1, 5, 0, &[])]).unwrap();
        checker.node_restarted(1);
        assert_eq!(
            checker.observe(&[follower(1, 4, 0, &[])]).unwrap_err(),
            InvariantViolation::TermWentBackwards {
                node: 1,
                before: 5,
                after: 4
            }
        );
    }

    #[test]
    fn a_decreasing_commit_index_is_reported_unless_the_node_restarted() {
        let entries = [(1, "a"), (1, "b")];
        let mut checker = InvariantChecker::new();
        checker.observe(&[follower(1, 1, 2, &entries)]).unwrap();
        assert_eq!(
            checker.observe(&[follower(1, 1, 1, &entries)]).unwrap_err(),
            InvariantViolation::CommitWentBackwards {
                node: 1,
                before: 2,
                after: 1
            }
        );
        let mut checker = InvariantChecker::new();
        checker.observe(&[follower(1, 1, 2, &entries)]).unwrap();
        checker.node_restarted(1);
        checker.observe(&[follower(1, 1, 1, &entries)]).unwrap();
        checker.observe(&[follower(1, 1, 2, &entries)]).unwrap();
        // Monotonic again after the restart.
        assert!(matches!(
            checker.observe(&[follower(1, 1, 0, &entries)]),
            Err(InvariantViolation::CommitWentBackwards { .. })
        ));
    }

    #[test]
    fn impossible_views_are_reported_as_malformed() {
        let cases = [
            // A gap in the indices.
            NodeView {
                log: vec![(1, 1, 0), (3, 1, 0)],
                ..follower(1, 1, 0, &[])
            },
            // Terms going down along the log.
            follower(1, 2, 0, &[(2, "a"), (1, "b")]),
            // An entry from a term the node has not reached.
            follower(1, 1, 0, &[(2, "a")]),
            // A log that does not start right after the snapshot.
            NodeView {
                snapshot_index: 4,
                snapshot_term: 1,
                ..follower(1, 1, 0, &[(1, "a")])
            },
        ];
        for view in cases {
            let violation = InvariantChecker::new()
                .observe(std::slice::from_ref(&view))
                .unwrap_err();
            assert!(
                matches!(violation, InvariantViolation::MalformedView { node: 1, .. }),
                "{view:?}: {violation:?}"
            );
        }
        let twice = [follower(1, 1, 0, &[]), follower(1, 1, 0, &[])];
        assert!(matches!(
            InvariantChecker::new().observe(&twice),
            Err(InvariantViolation::MalformedView { .. })
        ));
    }

    #[test]
    fn digest_log_matches_entry_digest() {
        let entries = [Entry {
            term: 3,
            index: 9,
            kind: EntryKind::Config,
            data: bytes::Bytes::from_static(b"cfg"),
        }];
        assert_eq!(
            NodeView::digest_log(&entries),
            vec![(9, 3, entry_digest(EntryKind::Config, b"cfg"))]
        );
    }
}
