//! The lib_chan wire format, shared by the server, the client and the services.
//!
//! Every byte lib_chan puts on the network is one Erlang term in External Term Format
//! inside a `{packet, 4}` frame (PROTOCOL.md sections 2 and 3).
//!
//! # Layout
//! - [`term`](mod@term): [`Term`], the Erlang term, with Erlang's equality and order.
//! - [`etf`]: the External Term Format encoder and the hardened decoder.
//! - [`text`]: Erlang term syntax, parsed and printed as the Erlang shell does.
//! - [`frame`]: [`FrameCodec`], the `{packet, 4}` codec for tokio.
//! - [`credential`]: login credentials (service password, named users) and the signed
//!   challenge message.
//! - [`message`]: the handshake and the message set as Rust enums.
//! - [`serde_term`] (feature `serde`, on by default): the serde bridge, Rust structs and
//!   enums to and from the terms an Erlang programmer would write ([`to_term`],
//!   [`from_term`]).

pub mod credential;
pub mod etf;
pub mod frame;
pub mod message;
#[cfg(feature = "serde")]
pub mod serde_term;
pub mod term;
pub mod text;

pub use etf::{decode, encode, encode_into, DecodeError};
pub use frame::{FrameCodec, FrameError, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
#[cfg(feature = "serde")]
pub use serde_term::{from_term, from_term_borrowed, to_term, TermError};
pub use term::{Atom, Term};
pub use text::{parse, TextError};

/// The protocol version this crate speaks (PROTOCOL.md title, and the welcome's `protocol`).
pub const PROTOCOL_VERSION: i64 = 2;
/// The version a server announces to a client that used only version 1 forms.
pub const PROTOCOL_VERSION_1: i64 = 1;
