//! A small metrics registry that renders the Prometheus text exposition format 0.0.4.
//!
//! One [`Metrics`] per node, shared through an `Arc`. Registration takes a lock and returns a
//! handle ([`Counter`], [`Gauge`], [`Histogram`]); the handles are cheap clones over atomics, so
//! the hot path (`inc`, `set`, `observe`) never locks. Keep handles instead of registering on
//! every event.
//!
//! A series is named by its metric name plus its label set; the label set is an unordered set of
//! `(name, value)` pairs, so `[("a", x), ("b", y)]` and `[("b", y), ("a", x)]` are one series.
//! Registering a name again with another kind, help text or bucket layout is a programming error
//! and panics with both versions in the message.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Bucket upper bounds, in seconds, for request and disk latencies: 100 µs to 10 s in 1-2.5-5
/// steps (about x2.2 each).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A monotonically increasing count. Cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    value: Arc<AtomicU64>,
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `amount`.
    pub fn inc_by(&self, amount: u64) {
        self.value.fetch_add(amount, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    value: Arc<AtomicI64>,
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.value.store(value, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `delta` (which may be negative).
    pub fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A distribution of observations (seconds, by convention) over fixed buckets. Cloning shares
/// the series.
#[derive(Clone, Debug)]
pub struct Histogram {
    core: Arc<HistogramCore>,
}

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds, strictly increasing and finite; `+Inf` is implicit.
    bounds_seconds: &'static [f64],
    /// Non-cumulative counts: slot `i` counts observations in `(bounds[i-1], bounds[i]]`, the
    /// last slot (index `bounds.len()`) those above every bound (and NaN).
    slot_counts: Box<[AtomicU64]>,
    /// Sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

/// A consistent-enough reading of a histogram for rendering.
struct HistogramReading {
    /// Cumulative count per bound, then the `+Inf` count (= total).
    cumulative_counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds_seconds: &'static [f64]) -> Self {
        let slot_counts = (0..=bounds_seconds.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        Histogram {
            core: Arc::new(HistogramCore {
                bounds_seconds,
                slot_counts,
                sum_bits: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Records one observation. A value equal to a bound falls in that bound's bucket (`le`).
    pub fn observe(&self, value: f64) {
        let core = &self.core;
        // The first bound >= value; NaN compares false everywhere and lands in +Inf only.
        let slot = core
            .bounds_seconds
            .partition_point(|bound| *bound < value || value.is_nan());
        core.slot_counts[slot].fetch_add(1, Ordering::Relaxed);
        let mut current = core.sum_bits.load(Ordering::Relaxed);
        loop {
            let updated = (f64::from_bits(current) + value).to_bits();
            match core.sum_bits.compare_exchange_weak(
                current,
                updated,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.core
            .slot_counts
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.core.sum_bits.load(Ordering::Relaxed))
    }

    fn read(&self) -> HistogramReading {
        let mut running_count = 0u64;
        let cumulative_counts = self
            .core
            .slot_counts
            .iter()
            .map(|slot| {
                running_count += slot.load(Ordering::Relaxed);
                running_count
            })
            .collect();
        HistogramReading {
            cumulative_counts,
            sum: self.sum(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram { bounds_seconds: &'static [f64] },
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram { .. } => "histogram",
        }
    }
}

#[derive(Clone, Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// A label set, sorted by label name. Invariant: label names are unique and valid.
type LabelSet = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, Series>,
}

/// A registry of metric families (see the module docs).
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, registered on first use.
    ///
    /// # Panics
    /// On an invalid name or label, or if `name` is registered with another kind or help.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
    ) -> Counter {
        match self.series(name, help, Kind::Counter, labels) {
            Series::Counter(counter) => counter,
            other => panic!("metric {name}: expected a counter series, found {other:?}"),
        }
    }

    /// The gauge `name{labels}`, registered on first use.
    ///
    /// # Panics
    /// On an invalid name or label, or if `name` is registered with another kind or help.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
    ) -> Gauge {
        match self.series(name, help, Kind::Gauge, labels) {
            Series::Gauge(gauge) => gauge,
            other => panic!("metric {name}: expected a gauge series, found {other:?}"),
        }
    }

    /// The histogram `name{labels}` over `buckets` (upper bounds, strictly increasing, finite;
    /// `+Inf` is added), registered on first use.
    ///
    /// # Panics
    /// On an invalid name, label or bucket list, or if `name` is registered with another kind,
    /// help or bucket list.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
        buckets: &'static [f64],
    ) -> Histogram {
        for pair in buckets.windows(2) {
            assert!(
                pair[0] < pair[1],
                "metric {name}: buckets {buckets:?} not strictly increasing"
            );
        }
        assert!(
            buckets.iter().all(|bound| bound.is_finite()),
            "metric {name}: buckets {buckets:?} must be finite (+Inf is implicit)"
        );
        assert!(
            labels.iter().all(|(label, _)| *label != "le"),
            "metric {name}: label name \"le\" is reserved for histogram buckets"
        );
        match self.series(
            name,
            help,
            Kind::Histogram {
                bounds_seconds: buckets,
            },
            labels,
        ) {
            Series::Histogram(histogram) => histogram,
            other => panic!("metric {name}: expected a histogram series, found {other:?}"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic while locked happens only before any mutation (a failed registration check),
        // so the map is still consistent.
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, String)],
    ) -> Series {
        assert!(
            is_metric_name(name),
            "metric name {name:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        let mut label_set: LabelSet = labels.to_vec();
        label_set.sort_by(|left, right| left.0.cmp(right.0));
        for (label, _) in &label_set {
            assert!(
                is_label_name(label),
                "metric {name}: label name {label:?} is not [a-zA-Z_][a-zA-Z0-9_]* or starts with __"
            );
        }
        for pair in label_set.windows(2) {
            assert!(
                pair[0].0 != pair[1].0,
                "metric {name}: label {:?} given twice",
                pair[0].0
            );
        }

        let mut families = self.lock();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        assert!(
            family.kind == kind && family.help == help,
            "metric {name} registered as {:?} {:?}, now requested as {kind:?} {help:?}",
            family.kind,
            family.help
        );
        family
            .series
            .entry(label_set)
            .or_insert_with(|| match kind {
                Kind::Counter => Series::Counter(Counter::default()),
                Kind::Gauge => Series::Gauge(Gauge::default()),
                Kind::Histogram { bounds_seconds } => {
                    Series::Histogram(Histogram::new(bounds_seconds))
                }
            })
            .clone()
    }

    /// Every series in the Prometheus text format 0.0.4: per family (sorted by name) a `# HELP`
    /// and a `# TYPE` line, then its samples sorted by label set; a histogram gives cumulative
    /// `_bucket{le=..}` samples ending with `+Inf`, then `_sum` and `_count`.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.type_name());
            for (label_set, series) in &family.series {
                let labels = render_labels(label_set, None);
                match series {
                    Series::Counter(counter) => {
                        let _ = writeln!(out, "{name}{labels} {}", counter.get());
                    }
                    Series::Gauge(gauge) => {
                        let _ = writeln!(out, "{name}{labels} {}", gauge.get());
                    }
                    Series::Histogram(histogram) => {
                        render_histogram(&mut out, name, label_set, histogram);
                    }
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, label_set: &LabelSet, histogram: &Histogram) {
    let reading = histogram.read();
    let bounds = histogram
        .core
        .bounds_seconds
        .iter()
        .map(|bound| format_f64(*bound));
    let les = bounds.chain(std::iter::once("+Inf".to_string()));
    for (le, cumulative_count) in les.zip(&reading.cumulative_counts) {
        let labels = render_labels(label_set, Some(&le));
        let _ = writeln!(out, "{name}_bucket{labels} {cumulative_count}");
    }
    let labels = render_labels(label_set, None);
    let total_count = reading.cumulative_counts.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_sum{labels} {}", format_f64(reading.sum));
    let _ = writeln!(out, "{name}_count{labels} {total_count}");
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing for an empty set.
fn render_labels(label_set: &LabelSet, le: Option<&str>) -> String {
    if label_set.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let pairs = label_set
        .iter()
        .map(|(label, value)| (*label, value.as_str()));
    for (position, (label, value)) in pairs.chain(le.map(|le| ("le", le))).enumerate() {
        if position > 0 {
            out.push(',');
        }
        let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
    }
    out.push('}');
    out
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

/// Help text escapes backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Prometheus float syntax: `NaN`, `+Inf`, `-Inf`, else the shortest round-trip decimal.
fn format_f64(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters.all(|rest| rest.is_ascii_alphanumeric() || rest == '_' || rest == ':')
}

fn is_label_name(label: &str) -> bool {
    let mut characters = label.chars();
    !label.starts_with("__")
        && characters
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_BUCKETS_SECONDS: &[f64] = &[0.1, 0.5, 2.0];

    #[test]
    fn renders_a_small_registry_exactly() {
        let metrics = Metrics::new();
        metrics
            .counter(
                "http_requests_total",
                "HTTP requests served.",
                &[("route", "/kv".into())],
            )
            .inc_by(3);
        metrics
            .counter(
                "http_requests_total",
                "HTTP requests served.",
                &[("route", "/kv/\"a\\b\"\nc".into())],
            )
            .inc();
        metrics
            .gauge("raft_term", "Current term.\nSecond \\ line.", &[])
            .set(-7);
        let latency = metrics.histogram(
            "apply_seconds",
            "Apply latency.",
            &[("node", "1".into()), ("kind", "put".into())],
            TEST_BUCKETS_SECONDS,
        );
        // Exact binary fractions, so the sum prints exactly; 0.5 sits on a bound.
        for value in [0.0625, 0.5, 0.25, 1.5, 4.0] {
            latency.observe(value);
        }
        let expected = "\
# HELP apply_seconds Apply latency.
# TYPE apply_seconds histogram
apply_seconds_bucket{kind=\"put\",node=\"1\",le=\"0.1\"} 1
apply_seconds_bucket{kind=\"put\",node=\"1\",le=\"0.5\"} 3
apply_seconds_bucket{kind=\"put\",node=\"1\",le=\"2\"} 4
apply_seconds_bucket{kind=\"put\",node=\"1\",le=\"+Inf\"} 5
apply_seconds_sum{kind=\"put\",node=\"1\"} 6.3125
apply_seconds_count{kind=\"put\",node=\"1\"} 5
# HELP http_requests_total HTTP requests served.
# TYPE http_requests_total counter
http_requests_total{route=\"/kv\"} 3
http_requests_total{route=\"/kv/\\\"a\\\\b\\\"\\nc\"} 1
# HELP raft_term Current term.\\nSecond \\\\ line.
# TYPE raft_term gauge
raft_term -7
";
        assert_eq!(metrics.render(), expected);
    }

    #[test]
    fn empty_histogram_renders_zero_buckets() {
        let metrics = Metrics::new();
        metrics.histogram("wait_seconds", "Wait.", &[], &[1.0]);
        assert_eq!(
            metrics.render(),
            "# HELP wait_seconds Wait.\n# TYPE wait_seconds histogram\n\
             wait_seconds_bucket{le=\"1\"} 0\nwait_seconds_bucket{le=\"+Inf\"} 0\n\
             wait_seconds_sum 0\nwait_seconds_count 0\n"
        );
    }

    #[test]
    fn same_name_and_labels_return_the_same_series() {
        let metrics = Metrics::new();
        let labels = [("a", "1".to_string()), ("b", "2".to_string())];
        let first = metrics.counter("events_total", "Events.", &labels);
        let reordered = [("b", "2".to_string()), ("a", "1".to_string())];
        let second = metrics.counter("events_total", "Events.", &reordered);
        first.inc();
        second.inc_by(2);
        assert_eq!(first.get(), 3);
        let other = metrics.counter("events_total", "Events.", &[("a", "2".to_string())]);
        assert_eq!(other.get(), 0);
        let gauge = metrics.gauge("level", "Level.", &[]);
        gauge.set(5);
        assert_eq!(metrics.gauge("level", "Level.", &[]).get(), 5);
        let histogram = metrics.histogram("h_seconds", "H.", &[], TEST_BUCKETS_SECONDS);
        histogram.observe(1.0);
        assert_eq!(
            metrics
                .histogram("h_seconds", "H.", &[], TEST_BUCKETS_SECONDS)
                .count(),
            1
        );
    }

    #[test]
    fn gauge_moves_both_ways() {
        let gauge = Metrics::new().gauge("in_flight", "In flight.", &[]);
        gauge.inc();
        gauge.inc();
        gauge.dec();
        gauge.add(-5);
        assert_eq!(gauge.get(), -4);
        gauge.set(10);
        assert_eq!(gauge.get(), 10);
    }

    #[test]
    fn histogram_puts_values_on_a_bound_into_that_bucket() {
        let histogram = Histogram::new(TEST_BUCKETS_SECONDS);
        for value in [0.1, 0.5, 0.50001, 2.0, f64::NAN] {
            histogram.observe(value);
        }
        assert_eq!(histogram.read().cumulative_counts, [1, 2, 4, 5]);
    }

    #[test]
    #[should_panic(expected = "metric jobs registered as Counter")]
    fn registering_a_name_with_another_kind_panics() {
        let metrics = Metrics::new();
        metrics.counter("jobs", "Jobs.", &[]);
        metrics.gauge("jobs", "Jobs.", &[]);
    }

    #[test]
    #[should_panic(expected = "now requested as Histogram")]
    fn registering_a_histogram_with_other_buckets_panics() {
        let metrics = Metrics::new();
        metrics.histogram("latency_seconds", "Latency.", &[], &[1.0, 2.0]);
        metrics.histogram("latency_seconds", "Latency.", &[], &[1.0, 3.0]);
    }

    #[test]
    #[should_panic(expected = "not strictly increasing")]
    fn unsorted_buckets_panic() {
        Metrics::new().histogram("latency_seconds", "Latency.", &[], &[2.0, 1.0]);
    }

    #[test]
    #[should_panic(expected = "label \"a\" given twice")]
    fn duplicate_label_names_panic() {
        Metrics::new().counter("x_total", "X.", &[("a", "1".into()), ("a", "2".into())]);
    }

    #[test]
    fn names_are_validated() {
        assert!(is_metric_name("raft_kv:apply_total"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("a-b"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("_node"));
        assert!(!is_label_name("__reserved"));
        assert!(!is_label_name("a:b"));
    }

    #[test]
    fn a_failed_registration_leaves_the_registry_usable() {
        let metrics = Arc::new(Metrics::new());
        metrics.counter("jobs_total", "Jobs.", &[]).inc();
        let clone = Arc::clone(&metrics);
        let failed = std::panic::catch_unwind(move || clone.gauge("jobs_total", "Jobs.", &[]));
        assert!(failed.is_err());
        assert_eq!(metrics.counter("jobs_total", "Jobs.", &[]).get(), 1);
    }

    #[test]
    fn latency_buckets_span_100_microseconds_to_10_seconds() {
        assert_eq!(LATENCY_BUCKETS_SECONDS.first(), Some(&0.0001));
        assert_eq!(LATENCY_BUCKETS_SECONDS.last(), Some(&10.0));
        for pair in LATENCY_BUCKETS_SECONDS.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!(
                (2.0..=2.5 + 1e-9).contains(&ratio),
                "step {pair:?} ratio {ratio}"
            );
        }
        // Registering validates them.
        Metrics::new().histogram("l_seconds", "L.", &[], LATENCY_BUCKETS_SECONDS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_updates_from_tasks_sum_correctly() {
        const TASKS: u64 = 8;
        const UPDATES_PER_TASK: u64 = 10_000;
        let metrics = Arc::new(Metrics::new());
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let metrics = Arc::clone(&metrics);
            tasks.push(crate::env::spawn(async move {
                // Half the tasks register their own handle, half look it up on every update.
                let counter = metrics.counter("ops_total", "Ops.", &[]);
                let gauge = metrics.gauge("balance", "Balance.", &[]);
                for update in 0..UPDATES_PER_TASK {
                    if task % 2 == 0 {
                        counter.inc();
                    } else {
                        metrics.counter("ops_total", "Ops.", &[]).inc();
                    }
                    gauge.inc();
                    gauge.dec();
                    metrics
                        .histogram("op_seconds", "Op.", &[], TEST_BUCKETS_SECONDS)
                        .observe(if update % 2 == 0 { 0.25 } else { 1.0 });
                    if update % 1000 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("metrics task panicked");
        }
        let total = TASKS * UPDATES_PER_TASK;
        assert_eq!(metrics.counter("ops_total", "Ops.", &[]).get(), total);
        assert_eq!(metrics.gauge("balance", "Balance.", &[]).get(), 0);
        let histogram = metrics.histogram("op_seconds", "Op.", &[], TEST_BUCKETS_SECONDS);
        assert_eq!(histogram.count(), total);
        assert_eq!(
            histogram.read().cumulative_counts,
            [0, total / 2, total, total]
        );
        // 0.25 and 1.0 are exact in binary, so the sum is exact whatever the order.
        assert_eq!(histogram.sum(), (total / 2) as f64 * 1.25);
    }
}
