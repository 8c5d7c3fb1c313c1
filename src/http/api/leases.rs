//! `/v1/leases`: grant, look up, keep alive and revoke TTL leases (see `node::leases` for who
//! counts down and why a keepalive writes nothing to the log).
//!
//! | request                          | answer                                               |
//! |----------------------------------|------------------------------------------------------|
//! | `POST /v1/leases {"ttl_s": N}`   | 201 `{"id", "ttl_s", "index"}`                       |
//! | `GET /v1/leases/{id}`            | 200 `{"id", "ttl_s", "remaining_ms", "keys", "index"}` |
//! | `POST /v1/leases/{id}/keepalive` | 200 `{"id", "ttl_s", "remaining_ms"}`                |
//! | `DELETE /v1/leases/{id}`         | 200 `{"id", "keys_deleted", "index"}`                |
//!
//! An unknown (or expired, or revoked) lease is 404 `lease_not_found`.

use super::*;
use crate::node::LeaseView;

/// Largest body of a grant request.
const GRANT_BODY_BYTES_MAX: usize = 1024;

/// Routes `/v1/leases` and `/v1/leases/...`.
pub(super) async fn route<B>(state: &AppState, request: Request<B>, rest: &str) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(node) = state.node() else {
        return not_started(state);
    };
    let method = request.method().clone();
    let (id_text, action) = match rest.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (rest, None),
    };
    if id_text.is_empty() {
        if method != Method::POST {
            return method_not_allowed(&[Method::POST]);
        }
        return grant(state, node, request).await;
    }
    let Ok(lease_id) = id_text.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_lease_id",
            &format!("{id_text:?} is not a lease id (a decimal number)"),
        );
    };
    let (parts, _) = request.into_parts();
    let outcome = match (action, &method) {
        (None, &Method::GET) => show(node, &parts, lease_id).await,
        (None, &Method::DELETE) => revoke(&parts, node, lease_id).await,
        (None, _) => return method_not_allowed(&[Method::GET, Method::DELETE]),
        (Some("keepalive"), &Method::POST) => keepalive(node, lease_id).await,
        (Some("keepalive"), _) => return method_not_allowed(&[Method::POST]),
        (Some(other), _) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for /v1/leases/{lease_id}/{other}"),
            )
        }
    };
    relay(state, node, parts, Bytes::new(), outcome).await
}

async fn grant<B>(state: &AppState, node: &NodeHandle, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let body = match read_body(body, GRANT_BODY_BYTES_MAX, state.limits.body_read_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let ttl_min = node.config.lease_ttl_min();
    let ttl_max_s = crate::kv::LEASE_TTL_MS_MAX / 1000;
    let ttl_s = match serde_json::from_slice::<Json>(&body)
        .ok()
        .and_then(|json| json.get("ttl_s").and_then(Json::as_u64))
    {
        Some(ttl_s) if ttl_s >= ttl_min.as_secs() && ttl_s <= ttl_max_s => ttl_s,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_ttl",
                &format!(
                    "the body must be {{\"ttl_s\": N}} with N from {} (above the election \
                     timeout) to {ttl_max_s} seconds",
                    ttl_min.as_secs()
                ),
            )
        }
    };
    let idempotency_key = match idempotency_key(&parts) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let request = WriteRequest {
        idempotency_key,
        op: WriteOp::LeaseGrant {
            ttl_ms: ttl_s * 1000,
        },
    };
    let outcome = node
        .write(request)
        .await
        .map(|outcome| write_result_response(outcome.index, outcome.result));
    relay(state, node, parts, body, outcome).await
}

async fn show(
    node: &NodeHandle,
    parts: &hyper::http::request::Parts,
    lease_id: u64,
) -> Result<HttpResponse, NodeError> {
    let query = Query::parse(parts.uri.query());
    let consistency = match consistency(&query) {
        Ok(consistency) => consistency,
        Err(response) => return Ok(*response),
    };
    let outcome = node.read(ReadQuery::Lease(lease_id), consistency).await?;
    let response = match outcome.lease {
        Some(lease) => json_response(StatusCode::OK, lease_json(&lease, Some(outcome.index))),
        None => not_found(lease_id),
    };
    Ok(with_index(response, outcome.index))
}

async fn keepalive(node: &NodeHandle, lease_id: u64) -> Result<HttpResponse, NodeError> {
    Ok(match node.lease_keepalive(lease_id).await? {
        Some(lease) => json_response(StatusCode::OK, lease_json(&lease, None)),
        None => not_found(lease_id),
    })
}

async fn revoke(
    parts: &hyper::http::request::Parts,
    node: &NodeHandle,
    lease_id: u64,
) -> Result<HttpResponse, NodeError> {
    let idempotency_key = match idempotency_key(parts) {
        Ok(key) => key,
        Err(response) => return Ok(*response),
    };
    let request = WriteRequest {
        idempotency_key,
        op: WriteOp::LeaseRevoke { lease_id },
    };
    let outcome = node.write(request).await?;
    Ok(write_result_response(outcome.index, outcome.result))
}

fn lease_json(lease: &LeaseView, index: Option<u64>) -> Json {
    let mut body = json!({
        "id": lease.lease_id,
        "ttl_s": lease.ttl_ms / 1000,
        "remaining_ms": lease.remaining_ms,
        "keys": [],
    });
    // UTF-8 keys as strings; any other key in `keys_hex`, as the KV listing's `key_hex` does.
    for key in &lease.keys {
        match std::str::from_utf8(key) {
            Ok(key) => push_json(&mut body["keys"], json!(key)),
            Err(_) => push_json(&mut body["keys_hex"], json!(hex(key))),
        }
    }
    if let Some(index) = index {
        body["index"] = json!(index);
    }
    body
}

fn not_found(lease_id: u64) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "lease_not_found",
        &format!("lease {lease_id} does not exist (never granted, revoked or expired)"),
    )
}

/// The answer to a write whose result is about leases (grant, revoke, or a leased put that
/// named a missing lease or hit a limit).
pub(super) fn write_result_response(index: u64, result: WriteResult) -> HttpResponse {
    let response = match result {
        WriteResult::LeaseGranted { lease_id, ttl_ms } => json_response(
            StatusCode::CREATED,
            json!({"id": lease_id, "ttl_s": ttl_ms / 1000, "index": index}),
        ),
        WriteResult::LeaseEnded {
            lease_id,
            keys_deleted,
        } => json_response(
            StatusCode::OK,
            json!({"id": lease_id, "keys_deleted": keys_deleted, "index": index}),
        ),
        WriteResult::LeaseNotFound { lease_id } => not_found(lease_id),
        WriteResult::LeaseLimit { reason } => error(StatusCode::CONFLICT, "lease_limit", &reason),
        // The Idempotency-Key was first used by a write the quota refused: its result stands.
        WriteResult::QuotaExceeded { .. } => super::quota_exceeded(&result),
        other => {
            tracing::error!(?other, "a key write result reached the lease answers");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "unexpected write result",
            )
        }
    };
    with_index(response, index)
}

/// Appends `item` to the JSON array at `slot`, making the array if `slot` is null.
fn push_json(slot: &mut Json, item: Json) {
    if !slot.is_array() {
        *slot = json!([]);
    }
    if let Some(items) = slot.as_array_mut() {
        items.push(item);
    }
}
