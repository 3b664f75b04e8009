//! [`Channel`]: the handle a program uses to talk to a service over one connection.
//!
//! A `Channel` is a cheap `Clone` handle to one dispatch task (the `dispatch` module) that
//! owns the TLS connection, as in async-nats's client and tarpc's `Channel`. Callers do
//! the expensive part themselves: each `cast`, `rpc` or `ping` encodes its frame in the
//! calling task, straight into the bounded outbox the dispatch task takes from (the
//! `outbox` module), so the single task that owns the socket only encrypts and writes.
//!
//! Calls are pipelined: any number of tasks may `rpc` at once on one channel. Each call
//! takes a fresh `Ref` from a counter, registers it in the in-flight map
//! (the `in_flight` module) before its frame is queued, and waits on a oneshot that the
//! dispatch task completes when `{reply, Ref, Y}` or `{error, Ref, Reason}` arrives, in
//! whatever order the server answers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use lib_chan_protocol::message::{ClientMessage, Ref, Welcome};
use lib_chan_protocol::{FrameCodec, FrameError, Term};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio_rustls::client::TlsStream;

use crate::dispatch::{Dispatch, CLOSE_TIMEOUT};
use crate::error::{CloseReason, Error};
use crate::in_flight::{Armed, Batch, InFlight, Kind};
use crate::outbox::Outbox;

/// How many encoded frames may wait for the dispatch task before `cast`/`rpc` wait too.
pub const OUTGOING_QUEUE: usize = 1024;
/// How many pushes (`{send, Y}` from the server) may wait for [`Channel::recv`] before
/// the dispatch task stops reading the connection until there is room again.
pub const PUSH_QUEUE: usize = 1024;

/// What the handles share; the dispatch task holds none of it but the `Arc`s inside, so
/// dropping the last handle closes `outbox`, which tells the dispatch task to close.
struct Shared {
    /// Encoded frames to the dispatch task.
    outbox: Arc<Outbox>,
    /// Pushes from the dispatch task; a tokio mutex, as `recv` waits while holding it.
    pushes: Mutex<mpsc::Receiver<Term>>,
    /// Calls and pings waiting for an answer.
    in_flight: Arc<InFlight>,
    /// `Some(reason)` once the connection has ended.
    closed: watch::Receiver<Option<CloseReason>>,
    /// Set by the first `close()`; from then on nothing new is sent.
    closing: Arc<AtomicBool>,
    /// Wakes the dispatch task's writer to send `close`.
    close_requested: Arc<Notify>,
    /// The next call or ping reference; shared with the dispatch task, whose keepalive
    /// pings take theirs from it too, so no two questions ever share a `Ref`.
    next_ref: Arc<AtomicU64>,
    /// Encodes frames in the calling task, with the server's `max_frame` as send limit.
    codec: FrameCodec,
    welcome: Welcome,
    rpc_timeout: Duration,
    /// `host:port`, for `Debug`.
    addr: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the dispatch task sends what is queued, then `close`.
        self.outbox.close();
    }
}

/// An open channel to a service: send with [`cast`](Self::cast), call with
/// [`rpc`](Self::rpc), receive the service's own messages with [`recv`](Self::recv).
///
/// Clones share one connection and may be used from many tasks at once. The connection
/// closes when [`close`](Self::close) is called, when the server ends it, or when the
/// last clone is dropped (then `close` is sent for you).
///
/// # Examples
///
/// ```no_run
/// use lib_chan_client::{connect, term, Term};
///
/// # async fn demo() -> Result<(), lib_chan_client::Error> {
/// let chan = connect("localhost", 1234, "nameServer", "ABXy45", Term::nil()).await?;
/// chan.cast(term!({store, joe, "writing a book"})).await?;
/// let answer = chan.rpc(term!({lookup, joe})).await?;
/// assert_eq!(answer, term!({ok, "writing a book"}));
/// chan.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("addr", &self.shared.addr)
            .field("server", &self.shared.welcome.server)
            .field("closed", &*self.shared.closed.borrow())
            .field("in_flight", &self.shared.in_flight.len())
            .finish()
    }
}

