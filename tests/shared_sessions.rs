//! Sessions shared by channel servers on one Redis name store (PROTOCOL.md 8): a client
//! resumes on another server with its session and its `#{owner => session}` names, which
//! the first server's grace then does not remove; `close` on the second ends it; and when
//! the server holding a session is killed (-9), the others end the session once its
//! deadline passes, removing its names with a push to their watchers (no silent expiry);
//! and the reconnecting client fails over between them keeping its session.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;
mod serve_process;

use std::time::{Duration, Instant};

use common::{within, RawPeer, TestServer, PASSWORD};
use lib_chan_protocol::{parse, term, Term};
use lib_chan_server::devcert::DevCertPaths;
use redis_server::RedisServer;
use serve_process::ServeProcess;

/// An in-process server on `url` with the certificate of `certs`.
async fn server(certs: &DevCertPaths, url: &str, grace: Duration) -> TestServer {
    let (cert, key, url) = (certs.cert.clone(), certs.key.clone(), url.to_owned());
    TestServer::start_with(move |c| {
        c.tls = lib_chan_server::TlsSource::Files { cert, key };
        c.services[0].options.store = Some(url);
        c.limits.session_grace_max = grace;
    })
    .await
}

async fn login(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    session: Term,
) -> (RawPeer, Vec<u8>) {
    let mut peer = RawPeer::connect(addr, ca).await;
    peer.send(&Term::tuple([
        term!(start_service),
        term!(nameServer),
        Term::binary(PASSWORD.as_bytes()),
        Term::nil(),
        Term::map([(term!(session), session)]),
    ]))
    .await;
    let welcome = within("welcome", peer.recv()).await.expect("a welcome");
    let id = welcome.as_tuple().unwrap()[1]
        .map_get(&term!(session))
        .and_then(Term::as_binary)
        .unwrap_or_else(|| panic!("no session in {welcome}"))
        .to_vec();
    (peer, id)
}

async fn call(peer: &mut RawPeer, request: &str) -> Term {
    peer.send(&Term::tuple([
        term!(call),
        Term::Int(1),
        parse(request).unwrap(),
    ]))
    .await;
    let reply = within("reply", peer.recv()).await.expect("a reply");
    reply.as_tuple().unwrap()[2].clone()
}

