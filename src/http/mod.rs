//! The HTTP surface of a node: the client API (`/v1/kv`), cluster and health endpoints,
//! Prometheus metrics, and the Raft RPC endpoint peers call. Served by hyper over the
//! environment seam's TCP, so the same code runs in production and in simulation.

mod api;
pub mod auth;
mod body;
pub mod client;
pub mod guard;
mod members;
pub mod rate_limit;
mod txn;
mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub use api::{handle, AppState, HttpLimits};
pub use body::ApiBody;

use crate::env;

/// The address a request's connection came from (a request extension set by [`serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until `shutdown` resolves; HTTPS when `tls` is set. Every request
/// carries the connection's [`env::tls::ClientIdentity`] in its extensions.
pub async fn serve(
    listener: env::TcpListener,
    tls: Option<Arc<env::tls::ServerTls>>,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased; // deterministic in simulation, see the driver loop
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                env::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        env::spawn(async move {
            let (stream, identity) = match tls {
                None => (
                    env::tls::ServerStream::plain(stream),
                    env::tls::ClientIdentity::Anonymous,
                ),
                // The handshake has the same deadline as a request head.
                Some(tls) => match env::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, peer = %peer_addr, "tls handshake failed");
                        return;
                    }
                    Err(env::Elapsed) => {
                        tracing::debug!(peer = %peer_addr, "tls handshake timed out");
                        return;
                    }
                },
            };
            let header_bytes_max = state.limits.header_bytes_max.max(8192);
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                let state = state.clone();
                request.extensions_mut().insert(identity);
                request.extensions_mut().insert(RemoteAddr(peer_addr));
                async move {
                    if let Some(refused) = guard::refusal_response(&request) {
                        return Ok::<_, Infallible>(refused.map(body::ApiBody::from));
                    }
                    Ok::<_, Infallible>(handle(&state, request).await)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(env::HyperTimer)
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(header_bytes_max);
            if let Err(error) = builder
                .serve_connection(guarded_io(stream, header_bytes_max), service)
                .await
            {
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
}

/// The connection as hyper reads it: every request head passes [`guard::HeadGuard`] first.
fn guarded_io(
    stream: env::tls::ServerStream,
    header_bytes_max: usize,
) -> env::TokioIo<guard::HeadGuard<env::tls::ServerStream>> {
    env::TokioIo::new(guard::HeadGuard::new(stream, header_bytes_max))
}
