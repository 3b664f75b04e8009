"""Erlang External Term Format, the subset of PROTOCOL.md section 3, and ``{packet, 4}`` frames.

This is the codec of the lib_chan wire protocol: every frame payload is the version
byte 131 followed by one term. Only data crosses the wire (integers, floats, atoms,
binaries, lists, tuples, maps); pids, ports, references, funs, bit strings, compressed
terms and the atom cache are rejected, and so is anything malformed.

Python representation
=====================

=====================  ==========================  =====================================
Erlang                 Python (decode gives)       Python (encode also accepts)
=====================  ==========================  =====================================
integer                ``int``                     ``int`` (signed 64-bit only)
float                  ``float``                   ``float`` (finite only)
atom                   :class:`Atom` (a ``str``)   ``True``/``False`` (atoms true/false)
binary ``<<"..">>``    ``bytes``                   ``bytes``, ``bytearray``, ``memoryview``
charlist ``"..."``     ``str`` (STRING tag only)   ``str``: the list of its code points
list                   ``list``                    ``list``
tuple                  ``tuple``                   ``tuple``
map                    ``dict``                    ``dict``
(map key, see below)   :class:`Frozen`             :class:`Frozen` anywhere a term goes
=====================  ==========================  =====================================

* An :class:`Atom` is a ``str`` subclass that is *never* equal to a plain ``str``
  (``Atom("ok") != "ok"``), so atoms, charlists and binaries stay three distinct
  things as they are in Erlang. ``A.ok`` is shorthand for ``Atom("ok")``; ``TRUE``,
  ``FALSE`` and ``UNDEFINED`` are predefined. Decoding never produces ``bool``: the
  atom ``true`` decodes to ``Atom("true")`` (``== TRUE``), not to ``True``.
* Erlang strings are lists of integers. A Python ``str`` encodes as that list (the
  STRING tag when every code point is at most 255 and there are at most 65535 of
  them, as ``term_to_binary/1`` writes it), and a STRING tag decodes to a ``str``, so
  ``{ok, "writing a book"}`` round-trips as ``(A.ok, "writing a book")`` with the exact
  bytes. A LIST tag decodes to a ``list`` (of ints, for a string with code points above
  255): the same Erlang term, another Python value. ``""`` encodes as ``[]``.
* Map keys that Python cannot hash (lists, maps, tuples holding them) decode wrapped
  in :class:`Frozen`, whose equality is Erlang's exact equality (``=:=``); so are two
  keys that Python would confuse (``1`` and ``1.0``). Every other key is the plain
  decoded value. To build such a map, wrap the key yourself:
  ``{Frozen([1, 2]): A.x}``. :class:`Frozen` values encode as the term they wrap.
* Maps are encoded with their keys in Erlang's map key order (term order, but every
  integer before every float), as ``term_to_binary(T, [deterministic])`` writes them,
  so equal maps encode to equal bytes.
* ``None`` is not a term and is refused, as is anything else not in the table.

Limits (hostile input)
======================

:func:`decode` rejects trailing bytes, improper lists, unknown tags, duplicate map keys,
non-finite floats, integers beyond signed 64-bit, atoms over 255 characters or invalid
UTF-8, nesting deeper than :data:`MAX_DEPTH` (128, as the Rust codec; never a
``RecursionError``), and any element count larger than the bytes left, before
allocating anything for it. Errors are :class:`DecodeError` (a ``ValueError``) with the
byte offset. :func:`encode` refuses what the peer would not read back
(:class:`EncodeError`).

Frames
======

:func:`frame` makes one ``{packet, 4}`` frame of a term; :func:`read_frame` reads one
from a binary stream, checking the declared length against a limit before reading, and
reading the payload in chunks so that a declared length reserves nothing ahead of the
bytes that actually arrive.
"""

from __future__ import annotations

import math
import struct
from typing import Any, BinaryIO, Callable, Optional

__all__ = [
    "Atom", "A", "TRUE", "FALSE", "UNDEFINED", "Frozen",
    "DecodeError", "EncodeError", "FrameError",
    "encode", "decode", "term_order_key", "map_key_order", "format_term", "equal",
    "frame", "read_frame", "MAX_DEPTH", "VERSION", "DEFAULT_MAX_FRAME",
]