impl Channel {
    /// Starts the dispatch task on `stream` (welcome already received; `leftover` is what
    /// was read past it) and returns the first handle.
    pub(crate) fn spawn(
        stream: TlsStream<TcpStream>,
        codec: FrameCodec,
        leftover: BytesMut,
        welcome: Welcome,
        rpc_timeout: Duration,
        keepalive: Option<Duration>,
        addr: String,
    ) -> Channel {
        let outbox = Arc::new(Outbox::new(OUTGOING_QUEUE));
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(None);
        let in_flight = Arc::new(InFlight::default());
        let closing = Arc::new(AtomicBool::new(false));
        let close_requested = Arc::new(Notify::new());
        // The seed session numbers its calls from 1.
        let next_ref = Arc::new(AtomicU64::new(1));
        let dispatch = Dispatch {
            stream,
            codec: codec.clone(),
            leftover,
            outbox: outbox.clone(),
            pushes: push_tx,
            in_flight: in_flight.clone(),
            closed: closed_tx,
            closing: closing.clone(),
            close_requested: close_requested.clone(),
            keepalive,
            next_ref: next_ref.clone(),
            addr: addr.clone(),
        };
        tokio::spawn(dispatch.run());
        Channel {
            shared: Arc::new(Shared {
                outbox,
                pushes: Mutex::new(push_rx),
                in_flight,
                closed: closed_rx,
                closing,
                close_requested,
                next_ref,
                codec,
                welcome,
                rpc_timeout,
                addr,
            }),
        }
    }

    /// What the server announced in its welcome: protocol version, `max_frame`, name.
    pub fn welcome(&self) -> &Welcome {
        &self.shared.welcome
    }

    /// The id of the session this channel belongs to, when
    /// [`ConnectOptions::session`](crate::ConnectOptions::session) asked for one: give it
    /// to [`SessionRequest::Resume`](crate::SessionRequest::Resume) to resume it.
    pub fn session_id(&self) -> Option<&[u8]> {
        self.shared.welcome.session.as_deref()
    }

    /// How long the server keeps the session without a connection.
    pub fn session_grace(&self) -> Option<std::time::Duration> {
        self.shared
            .welcome
            .grace_ms
            .map(std::time::Duration::from_millis)
    }

    /// The largest frame the server accepts; larger requests fail with
    /// [`Error::Encode`] without being sent.
    pub fn max_frame(&self) -> usize {
        self.shared.welcome.max_frame
    }

    /// Sends `{send, Msg}`: a one-way message to the service (lib_chan's
    /// `lib_chan:cast/2`). Returns once the frame is queued for the connection, not when
    /// the server has it.
    ///
    /// # Errors
    /// [`Error::Closed`] when the channel is closed or closing; [`Error::Encode`] when
    /// `msg` cannot be sent (e.g. larger than [`max_frame`](Self::max_frame)).
    pub async fn cast(&self, msg: Term) -> Result<(), Error> {
        self.check_open()?;
        self.send(1, |buf| self.encode_into(buf, &ClientMessage::Send(msg)))
            .await
    }

    /// Sends `{call, Ref, Req}` and waits for the reply `Y` of `{reply, Ref, Y}`, for at
    /// most the default rpc timeout ([`ConnectOptions::rpc_timeout`], 30 s unless set).
    ///
    /// # Errors
    /// - [`Error::Remote`]: the server answered `{error, Ref, Reason}`;
    /// - [`Error::Timeout`]: no reply in time (a reply arriving later is dropped);
    /// - [`Error::Closed`]: the channel closed before the reply came, or was closed;
    /// - [`Error::Encode`]: `req` cannot be sent.
    ///
    /// [`ConnectOptions::rpc_timeout`]: crate::ConnectOptions::rpc_timeout
    pub async fn rpc(&self, req: Term) -> Result<Term, Error> {
        self.rpc_timeout(req, self.shared.rpc_timeout).await
    }

