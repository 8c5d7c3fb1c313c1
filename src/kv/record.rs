//! One stored key as one 56-byte record in the persistent tree: its key and value as two ranges
//! of a single shared buffer, and its versions.
//!
//! Why: a tree entry used to be an `Arc<[u8]>` key (its own allocation, 32-40 bytes a key) plus a
//! [`Value`] (a 32-byte `Bytes` handle and the two indexes), 64 bytes a slot in imbl's 16-slot
//! leaves, about 145 bytes a key beside the value's own bytes (heaptrack of a node holding
//! 100,000 keys). A `Put` command already carries the key right before the value
//! (`key length | key | value length | value`, postcard), and the value is a slice of the
//! command's buffer (see `shared_bytes`). So one `Bytes` handle spanning key to value end serves
//! both: no key allocation, and 56 bytes a slot. A value that was copied out of its command
//! (small against the entry) or restored from a snapshot gets a buffer of its own holding the
//! key and then the value, in one allocation.
//!
//! Records order, compare and borrow as their key alone (what the tree needs); a store compares
//! records in full with [`Record::same_as`].

use std::borrow::Borrow;
use std::cmp::Ordering;

use bytes::Bytes;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::Value;

/// A stored key, its value and versions (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Record {
    /// The key's bytes from 0, the value's from `value_start` to the end.
    buf: Bytes,
    /// Invariant: `key_len <= value_start <= buf.len()`.
    key_len: u32,
    value_start: u32,
    /// Log index of the entry that created the key (since it was last absent).
    pub(super) create_index: u64,
    /// Log index of the entry that last wrote the key.
    pub(super) mod_index: u64,
}

impl Record {
    /// The record of `key` = `value`. When `value` is a slice of `source` (the command's buffer)
    /// and `key` lies in `source` right before it, as a command encodes them, the record shares
    /// `source`; otherwise it copies key and value into one buffer of their own.
    pub(super) fn new(
        key: &[u8],
        value: &Bytes,
        source: Option<&Bytes>,
        create_index: u64,
        mod_index: u64,
    ) -> Record {
        let key_len = u32::try_from(key.len()).expect("keys are at most KEY_BYTES_MAX bytes");
        if let Some(source) = source {
            if let Some((key_start, value_start)) = key_before_value(source, key, value) {
                return Record {
                    buf: source.slice(key_start..value_start + value.len()),
                    key_len,
                    value_start: u32::try_from(value_start - key_start)
                        .expect("a key and a length prefix span less than 4 GiB"),
                    create_index,
                    mod_index,
                };
            }
        }
        let mut buf = Vec::with_capacity(key.len() + value.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Record {
            buf: Bytes::from(buf),
            key_len,
            value_start: key_len,
            create_index,
            mod_index,
        }
    }

    /// The key's bytes.
    pub(super) fn key(&self) -> &[u8] {
        &self.buf[..self.key_len as usize]
    }

    /// The key as a shared handle (no copy).
    pub(super) fn key_shared(&self) -> Bytes {
        self.buf.slice(..self.key_len as usize)
    }

    /// The value's bytes.
    pub(super) fn value_bytes(&self) -> &[u8] {
        &self.buf[self.value_start as usize..]
    }

    /// The value and versions as a [`Value`] sharing the record's buffer (no copy).
    pub(super) fn value(&self) -> Value {
        Value {
            data: self.buf.slice(self.value_start as usize..),
            create_index: self.create_index,
            mod_index: self.mod_index,
        }
    }

    /// The value and versions borrowed, serializing exactly as [`Value`] does.
    pub(super) fn value_ref(&self) -> ValueRef<'_> {
        ValueRef {
            data: self.value_bytes(),
            create_index: self.create_index,
            mod_index: self.mod_index,
        }
    }

    /// Whether both records hold the same key, value and versions (`==` compares keys only).
    pub(super) fn same_as(&self, other: &Record) -> bool {
        self.key() == other.key()
            && self.value_bytes() == other.value_bytes()
            && self.create_index == other.create_index
            && self.mod_index == other.mod_index
    }
}

/// Most bytes of other fields a command holds between a key and its value: a `Cas`'s
/// `expected_mod_index`, a u64 varint (`Put`, `PutLeased` and a transaction's put have none).
const BETWEEN_KEY_AND_VALUE_BYTES_MAX: usize = 10;

/// Where `key` and `value` lie in `source` when `value` is a slice of it preceded by its postcard
/// length prefix, itself preceded by `key` and at most [`BETWEEN_KEY_AND_VALUE_BYTES_MAX`] other
/// bytes: `(key start, value start)`. Whatever the command's layout, a match is the key's own
/// bytes, so the record is right either way; a miss only costs a copy.
fn key_before_value(source: &Bytes, key: &[u8], value: &Bytes) -> Option<(usize, usize)> {
    let base = source.as_ptr() as usize;
    let value_at = value.as_ptr() as usize;
    if value.is_empty() || value_at < base || value_at + value.len() > base + source.len() {
        return None;
    }
    let value_start = value_at - base;
    let key_end_max = value_start.checked_sub(varint_bytes(value.len()))?;
    (0..=BETWEEN_KEY_AND_VALUE_BYTES_MAX).find_map(|between| {
        let key_start = key_end_max.checked_sub(between + key.len())?;
        (source[key_start..key_start + key.len()] == *key).then_some((key_start, value_start))
    })
}

