//! Command-line interface: `raft-kv [node flags]`, `raft-kv dev`, `raft-kv bench`, and the
//! client commands `raft-kv kv|lease|status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use raft_kv::node::NodeConfig;

/// `println!` for what a command prints on stdout. `println!` panics when stdout is closed
/// (`raft-kv kv list | head -1`, `raft-kv watch k | head`); this ends the command with a message
/// on stderr and exit code 6 instead, as `kv get` does for a failed write.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout (see [`outln!`]); exits the process with code 6 if it cannot.
pub(crate) fn write_stdout_line(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        eprintln!("raft-kv: cannot write to stdout: {e}");
        std::process::exit(client::Exit::Refused as i32);
    }
}

mod bench;
mod client;
mod dev;
mod kvctl;
mod lock;

/// A small, strongly consistent replicated key-value store on its own Raft.
#[derive(Parser, Debug)]
#[command(name = "raft-kv", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster of separate node processes for trying failover.
    Dev(dev::DevArgs),
    /// Drive a running cluster with concurrent clients and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Read and write keys: get, put (--cas, --lease), del, list.
    Kv(kvctl::KvArgs),
    /// TTL leases: grant, keepalive, revoke, show.
    Lease(kvctl::LeaseArgs),
    /// The cluster's members, leader, term, and each member's applied index and lag.
    Status(kvctl::StatusArgs),
    /// Runs a command while holding a lock (lease + create-only CAS + watch).
    Lock(lock::LockArgs),
    /// Make a random client token: prints the token and its line for the `--auth-tokens` file.
    Token(TokenArgs),
}

/// `raft-kv token NAME ROLE`.
#[derive(Args, Debug)]
struct TokenArgs {
    /// Who holds the token (shown in logs and 403 answers).
    #[arg(value_parser = parse_name)]
    name: String,
    /// `read`, `readwrite` or `admin`.
    #[arg(value_parser = parse_role)]
    role: raft_kv::http::auth::Role,
}

fn parse_role(text: &str) -> Result<raft_kv::http::auth::Role, String> {
    raft_kv::http::auth::Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not a role: read, readwrite or admin"))
}

/// Prints a fresh 256-bit token and the line that grants it `role`.
fn make_token(args: TokenArgs) -> ExitCode {
    let mut rng = raft_kv::env::rng();
    let token: String = (0..4)
        .map(|_| format!("{:016x}", rand_core::RngCore::next_u64(&mut rng)))
        .collect();
    outln!("token: {token}");
    outln!(
        "line:  {} {} {}",
        args.name,
        args.role.as_str(),
        raft_kv::http::auth::token_hash_hex(&token)
    );
    ExitCode::SUCCESS
}

