//! Sessions (PROTOCOL.md section 8) against a real server: the welcome's `session` and
//! clamped `grace`; a version 1 login unchanged; resuming by id within the grace keeps
//! `#{owner => session}` names (no watcher told anything), a cut longer than the grace
//! removes them and tells the watchers; `close` ends a session at once; an id that is
//! unknown, ended or for another service gets a new session, never an error; the Rust
//! client's `ConnectOptions::session`.

mod common;

use std::time::{Duration, Instant};

use common::{within, RawPeer, TestServer, PASSWORD};
use lib_chan_client::{Channel, Error, SessionRequest};
use lib_chan_protocol::{parse, term, Term};

async fn server(grace_max: Duration) -> TestServer {
    TestServer::start_with(move |c| c.limits.session_grace_max = grace_max).await
}

/// A raw login to `service` with the book's password and these handshake options; the
/// welcome's map.
async fn login(server: &TestServer, service: &str, options: Option<Term>) -> (RawPeer, Term) {
    let mut peer = RawPeer::connect(server.addr, &server.certs.ca).await;
    let mut hello = vec![
        term!(start_service),
        Term::atom(service),
        Term::binary(PASSWORD.as_bytes()),
        Term::nil(),
    ];
    hello.extend(options);
    peer.send(&Term::tuple(hello)).await;
    let welcome = within("welcome", peer.recv()).await.expect("a welcome");
    let t = welcome.as_tuple().expect("a tuple");
    assert!(t[0].is_atom("ok"), "{welcome}");
    let map = t[1].clone();
    (peer, map)
}

fn session_of(welcome: &Term) -> Vec<u8> {
    welcome
        .map_get(&term!(session))
        .and_then(Term::as_binary)
        .unwrap_or_else(|| panic!("no session in {welcome}"))
        .to_vec()
}

fn options(session: Term, grace_ms: Option<i64>) -> Option<Term> {
    let mut m = vec![(term!(session), session)];
    if let Some(ms) = grace_ms {
        m.push((term!(grace), Term::Int(ms)));
    }
    Some(Term::map(m))
}

async fn rpc(c: &Channel, request: &str) -> Term {
    within(request, c.rpc(parse(request).unwrap()))
        .await
        .expect("answered")
}

async fn raw_call(peer: &mut RawPeer, id: i64, request: &str) -> Term {
    peer.send(&Term::tuple([
        term!(call),
        Term::Int(id),
        parse(request).unwrap(),
    ]))
    .await;
    within("reply", peer.recv()).await.expect("a reply")
}

async fn no_push(c: &Channel, for_how_long: Duration) -> bool {
    tokio::time::timeout(for_how_long, c.recv()).await.is_err()
}

