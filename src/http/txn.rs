//! `POST /v1/txn`: compares and two operation lists, applied atomically in one log entry (see
//! `kv::txn`). The JSON shape is in the README (*Transactions*).

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::api::{
    error, hex, idempotency_key_of, json_response, not_started, read_body, relay, with_index,
    AppState, HttpResponse,
};
use crate::kv::{
    Compare, CompareTarget, Txn, TxnOp, TxnOpResult, WriteRequest, WriteResult, TXN_BYTES_MAX,
};

/// Largest `/v1/txn` body: the byte limit of its keys and values, spelled as hex, plus room for
/// the JSON around them.
pub const TXN_BODY_BYTES_MAX: usize = 2 * TXN_BYTES_MAX + (1 << 20);

/// A key or value as JSON carries it: UTF-8 text, or hex for any bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyJson {
    key: Option<String>,
    key_hex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnJson {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<OpJson>,
    #[serde(default)]
    failure: Vec<OpJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: Option<String>,
    key_hex: Option<String>,
    value: Option<String>,
    value_hex: Option<String>,
    mod_index: Option<u64>,
    create_index: Option<u64>,
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum OpJson {
    Put {
        key: Option<String>,
        key_hex: Option<String>,
        value: Option<String>,
        value_hex: Option<String>,
    },
    Delete(KeyJson),
    Get(KeyJson),
}

/// Parses a `/v1/txn` body into a request (the limits are checked by the caller, with the
/// store's own rules).
pub(super) fn parse(body: &[u8], idempotency_key: Option<String>) -> Result<WriteRequest, String> {
    let parsed: TxnJson =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a transaction: {e}"))?;
    let compares = parsed
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let ops = |list: Vec<OpJson>| list.into_iter().map(op).collect::<Result<Vec<_>, String>>();
    Ok(WriteRequest {
        idempotency_key,
        op: crate::kv::WriteOp::Txn(Txn {
            compares,
            success: ops(parsed.success)?,
            failure: ops(parsed.failure)?,
        }),
    })
}

fn compare(json: CompareJson) -> Result<Compare, String> {
    let key = bytes_of("key", json.key, json.key_hex)?;
    let value = match (json.value, json.value_hex) {
        (None, None) => None,
        (text, hex_text) => Some(Bytes::from(bytes_of("value", text, hex_text)?)),
    };
    let targets = [
        value.map(CompareTarget::Value),
        json.mod_index.map(CompareTarget::ModIndex),
        json.create_index.map(CompareTarget::CreateIndex),
        json.exists.map(CompareTarget::Exists),
    ];
    let mut named = targets.into_iter().flatten();
    match (named.next(), named.next()) {
        (Some(target), None) => Ok(Compare { key, target }),
        _ => Err(
            "each compare names one of value/value_hex, mod_index, create_index or exists".into(),
        ),
    }
}

fn op(json: OpJson) -> Result<TxnOp, String> {
    Ok(match json {
        OpJson::Put {
            key,
            key_hex,
            value,
            value_hex,
        } => TxnOp::Put {
            key: bytes_of("key", key, key_hex)?,
            value: Bytes::from(bytes_of("value", value, value_hex)?),
        },
        OpJson::Delete(key) => TxnOp::Delete {
            key: bytes_of("key", key.key, key.key_hex)?,
        },
        OpJson::Get(key) => TxnOp::Get {
            key: bytes_of("key", key.key, key.key_hex)?,
        },
    })
}

/// Exactly one of `name` (text) and `name_hex`.
fn bytes_of(name: &str, text: Option<String>, hex_text: Option<String>) -> Result<Vec<u8>, String> {
    match (text, hex_text) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(hex_text)) => unhex(&hex_text).ok_or_else(|| format!("{name}_hex is not hex")),
        _ => Err(format!("give exactly one of {name} and {name}_hex")),
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Serves `POST /v1/txn`: parses and checks the transaction, proposes it (forwarding to the
/// leader from a follower) and answers its result.
pub(super) async fn handle<B>(state: &AppState, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(node) = state.node() else {
        return not_started(state);
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, TXN_BODY_BYTES_MAX, state.limits.body_read_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let idempotency_key = match idempotency_key_of(&parts.headers) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let request = match parse(&body, idempotency_key) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_txn", &message),
    };
    if let Err(e) = request.validate() {
        return error(StatusCode::BAD_REQUEST, "invalid_txn", &e.to_string());
    }
    let outcome = node
        .write(request)
        .await
        .map(|outcome| response(outcome.index, &outcome.result));
    relay(state, node, parts, body, outcome).await
}

/// The answer to an applied transaction: `200` with whether it succeeded and each result.
pub(super) fn response(index: u64, result: &WriteResult) -> HttpResponse {
    if let WriteResult::QuotaExceeded { .. } = result {
        return with_index(super::api::quota_exceeded(result), index);
    }
    let WriteResult::Txn { succeeded, results } = result else {
        // The Idempotency-Key was first used by another kind of write: its first result stands.
        return with_index(
            error(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was first used by a write that is not a transaction",
            ),
            index,
        );
    };
    let results: Vec<Json> = results.iter().map(result_json).collect();
    with_index(
        json_response(
            StatusCode::OK,
            json!({"index": index, "succeeded": succeeded, "results": results}),
        ),
        index,
    )
}

fn result_json(result: &TxnOpResult) -> Json {
    match result {
        TxnOpResult::Put { mod_index, created } => {
            json!({"put": {"mod_index": mod_index, "created": created}})
        }
        TxnOpResult::Deleted { existed } => json!({"delete": {"deleted": existed}}),
        TxnOpResult::Get { value: None } => json!({"get": null}),
        TxnOpResult::GetTooLarge {
            mod_index,
            create_index,
            value_bytes,
        } => json!({"get": {
            "mod_index": mod_index,
            "create_index": create_index,
            "value_bytes": value_bytes,
            "truncated": true,
        }}),
        TxnOpResult::Get { value: Some(value) } => {
            let mut found =
                json!({"mod_index": value.mod_index, "create_index": value.create_index});
            match std::str::from_utf8(&value.data) {
                Ok(text) => found["value"] = json!(text),
                Err(_) => found["value_hex"] = json!(hex(&value.data)),
            }
            json!({ "get": found })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::WriteOp;

    #[test]
    fn a_transaction_parses_text_and_hex_keys_and_every_compare_kind() {
        let body = br#"{
            "compare": [
                {"key": "a", "mod_index": 3},
                {"key_hex": "ff00", "exists": false},
                {"key": "b", "value": "x"},
                {"key": "c", "create_index": 0}
            ],
            "success": [{"put": {"key": "a", "value_hex": "fe"}}, {"get": {"key": "a"}}],
            "failure": [{"delete": {"key_hex": "ff00"}}]
        }"#;
        let request = parse(body, Some("t1".into())).unwrap();
        assert_eq!(request.idempotency_key.as_deref(), Some("t1"));
        let WriteOp::Txn(txn) = request.op else {
            panic!("not a txn")
        };
        assert_eq!(
            txn.compares[1],
            Compare {
                key: vec![0xff, 0x00],
                target: CompareTarget::Exists(false)
            }
        );
        assert_eq!(
            txn.compares[2].target,
            CompareTarget::Value(Bytes::from("x"))
        );
        assert_eq!(
            txn.success[0],
            TxnOp::Put {
                key: b"a".to_vec(),
                value: Bytes::from_static(&[0xfe])
            }
        );
        assert_eq!(
            txn.failure,
            [TxnOp::Delete {
                key: vec![0xff, 0x00]
            }]
        );
    }

    #[test]
    fn malformed_transactions_are_refused_with_a_reason() {
        for (body, reason) in [
            (&br#"{"compare": [{"key": "a"}]}"#[..], "names one of"),
            (
                br#"{"compare": [{"key": "a", "mod_index": 1, "exists": true}]}"#,
                "names one of",
            ),
            (
                br#"{"success": [{"put": {"key": "a"}}]}"#,
                "exactly one of value",
            ),
            (
                br#"{"success": [{"get": {"key": "a", "key_hex": "61"}}]}"#,
                "exactly one of key",
            ),
            (br#"{"success": [{"get": {"key_hex": "6"}}]}"#, "not hex"),
            (br#"{"success": [{"get": {"key_hex": "zz"}}]}"#, "not hex"),
            (
                br#"{"success": [{"rename": {"key": "a"}}]}"#,
                "not a transaction",
            ),
            (br#"{"sucess": []}"#, "not a transaction"),
            (b"[1, 2]", "not a transaction"),
        ] {
            let error = parse(body, None)
                .err()
                .unwrap_or_else(|| panic!("accepted {}", String::from_utf8_lossy(body)));
            assert!(error.contains(reason), "{error}");
        }
    }
}
