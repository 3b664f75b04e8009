//! [`ReconnectingChannel`]: a channel that survives the network, for
//! [`ConnectOptions::reconnect`](crate::ConnectOptions::reconnect).
//!
//! One supervisor task owns the current [`Channel`]. When its connection is lost it logs
//! in again with the same credential, to the addresses in turn, resuming the session
//! (PROTOCOL.md 8) so that what belongs to it (a name server's `#{owner => session}`
//! names) is kept; between attempts it waits with full jitter, as async-nats and the AWS
//! architecture blog's "exponential backoff and jitter" do: the first retry at once, then a
//! random delay up to `min(max_delay, base_delay * 2^n)`. A failed login, `{error,
//! revoked}`, the client's own `close`, or an exhausted limit end it for good.
//!
//! What callers see:
//! - a call made while reconnecting waits (within its own timeout) and is sent once
//!   connected; a call whose connection is lost after it was queued fails with
//!   [`Error::MaybeRan`], unless it was made with
//!   [`rpc_idempotent`](ReconnectingChannel::rpc_idempotent), which sends it again;
//! - a cast made while disconnected waits in a bounded queue (past it,
//!   [`Error::CastQueueFull`]) and goes out, in order, before anything else once connected;
//! - pushes are forwarded once each, from whichever connection received them;
//! - [`state`](ReconnectingChannel::state) and [`events`](ReconnectingChannel::events) say
//!   what happens; [`closed`](ReconnectingChannel::closed) resolves only at the end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lib_chan_protocol::Term;
use tokio::sync::{broadcast, mpsc, watch};

use crate::channel::Channel;
use crate::error::{CloseReason, Error};
use crate::login::Login;
use crate::options::{ConnectOptions, SessionRequest};
use crate::ErrorReason;

/// How a [`ReconnectingChannel`] retries. The defaults: first retry at once, then up to
/// 100 ms doubling to at most 5 s, attempts unlimited, 1024 casts queued.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) cast_queue: usize,
    pub(crate) addresses: Vec<(String, u16)>,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
            cast_queue: 1024,
            addresses: Vec::new(),
        }
    }
}

impl ReconnectPolicy {
    /// The defaults.
    pub fn new() -> ReconnectPolicy {
        ReconnectPolicy::default()
    }

    /// The delay before the second retry (doubling with each further one).
    pub fn base_delay(mut self, d: Duration) -> ReconnectPolicy {
        self.base_delay = d;
        self
    }

    /// The longest delay between retries.
    pub fn max_delay(mut self, d: Duration) -> ReconnectPolicy {
        self.max_delay = d;
        self
    }

    /// Give up after this many failed attempts in a row (default: never).
    pub fn max_attempts(mut self, n: u32) -> ReconnectPolicy {
        self.max_attempts = Some(n);
        self
    }

    /// How many casts may wait while disconnected (default 1024).
    pub fn cast_queue(mut self, n: usize) -> ReconnectPolicy {
        self.cast_queue = n;
        self
    }

    /// Other channel servers (`host:port`) to try, in turn after the first, when a
    /// connection is lost: servers that share a Redis name store share sessions too.
    ///
    /// # Errors
    /// [`Error::Config`] for an entry that is not `host:port`.
    pub fn addresses<I, S>(mut self, addresses: I) -> Result<ReconnectPolicy, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in addresses {
            let a = a.as_ref();
            let (host, port) = a
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                .ok_or_else(|| Error::Config(format!("{a:?} is not host:port")))?;
            self.addresses.push((host.to_owned(), port));
        }
        Ok(self)
    }

    /// The delay before attempt `n` (0-based) of a reconnection: 0 for the first, then a
    /// uniformly random delay up to `min(max_delay, base_delay * 2^(n-1))`.
    pub fn delay(&self, n: u32, random: u64) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let cap = self
            .base_delay
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
    }
}

/// Where a [`ReconnectingChannel`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelState {
    /// Connected to `address`.
    Connected {
        /// `host:port`.
        address: String,
    },
    /// Lost its connection; attempt `attempt` (1-based) comes after `delay`.
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// Ended for good.
    Closed(CloseReason),
}

/// What happened to a [`ReconnectingChannel`], from [`ReconnectingChannel::events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// Reconnected to `host:port`.
    Connected(String),
    /// The connection was lost, for this reason.
    Disconnected(CloseReason),
    /// The server said it is shutting down (`{error, shutdown}`): reconnecting.
    ServerShuttingDown,
    /// Reconnected into the same session: what belongs to it was kept.
    SessionResumed,
    /// Reconnected, but the session had ended (its grace passed, or another server):
    /// what belonged to it is gone; a new session started.
    SessionLost,
}

