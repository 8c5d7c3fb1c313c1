//! `raft-kv kv ...`, `raft-kv lease ...` and `raft-kv status`: the command-line client, as
//! etcdctl and `consul kv` give their users. Output is plain text a script can read (values
//! raw on stdout, one key per line in listings); errors go to stderr with an exit code from
//! [`Exit`].

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use hyper::Method;
use raft_kv::env;

use super::client::{encode_key, encode_query, Client, Exit, Failure, Reply};

/// Where the cluster is, for every client command.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The nodes to talk to, comma-separated `host:port` (any of them will do; the others are
    /// tried when one cannot serve).
    #[arg(
        long,
        env = "RAFT_KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8001",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// How long one command may keep retrying, in seconds.
    #[arg(long = "timeout", env = "RAFT_KV_TIMEOUT_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout_s: u64,
    /// A bearer token for clusters started with `--auth-tokens` (sent as `Authorization:
    /// Bearer ...`); `RAFT_KV_TOKEN` keeps it out of the process list.
    #[arg(long, env = "RAFT_KV_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: super::client::TlsArgs,
}

/// `raft-kv kv ...`.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommand,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Prints a key's value (raw bytes) on stdout. Exit 1 if the key does not exist.
    Get {
        key: String,
        /// Serve from the node asked, possibly stale, instead of a linearizable read.
        #[arg(long)]
        stale: bool,
        /// Print the modification index (for --cas) on stderr.
        #[arg(long)]
        show_index: bool,
    },
    /// Sets a key; prints its new modification index.
    Put {
        key: String,
        /// The value; `-` reads it from stdin.
        value: String,
        /// Only if the key's modification index is this (0: only if the key does not exist).
        /// Exit 3 if not.
        #[arg(long)]
        cas: Option<u64>,
        /// Attach the key to this lease: it is deleted when the lease ends.
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Deletes a key. Exit 1 if it did not exist.
    Del {
        key: String,
        /// Only if the key's modification index is this. Exit 3 if not.
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Prints every change to a key (or, with --prefix, to the keys starting with it), one
    /// `put INDEX KEY VALUE` or `delete INDEX KEY` line each, from now (or after --index),
    /// resuming on another endpoint at the same index when a node goes away.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start after this log index instead of now.
        #[arg(long)]
        index: Option<u64>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Lists the keys with a prefix, one `key<TAB>value` line each (every page).
    List {
        /// The prefix (empty: every key).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print only the keys.
        #[arg(long)]
        keys_only: bool,
    },
}

/// `raft-kv lease ...`.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
enum LeaseCommand {
    /// Grants a lease of TTL seconds; prints its id.
    Grant { ttl_s: u64 },
    /// Keeps a lease alive every third of its TTL until interrupted (or once, with --once).
    /// Exit 1 when the lease is gone.
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// Revokes a lease and deletes its keys; prints how many.
    Revoke { id: u64 },
    /// Shows a lease: TTL, time left and keys.
    Show { id: u64 },
}

/// `raft-kv status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `f` on a small runtime and turns its outcome into the exit code.
fn run<F, Fut>(cluster: &ClusterArgs, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let result = Client::new(&cluster.endpoints, Duration::from_secs(cluster.timeout_s))
        .map(|client| client.with_token(cluster.token.clone()))
        .and_then(|client| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| {
                    Failure::new(Exit::Unavailable, format!("cannot start the runtime: {e}"))
                })?;
            runtime.block_on(async {
                let tls = cluster.tls.load(&cluster.endpoints).await?;
                f(client.with_tls(tls)).await
            })
        });
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(failure) => {
            eprintln!("raft-kv: {}", failure.message);
            failure.exit.into()
        }
    }
}

/// `raft-kv kv ...`.
pub fn kv(args: KvArgs) -> ExitCode {
    run(&args.cluster, |client| kv_command(client, args.command))
}

/// `raft-kv lease ...`.
pub fn lease(args: LeaseArgs) -> ExitCode {
    run(&args.cluster, |client| lease_command(client, args.command))
}

/// `raft-kv status`.
pub fn status(args: StatusArgs) -> ExitCode {
    run(&args.cluster, status_command)
}

fn expect_success(reply: Reply) -> Result<Reply, Failure> {
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(reply.failure())
    }
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(Exit::Refused, format!("cannot write to stdout: {e}")))
}

