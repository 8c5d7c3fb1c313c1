//! The command-line client (`raft-kv kv|lease|status`) against real node processes: what it
//! prints and the exit codes the README documents.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::Cluster;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// Runs `raft-kv ARGS` against `endpoints`.
fn raft_kv(endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(args)
        .env("RAFT_KV_ENDPOINTS", endpoints)
        .output()
        .expect("run raft-kv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_writes_and_lists_keys_with_documented_exit_codes() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_WAIT).await;
    // The first endpoint is down: the client moves on to the next.
    let endpoints = format!(
        "127.0.0.1:{},{}",
        common::free_port(),
        cluster.addrs().join(",")
    );

    let put = raft_kv(&endpoints, &["kv", "put", "config/a", "one"]);
    assert_exit(&put, 0, "put");
    let mod_index: u64 = stdout(&put)
        .trim()
        .parse()
        .expect("put prints the mod index");
    let get = raft_kv(&endpoints, &["kv", "get", "config/a"]);
    assert_exit(&get, 0, "get");
    assert_eq!(get.stdout, b"one");

    let stale = raft_kv(
        &endpoints,
        &[
            "kv",
            "put",
            "config/a",
            "two",
            "--cas",
            &(mod_index + 100).to_string(),
        ],
    );
    assert_exit(&stale, 3, "put with a stale --cas");
    let swapped = raft_kv(
        &endpoints,
        &[
            "kv",
            "put",
            "config/a",
            "two",
            "--cas",
            &mod_index.to_string(),
        ],
    );
    assert_exit(&swapped, 0, "put with the right --cas");
    let create_only = raft_kv(&endpoints, &["kv", "put", "config/a", "x", "--cas", "0"]);
    assert_exit(&create_only, 3, "create-only on an existing key");

    assert_exit(
        &raft_kv(&endpoints, &["kv", "put", "config/b", "tab\there"]),
        0,
        "put b",
    );
    assert_exit(
        &raft_kv(&endpoints, &["kv", "put", "other", "z"]),
        0,
        "put other",
    );
    let list = raft_kv(&endpoints, &["kv", "list", "--prefix", "config/"]);
    assert_exit(&list, 0, "list");
    assert_eq!(stdout(&list), "config/a\ttwo\nconfig/b\ttab\there\n");
    let keys = raft_kv(&endpoints, &["kv", "list", "--keys-only"]);
    assert_eq!(stdout(&keys), "config/a\nconfig/b\nother\n");

    assert_exit(&raft_kv(&endpoints, &["kv", "del", "config/a"]), 0, "del");
    assert_exit(
        &raft_kv(&endpoints, &["kv", "del", "config/a"]),
        1,
        "del of a missing key",
    );
    assert_exit(
        &raft_kv(&endpoints, &["kv", "get", "config/a"]),
        1,
        "get of a missing key",
    );

    let status = raft_kv(&endpoints, &["status"]);
    assert_exit(&status, 0, "status");
    let text = stdout(&status);
    assert_eq!(
        text.matches(" leader ").count() + text.matches(" follower ").count(),
        4,
        "{text}"
    );
    for node in ["node1", "node2", "node3"] {
        assert!(text.contains(node), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_grants_leases_attaches_keys_and_revokes_them() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let endpoints = cluster.addrs().join(",");

    let grant = raft_kv(&endpoints, &["lease", "grant", "30"]);
    assert_exit(&grant, 0, "lease grant");
    let lease_id = stdout(&grant).trim().to_string();
    assert_exit(
        &raft_kv(
            &endpoints,
            &["kv", "put", "session/me", "here", "--lease", &lease_id],
        ),
        0,
        "put --lease",
    );
    let kept = raft_kv(&endpoints, &["lease", "keepalive", &lease_id, "--once"]);
    assert_exit(&kept, 0, "keepalive --once");
    let show = raft_kv(&endpoints, &["lease", "show", &lease_id]);
    assert!(
        stdout(&show).contains("key session/me"),
        "{}",
        stdout(&show)
    );
    let revoke = raft_kv(&endpoints, &["lease", "revoke", &lease_id]);
    assert_exit(&revoke, 0, "revoke");
    assert_eq!(stdout(&revoke).trim(), "1", "one key deleted");
    assert_exit(
        &raft_kv(&endpoints, &["kv", "get", "session/me"]),
        1,
        "the key went with it",
    );
    assert_exit(
        &raft_kv(&endpoints, &["lease", "keepalive", &lease_id]),
        1,
        "keepalive of a revoked lease",
    );
    assert_exit(
        &raft_kv(&endpoints, &["kv", "put", "k", "v", "--lease", &lease_id]),
        1,
        "put on a revoked lease",
    );
    assert_exit(
        &raft_kv(&endpoints, &["lease", "grant", "0"]),
        6,
        "a refused TTL",
    );
}

#[test]
fn the_cli_exits_4_when_no_endpoint_answers_and_2_on_a_bad_command_line() {
    let nobody = format!("127.0.0.1:{}", common::free_port());
    let started = std::time::Instant::now();
    let output = raft_kv(&nobody, &["kv", "get", "k", "--timeout", "1"]);
    assert_exit(&output, 4, "no endpoint");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after its --timeout"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("no endpoint could serve"));
    assert_exit(&raft_kv(&nobody, &["kv", "put", "k"]), 2, "a missing value");
    assert_exit(
        &raft_kv(&nobody, &["lease", "grant", "soon"]),
        2,
        "a TTL that is not a number",
    );
}

/// A closed stdout (`raft-kv ... | head -1` once `head` has exited) ends a command with exit
/// code 6 and a message, not with the panic `println!` gives on a broken pipe.
#[test]
fn a_closed_stdout_ends_a_command_with_exit_6_and_a_message_not_a_panic() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["token", "ci", "read"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run raft-kv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "stderr {stderr:?}");
    assert!(
        stderr.contains("cannot write to stdout") && !stderr.contains("panicked"),
        "stderr {stderr:?}"
    );
}
