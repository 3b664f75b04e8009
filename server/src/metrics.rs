//! Metrics: what the server counts on its connection paths, and an optional Prometheus
//! endpoint (`[metrics] listen = "127.0.0.1:9464"`) that serves them as text at `/metrics`.
//!
//! The counting is atomics only: each service has a `ServiceMetrics` (found once per
//! connection, when it authenticates) holding its open-connection gauge, its call count,
//! a latency histogram of fixed buckets and its frame bytes in and out; the middle man adds
//! to them with relaxed `fetch_add`s, with no lock and no allocation per message. A scrape
//! reads them all, with the close reasons from [`Stats`], and renders
//! the Prometheus text exposition format (version 0.0.4).
//!
//! The endpoint is a small hand-written HTTP/1.1 responder on tokio: one request per
//! connection, the request head bounded to [`MAX_REQUEST`] bytes and the whole exchange
//! to [`REQUEST_TIMEOUT`], at most [`MAX_SCRAPERS`] at once; `GET /metrics` is answered,
//! and `/healthz` and `/readyz` (the `health` module), any other path 404, any other
//! method 405. It has no authentication: bind it to a
//! loopback or otherwise private address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::stats::{Stats, StatsSnapshot};

/// The upper bounds of the call latency buckets, in seconds as rendered (`le`), from
/// 50 µs to 1 s; a last bucket, `+Inf`, takes the rest.
const BUCKET_LABELS: [&str; 14] = [
    "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1",
];
/// [`BUCKET_LABELS`] in nanoseconds.
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

/// Bytes of request head read at most; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8192;
/// How long one scrape (request and response) may take before it is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; further connections are closed unanswered until one ends.
pub const MAX_SCRAPERS: usize = 8;

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
    /// One call arrived.
    #[inline]
    pub(crate) fn call_received(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// One call was answered (its reply or error encoded) `elapsed` after it arrived.
    #[inline]
    pub(crate) fn call_answered(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
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

    /// The Prometheus text exposition of these counters and of `stats`.
    pub fn render(&self, stats: &StatsSnapshot) -> String {
        let services: Vec<(String, Arc<ServiceMetrics>)> = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, m)| (escape(name), Arc::clone(m)))
            .collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let mut put = |text: std::fmt::Arguments<'_>| {
            let _ = out.write_fmt(text);
        };

        header(
            &mut put,
            "lib_chan_connections",
            "gauge",
            "Open authenticated connections, by service.",
        );
        for (name, m) in &services {
            put(format_args!(
                "lib_chan_connections{{service=\"{name}\"}} {}\n",
                m.connections.load(Ordering::Relaxed)
            ));
        }
        header(
            &mut put,
            "lib_chan_connections_unauthenticated",
            "gauge",
            "Open connections not authenticated yet (TLS or start_service under way).",
        );
        put(format_args!(
            "lib_chan_connections_unauthenticated {}\n",
            stats.open.saturating_sub(stats.authenticated)
        ));
        header(
            &mut put,
            "lib_chan_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
        );
        put(format_args!(
            "lib_chan_connections_accepted_total {}\n",
            stats.accepted
        ));
        header(
            &mut put,
            "lib_chan_auth_total",
            "counter",
            "start_service password checks, by result.",
        );
        for (result, counter) in [
            ("ok", &self.auth_ok),
            ("failed", &self.auth_failed),
            ("busy", &self.auth_busy),
        ] {
            put(format_args!(
                "lib_chan_auth_total{{result=\"{result}\"}} {}\n",
                load(counter)
            ));
        }
        header(
            &mut put,
            "lib_chan_logins_total",
            "counter",
            "Logins decided, by result and credential kind.",
        );
        for (r, result) in LOGIN_RESULTS.iter().enumerate() {
            for (k, kind) in LOGIN_KINDS.iter().enumerate() {
                put(format_args!(
                    "lib_chan_logins_total{{result=\"{result}\",credential=\"{kind}\"}} {}\n",
                    load(&self.logins[r][k])
                ));
            }
        }
        header(
            &mut put,
            "lib_chan_closes_total",
            "counter",
            "Connections ended, by reason.",
        );
        for (reason, n) in &stats.closes {
            put(format_args!(
                "lib_chan_closes_total{{reason=\"{}\"}} {n}\n",
                escape(reason)
            ));
        }
        header(
            &mut put,
            "lib_chan_calls_total",
            "counter",
            "Calls received, by service.",
        );
        for (name, m) in &services {
            put(format_args!(
                "lib_chan_calls_total{{service=\"{name}\"}} {}\n",
                load(&m.calls)
            ));
        }
        header(
            &mut put,
            "lib_chan_call_duration_seconds",
            "histogram",
            "Time from a call's arrival to its answer being encoded, by service.",
        );
        for (name, m) in &services {
            let mut cumulative = 0;
            for (i, label) in BUCKET_LABELS.iter().enumerate() {
                cumulative += load(&m.buckets[i]);
                put(format_args!(
                    "lib_chan_call_duration_seconds_bucket{{service=\"{name}\",le=\"{label}\"}} {cumulative}\n"
                ));
            }
            cumulative += load(&m.buckets[BUCKET_LABELS.len()]);
            put(format_args!(
                "lib_chan_call_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {cumulative}\n"
            ));
            put(format_args!(
                "lib_chan_call_duration_seconds_sum{{service=\"{name}\"}} {}\n",
                load(&m.duration_nanos) as f64 / 1e9
            ));
            put(format_args!(
                "lib_chan_call_duration_seconds_count{{service=\"{name}\"}} {cumulative}\n"
            ));
        }
        let (bytes_in, bytes_out) = services.iter().fold((0u64, 0u64), |(i, o), (_, m)| {
            (
                i.wrapping_add(load(&m.bytes_in)),
                o.wrapping_add(load(&m.bytes_out)),
            )
        });
        header(
            &mut put,
            "lib_chan_bytes_received_total",
            "counter",
            "Frame bytes read from authenticated clients.",
        );
        put(format_args!("lib_chan_bytes_received_total {bytes_in}\n"));
        header(
            &mut put,
            "lib_chan_bytes_sent_total",
            "counter",
            "Frame bytes written to authenticated clients.",
        );
        put(format_args!("lib_chan_bytes_sent_total {bytes_out}\n"));
        let sources: Vec<(String, Arc<dyn crate::Service>)> = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(n, w)| w.upgrade().map(|s| (escape(n), s)))
            .collect();
        header(
            &mut put,
            "lib_chan_service_events_total",
            "counter",
            "Events a service counts itself (a port program's starts and crashes), by service.",
        );
        for (name, service) in &sources {
            for (event, n) in service.counters() {
                put(format_args!(
                    "lib_chan_service_events_total{{service=\"{name}\",event=\"{}\"}} {n}\n",
                    escape(event)
                ));
            }
        }
        out
    }
}