struct Shared {
    policy: ReconnectPolicy,
    state: watch::Receiver<ChannelState>,
    /// The live channel, if connected; the casts waiting, if not. One lock, so that a
    /// cast either finds the channel or is queued before the supervisor drains the queue.
    live: Mutex<Live>,
    current: watch::Receiver<Option<Channel>>,
    pushes: tokio::sync::Mutex<mpsc::Receiver<Term>>,
    events: broadcast::Sender<ChannelEvent>,
    stop: watch::Sender<bool>,
    rpc_timeout: Duration,
}

#[derive(Default)]
struct Live {
    channel: Option<Channel>,
    casts: VecDeque<Term>,
}

/// A channel that reconnects: see the module docs. Cheap to clone; the last clone
/// dropped closes it.
#[derive(Clone)]
pub struct ReconnectingChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReconnectingChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingChannel")
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

/// What the supervisor needs to log in again.
struct Target {
    opts: ConnectOptions,
    addresses: Vec<(String, u16)>,
    service: String,
    login: Login,
    args: Term,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

impl ReconnectingChannel {
    /// Connects (the first connection must succeed: its error is returned) and starts the
    /// supervisor.
    pub(crate) async fn connect(
        opts: &ConnectOptions,
        policy: ReconnectPolicy,
        host: &str,
        port: u16,
        service: &str,
        login: &Login,
        args: Term,
    ) -> Result<ReconnectingChannel, Error> {
        let mut addresses = vec![(host.to_owned(), port)];
        addresses.extend(policy.addresses.iter().cloned());
        // A session unless the caller chose one: it is what makes a reconnection keep
        // what belongs to the client.
        let mut opts = opts.clone();
        opts.reconnect = None;
        if opts.session.is_none() {
            opts.session = Some(SessionRequest::New);
        }
        let first = opts
            .connect_with(host, port, service, login, args.clone())
            .await?;
        let (state_tx, state) = watch::channel(ChannelState::Connected {
            address: format!("{host}:{port}"),
        });
        let (current_tx, current) = watch::channel(Some(first.clone()));
        let (push_tx, push_rx) = mpsc::channel(crate::channel::PUSH_QUEUE);
        let (events, _) = broadcast::channel(64);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            rpc_timeout: opts.rpc_timeout,
            policy,
            state,
            live: Mutex::new(Live {
                channel: Some(first.clone()),
                casts: VecDeque::new(),
            }),
            current,
            pushes: tokio::sync::Mutex::new(push_rx),
            events: events.clone(),
            stop,
        });
        let target = Target {
            opts,
            addresses,
            service: service.to_owned(),
            login: login.clone(),
            args,
        };
        tokio::spawn(supervise(
            Arc::downgrade(&shared),
            target,
            first,
            state_tx,
            current_tx,
            push_tx,
            events,
            stopped,
        ));
        Ok(ReconnectingChannel { shared })
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.shared.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where it is now.
    pub fn state(&self) -> ChannelState {
        self.shared.state.borrow().clone()
    }

    /// The events from now on (a lagging receiver loses the oldest).
    pub fn events(&self) -> broadcast::Receiver<ChannelEvent> {
        self.shared.events.subscribe()
    }

    /// The session id of the current connection.
    pub fn session_id(&self) -> Option<Vec<u8>> {
        self.shared
            .current
            .borrow()
            .as_ref()
            .and_then(|c| c.session_id().map(<[u8]>::to_vec))
    }

