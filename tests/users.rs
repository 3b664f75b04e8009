//! Named users end to end (PROTOCOL.md sections 4.1 and 4.2), against a real server over
//! real TLS on 127.0.0.1, with the users of `user_fixture`.
//!
//! Checked: every credential kind logs in and runs the seed session, with `user` in a
//! version 2 welcome, while a version 1 client sees exactly the version 1 welcome; every
//! refusal cause is answered with the same bytes, recorded with its precise reason for
//! the operator, and a password-kind refusal costs an argon2 run whatever the cause; a key
//! signature is bound to its nonce, connection, service, user and server certificate; a
//! relay that terminates TLS learns a password but cannot pass on a key login; a
//! read-only user cannot write; brute force against a user is penalized per source;
//! logins are counted by credential kind.

mod common;
mod user_fixture;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{within, RawPeer, TestServer, PASSWORD};
use lib_chan_client::{term, ConnectOptions, Error, Login, Term};
use lib_chan_protocol::credential::challenge_message;
use lib_chan_protocol::{etf, parse};
use lib_chan_server::{CredentialKind, Refusal};
use user_fixture::{alice_key, bob_cert, ca_signed, login, self_signed, ALICE_PW, CAROL_PW};

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        user_fixture::configure(c);
        // Users whose only purpose is to be refused.
        let mut disabled = user_fixture::user("gone", &["nameServer"]);
        disabled.password_hash = c.users[0].password_hash.clone();
        disabled.disabled = true;
        let mut expired = user_fixture::user("late", &["nameServer"]);
        expired.password_hash = c.users[0].password_hash.clone();
        expired.expires = Some(SystemTime::now() - Duration::from_secs(60));
        let mut elsewhere = user_fixture::user("remote", &["nameServer"]);
        elsewhere.password_hash = c.users[0].password_hash.clone();
        elsewhere.from = vec![("10.0.0.0".parse().unwrap(), 8)];
        c.users.extend([disabled, expired, elsewhere]);
    })
    .await
}

fn handle(server: &TestServer) -> &lib_chan_server::ServerHandle {
    server.handle.as_ref().unwrap()
}

/// Options trusting the server's CA, presenting `pair` as the client certificate.
fn with_cert(server: &TestServer, pair: &user_fixture::Pair) -> ConnectOptions {
    server.options().client_cert_pem(&pair.cert, &pair.key)
}

#[tokio::test]
async fn every_credential_logs_in_and_runs_the_seed_session() {
    let server = start().await;
    let port = server.addr.port();
    let dir = cert_dir_of(&server);
    let dave = ca_signed(&dir, "dave");
    let cases: Vec<(ConnectOptions, Login, &str, CredentialKind)> = vec![
        (
            server.options(),
            Login::user_password("alice", ALICE_PW),
            "alice",
            CredentialKind::Password,
        ),
        (
            server.options(),
            Login::ed25519("alice", alice_key()),
            "alice",
            CredentialKind::Ed25519,
        ),
        (
            with_cert(&server, bob_cert()),
            Login::certificate("bob"),
            "bob",
            CredentialKind::Certificate,
        ),
        (
            with_cert(&server, &dave),
            Login::certificate("dave"),
            "dave",
            CredentialKind::Certificate,
        ),
    ];
    for (options, how, user, kind) in cases {
        let ch = login(&options, port, "nameServer", &how)
            .await
            .unwrap_or_else(|e| panic!("{user} with {}: {e}", how.kind_name()));
        assert_eq!(ch.welcome().protocol, 2);
        assert_eq!(ch.welcome().user.as_deref(), Some(user));
        common::seed_session(&ch).await;
        let open = handle(&server).connections();
        assert!(
            open.iter()
                .any(|c| c.user.as_deref() == Some(user) && c.credential == kind),
            "{open:?}"
        );
        ch.close().await;
    }
    // A users-only service: alice may start it, the book's password may not.
    let private = login(
        &server.options(),
        port,
        "private",
        &Login::user_password("alice", ALICE_PW),
    )
    .await
    .unwrap();
    assert_eq!(
        within("echo", private.rpc(term!(hello))).await.unwrap(),
        term!(hello)
    );
    assert!(matches!(
        login(
            &server.options(),
            port,
            "private",
            &Login::service_password(PASSWORD)
        )
        .await,
        Err(Error::AuthFailed)
    ));
    let text = handle(&server).metrics_text();
    for kind in ["password", "ed25519", "certificate"] {
        let series = format!("lib_chan_logins_total{{result=\"ok\",credential=\"{kind}\"}}");
        assert!(common::metric(&text, &series).unwrap() >= 1.0, "{series}");
    }
}

