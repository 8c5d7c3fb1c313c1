//! The clients: tasks on their own simulated machine calling the real HTTP API of random nodes,
//! recording every operation as the client saw it (call and return times from the virtual clock,
//! input, output) for the linearizability checker.
//!
//! Outcomes: 2xx, 404 and 409 are definite; 503 (no leader, dropped, leader unreachable,
//! overloaded) and a refused connection mean the attempt was not applied; 504 and a broken or
//! timed-out call leave the outcome unknown, so writes are retried with the same
//! `Idempotency-Key` and, if never resolved, recorded with `ret: None`. Failed reads are dropped.
//! A 503 `dropped` is a promise that the write did not and will never apply: the client takes
//! it at its word and ends the operation there (a retry with the same key would be answered
//! from the idempotency table and hide a broken promise from the checker).
//!
//! A `507 quota_exceeded` is definite too: the store refused the write at apply, and a retry with
//! the same key would only repeat the refusal from the idempotency table. The operation ends
//! there as not applied, so the linearizability model never sees it: a refused write that
//! applied after all shows up as a read of a value no operation wrote.
//!
//! A `429 rate_limited` (rate-limited seeds, `rate_check.rs`) is refused by the node the client
//! asked before anything is proposed: the attempt is not applied and the client may retry
//! elsewhere; an operation whose every attempt was refused ends as not applied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::env;
use raft_kv::http::client::{ClientError, HttpClient};
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::linearizability::{KvInput, KvOutput, Operation, TXN_GROUP, TXN_KEYS};
use crate::recorder::Shared;
use crate::scenario::{Scenario, CLIENT_BACKOFF_MS_MAX, CLIENT_TIMEOUT_MS_MAX};

/// Attempts of one write before its outcome is left unknown.
const WRITE_ATTEMPTS_MAX: u32 = 3;
/// Client operations per key in one run at most: the clients stop starting new ones beyond it,
/// so that the linearizability search stays within its budget (a single contended key with
/// 4 500 operations exhausted 20 million steps and 1.3 GB).
pub const OPS_PER_KEY_MAX: u64 = 1_000;
/// Largest response body a client reads.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Virtual nanoseconds since the simulation started (the one global clock, never skewed).
pub fn virtual_nanos() -> u64 {
    u64::try_from(madsim::time::TimeHandle::current().elapsed().as_nanos())
        .expect("virtual time fits in u64")
}

/// The key names the clients share.
pub fn key_names(keys_count: usize) -> Vec<String> {
    (0..keys_count).map(|k| format!("k{k}")).collect()
}

/// What one attempt told the client.
#[derive(Debug)]
enum Attempt {
    /// The store answered; the operation took effect exactly as described (or is a read).
    Definite(KvOutput),
    /// The attempt was certainly not applied (503, connection refused).
    NotApplied(String),
    /// The node promised the write did not and will never apply (503 `dropped`).
    Dropped(String),
    /// The store refused the write for the quota (507 `quota_exceeded`): not applied, ever.
    QuotaRefused(String),
    /// The node refused the request for its client's rate limit (429): not applied.
    RateLimited(String),
    /// The attempt may or may not have been applied (504, broken or timed-out call).
    Unknown(String),
}

/// How a whole operation ended.
#[derive(Debug)]
pub enum Ending {
    /// Answered.
    Definite(KvOutput),
    /// No attempt was applied.
    NotApplied,
    /// Unknown outcome.
    Unknown,
}

/// One client machine's view of the cluster.
#[derive(Clone)]
pub struct ClientContext {
    /// Every node's `host:port`, spare machines' included.
    pub addrs: Vec<String>,
    /// How many of `addrs` (the first ones) have had a node started: the supervisor raises it
    /// when a spare machine joins, so clients do not spend their attempts on machines that
    /// never ran.
    pub started: Arc<AtomicUsize>,
    /// The keys.
    pub keys: Vec<String>,
    /// The per-attempt call timeout.
    pub call_timeout: Duration,
    /// Shared recorder.
    pub shared: Shared,
}

impl ClientContext {
    /// The context for `scenario`'s clients.
    pub fn new(scenario: &Scenario, addrs: Vec<String>, shared: Shared) -> ClientContext {
        let call_timeout =
            Duration::from_millis((scenario.request_timeout_ms + 1_000).min(CLIENT_TIMEOUT_MS_MAX));
        ClientContext {
            started: Arc::new(AtomicUsize::new(scenario.nodes_count.min(addrs.len()))),
            addrs,
            keys: key_names(scenario.keys_count),
            call_timeout,
            shared,
        }
    }

