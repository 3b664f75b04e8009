//! Opening a channel: TCP, TLS, then `start_service` until the welcome (PROTOCOL.md
//! section 4), and the password-less `{ping, Ref}` probe.
//!
//! Each phase has its own timeout: [`ConnectOptions::connect_timeout`] for TCP, and one
//! deadline of [`ConnectOptions::handshake_timeout`] for TLS plus `start_service`. Once
//! the welcome is in, the TLS stream and any bytes read past the welcome go to the
//! dispatch task ([`crate::dispatch`]).
//!
//! [`ConnectOptions::connect_timeout`]: crate::ConnectOptions::connect_timeout
//! [`ConnectOptions::handshake_timeout`]: crate::ConnectOptions::handshake_timeout

use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lib_chan_protocol::credential::{challenge_message, Credential, Password, Proof, NONCE_LEN};
use lib_chan_protocol::message::{ErrorReason, HandshakeReply, Hello};
use lib_chan_protocol::{etf, FrameCodec, FrameError, Term, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;

use crate::channel::Channel;
use crate::error::Error;
use crate::login::{Ed25519Key, Login, LoginKind};
use crate::options::ConnectOptions;

/// The largest frame accepted from the server before the welcome. The welcome is a small
/// map; this leaves room for servers that add keys, and still bounds a hostile answer.
pub const HANDSHAKE_MAX_RECV: usize = 64 * 1024;

/// The least receive limit after the welcome: `max(max_frame, MIN_MAX_RECV)`. The server
/// bounds what it sends by its own `max_frame`, so this only matters for a server that
/// announces a small `max_frame`; it is generous on purpose, and the codec never reserves
/// memory for a declared length before the bytes arrive.
pub const MIN_MAX_RECV: usize = 1 << 20;

/// A TLS connection that has not yet sent its first frame.
struct Opened {
    stream: TlsStream<TcpStream>,
    /// `host:port`, for messages.
    addr: String,
    /// When the handshake (TLS + first exchange) must be over.
    deadline: tokio::time::Instant,
    /// The first frame went out with TLS's last handshake message: the next
    /// [`exchange`] only reads.
    first_sent: bool,
}

/// `host:port`, with brackets around an IPv6 address.
fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Attempts at TCP plus TLS when the server closes each at once (see
/// [`Error::RefusedAtAccept`]).
const ACCEPT_ATTEMPTS: u32 = 3;
/// The pause between such attempts.
const ACCEPT_RETRY_GAP: Duration = Duration::from_millis(200);

/// The servers (`host:port`) this process has completed a TLS handshake with: one of
/// them closing a connection at once is probably refusing us, not broken.
fn answered_before(addr: &str, remember: bool) -> bool {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let known = seen.iter().any(|a| a == addr);
    if remember && !known {
        if seen.len() >= 256 {
            seen.remove(0);
        }
        seen.push(addr.to_owned());
    }
    known
}

/// True for a TLS handshake that ended because the peer closed or reset the connection
/// (no TLS alert, no certificate problem).
fn closed_at_once(e: &io::Error) -> bool {
    let rustls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    !rustls
        && matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        )
}

/// TCP then TLS, each under its timeout; a server that closes each attempt at once is
/// tried again, then reported as [`Error::RefusedAtAccept`].
///
/// `first`, the handshake frame the client sends first, is handed to TLS before the
/// handshake starts: it goes out encrypted right behind the client's Finished, in the
/// same write and the same TCP segment (the server then reads both at once), instead of
/// in a write of its own a moment later. Not early data: nothing is sent before the
/// handshake is complete. The [`exchange`] for it then only reads the answer.
async fn open(
    opts: &ConnectOptions,
    host: &str,
    port: u16,
    first: Option<&Hello>,
) -> Result<Opened, Error> {
    // Encoded before connecting: a frame that cannot be sent fails with no connection made.
    let first = first.map(encode_hello).transpose()?;
    let mut attempt = 1;
    loop {
        match open_once(opts, host, port, first.as_deref()).await {
            Ok(opened) => {
                answered_before(&opened.addr, true);
                return Ok(opened);
            }
            Err(OpenFailure::Closed(addr)) => {
                if answered_before(&addr, false) || attempt == ACCEPT_ATTEMPTS {
                    return Err(Error::RefusedAtAccept {
                        addr,
                        attempts: attempt,
                    });
                }
                attempt += 1;
                tokio::time::sleep(ACCEPT_RETRY_GAP).await;
            }
            Err(OpenFailure::Other(e)) => return Err(e),
        }
    }
}

/// Why one attempt at TCP plus TLS failed.
enum OpenFailure {
    /// The server closed the connection during the TLS handshake, without an alert.
    Closed(String),
    Other(Error),
}

/// One TCP connection and TLS handshake, each under its timeout.
async fn open_once(
    opts: &ConnectOptions,
    host: &str,
    port: u16,
    first: Option<&[u8]>,
) -> Result<Opened, OpenFailure> {
    // Accept "[::1]" as well as "::1".
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addr = display_addr(host, port);
    let name = opts.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
        OpenFailure::Other(Error::Config(format!(
            "{name:?} is neither a DNS name nor an IP address, so it cannot be checked in \
             the server's certificate"
        )))
    })?;
    let config = opts.client_config().map_err(OpenFailure::Other)?;

    let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| OpenFailure::Other(Error::Timeout("TCP connect")))?
        .map_err(|e| OpenFailure::Other(Error::io(format!("connection to {addr}"), e)))?;
    // Frames are written whole and flushed; don't let Nagle hold back small ones.
    tcp.set_nodelay(true)
        .map_err(|e| OpenFailure::Other(Error::io(format!("connection to {addr}"), e)))?;

    let deadline = tokio::time::Instant::now() + opts.handshake_timeout;
    let mut first_sent = false;
    let handshake = TlsConnector::from(config).connect_with(server_name, tcp, |tls| {
        if let Some(first) = first {
            // Held by rustls until the handshake is complete. The frame is at most
            // HANDSHAKE_MAX_FRAME (4 KiB), far below rustls's 64 KiB plaintext buffer,
            // which is empty here: it is taken whole.
            first_sent = matches!(std::io::Write::write(&mut tls.writer(), first), Ok(n) if n == first.len());
        }
    });
    let stream = match timeout_at(deadline, handshake).await {
        Err(_) => return Err(OpenFailure::Other(Error::Timeout("TLS handshake"))),
        Ok(Err(e)) if closed_at_once(&e) => return Err(OpenFailure::Closed(addr)),
        Ok(Err(e)) => {
            return Err(OpenFailure::Other(crate::tls::handshake_error(
                &addr,
                name,
                opts.trust_kind(),
                e,
            )))
        }
        Ok(Ok(stream)) => stream,
    };
    Ok(Opened {
        stream,
        addr,
        deadline,
        first_sent,
    })
}

