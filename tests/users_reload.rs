//! Named users and live reload: a reload re-checks every connection that logged in as a
//! user and revokes (`{error, revoked}`) exactly those the new config no longer lets in,
//! for each cause (user removed, disabled, another credential, services or `from`
//! narrowed, access changed); the others carry on. An `expires` time that passes while
//! connected revokes too, and the user is refused afterwards.

mod common;
mod user_fixture;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use common::{within, TestServer};
use lib_chan_client::{term, Channel, CloseReason, ErrorReason, Login};
use lib_chan_server::{auth, Config, Registry, ServerHandle, ServiceList, TlsSource, UserConfig};
use user_fixture::{alice_key, bob_cert, ca_signed, login, ALICE_PW, CAROL_PW};

/// The config `start` runs, for editing and reloading.
fn config_of(server: &TestServer) -> Config {
    let mut config = Config::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        TlsSource::Files {
            cert: server.certs.cert.clone(),
            key: server.certs.key.clone(),
        },
    );
    config.services = common::services();
    config.limits.admission.penalties.exempt = vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), 32)];
    user_fixture::configure(&mut config);
    config
}

fn registry() -> Registry {
    common::registry(tokio::sync::mpsc::unbounded_channel().0)
}

fn handle(server: &TestServer) -> &ServerHandle {
    server.handle.as_ref().expect("running")
}

fn user<'a>(config: &'a mut Config, name: &str) -> &'a mut UserConfig {
    config.users.iter_mut().find(|u| u.name == name).unwrap()
}

async fn assert_revoked(what: &str, ch: &Channel) {
    assert_eq!(
        within(what, ch.closed()).await,
        CloseReason::ServerError(ErrorReason::Revoked),
        "{what}"
    );
}

async fn assert_open(what: &str, ch: &Channel) {
    let reply = within(what, ch.rpc(term!({lookup, nobody}))).await;
    assert_eq!(
        reply.ok(),
        Some(term!(undefined)),
        "{what} should still answer"
    );
}

#[tokio::test]
async fn a_reload_revokes_exactly_the_user_connections_it_no_longer_allows() {
    let server = TestServer::start_with(user_fixture::configure).await;
    let port = server.addr.port();
    let dir = server.certs.ca.parent().unwrap().to_owned();
    let dave_cert = ca_signed(&dir, "dave");
    let o = server.options();
    let alice_pw = login(
        &o,
        port,
        "nameServer",
        &Login::user_password("alice", ALICE_PW),
    )
    .await
    .unwrap();
    let alice_key_conn = login(
        &o,
        port,
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await
    .unwrap();
    let carol_echo = login(&o, port, "echo", &Login::user_password("carol", CAROL_PW))
        .await
        .unwrap();
    let carol_names = login(
        &o,
        port,
        "nameServer",
        &Login::user_password("carol", CAROL_PW),
    )
    .await
    .unwrap();
    let bob = login(
        &o.clone().client_cert_pem(&bob_cert().cert, &bob_cert().key),
        port,
        "nameServer",
        &Login::certificate("bob"),
    )
    .await
    .unwrap();
    let dave = login(
        &o.clone().client_cert_pem(&dave_cert.cert, &dave_cert.key),
        port,
        "nameServer",
        &Login::certificate("dave"),
    )
    .await
    .unwrap();
    let frank = login(
        &o,
        port,
        "nameServer",
        &Login::ed25519("frank", alice_key()),
    )
    .await
    .unwrap();
    let book = server.connect("nameServer").await;
    let echo_rpc = |ch: &Channel| {
        let ch = ch.clone();
        async move { within("echo", ch.rpc(term!(ping))).await.ok() }
    };

    // A reload that changes no user revokes nothing.
    let summary = handle(&server)
        .reload(config_of(&server), &registry())
        .unwrap();
    assert_eq!(summary.users_revoked, 0);

    // Each step changes one thing; only the connections it concerns go.
    let mut config = config_of(&server);
    type Step<'a> = (&'a str, Box<dyn Fn(&mut Config)>, Vec<&'a Channel>);
    let steps: Vec<Step> = vec![
        (
            "alice's password changed: her password connection goes, her key one stays",
            Box::new(|c| user(c, "alice").password_hash = Some(auth::hash_password(b"new"))),
            vec![&alice_pw],
        ),
        (
            "carol may no longer start echo",
            Box::new(|c| user(c, "carol").services = ServiceList::Named(vec!["nameServer".into()])),
            vec![&carol_echo],
        ),
        (
            "carol's nameServer access is no longer read-only",
            Box::new(|c| user(c, "carol").read_only = ServiceList::None),
            vec![&carol_names],
        ),
        (
            "bob disabled",
            Box::new(|c| user(c, "bob").disabled = true),
            vec![&bob],
        ),
        (
            "dave removed",
            Box::new(|c| c.users.retain(|u| u.name != "dave")),
            vec![&dave],
        ),
        (
            "alice may now log in only from 10.0.0.0/8",
            Box::new(|c| user(c, "alice").from = vec![("10.0.0.0".parse().unwrap(), 8)]),
            vec![&alice_key_conn],
        ),
        (
            "frank given another key",
            Box::new(|c| user(c, "frank").ed25519 = Some([7; 32])),
            vec![&frank],
        ),
    ];
    let mut gone: Vec<&Channel> = Vec::new();
    let all = [
        &alice_pw,
        &alice_key_conn,
        &carol_names,
        &bob,
        &dave,
        &frank,
        &book,
    ];
    for (what, change, revoked) in steps {
        change(&mut config);
        let summary = handle(&server).reload(config.clone(), &registry()).unwrap();
        assert_eq!(summary.users_revoked, revoked.len(), "{what}");
        for ch in &revoked {
            assert_revoked(what, ch).await;
        }
        gone.extend(revoked);
        for ch in all
            .iter()
            .filter(|c| !gone.iter().any(|g| std::ptr::eq(*g, **c)))
        {
            assert_open(what, ch).await;
        }
        if !gone.iter().any(|g| std::ptr::eq(*g, &carol_echo)) {
            assert_eq!(echo_rpc(&carol_echo).await, Some(term!(ping)), "{what}");
        }
    }
    // The book's password connection was never touched, and still works.
    assert_open("service password", &book).await;
    let open = handle(&server).connections();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].user, None);
    // A revoked user's new login follows the new config.
    assert!(login(
        &o,
        port,
        "nameServer",
        &Login::user_password("alice", ALICE_PW)
    )
    .await
    .is_err());
    assert!(
        login(
            &o,
            port,
            "nameServer",
            &Login::user_password("alice", "new")
        )
        .await
        .is_err(),
        "alice may log in only from 10.0.0.0/8 now"
    );
}

