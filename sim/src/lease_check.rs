//! The lease checks. Lease holders (clients on the client machine, see `holder`) grant a lease,
//! attach a key to it, keep it alive every quarter of its TTL for a while, reading the key in
//! between, then let it go (stop, or revoke). Two promises are checked:
//!
//! - **kept alive** (property [`crate::plants::LEASE_KEPT_ALIVE`]): a lease is never lost
//!   sooner than two thirds of its TTL after a keepalive that succeeded (counted from the moment
//!   that keepalive was sent, which is before the leader moved the deadline). The third left
//!   over covers the clock drift the simulator injects (up to 5%) and the commit of the expiry
//!   with a wide margin, so a failure is a real early expiry: a follower's clock deciding, or a
//!   new leader that did not restart the countdown.
//! - **expiry** (property `lease expiry`): once the faults are healed and a leader is agreed, a
//!   lease nobody keeps alive is gone within its TTL plus [`expiry_bound_ms`] after the later of
//!   its last successful keepalive and that leader's election (a new leader restarts every
//!   countdown at a full TTL, so leader changes legitimately extend a lease, as in etcd).

use std::time::Duration;

/// A lease its holder stopped keeping alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LetGo {
    /// The holder (client number).
    pub holder: u64,
    /// The lease.
    pub lease_id: u64,
    /// Its TTL.
    pub ttl_ms: u64,
    /// When the last successful keepalive (or the grant) was sent, virtual ms.
    pub last_ok_ms: u64,
}

/// Whether seeing a kept-alive lease gone (by a request that returned at `seen_gone_ns`) breaks
/// the promise, given the last successful keepalive was sent at `last_ok_ns`.
pub fn vanished_too_early(last_ok_ns: u64, seen_gone_ns: u64, ttl_ms: u64) -> bool {
    let kept_ns = ttl_ms * 1_000_000 * 2 / 3;
    seen_gone_ns < last_ok_ns + kept_ns
}

/// The time a let-go lease may take to end beyond its TTL once a leader is agreed after the
/// heal: one more election (the longest timeout, `election_timeout_max`) and a second for the
/// expiry to commit and apply.
pub fn expiry_bound_ms(election_timeout_max: Duration) -> u64 {
    u64::try_from(election_timeout_max.as_millis()).unwrap_or(u64::MAX) + 1_000
}

/// The virtual ms by which `lease` must be gone, with a leader agreed since `leader_ms`.
pub fn expiry_deadline_ms(lease: &LetGo, leader_ms: u64, bound_ms: u64) -> u64 {
    lease.last_ok_ms.max(leader_ms) + lease.ttl_ms + bound_ms
}

#[cfg(madsim)]
pub mod holder {
    //! The lease holders' loop (simulation only).

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use raft_kv::env;
    use raft_kv::http::client::{FullResponse, HttpClient};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::{expiry_deadline_ms, vanished_too_early, LetGo};
    use crate::plants::LEASE_KEPT_ALIVE;
    use crate::recorder::Shared;
    use crate::workload::virtual_nanos;

    /// Attempts of the expiry check's read of one lease that may go unanswered.
    const UNANSWERED_MAX: u32 = 50;

    /// Leases the holders let go, for the expiry check.
    pub type Ledger = Arc<Mutex<Vec<LetGo>>>;

    /// What a holder needs.
    #[derive(Clone)]
    pub struct HolderContext {
        /// Every node's `host:port`.
        pub addrs: Vec<String>,
        /// The TTL of every lease granted, in seconds.
        pub ttl_s: u64,
        /// Per-call timeout.
        pub call_timeout: Duration,
        /// The recorder (trace and failures).
        pub shared: Shared,
        /// Where let-go leases are written down.
        pub ledger: Ledger,
    }

    fn virtual_ms() -> u64 {
        virtual_nanos() / 1_000_000
    }

