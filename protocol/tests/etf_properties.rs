//! Property tests of the External Term Format codec and of `FrameCodec`.
//!
//! - (a) round trip: `decode(encode(t)) == t` for generated terms (integers over the whole
//!   i64 range with a bias to the tag boundaries, finite floats, atoms up to 255 characters
//!   including Latin-1 and other Unicode, binaries, charlists, nested lists, tuples and
//!   maps), and re-encoding is byte-stable;
//! - (b) canonical encoding: a map built from the same entries in any order, or received
//!   with its entries in any order on the wire, encodes to the same bytes;
//! - (c) framing: a stream of several frames cut into arbitrary chunks and fed to
//!   `FrameCodec` (as `tokio_util::codec::Decoder`) chunk by chunk yields exactly the
//!   frames, each as soon as its last byte is in and never earlier; an over-limit frame
//!   is refused on its header;
//! - (d) hostile input: random bytes and mutations of valid encodings (bit flips,
//!   truncation, inserted, deleted and overwritten bytes, corrupted lengths) never panic
//!   `decode` or `FrameCodec`, and `decode` never has more than
//!   `ALLOC_FACTOR * input_len + ALLOC_SLACK` bytes allocated at once (measured per thread
//!   with `allocation_counter`'s counting global allocator, which this test binary
//!   installs), also on crafted bombs: nested LIST headers claiming 2^32-1 or the rest of
//!   the payload, STRING and MAP count bombs. The worst ratios seen are printed
//!   (`--nocapture`). Whatever decodes re-encodes and decodes back to the same term;
//! - the encoder and the decoder agree on the nesting limit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use lib_chan_protocol::etf::{DecodeErrorKind, MAX_DEPTH};
use lib_chan_protocol::{decode, encode, Atom, DecodeError, FrameCodec, FrameError, Term};
use lib_chan_protocol::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------
// Strategies.

/// Integers where the encoding changes: SMALL_INTEGER, INTEGER, SMALL_BIG of each length.
const INT_BOUNDARIES: &[i64] = &[
    0,
    1,
    255,
    256,
    -1,
    -255,
    -256,
    i32::MAX as i64,
    i32::MAX as i64 + 1,
    i32::MIN as i64,
    i32::MIN as i64 - 1,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    1 << 40,
    -(1 << 40),
    (1 << 56) - 1,
    1 << 56,
    -(1 << 56),
    i64::MAX,
    i64::MAX - 1,
    i64::MIN,
    i64::MIN + 1,
];

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => any::<i64>(),
        3 => prop::sample::select(INT_BOUNDARIES),
        2 => (prop::sample::select(INT_BOUNDARIES), -3i64..=3)
            .prop_map(|(b, d)| b.saturating_add(d)),
        2 => -300i64..300,
        1 => (0u32..63, any::<bool>()).prop_map(|(k, neg)| if neg { -(1i64 << k) } else { 1i64 << k }),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        4 => (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO)
            .prop_filter("finite", |f| f.is_finite()),
        1 => prop::sample::select(
            &[0.0, -0.0, 1.0, -1.5, f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, 1e300][..]
        ),
    ]
}

fn atom_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::char::range('\u{80}', '\u{ff}'),
        1 => any::<char>(),
        1 => prop::sample::select(&[' ', '\'', '\\', '_', '@', 'A', '\0'][..]),
    ]
}

fn atom() -> impl Strategy<Value = Term> {
    prop_oneof![
        6 => vec(atom_char(), 0..12),
        1 => vec(atom_char(), 200..=255),
    ]
    .prop_map(|chars| {
        let name: String = chars.into_iter().collect();
        Term::Atom(Atom::new(&name).expect("at most 255 characters"))
    })
}

fn binary() -> impl Strategy<Value = Term> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..32),
        1 => vec(any::<u8>(), 0..2048),
    ]
    .prop_map(Term::binary)
}

