//! Streamed InstallSnapshot, outside the core as etcd does it. The core still emits
//! `InstallSnapshot { meta, data: empty }` to a follower behind the compaction point; the
//! transport hands it to [`SnapshotSender`], which streams the leader's snapshot file in chunks
//! over `POST /v1/raft/snapshot`. On the follower, [`run_receiver`] writes the chunks to a temp
//! file as the pure [`SnapshotReceiver`] decides, then verifies the whole file, renames it into
//! `snap/`, loads the store off the driver loop, and only then hands the driver the
//! `InstallSnapshot` message together with the prepared store. The driver keeps answering
//! heartbeats all the while, so a large install never costs an election.
//!
//! Bounds: at most `snapshot_transfers_max` outbound transfers at once (one per peer), one
//! inbound transfer per node (a newer one supersedes it), chunks of `snapshot_transfer_chunk_bytes`.
//! A leader or term change aborts a transfer; the core's stalled-follower detection sends
//! `InstallSnapshot` again later, and the receiver resumes or restarts it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::members::Directory;
use super::peer_auth::{signed_post, PeerSecret};
use super::rpc::{self, ChunkAnswer, ChunkHeader};
use super::snapshot_receiver::{ChunkStep, SnapshotReceiver, Transfer};
use super::NodeMetrics;
use crate::env;
use crate::http::client::HttpClient;
use crate::kv::{KvOptions, KvStore};
use crate::raft::{Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term};
use crate::snapshot;

/// Failed chunk calls in a row before a transfer gives up (the core will ask again).
const CHUNK_ATTEMPTS_MAX: u32 = 8;
/// Pause after a failed chunk call.
const CHUNK_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Largest chunk answer body.
const ANSWER_BYTES_MAX: usize = 64 << 10;
/// Chunks queued for the receiver task before the HTTP layer answers 503.
const INBOUND_CHUNKS_MAX: usize = 16;

/// The leader's role as the transfers see it: `Some(term)` while it leads in `term`.
pub(super) type Leadership = Option<Term>;

/// Settings shared by both sides.
#[derive(Clone, Debug)]
pub(super) struct TransferOptions {
    pub cluster_id: u64,
    pub self_id: NodeId,
    /// This node's incarnation, sent with every chunk (see `rpc::Standing`).
    pub self_incarnation: u64,
    pub data_dir: PathBuf,
    pub chunk_bytes: usize,
    /// Largest peer RPC body: a chunk and its header never exceed it.
    pub body_bytes_max: usize,
    pub transfers_max: usize,
    pub rpc_timeout: Duration,
    /// Signs every peer RPC when the cluster has a secret.
    pub peer_secret: Option<PeerSecret>,
}

/// One outbound transfer in flight.
struct Outbound {
    term: Term,
    cancelled: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

/// Starts and bounds outbound transfers (the leader's side).
pub(super) struct SnapshotSender {
    options: TransferOptions,
    client: HttpClient,
    directory: Arc<Directory>,
    permits: Arc<Semaphore>,
    leadership: watch::Sender<Leadership>,
    active: Mutex<BTreeMap<NodeId, Outbound>>,
    next_transfer_id: Mutex<u64>,
    metrics: NodeMetrics,
}

impl SnapshotSender {
    pub(super) fn new(
        options: TransferOptions,
        client: HttpClient,
        directory: Arc<Directory>,
        metrics: NodeMetrics,
    ) -> SnapshotSender {
        let (leadership, _) = watch::channel(None);
        SnapshotSender {
            permits: Arc::new(Semaphore::new(options.transfers_max.max(1))),
            options,
            client,
            directory,
            leadership,
            active: Mutex::new(BTreeMap::new()),
            next_transfer_id: Mutex::new(1),
            metrics,
        }
    }

    /// Tells running transfers who leads: one started in another term, or while this node no
    /// longer leads, stops before its next chunk.
    pub(super) fn set_leadership(&self, leadership: Leadership) {
        self.leadership.send_replace(leadership);
        let mut active = self.active.lock().expect("transfers lock poisoned");
        active.retain(|_, outbound| {
            let keep = Some(outbound.term) == leadership;
            if !keep {
                outbound.cancelled.store(true, Ordering::Relaxed);
            }
            keep
        });
    }

