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
//! - the **writer** takes already-encoded frames from the outgoing queue. After one
//!   frame it drains whatever else is queued (`try_recv`) into one buffer and writes and
//!   flushes once, so a burst of pipelined calls costs one TLS record and one syscall
//!   instead of one each.
//!
//! Running both in one `select!` (rather than a loop that alternates) means a large
//! write never stops the reader, so neither side can deadlock on full TCP buffers.
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

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lib_chan_protocol::message::{ClientMessage, ServerMessage};
use lib_chan_protocol::{etf, FrameCodec, FrameError, Term};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

use crate::error::{CloseReason, Error};
use crate::in_flight::{InFlight, Kind};

/// How long a client-initiated close may take: sending `close` and close_notify, then
/// waiting for the server to close its side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed write, how long the reader may look for the server's reason.
const WRITE_FAILURE_GRACE: Duration = Duration::from_millis(500);

/// How long to spend saying goodbye (close_notify) after the server ended the connection.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The writer stops draining the queue into one batch at this size.
const MAX_BATCH: usize = 64 * 1024;

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
    /// Encoded frames from the handles; `None` once every handle is dropped.
    pub(crate) outgoing: mpsc::Receiver<Bytes>,
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
    /// `host:port`, for logs.
    pub(crate) addr: String,
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
            mut outgoing,
            pushes,
            in_flight,
            closed,
            closing,
            close_requested,
            addr,
        } = self;
        let mut close_frame = BytesMut::new();
        // `close` is a few bytes: it fits any limit a server could announce.
        let _ = codec.encode_term(&ClientMessage::Close.to_term(), &mut close_frame);
        let close_frame = close_frame.freeze();

        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = FramedRead::new(rd, codec);
        reader.read_buffer_mut().extend_from_slice(&leftover);

        let (reason, server_ended) = {
            let read = read_loop(&mut reader, &in_flight, &pushes);
            let write = write_loop(&mut wr, &mut outgoing, &close_requested, &close_frame);
            tokio::pin!(read, write);
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
            }
        };
        tracing::debug!(%addr, %reason, "channel closed");
        // Fail every waiting call first: they should not wait for our goodbye.
        in_flight.close(reason.clone());
        closed.send_replace(Some(reason));
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
        let message = match etf::decode(&payload) {
            Ok(term) => match ServerMessage::from_term(&term) {
                Ok(message) => message,
                Err(e) => return CloseReason::Protocol(e.to_string()),
            },
            Err(e) => return CloseReason::Protocol(e.to_string()),
        };
        match message {
            ServerMessage::Send(y) => {
                // Waits while the queue is full: backpressure onto the server. Fails only
                // when every handle is gone, and then nobody wants the push.
                let _ = pushes.send(y).await;
            }
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

/// Writes queued frames, coalescing bursts, until the client closes or a write fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    wr: &mut W,
    outgoing: &mut mpsc::Receiver<Bytes>,
    close_requested: &Notify,
    close_frame: &Bytes,
) -> WriteEnd {
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            // Frames queued before a close request go out first (and the close sequence
            // drains the rest).
            biased;
            frame = outgoing.recv() => frame,
            () = close_requested.notified() => None,
        };
        let Some(first) = first else {
            // close() was called, or every handle is gone.
            return close_sequence(wr, outgoing, &mut batch, close_frame).await;
        };
        let written = match outgoing.try_recv() {
            // Nothing else queued: write the frame as it is, no copy.
            Err(_) => write_and_flush(wr, &first).await,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < MAX_BATCH {
                    match outgoing.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                let written = write_and_flush(wr, &batch).await;
                if batch.capacity() > KEEP_BATCH_CAPACITY {
                    batch = BytesMut::new();
                }
                written
            }
        };
        if let Err(e) = written {
            return WriteEnd::Failed(e);
        }
    }
}

/// Sends what is still queued, then `close`, then close_notify, within [`CLOSE_TIMEOUT`].
async fn close_sequence<W: AsyncWrite + Unpin>(
    wr: &mut W,
    outgoing: &mut mpsc::Receiver<Bytes>,
    batch: &mut BytesMut,
    close_frame: &Bytes,
) -> WriteEnd {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    // No new frames from here on; the ones already queued are still received.
    outgoing.close();
    batch.clear();
    while let Ok(frame) = outgoing.try_recv() {
        batch.extend_from_slice(&frame);
    }
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