#[tokio::test]
async fn an_expiry_that_passes_while_connected_revokes_and_then_refuses() {
    let expires = SystemTime::now() + Duration::from_millis(1500);
    let server = TestServer::start_with(|c| {
        user_fixture::configure(c);
        user(c, "alice").expires = Some(expires);
    })
    .await;
    let port = server.addr.port();
    let o = server.options();
    let alice = login(
        &o,
        port,
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await
    .unwrap();
    let carol = login(
        &o,
        port,
        "nameServer",
        &Login::user_password("carol", CAROL_PW),
    )
    .await
    .unwrap();
    assert_open("before the expiry", &alice).await;
    assert_revoked("alice expired", &alice).await;
    assert!(SystemTime::now() >= expires, "not revoked before its time");
    assert_open("carol does not expire", &carol).await;
    let again = login(
        &o,
        port,
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await;
    assert!(again.is_err(), "{again:?}");
    assert!(handle(&server)
        .denials()
        .iter()
        .any(|d| d.reason == lib_chan_server::Refusal::Expired));

    // A reload that moves carol's expiry into the past revokes her at once; one that
    // extends alice's lets her in again.
    let mut config = config_of(&server);
    user(&mut config, "carol").expires = Some(SystemTime::now() - Duration::from_secs(1));
    user(&mut config, "alice").expires = Some(SystemTime::now() + Duration::from_secs(3600));
    let summary = handle(&server).reload(config, &registry()).unwrap();
    assert_eq!(summary.users_revoked, 1);
    assert_revoked("carol's expiry moved into the past", &carol).await;
    login(
        &o,
        port,
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await
    .expect("alice's expiry was extended");
}

#[tokio::test]
async fn a_resumed_tls_session_is_checked_against_the_live_config_like_a_new_one() {
    let server = TestServer::start_with(user_fixture::configure).await;
    let port = server.addr.port();
    // One ConnectOptions: its TLS configuration (and session cache) is shared, so the
    // second connection resumes the first one's TLS session.
    let bob = server
        .options()
        .client_cert_pem(&bob_cert().cert, &bob_cert().key);
    let mut tls = Vec::new();
    for _ in 0..2 {
        let ch = login(&bob, port, "nameServer", &Login::certificate("bob"))
            .await
            .expect("bob's certificate logs in, also over a resumed session");
        tls.push(handle(&server).connections()[0].tls);
        ch.close().await;
        // Wait until the server has seen the close (the table is empty again).
        within("close", async {
            while !handle(&server).connections().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    assert_eq!(tls, ["TLSv1.3", "TLSv1.3 resumed"]);
    let resumed = handle(&server).metrics_text().lines().any(|l| {
        l.starts_with("lib_chan_logins_total{result=\"ok\",credential=\"certificate\"} 2")
    });
    assert!(resumed, "two certificate logins counted");
    let mut config = config_of(&server);
    user(&mut config, "bob").services = ServiceList::Named(vec!["echo".into()]);
    handle(&server).reload(config, &registry()).unwrap();
    let r = login(&bob, port, "nameServer", &Login::certificate("bob")).await;
    assert!(
        r.is_err(),
        "the live config no longer lets bob start nameServer: {r:?}"
    );
    login(&bob, port, "echo", &Login::certificate("bob"))
        .await
        .expect("but echo, now");
}