    /// Starts streaming the snapshot `meta` to `to`, unless a transfer to it is running in this
    /// term. A running transfer of an older snapshot is left to finish: under steady writes the
    /// leader takes a newer snapshot before a large file is through, and restarting for each
    /// one would never finish; the follower then catches up from the log's tail or gets the
    /// newer snapshot when the core asks again.
    pub(super) fn start(&self, to: NodeId, term: Term, meta: SnapshotMeta) {
        let Some(addr) = self.directory.member(to).map(|m| m.addr) else {
            tracing::warn!(to, "snapshot for an unknown peer dropped");
            return;
        };
        let mut active = self.active.lock().expect("transfers lock poisoned");
        if let Some(outbound) = active.get(&to) {
            let running = !outbound.finished.load(Ordering::Relaxed);
            if running && outbound.term == term {
                return;
            }
            outbound.cancelled.store(true, Ordering::Relaxed);
        }
        let transfer_id = {
            let mut next = self.next_transfer_id.lock().expect("id lock poisoned");
            let id = *next;
            *next += 1;
            id
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        active.insert(
            to,
            Outbound {
                term,
                cancelled: cancelled.clone(),
                finished: finished.clone(),
            },
        );
        let stream = OutboundStream {
            options: self.options.clone(),
            client: self.client.clone(),
            addr,
            to,
            term,
            meta,
            transfer_id,
            cancelled,
            leadership: self.leadership.subscribe(),
            metrics: self.metrics.clone(),
        };
        let permits = self.permits.clone();
        env::spawn(async move {
            // Bounded concurrency: wait for a slot, then check the transfer is still wanted.
            if let Ok(_permit) = permits.acquire_owned().await {
                let outcome = stream.run().await;
                tracing::info!(
                    to = stream.to,
                    index = stream.meta.index,
                    transfer_id = stream.transfer_id,
                    outcome,
                    "snapshot transfer ended"
                );
            }
            finished.store(true, Ordering::Relaxed);
        });
    }
}

struct OutboundStream {
    options: TransferOptions,
    client: HttpClient,
    addr: String,
    to: NodeId,
    term: Term,
    meta: SnapshotMeta,
    transfer_id: u64,
    cancelled: Arc<AtomicBool>,
    leadership: watch::Receiver<Leadership>,
    metrics: NodeMetrics,
}

impl OutboundStream {
    fn wanted(&self) -> bool {
        !self.cancelled.load(Ordering::Relaxed) && *self.leadership.borrow() == Some(self.term)
    }

