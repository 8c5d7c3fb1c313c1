//! The write-ahead log: the node's durable Raft state (log entries, hard state, snapshot),
//! written through [`crate::env::fs`] only, so the simulator's disk faults reach it.
//!
//! # Layout of the directory
//! - `{seq:020}.wal`: segments, numbered consecutively from any start (old ones are deleted by
//!   [`Wal::save_snapshot`]), each at most about `segment_bytes_max` bytes (a single record may
//!   exceed it). A segment is a sequence of checksummed frames (see [`decode_segment`]); the
//!   records ([`Record`]) form one stream across segments, replayed in order. Every segment
//!   starts with the hard state of its time, so the newest hard state is always in the last
//!   segments that are never deleted: a vote is never forgotten.
//! - `snapshot`: the latest snapshot as one checksummed frame, replaced atomically.
//!
//! # Durability
//! [`Wal::append`] and [`Wal::save_hard_state`] only buffer (or write without syncing); nothing
//! is promised until [`Wal::sync`] returns `Ok`: group commit is the driver calling them many
//! times, then `sync` once. [`Wal::save_snapshot`] syncs everything itself.
//!
//! # Recovery ([`Wal::open`])
//! Segments are replayed in order. A torn tail (a bad last record of the last segment that no
//! valid record follows, as a crash during an append leaves) is cut off with a warning. Any other
//! damage (a bad record followed by valid data, a bad record in an earlier segment, a missing
//! segment, a gap in the indexes, a term that goes back) is refused with [`WalError::Corrupt`].
//! After recovery the WAL continues in a fresh segment.
//!
//! # Failures
//! After an I/O error on a write or a sync the `Wal` is poisoned: every later call fails with
//! [`WalError::Poisoned`], since what reached the disk is unknown (fsync errors can drop data
//! and still succeed on retry). The node must stop acknowledging and restart from disk.

mod format;
mod snapshot_file;

pub use format::{
    decode_segment, DecodedRecord, Record, Tail, FRAME_HEADER_BYTES, RECORD_BYTES_MAX,
};
pub use snapshot_file::{
    decode_snapshot_file_payload, snapshot_file_payload, SNAPSHOT_FILE_MAGIC, SNAPSHOT_FILE_VERSION,
};

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::env::fs;
use crate::raft::{Entry, HardState, Index, RestoreState, Snapshot, Term};
use format::{frame, frame_bounded, read_frame};

/// The default bound of a segment's size: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// The largest snapshot file accepted when reading (1 GiB).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
/// Buffered records are written to the segment once they reach this size (or at `sync`).
pub const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;
/// Bytes of an entries record spent outside its entries (record tag and vector length).
const ENTRIES_RECORD_OVERHEAD_BYTES: usize = 16;
/// The most entry bytes (as bounded by `encoded_entry_bytes_max`) in one entries record.
pub const ENTRIES_BYTES_MAX: usize = RECORD_BYTES_MAX - ENTRIES_RECORD_OVERHEAD_BYTES;
/// The snapshot's file name in the WAL directory.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot";
/// The suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// Tunables of a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started before a record would take it past this size.
    pub segment_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        }
    }
}

/// Why the WAL failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file system failed.
    #[error("{context}: {source}")]
    Io {
        /// What the WAL was doing.
        context: String,
        /// The error the file system gave.
        #[source]
        source: io::Error,
    },
    /// The files hold something a crash cannot explain. The node must not start from them.
    #[error("corrupt WAL file {}: at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A single entry is too large to fit in one record.
    #[error("entry {index} needs {size_bytes} bytes, over the record limit of {limit_bytes}")]
    TooLarge {
        /// The entry's index.
        index: Index,
        /// Its encoded size.
        size_bytes: usize,
        /// The limit ([`ENTRIES_BYTES_MAX`]).
        limit_bytes: usize,
    },
    /// The caller broke the API's contract (non-contiguous entries, a gap, a stale snapshot).
    /// Nothing was written; the WAL is still usable.
    #[error("invalid WAL request: {0}")]
    Invalid(String),
    /// An earlier write or sync failed; the WAL refuses all further work.
    #[error("WAL unusable after an earlier I/O failure: {0}")]
    Poisoned(String),
}

