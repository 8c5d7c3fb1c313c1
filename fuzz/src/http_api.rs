//! Target `http_api`: arbitrary method, path, query, headers and body into the node's request
//! handler, in process.
//!
//! Two nodes serve the requests: a real single-node cluster (WAL on a temporary directory, its
//! driver on a one-worker tokio runtime, so writes commit and reads answer) and a node that has
//! not started (it knows no cluster yet). Checked for every request:
//! - `handle` answers, never panics, never answers 500;
//! - every error (4xx/5xx) is a JSON object with string `error` and `code` (a 503 from
//!   `/health` is its report, with a string `status`); a 405 names the allowed methods;
//! - a successful write is visible: after a 2xx `PUT /v1/kv/{key}` without an idempotency key, a
//!   linearizable `GET` of the same path returns exactly the body written; after a 2xx `DELETE`
//!   it answers 404;
//! - the started node's driver is still alive after every input.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, StatusCode};
use raft_kv::http::client::HttpClient;
use raft_kv::http::{self, AppState, HttpLimits};
use raft_kv::node::config::node_id_of;
use raft_kv::node::rpc::{self, RpcEnvelope};
use raft_kv::node::{self, InspectScope, NodeConfig};
use raft_kv::raft::Role;

use super::messages::FuzzMessage;

/// Requests in one input, at most.
pub const REQUESTS_PER_INPUT_MAX: usize = 8;
/// The HTTP limits of both nodes: small, so that short inputs reach every limit.
pub fn limits() -> HttpLimits {
    HttpLimits {
        key_bytes_max: 128,
        value_bytes_max: 512,
        rpc_body_bytes_max: 1024,
        header_bytes_max: 16 << 10,
        body_read_timeout: Duration::from_secs(2),
        forward_timeout: Duration::from_secs(2),
    }
}

/// One fuzz input: a few requests, in order.
#[derive(Arbitrary, Debug)]
pub struct HttpInput {
    /// The requests.
    pub requests: Vec<RequestSpec>,
}

/// Which node answers.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChoice {
    /// The running single-node cluster.
    Started,
    /// The node that has not started.
    Starting,
}

/// One request.
#[derive(Arbitrary, Debug)]
pub struct RequestSpec {
    /// The node that answers.
    pub node: NodeChoice,
    /// The method.
    pub method: MethodChoice,
    /// The path.
    pub path: PathChoice,
    /// The query string.
    pub query: QueryChoice,
    /// Extra headers.
    pub headers: Vec<HeaderSpec>,
    /// The body.
    pub body: BodySpec,
}

/// The request method.
#[derive(Arbitrary, Debug)]
pub enum MethodChoice {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// POST.
    Post,
    /// HEAD.
    Head,
    /// PATCH.
    Patch,
    /// OPTIONS.
    Options,
    /// Any token.
    Custom(String),
}

