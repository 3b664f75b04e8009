//! The server as a raw TLS peer sees it: frames and terms on the wire, byte for byte.
//!
//! These tests pin PROTOCOL.md sections 4 to 6 without the Rust client in the way:
//! the handshake answers, the error paths, the middle man's call bookkeeping.

mod common;

use common::{within, RawPeer, Seen, TestServer, PASSWORD};
use lib_chan_protocol::{etf, parse, term, Term};

fn start_service(service: &str, password: &str) -> Term {
    Term::tuple([
        term!(start_service),
        Term::atom(service),
        Term::binary(password),
        Term::string(""),
    ])
}

async fn authenticated(server: &TestServer, service: &str) -> RawPeer {
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    peer.send(&start_service(service, PASSWORD)).await;
    let welcome = peer.recv().await.expect("welcome");
    assert_eq!(welcome.as_tuple().unwrap()[0], term!(ok), "{welcome}");
    peer
}

#[tokio::test]
async fn seed_session_frame_by_frame() {
    let server = TestServer::start().await;
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    peer.send(&parse(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#).unwrap())
        .await;
    let welcome = peer.recv().await.unwrap();
    let info = &welcome.as_tuple().unwrap()[1];
    assert_eq!(welcome.as_tuple().unwrap()[0], term!(ok));
    assert_eq!(info.map_get(&term!(protocol)), Some(&Term::Int(1)));
    assert_eq!(info.map_get(&term!(max_frame)), Some(&Term::Int(1048576)));
    assert!(info.map_get(&term!(server)).unwrap().as_binary().is_some());

    peer.send(&parse(r#"{send, {store, joe, "writing a book"}}"#).unwrap())
        .await;
    peer.send(&parse("{call, 1, {lookup, joe}}").unwrap()).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        r#"{reply,1,{ok,"writing a book"}}"#
    );
    peer.send(&parse("{call, 2, {lookup, jim}}").unwrap()).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        "{reply,2,undefined}"
    );
    // A lookup sent one-way answers with {send, Answer}.
    peer.send(&parse("{send, {lookup, joe}}").unwrap()).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        r#"{send,{ok,"writing a book"}}"#
    );
}

#[tokio::test]
async fn every_kind_of_auth_failure_looks_identical() {
    let server = TestServer::start().await;
    let long = "x".repeat(3900);
    let cases: Vec<(&str, Term)> = vec![
        ("wrong password", start_service("nameServer", "wrong")),
        ("unknown service", start_service("noSuchService", PASSWORD)),
        ("empty password", start_service("nameServer", "")),
        ("3.9 KB password", start_service("nameServer", &long)),
        (
            "password of the wrong type",
            Term::tuple([
                term!(start_service),
                term!(nameServer),
                Term::Int(42),
                Term::nil(),
            ]),
        ),
        (
            "service of the wrong type",
            Term::tuple([
                term!(start_service),
                Term::Int(7),
                Term::binary(PASSWORD),
                Term::nil(),
            ]),
        ),
    ];
    let mut replies = Vec::new();
    let mut times = Vec::new();
    for (what, hello) in &cases {
        let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
        let started = std::time::Instant::now();
        peer.send(hello).await;
        replies.push(peer.recv_payload().await.expect("an answer"));
        times.push(started.elapsed());
        assert!(peer.closed().await, "{what}: server closes after refusing");
    }
    assert_eq!(
        etf::decode(&replies[0]).unwrap().to_string(),
        "{error,auth_failed}"
    );
    for (i, (what, _)) in cases.iter().enumerate() {
        assert_eq!(replies[i], replies[0], "{what}: byte-identical refusal");
        println!("{what}: {:?}", times[i]);
    }
    // Each refusal paid for an argon2 verification (a dummy one where there was nothing
    // to verify): none is answered in a small fraction of a real check's time.
    let real = times[0];
    for (i, (what, _)) in cases.iter().enumerate() {
        assert!(
            times[i] * 4 >= real,
            "{what} answered in {:?}, a real check took {real:?}",
            times[i]
        );
    }
}

#[tokio::test]
async fn malformed_first_frames_get_bad_request() {
    let server = TestServer::start().await;
    // Not ETF at all; a valid term that is not start_service; a password of wrong type.
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1".to_vec(),
        etf::encode(&term!({hello, world})).unwrap(),
        vec![131, 103, 0, 0, 0, 0], // a pid tag
    ];
    for payload in cases {
        let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
        peer.send_payload(&payload).await;
        assert_eq!(
            peer.recv().await.map(|t| t.to_string()).as_deref(),
            Some("{error,bad_request}"),
            "payload {payload:?}"
        );
        assert!(peer.closed().await);
    }
    // Over the 4 KiB pre-handshake limit: refused on the header alone.
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    peer.send_raw(&[0, 0, 0x10, 0x01]).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        "{error,frame_too_large}"
    );
    assert!(peer.closed().await);
}

