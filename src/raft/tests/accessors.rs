//! What the driver reads from the core besides `Ready`: the committed membership, the leader's
//! view of who answered recently, and the config checks at construction.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{elect, run_ticks};
use crate::raft::testkit::Cluster;
use crate::raft::{
    ConfChange, Config, Entry, EntryKind, Error, Membership, Message, MessageBody, Raft,
    RestoreState, Role,
};

/// Steps `message` into its receiver, hands out and acknowledges the receiver's `Ready`, and
/// returns the one message it sends back to the sender (an answer waits in either queue).
fn only_answer(cluster: &mut Cluster, message: Message) -> Message {
    let (receiver, sender) = (message.to, message.from);
    let raft = cluster.node_mut(receiver);
    raft.step(message).unwrap();
    let ready = raft.ready();
    raft.advance(&ready);
    let mut answers: Vec<Message> = ready
        .messages
        .into_iter()
        .chain(ready.persisted_messages)
        .filter(|m| m.to == sender)
        .collect();
    assert_eq!(answers.len(), 1, "one answer to node {sender}: {answers:?}");
    answers.remove(0)
}

#[test]
fn the_committed_membership_lags_an_appended_change_until_it_commits() {
    let mut cluster = Cluster::new(3, 7);
    elect(&mut cluster, 1);
    cluster.add_node(
        4,
        Membership::with_voters([1, 2, 3]),
        RestoreState::default(),
    );
    cluster.drop_between(1, 2);
    cluster.drop_between(1, 3);
    assert_eq!(
        cluster.node(1).membership_index(),
        0,
        "the initial membership"
    );
    let index = cluster
        .propose_conf_change(1, ConfChange::AddVoter(4))
        .unwrap();
    assert_eq!(cluster.node(1).membership_index(), index);
    cluster.deliver_all();
    assert_eq!(
        cluster.node(1).membership(),
        &Membership::with_voters([1, 2, 3, 4])
    );
    assert_eq!(
        cluster.node(1).committed_membership(),
        &Membership::with_voters([1, 2, 3]),
        "an uncommitted change is not the committed membership"
    );
    cluster.heal();
    run_ticks(&mut cluster, 12);
    for id in 1..=4 {
        assert_eq!(
            cluster.node(id).committed_membership(),
            &Membership::with_voters([1, 2, 3, 4]),
            "node {id}"
        );
    }
}

#[test]
fn only_a_leader_knows_who_answered_within_the_check_quorum_window() {
    let mut cluster = Cluster::new(3, 8);
    elect(&mut cluster, 1);
    assert_eq!(cluster.node(1).recently_active(1), Some(true), "itself");
    assert_eq!(cluster.node(1).recently_active(2), Some(true));
    assert_eq!(cluster.node(1).recently_active(3), Some(true));
    assert_eq!(cluster.node(1).recently_active(9), None, "not a member");
    assert_eq!(cluster.node(2).recently_active(1), None, "a follower");
    assert_eq!(cluster.node(2).recently_active(3), None, "a follower");
    // Node 3 goes silent: after a whole election timeout without its answers it is inactive,
    // while node 2, which keeps answering heartbeats, stays active.
    cluster.isolate(3);
    let election_ticks = Config::new(1).election_ticks;
    for _ in 0..election_ticks + 1 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(1).recently_active(3), Some(false));
    assert_eq!(cluster.node(1).recently_active(2), Some(true));
}

#[test]
fn a_config_the_core_cannot_work_with_is_refused() {
    let build = |config: Config| {
        Raft::new(
            config,
            Membership::with_voters([1, 2, 3]),
            RestoreState::default(),
            ChaCha8Rng::seed_from_u64(1),
        )
        .map(|_| ())
    };
    let valid = Config::new(1);
    assert_eq!(build(valid.clone()), Ok(()));
    let refused = |change: &dyn Fn(&mut Config)| {
        let mut config = valid.clone();
        change(&mut config);
        match build(config) {
            Err(Error::Invalid(why)) => why,
            other => panic!("accepted: {other:?}"),
        }
    };
    assert!(refused(&|c| c.id = 0).contains("id"));
    assert!(refused(&|c| c.election_ticks = 0).contains("election_ticks"));
    assert!(refused(&|c| c.election_ticks = u32::MAX / 2 + 1).contains("election_ticks"));
    assert!(refused(&|c| c.heartbeat_ticks = 0).contains("heartbeat_ticks"));
    assert!(refused(&|c| c.heartbeat_ticks = c.election_ticks).contains("heartbeat_ticks"));
    assert!(refused(&|c| c.max_entries_per_append = 0).contains("max_entries_per_append"));
    assert!(refused(&|c| c.max_inflight_appends = 0).contains("max_inflight_appends"));
    // The edges that are allowed.
    let mut edge = valid.clone();
    edge.election_ticks = u32::MAX / 2;
    edge.heartbeat_ticks = u32::MAX / 2 - 1;
    assert_eq!(build(edge), Ok(()));
    let mut edge = valid;
    edge.election_ticks = 2;
    edge.heartbeat_ticks = 1;
    assert_eq!(build(edge), Ok(()));
}

