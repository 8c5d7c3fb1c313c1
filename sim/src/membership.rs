//! The membership operator (issue 10): a task on the clients' machine that changes the member
//! set through the real HTTP API while the faults run, as an operator of etcd or Consul would:
//! fresh nodes join (`--join`: added as learners, promoted once caught up), voters are removed
//! (the leader too), a crashed node is replaced, a node whose disk was wiped must refuse to
//! start under its old identity and is then removed and joins again as a new incarnation.
//!
//! The operator keeps at most one change of its own in flight, but it does not trust itself:
//! the checks are the system's. What it cannot do itself (start, kill, wipe a machine) it asks
//! of the supervisor ([`Command`]). The checks of membership (at most one change uncommitted in
//! any leader's log; after the heal, the final voters lead, every member converges, removed
//! nodes have stopped) live in `run.rs` beside the other Raft checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use raft_kv::env;
use raft_kv::http::client::HttpClient;
use raft_kv::node::members::MembersView;
use raft_kv::raft::Index;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::recorder::Shared;
use crate::scenario::{MemberOp, MemberStep, FAULTS_END_MS};
use crate::stranger::OPERATOR_TOKEN;
use crate::workload::virtual_nanos;

/// Largest answer the operator reads.
const ANSWER_BYTES_MAX: usize = 1 << 20;
/// Pause between two attempts of one request.
const RETRY_MS: u64 = 300;
/// How long the operator waits for a joining node to become a voter.
const JOIN_WAIT_MS_MAX: u64 = 20_000;
/// How long a node whose disk was wiped is watched after its restart with the same flags: it
/// must not start serving under its old identity.
const WIPED_WATCH_MS: u64 = 2_000;

/// What the operator asks of the supervisor (which owns the machines).
#[derive(Debug)]
pub enum Command {
    /// Start a fresh node that joins through the address of a running member; answers its name
    /// (`None`: no spare machine left).
    Join {
        /// The answer.
        reply: oneshot::Sender<Option<String>>,
    },
    /// Kill the node for good (the operator owns it from now on: no fault restarts it).
    Kill {
        /// The node's name.
        name: String,
    },
    /// Kill the node, wipe its disk and restart it with the same flags.
    WipeAndRestart {
        /// The node's name.
        name: String,
    },
    /// Kill the node and restart it with `--join` (a new incarnation of the same name).
    Rejoin {
        /// The node's name.
        name: String,
    },
    /// The operator removed the node from the cluster: after the heal it must have stopped.
    Removed {
        /// The node's name.
        name: String,
    },
    /// Clog the links between the named nodes (both ways), under `key`.
    Cut {
        /// Names the cut (to end it).
        key: usize,
        /// Pairs of node names.
        pairs: Vec<(String, String)>,
    },
    /// End the cut `key`.
    Uncut {
        /// The cut.
        key: usize,
    },
    /// The node that leads in the highest term, and the term.
    Leader {
        /// The answer.
        reply: oneshot::Sender<Option<(String, u64)>>,
    },
    /// Whether the node runs (its node started and has not stopped).
    Running {
        /// The node's name.
        name: String,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
}

/// Everything the operator task needs.
pub struct Operator {
    /// The plan.
    pub steps: Vec<MemberStep>,
    /// Every address a node ever had (the operator asks any; followers forward).
    pub addrs: Vec<String>,
    /// Requests to the supervisor.
    pub commands: mpsc::UnboundedSender<Command>,
    /// The recorder (coverage, trace, failures).
    pub shared: Shared,
    /// Seeded choices.
    pub rng: ChaCha8Rng,
    /// Set when the fault phase ends.
    pub stop: Arc<AtomicBool>,
    /// Per-call timeout.
    pub call_timeout: Duration,
    /// How many of `addrs` have a node (the first ones; joiners take the next).
    pub started: usize,
}

/// A random item of `items`.
fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        return None;
    }
    Some(&items[(rng.next_u64() % items.len() as u64) as usize])
}

/// The voters of `view`.
fn voters_of(view: &MembersView) -> Vec<String> {
    view.members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.name.clone())
        .collect()
}

/// The address of node `name` (`n1` is the first of `addrs`).
fn addr_of(addrs: &[String], name: &str) -> Option<String> {
    let number: usize = name.strip_prefix('n')?.parse().ok()?;
    addrs.get(number.checked_sub(1)?).cloned()
}

fn virtual_ms() -> u64 {
    virtual_nanos() / 1_000_000
}

/// How a change request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// 2xx: committed.
    Done,
    /// 404: no such member (already removed).
    Gone,
    /// The operator gave up (the fault phase ends, or the answers kept failing).
    GaveUp,
}

