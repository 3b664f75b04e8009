//! The message set of PROTOCOL.md sections 4 and 5 as Rust enums.
//!
//! Each direction and phase has its own enum, converted to and from [`Term`] here and
//! nowhere else: [`Hello`] (the client's first frame), [`HandshakeReply`] (the server's
//! answer to it), [`ClientMessage`] and [`ServerMessage`] (after the handshake). A term
//! that is no valid message gives a [`MessageError`] that says what was expected.

use std::fmt;

use crate::etf::{self, EncodeError};
use crate::term::{Atom, Term};

/// A call or ping reference: a non-negative integer the client picks.
pub type Ref = u64;

pub use crate::credential::{Credential, Password, Proof};

/// The client's first frame after TLS (and the frames it may send before it).
#[derive(Debug, Clone, PartialEq)]
pub enum Hello {
    /// `{start_service, Service, Credential, ArgsC}`, or with a fifth element,
    /// `Options` (version 2, section 4.3).
    StartService {
        /// The service name (an atom or a UTF-8 binary on the wire).
        service: String,
        /// The service password or a named user's credential.
        credential: Credential,
        /// `ArgsC`, handed to the handler.
        args: Term,
        /// The handshake options map of the 5-tuple form; `None` for the 4-tuple.
        options: Option<Term>,
    },
    /// `{ping, Ref}`: is a channel server there?
    Ping(Ref),
    /// `{challenge, Ref}`: a nonce for a key login, please (version 2, section 4.2).
    Challenge(Ref),
}

/// Why a connection or handshake was refused or ended: `{error, Reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorReason {
    /// Unknown service or wrong password.
    AuthFailed,
    /// A connection, authentication or in-flight limit was reached.
    Busy,
    /// The handshake frame did not arrive in time.
    Timeout,
    /// The first frame was not a valid `start_service`.
    BadRequest,
    /// A frame over the size limit.
    FrameTooLarge,
    /// A payload that is not a valid term.
    BadTerm,
    /// A term that is not a valid message.
    BadMessage,
    /// The client did not read its replies fast enough.
    SlowConsumer,
    /// Nothing was heard for too long.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The service or its password changed in a config reload.
    Revoked,
    /// Any other reason term.
    Other(Term),
}

impl ErrorReason {
    const NAMED: [(ErrorReason, &'static str); 11] = [
        (ErrorReason::AuthFailed, "auth_failed"),
        (ErrorReason::Busy, "busy"),
        (ErrorReason::Timeout, "timeout"),
        (ErrorReason::BadRequest, "bad_request"),
        (ErrorReason::FrameTooLarge, "frame_too_large"),
        (ErrorReason::BadTerm, "bad_term"),
        (ErrorReason::BadMessage, "bad_message"),
        (ErrorReason::SlowConsumer, "slow_consumer"),
        (ErrorReason::IdleTimeout, "idle_timeout"),
        (ErrorReason::Shutdown, "shutdown"),
        (ErrorReason::Revoked, "revoked"),
    ];

    /// The reason as the term sent on the wire.
    pub fn to_term(&self) -> Term {
        match self {
            ErrorReason::Other(t) => t.clone(),
            named => Term::atom(
                Self::NAMED
                    .iter()
                    .find(|(r, _)| r == named)
                    .map(|(_, name)| *name)
                    .expect("every named reason is in the table"),
            ),
        }
    }

    /// The reason a term names.
    pub fn from_term(t: &Term) -> ErrorReason {
        t.as_atom()
            .and_then(|a| Self::NAMED.iter().find(|(_, name)| *name == a))
            .map(|(r, _)| r.clone())
            .unwrap_or_else(|| ErrorReason::Other(t.clone()))
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_term())
    }
}

/// What the welcome announces: `{ok, #{protocol => 1, max_frame => N, server => <<..>>}}`,
/// and after a named user's login `user => Name` too.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// The protocol version: 1 for a client that used only version 1 forms, else 2.
    pub protocol: i64,
    /// The largest frame the server accepts.
    pub max_frame: usize,
    /// The server's name and version.
    pub server: String,
    /// The named user logged in as (version 2); `None` after a service-password login.
    pub user: Option<String>,
    /// The session this connection belongs to (version 2, section 8), when one was asked
    /// for: an opaque id of at least 16 bytes.
    pub session: Option<Vec<u8>>,
    /// How long, in milliseconds, the session survives without a connection.
    pub grace_ms: Option<u64>,
}

