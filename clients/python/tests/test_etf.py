"""The ETF codec (lib_chan.etf): round trips, exact bytes against Erlang, hostile input, frames.

Reference bytes were printed by the real Erlang here (OTP 25) with
``io:format("~w~n", [term_to_binary(T)])`` (``[{minor_version, 2}]`` where atoms must
be the UTF-8 tags we write); ``test_live_erlang_agrees`` asks a running ``erl`` again
for a batch of terms and fails (does not skip) when ``erl`` is missing.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess

import pytest

from lib_chan import etf
from lib_chan.etf import (A, FALSE, TRUE, UNDEFINED, Atom, DecodeError, EncodeError, FrameError,
                          Frozen, decode, encode, equal, format_term, frame, read_frame,
                          term_order_key)

SEED = (A.ok, "writing a book")
# term_to_binary({ok, "writing a book"}, [{minor_version, 2}])
SEED_UTF8 = bytes([131, 104, 2, 119, 2, 111, 107, 107, 0, 14, 119, 114, 105, 116, 105, 110, 103,
                   32, 97, 32, 98, 111, 111, 107])
# term_to_binary({ok, "writing a book"}): OTP 25 writes the atom as Latin-1 ATOM_EXT
SEED_OTP25 = bytes([131, 104, 2, 100, 0, 2, 111, 107, 107, 0, 14, 119, 114, 105, 116, 105, 110,
                    103, 32, 97, 32, 98, 111, 111, 107])
# term_to_binary({start_service, nameServer, <<"ABXy45">>, ""})
START_OTP25 = bytes([131, 104, 4, 100, 0, 13, 115, 116, 97, 114, 116, 95, 115, 101, 114, 118, 105,
                     99, 101, 100, 0, 10, 110, 97, 109, 101, 83, 101, 114, 118, 101, 114, 109, 0,
                     0, 0, 6, 65, 66, 88, 121, 52, 53, 106])
INTS = [0, 255, 256, -1, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1, -2**63]
# term_to_binary([0, 255, 256, -1, 2147483647, 2147483648, -2147483648, -2147483649,
#                 9223372036854775807, -9223372036854775808])
INTS_BYTES = bytes([131, 108, 0, 0, 0, 10, 97, 0, 97, 255, 98, 0, 0, 1, 0, 98, 255, 255, 255, 255,
                    98, 127, 255, 255, 255, 110, 4, 0, 0, 0, 0, 128, 98, 128, 0, 0, 0, 110, 4, 1,
                    1, 0, 0, 128, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 127, 110, 8, 1, 0,
                    0, 0, 0, 0, 0, 0, 128, 106])
# term_to_binary({1.5, -0.0, <<1,2,3>>, [1,2,300], [a], {}, #{}})
MIXED = (1.5, -0.0, b"\x01\x02\x03", [1, 2, 300], [A.a], (), {})
MIXED_OTP25 = bytes([131, 104, 7, 70, 63, 248, 0, 0, 0, 0, 0, 0, 70, 128, 0, 0, 0, 0, 0, 0, 0,
                     109, 0, 0, 0, 3, 1, 2, 3, 108, 0, 0, 0, 3, 97, 1, 97, 2, 98, 0, 0, 1, 44,
                     106, 108, 0, 0, 0, 1, 100, 0, 1, 97, 106, 104, 0, 116, 0, 0, 0, 0])
# term_to_binary(#{a => [x], [1] => {}, <<"k">> => 1.0e100})
MAP_OTP25 = bytes([131, 116, 0, 0, 0, 3, 100, 0, 1, 97, 108, 0, 0, 0, 1, 100, 0, 1, 120, 106, 107,
                   0, 1, 1, 104, 0, 109, 0, 0, 0, 1, 107, 70, 84, 178, 73, 173, 37, 148, 195,
                   125])
# term_to_binary(#{protocol => 1, max_frame => 2, server => <<"x">>},
#                [deterministic, {minor_version, 2}])
WELCOME_UTF8 = bytes([131, 116, 0, 0, 0, 3, 119, 9, 109, 97, 120, 95, 102, 114, 97, 109, 101, 97,
                      2, 119, 8, 112, 114, 111, 116, 111, 99, 111, 108, 97, 1, 119, 6, 115, 101,
                      114, 118, 101, 114, 109, 0, 0, 0, 1, 120])


# --- the Python mapping -------------------------------------------------------------------


def test_atoms_are_distinct_from_strings_and_binaries():
    assert A.ok == Atom("ok") and A("with space") == Atom("with space")
    assert Atom("ok") != "ok" and "ok" != Atom("ok")
    assert Atom("ok") != b"ok"
    assert hash(Atom("ok")) == hash(A.ok)
    assert len({Atom("joe"), "joe", b"joe"}) == 3
    assert str(A.ok) == "ok" and isinstance(A.ok, str)
    assert TRUE == Atom("true") and FALSE == Atom("false") and UNDEFINED == A.undefined


def test_booleans_encode_as_atoms_and_decode_as_atoms():
    assert encode(True) == encode(TRUE) == bytes([131, 119, 4]) + b"true"
    assert encode(False) == encode(FALSE)
    assert decode(encode(True)) == TRUE


def test_seed_session_bytes_are_erlangs():
    assert encode(SEED) == SEED_UTF8
    assert decode(SEED_UTF8) == SEED
    # Latin-1 atoms (what OTP 25 writes by default) are decoded, never written.
    assert decode(SEED_OTP25) == SEED
    start = decode(START_OTP25)
    assert start == (A.start_service, A.nameServer, b"ABXy45", [])
    assert encode(start) == encode((A.start_service, A.nameServer, b"ABXy45", ""))


def test_integers_use_the_smallest_form():
    assert encode(INTS) == INTS_BYTES
    assert decode(INTS_BYTES) == INTS
    assert encode(0) == bytes([131, 97, 0])
    assert encode(256)[1] == etf.INTEGER
    assert encode(-1)[1] == etf.INTEGER
    assert encode(2**31)[1] == etf.SMALL_BIG
    assert encode(-2**63) == bytes([131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 128])


def test_floats_binaries_lists_tuples():
    assert decode(MIXED_OTP25) == MIXED
    assert encode(MIXED) == encode(decode(MIXED_OTP25))
    assert math.copysign(1.0, decode(encode(-0.0))) == -1.0


def test_maps_encode_in_map_key_order_like_deterministic_erlang():
    welcome = {A.server: b"x", A.protocol: 1, A.max_frame: 2}
    assert encode(welcome) == WELCOME_UTF8
    assert decode(WELCOME_UTF8) == welcome
    m = decode(MAP_OTP25)
    assert m == {A.a: [A.x], "\x01": (), b"k": 1.0e100}
    # insertion order does not matter
    assert encode({b"k": 1e100, "\x01": (), A.a: [A.x]}) == encode(m)
    assert encode(m) == encode(decode(MAP_OTP25))
    # term_to_binary(#{3 => a, 2.5 => b}, [deterministic]): integers before floats
    assert encode({2.5: A.b, 3: A.a}) == bytes([131, 116, 0, 0, 0, 2, 97, 3, 119, 1, 97, 70, 64, 4,
                                                 0, 0, 0, 0, 0, 0, 119, 1, 98])


def test_strings_are_charlists():
    # STRING for code points up to 255, LIST above, NIL for ""
    assert encode("abc") == bytes([131, 107, 0, 3, 97, 98, 99]) == encode([97, 98, 99])
    assert encode("") == encode([]) == bytes([131, 106])
    assert decode(encode("héllo")) == "héllo"
    euro = encode("a€")
    assert euro == bytes([131, 108, 0, 0, 0, 2, 97, 97, 98, 0, 0, 0x20, 0xAC, 106])
    assert decode(euro) == [97, 0x20AC]
    assert equal(decode(euro), "a€")
    long = "x" * 65536
    assert encode(long)[1] == etf.LIST and equal(decode(encode(long)), long)
    assert encode([1, True])[1] == etf.LIST  # True is an atom, not the integer 1


ROUND_TRIP = [
    0, -1, 255, 256, 2**63 - 1, -2**63, 1.5, -2.25e-300, 1e300,
    A.ok, A("héllo wörld"), A("x" * 255), A("€" * 255),
    b"", b"\x00\xff" * 100, "writing a book", "ÿ",
    [], [1, [2, [3, []]]], [A.a, b"b", "c", (1,)],
    (), (A.ok,), tuple(range(300)),
    {}, {A.a: 1, b"a": 2, "a": 3, 1: 4, (1, 2): 5},
    {Frozen([1, 2, 300]): A.list_key, Frozen({A.k: []}): A.map_key, Frozen((1, [2, 300])): A.t},
    {A.nested: {A.deeper: {A.deepest: [1.0, 2.0]}}},
]


@pytest.mark.parametrize("term", ROUND_TRIP, ids=lambda t: format_term(t)[:40])
def test_round_trip(term):
    b = encode(term)
    back = decode(b)
    assert back == term
    assert encode(back) == b


def test_unhashable_map_keys_decode_frozen():
    m = decode(encode({Frozen([1, 300]): 1, Frozen({A.a: 1}): 2}))
    assert m[Frozen([1, 300])] == 1
    assert m[Frozen({A.a: 1})] == 2
    # Frozen equality is Erlang's =:=: a charlist is a list of integers
    assert Frozen("ab") == Frozen([97, 98]) and hash(Frozen("ab")) == hash(Frozen([97, 98]))
    assert Frozen(1) != Frozen(1.0)


def test_keys_python_would_confuse_are_kept_apart():
    # #{1 => a, 1.0 => b}: two keys in Erlang, one in a Python dict unless wrapped
    raw = bytes([131, 116, 0, 0, 0, 2, 97, 1, 119, 1, 97, 70]) + struct.pack(">d", 1.0) + bytes([119, 1, 98])
    m = decode(raw)
    assert len(m) == 2
    assert m[Frozen(1)] == A.a and m[Frozen(1.0)] == A.b
    assert encode(m) == raw


def test_encode_refuses_what_erlang_cannot_read():
    for bad in [None, 2**63, -2**63 - 1, math.inf, math.nan, A("x" * 256), object(), {1, 2},
                {"ab": 1, Frozen([97, 98]): 2}]:
        with pytest.raises(EncodeError):
            encode(bad)
    with pytest.raises(EncodeError, match="undefined"):
        encode((A.ok, None))


def test_nesting_bound_is_the_same_both_ways():
    ok = []
    for _ in range(etf.MAX_DEPTH - 1):
        ok = [ok]
    assert decode(encode(ok)) == ok
    too_deep = [ok]
    with pytest.raises(EncodeError, match="deeper"):
        encode(too_deep)
    assert etf.MAX_DEPTH >= 64


def test_term_order():
    ordered = [-1, 1, 1.0, 1.5, 2, A.a, A.b, (), (9, 9), (1, 2, 3), {}, {A.a: 1}, [], [1], [1, 2], [2],
               b"", b"a"]
    assert sorted(reversed(ordered), key=term_order_key) == ordered


def test_format_term():
    assert format_term(SEED) == '{ok,"writing a book"}'
    assert format_term({A.a: [1, 2], b"k": A("Big atom"), 1: 1.0e100}) == \
        "#{1 => 1.0e100,a => [1,2],<<\"k\">> => 'Big atom'}"
    assert format_term(A("receive")) == "'receive'"


# --- hostile input ------------------------------------------------------------------------


def expect_error(payload: bytes, match: "str | None" = None):
    with pytest.raises(DecodeError, match=match):
        decode(payload)


@pytest.mark.parametrize("header,name", [
    (bytes([108]) + struct.pack(">I", 0xFFFFFFFF), "list"),
    (bytes([109]) + struct.pack(">I", 0xFFFFFFFF), "binary"),
    (bytes([116]) + struct.pack(">I", 0x7FFFFFFF), "map"),
    (bytes([105]) + struct.pack(">I", 0xFFFFFFFF), "large tuple"),
    (bytes([107]) + struct.pack(">H", 0xFFFF), "string"),
    (bytes([104, 255]), "small tuple"),
])
def test_huge_declared_counts_are_refused_before_allocating(header, name):
    expect_error(bytes([131]) + header + b"\x61\x01" * 3, "declared count")


def test_nested_headers_claiming_everything():
    # 1000 nested lists each claiming 2^32-1 elements: refused at once, nothing reserved
    payload = bytes([131]) + (bytes([108]) + struct.pack(">I", 0xFFFFFFFF)) * 1000
    expect_error(payload, "declared count")


def test_deep_nesting_is_an_error_not_a_crash():
    for depth in (etf.MAX_DEPTH, 10_000, 1_000_000):
        payload = bytes([131]) + bytes([104, 1]) * depth + bytes([106])
        expect_error(payload, "deeper")
    # the bound itself is accepted: 127 nested tuples around []
    assert decode(bytes([131]) + bytes([104, 1]) * (etf.MAX_DEPTH - 1) + bytes([106]))
    # 64 levels, the protocol's minimum
    assert decode(bytes([131]) + bytes([108, 0, 0, 0, 1]) * 64 + bytes([106]) + bytes([106]) * 64)


def test_trailing_bytes_are_refused():
    expect_error(SEED_UTF8 + b"\x00", "trailing")
    expect_error(bytes([131, 106, 106]), "trailing")


def test_improper_lists_are_refused():
    # [1 | 2]
    expect_error(bytes([131, 108, 0, 0, 0, 1, 97, 1, 97, 2]), "improper")


@pytest.mark.parametrize("tag,name", [
    (88, "pid"), (103, "pid"), (90, "reference"), (114, "reference"), (101, "reference"),
    (89, "port"), (102, "port"), (120, "port"), (112, "fun"), (117, "fun"), (113, "export"),
    (77, "bit string"), (80, "compressed"), (82, "atom cache"), (111, "LARGE_BIG"), (99, "FLOAT"),
    (121, "LOCAL"), (68, "distribution"),
])
def test_rejected_tags_are_named(tag, name):
    expect_error(bytes([131, tag, 0, 0, 0, 0, 0, 0, 0, 0]), name)


def test_unknown_tags_and_versions():
    expect_error(bytes([131, 200]), "unknown tag 200")
    expect_error(bytes([130, 106]), "version byte")
    expect_error(b"", "empty")
    expect_error(bytes([131]), "truncated")


def test_truncation_at_every_offset():
    full = encode({A.seed: SEED, A.n: [2**40, -5, 1.5], A.b: b"bin", "s": (A.x,)})
    for cut in range(1, len(full)):
        expect_error(full[:cut])


def test_bad_scalars():
    expect_error(bytes([131, 70]) + struct.pack(">d", math.inf), "non-finite")
    expect_error(bytes([131, 70]) + struct.pack(">d", math.nan), "non-finite")
    expect_error(bytes([131, 110, 8, 0]) + (2**63).to_bytes(8, "little"), "64-bit")
    expect_error(bytes([131, 110, 1, 2, 5]), "sign")
    expect_error(bytes([131, 118, 2, 0]) + "é".encode() * 256, "characters")
    expect_error(bytes([131, 100, 1, 0]) + b"a" * 256, "characters")
    expect_error(bytes([131, 119, 2, 0xC3, 0x28]), "UTF-8")
    # #{a => 1, a => 2}
    expect_error(bytes([131, 116, 0, 0, 0, 2, 119, 1, 97, 97, 1, 119, 1, 97, 97, 2]), "duplicate")
    # #{"ab" => 1, [97, 98] => 2} written two ways: still one key twice
    expect_error(bytes([131, 116, 0, 0, 0, 2, 107, 0, 2, 97, 98, 97, 1,
                        108, 0, 0, 0, 2, 97, 97, 97, 98, 106, 97, 2]), "duplicate")


def test_non_canonical_big_within_range_is_read():
    # SMALL_BIG with leading zero digits: still the integer 1 (Erlang reads it too)
    assert decode(bytes([131, 110, 9, 0]) + (1).to_bytes(9, "little")) == 1


# --- frames -------------------------------------------------------------------------------


class NoReadPast(io.RawIOBase):
    """A stream that fails the test if more than its header is read."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def read(self, n=-1):
        if self.pos >= 4:
            raise AssertionError("payload read after a refused header")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_frames():
    f = frame(SEED)
    assert f == struct.pack(">I", len(SEED_UTF8)) + SEED_UTF8
    stream = io.BytesIO(f + frame(A.close))
    assert decode(read_frame(stream)) == SEED
    assert decode(read_frame(stream)) == A.close
    assert read_frame(stream) is None  # clean end
    with pytest.raises(FrameError, match="over the limit"):
        frame(b"x" * 100, max_frame=50)


