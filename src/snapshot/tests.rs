//! Snapshot files: round trips, and every corruption or truncation refused. They run in both
//! builds (`cargo test --lib snapshot::` and `cargo sim --lib snapshot::`).

use bytes::Bytes;

use super::*;
use crate::env::testing::run_with_dir;
use crate::kv::{encode_write, WriteOp, WriteRequest};
use crate::raft::Membership;

/// A store with `keys` keys, a deleted one, and idempotency records; applied to index
/// `keys + 3`.
fn sample_store(keys: u64) -> KvStore {
    let mut store = KvStore::new(KvOptions::default());
    for index in 1..=keys {
        let request = WriteRequest {
            idempotency_key: (index % 3 == 0).then(|| format!("client-{index}")),
            op: WriteOp::Put {
                key: format!("key-{:03}", (index * 7) % 101).into_bytes(),
                value: Bytes::from(format!("value {index}").repeat(index as usize % 4 + 1)),
            },
        };
        store.apply(index, &encode_write(&request)).unwrap();
    }
    let delete = WriteRequest {
        idempotency_key: Some("deleter".into()),
        op: WriteOp::Delete {
            key: "key-007".into(),
        },
    };
    store.apply(keys + 1, &encode_write(&delete)).unwrap();
    store.apply_noop(keys + 3);
    store
}

fn meta_of(store: &KvStore) -> SnapshotMeta {
    SnapshotMeta {
        index: store.applied_index(),
        term: 3,
        membership: Membership::with_voters([1, 2, 3]),
    }
}

/// Writes `store` with small chunks into `dir`; returns the file's path.
async fn write_small_chunks(dir: &Path, store: &KvStore) -> PathBuf {
    let written = write(dir, &meta_of(store), store, 96).await.unwrap();
    assert_eq!(written.path, dir.join(file_name(&meta_of(store))));
    written.path
}

/// Replaces the file's content (unsynced: these files need no durability).
async fn overwrite(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = fs::File::create(path).await?;
    file.write_at(0, bytes).await
}

fn assert_corrupt(result: Result<SnapshotMeta, SnapshotError>, what: &str) {
    match result {
        Err(SnapshotError::Corrupt { .. }) => {}
        other => panic!("{what}: expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn a_written_file_loads_back_into_the_same_store() {
    run_with_dir(|dir| async move {
        let store = sample_store(40);
        let path = write_small_chunks(&dir, &store).await;
        assert_eq!(
            fs::list_dir(&dir).await.unwrap(),
            vec![file_name(&meta_of(&store))]
        );
        assert_eq!(verify(&path).await.unwrap(), meta_of(&store));
        let (meta, loaded) = load(&path, KvOptions::default()).await.unwrap();
        assert_eq!(meta, meta_of(&store));
        assert_eq!(loaded, store);
        assert_eq!(loaded.state_hash(), store.state_hash());
    });
}

#[test]
fn an_empty_store_round_trips() {
    run_with_dir(|dir| async move {
        let mut store = KvStore::new(KvOptions::default());
        store.apply_noop(5);
        let path = write_small_chunks(&dir, &store).await;
        let (_, loaded) = load(&path, KvOptions::default()).await.unwrap();
        assert_eq!(loaded, store);
    });
}

#[test]
fn equal_stores_write_identical_files_whatever_the_chunk_size() {
    run_with_dir(|dir| async move {
        let store = sample_store(30);
        let path = write_small_chunks(&dir, &store).await;
        let small = fs::read(&path).await.unwrap();
        let rebuilt = load(&path, KvOptions::default()).await.unwrap().1;
        fs::remove_file(&path).await.unwrap();
        let again = write_small_chunks(&dir, &rebuilt).await;
        assert_eq!(fs::read(&again).await.unwrap(), small);
        // Chunking changes the frames, never the decoded state.
        fs::remove_file(&again).await.unwrap();
        let large = write(&dir, &meta_of(&store), &store, CHUNK_BYTES_DEFAULT)
            .await
            .unwrap();
        assert_ne!(fs::read(&large.path).await.unwrap(), small);
        assert_eq!(
            load(&large.path, KvOptions::default()).await.unwrap().1,
            store
        );
    });
}

#[test]
fn every_single_byte_corruption_is_refused() {
    run_with_dir(|dir| async move {
        let store = sample_store(12);
        let path = write_small_chunks(&dir, &store).await;
        let good = fs::read(&path).await.unwrap();
        assert!(good.len() > 300, "the sample spans several chunks");
        let damaged_path = dir.join("damaged.snap");
        for position in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = good.clone();
                damaged[position] ^= flip;
                overwrite(&damaged_path, &damaged).await.unwrap();
                let what = format!("byte {position} xor {flip:#04x}");
                assert_corrupt(verify(&damaged_path).await, &what);
                assert!(
                    load(&damaged_path, KvOptions::default()).await.is_err(),
                    "{what}: loaded"
                );
            }
        }
    });
}

