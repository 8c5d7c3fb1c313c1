//! The bounded table of applied idempotency keys (Raft §8: exactly-once client commands).
//!
//! Retention is deterministic: the most recent `idempotency_keys_max` keys in apply order are
//! kept, the oldest forgotten first. A retry does not refresh its key's age, so a key is forgotten
//! a fixed number of keyed writes after it was first applied, on every replica alike.

use std::sync::Arc;

use imbl::OrdMap;

use super::WriteResult;

/// Results of applied requests by idempotency key, plus the apply-order index used for eviction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct IdempotencyTable {
    /// Idempotency key -> (log index of its first application, its result).
    by_key: OrdMap<Arc<str>, (u64, WriteResult)>,
    /// Log index -> idempotency key; the first entry is the oldest key.
    /// Invariant: `by_index` and `by_key` hold the same pairs, seen from either side.
    by_index: OrdMap<u64, Arc<str>>,
}

impl IdempotencyTable {
    /// The log index of the first application of `idempotency_key`, and its result.
    pub(super) fn get(&self, idempotency_key: &str) -> Option<(u64, &WriteResult)> {
        self.by_key
            .get(idempotency_key)
            .map(|(index, result)| (*index, result))
    }

    /// Number of remembered keys.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Remembers the result of the request applied at `index`, then forgets the oldest keys
    /// until at most `keys_max` remain.
    pub(super) fn record(
        &mut self,
        idempotency_key: String,
        index: u64,
        result: WriteResult,
        keys_max: usize,
    ) {
        if let Some((newest_index, _)) = self.by_index.get_max() {
            assert!(
                index > *newest_index,
                "idempotency key {idempotency_key:?} recorded at index {index}, \
                 not after the newest recorded index {newest_index}"
            );
        }
        let idempotency_key: Arc<str> = Arc::from(idempotency_key);
        let previous = self
            .by_key
            .insert(Arc::clone(&idempotency_key), (index, result));
        assert!(
            previous.is_none(),
            "idempotency key {idempotency_key:?} recorded twice (again at index {index})"
        );
        self.by_index.insert(index, idempotency_key);
        self.evict_to(keys_max);
    }

    /// Forgets the oldest keys until at most `keys_max` remain.
    pub(super) fn evict_to(&mut self, keys_max: usize) {
        while self.by_key.len() > keys_max {
            let oldest_index = match self.by_index.get_min() {
                Some((oldest_index, _)) => *oldest_index,
                None => panic!(
                    "idempotency table: by_index empty, by_key has {}",
                    self.by_key.len()
                ),
            };
            let oldest_key = self
                .by_index
                .remove(&oldest_index)
                .expect("the minimum index is present");
            let removed = self.by_key.remove(&oldest_key);
            assert!(
                removed.is_some(),
                "idempotency table: {oldest_key:?} missing from by_key"
            );
        }
        assert_eq!(
            self.by_key.len(),
            self.by_index.len(),
            "idempotency table: by_key and by_index disagree"
        );
    }

    /// The entries in key order: `(idempotency key, first index, result)`, for snapshots.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, u64, &WriteResult)> {
        self.by_key
            .iter()
            .map(|(key, (index, result))| (key.as_ref(), *index, result))
    }

    /// The record with the greatest idempotency key.
    pub(super) fn last(&self) -> Option<(&str, u64, &WriteResult)> {
        self.by_key
            .get_max()
            .map(|(key, (index, result))| (key.as_ref(), *index, result))
    }

    /// Adds one snapshot record, refusing a duplicate key or index (no eviction).
    pub(super) fn insert_record(
        &mut self,
        idempotency_key: String,
        index: u64,
        result: WriteResult,
    ) -> Result<(), String> {
        if let Some(other_key) = self.by_index.get(&index) {
            return Err(format!(
                "idempotency keys {other_key:?} and {idempotency_key:?} share index {index}"
            ));
        }
        if self.by_key.contains_key(idempotency_key.as_str()) {
            return Err(format!("idempotency key {idempotency_key:?} appears twice"));
        }
        let idempotency_key: Arc<str> = Arc::from(idempotency_key);
        self.by_index.insert(index, Arc::clone(&idempotency_key));
        self.by_key.insert(idempotency_key, (index, result));
        Ok(())
    }
}
