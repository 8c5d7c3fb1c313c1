//! TLS on real `raft-kv` processes, with certificates made by rcgen in the test: client
//! certificates (none, wrong CA, expired) are refused, a peer RPC needs a peer certificate, a
//! 3-node TLS cluster elects, replicates and survives a leader kill -9, and SIGHUP reloads the
//! certificate files (a bad file keeps the old ones); a node joins a TLS cluster with --join.
// The simulator has no TLS (see src/env/tls.rs), and these tests run real processes.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::devcerts::{Authority, Usage};
use raft_kv::env::tls::{ClientTls, TlsFiles};
use raft_kv::http::client::HttpClient;

use common::{Cluster, Reply};

const LEADER_WAIT: Duration = Duration::from_secs(20);
const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

/// Writes `pem` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write a test certificate");
    path
}

/// The certificates of one test: a client CA and a peer CA, a node's API and peer
/// certificates, and clients good and bad.
struct Pki {
    dir: PathBuf,
    client_ca: PathBuf,
    peer_ca: PathBuf,
    node_cert: PathBuf,
    node_key: PathBuf,
    peer_cert: PathBuf,
    peer_key: PathBuf,
    client: (PathBuf, PathBuf),
    client_expired: (PathBuf, PathBuf),
    client_wrong_ca: (PathBuf, PathBuf),
    peer_wrong_ca: (PathBuf, PathBuf),
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let client_ca = Authority::new("test client CA").unwrap();
        let peer_ca = Authority::new("test peer CA").unwrap();
        let other_ca = Authority::new("a stranger's CA").unwrap();
        let pair = |name: &str, issued: raft_kv::devcerts::Issued| {
            (
                write(&dir, &format!("{name}.crt"), &issued.cert_pem),
                write(&dir, &format!("{name}.key"), &issued.key_pem),
            )
        };
        let node = pair(
            "node",
            client_ca.issue("node", LOOPBACK, Usage::Server).unwrap(),
        );
        let peer = pair(
            "peer",
            peer_ca
                .issue("peer", LOOPBACK, Usage::ServerAndClient)
                .unwrap(),
        );
        let client = pair(
            "client",
            client_ca.issue("client", &[], Usage::Client).unwrap(),
        );
        let client_expired = pair(
            "client-expired",
            client_ca
                .issue_valid_between("old", &[], Usage::Client, (2020, 1, 1), (2021, 1, 1))
                .unwrap(),
        );
        let client_wrong_ca = pair(
            "client-wrong-ca",
            other_ca.issue("client", &[], Usage::Client).unwrap(),
        );
        let peer_wrong_ca = pair(
            "peer-wrong-ca",
            other_ca
                .issue("peer", LOOPBACK, Usage::ServerAndClient)
                .unwrap(),
        );
        Pki {
            client_ca: write(&dir, "ca.crt", client_ca.cert_pem()),
            peer_ca: write(&dir, "peer-ca.crt", peer_ca.cert_pem()),
            dir,
            node_cert: node.0,
            node_key: node.1,
            peer_cert: peer.0,
            peer_key: peer.1,
            client,
            client_expired,
            client_wrong_ca,
            peer_wrong_ca,
        }
    }

    /// Node flags: client and peer TLS, with `--client-cert-auth` when `client_cert_auth`.
    fn node_args(&self, client_cert_auth: bool) -> Vec<String> {
        let mut args = vec![
            "--cert-file".to_string(),
            self.node_cert.display().to_string(),
            "--key-file".to_string(),
            self.node_key.display().to_string(),
            "--trusted-ca-file".to_string(),
            self.client_ca.display().to_string(),
            "--peer-cert-file".to_string(),
            self.peer_cert.display().to_string(),
            "--peer-key-file".to_string(),
            self.peer_key.display().to_string(),
            "--peer-trusted-ca-file".to_string(),
            self.peer_ca.display().to_string(),
        ];
        if client_cert_auth {
            args.push("--client-cert-auth".to_string());
        }
        args
    }

    /// An API client trusting `ca`, showing `identity`.
    async fn client(&self, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> HttpClient {
        let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
        let tls = ClientTls::load(ca, identity)
            .await
            .expect("load a test client's TLS");
        HttpClient::with_tls(Some(Arc::new(tls)))
    }

    /// A client that calls as a peer does (peer ALPN), with `cert`/`key` as its peer
    /// certificate.
    async fn peer_client(&self, identity: &(PathBuf, PathBuf)) -> HttpClient {
        let files = TlsFiles {
            peer_cert_file: Some(identity.0.clone()),
            peer_key_file: Some(identity.1.clone()),
            peer_trusted_ca_file: Some(self.peer_ca.clone()),
            ..TlsFiles::default()
        };
        let tls = ClientTls::for_peers(&files)
            .await
            .expect("load a test peer's TLS")
            .expect("peer TLS configured");
        HttpClient::with_tls(Some(Arc::new(tls)))
    }
}

