//! ReadIndex (Raft §6.4): reads are released only after a quorum confirms leadership.

use super::{elect, tick_until_leader_among};
use crate::raft::testkit::Cluster;
use crate::raft::{Error, MessageBody, ReadState};

#[test]
fn a_leader_releases_a_read_after_a_quorum_confirms_its_heartbeat() {
    let mut cluster = Cluster::new(3, 1);
    elect(&mut cluster, 1);
    cluster.read_index(1, 42).unwrap();
    cluster.process(1);
    // The read round leaves at once as a heartbeat with a fresh sequence number.
    let heartbeats: Vec<_> = cluster
        .pending_messages()
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat { read_seq, .. } => Some((m.to, read_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(heartbeats, vec![(2, 1), (3, 1)]);
    assert!(cluster.read_states(1).is_empty());
    cluster.deliver_all();
    assert_eq!(
        cluster.read_states(1),
        &[ReadState {
            context: 42,
            index: 1
        }]
    );
}

#[test]
fn a_stale_leader_cannot_serve_a_read_while_the_new_leader_can() {
    let mut cluster = Cluster::new(3, 2);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    let new_leader = tick_until_leader_among(&mut cluster, &[2, 3], 100);
    // The old leader has not noticed yet: it accepts the read but can never confirm it.
    cluster.read_index(1, 7).unwrap();
    cluster.deliver_all();
    assert!(cluster.read_states(1).is_empty());
    cluster.read_index(new_leader, 8).unwrap();
    cluster.deliver_all();
    let commit = cluster.node(new_leader).hard_state().commit;
    assert_eq!(
        cluster.read_states(new_leader),
        &[ReadState {
            context: 8,
            index: commit
        }]
    );
    // Healing deposes the stale leader, which drops its read instead of releasing it.
    cluster.heal();
    for _ in 0..4 {
        cluster.tick(1);
        cluster.tick(new_leader);
        cluster.deliver_all();
    }
    assert_ne!(cluster.leader(), Some(1));
    assert!(cluster.read_states(1).is_empty());
    // Leading again later, it serves only reads of its new term: the dropped read stays dropped.
    let leader = cluster.leader().expect("a leader");
    cluster.transfer_leadership(leader, 1).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(1));
    cluster.read_index(1, 9).unwrap();
    cluster.deliver_all();
    let contexts: Vec<u64> = cluster.read_states(1).iter().map(|r| r.context).collect();
    assert_eq!(contexts, [9]);
}

#[test]
fn a_read_waits_until_the_leader_commits_an_entry_of_its_term() {
    let mut cluster = Cluster::new(3, 3);
    cluster.campaign(1);
    // Deliver only the election: the leader's noop is not yet committed.
    loop {
        cluster.process_all();
        if cluster.node(1).soft_state().role == crate::raft::Role::Leader {
            break;
        }
        cluster.deliver_one().expect("the election completes");
    }
    assert_eq!(cluster.node(1).hard_state().commit, 0);
    cluster.read_index(1, 5).unwrap();
    cluster.process(1);
    let read_heartbeats = cluster
        .pending_messages()
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { read_seq, .. } if read_seq > 0))
        .count();
    assert_eq!(read_heartbeats, 0, "no read round before the noop commits");
    cluster.deliver_all();
    assert_eq!(cluster.node(1).hard_state().commit, 1);
    assert_eq!(
        cluster.read_states(1),
        &[ReadState {
            context: 5,
            index: 1
        }]
    );
}

#[test]
fn a_single_voter_releases_reads_at_once_and_followers_refuse_them() {
    let mut cluster = Cluster::new(1, 4);
    elect(&mut cluster, 1);
    cluster.read_index(1, 9).unwrap();
    cluster.process(1);
    assert_eq!(
        cluster.read_states(1),
        &[ReadState {
            context: 9,
            index: 1
        }]
    );
    let mut three = Cluster::new(3, 5);
    elect(&mut three, 1);
    assert_eq!(
        three.read_index(2, 1),
        Err(Error::NotLeader { leader: Some(1) })
    );
}

#[test]
fn reads_are_released_in_order_and_bounded() {
    let mut cluster = Cluster::with_config(3, 6, |config| config.max_pending_reads = 2);
    elect(&mut cluster, 1);
    cluster.read_index(1, 1).unwrap();
    cluster.read_index(1, 2).unwrap();
    assert_eq!(
        cluster.read_index(1, 3),
        Err(Error::TooManyPendingReads { limit: 2 })
    );
    cluster.deliver_all();
    let contexts: Vec<u64> = cluster.read_states(1).iter().map(|r| r.context).collect();
    assert_eq!(contexts, vec![1, 2]);
}
