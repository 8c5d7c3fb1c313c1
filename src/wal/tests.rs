//! WAL tests. They run on real files in production (`cargo test --lib wal::`) and on the
//! simulated disk in simulation (`cargo sim --lib wal::`), through the same seam.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand_core::{RngCore, SeedableRng};

use super::format::decode_payload;
use super::*;
use crate::env::fs;
use crate::env::testing::run_with_dir;
use crate::raft::{EntryKind, Membership, SnapshotMeta};

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("value {index} of term {term}")),
    }
}

fn entries(indexes: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    indexes.map(|index| entry(index, term)).collect()
}

fn hard_state(term: Term, vote: Option<u64>, commit: Index) -> HardState {
    HardState { term, vote, commit }
}

fn snapshot(index: Index, term: Term) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: Membership::with_voters([1, 2, 3]),
        },
        data: Bytes::from(format!("state machine at {index}")),
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes_max: 256,
    }
}

async fn open(dir: &Path) -> (Wal, RestoreState) {
    open_with(dir, WalOptions::default()).await
}

async fn open_with(dir: &Path, options: WalOptions) -> (Wal, RestoreState) {
    match Wal::open(dir, options).await {
        Ok(opened) => opened,
        Err(error) => panic!("open {}: {error}", dir.display()),
    }
}

async fn open_error(dir: &Path) -> WalError {
    match Wal::open(dir, WalOptions::default()).await {
        Ok(_) => panic!("{} opened, expected an error", dir.display()),
        Err(error) => error,
    }
}

async fn segment_names(dir: &Path) -> Vec<String> {
    fs::list_dir(dir)
        .await
        .unwrap()
        .into_iter()
        .filter(|name| name.ends_with(SEGMENT_SUFFIX))
        .collect()
}

async fn last_segment(dir: &Path) -> PathBuf {
    dir.join(segment_names(dir).await.last().expect("a segment exists"))
}

/// Copies the files of `from` into the new directory `to`, with `edit` applied to `edited`.
async fn copy_dir_with(from: &Path, to: &Path, edited: &Path, edit: impl Fn(&mut Vec<u8>)) {
    fs::create_dir_all(to).await.unwrap();
    for name in fs::list_dir(from).await.unwrap() {
        let mut bytes = fs::read(from.join(&name)).await.unwrap();
        if from.join(&name) == edited {
            edit(&mut bytes);
        }
        let copy = fs::File::create(to.join(&name)).await.unwrap();
        copy.write_at(0, &bytes).await.unwrap();
        copy.sync().await.unwrap();
    }
    fs::sync_dir(to).await.unwrap();
}

/// Replaces the content of the file at `path`.
async fn overwrite(path: &Path, bytes: &[u8]) {
    let file = fs::File::create(path).await.unwrap();
    file.write_at(0, bytes).await.unwrap();
    file.sync().await.unwrap();
}

fn assert_corrupt(error: &WalError, expected_path: &Path, expected_offset: Option<u64>) {
    match error {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, expected_path, "{error}");
            if let Some(expected_offset) = expected_offset {
                assert_eq!(*offset, expected_offset, "{error}");
            }
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn a_fresh_directory_opens_empty() {
    run_with_dir(|dir| async move {
        let wal_dir = dir.join("not").join("yet").join("there");
        let (wal, restore) = open(&wal_dir).await;
        assert_eq!(wal.last_index(), 0);
        assert_eq!(restore.hard_state, HardState::default());
        assert!(restore.snapshot.is_none());
        assert!(restore.entries.is_empty());
        assert_eq!(segment_names(&wal_dir).await, vec![segment_name(1)]);
    });
}

#[test]
fn appended_entries_and_hard_state_survive_a_restart() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=3, 1)).await.unwrap();
        wal.save_hard_state(hard_state(1, Some(2), 2))
            .await
            .unwrap();
        wal.append(&entries(4..=6, 2)).await.unwrap();
        wal.save_hard_state(hard_state(2, None, 5)).await.unwrap();
        wal.sync().await.unwrap();
        assert_eq!(wal.last_index(), 6);
        assert_eq!(wal.term_at(4), Some(2));
        drop(wal);

        let (wal, restore) = open(&dir).await;
        let mut expected = entries(1..=3, 1);
        expected.extend(entries(4..=6, 2));
        assert_eq!(restore.entries, expected);
        assert_eq!(restore.hard_state, hard_state(2, None, 5));
        assert_eq!(wal.last_index(), 6);
        assert_eq!(wal.hard_state(), hard_state(2, None, 5));
    });
}

