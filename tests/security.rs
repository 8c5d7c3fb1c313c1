//! Security on real `raft-kv` processes: hostile HTTP over raw TCP, client tokens and roles.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{call, Cluster};

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// Writes `request` on a fresh connection and reads until the server closes it; panics if the
/// server keeps the connection open for 10 s.
fn exchange_until_closed(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    stream.write_all(request).expect("write the request");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) => panic!(
            "the server did not close the connection ({e}); read so far: {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code and JSON body of the first response in `answer`.
fn first_response(answer: &str) -> (u16, serde_json::Value) {
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framing_gets_a_json_400_and_a_closed_connection() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    // (request, expected code). The trailing GET would be a smuggled second request.
    let cases: [(&[u8], &str); 4] = [
        (
            b"PUT /v1/kv/smuggled HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/kv/a HTTP/1.1\r\nhost: x\r\n\r\n",
            "conflicting_length",
        ),
        (
            b"PUT /v1/kv/smuggled HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "conflicting_length",
        ),
        (
            b"PUT /v1/kv/smuggled HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "unsupported_transfer_coding",
        ),
        (
            b"PUT /v1/kv/smuggled HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nhello",
            "unsupported_transfer_coding",
        ),
    ];
    for (request, code) in cases {
        let answer = exchange_until_closed(&addr, request);
        let (status, json) = first_response(&answer);
        assert_eq!(status, 400, "{answer}");
        assert_eq!(json["code"], code, "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "the bytes after a refused head must not be served: {answer}"
        );
    }
    let never_written = call(&addr, "GET", "/v1/kv/smuggled", &[], b"")
        .await
        .unwrap();
    assert_eq!(never_written.status, 404, "{:?}", never_written.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_chunked_and_pipelined_requests_are_still_served() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    // A chunked upload is served, and the connection ends after it.
    let answer = exchange_until_closed(
        &addr,
        b"PUT /v1/kv/chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(first_response(&answer).0, 201, "{answer}");
    let stored = call(&addr, "GET", "/v1/kv/chunked", &[], b"")
        .await
        .unwrap();
    assert_eq!(&stored.body[..], b"hello");
    // Two requests with bodies on one connection, then a third: all three answered in order.
    let answer = exchange_until_closed(
        &addr,
        b"PUT /v1/kv/p1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nv1\
          PUT /v1/kv/p2 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nv2\
          GET /v1/kv/p1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(answer.matches("HTTP/1.1 201").count(), 2, "{answer}");
    assert!(answer.ends_with("v1"), "{answer}");
}

/// The token file of the auth tests: `(name, role, token)`.
const TOKENS: [(&str, &str, &str); 4] = [
    ("reader", "read", "token-of-the-reader"),
    ("writer", "readwrite", "token-of-the-writer"),
    ("root", "admin", "token-of-the-admin"),
    ("leaver", "readwrite", "token-to-be-revoked"),
];

fn token_file_text(tokens: &[(&str, &str, &str)]) -> String {
    tokens
        .iter()
        .map(|(name, role, token)| {
            format!(
                "{name} {role} {}\n",
                raft_kv::http::auth::token_hash_hex(token)
            )
        })
        .collect()
}

/// What a request with a token of some role must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Unauthenticated,
    Forbidden,
    Served,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_role_and_with_no_bad_or_revoked_token() {
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token_path = token_dir.path().join("tokens");
    std::fs::write(&token_path, token_file_text(&TOKENS)).expect("write the token file");
    let token_arg = token_path.to_str().expect("a UTF-8 path").to_string();
    let cluster = Cluster::start_with(3, &["--auth-tokens", &token_arg, "--metrics-auth"]);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let follower_addr = cluster.nodes[follower].addr.clone();
    let bearer = |token: &str| format!("Bearer {token}");

    // (method, path, body, the role it needs; None: open).
    let routes: [(&str, &str, &[u8], Option<&str>); 16] = [
        ("GET", "/health", b"", None),
        ("GET", "/v1/raft/hello", b"", None),
        ("GET", "/metrics", b"", Some("read")),
        ("GET", "/v1/cluster", b"", Some("read")),
        ("GET", "/v1/state-hash", b"", Some("read")),
        ("GET", "/v1/kv/matrix", b"", Some("read")),
        ("GET", "/v1/kv/?prefix=m", b"", Some("read")),
        ("PUT", "/v1/kv/matrix", b"v", Some("readwrite")),
        ("DELETE", "/v1/kv/matrix", b"", Some("readwrite")),
        ("GET", "/v1/cluster/members", b"", Some("read")),
        // An incomplete body: an admin gets a 400 from the handler, everyone else 401/403.
        ("POST", "/v1/cluster/members", b"{}", Some("admin")),
        ("POST", "/v1/leases", br#"{"ttl_s": 30}"#, Some("readwrite")),
        ("GET", "/v1/leases/424242", b"", Some("read")),
        ("DELETE", "/v1/leases/424242", b"", Some("readwrite")),
        // An empty transaction body: a writer gets the handler's 400, a reader 403.
        ("POST", "/v1/txn", b"{}", Some("readwrite")),
        ("GET", "/v1/no-such-route", b"", Some("admin")),
    ];
    let rank = |role: &str| {
        ["read", "readwrite", "admin"]
            .iter()
            .position(|r| *r == role)
    };
    // Every request goes to a follower: allowed writes are forwarded to the leader, which
    // checks the caller's token again (a forward without it would answer 401).
    let callers: [(&str, Option<String>); 5] = [
        ("no token", None),
        ("bad token", Some(bearer("not-a-token"))),
        ("read", Some(bearer(TOKENS[0].2))),
        ("readwrite", Some(bearer(TOKENS[1].2))),
        ("admin", Some(bearer(TOKENS[2].2))),
    ];
    for (method, path, body, needed) in routes {
        for (caller, authorization) in &callers {
            let expect = match (needed, rank(caller)) {
                (None, _) => Expect::Served,
                (Some(_), None) => Expect::Unauthenticated,
                (Some(needed), Some(have)) if have >= rank(needed).unwrap() => Expect::Served,
                (Some(_), Some(_)) => Expect::Forbidden,
            };
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|value| ("authorization", value.as_str()))
                .collect();
            let reply = call(&follower_addr, method, path, &headers, body)
                .await
                .unwrap_or_else(|| panic!("{method} {path} as {caller}: no answer"));
            let got = match reply.status {
                401 => Expect::Unauthenticated,
                403 => Expect::Forbidden,
                _ => Expect::Served,
            };
            assert_eq!(
                got,
                expect,
                "{method} {path} as {caller}: {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            if got == Expect::Unauthenticated {
                assert_eq!(reply.json()["code"], "unauthenticated");
                assert_eq!(reply.headers["www-authenticate"], "Bearer");
            }
            if got == Expect::Forbidden {
                assert_eq!(reply.json()["code"], "forbidden");
            }
            if got == Expect::Served && *method == *"PUT" {
                // Forwarded to the leader with the caller's token, and applied there.
                assert!(
                    reply.status == 200 || reply.status == 201,
                    "{:?}",
                    reply.body
                );
            }
        }
    }

    // Leadership transfer needs admin.
    let transfer = "/v1/cluster/transfer-leader";
    let as_writer = [("authorization", callers[3].1.as_deref().unwrap())];
    let reply = call(&follower_addr, "POST", transfer, &as_writer, b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    let as_admin = [("authorization", callers[4].1.as_deref().unwrap())];
    let reply = call(&follower_addr, "POST", transfer, &as_admin, b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{:?}", reply.body);

    // Revocation: the token works, its line goes, SIGHUP, and it no longer does.
    let leaver = bearer(TOKENS[3].2);
    let as_leaver = [("authorization", leaver.as_str())];
    let reply = call(&follower_addr, "GET", "/v1/kv/matrix", &as_leaver, b"")
        .await
        .unwrap();
    assert_ne!(reply.status, 401, "{:?}", reply.body);
    std::fs::write(&token_path, token_file_text(&TOKENS[..3])).expect("rewrite the token file");
    for node in &cluster.nodes {
        node.send_signal("HUP");
    }
    for node in &cluster.nodes {
        let addr = node.addr.clone();
        common::eventually(Duration::from_secs(10), "the revoked token refused", || {
            let addr = addr.clone();
            async move {
                let reply = call(&addr, "GET", "/v1/kv/matrix", &as_leaver, b"").await?;
                (reply.status == 401).then_some(())
            }
        })
        .await;
        // The others still work.
        let reply = call(&node.addr, "GET", "/v1/cluster", &as_admin, b"")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // A broken file on reload keeps the tokens in force.
    std::fs::write(&token_path, "garbage line\n").expect("break the token file");
    cluster.nodes[follower].send_signal("HUP");
    common::eventually(Duration::from_secs(10), "the reload error logged", || {
        let log = cluster.nodes[follower].log_text();
        async move { log.contains("token file not reloaded").then_some(()) }
    })
    .await;
    let reply = call(&follower_addr, "GET", "/v1/cluster", &as_admin, b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[test]
fn a_node_refuses_to_start_with_a_bad_token_file_and_token_makes_a_usable_line() {
    let stderr = start_failure("--auth-tokens", "alice superuser 00\n");
    assert!(stderr.contains("line 1: role"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["token", "alice", "readwrite"])
        .output()
        .expect("run raft-kv token");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .expect("a token line");
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("line:  "))
        .expect("a file line");
    let table = raft_kv::http::auth::TokenTable::parse(line).expect("the line parses");
    let principal = table.principal(token).expect("the token matches its line");
    assert_eq!(principal.role, raft_kv::http::auth::Role::ReadWrite);
    assert_eq!(token.len(), 64, "256 random bits in hex: {token}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_cluster_secret_are_refused_and_members_with_it_replicate() {
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret_path = secret_dir.path().join("secret");
    std::fs::write(
        &secret_path,
        "3c1f0d8a5be94a7e9d2c6b1f0e8a7d6c5b4a39281706f5e4\n",
    )
    .expect("write the secret");
    let wrong_path = secret_dir.path().join("wrong");
    std::fs::write(
        &wrong_path,
        "a different secret that is long enough to use\n",
    )
    .expect("write the other secret");
    let secret_arg = secret_path.to_str().expect("UTF-8 path").to_string();
    let mut cluster = Cluster::start_with(3, &["--peer-secret-file", &secret_arg]);
    // node3 restarts with the wrong secret: the members refuse its RPCs and it refuses theirs.
    cluster.nodes[2].kill();
    cluster.nodes[2].extra_args = vec![
        "--peer-secret-file".into(),
        wrong_path.to_str().expect("UTF-8 path").into(),
    ];
    cluster.nodes[2].start();
    let leader = loop {
        let leader = cluster.wait_for_leader(LEADER_WAIT).await;
        if leader != 2 {
            break leader;
        }
        // node3 led before its restart and still claims it: wait for the others to elect.
    };
    let leader_addr = cluster.nodes[leader].addr.clone();
    let reply = call(&leader_addr, "PUT", "/v1/kv/secret-key", &[], b"v")
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let index = reply.header_u64("x-raft-index").unwrap();
    let member = (0..3).find(|i| *i != leader && *i != 2).unwrap();
    let member_addr = cluster.nodes[member].addr.clone();
    common::eventually(LEADER_WAIT, "the write applied on the other member", || {
        let addr = member_addr.clone();
        async move { (common::applied_index(&addr).await? >= index).then_some(()) }
    })
    .await;
    let outsider_applied = common::applied_index(&cluster.nodes[2].addr)
        .await
        .unwrap_or(0);
    assert!(
        outsider_applied < index,
        "node3 with the wrong secret applied {outsider_applied} >= {index}"
    );
    // node3 is up (it answered), and the leader's RPCs to it keep failing: refused with 401.
    let errors_to_node3 = "raft_peer_rpc_errors_total{peer=\"node3\"}";
    let before = common::metric(&leader_addr, errors_to_node3).await.unwrap();
    common::eventually(LEADER_WAIT, "the leader's RPCs to node3 refused", || {
        let addr = leader_addr.clone();
        async move { (common::metric(&addr, errors_to_node3).await? >= before + 5.0).then_some(()) }
    })
    .await;

    // A forged RPC without a MAC: 401 before the body is even decoded.
    let forged = call(&leader_addr, "POST", "/v1/raft/messages", &[], b"garbage")
        .await
        .unwrap();
    assert_eq!(forged.status, 401, "{:?}", forged.body);
    assert_eq!(forged.json()["code"], "peer_unauthenticated");
    // With a MAC under the right secret the same bytes pass authentication and fail decoding.
    let secret = raft_kv::node::peer_auth::PeerSecret::new(
        b"3c1f0d8a5be94a7e9d2c6b1f0e8a7d6c5b4a39281706f5e4",
    )
    .unwrap();
    let mac = secret.sign("/v1/raft/messages", b"garbage");
    let signed = call(
        &leader_addr,
        "POST",
        "/v1/raft/messages",
        &[(raft_kv::node::peer_auth::PEER_MAC_HEADER, &mac)],
        b"garbage",
    )
    .await
    .unwrap();
    assert_eq!(signed.status, 400, "{:?}", signed.body);
}

#[test]
fn a_node_refuses_to_start_with_a_short_peer_secret() {
    let stderr = start_failure("--peer-secret-file", "tooshort\n");
    assert!(stderr.contains("at least 32"), "{stderr}");
}

/// Starts a node whose `flag` names a file holding `contents`; asserts it exits non-zero and
/// returns its stderr.
fn start_failure(flag: &str, contents: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("file");
    std::fs::write(&file, contents).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .arg(flag)
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--port", &common::free_port().to_string()])
        .output()
        .expect("run raft-kv");
    assert!(!output.status.success(), "started with a bad {flag}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