    /// The addresses of machines that have had a node (removed and crashed ones included).
    pub fn started_addrs(&self) -> &[String] {
        let started = self.started.load(Ordering::Relaxed).min(self.addrs.len());
        &self.addrs[..started]
    }
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[usize::try_from(below(rng, items.len() as u64)).expect("small index")]
}

/// Runs client `client` until `stop` is set, then finishes its operation in flight and returns.
pub async fn client_loop(
    client: u64,
    ctx: ClientContext,
    think_ms: (u64, u64),
    duplicate_probability: f64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = env::rng();
    let http = HttpClient::new();
    // The latest modification index this client saw per key (what a CAS expects).
    let mut seen_mod_index: BTreeMap<String, u64> = BTreeMap::new();
    let mut seq = 0u64;
    let ops_max = OPS_PER_KEY_MAX * ctx.keys.len() as u64;
    while !stop.load(Ordering::Relaxed) && ctx.shared.ops_begun() < ops_max {
        seq += 1;
        let key = pick(&mut rng, &ctx.keys).clone();
        let value = format!("c{client}.{seq}").into_bytes();
        let input = match below(&mut rng, 100) {
            0..=34 => KvInput::Get,
            35..=64 => KvInput::Put { value },
            65..=84 => {
                let expected_mod_index = if below(&mut rng, 5) == 0 {
                    below(&mut rng, 40)
                } else {
                    seen_mod_index.get(&key).copied().unwrap_or(0)
                };
                KvInput::Cas {
                    expected_mod_index,
                    value,
                }
            }
            _ => KvInput::Delete,
        };
        let duplicate = !matches!(input, KvInput::Get)
            && (rng.next_u64() % 10_000) as f64 / 10_000.0 < duplicate_probability;
        let idempotency_key = format!("c{client}-{seq}");
        let call = virtual_nanos();
        let pending_slot = ctx.shared.begin_op(Operation {
            client,
            key: key.clone(),
            input: input.clone(),
            call,
            ret: None,
            output: None,
        });
        let ending = run_operation(
            &http,
            &ctx,
            &mut rng,
            &key,
            &input,
            &idempotency_key,
            duplicate,
        )
        .await;
        let ret = virtual_nanos();
        match &ending {
            Ending::Definite(output) => {
                match output {
                    KvOutput::Get { mod_index, .. }
                    | KvOutput::Put { mod_index }
                    | KvOutput::CasOk { mod_index } => {
                        seen_mod_index.insert(key.clone(), *mod_index);
                    }
                    KvOutput::Delete { .. } => {
                        seen_mod_index.insert(key.clone(), 0);
                    }
                    KvOutput::CasMismatch | KvOutput::Txn { .. } => {}
                }
                ctx.shared.end_op(pending_slot, Some((ret, output.clone())));
            }
            Ending::NotApplied => ctx.shared.drop_op(pending_slot),
            Ending::Unknown if matches!(input, KvInput::Get) => ctx.shared.drop_op(pending_slot),
            Ending::Unknown => ctx.shared.end_op(pending_slot, None),
        }
        let think = think_ms.0 + below(&mut rng, think_ms.1 - think_ms.0 + 1);
        env::sleep(Duration::from_millis(think)).await;
    }
}

/// Transactions one transaction client starts in a run at most (the group is one partition
/// of the linearizability check, searched as a whole).
pub const TXNS_PER_CLIENT_MAX: u64 = 150;

/// Runs transaction client `client` until `stop` is set: transactions on the group
/// [`TXN_GROUP`], compared on `t0`'s value as this client last saw it (sometimes on an older
/// value, or on `t0` being absent), putting a fresh value into both keys (one in six: deleting
/// both) or reading both.
pub async fn txn_loop(
    client: u64,
    ctx: ClientContext,
    mut rng: ChaCha8Rng,
    think_ms: (u64, u64),
    stop: Arc<AtomicBool>,
) {
    let http = HttpClient::new();
    let mut seen: Option<Vec<u8>> = None;
    let mut older: Option<Vec<u8>> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < TXNS_PER_CLIENT_MAX {
        seq += 1;
        let if_value = match below(&mut rng, 10) {
            0 => None,
            1 => older.clone(),
            _ => seen.clone(),
        };
        let value = (below(&mut rng, 6) != 0).then(|| format!("x{client}.{seq}").into_bytes());
        let input = KvInput::Txn { if_value, value };
        let idempotency_key = format!("x{client}-{seq}");
        let pending_slot = ctx.shared.begin_op(Operation {
            client,
            key: TXN_GROUP.to_string(),
            input: input.clone(),
            call: virtual_nanos(),
            ret: None,
            output: None,
        });
        let ending = run_operation(
            &http,
            &ctx,
            &mut rng,
            TXN_GROUP,
            &input,
            &idempotency_key,
            false,
        )
        .await;
        let ret = virtual_nanos();
        match ending {
            Ending::Definite(output) => {
                if let KvOutput::Txn {
                    succeeded, reads, ..
                } = &output
                {
                    let now = if *succeeded {
                        match &input {
                            KvInput::Txn { value, .. } => value.clone(),
                            _ => None,
                        }
                    } else {
                        reads.first().cloned().flatten()
                    };
                    if now != seen {
                        older = std::mem::replace(&mut seen, now);
                    }
                }
                ctx.shared.end_op(pending_slot, Some((ret, output)));
            }
            Ending::NotApplied => ctx.shared.drop_op(pending_slot),
            Ending::Unknown => ctx.shared.end_op(pending_slot, None),
        }
        let think = think_ms.0 + below(&mut rng, think_ms.1 - think_ms.0 + 1);
        env::sleep(Duration::from_millis(think)).await;
    }
}