impl WalError {
    fn io(context: impl Into<String>, source: io::Error) -> WalError {
        WalError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What the WAL knows about the log's shape: enough to validate appends and find terms, without
/// keeping entries in memory. Terms are kept as runs (terms change rarely).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LogShape {
    /// Invariant: the log holds `[first_index, last_index]`; empty when
    /// `first_index == last_index + 1`.
    first_index: Index,
    last_index: Index,
    /// `(first index of the run, term)`, ascending in both; covers `[first_index, last_index]`.
    term_runs: Vec<(Index, Term)>,
}

impl LogShape {
    /// An empty log whose next entry will be `after + 1`.
    fn empty_after(after: Index) -> LogShape {
        LogShape {
            first_index: after + 1,
            last_index: after,
            term_runs: Vec::new(),
        }
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index < self.first_index || index > self.last_index {
            return None;
        }
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        Some(self.term_runs[run - 1].1)
    }

    /// Keeps only indexes `<= index`.
    fn truncate_after(&mut self, index: Index) {
        if index < self.first_index {
            *self = LogShape::empty_after(index);
            return;
        }
        self.last_index = self.last_index.min(index);
        self.term_runs.retain(|&(start, _)| start <= index);
    }

    /// Drops indexes `<= index` (the log then starts after it).
    fn compact_to(&mut self, index: Index) {
        if index >= self.last_index {
            *self = LogShape::empty_after(index);
            return;
        }
        if index < self.first_index {
            return;
        }
        let term = self.term_at(index + 1).expect("index + 1 is in the log");
        self.term_runs.retain(|&(start, _)| start > index + 1);
        self.term_runs.insert(0, (index + 1, term));
        self.first_index = index + 1;
    }

    /// Appends contiguous `entries` starting at `last_index + 1`.
    fn push(&mut self, entries: &[Entry]) {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index + 1,
                "WAL log shape: entry {} appended after {}",
                entry.index,
                self.last_index
            );
            if self.term_runs.last().map(|&(_, term)| term) != Some(entry.term) {
                self.term_runs.push((entry.index, entry.term));
            }
            self.last_index = entry.index;
        }
    }
}

/// What the WAL remembers about one segment file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SegmentInfo {
    /// The highest entry index written to it (0 if none): it may be deleted once a snapshot
    /// covers this index.
    index_max: Index,
}

/// The segment being appended to.
#[derive(Debug)]
struct ActiveSegment {
    seq: u64,
    file: fs::File,
    /// Bytes written to the file (not counting the `Wal`'s buffer).
    written_bytes: u64,
    /// Bytes of the segment's leading hard-state record.
    header_bytes: u64,
}

/// The durable log of one node. See the [module documentation](self).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    active: ActiveSegment,
    /// Every segment on disk, by sequence number; the last is `active`.
    segments: BTreeMap<u64, SegmentInfo>,
    /// Framed records for the active segment, not yet written.
    buffer: Vec<u8>,
    /// Whether files were written since the last sync.
    unsynced: bool,
    /// Whether directory entries changed since the last sync.
    dir_unsynced: bool,
    hard_state: HardState,
    /// The latest saved snapshot's (index, term), (0, 0) if none.
    snapshot_id: (Index, Term),
    log: LogShape,
    /// Set by the first failed write or sync.
    poisoned: Option<String>,
}