#[test]
fn an_overlapping_append_truncates_the_conflicting_suffix() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=10, 1)).await.unwrap();
        wal.append(&entries(5..=7, 2)).await.unwrap();
        assert_eq!(wal.last_index(), 7);
        wal.sync().await.unwrap();
        drop(wal);

        let (mut wal, restore) = open(&dir).await;
        let mut expected = entries(1..=4, 1);
        expected.extend(entries(5..=7, 2));
        assert_eq!(restore.entries, expected);
        assert_eq!(wal.last_index(), 7);

        // Truncating across a restart (the earlier entries now live in an older segment).
        wal.append(&entries(3..=3, 3)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        let (_, restore) = open(&dir).await;
        let mut expected = entries(1..=2, 1);
        expected.push(entry(3, 3));
        assert_eq!(restore.entries, expected);
    });
}

#[test]
fn invalid_requests_are_refused_without_harm() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=3, 2)).await.unwrap();
        let gap = wal.append(&entries(5..=6, 2)).await.unwrap_err();
        assert!(matches!(gap, WalError::Invalid(_)), "{gap}");
        let holes = wal.append(&[entry(4, 2), entry(6, 2)]).await.unwrap_err();
        assert!(matches!(holes, WalError::Invalid(_)), "{holes}");
        let term_back = wal.append(&[entry(4, 1)]).await.unwrap_err();
        assert!(matches!(term_back, WalError::Invalid(_)), "{term_back}");
        wal.save_hard_state(hard_state(3, None, 0)).await.unwrap();
        let stale = wal
            .save_hard_state(hard_state(2, None, 0))
            .await
            .unwrap_err();
        assert!(matches!(stale, WalError::Invalid(_)), "{stale}");
        wal.append(&entries(4..=4, 2)).await.unwrap();
        wal.sync().await.unwrap();
        assert!(wal.poisoned().is_none());
        drop(wal);
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.entries, entries(1..=4, 2));
        assert_eq!(restore.hard_state.term, 3);
    });
}

#[test]
fn an_entry_over_the_record_limit_is_refused() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        let huge = Entry {
            term: 1,
            index: 1,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![7u8; ENTRIES_BYTES_MAX]),
        };
        let error = wal.append(&[huge]).await.unwrap_err();
        assert!(
            matches!(error, WalError::TooLarge { index: 1, .. }),
            "{error}"
        );
        assert_eq!(wal.last_index(), 0);
    });
}

#[test]
fn an_append_larger_than_a_record_is_split_and_reads_back() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        let megabyte_entries: Vec<Entry> = (1..=17)
            .map(|index| Entry {
                term: 1,
                index,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![index as u8; 1 << 20]),
            })
            .collect();
        wal.append(&megabyte_entries).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.entries, megabyte_entries);
        let bytes = fs::read(dir.join(segment_name(1))).await.unwrap();
        let (records, tail) = decode_segment(&bytes);
        assert_eq!(tail, Tail::Clean);
        let entry_records = records
            .iter()
            .filter(|decoded| matches!(decoded.record, Record::Entries(_)))
            .count();
        assert_eq!(entry_records, 2, "17 MiB of entries need two records");
    });
}

// ---------------------------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------------------------

#[test]
fn segments_roll_over_at_the_size_limit() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open_with(&dir, small_segments()).await;
        for index in 1..=60 {
            wal.append(&[entry(index, 1)]).await.unwrap();
            if index % 7 == 0 {
                wal.sync().await.unwrap();
            }
        }
        wal.sync().await.unwrap();
        let names = segment_names(&dir).await;
        assert!(names.len() >= 5, "only {} segments", names.len());
        assert_eq!(names.len(), wal.segment_count());
        for name in &names {
            let len_bytes = fs::read(dir.join(name)).await.unwrap().len() as u64;
            assert!(
                len_bytes <= small_segments().segment_bytes_max,
                "{name} has {len_bytes} bytes"
            );
        }
        drop(wal);
        let (wal, restore) = open_with(&dir, small_segments()).await;
        assert_eq!(restore.entries, entries(1..=60, 1));
        assert_eq!(wal.last_index(), 60);
    });
}

