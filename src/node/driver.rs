//! The driver: one task per node that owns the core, the WAL and the state machine, and handles
//! every `Ready` in order: send what may leave at once, persist and sync, send what needed the
//! sync, apply, serve reads, advance. Inputs that arrive while a sync is in flight queue up and
//! go into the next single sync (group commit).
//!
//! Snapshots never stall the loop: when the policy says so ([`Driver::maybe_snapshot`]) the
//! driver freezes the store (an O(1) clone of persistent maps) at its applied index, with the
//! membership in force at that index, and a background task streams it to a file in
//! `<data-dir>/snap/`. Meanwhile the loop keeps applying, replicating and answering. When the
//! file is durable the task reports on a channel the loop selects on; the driver then records
//! the snapshot in the WAL (meta only), compacts the core (keeping a tail of entries) and the
//! WAL, and removes the older snapshot file. At most one write runs at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{self, ClusterInfo};
use super::leases::{Keepalive, LeaseClock};
use super::members;
use super::snapshot_transfer::{self, PreparedInstall, TransferOptions};
use super::transport::Transport;
use super::watch::{SharedWatchHub, WatchHub};
use super::{
    Consistency, InspectScope, Inspection, LeaseView, NodeConfig, NodeError, NodeEvent, NodeHandle,
    NodeMetrics, NodeStatus, ReadOutcome, ReadQuery, Request, ValueView, WriteOutcome,
};
use crate::env;
use crate::http::client::HttpClient;
use crate::kv::{self, KvOptions, KvStore, WriteOp, WriteRequest, WriteResult};
use crate::plants::{self, Plant};
use crate::raft::invariants::{entry_digest, NodeView};
use crate::raft::{
    self, Config, EntryKind, Error as RaftError, HardState, Index, Membership, Message, NodeId,
    Raft, ReadContext, Ready, Role, Snapshot, SnapshotMeta, Term,
};
use crate::snapshot::{self, SnapshotError, WrittenSnapshot};
use crate::wal::{Wal, WalOptions};

/// Inputs handled between two `Ready`s at most, so one flood cannot starve the sync.
/// Election timeouts without a leader's message after which a node that is no voter probes its
/// peers for its own removal ([`Driver::maybe_probe_membership`]).
const MEMBERSHIP_PROBE_ELECTIONS: u64 = 4;
const INPUTS_PER_ROUND_MAX: usize = 8192;
/// Capacity of the inbound Raft message queue.
const INBOUND_QUEUE_MAX: usize = 16_384;
/// With the `driver-panic` plant, the driver panics when it applies this index.
const PLANTED_PANIC_INDEX: Index = 40;
/// A gap between two driver rounds over this many ticks (and at least [`LEASE_STALL_MIN`])
/// pauses the leader's lease countdowns (see `node::leases`).
const LEASE_STALL_TICKS: u32 = 10;
const LEASE_STALL_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Entry bytes in one `Append` at most (the core's default), and at most this share of the peer
/// RPC body limit, so a batch of appends always fits in a body.
const APPEND_BYTES_MAX: u64 = 1 << 20;
const APPEND_SHARE_OF_RPC_BODY: u64 = 4;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The membership could not be established.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The WAL could not be opened (corruption, I/O).
    #[error("cannot open the WAL: {0}")]
    Wal(String),
    /// The persisted state is inconsistent.
    #[error("cannot restore state: {0}")]
    Restore(String),
}

/// What the background snapshot writer reports when it is done.
struct SnapshotDone {
    meta: SnapshotMeta,
    /// When the store was frozen.
    started: env::Instant,
    result: Result<WrittenSnapshot, SnapshotError>,
}

/// Progress towards the next snapshot ([`NodeConfig::snapshot_entries`],
/// [`NodeConfig::snapshot_bytes`]).
#[derive(Debug, Default)]
struct SnapshotPolicy {
    /// The applied index when the store was last frozen for a snapshot, a snapshot was
    /// installed, or the node started.
    last_index: Index,
    /// Bytes of entry data applied since then.
    bytes_applied: u64,
    /// The applied index of the snapshot being written, if one is.
    writing_index: Option<Index>,
}

/// The applied index at which the next snapshot is due by entry count: the first index at least
/// half an `interval` past `last` that lies on this node's `phase` (mod `interval`). So
/// snapshots come every `interval` entries on average, between half and one and a half
/// intervals apart, and members whose phases differ never freeze and write at the same index.
///
/// Measured with 3 nodes on 2 cores (`benches/snapshot-stall.sh`, wrk, snapshots every 20,000
/// entries): when every member wrote its snapshot at the same index, p99 was 15.5-31.6 ms
/// (median of 3 runs 15.8 ms); with the phases spread, 10.9-11.3 ms (median 11.1 ms). A quorum
/// of members busy writing at once is what clients waited for. hashicorp/raft staggers its
/// snapshot checks at random for the same reason; here the phase is fixed, so it is the same in
/// every run of a simulated seed.
fn snapshot_due_at(last: Index, interval: u64, phase: u64) -> Index {
    let interval = interval.max(1);
    let earliest = last.saturating_add(interval - interval / 2);
    let behind_phase = (phase % interval + interval - earliest % interval) % interval;
    earliest.saturating_add(behind_phase)
}

/// This node's snapshot phase: its rank among the configuration's members (in id order)
/// spreads the members evenly over the interval.
fn snapshot_phase(membership: &Membership, self_id: NodeId, interval: u64) -> u64 {
    let members: Vec<NodeId> = membership.members().collect();
    let rank = members.iter().take_while(|&&id| id < self_id).count();
    let share = u128::from(interval) * rank as u128 / members.len().max(1) as u128;
    u64::try_from(share).unwrap_or(0)
}

/// A write waiting for its entry to apply.
struct PendingWrite {
    term: Term,
    reply: oneshot::Sender<Result<WriteOutcome, NodeError>>,
}

/// A linearizable read waiting for its read index to apply.
struct PendingRead {
    query: ReadQuery,
    reply: oneshot::Sender<Result<ReadOutcome, NodeError>>,
}

