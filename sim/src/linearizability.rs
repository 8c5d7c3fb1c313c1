//! A linearizability checker for histories of our key-value store.
//!
//! The search is the Wing–Gong algorithm with Lowe's memoization: walk the history's call and
//! return events in time order, try to let each pending operation take effect, backtrack when a
//! return is reached before its operation could take effect, and never explore the same
//! (set of operations taken effect, model state) twice. A key-value history is linearizable if
//! and only if the sub-history of each key is (linearizability is local), so every key is
//! searched on its own.
//!
//! # The model of one key
//!
//! The store starts empty. Every write that changes a key is one Raft log entry and the store
//! stamps the key with that entry's index, its *modification index*. The model state of a key
//! is its value (or absent), what is known about its modification index, and how many writes
//! happened since the last one whose index is known.
//!
//! Rules, for an operation taking effect on state `S`:
//!
//! 1. **Absent keys read as modification index 0.** A `Get` of an absent key must answer
//!    `value: None, mod_index: 0`; a `Cas` expecting index 0 matches exactly an absent key.
//! 2. **Every write that changes the key takes its own, larger log index.** A successful `Put`,
//!    a successful `Cas` and a `Delete` of a present key are writes. Their indices strictly
//!    increase in linearization order, and each write whose index we never learn (a `Delete`,
//!    whose answer carries no index, or a write with an unknown outcome) still uses up one
//!    index. So after a write with known index `k` followed by `u` writes of unknown index, the
//!    next write's index must be at least `k + u + 1`. A `Delete` of an absent key and a
//!    mismatched `Cas` change nothing and are not writes.
//! 3. **An unknown modification index is a wildcard that the next observation pins.** After a
//!    write of unknown index, the key's index is only known to be at least `k + u`. A `Get`
//!    answering index `m >= k + u` (and the right value) pins it to `m`; so does a `Cas` that
//!    succeeds expecting `m`. A `Cas` that reports a mismatch against a wildcard is accepted
//!    without narrowing the wildcard (the model does not remember "not `m`"): a deliberate
//!    leniency, it can only hide a violation, never invent one.
//! 4. **`Get`** must return the current value and the current index (rule 1 and rule 3).
//!    **`Put`** sets the value at its returned index (rule 2). **`Delete`** must report
//!    `existed` exactly when the key is present. **`Cas`** succeeds exactly when the expected
//!    index equals the current one (then writes at its returned index, rule 2) and reports a
//!    mismatch exactly when it does not.
//! 5. **Unknown outcomes.** An operation whose `ret` or `output` is `None` (the client timed out)
//!    may take effect at any moment after its call, or never: its return time is +infinity
//!    and the search may leave it out. When it takes effect it does whatever the model allows:
//!    a `Put` writes with an unknown index; a `Delete` removes a present key; a `Cas` writes
//!    with an unknown index if the expected index can match. Taking effect without changing
//!    anything (deleting an absent key, a mismatched `Cas`) is the same as never taking
//!    effect, so the search only tries the changing outcome. A `Get` with an unknown outcome
//!    observes nothing and is dropped before the search.
//! 6. **Real-time order.** Operation `a` precedes `b` only if `a` returned strictly before `b`
//!    was called (`a.ret < b.call`); operations touching at one instant count as concurrent.
//!    The `client` field is for reports only: ordering comes from the times alone.
//! 7. **Malformed histories** (an output that does not answer its input, a return before the
//!    call, an output without a return time) are reported as violations whose explanation
//!    starts with "malformed history".
//!
//! # Cost
//!
//! The search is bounded by a [`Budget`] of model steps, never by a clock, so a run is exactly
//! reproducible; when the budget runs out the answer is [`CheckResult::Unknown`]. At each point
//! the search tries operations with a known outcome before timed-out ones, so a crowd of
//! timed-out writes that nobody observed costs little when the history is linearizable. Proving
//! a violation, though, means ruling out every subset of the timed-out operations that could
//! have taken effect, which can exhaust the budget when many of them overlap the violation.
//! Three prunings cut that down without changing a verdict: dominance in the memo
//! (`Memo`), interchangeable timed-out ops taken only in call order (`Classes`), and the
//! order that the log indices impose on the known ops (`IndexOrder`); and two smaller
//! searches without some timed-out ops run first (`optional_tiers`).
//!
//! The tests compare the search with an independent brute-force oracle that assigns concrete
//! log indices, on thousands of small random histories.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;

mod txn;

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the key.
    Get,
    /// Set the key to `value`.
    Put {
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove the key.
    Delete,
    /// Set the key to `value` if its modification index is `expected_mod_index` (0: absent).
    Cas {
        /// The modification index the key must have for the write to happen.
        expected_mod_index: u64,
        /// The new value.
        value: Vec<u8>,
    },
    /// A transaction on the group [`TXN_GROUP`] (keys [`TXN_KEYS`]), checked as one partition
    /// (see the `txn` module): if `t0` holds `if_value` (`None`: if `t0` is absent), put `value` into both
    /// keys (`None`: delete both); otherwise get both keys.
    Txn {
        /// The value `t0` must hold for the success branch; `None`: `t0` must be absent.
        if_value: Option<Vec<u8>>,
        /// The value the success branch puts into both keys; `None`: it deletes both.
        value: Option<Vec<u8>>,
    },
}

/// The key group the transactions touch, one partition of the check (no other operation
/// touches its keys).
pub const TXN_GROUP: &str = "t0+t1";
/// The keys of [`TXN_GROUP`].
pub const TXN_KEYS: [&str; 2] = ["t0", "t1"];

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The answer to a [`KvInput::Get`].
    Get {
        /// The value, `None` when the key is absent.
        value: Option<Vec<u8>>,
        /// The key's modification index, 0 when absent.
        mod_index: u64,
    },
    /// The answer to a [`KvInput::Put`].
    Put {
        /// The log index of the write.
        mod_index: u64,
    },
    /// The answer to a [`KvInput::Delete`].
    Delete {
        /// Whether the key was present.
        existed: bool,
    },
    /// A [`KvInput::Cas`] that wrote.
    CasOk {
        /// The log index of the write.
        mod_index: u64,
    },
    /// A [`KvInput::Cas`] whose expected index did not match; nothing was written.
    CasMismatch,
    /// The answer to a [`KvInput::Txn`].
    Txn {
        /// The log index of the entry that applied the transaction (for a retry answered from
        /// the idempotency table, the entry of its first application).
        index: u64,
        /// Whether the compare held (the puts ran) or not (the gets ran).
        succeeded: bool,
        /// The failure branch's gets of [`TXN_KEYS`], in order (`None`: absent); empty when
        /// the success branch ran.
        reads: Vec<Option<Vec<u8>>>,
    },
}

/// One client operation as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation (for reports only).
    pub client: u64,
    /// The key the operation touches.
    pub key: String,
    /// What was asked.
    pub input: KvInput,
    /// When the request was sent, in virtual nanoseconds.
    pub call: u64,
    /// When the answer arrived, in virtual nanoseconds; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// The answer; `None` when the outcome is unknown (timed out).
    pub output: Option<KvOutput>,
}

impl Operation {
    /// Whether the client knows how the operation ended.
    pub fn outcome_known(&self) -> bool {
        self.ret.is_some() && self.output.is_some()
    }
}

/// How much work a check may do. Counted in model steps (one attempt to let one operation take
/// effect), never in time, so a check is reproducible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most model steps the whole check (all keys together) may take.
    pub steps_max: u64,
}

impl Budget {
    /// A budget of `steps_max` model steps.
    pub const fn steps(steps_max: u64) -> Self {
        Budget { steps_max }
    }
}

impl Default for Budget {
    /// Ten million steps: seconds of work at most, plenty for simulator histories.
    fn default() -> Self {
        Budget::steps(10_000_000)
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable.
    Ok,
    /// The history is not linearizable (or malformed).
    Violation(Violation),
    /// The budget ran out before a verdict.
    Unknown,
}

/// A witness that a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history cannot be linearized.
    pub key: String,
    /// Indices into the checked history: the deepest partial linearization the search reached,
    /// in linearization order, then the operation that returned before it could take effect
    /// after them (always last).
    pub ops: Vec<usize>,
    /// What went wrong, in words, with values.
    pub explanation: String,
}

/// Checks that `history` is linearizable with respect to the key-value model described in the
/// module documentation, within `budget`.
///
/// Keys are checked in ascending order; the first violation found is returned. If no key has a
/// violation but some key ran out of budget, the answer is [`CheckResult::Unknown`].
pub fn check(history: &[Operation], budget: Budget) -> CheckResult {
    check_counting_steps(history, budget).0
}

/// [`check`], and how many model steps of the budget it used.
pub fn check_counting_steps(history: &[Operation], budget: Budget) -> (CheckResult, u64) {
    check_with(history, budget, Pruning::ALL)
}

/// Which prunings the search uses (all of them, except in the tests that compare).
#[derive(Clone, Copy, Debug)]
struct Pruning {
    /// Skip search nodes an explored node dominates ([`Memo`]); off: Lowe's plain memo.
    dominance: bool,
    /// Try the smaller searches of [`optional_tiers`] first.
    tiers: bool,
    /// Treat interchangeable timed-out writes as one class and take its members only in call
    /// order ([`Classes`]), with every value no read returned merged into [`UNSEEN`].
    symmetry: bool,
    /// Take known-outcome ops only in the order their log indices impose ([`IndexOrder`]).
    index_order: bool,
}

impl Pruning {
    const ALL: Pruning = Pruning {
        dominance: true,
        tiers: true,
        symmetry: true,
        index_order: true,
    };
    #[cfg(test)]
    const NONE: Pruning = Pruning {
        dominance: false,
        tiers: false,
        symmetry: false,
        index_order: false,
    };
}

