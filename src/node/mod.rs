//! The node: the driver loop around the consensus core, the WAL and the KV state machine, and
//! the handle the HTTP API talks to.

pub mod cluster;
pub mod config;
mod driver;
pub mod join;
mod leases;
pub mod members;
pub mod peer_auth;
pub mod rpc;
mod snapshot_receiver;
mod snapshot_transfer;
mod transport;
pub mod watch;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::env;
use crate::kv::{WriteRequest, WriteResult};
use crate::metrics::{Counter, Gauge, Histogram, Metrics, LATENCY_BUCKETS_SECONDS};
use crate::raft::{Index, Message, NodeId, Role, Term};

pub use cluster::{ClusterInfo, Member};
pub use config::{NodeConfig, NodeEvent};
pub use driver::StartError;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: the leader confirms it still leads (ReadIndex) and waits until it has
    /// applied the read index.
    Linearizable,
    /// Served from this node's state machine as it is; may be stale.
    Stale,
}

/// What a read asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadQuery {
    /// One key.
    Get(Vec<u8>),
    /// Keys with a prefix, in order, after `after`, at most `limit`.
    List {
        /// The prefix.
        prefix: Vec<u8>,
        /// Start after this key.
        after: Option<Vec<u8>>,
        /// At most this many keys.
        limit: usize,
    },
    /// One lease: its TTL, keys and (on the leader) the time left.
    Lease(u64),
}

/// A key's value as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueView {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub data: Bytes,
    /// The log index that created the key.
    pub create_index: Index,
    /// The log index that last modified the key.
    pub mod_index: Index,
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The applied index the read was served at.
    pub index: Index,
    /// The values found (at most one for `Get`).
    pub values: Vec<ValueView>,
    /// For `List`: whether more keys follow.
    pub more: bool,
    /// For `Lease`: the lease, if it exists.
    pub lease: Option<LeaseView>,
}

/// A lease as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The lease's id (the log index of its grant).
    pub lease_id: u64,
    /// Its time to live.
    pub ttl_ms: u64,
    /// Time left on the leader's countdown; `None` when served by a node that does not lead
    /// (only the leader counts).
    pub remaining_ms: Option<u64>,
    /// The keys it holds, in ascending order.
    pub keys: Vec<Vec<u8>>,
}

/// The answer to a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The log index of the entry that applied the write: the one that carried it, or for a
    /// retry answered from the idempotency table, the entry of its first application.
    pub index: Index,
    /// What the state machine did.
    pub result: WriteResult,
}

/// Why a request could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node does not lead; `leader` is the one it knows of.
    #[error("not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The proposal's log slot went to another leader's entry; it did not and will not apply.
    #[error("leadership changed before the write committed; it was not applied, retry")]
    Dropped,
    /// The request took too long; a write may or may not have been applied.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// The write may or may not have been applied (a snapshot covered its log slot, or the node
    /// stopped while serving it); retrying with the same Idempotency-Key is safe.
    #[error("the outcome is unknown: {0}; retry with the same Idempotency-Key")]
    OutcomeUnknown(String),
    /// Too many requests are queued.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The node cannot serve (storage failed, or it is shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The failure a node whose driver task is gone reports.
pub const DRIVER_STOPPED: &str = "the driver task stopped (it panicked or ended)";

/// What the node shows to `/health`, `/metrics` and the request router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's role.
    pub role: Role,
    /// This node's term.
    pub term: Term,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The commit index.
    pub commit_index: Index,
    /// The applied index.
    pub applied_index: Index,
    /// The index of the last log entry.
    pub last_index: Index,
    /// Set when the node stopped serving (a storage failure); the reason.
    pub failure: Option<String>,
}

