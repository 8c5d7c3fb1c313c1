//! Configuration of one node: identity, addresses, timeouts and limits.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a node needs to start. The CLI and the simulator both build one.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name, unique in the cluster (`--id`).
    pub name: String,
    /// The address the HTTP server listens on (`host:port`).
    pub listen_addr: String,
    /// The other members' addresses (`host:port`), as given by `--peers`.
    pub peers: Vec<String>,
    /// A member of a running cluster to join through (`--join`): used only when the data
    /// directory is empty; the node asks to be added as a learner and then to be promoted.
    pub join: Option<String>,
    /// An `admin` bearer token for the join requests (`--join-token`), when the cluster has
    /// client authentication on.
    pub join_token: Option<String>,
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// How long one Raft tick lasts.
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// How long a client request may take before it answers 504 (outcome unknown for writes).
    pub request_timeout: Duration,
    /// How long one peer RPC may take.
    pub rpc_timeout: Duration,
    /// Take a snapshot (in the background) once this many entries were applied since the last
    /// one, on average: each member snapshots on its own phase of this interval, between half
    /// and one and a half intervals after its last snapshot...
    pub snapshot_entries: u64,
    /// ...or once this many bytes of entry data were applied since the last one.
    pub snapshot_bytes: u64,
    /// Compaction keeps this many entries the snapshot covers in memory, so a follower less
    /// than this far behind catches up from the log instead of receiving the snapshot.
    pub snapshot_tail_entries: u64,
    /// Target payload of one chunk of a snapshot file.
    pub snapshot_chunk_bytes: usize,
    /// Bytes of a snapshot file in one `POST /v1/raft/snapshot` chunk (`--snapshot-chunk-bytes`;
    /// clamped so a chunk fits in `rpc_body_bytes_max`).
    pub snapshot_transfer_chunk_bytes: usize,
    /// Snapshot transfers a leader streams at once (`--snapshot-transfers-max`).
    pub snapshot_transfers_max: usize,
    /// Largest snapshot file a follower accepts from a leader: the disk it may spend on one
    /// (`--snapshot-receive-bytes-max`; unlimited by default).
    pub snapshot_receive_bytes_max: u64,
    /// Largest WAL segment file.
    pub wal_segment_bytes_max: u64,
    /// Largest key in bytes.
    pub key_bytes_max: usize,
    /// Largest value in bytes (413 above it).
    pub value_bytes_max: usize,
    /// Largest peer RPC body in bytes.
    pub rpc_body_bytes_max: usize,
    /// Largest request header block in bytes.
    pub header_bytes_max: usize,
    /// At most this many client requests queued for the driver (503 above it).
    pub request_queue_max: usize,
    /// Idempotency keys remembered by the state machine.
    pub idempotency_keys_max: usize,
    /// Quota on the store's size (`--quota-bytes`, see `kv::KvStore::store_bytes`). As leader
    /// the node stamps it into every command it proposes, and the store refuses (507) a write
    /// that would grow past the stamped quota; a follower's own value decides nothing.
    pub quota_bytes: u64,
    /// The per-client request rate limit (`--rate-limit-rps`, `--rate-limit-burst`; `None`: no
    /// limit). See `http::rate_limit`.
    pub rate_limit: Option<crate::http::rate_limit::RateLimitOptions>,
    /// Client bearer tokens with roles (`--auth-tokens`; `None`: no client authentication).
    /// See `http::auth` for the file format.
    pub auth_tokens_file: Option<PathBuf>,
    /// Client tokens given directly instead of by file (the simulator uses this).
    pub auth_tokens: Option<crate::http::auth::TokenTable>,
    /// `/metrics` needs a `read` token (`--metrics-auth`; only with `auth_tokens_file`).
    pub metrics_auth: bool,
    /// The shared cluster secret file (`--peer-secret-file`): see `node::peer_auth`.
    pub peer_secret_file: Option<PathBuf>,
    /// The secret itself, loaded from `peer_secret_file` when the node starts (`server::run`).
    pub peer_secret: Option<super::peer_auth::PeerSecret>,
    /// Certificate files (`--cert-file` ... `--peer-trusted-ca-file`): see `env::tls`. Empty:
    /// plain HTTP.
    pub tls: crate::env::tls::TlsFiles,
    /// Bounds of the watch history and of the watches waiting at once.
    pub watch: super::watch::WatchOptions,
    /// Receives a [`NodeEvent`] for every role change and applied entry (the simulator's
    /// safety checks listen here); `None` in production.
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<NodeEvent>>,
}

