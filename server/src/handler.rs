//! The handler API: what a service author writes against.
//!
//! In the book, lib_chan spawns the service's handler for each connection and puts a
//! *middle man* process between it and the socket: the handler receives `{chan, MM, X}`
//! and `{chan_closed, MM}`, and answers with `MM ! {send, Y}` or `MM ! close`. Here:
//!
//! - a [`Service`] is made once per `[[service]]` entry (so state it holds is shared by
//!   all its connections) and [`Service::start`]s one handler per connection, which runs
//!   in its own task;
//! - the handler reads [`Event`]s from its [`Session`]: [`Event::Send`] (`{chan, MM, X}`),
//!   [`Event::Call`] (a request with a [`Call`] to answer once), and [`Event::Closed`]
//!   (`{chan_closed, MM}`);
//! - it talks back through the [`MiddleMan`] handle, which it may clone and use from any
//!   task: [`MiddleMan::send`] pushes `{send, Y}`, [`MiddleMan::close`] ends the channel.
//!
//! A [`Call`] dropped without an answer is answered `{error, Ref, no_reply}` (or
//! `handler_crashed` when dropped while the handler panics), so no client waits forever.
//!
//! ```
//! use std::sync::Arc;
//! use lib_chan_server::handler::{Event, HandlerFuture, Service, Session};
//!
//! /// Replies to every call with its request, and echoes every send.
//! struct Echo;
//!
//! impl Service for Echo {
//!     fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
//!         Box::pin(async move {
//!             while let Some(event) = session.next_event().await {
//!                 match event {
//!                     Event::Send(x) => {
//!                         let _ = session.middle_man().send(x).await;
//!                     }
//!                     Event::Call(call) => {
//!                         let request = call.request().clone();
//!                         call.reply(request);
//!                     }
//!                     Event::Closed => break,
//!                 }
//!             }
//!         })
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use lib_chan_protocol::message::Ref;
use lib_chan_protocol::Term;

pub use crate::users::{CredentialKind, Identity};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The future a handler runs as, in its own task.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A service: one value per `[[service]]` entry, shared by all its connections.
pub trait Service: Send + Sync + 'static {
    /// Runs the handler for one authenticated connection. The channel stays open until
    /// the returned future ends, the handler calls [`MiddleMan::close`], or the client
    /// goes away.
    fn start(self: Arc<Self>, session: Session) -> HandlerFuture;

    /// What the operator's console (`mod_admin`'s `info`) shows of this service, e.g. a
    /// name server's store and whether it answers; `None` (the default) shows nothing.
    fn status(&self) -> Option<StatusFuture> {
        None
    }

    /// Whether the service can take a new connection now, asked after a successful
    /// login and before the welcome. `None` (the default): always. A future resolving to
    /// `false`, or not resolving before the handshake deadline, makes the client get
    /// `{error, busy}` instead of a welcome (a port program that is restarting, say).
    fn ready(&self) -> Option<ReadyFuture> {
        None
    }

    /// Stops what the service runs on its own (a port program), when the server shuts
    /// down or a reload drops the service: given `grace` to finish. `None` (the default):
    /// nothing to stop.
    fn stop(&self, grace: std::time::Duration) -> Option<ReadyFuture> {
        let _ = grace;
        None
    }

    /// A session of this service ended (PROTOCOL.md 8): its client sent `close`, or no
    /// connection of it was open for its grace. Called once per session, from the task
    /// that ended it; must not block. A connection closing is [`Event::Closed`] on that
    /// connection; this is the end of what belongs to the session (the name server drops
    /// its `#{owner => session}` names here). The default does nothing.
    fn session_ended(&self, id: &crate::sessions::SessionId) {
        let _ = id;
    }

    /// A session of this service started, or was resumed, on this server, for `owner`
    /// (`service_password` or `user:NAME`). A service whose state is shared by several
    /// channel servers (a name server on Redis) records that this server holds it, so
    /// that another server may adopt it. The default does nothing.
    fn session_started(&self, id: &crate::sessions::SessionId, owner: &str) {
        let _ = (id, owner);
    }

    /// A client asks to resume session `id`, unknown on this server, as `owner`: a
    /// service shared with other channel servers answers `true` when one of them started
    /// it for that owner and it has not ended (it is then held here). `None` (the
    /// default): no other server's sessions are known.
    fn adopt_session(&self, id: &crate::sessions::SessionId, owner: &str) -> Option<ReadyFuture> {
        let _ = (id, owner);
        None
    }

    /// Answers a call at once, inside the connection's middle man task, when the answer
    /// is ready without waiting (a lookup in memory): `Some(reply)` goes out as
    /// `{reply, Ref, Reply}` with no hop to the handler's task and no wake-up of it;
    /// `None` (the default) hands the call to the handler as usual.
    ///
    /// Asked only while the handler has taken every earlier event of this connection
    /// and waits for the next, and nothing it queued is still unwritten, so the answer
    /// sees, and follows on the wire, all that the connection did before. It runs while
    /// the connection reads nothing: it must not block or take long. A service whose
    /// handler hands work to other tasks must answer here only what that work cannot
    /// change.
    fn answer_now(&self, request: &Term, identity: &Identity) -> Option<Term> {
        let _ = (request, identity);
        None
    }

    /// Counters of its own for the metrics endpoint, as (event, count): rendered as
    /// `lib_chan_service_events_total{service="NAME",event="EVENT"}`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The future of [`Service::ready`] and [`Service::stop`].
