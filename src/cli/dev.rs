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
}

/// Prints how to grow and shrink the running dev cluster (the membership API, issue 10): a
/// node started by hand is not stopped by ctrl-c here.
fn print_membership_commands(exe: &std::path::Path, args: &DevArgs, addrs: &[String]) {
    let next = addrs.len() + 1;
    let port = args.base_port as usize + addrs.len();
    println!(
        "grow:  {} --id node{next} --host {} --port {port} --data-dir {} --join {}",
        exe.display(),
        args.host,
        args.data_dir.join(format!("node{next}")).display(),
        addrs[0],
    );
    println!("       curl http://{}/v1/cluster/members", addrs[0]);
    println!(
        "shrink: curl -X DELETE http://{}/v1/cluster/members/node{next}  (then stop its process)",
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
        println!("  {name}  http://{addr}  (pid {})", child.id());
    }
    println!(
        "try:  curl -X PUT --data hello http://{}/v1/kv/greeting",
        addrs[0]
    );
    println!(
        "      curl http://{}/v1/kv/greeting",
        addrs[addrs.len() - 1]
    );
    println!("      curl http://{}/v1/cluster", addrs[0]);
    print_membership_commands(&exe, &args, &addrs);
    println!("kill a node's pid to watch failover; ctrl-c stops the cluster.");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv dev: cannot start the runtime: {e}");
            stop(&mut children);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = raft_kv::http::client::HttpClient::new();
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
