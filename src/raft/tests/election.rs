//! Elections: single node, three nodes, split votes, pre-vote, check-quorum, vote safety.

use super::{elect, run_ticks, tick_until_leader_among};
use crate::raft::testkit::Cluster;
use crate::raft::{Message, MessageBody, Role};

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
fn a_single_node_elects_itself_when_its_timer_fires() {
    let mut cluster = Cluster::new(1, 3);
    let leader = cluster.run_until_leader(30);
    assert_eq!(leader, Some(1));
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut cluster = Cluster::new(3, 2);
    elect(&mut cluster, 1);
    for id in 2..=3 {
        assert_eq!(cluster.node(id).soft_state().leader, Some(1));
        assert_eq!(cluster.node(id).soft_state().role, Role::Follower);
        assert_eq!(cluster.node(id).soft_state().term, 1);
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

#[test]
fn timers_alone_elect_exactly_one_leader() {
    for seed in 0..20 {
        let mut cluster = Cluster::new(5, seed);
        let leader = cluster.run_until_leader(100).expect("a leader");
        let leaders: Vec<u64> = (1..=5)
            .filter(|&id| cluster.node(id).soft_state().role == Role::Leader)
            .collect();
        assert_eq!(leaders, vec![leader], "seed {seed}");
    }
}

#[test]
fn a_pre_candidate_does_not_raise_its_term_and_sends_pre_votes_for_the_next_term() {
    let mut cluster = Cluster::new(3, 4);
    cluster.campaign(1);
    cluster.process(1);
    assert_eq!(cluster.node(1).soft_state().role, Role::PreCandidate);
    assert_eq!(cluster.node(1).hard_state().term, 0);
    let pre_votes = cluster.pending_messages();
    assert_eq!(
        pre_votes,
        vec![
            Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::PreVote {
                    last_log_index: 0,
                    last_log_term: 0
                }
            },
            Message {
                from: 1,
                to: 3,
                term: 1,
                body: MessageBody::PreVote {
                    last_log_index: 0,
                    last_log_term: 0
                }
            },
        ]
    );
    // Receivers answer without changing their own term or vote.
    cluster.deliver_one();
    cluster.process(2);
    assert_eq!(cluster.node(2).hard_state().term, 0);
    assert_eq!(cluster.node(2).hard_state().vote, None);
}

#[test]
fn split_votes_resolve_in_a_later_term() {
    let mut cluster = Cluster::with_config(4, 5, |config| config.pre_vote = false);
    cluster.campaign(1);
    cluster.campaign(2);
    cluster.process_all();
    // Node 3 only hears node 1 and node 4 only hears node 2: two votes each, no majority of 4.
    let dropped = cluster.drop_messages(|m| (m.from, m.to) == (1, 4) || (m.from, m.to) == (2, 3));
    assert_eq!(dropped, 2);
    cluster.deliver_all();
    assert_eq!(cluster.leader(), None);
    assert_eq!(cluster.node(1).soft_state().role, Role::Candidate);
    assert_eq!(cluster.node(2).soft_state().role, Role::Candidate);
    let leader = cluster.run_until_leader(100).expect("the split resolves");
    assert!(cluster.node(leader).soft_state().term >= 2);
    let leaders = (1..=4)
        .filter(|&id| cluster.node(id).soft_state().role == Role::Leader)
        .count();
    assert_eq!(leaders, 1);
}

#[test]
fn a_rejoining_partitioned_node_does_not_disrupt_the_cluster_with_pre_vote() {
    let mut cluster = Cluster::new(3, 6);
    elect(&mut cluster, 1);
    cluster.isolate(3);
    for round in 0..60 {
        cluster.tick_all();
        if round % 10 == 0 {
            cluster.propose(1, format!("w{round}").into()).unwrap();
        }
        cluster.deliver_all();
    }
    // Pre-vote kept the isolated node's term where it was.
    assert_eq!(cluster.node(3).hard_state().term, 1);
    cluster.heal();
    run_ticks(&mut cluster, 30);
    assert_eq!(cluster.leader(), Some(1));
    for id in 1..=3 {
        assert_eq!(cluster.node(id).hard_state().term, 1, "node {id}");
    }
    assert_eq!(cluster.node(3).soft_state().leader, Some(1));
    assert_eq!(cluster.applied(3), cluster.applied(1));
}

#[test]
fn a_rejoining_partitioned_node_disrupts_the_cluster_without_pre_vote() {
    let mut cluster = Cluster::with_config(3, 7, |config| {
        config.pre_vote = false;
        config.check_quorum = false;
    });
    elect(&mut cluster, 1);
    cluster.isolate(3);
    run_ticks(&mut cluster, 60);
    let isolated_term = cluster.node(3).hard_state().term;
    assert!(isolated_term > 1, "the isolated node campaigned");
    assert_eq!(cluster.leader(), Some(1));
    cluster.heal();
    run_ticks(&mut cluster, 30);
    // The leader of term 1 was deposed by the higher term.
    assert!(cluster.node(1).hard_state().term >= isolated_term);
    let leader = cluster.leader().expect("a new leader");
    assert!(cluster.node(leader).hard_state().term > 1);
}

#[test]
fn an_isolated_leader_steps_down_after_an_election_timeout() {
    let mut cluster = Cluster::new(3, 8);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    let election_ticks = 10;
    for _ in 0..election_ticks {
        cluster.tick(1);
        cluster.deliver_all();
    }
    // The followers answered during the first timeout, so it still leads.
    assert_eq!(cluster.node(1).soft_state().role, Role::Leader);
    for _ in 0..election_ticks {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(1).soft_state().role, Role::Follower);
    assert_eq!(cluster.node(1).soft_state().leader, None);
    assert_eq!(cluster.node(1).hard_state().term, 1);
}

#[test]
fn a_leader_without_check_quorum_keeps_leading_when_isolated() {
    let mut cluster = Cluster::with_config(3, 9, |config| config.check_quorum = false);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    for _ in 0..50 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(1).soft_state().role, Role::Leader);
}

