//! The in-memory Raft log: the latest snapshot plus the entries after it, and possibly a tail of
//! entries the snapshot already covers.
//!
//! The core keeps the log since its start in memory; the driver persists what
//! `Ready` hands out. This module tracks, beside the entries themselves, how far they were
//! handed out for persistence (`unstable_from`), acknowledged as persisted (`persisted`),
//! committed, handed out for applying (`applying`) and acknowledged as applied (`applied`).

use super::types::{Entry, Index, Snapshot, Term};

/// The log since the latest snapshot, with its progress markers.
///
/// Invariants (checked by [`RaftLog::check_invariants`]):
/// `snapshot_index <= applied <= applying <= commit <= last_index` (while no received snapshot
/// awaits acknowledgement), `log_start <= snapshot_index`, `entries[i].index == log_start + 1 + i`,
/// `unstable_from <= last_index + 1`.
///
/// A local compaction may keep a tail of entries the snapshot covers (`log_start <
/// snapshot_index`, design of issue 8 as etcd's `SnapshotCatchUpEntries`): a follower only
/// slightly behind then catches up from the log instead of receiving the whole snapshot.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The latest snapshot (taken locally or received from a leader), if any.
    snapshot: Option<Snapshot>,
    /// The index the snapshot covers (0 without a snapshot).
    snapshot_index: Index,
    /// The term of the entry at `snapshot_index` (0 without a snapshot).
    snapshot_term: Term,
    /// The index just before the first entry held (`<= snapshot_index`).
    log_start: Index,
    /// The term of the entry at `log_start` (0 at index 0).
    log_start_term: Term,
    /// Entries after `log_start`, contiguous.
    entries: Vec<Entry>,
    /// The highest index known to be committed.
    pub(crate) commit: Index,
    /// The highest index the driver acknowledged as applied.
    pub(crate) applied: Index,
    /// The highest committed index handed out for applying (>= applied).
    pub(crate) applying: Index,
    /// The highest index the driver acknowledged as persisted (all entries up to it).
    pub(crate) persisted: Index,
    /// The first index not yet handed out for persistence.
    pub(crate) unstable_from: Index,
    /// A snapshot received from a leader that was not yet handed out in a `Ready`.
    pub(crate) pending_snapshot: Option<Snapshot>,
    /// The index of a received snapshot handed out but not yet acknowledged by `advance`.
    pub(crate) unacked_snapshot_index: Option<Index>,
}

