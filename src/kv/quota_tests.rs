//! The quota (`--quota-bytes`): what counts, what a stamped command may do, and that the
//! decision depends on the entry alone.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn delete(key: &str) -> WriteOp {
    WriteOp::Delete { key: key.into() }
}

/// `op` stamped with `quota_bytes` (`None`: an unstamped command).
fn command(op: WriteOp, idempotency_key: Option<&str>, quota_bytes: Option<u64>) -> Bytes {
    let request = WriteRequest {
        idempotency_key: idempotency_key.map(str::to_string),
        op,
    };
    match quota_bytes {
        Some(quota_bytes) => encode_command(&request, CommandStamp { quota_bytes }),
        None => encode_write(&request),
    }
}

fn apply(store: &mut KvStore, op: WriteOp, quota_bytes: u64) -> WriteResult {
    apply_keyed(store, op, None, quota_bytes)
}

fn apply_keyed(
    store: &mut KvStore,
    op: WriteOp,
    idempotency_key: Option<&str>,
    quota_bytes: u64,
) -> WriteResult {
    let index = store.applied_index() + 1;
    let data = command(op, idempotency_key, Some(quota_bytes));
    store.apply(index, &data).expect("a valid command")
}

/// The size recomputed from the keys, to hold the running count to.
fn recounted(store: &KvStore) -> u64 {
    store
        .entries_iter()
        .map(|(key, value)| entry_bytes(key, value.data))
        .sum()
}

/// Room for exactly `keys` keys of one-byte names and `value_bytes`-byte values.
fn quota_for(keys: u64, value_bytes: u64) -> u64 {
    keys * (1 + value_bytes + ENTRY_OVERHEAD_BYTES)
}

#[test]
fn store_bytes_counts_key_value_and_overhead_and_survives_a_snapshot() {
    let mut store = KvStore::new(KvOptions::default());
    assert_eq!(store.store_bytes(), 0);
    apply(&mut store, put("a", "12345"), u64::MAX);
    assert_eq!(store.store_bytes(), 1 + 5 + ENTRY_OVERHEAD_BYTES);
    apply(&mut store, put("a", "1"), u64::MAX);
    assert_eq!(store.store_bytes(), 1 + 1 + ENTRY_OVERHEAD_BYTES);
    apply(&mut store, put("bb", ""), u64::MAX);
    assert_eq!(store.store_bytes(), 2 + 2 * ENTRY_OVERHEAD_BYTES + 2);
    let restored = KvStore::restore(&store.snapshot(), KvOptions::default()).unwrap();
    assert_eq!(restored.store_bytes(), store.store_bytes());
    apply(&mut store, delete("a"), u64::MAX);
    apply(&mut store, delete("bb"), u64::MAX);
    assert_eq!(store.store_bytes(), 0);
}

#[test]
fn a_put_past_the_quota_is_refused_changes_nothing_and_fits_again_after_a_delete() {
    let quota = quota_for(2, 3);
    let mut store = KvStore::new(KvOptions::default());
    assert!(matches!(
        apply(&mut store, put("a", "aaa"), quota),
        WriteResult::Put { .. }
    ));
    assert!(matches!(
        apply(&mut store, put("b", "bbb"), quota),
        WriteResult::Put { .. }
    ));
    assert_eq!(
        store.store_bytes(),
        quota,
        "exactly at the quota is allowed"
    );
    let before = store.clone();
    let mut changes = Vec::new();
    let index = store.applied_index() + 1;
    let result = store
        .apply_recording(
            index,
            &command(put("c", "ccc"), None, Some(quota)),
            &mut changes,
        )
        .unwrap()
        .result;
    assert_eq!(
        result,
        WriteResult::QuotaExceeded {
            quota_bytes: quota,
            store_bytes: quota,
            store_bytes_after: quota + quota_for(1, 3),
        }
    );
    assert!(
        changes.is_empty(),
        "a refused write reports no change: {changes:?}"
    );
    assert!(store.get("c").is_none());
    assert_eq!(store.store_bytes(), before.store_bytes());
    assert_eq!(store.snapshot().len(), before.snapshot().len());
    // Reads, deletes and same-size overwrites still work at the quota.
    assert!(matches!(
        apply(&mut store, put("a", "AAA"), quota),
        WriteResult::Put { .. }
    ));
    assert_eq!(
        apply(&mut store, delete("b"), quota),
        WriteResult::Deleted { existed: true }
    );
    assert!(matches!(
        apply(&mut store, put("c", "ccc"), quota),
        WriteResult::Put { .. }
    ));
    assert_eq!(store.get("c").unwrap().data, "ccc");
    assert_eq!(store.store_bytes(), recounted(&store));
}

