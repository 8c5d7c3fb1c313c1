//! Membership as recorded in the log (thesis §4.1): the latest `Config` entry rules, committed
//! or not; truncating the log rolls it back.

use super::types::{ConfChange, Entry, EntryKind, Index, Membership};

/// The membership at the snapshot (or the initial one) plus every change in the log after it.
///
/// Invariant: `changes` is ordered by index and every index is above the snapshot index.
#[derive(Clone, Debug)]
pub(crate) struct MembershipLog {
    /// The membership as of the snapshot index.
    base: Membership,
    /// The index of the change that produced `base` (the snapshot index when a restored
    /// snapshot folded it in, 0 for the initial membership).
    base_index: Index,
    /// `(index of the Config entry, membership it produced)`, ascending.
    changes: Vec<(Index, Membership)>,
}

/// Decodes a `Config` entry's payload.
pub(crate) fn decode_conf_change(entry: &Entry) -> Result<ConfChange, String> {
    postcard::from_bytes::<ConfChange>(&entry.data).map_err(|error| {
        format!(
            "config entry {} does not decode as a ConfChange: {error}",
            entry.index
        )
    })
}

impl MembershipLog {
    /// A membership log with no change after `base`.
    pub(crate) fn new(base: Membership) -> MembershipLog {
        MembershipLog {
            base,
            base_index: 0,
            changes: Vec::new(),
        }
    }

    /// The current membership (the latest change, committed or not).
    pub(crate) fn current(&self) -> &Membership {
        self.changes.last().map(|(_, m)| m).unwrap_or(&self.base)
    }

    /// The index of the change that produced the current membership.
    pub(crate) fn current_index(&self) -> Index {
        self.latest_change_index().unwrap_or(self.base_index)
    }

    /// The index of the latest `Config` entry in the log, if any after the snapshot.
    pub(crate) fn latest_change_index(&self) -> Option<Index> {
        self.changes.last().map(|(index, _)| *index)
    }

    /// The membership in force at `index`.
    pub(crate) fn at(&self, index: Index) -> &Membership {
        let position = self.changes.partition_point(|(i, _)| *i <= index);
        if position == 0 {
            &self.base
        } else {
            &self.changes[position - 1].1
        }
    }

