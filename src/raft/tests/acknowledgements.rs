//! How a leader answers each follower acknowledgement (Raft §5.3, §7, thesis §3.10): where it
//! retries after a rejection, when it leaves snapshot mode, when it tells a follower the commit
//! index, and when it hands leadership over. Each test steps single messages and asserts the
//! exact messages the leader sends back.

use super::{elect, persisted};
use crate::raft::testkit::Cluster;
use crate::raft::{Entry, Message, MessageBody, NodeId, RejectHint, Term};

/// A message from `from` to `to` in `term`.
fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// What the cluster's nodes sent, with their output processed first; the network is left empty.
fn collect_sent(cluster: &mut Cluster) -> Vec<Message> {
    cluster.process_all();
    cluster.take_messages()
}

/// Delivers `message` alone and returns everything sent in answer (the network is left empty).
fn deliver(cluster: &mut Cluster, message: Message) -> Vec<Message> {
    assert!(
        cluster.pending_messages().is_empty(),
        "deliver expects an empty network"
    );
    cluster.send(message);
    cluster
        .deliver_one()
        .expect("the message is on an open link");
    collect_sent(cluster)
}

/// The bodies of the messages from `from` to `to`.
fn bodies(messages: &[Message], from: NodeId, to: NodeId) -> Vec<MessageBody> {
    messages
        .iter()
        .filter(|m| m.from == from && m.to == to)
        .map(|m| m.body.clone())
        .collect()
}

/// The one message from `from` to `to`, of which there must be exactly one.
fn only(messages: &[Message], from: NodeId, to: NodeId) -> Message {
    let matching: Vec<&Message> = messages
        .iter()
        .filter(|m| m.from == from && m.to == to)
        .collect();
    assert_eq!(matching.len(), 1, "{from} -> {to} in {messages:?}");
    matching[0].clone()
}

/// The indexes of `entries`.
fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.index).collect()
}

#[test]
fn a_rejected_append_is_retried_right_after_the_last_entry_the_hint_can_match() {
    // Leader 1 holds [1, 3, 3, 3, 3, 3]; follower 3 holds [1, 2, 2, 2, 2, 2, 2, 2, 2].
    let mut leader_log = vec![1];
    leader_log.extend([3; 5]);
    let mut divergent_log = vec![1];
    divergent_log.extend([2; 8]);
    let states = vec![
        persisted(3, 1, &leader_log),
        persisted(3, 1, &leader_log),
        persisted(2, 1, &divergent_log),
    ];
    let mut cluster = Cluster::from_states(21, states, |_| {});
    // Node 1 wins with node 2; node 3's part is replayed by hand below.
    cluster.drop_between(1, 3);
    elect(&mut cluster, 1);
    cluster.heal();
    let term = cluster.node(1).hard_state().term;
    // The leader's first append to node 3 (its noop at 7, after its entry 6 of term 3) ...
    let probe = message(
        1,
        3,
        term,
        MessageBody::Append {
            prev_log_index: 6,
            prev_log_term: 3,
            entries: cluster.node(1).entries(7, 8).to_vec(),
            leader_commit: cluster.node(1).hard_state().commit,
        },
    );
    // ... is refused with the hint "my entry 6 has term 2" ...
    let rejection = only(&deliver(&mut cluster, probe), 3, 1);
    assert_eq!(
        rejection.body,
        MessageBody::AppendResponse {
            index: 6,
            reject_hint: Some(RejectHint { index: 6, term: 2 }),
        }
    );
    // ... so the leader skips every term-2 entry at once: its last entry of a term <= 2 is
    // index 1, and the retry goes from there (not from the empty prefix, index 0).
    let retry = only(&deliver(&mut cluster, rejection), 1, 3);
    let MessageBody::Append {
        prev_log_index,
        prev_log_term,
        entries,
        ..
    } = retry.body.clone()
    else {
        panic!("expected an append, got {retry:?}");
    };
    assert_eq!((prev_log_index, prev_log_term), (1, 1));
    assert_eq!(indexes(&entries), vec![2, 3, 4, 5, 6, 7]);
    let answers = deliver(&mut cluster, retry);
    assert_eq!(
        bodies(&answers, 3, 1),
        vec![MessageBody::AppendResponse {
            index: 7,
            reject_hint: None
        }]
    );
    assert_eq!(
        cluster.node(3).entries(1, 100),
        cluster.node(1).entries(1, 100)
    );
}