#: The version byte that starts every payload.
VERSION = 131
#: The deepest nesting accepted (and produced): elements at depth 128 are refused.
MAX_DEPTH = 128
#: The protocol's default maximum frame (1 MiB).
DEFAULT_MAX_FRAME = 1 << 20
#: Longest atom, in characters.
MAX_ATOM_CHARS = 255

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

# Tags accepted.
NEW_FLOAT = 70
SMALL_INTEGER = 97
INTEGER = 98
ATOM = 100
SMALL_TUPLE = 104
LARGE_TUPLE = 105
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
SMALL_ATOM = 115
MAP = 116
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119

# Tags that exist in ETF but are refused, named for the error message.
_REJECTED = {
    68: "distribution header",
    69: "distribution header fragment",
    77: "bit string (BIT_BINARY)",
    80: "compressed term",
    82: "atom cache reference",
    88: "pid (NEW_PID)",
    89: "port (NEW_PORT)",
    90: "reference (NEWER_REFERENCE)",
    99: "old float (FLOAT)",
    101: "reference (REFERENCE)",
    102: "port (PORT)",
    103: "pid (PID)",
    111: "big integer (LARGE_BIG)",
    112: "fun (NEW_FUN)",
    113: "export (EXPORT)",
    114: "reference (NEW_REFERENCE)",
    117: "fun (FUN)",
    120: "port (V4_PORT)",
    121: "local term (LOCAL)",
}


# ---------------------------------------------------------------------------------------
# The Python side of terms


class Atom(str):
    """An Erlang atom. A ``str`` (printing, slicing, ``.startswith`` work), but equal only
    to another :class:`Atom` with the same text: ``Atom("ok") != "ok"``."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Atom and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((Atom, str(self)))

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class _Atoms:
    """``A.name`` is ``Atom("name")``; ``A("with space")`` for any other text."""

    def __getattr__(self, name: str) -> Atom:
        if name.startswith("__"):
            raise AttributeError(name)
        return Atom(name)

    def __call__(self, text: str) -> Atom:
        return Atom(text)


#: Atom shorthand: ``A.ok``, ``A.lookup``, ``A("Quoted atom")``.
A = _Atoms()
TRUE = Atom("true")
FALSE = Atom("false")
UNDEFINED = Atom("undefined")


class Frozen:
    """A term made hashable, with Erlang's exact equality (``=:=``): the key of a map
    that Python could not use as a ``dict`` key (a list, a map, a tuple holding one), or
    that Python would confuse with another (``1`` and ``1.0``).

    ``Frozen([1, 2]) == Frozen([1, 2])``, ``Frozen("ab") == Frozen([97, 98])`` (both the
    Erlang list ``[97,98]``), ``Frozen(1) != Frozen(1.0)``. The wrapped term is
    ``.term``; it must not be mutated afterwards. Encoding a Frozen encodes its term.
    """

    __slots__ = ("term", "_key", "_hash")

    def __init__(self, term: Any):
        if isinstance(term, Frozen):
            term = term.term
        self.term = term
        self._key = map_key_order(term)
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frozen) and self._key == other._key

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Frozen({self.term!r})"


class DecodeError(ValueError):
    """A payload that is not one term of PROTOCOL.md section 3. ``offset`` is where."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class EncodeError(ValueError):
    """A Python value that is not a term the peer would read back."""


class FrameError(ValueError):
    """A ``{packet, 4}`` frame that breaks the limits: empty, too large, or cut short."""


# ---------------------------------------------------------------------------------------
# Term order, exact equality


def term_order_key(t: Any) -> tuple:
    """A hashable, orderable key for term ``t`` in Erlang's term order: number < atom <
    tuple < map < list < binary, numbers by value (an integer before a float of the
    same value). Equal keys mean exact equality (``=:=``).
    ``sorted(terms, key=term_order_key)`` sorts terms as Erlang does."""
    return _key(t, 0, False)


def map_key_order(t: Any) -> tuple:
    """Like :func:`term_order_key`, in the order Erlang sorts map keys (and
    ``term_to_binary(M, [deterministic])`` writes them): every integer before every
    float, at any depth (``3`` before ``2.5``, ``{3}`` before ``{2.5}``)."""
    return _key(t, 0, True)


