//! External Term Format: the canonical encoder and the decoder that faces the internet.
//!
//! Implements exactly PROTOCOL.md section 3. The decoder accepts only data tags (no pids,
//! ports, references, funs, bit strings, compressed terms or atom cache references),
//! bounds nesting depth, checks every element count against the bytes left before it
//! allocates anything, rejects trailing bytes, and says what was wrong at which byte
//! offset. The encoder is canonical: the same term always gives the same bytes, which the
//! name server relies on for key identity.

use std::fmt;
use std::sync::Arc;

use bytes::BufMut;

use crate::term::{Atom, Term};

/// The version byte that starts every ETF payload.
pub const VERSION: u8 = 131;
/// The deepest nesting the decoder and encoder accept (PROTOCOL.md asks for at least 64).
pub const MAX_DEPTH: usize = 128;
/// Tuples and lists of at most this many elements are decoded on the stack first.
const SMALL_SEQUENCE: usize = 8;

mod tag {
    pub(super) const NEW_FLOAT: u8 = 70;
    pub(super) const SMALL_INTEGER: u8 = 97;
    pub(super) const INTEGER: u8 = 98;
    pub(super) const ATOM: u8 = 100;
    pub(super) const SMALL_TUPLE: u8 = 104;
    pub(super) const LARGE_TUPLE: u8 = 105;
    pub(super) const NIL: u8 = 106;
    pub(super) const STRING: u8 = 107;
    pub(super) const LIST: u8 = 108;
    pub(super) const BINARY: u8 = 109;
    pub(super) const SMALL_BIG: u8 = 110;
    pub(super) const SMALL_ATOM: u8 = 115;
    pub(super) const MAP: u8 = 116;
    pub(super) const ATOM_UTF8: u8 = 118;
    pub(super) const SMALL_ATOM_UTF8: u8 = 119;
}

/// The name of a tag the protocol refuses, for error messages.
fn rejected_tag_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        68 => "distribution header",
        69 => "distribution header (fragmented)",
        77 => "BIT_BINARY_EXT (bit string)",
        80 => "compressed term",
        82 => "ATOM_CACHE_REF",
        88 => "NEW_PID_EXT (pid)",
        89 => "NEW_PORT_EXT (port)",
        90 => "NEWER_REFERENCE_EXT (reference)",
        99 => "FLOAT_EXT (old string float)",
        101 => "REFERENCE_EXT (reference)",
        102 => "PORT_EXT (port)",
        103 => "PID_EXT (pid)",
        111 => "LARGE_BIG_EXT (integer beyond 64 bits)",
        112 => "NEW_FUN_EXT (fun)",
        113 => "EXPORT_EXT (fun)",
        114 => "NEW_REFERENCE_EXT (reference)",
        117 => "FUN_EXT (fun)",
        120 => "V4_PORT_EXT (port)",
        121 => "LOCAL_EXT",
        _ => return None,
    })
}

/// What was wrong with an ETF payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The payload was empty.
    Empty,
    /// The first byte was not 131.
    BadVersion(u8),
    /// The payload ended in the middle of a term.
    Truncated,
    /// A tag the protocol refuses (pid, port, reference, fun, bit string, ...).
    RejectedTag(u8, &'static str),
    /// A byte that is no ETF tag at all.
    UnknownTag(u8),
    /// Terms nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An element count larger than the bytes left could hold.
    CountTooLarge {
        /// The declared count.
        count: u64,
        /// The bytes left in the payload.
        left: usize,
    },
    /// A SMALL_BIG outside signed 64 bits, or with a sign byte other than 0 or 1.
    IntegerOutOfRange,
    /// NaN or an infinity.
    NonFiniteFloat,
    /// A UTF-8 atom whose bytes are not UTF-8.
    InvalidUtf8Atom,
    /// An atom of more than 255 characters.
    AtomTooLong,
    /// A list whose tail is not `[]`.
    ImproperList,
    /// A map holding the same key twice.
    DuplicateMapKey,
    /// Bytes left over after the term.
    TrailingBytes(usize),
}