impl Operator {
    fn trace(&self, what: String) {
        self.shared
            .trace(format!("{:>6} ms  membership: {what}", virtual_ms()));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || virtual_ms() + 2_000 > FAULTS_END_MS
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        pick(&mut self.rng, items)
    }

    /// A random address of a started node.
    fn pick_addr(&mut self) -> Option<String> {
        pick(&mut self.rng, &self.addrs[..self.started]).cloned()
    }

    /// Runs the plan, one step after the other.
    pub async fn run(mut self) {
        let http = HttpClient::new();
        let steps = std::mem::take(&mut self.steps);
        for step in steps {
            let now = virtual_ms();
            if step.at_ms > now {
                env::sleep(Duration::from_millis(step.at_ms - now)).await;
            }
            if self.stopping() {
                return;
            }
            let Some(view) = self.list(&http).await else {
                self.trace("no member list; step skipped".to_string());
                continue;
            };
            let voters = voters_of(&view);
            let op = match step.op {
                MemberOp::Grow if voters.len() >= 5 => MemberOp::Remove { leader: false },
                MemberOp::Remove { .. } if voters.len() <= 3 => MemberOp::Grow,
                // Losing one of two voters loses the quorum for good: nothing could remove it
                // any more, as in any Raft cluster (seed 7189: a learner not yet promoted left
                // two voters). An operator grows first.
                MemberOp::ReplaceCrashed | MemberOp::ReplaceWiped if voters.len() < 3 => {
                    MemberOp::Grow
                }
                op => op,
            };
            let followers: Vec<String> = voters
                .iter()
                .filter(|name| Some(*name) != view.leader.as_ref())
                .cloned()
                .collect();
            self.trace(format!(
                "{op:?} (voters {voters:?}, leader {:?})",
                view.leader
            ));
            match op {
                MemberOp::Grow => {
                    self.grow(&http).await;
                }
                MemberOp::Remove { leader } => {
                    let target = if leader {
                        view.leader.clone()
                    } else {
                        self.pick(&followers).cloned()
                    };
                    if let Some(target) = target {
                        if self.remove(&http, &target, Some(view.config_index)).await
                            == Outcome::Done
                        {
                            let kind = if view.leader.as_ref() == Some(&target) {
                                "leader removed"
                            } else {
                                "voter removed"
                            };
                            self.shared.lock().coverage.fault(kind);
                        }
                    }
                }
                MemberOp::ReplaceCrashed => {
                    let Some(target) = self.pick(&followers).cloned() else {
                        continue;
                    };
                    let _ = self.commands.send(Command::Kill {
                        name: target.clone(),
                    });
                    if self.remove(&http, &target, None).await == Outcome::GaveUp {
                        continue;
                    }
                    if self.grow(&http).await {
                        self.shared.lock().coverage.fault("crashed node replaced");
                    }
                }
                MemberOp::ReplaceWiped => {
                    let Some(target) = self.pick(&followers).cloned() else {
                        continue;
                    };
                    self.replace_wiped(&http, &target).await;
                }
                MemberOp::ChangesAcrossTerms => self.changes_across_terms(&http, view).await,
            }
        }
    }

    /// A voter's disk is lost: it restarts with the same flags and must not come up; once it
    /// is removed it joins again as a new incarnation.
    async fn replace_wiped(&mut self, http: &HttpClient, target: &str) {
        let _ = self.commands.send(Command::WipeAndRestart {
            name: target.to_string(),
        });
        env::sleep(Duration::from_millis(WIPED_WATCH_MS)).await;
        if self.running(target).await {
            self.shared.fail(
                "membership: a wiped node started under its old identity",
                format!(
                    "{target} lost its disk and restarted with the same flags; it runs \
                     {WIPED_WATCH_MS} ms later instead of refusing to start"
                ),
                Vec::new(),
            );
            return;
        }
        self.shared.lock().coverage.fault("wiped node refused");
        if self.remove(http, target, None).await == Outcome::GaveUp {
            return;
        }
        let _ = self.commands.send(Command::Rejoin {
            name: target.to_string(),
        });
        if self.wait_voter(http, target).await {
            self.shared.lock().coverage.fault("wiped node replaced");
        }
    }

