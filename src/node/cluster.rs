//! Who is in the cluster: member names, ids and addresses, learned once at bootstrap and kept in
//! `cluster.json` in the data directory.
//!
//! `--peers` lists addresses only, so a fresh node asks each peer for its name
//! (`GET /v1/raft/hello`) until all have answered. The member set and the cluster id (a hash of
//! the sorted names) are then written down; a restart reads them back and asks nobody.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::env;
use crate::http::client::HttpClient;
use crate::node::config::{node_id_of, NodeConfig};
use crate::raft::{Membership, NodeId};

/// File name of the membership record inside the data directory.
pub const CLUSTER_FILE: &str = "cluster.json";

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name (`--id`).
    pub name: String,
    /// The member's Raft id, derived from its name.
    pub id: NodeId,
    /// Where this node reaches the member (`host:port`).
    pub addr: String,
    /// The incarnation of the member's data directory (0: unknown, from an older version).
    #[serde(default)]
    pub incarnation: u64,
}

/// The cluster as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// A hash of the sorted member names; RPCs from another cluster are refused.
    pub cluster_id: u64,
    /// This node's id.
    pub self_id: NodeId,
    /// Every member, this node included, sorted by id (the first configuration only: the
    /// configuration in the log rules once there is one).
    pub members: Vec<Member>,
    /// This node joined a running cluster through `--join`: it starts as no voter and waits
    /// for the leader's log.
    #[serde(default)]
    pub joined: bool,
}

/// File name of the incarnation id inside the data directory.
pub const INCARNATION_FILE: &str = "incarnation";

/// What `GET /v1/raft/hello?name=ASKER` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The answering node's name.
    pub name: String,
    /// The answering node's id.
    pub id: NodeId,
    /// The answering node's incarnation (0 until its data directory has one).
    #[serde(default)]
    pub incarnation: u64,
    /// The incarnation the answering node's configuration records for the asker, when it runs
    /// and the asker is a member: an asker with a fresh data directory and another incarnation
    /// lost its disk and must not take the member's place.
    #[serde(default)]
    pub asker_incarnation: Option<u64>,
}

impl ClusterInfo {
    /// Builds the cluster from this node and its peers' answers.
    pub fn new(self_name: &str, self_addr: &str, peers: Vec<(String, String)>) -> ClusterInfo {
        let mut members: Vec<Member> = peers
            .into_iter()
            .map(|(name, addr)| Member {
                id: node_id_of(&name),
                name,
                addr,
                incarnation: 0,
            })
            .collect();
        members.push(Member {
            name: self_name.to_string(),
            id: node_id_of(self_name),
            addr: self_addr.to_string(),
            incarnation: 0,
        });
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        let cluster_id = node_id_of(&names.join("\u{0}"));
        ClusterInfo {
            cluster_id,
            self_id: node_id_of(self_name),
            members,
            joined: false,
        }
    }

    /// The initial Raft membership: every member votes.
    pub fn membership(&self) -> Membership {
        Membership::with_voters(self.members.iter().map(|m| m.id))
    }

    /// The member with `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether `id` is a member.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.member(id).is_some()
    }
}

/// Why the membership could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster file exists but cannot be read.
    #[error("cannot read {path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The cluster file names another node than this one.
    #[error("data directory belongs to node {found:?}, not {expected:?}; use another --data-dir")]
    WrongNode {
        /// The name in the file.
        found: String,
        /// This node's name.
        expected: String,
    },
    /// Two members share a name.
    #[error("peer at {addr} calls itself {name:?}, a name already taken in this cluster")]
    DuplicateName {
        /// The peer's address.
        addr: String,
        /// The duplicated name.
        name: String,
    },
    /// `--join` could not get this node added.
    #[error("cannot join the cluster through {addr}: {reason}")]
    Join {
        /// The `--join` address.
        addr: String,
        /// The last answer.
        reason: String,
    },
    /// The data directory is empty but the cluster already has a member with this name (under
    /// another incarnation): the disk was lost or the name is taken. Joining as that member
    /// would vote with a forgotten log.
    #[error(
        "the data directory is empty but {name:?} is already a member of the cluster (its \
         disk was lost, or another node has the name): remove the member first \
         (curl -X DELETE http://<any member>/v1/cluster/members/{name}), then start this node \
         again with --join"
    )]
    AlreadyMember {
        /// This node's name.
        name: String,
    },
    /// I/O while checking for or saving the file.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Loads the membership from the data directory, or learns it from the peers and saves it.
