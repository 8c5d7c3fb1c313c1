//! Throughput of the Raft core alone: three cores on the in-memory testkit network (no IO, no
//! clock, no threads), committing small entries.
//!
//! - **1 proposer**: propose one entry, wait until the leader commits it, propose the next.
//! - **256 proposers**: keep 256 proposed-but-uncommitted entries in flight; the leader batches
//!   them into pipelined appends.
//!
//! Each mode runs `ROUNDS` timed rounds of `ROUND_MILLIS` on a warmed-up cluster and prints every
//! round and the median. Two baselines come from the same run: the 1-proposer median for the
//! 256 case, and a raw loop that only encodes and decodes (postcard, as the node's transport
//! does) the messages one commit needs, which bounds what any core could do with that codec.
//!
//! Run with `cargo bench --bench core` (release build). Reference point: openraft's in-process,
//! no-IO benchmark reports 33k entries/s with 1 client and 1.8M entries/s with 256.
//! `CORE_BENCH_MODES=1,256` picks modes and `CORE_BENCH_ROUND_MILLIS=300` shortens rounds (for
//! a profiler). Rates are given per wall-clock second and per CPU second of the bench thread:
//! on a machine shared with other jobs the first swings with their load, the second barely.
//!
//! Measured at the `props: complete` commit on the 2-core build machine under load (medians of
//! 7 rounds, wall / CPU): codec 1.20M / 2.68M, 1 proposer 305k / 642k (8 messages per entry),
//! 256 proposers 2.19M / 4.65M entries/s (256-entry appends, 0.03 messages per entry).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_kv::raft::testkit::Cluster;
use raft_kv::raft::{Entry, EntryKind, Index, Message, MessageBody, NodeId};

/// Timed rounds per mode; the median is quoted.
const ROUNDS: usize = 7;
/// Length of one timed round (`CORE_BENCH_ROUND_MILLIS` overrides it, e.g. under a profiler).
const ROUND_MILLIS: u64 = 1000;
/// Untimed warm-up before the rounds of each mode.
const WARMUP_MILLIS: u64 = 300;
/// Every node compacts its log once it applied this many entries past its snapshot, so memory
/// stays flat however fast the core runs.
const COMPACT_EVERY_ENTRIES: u64 = 65_536;
/// The payload of every proposal (a small KV command's size).
const PAYLOAD: &[u8] = b"set key-0001 = value-0001";

/// What one timed round measured.
#[derive(Clone, Copy, Debug)]
struct Round {
    /// Proposals committed on the leader during the round.
    entries: u64,
    /// Messages delivered during the round.
    messages: u64,
    /// Wall time of the round.
    elapsed: Duration,
    /// CPU time this thread ran during the round (`None` where Linux's schedstat is missing).
    cpu: Option<Duration>,
}

impl Round {
    fn entries_per_second(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }

    fn entries_per_cpu_second(&self) -> Option<f64> {
        self.cpu
            .map(|cpu| self.entries as f64 / cpu.as_secs_f64().max(1e-9))
    }
}

/// The host's monotonic clock. The bench measures real time on the host and never runs inside
/// the simulation, so it bypasses the `raft_kv::env` seam on purpose.
#[allow(clippy::disallowed_methods)]
fn wall_clock_now() -> Instant {
    Instant::now()
}

/// The CPU time the calling thread has run so far, from Linux's `/proc/thread-self/schedstat`
/// (first field, nanoseconds). On a machine shared with other jobs the wall-clock rate swings
/// with their load; the CPU-time rate does much less.
#[allow(clippy::disallowed_methods)] // host measurement, outside the simulation like the clock
fn thread_cpu_time() -> Option<Duration> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The CPU time spent since `start` (from [`thread_cpu_time`]).
fn cpu_since(start: Option<Duration>) -> Option<Duration> {
    Some(thread_cpu_time()?.saturating_sub(start?))
}

/// A three-node cluster with an elected leader, recording nothing it does not need.
struct Bench {
    cluster: Cluster,
    leader: NodeId,
    payload: Bytes,
    /// The index of the last proposal made.
    proposed_index: Index,
}

impl Bench {
    fn new() -> Bench {
        let mut cluster = Cluster::new(3, 1);
        cluster.set_record_applied(false);
        let leader = cluster
            .run_until_leader(1_000)
            .expect("three healthy nodes elect a leader within 1000 ticks");
        // Commit the leader's no-op so every later commit is one of ours.
        cluster.deliver_all();
        let proposed_index = cluster.applied_index(leader);
        Bench {
            cluster,
            leader,
            payload: Bytes::from_static(PAYLOAD),
            proposed_index,
        }
    }

