//! Target `wal_recovery`: arbitrary segment bytes, damage and truncations into WAL recovery.
//!
//! Three kinds of input:
//! - **raw** bytes into [`decode_segment`];
//! - **damaged**: well-formed records framed the way the WAL frames them, then one byte flipped,
//!   the segment truncated, or garbage or zeros appended;
//! - **open**: one to three such segments (and optionally a snapshot file) written into a
//!   temporary directory and recovered with [`Wal::open`] on the production file backend.
//!
//! Checked:
//! - `decode_segment` never panics; every record it returns sits in a frame whose checksum
//!   matches, whose payload decodes to exactly that record, and the frames tile the segment
//!   from byte 0; its verdict on the rest is right (`Clean` at the end, else `Torn` when no
//!   valid frame starts later and `Corrupt` when one does);
//! - decoding a prefix gives exactly the records that fit in the prefix;
//! - damage never yields a wrong record: the records before the damaged frame come back
//!   unchanged and nothing at or after it does; damage before the last frame is `Corrupt`;
//! - `Wal::open` never panics and either refuses with `Corrupt` or restores a contiguous log
//!   made only of entries present in valid records, and opening again restores the same state.

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_kv::raft::{
    Entry, EntryKind, HardState, Index, Membership, RestoreState, Snapshot, SnapshotMeta,
};
use raft_kv::wal::{
    decode_segment, segment_name, DecodedRecord, Record, Tail, Wal, WalError, WalOptions,
};
use raft_kv::wal::{
    snapshot_file_payload, FRAME_HEADER_BYTES, RECORD_BYTES_MAX, SNAPSHOT_FILE_NAME,
};

/// Inputs larger than this skip the quadratic reference check of a torn verdict.
pub const REFERENCE_SCAN_BYTES_MAX: usize = 16 << 10;

/// One fuzz input.
#[derive(Arbitrary, Debug)]
pub enum WalInput {
    /// Any bytes as a segment.
    Raw(Vec<u8>),
    /// A well-formed segment, then damaged.
    Damaged(SegmentSpec),
    /// Segments and a snapshot file recovered by `Wal::open`.
    Open {
        /// The segments, in order.
        segments: Vec<SegmentSpec>,
        /// The snapshot file, if any.
        snapshot: Option<SnapshotFileSpec>,
    },
}

/// A segment: records, then damage.
#[derive(Arbitrary, Debug)]
pub struct SegmentSpec {
    /// The records, framed in order.
    pub records: Vec<FuzzRecord>,
    /// What happens to the bytes afterwards.
    pub damage: Damage,
}

/// A log index: small, or at the top of the range where arithmetic overflows.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum WideIndex {
    /// `0..=255`.
    Small(u8),
    /// `u64::MAX - n`.
    NearMax(u8),
}

impl WideIndex {
    fn value(self) -> u64 {
        match self {
            WideIndex::Small(n) => u64::from(n),
            WideIndex::NearMax(n) => u64::MAX - u64::from(n),
        }
    }
}

/// A record to frame.
#[derive(Arbitrary, Debug)]
pub enum FuzzRecord {
    /// Entries from `first_index` on, one per term given (indexes wrap at the top).
    Entries {
        /// The first index.
        first_index: WideIndex,
        /// Each entry's term.
        terms: Vec<u8>,
        /// Each entry's payload byte count comes from this, cycling.
        data: Vec<u8>,
    },
    /// A hard state.
    HardState {
        /// Term.
        term: u8,
        /// Vote.
        vote: Option<u8>,
        /// Commit.
        commit: WideIndex,
    },
    /// A snapshot-saved marker.
    SnapshotSaved {
        /// Index.
        index: WideIndex,
        /// Term.
        term: u8,
        /// Whether the suffix is kept.
        suffix_kept: bool,
    },
    /// A checksummed frame whose payload is whatever the fuzzer chose.
    Payload(Vec<u8>),
}

/// Damage done to a segment's bytes.
#[derive(Arbitrary, Debug)]
pub enum Damage {
    /// None.
    None,
    /// XOR the byte at `position` (modulo the length) with `mask` (zero becomes 1).
    Flip {
        /// Where.
        position: u16,
        /// With what.
        mask: u8,
    },
    /// Keep only the first `keep` bytes (modulo the length + 1).
    Truncate {
        /// How many.
        keep: u16,
    },
    /// Append these bytes.
    Garbage(Vec<u8>),
    /// Append this many zero bytes (preallocated space).
    Zeros(u8),
}

