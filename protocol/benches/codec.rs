//! Encode and decode speed of our External Term Format codec, next to Erlang's own
//! `term_to_binary/1` and `binary_to_term/1` on the same terms.
//!
//! Terms: the seed's messages, a ~1 KiB binary payload and a 1 KiB charlist, a 64 KiB
//! binary, and a ~64 KiB list mixing small tuples and maps. Ours is timed with plain
//! `Instant` loops (median of several samples); Erlang's with `timer:tc` loops in a
//! compiled module run by one `erl` (which must be on `PATH`; without it only our numbers
//! are printed). Run with `cargo bench -p lib_chan_protocol --bench codec`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::ErrorKind;
use std::process::Command;
use std::time::{Duration, Instant};

use lib_chan_protocol::{decode, encode, Term};

/// One benchmarked term: its name, the same term as an Erlang expression, and in Rust.
struct Case {
    name: &'static str,
    erl: &'static str,
    term: Term,
}

/// Items in the mixed list, chosen so that it encodes to about 64 KiB.
const MIX_ITEMS: i64 = 3200;

fn cases() -> Vec<Case> {
    let a = Term::atom;
    let book = || Term::string("writing a book");
    vec![
        Case {
            name: "{call,1,{lookup,joe}}",
            erl: "{call, 1, {lookup, joe}}",
            term: Term::tuple([
                a("call"),
                Term::Int(1),
                Term::tuple([a("lookup"), a("joe")]),
            ]),
        },
        Case {
            name: "{send,{store,joe,\"..\"}}",
            erl: "{send, {store, joe, \"writing a book\"}}",
            term: Term::tuple([a("send"), Term::tuple([a("store"), a("joe"), book()])]),
        },
        Case {
            name: "{reply,1,{ok,\"..\"}}",
            erl: "{reply, 1, {ok, \"writing a book\"}}",
            term: Term::tuple([a("reply"), Term::Int(1), Term::tuple([a("ok"), book()])]),
        },
        Case {
            name: "{store,key,<<1 KiB>>}",
            erl: "{store, key, list_to_binary([X rem 256 || X <- lists:seq(0, 1023)])}",
            term: Term::tuple([
                a("store"),
                a("key"),
                Term::binary((0..1024u32).map(|x| (x % 256) as u8).collect::<Vec<u8>>()),
            ]),
        },
        Case {
            name: "charlist 1 KiB",
            erl: "[X rem 94 + 33 || X <- lists:seq(0, 1023)]",
            term: Term::list((0..1024).map(|x| Term::Int(x % 94 + 33))),
        },
        Case {
            name: "<<64 KiB>>",
            erl: "list_to_binary([X rem 251 || X <- lists:seq(0, 65535)])",
            term: Term::binary((0..65536u32).map(|x| (x % 251) as u8).collect::<Vec<u8>>()),
        },
        Case {
            name: "tuples+maps ~64 KiB",
            erl: "[case I rem 2 of 0 -> {item, I, \"abc\"}; 1 -> #{id => I, v => I * 2} end \
                  || I <- lists:seq(1, 3200)]",
            term: Term::list((1..=MIX_ITEMS).map(|i| {
                if i % 2 == 0 {
                    Term::tuple([a("item"), Term::Int(i), Term::string("abc")])
                } else {
                    Term::map([(a("id"), Term::Int(i)), (a("v"), Term::Int(i * 2))])
                }
            })),
        },
    ]
}

