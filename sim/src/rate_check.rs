//! The rate limit in the simulator (issue 11, `--rate-limit-rps`/`--rate-limit-burst`).
//!
//! Some seeds ([`runs_in`]) run every node with a rate limit of [`RATE_RPS`] requests per second
//! in bursts of [`RATE_BURST`] per client, and two more clients on the client machine, each with
//! its own `readwrite` token (so its own bucket on every node):
//! - the *polite* client reads a key once every [`POLITE_INTERVAL_MS`] (paced by the simulated
//!   clock, a tenth of the rate) from a random node, and asks a random node's `/health` as often;
//! - the *greedy* client writes unique values to its own key, [`GREEDY_WAVE`] at once (the burst)
//!   wave after wave to one node for [`GREEDY_HAMMER_MS`], then asks that node's `/health` and
//!   pauses [`GREEDY_PAUSE_MS`].
//!
//! The promises (property *rate limit*): the polite client is never answered `429` by any node;
//! `/health` is never answered `429`; every `429` carries a `Retry-After` of whole seconds between
//! 1 and the time the bucket takes to refill ([`retry_after_max_s`]); the greedy client, once it
//! has had answers to a burst, has had a `429`; and a write answered `429` is a definite "not
//! applied": its value never appears among the committed changes the nodes report. The workload's
//! clients share one token and may meet the limit too: their `429` ends the attempt as not applied
//! (`workload.rs`) and the linearizability checker holds them to it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::env;
use raft_kv::http::auth::token_hash_hex;
use raft_kv::http::client::HttpClient;
use raft_kv::http::rate_limit::RateLimitOptions;
use rand_core::RngCore;

use crate::plants::{Plant, RATE_LIMIT};
use crate::recorder::Shared;

/// Sustained requests per second per client on every node of a rate-limited seed.
pub const RATE_RPS: u32 = 50;
/// Requests per client at once.
pub const RATE_BURST: u32 = 10;
/// The polite client's pace (a tenth of the rate).
pub const POLITE_INTERVAL_MS: u64 = 200;
/// Writes the greedy client sends at once (one wave).
pub const GREEDY_WAVE: usize = 10;
/// How long the greedy client sends wave after wave to one node.
pub const GREEDY_HAMMER_MS: u64 = 500;
/// Time between two of the greedy client's bursts of waves.
pub const GREEDY_PAUSE_MS: u64 = 500;
/// The key the greedy client writes (outside the workload's keys).
pub const GREEDY_KEY: &str = "rate-greedy";
/// The key the polite client reads.
const POLITE_KEY: &str = "rate-polite";

const POLITE_TOKEN: &str = "sim-polite-token-readwrite";
const GREEDY_TOKEN: &str = "sim-greedy-token-readwrite";

/// Lines of the simulated token file for the polite and greedy clients.
pub fn token_lines() -> String {
    format!(
        "polite readwrite {}\ngreedy readwrite {}\n",
        token_hash_hex(POLITE_TOKEN),
        token_hash_hex(GREEDY_TOKEN)
    )
}

/// Whether seed `seed` runs with a rate limit: one unplanted seed in eight (2, 10, 18, ...; no
/// pinned regression seed) and every seed of the rate-limit plant. Gated like the lease holders,
/// so the seeds of other plants keep their schedule.
pub fn runs_in(seed: u64, plant: Plant) -> bool {
    match plant {
        Plant::RateLimitSharedBucket => true,
        Plant::None | Plant::CompactPastTransfer => seed % 8 == 2,
        _ => false,
    }
}

/// The limit every node of a rate-limited seed runs with.
pub fn options() -> RateLimitOptions {
    RateLimitOptions {
        requests_per_second: RATE_RPS,
        burst: RATE_BURST,
        clients_max: raft_kv::http::rate_limit::RATE_LIMIT_CLIENTS_MAX_DEFAULT,
    }
}

/// The longest `Retry-After` (seconds) a sane `429` states: the time a whole bucket takes to
/// refill, rounded up.
pub fn retry_after_max_s() -> u64 {
    u64::from(RATE_BURST.div_ceil(RATE_RPS))
}

/// Who asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker {
    /// The client that stays well under its rate.
    Polite,
    /// The client that bursts over it.
    Greedy,
}