/// One handshake frame, encoded.
fn encode_hello(hello: &Hello) -> Result<BytesMut, Error> {
    let codec = FrameCodec::new(HANDSHAKE_MAX_RECV, HANDSHAKE_MAX_FRAME);
    let mut out = BytesMut::new();
    codec
        .encode_term(&hello.to_term(), &mut out)
        .map_err(|e| match e {
            FrameError::TooLarge { len, max } => Error::Encode(format!(
                "the first frame is {len} bytes, over the {max}-byte handshake limit \
                 (are the service arguments that large?)"
            )),
            other => Error::Encode(other.to_string()),
        })?;
    Ok(out)
}

/// Writes one handshake frame (unless [`open`] sent it with TLS's Finished: then `hello`
/// must be the frame given to it) and reads the server's one answer, before `deadline`.
/// Returns the answer and any bytes that arrived after it.
async fn exchange(
    opened: &mut Opened,
    hello: &Hello,
    phase: &'static str,
) -> Result<(HandshakeReply, BytesMut), Error> {
    let codec = FrameCodec::new(HANDSHAKE_MAX_RECV, HANDSHAKE_MAX_FRAME);
    let out = if std::mem::take(&mut opened.first_sent) {
        None
    } else {
        Some(encode_hello(hello)?)
    };
    let addr = opened.addr.clone();
    let io_err = |e: io::Error| Error::io(format!("handshake with {addr}"), e);
    let work = async {
        if let Some(out) = &out {
            opened.stream.write_all(out).await.map_err(io_err)?;
        }
        // Also pushes out a first frame TLS may still hold.
        opened.stream.flush().await.map_err(io_err)?;
        let mut reader = FramedRead::new(&mut opened.stream, codec);
        let payload = match reader.next().await {
            Some(Ok(payload)) => payload,
            Some(Err(FrameError::Io(e))) => return Err(io_err(e)),
            Some(Err(e)) => {
                return Err(Error::Protocol(format!(
                    "the answer from {addr} is not a lib_chan frame: {e} (is it a lib_chan \
                     server?)"
                )))
            }
            None => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without answering",
                )))
            }
        };
        // Bytes past the answer (a push sent right after the welcome) must not be lost.
        Ok((payload, reader.read_buffer().clone()))
    };
    let (payload, rest): (Bytes, BytesMut) = timeout_at(opened.deadline, work)
        .await
        .map_err(|_| Error::Timeout(phase))??;
    let term = etf::decode(&payload).map_err(|e| {
        Error::Protocol(format!(
            "the answer from {} is not a valid term: {e}",
            opened.addr
        ))
    })?;
    let reply = HandshakeReply::from_term(&term)
        .map_err(|e| Error::Protocol(format!("unexpected answer from {}: {e}", opened.addr)))?;
    Ok((reply, rest))
}