async fn channel(addr: std::net::SocketAddr, ca: &std::path::Path) -> lib_chan_client::Channel {
    within(
        "connect",
        lib_chan_client::ConnectOptions::new().ca_file(ca).connect(
            "127.0.0.1",
            addr.port(),
            "nameServer",
            PASSWORD,
            Term::nil(),
        ),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_server_with_its_names() {
    let redis = RedisServer::start();
    let url = redis.url(4);
    let (_dir, certs) = common::make_certs();
    let grace = Duration::from_millis(800);
    let one = server(&certs, &url, grace).await;
    let two = server(&certs, &url, grace).await;
    let watcher = channel(two.addr, &certs.ca).await;
    assert_eq!(
        within("watch", watcher.rpc(term!({watch, lease})))
            .await
            .unwrap(),
        term!(true)
    );

    let (mut first, id) = login(one.addr, &certs.ca, term!(new)).await;
    assert_eq!(
        call(&mut first, "{store, lease, mine, #{owner => session}}").await,
        term!(true)
    );
    assert_eq!(
        within("the store", watcher.recv()).await.unwrap(),
        term!({changed, lease, {ok, mine}})
    );
    // Lost without close; back within the grace, on the other server.
    drop(first);
    let (mut second, again) = login(two.addr, &certs.ca, Term::binary(&id)).await;
    assert_eq!(again, id, "the other server resumed the session");
    // Past the first server's grace: its timer must not end a session held elsewhere.
    assert!(
        tokio::time::timeout(grace * 2, watcher.recv())
            .await
            .is_err(),
        "no watcher told anything"
    );
    assert_eq!(
        call(&mut second, "{lookup, lease}").await,
        term!({ok, mine})
    );
    // close on the second server ends it there: the name goes, the watcher hears it.
    second.send(&term!(close)).await;
    assert_eq!(
        within("the removal", watcher.recv()).await.unwrap(),
        term!({changed, lease, undefined})
    );
    // An ended session is not adopted.
    let (_third, other) = login(one.addr, &certs.ca, Term::binary(&id)).await;
    assert_ne!(other, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_killed_server_end_with_their_names_and_watchers_hear() {
    let redis = RedisServer::start();
    let url = redis.url(5);
    let (dir, certs) = common::make_certs();
    let conf = dir.path().join("lib_chan.conf");
    std::fs::write(
        &conf,
        format!(
            "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\n\
             store = \"{url}\"\n",
            certs.cert.display(),
            certs.key.display(),
            common::password_hash()
        ),
    )
    .unwrap();
    let doomed = ServeProcess::start(&conf);
    let survivor = server(&certs, &url, Duration::from_secs(10)).await;
    let watcher = channel(survivor.addr, &certs.ca).await;
    assert_eq!(
        within("watch", watcher.rpc(term!({watch, lease})))
            .await
            .unwrap(),
        term!(true)
    );
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], doomed.port));
    let (mut peer, _id) = login(at, &certs.ca, term!(new)).await;
    assert_eq!(
        call(&mut peer, "{store, lease, mine, #{owner => session}}").await,
        term!(true)
    );
    assert_eq!(
        within("the store", watcher.recv()).await.unwrap(),
        term!({changed, lease, {ok, mine}})
    );
    let killed = Instant::now();
    drop(doomed.kill());
    // No server holds the session: once its deadline passes, the survivor's sweep ends it.
    let push = tokio::time::timeout(Duration::from_secs(20), watcher.recv())
        .await
        .expect("the watcher is told")
        .unwrap();
    assert_eq!(push, term!({changed, lease, undefined}));
    let after = killed.elapsed();
    eprintln!("a killed server's session ended {after:?} after the kill");
    let ttl = lib_chan_services::name_server::redis_store::OWNER_TTL;
    assert!(
        after >= ttl - Duration::from_secs(4),
        "not before the deadline: {after:?}"
    );
    assert!(after <= ttl + Duration::from_secs(3), "{after:?}");
    assert_eq!(
        within("lookup", watcher.rpc(term!({lookup, lease})))
            .await
            .unwrap(),
        term!(undefined)
    );
    drop(peer);
}

#[path = "common/proxy.rs"]
mod proxy;

/// The reconnecting client fails over from one server to the other on the same Redis and
/// resumes its session there: its session names survive the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconnecting_client_fails_over_and_keeps_its_session() {
    use lib_chan_client::{ChannelEvent, ChannelState, Login, ReconnectPolicy};
    let redis = RedisServer::start();
    let url = redis.url(6);
    let (_dir, certs) = common::make_certs();
    let one = server(&certs, &url, Duration::from_secs(3)).await;
    let two = server(&certs, &url, Duration::from_secs(3)).await;
    let proxy = proxy::Proxy::start(one.addr).await;
    let policy = ReconnectPolicy::new()
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(300))
        .addresses([format!("127.0.0.1:{}", two.addr.port())])
        .unwrap();
    let rc = within(
        "connect",
        lib_chan_client::ConnectOptions::new()
            .ca_file(&certs.ca)
            .reconnect(policy)
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
    let session = rc.session_id().unwrap();
    let mut events = rc.events();
    assert_eq!(
        within(
            "store",
            rc.rpc(parse("{store, lease, mine, #{owner => session}}").unwrap())
        )
        .await
        .unwrap(),
        term!(true)
    );
    let watcher = channel(two.addr, &certs.ca).await;
    assert_eq!(
        within("watch", watcher.rpc(term!({watch, lease})))
            .await
            .unwrap(),
        term!(true)
    );
    // The first server becomes unreachable for good.
    proxy.refuse(true);
    proxy.cut();
    within("failed over", async {
        while !matches!(rc.state(), ChannelState::Connected { ref address } if address.ends_with(&two.addr.port().to_string()))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, ChannelEvent::Connected(_))) {
        seen.push(within("an event", events.recv()).await.unwrap());
    }
    assert!(seen.contains(&ChannelEvent::SessionResumed), "{seen:?}");
    assert_eq!(rc.session_id(), Some(session));
    // Past the first server's grace, the name is still there and no watcher was told.
    assert!(tokio::time::timeout(Duration::from_secs(4), watcher.recv())
        .await
        .is_err());
    assert_eq!(
        within("lookup", rc.rpc(term!({lookup, lease})))
            .await
            .unwrap(),
        term!({ok, mine})
    );
    rc.close().await;
    assert_eq!(
        within("the removal", watcher.recv()).await.unwrap(),
        term!({changed, lease, undefined})
    );
}