#[test]
fn empty_segments_are_tolerated() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=3, 1)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        // A segment created just before a crash, with nothing in it yet.
        overwrite(&dir.join(segment_name(2)), b"").await;
        let (mut wal, restore) = open(&dir).await;
        assert_eq!(restore.entries, entries(1..=3, 1));
        // Now the empty segment is in the middle.
        wal.append(&entries(4..=5, 1)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.entries, entries(1..=5, 1));
        // And empty as the last one.
        let last = last_segment(&dir).await;
        let next_seq = parse_segment_name(last.file_name().unwrap().to_str().unwrap()).unwrap() + 1;
        overwrite(&dir.join(segment_name(next_seq)), b"").await;
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.entries, entries(1..=5, 1));
    });
}

#[test]
fn a_missing_segment_is_corruption() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open_with(&dir, small_segments()).await;
        for index in 1..=30 {
            wal.append(&[entry(index, 1)]).await.unwrap();
        }
        wal.sync().await.unwrap();
        drop(wal);
        let names = segment_names(&dir).await;
        assert!(names.len() >= 3);
        fs::remove_file(dir.join(&names[1])).await.unwrap();
        let error = open_error(&dir).await;
        assert_corrupt(&error, &dir.join(&names[2]), Some(0));
        assert!(error.to_string().contains("missing"), "{error}");
    });
}

#[test]
fn unknown_and_temporary_files_do_not_disturb_recovery() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=2, 1)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        overwrite(&dir.join("snapshot.tmp"), b"half a snapshot").await;
        overwrite(&dir.join("notes.txt"), b"hello").await;
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.entries, entries(1..=2, 1));
        assert!(!fs::exists(dir.join("snapshot.tmp")).await.unwrap());
        assert!(fs::exists(dir.join("notes.txt")).await.unwrap());
    });
}

// ---------------------------------------------------------------------------------------------
// Crash points and damage
// ---------------------------------------------------------------------------------------------

/// Builds a WAL whose first segment holds: header, entries 1..=3, hard state, entries 4..=5,
/// entries 6..=6 (each its own record, synced). Returns the segment's path.
async fn build_six_entry_wal(dir: &Path) -> PathBuf {
    let (mut wal, _) = open(dir).await;
    wal.append(&entries(1..=3, 1)).await.unwrap();
    wal.save_hard_state(hard_state(1, Some(1), 3))
        .await
        .unwrap();
    wal.append(&entries(4..=5, 1)).await.unwrap();
    wal.sync().await.unwrap();
    wal.append(&entries(6..=6, 1)).await.unwrap();
    wal.sync().await.unwrap();
    dir.join(segment_name(1))
}

#[test]
fn a_crash_at_every_byte_of_the_last_record_recovers_the_records_before_it() {
    run_with_dir(|dir| async move {
        let base = dir.join("base");
        let segment = build_six_entry_wal(&base).await;
        let bytes = fs::read(&segment).await.unwrap();
        let (records, tail) = decode_segment(&bytes);
        assert_eq!(tail, Tail::Clean);
        let last_offset = records.last().unwrap().offset;
        for cut in last_offset..bytes.len() as u64 {
            let copy = dir.join(format!("cut-{cut}"));
            copy_dir_with(&base, &copy, &segment, |content| {
                content.truncate(cut as usize)
            })
            .await;
            let (wal, restore) = open(&copy).await;
            assert_eq!(restore.entries, entries(1..=5, 1), "cut at {cut}");
            assert_eq!(
                restore.hard_state,
                hard_state(1, Some(1), 3),
                "cut at {cut}"
            );
            assert_eq!(wal.last_index(), 5);
            let cut_len = fs::read(copy.join(segment_name(1))).await.unwrap().len() as u64;
            assert_eq!(
                cut_len, last_offset,
                "the torn tail is cut off (cut at {cut})"
            );
            drop(wal);
            // A second recovery finds a clean log.
            let (_, again) = open(&copy).await;
            assert_eq!(again.entries, entries(1..=5, 1));
        }
        let (_, whole) = open(&base).await;
        assert_eq!(whole.entries, entries(1..=6, 1));
    });
}

