//! The wire format of Raft RPCs between nodes: a postcard-encoded envelope of messages.

use serde::{Deserialize, Serialize};

use crate::raft::{Message, MessageBody, NodeId};

/// One HTTP body of Raft traffic from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcEnvelope {
    /// The cluster the sender belongs to; a node rejects envelopes from another cluster.
    pub cluster_id: u64,
    /// The sending member.
    pub from: NodeId,
    /// The receiving member.
    pub to: NodeId,
    /// The messages, in the order the sender's core produced them.
    pub messages: Vec<Message>,
}

/// Why an envelope was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The body is not a valid envelope.
    #[error("malformed raft rpc body: {0}")]
    Malformed(String),
    /// The body is over the configured limit.
    #[error("raft rpc body of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The sender belongs to another cluster.
    #[error("raft rpc from cluster {got:#x}, this node is in cluster {expected:#x}")]
    WrongCluster {
        /// This node's cluster.
        expected: u64,
        /// The sender's cluster.
        got: u64,
    },
    /// The sender or the addressee is not who it should be.
    #[error("raft rpc rejected: {0}")]
    NotMember(String),
}

/// Encodes an envelope for the wire.
pub fn encode(envelope: &RpcEnvelope) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(envelope).expect("postcard encoding of an envelope into a Vec cannot fail")
}

/// Decodes and validates an envelope: size limit, cluster id, and that every message claims the
/// envelope's sender and receiver. Never panics, whatever the bytes.
pub fn decode(
    bytes: &[u8],
    body_bytes_max: usize,
    cluster_id: u64,
    self_id: NodeId,
    is_member: impl Fn(NodeId) -> bool,
) -> Result<RpcEnvelope, RpcError> {
    if bytes.len() > body_bytes_max {
        return Err(RpcError::TooLarge {
            size: bytes.len(),
            limit: body_bytes_max,
        });
    }
    let envelope: RpcEnvelope =
        postcard::from_bytes(bytes).map_err(|e| RpcError::Malformed(e.to_string()))?;
    if envelope.cluster_id != cluster_id {
        return Err(RpcError::WrongCluster {
            expected: cluster_id,
            got: envelope.cluster_id,
        });
    }
    if envelope.to != self_id {
        return Err(RpcError::NotMember(format!(
            "addressed to node {:#x}, this is node {self_id:#x}",
            envelope.to
        )));
    }
    if !is_member(envelope.from) {
        return Err(RpcError::NotMember(format!(
            "sender {:#x} is not a member",
            envelope.from
        )));
    }
    for message in &envelope.messages {
        if message.from != envelope.from || message.to != envelope.to {
            return Err(RpcError::Malformed(format!(
                "message {} from {:#x} to {:#x} inside an envelope from {:#x} to {:#x}",
                message.body.name(),
                message.from,
                message.to,
                envelope.from,
                envelope.to
            )));
        }
        if let MessageBody::Append {
            entries,
            prev_log_index,
            ..
        } = &message.body
        {
            // Checked: a peer may claim any prev_log_index, u64::MAX included.
            let contiguous = entries
                .iter()
                .enumerate()
                .all(|(i, e)| prev_log_index.checked_add(1 + i as u64) == Some(e.index));
            if !contiguous {
                return Err(RpcError::Malformed(
                    "append entries are not contiguous".into(),
                ));
            }
        }
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: 3,
            body: MessageBody::Heartbeat {
                leader_commit: 7,
                read_seq: 0,
            },
        }
    }

    fn envelope() -> RpcEnvelope {
        RpcEnvelope {
            cluster_id: 9,
            from: 1,
            to: 2,
            messages: vec![heartbeat(1, 2)],
        }
    }

    #[test]
    fn an_envelope_round_trips() {
        let bytes = encode(&envelope());
        assert_eq!(decode(&bytes, 1 << 20, 9, 2, |id| id == 1), Ok(envelope()));
    }

    #[test]
    fn envelopes_from_another_cluster_or_a_stranger_are_refused() {
        let bytes = encode(&envelope());
        assert!(matches!(
            decode(&bytes, 1 << 20, 8, 2, |_| true),
            Err(RpcError::WrongCluster { .. })
        ));
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 2, |_| false),
            Err(RpcError::NotMember(_))
        ));
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 3, |_| true),
            Err(RpcError::NotMember(_))
        ));
        assert!(matches!(
            decode(&bytes, 4, 9, 2, |_| true),
            Err(RpcError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_message_that_lies_about_its_sender_is_refused() {
        let mut forged = envelope();
        forged.messages.push(heartbeat(3, 2));
        let bytes = encode(&forged);
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 2, |_| true),
            Err(RpcError::Malformed(_))
        ));
    }

    #[test]
    fn an_append_past_the_last_index_is_malformed_not_an_overflow() {
        let entry = crate::raft::Entry {
            term: 1,
            index: 0,
            kind: crate::raft::EntryKind::Normal,
            data: Default::default(),
        };
        let append = Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: u64::MAX,
                prev_log_term: 1,
                entries: vec![entry],
                leader_commit: 0,
            },
        };
        let bytes = encode(&RpcEnvelope {
            cluster_id: 9,
            from: 1,
            to: 2,
            messages: vec![append],
        });
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 2, |_| true),
            Err(RpcError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(decode(&bytes, 1 << 20, 9, 2, |_| true).is_err());
        }
    }
}
