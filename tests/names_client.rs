//! `lib_chan_client::Names`, the typed name server client, against the real server: every
//! request as a Rust value; a watch on a reconnecting channel cut off while the key is
//! stored three times, deleted and re-created, which then holds the latest value once,
//! with a revision above all it saw, and no revision twice; leader election by
//! `#{owner => session, if_revision => 0}` among 20 clients, won again by exactly one
//! after the winner's connection dies and its session's grace passes.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::Duration;

use common::{within, TestServer, PASSWORD};
use lib_chan_client::names::{Change, Owner, Versioned, Written};
use lib_chan_client::{Login, Names, ReconnectPolicy, SessionRequest, Term};
use lib_chan_protocol::term;
use proxy::Proxy;

async fn plain(server: &TestServer) -> Names {
    Names::new(server.connect("nameServer").await)
}

#[tokio::test]
async fn every_request_has_a_typed_answer() {
    let server = TestServer::start().await;
    let n = plain(&server).await;
    assert_eq!(n.revision().await.unwrap(), 0);
    n.store(term!(joe), term!("writing a book")).await.unwrap();
    assert_eq!(
        n.lookup(term!(joe)).await.unwrap(),
        Some(term!("writing a book"))
    );
    assert_eq!(n.lookup(term!(jim)).await.unwrap(), None);
    assert_eq!(
        n.get(term!(joe)).await.unwrap(),
        Versioned::Present {
            value: term!("writing a book"),
            mod_rev: 1
        }
    );
    assert_eq!(
        n.get(term!(jim)).await.unwrap(),
        Versioned::Absent { revision: 1 }
    );
    assert_eq!(
        n.store_if(term!(joe), term!(x), 0, None).await.unwrap(),
        Written::Conflict {
            value: Some(term!("writing a book")),
            mod_rev: 1
        }
    );
    assert_eq!(
        n.store_if(term!(joe), term!(x), 1, None).await.unwrap(),
        Written::Done
    );
    assert_eq!(
        n.delete_if(term!(joe), 1).await.unwrap(),
        Written::Conflict {
            value: Some(term!(x)),
            mod_rev: 2
        }
    );
    assert_eq!(n.delete_if(term!(joe), 2).await.unwrap(), Written::Done);
    n.store(term!(b), term!(1)).await.unwrap();
    n.store(term!(a), term!(1)).await.unwrap();
    assert_eq!(n.names().await.unwrap(), vec![term!(a), term!(b)]);
    n.delete(term!(a)).await.unwrap();
    assert_eq!(n.names().await.unwrap(), vec![term!(b)]);
    // Owner-bound without a session is refused by the server.
    assert!(n
        .store_owned(term!(s), term!(1), Owner::Session)
        .await
        .is_err());
    n.store_owned(term!(c), term!(1), Owner::Channel)
        .await
        .unwrap();
    assert_eq!(n.revision().await.unwrap(), 7);
}

#[tokio::test]
async fn a_watch_on_a_reconnecting_channel_gets_the_latest_value_once() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let rc = within(
        "connect",
        server
            .options()
            .reconnect(
                ReconnectPolicy::new()
                    .base_delay(Duration::from_millis(50))
                    .max_delay(Duration::from_millis(300)),
            )
            .connect_reconnecting(
                "127.0.0.1",
                proxy.addr.port(),
                "nameServer",
                &Login::service_password(PASSWORD),
                Term::nil(),
            ),
    )
    .await
    .unwrap();
    let watcher = Names::new(rc);
    let writer = plain(&server).await;
    let mut watch = watcher.watch(term!(k)).await.unwrap();
    writer.store(term!(k), term!(v1)).await.unwrap();
    let first = within("first change", watch.next()).await.unwrap();
    assert_eq!(first.value, Some(term!(v1)));
    let mut seen = vec![first.mod_rev];

    proxy.refuse(true);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for v in ["v2", "v3", "v4"] {
        writer.store(term!(k), Term::atom(v)).await.unwrap();
    }
    writer.delete(term!(k)).await.unwrap();
    writer.store(term!(k), term!(latest)).await.unwrap();
    let latest_rev = writer.revision().await.unwrap();
    proxy.refuse(false);

    let caught_up: Change = within("the catch-up", watch.next()).await.unwrap();
    assert_eq!(caught_up.value, Some(term!(latest)));
    assert_eq!(caught_up.mod_rev, latest_rev);
    assert!(caught_up.mod_rev > first.mod_rev);
    seen.push(caught_up.mod_rev);
    assert!(
        tokio::time::timeout(Duration::from_millis(400), watch.next())
            .await
            .is_err(),
        "the latest value once, nothing older"
    );
    writer.store(term!(k), term!(later)).await.unwrap();
    let later = within("a later change", watch.next()).await.unwrap();
    assert_eq!(later.value, Some(term!(later)));
    seen.push(later.mod_rev);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test]
async fn leader_election_by_session_survives_the_winner_dying() {
    let grace = Duration::from_millis(500);
    let server = TestServer::start_with(move |c| c.limits.session_grace_max = grace).await;
    let mut proxies = Vec::new();
    let mut candidates = Vec::new();
    for _ in 0..20 {
        let proxy = Proxy::start(server.addr).await;
        let chan = within(
            "connect",
            server.options().session(SessionRequest::New).connect(
                "127.0.0.1",
                proxy.addr.port(),
                "nameServer",
                PASSWORD,
                Term::nil(),
            ),
        )
        .await
        .unwrap();
        proxies.push(proxy);
        candidates.push(Names::new(chan));
    }
    let race = |candidates: Vec<(usize, Names)>| async move {
        let bids = candidates.iter().map(|(i, n)| async move {
            let w = n
                .store_if(term!(leader), Term::Int(*i as i64), 0, Some(Owner::Session))
                .await
                .unwrap();
            (*i, w)
        });
        futures_util::future::join_all(bids)
            .await
            .into_iter()
            .filter(|(_, w)| *w == Written::Done)
            .map(|(i, _)| i)
            .collect::<Vec<usize>>()
    };
    let all: Vec<(usize, Names)> = candidates.into_iter().enumerate().collect();
    let winners = race(all.clone()).await;
    assert_eq!(winners.len(), 1, "one leader: {winners:?}");
    let leader = winners[0];
    let observer = plain(&server).await;
    assert_eq!(
        observer.lookup(term!(leader)).await.unwrap(),
        Some(Term::Int(leader as i64))
    );
    // The leader's process dies: its connection is cut, it never comes back.
    proxies[leader].refuse(true);
    proxies[leader].cut();
    // Within the grace the name stays; after it, it goes.
    tokio::time::sleep(grace / 2).await;
    assert_eq!(
        observer.lookup(term!(leader)).await.unwrap(),
        Some(Term::Int(leader as i64)),
        "kept within the grace"
    );
    within("the leader's name goes", async {
        while observer.lookup(term!(leader)).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let rest: Vec<(usize, Names)> = all.into_iter().filter(|(i, _)| *i != leader).collect();
    let winners = race(rest).await;
    assert_eq!(winners.len(), 1, "one new leader: {winners:?}");
    assert_ne!(winners[0], leader);
}
