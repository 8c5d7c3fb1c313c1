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
            changes: Vec::new(),
        }
    }

    /// The current membership (the latest change, committed or not).
    pub(crate) fn current(&self) -> &Membership {
        self.changes.last().map(|(_, m)| m).unwrap_or(&self.base)
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
        self.changes.retain(|(i, _)| *i > index);
    }

    /// Restarts from a snapshot's membership with no change after it.
    pub(crate) fn reset(&mut self, base: Membership) {
        self.base = base;
        self.changes.clear();
    }
}