#[test]
fn a_leader_stepping_down_alone_is_reported_in_ready() {
    let mut cluster = Cluster::new(3, 13);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    let election_ticks = Config::new(1).election_ticks;
    // Tick the core directly, so only this test reads its `Ready`.
    let mut stepped_down = None;
    for _ in 0..2 * election_ticks {
        let raft = cluster.node_mut(1);
        raft.tick();
        if raft.soft_state().role != Role::Leader {
            stepped_down = Some(raft.has_ready());
            break;
        }
        // Drain what the leader sends meanwhile (its heartbeats go nowhere).
        if raft.has_ready() {
            let ready = raft.ready();
            raft.advance(&ready);
        }
    }
    // Check-quorum: no term change, no message, nothing to apply; only the role changed.
    assert_eq!(
        stepped_down,
        Some(true),
        "the step-down left nothing in Ready"
    );
    let ready = cluster.node_mut(1).ready();
    assert_eq!(ready.soft_state.map(|s| s.role), Some(Role::Follower));
    assert_eq!(ready.hard_state, None);
}

#[test]
fn a_follower_acknowledges_appended_entries_only_after_they_are_persisted() {
    let mut cluster = Cluster::new(3, 14);
    elect(&mut cluster, 1);
    cluster.propose(1, "x".into()).unwrap();
    cluster.process(1);
    let appends: Vec<Message> = cluster
        .take_messages()
        .into_iter()
        .filter(|m| m.to == 2 && matches!(m.body, MessageBody::Append { .. }))
        .collect();
    assert!(!appends.is_empty());
    let follower = cluster.node_mut(2);
    for append in appends {
        follower.step(append).unwrap();
    }
    let ready = follower.ready();
    assert!(!ready.entries.is_empty(), "the entry is to be persisted");
    let is_ack = |m: &Message| matches!(m.body, MessageBody::AppendResponse { .. });
    assert!(
        !ready.messages.iter().any(is_ack),
        "an acknowledgement may leave before the sync: {:?}",
        ready.messages
    );
    assert!(ready.persisted_messages.iter().any(is_ack));
}

#[test]
fn a_snapshot_meta_exists_only_up_to_the_applied_index() {
    let mut cluster = Cluster::new(3, 16);
    elect(&mut cluster, 1);
    cluster.propose(1, "x".into()).unwrap();
    cluster.deliver_all();
    let applied = cluster.applied_index(1);
    assert_eq!(applied, 2);
    let meta = cluster.node(1).snapshot_meta_at(applied).expect("applied");
    assert_eq!(meta.index, applied);
    assert_eq!(meta.term, 1);
    assert_eq!(meta.membership, Membership::with_voters([1, 2, 3]));
    assert!(cluster.node(1).snapshot_meta_at(applied - 1).is_some());
    assert_eq!(cluster.node(1).snapshot_meta_at(applied + 1), None);
    assert_eq!(cluster.node(1).snapshot_meta_at(applied + 5), None);
}

#[test]
fn a_candidate_refuses_a_pre_vote_for_the_term_it_voted_itself_in() {
    let mut cluster = Cluster::new(3, 17);
    cluster.campaign(2);
    // Deliver only the pre-vote round: node 2 becomes a candidate of term 1 voting for itself.
    while cluster.node(2).soft_state().role != Role::Candidate {
        cluster.process_all();
        cluster
            .deliver_one()
            .expect("the pre-vote round is in flight");
    }
    cluster.process_all();
    cluster.drop_messages(|m| matches!(m.body, MessageBody::Vote { .. }));
    let status = cluster.node(2).status();
    assert_eq!(cluster.node(2).soft_state().role, Role::Candidate);
    assert_eq!(cluster.node(2).hard_state().vote, Some(2));
    let term = cluster.node(2).hard_state().term;
    let last_index = status.last_index;
    let answer = only_answer(
        &mut cluster,
        Message {
            from: 3,
            to: 2,
            term,
            body: MessageBody::PreVote {
                last_log_index: last_index,
                last_log_term: 0,
            },
        },
    );
    assert_eq!(answer.body, MessageBody::PreVoteResponse { granted: false });
}

