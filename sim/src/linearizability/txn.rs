//! The transaction group [`TXN_GROUP`] as one partition of the linearizability check.
//!
//! Only transactions touch the group's keys `t0` and `t1`, and each one either puts one fresh
//! value into both keys or deletes both (its compare on `t0` held) or gets both keys (it did
//! not). A delete sets the model to "absent", as it was at the start. The model
//! state is the value the two keys hold together (or absent) and the log index of the last
//! transaction placed. Rules, for a transaction taking effect:
//!
//! 1. **Atomicity.** A failed transaction must read the model's value from *both* keys: a put
//!    that reached one key and not the other (a torn transaction) shows up as two different
//!    reads, which no state explains.
//! 2. **The compare decides the branch.** `succeeded` must equal whether `t0` holds `if_value`
//!    (`None`: whether `t0` is absent) in the model state.
//! 3. **Log order.** Every transaction is one log entry and its answer carries the index of
//!    the entry that applied it (a retry answered from the idempotency table carries the index
//!    of the first application), so known transactions take effect in increasing index order;
//!    only the unlinearized one of smallest index can be next.
//! 4. **Unknown outcomes** may take effect at any time after their call, or never. Only their
//!    success branch changes anything, so only that is tried (when the compare holds). One whose
//!    value nobody observes (no known read returns it, no compare names it) is left out: once it
//!    took effect no known transaction could follow, so it is the same as never.
//! 5. **Real-time order** as for single keys: `a` precedes `b` when `a.ret < b.call`.

use std::collections::{BTreeSet, HashSet};

use super::{malformed, Interner, KeyVerdict, KvInput, KvOutput, Operation, Violation, TXN_GROUP};

/// A transaction in search form (values interned: 0 is reserved for "absent").
#[derive(Clone, Debug)]
struct TxnOp {
    history_index: usize,
    call: u64,
    /// `t0` must hold this value id (0: absent) for the success branch.
    if_value: u32,
    /// The value id the success branch writes (0: it deletes both keys).
    value: u32,
    /// `None` for an unknown outcome.
    answer: Option<Answer>,
}

#[derive(Clone, Debug)]
struct Answer {
    ret: u64,
    index: u64,
    succeeded: bool,
    /// Value ids read by the failure branch (empty on success).
    reads: Vec<u32>,
}

/// The model: the value both keys hold (0: absent) and the last known transaction index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    value: u32,
    index: u64,
}

/// Why a transaction cannot take effect on a state, in words.
fn reject(state: State, op: &TxnOp) -> Option<String> {
    let holds = state.value == op.if_value;
    let Some(answer) = &op.answer else {
        return (!holds).then(|| "its compare does not hold".to_string());
    };
    if answer.index <= state.index {
        return Some(format!(
            "its index {} is not above the last one placed, {}",
            answer.index, state.index
        ));
    }
    if answer.succeeded != holds {
        return Some(format!(
            "it {} although its compare {}",
            if answer.succeeded {
                "succeeded"
            } else {
                "failed"
            },
            if holds { "held" } else { "did not hold" }
        ));
    }
    if !answer.succeeded && answer.reads != [state.value, state.value] {
        return Some("its reads of t0 and t1 are not both the keys' value".to_string());
    }
    None
}

fn apply(state: State, op: &TxnOp) -> State {
    match &op.answer {
        Some(answer) if answer.succeeded => State {
            value: op.value,
            index: answer.index,
        },
        Some(answer) => State {
            index: answer.index,
            ..state
        },
        None => State {
            value: op.value,
            ..state
        },
    }
}

/// The id of a value of the group, `0` for absent: the key checker's interner, shifted by one.
fn value_id<'a>(interner: &mut Interner<'a>, value: Option<&'a [u8]>) -> u32 {
    value.map_or(0, |value| interner.intern(value) + 1)
}

