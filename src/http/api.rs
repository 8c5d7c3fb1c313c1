//! Request routing and handlers. `handle` takes any request and always returns a response: bad
//! input gets a 4xx with a JSON body, never a panic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::auth::{ClientAuth, Denied};
use super::body::ApiBody;
use super::rate_limit::{retry_after_seconds, RateLimitOptions, RateLimiter};
use super::RemoteAddr;
mod leases;

use super::client::HttpClient;
use crate::env;
use crate::env::tls::ClientIdentity;
use crate::kv::{WriteOp, WriteRequest, WriteResult};
use crate::metrics::{Counter, Histogram, Metrics, LATENCY_BUCKETS_SECONDS};
use crate::node::cluster::Hello;
use crate::node::{peer_auth, rpc};
use crate::node::{Consistency, NodeError, NodeHandle, ReadOutcome, ReadQuery, ValueView};
use crate::raft::NodeId;

/// Marks a request a follower forwarded to the leader, so it is never forwarded twice.
pub(super) const FORWARDED: &str = "x-raft-kv-forwarded";
/// The log index a response reflects.
const RAFT_INDEX: &str = "x-raft-index";
/// A key's modification index.
const MOD_INDEX: &str = "x-mod-index";
/// A key's creation index.
const CREATE_INDEX: &str = "x-create-index";
/// The client's idempotency key for a write.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key accepted.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Default and largest page of a prefix listing.
const LIST_LIMIT_DEFAULT: usize = 1000;
const LIST_LIMIT_MAX: usize = 10_000;

/// Request limits enforced by the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest key in bytes.
    pub key_bytes_max: usize,
    /// Largest value in bytes.
    pub value_bytes_max: usize,
    /// Largest Raft RPC body.
    pub rpc_body_bytes_max: usize,
    /// Largest header block.
    pub header_bytes_max: usize,
    /// How long reading a body may take.
    pub body_read_timeout: Duration,
    /// How long a forwarded call may take.
    pub forward_timeout: Duration,
}

/// What every handler can reach. The node handle is set once the node has started; until then
/// only `/v1/raft/hello`, `/health` and `/metrics` answer.
pub struct AppState {
    /// This node's name.
    pub name: String,
    /// This node's id.
    pub id: NodeId,
    /// Limits on requests.
    pub limits: HttpLimits,
    /// This node's incarnation, once its data directory has one (0 before).
    incarnation: std::sync::atomic::AtomicU64,
    node: OnceLock<NodeHandle>,
    client: HttpClient,
    metrics: Arc<Metrics>,
    /// `http_request_duration_seconds` by route and status, looked up in the registry once:
    /// a registry lookup validates, allocates and sorts the labels, on every request otherwise.
    /// Bounded by the static routes times the status codes the handlers answer.
    request_durations: Mutex<BTreeMap<(&'static str, u16), Histogram>>,
    /// Client tokens and roles (`None`: every client may do everything).
    auth: Option<Arc<ClientAuth>>,
    /// Peer TLS is on: peer RPCs need a connection whose certificate chains to the peer CA.
    peer_tls: bool,
    /// The per-client request rate limit and `raft_kv_rate_limited_total` (`None`: no limit).
    rate_limit: Option<(RateLimiter, Counter)>,
}

impl AppState {
    /// State for a node that has not started yet.
    pub fn new(name: String, id: NodeId, limits: HttpLimits, client: HttpClient) -> AppState {
        AppState {
            name,
            id,
            limits,
            incarnation: std::sync::atomic::AtomicU64::new(0),
            node: OnceLock::new(),
            client,
            metrics: Arc::new(Metrics::new()),
            request_durations: Mutex::new(BTreeMap::new()),
            auth: None,
            peer_tls: false,
            rate_limit: None,
        }
    }

    /// The same state with peer TLS on: `POST /v1/raft/messages` and `/v1/raft/snapshot` answer
    /// only connections that showed a peer certificate (401 without one, 403 with another).
    pub fn with_peer_tls(mut self) -> AppState {
        self.peer_tls = true;
        self
    }

    /// Records this node's incarnation, for hello answers.
    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation
            .store(incarnation, std::sync::atomic::Ordering::Relaxed);
    }

    /// The same state with client authentication on.
    pub fn with_auth(mut self, auth: Arc<ClientAuth>) -> AppState {
        self.auth = Some(auth);
        self
    }

    /// The same state with a per-client request rate limit.
    pub fn with_rate_limit(mut self, options: RateLimitOptions) -> AppState {
        let refused = self.metrics.counter(
            "raft_kv_rate_limited_total",
            "Requests refused with 429 by the per-client rate limit.",
            &[],
        );
        self.rate_limit = Some((RateLimiter::new(options), refused));
        self
    }

    fn request_duration(&self, route: &'static str, status: StatusCode) -> Histogram {
        let mut cache = self
            .request_durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache
            .entry((route, status.as_u16()))
            .or_insert_with(|| {
                self.metrics.histogram(
                    "http_request_duration_seconds",
                    "Latency of HTTP requests by route.",
                    &[
                        ("route", route.to_string()),
                        ("status", status.as_u16().to_string()),
                    ],
                    LATENCY_BUCKETS_SECONDS,
                )
            })
            .clone()
    }

