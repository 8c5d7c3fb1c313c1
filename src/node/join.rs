//! `--join ADDR`: a node with an empty data directory joins a running cluster. It reads the
//! configuration from any member (`GET /v1/cluster/members`, forwarded to the leader), asks to
//! be added as a learner with a fresh incarnation, writes `cluster.json`, and once running
//! asks to be promoted until its log is close enough to the leader's. A restart with data finds
//! `cluster.json` and never joins again.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::json;

use super::cluster::{ClusterError, ClusterInfo, Member};
use super::config::{node_id_of, NodeConfig};
use super::members::MembersView;
use crate::env;
use crate::http::client::HttpClient;

/// Pause between attempts while the cluster is busy (no leader, another change in flight, the
/// learner not caught up yet).
const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Attempts at each step of joining before the node gives up and exits with the last answer.
const JOIN_ATTEMPTS_MAX: u32 = 240;
/// Largest answer read from the cluster while joining.
const JOIN_ANSWER_BYTES_MAX: usize = 1 << 20;

/// Joins the cluster at `join_addr`: returns the `cluster.json` to save.
pub(super) async fn join(
    config: &NodeConfig,
    client: &HttpClient,
    join_addr: &str,
    incarnation: u64,
) -> Result<ClusterInfo, ClusterError> {
    let failed = |reason: String| ClusterError::Join {
        addr: join_addr.to_string(),
        reason,
    };
    let mut last_answer = String::from("no answer");
    for attempt in 0..JOIN_ATTEMPTS_MAX {
        if attempt > 0 {
            env::sleep(JOIN_RETRY_INTERVAL).await;
        }
        let view = match members(client, join_addr, config).await {
            Ok(view) => view,
            // No token, or one without the role (`--join-token`): retrying cannot help.
            Err(answer) if answer.starts_with("401") || answer.starts_with("403") => {
                return Err(failed(answer));
            }
            Err(answer) => {
                last_answer = answer;
                continue;
            }
        };
        if let Some(me) = view.members.iter().find(|m| m.name == config.name) {
            if me.incarnation != incarnation {
                return Err(ClusterError::AlreadyMember {
                    name: config.name.clone(),
                });
            }
            // An earlier attempt of ours committed: we are in.
            return cluster_info(config, &view).map_err(failed);
        }
        let body = json!({
            "name": config.name,
            "addr": config.listen_addr,
            "learner": true,
            "incarnation": incarnation,
        });
        let answer = call(
            client,
            join_addr,
            config.join_token.as_deref(),
            hyper::Method::POST,
            "/v1/cluster/members",
            Bytes::from(body.to_string()),
            config.request_timeout + config.rpc_timeout,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, _)) => {
                tracing::info!(node = %config.name, via = join_addr, "added as a learner");
                // Read the configuration again: it now holds this node's record.
                last_answer = "added; reading the configuration".into();
            }
            // Bad name or address, one already taken, or no admin token (`--join-token`):
            // retrying cannot help.
            Ok((status, body))
                if status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNAUTHORIZED
                    || status == StatusCode::FORBIDDEN
                    || (status == StatusCode::CONFLICT && body.contains("\"conflict\"")) =>
            {
                return Err(failed(format!("{status}: {body}")));
            }
            Ok((status, body)) => last_answer = format!("{status}: {body}"),
            Err(error) => last_answer = error,
        }
    }
    Err(failed(format!(
        "gave up after {JOIN_ATTEMPTS_MAX} attempts; last answer: {last_answer}"
    )))
}

/// Asks, through `join_addr`, to promote this node until it is a voter (or no longer a
/// member). Runs in the background once the node started.
pub async fn promote_when_caught_up(config: &NodeConfig, client: &HttpClient, join_addr: &str) {
    let path = format!("/v1/cluster/members/{}/promote", config.name);
    let mut attempts: u64 = 0;
    loop {
        let answer = call(
            client,
            join_addr,
            config.join_token.as_deref(),
            hyper::Method::POST,
            &path,
            Bytes::new(),
            config.request_timeout + config.rpc_timeout,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, _)) => {
                tracing::info!(node = %config.name, "promoted to voter");
                return;
            }
            Ok((StatusCode::CONFLICT, body)) if body.contains("already a voter") => return,
            Ok((status, body))
                if status == StatusCode::NOT_FOUND
                    || status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNAUTHORIZED
                    || status == StatusCode::FORBIDDEN =>
            {
                tracing::error!(node = %config.name, %status, %body, "promotion refused");
                return;
            }
            Ok((status, body)) => {
                if attempts % 20 == 0 {
                    tracing::info!(node = %config.name, %status, %body, "waiting to be promoted");
                }
            }
            Err(error) => {
                if attempts % 20 == 0 {
                    tracing::info!(node = %config.name, %error, "waiting to be promoted");
                }
            }
        }
        attempts += 1;
        env::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// The configuration as the cluster at `addr` shows it.
async fn members(
    client: &HttpClient,
    addr: &str,
    config: &NodeConfig,
) -> Result<MembersView, String> {
    match call(
        client,
        addr,
        config.join_token.as_deref(),
        hyper::Method::GET,
        "/v1/cluster/members",
        Bytes::new(),
        config.rpc_timeout,
    )
    .await
    {
        Ok((StatusCode::OK, body)) => {
            serde_json::from_str(&body).map_err(|e| format!("cannot read the member list: {e}"))
        }
        Ok((status, body)) => Err(format!("{status}: {body}")),
        Err(error) => Err(error),
    }
}

async fn call(
    client: &HttpClient,
    addr: &str,
    token: Option<&str>,
    method: hyper::Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, String), String> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = client
        .call(addr, request, JOIN_ANSWER_BYTES_MAX, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        response.status(),
        String::from_utf8_lossy(response.body()).into_owned(),
    ))
}

/// The `cluster.json` of a node that joined: the cluster's id and its current members (the
/// log soon brings the configuration itself).
fn cluster_info(config: &NodeConfig, view: &MembersView) -> Result<ClusterInfo, String> {
    let cluster_id = u64::from_str_radix(&view.cluster_id, 16)
        .map_err(|e| format!("bad cluster id {:?}: {e}", view.cluster_id))?;
    let mut members: Vec<Member> = view
        .members
        .iter()
        .filter(|m| m.role == "voter" || m.name == config.name)
        .map(|m| Member {
            name: m.name.clone(),
            id: node_id_of(&m.name),
            addr: m.addr.clone(),
            incarnation: m.incarnation,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    Ok(ClusterInfo {
        cluster_id,
        self_id: node_id_of(&config.name),
        members,
        joined: true,
    })
}
