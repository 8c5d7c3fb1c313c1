//! The per-client request rate limit (`--rate-limit-rps N --rate-limit-burst M`): a token bucket
//! per client, `429 Too Many Requests` with `Retry-After` beyond it.
//!
//! A client is its token's holder when the node runs with `--auth-tokens` and the request carries
//! a valid token, otherwise its remote IP address. Each node limits the requests it receives; a
//! request a follower forwarded to the leader was counted at the follower, so the leader lets it
//! pass when it comes from that member's address (a client cannot skip the limit by sending the
//! forwarding header itself, since it does not connect from a member's address).
//!
//! The bucket is kept as GCRA (the generic cell rate algorithm, equivalent to a token bucket):
//! per client only the "theoretical arrival time" `tat` of its next request at the sustained
//! rate. A request at `now` passes when `tat - now <= (burst - 1) / rate` and moves `tat` on by
//! `1 / rate`; a client whose `tat` is in the past holds a full bucket, which is the same as
//! holding none, so such entries are dropped whenever the table is full. The table is bounded by
//! [`RateLimitOptions::clients_max`]: when it is full of active clients the least recently
//! refilled one is forgotten (it gets a full bucket back, the only error the bound allows). Time
//! comes from the environment seam ([`crate::env::now`]), so the simulator can drive it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::env::Instant;

/// Default for [`RateLimitOptions::clients_max`].
pub const RATE_LIMIT_CLIENTS_MAX_DEFAULT: usize = 100_000;

/// The limit's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitOptions {
    /// Sustained requests per second per client (at least 1).
    pub requests_per_second: u32,
    /// Requests a client may send at once after being idle (at least 1).
    pub burst: u32,
    /// Clients remembered at most (memory bound of the table).
    pub clients_max: usize,
}

/// The per-client buckets of one node.
#[derive(Debug)]
pub struct RateLimiter {
    options: RateLimitOptions,
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of `now` a client's `tat` may be: `(burst - 1) * interval`.
    tolerance: Duration,
    /// Client -> theoretical arrival time of its next request.
    /// Invariant: `len() <= options.clients_max`.
    tat: Mutex<BTreeMap<String, Instant>>,
}

impl RateLimiter {
    /// A limiter with `options` (rate and burst are raised to at least 1, the table to 1 client).
    pub fn new(options: RateLimitOptions) -> RateLimiter {
        let options = RateLimitOptions {
            requests_per_second: options.requests_per_second.max(1),
            burst: options.burst.max(1),
            clients_max: options.clients_max.max(1),
        };
        let interval = Duration::from_secs(1) / options.requests_per_second;
        RateLimiter {
            options,
            interval,
            tolerance: interval * (options.burst - 1),
            tat: Mutex::new(BTreeMap::new()),
        }
    }

    /// The options in force.
    pub fn options(&self) -> RateLimitOptions {
        self.options
    }

    /// Counts one request of `client` at `now`: `Ok` when it may proceed, else how long until it
    /// would.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut table = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = match table.get(client) {
            Some(&tat) => tat.max(now),
            None => {
                if table.len() >= self.options.clients_max {
                    evict(&mut table, now);
                }
                now
            }
        };
        let ahead = tat.duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        table.insert(client.to_string(), tat + self.interval);
        Ok(())
    }

    /// Clients in the table now.
    pub fn clients(&self) -> usize {
        self.tat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Makes room for one client: drops every full bucket, and if none was full the one refilled
/// least recently (the earliest `tat`).
fn evict(table: &mut BTreeMap<String, Instant>, now: Instant) {
    let before = table.len();
    table.retain(|_, tat| *tat > now);
    if table.len() < before {
        return;
    }
    let oldest = table
        .iter()
        .min_by_key(|(client, tat)| (**tat, (*client).clone()))
        .map(|(client, _)| client.clone());
    if let Some(client) = oldest {
        table.remove(&client);
    }
}

/// The whole seconds a `Retry-After` header states for `wait` (at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests_per_second: u32, burst: u32, clients_max: usize) -> RateLimiter {
        RateLimiter::new(RateLimitOptions {
            requests_per_second,
            burst,
            clients_max,
        })
    }

    fn at_ms(ms: u64) -> Instant {
        Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate_and_retry_after_says_when() {
        let limiter = limiter(2, 3, 10);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", at_ms(0)), Ok(()));
        }
        assert_eq!(
            limiter.check("a", at_ms(0)),
            Err(Duration::from_millis(500))
        );
        assert_eq!(
            limiter.check("a", at_ms(100)),
            Err(Duration::from_millis(400))
        );
        assert_eq!(limiter.check("a", at_ms(500)), Ok(()));
        assert!(limiter.check("a", at_ms(600)).is_err());
        assert_eq!(limiter.check("a", at_ms(1_000)), Ok(()));
        // Idle for long: the bucket is full again, never fuller than the burst.
        for _ in 0..3 {
            assert_eq!(limiter.check("a", at_ms(60_000)), Ok(()));
        }
        assert!(limiter.check("a", at_ms(60_000)).is_err());
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let limiter = limiter(1, 1, 10);
        assert_eq!(limiter.check("a", at_ms(0)), Ok(()));
        assert!(limiter.check("a", at_ms(0)).is_err());
        assert_eq!(limiter.check("b", at_ms(0)), Ok(()));
        assert!(limiter.check("b", at_ms(10)).is_err());
    }

    #[test]
    fn the_table_stays_bounded_dropping_idle_clients_first() {
        let limiter = limiter(1, 2, 3);
        for client in ["a", "b", "c"] {
            limiter.check(client, at_ms(0)).unwrap();
        }
        // "a" keeps sending: its bucket is not full at 1.5 s, while b and c are idle by then.
        limiter.check("a", at_ms(0)).unwrap();
        limiter.check("d", at_ms(1_500)).unwrap();
        assert_eq!(
            limiter.clients(),
            2,
            "b and c held full buckets and were dropped"
        );
        assert!(limiter.check("a", at_ms(1_500)).is_ok());
        assert!(
            limiter.check("a", at_ms(1_500)).is_err(),
            "a was not forgotten"
        );
        // All active: the least recently refilled is forgotten to make room.
        limiter.check("e", at_ms(1_500)).unwrap();
        limiter.check("f", at_ms(1_500)).unwrap();
        assert_eq!(limiter.clients(), 3);
        for n in 0..1_000 {
            let _ = limiter.check(&format!("many-{n}"), at_ms(1_600));
            assert!(limiter.clients() <= 3);
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn zero_settings_are_raised_to_one() {
        let limiter = limiter(0, 0, 0);
        assert_eq!(limiter.options().requests_per_second, 1);
        assert_eq!(limiter.check("a", at_ms(0)), Ok(()));
        assert!(limiter.check("a", at_ms(0)).is_err());
    }
}
