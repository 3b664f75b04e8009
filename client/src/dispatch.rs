//! The dispatch task: the one task that owns a channel's TLS connection.
//!
//! This is lib_chan's middle man on the client side, in the actor style of async-nats's
//! `ConnectionHandler` and tarpc's `RequestDispatch`. It runs two loops concurrently
//! inside one task, over the two halves of the TLS stream:
//!
//! - the **reader** decodes frames and routes them: `{reply, ..}`, `{error, Ref, ..}` and
//!   `{pong, ..}` complete entries of the in-flight map; `{send, Y}` goes to the push
//!   queue (waiting when it is full, which is the backpressure [`Channel::recv`]
//!   documents); `close` and `{error, Reason}` end the connection.
//! - the **writer** takes every frame the handles encoded into the outbox (the `outbox`
//!   module) at once, by swapping buffers, and writes and flushes once, so a burst of
//!   pipelined calls costs one TLS record and one syscall instead of one each.
//!
//! - the **keepalive** loop (only with [`ConnectOptions::keepalive`]) asks the writer for
//!   a `{ping, Ref}` every interval, and ends the connection with
//!   [`CloseReason::KeepaliveTimeout`] when a whole interval has passed since the last
//!   ping without a single frame from the server (the reader counts them), unless the
//!   reader was not reading because the push queue was full.
//!
//! Running them in one `select!` (rather than a loop that alternates) means a large
//! write never stops the reader, so neither side can deadlock on full TCP buffers, and a
//! writer stuck on a server that stopped reading cannot stop the keepalive verdict.
//!
//! How it ends:
//! - The server ends it (`close`, `{error, Reason}`, end of stream, a bad frame): the
//!   reason is recorded at once, so every waiting call fails with it, then TLS is shut
//!   down politely (bounded).
//! - The client ends it ([`Channel::close`], or the last handle dropped): the writer
//!   sends what is queued, then `close`, then close_notify; the reader keeps delivering
//!   until the server closes too, for at most [`CLOSE_TIMEOUT`] in all.
//! - A write fails: the reader gets a short grace period to find the server's reason (an
//!   `{error, slow_consumer}` sent just before it closed, say).
//!
//! [`Channel::recv`]: crate::Channel::recv
//! [`Channel::close`]: crate::Channel::close
//! [`ConnectOptions::keepalive`]: crate::ConnectOptions::keepalive

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lib_chan_protocol::message::{ClientMessage, ServerMessage};
use lib_chan_protocol::{FrameCodec, FrameError, Term};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant, MissedTickBehavior};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

use crate::error::{CloseReason, Error};
use crate::in_flight::{InFlight, Kind};
use crate::outbox::Outbox;

/// How long a client-initiated close may take: sending `close` and close_notify, then
/// waiting for the server to close its side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed write, how long the reader may look for the server's reason.
const WRITE_FAILURE_GRACE: Duration = Duration::from_millis(500);

/// How long to spend saying goodbye (close_notify) after the server ended the connection.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A batch buffer that grew beyond this (after a huge frame) is given back.
const KEEP_BATCH_CAPACITY: usize = 256 * 1024;

type Reader = FramedRead<ReadHalf<TlsStream<TcpStream>>, FrameCodec>;

/// Everything the dispatch task owns. Built by [`Channel::spawn`](crate::Channel).
pub(crate) struct Dispatch {
    /// The connection, welcome already received.
    pub(crate) stream: TlsStream<TcpStream>,
    /// Limits after the welcome.
    pub(crate) codec: FrameCodec,
    /// Bytes read past the welcome during the handshake.
    pub(crate) leftover: BytesMut,
    /// Encoded frames from the handles; closed once every handle is dropped.
    pub(crate) outbox: Arc<Outbox>,
    /// Pushes for [`Channel::recv`](crate::Channel::recv).
    pub(crate) pushes: mpsc::Sender<Term>,
    /// Waiting calls and pings.
    pub(crate) in_flight: Arc<InFlight>,
    /// Where the close reason is published.
    pub(crate) closed: watch::Sender<Option<CloseReason>>,
    /// Set by [`Channel::close`](crate::Channel::close).
    pub(crate) closing: Arc<AtomicBool>,
    /// Notified by [`Channel::close`](crate::Channel::close).
    pub(crate) close_requested: Arc<Notify>,
    /// The keepalive interval, if any.
    pub(crate) keepalive: Option<Duration>,
    /// Where keepalive pings take their `Ref` (shared with the handles' calls).
    pub(crate) next_ref: Arc<AtomicU64>,
    /// `host:port`, for logs.
    pub(crate) addr: String,
}