/// A request to the driver.
pub(crate) enum Request {
    Write {
        request: WriteRequest,
        reply: oneshot::Sender<Result<WriteOutcome, NodeError>>,
    },
    Read {
        query: ReadQuery,
        consistency: Consistency,
        reply: oneshot::Sender<Result<ReadOutcome, NodeError>>,
    },
    TransferLeadership {
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// Moves a lease's deadline on the leader (see `leases`); answers `Ok(false)` when the
    /// lease does not exist or its expiry is already proposed.
    LeaseKeepalive {
        lease_id: u64,
        reply: oneshot::Sender<Result<bool, NodeError>>,
    },
    Inspect {
        scope: InspectScope,
        reply: oneshot::Sender<Inspection>,
    },
    /// A point-in-time copy of the state machine (O(1): its maps share structure).
    StateView {
        reply: oneshot::Sender<crate::kv::KvStore>,
    },
    /// A membership API request (see [`members`]).
    Membership {
        op: members::MembershipOp,
        cas: Option<Index>,
        reply: oneshot::Sender<Result<members::MembershipAnswer, members::MembershipError>>,
    },
}

/// What an inspection gathers besides the core's status; each part is a pass over the node's
/// state (the log since the snapshot, or the whole state machine), so a caller asks only for
/// what it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InspectScope {
    /// The log's (index, term, digest) since the snapshot, in [`Inspection::view`].
    pub log: bool,
    /// [`Inspection::state_hash`].
    pub state_hash: bool,
}

impl InspectScope {
    /// The core's status only: the cheapest proof that the driver still answers.
    pub const STATUS_ONLY: InspectScope = InspectScope {
        log: false,
        state_hash: false,
    };
}

/// A look inside a running node, for the simulator's checks.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The core's status.
    pub status: crate::raft::Status,
    /// The state machine's applied index.
    pub kv_applied_index: Index,
    /// [`crate::kv::KvStore::state_hash`] of the state machine, when the scope asked for it.
    pub state_hash: Option<u64>,
    /// The core's view for [`crate::raft::invariants`] (its log only when asked for).
    pub view: crate::raft::invariants::NodeView,
    /// The indexes of the configuration entries in the log above the snapshot (only when the
    /// log was asked for): the simulator checks that a leader never holds two uncommitted.
    pub config_indexes: Vec<Index>,
}

/// Buckets of the snapshot write duration: 1 ms to about 10 minutes.
const SNAPSHOT_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The node's metrics, registered once.
#[derive(Clone)]
pub struct NodeMetrics {
    /// The registry rendered at `/metrics`.
    pub registry: Arc<Metrics>,
    pub(crate) term: Gauge,
    pub(crate) is_leader: Gauge,
    /// `raft_role{role=...}`: 1 for the node's current role, 0 for the others.
    pub(crate) roles: Vec<(Role, Gauge)>,
    pub(crate) commit_index: Gauge,
    pub(crate) applied_index: Gauge,
    pub(crate) proposals: Counter,
    pub(crate) proposals_failed: Counter,
    pub(crate) leader_changes: Counter,
    pub(crate) fsync_seconds: Histogram,
    pub(crate) snapshots: Counter,
    pub(crate) snapshot_installs: Counter,
    pub(crate) snapshot_install_bytes: Counter,
    pub(crate) snapshot_install_seconds: Histogram,
    pub(crate) snapshot_chunks_received: Counter,
    pub(crate) snapshot_chunks_sent: Counter,
    pub(crate) snapshot_sent_bytes: Counter,
    pub(crate) snapshot_bytes: Counter,
    pub(crate) snapshot_last_bytes: Gauge,
    pub(crate) snapshot_write_seconds: Histogram,
    pub(crate) snapshot_finish_seconds: Histogram,
    pub(crate) healthy: Gauge,
    /// Watches waiting on this node now (set when `/metrics` is read).
    pub(crate) watches_waiting: Gauge,
    /// `raft_kv_quota_bytes`: this node's `--quota-bytes` (what it stamps as leader).
    pub(crate) quota_bytes: Gauge,
    /// `raft_kv_store_bytes`: the applied store's size as the quota counts it.
    pub(crate) store_bytes: Gauge,
    /// `raft_kv_quota_exceeded`: 1 from a write refused for the quota until a key changes.
    pub(crate) quota_exceeded: Gauge,
    pub(crate) quota_refused: Counter,
}

