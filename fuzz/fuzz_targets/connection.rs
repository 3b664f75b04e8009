//! The connection state machine: the `start_service` handshake, authentication and the
//! middle man, driven by arbitrary client bytes over an in-memory stream
//! (`Server::serve_stream`, which skips TCP and TLS).
//!
//! Input: byte 0 is a set of flags, the rest is what the client sends after TLS.
//! - bit 0: keep the client's side open after the input, so that the server's deadlines
//!   (pre-auth 10 s, idle 60 s) end the session; otherwise the client half-closes.
//! - bit 1: stop reading the server after its first answer that is not a pong, until
//!   the session ends (a slow consumer: the write timeout and the byte budget).
//! - bits 4 to 7: the client writes in chunks of `2^n` bytes, yielding between them.
//!
//! One `Server` is built once with the built-in services (`nameServer`, `echo`, `chat`,
//! `rpc`, all with the password `ABXy45`), small limits and in-memory development
//! certificates. Each input runs on a fresh current-thread runtime with paused time, so
//! deadlines fire as soon as everything waits. Password checks run argon2 on the server's
//! own threads, which tokio's clock cannot see: while a `start_service` frame is being
//! checked, a blocking task holds the clock still. A wrong password (or unknown service)
//! costs one real argon2 verification, about 30 ms, more under ASan; the right one is
//! verified once, then found in the server's verified-credential cache. About 90 inputs a
//! second with ASan.
//!
//! `LIB_CHAN_FUZZ_DEBUG=1 cargo +nightly fuzz run connection FILE` prints how the session
//! ended and what the server sent.
//!
//! Properties: no panic anywhere (server, handlers); the session ends within a day of
//! virtual time after the client stops; every server frame is a well-formed frame of
//! valid ETF; the handshake answers are pongs then one welcome or one refusal (and nothing
//! after a refusal); after the welcome, every frame is a server message; no call or ping
//! reference is answered more often than the client used it.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::BytesMut;
use lib_chan_protocol::message::{HandshakeReply, ServerMessage};
use lib_chan_protocol::{etf, FrameCodec, FrameError, Term, HANDSHAKE_MAX_FRAME};
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{auth, Config, Server, ServiceConfig, TlsSource};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::{Builder, Runtime};
use tokio_util::codec::Decoder;

const PASSWORD: &str = "ABXy45";
const MAX_FRAME: usize = 16 * 1024;
/// Bytes the in-memory pipe holds each way: small, so that both sides block often.
const PIPE: usize = 1024;

struct Fixture {
    server: Server,
    _runtime: Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let certs = DevCerts::generate(&["localhost".to_string()]).expect("certificates");
    let mut config = Config::new(
        "127.0.0.1".parse().expect("address"),
        0,
        TlsSource::Pem {
            cert: certs.server_pem,
            key: certs.server_key_pem,
        },
    );
    let hash = auth::hash_password(PASSWORD.as_bytes());
    let not_used = Term::atom("notUsed");
    let mut rpc = ServiceConfig::new("rpc", &hash, "mod_rpc", Term::atom("nameServer"));
    rpc.options.allow = ["kvs:store/2", "kvs:lookup/1", "erlang:node/0"]
        .map(String::from)
        .to_vec();
    config.services = vec![
        ServiceConfig::new("nameServer", &hash, "mod_name_server", not_used.clone()),
        ServiceConfig::new("echo", &hash, "mod_echo", not_used.clone()),
        ServiceConfig::new("chat", &hash, "mod_chat", not_used),
        rpc,
    ];
    let l = &mut config.limits;
    l.max_connections = 16;
    l.max_password_checks = 1;
    l.max_frame = MAX_FRAME;
    l.max_calls_in_flight = 8;
    l.outbound_queue = 8;
    l.outbound_bytes = 4096;
    l.idle_timeout = Some(Duration::from_secs(60));
    // The listener is never used: sessions come through serve_stream.
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(Server::bind(config, &lib_chan_services::registry()))
        .expect("server starts");
    Fixture {
        server,
        _runtime: runtime,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let server = &FIXTURE.server;
    let runtime = Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(session(server, flags, input));
});

/// The frames of `bytes` up to the first that breaks the framing, with `max`.
fn frames(bytes: &[u8], max: usize) -> Vec<Term> {
    let mut codec = FrameCodec::new(max, max);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Ok(t) = etf::decode(&frame) {
            out.push(t);
        }
    }
    out
}

fn tagged<'a>(t: &'a Term, tag: &str) -> Option<&'a [Term]> {
    match t.as_tuple() {
        Some([first, rest @ ..]) if first.is_atom(tag) => Some(rest),
        _ => None,
    }
}

