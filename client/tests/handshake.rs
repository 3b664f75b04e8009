//! Connecting: the handshake answers, the ping probe, and the timeouts (PROTOCOL.md
//! section 4), against a scripted TLS peer.

mod common;

use std::time::Duration;

use common::{frame, peer, within, Certs};
use lib_chan_client::{term, CloseReason, Error, ErrorReason, Term, Welcome};
use lib_chan_protocol::message::{Credential, Hello, Password};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn seed_session_against_a_scripted_name_server() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        let hello = c.accept(1 << 20).await;
        let mut store: Vec<(Term, Term)> = Vec::new();
        let mut seen = Vec::new();
        while let Some(t) = c.recv().await {
            seen.push(t.clone());
            let items = t.as_tuple().map(<[Term]>::to_vec).unwrap_or_default();
            match items.as_slice() {
                [tag, req] if tag.is_atom("send") => {
                    if let Some([op, k, v]) = req.as_tuple() {
                        assert!(op.is_atom("store"));
                        store.push((k.clone(), v.clone()));
                    }
                }
                [tag, r, req] if tag.is_atom("call") => {
                    let key = &req.as_tuple().unwrap()[1];
                    let answer = match store.iter().find(|(k, _)| k == key) {
                        Some((_, v)) => Term::tuple([Term::atom("ok"), v.clone()]),
                        None => Term::atom("undefined"),
                    };
                    c.send(Term::tuple([Term::atom("reply"), r.clone(), answer]))
                        .await;
                }
                _ => {}
            }
        }
        c.shutdown().await;
        (hello, seen)
    })
    .await;

    let chan = within(certs.options().connect(
        "127.0.0.1",
        addr.port(),
        "nameServer",
        "ABXy45",
        Term::nil(),
    ))
    .await
    .unwrap();
    assert_eq!(
        chan.welcome(),
        &Welcome {
            protocol: 1,
            max_frame: 1 << 20,
            server: "scripted-peer/1".into(),
            user: None,
            session: None,
            grace_ms: None,
        }
    );
    within(chan.cast(term!({store, joe, "writing a book"})))
        .await
        .unwrap();
    assert_eq!(
        within(chan.rpc(term!({lookup, joe}))).await.unwrap(),
        term!({ok, "writing a book"})
    );
    assert_eq!(
        within(chan.rpc(term!({lookup, jim}))).await.unwrap(),
        term!(undefined)
    );
    within(chan.close()).await;
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByClient);

    let (hello, seen) = within(peer).await.unwrap().unwrap();
    assert_eq!(
        hello,
        Hello::StartService {
            service: "nameServer".into(),
            credential: Credential::ServicePassword(Password(b"ABXy45".to_vec())),
            args: Term::nil(),
            options: None,
        }
    );
    // Exactly the seed session's frames, refs from 1, then close.
    assert_eq!(
        seen,
        vec![
            term!({send, {store, joe, "writing a book"}}),
            term!({call, 1, {lookup, joe}}),
            term!({call, 2, {lookup, jim}}),
            term!(close),
        ]
    );
}

/// Connects to a peer that answers `start_service` with `answer`.
async fn connect_to_answer(answer: Term) -> Error {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, move |mut c| async move {
        c.expect_start_service().await;
        c.send(answer).await;
        c.shutdown().await;
        c.drain().await
    })
    .await;
    within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn auth_failed_is_its_own_error() {
    let e = connect_to_answer(term!({error, auth_failed})).await;
    assert!(matches!(e, Error::AuthFailed), "{e:?}");
    assert_eq!(
        e.to_string(),
        "authentication failed: unknown service or wrong password"
    );
}

#[tokio::test]
async fn busy_is_its_own_error() {
    let e = connect_to_answer(term!({error, busy})).await;
    assert!(matches!(e, Error::Busy), "{e:?}");
}