/// [`check_counting_steps`] with the given prunings.
fn check_with(history: &[Operation], budget: Budget, pruning: Pruning) -> (CheckResult, u64) {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        by_key.entry(&operation.key).or_default().push(index);
    }
    let mut steps_left = budget.steps_max;
    let mut unknown = false;
    for (key, indices) in by_key {
        let verdict = if key == TXN_GROUP {
            txn::check_group(history, &indices, &mut steps_left)
        } else {
            check_key(key, history, &indices, &mut steps_left, pruning)
        };
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::OutOfBudget => unknown = true,
            KeyVerdict::Violation(violation) => {
                return (
                    CheckResult::Violation(violation),
                    budget.steps_max - steps_left,
                )
            }
        }
    }
    let verdict = if unknown {
        CheckResult::Unknown
    } else {
        CheckResult::Ok
    };
    (verdict, budget.steps_max - steps_left)
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Get => write!(f, "get"),
            KvInput::Put { value } => write!(f, "put {}", ShowBytes(value)),
            KvInput::Delete => write!(f, "delete"),
            KvInput::Cas {
                expected_mod_index,
                value,
            } => write!(f, "cas {} if mod {}", ShowBytes(value), expected_mod_index),
            KvInput::Txn { if_value, value } => {
                match if_value {
                    Some(if_value) => write!(f, "txn if t0 = {}", ShowBytes(if_value))?,
                    None => write!(f, "txn if t0 absent")?,
                }
                match value {
                    Some(value) => write!(f, " put {} into both", ShowBytes(value))?,
                    None => write!(f, " delete both")?,
                }
                write!(f, " else get both")
            }
        }
    }
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Get {
                value: Some(value),
                mod_index,
            } => write!(f, "{} at mod {}", ShowBytes(value), mod_index),
            KvOutput::Get {
                value: None,
                mod_index,
            } => write!(f, "absent at mod {mod_index}"),
            KvOutput::Put { mod_index } => write!(f, "ok at mod {mod_index}"),
            KvOutput::Delete { existed: true } => write!(f, "existed"),
            KvOutput::Delete { existed: false } => write!(f, "did not exist"),
            KvOutput::CasOk { mod_index } => write!(f, "ok at mod {mod_index}"),
            KvOutput::CasMismatch => write!(f, "mismatch"),
            KvOutput::Txn {
                index,
                succeeded: true,
                ..
            } => write!(f, "succeeded at index {index}"),
            KvOutput::Txn {
                index,
                succeeded: false,
                reads,
            } => {
                write!(f, "failed at index {index}, read")?;
                for read in reads {
                    match read {
                        Some(value) => write!(f, " {}", ShowBytes(value))?,
                        None => write!(f, " absent")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Operation {
    /// `client 3: "k" put "x" -> ok at mod 7 [call 100, ret 250]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {}: {:?} {} -> ",
            self.client, self.key, self.input
        )?;
        match &self.output {
            Some(output) => write!(f, "{output}")?,
            None => write!(f, "unknown outcome")?,
        }
        match self.ret {
            Some(ret) => write!(f, " [call {}, ret {}]", self.call, ret),
            None => write!(f, " [call {}, ret never]", self.call),
        }
    }
}

/// Shows bytes as a quoted, escaped string, cut after [`SHOW_BYTES_MAX`] bytes.
pub(crate) struct ShowBytes<'a>(pub(crate) &'a [u8]);

/// The most bytes of a value shown in reports.
const SHOW_BYTES_MAX: usize = 48;

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(SHOW_BYTES_MAX)];
        write!(f, "{:?}", String::from_utf8_lossy(shown))?;
        if self.0.len() > SHOW_BYTES_MAX {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// A value interned per key, so model states are small and cheap to hash.
type ValueId = u32;

/// An operation's input with its value interned.
#[derive(Clone, Copy, Debug)]
enum Input {
    Get,
    Put(ValueId),
    Delete,
    Cas { expected: u64, value: ValueId },
}

/// An operation's output with its value interned.
#[derive(Clone, Copy, Debug)]
enum Output {
    Get {
        value: Option<ValueId>,
        mod_index: u64,
    },
    Put {
        mod_index: u64,
    },
    Delete {
        existed: bool,
    },
    CasOk {
        mod_index: u64,
    },
    CasMismatch,
}

/// One operation of a key's sub-history, ready for the search.
#[derive(Clone, Copy, Debug)]
struct Op {
    /// Index into the full history.
    history_index: usize,
    input: Input,
    /// `None`: unknown outcome.
    output: Option<Output>,
}

/// The model state of one key (see the module documentation).
///
/// Invariant: when `value` is `None` and `unknown_writes` is 0, `last_known_index` is 0 (the key
/// was never written) or the last write had a known index and since then nothing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    /// The current value, `None` when absent.
    value: Option<ValueId>,
    /// The highest write index known (0 before any known write).
    last_known_index: u64,
    /// Writes since the one at `last_known_index` whose indices are unknown.
    unknown_writes: u64,
}

/// What an observer can be told the current modification index is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModIndex {
    /// Exactly this index (0 for an absent key).
    Exact(u64),
    /// A wildcard: an unknown index at least this large.
    AtLeast(u64),
}

impl ModIndex {
    fn admits(self, index: u64) -> bool {
        match self {
            ModIndex::Exact(exact) => index == exact,
            ModIndex::AtLeast(min) => index >= min,
        }
    }
}

impl fmt::Display for ModIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModIndex::Exact(exact) => write!(f, "{exact}"),
            ModIndex::AtLeast(min) => write!(f, "unknown (>= {min})"),
        }
    }
}

impl State {
    const EMPTY: State = State {
        value: None,
        last_known_index: 0,
        unknown_writes: 0,
    };

    /// The current modification index as a reader would see it (rules 1 and 3).
    fn mod_index(&self) -> ModIndex {
        match self.value {
            None => ModIndex::Exact(0),
            Some(_) if self.unknown_writes == 0 => ModIndex::Exact(self.last_known_index),
            Some(_) => ModIndex::AtLeast(self.last_known_index + self.unknown_writes),
        }
    }

    /// The smallest index the next write may have (rule 2).
    fn next_write_index_min(&self) -> u64 {
        self.last_known_index + self.unknown_writes + 1
    }

    /// This state with the wildcard index (if any) pinned to `index`, which the caller checked
    /// is admitted by [`State::mod_index`].
    fn pinned(self, index: u64) -> State {
        match self.mod_index() {
            ModIndex::Exact(_) => self,
            ModIndex::AtLeast(min) => {
                assert!(
                    index >= min,
                    "pinning mod index {index} below its minimum {min}"
                );
                State {
                    value: self.value,
                    last_known_index: index,
                    unknown_writes: 0,
                }
            }
        }
    }

    /// This state after a write of `value` at the known index `index`.
    fn written_at(self, value: ValueId, index: u64) -> State {
        assert!(
            index >= self.next_write_index_min(),
            "write index {index} below the minimum {}",
            self.next_write_index_min()
        );
        State {
            value: Some(value),
            last_known_index: index,
            unknown_writes: 0,
        }
    }

    /// This state after a write at an index we will never learn (`None`: a delete).
    fn written_unknown(self, value: Option<ValueId>) -> State {
        State {
            value,
            last_known_index: self.last_known_index,
            unknown_writes: self.unknown_writes + 1,
        }
    }
}

/// Why an operation cannot take effect in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    /// A get returned another value than the current one.
    ReadValue,
    /// A get returned another modification index than the current one.
    ReadModIndex,
    /// A write's index is not above the previous write's (rule 2).
    WriteIndexTooLow { index_min: u64 },
    /// A delete said the key existed but it is absent, or the reverse.
    DeleteExisted,
    /// A CAS succeeded but the current index is not the expected one.
    CasShouldHaveMismatched,
    /// A CAS reported a mismatch but the current index is exactly the expected one.
    CasShouldHaveMatched,
    /// An unknown-outcome operation would change nothing here (same as never taking effect).
    NoEffect,
}

/// Lets `op` take effect on `state` (the rules of the module documentation).
fn step(state: State, op: &Op) -> Result<State, Reject> {
    let current = state.mod_index();
    match (op.input, op.output) {
        (Input::Get, Some(Output::Get { value, mod_index })) => {
            if value != state.value {
                Err(Reject::ReadValue)
            } else if !current.admits(mod_index) {
                Err(Reject::ReadModIndex)
            } else {
                Ok(state.pinned(mod_index))
            }
        }
        (Input::Get, None) => Err(Reject::NoEffect),
        (Input::Put(value), Some(Output::Put { mod_index })) => {
            let index_min = state.next_write_index_min();
            if mod_index < index_min {
                Err(Reject::WriteIndexTooLow { index_min })
            } else {
                Ok(state.written_at(value, mod_index))
            }
        }
        (Input::Put(value), None) => Ok(state.written_unknown(Some(value))),
        (Input::Delete, Some(Output::Delete { existed })) => {
            match (existed, state.value.is_some()) {
                (true, true) => Ok(state.written_unknown(None)),
                (false, false) => Ok(state),
                _ => Err(Reject::DeleteExisted),
            }
        }
        (Input::Delete, None) => {
            if state.value.is_some() {
                Ok(state.written_unknown(None))
            } else {
                Err(Reject::NoEffect)
            }
        }
        (Input::Cas { expected, value }, Some(Output::CasOk { mod_index })) => {
            if !current.admits(expected) {
                return Err(Reject::CasShouldHaveMismatched);
            }
            let matched = state.pinned(expected);
            let index_min = matched.next_write_index_min();
            if mod_index < index_min {
                Err(Reject::WriteIndexTooLow { index_min })
            } else {
                Ok(matched.written_at(value, mod_index))
            }
        }
        (Input::Cas { expected, .. }, Some(Output::CasMismatch)) => {
            if current == ModIndex::Exact(expected) {
                Err(Reject::CasShouldHaveMatched)
            } else {
                Ok(state)
            }
        }
        (Input::Cas { expected, value }, None) => {
            if current.admits(expected) {
                Ok(state.pinned(expected).written_unknown(Some(value)))
            } else {
                Err(Reject::NoEffect)
            }
        }
        (input, Some(output)) => unreachable!(
            "output {output:?} does not answer input {input:?}: compile() rejects such ops"
        ),
    }
}

/// The verdict on one key.
enum KeyVerdict {
    Linearizable,
    Violation(Violation),
    OutOfBudget,
}

/// Interns the values of one key.
#[derive(Default)]
struct Interner<'a> {
    ids: BTreeMap<&'a [u8], ValueId>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: &'a [u8]) -> ValueId {
        let next = ValueId::try_from(self.ids.len()).expect("more than 2^32 distinct values");
        *self.ids.entry(value).or_insert(next)
    }
}

/// Why op `history_index` makes the history malformed, as the checkers report it.
fn malformed(history: &[Operation], history_index: usize, why: &str) -> (usize, String) {
    let operation = &history[history_index];
    (
        history_index,
        format!("malformed history: op #{history_index} ({operation}): {why}"),
    )
}

/// Turns a key's operations into search form, or explains why the history is malformed.
fn compile(history: &[Operation], indices: &[usize]) -> Result<Vec<Op>, (usize, String)> {
    let mut interner = Interner::default();
    let mut ops = Vec::with_capacity(indices.len());
    for &history_index in indices {
        let operation = &history[history_index];
        let malformed = |why: &str| malformed(history, history_index, why);
        if let Some(ret) = operation.ret {
            if ret < operation.call {
                return Err(malformed("returns before it is called"));
            }
        } else if operation.output.is_some() {
            return Err(malformed("has an output but no return time"));
        }
        let input = match &operation.input {
            KvInput::Get => Input::Get,
            KvInput::Put { value } => Input::Put(interner.intern(value)),
            KvInput::Delete => Input::Delete,
            KvInput::Cas {
                expected_mod_index,
                value,
            } => Input::Cas {
                expected: *expected_mod_index,
                value: interner.intern(value),
            },
            KvInput::Txn { .. } => {
                return Err(malformed(&format!(
                    "a transaction outside the group {TXN_GROUP:?}"
                )))
            }
        };
        let output = match (&operation.output, operation.ret) {
            // Rule 5: a timed-out operation's answer, if any, is not trusted.
            (_, None) | (None, _) => None,
            (Some(output), Some(_)) => Some(match (input, output) {
                (Input::Get, KvOutput::Get { value, mod_index }) => Output::Get {
                    value: value.as_deref().map(|value| interner.intern(value)),
                    mod_index: *mod_index,
                },
                (Input::Put(_), KvOutput::Put { mod_index }) => Output::Put {
                    mod_index: *mod_index,
                },
                (Input::Delete, KvOutput::Delete { existed }) => {
                    Output::Delete { existed: *existed }
                }
                (Input::Cas { .. }, KvOutput::CasOk { mod_index }) => Output::CasOk {
                    mod_index: *mod_index,
                },
                (Input::Cas { .. }, KvOutput::CasMismatch) => Output::CasMismatch,
                _ => return Err(malformed("the output does not answer the input")),
            }),
        };
        if matches!(input, Input::Get) && output.is_none() {
            // Rule 5: a read with an unknown outcome observes nothing.
            continue;
        }
        ops.push(Op {
            history_index,
            input,
            output,
        });
    }
    Ok(ops)
}