pub type ReadyFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// The future of [`Service::status`].
pub type StatusFuture = Pin<Box<dyn Future<Output = Term> + Send + 'static>>;

/// What a handler receives.
#[derive(Debug)]
pub enum Event {
    /// A one-way message: lib_chan's `{chan, MM, X}`.
    Send(Term),
    /// A request to answer once.
    Call(Call),
    /// The client closed the channel or went away: lib_chan's `{chan_closed, MM}`. After
    /// it [`Session::next_event`] returns `None`.
    Closed,
}

/// One connection, as its handler sees it.
#[derive(Debug)]
pub struct Session {
    pub(crate) middle_man: MiddleMan,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) args_c: Term,
    pub(crate) args_s: Term,
    pub(crate) identity: Arc<Identity>,
    pub(crate) session_id: Option<crate::sessions::SessionId>,
    /// How far the handler got, shared with the middle man (for [`Service::answer_now`]).
    pub(crate) progress: HandlerProgress,
}

/// How many events a handler has finished with: every event it took before its latest
/// call of [`Session::next_event`]. The middle man compares it with the number it
/// handed over to know that the handler is idle, waiting for the next.
#[derive(Debug, Default)]
pub(crate) struct HandlerProgress {
    /// Events taken from the queue so far (the handler's own count).
    taken: u64,
    /// `taken` as of the handler's latest wait for an event, published to the middle man.
    finished: Arc<AtomicU64>,
}

impl HandlerProgress {
    /// The shared counter the middle man reads.
    pub(crate) fn finished(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.finished)
    }
}

impl Session {
    /// The session this connection belongs to, when the client asked for one
    /// (PROTOCOL.md 8): the same id on every connection that resumed it.
    pub fn session_id(&self) -> Option<crate::sessions::SessionId> {
        self.session_id
    }

    /// The next event; `None` once the channel is closed and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        // Asking for the next event means the handler is done with those it took:
        // published (Release) so the middle man sees their effects when it sees this.
        self.progress
            .finished
            .store(self.progress.taken, Ordering::Release);
        let event = self.events.recv().await;
        if event.is_some() {
            self.progress.taken += 1;
        }
        event
    }

    /// The handle to talk to the client through (lib_chan's `MM`).
    pub fn middle_man(&self) -> &MiddleMan {
        &self.middle_man
    }

    /// The client's `ArgsC` from `start_service`.
    pub fn args_c(&self) -> &Term {
        &self.args_c
    }

    /// The service's `ArgsS` from the config.
    pub fn args_s(&self) -> &Term {
        &self.args_s
    }

    /// Who logged in: the service password, or a named user with its credential kind and
    /// whether it may only read this service.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The same identity, shared (for tasks that outlive a borrow of the session).
    pub fn identity_arc(&self) -> Arc<Identity> {
        Arc::clone(&self.identity)
    }
}

/// What the middle man task writes, in the order handlers produced it.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// `{send, Y}`; the permit bounds how many pushes may wait unwritten.
    Push(Term, Option<OwnedSemaphorePermit>),
    /// `{reply, Ref, Y}`.
    Reply(Ref, Term),
    /// `{error, Ref, Reason}`.
    CallError(Ref, Term),
    /// `close`.
    Close,
    /// `{error, slow_consumer}`: the client does not read its pushes.
    SlowConsumer,
}

/// The channel is closed: nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel is closed")]
pub struct ChannelClosed;

/// Why [`MiddleMan::try_send`] could not queue a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The channel is closed.
    #[error("the channel is closed")]
    Closed,
    /// The outbound queue is full: the client is not reading fast enough.
    #[error("the outbound queue is full")]
    Full,
}

/// A handle on one connection's middle man: lib_chan's `MM`. Cheap to clone, usable
/// from any task.
#[derive(Clone)]
pub struct MiddleMan {
    pub(crate) inner: Arc<MiddleManShared>,
}

pub(crate) struct MiddleManShared {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) service: String,
    /// What the middle man is to write, in order.
    pub(crate) out: crate::outbound::OutQueue,
    /// One permit per push allowed to wait in the outbound queue.
    pub(crate) push_permits: Arc<Semaphore>,
    /// Encoded bytes queued and not yet written; the middle man stops handing the
    /// handler new requests while this is over the limit.
    pub(crate) queued_bytes: AtomicUsize,
    pub(crate) closed: AtomicBool,
}