struct Driver {
    raft: Raft,
    wal: Wal,
    kv: KvStore,
    config: Arc<NodeConfig>,
    cluster: Arc<ClusterInfo>,
    /// Who is in the cluster now; rebuilt when the core's configuration changes.
    directory: Arc<members::Directory>,
    /// Membership changes waiting for their entry to apply.
    member_waiters: members::Waiters,
    /// Notices a committed configuration without this node.
    self_removal: members::SelfRemoval,
    /// The configuration `directory` and the transport were last built from.
    published_membership: Membership,
    /// The membership at the commit index when the directory was last rebuilt.
    published_committed: Membership,
    transport: Transport,
    metrics: NodeMetrics,
    status: Arc<Mutex<NodeStatus>>,
    requests: mpsc::Receiver<Request>,
    inbound: mpsc::Receiver<Message>,
    /// Snapshots a leader streamed to this node, verified and loaded by the receiver task.
    installs: mpsc::Receiver<PreparedInstall>,
    /// The store of the snapshot last stepped into the core, swapped in when the core's `Ready`
    /// carries that snapshot.
    prepared_install: Option<(SnapshotMeta, KvStore)>,
    /// Writes by log index.
    pending_writes: BTreeMap<Index, PendingWrite>,
    /// Linearizable reads collected since the last read-index request.
    reads_unsent: Vec<PendingRead>,
    /// Reads waiting for leadership confirmation, by context.
    reads_confirming: BTreeMap<ReadContext, Vec<PendingRead>>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    reads_applying: Vec<(Index, PendingRead)>,
    next_read_context: ReadContext,
    /// The last term and vote that were synced: a commit-only hard state change needs no fsync.
    synced_term_vote: (Term, Option<u64>),
    last_leader: Option<u64>,
    /// Ticks since a leader's message (or since the last membership probe): a node that is no
    /// voter never campaigns, so it probes its peers when a leader stays silent (see
    /// [`MEMBERSHIP_PROBE_ELECTIONS`]).
    quiet_ticks: u64,
    /// Set when storage failed: the node stops acknowledging anything.
    failure: Option<String>,
    /// `<data-dir>/snap/`.
    snapshot_dir: PathBuf,
    snapshot_policy: SnapshotPolicy,
    /// Given to each background snapshot writer; the driver keeps one so `recv` never ends.
    snapshot_done_tx: mpsc::Sender<SnapshotDone>,
    snapshot_done: mpsc::Receiver<SnapshotDone>,
    /// The lease countdowns while this node leads (empty otherwise).
    lease_clock: LeaseClock,
    /// Every key change applied, for watches (see `node::watch`).
    watches: SharedWatchHub,
    /// Reused buffer for the changes of one applied entry.
    changes: Vec<kv::KeyChange>,
}

pub(super) async fn start(
    config: NodeConfig,
    client: HttpClient,
) -> Result<NodeHandle, StartError> {
    let config = Arc::new(config);
    let incarnation = cluster::load_or_create_incarnation(&config.data_dir).await?;
    let cluster = Arc::new(cluster::establish(&config, &client, incarnation).await?);
    let (wal, restore) = Wal::open(
        &config.data_dir.join("wal"),
        WalOptions {
            segment_bytes_max: config.wal_segment_bytes_max,
        },
    )
    .await
    .map_err(|e| StartError::Wal(e.to_string()))?;
    let mut restore = restore;
    if plants::active(Plant::ForgetVote) {
        tracing::warn!("planted bug: forgetting the persisted vote");
        restore.hard_state.vote = None;
    }

    let kv_options = KvOptions {
        idempotency_keys_max: config.idempotency_keys_max,
    };
    let snapshot_dir = snapshot::snapshot_dir(&config.data_dir);
    prepare_snapshot_dir(&config.data_dir, &snapshot_dir)
        .await
        .map_err(StartError::Restore)?;
    let kv = match &mut restore.snapshot {
        Some(snapshot) => {
            let kv = restore_store(&snapshot_dir, snapshot, kv_options.clone())
                .await
                .map_err(StartError::Restore)?;
            // The state lives in the file; the core never holds it.
            snapshot.data = Bytes::new();
            kv
        }
        None => KvStore::new(kv_options.clone()),
    };
    let recorded_index = restore.snapshot.as_ref().map(|s| s.meta.index);
    let restored_index = kv.applied_index();
    remove_snapshot_files_except(&snapshot_dir, recorded_index)
        .await
        .map_err(StartError::Restore)?;
    let synced_term_vote = (restore.hard_state.term, restore.hard_state.vote);
    let mut raft_config = Config::new(cluster.self_id);
    raft_config.election_ticks = config.election_ticks;
    raft_config.heartbeat_ticks = config.heartbeat_ticks;
    raft_config.max_bytes_per_append =
        APPEND_BYTES_MAX.min(config.rpc_body_bytes_max as u64 / APPEND_SHARE_OF_RPC_BODY);
    let mut raft = Raft::new(
        raft_config,
        members::bootstrap_membership(&cluster),
        restore,
        env::rng(),
    )
    .map_err(|e| StartError::Restore(e.to_string()))?;
    let published_membership = raft.membership().clone();
    let published_committed = raft.committed_membership().clone();
    let directory = Arc::new(members::Directory::new(
        members::members_of(&published_membership, &cluster),
        published_committed.removed.clone(),
    ));
    directory.replace(
        members::members_of(&published_membership, &cluster),
        members::members_of(&published_committed, &cluster),
        published_committed.removed.clone(),
    );
    if published_membership.voters.len() == 1
        && published_membership.voters.contains(&cluster.self_id)
    {
        // The only voter wins its own election: no reason to wait an election timeout.
        raft.campaign();
    }

    let metrics = NodeMetrics::new();
    let raft_status = raft.status();
    let status = Arc::new(Mutex::new(NodeStatus {
        role: raft_status.soft_state.role,
        term: raft_status.soft_state.term,
        leader: raft_status.soft_state.leader,
        commit_index: raft_status.hard_state.commit,
        applied_index: raft_status.applied_index,
        last_index: raft_status.last_index,
        failure: None,
    }));
    let transfer = TransferOptions {
        cluster_id: cluster.cluster_id,
        self_id: cluster.self_id,
        self_incarnation: incarnation,
        data_dir: config.data_dir.clone(),
        chunk_bytes: config.snapshot_transfer_chunk_bytes.max(1),
        body_bytes_max: config.rpc_body_bytes_max,
        transfers_max: config.snapshot_transfers_max,
        rpc_timeout: config.rpc_timeout,
        peer_secret: config.peer_secret.clone(),
    };
    let transport = Transport::new(
        &cluster,
        directory.clone(),
        client,
        config.rpc_timeout,
        config.rpc_body_bytes_max,
        transfer.clone(),
        &metrics,
    );
    let (installs_tx, installs) = mpsc::channel(1);
    let snapshot_chunks = snapshot_transfer::spawn_receiver(
        transfer,
        kv_options,
        config.snapshot_receive_bytes_max,
        installs_tx,
        metrics.clone(),
    );
    let (requests_tx, requests) = mpsc::channel(config.request_queue_max);
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_MAX);
    let (snapshot_done_tx, snapshot_done) = mpsc::channel(1);
    tracing::info!(
        node = %config.name,
        id = cluster.self_id,
        members = cluster.members.len(),
        term = raft_status.hard_state.term,
        last_index = raft_status.last_index,
        "node started"
    );
    let self_removal = members::SelfRemoval::new(&raft);
    let watches = Arc::new(WatchHub::new(config.watch.clone(), kv.applied_index()));
    let driver = Driver {
        raft,
        wal,
        kv,
        config: config.clone(),
        cluster: cluster.clone(),
        directory: directory.clone(),
        member_waiters: members::Waiters::default(),
        self_removal,
        published_membership,
        published_committed,
        transport,
        metrics: metrics.clone(),
        status: status.clone(),
        requests,
        inbound,
        installs,
        prepared_install: None,
        pending_writes: BTreeMap::new(),
        reads_unsent: Vec::new(),
        reads_confirming: BTreeMap::new(),
        reads_applying: Vec::new(),
        next_read_context: 1,
        synced_term_vote,
        last_leader: None,
        quiet_ticks: 0,
        failure: None,
        snapshot_dir,
        snapshot_policy: SnapshotPolicy {
            last_index: restored_index,
            ..SnapshotPolicy::default()
        },
        snapshot_done_tx,
        snapshot_done,
        lease_clock: LeaseClock::default(),
        watches: watches.clone(),
        changes: Vec::new(),
    };
    env::spawn(driver.run());
    Ok(NodeHandle {
        requests: requests_tx,
        inbound: inbound_tx,
        snapshot_chunks,
        status,
        cluster,
        directory,
        config,
        metrics,
        watches,
    })
}