fn compile(history: &[Operation], indices: &[usize]) -> Result<Vec<TxnOp>, (usize, String)> {
    let mut interner = Interner::default();
    let mut ops = Vec::with_capacity(indices.len());
    for &history_index in indices {
        let operation = &history[history_index];
        let malformed = |why: &str| malformed(history, history_index, why);
        let KvInput::Txn { if_value, value } = &operation.input else {
            return Err(malformed(&format!(
                "only transactions may touch the group {TXN_GROUP:?}"
            )));
        };
        let answer = match (&operation.output, operation.ret) {
            (Some(_), Some(ret)) if ret < operation.call => {
                return Err(malformed("returns before it is called"))
            }
            (Some(_), None) => return Err(malformed("has an output but no return time")),
            (None, _) => None,
            (
                Some(KvOutput::Txn {
                    index,
                    succeeded,
                    reads,
                }),
                Some(ret),
            ) => {
                if *succeeded != reads.is_empty() || (!succeeded && reads.len() != 2) {
                    return Err(malformed(
                        "a transaction reads both keys exactly when it fails",
                    ));
                }
                Some(Answer {
                    ret,
                    index: *index,
                    succeeded: *succeeded,
                    reads: reads
                        .iter()
                        .map(|r| value_id(&mut interner, r.as_deref()))
                        .collect(),
                })
            }
            (Some(_), Some(_)) => return Err(malformed("the output does not answer the input")),
        };
        ops.push(TxnOp {
            history_index,
            call: operation.call,
            if_value: value_id(&mut interner, if_value.as_deref()),
            value: value_id(&mut interner, value.as_deref()),
            answer,
        });
    }
    // Rule 4: unknown transactions whose value nobody observes are the same as never.
    let observed: BTreeSet<u32> = ops
        .iter()
        .flat_map(|op| {
            let reads = op.answer.iter().flat_map(|a| a.reads.iter().copied());
            reads.chain(std::iter::once(op.if_value))
        })
        .collect();
    ops.retain(|op| op.answer.is_some() || observed.contains(&op.value));
    Ok(ops)
}

/// The search's deepest point: what was placed and the known transaction that could not follow.
struct Deepest {
    placed: Vec<usize>,
    state: State,
    blocker: Option<usize>,
}

struct Search<'a> {
    ops: &'a [TxnOp],
    /// Known transactions by increasing index (positions in `ops`).
    known: Vec<usize>,
    memo: HashSet<(Vec<u64>, State)>,
    steps_left: &'a mut u64,
    out_of_budget: bool,
    deepest: Deepest,
}

impl Search<'_> {
    /// Whether the ops not in `placed` (a bitset) can be linearized from `state`, with the
    /// known ones from `known[next..]`.
    fn run(
        &mut self,
        placed: &mut Vec<u64>,
        path: &mut Vec<usize>,
        state: State,
        next: usize,
    ) -> bool {
        let is_placed = |placed: &Vec<u64>, i: usize| placed[i / 64] & (1 << (i % 64)) != 0;
        if next == self.known.len() {
            return true;
        }
        if !self.memo.insert((placed.clone(), state)) {
            return false;
        }
        if *self.steps_left == 0 {
            self.out_of_budget = true;
            return false;
        }
        *self.steps_left -= 1;
        // Rule 5: an op may go next only if no unplaced known op returned before its call.
        let ret_min = self.known[next..]
            .iter()
            .filter_map(|&i| self.ops[i].answer.as_ref().map(|a| a.ret))
            .min()
            .unwrap_or(u64::MAX);
        let candidate = self.known.get(next).copied();
        let mut tried = Vec::new();
        if let Some(candidate) = candidate.filter(|&c| self.ops[c].call <= ret_min) {
            tried.push(candidate);
        }
        for (i, op) in self.ops.iter().enumerate() {
            if op.answer.is_none() && !is_placed(placed, i) && op.call <= ret_min {
                tried.push(i);
            }
        }
        let mut blocked = true;
        for i in tried {
            let op = &self.ops[i];
            if reject(state, op).is_some() {
                continue;
            }
            if op.answer.is_some() {
                blocked = false;
            }
            placed[i / 64] |= 1 << (i % 64);
            path.push(i);
            let next_after = if Some(i) == candidate { next + 1 } else { next };
            if self.run(placed, path, apply(state, op), next_after) {
                return true;
            }
            path.pop();
            placed[i / 64] &= !(1 << (i % 64));
            if self.out_of_budget {
                return false;
            }
        }
        if blocked && path.len() >= self.deepest.placed.len() {
            // The known transaction that could not follow.
            self.deepest = Deepest {
                placed: path.clone(),
                state,
                blocker: candidate,
            };
        }
        false
    }
}