impl Wal {
    /// Opens or creates the WAL in `dir`; replays snapshot + segments into a [`RestoreState`].
    pub async fn open(dir: &Path, options: WalOptions) -> Result<(Wal, RestoreState), WalError> {
        assert!(
            options.segment_bytes_max > 0,
            "segment_bytes_max must be positive"
        );
        fs::create_dir_all(dir)
            .await
            .map_err(|error| WalError::io("create the WAL directory", error))?;
        let names = fs::list_dir(dir)
            .await
            .map_err(|error| WalError::io("list the WAL directory", error))?;

        let mut seqs = Vec::new();
        for name in &names {
            if let Some(seq) = parse_segment_name(name) {
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A write_atomic that crashed before its rename: never part of the state.
                fs::remove_file(dir.join(name))
                    .await
                    .map_err(|error| WalError::io("remove a leftover temporary file", error))?;
            } else if name != SNAPSHOT_FILE_NAME {
                tracing::warn!(dir = %dir.display(), name, "ignoring an unknown file in the WAL directory");
            }
        }
        seqs.sort_unstable();

        let snapshot = load_snapshot(dir).await?;
        let mut replay = Replay::new(snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)));
        let mut segments = BTreeMap::new();
        for (position, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            if position > 0 && seqs[position - 1] + 1 != seq {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("segment {} is missing", seqs[position - 1] + 1),
                });
            }
            let is_last = position + 1 == seqs.len();
            let info = replay_segment(&path, is_last, &mut replay).await?;
            segments.insert(seq, info);
        }
        let (restore, unrecorded_snapshot) = replay.finish(dir, snapshot)?;

        let snapshot_id = restore
            .snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.meta.index, s.meta.term));
        let mut log = LogShape::empty_after(snapshot_id.0);
        log.push(&restore.entries);

        // Continue in a fresh segment that starts with the hard state, so the segment we append
        // to always carries it.
        let seq = seqs.last().map_or(1, |last| last + 1);
        let active = create_segment(dir, seq, restore.hard_state).await?;
        fs::sync_dir(dir)
            .await
            .map_err(|error| WalError::io("sync the WAL directory", error))?;
        segments.insert(seq, SegmentInfo::default());
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            snapshot_index = snapshot_id.0,
            last_index = log.last_index,
            term = restore.hard_state.term,
            "WAL opened"
        );
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            options,
            active,
            segments,
            buffer: Vec::new(),
            unsynced: false,
            dir_unsynced: false,
            hard_state: restore.hard_state,
            snapshot_id,
            log,
            poisoned: None,
        };
        if let Some(record) = unrecorded_snapshot {
            // The previous run crashed between the snapshot file and its record. Record the
            // decision taken above now, where the stream ended, so that entries appended from
            // here on are not judged against the snapshot again by a later replay.
            wal.push_record(&record, 0).await?;
            wal.sync().await?;
        }
        Ok((wal, restore))
    }

    /// Appends entries; if `entries[0].index <= last_index()`, logically truncates from there
    /// first. Entries must be contiguous and start after the snapshot, at most at
    /// `last_index() + 1`. Not durable before [`Wal::sync`].
    pub async fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.check_usable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(WalError::Invalid(format!(
                    "entries not contiguous with non-decreasing terms: ({}, term {}) then ({}, term {})",
                    pair[0].index, pair[0].term, pair[1].index, pair[1].term
                )));
            }
        }
        if first.index <= self.snapshot_id.0 || first.index > self.last_index() + 1 {
            return Err(WalError::Invalid(format!(
                "entries start at {} but must start in {}..={} (after snapshot {}, at most last + 1)",
                first.index,
                self.snapshot_id.0 + 1,
                self.last_index() + 1,
                self.snapshot_id.0
            )));
        }
        if let Some(previous_term) = self.term_at(first.index - 1) {
            if first.term < previous_term {
                return Err(WalError::Invalid(format!(
                    "entry {} has term {} below the previous entry's term {previous_term}",
                    first.index, first.term
                )));
            }
        }

        let mut chunk_start = 0;
        let mut chunk_bytes = 0usize;
        let mut chunks = Vec::new();
        for (position, entry) in entries.iter().enumerate() {
            let entry_bytes = encoded_entry_bytes_max(entry);
            if entry_bytes > ENTRIES_BYTES_MAX {
                return Err(WalError::TooLarge {
                    index: entry.index,
                    size_bytes: entry_bytes,
                    limit_bytes: ENTRIES_BYTES_MAX,
                });
            }
            if chunk_bytes + entry_bytes > ENTRIES_BYTES_MAX {
                chunks.push(&entries[chunk_start..position]);
                chunk_start = position;
                chunk_bytes = 0;
            }
            chunk_bytes += entry_bytes;
        }
        chunks.push(&entries[chunk_start..]);

        self.log.truncate_after(first.index - 1);
        self.log.push(entries);
        for chunk in chunks {
            let index_max = chunk.last().expect("chunks are not empty").index;
            self.push_record(&Record::Entries(chunk.to_vec()), index_max)
                .await?;
        }
        Ok(())
    }

    /// Records the node's term, vote and commit index. Not durable before [`Wal::sync`].
    pub async fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError> {
        self.check_usable()?;
        if hard_state.term < self.hard_state.term {
            return Err(WalError::Invalid(format!(
                "hard state term {} is below the saved term {}",
                hard_state.term, self.hard_state.term
            )));
        }
        self.push_record(&Record::HardState(hard_state), 0).await?;
        self.hard_state = hard_state;
        Ok(())
    }

    /// Syncs what was written before, persists a snapshot (its own file, written atomically),
    /// records it in the log stream, syncs, and deletes the segments wholly covered by it.
    /// If the log holds the snapshot's last entry (same index and term) the entries after it
    /// are kept; otherwise the whole log is discarded (Raft §7).
    pub async fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WalError> {
        self.check_usable()?;
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index < self.snapshot_id.0 {
            return Err(WalError::Invalid(format!(
                "snapshot at {index} is older than the saved one at {}",
                self.snapshot_id.0
            )));
        }
        let payload = snapshot_file_payload(snapshot).map_err(WalError::Invalid)?;
        if payload.len() > SNAPSHOT_BYTES_MAX {
            return Err(WalError::Invalid(format!(
                "snapshot of {} bytes is over the limit of {SNAPSHOT_BYTES_MAX}",
                payload.len()
            )));
        }
        // Everything before the snapshot becomes durable first, so a crash leaves the state
        // before or after this call, never a snapshot without the records that preceded it.
        self.sync().await?;
        let path = self.dir.join(SNAPSHOT_FILE_NAME);
        let written = fs::write_atomic(&path, &frame_snapshot(&payload)).await;
        self.poison_on_error(written, "write the snapshot file")?;

        // The snapshot's last entry may be in the log, or be the previous snapshot's.
        let suffix_kept = self.term_at(index) == Some(term);
        if suffix_kept {
            self.log.compact_to(index);
        } else {
            self.log = LogShape::empty_after(index);
        }
        self.snapshot_id = (index, term);
        self.push_record(
            &Record::SnapshotSaved {
                index,
                term,
                suffix_kept,
            },
            0,
        )
        .await?;
        self.sync().await?;

        // Delete the oldest segments while a snapshot covers all of them (a prefix, so the
        // remaining sequence numbers stay consecutive).
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .take_while(|&(&seq, info)| seq != self.active.seq && info.index_max <= index)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in &doomed {
            let removed = fs::remove_file(segment_path(&self.dir, *seq)).await;
            self.poison_on_error(removed, "delete a compacted segment")?;
            self.segments.remove(seq);
        }
        if !doomed.is_empty() {
            let synced = fs::sync_dir(&self.dir).await;
            self.poison_on_error(synced, "sync the WAL directory")?;
            tracing::debug!(dir = %self.dir.display(), snapshot_index = index, deleted = doomed.len(), "compacted WAL segments");
        }
        Ok(())
    }

    /// One fsync covering everything appended and saved since the last sync (plus the directory
    /// if segments were created).
    pub async fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        self.flush().await?;
        if self.unsynced {
            let synced = self.active.file.sync().await;
            self.poison_on_error(synced, "sync the active segment")?;
            self.unsynced = false;
        }
        if self.dir_unsynced {
            let synced = fs::sync_dir(&self.dir).await;
            self.poison_on_error(synced, "sync the WAL directory")?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// The index of the last entry, or of the snapshot if the log after it is empty.
    pub fn last_index(&self) -> Index {
        self.log.last_index.max(self.snapshot_id.0)
    }

    /// The term of the entry at `index`, if the WAL holds it (the snapshot's last entry
    /// included).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_id.0 && index > 0 {
            return Some(self.snapshot_id.1);
        }
        self.log.term_at(index)
    }

    /// The last saved hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The directory the WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many segment files the WAL has.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Why the WAL is poisoned, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(reason) => Err(WalError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Passes `result` through, poisoning the WAL if it is an error.
    fn poison_on_error<T>(&mut self, result: io::Result<T>, context: &str) -> Result<T, WalError> {
        result.map_err(|error| {
            let reason = format!("{context}: {error}");
            tracing::error!(dir = %self.dir.display(), %reason, "WAL poisoned");
            self.poisoned = Some(reason);
            WalError::io(context.to_owned(), error)
        })
    }

    /// Frames `record` into the buffer of the active segment, starting a new segment first if
    /// it would overflow. `index_max` is the highest entry index in the record (0 if none).
    async fn push_record(&mut self, record: &Record, index_max: Index) -> Result<(), WalError> {
        let payload = postcard::to_stdvec(record).map_err(|error| {
            WalError::Invalid(format!("cannot encode a {} record: {error}", record.name()))
        })?;
        assert!(
            payload.len() <= RECORD_BYTES_MAX,
            "a {} record of {} bytes escaped the size limit {RECORD_BYTES_MAX}",
            record.name(),
            payload.len()
        );
        let framed = frame(&payload);
        let segment_bytes = self.active.written_bytes + self.buffer.len() as u64;
        if segment_bytes + framed.len() as u64 > self.options.segment_bytes_max
            && segment_bytes > self.active.header_bytes
        {
            self.roll_segment().await?;
        }
        self.buffer.extend_from_slice(&framed);
        let info = self
            .segments
            .get_mut(&self.active.seq)
            .expect("the active segment is listed");
        info.index_max = info.index_max.max(index_max);
        if self.buffer.len() >= WRITE_BUFFER_BYTES_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the buffer to the active segment.
    async fn flush(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = self.active.file.append(&self.buffer).await;
        let offset = self.poison_on_error(written, "append to the active segment")?;
        assert_eq!(
            offset, self.active.written_bytes,
            "segment {} was {offset} bytes long, the WAL expected {}",
            self.active.seq, self.active.written_bytes
        );
        self.active.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Closes the active segment (written and synced) and starts the next one.
    async fn roll_segment(&mut self) -> Result<(), WalError> {
        self.flush().await?;
        let synced = self.active.file.sync().await;
        self.poison_on_error(synced, "sync the segment being closed")?;
        self.unsynced = false;
        let seq = self.active.seq + 1;
        let created = create_segment(&self.dir, seq, self.hard_state).await;
        let active = match created {
            Ok(active) => active,
            Err(error) => {
                let reason = error.to_string();
                self.poisoned = Some(reason);
                return Err(error);
            }
        };
        self.active = active;
        self.segments.insert(seq, SegmentInfo::default());
        self.dir_unsynced = true;
        self.unsynced = true;
        tracing::debug!(dir = %self.dir.display(), seq, "started a WAL segment");
        Ok(())
    }
}

/// The name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

/// The sequence number of a segment file name, if `name` is one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An upper bound of an entry's postcard size inside a record.
fn encoded_entry_bytes_max(entry: &Entry) -> usize {
    // Two varint u64 (10 bytes each), the kind (1), the data's varint length (10), the data.
    entry.data.len().saturating_add(31)
}

/// Frames the snapshot file's payload.
fn frame_snapshot(payload: &[u8]) -> Vec<u8> {
    frame_bounded(payload, SNAPSHOT_BYTES_MAX)
}

/// Creates segment `seq` holding only its leading hard-state record (written, not synced).
async fn create_segment(
    dir: &Path,
    seq: u64,
    hard_state: HardState,
) -> Result<ActiveSegment, WalError> {
    let path = segment_path(dir, seq);
    let payload = postcard::to_stdvec(&Record::HardState(hard_state))
        .map_err(|error| WalError::Invalid(format!("cannot encode the hard state: {error}")))?;
    let header = frame(&payload);
    let file = fs::File::create(&path)
        .await
        .map_err(|error| WalError::io("create a segment", error))?;
    file.append(&header)
        .await
        .map_err(|error| WalError::io("write a segment header", error))?;
    file.sync()
        .await
        .map_err(|error| WalError::io("sync a new segment", error))?;
    Ok(ActiveSegment {
        seq,
        file,
        written_bytes: header.len() as u64,
        header_bytes: header.len() as u64,
    })
}

/// Reads and checks the snapshot file, if there is one.
async fn load_snapshot(dir: &Path) -> Result<Option<Snapshot>, WalError> {
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let bytes = match fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("read the snapshot file", error)),
    };
    let corrupt = |reason: String| WalError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    };
    let (payload, frame_bytes) =
        read_frame(&bytes, SNAPSHOT_BYTES_MAX).map_err(|error| corrupt(error.to_string()))?;
    if frame_bytes != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the snapshot frame",
            bytes.len() - frame_bytes
        )));
    }
    let snapshot = decode_snapshot_file_payload(payload).map_err(corrupt)?;
    // Index arithmetic (`index + 1`) must not overflow on a checksummed but absurd file.
    if snapshot.meta.index == Index::MAX {
        return Err(corrupt(format!("a snapshot at index {}", Index::MAX)));
    }
    Ok(Some(snapshot))
}