    /// Streams the file; returns how it ended, for the log.
    async fn run(&self) -> &'static str {
        if !self.wanted() {
            return "aborted before the first chunk";
        }
        let path =
            snapshot::snapshot_dir(&self.options.data_dir).join(snapshot::file_name(&self.meta));
        let file = match env::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) => {
                // Compacted again meanwhile: the core will send the newer snapshot.
                tracing::warn!(%error, "snapshot file to send is gone");
                return "file missing";
            }
        };
        let total_bytes = match file.len().await {
            Ok(len) => len,
            Err(error) => {
                tracing::warn!(%error, "snapshot file to send cannot be read");
                return "file unreadable";
            }
        };
        let mut offset = 0u64;
        let mut failures = 0u32;
        loop {
            if !self.wanted() {
                return "aborted: leadership changed or a newer transfer started";
            }
            let header = ChunkHeader {
                cluster_id: self.options.cluster_id,
                from: self.options.self_id,
                to: self.to,
                from_incarnation: self.options.self_incarnation,
                term: self.term,
                meta: self.meta.clone(),
                transfer_id: self.transfer_id,
                offset,
                total_bytes,
            };
            let head_bytes = rpc::encode_chunk(&header, &[]).len();
            let Some(room) = self
                .options
                .body_bytes_max
                .checked_sub(head_bytes)
                .filter(|r| *r > 0)
            else {
                tracing::warn!(
                    head_bytes,
                    "snapshot chunk header alone fills a peer rpc body"
                );
                return "header over the body limit";
            };
            let len =
                (total_bytes - offset).min(self.options.chunk_bytes.min(room) as u64) as usize;
            let bytes = match file.read_at(offset, len).await {
                Ok(bytes) if bytes.len() == len => bytes,
                Ok(bytes) => {
                    tracing::warn!(
                        offset,
                        len,
                        got = bytes.len(),
                        "snapshot file shrank while sent"
                    );
                    return "file shrank";
                }
                Err(error) => {
                    tracing::warn!(%error, "snapshot file read failed");
                    return "file unreadable";
                }
            };
            match self.send_chunk(&header, &bytes).await {
                Some(ChunkAnswer::Continue { next_offset }) if next_offset <= total_bytes => {
                    self.metrics.snapshot_chunks_sent.inc();
                    self.metrics.snapshot_sent_bytes.inc_by(bytes.len() as u64);
                    failures = 0;
                    offset = next_offset;
                }
                Some(ChunkAnswer::Continue { next_offset }) => {
                    tracing::warn!(next_offset, total_bytes, "follower asked past the end");
                    return "follower asked past the end";
                }
                Some(ChunkAnswer::Complete) => {
                    self.metrics.snapshot_chunks_sent.inc();
                    self.metrics.snapshot_sent_bytes.inc_by(bytes.len() as u64);
                    return "complete";
                }
                Some(ChunkAnswer::Stale) => return "follower takes a newer transfer",
                Some(ChunkAnswer::Refused { reason }) => {
                    tracing::warn!(to = self.to, %reason, "follower refused the snapshot");
                    return "refused";
                }
                None => {
                    failures += 1;
                    if failures >= CHUNK_ATTEMPTS_MAX {
                        return "gave up after repeated failures";
                    }
                    env::sleep(CHUNK_RETRY_BACKOFF).await;
                }
            }
        }
    }

    async fn send_chunk(&self, header: &ChunkHeader, bytes: &[u8]) -> Option<ChunkAnswer> {
        let request = signed_post(
            "/v1/raft/snapshot",
            rpc::encode_chunk(header, bytes),
            self.options.peer_secret.as_ref(),
        );
        match self
            .client
            .call(
                &self.addr,
                request,
                ANSWER_BYTES_MAX,
                self.options.rpc_timeout,
            )
            .await
        {
            Ok(response) if response.status().is_success() => {
                match rpc::decode_answer(response.body()) {
                    Ok(answer) => Some(answer),
                    Err(error) => {
                        tracing::warn!(%error, "bad snapshot chunk answer");
                        None
                    }
                }
            }
            Ok(response) => {
                tracing::debug!(peer = %self.addr, status = %response.status(), "snapshot chunk refused");
                None
            }
            Err(error) => {
                tracing::debug!(peer = %self.addr, %error, "snapshot chunk call failed");
                None
            }
        }
    }
}

/// A chunk the HTTP layer received, for the receiver task.
pub(crate) struct InboundChunk {
    pub header: ChunkHeader,
    pub bytes: Bytes,
    pub reply: oneshot::Sender<ChunkAnswer>,
}

/// A snapshot verified, in place under `snap/` and loaded: the driver steps `message` into the
/// core and swaps `store` in when the core's `Ready` carries the snapshot.
pub(super) struct PreparedInstall {
    pub message: Message,
    pub store: KvStore,
}

/// Starts the follower's receiver task; returns where the HTTP layer sends chunks.
pub(super) fn spawn_receiver(
    options: TransferOptions,
    kv_options: KvOptions,
    bytes_max: u64,
    installs: mpsc::Sender<PreparedInstall>,
    metrics: NodeMetrics,
) -> mpsc::Sender<InboundChunk> {
    let (chunks_tx, chunks) = mpsc::channel(INBOUND_CHUNKS_MAX);
    let receiver = ReceiverTask {
        dir: snapshot::snapshot_dir(&options.data_dir),
        options,
        kv_options,
        state: SnapshotReceiver::new(bytes_max),
        file: None,
        started: None,
        installs,
        metrics,
    };
    env::spawn(receiver.run(chunks));
    chunks_tx
}

struct ReceiverTask {
    options: TransferOptions,
    kv_options: KvOptions,
    dir: PathBuf,
    state: SnapshotReceiver,
    /// The temp file of the current transfer.
    file: Option<env::fs::File>,
    started: Option<env::Instant>,
    installs: mpsc::Sender<PreparedInstall>,
    metrics: NodeMetrics,
}

