//! Accounting: every connection's end is counted under a reason code, and protocol-error
//! log lines are rate-limited so that a flood of junk cannot flood the log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters shared by every connection of one server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections ended, by reason code (e.g. `client_closed`, `auth_failed`).
    closes: Mutex<BTreeMap<String, u64>>,
    /// Connections accepted from TCP.
    accepted: AtomicU64,
    /// Connections now open, authenticated or not.
    open: AtomicUsize,
    /// Connections now authenticated.
    authenticated: AtomicUsize,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections ended, by reason code.
    pub closes: BTreeMap<String, u64>,
    /// Connections accepted from TCP.
    pub accepted: u64,
    /// Connections open now.
    pub open: usize,
    /// Authenticated connections open now.
    pub authenticated: usize,
}

impl StatsSnapshot {
    /// How many connections ended with `code`.
    pub fn closed_with(&self, code: &str) -> u64 {
        self.closes.get(code).copied().unwrap_or(0)
    }
}

impl Stats {
    /// Counts one connection ended with reason `code`.
    pub fn count_close(&self, code: &str) {
        let mut closes = self.closes.lock().unwrap_or_else(|p| p.into_inner());
        *closes.entry(code.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn opened(&self) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(&self.open)
    }

    pub(crate) fn authenticated(&self) -> OpenGuard<'_> {
        self.authenticated.fetch_add(1, Ordering::Relaxed);
        OpenGuard(&self.authenticated)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            closes: self
                .closes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            accepted: self.accepted.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            authenticated: self.authenticated.load(Ordering::Relaxed),
        }
    }
}

/// Decrements a gauge when the connection it counts ends.
#[derive(Debug)]
pub(crate) struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets through at most `per_window` events per window, and counts the rest so the next
/// line that gets through can say how many were suppressed.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    /// At most `per_window` per `window`.
    pub fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed since the last allowed)` when this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(s.0) >= self.window {
            *s = (now, 0, s.2);
        }
        if s.1 < self.per_window {
            s.1 += 1;
            let suppressed = s.2;
            s.2 = 0;
            Some(suppressed)
        } else {
            s.2 += 1;
            None
        }
    }
}

/// Protocol-error log lines: at most 20 a second for the whole server.
pub(crate) fn protocol_log_limit() -> &'static RateLimit {
    static LIMIT: std::sync::OnceLock<RateLimit> = std::sync::OnceLock::new();
    LIMIT.get_or_init(|| RateLimit::new(20, Duration::from_secs(1)))
}

/// Logs a protocol error at info level, rate-limited, with a short escaped snippet.
macro_rules! protocol_error {
    ($($arg:tt)*) => {
        if let Some(suppressed) = $crate::stats::protocol_log_limit().allow() {
            tracing::info!(suppressed, $($arg)*);
        }
    };
}
pub(crate) use protocol_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_burst_through_then_counts_the_rest() {
        let r = RateLimit::new(3, Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::new(1, Duration::ZERO);
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn closes_are_counted_by_code() {
        let s = Stats::default();
        s.count_close("auth_failed");
        s.count_close("auth_failed");
        s.count_close("client_closed");
        let snap = s.snapshot();
        assert_eq!(snap.closed_with("auth_failed"), 2);
        assert_eq!(snap.closed_with("client_closed"), 1);
        assert_eq!(snap.closed_with("nothing"), 0);
        {
            let _g = s.opened();
            assert_eq!(s.snapshot().open, 1);
        }
        assert_eq!(s.snapshot().open, 0);
    }
}
