//! Scenario tests for the key-value state machine.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: key.as_bytes().to_vec(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn delete(key: &str) -> WriteOp {
    WriteOp::Delete {
        key: key.as_bytes().to_vec(),
    }
}

fn cas(key: &str, expected_mod_index: u64, value: &str) -> WriteOp {
    WriteOp::Cas {
        key: key.as_bytes().to_vec(),
        expected_mod_index,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn cas_delete(key: &str, expected_mod_index: u64) -> WriteOp {
    WriteOp::CasDelete {
        key: key.as_bytes().to_vec(),
        expected_mod_index,
    }
}

fn request(op: WriteOp) -> Bytes {
    encode_write(&WriteRequest {
        idempotency_key: None,
        op,
    })
}

fn keyed_request(idempotency_key: &str, op: WriteOp) -> Bytes {
    encode_write(&WriteRequest {
        idempotency_key: Some(idempotency_key.to_string()),
        op,
    })
}

/// A store with a small idempotency table, applying at consecutive indices from 1.
struct Harness {
    store: KvStore,
}

impl Harness {
    fn new() -> Self {
        Harness {
            store: KvStore::new(KvOptions {
                idempotency_keys_max: 3,
            }),
        }
    }

    fn next_index(&self) -> u64 {
        self.store.applied_index() + 1
    }

    fn apply(&mut self, op: WriteOp) -> Result<WriteResult, KvError> {
        let index = self.next_index();
        self.store.apply(index, &request(op))
    }

    fn apply_keyed(&mut self, idempotency_key: &str, op: WriteOp) -> Result<WriteResult, KvError> {
        let index = self.next_index();
        self.store.apply(index, &keyed_request(idempotency_key, op))
    }

    fn data(&self, key: &str) -> Option<Bytes> {
        self.store.get(key).map(|value| value.data)
    }
}

#[test]
fn put_creates_then_overwrites_keeping_the_create_index() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(put("a", "1")),
        Ok(WriteResult::Put {
            mod_index: 1,
            created: true
        })
    );
    assert_eq!(
        h.apply(put("a", "2")),
        Ok(WriteResult::Put {
            mod_index: 2,
            created: false
        })
    );
    let value = h.store.get("a").unwrap();
    assert_eq!(
        (&value.data[..], value.create_index, value.mod_index),
        (&b"2"[..], 1, 2)
    );
    assert_eq!(h.store.len(), 1);
    assert_eq!(h.store.applied_index(), 2);
}

#[test]
fn delete_reports_whether_the_key_existed() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    assert_eq!(
        h.apply(delete("a")),
        Ok(WriteResult::Deleted { existed: true })
    );
    assert_eq!(
        h.apply(delete("a")),
        Ok(WriteResult::Deleted { existed: false })
    );
    assert!(h.store.is_empty());
    assert_eq!(h.store.get("a"), None);
}

#[test]
fn recreated_key_gets_a_new_create_index() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    h.apply(delete("a")).unwrap();
    assert_eq!(
        h.apply(put("a", "2")),
        Ok(WriteResult::Put {
            mod_index: 3,
            created: true
        })
    );
    assert_eq!(h.store.get("a").unwrap().create_index, 3);
}

#[test]
fn cas_with_zero_creates_only_when_absent() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(cas("a", 0, "1")),
        Ok(WriteResult::CasOk { mod_index: 1 })
    );
    assert_eq!(h.store.get("a").unwrap().create_index, 1);
    assert_eq!(
        h.apply(cas("a", 0, "2")),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 1
        })
    );
    assert_eq!(h.data("a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn cas_swaps_only_at_the_expected_mod_index() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    h.apply(put("a", "2")).unwrap();
    assert_eq!(
        h.apply(cas("a", 1, "x")),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 2
        })
    );
    assert_eq!(h.data("a").as_deref(), Some(&b"2"[..]));
    assert_eq!(
        h.apply(cas("a", 2, "3")),
        Ok(WriteResult::CasOk { mod_index: 4 })
    );
    let value = h.store.get("a").unwrap();
    assert_eq!(
        (&value.data[..], value.create_index, value.mod_index),
        (&b"3"[..], 1, 4)
    );
}