impl NodeMetrics {
    fn new() -> NodeMetrics {
        let registry = Arc::new(Metrics::new());
        let m = &registry;
        NodeMetrics {
            term: m.gauge("raft_term", "The node's current Raft term.", &[]),
            is_leader: m.gauge("raft_is_leader", "1 when this node is the leader.", &[]),
            roles: [
                Role::Follower,
                Role::PreCandidate,
                Role::Candidate,
                Role::Leader,
            ]
            .into_iter()
            .map(|role| {
                let labels = [("role", role.as_str().to_string())];
                (
                    role,
                    m.gauge("raft_role", "1 for the node's current Raft role.", &labels),
                )
            })
            .collect(),
            quota_bytes: m.gauge(
                "raft_kv_quota_bytes",
                "This node's --quota-bytes, stamped into the writes it proposes as leader.",
                &[],
            ),
            store_bytes: m.gauge(
                "raft_kv_store_bytes",
                "The applied store's size as the quota counts it (key + value + 64 per key).",
                &[],
            ),
            quota_exceeded: m.gauge(
                "raft_kv_quota_exceeded",
                "1 after a write was refused for the quota (507), 0 again once a key changes.",
                &[],
            ),
            quota_refused: m.counter(
                "raft_kv_quota_refused_total",
                "Writes the store refused at apply because they would pass the quota.",
                &[],
            ),
            commit_index: m.gauge(
                "raft_commit_index",
                "The highest log index known committed.",
                &[],
            ),
            applied_index: m.gauge(
                "raft_applied_index",
                "The highest log index applied to the store.",
                &[],
            ),
            proposals: m.counter(
                "raft_proposals_total",
                "Writes proposed by this node as leader.",
                &[],
            ),
            proposals_failed: m.counter(
                "raft_proposals_failed_total",
                "Writes refused or dropped before they committed.",
                &[],
            ),
            leader_changes: m.counter(
                "raft_leader_changes_total",
                "Times the leader this node knows of changed.",
                &[],
            ),
            fsync_seconds: m.histogram(
                "wal_fsync_duration_seconds",
                "Latency of WAL fsyncs.",
                &[],
                LATENCY_BUCKETS_SECONDS,
            ),
            snapshots: m.counter(
                "raft_snapshots_total",
                "Snapshots taken to compact the log.",
                &[],
            ),
            snapshot_installs: m.counter(
                "raft_snapshot_installs_total",
                "Snapshots received from a leader, verified and loaded.",
                &[],
            ),
            snapshot_install_bytes: m.counter(
                "raft_snapshot_install_bytes_total",
                "Bytes of the snapshot files installed from a leader.",
                &[],
            ),
            snapshot_install_seconds: m.histogram(
                "raft_snapshot_install_duration_seconds",
                "Time to verify, rename and load a received snapshot file.",
                &[],
                SNAPSHOT_BUCKETS_SECONDS,
            ),
            snapshot_chunks_received: m.counter(
                "raft_snapshot_chunks_received_total",
                "Snapshot chunks received and written.",
                &[],
            ),
            snapshot_chunks_sent: m.counter(
                "raft_snapshot_chunks_sent_total",
                "Snapshot chunks a follower accepted from this leader.",
                &[],
            ),
            snapshot_sent_bytes: m.counter(
                "raft_snapshot_sent_bytes_total",
                "Snapshot bytes a follower accepted from this leader.",
                &[],
            ),
            snapshot_bytes: m.counter(
                "raft_snapshot_bytes_total",
                "Bytes of snapshot files written by this node's snapshots.",
                &[],
            ),
            snapshot_last_bytes: m.gauge(
                "raft_snapshot_last_bytes",
                "Size of the latest snapshot file this node wrote.",
                &[],
            ),
            snapshot_write_seconds: m.histogram(
                "raft_snapshot_write_duration_seconds",
                "Time from freezing the store to the snapshot file being durable.",
                &[],
                SNAPSHOT_BUCKETS_SECONDS,
            ),
            snapshot_finish_seconds: m.histogram(
                "raft_snapshot_finish_duration_seconds",
                "Time the driver loop spent recording a written snapshot in the WAL and compacting \
                 (requests wait meanwhile).",
                &[],
                LATENCY_BUCKETS_SECONDS,
            ),
            healthy: m.gauge(
                "raft_kv_healthy",
                "1 when the node can serve, 0 otherwise.",
                &[],
            ),
            watches_waiting: m.gauge(
                "raft_kv_watches_waiting",
                "Watches (long polls) waiting on this node.",
                &[],
            ),
            registry,
        }
    }
}

