//! The reconnecting channel (`ConnectOptions::connect_reconnecting`) through a proxy that
//! cuts connections and refuses new ones: a cut shorter than the session's grace keeps
//! its `#{owner => session}` names and tells no watcher; a longer one loses them and says
//! so; casts made while disconnected go out in order once back; a call lost in flight
//! fails as "may or may not have run" unless idempotent; a refused login ends it for good;
//! many clients back off instead of hammering a server that is down; and a client fails
//! over to the next address.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::{within, TestServer, PASSWORD};
use lib_chan_client::{
    ChannelEvent, ChannelState, Error, Login, ReconnectPolicy, ReconnectingChannel, Term,
};
use lib_chan_protocol::{parse, term};
use proxy::Proxy;

async fn server(grace: Duration) -> TestServer {
    TestServer::start_with(move |c| c.limits.session_grace_max = grace).await
}

/// Another server with `first`'s certificate (so that a client trusting one trusts both).
async fn sibling(
    first: &TestServer,
    adjust: impl FnOnce(&mut lib_chan_server::Config),
) -> TestServer {
    let (cert, key) = (first.certs.cert.clone(), first.certs.key.clone());
    TestServer::start_with(move |c| {
        c.tls = lib_chan_server::TlsSource::Files { cert, key };
        adjust(c);
    })
    .await
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::new()
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(500))
}

async fn reconnecting(
    server: &TestServer,
    port: u16,
    service: &str,
    policy: ReconnectPolicy,
) -> ReconnectingChannel {
    within(
        "connect",
        server.options().reconnect(policy).connect_reconnecting(
            "127.0.0.1",
            port,
            service,
            &Login::service_password(PASSWORD),
            Term::nil(),
        ),
    )
    .await
    .expect("the first connection")
}

async fn rpc(c: &ReconnectingChannel, request: &str) -> Term {
    within(request, c.rpc(parse(request).unwrap()))
        .await
        .unwrap_or_else(|e| panic!("{request}: {e}"))
}

/// The next event that is not `Connected`/`Disconnected` noise, within a few seconds.
async fn next_event(events: &mut tokio::sync::broadcast::Receiver<ChannelEvent>) -> ChannelEvent {
    within("an event", events.recv()).await.unwrap()
}