#[test]
fn cas_on_an_absent_key_reports_mod_index_zero() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(cas("a", 7, "x")),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 0
        })
    );
    assert!(h.store.is_empty());
}

#[test]
fn cas_delete_removes_only_at_the_expected_mod_index() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    assert_eq!(
        h.apply(cas_delete("a", 5)),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 1
        })
    );
    assert_eq!(
        h.apply(cas_delete("a", 0)),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 1
        })
    );
    assert!(h.store.get("a").is_some());
    assert_eq!(
        h.apply(cas_delete("a", 1)),
        Ok(WriteResult::Deleted { existed: true })
    );
    assert!(h.store.is_empty());
    // Expecting absence of an absent key holds and deletes nothing.
    assert_eq!(
        h.apply(cas_delete("a", 0)),
        Ok(WriteResult::Deleted { existed: false })
    );
    assert_eq!(
        h.apply(cas_delete("a", 1)),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 0
        })
    );
}

#[test]
fn noop_advances_only_the_applied_index() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    let before = h.store.clone();
    h.store.apply_noop(2);
    assert_eq!(h.store.applied_index(), 2);
    assert_eq!(h.store.get("a"), before.get("a"));
    assert_eq!(h.store.len(), 1);
    assert_eq!(
        h.apply(put("b", "2")),
        Ok(WriteResult::Put {
            mod_index: 3,
            created: true
        })
    );
}

#[test]
fn gaps_in_applied_indices_are_allowed() {
    let mut store = KvStore::new(KvOptions::default());
    assert_eq!(
        store.apply(5, &request(put("a", "1"))),
        Ok(WriteResult::Put {
            mod_index: 5,
            created: true
        })
    );
    assert_eq!(store.applied_index(), 5);
}

#[test]
#[should_panic(expected = "applying index 2 at or below the applied index 2")]
fn applying_an_index_twice_panics() {
    let mut store = KvStore::new(KvOptions::default());
    store.apply(1, &request(put("a", "1"))).unwrap();
    store.apply_noop(2);
    store.apply_noop(2);
}

#[test]
fn empty_and_overlong_keys_are_refused_but_the_index_advances() {
    let mut h = Harness::new();
    assert_eq!(h.apply(put("", "1")), Err(KvError::EmptyKey));
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    assert_eq!(
        h.apply(put(&long_key, "1")),
        Err(KvError::KeyTooLong {
            key_bytes: KEY_BYTES_MAX + 1,
            key_bytes_max: KEY_BYTES_MAX
        })
    );
    assert_eq!(h.store.applied_index(), 2);
    assert!(h.store.is_empty());
    let longest_key = "k".repeat(KEY_BYTES_MAX);
    assert_eq!(
        h.apply(put(&longest_key, "1")),
        Ok(WriteResult::Put {
            mod_index: 3,
            created: true
        })
    );
}

#[test]
fn bad_idempotency_keys_are_refused() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply_keyed("", put("a", "1")),
        Err(KvError::BadIdempotencyKey {
            key_bytes: 0,
            key_bytes_max: IDEMPOTENCY_KEY_BYTES_MAX
        })
    );
    let long = "i".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1);
    assert!(matches!(
        h.apply_keyed(&long, put("a", "1")),
        Err(KvError::BadIdempotencyKey { .. })
    ));
    assert!(h.store.is_empty());
    assert_eq!(h.store.idempotency_keys_len(), 0);
}

#[test]
fn bad_bytes_are_an_error_not_a_panic() {
    let mut store = KvStore::new(KvOptions::default());
    let good = request(put("a", "1"));
    // One byte after a request reads as a quota stamp: bytes after the stamp are trailing.
    let mut trailing = encode_command(
        &decode_write(&good).unwrap(),
        CommandStamp {
            quota_bytes: 1 << 20,
        },
    )
    .to_vec();
    trailing.push(0);
    let mut bad_stamp = good.to_vec();
    bad_stamp.push(0xff); // a varint that never ends
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 16],
        vec![0x00, 0x09], // no idempotency key, unknown op variant
        vec![0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f], // a key length far beyond the input
        good[..good.len() - 1].to_vec(), // truncated
        trailing,
        bad_stamp,
    ];
    for (offset, data) in cases.iter().enumerate() {
        let index = offset as u64 + 1;
        let result = store.apply(index, data);
        assert!(
            matches!(result, Err(KvError::Decode { .. })),
            "case {offset}: {result:?}"
        );
        assert_eq!(store.applied_index(), index);
    }
    assert!(store.is_empty());
}

