//! A small pooled HTTP/1.1 client over the environment seam's TCP, used for Raft RPCs, request
//! forwarding and the bench/dev commands. Connections to one address are reused. With a
//! [`env::tls::ClientTls`] every connection is TLS (peer RPCs with peer TLS on, `https://`
//! endpoints in the CLI).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};

use crate::env;

/// Idle connections kept per address.
const IDLE_CONNECTIONS_PER_ADDR_MAX: usize = 32;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http to {addr}: {message}")]
    Http {
        /// The address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The call took longer than its timeout.
    #[error("call to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// An error and its causes, `a: b: c` (a refused TLS certificate hides in a cause).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

/// How long a failed request waits for its connection's own error (TLS only: a refused client
/// certificate arrives as an alert the connection task reads, after the request is cancelled).
const CONNECTION_ERROR_WAIT: Duration = Duration::from_millis(200);

/// One open connection: the request side, and the error its driver task ended with.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    ended: tokio::sync::oneshot::Receiver<String>,
}

/// Idle connections by address.
type IdlePool = BTreeMap<String, Vec<Connection>>;

/// A cheap-to-clone pooled client.
#[derive(Clone, Default)]
pub struct HttpClient {
    idle: Arc<Mutex<IdlePool>>,
    /// TLS for every connection, when set.
    tls: Option<Arc<env::tls::ClientTls>>,
}

/// A response with its whole body read.
pub type FullResponse = Response<Bytes>;

impl HttpClient {
    /// A client with an empty pool.
    pub fn new() -> Self {
        HttpClient::default()
    }

    /// A client with an empty pool whose connections all run TLS with `tls`.
    pub fn with_tls(tls: Option<Arc<env::tls::ClientTls>>) -> Self {
        HttpClient {
            idle: Arc::default(),
            tls,
        }
    }

    /// The TLS configuration, if connections use TLS.
    pub fn tls(&self) -> Option<&Arc<env::tls::ClientTls>> {
        self.tls.as_ref()
    }

