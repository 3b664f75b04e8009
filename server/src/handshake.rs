//! The handshake: TLS, then `{start_service, Service, Password, ArgsC}`, then the welcome.
//!
//! Runs inside the connection's own task, under two deadlines: one for TLS and one for
//! the whole pre-authentication phase, both futures rather than signals. It returns an
//! [`Authenticated`] value, the only way to reach a handler, so nothing the client sends
//! before the password is verified can reach a service. An unknown service and a wrong
//! password get the same `{error, auth_failed}`, after the same argon2 work.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::message::{ErrorReason, HandshakeReply, Hello, Welcome};
use lib_chan_protocol::{etf, FrameCodec, FrameError, Term, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;

use crate::admission::Outcome;
use crate::auth::CheckOutcome;
use crate::middle_man::linger_close;
use crate::server::{ServerState, ServiceEntry};
use crate::stats::protocol_error;

/// The read buffer a connection starts with.
const READ_BUFFER: usize = 1024;
/// Pre-handshake pings answered on one connection at most.
const MAX_PINGS: usize = 16;
/// Extra room in the send limit over `max_frame`, so that a reply wrapping a value of
/// `max_frame` bytes (`{reply, Ref, {ok, V}}`) still fits.
pub(crate) const SEND_MARGIN: usize = 1024;

/// A connection whose client named a service and proved its password.
pub(crate) struct Authenticated<S> {
    pub(crate) reader: FramedRead<S, FrameCodec>,
    pub(crate) service: Arc<ServiceEntry>,
    pub(crate) args_c: Term,
}

/// How a handshake ended without a service.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// TLS did not complete (garbage, plaintext, a bad ClientHello, too slow).
    Tls(String),
    /// The client was answered `{error, Reason}`.
    Refused(ErrorReason),
    /// The client went away, or only pinged.
    Gone(String),
}

impl HandshakeFailure {
    /// A short code for logs and counters.
    pub(crate) fn code(&self) -> String {
        match self {
            HandshakeFailure::Tls(_) => "tls_failed".into(),
            HandshakeFailure::Refused(r) => r.to_string(),
            HandshakeFailure::Gone(_) => "gone_before_auth".into(),
        }
    }

    /// What this failure costs the source in penalties.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            HandshakeFailure::Refused(ErrorReason::AuthFailed) => Outcome::AuthFailed,
            HandshakeFailure::Refused(ErrorReason::Timeout) => Outcome::TimedOut,
            HandshakeFailure::Refused(ErrorReason::Busy) => Outcome::Clean,
            _ => Outcome::NoAttempt,
        }
    }

    /// What happened, for the log.
    pub(crate) fn detail(&self) -> &str {
        match self {
            HandshakeFailure::Tls(d) | HandshakeFailure::Gone(d) => d,
            HandshakeFailure::Refused(_) => "",
        }
    }
}

/// Runs TLS and the `start_service` exchange for one accepted TCP connection.
pub(crate) async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    state: &ServerState,
) -> Result<Authenticated<TlsStream<TcpStream>>, HandshakeFailure> {
    let limits = &state.limits;
    let started = Instant::now();
    let pre_auth_deadline = started + limits.handshake_timeout;
    let tls_deadline = (started + limits.tls_handshake_timeout).min(pre_auth_deadline);
    let tls = match timeout_at(tls_deadline, state.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(HandshakeFailure::Tls(e.to_string())),
        Err(_) => return Err(HandshakeFailure::Tls("TLS handshake timed out".into())),
    };
    authenticate(tls, peer, state, pre_auth_deadline).await
}

/// The handshake after TLS, over any stream: `start_service` (answering pings) and the
/// password check, by `deadline`; a refusal is answered and the stream closed.
pub(crate) async fn authenticate<S>(
    stream: S,
    peer: SocketAddr,
    state: &ServerState,
    deadline: Instant,
) -> Result<Authenticated<S>, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = FrameCodec::new(HANDSHAKE_MAX_FRAME, state.limits.max_frame + SEND_MARGIN);
    // A small read buffer: it grows with bytes that arrive (pipelined calls, large
    // values), and an idle connection, the common case, keeps only this much.
    let mut reader = FramedRead::with_capacity(stream, codec, READ_BUFFER);
    match timeout_at(deadline, start_service(&mut reader, peer, state)).await {
        Ok(Ok((service, args_c))) => Ok(Authenticated {
            reader,
            service,
            args_c,
        }),
        Ok(Err(failure)) => {
            refuse(reader, &failure).await;
            Err(failure)
        }
        Err(_) => {
            let failure = HandshakeFailure::Refused(ErrorReason::Timeout);
            refuse(reader, &failure).await;
            Err(failure)
        }
    }
}

