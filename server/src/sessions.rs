//! Sessions (PROTOCOL.md section 8): what lets a client survive a lost connection without
//! losing what belongs to it.
//!
//! A login with `#{session => new}` starts a session; the welcome gives its id (18 random
//! bytes) and its grace. A later login to the same service with the same identity (the
//! service password, or the same user) and `#{session => Id}` resumes it. An id that is
//! unknown, ended, for another service or another identity silently gets a new session:
//! the answer never tells whether the id existed.
//!
//! Each open connection of a session holds a `SessionLease`. When the last lease goes
//! without the client's `close`, a timer of `grace` starts; a resume before it fires keeps
//! the session, else the session ends. A client's `close` ends its session at once. When a
//! session ends, its service is told ([`Service::session_ended`]), so that the name server
//! removes the session's `#{owner => session}` names and tells their watchers.
//!
//! The table is shared by every config generation (a reload keeps sessions), bounded by
//! `[limits] max_sessions`, and lives in this process: a restart ends every session.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::handler::Service;
use crate::users::Identity;

/// The bytes of a session id (the protocol asks for at least 16).
pub const SESSION_ID_LEN: usize = 18;

/// A session's id: random bytes, as the welcome's `session` binary.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    fn random() -> Option<SessionId> {
        let mut id = [0u8; SESSION_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).ok()?;
        Some(SessionId(id))
    }

    /// The id as the client sees it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id from a client's bytes; `None` when it cannot be one of ours.
    pub fn from_bytes(bytes: &[u8]) -> Option<SessionId> {
        bytes.try_into().ok().map(SessionId)
    }

    /// True when `owner` (an owner-bound name's owner) is a session's
    /// [`owner_key`](SessionId::owner_key) rather than a connection id.
    pub fn is_owner_key(owner: u64) -> bool {
        owner >> 63 == 1
    }

    /// A 64-bit key for the session, with the top bit set so that it never equals a
    /// connection id (which count up from 1): what owner-bound names of the session are
    /// bound to.
    pub fn owner_key(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(head) | (1 << 63)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl fmt::Display for SessionId {
    /// The first 6 bytes in hex: enough to tell sessions apart in a log, not enough to
    /// resume one (which needs all 18, and a login).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// What the client asked for in its handshake options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionRequest {
    /// `session => new`.
    New,
    /// `session => Id`.
    Resume(Vec<u8>),
}

/// The table of live sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<SessionId, Entry>>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.lock().len())
            .finish()
    }
}

struct Entry {
    service: String,
    /// Who may resume it: see [`owner_of`].
    owner: String,
    grace: Duration,
    /// Connections open now.
    open: usize,
    /// Raised whenever the last connection goes: a grace timer ends the session only if
    /// nothing happened since it started.
    epoch: u64,
    handler: Arc<dyn Service>,
}

/// Who a session belongs to: the service password, or one user.
fn owner_of(identity: &Identity) -> String {
    match identity.user() {
        Some(name) => format!("user:{name}"),
        None => "service_password".into(),
    }
}

/// The `[limits]` that bound sessions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// `session_grace_max`.
    pub(crate) grace_max: Duration,
    /// `max_sessions`.
    pub(crate) max_sessions: usize,
}

