//! What a seed exercised, and what a sweep of seeds exercised: which faults actually did
//! something, how often leadership moved, crashes that caught writes unsynced, snapshots, and
//! the client operations. A sweep that silently stops injecting a fault shows a 0 here.

use std::collections::BTreeMap;
use std::fmt;

use crate::linearizability::{KvInput, KvOutput, Operation};

/// Every fault kind a run can inject, in report order. A kind is counted only when its episode
/// did something (a leader to isolate, links to cut, a node to crash).
pub const FAULT_KINDS: [&str; 25] = [
    "partition majority",
    "partition one-way",
    "partition bridge",
    "partition ring",
    "partition swizzle",
    "isolate leader",
    "crash and restart",
    "crash of a voter",
    "pause",
    "loss spike",
    "delay spike",
    "clock jump",
    "clock drift over 1%",
    "disk full",
    "lost unsynced writes",
    "torn writes",
    // Membership operations (issue 10), counted when the cluster took them.
    "learner added",
    "learner promoted",
    "voter removed",
    "leader removed",
    "crashed node replaced",
    "wiped node refused",
    "wiped node replaced",
    "change refused 409",
    "change refused 412",
];

/// The index in [`FAULT_KINDS`] of the first membership operation. A sweep in which no seed
/// took any membership operation ran none by design (only unplanted seeds and the
/// `skip-current-term-check` plant's schedule them, see `Scenario::generate`, so the other
/// plants keep their schedules): those kinds are then not reported missing, but
/// `(not scheduled)`; once one seed took one, every other missing one is.
pub const MEMBERSHIP_KINDS_FIRST: usize = 16;

/// The fault kind of a cut episode of `shape`.
pub fn cut_kind(shape: &str) -> &'static str {
    FAULT_KINDS
        .iter()
        .find(|kind| kind.strip_prefix("partition ") == Some(shape))
        .copied()
        .unwrap_or_else(|| panic!("cut shape {shape:?} has no fault kind in FAULT_KINDS"))
}

/// What one seed exercised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Episodes (or events) of each kind that did something, by [`FAULT_KINDS`] name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Episodes that found nothing to do when they started (no leader to isolate).
    pub episodes_idle: u64,
    /// Times a node became leader.
    pub leaders_elected: u64,
    /// Node kills (crashes, voter crashes, disk-full restarts).
    pub crashes: u64,
    /// Kills that caught written bytes not yet synced (a crash between a write and its fsync).
    pub crashes_unsynced: u64,
    /// Kills that landed while the node was writing a snapshot file.
    pub crashes_in_snapshot: u64,
    /// Snapshots nodes took of their own state machine (durable and recorded).
    pub snapshots_taken: u64,
    /// Snapshots nodes installed from a leader.
    pub snapshots_installed: u64,
    /// Reads in the history.
    pub reads: u64,
    /// Writes (put, delete, compare-and-set) in the history.
    pub writes: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Write attempts answered `507 quota_exceeded` (small-quota seeds).
    pub quota_refused: u64,
    /// Whether the nodes ran with a rate limit (rate-limited seeds).
    pub rate_limit: bool,
    /// Requests answered `429 rate_limited` (the greedy client's and the workload's).
    pub rate_limited: u64,
    /// Transactions answered with their success branch (compare held, both keys put or
    /// deleted).
    pub txns_succeeded: u64,
    /// Of [`Coverage::txns_succeeded`], those whose success branch deleted both keys.
    pub txns_deleted: u64,
    /// Transactions answered with their failure branch (compare failed, both keys read).
    pub txns_failed: u64,
}

impl Coverage {
    /// Counts one `kind` fault that did something.
    pub fn fault(&mut self, kind: &'static str) {
        assert!(
            FAULT_KINDS.contains(&kind),
            "fault kind {kind:?} is not in FAULT_KINDS"
        );
        *self.faults.entry(kind).or_default() += 1;
    }

    /// Counts `count` `kind` faults (no-op for 0).
    pub fn faults_add(&mut self, kind: &'static str, count: u64) {
        if count > 0 {
            self.fault(kind);
            *self.faults.entry(kind).or_default() += count - 1;
        }
    }

    /// Counts a node kill that caught `unsynced_bytes` written but not yet synced.
    pub fn crashed(&mut self, unsynced_bytes: u64) {
        self.crashes += 1;
        if unsynced_bytes > 0 {
            self.crashes_unsynced += 1;
            self.fault("lost unsynced writes");
        }
    }

    /// Fills the operation counts from the history.
    pub fn count_operations(&mut self, history: &[Operation]) {
        for op in history {
            if op.input == KvInput::Get {
                self.reads += 1;
            } else if let KvInput::Txn { value, .. } = &op.input {
                match op.output {
                    Some(KvOutput::Txn {
                        succeeded: true, ..
                    }) => {
                        self.txns_succeeded += 1;
                        self.txns_deleted += u64::from(value.is_none());
                    }
                    Some(KvOutput::Txn { .. }) => self.txns_failed += 1,
                    _ => {}
                }
            } else {
                self.writes += 1;
            }
            if !op.outcome_known() {
                self.unknown += 1;
            }
        }
    }
}

