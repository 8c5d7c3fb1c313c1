//! Everything one seed decides: the cluster, its timing, the network, the disks, the clocks, the
//! fault schedule and the workload.
//!
//! [`Scenario::derive`] is a pure function of the seed (and the planted bug, if any), so a
//! failing seed's parameters can be printed, read and replayed exactly. The madsim runtime that
//! runs the scenario is seeded with the same seed.

use std::collections::BTreeSet;
use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Virtual milliseconds of the standard scenario: faults, then healing, then the final checks.
pub const RUN_MS: u64 = 60_000;
/// When every fault is healed (virtual milliseconds from the start).
pub const FAULTS_END_MS: u64 = 40_000;
/// After the heal, a leader must exist within this bound (virtual milliseconds).
pub const LEADER_AFTER_HEAL_MS_MAX: u64 = 10_000;
/// When the clients stop starting new operations.
pub const CLIENTS_STOP_MS: u64 = 52_000;
/// After the clients stop, every operation still in flight must finish within this bound (it
/// covers a client's whole retry budget).
pub const CLIENTS_DRAIN_MS_MAX: u64 = 4 * (CLIENT_TIMEOUT_MS_MAX + CLIENT_BACKOFF_MS_MAX);
/// After the clients drain, all replicas must converge (same applied index and state hash)
/// within this bound.
pub const CONVERGE_MS_MAX: u64 = 10_000;
/// The longest client call (request timeout plus forwarding slack).
pub const CLIENT_TIMEOUT_MS_MAX: u64 = REQUEST_TIMEOUT_MS_MAX + 1_000;
/// The longest request timeout a seed draws (above the production default of 5 s).
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 8_000;
/// The production defaults (`NodeConfig::new`) every drawn range includes.
pub const PRODUCTION_TICK_MS: u64 = 10;
/// Production election timeout in ticks.
pub const PRODUCTION_ELECTION_TICKS: u32 = 100;
/// Production heartbeat interval in ticks.
pub const PRODUCTION_HEARTBEAT_TICKS: u32 = 10;
/// Production request timeout.
pub const PRODUCTION_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Production peer RPC timeout.
pub const PRODUCTION_RPC_TIMEOUT_MS: u64 = 2_000;
/// Production snapshot interval in entries.
pub const PRODUCTION_SNAPSHOT_ENTRIES: u64 = 20_000;
/// Production WAL segment size.
pub const PRODUCTION_WAL_SEGMENT_BYTES: u64 = 64 << 20;
/// The shortest election timeout any seed draws, in milliseconds.
pub const ELECTION_MS_MIN: u64 = 150;
/// The shortest election timeout is at least this many worst-case one-way latencies.
pub const ELECTION_LATENCIES_MIN: u64 = 10;
/// Seeds whose fault schedule is only stranded leaders, one at a time (see
/// `Scenario::draw_strand_focus`).
pub const STRAND_FOCUS_PROBABILITY: f64 = 0.2;
/// The longest pause between two attempts of one client operation.
pub const CLIENT_BACKOFF_MS_MAX: u64 = 400;

pub use raft_kv::plants::Plant;

/// One kind of fault. Node numbers are indices into the cluster (0-based); the index
/// `nodes_count` is the clients' machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Clog the directed `links` (src, dst) for the episode.
    Cut {
        /// The partition's shape, for reports (`majority`, `one-way`, `bridge`, `ring`, `swizzle`).
        shape: &'static str,
        /// Directed links to clog.
        links: Vec<(usize, usize)>,
    },
    /// Cut whichever node leads when the episode starts from everybody, both ways.
    IsolateLeader,
    /// Cut the links from every other node to whichever node leads when the episode starts,
    /// one way: the leader keeps replicating (its followers append) but never hears an
    /// acknowledgement, so it steps down with client writes pending while the others elect a
    /// new leader and move on (past a snapshot, if the episode lasts); at the end the deposed
    /// leader catches up, often by an InstallSnapshot over its pending writes (issues 6 and 8).
    StrandLeader,
    /// Kill the node (its unsynced disk writes are lost or torn), restart it when the episode ends.
    Crash {
        /// The node.
        node: usize,
    },
    /// Freeze the node while time runs on; resume it when the episode ends.
    Pause {
        /// The node.
        node: usize,
    },
    /// Raise the global packet loss rate for the episode.
    LossSpike {
        /// The loss rate during the spike.
        loss_rate: f64,
    },
    /// Raise the global send latency for the episode.
    DelaySpike {
        /// The highest latency during the spike, in milliseconds.
        latency_ms_max: u64,
    },
    /// Set the node's clock to a new offset and drift (the change stays after the episode).
    ClockJump {
        /// The node.
        node: usize,
        /// The new offset from true time, in milliseconds.
        offset_ms: i64,
        /// The new drift, in parts per million.
        drift_ppm: i32,
    },
    /// The node's disk fails every write for the episode; at its end the disk is fixed and the
    /// node restarted (a node that saw its storage fail stops serving until restarted).
    DiskFull {
        /// The node.
        node: usize,
    },
}

impl Fault {
    /// The node the fault is pinned to, if it acts on one node's process or disk.
    pub fn process_node(&self) -> Option<usize> {
        match self {
            Fault::Crash { node } | Fault::Pause { node } | Fault::DiskFull { node } => Some(*node),
            _ => None,
        }
    }
}

