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