/// The request path.
#[derive(Arbitrary, Debug)]
pub enum PathChoice {
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/v1/raft/hello`.
    Hello,
    /// `/v1/cluster`.
    Cluster,
    /// `/v1/cluster/transfer-leader`.
    TransferLeader,
    /// `/v1/raft/messages`.
    RaftMessages,
    /// `/v1/kv` or `/v1/kv/`.
    KvList(bool),
    /// `/v1/kv/` and the key's bytes, percent-encoded where a URI needs it.
    Key(Vec<u8>),
    /// `/v1/kv/` and the text as it is (bad escapes included).
    RawKey(String),
    /// Any path.
    Raw(String),
}

/// The query string.
#[derive(Arbitrary, Debug)]
pub enum QueryChoice {
    /// None.
    None,
    /// Known and unknown parameters.
    Pairs(Vec<(QueryName, QueryValue)>),
    /// Any text.
    Raw(String),
}

/// A query parameter name.
#[derive(Arbitrary, Debug)]
pub enum QueryName {
    /// `cas`.
    Cas,
    /// `consistency`.
    Consistency,
    /// `prefix`.
    Prefix,
    /// `after`.
    After,
    /// `limit`.
    Limit,
    /// `to`.
    To,
    /// Anything else.
    Other(String),
}

/// A query parameter value.
#[derive(Arbitrary, Debug)]
pub enum QueryValue {
    /// A number.
    Number(u64),
    /// A small number.
    Small(u8),
    /// `stale`.
    Stale,
    /// `linearizable`.
    Linearizable,
    /// Any text.
    Text(String),
}

/// One extra header.
#[derive(Arbitrary, Debug)]
pub struct HeaderSpec {
    /// Its name.
    pub name: HeaderChoice,
    /// Its value's bytes.
    pub value: Vec<u8>,
}

/// A header name.
#[derive(Arbitrary, Debug)]
pub enum HeaderChoice {
    /// `idempotency-key`.
    IdempotencyKey,
    /// `x-raft-kv-forwarded`.
    Forwarded,
    /// `content-type`.
    ContentType,
    /// Anything.
    Other(String),
}

/// The body, delivered in chunks.
#[derive(Arbitrary, Debug)]
pub enum BodySpec {
    /// Chunks of bytes; optionally a transport error after them, optionally an exact size
    /// declared up front (which may lie).
    Chunks {
        /// The chunks.
        chunks: Vec<Vec<u8>>,
        /// Fail after the chunks.
        error_at_end: bool,
        /// The declared exact size.
        declared_bytes: Option<u32>,
    },
    /// A well-formed Raft envelope for the node's own cluster carrying forged messages.
    Envelope {
        /// Claim to come from the node itself (the only member) rather than a stranger.
        from_self: bool,
        /// The messages.
        messages: Vec<FuzzMessage>,
    },
}

/// The two nodes and the runtime they live on, built once per process.
struct World {
    runtime: tokio::runtime::Runtime,
    started: Arc<AppState>,
    starting: Arc<AppState>,
    /// Kept so the directory lives as long as the process.
    _data_dir: tempfile::TempDir,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(build_world)
}

fn build_world() -> World {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime for the http_api target");
    let data_dir = tempfile::tempdir().expect("a temporary directory for the http_api node");
    let name = "fuzz1";
    let mut config = NodeConfig::new(name, "127.0.0.1:1");
    config.data_dir = data_dir.path().join(name);
    config.election_ticks = 10;
    config.heartbeat_ticks = 2;
    config.snapshot_entries = 1000;
    config.request_timeout = Duration::from_secs(5);
    let started = Arc::new(AppState::new(
        name.to_string(),
        node_id_of(name),
        limits(),
        HttpClient::new(),
    ));
    let handle = runtime
        .block_on(node::start(config, HttpClient::new()))
        .unwrap_or_else(|e| panic!("the http_api single-node cluster did not start: {e}"));
    started.set_node(handle.clone());
    // A single node elects itself within two election timeouts; wait for it.
    let leading = runtime.block_on(async {
        for _ in 0..1000 {
            if handle.status().role == Role::Leader {
                return true;
            }
            raft_kv::env::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    assert!(
        leading,
        "the http_api single node did not become leader within 10 s: {:?}",
        handle.status()
    );
    let starting = Arc::new(AppState::new(
        "fuzz2".to_string(),
        node_id_of("fuzz2"),
        limits(),
        HttpClient::new(),
    ));
    World {
        runtime,
        started,
        starting,
        _data_dir: data_dir,
    }
}

/// Runs one input; panics when a property above does not hold.
pub fn run(data: &[u8]) {
    let Ok(input) = HttpInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let world = world();
    world.runtime.block_on(async {
        for spec in input.requests.iter().take(REQUESTS_PER_INPUT_MAX) {
            run_request(world, spec).await;
        }
        let node = world.started.node().expect("the started node has a handle");
        if let Err(e) = node.inspect(InspectScope::STATUS_ONLY).await {
            panic!("the node's driver stopped answering after this input: {e}");
        }
    });
}

async fn run_request(world: &World, spec: &RequestSpec) {
    let state = match spec.node {
        NodeChoice::Started => &world.started,
        NodeChoice::Starting => &world.starting,
    };
    let method = match &spec.method {
        MethodChoice::Get => Method::GET,
        MethodChoice::Put => Method::PUT,
        MethodChoice::Delete => Method::DELETE,
        MethodChoice::Post => Method::POST,
        MethodChoice::Head => Method::HEAD,
        MethodChoice::Patch => Method::PATCH,
        MethodChoice::Options => Method::OPTIONS,
        MethodChoice::Custom(token) => match Method::from_bytes(token.as_bytes()) {
            Ok(method) => method,
            Err(_) => return,
        },
    };
    let path = path_text(&spec.path);
    let uri = match query_text(&spec.query) {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    let mut builder = Request::builder().method(method.clone()).uri(uri.as_str());
    let mut has_idempotency_key = false;
    for header in &spec.headers {
        let name = match &header.name {
            HeaderChoice::IdempotencyKey => {
                has_idempotency_key = true;
                "idempotency-key"
            }
            HeaderChoice::Forwarded => "x-raft-kv-forwarded",
            HeaderChoice::ContentType => "content-type",
            HeaderChoice::Other(name) => name.as_str(),
        };
        builder = builder.header(name, header.value.as_slice());
    }
    let body = scripted_body(&spec.body, state);
    let written = body.all_bytes();
    let declared_bytes = body.hint.exact();
    // A request hyper could not have parsed off the wire never reaches the handler.
    let Ok(request) = builder.body(body) else {
        return;
    };
    let request_uri = request.uri().clone();
    let response = http::handle(state, request).await;
    let status = response.status();
    let allow = response.headers().get(hyper::header::ALLOW).cloned();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e: Infallible| match e {})
        .to_bytes();
    check_response(&method, &uri, status, allow.is_some(), &body);

    let is_key_route =
        request_uri.path().starts_with("/v1/kv/") && request_uri.path().len() > "/v1/kv/".len();
    let body_was_whole = matches!(
        &spec.body,
        BodySpec::Chunks {
            error_at_end: false,
            ..
        }
    ) && declared_bytes
        .is_none_or(|declared| declared == written.len() as u64);
    if spec.node == NodeChoice::Started
        && status.is_success()
        && is_key_route
        && !has_idempotency_key
    {
        if method == Method::PUT && body_was_whole {
            let (read_status, value) = get(state, request_uri.path()).await;
            assert_eq!(
                read_status,
                StatusCode::OK,
                "PUT {uri} answered {status}, but a GET after it answered {read_status}"
            );
            assert_eq!(
                value, written,
                "PUT {uri} answered {status}, but a GET after it returned another value"
            );
        } else if method == Method::DELETE {
            let (read_status, _) = get(state, request_uri.path()).await;
            assert_eq!(
                read_status,
                StatusCode::NOT_FOUND,
                "DELETE {uri} answered {status}, but a GET after it answered {read_status}"
            );
        }
    }
}

/// A linearizable read of `path` on `state`: the status and the body.
async fn get(state: &AppState, path: &str) -> (StatusCode, Bytes) {
    let request = Request::get(path)
        .body(ScriptedBody::empty())
        .unwrap_or_else(|e| panic!("a GET of a path that was just served must build: {path}: {e}"));
    let response = http::handle(state, request).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e: Infallible| match e {})
        .to_bytes();
    (status, body)
}

fn check_response(method: &Method, uri: &str, status: StatusCode, has_allow: bool, body: &[u8]) {
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri} answered 500: {}",
        String::from_utf8_lossy(body)
    );
    let expected = [
        200, 201, 202, 204, 400, 403, 404, 405, 408, 409, 413, 503, 504,
    ];
    assert!(
        expected.contains(&status.as_u16()),
        "{method} {uri} answered an unexpected {status}: {}",
        String::from_utf8_lossy(body)
    );
    let is_health = uri == "/health" || uri.starts_with("/health?");
    if is_health && status == StatusCode::SERVICE_UNAVAILABLE {
        // /health is a report, not an error: its 503 says why the node cannot serve.
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!("{method} {uri} answered {status} with a body that is not JSON ({e})")
        });
        assert!(
            json.get("status").is_some_and(|v| v.is_string()),
            "{method} {uri} answered {status} without a status: {json}"
        );
    } else if status.is_client_error() || status.is_server_error() {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "{method} {uri} answered {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        assert!(
            json.get("error").is_some_and(|v| v.is_string())
                && json.get("code").is_some_and(|v| v.is_string()),
            "{method} {uri} answered {status} without string `error` and `code`: {json}"
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert!(
            has_allow,
            "{method} {uri} answered 405 without an Allow header"
        );
    }
}

fn path_text(path: &PathChoice) -> String {
    match path {
        PathChoice::Health => "/health".into(),
        PathChoice::Metrics => "/metrics".into(),
        PathChoice::Hello => "/v1/raft/hello".into(),
        PathChoice::Cluster => "/v1/cluster".into(),
        PathChoice::TransferLeader => "/v1/cluster/transfer-leader".into(),
        PathChoice::RaftMessages => "/v1/raft/messages".into(),
        PathChoice::KvList(slash) => if *slash { "/v1/kv/" } else { "/v1/kv" }.into(),
        PathChoice::Key(bytes) => format!("/v1/kv/{}", percent_encode(bytes)),
        PathChoice::RawKey(text) => format!("/v1/kv/{text}"),
        PathChoice::Raw(text) => text.clone(),
    }
}

fn query_text(query: &QueryChoice) -> Option<String> {
    match query {
        QueryChoice::None => None,
        QueryChoice::Raw(text) => Some(text.clone()),
        QueryChoice::Pairs(pairs) => Some(
            pairs
                .iter()
                .map(|(name, value)| {
                    let name = match name {
                        QueryName::Cas => "cas".to_string(),
                        QueryName::Consistency => "consistency".to_string(),
                        QueryName::Prefix => "prefix".to_string(),
                        QueryName::After => "after".to_string(),
                        QueryName::Limit => "limit".to_string(),
                        QueryName::To => "to".to_string(),
                        QueryName::Other(text) => percent_encode(text.as_bytes()),
                    };
                    let value = match value {
                        QueryValue::Number(n) => n.to_string(),
                        QueryValue::Small(n) => n.to_string(),
                        QueryValue::Stale => "stale".to_string(),
                        QueryValue::Linearizable => "linearizable".to_string(),
                        QueryValue::Text(text) => percent_encode(text.as_bytes()),
                    };
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("&"),
        ),
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            text.push(char::from(byte));
        } else {
            text.push_str(&format!("%{byte:02X}"));
        }
    }
    text
}

fn scripted_body(spec: &BodySpec, state: &AppState) -> ScriptedBody {
    match spec {
        BodySpec::Chunks {
            chunks,
            error_at_end,
            declared_bytes,
        } => {
            let mut hint = SizeHint::new();
            if let Some(declared) = declared_bytes {
                hint.set_exact(u64::from(*declared));
            }
            ScriptedBody {
                chunks: chunks
                    .iter()
                    .map(|chunk| Bytes::copy_from_slice(chunk))
                    .collect(),
                error_at_end: *error_at_end,
                hint,
            }
        }
        BodySpec::Envelope {
            from_self,
            messages,
        } => {
            // The started node's cluster; the starting node refuses any envelope anyway.
            let (cluster_id, self_id) = match state.node() {
                Some(node) => (node.cluster.cluster_id, node.cluster.self_id),
                None => (0, state.id),
            };
            let from = if *from_self {
                self_id
            } else {
                self_id.wrapping_add(1).max(1)
            };
            // The incarnation the node's configuration records for the sender, so the envelope
            // reaches the core when the sender is a member.
            let from_incarnation = state
                .node()
                .and_then(|node| node.directory.member(from))
                .map_or(0, |member| member.incarnation);
            let envelope = RpcEnvelope {
                cluster_id,
                from,
                to: self_id,
                from_incarnation,
                messages: messages
                    .iter()
                    .map(|m| {
                        let mut message = m.to_message(self_id);
                        message.from = from;
                        message
                    })
                    .collect(),
            };
            ScriptedBody {
                chunks: VecDeque::from([Bytes::from(rpc::encode(&envelope))]),
                error_at_end: false,
                hint: SizeHint::new(),
            }
        }
    }
}

/// A request body that yields its chunks one frame at a time, then optionally fails.
pub struct ScriptedBody {
    chunks: VecDeque<Bytes>,
    error_at_end: bool,
    hint: SizeHint,
}

impl ScriptedBody {
    fn empty() -> ScriptedBody {
        ScriptedBody {
            chunks: VecDeque::new(),
            error_at_end: false,
            hint: SizeHint::with_exact(0),
        }
    }

    fn all_bytes(&self) -> Bytes {
        let mut all = Vec::new();
        for chunk in &self.chunks {
            all.extend_from_slice(chunk);
        }
        Bytes::from(all)
    }
}

/// The transport failure a [`ScriptedBody`] ends with.
#[derive(Debug)]
pub struct BodyFailure;

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset while reading the body (scripted)")
    }
}

impl std::error::Error for BodyFailure {}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.error_at_end {
            this.error_at_end = false;
            return Poll::Ready(Some(Err(BodyFailure)));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.error_at_end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
