//! Criterion benches of the External Term Format codec and of the term syntax: the
//! statistics-driven companion of `benches/codec.rs` (which compares with Erlang's own
//! `term_to_binary/1` and `binary_to_term/1` instead).
//!
//! Groups, one bench id per term, each with `Throughput::Bytes` so Criterion prints MB/s:
//! - `etf_encode`: [`encode`] (a fresh `Vec` per call), throughput in encoded bytes;
//! - `etf_decode`: [`decode`] of those bytes;
//! - `etf_encoded_len`: [`encoded_len`], the size accounting of queued output;
//! - `message_encode_into`: `ClientMessage::encode_into` / `ServerMessage::encode_into`
//!   into a reused buffer, the path the client and the middle man take for every frame;
//! - `text_parse` / `text_print`: [`parse`] and `Display` of a term, throughput in text
//!   bytes.
//!
//! Terms: the seed session's messages (`{call, 1, {lookup, joe}}`, `{send, {store, joe,
//! "writing a book"}}`, `{reply, 1, {ok, "writing a book"}}`) and the bare request `{store,
//! joe, "writing a book"}`, a store of a 1 KiB binary value, and a nested map holding a
//! 100-element list of tuples and maps.
//!
//! Run with `cargo bench -p lib_chan_protocol --bench codec_criterion` (about a minute
//! and a half; add a filter such as `-- etf_decode` to run one group). `cargo test
//! --benches` runs each bench once, as a check.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lib_chan_protocol::etf::encoded_len;
use lib_chan_protocol::message::{ClientMessage, ServerMessage};
use lib_chan_protocol::{decode, encode, parse, Term};

/// One benchmarked term: its bench id and the term.
struct Case {
    name: &'static str,
    term: Term,
}

/// Items in the nested term's list.
const NESTED_ITEMS: i64 = 100;

fn lookup_joe() -> Term {
    Term::tuple([Term::atom("lookup"), Term::atom("joe")])
}

fn store_joe() -> Term {
    Term::tuple([
        Term::atom("store"),
        Term::atom("joe"),
        Term::string("writing a book"),
    ])
}

fn call_lookup() -> ClientMessage {
    ClientMessage::Call {
        id: 1,
        body: lookup_joe(),
    }
}

fn send_store() -> ClientMessage {
    ClientMessage::Send(store_joe())
}

fn reply_ok() -> ServerMessage {
    ServerMessage::Reply {
        id: 1,
        body: Term::tuple([Term::atom("ok"), Term::string("writing a book")]),
    }
}

/// `#{count => 100, items => [{item, 1, "abc"}, #{id => 2, v => [2, 4]}, ...]}`.
fn nested() -> Term {
    let items = (1..=NESTED_ITEMS).map(|i| {
        if i % 2 == 1 {
            Term::tuple([Term::atom("item"), Term::Int(i), Term::string("abc")])
        } else {
            Term::map([
                (Term::atom("id"), Term::Int(i)),
                (
                    Term::atom("v"),
                    Term::list([Term::Int(i), Term::Int(i * 2)]),
                ),
            ])
        }
    });
    Term::map([
        (Term::atom("count"), Term::Int(NESTED_ITEMS)),
        (Term::atom("items"), Term::list(items)),
    ])
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "{call,1,{lookup,joe}}",
            term: call_lookup().to_term(),
        },
        Case {
            name: "{send,{store,joe,\"..\"}}",
            term: send_store().to_term(),
        },
        Case {
            name: "{reply,1,{ok,\"..\"}}",
            term: reply_ok().to_term(),
        },
        Case {
            name: "{store,joe,\"..\"}",
            term: store_joe(),
        },
        Case {
            name: "{store,key,<<1 KiB>>}",
            term: Term::tuple([
                Term::atom("store"),
                Term::atom("key"),
                Term::binary((0..1024u32).map(|x| (x % 256) as u8).collect::<Vec<u8>>()),
            ]),
        },
        Case {
            name: "nested map+list 100",
            term: nested(),
        },
    ]
}

