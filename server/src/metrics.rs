//! Metrics: what the server counts on its connection paths, and an optional Prometheus
//! endpoint (`[metrics] listen = "127.0.0.1:9464"`) that serves them at `/metrics` in
//! the OpenMetrics text format (`application/openmetrics-text; version=1.0.0`, ending
//! with `# EOF`).
//!
//! The counting is atomics only: each service has a `ServiceMetrics` (found once per
//! connection, when it authenticates) holding its open-connection gauge, its call count,
//! a latency histogram of fixed buckets and its frame bytes in and out; the middle man adds
//! to them with relaxed `fetch_add`s, with no lock and no allocation per message. A scrape
//! reads them all, with the close reasons from [`Stats`](crate::stats::Stats), through a
//! [`prometheus_client`] collector (`ConstCounter`s, `ConstGauge`s and a histogram
//! encoded from the bucket atomics), and `prometheus_client` writes the exposition,
//! escaping label values (a service named with `"`, `\` or a newline stays one sample).
//! Counter families are named without `_total` (OpenMetrics), their samples with it.
//!
//! The HTTP endpoint that serves them is [`endpoint`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::stats::StatsSnapshot;

pub mod endpoint;
pub(crate) use endpoint::{serve, ReadyCheck};
pub use endpoint::{MAX_REQUEST, MAX_SCRAPERS, REQUEST_TIMEOUT};

/// The upper bounds of the call latency buckets, in seconds (`le`), from 50 µs to 1 s; a
/// last bucket, `+Inf`, takes the rest.
const BUCKET_SECONDS: [f64; 14] = [
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
];
/// [`BUCKET_SECONDS`] in nanoseconds.
const BUCKET_NANOS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// The counters of one service, shared by all its connections (and kept across config
/// reloads, under the service's name).
#[derive(Debug, Default)]
pub(crate) struct ServiceMetrics {
    /// Authenticated connections open now.
    connections: AtomicUsize,
    /// Calls received (`{call, Ref, X}` frames, including those answered `busy`).
    calls: AtomicU64,
    /// Answered calls by latency bucket (not cumulative; the last is `+Inf`).
    buckets: [AtomicU64; BUCKET_NANOS.len() + 1],
    /// The sum of the answered calls' latencies, in nanoseconds.
    duration_nanos: AtomicU64,
    /// Frame bytes read from clients (length prefixes included).
    bytes_in: AtomicU64,
    /// Frame bytes written to clients.
    bytes_out: AtomicU64,
}

impl ServiceMetrics {
    /// `n` calls arrived.
    #[inline]
    pub(crate) fn calls_received(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::Relaxed);
    }

    /// One call was answered (its reply or error encoded) `elapsed` after it arrived.
    #[inline]
    pub(crate) fn call_answered(&self, elapsed: Duration) {
        self.calls_answered(1, elapsed);
    }

    /// `n` calls were answered, each `elapsed` after it arrived (those a middle man
    /// answered in one pass over what it read: counted once, at the end of the pass).
    #[inline]
    pub(crate) fn calls_answered(&self, n: u64, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].fetch_add(n, Ordering::Relaxed);
        self.duration_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// `bytes` of frames were read.
    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `bytes` of frames were written.
    #[inline]
    pub(crate) fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one open connection until the guard is dropped.
    pub(crate) fn connected(self: &Arc<Self>) -> ConnectionGauge {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge(Arc::clone(self))
    }
}