/// An ETF payload that could not be decoded: what, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The offset in the payload (the version byte is offset 0) where it was found.
    pub offset: usize,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        write!(f, "bad term at byte {}: ", self.offset)?;
        match &self.kind {
            Empty => write!(f, "empty payload"),
            BadVersion(v) => write!(f, "version byte is {v}, expected 131"),
            Truncated => write!(f, "payload ends in the middle of a term"),
            RejectedTag(t, name) => write!(f, "tag {t} ({name}) is not allowed"),
            UnknownTag(t) => write!(f, "unknown tag {t}"),
            TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            CountTooLarge { count, left } => {
                write!(f, "count {count} is larger than the {left} bytes left")
            }
            IntegerOutOfRange => write!(f, "integer outside signed 64 bits"),
            NonFiniteFloat => write!(f, "float is NaN or infinite"),
            InvalidUtf8Atom => write!(f, "UTF-8 atom is not valid UTF-8"),
            AtomTooLong => write!(f, "atom longer than 255 characters"),
            ImproperList => write!(f, "improper list (tail is not [])"),
            DuplicateMapKey => write!(f, "map holds the same key twice"),
            TrailingBytes(n) => write!(f, "{n} trailing bytes after the term"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A term that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Erlang has no NaN or infinite floats.
    #[error("cannot encode a NaN or infinite float")]
    NonFiniteFloat,
    /// Deeper than [`MAX_DEPTH`]: the peer would refuse it.
    #[error("term nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A length that does not fit the format's 32-bit counts.
    #[error("term too large for the external term format")]
    TooLarge,
}

/// Decodes one ETF payload (version byte included) into a term.
///
/// # Errors
/// A [`DecodeError`] naming the problem and its byte offset; never panics, and never
/// allocates for a count that the bytes left could not hold.
pub fn decode(bytes: &[u8]) -> Result<Term, DecodeError> {
    let mut d = Decoder { buf: bytes, pos: 0 };
    match d.buf.first() {
        None => return Err(d.error(DecodeErrorKind::Empty)),
        Some(&VERSION) => d.pos = 1,
        Some(&v) => return Err(d.error(DecodeErrorKind::BadVersion(v))),
    }
    let term = d.term(0)?;
    if d.pos != d.buf.len() {
        return Err(d.error(DecodeErrorKind::TrailingBytes(d.buf.len() - d.pos)));
    }
    Ok(term)
}

/// The elements of an outermost tuple: inline up to 4 (every message of the protocol),
/// on the heap beyond.
pub type OuterItems = smallvec::SmallVec<[Term; 4]>;

/// A payload's outermost term, with the elements of an outermost tuple left in a
/// small vector: what the message readers take apart, without building the wrapper
/// tuple only to drop it, and without a heap allocation for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outer {
    /// The payload is a tuple (of up to 255 elements): its elements.
    Tuple(OuterItems),
    /// Any other term.
    Term(Term),
}

/// Decodes one ETF payload exactly as [`decode`] does (the same checks, errors and
/// offsets), but returns an outermost tuple's elements as a small vector.
///
/// # Errors
/// As [`decode`].
pub fn decode_outer(bytes: &[u8]) -> Result<Outer, DecodeError> {
    let mut d = Decoder { buf: bytes, pos: 0 };
    match d.buf.first() {
        None => return Err(d.error(DecodeErrorKind::Empty)),
        Some(&VERSION) => d.pos = 1,
        Some(&v) => return Err(d.error(DecodeErrorKind::BadVersion(v))),
    }
    let outer = if d.buf.get(1) == Some(&tag::SMALL_TUPLE) {
        // As `Decoder::term` does for SMALL_TUPLE at depth 0.
        let at = d.pos;
        d.pos += 1;
        let n = d.u8()?.into();
        let n = d.count(n, at, 1)?;
        d.descend(n, 0)?;
        let mut items = OuterItems::with_capacity(n.min(16));
        for _ in 0..n {
            items.push(d.term(1)?);
        }
        Outer::Tuple(items)
    } else {
        Outer::Term(d.term(0)?)
    };
    if d.pos != d.buf.len() {
        return Err(d.error(DecodeErrorKind::TrailingBytes(d.buf.len() - d.pos)));
    }
    Ok(outer)
}

/// Encodes a term as an ETF payload (version byte included).
///
/// # Errors
/// [`EncodeError`] for a NaN or infinite float or a term nested too deep.
pub fn encode(term: &Term) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode_into(term, &mut out)?;
    Ok(out)
}

/// Appends the ETF encoding of `term` (version byte included) to `out`.
///
/// # Errors
/// As [`encode`]; `out` may then hold a partial encoding.
pub fn encode_into<B: BufMut>(term: &Term, out: &mut B) -> Result<(), EncodeError> {
    out.put_u8(VERSION);
    encode_term(term, out, 0)
}

