//! Outbound Raft traffic: one task per peer batches whatever the driver queued for that peer
//! into one `POST /v1/raft/messages` at a time over a reused connection, capped by count and by
//! bytes so a batch always fits the peer's body limit. Raft tolerates loss, so a full queue or a
//! failed call drops messages rather than blocking the driver. An `InstallSnapshot` without
//! data goes to the [`SnapshotSender`] instead, which streams the snapshot file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::cluster::{ClusterInfo, Member};
use super::members::Directory;
use super::peer_auth::{signed_post, PeerSecret, PEER_ADDR_HEADER};
use super::rpc::{self, RpcEnvelope};
use super::snapshot_transfer::{Leadership, SnapshotSender, TransferOptions};
use super::NodeMetrics;
use crate::env;
use crate::http::client::HttpClient;
use crate::metrics::Counter;
use crate::raft::{Message, MessageBody, NodeId};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 8192;
/// Messages in one RPC at most.
const MESSAGES_PER_RPC_MAX: usize = 4096;
/// Bytes of an envelope's own fields, and the most a message adds besides its payloads
/// (postcard varints: ids, terms and indexes take at most 10 bytes each).
const ENVELOPE_OVERHEAD_BYTES: usize = 64;
const MESSAGE_OVERHEAD_BYTES: usize = 96;
const ENTRY_OVERHEAD_BYTES: usize = 32;
/// A member record's id key, incarnation and two length prefixes.
const RECORD_OVERHEAD_BYTES: usize = 40;
/// Pause after a failed call, so a dead peer costs little.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Routes the driver's outbound messages to per-peer sender tasks.
pub(super) struct Transport {
    /// Per peer: the address its link calls and the link's queue.
    peers: BTreeMap<NodeId, (String, mpsc::Sender<Message>)>,
    snapshots: SnapshotSender,
    dropped: Counter,
    cluster_id: u64,
    self_id: NodeId,
    /// This node's incarnation, sent with every envelope.
    self_incarnation: u64,
    client: HttpClient,
    rpc_timeout: Duration,
    body_bytes_max: usize,
    metrics: NodeMetrics,
    directory: Arc<Directory>,
    /// Signs every peer RPC when the cluster has a secret.
    peer_secret: Option<PeerSecret>,
}

/// An upper bound on the bytes `message` adds to an encoded envelope.
pub(super) fn message_bytes_bound(message: &Message) -> usize {
    match &message.body {
        MessageBody::Append { entries, .. } => {
            MESSAGE_OVERHEAD_BYTES
                + entries
                    .iter()
                    .map(|e| ENTRY_OVERHEAD_BYTES + e.data.len())
                    .sum::<usize>()
        }
        MessageBody::InstallSnapshot { snapshot } => {
            let membership = &snapshot.meta.membership;
            MESSAGE_OVERHEAD_BYTES
                + snapshot.data.len()
                + 10 * (membership.members().count() + 1)
                + membership
                    .records
                    .values()
                    .map(|r| RECORD_OVERHEAD_BYTES + r.name.len() + r.addr.len())
                    .sum::<usize>()
        }
        _ => MESSAGE_OVERHEAD_BYTES,
    }
}

impl Transport {
    pub(super) fn new(
        cluster: &ClusterInfo,
        directory: Arc<Directory>,
        client: HttpClient,
        rpc_timeout: Duration,
        body_bytes_max: usize,
        transfer: TransferOptions,
        metrics: &NodeMetrics,
    ) -> Transport {
        let peer_secret = transfer.peer_secret.clone();
        let self_incarnation = transfer.self_incarnation;
        let snapshots =
            SnapshotSender::new(transfer, client.clone(), directory.clone(), metrics.clone());
        let dropped = metrics.registry.counter(
            "raft_messages_dropped_total",
            "Outbound Raft messages dropped because a peer's queue was full.",
            &[],
        );
        let mut transport = Transport {
            peers: BTreeMap::new(),
            snapshots,
            dropped,
            cluster_id: cluster.cluster_id,
            self_id: cluster.self_id,
            self_incarnation,
            client,
            rpc_timeout,
            body_bytes_max,
            metrics: metrics.clone(),
            directory: directory.clone(),
            peer_secret,
        };
        transport.sync_peers(&directory.linked_members());
        transport
    }

    /// Runs one link per member other than this node: starts links to new members (or to a
    /// member whose address changed) and ends those to members that left (dropping a link's
    /// queue ends its task).
    ///
    /// Links to strangers (see [`Directory::stranger_route`]) stay while the directory keeps
    /// their route.
    pub(super) fn sync_peers(&mut self, members: &[Member]) {
        let directory = self.directory.clone();
        self.peers.retain(|id, (addr, _)| {
            members
                .iter()
                .any(|m| m.id == *id && m.addr == *addr && !m.addr.is_empty())
                || directory
                    .stranger_route(*id)
                    .is_some_and(|route| route.addr == *addr)
        });
        let self_id = self.self_id;
        for member in members.iter().filter(|m| m.id != self_id) {
            if member.addr.is_empty() || self.peers.contains_key(&member.id) {
                continue;
            }
            self.start_link(member);
        }
    }

