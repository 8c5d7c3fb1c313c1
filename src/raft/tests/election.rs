//! Elections: single node, three nodes, split votes, pre-vote, check-quorum, vote safety.

use crate::raft::testkit::Cluster;
use crate::raft::Role;

#[test]
fn a_single_node_elects_itself_and_commits_alone() {
    let mut cluster = Cluster::new(1, 1);
    cluster.campaign(1);
    cluster.deliver_all();
    let status = cluster.node(1).status();
    assert_eq!(status.soft_state.role, Role::Leader);
    assert_eq!(status.soft_state.term, 1);
    // The leader's noop commits once it is persisted.
    assert_eq!(status.hard_state.commit, 1);
    let index = cluster.propose(1, "a".into()).unwrap();
    cluster.deliver_all();
    assert_eq!(index, 2);
    assert_eq!(cluster.applied(1).last().unwrap().data, "a");
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut cluster = Cluster::new(3, 2);
    cluster.campaign(1);
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(1));
    for id in 2..=3 {
        assert_eq!(cluster.node(id).soft_state().leader, Some(1));
        assert_eq!(cluster.node(id).soft_state().role, Role::Follower);
    }
    let index = cluster.propose(1, "x".into()).unwrap();
    cluster.deliver_all();
    for id in 1..=3 {
        let applied = cluster.applied(id);
        assert_eq!(applied.len(), 2, "node {id} applied {applied:?}");
        assert_eq!(applied[1].index, index);
        assert_eq!(applied[1].data, "x");
    }
    assert!(
        cluster.step_errors().is_empty(),
        "{:?}",
        cluster.step_errors()
    );
}