/// A membership operation the seed's operator takes (issue 10). The operator adapts it to the
/// cluster it finds: a growth at five voters removes instead, a removal at three grows, and so
/// does a replacement at fewer than three (losing one of two voters loses the quorum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberOp {
    /// A fresh node joins (`--join`): added as a learner, promoted once caught up.
    Grow,
    /// A voter is removed (`DELETE /v1/cluster/members/{name}`); `leader`: the leader itself.
    Remove {
        /// Remove the leader (it hands leadership over first).
        leader: bool,
    },
    /// A voter is crashed for good, removed, and a fresh node joins in its place.
    ReplaceCrashed,
    /// A voter loses its disk and restarts with the same flags (it must refuse to start under
    /// its old identity); it is removed, then joins again as a new incarnation.
    ReplaceWiped,
    /// The shape of the single-server change bug (raft-dev, 2015), on four voters: the leader
    /// is cut off and asked to remove a voter (appended, never replicated); the new leader is
    /// at once asked to remove the old one while one of its voters is cut off; then the old
    /// leader and that voter are joined. The current-term check refuses the second change;
    /// without it both changes commit under disjoint majorities.
    ChangesAcrossTerms,
}

/// A membership operation and when the operator starts it (after the one before it ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStep {
    /// Virtual milliseconds from the start.
    pub at_ms: u64,
    /// What the operator does.
    pub op: MemberOp,
}

/// Membership operations start no later than this before the faults end.
pub const MEMBERSHIP_END_MARGIN_MS: u64 = 6_000;

/// A fault active from `start_ms` for `duration_ms` (virtual milliseconds).
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// When the fault starts.
    pub start_ms: u64,
    /// How long it lasts (0: an instant change, such as a clock jump).
    pub duration_ms: u64,
    /// What it does.
    pub fault: Fault,
}

impl Episode {
    /// When the fault ends.
    pub fn end_ms(&self) -> u64 {
        self.start_ms + self.duration_ms
    }
}

/// A node's clock relative to true time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSkew {
    /// Offset in milliseconds.
    pub offset_ms: i64,
    /// Drift in parts per million.
    pub drift_ppm: i32,
}

/// Everything one seed decides.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The seed.
    pub seed: u64,
    /// The planted bug.
    pub plant: Plant,
    /// Cluster size (3 or 5).
    pub nodes_count: usize,
    /// One Raft tick, in milliseconds.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// The node's client request timeout, in milliseconds.
    pub request_timeout_ms: u64,
    /// The node's peer RPC timeout, in milliseconds.
    pub rpc_timeout_ms: u64,
    /// Snapshot after this many applied entries...
    pub snapshot_entries: u64,
    /// ...or this many applied bytes.
    pub snapshot_bytes: u64,
    /// Entries compaction keeps below a snapshot.
    pub snapshot_tail_entries: u64,
    /// Target payload of a snapshot file's chunks.
    pub snapshot_chunk_bytes: usize,
    /// Largest WAL segment.
    pub wal_segment_bytes_max: u64,
    /// Base network latency range, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Base packet loss rate.
    pub packet_loss_rate: f64,
    /// Probability that a client sends a write twice (same idempotency key) to two nodes.
    pub duplicate_write_probability: f64,
    /// Per node: probability that a crash tears the unsynced tail instead of dropping it.
    pub torn_write_probability: Vec<f64>,
    /// Per node: disk call latency range, in microseconds.
    pub disk_latency_us: (u64, u64),
    /// Per node: initial clock skew.
    pub clock_skews: Vec<ClockSkew>,
    /// Number of concurrent clients.
    pub clients_count: usize,
    /// Number of keys the clients share (few, so histories are contended).
    pub keys_count: usize,
    /// A client's pause between two operations, in milliseconds.
    pub think_ms: (u64, u64),
    /// The fault schedule, ordered by start.
    pub episodes: Vec<Episode>,
    /// Probability that a node which just moved to a new term with no leader known (it is
    /// being asked for its vote) is crashed and restarted at once, before the faults end: a
    /// crash at the worst moment for a forgotten vote.
    pub voter_crash_probability: f64,
    /// Probability that a node is killed within milliseconds of starting a snapshot write (and
    /// restarted shortly after): the crash lands in the middle of the write.
    pub snapshot_crash_probability: f64,
    /// Bytes of a snapshot file per streamed chunk.
    pub transfer_chunk_bytes: usize,
    /// Largest peer RPC body (batches of messages and snapshot chunks stay under it).
    pub rpc_body_bytes_max: usize,
    /// Every node's `--quota-bytes` in a small-quota seed (see `quota_check`); `None`: the
    /// default, which the workload never reaches.
    pub quota_bytes: Option<u64>,
    /// The membership operations, in order (empty: the member set stays as bootstrapped).
    pub membership: Vec<MemberStep>,
    /// Every node's rate limit in a rate-limited seed (see `rate_check`); `None`: no limit.
    pub rate_limit: Option<raft_kv::http::rate_limit::RateLimitOptions>,
    /// The speed baseline of `sweep --idle` ([`Scenario::idle`]): the cluster runs with no
    /// workload and no faults.
    pub idle: bool,
}

/// A small seeded generator for scenario parameters.
struct Draw(ChaCha8Rng);

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "cannot draw below 0");
        self.0.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below(hi - lo + 1)
    }

    fn signed(&mut self, magnitude: i64) -> i64 {
        let m = u64::try_from(magnitude).expect("magnitude is not negative");
        i64::try_from(self.range(0, 2 * m)).expect("small range") - magnitude
    }

    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("small index")]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).expect("small index");
            items.swap(i, j);
        }
    }
}