/// Maps a refusal to the error a caller matches on.
fn refused(reason: ErrorReason) -> Error {
    match reason {
        ErrorReason::AuthFailed => Error::AuthFailed,
        ErrorReason::Busy => Error::Busy,
        other => Error::Refused(other),
    }
}

/// [`ConnectOptions::connect`]: open, `start_service`, welcome, spawn the dispatch task.
pub(crate) async fn connect(
    opts: &ConnectOptions,
    host: &str,
    port: u16,
    service: &str,
    login: &Login,
    args: Term,
) -> Result<Channel, Error> {
    if matches!(login.kind, LoginKind::Certificate { .. })
        && opts.custom_tls.is_none()
        && opts.trust.client_cert.is_none()
    {
        return Err(Error::Config(
            "a certificate login needs a client certificate: set \
             ConnectOptions::client_cert_files (or --cert and --cert-key)"
                .into(),
        ));
    }
    let start_service = |credential| Hello::StartService {
        service: service.to_owned(),
        credential,
        args,
        options: session_options(opts),
    };
    // The first frame rides with TLS's Finished: start_service when the credential is
    // known up front, the challenge request for a key login.
    let (mut opened, hello) = match stated_credential(&login.kind) {
        Ok(credential) => {
            let hello = start_service(credential);
            (open(opts, host, port, Some(&hello)).await?, hello)
        }
        Err((user, key)) => {
            let mut opened = open(opts, host, port, Some(&CHALLENGE_REQUEST)).await?;
            let nonce = challenge(&mut opened, login).await?;
            let cert_hash = server_cert_hash(&opened)?;
            let message = challenge_message(&nonce, &cert_hash, user, service);
            let hello = start_service(Credential::User {
                name: user.to_owned(),
                proof: Proof::Ed25519(key.sign(&message)),
            });
            (opened, hello)
        }
    };
    let (reply, rest) = exchange(&mut opened, &hello, "start_service handshake").await?;
    let welcome = match reply {
        HandshakeReply::Welcome(w) => w,
        HandshakeReply::Refused(ErrorReason::AuthFailed) => return Err(login.refused()),
        HandshakeReply::Refused(reason) => return Err(refused(reason)),
        HandshakeReply::Pong(_) | HandshakeReply::Challenge { .. } => {
            return Err(Error::Protocol(format!(
                "{} answered start_service with a pong or a challenge",
                opened.addr
            )))
        }
    };
    if !(1..=PROTOCOL_VERSION).contains(&welcome.protocol) {
        return Err(Error::Protocol(format!(
            "{} speaks lib_chan protocol version {}, this client speaks {PROTOCOL_VERSION}",
            opened.addr, welcome.protocol
        )));
    }
    tracing::debug!(addr = %opened.addr, server = %welcome.server, max_frame = welcome.max_frame, "channel open");
    let codec = FrameCodec::new(welcome.max_frame.max(MIN_MAX_RECV), welcome.max_frame);
    Ok(Channel::spawn(
        opened.stream,
        codec,
        rest,
        welcome,
        opts.rpc_timeout,
        opts.keepalive,
        opened.addr,
    ))
}