    /// Attaches the running node.
    pub fn set_node(&self, node: NodeHandle) {
        let _ = self.node.set(node);
    }

    /// The running node, if started.
    pub fn node(&self) -> Option<&NodeHandle> {
        self.node.get()
    }
}

pub(super) type HttpResponse = Response<ApiBody>;

/// Handles one request. Generic over the body so tests and fuzzers can call it in process.
pub async fn handle<B>(state: &AppState, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = env::now();
    let (route, response) = route(state, request).await;
    let seconds = env::now().duration_since(started).as_secs_f64();
    state
        .request_duration(route, response.status())
        .observe(seconds);
    response
}

async fn route<B>(state: &AppState, request: Request<B>) -> (&'static str, HttpResponse)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if state.peer_tls && (path == "/v1/raft/messages" || path == "/v1/raft/snapshot") {
        if let Some(refused) = peer_certificate_refusal(request.extensions().get()) {
            return ("denied", refused);
        }
    }
    if let Some(auth) = &state.auth {
        let authorization = request.headers().get(hyper::header::AUTHORIZATION);
        if let Err(denied) = auth.check(&path, &method, authorization) {
            return ("denied", denied_response(&denied));
        }
    }
    if let Some(refused) = rate_limited(state, &request, &path) {
        return ("rate-limited", refused);
    }
    match path.as_str() {
        "/health" => ("/health", only(&method, &[Method::GET], || health(state))),
        "/metrics" => ("/metrics", only(&method, &[Method::GET], || metrics(state))),
        "/v1/raft/hello" => (
            "/v1/raft/hello",
            only(&method, &[Method::GET], || {
                hello(state, request.uri().query())
            }),
        ),
        "/v1/cluster" => (
            "/v1/cluster",
            only(&method, &[Method::GET], || cluster(state)),
        ),
        "/v1/raft/messages" => {
            if method != Method::POST {
                return ("/v1/raft/messages", method_not_allowed(&[Method::POST]));
            }
            ("/v1/raft/messages", raft_messages(state, request).await)
        }
        "/v1/state-hash" => {
            if method != Method::GET {
                return ("/v1/state-hash", method_not_allowed(&[Method::GET]));
            }
            ("/v1/state-hash", state_hash(state).await)
        }
        "/v1/raft/snapshot" => {
            if method != Method::POST {
                return ("/v1/raft/snapshot", method_not_allowed(&[Method::POST]));
            }
            (
                "/v1/raft/snapshot",
                raft_snapshot_chunk(state, request).await,
            )
        }
        "/v1/cluster/transfer-leader" => {
            if method != Method::POST {
                return (
                    "/v1/cluster/transfer-leader",
                    method_not_allowed(&[Method::POST]),
                );
            }
            (
                "/v1/cluster/transfer-leader",
                transfer_leader(state, request).await,
            )
        }
        _ if path.starts_with("/v1/cluster/members") => {
            super::members::route(state, &path, request).await
        }
        "/v1/txn" => {
            if method != Method::POST {
                return ("/v1/txn", method_not_allowed(&[Method::POST]));
            }
            ("/v1/txn", super::txn::handle(state, request).await)
        }
        "/v1/kv" | "/v1/kv/" => {
            if method != Method::GET {
                return ("/v1/kv/", method_not_allowed(&[Method::GET]));
            }
            ("/v1/kv/", kv(state, request, None).await)
        }
        "/v1/leases" => ("/v1/leases", leases::route(state, request, "").await),
        _ if path.starts_with("/v1/leases/") => {
            let rest = &path["/v1/leases/".len()..];
            ("/v1/leases/{id}", leases::route(state, request, rest).await)
        }
        _ => match path.strip_prefix("/v1/kv/") {
            Some(raw_key) => {
                let key = match percent_decode(raw_key) {
                    Ok(key) => key,
                    Err(message) => {
                        return (
                            "/v1/kv/{key}",
                            error(StatusCode::BAD_REQUEST, "bad_key", &message),
                        )
                    }
                };
                ("/v1/kv/{key}", kv(state, request, Some(key)).await)
            }
            None => (
                "other",
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no route for {path}"),
                ),
            ),
        },
    }
}

fn only(
    method: &Method,
    allowed: &[Method],
    handler: impl FnOnce() -> HttpResponse,
) -> HttpResponse {
    if allowed.contains(method) {
        handler()
    } else {
        method_not_allowed(allowed)
    }
}

pub(super) fn method_not_allowed(allowed: &[Method]) -> HttpResponse {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("allowed methods: {}", list.join(", ")),
    );
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        response.headers_mut().insert(hyper::header::ALLOW, value);
    }
    response
}