/// Bytes of postcard's LEB128 varint for `n`.
fn varint_bytes(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Record) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Record {
    fn cmp(&self, other: &Record) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// A stored value and its versions, borrowed from the store: what [`Value`] holds, without a
/// shared handle. Serializes exactly as [`Value`] does (the snapshot's format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRef<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Log index of the entry that created the key (since it was last absent).
    pub create_index: u64,
    /// Log index of the entry that last wrote the key.
    pub mod_index: u64,
}

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Data<'a>(&'a [u8]);
        impl Serialize for Data<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        let mut value = serializer.serialize_struct("Value", 3)?;
        value.serialize_field("data", &Data(self.data))?;
        value.serialize_field("create_index", &self.create_index)?;
        value.serialize_field("mod_index", &self.mod_index)?;
        value.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{encode_write, WriteOp, WriteRequest};

    #[test]
    fn varint_bytes_match_postcard() {
        for n in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            usize::MAX,
        ] {
            let encoded = postcard::to_allocvec(&n).unwrap();
            assert_eq!(varint_bytes(n), encoded.len(), "n = {n}");
        }
    }

    #[test]
    fn a_put_commands_key_and_value_share_its_buffer() {
        let value = Bytes::from(vec![7u8; 300]);
        let command = encode_write(&WriteRequest {
            idempotency_key: Some("retry-1".into()),
            op: WriteOp::Put {
                key: b"config/a".to_vec(),
                value: value.clone(),
            },
        });
        let start = command.len() - value.len();
        let shared_value = command.slice(start..);
        let record = Record::new(b"config/a", &shared_value, Some(&command), 3, 5);
        assert_eq!(record.key(), b"config/a");
        assert_eq!(record.value_bytes(), &value[..]);
        assert_eq!(
            record.buf.as_ptr() as usize,
            command.as_ptr() as usize + start - 2 - 8,
            "the record is a slice of the command: key, length prefix, value"
        );
        assert_eq!((record.create_index, record.mod_index), (3, 5));
    }

    #[test]
    fn a_cas_commands_key_and_value_share_its_buffer_across_the_expected_index() {
        let value = Bytes::from(vec![9u8; 200]);
        let command = encode_write(&WriteRequest {
            idempotency_key: None,
            op: WriteOp::Cas {
                key: b"k1".to_vec(),
                expected_mod_index: 1 << 40,
                value: value.clone(),
            },
        });
        let start = command.len() - value.len();
        let record = Record::new(b"k1", &command.slice(start..), Some(&command), 1, 2);
        assert_eq!(
            (record.key(), record.value_bytes()),
            (&b"k1"[..], &value[..])
        );
        assert_eq!(
            record.buf.as_ptr() as usize,
            command.as_ptr() as usize + start - 2 - 6 - 2,
            "key, the expected index's 6-byte varint, the value's 2-byte length, the value"
        );
    }

    #[test]
    fn a_value_from_elsewhere_or_a_key_that_does_not_precede_it_gets_its_own_buffer() {
        let command = Bytes::from(b"\x03abc\x03xyz".to_vec());
        let value = command.slice(5..);
        // The bytes before the value are not this key.
        let record = Record::new(b"abd", &value, Some(&command), 1, 1);
        assert_eq!(
            (record.key(), record.value_bytes()),
            (&b"abd"[..], &b"xyz"[..])
        );
        assert_ne!(record.buf.as_ptr(), command.as_ptr().wrapping_add(1));
        // A value that is not a slice of the source.
        let copied = Bytes::copy_from_slice(b"xyz");
        let record = Record::new(b"abc", &copied, Some(&command), 1, 1);
        assert_eq!(
            (record.key(), record.value_bytes()),
            (&b"abc"[..], &b"xyz"[..])
        );
        // The matching case for contrast: shared.
        let record = Record::new(b"abc", &value, Some(&command), 1, 1);
        assert_eq!(record.buf.as_ptr(), command.as_ptr().wrapping_add(1));
        // An empty value.
        let record = Record::new(b"k", &Bytes::new(), Some(&command), 1, 1);
        assert_eq!((record.key(), record.value_bytes()), (&b"k"[..], &b""[..]));
    }

    #[test]
    fn a_borrowed_value_serializes_as_the_owned_one() {
        let record = Record::new(b"k", &Bytes::from_static(b"some value"), None, 4, 9);
        assert_eq!(
            postcard::to_allocvec(&record.value_ref()).unwrap(),
            postcard::to_allocvec(&record.value()).unwrap()
        );
        let (borrowed, owned) = (record.value_ref(), record.value());
        assert_eq!(
            (borrowed.data, borrowed.create_index, borrowed.mod_index),
            (&owned.data[..], owned.create_index, owned.mod_index)
        );
    }

    #[test]
    fn records_order_and_compare_by_key_and_same_as_compares_everything() {
        let a1 = Record::new(b"a", &Bytes::from_static(b"1"), None, 1, 1);
        let a2 = Record::new(b"a", &Bytes::from_static(b"2"), None, 1, 2);
        let b = Record::new(b"b", &Bytes::from_static(b"1"), None, 1, 1);
        assert_eq!(a1, a2);
        assert!(a1 < b);
        assert!(!a1.same_as(&a2));
        assert!(a1.same_as(&a1.clone()));
    }
}
