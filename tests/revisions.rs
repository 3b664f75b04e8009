//! PROTOCOL.md section 7.1 on every store (memory, file, Redis): the revision counter,
//! `{get, K}`, conditional stores and deletes with their conflicts, `{watch, K, Since}`
//! catching a returning watcher up with exactly the latest state (deletions included),
//! owner-bound removals as changes, leader election by `#{owner => channel, if_revision =>
//! 0}`; revisions surviving a restart on a file, and shared by two servers on one Redis.
//! Version 1 watches keep their 3-tuple pushes (checked in `name_store.rs` too).

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{within, TestServer};
use lib_chan_client::{Channel, Error};
use lib_chan_protocol::{parse, term, Term};
use redis_server::RedisServer;

async fn rpc(c: &Channel, request: &str) -> Term {
    let t = parse(request).unwrap();
    within(request, c.rpc(t)).await.expect("rpc answered")
}

/// `rpc` that must be refused as a bad request.
async fn refused(c: &Channel, request: &str) {
    match within(request, c.rpc(parse(request).unwrap())).await {
        Err(Error::Remote(reason)) => assert!(
            reason
                .as_tuple()
                .is_some_and(|t| t[0].is_atom("bad_request")),
            "{request}: {reason}"
        ),
        other => panic!("{request}: {other:?}"),
    }
}

async fn push(c: &Channel) -> String {
    within("a push", c.recv())
        .await
        .expect("a push")
        .to_string()
}

/// True when no push arrives on `c` for a moment.
async fn no_push(c: &Channel) -> bool {
    tokio::time::timeout(Duration::from_millis(300), c.recv())
        .await
        .is_err()
}

async fn server(store: &str) -> TestServer {
    let store = store.to_owned();
    TestServer::start_with(move |c| c.services[0].options.store = Some(store)).await
}

