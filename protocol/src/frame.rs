//! `{packet, 4}` framing for tokio: a 4-byte big-endian length, then the payload.
//!
//! [`FrameCodec`] checks the declared length against its limit as soon as the 4-byte
//! header is in, before anything is read or allocated for the payload, and it never
//! reserves buffer space for a declared length: the buffer grows only with bytes that
//! actually arrived (tokio-util's `LengthDelimitedCodec` reserves the declared length at
//! once, which lets a 10-byte frame claim a megabyte). The receive limit can change on
//! the fly: [`HANDSHAKE_MAX_FRAME`] before the handshake, `max_frame` after it.
//! Decoding through `FramedRead` is cancel-safe: partial frames stay in its buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::etf::{self, EncodeError};
use crate::term::Term;

/// The largest first frame a server accepts before the handshake (PROTOCOL.md section 2).
pub const HANDSHAKE_MAX_FRAME: usize = 4096;
/// The default largest frame after the handshake: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// A frame that breaks the framing rules, or the I/O error under it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A declared length over the limit (PROTOCOL.md: `frame_too_large`).
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A declared length of zero: every frame holds one term.
    #[error("empty frame")]
    Empty,
    /// A term that cannot be encoded, on the sending side.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    TruncatedAtEof {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The `{packet, 4}` codec. Decodes to payload bytes; encodes [`Term`]s and raw payloads.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_recv: usize,
    max_send: usize,
}

impl FrameCodec {
    /// A codec that accepts frames of up to `max_recv` bytes and sends up to `max_send`.
    pub fn new(max_recv: usize, max_send: usize) -> FrameCodec {
        FrameCodec { max_recv, max_send }
    }

    /// The receive limit in force.
    pub fn max_recv(&self) -> usize {
        self.max_recv
    }

    /// Changes the receive limit, e.g. from [`HANDSHAKE_MAX_FRAME`] to `max_frame` once
    /// the handshake succeeds. Applies to the next frame header read.
    pub fn set_max_recv(&mut self, max: usize) {
        self.max_recv = max;
    }

    /// Changes the send limit, e.g. to the `max_frame` the server announced.
    pub fn set_max_send(&mut self, max: usize) {
        self.max_send = max;
    }

    /// Appends one frame holding `term` to `dst`, encoding in place and writing the
    /// length afterwards (no intermediate buffer). On error `dst` is left as it was.
    ///
    /// # Errors
    /// [`FrameError::Encode`] for a term ETF cannot hold, [`FrameError::TooLarge`] for one
    /// over the send limit.
    pub fn encode_term(&self, term: &Term, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_with(dst, |out| etf::encode_into(term, out))
    }

    /// Appends one frame whose payload `write` produces in place, then writes its length.
    /// On error `dst` is left as it was.
    ///
    /// # Errors
    /// As [`FrameCodec::encode_term`].
    pub fn encode_with(
        &self,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
    ) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = write(dst) {
            dst.truncate(start);
            return Err(e.into());
        }
        let len = dst.len() - start - HEADER_LEN;
        if len > self.max_send {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: self.max_send,
            });
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_recv {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_recv,
            });
        }
        if src.len() < HEADER_LEN + len {
            // Deliberately no `reserve(len)`: space grows only as bytes arrive.
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::TruncatedAtEof {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<&Term> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, term: &Term, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_term(term, dst)
    }
}

impl Encoder<Term> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, term: Term, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_term(&term, dst)
    }
}

/// A payload sent as is, for tests and for peers that encode terms themselves.
impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.max_send {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max_send,
            });
        }
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u32(payload.len() as u32);
        dst.put_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::term;

    fn frame_bytes(t: &Term) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME)
            .encode_term(t, &mut b)
            .unwrap();
        b
    }

    #[test]
    fn one_byte_at_a_time_yields_nothing_until_complete() {
        let t = term!({call, 1, {lookup, joe}});
        let whole = frame_bytes(&t);
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let out = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(out.is_none());
            } else {
                assert_eq!(etf::decode(&out.unwrap()).unwrap(), t);
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_on_the_header_without_allocating() {
        let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME, DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x10, 0x01][..]);
        let cap = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge {
                len: 4097,
                max: 4096,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(buf.capacity(), cap);
        // A header claiming 1 MiB that is within the limit reserves nothing either.
        codec.set_max_recv(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x00, 131][..]);
        let cap = buf.capacity();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn zero_length_and_eof_mid_frame_are_errors() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0u8, 0, 0, 0][..])),
            Err(FrameError::Empty)
        ));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 131][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::TruncatedAtEof { buffered: 5 })
        ));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn send_limit_is_enforced_and_leaves_the_buffer_intact() {
        let codec = FrameCodec::new(DEFAULT_MAX_FRAME, 16);
        let mut buf = BytesMut::from(&b"xy"[..]);
        let big = Term::binary(vec![0u8; 100]);
        assert!(matches!(
            codec.encode_term(&big, &mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(&buf[..], b"xy");
    }
}
