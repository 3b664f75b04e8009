//! The Rust client against the real server: the seed session, pipelining, pushes,
//! the name server's extensions, and graceful shutdown with calls in flight.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{within, TestServer, PASSWORD};
use lib_chan_client::{CloseReason, Error};
use lib_chan_protocol::message::ErrorReason;
use lib_chan_protocol::{term, Term};

#[tokio::test]
async fn the_seed_session_with_the_rust_client() {
    let server = TestServer::start().await;
    let channel = server.connect("nameServer").await;
    channel
        .cast(term!({store, joe, "writing a book"}))
        .await
        .unwrap();
    let reply = within("lookup joe", channel.rpc(term!({lookup, joe})))
        .await
        .unwrap();
    assert_eq!(reply.to_string(), r#"{ok,"writing a book"}"#);
    let reply = within("lookup jim", channel.rpc(term!({lookup, jim})))
        .await
        .unwrap();
    assert_eq!(reply, term!(undefined));
    // The name space is shared by every connection to the service.
    let other = server.connect("nameServer").await;
    assert_eq!(
        within("lookup", other.rpc(term!({lookup, joe})))
            .await
            .unwrap(),
        term!({ok, "writing a book"})
    );
    channel.close().await;
    assert_eq!(
        within("closed", channel.closed()).await,
        CloseReason::ClosedByClient
    );
}

#[tokio::test]
async fn auth_failures_are_typed() {
    let server = TestServer::start().await;
    for (service, password) in [("nameServer", "nope"), ("ghost", PASSWORD)] {
        let result = within(
            "connect",
            server.options().connect(
                "127.0.0.1",
                server.addr.port(),
                service,
                password,
                Term::nil(),
            ),
        )
        .await;
        assert!(
            matches!(result, Err(Error::AuthFailed)),
            "{service}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_thousand_concurrent_rpcs_from_fifty_tasks_each_get_their_own_reply() {
    let server = TestServer::start().await;
    let channel = server.connect("echo").await;
    let mut tasks = Vec::new();
    for t in 0..50i64 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..20i64 {
                let request =
                    Term::tuple([Term::Int(t), Term::Int(i), Term::binary(vec![t as u8; 64])]);
                let reply = channel.rpc(request.clone()).await.expect("rpc");
                assert_eq!(reply, request);
                seen.push((t, i));
            }
            seen
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        for pair in within("task", task).await.unwrap() {
            assert!(all.insert(pair));
        }
    }
    assert_eq!(all.len(), 1000);
}

#[tokio::test]
async fn pushes_arrive_in_order_through_recv() {
    let server = TestServer::start().await;
    let channel = server.connect("echo").await;
    for i in 0..10 {
        channel
            .cast(Term::tuple([term!(n), Term::Int(i)]))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let got = within("push", channel.recv()).await.expect("a push");
        assert_eq!(got, Term::tuple([term!(n), Term::Int(i)]));
    }
}

#[tokio::test]
async fn name_server_extensions_delete_names_watch_and_owner_bound_stores() {
    let server = TestServer::start().await;
    let watcher = server.connect("nameServer").await;
    let writer = server.connect("nameServer").await;
    let rpc = |c: &lib_chan_client::Channel, t: Term| {
        let c = c.clone();
        async move { within("rpc", c.rpc(t)).await.unwrap() }
    };
    assert_eq!(rpc(&watcher, term!({watch, joe})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, joe, 1})).await, term!(true));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, joe, {ok, 1}})
    );
    assert_eq!(rpc(&writer, term!({delete, joe})).await, term!(true));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, joe, undefined})
    );
    assert_eq!(rpc(&watcher, term!({unwatch, joe})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, b, 1})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, a, 1})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, 7, 1})).await, term!(true));
    assert_eq!(rpc(&writer, term!(names)).await.to_string(), "[7,a,b]");
    let bad = within("rpc", writer.rpc(term!({frobnicate, x}))).await;
    match bad {
        Err(Error::Remote(reason)) => {
            assert_eq!(reason.to_string(), "{bad_request,{frobnicate,x}}")
        }
        other => panic!("{other:?}"),
    }

    // An owner-bound name goes when its connection goes, and watchers hear of it.
    let owner = server.connect("nameServer").await;
    assert_eq!(rpc(&watcher, term!({watch, session})).await, term!(true));
    let store = Term::tuple([
        term!(store),
        term!(session),
        term!(alive),
        Term::map([(term!(owner), term!(channel))]),
    ]);
    assert_eq!(rpc(&owner, store).await, term!(true));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, {ok, alive}})
    );
    drop(owner);
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, undefined})
    );
    assert_eq!(
        rpc(&writer, term!({lookup, session})).await,
        term!(undefined)
    );
}

#[tokio::test]
async fn shutdown_answers_calls_in_flight_first() {
    let mut server = TestServer::start().await;
    let channel = server.connect("test").await;
    let slow = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.rpc(term!({sleep, 400, finished})).await })
    };
    // Calls are handled in order: once this echo is answered, the slow call is in flight.
    assert_eq!(
        within("echo", channel.rpc(term!({echo, ready})))
            .await
            .unwrap(),
        term!(ready)
    );
    let handle = server.handle.take().unwrap();
    handle.begin_shutdown();
    assert_eq!(
        within("slow", slow).await.unwrap().unwrap(),
        term!(finished)
    );
    assert_eq!(
        within("closed", channel.closed()).await,
        CloseReason::ServerError(ErrorReason::Shutdown)
    );
    within("shutdown", handle.shutdown()).await;
    // Nothing listens any more.
    let refused = tokio::net::TcpStream::connect(server.addr).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn a_handler_that_ends_fails_outstanding_calls_and_closes() {
    let server = TestServer::start().await;
    let channel = server.connect("test").await;
    let held = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .rpc_timeout(term!(hold), Duration::from_secs(10))
                .await
        })
    };
    assert_eq!(
        within("echo", channel.rpc(term!({echo, x}))).await.unwrap(),
        term!(x)
    );
    let crash = within("crash", channel.rpc(term!(crash))).await;
    assert!(
        matches!(&crash, Err(Error::Remote(r)) if r.is_atom("handler_crashed")),
        "{crash:?}"
    );
    let held = within("held", held).await.unwrap();
    assert!(
        matches!(&held, Err(Error::Remote(r)) if r.is_atom("handler_crashed")),
        "{held:?}"
    );
    assert_eq!(
        within("closed", channel.closed()).await,
        CloseReason::ClosedByServer
    );
    assert!(matches!(
        channel.rpc(term!({echo, x})).await,
        Err(Error::Closed(_))
    ));
}