    /// [`rpc`](Self::rpc) with its own timeout, which also covers waiting for room in the
    /// outgoing queue. Cancel-safe: dropping the future forgets the call, and its reply
    /// is dropped when it comes.
    ///
    /// # Errors
    /// As [`rpc`](Self::rpc).
    pub async fn rpc_timeout(&self, req: Term, timeout: Duration) -> Result<Term, Error> {
        self.ask(
            Kind::Call,
            |id| ClientMessage::Call { id, body: req },
            "rpc",
            timeout,
        )
        .await
    }

    /// Sends one `{call, Ref, Req}` per request in one write, and waits for all the
    /// replies: pipelining in batches, as `redis-benchmark -P` does. The answers come
    /// back in the order of `reqs`, each as [`rpc`](Self::rpc) would give it. It costs
    /// far less per call than as many concurrent `rpc`s: one queue entry, one write and
    /// one timer for the whole batch. The batch shares the default rpc timeout.
    ///
    /// # Errors
    /// Per request, as [`rpc`](Self::rpc): a request that cannot be encoded fails alone
    /// ([`Error::Encode`]) and the others are still sent; when the channel is closed,
    /// every request fails with [`Error::Closed`]; a reply still missing at the timeout
    /// fails with [`Error::Timeout`].
    pub async fn rpc_many(&self, reqs: impl IntoIterator<Item = Term>) -> Vec<Result<Term, Error>> {
        self.rpc_many_timeout(reqs, self.shared.rpc_timeout).await
    }

    /// [`rpc_many`](Self::rpc_many) with its own timeout for the whole batch.
    /// Cancel-safe, as [`rpc_timeout`](Self::rpc_timeout).
    ///
    /// # Errors
    /// As [`rpc_many`](Self::rpc_many).
    pub async fn rpc_many_timeout(
        &self,
        reqs: impl IntoIterator<Item = Term>,
        timeout: Duration,
    ) -> Vec<Result<Term, Error>> {
        let reqs = reqs.into_iter();
        let mut answers: Vec<Option<Result<Term, Error>>> = Vec::with_capacity(reqs.size_hint().0);
        if let Some(reason) = self.closed_reason() {
            return reqs.map(|_| Err(Error::Closed(reason.clone()))).collect();
        }
        let mut frames = BytesMut::with_capacity(64 * reqs.size_hint().0.max(1));
        // The calls that go out: their Refs, and their places in `answers`.
        let mut ids = Vec::with_capacity(answers.capacity());
        let mut places = Vec::with_capacity(answers.capacity());
        for req in reqs {
            let index = answers.len();
            answers.push(None);
            let id = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
            let message = ClientMessage::Call { id, body: req };
            if let Err(e) = self.encode_into(&mut frames, &message) {
                answers[index] = Some(Err(e));
                continue;
            }
            ids.push(id);
            places.push(index);
        }
        if !ids.is_empty() {
            let batch = Batch::new(ids.len());
            if let Err(reason) = self.shared.in_flight.register_batch(&ids, &batch) {
                // Closed meanwhile: nothing of this batch goes out.
                return answers
                    .iter()
                    .map(|_| Err(Error::Closed(reason.clone())))
                    .collect();
            }
            // Removes the entries still registered if this future ends early (timeout,
            // dropped); disarmed once every answer came.
            let guard = BatchGuard {
                in_flight: &self.shared.in_flight,
                ids: &ids,
                armed: true,
            };
            let outcome = tokio::time::timeout(timeout, async {
                let queued = self.shared.outbox.push(ids.len(), |buf| {
                    buf.extend_from_slice(&frames);
                    Ok::<(), Error>(())
                });
                if queued.await.is_err() {
                    return Err(self.reason_now());
                }
                batch.complete().await;
                Ok(())
            })
            .await;
            // `Some(reason)`: the batch could not be queued; `None`: sent, and what is
            // unanswered timed out.
            let failure = match outcome {
                Ok(Ok(())) => {
                    guard.disarm();
                    None
                }
                Ok(Err(reason)) => Some(reason),
                Err(_) => None,
            };
            for (index, outcome) in places.into_iter().zip(batch.take()) {
                answers[index] = Some(match (outcome, &failure) {
                    (Some(outcome), _) => outcome,
                    (None, Some(reason)) => Err(Error::Closed(reason.clone())),
                    (None, None) => Err(Error::Timeout("rpc")),
                });
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every request has its answer"))
            .collect()
    }

    /// Sends `{ping, Ref}` and waits for `{pong, Ref}`, answered by the server itself
    /// (the service never sees it); returns the round trip time. Times out after the
    /// default rpc timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] or [`Error::Closed`].
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        self.ask(
            Kind::Ping,
            ClientMessage::Ping,
            "ping",
            self.shared.rpc_timeout,
        )
        .await?;
        Ok(start.elapsed())
    }

    /// The next `{send, Y}` the service pushed, in the order it sent them; `None` once
    /// the channel is closed and every push has been received.
    ///
    /// Pushes wait in a queue of [`PUSH_QUEUE`] messages. When it is full, the dispatch
    /// task stops reading from the connection until `recv` makes room (backpressure: the
    /// server then holds or drops its messages, and replies to calls wait too). A program
    /// whose service pushes must keep calling `recv`.
    ///
    /// Cancel-safe. Several tasks may call it at once; each push goes to one of them.
    pub async fn recv(&self) -> Option<Term> {
        self.shared.pushes.lock().await.recv().await
    }

    /// Resolves when the connection has ended, with the reason. Returns at once if it has.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.closed.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        // The dispatch task always sets a reason before it ends, unless its runtime was
        // shut down under it.
        reason.unwrap_or_else(|| {
            CloseReason::ConnectionLost("the connection task was stopped".to_owned())
        })
    }