/// What the keepalive loop knows of the reader: evidence that the server is alive.
#[derive(Debug, Default)]
struct Liveness {
    /// Frames read from the server so far.
    heard: AtomicU64,
    /// The reader is waiting for room in the push queue, so it reads nothing: silence from
    /// the server then proves nothing.
    stalled: AtomicBool,
}

/// How the writer ended.
enum WriteEnd {
    /// The client closed: `close` and close_notify are out (or the deadline passed).
    ClientClosed { deadline: Instant },
    /// A write failed.
    Failed(io::Error),
}

impl Dispatch {
    /// Runs the connection to its end, then publishes why it ended.
    pub(crate) async fn run(self) {
        let Dispatch {
            stream,
            codec,
            leftover,
            outbox,
            pushes,
            in_flight,
            closed,
            closing,
            close_requested,
            keepalive,
            next_ref,
            addr,
        } = self;
        let mut close_frame = BytesMut::new();
        // `close` is a few bytes: it fits any limit a server could announce.
        let _ = codec.encode_term(&ClientMessage::Close.to_term(), &mut close_frame);
        let close_frame = close_frame.freeze();

        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = FramedRead::new(rd, codec.clone());
        reader.read_buffer_mut().extend_from_slice(&leftover);

        let liveness = Liveness::default();
        // Capacity 1: a ping the writer has not taken yet is as good as a new one.
        let (ping_tx, mut ping_rx) = mpsc::channel(1);
        let (reason, server_ended) = {
            let read = read_loop(&mut reader, &in_flight, &pushes, &liveness);
            let writer = Writer {
                outbox: &outbox,
                pings: &mut ping_rx,
                close_requested: &close_requested,
                close_frame: &close_frame,
                codec: &codec,
                next_ref: &next_ref,
                heard: &liveness.heard,
            };
            let write = writer.run(&mut wr);
            let keepalive = keepalive_loop(keepalive, &liveness, ping_tx);
            tokio::pin!(read, write, keepalive);
            tokio::select! {
                reason = &mut read => {
                    // A close() racing with the server's own close still counts as ours.
                    if closing.load(Ordering::Acquire) {
                        (CloseReason::ClosedByClient, true)
                    } else {
                        (reason, true)
                    }
                }
                end = &mut write => match end {
                    WriteEnd::ClientClosed { deadline } => {
                        // Keep delivering replies and pushes until the server closes.
                        let _ = timeout_at(deadline, &mut read).await;
                        (CloseReason::ClosedByClient, false)
                    }
                    WriteEnd::Failed(e) => match timeout(WRITE_FAILURE_GRACE, &mut read).await {
                        Ok(reason @ (CloseReason::ClosedByServer
                        | CloseReason::ServerError(_)
                        | CloseReason::Protocol(_))) => (reason, true),
                        _ => (CloseReason::ConnectionLost(format!("write failed: {e}")), true),
                    },
                },
                reason = &mut keepalive => {
                    if closing.load(Ordering::Acquire) {
                        (CloseReason::ClosedByClient, true)
                    } else {
                        (reason, true)
                    }
                }
            }
        };
        tracing::debug!(%addr, %reason, "channel closed");
        // Fail every waiting call first: they should not wait for our goodbye.
        in_flight.close(reason.clone());
        closed.send_replace(Some(reason));
        // No more frames: a handle's cast or call fails with the reason from here on.
        outbox.close();
        // No more pushes: `recv` returns `None` once the queue is drained.
        drop(pushes);
        if server_ended {
            let _ = timeout(SHUTDOWN_GRACE, wr.shutdown()).await;
        }
    }
}

