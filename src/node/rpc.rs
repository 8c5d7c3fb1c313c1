//! The wire format of Raft RPCs between nodes: a postcard-encoded envelope of messages
//! (`POST /v1/raft/messages`), and snapshot chunks (`POST /v1/raft/snapshot`): a little-endian
//! u32 header length, a postcard [`ChunkHeader`], then the chunk's raw bytes, answered with a
//! postcard [`ChunkAnswer`].

use serde::{Deserialize, Serialize};

use crate::raft::{Message, MessageBody, NodeId, SnapshotMeta, Term};

/// Largest encoded [`ChunkHeader`] accepted (its membership dominates: about 10 bytes a member).
pub const CHUNK_HEADER_BYTES_MAX: usize = 64 << 10;

/// Describes one chunk of a snapshot file a leader streams to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// The sender's cluster.
    pub cluster_id: u64,
    /// The sending leader.
    pub from: NodeId,
    /// The receiving member.
    pub to: NodeId,
    /// The incarnation of the sender's data directory (see [`Standing`]).
    pub from_incarnation: u64,
    /// The leader's term when it started the transfer.
    pub term: Term,
    /// The snapshot the file holds.
    pub meta: SnapshotMeta,
    /// The sender's id for this attempt (increasing per sender).
    pub transfer_id: u64,
    /// Where in the file the chunk's bytes start.
    pub offset: u64,
    /// The whole file's length.
    pub total_bytes: u64,
}

/// A follower's answer to a snapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// Send the bytes from `next_offset` on.
    Continue {
        /// The next offset the follower expects.
        next_offset: u64,
    },
    /// Every byte arrived; the follower verifies and installs the file.
    Complete,
    /// The follower takes a newer transfer (newer term, snapshot or attempt); stop.
    Stale,
    /// The follower will not take this transfer (over its limit, or its disk failed); stop.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Encodes a chunk request body.
pub fn encode_chunk(header: &ChunkHeader, bytes: &[u8]) -> Vec<u8> {
    let head = postcard::to_stdvec(header).expect("postcard encoding into a Vec cannot fail");
    let mut body = Vec::with_capacity(4 + head.len() + bytes.len());
    body.extend_from_slice(&(head.len() as u32).to_le_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(bytes);
    body
}

/// Decodes and validates a chunk request body like [`decode`] does an envelope; returns the
/// header and the offset of the chunk's bytes in `bytes`. A chunk is a leader's traffic: heard
/// from a stranger or another incarnation too (see [`decode`]).
pub fn decode_chunk(
    bytes: &[u8],
    body_bytes_max: usize,
    cluster_id: u64,
    self_id: NodeId,
    standing: impl Fn(NodeId, u64) -> Standing,
) -> Result<(ChunkHeader, usize), RpcError> {
    if bytes.len() > body_bytes_max {
        return Err(RpcError::TooLarge {
            size: bytes.len(),
            limit: body_bytes_max,
        });
    }
    let Some(len_bytes) = bytes.get(..4) else {
        return Err(RpcError::Malformed(
            "snapshot chunk shorter than its header length".into(),
        ));
    };
    let head_len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    if head_len > CHUNK_HEADER_BYTES_MAX || 4 + head_len > bytes.len() {
        return Err(RpcError::Malformed(format!(
            "snapshot chunk header of {head_len} bytes in a {}-byte body",
            bytes.len()
        )));
    }
    let header: ChunkHeader = postcard::from_bytes(&bytes[4..4 + head_len])
        .map_err(|e| RpcError::Malformed(e.to_string()))?;
    check_route(
        header.cluster_id,
        header.from,
        header.from_incarnation,
        header.to,
        cluster_id,
        self_id,
        standing,
    )?;
    Ok((header, 4 + head_len))
}

/// Encodes a chunk answer.
pub fn encode_answer(answer: &ChunkAnswer) -> Vec<u8> {
    postcard::to_stdvec(answer).expect("postcard encoding into a Vec cannot fail")
}

/// Decodes a chunk answer.
pub fn decode_answer(bytes: &[u8]) -> Result<ChunkAnswer, RpcError> {
    postcard::from_bytes(bytes).map_err(|e| RpcError::Malformed(e.to_string()))
}

/// What the receiver's configuration says of a sender (its id and the incarnation of its data
/// directory): only a member whose record names this incarnation is heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The configuration names the sender with this incarnation (or with none recorded).
    Member,
    /// This incarnation of the sender was removed from the configuration: answered 410 Gone,
    /// which tells it to stop.
    Removed,
    /// The configuration names the sender with another incarnation: this one lost (or never
    /// had) the durable state of that member, so it must not vote or count in a quorum as it.
    OtherIncarnation,
    /// The sender is not a member of any configuration this node knows: a member added after
    /// this node's log ends, heard for a leader's traffic and its vote requests (see [`decode`]).
    Stranger,
}

