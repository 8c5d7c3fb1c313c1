//! Single-server membership changes (thesis §4.1).

use super::{elect, run_ticks, tick_until_leader_among};
use crate::raft::testkit::Cluster;
use crate::raft::{ConfChange, Error, Membership, RestoreState, Role};

#[test]
fn a_membership_change_adds_a_voter_that_catches_up_and_counts() {
    let mut cluster = Cluster::new(3, 1);
    elect(&mut cluster, 1);
    cluster.add_node(
        4,
        Membership::with_voters([1, 2, 3]),
        RestoreState::default(),
    );
    let index = cluster
        .propose_conf_change(1, ConfChange::AddVoter(4))
        .unwrap();
    // The new membership takes effect on the leader as soon as it is appended.
    assert_eq!(
        cluster.node(1).membership(),
        &Membership::with_voters([1, 2, 3, 4])
    );
    assert_eq!(
        cluster.propose_conf_change(1, ConfChange::AddVoter(5)),
        Err(Error::ConfChangePending)
    );
    cluster.deliver_all();
    for id in 1..=4 {
        assert_eq!(
            cluster.node(id).membership(),
            &Membership::with_voters([1, 2, 3, 4]),
            "node {id}"
        );
        assert!(cluster.applied_index(id) >= index, "node {id}");
    }
    // Four voters need three acknowledgements: with two nodes cut off nothing commits.
    cluster.drop_between(1, 3);
    cluster.drop_between(1, 4);
    let blocked = cluster.propose(1, "blocked".into()).unwrap();
    cluster.deliver_all();
    assert!(cluster.node(1).hard_state().commit < blocked);
    cluster.heal();
    for _ in 0..6 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert!(cluster.node(1).hard_state().commit >= blocked);
    assert_eq!(cluster.applied(4), cluster.applied(1));
}

#[test]
fn a_membership_change_removes_the_leader_which_steps_down_once_committed() {
    let mut cluster = Cluster::new(3, 2);
    elect(&mut cluster, 1);
    cluster
        .propose_conf_change(1, ConfChange::Remove(1))
        .unwrap();
    assert_eq!(cluster.node(1).soft_state().role, Role::Leader);
    cluster.deliver_all();
    assert_eq!(cluster.node(1).soft_state().role, Role::Follower);
    for id in 2..=3 {
        assert_eq!(
            cluster.node(id).membership(),
            &Membership::with_voters([2, 3])
        );
    }
    let leader = tick_until_leader_among(&mut cluster, &[2, 3], 100);
    let index = cluster.propose(leader, "without 1".into()).unwrap();
    run_ticks(&mut cluster, 40);
    // The removed node never campaigns and no longer receives the log.
    assert_eq!(cluster.node(1).soft_state().role, Role::Follower);
    assert!(cluster.node(1).status().last_index < index);
    assert_eq!(cluster.leader(), Some(leader));
}

#[test]
fn a_membership_change_removes_a_follower_and_adds_a_learner() {
    let mut cluster = Cluster::new(3, 3);
    elect(&mut cluster, 1);
    cluster
        .propose_conf_change(1, ConfChange::Remove(3))
        .unwrap();
    cluster.deliver_all();
    assert_eq!(
        cluster.node(1).membership(),
        &Membership::with_voters([1, 2])
    );
    cluster.add_node(5, Membership::with_voters([1, 2]), RestoreState::default());
    cluster
        .propose_conf_change(1, ConfChange::AddLearner(5))
        .unwrap();
    cluster.deliver_all();
    let mut expected = Membership::with_voters([1, 2]);
    expected.learners.insert(5);
    assert_eq!(cluster.node(5).membership(), &expected);
    let index = cluster.propose(1, "x".into()).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.applied_index(5), index);
    assert!(cluster.node(3).status().last_index < index);
    // A learner never campaigns.
    cluster.isolate(1);
    for _ in 0..50 {
        cluster.tick(5);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(5).soft_state().role, Role::Follower);
    assert_eq!(cluster.node(5).hard_state().term, 1);
}

#[test]
fn a_membership_change_that_leaves_no_voter_or_names_a_stranger_is_refused() {
    let mut cluster = Cluster::new(1, 4);
    elect(&mut cluster, 1);
    assert!(matches!(
        cluster.propose_conf_change(1, ConfChange::Remove(1)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        cluster.propose_conf_change(1, ConfChange::Remove(7)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        cluster.propose_conf_change(1, ConfChange::AddVoter(0)),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn a_truncated_membership_change_is_rolled_back() {
    let mut cluster = Cluster::new(3, 5);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    // The isolated leader appends a change nobody else receives.
    cluster
        .propose_conf_change(1, ConfChange::Remove(3))
        .unwrap();
    cluster.deliver_all();
    assert_eq!(
        cluster.node(1).membership(),
        &Membership::with_voters([1, 2])
    );
    let leader = tick_until_leader_among(&mut cluster, &[2, 3], 100);
    cluster.propose(leader, "y".into()).unwrap();
    cluster.deliver_all();
    cluster.heal();
    run_ticks(&mut cluster, 30);
    // Node 1's uncommitted change was overwritten, and with it the membership it implied.
    assert_eq!(
        cluster.node(1).membership(),
        &Membership::with_voters([1, 2, 3])
    );
    assert_eq!(cluster.applied(1), cluster.applied(leader));
}