/// A snapshot file.
#[derive(Arbitrary, Debug)]
pub struct SnapshotFileSpec {
    /// Its last index.
    pub index: WideIndex,
    /// Its last term.
    pub term: u8,
    /// Its data.
    pub data: Vec<u8>,
    /// What happens to the file's bytes.
    pub damage: Damage,
}

/// Runs one input; panics when a property above does not hold.
pub fn run(data: &[u8]) {
    let Ok(input) = WalInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        WalInput::Raw(bytes) => {
            check_decode(&bytes);
        }
        WalInput::Damaged(spec) => check_damaged(&spec),
        WalInput::Open { segments, snapshot } => check_open(&segments, snapshot.as_ref()),
    }
}

/// Frames a payload the way the WAL does: `[len u32 LE][crc32c u32 LE][payload]`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

fn to_record(record: &FuzzRecord) -> Result<Record, Vec<u8>> {
    Ok(match record {
        FuzzRecord::Entries {
            first_index,
            terms,
            data,
        } => Record::Entries(
            terms
                .iter()
                .enumerate()
                .map(|(position, term)| {
                    let len = data
                        .get(position % data.len().max(1))
                        .map_or(0, |&n| usize::from(n % 8));
                    Entry {
                        term: u64::from(*term),
                        index: first_index.value().wrapping_add(position as u64),
                        kind: if len == 0 {
                            EntryKind::Noop
                        } else {
                            EntryKind::Normal
                        },
                        data: Bytes::from(vec![*term; len]),
                    }
                })
                .collect(),
        ),
        FuzzRecord::HardState { term, vote, commit } => Record::HardState(HardState {
            term: u64::from(*term),
            vote: vote.map(u64::from),
            commit: commit.value(),
        }),
        FuzzRecord::SnapshotSaved {
            index,
            term,
            suffix_kept,
        } => Record::SnapshotSaved {
            index: index.value(),
            term: u64::from(*term),
            suffix_kept: *suffix_kept,
        },
        FuzzRecord::Payload(payload) => return Err(payload.clone()),
    })
}

/// A segment's bytes and the frames it was built from: (start, end, record if well-formed).
struct Built {
    bytes: Vec<u8>,
    frames: Vec<(usize, usize, Option<Record>)>,
}

fn build(spec: &SegmentSpec) -> Built {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for record in &spec.records {
        let (payload, record) = match to_record(record) {
            Ok(record) => (
                postcard::to_stdvec(&record).expect("a record encodes into a Vec"),
                Some(record),
            ),
            // A chosen payload may still decode as a record: then it is one.
            Err(payload) => {
                let record = match postcard::take_from_bytes::<Record>(&payload) {
                    Ok((record, [])) => Some(record),
                    _ => None,
                };
                (payload, record)
            }
        };
        if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
            continue;
        }
        let start = bytes.len();
        bytes.extend_from_slice(&frame(&payload));
        frames.push((start, bytes.len(), record));
    }
    Built { bytes, frames }
}

fn damage(bytes: &mut Vec<u8>, damage: &Damage) {
    match damage {
        Damage::None => {}
        Damage::Flip { position, mask } => {
            if !bytes.is_empty() {
                let position = usize::from(*position) % bytes.len();
                bytes[position] ^= (*mask).max(1);
            }
        }
        Damage::Truncate { keep } => bytes.truncate(usize::from(*keep) % (bytes.len() + 1)),
        Damage::Garbage(garbage) => bytes.extend_from_slice(garbage),
        Damage::Zeros(count) => bytes.resize(bytes.len() + usize::from(*count), 0),
    }
}