    /// The leader's commit as its state machine sees it (entries handed out for applying).
    fn committed_index(&self) -> Index {
        self.cluster.applied_index(self.leader)
    }

    fn propose(&mut self) {
        let index = self
            .cluster
            .propose(self.leader, self.payload.clone())
            .unwrap_or_else(|error| panic!("leader {} refused a proposal: {error}", self.leader));
        assert_eq!(
            index,
            self.proposed_index + 1,
            "proposal indices must be consecutive"
        );
        self.proposed_index = index;
    }

    /// One network hop: every node hands out its output, then every message in flight is
    /// delivered. Returns how many were delivered.
    fn hop(&mut self) -> u64 {
        self.cluster.process_all();
        let mut delivered = 0;
        while self.cluster.deliver_one().is_some() {
            delivered += 1;
        }
        self.cluster.process_all();
        delivered
    }

    /// Compacts every node whose log grew `COMPACT_EVERY_ENTRIES` past its snapshot.
    fn maybe_compact(&mut self) {
        for id in self.cluster.ids() {
            let applied = self.cluster.applied_index(id);
            let snapshot_index = self.cluster.node(id).status().snapshot_index;
            if applied >= snapshot_index + COMPACT_EVERY_ENTRIES {
                self.cluster.compact(id, applied).unwrap_or_else(|error| {
                    panic!("node {id} cannot compact at {applied}: {error}")
                });
            }
        }
    }

    /// Runs for `duration` keeping `proposers` proposals in flight; counts committed ones.
    fn run(&mut self, proposers: u64, duration: Duration) -> Round {
        let start = wall_clock_now();
        let cpu_start = thread_cpu_time();
        let committed_start = self.committed_index();
        let mut messages = 0;
        let mut hops: u64 = 0;
        loop {
            let committed = self.committed_index();
            while self.proposed_index - committed < proposers {
                self.propose();
            }
            messages += self.hop();
            hops += 1;
            if hops % 64 == 0 {
                self.maybe_compact();
                if start.elapsed() >= duration {
                    break;
                }
            }
        }
        let elapsed = start.elapsed();
        Round {
            entries: self.committed_index() - committed_start,
            messages,
            elapsed,
            cpu: cpu_since(cpu_start),
        }
    }
}

/// The messages one commit of one entry costs in a three-node cluster: an append to each
/// follower and each follower's acknowledgement.
fn one_commit_messages(index: Index, payload: &Bytes) -> Vec<Message> {
    let mut messages = Vec::new();
    for follower in [2, 3] {
        messages.push(Message {
            from: 1,
            to: follower,
            term: 2,
            body: MessageBody::Append {
                prev_log_index: index - 1,
                prev_log_term: 2,
                entries: vec![Entry {
                    term: 2,
                    index,
                    kind: EntryKind::Normal,
                    data: payload.clone(),
                }],
                leader_commit: index - 1,
            },
        });
        messages.push(Message {
            from: follower,
            to: 1,
            term: 2,
            body: MessageBody::AppendResponse {
                index,
                reject_hint: None,
            },
        });
    }
    messages
}

/// The codec baseline: how many commits per second the encoding and decoding of their
/// messages alone allows.
fn codec_round(duration: Duration) -> Round {
    let payload = Bytes::from_static(PAYLOAD);
    let start = wall_clock_now();
    let cpu_start = thread_cpu_time();
    let mut entries = 0;
    let mut messages = 0;
    let mut buffer = Vec::with_capacity(256);
    while start.elapsed() < duration {
        for _ in 0..256 {
            entries += 1;
            for message in one_commit_messages(entries + 1, &payload) {
                buffer.clear();
                let encoded = postcard::to_extend(&message, std::mem::take(&mut buffer))
                    .expect("a message always encodes");
                let decoded: Message =
                    postcard::from_bytes(&encoded).expect("what was encoded decodes");
                assert_eq!(
                    decoded.to, message.to,
                    "codec round trip changed the message"
                );
                black_box(&decoded);
                buffer = encoded;
                messages += 1;
            }
        }
    }
    Round {
        entries,
        messages,
        elapsed: start.elapsed(),
        cpu: cpu_since(cpu_start),
    }
}