#[tokio::test]
async fn ping_before_handshake_answers_pong_and_still_allows_start_service() {
    let server = TestServer::start().await;
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    peer.send(&term!({ping, 42})).await;
    assert_eq!(peer.recv().await.unwrap(), term!({pong, 42}));
    peer.send(&start_service("echo", PASSWORD)).await;
    assert_eq!(peer.recv().await.unwrap().as_tuple().unwrap()[0], term!(ok));
    peer.send(&term!({ping, 7})).await;
    assert_eq!(peer.recv().await.unwrap(), term!({pong, 7}));
}

#[tokio::test]
async fn handshake_deadline_answers_timeout() {
    let server = TestServer::start_with(|c| {
        c.limits.handshake_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    assert_eq!(peer.recv().await.unwrap().to_string(), "{error,timeout}");
    assert!(peer.closed().await);
}

#[tokio::test]
async fn bad_input_after_the_handshake_gets_a_reason_then_close() {
    let server = TestServer::start().await;
    for (payload, reason) in [
        (vec![131, 200], "bad_term"),
        (
            etf::encode(&term!({call, notaref, x})).unwrap(),
            "bad_message",
        ),
        (etf::encode(&term!(hello)).unwrap(), "bad_message"),
    ] {
        let mut peer = authenticated(&server, "echo").await;
        peer.send_payload(&payload).await;
        assert_eq!(
            peer.recv().await.unwrap().to_string(),
            format!("{{error,{reason}}}")
        );
        assert!(peer.closed().await);
    }
    // A frame over max_frame after the handshake.
    let mut peer = authenticated(&server, "echo").await;
    peer.send_raw(&(2u32 << 20).to_be_bytes()).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        "{error,frame_too_large}"
    );
    // The server is still healthy.
    let mut peer = authenticated(&server, "echo").await;
    peer.send(&term!({call, 1, hi})).await;
    assert_eq!(peer.recv().await.unwrap(), term!({reply, 1, hi}));
}

#[tokio::test]
async fn replies_match_refs_and_may_come_out_of_order() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "test").await;
    peer.send(&term!({call, 10, {sleep, 300, slow}})).await;
    peer.send(&term!({call, 11, {echo, fast}})).await;
    assert_eq!(peer.recv().await.unwrap(), term!({reply, 11, fast}));
    assert_eq!(peer.recv().await.unwrap(), term!({reply, 10, slow}));
}

#[tokio::test]
async fn unanswered_and_crashed_calls_get_errors() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "test").await;
    peer.send(&term!({call, 1, drop})).await;
    assert_eq!(peer.recv().await.unwrap().to_string(), "{error,1,no_reply}");
    peer.send(&term!({call, 2, nonsense})).await;
    assert_eq!(
        peer.recv().await.unwrap().to_string(),
        "{error,2,{bad_request,nonsense}}"
    );

    // A held call, then a crash: both get handler_crashed, then close.
    let mut other = authenticated(&server, "test").await;
    peer.send(&term!({call, 3, hold})).await;
    peer.send(&term!({call, 4, crash})).await;
    let mut got = vec![
        peer.recv().await.unwrap().to_string(),
        peer.recv().await.unwrap().to_string(),
    ];
    got.sort();
    assert_eq!(
        got,
        ["{error,3,handler_crashed}", "{error,4,handler_crashed}"]
    );
    assert_eq!(peer.recv().await.unwrap(), term!(close));
    assert!(peer.closed().await);
    // The other connection did not notice.
    other.send(&term!({call, 9, {echo, still_here}})).await;
    assert_eq!(other.recv().await.unwrap(), term!({reply, 9, still_here}));
}