impl Driver {
    async fn run(mut self) {
        let tick = self.config.tick_interval;
        let mut next_tick = env::now() + tick;
        self.publish_status();
        loop {
            let wait = next_tick.duration_since(env::now());
            let mut handled = 0usize;
            tokio::select! {
                // A fixed polling order: an unbiased select draws from tokio's per-thread RNG,
                // seeded from a process-wide counter no simulation seed controls.
                biased;
                _ = env::sleep(wait) => {}
                request = self.requests.recv() => match request {
                    Some(request) => { self.handle_request(request); handled += 1; }
                    None => break,
                },
                message = self.inbound.recv() => if let Some(message) = message {
                    self.handle_message(message);
                    handled += 1;
                },
                install = self.installs.recv() => if let Some(install) = install {
                    self.handle_prepared_install(install);
                    handled += 1;
                },
                done = self.snapshot_done.recv() => if let Some(done) = done {
                    if let Err(reason) = self.handle_snapshot_done(done).await {
                        self.fail(reason);
                    }
                },
            }
            // Batch whatever else is already queued into this round (and its single fsync).
            while handled < INPUTS_PER_ROUND_MAX {
                if let Ok(message) = self.inbound.try_recv() {
                    self.handle_message(message);
                } else if let Ok(request) = self.requests.try_recv() {
                    self.handle_request(request);
                } else {
                    break;
                }
                handled += 1;
            }
            // One tick per round at most, and a late round does not catch up on missed ticks
            // (like a Go ticker): a node starved of CPU must not see a whole election timeout
            // pass in one burst while its peers' messages still sit in the queue.
            let now = env::now();
            if now >= next_tick {
                if self.failure.is_none() {
                    self.raft.tick();
                    self.maybe_probe_membership();
                }
                next_tick += tick;
                if now >= next_tick {
                    next_tick = now + tick;
                }
            }
            self.maybe_expire_leases();
            self.flush_reads();
            if let Some(reason) = self.directory.removal() {
                // Removed: keep no promise and answer nothing as a member (the process exits).
                tracing::error!(node = %self.config.name, %reason, "removed from the cluster: stopping");
                self.failure = Some(reason);
                self.publish_status();
                break;
            }
            if self.failure.is_none() && self.raft.has_ready() {
                if let Err(reason) = self.handle_ready().await {
                    self.fail(reason);
                }
            }
        }
        tracing::info!(node = %self.config.name, "driver stopped");
    }

    /// A learner (or a node its own configuration does not name) never campaigns, so it never
    /// meets the 410 Gone that tells a removed voter it was removed: if it was removed while cut
    /// off, the leader stopped sending before the removal reached it, and it would wait for
    /// good (simulator, seed 266 of the 1,000-seed sweep). After
    /// [`MEMBERSHIP_PROBE_ELECTIONS`] election timeouts without a leader's message, it asks its
    /// peers (an envelope without messages) whether it is still a member; a voter does not need
    /// to, its campaigns ask.
    fn maybe_probe_membership(&mut self) {
        self.quiet_ticks += 1;
        let probe_after = MEMBERSHIP_PROBE_ELECTIONS * u64::from(self.config.election_ticks);
        if self.quiet_ticks < probe_after {
            return;
        }
        self.quiet_ticks = 0;
        if !self
            .raft
            .membership()
            .voters
            .contains(&self.cluster.self_id)
        {
            tracing::debug!(node = %self.config.name, "no leader heard: asking the peers whether this node is still a member");
            self.transport.probe_membership();
        }
    }

    fn handle_message(&mut self, message: Message) {
        if self.failure.is_some() {
            return;
        }
        if message.body.is_leader_traffic() {
            self.quiet_ticks = 0;
        }
        if let Err(error) = self.raft.step(message) {
            tracing::debug!(%error, "dropped raft message");
        }
    }

    /// A streamed snapshot is on disk and loaded: step its `InstallSnapshot` into the core and
    /// keep the store until the core's `Ready` says to install it (the core may also refuse it,
    /// if it already committed past it or the leader's term is stale).
    fn handle_prepared_install(&mut self, install: PreparedInstall) {
        if self.failure.is_some() {
            return;
        }
        self.quiet_ticks = 0;
        let crate::raft::MessageBody::InstallSnapshot { snapshot } = &install.message.body else {
            unreachable!("the receiver only prepares InstallSnapshot messages");
        };
        self.prepared_install = Some((snapshot.meta.clone(), install.store));
        if let Err(error) = self.raft.step(install.message) {
            tracing::debug!(%error, "prepared snapshot refused by the core");
            self.prepared_install = None;
        }
    }

    fn handle_request(&mut self, request: Request) {
        if let Some(reason) = &self.failure {
            let error = NodeError::Unavailable(reason.clone());
            match request {
                Request::Write { reply, .. } => drop(reply.send(Err(error))),
                Request::Read { reply, .. } => drop(reply.send(Err(error))),
                Request::TransferLeadership { reply, .. } => drop(reply.send(Err(error))),
                Request::LeaseKeepalive { reply, .. } => drop(reply.send(Err(error))),
                Request::Inspect { scope, reply } => drop(reply.send(self.inspect(scope))),
                Request::StateView { reply } => drop(reply.send(self.kv.clone())),
                Request::Membership { reply, .. } => {
                    drop(reply.send(Err(members::MembershipError::Unavailable(reason.clone()))))
                }
            }
            return;
        }
        match request {
            Request::Write { request, reply } => {
                match self.raft.propose(self.encode_command(&request)) {
                    Ok(index) => {
                        self.metrics.proposals.inc();
                        let term = self.raft.soft_state().term;
                        self.pending_writes
                            .insert(index, PendingWrite { term, reply });
                    }
                    Err(error) => {
                        self.metrics.proposals_failed.inc();
                        let _ = reply.send(Err(node_error(error)));
                    }
                }
            }
            Request::Read {
                query,
                consistency: Consistency::Stale,
                reply,
            } => {
                let _ = reply.send(Ok(self.serve_read(&query)));
            }
            Request::Read {
                query,
                consistency: Consistency::Linearizable,
                reply,
            } => {
                let status = self.raft.status();
                if status.soft_state.role != Role::Leader {
                    let _ = reply.send(Err(NodeError::NotLeader {
                        leader: status.soft_state.leader,
                    }));
                } else {
                    self.reads_unsent.push(PendingRead { query, reply });
                }
            }
            Request::TransferLeadership { to, reply } => {
                let _ = reply.send(self.transfer_leadership(to));
            }
            Request::Inspect { scope, reply } => {
                let _ = reply.send(self.inspect(scope));
            }
            Request::LeaseKeepalive { lease_id, reply } => {
                let _ = reply.send(self.handle_lease_keepalive(lease_id));
            }
            Request::StateView { reply } => {
                let _ = reply.send(self.kv.clone());
            }
            Request::Membership { op, cas, reply } => members::handle_request(
                &mut self.raft,
                &self.cluster,
                &self.directory,
                &mut self.member_waiters,
                op,
                cas,
                reply,
            ),
        }
    }

