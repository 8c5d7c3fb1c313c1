//! `raft-kv kv watch` and `raft-kv lock NAME -- COMMAND`: the two client commands built on the
//! watch API.
//!
//! The lock recipe (lease + create-only compare-and-swap + watch):
//! 1. grant a lease of `--ttl` seconds;
//! 2. `PUT /v1/kv/locks/NAME?cas=0&lease=ID`: only one holder can create the key;
//! 3. if it exists, watch the key from the index of the refused attempt until a `delete` event
//!    (its holder released it, or its lease expired), then try again;
//! 4. run the command while keeping the lease alive every quarter of its TTL, with the key's
//!    modification index in `RAFT_KV_LOCK_INDEX` as a fencing token;
//! 5. on exit, revoke the lease: the key goes with it and the next waiter's watch fires.
//!
//! If no keepalive succeeds for two thirds of the TTL the lease may be about to expire and
//! another process to take the lock: the command is killed and `raft-kv lock` exits 8. If the
//! `raft-kv lock` process itself is killed (`kill -9`), its lease is no longer kept alive and the
//! lock frees once the lease expires; its command keeps running unless it is killed with it (put
//! both in one process group, as a shell job or a supervisor does, and kill the group).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use hyper::Method;
use raft_kv::env;

use raft_kv::http::client::LineStream;

use super::client::{encode_key, encode_query, Client, Exit, Failure};
use super::kvctl::{grant, keepalive_once, put, revoke, ClusterArgs};

/// How long one stream of `kv watch` stays open on the server before the client reconnects.
const WATCH_WAIT_S: u64 = 300;
/// A stream that sends no line for this long is taken for dead (the server sends a progress
/// line every 5 s while idle), and the watch resumes on the next endpoint.
const WATCH_STREAM_IDLE_MAX: Duration = Duration::from_secs(15);
/// Longest line of a watch stream the client reads (an event carries a value of up to the
/// server's value limit, hex-encoded if binary).
const WATCH_LINE_BYTES_MAX: usize = 64 << 20;
/// Key prefix of locks.
const LOCK_PREFIX: &str = "locks/";

/// What `kv watch` prints: one line per event.
pub fn event_line(event: &serde_json::Value) -> String {
    let kind = event["type"].as_str().unwrap_or("?");
    let index = &event["index"];
    let key = match (event["key"].as_str(), event["key_hex"].as_str()) {
        (Some(key), _) => key.to_string(),
        (None, Some(hex)) => format!("hex:{hex}"),
        (None, None) => "?".to_string(),
    };
    match (event["value"].as_str(), event["value_hex"].as_str()) {
        (Some(value), _) => format!("{kind} {index} {key} {value}"),
        (None, Some(hex)) => format!("{kind} {index} {key} hex:{hex}"),
        (None, None) => format!("{kind} {index} {key}"),
    }
}

/// A watch of one key or one prefix, by long polls or over a stream.
pub struct Watch {
    client: Client,
    /// `/v1/kv/{key}` or `/v1/kv/?prefix=p`, without the watch parameters.
    base: String,
    /// The last index seen: events after it come next.
    pub index: u64,
    /// How long one long poll (or one stream) waits on the server, in seconds.
    wait_s: u64,
    /// `Some` for a streaming watch: the open stream, if any.
    stream: Option<Option<LineStream>>,
    /// The endpoint the stream is (or was last) open on.
    endpoint: usize,
}

impl Watch {
    /// A watch of `key` (or, with `prefix`, of every key starting with it) from `index`; without
    /// one, from the index of a linearizable read now. Each long poll waits `wait_s` seconds.
    pub async fn start(
        client: &Client,
        key: &str,
        prefix: bool,
        index: Option<u64>,
        wait_s: u64,
    ) -> Result<Watch, Failure> {
        let base = if prefix {
            format!("/v1/kv/?prefix={}", encode_query(key))
        } else {
            format!("/v1/kv/{}", encode_key(key))
        };
        let mut client = client.clone();
        // One call holds a long poll: give it the wait on top of the retry budget.
        client.timeout += Duration::from_secs(wait_s);
        let index = match index {
            Some(index) => index,
            None => {
                let reply = client.send(Method::GET, &base, Bytes::new(), None).await?;
                if !(reply.status.is_success() || reply.status.as_u16() == 404) {
                    return Err(reply.failure());
                }
                reply.header_u64("x-raft-index").unwrap_or(0)
            }
        };
        Ok(Watch {
            client,
            base,
            index,
            wait_s,
            stream: None,
            endpoint: 0,
        })
    }

    /// The same watch over one stream (`&stream=true`) instead of long polls.
    pub fn streaming(mut self) -> Watch {
        // Opening a stream needs no room for a long poll's wait.
        self.client.timeout = self
            .client
            .timeout
            .saturating_sub(Duration::from_secs(self.wait_s));
        self.stream = Some(None);
        self
    }