/// One request over `client`; the error text when there was no answer (e.g. a refused
/// handshake).
async fn send(
    client: &HttpClient,
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Reply, String> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("valid test request");
    let response = client
        .call(addr, request, 1 << 20, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Waits until a running node (by `alive`) says it leads; returns its index.
async fn wait_for_leader(
    client: &HttpClient,
    cluster: &Cluster,
    alive: &[bool],
    wait_max: Duration,
) -> usize {
    let deadline = Instant::now() + wait_max;
    while Instant::now() < deadline {
        for (i, node) in cluster.nodes.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            if let Ok(reply) = send(client, &node.addr, "GET", "/health", b"").await {
                if reply.status == 200 && reply.json()["role"] == "leader" {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.dump_logs();
    panic!("no leader within {wait_max:?}");
}

/// Fails with the answer when a request that should be refused got through.
fn assert_refused(outcome: Result<Reply, String>, what: &str) -> String {
    match outcome {
        Ok(reply) => panic!(
            "{what}: expected a refused handshake, got {} {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_refuses_bad_client_and_peer_certificates_and_survives_a_leader_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let args = pki.node_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &args);
    let good = pki.client(&pki.client_ca, Some(&pki.client)).await;
    let mut alive = vec![true; 3];
    let leader = wait_for_leader(&good, &cluster, &alive, LEADER_WAIT).await;
    let addr = cluster.nodes[leader].addr.clone();

    // The good client writes through a follower (forwarded to the leader over peer TLS) and
    // reads the value back from every node.
    let follower = (leader + 1) % 3;
    let put = send(
        &good,
        &cluster.nodes[follower].addr,
        "PUT",
        "/v1/kv/a",
        b"1",
    )
    .await
    .expect("a good client is served");
    assert!(
        put.status == 200 || put.status == 201,
        "put: {}",
        put.status
    );
    for node in &cluster.nodes {
        let get = send(&good, &node.addr, "GET", "/v1/kv/a", b"")
            .await
            .expect("a good client is served");
        assert_eq!(
            (get.status, &get.body[..]),
            (200, &b"1"[..]),
            "{}",
            node.name
        );
    }

    // Clients the node must refuse at the handshake.
    let no_cert = pki.client(&pki.client_ca, None).await;
    let error = assert_refused(
        send(&no_cert, &addr, "GET", "/v1/kv/a", b"").await,
        "no client certificate",
    );
    assert!(error.contains("CertificateRequired"), "{error}");
    let wrong_ca = pki.client(&pki.client_ca, Some(&pki.client_wrong_ca)).await;
    let error = assert_refused(
        send(&wrong_ca, &addr, "GET", "/v1/kv/a", b"").await,
        "a client certificate from another CA",
    );
    assert!(
        error.contains("UnknownCA") || error.contains("BadCertificate"),
        "{error}"
    );
    let expired = pki.client(&pki.client_ca, Some(&pki.client_expired)).await;
    let error = assert_refused(
        send(&expired, &addr, "GET", "/v1/kv/a", b"").await,
        "an expired client certificate",
    );
    assert!(error.contains("CertificateExpired"), "{error}");
    // The node's own certificate is checked by the client too: a client trusting only another
    // CA does not talk to it.
    let distrustful = pki.client(&pki.peer_ca, Some(&pki.client)).await;
    let error = assert_refused(
        send(&distrustful, &addr, "GET", "/v1/kv/a", b"").await,
        "a node certificate the client's CA did not sign",
    );
    assert!(error.contains("UnknownIssuer"), "{error}");

    // Peer RPCs: a client certificate (valid for the API) is not a peer certificate, neither
    // on the API's ALPN nor posing as a peer; a peer certificate from another CA gets no
    // connection at all.
    let rpc = |client: HttpClient| {
        let addr = addr.clone();
        async move { send(&client, &addr, "POST", "/v1/raft/messages", b"x").await }
    };
    let as_client = rpc(good.clone()).await.expect("an answer");
    assert_eq!(as_client.status, 403);
    assert_eq!(as_client.json()["code"], "peer_forbidden");
    let posing = rpc(pki.peer_client(&pki.client).await)
        .await
        .expect("an answer");
    assert_eq!(posing.status, 403);
    assert_eq!(posing.json()["code"], "peer_forbidden");
    assert_refused(
        rpc(pki.peer_client(&pki.peer_wrong_ca).await).await,
        "a peer certificate from another CA",
    );
    // A real peer's connection gets past the certificate check to the RPC's own checks.
    let peer = rpc(pki
        .peer_client(&(pki.peer_cert.clone(), pki.peer_key.clone()))
        .await)
    .await
    .expect("an answer");
    assert_eq!(
        peer.status,
        400,
        "{:?}",
        String::from_utf8_lossy(&peer.body)
    );

    // kill -9 the leader: the other two elect a leader over TLS and keep the data.
    cluster.nodes[leader].kill();
    alive[leader] = false;
    let new_leader = wait_for_leader(&good, &cluster, &alive, LEADER_WAIT).await;
    assert_ne!(new_leader, leader);
    let new_addr = cluster.nodes[new_leader].addr.clone();
    let get = send(&good, &new_addr, "GET", "/v1/kv/a", b"")
        .await
        .unwrap();
    assert_eq!((get.status, &get.body[..]), (200, &b"1"[..]));
    let put = send(&good, &new_addr, "PUT", "/v1/kv/b", b"2")
        .await
        .unwrap();
    assert!(
        put.status == 200 || put.status == 201,
        "put: {}",
        put.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let args = pki.node_args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, &args);
    let node = &cluster.nodes[0];
    let old_ca_client = pki.client(&pki.client_ca, None).await;
    wait_for_leader(&old_ca_client, &cluster, &[true], LEADER_WAIT).await;

    // Without --client-cert-auth a client without a certificate is served, but a peer RPC
    // without a peer certificate is not.
    let anonymous_rpc = send(
        &old_ca_client,
        &node.addr,
        "POST",
        "/v1/raft/messages",
        b"x",
    )
    .await
    .expect("an answer");
    assert_eq!(anonymous_rpc.status, 401);
    assert_eq!(anonymous_rpc.json()["code"], "peer_unauthenticated");

    // A broken certificate file: the reload fails, is logged, and the old certificate serves.
    std::fs::write(&pki.node_cert, "not a certificate").unwrap();
    node.send_signal("HUP");
    common::eventually(
        Duration::from_secs(10),
        "the failed reload in the log",
        || async {
            node.log_text()
                .contains("certificate files not reloaded")
                .then_some(())
        },
    )
    .await;
    let still = send(
        &pki.client(&pki.client_ca, None).await,
        &node.addr,
        "GET",
        "/health",
        b"",
    )
    .await
    .expect("the old certificate still serves");
    assert_eq!(still.status, 200);

    // A certificate from a new CA: after SIGHUP new connections see it.
    let new_ca = Authority::new("rotated CA").unwrap();
    let new_ca_path = write(&pki.dir, "new-ca.crt", new_ca.cert_pem());
    let issued = new_ca.issue("node", LOOPBACK, Usage::Server).unwrap();
    std::fs::write(&pki.node_key, &issued.key_pem).unwrap();
    std::fs::write(&pki.node_cert, &issued.cert_pem).unwrap();
    node.send_signal("HUP");
    let new_ca_client = pki.client(&new_ca_path, None).await;
    common::eventually(Duration::from_secs(10), "the new certificate", || async {
        send(&new_ca_client, &node.addr, "GET", "/health", b"")
            .await
            .ok()
            .filter(|reply| reply.status == 200)
    })
    .await;
    let error = assert_refused(
        send(
            &pki.client(&pki.client_ca, None).await,
            &node.addr,
            "GET",
            "/health",
            b"",
        )
        .await,
        "a client trusting only the old CA after the rotation",
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(node.log_text().contains("certificate files reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_tls_flags_stop_the_node_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["--port", &common::free_port().to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("n"))
        .arg("--cert-file")
        .arg(&pki.node_cert)
        .arg("--key-file")
        .arg(&pki.node_key)
        .output()
        .expect("run raft-kv");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--peer-cert-file"), "{stderr}");
}

/// Starts a node on all interfaces with `args`, waits until it serves, stops it, and returns
/// what it printed.
fn output_when_exposed(dir: &Path, name: &str, args: &[String]) -> String {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["--id", name, "--host", "0.0.0.0"])
        .args(["--port", &common::free_port().to_string()])
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("spawn raft-kv");
    let deadline = Instant::now() + LEADER_WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("serving on") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("serving on"), "{name} did not start: {text}");
    text
}

#[test]
fn an_exposed_node_warns_about_what_it_lacks_and_a_secured_one_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let plain = output_when_exposed(dir.path(), "plain", &[]);
    assert!(
        plain.contains("INSECURE") && plain.contains("without TLS or client authentication"),
        "{plain}"
    );
    let tls_only = output_when_exposed(dir.path(), "tls-only", &pki.node_args(false));
    assert!(
        tls_only.contains("INSECURE") && tls_only.contains("without client authentication"),
        "{tls_only}"
    );
    let secured = output_when_exposed(dir.path(), "secured", &pki.node_args(true));
    assert!(!secured.contains("INSECURE"), "{secured}");
    assert!(secured.contains("serving on https://"), "{secured}");
}

/// Runs `raft-kv` with `args`; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(args)
        .output()
        .expect("run raft-kv");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_https_with_etcdctl_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let args = pki.node_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, &args);
    let good = pki.client(&pki.client_ca, Some(&pki.client)).await;
    wait_for_leader(&good, &cluster, &[true], LEADER_WAIT).await;
    let endpoint = format!("https://{}", cluster.nodes[0].addr);
    let ca = pki.client_ca.display().to_string();
    let cert = pki.client.0.display().to_string();
    let key = pki.client.1.display().to_string();
    let tls = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let with = |command: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        all.extend(["--endpoints".to_string(), endpoint.clone()]);
        all
    };
    let put: Vec<String> = with(&["kv", "put", "greeting", "hello"]);
    let mut put: Vec<&str> = put.iter().map(String::as_str).collect();
    put.extend(tls);
    let (code, _, stderr) = cli(&put);
    assert_eq!(code, Some(0), "{stderr}");
    let get: Vec<String> = with(&["kv", "get", "greeting"]);
    let mut get: Vec<&str> = get.iter().map(String::as_str).collect();
    let without_cert: Vec<&str> = get
        .iter()
        .copied()
        .chain(["--cacert", &ca, "--timeout", "1"])
        .collect();
    let without_ca: Vec<&str> = get.clone();
    get.extend(tls);
    let (code, stdout, stderr) = cli(&get);
    assert_eq!((code, stdout.as_str()), (Some(0), "hello"), "{stderr}");
    // No client certificate: refused in the handshake, and the message says so.
    let (code, _, stderr) = cli(&without_cert);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("CertificateRequired"), "{stderr}");
    // https without a CA to check the node against is a usage error.
    let (code, _, stderr) = cli(&without_ca);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--cacert"), "{stderr}");
}

#[test]
fn dev_tls_starts_a_secure_cluster_and_prints_commands_that_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("dev.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["dev", "--nodes", "1", "--tls"])
        .args(["--base-port", &common::free_port().to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("dev"))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn raft-kv dev");
    let deadline = Instant::now() + LEADER_WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.contains("a leader is elected") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The printed `raft-kv kv get` line, turned into a put and a get.
    let printed = text
        .lines()
        .find(|line| line.contains(" kv get greeting --endpoints https://"))
        .map(str::to_string);
    let outcome = printed.map(|line| {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let put: Vec<&str> = ["kv", "put", "greeting", "hi"]
            .into_iter()
            .chain(words[3..].iter().copied())
            .collect();
        (cli(&put), cli(&words))
    });
    // ctrl-c stops the dev cluster and its nodes.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status();
    let _ = dev.wait();
    assert!(text.contains("a leader is elected"), "{text}");
    let ((put_code, _, put_err), (get_code, got, get_err)) =
        outcome.unwrap_or_else(|| panic!("no kv get line printed: {text}"));
    assert_eq!(put_code, Some(0), "{put_err}");
    assert_eq!((get_code, got.as_str()), (Some(0), "hi"), "{get_err}");
    for file in [
        "ca.crt",
        "peer-ca.crt",
        "node1.crt",
        "node1-peer.key",
        "client.key",
    ] {
        assert!(dir.path().join("dev/tls").join(file).is_file(), "{file}");
    }
}
