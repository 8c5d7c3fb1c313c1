//! `raft-kv bench`: N concurrent clients writing fixed-size values to keys drawn uniformly at
//! random among `--keys`, optionally after preloading every key once (`--preload`, untimed), with
//! a progress line per second and throughput plus p50/p99/p999 latency at the end.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use raft_kv::env;
use raft_kv::http::client::HttpClient;

/// Flags of `raft-kv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The cluster's endpoints, comma-separated `host:port`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
    )]
    endpoints: Vec<String>,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Send every request to the leader (found through /v1/cluster) instead of spreading them
    /// over all endpoints (followers forward).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_only: bool,
    /// Before the timed run, write every key once (untimed), so the store holds `--keys` keys.
    #[arg(long)]
    preload: bool,
    #[command(flatten)]
    tls: super::client::TlsArgs,
    /// A bearer token (role `readwrite` or `admin`) for clusters started with `--auth-tokens`;
    /// `RAFT_KV_TOKEN` keeps it out of the process list.
    #[arg(long, env = "RAFT_KV_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The `Authorization` header value for `token`, if one was given.
fn authorization_of(token: Option<&str>) -> Option<Arc<str>> {
    token
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(|token| Arc::from(format!("Bearer {token}")))
}

/// A request carrying `authorization` when set.
fn request(
    method: hyper::Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::builder().method(method).uri(path);
    if let Some(authorization) = authorization {
        builder = builder.header(hyper::header::AUTHORIZATION, authorization);
    }
    builder
        .body(Full::new(body))
        .expect("a bench request is valid")
}

/// Requests in flight at once while preloading.
const PRELOAD_CLIENTS: u64 = 64;

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(bench(args))
}