#[tokio::test]
async fn the_welcome_gives_a_session_and_a_clamped_grace_and_v1_is_unchanged() {
    let server = server(Duration::from_secs(10)).await;
    let (_a, w) = login(&server, "nameServer", options(term!(new), Some(60_000))).await;
    assert_eq!(w.map_get(&term!(protocol)), Some(&term!(2)));
    assert_eq!(w.map_get(&term!(grace)), Some(&term!(10000)), "clamped");
    let id = session_of(&w);
    assert!(id.len() >= 16, "{w}");
    let (_b, w2) = login(&server, "nameServer", options(term!(new), Some(1500))).await;
    assert_eq!(w2.map_get(&term!(grace)), Some(&term!(1500)));
    assert_ne!(session_of(&w2), id, "each new session its own id");
    // No grace asked: the maximum.
    let (_c, w3) = login(&server, "nameServer", options(term!(new), None)).await;
    assert_eq!(w3.map_get(&term!(grace)), Some(&term!(10000)));
    // A version 1 login sees exactly the version 1 welcome: no session, no grace.
    let (_d, v1) = login(&server, "nameServer", None).await;
    let keys: Vec<String> = v1
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(keys, ["max_frame", "protocol", "server"], "{v1}");
    // An owner => session store on a connection without a session is refused.
    let plain = server.connect("nameServer").await;
    match within(
        "refused",
        plain.rpc(parse("{store, k, v, #{owner => session}}").unwrap()),
    )
    .await
    {
        Err(Error::Remote(r)) => assert!(r.to_string().starts_with("{bad_request,"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_cut_shorter_than_the_grace_keeps_the_sessions_names() {
    let server = server(Duration::from_secs(2)).await;
    let watcher = server.connect("nameServer").await;
    let (mut owner, w) = login(&server, "nameServer", options(term!(new), Some(2000))).await;
    let id = session_of(&w);
    assert_eq!(
        raw_call(&mut owner, 1, "{store, lease, mine, #{owner => session}}").await,
        term!({reply, 1, true})
    );
    let stored_at = rpc(&watcher, "revision").await.as_int().unwrap();
    assert_eq!(
        rpc(&watcher, &format!("{{watch, lease, {stored_at}}}")).await,
        term!(true)
    );
    // The connection is lost without `close`; the client is back within the grace.
    drop(owner);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut back, w) = login(
        &server,
        "nameServer",
        options(Term::binary(&id), Some(2000)),
    )
    .await;
    assert_eq!(session_of(&w), id, "resumed");
    // Past the first connection's grace: still there, and no watcher was told anything.
    assert!(no_push(&watcher, Duration::from_millis(2500)).await);
    assert_eq!(rpc(&watcher, "{lookup, lease}").await, term!({ok, mine}));
    // `close` ends the session at once: the name goes and the watcher hears of it.
    back.send(&term!(close)).await;
    let closed = Instant::now();
    let push = within("the removal", watcher.recv()).await.unwrap();
    assert_eq!(
        push.to_string(),
        format!("{{changed,lease,undefined,{}}}", stored_at + 1)
    );
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "not after a grace"
    );
    // The ended session cannot be resumed: a new one comes instead.
    let (_again, w) = login(&server, "nameServer", options(Term::binary(&id), None)).await;
    assert_ne!(session_of(&w), id);
}

#[tokio::test]
async fn a_cut_longer_than_the_grace_ends_the_session() {
    let server = server(Duration::from_secs(10)).await;
    let watcher = server.connect("nameServer").await;
    assert_eq!(rpc(&watcher, "{watch, lease}").await, term!(true));
    let (mut owner, w) = login(&server, "nameServer", options(term!(new), Some(500))).await;
    let id = session_of(&w);
    assert_eq!(
        raw_call(&mut owner, 1, "{store, lease, mine, #{owner => session}}").await,
        term!({reply, 1, true})
    );
    assert_eq!(
        within("the store", watcher.recv()).await.unwrap(),
        term!({changed, lease, {ok, mine}})
    );
    let lost = Instant::now();
    drop(owner);
    assert_eq!(
        within("the removal", watcher.recv()).await.unwrap(),
        term!({changed, lease, undefined})
    );
    let after = lost.elapsed();
    assert!(
        after >= Duration::from_millis(450),
        "removed after {after:?}, before the grace"
    );
    assert_eq!(rpc(&watcher, "{lookup, lease}").await, term!(undefined));
    let (_late, w) = login(&server, "nameServer", options(Term::binary(&id), None)).await;
    assert_ne!(session_of(&w), id, "an expired session is not resumed");
}

#[tokio::test]
async fn ids_that_are_unknown_or_for_another_service_get_a_new_session() {
    let server = server(Duration::from_secs(10)).await;
    let (_names, w) = login(&server, "nameServer", options(term!(new), None)).await;
    let id = session_of(&w);
    for bogus in [Term::binary(b"nonsense"), Term::binary([0u8; 18])] {
        let (_p, w) = login(&server, "nameServer", options(bogus, None)).await;
        assert_ne!(session_of(&w), id);
    }
    // Another service with the same password: its own session, never this one.
    let (_echo, w) = login(&server, "echo", options(Term::binary(&id), None)).await;
    assert_ne!(session_of(&w), id);
}

#[tokio::test]
async fn the_rust_client_asks_for_and_resumes_sessions() {
    let server = server(Duration::from_secs(5)).await;
    let options = server
        .options()
        .session(SessionRequest::New)
        .session_grace(Duration::from_secs(3));
    let connect = |o: lib_chan_client::ConnectOptions| {
        let port = server.addr.port();
        async move {
            within(
                "connect",
                o.connect("127.0.0.1", port, "nameServer", PASSWORD, Term::nil()),
            )
            .await
            .unwrap()
        }
    };
    let first = connect(options.clone()).await;
    let id = first.session_id().expect("a session").to_vec();
    assert_eq!(first.session_grace(), Some(Duration::from_secs(3)));
    assert_eq!(first.welcome().protocol, 2);
    assert_eq!(
        rpc(&first, "{store, mine, 1, #{owner => session}}").await,
        term!(true)
    );
    let second = connect(options.clone().session(SessionRequest::Resume(id.clone()))).await;
    assert_eq!(second.session_id(), Some(id.as_slice()));
    // Closing one connection ends the session (the client said so).
    first.close().await;
    let observer = server.connect("nameServer").await;
    within("the session's name goes", async {
        while rpc(&observer, "{lookup, mine}").await != term!(undefined) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let third = connect(options.session(SessionRequest::Resume(id.clone()))).await;
    assert_ne!(third.session_id(), Some(id.as_slice()));
    // A client without a session still speaks version 1.
    assert_eq!(observer.welcome().protocol, 1);
    assert_eq!(observer.session_id(), None);
    drop(second);
}