/// The cluster and member checks every peer RPC passes; answers the sender's standing (a
/// removed incarnation is refused here; a stranger is heard only for a leader's traffic, see
/// [`MessageBody::is_leader_traffic`], and for its vote requests; another incarnation only for
/// a leader's traffic).
fn check_route(
    got_cluster: u64,
    from: NodeId,
    from_incarnation: u64,
    to: NodeId,
    cluster_id: u64,
    self_id: NodeId,
    standing: impl Fn(NodeId, u64) -> Standing,
) -> Result<Standing, RpcError> {
    if got_cluster != cluster_id {
        return Err(RpcError::WrongCluster {
            expected: cluster_id,
            got: got_cluster,
        });
    }
    if to != self_id {
        return Err(RpcError::NotMember(format!(
            "addressed to node {to:#x}, this is node {self_id:#x}"
        )));
    }
    let incarnation = from_incarnation;
    match standing(from, incarnation) {
        Standing::Removed => Err(RpcError::Removed { from, incarnation }),
        heard => Ok(heard),
    }
}

/// One HTTP body of Raft traffic from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcEnvelope {
    /// The cluster the sender belongs to; a node rejects envelopes from another cluster.
    pub cluster_id: u64,
    /// The sending member.
    pub from: NodeId,
    /// The receiving member.
    pub to: NodeId,
    /// The incarnation of the sender's data directory (see [`Standing`]).
    pub from_incarnation: u64,
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
    /// The addressee is not this node.
    #[error("raft rpc rejected: {0}")]
    NotMember(String),
    /// The sender is not a member, and sent no leader's traffic nor vote request.
    #[error("raft rpc rejected: sender {from:#x} is not a member")]
    Stranger {
        /// The sender.
        from: NodeId,
    },
    /// This incarnation of the sender was removed from the cluster.
    #[error("raft rpc rejected: sender {from:#x} (incarnation {incarnation:#x}) was removed from the cluster")]
    Removed {
        /// The sender.
        from: NodeId,
        /// The sender's incarnation.
        incarnation: u64,
    },
    /// The configuration records the sender with another incarnation.
    #[error("raft rpc rejected: sender {from:#x} is a member under another incarnation than {incarnation:#x} (its data directory was replaced)")]
    OtherIncarnation {
        /// The sender.
        from: NodeId,
        /// The sender's incarnation.
        incarnation: u64,
    },
}

/// Encodes an envelope for the wire.
pub fn encode(envelope: &RpcEnvelope) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(envelope).expect("postcard encoding of an envelope into a Vec cannot fail")
}

