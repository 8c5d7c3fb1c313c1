//! `raft-kv bench --token` against a real cluster started with `--auth-tokens`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn bench(endpoints: &str, token: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    command
        .args([
            "bench",
            "--endpoints",
            endpoints,
            "--clients",
            "2",
            "--seconds",
            "1",
        ])
        .args(["--keys", "10", "--preload", "--value-bytes", "8"])
        .env_remove("RAFT_KV_TOKEN");
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.output().expect("run raft-kv bench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_writes_with_a_token_and_without_one_fails_at_once_naming_401() {
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token_path = token_dir.path().join("tokens");
    let line = |name: &str, role: &str, token: &str| {
        format!(
            "{name} {role} {}\n",
            raft_kv::http::auth::token_hash_hex(token)
        )
    };
    let tokens =
        line("bencher", "readwrite", "bench-token") + &line("viewer", "read", "read-token");
    std::fs::write(&token_path, tokens).expect("write the token file");
    let token_arg = token_path.to_str().expect("a UTF-8 path").to_string();
    let cluster = Cluster::start_with(1, &["--auth-tokens", &token_arg]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let endpoints = cluster.nodes[0].addr.clone();

    let output = bench(&endpoints, Some("bench-token"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("preloaded 10 keys"), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    let started = Instant::now();
    let output = bench(&endpoints, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("answered 401"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it waited for a leader instead"
    );

    // A read token finds the leader but every write is refused: the run fails, naming 403.
    let output = bench(&endpoints, Some("read-token"));
    assert!(!output.status.success());
    let all = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(all.contains("403"), "{all}");
}