    /// `true` once the connection has ended or [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire) || self.shared.closed.borrow().is_some()
    }

    /// Closes the channel in order: frames already queued go out, then `close` (the
    /// service is told, as with lib_chan's `{chan_closed, MM}`), then TLS's close_notify;
    /// then waits, at most about 2 s, for the server to close its side. Calls still
    /// outstanding get their reply if the server sends it meanwhile, else
    /// [`Error::Closed`]. Every `cast`, `rpc` or `ping` after this fails with
    /// [`Error::Closed`]`(`[`CloseReason::ClosedByClient`]`)`. Calling it again just waits.
    pub async fn close(&self) {
        if !self.shared.closing.swap(true, Ordering::AcqRel) {
            self.shared.close_requested.notify_one();
        }
        // The dispatch task bounds the close itself; this is a safety net.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), self.closed()).await;
    }

    /// [`rpc_timeout`](Self::rpc_timeout) that also says, on failure, whether the call
    /// was queued for the connection (`true`: it may have reached the server).
    pub(crate) async fn rpc_sent(
        &self,
        req: Term,
        timeout: Duration,
    ) -> Result<Term, (Error, bool)> {
        if let Err(e) = self.check_not_closing() {
            return Err((e, false));
        }
        let id = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
        let rx = self
            .shared
            .in_flight
            .register(id, Kind::Call)
            .map_err(|r| (Error::Closed(r), false))?;
        let guard = Armed::new(&self.shared.in_flight, id);
        let message = ClientMessage::Call { id, body: req };
        let mut queued = false;
        let answer = tokio::time::timeout(timeout, async {
            self.send(1, |buf| self.encode_into(buf, &message)).await?;
            queued = true;
            Ok(rx.await)
        })
        .await;
        match answer {
            Err(_elapsed) => Err((Error::Timeout("rpc"), queued)),
            Ok(Err(e)) => Err((e, false)),
            Ok(Ok(Ok(outcome))) => {
                guard.disarm();
                outcome.map_err(|e| (e, true))
            }
            Ok(Ok(Err(_dropped))) => {
                guard.disarm();
                Err((Error::Closed(self.reason_now()), true))
            }
        }
    }

    /// A `call` or `ping`: register, queue, wait, all under `timeout`.
    async fn ask(
        &self,
        kind: Kind,
        message: impl FnOnce(Ref) -> ClientMessage,
        phase: &'static str,
        timeout: Duration,
    ) -> Result<Term, Error> {
        self.check_not_closing()?;
        let id = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
        // Registered before the frame is queued, so the answer always finds its entry.
        let rx = self
            .shared
            .in_flight
            .register(id, kind)
            .map_err(Error::Closed)?;
        // From here on, leaving early (timeout, error, future dropped) removes the entry.
        let guard = Armed::new(&self.shared.in_flight, id);
        let message = message(id);
        let answer = tokio::time::timeout(timeout, async {
            self.send(1, |buf| self.encode_into(buf, &message)).await?;
            Ok(rx.await)
        })
        .await;
        match answer {
            Err(_elapsed) => Err(Error::Timeout(phase)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(outcome))) => {
                // The dispatch task removed the entry when it answered.
                guard.disarm();
                outcome
            }
            Ok(Ok(Err(_dropped))) => {
                guard.disarm();
                Err(Error::Closed(self.reason_now()))
            }
        }
    }

    /// Fails fast when the channel is closed or closing.
    fn check_open(&self) -> Result<(), Error> {
        match self.closed_reason() {
            Some(reason) => Err(Error::Closed(reason)),
            None => Ok(()),
        }
    }

    /// [`check_open`](Self::check_open) for a call, which registers in the in-flight map
    /// next: the map refuses with the reason once the connection has ended (it is closed
    /// before the reason is published), so only `close()` needs checking here. One load
    /// of a flag written once, where reading the published reason takes the watch
    /// channel's lock, which every core calling on this channel would bounce.
    fn check_not_closing(&self) -> Result<(), Error> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(Error::Closed(self.reason_now()));
        }
        Ok(())
    }

    /// Why nothing can be sent any more, if the channel is closed or closing.
    fn closed_reason(&self) -> Option<CloseReason> {
        if let Some(reason) = &*self.shared.closed.borrow() {
            return Some(reason.clone());
        }
        if self.shared.closing.load(Ordering::Acquire) {
            return Some(CloseReason::ClosedByClient);
        }
        None
    }

    /// Why the channel is closed, for a send that found the dispatch task gone.
    fn reason_now(&self) -> CloseReason {
        if let Some(reason) = &*self.shared.closed.borrow() {
            return reason.clone();
        }
        if self.shared.closing.load(Ordering::Acquire) {
            return CloseReason::ClosedByClient;
        }
        CloseReason::ConnectionLost("the connection task was stopped".to_owned())
    }

    /// Appends `message` to `buf` as one frame; on error `buf` is left as it was.
    fn encode_into(&self, buf: &mut BytesMut, message: &ClientMessage) -> Result<(), Error> {
        self.shared
            .codec
            .encode_with(buf, |out| message.encode_into(out))
            .map_err(|e| match e {
                FrameError::TooLarge { len, max } => Error::Encode(format!(
                    "the frame would be {len} bytes, over the server's max_frame of {max}"
                )),
                other => Error::Encode(other.to_string()),
            })
    }

    /// Queues `frames` frames, encoded by `encode` straight into the outbox; waits while
    /// the outbox is full.
    async fn send(
        &self,
        frames: usize,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.shared.outbox.push(frames, encode).await {
            Ok(encoded) => encoded,
            Err(_closed) => Err(Error::Closed(self.reason_now())),
        }
    }
}

/// Forgets a batch's calls still in the in-flight map when dropped armed: the batch's
/// future ended before every answer came.
struct BatchGuard<'a> {
    in_flight: &'a InFlight,
    ids: &'a [Ref],
    armed: bool,
}

impl BatchGuard<'_> {
    /// Every answer came: the dispatch task removed every entry.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight.cancel_all(self.ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Channel>();
    }
}