    /// A command as this node proposes it: stamped with its quota (see `kv`'s module docs), so
    /// every replica decides the quota from the entry, never from its own flag.
    fn encode_command(&self, request: &WriteRequest) -> Bytes {
        let stamp = kv::CommandStamp {
            quota_bytes: self.config.quota_bytes,
        };
        kv::encode_command(request, stamp)
    }

    /// Rebuilds the directory and the peer links when the core's configuration changed (on
    /// append, committed or not: thesis §4.1).
    fn maybe_publish_membership(&mut self) -> bool {
        if self.raft.membership() == &self.published_membership
            && self.raft.committed_membership() == &self.published_committed
        {
            return false;
        }
        let latest_changed = self.raft.membership() != &self.published_membership;
        self.published_membership = self.raft.membership().clone();
        self.published_committed = self.raft.committed_membership().clone();
        let members = members::members_of(&self.published_membership, &self.cluster);
        self.directory.replace(
            members,
            members::members_of(&self.published_committed, &self.cluster),
            self.published_committed.removed.clone(),
        );
        self.transport.sync_peers(&self.directory.linked_members());
        if latest_changed {
            tracing::info!(
                node = %self.config.name,
                voters = ?self.published_membership.voters,
                learners = ?self.published_membership.learners,
                config_index = self.raft.membership_index(),
                "configuration changed"
            );
        }
        latest_changed
    }

    /// Restarts a lease's countdown if this node leads (the caller then confirms leadership
    /// with a linearizable read, see `NodeHandle::lease_keepalive`).
    fn handle_lease_keepalive(&mut self, lease_id: u64) -> Result<bool, NodeError> {
        let soft = self.raft.soft_state();
        if soft.role != Role::Leader {
            return Err(NodeError::NotLeader {
                leader: soft.leader,
            });
        }
        let found = self.lease_clock.keepalive(&self.kv, lease_id, env::now());
        Ok(found == Keepalive::Refreshed)
    }

    /// Proposes the expiry of every lease whose countdown ran out on this leader (a bounded
    /// number per round). Followers hold no countdowns, so they never expire anything.
    fn maybe_expire_leases(&mut self) {
        if self.failure.is_some() || self.raft.soft_state().role != Role::Leader {
            return;
        }
        let now = env::now();
        let stall_threshold = (self.config.tick_interval * LEASE_STALL_TICKS).max(LEASE_STALL_MIN);
        let paused = self.lease_clock.observe_round(now, stall_threshold);
        if !paused.is_zero() {
            tracing::info!(node = %self.config.name, paused_ms = paused.as_millis() as u64, "leader stalled or its clock jumped: lease countdowns paused");
        }
        for lease_id in self.lease_clock.take_due(now) {
            let request = WriteRequest {
                idempotency_key: None,
                op: WriteOp::LeaseExpire { lease_id },
            };
            match self.raft.propose(self.encode_command(&request)) {
                Ok(index) => {
                    tracing::info!(node = %self.config.name, lease_id, index, "lease expired, expiry proposed");
                }
                Err(error) => {
                    tracing::debug!(node = %self.config.name, lease_id, %error, "lease expiry not proposed");
                    self.lease_clock.unmark_expiring(lease_id);
                }
            }
        }
    }

    /// Starts (as a new leader) or drops (as a follower) the lease countdowns.
    fn on_leadership_for_leases(&mut self, role: Role) {
        if role != Role::Leader {
            self.lease_clock.clear();
            return;
        }
        let planted = plants::active(Plant::LeaseCountdownNotRestarted);
        self.lease_clock
            .start_leading(&self.kv, env::now(), |ttl_ms| {
                if planted {
                    // The planted bug: carry no countdown over, as if every lease were due.
                    std::time::Duration::ZERO
                } else {
                    std::time::Duration::from_millis(ttl_ms)
                }
            });
    }