/// The temp file a transfer is written to (ends in the snapshot module's temp suffix, so a
/// crash leaves nothing a restart keeps).
fn temp_path(dir: &Path, transfer: &Transfer) -> PathBuf {
    dir.join(format!(
        "{}.from-{:x}-term-{:x}{}",
        snapshot::file_name(&transfer.meta),
        transfer.from,
        transfer.term,
        snapshot::TEMP_SUFFIX
    ))
}

impl ReceiverTask {
    async fn run(mut self, mut chunks: mpsc::Receiver<InboundChunk>) {
        while let Some(chunk) = chunks.recv().await {
            let answer = self.handle_chunk(&chunk.header, &chunk.bytes).await;
            let _ = chunk.reply.send(answer);
        }
    }

    async fn handle_chunk(&mut self, header: &ChunkHeader, bytes: &[u8]) -> ChunkAnswer {
        if header.to != self.options.self_id {
            return ChunkAnswer::Refused {
                reason: "chunk addressed to another node".into(),
            };
        }
        let (discard, create, offset) = match self.state.handle_chunk(header, bytes.len() as u64) {
            ChunkStep::Answer(answer) => return answer,
            ChunkStep::Write {
                discard,
                create,
                offset,
            } => (discard, create, offset),
        };
        if let Some(old) = discard {
            self.file = None;
            let _ = env::fs::remove_file(temp_path(&self.dir, &old)).await;
        }
        let transfer = self
            .state
            .transfer()
            .expect("a write has a transfer")
            .clone();
        if let Err(error) = self.write(&transfer, create, offset, bytes).await {
            self.file = None;
            tracing::warn!(%error, "snapshot chunk write failed");
            return self.state.handle_failed(&error.to_string());
        }
        self.metrics.snapshot_chunks_received.inc();
        let answer = self.state.handle_written(offset, bytes.len() as u64);
        if answer == ChunkAnswer::Complete {
            if let Err(reason) = self.install(&transfer).await {
                tracing::warn!(%reason, index = transfer.meta.index, "received snapshot not installed");
                let _ = env::fs::remove_file(temp_path(&self.dir, &transfer)).await;
                return self.state.handle_failed(&reason);
            }
        }
        answer
    }

    async fn write(
        &mut self,
        transfer: &Transfer,
        create: bool,
        offset: u64,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if create {
            env::fs::create_dir_all(&self.dir).await?;
            self.file = Some(env::fs::File::create(temp_path(&self.dir, transfer)).await?);
            self.started = Some(env::now());
            tracing::info!(
                from = transfer.from,
                index = transfer.meta.index,
                total_bytes = transfer.total_bytes,
                "snapshot transfer started"
            );
        }
        if self.file.is_none() {
            // Resumed after this task lost its handle (a failed write): reopen.
            self.file = Some(env::fs::File::open(temp_path(&self.dir, transfer)).await?);
        }
        let file = self.file.as_ref().expect("opened above");
        file.write_at(offset, bytes).await
    }