fn health(state: &AppState) -> HttpResponse {
    let Some(node) = state.node() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting", "code": "starting", "error": "the node is starting", "node": state.name}),
        );
    };
    let status = node.status();
    let leader = status.leader.map(|id| member_name(node, id));
    let mut body = json!({
        "node": state.name,
        "role": status.role.as_str(),
        "term": status.term,
        "leader": leader,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_index": status.last_index,
    });
    let code = if let Some(reason) = node.directory.removal() {
        body["status"] = json!("removed");
        body["code"] = json!("removed");
        body["error"] = json!(reason);
        StatusCode::GONE
    } else if let Some(failure) = &status.failure {
        body["status"] = json!("failed");
        body["code"] = json!("failed");
        body["error"] = json!(format!("the node stopped serving: {failure}"));
        StatusCode::SERVICE_UNAVAILABLE
    } else if status.leader.is_none() {
        body["status"] = json!("no_leader");
        body["code"] = json!("no_leader");
        body["error"] = json!("no leader is known right now");
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        body["status"] = json!("ok");
        StatusCode::OK
    };
    json_response(code, body)
}

/// This node's state machine fingerprint: the applied index and the hash of every key and
/// idempotency record at it (replicas at one index have one hash). O(store) to compute.
async fn state_hash(state: &AppState) -> HttpResponse {
    let Some(node) = state.node() else {
        return not_started(state);
    };
    // Hashed here, on a copy, never in the driver: the node keeps answering heartbeats.
    match node.state_view().await {
        Ok(store) => json_response(
            StatusCode::OK,
            json!({
                "node": state.name,
                "applied_index": store.applied_index(),
                "state_hash": format!("{:016x}", store.state_hash()),
            }),
        ),
        Err(e) => node_error_response(&e),
    }
}

fn metrics(state: &AppState) -> HttpResponse {
    let mut text = state.metrics.render();
    if let Some(node) = state.node() {
        // The driver publishes `raft_kv_healthy`; once it is gone nobody would lower it.
        if node.driver_stopped() {
            node.metrics.healthy.set(0);
        }
        node.metrics
            .watches_waiting
            .set(node.watches.watches_waiting() as i64);
        text.push_str(&node.metrics.registry.render());
    }
    let mut response = Response::new(ApiBody::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn hello(state: &AppState, query: Option<&str>) -> HttpResponse {
    let asker = Query::parse(query).get("name").map(str::to_string);
    let hello = Hello {
        name: state.name.clone(),
        id: state.id,
        incarnation: state.incarnation.load(std::sync::atomic::Ordering::Relaxed),
        asker_incarnation: asker.and_then(|name| {
            let member = state.node()?.directory.member_by_name(&name)?;
            Some(member.incarnation)
        }),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_value(hello).unwrap_or(Json::Null),
    )
}

fn cluster(state: &AppState) -> HttpResponse {
    let Some(node) = state.node() else {
        return not_started(state);
    };
    let status = node.status();
    let members: Vec<Json> = node
        .directory
        .members()
        .iter()
        .map(|m| json!({"name": m.name, "id": format!("{:x}", m.id), "addr": m.addr, "is_leader": Some(m.id) == status.leader}))
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "cluster_id": format!("{:x}", node.cluster.cluster_id),
            "leader": status.leader.map(|id| member_name(node, id)),
            "term": status.term,
            "members": members,
        }),
    )
}

/// Why a connection may not carry peer RPCs under peer TLS (see `env::tls`), or `None`.
fn peer_certificate_refusal(identity: Option<&ClientIdentity>) -> Option<HttpResponse> {
    match identity.copied().unwrap_or(ClientIdentity::Anonymous) {
        ClientIdentity::Peer => None,
        ClientIdentity::Anonymous => Some(error(
            StatusCode::UNAUTHORIZED,
            "peer_unauthenticated",
            "peer rpc without a peer certificate; peer TLS is on",
        )),
        ClientIdentity::Client => Some(error(
            StatusCode::FORBIDDEN,
            "peer_forbidden",
            "peer rpc with a certificate that does not chain to the peer CA",
        )),
    }
}

/// The started node and the body of a peer RPC, or the response that refuses it.
async fn read_rpc_body<B>(
    state: &AppState,
    request: Request<B>,
) -> Result<(&NodeHandle, Bytes), HttpResponse>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(node) = state.node() else {
        return Err(not_started(state));
    };
    let path = request.uri().path().to_string();
    let mac = request.headers().get(peer_auth::PEER_MAC_HEADER).cloned();
    let body = read_body(
        request.into_body(),
        state.limits.rpc_body_bytes_max,
        state.limits.body_read_timeout,
    )
    .await?;
    // Before decoding: a stranger's bytes never reach the decoder or the core.
    if let Some(secret) = &node.config.peer_secret {
        if !crate::plants::active(crate::plants::Plant::SkipPeerAuth) {
            if let Err(e) = secret.verify(&path, &body, mac.as_ref()) {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "peer_unauthenticated",
                    &e.to_string(),
                ));
            }
        }
    }
    Ok((node, body))
}

