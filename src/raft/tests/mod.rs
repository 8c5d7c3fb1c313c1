//! Scenario tests of the consensus core, written as stories over the [`super::testkit`].

mod accessors;
mod acknowledgements;
mod chaos;
mod election;
mod malformed;
mod membership;
mod properties;
mod read_index;
mod replication;
mod transfer;

use bytes::Bytes;

use super::testkit::Cluster;
use super::{
    Entry, EntryKind, HardState, Membership, NodeId, RemovedMember, RestoreState, Role, Term,
};

/// `membership` after `Remove` changes of `removed` (members without a record), in order.
fn with_removed(mut membership: Membership, removed: &[NodeId]) -> Membership {
    membership.removed = removed
        .iter()
        .map(|&id| RemovedMember { id, incarnation: 0 })
        .collect();
    membership
}

/// The entry a figure shows at `index` with `term` (same position and term: same data).
fn figure_entry(index: u64, term: Term) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("{term}@{index}")),
    }
}

/// A log with the given terms at indexes 1, 2, ...
fn log_of(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(offset, &term)| figure_entry(offset as u64 + 1, term))
        .collect()
}

/// A persisted state: `term`, no vote, `commit`, and a log with the given terms.
fn persisted(term: Term, commit: u64, terms: &[Term]) -> RestoreState {
    RestoreState {
        hard_state: HardState {
            term,
            vote: None,
            commit,
        },
        snapshot: None,
        entries: log_of(terms),
    }
}

/// Campaigns on `id`, delivers everything and checks it won.
fn elect(cluster: &mut Cluster, id: NodeId) {
    cluster.campaign(id);
    cluster.deliver_all();
    assert_eq!(
        cluster.node(id).soft_state().role,
        Role::Leader,
        "node {id} did not win: {:?}",
        cluster.node(id).status()
    );
}

/// Ticks only `ids` (delivering after each round) until one of them leads; returns it.
fn tick_until_leader_among(cluster: &mut Cluster, ids: &[NodeId], rounds_max: u32) -> NodeId {
    for _ in 0..rounds_max {
        for &id in ids {
            cluster.tick(id);
        }
        cluster.deliver_all();
        let leaders: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|&id| cluster.node(id).soft_state().role == Role::Leader)
            .collect();
        if let Some(&leader) = leaders.first() {
            return leader;
        }
    }
    panic!("no leader among {ids:?} within {rounds_max} rounds");
}

/// Ticks every live node `rounds` times, delivering after each round.
fn run_ticks(cluster: &mut Cluster, rounds: u32) {
    for _ in 0..rounds {
        cluster.tick_all();
        cluster.deliver_all();
    }
}