/// The least, middle and largest of some per-seed counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    /// The smallest.
    pub min: u64,
    /// The median (the lower middle of an even count).
    pub median: u64,
    /// The largest.
    pub max: u64,
    /// The sum.
    pub total: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Spread {
        values.sort_unstable();
        match (values.first(), values.last()) {
            (Some(&min), Some(&max)) => Spread {
                min,
                median: values[(values.len() - 1) / 2],
                max,
                total: values.iter().sum(),
            },
            _ => Spread::default(),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} total, per seed {} / {} / {}",
            self.total, self.min, self.median, self.max
        )
    }
}

/// What a sweep exercised, from its seeds' [`Coverage`].
#[derive(Clone, Debug, Default)]
pub struct SweepCoverage {
    seeds: Vec<Coverage>,
}

impl SweepCoverage {
    /// Adds one seed.
    pub fn add(&mut self, seed: Coverage) {
        self.seeds.push(seed);
    }

    /// Seeds in which `kind` did something at least once.
    pub fn seeds_with(&self, kind: &str) -> usize {
        self.seeds
            .iter()
            .filter(|seed| seed.faults.get(kind).is_some_and(|&count| count > 0))
            .count()
    }

    /// Fault kinds that no seed exercised.
    pub fn missing_kinds(&self) -> Vec<&'static str> {
        let membership_ran = self.membership_ran();
        FAULT_KINDS
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, kind)| {
                self.seeds_with(kind) == 0 && (*i < MEMBERSHIP_KINDS_FIRST || membership_ran)
            })
            .map(|(_, kind)| kind)
            .collect()
    }

    /// Whether any seed took a membership operation.
    pub fn membership_ran(&self) -> bool {
        FAULT_KINDS[MEMBERSHIP_KINDS_FIRST..]
            .iter()
            .any(|kind| self.seeds_with(kind) > 0)
    }

    fn spread(&self, of: impl Fn(&Coverage) -> u64) -> Spread {
        Spread::of(self.seeds.iter().map(of).collect())
    }
}

