//! Admission control before authentication: who may start a handshake at all.
//!
//! Three defences, checked when a TCP connection is accepted and before any TLS work:
//!
//! - **Unauthenticated connections in flight**, with random early drop as OpenSSH's
//!   `MaxStartups 10:30:100`: below `unauth_drop_start` every connection is admitted,
//!   from there the chance of refusal rises linearly, and at `max_unauth` all are refused.
//! - **Unauthenticated connections per source**: at most `max_unauth_per_source` from one
//!   IPv4 address or one IPv6 /64.
//! - **Per-source penalties**, as OpenSSH's `PerSourcePenalties`: each authentication
//!   failure, pre-authentication timeout, or connection closed without an attempt adds
//!   penalty time to its source; while a source's penalty exceeds a threshold, its new
//!   connections are refused. Penalties decay in real time, are capped, the table is
//!   bounded, and sources on the exempt list never collect any.
//!
//! A refusal here closes the TCP connection without a word: TLS is not up yet, and
//! answering would cost the server more than it costs the attacker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The address a limit is kept for: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// The source of a peer address (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u32::from(v4) as u128),
                // Keep the /64 prefix, and mark it so it cannot equal an IPv4 source.
                None => Source((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

impl std::fmt::Display for Source {
    /// An IPv4 address as such, an IPv6 source as its `/64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >> 32 == 0 {
            write!(f, "{}", std::net::Ipv4Addr::from(self.0 as u32))
        } else {
            write!(f, "{}/64", std::net::Ipv6Addr::from(self.0 & !1))
        }
    }
}

/// A source serving a penalty, as [`Admission::penalties`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PenaltyInfo {
    /// The source: an IPv4 address, or an IPv6 `/64`.
    pub source: String,
    /// How long until the penalty has decayed to zero.
    pub remaining: Duration,
    /// True while new connections from it are refused (the penalty is over the
    /// threshold).
    pub refusing: bool,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many unauthenticated connections in all (random early drop or the hard cap).
    Unauthenticated,
    /// Too many unauthenticated connections from this source.
    PerSource,
    /// The source is serving a penalty.
    Penalized,
}

impl Refusal {
    /// A short code for logs and counters.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "refused_unauth_limit",
            Refusal::PerSource => "refused_per_source_limit",
            Refusal::Penalized => "refused_penalized",
        }
    }
}

/// What a source's pre-authentication phase ended with, for penalties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated, or refused through no fault of the client (busy): no penalty.
    Clean,
    /// Unknown service or wrong password.
    AuthFailed,
    /// The pre-authentication deadline passed.
    TimedOut,
    /// Closed (or broke TLS, or sent junk) without ever trying a password.
    NoAttempt,
}

/// Penalty settings (the `[limits] penalty_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PenaltyPolicy {
    /// Added per authentication failure (OpenSSH `authfail`, 5 s).
    pub auth_failed: Duration,
    /// Added per pre-authentication timeout (OpenSSH `grace-exceeded`, 10 s).
    pub timed_out: Duration,
    /// Added per connection that ended without an attempt (OpenSSH `noauth`, 1 s).
    pub no_attempt: Duration,
    /// New connections are refused while the penalty exceeds this (OpenSSH `min`, 15 s).
    pub threshold: Duration,
    /// A penalty never exceeds this (OpenSSH `max`, 600 s).
    pub max: Duration,
    /// Sources tracked at most; when full, the entry nearest expiry is dropped.
    pub max_sources: usize,
    /// Sources that never collect penalties (as `PerSourcePenaltyExemptList`).
    pub exempt: Vec<(IpAddr, u8)>,
}

impl Default for PenaltyPolicy {
    fn default() -> PenaltyPolicy {
        PenaltyPolicy {
            auth_failed: Duration::from_secs(5),
            timed_out: Duration::from_secs(10),
            no_attempt: Duration::from_secs(1),
            threshold: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 65_536,
            exempt: Vec::new(),
        }
    }
}

