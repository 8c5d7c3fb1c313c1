//! The key-value state machine every replica applies from the committed Raft log.
//!
//! It is pure and deterministic: no clock, no IO, no randomness, and every map is ordered, so two
//! replicas that apply the same entries hold byte-identical state ([`KvStore::snapshot`]) and the
//! same [`KvStore::state_hash`].
//!
//! A client write travels as a postcard-encoded [`WriteRequest`] in `Entry.data`
//! ([`encode_write`]); the driver hands each committed command to [`KvStore::apply`] and every
//! other committed entry (no-op, membership change) to [`KvStore::apply_noop`], in log order.
//!
//! Versions follow etcd's revisions: a key's `mod_index` is the log index of the entry that last
//! wrote it and its `create_index` the index of the entry that created it, so a compare-and-swap
//! names the exact write it expects to replace.
//!
//! Exactly-once semantics (Raft §8): a request carrying an idempotency key that was already
//! applied returns the result of its *first* application and changes nothing but the applied
//! index, even if the retried operation differs from the first one. The table of remembered keys
//! is bounded ([`KvOptions::idempotency_keys_max`]) and forgets the oldest keys in apply order.
//!
//! Quota (`--quota-bytes`): the store's size is [`KvStore::store_bytes`], the sum over keys of
//! key bytes + value bytes + [`ENTRY_OVERHEAD_BYTES`], kept exactly on every replica because it
//! is a function of the applied keys alone. The quota itself is *not* a replica's option: the
//! leader stamps the quota it runs with into every command it proposes ([`encode_command`]), and
//! [`KvStore::apply`] decides from the entry alone. A replica started with another
//! `--quota-bytes` therefore applies the same log to the same state; its own flag only matters
//! once it leads. The alternatives lose: a quota in [`KvOptions`] (like the idempotency bound)
//! makes a replica with another flag refuse a write its peers applied, and the replicas diverge
//! silently; a check only at propose time races with writes already in the log, so the store
//! could pass the quota by a whole pipeline of writes, and a new leader could not tell which
//! entries were checked. A command that would grow the store past its stamped quota changes
//! nothing and yields [`WriteResult::QuotaExceeded`], a definite "not applied" that the
//! idempotency table remembers like any result. Deletes, lease revokes and writes that do not
//! grow the store always apply. Commands without a stamp (written before quotas existed) are
//! not limited.
//!
//! Point-in-time views: the keys (an `imbl::OrdSet` of records, see `record`) and both sides of
//! the idempotency table are persistent B-trees with structural sharing. [`KvStore::clone`] is
//! O(1) (it shares the roots) and yields a frozen, self-consistent view of keys, idempotency
//! records and applied index that a background task can serialize ([`crate::snapshot::write`])
//! while the driver keeps applying.
//! A write after a clone copies only the nodes on its path, once each while the view lives; with
//! no view alive the maps mutate in place. A record holds its key and value as one shared buffer
//! (usually the command's own), so a copied node clones handles, not strings.
//!
//! Keys are any bytes (etcd's rule), compared and listed in byte order. A key travels in a
//! command as a length-prefixed byte string, the same encoding postcard gives a `String`, so
//! commands written when keys had to be UTF-8 decode unchanged. The alternatives lose: cloning a `BTreeMap` is the O(n) copy and 2x memory
//! spike at every snapshot that stalled the node; a hand-written copy-on-write layer (a side
//! map of overwritten keys while a snapshot runs) must merge back and be proven; `fork()` (as
//! Redis does) is unsound in a multi-threaded tokio process and invisible to the simulator.
//! `imbl` is the maintained fork of `im` (release 7 in 2025).
#![deny(missing_docs)]

mod idempotency;
mod lease;
mod record;
mod shared_bytes;
mod snapshot;
pub use lease::{Lease, LEASES_MAX, LEASE_KEYS_MAX, LEASE_TTL_MS_MAX};
pub use record::ValueRef;
mod txn;
pub use snapshot::KvRestore;
pub use txn::{
    Compare, CompareTarget, Txn, TxnOp, TxnOpResult, TXN_BYTES_MAX, TXN_COMPARES_MAX,
    TXN_GET_BYTES_MAX, TXN_OPS_MAX,
};
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod quota_tests;
#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdSet;
use serde::{Deserialize, Serialize};