/// The session table is at `max_sessions`.
#[derive(Debug)]
pub(crate) struct TooManySessions;

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        // Each change is one map operation: consistent after a panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions are live.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Starts or resumes the session `request` names, for a connection that logged in to
    /// `service` as `identity`; `grace` is what the client asked for, clamped to
    /// `limits.grace_max` (and that when it asked for none). An id unknown here may be
    /// another server's session, which the service can adopt ([`Service::adopt_session`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open(
        self: &Arc<Self>,
        service: &str,
        identity: &Identity,
        handler: &Arc<dyn Service>,
        request: &SessionRequest,
        grace: Option<Duration>,
        limits: SessionLimits,
    ) -> Result<SessionLease, TooManySessions> {
        let grace = grace.map_or(limits.grace_max, |g| g.min(limits.grace_max));
        let owner = owner_of(identity);
        let wanted = match request {
            SessionRequest::Resume(bytes) => SessionId::from_bytes(bytes),
            SessionRequest::New => None,
        };
        if let Some(id) = wanted {
            if let Some(lease) = self.resume_local(id, service, &owner, grace) {
                // Held here again, should another server have adopted it meanwhile.
                handler.session_started(&id, &owner);
                return Ok(lease);
            }
            if let Some(adopting) = handler.adopt_session(&id, &owner) {
                if adopting.await {
                    let mut table = self.lock();
                    if let Some(lease) = self.resume_in(&mut table, id, service, &owner, grace) {
                        return Ok(lease);
                    }
                    if !table.contains_key(&id) && table.len() < limits.max_sessions {
                        table.insert(id, Self::entry(service, owner, grace, handler));
                        tracing::info!(session = %id, service, "session adopted from another server");
                        return Ok(self.lease(id, grace, true));
                    }
                }
            }
        }
        let id = {
            let mut table = self.lock();
            if table.len() >= limits.max_sessions {
                return Err(TooManySessions);
            }
            let id = loop {
                let id = SessionId::random().ok_or(TooManySessions)?;
                if !table.contains_key(&id) {
                    break id;
                }
            };
            table.insert(id, Self::entry(service, owner.clone(), grace, handler));
            id
        };
        handler.session_started(&id, &owner);
        Ok(self.lease(id, grace, false))
    }

    fn entry(service: &str, owner: String, grace: Duration, handler: &Arc<dyn Service>) -> Entry {
        Entry {
            service: service.to_owned(),
            owner,
            grace,
            open: 1,
            epoch: 0,
            handler: Arc::clone(handler),
        }
    }

    fn resume_local(
        self: &Arc<Self>,
        id: SessionId,
        service: &str,
        owner: &str,
        grace: Duration,
    ) -> Option<SessionLease> {
        let mut table = self.lock();
        self.resume_in(&mut table, id, service, owner, grace)
    }

    fn resume_in(
        self: &Arc<Self>,
        table: &mut HashMap<SessionId, Entry>,
        id: SessionId,
        service: &str,
        owner: &str,
        grace: Duration,
    ) -> Option<SessionLease> {
        let e = table.get_mut(&id)?;
        if e.service != service || e.owner != owner {
            return None;
        }
        e.open += 1;
        e.epoch += 1;
        e.grace = grace;
        Some(self.lease(id, grace, true))
    }

    fn lease(self: &Arc<Self>, id: SessionId, grace: Duration, resumed: bool) -> SessionLease {
        SessionLease {
            sessions: Arc::clone(self),
            id,
            grace,
            resumed,
            done: false,
        }
    }

    /// Ends `id` now, telling its service; nothing if it already ended.
    fn end(&self, id: &SessionId, why: &'static str) {
        let entry = self.lock().remove(id);
        if let Some(e) = entry {
            tracing::info!(session = %id, service = %e.service, why, "session ended");
            e.handler.session_ended(id);
        }
    }

    /// A connection of `id` closed without `close`: when it was the last, the grace timer
    /// starts.
    fn left(self: &Arc<Self>, id: SessionId) {
        let (epoch, grace) = {
            let mut table = self.lock();
            let Some(e) = table.get_mut(&id) else {
                return;
            };
            e.open = e.open.saturating_sub(1);
            if e.open > 0 {
                return;
            }
            e.epoch += 1;
            (e.epoch, e.grace)
        };
        let sessions = Arc::clone(self);
        let expire = move || {
            let expired = {
                let table = sessions.lock();
                table
                    .get(&id)
                    .is_some_and(|e| e.open == 0 && e.epoch == epoch)
            };
            if expired {
                sessions.end(&id, "grace expired without a connection");
            }
        };
        if grace.is_zero() {
            expire();
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    expire();
                });
            }
            Err(_) => expire(),
        }
    }
}

/// One open connection's hold on its session.
pub(crate) struct SessionLease {
    sessions: Arc<Sessions>,
    id: SessionId,
    grace: Duration,
    resumed: bool,
    done: bool,
}