async fn kv_command(client: Client, command: KvCommand) -> Result<(), Failure> {
    match command {
        KvCommand::Get {
            key,
            stale,
            show_index,
        } => {
            let query = if stale { "?consistency=stale" } else { "" };
            let path = format!("/v1/kv/{}{query}", encode_key(&key));
            let reply = expect_success(client.send(Method::GET, &path, Bytes::new(), None).await?)?;
            if show_index {
                eprintln!("mod_index {}", reply.header_u64("x-mod-index").unwrap_or(0));
            }
            print(&reply.body)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                outln!();
            }
            Ok(())
        }
        KvCommand::Put {
            key,
            value,
            cas,
            lease,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                    .map_err(|e| Failure::new(Exit::Usage, format!("cannot read stdin: {e}")))?;
                Bytes::from(bytes)
            } else {
                Bytes::from(value)
            };
            let mut query = Vec::new();
            if let Some(cas) = cas {
                query.push(format!("cas={cas}"));
            }
            if let Some(lease) = lease {
                query.push(format!("lease={lease}"));
            }
            let mod_index = put(&client, &key, value, &query).await?;
            outln!("{mod_index}");
            Ok(())
        }
        KvCommand::Del { key, cas } => {
            let query = cas.map(|cas| format!("?cas={cas}")).unwrap_or_default();
            let path = format!("/v1/kv/{}{query}", encode_key(&key));
            let key_id = Client::idempotency_key();
            let reply = client
                .send(Method::DELETE, &path, Bytes::new(), Some(&key_id))
                .await?;
            let reply = expect_success(reply)?;
            if reply.json()["deleted"] == true {
                Ok(())
            } else {
                Err(Failure::new(
                    Exit::NotFound,
                    format!("key {key:?} not found"),
                ))
            }
        }
        KvCommand::Watch {
            key,
            prefix,
            index,
            count,
        } => super::lock::watch_command(client, key, prefix, index, count).await,
        KvCommand::List { prefix, keys_only } => {
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/v1/kv/?prefix={}", encode_query(&prefix));
                if let Some(after) = &after {
                    path.push_str(&format!("&after={}", encode_query(after)));
                }
                let reply =
                    expect_success(client.send(Method::GET, &path, Bytes::new(), None).await?)?;
                let json = reply.json();
                let keys = json["keys"].as_array().cloned().unwrap_or_default();
                for entry in &keys {
                    let key = entry["key"].as_str().unwrap_or_default();
                    let line = if keys_only {
                        format!("{key}\n")
                    } else if let Some(value) = entry["value"].as_str() {
                        format!("{key}\t{value}\n")
                    } else {
                        let hex = entry["value_hex"].as_str().unwrap_or_default();
                        format!("{key}\thex:{hex}\n")
                    };
                    print(line.as_bytes())?;
                }
                match keys.last() {
                    Some(last) if json["more"] == true => {
                        after = last["key"].as_str().map(str::to_string);
                    }
                    _ => return Ok(()),
                }
            }
        }
    }
}

/// Writes `key` (query parts such as `cas=0`, `lease=7`); returns its new modification index.
pub async fn put(
    client: &Client,
    key: &str,
    value: Bytes,
    query: &[String],
) -> Result<u64, Failure> {
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let path = format!("/v1/kv/{}{query}", encode_key(key));
    let key_id = Client::idempotency_key();
    let reply = expect_success(
        client
            .send(Method::PUT, &path, value, Some(&key_id))
            .await?,
    )?;
    Ok(reply.json()["mod_index"].as_u64().unwrap_or(0))
}

/// Grants a lease; returns its id.
pub async fn grant(client: &Client, ttl_s: u64) -> Result<u64, Failure> {
    let body = Bytes::from(format!("{{\"ttl_s\": {ttl_s}}}"));
    let key_id = Client::idempotency_key();
    let reply = expect_success(
        client
            .send(Method::POST, "/v1/leases", body, Some(&key_id))
            .await?,
    )?;
    reply.json()["id"]
        .as_u64()
        .ok_or_else(|| Failure::new(Exit::Refused, "the grant answer has no id"))
}

/// Keeps `lease_id` alive once; returns the time left.
pub async fn keepalive_once(client: &Client, lease_id: u64) -> Result<Duration, Failure> {
    let path = format!("/v1/leases/{lease_id}/keepalive");
    let reply = expect_success(client.send(Method::POST, &path, Bytes::new(), None).await?)?;
    let remaining_ms = reply.json()["remaining_ms"].as_u64().unwrap_or(0);
    Ok(Duration::from_millis(remaining_ms))
}

