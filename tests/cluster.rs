//! End-to-end tests on real `raft-kv` processes over loopback HTTP.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{call, eventually, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_serves_put_get_delete_and_cas_through_any_node() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();

    // A write through each node (followers forward to the leader).
    for (i, addr) in addrs.iter().enumerate() {
        let reply = call(
            addr,
            "PUT",
            &format!("/v1/kv/k{i}"),
            &[],
            format!("v{i}").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        assert!(reply.header_u64("x-raft-index").unwrap() > 0);
    }
    // Linearizable reads through every node see every write.
    for addr in &addrs {
        for i in 0..addrs.len() {
            let reply = call(addr, "GET", &format!("/v1/kv/k{i}"), &[], b"")
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(&reply.body[..], format!("v{i}").as_bytes());
        }
    }
    // Compare-and-swap on the modification index.
    let current = call(&addrs[1], "GET", "/v1/kv/k0", &[], b"").await.unwrap();
    let mod_index = current.header_u64("x-mod-index").unwrap();
    let stale = call(
        &addrs[2],
        "PUT",
        &format!("/v1/kv/k0?cas={}", mod_index + 1000),
        &[],
        b"x",
    )
    .await
    .unwrap();
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["current_mod_index"], mod_index);
    let swapped = call(
        &addrs[2],
        "PUT",
        &format!("/v1/kv/k0?cas={mod_index}"),
        &[],
        b"swapped",
    )
    .await
    .unwrap();
    assert_eq!(swapped.status, 200, "{:?}", swapped.body);
    let create_only = call(&addrs[0], "PUT", "/v1/kv/k0?cas=0", &[], b"again")
        .await
        .unwrap();
    assert_eq!(create_only.status, 409);
    let created = call(&addrs[0], "PUT", "/v1/kv/fresh?cas=0", &[], b"new")
        .await
        .unwrap();
    assert_eq!(created.status, 200);
    // Prefix listing.
    let list = call(&addrs[1], "GET", "/v1/kv/?prefix=k", &[], b"")
        .await
        .unwrap();
    assert_eq!(list.status, 200);
    let keys: Vec<String> = list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["k0", "k1", "k2"]);
    // Delete, then 404 everywhere (stale reads too, once applied).
    let deleted = call(&addrs[1], "DELETE", "/v1/kv/k1", &[], b"")
        .await
        .unwrap();
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["deleted"], true);
    for addr in &addrs {
        assert_eq!(
            call(addr, "GET", "/v1/kv/k1", &[], b"")
                .await
                .unwrap()
                .status,
            404
        );
    }
    // Idempotent retry: the second PUT with the same key returns the first result.
    let first = call(
        &addrs[0],
        "PUT",
        "/v1/kv/once",
        &[("idempotency-key", "abc")],
        b"1",
    )
    .await
    .unwrap();
    let retry = call(
        &addrs[1],
        "PUT",
        "/v1/kv/once",
        &[("idempotency-key", "abc")],
        b"2",
    )
    .await
    .unwrap();
    assert_eq!(first.json()["mod_index"], retry.json()["mod_index"]);
    let stored = call(&addrs[2], "GET", "/v1/kv/once", &[], b"")
        .await
        .unwrap();
    assert_eq!(
        &stored.body[..],
        b"1",
        "the retried write was applied again"
    );
    // Cluster and health views.
    let view = call(&addrs[0], "GET", "/v1/cluster", &[], b"")
        .await
        .unwrap()
        .json();
    assert_eq!(view["members"].as_array().unwrap().len(), 3);
    let metrics = call(&addrs[0], "GET", "/metrics", &[], b"").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("raft_term"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();

    // Four writers, each writing its own keys through any node, recording acks, until told to
    // stop: a fixed number of attempts would race with how long the failover takes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let addrs = addrs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: BTreeMap<String, String> = BTreeMap::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let value = format!("value-{w}-{i}");
                let addr = &addrs[(w + i) % addrs.len()];
                i += 1;
                match call(addr, "PUT", &format!("/v1/kv/{key}"), &[], value.as_bytes()).await {
                    Some(reply) if reply.status == 200 || reply.status == 201 => {
                        acked.insert(key, value);
                    }
                    // Refused (dead node, no leader yet): pace the retries.
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            acked
        }));
    }
    // Counts the writers' keys a node has applied.
    let applied_keys = |addr: String| async move {
        let reply = call(
            &addr,
            "GET",
            "/v1/kv/?prefix=w&consistency=stale&limit=10000",
            &[],
            b"",
        )
        .await?;
        Some(reply.json()["keys"].as_array()?.len())
    };
    // Let some writes land, then kill -9 the leader mid-stream.
    eventually(Duration::from_secs(20), "first writes", || async {
        (applied_keys(addrs[leader].clone()).await? > 50).then_some(())
    })
    .await;
    cluster.nodes[leader].kill();
    let new_leader = cluster.wait_for_leader(LEADER_WAIT).await;
    assert_ne!(new_leader, leader);
    // Writes go on through the new leader before the writers stop.
    let before = applied_keys(cluster.nodes[new_leader].addr.clone())
        .await
        .unwrap_or(0);
    eventually(
        Duration::from_secs(20),
        "writes after the failover",
        || async {
            (applied_keys(cluster.nodes[new_leader].addr.clone()).await? > before + 50)
                .then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    // At most one write per writer is in flight when a node dies, so nearly all the 100+
    // applied writes were acknowledged.
    assert!(
        acked.len() > 80,
        "too few writes acknowledged: {}",
        acked.len()
    );
    // Every acknowledged write is there, read linearizably through the new leader.
    let survivor = &cluster.nodes[new_leader].addr;
    for (key, value) in &acked {
        let reply = eventually(Duration::from_secs(10), "a read", || async {
            call(survivor, "GET", &format!("/v1/kv/{key}"), &[], b"")
                .await
                .filter(|r| r.status != 503)
        })
        .await;
        assert_eq!(reply.status, 200, "acknowledged write {key} lost");
        assert_eq!(
            &reply.body[..],
            value.as_bytes(),
            "acknowledged write {key} changed"
        );
    }
}

/// Waits until the node at `addr` has applied the index at which `leader` serves `key_path`.
async fn wait_until_applied(addr: &str, leader: &str, key_path: &str) {
    let target = call(leader, "GET", key_path, &[], b"")
        .await
        .unwrap()
        .header_u64("x-raft-index")
        .unwrap();
    eventually(Duration::from_secs(20), "the node to catch up", || async {
        let health = call(addr, "GET", "/health", &[], b"").await?;
        (health.json()["applied_index"].as_u64()? >= target).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_from_its_wal_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    let victim = (leader + 1) % 3;
    for i in 0..20 {
        assert_eq!(
            call(&addrs[leader], "PUT", &format!("/v1/kv/a{i}"), &[], b"x")
                .await
                .unwrap()
                .status,
            201
        );
    }
    cluster.nodes[victim].kill();
    for i in 0..20 {
        let reply = call(&addrs[leader], "PUT", &format!("/v1/kv/b{i}"), &[], b"y")
            .await
            .unwrap();
        assert_eq!(reply.status, 201);
    }
    cluster.nodes[victim].start();
    // The restarted node's own state machine reaches the leader's index and has every key.
    wait_until_applied(&addrs[victim], &addrs[leader], "/v1/kv/b19").await;
    for prefix in ["a", "b"] {
        let list = call(
            &addrs[victim],
            "GET",
            &format!("/v1/kv/?prefix={prefix}&consistency=stale"),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(list.json()["keys"].as_array().unwrap().len(), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_from_its_snapshot_file_and_a_lagging_one_catches_up_through_one() {
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-entries", "20", "--snapshot-tail-entries", "5"],
    );
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    let lagging = (leader + 1) % 3;
    cluster.nodes[lagging].kill();
    for i in 0..120 {
        let reply = call(&addrs[leader], "PUT", &format!("/v1/kv/k{i:03}"), &[], b"v")
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{:?}", reply.json());
    }
    // Snapshots were written in the background and the older files removed.
    let files = eventually(
        Duration::from_secs(20),
        "one snapshot file on the leader",
        || {
            let files = cluster.nodes[leader].snapshot_files();
            async move { (files.len() == 1 && files[0].ends_with(".snap")).then_some(files) }
        },
    )
    .await;
    let metrics = call(&addrs[leader], "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("raft_snapshots_total ")
                && line != "raft_snapshots_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|line| line
            .starts_with("raft_snapshot_finish_duration_seconds_count ")
            && line != "raft_snapshot_finish_duration_seconds_count 0"),
        "the loop's time recording each snapshot is measured: {metrics}"
    );
    // The lagging node is far below the tail: it catches up through the snapshot.
    cluster.nodes[lagging].start();
    wait_until_applied(&addrs[lagging], &addrs[leader], "/v1/kv/k119").await;
    assert!(
        cluster.nodes[lagging]
            .log_text()
            .contains("installed a snapshot from the leader"),
        "the lagging node caught up without a snapshot"
    );
    // The leader restarts from its snapshot file plus the WAL.
    cluster.nodes[leader].kill();
    cluster.nodes[leader].start();
    for node in [leader, lagging] {
        // Eventually only the latest durable file remains; never one older than before.
        assert!(cluster.nodes[node].snapshot_files().last() >= files.last());
        let list = eventually(Duration::from_secs(20), "every key on the node", || async {
            let list = call(
                &addrs[node],
                "GET",
                "/v1/kv/?prefix=k&consistency=stale&limit=1000",
                &[],
                b"",
            )
            .await?;
            let keys = list.json()["keys"].as_array()?.len();
            (keys == 120).then_some(keys)
        })
        .await;
        assert_eq!(list, 120);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_off_and_exits_cleanly() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();
    assert_eq!(
        call(&addrs[leader], "PUT", "/v1/kv/before", &[], b"v")
            .await
            .unwrap()
            .status,
        201
    );
    let status = cluster.nodes[leader].terminate();
    assert!(status.success(), "the node exited with {status:?}");
    assert!(
        cluster.nodes[leader]
            .log_text()
            .contains("leadership handed off"),
        "no hand-off logged:\n{}",
        cluster.nodes[leader].log_text()
    );
    let new_leader = cluster.wait_for_leader(LEADER_WAIT).await;
    assert_ne!(new_leader, leader);
    let reply = call(&addrs[new_leader], "GET", "/v1/kv/before", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_truncated_on_restart() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    for i in 0..10 {
        assert_eq!(
            call(&addr, "PUT", &format!("/v1/kv/t{i}"), &[], b"v")
                .await
                .unwrap()
                .status,
            201
        );
    }
    cluster.nodes[0].kill();
    // Simulate a crash mid-write: a partial record at the end of the newest segment.
    let wal_dir = cluster.nodes[0].wal_dir();
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a WAL segment exists");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(last, &bytes).unwrap();

    cluster.nodes[0].start();
    cluster.wait_for_leader(LEADER_WAIT).await;
    for i in 0..10 {
        let reply = call(&addr, "GET", &format!("/v1/kv/t{i}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "t{i} lost after torn-tail recovery");
    }
    assert_eq!(
        call(&addr, "PUT", "/v1/kv/after", &[], b"v")
            .await
            .unwrap()
            .status,
        201
    );
    assert!(
        cluster.nodes[0].log_text().to_lowercase().contains("torn"),
        "no torn-tail warning logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_4xx_with_a_json_body() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    // (method, path, headers, body, expected status)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/kv/missing".into(), vec![], vec![], 404),
        ("PUT", "/v1/kv/big".into(), vec![], vec![b'x'; 65537], 413),
        (
            "PUT",
            "/v1/kv/k?cas=notanumber".into(),
            vec![],
            b"v".to_vec(),
            400,
        ),
        (
            "GET",
            "/v1/kv/k?consistency=sometimes".into(),
            vec![],
            vec![],
            400,
        ),
        ("GET", "/v1/kv/bad%zzescape".into(), vec![], vec![], 400),
        (
            "GET",
            format!("/v1/kv/{}", "k".repeat(5000)),
            vec![],
            vec![],
            400,
        ),
        ("PUT", "/v1/kv/".into(), vec![], b"v".to_vec(), 405),
        ("POST", "/v1/kv/k".into(), vec![], vec![], 405),
        ("GET", "/nowhere".into(), vec![], vec![], 404),
        ("GET", "/v1/kv/?limit=0".into(), vec![], vec![], 400),
        (
            "PUT",
            "/v1/kv/k".into(),
            vec![("idempotency-key", "")],
            b"v".to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/raft/messages".into(),
            vec![],
            b"\xff\xff\xff garbage".to_vec(),
            400,
        ),
        (
            "PUT",
            "/v1/kv/k?cas=999999".into(),
            vec![],
            b"v".to_vec(),
            409,
        ),
    ];
    for (method, path, headers, body, expected) in cases {
        let reply = call(&addr, method, &path, &headers, &body)
            .await
            .expect("node answers");
        assert_eq!(
            reply.status,
            expected,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            reply.json()["error"].is_string(),
            "{method} {path}: no JSON error body"
        );
    }
    // An RPC from another cluster is refused with 403.
    let envelope = raft_kv::node::rpc::RpcEnvelope {
        cluster_id: 12345,
        from: 7,
        to: 8,
        from_incarnation: 1,
        messages: vec![],
    };
    let reply = call(
        &addr,
        "POST",
        "/v1/raft/messages",
        &[],
        &raft_kv::node::rpc::encode(&envelope),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 403);
    // The node is still healthy after all that.
    assert_eq!(
        call(&addr, "GET", "/health", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
}

#[test]
fn bad_command_lines_exit_non_zero_with_a_message() {
    let cases: &[&[&str]] = &[
        &["--port", "0"],
        &["--peers", "nohostport"],
        &["--id", "bad name!"],
        &["--election-ticks", "5", "--heartbeat-ticks", "5"],
        &["--tick-ms", "abc"],
    ];
    for args in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(*args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