#[tokio::test]
async fn handler_close_fails_held_calls_then_sends_close() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "test").await;
    peer.send(&term!({call, 1, hold})).await;
    peer.send(&term!({call, 2, close})).await;
    let mut got = vec![
        peer.recv().await.unwrap().to_string(),
        peer.recv().await.unwrap().to_string(),
    ];
    got.sort();
    assert_eq!(got, ["{error,1,no_reply}", "{error,2,no_reply}"]);
    assert_eq!(peer.recv().await.unwrap(), term!(close));
    assert!(peer.closed().await);
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_answered_busy() {
    let server = TestServer::start_with(|c| c.limits.max_calls_in_flight = 2).await;
    let mut peer = authenticated(&server, "test").await;
    peer.send(&term!({call, 1, hold})).await;
    peer.send(&term!({call, 2, hold})).await;
    peer.send(&term!({call, 3, {echo, x}})).await;
    assert_eq!(peer.recv().await.unwrap().to_string(), "{error,3,busy}");
}

#[tokio::test]
async fn a_client_that_vanishes_mid_call_leaves_the_server_healthy() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "test").await;
    assert_eq!(server.next_seen().await, Seen::Started(Term::string("")));
    peer.send(&term!({call, 1, hold})).await;
    peer.send(&term!({send, note})).await;
    assert_eq!(server.next_seen().await, Seen::Send(term!(note)));
    drop(peer);
    // The handler is told the channel closed (lib_chan's {chan_closed, MM}).
    assert_eq!(server.next_seen().await, Seen::Closed);
    let mut again = authenticated(&server, "test").await;
    again.send(&term!({call, 1, {echo, ok}})).await;
    assert_eq!(
        within("reply", again.recv()).await.unwrap(),
        term!({reply, 1, ok})
    );
}

#[tokio::test]
async fn client_close_tells_the_handler() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "test").await;
    assert!(matches!(server.next_seen().await, Seen::Started(_)));
    peer.send(&term!(close)).await;
    assert_eq!(server.next_seen().await, Seen::Closed);
    assert!(peer.closed().await);
}

/// Many frames in one write, as a pipelining client sends them: the middle man hands
/// them over in order (each lookup sees the store before it, casts included), answers
/// every call, and a `close` at the end of the same write still lets all of them be
/// answered before the server closes.
#[tokio::test]
async fn a_burst_of_frames_in_one_write_is_handled_in_order_then_closed() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "nameServer").await;
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    let mut frame = |t: Term| {
        let payload = etf::encode(&t).unwrap();
        burst.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        burst.extend_from_slice(&payload);
    };
    for i in 0..400i64 {
        let key = term!({burst, (i % 7)});
        if i % 3 == 0 {
            frame(term!({send, {store, (key.clone()), (i)}}));
        } else {
            frame(Term::tuple([
                term!(call),
                Term::Int(2 * i),
                term!({store, (key.clone()), (i)}),
            ]));
            expected.push(format!("{{reply,{},true}}", 2 * i));
        }
        frame(Term::tuple([
            term!(call),
            Term::Int(2 * i + 1),
            term!({lookup, (key)}),
        ]));
        expected.push(format!("{{reply,{},{{ok,{i}}}}}", 2 * i + 1));
    }
    frame(term!(close));
    // Bigger than one TLS record, so the server reads it in several pieces too.
    assert!(burst.len() > 16 * 1024, "{}", burst.len());
    peer.send_raw(&burst).await;
    let mut got = Vec::new();
    while let Some(t) = peer.recv().await {
        if t == term!(close) {
            break;
        }
        got.push(t.to_string());
    }
    // The memory store answers in order of arrival.
    assert_eq!(got, expected);
    assert!(peer.closed().await);
}

/// The server picks TLS13_AES_128_GCM_SHA256 (SHA-NI and fewer AES rounds) even from a
/// client that prefers AES-256-GCM-SHA384, as rustls's, OpenSSL's and Erlang's do; the
/// seed session still runs over it.
#[tokio::test]
async fn the_server_picks_aes_128_gcm_whatever_the_client_prefers() {
    let server = TestServer::start().await;
    let mut peer = authenticated(&server, "nameServer").await;
    let (_, tls) = peer.reader.get_ref().get_ref();
    let client_order: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(
        client_order.first(),
        Some(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        "the client prefers another suite: this test no longer shows the server's choice"
    );
    assert_eq!(
        tls.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    peer.send(&term!({call, 1, {lookup, jim}})).await;
    assert_eq!(peer.recv().await.unwrap(), term!({reply, 1, undefined}));
}
