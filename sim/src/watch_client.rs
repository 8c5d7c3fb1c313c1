//! Watchers: clients that long-poll the watch API of random nodes and record every answer for
//! the watch checker ([`crate::watch_check`]). A watcher stays on one node until it fails (down,
//! cut off, no answer), then resumes from the same index on another: the reconnects and node
//! switches the checker must see through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::env;
use raft_kv::http::client::HttpClient;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::recorder::Shared;
use crate::watch_check::{Answer, Change, Selector, WatcherLog};
use crate::workload::ClientContext;

/// How long one long poll waits (virtual time).
const WATCH_WAIT_MS: u64 = 1_000;
/// Largest answer a watcher reads.
const WATCH_RESPONSE_BYTES_MAX: usize = 4 << 20;

/// What watchers the run has: one on every key, one on the first key, one on the prefix `k1`
/// (which also matches `k10`...).
pub fn selectors() -> Vec<Selector> {
    vec![
        Selector::Prefix(String::new()),
        Selector::Key("k0".into()),
        Selector::Prefix("k1".into()),
    ]
}

/// Runs watcher `watcher` until `stop` is set; every answer goes to the recorder at once.
pub async fn watch_loop(
    watcher: u64,
    selector: Selector,
    ctx: ClientContext,
    mut rng: ChaCha8Rng,
    stop: Arc<AtomicBool>,
) {
    let slot = {
        let mut rec = ctx.shared.lock();
        rec.watchers.push(WatcherLog {
            watcher,
            selector: selector.clone(),
            start_index: 0,
            answers: Vec::new(),
        });
        rec.watchers.len() - 1
    };
    let http = HttpClient::new();
    let mut node = (rng.next_u64() % ctx.addrs.len() as u64) as usize;
    let mut position = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = match &selector {
            Selector::Key(key) => {
                format!("/v1/kv/{key}?watch&index={position}&wait={WATCH_WAIT_MS}ms")
            }
            Selector::Prefix(prefix) => {
                format!("/v1/kv/?prefix={prefix}&watch&index={position}&wait={WATCH_WAIT_MS}ms")
            }
        };
        let request = hyper::Request::builder()
            .uri(path)
            .header(
                "authorization",
                crate::stranger::CLIENT_AUTHORIZATION_HEADER,
            )
            .body(Full::new(Bytes::new()))
            .expect("the simulator builds valid requests");
        let timeout = ctx.call_timeout + Duration::from_millis(WATCH_WAIT_MS);
        let answer = match http
            .call(&ctx.addrs[node], request, WATCH_RESPONSE_BYTES_MAX, timeout)
            .await
        {
            Ok(response) => parse(position, response.status().as_u16(), response.body()),
            Err(_) => None,
        };
        match answer {
            Some(answer) => {
                position = match &answer {
                    Answer::Events { index, .. } => *index,
                    Answer::Compacted { oldest, .. } => *oldest,
                };
                record(&ctx.shared, slot, watcher, answer);
            }
            None => {
                // Resume from the same index on another node, after a pause.
                node = (rng.next_u64() % ctx.addrs.len() as u64) as usize;
                env::sleep(Duration::from_millis(50 + rng.next_u64() % 200)).await;
            }
        }
    }
}

fn record(shared: &Shared, slot: usize, watcher: u64, answer: Answer) {
    let line = match &answer {
        Answer::Events {
            asked,
            index,
            events,
        } => format!(
            "watch {watcher}: after {asked} got {} events up to {index}",
            events.len()
        ),
        Answer::Compacted { asked, oldest } => {
            format!("watch {watcher}: {asked} compacted, oldest {oldest}")
        }
    };
    shared.lock().watchers[slot].answers.push(answer);
    shared.trace(line);
}

/// The answer to a call from `asked`, or `None` for one that tells nothing (503, no leader...).
/// An answer the watcher cannot make sense of is a bug in the API, reported loudly.
fn parse(asked: u64, status: u16, body: &[u8]) -> Option<Answer> {
    let text = || String::from_utf8_lossy(body).into_owned();
    let json = || -> serde_json::Value {
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("watch answered {status} with no JSON ({e}): {}", text()))
    };
    match status {
        200 => {
            let json = json();
            let index = json["index"]
                .as_u64()
                .unwrap_or_else(|| panic!("watch answer without index: {}", text()));
            let events = json["events"]
                .as_array()
                .unwrap_or_else(|| panic!("watch answer without events: {}", text()))
                .iter()
                .map(|event| event_change(event).unwrap_or_else(|| panic!("bad event {event}")))
                .collect();
            Some(Answer::Events {
                asked,
                index,
                events,
            })
        }
        410 => {
            let oldest = json()["oldest_index"]
                .as_u64()
                .unwrap_or_else(|| panic!("410 without oldest_index: {}", text()));
            Some(Answer::Compacted { asked, oldest })
        }
        // 429: the watchers share the workload's token, and so its rate limit (rate-limited
        // seeds): the call told nothing, the watcher asks again.
        503 | 504 => None,
        429 if json()["code"] == "rate_limited" => None,
        _ => panic!("unexpected answer to a watch: {status} {}", text()),
    }
}

fn event_change(event: &serde_json::Value) -> Option<Change> {
    let value = match event["type"].as_str()? {
        "put" => Some(event["value"].as_str()?.as_bytes().to_vec()),
        "delete" => None,
        _ => return None,
    };
    Some(Change {
        index: event["index"].as_u64()?,
        key: event["key"].as_str()?.to_string(),
        value,
    })
}
