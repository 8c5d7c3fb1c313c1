//! Watchers: clients that long-poll the watch API of random nodes and record every answer for
//! the watch checker ([`crate::watch_check`]). A watcher stays on one node until it fails (down,
//! cut off, no answer), then resumes from the same index on another: the reconnects and node
//! switches the checker must see through.
//!
//! Some watchers stream (`&stream=true`, see [`streams`]): each progress line of a stream
//! becomes one answer (the events since the previous progress line, up to its index), and a
//! stream's last compacted line a 410, so the checker holds streams to the same promise. Events
//! after the last progress line of a stream that breaks are dropped, as a client must: the next
//! stream resumes from that progress index and sends them again.

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
/// Largest answer a watcher reads (and longest line of a stream).
const WATCH_RESPONSE_BYTES_MAX: usize = 4 << 20;
/// How long one stream stays open (virtual time); the watcher then opens the next.
const WATCH_STREAM_WAIT_MS: u64 = 3_000;

/// Whether watcher `watcher` streams instead of long-polling: all but the first (the watcher of
/// every key keeps long-polling, so both forms run in every seed), in the seeds that allow
/// streams (see `run.rs`: those planting no bug, the watch plant or the lease plant).
pub fn streams(watcher: u64) -> bool {
    watcher != 0
}

/// What watchers the run has: one on every key, one on the first key, one on the prefix `k1`
/// (which also matches `k10`...).
pub fn selectors() -> Vec<Selector> {
    vec![
        Selector::Prefix(String::new()),
        Selector::Key("k0".into()),
        Selector::Prefix("k1".into()),
    ]
}

/// Runs watcher `watcher` (streaming with `streams`, else long-polling) until `stop` is set;
/// every answer goes to the recorder at once.
pub async fn watch_loop(
    watcher: u64,
    selector: Selector,
    streams: bool,
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
    let mut node = (rng.next_u64() % ctx.started_addrs().len() as u64) as usize;
    let mut position = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if streams {
            let log = WatcherSlot {
                shared: &ctx.shared,
                slot,
                watcher,
            };
            if !stream_once(&http, &ctx, &selector, node, &mut position, &log, &stop).await {
                node = (rng.next_u64() % ctx.started_addrs().len() as u64) as usize;
                env::sleep(Duration::from_millis(50 + rng.next_u64() % 200)).await;
            }
            continue;
        }
        let request = watch_request(
            &selector,
            &format!("watch&index={position}&wait={WATCH_WAIT_MS}ms"),
        );
        let timeout = ctx.call_timeout + Duration::from_millis(WATCH_WAIT_MS);
        let answer = match http
            .call(
                &ctx.started_addrs()[node],
                request,
                WATCH_RESPONSE_BYTES_MAX,
                timeout,
            )
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
                node = (rng.next_u64() % ctx.started_addrs().len() as u64) as usize;
                env::sleep(Duration::from_millis(50 + rng.next_u64() % 200)).await;
            }
        }
    }
}

/// A watch request for `selector` with the query parameters `query` (`watch&index=...`).
fn watch_request(selector: &Selector, query: &str) -> hyper::Request<Full<Bytes>> {
    let path = match selector {
        Selector::Key(key) => format!("/v1/kv/{key}?{query}"),
        Selector::Prefix(prefix) => format!("/v1/kv/?prefix={prefix}&{query}"),
    };
    hyper::Request::builder()
        .uri(path)
        .header(
            "authorization",
            crate::stranger::CLIENT_AUTHORIZATION_HEADER,
        )
        .body(Full::new(Bytes::new()))
        .expect("the simulator builds valid requests")
}

/// Where a watcher's answers go.
struct WatcherSlot<'a> {
    shared: &'a Shared,
    slot: usize,
    watcher: u64,
}

/// One stream on `node` from `*position`, every progress line recorded as an answer and
/// `*position` moved along. Returns `false` when the stream told nothing or broke (move to
/// another node), `true` when it ran its time or ended with compacted.
async fn stream_once(
    http: &HttpClient,
    ctx: &ClientContext,
    selector: &Selector,
    node: usize,
    position: &mut u64,
    log: &WatcherSlot<'_>,
    stop: &AtomicBool,
) -> bool {
    let request = watch_request(
        selector,
        &format!("watch&stream=true&index={position}&wait={WATCH_STREAM_WAIT_MS}ms"),
    );
    let opened = http
        .open_lines(
            &ctx.started_addrs()[node],
            request,
            WATCH_RESPONSE_BYTES_MAX,
            ctx.call_timeout,
        )
        .await;
    let mut lines = match opened {
        Ok((head, lines)) if head.status == 200 => lines,
        Ok((head, lines)) => {
            let Ok(body) = lines.collect().await else {
                return false;
            };
            return match parse(*position, head.status.as_u16(), &body) {
                Some(answer) => {
                    *position = match &answer {
                        Answer::Events { index, .. } => *index,
                        Answer::Compacted { oldest, .. } => *oldest,
                    };
                    record(log.shared, log.slot, log.watcher, answer);
                    true
                }
                None => false,
            };
        }
        Err(_) => return false,
    };
    // A stream sends a line at least at its start, every progress interval and at its end:
    // silence longer than its wait plus a call timeout is a cut link or a paused node.
    let silence_max = Duration::from_millis(WATCH_STREAM_WAIT_MS) + ctx.call_timeout;
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let line = match env::timeout(silence_max, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return true,
            Ok(Err(_)) | Err(_) => return false,
        };
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!(
                "a watch stream sent a line that is not JSON ({e}): {}",
                String::from_utf8_lossy(&line)
            )
        });
        let answer = match json["type"].as_str() {
            Some("progress") => Answer::Events {
                asked: *position,
                index: json["index"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a progress line without index: {json}")),
                events: std::mem::take(&mut pending),
            },
            Some("error") if json["code"] == "compacted" => Answer::Compacted {
                asked: *position,
                oldest: json["oldest_index"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a compacted line without oldest_index: {json}")),
            },
            _ => {
                pending.push(event_change(&json).unwrap_or_else(|| panic!("bad event {json}")));
                continue;
            }
        };
        let compacted = matches!(answer, Answer::Compacted { .. });
        *position = match &answer {
            Answer::Events { index, .. } => *index,
            Answer::Compacted { oldest, .. } => *oldest,
        };
        record(log.shared, log.slot, log.watcher, answer);
        if compacted {
            return true;
        }
    }
    true
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