async fn bench(mut args: BenchArgs) -> ExitCode {
    let tls = match args.tls.load(&args.endpoints).await {
        Ok(tls) => tls,
        Err(failure) => {
            eprintln!("raft-kv bench: {}", failure.message);
            return ExitCode::from(failure.exit as u8);
        }
    };
    args.endpoints = args
        .endpoints
        .iter()
        .map(|e| {
            super::client::strip_scheme(e.trim())
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    let client = HttpClient::with_tls(tls);
    let authorization = authorization_of(args.token.as_deref());
    let leader = match wait_for_leader_with(
        &client,
        &args.endpoints,
        Duration::from_secs(30),
        authorization.as_deref(),
    )
    .await
    {
        Ok(leader) => leader,
        Err(error) => {
            eprintln!("raft-kv bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let targets: Vec<String> = if args.leader_only {
        vec![leader.clone()]
    } else {
        args.endpoints.clone()
    };
    outln!(
        "raft-kv bench: {} clients, {} s, {}-byte values, {} keys, to {}",
        args.clients,
        args.seconds,
        args.value_bytes,
        args.keys,
        if args.leader_only {
            format!("the leader {leader}")
        } else {
            "all endpoints".to_string()
        }
    );
    let value = Bytes::from(vec![b'x'; args.value_bytes]);
    if args.preload {
        let started = env::now();
        match preload(&client, &targets, args.keys, &value, authorization.clone()).await {
            Ok(()) => outln!(
                "  preloaded {} keys in {:.1} s (untimed)",
                args.keys,
                env::now().duration_since(started).as_secs_f64()
            ),
            Err(error) => {
                eprintln!("raft-kv bench: preload failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        let client = client.clone();
        let target = targets[(id as usize) % targets.len()].clone();
        let (value, done, completed, failed, authorization) = (
            value.clone(),
            done.clone(),
            completed.clone(),
            failed.clone(),
            authorization.clone(),
        );
        let keys = args.keys;
        tasks.push(env::spawn(async move {
            let mut latencies_us: Vec<u64> = Vec::new();
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            // A fixed seed per client: two runs write the same key sequence.
            let mut rng = ChaCha8Rng::seed_from_u64(id);
            while !done.load(Ordering::Relaxed) {
                let key = rng.next_u64() % keys;
                let request = request(
                    hyper::Method::PUT,
                    &bench_key_path(key),
                    value.clone(),
                    authorization.as_deref(),
                );
                let started = env::now();
                match client
                    .call(&target, request, 1 << 20, Duration::from_secs(10))
                    .await
                {
                    Ok(response) if response.status().is_success() => {
                        latencies_us.push(env::now().duration_since(started).as_micros() as u64);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *failures
                            .entry(response.status().as_u16().to_string())
                            .or_insert(0u64) += 1;
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let kind = match error {
                            raft_kv::http::client::ClientError::Timeout { .. } => "client timeout",
                            raft_kv::http::client::ClientError::Connect { .. } => "connect error",
                            raft_kv::http::client::ClientError::Http { .. } => "http error",
                        };
                        *failures.entry(kind.to_string()).or_insert(0u64) += 1;
                    }
                }
            }
            (latencies_us, failures)
        }));
    }
    let started = env::now();
    let mut last = 0u64;
    for second in 1..=args.seconds {
        env::sleep(Duration::from_secs(1)).await;
        let now_completed = completed.load(Ordering::Relaxed);
        outln!(
            "  {second:>4} s  {:>8} writes/s  {:>10} total  {:>6} errors",
            now_completed - last,
            now_completed,
            failed.load(Ordering::Relaxed)
        );
        last = now_completed;
    }
    done.store(true, Ordering::Relaxed);
    let elapsed = env::now().duration_since(started).as_secs_f64();
    let mut latencies: Vec<u64> = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        if let Ok((mut part, part_failures)) = task.await {
            latencies.append(&mut part);
            for (kind, count) in part_failures {
                *failures.entry(kind).or_insert(0) += count;
            }
        }
    }
    latencies.sort_unstable();
    let total = latencies.len();
    let pct = |p: f64| -> f64 {
        if total == 0 {
            return 0.0;
        }
        let rank = ((p * total as f64).ceil() as usize).clamp(1, total) - 1;
        latencies[rank] as f64 / 1000.0
    };
    outln!("raft-kv bench result:");
    outln!(
        "  writes      {total} ok, {} failed",
        failed.load(Ordering::Relaxed)
    );
    outln!("  throughput  {:.0} writes/s", total as f64 / elapsed);
    outln!(
        "  latency     p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    if total == 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The path of bench key number `key`.
fn bench_key_path(key: u64) -> String {
    format!("/v1/kv/bench-{key:08}")
}

/// Writes every key in `0..keys` once, [`PRELOAD_CLIENTS`] at a time, retrying refusals.
async fn preload(
    client: &HttpClient,
    targets: &[String],
    keys: u64,
    value: &Bytes,
    authorization: Option<Arc<str>>,
) -> Result<(), String> {
    /// Attempts per key before the preload gives up.
    const ATTEMPTS_MAX: u32 = 20;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..PRELOAD_CLIENTS {
        let (client, next, value, authorization) = (
            client.clone(),
            next.clone(),
            value.clone(),
            authorization.clone(),
        );
        let target = targets[(id as usize) % targets.len()].clone();
        tasks.push(env::spawn(async move {
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= keys {
                    return Ok(());
                }
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let request = request(
                        hyper::Method::PUT,
                        &bench_key_path(key),
                        value.clone(),
                        authorization.as_deref(),
                    );
                    let outcome = client
                        .call(&target, request, 1 << 20, Duration::from_secs(10))
                        .await;
                    match outcome {
                        Ok(response) if response.status().is_success() => break,
                        _ if attempt < ATTEMPTS_MAX => {
                            env::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(response) => {
                            return Err(format!("key {key}: HTTP {}", response.status()))
                        }
                        Err(error) => return Err(format!("key {key}: {error}")),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|error| format!("preload task failed: {error}"))??;
    }
    Ok(())
}

/// Polls `/v1/cluster` on the endpoints until one names a leader; returns the leader's address.
pub async fn wait_for_leader(
    client: &HttpClient,
    endpoints: &[String],
    wait_max: Duration,
) -> Option<String> {
    wait_for_leader_with(client, endpoints, wait_max, None)
        .await
        .ok()
}

/// [`wait_for_leader`], sending `authorization` (a cluster with `--auth-tokens` answers
/// `/v1/cluster` only to a `read` token); a `401` or `403` ends the wait at once, as an error
/// naming the status and the node's message.
async fn wait_for_leader_with(
    client: &HttpClient,
    endpoints: &[String],
    wait_max: Duration,
    authorization: Option<&str>,
) -> Result<String, String> {
    let deadline = env::now() + wait_max;
    while env::now() < deadline {
        for endpoint in endpoints {
            let request = request(
                hyper::Method::GET,
                "/v1/cluster",
                Bytes::new(),
                authorization,
            );
            if let Ok(response) = client
                .call(endpoint, request, 1 << 20, Duration::from_secs(1))
                .await
            {
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    return Err(format!(
                        "{endpoint} answered {status} to GET /v1/cluster (give a token with \
                         --token or RAFT_KV_TOKEN): {}",
                        String::from_utf8_lossy(response.body()).trim()
                    ));
                }
                if let Ok(body) = serde_json::from_slice::<serde_json::Value>(response.body()) {
                    let leader = body["members"]
                        .as_array()
                        .and_then(|members| {
                            members
                                .iter()
                                .find(|m| m["is_leader"] == serde_json::Value::Bool(true))
                        })
                        .and_then(|m| m["addr"].as_str());
                    if let Some(addr) = leader {
                        return Ok(addr.to_string());
                    }
                }
            }
        }
        env::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "no leader answered at {endpoints:?} within {} s",
        wait_max.as_secs()
    ))
}
