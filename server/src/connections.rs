//! The table of open, authenticated connections: who is connected to what, and the
//! handle to revoke each one.
//!
//! A connection is entered once its login succeeds and leaves when it closes (a guard
//! removes it). The table outlives config reloads. A reload, and the passing of a user's
//! `expires` time, re-apply the login rules to every connection of a named user
//! (`login::still_allowed`) and revoke those that would no longer be let
//! in: the user removed, disabled, expired, given another credential, its services or its
//! `from` networks no longer allowing the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::login::{still_allowed, Binding};
use crate::users::{CredentialKind, Identity, Users};

/// One open connection, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection's id (as in the logs, and [`MiddleMan::connection_id`]).
    ///
    /// [`MiddleMan::connection_id`]: crate::MiddleMan::connection_id
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The service it started.
    pub service: String,
    /// The user it logged in as, if any.
    pub user: Option<String>,
    /// The credential kind.
    pub credential: CredentialKind,
    /// The TLS version.
    pub tls: &'static str,
    /// When it logged in.
    pub since: SystemTime,
    /// Calls received.
    pub calls: u64,
    /// Frame bytes received after the handshake.
    pub bytes_in: u64,
    /// Frame bytes sent after the handshake.
    pub bytes_out: u64,
    /// Calls not answered yet (as of the last write).
    pub in_flight: usize,
    /// The session it belongs to, if any.
    pub session: Option<crate::sessions::SessionId>,
}

/// One connection's counters, kept by its middle man (relaxed atomics: a few adds per
/// message), read by the operator's console.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    calls: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnCounters {
    pub(crate) fn calls(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    fn fill(&self, info: &mut ConnectionInfo) {
        info.calls = self.calls.load(Ordering::Relaxed);
        info.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        info.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        info.in_flight = self.in_flight.load(Ordering::Relaxed);
    }
}

struct Open {
    info: ConnectionInfo,
    counters: Arc<ConnCounters>,
    identity: Arc<Identity>,
    binding: Binding,
    revoke: CancellationToken,
}

/// Every open authenticated connection of one server.
#[derive(Default)]
pub(crate) struct ConnectionTable {
    open: Mutex<HashMap<u64, Open>>,
}

impl std::fmt::Debug for ConnectionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTable").finish_non_exhaustive()
    }
}

/// Removes a connection from the table when dropped.
pub(crate) struct Registered {
    table: Arc<ConnectionTable>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters a connection; `revoke` is the token its middle man ends on.
    pub(crate) fn register(
        self: &Arc<Self>,
        info: ConnectionInfo,
        identity: Arc<Identity>,
        binding: Binding,
        revoke: CancellationToken,
        counters: Arc<ConnCounters>,
    ) -> Registered {
        let id = info.id;
        self.lock().insert(
            id,
            Open {
                info,
                counters,
                identity,
                binding,
                revoke,
            },
        );
        Registered {
            table: Arc::clone(self),
            id,
        }
    }

    /// The open connections, by id.
    pub(crate) fn snapshot(&self) -> Vec<ConnectionInfo> {
        let mut all: Vec<ConnectionInfo> = self
            .lock()
            .values()
            .map(|o| {
                let mut info = o.info.clone();
                o.counters.fill(&mut info);
                info
            })
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Revokes the connections `pick` selects (`{error, revoked}`), as the operator
    /// `by` asked; returns how many.
    pub(crate) fn kick(&self, pick: impl Fn(&ConnectionInfo) -> bool, by: &str) -> usize {
        self.revoke_where(|o| pick(&o.info).then(|| format!("kicked ({by})")))
    }

    /// Revokes every named user's connection that `users` (with client CA digest `ca`)
    /// would no longer let in at `now`; returns how many.
    pub(crate) fn revoke_unauthorized(
        &self,
        users: &Users,
        ca: Option<[u8; 32]>,
        now: SystemTime,
    ) -> usize {
        self.revoke_where(|o| {
            still_allowed(
                users,
                ca,
                &o.identity,
                &o.binding,
                &o.info.service,
                o.info.peer,
                now,
            )
            .err()
            .map(str::to_owned)
        })
    }

    /// Revokes each open connection for which `why` gives a reason, logging it on the
    /// audit target; returns how many.
    fn revoke_where(&self, why: impl Fn(&Open) -> Option<String>) -> usize {
        let open = self.lock();
        let mut revoked = 0;
        for o in open.values().filter(|o| !o.revoke.is_cancelled()) {
            if let Some(reason) = why(o) {
                tracing::info!(
                    target: crate::audit::TARGET,
                    conn = o.info.id,
                    peer = %o.info.peer,
                    user = o.info.user.as_deref().unwrap_or("-"),
                    service = %o.info.service,
                    %reason,
                    "connection revoked"
                );
                o.revoke.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}

/// How long the expiry watch sleeps at most before looking again (the wall clock may
/// jump; a reload also wakes it).
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);

/// Revokes connections of users whose `expires` time passes while they are connected.
/// Wakes at the next expiry of the current config, when `changed` is notified (a reload),
/// or every minute, until `stop`.
pub(crate) async fn watch_expiry(
    live: Arc<crate::reload::Live>,
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        let state = live.load();
        let now = SystemTime::now();
        state.connections.revoke_unauthorized(
            &state.users,
            state.client_ca.as_ref().map(|c| c.digest),
            now,
        );
        let wait = state
            .users
            .next_expiry(now)
            .and_then(|t| t.duration_since(now).ok())
            .map_or(EXPIRY_RECHECK, |d| d.min(EXPIRY_RECHECK));
        drop(state);
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed.notified() => {}
            // A little past the expiry, so that `now >= expires` holds when it wakes.
            () = tokio::time::sleep(wait + Duration::from_millis(5)) => {}
        }
    }
}