    /// The next batch of events (possibly empty after the wait); any endpoint serves it, and a
    /// node that dies mid-wait is replaced by the next one at the same index, so nothing is
    /// missed or repeated. The history no longer reaching back is exit 7.
    pub async fn next(&mut self) -> Result<Vec<serde_json::Value>, Failure> {
        if self.stream.is_some() {
            return self.next_streamed().await;
        }
        let separator = if self.base.contains('?') { '&' } else { '?' };
        let path = format!(
            "{}{separator}watch&index={}&wait={}s",
            self.base, self.index, self.wait_s
        );
        let reply = self
            .client
            .send(Method::GET, &path, Bytes::new(), None)
            .await?;
        if reply.status.as_u16() == 410 {
            return Err(self.compacted(&reply.json()));
        }
        if !reply.status.is_success() {
            return Err(reply.failure());
        }
        let json = reply.json();
        self.advance(json["index"].as_u64().unwrap_or(self.index));
        Ok(json["events"].as_array().cloned().unwrap_or_default())
    }

    /// [`Watch::next`] over a stream: the events up to the next progress line (which covers
    /// whole entries, so resuming from its index misses and repeats nothing). Events after the
    /// last progress line of a stream that breaks are dropped and come again on the next one,
    /// opened at the next endpoint from the last progress index.
    async fn next_streamed(&mut self) -> Result<Vec<serde_json::Value>, Failure> {
        let mut pending = Vec::new();
        loop {
            let stream = match self.stream.as_mut().and_then(Option::as_mut) {
                Some(stream) => stream,
                None => {
                    let separator = if self.base.contains('?') { '&' } else { '?' };
                    let path = format!(
                        "{}{separator}watch&stream=true&index={}&wait={}s",
                        self.base, self.index, self.wait_s
                    );
                    let opened = self
                        .client
                        .open_lines(&path, &mut self.endpoint, WATCH_LINE_BYTES_MAX)
                        .await?;
                    match opened {
                        Ok(lines) => {
                            pending.clear();
                            self.stream = Some(Some(lines));
                            continue;
                        }
                        Err(reply) if reply.status.as_u16() == 410 => {
                            return Err(self.compacted(&reply.json()))
                        }
                        Err(reply) => return Err(reply.failure()),
                    }
                }
            };
            let line = match env::timeout(WATCH_STREAM_IDLE_MAX, stream.next_line()).await {
                Ok(Ok(Some(line))) => line,
                // The stream ran its time: reopen from the last progress index.
                Ok(Ok(None)) => {
                    self.stream = Some(None);
                    pending.clear();
                    continue;
                }
                // Broken or silent: resume on the next endpoint.
                Ok(Err(_)) | Err(_) => {
                    self.stream = Some(None);
                    self.endpoint += 1;
                    pending.clear();
                    env::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let json: serde_json::Value = serde_json::from_slice(&line).map_err(|e| {
                Failure::new(
                    Exit::Refused,
                    format!(
                        "the watch stream sent a line that is not JSON ({e}): {}",
                        String::from_utf8_lossy(&line)
                    ),
                )
            })?;
            match json["type"].as_str() {
                Some("progress") => {
                    self.advance(json["index"].as_u64().unwrap_or(self.index));
                    return Ok(pending);
                }
                Some("error") if json["code"] == "compacted" => {
                    return Err(self.compacted(&json));
                }
                Some("error") => {
                    return Err(Failure::new(
                        Exit::Refused,
                        format!("the watch stream ended with an error: {json}"),
                    ))
                }
                _ => pending.push(json),
            }
        }
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index >= self.index,
            "a watch answered index {index}, before the {} it asked from",
            self.index
        );
        self.index = index;
    }

    fn compacted(&self, answer: &serde_json::Value) -> Failure {
        Failure::new(
            Exit::Compacted,
            format!(
                "the history no longer reaches index {} (oldest {}): read again and watch from \
                 its X-Raft-Index",
                self.index, answer["oldest_index"]
            ),
        )
    }
}

/// `raft-kv kv watch KEY [--prefix] [--index N] [--count N]`.
pub async fn watch_command(
    client: Client,
    key: String,
    prefix: bool,
    index: Option<u64>,
    count: Option<u64>,
) -> Result<(), Failure> {
    let mut watch = Watch::start(&client, &key, prefix, index, WATCH_WAIT_S)
        .await?
        .streaming();
    eprintln!("raft-kv: watching from index {}", watch.index);
    let mut printed = 0u64;
    loop {
        for event in watch.next().await? {
            outln!("{}", event_line(&event));
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
        }
    }
}

/// `raft-kv lock NAME -- COMMAND...`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock's name (its key is `locks/NAME`).
    name: String,
    /// TTL of the lease behind the lock, in seconds: how long the lock stays held after this
    /// process dies without releasing it.
    #[arg(long = "ttl", default_value_t = 10)]
    ttl_s: u64,
    /// Exit 3 at once if the lock is held instead of waiting for it.
    #[arg(long)]
    no_wait: bool,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `raft-kv lock`; exits with the command's code, or 3/4/8/... (see the module docs).
pub fn lock(args: LockArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv: cannot start the runtime: {e}");
            return Exit::Unavailable.into();
        }
    };
    let outcome = Client::new(
        &args.cluster.endpoints,
        Duration::from_secs(args.cluster.timeout_s),
    )
    .map(|client| client.with_token(args.cluster.token.clone()))
    .map(|client| {
        runtime.block_on(async {
            let tls = args.cluster.tls.load(&args.cluster.endpoints).await?;
            hold(client.with_tls(tls), &args).await
        })
    });
    match outcome {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(failure)) | Err(failure) => {
            eprintln!("raft-kv: {}", failure.message);
            failure.exit.into()
        }
    }
}