/// Decrements a service's connection gauge when its connection ends.
#[derive(Debug)]
pub(crate) struct ConnectionGauge(Arc<ServiceMetrics>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a handshake that reached the password check ended, for `lib_chan_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthResult {
    /// Authenticated.
    Ok,
    /// Answered `{error, auth_failed}`.
    Failed,
    /// Answered `{error, busy}`.
    Busy,
}

/// Every counter of one server, across config reloads.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per-service counters by service name; a service removed by a reload keeps its
    /// (final) counters, as Prometheus counters must not go back.
    services: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    auth_ok: AtomicU64,
    auth_failed: AtomicU64,
    auth_busy: AtomicU64,
    /// `lib_chan_logins_total`: by result (ok, failed, busy), then by credential kind
    /// (in the order of [`LOGIN_KINDS`]).
    logins: [[AtomicU64; 4]; 3],
    /// The services whose own counters ([`Service::counters`]) are rendered, by name.
    ///
    /// [`Service::counters`]: crate::Service::counters
    sources: Mutex<BTreeMap<String, std::sync::Weak<dyn crate::Service>>>,
}

/// The credential kinds of `lib_chan_logins_total`.
const LOGIN_KINDS: [&str; 4] = ["service_password", "password", "ed25519", "certificate"];
const LOGIN_RESULTS: [&str; 3] = ["ok", "failed", "busy"];

impl Metrics {
    /// The counters of `service`, made on first use (once per connection, not per message).
    pub(crate) fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = services.get(service) {
            return Arc::clone(m);
        }
        let m = Arc::new(ServiceMetrics::default());
        services.insert(service.to_owned(), Arc::clone(&m));
        m
    }

    /// Renders `service`'s own counters under `name` from now on.
    pub(crate) fn watch_service(&self, name: &str, service: &Arc<dyn crate::Service>) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::downgrade(service));
    }

    /// Counts one login decided, by result and credential kind (`service_password`,
    /// `password`, `ed25519`, `certificate`).
    pub(crate) fn login(&self, result: AuthResult, kind: &str) {
        let r = match result {
            AuthResult::Ok => 0,
            AuthResult::Failed => 1,
            AuthResult::Busy => 2,
        };
        if let Some(k) = LOGIN_KINDS.iter().position(|n| *n == kind) {
            self.logins[r][k].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one handshake result.
    pub(crate) fn auth(&self, result: AuthResult) {
        let counter = match result {
            AuthResult::Ok => &self.auth_ok,
            AuthResult::Failed => &self.auth_failed,
            AuthResult::Busy => &self.auth_busy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition of these counters and of `stats`, `# EOF`
    /// included.
    pub fn render(&self, stats: &StatsSnapshot) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let services = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, m)| (name.clone(), Arc::clone(m)))
            .collect();
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(n, w)| w.upgrade().map(|s| (n.clone(), s)))
            .collect();
        let scrape = Scrape {
            services,
            sources,
            auth: [
                load(&self.auth_ok),
                load(&self.auth_failed),
                load(&self.auth_busy),
            ],
            logins: std::array::from_fn(|r| std::array::from_fn(|k| load(&self.logins[r][k]))),
            stats: stats.clone(),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, and the collector returns only the writer's
        // errors.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One scrape's view: the services' own atomics (read while encoding), the server-wide
/// counters and connection stats read at the scrape.
struct Scrape {
    services: Vec<(String, Arc<ServiceMetrics>)>,
    sources: Vec<(String, Arc<dyn crate::Service>)>,
    /// ok, failed, busy.
    auth: [u64; 3],
    /// By result, then credential kind, as [`Metrics::logins`].
    logins: [[u64; 4]; 3],
    stats: StatsSnapshot,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape")
            .field("services", &self.services.len())
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        let stats = &self.stats;

        let mut family = encoder.encode_descriptor(
            "lib_chan_connections",
            "Open authenticated connections, by service.",
            None,
            gauge,
        )?;
        for (name, m) in &self.services {
            let open = m.connections.load(Ordering::Relaxed) as u64;
            ConstGauge::new(open).encode(family.encode_family(&[("service", name)])?)?;
        }
        ConstGauge::new(stats.open.saturating_sub(stats.authenticated) as u64).encode(
            encoder.encode_descriptor(
                "lib_chan_connections_unauthenticated",
                "Open connections not authenticated yet (TLS or start_service under way).",
                None,
                gauge,
            )?,
        )?;
        ConstCounter::new(stats.accepted).encode(encoder.encode_descriptor(
            "lib_chan_connections_accepted",
            "TCP connections accepted.",
            None,
            counter,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "lib_chan_auth",
            "start_service password checks, by result.",
            None,
            counter,
        )?;
        for (result, n) in LOGIN_RESULTS.iter().zip(self.auth) {
            ConstCounter::new(n).encode(family.encode_family(&[("result", *result)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lib_chan_logins",
            "Logins decided, by result and credential kind.",
            None,
            counter,
        )?;
        for (result, row) in LOGIN_RESULTS.iter().zip(&self.logins) {
            for (kind, n) in LOGIN_KINDS.iter().zip(row) {
                let labels = [("result", *result), ("credential", *kind)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "lib_chan_closes",
            "Connections ended, by reason.",
            None,
            counter,
        )?;
        for (reason, n) in &stats.closes {
            ConstCounter::new(*n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lib_chan_calls",
            "Calls received, by service.",
            None,
            counter,
        )?;
        for (name, m) in &self.services {
            ConstCounter::new(load(&m.calls))
                .encode(family.encode_family(&[("service", name)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lib_chan_call_duration",
            "Time from a call's arrival to its answer being encoded, by service.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (name, m) in &self.services {
            // Per bucket, not cumulative: the encoder sums them up.
            let mut buckets = [(f64::INFINITY, 0u64); BUCKET_SECONDS.len() + 1];
            for (i, bucket) in buckets.iter_mut().enumerate() {
                bucket.0 = BUCKET_SECONDS.get(i).copied().unwrap_or(f64::INFINITY);
                bucket.1 = load(&m.buckets[i]);
            }
            let count = buckets.iter().map(|b| b.1).sum();
            let sum = load(&m.duration_nanos) as f64 / 1e9;
            family
                .encode_family(&[("service", name)])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let (bytes_in, bytes_out) = self.services.iter().fold((0u64, 0u64), |(i, o), (_, m)| {
            (
                i.wrapping_add(load(&m.bytes_in)),
                o.wrapping_add(load(&m.bytes_out)),
            )
        });
        ConstCounter::new(bytes_in).encode(encoder.encode_descriptor(
            "lib_chan_bytes_received",
            "Frame bytes read from authenticated clients.",
            None,
            counter,
        )?)?;
        ConstCounter::new(bytes_out).encode(encoder.encode_descriptor(
            "lib_chan_bytes_sent",
            "Frame bytes written to authenticated clients.",
            None,
            counter,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "lib_chan_service_events",
            "Events a service counts itself (a port program's starts and crashes), by service.",
            None,
            counter,
        )?;
        for (name, service) in &self.sources {
            for (event, n) in service.counters() {
                let labels = [("service", name.as_str()), ("event", event)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fall_in_the_right_buckets_and_render_cumulatively() {
        let metrics = Metrics::default();
        let m = metrics.service("echo");
        m.calls_received(2);
        m.calls_received(1);
        m.call_answered(Duration::from_micros(10)); // first bucket
        m.call_answered(Duration::from_micros(50)); // on the bound: still the first
        m.call_answered(Duration::from_millis(3)); // le 0.005
        m.call_answered(Duration::from_secs(2)); // +Inf
        m.received(100);
        m.sent(40);
        let _open = m.connected();
        metrics.auth(AuthResult::Failed);
        metrics.login(AuthResult::Ok, "ed25519");
        metrics.login(AuthResult::Failed, "nonsense");
        let mut stats = StatsSnapshot {
            open: 3,
            authenticated: 1,
            accepted: 5,
            ..StatsSnapshot::default()
        };
        stats.closes.insert("revoked".into(), 2);
        let text = metrics.render(&stats);
        for line in [
            "# TYPE lib_chan_connections gauge",
            "lib_chan_connections{service=\"echo\"} 1",
            "lib_chan_connections_unauthenticated 2",
            "# TYPE lib_chan_connections_accepted counter",
            "lib_chan_connections_accepted_total 5",
            "# TYPE lib_chan_auth counter",
            "lib_chan_auth_total{result=\"failed\"} 1",
            "lib_chan_auth_total{result=\"ok\"} 0",
            "lib_chan_logins_total{result=\"ok\",credential=\"ed25519\"} 1",
            "lib_chan_logins_total{result=\"failed\",credential=\"password\"} 0",
            "lib_chan_closes_total{reason=\"revoked\"} 2",
            "lib_chan_calls_total{service=\"echo\"} 3",
            "# TYPE lib_chan_call_duration_seconds histogram",
            "# UNIT lib_chan_call_duration_seconds seconds",
            "lib_chan_call_duration_seconds_bucket{le=\"0.00005\",service=\"echo\"} 2",
            "lib_chan_call_duration_seconds_bucket{le=\"0.0025\",service=\"echo\"} 2",
            "lib_chan_call_duration_seconds_bucket{le=\"0.005\",service=\"echo\"} 3",
            "lib_chan_call_duration_seconds_bucket{le=\"1.0\",service=\"echo\"} 3",
            "lib_chan_call_duration_seconds_bucket{le=\"+Inf\",service=\"echo\"} 4",
            "lib_chan_call_duration_seconds_count{service=\"echo\"} 4",
            "lib_chan_call_duration_seconds_sum{service=\"echo\"} 2.00306",
            "lib_chan_bytes_received_total 100",
            "lib_chan_bytes_sent_total 40",
            "# TYPE lib_chan_service_events counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        drop(_open);
        assert!(metrics
            .render(&stats)
            .contains("lib_chan_connections{service=\"echo\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        // A service name (from the config) or a close reason with a quote, a backslash or
        // a newline stays inside its label value: one sample line, escaped as the
        // exposition format says.
        let metrics = Metrics::default();
        metrics.service("a\"b\\c\nd").calls_received(1);
        let mut stats = StatsSnapshot::default();
        stats.closes.insert("x\ny".into(), 1);
        let text = metrics.render(&stats);
        for line in [
            r#"lib_chan_calls_total{service="a\"b\\c\nd"} 1"#,
            r#"lib_chan_connections{service="a\"b\\c\nd"} 0"#,
            r#"lib_chan_call_duration_seconds_count{service="a\"b\\c\nd"} 0"#,
            r#"lib_chan_closes_total{reason="x\ny"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("lib_chan_"),
                "a label value broke out of its line: {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn bucket_bounds_match_in_seconds_and_nanoseconds() {
        for (secs, nanos) in BUCKET_SECONDS.iter().zip(BUCKET_NANOS) {
            assert_eq!((secs * 1e9).round() as u64, nanos, "{secs}");
        }
    }
}
