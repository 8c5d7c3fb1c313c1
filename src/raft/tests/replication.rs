//! Log replication and commitment: the paper's Figures 7 and 8, fast backtracking, flow
//! limits, snapshots, restarts and the persistence contract of `Ready`.

use super::{elect, figure_entry, log_of, persisted, run_ticks};
use crate::raft::testkit::Cluster;
use crate::raft::{
    Entry, EntryKind, Error, Index, Membership, Message, MessageBody, Role, Snapshot, SnapshotMeta,
};

#[test]
fn a_new_leader_repairs_every_follower_log_of_figure_7() {
    // Raft Figure 7: the leader of term 8 and followers (a)-(f).
    let leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let mut states = vec![persisted(7, 0, &leader)];
    for terms in followers {
        states.push(persisted(*terms.last().unwrap(), 0, terms));
    }
    let mut cluster = Cluster::from_states(1, states, |_| {});
    elect(&mut cluster, 1);
    assert_eq!(cluster.node(1).hard_state().term, 8);
    let mut expected = log_of(&leader);
    expected.push(Entry {
        term: 8,
        index: 11,
        kind: EntryKind::Noop,
        data: Default::default(),
    });
    for id in 1..=7 {
        assert_eq!(cluster.node(id).entries(1, 100), expected, "node {id}");
        assert_eq!(cluster.storage(id).entries, expected, "node {id} persisted");
        assert_eq!(cluster.node(id).hard_state().commit, 11, "node {id}");
        assert_eq!(cluster.applied(id), expected, "node {id} applied");
    }
    assert!(
        cluster.step_errors().is_empty(),
        "{:?}",
        cluster.step_errors()
    );
}

/// Figure 8's situation (c): S1 leads term 4 with the term-2 entry at index 2; S5 holds a
/// term-3 entry there. `max_entries_per_append = 1` lets the test stop S1's noop in flight.
fn figure_8_cluster(seed: u64) -> Cluster {
    let states = vec![
        persisted(3, 1, &[1, 2]),
        persisted(3, 1, &[1]),
        persisted(3, 1, &[1]),
        persisted(3, 1, &[1]),
        persisted(3, 1, &[1, 3]),
    ];
    let mut cluster = Cluster::from_states(seed, states, |config| {
        config.max_entries_per_append = 1;
        config.check_quorum = false;
    });
    // S5 never hears from S1 in term 4, so it keeps its term-3 entry.
    cluster.drop_between(1, 5);
    cluster.campaign(1);
    deliver_all_but_the_noop(&mut cluster);
    assert_eq!(cluster.node(1).soft_state().role, Role::Leader);
    assert_eq!(cluster.node(1).hard_state().term, 4);
    cluster
}

/// Delivers everything, but strips S1's term-4 noop from every append (as if the leader had
/// sent the entries before it only).
fn deliver_all_but_the_noop(cluster: &mut Cluster) {
    loop {
        cluster.process_all();
        for mut message in cluster.take_messages() {
            if let MessageBody::Append { entries, .. } = &mut message.body {
                entries.retain(|e| e.term != 4);
            }
            cluster.send(message);
        }
        if cluster.deliver_one().is_none() {
            break;
        }
    }
}

#[test]
fn an_old_term_entry_on_a_majority_is_not_committed_by_counting_figure_8() {
    let mut cluster = figure_8_cluster(2);
    // Index 2 (term 2) is now on S1, S2, S3, S4: a majority of five...
    for id in 2..=4 {
        assert_eq!(cluster.node(id).term_at(2), Some(2), "node {id}");
        assert_eq!(cluster.node(1).match_index(id), Some(2), "node {id}");
    }
    // ...but Raft §5.4.2 forbids committing it by counting replicas.
    assert_eq!(cluster.node(1).hard_state().commit, 1);
    assert!(cluster.applied(1).iter().all(|e| e.index < 2));
    // Once the current-term noop reaches a majority (resent after the pipeline stalls), both
    // commit together.
    for _ in 0..6 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(1).hard_state().commit, 3);
    assert_eq!(cluster.applied(1)[1], figure_entry(2, 2));
}