/// The medians of one mode.
#[derive(Clone, Copy, Debug)]
struct Medians {
    /// Entries per wall-clock second.
    wall: f64,
    /// Entries per CPU second of the benchmark thread, where measurable.
    cpu: Option<f64>,
}

/// The median of `values` (the upper one for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "median of no values");
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints each round and returns the medians.
fn report(name: &str, rounds: &[Round]) -> Medians {
    for (number, round) in rounds.iter().enumerate() {
        let cpu_rate = round
            .entries_per_cpu_second()
            .map_or(String::new(), |rate| format!(", {rate:.0} per CPU-s"));
        println!(
            "  {name} round {}: {:>10.0} entries/s{cpu_rate} ({} entries, {:.2} messages/entry, {:.3} s)",
            number + 1,
            round.entries_per_second(),
            round.entries,
            round.messages as f64 / round.entries.max(1) as f64,
            round.elapsed.as_secs_f64()
        );
    }
    let wall = median(rounds.iter().map(Round::entries_per_second).collect());
    let cpu = rounds
        .iter()
        .map(Round::entries_per_cpu_second)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    let cpu_text = cpu.map_or(String::new(), |rate| {
        format!(", {rate:.0} entries per CPU-s")
    });
    println!(
        "  {name} median: {wall:.0} entries/s{cpu_text} over {} rounds",
        rounds.len()
    );
    Medians { wall, cpu }
}

/// The length of one timed round.
fn round_millis() -> u64 {
    std::env::var("CORE_BENCH_ROUND_MILLIS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(ROUND_MILLIS)
}

fn measure(mut one_round: impl FnMut(Duration) -> Round) -> Vec<Round> {
    one_round(Duration::from_millis(WARMUP_MILLIS.min(round_millis())));
    (0..ROUNDS)
        .map(|_| one_round(Duration::from_millis(round_millis())))
        .collect()
}

/// Whether `mode` should run: `CORE_BENCH_MODES` (comma-separated among `codec`, `1`, `256`)
/// picks modes, e.g. to profile one; all run by default.
fn selected(mode: &str) -> bool {
    std::env::var("CORE_BENCH_MODES").map_or(true, |modes| modes.split(',').any(|m| m == mode))
}

fn main() {
    println!(
        "raft core throughput: 3 nodes, in-memory testkit network, {}-byte entries, {ROUNDS} x {} ms per mode",
        PAYLOAD.len(),
        round_millis()
    );
    let mut medians = Vec::new();
    if selected("codec") {
        println!("baseline: postcard encode+decode of one commit's 4 messages");
        medians.push(("codec", report("codec", &measure(codec_round))));
    }
    if selected("1") {
        println!("1 proposer (propose, wait for the leader to commit, repeat)");
        let mut bench = Bench::new();
        medians.push(("1", report("1 proposer", &measure(|d| bench.run(1, d)))));
    }
    if selected("256") {
        println!("256 proposers (256 uncommitted proposals kept in flight)");
        let mut bench = Bench::new();
        medians.push((
            "256",
            report("256 proposers", &measure(|d| bench.run(256, d))),
        ));
    }
    let find = |mode: &str| medians.iter().find(|(m, _)| *m == mode).map(|&(_, v)| v);
    let cpu_text = |m: Medians| {
        m.cpu
            .map_or(String::new(), |rate| format!(" ({rate:>10.0} per CPU-s)"))
    };
    println!("summary (medians of {ROUNDS} rounds):");
    if let Some(codec) = find("codec") {
        println!(
            "  codec baseline  {:>10.0} entries/s{}",
            codec.wall,
            cpu_text(codec)
        );
    }
    if let Some(single) = find("1") {
        let versus_codec = find("codec").map_or(String::new(), |codec| {
            format!(
                "{:.1}% of the codec baseline; ",
                100.0 * single.wall / codec.wall
            )
        });
        println!(
            "  1 proposer      {:>10.0} entries/s{}  [{versus_codec}openraft: 33k/s]",
            single.wall,
            cpu_text(single)
        );
    }
    if let Some(many) = find("256") {
        let versus_single = find("1").map_or(String::new(), |single| {
            format!("{:.1}x the 1-proposer median; ", many.wall / single.wall)
        });
        println!(
            "  256 proposers   {:>10.0} entries/s{}  [{versus_single}openraft: 1.8M/s]",
            many.wall,
            cpu_text(many)
        );
    }
}