/// Fault kinds the generator can draw, with a per-seed weight each (the seed's "fault mix").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Majority,
    IsolateLeader,
    StrandLeader,
    OneWay,
    Bridge,
    Ring,
    Swizzle,
    Crash,
    Pause,
    LossSpike,
    DelaySpike,
    ClockJump,
    DiskFull,
}

const KINDS: [Kind; 13] = [
    Kind::Majority,
    Kind::IsolateLeader,
    Kind::StrandLeader,
    Kind::OneWay,
    Kind::Bridge,
    Kind::Ring,
    Kind::Swizzle,
    Kind::Crash,
    Kind::Pause,
    Kind::LossSpike,
    Kind::DelaySpike,
    Kind::ClockJump,
    Kind::DiskFull,
];

/// Both directions of every link between `a` and `b`.
fn links_between(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    let mut links = Vec::new();
    for &x in a {
        for &y in b {
            links.push((x, y));
            links.push((y, x));
        }
    }
    links
}

impl Scenario {
    /// The scenario of `seed`, with `plant` planted.
    pub fn derive(seed: u64, plant: Plant) -> Scenario {
        let mut draw = Draw(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5ce7_a210_0001));
        let nodes_count = if draw.chance(0.5) { 3 } else { 5 };
        // Some seeds hunt the lie of issues 6 and 8: stranded leaders only, requests that wait
        // long enough (the production 5 s or more) and snapshots every few entries.
        let strand_focus = draw.chance(STRAND_FOCUS_PROBABILITY);
        // One seed in five runs the production timing (1 s elections, 100 ms heartbeats).
        let production_timing = draw.chance(0.2);
        let tick_ms = if production_timing {
            PRODUCTION_TICK_MS
        } else {
            *draw.pick(&[5, 10, 10, 20])
        };
        let latency_hi = *draw.pick(&[2, 5, 10, 20, 40]);
        let latency_ms = (1, latency_hi);
        // Raft needs broadcast time << election timeout (§5.6): an RPC round trip plus fsyncs
        // must fit many times into the shortest election timeout.
        let election_ms_min = (ELECTION_LATENCIES_MIN * latency_hi).max(ELECTION_MS_MIN);
        let election_ticks_min = election_ms_min.div_ceil(tick_ms);
        let (election_ticks, heartbeat_ticks) = if production_timing {
            (PRODUCTION_ELECTION_TICKS, PRODUCTION_HEARTBEAT_TICKS)
        } else {
            let election_ticks =
                u32::try_from(draw.range(election_ticks_min, election_ticks_min + 20))
                    .expect("small");
            let heartbeat_ticks =
                u32::try_from(draw.range(1, u64::from(election_ticks / 4))).expect("small");
            (election_ticks, heartbeat_ticks)
        };
        let request_timeout_ms = if draw.chance(0.3) {
            PRODUCTION_REQUEST_TIMEOUT_MS
        } else if strand_focus {
            draw.range(PRODUCTION_REQUEST_TIMEOUT_MS, REQUEST_TIMEOUT_MS_MAX)
        } else {
            draw.range(1_000, REQUEST_TIMEOUT_MS_MAX)
        };
        let rpc_timeout_ms = if draw.chance(0.2) {
            PRODUCTION_RPC_TIMEOUT_MS
        } else {
            draw.range(300, 2_500)
        };
        // Mostly a few dozen entries or fewer, so that most seeds compact and install snapshots.
        let snapshot_entries = if strand_focus {
            *draw.pick(&[5, 10, 20])
        } else {
            *draw.pick(&[5, 10, 20, 20, 25, 50, 100, 400, PRODUCTION_SNAPSHOT_ENTRIES])
        };
        let wal_segment_bytes_max =
            *draw.pick(&[2_048, 16_384, 1 << 20, PRODUCTION_WAL_SEGMENT_BYTES]);
        let packet_loss_rate = if draw.chance(0.5) {
            0.0
        } else {
            draw.range(1, 30) as f64 / 1000.0
        };
        let duplicate_write_probability = if draw.chance(0.5) { 0.0 } else { 0.1 };
        let torn = draw.chance(0.7);
        let torn_write_probability = (0..nodes_count)
            .map(|_| {
                if torn {
                    draw.range(20, 90) as f64 / 100.0
                } else {
                    0.0
                }
            })
            .collect();
        let disk_latency_us = *draw.pick(&[(0, 0), (0, 200), (50, 2_000)]);
        let big_drift = draw.chance(0.2);
        let clock_skews = (0..nodes_count)
            .map(|_| ClockSkew {
                offset_ms: draw.signed(500),
                drift_ppm: i32::try_from(draw.signed(if big_drift { 30_000 } else { 200 }))
                    .expect("small"),
            })
            .collect();
        let clients_count = usize::try_from(draw.range(2, 5)).expect("small");
        let keys_count = usize::try_from(draw.range(1, 4)).expect("small");
        let think_ms = *draw.pick(&[(0, 20), (10, 100), (50, 300)]);
        let election_ms = u64::from(election_ticks) * tick_ms;
        let episodes = if strand_focus {
            Self::draw_strand_focus(&mut draw, election_ms)
        } else {
            Self::draw_episodes(&mut draw, nodes_count, election_ms)
        };
        let voter_crash_probability = if draw.chance(0.5) {
            0.0
        } else {
            draw.range(5, 40) as f64 / 100.0
        };
        // Drawn last so the draws above stay what they were for every seed.
        let snapshot_tail_entries = match draw.below(4) {
            0 => 0,
            1 => 2,
            2 => 10,
            _ => snapshot_entries / 4,
        };
        let snapshot_bytes = if draw.chance(0.3) {
            draw.range(256, 4_096)
        } else {
            256 << 20
        };
        let snapshot_chunk_bytes = *draw.pick(&[64, 1_024, 64 << 10]);
        let snapshot_crash_probability = if draw.chance(0.3) {
            0.0
        } else {
            draw.range(5, 40) as f64 / 100.0
        };
        // Most seeds stream snapshots in many small chunks under a small body cap, so transfers
        // span many RPCs and the faults above land in the middle of them.
        let transfer_chunk_bytes = *draw.pick(&[128, 512, 1 << 10, 1 << 10, 1 << 20]);
        let rpc_body_bytes_max = *draw.pick(&[16 << 10, 16 << 10, 64 << 10, 64 << 20]);
        // Not drawn, so every other parameter stays what it was for every seed.
        let (keys_count, quota_bytes) = if crate::quota_check::runs_in(seed, plant) {
            let keys_count = keys_count + crate::quota_check::EXTRA_KEYS;
            (
                keys_count,
                Some(crate::quota_check::small_quota(keys_count)),
            )
        } else {
            (keys_count, None)
        };
        // Drawn last, so every other plant's seeds keep their schedule: unplanted seeds and the
        // current-term plant's run membership operations, every seed but the stranded-leader
        // ones (issue 10: "most seeds").
        let membership = if matches!(
            plant,
            Plant::None | Plant::SkipCurrentTermCheck | Plant::CompactPastTransfer
        ) && !strand_focus
        {
            Self::draw_membership(&mut draw)
        } else {
            Vec::new()
        };
        Scenario {
            seed,
            plant,
            nodes_count,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            request_timeout_ms,
            rpc_timeout_ms,
            snapshot_entries,
            snapshot_bytes,
            snapshot_tail_entries,
            snapshot_chunk_bytes,
            wal_segment_bytes_max,
            latency_ms,
            packet_loss_rate,
            duplicate_write_probability,
            torn_write_probability,
            disk_latency_us,
            clock_skews,
            clients_count,
            keys_count,
            think_ms,
            episodes,
            voter_crash_probability,
            snapshot_crash_probability,
            transfer_chunk_bytes,
            rpc_body_bytes_max,
            quota_bytes,
            membership,
            // Not drawn either.
            rate_limit: crate::rate_check::runs_in(seed, plant).then(crate::rate_check::options),
            idle: false,
        }
    }

    /// This seed's cluster (its size, timing, disks, clocks and network) with nothing to do: no
    /// clients, transaction clients, watchers, lease holders, strangers or rate-limit probes, no
    /// fault episodes, crashes or membership changes. Only the final liveness and convergence
    /// checks still talk to it. `sweep --idle` runs it as the simulator's speed floor: what the
    /// real nodes cost per virtual second (ticks, heartbeats, HTTP, the WAL) before any
    /// workload.
    pub fn idle(self) -> Scenario {
        Scenario {
            clients_count: 0,
            episodes: Vec::new(),
            voter_crash_probability: 0.0,
            snapshot_crash_probability: 0.0,
            membership: Vec::new(),
            rate_limit: None,
            idle: true,
            ..self
        }
    }

    /// A few membership operations spread over the fault phase.
    fn draw_membership(draw: &mut Draw) -> Vec<MemberStep> {
        let steps = draw.range(2, 6);
        let mut at_ms = draw.range(1_000, 4_000);
        let mut plan = Vec::new();
        for _ in 0..steps {
            if at_ms + MEMBERSHIP_END_MARGIN_MS > FAULTS_END_MS {
                break;
            }
            let op = match draw.below(6) {
                0 => MemberOp::Grow,
                1 => MemberOp::Remove { leader: false },
                2 => MemberOp::Remove { leader: true },
                3 => MemberOp::ReplaceCrashed,
                4 => MemberOp::ReplaceWiped,
                _ => MemberOp::ChangesAcrossTerms,
            };
            plan.push(MemberStep { at_ms, op });
            at_ms += draw.range(2_000, 8_000);
        }
        plan
    }

    fn draw_episodes(draw: &mut Draw, nodes_count: usize, election_ms: u64) -> Vec<Episode> {
        let weights: Vec<u64> = KINDS.iter().map(|_| draw.range(0, 3)).collect();
        let weight_total: u64 = weights.iter().sum::<u64>().max(1);
        let episodes_count = draw.range(6, 24);
        let nodes: Vec<usize> = (0..nodes_count).collect();
        let client = nodes_count;
        // Per node: intervals during which a crash, pause or full disk holds it.
        let mut busy: Vec<Vec<(u64, u64)>> = vec![Vec::new(); nodes_count];
        let mut episodes = Vec::new();
        for _ in 0..episodes_count {
            let mut ticket = draw.below(weight_total);
            let mut kind = Kind::Crash;
            for (k, w) in KINDS.iter().zip(&weights) {
                if ticket < *w {
                    kind = *k;
                    break;
                }
                ticket -= w;
            }
            let start_ms = draw.range(500, FAULTS_END_MS - 1_000);
            let duration_ms = draw.range(200, 6_000).min(FAULTS_END_MS - start_ms);
            let mut push = |fault: Fault, start_ms: u64, duration_ms: u64| {
                // A cut without links (a ring of 3, where all are neighbours; one-way links
                // all drawn with src == dst) would do nothing while counting as a fault.
                if matches!(&fault, Fault::Cut { links, .. } if links.is_empty()) {
                    return;
                }
                episodes.push(Episode {
                    start_ms,
                    duration_ms,
                    fault,
                });
            };
            match kind {
                Kind::Majority => {
                    let mut shuffled = nodes.clone();
                    draw.shuffle(&mut shuffled);
                    let cut = usize::try_from(draw.range(1, (nodes_count as u64 - 1) / 2))
                        .expect("small");
                    let mut minority = shuffled[..cut].to_vec();
                    let mut majority = shuffled[cut..].to_vec();
                    match draw.below(3) {
                        0 => minority.push(client),
                        1 => majority.push(client),
                        _ => {}
                    }
                    push(
                        Fault::Cut {
                            shape: "majority",
                            links: links_between(&minority, &majority),
                        },
                        start_ms,
                        duration_ms,
                    );
                }
                Kind::IsolateLeader => push(Fault::IsolateLeader, start_ms, duration_ms),
                Kind::StrandLeader => {
                    // Long enough for check-quorum (up to two election timeouts), a new
                    // election (up to two more) and a few dozen writes past a snapshot.
                    let duration_ms = (election_ms * draw.range(4, 8) + draw.range(500, 2_500))
                        .min(FAULTS_END_MS - start_ms);
                    push(Fault::StrandLeader, start_ms, duration_ms);
                }
                Kind::OneWay => {
                    let links_count = draw.range(1, nodes_count as u64);
                    let mut links = Vec::new();
                    for _ in 0..links_count {
                        let src = *draw.pick(&nodes);
                        let dst = *draw.pick(&nodes);
                        if src != dst && !links.contains(&(src, dst)) {
                            links.push((src, dst));
                        }
                    }
                    // A cut with no link would be a fault that does nothing.
                    if links.is_empty() {
                        continue;
                    }
                    push(
                        Fault::Cut {
                            shape: "one-way",
                            links,
                        },
                        start_ms,
                        duration_ms,
                    );
                }
                Kind::Bridge => {
                    let mut shuffled = nodes.clone();
                    draw.shuffle(&mut shuffled);
                    // One node reaches both halves; the halves cannot reach each other.
                    let half = (nodes_count - 1) / 2;
                    let left = &shuffled[1..1 + half];
                    let right = &shuffled[1 + half..];
                    push(
                        Fault::Cut {
                            shape: "bridge",
                            links: links_between(left, right),
                        },
                        start_ms,
                        duration_ms,
                    );
                }
                // On three nodes every pair are neighbours in a ring: nothing to cut.
                Kind::Ring if nodes_count <= 3 => {}
                Kind::Ring => {
                    let mut order = nodes.clone();
                    draw.shuffle(&mut order);
                    let position =
                        |node: usize| order.iter().position(|&n| n == node).expect("in the ring");
                    let mut links = Vec::new();
                    for &a in &nodes {
                        for &b in &nodes {
                            let distance = position(a).abs_diff(position(b));
                            let neighbours = distance == 1 || distance == nodes_count - 1;
                            if a != b && !neighbours {
                                links.push((a, b));
                            }
                        }
                    }
                    push(
                        Fault::Cut {
                            shape: "ring",
                            links,
                        },
                        start_ms,
                        duration_ms,
                    );
                }
                Kind::Swizzle => {
                    // Cut nodes one by one, then heal them in another order.
                    let mut cut_order = nodes.clone();
                    draw.shuffle(&mut cut_order);
                    let count = usize::try_from(draw.range(2, nodes_count as u64)).expect("small");
                    let step_ms = draw.range(100, 800);
                    let mut heal_order: Vec<usize> = (0..count).collect();
                    draw.shuffle(&mut heal_order);
                    let all_cut_ms = start_ms + step_ms * count as u64;
                    for (i, node) in cut_order[..count].iter().enumerate() {
                        let cut_at = start_ms + step_ms * i as u64;
                        let heal_rank = heal_order.iter().position(|&r| r == i).expect("a rank");
                        let heal_at = (all_cut_ms + step_ms * heal_rank as u64).min(FAULTS_END_MS);
                        let others: Vec<usize> = (0..=nodes_count).filter(|n| n != node).collect();
                        if cut_at < heal_at {
                            push(
                                Fault::Cut {
                                    shape: "swizzle",
                                    links: links_between(&[*node], &others),
                                },
                                cut_at,
                                heal_at - cut_at,
                            );
                        }
                    }
                }
                Kind::Crash | Kind::Pause | Kind::DiskFull => {
                    let node = *draw.pick(&nodes);
                    let end_ms = start_ms + duration_ms;
                    let overlaps = busy[node].iter().any(|&(s, e)| start_ms < e && s < end_ms);
                    if !overlaps {
                        busy[node].push((start_ms, end_ms));
                        let fault = match kind {
                            Kind::Crash => Fault::Crash { node },
                            Kind::Pause => Fault::Pause { node },
                            _ => Fault::DiskFull { node },
                        };
                        push(fault, start_ms, duration_ms);
                    }
                }
                Kind::LossSpike => push(
                    Fault::LossSpike {
                        loss_rate: draw.range(10, 50) as f64 / 100.0,
                    },
                    start_ms,
                    duration_ms,
                ),
                Kind::DelaySpike => push(
                    Fault::DelaySpike {
                        latency_ms_max: *draw.pick(&[50, 200, 1_000]),
                    },
                    start_ms,
                    duration_ms,
                ),
                Kind::ClockJump => {
                    let node = *draw.pick(&nodes);
                    let offset_ms = draw.signed(2_000);
                    let drift_ppm = i32::try_from(draw.signed(50_000)).expect("small");
                    push(
                        Fault::ClockJump {
                            node,
                            offset_ms,
                            drift_ppm,
                        },
                        start_ms,
                        0,
                    );
                }
            }
        }
        episodes.sort_by_key(|e| (e.start_ms, e.duration_ms));
        for episode in &episodes {
            assert!(
                episode.end_ms() <= FAULTS_END_MS,
                "episode {episode:?} ends after the faults end at {FAULTS_END_MS} ms"
            );
        }
        episodes
    }

    /// A schedule of stranded leaders and nothing else, spaced so that each one plays out
    /// alone: the leader steps down with writes pending, the others elect a new leader and
    /// take writes past a snapshot, and the heal brings the deposed leader back through an
    /// InstallSnapshot over its pending writes (the state where the issue 6 lie hid). Other
    /// faults at the same time (a ring, a crash) mostly keep the new leader from being elected.
    fn draw_strand_focus(draw: &mut Draw, election_ms: u64) -> Vec<Episode> {
        let mut episodes = Vec::new();
        let mut start_ms = draw.range(500, 3_000);
        while start_ms + 1_000 < FAULTS_END_MS {
            // Step-down, election and a snapshot's worth of writes, but shorter than the
            // request timeout, so that writes still wait at the deposed leader when it heals.
            let duration_ms = (election_ms * draw.range(3, 5) + draw.range(300, 1_500))
                .min(FAULTS_END_MS - start_ms);
            episodes.push(Episode {
                start_ms,
                duration_ms,
                fault: Fault::StrandLeader,
            });
            // Time for the deposed leader to catch up and the clients to settle.
            start_ms += duration_ms + election_ms * 2 + draw.range(500, 3_000);
        }
        episodes
    }

    /// Nodes whose processes two episodes would hold at once (must be empty: the generator
    /// keeps crash, pause and disk-full episodes of one node apart).
    pub fn overlapping_process_faults(&self) -> BTreeSet<usize> {
        let mut overlapping = BTreeSet::new();
        for (i, a) in self.episodes.iter().enumerate() {
            for b in &self.episodes[i + 1..] {
                if let (Some(x), Some(y)) = (a.fault.process_node(), b.fault.process_node()) {
                    if x == y && a.start_ms < b.end_ms() && b.start_ms < a.end_ms() {
                        overlapping.insert(x);
                    }
                }
            }
        }
        overlapping
    }

    /// The name of node `index` (`n1`, `n2`, ...).
    pub fn node_name(index: usize) -> String {
        format!("n{}", index + 1)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} (plant: {})", self.seed, self.plant)?;
        if self.idle {
            writeln!(
                f,
                "  idle: no workload, faults or membership changes (speed floor)"
            )?;
        }
        writeln!(
            f,
            "  cluster: {} nodes, tick {} ms, election {} ticks, heartbeat {} ticks",
            self.nodes_count, self.tick_ms, self.election_ticks, self.heartbeat_ticks
        )?;
        writeln!(
            f,
            "  timeouts: request {} ms, rpc {} ms; wal segment {} bytes",
            self.request_timeout_ms, self.rpc_timeout_ms, self.wal_segment_bytes_max
        )?;
        writeln!(
            f,
            "  snapshots: every {} entries or {} bytes, tail {} entries, chunks of {} bytes; \
             a write is crashed with probability {:.2}",
            self.snapshot_entries,
            self.snapshot_bytes,
            self.snapshot_tail_entries,
            self.snapshot_chunk_bytes,
            self.snapshot_crash_probability
        )?;
        writeln!(
            f,
            "  transfers: chunks of {} bytes, peer rpc bodies of at most {} bytes",
            self.transfer_chunk_bytes, self.rpc_body_bytes_max
        )?;
        writeln!(
            f,
            "  network: latency {}..={} ms, loss {:.3}, duplicate writes {:.2}",
            self.latency_ms.0,
            self.latency_ms.1,
            self.packet_loss_rate,
            self.duplicate_write_probability
        )?;
        writeln!(
            f,
            "  disks: torn-write probability {:?}, latency {}..={} us",
            self.torn_write_probability, self.disk_latency_us.0, self.disk_latency_us.1
        )?;
        let clocks: Vec<String> = self
            .clock_skews
            .iter()
            .map(|c| format!("{:+}ms/{:+}ppm", c.offset_ms, c.drift_ppm))
            .collect();
        writeln!(f, "  clocks: {}", clocks.join(" "))?;
        writeln!(
            f,
            "  workload: {} clients, {} keys, think {}..={} ms",
            self.clients_count, self.keys_count, self.think_ms.0, self.think_ms.1
        )?;
        if let Some(quota_bytes) = self.quota_bytes {
            writeln!(f, "  quota: {quota_bytes} bytes on every node")?;
        }
        if let Some(limit) = self.rate_limit {
            writeln!(
                f,
                "  rate limit: {} requests/s in bursts of {} per client on every node",
                limit.requests_per_second, limit.burst
            )?;
        }
        writeln!(
            f,
            "  faults ({} episodes, healed at {} ms):",
            self.episodes.len(),
            FAULTS_END_MS
        )?;
        for step in &self.membership {
            writeln!(f, "  membership at {:>6} ms: {:?}", step.at_ms, step.op)?;
        }
        for episode in &self.episodes {
            let what = match &episode.fault {
                Fault::Cut { shape, links } => {
                    let links: Vec<String> = links
                        .iter()
                        .map(|(a, b)| format!("{}>{}", self.label(*a), self.label(*b)))
                        .collect();
                    format!("cut {shape}: {}", links.join(" "))
                }
                Fault::IsolateLeader => "isolate the leader".to_string(),
                Fault::StrandLeader => "strand the leader (followers > leader cut)".to_string(),
                Fault::Crash { node } => format!("crash {}", self.label(*node)),
                Fault::Pause { node } => format!("pause {}", self.label(*node)),
                Fault::LossSpike { loss_rate } => format!("loss spike {loss_rate:.2}"),
                Fault::DelaySpike { latency_ms_max } => {
                    format!("delay spike up to {latency_ms_max} ms")
                }
                Fault::ClockJump {
                    node,
                    offset_ms,
                    drift_ppm,
                } => {
                    format!(
                        "clock of {} to {offset_ms:+} ms, {drift_ppm:+} ppm",
                        self.label(*node)
                    )
                }
                Fault::DiskFull { node } => format!("disk full on {}", self.label(*node)),
            };
            writeln!(
                f,
                "    {:>6}..{:>6} ms  {what}",
                episode.start_ms,
                episode.end_ms()
            )?;
        }
        Ok(())
    }
}