use idempotency::IdempotencyTable;
use lease::{LeaseRefusal, LeaseTable};
use record::Record;

use crate::plants::{self, Plant};

/// Longest key accepted, in bytes (any bytes).
pub const KEY_BYTES_MAX: usize = 4096;
/// Largest value the HTTP layer should accept, in bytes (1 MiB). The store itself does not
/// enforce it: a value that was committed is applied whatever its size.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Longest idempotency key accepted, in bytes (UTF-8).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Default for [`KvOptions::idempotency_keys_max`].
pub const IDEMPOTENCY_KEYS_MAX_DEFAULT: usize = 100_000;

/// Bytes a key counts towards [`KvStore::store_bytes`] beyond its key and value bytes: the
/// versions and the tree slot (a rough figure, but the same on every replica).
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;
/// Default quota on [`KvStore::store_bytes`] (2 GiB, etcd's default backend quota).
pub const QUOTA_BYTES_DEFAULT: u64 = 2 << 30;

/// What the leader adds to a command after the encoded [`WriteRequest`] (see the module docs):
/// the quota in force when it proposed it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandStamp {
    /// The proposing leader's `--quota-bytes`.
    pub quota_bytes: u64,
}

/// A write as proposed through Raft (postcard-encoded into `Entry.data` by [`encode_write`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    /// When set, the write is applied at most once: a later request with the same key returns
    /// the first result without applying anything (see the module docs).
    pub idempotency_key: Option<String>,
    /// What to do.
    pub op: WriteOp,
}

/// One write operation on one key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`, creating it if absent.
    Put {
        /// The key to write (any bytes; encoded like a string, so entries written when keys
        /// were strings decode unchanged).
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "shared_bytes")]
        value: Bytes,
    },
    /// Removes `key` if present.
    Delete {
        /// The key to remove.
        key: Vec<u8>,
    },
    /// Sets `key` to `value` only if its current `mod_index` equals `expected_mod_index`.
    /// `expected_mod_index` 0 = create only (fails if the key exists).
    Cas {
        /// The key to write (any bytes; encoded like a string, so entries written when keys
        /// were strings decode unchanged).
        key: Vec<u8>,
        /// The `mod_index` the key must have now; 0 means "the key must be absent".
        expected_mod_index: u64,
        /// The new value.
        #[serde(with = "shared_bytes")]
        value: Bytes,
    },
    /// Compare-and-delete: removes `key` only if its current `mod_index` equals
    /// `expected_mod_index` (0 = absent, which succeeds as a no-op on an absent key).
    CasDelete {
        /// The key to remove.
        key: Vec<u8>,
        /// The `mod_index` the key must have now; 0 means "the key must be absent".
        expected_mod_index: u64,
    },
    /// Grants a lease of `ttl_ms`; its id is the index of this entry (see the `lease` module).
    LeaseGrant {
        /// Time to live in milliseconds, 1 to [`LEASE_TTL_MS_MAX`].
        ttl_ms: u64,
    },
    /// A `Put` (or, with `expected_mod_index`, a `Cas`) that also attaches `key` to a lease,
    /// so it is deleted when the lease ends. A plain `Put`/`Cas`/`Delete` detaches it again.
    PutLeased {
        /// The key to write (any bytes).
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "shared_bytes")]
        value: Bytes,
        /// The lease to attach the key to; it must exist.
        lease_id: u64,
        /// When set, the write is a compare-and-swap on this `mod_index` (0: create only).
        expected_mod_index: Option<u64>,
    },
    /// Revokes a lease at a client's request, deleting its keys.
    LeaseRevoke {
        /// The lease.
        lease_id: u64,
    },
    /// Ends a lease whose countdown ran out on the leader, deleting its keys. Only the leader
    /// proposes it (the countdown is never a follower's), and it is committed like any write.
    LeaseExpire {
        /// The lease.
        lease_id: u64,
    },
    /// A transaction over any keys, applied atomically (see [`Txn`]). Last, so that the
    /// encoding of the variants before it is unchanged.
    Txn(Txn),
}