/// The number of bytes [`encode`] would write for `term` (version byte included),
/// without writing them: for accounting queued output.
pub fn encoded_len(term: &Term) -> usize {
    1 + term_len(term)
}

fn term_len(term: &Term) -> usize {
    match term {
        Term::Int(i) => {
            if (0..=255).contains(i) {
                2
            } else if i32::try_from(*i).is_ok() {
                5
            } else {
                3 + 8 - (i.unsigned_abs().leading_zeros() / 8) as usize
            }
        }
        Term::Float(_) => 9,
        Term::Atom(a) => {
            let n = a.as_str().len();
            if n <= 0xFF {
                2 + n
            } else {
                3 + n
            }
        }
        Term::Binary(b) => 5 + b.len(),
        Term::List(items) => {
            if items.is_empty() {
                1
            } else if items.len() <= 0xFFFF && items.iter().all(|t| matches!(t, Term::Int(0..=255)))
            {
                3 + items.len()
            } else {
                6 + items.iter().map(term_len).sum::<usize>()
            }
        }
        Term::Tuple(items) => {
            let header = if items.len() <= 0xFF { 2 } else { 5 };
            header + items.iter().map(term_len).sum::<usize>()
        }
        Term::Map(entries) => {
            5 + entries
                .iter()
                .map(|(k, v)| term_len(k) + term_len(v))
                .sum::<usize>()
        }
    }
}

/// Appends the encoding of the tuple `{tag, fields...}` (version byte included) without
/// building it as a [`Term`]: the message wrappers (`{reply, Ref, Y}` and the like) on
/// the hot path cost no allocation.
///
/// # Errors
/// As [`encode`], for the fields.
pub fn encode_tagged_into<B: BufMut>(
    tag: &Atom,
    fields: &[&Term],
    out: &mut B,
) -> Result<(), EncodeError> {
    out.put_u8(VERSION);
    let arity = fields.len() + 1;
    if arity <= 0xFF {
        out.put_u8(tag::SMALL_TUPLE);
        out.put_u8(arity as u8);
    } else {
        out.put_u8(tag::LARGE_TUPLE);
        out.put_u32(len_u32(arity)?);
    }
    encode_atom(tag, out);
    for f in fields {
        encode_term(f, out, 1)?;
    }
    Ok(())
}

fn len_u32(n: usize) -> Result<u32, EncodeError> {
    u32::try_from(n).map_err(|_| EncodeError::TooLarge)
}

