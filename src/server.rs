//! Running one node: bind, serve HTTP, establish membership, start the driver, and shut down
//! gracefully (a leader hands leadership off first). The production binary and the simulator
//! both call [`run`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::env;
use crate::http::client::HttpClient;
use crate::http::{self, AppState, HttpLimits};
use crate::node::config::node_id_of;
use crate::node::{self, NodeConfig, NodeHandle, StartError};
use crate::raft::Role;

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration file (the token file) is unusable.
    #[error("{0}")]
    Config(String),
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// This node was removed from the cluster: its data directory is no longer a member's.
    #[error(
        "node {node}: {reason}; to serve again, start it with an empty data directory and \
         --join"
    )]
    Removed {
        /// The node's name.
        node: String,
        /// How it learned.
        reason: String,
    },
    /// The driver task stopped (it panicked): the node can keep no promise any more.
    #[error("node {node}: {}", crate::node::DRIVER_STOPPED)]
    DriverStopped {
        /// The node's name.
        node: String,
    },
}

/// Runs a node until `shutdown` resolves. `on_started` sees the handle once the node runs.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&NodeHandle),
) -> Result<(), RunError> {
    let mut config = config;
    if let Some(path) = &config.peer_secret_file {
        let secret = node::peer_auth::PeerSecret::load(path)
            .await
            .map_err(RunError::Config)?;
        config.peer_secret = Some(secret);
    }
    let listener = env::TcpListener::bind(config.listen_addr.as_str())
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen_addr.clone(),
            source,
        })?;
    let server_tls = env::tls::ServerTls::load(&config.tls)
        .await
        .map_err(RunError::Config)?
        .map(Arc::new);
    let peer_tls = env::tls::ClientTls::for_peers(&config.tls)
        .await
        .map_err(RunError::Config)?
        .map(Arc::new);
    let client = HttpClient::with_tls(peer_tls.clone());
    let limits = HttpLimits {
        key_bytes_max: config.key_bytes_max,
        value_bytes_max: config.value_bytes_max,
        rpc_body_bytes_max: config.rpc_body_bytes_max,
        header_bytes_max: config.header_bytes_max,
        body_read_timeout: config.request_timeout,
        forward_timeout: config.request_timeout + Duration::from_secs(1),
    };
    let mut state = AppState::new(
        config.name.clone(),
        node_id_of(&config.name),
        limits,
        client.clone(),
    );
    // Durable before the first hello answer carries it (see `node::cluster`).
    let incarnation = node::cluster::load_or_create_incarnation(&config.data_dir)
        .await
        .map_err(|e| RunError::Start(StartError::from(e)))?;
    state.set_incarnation(incarnation);
    if config.tls.peer_enabled() {
        state = state.with_peer_tls();
    }
    let mut reloadable = Reloadable {
        auth: None,
        server_tls: server_tls.clone(),
        peer_tls,
    };
    if let Some(path) = &config.auth_tokens_file {
        let tokens = http::auth::load_token_file(path)
            .await
            .map_err(RunError::Config)?;
        let auth = Arc::new(http::auth::ClientAuth::new(
            tokens,
            Some(path.clone()),
            config.metrics_auth,
        ));
        reloadable.auth = Some(auth.clone());
        state = state.with_auth(auth);
    } else if let Some(tokens) = &config.auth_tokens {
        // Tokens given directly (the simulator): nothing to reload.
        let auth = http::auth::ClientAuth::new(tokens.clone(), None, config.metrics_auth);
        state = state.with_auth(Arc::new(auth));
    }
    if let Some(options) = config.rate_limit {
        state = state.with_rate_limit(options);
    }
    if reloadable.any() {
        drop(env::spawn(reload_on_signal(reloadable)));
    }
    let state = Arc::new(state);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = env::spawn(http::serve(
        listener,
        server_tls,
        state.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));
    tracing::info!(
        node = %config.name,
        addr = %config.listen_addr,
        peers = ?config.peers,
        tls = config.tls.enabled(),
        peer_tls = config.tls.peer_enabled(),
        "listening"
    );

    let election_timeout = config.tick_interval * config.election_ticks;
    let client_for_join = HttpClient::with_tls(client.tls().cloned());
    tokio::pin!(shutdown);
    let handle = tokio::select! {
        biased; // deterministic in simulation, see the driver loop
        handle = node::start(config, client.clone()) => handle?,
        _ = &mut shutdown => {
            let _ = stop_http.send(());
            let _ = server.await;
            return Ok(());
        }
    };
    state.set_node(handle.clone());
    if let Some(join_addr) = handle.config.join.clone() {
        let config = handle.config.clone();
        let client = client_for_join.clone();
        env::spawn(async move {
            node::join::promote_when_caught_up(&config, &client, &join_addr).await
        });
    }
    on_started(&handle);
    let driver_stopped = tokio::select! {
        biased;
        () = handle.wait_driver_stopped() => true,
        () = &mut shutdown => false,
    };
    if let Some(reason) = handle.directory.removal().filter(|_| driver_stopped) {
        let _ = stop_http.send(());
        let _ = server.await;
        return Err(RunError::Removed {
            node: handle.config.name.clone(),
            reason,
        });
    }
    if driver_stopped {
        // A node without its driver answers nothing truthfully: stop serving and report it.
        tracing::error!(node = %handle.config.name, "{}", crate::node::DRIVER_STOPPED);
        let _ = stop_http.send(());
        let _ = server.await;
        return Err(RunError::DriverStopped {
            node: handle.config.name.clone(),
        });
    }
    hand_off_leadership(&handle, election_timeout * 2).await;
    let _ = stop_http.send(());
    let _ = server.await;
    Ok(())
}