    /// Sends `{send, Msg}`; while disconnected, queues it (see the module docs).
    ///
    /// # Errors
    /// [`Error::CastQueueFull`], [`Error::Closed`] once ended, [`Error::Encode`].
    pub async fn cast(&self, msg: Term) -> Result<(), Error> {
        let channel = {
            let mut live = self.live();
            if let ChannelState::Closed(reason) = &*self.shared.state.borrow() {
                return Err(Error::Closed(reason.clone()));
            }
            match &live.channel {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    if live.casts.len() >= self.shared.policy.cast_queue {
                        return Err(Error::CastQueueFull(self.shared.policy.cast_queue));
                    }
                    live.casts.push_back(msg);
                    return Ok(());
                }
            }
        };
        channel.cast(msg).await
    }

    /// [`Channel::rpc`] through whatever connection is live, waiting for one within the
    /// rpc timeout. A call whose connection is lost after it was sent fails with
    /// [`Error::MaybeRan`].
    ///
    /// # Errors
    /// As [`Channel::rpc`], plus [`Error::MaybeRan`].
    pub async fn rpc(&self, req: Term) -> Result<Term, Error> {
        self.call(req, false, self.shared.rpc_timeout).await
    }

    /// [`rpc`](Self::rpc) for a request that is safe to run twice (a lookup, a store of
    /// the same value): when the connection is lost before its answer, it is sent again
    /// after the reconnection.
    ///
    /// # Errors
    /// As [`Channel::rpc`].
    pub async fn rpc_idempotent(&self, req: Term) -> Result<Term, Error> {
        self.call(req, true, self.shared.rpc_timeout).await
    }

    async fn call(&self, req: Term, idempotent: bool, timeout: Duration) -> Result<Term, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let channel = tokio::time::timeout_at(deadline, self.connected())
                .await
                .map_err(|_| Error::Timeout("rpc"))??;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match channel.rpc_sent(req.clone(), left).await {
                Ok(answer) => return Ok(answer),
                // Never queued: the connection was gone already. Wait for the next one
                // (yielding, so that the supervisor can notice the loss meanwhile).
                Err((Error::Closed(_), false)) => tokio::task::yield_now().await,
                Err((Error::Closed(_), true)) if idempotent => tokio::task::yield_now().await,
                Err((Error::Closed(_), true)) => return Err(Error::MaybeRan("the call")),
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// The live channel, waiting for a reconnection; `Err` once ended.
    async fn connected(&self) -> Result<Channel, Error> {
        let mut current = self.shared.current.clone();
        let mut state = self.shared.state.clone();
        loop {
            if let ChannelState::Closed(reason) = &*state.borrow() {
                return Err(Error::Closed(reason.clone()));
            }
            if let Some(c) = current.borrow_and_update().as_ref() {
                if !c.is_closed() {
                    return Ok(c.clone());
                }
            }
            tokio::select! {
                r = current.changed() => if r.is_err() { return Err(Error::Closed(CloseReason::ClosedByClient)) },
                r = state.changed() => if r.is_err() { return Err(Error::Closed(CloseReason::ClosedByClient)) },
            }
        }
    }

    /// The next push, from any of its connections, each delivered once; `None` once
    /// ended and every push was received.
    pub async fn recv(&self) -> Option<Term> {
        self.shared.pushes.lock().await.recv().await
    }

    /// Resolves when the channel has ended for good, with the reason.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.shared.state.clone();
        loop {
            if let ChannelState::Closed(reason) = &*state.borrow_and_update() {
                return reason.clone();
            }
            if state.changed().await.is_err() {
                return CloseReason::ClosedByClient;
            }
        }
    }

    /// Ends it: the live connection is closed in order (`close` ends the session), and no
    /// reconnection follows.
    pub async fn close(&self) {
        self.shared.stop.send_replace(true);
        let channel = self.live().channel.clone();
        if let Some(c) = channel {
            c.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), self.closed()).await;
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Resolves once the channel is to stop (the guard of `wait_for` is not kept across
/// awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether a lost connection's reason ends the channel for good.
fn is_final(reason: &CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::ClosedByClient | CloseReason::ServerError(ErrorReason::Revoked)
    )
}

