//! The driver: one task per node that owns the core, the WAL and the state machine, and handles
//! every `Ready` in order: send what may leave at once, persist and sync, send what needed the
//! sync, apply, serve reads, advance. Inputs that arrive while a sync is in flight queue up and
//! go into the next single sync (group commit).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{self, ClusterInfo};
use super::snapshot_transfer::{self, PreparedInstall, TransferOptions};
use super::transport::Transport;
use super::{
    Consistency, Inspection, NodeConfig, NodeError, NodeEvent, NodeHandle, NodeMetrics, NodeStatus,
    ReadOutcome, ReadQuery, Request, ValueView, WriteOutcome,
};
use crate::env;
use crate::http::client::HttpClient;
use crate::kv::{self, KvOptions, KvStore};
use crate::raft::invariants::{entry_digest, NodeView};
use crate::raft::{
    self, Config, EntryKind, Error as RaftError, HardState, Index, Message, Raft, ReadContext,
    Ready, Role, Snapshot, SnapshotMeta, Term,
};
use crate::wal::{Wal, WalOptions};

/// Inputs handled between two `Ready`s at most, so one flood cannot starve the sync.
const INPUTS_PER_ROUND_MAX: usize = 8192;
/// Capacity of the inbound Raft message queue.
const INBOUND_QUEUE_MAX: usize = 16_384;
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
    kv_options: KvOptions,
    config: Arc<NodeConfig>,
    cluster: Arc<ClusterInfo>,
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
    /// Set when storage failed: the node stops acknowledging anything.
    failure: Option<String>,
}