impl fmt::Debug for MiddleMan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiddleMan")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("service", &self.inner.service)
            .finish()
    }
}

/// Connection ids, unique within the process.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection id, unique within the process.
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

impl MiddleMan {
    pub(crate) fn new(id: u64, peer: SocketAddr, service: String, queue: usize) -> MiddleMan {
        MiddleMan {
            inner: Arc::new(MiddleManShared {
                id,
                peer,
                service,
                out: crate::outbound::OutQueue::default(),
                push_permits: Arc::new(Semaphore::new(queue)),
                queued_bytes: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Pushes `{send, Y}` to the client, waiting while the outbound queue is full.
    ///
    /// # Errors
    /// [`ChannelClosed`] once the channel is closed.
    pub async fn send(&self, y: Term) -> Result<(), ChannelClosed> {
        let permit = Arc::clone(&self.inner.push_permits)
            .acquire_owned()
            .await
            .map_err(|_| ChannelClosed)?;
        self.queue(Outbound::Push(y, Some(permit)))
    }

    /// Pushes `{send, Y}` without waiting: for code that must not block, such as one
    /// connection notifying many others.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when the client is not keeping up (the caller may then
    /// [`close`](MiddleMan::close) it), [`TrySendError::Closed`] once closed.
    pub fn try_send(&self, y: Term) -> Result<(), TrySendError> {
        let permit = match Arc::clone(&self.inner.push_permits).try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed),
        };
        self.queue(Outbound::Push(y, Some(permit)))
            .map_err(|_| TrySendError::Closed)
    }

    /// Pushes `{send, Y}` without waiting, or, when the client is not keeping up (its
    /// push queue is full), ends the connection with `{error, slow_consumer}`: what a
    /// service that notifies many connections at once wants, so that one slow reader
    /// neither blocks it nor grows its memory. Returns whether the push was queued.
    pub fn try_send_or_close(&self, y: Term) -> bool {
        match self.try_send(y) {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                tracing::warn!(peer = %self.peer(), service = %self.service(), "client not reading its pushes; closing it as a slow consumer");
                let _ = self.queue(Outbound::SlowConsumer);
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Closes the channel: the client receives `close`, and the connection ends.
    pub fn close(&self) {
        let _ = self.queue(Outbound::Close);
    }

    /// True once the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The service name the client connected to.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// A number identifying this connection within the server process.
    pub fn connection_id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn queue(&self, o: Outbound) -> Result<(), ChannelClosed> {
        if self.is_closed() {
            return Err(ChannelClosed);
        }
        let bytes = match &o {
            Outbound::Push(t, _) | Outbound::Reply(_, t) | Outbound::CallError(_, t) => {
                lib_chan_protocol::etf::encoded_len(t)
            }
            Outbound::Close | Outbound::SlowConsumer => 0,
        };
        self.inner.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.out.push((o, bytes));
        Ok(())
    }

    /// Encoded bytes queued for the client and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.push_permits.close();
    }
}

/// A request waiting for its answer. Answer it once with [`Call::reply`] or
/// [`Call::fail`]; from any task.
pub struct Call {
    id: Ref,
    request: Term,
    middle_man: Option<MiddleMan>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .field("request", &self.request)
            .finish()
    }
}

impl Call {
    pub(crate) fn new(id: Ref, request: Term, middle_man: MiddleMan) -> Call {
        Call {
            id,
            request,
            middle_man: Some(middle_man),
        }
    }

    /// The request, `X` in `{call, Ref, X}`.
    pub fn request(&self) -> &Term {
        &self.request
    }

    /// The reference the client picked.
    pub fn id(&self) -> Ref {
        self.id
    }

    /// Answers with `{reply, Ref, Y}`.
    pub fn reply(mut self, y: Term) {
        if let Some(mm) = self.middle_man.take() {
            let _ = mm.queue(Outbound::Reply(self.id, y));
        }
    }

    /// Answers with `{error, Ref, Reason}`.
    pub fn fail(mut self, reason: Term) {
        if let Some(mm) = self.middle_man.take() {
            let _ = mm.queue(Outbound::CallError(self.id, reason));
        }
    }

    /// Answers with `{error, Ref, {bad_request, X}}`: the service does not understand X.
    pub fn bad_request(self) {
        let reason = Term::tuple([Term::atom("bad_request"), self.request.clone()]);
        self.fail(reason);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(mm) = self.middle_man.take() {
            let reason = if std::thread::panicking() {
                "handler_crashed"
            } else {
                "no_reply"
            };
            let _ = mm.queue(Outbound::CallError(self.id, Term::atom(reason)));
        }
    }
}