impl fmt::Debug for SessionLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLease")
            .field("id", &self.id)
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl SessionLease {
    /// The session's id.
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// The grace the welcome announces.
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// True when the login resumed a live session.
    pub(crate) fn resumed(&self) -> bool {
        self.resumed
    }

    /// The client sent `close`: its session ends now.
    pub(crate) fn end(mut self) {
        self.done = true;
        self.sessions.end(&self.id, "the client closed");
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if !self.done {
            self.sessions.left(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{HandlerFuture, Session};
    use crate::users::CredentialKind;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<SessionId>>);

    impl Service for Recorder {
        fn start(self: Arc<Self>, _session: Session) -> HandlerFuture {
            Box::pin(async {})
        }
        fn session_ended(&self, id: &SessionId) {
            self.0.lock().unwrap().push(*id);
        }
    }

    fn user(name: &str) -> Identity {
        Identity::User {
            name: name.into(),
            credential: CredentialKind::Password,
            read_only: false,
        }
    }

    const MAX: Duration = Duration::from_secs(10);

    fn limits(max_sessions: usize) -> SessionLimits {
        SessionLimits {
            grace_max: MAX,
            max_sessions,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_resume_for_their_owner_and_end_after_grace_or_close() {
        let sessions = Arc::new(Sessions::default());
        let rec = Arc::new(Recorder::default());
        let handler: Arc<dyn Service> = rec.clone();
        let open = |req: &SessionRequest, who: &Identity, grace| {
            futures_util::FutureExt::now_or_never(sessions.open(
                "names",
                who,
                &handler,
                req,
                grace,
                limits(10),
            ))
            .expect("no adoption to wait for")
            .unwrap()
        };
        let alice = user("alice");
        let first = open(&SessionRequest::New, &alice, Some(Duration::from_secs(60)));
        assert_eq!(first.grace(), MAX, "clamped to the maximum");
        let id = first.id();
        assert_eq!(id.as_bytes().len(), SESSION_ID_LEN);
        assert!(id.owner_key() >= 1 << 63);
        drop(first);
        // Within the grace: resumed, the same id.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let again = open(
            &SessionRequest::Resume(id.as_bytes().to_vec()),
            &alice,
            None,
        );
        assert!(again.resumed() && again.id() == id);
        // The first timer fires now and must not end the resumed session.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sessions.len(), 1);
        assert!(rec.0.lock().unwrap().is_empty());
        // Another identity, or another service, gets a new session, never this one.
        let bob = open(
            &SessionRequest::Resume(id.as_bytes().to_vec()),
            &user("bob"),
            None,
        );
        assert!(!bob.resumed() && bob.id() != id);
        let pw = sessions
            .open(
                "other",
                &Identity::ServicePassword,
                &handler,
                &SessionRequest::Resume(id.as_bytes().to_vec()),
                None,
                limits(10),
            )
            .await
            .unwrap();
        assert!(!pw.resumed());
        let junk = open(&SessionRequest::Resume(b"nonsense".to_vec()), &alice, None);
        assert!(!junk.resumed());
        // Lost without close: ends after the grace, and the service hears of it once.
        drop(again);
        tokio::time::sleep(MAX + Duration::from_millis(10)).await;
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[id]);
        let late = open(
            &SessionRequest::Resume(id.as_bytes().to_vec()),
            &alice,
            None,
        );
        assert!(!late.resumed(), "an ended session is not resumed");
        // close ends at once.
        let closing = late.id();
        late.end();
        assert!(rec.0.lock().unwrap().contains(&closing));
        drop((bob, pw, junk));
    }

    #[tokio::test]
    async fn the_table_is_bounded() {
        let sessions = Arc::new(Sessions::default());
        let handler: Arc<dyn Service> = Arc::new(Recorder::default());
        let new = || {
            sessions.open(
                "s",
                &Identity::ServicePassword,
                &handler,
                &SessionRequest::New,
                None,
                limits(2),
            )
        };
        let (a, b) = (new().await.unwrap(), new().await.unwrap());
        assert!(new().await.is_err());
        // A resume of a live one is still fine at the bound.
        let again = sessions
            .open(
                "s",
                &Identity::ServicePassword,
                &handler,
                &SessionRequest::Resume(a.id().as_bytes().to_vec()),
                None,
                limits(2),
            )
            .await
            .unwrap();
        assert!(again.resumed());
        drop((a, b, again));
    }
}