async fn revision_semantics(store: &str) {
    let server = server(store).await;
    let w = server.connect("nameServer").await;
    assert_eq!(
        rpc(&w, "revision").await,
        term!(0),
        "{store}: a fresh name space"
    );
    assert_eq!(rpc(&w, "{store, a, one}").await, term!(true));
    assert_eq!(rpc(&w, "revision").await, term!(1));
    assert_eq!(rpc(&w, "{get, a}").await.to_string(), "{ok,one,1}");
    assert_eq!(rpc(&w, "{get, b}").await.to_string(), "{undefined,1}");

    // Conditional stores: on the last change's revision, or on absence (0).
    assert_eq!(
        rpc(&w, "{store, a, two, #{if_revision => 0}}")
            .await
            .to_string(),
        "{conflict,{ok,one},1}",
        "{store}"
    );
    assert_eq!(rpc(&w, "{lookup, a}").await.to_string(), "{ok,one}");
    assert_eq!(
        rpc(&w, "revision").await,
        term!(1),
        "a conflict changes nothing"
    );
    assert_eq!(
        rpc(&w, "{store, a, two, #{if_revision => 1}}").await,
        term!(true)
    );
    assert_eq!(rpc(&w, "{get, a}").await.to_string(), "{ok,two,2}");
    assert_eq!(
        rpc(&w, "{store, b, first, #{if_revision => 0}}").await,
        term!(true)
    );
    assert_eq!(
        rpc(&w, "{store, b, second, #{if_revision => 0}}")
            .await
            .to_string(),
        "{conflict,{ok,first},3}"
    );
    // Conditional deletes, the same rule; a delete of an absent key is no change.
    assert_eq!(
        rpc(&w, "{delete, b, #{if_revision => 2}}")
            .await
            .to_string(),
        "{conflict,{ok,first},3}"
    );
    assert_eq!(
        rpc(&w, "{delete, b, #{if_revision => 3}}").await,
        term!(true)
    );
    assert_eq!(rpc(&w, "{get, b}").await.to_string(), "{undefined,4}");
    assert_eq!(rpc(&w, "{delete, b}").await, term!(true));
    assert_eq!(rpc(&w, "revision").await, term!(4), "{store}");
    assert_eq!(
        rpc(&w, "{delete, never, #{if_revision => 5}}")
            .await
            .to_string(),
        "{conflict,undefined,0}"
    );
    // The deleted key's conflict shows its deletion; absence (0) admits a store.
    assert_eq!(
        rpc(&w, "{store, b, x, #{if_revision => 3}}")
            .await
            .to_string(),
        "{conflict,undefined,4}",
        "{store}"
    );
    assert_eq!(
        rpc(&w, "{store, b, x, #{if_revision => 0}}").await,
        term!(true)
    );
    assert_eq!(rpc(&w, "revision").await, term!(5));
    // Bad conditions are refused, never taken as unconditional.
    refused(&w, "{store, b, y, #{if_rev => 5}}").await;
    refused(&w, "{store, b, y, #{if_revision => -1}}").await;
    refused(&w, "{delete, b, #{owner => channel}}").await;
    refused(&w, "{watch, b, never}").await;
    assert_eq!(rpc(&w, "{lookup, b}").await.to_string(), "{ok,x}");

    // {watch, K, Since}: the state at once when K changed after Since, else nothing.
    let watcher = server.connect("nameServer").await;
    assert_eq!(rpc(&watcher, "{watch, a, 0}").await, term!(true));
    assert_eq!(push(&watcher).await, "{changed,a,{ok,two},2}", "{store}");
    assert_eq!(rpc(&watcher, "{watch, a, 2}").await, term!(true));
    assert!(no_push(&watcher).await, "nothing after 2 ({store})");
    assert_eq!(rpc(&watcher, "{watch, nothing_ever, 0}").await, term!(true));
    assert!(no_push(&watcher).await, "never there: nothing ({store})");
    // Later changes come with their revisions; the version 1 watch keeps 3-tuples.
    let v1 = server.connect("nameServer").await;
    assert_eq!(rpc(&v1, "{watch, a}").await, term!(true));
    assert_eq!(rpc(&w, "{delete, a}").await, term!(true));
    assert_eq!(push(&watcher).await, "{changed,a,undefined,6}");
    assert_eq!(push(&v1).await, "{changed,a,undefined}");
    // A watcher coming back after the deletion is told of it, once.
    let late = server.connect("nameServer").await;
    assert_eq!(rpc(&late, "{watch, a, 2}").await, term!(true));
    assert_eq!(push(&late).await, "{changed,a,undefined,6}", "{store}");
    assert!(no_push(&late).await);
    assert_eq!(rpc(&late, "{watch, a, 6}").await, term!(true));
    assert!(no_push(&late).await, "the deletion seen: nothing ({store})");

    // A watcher cut off while a key is stored three times, deleted and re-created: back
    // from the last revision it saw, it gets the latest value once, with a higher
    // revision, and nothing older.
    assert_eq!(rpc(&w, "{store, k, v0}").await, term!(true));
    let seen = rpc(&w, "revision").await.as_int().unwrap();
    drop(late);
    for v in ["v1", "v2", "v3"] {
        assert_eq!(rpc(&w, &format!("{{store, k, {v}}}")).await, term!(true));
    }
    assert_eq!(rpc(&w, "{delete, k}").await, term!(true));
    assert_eq!(rpc(&w, "{store, k, latest}").await, term!(true));
    let back = server.connect("nameServer").await;
    assert_eq!(
        rpc(&back, &format!("{{watch, k, {seen}}}")).await,
        term!(true)
    );
    let got = within("catch-up", back.recv()).await.unwrap();
    let t = got.as_tuple().unwrap();
    assert_eq!(t[2].to_string(), "{ok,latest}", "{got}");
    assert_eq!(t[3].as_int().unwrap(), seen + 5, "{got}");
    assert!(no_push(&back).await, "one catch-up push ({store})");
    assert_eq!(rpc(&w, "{store, k, later}").await, term!(true));
    assert_eq!(
        push(&back).await,
        format!("{{changed,k,{{ok,later}},{}}}", seen + 6)
    );

    // An owner-bound name removed when its owner goes is a change with a revision.
    let owner = server.connect("nameServer").await;
    assert_eq!(rpc(&back, "{watch, o, 0}").await, term!(true));
    assert_eq!(
        rpc(&owner, "{store, o, mine, #{owner => channel}}").await,
        term!(true)
    );
    let stored = push(&back).await;
    assert!(stored.starts_with("{changed,o,{ok,mine},"), "{stored}");
    let before = rpc(&w, "revision").await.as_int().unwrap();
    owner.close().await;
    assert_eq!(
        push(&back).await,
        format!("{{changed,o,undefined,{}}}", before + 1),
        "{store}"
    );
    assert_eq!(rpc(&w, "revision").await.as_int().unwrap(), before + 1);
}

#[tokio::test]
async fn revisions_in_memory() {
    revision_semantics("memory").await;
}