#[test]
fn a_flipped_byte_in_the_last_record_is_a_torn_tail() {
    run_with_dir(|dir| async move {
        let base = dir.join("base");
        let segment = build_six_entry_wal(&base).await;
        let bytes = fs::read(&segment).await.unwrap();
        let (records, _) = decode_segment(&bytes);
        let last_offset = records.last().unwrap().offset as usize;
        for position in last_offset..bytes.len() {
            let copy = dir.join(format!("flip-{position}"));
            copy_dir_with(&base, &copy, &segment, |content| content[position] ^= 0x5a).await;
            let (_, restore) = open(&copy).await;
            assert_eq!(restore.entries, entries(1..=5, 1), "flip at {position}");
        }
    });
}

#[test]
fn a_flipped_byte_before_the_last_record_is_corruption() {
    run_with_dir(|dir| async move {
        let base = dir.join("base");
        let segment = build_six_entry_wal(&base).await;
        let bytes = fs::read(&segment).await.unwrap();
        let (records, _) = decode_segment(&bytes);
        // Every byte of every record but the last.
        for pair in records.windows(2) {
            let (start, end) = (pair[0].offset as usize, pair[1].offset as usize);
            for position in start..end {
                let copy = dir.join(format!("flip-{position}"));
                copy_dir_with(&base, &copy, &segment, |content| content[position] ^= 0x01).await;
                let error = open_error(&copy).await;
                assert_corrupt(&error, &copy.join(segment_name(1)), Some(start as u64));
            }
        }
    });
}

#[test]
fn a_damaged_record_in_an_earlier_segment_is_corruption() {
    run_with_dir(|dir| async move {
        let segment = build_six_entry_wal(&dir).await;
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(7..=8, 1)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        // Tear the end of segment 1, which is no longer the last.
        let mut bytes = fs::read(&segment).await.unwrap();
        bytes.truncate(bytes.len() - 3);
        overwrite(&segment, &bytes).await;
        let error = open_error(&dir).await;
        assert_corrupt(&error, &segment, None);
        assert!(error.to_string().contains("not the last"), "{error}");
    });
}

#[test]
fn a_frame_claiming_a_huge_length_is_not_allocated() {
    let mut bytes = frame(&postcard::to_stdvec(&Record::HardState(HardState::default())).unwrap());
    let good_len = bytes.len() as u64;
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 12]);
    let (records, tail) = decode_segment(&bytes);
    assert_eq!(records.len(), 1);
    match tail {
        Tail::Torn { offset, reason } => {
            assert_eq!(offset, good_len);
            assert!(reason.contains("over the limit"), "{reason}");
        }
        other => panic!("expected a torn tail, got {other:?}"),
    }
}