pub async fn establish(
    config: &NodeConfig,
    client: &HttpClient,
    incarnation: u64,
) -> Result<ClusterInfo, ClusterError> {
    let path = config.data_dir.join(CLUSTER_FILE);
    // An error here must not read as "no file": that would overwrite the saved membership.
    let saved = env::fs::exists(&path)
        .await
        .map_err(|source| ClusterError::Io {
            path: path.display().to_string(),
            source,
        })?;
    if saved {
        let info = load(&path).await?;
        let self_id = node_id_of(&config.name);
        if info.self_id != self_id {
            let found = info
                .member(info.self_id)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            return Err(ClusterError::WrongNode {
                found,
                expected: config.name.clone(),
            });
        }
        return Ok(info);
    }
    if let Some(join_addr) = &config.join {
        let info = super::join::join(config, client, join_addr, incarnation).await?;
        save(&path, &info).await?;
        return Ok(info);
    }
    let mut answers: Vec<(String, String)> = Vec::new();
    let mut incarnations: Vec<(String, u64)> = vec![(config.name.clone(), incarnation)];
    for addr in &config.peers {
        let hello = ask_until_answered(client, addr, &config.name, config.rpc_timeout).await;
        if hello.name == config.name || answers.iter().any(|(name, _)| *name == hello.name) {
            return Err(ClusterError::DuplicateName {
                addr: addr.clone(),
                name: hello.name,
            });
        }
        // A running member remembers this node under another incarnation: this data directory
        // is not the one that member's votes and log lived in.
        if hello
            .asker_incarnation
            .is_some_and(|known| known != 0 && known != incarnation)
        {
            return Err(ClusterError::AlreadyMember {
                name: config.name.clone(),
            });
        }
        incarnations.push((hello.name.clone(), hello.incarnation));
        answers.push((hello.name, addr.clone()));
    }
    let mut info = ClusterInfo::new(&config.name, &config.listen_addr, answers);
    for member in &mut info.members {
        if let Some((_, known)) = incarnations.iter().find(|(name, _)| *name == member.name) {
            member.incarnation = *known;
        }
    }
    save(&path, &info).await?;
    Ok(info)
}

/// This data directory's incarnation: read back, or drawn (never 0) and made durable on the
/// first start, before the node answers any peer. A wiped directory gets a new one.
pub async fn load_or_create_incarnation(data_dir: &Path) -> Result<u64, ClusterError> {
    let path = data_dir.join(INCARNATION_FILE);
    let io = |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    };
    if env::fs::exists(&path).await.map_err(io)? {
        let bytes = env::fs::read(&path).await.map_err(io)?;
        let text = String::from_utf8_lossy(&bytes);
        return text.trim().parse().map_err(|e| ClusterError::BadFile {
            path: path.display().to_string(),
            reason: format!("{text:?} is not an incarnation: {e}"),
        });
    }
    let incarnation = rand_core::RngCore::next_u64(&mut env::rng()).max(1);
    env::fs::create_dir_all(data_dir).await.map_err(io)?;
    env::fs::write_atomic(&path, incarnation.to_string().as_bytes())
        .await
        .map_err(io)?;
    Ok(incarnation)
}

async fn ask_until_answered(
    client: &HttpClient,
    addr: &str,
    asker: &str,
    timeout: Duration,
) -> Hello {
    let mut attempts: u64 = 0;
    loop {
        let request = hyper::Request::get(format!("/v1/raft/hello?name={asker}"))
            .body(Full::new(Bytes::new()))
            .expect("a static request is valid");
        if let Ok(response) = client.call(addr, request, 64 << 10, timeout).await {
            if response.status().is_success() {
                if let Ok(hello) = serde_json::from_slice::<Hello>(response.body()) {
                    tracing::info!(peer = addr, name = %hello.name, "peer answered");
                    return hello;
                }
            }
        }
        if attempts % 25 == 0 {
            tracing::info!(peer = addr, "waiting for peer to start");
        }
        attempts += 1;
        env::sleep(Duration::from_millis(200)).await;
    }
}

async fn load(path: &Path) -> Result<ClusterInfo, ClusterError> {
    let bad = |reason: String| ClusterError::BadFile {
        path: path.display().to_string(),
        reason,
    };
    let bytes = env::fs::read(path).await.map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

async fn save(path: &Path, info: &ClusterInfo) -> Result<(), ClusterError> {
    let io = |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        env::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(info).expect("cluster info serializes");
    env::fs::write_atomic(path, &bytes).await.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_computes_the_same_cluster_id() {
        let a = ClusterInfo::new(
            "node1",
            "a:1",
            vec![
                ("node2".into(), "b:2".into()),
                ("node3".into(), "c:3".into()),
            ],
        );
        let b = ClusterInfo::new(
            "node2",
            "b:2",
            vec![
                ("node3".into(), "c:3".into()),
                ("node1".into(), "a:1".into()),
            ],
        );
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.membership(), b.membership());
        assert_ne!(a.self_id, b.self_id);
        let other = ClusterInfo::new("node1", "a:1", vec![("node4".into(), "d:4".into())]);
        assert_ne!(a.cluster_id, other.cluster_id);
    }
}
