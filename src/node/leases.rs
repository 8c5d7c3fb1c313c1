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
//! A leader whose clock jumps forward, or whose process stalls (a VM pause, a long GC-like
//! hiccup), sees deadlines pass that its holders could not have kept alive: nobody could reach
//! it meanwhile. So a gap between two driver rounds longer than the stall threshold pauses every
//! countdown for that gap ([`LeaseClock::observe_round`]); a lease then lives longer, never
//! shorter (etcd's lessor likewise extends leases after a leader stall).
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
    /// When the driver last looked at the countdowns while leading.
    last_round: Option<Instant>,
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
        self.last_round = Some(now);
        self.deadlines = kv
            .leases_iter()
            .map(|(lease_id, lease)| (lease_id, now + countdown(lease.ttl_ms)))
            .collect();
        self.expiring.clear();
    }

    /// This node stopped leading: it counts nothing.
    pub(super) fn clear(&mut self) {
        self.leading = false;
        self.last_round = None;
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

    /// A driver round at `now` while leading: a gap since the last round over
    /// `stall_threshold` (a stall, or the clock jumping forward) pauses every countdown for the
    /// gap. Returns the pause applied.
    pub(super) fn observe_round(&mut self, now: Instant, stall_threshold: Duration) -> Duration {
        let gap = self
            .last_round
            .map_or(Duration::ZERO, |last| now.duration_since(last));
        self.last_round = Some(now);
        if gap <= stall_threshold {
            return Duration::ZERO;
        }
        for deadline in self.deadlines.values_mut() {
            *deadline += gap;
        }
        gap
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{encode_write, KvOptions, WriteOp, WriteRequest};

    const TTL_MS: u64 = 3_000;

    fn at_ms(ms: u64) -> Instant {
        Instant::from_nanos(crate::env::CLOCK_BASE_NANOS + ms * 1_000_000)
    }

    /// A store holding lease 1 (granted at index 1) with a TTL of 3 s.
    fn store_with_a_lease() -> KvStore {
        let mut kv = KvStore::new(KvOptions::default());
        let grant = WriteRequest {
            idempotency_key: None,
            op: WriteOp::LeaseGrant { ttl_ms: TTL_MS },
        };
        kv.apply(1, &encode_write(&grant)).expect("a valid grant");
        kv
    }

    fn leading_at(kv: &KvStore, ms: u64) -> LeaseClock {
        let mut clock = LeaseClock::default();
        clock.start_leading(kv, at_ms(ms), Duration::from_millis);
        clock
    }

    #[test]
    fn a_new_leader_gives_every_lease_a_full_ttl_from_its_election() {
        let kv = store_with_a_lease();
        let mut clock = leading_at(&kv, 10_000);
        assert!(clock.take_due(at_ms(12_999)).is_empty());
        assert_eq!(clock.take_due(at_ms(13_000)), vec![1]);
        assert!(clock.take_due(at_ms(13_001)).is_empty(), "proposed once");
    }

    #[test]
    fn a_keepalive_moves_the_deadline_and_an_expiring_lease_refuses_it() {
        let kv = store_with_a_lease();
        let mut clock = leading_at(&kv, 0);
        assert_eq!(clock.keepalive(&kv, 1, at_ms(2_000)), Keepalive::Refreshed);
        assert!(clock.take_due(at_ms(4_999)).is_empty());
        assert_eq!(clock.take_due(at_ms(5_000)), vec![1]);
        assert_eq!(clock.keepalive(&kv, 1, at_ms(5_001)), Keepalive::NotFound);
        assert_eq!(clock.keepalive(&kv, 2, at_ms(5_001)), Keepalive::NotFound);
    }

    #[test]
    fn a_follower_counts_nothing() {
        let mut clock = LeaseClock::default();
        clock.on_granted(1, TTL_MS, at_ms(0));
        assert!(clock.take_due(at_ms(1_000_000)).is_empty());
        assert_eq!(clock.remaining(1, at_ms(0)), None);
    }

    #[test]
    fn a_stall_or_forward_clock_jump_pauses_the_countdowns() {
        let kv = store_with_a_lease();
        let mut clock = leading_at(&kv, 0);
        let threshold = Duration::from_millis(100);
        assert_eq!(clock.observe_round(at_ms(50), threshold), Duration::ZERO);
        // The clock jumps 2.5 s between two rounds: the lease keeps its 2.95 s left.
        assert_eq!(
            clock.observe_round(at_ms(2_550), threshold),
            Duration::from_millis(2_500)
        );
        assert!(clock.take_due(at_ms(5_499)).is_empty());
        assert_eq!(clock.take_due(at_ms(5_500)), vec![1]);
    }
}