#[test]
fn encode_decode_round_trip() {
    let original = WriteRequest {
        idempotency_key: Some("client-1/42".to_string()),
        op: cas("k", 9, "v"),
    };
    assert_eq!(decode_write(&encode_write(&original)), Ok(original));
}

#[test]
fn idempotent_retry_returns_the_first_result_and_does_not_reapply() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply_keyed("req-1", put("a", "1")),
        Ok(WriteResult::Put {
            mod_index: 1,
            created: true
        })
    );
    h.apply(put("a", "2")).unwrap();
    // The retry would overwrite with "1" and report created=false; instead it replays.
    assert_eq!(
        h.apply_keyed("req-1", put("a", "1")),
        Ok(WriteResult::Put {
            mod_index: 1,
            created: true
        })
    );
    assert_eq!(h.data("a").as_deref(), Some(&b"2"[..]));
    assert_eq!(h.store.get("a").unwrap().mod_index, 2);
    assert_eq!(h.store.applied_index(), 3);
}

#[test]
fn a_retry_answers_with_the_index_of_its_first_application() {
    let mut h = Harness::new();
    let txn = WriteOp::Txn(Txn {
        compares: Vec::new(),
        success: vec![
            TxnOp::Put {
                key: b"a".to_vec(),
                value: Bytes::from_static(b"1"),
            },
            TxnOp::Get { key: b"b".to_vec() },
        ],
        failure: Vec::new(),
    });
    let first = h
        .store
        .apply_recording(1, &keyed_request("t-1", txn.clone()), &mut Vec::new())
        .unwrap();
    assert_eq!(first.index, 1);
    h.apply(put("b", "2")).unwrap();
    let mut changes = Vec::new();
    let retried = h
        .store
        .apply_recording(3, &keyed_request("t-1", txn), &mut changes)
        .unwrap();
    // The get of "b" in the first result read the store at index 1, before "b" existed: the
    // answer says so by naming index 1, not the retry's own entry 3.
    assert_eq!(retried, first);
    assert!(changes.is_empty(), "a retry changes nothing: {changes:?}");
    assert_eq!(h.store.applied_index(), 3);
    // A command without a key answers at its own index.
    let plain = h
        .store
        .apply_recording(4, &request(put("c", "3")), &mut Vec::new())
        .unwrap();
    assert_eq!(plain.index, 4);
}

#[test]
fn idempotent_retry_with_a_different_op_still_returns_the_first_result() {
    let mut h = Harness::new();
    h.apply_keyed("req-1", put("a", "1")).unwrap();
    assert_eq!(
        h.apply_keyed("req-1", delete("a")),
        Ok(WriteResult::Put {
            mod_index: 1,
            created: true
        })
    );
    assert_eq!(h.data("a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn idempotent_retry_survives_snapshot_and_restore() {
    let mut h = Harness::new();
    h.apply_keyed("req-1", cas("a", 0, "1")).unwrap();
    h.apply(put("a", "2")).unwrap();
    let snapshot = h.store.snapshot();
    let mut restored = KvStore::restore(&snapshot, h.store.options().clone()).unwrap();
    assert_eq!(
        restored.apply(3, &keyed_request("req-1", cas("a", 0, "1"))),
        Ok(WriteResult::CasOk { mod_index: 1 })
    );
    assert_eq!(&restored.get("a").unwrap().data[..], b"2");
}

#[test]
fn failed_cas_results_are_remembered_too() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    assert_eq!(
        h.apply_keyed("req-1", cas("a", 0, "x")),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 1
        })
    );
    h.apply(delete("a")).unwrap();
    // The key is now absent, so a fresh create would succeed; the retry must not.
    assert_eq!(
        h.apply_keyed("req-1", cas("a", 0, "x")),
        Ok(WriteResult::CasMismatch {
            current_mod_index: 1
        })
    );
    assert!(h.store.is_empty());
}