/// Whether a failed reconnection attempt ends the channel for good.
fn is_final_error(e: &Error) -> bool {
    matches!(
        e,
        Error::AuthFailed | Error::LoginFailed { .. } | Error::Config(_)
    )
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: std::sync::Weak<Shared>,
    mut target: Target,
    first: Channel,
    state: watch::Sender<ChannelState>,
    current: watch::Sender<Option<Channel>>,
    pushes: mpsc::Sender<Term>,
    events: broadcast::Sender<ChannelEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut channel = first;
    let mut address = 0usize;
    loop {
        // Forward pushes until the connection ends.
        let reason = loop {
            tokio::select! {
                push = channel.recv() => match push {
                    Some(p) => {
                        if pushes.send(p).await.is_err() {
                            channel.close().await;
                            return;
                        }
                    }
                    None => break channel.closed().await,
                },
                () = stopped(&mut stop) => {
                    channel.close().await;
                    state.send_replace(ChannelState::Closed(CloseReason::ClosedByClient));
                    return;
                }
            }
        };
        let Some(shared_now) = shared.upgrade() else {
            return;
        };
        shared_now
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .channel = None;
        current.send_replace(None);
        if *stop.borrow() || is_final(&reason) {
            state.send_replace(ChannelState::Closed(reason));
            return;
        }
        let _ = events.send(ChannelEvent::Disconnected(reason.clone()));
        if reason == CloseReason::ServerError(ErrorReason::Shutdown) {
            let _ = events.send(ChannelEvent::ServerShuttingDown);
        }
        let old_session = channel.session_id().map(<[u8]>::to_vec);
        if let Some(id) = &old_session {
            target.opts.session = Some(SessionRequest::Resume(id.clone()));
        }
        // Reconnect.
        let policy = shared_now.policy.clone();
        drop(shared_now);
        let mut attempt: u32 = 0;
        let next = loop {
            let delay = policy.delay(attempt, random_u64());
            state.send_replace(ChannelState::Reconnecting {
                attempt: attempt + 1,
                delay,
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut stop) => {
                    state.send_replace(ChannelState::Closed(CloseReason::ClosedByClient));
                    return;
                }
            }
            let (host, port) = target.addresses[address % target.addresses.len()].clone();
            let result = tokio::select! {
                r = target.opts.connect_with(&host, port, &target.service, &target.login, target.args.clone()) => r,
                () = stopped(&mut stop) => {
                    state.send_replace(ChannelState::Closed(CloseReason::ClosedByClient));
                    return;
                }
            };
            match result {
                Ok(c) => break (c, format!("{host}:{port}")),
                Err(e) if is_final_error(&e) => {
                    tracing::warn!(address = %format!("{host}:{port}"), error = %e, "reconnection refused; giving up");
                    state.send_replace(ChannelState::Closed(CloseReason::ConnectionLost(format!(
                        "reconnecting: {e}"
                    ))));
                    return;
                }
                Err(e) => {
                    tracing::debug!(address = %format!("{host}:{port}"), error = %e, attempt, "reconnection failed");
                    attempt += 1;
                    address += 1;
                    if policy.max_attempts.is_some_and(|m| attempt >= m) {
                        state.send_replace(ChannelState::Closed(CloseReason::ConnectionLost(
                            format!("gave up after {attempt} attempts: {e}"),
                        )));
                        return;
                    }
                }
            }
        };
        let (next, at) = next;
        match (&old_session, next.session_id()) {
            (Some(old), Some(new)) if old.as_slice() == new => {
                let _ = events.send(ChannelEvent::SessionResumed);
            }
            (Some(_), _) => {
                let _ = events.send(ChannelEvent::SessionLost);
            }
            _ => {}
        }
        let Some(shared_now) = shared.upgrade() else {
            next.close().await;
            return;
        };
        // The casts made while disconnected go first, in order; the channel becomes
        // visible under the same lock, so no cast slips between.
        let queued: Vec<Term> = {
            let mut live = shared_now.live.lock().unwrap_or_else(|p| p.into_inner());
            live.channel = Some(next.clone());
            live.casts.drain(..).collect()
        };
        for c in queued {
            if let Err(e) = next.cast(c).await {
                tracing::warn!(error = %e, "a queued cast could not be sent");
            }
        }
        drop(shared_now);
        current.send_replace(Some(next.clone()));
        state.send_replace(ChannelState::Connected {
            address: at.clone(),
        });
        let _ = events.send(ChannelEvent::Connected(at));
        channel = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_jittered_and_capped() {
        let p = ReconnectPolicy::new()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        assert_eq!(p.delay(0, u64::MAX), Duration::ZERO);
        // The cap doubles: 100 ms, 200 ms, 400 ms, 800 ms, then 1 s.
        for (n, cap_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let cap = Duration::from_millis(cap_ms);
            assert_eq!(p.delay(n, cap.as_nanos() as u64), cap, "the cap is reached");
            for r in [0u64, 1, 12_345_678, u64::MAX] {
                assert!(p.delay(n, r) <= cap, "attempt {n}");
            }
        }
        // Spread: different random inputs give different delays.
        let spread: std::collections::HashSet<_> =
            (0..50u64).map(|i| p.delay(4, i * 7_919_113)).collect();
        assert!(spread.len() > 40);
    }

    #[test]
    fn addresses_parse_and_bad_ones_are_refused() {
        let p = ReconnectPolicy::new()
            .addresses(["a.example:1234", "[::1]:99"])
            .unwrap();
        assert_eq!(
            p.addresses,
            [("a.example".to_owned(), 1234), ("::1".to_owned(), 99)]
        );
        assert!(ReconnectPolicy::new().addresses(["nope"]).is_err());
    }
}