/// How logs are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of a node. Every flag has an environment variable twin.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's name, unique in the cluster.
    #[arg(long = "id", env = "RAFT_KV_ID", default_value = "node1", value_parser = parse_name)]
    pub id: String,
    /// Host to listen on.
    #[arg(long, env = "RAFT_KV_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (client API and Raft RPCs).
    #[arg(long, env = "RAFT_KV_PORT", default_value_t = 8001, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The other members, comma-separated `host:port` (empty: a single-node store).
    #[arg(long, env = "RAFT_KV_PEERS", value_delimiter = ',', value_parser = parse_addr)]
    pub peers: Vec<String>,
    /// Join a running cluster through this member (`host:port`) when the data directory is
    /// empty: added as a learner, promoted once caught up. Ignored once the node has data.
    #[arg(long, env = "RAFT_KV_JOIN", value_parser = parse_addr, conflicts_with = "peers")]
    pub join: Option<String>,
    /// An `admin` token for `--join` when the cluster runs with `--auth-tokens` (adding a member
    /// needs `admin`); `RAFT_KV_JOIN_TOKEN` keeps it out of the process list.
    #[arg(
        long,
        env = "RAFT_KV_JOIN_TOKEN",
        hide_env_values = true,
        requires = "join"
    )]
    pub join_token: Option<String>,
    /// Where the WAL and snapshots live [default: ./raft-kv-data/<id>].
    #[arg(long, env = "RAFT_KV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Length of one Raft tick in milliseconds.
    #[arg(long, env = "RAFT_KV_TICK_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tick_ms: u64,
    /// Election timeout in ticks (randomized up to twice this).
    #[arg(long, env = "RAFT_KV_ELECTION_TICKS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(3..=10_000))]
    pub election_ticks: u32,
    /// Heartbeat interval in ticks (must be below the election timeout).
    #[arg(long, env = "RAFT_KV_HEARTBEAT_TICKS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub heartbeat_ticks: u32,
    /// Client request timeout in milliseconds.
    #[arg(long, env = "RAFT_KV_REQUEST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub request_timeout_ms: u64,
    /// Peer RPC timeout in milliseconds.
    #[arg(long, env = "RAFT_KV_RPC_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    pub rpc_timeout_ms: u64,
    /// Take a snapshot (in the background) after this many applied entries since the last one,
    /// on average: members take turns, each on its own phase of the interval.
    #[arg(long, env = "RAFT_KV_SNAPSHOT_ENTRIES", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_entries: u64,
    /// ...or after this many bytes of applied entry data since the last one.
    #[arg(long, env = "RAFT_KV_SNAPSHOT_BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_bytes: u64,
    /// Entries kept in memory below a snapshot, so a slightly slow follower catches up from
    /// the log instead of receiving the snapshot.
    #[arg(long, env = "RAFT_KV_SNAPSHOT_TAIL_ENTRIES", default_value_t = 5_000)]
    pub snapshot_tail_entries: u64,
    /// Bytes of a snapshot file per chunk when a leader streams it to a lagging follower.
    #[arg(long, env = "RAFT_KV_SNAPSHOT_CHUNK_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(32 << 20)))]
    pub snapshot_chunk_bytes: u64,
    /// Snapshot transfers a leader streams at once.
    #[arg(long, env = "RAFT_KV_SNAPSHOT_TRANSFERS_MAX", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub snapshot_transfers_max: u64,
    /// Largest snapshot file a follower accepts from a leader [default: no limit but the disk].
    #[arg(long, env = "RAFT_KV_SNAPSHOT_RECEIVE_BYTES_MAX", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_receive_bytes_max: Option<u64>,
    /// Largest key in bytes.
    #[arg(long, env = "RAFT_KV_MAX_KEY_BYTES", default_value_t = raft_kv::kv::KEY_BYTES_MAX)]
    pub max_key_bytes: usize,
    /// Largest value in bytes (larger values get 413).
    #[arg(long, env = "RAFT_KV_MAX_VALUE_BYTES", default_value_t = raft_kv::kv::VALUE_BYTES_MAX)]
    pub max_value_bytes: usize,
    /// Quota on the store's size in bytes (keys + values + 64 per key): a write that would grow
    /// the store past it gets 507 `quota_exceeded`; deletes and reads still work. The leader's
    /// value is the one in force (it travels in each write), so set it alike on every node.
    #[arg(long, env = "RAFT_KV_QUOTA_BYTES", default_value_t = raft_kv::kv::QUOTA_BYTES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub quota_bytes: u64,
    /// Limit each client (its token's holder with --auth-tokens, else its IP address) to this
    /// many requests per second on this node; beyond it requests get 429 with Retry-After.
    /// `/health`, `/metrics` and peer traffic are not limited.
    #[arg(long, env = "RAFT_KV_RATE_LIMIT_RPS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_rps: Option<u32>,
    /// Requests a client may send at once after a pause [default: --rate-limit-rps].
    #[arg(long, env = "RAFT_KV_RATE_LIMIT_BURST", requires = "rate_limit_rps", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_burst: Option<u32>,
    /// Client bearer tokens with roles, one `name role sha256-hex` line each (make one with
    /// `raft-kv token NAME ROLE`); re-read on SIGHUP. Without it every client may do everything.
    #[arg(long, env = "RAFT_KV_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// A file holding the cluster's shared secret (at least 32 bytes, e.g. `openssl rand -hex 32`):
    /// every Raft RPC is signed with it (HMAC-SHA256) and one without a valid signature is
    /// refused with 401. Every member needs the same file.
    #[arg(long, env = "RAFT_KV_PEER_SECRET_FILE")]
    pub peer_secret_file: Option<PathBuf>,
    /// TLS: the certificate (PEM, chain first to last) the client API shows. Needs --key-file
    /// and peer TLS (one port serves both). Re-read on SIGHUP.
    #[arg(long, env = "RAFT_KV_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// TLS: the private key (PEM) of --cert-file.
    #[arg(long, env = "RAFT_KV_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// TLS: CA certificates (PEM) that sign client certificates.
    #[arg(long, env = "RAFT_KV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// TLS: every client must show a certificate signed by --trusted-ca-file (or the peer CA).
    #[arg(long, env = "RAFT_KV_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// Peer TLS: this node's peer certificate (PEM; needs both serverAuth and clientAuth
    /// usages), shown to peers both ways. Peer RPCs then use TLS and need a peer certificate.
    #[arg(long, env = "RAFT_KV_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: the private key (PEM) of --peer-cert-file.
    #[arg(long, env = "RAFT_KV_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer TLS: the CA (PEM) that signs every member's peer certificate.
    #[arg(long, env = "RAFT_KV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Put `/metrics` behind a `read` token (needs --auth-tokens).
    #[arg(long, env = "RAFT_KV_METRICS_AUTH", requires = "auth_tokens")]
    pub metrics_auth: bool,
    /// Key changes each node keeps for watches (older `index=` gets 410).
    #[arg(long, env = "RAFT_KV_WATCH_HISTORY_EVENTS", default_value_t = raft_kv::node::watch::WATCH_HISTORY_EVENTS_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub watch_history_events: u64,
    /// Bytes of keys and values each node keeps for watches.
    #[arg(long, env = "RAFT_KV_WATCH_HISTORY_BYTES", default_value_t = raft_kv::node::watch::WATCH_HISTORY_BYTES_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=(16 << 30)))]
    pub watch_history_bytes: u64,
    /// Watches that may wait on this node at once (503 beyond).
    #[arg(long, env = "RAFT_KV_WATCH_MAX", default_value_t = raft_kv::node::watch::WATCHES_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watch_max: u64,
    /// Log format.
    #[arg(long, env = "RAFT_KV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax, e.g. `info` or `raft_kv=debug`).
    #[arg(long, env = "RAFT_KV_LOG", default_value = "info")]
    pub log_level: String,
}