#[test]
fn oldest_idempotency_keys_are_evicted_first() {
    let mut h = Harness::new(); // keeps 3 keys
    for (n, key) in ["k1", "k2", "k3", "k4"].iter().enumerate() {
        h.apply_keyed(&format!("req-{}", n + 1), put(key, "v"))
            .unwrap();
    }
    assert_eq!(h.store.idempotency_keys_len(), 3);
    // req-1 (oldest) is forgotten: its retry applies again, at a new index.
    assert_eq!(
        h.apply_keyed("req-1", put("k1", "v")),
        Ok(WriteResult::Put {
            mod_index: 5,
            created: false
        })
    );
    // Recording req-1 again evicted req-2; req-3 and req-4 are still remembered.
    assert_eq!(
        h.apply_keyed("req-4", put("k4", "v")),
        Ok(WriteResult::Put {
            mod_index: 4,
            created: true
        })
    );
    assert_eq!(
        h.apply_keyed("req-3", put("k3", "v")),
        Ok(WriteResult::Put {
            mod_index: 3,
            created: true
        })
    );
    assert_eq!(
        h.apply_keyed("req-2", put("k2", "v")),
        Ok(WriteResult::Put {
            mod_index: 8,
            created: false
        })
    );
}

#[test]
fn a_retry_does_not_refresh_the_age_of_its_key() {
    let mut h = Harness::new(); // keeps 3 keys
    h.apply_keyed("req-1", put("a", "v")).unwrap();
    h.apply_keyed("req-2", put("b", "v")).unwrap();
    h.apply_keyed("req-1", put("a", "v")).unwrap(); // replay, age unchanged
    h.apply_keyed("req-3", put("c", "v")).unwrap();
    h.apply_keyed("req-4", put("d", "v")).unwrap(); // evicts req-1
    assert_eq!(
        h.apply_keyed("req-1", put("a", "v")),
        Ok(WriteResult::Put {
            mod_index: 6,
            created: false
        })
    );
}

#[test]
fn zero_idempotency_keys_max_disables_deduplication() {
    let mut store = KvStore::new(KvOptions {
        idempotency_keys_max: 0,
    });
    store
        .apply(1, &keyed_request("req-1", put("a", "1")))
        .unwrap();
    assert_eq!(
        store.apply(2, &keyed_request("req-1", put("a", "1"))),
        Ok(WriteResult::Put {
            mod_index: 2,
            created: false
        })
    );
    assert_eq!(store.idempotency_keys_len(), 0);
}

fn populated_store() -> KvStore {
    let mut h = Harness::new();
    h.apply(put("b", "2")).unwrap();
    h.apply_keyed("req-1", put("a", "1")).unwrap();
    h.store.apply_noop(3);
    h.apply_keyed("req-2", cas("b", 1, "22")).unwrap();
    h.apply(put("c", "3")).unwrap();
    h.apply(delete("c")).unwrap();
    h.store
}

#[test]
fn a_clone_is_a_frozen_view_while_the_original_keeps_applying() {
    let mut h = Harness::new();
    h.apply(put("a", "1")).unwrap();
    h.apply_keyed("k1", put("b", "2")).unwrap();
    let view = h.store.clone();
    let view_bytes = view.snapshot();

    h.apply(put("a", "changed")).unwrap();
    h.apply(delete("b")).unwrap();
    h.apply_keyed("k2", put("c", "3")).unwrap();
    h.apply_keyed("k3", put("d", "4")).unwrap();
    h.apply_keyed("k4", put("e", "5")).unwrap(); // evicts k1 (3 keys kept)

    assert_eq!(view.snapshot(), view_bytes, "the view did not move");
    assert_eq!(view.applied_index(), 2);
    assert_eq!(&view.get("a").unwrap().data[..], b"1");
    assert!(view.get("c").is_none());
    let view_keys: Vec<&str> = view.idempotency_iter().map(|(key, _, _)| key).collect();
    assert_eq!(view_keys, ["k1"]);
    let live_keys: Vec<&str> = h.store.idempotency_iter().map(|(key, _, _)| key).collect();
    assert_eq!(live_keys, ["k2", "k3", "k4"]);
    assert_eq!(h.data("a").as_deref(), Some(&b"changed"[..]));
    assert_ne!(h.store.state_hash(), view.state_hash());
}

