//! The payload of the snapshot file (`wal/snapshot`, one frame as in a segment), versioned.
//!
//! Since version 2 the payload is `"RKSF"`, a format version byte, then the postcard
//! [`Snapshot`]. Earlier files have no header, and each release's [`Membership`] encoded
//! differently:
//!
//! | version | written by | membership fields |
//! |---|---|---|
//! | 0 | releases before membership changes (issue 10) | voters, learners |
//! | 1 | the first membership release | voters, learners, records |
//! | 2 | now (with the header) | voters, learners, records, removed |
//!
//! A headerless payload is read as version 0, else as version 1. Postcard writes fields in
//! order without tags, so the two are told apart by which one decodes *exactly*: a version 1
//! body always leaves bytes over when read as version 0 (its record count is read as the data
//! length, and the records and the data length behind it are longer than that count), so it is
//! never mistaken for one. A field added later must get a new version number here.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::Deserialize;

use super::format::decode_payload;
use crate::raft::{Index, MemberRecord, Membership, NodeId, Snapshot, SnapshotMeta, Term};

/// The bytes a versioned snapshot file's payload starts with.
pub const SNAPSHOT_FILE_MAGIC: &[u8; 4] = b"RKSF";
/// The format version written now.
pub const SNAPSHOT_FILE_VERSION: u8 = 2;

/// The payload of the snapshot file for `snapshot`: header, then the postcard snapshot.
pub fn snapshot_file_payload(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let mut payload = SNAPSHOT_FILE_MAGIC.to_vec();
    payload.push(SNAPSHOT_FILE_VERSION);
    postcard::to_extend(snapshot, payload)
        .map_err(|error| format!("cannot encode the snapshot: {error}"))
}

/// Decodes a snapshot file's payload of any version this release reads. Never panics.
pub fn decode_snapshot_file_payload(payload: &[u8]) -> Result<Snapshot, String> {
    let Some(rest) = payload.strip_prefix(SNAPSHOT_FILE_MAGIC) else {
        return decode_legacy(payload);
    };
    let headed = match rest.split_first() {
        Some((&SNAPSHOT_FILE_VERSION, body)) => decode_payload::<Snapshot>(body),
        Some((&version, _)) => Err(format!(
            "snapshot file format version {version}, this release reads up to \
             {SNAPSHOT_FILE_VERSION}"
        )),
        None => Err("snapshot file header without a version".into()),
    };
    // A headerless file whose first bytes happen to spell the header is still read.
    headed.or_else(|error| decode_legacy(payload).map_err(|_| error))
}

/// A headerless payload: version 0, else version 1.
fn decode_legacy(payload: &[u8]) -> Result<Snapshot, String> {
    match decode_payload::<LegacySnapshot<MembershipV0>>(payload) {
        Ok(snapshot) => Ok(snapshot.upgrade()),
        Err(v0_error) => decode_payload::<LegacySnapshot<MembershipV1>>(payload)
            .map(LegacySnapshot::upgrade)
            .map_err(|v1_error| {
                format!("not a snapshot of version 0 ({v0_error}) nor 1 ({v1_error})")
            }),
    }
}

/// A snapshot as versions 0 and 1 wrote it, with their membership `M`.
#[derive(Deserialize)]
struct LegacySnapshot<M> {
    meta: LegacyMeta<M>,
    data: Bytes,
}

#[derive(Deserialize)]
struct LegacyMeta<M> {
    index: Index,
    term: Term,
    membership: M,
}

/// Version 0's membership.
#[derive(Deserialize)]
struct MembershipV0 {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
}

/// Version 1's membership.
#[derive(Deserialize)]
struct MembershipV1 {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    records: BTreeMap<NodeId, MemberRecord>,
}

impl From<MembershipV0> for Membership {
    fn from(old: MembershipV0) -> Membership {
        Membership {
            voters: old.voters,
            learners: old.learners,
            ..Membership::default()
        }
    }
}