#[test]
fn an_uncommitted_old_term_entry_is_overwritten_by_a_later_leader_figure_8() {
    let mut cluster = figure_8_cluster(3);
    // Figure 8 (d): S1 crashes; S5 wins with S2, S3, S4 and replaces index 2.
    cluster.crash(1);
    cluster.heal();
    // S2-S4 voted for S1 in term 4: S5's first pre-vote only teaches it that term.
    cluster.campaign(5);
    cluster.deliver_all();
    assert_eq!(cluster.node(5).hard_state().term, 4);
    elect(&mut cluster, 5);
    let term = cluster.node(5).hard_state().term;
    assert!(term >= 5);
    for id in 2..=5 {
        assert_eq!(cluster.node(id).term_at(2), Some(3), "node {id}");
        assert_eq!(cluster.applied(id)[1], figure_entry(2, 3), "node {id}");
    }
    cluster.restart(1);
    run_ticks(&mut cluster, 20);
    assert_eq!(cluster.node(1).term_at(2), Some(3));
    assert_eq!(cluster.applied(1)[1], figure_entry(2, 3));
}

/// Delivers messages one by one until quiescent; returns how many appends were rejected.
fn deliver_all_counting_rejections(cluster: &mut Cluster) -> usize {
    let mut rejections = 0;
    loop {
        cluster.process_all();
        let Some(message) = cluster.deliver_one() else {
            return rejections;
        };
        if matches!(
            message.body,
            MessageBody::AppendResponse {
                reject_hint: Some(_),
                ..
            }
        ) {
            rejections += 1;
        }
    }
}

#[test]
fn fast_backtracking_repairs_a_long_divergent_log_in_few_round_trips() {
    let mut leader_log = vec![1];
    leader_log.extend([3; 50]);
    let mut divergent_log = vec![1];
    divergent_log.extend([2; 100]);
    let states = vec![
        persisted(3, 1, &leader_log),
        persisted(3, 1, &leader_log),
        persisted(2, 1, &divergent_log),
    ];
    let mut cluster = Cluster::from_states(4, states, |_| {});
    cluster.campaign(1);
    let rejections = deliver_all_counting_rejections(&mut cluster);
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(
        rejections, 1,
        "one rejection skips all 100 divergent entries"
    );
    assert_eq!(
        cluster.node(3).entries(1, 200),
        cluster.node(1).entries(1, 200)
    );
    assert_eq!(cluster.node(3).hard_state().commit, 52);
}

#[test]
fn a_follower_missing_entries_is_caught_up_in_one_rejection() {
    let full: Vec<u64> = vec![1; 40];
    let states = vec![
        persisted(1, 0, &full),
        persisted(1, 0, &full),
        persisted(1, 0, &full[..3]),
    ];
    let mut cluster = Cluster::from_states(5, states, |config| config.max_entries_per_append = 8);
    cluster.campaign(1);
    let rejections = deliver_all_counting_rejections(&mut cluster);
    assert_eq!(rejections, 1);
    assert_eq!(cluster.node(3).status().last_index, 41);
}

/// `max_uncommitted_bytes` of the tests of the uncommitted-bytes limit.
const UNCOMMITTED_LIMIT: u64 = 100;

/// The refusal of a proposal of `proposed` entry bytes with `uncommitted` bytes in flight.
fn over_the_limit(uncommitted: u64, proposed: u64) -> Result<Index, Error> {
    Err(Error::UncommittedBytesExceeded {
        uncommitted,
        proposed,
        limit: UNCOMMITTED_LIMIT,
    })
}

#[test]
fn proposals_over_the_uncommitted_bytes_limit_are_refused() {
    let mut cluster = Cluster::with_config(3, 6, |config| {
        config.max_uncommitted_bytes = UNCOMMITTED_LIMIT
    });
    elect(&mut cluster, 1);
    cluster.drop_between(1, 2);
    cluster.drop_between(1, 3);
    let payload = || bytes::Bytes::from(vec![7u8; 30]);
    assert_eq!(cluster.propose(1, payload()), Ok(2));
    assert_eq!(cluster.propose(1, payload()), over_the_limit(54, 54));
    cluster.heal();
    // The pipeline stalled on the dropped append; the leader notices and resends.
    for _ in 0..6 {
        cluster.tick(1);
        cluster.deliver_all();
    }
    assert_eq!(cluster.node(1).hard_state().commit, 2);
    assert_eq!(cluster.propose(1, payload()), Ok(3));
}

