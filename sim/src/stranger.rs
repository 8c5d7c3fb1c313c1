//! Security in the simulator (issue 11). Every simulated node runs with a peer secret and client
//! tokens (the workload's clients hold a `readwrite` token), and in some seeds a stranger on the
//! client machine probes them, once every 400 ms, in turn:
//! - a forged Raft RPC claiming a member as its sender, without a MAC or signed with a wrong
//!   secret: must get 401; a 2xx breaks "peer authentication" (plant `skip-peer-auth`);
//! - a write with a `read` token: must get 403; a write with no token: must get 401; a 2xx
//!   breaks "client authorization" (plant `skip-role-check`). Its key is outside the workload's
//!   keys, so a wrongly accepted write does not disturb the linearizability check.
//!
//! The forgeries are stale heartbeats (term 0): a node that wrongly accepts one answers the
//! claimed sender with its own, higher term, which that member ignores, so the plant is caught
//! by this check and does not perturb the rest of the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_kv::env;
use raft_kv::http::auth::{token_hash_hex, TokenTable};
use raft_kv::http::client::HttpClient;
use raft_kv::node::peer_auth::{signed_post, PeerSecret};
use raft_kv::node::rpc::{self, RpcEnvelope};
use raft_kv::plants::Plant;
use raft_kv::raft::{Message, MessageBody, NodeId};
use rand_core::RngCore;

use crate::plants::{CLIENT_AUTHORIZATION, PEER_AUTHENTICATION};
use crate::recorder::Shared;

/// The cluster secret every simulated node holds.
pub const SIM_PEER_SECRET: &[u8] = b"the simulated cluster's secret, 32+ bytes";
/// Time between two probes.
const PROBE_INTERVAL_MS: u64 = 400;

/// The workload clients' token (role `readwrite`), as their `Authorization` header.
pub const CLIENT_AUTHORIZATION_HEADER: &str = "Bearer sim-client-token-readwrite";
/// The stranger's token (role `read`).
const READ_TOKEN: &str = "sim-stranger-token-read";

/// The simulated nodes' token file.
pub fn sim_tokens() -> TokenTable {
    let client_token = CLIENT_AUTHORIZATION_HEADER
        .strip_prefix("Bearer ")
        .expect("a bearer header");
    let text = format!(
        "clients readwrite {}\nstranger read {}\n{}",
        token_hash_hex(client_token),
        token_hash_hex(READ_TOKEN),
        crate::rate_check::token_lines()
    );
    TokenTable::parse(&text).expect("the simulated token file parses")
}

/// Whether the stranger runs in this seed: one seed in four (seeds 3, 7, 11, ...; no pinned
/// regression seed, so their traces stay as they were), and every seed of its plants.
pub fn runs_in(seed: u64, plant: Plant) -> bool {
    seed % 4 == 3 || plant == Plant::SkipPeerAuth || plant == Plant::SkipRoleCheck
}

/// The simulated nodes' secret.
pub fn sim_peer_secret() -> PeerSecret {
    PeerSecret::new(SIM_PEER_SECRET).expect("the simulated secret is long enough")
}

/// Probes random members (see the module docs) until `stop` is set; `members` are `(id, addr)`.
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
    let mut probes = 0u64;
    while !stop.load(Ordering::Relaxed) {
        env::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
        probes += 1;
        let count = members.len() as u64;
        if probes % 3 != 0 {
            let (_, addr) = &members[(rng.next_u64() % count) as usize];
            if !probe_client_auth(&http, addr, probes % 3 == 1, &shared).await {
                return;
            }
            continue;
        }
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
        let secret = (probes % 6 == 0).then_some(&wrong_secret);
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

/// A write to a key no client uses, with the `read` token (`with_read_token`) or none; returns
/// whether it was refused as it must be (a failure is recorded otherwise).
async fn probe_client_auth(
    http: &HttpClient,
    addr: &str,
    with_read_token: bool,
    shared: &Shared,
) -> bool {
    let mut builder = hyper::Request::put("/v1/kv/stranger");
    if with_read_token {
        builder = builder.header("authorization", format!("Bearer {READ_TOKEN}"));
    }
    let request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .expect("a static request is valid");
    let Ok(response) = http
        .call(addr, request, 64 << 10, Duration::from_secs(2))
        .await
    else {
        return true;
    };
    if !response.status().is_success() {
        return true;
    }
    let who = if with_read_token {
        "a read-only token"
    } else {
        "no token"
    };
    shared.fail(
        CLIENT_AUTHORIZATION,
        format!(
            "{addr} accepted a write with {who} (answer {})",
            response.status()
        ),
        Vec::new(),
    );
    false
}
