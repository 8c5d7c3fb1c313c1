//! Security in the simulator (issue 11). Every simulated node runs with a peer secret and client
//! tokens (the workload's clients hold a `readwrite` token), and in some seeds a stranger on the
//! client machine probes them, once every 400 ms, in turn:
//! - a forged Raft RPC claiming a member as its sender, without a MAC or signed with a wrong
//!   secret: must get 401; a 2xx breaks "peer authentication" (plant `skip-peer-auth`). The
//!   forgery carries the claimed member's incarnation, which anyone may ask it for
//!   (`GET /v1/raft/hello`), so only the MAC stands between it and the core;
//! - the same RPC correctly signed (as a member whose data directory was replaced would send
//!   it) but under another incarnation than the member's record: must be refused (403); a 2xx
//!   breaks "incarnation check" (plant `skip-incarnation-check`, issue 10), but for a `202`:
//!   a receiver hears a valid leader's traffic from outside its configurations (a member that
//!   joined again after the receiver's log ends may lead; thesis §4.1), not as the member's,
//!   so nothing of it counts in a quorum (this stale term-0 heartbeat it refuses with 403);
//!   `204` is hearing it as the member. (A `202` would not tell another incarnation from a
//!   stranger: the claimed member may be one the receiver's configurations no longer name, and
//!   a stranger's vote requests are heard, seed 9626. So the probe sends no vote request;
//!   `src/node/rpc.rs` and `tests/membership.rs` check that another incarnation's are
//!   refused.)
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
use raft_kv::node::cluster::Hello;
use raft_kv::node::peer_auth::{signed_post, PeerSecret};
use raft_kv::node::rpc::{self, RpcEnvelope};
use raft_kv::plants::Plant;
use raft_kv::raft::{Message, MessageBody, NodeId};
use rand_core::RngCore;

use crate::plants::{CLIENT_AUTHORIZATION, INCARNATION_CHECK, PEER_AUTHENTICATION};
use crate::recorder::Shared;

/// The cluster secret every simulated node holds.
pub const SIM_PEER_SECRET: &[u8] = b"the simulated cluster's secret, 32+ bytes";
/// Time between two probes.
const PROBE_INTERVAL_MS: u64 = 400;

/// The workload clients' token (role `readwrite`), as their `Authorization` header.
pub const CLIENT_AUTHORIZATION_HEADER: &str = "Bearer sim-client-token-readwrite";
/// The stranger's token (role `read`).
const READ_TOKEN: &str = "sim-stranger-token-read";

/// The membership operator's token (role `admin`), also the joining nodes' `--join-token`.
pub const OPERATOR_TOKEN: &str = "sim-operator-token-admin";

/// The simulated nodes' token file.
pub fn sim_tokens() -> TokenTable {
    let client_token = CLIENT_AUTHORIZATION_HEADER
        .strip_prefix("Bearer ")
        .expect("a bearer header");
    let text = format!(
        "clients readwrite {}\nstranger read {}\noperator admin {}\n{}",
        token_hash_hex(client_token),
        token_hash_hex(READ_TOKEN),
        token_hash_hex(OPERATOR_TOKEN),
        crate::rate_check::token_lines()
    );
    TokenTable::parse(&text).expect("the simulated token file parses")
}

/// Whether the stranger runs in this seed: one seed in four (seeds 3, 7, 11, ...; no pinned
/// regression seed, so their traces stay as they were), and every seed of its plants.
pub fn runs_in(seed: u64, plant: Plant) -> bool {
    seed % 4 == 3
        || plant == Plant::SkipPeerAuth
        || plant == Plant::SkipRoleCheck
        || plant == Plant::SkipIncarnationCheck
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
    let cluster_secret = sim_peer_secret();
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
        let (from, from_addr) = &members[claimed];
        let from = *from;
        let from_incarnation = incarnation_of(&http, from_addr).await;
        let body = stale_heartbeat(cluster_id, from, *to, from_incarnation);
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
        // Signed with the cluster's secret, as a member's replaced data directory would send
        // it, but under another incarnation than the one the member's record names.
        if from_incarnation != 0 {
            let other = from_incarnation ^ 1;
            let body = stale_heartbeat(cluster_id, from, *to, other);
            let request = signed_post("/v1/raft/messages", body, Some(&cluster_secret));
            if let Ok(response) = http
                .call(addr, request, 64 << 10, Duration::from_secs(2))
                .await
            {
                if response.status().is_success()
                    && response.status() != hyper::StatusCode::ACCEPTED
                {
                    shared.fail(
                        INCARNATION_CHECK,
                        format!(
                            "node {to:#x} accepted a raft rpc from {from:#x} under incarnation \
                             {other:#x}, its record names {from_incarnation:#x} (answer {})",
                            response.status()
                        ),
                        Vec::new(),
                    );
                    return;
                }
            }
        }
    }
}

/// An envelope of one stale (term 0) heartbeat: a node that wrongly accepts it answers the
/// claimed sender with its own term, which that member ignores.
fn stale_heartbeat(cluster_id: u64, from: NodeId, to: NodeId, from_incarnation: u64) -> Vec<u8> {
    rpc::encode(&RpcEnvelope {
        cluster_id,
        from,
        to,
        from_incarnation,
        messages: vec![Message {
            from,
            to,
            term: 0,
            body: MessageBody::Heartbeat {
                leader_commit: 0,
                read_seq: 0,
            },
        }],
    })
}

/// The incarnation the member at `addr` answers to `GET /v1/raft/hello` (0 if it does not
/// answer: the forgery is then refused as another incarnation, which is no failure either).
async fn incarnation_of(http: &HttpClient, addr: &str) -> u64 {
    let request = hyper::Request::get("/v1/raft/hello")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("a static request is valid");
    match http
        .call(addr, request, 64 << 10, Duration::from_secs(2))
        .await
    {
        Ok(response) if response.status().is_success() => {
            serde_json::from_slice::<Hello>(response.body()).map_or(0, |hello| hello.incarnation)
        }
        _ => 0,
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