/// The server's answer during the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeReply {
    /// The service was started.
    Welcome(Welcome),
    /// `{error, Reason}`, then the server closes.
    Refused(ErrorReason),
    /// `{pong, Ref}`, the answer to a pre-handshake ping.
    Pong(Ref),
    /// `{challenge, Ref, Nonce}`, the answer to `{challenge, Ref}` (version 2).
    Challenge {
        /// The client's reference.
        id: Ref,
        /// 32 random bytes, valid for the next `start_service` of this connection only.
        nonce: Vec<u8>,
    },
}

/// A frame from client to server after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `{send, X}`: one-way.
    Send(Term),
    /// `{call, Ref, X}`: a request to be answered once.
    Call {
        /// The reference that the reply will carry.
        id: Ref,
        /// The request.
        body: Term,
    },
    /// `{ping, Ref}`.
    Ping(Ref),
    /// `close`.
    Close,
}

/// A frame from server to client after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `{send, Y}`: pushed by the handler.
    Send(Term),
    /// `{reply, Ref, Y}`.
    Reply {
        /// The call's reference.
        id: Ref,
        /// The answer.
        body: Term,
    },
    /// `{error, Ref, Reason}`: call `Ref` failed.
    CallError {
        /// The call's reference.
        id: Ref,
        /// Why, e.g. `no_reply`, `handler_crashed`, `busy`, `{bad_request, X}`.
        reason: Term,
    },
    /// `{pong, Ref}`.
    Pong(Ref),
    /// `close`: the handler closed the channel.
    Close,
    /// `{error, Reason}`: the connection ends.
    Error(ErrorReason),
}

/// A term that is not a valid message for where it arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got}")]
pub struct MessageError {
    /// What would have been valid.
    pub expected: &'static str,
    /// A short rendering of what arrived (at most about 80 characters).
    pub got: String,
}

impl MessageError {
    fn new(expected: &'static str, got: &Term) -> MessageError {
        MessageError {
            expected,
            got: snippet(got, 80),
        }
    }
}

/// Why a frame's payload is not a message: not a valid term, or a term that is not a
/// message for where it arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Not a valid ETF term.
    #[error(transparent)]
    Term(#[from] etf::DecodeError),
    /// A valid term, but not a message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Renders a term in Erlang syntax, cut to about `max` characters: for error messages
/// and logs, which must never carry a whole hostile input.
pub fn snippet(t: &Term, max: usize) -> String {
    let mut s = t.to_string();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn tagged<'a>(t: &'a Term, tag: &str) -> Option<&'a [Term]> {
    match t.as_tuple() {
        Some(items) if items.first().is_some_and(|h| h.is_atom(tag)) => Some(&items[1..]),
        _ => None,
    }
}

fn reference(t: &Term) -> Option<Ref> {
    t.as_int().and_then(|i| u64::try_from(i).ok())
}

fn ref_term(id: Ref) -> Term {
    // References come from the peer as non-negative i64s; ours are counters far below.
    Term::Int(i64::try_from(id).unwrap_or(i64::MAX))
}

impl Hello {
    const EXPECTED: &'static str =
        "{start_service, Service, Credential, ArgsC[, Options]}, {ping, Ref} or {challenge, Ref} as the first frame";

    /// The frame's term.
    pub fn to_term(&self) -> Term {
        match self {
            Hello::StartService {
                service,
                credential,
                args,
                options,
            } => {
                let mut items = vec![
                    Term::atom("start_service"),
                    Term::binary(service.as_bytes()),
                    credential.to_term(),
                    args.clone(),
                ];
                items.extend(options.clone());
                Term::tuple(items)
            }
            Hello::Ping(r) => Term::tuple([Term::atom("ping"), ref_term(*r)]),
            Hello::Challenge(r) => Term::tuple([Term::atom("challenge"), ref_term(*r)]),
        }
    }