impl NodeArgs {
    /// The node configuration these flags describe.
    pub fn to_config(&self) -> Result<NodeConfig, String> {
        if self.heartbeat_ticks >= self.election_ticks {
            return Err(format!(
                "--heartbeat-ticks ({}) must be below --election-ticks ({})",
                self.heartbeat_ticks, self.election_ticks
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > raft_kv::kv::KEY_BYTES_MAX {
            return Err(format!(
                "--max-key-bytes must be from 1 to {}",
                raft_kv::kv::KEY_BYTES_MAX
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > raft_kv::kv::VALUE_BYTES_MAX {
            return Err(format!(
                "--max-value-bytes must be from 1 to {}",
                raft_kv::kv::VALUE_BYTES_MAX
            ));
        }
        let listen_addr = format!("{}:{}", self.host, self.port);
        let mut peers: Vec<String> = Vec::new();
        for peer in &self.peers {
            if peers.contains(peer) {
                return Err(format!("peer {peer} is listed twice in --peers"));
            }
            if *peer == listen_addr {
                return Err(format!("--peers lists this node's own address {peer}"));
            }
            peers.push(peer.clone());
        }
        let mut config = NodeConfig::new(self.id.clone(), listen_addr.clone());
        config.peers = peers;
        if self.join.as_deref() == Some(listen_addr.as_str()) {
            return Err(format!(
                "--join names this node's own address {listen_addr}"
            ));
        }
        config.join = self.join.clone();
        config.join_token = self.join_token.clone();
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        config.tick_interval = Duration::from_millis(self.tick_ms);
        config.election_ticks = self.election_ticks;
        config.heartbeat_ticks = self.heartbeat_ticks;
        config.request_timeout = Duration::from_millis(self.request_timeout_ms);
        config.rpc_timeout = Duration::from_millis(self.rpc_timeout_ms);
        config.snapshot_entries = self.snapshot_entries;
        config.snapshot_bytes = self.snapshot_bytes;
        config.snapshot_tail_entries = self.snapshot_tail_entries;
        config.snapshot_transfer_chunk_bytes = self.snapshot_chunk_bytes as usize;
        config.snapshot_transfers_max = self.snapshot_transfers_max as usize;
        config.snapshot_receive_bytes_max = self.snapshot_receive_bytes_max.unwrap_or(u64::MAX);
        config.key_bytes_max = self.max_key_bytes;
        config.value_bytes_max = self.max_value_bytes;
        config.quota_bytes = self.quota_bytes;
        config.rate_limit = self.rate_limit_rps.map(|requests_per_second| {
            raft_kv::http::rate_limit::RateLimitOptions {
                requests_per_second,
                burst: self.rate_limit_burst.unwrap_or(requests_per_second),
                clients_max: raft_kv::http::rate_limit::RATE_LIMIT_CLIENTS_MAX_DEFAULT,
            }
        });
        config.auth_tokens_file = self.auth_tokens.clone();
        config.metrics_auth = self.metrics_auth;
        config.peer_secret_file = self.peer_secret_file.clone();
        config.tls = raft_kv::env::tls::TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            peer_cert_file: self.peer_cert_file.clone(),
            peer_key_file: self.peer_key_file.clone(),
            peer_trusted_ca_file: self.peer_trusted_ca_file.clone(),
        };
        config.tls.validate()?;
        config.watch = raft_kv::node::watch::WatchOptions {
            history_events_max: self.watch_history_events as usize,
            history_bytes_max: self.watch_history_bytes as usize,
            watches_max: self.watch_max as usize,
        };
        Ok(config)
    }
}

fn parse_name(text: &str) -> Result<String, String> {
    raft_kv::node::config::validate_name(text)
}

fn parse_addr(text: &str) -> Result<String, String> {
    raft_kv::node::config::validate_addr(text)
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("bad --log-level: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Exit code of a node process that panicked anywhere (the driver, an HTTP task, a peer link).
const EXIT_PANIC: u8 = 70;

/// Makes a panic in any task end the process with [`EXIT_PANIC`] after the usual message: tokio
/// would otherwise catch it, end that one task and let the node limp on, answering from state
/// nobody maintains any more. A supervisor (systemd, Kubernetes) restarts it from its WAL.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("raft-kv: a task panicked; the node stops (exit code {EXIT_PANIC})");
        std::process::exit(i32::from(EXIT_PANIC));
    }));
}

/// Warns loudly when the node listens beyond loopback without TLS or without client
/// authentication (tokens or client certificates).
fn warn_if_exposed(config: &NodeConfig) {
    let host = config
        .listen_addr
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']))
        .unwrap_or("");
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return;
    }
    let authenticated = config.auth_tokens_file.is_some() || config.tls.client_cert_auth;
    let missing = match (config.tls.enabled(), authenticated) {
        (true, true) => return,
        (false, false) => {
            "without TLS or client authentication: anyone who can reach this port \
                           can read and write every key, and everything travels in plaintext"
        }
        (false, true) => "without TLS: tokens, keys and values travel in plaintext",
        (true, false) => {
            "without client authentication (--auth-tokens or --client-cert-auth): \
                          anyone who can reach this port can read and write every key"
        }
    };
    tracing::warn!(
        addr = %config.listen_addr,
        "INSECURE: listening on a non-loopback address {missing} (see the README's Security section)"
    );
    eprintln!(
        "raft-kv: WARNING: {} is reachable beyond this machine {missing}",
        config.listen_addr
    );
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Dev(args)) => dev::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Token(args)) => make_token(args),
        Some(Command::Kv(args)) => kvctl::kv(args),
        Some(Command::Lease(args)) => kvctl::lease(args),
        Some(Command::Status(args)) => kvctl::status(args),
        Some(Command::Lock(args)) => lock::lock(args),
        None => run_node(cli.node),
    }
}

fn run_node(args: NodeArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("raft-kv: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = init_logging(args.log_format, &args.log_level) {
        eprintln!("raft-kv: {message}");
        return ExitCode::from(2);
    }
    exit_on_panic();
    warn_if_exposed(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = config.name.clone();
    let addr = config.listen_addr.clone();
    let scheme = if config.tls.enabled() {
        "https"
    } else {
        "http"
    };
    let result = runtime.block_on(raft_kv::server::run(
        config,
        raft_kv::env::shutdown_signal(),
        move |_| {
            eprintln!("raft-kv: node {name} serving on {scheme}://{addr}");
        },
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
