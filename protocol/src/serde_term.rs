//! The serde bridge: Rust structs and enums to and from the [`Term`] an Erlang programmer
//! would write.
//!
//! [`to_term`] turns any `Serialize` value into a term, [`from_term`] any term into a
//! `Deserialize` value (and [`from_term_borrowed`] into one that borrows strings and
//! bytes from the term). A request enum then needs no hand-written parser:
//!
//! ```
//! use lib_chan_protocol::{from_term, parse, to_term, Term};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! enum Request {
//!     Store(Term, Term),
//!     Lookup(Term),
//!     Names,
//! }
//!
//! let wire = parse(r#"{store, joe, "writing a book"}"#).unwrap();
//! let request: Request = from_term(&wire).unwrap();
//! assert_eq!(request, Request::Store(Term::atom("joe"), Term::string("writing a book")));
//! assert_eq!(to_term(&request).unwrap(), wire);
//! assert_eq!(to_term(&Request::Names).unwrap(), Term::atom("names"));
//! ```
//!
//! # The mapping
//!
//! | Rust (serde data model)                 | Erlang term                        | notes |
//! |-----------------------------------------|------------------------------------|-------|
//! | `i8`..`i64`, `u8`..`u64`, `i128`, `u128` | integer `42`                      | beyond signed 64 bits: an error both ways |
//! | `f32`, `f64`                            | float `1.5`                        | NaN and the infinities are errors; reading also takes an integer (`2` for `2.0`) |
//! | `bool`                                  | `true`, `false`                    | |
//! | `char`                                  | integer code point (`$a`, i.e. `97`) | reading also takes a one-character string |
//! | `String`, `&str`                        | binary `<<"text">>`                | reading takes a UTF-8 binary, a charlist `"text"` or an atom `text` |
//! | `Option<T>`                             | `undefined` or the term of `T`     | `Some(x)` is `x` itself, untagged |
//! | `()`                                    | `undefined`                        | |
//! | bytes (`serialize_bytes`, [`binary`])   | binary `<<1,2,3>>`                 | reading also takes a list of bytes |
//! | `Vec<T>`, slices, sets, any sequence    | list `[A, B]`                      | `Vec<u8>` is a list too; reading takes a binary as well |
//! | `(A, B)`, `[T; N]`                      | tuple `{A, B}`                     | reading also takes a list (or binary, for bytes) of that length |
//! | unit struct `struct Ping;`              | atom of its name: `'Ping'`         | the name as given: `#[serde(rename = "ping")]` gives `ping` |
//! | newtype struct `struct Id(u32)`         | the inner term, `7`                | |
//! | tuple struct `struct P(i64, i64)`       | tuple `{1, 2}`, no tag             | |
//! | struct `struct P { x: i64, y: i64 }`    | map with atom keys `#{x => 1, y => 2}` | see "Structs" below |
//! | `HashMap`, `BTreeMap`, any map          | map `#{K => V}`                    | keys as mapped here (a `String` key is a binary); a key given twice: the last wins |
//! | unit variant `Names`                    | atom `names`                       | the variant name, as renamed |
//! | newtype variant `Lookup(K)`             | `{lookup, K}`                      | |
//! | tuple variant `Store(K, V)`             | `{store, K, V}`                    | |
//! | struct variant `Move { x: i64 }`        | `{move, #{x => 1}}`                | |
//! | [`Term`]                                | the term itself, unchanged         | name server keys and values, anything opaque |
//! | [`Atom`]                                | the atom                           | a field that must be an atom, `kind => store` |
//!
//! Names are used as serde gives them: variants and fields are Rust's `CamelCase` and
//! `snake_case` unless renamed, so put `#[serde(rename_all = "snake_case")]` on enums
//! (`Store` becomes `store`). An atom longer than 255 characters is an error.
//!
//! **Strings are binaries.** An Erlang string literal `"text"` is a charlist, a list of
//! code points, but binaries are what current Erlang code (and every JSON or HTTP
//! library) uses for text: compact in the Erlang VM, where a charlist costs 16 bytes a
//! character, and never mistaken for a list of small integers. So a `String` is written as `<<"text">>`, and read from any of a
//! binary, a charlist or an atom, so that a client typing `{nick, "joe"}` or
//! `{nick, joe}` in the shell is understood. Use `#[serde(with =
//! "lib_chan_protocol::serde_term::charlist")]` on a field that must be written as a
//! charlist, and [`binary`] on a `Vec<u8>` that must be a binary rather than a list.
//!
//! **Structs** are maps with atom keys, the way Erlang code passes records between
//! nodes. Reading one ignores keys it does not know (unless `#[serde(deny_unknown_fields)]`),
//! accepts binary keys (`#{<<"x">> => 1}`) as well as atoms, and fills a missing
//! `Option` field with `None` (`#[serde(default)]` for others).
//!
//! **`undefined`** is Erlang's "no value", so `None` and `()` both write it and read it
//! back. A `Some(x)` whose `x` writes `undefined` itself (`Some(())`, `Some(None)`, a
//! unit variant named `undefined`) reads back as `None`.
//!
//! # Errors
//!
//! A [`TermError`] says what was expected, shows the start of the term that was found
//! (never a whole hostile input), and where it was: `at .shapes[1][1]: expected a number,
//! found x` (`.field` for map keys, `[i]` for list and tuple elements counted from 0, the
//! tag of a tagged tuple being `[0]`). Serde's own messages keep their wording:
//! ``unknown variant `frob`, expected `store` or `lookup` in {frob,1}``.
//!
//! # Limits
//!
//! - `#[serde(flatten)]` turns a struct into a serde map: its keys become binaries.
//! - Untagged and internally tagged enums (`#[serde(untagged)]`, `#[serde(tag = "t")]`)
//!   read through serde's self-describing path, where an atom and a UTF-8 binary both
//!   look like a string, a tuple and a list both like a sequence, `true`/`false` like
//!   booleans and `undefined` like unit; an internally tagged enum writes its tag as a
//!   binary (`#{t => <<"store">>}`). Prefer the default, externally tagged enums above.
//!   A [`Term`] field cannot be read inside those, nor inside a flattened struct.
//! - A [`Term`] field is rebuilt, not shared, on the way through: the cost of copying it.
//! - Through other serde formats (JSON, say), a [`Term`] is an externally tagged enum,
//!   `{"tuple": [{"atom": "ok"}, {"int": 1}]}`, so that it survives the round trip.

use std::fmt::{self, Display};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::value::{
    BorrowedBytesDeserializer, BorrowedStrDeserializer, MapDeserializer, SeqDeserializer,
};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::ser;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::message::snippet;
use crate::term::{Atom, Term};

/// How much of a term an error shows, in bytes of Erlang text.
const SNIPPET_CHARS: usize = 60;

/// The private enum name [`Term`] serializes as, so that this module's serializer and
/// deserializer recognise it and pass the term through unchanged.
const TERM_ENUM: &str = "$lib_chan_protocol::Term";
/// The private newtype name [`Atom`] serializes as.
const ATOM_TOKEN: &str = "$lib_chan_protocol::Atom";
/// The variants of [`TERM_ENUM`], in the order of their indexes.
const TERM_KINDS: &[&str] = &["int", "float", "atom", "binary", "list", "tuple", "map"];

/// What strings are read from.
const A_STRING: &str = "a string (a UTF-8 binary, a charlist or an atom)";

/// Turns `value` into the term an Erlang programmer would expect (see the
/// [module documentation](crate::serde_term) for the mapping).
///
/// Fails on what has no Erlang term: an integer beyond signed 64 bits, a NaN or infinite
/// float, an atom (a variant, field or unit struct name) longer than 255 characters.
pub fn to_term<T: Serialize + ?Sized>(value: &T) -> Result<Term, TermError> {
    value.serialize(TermSerializer)
}

