//! The login audit: one structured log line per login attempt on the `lib_chan::audit`
//! tracing target, and a bounded in-memory record of recent refusals that merges repeats.
//!
//! The line carries the connection id, the peer, the TLS version, the credential kind, the
//! user claimed, the key's or certificate's fingerprint, the service, the outcome, the
//! precise reason of a refusal (which the client never learns: it only ever sees
//! `{error, auth_failed}`) and the time the decision took. Never a password, a signature
//! or a nonce.
//!
//! [`DenialLog`] keeps, per (source address, user, service, reason), a count with the
//! first and last time; past its capacity the entry seen least recently goes. Operators
//! read it through [`ServerHandle::denials`](crate::ServerHandle::denials).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The tracing target of the audit lines: `RUST_LOG=lib_chan::audit=info` shows only them.
pub const TARGET: &str = "lib_chan::audit";

/// Why a login was refused: for the operator's eyes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// No such service.
    UnknownService,
    /// A service password given for a service that has none (named users only).
    ServiceNeedsUser,
    /// The password (the service's or the user's) is wrong.
    WrongPassword,
    /// No such user.
    UnknownUser,
    /// The user has no credential of the kind it tried.
    NoSuchCredential,
    /// A key login whose signature does not verify.
    WrongSignature,
    /// A key login without a `challenge` before it.
    NoChallenge,
    /// A certificate login on a connection that presented no certificate.
    NoCertificate,
    /// A certificate neither pinned for the user nor under the client CA naming it.
    CertificateNotRecognised,
    /// The user is disabled.
    Disabled,
    /// The user's `expires` time has passed.
    Expired,
    /// The source address is outside the user's `from` networks.
    SourceNotAllowed,
    /// The user's `services` do not include the service.
    ServiceNotAllowed,
    /// The `start_service` frame had a credential or service of the wrong form.
    Malformed,
}

impl Refusal {
    /// The reason's code in logs and in [`Denial::reason`].
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownService => "unknown_service",
            Refusal::ServiceNeedsUser => "service_needs_user",
            Refusal::WrongPassword => "wrong_password",
            Refusal::UnknownUser => "unknown_user",
            Refusal::NoSuchCredential => "no_such_credential",
            Refusal::WrongSignature => "wrong_signature",
            Refusal::NoChallenge => "no_challenge",
            Refusal::NoCertificate => "no_certificate",
            Refusal::CertificateNotRecognised => "certificate_not_recognised",
            Refusal::Disabled => "disabled",
            Refusal::Expired => "expired",
            Refusal::SourceNotAllowed => "source_not_allowed",
            Refusal::ServiceNotAllowed => "service_not_allowed",
            Refusal::Malformed => "malformed",
        }
    }

    /// The refusal for a code of [`UserConfig::refusal`](crate::users::UserConfig::refusal).
    pub(crate) fn from_code(code: &str) -> Refusal {
        match code {
            "disabled" => Refusal::Disabled,
            "expired" => Refusal::Expired,
            _ => Refusal::SourceNotAllowed,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One login attempt, for the audit line.
#[derive(Debug)]
pub(crate) struct LoginRecord<'a> {
    pub(crate) conn: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: &'a str,
    pub(crate) credential: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) fingerprint: Option<&'a str>,
    pub(crate) service: &'a str,
    /// `ok`, `refused` or `busy`.
    pub(crate) outcome: &'a str,
    pub(crate) reason: Option<Refusal>,
    pub(crate) elapsed: Duration,
}

impl LoginRecord<'_> {
    /// Writes the audit line. Names from the client are cut and escaped.
    pub(crate) fn log(&self) {
        let user = self.user.map(shown);
        let service = shown(self.service);
        tracing::info!(
            target: TARGET,
            conn = self.conn,
            peer = %self.peer,
            tls = self.tls,
            credential = self.credential,
            user = user.as_deref().unwrap_or("-"),
            fingerprint = self.fingerprint.unwrap_or("-"),
            service = %service,
            outcome = self.outcome,
            reason = self.reason.map_or("-", Refusal::as_str),
            elapsed_us = self.elapsed.as_micros() as u64,
            "login"
        );
    }
}

/// A client-supplied name for a log: at most 64 characters, escaped.
fn shown(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// Recent refusals, merged: see [`DenialLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The client's address.
    pub source: IpAddr,
    /// The user claimed, if any.
    pub user: Option<String>,
    /// The service asked for.
    pub service: String,
    /// Why it was refused.
    pub reason: Refusal,
    /// How many such refusals.
    pub count: u64,
    /// The first of them.
    pub first: SystemTime,
    /// The last of them.
    pub last: SystemTime,
}

type DenialKey = (IpAddr, Option<String>, String, Refusal);

/// A bounded record of recent refusals, one entry per source, user, service and reason.
#[derive(Debug)]
pub struct DenialLog {
    entries: Mutex<HashMap<DenialKey, Denial>>,
    capacity: usize,
}

impl Default for DenialLog {
    fn default() -> DenialLog {
        DenialLog::new(DenialLog::CAPACITY)
    }
}

impl DenialLog {
    /// Entries kept by default.
    pub const CAPACITY: usize = 1024;

    /// A log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> DenialLog {
        DenialLog {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Records one refusal. Names are cut to 64 characters, so a hostile client cannot
    /// grow an entry.
    pub(crate) fn record(
        &self,
        source: IpAddr,
        user: Option<&str>,
        service: &str,
        reason: Refusal,
    ) {
        let cut = |s: &str| s.chars().take(64).collect::<String>();
        let key = (source, user.map(cut), cut(service), reason);
        let now = SystemTime::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = entries.get_mut(&key) {
            d.count += 1;
            d.last = now;
            return;
        }
        if entries.len() >= self.capacity {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, d)| d.last)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key.clone(),
            Denial {
                source: key.0,
                user: key.1,
                service: key.2,
                reason,
                count: 1,
                first: now,
                last: now,
            },
        );
    }

    /// The entries, most recent first.
    pub fn snapshot(&self) -> Vec<Denial> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Denial> = entries.values().cloned().collect();
        all.sort_by_key(|d| std::cmp::Reverse(d.last));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_merge_and_the_log_stays_bounded() {
        let log = DenialLog::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            log.record(a, Some("alice"), "nameServer", Refusal::WrongPassword);
        }
        let d = log.snapshot();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].count, 3);
        assert!(d[0].first <= d[0].last);
        log.record(a, Some("alice"), "nameServer", Refusal::Disabled);
        std::thread::sleep(Duration::from_millis(5));
        log.record(b, None, &"x".repeat(500), Refusal::UnknownService);
        let d = log.snapshot();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].source, b);
        assert_eq!(d[0].service.len(), 64);
        assert!(
            d.iter().all(|x| x.reason != Refusal::WrongPassword),
            "the oldest went"
        );
    }
}