impl Scenario {
    /// `n1`.. for nodes, `client` for the clients' machine.
    pub fn label(&self, index: usize) -> String {
        if index == self.nodes_count {
            "client".to_string()
        } else {
            Scenario::node_name(index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_derives_one_scenario() {
        for seed in 0..50 {
            assert_eq!(
                Scenario::derive(seed, Plant::None),
                Scenario::derive(seed, Plant::None)
            );
        }
        assert_ne!(
            Scenario::derive(1, Plant::None),
            Scenario::derive(2, Plant::None)
        );
    }

    #[test]
    fn an_idle_scenario_keeps_its_seeds_cluster_and_drops_all_workload_and_faults() {
        let seeds = 0..300;
        for seed in seeds.clone() {
            let s = Scenario::derive(seed, Plant::None);
            let idle = s.clone().idle();
            assert!(idle.idle && !s.idle, "seed {seed}");
            assert_eq!(idle.clients_count, 0, "seed {seed}");
            assert!(idle.episodes.is_empty(), "seed {seed}: {:?}", idle.episodes);
            assert!(idle.membership.is_empty(), "seed {seed}");
            assert_eq!(idle.rate_limit, None, "seed {seed}");
            assert_eq!(idle.voter_crash_probability, 0.0, "seed {seed}");
            assert_eq!(idle.snapshot_crash_probability, 0.0, "seed {seed}");
            // The cluster itself is the seed's own.
            assert_eq!(
                (
                    idle.nodes_count,
                    idle.tick_ms,
                    idle.election_ticks,
                    idle.heartbeat_ticks
                ),
                (
                    s.nodes_count,
                    s.tick_ms,
                    s.election_ticks,
                    s.heartbeat_ticks
                ),
                "seed {seed}"
            );
            assert_eq!(idle.clock_skews, s.clock_skews, "seed {seed}");
            assert_eq!(idle.latency_ms, s.latency_ms, "seed {seed}");
            assert_eq!(idle.disk_latency_us, s.disk_latency_us, "seed {seed}");
            assert_eq!(idle.snapshot_entries, s.snapshot_entries, "seed {seed}");
        }
        // Each dropped part was there to drop in some seed.
        let all: Vec<Scenario> = seeds
            .map(|seed| Scenario::derive(seed, Plant::None))
            .collect();
        assert!(all.iter().all(|s| s.clients_count > 0));
        assert!(all.iter().all(|s| !s.episodes.is_empty()));
        assert!(all.iter().any(|s| !s.membership.is_empty()));
        assert!(all.iter().any(|s| s.rate_limit.is_some()));
        assert!(all.iter().any(|s| s.voter_crash_probability > 0.0));
        assert!(all.iter().any(|s| s.snapshot_crash_probability > 0.0));
        assert!(Scenario::derive(7, Plant::None)
            .idle()
            .to_string()
            .contains("idle: no workload"));
    }

    #[test]
    fn scenarios_stay_within_their_stated_bounds() {
        for seed in 0..500 {
            let s = Scenario::derive(seed, Plant::None);
            assert!(
                s.nodes_count == 3 || s.nodes_count == 5,
                "seed {seed}: {} nodes",
                s.nodes_count
            );
            assert!(
                s.heartbeat_ticks >= 1 && s.heartbeat_ticks < s.election_ticks,
                "seed {seed}"
            );
            let election_ms = u64::from(s.election_ticks) * s.tick_ms;
            assert!(
                election_ms >= ELECTION_MS_MIN
                    && election_ms >= ELECTION_LATENCIES_MIN * s.latency_ms.1,
                "seed {seed}"
            );
            assert_eq!(s.clock_skews.len(), s.nodes_count);
            assert_eq!(s.torn_write_probability.len(), s.nodes_count);
            assert!(
                s.overlapping_process_faults().is_empty(),
                "seed {seed}: overlapping process faults"
            );
            for episode in &s.episodes {
                assert!(
                    episode.end_ms() <= FAULTS_END_MS,
                    "seed {seed}: {episode:?}"
                );
                if let Fault::Cut { links, .. } = &episode.fault {
                    assert!(!links.is_empty(), "seed {seed}: a cut of no links");
                    for &(a, b) in links {
                        assert!(
                            a != b && a <= s.nodes_count && b <= s.nodes_count,
                            "seed {seed}: link {a}>{b}"
                        );
                    }
                }
            }
            assert!(s.request_timeout_ms + 1_000 <= CLIENT_TIMEOUT_MS_MAX);
        }
    }

    #[test]
    fn the_constants_called_production_defaults_are_the_node_defaults() {
        let config = raft_kv::node::NodeConfig::new("n1", "127.0.0.1:1");
        assert_eq!(
            config.tick_interval.as_millis(),
            u128::from(PRODUCTION_TICK_MS)
        );
        assert_eq!(config.election_ticks, PRODUCTION_ELECTION_TICKS);
        assert_eq!(config.heartbeat_ticks, PRODUCTION_HEARTBEAT_TICKS);
        assert_eq!(
            config.request_timeout.as_millis(),
            u128::from(PRODUCTION_REQUEST_TIMEOUT_MS)
        );
        assert_eq!(
            config.rpc_timeout.as_millis(),
            u128::from(PRODUCTION_RPC_TIMEOUT_MS)
        );
        assert_eq!(config.snapshot_entries, PRODUCTION_SNAPSHOT_ENTRIES);
        assert_eq!(config.wal_segment_bytes_max, PRODUCTION_WAL_SEGMENT_BYTES);
    }

    #[test]
    fn every_drawn_range_reaches_its_production_default_and_beyond() {
        let scenarios: Vec<Scenario> = (0..200)
            .map(|seed| Scenario::derive(seed, Plant::None))
            .collect();
        let any = |what: &str, test: &dyn Fn(&Scenario) -> bool| {
            assert!(scenarios.iter().any(test), "no seed among 200 draws {what}");
        };
        any("the production timing", &|s| {
            s.tick_ms == PRODUCTION_TICK_MS
                && s.election_ticks == PRODUCTION_ELECTION_TICKS
                && s.heartbeat_ticks == PRODUCTION_HEARTBEAT_TICKS
        });
        any("the production request timeout", &|s| {
            s.request_timeout_ms == PRODUCTION_REQUEST_TIMEOUT_MS
        });
        any("a request timeout above the production one", &|s| {
            s.request_timeout_ms > PRODUCTION_REQUEST_TIMEOUT_MS
        });
        any("a request timeout below 2 s", &|s| {
            s.request_timeout_ms < 2_000
        });
        any("the production RPC timeout", &|s| {
            s.rpc_timeout_ms == PRODUCTION_RPC_TIMEOUT_MS
        });
        any("the production snapshot interval", &|s| {
            s.snapshot_entries == PRODUCTION_SNAPSHOT_ENTRIES
        });
        any("a snapshot every few entries", &|s| s.snapshot_entries <= 5);
        any("the production WAL segment", &|s| {
            s.wal_segment_bytes_max == PRODUCTION_WAL_SEGMENT_BYTES
        });
        any("a schedule of stranded leaders only", &|s| {
            !s.episodes.is_empty() && s.episodes.iter().all(|e| e.fault == Fault::StrandLeader)
        });
        // Most seeds compact their log at least every few dozen entries.
        let compacting = scenarios
            .iter()
            .filter(|s| s.snapshot_entries <= 50)
            .count();
        assert!(
            compacting * 2 > scenarios.len(),
            "{compacting} of 200 seeds snapshot within 50 entries"
        );
    }

    #[test]
    fn no_episode_is_a_fault_that_does_nothing() {
        for seed in 0..300 {
            let s = Scenario::derive(seed, Plant::None);
            for episode in &s.episodes {
                if let Fault::Cut { shape, links } = &episode.fault {
                    assert!(!links.is_empty(), "seed {seed}: cut {shape} with no link");
                }
            }
        }
    }

    #[test]
    fn seeds_cover_every_fault_kind_and_both_cluster_sizes() {
        let mut seen = BTreeSet::new();
        let mut sizes = BTreeSet::new();
        for seed in 0..200 {
            let s = Scenario::derive(seed, Plant::None);
            sizes.insert(s.nodes_count);
            for episode in &s.episodes {
                seen.insert(match &episode.fault {
                    Fault::Cut { shape, .. } => *shape,
                    Fault::IsolateLeader => "isolate-leader",
                    Fault::StrandLeader => "strand-leader",
                    Fault::Crash { .. } => "crash",
                    Fault::Pause { .. } => "pause",
                    Fault::LossSpike { .. } => "loss",
                    Fault::DelaySpike { .. } => "delay",
                    Fault::ClockJump { .. } => "clock",
                    Fault::DiskFull { .. } => "disk-full",
                });
            }
        }
        assert_eq!(sizes.len(), 2);
        for kind in [
            "majority",
            "one-way",
            "bridge",
            "ring",
            "swizzle",
            "isolate-leader",
            "strand-leader",
            "crash",
            "pause",
            "loss",
            "delay",
            "clock",
            "disk-full",
        ] {
            assert!(
                seen.contains(kind),
                "no seed among 200 draws a {kind} fault: {seen:?}"
            );
        }
    }
}
