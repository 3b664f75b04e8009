//! The middle man: one task per authenticated connection (lib_chan's `lib_chan_mm`).
//!
//! It owns the TLS stream. Frames from the client become [`Event`]s for the handler,
//! which runs in a task of its own; what the handler queues on its [`MiddleMan`] handle
//! (pushes, replies, call errors, close) becomes frames, written in the order the handler
//! produced them, with every frame that is ready coalesced into one write.
//!
//! The task tracks the calls in flight, so that when the handler ends, panics or closes,
//! each unanswered call still gets `{error, Ref, Reason}` before `close`. Connection-level
//! errors end with `{error, Reason}` and the lingering close of PROTOCOL.md section 6.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::message::{ClientMessage, ErrorReason, ReadError, Ref, ServerMessage};
use lib_chan_protocol::{FrameCodec, FrameError, Term};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::connections::ConnCounters;
use crate::handler::{Call, Event, HandlerProgress, MiddleMan, Outbound, Service, Session};
use crate::metrics::ServiceMetrics;
use crate::stats::protocol_error;

/// Events queued for the handler before the middle man stops reading the socket.
const EVENT_QUEUE: usize = 64;
/// Frames already in the read buffer handled in one pass of the loop, before outbound
/// answers and the other branches get their turn.
const FRAMES_PER_PASS: usize = 32;
/// Outbound items encoded in one go at most, before the loop looks at input again.
const MAX_BATCH: usize = 256;
/// A read or write buffer grown past this is released once empty.
const KEEP_BUFFER: usize = 256 * 1024;
/// Bytes of encoded frames after which the middle man writes without waiting for the
/// end of the batch.
const FLUSH_AT: usize = 64 * 1024;
/// How long the handler may run on after its channel closed before it is aborted.
const HANDLER_EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client to close its side.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Why a connection ended; logged, and counted by the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `close`.
    ClientClosed,
    /// The client went away (EOF, reset, TLS error) without `close`.
    ClientGone(String),
    /// The handler called `close`.
    HandlerClosed,
    /// The handler's future ended.
    HandlerEnded,
    /// The handler panicked.
    HandlerCrashed,
    /// The client broke the protocol; the reason was sent to it.
    Protocol(ErrorReason),
    /// The server shut down.
    Shutdown,
}

impl CloseReason {
    /// A short code for logs and counters, e.g. `client_closed`.
    pub fn code(&self) -> String {
        match self {
            CloseReason::ClientClosed => "client_closed".into(),
            CloseReason::ClientGone(_) => "client_gone".into(),
            CloseReason::HandlerClosed => "handler_closed".into(),
            CloseReason::HandlerEnded => "handler_ended".into(),
            CloseReason::HandlerCrashed => "handler_crashed".into(),
            CloseReason::Protocol(r) => r.to_string(),
            CloseReason::Shutdown => "shutdown".into(),
        }
    }
}

/// Everything the middle man needs besides the stream.
pub(crate) struct Setup {
    /// The connection id (the one the login's audit line gave).
    pub(crate) id: u64,
    /// Who logged in.
    pub(crate) identity: Arc<crate::users::Identity>,
    pub(crate) service: Arc<dyn Service>,
    pub(crate) service_name: String,
    pub(crate) args_c: Term,
    pub(crate) args_s: Term,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) limits: Arc<Limits>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when a config reload revokes the service or password this connection
    /// authenticated with: the connection ends with `{error, revoked}`.
    pub(crate) revoked: CancellationToken,
    /// The service's counters (atomics only).
    pub(crate) metrics: Arc<ServiceMetrics>,
    /// This connection's counters, read by the operator's console.
    pub(crate) counters: Arc<ConnCounters>,
    /// Its hold on the session it belongs to, if the client asked for one: a client's
    /// `close` ends the session once the handler has ended; any other end leaves the
    /// session its grace.
    pub(crate) session: Option<crate::sessions::SessionLease>,
}