    /// True for the forms of version 1 only: a 4-tuple `start_service` with the service
    /// password, or a ping.
    pub fn is_version_1(&self) -> bool {
        match self {
            Hello::StartService {
                credential,
                options,
                ..
            } => matches!(credential, Credential::ServicePassword(_)) && options.is_none(),
            Hello::Ping(_) => true,
            Hello::Challenge(_) => false,
        }
    }

    /// Reads a first frame.
    ///
    /// # Errors
    /// [`MessageError`] when `t` is neither a valid `start_service`, a `ping` nor a
    /// `challenge`.
    pub fn from_term(t: &Term) -> Result<Hello, MessageError> {
        let err = || MessageError::new(Self::EXPECTED, t);
        let start = tagged(t, "start_service");
        if let Some([service, credential, args, rest @ ..]) = start {
            let service = match service {
                Term::Atom(a) => a.as_str().to_owned(),
                Term::Binary(b) => std::str::from_utf8(b).map_err(|_| err())?.to_owned(),
                _ => return Err(err()),
            };
            let credential = Credential::from_term(credential).ok_or_else(err)?;
            let options = match rest {
                [] => None,
                [m @ Term::Map(_)] => Some(m.clone()),
                _ => return Err(err()),
            };
            return Ok(Hello::StartService {
                service,
                credential,
                args: args.clone(),
                options,
            });
        }
        if let Some([r]) = tagged(t, "ping") {
            return reference(r).map(Hello::Ping).ok_or_else(err);
        }
        if let Some([r]) = tagged(t, "challenge") {
            return reference(r).map(Hello::Challenge).ok_or_else(err);
        }
        Err(err())
    }
}

impl HandshakeReply {
    const EXPECTED: &'static str = "{ok, #{..}}, {error, Reason} or {pong, Ref} in the handshake";

    /// The frame's term.
    pub fn to_term(&self) -> Term {
        match self {
            HandshakeReply::Welcome(w) => Term::tuple([
                Term::atom("ok"),
                Term::map(
                    [
                        (Term::atom("protocol"), Term::Int(w.protocol)),
                        (
                            Term::atom("max_frame"),
                            Term::Int(i64::try_from(w.max_frame).unwrap_or(i64::MAX)),
                        ),
                        (Term::atom("server"), Term::binary(w.server.as_bytes())),
                    ]
                    .into_iter()
                    .chain(
                        w.user
                            .as_ref()
                            .map(|u| (Term::atom("user"), Term::binary(u.as_bytes()))),
                    )
                    .chain(
                        w.session
                            .as_ref()
                            .map(|id| (Term::atom("session"), Term::binary(id))),
                    )
                    .chain(w.grace_ms.map(|ms| {
                        (
                            Term::atom("grace"),
                            Term::Int(i64::try_from(ms).unwrap_or(i64::MAX)),
                        )
                    })),
                ),
            ]),
            HandshakeReply::Refused(r) => Term::tuple([Term::atom("error"), r.to_term()]),
            HandshakeReply::Pong(r) => Term::tuple([Term::atom("pong"), ref_term(*r)]),
            HandshakeReply::Challenge { id, nonce } => {
                Term::tuple([Term::atom("challenge"), ref_term(*id), Term::binary(nonce)])
            }
        }
    }