fn etf(c: &mut Criterion) {
    let cases = cases();
    // Encoded once, outside the timings; every term must round-trip.
    let encoded: Vec<Vec<u8>> = cases
        .iter()
        .map(|case| {
            let bytes = encode(&case.term).expect("encode");
            assert_eq!(encoded_len(&case.term), bytes.len(), "{}", case.name);
            assert!(
                decode(&bytes).expect("decode") == case.term,
                "{} round-trips",
                case.name
            );
            bytes
        })
        .collect();

    let mut group = c.benchmark_group("etf_encode");
    for (case, bytes) in cases.iter().zip(&encoded) {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            &case.term,
            |b, t| {
                b.iter(|| encode(black_box(t)).expect("encode"));
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("etf_decode");
    for (case, bytes) in cases.iter().zip(&encoded) {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            bytes.as_slice(),
            |b, bytes| {
                b.iter(|| decode(black_box(bytes)).expect("decode"));
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("etf_encoded_len");
    for (case, bytes) in cases.iter().zip(&encoded) {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            &case.term,
            |b, t| {
                b.iter(|| encoded_len(black_box(t)));
            },
        );
    }
    group.finish();
}

fn messages(c: &mut Criterion) {
    let client = [
        ("{call,1,{lookup,joe}}", call_lookup()),
        ("{send,{store,joe,\"..\"}}", send_store()),
    ];
    let reply = reply_ok();
    let mut group = c.benchmark_group("message_encode_into");
    let mut out = Vec::with_capacity(256);
    for (name, message) in &client {
        let mut bytes = Vec::new();
        message.encode_into(&mut bytes).expect("encode");
        assert_eq!(bytes, encode(&message.to_term()).expect("encode"), "{name}");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), message, |b, m| {
            b.iter(|| {
                out.clear();
                black_box(m).encode_into(&mut out).expect("encode");
                black_box(out.len())
            });
        });
    }
    let mut bytes = Vec::new();
    reply.encode_into(&mut bytes).expect("encode");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_with_input(
        BenchmarkId::from_parameter("{reply,1,{ok,\"..\"}}"),
        &reply,
        |b, m| {
            b.iter(|| {
                out.clear();
                black_box(m).encode_into(&mut out).expect("encode");
                black_box(out.len())
            });
        },
    );
    group.finish();

    // Reading a message: the whole term then `from_term`, against `decode`, which
    // leaves the wrapper tuple unbuilt. The same bytes, the same result.
    let mut group = c.benchmark_group("message_decode");
    let call = encode(&call_lookup().to_term()).expect("encode");
    assert_eq!(ClientMessage::decode(&call).expect("call"), call_lookup());
    group.throughput(Throughput::Bytes(call.len() as u64));
    group.bench_function("{call,..} decode+from_term", |b| {
        b.iter(|| ClientMessage::from_term(&decode(black_box(&call)).expect("term")).expect("call"))
    });
    group.bench_function("{call,..} ClientMessage::decode", |b| {
        b.iter(|| ClientMessage::decode(black_box(&call)).expect("call"))
    });
    let reply_bytes = encode(&reply.to_term()).expect("encode");
    assert_eq!(ServerMessage::decode(&reply_bytes).expect("reply"), reply);
    group.throughput(Throughput::Bytes(reply_bytes.len() as u64));
    group.bench_function("{reply,..} decode+from_term", |b| {
        b.iter(|| {
            ServerMessage::from_term(&decode(black_box(&reply_bytes)).expect("term"))
                .expect("reply")
        })
    });
    group.bench_function("{reply,..} ServerMessage::decode", |b| {
        b.iter(|| ServerMessage::decode(black_box(&reply_bytes)).expect("reply"))
    });
    group.finish();
}

fn text(c: &mut Criterion) {
    let terms = [
        ("{store,joe,\"..\"}", store_joe()),
        ("nested map+list 100", nested()),
    ];
    let texts: Vec<String> = terms.iter().map(|(_, t)| t.to_string()).collect();
    for ((name, term), text) in terms.iter().zip(&texts) {
        assert!(parse(text).expect("parse") == *term, "{name} reads back");
    }

    let mut group = c.benchmark_group("text_parse");
    for ((name, _), text) in terms.iter().zip(&texts) {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), text.as_str(), |b, s| {
            b.iter(|| parse(black_box(s)).expect("parse"));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("text_print");
    for ((name, term), text) in terms.iter().zip(&texts) {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), term, |b, t| {
            b.iter(|| black_box(t).to_string());
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default: 25 benches at about 3 s each. Criterion's own flags
    // (`--measurement-time`, `--sample-size`, ...) override these.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(2));
    targets = etf, messages, text
}
criterion_main!(benches);