pub(super) async fn start(
    config: NodeConfig,
    client: HttpClient,
) -> Result<NodeHandle, StartError> {
    let config = Arc::new(config);
    let cluster = Arc::new(cluster::establish(&config, &client).await?);
    let (wal, restore) = Wal::open(
        &config.data_dir.join("wal"),
        WalOptions {
            segment_bytes_max: config.wal_segment_bytes_max,
        },
    )
    .await
    .map_err(|e| StartError::Wal(e.to_string()))?;
    let mut restore = restore;
    if config.plant_forget_vote {
        tracing::warn!("planted bug: forgetting the persisted vote");
        restore.hard_state.vote = None;
    }

    let kv_options = KvOptions {
        idempotency_keys_max: config.idempotency_keys_max,
    };
    let kv = match &restore.snapshot {
        Some(snapshot) => KvStore::restore(&snapshot.data, kv_options.clone())
            .map_err(|e| StartError::Restore(e.to_string()))?,
        None => KvStore::new(kv_options.clone()),
    };
    let synced_term_vote = (restore.hard_state.term, restore.hard_state.vote);
    let mut raft_config = Config::new(cluster.self_id);
    raft_config.election_ticks = config.election_ticks;
    raft_config.heartbeat_ticks = config.heartbeat_ticks;
    raft_config.max_bytes_per_append =
        APPEND_BYTES_MAX.min(config.rpc_body_bytes_max as u64 / APPEND_SHARE_OF_RPC_BODY);
    let raft = Raft::new(raft_config, cluster.membership(), restore, env::rng())
        .map_err(|e| StartError::Restore(e.to_string()))?;

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
        data_dir: config.data_dir.clone(),
        chunk_bytes: config.snapshot_chunk_bytes.max(1),
        body_bytes_max: config.rpc_body_bytes_max,
        transfers_max: config.snapshot_transfers_max,
        rpc_timeout: config.rpc_timeout,
    };
    let transport = Transport::new(
        &cluster,
        client,
        config.rpc_timeout,
        config.rpc_body_bytes_max,
        transfer.clone(),
        &metrics,
    );
    let (installs_tx, installs) = mpsc::channel(1);
    let snapshot_chunks = snapshot_transfer::spawn_receiver(
        transfer,
        kv_options.clone(),
        config.snapshot_receive_bytes_max,
        installs_tx,
        metrics.clone(),
    );
    let (requests_tx, requests) = mpsc::channel(config.request_queue_max);
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_MAX);
    tracing::info!(
        node = %config.name,
        id = cluster.self_id,
        members = cluster.members.len(),
        term = raft_status.hard_state.term,
        last_index = raft_status.last_index,
        "node started"
    );
    let driver = Driver {
        raft,
        wal,
        kv,
        kv_options,
        config: config.clone(),
        cluster: cluster.clone(),
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
        failure: None,
    };
    env::spawn(driver.run());
    Ok(NodeHandle {
        requests: requests_tx,
        inbound: inbound_tx,
        snapshot_chunks,
        status,
        cluster,
        config,
        metrics,
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
                }
                next_tick += tick;
                if now >= next_tick {
                    next_tick = now + tick;
                }
            }
            self.flush_reads();
            if self.failure.is_none() && self.raft.has_ready() {
                if let Err(reason) = self.handle_ready().await {
                    self.fail(reason);
                }
            }
        }
        tracing::info!(node = %self.config.name, "driver stopped");
    }

    fn handle_message(&mut self, message: Message) {
        if self.failure.is_some() {
            return;
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
                Request::Inspect { with_log, reply } => drop(reply.send(self.inspect(with_log))),
            }
            return;
        }
        match request {
            Request::Write { request, reply } => {
                let data = kv::encode_write(&request);
                match self.raft.propose(data) {
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
            Request::Inspect { with_log, reply } => {
                let _ = reply.send(self.inspect(with_log));
            }
        }
    }

    fn inspect(&self, with_log: bool) -> Inspection {
        let status = self.raft.status();
        let snapshot_index = status.snapshot_index;
        let snapshot_term = self.raft.term_at(snapshot_index).unwrap_or(0);
        let log = if with_log {
            self.raft
                .entries(snapshot_index + 1, status.last_index + 1)
                .iter()
                .map(|e| (e.index, e.term, entry_digest(e.kind, &e.data)))
                .collect()
        } else {
            Vec::new()
        };
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
            state_hash: self.kv.state_hash(),
            status,
            view,
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
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft);
        }
        self.transport.send(std::mem::take(&mut ready.messages));

        let mut needs_sync = false;
        if let Some(snapshot) = &ready.snapshot {
            self.wal
                .save_snapshot(snapshot)
                .await
                .map_err(|e| format!("wal snapshot: {e}"))?;
            self.kv = match self.prepared_install.take() {
                Some((meta, store)) if meta == snapshot.meta => store,
                _ if !snapshot.data.is_empty() => {
                    KvStore::restore(&snapshot.data, self.kv_options.clone())
                        .map_err(|e| format!("snapshot from leader does not restore: {e}"))?
                }
                _ => {
                    return Err(format!(
                    "the core installed the snapshot at ({}, {}) but no store was prepared for it",
                    snapshot.meta.index, snapshot.meta.term
                ))
                }
            };
            self.observe(NodeEvent::Restored {
                node: self.cluster.self_id,
                index: snapshot.meta.index,
            });
            needs_sync = true;
        }
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
        }
        for read_state in std::mem::take(&mut ready.read_states) {
            if let Some(reads) = self.reads_confirming.remove(&read_state.context) {
                self.reads_applying
                    .extend(reads.into_iter().map(|read| (read_state.index, read)));
            }
        }
        self.serve_applied_reads();
        self.raft.advance(&ready);
        self.maybe_snapshot().await?;
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

    fn apply(&mut self, index: Index, term: Term, kind: EntryKind, data: &Bytes) {
        if self.config.observer.is_some() {
            let digest = entry_digest(kind, data);
            self.observe(NodeEvent::Applied {
                node: self.cluster.self_id,
                index,
                term,
                digest,
            });
        }
        let result = match kind {
            EntryKind::Normal => Some(self.kv.apply(index, data)),
            EntryKind::Noop | EntryKind::Config => {
                self.kv.apply_noop(index);
                None
            }
        };
        // Everything at or below `index` is decided now.
        while let Some(entry) = self.pending_writes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (pending_index, pending) = entry.remove_entry();
            let answer = match (&result, pending_index == index && pending.term == term) {
                (Some(Ok(result)), true) => Ok(WriteOutcome {
                    index,
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
        let view = |key: &str, value: &kv::Value| ValueView {
            key: key.to_string(),
            data: value.data.clone(),
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
                }
            }
        }
    }

    /// Compacts the log once enough entries were applied since the last snapshot.
    async fn maybe_snapshot(&mut self) -> Result<(), String> {
        // Cheap test first: this runs after every Ready, and `status()` clones the membership.
        let snapshot_index = self.raft.snapshot().map_or(0, |s| s.meta.index);
        if self.kv.applied_index() < snapshot_index + self.config.snapshot_entries {
            return Ok(());
        }
        let status = self.raft.status();
        let applied = status.applied_index;
        if applied < status.snapshot_index + self.config.snapshot_entries {
            return Ok(());
        }
        let Some(term) = self.raft.term_at(applied) else {
            return Ok(());
        };
        assert_eq!(
            self.kv.applied_index(),
            applied,
            "state machine applied {} but the core handed out up to {applied}",
            self.kv.applied_index()
        );
        let data = self.kv.snapshot();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: applied,
                term,
                membership: status.membership,
            },
            data,
        };
        self.wal
            .save_snapshot(&snapshot)
            .await
            .map_err(|e| format!("wal snapshot: {e}"))?;
        self.raft
            .compact(applied, snapshot.data)
            .map_err(|e| format!("compact: {e}"))?;
        self.metrics.snapshots.inc();
        tracing::info!(node = %self.config.name, index = applied, "snapshot taken, log compacted");
        Ok(())
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

/// Maps a core refusal to what a client sees.
fn node_error(error: RaftError) -> NodeError {
    match error {
        RaftError::NotLeader { leader } => NodeError::NotLeader { leader },
        RaftError::UncommittedBytesExceeded { .. } | RaftError::TooManyPendingReads { .. } => {
            NodeError::Overloaded(error.to_string())
        }
        RaftError::TransferInProgress => NodeError::Unavailable(error.to_string()),
        RaftError::ProposalTooLarge { .. }
        | RaftError::ConfChangePending
        | RaftError::Invalid(_) => NodeError::Invalid(error.to_string()),
    }
}