fn encode_term<B: BufMut>(term: &Term, out: &mut B, depth: usize) -> Result<(), EncodeError> {
    if depth >= MAX_DEPTH {
        return Err(EncodeError::TooDeep);
    }
    match term {
        Term::Int(i) => encode_int(*i, out),
        Term::Float(f) => {
            if !f.is_finite() {
                return Err(EncodeError::NonFiniteFloat);
            }
            out.put_u8(tag::NEW_FLOAT);
            out.put_f64(*f);
        }
        Term::Atom(a) => encode_atom(a, out),
        Term::Binary(b) => {
            out.put_u8(tag::BINARY);
            out.put_u32(len_u32(b.len())?);
            out.put_slice(b);
        }
        Term::List(items) => {
            if items.is_empty() {
                out.put_u8(tag::NIL);
            } else if items.len() <= 0xFFFF && items.iter().all(|t| matches!(t, Term::Int(0..=255)))
            {
                out.put_u8(tag::STRING);
                out.put_u16(items.len() as u16);
                for t in items.iter() {
                    if let Term::Int(i) = t {
                        out.put_u8(*i as u8);
                    }
                }
            } else {
                out.put_u8(tag::LIST);
                out.put_u32(len_u32(items.len())?);
                for t in items.iter() {
                    encode_term(t, out, depth + 1)?;
                }
                out.put_u8(tag::NIL);
            }
        }
        Term::Tuple(items) => {
            if items.len() <= 0xFF {
                out.put_u8(tag::SMALL_TUPLE);
                out.put_u8(items.len() as u8);
            } else {
                out.put_u8(tag::LARGE_TUPLE);
                out.put_u32(len_u32(items.len())?);
            }
            for t in items.iter() {
                encode_term(t, out, depth + 1)?;
            }
        }
        Term::Map(entries) => {
            out.put_u8(tag::MAP);
            out.put_u32(len_u32(entries.len())?);
            // Entries are kept sorted by key, so the encoding is canonical.
            for (k, v) in entries.iter() {
                encode_term(k, out, depth + 1)?;
                encode_term(v, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn encode_int<B: BufMut>(i: i64, out: &mut B) {
    if (0..=255).contains(&i) {
        out.put_u8(tag::SMALL_INTEGER);
        out.put_u8(i as u8);
    } else if let Ok(small) = i32::try_from(i) {
        out.put_u8(tag::INTEGER);
        out.put_i32(small);
    } else {
        let magnitude = i.unsigned_abs();
        let digits = magnitude.to_le_bytes();
        let n = 8 - (magnitude.leading_zeros() / 8) as usize;
        out.put_u8(tag::SMALL_BIG);
        out.put_u8(n as u8);
        out.put_u8(u8::from(i < 0));
        out.put_slice(&digits[..n]);
    }
}

fn encode_atom<B: BufMut>(a: &Atom, out: &mut B) {
    let s = a.as_str().as_bytes();
    if s.len() <= 0xFF {
        out.put_u8(tag::SMALL_ATOM_UTF8);
        out.put_u8(s.len() as u8);
    } else {
        // At most 255 characters of at most 4 bytes each: always fits a u16.
        out.put_u8(tag::ATOM_UTF8);
        out.put_u16(s.len() as u16);
    }
    out.put_slice(s);
}

/// A cursor over one payload.
struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            kind,
            offset: self.pos,
        }
    }

    fn error_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { kind, offset }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(self.error(DecodeErrorKind::Truncated));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads an element count and checks that the bytes left can hold `count` elements
    /// of at least `min_size` bytes each, before anything is allocated for them.
    fn count(
        &mut self,
        count: usize,
        header_at: usize,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let need = (count as u64).saturating_mul(min_size as u64);
        if need > self.left() as u64 {
            return Err(self.error_at(
                header_at,
                DecodeErrorKind::CountTooLarge {
                    count: count as u64,
                    left: self.left(),
                },
            ));
        }
        Ok(count)
    }

    fn term(&mut self, depth: usize) -> Result<Term, DecodeError> {
        let at = self.pos;
        let t = self.u8()?;
        match t {
            tag::SMALL_INTEGER => Ok(Term::Int(self.u8()?.into())),
            tag::INTEGER => {
                let b = self.take(4)?;
                Ok(Term::Int(
                    i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into(),
                ))
            }
            tag::SMALL_BIG => self.small_big(at),
            tag::NEW_FLOAT => {
                let b = self.take(8)?;
                let f = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                if !f.is_finite() {
                    return Err(self.error_at(at, DecodeErrorKind::NonFiniteFloat));
                }
                Ok(Term::Float(f))
            }
            tag::SMALL_ATOM_UTF8 => {
                let n = self.u8()?.into();
                self.atom_utf8(n, at)
            }
            tag::ATOM_UTF8 => {
                let n = self.u16()?.into();
                self.atom_utf8(n, at)
            }
            tag::SMALL_ATOM => {
                let n = self.u8()?.into();
                self.atom_latin1(n, at)
            }
            tag::ATOM => {
                let n = self.u16()?.into();
                self.atom_latin1(n, at)
            }
            tag::BINARY => {
                let n = self.u32()? as usize;
                let n = self.count(n, at, 1)?;
                Ok(Term::binary(self.take(n)?))
            }
            tag::NIL => Ok(Term::nil()),
            tag::STRING => {
                let n = self.u16()?.into();
                let n = self.count(n, at, 1)?;
                Ok(Term::List(
                    self.take(n)?.iter().map(|&b| Term::Int(b.into())).collect(),
                ))
            }
            tag::LIST => {
                let n = self.u32()? as usize;
                // Each element takes at least one byte, and the tail one more.
                let n = self.count(n, at, 1)?;
                let items = self.shared_sequence(n, depth)?;
                let tail_at = self.pos;
                match self.u8()? {
                    tag::NIL => Ok(Term::List(items)),
                    _ => Err(self.error_at(tail_at, DecodeErrorKind::ImproperList)),
                }
            }
            tag::SMALL_TUPLE => {
                let n = self.u8()?.into();
                let n = self.count(n, at, 1)?;
                Ok(Term::Tuple(self.shared_sequence(n, depth)?))
            }
            tag::LARGE_TUPLE => {
                let n = self.u32()? as usize;
                let n = self.count(n, at, 1)?;
                Ok(Term::Tuple(self.shared_sequence(n, depth)?))
            }
            tag::MAP => {
                let n = self.u32()? as usize;
                let n = self.count(n, at, 2)?;
                self.map(n, depth, at)
            }
            other => Err(self.error_at(
                at,
                match rejected_tag_name(other) {
                    Some(name) => DecodeErrorKind::RejectedTag(other, name),
                    None => DecodeErrorKind::UnknownTag(other),
                },
            )),
        }
    }

    /// Refuses a container of `n` elements at `depth` whose elements would sit at
    /// [`MAX_DEPTH`]; an empty container has none, so it is fine at any depth the
    /// encoder accepts.
    fn descend(&self, n: usize, depth: usize) -> Result<(), DecodeError> {
        if n > 0 && depth + 1 >= MAX_DEPTH {
            return Err(self.error(DecodeErrorKind::TooDeep));
        }
        Ok(())
    }

    /// Decodes `n` elements one level deeper. The vector grows as elements actually
    /// arrive, so nested headers that each claim the whole rest of the payload cannot
    /// multiply the memory reserved ahead of the data.
    fn sequence(&mut self, n: usize, depth: usize) -> Result<Vec<Term>, DecodeError> {
        self.descend(n, depth)?;
        let mut items = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            items.push(self.term(depth + 1)?);
        }
        Ok(items)
    }

    /// [`sequence`](Self::sequence) straight into the shared slice a tuple or list
    /// holds: a small one (the common request, `{lookup, {key, 7}}`) is gathered on the
    /// stack and moved into its one allocation, rather than into a vector first and
    /// then copied into a second.
    fn shared_sequence(&mut self, n: usize, depth: usize) -> Result<Arc<[Term]>, DecodeError> {
        if n > SMALL_SEQUENCE {
            return Ok(self.sequence(n, depth)?.into());
        }
        self.descend(n, depth)?;
        let mut items = [const { Term::Int(0) }; SMALL_SEQUENCE];
        for item in items.iter_mut().take(n) {
            *item = self.term(depth + 1)?;
        }
        // An exact-size iterator: `Arc` allocates once, the size it needs.
        Ok(items.into_iter().take(n).collect())
    }

    fn map(&mut self, n: usize, depth: usize, at: usize) -> Result<Term, DecodeError> {
        self.descend(n, depth)?;
        let mut entries: Vec<(Term, Term)> = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let k = self.term(depth + 1)?;
            let v = self.term(depth + 1)?;
            entries.push((k, v));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(self.error_at(at, DecodeErrorKind::DuplicateMapKey));
        }
        Ok(Term::Map(entries.into()))
    }

    fn small_big(&mut self, at: usize) -> Result<Term, DecodeError> {
        let n = self.u8()? as usize;
        let sign = self.u8()?;
        let digits = self.take(n)?;
        if sign > 1 {
            return Err(self.error_at(at, DecodeErrorKind::IntegerOutOfRange));
        }
        let significant = digits.iter().rposition(|&d| d != 0).map_or(0, |p| p + 1);
        if significant > 8 {
            return Err(self.error_at(at, DecodeErrorKind::IntegerOutOfRange));
        }
        let mut le = [0u8; 8];
        le[..significant].copy_from_slice(&digits[..significant]);
        let magnitude = u64::from_le_bytes(le);
        let value = if sign == 0 {
            i64::try_from(magnitude).ok()
        } else if magnitude == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(magnitude).ok().map(|m| -m)
        };
        value
            .map(Term::Int)
            .ok_or_else(|| self.error_at(at, DecodeErrorKind::IntegerOutOfRange))
    }

    fn atom_utf8(&mut self, n: usize, at: usize) -> Result<Term, DecodeError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.error_at(at, DecodeErrorKind::InvalidUtf8Atom))?;
        Atom::new(s)
            .map(Term::Atom)
            .ok_or_else(|| self.error_at(at, DecodeErrorKind::AtomTooLong))
    }

    fn atom_latin1(&mut self, n: usize, at: usize) -> Result<Term, DecodeError> {
        if n > Atom::MAX_CHARS {
            return Err(self.error_at(at, DecodeErrorKind::AtomTooLong));
        }
        let bytes = self.take(n)?;
        // ASCII (Erlang's usual `ok`, `call`, ...) is already UTF-8: no copy to make.
        if bytes.is_ascii() {
            let s = std::str::from_utf8(bytes).expect("ASCII is UTF-8");
            return Ok(Term::Atom(Atom::new(s).expect("at most 255 characters")));
        }
        let s: String = bytes.iter().map(|&b| char::from(b)).collect();
        Ok(Term::Atom(Atom::new(&s).expect("at most 255 characters")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::term;

    fn roundtrip(t: &Term) {
        let bytes = encode(t).unwrap();
        assert_eq!(&decode(&bytes).unwrap(), t, "bytes {bytes:?}");
    }

    #[test]
    fn seed_messages_round_trip_with_erlang_bytes() {
        // term_to_binary({store, joe, "ab"}) in OTP 26+ (UTF-8 atoms).
        let t = term!({store, joe, "ab"});
        let bytes = encode(&t).unwrap();
        assert_eq!(
            bytes,
            [
                131, 104, 3, 119, 5, b's', b't', b'o', b'r', b'e', 119, 3, b'j', b'o', b'e', 107,
                0, 2, b'a', b'b'
            ]
        );
        roundtrip(&t);
    }

    #[test]
    fn integer_boundaries_use_the_smallest_tag() {
        for (i, tag) in [
            (0, tag::SMALL_INTEGER),
            (255, tag::SMALL_INTEGER),
            (256, tag::INTEGER),
            (-1, tag::INTEGER),
            (i32::MAX as i64, tag::INTEGER),
            (i32::MIN as i64, tag::INTEGER),
            (i32::MAX as i64 + 1, tag::SMALL_BIG),
            (i32::MIN as i64 - 1, tag::SMALL_BIG),
            (i64::MAX, tag::SMALL_BIG),
            (i64::MIN, tag::SMALL_BIG),
        ] {
            let bytes = encode(&Term::Int(i)).unwrap();
            assert_eq!(bytes[1], tag, "{i}");
            roundtrip(&Term::Int(i));
        }
    }

    #[test]
    fn latin1_atoms_decode() {
        // OTP 25 writes 'héllo' as ATOM_EXT in Latin-1.
        let bytes = [131, 100, 0, 5, b'h', 0xE9, b'l', b'l', b'o'];
        assert_eq!(decode(&bytes).unwrap(), Term::atom("héllo"));
        // ASCII ones, as OTP 25 writes `ok` and `joe`, are taken as they are.
        let ok = [131, 100, 0, 2, b'o', b'k'];
        assert_eq!(decode(&ok).unwrap(), Term::atom("ok"));
        let joe = [131, 100, 0, 3, b'j', b'o', b'e'];
        assert_eq!(decode(&joe).unwrap(), Term::atom("joe"));
    }

    #[test]
    fn maps_encode_canonically() {
        let a = Term::map([(term!(b), term!(1)), (term!(a), term!(2))]);
        let b = Term::map([(term!(a), term!(2)), (term!(b), term!(1))]);
        assert_eq!(encode(&a).unwrap(), encode(&b).unwrap());
        roundtrip(&a);
    }

    fn kind(bytes: &[u8]) -> DecodeErrorKind {
        decode(bytes).unwrap_err().kind
    }

    #[test]
    fn malformed_inputs_each_get_their_own_error() {
        use DecodeErrorKind::*;
        assert_eq!(kind(&[]), Empty);
        assert_eq!(kind(&[130, 97, 1]), BadVersion(130));
        assert_eq!(kind(&[131, 97]), Truncated);
        // A LIST of 2^32-1 elements in a 10-byte frame.
        assert_eq!(
            kind(&[131, 108, 0xFF, 0xFF, 0xFF, 0xFF, 106, 106, 106, 106]),
            CountTooLarge {
                count: u32::MAX as u64,
                left: 4
            }
        );
        assert_eq!(kind(&[131, 97, 1, 0]), TrailingBytes(1));
        assert_eq!(kind(&[131, 108, 0, 0, 0, 1, 97, 1, 97, 2]), ImproperList);
        assert_eq!(kind(&[131, 119, 2, 0xC3, 0x28]), InvalidUtf8Atom);
        let mut long = vec![131, 118, 1, 0];
        long.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(kind(&long), AtomTooLong);
        let mut long = vec![131, 100, 1, 0];
        long.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(kind(&long), AtomTooLong);
        let mut nan = vec![131, 70];
        nan.extend(f64::NAN.to_be_bytes());
        assert_eq!(kind(&nan), NonFiniteFloat);
        let mut inf = vec![131, 70];
        inf.extend(f64::INFINITY.to_be_bytes());
        assert_eq!(kind(&inf), NonFiniteFloat);
        assert_eq!(
            kind(&[131, 110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            IntegerOutOfRange
        );
        assert_eq!(
            kind(&[131, 110, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),
            IntegerOutOfRange
        );
        assert_eq!(kind(&[131, 110, 1, 2, 5]), IntegerOutOfRange);
        assert_eq!(
            kind(&[131, 116, 0, 0, 0, 2, 97, 1, 97, 2, 97, 1, 97, 3]),
            DuplicateMapKey
        );
        assert_eq!(kind(&[131, 200]), UnknownTag(200));
    }

    #[test]
    fn minus_two_to_the_63_is_the_one_big_magnitude_that_fits() {
        let t = decode(&[131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80]).unwrap();
        assert_eq!(t, Term::Int(i64::MIN));
        // Leading zero digits are tolerated.
        assert_eq!(
            decode(&[131, 110, 9, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Term::Int(5)
        );
    }

    #[test]
    fn every_rejected_tag_is_named() {
        for tag in [
            68, 69, 77, 80, 82, 88, 89, 90, 99, 101, 102, 103, 111, 112, 113, 114, 117, 120, 121,
        ] {
            match kind(&[131, tag, 0, 0, 0, 0, 0, 0, 0, 0]) {
                DecodeErrorKind::RejectedTag(t, _) => assert_eq!(t, tag),
                other => panic!("tag {tag}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let t = term!({store, joe, "writing a book", [1, 2.5, (Term::binary(b"xyz")), {}, (Term::map([(term!(k), term!(v))]))], 70000});
        let bytes = encode(&t).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&bytes).unwrap(), t);
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        let mut bytes = vec![131];
        for _ in 0..100_000 {
            bytes.extend([104, 1]);
        }
        bytes.push(106);
        assert_eq!(kind(&bytes), DecodeErrorKind::TooDeep);
        let mut bytes = vec![131];
        for _ in 0..100_000 {
            bytes.extend([108, 0, 0, 0, 1]);
        }
        assert_eq!(kind(&bytes), DecodeErrorKind::TooDeep);
        // 64 levels are accepted.
        let mut t = Term::nil();
        for _ in 0..64 {
            t = Term::tuple([t]);
        }
        roundtrip(&t);
    }

    #[test]
    fn encoder_refuses_what_erlang_cannot_read() {
        assert_eq!(
            encode(&Term::Float(f64::NAN)),
            Err(EncodeError::NonFiniteFloat)
        );
        let mut t = Term::nil();
        for _ in 0..MAX_DEPTH + 1 {
            t = Term::list([t]);
        }
        assert_eq!(encode(&t), Err(EncodeError::TooDeep));
    }

    #[test]
    fn tagged_encoding_equals_the_tuple_encoding() {
        let body = term!({ok, "writing a book"});
        let mut out = Vec::new();
        encode_tagged_into(
            &Atom::new("reply").unwrap(),
            &[&Term::Int(7), &body],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, encode(&term!({reply, 7, (body.clone())})).unwrap());
    }

    #[test]
    fn encoded_len_matches_the_encoding() {
        for t in [
            term!({store, joe, "writing a book"}),
            Term::list((0..300).map(Term::Int)),
            Term::tuple((0..300).map(|i| Term::Int(i * 1_000_000_007))),
            Term::map([
                (term!(k), Term::Float(1.5)),
                (Term::binary(b"x"), Term::nil()),
            ]),
            Term::atom(&"é".repeat(200)),
            Term::Int(i64::MIN),
            Term::Int(-1),
        ] {
            assert_eq!(encoded_len(&t), encode(&t).unwrap().len(), "{t}");
        }
    }

    #[test]
    fn long_and_wide_terms_round_trip() {
        roundtrip(&Term::list((0..70_000).map(Term::Int)));
        roundtrip(&Term::tuple((0..300).map(Term::Int)));
        roundtrip(&Term::list((0..70_000).map(|i| Term::Int(i % 256))));
        roundtrip(&Term::string("ĉu vi parolas? ☃"));
    }
}