#[test]
fn a_stale_pre_vote_or_vote_is_refused_in_the_receivers_newer_term() {
    let mut cluster = Cluster::new(3, 19);
    elect(&mut cluster, 1);
    cluster.transfer_leadership(1, 2).unwrap();
    cluster.deliver_all();
    let term = cluster.node(2).hard_state().term;
    assert!(term >= 2);
    let requests = [
        MessageBody::PreVote {
            last_log_index: 100,
            last_log_term: term - 1,
        },
        MessageBody::Vote {
            last_log_index: 100,
            last_log_term: term - 1,
            transfer: false,
        },
    ];
    let refusals = [
        MessageBody::PreVoteResponse { granted: false },
        MessageBody::VoteResponse { granted: false },
    ];
    for (request, refusal) in requests.into_iter().zip(refusals) {
        let answer = only_answer(
            &mut cluster,
            Message {
                from: 3,
                to: 2,
                term: term - 1,
                body: request,
            },
        );
        assert_eq!(answer.term, term, "the answer carries the newer term");
        assert_eq!(answer.body, refusal);
    }
    // A deposed leader's append is answered with the newer term and changes nothing.
    let before = cluster.node(3).status();
    let answer = only_answer(
        &mut cluster,
        Message {
            from: 1,
            to: 3,
            term: term - 1,
            body: MessageBody::Append {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![Entry {
                    term: 1,
                    index: 2,
                    kind: EntryKind::Normal,
                    data: "stale".into(),
                }],
                leader_commit: 2,
            },
        },
    );
    assert_eq!(cluster.node(3).status(), before);
    assert_eq!(answer.term, term);
    assert_eq!(answer.body, MessageBody::HeartbeatResponse { read_seq: 0 });
}

#[test]
fn the_core_reports_its_own_id() {
    let cluster = Cluster::new(3, 20);
    for id in 1..=3 {
        assert_eq!(cluster.node(id).id(), id);
    }
}

#[test]
fn a_follower_keeps_its_vote_when_it_learns_the_leader_of_that_term() {
    let mut cluster = Cluster::new(3, 21);
    elect(&mut cluster, 2);
    let term = cluster.node(2).hard_state().term;
    for id in [1, 3] {
        assert_eq!(cluster.node(id).soft_state().leader, Some(2));
        assert_eq!(cluster.node(id).hard_state().vote, Some(2), "node {id}");
    }
    // So a second candidate of the same term gets no vote from it.
    let answer = only_answer(
        &mut cluster,
        Message {
            from: 3,
            to: 1,
            term,
            body: MessageBody::Vote {
                last_log_index: 100,
                last_log_term: term,
                transfer: true,
            },
        },
    );
    assert_eq!(answer.body, MessageBody::VoteResponse { granted: false });
}

#[test]
fn a_follower_within_its_leader_lease_refuses_an_up_to_date_pre_vote() {
    let mut cluster = Cluster::new(3, 22);
    elect(&mut cluster, 1);
    let term = cluster.node(2).hard_state().term;
    let last_index = cluster.node(2).status().last_index;
    let answer = only_answer(
        &mut cluster,
        Message {
            from: 3,
            to: 2,
            term: term + 1,
            body: MessageBody::PreVote {
                last_log_index: last_index + 5,
                last_log_term: term,
            },
        },
    );
    assert_eq!(answer.body, MessageBody::PreVoteResponse { granted: false });
}

#[test]
fn a_learner_or_a_leader_told_to_campaign_does_not() {
    let mut cluster = Cluster::new(3, 23);
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
    let term = cluster.node(4).hard_state().term;
    assert_eq!(cluster.node(4).soft_state().leader, Some(1));
    cluster
        .node_mut(4)
        .step(Message {
            from: 1,
            to: 4,
            term,
            body: MessageBody::TimeoutNow,
        })
        .unwrap();
    assert_eq!(cluster.node(4).soft_state().role, Role::Follower);
    assert_eq!(cluster.node(4).hard_state().term, term);
    // Nor does a leader that gets one: it is heard, and ignored.
    cluster
        .node_mut(1)
        .step(Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::TimeoutNow,
        })
        .unwrap();
    assert_eq!(cluster.node(1).soft_state().role, Role::Leader);
    assert_eq!(cluster.node(1).hard_state().term, term);
}

#[test]
fn a_follower_without_vote_or_leader_grants_a_pre_vote_for_its_own_term() {
    let mut cluster = Cluster::new(3, 27);
    elect(&mut cluster, 1);
    cluster.propose(1, "x".into()).unwrap();
    cluster.deliver_all();
    let status = cluster.node(2).status();
    let term = status.hard_state.term + 1;
    // A forced vote request of a newer term from a node with an empty log: node 2 moves to that
    // term without a vote (the candidate is behind) and without a leader.
    let refusal = only_answer(
        &mut cluster,
        Message {
            from: 3,
            to: 2,
            term,
            body: MessageBody::Vote {
                last_log_index: 0,
                last_log_term: 0,
                transfer: true,
            },
        },
    );
    assert_eq!(refusal.body, MessageBody::VoteResponse { granted: false });
    assert_eq!(cluster.node(2).hard_state().term, term);
    assert_eq!(cluster.node(2).hard_state().vote, None);
    assert_eq!(cluster.node(2).soft_state().leader, None);
    // A pre-candidate one term behind, as up to date as node 2, asks for node 2's own term.
    let last_term = status.hard_state.term;
    let answer = only_answer(
        &mut cluster,
        Message {
            from: 1,
            to: 2,
            term,
            body: MessageBody::PreVote {
                last_log_index: status.last_index,
                last_log_term: last_term,
            },
        },
    );
    assert_eq!(answer.body, MessageBody::PreVoteResponse { granted: true });
}
