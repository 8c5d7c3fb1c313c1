//! Target `rpc_decode`: arbitrary bytes into the Raft RPC decoder, the first code that sees a
//! peer's HTTP body.
//!
//! Checked for every input:
//! - `decode` never panics, on the raw bytes and on the bytes behind a valid envelope header
//!   (so the fuzzer reaches message decoding without guessing the cluster id first);
//! - its peak heap growth stays under [`ALLOC_FIXED_BYTES_MAX`] + [`ALLOC_PER_INPUT_BYTE_MAX`]
//!   times the input size (when the counting allocator is installed);
//! - an accepted envelope satisfies everything `decode` promises (cluster, addressee, the
//!   sender's standing answered and never a removed incarnation, only a leader's traffic (and
//!   a stranger's vote requests) from anyone but a member under its recorded incarnation, every
//!   message claiming the envelope's ends, contiguous append entries), and encodes and decodes
//!   back to itself;
//! - an input over the body limit is refused as `TooLarge` before it is parsed.

use raft_kv::node::rpc::{self, RpcEnvelope, RpcError, Standing};
use raft_kv::raft::{MessageBody, NodeId};

use super::alloc_probe;

/// The cluster the decoding node belongs to.
pub const CLUSTER_ID: u64 = 0x00c0_ffee;
/// The decoding node.
pub const SELF_ID: NodeId = 2;
/// The members of the cluster.
pub const MEMBER_IDS: [NodeId; 3] = [1, 2, 3];
/// The incarnation every member's record names.
pub const MEMBER_INCARNATION: u64 = 7;
/// The body limit the production node uses (`NodeConfig::rpc_body_bytes_max`).
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// Heap the decoder may take whatever the input: serde preallocates at most 1 MiB for a
/// sequence whose declared length is not backed by bytes, and one envelope nests two sequences
/// (messages, then entries or member sets inside one message).
pub const ALLOC_FIXED_BYTES_MAX: usize = 4 << 20;
/// Heap the decoder may take per input byte: a 4-byte message decodes into a ~150-byte struct,
/// and vectors double as they grow.
pub const ALLOC_PER_INPUT_BYTE_MAX: usize = 512;

/// Runs one input; panics when a property above does not hold.
pub fn run(data: &[u8]) {
    check_decode(data);
    // The same bytes behind a valid header: cluster id, sender 1, addressee 2, incarnation, then
    // `data` read as the message vector.
    let mut framed = header_bytes();
    framed.extend_from_slice(data);
    check_decode(&framed);
    // The body limit is checked before anything is parsed.
    if !data.is_empty() {
        let limit = data.len() - 1;
        let refused = rpc::decode(data, limit, CLUSTER_ID, SELF_ID, standing);
        assert_eq!(
            refused,
            Err(RpcError::TooLarge {
                size: data.len(),
                limit
            }),
            "a body of {} bytes over a limit of {limit} must be refused as too large",
            data.len()
        );
    }
}

fn standing(id: NodeId, incarnation: u64) -> Standing {
    match (MEMBER_IDS.contains(&id), incarnation == MEMBER_INCARNATION) {
        (true, true) => Standing::Member,
        (true, false) => Standing::OtherIncarnation,
        (false, _) => Standing::Stranger,
    }
}

/// The postcard encoding of an envelope's fixed fields (without the message count): cluster,
/// sender, addressee, the sender's incarnation.
fn header_bytes() -> Vec<u8> {
    let empty = RpcEnvelope {
        cluster_id: CLUSTER_ID,
        from: 1,
        to: SELF_ID,
        from_incarnation: MEMBER_INCARNATION,
        messages: Vec::new(),
    };
    let mut bytes = rpc::encode(&empty);
    // The encoding ends with the message count, 0 for an empty vector: drop it so the input
    // supplies its own.
    let count = bytes.pop();
    assert_eq!(
        count,
        Some(0),
        "an empty envelope's encoding must end with a zero message count"
    );
    bytes
}

fn check_decode(data: &[u8]) {
    let (result, grown_bytes) =
        alloc_probe::measure(|| rpc::decode(data, BODY_BYTES_MAX, CLUSTER_ID, SELF_ID, standing));
    let bound_bytes =
        ALLOC_FIXED_BYTES_MAX.saturating_add(ALLOC_PER_INPUT_BYTE_MAX.saturating_mul(data.len()));
    assert!(
        grown_bytes <= bound_bytes,
        "decoding {} bytes took {grown_bytes} bytes of heap, over the bound of {bound_bytes}",
        data.len()
    );
    let Ok((envelope, standing_answered)) = result else {
        return;
    };
    check_accepted(&envelope, standing_answered);
    let reencoded = rpc::encode(&envelope);
    let again = rpc::decode(&reencoded, BODY_BYTES_MAX, CLUSTER_ID, SELF_ID, standing);
    assert_eq!(
        again.as_ref().map(|(envelope, _)| envelope),
        Ok(&envelope),
        "an accepted envelope must survive an encode/decode round trip"
    );
}

fn check_accepted(envelope: &RpcEnvelope, standing_answered: Standing) {
    assert_eq!(
        envelope.cluster_id, CLUSTER_ID,
        "accepted an envelope of another cluster"
    );
    assert_eq!(
        envelope.to, SELF_ID,
        "accepted an envelope addressed to another node"
    );
    let sender = standing(envelope.from, envelope.from_incarnation);
    assert_eq!(
        sender, standing_answered,
        "decode answered the wrong standing"
    );
    assert_ne!(sender, Standing::Removed, "accepted a removed incarnation");
    for message in &envelope.messages {
        // From anyone but a member under its incarnation, only a leader's traffic, and a
        // stranger's vote requests (never an answer, which would count in a quorum).
        let vote_request = matches!(
            message.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        );
        assert!(
            sender == Standing::Member
                || message.body.is_leader_traffic()
                || (sender == Standing::Stranger && vote_request),
            "accepted {} from {} incarnation {}, not a member under that incarnation",
            message.body.name(),
            envelope.from,
            envelope.from_incarnation
        );
        assert!(
            message.from == envelope.from && message.to == envelope.to,
            "accepted message {} from {} to {} inside an envelope from {} to {}",
            message.body.name(),
            message.from,
            message.to,
            envelope.from,
            envelope.to
        );
        if let MessageBody::Append {
            prev_log_index,
            entries,
            ..
        } = &message.body
        {
            let mut expected_index = *prev_log_index;
            for entry in entries {
                expected_index = expected_index.checked_add(1).unwrap_or_else(|| {
                    panic!("accepted append entries past the last index: prev_log_index {prev_log_index}")
                });
                assert_eq!(
                    entry.index, expected_index,
                    "accepted non-contiguous append entries after prev_log_index {prev_log_index}"
                );
            }
        }
    }
}