fn charlist() -> impl Strategy<Value = Term> {
    prop_oneof![
        // Any code points: LIST on the wire unless all are below 256.
        vec(any::<char>(), 0..24).prop_map(|cs| Term::string(&cs.into_iter().collect::<String>())),
        // Bytes: STRING on the wire.
        vec(0i64..=255, 1..300).prop_map(|v| Term::list(v.into_iter().map(Term::Int))),
        // Mostly bytes with one larger integer: LIST again.
        (vec(0i64..=255, 1..40), 256i64..100_000).prop_map(|(mut v, big)| {
            v.push(big);
            Term::list(v.into_iter().map(Term::Int))
        }),
    ]
}

fn leaf() -> impl Strategy<Value = Term> {
    prop_oneof![
        4 => int().prop_map(Term::Int),
        2 => float().prop_map(Term::Float),
        3 => atom(),
        2 => binary(),
        2 => charlist(),
        1 => Just(Term::nil()),
        1 => Just(Term::tuple([])),
        1 => Just(Term::map([])),
        // LARGE_TUPLE.
        1 => vec(int(), 250..300).prop_map(|v| Term::tuple(v.into_iter().map(Term::Int))),
    ]
}

/// Any term the protocol carries, nested a few levels deep.
fn term() -> impl Strategy<Value = Term> {
    leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Term::list),
            vec(inner.clone(), 0..8).prop_map(Term::tuple),
            vec((inner.clone(), inner), 0..6).prop_map(Term::map),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn enc(t: &Term) -> Vec<u8> {
    encode(t).expect("generated terms encode")
}