/// The outcome of an applied write, identical on every replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// A `Put` (which always succeeds).
    Put {
        /// The key's new `mod_index` (the entry's log index).
        mod_index: u64,
        /// Whether the key was absent before.
        created: bool,
    },
    /// A `Delete`, or a `CasDelete` whose expectation held.
    Deleted {
        /// Whether the key was present (and is now gone).
        existed: bool,
    },
    /// A `Cas` whose expectation held.
    CasOk {
        /// The key's new `mod_index` (the entry's log index).
        mod_index: u64,
    },
    /// A `Cas` or `CasDelete` whose expectation did not hold; nothing changed.
    CasMismatch {
        /// The key's `mod_index` now; 0 = absent.
        current_mod_index: u64,
    },
    /// A `LeaseGrant`.
    LeaseGranted {
        /// The new lease's id (the grant's log index).
        lease_id: u64,
        /// Its time to live.
        ttl_ms: u64,
    },
    /// A `LeaseRevoke` or `LeaseExpire`: the lease is gone and so are its keys.
    LeaseEnded {
        /// The lease.
        lease_id: u64,
        /// How many keys were deleted with it.
        keys_deleted: u64,
    },
    /// The lease named does not exist (never granted, or revoked, or expired); nothing changed.
    LeaseNotFound {
        /// The lease.
        lease_id: u64,
    },
    /// A lease limit ([`LEASES_MAX`], [`LEASE_KEYS_MAX`]) refused the command; nothing changed.
    LeaseLimit {
        /// Which limit.
        reason: String,
    },
    /// A transaction: whether its compares held, and what each operation of the list that
    /// ran did.
    Txn {
        /// Whether every compare held (so `success` ran, else `failure`).
        succeeded: bool,
        /// One result per operation of the list that ran, in order.
        results: Vec<TxnOpResult>,
    },
    /// The command would have grown the store past the quota stamped into it; nothing changed.
    /// Last, so that the encoding of the variants before it is unchanged.
    QuotaExceeded {
        /// The quota the command carried.
        quota_bytes: u64,
        /// [`KvStore::store_bytes`] when it was refused.
        store_bytes: u64,
        /// What the store would have held had it applied.
        store_bytes_after: u64,
    },
}

/// What [`KvStore::apply_recording`] answers for a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The log index at which `result` was produced: the command's own entry, or for a retry of
    /// an idempotency key already applied, the entry of its first application.
    pub index: u64,
    /// What the state machine did (for a retry: what it did the first time).
    pub result: WriteResult,
}

/// A stored value and its versions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub data: Bytes,
    /// Log index of the entry that created the key (since it was last absent).
    pub create_index: u64,
    /// Log index of the entry that last wrote the key.
    /// Invariant: `0 < create_index <= mod_index <= applied_index`.
    pub mod_index: u64,
}

/// One key's change made by an applied entry: what a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// Log index of the entry that made the change.
    pub index: u64,
    /// The key changed (a handle on the store's own bytes, not a copy).
    pub key: Bytes,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// Whether a key was written or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key now holds `value`.
    Put {
        /// The new value.
        value: Bytes,
        /// The key's `create_index` (the change's own index when it created the key).
        create_index: u64,
    },
    /// The key was removed.
    Delete,
}

/// Tunables of a [`KvStore`]. Every replica must use the same options, since they decide which
/// idempotency keys are forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvOptions {
    /// At most this many idempotency keys are remembered; the oldest (in apply order) are
    /// forgotten first. 0 disables exactly-once deduplication.
    pub idempotency_keys_max: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            idempotency_keys_max: IDEMPOTENCY_KEYS_MAX_DEFAULT,
        }
    }
}