    async fn call(
        http: &HttpClient,
        ctx: &HolderContext,
        rng: &mut ChaCha8Rng,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Option<FullResponse> {
        let addr = &ctx.addrs[(rng.next_u64() % ctx.addrs.len() as u64) as usize];
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(
                "authorization",
                crate::stranger::CLIENT_AUTHORIZATION_HEADER,
            )
            .body(Full::new(body))
            .expect("a valid request");
        http.call(addr, request, 1 << 20, ctx.call_timeout)
            .await
            .ok()
    }

    /// Runs holder `holder` until `stop` is set; every lease it held is let go at the end.
    pub async fn holder_loop(holder: u64, ctx: HolderContext, stop: Arc<AtomicBool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(env::rng().next_u64());
        let http = HttpClient::new();
        let ttl_ms = ctx.ttl_s * 1000;
        let quarter = Duration::from_millis(ttl_ms / 4);
        let grant_body = Bytes::from(format!("{{\"ttl_s\": {}}}", ctx.ttl_s));
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let granted_ns = virtual_nanos();
            let reply = call(
                &http,
                &ctx,
                &mut rng,
                "POST",
                "/v1/leases",
                grant_body.clone(),
            )
            .await;
            let Some(lease_id) = reply
                .filter(|r| r.status() == 201)
                .and_then(|r| json_u64(r.body(), "id"))
            else {
                env::sleep(quarter).await;
                continue;
            };
            let key_path = format!("/v1/kv/lease{holder}.{round}");
            let put = call(
                &http,
                &ctx,
                &mut rng,
                "PUT",
                &format!("{key_path}?lease={lease_id}"),
                Bytes::from_static(b"held"),
            )
            .await;
            let attached = put.is_some_and(|r| r.status() == 201);
            let mut last_ok_ns = granted_ns;
            let mut lost = false;
            let rounds = 4 + rng.next_u64() % 12;
            for _ in 0..rounds {
                if !attached || stop.load(Ordering::Relaxed) {
                    break;
                }
                env::sleep(quarter / 2).await;
                let read = call(&http, &ctx, &mut rng, "GET", &key_path, Bytes::new()).await;
                if read.is_some_and(|r| r.status() == 404) {
                    lost = true;
                    check_kept(
                        &ctx,
                        holder,
                        lease_id,
                        last_ok_ns,
                        "its key read 404",
                        ttl_ms,
                    );
                    break;
                }
                env::sleep(quarter / 2).await;
                let sent_ns = virtual_nanos();
                let path = format!("/v1/leases/{lease_id}/keepalive");
                match call(&http, &ctx, &mut rng, "POST", &path, Bytes::new()).await {
                    Some(r) if r.status() == 200 => last_ok_ns = sent_ns,
                    Some(r) if r.status() == 404 => {
                        lost = true;
                        check_kept(&ctx, holder, lease_id, last_ok_ns, "keepalive 404", ttl_ms);
                        break;
                    }
                    _ => {}
                }
            }
            if lost {
                continue;
            }
            // Let go: revoke half the time (any outcome), or just stop keeping it alive.
            if rng.next_u64() % 2 == 0 {
                let path = format!("/v1/leases/{lease_id}");
                if call(&http, &ctx, &mut rng, "DELETE", &path, Bytes::new())
                    .await
                    .is_some_and(|r| r.status() == 200)
                {
                    continue;
                }
            }
            ctx.ledger.lock().expect("ledger lock").push(LetGo {
                holder,
                lease_id,
                ttl_ms,
                last_ok_ms: last_ok_ns / 1_000_000,
            });
        }
    }

    fn check_kept(
        ctx: &HolderContext,
        holder: u64,
        lease_id: u64,
        last_ok_ns: u64,
        seen: &str,
        ttl_ms: u64,
    ) {
        let now = virtual_nanos();
        if vanished_too_early(last_ok_ns, now, ttl_ms) {
            ctx.shared.fail(
                format!("{LEASE_KEPT_ALIVE} (lease {lease_id} of holder {holder})"),
                format!(
                    "{seen} at {} ms, {} ms after a successful keepalive sent at {} ms; \
                     the TTL is {ttl_ms} ms",
                    now / 1_000_000,
                    (now - last_ok_ns) / 1_000_000,
                    last_ok_ns / 1_000_000
                ),
                Vec::new(),
            );
        }
    }

    /// The expiry check, once a leader is agreed since `leader_ms` after the heal: every lease
    /// let go is gone by its deadline.
    pub async fn check_let_go_leases(ctx: &HolderContext, leader_ms: u64, bound_ms: u64) {
        let http = HttpClient::new();
        let mut rng = ChaCha8Rng::seed_from_u64(env::rng().next_u64());
        let leases = ctx.ledger.lock().expect("ledger lock").clone();
        for lease in &leases {
            let deadline_ms = expiry_deadline_ms(lease, leader_ms, bound_ms);
            let path = format!("/v1/leases/{}", lease.lease_id);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let asked_ms = virtual_ms();
                let reply = call(&http, ctx, &mut rng, "GET", &path, Bytes::new()).await;
                let status = reply.as_ref().map(|r| r.status().as_u16());
                if status == Some(404) {
                    break;
                }
                // Only a lease seen alive past its deadline counts (or no answer at all, long
                // after: the cluster is healed and has a leader).
                let seen_alive = status == Some(200);
                if asked_ms > deadline_ms && (seen_alive || attempts > UNANSWERED_MAX) {
                    ctx.shared.fail(
                        format!("lease expiry (lease {} of holder {})", lease.lease_id, lease.holder),
                        format!(
                            "answered {status:?} at {asked_ms} ms; last kept alive at {} ms, a leader \
                             agreed since {leader_ms} ms, TTL {} ms, bound {bound_ms} ms",
                            lease.last_ok_ms, lease.ttl_ms
                        ),
                        Vec::new(),
                    );
                    return;
                }
                env::sleep(Duration::from_millis(100)).await;
            }
        }
        ctx.shared
            .trace(format!("liveness: {} let-go leases expired", leases.len()));
    }

    fn json_u64(body: &[u8], field: &str) -> Option<u64> {
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        json.get(field)?.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_lease_lost_within_two_thirds_of_its_ttl_after_a_keepalive_is_a_failure() {
        // TTL 3 s, kept alive at 10 s: lost at 11.9 s is early, at 12.1 s it is not.
        assert!(vanished_too_early(10_000 * MS, 11_900 * MS, 3_000));
        assert!(vanished_too_early(10_000 * MS, 10_000 * MS, 3_000));
        assert!(!vanished_too_early(10_000 * MS, 12_100 * MS, 3_000));
    }

    #[test]
    fn a_let_go_lease_is_due_a_ttl_and_the_bound_after_the_later_of_keepalive_and_leader() {
        let lease = LetGo {
            holder: 1,
            lease_id: 7,
            ttl_ms: 3_000,
            last_ok_ms: 50_000,
        };
        let bound = expiry_bound_ms(Duration::from_secs(2));
        assert_eq!(bound, 3_000);
        // Let go after the leader was agreed: counted from the keepalive.
        assert_eq!(expiry_deadline_ms(&lease, 45_000, bound), 56_000);
        // A leader agreed later restarted the countdown: counted from it.
        assert_eq!(expiry_deadline_ms(&lease, 52_000, bound), 58_000);
    }
}