    /// Reads the server's handshake answer. Unknown welcome keys are ignored.
    ///
    /// # Errors
    /// [`MessageError`] for anything else, including a welcome without `protocol` or
    /// `max_frame`.
    pub fn from_term(t: &Term) -> Result<HandshakeReply, MessageError> {
        let err = || MessageError::new(Self::EXPECTED, t);
        if let Some([info]) = tagged(t, "ok") {
            let int = |k: &str| info.map_get(&Term::atom(k)).and_then(Term::as_int);
            let protocol = int("protocol").ok_or_else(err)?;
            let max_frame = int("max_frame")
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(err)?;
            let server = info
                .map_get(&Term::atom("server"))
                .and_then(Term::as_binary)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let user = info
                .map_get(&Term::atom("user"))
                .and_then(Term::as_binary)
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let session = info
                .map_get(&Term::atom("session"))
                .and_then(Term::as_binary)
                .map(<[u8]>::to_vec);
            let grace_ms = int("grace").and_then(|n| u64::try_from(n).ok());
            return Ok(HandshakeReply::Welcome(Welcome {
                protocol,
                max_frame,
                server,
                user,
                session,
                grace_ms,
            }));
        }
        if let Some([reason]) = tagged(t, "error") {
            return Ok(HandshakeReply::Refused(ErrorReason::from_term(reason)));
        }
        if let Some([r]) = tagged(t, "pong") {
            return reference(r).map(HandshakeReply::Pong).ok_or_else(err);
        }
        if let Some([r, Term::Binary(nonce)]) = tagged(t, "challenge") {
            let id = reference(r).ok_or_else(err)?;
            return Ok(HandshakeReply::Challenge {
                id,
                nonce: nonce.to_vec(),
            });
        }
        Err(err())
    }
}

impl ClientMessage {
    /// Writes the message's ETF payload (version byte included) into `out`, without
    /// building its wrapper tuple: what the client does for every call.
    ///
    /// # Errors
    /// [`EncodeError`] when the caller's term cannot be encoded.
    pub fn encode_into<B: bytes::BufMut>(&self, out: &mut B) -> Result<(), EncodeError> {
        match self {
            ClientMessage::Send(x) => etf::encode_tagged_into(&atom("send"), &[x], out),
            ClientMessage::Call { id, body } => {
                etf::encode_tagged_into(&atom("call"), &[&ref_term(*id), body], out)
            }
            other => etf::encode_into(&other.to_term(), out),
        }
    }

    const EXPECTED: &'static str = "{send, X}, {call, Ref, X}, {ping, Ref} or close";

    /// The frame's term.
    pub fn to_term(&self) -> Term {
        match self {
            ClientMessage::Send(x) => Term::tuple([Term::atom("send"), x.clone()]),
            ClientMessage::Call { id, body } => {
                Term::tuple([Term::atom("call"), ref_term(*id), body.clone()])
            }
            ClientMessage::Ping(r) => Term::tuple([Term::atom("ping"), ref_term(*r)]),
            ClientMessage::Close => Term::atom("close"),
        }
    }

    /// Reads a client frame's payload: [`etf::decode`] then [`from_term`], with the
    /// same results and errors, without building the wrapper tuple of `{call, Ref, X}`
    /// and `{send, X}`, the messages of every call.
    ///
    /// # Errors
    /// [`ReadError::Term`] when the payload is not a term, [`ReadError::Message`] when
    /// it is not one of the four messages.
    ///
    /// [`from_term`]: Self::from_term
    pub fn decode(payload: &[u8]) -> Result<ClientMessage, ReadError> {
        read_message(payload, Self::from_term, |items| match items.as_slice() {
            [tag, _] if tag.is_atom("send") => Some(ClientMessage::Send(items.pop()?)),
            [tag, r, _] if tag.is_atom("call") => {
                let id = reference(r)?;
                Some(ClientMessage::Call {
                    id,
                    body: items.pop()?,
                })
            }
            _ => None,
        })
    }

    /// Reads a client frame.
    ///
    /// # Errors
    /// [`MessageError`] for a term that is none of the four messages.
    pub fn from_term(t: &Term) -> Result<ClientMessage, MessageError> {
        let err = || MessageError::new(Self::EXPECTED, t);
        if t.is_atom("close") {
            return Ok(ClientMessage::Close);
        }
        let items = t.as_tuple().ok_or_else(err)?;
        match items {
            [tag, x] if tag.is_atom("send") => Ok(ClientMessage::Send(x.clone())),
            [tag, r, x] if tag.is_atom("call") => Ok(ClientMessage::Call {
                id: reference(r).ok_or_else(err)?,
                body: x.clone(),
            }),
            [tag, r] if tag.is_atom("ping") => {
                Ok(ClientMessage::Ping(reference(r).ok_or_else(err)?))
            }
            _ => Err(err()),
        }
    }
}

