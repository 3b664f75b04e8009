//! The handshake: TLS, then `{start_service, Service, Credential, ArgsC[, Options]}`
//! (with `ping`s and `challenge`s before it), then the welcome.
//!
//! Runs inside the connection's own task, under two deadlines: one for TLS and one for
//! the whole pre-authentication phase, both futures rather than signals. It returns an
//! [`Authenticated`] value, the only way to reach a handler, so nothing the client sends
//! before its credential is verified can reach a service. The credential is decided by
//! [`login`](crate::login); every refusal gets the same `{error, auth_failed}` after the
//! same class of work, and one audit line ([`audit`](crate::audit)).
//!
//! A client that used only version 1 forms (a 4-tuple with the service password, no
//! `challenge`) gets exactly the version 1 welcome.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::credential::NONCE_LEN;
use lib_chan_protocol::message::{ErrorReason, HandshakeReply, Hello, Welcome};
use lib_chan_protocol::{
    etf, FrameCodec, FrameError, Term, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, PROTOCOL_VERSION_1,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;

use crate::admission::Outcome;
use crate::audit::{LoginRecord, Refusal};
use crate::login::{self, Attempt, Binding, TlsInfo, Verdict};
use crate::metrics::AuthResult;
use crate::middle_man::linger_close;
use crate::server::{ServerState, ServiceEntry};
use crate::sessions::{SessionLease, SessionLimits, SessionRequest};
use crate::stats::protocol_error;
use crate::users::Identity;

/// The read buffer a connection starts with.
const READ_BUFFER: usize = 1024;
/// Pre-handshake pings and challenges answered on one connection at most.
const MAX_PINGS: usize = 16;
/// Extra room in the send limit over `max_frame`, so that a reply wrapping a value of
/// `max_frame` bytes (`{reply, Ref, {ok, V}}`) still fits.
pub(crate) const SEND_MARGIN: usize = 1024;

/// A connection whose client named a service and proved its credential.
pub(crate) struct Authenticated<S> {
    pub(crate) reader: FramedRead<S, FrameCodec>,
    pub(crate) service: Arc<ServiceEntry>,
    pub(crate) args_c: Term,
    pub(crate) identity: Identity,
    pub(crate) binding: Binding,
    pub(crate) tls: TlsInfo,
    /// The session the client asked for (started or resumed).
    pub(crate) session: Option<SessionLease>,
}

/// What `start_service` let in.
struct Started {
    service: Arc<ServiceEntry>,
    args_c: Term,
    identity: Identity,
    binding: Binding,
    session: Option<SessionLease>,
}

/// The session options of a `start_service` (PROTOCOL.md 4.3): `session => new | Id` and
/// `grace => Ms`. Other keys, and values of the wrong form, are ignored.
fn session_options(options: Option<&Term>) -> (Option<SessionRequest>, Option<Duration>) {
    let Some(map) = options else {
        return (None, None);
    };
    let request = match map.map_get(&Term::atom("session")) {
        Some(t) if t.is_atom("new") => Some(SessionRequest::New),
        Some(t) => t.as_binary().map(|b| SessionRequest::Resume(b.to_vec())),
        None => None,
    };
    let grace = map
        .map_get(&Term::atom("grace"))
        .and_then(Term::as_int)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis);
    (request, grace)
}

/// Who is connecting, for the login and its audit line.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// The connection id (also the middle man's, once authenticated).
    pub(crate) conn: u64,
    pub(crate) tls: TlsInfo,
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
    conn: u64,
    state: &ServerState,
) -> Result<Authenticated<Box<TlsStream<TcpStream>>>, HandshakeFailure> {
    let limits = &state.limits;
    let started = Instant::now();
    let pre_auth_deadline = started + limits.handshake_timeout;
    let tls_deadline = (started + limits.tls_handshake_timeout).min(pre_auth_deadline);
    let tls = match timeout_at(tls_deadline, state.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(HandshakeFailure::Tls(e.to_string())),
        Err(_) => return Err(HandshakeFailure::Tls("TLS handshake timed out".into())),
    };
    let info = {
        let (_, session) = tls.get_ref();
        TlsInfo {
            version: match (
                session.protocol_version(),
                session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            ) {
                (Some(rustls::ProtocolVersion::TLSv1_3), false) => "TLSv1.3",
                (Some(rustls::ProtocolVersion::TLSv1_3), true) => "TLSv1.3 resumed",
                (Some(rustls::ProtocolVersion::TLSv1_2), false) => "TLSv1.2",
                (Some(rustls::ProtocolVersion::TLSv1_2), true) => "TLSv1.2 resumed",
                _ => "TLS",
            },
            peer_certs: session
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        }
    };
    let peer = Peer {
        addr: peer,
        conn,
        tls: info,
    };
    // Boxed once here: the stream (over a kilobyte of TLS state) then moves from the
    // handshake into the middle man, and sits in each one's future, as a pointer.
    authenticate(Box::new(tls), peer, state, pre_auth_deadline).await
}