/// Takes the lock, runs the command, releases the lock; returns the command's exit code.
async fn hold(client: Client, args: &LockArgs) -> Result<u8, Failure> {
    let key = format!("{LOCK_PREFIX}{}", args.name);
    let lease_id = grant(&client, args.ttl_s).await?;
    let result = acquire_and_run(&client, args, &key, lease_id).await;
    // Release in every case (an error, the command's end): the key goes with the lease.
    if let Err(failure) = revoke(&client, lease_id).await {
        if failure.exit != Exit::NotFound {
            eprintln!(
                "raft-kv: could not release lease {lease_id} ({}); the lock frees when it expires",
                failure.message
            );
        }
    }
    result
}

async fn acquire_and_run(
    client: &Client,
    args: &LockArgs,
    key: &str,
    lease_id: u64,
) -> Result<u8, Failure> {
    let ttl = Duration::from_secs(args.ttl_s);
    let holder = format!("pid {} lease {lease_id}", std::process::id());
    let query = ["cas=0".to_string(), format!("lease={lease_id}")];
    let fencing_index = loop {
        match put(client, key, Bytes::from(holder.clone()), &query).await {
            Ok(mod_index) => break mod_index,
            Err(failure) if failure.exit == Exit::CompareFailed => {
                if args.no_wait {
                    return Err(Failure::new(
                        Exit::CompareFailed,
                        format!("lock {:?} is held", args.name),
                    ));
                }
                wait_for_release(client, key, lease_id, args.ttl_s).await?;
            }
            Err(failure) => return Err(failure),
        }
    };
    eprintln!(
        "raft-kv: holding lock {:?} (lease {lease_id}, index {fencing_index})",
        args.name
    );
    let mut child = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("RAFT_KV_LOCK_INDEX", fencing_index.to_string())
        .env("RAFT_KV_LEASE", lease_id.to_string())
        .spawn()
        .map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("cannot run {:?}: {e}", args.command[0]),
            )
        })?;
    let keepalive_every = ttl / 4;
    let lost_after = ttl * 2 / 3;
    let mut last_ok = env::now();
    let mut next_keepalive = env::now() + keepalive_every;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Ok(status.code().map_or(1, |code| code.clamp(0, 255) as u8));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure::new(
                    Exit::Refused,
                    format!("waiting for the command: {e}"),
                ))
            }
        }
        let now = env::now();
        if now >= next_keepalive {
            let sent = env::now();
            match keepalive_once(client, lease_id).await {
                Ok(_) => last_ok = sent,
                Err(failure) if failure.exit == Exit::NotFound => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Failure::new(
                        Exit::LockLost,
                        format!(
                            "lock {:?} lost: its lease {lease_id} ended; the command was killed",
                            args.name
                        ),
                    ));
                }
                Err(failure) => eprintln!("raft-kv: keepalive failed: {}", failure.message),
            }
            next_keepalive = env::now() + keepalive_every;
        }
        if env::now().duration_since(last_ok) >= lost_after {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::new(
                Exit::LockLost,
                format!(
                    "lock {:?} may be lost: no keepalive succeeded for {lost_after:?}; the command \
                     was killed",
                    args.name
                ),
            ));
        }
        env::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the lock key is deleted: watches it from the current index, keeping our own
/// lease alive between long polls of a third of its TTL. A compacted history means "look again".
async fn wait_for_release(
    client: &Client,
    key: &str,
    lease_id: u64,
    ttl_s: u64,
) -> Result<(), Failure> {
    let wait_s = (ttl_s / 3).max(1);
    let mut watch = Watch::start(client, key, false, None, wait_s).await?;
    // The key may be gone already (released between the attempt and the read).
    let exists = client
        .send(
            Method::GET,
            &format!("/v1/kv/{}", encode_key(key)),
            Bytes::new(),
            None,
        )
        .await?;
    if exists.status.as_u16() == 404 {
        return Ok(());
    }
    loop {
        // Our own lease must live while we wait.
        keepalive_once(client, lease_id).await?;
        match watch.next().await {
            Ok(events) if events.iter().any(|e| e["type"] == "delete") => return Ok(()),
            Ok(_) => {}
            Err(failure) if failure.exit == Exit::Compacted => return Ok(()),
            Err(failure) => return Err(failure),
        }
    }
}