    fn inspect(&self, scope: InspectScope) -> Inspection {
        let status = self.raft.status();
        let snapshot_index = status.snapshot_index;
        let snapshot_term = self.raft.term_at(snapshot_index).unwrap_or(0);
        let entries = if scope.log {
            self.raft.entries(snapshot_index + 1, status.last_index + 1)
        } else {
            &[]
        };
        let log: Vec<_> = entries
            .iter()
            .map(|e| (e.index, e.term, entry_digest(e.kind, &e.data)))
            .collect();
        let config_indexes: Vec<Index> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Config)
            .map(|e| e.index)
            .collect();
        let view = NodeView {
            id: status.id,
            term: status.soft_state.term,
            role: status.soft_state.role,
            commit_index: status.hard_state.commit,
            snapshot_index,
            snapshot_term,
            log,
        };
        Inspection {
            kv_applied_index: self.kv.applied_index(),
            state_hash: scope.state_hash.then(|| self.kv.state_hash()),
            status,
            view,
            config_indexes,
        }
    }

    fn observe(&self, event: NodeEvent) {
        if let Some(observer) = &self.config.observer {
            let _ = observer.send(event);
        }
    }

    fn transfer_leadership(&mut self, to: Option<u64>) -> Result<(), NodeError> {
        let status = self.raft.status();
        if status.soft_state.role != Role::Leader {
            return Err(NodeError::NotLeader {
                leader: status.soft_state.leader,
            });
        }
        let target = to.or_else(|| {
            status
                .membership
                .voters
                .iter()
                .copied()
                .find(|id| *id != self.cluster.self_id)
        });
        match target {
            None => Err(NodeError::Invalid(
                "no other voter to hand leadership to".into(),
            )),
            Some(target) => self.raft.transfer_leadership(target).map_err(node_error),
        }
    }

    /// All linearizable reads collected this round share one ReadIndex request.
    fn flush_reads(&mut self) {
        if self.reads_unsent.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads_unsent);
        let context = self.next_read_context;
        self.next_read_context += 1;
        match self.raft.read_index(context) {
            Ok(()) => {
                self.reads_confirming.insert(context, reads);
            }
            Err(error) => {
                let error = node_error(error);
                for read in reads {
                    let _ = read.reply.send(Err(error.clone()));
                }
            }
        }
    }

    async fn handle_ready(&mut self) -> Result<(), String> {
        let mut ready: Ready = self.raft.ready();
        // Links to members this ready's messages go to must exist before they are sent.
        self.maybe_publish_membership();
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft);
        }
        self.transport.send(std::mem::take(&mut ready.messages));

        let mut needs_sync = false;
        if let Some(snapshot) = &ready.snapshot {
            self.install_snapshot(snapshot).await?;
            self.answer_writes_under_snapshot(&snapshot.meta);
            self.member_waiters.covered_by_snapshot(snapshot.meta.index);
            self.observe(NodeEvent::Restored {
                node: self.cluster.self_id,
                index: snapshot.meta.index,
            });
            needs_sync = true;
        }
        // A prepared store the core did not install (it had committed past it, or the term was
        // stale) is dropped now rather than held beside the live one.
        self.prepared_install = None;
        if !ready.entries.is_empty() {
            self.wal
                .append(&ready.entries)
                .await
                .map_err(|e| format!("wal append: {e}"))?;
            needs_sync = true;
        }
        if let Some(hard_state) = ready.hard_state {
            self.wal
                .save_hard_state(hard_state)
                .await
                .map_err(|e| format!("wal hard state: {e}"))?;
            needs_sync |= (hard_state.term, hard_state.vote) != self.synced_term_vote;
        }
        if needs_sync {
            let started = env::now();
            self.wal
                .sync()
                .await
                .map_err(|e| format!("wal sync: {e}"))?;
            self.metrics
                .fsync_seconds
                .observe(env::now().duration_since(started).as_secs_f64());
            let hard_state: HardState = self.raft.status().hard_state;
            self.synced_term_vote = (hard_state.term, hard_state.vote);
        }
        self.transport
            .send(std::mem::take(&mut ready.persisted_messages));

        for entry in std::mem::take(&mut ready.committed_entries) {
            self.apply(entry.index, entry.term, entry.kind, &entry.data);
            self.member_waiters.applied(entry.index, entry.term);
        }
        self.self_removal.maybe_notice(&self.raft, &self.directory);
        // A configuration that committed now tells the members it dropped (410).
        self.maybe_publish_membership();
        self.watches.publish_applied();
        for read_state in std::mem::take(&mut ready.read_states) {
            if let Some(reads) = self.reads_confirming.remove(&read_state.context) {
                self.reads_applying
                    .extend(reads.into_iter().map(|read| (read_state.index, read)));
            }
        }
        self.serve_applied_reads();
        self.raft.advance(&ready);
        self.maybe_snapshot();
        self.publish_status();
        Ok(())
    }

    fn on_soft_state(&mut self, soft: raft::SoftState) {
        tracing::info!(
            node = %self.config.name,
            role = soft.role.as_str(),
            term = soft.term,
            leader = soft.leader.unwrap_or(0),
            "role changed"
        );
        self.observe(NodeEvent::Role {
            node: self.cluster.self_id,
            term: soft.term,
            role: soft.role,
            leader: soft.leader,
        });
        self.transport
            .set_leadership((soft.role == Role::Leader).then_some(soft.term));
        self.on_leadership_for_leases(soft.role);
        if soft.leader != self.last_leader {
            self.metrics.leader_changes.inc();
            self.last_leader = soft.leader;
        }
        if soft.role != Role::Leader {
            // A deposed leader never releases pending read indexes; answer them now.
            let error = NodeError::NotLeader {
                leader: soft.leader,
            };
            for read in std::mem::take(&mut self.reads_unsent) {
                let _ = read.reply.send(Err(error.clone()));
            }
            for (_, reads) in std::mem::take(&mut self.reads_confirming) {
                for read in reads {
                    let _ = read.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Issue 8: a snapshot installed at index S covers the writes pending at indexes <= S, whose
    /// entries this node will never apply one by one. Such a write may be in the snapshot, so
    /// its outcome is unknown (504: retry with the same Idempotency-Key), unless the entry at its
    /// index is known to carry another term. Terms never decrease along a log, so a snapshot
    /// whose last term is below the write's term cannot hold it, and at S itself the snapshot's
    /// term decides.
    fn answer_writes_under_snapshot(&mut self, meta: &SnapshotMeta) {
        if let Some((index, _)) = self.pending_writes.first_key_value() {
            if *index <= meta.index {
                tracing::info!(
                    node = %self.config.name,
                    index,
                    snapshot_index = meta.index,
                    "a snapshot install covers pending writes"
                );
            }
        }
        if plants::active(Plant::DroppedUnderSnapshot) {
            // The planted lie: leave them to the next apply, which answers "dropped".
            return;
        }
        while let Some(entry) = self.pending_writes.first_entry() {
            if *entry.key() > meta.index {
                break;
            }
            let (index, pending) = entry.remove_entry();
            let answer = answer_under_snapshot(index, pending.term, meta);
            if answer == NodeError::Dropped {
                self.metrics.proposals_failed.inc();
            }
            let _ = pending.reply.send(Err(answer));
        }
    }

    fn apply(&mut self, index: Index, term: Term, kind: EntryKind, data: &Bytes) {
        assert!(
            !(plants::active(Plant::DriverPanic) && index >= PLANTED_PANIC_INDEX),
            "planted panic: the driver of {} panics applying index {index}",
            self.config.name
        );
        if self.config.observer.is_some() {
            let digest = entry_digest(kind, data);
            self.observe(NodeEvent::Applied {
                node: self.cluster.self_id,
                index,
                term,
                digest,
            });
        }
        self.snapshot_policy.bytes_applied += data.len() as u64;
        // A retry answered from the idempotency table answers with its first application's index.
        let mut answered_at = index;
        let result = match kind {
            EntryKind::Normal => {
                let result =
                    self.kv
                        .apply_recording(index, data, &mut self.changes)
                        .map(|applied| {
                            answered_at = applied.index;
                            applied.result
                        });
                match &result {
                    Ok(WriteResult::LeaseGranted { lease_id, ttl_ms }) => {
                        // Only a leader counts (a follower's clock decides nothing).
                        self.lease_clock.on_granted(*lease_id, *ttl_ms, env::now());
                    }
                    Ok(WriteResult::LeaseEnded { lease_id, .. }) => {
                        self.lease_clock.on_ended(*lease_id);
                    }
                    _ => {}
                }
                self.note_quota(&result);
                Some(result)
            }
            EntryKind::Noop | EntryKind::Config => {
                self.kv.apply_noop(index);
                None
            }
        };
        if self.config.observer.is_some() && !self.changes.is_empty() {
            self.observe(NodeEvent::Changed {
                node: self.cluster.self_id,
                index,
                changes: self.changes.clone(),
            });
        }
        self.watches
            .record(index, std::mem::take(&mut self.changes));
        // Everything at or below `index` is decided now.
        while let Some(entry) = self.pending_writes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (pending_index, pending) = entry.remove_entry();
            let answer = match (&result, pending_index == index && pending.term == term) {
                (Some(Ok(result)), true) => Ok(WriteOutcome {
                    index: answered_at,
                    result: result.clone(),
                }),
                (Some(Err(error)), true) => Err(NodeError::Invalid(error.to_string())),
                _ => {
                    self.metrics.proposals_failed.inc();
                    Err(NodeError::Dropped)
                }
            };
            let _ = pending.reply.send(answer);
        }
    }

    fn serve_applied_reads(&mut self) {
        if self.reads_applying.is_empty() {
            return;
        }
        let applied = self.kv.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_applying)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_applying = waiting;
        for (_, read) in ready {
            let outcome = self.serve_read(&read.query);
            let _ = read.reply.send(Ok(outcome));
        }
    }

    fn serve_read(&self, query: &ReadQuery) -> ReadOutcome {
        let index = self.kv.applied_index();
        let view = |key: &[u8], value: kv::Value| ValueView {
            key: key.to_vec(),
            data: value.data,
            create_index: value.create_index,
            mod_index: value.mod_index,
        };
        match query {
            ReadQuery::Get(key) => ReadOutcome {
                index,
                values: self
                    .kv
                    .get(key)
                    .map(|value| view(key, value))
                    .into_iter()
                    .collect(),
                more: false,
                lease: None,
            },
            ReadQuery::List {
                prefix,
                after,
                limit,
            } => {
                let found = self
                    .kv
                    .list(prefix, after.as_deref(), limit.saturating_add(1));
                let more = found.len() > *limit;
                let values = found
                    .into_iter()
                    .take(*limit)
                    .map(|(key, value)| view(key, value))
                    .collect();
                ReadOutcome {
                    index,
                    values,
                    more,
                    lease: None,
                }
            }
            ReadQuery::Lease(lease_id) => ReadOutcome {
                index,
                values: Vec::new(),
                more: false,
                lease: self.kv.lease(*lease_id).map(|lease| LeaseView {
                    lease_id: *lease_id,
                    ttl_ms: lease.ttl_ms,
                    remaining_ms: self
                        .lease_clock
                        .remaining(*lease_id, env::now())
                        .map(|left| left.as_millis() as u64),
                    keys: lease.keys.iter().map(|key| key.to_vec()).collect(),
                }),
            },
        }
    }

    /// Starts a background snapshot once enough entries or bytes were applied since the last
    /// one and none is being written; returns whether it started one.
    fn maybe_snapshot(&mut self) -> bool {
        let policy = &self.snapshot_policy;
        if policy.writing_index.is_some() {
            return false;
        }
        let applied = self.kv.applied_index();
        let interval = self.config.snapshot_entries;
        if policy.bytes_applied < self.config.snapshot_bytes
            && (applied < policy.last_index.saturating_add(interval - interval / 2)
                || applied
                    < snapshot_due_at(
                        policy.last_index,
                        interval,
                        snapshot_phase(self.raft.membership(), self.cluster.self_id, interval),
                    ))
        {
            return false;
        }
        let snapshot_index = self.raft.snapshot().map_or(0, |s| s.meta.index);
        if applied <= snapshot_index {
            return false;
        }
        let Some(meta) = self.raft.snapshot_meta_at(applied) else {
            return false;
        };
        // O(1): the persistent maps are shared until the loop writes to them again.
        let view = self.kv.clone();
        let dir = self.snapshot_dir.clone();
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let file_sync = if plants::active(Plant::SnapshotUnsynced) {
            snapshot::FileSync::SkipForPlantedBug
        } else {
            snapshot::FileSync::Sync
        };
        let done = self.snapshot_done_tx.clone();
        let started = env::now();
        self.snapshot_policy = SnapshotPolicy {
            last_index: applied,
            bytes_applied: 0,
            writing_index: Some(applied),
        };
        tracing::debug!(node = %self.config.name, index = applied, "snapshot write started");
        self.observe(NodeEvent::SnapshotWriting {
            node: self.cluster.self_id,
            index: applied,
        });
        env::spawn(async move {
            let result = snapshot::write_with(&dir, &meta, &view, chunk_bytes, file_sync).await;
            drop(view);
            // The driver keeps the receiver as long as it runs.
            let _ = done
                .send(SnapshotDone {
                    meta,
                    started,
                    result,
                })
                .await;
        });
        true
    }

    /// The background writer finished: record the snapshot in the WAL, compact the core (keeping
    /// a tail) and the WAL, and remove the older file. A write error fails the node, as any
    /// storage error does.
    async fn handle_snapshot_done(&mut self, done: SnapshotDone) -> Result<(), String> {
        self.snapshot_policy.writing_index = None;
        if self.failure.is_some() {
            return Ok(());
        }
        let written = done.result.map_err(|e| format!("snapshot write: {e}"))?;
        let index = done.meta.index;
        let snapshot_index = self.raft.snapshot().map_or(0, |s| s.meta.index);
        if index <= snapshot_index {
            // A snapshot from the leader was installed meanwhile; this one is older.
            fs_remove(&written.path).await?;
            return Ok(());
        }
        let finish_started = env::now();
        let record = Snapshot {
            meta: done.meta,
            data: Bytes::new(),
        };
        self.wal
            .save_snapshot(&record)
            .await
            .map_err(|e| format!("wal snapshot: {e}"))?;
        let tail_entries = self.compaction_tail(index, written.file_bytes);
        self.raft
            .compact_keeping(index, Bytes::new(), tail_entries)
            .map_err(|e| format!("compact: {e}"))?;
        self.remove_older_snapshot_files(index);
        // Requests wait while the loop records the snapshot (about 6 ms a snapshot measured on
        // loopback with fsync on, against about 250 ms to write the file in the background).
        let now = env::now();
        self.metrics
            .snapshot_finish_seconds
            .observe(now.duration_since(finish_started).as_secs_f64());
        let elapsed = now.duration_since(done.started);
        self.observe(NodeEvent::SnapshotTaken {
            node: self.cluster.self_id,
            index,
            file_bytes: written.file_bytes,
        });
        self.metrics.snapshots.inc();
        self.metrics.snapshot_bytes.inc_by(written.file_bytes);
        self.metrics
            .snapshot_last_bytes
            .set(i64::try_from(written.file_bytes).unwrap_or(i64::MAX));
        self.metrics
            .snapshot_write_seconds
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            node = %self.config.name,
            index,
            file_bytes = written.file_bytes,
            write_ms = elapsed.as_millis() as u64,
            "snapshot taken, log compacted"
        );
        self.publish_status();
        Ok(())
    }

    /// How many covered entries compaction at `index` keeps in memory: the configured tail, or,
    /// on a leader sending a follower a snapshot at a lower index, every entry after that
    /// snapshot while they take no more bytes than the snapshot just written (`snapshot_bytes`).
    /// The follower needs them once it has installed its snapshot. Without them a transfer that
    /// outlasts the leader's snapshot interval ends behind the log, and the follower needs
    /// another snapshot, and another, for as long as writes outpace the transfer (simulator
    /// seed 364: a follower installed six snapshots in a row after the heal and had not
    /// converged 10 s after the clients stopped). Past the snapshot's size a fresh snapshot is
    /// the cheaper way to catch up.
    fn compaction_tail(&self, index: Index, snapshot_bytes: u64) -> u64 {
        let tail = self.config.snapshot_tail_entries;
        if plants::active(Plant::CompactPastTransfer) {
            return tail;
        }
        let Some(sending) = self.raft.lowest_snapshot_in_transfer() else {
            return tail;
        };
        if sending >= index {
            return tail;
        }
        let held_bytes: u64 = self
            .raft
            .entries(sending + 1, index + 1)
            .iter()
            .map(|entry| entry.data.len() as u64)
            .sum();
        if held_bytes <= snapshot_bytes {
            tail.max(index - sending)
        } else {
            tail
        }
    }

    /// Makes a snapshot from the leader this node's state: the receiver task already put its
    /// file in `snap/` and loaded the store (off this loop); record it in the WAL and swap the
    /// store in.
    async fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let store = match self.prepared_install.take() {
            Some((meta, store)) if meta == snapshot.meta => store,
            _ => {
                return Err(format!(
                    "the core installed the snapshot at ({}, {}) but no store was prepared for it",
                    snapshot.meta.index, snapshot.meta.term
                ))
            }
        };
        let meta = snapshot.meta.clone();
        self.wal
            .save_snapshot(&Snapshot {
                meta,
                data: Bytes::new(),
            })
            .await
            .map_err(|e| format!("wal snapshot: {e}"))?;
        self.kv = store;
        // Watches after the snapshot's index continue; older ones get 410 (compacted).
        self.watches.reset(snapshot.meta.index);
        tracing::info!(node = %self.config.name, index = snapshot.meta.index, "installed a snapshot from the leader");
        self.snapshot_policy.last_index = snapshot.meta.index;
        self.snapshot_policy.bytes_applied = 0;
        self.remove_older_snapshot_files(snapshot.meta.index);
        Ok(())
    }

    /// Removes the snapshot files older than the recorded one at `keep_index`, on a task of its
    /// own: unlinking a file of tens of MB took 10-20 ms on ext4 (100,000 keys of 256 B), a
    /// time every request would wait in this loop. Nothing needs those files once the WAL
    /// records the newer snapshot (a transfer still streaming one holds it open). A removal
    /// that fails or that a crash cuts short leaves garbage that the next removal, or the next
    /// start, takes away; so a failure is logged, not fatal.
    fn remove_older_snapshot_files(&self, keep_index: Index) {
        let dir = self.snapshot_dir.clone();
        let name = self.config.name.clone();
        env::spawn(async move {
            if let Err(reason) = remove_snapshot_files_older_than(&dir, keep_index).await {
                tracing::error!(node = %name, %reason, "could not remove an old snapshot file (retried after the next snapshot)");
            }
        });
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(node = %self.config.name, %reason, "storage failed: the node stops acknowledging writes");
        let error = NodeError::Unavailable(reason.clone());
        for (_, pending) in std::mem::take(&mut self.pending_writes) {
            let _ = pending.reply.send(Err(NodeError::Timeout));
        }
        for read in std::mem::take(&mut self.reads_unsent) {
            let _ = read.reply.send(Err(error.clone()));
        }
        for (_, reads) in std::mem::take(&mut self.reads_confirming) {
            for read in reads {
                let _ = read.reply.send(Err(error.clone()));
            }
        }
        for (_, read) in std::mem::take(&mut self.reads_applying) {
            let _ = read.reply.send(Err(error.clone()));
        }
        self.failure = Some(reason);
        self.publish_status();
    }

    /// Flips `raft_kv_quota_exceeded`: on when the store refused a write for the quota, off
    /// again once an applied command changed a key (space freed, or a write fitted).
    fn note_quota(&self, result: &Result<WriteResult, kv::KvError>) {
        if let Ok(WriteResult::QuotaExceeded { .. }) = result {
            self.metrics.quota_exceeded.set(1);
            self.metrics.quota_refused.inc();
        } else if !self.changes.is_empty() {
            self.metrics.quota_exceeded.set(0);
        }
    }

    fn publish_status(&mut self) {
        let status = self.raft.status();
        let soft = status.soft_state;
        self.metrics.term.set(soft.term as i64);
        self.metrics
            .is_leader
            .set(i64::from(soft.role == Role::Leader));
        self.metrics
            .commit_index
            .set(status.hard_state.commit as i64);
        self.metrics.applied_index.set(status.applied_index as i64);
        self.metrics.store_bytes.set(self.kv.store_bytes() as i64);
        self.metrics
            .quota_bytes
            .set(i64::try_from(self.config.quota_bytes).unwrap_or(i64::MAX));
        for (role, gauge) in &self.metrics.roles {
            gauge.set(i64::from(*role == soft.role));
        }
        self.metrics
            .healthy
            .set(i64::from(self.failure.is_none() && soft.leader.is_some()));
        let mut shared = self.status.lock().expect("status lock poisoned");
        *shared = NodeStatus {
            role: soft.role,
            term: soft.term,
            leader: soft.leader,
            commit_index: status.hard_state.commit,
            applied_index: status.applied_index,
            last_index: status.last_index,
            failure: self.failure.clone(),
        };
    }
}

