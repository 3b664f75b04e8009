//! The lib_chan wire format, shared by the server, the client and the services.
//!
//! Every byte lib_chan puts on the network is one Erlang term in External Term Format
//! inside a `{packet, 4}` frame (PROTOCOL.md sections 2 and 3).
//!
//! # Layout
//! - [`term`]: [`Term`], the Erlang term, with Erlang's equality and order.
//! - [`etf`]: the External Term Format encoder and the hardened decoder.
//! - [`text`]: Erlang term syntax, parsed and printed as the Erlang shell does.
//! - [`frame`]: [`FrameCodec`], the `{packet, 4}` codec for tokio.
//! - [`message`]: the handshake and the message set as Rust enums.

pub mod etf;
pub mod frame;
pub mod message;
pub mod term;
pub mod text;

pub use etf::{decode, encode, encode_into, DecodeError};
pub use frame::{FrameCodec, FrameError, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
pub use term::{Atom, Term};
pub use text::{parse, TextError};

/// The protocol version this crate speaks (PROTOCOL.md title, and the welcome's `protocol`).
pub const PROTOCOL_VERSION: i64 = 1;