#[test]
fn snapshot_restore_round_trip_is_equal() {
    let store = populated_store();
    let snapshot = store.snapshot();
    let restored = KvStore::restore(&snapshot, store.options().clone()).unwrap();
    assert_eq!(restored, store);
    assert_eq!(restored.state_hash(), store.state_hash());
    assert_eq!(restored.snapshot(), snapshot);
    assert_eq!(restored.applied_index(), 6);
    assert_eq!(restored.idempotency_keys_len(), 2);
}

#[test]
fn different_histories_reaching_equal_states_hash_equal() {
    let mut first = KvStore::new(KvOptions::default());
    first.apply(1, &request(put("x", "1"))).unwrap();
    first.apply(2, &request(put("y", "2"))).unwrap();
    first.apply(3, &request(put("w", "0"))).unwrap();
    first.apply(4, &request(delete("y"))).unwrap();
    first.apply(5, &request(cas_delete("w", 3))).unwrap();
    let mut second = KvStore::new(KvOptions::default());
    second.apply(1, &request(put("x", "1"))).unwrap();
    second.apply(2, &request(delete("y"))).unwrap();
    second.apply_noop(5);
    assert_eq!(first, second);
    assert_eq!(first.state_hash(), second.state_hash());
    assert_eq!(first.snapshot(), second.snapshot());
}

#[test]
fn state_hash_changes_with_any_part_of_the_state() {
    let store = populated_store();
    let base = store.state_hash();
    let mut noop = store.clone();
    noop.apply_noop(7);
    assert_ne!(noop.state_hash(), base, "applied index");
    let mut value = store.clone();
    value.apply(7, &request(put("a", "1"))).unwrap();
    value.applied_index = 6;
    assert_ne!(value.state_hash(), base, "mod index of a rewritten key");
    let mut keyed = store.clone();
    keyed
        .apply(7, &keyed_request("req-3", delete("nothing")))
        .unwrap();
    keyed.applied_index = 6;
    assert_ne!(keyed.state_hash(), base, "idempotency table");
}

#[test]
fn restore_applies_smaller_idempotency_retention() {
    let store = populated_store(); // remembers req-1 (index 2) and req-2 (index 4)
    let mut restored = KvStore::restore(
        &store.snapshot(),
        KvOptions {
            idempotency_keys_max: 1,
        },
    )
    .unwrap();
    assert_eq!(restored.idempotency_keys_len(), 1);
    assert_eq!(
        restored.apply(7, &keyed_request("req-1", put("a", "1"))),
        Ok(WriteResult::Put {
            mod_index: 7,
            created: false
        })
    );
}

#[test]
fn restore_refuses_damaged_snapshots() {
    let snapshot = populated_store().snapshot().to_vec();
    let check = |data: &[u8], reason_part: &str| match KvStore::restore(data, KvOptions::default())
    {
        Err(KvError::CorruptSnapshot { reason }) => {
            assert!(
                reason.contains(reason_part),
                "{reason:?} lacks {reason_part:?}"
            )
        }
        other => panic!("expected a corrupt snapshot ({reason_part}), got {other:?}"),
    };
    check(&snapshot[..3], "shorter");
    let mut magic = snapshot.clone();
    magic[0] ^= 1;
    check(&magic, "magic");
    let mut version = snapshot.clone();
    version[4] = 9;
    check(&version, "version");
    let mut flipped = snapshot.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    check(&flipped, "crc32c");
    check(&snapshot[..snapshot.len() - 1], "crc32c");
}