#[test]
fn the_remaining_majority_elects_a_new_leader_after_the_leader_is_isolated() {
    let mut cluster = Cluster::new(3, 10);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    let leader = tick_until_leader_among(&mut cluster, &[2, 3], 100);
    assert!(cluster.node(leader).hard_state().term >= 2);
    let index = cluster.propose(leader, "after".into()).unwrap();
    cluster.deliver_all();
    let other = if leader == 2 { 3 } else { 2 };
    assert_eq!(cluster.applied(other).last().map(|e| e.index), Some(index));
}

#[test]
fn a_vote_is_not_granted_twice_in_one_term_even_across_a_restart() {
    let mut cluster = Cluster::with_config(3, 11, |config| config.pre_vote = false);
    let vote = |from: u64| Message {
        from,
        to: 1,
        term: 1,
        body: MessageBody::Vote {
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        },
    };
    let granted_to = |cluster: &mut Cluster, candidate: u64| -> bool {
        cluster.process(1);
        let answers = cluster.take_messages();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].to, candidate);
        assert_eq!(answers[0].term, 1);
        match answers[0].body {
            MessageBody::VoteResponse { granted } => granted,
            ref other => panic!("unexpected answer {other:?}"),
        }
    };
    cluster.node_mut(1).step(vote(2)).unwrap();
    assert!(granted_to(&mut cluster, 2));
    cluster.node_mut(1).step(vote(3)).unwrap();
    assert!(!granted_to(&mut cluster, 3));
    cluster.restart(1);
    assert_eq!(cluster.node(1).hard_state().vote, Some(2));
    cluster.node_mut(1).step(vote(3)).unwrap();
    assert!(!granted_to(&mut cluster, 3));
    // Asking again for the same candidate is answered the same way.
    cluster.node_mut(1).step(vote(2)).unwrap();
    assert!(granted_to(&mut cluster, 2));
}