#[test]
fn a_new_leader_counts_uncommitted_bytes_from_the_entry_after_its_noop() {
    let mut cluster = Cluster::with_config(3, 9, |config| {
        config.max_uncommitted_bytes = UNCOMMITTED_LIMIT
    });
    elect(&mut cluster, 1);
    for _ in 0..4 {
        cluster.propose(1, "x".into()).unwrap();
        cluster.deliver_all();
    }
    cluster.transfer_leadership(1, 2).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(2));
    // Node 2 leads from a log of 5 entries: its no-op is entry 6 and is committed.
    assert_eq!(cluster.node(2).hard_state().commit, 6);
    cluster.drop_between(2, 1);
    cluster.drop_between(2, 3);
    let payload = || bytes::Bytes::from(vec![7u8; 30]);
    assert_eq!(cluster.propose(2, payload()), Ok(7));
    assert_eq!(
        cluster.propose(2, payload()),
        over_the_limit(54, 54),
        "entry 7 counts towards the limit"
    );
}

#[test]
fn small_proposals_fill_the_uncommitted_limit_exactly_up_to_the_sum_of_their_sizes() {
    let mut cluster = Cluster::with_config(3, 25, |config| {
        config.max_uncommitted_bytes = UNCOMMITTED_LIMIT
    });
    elect(&mut cluster, 1);
    cluster.deliver_all();
    cluster.drop_between(1, 2);
    cluster.drop_between(1, 3);
    // Each entry counts 6 payload bytes + 24 = 30: three fit in 100 bytes, the fourth does not.
    let small = || bytes::Bytes::from(vec![7u8; 6]);
    assert_eq!(cluster.propose(1, small()), Ok(2));
    assert_eq!(cluster.propose(1, small()), Ok(3));
    assert_eq!(cluster.propose(1, small()), Ok(4));
    assert_eq!(cluster.propose(1, small()), over_the_limit(90, 30));
}

#[test]
fn a_commit_subtracts_only_the_newly_committed_entries_from_the_uncommitted_bytes() {
    let mut cluster = Cluster::with_config(3, 26, |config| {
        config.max_uncommitted_bytes = UNCOMMITTED_LIMIT
    });
    elect(&mut cluster, 1);
    cluster.deliver_all();
    let small = || bytes::Bytes::from(vec![7u8; 6]); // 30 bytes an entry
    assert_eq!(cluster.propose(1, small()), Ok(2));
    cluster.deliver_all();
    // Entry 3 commits; entry 4's append is lost, so it stays uncommitted.
    assert_eq!(cluster.propose(1, small()), Ok(3));
    cluster.process(1);
    assert_eq!(cluster.propose(1, small()), Ok(4));
    cluster.process(1);
    let lost = cluster.drop_messages(|m| match &m.body {
        MessageBody::Append { entries, .. } => entries.iter().any(|e| e.index == 4),
        _ => false,
    });
    assert!(lost > 0);
    cluster.deliver_all();
    assert_eq!(cluster.node(1).hard_state().commit, 3);
    cluster.drop_between(1, 2);
    cluster.drop_between(1, 3);
    assert_eq!(cluster.propose(1, small()), Ok(5));
    assert_eq!(cluster.propose(1, small()), Ok(6));
    assert_eq!(
        cluster.propose(1, small()),
        over_the_limit(90, 30),
        "entries 4, 5 and 6 are uncommitted"
    );
}

#[test]
fn one_proposal_larger_than_the_uncommitted_limit_is_accepted_on_an_empty_pipeline() {
    let mut cluster = Cluster::with_config(3, 24, |config| {
        config.max_uncommitted_bytes = UNCOMMITTED_LIMIT
    });
    elect(&mut cluster, 1);
    cluster.deliver_all();
    let large = || bytes::Bytes::from(vec![7u8; 200]);
    // Nothing uncommitted: the large entry goes, or it could never be written.
    assert_eq!(cluster.propose(1, large()), Ok(2));
    assert_eq!(cluster.propose(1, large()), over_the_limit(224, 224));
}

#[test]
fn a_proposal_over_the_size_limit_is_refused_and_non_leaders_refuse_proposals() {
    let mut cluster = Cluster::with_config(3, 7, |config| config.max_proposal_bytes = 10);
    elect(&mut cluster, 1);
    assert_eq!(
        cluster.propose(1, bytes::Bytes::from(vec![0u8; 11])),
        Err(Error::ProposalTooLarge {
            size: 11,
            limit: 10
        })
    );
    assert!(
        cluster
            .propose(1, bytes::Bytes::from(vec![0u8; 10]))
            .is_ok(),
        "a proposal of exactly the limit is accepted"
    );
    assert_eq!(
        cluster.propose(2, "x".into()),
        Err(Error::NotLeader { leader: Some(1) })
    );
}