fn header(put: &mut impl FnMut(std::fmt::Arguments<'_>), name: &str, kind: &str, help: &str) {
    put(format_args!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What `/readyz` asks: the problems that keep the server from being ready (none: ready).
pub(crate) type ReadyCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send>>
        + Send
        + Sync,
>;

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` is
/// cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    ready: ReadyCheck,
    shutdown: CancellationToken,
) {
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&scrapers).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many scrapes at once; closing");
            continue;
        };
        let (metrics, stats, ready) =
            (Arc::clone(&metrics), Arc::clone(&stats), Arc::clone(&ready));
        tokio::spawn(async move {
            let _permit = permit;
            let render = || metrics.render(&stats.snapshot());
            if tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, render, || ready()))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "metrics endpoint: request timed out");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn respond<R, F>(mut stream: TcpStream, render: impl FnOnce() -> String, ready: R)
where
    R: FnOnce() -> F,
    F: std::future::Future<Output = Vec<String>>,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_REQUEST {
            reply(&mut stream, "431 Request Header Fields Too Large", "", "").await;
            // Read a little of the rest, so that closing with input unread does not
            // reset the connection before the client has read the answer.
            let mut left = 4 * MAX_REQUEST;
            let discard = async {
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    left = left.saturating_sub(n);
                    if left == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), discard).await;
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        reply(&mut stream, "400 Bad Request", "", "").await;
        return;
    };
    if !version.starts_with("HTTP/1.") {
        reply(&mut stream, "400 Bad Request", "", "").await;
        return;
    }
    let path = target.split('?').next().unwrap_or("");
    if matches!(path, "/healthz" | "/readyz") {
        let (status, body) = match path {
            "/healthz" => ("200 OK", "ok\n".to_owned()),
            _ => {
                let problems = ready().await;
                if problems.is_empty() {
                    ("200 OK", "ready\n".to_owned())
                } else {
                    ("503 Service Unavailable", problems.join("\n") + "\n")
                }
            }
        };
        match method {
            "GET" => reply(&mut stream, status, "", &body).await,
            "HEAD" => reply(&mut stream, status, "", "").await,
            _ => reply(&mut stream, "405 Method Not Allowed", "", "").await,
        }
        return;
    }
    if path != "/metrics" {
        reply(
            &mut stream,
            "404 Not Found",
            "",
            "not found: try /metrics\n",
        )
        .await;
        return;
    }
    match method {
        "GET" => {
            let body = render();
            reply(&mut stream, "200 OK", CONTENT_TYPE, &body).await;
        }
        "HEAD" => reply(&mut stream, "200 OK", CONTENT_TYPE, "").await,
        _ => reply(&mut stream, "405 Method Not Allowed", "", "").await,
    }
}

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a whole response and closes the connection.
async fn reply(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let content_type = if content_type.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fall_in_the_right_buckets_and_render_cumulatively() {
        let metrics = Metrics::default();
        let m = metrics.service("echo");
        m.call_received();
        m.call_received();
        m.call_received();
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
            ..StatsSnapshot::default()
        };
        stats.closes.insert("revoked".into(), 2);
        let text = metrics.render(&stats);
        for line in [
            "lib_chan_connections{service=\"echo\"} 1",
            "lib_chan_connections_unauthenticated 2",
            "lib_chan_auth_total{result=\"failed\"} 1",
            "lib_chan_auth_total{result=\"ok\"} 0",
            "lib_chan_logins_total{result=\"ok\",credential=\"ed25519\"} 1",
            "lib_chan_logins_total{result=\"failed\",credential=\"password\"} 0",
            "lib_chan_closes_total{reason=\"revoked\"} 2",
            "lib_chan_calls_total{service=\"echo\"} 3",
            "lib_chan_call_duration_seconds_bucket{service=\"echo\",le=\"5e-05\"} 2",
            "lib_chan_call_duration_seconds_bucket{service=\"echo\",le=\"0.0025\"} 2",
            "lib_chan_call_duration_seconds_bucket{service=\"echo\",le=\"0.005\"} 3",
            "lib_chan_call_duration_seconds_bucket{service=\"echo\",le=\"1\"} 3",
            "lib_chan_call_duration_seconds_bucket{service=\"echo\",le=\"+Inf\"} 4",
            "lib_chan_call_duration_seconds_count{service=\"echo\"} 4",
            "lib_chan_call_duration_seconds_sum{service=\"echo\"} 2.00306",
            "lib_chan_bytes_received_total 100",
            "lib_chan_bytes_sent_total 40",
            "# TYPE lib_chan_call_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        drop(_open);
        assert!(metrics
            .render(&stats)
            .contains("lib_chan_connections{service=\"echo\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn bucket_labels_match_their_bounds() {
        for (label, nanos) in BUCKET_LABELS.iter().zip(BUCKET_NANOS) {
            let secs: f64 = label.parse().unwrap();
            assert_eq!((secs * 1e9).round() as u64, nanos, "{label}");
        }
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and stop reading) before the whole request is written.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn the_endpoint_answers_metrics_404_405_and_bounds_the_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.auth(AuthResult::Ok);
        let stop = CancellationToken::new();
        let problems = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&problems);
        let ready: ReadyCheck = Arc::new(move || {
            let now = seen.lock().unwrap().clone();
            Box::pin(async move { now })
        });
        let task = tokio::spawn(serve(
            listener,
            metrics,
            Arc::new(Stats::default()),
            ready,
            stop.clone(),
        ));
        let t = Duration::from_secs(10);
        let health = tokio::time::timeout(t, get(addr, b"GET /healthz HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert!(
            health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );
        let ready = tokio::time::timeout(t, get(addr, b"GET /readyz HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
        problems.lock().unwrap().push("service x: unhealthy".into());
        let not = tokio::time::timeout(t, get(addr, b"GET /readyz HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert!(not.starts_with("HTTP/1.1 503 "), "{not}");
        assert!(not.ends_with("service x: unhealthy\n"), "{not}");
        let t = Duration::from_secs(10);
        let ok = tokio::time::timeout(t, get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(
            ok.contains("\nlib_chan_auth_total{result=\"ok\"} 1\n"),
            "{ok}"
        );
        let body_len = ok.split_once("\r\n\r\n").unwrap().1.len();
        assert!(
            ok.contains(&format!("Content-Length: {body_len}\r\n")),
            "{ok}"
        );
        let missing = tokio::time::timeout(t, get(addr, b"GET / HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = tokio::time::timeout(t, get(addr, b"POST /metrics HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST * 2));
        let big = tokio::time::timeout(t, get(addr, &huge)).await.unwrap();
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
        stop.cancel();
        tokio::time::timeout(t, task).await.unwrap().unwrap();
    }
}