/// Decodes and validates an envelope: size limit, cluster id, and that every message claims the
/// envelope's sender and receiver; answers it with the sender's standing. From a sender that
/// is not a member under its incarnation only a leader's traffic is kept, and from a stranger
/// its (pre-)vote requests too (refused if nothing is kept). Never panics, whatever the bytes.
pub fn decode(
    bytes: &[u8],
    body_bytes_max: usize,
    cluster_id: u64,
    self_id: NodeId,
    standing: impl Fn(NodeId, u64) -> Standing,
) -> Result<(RpcEnvelope, Standing), RpcError> {
    if bytes.len() > body_bytes_max {
        return Err(RpcError::TooLarge {
            size: bytes.len(),
            limit: body_bytes_max,
        });
    }
    let mut envelope: RpcEnvelope =
        postcard::from_bytes(bytes).map_err(|e| RpcError::Malformed(e.to_string()))?;
    let standing = check_route(
        envelope.cluster_id,
        envelope.from,
        envelope.from_incarnation,
        envelope.to,
        cluster_id,
        self_id,
        standing,
    )?;
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
    // Thesis §4.1: a leader's traffic is heard from anyone, and vote requests from a peer of
    // the cluster that no configuration of this node names. Such a sender is a member added
    // (or joined again) after this node's log ends: it may lead, and it may need this node's
    // vote (found by the simulator: seeds 251 and 504 for a leader's traffic; seed 9626 for
    // votes, where the member behind the entry that added the fourth voter refused its
    // requests and no candidate could win 3 of 4). Or it is a removed server, or an impostor
    // holding the secret, which gains nothing: a vote it asks for counts in no quorum of this
    // node, it cannot win without the votes of the members that hold its removal, and
    // pre-vote and the leader lease (§4.2.3, see `raft::core::step`) keep it from disrupting a
    // live leader. Anything else of it is refused: its answers would count in this node's
    // quorums. A member under another incarnation (its data directory was replaced) lost the
    // votes it cast, so only a leader's traffic of it is heard, never its vote requests.
    if standing != Standing::Member {
        // A term-0 message no correct peer sends (the core drops it anyway): kept out here, so
        // a non-member's invalid heartbeat is refused instead of waking the driver.
        envelope
            .messages
            .retain(|message| is_heard_from(standing, &message.body) && message.term > 0);
        if envelope.messages.is_empty() {
            let from = envelope.from;
            let incarnation = envelope.from_incarnation;
            return Err(match standing {
                Standing::OtherIncarnation => RpcError::OtherIncarnation { from, incarnation },
                _ => RpcError::Stranger { from },
            });
        }
    }
    Ok((envelope, standing))
}