/// Builds snapshot bytes around a hand-made body (applied index, keys, idempotency records;
/// no lease), with a valid header.
fn snapshot_with_body(body: &impl serde::Serialize) -> Vec<u8> {
    let mut body = postcard::to_allocvec(body).unwrap();
    body.push(0); // an empty sequence of leases
    let mut out = b"RKVS".to_vec();
    out.push(2);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn restore_refuses_broken_invariants_behind_a_valid_checksum() {
    let value = |create_index: u64, mod_index: u64| Value {
        data: Bytes::from_static(b"v"),
        create_index,
        mod_index,
    };
    type Body = (u64, Vec<(String, Value)>, Vec<(String, u64, WriteResult)>);
    let ok = WriteResult::Deleted { existed: false };
    let cases: Vec<(Body, &str)> = vec![
        (
            (5, vec![("a".into(), value(1, 6))], vec![]),
            "applied_index(5)",
        ),
        (
            (5, vec![("a".into(), value(3, 2))], vec![]),
            "create_index(3)",
        ),
        (
            (5, vec![("a".into(), value(0, 2))], vec![]),
            "create_index(0)",
        ),
        (
            (
                5,
                vec![("b".into(), value(1, 1)), ("a".into(), value(1, 1))],
                vec![],
            ),
            "out of order",
        ),
        (
            (
                5,
                vec![("a".into(), value(1, 1)), ("a".into(), value(1, 1))],
                vec![],
            ),
            "out of order",
        ),
        ((5, vec![("".into(), value(1, 1))], vec![]), "empty"),
        ((5, vec![], vec![("r".into(), 6, ok.clone())]), "index(6)"),
        (
            (
                5,
                vec![],
                vec![("r".into(), 2, ok.clone()), ("s".into(), 2, ok.clone())],
            ),
            "share index 2",
        ),
        (
            (
                5,
                vec![],
                vec![("s".into(), 1, ok.clone()), ("r".into(), 2, ok.clone())],
            ),
            "out of order",
        ),
    ];
    for (body, reason_part) in cases {
        match KvStore::restore(&snapshot_with_body(&body), KvOptions::default()) {
            Err(KvError::CorruptSnapshot { reason }) => {
                assert!(
                    reason.contains(reason_part),
                    "{reason:?} lacks {reason_part:?}"
                )
            }
            other => panic!("{body:?}: expected a corrupt snapshot, got {other:?}"),
        }
    }
    // The same shape with sound values restores.
    let sound: Body = (
        5,
        vec![("a".into(), value(1, 5))],
        vec![("r".into(), 5, ok)],
    );
    let store = KvStore::restore(&snapshot_with_body(&sound), KvOptions::default()).unwrap();
    assert_eq!(store.snapshot().to_vec(), snapshot_with_body(&sound));
    // A version 1 snapshot (UTF-8 keys, the same encoding, and no leases) still restores, to
    // the same store.
    let version_1 = {
        let body = postcard::to_allocvec(&sound).unwrap();
        let mut out = b"RKVS".to_vec();
        out.push(1);
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    };
    assert_eq!(
        KvStore::restore(&version_1, KvOptions::default()).unwrap(),
        store
    );
}

#[test]
fn list_filters_by_prefix_in_ascending_order() {
    let mut h = Harness::new();
    for key in [
        "user/2", "user/10", "admin", "user/1", "userx", "user/", "v",
    ] {
        h.apply(put(key, key)).unwrap();
    }
    let keys = |page: Vec<(&[u8], Value)>| {
        page.into_iter()
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(h.store.list("user/", None, 100)),
        ["user/", "user/1", "user/10", "user/2"]
    );
    assert_eq!(
        keys(h.store.list("", None, 3)),
        ["admin", "user/", "user/1"]
    );
    assert_eq!(
        keys(h.store.list("nothing", None, 10)),
        Vec::<String>::new()
    );
    assert_eq!(keys(h.store.list("user/", None, 0)), Vec::<String>::new());
    let (_, value) = h.store.list("admin", None, 1).remove(0);
    assert_eq!(&value.data[..], b"admin");
}

#[test]
fn list_paginates_with_after() {
    let mut h = Harness::new();
    for n in 0..7 {
        h.apply(put(&format!("p/{n}"), "v")).unwrap();
    }
    h.apply(put("q", "v")).unwrap();
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page: Vec<String> = h
            .store
            .list("p/", after.as_deref().map(str::as_bytes), 3)
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
            .collect();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
    }
    assert_eq!(
        pages,
        [
            vec!["p/0", "p/1", "p/2"],
            vec!["p/3", "p/4", "p/5"],
            vec!["p/6"]
        ]
    );
    // A cursor before the prefix starts at the prefix; one past it ends the listing.
    assert_eq!(h.store.list("p/", Some(b"a"), 1)[0].0, b"p/0");
    assert_eq!(h.store.list("p/", Some(b"p/"), 1)[0].0, b"p/0");
    assert_eq!(h.store.list("p/", Some(b"p/35"), 1)[0].0, b"p/4");
    assert!(h.store.list("p/", Some(b"p0"), 10).is_empty());
}