    /// Sends `request` to `addr` (`host:port`) and reads the whole response body (at most
    /// `body_bytes_max`), all within `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        request: Request<Full<Bytes>>,
        body_bytes_max: usize,
        timeout: Duration,
    ) -> Result<FullResponse, ClientError> {
        match env::timeout(timeout, self.call_inner(addr, request, body_bytes_max)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        }
    }

    async fn call_inner(
        &self,
        addr: &str,
        mut request: Request<Full<Bytes>>,
        body_bytes_max: usize,
    ) -> Result<FullResponse, ClientError> {
        if !request.headers().contains_key(hyper::header::HOST) {
            if let Ok(host) = hyper::header::HeaderValue::from_str(addr) {
                request.headers_mut().insert(hyper::header::HOST, host);
            }
        }
        let mut connection = self.checkout(addr).await?;
        let http_error = |e: &dyn std::error::Error| ClientError::Http {
            addr: addr.to_string(),
            message: with_causes(e),
        };
        let response = match connection.sender.send_request(request).await {
            Ok(response) => response,
            Err(e) if self.tls.is_some() => {
                // "connection closed" hides why: the TLS alert is the connection's error.
                let cause = env::timeout(CONNECTION_ERROR_WAIT, &mut connection.ended).await;
                return Err(match cause {
                    Ok(Ok(cause)) => ClientError::Http {
                        addr: addr.to_string(),
                        message: format!("{}: {cause}", with_causes(&e)),
                    },
                    _ => http_error(&e),
                });
            }
            Err(e) => return Err(http_error(&e)),
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, body_bytes_max)
            .collect()
            .await
            .map_err(|e| http_error(&*e))?
            .to_bytes();
        self.checkin(addr, connection);
        Ok(Response::from_parts(parts, body))
    }

    /// Sends `request` to `addr` and returns the response head with its body to read line by
    /// line (a newline-delimited stream such as a streaming watch), the head within `timeout`.
    /// Each line is at most `line_bytes_max` bytes. The connection serves this stream only.
    pub async fn open_lines(
        &self,
        addr: &str,
        mut request: Request<Full<Bytes>>,
        line_bytes_max: usize,
        timeout: Duration,
    ) -> Result<(hyper::http::response::Parts, LineStream), ClientError> {
        if !request.headers().contains_key(hyper::header::HOST) {
            if let Ok(host) = hyper::header::HeaderValue::from_str(addr) {
                request.headers_mut().insert(hyper::header::HOST, host);
            }
        }
        let opened = env::timeout(timeout, async {
            let mut connection = self.checkout(addr).await?;
            connection
                .sender
                .send_request(request)
                .await
                .map_err(|e| ClientError::Http {
                    addr: addr.to_string(),
                    message: e.to_string(),
                })
        })
        .await;
        let response = match opened {
            Ok(response) => response?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: addr.to_string(),
                    timeout,
                })
            }
        };
        let (parts, body) = response.into_parts();
        Ok((
            parts,
            LineStream {
                addr: addr.to_string(),
                body,
                buffer: Vec::new(),
                line_bytes_max,
            },
        ))
    }

    async fn checkout(&self, addr: &str) -> Result<Connection, ClientError> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().expect("client pool lock poisoned");
                idle.get_mut(addr).and_then(Vec::pop)
            };
            match candidate {
                Some(mut connection) => {
                    if connection.sender.is_closed() {
                        continue;
                    }
                    if connection.sender.ready().await.is_ok() {
                        return Ok(connection);
                    }
                }
                None => break,
            }
        }
        let stream =
            env::TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            Some(tls) => {
                tls.connect(addr, stream)
                    .await
                    .map_err(|source| ClientError::Connect {
                        addr: addr.to_string(),
                        source,
                    })?
            }
            None => env::tls::ClientStream::plain(stream),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(env::TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http {
                addr: addr.to_string(),
                message: with_causes(&e),
            })?;
        let (report_end, ended) = tokio::sync::oneshot::channel();
        env::spawn(async move {
            if let Err(error) = connection.await {
                let _ = report_end.send(with_causes(&error));
            }
        });
        Ok(Connection { sender, ended })
    }

    fn checkin(&self, addr: &str, connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("client pool lock poisoned");
        let slot = idle.entry(addr.to_string()).or_default();
        if slot.len() < IDLE_CONNECTIONS_PER_ADDR_MAX {
            slot.push(connection);
        }
    }
}

/// A response body read one line at a time (see [`HttpClient::open_lines`]).
pub struct LineStream {
    addr: String,
    body: hyper::body::Incoming,
    /// Bytes received after the last complete line. Invariant: no newline, at most
    /// `line_bytes_max` bytes.
    buffer: Vec<u8>,
    line_bytes_max: usize,
}

impl LineStream {
    /// The next line without its newline, or `None` once the body ended cleanly (a last line
    /// without a newline is an error: the stream was cut mid-line).
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, ClientError> {
        use hyper::body::Body as _;
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let rest = self.buffer.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buffer, rest);
                line.pop();
                return Ok(Some(Bytes::from(line)));
            }
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None if self.buffer.is_empty() => return Ok(None),
                None => return Err(self.error(&"the stream ended in the middle of a line")),
                Some(Err(e)) => return Err(self.error(&e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                        let pending = match self.buffer.iter().position(|&byte| byte == b'\n') {
                            Some(end) => end,
                            None => self.buffer.len(),
                        };
                        if pending > self.line_bytes_max {
                            return Err(self.error(&format!(
                                "a line longer than {} bytes",
                                self.line_bytes_max
                            )));
                        }
                    }
                }
            }
        }
    }

    /// The rest of the body (at most `line_bytes_max` bytes), for an answer that is not a
    /// stream (an error's JSON).
    pub async fn collect(self) -> Result<Bytes, ClientError> {
        let addr = self.addr;
        let mut whole = self.buffer;
        let rest = Limited::new(self.body, self.line_bytes_max)
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                addr,
                message: e.to_string(),
            })?
            .to_bytes();
        whole.extend_from_slice(&rest);
        Ok(Bytes::from(whole))
    }

    fn error(&self, message: &dyn std::fmt::Display) -> ClientError {
        ClientError::Http {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }
}
