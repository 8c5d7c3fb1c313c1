//! A randomized safety sweep: reordered, duplicated and lost messages, partitions, crashes,
//! restarts and compactions, checking Election Safety and State Machine Safety (Raft Figure 3)
//! after every step, then liveness once the faults stop.

use std::collections::BTreeMap;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::raft::testkit::Cluster;
use crate::raft::{Entry, Index, NodeId, Role, Term};

/// What the checkers remember across steps.
#[derive(Default)]
struct Observed {
    /// Raft §5.2 Election Safety: the one leader of each term.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Raft §5.4.3 State Machine Safety: the entry applied at each index, by whoever first did.
    applied_at: BTreeMap<Index, Entry>,
}

impl Observed {
    fn check(&mut self, cluster: &Cluster, seed: u64, step: usize) {
        for id in cluster.live_ids() {
            let soft = cluster.node(id).soft_state();
            if soft.role == Role::Leader {
                let first = *self.leader_of_term.entry(soft.term).or_insert(id);
                assert_eq!(
                    first, id,
                    "seed {seed} step {step}: two leaders in term {}",
                    soft.term
                );
            }
            for entry in cluster.applied(id) {
                let first = self
                    .applied_at
                    .entry(entry.index)
                    .or_insert_with(|| entry.clone());
                assert_eq!(
                    first, entry,
                    "seed {seed} step {step}: node {id} applied a different entry at {}",
                    entry.index
                );
            }
        }
    }
}

/// Shuffles, drops and duplicates the messages in flight.
fn disturb_network(cluster: &mut Cluster, rng: &mut ChaCha8Rng) {
    let mut messages = cluster.take_messages();
    for i in (1..messages.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        messages.swap(i, j);
    }
    for message in messages {
        match rng.next_u64() % 20 {
            0 => {}
            1 => {
                cluster.send(message.clone());
                cluster.send(message);
            }
            _ => cluster.send(message),
        }
    }
}

fn run_seed(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = 3 + rng.next_u64() % 3;
    let pre_vote = rng.next_u64() % 2 == 0;
    let check_quorum = rng.next_u64() % 2 == 0;
    let mut cluster = Cluster::with_config(n, seed, |config| {
        config.max_entries_per_append = 4;
        config.max_inflight_appends = 3;
        config.pre_vote = pre_vote;
        config.check_quorum = check_quorum;
    });
    let mut observed = Observed::default();
    let mut crashed: Vec<NodeId> = Vec::new();
    for step in 0..400 {
        let roll = rng.next_u64() % 100;
        match roll {
            0..=39 => cluster.tick_all(),
            40..=59 => {
                if let Some(leader) = cluster.leader() {
                    let _ = cluster.propose(leader, format!("s{seed}-{step}").into());
                }
            }
            60..=62 => {
                if let Some(leader) = cluster.leader() {
                    let _ = cluster.read_index(leader, step as u64);
                }
            }
            63..=65 => {
                let cut = 1 + rng.next_u64() % n;
                cluster.isolate(cut);
            }
            66..=69 => cluster.heal(),
            70..=71 => {
                if crashed.len() < (n as usize - 1) / 2 {
                    let victim = 1 + rng.next_u64() % n;
                    if !crashed.contains(&victim) {
                        cluster.crash(victim);
                        crashed.push(victim);
                    }
                }
            }
            72..=74 => {
                if let Some(id) = crashed.pop() {
                    cluster.restart(id);
                }
            }
            75..=76 => {
                let id = 1 + rng.next_u64() % n;
                if !crashed.contains(&id) {
                    let applied = cluster.node(id).status().applied_index;
                    let _ = cluster.compact(id, applied);
                }
            }
            _ => {
                cluster.process_all();
                disturb_network(&mut cluster, &mut rng);
                let budget = rng.next_u64() % 40;
                for _ in 0..budget {
                    if cluster.deliver_one().is_none() {
                        break;
                    }
                    cluster.process_all();
                }
            }
        }
        cluster.process_all();
        observed.check(&cluster, seed, step);
    }
    // Liveness: without faults the cluster elects a leader and commits on every node.
    cluster.heal();
    for id in crashed {
        cluster.restart(id);
    }
    let leader = cluster
        .run_until_leader(200)
        .unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
    let index = cluster
        .propose(leader, "final".into())
        .unwrap_or_else(|e| panic!("seed {seed}: final proposal refused: {e}"));
    for _ in 0..60 {
        cluster.tick_all();
        cluster.deliver_all();
    }
    observed.check(&cluster, seed, usize::MAX);
    for id in 1..=n {
        assert!(
            cluster.applied_index(id) >= index,
            "seed {seed}: node {id} applied {} < {index}",
            cluster.applied_index(id)
        );
    }
}

#[test]
fn random_faults_never_break_election_or_state_machine_safety() {
    for seed in 0..40 {
        run_seed(seed);
    }
}