/// One event of the search's doubly linked list. Entry 0 is the head sentinel, the last entry
/// the tail sentinel.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Index into the key's ops.
    op: usize,
    /// A call event (else a return event).
    is_call: bool,
    /// For a call: the entry of its return event, or `NO_RETURN` for an unknown outcome.
    return_entry: usize,
}

/// Marks a call without a return event.
const NO_RETURN: usize = usize::MAX;

/// The events of a key's sub-history in a doubly linked list that supports removing an
/// operation's two events and putting them back (in last-removed, first-restored order).
struct EventList {
    events: Vec<Event>,
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl EventList {
    const HEAD: usize = 0;

    fn new(ops: &[Op], history: &[Operation]) -> EventList {
        // (time, returns after calls at equal times: rule 6, op)
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            let operation = &history[op.history_index];
            order.push((operation.call, false, index));
            if op.output.is_some() {
                let ret = operation.ret.expect("known outcome without return time");
                order.push((ret, true, index));
            }
        }
        order.sort_unstable();
        let sentinel = Event {
            op: usize::MAX,
            is_call: false,
            return_entry: NO_RETURN,
        };
        let mut events = Vec::with_capacity(order.len() + 2);
        events.push(sentinel);
        let mut return_entry_of = vec![NO_RETURN; ops.len()];
        for (position, &(_, is_return, op)) in order.iter().enumerate() {
            if is_return {
                return_entry_of[op] = position + 1;
            }
        }
        for &(_, is_return, op) in &order {
            events.push(Event {
                op,
                is_call: !is_return,
                return_entry: if is_return {
                    NO_RETURN
                } else {
                    return_entry_of[op]
                },
            });
        }
        events.push(sentinel);
        let count = events.len();
        let prev = (0..count).map(|entry| entry.saturating_sub(1)).collect();
        let next = (0..count).map(|entry| (entry + 1).min(count - 1)).collect();
        EventList { events, prev, next }
    }

    fn tail(&self) -> usize {
        self.events.len() - 1
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    /// Removes a call event and its return event (if any).
    fn lift(&mut self, call_entry: usize) {
        self.unlink(call_entry);
        let return_entry = self.events[call_entry].return_entry;
        if return_entry != NO_RETURN {
            self.unlink(return_entry);
        }
    }

    /// Undoes the matching [`EventList::lift`]; lifts must be undone last-first.
    fn unlift(&mut self, call_entry: usize) {
        let return_entry = self.events[call_entry].return_entry;
        if return_entry != NO_RETURN {
            self.relink(return_entry);
        }
        self.relink(call_entry);
    }
}

/// A fixed-size set of op indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BitSet {
    words: Box<[u64]>,
}