#[test]
fn a_write_that_shrinks_an_over_quota_store_applies() {
    let mut store = KvStore::new(KvOptions::default());
    apply(&mut store, put("a", "0123456789"), u64::MAX);
    let small = quota_for(1, 1);
    assert!(store.store_bytes() > small);
    assert!(matches!(
        apply(&mut store, put("a", "0123456789ab"), small),
        WriteResult::QuotaExceeded { .. }
    ));
    assert!(matches!(
        apply(&mut store, put("a", "01"), small),
        WriteResult::Put { .. }
    ));
    assert_eq!(store.get("a").unwrap().data, "01");
}

#[test]
fn the_decision_is_the_stamp_in_the_entry_not_the_replica() {
    // Two replicas built alike apply the same stamped log: whatever flag each node runs
    // with, the stamp decides, so they end in the same state.
    let log: Vec<Bytes> = (0..6)
        .map(|i| command(put(&i.to_string(), "vvvv"), None, Some(quota_for(3, 4) + 1)))
        .collect();
    let mut replicas = [
        KvStore::new(KvOptions::default()),
        KvStore::new(KvOptions::default()),
    ];
    for replica in &mut replicas {
        for (i, data) in log.iter().enumerate() {
            replica.apply(i as u64 + 1, data).unwrap();
        }
    }
    assert_eq!(replicas[0], replicas[1]);
    assert_eq!(replicas[0].len(), 3);
    // An unstamped command (written before quotas) is not limited.
    let mut store = replicas[0].clone();
    let index = store.applied_index() + 1;
    store
        .apply(index, &command(put("old", "vvvv"), None, None))
        .unwrap();
    assert_eq!(store.len(), 4);
}

#[test]
fn a_refused_keyed_write_is_remembered_and_its_retry_gets_the_same_answer() {
    let quota = quota_for(1, 1);
    let mut store = KvStore::new(KvOptions::default());
    apply(&mut store, put("a", "a"), quota);
    let first = apply_keyed(&mut store, put("b", "b"), Some("req-1"), quota);
    assert!(
        matches!(first, WriteResult::QuotaExceeded { .. }),
        "{first:?}"
    );
    apply(&mut store, delete("a"), quota);
    // Space is free now, but the retry answers the first outcome and changes nothing.
    assert_eq!(
        apply_keyed(&mut store, put("b", "b"), Some("req-1"), quota),
        first
    );
    assert!(store.get("b").is_none());
    let restored = KvStore::restore(&store.snapshot(), KvOptions::default()).unwrap();
    assert_eq!(restored, store, "the refusal survives a snapshot");
}