/// The credential a login states in `start_service`; for a key login, which must first
/// ask for the server's challenge, the user and the key that will sign it.
fn stated_credential(kind: &LoginKind) -> Result<Credential, (&str, &Ed25519Key)> {
    Ok(match kind {
        LoginKind::ServicePassword(p) => Credential::ServicePassword(Password(p.clone())),
        LoginKind::UserPassword { user, password } => Credential::User {
            name: user.clone(),
            proof: Proof::Password(Password(password.clone())),
        },
        LoginKind::Certificate { user } => Credential::User {
            name: user.clone(),
            proof: Proof::Certificate,
        },
        LoginKind::Key { user, key } => return Err((user, key)),
    })
}

/// The handshake options map (PROTOCOL.md 4.3), only when a session is asked for: a
/// book-password login without one keeps the version 1 4-tuple.
fn session_options(opts: &ConnectOptions) -> Option<Term> {
    let request = opts.session.as_ref()?;
    let session = match request {
        crate::SessionRequest::New => Term::atom("new"),
        crate::SessionRequest::Resume(id) => Term::binary(id),
    };
    let mut entries = vec![(Term::atom("session"), session)];
    if let Some(grace) = opts.session_grace {
        let ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        entries.push((Term::atom("grace"), Term::Int(ms)));
    }
    Some(Term::map(entries))
}

/// One challenge per connection: any reference will do.
const CHALLENGE_REF: u64 = 1;

/// A key login's first frame.
const CHALLENGE_REQUEST: Hello = Hello::Challenge(CHALLENGE_REF);

/// `{challenge, Ref}` and the server's nonce (PROTOCOL.md section 4.2).
async fn challenge(opened: &mut Opened, login: &Login) -> Result<[u8; NONCE_LEN], Error> {
    let (reply, _) = exchange(opened, &CHALLENGE_REQUEST, "challenge").await?;
    match reply {
        HandshakeReply::Challenge {
            id: CHALLENGE_REF,
            nonce,
        } => <[u8; NONCE_LEN]>::try_from(nonce.as_slice()).map_err(|_| {
            Error::Protocol(format!(
                "{} sent a challenge nonce of {} bytes, not {NONCE_LEN}",
                opened.addr,
                nonce.len()
            ))
        }),
        HandshakeReply::Refused(ErrorReason::AuthFailed) => Err(login.refused()),
        HandshakeReply::Refused(reason) => Err(refused(reason)),
        _ => Err(Error::Protocol(format!(
            "{} did not answer the challenge request (a lib_chan server older than \
             protocol version 2 has no key logins)",
            opened.addr
        ))),
    }
}

/// SHA-256 of the server's end-entity certificate as received in this handshake.
fn server_cert_hash(opened: &Opened) -> Result<[u8; 32], Error> {
    let (_, session) = opened.stream.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Error::Protocol("the server presented no certificate".into()))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()).as_ref());
    Ok(out)
}

/// [`crate::ping`]: TLS, `{ping, Ref}`, `{pong, Ref}`, then an orderly TLS close.
pub(crate) async fn ping(opts: &ConnectOptions, host: &str, port: u16) -> Result<Duration, Error> {
    /// Any reference will do: one probe per connection.
    const PING_REF: u64 = 1;
    // Not sent with TLS's Finished: the round trip is timed from here.
    let mut opened = open(opts, host, port, None).await?;
    let start = Instant::now();
    let (reply, _) = exchange(&mut opened, &Hello::Ping(PING_REF), "ping").await?;
    let rtt = start.elapsed();
    let result = match reply {
        HandshakeReply::Pong(PING_REF) => Ok(rtt),
        HandshakeReply::Pong(other) => Err(Error::Protocol(format!(
            "{} answered ping {PING_REF} with pong {other}",
            opened.addr
        ))),
        HandshakeReply::Refused(reason) => Err(refused(reason)),
        HandshakeReply::Welcome(_) | HandshakeReply::Challenge { .. } => {
            Err(Error::Protocol(format!(
                "{} answered a ping with a welcome or a challenge",
                opened.addr
            )))
        }
    };
    // Best effort: say goodbye (close_notify) so the server need not time us out.
    let _ = tokio::time::timeout(Duration::from_secs(1), opened.stream.shutdown()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_get_brackets() {
        assert_eq!(display_addr("::1", 1234), "[::1]:1234");
        assert_eq!(display_addr("localhost", 1234), "localhost:1234");
    }
}
