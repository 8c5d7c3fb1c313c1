//! Snapshot files: the state machine at one applied index, streamed to and from disk in
//! checksummed chunks so neither writing nor reading ever holds the whole file in memory.
//!
//! Files live in [`snapshot_dir`] (`<data-dir>/snap/`), one per snapshot, named from their meta
//! by [`file_name`]. Layout (all integers little endian):
//!
//! ```text
//! header:  "RKSN" | version u8 | meta_bytes u32 | meta (postcard SnapshotMeta) | crc32c u32
//! chunk*:  payload_bytes u32 (1..=CHUNK_BYTES_MAX) | crc32c(payload) u32 | payload
//! trailer: 0 u32 | chunk_count u64 | body_bytes u64 | body crc32c u32 | crc32c u32
//! ```
//!
//! A chunk's payload is a run of whole postcard `Record`s: every key in ascending order, then
//! every idempotency record in ascending order, then every lease in ascending id order (the
//! canonical order of
//! [`KvStore::state_hash`](crate::kv::KvStore::state_hash), so two replicas at one index write
//! byte-identical bodies). The header checksum covers the meta; each chunk has its own; the
//! trailer counts the chunks and bytes and chains a checksum over every payload in order, so a
//! torn, truncated, reordered or extended file is refused, and nothing may follow the trailer.
//!
//! A file is written as `<name>.tmp`, synced, renamed to `<name>` and its directory synced
//! ([`write()`]): a crash leaves either no file under the final name or a whole one.

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::fs;
use crate::kv::{KvError, KvOptions, KvRestore, KvStore, Value, ValueRef, WriteResult};
use crate::raft::SnapshotMeta;

/// First bytes of every snapshot file.
const MAGIC: [u8; 4] = *b"RKSN";
/// Format version after the magic; bump it on any change to the layout or the records.
/// Version 2: keys are any bytes (a length-prefixed byte string), and lease records may follow.
const FORMAT_VERSION: u8 = 2;
/// Version 1 held only UTF-8 keys, encoded exactly as version 2 encodes bytes (postcard writes a
/// string and a byte string alike: length, then the bytes), so it is read as version 2.
const FORMAT_VERSION_UTF8_KEYS: u8 = 1;
/// Bytes of the header before the meta: magic, version, meta length.
const HEADER_PREFIX_BYTES: usize = 4 + 1 + 4;
/// Bytes of a chunk's frame before its payload: length, crc32c.
const CHUNK_FRAME_BYTES: usize = 4 + 4;
/// Bytes of the trailer after its zero marker: chunk count, body bytes, body crc, trailer crc.
const TRAILER_BODY_BYTES: usize = 8 + 8 + 4 + 4;
/// Largest encoded meta accepted (a membership of thousands of members fits).
pub const META_BYTES_MAX: usize = 1 << 20;
/// Largest chunk payload written or accepted: the memory a reader needs at most. One record
/// (a key of up to 4 KiB and its value) must fit in a chunk.
pub const CHUNK_BYTES_MAX: usize = 64 << 20;
/// Default payload size the writer aims for (it closes a chunk before passing it).
pub const CHUNK_BYTES_DEFAULT: usize = 64 << 10;
/// Bytes a reader asks the disk for at once (more only for a larger frame): small chunks must
/// not cost two disk calls each, or loading a snapshot at restart takes a disk latency per chunk.
const READ_AHEAD_BYTES: usize = 256 << 10;
/// While writing a snapshot, sync the file after every this many bytes. A snapshot of a large
/// store is tens of MB; left to one final fsync, the kernel writes it back in one burst that
/// the WAL's fsyncs queue behind (on ext4 they share the journal), which shows up as client
/// latency. Small steps keep each writeback short.
const SYNC_STEP_BYTES: u64 = 4 << 20;
/// Suffix of a file still being written; such files are removed at start.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The disk refused an operation.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the disk said.
        source: io::Error,
    },
    /// The file fails a check: magic, version, a length, a checksum, a record or an invariant
    /// of the state it holds.
    #[error("snapshot {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where reading was when the check failed.
        offset: u64,
        /// Which check failed.
        reason: String,
    },
    /// One record does not fit in a chunk ([`CHUNK_BYTES_MAX`]).
    #[error(
        "a snapshot record of {record_bytes} bytes exceeds the chunk limit of {chunk_bytes_max}"
    )]
    RecordTooLarge {
        /// The encoded record's size.
        record_bytes: usize,
        /// The limit.
        chunk_bytes_max: usize,
    },
}