/// Reads a payload as a message without building an outermost tuple: `fast` takes the
/// common messages apart from the tuple's elements; every other case, errors included,
/// goes through `from_term`, so the result is always what decode+`from_term` gives.
fn read_message<M>(
    payload: &[u8],
    from_term: fn(&Term) -> Result<M, MessageError>,
    fast: impl FnOnce(&mut etf::OuterItems) -> Option<M>,
) -> Result<M, ReadError> {
    let mut items = match etf::decode_outer(payload)? {
        etf::Outer::Tuple(items) => items,
        etf::Outer::Term(t) => return Ok(from_term(&t)?),
    };
    if let Some(message) = fast(&mut items) {
        return Ok(message);
    }
    Ok(from_term(&Term::Tuple(items.into_iter().collect()))?)
}

/// An atom that is always interned (see [`crate::Atom::new`]).
fn atom(name: &str) -> Atom {
    Atom::new(name).expect("a short atom")
}

impl ServerMessage {
    /// Writes the message's ETF payload (version byte included) into `out`, without
    /// building its wrapper tuple: what the middle man does for every reply.
    ///
    /// # Errors
    /// [`EncodeError`] when the handler's term cannot be encoded.
    pub fn encode_into<B: bytes::BufMut>(&self, out: &mut B) -> Result<(), EncodeError> {
        match self {
            ServerMessage::Send(y) => etf::encode_tagged_into(&atom("send"), &[y], out),
            ServerMessage::Reply { id, body } => {
                etf::encode_tagged_into(&atom("reply"), &[&ref_term(*id), body], out)
            }
            ServerMessage::CallError { id, reason } => {
                etf::encode_tagged_into(&atom("error"), &[&ref_term(*id), reason], out)
            }
            other => etf::encode_into(&other.to_term(), out),
        }
    }

    const EXPECTED: &'static str =
        "{send, Y}, {reply, Ref, Y}, {error, Ref, Reason}, {pong, Ref}, close or {error, Reason}";

    /// The frame's term.
    pub fn to_term(&self) -> Term {
        match self {
            ServerMessage::Send(y) => Term::tuple([Term::atom("send"), y.clone()]),
            ServerMessage::Reply { id, body } => {
                Term::tuple([Term::atom("reply"), ref_term(*id), body.clone()])
            }
            ServerMessage::CallError { id, reason } => {
                Term::tuple([Term::atom("error"), ref_term(*id), reason.clone()])
            }
            ServerMessage::Pong(r) => Term::tuple([Term::atom("pong"), ref_term(*r)]),
            ServerMessage::Close => Term::atom("close"),
            ServerMessage::Error(r) => Term::tuple([Term::atom("error"), r.to_term()]),
        }
    }

    /// Reads a server frame's payload: [`etf::decode`] then [`from_term`], with the
    /// same results and errors, without building the wrapper tuple of `{reply, Ref, Y}`,
    /// `{error, Ref, Reason}` and `{send, Y}`.
    ///
    /// # Errors
    /// [`ReadError::Term`] when the payload is not a term, [`ReadError::Message`] when
    /// it is not one of the six messages.
    ///
    /// [`from_term`]: Self::from_term
    pub fn decode(payload: &[u8]) -> Result<ServerMessage, ReadError> {
        read_message(payload, Self::from_term, |items| match items.as_slice() {
            [tag, _] if tag.is_atom("send") => Some(ServerMessage::Send(items.pop()?)),
            [tag, r, _] if tag.is_atom("reply") => {
                let id = reference(r)?;
                Some(ServerMessage::Reply {
                    id,
                    body: items.pop()?,
                })
            }
            [tag, r, _] if tag.is_atom("error") => {
                let id = reference(r)?;
                Some(ServerMessage::CallError {
                    id,
                    reason: items.pop()?,
                })
            }
            _ => None,
        })
    }

