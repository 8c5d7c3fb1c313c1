//! The membership API (issue 10): `GET/POST /v1/cluster/members`,
//! `POST /v1/cluster/members/{name}/promote`, `DELETE /v1/cluster/members/{name}`.
//!
//! Any node accepts a request; a follower forwards it to the leader as the KV API does. A
//! change is answered once it committed. Statuses: 200 done, 400 bad name/address/body,
//! 404 no such member, 409 another change in flight / already a member / learner not caught
//! up, 412 `?cas=` names another configuration, 503 + Retry-After without a leader (or while a
//! new leader has not committed in its term), 504 outcome unknown.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::api::{
    error, forward, json_response, method_not_allowed, not_started, read_body, retry_later,
    with_index, AppState, HttpResponse, Query, FORWARDED,
};
use crate::env;
use crate::node::members::{MembershipAnswer, MembershipError, MembershipOp};
use crate::node::NodeHandle;
use crate::raft::Role;

/// Largest body of `POST /v1/cluster/members`.
const ADD_BODY_BYTES_MAX: usize = 4096;
/// How often a leader that hands leadership over (to remove itself) checks for the new leader.
const HANDOFF_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// `POST /v1/cluster/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    name: String,
    addr: String,
    #[serde(default = "default_learner")]
    learner: bool,
    #[serde(default)]
    incarnation: u64,
}

fn default_learner() -> bool {
    true
}

/// Routes `/v1/cluster/members` and below (`path` starts with it).
pub(super) async fn route<B>(
    state: &AppState,
    path: &str,
    request: Request<B>,
) -> (&'static str, HttpResponse)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match answer(state, path, request).await {
        Ok(answer) | Err(answer) => answer,
    }
}

async fn answer<B>(
    state: &AppState,
    path: &str,
    request: Request<B>,
) -> Result<(&'static str, HttpResponse), (&'static str, HttpResponse)>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rest = path.strip_prefix("/v1/cluster/members").unwrap_or_default();
    if !(rest.is_empty() || rest.starts_with('/')) {
        let message = format!("no route for {path}");
        return Err(("other", error(StatusCode::NOT_FOUND, "not_found", &message)));
    }
    let method = request.method().clone();
    let (route, allowed): (&'static str, &[Method]) = match rest {
        "" | "/" => ("/v1/cluster/members", &[Method::GET, Method::POST]),
        _ if rest.ends_with("/promote") => ("/v1/cluster/members/{name}/promote", &[Method::POST]),
        _ => ("/v1/cluster/members/{name}", &[Method::DELETE]),
    };
    if !allowed.contains(&method) {
        return Err((route, method_not_allowed(allowed)));
    }
    let Some(node) = state.node() else {
        return Err((route, not_started(state)));
    };
    let name = rest
        .trim_start_matches('/')
        .trim_end_matches("/promote")
        .to_string();
    let cas = match Query::parse(request.uri().query()).get("cas") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(index) => Some(index),
            Err(_) => {
                let message = format!("cas must be a configuration index, not {text:?}");
                return Err((route, error(StatusCode::BAD_REQUEST, "bad_cas", &message)));
            }
        },
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, ADD_BODY_BYTES_MAX, state.limits.body_read_timeout).await {
        Ok(body) => body,
        Err(response) => return Err((route, response)),
    };
    let op = match (route, &method) {
        ("/v1/cluster/members", &Method::GET) => MembershipOp::List,
        ("/v1/cluster/members", _) => match serde_json::from_slice::<AddBody>(&body) {
            Ok(add) => MembershipOp::Add {
                name: add.name,
                addr: add.addr,
                learner: add.learner,
                incarnation: add.incarnation,
            },
            Err(e) => {
                let message = format!(
                    "body must be {{\"name\": .., \"addr\": \"host:port\", \"learner\": true}}: {e}"
                );
                return Err((route, error(StatusCode::BAD_REQUEST, "bad_body", &message)));
            }
        },
        ("/v1/cluster/members/{name}/promote", _) => MembershipOp::Promote { name },
        _ => MembershipOp::Remove { name },
    };
    if let MembershipOp::Promote { name } | MembershipOp::Remove { name } = &op {
        if let Err(message) = crate::node::config::validate_name(name) {
            return Err((route, error(StatusCode::BAD_REQUEST, "bad_name", &message)));
        }
    }
    let forwarded = parts.headers.contains_key(FORWARDED);
    let status = node.status();
    let result = match (status.leader, status.role) {
        // The leader knows match indexes and reachability: a follower forwards a listing too
        // (and without a leader answers from its own view).
        (Some(leader), role) if op == MembershipOp::List && role != Role::Leader => {
            Err(MembershipError::NotLeader {
                leader: Some(leader),
            })
        }
        _ => node.membership(op, cas).await,
    };
    let response = match result {
        Ok(MembershipAnswer::Listed(view)) => json_response(
            StatusCode::OK,
            serde_json::to_value(view).unwrap_or_default(),
        ),
        Ok(MembershipAnswer::Changed { index }) => with_index(
            json_response(StatusCode::OK, json!({"config_index": index})),
            index,
        ),
        Err(MembershipError::NotLeader {
            leader: Some(leader),
        }) if !forwarded => {
            forward(
                state,
                node,
                leader,
                method,
                &parts.uri,
                &parts.headers,
                body,
            )
            .await
        }
        // A forwarded removal of the leader is handed over once more, to the new leader (which
        // is not the member removed, so it never comes back here).
        Err(MembershipError::IsLeader) => remove_leader(state, node, &parts, body).await,
        Err(error) => error_response(&error),
    };
    Ok((route, response))
}

