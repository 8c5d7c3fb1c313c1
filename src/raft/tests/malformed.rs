//! `step` refuses nonsense from the network without panicking or changing state.

use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::elect;
use crate::raft::testkit::Cluster;
use crate::raft::{
    Entry, EntryKind, Error, Membership, Message, MessageBody, RejectHint, Snapshot, SnapshotMeta,
};

fn append(from: u64, to: u64, term: u64, prev: (u64, u64), entries: Vec<Entry>) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Append {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: 0,
        },
    }
}

/// Node 1, leader of term 2, sends node 2 a snapshot whose meta says (`index`, `term`).
fn snapshot_from_leader_of_term_2(index: u64, term: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    membership: Membership::with_voters([1, 2, 3]),
                },
                data: Bytes::new(),
            },
        },
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::new(),
    }
}

#[test]
fn step_rejects_malformed_messages_and_changes_nothing() {
    let mut cluster = Cluster::new(3, 1);
    elect(&mut cluster, 1);
    let garbage_config = Entry {
        term: 1,
        index: 2,
        kind: EntryKind::Config,
        data: Bytes::from_static(&[0xff, 0xff, 0xff]),
    };
    let heartbeat = MessageBody::Heartbeat {
        leader_commit: 0,
        read_seq: 0,
    };
    let cases: Vec<(u64, Message)> = vec![
        (
            2,
            Message {
                from: 1,
                to: 3,
                term: 1,
                body: heartbeat.clone(),
            },
        ),
        (
            2,
            Message {
                from: 0,
                to: 2,
                term: 1,
                body: heartbeat.clone(),
            },
        ),
        (
            2,
            Message {
                from: 2,
                to: 2,
                term: 1,
                body: heartbeat.clone(),
            },
        ),
        (
            2,
            Message {
                from: 1,
                to: 2,
                term: 0,
                body: heartbeat.clone(),
            },
        ),
        (2, append(1, 2, 1, (1, 1), vec![entry(2, 1), entry(4, 1)])),
        (2, append(1, 2, 1, (1, 1), vec![entry(2, 5)])),
        (2, append(1, 2, 2, (1, 1), vec![entry(2, 2), entry(3, 1)])),
        (2, append(1, 2, 1, (0, 3), vec![])),
        // Each half of the previous-entry check alone: a previous term above the leader's, and
        // a previous index and term of which only one is zero.
        (2, append(1, 2, 1, (1, 3), vec![])),
        (2, append(1, 2, 3, (0, 2), vec![])),
        (2, append(1, 2, 1, (2, 0), vec![])),
        (2, append(1, 2, 1, (1, 1), vec![garbage_config])),
        (2, append(1, 2, 1, (u64::MAX, 1), vec![entry(0, 1)])),
        (
            2,
            Message {
                from: 9,
                to: 2,
                term: 1,
                body: MessageBody::VoteResponse { granted: true },
            },
        ),
        // A (pre-)vote request from a stranger is not malformed: thesis §4.1 handles requests
        // without consulting the configuration (see `core/step.rs`), only answers are filtered.
        (
            2,
            Message {
                from: 3,
                to: 2,
                term: 4,
                body: MessageBody::Vote {
                    last_log_index: 1,
                    last_log_term: 5,
                    transfer: true,
                },
            },
        ),
        // A snapshot at index 0, one of term 0, and one of a term above its sender's (2).
        (2, snapshot_from_leader_of_term_2(0, 1)),
        (2, snapshot_from_leader_of_term_2(5, 0)),
        (2, snapshot_from_leader_of_term_2(5, 3)),
        (
            1,
            Message {
                from: 9,
                to: 1,
                term: 1,
                body: MessageBody::AppendResponse {
                    index: 1,
                    reject_hint: None,
                },
            },
        ),
        (
            1,
            Message {
                from: 2,
                to: 1,
                term: 1,
                body: MessageBody::AppendResponse {
                    index: 99,
                    reject_hint: None,
                },
            },
        ),
        (
            1,
            Message {
                from: 2,
                to: 1,
                term: 1,
                body: MessageBody::AppendResponse {
                    index: 1,
                    reject_hint: Some(RejectHint { index: 5, term: 1 }),
                },
            },
        ),
        (
            1,
            Message {
                from: 2,
                to: 1,
                term: 1,
                body: heartbeat.clone(),
            },
        ),
        (
            1,
            Message {
                from: 2,
                to: 1,
                term: 1,
                body: MessageBody::HeartbeatResponse { read_seq: 77 },
            },
        ),
    ];
    for (receiver, message) in cases {
        let before = cluster.node(receiver).status();
        let result = cluster.node_mut(receiver).step(message.clone());
        assert!(
            matches!(result, Err(Error::Invalid(_))),
            "{message:?} gave {result:?}"
        );
        assert_eq!(cluster.node(receiver).status(), before, "{message:?}");
        assert!(!cluster.node(receiver).has_ready(), "{message:?}");
    }
}

/// A random message of any kind with small random fields, sometimes plausible.
fn random_message(rng: &mut ChaCha8Rng) -> Message {
    let mut small = |max: u64| rng.next_u64() % (max + 1);
    let from = small(4);
    let to = small(3);
    let term = small(4);
    let body = match small(9) {
        0 => MessageBody::PreVote {
            last_log_index: small(6),
            last_log_term: small(4),
        },
        1 => MessageBody::PreVoteResponse {
            granted: small(1) == 1,
        },
        2 => MessageBody::Vote {
            last_log_index: small(6),
            last_log_term: small(4),
            transfer: small(1) == 1,
        },
        3 => MessageBody::VoteResponse {
            granted: small(1) == 1,
        },
        4 => {
            let prev_log_index = small(6);
            let prev_log_term = small(3);
            let count = small(3);
            let entry_term = small(4);
            let entries = (0..count)
                .map(|i| Entry {
                    term: entry_term,
                    index: prev_log_index + 1 + i,
                    kind: EntryKind::Normal,
                    data: Bytes::new(),
                })
                .collect();
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: small(8),
            }
        }
        5 => MessageBody::AppendResponse {
            index: small(6),
            reject_hint: if small(1) == 1 {
                Some(RejectHint {
                    index: small(6),
                    term: small(4),
                })
            } else {
                None
            },
        },
        6 => MessageBody::Heartbeat {
            leader_commit: small(8),
            read_seq: small(3),
        },
        7 => MessageBody::HeartbeatResponse { read_seq: small(3) },
        8 => MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: small(8),
                    term: small(4),
                    membership: Membership::with_voters([1, 2, 3]),
                },
                data: Bytes::new(),
            },
        },
        _ => MessageBody::TimeoutNow,
    };
    Message {
        from,
        to,
        term,
        body,
    }
}

#[test]
fn step_never_panics_on_random_messages() {
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cluster = Cluster::new(3, seed);
        cluster.run_until_leader(50).expect("a leader");
        for round in 0..300 {
            let message = random_message(&mut rng);
            if let Some(node) = [1, 2, 3].into_iter().find(|&id| id == message.to) {
                let _ = cluster.node_mut(node).step(message);
            }
            if round % 7 == 0 {
                cluster.tick_all();
            }
            if let Some(leader) = cluster.leader() {
                let _ = cluster.propose(leader, "p".into());
                let _ = cluster.read_index(leader, round);
            }
            // Forged acknowledgements can make honest nodes argue forever; bound the delivery.
            for _ in 0..50 {
                cluster.process_all();
                if cluster.deliver_one().is_none() {
                    break;
                }
            }
        }
    }
}