/// True when `ip` lies in `net/prefix`.
pub fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Admission settings (the `[limits]` keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Unauthenticated connections at which random early drop starts (default 64).
    pub unauth_drop_start: usize,
    /// Unauthenticated connections at which all new ones are refused (default 256).
    pub max_unauth: usize,
    /// Unauthenticated connections per source (default 8).
    pub max_unauth_per_source: usize,
    /// Per-source penalties.
    pub penalties: PenaltyPolicy,
}

impl Default for AdmissionPolicy {
    fn default() -> AdmissionPolicy {
        AdmissionPolicy {
            unauth_drop_start: 64,
            max_unauth: 256,
            max_unauth_per_source: 8,
            penalties: PenaltyPolicy::default(),
        }
    }
}

/// A source's penalty: the instant it will have decayed to zero.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    expires: Instant,
}

#[derive(Debug, Default)]
struct Table {
    unauth_total: usize,
    unauth_by_source: HashMap<Source, usize>,
    penalties: HashMap<Source, Penalty>,
    /// A cheap xorshift state for random early drop (no cryptographic need).
    rng: u64,
}

/// The admission state shared by the accept loop and the handshakes.
#[derive(Debug)]
pub struct Admission {
    policy: AdmissionPolicy,
    table: Mutex<Table>,
}

/// An admitted unauthenticated connection; dropping it (or [`Ticket::finish`])
/// gives its place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    ip: IpAddr,
    released: bool,
}

impl Admission {
    /// Admission control with `policy`.
    pub fn new(policy: AdmissionPolicy) -> Admission {
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        Admission {
            policy,
            table: Mutex::new(Table {
                rng: seed | 1,
                ..Table::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    ///
    /// # Errors
    /// The [`Refusal`] that applies.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let source = Source::of(ip);
        let now = Instant::now();
        let p = &self.policy;
        let mut t = self.lock();
        if let Some(pen) = t.penalties.get(&source).copied() {
            let left = pen.expires.saturating_duration_since(now);
            if left.is_zero() {
                t.penalties.remove(&source);
            } else if left > p.penalties.threshold {
                return Err(Refusal::Penalized);
            }
        }
        if t.unauth_total >= p.max_unauth {
            return Err(Refusal::Unauthenticated);
        }
        if t.unauth_total >= p.unauth_drop_start {
            // Refuse with a chance rising linearly from 0 at the start to 1 at the cap.
            let span = (p.max_unauth - p.unauth_drop_start).max(1) as u64;
            let over = (t.unauth_total - p.unauth_drop_start) as u64;
            t.rng ^= t.rng << 13;
            t.rng ^= t.rng >> 7;
            t.rng ^= t.rng << 17;
            if t.rng % span < over {
                return Err(Refusal::Unauthenticated);
            }
        }
        let per_source = t.unauth_by_source.get(&source).copied().unwrap_or(0);
        if per_source >= p.max_unauth_per_source {
            return Err(Refusal::PerSource);
        }
        t.unauth_total += 1;
        *t.unauth_by_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            source,
            ip,
            released: false,
        })
    }

    /// Unauthenticated connections in flight now.
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauth_total
    }