/// What a SIGHUP re-reads.
struct Reloadable {
    auth: Option<Arc<http::auth::ClientAuth>>,
    server_tls: Option<Arc<env::tls::ServerTls>>,
    peer_tls: Option<Arc<env::tls::ClientTls>>,
}

impl Reloadable {
    fn any(&self) -> bool {
        self.auth.is_some() || self.server_tls.is_some() || self.peer_tls.is_some()
    }
}

/// Re-reads the token file and the certificate files at each SIGHUP; a bad file keeps the
/// configuration in force (each part on its own: a bad token file does not stop a new
/// certificate).
async fn reload_on_signal(reloadable: Reloadable) {
    let mut signals = env::ReloadSignals::new();
    loop {
        signals.recv().await;
        if let Some(auth) = &reloadable.auth {
            match auth.reload().await {
                Ok(count) => {
                    tracing::info!(tokens = count, path = ?auth.path, "token file reloaded")
                }
                Err(error) => {
                    tracing::error!(%error, "token file not reloaded; the previous tokens stay in force")
                }
            }
        }
        let server = match &reloadable.server_tls {
            Some(tls) => tls.reload().await,
            None => Ok(()),
        };
        let peer = match &reloadable.peer_tls {
            Some(tls) => tls.reload().await,
            None => Ok(()),
        };
        match server.and(peer) {
            Ok(()) if reloadable.server_tls.is_some() => {
                tracing::info!("certificate files reloaded")
            }
            Ok(()) => {}
            Err(error) => tracing::error!(
                %error,
                "certificate files not reloaded; the previous certificates stay in force"
            ),
        }
    }
}

/// A leader that is asked to stop first hands leadership to a follower, so the cluster does not
/// wait an election timeout for a new one.
async fn hand_off_leadership(handle: &NodeHandle, wait_max: Duration) {
    if handle.status().role != Role::Leader || handle.directory.members().len() < 2 {
        return;
    }
    tracing::info!("shutting down: handing leadership off");
    if let Err(error) = handle.transfer_leadership(None).await {
        tracing::warn!(%error, "leadership transfer refused");
        return;
    }
    // Stepping down comes first (the target's higher term), learning the new leader comes with
    // its first append: wait for both, or a shutdown right after stepping down reads as a failed
    // hand-off.
    let deadline = env::now() + wait_max;
    loop {
        let status = handle.status();
        match status.leader {
            Some(leader) if status.role != Role::Leader => {
                tracing::info!(leader, "leadership handed off");
                return;
            }
            _ if env::now() >= deadline => {
                tracing::warn!("leadership hand-off did not finish in time");
                return;
            }
            _ => env::sleep(Duration::from_millis(10)).await,
        }
    }
}