/// Runs one connection from the welcome to the close, and says why it ended.
pub(crate) async fn run<S>(reader: FramedRead<S, FrameCodec>, setup: Setup) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let middle_man = MiddleMan::new(
        setup.id,
        setup.peer,
        setup.service_name,
        setup.limits.outbound_queue,
    );
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let progress = HandlerProgress::default();
    let handler_finished = progress.finished();
    let session = Session {
        middle_man: middle_man.clone(),
        events: events_rx,
        args_c: setup.args_c,
        args_s: setup.args_s,
        identity: Arc::clone(&setup.identity),
        session_id: setup.session.as_ref().map(|s| s.id()),
        progress,
    };
    let handler = tokio::spawn(Arc::clone(&setup.service).start(session));
    let mut conn = Connection {
        reader,
        // Allocated on the first write: idle connections hold no write buffer.
        write_buf: BytesMut::new(),
        middle_man,
        in_flight: HashMap::new(),
        read_at: std::time::Instant::now(),
        limits: setup.limits,
        metrics: setup.metrics,
        counters: setup.counters,
        session: setup.session,
        service: setup.service,
        identity: setup.identity,
        handed_over: 0,
        handler_finished,
        pass: PassTally::default(),
    };
    let reason = conn
        .serve(&events_tx, handler, setup.shutdown, setup.revoked)
        .await;
    // Boxed: the closing sequence is large and runs once; inline, its state would be
    // part of every connection's task allocation for the connection's whole life.
    Box::pin(conn.finish(reason, events_tx)).await
}

struct Connection<S> {
    reader: FramedRead<S, FrameCodec>,
    /// Frames encoded and not yet written; written and flushed once per batch.
    write_buf: BytesMut,
    middle_man: MiddleMan,
    /// Calls handed to the handler and not yet answered, with when each arrived.
    in_flight: HashMap<Ref, std::time::Instant>,
    /// When the frames being handled were read: one clock reading per pass of the
    /// loop, not one per call.
    read_at: std::time::Instant,
    limits: Arc<Limits>,
    metrics: Arc<ServiceMetrics>,
    counters: Arc<ConnCounters>,
    session: Option<crate::sessions::SessionLease>,
    /// The service, asked to answer calls at once ([`Service::answer_now`]).
    service: Arc<dyn Service>,
    identity: Arc<crate::users::Identity>,
    /// Events given to the handler so far.
    handed_over: u64,
    /// Events the handler has finished with (see [`HandlerProgress`]): when equal to
    /// `handed_over`, the handler is idle and a call may be answered here.
    handler_finished: Arc<std::sync::atomic::AtomicU64>,
    /// What the current pass over read frames counted (see [`Connection::settle_pass`]).
    pass: PassTally,
}

/// What one pass over the frames read counted, added to the shared counters at its end.
#[derive(Debug, Default)]
struct PassTally {
    /// Frame bytes read (length prefixes included).
    bytes: usize,
    /// Calls received.
    calls: u64,
    /// Calls answered in the middle man ([`Service::answer_now`]).
    answered: u64,
}

/// What ended the main loop, with what is needed to finish.
struct Ended {
    reason: CloseReason,
    handler: Option<JoinHandle<()>>,
}