/// Whether a complete, checksummed, decodable frame starts at `offset`.
fn valid_frame_at(bytes: &[u8], offset: usize) -> Option<(usize, Record)> {
    let header = bytes.get(offset..offset.checked_add(FRAME_HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return None;
    }
    let payload = bytes.get(offset + FRAME_HEADER_BYTES..offset + FRAME_HEADER_BYTES + len)?;
    if crc32c::crc32c(payload) != stored {
        return None;
    }
    match postcard::take_from_bytes::<Record>(payload) {
        Ok((record, [])) => Some((FRAME_HEADER_BYTES + len, record)),
        _ => None,
    }
}

/// Checks `decode_segment` on `bytes` against the reference framing; returns its records.
fn check_decode(bytes: &[u8]) -> (Vec<DecodedRecord>, Tail) {
    let (records, tail) = decode_segment(bytes);
    let mut offset = 0usize;
    for decoded in &records {
        assert_eq!(
            decoded.offset, offset as u64,
            "records must tile the segment: expected one at byte {offset}"
        );
        let Some((frame_bytes, record)) = valid_frame_at(bytes, offset) else {
            panic!(
                "decode_segment returned a record at byte {offset} whose frame is not valid: {:?}",
                decoded.record
            );
        };
        assert_eq!(
            record, decoded.record,
            "the record at byte {offset} is not what its frame holds"
        );
        offset += frame_bytes;
    }
    match &tail {
        Tail::Clean => assert_eq!(
            offset,
            bytes.len(),
            "a clean segment must end after its last record"
        ),
        Tail::Torn { offset: bad, .. } | Tail::Corrupt { offset: bad, .. } => {
            assert_eq!(
                *bad, offset as u64,
                "the bad bytes must start where the last record ends"
            );
            assert!(
                offset < bytes.len(),
                "a torn or corrupt verdict at the very end of the segment"
            );
            assert!(
                valid_frame_at(bytes, offset).is_none(),
                "decoding stopped at byte {offset}, before a valid record"
            );
            if bytes.len() <= REFERENCE_SCAN_BYTES_MAX {
                let later =
                    (offset + 1..bytes.len()).find(|&at| valid_frame_at(bytes, at).is_some());
                match (&tail, later) {
                    (Tail::Torn { .. }, Some(at)) => {
                        panic!("a torn verdict at byte {offset}, yet a valid record starts at byte {at}")
                    }
                    (Tail::Corrupt { .. }, None) => {
                        panic!("a corrupt verdict at byte {offset}, yet no valid record follows")
                    }
                    _ => {}
                }
            }
        }
    }
    // Any prefix decodes to exactly the records that fit in it.
    for cut in [
        offset / 2,
        offset.saturating_sub(1),
        offset.saturating_add(1).min(bytes.len()),
    ] {
        let (prefix_records, prefix_tail) = decode_segment(&bytes[..cut]);
        let fitting: Vec<&DecodedRecord> = records
            .iter()
            .filter(|r| r.offset as usize + frame_len(bytes, r.offset as usize) <= cut)
            .collect();
        assert_eq!(
            prefix_records.iter().collect::<Vec<_>>(),
            fitting,
            "the first {cut} bytes must decode to the records that fit in them"
        );
        let boundary = fitting.last().map_or(0, |r| {
            r.offset as usize + frame_len(bytes, r.offset as usize)
        });
        assert_eq!(
            matches!(prefix_tail, Tail::Clean),
            boundary == cut,
            "the first {cut} bytes end on a record boundary iff the verdict is clean: {prefix_tail:?}"
        );
    }
    (records, tail)
}

fn frame_len(bytes: &[u8], offset: usize) -> usize {
    let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
    FRAME_HEADER_BYTES + len
}

fn check_damaged(spec: &SegmentSpec) {
    let built = build(spec);
    let mut bytes = built.bytes.clone();
    damage(&mut bytes, &spec.damage);
    let (records, tail) = check_decode(&bytes);
    // The frames the damage did not touch, from the start, come back exactly.
    let first_touched = match spec.damage {
        Damage::None | Damage::Garbage(_) | Damage::Zeros(_) => built.frames.len(),
        Damage::Flip { .. } | Damage::Truncate { .. } => {
            let first_changed = (0..built.bytes.len())
                .find(|&at| bytes.get(at) != Some(&built.bytes[at]))
                .unwrap_or(built.bytes.len());
            built
                .frames
                .iter()
                .take_while(|(_, end, _)| *end <= first_changed)
                .count()
        }
    };
    // An undecodable payload frame stops decoding like damage does.
    let first_bad = built
        .frames
        .iter()
        .position(|(_, _, record)| record.is_none())
        .unwrap_or(built.frames.len());
    let intact = first_touched.min(first_bad);
    let expected: Vec<&Record> = built.frames[..intact]
        .iter()
        .filter_map(|(_, _, r)| r.as_ref())
        .collect();
    let got: Vec<&Record> = records.iter().take(intact).map(|r| &r.record).collect();
    assert_eq!(
        got, expected,
        "records before the damage must come back unchanged"
    );
    if intact < built.frames.len() && first_bad >= first_touched {
        // The damaged frame itself never comes back (a flipped byte always breaks its checksum
        // or its framing; a cut frame is incomplete).
        assert_eq!(
            records.len(),
            intact,
            "a damaged frame came back as a record: {:?}",
            records.get(intact)
        );
        let valid_frame_follows = built.frames[intact + 1..]
            .iter()
            .any(|(_, _, record)| record.is_some());
        if valid_frame_follows && matches!(spec.damage, Damage::Flip { .. }) {
            assert!(
                matches!(tail, Tail::Corrupt { .. }),
                "damage before the last record must be corrupt, not {tail:?}"
            );
        }
    }
    if let Damage::Zeros(count) = spec.damage {
        if count > 0 && first_bad == built.frames.len() {
            assert_eq!(
                records.len(),
                built.frames.len(),
                "zeros after valid records lose a record"
            );
            assert!(
                matches!(tail, Tail::Torn { .. }),
                "zeros after the last record must be a torn tail, not {tail:?}"
            );
        }
    }
}

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the wal_recovery target")
    })
}

