//! A stranger on the network (issue 11): a machine that knows the cluster's members, ids and
//! cluster id (all of it visible on the wire without TLS) but not the cluster secret, and posts
//! forged Raft RPCs that claim a member as their sender. Every node runs with a peer secret, so
//! each forgery must be refused with 401; one accepted (2xx) breaks "peer authentication", the
//! victim of the `skip-peer-auth` plant.
//!
//! The forgeries are stale heartbeats (term 0): a node that wrongly accepts one answers the
//! claimed sender with its own, higher term, which that member ignores, so the plant is caught
//! by this check and does not perturb the rest of the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_kv::env;
use raft_kv::http::client::HttpClient;
use raft_kv::node::peer_auth::{signed_post, PeerSecret};
use raft_kv::node::rpc::{self, RpcEnvelope};
use raft_kv::raft::{Message, MessageBody, NodeId};
use rand_core::RngCore;

use crate::plants::PEER_AUTHENTICATION;
use crate::recorder::Shared;

/// The cluster secret every simulated node holds.
pub const SIM_PEER_SECRET: &[u8] = b"the simulated cluster's secret, 32+ bytes";
/// Time between two forgeries.
const FORGERY_INTERVAL_MS: u64 = 400;

/// Whether the stranger runs in this seed: one seed in four (seeds 3, 7, 11, ...; no pinned
/// regression seed, so their traces stay as they were), and every seed of its plant.
pub fn runs_in(seed: u64, plant: raft_kv::plants::Plant) -> bool {
    seed % 4 == 3 || plant == raft_kv::plants::Plant::SkipPeerAuth
}

/// The simulated nodes' secret.
pub fn sim_peer_secret() -> PeerSecret {
    PeerSecret::new(SIM_PEER_SECRET).expect("the simulated secret is long enough")
}

/// Posts forgeries to random members until `stop` is set; `members` are `(id, addr)`.
pub async fn stranger_loop(
    cluster_id: u64,
    members: Vec<(NodeId, String)>,
    shared: Shared,
    stop: Arc<AtomicBool>,
) {
    let mut rng = env::rng();
    let http = HttpClient::new();
    let wrong_secret =
        PeerSecret::new(b"a stranger's guess at the secret, 32+ bytes").expect("long enough");
    let mut forgeries = 0u64;
    while !stop.load(Ordering::Relaxed) {
        env::sleep(Duration::from_millis(FORGERY_INTERVAL_MS)).await;
        let count = members.len() as u64;
        let target = (rng.next_u64() % count) as usize;
        let claimed = (target + 1 + (rng.next_u64() % (count - 1)) as usize) % members.len();
        let (to, addr) = &members[target];
        let from = members[claimed].0;
        let body = rpc::encode(&RpcEnvelope {
            cluster_id,
            from,
            to: *to,
            messages: vec![Message {
                from,
                to: *to,
                term: 0,
                body: MessageBody::Heartbeat {
                    leader_commit: 0,
                    read_seq: 0,
                },
            }],
        });
        // Half unsigned, half signed with a wrong secret.
        forgeries += 1;
        let secret = (forgeries % 2 == 0).then_some(&wrong_secret);
        let request = signed_post("/v1/raft/messages", body, secret);
        if let Ok(response) = http
            .call(addr, request, 64 << 10, Duration::from_secs(2))
            .await
        {
            if response.status().is_success() {
                shared.fail(
                    PEER_AUTHENTICATION,
                    format!(
                        "node {to:#x} accepted a forged raft rpc claiming {from:#x} ({}, answer {})",
                        if secret.is_some() { "wrong secret" } else { "no MAC" },
                        response.status()
                    ),
                    Vec::new(),
                );
                return;
            }
        }
    }
}
