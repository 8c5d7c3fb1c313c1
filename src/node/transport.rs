//! Outbound Raft traffic: one task per peer batches whatever the driver queued for that peer
//! into one `POST /v1/raft/messages` at a time over a reused connection. Raft tolerates loss, so
//! a full queue or a failed call drops messages rather than blocking the driver.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::mpsc;

use super::cluster::ClusterInfo;
use super::rpc::{self, RpcEnvelope};
use super::NodeMetrics;
use crate::env;
use crate::http::client::HttpClient;
use crate::metrics::Counter;
use crate::raft::{Message, MessageBody, NodeId};
use crate::snapshot;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 8192;
/// Messages in one RPC at most.
const MESSAGES_PER_RPC_MAX: usize = 4096;
/// Pause after a failed call, so a dead peer costs little.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Routes the driver's outbound messages to per-peer sender tasks.
pub(super) struct Transport {
    peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    dropped: Counter,
}

impl Transport {
    pub(super) fn new(
        cluster: &ClusterInfo,
        client: HttpClient,
        snapshot_dir: PathBuf,
        rpc_timeout: Duration,
        body_bytes_max: usize,
        metrics: &NodeMetrics,
    ) -> Transport {
        let mut peers = BTreeMap::new();
        for member in cluster.members.iter().filter(|m| m.id != cluster.self_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let link = PeerLink {
                cluster_id: cluster.cluster_id,
                from: cluster.self_id,
                to: member.id,
                addr: member.addr.clone(),
                client: client.clone(),
                snapshot_dir: snapshot_dir.clone(),
                rpc_timeout,
                body_bytes_max,
                errors: metrics.registry.counter(
                    "raft_peer_rpc_errors_total",
                    "Raft RPCs to a peer that failed.",
                    &[("peer", member.name.clone())],
                ),
            };
            env::spawn(link.run(rx));
            peers.insert(member.id, tx);
        }
        let dropped = metrics.registry.counter(
            "raft_messages_dropped_total",
            "Outbound Raft messages dropped because a peer's queue was full.",
            &[],
        );
        Transport { peers, dropped }
    }

    /// Queues messages for their peers; never blocks.
    pub(super) fn send(&self, messages: Vec<Message>) {
        for message in messages {
            match self.peers.get(&message.to) {
                Some(queue) => {
                    if queue.try_send(message).is_err() {
                        self.dropped.inc();
                    }
                }
                None => tracing::warn!(to = message.to, "message for an unknown peer dropped"),
            }
        }
    }
}

struct PeerLink {
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    addr: String,
    client: HttpClient,
    /// Where the snapshot files an `InstallSnapshot` names live.
    snapshot_dir: PathBuf,
    rpc_timeout: Duration,
    body_bytes_max: usize,
    errors: Counter,
}

impl PeerLink {
    /// Design section 4's shim until the streamed transfer lands: the core's `InstallSnapshot`
    /// names a snapshot file (its `data` is empty); send the file's bytes whole in `data`. A
    /// file already replaced by a newer snapshot drops the message (Raft resends).
    async fn attach_snapshot_files(&self, messages: &mut Vec<Message>) {
        let mut attached = Vec::with_capacity(messages.len());
        for mut message in messages.drain(..) {
            if let MessageBody::InstallSnapshot { snapshot } = &mut message.body {
                if snapshot.data.is_empty() {
                    let path = self.snapshot_dir.join(snapshot::file_name(&snapshot.meta));
                    match env::fs::read(&path).await {
                        Ok(bytes) => snapshot.data = Bytes::from(bytes),
                        Err(error) => {
                            tracing::warn!(peer = %self.addr, %error, "snapshot file to send is gone");
                            continue;
                        }
                    }
                }
            }
            attached.push(message);
        }
        *messages = attached;
    }

    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        while let Some(first) = queue.recv().await {
            let mut messages = vec![first];
            while messages.len() < MESSAGES_PER_RPC_MAX {
                match queue.try_recv() {
                    Ok(message) => messages.push(message),
                    Err(_) => break,
                }
            }
            self.attach_snapshot_files(&mut messages).await;
            if messages.is_empty() {
                continue;
            }
            let body = rpc::encode(&RpcEnvelope {
                cluster_id: self.cluster_id,
                from: self.from,
                to: self.to,
                messages,
            });
            if body.len() > self.body_bytes_max {
                tracing::warn!(peer = %self.addr, bytes = body.len(), "raft rpc over the body limit dropped");
                self.errors.inc();
                continue;
            }
            let request = hyper::Request::post("/v1/raft/messages")
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(body)))
                .expect("a static request is valid");
            let ok = match self
                .client
                .call(&self.addr, request, 64 << 10, self.rpc_timeout)
                .await
            {
                Ok(response) if response.status().is_success() => true,
                Ok(response) => {
                    tracing::debug!(peer = %self.addr, status = %response.status(), "raft rpc refused");
                    false
                }
                Err(error) => {
                    tracing::debug!(peer = %self.addr, %error, "raft rpc failed");
                    false
                }
            };
            if !ok {
                self.errors.inc();
                env::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}
