//! `--rate-limit-rps` / `--rate-limit-burst` on a real `raft-kv` process: per token, 429 with
//! `Retry-After` and a JSON body, `/health` never limited, and requests pass again later.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::{call, eventually, metric, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_while_others_are_served() {
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token_path = token_dir.path().join("tokens");
    let line = |name: &str, token: &str| {
        format!(
            "{name} readwrite {}\n",
            raft_kv::http::auth::token_hash_hex(token)
        )
    };
    std::fs::write(
        &token_path,
        line("alice", "alice-token") + &line("bob", "bob-token"),
    )
    .expect("write the token file");
    let token_arg = token_path.to_str().expect("a UTF-8 path").to_string();
    let cluster = Cluster::start_with(
        1,
        &[
            "--auth-tokens",
            &token_arg,
            "--rate-limit-rps",
            "1",
            "--rate-limit-burst",
            "3",
        ],
    );
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    let alice = [("authorization", "Bearer alice-token")];
    let bob = [("authorization", "Bearer bob-token")];

    let started = Instant::now();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let reply = call(&addr, "PUT", &format!("/v1/kv/a{n}"), &alice, b"v")
            .await
            .expect("the node answers");
        statuses.push(reply.status);
        if reply.status == 429 {
            let body = reply.json();
            assert_eq!(body["code"], "rate_limited", "{body}");
            assert!(
                body["error"].as_str().unwrap().contains("token alice"),
                "{body}"
            );
            let retry_after = reply
                .header_u64("retry-after")
                .expect("a Retry-After header");
            assert!((1..=3).contains(&retry_after), "Retry-After: {retry_after}");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test a 1 rps limit"
    );
    assert_eq!(&statuses[..3], &[201, 201, 201], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(metric(&addr, "raft_kv_rate_limited_total").await.unwrap() >= 1.0);

    // Another token has its own bucket, and /health is never limited.
    let reply = call(&addr, "GET", "/v1/kv/a0", &bob, b"").await.unwrap();
    assert_eq!(reply.status, 200);
    for _ in 0..10 {
        let reply = call(&addr, "GET", "/health", &[], b"").await.unwrap();
        assert_eq!(reply.status, 200);
    }

    // Alice is served again once her bucket refills.
    eventually(Duration::from_secs(10), "alice served again", || async {
        let reply = call(&addr, "GET", "/v1/kv/a0", &alice, b"").await?;
        (reply.status == 200).then_some(())
    })
    .await;
}

#[test]
fn a_burst_without_a_rate_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["--rate-limit-burst", "5"])
        .output()
        .expect("run raft-kv");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate-limit-rps"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_does_not_count_again_what_followers_forwarded() {
    let cluster = Cluster::start_with(3, &["--rate-limit-rps", "1", "--rate-limit-burst", "3"]);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let followers: Vec<String> = (1..3)
        .map(|offset| cluster.nodes[(leader + offset) % 3].addr.clone())
        .collect();
    // Six writes from one address within a second, three through each follower: each follower
    // counts its three, and the leader, which applies all six, counts none of them.
    let started = Instant::now();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let follower = &followers[n % 2];
        let reply = call(follower, "PUT", &format!("/v1/kv/f{n}"), &[], b"v")
            .await
            .expect("the follower answers");
        statuses.push(reply.status);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test a 1 rps limit"
    );
    assert_eq!(statuses, [201; 6], "{statuses:?}");
    let reply = call(&followers[0], "PUT", "/v1/kv/f-more", &[], b"v")
        .await
        .unwrap();
    assert_eq!(reply.status, 429, "the follower's own count still holds");
}