/// The answer to a peer RPC that failed its checks.
fn rpc_error_response(e: &rpc::RpcError) -> HttpResponse {
    match e {
        rpc::RpcError::Removed { .. } => error(
            StatusCode::GONE,
            "removed",
            "this sender was removed from the cluster; it must stop",
        ),
        rpc::RpcError::OtherIncarnation { .. } => error(
            StatusCode::FORBIDDEN,
            "other_incarnation",
            "the configuration names this member with another incarnation (its data directory \
             was replaced): remove the member, then join again with an empty data directory",
        ),
        rpc::RpcError::Stranger { .. }
        | rpc::RpcError::WrongCluster { .. }
        | rpc::RpcError::NotMember(_) => error(
            StatusCode::FORBIDDEN,
            "not_member",
            "raft rpc from outside this cluster refused",
        ),
        rpc::RpcError::TooLarge { .. } => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &e.to_string())
        }
        rpc::RpcError::Malformed(_) => error(StatusCode::BAD_REQUEST, "bad_rpc", &e.to_string()),
    }
}

async fn raft_messages<B>(state: &AppState, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Where the sender says it is reached (see `Directory::note_stranger_route`); read
    // before the body consumes the request.
    let sender_addr = request
        .headers()
        .get(peer_auth::PEER_ADDR_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| crate::node::config::validate_addr(text).ok());
    let (node, body) = match read_rpc_body(state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let cluster = &node.cluster;
    match rpc::decode(
        &body,
        state.limits.rpc_body_bytes_max,
        cluster.cluster_id,
        cluster.self_id,
        |id, incarnation| node.directory.standing(id, incarnation),
    ) {
        Ok((envelope, standing)) => {
            // A sender this node's configurations do not name under its incarnation (a member
            // added, or joined again, after this node's log ends) was heard for its leader's
            // traffic only (see `rpc::decode`): 202, not 204. A stranger is answered where it
            // says it is.
            let status = if standing == rpc::Standing::Member {
                StatusCode::NO_CONTENT
            } else {
                if let (rpc::Standing::Stranger, Some(addr)) = (standing, sender_addr) {
                    node.directory.note_stranger_route(envelope.from, addr);
                }
                StatusCode::ACCEPTED
            };
            match node.deliver(envelope.messages) {
                Ok(()) => Response::builder()
                    .status(status)
                    .body(ApiBody::full(Bytes::new()))
                    .expect("a static response is valid"),
                Err(e) => node_error_response(&e),
            }
        }
        Err(e) => rpc_error_response(&e),
    }
}

/// One chunk of a snapshot file a leader streams (see `node::rpc` for the body); answers the
/// next offset this node expects, or why it stops the transfer.
async fn raft_snapshot_chunk<B>(state: &AppState, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (node, body) = match read_rpc_body(state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let cluster = &node.cluster;
    match rpc::decode_chunk(
        &body,
        state.limits.rpc_body_bytes_max,
        cluster.cluster_id,
        cluster.self_id,
        |id, incarnation| node.directory.standing(id, incarnation),
    ) {
        Ok((header, start)) => match node
            .deliver_snapshot_chunk(header, body.slice(start..))
            .await
        {
            Ok(answer) => Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(ApiBody::full(rpc::encode_answer(&answer)))
                .expect("a static response is valid"),
            Err(e) => node_error_response(&e),
        },
        Err(e) => rpc_error_response(&e),
    }
}

async fn transfer_leader<B>(state: &AppState, request: Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(node) = state.node() else {
        return not_started(state);
    };
    let query = Query::parse(request.uri().query());
    let to = match query.get("to") {
        None => None,
        Some(name) => match node.directory.member_by_name(name) {
            Some(member) => Some(member.id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unknown_member",
                    &format!("no member named {name:?}"),
                )
            }
        },
    };
    match node.transfer_leadership(to).await {
        Ok(()) => json_response(StatusCode::ACCEPTED, json!({"status": "transferring"})),
        Err(NodeError::NotLeader {
            leader: Some(leader),
        }) if !request.headers().contains_key(FORWARDED) => {
            forward(
                state,
                node,
                leader,
                request.method().clone(),
                request.uri(),
                request.headers(),
                Bytes::new(),
            )
            .await
        }
        Err(e) => node_error_response(&e),
    }
}

async fn kv<B>(state: &AppState, request: Request<B>, key: Option<Vec<u8>>) -> HttpResponse
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(node) = state.node() else {
        return not_started(state);
    };
    let query = Query::parse(request.uri().query());
    if let Some(key) = &key {
        if key.len() > state.limits.key_bytes_max {
            return error(
                StatusCode::BAD_REQUEST,
                "key_too_long",
                &format!(
                    "key of {} bytes is over the limit of {}",
                    key.len(),
                    state.limits.key_bytes_max
                ),
            );
        }
    }
    if request.method() == Method::GET && query.get("watch").is_some() {
        return super::watch::watch(node, &query, key).await;
    }
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let body = if method == Method::PUT {
        match read_body(
            body,
            state.limits.value_bytes_max,
            state.limits.body_read_timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(response) => return response,
        }
    } else {
        Bytes::new()
    };
    let outcome = match (&method, key) {
        (&Method::GET, Some(key)) => read(node, &query, ReadQuery::Get(key)).await,
        (&Method::GET, None) => {
            let limit = match query.get("limit").map(str::parse::<usize>) {
                None => LIST_LIMIT_DEFAULT,
                Some(Ok(limit)) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_limit",
                        &format!("limit must be a number from 1 to {LIST_LIMIT_MAX}"),
                    )
                }
            };
            let (prefix, after) = match (query.get_bytes("prefix"), query.get_bytes("after")) {
                (Ok(prefix), Ok(after)) => (prefix.unwrap_or_default(), after),
                (Err(message), _) | (_, Err(message)) => {
                    return error(StatusCode::BAD_REQUEST, "bad_key", &message)
                }
            };
            let list = ReadQuery::List {
                prefix,
                after,
                limit,
            };
            read(node, &query, list).await
        }
        (&Method::PUT | &Method::DELETE, Some(key)) => {
            write(state, &parts, &query, key, body.clone(), node).await
        }
        (&Method::PUT | &Method::DELETE, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing_key",
                "PUT and DELETE need a key: /v1/kv/{key}",
            )
        }
        _ => return method_not_allowed(&[Method::GET, Method::PUT, Method::DELETE]),
    };
    relay(state, node, parts, body, outcome).await
}