    /// Records the entries appended to the log; `Config` entries must decode (validated before).
    pub(crate) fn observe_appended(&mut self, entries: &[Entry]) {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Config) {
            let change = decode_conf_change(entry)
                .unwrap_or_else(|error| panic!("unvalidated config entry: {error}"));
            let next = change.apply(self.current());
            self.changes.push((entry.index, next));
        }
    }

    /// Forgets changes at or after `index` (the log was truncated there).
    pub(crate) fn truncate_from(&mut self, index: Index) {
        self.changes.retain(|(i, _)| *i < index);
    }

    /// Folds every change at or below `index` into the base (the log was compacted there).
    pub(crate) fn compact_to(&mut self, index: Index) {
        self.base = self.at(index).clone();
        if let Some((folded, _)) = self.changes.iter().rev().find(|(i, _)| *i <= index) {
            self.base_index = *folded;
        }
        self.changes.retain(|(i, _)| *i > index);
    }

    /// Restarts from a snapshot's membership (as of `snapshot_index`) with no change after it.
    pub(crate) fn reset(&mut self, base: Membership, snapshot_index: Index) {
        self.base = base;
        self.base_index = snapshot_index;
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{MemberRecord, RemovedMember, Term, REMOVED_MEMBERS_MAX};

    fn config_entry(index: Index, term: Term, change: ConfChange) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Config,
            data: postcard::to_allocvec(&change).unwrap().into(),
        }
    }

    /// Voters {1, 2, 3}; node 4 added at index 5, node 1 removed at index 8.
    fn two_changes() -> MembershipLog {
        let mut log = MembershipLog::new(Membership::with_voters([1, 2, 3]));
        log.observe_appended(&[
            config_entry(5, 1, ConfChange::AddVoter(4)),
            config_entry(8, 1, ConfChange::Remove(1)),
        ]);
        log
    }

    /// The membership after `two_changes`: node 1 removed (it had no record).
    fn without_1() -> Membership {
        let mut membership = Membership::with_voters([2, 3, 4]);
        membership.removed = vec![RemovedMember {
            id: 1,
            incarnation: 0,
        }];
        membership
    }

    #[test]
    fn the_membership_at_an_index_is_the_latest_change_at_or_before_it() {
        let log = two_changes();
        assert_eq!(log.at(4), &Membership::with_voters([1, 2, 3]));
        assert_eq!(log.at(5), &Membership::with_voters([1, 2, 3, 4]));
        assert_eq!(log.at(7), &Membership::with_voters([1, 2, 3, 4]));
        assert_eq!(log.at(8), &without_1());
        assert_eq!(log.current(), &without_1());
        assert_eq!(log.latest_change_index(), Some(8));
    }

    #[test]
    fn truncating_at_a_change_rolls_the_membership_back_before_it() {
        let mut log = two_changes();
        log.truncate_from(9);
        assert_eq!(log.latest_change_index(), Some(8));
        log.truncate_from(8);
        assert_eq!(log.latest_change_index(), Some(5));
        assert_eq!(log.current(), &Membership::with_voters([1, 2, 3, 4]));
    }

    #[test]
    fn compacting_folds_the_changes_it_covers_into_the_base() {
        let mut log = two_changes();
        log.compact_to(7);
        assert_eq!(log.latest_change_index(), Some(8));
        assert_eq!(log.at(6), &Membership::with_voters([1, 2, 3, 4]));
        assert_eq!(log.current(), &without_1());
        // Compacting exactly at a change folds it in too.
        assert_eq!(log.current_index(), 8);
        log.compact_to(8);
        assert_eq!(log.latest_change_index(), None);
        assert_eq!(log.current_index(), 8);
        assert_eq!(log.at(8), &without_1());
        assert_eq!(log.current(), &without_1());
    }

    #[test]
    fn a_removal_remembers_the_removed_incarnation_and_a_bounded_number_of_them() {
        let record = |incarnation| MemberRecord {
            name: "n4".into(),
            addr: "h:4".into(),
            incarnation,
        };
        let removed_4 = |incarnation| RemovedMember { id: 4, incarnation };
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership = ConfChange::AddLearnerWithRecord(4, record(40)).apply(&membership);
        membership = ConfChange::Remove(4).apply(&membership);
        assert!(membership.records.is_empty());
        assert_eq!(membership.removed, vec![removed_4(40)]);
        assert!(membership.removed[0].covers(4, 40));
        assert!(!membership.removed[0].covers(4, 41));
        assert!(!membership.removed[0].covers(5, 40));
        // Back with a new incarnation, removed again: both incarnations are remembered.
        membership = ConfChange::AddLearnerWithRecord(4, record(41)).apply(&membership);
        assert_eq!(membership.removed, vec![removed_4(40)]);
        membership = ConfChange::Remove(4).apply(&membership);
        assert_eq!(membership.removed, vec![removed_4(40), removed_4(41)]);
        // Without a record, every incarnation counts as removed.
        membership = ConfChange::AddLearner(4).apply(&membership);
        membership = ConfChange::Remove(4).apply(&membership);
        assert!(membership.removed[2].covers(4, 12345));
        // The oldest are forgotten past the bound; a repeated removal moves to the end.
        for id in 100..100 + REMOVED_MEMBERS_MAX as u64 {
            membership = ConfChange::AddLearner(id).apply(&membership);
            membership = ConfChange::Remove(id).apply(&membership);
        }
        assert_eq!(membership.removed.len(), REMOVED_MEMBERS_MAX);
        assert_eq!(membership.removed[0].id, 100);
        membership = ConfChange::AddLearner(100).apply(&membership);
        membership = ConfChange::Remove(100).apply(&membership);
        assert_eq!(membership.removed.len(), REMOVED_MEMBERS_MAX);
        assert_eq!(membership.removed[0].id, 101);
        assert_eq!(membership.removed.last().map(|r| r.id), Some(100));
    }
}