/// Reads frames until a valid `start_service` (answering pings), then authenticates;
/// returns the service and the client's `ArgsC`.
async fn start_service<S>(
    reader: &mut FramedRead<S, FrameCodec>,
    peer: SocketAddr,
    state: &ServerState,
) -> Result<(Arc<ServiceEntry>, Term), HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = 0;
    loop {
        let payload = match reader.next().await {
            None => return Err(HandshakeFailure::Gone("closed before start_service".into())),
            Some(Ok(p)) => p,
            Some(Err(FrameError::TooLarge { .. })) => {
                return Err(HandshakeFailure::Refused(ErrorReason::FrameTooLarge))
            }
            Some(Err(FrameError::Empty)) => {
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest))
            }
            Some(Err(e)) => return Err(HandshakeFailure::Gone(e.to_string())),
        };
        // Nothing of the frame itself reaches the log: it may hold a password.
        let term = match etf::decode(&payload) {
            Ok(t) => t,
            Err(e) => {
                protocol_error!(%peer, error = %e, "bad first frame");
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
            }
        };
        let hello = match Hello::from_term(&term) {
            Ok(h) => h,
            Err(_) if looks_like_start_service(&term) => {
                // A start_service whose service or password has the wrong type is
                // answered exactly like a wrong password, after the same work, so that
                // the reply tells nothing about what the server checks first.
                let _ = state.checker.check("", None, Vec::new()).await;
                protocol_error!(%peer, "start_service with a malformed service or password");
                return Err(HandshakeFailure::Refused(ErrorReason::AuthFailed));
            }
            Err(_) => {
                protocol_error!(%peer, "first frame is neither start_service nor ping");
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
            }
        };
        match hello {
            Hello::Ping(r) => {
                pings += 1;
                if pings > MAX_PINGS {
                    return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
                }
                send(reader, &HandshakeReply::Pong(r))
                    .await
                    .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
            }
            Hello::StartService {
                service,
                password,
                args,
            } => {
                let entry = state.services.get(&service).cloned();
                let outcome = state
                    .checker
                    .check(
                        &service,
                        entry.as_ref().map(|e| e.config.password_hash.as_str()),
                        password.0,
                    )
                    .await;
                match (outcome, entry) {
                    (CheckOutcome::Valid, Some(entry)) => {
                        tracing::info!(%peer, service = %service, "authenticated");
                        let welcome = HandshakeReply::Welcome(Welcome {
                            protocol: PROTOCOL_VERSION,
                            max_frame: state.limits.max_frame,
                            server: format!("lib_chan-rs {}", env!("CARGO_PKG_VERSION")),
                        });
                        send(reader, &welcome)
                            .await
                            .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
                        reader.decoder_mut().set_max_recv(state.limits.max_frame);
                        return Ok((entry, args));
                    }
                    (CheckOutcome::Busy, _) => {
                        protocol_error!(%peer, "password checks saturated: busy");
                        return Err(HandshakeFailure::Refused(ErrorReason::Busy));
                    }
                    _ => {
                        // The service name is the client's text: log a bounded snippet.
                        let shown: String = service.chars().take(64).collect();
                        protocol_error!(%peer, service = %shown.escape_debug(), "authentication failed");
                        return Err(HandshakeFailure::Refused(ErrorReason::AuthFailed));
                    }
                }
            }
        }
    }
}

/// Writes one handshake frame and flushes it.
async fn send<S>(
    reader: &mut FramedRead<S, FrameCodec>,
    reply: &HandshakeReply,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(128);
    reader
        .decoder()
        .encode_term(&reply.to_term(), &mut buf)
        .map_err(std::io::Error::other)?;
    let stream = reader.get_mut();
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Answers a refused handshake with `{error, Reason}` and closes lingeringly; a client
/// that went away or never finished TLS is just dropped.
async fn refuse<S>(mut reader: FramedRead<S, FrameCodec>, failure: &HandshakeFailure)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let HandshakeFailure::Refused(reason) = failure {
        let reply = HandshakeReply::Refused(reason.clone());
        let _ = tokio::time::timeout(crate::middle_man::LINGER, send(&mut reader, &reply)).await;
        linger_close(reader.into_inner()).await;
    }
}

/// A 4-tuple tagged `start_service`, whatever its fields hold.
fn looks_like_start_service(t: &Term) -> bool {
    matches!(t.as_tuple(), Some([tag, _, _, _]) if tag.is_atom("start_service"))
}