/// What a write proposed at `index` in term `term` learns when a snapshot (`meta`) covering
/// that index is installed: "dropped" only when the entry at `index` is known to carry another
/// term, "outcome unknown" otherwise (see `Driver::answer_writes_under_snapshot`).
fn answer_under_snapshot(index: Index, term: Term, meta: &SnapshotMeta) -> NodeError {
    assert!(
        index <= meta.index,
        "the write at {index} is not under the snapshot at {}",
        meta.index
    );
    // Terms never decrease along a log: below the snapshot's last term, no entry is ours.
    let another_term = meta.term < term || (index == meta.index && meta.term != term);
    if another_term {
        NodeError::Dropped
    } else {
        NodeError::OutcomeUnknown(format!(
            "a snapshot up to index {} replaced the log slot {index} of the write, which may or \
             may not be in it",
            meta.index
        ))
    }
}

/// Creates `<data-dir>/snap/` durably and removes what a crash mid-write left there.
async fn prepare_snapshot_dir(data_dir: &Path, dir: &Path) -> Result<(), String> {
    let created = !env::fs::exists(dir)
        .await
        .map_err(|e| format!("snapshot directory: {e}"))?;
    env::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("create the snapshot directory: {e}"))?;
    if created {
        env::fs::sync_dir(data_dir)
            .await
            .map_err(|e| format!("sync the data directory: {e}"))?;
    }
    let names = env::fs::list_dir(dir)
        .await
        .map_err(|e| format!("list the snapshot directory: {e}"))?;
    for name in names
        .iter()
        .filter(|name| name.ends_with(snapshot::TEMP_SUFFIX))
    {
        tracing::info!(dir = %dir.display(), name, "removing a snapshot file a crash left unfinished");
        fs_remove(&dir.join(name)).await?;
    }
    Ok(())
}

