//! Catch-up benchmark on real processes (release build, loopback): a follower stopped while the
//! cluster takes `CATCH_UP_KEYS` writes of `CATCH_UP_VALUE_BYTES` (default 200,000 of 1 KiB,
//! about 200 MiB) restarts and catches up through a streamed snapshot; then the same follower
//! is stopped, the cluster moves on past its log, and it catches up again, `CATCH_UP_ROUNDS`
//! times (default 3). Last, it restarts `CATCH_UP_ROUNDS` times from its own (installed) snapshot
//! file. Prints each round and the medians: catch-up seconds, snapshot MB/s, restart seconds.
//!
//! `cargo bench --bench catch_up` (it builds the release binary). The nodes snapshot every
//! `CATCH_UP_SNAPSHOT_ENTRIES` entries (default 20,000) keeping a tail of `CATCH_UP_TAIL_ENTRIES`
//! (default 5,000); between rounds the cluster takes enough writes to compact past the stopped
//! follower. Wall-clock figures: run it on a quiet machine, and say how busy it was next to any
//! figure.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{applied_index, eventually, metric, write_keys, Cluster};
use raft_kv::http::client::HttpClient;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const CATCH_UP_WAIT: Duration = Duration::from_secs(900);
const WRITERS: u64 = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Writes `keys` through `addrs` with [`WRITERS`] concurrent clients; returns the seconds taken.
async fn write_all(addrs: &[String], keys: std::ops::Range<u64>, value_bytes: usize) -> f64 {
    let started = Instant::now();
    let client = HttpClient::new();
    let acked = Arc::new(AtomicU64::new(0));
    let count = keys.end - keys.start;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            tokio::spawn(write_keys(
                client.clone(),
                addrs.to_vec(),
                (keys.start + writer..keys.end).step_by(WRITERS as usize),
                value_bytes,
                acked.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("a writer task");
    }
    assert_eq!(acked.load(Ordering::Relaxed), count);
    started.elapsed().as_secs_f64()
}

/// Waits until the node at `addr` has applied `target`; returns the seconds taken.
async fn wait_applied(addr: &str, target: u64, started: Instant) -> f64 {
    eventually(
        CATCH_UP_WAIT,
        "the follower to apply the target",
        || async { (applied_index(addr).await? >= target).then_some(()) },
    )
    .await;
    started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let keys = env_u64("CATCH_UP_KEYS", 200_000);
    let value_bytes = env_u64("CATCH_UP_VALUE_BYTES", 1024) as usize;
    let rounds = env_u64("CATCH_UP_ROUNDS", 3).max(1);
    let snapshot_entries = env_u64("CATCH_UP_SNAPSHOT_ENTRIES", 20_000).max(1);
    let tail_entries = env_u64("CATCH_UP_TAIL_ENTRIES", 5_000);
    // Past one snapshot interval and its tail, so the leader's log no longer reaches the
    // stopped follower.
    let writes_between_rounds = snapshot_entries + tail_entries + snapshot_entries / 2;
    let (entries_arg, tail_arg) = (snapshot_entries.to_string(), tail_entries.to_string());
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries",
            &entries_arg,
            "--snapshot-tail-entries",
            &tail_arg,
        ],
    );
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let victim = (leader + 1) % 3;
    let victim_addr = cluster.nodes[victim].addr.clone();
    let running: Vec<String> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| cluster.nodes[i].addr.clone())
        .collect();
    cluster.nodes[victim].kill();
    let load_seconds = write_all(&running, 0..keys, value_bytes).await;
    println!(
        "load: {keys} writes of {value_bytes} B with {WRITERS} clients in {load_seconds:.1} s ({:.0} writes/s)",
        keys as f64 / load_seconds
    );

    let mut catch_up_seconds = Vec::new();
    let mut catch_up_mb_per_second = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            cluster.nodes[victim].kill();
            let next = keys + round * writes_between_rounds;
            write_all(&running, next - writes_between_rounds..next, value_bytes).await;
        }
        let live_leader = cluster.wait_for_leader(LEADER_WAIT).await;
        let target = applied_index(&cluster.nodes[live_leader].addr)
            .await
            .expect("the leader's applied index");
        let started = Instant::now();
        cluster.nodes[victim].start();
        let seconds = wait_applied(&victim_addr, target, started).await;
        // Counters restart with the process: this round's install is all there is.
        let bytes = metric(&victim_addr, "raft_snapshot_install_bytes_total")
            .await
            .unwrap_or(0.0);
        let installs = metric(&victim_addr, "raft_snapshot_installs_total")
            .await
            .unwrap_or(0.0);
        let mb_per_second = bytes / (1024.0 * 1024.0) / seconds;
        println!(
            "catch-up round {}: {installs} snapshot installs, {:.1} MiB in {seconds:.2} s ({mb_per_second:.1} MiB/s), applied {target}",
            round + 1,
            bytes / (1024.0 * 1024.0)
        );
        catch_up_seconds.push(seconds);
        catch_up_mb_per_second.push(mb_per_second);
    }

    let mut restart_seconds = Vec::new();
    let files = cluster.nodes[victim].snapshot_files();
    for round in 0..rounds {
        cluster.nodes[victim].kill();
        let target = applied_index(&running[0]).await.expect("an applied index");
        let started = Instant::now();
        cluster.nodes[victim].start();
        let seconds = wait_applied(&victim_addr, target, started).await;
        println!(
            "restart round {}: applied {target} again in {seconds:.2} s (snapshot files {files:?})",
            round + 1
        );
        restart_seconds.push(seconds);
    }
    println!(
        "median: catch-up {:.2} s at {:.1} MiB/s; restart from the snapshot {:.2} s ({rounds} rounds)",
        median(&mut catch_up_seconds),
        median(&mut catch_up_mb_per_second),
        median(&mut restart_seconds)
    );
}