/// The leader is asked to remove itself: it hands leadership to another voter first, then
/// forwards the removal to the new leader (which may remove it safely: it no longer leads).
async fn remove_leader(
    state: &AppState,
    node: &NodeHandle,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> HttpResponse {
    if let Err(e) = node.transfer_leadership(None).await {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "handoff_refused",
            &format!("cannot hand leadership over before removing this node: {e}"),
        );
    }
    let deadline = env::now() + state.limits.forward_timeout;
    loop {
        let status = node.status();
        if let Some(leader) = status.leader.filter(|_| status.role != Role::Leader) {
            let response = forward(
                state,
                node,
                leader,
                parts.method.clone(),
                &parts.uri,
                &parts.headers,
                body.clone(),
            )
            .await;
            // A new leader takes changes only once its first entry committed (503 until then,
            // usually one round trip): retry within the deadline rather than hand that back.
            if response.status() != StatusCode::SERVICE_UNAVAILABLE || env::now() >= deadline {
                return response;
            }
        } else if env::now() >= deadline {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "handoff_pending",
                "leadership is being handed over before this node is removed; retry",
            );
        }
        env::sleep(HANDOFF_POLL_INTERVAL).await;
    }
}

fn error_response(e: &MembershipError) -> HttpResponse {
    let message = e.to_string();
    match e {
        MembershipError::NotLeader { .. } | MembershipError::IsLeader => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "no leader is known right now; retry shortly",
        ),
        MembershipError::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid", &message),
        MembershipError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_a_member", &message),
        MembershipError::InFlight => error(StatusCode::CONFLICT, "change_in_flight", &message),
        MembershipError::Conflict(_) => error(StatusCode::CONFLICT, "conflict", &message),
        MembershipError::NotCaughtUp { .. } => {
            error(StatusCode::CONFLICT, "not_caught_up", &message)
        }
        MembershipError::CasMismatch { .. } => {
            error(StatusCode::PRECONDITION_FAILED, "cas_mismatch", &message)
        }
        MembershipError::Unavailable(_) | MembershipError::Dropped => {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &message)
        }
        MembershipError::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "timeout", &message),
    }
}
