//! What one seed's run leaves behind: the client history, the broken properties, and a trace of
//! every event (faults, node events, completed operations) whose hash proves determinism.
//!
//! The recorder lives outside the simulation runtime (behind an `Arc`), so a seed whose run
//! panics still leaves its history and trace for the report.

use raft_kv::fnv::Fnv1a64;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::coverage::Coverage;
use crate::linearizability::{KvOutput, Operation};

/// How many trace lines the report shows (the tail of the event stream).
pub const TRACE_TAIL_LINES: usize = 60;

/// Broken properties kept per run (the first ones tell the story; the rest are counted).
pub const FAILURES_KEPT_MAX: usize = 3;

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The property (`linearizability`, `election safety`, `liveness: ...`).
    pub property: String,
    /// What went wrong, with values.
    pub detail: String,
    /// Indices into the history that show it (highlighted in the timeline).
    pub ops: Vec<usize>,
}

/// The run's record.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Completed operations (and, at the end, operations whose outcome stayed unknown).
    pub history: Vec<Operation>,
    /// Operations in flight, by slot.
    pending: BTreeMap<u64, Operation>,
    /// Operations begun so far (the next slot).
    next_slot: u64,
    /// Broken properties, in the order found (at most [`FAILURES_KEPT_MAX`]).
    pub failures: Vec<Failure>,
    /// Broken properties found after those kept.
    pub failures_more: u64,
    /// FNV-1a over every trace line.
    trace_hash: Fnv1a64,
    /// Trace lines recorded.
    pub trace_lines: u64,
    /// The last [`TRACE_TAIL_LINES`] trace lines.
    pub trace_tail: VecDeque<String>,
    /// Whether to print every trace line as it happens (replay).
    pub echo: bool,
    /// Operations that ended with a definite answer.
    pub ops_definite: u64,
    /// Operations whose outcome stayed unknown.
    pub ops_unknown: u64,
    /// Operations refused on every attempt (not in the history).
    pub ops_not_applied: u64,
    /// Virtual milliseconds the run lasted.
    pub virtual_ms: u64,
    /// Whether the linearizability search ran out of budget.
    pub inconclusive: bool,
    /// What the run exercised (faults that did something, elections, snapshots).
    pub coverage: Coverage,
    /// Raft ids of the nodes writing a snapshot file right now.
    pub snapshots_writing: std::collections::BTreeSet<u64>,
    /// The committed key changes the nodes applied (the watch checker's truth).
    pub watch_truth: crate::watch_check::Truth,
    /// What every watcher saw.
    pub watchers: Vec<crate::watch_check::WatcherLog>,
    /// What the rate-limit clients saw (rate-limited seeds).
    pub rate: crate::rate_check::RateLog,
}

impl Recorder {
    /// FNV-1a of the whole trace: two runs of one seed must agree.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash.finish()
    }
}

/// The recorder shared by the supervisor, the monitor and the clients.
#[derive(Clone, Debug)]
pub struct Shared(Arc<Mutex<Recorder>>);

impl Default for Shared {
    fn default() -> Self {
        Shared::new(false)
    }
}

impl Shared {
    /// A fresh recorder; `echo` prints trace lines as they come.
    pub fn new(echo: bool) -> Shared {
        Shared(Arc::new(Mutex::new(Recorder {
            trace_hash: Fnv1a64::new(),
            echo,
            ..Recorder::default()
        })))
    }

    /// The recorder (even if a panicking thread poisoned the lock: the record is still useful).
    pub fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `line` (already stamped with its virtual time) to the trace.
    pub fn trace(&self, line: String) {
        let mut rec = self.lock();
        rec.trace_hash.update(line.as_bytes());
        rec.trace_hash.update(b"\n");
        rec.trace_lines += 1;
        if rec.echo {
            eprintln!("[trace] {line}");
        }
        rec.trace_tail.push_back(line);
        if rec.trace_tail.len() > TRACE_TAIL_LINES {
            rec.trace_tail.pop_front();
        }
    }

    /// Records a broken property.
    pub fn fail(&self, property: impl Into<String>, detail: impl Into<String>, ops: Vec<usize>) {
        let failure = Failure {
            property: property.into(),
            detail: detail.into(),
            ops,
        };
        self.trace(format!("FAILURE {}: {}", failure.property, failure.detail));
        self.lock().failures.push(failure);
    }

    /// Whether any property broke.
    pub fn failed(&self) -> bool {
        !self.lock().failures.is_empty()
    }

    /// Registers an operation in flight; returns its slot.
    pub fn begin_op(&self, op: Operation) -> u64 {
        let mut rec = self.lock();
        let slot = rec.next_slot;
        rec.next_slot += 1;
        rec.pending.insert(slot, op);
        slot
    }

    /// Ends the operation in `slot`: answered at `ret` with `output`, or (None) unknown.
    pub fn end_op(&self, slot: u64, answer: Option<(u64, KvOutput)>) {
        let op = {
            let mut rec = self.lock();
            let mut op = rec
                .pending
                .remove(&slot)
                .unwrap_or_else(|| panic!("no operation in flight in slot {slot}"));
            match answer {
                Some((ret, output)) => {
                    op.ret = Some(ret);
                    op.output = Some(output);
                    rec.ops_definite += 1;
                }
                None => rec.ops_unknown += 1,
            }
            rec.history.push(op.clone());
            op
        };
        self.trace(format!("op {op}"));
    }

    /// Ends the operation in `slot` as never applied (or a failed read): not in the history.
    pub fn drop_op(&self, slot: u64) {
        let mut rec = self.lock();
        rec.pending.remove(&slot);
        rec.ops_not_applied += 1;
    }

    /// How many operations were begun so far.
    pub fn ops_begun(&self) -> u64 {
        self.lock().next_slot
    }

    /// Operations still in flight.
    pub fn pending_ops(&self) -> Vec<Operation> {
        self.lock().pending.values().cloned().collect()
    }

    /// Moves every operation still in flight into the history with an unknown outcome (a run
    /// cut short must still account for writes that may have taken effect).
    pub fn close_pending_as_unknown(&self) {
        let mut rec = self.lock();
        let pending = std::mem::take(&mut rec.pending);
        for (_, op) in pending {
            rec.ops_unknown += 1;
            rec.history.push(op);
        }
    }
}