#[test]
fn a_vote_request_is_held_back_until_persisted() {
    let mut cluster = Cluster::with_config(3, 12, |config| config.pre_vote = false);
    cluster.campaign(1);
    let ready = cluster.node_mut(1).ready();
    assert_eq!(
        ready.hard_state.map(|h| (h.term, h.vote)),
        Some((1, Some(1)))
    );
    assert!(ready.messages.is_empty());
    assert_eq!(ready.persisted_messages.len(), 2);
    assert!(ready
        .persisted_messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::Vote { .. })));
    cluster.node_mut(1).advance(&ready);
}

#[test]
fn a_follower_in_a_leader_lease_ignores_a_disruptive_vote_request() {
    let mut cluster = Cluster::new(3, 13);
    elect(&mut cluster, 1);
    let disruptive = Message {
        from: 3,
        to: 2,
        term: 5,
        body: MessageBody::Vote {
            last_log_index: 10,
            last_log_term: 4,
            transfer: false,
        },
    };
    cluster.node_mut(2).step(disruptive).unwrap();
    cluster.process(2);
    assert!(cluster.pending_messages().is_empty());
    assert_eq!(cluster.node(2).hard_state().term, 1);
    assert_eq!(cluster.node(2).soft_state().leader, Some(1));
}

/// A vote request from node 9, which no configuration of the cluster names, claiming a transfer.
fn vote_from_a_stranger(to: u64, term: u64) -> Message {
    Message {
        from: 9,
        to,
        term,
        body: MessageBody::Vote {
            last_log_index: 10,
            last_log_term: 4,
            transfer: true,
        },
    }
}

/// Takes every message in flight; returns the bodies of those to `to`.
fn take_bodies_to(cluster: &mut Cluster, to: u64) -> Vec<MessageBody> {
    let messages = cluster.take_messages().into_iter();
    messages.filter(|m| m.to == to).map(|m| m.body).collect()
}

#[test]
fn a_stranger_claiming_a_transfer_cannot_depose_a_live_leader() {
    let mut cluster = Cluster::new(3, 16);
    elect(&mut cluster, 1);
    // Thesis §4.2.3: the lease holds against a server this node's configuration does not name
    // as a voter, whatever it claims; a leader sends `TimeoutNow` only to its own voters.
    for id in [1, 2] {
        cluster
            .node_mut(id)
            .step(vote_from_a_stranger(id, 5))
            .unwrap();
        cluster.process(id);
        assert_eq!(cluster.node(id).hard_state().term, 1);
        assert_eq!(cluster.node(id).soft_state().leader, Some(1));
    }
    assert!(cluster.pending_messages().iter().all(|m| m.to != 9));
    // A pre-vote of it is not granted within the lease either.
    let pre_vote = Message {
        from: 9,
        to: 2,
        term: 5,
        body: MessageBody::PreVote {
            last_log_index: 10,
            last_log_term: 4,
        },
    };
    cluster.node_mut(2).step(pre_vote).unwrap();
    cluster.process(2);
    let answers = take_bodies_to(&mut cluster, 9);
    assert_eq!(
        answers,
        vec![MessageBody::PreVoteResponse { granted: false }]
    );
}