/// Whether a message of `body` is heard from a sender of `standing` other than a member: a
/// leader's traffic from anyone, and a (pre-)vote request from a stranger (see [`decode`]).
/// Never an answer (it would count in a quorum of the receiver) nor `TimeoutNow`.
fn is_heard_from(standing: Standing, body: &MessageBody) -> bool {
    let vote_request = matches!(body, MessageBody::PreVote { .. } | MessageBody::Vote { .. });
    body.is_leader_traffic() || (standing == Standing::Stranger && vote_request)
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
            from_incarnation: 0x77,
            messages: vec![heartbeat(1, 2)],
        }
    }

    #[test]
    fn an_envelope_round_trips() {
        let bytes = encode(&envelope());
        assert_eq!(
            decode(&bytes, 1 << 20, 9, 2, member_1),
            Ok((envelope(), Standing::Member))
        );
    }

    /// The receiver's view in most tests: node 1 is a member with incarnation 0x77.
    fn member_1(id: NodeId, incarnation: u64) -> Standing {
        match (id, incarnation) {
            (1, 0x77) => Standing::Member,
            (1, _) => Standing::OtherIncarnation,
            _ => Standing::Stranger,
        }
    }

    /// Asserts that `decode(body_bytes_max, cluster_id, self_id, standing)` refuses another
    /// cluster, a removed incarnation, a wrong addressee and an oversized body, hears a leader's
    /// traffic from a stranger or another incarnation (the body is a leader's, from node 1,
    /// incarnation 0x77, to node 2 in cluster 9, over 8 bytes long), and passes the sender's id
    /// and incarnation to `standing`.
    fn assert_route_checks<T: std::fmt::Debug>(
        decode: impl Fn(usize, u64, NodeId, &dyn Fn(NodeId, u64) -> Standing) -> Result<T, RpcError>,
    ) {
        let member = |_, _| Standing::Member;
        assert!(matches!(
            decode(1 << 20, 8, 2, &member),
            Err(RpcError::WrongCluster { .. })
        ));
        assert_eq!(
            decode(1 << 20, 9, 2, &|_, _| Standing::Removed).unwrap_err(),
            RpcError::Removed {
                from: 1,
                incarnation: 0x77
            }
        );
        assert!(matches!(
            decode(1 << 20, 9, 3, &member),
            Err(RpcError::NotMember(_))
        ));
        assert!(matches!(
            decode(8, 9, 2, &member),
            Err(RpcError::TooLarge { .. })
        ));
        assert!(decode(1 << 20, 9, 2, &member).is_ok());
        assert!(decode(1 << 20, 9, 2, &member_1).is_ok());
        // Thesis §4.1: a leader this node's log does not name yet is heard.
        assert!(decode(1 << 20, 9, 2, &|_, _| Standing::Stranger).is_ok());
        let other_incarnation = |id, incarnation| member_1(id, incarnation ^ 1);
        assert!(decode(1 << 20, 9, 2, &other_incarnation).is_ok());
    }

    #[test]
    fn envelopes_from_another_cluster_or_a_removed_incarnation_are_refused() {
        let bytes = encode(&envelope());
        assert_route_checks(|limit, cluster, me, standing| {
            decode(&bytes, limit, cluster, me, standing)
        });
    }

    fn vote(from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: 4,
            body: MessageBody::Vote {
                last_log_index: 9,
                last_log_term: 3,
                transfer: true,
            },
        }
    }

    fn pre_vote(from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: 4,
            body: MessageBody::PreVote {
                last_log_index: 9,
                last_log_term: 3,
            },
        }
    }

    /// One message of every kind a non-leader sends: answers and `TimeoutNow`.
    fn answers(from: NodeId, to: NodeId) -> Vec<Message> {
        [
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::VoteResponse { granted: true },
            MessageBody::AppendResponse {
                index: 9,
                reject_hint: None,
            },
            MessageBody::HeartbeatResponse { read_seq: 1 },
            MessageBody::TimeoutNow,
        ]
        .into_iter()
        .map(|body| Message {
            from,
            to,
            term: 3,
            body,
        })
        .collect()
    }

    fn envelope_of(messages: Vec<Message>) -> Vec<u8> {
        let mut envelope = envelope();
        envelope.messages = messages;
        encode(&envelope)
    }

    #[test]
    fn a_stranger_is_heard_for_a_leaders_traffic_and_its_vote_requests_only() {
        let mut mixed = vec![vote(1, 2), heartbeat(1, 2), pre_vote(1, 2)];
        mixed.extend(answers(1, 2));
        let bytes = envelope_of(mixed.clone());
        // Thesis §4.1: a member added after this node's log ends may lead, and may need this
        // node's vote (simulator, seed 9626); its answers would count in this node's quorums.
        let (heard, got) = decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Stranger).unwrap();
        assert_eq!(got, Standing::Stranger);
        assert_eq!(
            heard.messages,
            vec![vote(1, 2), heartbeat(1, 2), pre_vote(1, 2)]
        );
        // A vote request alone is heard too.
        for request in [vote(1, 2), pre_vote(1, 2)] {
            let bytes = envelope_of(vec![request.clone()]);
            let (heard, _) = decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Stranger).unwrap();
            assert_eq!(heard.messages, vec![request]);
        }
        // A member is heard in full.
        let (heard, _) = decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Member).unwrap();
        assert_eq!(heard.messages, mixed);
    }

    #[test]
    fn another_incarnation_is_heard_for_a_leaders_traffic_only() {
        let mut mixed = vec![vote(1, 2), heartbeat(1, 2), pre_vote(1, 2)];
        mixed.extend(answers(1, 2));
        let bytes = envelope_of(mixed);
        // A replaced data directory lost the votes its member cast: it must not campaign as it.
        let (heard, got) =
            decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::OtherIncarnation).unwrap();
        assert_eq!(got, Standing::OtherIncarnation);
        assert_eq!(heard.messages, vec![heartbeat(1, 2)]);
        assert_eq!(
            decode(
                &envelope_of(vec![vote(1, 2), pre_vote(1, 2)]),
                1 << 20,
                9,
                2,
                |_, _| Standing::OtherIncarnation
            ),
            Err(RpcError::OtherIncarnation {
                from: 1,
                incarnation: 0x77
            })
        );
    }

    #[test]
    fn a_non_member_is_refused_when_nothing_of_it_is_heard() {
        // Answers, TimeoutNow and term-0 messages (a vote request included) alone are
        // refused, each standing with its own error.
        let mut stale_heartbeat = heartbeat(1, 2);
        stale_heartbeat.term = 0;
        let mut stale_vote = vote(1, 2);
        stale_vote.term = 0;
        let mut refused = answers(1, 2);
        refused.extend([stale_heartbeat, stale_vote]);
        for message in &refused {
            let bytes = envelope_of(vec![message.clone()]);
            assert_eq!(
                decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Stranger),
                Err(RpcError::Stranger { from: 1 }),
                "{message:?}"
            );
        }
        let bytes = envelope_of(refused);
        assert_eq!(
            decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Stranger),
            Err(RpcError::Stranger { from: 1 })
        );
        assert_eq!(
            decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::OtherIncarnation),
            Err(RpcError::OtherIncarnation {
                from: 1,
                incarnation: 0x77
            })
        );
    }

    #[test]
    fn a_message_that_lies_about_its_sender_is_refused() {
        let mut forged = envelope();
        forged.messages.push(heartbeat(3, 2));
        let bytes = encode(&forged);
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Member),
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
            from_incarnation: 0x77,
            messages: vec![append],
        });
        assert!(matches!(
            decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Member),
            Err(RpcError::Malformed(_))
        ));
    }

    fn chunk_header() -> ChunkHeader {
        ChunkHeader {
            cluster_id: 9,
            from: 1,
            to: 2,
            from_incarnation: 0x77,
            term: 3,
            meta: SnapshotMeta::default(),
            transfer_id: 4,
            offset: 5,
            total_bytes: 6,
        }
    }

    #[test]
    fn a_snapshot_chunk_round_trips_with_its_bytes() {
        let body = encode_chunk(&chunk_header(), b"abc");
        let (header, start) = decode_chunk(&body, 1 << 20, 9, 2, member_1).unwrap();
        assert_eq!(header, chunk_header());
        assert_eq!(&body[start..], b"abc");
    }

    #[test]
    fn snapshot_chunks_get_the_same_cluster_and_member_checks_as_messages() {
        let body = encode_chunk(&chunk_header(), b"abc");
        assert_route_checks(|limit, cluster, me, standing| {
            decode_chunk(&body, limit, cluster, me, standing)
        });
    }

    #[test]
    fn a_chunk_whose_header_length_lies_is_malformed_not_a_panic() {
        let mut body = encode_chunk(&chunk_header(), b"abc");
        body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_chunk(&body, 1 << 20, 9, 2, |_, _| Standing::Member),
            Err(RpcError::Malformed(_))
        ));
        assert!(decode_answer(&[]).is_err());
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(decode_chunk(&bytes, 1 << 20, 9, 2, |_, _| Standing::Member).is_err());
        }
    }

    #[test]
    fn chunk_answers_round_trip() {
        for answer in [
            ChunkAnswer::Continue { next_offset: 7 },
            ChunkAnswer::Complete,
            ChunkAnswer::Stale,
            ChunkAnswer::Refused {
                reason: "full".into(),
            },
        ] {
            assert_eq!(decode_answer(&encode_answer(&answer)), Ok(answer));
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(decode(&bytes, 1 << 20, 9, 2, |_, _| Standing::Member).is_err());
        }
    }
}