/// Our own rendering for failure messages (`Term`'s `Debug` goes through text.rs).
fn show(term: &Term) -> String {
    fn go(term: &Term, out: &mut String) {
        use std::fmt::Write as _;
        let seq = |items: &[Term], open: &str, close: &str, out: &mut String| {
            out.push_str(open);
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                go(item, out);
            }
            out.push_str(close);
        };
        match term {
            Term::Int(n) => write!(out, "{n}").unwrap(),
            Term::Float(f) => write!(out, "{f:e}").unwrap(),
            Term::Atom(a) => write!(out, "'{}'", a.as_str().escape_debug()).unwrap(),
            Term::Binary(b) => write!(out, "<<{b:?}>>").unwrap(),
            Term::List(items) => seq(items, "[", "]", out),
            Term::Tuple(items) => seq(items, "{", "}", out),
            Term::Map(entries) => {
                out.push_str("#{");
                for (k, (key, value)) in entries.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    go(key, out);
                    out.push_str("=>");
                    go(value, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(term, &mut out);
    if out.len() > 400 {
        let end = out.char_indices().nth(400).map_or(out.len(), |(i, _)| i);
        out.truncate(end);
        out.push_str("...");
    }
    out
}

/// What `decode` may have allocated at once: this many bytes per input byte...
///
/// The decoder's real worst case is a LIST of NILs: each one-byte NIL becomes a 24-byte
/// `Term` slot plus a 16-byte `Arc` allocation for the empty list, the vector of slots
/// doubles as it grows (old and new buffers both live during the move), and the final
/// `Vec -> Arc<[Term]>` copies once more: about 88 bytes per input byte at the peak.
const ALLOC_FACTOR: u64 = 96;
/// ... plus this much: nested headers each reserve a first small block of 16 elements.
const ALLOC_SLACK: u64 = 128 * 1024;

/// The worst allocation seen in one test: ratio over inputs of at least 1 KiB, and the
/// largest peak over smaller inputs, with a description of each.
#[derive(Default)]
struct Worst {
    ratio: f64,
    ratio_what: String,
    small_peak: u64,
    small_what: String,
}

impl Worst {
    fn record(&mut self, what: impl FnOnce() -> String, len: usize, peak: u64) {
        if len >= 1024 {
            let ratio = peak as f64 / len as f64;
            if ratio > self.ratio {
                self.ratio = ratio;
                self.ratio_what = format!("{} ({len} bytes in, {peak} bytes peak)", what());
            }
        } else if peak > self.small_peak {
            self.small_peak = peak;
            self.small_what = format!("{} ({len} bytes in)", what());
        }
    }

    fn report(&self, test: &str) {
        eprintln!(
            "[{test}] worst decode peak/input over inputs >= 1 KiB: {:.1}x: {}\n\
             [{test}] largest decode peak over inputs < 1 KiB: {} bytes: {}",
            self.ratio, self.ratio_what, self.small_peak, self.small_what
        );
    }
}

/// Decodes `bytes`, measuring the most bytes allocated at once on this thread during the
/// call, and checks that against the bound.
fn decode_measured(bytes: &[u8], what: &dyn Fn() -> String) -> (Result<Term, DecodeError>, u64) {
    let mut result = None;
    let info = allocation_counter::measure(|| result = Some(decode(bytes)));
    let peak = info.bytes_max;
    let bound = ALLOC_FACTOR * bytes.len() as u64 + ALLOC_SLACK;
    assert!(
        peak <= bound,
        "decode of {} ({} bytes) had {peak} bytes allocated at once, over the bound {bound} \
         ({:.1} per input byte)",
        what(),
        bytes.len(),
        peak as f64 / bytes.len().max(1) as f64
    );
    (result.expect("decode ran"), peak)
}

/// Whatever decodes must encode and decode back to itself.
fn check_decoded(t: &Term) -> Result<(), TestCaseError> {
    let again =
        encode(t).map_err(|e| TestCaseError::fail(format!("re-encode of {}: {e}", show(t))))?;
    let back = decode(&again)
        .map_err(|e| TestCaseError::fail(format!("decode of re-encoding of {}: {e}", show(t))))?;
    prop_assert!(back == *t, "{} re-decoded as {}", show(t), show(&back));
    Ok(())
}

/// Failures are saved beside this file (`etf_properties.proptest-regressions`); proptest's
/// default looks for a `src/lib.rs` above the test file and finds none.
fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------
// (a) Round trip, (b) canonical maps.

proptest! {
    #![proptest_config(Config { cases: 400, ..config() })]

    #[test]
    fn decode_of_encode_is_identity(t in term()) {
        let bytes = enc(&t);
        let back = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{}: {e}", show(&t))))?;
        prop_assert!(back == t, "{} came back as {}", show(&t), show(&back));
        prop_assert_eq!(enc(&back), bytes);
    }
}

/// Entries with distinct keys, and the same entries shuffled.
type Entries = Vec<(Term, Term)>;

fn entries_and_shuffle() -> impl Strategy<Value = (Entries, Entries)> {
    vec((term(), term()), 0..10)
        .prop_map(|raw| {
            let mut entries: Entries = Vec::new();
            for (k, v) in raw {
                if !entries.iter().any(|(seen, _)| *seen == k) {
                    entries.push((k, v));
                }
            }
            entries
        })
        .prop_flat_map(|entries| (Just(entries.clone()), Just(entries).prop_shuffle()))
}

proptest! {
    #![proptest_config(Config { cases: 64, ..config() })]

    #[test]
    fn map_encoding_does_not_depend_on_entry_order((entries, shuffled) in entries_and_shuffle()) {
        let a = Term::map(entries.clone());
        let b = Term::map(shuffled.clone());
        prop_assert!(a == b);
        let canonical = enc(&a);
        prop_assert_eq!(&canonical, &enc(&b));

        // The same map arriving with its entries in the shuffled order on the wire.
        let mut wire = vec![131, 116];
        wire.extend((shuffled.len() as u32).to_be_bytes());
        for (k, v) in &shuffled {
            wire.extend(&enc(k)[1..]);
            wire.extend(&enc(v)[1..]);
        }
        let got = decode(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(got == a, "{} decoded as {}", show(&a), show(&got));
        prop_assert_eq!(enc(&got), canonical);

        // A key given twice on the wire is refused.
        if let Some((k, v)) = shuffled.first() {
            let mut dup = vec![131, 116];
            dup.extend(((shuffled.len() + 1) as u32).to_be_bytes());
            for (k, v) in shuffled.iter().chain([(k.clone(), v.clone())].iter()) {
                dup.extend(&enc(k)[1..]);
                dup.extend(&enc(v)[1..]);
            }
            let err = decode(&dup).expect_err("duplicate key");
            prop_assert_eq!(err.kind, DecodeErrorKind::DuplicateMapKey);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) Framing.

/// Feeds `stream` to a fresh codec in the chunks that `cuts` delimit, checking after each
/// chunk that exactly the frames complete so far came out. Returns them.
fn feed(
    stream: &[u8],
    cuts: &[usize],
    frame_ends: &[usize],
    max_recv: usize,
) -> Result<Vec<Bytes>, FrameError> {
    let mut codec = FrameCodec::new(max_recv, DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        let complete = frame_ends.iter().filter(|&&e| e <= end).count();
        assert_eq!(frames.len(), complete, "after {end} bytes");
    }
    assert!(codec.decode_eof(&mut buf)?.is_none());
    Ok(frames)
}

fn chunking() -> impl Strategy<Value = (Vec<Term>, Vec<Index>, bool)> {
    (
        vec(term(), 1..6),
        vec(any::<Index>(), 0..16),
        prop::bool::weighted(0.15),
    )
}

proptest! {
    #![proptest_config(Config { cases: 96, ..config() })]

    #[test]
    fn any_chunking_yields_the_same_frames((terms, cuts, byte_by_byte) in chunking()) {
        let codec = FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
        let mut stream = BytesMut::new();
        let mut frame_ends = Vec::new();
        for t in &terms {
            codec.encode_term(t, &mut stream).unwrap();
            frame_ends.push(stream.len());
        }
        let mut cuts: Vec<usize> = if byte_by_byte {
            (1..stream.len()).collect()
        } else {
            cuts.iter().map(|c| c.index(stream.len() + 1)).collect()
        };
        cuts.sort_unstable();
        cuts.dedup();
        let frames = feed(&stream, &cuts, &frame_ends, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(frames.len(), terms.len());
        for (frame, t) in frames.iter().zip(&terms) {
            prop_assert_eq!(&frame[..], &enc(t)[..]);
            prop_assert!(decode(frame).unwrap() == *t);
        }
    }

    #[test]
    fn an_over_limit_frame_is_refused_on_its_header(
        (terms, cuts, _) in chunking(),
        max in 8usize..2048,
    ) {
        let codec = FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
        let mut stream = BytesMut::new();
        let mut frame_ends = Vec::new();
        let mut lens = Vec::new();
        for t in &terms {
            codec.encode_term(t, &mut stream).unwrap();
            frame_ends.push(stream.len());
            lens.push(enc(t).len());
        }
        let first_over = lens.iter().position(|&l| l > max);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        match first_over {
            None => {
                let frames = feed(&stream, &cuts, &frame_ends, max).unwrap();
                prop_assert_eq!(frames.len(), terms.len());
            }
            Some(k) => {
                // The stream stops right after the bad frame's header: the refusal must
                // not wait for its payload.
                let header_end = if k == 0 { 0 } else { frame_ends[k - 1] } + 4;
                let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < header_end).collect();
                match feed(&stream[..header_end], &cuts, &frame_ends[..k], max) {
                    Err(FrameError::TooLarge { len, max: m }) => {
                        prop_assert_eq!(len, lens[k]);
                        prop_assert_eq!(m, max);
                    }
                    other => prop_assert!(false, "frame {} of {} bytes over {}: got {:?}", k, lens[k], max,
                        other.map(|f| f.len())),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// (d) Hostile input.

/// Tag bytes, and bytes that make lengths large, to aim random input at the parser.
const INTERESTING: &[u8] = &[
    0, 1, 0x7F, 0x80, 0xFF, 70, 97, 98, 100, 104, 105, 106, 107, 108, 109, 110, 111, 115, 116, 118,
    119, 131,
];

const LENGTHS: &[u32] = &[
    0,
    1,
    2,
    255,
    256,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index),
    Set(Index, u8),
    /// Overwrites 4 bytes (or fewer at the end) with a big-endian length.
    SetLength(Index, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(INTERESTING)];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), prop::sample::select(LENGTHS)).prop_map(|(i, l)| Mutation::SetLength(i, l)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        _ if len == 0 => {}
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::Delete(i) => {
            bytes.remove(i.index(len));
        }
        Mutation::Set(i, b) => bytes[i.index(len)] = *b,
        Mutation::SetLength(i, l) => {
            let at = i.index(len);
            for (k, b) in l.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
    }
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![2 => any::<u8>(), 1 => prop::sample::select(INTERESTING)];
    (prop::bool::weighted(0.8), vec(byte, 0..300)).prop_map(|(versioned, mut body)| {
        if versioned {
            body.insert(0, 131);
        }
        body
    })
}

#[test]
fn random_bytes_never_panic_nor_over_allocate() {
    let worst = Mutex::new(Worst::default());
    runner(1500)
        .run(&random_bytes(), |bytes| {
            let what = || format!("random bytes {bytes:?}");
            let (result, peak) = decode_measured(&bytes, &what);
            worst.lock().unwrap().record(what, bytes.len(), peak);
            if let Ok(t) = result {
                check_decoded(&t)?;
            }
            Ok(())
        })
        .unwrap();
    worst.lock().unwrap().report("random bytes");
}

#[test]
fn mutated_encodings_never_panic_nor_over_allocate() {
    let worst = Mutex::new(Worst::default());
    let decoded_ok = AtomicU32::new(0);
    runner(800)
        .run(&(term(), vec(mutation(), 1..5)), |(t, mutations)| {
            let mut bytes = enc(&t);
            for m in &mutations {
                apply(&mut bytes, m);
            }
            let what = || format!("{} mutated by {mutations:?}", show(&t));
            let (result, peak) = decode_measured(&bytes, &what);
            worst.lock().unwrap().record(what, bytes.len(), peak);
            if let Ok(t) = result {
                decoded_ok.fetch_add(1, Ordering::Relaxed);
                check_decoded(&t)?;
            }
            Ok(())
        })
        .unwrap();
    worst.lock().unwrap().report("mutations");
    eprintln!(
        "[mutations] {} of 800 mutated encodings still decoded",
        decoded_ok.into_inner()
    );
}

/// The frame codec on arbitrary bytes, in arbitrary chunks, with an arbitrary limit: no
/// panic, frames only of legal sizes, and no decode call allocates more than a few
/// hundred bytes (it never reserves for a declared length).
#[test]
fn frame_codec_survives_garbage() {
    let strategy = (
        vec(
            prop_oneof![2 => any::<u8>(), 1 => Just(0u8), 1 => Just(0xFFu8)],
            0..400,
        ),
        vec(any::<Index>(), 0..10),
        prop_oneof![
            Just(HANDSHAKE_MAX_FRAME),
            Just(DEFAULT_MAX_FRAME),
            1usize..64
        ],
    );
    let max_decode_alloc = Mutex::new(0u64);
    runner(800)
        .run(&strategy, |(stream, cuts, max)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut codec = FrameCodec::new(max, max);
            let mut buf = BytesMut::new();
            let mut start = 0;
            'feed: for end in cuts.into_iter().chain(std::iter::once(stream.len())) {
                buf.extend_from_slice(&stream[start..end]);
                start = end;
                loop {
                    let before = buf.len();
                    let mut result = None;
                    let info =
                        allocation_counter::measure(|| result = Some(codec.decode(&mut buf)));
                    let mut worst = max_decode_alloc.lock().unwrap();
                    *worst = (*worst).max(info.bytes_max);
                    prop_assert!(
                        info.bytes_max <= 256,
                        "a decode call allocated {} bytes",
                        info.bytes_max
                    );
                    match result.unwrap() {
                        Ok(Some(frame)) => {
                            prop_assert!(!frame.is_empty() && frame.len() <= max);
                            prop_assert_eq!(buf.len(), before - 4 - frame.len());
                            // Whatever the payload, decoding it is safe too.
                            let _ = decode(&frame);
                        }
                        Ok(None) => break,
                        Err(FrameError::TooLarge { .. } | FrameError::Empty) => break 'feed,
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "[frame garbage] most bytes one FrameCodec::decode call had allocated: {}",
        max_decode_alloc.lock().unwrap()
    );
}

/// Crafted inputs aimed at making the decoder allocate ahead of the data.
#[test]
fn crafted_bombs_stay_within_the_allocation_bound() {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();

    // Nested LIST headers each claiming 2^32-1 elements.
    let mut b = vec![131];
    for _ in 0..200 {
        b.extend([108, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    b.extend([106; 64]);
    cases.push(("nested LIST headers claiming 2^32-1".into(), b));

    // Nested LIST / LARGE_TUPLE / MAP headers each claiming the rest of the payload,
    // followed by a filler that the innermost one consumes.
    for (name, tag, per) in [
        ("LIST", 108u8, 1usize),
        ("LARGE_TUPLE", 105, 1),
        ("MAP", 116, 2),
    ] {
        for (filler_name, filler) in [("NIL", 106u8), ("SMALL_INTEGER 0", 97)] {
            for total in [4 * 1024, 64 * 1024] {
                let levels = 120;
                let mut b = vec![131];
                for _ in 0..levels {
                    let left = total - b.len() - 5;
                    b.push(tag);
                    b.extend(((left / per) as u32).to_be_bytes());
                }
                while b.len() < total {
                    b.push(filler);
                }
                cases.push((format!("{levels} nested {name} headers claiming the rest, {filler_name} filler, {total} bytes"), b));
            }
        }
    }

    // One flat LIST of NILs filling a whole frame (the densest input: 1 byte per element).
    // Sizes just past a power of two catch the vector's doubling at its worst.
    for n in [4089, 65_529, 65_537, 1_048_569] {
        let total = n + 7;
        let mut b = vec![131, 108];
        b.extend((n as u32).to_be_bytes());
        b.extend(std::iter::repeat_n(106, n));
        b.push(106);
        cases.push((format!("LIST of {n} NILs ({total} bytes)"), b.clone()));
        // The same, one byte short: the work is thrown away at the end.
        b.pop();
        cases.push((format!("truncated LIST of {n} NILs"), b));
    }

    // STRING bombs: headers claiming 65535 bytes with nothing behind them, many of them
    // in a list, and a list of full 65535-byte strings.
    let mut b = vec![131, 107, 0xFF, 0xFF, 1, 2, 3];
    cases.push(("STRING claiming 65535 bytes, 3 present".into(), b.clone()));
    b = vec![131, 108, 0, 0, 0x40, 0];
    for _ in 0..0x4000 {
        b.extend([107, 0xFF, 0xFF]);
    }
    b.push(106);
    cases.push((
        "LIST of 16384 STRING headers claiming 65535 bytes".into(),
        b,
    ));
    b = vec![131, 108, 0, 0, 0, 15];
    for _ in 0..15 {
        b.extend([107, 0xFF, 0xFF]);
        b.extend(std::iter::repeat_n(b'x', 0xFFFF));
    }
    b.push(106);
    cases.push(("LIST of 15 full 65535-byte STRINGs".into(), b));
    let n = (DEFAULT_MAX_FRAME - 7) / 3;
    b = vec![131, 108];
    b.extend((n as u32).to_be_bytes());
    for _ in 0..n {
        b.extend([107, 0, 0]);
    }
    b.push(106);
    cases.push((format!("LIST of {n} empty STRINGs"), b));

    // MAP count bombs: 2^32-1 entries; entries that are all the same key (the duplicate
    // is only found once all are read); many distinct one-byte-ish keys.
    cases.push((
        "MAP claiming 2^32-1 entries".into(),
        vec![131, 116, 0xFF, 0xFF, 0xFF, 0xFF, 106, 106],
    ));
    for total in [64 * 1024, DEFAULT_MAX_FRAME] {
        let n = (total - 6) / 2;
        let mut b = vec![131, 116];
        b.extend((n as u32).to_be_bytes());
        b.extend(std::iter::repeat_n(106, 2 * n));
        cases.push((
            format!("MAP of {n} entries [] => [] ({} bytes)", b.len()),
            b,
        ));
    }
    let n = (DEFAULT_MAX_FRAME - 6) / 7;
    b = vec![131, 116];
    b.extend((n as u32).to_be_bytes());
    for k in 0..n as u32 {
        b.push(98);
        b.extend(k.to_be_bytes());
        b.extend([106, 106]);
    }
    b.truncate(DEFAULT_MAX_FRAME);
    cases.push((format!("MAP of {n} distinct INTEGER keys"), b));

    // Deep nesting and huge atom / binary / big-integer claims.
    let mut b = vec![131];
    for _ in 0..100_000 {
        b.extend([104, 1]);
    }
    b.push(106);
    cases.push(("100000 nested 1-tuples".into(), b));
    cases.push((
        "ATOM_UTF8 claiming 65535 bytes".into(),
        vec![131, 118, 0xFF, 0xFF, b'a'],
    ));
    cases.push((
        "BINARY claiming 2^32-1 bytes".into(),
        vec![131, 109, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ));
    let mut b = vec![131, 110, 255, 0];
    b.extend([0; 255]);
    cases.push(("SMALL_BIG of 255 zero digits".into(), b));

    let mut worst = Worst::default();
    let mut table = Vec::new();
    for (name, bytes) in &cases {
        let (result, peak) = decode_measured(bytes, &|| name.clone());
        worst.record(|| name.clone(), bytes.len(), peak);
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{:?}", e.kind),
        };
        table.push(format!(
            "  {:>8} in {:>10} peak {:>6.1}x  {name}: {outcome}",
            bytes.len(),
            peak,
            peak as f64 / bytes.len() as f64
        ));
        if let Ok(t) = result {
            check_decoded(&t).unwrap();
        }
    }
    eprintln!("[bombs]\n{}", table.join("\n"));
    worst.report("bombs");
}

/// The encoder refuses exactly what the decoder would refuse as too deep: a term the
/// encoder writes must come back (an empty tuple or map at depth 127 once did not).
#[test]
fn encoder_and_decoder_agree_on_the_depth_limit() {
    let innermost: [(&str, Term); 6] = [
        ("atom", Term::atom("x")),
        ("[]", Term::nil()),
        ("{}", Term::tuple([])),
        ("#{}", Term::map([])),
        ("\"ab\"", Term::string("ab")),
        ("<<>>", Term::binary(b"")),
    ];
    type Wrap = fn(Term) -> Term;
    let wrappers: [(&str, Wrap); 3] = [
        ("{_}", |t| Term::tuple([t])),
        ("[_]", |t| Term::list([t])),
        ("#{k => _}", |t| Term::map([(Term::atom("k"), t)])),
    ];
    let mut failures = Vec::new();
    for (inner_name, inner) in &innermost {
        for (wrap_name, wrap) in &wrappers {
            let mut t = inner.clone();
            for levels in 1..=MAX_DEPTH + 2 {
                t = wrap(t);
                if let Ok(bytes) = encode(&t) {
                    match decode(&bytes) {
                        Ok(back) if back == t => {}
                        Ok(_) => failures.push(format!("{inner_name} in {levels} x {wrap_name}: decodes differently")),
                        Err(e) => failures.push(format!(
                            "{inner_name} inside {levels} levels of {wrap_name}: encode accepts it, decode says {e}"
                        )),
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A message-shaped term: each of the wrappers a client or server sends, around a random
/// term, with a random reference (sometimes not a valid one); or any term at all.
fn message_like() -> impl Strategy<Value = Term> {
    let reference = prop_oneof![
        (0i64..1000).prop_map(Term::Int),
        int().prop_map(Term::Int),
        leaf(),
    ];
    let tag = prop_oneof![
        Just("call"),
        Just("send"),
        Just("reply"),
        Just("error"),
        Just("ping"),
        Just("pong"),
        Just("other"),
    ];
    prop_oneof![
        (tag.clone(), reference.clone(), term()).prop_map(|(tag, r, x)| Term::tuple([
            Term::atom(tag),
            r,
            x
        ])),
        (tag.clone(), term()).prop_map(|(tag, x)| Term::tuple([Term::atom(tag), x])),
        (tag, reference, term(), term()).prop_map(|(tag, r, x, y)| Term::tuple([
            Term::atom(tag),
            r,
            x,
            y
        ])),
        term(),
    ]
}

/// `decode` then `from_term`, the reference the message readers must agree with.
fn read_slowly<M>(
    bytes: &[u8],
    from_term: impl Fn(&Term) -> Result<M, lib_chan_protocol::message::MessageError>,
) -> Result<M, String> {
    let term = lib_chan_protocol::decode(bytes).map_err(|e| e.to_string())?;
    from_term(&term).map_err(|e| e.to_string())
}

#[test]
fn message_readers_agree_with_decode_then_from_term() {
    use lib_chan_protocol::message::{ClientMessage, ServerMessage};
    let strategy = (message_like(), vec(mutation(), 0..3));
    let decoded_ok = AtomicU32::new(0);
    runner(1500)
        .run(&strategy, |(t, mutations)| {
            let mut bytes = enc(&t);
            for m in &mutations {
                apply(&mut bytes, m);
            }
            let client = ClientMessage::decode(&bytes).map_err(|e| e.to_string());
            prop_assert_eq!(&client, &read_slowly(&bytes, ClientMessage::from_term));
            let server = ServerMessage::decode(&bytes).map_err(|e| e.to_string());
            prop_assert_eq!(&server, &read_slowly(&bytes, ServerMessage::from_term));
            if client.is_ok() || server.is_ok() {
                decoded_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    // The generator reaches the messages, not only errors.
    assert!(decoded_ok.load(Ordering::Relaxed) > 50, "{decoded_ok:?}");
}

/// A request as the name server gets it decodes with one allocation per compound term
/// and nothing else: each small tuple is gathered on the stack and moved into its one
/// shared slice (no vector first, copied into a second allocation), and common atoms
/// are interned. `{call, 7, {lookup, {key, 12}}}`: the outer tuple's elements, then the
/// two inner tuples; an uncommon atom and a binary cost one each.
#[test]
fn a_request_decodes_with_one_allocation_per_compound_term() {
    let lookup = Term::tuple([
        Term::atom("call"),
        Term::Int(7),
        Term::tuple([
            Term::atom("lookup"),
            Term::tuple([Term::atom("key"), Term::Int(12)]),
        ]),
    ]);
    let store = Term::tuple([
        Term::atom("store"),
        Term::atom("joe"),
        Term::binary(b"writing a book"),
    ]);
    for (term, allocations) in [(lookup, 3), (store, 3)] {
        let bytes = encode(&term).unwrap();
        let mut decoded = None;
        let info = allocation_counter::measure(|| decoded = Some(decode(&bytes)));
        assert_eq!(decoded.unwrap().unwrap(), term);
        assert_eq!(
            info.count_total,
            allocations,
            "allocations decoding {}",
            show(&term)
        );
    }
}
