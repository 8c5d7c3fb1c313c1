//! Leases in the replicated state: grant, attach, revoke, expire, limits, snapshots.

use bytes::Bytes;

use super::*;

fn apply(store: &mut KvStore, op: WriteOp) -> WriteResult {
    let index = store.applied_index() + 1;
    let data = encode_write(&WriteRequest {
        idempotency_key: None,
        op,
    });
    store.apply(index, &data).expect("a valid command")
}

fn grant(store: &mut KvStore, ttl_ms: u64) -> u64 {
    match apply(store, WriteOp::LeaseGrant { ttl_ms }) {
        WriteResult::LeaseGranted { lease_id, .. } => lease_id,
        other => panic!("grant answered {other:?}"),
    }
}

fn put_leased(key: &str, lease_id: u64) -> WriteOp {
    WriteOp::PutLeased {
        key: key.into(),
        value: Bytes::from_static(b"v"),
        lease_id,
        expected_mod_index: None,
    }
}

fn put(key: &str) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: Bytes::from_static(b"plain"),
    }
}

fn store() -> KvStore {
    KvStore::new(KvOptions::default())
}

#[test]
fn a_lease_id_is_the_index_of_its_grant() {
    let mut store = store();
    apply(&mut store, put("x"));
    let lease_id = grant(&mut store, 5000);
    assert_eq!(lease_id, 2);
    assert_eq!(store.lease(lease_id).map(|lease| lease.ttl_ms), Some(5000));
}

#[test]
fn revoking_a_lease_deletes_exactly_its_keys() {
    let mut store = store();
    let lease_id = grant(&mut store, 5000);
    apply(&mut store, put_leased("a", lease_id));
    apply(&mut store, put_leased("b", lease_id));
    apply(&mut store, put("c"));
    assert_eq!(store.lease_of(b"a"), Some(lease_id));
    assert_eq!(
        apply(&mut store, WriteOp::LeaseRevoke { lease_id }),
        WriteResult::LeaseEnded {
            lease_id,
            keys_deleted: 2
        }
    );
    assert!(store.get("a").is_none() && store.get("b").is_none());
    assert!(store.get("c").is_some());
    assert!(store.lease(lease_id).is_none());
    assert_eq!(
        apply(&mut store, WriteOp::LeaseExpire { lease_id }),
        WriteResult::LeaseNotFound { lease_id },
        "a lease ends once"
    );
}

#[test]
fn a_plain_write_or_delete_detaches_a_key_from_its_lease() {
    let mut store = store();
    let lease_id = grant(&mut store, 5000);
    apply(&mut store, put_leased("kept", lease_id));
    apply(&mut store, put_leased("gone", lease_id));
    apply(&mut store, put("kept"));
    apply(&mut store, WriteOp::Delete { key: "gone".into() });
    assert_eq!(store.lease_of(b"kept"), None);
    assert_eq!(
        apply(&mut store, WriteOp::LeaseExpire { lease_id }),
        WriteResult::LeaseEnded {
            lease_id,
            keys_deleted: 0
        }
    );
    assert_eq!(&store.get("kept").unwrap().data[..], b"plain");
}

#[test]
fn moving_a_key_to_another_lease_leaves_the_first_lease_without_it() {
    let mut store = store();
    let first = grant(&mut store, 5000);
    let second = grant(&mut store, 5000);
    apply(&mut store, put_leased("k", first));
    apply(&mut store, put_leased("k", second));
    assert!(store.lease(first).unwrap().keys.is_empty());
    apply(&mut store, WriteOp::LeaseRevoke { lease_id: first });
    assert!(store.get("k").is_some());
    apply(&mut store, WriteOp::LeaseRevoke { lease_id: second });
    assert!(store.get("k").is_none());
}

#[test]
fn a_put_on_a_missing_lease_changes_nothing() {
    let mut store = store();
    assert_eq!(
        apply(&mut store, put_leased("k", 99)),
        WriteResult::LeaseNotFound { lease_id: 99 }
    );
    assert!(store.get("k").is_none());
}

#[test]
fn a_create_only_leased_put_is_the_lock_recipe() {
    let mut store = store();
    let holder = grant(&mut store, 5000);
    let rival = grant(&mut store, 5000);
    let create_only = |lease_id| WriteOp::PutLeased {
        key: "lock".into(),
        value: Bytes::from_static(b"me"),
        lease_id,
        expected_mod_index: Some(0),
    };
    assert!(matches!(
        apply(&mut store, create_only(holder)),
        WriteResult::CasOk { .. }
    ));
    let held_at = store.get("lock").unwrap().mod_index;
    assert_eq!(
        apply(&mut store, create_only(rival)),
        WriteResult::CasMismatch {
            current_mod_index: held_at
        }
    );
    assert_eq!(
        store.lease_of(b"lock"),
        Some(holder),
        "the rival took nothing"
    );
    apply(&mut store, WriteOp::LeaseExpire { lease_id: holder });
    assert!(matches!(
        apply(&mut store, create_only(rival)),
        WriteResult::CasOk { .. }
    ));
}