/// One item of a snapshot body, as written (borrowing from the store).
#[derive(Serialize)]
enum RecordRef<'a> {
    Key {
        key: &'a [u8],
        value: ValueRef<'a>,
    },
    Idempotency {
        idempotency_key: &'a str,
        index: u64,
        result: &'a WriteResult,
    },
    Lease {
        lease_id: u64,
        ttl_ms: u64,
        keys: Vec<&'a [u8]>,
    },
}

/// One item of a snapshot body, as read. Variant order must match [`RecordRef`].
#[derive(Deserialize)]
enum Record {
    Key {
        key: Vec<u8>,
        value: Value,
    },
    Idempotency {
        idempotency_key: String,
        index: u64,
        result: WriteResult,
    },
    Lease {
        lease_id: u64,
        ttl_ms: u64,
        keys: Vec<Vec<u8>>,
    },
}

/// The directory holding the snapshot files of the node whose data directory is `data_dir`.
pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snap")
}

/// The file name of the snapshot with this meta: `snap-<term:016x>-<index:016x>.snap`, so names
/// sort by term, then index (a node's snapshots grow in both).
pub fn file_name(meta: &SnapshotMeta) -> String {
    format!("snap-{:016x}-{:016x}.snap", meta.term, meta.index)
}

/// The `(term, index)` a [`file_name`] encodes, `None` for any other name (a temp file too).
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (term, index) = rest.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(term, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// A snapshot file written and durable under its final name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenSnapshot {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
}

/// Writes `store` (whose applied index must be `meta.index`) as the snapshot file for `meta`
/// in `dir`: streams chunks of about `chunk_bytes` to `<name>.tmp`, syncs it, renames it and
/// syncs `dir`. `dir` must exist. Holds one chunk in memory besides the store.
pub async fn write(
    dir: &Path,
    meta: &SnapshotMeta,
    store: &KvStore,
    chunk_bytes: usize,
) -> Result<WrittenSnapshot, SnapshotError> {
    write_with(dir, meta, store, chunk_bytes, FileSync::Sync).await
}

/// Whether [`write_with`] syncs the file before renaming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSync {
    /// Sync: the file is durable before its final name appears (always, in production).
    Sync,
    /// The simulator's planted bug `snapshot-unsynced`: skip the file's fsync, so a crash after
    /// the rename can leave a recorded snapshot without its content.
    SkipForPlantedBug,
}

/// [`write()`], choosing whether the file is synced (see [`FileSync`]).
pub async fn write_with(
    dir: &Path,
    meta: &SnapshotMeta,
    store: &KvStore,
    chunk_bytes: usize,
    file_sync: FileSync,
) -> Result<WrittenSnapshot, SnapshotError> {
    assert_eq!(
        store.applied_index(),
        meta.index,
        "snapshot meta at index {} for a store applied to {}",
        meta.index,
        store.applied_index()
    );
    let final_path = dir.join(file_name(meta));
    let temp_path = dir.join(format!("{}{TEMP_SUFFIX}", file_name(meta)));
    let mut writer = ChunkWriter::create(&temp_path, meta, chunk_bytes, file_sync).await?;
    for (key, value) in store.entries_iter() {
        writer.push(&RecordRef::Key { key, value }).await?;
    }
    for (idempotency_key, index, result) in store.idempotency_iter() {
        writer
            .push(&RecordRef::Idempotency {
                idempotency_key,
                index,
                result,
            })
            .await?;
    }
    for (lease_id, lease) in store.leases_iter() {
        writer
            .push(&RecordRef::Lease {
                lease_id,
                ttl_ms: lease.ttl_ms,
                keys: lease.keys.iter().map(AsRef::as_ref).collect(),
            })
            .await?;
    }
    let file_bytes = writer.finish().await?;
    fs::rename(&temp_path, &final_path)
        .await
        .map_err(|source| io_error(&temp_path, source))?;
    fs::sync_dir(dir)
        .await
        .map_err(|source| io_error(dir, source))?;
    Ok(WrittenSnapshot {
        path: final_path,
        file_bytes,
    })
}

/// Reads the whole file in bounded memory (one chunk at a time), checking every checksum and
/// that every record decodes; returns its meta.
pub async fn verify(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut reader = ChunkReader::open(path).await?;
    while let Some(payload) = reader.next_chunk().await? {
        for_each_record(&payload, |_| Ok(())).map_err(|reason| reader.corrupt(reason))?;
    }
    Ok(reader.meta)
}

