//! Transactions: compares, then one of two operation lists, applied atomically by one log entry
//! (etcd's `Txn`). Every compare is evaluated against the state before the transaction; the
//! chosen list runs in order, so a `get` sees the `put`s before it in the same list.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{validate_key, KeyChange, KvError, KvStore, Value};

/// Most compares in one transaction.
pub const TXN_COMPARES_MAX: usize = 128;
/// Most operations in each of a transaction's two lists.
pub const TXN_OPS_MAX: usize = 128;
/// Most bytes of keys and values in one transaction (compares and both lists together).
pub const TXN_BYTES_MAX: usize = 1 << 20;
/// Most bytes of values a transaction's gets return together; a get beyond it returns the
/// key's versions and size only ([`TxnOpResult::GetTooLarge`]). Results are remembered for
/// exactly-once retries, so this bounds what one idempotency record holds.
pub const TXN_GET_BYTES_MAX: usize = 64 << 10;

/// An atomic multi-key request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compares: Vec<Compare>,
    /// Runs when every compare holds.
    pub success: Vec<TxnOp>,
    /// Runs when a compare fails.
    pub failure: Vec<TxnOp>,
}

/// One condition on one key, evaluated before the transaction changes anything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// What must hold.
    pub target: CompareTarget,
}

/// What a [`Compare`] checks (equality; an absent key has mod and create index 0).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's value equals these bytes (an absent key never matches).
    Value(Bytes),
    /// The key's `mod_index` equals this (0: absent).
    ModIndex(u64),
    /// The key's `create_index` equals this (0: absent).
    CreateIndex(u64),
    /// The key is present (`true`) or absent (`false`).
    Exists(bool),
}

/// One operation of a transaction's list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Sets the key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        #[serde(with = "super::shared_bytes")]
        value: Bytes,
    },
    /// Removes the key if present.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Reads the key as the transaction left it so far.
    Get {
        /// The key.
        key: Vec<u8>,
    },
}

/// What one operation of the list that ran did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResult {
    /// A put: the key's new `mod_index` (the entry's index) and whether it was created.
    Put {
        /// The key's new `mod_index`.
        mod_index: u64,
        /// Whether the key was absent before.
        created: bool,
    },
    /// A delete: whether the key was present.
    Deleted {
        /// Whether the key was present (and is now gone).
        existed: bool,
    },
    /// A get: the value, if present.
    Get {
        /// The value and its versions; `None` when absent.
        value: Option<Value>,
    },
    /// A get of a present key whose value would take the transaction's gets past
    /// [`TXN_GET_BYTES_MAX`]: its versions and size, not its bytes (read it with a plain GET).
    GetTooLarge {
        /// The key's `mod_index`.
        mod_index: u64,
        /// The key's `create_index`.
        create_index: u64,
        /// The value's size.
        value_bytes: usize,
    },
}

impl TxnOp {
    fn key(&self) -> &[u8] {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            TxnOp::Put { key, value } => key.len() + value.len(),
            TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
        }
    }
}

impl Txn {
    /// Checks the limits: every key, [`TXN_COMPARES_MAX`], [`TXN_OPS_MAX`], [`TXN_BYTES_MAX`].
    pub fn validate(&self) -> Result<(), KvError> {
        let too_large = |what: String| Err(KvError::TxnTooLarge { what });
        if self.compares.len() > TXN_COMPARES_MAX {
            return too_large(format!(
                "{} compares, more than {TXN_COMPARES_MAX}",
                self.compares.len()
            ));
        }
        for (name, list) in [("success", &self.success), ("failure", &self.failure)] {
            if list.len() > TXN_OPS_MAX {
                return too_large(format!(
                    "{} {name} operations, more than {TXN_OPS_MAX}",
                    list.len()
                ));
            }
        }
        let mut bytes = 0usize;
        for compare in &self.compares {
            validate_key(&compare.key)?;
            bytes += compare.key.len();
            if let CompareTarget::Value(value) = &compare.target {
                bytes += value.len();
            }
        }
        for op in self.success.iter().chain(&self.failure) {
            validate_key(op.key())?;
            bytes += op.bytes();
        }
        if bytes > TXN_BYTES_MAX {
            return too_large(format!(
                "{bytes} bytes of keys and values, more than {TXN_BYTES_MAX}"
            ));
        }
        Ok(())
    }
}

