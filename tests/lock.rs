//! `raft-kv lock` and `raft-kv kv watch` as real processes: mutual exclusion among processes
//! that come and go (a killed holder's lock frees once its lease expires), and a watch that
//! resumes on another node, missing nothing, when the node it waits on is killed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, eventually, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn raft_kv(endpoints: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    command.env("RAFT_KV_ENDPOINTS", endpoints);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_kv_lock_lets_one_process_at_a_time_run_its_command() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let endpoints = cluster.addrs().join(",");
    let dir = tempfile::tempdir().unwrap();
    // The critical section: mkdir is atomic, so a second holder at once fails with 99.
    let critical = "mkdir \"$D/held\" || exit 99; echo $RAFT_KV_LOCK_INDEX >> \"$D/tokens\"; \
                    sleep 0.2; rmdir \"$D/held\"";
    let processes = 4;
    let rounds = 3;
    let workers: Vec<_> = (0..processes)
        .map(|_| {
            let endpoints = endpoints.clone();
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                (0..rounds)
                    .map(|_| {
                        raft_kv(&endpoints)
                            .args(["lock", "demo", "--ttl", "2", "--timeout", "60", "--"])
                            .args(["sh", "-c", critical])
                            .env("D", &dir)
                            .status()
                            .expect("run raft-kv lock")
                            .code()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for worker in workers {
        let codes = worker.join().expect("worker thread");
        assert!(codes.iter().all(|code| *code == Some(0)), "{codes:?}");
    }
    let tokens = std::fs::read_to_string(dir.path().join("tokens")).unwrap();
    let tokens: Vec<u64> = tokens.lines().map(|t| t.parse().unwrap()).collect();
    assert_eq!(tokens.len(), processes * rounds);
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "fencing tokens grow with each holder: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lock_frees_once_its_lease_expires() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let endpoints = cluster.addrs().join(",");
    let addr = cluster.addrs()[0].clone();
    // The holder is killed with kill -9; its command, a short sleep, ends by itself.
    let mut holder = raft_kv(&endpoints)
        .args(["lock", "demo", "--ttl", "2", "--", "sleep", "5"])
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the lock to be taken", || async {
        let reply = call(&addr, "GET", "/v1/kv/locks/demo", &[], b"").await?;
        (reply.status == 200).then_some(())
    })
    .await;
    let busy = raft_kv(&endpoints)
        .args(["lock", "demo", "--ttl", "2", "--no-wait", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(busy.code(), Some(3), "--no-wait on a held lock");
    let killed_at = Instant::now();
    holder.kill().unwrap();
    let _ = holder.wait();
    let next = raft_kv(&endpoints)
        .args([
            "lock",
            "demo",
            "--ttl",
            "2",
            "--timeout",
            "30",
            "--",
            "true",
        ])
        .status()
        .unwrap();
    assert_eq!(next.code(), Some(0));
    let waited = killed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2) * 2 / 3,
        "the lock freed {waited:?} after the kill, before its lease could expire"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_watch_prints_every_change_and_resumes_when_its_node_is_killed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    // The watch talks to a follower first; it is killed mid-watch.
    let follower = (leader + 1) % 3;
    let mut addrs = cluster.addrs();
    addrs.swap(0, follower);
    let endpoints = addrs.join(",");
    let writer = cluster.addrs()[leader].clone();
    let mut watch = raft_kv(&endpoints)
        .args(["kv", "watch", "config/", "--prefix", "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it watches (it says so on stderr).
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("watching from index"), "{line}");
    let put = |key: &'static str, value: &'static str| {
        let writer = writer.clone();
        async move {
            let reply = call(
                &writer,
                "PUT",
                &format!("/v1/kv/{key}"),
                &[],
                value.as_bytes(),
            )
            .await
            .unwrap();
            assert!(
                reply.status == 200 || reply.status == 201,
                "{:?}",
                reply.body
            );
            reply.json()["index"].as_u64().unwrap()
        }
    };
    let first = put("config/a", "1").await;
    call(&writer, "PUT", "/v1/kv/other", &[], b"x")
        .await
        .unwrap();
    cluster.nodes[follower].kill();
    let second = put("config/b", "2").await;
    let third = put("config/a", "3").await;
    let deleted = call(&writer, "DELETE", "/v1/kv/config/b", &[], b"")
        .await
        .unwrap();
    let fourth = deleted.json()["index"].as_u64().unwrap();
    let output = watch.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "put {first} config/a 1\nput {second} config/b 2\nput {third} config/a 3\n\
             delete {fourth} config/b\n"
        )
    );
}