#[test]
fn proposals_made_between_readies_leave_in_one_append() {
    let mut cluster = Cluster::new(3, 8);
    elect(&mut cluster, 1);
    for i in 0..10 {
        cluster.propose(1, format!("p{i}").into()).unwrap();
    }
    cluster.process(1);
    let appends: Vec<_> = cluster
        .pending_messages()
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::Append { entries, .. } => Some((m.to, entries.len())),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![(2, 10), (3, 10)]);
}

#[test]
fn a_follower_behind_compaction_receives_and_installs_a_snapshot() {
    let mut cluster = Cluster::new(3, 9);
    elect(&mut cluster, 1);
    cluster.crash(3);
    for i in 0..10 {
        cluster.propose(1, format!("v{i}").into()).unwrap();
    }
    cluster.deliver_all();
    let applied = cluster.applied_index(1);
    assert_eq!(applied, 11);
    cluster.compact(1, applied).unwrap();
    assert_eq!(cluster.node(1).status().snapshot_index, 11);
    assert!(cluster.node(1).entries(1, 12).is_empty());
    cluster.restart(3);
    assert_eq!(run_counting_snapshots(&mut cluster, 10), 1);
    let status = cluster.node(3).status();
    assert_eq!(status.snapshot_index, 11);
    assert_eq!(status.hard_state.commit, 11);
    assert_eq!(status.applied_index, 11);
    assert_eq!(cluster.storage(3).snapshot_index(), 11);
    assert_eq!(cluster.applied(3), cluster.applied(1));
    // Replication continues after the snapshot.
    let index = cluster.propose(1, "after".into()).unwrap();
    cluster.deliver_all();
    assert_eq!(cluster.applied(3).last().map(|e| e.index), Some(index));
    assert_eq!(cluster.applied(3), cluster.applied(1));
}

/// Counts the `InstallSnapshot` messages sent while the cluster runs for `rounds` rounds.
fn run_counting_snapshots(cluster: &mut Cluster, rounds: usize) -> usize {
    let mut snapshots_sent = 0;
    for _ in 0..rounds {
        cluster.tick_all();
        cluster.process_all();
        snapshots_sent += cluster
            .pending_messages()
            .iter()
            .filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }))
            .count();
        cluster.deliver_all();
    }
    snapshots_sent
}

#[test]
fn a_follower_inside_the_compaction_tail_catches_up_from_the_log() {
    let mut cluster = Cluster::new(3, 9);
    elect(&mut cluster, 1);
    cluster.deliver_all();
    cluster.crash(3);
    for i in 0..10 {
        cluster.propose(1, format!("v{i}").into()).unwrap();
    }
    cluster.deliver_all();
    let applied = cluster.applied_index(1);
    assert_eq!(applied, 11);
    // Snapshot at 11 keeping the last 8 covered entries: the log starts at 4.
    cluster.compact_keeping(1, applied, 8).unwrap();
    assert_eq!(cluster.node(1).status().snapshot_index, 11);
    let kept: Vec<u64> = cluster
        .node(1)
        .entries(1, 12)
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(kept, (4..=11).collect::<Vec<_>>());
    assert_eq!(
        cluster.node(1).term_at(3),
        Some(1),
        "the log's start keeps its term"
    );
    assert_eq!(cluster.node(1).term_at(2), None);
    // Node 3 holds index 1 (the no-op) and 2..=3 may be missing: it crashed after the no-op
    // was replicated, so it needs entries from 2, below the start of the tail at 4.
    cluster.restart(3);
    let behind = cluster.storage(3).last_index();
    assert!(behind < 4, "node 3 holds up to {behind}");
    assert_eq!(run_counting_snapshots(&mut cluster, 10), 1);

    // A follower that lags by less than the tail catches up from the log alone.
    cluster.crash(2);
    for i in 0..6 {
        cluster.propose(1, format!("w{i}").into()).unwrap();
    }
    cluster.deliver_all();
    let applied = cluster.applied_index(1);
    assert_eq!(applied, 17);
    cluster.compact_keeping(1, applied, 8).unwrap();
    assert_eq!(cluster.node(1).status().snapshot_index, 17);
    cluster.restart(2);
    assert_eq!(cluster.storage(2).last_index(), 11);
    assert_eq!(run_counting_snapshots(&mut cluster, 10), 0);
    assert_eq!(cluster.applied(2), cluster.applied(1));
    assert_eq!(
        cluster.node(2).status().snapshot_index,
        0,
        "node 2 never got a snapshot"
    );
    let index = cluster.propose(1, "after".into()).unwrap();
    cluster.deliver_all();
    for id in [2, 3] {
        assert_eq!(cluster.applied(id).last().map(|e| e.index), Some(index));
    }
}

