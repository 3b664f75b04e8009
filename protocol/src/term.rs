//! The Erlang term: the one data type that crosses the wire.
//!
//! [`Term`] covers what a lib_chan peer may send (PROTOCOL.md section 3): integers
//! (signed 64-bit), finite floats, atoms, binaries, lists, tuples and maps. Compound
//! terms are reference counted, so a clone is a pointer copy. Equality and hashing are
//! Erlang's exact equality `=:=` (`1` and `1.0` differ; a map is equal to another with
//! the same entries whatever order they were inserted in), and [`Ord`] is Erlang's term
//! order: number < atom < tuple < map < list < binary.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// An Erlang atom, such as `ok` or `'hello world'`.
///
/// At most [`Atom::MAX_CHARS`] characters, as in Erlang.
#[derive(Clone)]
pub struct Atom(AtomText);

/// Where an atom's text lives. The common atoms point into a static table, so that
/// making, cloning and dropping one touches no shared reference count: a count shared
/// by every connection on every core would bounce between the cores' caches on each
/// request. Other atoms own their text. Both variants fit in 16 bytes, so a [`Term`]
/// stays 24.
#[derive(Clone)]
enum AtomText {
    Common(&'static &'static str),
    Owned(Arc<str>),
}

impl PartialEq for Atom {
    fn eq(&self, other: &Atom) -> bool {
        match (&self.0, &other.0) {
            // The table holds each name once: the same entry or different text.
            (AtomText::Common(a), AtomText::Common(b)) => std::ptr::eq(*a, *b),
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for Atom {}

impl Hash for Atom {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Atom) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Atom) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Atom {
    /// The longest atom Erlang accepts, in characters.
    pub const MAX_CHARS: usize = 255;

    /// Makes an atom, or `None` when `name` has more than [`Atom::MAX_CHARS`] characters.
    ///
    /// The atoms of the protocol and the built-in services are interned: making one
    /// clones a shared pointer instead of allocating.
    pub fn new(name: &str) -> Option<Atom> {
        if let Some(i) = common_atom_index(name) {
            return Some(Atom(AtomText::Common(&COMMON_ATOMS[i])));
        }
        if name.len() > Self::MAX_CHARS && name.chars().count() > Self::MAX_CHARS {
            return None;
        }
        Some(Atom(AtomText::Owned(Arc::from(name))))
    }

    /// The atom's text, without quotes.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            AtomText::Common(text) => text,
            AtomText::Owned(text) => text,
        }
    }
}

/// Atoms common enough on the hot path to be made without an allocation or a shared
/// reference count.
static COMMON_ATOMS: [&str; 24] = [
    "ok",
    "error",
    "true",
    "false",
    "undefined",
    "call",
    "reply",
    "send",
    "ping",
    "pong",
    "close",
    "start_service",
    "store",
    "lookup",
    "delete",
    "names",
    "watch",
    "unwatch",
    "changed",
    "no_reply",
    "busy",
    "key",
    "msg",
    "apply",
];

/// The index of `name` in [`COMMON_ATOMS`]: a `match`, which compiles to a switch on the
/// length and a few comparisons, not a scan.
fn common_atom_index(name: &str) -> Option<usize> {
    Some(match name {
        "ok" => 0,
        "error" => 1,
        "true" => 2,
        "false" => 3,
        "undefined" => 4,
        "call" => 5,
        "reply" => 6,
        "send" => 7,
        "ping" => 8,
        "pong" => 9,
        "close" => 10,
        "start_service" => 11,
        "store" => 12,
        "lookup" => 13,
        "delete" => 14,
        "names" => 15,
        "watch" => 16,
        "unwatch" => 17,
        "changed" => 18,
        "no_reply" => 19,
        "busy" => 20,
        "key" => 21,
        "msg" => 22,
        "apply" => 23,
        _ => return None,
    })
}

impl fmt::Debug for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::text::write_atom(f, self.as_str())
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::text::write_atom(f, self.as_str())
    }
}