#[test]
fn decode_segment_never_returns_a_record_with_a_bad_checksum() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut valid = Vec::new();
    for index in 1..=12 {
        let record = if index % 4 == 0 {
            Record::HardState(hard_state(index, Some(2), index - 1))
        } else {
            Record::Entries(entries(index..=index, 1))
        };
        valid.extend(frame(&postcard::to_stdvec(&record).unwrap()));
    }
    for round in 0..2_000 {
        let mut bytes = if round % 3 == 0 {
            let len = (rng.next_u64() % 300) as usize;
            (0..len).map(|_| rng.next_u32() as u8).collect()
        } else {
            valid.clone()
        };
        let mutations = rng.next_u64() % 4;
        for _ in 0..mutations {
            if bytes.is_empty() {
                break;
            }
            let position = (rng.next_u64() % bytes.len() as u64) as usize;
            match rng.next_u64() % 3 {
                0 => bytes[position] ^= 1 << (rng.next_u64() % 8),
                1 => bytes.truncate(position),
                _ => bytes.insert(position, rng.next_u32() as u8),
            }
        }
        let (records, tail) = decode_segment(&bytes);
        let mut expected_offset = 0u64;
        for decoded in &records {
            assert_eq!(decoded.offset, expected_offset, "round {round}");
            let (payload, frame_bytes) =
                read_frame(&bytes[decoded.offset as usize..], RECORD_BYTES_MAX)
                    .unwrap_or_else(|error| panic!("round {round}: returned a bad frame: {error}"));
            assert_eq!(
                decode_payload::<Record>(payload).as_ref(),
                Ok(&decoded.record)
            );
            expected_offset += frame_bytes as u64;
        }
        match tail {
            Tail::Clean => assert_eq!(expected_offset, bytes.len() as u64, "round {round}"),
            Tail::Torn { offset, .. } | Tail::Corrupt { offset, .. } => {
                assert_eq!(offset, expected_offset, "round {round}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn a_snapshot_keeps_the_matching_suffix_of_the_log() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=20, 1)).await.unwrap();
        wal.save_hard_state(hard_state(1, Some(3), 12))
            .await
            .unwrap();
        wal.save_snapshot(&snapshot(10, 1)).await.unwrap();
        assert_eq!(wal.last_index(), 20);
        assert_eq!(wal.term_at(10), Some(1));
        // Saving the same snapshot again keeps the log.
        wal.save_snapshot(&snapshot(10, 1)).await.unwrap();
        assert_eq!(wal.last_index(), 20);
        drop(wal);
        let (wal, restore) = open(&dir).await;
        assert_eq!(restore.snapshot, Some(snapshot(10, 1)));
        assert_eq!(restore.entries, entries(11..=20, 1));
        assert_eq!(restore.hard_state, hard_state(1, Some(3), 12));
        assert_eq!(wal.last_index(), 20);
    });
}

#[test]
fn a_conflicting_snapshot_discards_the_whole_log() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=20, 1)).await.unwrap();
        wal.sync().await.unwrap();
        wal.save_snapshot(&snapshot(15, 3)).await.unwrap();
        assert_eq!(wal.last_index(), 15);
        let before_snapshot = wal.append(&entries(15..=15, 3)).await.unwrap_err();
        assert!(
            matches!(before_snapshot, WalError::Invalid(_)),
            "{before_snapshot}"
        );
        wal.append(&entries(16..=18, 3)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        let (wal, restore) = open(&dir).await;
        assert_eq!(restore.snapshot, Some(snapshot(15, 3)));
        assert_eq!(restore.entries, entries(16..=18, 3));
        assert_eq!(wal.last_index(), 18);
    });
}

#[test]
fn a_snapshot_beyond_the_log_resets_it() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=5, 1)).await.unwrap();
        wal.save_snapshot(&snapshot(50, 2)).await.unwrap();
        assert_eq!(wal.last_index(), 50);
        wal.append(&entries(51..=52, 2)).await.unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        let (_, restore) = open(&dir).await;
        assert_eq!(restore.snapshot.map(|s| s.meta.index), Some(50));
        assert_eq!(restore.entries, entries(51..=52, 2));
    });
}

#[test]
fn a_snapshot_deletes_the_segments_it_covers_but_never_the_hard_state() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open_with(&dir, small_segments()).await;
        wal.save_hard_state(hard_state(4, Some(2), 0))
            .await
            .unwrap();
        for index in 1..=100 {
            wal.append(&[entry(index, 4)]).await.unwrap();
        }
        wal.sync().await.unwrap();
        let segments_before = segment_names(&dir).await.len();
        wal.save_snapshot(&snapshot(80, 4)).await.unwrap();
        let segments_after = segment_names(&dir).await;
        assert!(
            segments_after.len() + 5 <= segments_before,
            "{segments_before} segments before, {} after",
            segments_after.len()
        );
        assert_eq!(segments_after.len(), wal.segment_count());
        assert_ne!(
            segments_after[0],
            segment_name(1),
            "the first segment is gone"
        );
        drop(wal);
        let (_, restore) = open_with(&dir, small_segments()).await;
        assert_eq!(restore.snapshot.map(|s| s.meta.index), Some(80));
        assert_eq!(restore.entries, entries(81..=100, 4));
        assert_eq!(
            restore.hard_state,
            hard_state(4, Some(2), 0),
            "the vote survives"
        );
    });
}