/// The handshake after TLS, over any stream: `start_service` (answering pings) and the
/// password check, by `deadline`; a refusal is answered and the stream closed.
pub(crate) async fn authenticate<S>(
    stream: S,
    peer: Peer,
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
    match timeout_at(deadline, start_service(&mut reader, &peer, state)).await {
        Ok(Ok(started)) => Ok(Authenticated {
            reader,
            service: started.service,
            args_c: started.args_c,
            identity: started.identity,
            binding: started.binding,
            tls: peer.tls,
            session: started.session,
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

/// Reads frames until a valid `start_service` (answering pings and challenges), then
/// decides the login.
async fn start_service<S>(
    reader: &mut FramedRead<S, FrameCodec>,
    peer: &Peer,
    state: &ServerState,
) -> Result<Started, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = 0;
    // The nonce of the last challenge: valid for the next start_service only.
    let mut nonce: Option<[u8; NONCE_LEN]> = None;
    let mut challenged = false;
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
                protocol_error!(peer = %peer.addr, error = %e, "bad first frame");
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
            }
        };
        let hello = match Hello::from_term(&term) {
            Ok(h) => h,
            Err(_) if looks_like_start_service(&term) => {
                // A start_service whose service or credential has the wrong form is
                // answered exactly like a wrong password, after the same work, so that
                // the reply tells nothing about what the server checks first.
                let started = Instant::now();
                let _ = state.checker.check("", None, Vec::new()).await;
                audit(
                    state,
                    peer,
                    "malformed",
                    None,
                    None,
                    "-",
                    Err(Refusal::Malformed),
                    started,
                );
                return Err(HandshakeFailure::Refused(ErrorReason::AuthFailed));
            }
            Err(_) => {
                protocol_error!(peer = %peer.addr, "first frame is neither start_service, ping nor challenge");
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
            }
        };
        let version_1 = hello.is_version_1() && !challenged;
        match hello {
            Hello::Ping(_) | Hello::Challenge(_) if pings >= MAX_PINGS => {
                return Err(HandshakeFailure::Refused(ErrorReason::BadRequest));
            }
            Hello::Ping(r) => {
                pings += 1;
                send(reader, &HandshakeReply::Pong(r))
                    .await
                    .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
            }
            Hello::Challenge(id) => {
                pings += 1;
                challenged = true;
                let mut fresh = [0u8; NONCE_LEN];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                    .map_err(|_| HandshakeFailure::Gone("no randomness for a nonce".into()))?;
                nonce = Some(fresh);
                let reply = HandshakeReply::Challenge {
                    id,
                    nonce: fresh.to_vec(),
                };
                send(reader, &reply)
                    .await
                    .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
            }
            Hello::StartService {
                service,
                credential,
                args,
                options,
            } => {
                let (session_request, grace) = session_options(options.as_ref());
                let started = Instant::now();
                let kind = credential.kind();
                let user = credential.user().map(str::to_owned);
                let decision = login::decide(
                    state,
                    Attempt {
                        service: &service,
                        credential,
                        nonce: nonce.take(),
                        peer: peer.addr,
                        tls: &peer.tls,
                    },
                )
                .await;
                let fingerprint = decision.fingerprint.as_deref();
                let (accepted, result, outcome) = match decision.verdict {
                    // A service that cannot take the connection now (a port program
                    // being restarted) is answered busy; the caller's deadline bounds
                    // the wait.
                    Verdict::Accepted(a) => {
                        let ready = match a.entry.service.ready() {
                            Some(ready) => ready.await,
                            None => true,
                        };
                        let session = match (&session_request, ready) {
                            (Some(request), true) => Some(
                                state
                                    .sessions
                                    .open(
                                        &a.entry.config.name,
                                        &a.identity,
                                        &a.entry.service,
                                        request,
                                        grace,
                                        SessionLimits {
                                            grace_max: state.limits.session_grace_max,
                                            max_sessions: state.limits.max_sessions,
                                        },
                                    )
                                    .await,
                            ),
                            _ => None,
                        };
                        match (ready, session) {
                            (false, _) => (None, AuthResult::Busy, Ok("busy")),
                            (true, Some(Err(_))) => {
                                tracing::warn!(peer = %peer.addr, "at max_sessions: a login asking for a session is answered busy");
                                (None, AuthResult::Busy, Ok("busy"))
                            }
                            (true, Some(Ok(lease))) => {
                                (Some((a, Some(lease))), AuthResult::Ok, Ok("ok"))
                            }
                            (true, None) => (Some((a, None)), AuthResult::Ok, Ok("ok")),
                        }
                    }
                    Verdict::Busy => (None, AuthResult::Busy, Ok("busy")),
                    Verdict::Refused(refusal) => (None, AuthResult::Failed, Err(refusal)),
                };
                state.metrics.login(result, kind);
                audit(
                    state,
                    peer,
                    kind,
                    user.as_deref(),
                    fingerprint,
                    &service,
                    outcome,
                    started,
                );
                let Some((accepted, session)) = accepted else {
                    return Err(HandshakeFailure::Refused(match result {
                        AuthResult::Failed => ErrorReason::AuthFailed,
                        _ => ErrorReason::Busy,
                    }));
                };
                let welcome = HandshakeReply::Welcome(Welcome {
                    protocol: if version_1 {
                        PROTOCOL_VERSION_1
                    } else {
                        PROTOCOL_VERSION
                    },
                    max_frame: state.limits.max_frame,
                    server: format!("lib_chan-rs {}", env!("CARGO_PKG_VERSION")),
                    user: accepted.identity.user().map(str::to_owned),
                    session: session.as_ref().map(|s| s.id().as_bytes().to_vec()),
                    grace_ms: session
                        .as_ref()
                        .map(|s| u64::try_from(s.grace().as_millis()).unwrap_or(u64::MAX)),
                });
                if let Some(s) = &session {
                    tracing::info!(peer = %peer.addr, session = %s.id(), resumed = s.resumed(), "session");
                }
                send(reader, &welcome)
                    .await
                    .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
                reader.decoder_mut().set_max_recv(state.limits.max_frame);
                return Ok(Started {
                    service: accepted.entry,
                    args_c: args,
                    identity: accepted.identity,
                    binding: accepted.binding,
                    session,
                });
            }
        }
    }
}

/// Writes the audit line of one login and records a refusal in the denial log.
/// `outcome` is `Ok("ok" | "busy")` or the refusal.
#[allow(clippy::too_many_arguments)]
fn audit(
    state: &ServerState,
    peer: &Peer,
    credential: &str,
    user: Option<&str>,
    fingerprint: Option<&str>,
    service: &str,
    outcome: Result<&str, Refusal>,
    started: Instant,
) {
    if let Err(refusal) = outcome {
        state.denials.record(peer.addr.ip(), user, service, refusal);
    }
    LoginRecord {
        conn: peer.conn,
        peer: peer.addr,
        tls: peer.tls.version,
        credential,
        user,
        fingerprint,
        service,
        outcome: match outcome {
            Ok(o) => o,
            Err(_) => "refused",
        },
        reason: outcome.err(),
        elapsed: started.elapsed(),
    }
    .log();
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

/// A 4- or 5-tuple tagged `start_service`, whatever its fields hold.
fn looks_like_start_service(t: &Term) -> bool {
    matches!(t.as_tuple(), Some([tag, _, _, _] | [tag, _, _, _, _]) if tag.is_atom("start_service"))
}