    /// The sources serving a penalty now, the longest first.
    pub fn penalties(&self) -> Vec<PenaltyInfo> {
        let now = Instant::now();
        let threshold = self.policy.penalties.threshold;
        let t = self.lock();
        let mut all: Vec<PenaltyInfo> = t
            .penalties
            .iter()
            .filter(|(_, p)| p.expires > now)
            .map(|(s, p)| {
                let remaining = p.expires - now;
                PenaltyInfo {
                    source: s.to_string(),
                    remaining,
                    refusing: remaining > threshold,
                }
            })
            .collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.remaining));
        all
    }

    /// Lifts the penalty of `ip`'s source; true when it had one.
    pub fn unblock(&self, ip: IpAddr) -> bool {
        let source = Source::of(ip);
        let lifted = self.lock().penalties.remove(&source).is_some();
        if lifted {
            tracing::warn!(%source, "penalty lifted by the operator");
        }
        lifted
    }

    /// The penalty `ip`'s source is serving now (zero when none).
    pub fn penalty(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        self.lock()
            .penalties
            .get(&Source::of(ip))
            .map_or(Duration::ZERO, |p| p.expires.saturating_duration_since(now))
    }

    fn penalize(&self, ip: IpAddr, source: Source, outcome: Outcome) {
        let p = &self.policy.penalties;
        let add = match outcome {
            Outcome::Clean => return,
            Outcome::AuthFailed => p.auth_failed,
            Outcome::TimedOut => p.timed_out,
            Outcome::NoAttempt => p.no_attempt,
        };
        if add.is_zero() || p.exempt.iter().any(|(net, len)| in_network(ip, *net, *len)) {
            return;
        }
        let now = Instant::now();
        let mut t = self.lock();
        if !t.penalties.contains_key(&source) && t.penalties.len() >= p.max_sources {
            // Bounded table: forget expired entries, then the one nearest expiry.
            t.penalties.retain(|_, pen| pen.expires > now);
            if t.penalties.len() >= p.max_sources {
                if let Some(victim) = t
                    .penalties
                    .iter()
                    .min_by_key(|(_, pen)| pen.expires)
                    .map(|(s, _)| *s)
                {
                    t.penalties.remove(&victim);
                }
            }
        }
        let entry = t
            .penalties
            .entry(source)
            .or_insert(Penalty { expires: now });
        let base = entry.expires.max(now);
        let was_refusing = base - now > p.threshold;
        entry.expires = (base + add).min(now + p.max);
        let left = entry.expires - now;
        if !was_refusing && left > p.threshold {
            let until = std::time::SystemTime::now() + (left - p.threshold);
            tracing::warn!(
                %source,
                until = %crate::users::format_time(until),
                "source blocked after failed logins: its new connections are refused until then"
            );
        }
    }

    fn release(&self, source: Source) {
        let mut t = self.lock();
        t.unauth_total = t.unauth_total.saturating_sub(1);
        if let Some(n) = t.unauth_by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                t.unauth_by_source.remove(&source);
            }
        }
    }
}