/// The store the WAL's recorded snapshot describes: its file in `dir` (or, for a WAL written
/// before snapshot files existed, the state inside the record).
async fn restore_store(
    dir: &Path,
    snapshot: &Snapshot,
    options: KvOptions,
) -> Result<KvStore, String> {
    if !snapshot.data.is_empty() {
        return KvStore::restore(&snapshot.data, options).map_err(|e| e.to_string());
    }
    let path = dir.join(snapshot::file_name(&snapshot.meta));
    let (meta, store) = snapshot::load(&path, options)
        .await
        .map_err(|e| format!("the recorded snapshot does not load: {e}"))?;
    if meta != snapshot.meta {
        return Err(format!(
            "snapshot file {} says {meta:?}, the WAL recorded {:?}",
            path.display(),
            snapshot.meta
        ));
    }
    Ok(store)
}

/// Removes every snapshot file in `dir` but the one at `keep_index` (a newer unrecorded one
/// too: the WAL's record is the truth), then syncs `dir`. Only at start: while the node runs, a
/// newer unrecorded file is a snapshot the receiver task installed and is handing to the driver;
/// see [`remove_snapshot_files_older_than`].
async fn remove_snapshot_files_except(dir: &Path, keep_index: Option<Index>) -> Result<(), String> {
    remove_snapshot_files(dir, |index| Some(index) != keep_index).await
}