#[test]
fn every_truncation_and_any_extension_is_refused() {
    run_with_dir(|dir| async move {
        let store = sample_store(12);
        let path = write_small_chunks(&dir, &store).await;
        let good = fs::read(&path).await.unwrap();
        let damaged_path = dir.join("damaged.snap");
        for len in 0..good.len() {
            overwrite(&damaged_path, &good[..len]).await.unwrap();
            let what = format!("truncated to {len} of {} bytes", good.len());
            assert_corrupt(verify(&damaged_path).await, &what);
            assert!(
                load(&damaged_path, KvOptions::default()).await.is_err(),
                "{what}"
            );
        }
        let mut extended = good.clone();
        extended.push(0);
        overwrite(&damaged_path, &extended).await.unwrap();
        assert_corrupt(verify(&damaged_path).await, "one byte appended");
    });
}

#[test]
fn a_chunk_claiming_more_than_the_limit_is_refused_before_reading_it() {
    run_with_dir(|dir| async move {
        let store = sample_store(3);
        let path = write_small_chunks(&dir, &store).await;
        let good = fs::read(&path).await.unwrap();
        let meta_bytes = le_u32(&good[5..9]) as usize;
        let first_chunk = HEADER_PREFIX_BYTES + meta_bytes + 4;
        let damaged_path = dir.join("damaged.snap");
        // A length over the limit: refused on the number alone, no allocation.
        let mut huge = good.clone();
        huge[first_chunk..first_chunk + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        overwrite(&damaged_path, &huge).await.unwrap();
        match verify(&damaged_path).await {
            Err(SnapshotError::Corrupt { reason, offset, .. }) => {
                assert!(reason.contains("more than"), "{reason}");
                assert_eq!(offset, (first_chunk + CHUNK_FRAME_BYTES) as u64);
            }
            other => panic!("expected a corrupt chunk length, got {other:?}"),
        }
        // A length under the limit but past the end: refused as truncated, nothing read.
        let mut long = good;
        long[first_chunk..first_chunk + 4].copy_from_slice(&(60u32 << 20).to_le_bytes());
        overwrite(&damaged_path, &long).await.unwrap();
        match verify(&damaged_path).await {
            Err(SnapshotError::Corrupt { reason, .. }) => {
                assert!(reason.contains("truncated"), "{reason}")
            }
            other => panic!("expected a truncated chunk, got {other:?}"),
        }
    });
}

#[test]
fn the_writer_keeps_chunks_within_the_target() {
    run_with_dir(|dir| async move {
        let store = sample_store(60);
        let path = write_small_chunks(&dir, &store).await;
        let file = fs::read(&path).await.unwrap();
        let mut offset = HEADER_PREFIX_BYTES + le_u32(&file[5..9]) as usize + 4;
        let mut chunks = 0;
        loop {
            let payload_bytes = le_u32(&file[offset..offset + 4]) as usize;
            if payload_bytes == 0 {
                break;
            }
            // 96 bytes is the target; no sample record is larger than it.
            assert!(
                payload_bytes <= 96,
                "chunk {chunks} has {payload_bytes} bytes"
            );
            offset += CHUNK_FRAME_BYTES + payload_bytes;
            chunks += 1;
        }
        assert!(chunks > 5, "only {chunks} chunks");
    });
}

#[test]
fn file_names_sort_by_term_then_index_and_parse_back() {
    let meta = |term, index| SnapshotMeta {
        index,
        term,
        membership: Membership::default(),
    };
    let name = file_name(&meta(2, 0x1234));
    assert_eq!(name, "snap-0000000000000002-0000000000001234.snap");
    assert_eq!(parse_file_name(&name), Some((2, 0x1234)));
    assert!(file_name(&meta(2, 9)) < file_name(&meta(2, 10)));
    assert!(file_name(&meta(2, 0xffff)) < file_name(&meta(3, 1)));
    assert_eq!(parse_file_name(&format!("{name}{TEMP_SUFFIX}")), None);
    assert_eq!(parse_file_name("snap-2-3.snap"), None);
    assert_eq!(parse_file_name("snapshot"), None);
}