impl BitSet {
    fn new(bits: usize) -> BitSet {
        BitSet {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    fn insert(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    fn remove(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }
}

/// A deterministic hasher for the memo (SipHash with fixed keys): only membership is asked, but
/// a fixed hasher keeps even the memory layout identical from run to run.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// What of a [`State`] the future of the search can tell apart (see [`State::class`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StateClass {
    /// A present value whose modification index is known exactly: only the same value at the
    /// same index behaves the same.
    Exact { value: ValueId, index: u64 },
    /// The key is absent, or present with an unknown (wildcard) index. Everything the model
    /// can still do depends only on the value and on `floor = last_known_index +
    /// unknown_writes`, and a smaller floor admits everything a larger one does.
    Floor { value: Option<ValueId> },
}

impl State {
    /// The state's class and floor (0 for [`StateClass::Exact`]).
    ///
    /// Why a `Floor` state is fully described by `(value, floor)` and why a smaller floor
    /// *simulates* a larger one (accepts every sequence of operations the larger accepts): an
    /// absent key reads as index 0 whatever the floor, and its next write needs an index of at
    /// least `floor + 1`; a wildcard index reads as "at least `floor`", a successful CAS or a
    /// read pins it to an index at least `floor` (after which the states are equal), a CAS
    /// mismatch never narrows it, and the next write needs at least `floor + 1`. Every bound is
    /// a lower bound in `floor`, and every transition either forgets the floor (a pin, a write
    /// at a known index) or adds the same amount to it (a write of unknown index).
    fn class(self) -> (StateClass, u64) {
        match self.value {
            Some(value) if self.unknown_writes == 0 => (
                StateClass::Exact {
                    value,
                    index: self.last_known_index,
                },
                0,
            ),
            value => (
                StateClass::Floor { value },
                self.last_known_index + self.unknown_writes,
            ),
        }
    }
}

/// Lowe's memo of the search nodes already explored, with dominance: a node is (set of ops
/// taken effect, state). Every node in the memo was explored to the end without a
/// linearization (the search stops at the first one, and a node never recurs below itself
/// because its set only grows there). A new node is skipped if an explored node has the same
/// set and a state that simulates its state: the same [`StateClass`] and a floor no larger.
#[derive(Default)]
struct Memo {
    /// For each (set, class): the smallest floor explored.
    floors: HashMap<(BitSet, StateClass), u64, FixedHasher>,
    /// Off: Lowe's plain memo, where only an equal state counts as explored (kept for the
    /// tests, which compare the two).
    dominance: bool,
    /// The plain memo's states, when `dominance` is off.
    exact: HashSet<(BitSet, State), FixedHasher>,
}

impl Memo {
    /// Records the node; false if an explored node dominates it (skip it).
    fn visit(&mut self, linearized: &BitSet, state: State) -> bool {
        if !self.dominance {
            return self.exact.insert((linearized.clone(), state));
        }
        let (class, floor) = state.class();
        match self.floors.get_mut(&(linearized.clone(), class)) {
            Some(explored) if *explored <= floor => false,
            Some(explored) => {
                *explored = floor;
                true
            }
            None => {
                self.floors.insert((linearized.clone(), class), floor);
                true
            }
        }
    }
}

/// One operation the search let take effect, and the state before it.
#[derive(Clone, Copy, Debug)]
struct Frame {
    call_entry: usize,
    state_before: State,
}

/// The deepest dead end the search met: a partial linearization and the op whose return came
/// before it could take effect.
struct DeadEnd {
    linearized: Vec<usize>,
    state: State,
    blocker: usize,
}

/// Searches one key's sub-history.
fn check_key(
    key: &str,
    history: &[Operation],
    indices: &[usize],
    steps_left: &mut u64,
    pruning: Pruning,
) -> KeyVerdict {
    let mut ops = match compile(history, indices) {
        Ok(ops) => ops,
        Err((history_index, explanation)) => {
            return KeyVerdict::Violation(Violation {
                key: key.to_string(),
                ops: vec![history_index],
                explanation,
            })
        }
    };
    if pruning.symmetry {
        merge_unseen_values(&mut ops);
    }
    let tiers = if pruning.tiers {
        optional_tiers(&ops)
    } else {
        Vec::new()
    };
    for tier in tiers {
        let mut slice_left = *steps_left / TIER_BUDGET_DIVISOR;
        let slice = slice_left;
        let outcome = search(&tier, history, &mut slice_left, pruning);
        *steps_left -= slice - slice_left;
        if matches!(outcome, SearchOutcome::Linearizable) {
            return KeyVerdict::Linearizable;
        }
    }
    match search(&ops, history, steps_left, pruning) {
        SearchOutcome::Linearizable => KeyVerdict::Linearizable,
        SearchOutcome::OutOfBudget => KeyVerdict::OutOfBudget,
        SearchOutcome::DeadEnd(dead_end) if pruning.index_order => {
            // The index order stops the search at the first op taken out of order, often a
            // write long before the read that gives it away. For the report, search again
            // without it (a slice of the budget): its dead end names the op the model
            // rejects. The verdict stands either way.
            let mut slice_left = *steps_left / TIER_BUDGET_DIVISOR;
            let slice = slice_left;
            let unpruned = Pruning {
                index_order: false,
                ..pruning
            };
            let outcome = search(&ops, history, &mut slice_left, unpruned);
            *steps_left -= slice - slice_left;
            let dead_end = match outcome {
                SearchOutcome::DeadEnd(unpruned_dead_end) => unpruned_dead_end,
                SearchOutcome::Linearizable | SearchOutcome::OutOfBudget => dead_end,
            };
            KeyVerdict::Violation(explain(key, history, &ops, &dead_end))
        }
        SearchOutcome::DeadEnd(dead_end) => {
            KeyVerdict::Violation(explain(key, history, &ops, &dead_end))
        }
    }
}

/// The order the log indices impose on the known-outcome ops of a key.
///
/// The model's `last_known_index` never decreases along a linearization (a write at a known
/// index raises it, a read or CAS pins it to an index at least as large, nothing lowers it).
/// So a write answered with index `j` must come after every known write with a smaller index
/// and after every read (or successful CAS) that saw a present key at an index below `j`;
/// and such a read at index `m` must come after every known write at an index up to `m`. A
/// known op must take effect some time, so a partial linearization that breaks this order
/// can never be completed: the search takes a known op only when every op it must follow
/// is taken. Without this, the search takes two concurrent writes in the wrong order, meets
/// the contradiction only when it reaches the second one's return, and first tries every
/// subset of the timed-out ops in between.
struct IndexOrder {
    /// The distinct write indices of the known writes, ascending.
    write_keys: Vec<u64>,
    /// The distinct pinned indices of the known reads of a present key, ascending.
    pin_keys: Vec<u64>,
    /// Untaken known writes per position of `write_keys` (a Fenwick tree).
    writes: Fenwick,
    /// Untaken known reads per position of `pin_keys` (a Fenwick tree).
    pins: Fenwick,
    /// For each op: its write index and pinned index, if it has them.
    shape: Vec<(Option<u64>, Option<u64>)>,
}

/// A Fenwick tree of counts.
struct Fenwick {
    tree: Vec<i64>,
}

impl Fenwick {
    fn new(size: usize) -> Fenwick {
        Fenwick {
            tree: vec![0; size + 1],
        }
    }

    fn add(&mut self, position: usize, delta: i64) {
        let mut at = position + 1;
        while at < self.tree.len() {
            self.tree[at] += delta;
            at += at & at.wrapping_neg();
        }
    }

    /// The sum over positions `0..end`.
    fn prefix(&self, end: usize) -> i64 {
        let mut at = end;
        let mut sum = 0;
        while at > 0 {
            sum += self.tree[at];
            at -= at & at.wrapping_neg();
        }
        sum
    }
}

impl IndexOrder {
    fn new(ops: &[Op], on: bool) -> IndexOrder {
        let shape: Vec<(Option<u64>, Option<u64>)> = ops
            .iter()
            .map(|op| {
                if !on {
                    return (None, None);
                }
                match op.output {
                    Some(Output::Put { mod_index }) => (Some(mod_index), None),
                    Some(Output::CasOk { mod_index }) => match op.input {
                        Input::Cas { expected, .. } if expected > 0 => {
                            (Some(mod_index), Some(expected))
                        }
                        _ => (Some(mod_index), None),
                    },
                    Some(Output::Get {
                        value: Some(_),
                        mod_index,
                    }) => (None, Some(mod_index)),
                    _ => (None, None),
                }
            })
            .collect();
        let mut write_keys: Vec<u64> = shape.iter().filter_map(|(write, _)| *write).collect();
        write_keys.sort_unstable();
        write_keys.dedup();
        let mut pin_keys: Vec<u64> = shape.iter().filter_map(|(_, pin)| *pin).collect();
        pin_keys.sort_unstable();
        pin_keys.dedup();
        let mut order = IndexOrder {
            writes: Fenwick::new(write_keys.len()),
            pins: Fenwick::new(pin_keys.len()),
            write_keys,
            pin_keys,
            shape,
        };
        for op in 0..ops.len() {
            order.count(op, 1);
        }
        order
    }

    fn count(&mut self, op: usize, delta: i64) {
        let (write, pin) = self.shape[op];
        if let Some(write) = write {
            let position = self.write_keys.partition_point(|&key| key < write);
            self.writes.add(position, delta);
        }
        if let Some(pin) = pin {
            let position = self.pin_keys.partition_point(|&key| key < pin);
            self.pins.add(position, delta);
        }
    }

    /// Whether every op that `op` must follow is taken.
    fn allows(&self, op: usize) -> bool {
        let (write, pin) = self.shape[op];
        if let Some(write) = write {
            let writes_below = self
                .writes
                .prefix(self.write_keys.partition_point(|&k| k < write));
            let mut pins_below = self
                .pins
                .prefix(self.pin_keys.partition_point(|&k| k < write));
            if pin.is_some_and(|pin| pin < write) {
                pins_below -= 1; // its own read
            }
            if writes_below > 0 || pins_below > 0 {
                return false;
            }
        }
        if let Some(pin) = pin {
            let mut writes_up_to = self
                .writes
                .prefix(self.write_keys.partition_point(|&k| k <= pin));
            if write.is_some_and(|write| write <= pin) {
                writes_up_to -= 1; // its own write
            }
            if writes_up_to > 0 {
                return false;
            }
        }
        true
    }

    fn take(&mut self, op: usize) {
        self.count(op, -1);
    }

    fn untake(&mut self, op: usize) {
        self.count(op, 1);
    }
}

/// The values some known read returned.
fn values_read(ops: &[Op]) -> BTreeSet<ValueId> {
    ops.iter()
        .filter_map(|op| match op.output {
            Some(Output::Get {
                value: Some(value), ..
            }) => Some(value),
            _ => None,
        })
        .collect()
}

/// The value every written value no read returned stands for after [`merge_unseen_values`].
const UNSEEN: ValueId = ValueId::MAX;

/// Replaces every written value that no read returned by [`UNSEEN`].
///
/// Sound because two states that differ only in which unseen value the key holds behave the
/// same under every operation: a read that returned a value returned a seen one, which matches
/// neither; a read of "absent" matches neither; deletes, CASes and writes look only at presence
/// and indices. So the search answers the same, and timed-out writes of unseen values become
/// interchangeable (see [`Classes`]).
fn merge_unseen_values(ops: &mut [Op]) {
    let seen = values_read(ops);
    for op in ops {
        if let Input::Put(value) | Input::Cas { value, .. } = &mut op.input {
            if !seen.contains(value) {
                *value = UNSEEN;
            }
        }
    }
}

/// Interchangeable timed-out operations, and how many of each class the search has taken.
///
/// Two operations with an unknown outcome and the same input (after [`merge_unseen_values`]:
/// all timed-out deletes; timed-out puts of unseen values; timed-out CASes of unseen values
/// expecting one index) are a class: their model steps are the same, and neither has a return
/// that could order anything after it. If a linearization takes a member `b` of a class but
/// not a member `a` called no later than `b`, putting `a` in `b`'s place is a linearization too
/// (everything that returned before `a`'s call returned before `b`'s); and two members taken
/// can swap places. So some linearization (if any exists) takes each class's members in call
/// order, a prefix of them: the search takes a member only when every earlier one is taken.
/// `k` timed-out deletes cost `k + 1` choices instead of `2^k` subsets in every order.
struct Classes {
    /// For each op: its class and its rank in the class's call order (`None`: alone).
    member: Vec<Option<(usize, usize)>>,
    /// For each class: how many of its members are taken (always the first ones).
    taken: Vec<usize>,
}

impl Classes {
    fn new(ops: &[Op], history: &[Operation], on: bool) -> Classes {
        let mut member = vec![None; ops.len()];
        let mut sizes: Vec<usize> = Vec::new();
        if on {
            // (kind, expected index, value) -> class; members in (call, op) order.
            let mut class_of: BTreeMap<(u8, u64, ValueId), usize> = BTreeMap::new();
            let mut order: Vec<(u64, usize)> = (0..ops.len())
                .map(|index| (history[ops[index].history_index].call, index))
                .collect();
            order.sort_unstable();
            for (_, index) in order {
                let op = &ops[index];
                if op.output.is_some() {
                    continue;
                }
                let shape = match op.input {
                    Input::Put(value) => (0, 0, value),
                    Input::Delete => (1, 0, 0),
                    Input::Cas { expected, value } => (2, expected, value),
                    Input::Get => continue,
                };
                let next = class_of.len();
                let class = *class_of.entry(shape).or_insert(next);
                if class == sizes.len() {
                    sizes.push(0);
                }
                member[index] = Some((class, sizes[class]));
                sizes[class] += 1;
            }
        }
        Classes {
            member,
            taken: vec![0; sizes.len()],
        }
    }

    /// Whether `op` may be taken now (every earlier member of its class is).
    fn allows(&self, op: usize) -> bool {
        self.member[op].is_none_or(|(class, rank)| self.taken[class] == rank)
    }

    fn take(&mut self, op: usize) {
        if let Some((class, _)) = self.member[op] {
            self.taken[class] += 1;
        }
    }

    fn untake(&mut self, op: usize) {
        if let Some((class, _)) = self.member[op] {
            self.taken[class] -= 1;
        }
    }
}

/// A tier of [`optional_tiers`] may use at most this fraction (1/n) of the steps left.
const TIER_BUDGET_DIVISOR: u64 = 8;

/// Smaller searches to try before the full one: the key's ops without some of the operations
/// whose outcome is unknown. Such an operation may never have taken effect (rule 5), so a
/// linearization of a tier is one of the whole history in which the left-out ops never took
/// effect: a tier can prove a history linearizable, never refute it (the full search does
/// that). Tier 1 leaves out every unknown-outcome op; tier 2 only the unknown puts and CASes
/// whose value no read returned (kept: the deletes and the writes someone saw). Timed-out
/// writes nobody saw are the common case (a partitioned leader's clients), and each one
/// multiplies the orders the full search must try when it gets stuck.
fn optional_tiers(ops: &[Op]) -> Vec<Vec<Op>> {
    if ops.iter().all(|op| op.output.is_some()) {
        return Vec::new();
    }
    let observed = values_read(ops);
    let known_only: Vec<Op> = ops
        .iter()
        .filter(|op| op.output.is_some())
        .copied()
        .collect();
    let seen_only: Vec<Op> = ops
        .iter()
        .filter(|op| match (op.output, op.input) {
            (Some(_), _) | (None, Input::Delete) | (None, Input::Get) => true,
            (None, Input::Put(value) | Input::Cas { value, .. }) => observed.contains(&value),
        })
        .copied()
        .collect();
    let mut tiers = vec![known_only];
    if seen_only.len() != tiers[0].len() && seen_only.len() != ops.len() {
        tiers.push(seen_only);
    }
    tiers
}

/// How a search of one set of ops ended.
enum SearchOutcome {
    Linearizable,
    /// No linearization: the deepest dead end met.
    DeadEnd(DeadEnd),
    OutOfBudget,
}

/// The Wing–Gong search over `ops` (a key's ops, or a tier of them) from the empty key.
fn search(
    ops: &[Op],
    history: &[Operation],
    steps_left: &mut u64,
    pruning: Pruning,
) -> SearchOutcome {
    let mut list = EventList::new(ops, history);
    let mut classes = Classes::new(ops, history, pruning.symmetry);
    let mut index_order = IndexOrder::new(ops, pruning.index_order);
    let mut returns_left = ops.iter().filter(|op| op.output.is_some()).count();
    let mut linearized = BitSet::new(ops.len());
    let mut memo = Memo {
        dominance: pruning.dominance,
        ..Memo::default()
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = State::EMPTY;
    let mut deepest: Option<DeadEnd> = None;
    // The candidates at each node of the search are the calls before the first return event
    // still in the list. Known-outcome ops are tried first and unknown-outcome ones second
    // (`unknown_pass`), so timed-out ops are only let in when the known ones are stuck; in time
    // order, a crowd of never-observed timed-out writes would be tried in every subset first.
    let mut entry = list.next[EventList::HEAD];
    let mut unknown_pass = false;
    loop {
        if returns_left == 0 {
            // Every op with a known outcome took effect; the remaining unknown-outcome ops
            // never do (rule 5).
            return SearchOutcome::Linearizable;
        }
        assert_ne!(
            entry,
            list.tail(),
            "reached the end with {returns_left} returns left"
        );
        let event = list.events[entry];
        if event.is_call {
            if (event.return_entry == NO_RETURN) != unknown_pass {
                entry = list.next[entry];
                continue;
            }
            if !classes.allows(event.op) || !index_order.allows(event.op) {
                entry = list.next[entry];
                continue;
            }
            if *steps_left == 0 {
                return SearchOutcome::OutOfBudget;
            }
            *steps_left -= 1;
            if let Ok(next_state) = step(state, &ops[event.op]) {
                linearized.insert(event.op);
                if memo.visit(&linearized, next_state) {
                    stack.push(Frame {
                        call_entry: entry,
                        state_before: state,
                    });
                    state = next_state;
                    classes.take(event.op);
                    index_order.take(event.op);
                    list.lift(entry);
                    if event.return_entry != NO_RETURN {
                        returns_left -= 1;
                    }
                    entry = list.next[EventList::HEAD];
                    unknown_pass = false;
                    continue;
                }
                linearized.remove(event.op);
            }
            entry = list.next[entry];
        } else if !unknown_pass {
            // No known-outcome candidate fits here: try the unknown-outcome ones.
            unknown_pass = true;
            entry = list.next[EventList::HEAD];
        } else {
            // The op returned before it could take effect: undo the last choice.
            if deepest
                .as_ref()
                .is_none_or(|dead_end| stack.len() > dead_end.linearized.len())
            {
                deepest = Some(DeadEnd {
                    linearized: stack
                        .iter()
                        .map(|frame| list.events[frame.call_entry].op)
                        .collect(),
                    state,
                    blocker: event.op,
                });
            }
            let Some(frame) = stack.pop() else {
                let dead_end = deepest.expect("a dead end was just recorded");
                return SearchOutcome::DeadEnd(dead_end);
            };
            let undone = list.events[frame.call_entry];
            state = frame.state_before;
            linearized.remove(undone.op);
            classes.untake(undone.op);
            index_order.untake(undone.op);
            list.unlift(frame.call_entry);
            if undone.return_entry != NO_RETURN {
                returns_left += 1;
            }
            // Resume the enumeration of the parent's candidates right after the undone one.
            entry = list.next[frame.call_entry];
            unknown_pass = undone.return_entry == NO_RETURN;
        }
    }
}

/// Describes the model state for a report.
fn describe_state(state: State, values: &[&[u8]]) -> String {
    match state.value {
        None => format!(
            "absent (last known write index {}, {} writes of unknown index since)",
            state.last_known_index, state.unknown_writes
        ),
        Some(UNSEEN) => format!(
            "a written value no read returned, at mod index {}",
            state.mod_index()
        ),
        Some(value) => format!(
            "{} at mod index {}",
            ShowBytes(values[value as usize]),
            state.mod_index()
        ),
    }
}

/// Builds the report for a key with no linearization.
fn explain(key: &str, history: &[Operation], ops: &[Op], dead_end: &DeadEnd) -> Violation {
    // Rebuild the interned values in id order for printing.
    let mut interner = Interner::default();
    for op in ops {
        let operation = &history[op.history_index];
        match &operation.input {
            KvInput::Put { value } | KvInput::Cas { value, .. } => {
                interner.intern(value);
            }
            KvInput::Get | KvInput::Delete | KvInput::Txn { .. } => {}
        }
        if let (
            Some(KvOutput::Get {
                value: Some(value), ..
            }),
            Some(_),
        ) = (&operation.output, operation.ret)
        {
            interner.intern(value);
        }
    }
    let mut values: Vec<&[u8]> = vec![&[]; interner.ids.len()];
    for (value, id) in &interner.ids {
        values[*id as usize] = value;
    }
    let blocker = &ops[dead_end.blocker];
    let blocker_index = blocker.history_index;
    let state_text = describe_state(dead_end.state, &values);
    let why = match step(dead_end.state, blocker) {
        Ok(_) => "taking effect here leads only to dead ends explored earlier".to_string(),
        Err(Reject::ReadValue) | Err(Reject::ReadModIndex) => {
            format!("the read must see {state_text}")
        }
        Err(Reject::WriteIndexTooLow { index_min }) => format!(
            "a write here must have a mod index of at least {index_min} (indices strictly increase and every earlier write used one)"
        ),
        Err(Reject::DeleteExisted) => format!("the delete must see {state_text}"),
        Err(Reject::CasShouldHaveMismatched) => format!(
            "the CAS succeeded but the key is {state_text}"
        ),
        Err(Reject::CasShouldHaveMatched) => format!(
            "the CAS reported a mismatch but the key is {state_text}, exactly the expected index"
        ),
        Err(Reject::NoEffect) => "an unknown outcome cannot block".to_string(),
    };
    let mut explanation = format!(
        "key {key:?} is not linearizable: after the deepest partial linearization the search found ({} ops), the key is {state_text}; op #{blocker_index} ({}) cannot take effect before it returns: {why}.",
        dead_end.linearized.len(),
        history[blocker_index],
    );
    const OPS_LISTED_MAX: usize = 8;
    let listed_from = dead_end.linearized.len().saturating_sub(OPS_LISTED_MAX);
    if !dead_end.linearized.is_empty() {
        explanation.push_str(" Last ops of that linearization:");
        for &op in &dead_end.linearized[listed_from..] {
            let index = ops[op].history_index;
            explanation.push_str(&format!(" #{index} ({});", history[index]));
        }
    }
    let mut report_ops: Vec<usize> = dead_end
        .linearized
        .iter()
        .map(|&op| ops[op].history_index)
        .collect();
    report_ops.push(blocker_index);
    Violation {
        key: key.to_string(),
        ops: report_ops,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(
        client: u64,
        key: &str,
        input: KvInput,
        call: u64,
        ret: Option<u64>,
        output: Option<KvOutput>,
    ) -> Operation {
        Operation {
            client,
            key: key.to_string(),
            input,
            call,
            ret,
            output,
        }
    }

    fn put(client: u64, value: &str, call: u64, ret: u64, mod_index: u64) -> Operation {
        op(
            client,
            "k",
            KvInput::Put {
                value: value.into(),
            },
            call,
            Some(ret),
            Some(KvOutput::Put { mod_index }),
        )
    }

    fn put_timed_out(client: u64, value: &str, call: u64) -> Operation {
        op(
            client,
            "k",
            KvInput::Put {
                value: value.into(),
            },
            call,
            None,
            None,
        )
    }

    fn get(client: u64, value: Option<&str>, call: u64, ret: u64, mod_index: u64) -> Operation {
        op(
            client,
            "k",
            KvInput::Get,
            call,
            Some(ret),
            Some(KvOutput::Get {
                value: value.map(Into::into),
                mod_index,
            }),
        )
    }

    fn delete(client: u64, existed: bool, call: u64, ret: u64) -> Operation {
        op(
            client,
            "k",
            KvInput::Delete,
            call,
            Some(ret),
            Some(KvOutput::Delete { existed }),
        )
    }

    fn cas(
        client: u64,
        expected_mod_index: u64,
        value: &str,
        call: u64,
        ret: u64,
        output: KvOutput,
    ) -> Operation {
        op(
            client,
            "k",
            KvInput::Cas {
                expected_mod_index,
                value: value.into(),
            },
            call,
            Some(ret),
            Some(output),
        )
    }

    fn run(history: &[Operation]) -> CheckResult {
        check(history, Budget::default())
    }

    fn violation(history: &[Operation]) -> Violation {
        match run(history) {
            CheckResult::Violation(violation) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(run(&[]), CheckResult::Ok);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            get(1, None, 0, 10, 0),
            put(1, "a", 20, 30, 3),
            get(2, Some("a"), 40, 50, 3),
            cas(2, 3, "b", 60, 70, KvOutput::CasOk { mod_index: 8 }),
            cas(1, 3, "c", 80, 90, KvOutput::CasMismatch),
            get(1, Some("b"), 100, 110, 8),
            delete(2, true, 120, 130),
            get(1, None, 140, 150, 0),
            delete(1, false, 160, 170),
            cas(1, 0, "d", 180, 190, KvOutput::CasOk { mod_index: 12 }),
            get(2, Some("d"), 200, 210, 12),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    #[test]
    fn concurrent_overlapping_history_is_linearizable() {
        // Two writes overlap; readers during the overlap may see either order as long as they
        // agree with one order and the later reads.
        let history = [
            put(1, "a", 0, 100, 5),
            put(2, "b", 10, 90, 6),
            get(3, Some("a"), 20, 30, 5),
            get(4, Some("b"), 40, 120, 6),
            get(3, Some("b"), 130, 140, 6),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let history = [
            put(1, "a", 0, 10, 1),
            put(1, "b", 20, 30, 2),
            get(2, Some("a"), 40, 50, 1),
        ];
        let violation = violation(&history);
        assert_eq!(violation.key, "k");
        assert_eq!(violation.ops.last(), Some(&2), "{violation:?}");
        assert!(
            violation.explanation.contains("op #2"),
            "{}",
            violation.explanation
        );
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        // The write was acknowledged, yet a later read sees the key as never written.
        let history = [put(1, "a", 0, 10, 4), get(2, None, 20, 30, 0)];
        let violation = violation(&history);
        assert_eq!(violation.ops, vec![0, 1]);
    }

    #[test]
    fn timed_out_write_observed_later_is_linearizable() {
        let history = [
            put(1, "a", 0, 10, 2),
            put_timed_out(2, "b", 20),
            get(3, Some("a"), 30, 40, 2),
            get(3, Some("b"), 1_000, 1_010, 9),
            put(1, "c", 1_100, 1_200, 10),
            get(3, Some("c"), 1_300, 1_400, 10),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    #[test]
    fn timed_out_write_never_observed_is_linearizable() {
        let history = [
            put(1, "a", 0, 10, 2),
            put_timed_out(2, "b", 20),
            get(3, Some("a"), 30, 40, 2),
            get(3, Some("a"), 1_000, 1_010, 2),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    #[test]
    fn timed_out_write_cannot_take_effect_before_its_call() {
        let history = [get(3, Some("b"), 0, 10, 5), put_timed_out(2, "b", 20)];
        violation(&history);
    }

    #[test]
    fn timed_out_write_uses_up_a_log_index() {
        // The delete proves the timed-out write happened (at index >= 1), and the delete took
        // the next index (>= 2): a later write cannot have index 2.
        let history = |final_index| {
            [
                put_timed_out(2, "b", 0),
                delete(1, true, 10, 20),
                put(1, "c", 30, 40, final_index),
            ]
        };
        violation(&history(2));
        assert_eq!(run(&history(3)), CheckResult::Ok);
    }

    #[test]
    fn read_of_a_wildcard_must_respect_earlier_writes() {
        // The timed-out write came after the write at index 2, so it cannot read as index 2.
        let history = |read_index| {
            [
                put(1, "a", 0, 10, 2),
                put_timed_out(2, "b", 20),
                get(3, Some("b"), 30, 40, read_index),
            ]
        };
        violation(&history(2));
        assert_eq!(run(&history(3)), CheckResult::Ok);
    }

    #[test]
    fn read_of_a_wildcard_pins_its_index() {
        // Two reads of the one timed-out write must agree on its index.
        let history = [
            put_timed_out(2, "b", 0),
            get(3, Some("b"), 30, 40, 7),
            get(3, Some("b"), 50, 60, 8),
        ];
        violation(&history);
    }

    #[test]
    fn write_indices_must_increase() {
        let history = [put(1, "a", 0, 10, 5), put(1, "b", 20, 30, 5)];
        let violation = violation(&history);
        assert!(
            violation.explanation.contains("at least 6"),
            "{}",
            violation.explanation
        );
    }

    #[test]
    fn delete_uses_up_a_log_index() {
        let history = [
            put(1, "a", 0, 10, 5),
            delete(1, true, 20, 30),
            put(1, "b", 40, 50, 6),
        ];
        violation(&history);
    }

    #[test]
    fn delete_must_report_existence_truthfully() {
        violation(&[delete(1, true, 0, 10)]);
        violation(&[put(1, "a", 0, 10, 1), delete(1, false, 20, 30)]);
    }

    #[test]
    fn cas_mismatch_when_it_should_have_matched_is_a_violation() {
        let history = [
            put(1, "a", 0, 10, 4),
            cas(2, 4, "b", 20, 30, KvOutput::CasMismatch),
        ];
        let violation = violation(&history);
        assert!(
            violation.explanation.contains("mismatch"),
            "{}",
            violation.explanation
        );
    }

    #[test]
    fn cas_mismatch_explained_by_a_concurrent_timed_out_write_is_linearizable() {
        let history = [
            put(1, "a", 0, 10, 4),
            put_timed_out(3, "z", 15),
            cas(2, 4, "b", 20, 30, KvOutput::CasMismatch),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    #[test]
    fn two_cas_with_the_same_expected_index_cannot_both_succeed() {
        let history = [
            put(1, "a", 0, 10, 4),
            cas(2, 4, "b", 20, 40, KvOutput::CasOk { mod_index: 6 }),
            cas(3, 4, "c", 25, 45, KvOutput::CasOk { mod_index: 7 }),
        ];
        violation(&history);
    }

    #[test]
    fn cas_success_on_a_wrong_index_is_a_violation() {
        let history = [
            put(1, "a", 0, 10, 4),
            cas(2, 3, "b", 20, 40, KvOutput::CasOk { mod_index: 6 }),
        ];
        violation(&history);
    }

    #[test]
    fn reads_out_of_order_across_clients_are_a_violation() {
        // The write overlaps both reads, but once client 2 saw the new value, client 3 (which
        // started later) cannot see the old one.
        let history = [
            put(1, "a", 0, 10, 1),
            put(1, "b", 20, 200, 2),
            get(2, Some("b"), 30, 40, 2),
            get(3, Some("a"), 50, 60, 1),
        ];
        violation(&history);
    }

    #[test]
    fn keys_are_independent() {
        let mut history = vec![put(1, "a", 0, 10, 1)];
        history.push(op(
            2,
            "other",
            KvInput::Get,
            20,
            Some(30),
            Some(KvOutput::Get {
                value: None,
                mod_index: 0,
            }),
        ));
        assert_eq!(run(&history), CheckResult::Ok);
        history.push(op(
            2,
            "other",
            KvInput::Get,
            40,
            Some(50),
            Some(KvOutput::Get {
                value: Some(b"a".to_vec()),
                mod_index: 1,
            }),
        ));
        let violation = violation(&history);
        assert_eq!(violation.key, "other");
    }

    #[test]
    fn malformed_histories_are_reported() {
        let mismatched = op(
            1,
            "k",
            KvInput::Get,
            0,
            Some(10),
            Some(KvOutput::Put { mod_index: 1 }),
        );
        assert!(violation(&[mismatched])
            .explanation
            .starts_with("malformed history"));
        let backwards = get(1, None, 10, 5, 0);
        assert!(violation(&[backwards])
            .explanation
            .starts_with("malformed history"));
    }

    #[test]
    fn many_unobserved_timed_out_writes_stay_cheap() {
        // A partition: 40 writes time out and never take effect, while reads and writes that
        // completed carry on and observe none of them. The search must not try the subsets of
        // the timed-out writes one by one.
        let mut history = vec![put(100, "v", 0, 10, 99)];
        history.extend((0..40).map(|client| put_timed_out(client, &format!("lost{client}"), 20)));
        let mut value = "v".to_string();
        for round in 0..50 {
            let time = 1_000 + 100 * round;
            history.push(get(101, Some(&value), time, time + 10, 99 + round));
            value = format!("v{round}");
            history.push(put(100, &value, time + 20, time + 30, 100 + round));
        }
        assert_eq!(check(&history, Budget::steps(100_000)), CheckResult::Ok);
    }

    #[test]
    fn budget_exhaustion_returns_unknown() {
        // Many concurrent timed-out writes of distinct values, each read later (so none is
        // interchangeable with another), and a read of an unwritten value before those: the
        // search must try a huge number of subsets before giving up.
        let mut history: Vec<Operation> = (0..40)
            .map(|client| put_timed_out(client, &format!("v{client}"), client))
            .collect();
        history.push(get(99, Some("never"), 1_000, 1_010, 7));
        for client in 0..40 {
            let time = 1_100 + 20 * client;
            history.push(get(
                99,
                Some(&format!("v{client}")),
                time,
                time + 10,
                70 + client,
            ));
        }
        assert_eq!(check(&history, Budget::steps(10_000)), CheckResult::Unknown);
    }

    #[test]
    fn budget_counts_steps_deterministically() {
        let history = [put(1, "a", 0, 10, 1), get(2, Some("a"), 20, 30, 1)];
        assert_eq!(check(&history, Budget::steps(1)), CheckResult::Unknown);
        assert_eq!(check(&history, Budget::steps(2)), CheckResult::Ok);
    }

    /// A tiny deterministic generator for the large random history (SplitMix64).
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// One planned operation of the generator: what to do, and its timing.
    #[derive(Clone, Debug)]
    struct Plan {
        key: u8,
        kind: u8,
        value: u8,
        expect_current: bool,
        before: u64,
        after: u64,
        timed_out: bool,
        took_effect: bool,
        gap: u64,
    }

    /// Runs `plans` against a correct sequential store, one linearization point every 100 ns,
    /// and returns the history clients would have seen with the given call/return windows.
    fn correct_history(plans: &[Plan]) -> Vec<Operation> {
        let mut store: BTreeMap<u8, (Vec<u8>, u64)> = BTreeMap::new();
        let mut log_index = 0;
        let mut history = Vec::new();
        for (position, plan) in plans.iter().enumerate() {
            let point = 1_000 + 100 * position as u64;
            let current = store.get(&plan.key).cloned();
            let current_index = current.as_ref().map_or(0, |(_, index)| *index);
            let value = format!("v{}-{position}", plan.value).into_bytes();
            let effective = !plan.timed_out || plan.took_effect;
            let mut write = |store: &mut BTreeMap<u8, (Vec<u8>, u64)>, value: Option<Vec<u8>>| {
                log_index += 1 + plan.gap;
                match value {
                    Some(value) => store.insert(plan.key, (value, log_index)),
                    None => store.remove(&plan.key),
                };
                log_index
            };
            let (input, output) = match plan.kind % 4 {
                0 => {
                    let output = KvOutput::Get {
                        value: current.as_ref().map(|(value, _)| value.clone()),
                        mod_index: current_index,
                    };
                    (KvInput::Get, output)
                }
                1 => {
                    let mod_index = if effective {
                        write(&mut store, Some(value.clone()))
                    } else {
                        0
                    };
                    (KvInput::Put { value }, KvOutput::Put { mod_index })
                }
                2 => {
                    let existed = current.is_some();
                    if existed && effective {
                        write(&mut store, None);
                    }
                    (KvInput::Delete, KvOutput::Delete { existed })
                }
                _ => {
                    let expected_mod_index = if plan.expect_current {
                        current_index
                    } else {
                        current_index + 1 + plan.gap
                    };
                    let output = if expected_mod_index == current_index {
                        if effective {
                            KvOutput::CasOk {
                                mod_index: write(&mut store, Some(value.clone())),
                            }
                        } else {
                            KvOutput::CasOk { mod_index: 0 }
                        }
                    } else {
                        KvOutput::CasMismatch
                    };
                    (
                        KvInput::Cas {
                            expected_mod_index,
                            value,
                        },
                        output,
                    )
                }
            };
            let call = point - plan.before;
            history.push(Operation {
                client: position as u64 % 7,
                key: format!("key{}", plan.key),
                input,
                call,
                ret: (!plan.timed_out).then_some(point + plan.after),
                output: (!plan.timed_out).then_some(output),
            });
        }
        history
    }

    fn random_plans(rng: &mut SplitMix64, count: usize, keys: u64, window_ns: u64) -> Vec<Plan> {
        (0..count)
            .map(|_| Plan {
                key: rng.below(keys) as u8,
                kind: rng.below(4) as u8,
                value: rng.below(3) as u8,
                expect_current: rng.below(4) != 0,
                before: rng.below(window_ns),
                after: rng.below(window_ns),
                timed_out: rng.below(50) == 0,
                took_effect: rng.below(2) == 0,
                gap: rng.below(3),
            })
            .collect()
    }

    #[test]
    fn large_random_linearizable_history_stays_ok() {
        let mut rng = SplitMix64(0x5EED);
        let plans = random_plans(&mut rng, 3_000, 3, 400);
        let history = correct_history(&plans);
        assert_eq!(history.len(), 3_000);
        assert_eq!(check(&history, Budget::default()), CheckResult::Ok);
    }

    #[test]
    fn corrupting_one_read_in_a_large_history_is_found() {
        let mut rng = SplitMix64(0xBAD);
        let plans = random_plans(&mut rng, 2_000, 3, 400);
        let mut history = correct_history(&plans);
        let target = history
            .iter()
            .rposition(|operation| {
                matches!(operation.input, KvInput::Get) && operation.outcome_known()
            })
            .expect("the history has a read");
        if let Some(KvOutput::Get { value, .. }) = &mut history[target].output {
            *value = Some(b"never written".to_vec());
        }
        let violation = match check(&history, Budget::default()) {
            CheckResult::Violation(violation) => violation,
            other => panic!("expected a violation, got {other:?}"),
        };
        assert_eq!(violation.ops.last(), Some(&target));
    }

    /// The concrete state of the brute-force oracle: value, its modification index (0 when
    /// absent), and the index of the last write (deletes included).
    type Concrete = (Option<Vec<u8>>, u64, u64);

    /// An independent, brute-force oracle with concrete log indices: tries every order that
    /// respects real time, every subset of unknown-outcome ops, and every concrete index for
    /// each write whose index is not reported (up to `index_max`).
    fn oracle_linearizable(history: &[Operation]) -> bool {
        let ops: Vec<&Operation> = history
            .iter()
            .filter(|op| !matches!(op.input, KvInput::Get) || op.outcome_known())
            .collect();
        let mentioned = history
            .iter()
            .flat_map(|op| {
                let expected = match op.input {
                    KvInput::Cas {
                        expected_mod_index, ..
                    } => expected_mod_index,
                    _ => 0,
                };
                let reported = match op.output {
                    Some(KvOutput::Get { mod_index, .. })
                    | Some(KvOutput::Put { mod_index })
                    | Some(KvOutput::CasOk { mod_index }) => mod_index,
                    _ => 0,
                };
                [expected, reported]
            })
            .max()
            .unwrap_or(0);
        let index_max = mentioned + ops.len() as u64 + 1;
        oracle_search(&ops, 0, (None, 0, 0), index_max)
    }

    fn oracle_search(ops: &[&Operation], done: u32, state: Concrete, index_max: u64) -> bool {
        if done.count_ones() as usize == ops.len() {
            return true;
        }
        for (next, op) in ops.iter().enumerate() {
            if done & (1 << next) != 0 {
                continue;
            }
            // Real time: everything that returned before this call must be done already.
            let blocked = ops.iter().enumerate().any(|(other, earlier)| {
                done & (1 << other) == 0
                    && earlier.outcome_known()
                    && earlier.ret.expect("known") < op.call
            });
            if blocked {
                continue;
            }
            let done_next = done | (1 << next);
            if !op.outcome_known() && oracle_search(ops, done_next, state.clone(), index_max) {
                return true; // the unknown-outcome op never took effect
            }
            for successor in concrete_steps(&state, op, index_max) {
                if oracle_search(ops, done_next, successor, index_max) {
                    return true;
                }
            }
        }
        false
    }

    /// Every concrete state `op` can lead to from `state`.
    fn concrete_steps(state: &Concrete, op: &Operation, index_max: u64) -> Vec<Concrete> {
        let (value, mod_index, last_write) = state.clone();
        let fresh_indices = last_write + 1..=index_max;
        let write_at_any = |new_value: Option<Vec<u8>>| -> Vec<Concrete> {
            fresh_indices
                .clone()
                .map(|index| {
                    let new_mod = if new_value.is_some() { index } else { 0 };
                    (new_value.clone(), new_mod, index)
                })
                .collect()
        };
        let known = op.outcome_known();
        match (&op.input, op.output.as_ref().filter(|_| known)) {
            (
                KvInput::Get,
                Some(KvOutput::Get {
                    value: read,
                    mod_index: read_index,
                }),
            ) => {
                if *read == value && *read_index == mod_index {
                    vec![state.clone()]
                } else {
                    vec![]
                }
            }
            (KvInput::Put { value: new }, Some(KvOutput::Put { mod_index: index })) => {
                if *index > last_write {
                    vec![(Some(new.clone()), *index, *index)]
                } else {
                    vec![]
                }
            }
            (KvInput::Put { value: new }, None) => write_at_any(Some(new.clone())),
            (KvInput::Delete, Some(KvOutput::Delete { existed })) => {
                match (*existed, value.is_some()) {
                    (true, true) => write_at_any(None),
                    (false, false) => vec![state.clone()],
                    _ => vec![],
                }
            }
            (KvInput::Delete, None) if value.is_some() => write_at_any(None),
            (
                KvInput::Cas {
                    expected_mod_index,
                    value: new,
                },
                output,
            ) => match output {
                Some(KvOutput::CasOk { mod_index: index }) => {
                    if *expected_mod_index == mod_index && *index > last_write {
                        vec![(Some(new.clone()), *index, *index)]
                    } else {
                        vec![]
                    }
                }
                Some(KvOutput::CasMismatch) => {
                    if *expected_mod_index != mod_index {
                        vec![state.clone()]
                    } else {
                        vec![]
                    }
                }
                None if *expected_mod_index == mod_index => write_at_any(Some(new.clone())),
                _ => vec![],
            },
            _ => vec![],
        }
    }

    /// A small random single-key history with arbitrary (often impossible) answers.
    fn arbitrary_op() -> impl Strategy<Value = Operation> {
        let value = prop::sample::select(vec![b"a".to_vec(), b"b".to_vec()]);
        let input = prop_oneof![
            Just(KvInput::Get),
            value.clone().prop_map(|value| KvInput::Put { value }),
            Just(KvInput::Delete),
            (0..4u64, value.clone()).prop_map(|(expected_mod_index, value)| KvInput::Cas {
                expected_mod_index,
                value
            }),
        ];
        (
            input,
            prop::option::of(value),
            0..6u64,
            any::<bool>(),
            0..20u64,
            0..10u64,
            0..4u8,
        )
            .prop_map(|(input, read, index, flag, call, duration, unknown)| {
                let output = match input {
                    KvInput::Get => KvOutput::Get {
                        value: read.clone(),
                        mod_index: if read.is_some() { index } else { 0 },
                    },
                    KvInput::Put { .. } => KvOutput::Put { mod_index: index },
                    KvInput::Delete => KvOutput::Delete { existed: flag },
                    KvInput::Cas { .. } if flag => KvOutput::CasOk { mod_index: index },
                    KvInput::Cas { .. } => KvOutput::CasMismatch,
                    KvInput::Txn { .. } => unreachable!("the strategy makes no transactions"),
                };
                let known = unknown != 0;
                Operation {
                    client: call % 3,
                    key: "k".into(),
                    input,
                    call,
                    ret: known.then_some(call + duration),
                    output: known.then_some(output),
                }
            })
    }

    /// The search agrees with the brute-force oracle, except for the documented leniency: a
    /// CAS mismatch against a wildcard index is accepted without narrowing it.
    fn agrees_with_the_oracle(history: &[Operation]) -> Result<(), TestCaseError> {
        let oracle = oracle_linearizable(history);
        let verdict = check(history, Budget::default());
        prop_assert_ne!(&verdict, &CheckResult::Unknown);
        if oracle {
            prop_assert_eq!(verdict, CheckResult::Ok);
        } else if !history
            .iter()
            .any(|op| op.output == Some(KvOutput::CasMismatch))
        {
            prop_assert!(
                matches!(verdict, CheckResult::Violation(_)),
                "oracle found no linearization but the checker said {:?}",
                verdict
            );
        }
        Ok(())
    }

    /// [`arbitrary_op`] with half the ops timed out and some writes of a value no read
    /// returns ("c"), so that classes of interchangeable timed-out ops form.
    fn timeout_heavy_op() -> impl Strategy<Value = Operation> {
        (arbitrary_op(), any::<bool>(), any::<bool>()).prop_map(|(mut op, timed_out, unseen)| {
            if timed_out {
                op.ret = None;
                op.output = None;
            }
            if unseen {
                if let KvInput::Put { value } | KvInput::Cas { value, .. } = &mut op.input {
                    *value = b"c".to_vec();
                }
            }
            op
        })
    }

    fn plan_strategy() -> impl Strategy<Value = Plan> {
        (
            0..2u8,
            0..4u8,
            0..3u8,
            any::<bool>(),
            0..300u64,
            0..300u64,
            0..10u8,
            any::<bool>(),
            0..3u64,
        )
            .prop_map(
                |(key, kind, value, expect_current, before, after, timeout, took_effect, gap)| {
                    Plan {
                        key,
                        kind,
                        value,
                        expect_current,
                        before,
                        after,
                        timed_out: timeout == 0,
                        took_effect,
                        gap,
                    }
                },
            )
    }

    /// A key whose state is reached with many different floors: a known write, then writes
    /// of unknown outcome (puts of fresh values and deletes) that all overlap one another and
    /// a run of known reads of the known value; the order in which the search lets them take
    /// effect changes only the floor. Then a read of `last_read`.
    fn many_floors(unknown_pairs: u64, last_read: Option<&str>) -> Vec<Operation> {
        let mut history = vec![put(1, "a", 0, 10, 1)];
        for pair in 0..unknown_pairs {
            history.push(put_timed_out(10 + pair, &format!("x{pair}"), 20));
            history.push(op(100 + pair, "k", KvInput::Delete, 20, None, None));
        }
        for round in 0..6 {
            let time = 30 + 20 * round;
            history.push(put(
                2,
                &format!("b{round}"),
                time,
                time + 10,
                100 + round * 100,
            ));
        }
        history.push(delete(3, true, 200, 210));
        let value = last_read.map(str::as_bytes).map(<[u8]>::to_vec);
        history.push(op(
            4,
            "k",
            KvInput::Get,
            300,
            Some(310),
            Some(KvOutput::Get {
                value,
                mod_index: 0,
            }),
        ));
        history
    }

    #[test]
    fn pruning_accepts_a_good_history_of_many_floors_in_no_more_steps() {
        let history = many_floors(3, None);
        let (pruned, pruned_steps) = check_with(&history, Budget::default(), Pruning::ALL);
        let (plain, plain_steps) = check_with(&history, Budget::default(), Pruning::NONE);
        assert_eq!(pruned, CheckResult::Ok);
        assert_eq!(plain, CheckResult::Ok);
        assert!(
            pruned_steps <= plain_steps,
            "pruning took {pruned_steps} steps, the plain memo {plain_steps}"
        );
    }

    #[test]
    fn dominance_still_rejects_a_bad_history_of_many_floors_and_searches_less() {
        // The final read sees a value nobody wrote: no order of the unknown writes explains it.
        let history = many_floors(3, Some("never"));
        let dominance_only = Pruning {
            dominance: true,
            ..Pruning::NONE
        };
        let (pruned, pruned_steps) = check_with(&history, Budget::default(), dominance_only);
        let (plain, plain_steps) = check_with(&history, Budget::default(), Pruning::NONE);
        assert!(matches!(pruned, CheckResult::Violation(_)), "{pruned:?}");
        assert!(matches!(plain, CheckResult::Violation(_)), "{plain:?}");
        assert!(
            pruned_steps < plain_steps,
            "pruning took {pruned_steps} steps, the plain memo {plain_steps}"
        );
    }

    #[test]
    fn a_smaller_floor_simulates_a_larger_one() {
        // The same value and class: absent with floors 3 and 5, a wildcard with floors 4 and 6.
        let absent_low = State {
            value: None,
            last_known_index: 1,
            unknown_writes: 2,
        };
        let absent_high = State {
            value: None,
            last_known_index: 5,
            unknown_writes: 0,
        };
        assert_eq!(absent_low.class().0, absent_high.class().0);
        assert!(absent_low.class().1 < absent_high.class().1);
        let wild_low = State {
            value: Some(0),
            last_known_index: 3,
            unknown_writes: 1,
        };
        let wild_high = State {
            value: Some(0),
            last_known_index: 2,
            unknown_writes: 4,
        };
        assert_eq!(wild_low.class().0, wild_high.class().0);
        let probes = [
            Op {
                history_index: 0,
                input: Input::Get,
                output: Some(Output::Get {
                    value: Some(0),
                    mod_index: 5,
                }),
            },
            Op {
                history_index: 0,
                input: Input::Put(1),
                output: Some(Output::Put { mod_index: 5 }),
            },
            Op {
                history_index: 0,
                input: Input::Cas {
                    expected: 4,
                    value: 1,
                },
                output: Some(Output::CasOk { mod_index: 9 }),
            },
            Op {
                history_index: 0,
                input: Input::Cas {
                    expected: 4,
                    value: 1,
                },
                output: Some(Output::CasMismatch),
            },
            Op {
                history_index: 0,
                input: Input::Delete,
                output: Some(Output::Delete { existed: true }),
            },
        ];
        for (low, high) in [(absent_low, absent_high), (wild_low, wild_high)] {
            for probe in &probes {
                if let Ok(after_high) = step(high, probe) {
                    let after_low = step(low, probe).unwrap_or_else(|reject| {
                        panic!("{low:?} refuses {probe:?} ({reject:?}) that {high:?} accepts")
                    });
                    let (class_low, floor_low) = after_low.class();
                    let (class_high, floor_high) = after_high.class();
                    assert_eq!(class_low, class_high, "{probe:?}");
                    assert!(floor_low <= floor_high, "{probe:?}");
                }
            }
        }
    }

    /// Timed-out writes nobody saw, overlapping rounds of two concurrent writes whose indices
    /// run against their call order (so the search, trying calls in order, first picks the
    /// wrong one and gets stuck: it then tries the timed-out writes) and a read of the winner.
    fn unseen_timed_out_writes(count: u64, stale_read: bool) -> Vec<Operation> {
        let mut history: Vec<Operation> = (0..count)
            .map(|client| put_timed_out(client, &format!("lost{client}"), 0))
            .collect();
        for round in 0..10 {
            let time = 1_000 + 100 * round;
            let index = 10 + 10 * round;
            history.push(put(100, &format!("x{round}"), time, time + 30, index + 2));
            history.push(put(
                101,
                &format!("y{round}"),
                time + 5,
                time + 35,
                index + 1,
            ));
            history.push(get(
                102,
                Some(&format!("x{round}")),
                time + 40,
                time + 50,
                index + 2,
            ));
        }
        if stale_read {
            history.push(get(103, Some("x3"), 9_000, 9_010, 42));
        }
        history
    }

    #[test]
    fn tiers_accept_a_history_of_unseen_timed_out_writes_in_fewer_steps() {
        let history = unseen_timed_out_writes(12, false);
        let (pruned, pruned_steps) = check_with(&history, Budget::default(), Pruning::ALL);
        let (plain, plain_steps) = check_with(&history, Budget::default(), Pruning::NONE);
        assert_eq!((pruned, plain), (CheckResult::Ok, CheckResult::Ok));
        assert!(
            pruned_steps < plain_steps,
            "with tiers {pruned_steps} steps, without {plain_steps}"
        );
    }

    #[test]
    fn tiers_never_refute_so_a_stale_read_among_unseen_writes_is_still_caught() {
        let history = unseen_timed_out_writes(6, true);
        let violation = violation(&history);
        assert!(
            violation.explanation.contains("\"x3\" at mod 42"),
            "{}",
            violation.explanation
        );
    }

    #[test]
    fn a_history_needing_an_unseen_timed_out_write_passes_the_full_search() {
        // Only the timed-out put, which nobody read, can make the key exist for the delete;
        // both tiers leave it out and fail, the full search must still accept the history.
        let history = [
            put_timed_out(1, "unseen", 0),
            delete(2, true, 10, 20),
            get(3, None, 30, 40, 0),
        ];
        let tiers = optional_tiers(&compile(&history, &[0, 1, 2]).expect("well formed"));
        assert_eq!(
            tiers.len(),
            1,
            "the delete is kept in tier 2, so tier 2 is the full search"
        );
        assert_eq!(run(&history), CheckResult::Ok);
        let without_the_write = [delete(2, true, 10, 20), get(3, None, 30, 40, 0)];
        assert!(matches!(run(&without_the_write), CheckResult::Violation(_)));
    }

    #[test]
    fn tier_two_keeps_the_timed_out_writes_someone_read() {
        let history = [
            put_timed_out(1, "seen", 0),
            put_timed_out(2, "unseen", 0),
            op(3, "k", KvInput::Delete, 0, None, None),
            get(4, Some("seen"), 10, 20, 5),
        ];
        let ops = compile(&history, &[0, 1, 2, 3]).expect("well formed");
        let tiers = optional_tiers(&ops);
        let kept =
            |tier: &Vec<Op>| -> Vec<usize> { tier.iter().map(|op| op.history_index).collect() };
        assert_eq!(kept(&tiers[0]), vec![3]);
        assert_eq!(kept(&tiers[1]), vec![0, 2, 3]);
        assert_eq!(run(&history), CheckResult::Ok);
    }

    /// `count` timed-out deletes and `count` timed-out puts of values nobody read, all called
    /// while the key holds "a", then a read of `last_read` (absent if `None`).
    fn interchangeable_timeouts(count: u64, last_read: Option<&str>) -> Vec<Operation> {
        let mut history = vec![put(1, "a", 0, 10, 1)];
        for client in 0..count {
            history.push(op(10 + client, "k", KvInput::Delete, 20, None, None));
            history.push(put_timed_out(100 + client, &format!("lost{client}"), 20));
        }
        let value = last_read.map(|value| value.as_bytes().to_vec());
        history.push(op(
            2,
            "k",
            KvInput::Get,
            1_000,
            Some(1_010),
            Some(KvOutput::Get {
                value,
                mod_index: 0,
            }),
        ));
        history
    }

    #[test]
    fn symmetry_takes_interchangeable_timeouts_in_call_order_only() {
        let without = Pruning {
            symmetry: false,
            ..Pruning::ALL
        };
        // Good: one of the deletes took effect last. Bad: the read sees a value nobody wrote,
        // so every subset of the timed-out ops must be ruled out.
        for (last_read, linearizable) in [(None, true), (Some("never"), false)] {
            let history = interchangeable_timeouts(7, last_read);
            let (pruned, pruned_steps) = check_with(&history, Budget::default(), Pruning::ALL);
            let (plain, plain_steps) = check_with(&history, Budget::default(), without);
            assert_eq!(pruned == CheckResult::Ok, linearizable, "{pruned:?}");
            assert_eq!(plain == CheckResult::Ok, linearizable, "{plain:?}");
            assert!(
                matches!(pruned, CheckResult::Ok | CheckResult::Violation(_)),
                "{pruned:?}"
            );
            if !linearizable {
                assert!(
                    pruned_steps * 10 < plain_steps,
                    "with symmetry {pruned_steps} steps, without {plain_steps}"
                );
            }
        }
    }

    #[test]
    fn unseen_values_merge_but_seen_ones_stay_apart() {
        let history = [
            put_timed_out(1, "seen", 0),
            put_timed_out(2, "unseen1", 0),
            put_timed_out(3, "unseen2", 0),
            get(4, Some("seen"), 10, 20, 5),
        ];
        let mut ops = compile(&history, &[0, 1, 2, 3]).expect("well formed");
        merge_unseen_values(&mut ops);
        let values: Vec<ValueId> = ops[..3]
            .iter()
            .map(|op| match op.input {
                Input::Put(value) => value,
                other => panic!("a put, not {other:?}"),
            })
            .collect();
        assert_ne!(values[0], UNSEEN);
        assert_eq!(values[1..], [UNSEEN, UNSEEN]);
        let classes = Classes::new(&ops, &history, true);
        assert_eq!(classes.member[1], Some((1, 0)));
        assert_eq!(classes.member[2], Some((1, 1)));
        assert_eq!(classes.member[0], Some((0, 0)));
        assert_eq!(classes.member[3], None, "a known op is in no class");
    }

    #[test]
    fn index_order_avoids_the_wrong_order_of_concurrent_writes() {
        // Each round's two writes answer indices against their call order: the plain search
        // takes the wrong one first and only finds out at its return.
        let order_only = Pruning {
            index_order: true,
            ..Pruning::NONE
        };
        let history = unseen_timed_out_writes(8, false);
        let (pruned, pruned_steps) = check_with(&history, Budget::default(), order_only);
        let (plain, plain_steps) = check_with(&history, Budget::default(), Pruning::NONE);
        assert_eq!((pruned, plain), (CheckResult::Ok, CheckResult::Ok));
        assert!(
            pruned_steps * 10 < plain_steps,
            "with the index order {pruned_steps} steps, without {plain_steps}"
        );
        let stale = unseen_timed_out_writes(8, true);
        let (pruned, _) = check_with(&stale, Budget::default(), order_only);
        assert!(matches!(pruned, CheckResult::Violation(_)), "{pruned:?}");
    }

    #[test]
    fn index_order_rejects_what_the_model_rejects() {
        // Acknowledged in one order, indexed in the other: put "b" returned before put "a"
        // was called, but has the larger index.
        let history = [put(1, "b", 0, 10, 7), put(2, "a", 20, 30, 5)];
        let found = violation(&history);
        assert_eq!(found.ops, vec![0, 1], "{}", found.explanation);
        // A read at index 3 after a write at index 4 returned.
        let history = [
            put(1, "a", 0, 10, 3),
            put(1, "b", 20, 30, 4),
            get(2, Some("a"), 40, 50, 3),
        ];
        let found = violation(&history);
        assert_eq!(found.ops.last(), Some(&2), "{}", found.explanation);
        // A CAS that expected index 6 while the last write had index 8.
        let history = [
            put(1, "a", 0, 10, 8),
            cas(2, 6, "b", 20, 30, KvOutput::CasOk { mod_index: 9 }),
        ];
        assert!(matches!(run(&history), CheckResult::Violation(_)));
        // Concurrent: either order is possible, the indices pick one.
        let history = [
            put(1, "a", 0, 100, 8),
            put(2, "b", 10, 90, 6),
            get(3, Some("a"), 120, 130, 8),
        ];
        assert_eq!(run(&history), CheckResult::Ok);
    }

    /// Prints the model steps of the check with and without dominance pruning on the history
    /// file named by `RAFT_KV_HISTORY` (`cargo test -p raft-kv-sim --lib -- --ignored
    /// steps_on_a_history_file --nocapture`).
    #[test]
    #[ignore = "a measurement on a file the caller names"]
    fn steps_on_a_history_file() {
        let path = std::env::var("RAFT_KV_HISTORY").expect("RAFT_KV_HISTORY names a history file");
        let history = crate::history_file::read(std::path::Path::new(&path)).expect("a history");
        for (name, pruning) in [
            ("none", Pruning::NONE),
            (
                "dominance",
                Pruning {
                    dominance: true,
                    ..Pruning::NONE
                },
            ),
            (
                "tiers",
                Pruning {
                    tiers: true,
                    ..Pruning::NONE
                },
            ),
            (
                "symmetry",
                Pruning {
                    symmetry: true,
                    ..Pruning::NONE
                },
            ),
            (
                "index order",
                Pruning {
                    index_order: true,
                    ..Pruning::NONE
                },
            ),
            (
                "all but symmetry and index order",
                Pruning {
                    symmetry: false,
                    index_order: false,
                    ..Pruning::ALL
                },
            ),
            (
                "all but index order",
                Pruning {
                    index_order: false,
                    ..Pruning::ALL
                },
            ),
            ("all", Pruning::ALL),
        ] {
            let (verdict, steps) = check_with(&history, Budget::steps(200_000_000), pruning);
            let verdict = match verdict {
                CheckResult::Violation(_) => "violation",
                CheckResult::Ok => "ok",
                CheckResult::Unknown => "unknown",
            };
            println!("{path}: pruning {name}: {verdict} after {steps} steps");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The prunings (dominance, tiers) change how much is searched, never the verdict.
        #[test]
        fn pruning_never_changes_a_verdict(
            history in prop::collection::vec(arbitrary_op(), 1..9),
        ) {
            let (pruned, _) = check_with(&history, Budget::default(), Pruning::ALL);
            let (plain, _) = check_with(&history, Budget::default(), Pruning::NONE);
            prop_assert_eq!(
                matches!(pruned, CheckResult::Violation(_)),
                matches!(plain, CheckResult::Violation(_)),
                "pruned {:?}, plain {:?}", pruned, plain
            );
            prop_assert_ne!(pruned, CheckResult::Unknown);
        }

        /// Each pruning on its own, and all together, on histories crowded with timed-out
        /// ops (interchangeable ones for the symmetry, known indices for the index order).
        #[test]
        fn each_pruning_keeps_the_verdict_on_histories_of_timeouts(
            history in prop::collection::vec(timeout_heavy_op(), 1..10),
        ) {
            let (plain, _) = check_with(&history, Budget::default(), Pruning::NONE);
            prop_assert_ne!(&plain, &CheckResult::Unknown);
            for pruning in [
                Pruning { dominance: true, ..Pruning::NONE },
                Pruning { tiers: true, ..Pruning::NONE },
                Pruning { symmetry: true, ..Pruning::NONE },
                Pruning { index_order: true, ..Pruning::NONE },
                Pruning::ALL,
            ] {
                let (pruned, _) = check_with(&history, Budget::default(), pruning);
                prop_assert_ne!(&pruned, &CheckResult::Unknown);
                prop_assert_eq!(
                    matches!(pruned, CheckResult::Violation(_)),
                    matches!(plain, CheckResult::Violation(_)),
                    "{:?}: pruned {:?}, plain {:?}", pruning, pruned, plain
                );
            }
        }

        /// The prunings against the brute-force oracle on histories crowded with timeouts.
        #[test]
        fn pruned_search_agrees_with_the_oracle_on_histories_of_timeouts(
            history in prop::collection::vec(timeout_heavy_op(), 1..7),
        ) {
            agrees_with_the_oracle(&history)?;
        }

        #[test]
        fn correct_register_histories_are_linearizable(
            plans in prop::collection::vec(plan_strategy(), 1..60),
        ) {
            let history = correct_history(&plans);
            prop_assert_eq!(check(&history, Budget::default()), CheckResult::Ok);
        }

        /// The search agrees with the brute-force oracle ([`agrees_with_the_oracle`]).
        #[test]
        fn search_agrees_with_a_brute_force_oracle(
            history in prop::collection::vec(arbitrary_op(), 1..6),
        ) {
            agrees_with_the_oracle(&history)?;
        }

        #[test]
        fn a_read_of_a_never_written_value_is_a_violation(
            plans in prop::collection::vec(plan_strategy(), 1..60),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut history = correct_history(&plans);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&index| {
                    matches!(history[index].input, KvInput::Get) && history[index].outcome_known()
                })
                .collect();
            prop_assume!(!reads.is_empty());
            let target = reads[pick.index(reads.len())];
            if let Some(KvOutput::Get { value, .. }) = &mut history[target].output {
                *value = Some(b"never written".to_vec());
            }
            match check(&history, Budget::default()) {
                CheckResult::Violation(violation) => {
                    prop_assert_eq!(violation.key, history[target].key.clone());
                }
                other => prop_assert!(false, "expected a violation, got {:?}", other),
            }
        }
    }
}