/// Why a command or a snapshot was refused. Every variant is deterministic: all replicas
/// refuse the same committed command with the same error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The command bytes are not a valid encoded [`WriteRequest`].
    #[error("command does not decode: {reason}")]
    Decode {
        /// The decoder's message.
        reason: String,
    },
    /// Keys must not be empty.
    #[error("key is empty")]
    EmptyKey,
    /// The key exceeds [`KEY_BYTES_MAX`].
    #[error("key is {key_bytes} bytes, more than the {key_bytes_max} allowed")]
    KeyTooLong {
        /// Length of the refused key.
        key_bytes: usize,
        /// The limit ([`KEY_BYTES_MAX`]).
        key_bytes_max: usize,
    },
    /// A transaction exceeds [`TXN_COMPARES_MAX`], [`TXN_OPS_MAX`] or [`TXN_BYTES_MAX`].
    #[error("transaction too large: {what}")]
    TxnTooLarge {
        /// Which limit, by how much.
        what: String,
    },
    /// The idempotency key is empty or exceeds [`IDEMPOTENCY_KEY_BYTES_MAX`].
    #[error("idempotency key is {key_bytes} bytes, allowed are 1 to {key_bytes_max}")]
    BadIdempotencyKey {
        /// Length of the refused idempotency key.
        key_bytes: usize,
        /// The limit ([`IDEMPOTENCY_KEY_BYTES_MAX`]).
        key_bytes_max: usize,
    },
    /// The TTL is 0 or above [`LEASE_TTL_MS_MAX`].
    #[error("lease TTL of {ttl_ms} ms is outside 1 to {ttl_ms_max} ms")]
    BadLeaseTtl {
        /// The refused TTL.
        ttl_ms: u64,
        /// The limit ([`LEASE_TTL_MS_MAX`]).
        ttl_ms_max: u64,
    },
    /// A snapshot failed its checks (magic, version, checksum, decoding or invariants).
    #[error("snapshot is corrupt: {reason}")]
    CorruptSnapshot {
        /// What check failed.
        reason: String,
    },
}

impl WriteOp {
    /// The key a single-key operation writes; `None` for a transaction.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::Cas { key, .. }
            | WriteOp::CasDelete { key, .. }
            | WriteOp::PutLeased { key, .. } => Some(key),
            WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseRevoke { .. }
            | WriteOp::LeaseExpire { .. }
            | WriteOp::Txn(_) => None,
        }
    }
}

impl WriteOp {
    /// The most this operation can add to [`KvStore::store_bytes`]: every put it may run (of
    /// either branch of a transaction) counted as a new key.
    fn growth_bytes_max(&self) -> u64 {
        match self {
            WriteOp::Put { key, value }
            | WriteOp::Cas { key, value, .. }
            | WriteOp::PutLeased { key, value, .. } => entry_bytes(key, value),
            WriteOp::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .map(|op| match op {
                    TxnOp::Put { key, value } => entry_bytes(key, value),
                    TxnOp::Delete { .. } | TxnOp::Get { .. } => 0,
                })
                .fold(0, u64::saturating_add),
            WriteOp::Delete { .. }
            | WriteOp::CasDelete { .. }
            | WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseRevoke { .. }
            | WriteOp::LeaseExpire { .. } => 0,
        }
    }
}

impl WriteRequest {
    /// Checks the limits [`KvStore::apply`] enforces, so a front end can refuse a request before
    /// proposing it. Value size is not checked here (see [`VALUE_BYTES_MAX`]).
    pub fn validate(&self) -> Result<(), KvError> {
        match &self.op {
            WriteOp::Txn(txn) => txn.validate()?,
            WriteOp::LeaseGrant { ttl_ms } => {
                if !(1..=LEASE_TTL_MS_MAX).contains(ttl_ms) {
                    return Err(KvError::BadLeaseTtl {
                        ttl_ms: *ttl_ms,
                        ttl_ms_max: LEASE_TTL_MS_MAX,
                    });
                }
            }
            WriteOp::LeaseRevoke { .. } | WriteOp::LeaseExpire { .. } => {}
            single => validate_key(single.key().unwrap_or_default())?,
        }
        if let Some(idempotency_key) = &self.idempotency_key {
            validate_idempotency_key(idempotency_key)?;
        }
        Ok(())
    }
}