#[test]
fn a_follower_past_its_lease_votes_for_a_stranger_whose_log_is_up_to_date() {
    // Thesis §4.1: a member added after this node's log ends needs its vote (simulator, seed
    // 9626: no candidate could win 3 of 4 votes while a member behind the addition refused it).
    let mut cluster = Cluster::new(3, 17);
    elect(&mut cluster, 1);
    cluster.crash(1);
    for _ in 0..10 {
        cluster.node_mut(2).tick();
    }
    // Past the lease; a pre-candidate, if its timer fired, did not raise its term.
    assert_eq!(cluster.node(2).hard_state().term, 1);
    cluster.take_messages();
    cluster
        .node_mut(2)
        .step(vote_from_a_stranger(2, 5))
        .unwrap();
    cluster.process(2);
    assert_eq!(cluster.node(2).hard_state().term, 5);
    assert_eq!(cluster.node(2).hard_state().vote, Some(9));
    let answers = take_bodies_to(&mut cluster, 9);
    assert_eq!(answers, vec![MessageBody::VoteResponse { granted: true }]);
    // Its answers count in no quorum of this node: a vote response of it is refused.
    let answer = Message {
        from: 9,
        to: 2,
        term: 5,
        body: MessageBody::VoteResponse { granted: true },
    };
    assert!(cluster.node_mut(2).step(answer).is_err());
}

#[test]
fn two_runs_of_one_seed_produce_the_same_trace() {
    fn trace(seed: u64) -> Vec<Message> {
        let mut cluster = Cluster::new(5, seed);
        let mut delivered = Vec::new();
        for round in 0..200u32 {
            cluster.tick_all();
            if round == 60 {
                cluster.isolate(cluster.leader().unwrap_or(1));
            }
            if round == 120 {
                cluster.heal();
            }
            if let Some(leader) = cluster.leader() {
                let _ = cluster.propose(leader, format!("{round}").into());
            }
            cluster.process_all();
            while let Some(message) = cluster.deliver_one() {
                delivered.push(message);
                cluster.process_all();
            }
        }
        delivered
    }
    let first = trace(42);
    assert!(first.len() > 100);
    assert_eq!(first, trace(42));
}

#[test]
fn a_candidate_with_a_stale_log_is_refused_votes() {
    let mut cluster = Cluster::with_config(3, 14, |config| config.pre_vote = false);
    elect(&mut cluster, 1);
    cluster.isolate(3);
    cluster.propose(1, "committed without 3".into()).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.node(2).hard_state().commit, 2);
    cluster.crash(1);
    cluster.heal();
    for _ in 0..10 {
        cluster.tick(2);
        cluster.tick(3);
    }
    cluster.campaign(3);
    cluster.process(3);
    cluster.deliver_one().expect("the vote request to node 2");
    cluster.process(2);
    let answers: Vec<MessageBody> = cluster
        .take_messages()
        .into_iter()
        .filter(|m| m.from == 2)
        .map(|m| m.body)
        .collect();
    assert_eq!(answers, vec![MessageBody::VoteResponse { granted: false }]);
    assert_ne!(cluster.node(3).soft_state().role, Role::Leader);
}

#[test]
fn a_follower_past_its_lease_grants_a_pre_vote_while_it_still_knows_the_dead_leader() {
    let mut cluster = Cluster::new(3, 15);
    elect(&mut cluster, 1);
    cluster.crash(1);
    // Both followers voted for node 1 and still name it as leader. Tick them in step until
    // one times out and pre-campaigns; the other is past its lease by then (a whole election
    // timeout without the leader) but its own randomized timer has not fired.
    let first = loop {
        for id in [2, 3] {
            cluster.node_mut(id).tick();
        }
        let campaigning: Vec<u64> = [2, 3]
            .into_iter()
            .filter(|&id| cluster.node(id).soft_state().role != Role::Follower)
            .collect();
        if !campaigning.is_empty() {
            assert_eq!(campaigning.len(), 1, "both timed out in the same tick");
            break campaigning[0];
        }
    };
    let other = 5 - first;
    assert_eq!(cluster.node(other).soft_state().leader, Some(1));
    cluster.process_all();
    cluster.deliver_all();
    assert_eq!(
        cluster.node(first).soft_state().role,
        Role::Leader,
        "node {other} refused the pre-vote"
    );
    assert_eq!(cluster.node(other).soft_state().leader, Some(first));
}
