//! `GET /v1/kv/{key}?watch` and `GET /v1/kv/?prefix=p&watch`: the long poll over this node's
//! watch history (see `node::watch` for why any node may answer), and with `&stream=true` the
//! stream: newline-delimited JSON over one chunked response (README, *Watch*).

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use super::api::{error, hex, json_response, retry_later, with_index, HttpResponse, Query};
use super::body::ApiBody;
use crate::env;
use crate::kv::{ChangeKind, KeyChange};
use crate::node::watch::{
    Compacted, StreamLine, WatchError, WatchSelector, WATCH_STREAM_QUEUE_LINES,
};
use crate::node::NodeHandle;

/// How long a watch waits when the request names no `wait`.
pub const WATCH_WAIT_DEFAULT: Duration = Duration::from_secs(60);
/// The longest `wait` accepted (400 `bad_wait` beyond).
pub const WATCH_WAIT_MAX: Duration = Duration::from_secs(600);

/// Serves one long poll: the changes after `index=` to `key` (or to `prefix=` when `key` is
/// `None`), waiting up to `wait=` for the first.
pub(super) async fn watch(node: &NodeHandle, query: &Query, key: Option<Vec<u8>>) -> HttpResponse {
    let after_index = match query.get("index").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(index)) => index,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_index",
                "index must be a log index (a whole number, 0 or more)",
            )
        }
    };
    let wait = match query.get("wait").map(parse_wait) {
        None => WATCH_WAIT_DEFAULT,
        Some(Ok(wait)) => wait,
        Some(Err(message)) => return error(StatusCode::BAD_REQUEST, "bad_wait", &message),
    };
    let selector = match key {
        Some(key) => WatchSelector::Key(key),
        None => match query.get_bytes("prefix") {
            Ok(prefix) => WatchSelector::Prefix(prefix.unwrap_or_default()),
            Err(message) => return error(StatusCode::BAD_REQUEST, "bad_key", &message),
        },
    };
    let stream = match query.get("stream") {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_stream",
                "stream must be true or false",
            )
        }
    };
    if stream {
        // A stream lasts its `wait`, by default the cap: the client reconnects after.
        let duration = if query.get("wait").is_some() {
            wait
        } else {
            WATCH_WAIT_MAX
        };
        return watch_stream(node, after_index, selector, duration);
    }
    match node.watches.wait(after_index, &selector, wait).await {
        Ok(batch) => {
            let events: Vec<Json> = batch.events.iter().map(event_json).collect();
            with_index(
                json_response(
                    StatusCode::OK,
                    json!({"index": batch.index, "events": events}),
                ),
                batch.index,
            )
        }
        Err(e) => watch_error(node, e),
    }
}

/// Starts a stream of the changes after `after_index`: 410 or 503 as the long poll before it
/// starts, then 200 and one JSON object a line (see [`stream_line`]) until `duration` ends,
/// the client leaves, or the stream falls behind the history.
fn watch_stream(
    node: &NodeHandle,
    after_index: u64,
    selector: WatchSelector,
    duration: Duration,
) -> HttpResponse {
    if let Err(compacted) = node.watches.changes_after(after_index, &selector) {
        return watch_error(node, compacted.into());
    }
    let slot = match node.watches.take_stream_slot() {
        Ok(slot) => slot,
        Err(e) => return watch_error(node, e),
    };
    let (sink, lines) = mpsc::channel(WATCH_STREAM_QUEUE_LINES);
    let hub = node.watches.clone();
    let node = node.clone();
    env::spawn(async move {
        // A node whose driver stopped (shut down, removed, failed) applies nothing more: its
        // streams end, and their clients resume elsewhere from their last progress index.
        tokio::select! {
            biased; // deterministic in simulation
            () = hub.stream(slot, after_index, &selector, duration, &sink, stream_line) => {}
            () = node.wait_driver_stopped() => {}
        }
    });
    let mut response = Response::new(ApiBody::stream(lines));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    with_index(response, after_index)
}

