//! Planted bugs: switches that each break one promise on purpose, so that the simulator can prove
//! the checker guarding that promise bites (`cargo sim sweep --plant NAME --expect-failure`).
//!
//! Production has no plants: outside the simulator (`--cfg madsim`) [`active`] is the constant
//! `false` (the seam's production backend), so every planted branch is dead code the compiler
//! removes, and nothing in [`crate::node::NodeConfig`] or the CLI can switch one on. Inside the
//! simulator the supervisor picks at most one plant per seed through
//! `env::sim_control::set_plant`. The core asks [`active`] at a handful of marked places; in a
//! production build that question is a constant, so the core stays a pure state machine.

use std::fmt;
use std::str::FromStr;

/// A bug planted on purpose, to prove the checks catch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Plant {
    /// No planted bug: the real system.
    #[default]
    None,
    /// Every disk's fsync reports success and makes nothing durable (simulated disk).
    LyingFsync,
    /// Nodes forget their persisted vote on restart (Raft §5.2 needs it durable).
    ForgetVote,
    /// A voter grants its (pre-)vote without checking that the candidate's log is at least as
    /// up to date as its own (Raft §5.4.1).
    VoteWithoutLogCheck,
    /// A leader serves a linearizable read at once, without confirming it still leads
    /// (Raft §6.4 / §8: ReadIndex needs a heartbeat round).
    ReadWithoutConfirm,
    /// A leader that cannot reach a quorum never steps down (no check-quorum) and serves
    /// linearizable reads from its own state, as if it held a lease.
    LeaderNeverStepsDown,
    /// A follower acknowledges appended entries before they are synced (persist before you speak).
    AckBeforeFsync,
    /// The state machine applies a retried write again instead of answering it from the
    /// idempotency table (Raft §8, exactly-once).
    ApplyRetryTwice,
    /// A write pending at an index that an installed snapshot covers is answered "dropped"
    /// (503, not applied) although the snapshot may contain it (issue 8, the issue 6 lie).
    DroppedUnderSnapshot,
    /// The driver panics after applying some entries: proves that a panicking node fails the
    /// seed with the panic message (not a bug class, a test of the harness).
    DriverPanic,
    /// The background snapshot writer skips the file's fsync, so the log is compacted past a
    /// snapshot that is not durable (compact only once the snapshot is durable).
    SnapshotUnsynced,
    /// Nodes accept peer RPCs without checking their MAC against the cluster secret (issue 11:
    /// peer authentication).
    SkipPeerAuth,
    /// Any valid client token may do anything: the role check is skipped (issue 11: roles).
    SkipRoleCheck,
    /// A new leader does not restart the lease countdowns: it treats every lease as due and
    /// expires it at once, though its holder kept it alive (etcd restarts them, and so must we).
    LeaseCountdownNotRestarted,
    /// A watch that continues from index N gets the change at N again (an off-by-one in where
    /// the history is read from), so a watcher sees a change twice.
    WatchResumeRepeats,
    /// The state machine applies a write that grows the store past the quota stamped into it
    /// (issue 11: `--quota-bytes`), so a replica's store passes the quota in force.
    QuotaNotEnforcedOnApply,
    /// Nodes hear a member's peer RPCs under any incarnation (issue 10): a node whose data
    /// directory was replaced would vote and acknowledge as the member it no longer is.
    SkipIncarnationCheck,
    /// A leader accepts a membership change before it committed an entry of its own term: the
    /// single-server change bug (Ongaro, raft-dev 2015) that the current-term check fixes.
    SkipCurrentTermCheck,
    /// Every client of a node shares one rate-limit bucket (issue 11: `--rate-limit-rps`), so
    /// one greedy client gets a polite one refused.
    RateLimitSharedBucket,
    /// A transaction's success branch applies only its first operation: a multi-key put is
    /// torn (not atomic), which later reads of the keys see.
    TxnNotAtomic,
    /// A leader's compaction drops the entries after a snapshot it is still sending (keeps only
    /// the configured tail): a follower whose transfer outlasts the snapshot interval ends it
    /// behind the log every time and needs snapshot after snapshot.
    CompactPastTransfer,
}

impl Plant {
    /// Every plant, `None` first.
    pub const ALL: [Plant; 21] = [
        Plant::None,
        Plant::LyingFsync,
        Plant::ForgetVote,
        Plant::VoteWithoutLogCheck,
        Plant::ReadWithoutConfirm,
        Plant::LeaderNeverStepsDown,
        Plant::AckBeforeFsync,
        Plant::ApplyRetryTwice,
        Plant::DroppedUnderSnapshot,
        Plant::DriverPanic,
        Plant::SnapshotUnsynced,
        Plant::SkipPeerAuth,
        Plant::SkipRoleCheck,
        Plant::LeaseCountdownNotRestarted,
        Plant::WatchResumeRepeats,
        Plant::QuotaNotEnforcedOnApply,
        Plant::SkipIncarnationCheck,
        Plant::SkipCurrentTermCheck,
        Plant::RateLimitSharedBucket,
        Plant::TxnNotAtomic,
        Plant::CompactPastTransfer,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Plant::None => "none",
            Plant::LyingFsync => "lying-fsync",
            Plant::ForgetVote => "forget-vote",
            Plant::VoteWithoutLogCheck => "vote-without-log-check",
            Plant::ReadWithoutConfirm => "read-without-confirm",
            Plant::LeaderNeverStepsDown => "leader-never-steps-down",
            Plant::AckBeforeFsync => "ack-before-fsync",
            Plant::ApplyRetryTwice => "apply-retry-twice",
            Plant::DroppedUnderSnapshot => "dropped-under-snapshot",
            Plant::DriverPanic => "driver-panic",
            Plant::SnapshotUnsynced => "snapshot-unsynced",
            Plant::SkipPeerAuth => "skip-peer-auth",
            Plant::SkipRoleCheck => "skip-role-check",
            Plant::LeaseCountdownNotRestarted => "lease-countdown-not-restarted",
            Plant::WatchResumeRepeats => "watch-resume-repeats",
            Plant::QuotaNotEnforcedOnApply => "quota-not-enforced-on-apply",
            Plant::SkipIncarnationCheck => "skip-incarnation-check",
            Plant::SkipCurrentTermCheck => "skip-current-term-check",
            Plant::RateLimitSharedBucket => "rate-limit-shared-bucket",
            Plant::TxnNotAtomic => "txn-not-atomic",
            Plant::CompactPastTransfer => "compact-past-transfer",
        }
    }
}

impl FromStr for Plant {
    type Err = String;

    fn from_str(text: &str) -> Result<Plant, String> {
        Plant::ALL
            .into_iter()
            .find(|plant| plant.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Plant::ALL.iter().map(|p| p.name()).collect();
                format!("unknown plant {text:?} ({})", names.join(", "))
            })
    }
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `plant` is planted in this run. Always `false` outside the simulator.
#[inline(always)]
pub fn active(plant: Plant) -> bool {
    crate::env::plant_active(plant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plants_parse_from_their_names_and_unknown_names_are_refused() {
        for plant in Plant::ALL {
            assert_eq!(plant.name().parse::<Plant>(), Ok(plant));
        }
        let error = "lying".parse::<Plant>().unwrap_err();
        assert!(error.contains("lying-fsync"), "{error}");
    }

    #[test]
    fn no_plant_is_active_outside_the_simulator() {
        if !crate::env::IS_SIMULATION {
            for plant in Plant::ALL {
                assert!(!active(plant), "{plant} is active in a production build");
            }
        }
    }
}