/// Reads a `T` from `term` (see the [module documentation](crate::serde_term) for the
/// mapping).
///
/// The error says what was expected, where, and what was found instead.
pub fn from_term<T: DeserializeOwned>(term: &Term) -> Result<T, TermError> {
    from_term_borrowed(term)
}

/// Reads a `T` that may borrow from `term`: a `&str` from a binary or an atom, a `&[u8]`
/// from a binary.
pub fn from_term_borrowed<'de, T: Deserialize<'de>>(term: &'de Term) -> Result<T, TermError> {
    T::deserialize(TermDeserializer::new(term)).map_err(|e| e.in_term(term))
}

/// Why a Rust value could not become a [`Term`], or a term a Rust value.
///
/// Displays as `at PATH: MESSAGE`, or just the message at the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermError {
    path: String,
    message: String,
    /// The message already shows the offending term (or needs none).
    shows_term: bool,
}

impl TermError {
    fn new(message: impl Into<String>) -> TermError {
        TermError {
            path: String::new(),
            message: message.into(),
            shows_term: false,
        }
    }

    fn expected(what: impl Display, found: &Term) -> TermError {
        TermError {
            path: String::new(),
            message: format!("expected {what}, found {}", snippet(found, SNIPPET_CHARS)),
            shows_term: true,
        }
    }

    /// Adds ` in TERM` to a message that does not show the term yet.
    fn in_term(mut self, term: &Term) -> TermError {
        if !self.shows_term {
            self.message.push_str(" in ");
            self.message.push_str(&snippet(term, SNIPPET_CHARS));
            self.shows_term = true;
        }
        self
    }

    /// Marks a message about a scalar as complete: serde's messages about numbers and
    /// strings already quote the value.
    fn settled(mut self) -> TermError {
        self.shows_term = true;
        self
    }

    /// Puts `step` in front of the path.
    fn at(mut self, step: impl Display) -> TermError {
        self.path.insert_str(0, &step.to_string());
        self
    }

    /// Where in the value the error is, from the top: `.field` for a map key, `[i]` for
    /// an element of a list or tuple (from 0). Empty for the top level.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What was wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TermError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for TermError {}

impl ser::Error for TermError {
    fn custom<T: Display>(msg: T) -> TermError {
        TermError::new(msg.to_string())
    }
}

impl de::Error for TermError {
    fn custom<T: Display>(msg: T) -> TermError {
        TermError::new(msg.to_string())
    }
}

/// The path step for the value under `key`: `.name` for an atom, `[Key]` otherwise.
fn key_step(key: &Term) -> String {
    match key {
        Term::Atom(a) => format!(".{a}"),
        other => format!("[{}]", snippet(other, 24)),
    }
}

fn undefined() -> Term {
    Term::atom("undefined")
}

fn atom(name: &str) -> Result<Term, TermError> {
    Atom::new(name).map(Term::Atom).ok_or_else(|| {
        let head: String = name.chars().take(24).collect();
        TermError::new(format!(
            "the atom {head}... has more than {} characters",
            Atom::MAX_CHARS
        ))
    })
}

/// `name` as Erlang prints the atom, for messages.
fn quoted(name: &str) -> String {
    Atom::new(name).map_or_else(|| name.to_string(), |a| a.to_string())
}

fn int<T: Copy + Display + TryInto<i64>>(v: T) -> Result<Term, TermError> {
    v.try_into().map(Term::Int).map_err(|_| {
        TermError::new(format!(
            "the integer {v} is outside the signed 64-bit range of the protocol"
        ))
    })
}

fn float(v: f64) -> Result<Term, TermError> {
    if v.is_finite() {
        Ok(Term::Float(v))
    } else {
        Err(TermError::new(format!(
            "the float {v} has no Erlang term (floats are finite)"
        )))
    }
}

fn list(items: Vec<Term>) -> Term {
    if items.is_empty() {
        Term::nil()
    } else {
        Term::List(items.into())
    }
}

// ---------------------------------------------------------------------------------------
// Rust value to term.

/// The serializer behind [`to_term`].
#[derive(Debug, Clone, Copy)]
struct TermSerializer;

impl Serializer for TermSerializer {
    type Ok = Term;
    type Error = TermError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = TupleSer;
    type SerializeTupleStruct = TupleSer;
    type SerializeTupleVariant = TupleSer;
    type SerializeMap = MapSer;
    type SerializeStruct = StructSer;
    type SerializeStructVariant = StructSer;

