//! The quota check (issue 11, `--quota-bytes`): no replica's applied store ever holds more than
//! the quota in force.
//!
//! Some seeds run every node with a small quota ([`small_quota`]), a few keys' worth, with a
//! couple more keys in the workload, so writes meet `507 quota_exceeded` and deletes bring the
//! store below the quota again. The check replays the committed changes the nodes report
//! (`NodeEvent::Changed`, first report of each index, in index order: a node reports index `i`
//! only after every index below it was reported, by itself or by the node whose snapshot it
//! installed) into a model of the store's size, counted as the store counts it
//! ([`raft_kv::kv::entry_bytes`]), and fails when the size passes the quota. Every node runs with
//! the same quota, so the quota in force is that one whatever node leads.
//!
//! A write answered `507` is a definite "not applied": the client ends the operation there and
//! it never enters the history (`workload.rs`), so a refused write that was applied after all
//! would show up to the linearizability checker as a read of a value nobody wrote.

use std::collections::BTreeMap;

use raft_kv::kv::entry_bytes;

use crate::plants::Plant;
use crate::watch_check::Change;

/// Whether seed `seed` runs with a small quota: a quarter of the unplanted seeds and every seed
/// of the quota plant. Gated like the lease holders, so the seeds of other plants keep their
/// schedule.
pub fn runs_in(seed: u64, plant: Plant) -> bool {
    match plant {
        Plant::QuotaNotEnforcedOnApply => true,
        Plant::None | Plant::CompactPastTransfer => seed % 4 == 1,
        _ => false,
    }
}

/// Extra keys the workload gets in a small-quota seed, beyond the ones the scenario drew.
pub const EXTRA_KEYS: usize = 2;

/// What one workload key with a short value counts: `kN` + `cC.SSS` + the overhead.
const WORKLOAD_ENTRY_BYTES: u64 = 2 + 6 + raft_kv::kv::ENTRY_OVERHEAD_BYTES;

/// The quota of a small-quota seed whose workload shares `keys_count` keys: room for all but
/// about one and a half of them, so creating the last keys (or a lease holder's key) is refused
/// until a delete frees space.
pub fn small_quota(keys_count: usize) -> u64 {
    WORKLOAD_ENTRY_BYTES * keys_count as u64 - WORKLOAD_ENTRY_BYTES * 3 / 2
}

/// The model of the applied store's size, fed with the committed changes in index order.
#[derive(Clone, Debug)]
pub struct QuotaCheck {
    quota_bytes: u64,
    /// The last index whose changes were counted.
    counted_index: u64,
    /// Each present key's size as the store counts it.
    key_bytes: BTreeMap<String, u64>,
    store_bytes: u64,
    /// The largest size seen (for the trace).
    pub store_bytes_max: u64,
}

impl QuotaCheck {
    /// A check for stores under `quota_bytes`.
    pub fn new(quota_bytes: u64) -> QuotaCheck {
        QuotaCheck {
            quota_bytes,
            counted_index: 0,
            key_bytes: BTreeMap::new(),
            store_bytes: 0,
            store_bytes_max: 0,
        }
    }

    /// Counts the changes applied at `index` (once: a later report of an index already counted,
    /// by another node or after a restart, is ignored); an error when the store now holds more
    /// than the quota.
    pub fn observe(&mut self, index: u64, changes: &[Change]) -> Result<(), String> {
        if index <= self.counted_index {
            return Ok(());
        }
        self.counted_index = index;
        for change in changes {
            if let Some(old) = self.key_bytes.remove(&change.key) {
                self.store_bytes -= old;
            }
            if let Some(value) = &change.value {
                let bytes = entry_bytes(change.key.as_bytes(), value);
                self.key_bytes.insert(change.key.clone(), bytes);
                self.store_bytes += bytes;
            }
        }
        self.store_bytes_max = self.store_bytes_max.max(self.store_bytes);
        if self.store_bytes > self.quota_bytes {
            return Err(format!(
                "after index {index} the store holds {} bytes in {} keys, more than the quota of \
                 {} bytes",
                self.store_bytes,
                self.key_bytes.len(),
                self.quota_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The change at `index` to `key`: a put of `value`, or a delete for `None`.
    fn change(index: u64, key: &str, value: Option<&str>) -> Change {
        let value = value.map(|value| value.as_bytes().to_vec());
        Change {
            index,
            key: key.into(),
            value,
        }
    }

    fn put(index: u64, key: &str, value: &str) -> Change {
        change(index, key, Some(value))
    }

    fn delete(index: u64, key: &str) -> Change {
        change(index, key, None)
    }

    #[test]
    fn a_store_within_the_quota_passes_and_overwrites_and_deletes_are_counted() {
        let one = entry_bytes(b"k0", b"c1.1");
        let mut check = QuotaCheck::new(2 * one);
        assert_eq!(check.observe(1, &[put(1, "k0", "c1.1")]), Ok(()));
        assert_eq!(check.observe(2, &[put(2, "k0", "c1.2")]), Ok(()));
        assert_eq!(check.observe(3, &[put(3, "k1", "c1.3")]), Ok(()));
        assert_eq!(check.observe(4, &[delete(4, "k0")]), Ok(()));
        assert_eq!(check.observe(5, &[put(5, "k2", "c1.5")]), Ok(()));
        assert_eq!(check.store_bytes_max, 2 * one);
    }

    #[test]
    fn a_store_past_the_quota_fails() {
        let one = entry_bytes(b"k0", b"c1.1");
        let mut check = QuotaCheck::new(2 * one);
        check.observe(1, &[put(1, "k0", "c1.1")]).unwrap();
        check.observe(2, &[put(2, "k1", "c1.2")]).unwrap();
        let error = check.observe(3, &[put(3, "k2", "c1.3")]).unwrap_err();
        assert!(error.contains("more than the quota"), "{error}");
        // A longer value on a full store passes it too.
        let mut check = QuotaCheck::new(one);
        check.observe(1, &[put(1, "k0", "c1.1")]).unwrap();
        assert!(check.observe(2, &[put(2, "k0", "c1.12")]).is_err());
    }

    #[test]
    fn an_index_reported_again_is_counted_once() {
        let one = entry_bytes(b"k0", b"c1.1");
        let mut check = QuotaCheck::new(one);
        check.observe(1, &[put(1, "k0", "c1.1")]).unwrap();
        check.observe(1, &[put(1, "k0", "c1.1")]).unwrap();
        check.observe(2, &[delete(2, "k0")]).unwrap();
        check.observe(2, &[delete(2, "k0")]).unwrap();
        check.observe(1, &[put(1, "k0", "c1.1")]).unwrap();
        check.observe(3, &[put(3, "k1", "c1.3")]).unwrap();
    }

    #[test]
    fn small_quotas_leave_room_for_some_keys_but_not_all() {
        for keys_count in 1..4 {
            let keys = keys_count + EXTRA_KEYS;
            let quota = small_quota(keys);
            assert!(quota >= WORKLOAD_ENTRY_BYTES, "{keys} keys: {quota}");
            assert!(
                quota < WORKLOAD_ENTRY_BYTES * keys as u64 - 8,
                "{keys} keys: {quota}"
            );
        }
        assert!(runs_in(1, Plant::None) && !runs_in(2, Plant::None));
        assert!(runs_in(2, Plant::QuotaNotEnforcedOnApply));
        assert!(!runs_in(1, Plant::LyingFsync));
    }
}