#[test]
fn compaction_never_moves_the_log_start_back() {
    let mut cluster = Cluster::new(1, 3);
    elect(&mut cluster, 1);
    for i in 0..10 {
        cluster.propose(1, format!("v{i}").into()).unwrap();
    }
    cluster.deliver_all();
    cluster.compact_keeping(1, 8, 0).unwrap();
    cluster.compact_keeping(1, 11, 5).unwrap();
    let kept: Vec<u64> = cluster
        .node(1)
        .entries(1, 12)
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(
        kept,
        vec![9, 10, 11],
        "the tail cannot bring back compacted entries"
    );
    assert_eq!(cluster.node(1).status().snapshot_index, 11);
}

#[test]
fn a_restarted_node_keeps_its_vote_and_log_and_reapplies_committed_entries() {
    let mut cluster = Cluster::new(3, 10);
    elect(&mut cluster, 1);
    for i in 0..5 {
        cluster.propose(1, format!("e{i}").into()).unwrap();
    }
    cluster.deliver_all();
    let before = cluster.node(2).status();
    let log_before = cluster.node(2).entries(1, 100).to_vec();
    let applied_before = cluster.applied(2).to_vec();
    cluster.restart(2);
    let after = cluster.node(2).status();
    assert_eq!(after.hard_state, before.hard_state);
    assert_eq!(after.last_index, before.last_index);
    assert_eq!(after.soft_state.role, Role::Follower);
    assert_eq!(cluster.node(2).entries(1, 100), log_before.as_slice());
    cluster.process(2);
    assert_eq!(cluster.applied(2), applied_before.as_slice());
    // The restarted leader keeps its vote for itself in its term too.
    cluster.restart(1);
    assert_eq!(cluster.node(1).hard_state().vote, Some(1));
    assert_eq!(cluster.node(1).hard_state().term, 1);
}

#[test]
fn a_leader_counts_itself_only_after_its_entries_are_persisted() {
    let mut cluster = Cluster::new(3, 11);
    elect(&mut cluster, 1);
    cluster.drop_between(1, 3);
    let index = cluster.propose(1, "x".into()).unwrap();
    // Collect the leader's ready by hand and hold back the acknowledgement.
    let ready = cluster.node_mut(1).ready();
    assert_eq!(ready.entries.len(), 1);
    assert_eq!(ready.entries[0].index, index);
    for message in ready.messages.iter().cloned() {
        cluster.send(message);
    }
    // Node 2 acknowledges; with node 3 cut off only the leader's own copy could make a quorum.
    while cluster.deliver_one().is_some() {
        cluster.process(2);
    }
    assert_eq!(cluster.node(1).match_index(2), Some(index));
    assert_eq!(cluster.node(1).hard_state().commit, index - 1);
    // Entries are handed out once: a second ready does not repeat them.
    assert!(cluster.node_mut(1).ready().entries.is_empty());
    cluster.node_mut(1).advance(&ready);
    assert_eq!(cluster.node(1).hard_state().commit, index);
}

#[test]
fn a_truncated_entry_is_handed_out_again_with_its_replacement() {
    // Node 3 holds an uncommitted term-2 entry the new leader of term 3 replaces.
    let states = vec![
        persisted(2, 1, &[1]),
        persisted(2, 1, &[1]),
        persisted(2, 1, &[1, 2]),
    ];
    let mut cluster = Cluster::from_states(12, states, |_| {});
    elect(&mut cluster, 1);
    assert_eq!(cluster.node(3).term_at(2), Some(3));
    assert_eq!(cluster.storage(3).entries, cluster.storage(1).entries);
    assert_eq!(cluster.node(3).persisted_index(), 2);
}

