//! `--quota-bytes` on real `raft-kv` processes: fill to the quota, get 507, delete, write again,
//! and nothing acknowledged is lost.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{call, eventually, metric, state_hash, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);
const QUOTA_BYTES: u64 = 4096;
/// What one `kNNN` key with a 100-byte value counts: key + value + 64 bytes of overhead.
const ENTRY_BYTES: u64 = 4 + 100 + 64;

/// Waits until every node reports the same applied index and state hash.
async fn replicas_agree(cluster: &Cluster) {
    eventually(LEADER_WAIT, "equal state hashes", || async {
        let mut hashes = Vec::new();
        for node in &cluster.nodes {
            hashes.push(state_hash(&node.addr).await?);
        }
        hashes
            .windows(2)
            .all(|pair| pair[0] == pair[1])
            .then_some(())
    })
    .await;
}

fn value_of(n: usize) -> Vec<u8> {
    vec![b'a' + (n % 26) as u8; 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_to_the_quota_get_507_delete_and_write_again_losing_nothing() {
    let cluster = Cluster::start_with(3, &["--quota-bytes", &QUOTA_BYTES.to_string()]);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[leader].addr.clone();
    let mut acknowledged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut refused = None;
    for n in 0..100 {
        let key = format!("k{n:03}");
        let reply = call(&addr, "PUT", &format!("/v1/kv/{key}"), &[], &value_of(n))
            .await
            .expect("the leader answers");
        match reply.status {
            201 => drop(acknowledged.insert(key, value_of(n))),
            507 => {
                refused = Some((n, reply.json()));
                break;
            }
            other => panic!("PUT {key}: {other} {:?}", reply.body),
        }
    }
    let (first_refused, body) = refused.expect("the store filled up within 100 keys");
    assert_eq!(first_refused as u64, QUOTA_BYTES / ENTRY_BYTES, "{body}");
    assert_eq!(body["code"], "quota_exceeded", "{body}");
    assert_eq!(body["quota_bytes"], QUOTA_BYTES, "{body}");
    assert_eq!(
        body["store_bytes"],
        first_refused as u64 * ENTRY_BYTES,
        "{body}"
    );
    assert_eq!(metric(&addr, "raft_kv_quota_exceeded").await, Some(1.0));
    assert_eq!(
        metric(&addr, "raft_kv_quota_bytes").await,
        Some(QUOTA_BYTES as f64)
    );
    assert_eq!(
        metric(&addr, "raft_kv_store_bytes").await,
        Some((first_refused as u64 * ENTRY_BYTES) as f64)
    );

    // Through a follower (forwarded), in a transaction, and with an Idempotency-Key: all 507.
    let follower = cluster.nodes[(leader + 1) % 3].addr.clone();
    let reply = call(&follower, "PUT", "/v1/kv/via-follower", &[], &[b'x'; 100])
        .await
        .unwrap();
    assert_eq!(reply.status, 507, "{:?}", reply.body);
    let txn = br#"{"success": [{"put": {"key": "t1", "value": "v"}}, {"put": {"key": "t2", "value": "v"}}]}"#;
    let reply = call(&addr, "POST", "/v1/txn", &[], txn).await.unwrap();
    assert_eq!(reply.status, 507, "{:?}", reply.body);
    assert_eq!(reply.json()["code"], "quota_exceeded");
    let keyed = [("idempotency-key", "retry-me")];
    let reply = call(&addr, "PUT", "/v1/kv/keyed", &keyed, b"v")
        .await
        .unwrap();
    assert_eq!(reply.status, 507, "{:?}", reply.body);

    // The command-line client names the quota and exits 6 (refused).
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["kv", "put", "from-cli", "v"])
        .env("RAFT_KV_ENDPOINTS", &addr)
        .output()
        .expect("run raft-kv kv put");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("quota exceeded"), "{stderr}");

    // Reads still work; deletes free space.
    let reply = call(&addr, "GET", "/v1/kv/k000", &[], b"").await.unwrap();
    assert_eq!(reply.status, 200);
    for key in ["k000", "k001"] {
        let reply = call(&addr, "DELETE", &format!("/v1/kv/{key}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        acknowledged.remove(key);
    }
    assert_eq!(metric(&addr, "raft_kv_quota_exceeded").await, Some(0.0));

    // The retry of the refused keyed write keeps its first answer; a new write fits.
    let reply = call(&addr, "PUT", "/v1/kv/keyed", &keyed, b"v")
        .await
        .unwrap();
    assert_eq!(reply.status, 507, "a retry answers the first outcome");
    let reply = call(&addr, "PUT", "/v1/kv/again", &[], &value_of(7))
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    acknowledged.insert("again".into(), value_of(7));

    // Every acknowledged key is readable on every node, none refused is, and replicas agree.
    for node in &cluster.nodes {
        for (key, value) in &acknowledged {
            let path = format!("/v1/kv/{key}?consistency=stale");
            let got = eventually(LEADER_WAIT, "an acknowledged key on every node", || async {
                let reply = call(&node.addr, "GET", &path, &[], b"").await?;
                (reply.status == 200).then_some(reply.body)
            })
            .await;
            assert_eq!(&got[..], value.as_slice(), "{key} on {}", node.name);
        }
    }
    for refused_key in [
        "via-follower",
        "t1",
        "t2",
        "keyed",
        &format!("k{first_refused:03}"),
    ] {
        let reply = call(&addr, "GET", &format!("/v1/kv/{refused_key}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(
            reply.status, 404,
            "{refused_key} was refused but is visible"
        );
    }
    replicas_agree(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_another_quota_applies_the_leaders_decisions() {
    let mut cluster = Cluster::start_with(3, &["--quota-bytes", &QUOTA_BYTES.to_string()]);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let odd = (leader + 1) % 3;
    cluster.nodes[odd].kill();
    cluster.nodes[odd].extra_args = vec!["--quota-bytes".into(), "1000000".into()];
    cluster.nodes[odd].start();
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[leader].addr.clone();
    let mut refused = 0;
    for n in 0..40 {
        let reply = call(&addr, "PUT", &format!("/v1/kv/k{n:03}"), &[], &value_of(n))
            .await
            .expect("the leader answers");
        refused += usize::from(reply.status == 507);
    }
    if leader != odd {
        assert_eq!(refused, 40 - (QUOTA_BYTES / ENTRY_BYTES) as usize);
    }
    replicas_agree(&cluster).await;
}