/// One line of a stream: an event as the long poll shows it, `{"type":"progress","index":N}`,
/// or a last `{"type":"error","code":"compacted",..,"oldest_index":N}`.
fn stream_line(line: StreamLine<'_>) -> Bytes {
    let object = match line {
        StreamLine::Event(change) => event_json(change),
        StreamLine::Progress(index) => json!({"type": "progress", "index": index}),
        StreamLine::Compacted(compacted) => {
            let mut object = compacted_json(&compacted);
            object["type"] = json!("error");
            object
        }
    };
    let mut text = object.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn compacted_json(compacted: &Compacted) -> Json {
    json!({
        "error": compacted.to_string(),
        "code": "compacted",
        "oldest_index": compacted.oldest_index,
    })
}

fn watch_error(node: &NodeHandle, e: WatchError) -> HttpResponse {
    match e {
        WatchError::Compacted(compacted) => {
            let (_, applied_index) = node.watches.bounds();
            with_index(
                json_response(StatusCode::GONE, compacted_json(&compacted)),
                applied_index,
            )
        }
        WatchError::TooManyWatches { .. } => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watches",
            &e.to_string(),
        ),
    }
}

/// One change as the API shows it (README, *Watch*).
pub(super) fn event_json(change: &KeyChange) -> Json {
    let mut event = json!({"index": change.index});
    match std::str::from_utf8(&change.key) {
        Ok(key) => event["key"] = json!(key),
        Err(_) => event["key_hex"] = json!(hex(&change.key)),
    }
    match &change.kind {
        ChangeKind::Put {
            value,
            create_index,
        } => {
            event["type"] = json!("put");
            event["create_index"] = json!(create_index);
            match std::str::from_utf8(value) {
                Ok(text) => event["value"] = json!(text),
                Err(_) => event["value_hex"] = json!(hex(value)),
            }
        }
        ChangeKind::Delete => event["type"] = json!("delete"),
    }
    event
}

/// `30s`, `500ms`, `5m`, or a bare number of seconds; at most [`WATCH_WAIT_MAX`].
fn parse_wait(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "wait must be a number with ms, s or m (a bare number is seconds), at most {}s, not {text:?}",
            WATCH_WAIT_MAX.as_secs()
        )
    };
    let (digits, unit_ms) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, 1)
    } else if let Some(digits) = text.strip_suffix('s') {
        (digits, 1000)
    } else if let Some(digits) = text.strip_suffix('m') {
        (digits, 60_000)
    } else {
        (text, 1000)
    };
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let wait = Duration::from_millis(count.checked_mul(unit_ms).ok_or_else(bad)?);
    if wait > WATCH_WAIT_MAX {
        return Err(bad());
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn wait_accepts_units_and_refuses_garbage_and_waits_over_the_cap() {
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_wait("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        for bad in [
            "11m",
            "601s",
            "",
            "s",
            "-1s",
            "1h",
            "1.5s",
            "99999999999999999999m",
        ] {
            let error = parse_wait(bad).expect_err(bad);
            assert!(error.contains("wait must be"), "{bad}: {error}");
        }
    }

    #[test]
    fn events_show_utf8_as_text_and_other_bytes_as_hex() {
        let put = KeyChange {
            index: 12,
            key: Bytes::from_static(b"config/a"),
            kind: ChangeKind::Put {
                value: bytes::Bytes::from_static(b"v2"),
                create_index: 10,
            },
        };
        assert_eq!(
            event_json(&put),
            json!({"type": "put", "index": 12, "key": "config/a", "value": "v2", "create_index": 10})
        );
        let binary = KeyChange {
            index: 13,
            key: Bytes::from_static(&[0xfe, b'a']),
            kind: ChangeKind::Put {
                value: bytes::Bytes::from_static(&[0xff, 0x00]),
                create_index: 13,
            },
        };
        assert_eq!(event_json(&binary)["value_hex"], json!("ff00"));
        assert_eq!(event_json(&binary)["key_hex"], json!("fe61"));
        assert_eq!(event_json(&binary).get("key"), None);
        let delete = KeyChange {
            index: 14,
            key: Bytes::from_static(b"config/a"),
            kind: ChangeKind::Delete,
        };
        assert_eq!(
            event_json(&delete),
            json!({"type": "delete", "index": 14, "key": "config/a"})
        );
    }
}
