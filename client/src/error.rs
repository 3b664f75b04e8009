//! The client's one error type, [`Error`], and why a channel closed, [`CloseReason`].
//!
//! Every fallible call in this crate returns [`Error`]. Its variants are what a caller
//! may want to tell apart (a wrong password, a busy server, a timeout, a closed channel,
//! an error reported by the service), and its messages say what to do about them, e.g.
//! "connection to 127.0.0.1:1234 refused (is the server running?)".

use std::fmt;
use std::io;
use std::time::Duration;

use lib_chan_protocol::message::ErrorReason;
use lib_chan_protocol::Term;

/// Why a [`Channel`](crate::Channel) closed, as reported by
/// [`Channel::closed`](crate::Channel::closed) and carried by [`Error::Closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server sent `close`: the service handler closed the channel.
    ClosedByServer,
    /// The server sent `{error, Reason}` and closed, e.g. `shutdown`, `idle_timeout`,
    /// `slow_consumer` or `revoked`.
    ServerError(ErrorReason),
    /// This client closed the channel ([`Channel::close`](crate::Channel::close), or
    /// every handle was dropped).
    ClosedByClient,
    /// The connection ended without a goodbye: end of stream, an I/O error or a TLS
    /// error. The text says which.
    ConnectionLost(String),
    /// The server sent a frame that breaks the protocol; the client hung up. The text says
    /// what was wrong.
    Protocol(String),
    /// Keepalive ([`ConnectOptions::keepalive`](crate::ConnectOptions::keepalive)) found
    /// the server dead, like Erlang's `monitor_node` reporting `nodedown`: a `{ping, Ref}`
    /// went unanswered for a whole `interval` and nothing else came from the server
    /// meanwhile. The server is down, frozen, unreachable, or so far behind that it stopped
    /// reading; the client hung up.
    KeepaliveTimeout {
        /// The keepalive interval.
        interval: Duration,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClosedByServer => f.write_str("closed by the server"),
            CloseReason::ServerError(reason) => {
                write!(f, "closed by the server with error {reason}")?;
                match reason {
                    ErrorReason::Shutdown => f.write_str(" (the server is shutting down)"),
                    ErrorReason::IdleTimeout => f.write_str(" (nothing was sent for too long)"),
                    ErrorReason::SlowConsumer => {
                        f.write_str(" (the client did not read its messages fast enough)")
                    }
                    ErrorReason::Revoked => {
                        f.write_str(" (the service or its password changed on the server)")
                    }
                    ErrorReason::FrameTooLarge => {
                        f.write_str(" (a frame was over the server's max_frame)")
                    }
                    _ => Ok(()),
                }
            }
            CloseReason::ClosedByClient => f.write_str("closed by this client"),
            CloseReason::ConnectionLost(why) => write!(f, "connection lost: {why}"),
            CloseReason::Protocol(why) => write!(f, "protocol error from the server: {why}"),
            CloseReason::KeepaliveTimeout { interval } => write!(
                f,
                "keepalive timeout: the server did not answer a ping within {} ms \
                 (is it down, frozen or unreachable?)",
                interval.as_millis()
            ),
        }
    }
}

