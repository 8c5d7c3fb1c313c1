//! The leader's lease countdowns.
//!
//! Which leases exist is replicated state (`kv::Lease`); when each one runs out is not. Only the
//! leader counts, on its own clock, in memory: a keepalive moves a deadline and writes nothing,
//! so keeping 10,000 leases alive costs no log entries, no fsyncs and no replication (etcd
//! works the same way; the alternative, a log entry per keepalive, would cost a quorum fsync
//! per lease every few seconds for nothing any replica needs). When a deadline passes the
//! leader proposes `LeaseExpire`, and the lease ends when that entry commits, on every replica
//! at the same log index. A follower never decides anything from its clock.
//!
//! A new leader does not know the old leader's deadlines, so it restarts every lease's
//! countdown at a full TTL from the moment it learns of the lease as leader. A lease therefore
//! lives at least its TTL after its last acknowledged keepalive (the keepalive is acknowledged
//! only after a ReadIndex round proves the node still led after it moved the deadline, so any
//! later leader started counting later), and at most TTL plus the time leadership takes to
//! move, plus commit latency, after it.
//!
//! Invariant: only a leader holds deadlines; `expiring ⊆ deadlines.keys()`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::env::Instant;
use crate::kv::KvStore;

/// Expiries proposed per driver round at most, so a mass expiry cannot flood one round.
pub(super) const EXPIRIES_PER_ROUND_MAX: usize = 64;

/// The leader's deadlines (empty on followers).
#[derive(Debug, Default)]
pub(super) struct LeaseClock {
    deadlines: BTreeMap<u64, Instant>,
    /// Leases whose `LeaseExpire` was proposed and not applied yet: keepalives are refused.
    expiring: BTreeSet<u64>,
    /// Whether this node leads (and so counts).
    leading: bool,
}

/// What a keepalive found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keepalive {
    /// The deadline moved to a full TTL from now.
    Refreshed,
    /// No such lease, or its expiry is already proposed.
    NotFound,
}

impl LeaseClock {
    /// This node leads: if it just became leader, every lease in `kv` starts a full countdown
    /// at `now`. `countdown` is the TTL to count (the full TTL; shorter only for a planted bug).
    pub(super) fn start_leading(
        &mut self,
        kv: &KvStore,
        now: Instant,
        countdown: impl Fn(u64) -> Duration,
    ) {
        if self.leading {
            return;
        }
        self.leading = true;
        self.deadlines = kv
            .leases_iter()
            .map(|(lease_id, lease)| (lease_id, now + countdown(lease.ttl_ms)))
            .collect();
        self.expiring.clear();
    }

    /// This node stopped leading: it counts nothing.
    pub(super) fn clear(&mut self) {
        self.leading = false;
        self.deadlines.clear();
        self.expiring.clear();
    }

    /// A grant applied while leading: the lease counts from `now`.
    pub(super) fn on_granted(&mut self, lease_id: u64, ttl_ms: u64, now: Instant) {
        if !self.leading {
            return;
        }
        self.deadlines
            .insert(lease_id, now + Duration::from_millis(ttl_ms));
    }

    /// A revoke or expiry applied.
    pub(super) fn on_ended(&mut self, lease_id: u64) {
        self.deadlines.remove(&lease_id);
        self.expiring.remove(&lease_id);
    }

    /// A keepalive on the leader.
    pub(super) fn keepalive(&mut self, kv: &KvStore, lease_id: u64, now: Instant) -> Keepalive {
        let Some(lease) = kv.lease(lease_id) else {
            return Keepalive::NotFound;
        };
        if self.expiring.contains(&lease_id) {
            return Keepalive::NotFound;
        }
        self.deadlines
            .insert(lease_id, now + Duration::from_millis(lease.ttl_ms));
        Keepalive::Refreshed
    }

    /// Time left on the leader's countdown, if it counts this lease.
    pub(super) fn remaining(&self, lease_id: u64, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&lease_id)
            .map(|deadline| deadline.duration_since(now))
    }

    /// Leases whose deadline passed and whose expiry is not proposed yet, at most
    /// [`EXPIRIES_PER_ROUND_MAX`]; they are marked expiring.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u64> {
        let due: Vec<u64> = self
            .deadlines
            .iter()
            .filter(|(lease_id, deadline)| **deadline <= now && !self.expiring.contains(lease_id))
            .map(|(lease_id, _)| *lease_id)
            .take(EXPIRIES_PER_ROUND_MAX)
            .collect();
        self.expiring.extend(due.iter().copied());
        due
    }

    /// An expiry proposal failed: the lease may be proposed again.
    pub(super) fn unmark_expiring(&mut self, lease_id: u64) {
        self.expiring.remove(&lease_id);
    }
}
