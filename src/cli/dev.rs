//! `raft-kv dev`: a local cluster of separate node processes, for trying failover by hand.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Args;

/// Flags of `raft-kv dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 8001, value_parser = clap::value_parser!(u16).range(1..=65000))]
    base_port: u16,
    /// Host to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Parent of the nodes' data directories.
    #[arg(long, default_value = "raft-kv-data/dev")]
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
    println!("       {curl}{scheme}://{}/v1/cluster/members", addrs[0]);
    println!(
        "shrink: {curl}-X DELETE {scheme}://{}/v1/cluster/members/node{next}  (then stop its process)",
        addrs[0]
    );
}

/// Starts the nodes, prints their endpoints, and stops them on ctrl-c.
pub fn run(args: DevArgs) -> ExitCode {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv dev: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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

fn stop(children: &mut [(String, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
    }
    for (name, child) in children.iter_mut() {
        let _ = child.wait();
        eprintln!("raft-kv dev: {name} stopped");
    }
}
