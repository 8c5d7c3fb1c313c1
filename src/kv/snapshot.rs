//! Snapshot encoding, restore and the state hash of a [`KvStore`].
//!
//! Layout of [`KvStore::snapshot`]:
//!
//! ```text
//! "RKVS" (4 bytes) | format version (1 byte) | crc32c of body (4 bytes, little endian) | body
//! ```
//!
//! The body is postcard: `applied_index`, then the keys as a sequence of `(key, Value)` in
//! ascending key order, then the idempotency records as a sequence of
//! `(idempotency key, first index, WriteResult)` in ascending idempotency-key order, then the
//! leases as a sequence of `(lease id, ttl_ms, keys)` in ascending id order. The form is
//! canonical: equal states give equal bytes whatever order they were built in, and
//! [`KvStore::restore`] refuses any other order, so restoring and snapshotting again returns the
//! same bytes.

use bytes::{BufMut, Bytes, BytesMut};
use imbl::OrdSet;
use serde::{Deserialize, Serialize, Serializer};

use crate::fnv::Fnv1a64;

use super::idempotency::IdempotencyTable;
use super::lease::LeaseTable;
use super::record::{Record, ValueRef};
use super::{
    validate_idempotency_key, validate_key, KvError, KvOptions, KvStore, Value, WriteResult,
};

/// First bytes of every snapshot.
const SNAPSHOT_MAGIC: [u8; 4] = *b"RKVS";
/// Format version written after the magic; bump it on any change to the body.
/// Version 2: keys are any bytes, and the body ends with the leases.
const SNAPSHOT_VERSION: u8 = 2;
/// Version 1 held only UTF-8 keys (encoded as version 2 encodes bytes: postcard writes a string
/// and a byte string alike) and no leases; it is still read.
const SNAPSHOT_VERSION_UTF8_KEYS: u8 = 1;
/// Bytes before the body: magic, version, crc32c.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 1 + 4;

/// The body as written, borrowing from the store.
#[derive(Serialize)]
struct BodyRef<'a> {
    applied_index: u64,
    entries: EntriesRef<'a>,
    idempotency: IdempotencyRef<'a>,
    leases: LeasesRef<'a>,
}

/// The body as read.
#[derive(Deserialize)]
struct BodyOwned {
    applied_index: u64,
    entries: Vec<(Vec<u8>, Value)>,
    idempotency: Vec<(String, u64, WriteResult)>,
    leases: Vec<(u64, u64, Vec<Vec<u8>>)>,
}

/// The body of a version 1 snapshot: UTF-8 keys (encoded as version 2 encodes bytes) and no
/// leases.
#[derive(Deserialize)]
struct BodyOwnedV1 {
    applied_index: u64,
    entries: Vec<(Vec<u8>, Value)>,
    idempotency: Vec<(String, u64, WriteResult)>,
}

struct EntriesRef<'a>(&'a OrdSet<Record>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|record| (record.key(), record.value_ref())),
        )
    }
}

struct IdempotencyRef<'a>(&'a IdempotencyTable);

impl Serialize for IdempotencyRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

struct LeasesRef<'a>(&'a LeaseTable);

impl Serialize for LeasesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(lease_id, lease)| {
            let keys: Vec<&[u8]> = lease.keys.iter().map(AsRef::as_ref).collect();
            (lease_id, lease.ttl_ms, keys)
        }))
    }
}

fn corrupt(reason: impl Into<String>) -> KvError {
    KvError::CorruptSnapshot {
        reason: reason.into(),
    }
}

/// Rebuilds a [`KvStore`] from its records in canonical order (keys ascending, then
/// idempotency records ascending), checking every invariant as it goes, so a decoder never holds
/// more than the store being built plus one record.
pub struct KvRestore {
    store: KvStore,
    /// Whether an idempotency record was pushed: no key may follow.
    idempotency_started: bool,
    /// Whether a lease was pushed: no key or idempotency record may follow.
    leases_started: bool,
}

impl KvRestore {
    /// Starts an empty store at `applied_index`.
    pub fn new(options: KvOptions, applied_index: u64) -> KvRestore {
        let mut store = KvStore::new(options);
        store.applied_index = applied_index;
        KvRestore {
            store,
            idempotency_started: false,
            leases_started: false,
        }
    }

