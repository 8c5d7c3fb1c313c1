//! `raft-kv dev`: a local cluster of separate node processes, for trying failover by hand;
//! `raft-kv dev add NAME` and `raft-kv dev remove NAME` grow and shrink it while it runs.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::Full;

/// Flags of `raft-kv dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Grow or shrink a running dev cluster instead of starting one.
    #[command(subcommand)]
    action: Option<DevAction>,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long, global = true, default_value_t = 8001, value_parser = clap::value_parser!(u16).range(1..=65000))]
    base_port: u16,
    /// Host to listen on.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Parent of the nodes' data directories.
    #[arg(long, global = true, default_value = "raft-kv-data/dev")]
    data_dir: PathBuf,
    /// Run with client and peer TLS: writes a throwaway client CA, peer CA, node and client
    /// certificates into `<data-dir>/tls` and starts the nodes with `--client-cert-auth`.
    #[arg(long)]
    tls: bool,
}

/// The certificate files of a `dev --tls` cluster, under `<data-dir>/tls`.
struct DevTls {
    dir: PathBuf,
}

impl DevTls {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The flags of node `name`.
    fn node_flags(&self, name: &str) -> Vec<std::ffi::OsString> {
        let flags = [
            ("--cert-file", format!("{name}.crt")),
            ("--key-file", format!("{name}.key")),
            ("--trusted-ca-file", "ca.crt".to_string()),
            ("--peer-cert-file", format!("{name}-peer.crt")),
            ("--peer-key-file", format!("{name}-peer.key")),
            ("--peer-trusted-ca-file", "peer-ca.crt".to_string()),
        ];
        let mut out = Vec::new();
        for (flag, file) in flags {
            out.push(flag.into());
            out.push(self.path(&file).into_os_string());
        }
        out.push("--client-cert-auth".into());
        out
    }

    /// curl's flags for a client of this cluster.
    fn curl_flags(&self) -> String {
        format!(
            "--cacert {} --cert {} --key {}",
            self.path("ca.crt").display(),
            self.path("client.crt").display(),
            self.path("client.key").display()
        )
    }
}