/// The response, or the request forwarded to the leader when this node does not lead (once:
/// a forwarded request is never forwarded again).
pub(super) async fn relay(
    state: &AppState,
    node: &NodeHandle,
    parts: hyper::http::request::Parts,
    body: Bytes,
    outcome: Result<HttpResponse, NodeError>,
) -> HttpResponse {
    match outcome {
        Ok(response) => response,
        Err(NodeError::NotLeader {
            leader: Some(leader),
        }) if !parts.headers.contains_key(FORWARDED) => {
            forward(
                state,
                node,
                leader,
                parts.method,
                &parts.uri,
                &parts.headers,
                body,
            )
            .await
        }
        Err(e) => node_error_response(&e),
    }
}

async fn read(
    node: &NodeHandle,
    query: &Query,
    read_query: ReadQuery,
) -> Result<HttpResponse, NodeError> {
    let consistency = match consistency(query) {
        Ok(consistency) => consistency,
        Err(response) => return Ok(*response),
    };
    let is_get = matches!(read_query, ReadQuery::Get(_));
    let key = match &read_query {
        ReadQuery::Get(key) => String::from_utf8_lossy(key).into_owned(),
        ReadQuery::List { .. } | ReadQuery::Lease(_) => String::new(),
    };
    let ReadOutcome {
        index,
        values,
        more,
        ..
    } = node.read(read_query, consistency).await?;
    if is_get {
        return Ok(match values.into_iter().next() {
            Some(value) => {
                let mut response = Response::new(ApiBody::full(value.data.clone()));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(RAFT_INDEX, HeaderValue::from(index));
                headers.insert(MOD_INDEX, HeaderValue::from(value.mod_index));
                headers.insert(CREATE_INDEX, HeaderValue::from(value.create_index));
                response
            }
            None => with_index(
                error(
                    StatusCode::NOT_FOUND,
                    "key_not_found",
                    &format!("key {key:?} not found"),
                ),
                index,
            ),
        });
    }
    let keys: Vec<Json> = values.iter().map(value_json).collect();
    Ok(with_index(
        json_response(
            StatusCode::OK,
            json!({"index": index, "keys": keys, "more": more}),
        ),
        index,
    ))
}

fn value_json(value: &ValueView) -> Json {
    let mut entry = json!({"mod_index": value.mod_index, "create_index": value.create_index});
    match std::str::from_utf8(&value.key) {
        Ok(key) => entry["key"] = json!(key),
        Err(_) => entry["key_hex"] = json!(hex(&value.key)),
    }
    match std::str::from_utf8(&value.data) {
        Ok(text) => entry["value"] = json!(text),
        Err(_) => entry["value_hex"] = json!(hex(&value.data)),
    }
    entry
}

async fn write(
    _state: &AppState,
    parts: &hyper::http::request::Parts,
    query: &Query,
    key: Vec<u8>,
    body: Bytes,
    node: &NodeHandle,
) -> Result<HttpResponse, NodeError> {
    let idempotency_key = match idempotency_key(parts) {
        Ok(key) => key,
        Err(response) => return Ok(*response),
    };
    let cas = match query.get("cas").map(str::parse::<u64>) {
        None => None,
        Some(Ok(index)) => Some(index),
        Some(Err(_)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "bad_cas",
                "cas must be a modification index (0: create only)",
            ))
        }
    };
    let lease = match query.get("lease").map(str::parse::<u64>) {
        None => None,
        Some(Ok(lease_id)) if parts.method == Method::PUT => Some(lease_id),
        Some(_) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "bad_lease",
                "lease must be a lease id, and only on PUT",
            ))
        }
    };
    let op = match (parts.method == Method::PUT, cas) {
        (true, expected_mod_index) if lease.is_some() => WriteOp::PutLeased {
            key,
            value: body,
            lease_id: lease.unwrap_or_default(),
            expected_mod_index,
        },
        (true, None) => WriteOp::Put { key, value: body },
        (true, Some(expected_mod_index)) => WriteOp::Cas {
            key,
            expected_mod_index,
            value: body,
        },
        (false, None) => WriteOp::Delete { key },
        (false, Some(expected_mod_index)) => WriteOp::CasDelete {
            key,
            expected_mod_index,
        },
    };
    let request = WriteRequest {
        idempotency_key,
        op,
    };
    if let Err(e) = request.validate() {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_write",
            &e.to_string(),
        ));
    }
    let outcome = node.write(request).await?;
    let index = outcome.index;
    let response = match outcome.result {
        WriteResult::Put { mod_index, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(
                code,
                json!({"index": index, "mod_index": mod_index, "created": created}),
            )
        }
        WriteResult::Deleted { existed } => {
            json_response(StatusCode::OK, json!({"index": index, "deleted": existed}))
        }
        WriteResult::CasOk { mod_index } => json_response(
            StatusCode::OK,
            json!({"index": index, "mod_index": mod_index}),
        ),
        // The Idempotency-Key was first used by a transaction: its first result stands.
        WriteResult::Txn { .. } => return Ok(super::txn::response(index, &outcome.result)),
        WriteResult::CasMismatch { current_mod_index } => json_response(
            StatusCode::CONFLICT,
            json!({
                "error": "compare failed: the key's modification index differs",
                "code": "cas_mismatch",
                "index": index,
                "current_mod_index": current_mod_index,
            }),
        ),
        WriteResult::QuotaExceeded { .. } => quota_exceeded(&outcome.result),
        lease_result => return Ok(leases::write_result_response(index, lease_result)),
    };
    Ok(with_index(response, index))
}