/// Runs one operation to its end: one attempt for a read, up to [`WRITE_ATTEMPTS_MAX`] for a
/// write (same idempotency key, random nodes).
pub async fn run_operation(
    http: &HttpClient,
    ctx: &ClientContext,
    rng: &mut ChaCha8Rng,
    key: &str,
    input: &KvInput,
    idempotency_key: &str,
    duplicate: bool,
) -> Ending {
    let attempts_max = if matches!(input, KvInput::Get) {
        1
    } else {
        WRITE_ATTEMPTS_MAX
    };
    // A duplicate in flight may apply even if every attempt of ours was refused.
    let mut maybe_applied = false;
    if duplicate {
        maybe_applied = true;
        let addr = pick(rng, ctx.started_addrs()).clone();
        let request = build_request(key, input, idempotency_key);
        let http = http.clone();
        let timeout = ctx.call_timeout;
        drop(env::spawn(async move {
            let _ = http.call(&addr, request, RESPONSE_BYTES_MAX, timeout).await;
        }));
    }
    for attempt in 0..attempts_max {
        if attempt > 0 {
            env::sleep(Duration::from_millis(
                50 + below(rng, CLIENT_BACKOFF_MS_MAX - 50),
            ))
            .await;
        }
        let addr = pick(rng, ctx.started_addrs()).clone();
        let request = build_request(key, input, idempotency_key);
        let result = http
            .call(&addr, request, RESPONSE_BYTES_MAX, ctx.call_timeout)
            .await;
        let outcome = classify(input, result);
        match outcome {
            Attempt::Definite(output) => {
                tracing::debug!(key, %input, attempt, addr, %output, "client attempt answered");
                return Ending::Definite(output);
            }
            Attempt::NotApplied(reason) => {
                tracing::debug!(key, %input, attempt, addr, reason, "client attempt not applied")
            }
            Attempt::Dropped(reason) => {
                tracing::debug!(key, %input, attempt, addr, reason, "client attempt dropped");
                break;
            }
            Attempt::QuotaRefused(reason) => {
                tracing::debug!(key, %input, attempt, addr, reason, "client attempt over quota");
                ctx.shared.lock().coverage.quota_refused += 1;
                // The idempotency key's one application was the refusal: nothing else applies.
                return Ending::NotApplied;
            }
            Attempt::RateLimited(reason) => {
                tracing::debug!(key, %input, attempt, addr, reason, "client attempt rate limited");
                ctx.shared.lock().coverage.rate_limited += 1;
            }
            Attempt::Unknown(reason) => {
                tracing::debug!(key, %input, attempt, addr, reason, "client attempt outcome unknown");
                maybe_applied = true;
            }
        }
    }
    if maybe_applied {
        Ending::Unknown
    } else {
        Ending::NotApplied
    }
}