async fn session(server: &Server, flags: u8, input: &[u8]) {
    let keep_open = flags & 1 != 0;
    let stall = flags & 2 != 0;
    let chunk = 1usize << (flags >> 4);

    // Which references the client uses, and how often: no answer may outnumber them.
    let mut calls: HashMap<Term, usize> = HashMap::new();
    let mut pings: HashMap<Term, usize> = HashMap::new();
    let sent = frames(input, MAX_FRAME.max(HANDSHAKE_MAX_FRAME));
    for t in &sent {
        if let Some([r, _]) = tagged(t, "call") {
            *calls.entry(r.clone()).or_default() += 1;
        }
        if let Some([r]) = tagged(t, "ping") {
            *pings.entry(r.clone()).or_default() += 1;
        }
    }
    // Will the server run argon2? Then hold the clock until it has answered.
    let checks_password = frames(input, HANDSHAKE_MAX_FRAME)
        .iter()
        .any(|t| matches!(tagged(t, "start_service"), Some([_, _, _])));
    let (answered_tx, answered_rx) = std::sync::mpsc::channel::<()>();
    let clock_hold = checks_password.then(|| {
        tokio::task::spawn_blocking(move || {
            // Also bounded in real time, in case the guess above was wrong.
            let _ = answered_rx.recv_timeout(Duration::from_secs(2));
        })
    });

    let (client, server_side) = tokio::io::duplex(PIPE);
    let (mut rd, mut wr) = tokio::io::split(client);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let peer: SocketAddr = "192.0.2.7:40000".parse().expect("address");

    let serve = async {
        let reason = server.serve_stream(server_side, peer).await;
        let _ = done_tx.send(true);
        reason
    };
    let write = async {
        let mut done = done_rx.clone();
        for piece in input.chunks(chunk) {
            if wr.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if keep_open {
            let _ = done.wait_for(|d| *d).await;
        } else {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut done = done_rx.clone();
        let mut answered = Some(answered_tx);
        let mut codec = FrameCodec::new(usize::MAX, usize::MAX);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut truncated = false;
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    if let Err(e) = codec.decode_eof(&mut buf) {
                        assert!(
                            matches!(e, FrameError::TruncatedAtEof { .. }),
                            "server output: {e}"
                        );
                        truncated = true;
                    }
                    break;
                }
                Ok(_) => {}
            }
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let t = match etf::decode(&frame) {
                            Ok(t) => t,
                            Err(e) => panic!("the server sent a bad term: {e}"),
                        };
                        if tagged(&t, "pong").is_none() && answered.take().is_some() && stall {
                            // A slow consumer from here on.
                            let _ = done.wait_for(|d| *d).await;
                        }
                        out.push(t);
                    }
                    Ok(None) => break,
                    Err(e) => panic!("the server sent a bad frame: {e}"),
                }
            }
        }
        drop(answered);
        (out, truncated)
    };
    let all = async { tokio::join!(serve, write, read) };
    let Ok((reason, (), (out, truncated))) =
        tokio::time::timeout(Duration::from_secs(86_400), all).await
    else {
        panic!("the session did not end within a day of virtual time");
    };
    if let Some(hold) = clock_hold {
        let _ = hold.await;
    }

    if std::env::var_os("LIB_CHAN_FUZZ_DEBUG").is_some() {
        eprintln!("flags {flags:#04x}, session ended: {reason}");
        for t in &out {
            eprintln!("  S: {t}");
        }
    }
    // A partial last frame only when the server gave up writing to a slow consumer.
    assert!(
        !truncated || reason == "slow_consumer",
        "partial frame at the end, session ended with {reason}"
    );
    let mut frames = out.iter();
    let mut welcomed = false;
    for t in frames.by_ref() {
        match HandshakeReply::from_term(t) {
            Ok(HandshakeReply::Pong(_) | HandshakeReply::Challenge { .. }) => {}
            Ok(HandshakeReply::Welcome(w)) => {
                assert_eq!(w.max_frame, MAX_FRAME);
                welcomed = true;
                break;
            }
            Ok(HandshakeReply::Refused(_)) => break,
            Err(e) => panic!("not a handshake answer: {e}"),
        }
    }
    if !welcomed {
        let rest: Vec<_> = frames.collect();
        assert!(rest.is_empty(), "frames after a refusal: {rest:?}");
        return;
    }
    let mut answers: HashMap<Term, usize> = HashMap::new();
    let mut pongs: HashMap<Term, usize> = HashMap::new();
    for t in frames {
        if let Err(e) = ServerMessage::from_term(t) {
            panic!("not a server message: {e}");
        }
        if let Some([r, _]) = tagged(t, "reply").or(tagged(t, "error")) {
            *answers.entry(r.clone()).or_default() += 1;
        }
        if let Some([r]) = tagged(t, "pong") {
            *pongs.entry(r.clone()).or_default() += 1;
        }
    }
    for (r, n) in answers {
        let used = calls.get(&r).copied().unwrap_or(0);
        assert!(n <= used, "call {r} answered {n} times, made {used} times");
    }
    for (r, n) in pongs {
        let used = pings.get(&r).copied().unwrap_or(0);
        assert!(n <= used, "ping {r} answered {n} times, sent {used} times");
    }
    // Handler panics abort the process (libfuzzer-sys's panic hook) before this.
    assert_ne!(reason, "handler_crashed");
}