    /// Starts the link to `member`.
    fn start_link(&mut self, member: &Member) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        let link = PeerLink {
            cluster_id: self.cluster_id,
            from: self.self_id,
            to: member.id,
            from_incarnation: self.self_incarnation,
            addr: member.addr.clone(),
            client: self.client.clone(),
            rpc_timeout: self.rpc_timeout,
            body_bytes_max: self.body_bytes_max,
            directory: self.directory.clone(),
            peer_secret: self.peer_secret.clone(),
            errors: self.metrics.registry.counter(
                "raft_peer_rpc_errors_total",
                "Raft RPCs to a peer that failed.",
                &[("peer", member.name.clone())],
            ),
        };
        env::spawn(link.run(rx));
        self.peers.insert(member.id, (member.addr.clone(), tx));
    }

    /// Tells snapshot transfers who leads (see [`SnapshotSender::set_leadership`]).
    /// Asks every peer whether this node is still a member: an envelope without messages, which
    /// a peer accepts and ignores from a member, and answers 410 Gone once it has committed this
    /// node's removal (then the directory records the removal and the node stops).
    pub(super) fn probe_membership(&self) {
        for (&to, (addr, _)) in &self.peers {
            let envelope = RpcEnvelope {
                cluster_id: self.cluster_id,
                from: self.self_id,
                to,
                from_incarnation: self.self_incarnation,
                messages: Vec::new(),
            };
            let request = envelope_request(
                rpc::encode(&envelope),
                self.self_id,
                self.peer_secret.as_ref(),
                &self.directory,
            );
            let client = self.client.clone();
            let directory = self.directory.clone();
            let addr = addr.clone();
            let timeout = self.rpc_timeout;
            env::spawn(async move {
                match client.call(&addr, request, 64 << 10, timeout).await {
                    Ok(response) if response.status() == hyper::StatusCode::GONE => directory
                        .mark_removed(format!(
                            "peer {addr} answered 410 Gone to a membership probe: this node was \
                             removed from the cluster"
                        )),
                    Ok(response) => {
                        tracing::debug!(peer = %addr, status = %response.status(), "membership probe answered")
                    }
                    Err(error) => tracing::debug!(peer = %addr, %error, "membership probe failed"),
                }
            });
        }
    }

    pub(super) fn set_leadership(&self, leadership: Leadership) {
        self.snapshots.set_leadership(leadership);
    }

    /// Queues messages for their peers; never blocks. A message to a sender that no
    /// configuration names yet goes to the address its RPCs gave.
    pub(super) fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if let MessageBody::InstallSnapshot { snapshot } = &message.body {
                if snapshot.data.is_empty() {
                    // The state lives in the snapshot file: stream it.
                    self.snapshots
                        .start(message.to, message.term, snapshot.meta.clone());
                    continue;
                }
            }
            if !self.peers.contains_key(&message.to) {
                if let Some(route) = self.directory.stranger_route(message.to) {
                    self.start_link(&route);
                }
            }
            match self.peers.get(&message.to) {
                Some((_, queue)) => {
                    if queue.try_send(message).is_err() {
                        self.dropped.inc();
                    }
                }
                None => tracing::warn!(to = message.to, "message for an unknown peer dropped"),
            }
        }
    }
}

/// The signed `POST /v1/raft/messages` carrying an encoded envelope from `from`, with the
/// sender's address for a peer whose log does not name it yet.
fn envelope_request(
    body: Vec<u8>,
    from: NodeId,
    peer_secret: Option<&PeerSecret>,
    directory: &Directory,
) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    let mut request = signed_post("/v1/raft/messages", body, peer_secret);
    if let Some(addr) = directory
        .member(from)
        .and_then(|me| hyper::header::HeaderValue::from_str(&me.addr).ok())
    {
        request.headers_mut().insert(PEER_ADDR_HEADER, addr);
    }
    request
}

struct PeerLink {
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    from_incarnation: u64,
    addr: String,
    client: HttpClient,
    /// Where the snapshot files an `InstallSnapshot` names live.
    rpc_timeout: Duration,
    body_bytes_max: usize,
    errors: Counter,
    /// Told when a peer answers 410 Gone (this node was removed).
    directory: Arc<Directory>,
    peer_secret: Option<PeerSecret>,
}