/// Checks the transactions of the group (the ops at `indices` of `history`).
pub(super) fn check_group(
    history: &[Operation],
    indices: &[usize],
    steps_left: &mut u64,
) -> KeyVerdict {
    let violation = |ops: Vec<usize>, explanation: String| {
        KeyVerdict::Violation(Violation {
            key: TXN_GROUP.to_string(),
            ops,
            explanation,
        })
    };
    let ops = match compile(history, indices) {
        Ok(ops) => ops,
        Err((history_index, explanation)) => return violation(vec![history_index], explanation),
    };
    let mut known: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].answer.is_some())
        .collect();
    known.sort_by_key(|&i| ops[i].answer.as_ref().map(|a| a.index));
    let mut search = Search {
        ops: &ops,
        known,
        memo: HashSet::new(),
        steps_left,
        out_of_budget: false,
        deepest: Deepest {
            placed: Vec::new(),
            state: State { value: 0, index: 0 },
            blocker: None,
        },
    };
    let initial = State { value: 0, index: 0 };
    let mut placed = vec![0u64; ops.len().div_ceil(64)];
    if search.run(&mut placed, &mut Vec::new(), initial, 0) {
        return KeyVerdict::Linearizable;
    }
    if search.out_of_budget {
        return KeyVerdict::OutOfBudget;
    }
    let deepest = search.deepest;
    // Every failed branch ends at a known transaction that cannot be placed.
    let op = &ops[deepest.blocker.unwrap_or(search_first_known(&ops))];
    let state_text = describe(history, &ops, deepest.state);
    let why = reject(deepest.state, op)
        .unwrap_or_else(|| "taking effect here leads only to dead ends".to_string());
    let mut trail: Vec<usize> = deepest
        .placed
        .iter()
        .map(|&i| ops[i].history_index)
        .collect();
    trail.push(op.history_index);
    violation(
        trail,
        format!(
            "after {} transactions, with t0 and t1 {state_text} (last index {}), op #{} ({}) \
             cannot take effect: {why}",
            deepest.placed.len(),
            deepest.state.index,
            op.history_index,
            history[op.history_index],
        ),
    )
}

fn search_first_known(ops: &[TxnOp]) -> usize {
    (0..ops.len())
        .filter(|&i| ops[i].answer.is_some())
        .min_by_key(|&i| ops[i].answer.as_ref().map(|a| a.index))
        .unwrap_or(0)
}

/// The model value in words: the value of the transaction that wrote it, or "absent".
fn describe(history: &[Operation], ops: &[TxnOp], state: State) -> String {
    if state.value == 0 {
        return "absent".to_string();
    }
    ops.iter()
        .find(|op| op.value == state.value)
        .and_then(|op| match &history[op.history_index].input {
            KvInput::Txn {
                value: Some(value), ..
            } => Some(format!("both {}", super::ShowBytes(value))),
            _ => None,
        })
        .unwrap_or_else(|| format!("both value #{}", state.value))
}

#[cfg(test)]
mod tests {
    use crate::linearizability::{check, Budget, CheckResult, KvInput, KvOutput, Operation};

    use super::TXN_GROUP;