#[tokio::test]
async fn timeout_and_bad_request_are_refusals() {
    let e = connect_to_answer(term!({error, timeout})).await;
    assert!(matches!(e, Error::Refused(ErrorReason::Timeout)), "{e:?}");
    let e = connect_to_answer(term!({error, bad_request})).await;
    assert!(
        matches!(e, Error::Refused(ErrorReason::BadRequest)),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_answer_that_is_no_welcome_is_a_protocol_error() {
    let e = connect_to_answer(term!({hello, world})).await;
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    // A welcome without max_frame is no welcome either.
    let e = connect_to_answer(term!({ok, [protocol]})).await;
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
}

#[tokio::test]
async fn another_protocol_version_is_a_protocol_error() {
    let answer = Term::tuple([
        Term::atom("ok"),
        Term::map([
            (Term::atom("protocol"), Term::Int(3)),
            (Term::atom("max_frame"), Term::Int(1000)),
        ]),
    ]);
    let e = connect_to_answer(answer).await;
    match e {
        Error::Protocol(m) => assert!(m.contains("version 3"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Connects to a peer that answers `start_service` with raw bytes.
async fn connect_to_raw_answer(raw: Vec<u8>) -> Error {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, move |mut c| async move {
        c.expect_start_service().await;
        c.send_raw(&raw).await;
        c.shutdown().await;
        c.drain().await
    })
    .await;
    within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn garbage_bytes_as_the_answer_are_a_protocol_error() {
    let e = connect_to_raw_answer(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
    match &e {
        Error::Protocol(m) => assert!(m.contains("not a lib_chan frame"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_bad_term_as_the_answer_is_a_protocol_error() {
    // A well-formed frame whose payload is no ETF term (a pid tag).
    let e = connect_to_raw_answer(vec![0, 0, 0, 3, 131, 88, 0]).await;
    match &e {
        Error::Protocol(m) => assert!(m.contains("not a valid term"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An empty frame.
    let e = connect_to_raw_answer(vec![0, 0, 0, 0]).await;
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
}

#[tokio::test]
async fn the_server_hanging_up_before_answering_is_an_io_error() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.expect_start_service().await;
        c.shutdown().await;
    })
    .await;
    let e = within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap_err();
    match &e {
        Error::Io { error, .. } => {
            assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn args_over_the_handshake_limit_are_refused_before_sending() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move { c.drain().await }).await;
    let big = Term::binary(vec![0u8; 5000]);
    let e = within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", big),
    )
    .await
    .unwrap_err();
    match &e {
        Error::Encode(m) => assert!(m.contains("4096"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ping_probe_measures_a_round_trip_without_a_password() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        let first = c.recv().await;
        if let Some(Hello::Ping(r)) = first.as_ref().and_then(|t| Hello::from_term(t).ok()) {
            c.send(Term::tuple([Term::atom("pong"), Term::Int(r as i64)]))
                .await;
        }
        let rest = c.drain().await;
        (first, rest)
    })
    .await;
    let rtt = within(lib_chan_client::ping(
        "127.0.0.1",
        addr.port(),
        &certs.options(),
    ))
    .await
    .unwrap();
    assert!(rtt < Duration::from_secs(5));
    let (first, rest) = within(peer).await.unwrap().unwrap();
    assert!(matches!(
        Hello::from_term(&first.unwrap()).unwrap(),
        Hello::Ping(_)
    ));
    // The probe said goodbye with close_notify and sent nothing else.
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn ping_probe_of_a_busy_server_says_busy() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.recv().await;
        c.send(term!({error, busy})).await;
        c.shutdown().await;
    })
    .await;
    let e = within(lib_chan_client::ping(
        "127.0.0.1",
        addr.port(),
        &certs.options(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Busy), "{e:?}");
}

#[tokio::test]
async fn a_refused_connection_says_whether_the_server_runs() {
    let (l, addr) = common::listener().await;
    drop(l);
    let e = within(Certs::localhost().options().connect(
        "127.0.0.1",
        addr.port(),
        "svc",
        "pw",
        Term::nil(),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "connection to 127.0.0.1:{} refused (is the server running?)",
            addr.port()
        )
    );
}

#[tokio::test]
async fn a_server_that_never_speaks_tls_times_out_the_handshake() {
    let (l, addr) = common::listener().await;
    let hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let e = within(
        Certs::localhost()
            .options()
            .handshake_timeout(Duration::from_millis(200))
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Timeout("TLS handshake")), "{e:?}");
    hold.abort();
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_start_service() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.expect_start_service().await;
        c.drain().await
    })
    .await;
    let e = within(
        certs
            .options()
            .handshake_timeout(Duration::from_millis(300))
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::Timeout("start_service handshake")),
        "{e:?}"
    );
    peer.abort();
}

#[tokio::test]
async fn a_plaintext_server_is_not_mistaken_for_tls() {
    let (l, addr) = common::listener().await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.write_all(&frame(&term!({error, busy}))).await;
        let _ = s.shutdown().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = within(Certs::localhost().options().connect(
        "127.0.0.1",
        addr.port(),
        "svc",
        "pw",
        Term::nil(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Tls { .. } | Error::Io { .. }), "{e:?}");
    assert!(
        e.to_string().contains("TLS handshake with 127.0.0.1"),
        "{e}"
    );
    srv.abort();
}
