//! Membership change on real `raft-kv` processes (issue 10): growing from one node with
//! `--join`, the membership API's answers, removing the leader, and the removed and replaced
//! incarnations' RPCs (410 and 403) after the peers restart.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::Duration;

use common::{call, eventually, Cluster};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(30);

/// `GET /v1/cluster/members` through `addr`, when it answers 200.
async fn members(addr: &str) -> Option<Json> {
    let reply = call(addr, "GET", "/v1/cluster/members", &[], b"").await?;
    (reply.status == 200).then(|| reply.json())
}

/// The (name, role) pairs of a member list, sorted by name.
fn roles(view: &Json) -> Vec<(String, String)> {
    let mut roles: Vec<(String, String)> = view["members"]
        .as_array()
        .expect("members is a list")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    roles.sort();
    roles
}

fn voters(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|name| (name.to_string(), "voter".to_string()))
        .collect()
}

/// Waits until the members list through `addr` shows exactly `expected`.
async fn wait_for_roles(addr: &str, expected: Vec<(String, String)>) -> Json {
    eventually(WAIT, &format!("members {expected:?}"), || {
        let expected = expected.clone();
        async move {
            let view = members(addr).await?;
            (roles(&view) == expected && view["change_in_flight"] == false).then_some(view)
        }
    })
    .await
}