#[test]
fn a_minority_partition_cannot_commit_while_the_majority_can() {
    let mut cluster = Cluster::new(5, 13);
    elect(&mut cluster, 1);
    cluster.partition(&[&[1, 2], &[3, 4, 5]]);
    let stranded = cluster.propose(1, "minority".into()).unwrap();
    cluster.deliver_all();
    assert!(cluster.node(1).hard_state().commit < stranded);
    let leader = super::tick_until_leader_among(&mut cluster, &[3, 4, 5], 100);
    let index = cluster.propose(leader, "majority".into()).unwrap();
    cluster.deliver_all();
    assert!(cluster.node(leader).hard_state().commit >= index);
    cluster.heal();
    run_ticks(&mut cluster, 30);
    // The minority's entry was replaced; every node applied the same log.
    for id in 1..=5 {
        assert_eq!(cluster.applied(id), cluster.applied(leader), "node {id}");
        assert!(cluster.applied(id).iter().all(|e| e.data != "minority"));
    }
}

#[test]
fn a_driver_may_acknowledge_two_snapshot_readies_late_and_in_order() {
    let mut cluster = Cluster::new(3, 14);
    let install = |index: u64| Message {
        from: 1,
        to: 3,
        term: 1,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: 1,
                    membership: Membership::with_voters([1, 2, 3]),
                },
                data: Default::default(),
            },
        },
    };
    let node = cluster.node_mut(3);
    node.step(install(5)).unwrap();
    let first = node.ready();
    assert_eq!(first.snapshot.as_ref().map(|s| s.meta.index), Some(5));
    // A newer snapshot arrives before the driver has persisted the first one.
    node.step(install(9)).unwrap();
    let second = node.ready();
    assert_eq!(second.snapshot.as_ref().map(|s| s.meta.index), Some(9));
    // Acknowledging the first leaves the second awaiting its acknowledgement: the node runs
    // on (its invariants allow the snapshot index above the applied index until then).
    node.advance(&first);
    assert_eq!(node.status().snapshot_index, 9);
    assert!(!node.has_ready());
    node.advance(&second);
    let status = node.status();
    assert_eq!(status.applied_index, 9);
    assert_eq!(status.hard_state.commit, 9);
    assert_eq!(node.persisted_index(), 9);
}

#[test]
fn a_lost_snapshot_of_the_leaders_whole_log_is_followed_by_a_probe_without_new_writes() {
    let mut cluster = Cluster::new(3, 12);
    elect(&mut cluster, 1);
    cluster.isolate(3);
    for _ in 0..3 {
        cluster.propose(1, "x".into()).unwrap();
        cluster.deliver_all();
    }
    // The leader's snapshot covers its whole log, so node 3 can only catch up through it.
    let last = cluster.node(1).status().last_index;
    cluster.compact(1, last).unwrap();
    cluster.heal();
    let mut snapshots_dropped = 0;
    for _ in 0..60 {
        cluster.tick_all();
        cluster.process_all();
        if snapshots_dropped == 0 {
            snapshots_dropped = cluster.drop_messages(|m| {
                m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. })
            });
        }
        cluster.deliver_all();
    }
    assert_eq!(snapshots_dropped, 1, "the first snapshot was lost");
    // The stalled transfer falls back to probing from after the snapshot: with match below the
    // leader's last index and nothing left to send, the probe is an empty append, sent although
    // nobody writes.
    assert_eq!(cluster.applied_index(3), last);
}