def test_frame_limits():
    with pytest.raises(FrameError, match="over the limit"):
        read_frame(NoReadPast(struct.pack(">I", 2**31) + b"xx"))
    with pytest.raises(FrameError, match="over the limit"):
        read_frame(NoReadPast(struct.pack(">I", 4097)), max_frame=4096)
    with pytest.raises(FrameError, match="empty"):
        read_frame(io.BytesIO(struct.pack(">I", 0)))
    with pytest.raises(FrameError, match="inside a frame of"):
        read_frame(io.BytesIO(struct.pack(">I", 10) + b"abc"))
    with pytest.raises(FrameError, match="header"):
        read_frame(io.BytesIO(b"\x00\x00"))


# --- against a live Erlang ----------------------------------------------------------------

LIVE = [
    SEED,
    (A.start_service, A.nameServer, b"ABXy45", ""),
    {A.protocol: 2, A.max_frame: 1048576, A.server: b"lib_chan-rs", A.user: b"alice"},
    INTS, MIXED, [1, 2, 300, -5], "a€", A("héllo"), A("Quoted atom"), A("€uro"),
    {A.a: [A.x], Frozen([1]): (), b"k": 1.0e100, (1, 2): {A.z: 1}, 3: A.three, 2.5: A.f},
    {Frozen({A.b: 1}): 1, Frozen({A.a: 2}): 2, Frozen([A.a]): 3},
    tuple(range(260)), "x" * 70000, [b"", b"\x00\xff", (), []],
    {A.n: -(2**40), A.m: 2**62},
]