    /// Syncs, verifies and renames the received file, loads it, and hands it to the driver.
    /// The load runs here, in this task, never in the driver's.
    async fn install(&mut self, transfer: &Transfer) -> Result<(), String> {
        let install_started = env::now();
        let temp = temp_path(&self.dir, transfer);
        if let Some(file) = self.file.take() {
            file.sync().await.map_err(|e| e.to_string())?;
        }
        let meta = snapshot::verify(&temp).await.map_err(|e| e.to_string())?;
        if meta != transfer.meta {
            return Err(format!(
                "received file holds the snapshot at ({}, {}), the leader announced ({}, {})",
                meta.index, meta.term, transfer.meta.index, transfer.meta.term
            ));
        }
        let path = self.dir.join(snapshot::file_name(&meta));
        env::fs::rename(&temp, &path)
            .await
            .map_err(|e| e.to_string())?;
        env::fs::sync_dir(&self.dir)
            .await
            .map_err(|e| e.to_string())?;
        let (meta, store) = snapshot::load(&path, self.kv_options.clone())
            .await
            .map_err(|e| e.to_string())?;
        let now = env::now();
        self.metrics
            .snapshot_install_seconds
            .observe(now.duration_since(install_started).as_secs_f64());
        if let Some(started) = self.started.take() {
            let seconds = now.duration_since(started).as_secs_f64();
            tracing::info!(
                from = transfer.from,
                index = meta.index,
                bytes = transfer.total_bytes,
                seconds,
                "snapshot received and loaded"
            );
        }
        self.metrics.snapshot_installs.inc();
        self.metrics
            .snapshot_install_bytes
            .inc_by(transfer.total_bytes);
        let message = Message {
            from: transfer.from,
            to: self.options.self_id,
            term: transfer.term,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta,
                    data: Bytes::new(),
                },
            },
        };
        self.installs
            .send(PreparedInstall { message, store })
            .await
            .map_err(|_| "the driver stopped".to_string())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::env::testing::run_with_dir;
    use crate::kv::{encode_write, WriteOp, WriteRequest};
    use crate::raft::Membership;

    const CHUNK_BYTES: usize = 100;

    fn store_of(keys: u64) -> KvStore {
        let mut store = KvStore::new(KvOptions::default());
        for index in 1..=keys {
            let request = WriteRequest {
                idempotency_key: (index % 2 == 0).then(|| format!("client-{index}")),
                op: WriteOp::Put {
                    key: format!("key-{index:04}").into_bytes(),
                    value: Bytes::from(format!("value {index}")),
                },
            };
            store.apply(index, &encode_write(&request)).unwrap();
        }
        store
    }

    fn options(data_dir: PathBuf) -> TransferOptions {
        TransferOptions {
            cluster_id: 9,
            self_id: 2,
            self_incarnation: 1,
            data_dir,
            chunk_bytes: CHUNK_BYTES,
            body_bytes_max: 1 << 20,
            transfers_max: 1,
            rpc_timeout: Duration::from_secs(1),
            peer_secret: None,
        }
    }

    /// Writes the leader's snapshot file of `store`; returns its meta and bytes.
    async fn leader_file(dir: &Path, store: &KvStore) -> (SnapshotMeta, Vec<u8>) {
        let meta = SnapshotMeta {
            index: store.applied_index(),
            term: 4,
            membership: Membership::with_voters([1, 2, 3]),
        };
        let snap_dir = snapshot::snapshot_dir(dir);
        env::fs::create_dir_all(&snap_dir).await.unwrap();
        let written = snapshot::write(&snap_dir, &meta, store, 64).await.unwrap();
        let bytes = env::fs::read(&written.path).await.unwrap();
        (meta, bytes)
    }

    async fn send(
        chunks: &mpsc::Sender<InboundChunk>,
        header: ChunkHeader,
        bytes: &[u8],
    ) -> ChunkAnswer {
        let (reply, answer) = oneshot::channel();
        chunks
            .send(InboundChunk {
                header,
                bytes: Bytes::copy_from_slice(bytes),
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap()
    }

    /// Streams `file` like the leader does, following the receiver's answers; before every
    /// chunk but the first, re-sends the previous chunk (a duplicate) and a byte far ahead (a
    /// gap). `mangle` may alter a chunk's bytes. Returns the final answer.
    async fn stream(
        chunks: &mpsc::Sender<InboundChunk>,
        meta: &SnapshotMeta,
        file: &[u8],
        mangle: impl Fn(u64, &mut Vec<u8>),
    ) -> ChunkAnswer {
        let header = |offset: u64| ChunkHeader {
            cluster_id: 9,
            from: 1,
            to: 2,
            from_incarnation: 1,
            term: 5,
            meta: meta.clone(),
            transfer_id: 1,
            offset,
            total_bytes: file.len() as u64,
        };
        let slice = |offset: u64| {
            let start = offset as usize;
            file[start..(start + CHUNK_BYTES).min(file.len())].to_vec()
        };
        let mut offset = 0u64;
        let mut previous = None;
        loop {
            if let Some(previous) = previous {
                // A duplicate of the chunk just accepted and a chunk past a gap: neither is
                // written, both name the offset the receiver expects.
                assert_eq!(
                    send(chunks, header(previous), &slice(previous)).await,
                    ChunkAnswer::Continue {
                        next_offset: offset
                    }
                );
                let ahead = (offset + 2 * CHUNK_BYTES as u64).min(file.len() as u64 - 1);
                if ahead > offset {
                    assert_eq!(
                        send(
                            chunks,
                            header(ahead),
                            &file[ahead as usize..ahead as usize + 1]
                        )
                        .await,
                        ChunkAnswer::Continue {
                            next_offset: offset
                        }
                    );
                }
            }
            let mut bytes = slice(offset);
            mangle(offset, &mut bytes);
            match send(chunks, header(offset), &bytes).await {
                ChunkAnswer::Continue { next_offset } => {
                    previous = Some(offset);
                    offset = next_offset;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_snapshot_streamed_with_duplicates_and_gaps_is_verified_renamed_and_loaded() {
        run_with_dir(|dir| async move {
            let store = store_of(60);
            let (meta, file) = leader_file(&dir.join("leader"), &store).await;
            assert!(file.len() > 5 * CHUNK_BYTES, "a multi-chunk file");
            let follower_dir = dir.join("follower");
            let (installs_tx, mut installs) = mpsc::channel(1);
            let metrics = NodeMetrics::new();
            let chunks = spawn_receiver(
                options(follower_dir.clone()),
                KvOptions::default(),
                u64::MAX,
                installs_tx,
                metrics.clone(),
            );
            assert_eq!(
                stream(&chunks, &meta, &file, |_, _| {}).await,
                ChunkAnswer::Complete
            );
            let install = installs.recv().await.unwrap();
            assert_eq!(install.store.state_hash(), store.state_hash());
            assert_eq!(install.store.applied_index(), meta.index);
            assert_eq!(install.message.term, 5);
            assert!(matches!(
                &install.message.body,
                MessageBody::InstallSnapshot { snapshot } if snapshot.meta == meta && snapshot.data.is_empty()
            ));
            let snap_dir = snapshot::snapshot_dir(&follower_dir);
            assert_eq!(
                env::fs::list_dir(&snap_dir).await.unwrap(),
                vec![snapshot::file_name(&meta)],
                "the file under its final name and no temp file"
            );
            assert_eq!(
                env::fs::read(snap_dir.join(snapshot::file_name(&meta)))
                    .await
                    .unwrap(),
                file
            );
            assert_eq!(metrics.snapshot_installs.get(), 1);
            assert_eq!(metrics.snapshot_install_bytes.get(), file.len() as u64);
            assert_eq!(
                metrics.snapshot_chunks_received.get(),
                file.len().div_ceil(CHUNK_BYTES) as u64
            );
            // The leader retrying its last chunk after a lost answer hears it is complete.
            let last = ChunkHeader {
                cluster_id: 9,
                from: 1,
                to: 2,
                from_incarnation: 1,
                term: 5,
                meta: meta.clone(),
                transfer_id: 1,
                offset: 0,
                total_bytes: file.len() as u64,
            };
            assert_eq!(
                send(&chunks, last, &file[..CHUNK_BYTES]).await,
                ChunkAnswer::Complete
            );
        });
    }

    #[test]
    fn a_corrupted_transfer_is_refused_and_leaves_nothing_under_snap() {
        run_with_dir(|dir| async move {
            let store = store_of(60);
            let (meta, file) = leader_file(&dir.join("leader"), &store).await;
            let follower_dir = dir.join("follower");
            let (installs_tx, mut installs) = mpsc::channel(1);
            let chunks = spawn_receiver(
                options(follower_dir.clone()),
                KvOptions::default(),
                u64::MAX,
                installs_tx,
                NodeMetrics::new(),
            );
            let answer = stream(&chunks, &meta, &file, |offset, bytes| {
                if offset == 3 * CHUNK_BYTES as u64 {
                    bytes[7] ^= 0x20;
                }
            })
            .await;
            assert!(matches!(answer, ChunkAnswer::Refused { .. }), "{answer:?}");
            assert!(installs.try_recv().is_err(), "nothing handed to the driver");
            assert_eq!(
                env::fs::list_dir(snapshot::snapshot_dir(&follower_dir))
                    .await
                    .unwrap(),
                Vec::<String>::new()
            );
            // The leader's next attempt starts over and succeeds.
            assert_eq!(
                stream(&chunks, &meta, &file, |_, _| {}).await,
                ChunkAnswer::Complete
            );
            assert_eq!(
                installs.recv().await.unwrap().store.state_hash(),
                store.state_hash()
            );
        });
    }
}
