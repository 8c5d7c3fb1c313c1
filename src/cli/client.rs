//! The command-line client's connection to a cluster: a list of endpoints tried in turn, each
//! request retried on another endpoint while the cluster has no leader or a node is down, and
//! every write carrying an `Idempotency-Key`, so a retry after an unknown outcome (a timeout, a
//! 504) is applied at most once.
//!
//! A follower forwards writes and linearizable reads to its leader itself, so "following the
//! leader hint" is the server's job; the client only moves on when an endpoint cannot answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use raft_kv::env;
use raft_kv::http::client::{FullResponse, HttpClient, LineStream};
use rand_core::RngCore;

/// Largest response body the client reads (a listing page of large values fits).
const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Pause between two rounds over every endpoint.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The exit codes a script can rely on (documented in the README, section *The command-line
/// client*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok = 0,
    /// 1: the key or lease does not exist.
    NotFound = 1,
    /// 2: the command line is wrong (clap's own code for usage errors too).
    Usage = 2,
    /// 3: a compare failed (`--cas`: the key's modification index differs), or the lock is
    /// held by someone else with `--no-wait`.
    CompareFailed = 3,
    /// 4: no endpoint could serve the request before `--timeout` (down, no leader, overloaded).
    Unavailable = 4,
    /// 5: the outcome is unknown (the write may or may not have been applied).
    Unknown = 5,
    /// 6: the cluster refused the request (bad input, a limit).
    Refused = 6,
    /// 7: a watch's index is older than the history the node keeps (read again, watch from
    /// the read's index).
    Compacted = 7,
    /// 8: `lock` lost its lease while the command ran; the command was killed.
    LockLost = 8,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// A failed command: its exit code and the message printed on stderr.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

/// An answer the cluster gave.
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON body's `error` message, or the body as text.
    pub fn message(&self) -> String {
        match self.json().get("error").and_then(|e| e.as_str()) {
            Some(message) => message.to_string(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }

    /// The JSON body's `code`.
    pub fn code(&self) -> String {
        self.json()
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string()
    }

    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }

    /// The failure a non-success answer means.
    pub fn failure(&self) -> Failure {
        let exit = match self.status.as_u16() {
            404 => Exit::NotFound,
            409 if self.code() == "cas_mismatch" => Exit::CompareFailed,
            503 => Exit::Unavailable,
            504 => Exit::Unknown,
            _ => Exit::Refused,
        };
        Failure::new(exit, format!("{} ({})", self.message(), self.status))
    }
}

/// The endpoints and the per-command deadline.
#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    endpoints: Vec<String>,
    /// How long one command may keep retrying.
    pub timeout: Duration,
    /// `Authorization: Bearer` value sent with every request, when the cluster wants tokens.
    token: Option<String>,
}