/// Revokes `lease_id`; returns how many keys went with it.
pub async fn revoke(client: &Client, lease_id: u64) -> Result<u64, Failure> {
    let path = format!("/v1/leases/{lease_id}");
    let key_id = Client::idempotency_key();
    let reply = client
        .send(Method::DELETE, &path, Bytes::new(), Some(&key_id))
        .await?;
    let reply = expect_success(reply)?;
    Ok(reply.json()["keys_deleted"].as_u64().unwrap_or(0))
}

async fn lease_command(client: Client, command: LeaseCommand) -> Result<(), Failure> {
    match command {
        LeaseCommand::Grant { ttl_s } => {
            outln!("{}", grant(&client, ttl_s).await?);
            Ok(())
        }
        LeaseCommand::Keepalive { id, once } => loop {
            let remaining = keepalive_once(&client, id).await?;
            outln!("lease {id} kept alive, {} ms left", remaining.as_millis());
            if once {
                return Ok(());
            }
            env::sleep(remaining / 3).await;
        },
        LeaseCommand::Revoke { id } => {
            outln!("{}", revoke(&client, id).await?);
            Ok(())
        }
        LeaseCommand::Show { id } => {
            let path = format!("/v1/leases/{id}");
            let reply = expect_success(client.send(Method::GET, &path, Bytes::new(), None).await?)?;
            let json = reply.json();
            let remaining = match json["remaining_ms"].as_u64() {
                Some(ms) => format!("{ms} ms"),
                None => "unknown".to_string(),
            };
            outln!("id {id}\nttl_s {}\nremaining {remaining}", json["ttl_s"]);
            for key in json["keys"].as_array().cloned().unwrap_or_default() {
                outln!("key {}", key.as_str().unwrap_or_default());
            }
            for key in json["keys_hex"].as_array().cloned().unwrap_or_default() {
                outln!("key_hex {}", key.as_str().unwrap_or_default());
            }
            Ok(())
        }
    }
}

/// Members from `/v1/cluster` (any endpoint), then each member's `/health`: role, term, applied
/// index and its lag behind the leader's commit index.
async fn status_command(client: Client) -> Result<(), Failure> {
    let reply = expect_success(
        client
            .send(Method::GET, "/v1/cluster", Bytes::new(), None)
            .await?,
    )?;
    let cluster = reply.json();
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for member in &members {
        let name = member["name"].as_str().unwrap_or("?").to_string();
        let addr = member["addr"].as_str().unwrap_or("?").to_string();
        let health = client.call_once(&addr, "/health").await.map(|r| r.json());
        rows.push((name, addr, health));
    }
    let leader_commit = rows
        .iter()
        .filter_map(|(_, _, health)| health.as_ref())
        .find(|h| h["role"] == "leader")
        .and_then(|h| h["commit_index"].as_u64());
    outln!(
        "cluster {}  leader {}  term {}",
        cluster["cluster_id"].as_str().unwrap_or("?"),
        cluster["leader"].as_str().unwrap_or("none"),
        cluster["term"]
    );
    outln!(
        "{:<12} {:<22} {:<14} {:>6} {:>10} {:>8}",
        "MEMBER",
        "ADDRESS",
        "ROLE",
        "TERM",
        "APPLIED",
        "LAG"
    );
    let mut unreachable = 0;
    for (name, addr, health) in &rows {
        match health {
            Some(h) => {
                let applied = h["applied_index"].as_u64().unwrap_or(0);
                let lag = leader_commit
                    .map(|commit| commit.saturating_sub(applied).to_string())
                    .unwrap_or_else(|| "?".into());
                outln!(
                    "{name:<12} {addr:<22} {:<14} {:>6} {applied:>10} {lag:>8}",
                    h["role"].as_str().unwrap_or("?"),
                    h["term"].as_u64().unwrap_or(0),
                )
            }
            None => {
                unreachable += 1;
                outln!("{name:<12} {addr:<22} {:<14}", "unreachable");
            }
        }
    }
    if leader_commit.is_none() {
        return Err(Failure::new(
            Exit::Unavailable,
            "no member reports itself leader",
        ));
    }
    if unreachable > 0 {
        eprintln!("raft-kv: {unreachable} member(s) unreachable");
    }
    Ok(())
}