impl PeerLink {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        // A message taken from the queue that did not fit the last batch opens the next one.
        let mut held: Option<Message> = None;
        // Said once per link: the refusal repeats on every call.
        let mut warned_other_incarnation = false;
        loop {
            let first = match held.take() {
                Some(message) => message,
                None => match queue.recv().await {
                    Some(message) => message,
                    None => break,
                },
            };
            let mut batch_bytes = ENVELOPE_OVERHEAD_BYTES + message_bytes_bound(&first);
            let mut messages = vec![first];
            while messages.len() < MESSAGES_PER_RPC_MAX {
                match queue.try_recv() {
                    Ok(message) => {
                        let bytes = message_bytes_bound(&message);
                        if batch_bytes + bytes > self.body_bytes_max {
                            held = Some(message);
                            break;
                        }
                        batch_bytes += bytes;
                        messages.push(message);
                    }
                    Err(_) => break,
                }
            }
            if messages.is_empty() {
                continue;
            }
            let body = rpc::encode(&RpcEnvelope {
                cluster_id: self.cluster_id,
                from: self.from,
                to: self.to,
                from_incarnation: self.from_incarnation,
                messages,
            });
            if body.len() > self.body_bytes_max {
                // Only a single message larger than the limit gets here (the core bounds an
                // Append by `max_bytes_per_append`, which the driver keeps below the limit).
                tracing::warn!(peer = %self.addr, bytes = body.len(), "raft message over the body limit dropped");
                self.errors.inc();
                continue;
            }
            let request =
                envelope_request(body, self.from, self.peer_secret.as_ref(), &self.directory);
            let ok = match self
                .client
                .call(&self.addr, request, 64 << 10, self.rpc_timeout)
                .await
            {
                Ok(response) if response.status().is_success() => true,
                Ok(response) if response.status() == hyper::StatusCode::GONE => {
                    self.directory.mark_removed(format!(
                        "peer {} answered 410 Gone: this node was removed from the cluster",
                        self.addr
                    ));
                    false
                }
                Ok(response) => {
                    let other_incarnation = response.status() == hyper::StatusCode::FORBIDDEN
                        && serde_json::from_slice::<serde_json::Value>(response.body())
                            .is_ok_and(|body| body["code"] == "other_incarnation");
                    if other_incarnation && !warned_other_incarnation {
                        warned_other_incarnation = true;
                        tracing::warn!(
                            peer = %self.addr,
                            "the peer records this member under another incarnation (its data \
                             directory was replaced): its RPCs are refused; remove the member, \
                             then join again with an empty data directory"
                        );
                    } else {
                        tracing::debug!(peer = %self.addr, status = %response.status(), "raft rpc refused");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryKind, Membership, Snapshot, SnapshotMeta};
    use bytes::Bytes;

    fn append(entries: usize, data_bytes: usize) -> Message {
        Message {
            from: u64::MAX,
            to: u64::MAX - 1,
            term: u64::MAX,
            body: MessageBody::Append {
                prev_log_index: u64::MAX - 1_000_000,
                prev_log_term: u64::MAX,
                entries: (0..entries as u64)
                    .map(|i| Entry {
                        term: u64::MAX,
                        index: u64::MAX - 1_000_000 + 1 + i,
                        kind: EntryKind::Normal,
                        data: Bytes::from(vec![7u8; data_bytes]),
                    })
                    .collect(),
                leader_commit: u64::MAX,
            },
        }
    }

    #[test]
    fn the_byte_bound_of_a_batch_is_never_below_its_encoded_size() {
        let snapshot = Message {
            from: u64::MAX,
            to: 1,
            term: u64::MAX,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index: u64::MAX,
                        term: u64::MAX,
                        membership: Membership::with_voters([u64::MAX, u64::MAX - 1, 3]),
                    },
                    data: Bytes::from(vec![1u8; 300]),
                },
            },
        };
        let heartbeat = Message {
            from: u64::MAX,
            to: 1,
            term: u64::MAX,
            body: MessageBody::Heartbeat {
                leader_commit: u64::MAX,
                read_seq: u64::MAX,
            },
        };
        let batches = [
            vec![append(0, 0)],
            vec![append(1, 0), append(3, 200_000)],
            vec![append(300, 1), heartbeat.clone(), snapshot],
            vec![heartbeat; 50],
        ];
        for messages in batches {
            let bound =
                ENVELOPE_OVERHEAD_BYTES + messages.iter().map(message_bytes_bound).sum::<usize>();
            let encoded = rpc::encode(&RpcEnvelope {
                cluster_id: u64::MAX,
                from: u64::MAX,
                to: u64::MAX - 1,
                from_incarnation: u64::MAX,
                messages,
            });
            assert!(
                encoded.len() <= bound,
                "encoded {} bytes over the bound {bound}",
                encoded.len()
            );
        }
    }
}