/// An Erlang term.
///
/// Build one from Rust with the `From` impls and the small constructors:
///
/// ```
/// use lib_chan_protocol::{Term, term};
/// let t = term!({store, joe, "writing a book"});
/// assert_eq!(t, Term::tuple([Term::atom("store"), Term::atom("joe"), Term::string("writing a book")]));
/// assert_eq!(t.to_string(), r#"{store,joe,"writing a book"}"#);
/// ```
#[derive(Clone)]
pub enum Term {
    /// An integer; Erlang integers beyond signed 64 bits are not part of the protocol.
    Int(i64),
    /// A finite float (NaN and the infinities cannot be sent).
    Float(f64),
    /// An atom.
    Atom(Atom),
    /// A binary, `<<"bytes">>`.
    Binary(Arc<[u8]>),
    /// A proper list; an empty one is `[]` (nil). Strings are lists of integers.
    List(Arc<[Term]>),
    /// A tuple.
    Tuple(Arc<[Term]>),
    /// A map: entries sorted by key in term order, no key twice (see [`Term::map`]).
    Map(Arc<[(Term, Term)]>),
}

impl Term {
    /// The atom `name`.
    ///
    /// # Panics
    /// When `name` has more than 255 characters; use [`Atom::new`] for untrusted text.
    pub fn atom(name: &str) -> Term {
        Term::Atom(Atom::new(name).expect("atom longer than 255 characters"))
    }

    /// A charlist, Erlang's `"text"`: a list of the code points of `text`.
    pub fn string(text: &str) -> Term {
        Term::List(text.chars().map(|c| Term::Int(c as i64)).collect())
    }

    /// A binary holding `bytes`.
    pub fn binary(bytes: impl AsRef<[u8]>) -> Term {
        Term::Binary(Arc::from(bytes.as_ref()))
    }

    /// A tuple of `items`.
    pub fn tuple(items: impl IntoIterator<Item = Term>) -> Term {
        Term::Tuple(items.into_iter().collect())
    }

    /// A list of `items`.
    pub fn list(items: impl IntoIterator<Item = Term>) -> Term {
        Term::List(items.into_iter().collect())
    }

    /// The empty list `[]`.
    pub fn nil() -> Term {
        // One shared empty slice: `[]` is common (every proper list's tail in ETF, most
        // ArgsC) and should cost no allocation.
        static NIL: std::sync::LazyLock<Arc<[Term]>> =
            std::sync::LazyLock::new(|| Arc::from(Vec::new()));
        Term::List(Arc::clone(&NIL))
    }

    /// A map of `entries`; when a key is given twice the last value wins, as in Erlang's
    /// `maps:from_list/1`.
    pub fn map(entries: impl IntoIterator<Item = (Term, Term)>) -> Term {
        let mut v: Vec<(Term, Term)> = entries.into_iter().collect();
        // A stable sort keeps insertion order among equal keys, so the last one wins below.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Term, Term)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        Term::Map(out.into())
    }

    /// `true` or `false` as an atom.
    pub fn boolean(b: bool) -> Term {
        Term::atom(if b { "true" } else { "false" })
    }