/// `507 Insufficient Storage` for a write the store refused at apply because it would have
/// grown past the quota stamped into it (`--quota-bytes`): a definite "not applied".
pub(super) fn quota_exceeded(result: &WriteResult) -> HttpResponse {
    let &WriteResult::QuotaExceeded {
        quota_bytes,
        store_bytes,
        store_bytes_after,
    } = result
    else {
        unreachable!("quota_exceeded answers only WriteResult::QuotaExceeded");
    };
    json_response(
        StatusCode::INSUFFICIENT_STORAGE,
        json!({
            "error": format!(
                "quota exceeded: the write would grow the store from {store_bytes} to \
                 {store_bytes_after} bytes, past the quota of {quota_bytes}; \
                 delete keys or revoke leases to free space"
            ),
            "code": "quota_exceeded",
            "quota_bytes": quota_bytes,
            "store_bytes": store_bytes,
            "store_bytes_after": store_bytes_after,
        }),
    )
}

/// The `429` for a request over its client's rate limit, or `None` to serve it. Open routes
/// (`/health`, `/metrics`) and peer RPCs (`/v1/raft/...`) are never limited, nor a request a
/// member forwarded (it was counted where the client sent it).
fn rate_limited<B>(state: &AppState, request: &Request<B>, path: &str) -> Option<HttpResponse> {
    let (limiter, refused) = state.rate_limit.as_ref()?;
    if matches!(path, "/health" | "/metrics") || path.starts_with("/v1/raft/") {
        return None;
    }
    let remote = request.extensions().get::<RemoteAddr>().map(|addr| addr.0);
    if forwarded_by_member(state, request, remote) {
        return None;
    }
    let authorization = request.headers().get(hyper::header::AUTHORIZATION);
    let client = match state
        .auth
        .as_ref()
        .and_then(|auth| auth.holder(authorization))
    {
        Some(holder) => format!("token {holder}"),
        None => match remote {
            Some(remote) => format!("address {}", remote.ip()),
            None => "address unknown".to_string(),
        },
    };
    // Planted bug (simulation only): every client counted in one bucket.
    let client = if crate::plants::active(crate::plants::Plant::RateLimitSharedBucket) {
        "everyone".to_string()
    } else {
        client
    };
    let wait = limiter.check(&client, env::now()).err()?;
    refused.inc();
    let options = limiter.options();
    let retry_after = retry_after_seconds(wait);
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "error": format!(
                "rate limit: {client} may send {} requests per second (bursts of {}); retry in {} ms",
                options.requests_per_second,
                options.burst,
                wait.as_millis()
            ),
            "code": "rate_limited",
            "retry_after_ms": wait.as_millis() as u64,
        }),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    Some(response)
}

/// Whether `request` carries the forwarding header of a member and comes from that member's
/// address (members' addresses must be IP literals for this; a host name never matches).
fn forwarded_by_member<B>(
    state: &AppState,
    request: &Request<B>,
    remote: Option<std::net::SocketAddr>,
) -> bool {
    let (Some(remote), Some(node)) = (remote, state.node()) else {
        return false;
    };
    let Some(name) = request
        .headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    node.member(crate::node::config::node_id_of(name))
        .and_then(|member| member.addr.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|addr| addr.ip() == remote.ip())
}

/// The read consistency a query asks for (`consistency=linearizable|stale`).
fn consistency(query: &Query) -> Result<Consistency, Box<HttpResponse>> {
    match query.get("consistency") {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_consistency",
            &format!("consistency must be linearizable or stale, not {other:?}"),
        ))),
    }
}

/// The request's `Idempotency-Key`, or the response refusing a malformed one.
fn idempotency_key(
    parts: &hyper::http::request::Parts,
) -> Result<Option<String>, Box<HttpResponse>> {
    idempotency_key_of(&parts.headers)
}