impl Client {
    /// A client over `endpoints` (`host:port`, an `http://` or `https://` prefix and a trailing
    /// `/` are accepted; TLS comes from [`Client::with_tls`]).
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Client, Failure> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| strip_scheme(e.trim()).trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Failure::new(
                Exit::Usage,
                "no endpoint: give --endpoints host:port,... or RAFT_KV_ENDPOINTS",
            ));
        }
        Ok(Client {
            http: HttpClient::new(),
            endpoints,
            timeout,
            token: None,
        })
    }

    /// The same client, talking TLS to every endpoint when `tls` is set.
    pub fn with_tls(mut self, tls: Option<Arc<env::tls::ClientTls>>) -> Client {
        self.http = HttpClient::with_tls(tls);
        self
    }

    /// The same client, sending `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The endpoints, as given.
    #[cfg(test)]
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A fresh idempotency key for one write (retries of it reuse it).
    pub fn idempotency_key() -> String {
        format!(
            "cli-{:016x}{:016x}",
            env::rng().next_u64(),
            env::rng().next_u64()
        )
    }

    /// Sends the request to the endpoints in turn until one answers with something other than
    /// "unavailable" (503, no connection), within [`Client::timeout`]. A write (`idempotent`
    /// false) whose outcome is unknown (a timeout, a 504) is retried only with an
    /// `idempotency_key`; without one the unknown outcome is the answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, Failure> {
        let deadline = env::now() + self.timeout;
        let retry_unknown = method == Method::GET || idempotency_key.is_some();
        let mut last_problem = String::from("no endpoint tried");
        loop {
            for endpoint in &self.endpoints {
                let left = deadline.duration_since(env::now());
                if left.is_zero() {
                    return Err(Failure::new(
                        Exit::Unavailable,
                        format!(
                            "no endpoint could serve the request within {:?}; last: {last_problem}",
                            self.timeout
                        ),
                    ));
                }
                let mut builder = Request::builder().method(method.clone()).uri(path);
                if let Some(key) = idempotency_key {
                    builder = builder.header("idempotency-key", key);
                }
                if let Some(token) = &self.token {
                    builder =
                        builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let request = builder
                    .body(Full::new(body.clone()))
                    .map_err(|e| Failure::new(Exit::Usage, format!("bad request: {e}")))?;
                match self
                    .http
                    .call(endpoint, request, RESPONSE_BYTES_MAX, left)
                    .await
                {
                    Ok(response) => {
                        let reply = into_reply(response);
                        let status = reply.status.as_u16();
                        if status == 503 || (status == 504 && retry_unknown) {
                            last_problem = format!("{endpoint}: {}", reply.failure().message);
                            continue;
                        }
                        return Ok(reply);
                    }
                    Err(e) => {
                        // A connection never made carried nothing: always safe to retry.
                        let never_sent =
                            matches!(e, raft_kv::http::client::ClientError::Connect { .. });
                        if !never_sent && !retry_unknown {
                            return Err(Failure::new(
                                Exit::Unknown,
                                format!(
                                    "{endpoint}: {e}; the write may or may not have been applied"
                                ),
                            ));
                        }
                        last_problem = format!("{endpoint}: {e}");
                    }
                }
            }
            env::sleep(RETRY_PAUSE).await;
        }
    }

    /// Opens a newline-delimited stream (`GET path`) on the endpoints in turn from `*endpoint`
    /// (taken modulo their number), until one answers other than "unavailable" within [`Client::timeout`];
    /// `*endpoint` becomes the one that answered. A 200 gives the lines; any other answer is
    /// returned whole, as a [`Reply`].
    pub async fn open_lines(
        &self,
        path: &str,
        endpoint: &mut usize,
        line_bytes_max: usize,
    ) -> Result<Result<LineStream, Reply>, Failure> {
        let deadline = env::now() + self.timeout;
        let mut last_problem = String::from("no endpoint tried");
        loop {
            for _ in 0..self.endpoints.len() {
                *endpoint %= self.endpoints.len();
                let addr = &self.endpoints[*endpoint];
                let left = deadline.duration_since(env::now());
                if left.is_zero() {
                    return Err(Failure::new(
                        Exit::Unavailable,
                        format!(
                            "no endpoint could serve the watch within {:?}; last: {last_problem}",
                            self.timeout
                        ),
                    ));
                }
                let mut builder = Request::get(path);
                if let Some(token) = &self.token {
                    builder =
                        builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let request = builder
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| Failure::new(Exit::Usage, format!("bad request: {e}")))?;
                match self
                    .http
                    .open_lines(addr, request, line_bytes_max, left)
                    .await
                {
                    Ok((parts, lines)) if parts.status == StatusCode::OK => return Ok(Ok(lines)),
                    Ok((parts, lines)) => {
                        let reply = Reply {
                            status: parts.status,
                            headers: parts.headers,
                            body: lines.collect().await.unwrap_or_default(),
                        };
                        if reply.status.as_u16() == 503 || reply.status.as_u16() == 504 {
                            last_problem = format!("{addr}: {}", reply.failure().message);
                            *endpoint += 1;
                            continue;
                        }
                        return Ok(Err(reply));
                    }
                    Err(e) => {
                        last_problem = format!("{addr}: {e}");
                        *endpoint += 1;
                    }
                }
            }
            env::sleep(RETRY_PAUSE).await;
        }
    }

    /// One call to one address, no retry (for `status`, which asks every member).
    pub async fn call_once(&self, addr: &str, path: &str) -> Option<Reply> {
        let mut builder = Request::get(path);
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder.body(Full::new(Bytes::new())).ok()?;
        let timeout = self.timeout.min(Duration::from_secs(5));
        let response = self
            .http
            .call(addr, request, RESPONSE_BYTES_MAX, timeout)
            .await
            .ok()?;
        Some(into_reply(response))
    }
}

/// An endpoint without its `http://` or `https://` prefix.
pub fn strip_scheme(endpoint: &str) -> &str {
    endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint)
}

/// etcdctl's TLS flags, for every client command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// TLS: the CA certificate (PEM) that signed the nodes' certificates; every endpoint is
    /// then called over https.
    #[arg(long = "cacert", env = "RAFT_KV_CACERT", global = true)]
    pub tls_cacert: Option<PathBuf>,
    /// TLS: a client certificate (PEM) to show, for nodes started with --client-cert-auth.
    #[arg(long = "cert", env = "RAFT_KV_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of --cert.
    #[arg(long = "key", env = "RAFT_KV_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration these flags describe for `endpoints`, `None` for plain HTTP.
    pub async fn load(
        &self,
        endpoints: &[String],
    ) -> Result<Option<Arc<env::tls::ClientTls>>, Failure> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(Failure::new(Exit::Usage, "--cert and --key go together")),
        };
        let https = endpoints.iter().any(|e| e.trim().starts_with("https://"));
        let Some(ca) = &self.tls_cacert else {
            if https || identity.is_some() {
                return Err(Failure::new(
                    Exit::Usage,
                    "https needs --cacert: the CA certificate that signed the nodes' certificates",
                ));
            }
            return Ok(None);
        };
        let tls = env::tls::ClientTls::load(ca, identity)
            .await
            .map_err(|e| Failure::new(Exit::Usage, e))?;
        Ok(Some(Arc::new(tls)))
    }
}

fn into_reply(response: FullResponse) -> Reply {
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Percent-encodes a key for a URL path (every byte outside `A-Za-z0-9-._~/`).
pub fn encode_key(key: &str) -> String {
    encode(key, b"-._~/")
}

/// Percent-encodes a query value (every byte outside `A-Za-z0-9-._~`).
pub fn encode_query(value: &str) -> String {
    encode(value, b"-._~")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_except_slashes_and_unreserved_bytes() {
        assert_eq!(encode_key("config/a b%"), "config/a%20b%25");
        assert_eq!(encode_query("a/b&c"), "a%2Fb%26c");
    }

    #[test]
    fn endpoints_accept_an_http_prefix_and_an_empty_list_is_a_usage_error() {
        let client = Client::new(
            &["http://127.0.0.1:8001/".into(), " 127.0.0.1:8002".into()],
            Duration::from_secs(1),
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(client.endpoints(), ["127.0.0.1:8001", "127.0.0.1:8002"]);
        let refused = Client::new(&[" ".into()], Duration::from_secs(1)).err();
        assert_eq!(refused.map(|f| f.exit), Some(Exit::Usage));
    }
}
