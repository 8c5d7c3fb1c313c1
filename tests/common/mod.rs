//! Helpers for tests that run real `raft-kv` processes on loopback ports.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::http::client::HttpClient;

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
}

/// Sends one request; `None` when the node did not answer (down, or timed out).
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let client = HttpClient::new();
    let mut builder = hyper::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("valid test request");
    let response = client
        .call(addr, request, 64 << 20, Duration::from_secs(10))
        .await
        .ok()?;
    let (parts, body) = response.into_parts();
    Some(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Finds a free loopback port (bind to 0, read, release) that this test process has not handed
/// out before: the kernel may give a just-released port to the next bind, and a fresh-clone CI
/// run once started two nodes of one cluster on the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// One node process.
pub struct NodeProcess {
    pub name: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub peers: Vec<String>,
    /// Flags added to every start of this node.
    pub extra_args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProcess {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let port = self.addr.rsplit_once(':').expect("addr has a port").1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
        command
            .args(["--id", &self.name, "--host", "127.0.0.1", "--port", port])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--tick-ms",
                "10",
                "--election-ticks",
                "20",
                "--heartbeat-ticks",
                "3",
            ])
            .args(["--max-value-bytes", "65536"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if !self.peers.is_empty() {
            command.arg("--peers").arg(self.peers.join(","));
        }
        self.child = Some(command.spawn().expect("spawn raft-kv"));
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit on its own.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        child.wait().expect("wait for the node to exit")
    }

    /// The exit status, once the process has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .child
            .as_mut()?
            .try_wait()
            .expect("poll the node process")?;
        self.child = None;
        Some(status)
    }

    /// Sends `signal` (a `kill -s` name such as `HUP`) to the running process.
    pub fn send_signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node is running");
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    /// The names in the node's snapshot directory, sorted.
    pub fn snapshot_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.join("snap"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of node processes in a temporary directory.
pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    /// A cluster whose nodes all get `extra_args`.
    pub fn start_with(size: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let name = format!("node{}", i + 1);
            let mut node = NodeProcess {
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                addr: addr.clone(),
                peers: addrs.iter().filter(|a| *a != addr).cloned().collect(),
                extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
                child: None,
            };
            node.start();
            nodes.push(node);
        }
        Cluster { nodes, dir }
    }

    /// Starts one more node, `name`, with no `--peers` and `extra_args` (e.g. `--join ADDR`);
    /// returns its position in `nodes`.
    pub fn add_node(&mut self, name: &str, extra_args: &[&str]) -> usize {
        let mut node = NodeProcess {
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            name: name.to_string(),
            addr: format!("127.0.0.1:{}", free_port()),
            peers: Vec::new(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        };
        node.start();
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until some running node reports a leader that is itself running; returns its index.
    pub async fn wait_for_leader(&self, wait_max: Duration) -> usize {
        let deadline = Instant::now() + wait_max;
        while Instant::now() < deadline {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                if let Some(reply) = call(&node.addr, "GET", "/health", &[], b"").await {
                    if reply.status == 200 && reply.json()["role"] == "leader" {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.dump_logs();
        panic!("no leader within {wait_max:?}");
    }

    pub fn dump_logs(&self) {
        for node in &self.nodes {
            eprintln!("----- {} log -----\n{}", node.name, node.log_text());
        }
    }
}

/// Retries `f` until it returns `Some` or `wait_max` passes.
pub async fn eventually<T, F, Fut>(wait_max: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait_max;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {wait_max:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One metric's value in a node's `/metrics` text (0 when absent).
pub async fn metric(addr: &str, name: &str) -> Option<f64> {
    let reply = call(addr, "GET", "/metrics", &[], b"").await?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    Some(
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0),
    )
}

/// A node's applied index from `/health` (cheap, unlike [`state_hash`]).
pub async fn applied_index(addr: &str) -> Option<u64> {
    let reply = call(addr, "GET", "/health", &[], b"").await?;
    reply.json()["applied_index"].as_u64()
}

/// `(applied_index, state_hash)` of a node (a pass over its whole store: call it sparingly).
pub async fn state_hash(addr: &str) -> Option<(u64, String)> {
    let reply = call(addr, "GET", "/v1/state-hash", &[], b"").await?;
    let json = reply.json();
    Some((
        json["applied_index"].as_u64()?,
        json["state_hash"].as_str()?.to_string(),
    ))
}

/// Writes the keys `bulk-<n>` for each `n` in `keys`, with values of `value_bytes`, through the
/// nodes in `addrs` (followers forward), retrying each until it is acknowledged.
pub async fn write_keys(
    client: HttpClient,
    addrs: Vec<String>,
    keys: impl Iterator<Item = u64>,
    value_bytes: usize,
    acked: Arc<AtomicU64>,
) {
    let mut attempt = 0usize;
    let mut keys = keys.peekable();
    while let Some(&key) = keys.peek() {
        let value = Bytes::from(vec![b'a' + (key % 26) as u8; value_bytes]);
        let addr = &addrs[attempt % addrs.len()];
        let request = hyper::Request::put(format!("/v1/kv/bulk-{key:06}"))
            .body(Full::new(value.clone()))
            .expect("a valid request");
        match client
            .call(addr, request, 64 << 10, Duration::from_secs(10))
            .await
        {
            Ok(reply) if reply.status().is_success() => {
                acked.fetch_add(1, Ordering::Relaxed);
                keys.next();
            }
            // A node down, an election, an overload: try again, elsewhere.
            _ => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