#[test]
fn keys_are_any_bytes_listed_in_byte_order_and_survive_a_snapshot() {
    let mut h = Harness::new();
    let keys: [&[u8]; 4] = [b"k\xff", b"k\x00", b"k", b"k\xc3\xa9"];
    for key in keys {
        h.apply(WriteOp::Put {
            key: key.to_vec(),
            value: Bytes::from_static(b"v"),
        })
        .unwrap();
    }
    let listed: Vec<&[u8]> = h
        .store
        .list("k", None, 10)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, [&b"k"[..], b"k\x00", b"k\xc3\xa9", b"k\xff"]);
    let restored = KvStore::restore(&h.store.snapshot(), h.store.options().clone()).unwrap();
    assert_eq!(restored, h.store);
    assert!(restored.get(b"k\xff").is_some());
}

#[test]
fn a_command_written_when_keys_were_strings_decodes_to_the_same_key_bytes() {
    // The encoding of the old `WriteOp::Put { key: String, .. }`, written by hand.
    #[derive(serde::Serialize)]
    enum OldOp {
        Put { key: String, value: Bytes },
    }
    #[derive(serde::Serialize)]
    struct OldRequest {
        idempotency_key: Option<String>,
        op: OldOp,
    }
    let old = postcard::to_allocvec(&OldRequest {
        idempotency_key: Some("r1".into()),
        op: OldOp::Put {
            key: "config/é".into(),
            value: Bytes::from_static(b"v"),
        },
    })
    .unwrap();
    let decoded = decode_write(&old).unwrap();
    assert_eq!(decoded.op.key(), Some("config/é".as_bytes()));
    assert_eq!(decoded.idempotency_key.as_deref(), Some("r1"));
}

/// One step of a random history: a command, a no-op, or undecodable bytes.
#[derive(Clone, Debug)]
enum Step {
    Command(WriteRequest),
    Noop,
    Garbage(Vec<u8>),
}

fn op_strategy() -> impl Strategy<Value = WriteOp> {
    // Keys are any bytes: a few that are not UTF-8 (and one with a NUL) among the letters.
    let key = prop_oneof![
        Just(Vec::new()),
        "[a-d]{1,2}".prop_map(String::into_bytes),
        Just(vec![0xff]),
        Just(vec![b'a', 0x00, 0xfe]),
    ];
    let value = proptest::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from);
    let expected_mod_index = prop_oneof![Just(0u64), 1u64..40];
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(key, value)| WriteOp::Put { key, value }),
        key.clone().prop_map(|key| WriteOp::Delete { key }),
        (key.clone(), expected_mod_index.clone(), value).prop_map(
            |(key, expected_mod_index, value)| WriteOp::Cas {
                key,
                expected_mod_index,
                value
            }
        ),
        (key, expected_mod_index).prop_map(|(key, expected_mod_index)| WriteOp::CasDelete {
            key,
            expected_mod_index
        }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let idempotency_key = proptest::option::of("r[0-7]");
    prop_oneof![
        8 => (idempotency_key, op_strategy())
            .prop_map(|(idempotency_key, op)| Step::Command(WriteRequest { idempotency_key, op })),
        1 => Just(Step::Noop),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Step::Garbage),
    ]
}