/// Reads and routes frames until the server ends the connection; returns why.
///
/// Cancel-safe between frames (`FramedRead` keeps partial frames), though the dispatch
/// task only drops it once the connection is over.
async fn read_loop(
    reader: &mut Reader,
    in_flight: &InFlight,
    pushes: &mpsc::Sender<Term>,
    liveness: &Liveness,
) -> CloseReason {
    loop {
        let payload = match reader.next().await {
            Some(Ok(payload)) => payload,
            None => return CloseReason::ConnectionLost("the server closed the connection".into()),
            Some(Err(FrameError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // rustls's own text for this ends in a link to its manual.
                return CloseReason::ConnectionLost(
                    "the server closed the connection abruptly (without a TLS close_notify)".into(),
                );
            }
            Some(Err(FrameError::Io(e))) => return CloseReason::ConnectionLost(e.to_string()),
            Some(Err(e @ FrameError::TruncatedAtEof { .. })) => {
                return CloseReason::ConnectionLost(e.to_string())
            }
            Some(Err(e)) => return CloseReason::Protocol(e.to_string()),
        };
        liveness.heard.fetch_add(1, Ordering::Relaxed);
        let message = match ServerMessage::decode(&payload) {
            Ok(message) => message,
            Err(e) => return CloseReason::Protocol(e.to_string()),
        };
        match message {
            ServerMessage::Send(y) => match pushes.try_send(y) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(y)) => {
                    // Waits while the queue is full: backpressure onto the server. Fails
                    // only when every handle is gone, and then nobody wants the push.
                    liveness.stalled.store(true, Ordering::Relaxed);
                    let _ = pushes.send(y).await;
                    liveness.stalled.store(false, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            ServerMessage::Reply { id, body } => {
                if !in_flight.complete(id, Kind::Call, Ok(body)) {
                    tracing::trace!(id, "reply for a call nobody waits for (timed out?)");
                }
            }
            ServerMessage::CallError { id, reason } => {
                if !in_flight.complete(id, Kind::Call, Err(Error::Remote(reason))) {
                    tracing::trace!(id, "error for a call nobody waits for (timed out?)");
                }
            }
            ServerMessage::Pong(id) => {
                if !in_flight.complete(id, Kind::Ping, Ok(Term::nil())) {
                    tracing::trace!(id, "pong nobody waits for");
                }
            }
            ServerMessage::Close => return CloseReason::ClosedByServer,
            ServerMessage::Error(reason) => return CloseReason::ServerError(reason),
        }
    }
}

/// Asks the writer for a ping every `interval`; returns when the server seems dead. Never
/// returns without keepalive.
async fn keepalive_loop(
    interval: Option<Duration>,
    liveness: &Liveness,
    pings: mpsc::Sender<()>,
) -> CloseReason {
    let Some(interval) = interval else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    // After a stall of the runtime, one late tick rather than a burst of pings.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // How many frames had been heard when the last ping was asked for.
    let mut heard_at_ping: Option<u64> = None;
    loop {
        ticks.tick().await;
        let heard = liveness.heard.load(Ordering::Relaxed);
        if heard_at_ping == Some(heard) && !liveness.stalled.load(Ordering::Relaxed) {
            return CloseReason::KeepaliveTimeout { interval };
        }
        // Full: the previous ping is still waiting for the writer, which is as good.
        let _ = pings.try_send(());
        heard_at_ping = Some(heard);
    }
}

/// The writer's inputs, borrowed from the dispatch task.
struct Writer<'a> {
    /// Encoded frames from the handles.
    outbox: &'a Outbox,
    /// Keepalive's requests for a ping.
    pings: &'a mut mpsc::Receiver<()>,
    close_requested: &'a Notify,
    close_frame: &'a Bytes,
    /// Encodes keepalive pings.
    codec: &'a FrameCodec,
    /// Where keepalive pings take their `Ref`.
    next_ref: &'a AtomicU64,
    /// How many frames the reader has received: replies since the last write mean
    /// callers were just woken, and may be about to queue frames.
    heard: &'a AtomicU64,
}

impl Writer<'_> {
    /// Writes queued frames, coalescing bursts, and keepalive pings, until the client
    /// closes or a write fails.
    async fn run<W: AsyncWrite + Unpin>(self, wr: &mut W) -> WriteEnd {
        let Writer {
            outbox,
            pings,
            close_requested,
            close_frame,
            codec,
            next_ref,
            heard,
        } = self;
        // Swapped with the outbox's buffer at each take: the two go back and forth.
        let mut batch = BytesMut::new();
        // Whether the last write carried more than one frame.
        let mut last_was_batch = false;
        // `heard` at the last write.
        let mut heard_at_write = heard.load(Ordering::Relaxed);
        // Made once, and the outbox's anew only after it fired: registering new waiters
        // on every pass of the loop costs a lock each.
        let close = close_requested.notified();
        tokio::pin!(close);
        let woken = outbox.woken();
        tokio::pin!(woken);
        loop {
            // Pings first: behind a steady stream of casts they would never go out, and
            // the server would be taken for dead.
            if pings.try_recv().is_ok() {
                if let Err(e) = write_ping(wr, codec, next_ref, &mut batch).await {
                    return WriteEnd::Failed(e);
                }
            }
            let taken = outbox.take(&mut batch);
            let mut frames = taken.frames;
            if frames == 0 {
                if taken.closed {
                    // Every handle is gone.
                    return close_sequence(wr, outbox, &mut batch, close_frame).await;
                }
                tokio::select! {
                    biased;
                    Some(()) = pings.recv() => {
                        if let Err(e) = write_ping(wr, codec, next_ref, &mut batch).await {
                            return WriteEnd::Failed(e);
                        }
                    }
                    // Frames queued before a close request go out first (and the close
                    // sequence takes the rest).
                    () = &mut woken => woken.set(outbox.woken()),
                    () = &mut close => {
                        return close_sequence(wr, outbox, &mut batch, close_frame).await;
                    }
                }
                continue;
            }
            let heard_now = heard.load(Ordering::Relaxed);
            if frames == 1 && (last_was_batch || heard_now > heard_at_write + 1) {
                // Calls are coming in bursts, or several replies came since the last
                // write (each woke a caller, who may be about to call again): let the
                // tasks that are ready queue their frames too, so that they go out in one
                // write. The first caller woken would otherwise wake this task straight
                // away (tokio runs a task woken by the running one next), and every
                // frame would go out alone. A lone caller is not made to wait.
                tokio::task::yield_now().await;
                frames += outbox.take(&mut batch).frames;
            }
            heard_at_write = heard_now;
            last_was_batch = frames > 1;
            let written = write_and_flush(wr, &batch).await;
            batch.clear();
            if batch.capacity() > KEEP_BATCH_CAPACITY {
                batch = BytesMut::new();
            }
            if let Err(e) = written {
                return WriteEnd::Failed(e);
            }
        }
    }
}