impl fmt::Display for SweepCoverage {
    /// The coverage table printed at the end of a sweep.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seeds = self.seeds.len();
        writeln!(f, "coverage of {seeds} seeds:")?;
        writeln!(
            f,
            "  {:<26} {:>6} {:>9}",
            "fault (that did something)", "seeds", "episodes"
        )?;
        let missing = self.missing_kinds();
        for kind in FAULT_KINDS {
            let episodes: u64 = self
                .seeds
                .iter()
                .filter_map(|seed| seed.faults.get(kind))
                .sum();
            let seeds_with = self.seeds_with(kind);
            writeln!(
                f,
                "  {kind:<26} {seeds_with:>6} {episodes:>9}{}",
                if missing.contains(&kind) {
                    "   MISSING"
                } else if seeds_with == 0 {
                    "   (not scheduled)"
                } else {
                    ""
                }
            )?;
        }
        let idle = self.spread(|c| c.episodes_idle);
        writeln!(
            f,
            "  idle episodes (no leader to isolate): {} in {} seeds",
            idle.total,
            self.seeds.iter().filter(|c| c.episodes_idle > 0).count()
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "leaders elected",
            self.spread(|c| c.leaders_elected)
        )?;
        writeln!(f, "  {:<26} {}", "node kills", self.spread(|c| c.crashes))?;
        writeln!(
            f,
            "  {:<26} {}",
            "kills mid write/fsync",
            self.spread(|c| c.crashes_unsynced)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "kills mid snapshot write",
            self.spread(|c| c.crashes_in_snapshot)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "snapshots taken",
            self.spread(|c| c.snapshots_taken)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "snapshots installed",
            self.spread(|c| c.snapshots_installed)
        )?;
        writeln!(f, "  {:<26} {}", "reads", self.spread(|c| c.reads))?;
        writeln!(f, "  {:<26} {}", "writes", self.spread(|c| c.writes))?;
        writeln!(
            f,
            "  {:<26} {}",
            "txns succeeded",
            self.spread(|c| c.txns_succeeded)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "  of which deleted both",
            self.spread(|c| c.txns_deleted)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "txns failed",
            self.spread(|c| c.txns_failed)
        )?;
        writeln!(
            f,
            "  {:<26} {}",
            "unknown outcomes",
            self.spread(|c| c.unknown)
        )?;
        writeln!(
            f,
            "  {:<26} {} ({} seeds)",
            "writes refused (507)",
            self.spread(|c| c.quota_refused),
            self.seeds.iter().filter(|c| c.quota_refused > 0).count()
        )?;
        writeln!(
            f,
            "  {:<26} {} ({} seeds, {} with a rate limit)",
            "requests refused (429)",
            self.spread(|c| c.rate_limited),
            self.seeds.iter().filter(|c| c.rate_limited > 0).count(),
            self.seeds.iter().filter(|c| c.rate_limit).count()
        )?;
        if !self.membership_ran() {
            writeln!(
                f,
                "  membership operations: none in this sweep (only the skip-current-term-check \
                 plant's sweep schedules them)"
            )?;
        }
        if missing.is_empty() {
            writeln!(f, "  every fault kind occurred")
        } else {
            writeln!(
                f,
                "  fault kinds that never occurred: {}",
                missing.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_names_the_fault_kinds_no_seed_exercised() {
        let mut sweep = SweepCoverage::default();
        let mut first = Coverage::default();
        first.fault("pause");
        first.fault("pause");
        let mut second = Coverage::default();
        second.fault(cut_kind("ring"));
        second.fault("pause");
        sweep.add(first);
        sweep.add(second);
        assert_eq!(sweep.seeds_with("pause"), 2);
        assert_eq!(sweep.seeds_with("partition ring"), 1);
        let missing = sweep.missing_kinds();
        // No membership operation at all: those kinds are not scheduled, not missing.
        assert_eq!(FAULT_KINDS[MEMBERSHIP_KINDS_FIRST], "learner added");
        assert_eq!(missing.len(), MEMBERSHIP_KINDS_FIRST - 2, "{missing:?}");
        let mut third = Coverage::default();
        third.fault("learner added");
        let mut with_membership = sweep.clone();
        with_membership.add(third);
        let missing = with_membership.missing_kinds();
        assert_eq!(missing.len(), FAULT_KINDS.len() - 3, "{missing:?}");
        let mut all_but_membership = SweepCoverage::default();
        let mut seed = Coverage::default();
        for kind in &FAULT_KINDS[..MEMBERSHIP_KINDS_FIRST] {
            seed.fault(kind);
        }
        all_but_membership.add(seed);
        let table = all_but_membership.to_string();
        assert!(!table.contains("MISSING"), "{table}");
        assert!(table.contains("every fault kind occurred"), "{table}");
        assert!(table.contains("(not scheduled)"), "{table}");
        assert!(missing.contains(&"leader removed"));
        assert!(missing.contains(&"disk full"));
        let table = sweep.to_string();
        assert!(table.contains("pause"), "{table}");
        assert!(table.contains("disk full"), "{table}");
        assert!(table.contains("MISSING"), "{table}");
        assert!(
            table.contains("fault kinds that never occurred: partition majority"),
            "{table}"
        );
    }

    #[test]
    fn a_sweep_with_every_kind_says_so() {
        let mut sweep = SweepCoverage::default();
        let mut seed = Coverage::default();
        for kind in FAULT_KINDS {
            seed.fault(kind);
        }
        sweep.add(seed);
        assert!(sweep.missing_kinds().is_empty());
        let table = sweep.to_string();
        assert!(table.contains("every fault kind occurred"), "{table}");
        assert!(!table.contains("MISSING"), "{table}");
    }

    #[test]
    #[should_panic(expected = "not in FAULT_KINDS")]
    fn an_unknown_fault_kind_is_refused() {
        Coverage::default().fault("meteor");
    }

    #[test]
    fn operations_are_counted_by_kind_and_outcome() {
        let op = |input: KvInput, output: Option<KvOutput>| Operation {
            client: 0,
            key: "k".into(),
            input,
            call: 1,
            ret: output.as_ref().map(|_| 2),
            output,
        };
        let history = vec![
            op(
                KvInput::Get,
                Some(KvOutput::Get {
                    value: None,
                    mod_index: 0,
                }),
            ),
            op(
                KvInput::Put {
                    value: b"v".to_vec(),
                },
                None,
            ),
            op(KvInput::Delete, Some(KvOutput::Delete { existed: true })),
        ];
        let txn = KvInput::Txn {
            if_value: None,
            value: Some(b"x".to_vec()),
        };
        let delete_both = KvInput::Txn {
            if_value: Some(b"x".to_vec()),
            value: None,
        };
        let answer = |succeeded: bool| KvOutput::Txn {
            index: 3,
            succeeded,
            reads: Vec::new(),
        };
        let mut history = history;
        history.push(op(txn.clone(), Some(answer(true))));
        history.push(op(txn.clone(), Some(answer(false))));
        history.push(op(txn.clone(), Some(answer(false))));
        history.push(op(txn, None));
        history.push(op(delete_both, Some(answer(true))));
        let mut coverage = Coverage::default();
        coverage.count_operations(&history);
        assert_eq!(
            (coverage.reads, coverage.writes, coverage.unknown),
            (1, 2, 2)
        );
        assert_eq!(
            (
                coverage.txns_succeeded,
                coverage.txns_deleted,
                coverage.txns_failed
            ),
            (2, 1, 2)
        );
    }

    #[test]
    fn spreads_give_min_median_max_and_total() {
        assert_eq!(
            Spread::of(vec![5, 1, 9, 3]),
            Spread {
                min: 1,
                median: 3,
                max: 9,
                total: 18
            }
        );
        assert_eq!(Spread::of(Vec::new()), Spread::default());
    }
}