/// Removes the snapshot files in `dir` older than the recorded one at `keep_index`.
async fn remove_snapshot_files_older_than(dir: &Path, keep_index: Index) -> Result<(), String> {
    remove_snapshot_files(dir, |index| index < keep_index).await
}

async fn remove_snapshot_files(dir: &Path, remove: impl Fn(Index) -> bool) -> Result<(), String> {
    let names = env::fs::list_dir(dir)
        .await
        .map_err(|e| format!("list the snapshot directory: {e}"))?;
    let mut removed = false;
    for name in names {
        let Some((_, index)) = snapshot::parse_file_name(&name) else {
            continue;
        };
        if remove(index) {
            fs_remove(&dir.join(&name)).await?;
            removed = true;
        }
    }
    if removed {
        env::fs::sync_dir(dir)
            .await
            .map_err(|e| format!("sync the snapshot directory: {e}"))?;
    }
    Ok(())
}

/// Removes a snapshot file; one already gone is fine (an install may have removed it).
async fn fs_remove(path: &Path) -> Result<(), String> {
    match env::fs::remove_file(path).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove a snapshot file: {error}"))
        }
        _ => Ok(()),
    }
}

/// Maps a core refusal to what a client sees.
fn node_error(error: RaftError) -> NodeError {
    match error {
        RaftError::NotLeader { leader } => NodeError::NotLeader { leader },
        RaftError::UncommittedBytesExceeded { .. } | RaftError::TooManyPendingReads { .. } => {
            NodeError::Overloaded(error.to_string())
        }
        RaftError::TransferInProgress | RaftError::TermNotCommitted { .. } => {
            NodeError::Unavailable(error.to_string())
        }
        RaftError::ProposalTooLarge { .. }
        | RaftError::ConfChangePending
        | RaftError::Invalid(_) => NodeError::Invalid(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            membership: Membership::default(),
        }
    }

    #[test]
    fn a_write_under_an_installed_snapshot_is_unknown_when_the_snapshot_may_hold_it() {
        // Issue 8: proposed in term 2 at index 5, the snapshot runs to index 100 of term 3; the
        // entry at 5 may be ours (term 2) or another leader's, nobody here knows.
        let answer = answer_under_snapshot(5, 2, &meta(100, 3));
        assert!(matches!(answer, NodeError::OutcomeUnknown(_)), "{answer:?}");
        // At the snapshot's own index, with the snapshot's term, it may be ours too.
        let answer = answer_under_snapshot(100, 3, &meta(100, 3));
        assert!(matches!(answer, NodeError::OutcomeUnknown(_)), "{answer:?}");
    }

    #[test]
    fn a_write_under_an_installed_snapshot_is_dropped_only_when_its_term_cannot_be_there() {
        // The snapshot's last entry is of term 2: nothing at or below it carries term 4.
        assert_eq!(
            answer_under_snapshot(5, 4, &meta(100, 2)),
            NodeError::Dropped
        );
        // At the snapshot's own index, a different term is known.
        assert_eq!(
            answer_under_snapshot(100, 2, &meta(100, 3)),
            NodeError::Dropped
        );
    }
}

#[cfg(test)]
mod snapshot_policy_tests {
    use super::*;

    #[test]
    fn a_lone_member_snapshots_every_interval() {
        let phase = snapshot_phase(&Membership::with_voters([7]), 7, 20_000);
        assert_eq!(phase, 0);
        assert_eq!(snapshot_due_at(0, 20_000, phase), 20_000);
        assert_eq!(snapshot_due_at(20_000, 20_000, phase), 40_000);
        // Every entry when the interval is one.
        assert_eq!(snapshot_due_at(5, 1, 0), 6);
    }

    #[test]
    fn members_take_evenly_spread_phases_in_id_order() {
        let membership = Membership::with_voters([30, 10, 20]);
        let phases: Vec<u64> = [10, 20, 30]
            .iter()
            .map(|&id| snapshot_phase(&membership, id, 20_000))
            .collect();
        assert_eq!(phases, vec![0, 6_666, 13_333]);
        // From a common start they write at three different indexes, then every interval.
        let first: Vec<Index> = phases
            .iter()
            .map(|&phase| snapshot_due_at(0, 20_000, phase))
            .collect();
        assert_eq!(first, vec![20_000, 26_666, 13_333]);
        assert_eq!(snapshot_due_at(13_333, 20_000, 13_333), 33_333);
    }

    #[test]
    fn the_due_index_is_on_the_phase_between_half_and_one_and_a_half_intervals_on() {
        for interval in [1u64, 2, 3, 10, 20_000] {
            for last in [0u64, 1, 7, 19_999, 1_000_003] {
                for phase in [0u64, 1, 5, 6_666, 13_333, 99_999] {
                    let due = snapshot_due_at(last, interval, phase);
                    let gap = due - last;
                    let half = interval - interval / 2;
                    assert!(
                        gap >= half && gap < half + interval,
                        "last {last} interval {interval} phase {phase}: due {due}"
                    );
                    assert_eq!(due % interval, phase % interval);
                }
            }
        }
    }

    #[test]
    fn the_due_index_saturates_instead_of_overflowing() {
        assert_eq!(snapshot_due_at(u64::MAX - 1, 10, 3), u64::MAX);
        assert_eq!(
            snapshot_phase(&Membership::with_voters([1, 2]), 2, u64::MAX),
            u64::MAX / 2
        );
    }
}