/// The result of a lease command the table refused.
fn lease_refused(lease_id: u64, refusal: LeaseRefusal) -> WriteResult {
    match refusal {
        LeaseRefusal::NotFound => WriteResult::LeaseNotFound { lease_id },
        LeaseRefusal::Limit(reason) => WriteResult::LeaseLimit { reason },
    }
}

/// Checks a key against the store's rules: non-empty, at most [`KEY_BYTES_MAX`] bytes.
pub fn validate_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::KeyTooLong {
            key_bytes: key.len(),
            key_bytes_max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn validate_idempotency_key(idempotency_key: &str) -> Result<(), KvError> {
    if idempotency_key.is_empty() || idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(KvError::BadIdempotencyKey {
            key_bytes: idempotency_key.len(),
            key_bytes_max: IDEMPOTENCY_KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Encodes a request for `Entry.data` (postcard), without a stamp: no quota applies to it.
pub fn encode_write(request: &WriteRequest) -> Bytes {
    let encoded = postcard::to_allocvec(request)
        .unwrap_or_else(|error| panic!("encoding a WriteRequest cannot fail: {error}"));
    Bytes::from(encoded)
}

/// Encodes a request followed by the leader's [`CommandStamp`] (what a node proposes).
///
/// The buffer is allocated once at its exact size (the size is counted first): the leader keeps
/// every entry since the last snapshot (plus the tail) in memory, and the stored values share
/// these buffers (`shared_bytes`). Growing a `Vec` by doubling left a 280-byte Put of 256 bytes
/// in a 550-byte buffer (heaptrack: 16 MB of spare capacity on a 100,000-key leader), and
/// shrinking it afterwards left a hole beside every live value that the allocator could rarely
/// reuse.
pub fn encode_command(request: &WriteRequest, stamp: CommandStamp) -> Bytes {
    let mut encoded = Vec::with_capacity(postcard_size(request) + postcard_size(&stamp));
    encoded = postcard::to_extend(request, encoded)
        .unwrap_or_else(|error| panic!("encoding a WriteRequest cannot fail: {error}"));
    encoded = postcard::to_extend(&stamp, encoded)
        .unwrap_or_else(|error| panic!("encoding a CommandStamp cannot fail: {error}"));
    debug_assert_eq!(encoded.len(), encoded.capacity());
    Bytes::from(encoded)
}

/// Bytes of `value`'s postcard encoding.
fn postcard_size<T: Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .unwrap_or_else(|error| panic!("sizing a command cannot fail: {error}"))
}

/// Decodes `Entry.data` into a request (ignoring its stamp, see [`decode_command`]).
pub fn decode_write(data: &[u8]) -> Result<WriteRequest, KvError> {
    decode_command(data).map(|(request, _)| request)
}

/// Decodes `Entry.data` into a request and its stamp, if any. Trailing bytes after a valid
/// request and stamp are an error, so one entry has exactly one meaning.
pub fn decode_command(data: &[u8]) -> Result<(WriteRequest, Option<CommandStamp>), KvError> {
    let decode_error = |error: postcard::Error| KvError::Decode {
        reason: error.to_string(),
    };
    let (request, rest) = postcard::take_from_bytes::<WriteRequest>(data).map_err(decode_error)?;
    if rest.is_empty() {
        return Ok((request, None));
    }
    let (stamp, rest) = postcard::take_from_bytes::<CommandStamp>(rest).map_err(decode_error)?;
    if !rest.is_empty() {
        return Err(KvError::Decode {
            reason: format!("{} trailing bytes after the request", rest.len()),
        });
    }
    Ok((request, Some(stamp)))
}

/// What `key` = `value` counts towards [`KvStore::store_bytes`].
pub fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// The replicated key-value state machine (see the module docs).
#[derive(Clone, Debug)]
pub struct KvStore {
    options: KvOptions,
    /// The keys, in ascending byte order, each with its value and versions (see `record`). A
    /// persistent B-tree: cloning the store is O(1) and shares every node until one side writes
    /// (see the module docs).
    entries: OrdSet<Record>,
    /// Results of recently applied requests that carried an idempotency key.
    idempotency: IdempotencyTable,
    /// The leases and the keys they hold.
    leases: LeaseTable,
    /// Index of the last entry applied (command or not).
    /// Invariant: every `mod_index` and every remembered request index is `<= applied_index`.
    applied_index: u64,
    /// Invariant: the sum of [`entry_bytes`] over `entries`.
    store_bytes: u64,
}

impl PartialEq for KvStore {
    /// Equal states: every key with the same value and versions (records alone compare by key),
    /// the same idempotency records, leases, applied index and options.
    fn eq(&self, other: &KvStore) -> bool {
        self.options == other.options
            && self.applied_index == other.applied_index
            && self.store_bytes == other.store_bytes
            && self.idempotency == other.idempotency
            && self.leases == other.leases
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(other.entries.iter())
                .all(|(a, b)| a.same_as(b))
    }
}

impl Eq for KvStore {}

impl KvStore {
    /// An empty store at applied index 0.
    pub fn new(options: KvOptions) -> Self {
        KvStore {
            options,
            entries: OrdSet::new(),
            idempotency: IdempotencyTable::default(),
            leases: LeaseTable::default(),
            applied_index: 0,
            store_bytes: 0,
        }
    }

    /// Applies the committed command entry at `index` (`data` = an encoded [`WriteRequest`]).
    ///
    /// The applied index advances even when the command is refused: a command that fails to
    /// decode or breaks a key limit is a deterministic error on every replica and changes no
    /// key. A request whose idempotency key was already applied returns the first result and
    /// changes nothing, even if its operation differs from the first one.
    ///
    /// # Panics
    /// If `index` is not above the applied index: the driver must apply in log order, once.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Result<WriteResult, KvError> {
        self.apply_recording(index, &Bytes::copy_from_slice(data), &mut Vec::new())
            .map(|applied| applied.result)
    }

    /// [`KvStore::apply`], and appends to `changes` every key it changed (what a watch reports;
    /// a delete of an absent key or a failed compare changes nothing and appends nothing). The
    /// answer also names the index at which the result was produced: `index` itself, or for a
    /// retry answered from the idempotency table the index of the first application (where a
    /// transaction's gets read the store, and the index a client may continue from).
    pub fn apply_recording(
        &mut self,
        index: u64,
        data: &Bytes,
        changes: &mut Vec<KeyChange>,
    ) -> Result<Applied, KvError> {
        self.advance_applied_index(index);
        // Values share the entry's buffer with the log (see `shared_bytes`).
        let (request, stamp) = match shared_bytes::decode_sharing(data, decode_command) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(index, data_bytes = data.len(), %error, "refusing a committed command");
                return Err(error);
            }
        };
        request.validate()?;
        if let Some(idempotency_key) = &request.idempotency_key {
            if let Some((first_index, first_result)) = self.idempotency.get(idempotency_key) {
                if !plants::active(Plant::ApplyRetryTwice) {
                    return Ok(Applied {
                        index: first_index,
                        result: first_result.clone(),
                    });
                }
            }
        }
        let result = match stamp {
            Some(CommandStamp { quota_bytes }) => {
                self.apply_op_within_quota(index, request.op, data, quota_bytes, changes)
            }
            None => self.apply_op(index, request.op, data, changes),
        };
        // Only the planted bug reaches here with a key already recorded.
        let known = plants::active(Plant::ApplyRetryTwice)
            && request
                .idempotency_key
                .as_ref()
                .is_some_and(|key| self.idempotency.get(key).is_some());
        if let Some(idempotency_key) = request.idempotency_key.filter(|_| !known) {
            self.idempotency.record(
                idempotency_key,
                index,
                result.clone(),
                self.options.idempotency_keys_max,
            );
        }
        Ok(Applied { index, result })
    }

    /// Applies a committed entry that is not a command (a leader's no-op, a membership change):
    /// only the applied index advances.
    ///
    /// # Panics
    /// If `index` is not above the applied index.
    pub fn apply_noop(&mut self, index: u64) {
        self.advance_applied_index(index);
    }

    /// The value of `key`, if present (sharing the store's buffer, not a copy).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        self.entries.get(key.as_ref()).map(Record::value)
    }

    /// Keys starting with `prefix` in ascending byte order, at most `limit`, starting strictly
    /// after `after` when given (pass the last key of the previous page to continue).
    pub fn list(
        &self,
        prefix: impl AsRef<[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(&[u8], Value)> {
        let prefix = prefix.as_ref();
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.entries
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(|record| record.key().starts_with(prefix))
            .take(limit)
            .map(|record| (record.key(), record.value()))
            .collect()
    }

    /// The lease `lease_id`, if it exists.
    pub fn lease(&self, lease_id: u64) -> Option<&Lease> {
        self.leases.get(lease_id)
    }

    /// Every lease in ascending id order.
    pub fn leases_iter(&self) -> impl Iterator<Item = (u64, &Lease)> {
        self.leases.iter()
    }

    /// Number of leases.
    pub fn leases_len(&self) -> usize {
        self.leases.len()
    }

    /// The lease holding `key`, if any.
    pub fn lease_of(&self, key: &[u8]) -> Option<u64> {
        self.leases.lease_of(key)
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of idempotency keys currently remembered.
    pub fn idempotency_keys_len(&self) -> usize {
        self.idempotency.len()
    }

    /// The options the store was built with.
    pub fn options(&self) -> &KvOptions {
        &self.options
    }

    /// The store's size as the quota counts it: key + value + [`ENTRY_OVERHEAD_BYTES`] per key.
    pub fn store_bytes(&self) -> u64 {
        self.store_bytes
    }

    /// [`KvStore::apply_op`], undone (keys, leases and recorded changes) when it grew the store
    /// past `quota_bytes`. A command that cannot grow the store past it runs without the undo
    /// point, so the common case pays nothing; otherwise the O(1) clones of the persistent maps
    /// are the undo point.
    fn apply_op_within_quota(
        &mut self,
        index: u64,
        op: WriteOp,
        source: &Bytes,
        quota_bytes: u64,
        changes: &mut Vec<KeyChange>,
    ) -> WriteResult {
        let store_bytes = self.store_bytes;
        if store_bytes.saturating_add(op.growth_bytes_max()) <= quota_bytes {
            return self.apply_op(index, op, source, changes);
        }
        let undo = (self.entries.clone(), self.leases.clone(), changes.len());
        let result = self.apply_op(index, op, source, changes);
        let store_bytes_after = self.store_bytes;
        let enforced = !plants::active(Plant::QuotaNotEnforcedOnApply);
        if enforced && store_bytes_after > quota_bytes && store_bytes_after > store_bytes {
            let (entries, leases, changes_len) = undo;
            self.entries = entries;
            self.leases = leases;
            self.store_bytes = store_bytes;
            changes.truncate(changes_len);
            return WriteResult::QuotaExceeded {
                quota_bytes,
                store_bytes,
                store_bytes_after,
            };
        }
        result
    }

    fn advance_applied_index(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "applying index {index} at or below the applied index {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    /// Applies `op`, decoded from the command buffer `source` (which its records may share).
    fn apply_op(
        &mut self,
        index: u64,
        op: WriteOp,
        source: &Bytes,
        changes: &mut Vec<KeyChange>,
    ) -> WriteResult {
        match op {
            WriteOp::Put { key, value } => {
                let created = self.write(index, &key, &value, source, changes);
                WriteResult::Put {
                    mod_index: index,
                    created,
                }
            }
            WriteOp::Delete { key } => WriteResult::Deleted {
                existed: self.remove(index, &key, changes),
            },
            WriteOp::Cas {
                key,
                expected_mod_index,
                value,
            } => {
                let current_mod_index = self.mod_index_of(&key);
                if current_mod_index != expected_mod_index {
                    return WriteResult::CasMismatch { current_mod_index };
                }
                self.write(index, &key, &value, source, changes);
                WriteResult::CasOk { mod_index: index }
            }
            WriteOp::CasDelete {
                key,
                expected_mod_index,
            } => {
                let current_mod_index = self.mod_index_of(&key);
                if current_mod_index != expected_mod_index {
                    return WriteResult::CasMismatch { current_mod_index };
                }
                WriteResult::Deleted {
                    existed: self.remove(index, &key, changes),
                }
            }
            WriteOp::LeaseGrant { ttl_ms } => match self.leases.grant(index, ttl_ms) {
                Ok(()) => WriteResult::LeaseGranted {
                    lease_id: index,
                    ttl_ms,
                },
                Err(refusal) => lease_refused(index, refusal),
            },
            WriteOp::PutLeased {
                key,
                value,
                lease_id,
                expected_mod_index,
            } => {
                if let Err(refusal) = self.leases.check_attach(&key, lease_id) {
                    return lease_refused(lease_id, refusal);
                }
                let current_mod_index = self.mod_index_of(&key);
                if expected_mod_index.is_some_and(|expected| expected != current_mod_index) {
                    return WriteResult::CasMismatch { current_mod_index };
                }
                let shared: Arc<[u8]> = Arc::from(key.as_slice());
                let created = self.write(index, &key, &value, source, changes);
                self.leases.attach(shared, lease_id);
                match expected_mod_index {
                    None => WriteResult::Put {
                        mod_index: index,
                        created,
                    },
                    Some(_) => WriteResult::CasOk { mod_index: index },
                }
            }
            WriteOp::LeaseRevoke { lease_id } | WriteOp::LeaseExpire { lease_id } => {
                match self.leases.remove(lease_id) {
                    None => WriteResult::LeaseNotFound { lease_id },
                    Some(keys) => {
                        for key in keys.iter() {
                            let existed = self.remove(index, key, changes);
                            assert!(existed, "lease {lease_id} held the absent key {key:?}");
                        }
                        WriteResult::LeaseEnded {
                            lease_id,
                            keys_deleted: keys.len() as u64,
                        }
                    }
                }
            }
            WriteOp::Txn(txn) => {
                let (succeeded, results) = self.apply_txn(index, txn, source, changes);
                WriteResult::Txn { succeeded, results }
            }
        }
    }

    /// Removes `key` (and its lease attachment) at `index`; returns whether it was present.
    fn remove(&mut self, index: u64, key: &[u8], changes: &mut Vec<KeyChange>) -> bool {
        self.leases.detach(key);
        let Some(record) = self.entries.remove(key) else {
            return false;
        };
        self.store_bytes -= entry_bytes(record.key(), record.value_bytes());
        changes.push(KeyChange {
            index,
            key: record.key_shared(),
            kind: ChangeKind::Delete,
        });
        true
    }

    /// `mod_index` of `key`, 0 when absent.
    fn mod_index_of(&self, key: &[u8]) -> u64 {
        self.entries.get(key).map_or(0, |record| record.mod_index)
    }

    /// Writes `data` at `index`, detaching `key` from any lease (a `PutLeased` attaches it again
    /// after); returns whether the key was created. `source` is the command's buffer, which the
    /// record shares when it holds the key and the value (see `record`).
    fn write(
        &mut self,
        index: u64,
        key: &[u8],
        data: &Bytes,
        source: &Bytes,
        changes: &mut Vec<KeyChange>,
    ) -> bool {
        self.leases.detach(key);
        let (create_index, created) = match self.entries.get(key) {
            Some(record) => {
                self.store_bytes -= entry_bytes(record.key(), record.value_bytes());
                (record.create_index, false)
            }
            None => (index, true),
        };
        self.store_bytes += entry_bytes(key, data);
        let record = Record::new(key, data, Some(source), create_index, index);
        changes.push(KeyChange {
            index,
            key: record.key_shared(),
            kind: ChangeKind::Put {
                value: data.clone(),
                create_index,
            },
        });
        self.entries.insert(record);
        created
    }
}