    fn serialize_bool(self, v: bool) -> Result<Term, TermError> {
        Ok(Term::boolean(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Term, TermError> {
        Ok(Term::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Term, TermError> {
        int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Term, TermError> {
        Ok(Term::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Term, TermError> {
        int(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Term, TermError> {
        int(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Term, TermError> {
        float(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Term, TermError> {
        float(v)
    }
    fn serialize_char(self, v: char) -> Result<Term, TermError> {
        Ok(Term::Int(u32::from(v).into()))
    }
    fn serialize_str(self, v: &str) -> Result<Term, TermError> {
        Ok(Term::binary(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Term, TermError> {
        Ok(Term::binary(v))
    }
    fn serialize_none(self) -> Result<Term, TermError> {
        Ok(undefined())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Term, TermError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Term, TermError> {
        Ok(undefined())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Term, TermError> {
        atom(name)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Term, TermError> {
        atom(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Term, TermError> {
        let inner = value.serialize(self)?;
        if name == ATOM_TOKEN {
            return text_to_atom(inner);
        }
        Ok(inner)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Term, TermError> {
        if name == TERM_ENUM {
            return raw_term(variant, value.serialize(self)?);
        }
        let tag = atom(variant)?;
        let value = value.serialize(self).map_err(|e| e.at("[1]"))?;
        Ok(Term::tuple([tag, value]))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer, TermError> {
        Ok(SeqSer {
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<TupleSer, TermError> {
        Ok(TupleSer {
            items: Vec::with_capacity(len),
        })
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<TupleSer, TermError> {
        self.serialize_tuple(len)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<TupleSer, TermError> {
        let mut items = Vec::with_capacity(len + 1);
        items.push(atom(variant)?);
        Ok(TupleSer { items })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<MapSer, TermError> {
        Ok(MapSer {
            entries: Vec::with_capacity(len.unwrap_or(0)),
            key: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<StructSer, TermError> {
        Ok(StructSer {
            tag: None,
            entries: Vec::with_capacity(len),
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructSer, TermError> {
        Ok(StructSer {
            tag: Some(atom(variant)?),
            entries: Vec::with_capacity(len),
        })
    }
}

/// The atom whose text `inner` (a serialized string) holds.
fn text_to_atom(inner: Term) -> Result<Term, TermError> {
    match inner.as_binary().map(std::str::from_utf8) {
        Some(Ok(text)) => atom(text),
        _ => Err(TermError::expected("the text of an atom", &inner)),
    }
}

/// Rebuilds a [`Term`] from the payload of its `kind` variant, as serialized by
/// `impl Serialize for Term`.
fn raw_term(kind: &str, inner: Term) -> Result<Term, TermError> {
    match (kind, inner) {
        ("int", t @ Term::Int(_))
        | ("float", t @ Term::Float(_))
        | ("binary", t @ Term::Binary(_))
        | ("list", t @ Term::List(_)) => Ok(t),
        ("atom", inner) => text_to_atom(inner),
        ("tuple", Term::List(items)) => Ok(Term::Tuple(items)),
        ("map", Term::List(pairs)) => {
            let entries = pairs
                .iter()
                .map(|pair| match pair.as_tuple() {
                    Some([k, v]) => Ok((k.clone(), v.clone())),
                    _ => Err(TermError::expected("a {Key, Value} map entry", pair)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Term::map(entries))
        }
        (kind, inner) => Err(TermError::expected(
            format_args!("the payload of a term's {kind} variant"),
            &inner,
        )),
    }
}

fn element<T: Serialize + ?Sized>(items: &mut Vec<Term>, value: &T) -> Result<(), TermError> {
    let i = items.len();
    let term = value
        .serialize(TermSerializer)
        .map_err(|e| e.at(format!("[{i}]")))?;
    items.push(term);
    Ok(())
}

/// A sequence being serialized: a list.
#[derive(Debug)]
struct SeqSer {
    items: Vec<Term>,
}

impl ser::SerializeSeq for SeqSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TermError> {
        element(&mut self.items, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(list(self.items))
    }
}

/// A tuple, tuple struct or tuple variant being serialized (a variant's tag is the first
/// element already).
#[derive(Debug)]
struct TupleSer {
    items: Vec<Term>,
}

impl ser::SerializeTuple for TupleSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TermError> {
        element(&mut self.items, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(Term::Tuple(self.items.into()))
    }
}

impl ser::SerializeTupleStruct for TupleSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TermError> {
        element(&mut self.items, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(Term::Tuple(self.items.into()))
    }
}

impl ser::SerializeTupleVariant for TupleSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TermError> {
        element(&mut self.items, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(Term::Tuple(self.items.into()))
    }
}

/// A map being serialized.
#[derive(Debug)]
struct MapSer {
    entries: Vec<(Term, Term)>,
    key: Option<Term>,
}

impl ser::SerializeMap for MapSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TermError> {
        self.key = Some(key.serialize(TermSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TermError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| TermError::new("a map value came before its key"))?;
        let value = value
            .serialize(TermSerializer)
            .map_err(|e| e.at(key_step(&key)))?;
        self.entries.push((key, value));
        Ok(())
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(Term::map(self.entries))
    }
}

/// A struct (a map with atom keys) or struct variant (`{Tag, #{...}}`) being serialized.
#[derive(Debug)]
struct StructSer {
    tag: Option<Term>,
    entries: Vec<(Term, Term)>,
}

impl StructSer {
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), TermError> {
        let key = atom(key)?;
        let value = value.serialize(TermSerializer).map_err(|e| {
            let e = e.at(key_step(&key));
            if self.tag.is_some() {
                e.at("[1]")
            } else {
                e
            }
        })?;
        self.entries.push((key, value));
        Ok(())
    }

    fn finish(self) -> Term {
        let map = Term::map(self.entries);
        match self.tag {
            Some(tag) => Term::tuple([tag, map]),
            None => map,
        }
    }
}

impl ser::SerializeStruct for StructSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TermError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for StructSer {
    type Ok = Term;
    type Error = TermError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TermError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Term, TermError> {
        Ok(self.finish())
    }
}

// ---------------------------------------------------------------------------------------
// Term to Rust value.

/// The deserializer behind [`from_term`]: reads one term, borrowing from it.
#[derive(Debug, Clone, Copy)]
struct TermDeserializer<'de> {
    term: &'de Term,
}

impl<'de> TermDeserializer<'de> {
    fn new(term: &'de Term) -> TermDeserializer<'de> {
        TermDeserializer { term }
    }

    fn expected(&self, what: impl Display) -> TermError {
        TermError::expected(what, self.term)
    }

    fn not_an_enum(&self, name: &str) -> TermError {
        self.expected(format_args!("enum {name}: an atom or a tuple {{Tag, ...}}"))
    }

    fn int(&self) -> Result<i64, TermError> {
        self.term
            .as_int()
            .ok_or_else(|| self.expected("an integer"))
    }
}

impl<'de> IntoDeserializer<'de, TermError> for TermDeserializer<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// Visits `items` as a sequence whose first element is at `first` in the path, and
/// checks that the visitor took them all.
fn visit_items<'de, V: Visitor<'de>>(
    items: &'de [Term],
    first: usize,
    visitor: V,
) -> Result<V::Value, TermError> {
    let mut seq = Items {
        iter: items.iter(),
        index: first,
    };
    let value = visitor.visit_seq(&mut seq)?;
    match seq.iter.len() {
        0 => Ok(value),
        left => Err(TermError::new(format!(
            "expected {} elements, found {}",
            items.len() - left,
            items.len()
        ))),
    }
}

fn visit_entries<'de, V: Visitor<'de>>(
    entries: &'de [(Term, Term)],
    visitor: V,
) -> Result<V::Value, TermError> {
    visitor.visit_map(Entries {
        iter: entries.iter(),
        value: None,
    })
}

/// Visits the bytes of a binary as a sequence of integers.
fn visit_bytes_as_seq<'de, V: Visitor<'de>>(
    bytes: &'de [u8],
    visitor: V,
) -> Result<V::Value, TermError> {
    let mut seq = SeqDeserializer::<_, TermError>::new(bytes.iter().copied());
    let value = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(value)
}

macro_rules! deserialize_int {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
            let i = self.int()?;
            visitor.visit_i64(i).map_err(TermError::settled)
        }
    )*};
}

impl<'de> Deserializer<'de> for TermDeserializer<'de> {
    type Error = TermError;

    /// Serde's self-describing path (untagged enums, `IgnoredAny`, other data models):
    /// `true`/`false` are booleans, `undefined` unit, other atoms and UTF-8 binaries
    /// strings, lists and tuples sequences.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Int(i) => visitor.visit_i64(*i),
            Term::Float(f) => visitor.visit_f64(*f),
            Term::Atom(a) => match a.as_str() {
                "true" => visitor.visit_bool(true),
                "false" => visitor.visit_bool(false),
                "undefined" => visitor.visit_unit(),
                name => visitor.visit_borrowed_str(name),
            },
            Term::Binary(b) => match std::str::from_utf8(b) {
                Ok(text) => visitor.visit_borrowed_str(text),
                Err(_) => visitor.visit_borrowed_bytes(b),
            },
            Term::List(items) | Term::Tuple(items) => return visit_items(items, 0, visitor),
            Term::Map(entries) => return visit_entries(entries, visitor),
        }
        .map_err(TermError::settled)
    }

    deserialize_int!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term.as_atom() {
            Some("true") => visitor.visit_bool(true),
            Some("false") => visitor.visit_bool(false),
            _ => return Err(self.expected("true or false")),
        }
        .map_err(TermError::settled)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Float(f) => visitor.visit_f64(*f),
            Term::Int(i) => visitor.visit_i64(*i),
            _ => return Err(self.expected("a number")),
        }
        .map_err(TermError::settled)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Int(i) => match u32::try_from(*i).ok().and_then(char::from_u32) {
                Some(c) => visitor.visit_char(c).map_err(TermError::settled),
                None => Err(self.expected("a character (a Unicode code point)")),
            },
            _ => self.deserialize_str(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Binary(b) => match std::str::from_utf8(b) {
                Ok(text) => visitor.visit_borrowed_str(text),
                Err(_) => return Err(self.expected("a string (this binary is not UTF-8)")),
            },
            Term::Atom(a) => visitor.visit_borrowed_str(a.as_str()),
            Term::List(_) => match self.term.as_charlist() {
                Some(text) => visitor.visit_string(text),
                None => return Err(self.expected(A_STRING)),
            },
            _ => return Err(self.expected(A_STRING)),
        }
        .map_err(TermError::settled)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Binary(b) => visitor.visit_borrowed_bytes(b),
            Term::List(items) => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|t| t.as_int().and_then(|i| u8::try_from(i).ok()))
                    .collect();
                match bytes {
                    Some(bytes) => visitor.visit_byte_buf(bytes),
                    None => return Err(self.expected("a binary")),
                }
            }
            _ => return Err(self.expected("a binary")),
        }
        .map_err(TermError::settled)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        if self.term.is_atom("undefined") {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        if self.term.is_atom("undefined") {
            visitor.visit_unit()
        } else {
            Err(self.expected("undefined"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TermError> {
        if self.term.is_atom(name) {
            visitor.visit_unit()
        } else {
            Err(self.expected(format_args!("the atom {}", quoted(name))))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TermError> {
        if name == ATOM_TOKEN && self.term.as_atom().is_none() {
            return Err(self.expected("an atom"));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::List(items) => visit_items(items, 0, visitor),
            Term::Binary(b) => visit_bytes_as_seq(b, visitor),
            _ => Err(self.expected("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TermError> {
        match self.term {
            Term::Tuple(items) | Term::List(items) if items.len() == len => {
                visit_items(items, 0, visitor)
            }
            Term::Binary(b) if b.len() == len => visit_bytes_as_seq(b, visitor),
            _ => Err(self.expected(format_args!("a tuple of {len} elements"))),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TermError> {
        match self.term {
            Term::Tuple(items) | Term::List(items) if items.len() == len => {
                visit_items(items, 0, visitor)
            }
            _ => Err(self.expected(format_args!("a tuple of {len} elements for {name}"))),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Map(entries) => visit_entries(entries, visitor),
            _ => Err(self.expected("a map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TermError> {
        match self.term {
            Term::Map(entries) => visit_entries(entries, visitor),
            _ => Err(self.expected(format_args!("a map for struct {name}"))),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TermError> {
        if name == TERM_ENUM {
            return visitor.visit_enum(RawTerm(self.term));
        }
        let (tag, payload) = match self.term {
            Term::Atom(tag) => (tag, None),
            Term::Tuple(items) => match items.split_first() {
                Some((Term::Atom(tag), rest)) => (tag, Some(rest)),
                _ => return Err(self.not_an_enum(name)),
            },
            _ => return Err(self.not_an_enum(name)),
        };
        visitor.visit_enum(Variant {
            tag,
            payload,
            whole: self.term,
        })
    }

    /// Struct field names: an atom or a binary; any other key is shown as Erlang text
    /// (unknown to any struct, so ignored or refused as an unknown field).
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        match self.term {
            Term::Atom(a) => visitor.visit_borrowed_str(a.as_str()),
            Term::Binary(b) => match std::str::from_utf8(b) {
                Ok(text) => visitor.visit_borrowed_str(text),
                Err(_) => visitor.visit_borrowed_bytes(b),
            },
            other => visitor.visit_string(snippet(other, SNIPPET_CHARS)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TermError> {
        visitor.visit_unit()
    }
}

/// The elements of a list or tuple, for a visitor.
#[derive(Debug)]
struct Items<'de> {
    iter: std::slice::Iter<'de, Term>,
    /// The path index of the next element.
    index: usize,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = TermError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TermError> {
        let Some(item) = self.iter.next() else {
            return Ok(None);
        };
        let i = self.index;
        self.index += 1;
        seed.deserialize(TermDeserializer::new(item))
            .map(Some)
            .map_err(|e| e.in_term(item).at(format!("[{i}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// The entries of a map, for a visitor.
#[derive(Debug)]
struct Entries<'de> {
    iter: std::slice::Iter<'de, (Term, Term)>,
    /// The entry whose key was just read.
    value: Option<&'de (Term, Term)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = TermError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TermError> {
        let Some(entry) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        seed.deserialize(TermDeserializer::new(&entry.0)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TermError> {
        let (key, value) = self
            .value
            .take()
            .ok_or_else(|| TermError::new("a map value was read before its key"))?;
        seed.deserialize(TermDeserializer::new(value))
            .map_err(|e| e.in_term(value).at(key_step(key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An enum value: an atom `tag`, or a tuple `{tag, ...payload}`.
#[derive(Debug)]
struct Variant<'de> {
    tag: &'de Atom,
    /// The elements after the tag; `None` for a bare atom.
    payload: Option<&'de [Term]>,
    whole: &'de Term,
}

impl<'de> EnumAccess<'de> for Variant<'de> {
    type Error = TermError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TermError> {
        let tag = BorrowedStrDeserializer::<TermError>::new(self.tag.as_str());
        Ok((seed.deserialize(tag)?, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'de> {
    type Error = TermError;

    fn unit_variant(self) -> Result<(), TermError> {
        match self.payload {
            None => Ok(()),
            Some(_) => Err(TermError::expected(
                format_args!("the atom {}", self.tag),
                self.whole,
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TermError> {
        match self.payload {
            Some([value]) => seed
                .deserialize(TermDeserializer::new(value))
                .map_err(|e| e.in_term(value).at("[1]")),
            _ => Err(TermError::expected(
                format_args!("{{{}, _}}", self.tag),
                self.whole,
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TermError> {
        match self.payload {
            Some(items) if items.len() == len => visit_items(items, 1, visitor),
            _ => Err(TermError::expected(
                format_args!("{{{}{}}}", self.tag, ", _".repeat(len)),
                self.whole,
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TermError> {
        match self.payload {
            Some([map @ Term::Map(entries)]) => {
                visit_entries(entries, visitor).map_err(|e| e.in_term(map).at("[1]"))
            }
            _ => Err(TermError::expected(
                format_args!("{{{}, #{{...}}}}", self.tag),
                self.whole,
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Term and Atom through serde.

/// Serializes a term as an externally tagged enum, `int`, `float`, `atom`, `binary`,
/// `list`, `tuple` or `map` (a map's payload being a sequence of pairs). [`to_term`]
/// recognises it and gives the term back unchanged; other formats get a lossless
/// representation, `{"tuple": [{"atom": "ok"}, {"int": 1}]}` in JSON.
impl Serialize for Term {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Term::Int(i) => s.serialize_newtype_variant(TERM_ENUM, 0, "int", i),
            Term::Float(f) => s.serialize_newtype_variant(TERM_ENUM, 1, "float", f),
            Term::Atom(a) => s.serialize_newtype_variant(TERM_ENUM, 2, "atom", a.as_str()),
            Term::Binary(b) => s.serialize_newtype_variant(TERM_ENUM, 3, "binary", &RawBytes(b)),
            Term::List(items) => s.serialize_newtype_variant(TERM_ENUM, 4, "list", &items[..]),
            Term::Tuple(items) => s.serialize_newtype_variant(TERM_ENUM, 5, "tuple", &items[..]),
            Term::Map(entries) => s.serialize_newtype_variant(TERM_ENUM, 6, "map", &entries[..]),
        }
    }
}

/// Bytes that serialize with `serialize_bytes`.
#[derive(Debug)]
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Reads the representation `impl Serialize for Term` writes; [`from_term`] hands the
/// term over unchanged.
impl<'de> Deserialize<'de> for Term {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Term, D::Error> {
        d.deserialize_enum(TERM_ENUM, TERM_KINDS, TermVisitor)
    }
}

/// The variants of [`TERM_ENUM`].
#[derive(Deserialize)]
#[serde(variant_identifier, rename_all = "lowercase")]
enum Kind {
    Int,
    Float,
    Atom,
    Binary,
    List,
    Tuple,
    Map,
}

#[derive(Debug)]
struct TermVisitor;

impl<'de> Visitor<'de> for TermVisitor {
    type Value = Term;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an Erlang term")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Term, A::Error> {
        let (kind, v) = data.variant::<Kind>()?;
        Ok(match kind {
            Kind::Int => Term::Int(v.newtype_variant()?),
            Kind::Float => Term::Float(v.newtype_variant()?),
            Kind::Atom => Term::Atom(v.newtype_variant_seed(AtomVisitor)?),
            Kind::Binary => {
                Term::Binary(v.newtype_variant_seed(BytesVisitor::<Arc<[u8]>>(PhantomData))?)
            }
            Kind::List => list(v.newtype_variant()?),
            Kind::Tuple => Term::Tuple(v.newtype_variant::<Vec<Term>>()?.into()),
            Kind::Map => Term::map(v.newtype_variant::<Vec<(Term, Term)>>()?),
        })
    }
}

/// A term's variants as [`RawTerm`] hands them to [`TermVisitor`].
#[derive(Debug)]
struct RawTerm<'de>(&'de Term);

impl<'de> EnumAccess<'de> for RawTerm<'de> {
    type Error = TermError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TermError> {
        let kind = match self.0 {
            Term::Int(_) => "int",
            Term::Float(_) => "float",
            Term::Atom(_) => "atom",
            Term::Binary(_) => "binary",
            Term::List(_) => "list",
            Term::Tuple(_) => "tuple",
            Term::Map(_) => "map",
        };
        let kind = seed.deserialize(BorrowedStrDeserializer::<TermError>::new(kind))?;
        Ok((kind, self))
    }
}

impl<'de> VariantAccess<'de> for RawTerm<'de> {
    type Error = TermError;

    fn unit_variant(self) -> Result<(), TermError> {
        Err(TermError::new("a term is never a unit variant"))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TermError> {
        match self.0 {
            Term::Int(i) => {
                seed.deserialize(IntoDeserializer::<'de, TermError>::into_deserializer(*i))
            }
            Term::Float(f) => {
                seed.deserialize(IntoDeserializer::<'de, TermError>::into_deserializer(*f))
            }
            Term::Atom(a) => seed.deserialize(BorrowedStrDeserializer::new(a.as_str())),
            Term::Binary(b) => seed.deserialize(BorrowedBytesDeserializer::new(b)),
            Term::List(items) | Term::Tuple(items) => seed.deserialize(SeqDeserializer::new(
                items.iter().map(TermDeserializer::new),
            )),
            Term::Map(entries) => seed.deserialize(MapDeserializer::new(
                entries
                    .iter()
                    .map(|(k, v)| (TermDeserializer::new(k), TermDeserializer::new(v))),
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, TermError> {
        Err(TermError::new("a term is never a tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, TermError> {
        Err(TermError::new("a term is never a struct variant"))
    }
}

/// An atom writes as the atom; through other formats, as a string.
impl Serialize for Atom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(ATOM_TOKEN, self.as_str())
    }
}

/// An atom reads from an atom only; through other formats, from a string.
impl<'de> Deserialize<'de> for Atom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Atom, D::Error> {
        d.deserialize_newtype_struct(ATOM_TOKEN, AtomVisitor)
    }
}

#[derive(Debug)]
struct AtomVisitor;

impl<'de> Visitor<'de> for AtomVisitor {
    type Value = Atom;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an atom")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Atom, E> {
        Atom::new(v).ok_or_else(|| {
            E::custom(format_args!(
                "an atom has at most {} characters",
                Atom::MAX_CHARS
            ))
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Atom, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> DeserializeSeed<'de> for AtomVisitor {
    type Value = Atom;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Atom, D::Error> {
        d.deserialize_str(self)
    }
}

/// Reads bytes (or a sequence of bytes, as JSON writes them) into a `B`.
struct BytesVisitor<B>(PhantomData<B>);

impl<B> fmt::Debug for BytesVisitor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BytesVisitor")
    }
}

impl<'de, B: From<Vec<u8>> + for<'a> From<&'a [u8]>> Visitor<'de> for BytesVisitor<B> {
    type Value = B;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a binary")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<B, E> {
        Ok(B::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<B, E> {
        Ok(B::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<B, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(B::from(bytes))
    }
}

impl<'de, B: From<Vec<u8>> + for<'a> From<&'a [u8]>> DeserializeSeed<'de> for BytesVisitor<B> {
    type Value = B;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<B, D::Error> {
        d.deserialize_byte_buf(self)
    }
}

/// `#[serde(with = "lib_chan_protocol::serde_term::charlist")]`: a `String` field written
/// as an Erlang charlist, `"text"`, instead of a binary.
pub mod charlist {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `text` as a list of its code points.
    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(text.chars().map(u32::from))
    }

    /// Reads a string as `String` does: a charlist, a UTF-8 binary or an atom.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }
}

/// `#[serde(with = "lib_chan_protocol::serde_term::binary")]`: a `Vec<u8>` field written
/// as an Erlang binary, `<<1,2,3>>`, instead of a list of integers.
pub mod binary {
    use std::marker::PhantomData;

    use serde::{Deserializer, Serializer};

    /// Writes `bytes` as a binary.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Reads a binary, or a list of integers 0..255.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(super::BytesVisitor::<Vec<u8>>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{parse, term};

    fn p(text: &str) -> Term {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// `value` writes as the Erlang `text`, and reads back from it as itself.
    #[track_caller]
    fn row<T>(value: T, text: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        let expected = p(text);
        assert_eq!(to_term(&value).unwrap(), expected, "{value:?} -> {text}");
        assert_eq!(
            from_term::<T>(&expected).unwrap(),
            value,
            "{text} -> {value:?}"
        );
    }

    /// `text` reads as `value` (a one-way, lenient reading).
    #[track_caller]
    fn reads<T>(text: &str, value: T)
    where
        T: DeserializeOwned + PartialEq + fmt::Debug,
    {
        assert_eq!(from_term::<T>(&p(text)).unwrap(), value, "{text}");
    }

    #[track_caller]
    fn read_error<T: DeserializeOwned + fmt::Debug>(text: &str) -> String {
        match from_term::<T>(&p(text)) {
            Ok(v) => panic!("{text} read as {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn write_error<T: Serialize + ?Sized>(value: &T) -> String {
        match to_term(value) {
            Ok(t) => panic!("wrote {t}"),
            Err(e) => e.to_string(),
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Request {
        Store(Term, Term),
        Lookup(Term),
    }

    #[test]
    fn the_issue_example_is_a_tagged_tuple() {
        let store = Request::Store(term!(joe), term!("writing a book"));
        let t = to_term(&store).unwrap();
        assert_eq!(t, p(r#"{store, joe, "writing a book"}"#));
        assert_eq!(t.to_string(), r#"{store,joe,"writing a book"}"#);
        assert_eq!(from_term::<Request>(&t).unwrap(), store);
        row(Request::Lookup(term!(joe)), "{lookup, joe}");
    }

    #[test]
    fn the_module_example_runs() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Request {
            Store(Term, Term),
            Lookup(Term),
            Names,
        }
        let wire = parse(r#"{store, joe, "writing a book"}"#).unwrap();
        let request: Request = from_term(&wire).unwrap();
        assert_eq!(
            request,
            Request::Store(Term::atom("joe"), Term::string("writing a book"))
        );
        assert_eq!(to_term(&request).unwrap(), wire);
        assert_eq!(to_term(&Request::Names).unwrap(), Term::atom("names"));
    }

    #[test]
    fn integers() {
        row(-5i8, "-5");
        row(200u8, "200");
        row(65_535u16, "65535");
        row(i32::MIN, "-2147483648");
        row(u32::MAX, "4294967295");
        row(i64::MIN, "-9223372036854775808");
        row(i64::MAX as u64, "9223372036854775807");
        row(-7i128, "-7");
        row(7u128, "7");
        assert_eq!(
            write_error(&u64::MAX),
            "the integer 18446744073709551615 is outside the signed 64-bit range of the protocol"
        );
        assert!(to_term(&(i128::from(i64::MIN) - 1)).is_err());
        assert_eq!(
            read_error::<u8>("300"),
            "invalid value: integer `300`, expected u8"
        );
        assert_eq!(
            read_error::<u64>("-1"),
            "invalid value: integer `-1`, expected u64"
        );
        assert_eq!(read_error::<i64>("1.0"), "expected an integer, found 1.0");
        assert_eq!(
            read_error::<i64>(r#""1""#),
            r#"expected an integer, found "1""#
        );
    }

    #[test]
    fn floats() {
        row(1.5f64, "1.5");
        row(-0.25f32, "-0.25");
        row(-0.0f64, "-0.0");
        reads("2", 2.0f64);
        reads("-3", -3.0f32);
        assert_eq!(
            write_error(&f64::NAN),
            "the float NaN has no Erlang term (floats are finite)"
        );
        assert!(to_term(&f64::INFINITY).is_err());
        assert!(to_term(&f32::NEG_INFINITY).is_err());
        assert_eq!(read_error::<f64>("one"), "expected a number, found one");
    }

    #[test]
    fn booleans_are_atoms() {
        row(true, "true");
        row(false, "false");
        assert_eq!(read_error::<bool>("1"), "expected true or false, found 1");
        assert_eq!(
            read_error::<bool>("'True'"),
            "expected true or false, found 'True'"
        );
    }

    #[test]
    fn chars_are_code_points() {
        row('a', "97");
        row('é', "233");
        row('😀', "128512");
        reads(r#""x""#, 'x');
        reads(r#"<<"y">>"#, 'y');
        assert_eq!(
            read_error::<char>("55296"),
            "expected a character (a Unicode code point), found 55296"
        );
        assert_eq!(
            read_error::<char>("-1"),
            "expected a character (a Unicode code point), found -1"
        );
    }

    #[test]
    fn strings_are_binaries_and_read_from_charlists_and_atoms() {
        row("writing a book".to_string(), r#"<<"writing a book">>"#);
        row(String::new(), "<<>>");
        row("é😀".to_string(), r#"<<"é😀"/utf8>>"#);
        assert_eq!(to_term("joe").unwrap(), Term::binary("joe"));
        reads(r#""writing a book""#, "writing a book".to_string());
        reads("[]", String::new());
        reads(r#""é😀""#, "é😀".to_string());
        reads("joe", "joe".to_string());
        reads("'hello world'", "hello world".to_string());
        assert_eq!(
            read_error::<String>("42"),
            "expected a string (a UTF-8 binary, a charlist or an atom), found 42"
        );
        assert_eq!(
            read_error::<String>("[1, -1]"),
            "expected a string (a UTF-8 binary, a charlist or an atom), found [1,-1]"
        );
        assert_eq!(
            read_error::<String>("<<200, 1>>"),
            "expected a string (this binary is not UTF-8), found <<200,1>>"
        );
    }

    #[test]
    fn strings_borrow_from_binaries_and_atoms() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Borrowed<'a> {
            name: &'a str,
            nick: &'a str,
            #[serde(borrow)]
            data: &'a [u8],
        }
        let t = p(r#"#{name => <<"joe">>, nick => jo, data => <<1,2,3>>}"#);
        let b: Borrowed<'_> = from_term_borrowed(&t).unwrap();
        assert_eq!(
            b,
            Borrowed {
                name: "joe",
                nick: "jo",
                data: &[1, 2, 3]
            }
        );
        // A charlist has no UTF-8 text to borrow.
        let t = p(r#"#{name => "joe", nick => jo, data => <<>>}"#);
        let e = from_term_borrowed::<Borrowed<'_>>(&t).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"at .name: invalid type: string "joe", expected a borrowed string"#
        );
    }

    #[test]
    fn undefined_is_none_and_unit() {
        row(None::<i64>, "undefined");
        row(Some(3i64), "3");
        row(Some("x".to_string()), r#"<<"x">>"#);
        row(vec![Some(1i64), None], "[1, undefined]");
        row((), "undefined");
        assert_eq!(read_error::<()>("ok"), "expected undefined, found ok");
        // Some(x) where x itself is undefined comes back as None: the documented collapse.
        assert_eq!(to_term(&Some(())).unwrap(), term!(undefined));
        assert_eq!(from_term::<Option<()>>(&term!(undefined)).unwrap(), None);
    }

    #[test]
    fn bytes_are_binaries_with_the_helper_and_lists_without() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Blob {
            #[serde(with = "super::binary")]
            data: Vec<u8>,
            raw: Vec<u8>,
        }
        row(
            Blob {
                data: vec![1, 2, 255],
                raw: vec![1, 2],
            },
            "#{data => <<1,2,255>>, raw => [1,2]}",
        );
        // Either reads from either.
        reads(
            "#{data => [7], raw => <<8, 9>>}",
            Blob {
                data: vec![7],
                raw: vec![8, 9],
            },
        );
        assert_eq!(
            read_error::<Blob>("#{data => [256], raw => []}"),
            "at .data: expected a binary, found [256]"
        );
    }

    #[test]
    fn sequences_are_lists() {
        row(vec![1i64, 2, 3], "[1, 2, 3]");
        row(Vec::<i64>::new(), "[]");
        row(vec!["a".to_string()], r#"[<<"a">>]"#);
        row(std::collections::BTreeSet::from([3i64, 1]), "[1, 3]");
        row(vec![vec![1i64], vec![]], "[[1], []]");
        assert_eq!(
            read_error::<Vec<i64>>("{1, 2}"),
            "expected a list, found {1,2}"
        );
        assert_eq!(
            read_error::<Vec<i64>>("[1, x, 3]"),
            "at [1]: expected an integer, found x"
        );
    }

    #[test]
    fn tuples_and_arrays_are_tuples() {
        row((1i64, "a".to_string(), true), r#"{1, <<"a">>, true}"#);
        row((), "undefined");
        row([1u8, 2, 3], "{1, 2, 3}");
        reads("[1, 2, 3]", [1u8, 2, 3]);
        reads("<<1, 2, 3>>", [1u8, 2, 3]);
        reads("[x, 1]", ("x".to_string(), 1i64));
        assert_eq!(
            read_error::<(i64, i64)>("{1, 2, 3}"),
            "expected a tuple of 2 elements, found {1,2,3}"
        );
        assert_eq!(
            read_error::<(i64, i64)>("{1, x}"),
            "at [1]: expected an integer, found x"
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename = "pong")]
    struct Pong;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Id(u32);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(i64, String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i64,
        y: i64,
    }

    #[test]
    fn unit_newtype_and_tuple_structs() {
        row(Ping, "'Ping'");
        row(Pong, "pong");
        assert_eq!(
            read_error::<Pong>("ping"),
            "expected the atom pong, found ping"
        );
        assert_eq!(
            read_error::<Ping>("ping"),
            "expected the atom 'Ping', found ping"
        );
        row(Id(7), "7");
        row(Pair(1, "one".to_string()), r#"{1, <<"one">>}"#);
        assert_eq!(
            read_error::<Pair>("{1}"),
            "expected a tuple of 2 elements for Pair, found {1}"
        );
    }

    #[test]
    fn structs_are_maps_with_atom_keys() {
        row(Point { x: 1, y: -2 }, "#{x => 1, y => -2}");
        // Binary keys, extra keys, and any key order.
        reads(r#"#{<<"y">> => 2, x => 1, z => 3}"#, Point { x: 1, y: 2 });
        assert_eq!(
            read_error::<Point>("#{x => 1}"),
            "missing field `y` in #{x => 1}"
        );
        assert_eq!(
            read_error::<Point>("{1, 2}"),
            "expected a map for struct Point, found {1,2}"
        );
        assert_eq!(
            read_error::<Point>("#{x => 1, y => foo}"),
            "at .y: expected an integer, found foo"
        );

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            a: i64,
            b: Option<i64>,
        }
        row(Strict { a: 1, b: None }, "#{a => 1, b => undefined}");
        reads("#{a => 1}", Strict { a: 1, b: None });
        assert_eq!(
            read_error::<Strict>("#{a => 1, c => 2}"),
            "unknown field `c`, expected `a` or `b` in #{a => 1,c => 2}"
        );
        // A key no struct field can be is an unknown field, not a crash.
        assert_eq!(
            read_error::<Strict>("#{a => 1, {k} => 2}"),
            "unknown field `{k}`, expected `a` or `b` in #{a => 1,{k} => 2}"
        );
        // Keys that are not atoms nor binaries are unknown fields: ignored.
        reads("#{x => 0, y => 2, 7 => z, [x] => 1}", Point { x: 0, y: 2 });
    }

    #[test]
    fn maps_are_maps() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), 1i64);
        m.insert("b".to_string(), 2);
        row(m.clone(), r#"#{<<"a">> => 1, <<"b">> => 2}"#);
        reads("#{a => 1, b => 2}", m);
        let h: HashMap<i64, Vec<bool>> = HashMap::from([(1, vec![true]), (2, vec![])]);
        row(h, "#{1 => [true], 2 => []}");
        row(BTreeMap::<i64, i64>::new(), "#{}");
        assert_eq!(
            read_error::<HashMap<i64, i64>>("#{a => 1}"),
            "expected an integer, found a"
        );
        assert_eq!(
            read_error::<HashMap<i64, i64>>("#{1 => a}"),
            "at [1]: expected an integer, found a"
        );
        assert_eq!(
            read_error::<HashMap<String, i64>>("#{k => a}"),
            "at .k: expected an integer, found a"
        );
        // Keys that meet: the last wins, as in maps:from_list/1.
        let pairs = PairsAsMap(vec![(1, 1), (1, 2)]);
        assert_eq!(to_term(&pairs).unwrap(), p("#{1 => 2}"));
    }

    /// Serializes as a map with possibly repeated keys.
    #[derive(Debug)]
    struct PairsAsMap(Vec<(i64, i64)>);

    impl Serialize for PairsAsMap {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize, Clone)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Dot,
        Circle(f64),
        Rect(i64, i64),
        Labelled {
            name: String,
            tags: Vec<String>,
        },
        Nothing(),
        #[serde(rename = "Weird Name")]
        Weird,
        Nested(Option<Box<Shape>>),
    }

    #[test]
    fn enums_are_atoms_and_tagged_tuples() {
        row(Shape::Dot, "dot");
        row(Shape::Circle(1.5), "{circle, 1.5}");
        row(Shape::Rect(2, 3), "{rect, 2, 3}");
        row(
            Shape::Labelled {
                name: "box".to_string(),
                tags: vec!["a".to_string()],
            },
            r#"{labelled, #{name => <<"box">>, tags => [<<"a">>]}}"#,
        );
        row(Shape::Nothing(), "{nothing}");
        row(Shape::Weird, "'Weird Name'");
        row(Shape::Nested(None), "{nested, undefined}");
        row(
            Shape::Nested(Some(Box::new(Shape::Rect(1, 1)))),
            "{nested, {rect, 1, 1}}",
        );
        reads(
            r#"{labelled, #{name => "box", tags => [a, "b"]}}"#,
            Shape::Labelled {
                name: "box".to_string(),
                tags: vec!["a".to_string(), "b".to_string()],
            },
        );
        reads("{circle, 2}", Shape::Circle(2.0));
    }

    #[test]
    fn enum_errors_say_what_was_expected() {
        assert_eq!(
            read_error::<Request>("{frob, 1}"),
            "unknown variant `frob`, expected `store` or `lookup` in {frob,1}"
        );
        assert_eq!(
            read_error::<Request>(r#"{store, joe}"#),
            "expected {store, _, _}, found {store,joe}"
        );
        assert_eq!(
            read_error::<Request>("lookup"),
            "expected {lookup, _}, found lookup"
        );
        assert_eq!(
            read_error::<Request>("42"),
            "expected enum Request: an atom or a tuple {Tag, ...}, found 42"
        );
        assert_eq!(
            read_error::<Request>(r#"{"store", k, v}"#),
            r#"expected enum Request: an atom or a tuple {Tag, ...}, found {"store",k,v}"#
        );
        assert_eq!(
            read_error::<Shape>("{dot}"),
            "expected the atom dot, found {dot}"
        );
        assert_eq!(
            read_error::<Shape>("{labelled, [a]}"),
            "expected {labelled, #{...}}, found {labelled,[a]}"
        );
        assert_eq!(
            read_error::<Shape>("{labelled, #{name => x}}"),
            "at [1]: missing field `tags` in #{name => x}"
        );
        assert_eq!(
            read_error::<Shape>("{rect, 1, x}"),
            "at [2]: expected an integer, found x"
        );
        assert_eq!(
            read_error::<Vec<Shape>>("[dot, {nested, {circle, x}}]"),
            "at [1][1][1]: expected a number, found x"
        );
        let long: Vec<Term> = (0..100).map(Term::Int).collect();
        let e = from_term::<Shape>(&Term::tuple([term!(frob), Term::list(long)])).unwrap_err();
        assert!(e.message().starts_with("unknown variant `frob`"), "{e}");
        assert!(e.message().ends_with("..."), "the snippet is cut: {e}");
        assert!(e.message().len() < 200, "{e}");
    }

    #[test]
    fn error_paths_go_down_structs_lists_and_variants() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Doc {
            shapes: Vec<Shape>,
        }
        let e = from_term::<Doc>(&p("#{shapes => [dot, {circle, x}]}")).unwrap_err();
        assert_eq!(e.path(), ".shapes[1][1]");
        assert_eq!(e.message(), "expected a number, found x");
        assert_eq!(
            e.to_string(),
            "at .shapes[1][1]: expected a number, found x"
        );

        let e = to_term(&Doc {
            shapes: vec![Shape::Dot, Shape::Circle(f64::NAN)],
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "at .shapes[1][1]: the float NaN has no Erlang term (floats are finite)"
        );
        let e = to_term(&Shape::Labelled {
            name: String::new(),
            tags: vec![],
        });
        assert!(e.is_ok());
        let e = to_term(&BTreeMap::from([("k", f64::INFINITY)])).unwrap_err();
        assert_eq!(e.path(), r#"[<<"k">>]"#);
    }

    /// A unit variant named at run time, to reach the atom length limit.
    #[derive(Debug)]
    struct NamedVariant(&'static str);

    impl Serialize for NamedVariant {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_unit_variant("E", 0, self.0)
        }
    }

    #[test]
    fn atoms_are_at_most_255_characters() {
        let ok: &'static str = Box::leak("é".repeat(255).into_boxed_str());
        assert_eq!(to_term(&NamedVariant(ok)).unwrap(), Term::atom(ok));
        let long: &'static str = Box::leak("a".repeat(256).into_boxed_str());
        assert_eq!(
            write_error(&NamedVariant(long)),
            "the atom aaaaaaaaaaaaaaaaaaaaaaaa... has more than 255 characters"
        );
    }

    #[test]
    fn term_fields_pass_through_unchanged() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Entry {
            key: Term,
            value: Term,
            owner: Option<Term>,
            kind: Atom,
        }
        let text = r#"#{key => {joe, "x", <<1>>, [], #{1 => 1.0, a => [b]}}, value => [1, 2.5, 'A b', <<"bin">>, {}], owner => undefined, kind => store}"#;
        let entry: Entry = from_term(&p(text)).unwrap();
        assert_eq!(
            entry.key,
            p(r#"{joe, "x", <<1>>, [], #{1 => 1.0, a => [b]}}"#)
        );
        assert_eq!(entry.value, p(r#"[1, 2.5, 'A b', <<"bin">>, {}]"#));
        assert_eq!(entry.owner, None);
        assert_eq!(entry.kind.as_str(), "store");
        assert_eq!(to_term(&entry).unwrap(), p(text));
        row(Some(term!({ a, [b] })), "{a, [b]}");
        row(vec![Term::nil(), Term::map([])], "[[], #{}]");
        assert_eq!(
            read_error::<Entry>(r#"#{key => 1, value => 2, kind => "store"}"#),
            r#"at .kind: expected an atom, found "store""#
        );
        // Terms as map keys.
        let m: BTreeMap<Term, i64> = from_term(&p("#{{a, 1} => 1, <<\"b\">> => 2}")).unwrap();
        assert_eq!(m[&p("{a, 1}")], 1);
        assert_eq!(to_term(&m).unwrap(), p("#{{a, 1} => 1, <<\"b\">> => 2}"));
    }

    #[test]
    fn the_charlist_helper_writes_charlists() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Greeting {
            #[serde(with = "super::charlist")]
            text: String,
        }
        row(
            Greeting {
                text: "hé".to_string(),
            },
            r#"#{text => "hé"}"#,
        );
        row(
            Greeting {
                text: String::new(),
            },
            "#{text => []}",
        );
        reads(
            r#"#{text => <<"b">>}"#,
            Greeting {
                text: "b".to_string(),
            },
        );
    }

    #[test]
    fn typed_values_read_from_erlang_text() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Person {
            name: String,
            age: u8,
            tags: Vec<String>,
            pos: (i64, i64),
            nick: Option<String>,
            score: f64,
            shape: Shape,
        }
        reads(
            r#"#{name => "Joe", age => 16#2A, tags => [<<"a">>, b, "c"], pos => {1, -2},
                 nick => undefined, score => 3, shape => {rect, 1, 2}, extra => [ignored]}"#,
            Person {
                name: "Joe".to_string(),
                age: 42,
                tags: vec!["a".to_string(), "b".to_string(), "c".to_string()],
                pos: (1, -2),
                nick: None,
                score: 3.0,
                shape: Shape::Rect(1, 2),
            },
        );
    }

    #[test]
    fn untagged_enums_read_through_the_self_describing_path() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        enum Loose {
            Flag(bool),
            Num(i64),
            Text(String),
            Items(Vec<i64>),
        }
        reads("true", Loose::Flag(true));
        reads("7", Loose::Num(7));
        reads("joe", Loose::Text("joe".to_string()));
        reads(r#"<<"joe">>"#, Loose::Text("joe".to_string()));
        reads("[1, 2]", Loose::Items(vec![1, 2]));
        assert_eq!(
            read_error::<Loose>("#{}"),
            "data did not match any variant of untagged enum Loose in #{}"
        );
    }

    #[test]
    fn terms_as_deep_as_the_decoder_allows_pass_through() {
        let mut t = Term::Int(1);
        for i in 0..crate::etf::MAX_DEPTH {
            t = if i % 2 == 0 {
                Term::list([t])
            } else {
                Term::map([(Term::atom("k"), t)])
            };
        }
        assert_eq!(to_term(&t).unwrap(), t);
        assert_eq!(from_term::<Term>(&t).unwrap(), t);
    }

    #[test]
    fn term_fields_inside_flatten_and_untagged_are_errors_not_crashes() {
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Loose {
            Raw(Term),
        }
        assert!(from_term::<Loose>(&p("{a, 1}")).is_err());
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            #[serde(flatten)]
            inner: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            key: Term,
        }
        assert!(from_term::<Outer>(&p("#{key => 1}")).is_err());
        // Flattened fields without a Term read, from atom or binary keys, and write
        // binary keys.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Flat {
            a: i64,
            #[serde(flatten)]
            rest: Point,
        }
        let flat = Flat {
            a: 1,
            rest: Point { x: 2, y: 3 },
        };
        assert_eq!(
            to_term(&flat).unwrap(),
            p(r#"#{<<"a">> => 1, <<"x">> => 2, <<"y">> => 3}"#)
        );
        reads("#{a => 1, x => 2, y => 3}", flat);
    }

    fn arb_atom() -> impl Strategy<Value = Term> {
        prop_oneof![
            "[a-z][a-zA-Z0-9_@]{0,8}",
            "[A-Z ][a-z é]{0,5}",
            Just("undefined".to_string()),
            Just("true".to_string()),
        ]
        .prop_map(|s| Term::atom(&s))
    }

    fn arb_term() -> impl Strategy<Value = Term> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Term::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Term::Float),
            arb_atom(),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Term::binary),
            "[a-z]{0,5}".prop_map(|s| Term::string(&s)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::list),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::tuple),
                proptest::collection::vec((inner.clone(), inner), 0..5).prop_map(Term::map),
            ]
        })
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Dot),
            Just(Shape::Nothing()),
            Just(Shape::Weird),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Shape::Circle),
            (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Shape::Rect(a, b)),
            (
                any::<String>(),
                proptest::collection::vec(any::<String>(), 0..3)
            )
                .prop_map(|(name, tags)| Shape::Labelled { name, tags }),
        ];
        leaf.prop_recursive(3, 8, 1, |inner| {
            proptest::option::of(inner).prop_map(|s| Shape::Nested(s.map(Box::new)))
        })
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        id: u32,
        title: String,
        shapes: Vec<Shape>,
        extra: Option<BTreeMap<String, i64>>,
        pair: (bool, char),
        key: Term,
        small: Vec<u8>,
        #[serde(with = "super::binary")]
        blob: Vec<u8>,
    }

    fn arb_doc() -> impl Strategy<Value = Doc> {
        (
            any::<u32>(),
            any::<String>(),
            proptest::collection::vec(arb_shape(), 0..4),
            proptest::option::of(proptest::collection::btree_map(
                any::<String>(),
                any::<i64>(),
                0..4,
            )),
            (any::<bool>(), any::<char>()),
            arb_term(),
            proptest::collection::vec(any::<u8>(), 0..6),
            proptest::collection::vec(any::<u8>(), 0..6),
        )
            .prop_map(|(id, title, shapes, extra, pair, key, small, blob)| Doc {
                id,
                title,
                shapes,
                extra,
                pair,
                key,
                small,
                blob,
            })
    }

    proptest! {
        #[test]
        fn any_term_passes_through(t in arb_term()) {
            prop_assert_eq!(&to_term(&t).unwrap(), &t);
            prop_assert_eq!(&from_term::<Term>(&t).unwrap(), &t);
            let wrapped = Term::map([(Term::atom("key"), t.clone())]);
            #[derive(Debug, Serialize, Deserialize)]
            struct S { key: Term }
            let s: S = from_term(&wrapped).unwrap();
            prop_assert_eq!(&s.key, &t);
            prop_assert_eq!(to_term(&s).unwrap(), wrapped);
        }

        #[test]
        fn nested_values_round_trip(doc in arb_doc()) {
            let t = to_term(&doc).unwrap();
            prop_assert_eq!(from_term::<Doc>(&t).unwrap(), doc);
            // And through the wire format and the text syntax.
            let decoded = crate::decode(&crate::encode(&t).unwrap()).unwrap();
            prop_assert_eq!(&decoded, &t);
            prop_assert_eq!(&parse(&t.to_string()).unwrap(), &t);
        }

        #[test]
        fn tuples_of_scalars_round_trip(
            v in proptest::collection::vec(
                (any::<i64>(), any::<Option<u16>>(), any::<String>(), any::<char>()),
                0..5,
            )
        ) {
            let t = to_term(&v).unwrap();
            prop_assert_eq!(from_term::<Vec<(i64, Option<u16>, String, char)>>(&t).unwrap(), v);
        }
    }
}