/// Verifies and decodes the file into a store at the meta's index.
pub async fn load(
    path: &Path,
    options: KvOptions,
) -> Result<(SnapshotMeta, KvStore), SnapshotError> {
    let mut reader = ChunkReader::open(path).await?;
    let mut builder = KvRestore::new(options, reader.meta.index);
    while let Some(payload) = reader.next_chunk().await? {
        for_each_record(&payload, |record| {
            match record {
                Record::Key { key, value } => builder.push_key(key, value),
                Record::Idempotency {
                    idempotency_key,
                    index,
                    result,
                } => builder.push_idempotency(idempotency_key, index, result),
                Record::Lease {
                    lease_id,
                    ttl_ms,
                    keys,
                } => builder.push_lease(lease_id, ttl_ms, keys),
            }
            .map_err(|error: KvError| error.to_string())
        })
        .map_err(|reason| reader.corrupt(reason))?;
    }
    Ok((reader.meta, builder.finish()))
}

/// Decodes the records of one chunk payload in order.
fn for_each_record(
    payload: &[u8],
    mut on_record: impl FnMut(Record) -> Result<(), String>,
) -> Result<(), String> {
    let mut rest = payload;
    while !rest.is_empty() {
        let (record, after) = postcard::take_from_bytes::<Record>(rest)
            .map_err(|error| format!("record does not decode: {error}"))?;
        on_record(record)?;
        rest = after;
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams records into chunks of a file being written.
struct ChunkWriter {
    file: fs::File,
    /// Where the next frame goes.
    offset: u64,
    /// The chunk being filled.
    chunk: Vec<u8>,
    chunk_bytes_target: usize,
    file_sync: FileSync,
    /// File offset up to which the file was last synced.
    synced_offset: u64,
    chunk_count: u64,
    body_bytes: u64,
    /// crc32c chained over every payload written so far.
    body_crc: u32,
}

impl ChunkWriter {
    async fn create(
        path: &Path,
        meta: &SnapshotMeta,
        chunk_bytes: usize,
        file_sync: FileSync,
    ) -> Result<ChunkWriter, SnapshotError> {
        let meta_bytes = postcard::to_allocvec(meta)
            .unwrap_or_else(|error| panic!("encoding a SnapshotMeta cannot fail: {error}"));
        assert!(
            meta_bytes.len() <= META_BYTES_MAX,
            "snapshot meta of {} bytes exceeds {META_BYTES_MAX}",
            meta_bytes.len()
        );
        let mut header = Vec::with_capacity(HEADER_PREFIX_BYTES + meta_bytes.len() + 4);
        header.extend_from_slice(&MAGIC);
        header.push(FORMAT_VERSION);
        header.extend_from_slice(&u32_of(meta_bytes.len()).to_le_bytes());
        header.extend_from_slice(&meta_bytes);
        header.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        let file = fs::File::create(path)
            .await
            .map_err(|source| io_error(path, source))?;
        let mut writer = ChunkWriter {
            file,
            offset: 0,
            chunk: Vec::new(),
            chunk_bytes_target: chunk_bytes.clamp(1, CHUNK_BYTES_MAX),
            file_sync,
            synced_offset: 0,
            chunk_count: 0,
            body_bytes: 0,
            body_crc: 0,
        };
        writer.write_frame(&header).await?;
        Ok(writer)
    }

    /// Appends `record` to the chunk being filled (encoded in place, no buffer per record),
    /// writing the chunk out first if the record would take it past the target size.
    async fn push(&mut self, record: &RecordRef<'_>) -> Result<(), SnapshotError> {
        let start = self.chunk.len();
        self.chunk = postcard::to_extend(record, std::mem::take(&mut self.chunk))
            .unwrap_or_else(|error| panic!("encoding a snapshot record cannot fail: {error}"));
        let record_bytes = self.chunk.len() - start;
        if record_bytes > CHUNK_BYTES_MAX {
            self.chunk.truncate(start);
            return Err(SnapshotError::RecordTooLarge {
                record_bytes,
                chunk_bytes_max: CHUNK_BYTES_MAX,
            });
        }
        if start > 0 && self.chunk.len() > self.chunk_bytes_target.max(record_bytes) {
            // The record goes first in the next chunk: write out the ones before it.
            let record = self.chunk.split_off(start);
            self.flush_chunk().await?;
            self.chunk.extend_from_slice(&record);
        }
        if self.chunk.len() >= self.chunk_bytes_target {
            self.flush_chunk().await?;
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<(), SnapshotError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.chunk);
        let mut frame = Vec::with_capacity(CHUNK_FRAME_BYTES + payload.len());
        frame.extend_from_slice(&u32_of(payload.len()).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.write_frame(&frame).await?;
        if self.offset - self.synced_offset >= SYNC_STEP_BYTES {
            self.sync().await?;
        }
        self.chunk_count += 1;
        self.body_bytes += payload.len() as u64;
        self.body_crc = crc32c::crc32c_append(self.body_crc, &payload);
        self.chunk = payload;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the last chunk and the trailer and syncs; returns the file's size.
    async fn finish(mut self) -> Result<u64, SnapshotError> {
        self.flush_chunk().await?;
        let mut trailer = Vec::with_capacity(4 + TRAILER_BODY_BYTES);
        trailer.extend_from_slice(&0u32.to_le_bytes());
        trailer.extend_from_slice(&self.chunk_count.to_le_bytes());
        trailer.extend_from_slice(&self.body_bytes.to_le_bytes());
        trailer.extend_from_slice(&self.body_crc.to_le_bytes());
        trailer.extend_from_slice(&crc32c::crc32c(&trailer).to_le_bytes());
        self.write_frame(&trailer).await?;
        self.sync().await?;
        Ok(self.offset)
    }

    /// Syncs what was written so far (nothing under the planted bug `snapshot-unsynced`).
    async fn sync(&mut self) -> Result<(), SnapshotError> {
        if self.file_sync == FileSync::Sync {
            self.file
                .sync()
                .await
                .map_err(|source| io_error(self.file.path(), source))?;
        }
        self.synced_offset = self.offset;
        Ok(())
    }

    async fn write_frame(&mut self, frame: &[u8]) -> Result<(), SnapshotError> {
        self.file
            .write_at(self.offset, frame)
            .await
            .map_err(|source| io_error(self.file.path(), source))?;
        self.offset += frame.len() as u64;
        Ok(())
    }
}

fn u32_of(len: usize) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| panic!("a snapshot frame of {len} bytes"))
}

/// Reads a snapshot file frame by frame, checking as it goes.
struct ChunkReader {
    file: fs::File,
    path: PathBuf,
    file_bytes: u64,
    /// Where the next frame starts.
    offset: u64,
    /// Bytes read ahead, starting at `buffer_offset` (at most one frame or [`READ_AHEAD_BYTES`]).
    buffer: Vec<u8>,
    buffer_offset: u64,
    meta: SnapshotMeta,
    chunk_count: u64,
    body_bytes: u64,
    body_crc: u32,
}

impl ChunkReader {
    /// Opens `path` and checks its header.
    async fn open(path: &Path) -> Result<ChunkReader, SnapshotError> {
        let file = fs::File::open(path)
            .await
            .map_err(|source| io_error(path, source))?;
        let file_bytes = file.len().await.map_err(|source| io_error(path, source))?;
        let mut reader = ChunkReader {
            file,
            path: path.to_path_buf(),
            file_bytes,
            offset: 0,
            buffer: Vec::new(),
            buffer_offset: 0,
            meta: SnapshotMeta::default(),
            chunk_count: 0,
            body_bytes: 0,
            body_crc: 0,
        };
        let prefix = reader.read_exact(HEADER_PREFIX_BYTES).await?;
        if prefix[..4] != MAGIC {
            return Err(reader.corrupt(format!("bad magic {:02x?}", &prefix[..4])));
        }
        if prefix[4] != FORMAT_VERSION && prefix[4] != FORMAT_VERSION_UTF8_KEYS {
            return Err(reader.corrupt(format!(
                "format version {}, expected {FORMAT_VERSION} (or {FORMAT_VERSION_UTF8_KEYS})",
                prefix[4]
            )));
        }
        let meta_bytes = le_u32(&prefix[5..9]) as usize;
        if meta_bytes > META_BYTES_MAX {
            return Err(reader.corrupt(format!(
                "meta of {meta_bytes} bytes, more than {META_BYTES_MAX}"
            )));
        }
        let rest = reader.read_exact(meta_bytes + 4).await?;
        let (meta_encoded, crc_stored) = rest.split_at(meta_bytes);
        let crc_actual = crc32c::crc32c_append(crc32c::crc32c(&prefix), meta_encoded);
        if crc_actual != le_u32(crc_stored) {
            return Err(reader.corrupt(format!(
                "header crc32c {crc_actual:#010x}, stored {:#010x}",
                le_u32(crc_stored)
            )));
        }
        reader.meta = match postcard::take_from_bytes::<SnapshotMeta>(meta_encoded) {
            Ok((meta, [])) => meta,
            Ok((_, trailing)) => {
                return Err(reader.corrupt(format!("{} bytes after the meta", trailing.len())))
            }
            Err(error) => return Err(reader.corrupt(format!("meta does not decode: {error}"))),
        };
        Ok(reader)
    }

    /// The next chunk's payload, checked; `None` once the trailer was read and checked.
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SnapshotError> {
        let frame = self.read_exact(CHUNK_FRAME_BYTES).await?;
        let payload_bytes = le_u32(&frame[..4]) as usize;
        if payload_bytes == 0 {
            self.check_trailer(&frame).await?;
            return Ok(None);
        }
        if payload_bytes > CHUNK_BYTES_MAX {
            return Err(self.corrupt(format!(
                "chunk of {payload_bytes} bytes, more than {CHUNK_BYTES_MAX}"
            )));
        }
        let payload = self.read_exact(payload_bytes).await?;
        let crc_actual = crc32c::crc32c(&payload);
        let crc_stored = le_u32(&frame[4..8]);
        if crc_actual != crc_stored {
            return Err(self.corrupt(format!(
                "chunk {} crc32c {crc_actual:#010x}, stored {crc_stored:#010x}",
                self.chunk_count
            )));
        }
        self.chunk_count += 1;
        self.body_bytes += payload_bytes as u64;
        self.body_crc = crc32c::crc32c_append(self.body_crc, &payload);
        Ok(Some(payload))
    }

    /// Checks the trailer whose first 8 bytes (`first`) were read as a chunk frame.
    async fn check_trailer(&mut self, first: &[u8]) -> Result<(), SnapshotError> {
        let rest = self
            .read_exact(4 + TRAILER_BODY_BYTES - CHUNK_FRAME_BYTES)
            .await?;
        let mut trailer = first.to_vec();
        trailer.extend_from_slice(&rest);
        let (covered, crc_stored) = trailer.split_at(trailer.len() - 4);
        let crc_actual = crc32c::crc32c(covered);
        if crc_actual != le_u32(crc_stored) {
            return Err(self.corrupt(format!(
                "trailer crc32c {crc_actual:#010x}, stored {:#010x}",
                le_u32(crc_stored)
            )));
        }
        let chunk_count = le_u64(&trailer[4..12]);
        let body_bytes = le_u64(&trailer[12..20]);
        let body_crc = le_u32(&trailer[20..24]);
        if (chunk_count, body_bytes, body_crc) != (self.chunk_count, self.body_bytes, self.body_crc)
        {
            return Err(self.corrupt(format!(
                "trailer says {chunk_count} chunks, {body_bytes} bytes, crc32c {body_crc:#010x}; \
                 read {} chunks, {} bytes, crc32c {:#010x}",
                self.chunk_count, self.body_bytes, self.body_crc
            )));
        }
        if self.offset != self.file_bytes {
            return Err(self.corrupt(format!(
                "{} bytes after the trailer",
                self.file_bytes - self.offset
            )));
        }
        Ok(())
    }

    /// Reads exactly `len_bytes` at the current offset; a short file is corrupt (truncated).
    async fn read_exact(&mut self, len_bytes: usize) -> Result<Vec<u8>, SnapshotError> {
        if self.file_bytes.saturating_sub(self.offset) < len_bytes as u64 {
            return Err(self.corrupt(format!(
                "truncated: {len_bytes} bytes needed, {} left",
                self.file_bytes.saturating_sub(self.offset)
            )));
        }
        let buffered_end = self.buffer_offset + self.buffer.len() as u64;
        if self.offset < self.buffer_offset || self.offset + len_bytes as u64 > buffered_end {
            self.buffer = self
                .file
                .read_at(self.offset, len_bytes.max(READ_AHEAD_BYTES))
                .await
                .map_err(|source| io_error(&self.path, source))?;
            self.buffer_offset = self.offset;
        }
        let start = (self.offset - self.buffer_offset) as usize;
        let end = (start + len_bytes).min(self.buffer.len());
        let bytes = self.buffer[start..end].to_vec();
        if bytes.len() != len_bytes {
            return Err(self.corrupt(format!(
                "truncated: read {} of {len_bytes} bytes",
                bytes.len()
            )));
        }
        self.offset += len_bytes as u64;
        Ok(bytes)
    }

    fn corrupt(&self, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}