fn cert_dir_of(server: &TestServer) -> std::path::PathBuf {
    server.certs.ca.parent().unwrap().to_owned()
}

#[tokio::test]
async fn a_version_1_client_sees_exactly_the_version_1_welcome() {
    let server = start().await;
    let mut peer = RawPeer::connect(server.addr, &server.ca_path()).await;
    peer.send(&parse(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#).unwrap())
        .await;
    let welcome = peer.recv().await.unwrap();
    let info = &welcome.as_tuple().unwrap()[1];
    let keys: Vec<String> = info
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(keys, ["max_frame", "protocol", "server"], "{welcome}");
    assert_eq!(info.map_get(&term!(protocol)), Some(&Term::Int(1)));
    // The same password after a challenge is a version 2 client: it sees version 2.
    let mut peer = RawPeer::connect(server.addr, &server.ca_path()).await;
    peer.send(&term!({challenge, 1})).await;
    let reply = peer.recv().await.unwrap();
    let items = reply.as_tuple().unwrap();
    assert!(items[0].is_atom("challenge") && items[1] == Term::Int(1));
    assert_eq!(items[2].as_binary().unwrap().len(), 32);
    peer.send(&parse(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#).unwrap())
        .await;
    let welcome = peer.recv().await.unwrap();
    assert_eq!(
        welcome.as_tuple().unwrap()[1].map_get(&term!(protocol)),
        Some(&Term::Int(2))
    );
}

/// One raw login attempt; returns the server's answer bytes and whether it then closed.
async fn attempt(
    server: &TestServer,
    client_cert: Option<&user_fixture::Pair>,
    challenge: bool,
    credential: impl FnOnce(Option<&[u8]>, [u8; 32]) -> Term,
    service: &str,
) -> Vec<u8> {
    let mut peer = match client_cert {
        Some(pair) => raw_with_cert(server, pair).await,
        None => RawPeer::connect(server.addr, &server.ca_path()).await,
    };
    let cert_hash = server_cert_hash(&peer);
    let nonce = if challenge {
        peer.send(&term!({challenge, 7})).await;
        let reply = peer.recv().await.unwrap();
        Some(reply.as_tuple().unwrap()[2].as_binary().unwrap().to_vec())
    } else {
        None
    };
    let cred = credential(nonce.as_deref(), cert_hash);
    peer.send(&Term::tuple([
        term!(start_service),
        Term::binary(service.as_bytes()),
        cred,
        Term::nil(),
    ]))
    .await;
    let answer = peer.recv_payload().await.expect("an answer");
    assert!(peer.closed().await, "the server closes after a refusal");
    answer
}

fn server_cert_hash(peer: &RawPeer) -> [u8; 32] {
    let (_, session) = peer.reader.get_ref().get_ref();
    let leaf = &session.peer_certificates().unwrap()[0];
    lib_chan_server::tls::sha256(leaf.as_ref())
}

async fn raw_with_cert(server: &TestServer, pair: &user_fixture::Pair) -> RawPeer {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(server.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    RawPeer {
        reader: tokio_util::codec::FramedRead::new(
            tls,
            lib_chan_protocol::FrameCodec::new(1 << 21, usize::MAX),
        ),
    }
}

fn user_cred(name: &str, proof: Term) -> Term {
    Term::tuple([term!(user), Term::binary(name.as_bytes()), proof])
}

fn password(pw: &str) -> Term {
    Term::tuple([term!(password), Term::binary(pw.as_bytes())])
}

/// alice's signature over the challenge message for `user` and `service`.
fn signed(nonce: &[u8], cert_hash: &[u8; 32], user: &str, service: &str) -> Term {
    let nonce: [u8; 32] = nonce.try_into().unwrap();
    let msg = challenge_message(&nonce, cert_hash, user, service);
    Term::tuple([term!(ed25519), Term::binary(alice_key().sign(&msg))])
}

#[tokio::test]
async fn every_refusal_is_the_same_answer_and_only_the_operator_learns_why() {
    let server = start().await;
    let dir = cert_dir_of(&server);
    let stranger = self_signed("alice");
    let erin = ca_signed(&dir, "erin");
    let want = etf::encode(&term!({error, auth_failed})).unwrap();
    type Cred = Box<dyn FnOnce(Option<&[u8]>, [u8; 32]) -> Term>;
    let pw = |p: &'static str| -> Cred { Box::new(move |_, _| Term::binary(p.as_bytes())) };
    let user_pw = |u: &'static str, p: &'static str| -> Cred {
        Box::new(move |_, _| user_cred(u, password(p)))
    };
    let cert = |u: &'static str| -> Cred { Box::new(move |_, _| user_cred(u, term!(certificate))) };
    /// What, the client certificate, whether to ask for a challenge, the credential,
    /// the service, and the reason the server must record.
    type Case<'a> = (
        &'a str,
        Option<&'a user_fixture::Pair>,
        bool,
        Cred,
        &'a str,
        Refusal,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown service",
            None,
            false,
            pw(PASSWORD),
            "nope",
            Refusal::UnknownService,
        ),
        (
            "wrong service password",
            None,
            false,
            pw("ABXy46"),
            "nameServer",
            Refusal::WrongPassword,
        ),
        (
            "service password on a users-only service",
            None,
            false,
            pw(PASSWORD),
            "private",
            Refusal::ServiceNeedsUser,
        ),
        (
            "unknown user",
            None,
            false,
            user_pw("mallory", ALICE_PW),
            "nameServer",
            Refusal::UnknownUser,
        ),
        (
            "wrong user password",
            None,
            false,
            user_pw("alice", CAROL_PW),
            "nameServer",
            Refusal::WrongPassword,
        ),
        (
            "a password for a user who has none",
            None,
            false,
            user_pw("bob", ALICE_PW),
            "nameServer",
            Refusal::NoSuchCredential,
        ),
        (
            "service not allowed",
            None,
            false,
            user_pw("alice", ALICE_PW),
            "test",
            Refusal::ServiceNotAllowed,
        ),
        (
            "unknown service for a user",
            None,
            false,
            user_pw("alice", ALICE_PW),
            "nope",
            Refusal::UnknownService,
        ),
        (
            "disabled",
            None,
            false,
            user_pw("gone", ALICE_PW),
            "nameServer",
            Refusal::Disabled,
        ),
        (
            "expired",
            None,
            false,
            user_pw("late", ALICE_PW),
            "nameServer",
            Refusal::Expired,
        ),
        (
            "source not allowed",
            None,
            false,
            user_pw("remote", ALICE_PW),
            "nameServer",
            Refusal::SourceNotAllowed,
        ),
        (
            "key login without a challenge",
            None,
            false,
            Box::new(|_, h| user_cred("alice", signed(&[0; 32], &h, "alice", "nameServer"))),
            "nameServer",
            Refusal::NoChallenge,
        ),
        (
            "key of another user",
            None,
            true,
            Box::new(|n, h| user_cred("carol", signed(n.unwrap(), &h, "carol", "nameServer"))),
            "nameServer",
            Refusal::NoSuchCredential,
        ),
        (
            "key login of an unknown user",
            None,
            true,
            Box::new(|n, h| user_cred("mallory", signed(n.unwrap(), &h, "mallory", "nameServer"))),
            "nameServer",
            Refusal::UnknownUser,
        ),
        (
            "short signature",
            None,
            true,
            Box::new(|_, _| {
                user_cred(
                    "alice",
                    Term::tuple([term!(ed25519), Term::binary([1u8; 10])]),
                )
            }),
            "nameServer",
            Refusal::WrongSignature,
        ),
        (
            "certificate login without a certificate",
            None,
            false,
            cert("bob"),
            "nameServer",
            Refusal::NoCertificate,
        ),
        (
            "a certificate nobody pinned",
            Some(&stranger),
            false,
            cert("alice"),
            "nameServer",
            Refusal::CertificateNotRecognised,
        ),
        (
            "a CA certificate naming someone else",
            Some(&erin),
            false,
            cert("dave"),
            "nameServer",
            Refusal::CertificateNotRecognised,
        ),
        (
            "a CA certificate of no user",
            Some(&erin),
            false,
            cert("erin"),
            "nameServer",
            Refusal::UnknownUser,
        ),
        (
            "malformed credential",
            None,
            false,
            Box::new(|_, _| user_cred("alice", term!({password, 42}))),
            "nameServer",
            Refusal::Malformed,
        ),
    ];
    for (what, client_cert, challenge, cred, service, reason) in cases {
        let answer = attempt(&server, client_cert, challenge, cred, service).await;
        assert_eq!(answer, want, "{what}: answered {:?}", etf::decode(&answer));
        let denials = handle(&server).denials();
        assert!(
            denials
                .iter()
                .any(|d| d.reason == reason
                    && (d.service == service || reason == Refusal::Malformed)),
            "{what}: no {reason} for {service} in {denials:?}"
        );
    }
    // A control: the same harness lets a right signature in.
    let mut peer = RawPeer::connect(server.addr, &server.ca_path()).await;
    let h = server_cert_hash(&peer);
    peer.send(&term!({challenge, 1})).await;
    let nonce = peer.recv().await.unwrap().as_tuple().unwrap()[2]
        .as_binary()
        .unwrap()
        .to_vec();
    peer.send(&Term::tuple([
        term!(start_service),
        term!(nameServer),
        user_cred("alice", signed(&nonce, &h, "alice", "nameServer")),
        Term::nil(),
    ]))
    .await;
    let welcome = peer.recv().await.unwrap();
    assert!(welcome.as_tuple().unwrap()[0].is_atom("ok"), "{welcome}");
}

#[tokio::test]
async fn a_password_refusal_costs_argon2_whatever_its_cause() {
    let server = start().await;
    // Warm the verified-credential cache for alice on nameServer.
    login(
        &server.options(),
        server.addr.port(),
        "nameServer",
        &Login::user_password("alice", ALICE_PW),
    )
    .await
    .unwrap();
    // Each refusal takes at least the time of an argon2 verification (tens of ms here;
    // 5 ms is a floor no machine beats for m = 19 MiB), even the right password for a
    // service the user may not start: the cache is per user and service.
    for (user, pw, service) in [
        ("mallory", ALICE_PW, "nameServer"),
        ("alice", CAROL_PW, "nameServer"),
        ("alice", ALICE_PW, "test"),
        ("gone", ALICE_PW, "nameServer"),
    ] {
        let started = Instant::now();
        let r = login(
            &server.options(),
            server.addr.port(),
            service,
            &Login::user_password(user, pw),
        )
        .await;
        assert!(matches!(r, Err(Error::LoginFailed { .. })), "{r:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(5),
            "{user} on {service} refused in {took:?}: no argon2 ran"
        );
    }
}

#[tokio::test]
async fn a_key_signature_is_bound_to_its_nonce_connection_service_user_and_certificate() {
    let server = start().await;
    // A nonce drawn on another connection.
    let mut other = RawPeer::connect(server.addr, &server.ca_path()).await;
    other.send(&term!({challenge, 1})).await;
    let other_nonce = other.recv().await.unwrap().as_tuple().unwrap()[2]
        .as_binary()
        .unwrap()
        .to_vec();
    type Forge = Box<dyn Fn(&[u8], &[u8; 32]) -> Term>;
    let cases: Vec<(&str, &str, Forge)> = vec![
        (
            "another nonce",
            "alice",
            Box::new(|_, h| signed(&[9; 32], h, "alice", "nameServer")),
        ),
        (
            "another connection's nonce",
            "alice",
            Box::new(move |_, h| signed(&other_nonce, h, "alice", "nameServer")),
        ),
        (
            "another service",
            "alice",
            Box::new(|n, h| signed(n, h, "alice", "echo")),
        ),
        // frank holds alice's public key: a signature made for alice's name is not his.
        (
            "another user",
            "frank",
            Box::new(|n, h| signed(n, h, "alice", "nameServer")),
        ),
        (
            "another server certificate",
            "alice",
            Box::new(|n, _| signed(n, &[3; 32], "alice", "nameServer")),
        ),
    ];
    for (what, user, forge) in cases {
        let answer = attempt(
            &server,
            None,
            true,
            |n, h| user_cred(user, forge(n.unwrap(), &h)),
            "nameServer",
        )
        .await;
        assert_eq!(
            etf::decode(&answer).unwrap(),
            term!({error, auth_failed}),
            "{what}"
        );
    }
    // frank with a signature for his own name logs in: the key is his too.
    let frank = login(
        &server.options(),
        server.addr.port(),
        "nameServer",
        &Login::ed25519("frank", alice_key()),
    )
    .await
    .unwrap();
    assert_eq!(frank.welcome().user.as_deref(), Some("frank"));
    // A second challenge replaces the first: a signature over the first nonce fails.
    let mut peer = RawPeer::connect(server.addr, &server.ca_path()).await;
    let h = server_cert_hash(&peer);
    peer.send(&term!({challenge, 1})).await;
    let first = peer.recv().await.unwrap().as_tuple().unwrap()[2]
        .as_binary()
        .unwrap()
        .to_vec();
    peer.send(&term!({challenge, 2})).await;
    let _second = peer.recv().await.unwrap();
    peer.send(&Term::tuple([
        term!(start_service),
        term!(nameServer),
        user_cred("alice", signed(&first, &h, "alice", "nameServer")),
        Term::nil(),
    ]))
    .await;
    assert_eq!(peer.recv().await.unwrap(), term!({error, auth_failed}));
}

/// A TLS relay with a certificate of its own (from another CA, which the victim was told
/// to trust): it terminates the client's TLS, and opens its own to the real server,
/// forwarding bytes both ways.
async fn relay(server: SocketAddr, server_ca: &std::path::Path) -> (SocketAddr, tempfile::TempDir) {
    let (dir, certs) = common::make_certs();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        lib_chan_server::tls::server_config(
            &lib_chan_server::TlsSource::Files {
                cert: certs.cert.clone(),
                key: certs.key.clone(),
            },
            None,
        )
        .unwrap()
        .config,
    );
    let upstream_ca = server_ca.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream_ca = upstream_ca.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut upstream = RawPeer::connect(server, &upstream_ca)
                    .await
                    .reader
                    .into_inner();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, dir)
}

#[tokio::test]
async fn a_relay_learns_a_password_but_cannot_relay_a_key_login() {
    let server = start().await;
    let (relay_addr, relay_dir) = relay(server.addr, &server.ca_path()).await;
    let through_relay = ConnectOptions::new().ca_file(relay_dir.path().join("ca.pem"));
    let port = relay_addr.port();
    // A password login through the relay works: the relay saw the password.
    let ch = login(
        &through_relay,
        port,
        "nameServer",
        &Login::user_password("alice", ALICE_PW),
    )
    .await
    .expect("a password login passes a relay");
    common::seed_session(&ch).await;
    // A key login signs the relay's certificate, not the server's: refused.
    let r = login(
        &through_relay,
        port,
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await;
    assert!(matches!(r, Err(Error::LoginFailed { .. })), "{r:?}");
    assert!(handle(&server)
        .denials()
        .iter()
        .any(|d| d.reason == Refusal::WrongSignature && d.user.as_deref() == Some("alice")));
    // Straight to the server, the same key logs in.
    login(
        &server.options(),
        server.addr.port(),
        "nameServer",
        &Login::ed25519("alice", alice_key()),
    )
    .await
    .expect("a direct key login");
}

#[tokio::test]
async fn a_read_only_user_reads_and_watches_but_cannot_write() {
    let server = start().await;
    let port = server.addr.port();
    let writer = server.connect("nameServer").await;
    within("store", writer.rpc(term!({store, k, 1})))
        .await
        .unwrap();
    let carol = login(
        &server.options(),
        port,
        "nameServer",
        &Login::user_password("carol", CAROL_PW),
    )
    .await
    .unwrap();
    assert_eq!(
        within("lookup", carol.rpc(term!({lookup, k})))
            .await
            .unwrap(),
        term!({ok, 1})
    );
    assert_eq!(
        within("watch", carol.rpc(term!({watch, k}))).await.unwrap(),
        term!(true)
    );
    for change in [term!({store, k, 2}), term!({delete, k})] {
        match within("write", carol.rpc(change.clone())).await {
            Err(Error::Remote(r)) => assert_eq!(r, term!(forbidden), "{change}"),
            other => panic!("{change}: {other:?}"),
        }
    }
    within("cast", carol.cast(term!({store, k, 3})))
        .await
        .unwrap();
    assert_eq!(
        within("lookup", writer.rpc(term!({lookup, k})))
            .await
            .unwrap(),
        term!({ok, 1}),
        "nothing carol sent changed the name"
    );
    // carol may write elsewhere (echo is not read-only for her), and the watch she
    // holds sees another client's change.
    within("store", writer.rpc(term!({store, k, 4})))
        .await
        .unwrap();
    assert_eq!(
        within("push", carol.recv()).await.unwrap(),
        term!({changed, k, {ok, 4}})
    );
}

#[tokio::test]
async fn brute_force_against_a_user_is_penalized_per_source() {
    let server = TestServer::start_with(|c| {
        user_fixture::configure(c);
        let p = &mut c.limits.admission.penalties;
        p.auth_failed = Duration::from_secs(10);
        p.threshold = Duration::from_secs(15);
    })
    .await;
    let attacker: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let mut refused_at_accept = 0;
    let mut auth_failed = 0;
    for guess in 0..6 {
        let Ok(mut peer) = RawPeer::connect_from(server.addr, &server.ca_path(), attacker).await
        else {
            refused_at_accept += 1;
            continue;
        };
        peer.send(&Term::tuple([
            term!(start_service),
            term!(nameServer),
            user_cred("alice", password(&format!("guess {guess}"))),
            Term::nil(),
        ]))
        .await;
        match peer.recv().await {
            Some(t) if t == term!({error, auth_failed}) => auth_failed += 1,
            _ => refused_at_accept += 1,
        }
    }
    assert!(auth_failed >= 2, "the first guesses are answered");
    assert!(
        refused_at_accept >= 3,
        "then the source is refused: {refused_at_accept}"
    );
    // Even the right password is refused from that source now, while 127.0.0.1 (exempt
    // in the test harness) gets in.
    let right = RawPeer::connect_from(server.addr, &server.ca_path(), attacker).await;
    if let Ok(mut peer) = right {
        peer.send(&Term::tuple([
            term!(start_service),
            term!(nameServer),
            user_cred("alice", password(ALICE_PW)),
            Term::nil(),
        ]))
        .await;
        assert_ne!(
            peer.recv()
                .await
                .map(|t| t.as_tuple().map(|t| t[0].clone())),
            Some(Some(term!(ok)))
        );
    }
    login(
        &server.options(),
        server.addr.port(),
        "nameServer",
        &Login::user_password("alice", ALICE_PW),
    )
    .await
    .expect("the legitimate source is not penalized");
}

#[test]
fn the_example_config_loads_and_so_does_its_user_entry_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    lib_chan_server::devcert::DevCerts::generate(&["localhost".into()])
        .unwrap()
        .write(&dir.path().join("certs"))
        .unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lib_chan.conf.example"),
    )
    .unwrap();
    let registry = lib_chan_services::registry();
    let path = dir.path().join("lib_chan.conf");
    let config = lib_chan_server::Config::parse(&example, &path, &registry).unwrap();
    assert!(
        config.users.is_empty(),
        "the example's user is commented out"
    );
    // Uncomment the [[user]] entry with real values: it parses as documented.
    let start = example.find("# [[user]]").unwrap();
    let mut text = example[..start].to_owned();
    for line in example[start..].lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let key = rest.split(" = ").next().unwrap();
        let filled = match key {
            "password" => format!("password = \"{}\"", common::password_hash()),
            "ed25519" => format!("ed25519 = \"{}\"", alice_key().public_key_base64()),
            "cert_sha256" => format!(
                "cert_sha256 = \"{}\"",
                lib_chan_server::users::hex(&bob_cert().sha256)
            ),
            "[[user]]" | "name" | "services" | "read_only" | "from" | "expires" | "disabled" => {
                rest.to_owned()
            }
            _ => continue,
        };
        text.push_str(&filled);
        text.push('\n');
    }
    let config = lib_chan_server::Config::parse(&text, &path, &registry)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let alice = &config.users[0];
    assert_eq!(alice.name, "alice");
    assert!(alice.disabled && alice.password_hash.is_some() && alice.ed25519.is_some());
    assert!(alice.read_only.contains("chat") && !alice.read_only.contains("nameServer"));
}
