//! The HTTP surface of a node: the client API (`/v1/kv`), cluster and health endpoints,
//! Prometheus metrics, and the Raft RPC endpoint peers call. Served by hyper over the
//! environment seam's TCP, so the same code runs in production and in simulation.

mod api;
pub mod auth;
mod body;
pub mod client;
pub mod guard;
mod members;
mod txn;
mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub use api::{handle, AppState, HttpLimits};
pub use body::ApiBody;

use crate::env;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: env::TcpListener,
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
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                env::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        env::spawn(async move {
            let header_bytes_max = state.limits.header_bytes_max.max(8192);
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
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
    stream: env::TcpStream,
    header_bytes_max: usize,
) -> env::TokioIo<guard::HeadGuard<env::FlushWhenWritten<env::TcpStream>>> {
    let flushing = env::hyper_io(stream).into_inner();
    env::TokioIo::new(guard::HeadGuard::new(flushing, header_bytes_max))
}