/// What the rate-limit clients saw, checked at the end of the run by [`check_end`].
#[derive(Clone, Debug, Default)]
pub struct RateLog {
    /// Values of greedy writes answered `429`.
    pub refused_values: BTreeSet<Vec<u8>>,
    /// Values of the greedy key in the committed changes the nodes reported.
    pub applied_values: BTreeSet<Vec<u8>>,
    /// Greedy bursts every request of which was answered (no transport error).
    pub greedy_bursts_answered: u64,
    /// `429`s the greedy client got.
    pub greedy_refused: u64,
}

/// Checks one answer: `Ok(true)` for a sane `429`, `Ok(false)` for another answer, `Err` with
/// what broke otherwise.
pub fn check_answer(
    asker: Asker,
    path: &str,
    status: u16,
    retry_after: Option<&str>,
) -> Result<bool, String> {
    if status != 429 {
        return Ok(false);
    }
    if path == "/health" {
        return Err(format!("{asker:?} client's GET /health answered 429"));
    }
    if asker == Asker::Polite {
        return Err(format!(
            "the polite client ({} ms between requests, the limit {RATE_RPS}/s in bursts of \
             {RATE_BURST}) was answered 429 on {path}",
            POLITE_INTERVAL_MS
        ));
    }
    let seconds = retry_after.and_then(|text| text.trim().parse::<u64>().ok());
    match seconds {
        Some(s) if (1..=retry_after_max_s()).contains(&s) => Ok(true),
        _ => Err(format!(
            "a 429 on {path} with Retry-After {retry_after:?} (whole seconds in 1..={} expected)",
            retry_after_max_s()
        )),
    }
}

/// The end-of-run promises: no write answered `429` applied, and the greedy client met the limit
/// once it had a burst answered.
pub fn check_end(log: &RateLog) -> Result<(), String> {
    if let Some(value) = log.refused_values.intersection(&log.applied_values).next() {
        return Err(format!(
            "the greedy write of {:?} was answered 429 and applied",
            String::from_utf8_lossy(value)
        ));
    }
    if log.greedy_bursts_answered > 0 && log.greedy_refused == 0 {
        return Err(format!(
            "the greedy client had {} bursts of waves of {GREEDY_WAVE} writes answered and never \
             a 429",
            log.greedy_bursts_answered
        ));
    }
    Ok(())
}

fn request(method: &str, path: &str, token: &str, body: Vec<u8>) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .expect("the simulator builds valid requests")
}

/// Calls `addr` and checks the answer; returns `Some(is_429)` when answered, `None` on a
/// transport error, and records a failure when a promise broke.
async fn call_checked(
    http: &HttpClient,
    addr: &str,
    asker: Asker,
    req: hyper::Request<Full<Bytes>>,
    shared: &Shared,
) -> Option<bool> {
    let path = req.uri().path().to_string();
    let response = http
        .call(addr, req, 64 << 10, Duration::from_secs(2))
        .await
        .ok()?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok());
    match check_answer(asker, &path, response.status().as_u16(), retry_after) {
        Ok(refused) => Some(refused),
        Err(detail) => {
            shared.fail(RATE_LIMIT, format!("{addr}: {detail}"), Vec::new());
            None
        }
    }
}

/// The polite client: a read and a `/health` on random nodes every [`POLITE_INTERVAL_MS`].
pub async fn polite_loop(addrs: Vec<String>, shared: Shared, stop: Arc<AtomicBool>) {
    let mut rng = env::rng();
    let http = HttpClient::new();
    while !stop.load(Ordering::Relaxed) && !shared.failed() {
        env::sleep(Duration::from_millis(POLITE_INTERVAL_MS)).await;
        let addr = &addrs[(rng.next_u64() % addrs.len() as u64) as usize];
        let path = format!("/v1/kv/{POLITE_KEY}");
        let req = request("GET", &path, POLITE_TOKEN, Vec::new());
        call_checked(&http, addr, Asker::Polite, req, &shared).await;
        let addr = &addrs[(rng.next_u64() % addrs.len() as u64) as usize];
        let req = request("GET", "/health", POLITE_TOKEN, Vec::new());
        call_checked(&http, addr, Asker::Polite, req, &shared).await;
    }
}

