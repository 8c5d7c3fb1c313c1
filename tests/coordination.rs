//! Coordination features (watches, byte keys) on real `raft-kv` processes over loopback HTTP.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{call, eventually, Cluster};
use serde_json::Value as Json;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// What a watcher saw: every event, in the order received, and the index it reached.
struct Watched {
    events: Vec<Json>,
    index: u64,
    answers_from: BTreeMap<usize, usize>,
}

/// Long-polls the prefix `w/` from `index` 0, starting at node `first` and moving to the next
/// node whenever one does not answer, until `stop` is set and it has reached `until` (read
/// after the writers stopped).
async fn watch_prefix(
    addrs: Vec<String>,
    first: usize,
    stop: Arc<AtomicBool>,
    until: Arc<std::sync::Mutex<Option<u64>>>,
) -> Watched {
    let mut watched = Watched {
        events: Vec::new(),
        index: 0,
        answers_from: BTreeMap::new(),
    };
    let mut node = first;
    loop {
        let target = *until.lock().unwrap();
        if stop.load(Ordering::Relaxed) && target.is_some_and(|target| watched.index >= target) {
            return watched;
        }
        let path = format!("/v1/kv/?prefix=w/&watch&index={}&wait=2s", watched.index);
        match call(&addrs[node], "GET", &path, &[], b"").await {
            Some(reply) if reply.status == 200 => {
                let body = reply.json();
                let index = body["index"].as_u64().expect("an index");
                assert_eq!(reply.header_u64("x-raft-index"), Some(index), "{body}");
                assert!(index >= watched.index, "moved back: {body}");
                watched
                    .events
                    .extend(body["events"].as_array().expect("events").clone());
                watched.index = index;
                *watched.answers_from.entry(node).or_default() += 1;
            }
            Some(reply) => panic!(
                "watch answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ),
            // Down (killed): resume from the same index on the next node.
            None => {
                node = (node + 1) % addrs.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// [`watch_prefix`] over streams (`&stream=true`): events count once the progress line after
/// them arrives; a stream that breaks (its node killed) resumes from the last progress index on
/// the next node, dropping the events received after that progress line (they come again).
async fn stream_prefix(
    addrs: Vec<String>,
    first: usize,
    stop: Arc<AtomicBool>,
    until: Arc<std::sync::Mutex<Option<u64>>>,
) -> Watched {
    let http = raft_kv::http::client::HttpClient::new();
    let mut watched = Watched {
        events: Vec::new(),
        index: 0,
        answers_from: BTreeMap::new(),
    };
    let done = |watched: &Watched| {
        let target = *until.lock().unwrap();
        stop.load(Ordering::Relaxed) && target.is_some_and(|target| watched.index >= target)
    };
    let mut node = first;
    loop {
        if done(&watched) {
            return watched;
        }
        let path = format!(
            "/v1/kv/?prefix=w/&watch&stream=true&index={}&wait=3s",
            watched.index
        );
        let request = hyper::Request::get(path)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let opened = http
            .open_lines(&addrs[node], request, 1 << 20, Duration::from_secs(2))
            .await;
        let mut lines = match opened {
            Ok((head, lines)) if head.status == 200 => {
                assert_eq!(
                    head.headers["content-type"], "application/x-ndjson",
                    "{head:?}"
                );
                lines
            }
            Ok((head, lines)) => panic!(
                "a stream answered {}: {:?}",
                head.status,
                lines.collect().await
            ),
            Err(_) => {
                node = (node + 1) % addrs.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut pending = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(8), lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let line: Json = serde_json::from_slice(&line).expect("a JSON line");
                    match line["type"].as_str() {
                        Some("progress") => {
                            let index = line["index"].as_u64().expect("an index");
                            assert!(index >= watched.index, "moved back: {line}");
                            watched.events.append(&mut pending);
                            watched.index = index;
                            *watched.answers_from.entry(node).or_default() += 1;
                            if done(&watched) {
                                return watched;
                            }
                        }
                        Some("put" | "delete") => pending.push(line),
                        _ => panic!("unexpected stream line {line}"),
                    }
                }
                // The stream ran its time: open the next one here.
                Ok(Ok(None)) => break,
                // Broken (killed) or silent: resume on the next node.
                Ok(Err(_)) | Err(_) => {
                    node = (node + 1) % addrs.len();
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_the_leaders_kill_and_misses_no_change() {
    a_watch_survives_the_leaders_kill(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_watch_resumed_across_the_leaders_kill_misses_no_change() {
    a_watch_survives_the_leaders_kill(true).await;
}

/// One watcher (long polls, or streams with `streaming`) on `w/` while a writer changes it and
/// the leader is killed: the watcher sees every acknowledged change once, in order, and its
/// events replay to what a linearizable read lists.
async fn a_watch_survives_the_leaders_kill(streaming: bool) {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let addrs = cluster.addrs();

    // The watcher starts on the leader, which is then killed mid-stream.
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(std::sync::Mutex::new(None));
    let watcher = if streaming {
        tokio::spawn(stream_prefix(
            addrs.clone(),
            leader,
            stop.clone(),
            until.clone(),
        ))
    } else {
        tokio::spawn(watch_prefix(
            addrs.clone(),
            leader,
            stop.clone(),
            until.clone(),
        ))
    };
    // One writer puts and deletes keys under w/ through any node, recording what was acknowledged.
    let writer = {
        let addrs = addrs.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{}", i % 40);
                let (method, body) = if i % 7 == 6 {
                    ("DELETE", Vec::new())
                } else {
                    ("PUT", format!("v{i}").into_bytes())
                };
                let addr = &addrs[i % addrs.len()];
                i += 1;
                match call(addr, method, &format!("/v1/kv/{key}"), &[], &body).await {
                    Some(reply) if reply.status == 200 || reply.status == 201 => {
                        let index = reply.json()["index"].as_u64().expect("an index");
                        acked.push((index, method, key));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            acked
        })
    };
    let count_writes = |addr: String| async move {
        let reply = call(&addr, "GET", "/health", &[], b"").await?;
        reply.json()["applied_index"].as_u64()
    };
    eventually(Duration::from_secs(20), "first writes", || async {
        (count_writes(addrs[leader].clone()).await? > 60).then_some(())
    })
    .await;
    cluster.nodes[leader].kill();
    let new_leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let survivor = cluster.nodes[new_leader].addr.clone();
    let before = count_writes(survivor.clone()).await.unwrap_or(0);
    eventually(
        Duration::from_secs(20),
        "writes after the failover",
        || async { (count_writes(survivor.clone()).await? > before + 60).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    // Everything written is committed at or below the index a linearizable read now reflects.
    let final_listing = eventually(Duration::from_secs(10), "a final listing", || async {
        call(&survivor, "GET", "/v1/kv/?prefix=w/", &[], b"")
            .await
            .filter(|reply| reply.status == 200)
    })
    .await;
    let final_index = final_listing.header_u64("x-raft-index").unwrap();
    *until.lock().unwrap() = Some(final_index);
    let watched = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the watcher catches up")
        .unwrap();

    assert!(
        watched.answers_from.keys().any(|&node| node != leader),
        "the watch never resumed on another node: {:?}",
        watched.answers_from
    );
    // In log order, each change once.
    let indexes: Vec<u64> = watched
        .events
        .iter()
        .map(|event| event["index"].as_u64().unwrap())
        .collect();
    assert!(
        indexes.windows(2).all(|pair| pair[0] < pair[1]),
        "events out of order or repeated: {indexes:?}"
    );
    // Every acknowledged change is there, as what it was (a delete of an absent key is none).
    let by_index: BTreeMap<u64, &Json> = watched
        .events
        .iter()
        .map(|event| (event["index"].as_u64().unwrap(), event))
        .collect();
    for (index, method, key) in &acked {
        match by_index.get(index) {
            Some(event) => {
                assert_eq!(event["key"], key.as_str(), "{event}");
                let kind = if *method == "PUT" { "put" } else { "delete" };
                assert_eq!(event["type"], kind, "{event}");
            }
            None => assert_eq!(
                *method, "DELETE",
                "acknowledged put at {index} of {key} missed"
            ),
        }
    }
    // Replaying the events gives exactly the keys a linearizable read sees.
    let mut replayed: BTreeMap<String, String> = BTreeMap::new();
    for event in &watched.events {
        let key = event["key"].as_str().unwrap().to_string();
        match event["type"].as_str().unwrap() {
            "put" => {
                replayed.insert(key, event["value"].as_str().unwrap().to_string());
            }
            "delete" => {
                assert!(
                    replayed.remove(&key).is_some(),
                    "delete of {key} never put: {event}"
                );
            }
            other => panic!("unknown event type {other}"),
        }
    }
    let listed: BTreeMap<String, String> = final_listing.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["key"].as_str().unwrap().to_string(),
                entry["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(replayed, listed, "the events do not add up to the store");
    assert!(acked.len() > 100, "too few writes: {}", acked.len());
}

/// A GET that must be answered.
async fn get(addr: &str, path: &str) -> common::Reply {
    call(addr, "GET", path, &[], b"")
        .await
        .unwrap_or_else(|| panic!("no answer to GET {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_waits_for_a_change_and_an_evicted_index_answers_410_with_the_oldest_index() {
    let cluster = Cluster::start_with(1, &["--watch-history-events", "3", "--watch-max", "1"]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.addrs()[0].clone();
    let put = |key: &'static str, value: &'static str| {
        let addr = addr.clone();
        async move {
            let reply = call(
                &addr,
                "PUT",
                &format!("/v1/kv/{key}"),
                &[],
                value.as_bytes(),
            )
            .await
            .expect("an answer");
            assert!(reply.status == 200 || reply.status == 201);
            reply.json()["index"].as_u64().unwrap()
        }
    };
    let first = put("a", "1").await;

    // A watch on `a` from its write's index waits; a write to another key does not wake it
    // with an event, a write to `a` does.
    let waiting = {
        let addr = addr.clone();
        tokio::spawn(async move {
            call(
                &addr,
                "GET",
                &format!("/v1/kv/a?watch&index={first}&wait=8s"),
                &[],
                b"",
            )
            .await
        })
    };
    // The single watch slot is taken while it waits: a second watch is refused.
    eventually(Duration::from_secs(5), "the slot to be taken", || async {
        (common::metric(&addr, "raft_kv_watches_waiting").await? == 1.0).then_some(())
    })
    .await;
    let refused = call(
        &addr,
        "GET",
        &format!("/v1/kv/b?watch&index={first}&wait=1s"),
        &[],
        b"",
    )
    .await
    .expect("an answer");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["code"], "too_many_watches");
    put("b", "x").await;
    let second = put("a", "2").await;
    let reply = waiting.await.unwrap().expect("an answer");
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["events"][0]["index"], second, "{body}");
    assert_eq!(body["events"][0]["value"], "2", "{body}");
    assert_eq!(body["events"][0]["create_index"], first, "{body}");

    // Nothing more changes: the wait ends with no events and the same place to continue.
    let idle = get(&addr, &format!("/v1/kv/a?watch&index={second}&wait=200ms")).await;
    assert_eq!(idle.status, 200);
    assert_eq!(idle.json()["events"], serde_json::json!([]));
    assert!(idle.header_u64("x-raft-index").unwrap() >= second);

    // Three more changes push the first ones out of the 3-change history.
    for value in ["3", "4", "5"] {
        put("c", value).await;
    }
    let gone = get(&addr, &format!("/v1/kv/a?watch&index={first}")).await;
    assert_eq!(gone.status, 410);
    let body = gone.json();
    assert_eq!(body["code"], "compacted", "{body}");
    let oldest = body["oldest_index"].as_u64().unwrap();
    assert!(oldest > first, "{body}");
    let resumed = get(
        &addr,
        &format!("/v1/kv/?prefix=&watch&index={oldest}&wait=0s"),
    )
    .await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.json()["events"].as_array().unwrap().len(), 3);

    for bad in ["wait=11m", "wait=soon", "index=-1"] {
        let reply = get(&addr, &format!("/v1/kv/a?watch&{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"].is_string(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_byte_keys_round_trip_exactly_and_list_as_hex() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.addrs()[0].clone();
    // `b/` then 0xff 0x00 0x2f ('/', escaped so it is part of the key, not the path).
    let path = "/v1/kv/b%2F%FF%00%2f";
    let put = call(&addr, "PUT", path, &[], b"\xfe\x01").await.unwrap();
    assert_eq!(put.status, 201, "{:?}", String::from_utf8_lossy(&put.body));
    let got = get(&addr, path).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"\xfe\x01");
    // The same bytes spelled with lowercase escapes are the same key.
    assert_eq!(get(&addr, "/v1/kv/b%2f%ff%00%2F").await.status, 200);
    // A key one byte different is another key.
    assert_eq!(get(&addr, "/v1/kv/b%2F%FF%00").await.status, 404);
    let listed = get(&addr, "/v1/kv/?prefix=b%2F%FF").await;
    let body = listed.json();
    assert_eq!(body["keys"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["keys"][0]["key_hex"], "622fff002f", "{body}");
    assert_eq!(body["keys"][0]["value_hex"], "fe01", "{body}");
    assert!(body["keys"][0].get("key").is_none(), "{body}");
    // A watch names the key the same way.
    let watched = get(&addr, "/v1/kv/?prefix=b%2F&watch&index=0&wait=0s").await;
    assert_eq!(watched.json()["events"][0]["key_hex"], "622fff002f");
    let deleted = call(&addr, "DELETE", path, &[], b"").await.unwrap();
    assert_eq!(deleted.json()["deleted"], true);
    // A bad escape is still refused.
    assert_eq!(get(&addr, "/v1/kv/b%zz").await.status, 400);
    assert_eq!(get(&addr, "/v1/kv/?prefix=%f").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_through_a_follower_applies_atomically_once_and_limits_are_400() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let follower = cluster.addrs()[(leader + 1) % 3].clone();
    let txn = |body: String, key: Option<&'static str>| {
        let follower = follower.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            call(&follower, "POST", "/v1/txn", &headers, body.as_bytes())
                .await
                .expect("an answer")
        }
    };
    // Create-only of two keys at once, the second as raw bytes.
    let create = r#"{"compare": [{"key": "acct/a", "exists": false}],
        "success": [{"put": {"key": "acct/a", "value": "100"}}, {"put": {"key_hex": "ff01", "value": "0"}}],
        "failure": [{"get": {"key": "acct/a"}}]}"#
        .to_string();
    let first = txn(create.clone(), Some("create-1")).await;
    assert_eq!(
        first.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&first.body)
    );
    let body = first.json();
    assert_eq!(body["succeeded"], true, "{body}");
    let index = body["index"].as_u64().unwrap();
    assert_eq!(first.header_u64("x-raft-index"), Some(index));
    assert_eq!(body["results"][0]["put"]["mod_index"], index, "{body}");
    // The retry with the same key is answered from the first application.
    let retried = txn(create.clone(), Some("create-1")).await;
    // Its own entry carries the retry, yet the answer is the first one whole, index included:
    // the index the results were read at, and the one to continue a watch from.
    assert_eq!(retried.header_u64("x-raft-index"), Some(index));
    let retried = retried.json();
    assert_eq!(retried, body);
    // Without the key it runs again, and now the compare fails: the failure list reads.
    let again = txn(create, None).await.json();
    assert_eq!(again["succeeded"], false, "{again}");
    assert_eq!(again["results"][0]["get"]["value"], "100", "{again}");
    assert_eq!(again["results"][0]["get"]["mod_index"], index, "{again}");
    // Both keys changed in one entry: one watch answer, two events at one index.
    let watched = get(
        &follower,
        &format!("/v1/kv/?prefix=&watch&index={}&wait=5s", index - 1),
    )
    .await;
    let events = watched.json()["events"].clone();
    assert_eq!(events.as_array().unwrap().len(), 2, "{events}");
    assert_eq!(events[0]["index"], index);
    assert_eq!(events[1]["index"], index);
    assert_eq!(events[1]["key_hex"], "ff01");
    // A compare on the mod index guards a move between the two keys.
    let transfer = format!(
        r#"{{"compare": [{{"key": "acct/a", "mod_index": {index}}}, {{"key_hex": "ff01", "value": "0"}}],
            "success": [{{"put": {{"key": "acct/a", "value": "60"}}}}, {{"put": {{"key_hex": "ff01", "value": "40"}}}}]}}"#
    );
    assert_eq!(txn(transfer.clone(), None).await.json()["succeeded"], true);
    assert_eq!(txn(transfer, None).await.json()["succeeded"], false);
    assert_eq!(&get(&follower, "/v1/kv/%FF%01").await.body[..], b"40");

    // Bad input: a clear 400 (or 405) with a JSON body.
    let too_many: Vec<String> = (0..129)
        .map(|i| format!(r#"{{"get": {{"key": "k{i}"}}}}"#))
        .collect();
    for (body, code) in [
        ("not json".to_string(), "bad_txn"),
        (r#"{"compare": [{"key": "a"}]}"#.to_string(), "bad_txn"),
        (
            r#"{"success": [{"put": {"key": "", "value": "v"}}]}"#.to_string(),
            "invalid_txn",
        ),
        (
            format!(r#"{{"success": [{}]}}"#, too_many.join(",")),
            "invalid_txn",
        ),
    ] {
        let reply = txn(body.clone(), None).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.json()["code"], code, "{body}");
    }
    let wrong_method = get(&follower, "/v1/txn").await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_410_before_it_starts_counts_against_the_watch_limit_and_refuses_bad_flags(
) {
    let cluster = Cluster::start_with(1, &["--watch-history-events", "3", "--watch-max", "1"]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let addr = cluster.addrs()[0].clone();
    let mut last = 0;
    for i in 0..6 {
        let reply = call(&addr, "PUT", "/v1/kv/a", &[], format!("{i}").as_bytes())
            .await
            .unwrap();
        last = reply.json()["index"].as_u64().unwrap();
    }
    // The history keeps 3 changes: index 1 is gone, and the stream says so before streaming.
    let gone = get(&addr, "/v1/kv/a?watch&stream=true&index=1").await;
    assert_eq!(gone.status, 410, "{:?}", gone.body);
    assert_eq!(gone.json()["code"], "compacted");
    assert_eq!(gone.json()["oldest_index"], last - 3);
    let bad = get(&addr, "/v1/kv/a?watch&stream=yes").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "bad_stream");

    // An open stream holds the only watch slot: a long poll is refused until it ends.
    let http = raft_kv::http::client::HttpClient::new();
    let request = hyper::Request::get(format!("/v1/kv/a?watch&stream=true&index={last}&wait=3s"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (head, mut lines) = http
        .open_lines(&addr, request, 1 << 20, Duration::from_secs(5))
        .await
        .expect("the stream opens");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.headers["x-raft-index"].to_str().unwrap(),
        last.to_string()
    );
    let first: Json = serde_json::from_slice(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        first,
        serde_json::json!({"type": "progress", "index": last})
    );
    let refused = get(&addr, &format!("/v1/kv/b?watch&index={last}&wait=1s")).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.json()["code"], "too_many_watches");
    let put = call(&addr, "PUT", "/v1/kv/a", &[], b"next").await.unwrap();
    let index = put.json()["index"].as_u64().unwrap();
    let event: Json = serde_json::from_slice(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        event,
        serde_json::json!({"type": "put", "index": index, "key": "a", "value": "next", "create_index": event["create_index"]})
    );
    let progress: Json =
        serde_json::from_slice(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        progress,
        serde_json::json!({"type": "progress", "index": index})
    );
    // The stream ends at its wait with a progress line, and the slot comes back.
    while let Some(line) = lines.next_line().await.expect("a clean end") {
        let line: Json = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"type": "progress", "index": index})
        );
    }
    eventually(Duration::from_secs(5), "the slot back", || async {
        let reply = get(&addr, &format!("/v1/kv/b?watch&index={index}&wait=0s")).await;
        (reply.status == 200).then_some(())
    })
    .await;
}