fn check_open(segments: &[SegmentSpec], snapshot: Option<&SnapshotFileSpec>) {
    // On tmpfs when the machine has one: the same file code, without paying for real fsyncs.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory for wal_recovery");
    let wal_dir = dir.path().join("wal");
    std::fs::create_dir_all(&wal_dir).expect("create the WAL directory");
    // Every entry any valid record holds: recovery may restore only these.
    let mut known_entries: Vec<Entry> = Vec::new();
    for (position, spec) in segments.iter().take(3).enumerate() {
        let mut bytes = build(spec).bytes;
        damage(&mut bytes, &spec.damage);
        for decoded in decode_segment(&bytes).0 {
            if let Record::Entries(entries) = decoded.record {
                known_entries.extend(entries);
            }
        }
        std::fs::write(wal_dir.join(segment_name(position as u64 + 1)), &bytes)
            .expect("write a segment");
    }
    let mut snapshot_id = None;
    if let Some(spec) = snapshot {
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: spec.index.value(),
                term: u64::from(spec.term),
                membership: Membership::with_voters([1]),
            },
            data: Bytes::copy_from_slice(&spec.data),
        };
        let mut bytes = frame(&snapshot_file_payload(&snapshot).expect("a snapshot encodes"));
        damage(&mut bytes, &spec.damage);
        snapshot_id = Some((snapshot.meta.index, snapshot.meta.term));
        std::fs::write(wal_dir.join(SNAPSHOT_FILE_NAME), &bytes).expect("write the snapshot file");
    }
    let first = match open(&wal_dir) {
        Ok(restore) => restore,
        Err(WalError::Corrupt { .. }) => return,
        Err(other) => {
            panic!("recovery failed with {other} instead of refusing with Corrupt or recovering")
        }
    };
    let floor: Index = first.snapshot.as_ref().map_or(0, |s| s.meta.index);
    if let Some(restored) = &first.snapshot {
        assert_eq!(
            Some((restored.meta.index, restored.meta.term)),
            snapshot_id,
            "recovery restored a snapshot that was not the one written"
        );
    }
    for (position, entry) in first.entries.iter().enumerate() {
        let expected_index = floor.checked_add(position as u64 + 1);
        assert_eq!(
            Some(entry.index),
            expected_index,
            "restored entries must follow the snapshot contiguously"
        );
        assert!(
            known_entries.contains(entry),
            "recovery restored an entry no valid record holds: {entry:?}"
        );
    }
    let second =
        open(&wal_dir).unwrap_or_else(|e| panic!("a WAL that recovered once must open again: {e}"));
    assert_same(&first, &second);
}

fn open(dir: &Path) -> Result<RestoreState, WalError> {
    runtime().block_on(async {
        Wal::open(dir, WalOptions::default())
            .await
            .map(|(_, restore)| restore)
    })
}

fn assert_same(first: &RestoreState, second: &RestoreState) {
    assert_eq!(
        first.hard_state, second.hard_state,
        "the hard state changed between two recoveries"
    );
    assert_eq!(
        first.snapshot, second.snapshot,
        "the snapshot changed between two recoveries"
    );
    assert_eq!(
        first.entries, second.entries,
        "the entries changed between two recoveries"
    );
}