#[tokio::test]
async fn revisions_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    revision_semantics(&format!("file:{}", dir.path().join("n.redb").display())).await;
}

#[tokio::test]
async fn revisions_in_redis() {
    let redis = RedisServer::start();
    revision_semantics(&redis.url(0)).await;
}

/// Of 20 clients racing `#{owner => channel, if_revision => 0}` for one key, exactly one
/// wins; when the winner's connection goes, the next race has exactly one winner again.
async fn leader_election(store: &str) {
    let server = server(store).await;
    let race = |clients: Vec<Channel>| async move {
        let bid =
            parse("{store, leader, candidate, #{owner => channel, if_revision => 0}}").unwrap();
        let attempts = clients.iter().map(|c| c.rpc(bid.clone()));
        let answers = futures_util::future::join_all(attempts).await;
        let winners: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| a.as_ref().unwrap() == &term!(true))
            .map(|(i, _)| i)
            .collect();
        for a in &answers {
            let a = a.as_ref().unwrap();
            assert!(
                a == &term!(true) || a.as_tuple().is_some_and(|t| t[0].is_atom("conflict")),
                "{a}"
            );
        }
        (clients, winners)
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(server.connect("nameServer").await);
    }
    let (mut clients, winners) = race(clients).await;
    assert_eq!(winners.len(), 1, "{store}: one leader");
    let leader = clients.remove(winners[0]);
    leader.close().await;
    let observer = server.connect("nameServer").await;
    within("the leader's name goes", async {
        while rpc(&observer, "{lookup, leader}").await != term!(undefined) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, winners) = race(clients).await;
    assert_eq!(winners.len(), 1, "{store}: one new leader");
}

#[tokio::test]
async fn leader_election_in_memory_and_in_a_file() {
    leader_election("memory").await;
    let dir = tempfile::tempdir().unwrap();
    leader_election(&format!("file:{}", dir.path().join("n.redb").display())).await;
}

#[tokio::test]
async fn leader_election_in_redis() {
    let redis = RedisServer::start();
    leader_election(&redis.url(1)).await;
}

#[tokio::test]
async fn revisions_survive_a_restart_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("n.redb").display());
    {
        let s = server(&store).await;
        let c = s.connect("nameServer").await;
        assert_eq!(rpc(&c, "{store, a, 1}").await, term!(true));
        assert_eq!(rpc(&c, "{store, b, 2}").await, term!(true));
        assert_eq!(rpc(&c, "{delete, a}").await, term!(true));
        c.close().await;
        s.handle.unwrap().shutdown().await;
    }
    let s = server(&store).await;
    let c = s.connect("nameServer").await;
    assert_eq!(rpc(&c, "revision").await, term!(3));
    assert_eq!(rpc(&c, "{get, b}").await.to_string(), "{ok,2,2}");
    // The deletion is still dated.
    assert_eq!(rpc(&c, "{watch, a, 1}").await, term!(true));
    assert_eq!(push(&c).await, "{changed,a,undefined,3}");
    assert_eq!(
        rpc(&c, "{store, b, 3, #{if_revision => 2}}").await,
        term!(true)
    );
    assert_eq!(rpc(&c, "revision").await, term!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_share_revisions() {
    let redis = RedisServer::start();
    let url = redis.url(2);
    let one = server(&url).await;
    let two = server(&url).await;
    let a = one.connect("nameServer").await;
    let b = two.connect("nameServer").await;
    assert_eq!(rpc(&a, "{store, k, 1}").await, term!(true));
    assert_eq!(rpc(&b, "revision").await, term!(1));
    assert_eq!(
        rpc(&b, "{store, k, 2, #{if_revision => 1}}").await,
        term!(true)
    );
    assert_eq!(
        rpc(&a, "{store, k, 3, #{if_revision => 1}}")
            .await
            .to_string(),
        "{conflict,{ok,2},2}"
    );
    // A watcher on one server hears the other's change with its revision, and one
    // catching up through the other server gets the same state.
    assert_eq!(rpc(&a, "{watch, k, 2}").await, term!(true));
    assert!(no_push(&a).await);
    assert_eq!(rpc(&b, "{delete, k}").await, term!(true));
    assert_eq!(push(&a).await, "{changed,k,undefined,3}");
    let c = two.connect("nameServer").await;
    assert_eq!(rpc(&c, "{watch, k, 1}").await, term!(true));
    assert_eq!(push(&c).await, "{changed,k,undefined,3}");
}