/// The handle the HTTP API (and tests) use to talk to a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    inbound: mpsc::Sender<Message>,
    snapshot_chunks: mpsc::Sender<snapshot_transfer::InboundChunk>,
    status: Arc<Mutex<NodeStatus>>,
    /// The cluster as bootstrapped (its id, this node's id, the first members).
    pub cluster: Arc<ClusterInfo>,
    /// Who is in the cluster now, as the configuration in the log says.
    pub directory: Arc<members::Directory>,
    /// The node's configuration.
    pub config: Arc<NodeConfig>,
    /// The node's metrics.
    pub metrics: NodeMetrics,
    /// The changes this node applied recently, for watches.
    pub watches: watch::SharedWatchHub,
}

impl NodeHandle {
    /// Proposes a write and waits until it is applied (or fails, or times out).
    pub async fn write(&self, request: WriteRequest) -> Result<WriteOutcome, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Write { request, reply })?;
        self.await_answer(answer).await
    }

    /// Serves a read.
    pub async fn read(
        &self,
        query: ReadQuery,
        consistency: Consistency,
    ) -> Result<ReadOutcome, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Read {
            query,
            consistency,
            reply,
        })?;
        self.await_answer(answer).await
    }

    /// Keeps a lease alive: the leader restarts its countdown, then confirms through a
    /// linearizable read that it still led afterwards and that the lease still exists then.
    /// Answers the lease (`None`: it does not exist, or its expiry is already under way).
    pub async fn lease_keepalive(&self, lease_id: u64) -> Result<Option<LeaseView>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::LeaseKeepalive { lease_id, reply })?;
        let refreshed = self.await_answer(answer).await?;
        // The read confirms a "not found" too: a deposed leader that has not yet heard of the
        // new term does not know the leases granted since, and must not call them gone.
        let outcome = self
            .read(ReadQuery::Lease(lease_id), Consistency::Linearizable)
            .await?;
        match (refreshed, outcome.lease) {
            (true, lease) => Ok(lease),
            (false, None) => Ok(None),
            // Granted (or applied here) between the refresh and the read: not refreshed, ask
            // again.
            (false, Some(_)) => Err(NodeError::Unavailable(format!(
                "lease {lease_id} was not yet known when the keepalive came; retry"
            ))),
        }
    }

    /// Hands leadership to `to` (or the best follower) if this node leads.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::TransferLeadership { to, reply })?;
        self.await_answer(answer).await
    }

    /// Looks inside the node (status and, if asked, the log and the state hash) for checks.
    pub async fn inspect(&self, scope: InspectScope) -> Result<Inspection, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Inspect { scope, reply })?;
        match env::timeout(self.config.request_timeout, answer).await {
            Ok(Ok(inspection)) => Ok(inspection),
            Ok(Err(_)) => Err(NodeError::Unavailable("node stopped".into())),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// A point-in-time copy of the state machine, for work that must not run in the driver
    /// (hashing the whole store).
    pub async fn state_view(&self) -> Result<crate::kv::KvStore, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::StateView { reply })?;
        match env::timeout(self.config.request_timeout, answer).await {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(_)) => Err(NodeError::Unavailable("node stopped".into())),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Lists the members or changes the membership (answered once the change committed).
    pub async fn membership(
        &self,
        op: members::MembershipOp,
        cas: Option<Index>,
    ) -> Result<members::MembershipAnswer, members::MembershipError> {
        use members::MembershipError;
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Membership { op, cas, reply })
            .map_err(|error| MembershipError::Unavailable(error.to_string()))?;
        match env::timeout(self.config.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(MembershipError::Timeout),
        }
    }

    /// The member with `id`, as the current configuration names it.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.directory.member(id)
    }

    /// Hands inbound Raft messages to the driver. Drops them (Raft retries) when the queue is full.
    pub fn deliver(&self, messages: Vec<Message>) -> Result<(), NodeError> {
        for message in messages {
            if self.inbound.try_send(message).is_err() {
                return Err(NodeError::Overloaded("raft inbound queue is full".into()));
            }
        }
        Ok(())
    }

    /// Hands a snapshot chunk to the receiver task and waits for its answer (the next offset
    /// the node expects, or why it stops the transfer).
    pub async fn deliver_snapshot_chunk(
        &self,
        header: rpc::ChunkHeader,
        bytes: Bytes,
    ) -> Result<rpc::ChunkAnswer, NodeError> {
        let (reply, answer) = oneshot::channel();
        let chunk = snapshot_transfer::InboundChunk {
            header,
            bytes,
            reply,
        };
        if self.snapshot_chunks.try_send(chunk).is_err() {
            return Err(NodeError::Overloaded(
                "snapshot receiver queue is full".into(),
            ));
        }
        match env::timeout(self.config.request_timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(NodeError::Unavailable("node stopped".into())),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// The node's current status. A node whose driver task is gone (it panicked or ended)
    /// reports that as its failure: its last published status is no longer true.
    pub fn status(&self) -> NodeStatus {
        let mut status = self.status.lock().expect("status lock poisoned").clone();
        if self.driver_stopped() && status.failure.is_none() {
            status.failure = Some(DRIVER_STOPPED.to_string());
        }
        status
    }

    /// Whether the driver task is gone (its request queue has no receiver any more).
    pub fn driver_stopped(&self) -> bool {
        self.requests.is_closed()
    }

    /// A handle whose driver is already gone, as after a panic in the driver task (tests of
    /// what the API answers then).
    #[cfg(test)]
    pub(crate) fn with_driver_gone(config: NodeConfig, status: NodeStatus) -> NodeHandle {
        let cluster = ClusterInfo::new(&config.name, &config.listen_addr, Vec::new());
        let directory = Arc::new(members::Directory::new(cluster.members.clone(), Vec::new()));
        let (requests, _) = mpsc::channel(1);
        let (inbound, _) = mpsc::channel(1);
        let (snapshot_chunks, _) = mpsc::channel(1);
        NodeHandle {
            requests,
            inbound,
            snapshot_chunks,
            status: Arc::new(Mutex::new(status)),
            cluster: Arc::new(cluster),
            directory,
            watches: Arc::new(watch::WatchHub::new(config.watch.clone(), 0)),
            config: Arc::new(config),
            metrics: NodeMetrics::new(),
        }
    }

    /// Resolves when the driver task is gone (it panicked or ended).
    pub async fn wait_driver_stopped(&self) {
        self.requests.closed().await;
    }

    fn submit(&self, request: Request) -> Result<(), NodeError> {
        self.requests.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                NodeError::Overloaded("request queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                NodeError::Unavailable("node is shutting down".into())
            }
        })
    }

    async fn await_answer<T>(
        &self,
        answer: oneshot::Receiver<Result<T, NodeError>>,
    ) -> Result<T, NodeError> {
        match env::timeout(self.config.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            // The driver is gone: a write it took may still commit through the peers.
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown(
                "the node stopped while serving the request".into(),
            )),
            Err(_) => Err(NodeError::Timeout),
        }
    }
}

/// Starts a node: opens its WAL, rebuilds its state, and runs its driver and peer links.
/// The HTTP server is started separately (see [`crate::http::serve`]) so that peers can say
/// hello before the membership is known.
pub async fn start(
    config: NodeConfig,
    client: crate::http::client::HttpClient,
) -> Result<NodeHandle, StartError> {
    driver::start(config, client).await
}