impl From<MembershipV1> for Membership {
    fn from(old: MembershipV1) -> Membership {
        Membership {
            voters: old.voters,
            learners: old.learners,
            records: old.records,
            ..Membership::default()
        }
    }
}

impl<M: Into<Membership>> LegacySnapshot<M> {
    fn upgrade(self) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index: self.meta.index,
                term: self.meta.term,
                membership: self.meta.membership.into(),
            },
            data: self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::RemovedMember;

    fn record(name: &str, incarnation: u64) -> MemberRecord {
        MemberRecord {
            name: name.into(),
            addr: format!("{name}:1"),
            incarnation,
        }
    }

    fn ids(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_snapshot_file_round_trips_with_its_header() {
        let mut membership = Membership::with_voters([1, 2]);
        membership.learners.insert(3);
        membership.records.insert(3, record("c", 9));
        membership.removed.push(RemovedMember {
            id: 4,
            incarnation: 8,
        });
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 40,
                term: 3,
                membership,
            },
            data: Bytes::from_static(b"state"),
        };
        let payload = snapshot_file_payload(&snapshot).unwrap();
        assert_eq!(&payload[..5], b"RKSF\x02");
        assert_eq!(decode_snapshot_file_payload(&payload), Ok(snapshot));
    }

    /// A true version 0 body, encoded field by field as that release wrote it (not through the
    /// legacy structs above): index, term, voters, learners, data.
    #[test]
    fn a_version_0_file_from_before_membership_changes_still_opens() {
        for data in [&b""[..], &b"kv state"[..]] {
            let body = postcard::to_stdvec(&(
                (
                    17u64,
                    2u64,
                    (ids(&[1, 2, 3]), BTreeSet::<NodeId>::from([4])),
                ),
                data,
            ))
            .unwrap();
            let snapshot = decode_snapshot_file_payload(&body).unwrap();
            assert_eq!((snapshot.meta.index, snapshot.meta.term), (17, 2));
            assert_eq!(snapshot.meta.membership.voters, ids(&[1, 2, 3]));
            assert_eq!(snapshot.meta.membership.learners, ids(&[4]));
            assert!(snapshot.meta.membership.records.is_empty());
            assert!(snapshot.meta.membership.removed.is_empty());
            assert_eq!(&snapshot.data[..], data);
        }
    }

    /// A true version 1 body: version 0's fields plus the records, no header.
    #[test]
    fn a_version_1_file_with_records_still_opens() {
        for (records, data) in [
            (BTreeMap::new(), &b""[..]),
            (BTreeMap::from([(1, record("a", 5))]), &b""[..]),
            (
                BTreeMap::from([(1, record("a", 5)), (2, record("bb", 6))]),
                &b"kv state"[..],
            ),
        ] {
            let body = postcard::to_stdvec(&(
                (
                    17u64,
                    2u64,
                    (ids(&[1, 2]), BTreeSet::<NodeId>::new(), records.clone()),
                ),
                data,
            ))
            .unwrap();
            let snapshot = decode_snapshot_file_payload(&body).unwrap();
            assert_eq!(snapshot.meta.membership.voters, ids(&[1, 2]));
            assert_eq!(snapshot.meta.membership.records, records);
            assert!(snapshot.meta.membership.removed.is_empty());
            assert_eq!(&snapshot.data[..], data);
        }
    }

    #[test]
    fn an_unknown_version_or_garbage_is_an_error_not_a_panic() {
        let mut payload = snapshot_file_payload(&Snapshot::default()).unwrap();
        payload[4] = 9;
        let error = decode_snapshot_file_payload(&payload).unwrap_err();
        assert!(error.contains("version 9"), "{error}");
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode_snapshot_file_payload(&bytes);
        }
        assert!(decode_snapshot_file_payload(b"").is_err());
        assert!(decode_snapshot_file_payload(b"RKSF").is_err());
    }
}