    /// Reads a server frame.
    ///
    /// # Errors
    /// [`MessageError`] for a term that is none of the six messages.
    pub fn from_term(t: &Term) -> Result<ServerMessage, MessageError> {
        let err = || MessageError::new(Self::EXPECTED, t);
        if t.is_atom("close") {
            return Ok(ServerMessage::Close);
        }
        let items = t.as_tuple().ok_or_else(err)?;
        match items {
            [tag, y] if tag.is_atom("send") => Ok(ServerMessage::Send(y.clone())),
            [tag, r, y] if tag.is_atom("reply") => Ok(ServerMessage::Reply {
                id: reference(r).ok_or_else(err)?,
                body: y.clone(),
            }),
            [tag, r, reason] if tag.is_atom("error") => Ok(ServerMessage::CallError {
                id: reference(r).ok_or_else(err)?,
                reason: reason.clone(),
            }),
            [tag, reason] if tag.is_atom("error") => {
                Ok(ServerMessage::Error(ErrorReason::from_term(reason)))
            }
            [tag, r] if tag.is_atom("pong") => {
                Ok(ServerMessage::Pong(reference(r).ok_or_else(err)?))
            }
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, term};

    #[test]
    fn seed_handshake_parses_from_erlang_forms() {
        let t = parse(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#).unwrap();
        let h = Hello::from_term(&t).unwrap();
        assert_eq!(
            h,
            Hello::StartService {
                service: "nameServer".into(),
                credential: Credential::ServicePassword(Password(b"ABXy45".to_vec())),
                args: Term::nil(),
                options: None,
            }
        );
        assert!(h.is_version_1());
        // A charlist password and a binary service name are accepted too.
        let t = parse(r#"{start_service, <<"nameServer">>, "ABXy45", []}"#).unwrap();
        assert_eq!(Hello::from_term(&t).unwrap(), h);
        assert_eq!(Hello::from_term(&term!({ping, 7})).unwrap(), Hello::Ping(7));
        assert!(format!("{h:?}").contains("redacted"));
        assert!(!format!("{h:?}").contains("ABXy45"));
    }

    #[test]
    fn version_2_first_frames_parse_and_round_trip() {
        let key = parse(r#"{start_service, nameServer, {user, alice, {ed25519, <<1,2>>}}, "", #{session => new}}"#).unwrap();
        let h = Hello::from_term(&key).unwrap();
        assert!(!h.is_version_1());
        match &h {
            Hello::StartService {
                credential,
                options,
                ..
            } => {
                assert_eq!(credential.user(), Some("alice"));
                assert_eq!(credential.kind(), "ed25519");
                assert_eq!(options, &Some(parse("#{session => new}").unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Hello::from_term(&h.to_term()).unwrap(), h);
        assert_eq!(
            Hello::from_term(&term!({challenge, 9})).unwrap(),
            Hello::Challenge(9)
        );
        // A service password in a 5-tuple is version 2 too; options must be a map.
        let five = parse(r#"{start_service, nameServer, <<"pw">>, "", #{}}"#).unwrap();
        assert!(!Hello::from_term(&five).unwrap().is_version_1());
        let not_map = parse(r#"{start_service, nameServer, <<"pw">>, "", [x]}"#).unwrap();
        assert!(Hello::from_term(&not_map).is_err());
        let reply = HandshakeReply::Challenge {
            id: 9,
            nonce: vec![5; 32],
        };
        assert_eq!(HandshakeReply::from_term(&reply.to_term()).unwrap(), reply);
    }

    #[test]
    fn the_welcome_names_the_user_only_after_a_user_login() {
        let mut w = Welcome {
            protocol: 1,
            max_frame: 1 << 20,
            server: "s".into(),
            user: None,
            session: None,
            grace_ms: None,
        };
        let v1 = HandshakeReply::Welcome(w.clone()).to_term();
        assert_eq!(
            v1,
            parse("{ok, #{protocol => 1, max_frame => 1048576, server => <<\"s\">>}}").unwrap()
        );
        w.protocol = 2;
        w.user = Some("alice".into());
        let v2 = HandshakeReply::Welcome(w.clone()).to_term();
        assert_eq!(
            v2,
            parse("{ok, #{protocol => 2, max_frame => 1048576, server => <<\"s\">>, user => <<\"alice\">>}}").unwrap()
        );
        assert_eq!(
            HandshakeReply::from_term(&v2).unwrap(),
            HandshakeReply::Welcome(w.clone())
        );
        w.session = Some(vec![7; 16]);
        w.grace_ms = Some(10_000);
        let with_session = HandshakeReply::Welcome(w.clone()).to_term();
        assert_eq!(
            with_session.as_tuple().unwrap()[1].map_get(&Term::atom("grace")),
            Some(&Term::Int(10_000))
        );
        assert_eq!(
            HandshakeReply::from_term(&with_session).unwrap(),
            HandshakeReply::Welcome(w)
        );
    }

    #[test]
    fn invalid_first_frames_say_what_was_expected() {
        for bad in [
            "{start_service, nameServer}",
            "{start_service, 42, <<\"pw\">>, []}",
            "{start_service, nameServer, 42, []}",
            "{ping, -1}",
            "hello",
            "[start_service]",
        ] {
            let e = Hello::from_term(&parse(bad).unwrap()).unwrap_err();
            assert!(e.to_string().contains("start_service"), "{bad}: {e}");
        }
    }

    #[test]
    fn client_and_server_messages_round_trip() {
        for m in [
            ClientMessage::Send(term!({store, joe, "writing a book"})),
            ClientMessage::Call {
                id: 1,
                body: term!({lookup, joe}),
            },
            ClientMessage::Ping(3),
            ClientMessage::Close,
        ] {
            assert_eq!(ClientMessage::from_term(&m.to_term()).unwrap(), m);
        }
        for m in [
            ClientMessage::Send(term!(x)),
            ClientMessage::Call {
                id: 5,
                body: term!({lookup, joe}),
            },
            ClientMessage::Close,
        ] {
            let mut direct = Vec::new();
            m.encode_into(&mut direct).unwrap();
            assert_eq!(direct, etf::encode(&m.to_term()).unwrap());
        }
        for m in [
            ServerMessage::Send(term!(hi)),
            ServerMessage::Reply {
                id: 1,
                body: term!({ok, "writing a book"}),
            },
            ServerMessage::CallError {
                id: 2,
                reason: term!(no_reply),
            },
            ServerMessage::Pong(4),
            ServerMessage::Close,
            ServerMessage::Error(ErrorReason::SlowConsumer),
            ServerMessage::Error(ErrorReason::Other(term!({weird, 1}))),
        ] {
            assert_eq!(ServerMessage::from_term(&m.to_term()).unwrap(), m);
            let mut direct = Vec::new();
            m.encode_into(&mut direct).unwrap();
            assert_eq!(direct, etf::encode(&m.to_term()).unwrap());
        }
        for r in ErrorReason::NAMED.iter().map(|(r, _)| r) {
            assert_eq!(&ErrorReason::from_term(&r.to_term()), r);
        }
    }

    #[test]
    fn welcome_ignores_unknown_keys_and_needs_the_known_ones() {
        let w =
            parse("{ok, #{protocol => 1, max_frame => 1048576, server => <<\"x\">>, extra => 5}}")
                .unwrap();
        assert_eq!(
            HandshakeReply::from_term(&w).unwrap(),
            HandshakeReply::Welcome(Welcome {
                protocol: 1,
                max_frame: 1 << 20,
                server: "x".into(),
                user: None,
                session: None,
                grace_ms: None,
            })
        );
        assert!(HandshakeReply::from_term(&parse("{ok, #{protocol => 1}}").unwrap()).is_err());
        assert_eq!(
            HandshakeReply::from_term(&parse("{error, auth_failed}").unwrap()).unwrap(),
            HandshakeReply::Refused(ErrorReason::AuthFailed)
        );
    }

    #[test]
    fn bad_client_messages_are_errors_with_a_short_snippet() {
        let long = Term::binary(vec![b'a'; 10_000]);
        let e = ClientMessage::from_term(&Term::tuple([term!(nope), long])).unwrap_err();
        assert!(e.got.len() < 100, "{}", e.got);
        assert!(ClientMessage::from_term(&term!({call, x, y})).is_err());
        assert!(ClientMessage::from_term(&term!({send, a, b})).is_err());
    }
}
