//! The lib_chan client: connect to a channel server over TLS, then cast, call and receive.
//!
//! This is the client half of Joe Armstrong's `lib_chan` (Programming Erlang), speaking
//! the protocol of `PROTOCOL.md`: Erlang terms in External Term Format, in `{packet, 4}`
//! frames, over TLS. [`connect`] opens a [`Channel`] to a service; [`Channel::cast`]
//! sends a one-way message, [`Channel::rpc`] a call that waits for its reply,
//! [`Channel::rpc_many`] a batch of calls in one write, and [`Channel::recv`] returns
//! what the service sends on its own.
//!
//! # Example: the book's name server session
//!
//! ```no_run
//! use lib_chan_client::{connect, term, Term};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), lib_chan_client::Error> {
//! let chan = connect("localhost", 1234, "nameServer", "ABXy45", Term::nil()).await?;
//! chan.cast(term!({store, joe, "writing a book"})).await?;
//! assert_eq!(chan.rpc(term!({lookup, joe})).await?, term!({ok, "writing a book"}));
//! assert_eq!(chan.rpc(term!({lookup, jim})).await?, term!(undefined));
//! chan.close().await;
//! # Ok(()) }
//! ```
//!
//! Use [`ConnectOptions`] to trust a private CA, pin a certificate, check another name
//! in the certificate, change timeouts, or watch the server like Erlang's
//! `monitor_node` ([`ConnectOptions::keepalive`]: pings, and a dead server reported
//! through [`Channel::closed`]); [`blocking`] for programs without an async runtime;
//! [`ping`] to see whether a channel server is there, without a password.
//!
//! # Layout
//! - [`options`]: [`ConnectOptions`], the builder, with the default timeouts.
//! - `handshake`: TCP, TLS, `start_service` until the welcome; the ping probe.
//! - `tls`: the rustls configuration, certificate pinning, readable TLS errors.
//! - [`channel`]: [`Channel`], the cloneable handle; frames are encoded by the caller.
//! - `dispatch`: the task that owns the connection, reading and writing (coalesced),
//!   and keepalive.
//! - `in_flight`: calls and pings waiting for an answer, by `Ref`.
//! - [`login`]: [`Login`], the credential (service password, or a named user's password,
//!   Ed25519 key or client certificate), and [`Ed25519Key`].
//! - [`error`]: [`Error`] and [`CloseReason`].
//! - [`blocking`]: the same API for non-async programs.
//! - [`password_file`]: passwords from the environment and files like `~/.erlang.cookie`.

#![deny(missing_docs)]

pub mod blocking;
pub mod channel;
mod dispatch;
pub mod error;
mod handshake;
mod in_flight;
pub mod login;
pub mod names;
pub mod options;
mod outbox;
pub mod password_file;
pub mod reconnect;
mod tls;

use std::time::Duration;

pub use channel::Channel;
pub use dispatch::CLOSE_TIMEOUT;
pub use error::{CloseReason, Error};
pub use handshake::{HANDSHAKE_MAX_RECV, MIN_MAX_RECV};
pub use lib_chan_protocol::message::{ErrorReason, Welcome};
pub use lib_chan_protocol::{term, Term};
pub use login::{Ed25519Key, Login};
pub use names::Names;
pub use options::{ConnectOptions, SessionRequest};
pub use reconnect::{ChannelEvent, ChannelState, ReconnectPolicy, ReconnectingChannel};
/// The TLS library this crate uses, for [`ConnectOptions::tls_config`].
pub use rustls;

/// Connects to the service `service` on the channel server at `host:port`, with the
/// default [`ConnectOptions`] (system root certificates, 10 s timeouts, 30 s rpc timeout).
///
/// `host` is a DNS name or an IP address, and is the name checked in the server's
/// certificate. `password` is the service's password; `args` is handed to the service
/// (lib_chan's `ArgsC`; `Term::nil()` when it needs none).
///
/// # Errors
/// See [`ConnectOptions::connect`].
pub async fn connect(
    host: &str,
    port: u16,
    service: &str,
    password: impl AsRef<[u8]>,
    args: Term,
) -> Result<Channel, Error> {
    ConnectOptions::default()
        .connect(host, port, service, password, args)
        .await
}

/// Tells whether a channel server answers at `host:port`, without a password: opens TLS
/// (checked as `options` says), sends `{ping, Ref}` as the first frame, and returns the
/// time until `{pong, Ref}` came back. Then closes.
///
/// # Errors
/// As [`ConnectOptions::connect`] for the connection; [`Error::Protocol`] when the
/// answer is not the matching pong; [`Error::Busy`] when the server is at its limit.
pub async fn ping(host: &str, port: u16, options: &ConnectOptions) -> Result<Duration, Error> {
    handshake::ping(options, host, port).await
}
