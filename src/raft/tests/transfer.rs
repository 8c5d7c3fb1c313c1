//! Leadership transfer (thesis §3.10).

use super::elect;
use crate::raft::testkit::Cluster;
use crate::raft::{Error, MessageBody, Role};

#[test]
fn leadership_moves_to_an_up_to_date_follower() {
    let mut cluster = Cluster::new(3, 1);
    elect(&mut cluster, 1);
    cluster.transfer_leadership(1, 2).unwrap();
    cluster.process(1);
    let sent: Vec<_> = cluster
        .pending_messages()
        .into_iter()
        .map(|m| (m.to, m.body))
        .collect();
    assert_eq!(sent, vec![(2, MessageBody::TimeoutNow)]);
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(2));
    assert_eq!(cluster.node(2).hard_state().term, 2);
    assert_eq!(cluster.node(1).soft_state().role, Role::Follower);
    assert_eq!(cluster.node(1).soft_state().leader, Some(2));
}

#[test]
fn leadership_moves_to_a_lagging_follower_after_it_catches_up() {
    let mut cluster = Cluster::new(3, 2);
    elect(&mut cluster, 1);
    cluster.drop_between(1, 3);
    for i in 0..5 {
        cluster.propose(1, format!("x{i}").into()).unwrap();
    }
    cluster.deliver_all();
    assert!(cluster.node(3).status().last_index < cluster.node(1).status().last_index);
    cluster.heal();
    cluster.transfer_leadership(1, 3).unwrap();
    assert_eq!(cluster.node(1).lead_transferee(), Some(3));
    assert_eq!(
        cluster.propose(1, "refused".into()),
        Err(Error::TransferInProgress)
    );
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(3));
    assert_eq!(cluster.node(3).status().last_index, 7);
    let index = cluster.propose(3, "new".into()).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.applied(1).last().map(|e| e.index), Some(index));
}

#[test]
fn a_transfer_to_an_unreachable_follower_is_abandoned_after_an_election_timeout() {
    let mut cluster = Cluster::new(3, 3);
    elect(&mut cluster, 1);
    cluster.isolate(3);
    cluster.transfer_leadership(1, 3).unwrap();
    for _ in 0..9 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(
        cluster.propose(1, "x".into()),
        Err(Error::TransferInProgress)
    );
    cluster.tick(1);
    assert_eq!(cluster.node(1).lead_transferee(), None);
    assert!(cluster.propose(1, "x".into()).is_ok());
    assert_eq!(cluster.leader(), Some(1));
}

#[test]
fn a_transfer_to_a_non_voter_is_refused() {
    let mut cluster = Cluster::new(3, 4);
    elect(&mut cluster, 1);
    assert!(matches!(
        cluster.transfer_leadership(1, 9),
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        cluster.transfer_leadership(2, 3),
        Err(Error::NotLeader { leader: Some(1) })
    );
}