impl KvStore {
    /// Applies `txn` (decoded from the command buffer `source`) at `index`: evaluates every
    /// compare, runs the chosen list. Returns whether the compares held and each operation's
    /// result.
    pub(super) fn apply_txn(
        &mut self,
        index: u64,
        txn: Txn,
        source: &Bytes,
        changes: &mut Vec<KeyChange>,
    ) -> (bool, Vec<TxnOpResult>) {
        let succeeded = txn.compares.iter().all(|compare| self.holds(compare));
        let mut ops = if succeeded { txn.success } else { txn.failure };
        if succeeded && crate::plants::active(crate::plants::Plant::TxnNotAtomic) {
            ops.truncate(1);
        }
        let mut results = Vec::with_capacity(ops.len());
        let mut get_bytes = 0usize;
        for op in ops {
            let result = match op {
                TxnOp::Put { key, value } => TxnOpResult::Put {
                    mod_index: index,
                    created: self.write(index, &key, &value, source, changes),
                },
                TxnOp::Delete { key } => TxnOpResult::Deleted {
                    existed: self.remove(index, &key, changes),
                },
                TxnOp::Get { key } => match self.get(&key) {
                    Some(value) if get_bytes + value.data.len() > TXN_GET_BYTES_MAX => {
                        TxnOpResult::GetTooLarge {
                            mod_index: value.mod_index,
                            create_index: value.create_index,
                            value_bytes: value.data.len(),
                        }
                    }
                    found => {
                        get_bytes += found.as_ref().map_or(0, |value| value.data.len());
                        TxnOpResult::Get { value: found }
                    }
                },
            };
            results.push(result);
        }
        (succeeded, results)
    }