/// A single node, grown to three by two `--join`s.
async fn grown_to_three() -> Cluster {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(WAIT).await;
    let seed = cluster.nodes[0].addr.clone();
    cluster.add_node("node2", &["--join", &seed]);
    cluster.add_node("node3", &["--join", &seed]);
    wait_for_roles(&seed, voters(&["node1", "node2", "node3"])).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_grows_to_three_with_join_and_a_restart_never_joins_again() {
    let mut cluster = Cluster::start(1);
    // A node with no peers elects itself at once.
    cluster.wait_for_leader(Duration::from_secs(2)).await;
    let seed = cluster.nodes[0].addr.clone();
    let reply = call(&seed, "PUT", "/v1/kv/before", &[], b"1")
        .await
        .unwrap();
    assert_eq!(reply.status, 201);
    cluster.add_node("node2", &["--join", &seed]);
    cluster.add_node("node3", &["--join", &seed]);
    wait_for_roles(&seed, voters(&["node1", "node2", "node3"])).await;
    // Reachability is per check-quorum window, just reset at times: every member answers.
    eventually(WAIT, "every member reachable", || async {
        let view = members(&seed).await?;
        let all = view["members"]
            .as_array()?
            .iter()
            .all(|m| m["reachable"] == true);
        all.then_some(())
    })
    .await;
    // Every node serves the key written before they joined and one written after.
    let reply = call(&cluster.nodes[2].addr, "PUT", "/v1/kv/after", &[], b"2")
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    for node in &cluster.nodes {
        for (key, value) in [("before", "1"), ("after", "2")] {
            let reply = call(&node.addr, "GET", &format!("/v1/kv/{key}"), &[], b"")
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{} {key}", node.name);
            assert_eq!(&reply.body[..], value.as_bytes());
        }
    }
    // A restart with data reads cluster.json and asks nobody to add it again.
    cluster.nodes[1].kill();
    cluster.nodes[1].start();
    let reply = eventually(WAIT, "node2 serves again", || async {
        let reply = call(
            &cluster.nodes[1].addr,
            "GET",
            "/v1/kv/after?stale",
            &[],
            b"",
        )
        .await?;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert_eq!(&reply.body[..], b"2");
    assert_eq!(
        cluster.nodes[1]
            .log_text()
            .matches("added as a learner")
            .count(),
        1
    );
    wait_for_roles(&seed, voters(&["node1", "node2", "node3"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_api_answers_each_documented_status() {
    let mut cluster = grown_to_three().await;
    let follower = cluster.nodes[2].addr.clone();
    let post = |body: &'static str| {
        let follower = follower.clone();
        async move {
            call(
                &follower,
                "POST",
                "/v1/cluster/members",
                &[],
                body.as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    // 400: bad body, bad name, bad address; 404: no such member.
    assert_eq!(post("{").await.status, 400);
    assert_eq!(post(r#"{"name": "a b", "addr": "h:1"}"#).await.status, 400);
    assert_eq!(
        post(r#"{"name": "n9", "addr": "nohost"}"#).await.status,
        400
    );
    let reply = call(&follower, "DELETE", "/v1/cluster/members/ghost", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 404, "{:?}", reply.body);
    // 409: a name already in the cluster.
    let reply = post(r#"{"name": "node2", "addr": "127.0.0.1:1"}"#).await;
    assert_eq!(reply.status, 409, "{:?}", reply.body);
    assert_eq!(reply.json()["code"], "conflict");

    // A learner nobody runs: added (through a follower), then refused promotion.
    let view = members(&follower).await.unwrap();
    let config_index = view["config_index"].as_u64().unwrap();
    let reply = post(r#"{"name": "node9", "addr": "127.0.0.1:9", "learner": true}"#).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let added_at = reply.json()["config_index"].as_u64().unwrap();
    assert!(added_at > config_index);
    let reply = call(
        &follower,
        "POST",
        "/v1/cluster/members/node9/promote",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 409, "{:?}", reply.body);
    assert_eq!(reply.json()["code"], "not_caught_up");
    // 412: a stale cas; then the right one removes it.
    let stale = format!("/v1/cluster/members/node9?cas={config_index}");
    let reply = call(&follower, "DELETE", &stale, &[], b"").await.unwrap();
    assert_eq!(reply.status, 412, "{:?}", reply.body);
    let current = format!("/v1/cluster/members/node9?cas={added_at}");
    let reply = call(&follower, "DELETE", &current, &[], b"").await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    wait_for_roles(&follower, voters(&["node1", "node2", "node3"])).await;

    // 503 with Retry-After once no leader can be elected.
    cluster.nodes[0].kill();
    cluster.nodes[1].kill();
    let reply = eventually(WAIT, "503 without a leader", || async {
        let reply = post(r#"{"name": "node8", "addr": "127.0.0.1:8"}"#).await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    assert!(reply.headers.contains_key("retry-after"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_leadership_over_first_and_the_removed_node_exits() {
    let mut cluster = grown_to_three().await;
    let leader = cluster.wait_for_leader(WAIT).await;
    let leader_name = cluster.nodes[leader].name.clone();
    let other = cluster.nodes[(leader + 1) % 3].addr.clone();
    // 503 (leadership being handed over, or no leader for a moment) and 409 (the last promotion
    // still in flight) are the documented "retry" answers; anything else must be the 200.
    let path = format!("/v1/cluster/members/{leader_name}");
    let reply = eventually(WAIT, "the leader's removal", || async {
        let reply = call(&other, "DELETE", &path, &[], b"").await?;
        (!matches!(reply.status, 503 | 409)).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let rest: Vec<&str> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|name| *name != leader_name)
        .collect();
    let view = wait_for_roles(&other, voters(&rest)).await;
    assert_ne!(view["leader"], leader_name.as_str());
    let reply = eventually(WAIT, "a write after the removal", || async {
        let reply = call(&other, "PUT", "/v1/kv/after-removal", &[], b"x").await?;
        (reply.status != 503).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    // The removed node learns it (its peers answer 410 Gone), says so, and exits non-zero.
    let removed = &mut cluster.nodes[leader];
    let status = eventually(WAIT, "the removed node exits", || {
        let exited = removed.exited();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let log = removed.log_text();
    assert!(log.contains("removed from the cluster"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_refuses_to_start_and_rejoins_after_its_member_is_removed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(WAIT).await;
    let addrs = cluster.addrs();
    for i in 0..20 {
        let reply = call(&addrs[leader], "PUT", &format!("/v1/kv/k{i}"), &[], b"v")
            .await
            .unwrap();
        assert_eq!(reply.status, 201);
    }
    // The operator's mistake from issue 10: wipe a follower and start it with the same flags.
    let victim = (leader + 1) % 3;
    let helper = addrs[(leader + 2) % 3].clone();
    cluster.nodes[victim].kill();
    std::fs::remove_dir_all(&cluster.nodes[victim].data_dir).unwrap();
    cluster.nodes[victim].start();
    let status = eventually(WAIT, "the wiped node exits", || {
        let exited = cluster.nodes[victim].exited();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let log = cluster.nodes[victim].log_text();
    assert!(log.contains("remove the member first"), "{log}");
    // It never took part: the others still hold it as the old incarnation.
    let name = cluster.nodes[victim].name.clone();
    let view = members(&helper).await.unwrap();
    let old = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap()["incarnation"]
        .as_u64()
        .unwrap();
    assert_ne!(old, 0);

    // The fix the error names: remove the member, then join again.
    let reply = call(
        &helper,
        "DELETE",
        &format!("/v1/cluster/members/{name}"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    std::fs::remove_dir_all(&cluster.nodes[victim].data_dir).unwrap();
    cluster.nodes[victim].peers.clear();
    cluster.nodes[victim].extra_args = vec!["--join".into(), helper.clone()];
    cluster.nodes[victim].start();
    let mut names: Vec<&str> = vec!["node1", "node2", "node3"];
    names.sort();
    let view = wait_for_roles(&helper, voters(&names)).await;
    let new = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap()["incarnation"]
        .as_u64()
        .unwrap();
    assert_ne!(new, old);
    let rejoined = addrs[victim].clone();
    for i in 0..20 {
        let reply = eventually(WAIT, "the rejoined node serves every key", || {
            let rejoined = rejoined.clone();
            async move {
                let path = format!("/v1/kv/k{i}?consistency=stale");
                let reply = call(&rejoined, "GET", &path, &[], b"").await?;
                (reply.status == 200).then_some(reply)
            }
        })
        .await;
        assert_eq!(&reply.body[..], b"v");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_replacement_3_to_5_to_3_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(WAIT).await;
    // A client writes key after key through whichever node answers, for the whole test.
    let targets: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(cluster.addrs()));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (targets, acked, stop) = (targets.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut attempt = 0usize;
            let mut key = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let addr = {
                    let targets = targets.lock().unwrap();
                    targets[attempt % targets.len()].clone()
                };
                let path = format!("/v1/kv/roll-{key:05}");
                let idempotency = format!("roll-{key}");
                let headers = [("idempotency-key", idempotency.as_str())];
                match call(&addr, "PUT", &path, &headers, b"v").await {
                    Some(reply) if reply.status == 201 || reply.status == 200 => {
                        key += 1;
                        acked.store(key, Ordering::Relaxed);
                    }
                    _ => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };
    let originals: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    // 3 -> 5: two new nodes join while writes go on.
    let seed = cluster.nodes[0].addr.clone();
    for name in ["node4", "node5"] {
        let i = cluster.add_node(name, &["--join", &seed]);
        targets.lock().unwrap().push(cluster.nodes[i].addr.clone());
    }
    wait_for_roles(
        &seed,
        voters(&["node1", "node2", "node3", "node4", "node5"]),
    )
    .await;
    // Each original is replaced in turn: remove it (it exits), add a newcomer.
    for (round, old) in originals.iter().enumerate() {
        let via = cluster.nodes[3].addr.clone();
        let acked_before = acked.load(Ordering::Relaxed);
        let reply = eventually(WAIT, &format!("removal of {old}"), || {
            let via = via.clone();
            async move {
                let reply = call(
                    &via,
                    "DELETE",
                    &format!("/v1/cluster/members/{old}"),
                    &[],
                    b"",
                )
                .await?;
                (reply.status == 200 || reply.status == 404).then_some(reply)
            }
        })
        .await;
        assert_ne!(reply.status, 404, "{old} vanished before its removal");
        let index = cluster.nodes.iter().position(|n| n.name == *old).unwrap();
        let old_addr = cluster.nodes[index].addr.clone();
        targets.lock().unwrap().retain(|a| *a != old_addr);
        if round < 2 {
            let name = format!("node{}", 6 + round);
            let i = cluster.add_node(&name, &["--join", &via]);
            targets.lock().unwrap().push(cluster.nodes[i].addr.clone());
        }
        // Writes keep being acknowledged across every change.
        eventually(WAIT, "writes acknowledged after the change", || {
            let acked = acked.clone();
            async move { (acked.load(Ordering::Relaxed) > acked_before + 5).then_some(()) }
        })
        .await;
    }
    let last = cluster.nodes[3].addr.clone();
    wait_for_roles(&last, voters(&["node4", "node5", "node6", "node7"])).await;
    // 5 -> 3: retire one of the newcomers too; three remain, none of them an original.
    let reply = call(&last, "DELETE", "/v1/cluster/members/node7", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let final_three = voters(&["node4", "node5", "node6"]);
    wait_for_roles(&last, final_three).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let written = acked.load(Ordering::Relaxed);
    assert!(written > 30, "only {written} writes acknowledged");
    // No acknowledged write is lost: each of the final three serves every key.
    for name in ["node4", "node5", "node6"] {
        let addr = cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap()
            .addr
            .clone();
        eventually(
            WAIT,
            &format!("{name} serves every acknowledged key"),
            || {
                let addr = addr.clone();
                async move {
                    let limit = written + 10;
                    let path = format!("/v1/kv/?prefix=roll-&limit={limit}&consistency=stale");
                    let reply = call(&addr, "GET", &path, &[], b"").await?;
                    let json = reply.json();
                    let keys: std::collections::BTreeSet<String> = json["keys"]
                        .as_array()?
                        .iter()
                        .filter_map(|k| Some(k["key"].as_str()?.to_string()))
                        .collect();
                    (0..written)
                        .all(|i| keys.contains(&format!("roll-{i:05}")))
                        .then_some(())
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_cluster_with_client_tokens_needs_an_admin_join_token() {
    let admin = "join-test-admin-token";
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token_path = token_dir.path().join("tokens");
    std::fs::write(
        &token_path,
        format!("ops admin {}\n", raft_kv::http::auth::token_hash_hex(admin)),
    )
    .expect("write the token file");
    let token_arg = token_path.to_str().expect("a UTF-8 path").to_string();
    let mut cluster = Cluster::start_with(1, &["--auth-tokens", &token_arg]);
    cluster.wait_for_leader(WAIT).await;
    let seed = cluster.nodes[0].addr.clone();
    // Without a token the cluster answers 401: the join ends at once with that answer.
    let refused = cluster.add_node("node2", &["--join", &seed]);
    let status = eventually(WAIT, "node2 exits", || {
        let status = cluster.nodes[refused].exited();
        async move { status }
    })
    .await;
    assert!(!status.success(), "a refused join exits non-zero");
    let log = cluster.nodes[refused].log_text();
    assert!(log.contains("401"), "the error names the answer: {log}");
    // With an admin token the node joins and is promoted.
    cluster.add_node(
        "node3",
        &[
            "--join",
            &seed,
            "--join-token",
            admin,
            "--auth-tokens",
            &token_arg,
        ],
    );
    let bearer = format!("Bearer {admin}");
    eventually(WAIT, "node3 a voter", || {
        let (seed, bearer) = (seed.clone(), bearer.clone());
        async move {
            let reply = call(
                &seed,
                "GET",
                "/v1/cluster/members",
                &[("authorization", bearer.as_str())],
                b"",
            )
            .await?;
            let view = (reply.status == 200).then(|| reply.json())?;
            (roles(&view) == voters(&["node1", "node3"])).then_some(())
        }
    })
    .await;
}

/// The cluster id in `node`'s `cluster.json` and the incarnation of its data directory.
fn identity(node: &common::NodeProcess) -> (u64, u64) {
    let cluster = std::fs::read(node.data_dir.join("cluster.json")).unwrap();
    let cluster: Json = serde_json::from_slice(&cluster).unwrap();
    let incarnation = std::fs::read_to_string(node.data_dir.join("incarnation")).unwrap();
    (
        cluster["cluster_id"].as_u64().unwrap(),
        incarnation.trim().parse().unwrap(),
    )
}

/// The term `/health` at `addr` reports.
async fn term_of(addr: &str) -> Option<u64> {
    call(addr, "GET", "/health", &[], b"").await?.json()["term"].as_u64()
}

/// Posts a Raft RPC envelope from `from` (`incarnation`) to `to` and returns the answer.
async fn post_rpc(
    to: &common::NodeProcess,
    cluster_id: u64,
    from: &str,
    incarnation: u64,
    messages: Vec<raft_kv::raft::Message>,
) -> common::Reply {
    let envelope = raft_kv::node::rpc::RpcEnvelope {
        cluster_id,
        from: raft_kv::node::config::node_id_of(from),
        to: raft_kv::node::config::node_id_of(&to.name),
        from_incarnation: incarnation,
        messages,
    };
    call(
        &to.addr,
        "POST",
        "/v1/raft/messages",
        &[],
        &raft_kv::node::rpc::encode(&envelope),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_peers_restart_a_removed_node_gets_410_and_another_incarnation_403() {
    // Snapshots every 10 entries, so the removal is folded into a snapshot before the restarts.
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "10"]);
    let leader = cluster.wait_for_leader(WAIT).await;
    let gone = (leader + 1) % 3;
    let gone_name = cluster.nodes[gone].name.clone();
    let (cluster_id, gone_incarnation) = identity(&cluster.nodes[gone]);
    // Removed while it is down, so it cannot learn it from its own log.
    cluster.nodes[gone].kill();
    let leader_addr = cluster.nodes[leader].addr.clone();
    let reply = call(
        &leader_addr,
        "DELETE",
        &format!("/v1/cluster/members/{gone_name}"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let rest: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    let mut rest_names: Vec<&str> = rest
        .iter()
        .map(|&i| cluster.nodes[i].name.as_str())
        .collect();
    rest_names.sort();
    wait_for_roles(&leader_addr, voters(&rest_names)).await;
    for i in 0..30 {
        let reply = call(&leader_addr, "PUT", &format!("/v1/kv/k{i}"), &[], b"v")
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
    for &i in &rest {
        eventually(WAIT, "a snapshot past the removal", || {
            let files = cluster.nodes[i].snapshot_files();
            async move { (!files.is_empty()).then_some(()) }
        })
        .await;
    }
    // Both peers restart: what they know of the removal comes from their disks.
    for &i in &rest {
        cluster.nodes[i].kill();
        cluster.nodes[i].start();
    }
    let leader = cluster.wait_for_leader(WAIT).await;
    for &i in &rest {
        let reply = post_rpc(
            &cluster.nodes[i],
            cluster_id,
            &gone_name,
            gone_incarnation,
            vec![],
        )
        .await;
        assert_eq!(reply.status, 410, "{:?}", reply.body);
        assert_eq!(reply.json()["code"], "removed");
    }
    // A member under another incarnation (a lost data directory that bypassed the start check)
    // is refused with 403, and its vote request never reaches the core: the term stays.
    let voter = rest.iter().copied().find(|&i| i != leader).unwrap();
    let (_, voter_incarnation) = identity(&cluster.nodes[voter]);
    let leader_addr = cluster.nodes[leader].addr.clone();
    let term = term_of(&leader_addr).await.unwrap();
    let voter_name = cluster.nodes[voter].name.clone();
    let vote = raft_kv::raft::Message {
        from: raft_kv::node::config::node_id_of(&voter_name),
        to: raft_kv::node::config::node_id_of(&cluster.nodes[leader].name),
        term: term + 5,
        body: raft_kv::raft::MessageBody::Vote {
            last_log_index: 1_000,
            last_log_term: term + 5,
            transfer: true,
        },
    };
    let reply = post_rpc(
        &cluster.nodes[leader],
        cluster_id,
        &voter_name,
        voter_incarnation ^ 1,
        vec![vote.clone()],
    )
    .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(reply.json()["code"], "other_incarnation");
    assert_eq!(term_of(&leader_addr).await, Some(term));
    // The same envelope under the member's own incarnation does reach the core (the transfer
    // flag bypasses the lease): the term moves, so the refusal above was the incarnation's.
    let reply = post_rpc(
        &cluster.nodes[leader],
        cluster_id,
        &voter_name,
        voter_incarnation,
        vec![vote],
    )
    .await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
    eventually(WAIT, "the term moves past the forged vote's", || {
        let leader_addr = leader_addr.clone();
        async move { (term_of(&leader_addr).await? >= term + 5).then_some(()) }
    })
    .await;
    // The removed node itself, started again, is told 410 by its restarted peers and exits.
    cluster.nodes[gone].start();
    let status = eventually(WAIT, "the removed node exits", || {
        let exited = cluster.nodes[gone].exited();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let log = cluster.nodes[gone].log_text();
    assert!(log.contains("410 Gone"), "{log}");
}

/// A process started in its own process group, which is sent SIGTERM (the process and every
/// node it started) when dropped, so a failing test leaves no node running.
struct Group(std::process::Child);

impl Group {
    fn spawn(args: &[&str]) -> Group {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn raft-kv");
        Group(child)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_kv_dev_add_and_remove_grow_and_shrink_the_running_dev_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let base_port = common::free_port().to_string();
    let flags = [
        "--base-port",
        base_port.as_str(),
        "--data-dir",
        data_dir.as_str(),
    ];
    let _dev = Group::spawn(&[&["dev", "--nodes", "1"][..], &flags].concat());
    let seed = format!("127.0.0.1:{base_port}");
    wait_for_roles(&seed, voters(&["node1"])).await;
    let mut added = Group::spawn(&[&["dev", "add", "node2"][..], &flags].concat());
    wait_for_roles(&seed, voters(&["node1", "node2"])).await;
    let dev = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args([&["dev"][..], args, &flags].concat())
            .output()
            .unwrap()
    };
    let removed = dev(&["remove", "node2"]);
    assert!(removed.status.success(), "{removed:?}");
    wait_for_roles(&seed, voters(&["node1"])).await;
    // The removed node stops by itself, and with it `dev add`.
    let status = eventually(WAIT, "dev add exits", || {
        let exited = added.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    // A bad name is a usage error (2); a name that is no member is refused by the cluster (1).
    assert_eq!(dev(&["remove", "bad name"]).status.code(), Some(2));
    let unknown = dev(&["remove", "node9"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_but_kept_cluster_json_is_refused_as_another_incarnation() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(WAIT).await;
    let leader_addr = cluster.nodes[leader].addr.clone();
    let victim = (leader + 1) % 3;
    let (_, old_incarnation) = identity(&cluster.nodes[victim]);
    // The disk is lost but `cluster.json` is copied back by hand: the node restarts as if it
    // had data, so the start check (the hello) is bypassed, with a fresh incarnation.
    cluster.nodes[victim].kill();
    let data_dir = cluster.nodes[victim].data_dir.clone();
    let cluster_json = std::fs::read(data_dir.join("cluster.json")).unwrap();
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("cluster.json"), cluster_json).unwrap();
    cluster.nodes[victim].start();
    let (_, new_incarnation) = eventually(WAIT, "a fresh incarnation", || {
        let ready = data_dir.join("incarnation").is_file();
        let node = &cluster.nodes[victim];
        async move { ready.then(|| identity(node)) }
    })
    .await;
    assert_ne!(new_incarnation, old_incarnation);
    // Its peers refuse every RPC of it with 403, and it says so.
    eventually(WAIT, "the refused node warns", || {
        let log = cluster.nodes[victim].log_text();
        async move { log.contains("another incarnation").then_some(()) }
    })
    .await;
    // The cluster keeps committing without it, and still records the old incarnation.
    let reply = call(&leader_addr, "PUT", "/v1/kv/after-loss", &[], b"x")
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let name = cluster.nodes[victim].name.clone();
    let view = members(&leader_addr).await.unwrap();
    let recorded = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap()["incarnation"]
        .as_u64();
    assert_eq!(recorded, Some(old_incarnation), "{view}");
}