    /// The atom's text when this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a.as_str()),
            _ => None,
        }
    }

    /// `true` when this is the atom `name`.
    pub fn is_atom(&self, name: &str) -> bool {
        self.as_atom() == Some(name)
    }

    /// The integer when this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Term::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements when this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// The elements when this is a list.
    pub fn as_list(&self) -> Option<&[Term]> {
        match self {
            Term::List(l) => Some(l),
            _ => None,
        }
    }

    /// The bytes when this is a binary.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Term::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// The entries, sorted by key, when this is a map.
    pub fn as_map(&self) -> Option<&[(Term, Term)]> {
        match self {
            Term::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` when this is a map holding it.
    pub fn map_get(&self, key: &Term) -> Option<&Term> {
        let m = self.as_map()?;
        m.binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &m[i].1)
    }

    /// The text when this is a charlist of valid code points (Erlang's `"text"`).
    pub fn as_charlist(&self) -> Option<String> {
        self.as_list()?
            .iter()
            .map(|t| {
                t.as_int()
                    .and_then(|i| u32::try_from(i).ok())
                    .and_then(char::from_u32)
            })
            .collect()
    }

    /// The rank of this term's type in Erlang's term order.
    fn type_rank(&self) -> u8 {
        match self {
            Term::Int(_) | Term::Float(_) => 0,
            Term::Atom(_) => 1,
            Term::Tuple(_) => 2,
            Term::Map(_) => 3,
            Term::List(_) => 4,
            Term::Binary(_) => 5,
        }
    }
}

/// Compares an integer with a float by value, exactly (no rounding of the integer).
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = f.trunc() as i64;
    i.cmp(&whole).then_with(|| {
        0.0f64
            .partial_cmp(&(f - f.trunc()))
            .unwrap_or(Ordering::Equal)
    })
}

impl Ord for Term {
    /// Erlang's term order. Numbers compare by value; an integer and a float of the same
    /// value are ordered integer first (the order Erlang uses for map keys), so that the
    /// order stays total and agrees with exact equality.
    fn cmp(&self, other: &Term) -> Ordering {
        use Term::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Int(a), Float(b)) => cmp_int_float(*a, *b).then(Ordering::Less),
            (Float(a), Int(b)) => cmp_int_float(*b, *a).reverse().then(Ordering::Greater),
            (Atom(a), Atom(b)) => a.cmp(b),
            (Tuple(a), Tuple(b)) => a.len().cmp(&b.len()).then_with(|| a.iter().cmp(b.iter())),
            (Map(a), Map(b)) => a
                .len()
                .cmp(&b.len())
                .then_with(|| a.iter().map(|e| &e.0).cmp(b.iter().map(|e| &e.0)))
                .then_with(|| a.iter().map(|e| &e.1).cmp(b.iter().map(|e| &e.1))),
            (List(a), List(b)) => a.iter().cmp(b.iter()),
            (Binary(a), Binary(b)) => a.cmp(b),
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }
}

impl PartialOrd for Term {
    fn partial_cmp(&self, other: &Term) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Term {
    /// Erlang's exact equality `=:=`.
    fn eq(&self, other: &Term) -> bool {
        use Term::*;
        match (self, other) {
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Atom(a), Atom(b)) => a == b,
            (Binary(a), Binary(b)) => a == b,
            (List(a), List(b)) | (Tuple(a), Tuple(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Term {}

impl Hash for Term {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.type_rank() * 2 + matches!(self, Term::Float(_)) as u8);
        match self {
            Term::Int(i) => i.hash(state),
            Term::Float(f) => f.to_bits().hash(state),
            Term::Atom(a) => a.hash(state),
            Term::Binary(b) => b.hash(state),
            Term::List(l) | Term::Tuple(l) => l.hash(state),
            Term::Map(m) => m.hash(state),
        }
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<i64> for Term {
    fn from(i: i64) -> Term {
        Term::Int(i)
    }
}
impl From<i32> for Term {
    fn from(i: i32) -> Term {
        Term::Int(i.into())
    }
}
impl From<u32> for Term {
    fn from(i: u32) -> Term {
        Term::Int(i.into())
    }
}
impl From<f64> for Term {
    fn from(f: f64) -> Term {
        Term::Float(f)
    }
}
impl From<bool> for Term {
    fn from(b: bool) -> Term {
        Term::boolean(b)
    }
}
impl From<Atom> for Term {
    fn from(a: Atom) -> Term {
        Term::Atom(a)
    }
}
/// A Rust string becomes a charlist, as `"text"` does in Erlang.
impl From<&str> for Term {
    fn from(s: &str) -> Term {
        Term::string(s)
    }
}
/// A Rust string becomes a charlist, as `"text"` does in Erlang.
impl From<String> for Term {
    fn from(s: String) -> Term {
        Term::string(&s)
    }
}
impl From<Vec<Term>> for Term {
    fn from(v: Vec<Term>) -> Term {
        Term::List(v.into())
    }
}
impl From<&[u8]> for Term {
    fn from(b: &[u8]) -> Term {
        Term::binary(b)
    }
}

/// Builds a [`Term`] in Erlang-like syntax.
///
/// Bare identifiers are atoms, `{..}` tuples, `[..]` lists, string literals charlists,
/// and `(expr)` any Rust expression convertible with `Term::from`.
///
/// ```
/// use lib_chan_protocol::term;
/// let key = "joe";
/// let t = term!({lookup, (lib_chan_protocol::Term::atom(key)), 42, [a, "b"]});
/// assert_eq!(t.to_string(), r#"{lookup,joe,42,[a,"b"]}"#);
/// ```
#[macro_export]
macro_rules! term {
    ({ $($t:tt),* $(,)? }) => { $crate::Term::tuple([$($crate::term!($t)),*]) };
    ([ $($t:tt),* $(,)? ]) => { $crate::Term::list([$($crate::term!($t)),*]) };
    (( $e:expr )) => { $crate::Term::from($e) };
    ($a:ident) => { $crate::Term::atom(stringify!($a)) };
    ($l:literal) => { $crate::Term::from($l) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_equality_separates_int_and_float() {
        assert_ne!(Term::Int(1), Term::Float(1.0));
        assert_eq!(Term::Int(1).cmp(&Term::Float(1.0)), Ordering::Less);
        assert_eq!(Term::Float(1.5).cmp(&Term::Int(1)), Ordering::Greater);
        assert_eq!(Term::Float(0.5).cmp(&Term::Int(1)), Ordering::Less);
        assert_eq!(
            Term::Int(i64::MAX).cmp(&Term::Float(9.3e18)),
            Ordering::Less
        );
        assert_eq!(Term::Int(-3).cmp(&Term::Float(-2.5)), Ordering::Less);
    }

    #[test]
    fn term_order_follows_erlang() {
        let ordered = [
            Term::Int(5),
            Term::atom("a"),
            term!({ a }),
            Term::map([]),
            Term::nil(),
            term!([a]),
            Term::binary(b""),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
        }
        // Tuples order by size first.
        assert!(term!({ z }) < term!({ a, a }));
        // Lists order element-wise.
        assert!(term!([a, b]) < term!([b]));
    }

    #[test]
    fn maps_are_equal_whatever_the_insertion_order() {
        let a = Term::map([(term!(x), term!(1)), (term!(y), term!(2))]);
        let b = Term::map([(term!(y), term!(2)), (term!(x), term!(1))]);
        assert_eq!(a, b);
        let mut h1 = std::collections::hash_map::DefaultHasher::new();
        let mut h2 = std::collections::hash_map::DefaultHasher::new();
        a.hash(&mut h1);
        b.hash(&mut h2);
        assert_eq!(h1.finish(), h2.finish());
        assert_eq!(a.map_get(&term!(y)), Some(&term!(2)));
        // The last duplicate wins.
        let c = Term::map([(term!(x), term!(1)), (term!(x), term!(2))]);
        assert_eq!(c.as_map().unwrap().len(), 1);
        assert_eq!(c.map_get(&term!(x)), Some(&term!(2)));
    }

    #[test]
    fn the_common_atom_index_matches_the_table() {
        for (i, name) in COMMON_ATOMS.iter().enumerate() {
            assert_eq!(common_atom_index(name), Some(i), "{name}");
        }
        assert_eq!(common_atom_index("okay"), None);
    }

    #[test]
    fn common_atoms_point_into_the_table_and_others_own_their_text() {
        let a = Atom::new("reply").unwrap();
        assert!(matches!(a.0, AtomText::Common(text) if std::ptr::eq(text, &COMMON_ATOMS[6])));
        assert_eq!(a.as_str(), "reply");
        let c = Atom::new("uncommon").unwrap();
        assert!(matches!(&c.0, AtomText::Owned(text) if &**text == "uncommon"));
        // Where the text lives changes nothing a caller can see.
        let owned = Atom(AtomText::Owned(Arc::from("reply")));
        assert_eq!(a, owned);
        assert_eq!(a.cmp(&owned), Ordering::Equal);
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(
            std::hash::BuildHasher::hash_one(&state, &a),
            std::hash::BuildHasher::hash_one(&state, &owned)
        );
        assert!(Atom::new("ok").unwrap() < Atom::new("reply").unwrap());
        assert_ne!(Atom::new("ok").unwrap(), Atom::new("error").unwrap());
        assert_eq!(Atom::new("ok").unwrap(), Atom::new("ok").unwrap());
        assert_eq!(std::mem::size_of::<Term>(), 24);
    }

    #[test]
    fn atom_length_is_limited_in_characters() {
        assert!(Atom::new(&"é".repeat(255)).is_some());
        assert!(Atom::new(&"a".repeat(256)).is_none());
    }
}