/// Everything that can go wrong when connecting to a channel server or using a channel.
///
/// Match on the variant to react (retry on [`Error::Busy`], ask for another password on
/// [`Error::AuthFailed`], reconnect on [`Error::Closed`]); print it with `{}` for a message
/// a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered `{error, auth_failed}`: the service is unknown or the password
    /// is wrong (the server does not say which, on purpose).
    #[error("authentication failed: unknown service or wrong password")]
    AuthFailed,
    /// A named user's login was answered `{error, auth_failed}`: unknown user, wrong
    /// credential, or the user may not start this service (or is disabled, expired, or
    /// not allowed from this address); the server does not say which, on purpose.
    #[error("login refused for user {user} with its {credential}{}: unknown user, wrong credential, or not allowed this service", origin.as_ref().map(|s| format!(" (from {s})")).unwrap_or_default())]
    LoginFailed {
        /// The user.
        user: String,
        /// The kind of credential: `password`, `ed25519 key` or `certificate`.
        credential: &'static str,
        /// Where the credential came from, when known; never the credential itself.
        origin: Option<String>,
    },
    /// The server answered `{error, busy}`: it is at a connection or authentication limit.
    #[error("the server is busy (at its connection or authentication limit); try again later")]
    Busy,
    /// The server refused the handshake for another reason, e.g. `timeout` (the
    /// `start_service` frame came too late) or `bad_request`.
    #[error("the server refused the handshake: {0}")]
    Refused(ErrorReason),
    /// The TLS handshake failed, e.g. the server's certificate was not signed by a trusted
    /// CA, is not valid for the name dialled, or is not the pinned one.
    #[error("{message}")]
    Tls {
        /// What failed, with the address and a hint.
        message: String,
        /// The rustls error underneath, to match on.
        error: rustls::Error,
    },
    /// The server accepted the TCP connection and closed it before TLS, several times in
    /// a row (or once, after it had answered this process before): what a lib_chan
    /// server does to a source it penalizes after failed logins, or when it is at its
    /// connection limit.
    #[error("{addr} accepted the connection and closed it at once, {attempts} time(s) in a row: the server may be refusing this address after failed logins (or be at its connection limit); retry later or ask its operator")]
    RefusedAtAccept {
        /// `host:port`.
        addr: String,
        /// The attempts made, each closed before TLS.
        attempts: u32,
    },
    /// An I/O error, with what was being done when it happened.
    #[error("{}", io_message(context, error))]
    Io {
        /// What was being done, e.g. "connection to 127.0.0.1:1234".
        context: String,
        /// The error.
        error: io::Error,
    },
    /// A phase took longer than its configured timeout: `"TCP connect"`,
    /// `"TLS handshake"`, `"start_service handshake"`, `"rpc"`, `"ping"` or `"recv"`.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The channel is closed (or closing), so the message was not sent or its reply will
    /// never come.
    #[error("channel closed: {0}")]
    Closed(CloseReason),
    /// The server answered a call with `{error, Ref, Reason}`; this is `Reason`, e.g.
    /// `no_reply`, `handler_crashed`, `busy` or `{bad_request, X}`.
    #[error("the call failed on the server: {0}")]
    Remote(Term),
    /// The server broke the protocol during the handshake or ping (a malformed frame, a
    /// term that is not a valid answer, another protocol version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A term cannot be sent: it is larger than the server's `max_frame` (or the 4 KiB
    /// handshake limit), holds a NaN or infinite float, or nests too deep.
    #[error("cannot send: {0}")]
    Encode(String),
    /// The [`ConnectOptions`](crate::ConnectOptions) cannot be used: an unreadable CA
    /// file, no certificate in it, an invalid server name, ...
    #[error("configuration error: {0}")]
    Config(String),
    /// The connection was lost after the call was sent and before its answer came: it may
    /// or may not have run on the server. A reconnecting channel
    /// ([`ConnectOptions::reconnect`](crate::ConnectOptions::reconnect)) sends it again
    /// only when the caller marked it idempotent.
    #[error(
        "the connection was lost after {0} was sent: it may or may not have run on the server"
    )]
    MaybeRan(&'static str),
    /// A reconnecting channel's queue of casts made while disconnected is full.
    #[error("the channel is reconnecting and its queue of {0} casts is full")]
    CastQueueFull(usize),
}

/// Renders [`Error::Io`]: the common failures get a hint, the rest the OS's words.
fn io_message(context: &str, error: &io::Error) -> String {
    match error.kind() {
        // `context` is then "connection to HOST:PORT".
        io::ErrorKind::ConnectionRefused => format!("{context} refused (is the server running?)"),
        _ => format!("{context}: {error}"),
    }
}

impl Error {
    /// An [`Error::Io`] with what was being done.
    pub(crate) fn io(context: impl Into<String>, error: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            error,
        }
    }

    /// The reason when this is [`Error::Closed`].
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match self {
            Error::Closed(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_actionable() {
        assert_eq!(
            Error::AuthFailed.to_string(),
            "authentication failed: unknown service or wrong password"
        );
        let e = Error::io(
            "connection to 127.0.0.1:1234",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            e.to_string(),
            "connection to 127.0.0.1:1234 refused (is the server running?)"
        );
        assert_eq!(Error::Timeout("rpc").to_string(), "rpc timed out");
        let e = Error::Closed(CloseReason::ServerError(ErrorReason::Shutdown));
        assert_eq!(
            e.to_string(),
            "channel closed: closed by the server with error shutdown (the server is shutting down)"
        );
        assert_eq!(
            e.close_reason(),
            Some(&CloseReason::ServerError(ErrorReason::Shutdown))
        );
        assert_eq!(
            CloseReason::KeepaliveTimeout {
                interval: Duration::from_millis(200)
            }
            .to_string(),
            "keepalive timeout: the server did not answer a ping within 200 ms (is it down, \
             frozen or unreachable?)"
        );
        assert_eq!(
            Error::Refused(ErrorReason::Timeout).to_string(),
            "the server refused the handshake: timeout"
        );
    }
}