#[test]
fn a_lease_holds_at_most_its_key_limit() {
    let mut store = store();
    let lease_id = grant(&mut store, 5000);
    for k in 0..LEASE_KEYS_MAX {
        apply(&mut store, put_leased(&format!("k{k}"), lease_id));
    }
    let refused = apply(&mut store, put_leased("one-more", lease_id));
    assert!(
        matches!(refused, WriteResult::LeaseLimit { .. }),
        "{refused:?}"
    );
    assert!(store.get("one-more").is_none());
    // Rewriting a key it already holds is fine.
    assert!(matches!(
        apply(&mut store, put_leased("k0", lease_id)),
        WriteResult::Put { created: false, .. }
    ));
}

#[test]
fn a_ttl_of_zero_or_over_the_limit_is_refused() {
    for ttl_ms in [0, LEASE_TTL_MS_MAX + 1] {
        let request = WriteRequest {
            idempotency_key: None,
            op: WriteOp::LeaseGrant { ttl_ms },
        };
        assert!(
            matches!(request.validate(), Err(KvError::BadLeaseTtl { .. })),
            "{ttl_ms}"
        );
    }
}

#[test]
fn leases_survive_a_snapshot_round_trip_and_count_in_the_state_hash() {
    let mut store = store();
    let lease_id = grant(&mut store, 7000);
    apply(&mut store, put_leased("a", lease_id));
    apply(&mut store, put("b"));
    let restored = KvStore::restore(&store.snapshot(), KvOptions::default()).unwrap();
    assert_eq!(restored, store);
    assert_eq!(restored.lease_of(b"a"), Some(lease_id));
    let mut without_lease = store.clone();
    apply(&mut without_lease, WriteOp::LeaseRevoke { lease_id });
    let mut plain = store.clone();
    apply(&mut plain, put("c"));
    assert_ne!(without_lease.state_hash(), plain.state_hash());
}

#[test]
fn a_snapshot_whose_lease_holds_an_absent_key_is_refused() {
    let mut restore = KvRestore::new(KvOptions::default(), 10);
    let refused = restore.push_lease(3, 5000, vec!["missing".into()]);
    assert!(
        matches!(refused, Err(KvError::CorruptSnapshot { .. })),
        "{refused:?}"
    );
    let mut restore = KvRestore::new(KvOptions::default(), 10);
    restore
        .push_key(
            "k".into(),
            Value {
                data: Bytes::new(),
                create_index: 1,
                mod_index: 1,
            },
        )
        .unwrap();
    restore.push_lease(3, 5000, vec!["k".into()]).unwrap();
    assert!(
        restore.push_lease(4, 5000, vec!["k".into()]).is_err(),
        "one key, two leases"
    );
    assert!(
        restore.push_lease(2, 5000, vec![]).is_err(),
        "ids out of order"
    );
}

#[test]
fn an_ended_lease_reports_a_delete_of_each_of_its_keys_to_watches() {
    let mut store = store();
    let lease_id = grant(&mut store, 5000);
    apply(&mut store, put_leased("a", lease_id));
    apply(&mut store, put_leased("b", lease_id));
    let index = store.applied_index() + 1;
    let expire = encode_write(&WriteRequest {
        idempotency_key: None,
        op: WriteOp::LeaseExpire { lease_id },
    });
    let mut changes = Vec::new();
    store.apply_recording(index, &expire, &mut changes).unwrap();
    let deleted: Vec<(&[u8], u64)> = changes
        .iter()
        .filter(|change| change.kind == ChangeKind::Delete)
        .map(|change| (change.key.as_ref(), change.index))
        .collect();
    assert_eq!(deleted, vec![(&b"a"[..], index), (&b"b"[..], index)]);
}

#[test]
fn a_transaction_that_writes_or_deletes_a_leased_key_detaches_it_as_plain_writes_do() {
    let mut store = store();
    let lease_id = grant(&mut store, 5000);
    apply(&mut store, put_leased("put-in-txn", lease_id));
    apply(&mut store, put_leased("deleted-in-txn", lease_id));
    apply(&mut store, put_leased("kept", lease_id));
    let txn = Txn {
        compares: Vec::new(),
        success: vec![
            TxnOp::Put {
                key: b"put-in-txn".to_vec(),
                value: Bytes::from_static(b"now plain"),
            },
            TxnOp::Delete {
                key: b"deleted-in-txn".to_vec(),
            },
        ],
        failure: Vec::new(),
    };
    assert!(matches!(
        apply(&mut store, WriteOp::Txn(txn)),
        WriteResult::Txn {
            succeeded: true,
            ..
        }
    ));
    assert_eq!(store.lease_of(b"put-in-txn"), None);
    assert_eq!(store.lease_of(b"deleted-in-txn"), None);
    assert_eq!(store.lease_of(b"kept"), Some(lease_id));
    // Revoking the lease now deletes only the key it still holds.
    assert!(matches!(
        apply(&mut store, WriteOp::LeaseRevoke { lease_id }),
        WriteResult::LeaseEnded {
            keys_deleted: 1,
            ..
        }
    ));
    assert!(store.get(b"put-in-txn").is_some());
    assert!(store.get(b"kept").is_none());
}