def _key(t: Any, depth: int, map_order: bool) -> tuple:
    if depth >= MAX_DEPTH:
        raise EncodeError(f"term nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    if isinstance(t, Frozen):
        return t._key if map_order else _key(t.term, depth, False)
    if isinstance(t, bool):
        return (1, "true" if t else "false")
    if isinstance(t, int):
        return (0, 0, t) if map_order else (0, t, 0)
    if isinstance(t, float):
        bits = struct.pack(">d", t)
        return (0, 1, t, bits) if map_order else (0, t, 1, bits)
    if isinstance(t, Atom):
        return (1, str(t))
    if isinstance(t, str):
        return (4, tuple(_key(ord(c), d, map_order) for c in t))
    if isinstance(t, (bytes, bytearray, memoryview)):
        return (5, bytes(t))
    if isinstance(t, tuple):
        return (2, len(t), tuple(_key(x, d, map_order) for x in t))
    if isinstance(t, list):
        return (4, tuple(_key(x, d, map_order) for x in t))
    if isinstance(t, dict):
        # Maps: by size, then the keys (in map key order), then the values in key order.
        items = _sorted_items(t, d)
        return (3, len(items), tuple(k for k, _, _ in items),
                tuple(_key(v, d, map_order) for _, _, v in items))
    raise EncodeError(f"not a term: {type(t).__name__} {t!r}")


def _sorted_items(m: dict, depth: int) -> list:
    """``(map_key, key, value)`` for each item of map ``m``, in map key order; two keys
    that are the same term (``"ab"`` and ``Frozen([97, 98])``) are an
    :class:`EncodeError`."""
    keyed = sorted(((_key(k, depth, True), k, v) for k, v in m.items()), key=lambda e: e[0])
    for a, b in zip(keyed, keyed[1:]):
        if a[0] == b[0]:
            raise EncodeError(f"map has the key {format_term(a[1])} twice")
    return keyed


def equal(a: Any, b: Any) -> bool:
    """Erlang's exact equality of two terms: ``equal("ab", [97, 98])`` is true,
    ``equal(1, 1.0)`` is false."""
    return map_key_order(a) == map_key_order(b)


# ---------------------------------------------------------------------------------------
# Encoding


def encode(term: Any) -> bytes:
    """The payload for ``term``: 131, then the term (see the module's table)."""
    out = bytearray([VERSION])
    _enc(term, out, 0)
    return bytes(out)


def _enc(t: Any, out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise EncodeError(f"term nested deeper than {MAX_DEPTH} levels")
    if isinstance(t, Frozen):
        t = t.term
    if isinstance(t, bool):
        _enc_atom("true" if t else "false", out)
    elif isinstance(t, int):
        _enc_int(t, out)
    elif isinstance(t, float):
        if not math.isfinite(t):
            raise EncodeError(f"non-finite float {t!r}: Erlang has no such value")
        out.append(NEW_FLOAT)
        out += struct.pack(">d", t)
    elif isinstance(t, Atom):
        _enc_atom(t, out)
    elif isinstance(t, str):
        n = len(t)
        if n == 0:
            out.append(NIL)
        elif n <= 0xFFFF and max(t) <= "\xff":
            out.append(STRING)
            out += struct.pack(">H", n)
            out += t.encode("latin-1")
        else:
            out.append(LIST)
            out += struct.pack(">I", n)
            for c in t:
                _enc_int(ord(c), out)
            out.append(NIL)
    elif isinstance(t, (bytes, bytearray, memoryview)):
        b = bytes(t)
        if len(b) > 0xFFFFFFFF:
            raise EncodeError("binary longer than 2^32 - 1 bytes")
        out.append(BINARY)
        out += struct.pack(">I", len(b))
        out += b
    elif isinstance(t, tuple):
        n = len(t)
        if n <= 0xFF:
            out += bytes((SMALL_TUPLE, n))
        else:
            out.append(LARGE_TUPLE)
            out += struct.pack(">I", n)
        for x in t:
            _enc(x, out, depth + 1)
    elif isinstance(t, list):
        n = len(t)
        if n == 0:
            out.append(NIL)
        elif n <= 0xFFFF and all(type(x) is int and 0 <= x <= 255 for x in t):
            out.append(STRING)
            out += struct.pack(">H", n)
            out += bytes(t)
        else:
            out.append(LIST)
            out += struct.pack(">I", n)
            for x in t:
                _enc(x, out, depth + 1)
            out.append(NIL)
    elif isinstance(t, dict):
        out.append(MAP)
        out += struct.pack(">I", len(t))
        for _, k, v in _sorted_items(t, depth + 1):
            _enc(k, out, depth + 1)
            _enc(v, out, depth + 1)
    elif t is None:
        raise EncodeError("None is not a term (did you mean the atom undefined: A.undefined?)")
    else:
        raise EncodeError(f"not a term: {type(t).__name__} {t!r}")


def _enc_int(i: int, out: bytearray) -> None:
    if 0 <= i <= 255:
        out += bytes((SMALL_INTEGER, i))
    elif -(1 << 31) <= i < (1 << 31):
        out.append(INTEGER)
        out += struct.pack(">i", i)
    elif _I64_MIN <= i <= _I64_MAX:
        mag = abs(i)
        digits = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
        out += bytes((SMALL_BIG, len(digits), 1 if i < 0 else 0))
        out += digits
    else:
        raise EncodeError(f"integer {i} is outside signed 64-bit")


def _enc_atom(a: str, out: bytearray) -> None:
    if len(a) > MAX_ATOM_CHARS:
        raise EncodeError(f"atom of {len(a)} characters: at most {MAX_ATOM_CHARS}")
    b = a.encode("utf-8")
    if len(b) <= 0xFF:
        out += bytes((SMALL_ATOM_UTF8, len(b)))
    else:
        out.append(ATOM_UTF8)
        out += struct.pack(">H", len(b))
    out += b


# ---------------------------------------------------------------------------------------
# Decoding


def decode(payload: bytes) -> Any:
    """The term of one payload (the version byte, one term, nothing after it).

    Raises :class:`DecodeError` for anything outside PROTOCOL.md section 3."""
    buf = bytes(payload)
    if not buf:
        raise DecodeError("empty payload", 0)
    if buf[0] != VERSION:
        raise DecodeError(f"version byte {buf[0]}, expected {VERSION}", 0)
    d = _Decoder(buf, 1)
    term = d.term(0)
    if d.pos != len(buf):
        raise DecodeError(f"{len(buf) - d.pos} trailing bytes after the term", d.pos)
    return term


class _Decoder:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int):
        self.buf = buf
        self.pos = pos

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise DecodeError(f"truncated: {n} bytes needed, {self.left()} left", self.pos)
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise DecodeError("truncated: 1 byte needed, 0 left", self.pos)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def count(self, n: int, min_size: int, at: int) -> int:
        """Checks that ``n`` elements of at least ``min_size`` bytes fit in the bytes
        left, before anything is allocated for them."""
        if n * min_size > self.left():
            raise DecodeError(f"declared count {n} is larger than the {self.left()} bytes left", at)
        return n

    def deeper(self, depth: int) -> int:
        if depth + 1 >= MAX_DEPTH:
            raise DecodeError(f"nested deeper than {MAX_DEPTH} levels", self.pos)
        return depth + 1

    def term(self, depth: int) -> Any:
        at = self.pos
        tag = self.u8()
        if tag == SMALL_INTEGER:
            return self.u8()
        if tag == INTEGER:
            return struct.unpack(">i", self.take(4))[0]
        if tag == SMALL_BIG:
            return self.small_big(at)
        if tag == NEW_FLOAT:
            f = struct.unpack(">d", self.take(8))[0]
            if not math.isfinite(f):
                raise DecodeError("non-finite float", at)
            return f
        if tag == SMALL_ATOM_UTF8:
            return self.atom_utf8(self.u8(), at)
        if tag == ATOM_UTF8:
            return self.atom_utf8(self.u16(), at)
        if tag == SMALL_ATOM:
            return self.atom_latin1(self.u8(), at)
        if tag == ATOM:
            return self.atom_latin1(self.u16(), at)
        if tag == BINARY:
            n = self.count(self.u32(), 1, at)
            return self.take(n)
        if tag == NIL:
            return []
        if tag == STRING:
            n = self.count(self.u16(), 1, at)
            return self.take(n).decode("latin-1")
        if tag == LIST:
            # n elements of at least one byte each, and the tail.
            n = self.count(self.u32(), 1, at)
            if n + 1 > self.left():
                raise DecodeError(f"declared count {n} is larger than the {self.left()} bytes left", at)
            items = self.sequence(n, depth)
            tail_at = self.pos
            if self.u8() != NIL:
                raise DecodeError("improper list (the tail is not [])", tail_at)
            return items
        if tag == SMALL_TUPLE:
            n = self.count(self.u8(), 1, at)
            return tuple(self.sequence(n, depth))
        if tag == LARGE_TUPLE:
            n = self.count(self.u32(), 1, at)
            return tuple(self.sequence(n, depth))
        if tag == MAP:
            n = self.count(self.u32(), 2, at)
            return self.map(n, depth, at)
        if tag in _REJECTED:
            raise DecodeError(f"rejected tag {tag}: {_REJECTED[tag]}", at)
        raise DecodeError(f"unknown tag {tag}", at)

    def sequence(self, n: int, depth: int) -> list:
        if n == 0:
            return []
        d = self.deeper(depth)
        # Grows as elements arrive: nested headers each claiming the rest of the
        # payload cannot multiply what is reserved ahead of the data.
        return [self.term(d) for _ in range(n)]

    def map(self, n: int, depth: int, at: int) -> dict:
        if n == 0:
            return {}
        d = self.deeper(depth)
        out: dict = {}
        seen: set = set()
        for _ in range(n):
            k = self.term(d)
            v = self.term(d)
            if _hashable_plain(k):
                kk = map_key_order(k)
                if kk in seen:
                    raise DecodeError("duplicate map key", at)
                if k in out:
                    # Python confuses it with another key (1 and 1.0): wrap both.
                    other = next(x for x in out if x == k)
                    out[Frozen(other)] = out.pop(other)
                    k = Frozen(k)
            else:
                k = Frozen(k)
                kk = k._key
                if kk in seen:
                    raise DecodeError("duplicate map key", at)
            seen.add(kk)
            out[k] = v
        return out

    def small_big(self, at: int) -> int:
        n = self.u8()
        sign = self.u8()
        digits = self.take(n)
        if sign > 1:
            raise DecodeError(f"SMALL_BIG sign byte {sign}", at)
        mag = int.from_bytes(digits, "little")
        v = -mag if sign else mag
        if not _I64_MIN <= v <= _I64_MAX:
            raise DecodeError("integer outside signed 64-bit", at)
        return v

    def atom_utf8(self, n: int, at: int) -> Atom:
        b = self.take(n)
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("atom is not valid UTF-8", at) from None
        if len(s) > MAX_ATOM_CHARS:
            raise DecodeError(f"atom of {len(s)} characters: at most {MAX_ATOM_CHARS}", at)
        return Atom(s)

    def atom_latin1(self, n: int, at: int) -> Atom:
        if n > MAX_ATOM_CHARS:
            raise DecodeError(f"atom of {n} characters: at most {MAX_ATOM_CHARS}", at)
        return Atom(self.take(n).decode("latin-1"))


def _hashable_plain(k: Any) -> bool:
    """Whether a decoded key can be a dict key as it is: no list, no map inside."""
    if isinstance(k, tuple):
        return all(_hashable_plain(x) for x in k)
    return not isinstance(k, (list, dict))


# ---------------------------------------------------------------------------------------
# Erlang syntax, for messages and logs


def format_term(t: Any) -> str:
    """``t`` in Erlang syntax, as ``io:format("~w")`` would print it (e.g.
    ``{ok,"writing a book"}``), for logs and error messages."""
    parts: list[str] = []
    _fmt(t, parts, 0)
    return "".join(parts)


def _fmt(t: Any, out: list, depth: int) -> None:
    if depth >= MAX_DEPTH:
        out.append("...")
        return
    if isinstance(t, Frozen):
        t = t.term
    if isinstance(t, bool):
        out.append("true" if t else "false")
    elif isinstance(t, int):
        out.append(str(t))
    elif isinstance(t, float):
        r = repr(t)
        if "e" in r and "." not in r.split("e")[0]:
            mant, exp = r.split("e")
            r = f"{mant}.0e{int(exp)}"
        elif "e" in r:
            mant, exp = r.split("e")
            r = f"{mant}e{int(exp)}"
        out.append(r)
    elif isinstance(t, Atom):
        out.append(_fmt_atom(t))
    elif isinstance(t, str):
        if all(" " <= c <= "~" for c in t) and t:
            out.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            _fmt(list(map(ord, t)), out, depth)
    elif isinstance(t, (bytes, bytearray, memoryview)):
        b = bytes(t)
        if b and all(32 <= c <= 126 for c in b):
            s = b.decode("ascii").replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'<<"{s}">>')
        else:
            out.append("<<" + ",".join(map(str, b)) + ">>")
    elif isinstance(t, tuple):
        out.append("{")
        for i, x in enumerate(t):
            if i:
                out.append(",")
            _fmt(x, out, depth + 1)
        out.append("}")
    elif isinstance(t, list):
        if t and all(type(x) is int and 32 <= x <= 126 for x in t):
            _fmt("".join(map(chr, t)), out, depth)
            return
        out.append("[")
        for i, x in enumerate(t):
            if i:
                out.append(",")
            _fmt(x, out, depth + 1)
        out.append("]")
    elif isinstance(t, dict):
        out.append("#{")
        try:
            items = [(k, v) for _, k, v in _sorted_items(t, depth + 1)]
        except EncodeError:
            items = list(t.items())
        for j, (k, v) in enumerate(items):
            if j:
                out.append(",")
            _fmt(k, out, depth + 1)
            out.append(" => ")
            _fmt(v, out, depth + 1)
        out.append("}")
    else:
        out.append(f"<not a term: {t!r}>")


