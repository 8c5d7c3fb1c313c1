//! TTL leases in the replicated state: which leases exist, their TTL, and which keys each one
//! holds. A lease's *countdown* is not here: it is the leader's business (`node::leases`), kept
//! in memory, so a keepalive costs no log entry (as in etcd). Only grant, revoke and expiry are
//! commands, so every replica agrees on which leases exist and which keys they hold.
//!
//! A lease's id is the log index of the entry that granted it: unique, deterministic, and never
//! reused (indexes only grow).

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

/// Leases that may exist at once; a grant beyond is refused ([`super::WriteResult::LeaseLimit`]).
pub const LEASES_MAX: usize = 10_000;
/// Keys one lease may hold; attaching one more is refused.
pub const LEASE_KEYS_MAX: usize = 1_000;
/// Longest TTL accepted, in milliseconds (7 days).
pub const LEASE_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// One lease as replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its time to live, in milliseconds.
    pub ttl_ms: u64,
    /// The keys it holds; they are deleted when it is revoked or expires.
    /// Invariant: `keys.len() <= LEASE_KEYS_MAX`, and each key maps back to this lease in
    /// `LeaseTable::key_lease`.
    pub keys: OrdSet<Arc<[u8]>>,
}

/// The leases and the key -> lease attachments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LeaseTable {
    leases: OrdMap<u64, Lease>,
    /// Invariant: `key_lease[k] == id` exactly when `leases[id].keys` contains `k`.
    key_lease: OrdMap<Arc<[u8]>, u64>,
}

/// Why a lease operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LeaseRefusal {
    /// No lease with this id (never granted, revoked or expired).
    NotFound,
    /// A named limit would be exceeded.
    Limit(String),
}

impl LeaseTable {
    pub(super) fn get(&self, lease_id: u64) -> Option<&Lease> {
        self.leases.get(&lease_id)
    }

    pub(super) fn len(&self) -> usize {
        self.leases.len()
    }

    /// The lease holding `key`, if any.
    pub(super) fn lease_of(&self, key: &[u8]) -> Option<u64> {
        self.key_lease.get(key).copied()
    }

    /// Leases in ascending id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Lease)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    pub(super) fn grant(&mut self, lease_id: u64, ttl_ms: u64) -> Result<(), LeaseRefusal> {
        if self.leases.len() >= LEASES_MAX {
            return Err(LeaseRefusal::Limit(format!(
                "{LEASES_MAX} leases exist already, the most allowed"
            )));
        }
        assert!(
            !self.leases.contains_key(&lease_id),
            "lease {lease_id} granted twice (ids are log indexes)"
        );
        self.leases.insert(
            lease_id,
            Lease {
                ttl_ms,
                keys: OrdSet::new(),
            },
        );
        Ok(())
    }

    /// Checks that `key` may be attached to `lease_id` (without changing anything).
    pub(super) fn check_attach(&self, key: &[u8], lease_id: u64) -> Result<(), LeaseRefusal> {
        let lease = self.leases.get(&lease_id).ok_or(LeaseRefusal::NotFound)?;
        if lease.keys.len() >= LEASE_KEYS_MAX && !lease.keys.contains(key) {
            return Err(LeaseRefusal::Limit(format!(
                "lease {lease_id} holds {LEASE_KEYS_MAX} keys already, the most allowed"
            )));
        }
        Ok(())
    }

    /// Attaches `key` to `lease_id` (detaching it from any other lease). Call
    /// [`LeaseTable::check_attach`] first.
    pub(super) fn attach(&mut self, key: Arc<[u8]>, lease_id: u64) {
        self.detach(&key);
        let lease = self
            .leases
            .get_mut(&lease_id)
            .unwrap_or_else(|| panic!("attaching {key:?} to the absent lease {lease_id}"));
        lease.keys.insert(key.clone());
        self.key_lease.insert(key, lease_id);
    }

    /// Detaches `key` from its lease, if it has one.
    pub(super) fn detach(&mut self, key: &[u8]) {
        if let Some(lease_id) = self.key_lease.remove(key) {
            if let Some(lease) = self.leases.get_mut(&lease_id) {
                lease.keys.remove(key);
            }
        }
    }

    /// Removes the lease; returns its keys (which the caller deletes).
    pub(super) fn remove(&mut self, lease_id: u64) -> Option<OrdSet<Arc<[u8]>>> {
        let lease = self.leases.remove(&lease_id)?;
        for key in lease.keys.iter() {
            self.key_lease.remove(key);
        }
        Some(lease.keys)
    }

    /// Restores one lease from a snapshot (ids ascending); checks the invariants against the
    /// keys already present (`key_exists`).
    pub(super) fn restore_lease(
        &mut self,
        lease_id: u64,
        ttl_ms: u64,
        keys: Vec<Vec<u8>>,
        applied_index: u64,
        key_exists: impl Fn(&[u8]) -> bool,
    ) -> Result<(), String> {
        if let Some((previous, _)) = self.leases.get_max() {
            if *previous >= lease_id {
                return Err(format!("lease {lease_id} out of order"));
            }
        }
        if !(0 < lease_id && lease_id <= applied_index) {
            return Err(format!(
                "lease {lease_id}: need 0 < id <= applied_index({applied_index})"
            ));
        }
        if !(1..=LEASE_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(format!("lease {lease_id}: ttl of {ttl_ms} ms out of range"));
        }
        if self.leases.len() >= LEASES_MAX || keys.len() > LEASE_KEYS_MAX {
            return Err(format!("lease {lease_id}: over the lease or key limits"));
        }
        let mut set = OrdSet::new();
        for key in keys {
            if !key_exists(&key) {
                return Err(format!("lease {lease_id} holds the absent key {key:?}"));
            }
            if self.key_lease.contains_key(key.as_slice()) {
                return Err(format!("key {key:?} held by two leases"));
            }
            let key: Arc<[u8]> = Arc::from(key);
            self.key_lease.insert(key.clone(), lease_id);
            set.insert(key);
        }
        self.leases.insert(lease_id, Lease { ttl_ms, keys: set });
        Ok(())
    }
}