    fn holds(&self, compare: &Compare) -> bool {
        let current = self.get(&compare.key);
        match &compare.target {
            CompareTarget::Value(expected) => current.is_some_and(|value| value.data == *expected),
            CompareTarget::ModIndex(expected) => {
                current.map_or(0, |value| value.mod_index) == *expected
            }
            CompareTarget::CreateIndex(expected) => {
                current.map_or(0, |value| value.create_index) == *expected
            }
            CompareTarget::Exists(expected) => current.is_some() == *expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{decode_write, encode_write, KvOptions, WriteOp, WriteRequest, WriteResult};

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn get(key: &str) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    fn compare(key: &str, target: CompareTarget) -> Compare {
        Compare {
            key: key.into(),
            target,
        }
    }

    fn apply(store: &mut KvStore, op: WriteOp, key: Option<&str>) -> (WriteResult, Vec<KeyChange>) {
        let index = store.applied_index() + 1;
        let data = encode_write(&WriteRequest {
            idempotency_key: key.map(str::to_string),
            op,
        });
        let mut changes = Vec::new();
        let result = store.apply_recording(index, &data, &mut changes).unwrap();
        (result.result, changes)
    }

    fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> WriteOp {
        WriteOp::Txn(Txn {
            compares,
            success,
            failure,
        })
    }

    #[test]
    fn compares_that_hold_run_success_atomically_in_one_entry() {
        let mut store = KvStore::new(KvOptions::default());
        apply(&mut store, txn(vec![], vec![put("a", "1")], vec![]), None);
        let (result, changes) = apply(
            &mut store,
            txn(
                vec![
                    compare("a", CompareTarget::ModIndex(1)),
                    compare("a", CompareTarget::CreateIndex(1)),
                    compare("a", CompareTarget::Value(Bytes::from("1"))),
                    compare("a", CompareTarget::Exists(true)),
                    compare("b", CompareTarget::Exists(false)),
                    compare("b", CompareTarget::ModIndex(0)),
                ],
                vec![
                    put("b", "2"),
                    TxnOp::Delete { key: "a".into() },
                    get("b"),
                    get("a"),
                ],
                vec![put("never", "x")],
            ),
            None,
        );
        let WriteResult::Txn { succeeded, results } = result else {
            panic!("{result:?}")
        };
        assert!(succeeded);
        assert_eq!(
            results[0],
            TxnOpResult::Put {
                mod_index: 2,
                created: true
            }
        );
        assert_eq!(results[1], TxnOpResult::Deleted { existed: true });
        // A get sees the writes before it in the same list.
        let TxnOpResult::Get { value: Some(b) } = &results[2] else {
            panic!("{results:?}")
        };
        assert_eq!((&b.data[..], b.mod_index), (&b"2"[..], 2));
        assert_eq!(results[3], TxnOpResult::Get { value: None });
        // Both changes carry the transaction's one index.
        let indexes: Vec<(u64, &[u8])> = changes.iter().map(|c| (c.index, &c.key[..])).collect();
        assert_eq!(indexes, [(2, &b"b"[..]), (2, &b"a"[..])]);
        assert!(store.get("never").is_none());
    }

    #[test]
    fn one_failing_compare_runs_failure_and_changes_nothing_else() {
        for failing in [
            CompareTarget::ModIndex(7),
            CompareTarget::CreateIndex(2),
            CompareTarget::Value(Bytes::from("other")),
            CompareTarget::Exists(false),
        ] {
            let mut store = KvStore::new(KvOptions::default());
            apply(&mut store, txn(vec![], vec![put("a", "1")], vec![]), None);
            let before = store.clone();
            let (result, changes) = apply(
                &mut store,
                txn(
                    vec![
                        compare("a", CompareTarget::Exists(true)),
                        compare("a", failing),
                    ],
                    vec![put("a", "2")],
                    vec![get("a")],
                ),
                None,
            );
            let WriteResult::Txn { succeeded, results } = result else {
                panic!("{result:?}")
            };
            assert!(!succeeded);
            assert_eq!(results.len(), 1);
            assert!(changes.is_empty());
            assert_eq!(store.get("a"), before.get("a"));
        }
    }

    #[test]
    fn a_retried_transaction_with_its_idempotency_key_applies_once() {
        let mut store = KvStore::new(KvOptions::default());
        let increment = txn(
            vec![compare("n", CompareTarget::Exists(false))],
            vec![put("n", "1")],
            vec![put("n", "again")],
        );
        let (first, _) = apply(&mut store, increment.clone(), Some("t1"));
        let (retried, changes) = apply(&mut store, increment, Some("t1"));
        assert_eq!(first, retried);
        assert!(changes.is_empty());
        assert_eq!(&store.get("n").unwrap().data[..], b"1");
    }

    #[test]
    fn gets_past_the_byte_limit_return_versions_only() {
        let mut store = KvStore::new(KvOptions::default());
        let big = "x".repeat(TXN_GET_BYTES_MAX - 10);
        apply(
            &mut store,
            txn(
                vec![],
                vec![put("big", &big), put("small", "0123456789ab")],
                vec![],
            ),
            None,
        );
        let (result, _) = apply(
            &mut store,
            txn(vec![], vec![get("big"), get("small")], vec![]),
            None,
        );
        let WriteResult::Txn { results, .. } = result else {
            panic!("{result:?}")
        };
        assert!(
            matches!(&results[0], TxnOpResult::Get { value: Some(v) } if v.data.len() == big.len())
        );
        assert_eq!(
            results[1],
            TxnOpResult::GetTooLarge {
                mod_index: 1,
                create_index: 1,
                value_bytes: 12
            }
        );
    }

    #[test]
    fn transactions_over_the_limits_are_refused_before_and_at_apply() {
        let many = |n: usize| (0..n).map(|i| get(&format!("k{i}"))).collect::<Vec<_>>();
        let cases = [
            Txn {
                compares: vec![compare("a", CompareTarget::Exists(true)); TXN_COMPARES_MAX + 1],
                success: vec![],
                failure: vec![],
            },
            Txn {
                compares: vec![],
                success: many(TXN_OPS_MAX + 1),
                failure: vec![],
            },
            Txn {
                compares: vec![],
                success: vec![],
                failure: many(TXN_OPS_MAX + 1),
            },
            Txn {
                compares: vec![],
                success: vec![put("a", &"v".repeat(TXN_BYTES_MAX))],
                failure: vec![],
            },
            Txn {
                compares: vec![],
                success: vec![put("", "v")],
                failure: vec![],
            },
        ];
        for case in cases {
            let request = WriteRequest {
                idempotency_key: None,
                op: WriteOp::Txn(case),
            };
            assert!(request.validate().is_err());
            // A committed one is refused alike on every replica, changing nothing.
            let mut store = KvStore::new(KvOptions::default());
            let data = encode_write(&request);
            assert_eq!(decode_write(&data).unwrap(), request);
            assert!(store.apply(1, &data).is_err());
            assert!(store.is_empty());
        }
        let at_limits = Txn {
            compares: vec![compare("a", CompareTarget::Exists(true)); TXN_COMPARES_MAX],
            success: many(TXN_OPS_MAX),
            failure: many(TXN_OPS_MAX),
        };
        at_limits.validate().unwrap();
    }
}
