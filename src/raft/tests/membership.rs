//! Single-server membership changes (thesis §4.1).

use super::{elect, run_ticks, tick_until_leader_among, with_removed};
use crate::raft::testkit::Cluster;
use crate::raft::{ConfChange, Error, MemberRecord, Membership, NodeId, RestoreState, Role};

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
            &with_removed(Membership::with_voters([2, 3]), &[1])
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
        &with_removed(Membership::with_voters([1, 2]), &[3])
    );
    cluster.add_node(5, Membership::with_voters([1, 2]), RestoreState::default());
    cluster
        .propose_conf_change(1, ConfChange::AddLearner(5))
        .unwrap();
    cluster.deliver_all();
    let mut expected = with_removed(Membership::with_voters([1, 2]), &[3]);
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
        &with_removed(Membership::with_voters([1, 2]), &[3])
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

/// Ticks `ids` and delivers one message at a time until one of them leads, and stops there: the
/// new leader's first appends (its `Noop`) are still in flight. Returns the leader.
fn elect_among_without_replicating(cluster: &mut Cluster, ids: &[NodeId]) -> NodeId {
    for _ in 0..200 {
        for &id in ids {
            cluster.tick(id);
        }
        cluster.process_all();
        while cluster.deliver_one().is_some() {
            if let Some(&leader) = ids
                .iter()
                .find(|&&id| cluster.node(id).soft_state().role == Role::Leader)
            {
                return leader;
            }
            cluster.process_all();
        }
    }
    panic!("no leader among {ids:?} within 200 rounds");
}

#[test]
fn a_new_leader_holds_back_a_change_until_it_committed_an_entry_of_its_term() {
    // The single-server change bug (raft-dev, 2015). Voters {1, 2, 3, 4}; leader 1 of term 1
    // appends "add 5" and only 5 receives it. Leader L of term 2 (elected by 2, 3, 4) must not
    // append a change of its own before its Noop commits: if it did, and committed
    // "remove 1" with {2, 3, 4}'s majority, node 1 could still win term 3 with {1, 5} and one
    // node that missed L's change, and overwrite a committed entry.
    let mut cluster = Cluster::new(4, 11);
    elect(&mut cluster, 1);
    cluster.add_node(
        5,
        Membership::with_voters([1, 2, 3, 4]),
        RestoreState::default(),
    );
    cluster.partition(&[&[1, 5], &[2, 3, 4]]);
    cluster
        .propose_conf_change(1, ConfChange::AddVoter(5))
        .unwrap();
    cluster.deliver_all();
    assert_eq!(
        cluster.node(5).membership(),
        &Membership::with_voters([1, 2, 3, 4, 5])
    );

    let leader = elect_among_without_replicating(&mut cluster, &[2, 3, 4]);
    let term = cluster.node(leader).hard_state().term;
    assert!(term >= 2, "term {term}");
    assert_eq!(
        cluster.propose_conf_change(leader, ConfChange::Remove(1)),
        Err(Error::TermNotCommitted {
            term,
            commit: cluster.node(leader).hard_state().commit,
        })
    );
    // Once its Noop commits on a majority of {1, 2, 3, 4}, the change is accepted...
    cluster.deliver_all();
    let removal = cluster
        .propose_conf_change(leader, ConfChange::Remove(1))
        .unwrap();
    cluster.deliver_all();
    assert!(cluster.node(leader).hard_state().commit >= removal);
    // ...and the old leader cannot win with 5 and a node holding the new term's entries.
    let follower = [2, 3, 4].into_iter().find(|&id| id != leader).unwrap();
    cluster.partition(&[&[1, 5, follower], &[leader]]);
    // (Node 1 still believes it leads term 1 until check-quorum deposes it.)
    for _ in 0..100 {
        for id in [1, 5, follower] {
            cluster.tick(id);
        }
        cluster.deliver_all();
        for id in [1, 5, follower] {
            let soft = cluster.node(id).soft_state();
            assert!(
                soft.role != Role::Leader || soft.term == 1,
                "node {id} won term {} in a minority of the configuration that removed 1",
                soft.term
            );
        }
    }
    assert_ne!(cluster.node(1).soft_state().role, Role::Leader);
    assert!(cluster.applied(follower).iter().any(|e| e.index == removal));
}

