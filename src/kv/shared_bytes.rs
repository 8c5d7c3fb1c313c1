//! Values that share the log entry's buffer instead of copying it.
//!
//! Every replica keeps the entries since its last snapshot (plus a tail) in memory, and each
//! `Put` entry carries its value. Decoding a command copied the value into a fresh allocation,
//! so a recent write's value lived twice: once in the log entry, once in the store (measured with
//! heaptrack on a 100,000-key node: the log held about 7 MB of values the store also held).
//! [`decode_sharing`] decodes a command so that each value that makes up most of its entry is a
//! [`Bytes::slice_ref`] of the entry's own buffer: the store and the log hold one copy, and it is
//! freed when both let go.
//!
//! The bound: a value shares only when it is at least half of the entry's bytes, so a value never
//! pins more than twice its own size (a small value in a large transaction entry is copied out;
//! at most one value per entry can be over half of it). Entries' buffers are their own exact
//! allocations wherever they come from (the leader's encoder trims it, RPC and WAL decoding copy
//! each entry out of the batch), so a shared value never pins a whole batch or WAL segment.
//!
//! The source buffer reaches the value's deserializer through a thread-local set only for the
//! duration of one synchronous decode ([`decode_sharing`]); without it (any other decode) values
//! are copied as before. The wire format is unchanged: the field serializes as plain bytes, as
//! [`Bytes`] does.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Serializer;

thread_local! {
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` over `source`'s bytes with `source` offered to every value field marked
/// `#[serde(with = "shared_bytes")]`, which then slices it instead of copying (see the module
/// docs for when it does).
pub(crate) fn decode_sharing<T>(source: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SOURCE.with(|slot| *slot.borrow_mut() = self.0.take());
        }
    }
    let previous = SOURCE.with(|slot| slot.borrow_mut().replace(source.clone()));
    let _restore = Restore(previous);
    decode(source)
}

/// `value` as a slice of the current source buffer when it lies inside it and is at least half of
/// it; otherwise a copy.
fn share_or_copy(value: &[u8]) -> Bytes {
    SOURCE.with(|slot| {
        let slot = slot.borrow();
        match slot.as_ref() {
            Some(source) if within(source, value) && value.len() * 2 >= source.len() => {
                source.slice_ref(value)
            }
            _ => Bytes::copy_from_slice(value),
        }
    })
}

fn within(source: &[u8], value: &[u8]) -> bool {
    let start = source.as_ptr() as usize;
    let end = start + source.len();
    let value_start = value.as_ptr() as usize;
    !value.is_empty() && value_start >= start && value_start + value.len() <= end
}

/// Serializes like [`Bytes`] (plain bytes).
pub(crate) fn serialize<S: Serializer>(value: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(value)
}

/// Deserializes like [`Bytes`], sharing the source buffer when [`decode_sharing`] offers one.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytesVisitor)
}

struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, value: &'de [u8]) -> Result<Bytes, E> {
        Ok(share_or_copy(value))
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(value))
    }

    fn visit_byte_buf<E: de::Error>(self, value: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Command {
        key: Vec<u8>,
        #[serde(with = "super")]
        value: Bytes,
    }

    fn encoded(key: &[u8], value: &[u8]) -> Bytes {
        let command = Command {
            key: key.to_vec(),
            value: Bytes::copy_from_slice(value),
        };
        Bytes::from(postcard::to_allocvec(&command).unwrap())
    }

    fn points_into(source: &Bytes, value: &Bytes) -> bool {
        within(source, value)
    }

    #[test]
    fn a_value_that_is_most_of_its_entry_shares_the_entry_buffer() {
        let entry = encoded(b"k", &[7; 256]);
        let command: Command = decode_sharing(&entry, |bytes| postcard::from_bytes(bytes).unwrap());
        assert_eq!(command.value, Bytes::from(vec![7; 256]));
        assert!(points_into(&entry, &command.value), "the value was copied");
    }

    #[test]
    fn a_value_under_half_of_its_entry_is_copied() {
        let entry = encoded(&[1; 300], &[7; 256]);
        let command: Command = decode_sharing(&entry, |bytes| postcard::from_bytes(bytes).unwrap());
        assert_eq!(command.value, Bytes::from(vec![7; 256]));
        assert!(
            !points_into(&entry, &command.value),
            "a small value pins a large entry"
        );
    }

    #[test]
    fn without_a_source_the_value_is_copied_and_the_wire_format_is_plain_bytes() {
        let entry = encoded(b"k", b"value");
        let command: Command = postcard::from_bytes(&entry).unwrap();
        assert!(!points_into(&entry, &command.value));
        #[derive(Serialize)]
        struct Plain {
            key: Vec<u8>,
            value: Bytes,
        }
        let plain = Plain {
            key: b"k".to_vec(),
            value: Bytes::from_static(b"value"),
        };
        assert_eq!(postcard::to_allocvec(&plain).unwrap(), entry.to_vec());
    }

    #[test]
    fn the_source_is_gone_after_the_decode_and_an_outer_one_comes_back() {
        let outer = encoded(b"k", &[1; 64]);
        let inner = encoded(b"k", &[2; 64]);
        decode_sharing(&outer, |_| {
            let command: Command =
                decode_sharing(&inner, |bytes| postcard::from_bytes(bytes).unwrap());
            assert!(points_into(&inner, &command.value));
            let again: Command = postcard::from_bytes(&outer).unwrap();
            assert!(
                points_into(&outer, &again.value),
                "the outer source was not restored"
            );
        });
        let after: Command = postcard::from_bytes(&outer).unwrap();
        assert!(
            !points_into(&outer, &after.value),
            "the source outlived its decode"
        );
        SOURCE.with(|slot| assert!(slot.borrow().is_none()));
    }

    #[test]
    fn json_and_sequences_still_decode() {
        let command: Command = serde_json::from_str(r#"{"key":[1],"value":[104,105]}"#).unwrap();
        assert_eq!(command.value, Bytes::from_static(b"hi"));
    }
}