fn build_request(key: &str, input: &KvInput, idempotency_key: &str) -> hyper::Request<Full<Bytes>> {
    let path = format!("/v1/kv/{key}");
    let (method, uri, body) = match input {
        KvInput::Txn { if_value, value } => {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let compare = match if_value {
                Some(if_value) => serde_json::json!({"key": TXN_KEYS[0], "value": text(if_value)}),
                None => serde_json::json!({"key": TXN_KEYS[0], "exists": false}),
            };
            let writes: Vec<_> = TXN_KEYS
                .iter()
                .map(|key| match value {
                    Some(value) => serde_json::json!({"put": {"key": key, "value": text(value)}}),
                    None => serde_json::json!({"delete": {"key": key}}),
                })
                .collect();
            let gets: Vec<_> = TXN_KEYS
                .iter()
                .map(|key| serde_json::json!({"get": {"key": key}}))
                .collect();
            let body =
                serde_json::json!({"compare": [compare], "success": writes, "failure": gets});
            ("POST", "/v1/txn".to_string(), body.to_string().into_bytes())
        }
        KvInput::Get => ("GET", path, Vec::new()),
        KvInput::Put { value } => ("PUT", path, value.clone()),
        KvInput::Delete => ("DELETE", path, Vec::new()),
        KvInput::Cas {
            expected_mod_index,
            value,
        } => (
            "PUT",
            format!("{path}?cas={expected_mod_index}"),
            value.clone(),
        ),
    };
    let mut builder = hyper::Request::builder().method(method).uri(uri).header(
        "authorization",
        crate::stranger::CLIENT_AUTHORIZATION_HEADER,
    );
    if !matches!(input, KvInput::Get) {
        builder = builder.header("idempotency-key", idempotency_key);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("the simulator builds valid requests")
}

/// The answer to a transaction of [`txn_loop`]: its index, branch and (failure) reads.
fn txn_output(body: &[u8]) -> Option<KvOutput> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let succeeded = json.get("succeeded")?.as_bool()?;
    let results = json.get("results")?.as_array()?;
    let reads = if succeeded {
        Vec::new()
    } else {
        results
            .iter()
            .map(|result| {
                let get = result.get("get")?;
                if get.is_null() {
                    return Some(None);
                }
                Some(Some(get.get("value")?.as_str()?.as_bytes().to_vec()))
            })
            .collect::<Option<_>>()?
    };
    Some(KvOutput::Txn {
        index: json.get("index")?.as_u64()?,
        succeeded,
        reads,
    })
}

fn json_u64(body: &[u8], field: &str) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get(field)?.as_u64()
}

fn json_str(body: &[u8], field: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(json.get(field)?.as_str()?.to_string())
}

fn json_bool(body: &[u8], field: &str) -> Option<bool> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get(field)?.as_bool()
}

/// Turns one HTTP exchange into what the client learned. An answer the client cannot make sense
/// of is a bug in the node's API, reported loudly.
fn classify(
    input: &KvInput,
    result: Result<raft_kv::http::client::FullResponse, ClientError>,
) -> Attempt {
    let response = match result {
        Ok(response) => response,
        // Never sent.
        Err(e @ ClientError::Connect { .. }) => return Attempt::NotApplied(e.to_string()),
        Err(e) => return Attempt::Unknown(e.to_string()),
    };
    let status = response.status().as_u16();
    let body = response.body();
    let text = || String::from_utf8_lossy(body).into_owned();
    match (status, input) {
        (503, _) if json_str(body, "code").as_deref() == Some("dropped") => {
            Attempt::Dropped(text())
        }
        (503 | 408, _) => Attempt::NotApplied(text()),
        (429, _) if json_str(body, "code").as_deref() == Some("rate_limited") => {
            Attempt::RateLimited(text())
        }
        (507, KvInput::Put { .. } | KvInput::Cas { .. } | KvInput::Txn { .. })
            if json_str(body, "code").as_deref() == Some("quota_exceeded") =>
        {
            Attempt::QuotaRefused(text())
        }
        (504, _) => Attempt::Unknown(text()),
        (200, KvInput::Get) => {
            let mod_index = response
                .headers()
                .get("x-mod-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("GET answered 200 without a valid x-mod-index header"));
            Attempt::Definite(KvOutput::Get {
                value: Some(body.to_vec()),
                mod_index,
            })
        }
        (404, KvInput::Get) if text().contains("key_not_found") => {
            Attempt::Definite(KvOutput::Get {
                value: None,
                mod_index: 0,
            })
        }
        (200 | 201, KvInput::Put { .. }) => Attempt::Definite(KvOutput::Put {
            mod_index: json_u64(body, "mod_index")
                .unwrap_or_else(|| panic!("PUT answered {status} without mod_index: {}", text())),
        }),
        (200, KvInput::Cas { .. }) => Attempt::Definite(KvOutput::CasOk {
            mod_index: json_u64(body, "mod_index")
                .unwrap_or_else(|| panic!("CAS answered 200 without mod_index: {}", text())),
        }),
        (409, KvInput::Cas { .. }) => Attempt::Definite(KvOutput::CasMismatch),
        (200, KvInput::Delete) => Attempt::Definite(KvOutput::Delete {
            existed: json_bool(body, "deleted")
                .unwrap_or_else(|| panic!("DELETE answered 200 without deleted: {}", text())),
        }),
        (200, KvInput::Txn { .. }) => Attempt::Definite(txn_output(body).unwrap_or_else(|| {
            panic!(
                "POST /v1/txn answered 200 without index, succeeded and results: {}",
                text()
            )
        })),
        _ => panic!("unexpected answer to {input}: {status} {}", text()),
    }
}