/// Applies `steps` at consecutive indices; a no-op yields `None`.
fn run(store: &mut KvStore, steps: &[Step]) -> Vec<Option<Result<WriteResult, KvError>>> {
    steps
        .iter()
        .map(|step| {
            let index = store.applied_index() + 1;
            match step {
                Step::Command(write) => Some(store.apply(index, &encode_write(write))),
                Step::Garbage(data) => Some(store.apply(index, data)),
                Step::Noop => {
                    store.apply_noop(index);
                    None
                }
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn replicas_agree_and_snapshot_midway_changes_nothing(
        steps in proptest::collection::vec(step_strategy(), 0..60),
        split_permille in 0usize..=1000,
        idempotency_keys_max in 0usize..6,
    ) {
        let options = KvOptions { idempotency_keys_max };
        let mut first = KvStore::new(options.clone());
        let mut second = KvStore::new(options.clone());
        let first_results = run(&mut first, &steps);
        let second_results = run(&mut second, &steps);
        prop_assert_eq!(&first_results, &second_results);
        prop_assert_eq!(first.state_hash(), second.state_hash());
        prop_assert_eq!(&first, &second);

        let split = steps.len() * split_permille / 1000;
        let mut before = KvStore::new(options.clone());
        let mut results = run(&mut before, &steps[..split]);
        let mut restored = KvStore::restore(&before.snapshot(), options).unwrap();
        prop_assert_eq!(&restored, &before);
        results.extend(run(&mut restored, &steps[split..]));
        prop_assert_eq!(&results, &first_results);
        prop_assert_eq!(restored.state_hash(), first.state_hash());
        prop_assert_eq!(restored.snapshot(), first.snapshot());
        prop_assert_eq!(&restored, &first);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut store = KvStore::new(KvOptions::default());
        let _ = store.apply(1, &data);
        prop_assert_eq!(store.applied_index(), 1);
        let _ = KvStore::restore(&data, KvOptions::default());
    }
}

#[test]
fn encoded_command_keeps_no_spare_capacity() {
    // The leader holds every entry since the last snapshot in memory: a buffer left at its
    // doubled capacity almost doubles that log's footprint.
    let request = WriteRequest {
        idempotency_key: None,
        op: WriteOp::Put {
            key: b"bench-00000001".to_vec(),
            value: Bytes::from(vec![b'v'; 256]),
        },
    };
    let encoded = encode_command(
        &request,
        CommandStamp {
            quota_bytes: QUOTA_BYTES_DEFAULT,
        },
    );
    let length = encoded.len();
    let buffer = encoded
        .try_into_mut()
        .expect("a freshly encoded command is the only owner of its buffer");
    assert_eq!(
        buffer.capacity(),
        length,
        "the encoded command's buffer has {} spare bytes",
        buffer.capacity() - length
    );
}

#[test]
fn an_applied_value_shares_the_entry_buffer_and_outlives_it() {
    let mut store = KvStore::new(KvOptions::default());
    let value = "v".repeat(256);
    let entry = request(put("k", &value));
    store
        .apply_recording(1, &entry, &mut Vec::new())
        .expect("a valid put");
    let stored = store.get("k").expect("the key").data.clone();
    let entry_range = entry.as_ptr() as usize..entry.as_ptr() as usize + entry.len();
    assert!(
        entry_range.contains(&(stored.as_ptr() as usize)),
        "the store copied a value the log entry already holds"
    );
    drop(entry);
    assert_eq!(store.get("k").unwrap().data, Bytes::from(value));
}

/// The store keeps a written key and value as slices of the command's own buffer (one copy,
/// shared with the log; see `record`), for a put, a compare-and-swap and a transaction's put,
/// and a watch's change names the key without copying it either.
#[test]
fn a_written_key_and_value_share_the_commands_buffer() {
    let value = "v".repeat(300);
    let within = |command: &Bytes, bytes: &[u8]| {
        let start = command.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        at >= start && at + bytes.len() <= start + command.len()
    };
    let mut store = KvStore::new(KvOptions::default());
    let txn_put = WriteOp::Txn(Txn {
        compares: Vec::new(),
        success: vec![TxnOp::Put {
            key: b"t".to_vec(),
            value: Bytes::from(value.clone()),
        }],
        failure: Vec::new(),
    });
    for (index, (key, op)) in [
        ("p", put("p", &value)),
        ("c", cas("c", 0, &value)),
        ("t", txn_put),
    ]
    .into_iter()
    .enumerate()
    {
        let command = request(op);
        let mut changes = Vec::new();
        store
            .apply_recording(index as u64 + 1, &command, &mut changes)
            .unwrap();
        let stored = store.get(key).unwrap();
        assert_eq!(&stored.data[..], value.as_bytes());
        assert!(
            within(&command, &stored.data),
            "{key}: the value was copied"
        );
        assert!(
            within(&command, &changes[0].key),
            "{key}: the key was copied"
        );
    }
}