    /// Adds the next key, which must sort after the previous one.
    pub fn push_key(&mut self, key: Vec<u8>, value: Value) -> Result<(), KvError> {
        let shown = String::from_utf8_lossy(&key).into_owned();
        if self.idempotency_started || self.leases_started {
            return Err(corrupt(format!(
                "key {shown:?} after the idempotency records or leases"
            )));
        }
        if let Some(previous) = self.store.entries.get_max() {
            if previous.key() >= key.as_slice() {
                return Err(corrupt(format!("key {shown:?} out of order")));
            }
        }
        validate_key(&key).map_err(|error| corrupt(format!("key {shown:?}: {error}")))?;
        let applied_index = self.store.applied_index;
        if !(0 < value.create_index
            && value.create_index <= value.mod_index
            && value.mod_index <= applied_index)
        {
            return Err(corrupt(format!(
                "key {shown:?}: need 0 < create_index({}) <= mod_index({}) <= applied_index({applied_index})",
                value.create_index, value.mod_index
            )));
        }
        self.store.store_bytes += super::entry_bytes(&key, &value.data);
        // A buffer of its own (key, then value): the decoded value's buffer is dropped.
        let record = Record::new(&key, &value.data, None, value.create_index, value.mod_index);
        self.store.entries.insert(record);
        Ok(())
    }

    /// Adds the next idempotency record, which must sort after the previous one.
    pub fn push_idempotency(
        &mut self,
        idempotency_key: String,
        index: u64,
        result: WriteResult,
    ) -> Result<(), KvError> {
        self.idempotency_started = true;
        if self.leases_started {
            return Err(corrupt(format!(
                "idempotency key {idempotency_key:?} after the leases"
            )));
        }
        if let Some((previous, _, _)) = self.store.idempotency.last() {
            if previous >= idempotency_key.as_str() {
                return Err(corrupt(format!(
                    "idempotency key {idempotency_key:?} out of order"
                )));
            }
        }
        validate_idempotency_key(&idempotency_key)
            .map_err(|error| corrupt(format!("idempotency key {idempotency_key:?}: {error}")))?;
        let applied_index = self.store.applied_index;
        if !(0 < index && index <= applied_index) {
            return Err(corrupt(format!(
                "idempotency key {idempotency_key:?}: need 0 < index({index}) <= applied_index({applied_index})"
            )));
        }
        self.store
            .idempotency
            .insert_record(idempotency_key, index, result)
            .map_err(corrupt)
    }

    /// Adds the next lease (ids ascending, after every key and idempotency record); its keys
    /// must be present and held by no other lease.
    pub fn push_lease(
        &mut self,
        lease_id: u64,
        ttl_ms: u64,
        keys: Vec<Vec<u8>>,
    ) -> Result<(), KvError> {
        self.leases_started = true;
        let entries = &self.store.entries;
        self.store
            .leases
            .restore_lease(lease_id, ttl_ms, keys, self.store.applied_index, |key| {
                entries.contains(key)
            })
            .map_err(corrupt)
    }

    /// The store; if it remembers more idempotency keys than its options allow, the oldest are
    /// forgotten.
    pub fn finish(mut self) -> KvStore {
        let keys_max = self.store.options.idempotency_keys_max;
        self.store.idempotency.evict_to(keys_max);
        self.store
    }
}

