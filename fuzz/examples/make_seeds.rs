//! Writes the seed corpora in `corpus/<target>/` (run from `fuzz/`:
//! `cargo run --example make_seeds`). The terms are written in Erlang syntax here and
//! encoded with the project's own encoder, so the binary seeds are valid by construction.
//! Keep them few and small: the fuzzer finds the rest.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use lib_chan_protocol::{etf, parse, FrameCodec};

/// A frame holding the term written as `text`.
fn frame(text: &str) -> Vec<u8> {
    let term = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let mut buf = BytesMut::new();
    FrameCodec::new(1 << 20, 1 << 20)
        .encode_term(&term, &mut buf)
        .expect("encodes");
    buf.to_vec()
}

fn frames(texts: &[&str]) -> Vec<u8> {
    texts.iter().flat_map(|t| frame(t)).collect()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("write seed");
}

const START: &str = r#"{start_service, nameServer, <<"ABXy45">>, ""}"#;

fn main() {
    // etf_decode: payloads, version byte included.
    let etf = |text: &str| etf::encode(&parse(text).expect(text)).expect("encodes");
    write("etf_decode", "start_service", &etf(START));
    write(
        "etf_decode",
        "reply",
        &etf(r#"{reply, 1, {ok, "writing a book"}}"#),
    );
    write(
        "etf_decode",
        "mixed",
        &etf(
            r#"#{a => 1.5, <<"b">> => [1, 2, 300, -1], 'héllo' => -9223372036854775808,
                 {} => 4294967296, "s" => [[], {x}], '日本' => <<"é"/utf8>>}"#,
        ),
    );
    // What OTP 25 writes: Latin-1 ATOM_EXT, SMALL_ATOM, and a LARGE_TUPLE.
    write(
        "etf_decode",
        "otp25_atoms",
        &[
            131, 104, 2, 100, 0, 5, b'h', 0xE9, b'l', b'l', b'o', 115, 2, b'o', b'k',
        ],
    );
    let mut large = vec![131, 105, 0, 0, 1, 0];
    large.extend(std::iter::repeat_n([97, 7], 256).flatten());
    write("etf_decode", "large_tuple", &large);

    // frame_decoder: limit byte, 4 bytes of chunking seed, then the stream.
    let mut s = vec![0xFF, 1, 2, 3, 4];
    s.extend(frames(&[START, "{call, 1, {lookup, joe}}", "close"]));
    s.extend([0, 0, 0, 9, 131]); // a frame cut short
    write("frame_decoder", "session", &s);
    let mut s = vec![2, 9, 9, 9, 9]; // limit 17 bytes
    s.extend(frames(&["{ping, 1}"]));
    s.extend([0, 0, 0, 18]); // one over the limit
    write("frame_decoder", "over_limit", &s);
    let mut s = vec![0x40, 7, 0, 0, 0];
    s.extend(frames(&["ok"]));
    s.extend([0, 0, 0, 0]); // empty frame
    write("frame_decoder", "empty_frame", &s);

    // text_parse: Erlang syntax, as typed at the prompt.
    write(
        "text_parse",
        "seed_session",
        br#"{store, joe, "writing a book"}."#,
    );
    write(
        "text_parse",
        "everything",
        "#{a => 1.5e-3, <<\"b\"/utf8>> => [1, 2 | [3]], 'héllo wörld' => -16#FF,\n  \
         k => ~\"sigil\", s => ~s\"x\", c => $a, e => '\\n', n => 1_000 % comment\n} ."
            .as_bytes(),
    );
    write(
        "text_parse",
        "binaries",
        r#"{<<"\x{41}\101\s">>, <<1, 255, $x, "ab" "cd">>, <<"é"/utf8, 16#10FFFF/utf8>>, "\^a\e", -0.0, 'end'}"#
            .as_bytes(),
    );

    // config: lib_chan.conf, parsed as DIR/lib_chan.conf next to server.pem and server.key.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$pE4qlv5JQVDJ9P2lcnwh8A$b6xwCY/Oz1YilY2Z99lf3FFLJTfZU3fSoAagjN+CNqo";
    write(
        "config",
        "minimal",
        format!(
            "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\n[[service]]\nname = \"nameServer\"\n\
             password = \"{hash}\"\nhandler = \"mod_name_server\"\n"
        )
        .as_bytes(),
    );
    write(
        "config",
        "full",
        format!(
            "port = 1234\nbind = \"::1\"\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             [limits]\ntls_handshake_timeout = 5\nhandshake_timeout = 10.5\nmax_frame = 1048576\n\
             max_connections = 100\nmax_password_checks = 2\npassword_check_queue = 0\n\
             max_calls_in_flight = 1024\noutbound_queue = 1024\nwrite_timeout = 10\nidle_timeout = 0\n\
             shutdown_grace = 5\noutbound_bytes = 4096\ntcp_keepalive = 0\nunauth_drop_start = 64\n\
             max_unauth = 256\nmax_unauth_per_source = 8\npenalty_auth_failed = 2\npenalty_timeout = 1\n\
             penalty_no_attempt = 0.5\npenalty_threshold = 30\npenalty_max = 600\n\
             penalty_max_sources = 4096\npenalty_exempt = [\"127.0.0.1\", \"2001:db8::/32\"]\n\
             [[service]]\nname = \"nameServer\"\npassword = \"{hash}\"\nhandler = \"mod_name_server\"\n\
             args = \"{{a, [1, 2], <<\\\"x\\\">>}}\"\nstore = \"file:names.redb\"\n\
             [[service]]\nname = \"echo\"\npassword = \"{hash}\"\nhandler = \"mod_echo\"\n\
             [[service]]\nname = \"chat\"\npassword = \"{hash}\"\nhandler = \"mod_chat\"\n\
             [[service]]\nname = \"rpc\"\npassword = \"{hash}\"\nhandler = \"mod_rpc\"\nargs = \"nameServer\"\n\
             allow = [\"kvs:store/2\", \"kvs:lookup/1\", \"erlang:node/0\"]\n"
        )
        .as_bytes(),
    );

    // connection: a flags byte (see fuzz_targets/connection.rs), then client frames.
    let session = |flags: u8, texts: &[&str]| {
        let mut s = vec![flags];
        s.extend(frames(texts));
        s
    };
    write(
        "connection",
        "name_server",
        &session(
            0x00,
            &[
                START,
                r#"{send, {store, joe, "writing a book"}}"#,
                "{call, 1, {lookup, joe}}",
                "{call, 2, {lookup, jim}}",
                "{ping, 3}",
                "{call, 4, {watch, joe}}",
                "{call, 5, {store, joe, 1, #{owner => channel}}}",
                "{call, 6, names}",
                "{send, {lookup, joe}}",
                "{call, 7, {delete, joe}}",
                "close",
            ],
        ),
    );
    write(
        "connection",
        "echo",
        &session(
            0x40,
            &[
                r#"{start_service, <<"echo">>, "ABXy45", []}"#,
                "{call, 1, {any, [term], 1.5}}",
                "{send, x}",
                "close",
            ],
        ),
    );
    write(
        "connection",
        "chat",
        &session(
            0x00,
            &[
                r#"{start_service, chat, <<"ABXy45">>, []}"#,
                "{call, 1, {login, room, joe}}",
                r#"{call, 2, {relay, "hi"}}"#,
                "{call, 3, members}",
                "{call, 4, logout}",
                "close",
            ],
        ),
    );
    write(
        "connection",
        "rpc",
        &session(
            0xF0,
            &[
                r#"{start_service, rpc, <<"ABXy45">>, []}"#,
                "{call, 1, {apply, kvs, store, [k, v]}}",
                "{call, 2, {apply, kvs, lookup, [k]}}",
                "{call, 3, {apply, erlang, node, []}}",
                "close",
            ],
        ),
    );
    write(
        "connection",
        "pings_then_wrong_password",
        &session(
            0x00,
            &[
                "{ping, 1}",
                "{ping, 2}",
                r#"{start_service, nameServer, "wrong", []}"#,
            ],
        ),
    );
    // Version 2 forms: a challenge, then named-user logins (refused: the fuzz config has
    // no users) and a service password in the 5-tuple form.
    write(
        "connection",
        "challenge_then_user_logins",
        &session(
            0x00,
            &[
                "{challenge, 1}",
                "{challenge, 2}",
                r#"{start_service, nameServer, {user, alice, {ed25519, <<"0123456789012345678901234567890123456789012345678901234567890123">>}}, ""}"#,
            ],
        ),
    );
    write(
        "connection",
        "five_tuple_service_password",
        &session(
            0x00,
            &[
                r#"{start_service, nameServer, <<"ABXy45">>, "", #{session => new}}"#,
                "{call, 1, {lookup, joe}}",
                "close",
            ],
        ),
    );
    // Kept open after pipelined calls: the idle timeout ends it.
    write(
        "connection",
        "idle",
        &session(
            0x01,
            &[
                START,
                "{call, 1, {lookup, joe}}",
                "{call, 2, {lookup, joe}}",
            ],
        ),
    );
    // Never reads after the welcome: answers fill the pipe, the write timeout ends it.
    let store = format!("{{call, 1, {{store, big, <<\"{}\">>}}}}", "x".repeat(400));
    let lookups: Vec<String> = (2..6)
        .map(|i| format!("{{call, {i}, {{lookup, big}}}}"))
        .collect();
    let mut calls = vec![START, store.as_str()];
    calls.extend(lookups.iter().map(String::as_str));
    write("connection", "slow_consumer", &session(0x03, &calls));
}
