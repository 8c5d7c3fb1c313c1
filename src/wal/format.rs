//! The on-disk format: framed records and the pure decoder recovery (and the fuzzers) use.
//!
//! A segment is a sequence of frames `[len u32 LE][crc32c u32 LE of payload][payload]`, where
//! `payload` is a postcard-encoded [`Record`] of 1 to [`RECORD_BYTES_MAX`] bytes. The checksum
//! is computed when a frame is built and verified when it is read (check twice across a
//! boundary).

use serde::{Deserialize, Serialize};

use crate::raft::{Entry, HardState, Index, Term};

/// Bytes of a frame header (length and checksum).
pub const FRAME_HEADER_BYTES: usize = 8;
/// The largest record payload written or accepted when reading. Larger appends are split into
/// several records; a single entry that does not fit is refused with `WalError::TooLarge`.
pub const RECORD_BYTES_MAX: usize = 16 << 20;

/// One record of the log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Log entries with consecutive indexes. If the first is at or below the log's last index,
    /// the log is truncated just before it first (Raft §5.3: a conflicting suffix is replaced).
    Entries(Vec<Entry>),
    /// The node's term, vote and commit index from now on. Every segment starts with one, so
    /// dropping old segments never forgets a vote.
    HardState(HardState),
    /// A snapshot covering up to `index` (of `term`) was made durable in the snapshot file.
    /// `suffix_kept` records whether the log after `index` was kept (the log held the
    /// snapshot's last entry, so the suffix is consistent with it) or discarded.
    SnapshotSaved {
        /// The snapshot's last included index.
        index: Index,
        /// The term of the entry at `index`.
        term: Term,
        /// Whether entries after `index` survive the snapshot.
        suffix_kept: bool,
    },
}

impl Record {
    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Record::Entries(_) => "entries",
            Record::HardState(_) => "hard_state",
            Record::SnapshotSaved { .. } => "snapshot_saved",
        }
    }
}

/// Frames a record's `payload`: header plus payload.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    frame_bounded(payload, RECORD_BYTES_MAX)
}

/// Frames `payload`, which must hold 1 to `payload_bytes_max` (at most `u32::MAX`) bytes.
pub(crate) fn frame_bounded(payload: &[u8], payload_bytes_max: usize) -> Vec<u8> {
    assert!(
        !payload.is_empty() && payload.len() <= payload_bytes_max,
        "frame payload of {} bytes outside 1..={payload_bytes_max}",
        payload.len()
    );
    let len_bytes = u32::try_from(payload.len()).expect("frame payloads fit in u32");
    let mut framed = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    framed.extend_from_slice(&len_bytes.to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes remain than a header.
    ShortHeader { remaining_bytes: usize },
    /// The header claims an empty payload (what zero-filled space looks like).
    ZeroLength,
    /// The header claims more than [`RECORD_BYTES_MAX`] (or than `payload_bytes_max`).
    TooLong {
        len_bytes: usize,
        limit_bytes: usize,
    },
    /// The payload runs past the end of the bytes.
    Truncated {
        len_bytes: usize,
        remaining_bytes: usize,
    },
    /// The payload does not match its checksum.
    Checksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ShortHeader { remaining_bytes } => {
                write!(f, "only {remaining_bytes} bytes left, a frame header needs {FRAME_HEADER_BYTES}")
            }
            FrameError::ZeroLength => write!(f, "frame claims an empty payload"),
            FrameError::TooLong {
                len_bytes,
                limit_bytes,
            } => write!(f, "frame claims {len_bytes} bytes, over the limit of {limit_bytes}"),
            FrameError::Truncated {
                len_bytes,
                remaining_bytes,
            } => write!(
                f,
                "frame claims {len_bytes} payload bytes but only {remaining_bytes} follow its header"
            ),
            FrameError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Reads the frame at the start of `bytes`: its payload and total size. Never allocates.
pub(crate) fn read_frame(
    bytes: &[u8],
    payload_bytes_max: usize,
) -> Result<(&[u8], usize), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::ShortHeader {
            remaining_bytes: bytes.len(),
        });
    }
    let len_bytes = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len_bytes == 0 {
        return Err(FrameError::ZeroLength);
    }
    if len_bytes > payload_bytes_max {
        return Err(FrameError::TooLong {
            len_bytes,
            limit_bytes: payload_bytes_max,
        });
    }
    let remaining_bytes = bytes.len() - FRAME_HEADER_BYTES;
    if len_bytes > remaining_bytes {
        return Err(FrameError::Truncated {
            len_bytes,
            remaining_bytes,
        });
    }
    let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len_bytes];
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((payload, FRAME_HEADER_BYTES + len_bytes))
}

/// Decodes a postcard payload that must be exactly one `T`.
pub(crate) fn decode_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the record", rest.len())),
        Err(error) => Err(format!("undecodable record: {error}")),
    }
}

/// A record and where its frame starts in the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Byte offset of the record's frame in the segment.
    pub offset: u64,
    /// The record.
    pub record: Record,
}

/// How a segment ends after its last valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to a valid record.
    Clean,
    /// From `offset` on, bytes that are not a valid record and that no valid record follows:
    /// what a crash in the middle of an append leaves. In the last segment, recovery cuts the
    /// file at `offset`.
    Torn {
        /// Where the invalid bytes start (the end of the last valid record).
        offset: u64,
        /// Why the bytes at `offset` are not a record.
        reason: String,
    },
    /// The bytes at `offset` are not a valid record but a valid record follows them: damage, not
    /// a crash artefact. Recovery refuses it.
    Corrupt {
        /// Where the invalid bytes start.
        offset: u64,
        /// Why the bytes at `offset` are not a record.
        reason: String,
    },
}

/// Decodes a segment's bytes into its valid records and a verdict on what follows them.
///
/// Pure, never panics, never allocates more than the input's size per record, and never
/// returns a record whose frame checksum does not match. A bad frame is a [`Tail::Torn`] tail if
/// no valid frame starts anywhere after it, else [`Tail::Corrupt`]. (A payload that itself
/// contains a valid frame can make a torn tail look corrupt; that errs on the side of refusing
/// to start.)
pub fn decode_segment(bytes: &[u8]) -> (Vec<DecodedRecord>, Tail) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let reason = match read_frame(&bytes[offset..], RECORD_BYTES_MAX) {
            Ok((payload, frame_bytes)) => match decode_payload::<Record>(payload) {
                Ok(record) => {
                    records.push(DecodedRecord {
                        offset: offset as u64,
                        record,
                    });
                    offset += frame_bytes;
                    continue;
                }
                Err(reason) => reason,
            },
            Err(error) => error.to_string(),
        };
        let tail = match first_valid_frame_after(bytes, offset) {
            None => Tail::Torn {
                offset: offset as u64,
                reason,
            },
            Some(valid_offset) => Tail::Corrupt {
                offset: offset as u64,
                reason: format!("{reason}; yet a valid record follows at byte {valid_offset}"),
            },
        };
        return (records, tail);
    }
    (records, Tail::Clean)
}

/// The first offset after `bad_offset` where a complete, checksummed, decodable record starts.
fn first_valid_frame_after(bytes: &[u8], bad_offset: usize) -> Option<usize> {
    (bad_offset + 1..bytes.len()).find(|&candidate| {
        read_frame(&bytes[candidate..], RECORD_BYTES_MAX)
            .ok()
            .is_some_and(|(payload, _)| decode_payload::<Record>(payload).is_ok())
    })
}