impl KvStore {
    fn body_ref(&self) -> BodyRef<'_> {
        BodyRef {
            applied_index: self.applied_index,
            entries: EntriesRef(&self.entries),
            idempotency: IdempotencyRef(&self.idempotency),
            leases: LeasesRef(&self.leases),
        }
    }

    /// Deterministic serialization of the whole state: keys, idempotency table and applied
    /// index (not the options). Layout: `"RKVS"`, a format version byte, the crc32c of the body
    /// (4 bytes, little endian), then the postcard body in canonical (sorted) order.
    pub fn snapshot(&self) -> Bytes {
        let body = postcard::to_allocvec(&self.body_ref())
            .unwrap_or_else(|error| panic!("encoding a KvStore snapshot cannot fail: {error}"));
        let mut out = BytesMut::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        out.put_slice(&SNAPSHOT_MAGIC);
        out.put_u8(SNAPSHOT_VERSION);
        out.put_u32_le(crc32c::crc32c(&body));
        out.put_slice(&body);
        out.freeze()
    }

    /// Rebuilds a store from [`KvStore::snapshot`] bytes, checking magic, version, checksum,
    /// canonical order and the index invariants. If the snapshot remembers more idempotency keys
    /// than `options` allows, the oldest are forgotten.
    pub fn restore(data: &[u8], options: KvOptions) -> Result<KvStore, KvError> {
        if data.len() < SNAPSHOT_HEADER_BYTES {
            return Err(corrupt(format!(
                "{} bytes, shorter than the {SNAPSHOT_HEADER_BYTES}-byte header",
                data.len()
            )));
        }
        let (header, body) = data.split_at(SNAPSHOT_HEADER_BYTES);
        if header[..4] != SNAPSHOT_MAGIC {
            return Err(corrupt(format!("bad magic {:02x?}", &header[..4])));
        }
        if header[4] != SNAPSHOT_VERSION && header[4] != SNAPSHOT_VERSION_UTF8_KEYS {
            return Err(corrupt(format!(
                "format version {}, expected {SNAPSHOT_VERSION} (or {SNAPSHOT_VERSION_UTF8_KEYS})",
                header[4]
            )));
        }
        let crc_expected = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        let crc_actual = crc32c::crc32c(body);
        if crc_actual != crc_expected {
            return Err(corrupt(format!(
                "body crc32c {crc_actual:#010x}, header says {crc_expected:#010x}"
            )));
        }
        let (decoded, rest) = if header[4] == SNAPSHOT_VERSION_UTF8_KEYS {
            postcard::take_from_bytes::<BodyOwnedV1>(body).map(|(v1, rest)| {
                let body = BodyOwned {
                    applied_index: v1.applied_index,
                    entries: v1.entries,
                    idempotency: v1.idempotency,
                    leases: Vec::new(),
                };
                (body, rest)
            })
        } else {
            postcard::take_from_bytes::<BodyOwned>(body)
        }
        .map_err(|error| corrupt(format!("body does not decode: {error}")))?;
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} trailing bytes after the body",
                rest.len()
            )));
        }
        let BodyOwned {
            applied_index,
            entries: entry_list,
            idempotency: idempotency_list,
            leases: lease_list,
        } = decoded;
        let mut builder = KvRestore::new(options, applied_index);
        for (key, value) in entry_list {
            builder.push_key(key, value)?;
        }
        for (idempotency_key, index, result) in idempotency_list {
            builder.push_idempotency(idempotency_key, index, result)?;
        }
        for (lease_id, ttl_ms, keys) in lease_list {
            builder.push_lease(lease_id, ttl_ms, keys)?;
        }
        Ok(builder.finish())
    }

    /// The keys and their values in ascending key order (what a snapshot file holds), borrowed.
    pub fn entries_iter(&self) -> impl Iterator<Item = (&[u8], ValueRef<'_>)> {
        self.entries
            .iter()
            .map(|record| (record.key(), record.value_ref()))
    }

    /// The remembered idempotency records `(idempotency key, first index, result)` in ascending
    /// idempotency-key order (what a snapshot file holds).
    pub fn idempotency_iter(&self) -> impl Iterator<Item = (&str, u64, &WriteResult)> {
        self.idempotency.iter()
    }

    /// A hash of the whole state for cross-replica comparison: 64-bit FNV-1a over the snapshot
    /// body (the bytes after the header of [`KvStore::snapshot`]). Equal states give equal
    /// hashes whatever order they were built in, on every platform and run.
    pub fn state_hash(&self) -> u64 {
        // Streams the body into the hasher: no buffer.
        let hasher = postcard::to_io(&self.body_ref(), Fnv1a64::new())
            .unwrap_or_else(|error| panic!("hashing a KvStore cannot fail: {error}"));
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fnv::fnv1a64;

    #[test]
    fn state_hash_is_fnv1a64_of_the_snapshot_body() {
        let store = KvStore::new(KvOptions::default());
        let snapshot = store.snapshot();
        assert_eq!(
            store.state_hash(),
            fnv1a64(&snapshot[SNAPSHOT_HEADER_BYTES..])
        );
    }
}