/// The request's `Idempotency-Key`, or the 400 that refuses it (boxed: a response is large).
pub(super) fn idempotency_key_of(
    headers: &hyper::HeaderMap,
) -> Result<Option<String>, Box<HttpResponse>> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(text) if !text.is_empty() && text.len() <= IDEMPOTENCY_KEY_BYTES_MAX => {
                Ok(Some(text.to_string()))
            }
            _ => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                &format!(
                    "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
                ),
            ))),
        },
    }
}

/// Relays a request to the leader and its answer back.
pub(super) async fn forward(
    state: &AppState,
    node: &NodeHandle,
    leader: NodeId,
    method: Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let Some(member) = node.member(leader) else {
        return node_error_response(&NodeError::NotLeader { leader: None });
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(FORWARDED, state.name.as_str());
    // The caller's token travels along: the leader checks it again (same token file).
    for name in [
        CONTENT_TYPE.as_str(),
        IDEMPOTENCY_KEY,
        hyper::header::AUTHORIZATION.as_str(),
    ] {
        if let Some(value) = headers.get(name) {
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(Full::new(body)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request cannot be forwarded",
        );
    };
    let body_limit = state.limits.value_bytes_max.saturating_mul(2).max(16 << 20);
    match state
        .client
        .call(
            &member.addr,
            request,
            body_limit,
            state.limits.forward_timeout,
        )
        .await
    {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let mut relayed = Response::new(ApiBody::full(body));
            *relayed.status_mut() = parts.status;
            for (name, value) in parts.headers.iter() {
                let keep = [
                    CONTENT_TYPE.as_str(),
                    RAFT_INDEX,
                    MOD_INDEX,
                    CREATE_INDEX,
                    RETRY_AFTER.as_str(),
                ];
                if keep.contains(&name.as_str()) {
                    relayed.headers_mut().insert(name.clone(), value.clone());
                }
            }
            relayed
        }
        // The request may have reached the leader: its outcome is unknown.
        Err(super::client::ClientError::Timeout { .. })
        | Err(super::client::ClientError::Http { .. }) => node_error_response(&NodeError::Timeout),
        // Never sent: the client may retry safely.
        Err(e @ super::client::ClientError::Connect { .. }) => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_unreachable",
            &format!("cannot reach the leader {}: {e}", member.name),
        ),
    }
}

pub(super) async fn read_body<B>(
    body: B,
    bytes_max: usize,
    timeout: Duration,
) -> Result<Bytes, HttpResponse>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(declared) = body.size_hint().exact() {
        if declared > bytes_max as u64 {
            return Err(too_large(declared, bytes_max));
        }
    }
    match env::timeout(timeout, Limited::new(body, bytes_max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large(bytes_max as u64 + 1, bytes_max))
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    &format!("cannot read the request body: {e}"),
                ))
            }
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            &format!("the request body did not arrive within {timeout:?}"),
        )),
    }
}

fn too_large(size: u64, limit: usize) -> HttpResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("body of {size} bytes (at least) is over the limit of {limit} bytes"),
    )
}

fn node_error_response(e: &NodeError) -> HttpResponse {
    let (code, name, retry) = match e {
        NodeError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader", true),
        NodeError::Dropped => (StatusCode::SERVICE_UNAVAILABLE, "dropped", true),
        NodeError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout", false),
        NodeError::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", false),
        NodeError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", true),
        NodeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", true),
        NodeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid", false),
    };
    let message = match e {
        NodeError::NotLeader { .. } => "no leader is known right now; retry shortly".to_string(),
        other => other.to_string(),
    };
    if retry {
        retry_later(code, name, &message)
    } else {
        error(code, name, &message)
    }
}

fn denied_response(denied: &Denied) -> HttpResponse {
    match denied {
        Denied::Unauthenticated(message) => {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthenticated", message);
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            response
        }
        Denied::Forbidden { name, role, needed } => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "token {name:?} has role {}; this request needs {}",
                role.as_str(),
                needed.as_str()
            ),
        ),
    }
}

pub(super) fn not_started(state: &AppState) -> HttpResponse {
    retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        &format!("node {} is starting (waiting for its peers)", state.name),
    )
}