#[test]
fn a_crash_between_the_snapshot_file_and_its_record_is_recovered() {
    run_with_dir(|dir| async move {
        for (term, expected) in [(1, entries(16..=20, 1)), (3, Vec::new())] {
            let wal_dir = dir.join(format!("term-{term}"));
            let (mut wal, _) = open(&wal_dir).await;
            wal.append(&entries(1..=20, 1)).await.unwrap();
            wal.sync().await.unwrap();
            drop(wal);
            // The snapshot file made it, the record of it did not.
            let payload = snapshot_file_payload(&snapshot(15, term)).unwrap();
            fs::write_atomic(wal_dir.join(SNAPSHOT_FILE_NAME), &frame_snapshot(&payload))
                .await
                .unwrap();
            let (mut wal, restore) = open(&wal_dir).await;
            assert_eq!(restore.snapshot, Some(snapshot(15, term)));
            assert_eq!(restore.entries, expected, "snapshot term {term}");
            let last_index = 15 + expected.len() as u64;
            assert_eq!(wal.last_index(), last_index);

            // Entries appended after that recovery are not judged against the snapshot again.
            let more = entries(last_index + 1..=last_index + 3, 3);
            wal.append(&more).await.unwrap();
            wal.sync().await.unwrap();
            drop(wal);
            let (_, restore) = open(&wal_dir).await;
            let mut expected = expected;
            expected.extend(more);
            assert_eq!(
                restore.entries, expected,
                "snapshot term {term}, after appending"
            );
        }
    });
}

#[test]
fn a_damaged_snapshot_file_is_corruption() {
    run_with_dir(|dir| async move {
        let (mut wal, _) = open(&dir).await;
        wal.append(&entries(1..=3, 1)).await.unwrap();
        wal.save_snapshot(&snapshot(2, 1)).await.unwrap();
        drop(wal);
        let path = dir.join(SNAPSHOT_FILE_NAME);
        let mut bytes = fs::read(&path).await.unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        overwrite(&path, &bytes).await;
        let error = open_error(&dir).await;
        assert_corrupt(&error, &path, Some(0));
    });
}

#[test]
fn a_wal_whose_snapshot_file_predates_membership_changes_opens_and_is_rewritten_in_the_new_format()
{
    run_with_dir(|dir| async move {
        let wal_dir = dir.join("old");
        let (mut wal, _) = open(&wal_dir).await;
        wal.append(&entries(1..=20, 1)).await.unwrap();
        wal.save_snapshot(&snapshot(15, 1)).await.unwrap();
        drop(wal);
        // Overwrite the file with what the release before membership changes wrote: no header,
        // a membership of voters and learners only (index, term, voters, learners, data).
        let voters: std::collections::BTreeSet<u64> = [1, 2, 3].into();
        let old_body = postcard::to_stdvec(&(
            (
                15u64,
                1u64,
                (voters, std::collections::BTreeSet::<u64>::new()),
            ),
            snapshot(15, 1).data.to_vec(),
        ))
        .unwrap();
        fs::write_atomic(wal_dir.join(SNAPSHOT_FILE_NAME), &frame_snapshot(&old_body))
            .await
            .unwrap();
        let (mut wal, restore) = open(&wal_dir).await;
        assert_eq!(restore.snapshot, Some(snapshot(15, 1)));
        assert_eq!(restore.entries, entries(16..=20, 1));
        // The next snapshot is written with the header.
        wal.save_snapshot(&snapshot(18, 1)).await.unwrap();
        drop(wal);
        let bytes = fs::read(&wal_dir.join(SNAPSHOT_FILE_NAME)).await.unwrap();
        assert_eq!(
            &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 5],
            b"RKSF\x02"
        );
        let (_, restore) = open(&wal_dir).await;
        assert_eq!(restore.snapshot, Some(snapshot(18, 1)));
    });
}