async fn wait_state(c: &ReconnectingChannel, ok: impl Fn(&ChannelState) -> bool) {
    within("the state", async {
        while !ok(&c.state()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_short_cut_resumes_the_session_and_queued_casts_go_first() {
    let server = server(Duration::from_secs(5)).await;
    let proxy = Proxy::start(server.addr).await;
    let rc = reconnecting(&server, proxy.addr.port(), "nameServer", policy()).await;
    let session = rc.session_id().expect("a session was asked for");
    let mut events = rc.events();
    assert_eq!(
        rpc(&rc, "{store, lease, mine, #{owner => session}}").await,
        term!(true)
    );
    let watcher = server.connect("nameServer").await;
    assert_eq!(
        within("watch", watcher.rpc(term!({watch, lease})))
            .await
            .unwrap(),
        term!(true)
    );

    proxy.cut();
    // A call made across the cut may be written to the dead connection before the client
    // knows; marked idempotent, it is sent again and answered.
    assert_eq!(
        within("lookup", rc.rpc_idempotent(term!({lookup, lease})))
            .await
            .unwrap(),
        term!({ok, mine})
    );
    assert!(matches!(
        next_event(&mut events).await,
        ChannelEvent::Disconnected(_)
    ));
    assert_eq!(next_event(&mut events).await, ChannelEvent::SessionResumed);
    assert!(matches!(
        next_event(&mut events).await,
        ChannelEvent::Connected(_)
    ));
    assert_eq!(rc.session_id(), Some(session.clone()));
    assert!(
        tokio::time::timeout(Duration::from_millis(400), watcher.recv())
            .await
            .is_err(),
        "the watcher was told nothing"
    );

    // Disconnected for a while: casts wait in the queue and go out, in order, first.
    proxy.refuse(true);
    proxy.cut();
    wait_state(&rc, |s| matches!(s, ChannelState::Reconnecting { .. })).await;
    for i in 1..=3 {
        rc.cast(Term::tuple([term!(store), term!(queued), Term::Int(i)]))
            .await
            .expect("queued");
    }
    proxy.refuse(false);
    assert_eq!(rpc(&rc, "{lookup, queued}").await, term!({ok, 3}));
    assert_eq!(rc.session_id(), Some(session));
    rc.close().await;
    assert_eq!(
        rc.closed().await,
        lib_chan_client::CloseReason::ClosedByClient
    );
    assert!(matches!(
        rc.rpc(term!({lookup, lease})).await,
        Err(Error::Closed(_))
    ));
    // close ended the session: its name goes.
    assert_eq!(
        within("the removal", watcher.recv()).await.unwrap(),
        term!({changed, lease, undefined})
    );
}

#[tokio::test]
async fn a_cut_longer_than_the_grace_loses_the_session_and_says_so() {
    let server = server(Duration::from_millis(300)).await;
    let proxy = Proxy::start(server.addr).await;
    let rc = reconnecting(&server, proxy.addr.port(), "nameServer", policy()).await;
    let first = rc.session_id().unwrap();
    let mut events = rc.events();
    assert_eq!(
        rpc(&rc, "{store, lease, mine, #{owner => session}}").await,
        term!(true)
    );
    proxy.refuse(true);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.refuse(false);
    let answer = within("lookup", rc.rpc_idempotent(term!({lookup, lease})))
        .await
        .unwrap();
    assert_eq!(answer, term!(undefined));
    let mut seen = Vec::new();
    while !seen.contains(&ChannelEvent::SessionLost) {
        seen.push(next_event(&mut events).await);
    }
    assert!(!seen.contains(&ChannelEvent::SessionResumed), "{seen:?}");
    assert_ne!(rc.session_id(), Some(first));
}

#[tokio::test]
async fn calls_lost_in_flight_fail_unless_idempotent() {
    let server = server(Duration::from_secs(5)).await;
    let proxy = Proxy::start(server.addr).await;
    let rc = reconnecting(&server, proxy.addr.port(), "test", policy()).await;
    let slow = {
        let rc = rc.clone();
        tokio::spawn(async move { rc.rpc(term!({sleep, 1000, done})).await })
    };
    let slow_again = {
        let rc = rc.clone();
        tokio::spawn(async move { rc.rpc_idempotent(term!({sleep, 300, again})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    match within("the lost call", slow).await.unwrap() {
        Err(Error::MaybeRan(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        within("the idempotent call", slow_again)
            .await
            .unwrap()
            .unwrap(),
        term!(again)
    );
    assert!(matches!(rc.state(), ChannelState::Connected { .. }));
}

#[tokio::test]
async fn a_refused_login_ends_it_for_good() {
    let server = server(Duration::from_secs(5)).await;
    // Another server whose nameServer has another password.
    let other = sibling(&server, |c| {
        c.services[0].password_hash = Some(lib_chan_server::auth::hash_password(b"another secret"));
    })
    .await;
    let proxy = Proxy::start(server.addr).await;
    let rc = reconnecting(&server, proxy.addr.port(), "nameServer", policy()).await;
    proxy.set_target(other.addr);
    let attempts = proxy.attempts();
    proxy.cut();
    let reason = within("the end", rc.closed()).await;
    assert!(
        reason.to_string().contains("authentication failed"),
        "{reason}"
    );
    assert!(matches!(rc.state(), ChannelState::Closed(_)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.attempts(), attempts + 1, "one try, then no more");
    assert!(matches!(rc.rpc(term!(names)).await, Err(Error::Closed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_back_off_while_the_server_is_down_and_all_come_back() {
    const CLIENTS: usize = 100;
    let server = server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.addr).await;
    let policy = ReconnectPolicy::new()
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(reconnecting(&server, proxy.addr.port(), "nameServer", policy.clone()).await);
    }
    proxy.refuse(true);
    let before = proxy.attempts();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_two_s = proxy.attempts() - before;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let next_three_s = proxy.attempts() - before - first_two_s;
    // Full jitter: delays drawn up to 0.1, 0.2, 0.4, 0.8, then 1 s: about 8 tries per
    // client in the first 2 s, about 2 a second after; a tight loop (a try takes about a
    // millisecond here) would be thousands per client.
    eprintln!(
        "{CLIENTS} clients, server down 5 s: {first_two_s} attempts in the first 2 s, {next_three_s} in the next 3 s"
    );
    assert!(first_two_s >= CLIENTS, "every client tried: {first_two_s}");
    assert!(first_two_s <= CLIENTS * 15, "no tight loop: {first_two_s}");
    assert!(
        next_three_s <= CLIENTS * 12,
        "spread out at the cap: {next_three_s}"
    );
    proxy.refuse(false);
    let back = Instant::now();
    for c in &clients {
        wait_state(c, |s| matches!(s, ChannelState::Connected { .. })).await;
    }
    let all_back = back.elapsed();
    eprintln!("all {CLIENTS} back {all_back:?} after the server");
    assert!(all_back < Duration::from_secs(4), "{all_back:?}");
    for c in &clients {
        assert_eq!(rpc(c, "{lookup, nobody}").await, term!(undefined));
    }
}

#[tokio::test]
async fn a_half_open_connection_is_found_by_keepalive_and_replaced() {
    let server = server(Duration::from_secs(5)).await;
    let proxy = Proxy::start(server.addr).await;
    let rc = within(
        "connect",
        server
            .options()
            .keepalive(Duration::from_millis(300))
            .reconnect(policy())
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
    let mut events = rc.events();
    assert_eq!(
        rpc(&rc, "{store, k, 1, #{owner => session}}").await,
        term!(true)
    );
    // The route is lost: the connection stays open and carries nothing.
    proxy.freeze();
    let started = Instant::now();
    let answer = within("lookup", rc.rpc_idempotent(term!({lookup, k})))
        .await
        .unwrap();
    assert_eq!(answer, term!({ok, 1}), "the session's name was kept");
    let took = started.elapsed();
    match next_event(&mut events).await {
        ChannelEvent::Disconnected(lib_chan_client::CloseReason::KeepaliveTimeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    eprintln!("half-open connection replaced in {took:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
}

#[tokio::test]
async fn it_fails_over_to_the_next_address() {
    let one = server(Duration::from_secs(5)).await;
    let two = sibling(&one, |_| {}).await;
    let proxy = Proxy::start(one.addr).await;
    let policy = policy()
        .addresses([format!("127.0.0.1:{}", two.addr.port())])
        .unwrap();
    let rc = reconnecting(&one, proxy.addr.port(), "nameServer", policy).await;
    let mut events = rc.events();
    // The first server becomes unreachable for good.
    proxy.refuse(true);
    proxy.cut();
    wait_state(&rc, |s| {
        matches!(s, ChannelState::Connected { address } if address.ends_with(&two.addr.port().to_string()))
    })
    .await;
    assert_eq!(rpc(&rc, "{store, here, 2}").await, term!(true));
    let direct = within(
        "connect",
        one.options().connect(
            "127.0.0.1",
            two.addr.port(),
            "nameServer",
            PASSWORD,
            Term::nil(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        within("lookup", direct.rpc(term!({lookup, here})))
            .await
            .unwrap(),
        term!({ok, 2})
    );
    // Memory stores do not share sessions: the client is told it lost its session.
    let mut seen = Vec::new();
    while !seen.contains(&ChannelEvent::SessionLost) {
        seen.push(next_event(&mut events).await);
    }
}

mod serve_process;

/// `lib_chan serve` on a file store, restarted under a reconnecting client twice (SIGTERM,
/// then kill -9) behind a proxy that follows it to its new port: the client carries on,
/// every store it was answered `true` for is there at the end, and its watch resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_carries_on_through_server_restarts_on_a_file_store() {
    use lib_chan_client::Names;
    use serve_process::ServeProcess;
    let (dir, certs) = common::make_certs();
    let conf = dir.path().join("lib_chan.conf");
    std::fs::write(
        &conf,
        format!(
            "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\n\
             store = \"file:names.redb\"\n",
            certs.cert.display(),
            certs.key.display(),
            common::password_hash()
        ),
    )
    .unwrap();
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut serve = ServeProcess::start(&conf);
    let proxy = Proxy::start(at(serve.port)).await;
    let options = lib_chan_client::ConnectOptions::new()
        .ca_file(&certs.ca)
        .reconnect(policy());
    let login = Login::service_password(PASSWORD);
    let connect = || {
        options.connect_reconnecting(
            "127.0.0.1",
            proxy.addr.port(),
            "nameServer",
            &login,
            Term::nil(),
        )
    };
    let writer = Names::new(within("connect", connect()).await.unwrap());
    let watcher = Names::new(within("connect", connect()).await.unwrap());
    let mut watch = watcher.watch(term!(flag)).await.unwrap();

    // Stores all along; each one answered true is recorded.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (writer, acked) = (writer.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..i64::MAX {
                if writer.store(Term::Int(i), Term::Int(i)).await.is_ok() {
                    acked.lock().unwrap().push(i);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for how in ["TERM", "KILL"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if how == "TERM" {
            serve.signal("TERM");
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        drop(serve.kill());
        serve = ServeProcess::start(&conf);
        proxy.set_target(at(serve.port));
        proxy.cut();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.abort();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the client carried on: {} stores",
        acked.len()
    );
    let check = Names::new(
        within(
            "connect",
            lib_chan_client::ConnectOptions::new()
                .ca_file(&certs.ca)
                .connect("127.0.0.1", serve.port, "nameServer", PASSWORD, Term::nil()),
        )
        .await
        .unwrap(),
    );
    for i in &acked {
        assert_eq!(
            check.lookup(Term::Int(*i)).await.unwrap(),
            Some(Term::Int(*i)),
            "acknowledged store {i} lost"
        );
    }
    // The watch resumed on the third server.
    check.store(term!(flag), term!(up)).await.unwrap();
    let change = within("the watch", watch.next()).await.unwrap();
    assert_eq!(change.value, Some(term!(up)));
    drop(dir);
}