/// An error the client may retry after a second.
pub(super) fn retry_later(code: StatusCode, name: &str, message: &str) -> HttpResponse {
    let mut response = error(code, name, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn member_name(node: &NodeHandle, id: NodeId) -> String {
    node.member(id)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| format!("{id:x}"))
}

pub(super) fn with_index(mut response: HttpResponse, index: u64) -> HttpResponse {
    response.headers_mut().insert(
        HeaderName::from_static(RAFT_INDEX),
        HeaderValue::from(index),
    );
    response
}

pub(super) fn json_response(code: StatusCode, body: Json) -> HttpResponse {
    let mut response = Response::new(ApiBody::full(body.to_string()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn error(code: StatusCode, name: &str, message: &str) -> HttpResponse {
    json_response(code, json!({"error": message, "code": name}))
}

/// Bytes as lowercase hex, for the `_hex` fields of keys and values that are not UTF-8.
pub(super) use crate::hex::encode as hex;

/// Decodes `%XX` escapes into bytes (any bytes: keys need not be UTF-8).
fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits (`from_str_radix` alone would accept a sign, as in `%+f`).
            let digits = bytes
                .get(i + 1..i + 3)
                .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
                .and_then(|d| std::str::from_utf8(d).ok());
            match digits.and_then(|d| u8::from_str_radix(d, 16).ok()) {
                Some(byte) => out.push(byte),
                None => return Err(format!("bad percent escape at byte {i}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A parsed query string (first value wins): each value as text (lossy where it is not UTF-8)
/// and its decoded bytes, or why its escapes do not decode.
pub(super) struct Query(Vec<(String, String, Result<Vec<u8>, String>)>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Query {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| percent_decode(&s.replace('+', " "));
            let text = |s: &str| match decode(s) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(_) => s.to_string(),
            };
            pairs.push((text(name), text(value), decode(value)));
        }
        Query(pairs)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
    }

    /// The value of `name` as bytes (for keys and prefixes, which may be any bytes); an error
    /// when its percent escapes do not decode.
    pub(super) fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match self.0.iter().find(|(n, _, _)| n == name) {
            None => Ok(None),
            Some((_, _, Ok(bytes))) => Ok(Some(bytes.clone())),
            Some((_, _, Err(message))) => Err(format!("{name}: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeConfig, NodeStatus, DRIVER_STOPPED};
    use crate::raft::Role;

    fn app_state() -> AppState {
        let limits = HttpLimits {
            key_bytes_max: 1024,
            value_bytes_max: 1024,
            rpc_body_bytes_max: 1024,
            header_bytes_max: 1024,
            body_read_timeout: Duration::from_secs(1),
            forward_timeout: Duration::from_secs(1),
        };
        AppState::new("n1".into(), 1, limits, HttpClient::new())
    }

    #[test]
    fn health_never_answers_200_for_a_node_whose_driver_is_gone() {
        let state = app_state();
        // The last status the driver published says: a healthy leader.
        let last_published = NodeStatus {
            role: Role::Leader,
            term: 3,
            leader: Some(1),
            commit_index: 7,
            applied_index: 7,
            last_index: 7,
            failure: None,
        };
        let config = NodeConfig::new("n1", "127.0.0.1:1");
        state.set_node(NodeHandle::with_driver_gone(config, last_published));
        let response = health(&state);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body();
        let bytes = full_body_bytes(body);
        let json: Json = serde_json::from_slice(&bytes).expect("a JSON body");
        assert_eq!(json["status"], "failed", "{json}");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains(DRIVER_STOPPED)),
            "{json}"
        );
    }

    #[test]
    fn metrics_report_unhealthy_once_the_driver_is_gone() {
        let state = app_state();
        let config = NodeConfig::new("n1", "127.0.0.1:1");
        let last_published = NodeStatus {
            role: Role::Leader,
            term: 3,
            leader: Some(1),
            commit_index: 7,
            applied_index: 7,
            last_index: 7,
            failure: None,
        };
        let node = NodeHandle::with_driver_gone(config, last_published);
        // The last value the driver published said healthy.
        node.metrics.healthy.set(1);
        state.set_node(node);
        let text = full_body_bytes(metrics(&state).into_body());
        let text = String::from_utf8_lossy(&text);
        let healthy = text
            .lines()
            .find(|line| line.starts_with("raft_kv_healthy "))
            .unwrap_or_else(|| panic!("no raft_kv_healthy line in:\n{text}"));
        assert_eq!(healthy.split_whitespace().last(), Some("0"), "{text}");
    }

    /// The bytes of a complete in-memory body, polled once without a runtime (the test also
    /// runs under `--cfg madsim`, where tokio's current-thread runtime does not exist).
    fn full_body_bytes(body: ApiBody) -> Bytes {
        use hyper::body::Body as _;
        let mut body = std::pin::pin!(body);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match body.as_mut().poll_frame(&mut context) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            std::task::Poll::Ready(None) => Bytes::new(),
            other => panic!("an in-memory body is ready at once: {other:?}"),
        }
    }

    #[test]
    fn percent_decoding_handles_escapes_and_refuses_bad_ones() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Ok(&b"a/b c"[..]));
        assert_eq!(
            percent_decode("plain/key").as_deref(),
            Ok(&b"plain/key"[..])
        );
        assert_eq!(percent_decode("%ff%00x").as_deref(), Ok(&b"\xff\x00x"[..]));
        assert!(percent_decode("bad%2").is_err());
        assert!(percent_decode("bad%zz").is_err());
        assert!(percent_decode("%+f").is_err());
    }

    #[test]
    fn query_strings_parse_first_value_wins() {
        let query = Query::parse(Some("prefix=a%2Fb&limit=5&prefix=x&flag&after=%fe&bad=%zz"));
        assert_eq!(query.get("prefix"), Some("a/b"));
        assert_eq!(query.get_bytes("after"), Ok(Some(vec![0xfe])));
        assert!(query.get_bytes("bad").is_err());
        assert_eq!(query.get_bytes("missing"), Ok(None));
        assert_eq!(query.get("limit"), Some("5"));
        assert_eq!(query.get("flag"), Some(""));
        assert_eq!(query.get("missing"), None);
    }
}