impl Ticket {
    /// Ends the unauthenticated phase with `outcome`: the place is given back and the
    /// source is penalised as the outcome deserves.
    pub fn finish(mut self, outcome: Outcome) {
        self.released = true;
        self.admission.release(self.source);
        self.admission.penalize(self.ip, self.source, outcome);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.released {
            self.admission.release(self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_group_ipv6_by_64_and_map_v4() {
        assert_eq!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:127.0.0.2")),
            Source::of(ip("127.0.0.2"))
        );
        assert_ne!(Source::of(ip("127.0.0.1")), Source::of(ip("127.0.0.2")));
    }

    #[test]
    fn per_source_and_total_caps_hold_and_release() {
        let a = Arc::new(Admission::new(AdmissionPolicy {
            unauth_drop_start: 10,
            max_unauth: 10,
            max_unauth_per_source: 3,
            ..AdmissionPolicy::default()
        }));
        let t: Vec<_> = (0..3).map(|_| a.admit(ip("127.0.0.2")).unwrap()).collect();
        assert_eq!(a.admit(ip("127.0.0.2")).unwrap_err(), Refusal::PerSource);
        let others: Vec<_> = (3..10)
            .map(|i| a.admit(ip(&format!("127.0.1.{i}"))).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("127.0.0.9")).unwrap_err(),
            Refusal::Unauthenticated
        );
        drop(t);
        assert_eq!(a.unauthenticated(), 7);
        assert!(a.admit(ip("127.0.0.2")).is_ok());
        drop(others);
        assert_eq!(a.unauthenticated(), 0);
    }

    #[test]
    fn early_drop_refuses_some_between_start_and_cap() {
        let a = Arc::new(Admission::new(AdmissionPolicy {
            unauth_drop_start: 10,
            max_unauth: 1000,
            max_unauth_per_source: 10_000,
            ..AdmissionPolicy::default()
        }));
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..600 {
            match a.admit(ip("127.0.0.3")) {
                Ok(t) => held.push(t),
                Err(r) => {
                    assert_eq!(r, Refusal::Unauthenticated);
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "some refused once past the start");
        assert!(held.len() > 10 && held.len() < 600, "{}", held.len());
    }

    #[test]
    fn penalties_accumulate_refuse_past_the_threshold_and_spare_the_exempt() {
        let a = Arc::new(Admission::new(AdmissionPolicy {
            penalties: PenaltyPolicy {
                exempt: vec![(ip("127.0.0.0"), 31)],
                ..PenaltyPolicy::default()
            },
            ..AdmissionPolicy::default()
        }));
        let attacker = ip("127.0.0.2");
        // Three failures: 15 s, not above the threshold yet.
        for _ in 0..3 {
            a.admit(attacker).unwrap().finish(Outcome::AuthFailed);
        }
        assert!(a.admit(attacker).is_ok());
        a.admit(attacker).unwrap().finish(Outcome::AuthFailed);
        assert_eq!(a.admit(attacker).unwrap_err(), Refusal::Penalized);
        assert!(a.penalty(attacker) > Duration::from_secs(19));
        // The operator sees the source and may lift its penalty.
        let listed = a.penalties();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].source, "127.0.0.2");
        assert!(listed[0].refusing && listed[0].remaining > Duration::from_secs(19));
        assert!(a.unblock(attacker));
        assert!(!a.unblock(attacker), "nothing left to lift");
        assert!(a.admit(attacker).is_ok());
        assert!(a.penalties().is_empty());
        a.admit(attacker).unwrap().finish(Outcome::AuthFailed);
        assert!(
            !a.penalties()[0].refusing,
            "one failure is under the threshold"
        );
        assert_eq!(
            Source::of(ip("2001:db8::1:2:3:4")).to_string(),
            "2001:db8::/64"
        );
        // The exempt network (127.0.0.0/31 holds .0 and .1) never collects any.
        for _ in 0..10 {
            a.admit(ip("127.0.0.1"))
                .unwrap()
                .finish(Outcome::AuthFailed);
        }
        assert!(a.admit(ip("127.0.0.1")).is_ok());
        // Authentication adds nothing; the cap holds.
        let b = Arc::new(Admission::new(AdmissionPolicy::default()));
        for _ in 0..200 {
            if let Ok(t) = b.admit(ip("10.9.9.9")) {
                t.finish(Outcome::TimedOut);
            }
        }
        assert!(b.penalty(ip("10.9.9.9")) <= Duration::from_secs(600));
    }

    #[test]
    fn the_penalty_table_is_bounded() {
        let a = Arc::new(Admission::new(AdmissionPolicy {
            penalties: PenaltyPolicy {
                max_sources: 4,
                ..PenaltyPolicy::default()
            },
            ..AdmissionPolicy::default()
        }));
        for i in 0..50 {
            a.admit(ip(&format!("192.0.2.{i}")))
                .unwrap()
                .finish(Outcome::AuthFailed);
        }
        assert!(a.lock().penalties.len() <= 4);
    }

    #[test]
    fn networks_match_by_prefix() {
        assert!(in_network(ip("127.0.0.1"), ip("127.0.0.0"), 8));
        assert!(!in_network(ip("128.0.0.1"), ip("127.0.0.0"), 8));
        assert!(in_network(ip("2001:db8::5"), ip("2001:db8::"), 64));
        assert!(!in_network(ip("127.0.0.1"), ip("::1"), 128));
        assert!(in_network(ip("1.2.3.4"), ip("0.0.0.0"), 0));
    }
}