impl RaftLog {
    /// A log restored from a snapshot and the persisted entries after it. `entries` must be
    /// contiguous from `snapshot_index + 1` (entries at or below the snapshot are skipped).
    pub(crate) fn restore(
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
        commit: Index,
    ) -> Result<RaftLog, String> {
        let (snapshot_index, snapshot_term) = snapshot
            .as_ref()
            .map(|s| (s.meta.index, s.meta.term))
            .unwrap_or((0, 0));
        if snapshot_index > 0 && snapshot_term == 0 {
            return Err(format!("snapshot at index {snapshot_index} has term 0"));
        }
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > snapshot_index)
            .collect();
        let mut prev_term = snapshot_term;
        for (offset, entry) in entries.iter().enumerate() {
            let expected = snapshot_index + 1 + offset as u64;
            if entry.index != expected {
                return Err(format!(
                    "restored entries are not contiguous: expected index {expected}, found {}",
                    entry.index
                ));
            }
            if entry.term < prev_term || entry.term == 0 {
                return Err(format!(
                    "restored entry {} has term {} after term {prev_term}",
                    entry.index, entry.term
                ));
            }
            prev_term = entry.term;
        }
        let last_index = snapshot_index + entries.len() as u64;
        // The persisted commit is never trusted beyond the persisted log.
        let commit = commit.clamp(snapshot_index, last_index);
        Ok(RaftLog {
            snapshot,
            snapshot_index,
            snapshot_term,
            log_start: snapshot_index,
            log_start_term: snapshot_term,
            entries,
            commit,
            applied: snapshot_index,
            applying: snapshot_index,
            persisted: last_index,
            unstable_from: last_index + 1,
            pending_snapshot: None,
            unacked_snapshot_index: None,
        })
    }

    /// The index covered by the latest snapshot.
    pub(crate) fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// The latest snapshot, if any.
    pub(crate) fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The first index held in memory (at or below `snapshot_index + 1`).
    pub(crate) fn first_index(&self) -> Index {
        self.log_start + 1
    }

    /// The index just before the first entry held: the lowest index whose term is known.
    pub(crate) fn log_start(&self) -> Index {
        self.log_start
    }

    /// The index of the last entry (the snapshot index when no entry follows it).
    pub(crate) fn last_index(&self) -> Index {
        self.log_start + self.entries.len() as u64
    }

    /// The term of the last entry.
    pub(crate) fn last_term(&self) -> Term {
        self.entries
            .last()
            .map(|e| e.term)
            .unwrap_or(self.log_start_term)
    }

    /// The term of the entry at `index`, if known (the snapshot's last entry and the log's
    /// start included).
    pub(crate) fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index == self.log_start {
            return Some(self.log_start_term);
        }
        // (`index <= self.log_start` is the same test: the start was answered above.)
        if index < self.log_start || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.log_start - 1) as usize].term)
    }

    /// The entries in `[lo, hi)` held in memory (clamped to what exists).
    pub(crate) fn slice(&self, lo: Index, hi: Index) -> &[Entry] {
        let lo = lo.max(self.first_index());
        let hi = hi.min(self.last_index() + 1);
        if lo >= hi {
            return &[];
        }
        let start = (lo - self.log_start - 1) as usize;
        let end = (hi - self.log_start - 1) as usize;
        &self.entries[start..end]
    }

    /// Entries from `from` for one `Append`: at most `entries_max` entries and `bytes_max` bytes,
    /// but always at least one entry when any exists.
    pub(crate) fn batch(&self, from: Index, entries_max: usize, bytes_max: u64) -> &[Entry] {
        let all = self.slice(from, self.last_index() + 1);
        let mut bytes = 0u64;
        let mut count = 0usize;
        for entry in all.iter().take(entries_max.max(1)) {
            bytes += entry.size_bytes();
            if count > 0 && bytes > bytes_max {
                break;
            }
            count += 1;
        }
        &all[..count]
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`) is at least as up to
    /// date as this log (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term` (the last position where a log whose
    /// entry at `index` has `term` could still match this one). Terms never decrease along the
    /// log, so a binary search finds it among the entries in memory. Below the log's start terms
    /// are unknown: the answer is then at most the start, and below it when the start's own term
    /// is already too high.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let bound = index.min(self.last_index());
        // (`>=` is the same test: at the start the slice below is empty and nothing qualifies.)
        if bound > self.log_start {
            let candidates = self.slice(self.first_index(), bound + 1);
            let qualifying = candidates.partition_point(|e| e.term <= term);
            if qualifying > 0 {
                return self.log_start + qualifying as u64;
            }
        }
        let at_start = bound.min(self.log_start);
        if at_start == self.log_start && self.log_start_term > term {
            at_start.saturating_sub(1)
        } else {
            at_start
        }
    }

    /// The first index in `entries` whose term differs from this log's (or that this log lacks).
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| self.term_at(e.index) != Some(e.term))
            .map(|e| e.index)
    }

    /// Appends entries that continue the log exactly.
    pub(crate) fn append(&mut self, new_entries: Vec<Entry>) {
        if let Some(first) = new_entries.first() {
            let expected = self.last_index() + 1;
            assert!(
                first.index == expected,
                "append at index {} but the log ends at {}",
                first.index,
                self.last_index()
            );
            self.entries.extend(new_entries);
        }
    }

    /// Appends one entry that continues the log.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert!(
            entry.index == self.last_index() + 1,
            "push of index {} but the log ends at {}",
            entry.index,
            self.last_index()
        );
        self.entries.push(entry);
    }

    /// Drops every entry from `index` on (a follower's conflict resolution, Raft §5.3).
    pub(crate) fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.commit,
            "truncating at {index} would drop committed entries (commit {})",
            self.commit
        );
        assert!(
            index > self.snapshot_index,
            "truncating at {index} at or below the snapshot index {}",
            self.snapshot_index
        );
        self.entries.truncate((index - self.log_start - 1) as usize);
        // Entries that were handed out or persisted must be handed out again from here.
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub(crate) fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(
            index > self.commit,
            "installing snapshot {index} at or below commit {}",
            self.commit
        );
        self.snapshot_index = index;
        self.snapshot_term = snapshot.meta.term;
        self.log_start = index;
        self.log_start_term = snapshot.meta.term;
        self.entries.clear();
        self.commit = index;
        self.applying = index;
        self.unstable_from = index + 1;
        self.persisted = self.persisted.min(index);
        self.snapshot = Some(snapshot.clone());
        self.pending_snapshot = Some(snapshot);
    }

    /// Records a locally taken snapshot at `snapshot.meta.index` and drops the entries it covers
    /// except the last `tail_entries` of them (never moving the log's start back).
    pub(crate) fn compact(&mut self, snapshot: Snapshot, tail_entries: u64) {
        let index = snapshot.meta.index;
        assert!(
            index > self.snapshot_index && index <= self.applied && index < self.unstable_from,
            "compacting to {index} outside (snapshot {}, applied {}], unstable from {}",
            self.snapshot_index,
            self.applied,
            self.unstable_from
        );
        let new_start = index.saturating_sub(tail_entries).max(self.log_start);
        self.log_start_term = self
            .term_at(new_start)
            .unwrap_or_else(|| panic!("compaction start {new_start} has no term in the log"));
        self.entries.drain(..(new_start - self.log_start) as usize);
        self.log_start = new_start;
        self.snapshot_index = index;
        self.snapshot_term = snapshot.meta.term;
        self.snapshot = Some(snapshot);
    }

    /// Moves the commit index forward (never backward).
    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.commit = index;
        true
    }

    /// Entries not yet handed out for persistence.
    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        self.slice(self.unstable_from, self.last_index() + 1)
    }

    /// Whether any entry awaits handing out for persistence.
    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Committed entries not yet handed out for applying.
    pub(crate) fn next_committed(&self) -> &[Entry] {
        self.slice(self.applying + 1, self.commit + 1)
    }

    /// Whether committed entries await handing out.
    pub(crate) fn has_next_committed(&self) -> bool {
        self.commit > self.applying
    }

    /// Checks the ordering of the log's markers; panics with the values when broken.
    pub(crate) fn check_invariants(&self) {
        let snapshot_pending =
            self.pending_snapshot.is_some() || self.unacked_snapshot_index.is_some();
        assert!(
            snapshot_pending || self.snapshot_index <= self.applied,
            "snapshot_index({}) > applied({})",
            self.snapshot_index,
            self.applied
        );
        assert!(
            self.applied <= self.applying && self.applying <= self.commit,
            "applied({}) <= applying({}) <= commit({}) broken",
            self.applied,
            self.applying,
            self.commit
        );
        assert!(
            self.commit <= self.last_index(),
            "commit({}) > last_index({})",
            self.commit,
            self.last_index()
        );
        assert!(
            self.log_start <= self.snapshot_index,
            "log_start({}) > snapshot_index({})",
            self.log_start,
            self.snapshot_index
        );
        assert!(
            self.unstable_from <= self.last_index() + 1,
            "unstable_from({}) > last_index({}) + 1",
            self.unstable_from,
            self.last_index()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{EntryKind, Membership, SnapshotMeta};

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Default::default(),
        }
    }

    fn log_with(snapshot: (Index, Term), terms: &[Term]) -> RaftLog {
        let snapshot = (snapshot.0 > 0).then(|| Snapshot {
            meta: SnapshotMeta {
                index: snapshot.0,
                term: snapshot.1,
                membership: Membership::with_voters([1]),
            },
            data: Default::default(),
        });
        let base = snapshot.as_ref().map_or(0, |s| s.meta.index);
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(base + 1 + i as u64, t))
            .collect();
        RaftLog::restore(snapshot, entries, 0).unwrap()
    }

    #[test]
    fn the_invariant_check_names_each_broken_marker() {
        type Corruption = fn(&mut RaftLog);
        let broken: [(&str, Corruption); 4] = [
            ("applied(", |log| log.applied = 5),
            ("commit(", |log| log.commit = 9),
            ("log_start(", |log| log.log_start = 9),
            ("unstable_from(", |log| log.unstable_from = 9),
        ];
        for (marker, corrupt) in broken {
            let mut log = log_with((0, 0), &[1, 1]);
            log.check_invariants();
            corrupt(&mut log);
            let panic =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.check_invariants()))
                    .expect_err(marker);
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.starts_with(marker), "{marker}: {message}");
        }
    }

    #[test]
    fn find_conflict_by_term_finds_the_last_entry_not_above_the_term() {
        let log = log_with((0, 0), &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        assert_eq!(log.find_conflict_by_term(10, 6), 10);
        assert_eq!(log.find_conflict_by_term(10, 5), 7);
        assert_eq!(log.find_conflict_by_term(10, 3), 3);
        assert_eq!(log.find_conflict_by_term(10, 0), 0);
        assert_eq!(log.find_conflict_by_term(99, 4), 5);
    }

    #[test]
    fn find_conflict_by_term_goes_below_a_snapshot_whose_term_is_too_high() {
        let log = log_with((46, 2), &[2, 3]);
        // The snapshot's entry (46, 2) cannot match a term-1 entry: answer below it.
        assert_eq!(log.find_conflict_by_term(46, 1), 45);
        assert_eq!(log.find_conflict_by_term(48, 1), 45);
        assert_eq!(log.find_conflict_by_term(46, 2), 46);
        assert_eq!(log.find_conflict_by_term(30, 1), 30);
    }

    fn snapshot_at(index: Index, term: Term) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: Membership::with_voters([1]),
            },
            data: Default::default(),
        }
    }

    fn entry_of_bytes(index: Index, term: Term, data_bytes: usize) -> Entry {
        Entry {
            data: vec![0u8; data_bytes].into(),
            ..entry(index, term)
        }
    }

    #[test]
    fn restore_refuses_a_snapshot_of_term_0() {
        let error = RaftLog::restore(Some(snapshot_at(5, 0)), vec![], 0).unwrap_err();
        assert_eq!(error, "snapshot at index 5 has term 0");
        assert!(RaftLog::restore(Some(snapshot_at(5, 1)), vec![], 0).is_ok());
    }

    #[test]
    fn restore_refuses_a_term_that_decreases_and_an_entry_of_term_0() {
        let decreasing = vec![entry(1, 2), entry(2, 1)];
        assert_eq!(
            RaftLog::restore(None, decreasing, 0).unwrap_err(),
            "restored entry 2 has term 1 after term 2"
        );
        let below_snapshot = vec![entry(6, 2)];
        assert_eq!(
            RaftLog::restore(Some(snapshot_at(5, 3)), below_snapshot, 0).unwrap_err(),
            "restored entry 6 has term 2 after term 3"
        );
        let zero = vec![entry(1, 0)];
        assert_eq!(
            RaftLog::restore(None, zero, 0).unwrap_err(),
            "restored entry 1 has term 0 after term 0"
        );
        let log = RaftLog::restore(None, vec![entry(1, 1), entry(2, 1), entry(3, 2)], 0).unwrap();
        assert_eq!(log.last_index(), 3);
    }

    #[test]
    fn restore_skips_entries_the_snapshot_covers_and_raises_commit_to_it() {
        let entries = (3..=7).map(|index| entry(index, 1)).collect();
        let log = RaftLog::restore(Some(snapshot_at(5, 1)), entries, 2).unwrap();
        assert_eq!(log.first_index(), 6);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.slice(0, 100), &[entry(6, 1), entry(7, 1)]);
        assert_eq!(log.commit, 5);
        assert_eq!((log.applied, log.applying), (5, 5));
        assert_eq!((log.persisted, log.unstable_from), (7, 8));
        let gap = vec![entry(7, 1)];
        assert_eq!(
            RaftLog::restore(Some(snapshot_at(5, 1)), gap, 0).unwrap_err(),
            "restored entries are not contiguous: expected index 6, found 7"
        );
    }

    #[test]
    fn term_at_knows_the_snapshot_entry_and_nothing_outside_the_log() {
        let log = log_with((5, 2), &[2, 3]);
        assert_eq!(log.term_at(4), None);
        assert_eq!(log.term_at(0), None);
        assert_eq!(log.term_at(5), Some(2));
        assert_eq!(log.term_at(6), Some(2));
        assert_eq!(log.term_at(7), Some(3));
        assert_eq!(log.term_at(8), None);
    }

    #[test]
    fn batch_stops_at_the_entry_and_byte_limits_but_sends_at_least_one_entry() {
        // Entries of 24 bytes of overhead plus 10, 20 and 30 bytes of data.
        let entries = vec![
            entry_of_bytes(1, 1, 10),
            entry_of_bytes(2, 1, 20),
            entry_of_bytes(3, 1, 30),
        ];
        let log = RaftLog::restore(None, entries, 0).unwrap();
        let indexes = |batch: &[Entry]| batch.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(indexes(log.batch(1, 10, 1_000)), vec![1, 2, 3]);
        assert_eq!(indexes(log.batch(1, 2, 1_000)), vec![1, 2]);
        assert_eq!(indexes(log.batch(2, 1, 1_000)), vec![2]);
        // Exactly the bytes of the first two entries (34 + 44) fit; one byte less does not.
        assert_eq!(indexes(log.batch(1, 10, 78)), vec![1, 2]);
        assert_eq!(indexes(log.batch(1, 10, 77)), vec![1]);
        // An entry larger than the byte limit still goes, alone.
        assert_eq!(indexes(log.batch(3, 10, 1)), vec![3]);
        assert_eq!(indexes(log.batch(1, 10, 0)), vec![1]);
        assert_eq!(indexes(log.batch(4, 10, 1_000)), Vec::<Index>::new());
    }

    #[test]
    fn truncate_from_drops_the_tail_and_rewinds_persisted_and_unstable_markers() {
        let mut log = log_with((5, 1), &[1, 1, 2, 2, 2]);
        assert_eq!((log.persisted, log.unstable_from), (10, 11));
        log.truncate_from(8);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.last_term(), 1);
        assert_eq!(log.persisted, 7);
        assert_eq!(log.unstable_from, 8);
        // Markers already below the truncation point stay where they are.
        log.persisted = 6;
        log.unstable_from = 7;
        log.truncate_from(7);
        assert_eq!(log.last_index(), 6);
        assert_eq!((log.persisted, log.unstable_from), (6, 7));
    }

    #[test]
    fn restore_refuses_a_gap_and_clamps_commit_to_the_log() {
        let gap = vec![entry(1, 1), entry(3, 1)];
        assert!(RaftLog::restore(None, gap, 0).is_err());
        let log = RaftLog::restore(None, vec![entry(1, 1), entry(2, 1)], 9).unwrap();
        assert_eq!(log.commit, 2);
        assert_eq!(log.applied, 0);
        assert_eq!(log.persisted, 2);
    }
}