/// Leader 1 of three has compacted its log to index 6 while node 3 was cut off, and has just
/// sent node 3 the snapshot (returned, held in flight). Index 7 was proposed since.
fn snapshot_in_flight_to_node_3() -> (Cluster, Message) {
    let mut cluster = Cluster::new(3, 22);
    elect(&mut cluster, 1);
    cluster.drop_between(1, 3);
    for i in 0..5 {
        cluster.propose(1, format!("v{i}").into()).unwrap();
    }
    cluster.deliver_all();
    cluster.compact(1, 6).unwrap();
    cluster.heal();
    // The stalled pipeline to node 3 is restarted at a heartbeat; its next entry is compacted.
    for _ in 0..20 {
        cluster.tick(1);
        let sent = collect_sent(&mut cluster);
        let to_3 = bodies(&sent, 1, 3);
        if let Some(position) = to_3
            .iter()
            .position(|b| matches!(b, MessageBody::InstallSnapshot { .. }))
        {
            // Other messages to node 3 (a heartbeat in the same tick) are lost.
            let snapshot = sent
                .iter()
                .filter(|m| m.from == 1 && m.to == 3)
                .nth(position)
                .cloned()
                .unwrap();
            for message in sent.into_iter().filter(|m| m.to != 3) {
                cluster.send(message);
            }
            cluster.deliver_all();
            assert_eq!(cluster.propose(1, "after".into()), Ok(7));
            let sent = collect_sent(&mut cluster);
            assert_eq!(
                bodies(&sent, 1, 3),
                vec![],
                "the leader waits for the snapshot"
            );
            for message in sent {
                cluster.send(message);
            }
            cluster.deliver_all();
            return (cluster, snapshot);
        }
        for message in sent {
            cluster.send(message);
        }
        cluster.deliver_all();
    }
    panic!("the leader never sent node 3 the snapshot");
}

#[test]
fn an_acknowledged_snapshot_is_followed_at_once_by_the_entries_after_it() {
    let (mut cluster, snapshot) = snapshot_in_flight_to_node_3();
    let ack = only(&deliver(&mut cluster, snapshot), 3, 1);
    assert_eq!(
        ack.body,
        MessageBody::AppendResponse {
            index: 6,
            reject_hint: None
        }
    );
    let sent = deliver(&mut cluster, ack);
    let MessageBody::Append {
        prev_log_index,
        entries,
        ..
    } = only(&sent, 1, 3).body
    else {
        panic!("expected an append in {sent:?}");
    };
    assert_eq!(prev_log_index, 6);
    assert_eq!(indexes(&entries), vec![7]);
}

#[test]
fn a_stale_acknowledgement_does_not_end_the_wait_for_a_snapshot() {
    let (mut cluster, snapshot) = snapshot_in_flight_to_node_3();
    let term = cluster.node(1).hard_state().term;
    // An acknowledgement of node 3's old match point (index 1), duplicated by the network.
    let stale = message(
        3,
        1,
        term,
        MessageBody::AppendResponse {
            index: 1,
            reject_hint: None,
        },
    );
    assert_eq!(
        bodies(&deliver(&mut cluster, stale), 1, 3),
        vec![],
        "no second snapshot, no append below the snapshot"
    );
    // The snapshot in flight still completes the catch-up.
    let ack = only(&deliver(&mut cluster, snapshot), 3, 1);
    let sent = deliver(&mut cluster, ack);
    assert!(
        matches!(
            only(&sent, 1, 3).body,
            MessageBody::Append {
                prev_log_index: 6,
                ..
            }
        ),
        "{sent:?}"
    );
}