def test_live_erlang_agrees(tmp_path):
    """erl parses each term's Erlang text, and term_to_binary(T, [{minor_version, 2},
    deterministic]) must be our bytes exactly; its default encoding must decode to the
    same term."""
    erl = shutil.which("erl")
    assert erl is not None, "erl is not installed (the Erlang tests fail rather than skip)"
    src = tmp_path / "terms.txt"
    src.write_text("\n".join(format_term(t) for t in LIVE) + "\n", encoding="utf-8")
    script = (
        '{ok, Bin} = file:read_file("%s"),'
        'Lines = binary:split(Bin, <<"\\n">>, [global, trim]),'
        'lists:foreach(fun(L) ->'
        '  {ok, Toks, _} = erl_scan:string(unicode:characters_to_list(L) ++ "."),'
        '  {ok, T} = erl_parse:parse_term(Toks),'
        '  io:format("~s ~s~n", [binary:encode_hex(term_to_binary(T, [{minor_version, 2}, deterministic])),'
        '                        binary:encode_hex(term_to_binary(T))])'
        ' end, Lines), halt().' % src
    )
    p = subprocess.run([erl, "-noshell", "-eval", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    rows = p.stdout.split()
    assert len(rows) == 2 * len(LIVE), p.stdout[:2000]
    for i, term in enumerate(LIVE):
        deterministic, default = bytes.fromhex(rows[2 * i]), bytes.fromhex(rows[2 * i + 1])
        assert encode(term) == deterministic, format_term(term)[:200]
        assert equal(decode(default), term), format_term(term)[:200]
        assert equal(decode(deterministic), term)