/// The greedy client: for [`GREEDY_HAMMER_MS`] it writes to one node in waves of
/// [`GREEDY_WAVE`] writes at once, as fast as the answers come, then asks that node's `/health`
/// and pauses [`GREEDY_PAUSE_MS`].
pub async fn greedy_loop(addrs: Vec<String>, shared: Shared, stop: Arc<AtomicBool>) {
    let mut rng = env::rng();
    let http = HttpClient::new();
    let mut wave = 0u64;
    while !stop.load(Ordering::Relaxed) && !shared.failed() {
        env::sleep(Duration::from_millis(GREEDY_PAUSE_MS)).await;
        let addr = addrs[(rng.next_u64() % addrs.len() as u64) as usize].clone();
        let started = env::now();
        let mut all_answered = true;
        while env::now().duration_since(started) < Duration::from_millis(GREEDY_HAMMER_MS)
            && !stop.load(Ordering::Relaxed)
        {
            wave += 1;
            let mut calls = Vec::with_capacity(GREEDY_WAVE);
            for n in 0..GREEDY_WAVE {
                let value = format!("g{wave}.{n}").into_bytes();
                let path = format!("/v1/kv/{GREEDY_KEY}");
                let req = request("PUT", &path, GREEDY_TOKEN, value.clone());
                let (http, addr, shared) = (http.clone(), addr.clone(), shared.clone());
                calls.push(env::spawn(async move {
                    let refused = call_checked(&http, &addr, Asker::Greedy, req, &shared).await;
                    (value, refused)
                }));
            }
            for call in calls {
                match call.await {
                    Ok((value, Some(refused))) => {
                        if refused {
                            let mut rec = shared.lock();
                            rec.rate.greedy_refused += 1;
                            rec.coverage.rate_limited += 1;
                            rec.rate.refused_values.insert(value);
                        }
                    }
                    _ => all_answered = false,
                }
            }
        }
        if all_answered {
            shared.lock().rate.greedy_bursts_answered += 1;
        }
        let req = request("GET", "/health", GREEDY_TOKEN, Vec::new());
        call_checked(&http, &addr, Asker::Greedy, req, &shared).await;
    }
}

/// Runs [`check_end`] on what the run recorded.
pub fn check_run(shared: &Shared) {
    let result = check_end(&shared.lock().rate);
    match result {
        Ok(()) => {
            let refused = shared.lock().rate.greedy_refused;
            shared.trace(format!(
                "rate limit: {refused} greedy writes answered 429, none applied; the polite client never limited"
            ));
        }
        Err(detail) => shared.fail(RATE_LIMIT, detail, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_to_the_polite_client_or_on_health_fails() {
        assert!(check_answer(Asker::Polite, "/v1/kv/a", 429, Some("1")).is_err());
        assert!(check_answer(Asker::Greedy, "/health", 429, Some("1")).is_err());
        assert_eq!(
            check_answer(Asker::Polite, "/v1/kv/a", 404, None),
            Ok(false)
        );
        assert_eq!(check_answer(Asker::Greedy, "/health", 200, None), Ok(false));
    }

    #[test]
    fn a_429_needs_a_sane_retry_after() {
        assert_eq!(
            check_answer(Asker::Greedy, "/v1/kv/a", 429, Some("1")),
            Ok(true)
        );
        for bad in [None, Some("0"), Some("soon"), Some("3600")] {
            assert!(
                check_answer(Asker::Greedy, "/v1/kv/a", 429, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_refused_write_that_applied_fails() {
        let mut log = RateLog {
            greedy_bursts_answered: 3,
            greedy_refused: 2,
            ..RateLog::default()
        };
        log.refused_values.insert(b"g1.9".to_vec());
        log.applied_values.insert(b"g1.1".to_vec());
        assert_eq!(check_end(&log), Ok(()));
        log.applied_values.insert(b"g1.9".to_vec());
        let error = check_end(&log).unwrap_err();
        assert!(error.contains("g1.9"), "{error}");
    }

    #[test]
    fn a_greedy_client_never_limited_fails() {
        let log = RateLog {
            greedy_bursts_answered: 2,
            ..RateLog::default()
        };
        assert!(check_end(&log).is_err());
        assert_eq!(check_end(&RateLog::default()), Ok(()));
    }

    #[test]
    fn only_unplanted_seeds_of_one_in_eight_and_the_plants_seeds_run_it() {
        assert!(runs_in(2, Plant::None));
        assert!(!runs_in(6, Plant::None));
        assert!(runs_in(1, Plant::RateLimitSharedBucket));
        assert!(!runs_in(2, Plant::LyingFsync));
    }
}