#[test]
fn an_unanswered_snapshot_is_given_up_after_an_election_timeout_of_heartbeats_not_sooner() {
    let mut cluster = Cluster::new(3, 18);
    elect(&mut cluster, 1);
    cluster.isolate(3);
    for _ in 0..3 {
        cluster.propose(1, "x".into()).unwrap();
        cluster.deliver_all();
    }
    let last = cluster.node(1).status().last_index;
    cluster.compact(1, last).unwrap();
    cluster.heal();
    // Node 3 answers heartbeats until the leader starts the snapshot; then it crashes, so the
    // transfer stalls.
    let mut sent_at = Vec::new();
    let mut cut = false;
    for tick in 0..80u32 {
        cluster.tick(1);
        cluster.process(1);
        // The first send is the snapshot; the restart probes again from after it.
        let sends = cluster
            .pending_messages()
            .iter()
            .filter(|m| {
                m.to == 3
                    && matches!(
                        m.body,
                        MessageBody::InstallSnapshot { .. } | MessageBody::Append { .. }
                    )
            })
            .count();
        if sends > 0 {
            sent_at.push(tick);
            if !cut {
                // Crashed, not cut off: the messages to it stay visible until delivery drops them.
                cluster.crash(3);
                cut = true;
            }
        }
        cluster.deliver_all();
        if sent_at.len() == 2 {
            break;
        }
    }
    assert_eq!(
        sent_at.len(),
        2,
        "the stalled transfer never restarted: {sent_at:?}"
    );
    // Defaults: election 10 ticks, heartbeat 2: the transfer gets 10 / 2 = 5 silent
    // heartbeats before the leader gives up on it.
    let config = crate::raft::Config::new(1);
    let patience = config.election_ticks / config.heartbeat_ticks * config.heartbeat_ticks;
    let gap = sent_at[1] - sent_at[0];
    assert!(
        gap + config.heartbeat_ticks >= patience && gap <= patience + config.heartbeat_ticks,
        "restarted after {gap} ticks, patience {patience}"
    );
}

/// Node 3 misses everything after the no-op, the leader compacts to 11 (no tail), and node 3
/// is restarted: ticks until the leader has put a snapshot for node 3 in flight, and returns
/// that message (taken out of the network, so it is still to be delivered).
fn leader_sending_node_3_a_snapshot(cluster: &mut Cluster) -> Message {
    elect(cluster, 1);
    cluster.deliver_all();
    cluster.crash(3);
    for i in 0..10 {
        cluster.propose(1, format!("v{i}").into()).unwrap();
    }
    cluster.deliver_all();
    assert_eq!(cluster.applied_index(1), 11);
    cluster.compact_keeping(1, 11, 0).unwrap();
    cluster.restart(3);
    assert_eq!(cluster.node(1).lowest_snapshot_in_transfer(), None);
    for _ in 0..50 {
        cluster.tick(1);
        cluster.process_all();
        let messages = cluster.take_messages();
        let mut snapshot = None;
        for message in messages {
            if message.to == 3 && matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                snapshot = Some(message);
            } else {
                cluster.send(message);
            }
        }
        if let Some(snapshot) = snapshot {
            return snapshot;
        }
        cluster.deliver_all();
    }
    panic!("the leader never sent node 3 a snapshot");
}

#[test]
fn a_leader_names_the_lowest_snapshot_it_is_sending() {
    let mut cluster = Cluster::new(3, 21);
    let snapshot = leader_sending_node_3_a_snapshot(&mut cluster);
    assert_eq!(cluster.node(1).lowest_snapshot_in_transfer(), Some(11));
    assert_eq!(
        cluster.node(2).lowest_snapshot_in_transfer(),
        None,
        "a follower sends no snapshots"
    );
    // Installed and acknowledged: no transfer left.
    cluster.send(snapshot);
    cluster.deliver_all();
    assert_eq!(cluster.applied(3), cluster.applied(1));
    assert_eq!(cluster.node(1).lowest_snapshot_in_transfer(), None);
}

#[test]
fn entries_kept_after_a_snapshot_in_transfer_spare_the_follower_a_second_snapshot() {
    // The driver keeps every entry after a snapshot in transfer (`compaction_tail`); without
    // them the follower ends its transfer behind the log and needs another snapshot.
    for keep_after_transfer in [true, false] {
        let mut cluster = Cluster::new(3, 22);
        let snapshot = leader_sending_node_3_a_snapshot(&mut cluster);
        for i in 0..3 {
            cluster.propose(1, format!("w{i}").into()).unwrap();
        }
        cluster.deliver_all();
        let applied = cluster.applied_index(1);
        assert_eq!(applied, 14);
        let sending = cluster.node(1).lowest_snapshot_in_transfer().unwrap();
        let tail = if keep_after_transfer {
            applied - sending
        } else {
            0
        };
        cluster.compact_keeping(1, applied, tail).unwrap();
        cluster.send(snapshot);
        run_ticks(&mut cluster, 20);
        assert_eq!(cluster.applied(3), cluster.applied(1));
        let installed = cluster.node(3).status().snapshot_index;
        if keep_after_transfer {
            assert_eq!(
                installed, 11,
                "node 3 caught up from the log after its snapshot"
            );
        } else {
            assert_eq!(installed, 14, "node 3 needed a second snapshot");
        }
    }
}