_RESERVED = frozenset(
    "after and andalso band begin bnot bor bsl bsr bxor case catch cond div end fun if "
    "let maybe not of or orelse receive rem try when xor".split()
)


def _fmt_atom(a: str) -> str:
    a = str(a)
    if (a and "a" <= a[0] <= "z" and a not in _RESERVED
            and all(c.isascii() and (c.isalnum() or c in "_@") for c in a)):
        return a
    esc = a.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{esc}'"


# ---------------------------------------------------------------------------------------
# {packet, 4} frames


def frame(term: Any, max_frame: Optional[int] = None) -> bytes:
    """One frame: the 4-byte big-endian length, then the payload of ``term``. With
    ``max_frame``, a payload larger than it raises :class:`FrameError`."""
    payload = encode(term)
    if max_frame is not None and len(payload) > max_frame:
        raise FrameError(f"frame of {len(payload)} bytes is over the limit of {max_frame}")
    return struct.pack(">I", len(payload)) + payload


_CHUNK = 64 * 1024


def read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    """Reads exactly ``n`` bytes with ``read`` (e.g. ``stream.read``), at most 64 KiB at a
    time so memory grows only with the bytes that arrive. Raises ``EOFError`` when the
    stream ends first (``.partial`` holds how many bytes came)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = read(min(n - len(buf), _CHUNK))
        if not chunk:
            err = EOFError(f"stream ended after {len(buf)} of {n} bytes")
            err.partial = len(buf)  # type: ignore[attr-defined]
            raise err
        buf += chunk
    return bytes(buf)


def read_frame(stream: BinaryIO, max_frame: int = DEFAULT_MAX_FRAME) -> Optional[bytes]:
    """Reads one frame's payload from a binary stream. Returns ``None`` on a clean end of
    stream (before a frame starts). Raises :class:`FrameError` for a length of 0 or over
    ``max_frame`` (checked before the payload is read) and for a stream that ends
    inside a frame. The payload is not decoded: pass it to :func:`decode`."""
    try:
        header = read_exact(stream.read, 4)
    except EOFError as e:
        if getattr(e, "partial", 0) == 0:
            return None
        raise FrameError("stream ended inside a frame header") from None
    (n,) = struct.unpack(">I", header)
    if n == 0:
        raise FrameError("empty frame (length 0)")
    if n > max_frame:
        raise FrameError(f"frame of {n} bytes is over the limit of {max_frame}")
    try:
        return read_exact(stream.read, n)
    except EOFError:
        raise FrameError(f"stream ended inside a frame of {n} bytes") from None
