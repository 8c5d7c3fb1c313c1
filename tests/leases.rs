//! TTL leases end to end on real `raft-kv` processes: grant, attach, keep alive, revoke, expiry
//! decided by the leader, and a kept-alive lease surviving the leader's `kill -9`.
//! The nodes run with 10 ms ticks and 20 election ticks, so the shortest TTL is 1 s.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::{call, eventually, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long after its TTL a lease nobody keeps alive may take to end here: the leader notices
/// within a tick, and the expiry commits in a round trip; the rest is a busy test machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// Grants a lease through `addr` and returns its id.
async fn grant(addr: &str, ttl_s: u64) -> u64 {
    let body = format!("{{\"ttl_s\": {ttl_s}}}");
    let reply = call(addr, "POST", "/v1/leases", &[], body.as_bytes())
        .await
        .expect("the node answers");
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.json()["id"].as_u64().expect("an id")
}

/// Calls any node until one answers (a leader change may be under way).
async fn call_any(
    addrs: &[String],
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<common::Reply> {
    for addr in addrs {
        if let Some(reply) = call(addr, method, path, &[], body).await {
            if reply.status != 503 && reply.status != 504 {
                return Some(reply);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holds_keys_through_any_node_and_revoking_it_deletes_them() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    let follower = &addrs[(leader + 1) % addrs.len()];

    let lease_id = grant(follower, 60).await;
    let put = call(
        follower,
        "PUT",
        &format!("/v1/kv/session/a?lease={lease_id}"),
        &[],
        b"x",
    )
    .await
    .unwrap();
    assert_eq!(put.status, 201, "{:?}", put.body);
    call(follower, "PUT", "/v1/kv/plain", &[], b"y")
        .await
        .unwrap();

    let shown = call(follower, "GET", &format!("/v1/leases/{lease_id}"), &[], b"")
        .await
        .unwrap();
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    let json = shown.json();
    assert_eq!(json["ttl_s"], 60);
    assert_eq!(json["keys"], serde_json::json!(["session/a"]));
    let remaining_ms = json["remaining_ms"].as_u64().expect("the leader counts");
    assert!(remaining_ms <= 60_000 && remaining_ms > 50_000, "{json}");

    let kept = call(
        follower,
        "POST",
        &format!("/v1/leases/{lease_id}/keepalive"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(kept.status, 200, "{:?}", kept.body);
    assert!(kept.json()["remaining_ms"].as_u64().unwrap() > 59_000);

    // A keepalive writes nothing to the log: the applied index does not move.
    // (Read on the leader, which applied every acknowledged write already.)
    let applied_before = common::applied_index(&addrs[leader]).await.unwrap();
    for _ in 0..20 {
        let path = format!("/v1/leases/{lease_id}/keepalive");
        let kept = call(follower, "POST", &path, &[], b"").await.unwrap();
        assert_eq!(kept.status, 200, "{:?}", kept.body);
    }
    assert_eq!(
        common::applied_index(&addrs[leader]).await,
        Some(applied_before)
    );

    let revoked = call(
        follower,
        "DELETE",
        &format!("/v1/leases/{lease_id}"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(revoked.json()["keys_deleted"], 1);
    for addr in &addrs {
        let gone = call(addr, "GET", "/v1/kv/session/a", &[], b"")
            .await
            .unwrap();
        assert_eq!(gone.status, 404);
        let kept = call(addr, "GET", "/v1/kv/plain", &[], b"").await.unwrap();
        assert_eq!(kept.status, 200);
    }
    for (method, path) in [
        ("GET", format!("/v1/leases/{lease_id}")),
        ("POST", format!("/v1/leases/{lease_id}/keepalive")),
        ("DELETE", format!("/v1/leases/{lease_id}")),
        ("PUT", format!("/v1/kv/again?lease={lease_id}")),
    ] {
        let reply = call(follower, method, &path, &[], b"z").await.unwrap();
        assert_eq!(reply.status, 404, "{method} {path}: {:?}", reply.body);
        assert_eq!(reply.json()["code"], "lease_not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_get_a_4xx_with_a_json_body() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = &cluster.addrs()[0];
    let cases: [(&str, &str, &[u8], u16, &str); 7] = [
        ("POST", "/v1/leases", b"{\"ttl_s\": 0}", 400, "bad_ttl"),
        (
            "POST",
            "/v1/leases",
            b"{\"ttl_s\": 999999999}",
            400,
            "bad_ttl",
        ),
        ("POST", "/v1/leases", b"not json", 400, "bad_ttl"),
        ("GET", "/v1/leases/abc", b"", 400, "bad_lease_id"),
        ("PUT", "/v1/leases/1", b"", 405, "method_not_allowed"),
        ("PUT", "/v1/kv/k?lease=x", b"v", 400, "bad_lease"),
        ("DELETE", "/v1/kv/k?lease=1", b"", 400, "bad_lease"),
    ];
    for (method, path, body, status, code) in cases {
        let reply = call(addr, method, path, &[], body).await.unwrap();
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert_eq!(reply.json()["code"], code, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_nobody_keeps_alive_expires_after_its_ttl_and_takes_its_keys() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    let ttl = Duration::from_secs(1);
    let asked = Instant::now();
    let lease_id = grant(&addrs[0], ttl.as_secs()).await;
    let put = call(
        &addrs[0],
        "PUT",
        &format!("/v1/kv/eph?lease={lease_id}"),
        &[],
        b"x",
    )
    .await
    .unwrap();
    assert_eq!(put.status, 201, "{:?}", put.body);
    // The leader's countdown started after `asked`: the key outlives `asked + ttl`.
    let gone_seen_by = eventually(ttl + EXPIRY_SLACK, "the lease's expiry", || async {
        let started = Instant::now();
        let reply = call_any(&addrs, "GET", "/v1/kv/eph", b"").await?;
        (reply.status == 404).then_some(started)
    })
    .await;
    assert!(
        gone_seen_by >= asked + ttl,
        "the key was gone {:?} after the grant was asked, before its TTL of {ttl:?}",
        gone_seen_by - asked
    );
    let lease = call_any(&addrs, "GET", &format!("/v1/leases/{lease_id}"), b"")
        .await
        .unwrap();
    assert_eq!(lease.status, 404, "{:?}", lease.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_alive_survives_the_leaders_kill_9_and_expires_once_let_go() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    let ttl = Duration::from_secs(3);
    let survivor = addrs[(leader + 1) % addrs.len()].clone();
    let lease_id = grant(&survivor, ttl.as_secs()).await;
    let put = call(
        &survivor,
        "PUT",
        &format!("/v1/kv/held?lease={lease_id}"),
        &[],
        b"x",
    )
    .await
    .unwrap();
    assert_eq!(put.status, 201, "{:?}", put.body);

    cluster.nodes[leader].kill();
    let live: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, addr)| addr.clone())
        .collect();
    // Keep it alive every third of its TTL for two TTLs across the failover; the key stays.
    let mut last_keepalive = Instant::now();
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        if let Some(reply) = call_any(
            &live,
            "POST",
            &format!("/v1/leases/{lease_id}/keepalive"),
            b"",
        )
        .await
        {
            assert_eq!(reply.status, 200, "keepalive: {:?}", reply.body);
            last_keepalive = Instant::now();
        }
        let read = call_any(&live, "GET", "/v1/kv/held", b"").await;
        if let Some(read) = read {
            assert_eq!(read.status, 200, "a kept-alive lease lost its key");
        }
        tokio::time::sleep(ttl / 3).await;
    }
    // Let go: it ends within its TTL plus the slack.
    eventually(ttl + EXPIRY_SLACK, "the let-go lease's expiry", || async {
        let reply = call_any(&live, "GET", "/v1/kv/held", b"").await?;
        (reply.status == 404).then_some(())
    })
    .await;
    assert!(
        last_keepalive.elapsed() >= ttl,
        "expired within its TTL of the last keepalive"
    );
}