#[test]
fn a_learner_counts_in_no_quorum_for_commits_reads_or_votes() {
    let mut cluster = Cluster::new(3, 12);
    elect(&mut cluster, 1);
    cluster.add_node(
        4,
        Membership::with_voters([1, 2, 3]),
        RestoreState::default(),
    );
    cluster
        .propose_conf_change(1, ConfChange::AddLearner(4))
        .unwrap();
    cluster.deliver_all();
    // Leader and learner alone: two acknowledgements, but only one voter's.
    cluster.partition(&[&[1, 4], &[2, 3]]);
    let index = cluster
        .propose(1, "only the learner has it".into())
        .unwrap();
    cluster.read_index(1, 7).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.node(4).status().last_index, index);
    assert!(cluster.node(1).hard_state().commit < index);
    assert!(cluster.read_states(1).iter().all(|r| r.context != 7));
    // Node 2 campaigns in a partition with the learner: the learner grants nothing.
    cluster.partition(&[&[2, 4], &[1, 3]]);
    for _ in 0..60 {
        cluster.tick(2);
        cluster.tick(4);
        cluster.deliver_all();
    }
    assert_ne!(cluster.node(2).soft_state().role, Role::Leader);
    assert_ne!(cluster.node(4).soft_state().role, Role::Leader);
}

#[test]
fn member_records_live_in_the_log_and_in_the_snapshot_at_its_index() {
    let mut cluster = Cluster::new(3, 13);
    elect(&mut cluster, 1);
    let record = MemberRecord {
        name: "node4".into(),
        addr: "10.0.0.4:8004".into(),
        incarnation: 0xfeed,
    };
    cluster.add_node(
        4,
        Membership::with_voters([1, 2, 3]),
        RestoreState::default(),
    );
    let added = cluster
        .propose_conf_change(1, ConfChange::AddLearnerWithRecord(4, record.clone()))
        .unwrap();
    cluster.deliver_all();
    // A joining node learns the record from the log, like every other member.
    for id in 1..=4 {
        assert_eq!(
            cluster.node(id).membership().records.get(&4),
            Some(&record),
            "node {id}"
        );
    }
    // Promotion keeps the record; a rejoin of a voter is refused.
    let promoted = cluster
        .propose_conf_change(1, ConfChange::AddVoter(4))
        .unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.node(1).membership().records.get(&4), Some(&record));
    assert!(matches!(
        cluster.propose_conf_change(1, ConfChange::AddLearnerWithRecord(4, record.clone())),
        Err(Error::Invalid(_))
    ));
    let removed = cluster
        .propose_conf_change(1, ConfChange::Remove(4))
        .unwrap();
    cluster.deliver_all();
    assert!(cluster.node(1).membership().records.is_empty());
    // A snapshot taken at an earlier index carries the configuration of that index.
    let meta = cluster.node(2).snapshot_meta_at(promoted).unwrap();
    assert_eq!(meta.membership.records.get(&4), Some(&record));
    assert!(meta.membership.voters.contains(&4));
    let meta = cluster.node(2).snapshot_meta_at(added).unwrap();
    assert!(meta.membership.learners.contains(&4));
    cluster.compact(2, promoted).unwrap();
    assert_eq!(
        cluster
            .node(2)
            .snapshot()
            .unwrap()
            .meta
            .membership
            .records
            .get(&4),
        Some(&record)
    );
    // Restarting from that snapshot and the log after it rebuilds the latest configuration.
    cluster.restart(2);
    assert!(cluster.node(2).membership().records.is_empty());
    assert!(!cluster.node(2).membership().contains(4));
    assert!(cluster.node(2).status().last_index >= removed);
}