    /// The 2015 shape (see [`MemberOp::ChangesAcrossTerms`]), on four voters A (the leader),
    /// B, C, D: A is cut from B, C, D and asked to remove D; once B, C, D elect a leader L2,
    /// one of them, Z (not D, not L2), is cut from the other two and L2 is asked to remove A;
    /// then A and Z are joined. A, holding {A, B, C}, can win Z's vote; L2, holding {B, C, D}
    /// with its change, commits with the third. The current-term check keeps L2 from taking
    /// its change before its first commit, which the cut keeps from happening.
    async fn changes_across_terms(&mut self, http: &HttpClient, mut view: MembersView) {
        // Four voters first.
        for _ in 0..2 {
            let voters = voters_of(&view);
            if voters.len() == 4 {
                break;
            }
            if voters.len() < 4 {
                self.grow(http).await;
            } else {
                let follower = voters.into_iter().find(|v| Some(v) != view.leader.as_ref());
                if let Some(follower) = follower {
                    self.remove(http, &follower, None).await;
                }
            }
            match self.list(http).await {
                Some(next) => view = next,
                None => return,
            }
        }
        let voters = voters_of(&view);
        let Some(old_leader) = view.leader.clone() else {
            return;
        };
        if voters.len() != 4 || !voters.contains(&old_leader) || self.stopping() {
            return;
        }
        let Some((_, old_term)) = self.leader().await else {
            return;
        };
        let others: Vec<String> = voters.into_iter().filter(|v| *v != old_leader).collect();
        let doomed = self.pick(&others).cloned().expect("three others");
        self.trace(format!(
            "changes across terms: cut {old_leader} (term {old_term}), ask it to remove {doomed}"
        ));
        let pairs = others
            .iter()
            .map(|o| (old_leader.clone(), o.clone()))
            .collect();
        let _ = self.commands.send(Command::Cut { key: 0, pairs });
        self.spawn_remove(&old_leader, &doomed);
        // The others elect a new leader.
        let deadline_ms = virtual_ms() + 10_000;
        let new_leader = loop {
            if virtual_ms() > deadline_ms || self.stopping() {
                let _ = self.commands.send(Command::Uncut { key: 0 });
                return;
            }
            match self.leader().await {
                Some((leader, term)) if term > old_term && others.contains(&leader) => {
                    break leader
                }
                _ => env::sleep(Duration::from_millis(1)).await,
            }
        };
        let candidates: Vec<String> = others
            .iter()
            .filter(|o| **o != new_leader && **o != doomed)
            .cloned()
            .collect();
        let lone = self.pick(&candidates).cloned().expect("at least one");
        let third: Vec<String> = others.iter().filter(|o| **o != lone).cloned().collect();
        self.trace(format!(
            "changes across terms: {new_leader} leads; cut {lone}, ask {new_leader} to remove \
             {old_leader}"
        ));
        let pairs = third.iter().map(|t| (lone.clone(), t.clone())).collect();
        let _ = self.commands.send(Command::Cut { key: 1, pairs });
        self.spawn_remove(&new_leader, &old_leader);
        env::sleep(Duration::from_millis(300)).await;
        // The old leader meets the lone voter (and nobody else).
        let pairs = third
            .iter()
            .map(|t| (old_leader.clone(), t.clone()))
            .collect();
        let _ = self.commands.send(Command::Cut { key: 0, pairs });
        env::sleep(Duration::from_millis(3_000)).await;
        let _ = self.commands.send(Command::Uncut { key: 0 });
        let _ = self.commands.send(Command::Uncut { key: 1 });
        self.trace("changes across terms: every cut healed".to_string());
    }

    /// Asks `at` (directly, no forwarding hop) to remove `name`, in the background: the answer
    /// comes when the change commits, if ever. A removal that commits is reported.
    fn spawn_remove(&self, at: &str, name: &str) {
        let Some(addr) = addr_of(&self.addrs, at) else {
            return;
        };
        let path = format!("/v1/cluster/members/{name}");
        let request = hyper::Request::delete(path.as_str())
            .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let (commands, shared, timeout) = (
            self.commands.clone(),
            self.shared.clone(),
            self.call_timeout,
        );
        let name = name.to_string();
        let at = at.to_string();
        drop(env::spawn(async move {
            let http = HttpClient::new();
            let answer = http.call(&addr, request, ANSWER_BYTES_MAX, timeout).await;
            let status = answer.as_ref().map(|r| r.status().as_u16()).ok();
            shared.trace(format!(
                "{:>6} ms  membership: {at} asked to remove {name}: {status:?}",
                virtual_ms()
            ));
            if status.is_some_and(|s| (200..300).contains(&s)) {
                let _ = commands.send(Command::Removed { name });
            }
        }));
    }