/// Decodes one segment into `replay`, cutting a torn tail if it is the last segment.
async fn replay_segment(
    path: &Path,
    is_last: bool,
    replay: &mut Replay,
) -> Result<SegmentInfo, WalError> {
    let bytes = fs::read(path)
        .await
        .map_err(|error| WalError::io("read a segment", error))?;
    let (records, tail) = decode_segment(&bytes);
    match tail {
        Tail::Clean => {}
        Tail::Torn { offset, reason } if is_last => {
            tracing::warn!(
                path = %path.display(),
                offset,
                cut_bytes = bytes.len() as u64 - offset,
                %reason,
                "cutting the torn tail of the last WAL segment"
            );
            let file = fs::File::open(path)
                .await
                .map_err(|error| WalError::io("open a torn segment", error))?;
            file.set_len(offset)
                .await
                .map_err(|error| WalError::io("cut a torn segment", error))?;
            file.sync()
                .await
                .map_err(|error| WalError::io("sync a cut segment", error))?;
        }
        Tail::Torn { offset, reason } => {
            return Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: format!("{reason} (in a segment that is not the last)"),
            })
        }
        Tail::Corrupt { offset, reason } => {
            return Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason,
            })
        }
    }
    let mut info = SegmentInfo::default();
    for DecodedRecord { offset, record } in records {
        if let Record::Entries(entries) = &record {
            if let Some(last) = entries.last() {
                info.index_max = info.index_max.max(last.index);
            }
        }
        replay.apply(record).map_err(|reason| WalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        })?;
    }
    Ok(info)
}