/// A write that did not complete: the client is gone or not reading.
struct WriteFailed(CloseReason);

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn serve(
        &mut self,
        events_tx: &mpsc::Sender<Event>,
        mut handler: JoinHandle<()>,
        shutdown: CancellationToken,
        revoked: CancellationToken,
    ) -> Ended {
        // An event read from the socket that the handler's queue has no room for yet.
        // While it waits, the socket is not read: backpressure reaches the client.
        let mut pending: Option<Event> = None;
        let idle_timeout = self.limits.idle_timeout;
        let far = Duration::from_secs(86_400 * 365);
        let idle = sleep_until(Instant::now() + idle_timeout.unwrap_or(far));
        tokio::pin!(idle);
        let drain = sleep_until(Instant::now() + far);
        tokio::pin!(drain);
        // Made once, so that waiting on it costs a poll per loop and no registration.
        let revoked = revoked.cancelled_owned();
        tokio::pin!(revoked);
        // Made once, not per pass of the loop: registering a new waiter each time costs.
        let shutting_down = shutdown.cancelled_owned();
        tokio::pin!(shutting_down);
        // The same for the outbound queue's wake-up (renewed by `pop` when it fires);
        // through a handle of its own, as `self` is borrowed mutably in the loop.
        let outbound = Arc::clone(&self.middle_man.inner);
        let pushed = outbound.out.pushed();
        tokio::pin!(pushed);
        // Set once the connection is winding down (the client sent `close`, or the
        // server is shutting down): nothing more is read, calls in flight are still
        // answered until `shutdown_grace`, then the connection ends for this reason.
        let mut draining: Option<CloseReason> = None;

        let reason = 'serve: loop {
            if let Some(reason) = &draining {
                if self.in_flight.is_empty() && pending.is_none() {
                    break reason.clone();
                }
            }
            tokio::select! {
                // Outbound first: answering what was asked beats reading more.
                biased;
                first = outbound.out.pop(&mut pushed) => {
                    match self.write_outbound(first).await {
                        Ok(None) => {}
                        Ok(Some(reason)) => break reason,
                        Err(WriteFailed(r)) => break r,
                    }
                }
                result = &mut handler => {
                    let reason = match result {
                        Err(e) if e.is_panic() => CloseReason::HandlerCrashed,
                        _ => CloseReason::HandlerEnded,
                    };
                    return Ended { reason, handler: None };
                }
                // Hand over the next request only while the answers already queued
                // are within the byte budget: a client that pipelines calls and never
                // reads cannot make the server hold more than about that much.
                permit = events_tx.reserve(), if pending.is_some()
                    && self.middle_man.queued_bytes() <= self.limits.outbound_bytes => {
                    // An error means the handler dropped its session: it is ending, and
                    // the handler branch will see it.
                    if let (Ok(permit), Some(event)) = (permit, pending.take()) {
                        permit.send(event);
                        self.handed_over += 1;
                    }
                }
                () = &mut shutting_down, if draining.is_none() => {
                    draining = Some(CloseReason::Shutdown);
                    drain.as_mut().reset(Instant::now() + self.limits.shutdown_grace);
                }
                () = &mut drain, if draining.is_some() => {
                    break draining.take().unwrap_or(CloseReason::Shutdown);
                }
                // A config reload removed the service or changed its password: end now.
                () = &mut revoked => break CloseReason::Protocol(ErrorReason::Revoked),
                () = &mut idle, if idle_timeout.is_some() => {
                    break CloseReason::Protocol(ErrorReason::IdleTimeout);
                }
                frame = self.reader.next(), if pending.is_none() && draining.is_none() => {
                    if let Some(t) = idle_timeout {
                        idle.as_mut().reset(Instant::now() + t);
                    }
                    // This frame, then those already read into the buffer behind it
                    // (a pipelined burst), without a pass of the loop for each.
                    self.read_at = std::time::Instant::now();
                    let mut next = Some(frame);
                    let mut taken = 0;
                    while let Some(frame) = next.take() {
                        match self.on_frame(frame).await {
                            Ok(Some(event)) => pending = self.hand_over(events_tx, event),
                            Ok(None) => {}
                            // An orderly close: the calls sent before it are still answered.
                            Err(CloseReason::ClientClosed) => {
                                draining = Some(CloseReason::ClientClosed);
                                drain.as_mut().reset(Instant::now() + self.limits.shutdown_grace);
                                break;
                            }
                            Err(reason) => {
                                self.settle_pass();
                                break 'serve reason;
                            }
                        }
                        taken += 1;
                        if pending.is_none() && taken < FRAMES_PER_PASS {
                            next = self.buffered_frame();
                        }
                    }
                    self.settle_pass();
                }
                // Last, when nothing else is ready: write what the batch produced, so
                // that a burst of pipelined calls is answered with one write.
                () = std::future::ready(()), if !self.write_buf.is_empty() => {
                    if let Err(WriteFailed(r)) = self.flush().await {
                        break r;
                    }
                }
            }
        };
        Ended {
            reason,
            handler: Some(handler),
        }
    }

    /// Adds what this pass over the read frames counted to the service's and the
    /// connection's counters: a few shared atomic additions per pass, not per frame
    /// (the service's counters are shared by all its connections, on every core).
    fn settle_pass(&mut self) {
        let PassTally {
            bytes,
            calls,
            answered,
        } = std::mem::take(&mut self.pass);
        if bytes > 0 {
            self.metrics.received(bytes);
            self.counters.received(bytes);
        }
        if calls > 0 {
            self.metrics.calls_received(calls);
            self.counters.calls(calls);
        }
        if answered > 0 {
            self.metrics
                .calls_answered(answered, self.read_at.elapsed());
        }
    }

    /// The next frame if it is already whole in the read buffer; never reads the socket.
    fn buffered_frame(&mut self) -> Option<Option<Result<bytes::Bytes, FrameError>>> {
        // The codec holds only its limits, so a copy decodes exactly as the reader would.
        let mut codec = self.reader.decoder().clone();
        match codec.decode(self.reader.read_buffer_mut()) {
            Ok(Some(frame)) => Some(Some(Ok(frame))),
            Ok(None) => None,
            Err(e) => Some(Some(Err(e))),
        }
    }

    /// Gives `event` to the handler at once when its queue has room and the answers
    /// already queued are within the byte budget (saving a pass of the select loop per
    /// request); otherwise returns it, to wait in `pending` for the `reserve` branch.
    fn hand_over(&mut self, events_tx: &mpsc::Sender<Event>, event: Event) -> Option<Event> {
        if self.middle_man.queued_bytes() > self.limits.outbound_bytes {
            return Some(event);
        }
        match events_tx.try_send(event) {
            Ok(()) => {
                self.handed_over += 1;
                None
            }
            // Full: wait for room. Closed: the handler is ending; `reserve` fails at
            // once and drops the event, and the handler branch ends the connection.
            Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) => Some(event),
        }
    }

    /// Turns one frame (or the end of input) into an event for the handler, answers
    /// pings and over-limit calls itself, or says why the connection must end.
    async fn on_frame(
        &mut self,
        frame: Option<Result<bytes::Bytes, FrameError>>,
    ) -> Result<Option<Event>, CloseReason> {
        let payload = match frame {
            None => return Err(CloseReason::ClientGone("end of stream".into())),
            Some(Ok(p)) => {
                self.pass.bytes += p.len() + 4;
                p
            }
            Some(Err(FrameError::TooLarge { .. })) => {
                return Err(CloseReason::Protocol(ErrorReason::FrameTooLarge))
            }
            Some(Err(FrameError::Empty)) => {
                return Err(CloseReason::Protocol(ErrorReason::BadTerm))
            }
            Some(Err(e)) => return Err(CloseReason::ClientGone(e.to_string())),
        };
        let message = ClientMessage::decode(&payload).map_err(|e| match e {
            ReadError::Term(e) => {
                protocol_error!(peer = %self.middle_man.peer(), error = %e, "bad term from client");
                CloseReason::Protocol(ErrorReason::BadTerm)
            }
            ReadError::Message(e) => {
                // After authentication a short escaped snippet may be shown (MessageError
                // cuts it to about 80 characters).
                protocol_error!(peer = %self.middle_man.peer(), error = %e.to_string().escape_debug(), "bad message from client");
                CloseReason::Protocol(ErrorReason::BadMessage)
            }
        })?;
        match message {
            ClientMessage::Send(x) => Ok(Some(Event::Send(x))),
            ClientMessage::Call { id, body } => {
                self.pass.calls += 1;
                if self.in_flight.contains_key(&id) {
                    protocol_error!(peer = %self.middle_man.peer(), id, "call reuses a ref still in flight");
                    return Err(CloseReason::Protocol(ErrorReason::BadMessage));
                }
                if let Some(reply) = self.answer_now(&body) {
                    self.encode(ServerMessage::Reply { id, body: reply });
                    self.pass.answered += 1;
                    if self.write_buf.len() >= FLUSH_AT {
                        self.flush().await.map_err(|WriteFailed(r)| r)?;
                    }
                    return Ok(None);
                }
                if self.in_flight.len() >= self.limits.max_calls_in_flight {
                    self.write_now(ServerMessage::CallError {
                        id,
                        reason: Term::atom("busy"),
                    })
                    .await
                    .map_err(|WriteFailed(r)| r)?;
                    return Ok(None);
                }
                self.in_flight.insert(id, self.read_at);
                self.counters.set_in_flight(self.in_flight.len());
                Ok(Some(Event::Call(Call::new(
                    id,
                    body,
                    self.middle_man.clone(),
                ))))
            }
            ClientMessage::Ping(r) => {
                self.write_now(ServerMessage::Pong(r))
                    .await
                    .map_err(|WriteFailed(r)| r)?;
                Ok(None)
            }
            ClientMessage::Close => Err(CloseReason::ClientClosed),
        }
    }

    /// The service's immediate answer to a call ([`Service::answer_now`]), asked only
    /// when that keeps the connection's order: the handler has finished every event it
    /// was given, and everything it queued has been encoded.
    fn answer_now(&self, request: &Term) -> Option<Term> {
        let idle = self
            .handler_finished
            .load(std::sync::atomic::Ordering::Acquire)
            == self.handed_over;
        if !idle || !self.middle_man.inner.out.is_empty() {
            return None;
        }
        self.service.answer_now(request, &self.identity)
    }

    /// Encodes one server message into the write buffer. A handler's answer that cannot
    /// be sent (too large, NaN) becomes a call error rather than a broken connection.
    fn encode(&mut self, message: ServerMessage) {
        let codec = self.reader.decoder();
        let Err(e) = codec.encode_with(&mut self.write_buf, |out| message.encode_into(out)) else {
            return;
        };
        tracing::warn!(peer = %self.middle_man.peer(), error = %e, "handler produced a frame that cannot be sent");
        let id = match message {
            ServerMessage::Reply { id, .. } | ServerMessage::CallError { id, .. } => id,
            _ => return,
        };
        let fallback = ServerMessage::CallError {
            id,
            reason: Term::atom("reply_too_large"),
        };
        let _ = codec.encode_with(&mut self.write_buf, |out| fallback.encode_into(out));
    }

    /// Encodes `first` and every other outbound item already queued. They are written
    /// with the next flush: when nothing else is ready, or once [`FLUSH_AT`] bytes are
    /// waiting. Returns the reason to end when the handler asked to close (the `close`
    /// frame is then written) or found the client too slow for its pushes.
    async fn write_outbound(
        &mut self,
        first: (Outbound, usize),
    ) -> Result<Option<CloseReason>, WriteFailed> {
        let mut item = Some(first);
        let mut closing = None;
        let now = std::time::Instant::now();
        let mut count = 0;
        while let Some((o, bytes)) = item.take() {
            self.middle_man
                .inner
                .queued_bytes
                .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
            match o {
                Outbound::Push(y, _permit) => self.encode(ServerMessage::Send(y)),
                Outbound::Reply(id, body) => {
                    if let Some(arrived) = self.in_flight.remove(&id) {
                        self.encode(ServerMessage::Reply { id, body });
                        self.metrics
                            .call_answered(now.saturating_duration_since(arrived));
                    }
                }
                Outbound::CallError(id, reason) => {
                    if let Some(arrived) = self.in_flight.remove(&id) {
                        self.encode(ServerMessage::CallError { id, reason });
                        self.metrics
                            .call_answered(now.saturating_duration_since(arrived));
                    }
                }
                Outbound::Close => {
                    closing = Some(CloseReason::HandlerClosed);
                    break;
                }
                Outbound::SlowConsumer => {
                    closing = Some(CloseReason::Protocol(ErrorReason::SlowConsumer));
                    break;
                }
            }
            count += 1;
            if count < MAX_BATCH {
                item = self.middle_man.inner.out.try_pop();
            }
        }
        if let Some(reason) = &closing {
            if *reason == CloseReason::HandlerClosed {
                self.fail_in_flight("no_reply");
                self.encode(ServerMessage::Close);
                self.flush().await?;
            }
            // A slow consumer gets `{error, slow_consumer}` from `finish`, as when a
            // write times out.
        } else if self.write_buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(closing)
    }

    /// Queues a frame the middle man answers itself (pong, busy); like every frame it
    /// goes out with the next flush.
    async fn write_now(&mut self, message: ServerMessage) -> Result<(), WriteFailed> {
        self.encode(message);
        if self.write_buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the buffer and flushes TLS, within the write timeout.
    async fn flush(&mut self) -> Result<(), WriteFailed> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let stream = self.reader.get_mut();
        let buf = &self.write_buf;
        let write = async {
            stream.write_all(buf).await?;
            stream.flush().await
        };
        let result = tokio::time::timeout(self.limits.write_timeout, write).await;
        if matches!(result, Ok(Ok(()))) {
            self.metrics.sent(self.write_buf.len());
            self.counters.sent(self.write_buf.len());
            self.counters.set_in_flight(self.in_flight.len());
        }
        self.write_buf.clear();
        // Give back what a burst of large answers made the buffers grow to.
        if self.write_buf.capacity() > KEEP_BUFFER {
            self.write_buf = BytesMut::new();
        }
        if self.reader.read_buffer().is_empty()
            && self.reader.read_buffer().capacity() > KEEP_BUFFER
        {
            *self.reader.read_buffer_mut() = BytesMut::new();
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteFailed(CloseReason::ClientGone(e.to_string()))),
            Err(_) => Err(WriteFailed(CloseReason::Protocol(
                ErrorReason::SlowConsumer,
            ))),
        }
    }

    /// Answers every call still in flight with `{error, Ref, Reason}`.
    fn fail_in_flight(&mut self, reason: &str) {
        let mut ids: Vec<Ref> = self.in_flight.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            self.encode(ServerMessage::CallError {
                id,
                reason: Term::atom(reason),
            });
        }
    }

    /// Ends the connection: final frames, the handler told or awaited, the lingering close.
    async fn finish(mut self, ended: Ended, events_tx: mpsc::Sender<Event>) -> CloseReason {
        let Ended {
            reason,
            mut handler,
        } = ended;
        let peer = self.middle_man.peer();
        // Answers the handler queued before it ended still go out, in order.
        let client_reachable = !matches!(
            reason,
            CloseReason::ClientGone(_) | CloseReason::Protocol(ErrorReason::SlowConsumer)
        );
        if client_reachable && !matches!(reason, CloseReason::HandlerClosed) {
            while let Some(o) = self.middle_man.inner.out.try_pop() {
                if matches!(o.0, Outbound::Close | Outbound::SlowConsumer) {
                    break;
                }
                if self.write_outbound(o).await.is_err() {
                    break;
                }
            }
        }
        self.middle_man.mark_closed();
        match &reason {
            CloseReason::HandlerEnded => {
                self.fail_in_flight("no_reply");
                self.encode(ServerMessage::Close);
            }
            CloseReason::HandlerCrashed => {
                self.fail_in_flight("handler_crashed");
                self.encode(ServerMessage::Close);
            }
            CloseReason::Shutdown => {
                self.fail_in_flight("shutdown");
                self.encode(ServerMessage::Error(ErrorReason::Shutdown));
            }
            CloseReason::Protocol(r) if *r != ErrorReason::SlowConsumer => {
                self.encode(ServerMessage::Error(r.clone()));
            }
            _ => {}
        }
        if client_reachable {
            let _ = self.flush().await;
        }
        // Tell the handler, lib_chan's {chan_closed, MM}; dropping the sender then makes
        // its next_event() return None.
        if handler.is_some() {
            let _ = events_tx.try_send(Event::Closed);
        }
        drop(events_tx);
        let session = self.session.take();
        if matches!(reason, CloseReason::ClientClosed) {
            if let Some(lease) = session {
                // Ended once the handler is done, so that what the client sent before its
                // `close` (an owner => session store, say) is placed before the release.
                end_handler(handler.take(), peer).await;
                lease.end();
            }
        }
        let stream = self.reader.into_inner();
        if client_reachable {
            linger_close(stream).await;
        } else {
            drop(stream);
        }
        end_handler(handler, peer).await;
        reason
    }
}

/// Waits for the handler to end after its channel closed, aborting it past
/// [`HANDLER_EXIT_GRACE`].
async fn end_handler(handler: Option<JoinHandle<()>>, peer: std::net::SocketAddr) {
    if let Some(mut handler) = handler {
        if tokio::time::timeout(HANDLER_EXIT_GRACE, &mut handler)
            .await
            .is_err()
        {
            tracing::warn!(%peer, "handler still running after its channel closed; aborting it");
            handler.abort();
        }
    }
}

/// Closes so that the client can read what was written last (PROTOCOL.md section 6):
/// close_notify, then read and discard until the client closes or [`LINGER`] passes.
/// Closing at once with unread input pending would make TCP reset the connection.
pub(crate) async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let _ = tokio::time::timeout(LINGER, stream.shutdown()).await;
    let discard = async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}