    /// The failure branch's reads of `t0` and `t1`.
    type Reads<'a> = [Option<&'a str>; 2];

    /// A transaction `if t0 = if_value then put value` answered at `index`.
    fn txn(
        if_value: Option<&str>,
        value: &str,
        call: u64,
        answer: Option<(u64, u64, Option<Reads>)>,
    ) -> Operation {
        let (ret, output) = match answer {
            None => (None, None),
            Some((ret, index, reads)) => (
                Some(ret),
                Some(KvOutput::Txn {
                    index,
                    succeeded: reads.is_none(),
                    reads: reads
                        .map(|reads| {
                            reads
                                .iter()
                                .map(|r| r.map(|r| r.as_bytes().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            ),
        };
        Operation {
            client: call,
            key: TXN_GROUP.to_string(),
            input: KvInput::Txn {
                if_value: if_value.map(|v| v.as_bytes().to_vec()),
                value: Some(value.as_bytes().to_vec()),
            },
            call,
            ret,
            output,
        }
    }

    /// A transaction `if t0 = if_value then delete both` answered at `index`.
    fn delete_both(
        if_value: Option<&str>,
        call: u64,
        answer: Option<(u64, u64, Option<Reads>)>,
    ) -> Operation {
        let operation = txn(if_value, "unused", call, answer);
        Operation {
            input: KvInput::Txn {
                if_value: if_value.map(|v| v.as_bytes().to_vec()),
                value: None,
            },
            ..operation
        }
    }

    #[test]
    fn a_delete_of_both_keys_makes_them_absent_together() {
        let history = [
            txn(None, "a", 0, Some((10, 1, None))),
            delete_both(Some("a"), 20, Some((30, 2, None))),
            // Absent again: a create-only transaction succeeds, a compare on "a" reads absent.
            txn(Some("a"), "b", 40, Some((50, 3, Some([None, None])))),
            txn(None, "c", 60, Some((70, 4, None))),
        ];
        assert_eq!(verdict(&history), CheckResult::Ok);
        // A delete that reached t0 only: a later read sees t1 still "a".
        let mut torn = history.clone();
        torn[2] = txn(Some("a"), "b", 40, Some((50, 3, Some([None, Some("a")]))));
        let why = explanation(&torn);
        assert!(why.contains("cannot take effect"), "{why}");
        // A delete whose compare did not hold cannot succeed.
        let wrong_branch = [
            txn(None, "a", 0, Some((10, 1, None))),
            delete_both(Some("z"), 20, Some((30, 2, None))),
        ];
        let why = explanation(&wrong_branch);
        assert!(why.contains("although its compare did not hold"), "{why}");
        // An unknown delete may explain a later absent read.
        let unknown = [
            txn(None, "a", 0, Some((10, 1, None))),
            delete_both(Some("a"), 20, None),
            txn(Some("a"), "b", 40, Some((50, 3, Some([None, None])))),
        ];
        assert_eq!(verdict(&unknown), CheckResult::Ok);
    }

    fn verdict(history: &[Operation]) -> CheckResult {
        check(history, Budget::default())
    }

    fn explanation(history: &[Operation]) -> String {
        match verdict(history) {
            CheckResult::Violation(violation) => {
                assert_eq!(violation.key, TXN_GROUP);
                violation.explanation
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_correct_history_of_both_branches_is_linearizable() {
        let history = [
            txn(None, "a", 0, Some((10, 3, None))),
            txn(None, "b", 20, Some((30, 4, Some([Some("a"), Some("a")])))),
            // Concurrent: the one with the lower index took effect first.
            txn(Some("a"), "c", 40, Some((60, 6, None))),
            txn(
                Some("a"),
                "d",
                41,
                Some((59, 5, Some([Some("c"), Some("c")]))),
            ),
            txn(Some("c"), "e", 70, Some((80, 9, None))),
        ];
        // Index 5 before 6 but 5 read "c": not linearizable.
        assert!(matches!(verdict(&history), CheckResult::Violation(_)));
        let mut fixed = history.clone();
        fixed[3] = txn(
            Some("a"),
            "d",
            41,
            Some((59, 7, Some([Some("c"), Some("c")]))),
        );
        fixed[4] = txn(Some("c"), "e", 70, Some((80, 9, None)));
        assert_eq!(verdict(&fixed), CheckResult::Ok);
    }

    #[test]
    fn a_success_whose_compare_was_false_is_a_violation() {
        let history = [
            txn(None, "a", 0, Some((10, 3, None))),
            // t0 holds "a", yet the compare on "b" succeeded.
            txn(Some("b"), "c", 20, Some((30, 4, None))),
        ];
        let why = explanation(&history);
        assert!(
            why.contains("succeeded although its compare did not hold"),
            "{why}"
        );
    }

    #[test]
    fn a_failure_whose_compare_was_true_is_a_violation() {
        let history = [
            txn(None, "a", 0, Some((10, 3, None))),
            txn(
                Some("a"),
                "c",
                20,
                Some((30, 4, Some([Some("a"), Some("a")]))),
            ),
        ];
        let why = explanation(&history);
        assert!(why.contains("failed although its compare held"), "{why}");
    }

    #[test]
    fn a_torn_transaction_seen_by_a_later_read_is_a_violation() {
        let history = [
            txn(None, "a", 0, Some((10, 3, None))),
            // Only t0 got "a": t1 is still absent.
            txn(None, "b", 20, Some((30, 4, Some([Some("a"), None])))),
        ];
        let why = explanation(&history);
        assert!(why.contains("not both the keys' value"), "{why}");
    }

    #[test]
    fn an_unknown_transaction_may_explain_a_later_read_or_never_happen() {
        let seen = [
            txn(None, "a", 0, None),
            txn(None, "b", 20, Some((30, 4, Some([Some("a"), Some("a")])))),
        ];
        assert_eq!(verdict(&seen), CheckResult::Ok);
        let unseen = [
            txn(None, "a", 0, None),
            txn(None, "b", 20, Some((30, 4, None))),
        ];
        assert_eq!(verdict(&unseen), CheckResult::Ok);
        // It cannot take effect before its call.
        let too_early = [
            txn(None, "b", 0, Some((10, 4, Some([Some("a"), Some("a")])))),
            txn(None, "a", 20, None),
        ];
        assert!(matches!(verdict(&too_early), CheckResult::Violation(_)));
    }

    #[test]
    fn a_retry_answered_from_the_idempotency_table_takes_its_first_index() {
        // Applied first at index 2 (the failure branch read "a"), retried until answered at 100
        // from the idempotency table: the answer names index 2, where it read.
        let history = [
            txn(None, "a", 0, Some((10, 1, None))),
            txn(None, "r", 20, Some((100, 2, Some([Some("a"), Some("a")])))),
            txn(Some("a"), "b", 30, Some((40, 3, None))),
        ];
        assert_eq!(verdict(&history), CheckResult::Ok);
        // The same answer naming the retry's own entry (9) reads "a" after "b" was written at 3:
        // the lie of a node that answered a retry with the wrong index.
        let mut wrong_index = history.clone();
        wrong_index[1] = txn(None, "r", 20, Some((100, 9, Some([Some("a"), Some("a")]))));
        let why = explanation(&wrong_index);
        assert!(why.contains("cannot take effect"), "{why}");
    }

    #[test]
    fn a_later_transaction_cannot_take_an_earlier_index() {
        let history = [
            txn(None, "a", 0, Some((10, 5, None))),
            txn(Some("a"), "b", 20, Some((30, 4, None))),
        ];
        let why = explanation(&history);
        assert!(why.contains("cannot take effect"), "{why}");
    }

    #[test]
    fn other_operations_on_the_group_are_malformed() {
        let mut history = vec![txn(None, "a", 0, Some((10, 3, None)))];
        history.push(Operation {
            input: KvInput::Get,
            ..history[0].clone()
        });
        assert!(explanation(&history).starts_with("malformed history"));
        let outside = [Operation {
            key: "k0".into(),
            ..txn(None, "a", 0, Some((10, 3, None)))
        }];
        match verdict(&outside) {
            CheckResult::Violation(violation) => {
                assert!(violation.explanation.contains("outside the group"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn many_concurrent_unknown_transactions_stay_within_budget() {
        // 40 unknown transactions all comparing on absent, and a final read that saw one.
        let mut history: Vec<Operation> = (0..40)
            .map(|i| txn(None, &format!("u{i}"), i, None))
            .collect();
        history.push(txn(
            None,
            "z",
            1_000,
            Some((1_010, 50, Some([Some("u17"), Some("u17")]))),
        ));
        history.push(txn(Some("u17"), "y", 1_020, Some((1_030, 51, None))));
        assert_eq!(verdict(&history), CheckResult::Ok);
    }
}