/// Nanoseconds per call of `f`: calibrated to ~20 ms per sample, median of 7 samples.
fn ns_per_iter(mut f: impl FnMut()) -> f64 {
    let mut iters: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        if start.elapsed() >= Duration::from_millis(20) {
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Erlang's numbers for one case.
struct ErlTiming {
    bytes: Vec<u8>,
    enc_ns: f64,
    dec_ns: f64,
}

const ERL_MODULE: &str = r#"
-module(lc_codec_bench).
-export([main/0]).

main() ->
    lists:foreach(
      fun({I, T}) ->
              B = term_to_binary(T),
              Enc = ns(fun(N) -> enc(N, T, 0) end),
              Dec = ns(fun(N) -> dec(N, B, 0) end),
              io:put_chars([integer_to_list(I), $\s, float_to_list(Enc, [{decimals, 2}]), $\s,
                            float_to_list(Dec, [{decimals, 2}]), $\s, binary:encode_hex(B), $\n])
      end,
      lists:zip(lists:seq(1, length(terms())), terms())).

enc(0, _T, Acc) -> Acc;
enc(N, T, Acc) -> enc(N - 1, T, Acc + byte_size(term_to_binary(T))).

dec(0, _B, Acc) -> Acc;
dec(N, B, Acc) ->
    T = binary_to_term(B),
    dec(N - 1, B, case T of [] -> Acc; _ -> Acc + 1 end).

%% Nanoseconds per iteration: calibrated to ~20 ms per sample, median of 7 samples.
ns(F) -> ns(F, 1).
ns(F, N) ->
    {Us, _} = timer:tc(fun() -> F(N) end),
    case Us >= 20000 of
        true ->
            Samples = lists:sort([begin {U, _} = timer:tc(fun() -> F(N) end), U end
                                  || _ <- lists:seq(1, 7)]),
            lists:nth(4, Samples) * 1000 / N;
        false -> ns(F, N * 2)
    end.
"#;

/// Runs Erlang's side in one `erl`; `None` when `erl` is not installed.
fn erlang_timings(cases: &[Case]) -> Option<Vec<ErlTiming>> {
    let dir = std::env::temp_dir().join(format!("lib_chan_codec_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let terms: Vec<&str> = cases.iter().map(|c| c.erl).collect();
    let source = format!(
        "{ERL_MODULE}\nterms() -> [\n  {}\n].\n",
        terms.join(",\n  ")
    );
    let path = dir.join("lc_codec_bench.erl");
    std::fs::write(&path, source).expect("write module");
    let eval = format!(
        "try \
           {{ok, M, Bin}} = compile:file(\"{}\", [binary, report_errors]), \
           {{module, M}} = code:load_binary(M, \"lc_codec_bench.erl\", Bin), \
           M:main(), \
           erlang:halt(0) \
         catch C:R:S -> io:format(standard_error, \"~p:~p~n~p~n\", [C, R, S]), erlang:halt(3) \
         end.",
        path.to_str().expect("UTF-8 temp path")
    );
    let result = Command::new("erl")
        .args(["-noshell", "-noinput", "-eval", &eval])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match result {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run erl: {e}"),
    };
    assert!(
        out.status.success(),
        "erl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("ASCII");
    let timings: Vec<ErlTiming> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 4, "erl line {line:?}");
            let hex = f[3];
            ErlTiming {
                enc_ns: f[1].parse().expect("enc ns"),
                dec_ns: f[2].parse().expect("dec ns"),
                bytes: (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).expect("hex"))
                    .collect(),
            }
        })
        .collect();
    assert_eq!(timings.len(), cases.len(), "one line per case from erl");
    Some(timings)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let cases = cases();
    let mut ours = Vec::new();
    let mut notes = Vec::new();
    for case in &cases {
        let bytes = encode(&case.term).expect("encode");
        assert!(
            decode(&bytes).expect("decode") == case.term,
            "{}",
            case.name
        );
        if quick {
            continue;
        }
        let enc_ns = ns_per_iter(|| {
            black_box(encode(black_box(&case.term)).unwrap());
        });
        let dec_ns = ns_per_iter(|| {
            black_box(decode(black_box(&bytes)).unwrap());
        });
        ours.push((bytes.len(), enc_ns, dec_ns));
        // Copying a large binary out of the payload is memcpy, whose speed depends on
        // where source and destination sit in their pages (glibc's `rep movsb` path is
        // very slow when the destination is a few bytes past the source modulo 4096).
        // Say so when the payload's position changes the picture.
        if bytes.len() >= 4096 {
            let mut shifted = vec![0u8; bytes.len() + 4096];
            let mut timings = Vec::new();
            let mut differs = false;
            for shift in [1, 17, 333, 2049] {
                shifted[shift..shift + bytes.len()].copy_from_slice(&bytes);
                let input = &shifted[shift..shift + bytes.len()];
                let ns = ns_per_iter(|| {
                    black_box(decode(black_box(input)).unwrap());
                });
                timings.push(format!("{shift}: {ns:.0}"));
                differs |= ns.max(dec_ns) > 1.5 * ns.min(dec_ns);
            }
            if differs {
                notes.push(format!(
                    "note: decode of {} depends on the input's address: {dec_ns:.0} ns as \
                     encoded; copied at other offsets (offset: ns) {}",
                    case.name,
                    timings.join(", ")
                ));
            }
        }
    }
    if quick {
        println!("codec bench: terms round-trip; run `cargo bench` for timings");
        return;
    }

    let erl = erlang_timings(&cases);
    if let Some(erl) = &erl {
        for (case, t) in cases.iter().zip(erl) {
            // The Erlang expression and the Rust term must be the same term.
            assert!(
                decode(&t.bytes).ok().as_ref() == Some(&case.term),
                "Erlang's {} is not our term",
                case.name
            );
        }
    }

    let mut table = String::new();
    writeln!(
        table,
        "| term | bytes | ours enc ns | erl enc ns | enc ratio | ours dec ns | erl dec ns | dec ratio | ours enc MB/s | ours dec MB/s |"
    )
    .unwrap();
    writeln!(table, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
    for (k, case) in cases.iter().enumerate() {
        let (len, enc_ns, dec_ns) = ours[k];
        let mbs = |ns: f64| len as f64 / ns * 1000.0;
        let (erl_enc, enc_ratio, erl_dec, dec_ratio) = match &erl {
            Some(erl) => (
                format!("{:.0}", erl[k].enc_ns),
                format!("{:.2}", enc_ns / erl[k].enc_ns),
                format!("{:.0}", erl[k].dec_ns),
                format!("{:.2}", dec_ns / erl[k].dec_ns),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        writeln!(
            table,
            "| {} | {len} | {enc_ns:.0} | {erl_enc} | {enc_ratio} | {dec_ns:.0} | {erl_dec} | {dec_ratio} | {:.0} | {:.0} |",
            case.name,
            mbs(enc_ns),
            mbs(dec_ns)
        )
        .unwrap();
    }
    print!("{table}");
    for note in &notes {
        println!("{note}");
    }
    println!(
        "ratio = ours / Erlang's time (below 1: we are faster); MB = 10^6 bytes of encoded term."
    );
    match &erl {
        Some(_) => println!(
            "Erlang: term_to_binary/1 and binary_to_term/1 of {} in a compiled module, timer:tc, median of 7.",
            erlang_release().unwrap_or_else(|| "OTP ?".into())
        ),
        None => println!(
            "note: `erl` is not on PATH, so Erlang's numbers are missing \
             (install Debian's package `erlang-base`)."
        ),
    }
}

fn erlang_release() -> Option<String> {
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-noinput",
            "-eval",
            "io:put_chars(erlang:system_info(otp_release)), erlang:halt(0).",
        ])
        .output()
        .ok()?;
    Some(format!(
        "OTP {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}