#[test]
fn a_follower_that_acknowledges_after_the_commit_is_told_the_commit_at_once() {
    let mut cluster = Cluster::new(3, 23);
    elect(&mut cluster, 1);
    let index = cluster.propose(1, "x".into()).unwrap();
    let appends = collect_sent(&mut cluster);
    let to_3 = only(&appends, 1, 3);
    // Node 2's acknowledgement commits the entry; node 2 learns it from the leader.
    let ack_2 = only(&deliver(&mut cluster, only(&appends, 1, 2)), 2, 1);
    let after_ack_2 = deliver(&mut cluster, ack_2);
    assert_eq!(cluster.node(1).hard_state().commit, index);
    for message in after_ack_2 {
        cluster.send(message);
    }
    cluster.deliver_all();
    // Node 3 acknowledges late: the commit moved since its append left, so the leader
    // tells it now rather than at the next heartbeat.
    let ack_3 = only(&deliver(&mut cluster, to_3), 3, 1);
    let sent = deliver(&mut cluster, ack_3.clone());
    assert_eq!(
        bodies(&sent, 1, 3),
        vec![MessageBody::Heartbeat {
            leader_commit: index,
            read_seq: 0
        }]
    );
    for message in sent {
        cluster.send(message);
    }
    cluster.deliver_all();
    assert_eq!(cluster.node(3).hard_state().commit, index);
    // A duplicate of that acknowledgement has nothing to tell: the driver is not woken.
    cluster.send(ack_3);
    cluster.deliver_one().unwrap();
    assert!(!cluster.node(1).has_ready());
}

#[test]
fn an_acknowledgement_hands_leadership_only_to_the_transferee_once_it_caught_up() {
    let mut cluster = Cluster::new(3, 24);
    elect(&mut cluster, 1);
    // Node 3 misses two entries; node 2 has them all.
    cluster.drop_between(1, 3);
    cluster.propose(1, "a".into()).unwrap();
    cluster.propose(1, "b".into()).unwrap();
    cluster.deliver_all();
    cluster.heal();
    cluster.transfer_leadership(1, 3).unwrap();
    let catch_up = collect_sent(&mut cluster);
    // An acknowledgement from node 2, caught up but not the transferee, changes nothing.
    let term = cluster.node(1).hard_state().term;
    let ack_2 = message(
        2,
        1,
        term,
        MessageBody::AppendResponse {
            index: 3,
            reject_hint: None,
        },
    );
    assert_eq!(deliver(&mut cluster, ack_2), vec![]);
    // Node 3 acknowledges part of what it misses: still no TimeoutNow.
    let MessageBody::Append {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit,
    } = only(&catch_up, 1, 3).body
    else {
        panic!("expected an append in {catch_up:?}");
    };
    assert_eq!(indexes(&entries), vec![2, 3]);
    let partial = message(
        1,
        3,
        term,
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries: entries[..1].to_vec(),
            leader_commit,
        },
    );
    let partial_ack = only(&deliver(&mut cluster, partial), 3, 1);
    let sent = deliver(&mut cluster, partial_ack);
    let rest = only(&sent, 1, 3);
    let MessageBody::Append { entries, .. } = &rest.body else {
        panic!("expected the rest of the log in {sent:?}");
    };
    assert_eq!(indexes(entries), vec![3]);
    // Once node 3 holds the whole log, its acknowledgement triggers the hand-over.
    let full_ack = only(&deliver(&mut cluster, rest), 3, 1);
    let hand_over = deliver(&mut cluster, full_ack);
    assert_eq!(bodies(&hand_over, 1, 3), vec![MessageBody::TimeoutNow]);
    for message in hand_over {
        cluster.send(message);
    }
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(3));
}