/// What a node reports to an observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node's role, term or leader changed.
    Role {
        /// The node's id.
        node: u64,
        /// Its term.
        term: u64,
        /// Its role.
        role: crate::raft::Role,
        /// The leader it knows of.
        leader: Option<u64>,
    },
    /// The node applied the entry at `index` (digest: [`crate::raft::invariants::entry_digest`]).
    Applied {
        /// The node's id.
        node: u64,
        /// The entry's index.
        index: u64,
        /// The entry's term.
        term: u64,
        /// Digest of the entry's kind and data.
        digest: u64,
    },
    /// The node froze its store at `index` and started writing a snapshot file in the
    /// background.
    SnapshotWriting {
        /// The node's id.
        node: u64,
        /// The snapshot's index.
        index: u64,
    },
    /// The snapshot at `index` is durable and recorded; the log was compacted.
    SnapshotTaken {
        /// The node's id.
        node: u64,
        /// The snapshot's index.
        index: u64,
        /// The file's size.
        file_bytes: u64,
    },
    /// The entry the node applied at `index` changed these keys (what its watches report).
    Changed {
        /// The node's id.
        node: u64,
        /// The entry's index.
        index: u64,
        /// The changes, in the order the entry made them.
        changes: Vec<crate::kv::KeyChange>,
    },
    /// The node restored its state machine from a snapshot at `index` (entries up to it are
    /// not reported one by one).
    Restored {
        /// The node's id.
        node: u64,
        /// The snapshot's index.
        index: u64,
    },
}

impl NodeConfig {
    /// A configuration with production defaults for `name` listening on `listen_addr`.
    pub fn new(name: impl Into<String>, listen_addr: impl Into<String>) -> Self {
        let name = name.into();
        NodeConfig {
            data_dir: PathBuf::from("raft-kv-data").join(&name),
            name,
            listen_addr: listen_addr.into(),
            peers: Vec::new(),
            join: None,
            join_token: None,
            tick_interval: Duration::from_millis(10),
            election_ticks: 100,
            heartbeat_ticks: 10,
            request_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(2),
            snapshot_entries: 20_000,
            snapshot_bytes: 256 << 20,
            snapshot_tail_entries: 5_000,
            snapshot_chunk_bytes: crate::snapshot::CHUNK_BYTES_DEFAULT,
            snapshot_transfer_chunk_bytes: 1 << 20,
            snapshot_transfers_max: 2,
            snapshot_receive_bytes_max: u64::MAX,
            wal_segment_bytes_max: 64 << 20,
            key_bytes_max: crate::kv::KEY_BYTES_MAX,
            value_bytes_max: crate::kv::VALUE_BYTES_MAX,
            rpc_body_bytes_max: 64 << 20,
            header_bytes_max: 16 << 10,
            request_queue_max: 65_536,
            idempotency_keys_max: 100_000,
            quota_bytes: crate::kv::QUOTA_BYTES_DEFAULT,
            rate_limit: None,
            auth_tokens_file: None,
            auth_tokens: None,
            metrics_auth: false,
            peer_secret_file: None,
            peer_secret: None,
            tls: crate::env::tls::TlsFiles::default(),
            watch: super::watch::WatchOptions::default(),
            observer: None,
        }
    }

    /// The shortest TTL a lease may have on this node: above the longest election timeout
    /// (randomized up to twice `election_ticks`), rounded up to whole seconds, so a holder that
    /// keeps alive every third of its TTL rides out a failover.
    pub fn lease_ttl_min(&self) -> Duration {
        let election_timeout_max = self.tick_interval * self.election_ticks.saturating_mul(2);
        Duration::from_secs(election_timeout_max.as_secs() + 1)
    }
}

/// Checks a member name (`--id`, and names in the membership API).
pub fn validate_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(text.to_string())
    } else {
        Err("a name is 1 to 64 characters of letters, digits, '-', '_' or '.'".into())
    }
}

/// Checks a `host:port` address (`--peers`, `--join`, and addresses in the membership API).
pub fn validate_addr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not host:port"))?;
    if host.is_empty() || host.len() > 253 {
        return Err(format!("{text:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(text.to_string()),
        _ => Err(format!("{text:?} has no valid port (1-65535)")),
    }
}

/// A stable 64-bit id for a member name (FNV-1a), never 0.
pub fn node_id_of(name: &str) -> u64 {
    crate::fnv::fnv1a64(name.as_bytes()).max(1)
}