/// Writes a client CA (signs the nodes' API certificates and the client certificate), a peer
/// CA (signs the nodes' peer certificates), and the certificates, into `dir`.
async fn write_dev_certs(dir: &std::path::Path, host: &str, nodes: u16) -> Result<(), String> {
    use raft_kv::devcerts::{Authority, Usage};
    let write = |file: String, pem: String| async move {
        let path = dir.join(&file);
        raft_kv::env::fs::write_atomic(&path, pem.as_bytes())
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    raft_kv::env::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let client_ca = Authority::new("raft-kv dev client CA")?;
    let peer_ca = Authority::new("raft-kv dev peer CA")?;
    write("ca.crt".into(), client_ca.cert_pem().to_string()).await?;
    write("peer-ca.crt".into(), peer_ca.cert_pem().to_string()).await?;
    let mut names = vec![host, "localhost", "127.0.0.1"];
    names.dedup();
    for i in 1..=nodes {
        let name = format!("node{i}");
        let api = client_ca.issue(&name, &names, Usage::Server)?;
        write(format!("{name}.crt"), api.cert_pem).await?;
        write(format!("{name}.key"), api.key_pem).await?;
        let peer = peer_ca.issue(&name, &names, Usage::ServerAndClient)?;
        write(format!("{name}-peer.crt"), peer.cert_pem).await?;
        write(format!("{name}-peer.key"), peer.key_pem).await?;
    }
    let client = client_ca.issue("dev-client", &[], Usage::Client)?;
    write("client.crt".into(), client.cert_pem).await?;
    write("client.key".into(), client.key_pem).await?;
    Ok(())
}

/// What `raft-kv dev add` and `raft-kv dev remove` do to the running dev cluster.
#[derive(Subcommand, Debug)]
enum DevAction {
    /// Start a node NAME that joins the running dev cluster (runs in the foreground; ctrl-c
    /// stops it, and it exits by itself once removed).
    Add {
        /// The new node's name (its `--id`).
        name: String,
        /// Its port (default: the first free one after --base-port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Remove member NAME from the running dev cluster (the node then exits by itself).
    Remove {
        /// The member's name.
        name: String,
    },
}

/// The dev cluster's members are looked for on this many ports from `--base-port`.
const DEV_PORTS_SCANNED: u16 = 20;
/// How long `dev add` and `dev remove` look for the cluster's leader.
const DEV_LEADER_WAIT: Duration = Duration::from_secs(10);

/// Prints how to grow and shrink the running dev cluster (the membership API, issue 10): a
/// node started by hand is not stopped by ctrl-c here.
fn print_membership_commands(
    exe: &std::path::Path,
    args: &DevArgs,
    addrs: &[String],
    tls: Option<&DevTls>,
) {
    let next = addrs.len() + 1;
    let port = args.base_port as usize + addrs.len();
    let (scheme, node_flags, curl) = match tls {
        Some(tls) => {
            let flags: Vec<String> = tls
                .node_flags(&format!("node{next}"))
                .iter()
                .map(|f| f.to_string_lossy().into_owned())
                .collect();
            (
                "https",
                format!(" {}", flags.join(" ")),
                format!("curl {} ", tls.curl_flags()),
            )
        }
        None => ("http", String::new(), "curl ".to_string()),
    };
    println!(
        "grow:  {} --id node{next} --host {} --port {port} --data-dir {} --join {}{node_flags}",
        exe.display(),
        args.host,
        args.data_dir.join(format!("node{next}")).display(),
        addrs[0],
    );
    if tls.is_none() {
        println!("   or: {} dev add node{next}", exe.display());
    }
    println!("       {curl}{scheme}://{}/v1/cluster/members", addrs[0]);
    println!(
        "shrink: {curl}-X DELETE {scheme}://{}/v1/cluster/members/node{next}  (the node then exits)",
        addrs[0]
    );
    if tls.is_none() {
        // `dev add` and `dev remove` speak plain HTTP: with --tls, use the commands above.
        println!("   or: {} dev remove node{next}", exe.display());
    }
}

/// `raft-kv dev add` / `raft-kv dev remove`: acts on the dev cluster on the ports from
/// `--base-port`, through its leader.
fn act(args: &DevArgs, action: &DevAction) -> ExitCode {
    let (DevAction::Add { name, .. } | DevAction::Remove { name }) = action;
    let name = match raft_kv::node::config::validate_name(name) {
        Ok(name) => name,
        Err(e) => {
            eprintln!("raft-kv dev: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let endpoints: Vec<String> = (0..DEV_PORTS_SCANNED)
        .filter_map(|i| args.base_port.checked_add(i))
        .map(|port| format!("{}:{port}", args.host))
        .collect();
    let client = raft_kv::http::client::HttpClient::new();
    let leader = runtime.block_on(super::bench::wait_for_leader(
        &client,
        &endpoints,
        DEV_LEADER_WAIT,
    ));
    let Some(leader) = leader else {
        eprintln!(
            "raft-kv dev: no leader answers on {}:{}..{} (is `raft-kv dev` running with this \
             --base-port?)",
            args.host,
            args.base_port,
            args.base_port.saturating_add(DEV_PORTS_SCANNED - 1)
        );
        return ExitCode::FAILURE;
    };
    match action {
        DevAction::Add { port, .. } => add(args, &name, *port, &leader),
        DevAction::Remove { .. } => runtime.block_on(remove(&client, &name, &leader)),
    }
}

/// Runs node `name` in the foreground, joining through `leader`.
fn add(args: &DevArgs, name: &str, port: Option<u16>, leader: &str) -> ExitCode {
    let port = port.or_else(|| {
        (args.base_port..=u16::MAX)
            .skip(1)
            .find(|&p| std::net::TcpListener::bind((args.host.as_str(), p)).is_ok())
    });
    let Some(port) = port else {
        eprintln!("raft-kv dev: no free port after {}", args.base_port);
        return ExitCode::FAILURE;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("raft-kv dev: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "raft-kv dev: starting {name} on http://{}:{port}, joining through {leader}; ctrl-c stops it",
        args.host
    );
    let status = Command::new(exe)
        .arg("--id")
        .arg(name)
        .arg("--host")
        .arg(&args.host)
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(args.data_dir.join(name))
        .arg("--join")
        .arg(leader)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("raft-kv dev: {name} exited ({status})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("raft-kv dev: cannot start {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `DELETE /v1/cluster/members/{name}` through `leader`; prints the answer.
async fn remove(client: &raft_kv::http::client::HttpClient, name: &str, leader: &str) -> ExitCode {
    let request = hyper::Request::delete(format!("/v1/cluster/members/{name}"))
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    match client
        .call(leader, request, 1 << 20, Duration::from_secs(30))
        .await
    {
        Ok(response) if response.status().is_success() => {
            println!("raft-kv dev: removed {name}; its process exits by itself");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "raft-kv dev: removing {name} answered {}: {}",
                response.status(),
                String::from_utf8_lossy(response.body())
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("raft-kv dev: removing {name} through {leader} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the nodes, prints their endpoints, and stops them on ctrl-c.
pub fn run(args: DevArgs) -> ExitCode {
    if let Some(action) = &args.action {
        return act(&args, action);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("raft-kv dev: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}:{}", args.host, args.base_port + i))
        .collect();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let tls = args.tls.then(|| DevTls {
        dir: args.data_dir.join("tls"),
    });
    if let Some(tls) = &tls {
        // One node more than started, for the printed `grow` command.
        if let Err(e) = runtime.block_on(write_dev_certs(&tls.dir, &args.host, args.nodes + 1)) {
            eprintln!("raft-kv dev: {e}");
            return ExitCode::FAILURE;
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let curl = match &tls {
        Some(tls) => format!("curl {} ", tls.curl_flags()),
        None => "curl ".to_string(),
    };
    let mut children: Vec<(String, Child)> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let peers: Vec<&str> = addrs
            .iter()
            .filter(|a| *a != addr)
            .map(String::as_str)
            .collect();
        let mut command = Command::new(&exe);
        command
            .arg("--id")
            .arg(&name)
            .arg("--host")
            .arg(&args.host)
            .arg("--port")
            .arg((args.base_port + i as u16).to_string())
            .arg("--data-dir")
            .arg(args.data_dir.join(&name))
            .stdin(Stdio::null());
        if !peers.is_empty() {
            command.arg("--peers").arg(peers.join(","));
        }
        if let Some(tls) = &tls {
            command.args(tls.node_flags(&name));
        }
        match command.spawn() {
            Ok(child) => children.push((name, child)),
            Err(e) => {
                eprintln!("raft-kv dev: cannot start {name}: {e}");
                stop(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    println!("raft-kv dev cluster of {} nodes:", args.nodes);
    for ((name, child), addr) in children.iter().zip(&addrs) {
        println!("  {name}  {scheme}://{addr}  (pid {})", child.id());
    }
    let last = &addrs[addrs.len() - 1];
    println!(
        "try:  {curl}-X PUT --data hello {scheme}://{}/v1/kv/greeting",
        addrs[0]
    );
    println!("      {curl}{scheme}://{last}/v1/kv/greeting");
    println!("      {curl}{scheme}://{}/v1/cluster", addrs[0]);
    if let Some(tls) = &tls {
        println!(
            "      {} kv get greeting --endpoints https://{last} {}",
            exe.display(),
            tls.curl_flags()
        );
        println!(
            "certificates in {}: ca.crt/client.* (client API), peer-ca.crt/node*-peer.* (peers)",
            tls.dir.display()
        );
    }
    print_membership_commands(&exe, &args, &addrs, tls.as_ref());
    println!("kill a node's pid to watch failover; ctrl-c stops the cluster.");

    runtime.block_on(async {
        let client_tls = match &tls {
            Some(tls) => {
                let identity = (tls.path("client.crt"), tls.path("client.key"));
                match raft_kv::env::tls::ClientTls::load(
                    &tls.path("ca.crt"),
                    Some((identity.0.as_path(), identity.1.as_path())),
                )
                .await
                {
                    Ok(client_tls) => Some(std::sync::Arc::new(client_tls)),
                    Err(e) => {
                        eprintln!("raft-kv dev: {e}");
                        return;
                    }
                }
            }
            None => None,
        };
        let client = raft_kv::http::client::HttpClient::with_tls(client_tls);
        tokio::select! {
            biased; // every select! is biased (sim/tests/determinism_guard.rs)
            _ = raft_kv::env::shutdown_signal() => {}
            _ = super::bench::wait_for_leader(&client, &addrs, Duration::from_secs(60)) => {
                println!("a leader is elected; the cluster is serving.");
                raft_kv::env::shutdown_signal().await;
            }
        }
    });
    stop(&mut children);
    ExitCode::SUCCESS
}

/// A multi-threaded runtime, or `None` after saying why there is none.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("raft-kv dev: cannot start the runtime: {e}"))
        .ok()
}

fn stop(children: &mut [(String, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
    }
    for (name, child) in children.iter_mut() {
        let _ = child.wait();
        eprintln!("raft-kv dev: {name} stopped");
    }
}