    async fn leader(&self) -> Option<(String, u64)> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Leader { reply });
        answer.await.ok().flatten()
    }

    async fn running(&self, name: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Running {
            name: name.to_string(),
            reply,
        });
        answer.await.unwrap_or(false)
    }

    /// A fresh node joins; returns whether it became a voter in time.
    async fn grow(&mut self, http: &HttpClient) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Join { reply });
        let Ok(Some(name)) = answer.await else {
            self.trace("no spare machine left".to_string());
            return false;
        };
        self.started = (self.started + 1).min(self.addrs.len());
        self.wait_voter(http, &name).await
    }

    /// Waits until `name` is listed as a learner and then as a voter (the joining node asks for
    /// both itself); counts what it saw.
    async fn wait_voter(&mut self, http: &HttpClient, name: &str) -> bool {
        let deadline_ms = virtual_ms() + JOIN_WAIT_MS_MAX;
        let mut learner_seen = false;
        while virtual_ms() < deadline_ms && !self.stopping() {
            if let Some(view) = self.list(http).await {
                match view.members.iter().find(|m| m.name == name) {
                    Some(member) if member.role == "voter" => {
                        let mut rec = self.shared.lock();
                        if !learner_seen {
                            rec.coverage.fault("learner added");
                        }
                        rec.coverage.fault("learner promoted");
                        drop(rec);
                        self.trace(format!("{name} is a voter"));
                        return true;
                    }
                    Some(_) if !learner_seen => {
                        learner_seen = true;
                        self.shared.lock().coverage.fault("learner added");
                        self.trace(format!("{name} is a learner"));
                    }
                    _ => {}
                }
            }
            env::sleep(Duration::from_millis(500)).await;
        }
        self.trace(format!("{name} did not become a voter in time"));
        false
    }

    /// Removes `name`, first (in some seeds) with a `?cas=` that another change may have made
    /// stale; retries while the cluster is busy. Outcomes left unknown are settled by listing.
    async fn remove(&mut self, http: &HttpClient, name: &str, cas: Option<Index>) -> Outcome {
        // One removal in three sends a precondition one behind the current configuration: the
        // cluster must refuse it with 412 and change nothing.
        let mut cas = match cas {
            Some(index) if self.rng.next_u64() % 3 == 0 => Some(index.saturating_sub(1)),
            other => other,
        };
        while !self.stopping() {
            let path = match cas {
                Some(index) => format!("/v1/cluster/members/{name}?cas={index}"),
                None => format!("/v1/cluster/members/{name}"),
            };
            let (status, answer) = self.call(http, hyper::Method::DELETE, &path).await;
            self.trace(format!("DELETE {path}: {status:?} {answer}"));
            match status {
                Some(200..=299) => {
                    self.trace(format!("{name} removed"));
                    let _ = self.commands.send(Command::Removed {
                        name: name.to_string(),
                    });
                    return Outcome::Done;
                }
                Some(404) => {
                    let _ = self.commands.send(Command::Removed {
                        name: name.to_string(),
                    });
                    return Outcome::Gone;
                }
                Some(409) => self.shared.lock().coverage.fault("change refused 409"),
                Some(412) => {
                    self.shared.lock().coverage.fault("change refused 412");
                    cas = None;
                }
                // 503, 504, no answer: retry (a removal taken twice is answered 404).
                _ => {}
            }
            env::sleep(Duration::from_millis(RETRY_MS)).await;
        }
        Outcome::GaveUp
    }

    /// `GET /v1/cluster/members` from any node, a few attempts.
    async fn list(&mut self, http: &HttpClient) -> Option<MembersView> {
        for _ in 0..10 {
            let addr = self.pick_addr()?;
            let request = hyper::Request::get("/v1/cluster/members")
                .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            if let Ok(response) = http
                .call(&addr, request, ANSWER_BYTES_MAX, self.call_timeout)
                .await
            {
                if response.status().is_success() {
                    if let Ok(view) = serde_json::from_slice::<MembersView>(response.body()) {
                        // A node without a leader answers from its own view: wait for one.
                        if view.leader.is_some() {
                            return Some(view);
                        }
                    }
                }
            }
            env::sleep(Duration::from_millis(RETRY_MS)).await;
        }
        None
    }

    /// One call to a random node; the answer's status (`None`: no answer) and body or error.
    async fn call(
        &mut self,
        http: &HttpClient,
        method: hyper::Method,
        path: &str,
    ) -> (Option<u16>, String) {
        let Some(addr) = self.pick_addr() else {
            return (None, "no address".to_string());
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        match http
            .call(&addr, request, ANSWER_BYTES_MAX, self.call_timeout)
            .await
        {
            Ok(response) => (
                Some(response.status().as_u16()),
                String::from_utf8_lossy(response.body()).into_owned(),
            ),
            Err(error) => (None, error.to_string()),
        }
    }
}