#[test]
fn a_transaction_past_the_quota_is_refused_whole() {
    let quota = quota_for(2, 1);
    let mut store = KvStore::new(KvOptions::default());
    apply(&mut store, put("a", "a"), quota);
    let txn = Txn {
        compares: Vec::new(),
        success: vec![
            TxnOp::Delete { key: "a".into() },
            TxnOp::Put {
                key: "b".into(),
                value: Bytes::from_static(b"b"),
            },
            TxnOp::Put {
                key: "c".into(),
                value: Bytes::from_static(b"c"),
            },
            TxnOp::Put {
                key: "d".into(),
                value: Bytes::from_static(b"d"),
            },
        ],
        failure: Vec::new(),
    };
    assert!(matches!(
        apply(&mut store, WriteOp::Txn(txn.clone()), quota),
        WriteResult::QuotaExceeded { .. }
    ));
    assert_eq!(
        store.get("a").unwrap().data,
        "a",
        "the delete was undone too"
    );
    assert!(store.get("b").is_none() && store.get("c").is_none());
    let mut fits = txn;
    fits.success.pop();
    assert!(matches!(
        apply(&mut store, WriteOp::Txn(fits), quota),
        WriteResult::Txn {
            succeeded: true,
            ..
        }
    ));
    assert_eq!(store.len(), 2);
}

#[test]
fn a_leased_put_past_the_quota_attaches_nothing_and_a_revoke_frees_space() {
    let quota = quota_for(1, 1);
    let mut store = KvStore::new(KvOptions::default());
    let WriteResult::LeaseGranted { lease_id, .. } =
        apply(&mut store, WriteOp::LeaseGrant { ttl_ms: 1000 }, quota)
    else {
        panic!("no grant");
    };
    let leased = |key: &str| WriteOp::PutLeased {
        key: key.into(),
        value: Bytes::from_static(b"v"),
        lease_id,
        expected_mod_index: None,
    };
    assert!(matches!(
        apply(&mut store, leased("a"), quota),
        WriteResult::Put { .. }
    ));
    assert!(matches!(
        apply(&mut store, leased("b"), quota),
        WriteResult::QuotaExceeded { .. }
    ));
    assert_eq!(store.lease(lease_id).unwrap().keys.len(), 1);
    assert_eq!(store.lease_of(b"b"), None);
    assert!(matches!(
        apply(&mut store, WriteOp::LeaseRevoke { lease_id }, quota),
        WriteResult::LeaseEnded {
            keys_deleted: 1,
            ..
        }
    ));
    assert_eq!(store.store_bytes(), 0);
    assert!(matches!(
        apply(&mut store, put("b", "v"), quota),
        WriteResult::Put { .. }
    ));
}

#[test]
fn stamped_commands_round_trip_and_trailing_bytes_after_the_stamp_are_refused() {
    let request = WriteRequest {
        idempotency_key: Some("k".into()),
        op: put("a", "b"),
    };
    let stamp = CommandStamp { quota_bytes: 12345 };
    let data = encode_command(&request, stamp);
    assert_eq!(
        decode_command(&data).unwrap(),
        (request.clone(), Some(stamp))
    );
    assert_eq!(decode_write(&data).unwrap(), request);
    assert_eq!(
        decode_command(&encode_write(&request)).unwrap(),
        (request, None)
    );
    let mut extra = data.to_vec();
    extra.push(0);
    assert!(matches!(
        decode_command(&extra),
        Err(KvError::Decode { .. })
    ));
}

fn op_strategy() -> impl Strategy<Value = WriteOp> {
    let key = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    prop_oneof![
        (key.clone(), 0usize..40).prop_map(|(key, len)| put(key, &"x".repeat(len))),
        key.prop_map(delete),
    ]
}

proptest! {
    #[test]
    fn the_store_never_grows_past_the_stamped_quota(
        steps in prop::collection::vec((op_strategy(), 100u64..400), 1..60)
    ) {
        let mut store = KvStore::new(KvOptions::default());
        for (op, quota) in steps {
            let before = store.store_bytes();
            let result = apply(&mut store, op, quota);
            prop_assert_eq!(store.store_bytes(), recounted(&store));
            let grew = store.store_bytes() > before;
            prop_assert!(!grew || store.store_bytes() <= quota,
                "grew from {} to {} past the quota {}", before, store.store_bytes(), quota);
            if let WriteResult::QuotaExceeded { store_bytes_after, .. } = result {
                prop_assert!(store_bytes_after > quota && store_bytes_after > before);
                prop_assert_eq!(store.store_bytes(), before);
            }
        }
    }
}