/// The state rebuilt while replaying the record stream.
#[derive(Debug)]
struct Replay {
    /// The snapshot file's (index, term), if any.
    snapshot_id: Option<(Index, Term)>,
    /// Whether the stream recorded saving that snapshot.
    snapshot_recorded: bool,
    /// The highest index covered by a snapshot seen so far (file or record).
    floor: Index,
    /// Contiguous entries.
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Replay {
    fn new(snapshot_id: Option<(Index, Term)>) -> Replay {
        Replay {
            snapshot_id,
            snapshot_recorded: false,
            floor: snapshot_id.map_or(0, |(index, _)| index),
            entries: Vec::new(),
            hard_state: HardState::default(),
        }
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let first = self.entries.first()?.index;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(position).map(|entry| entry.term)
    }

    /// Applies one record, or says why it cannot be.
    fn apply(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Entries(batch) => {
                // Index arithmetic (`index + 1`) must not overflow on a checksummed but absurd record.
                if let Some(entry) = batch.iter().find(|entry| entry.index == Index::MAX) {
                    return Err(format!("an entry at index {}", entry.index));
                }
                let Some(first) = batch.first() else {
                    return Err("an empty entries record".to_owned());
                };
                let first_index = first.index;
                if first_index == 0 {
                    return Err("an entry at index 0".to_owned());
                }
                for pair in batch.windows(2) {
                    if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                        return Err(format!(
                            "entries record not contiguous: ({}, term {}) then ({}, term {})",
                            pair[0].index, pair[0].term, pair[1].index, pair[1].term
                        ));
                    }
                }
                let log_last = self.entries.last().map_or(0, |entry| entry.index);
                let known_last = log_last.max(self.floor);
                if first_index > known_last + 1 {
                    return Err(format!(
                        "gap: entries resume at {first_index} but the log ends at {known_last}"
                    ));
                }
                if let Some(previous_term) = self.term_at(first_index - 1) {
                    if first.term < previous_term {
                        return Err(format!(
                            "entry {first_index} has term {} below its predecessor's term {previous_term}",
                            first.term
                        ));
                    }
                }
                let keep = self
                    .entries
                    .iter()
                    .take_while(|entry| entry.index < first_index)
                    .count();
                self.entries.truncate(keep);
                if self
                    .entries
                    .last()
                    .is_some_and(|e| e.index + 1 != first_index)
                {
                    self.entries.clear();
                }
                self.entries.extend(batch);
            }
            Record::HardState(hard_state) => {
                if hard_state.term < self.hard_state.term {
                    return Err(format!(
                        "hard state term went back from {} to {}",
                        self.hard_state.term, hard_state.term
                    ));
                }
                self.hard_state = hard_state;
            }
            Record::SnapshotSaved {
                index,
                term,
                suffix_kept,
            } => {
                if index == Index::MAX {
                    return Err(format!("a snapshot recorded at index {index}"));
                }
                let file_index = self.snapshot_id.map_or(0, |(index, _)| index);
                if index > file_index {
                    return Err(format!(
                        "records a snapshot at {index} but the snapshot file is at {file_index}"
                    ));
                }
                if self.snapshot_id == Some((index, term)) {
                    self.snapshot_recorded = true;
                }
                self.drop_through(index, suffix_kept);
                self.floor = self.floor.max(index);
            }
        }
        Ok(())
    }

    /// Drops entries `<= index`, and the rest too unless `suffix_kept`.
    fn drop_through(&mut self, index: Index, suffix_kept: bool) {
        if suffix_kept {
            self.entries.retain(|entry| entry.index > index);
        } else {
            self.entries.clear();
        }
    }

    /// The restored state, and the record to append if the stream lacks the snapshot file's
    /// record.
    fn finish(
        mut self,
        dir: &Path,
        snapshot: Option<Snapshot>,
    ) -> Result<(RestoreState, Option<Record>), WalError> {
        let mut unrecorded_snapshot = None;
        if let Some((index, term)) = self.snapshot_id {
            if !self.snapshot_recorded {
                // A crash between the snapshot file and its record: decide as save_snapshot did.
                let suffix_kept = self.term_at(index) == Some(term);
                tracing::warn!(dir = %dir.display(), index, suffix_kept, "the snapshot file is newer than the log stream");
                self.drop_through(index, suffix_kept);
                unrecorded_snapshot = Some(Record::SnapshotSaved {
                    index,
                    term,
                    suffix_kept,
                });
            }
            self.entries.retain(|entry| entry.index > index);
            if let Some(first) = self.entries.first() {
                if first.index != index + 1 {
                    return Err(WalError::Corrupt {
                        path: dir.join(SNAPSHOT_FILE_NAME),
                        offset: 0,
                        reason: format!(
                            "the log resumes at {} but the snapshot ends at {index}",
                            first.index
                        ),
                    });
                }
            }
        } else if let Some(first) = self.entries.first() {
            if first.index != 1 {
                return Err(WalError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    reason: format!("no snapshot, yet the log starts at {}", first.index),
                });
            }
        }
        let restore = RestoreState {
            hard_state: self.hard_state,
            snapshot,
            entries: self.entries,
        };
        Ok((restore, unrecorded_snapshot))
    }
}

#[cfg(test)]
mod tests;