/// Writes a `{ping, Ref}` on its own.
async fn write_ping<W: AsyncWrite + Unpin>(
    wr: &mut W,
    codec: &FrameCodec,
    next_ref: &AtomicU64,
    batch: &mut BytesMut,
) -> io::Result<()> {
    let id = next_ref.fetch_add(1, Ordering::Relaxed);
    batch.clear();
    // `{ping, Ref}` is a few bytes: it fits any limit a server announces.
    let _ = codec.encode_term(&ClientMessage::Ping(id).to_term(), batch);
    let written = write_and_flush(wr, batch).await;
    batch.clear();
    written
}

/// Sends what is still queued, then `close`, then close_notify, within [`CLOSE_TIMEOUT`].
async fn close_sequence<W: AsyncWrite + Unpin>(
    wr: &mut W,
    outbox: &Outbox,
    batch: &mut BytesMut,
    close_frame: &Bytes,
) -> WriteEnd {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    // No new frames from here on; the ones already queued still go out.
    outbox.close();
    batch.clear();
    outbox.take(batch);
    batch.extend_from_slice(close_frame);
    let goodbye = async {
        write_and_flush(wr, batch).await?;
        wr.shutdown().await
    };
    match timeout_at(deadline, goodbye).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not send close"),
        Err(_) => tracing::debug!("sending close timed out"),
    }
    WriteEnd::ClientClosed { deadline }
}

async fn write_and_flush<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}
