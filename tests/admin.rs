//! The operator's console, `mod_admin`, against a live server with clients of several
//! users: each verb's entries checked; a user without the admin service refused like any
//! other refusal; kick and kick_user close exactly their connections; unblock lets a
//! penalized source in again; reload answers what changed or the config error; a
//! `mod_admin` service with a shared password is a config error.

mod common;
mod user_fixture;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{within, RawPeer, TestServer};
use lib_chan_client::{term, Channel, CloseReason, Error, ErrorReason, Login, Term};
use lib_chan_protocol::parse;
use lib_chan_server::{ServiceConfig, ServiceList, UserConfig};
use user_fixture::{alice_key, login, ALICE_PW, CAROL_PW};

const ROOT_PW: &str = "root's console secret";

fn add_console(c: &mut lib_chan_server::Config) {
    user_fixture::configure(c);
    c.services
        .push(ServiceConfig::users_only("admin", "mod_admin", Term::nil()));
    let mut root = UserConfig::new("root");
    root.services = ServiceList::Named(vec!["admin".into()]);
    root.password_hash = Some(lib_chan_server::auth::hash_password(ROOT_PW.as_bytes()));
    c.users.push(root);
    let p = &mut c.limits.admission.penalties;
    p.auth_failed = Duration::from_secs(10);
    p.threshold = Duration::from_secs(15);
}

async fn console(server: &TestServer) -> Channel {
    login(
        &server.options(),
        server.addr.port(),
        "admin",
        &Login::user_password("root", ROOT_PW),
    )
    .await
    .expect("root starts the console")
}

async fn ask(console: &Channel, request: &str) -> Term {
    within(request, console.rpc(parse(request).unwrap()))
        .await
        .unwrap_or_else(|e| panic!("{request}: {e}"))
}

fn get<'a>(map: &'a Term, key: &str) -> &'a Term {
    map.map_get(&Term::atom(key))
        .unwrap_or_else(|| panic!("no {key} in {map}"))
}

fn text(t: &Term) -> String {
    String::from_utf8(t.as_binary().expect("a binary").to_vec()).unwrap()
}

#[tokio::test]
async fn every_verb_answers_about_the_live_server() {
    let server = TestServer::start_with(add_console).await;
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
    let carol = login(&o, port, "echo", &Login::user_password("carol", CAROL_PW))
        .await
        .unwrap();
    let book = server.connect("nameServer").await;
    within("rpc", alice.rpc(term!({store, k, v})))
        .await
        .unwrap();
    let admin = console(&server).await;

    let info = ask(&admin, "info").await;
    assert_eq!(text(get(&info, "version")), env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&info, "users"), &Term::Int(6));
    assert!(text(get(get(&info, "tls"), "subject")).contains("CN=localhost"));
    assert!(text(get(get(&info, "tls"), "not_after")).starts_with("2099-12-31"));
    let services = get(&info, "services").as_list().unwrap().to_vec();
    let names = services
        .iter()
        .find(|s| text(get(s, "name")) == "nameServer")
        .unwrap();
    assert_eq!(text(get(names, "handler")), "mod_name_server");
    assert_eq!(get(names, "connections"), &Term::Int(2));
    assert_eq!(
        get(names, "status"),
        &parse(r#"#{store => <<"memory">>, healthy => true}"#).unwrap()
    );
    assert_eq!(get(get(&info, "limits"), "max_frame"), &Term::Int(1 << 20));

    // One entry per open connection, with its user and credential; filters narrow it.
    let all = ask(&admin, "connections").await;
    let all = all.as_list().unwrap();
    assert_eq!(
        all.len(),
        4,
        "alice, carol, the book's client, root: {all:?}"
    );
    let a = all
        .iter()
        .find(|c| get(c, "user") == &Term::binary("alice"))
        .unwrap();
    assert_eq!(text(get(a, "service")), "nameServer");
    assert_eq!(get(a, "credential"), &term!(ed25519));
    assert_eq!(get(a, "calls"), &Term::Int(1));
    assert!(get(a, "bytes_in").as_int().unwrap() > 0);
    assert!(get(a, "bytes_out").as_int().unwrap() > 0);
    assert!(text(get(a, "peer")).starts_with("127.0.0.1:"));
    let book_entry = all
        .iter()
        .find(|c| get(c, "user") == &term!(undefined))
        .unwrap();
    assert_eq!(get(book_entry, "credential"), &term!(service_password));
    let only_carol = ask(&admin, r#"{connections, #{user => <<"carol">>}}"#).await;
    assert_eq!(only_carol.as_list().unwrap().len(), 1);
    let names_only = ask(&admin, r#"{connections, #{service => "nameServer"}}"#).await;
    assert_eq!(names_only.as_list().unwrap().len(), 2);
    let nowhere = ask(&admin, r#"{connections, #{peer => <<"10.">>}}"#).await;
    assert_eq!(nowhere, Term::nil());

    // Refusals: merged by source, user, service and reason.
    for _ in 0..2 {
        let r = login(
            &o,
            port,
            "nameServer",
            &Login::user_password("alice", "nope"),
        )
        .await;
        assert!(matches!(r, Err(Error::LoginFailed { .. })));
    }
    let denials = ask(&admin, "denials").await;
    let d = &denials.as_list().unwrap()[0];
    assert_eq!(get(d, "reason"), &term!(wrong_password));
    assert_eq!(get(d, "count"), &Term::Int(2));
    assert_eq!(text(get(d, "user")), "alice");
    assert_eq!(text(get(d, "source")), "127.0.0.1");

    // The counters of the metrics endpoint.
    let stats = ask(&admin, "stats").await;
    let calls = stats
        .map_get(&Term::binary(
            r#"lib_chan_calls_total{service="nameServer"}"#,
        ))
        .unwrap();
    assert!(calls.as_int().unwrap() >= 1, "{stats}");
    assert!(stats
        .map_get(&Term::binary(
            r#"lib_chan_logins_total{result="failed",credential="password"}"#
        ))
        .is_some_and(|n| n.as_int() == Some(2)));

    // kick: exactly that connection, with {error, revoked}.
    let id = get(a, "id").clone();
    let kicked = ask(&admin, &format!("{{kick, {id}}}")).await;
    assert_eq!(kicked, term!(true));
    assert_eq!(
        within("kicked", alice.closed()).await,
        CloseReason::ServerError(ErrorReason::Revoked)
    );
    assert_eq!(ask(&admin, &format!("{{kick, {id}}}")).await, term!(false));
    assert_eq!(
        within("rpc", carol.rpc(term!(hi))).await.unwrap(),
        term!(hi),
        "carol untouched"
    );
    // kick_user: every connection of that user, and nobody else's.
    let carol2 = login(
        &o,
        port,
        "nameServer",
        &Login::user_password("carol", CAROL_PW),
    )
    .await
    .unwrap();
    assert_eq!(
        ask(&admin, r#"{kick_user, <<"carol">>}"#).await,
        Term::Int(2)
    );
    for ch in [&carol, &carol2] {
        assert_eq!(
            within("kicked", ch.closed()).await,
            CloseReason::ServerError(ErrorReason::Revoked)
        );
    }
    assert_eq!(
        within("rpc", book.rpc(term!({lookup, k}))).await.unwrap(),
        term!({ok, v}),
        "the book's client untouched"
    );
    // Unknown requests are bad requests.
    match within("bad", admin.rpc(term!(frobnicate))).await {
        Err(Error::Remote(r)) => assert_eq!(r, term!({bad_request, frobnicate})),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn only_the_users_it_names_start_the_console_and_others_are_refused_as_usual() {
    let server = TestServer::start_with(add_console).await;
    let port = server.addr.port();
    // alice is a user, but not of the console: the same refusal as any other.
    let mut refused = Vec::new();
    for cred in [
        r#"{user, <<"alice">>, {password, <<"alice's own secret">>}}"#,
        r#"{user, <<"root">>, {password, <<"wrong">>}}"#,
        r#"<<"ABXy45">>"#,
    ] {
        let mut peer = RawPeer::connect(server.addr, &server.ca_path()).await;
        peer.send(&parse(&format!("{{start_service, admin, {cred}, []}}")).unwrap())
            .await;
        refused.push(peer.recv_payload().await.unwrap());
    }
    assert!(refused.iter().all(|r| r == &refused[0]), "identical bytes");
    assert_eq!(
        lib_chan_protocol::etf::decode(&refused[0]).unwrap(),
        term!({error, auth_failed})
    );
    let r = login(
        &server.options(),
        port,
        "admin",
        &Login::user_password("alice", ALICE_PW),
    )
    .await;
    assert!(matches!(r, Err(Error::LoginFailed { .. })), "{r:?}");
    // A mod_admin service with a shared password is refused, saying why.
    let mut config = lib_chan_server::Config::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        lib_chan_server::TlsSource::Files {
            cert: server.certs.cert.clone(),
            key: server.certs.key.clone(),
        },
    );
    config.services.push(ServiceConfig::new(
        "admin",
        &common::password_hash(),
        "mod_admin",
        Term::nil(),
    ));
    let e = config.validate(&lib_chan_services::registry()).unwrap_err();
    assert!(
        e.to_string().contains("may not have a service password"),
        "{e}"
    );
    let text = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"admin\"\nhandler = \"mod_admin\"\npassword = \"{}\"\n",
        server.certs.cert.display(),
        server.certs.key.display(),
        common::password_hash()
    );
    let e = lib_chan_server::Config::parse(
        &text,
        &server.certs.cert.with_file_name("x.conf"),
        &lib_chan_services::registry(),
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("service[0].password"), "{e}");
    assert_eq!(e.line, Some(7), "{e}");
}

#[tokio::test]
async fn penalties_are_listed_and_unblock_lets_the_source_in_again() {
    let server = TestServer::start_with(add_console).await;
    let admin = console(&server).await;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    // Two failed logins from 127.0.0.7: 20 s of penalty, over the 15 s threshold.
    for _ in 0..2 {
        let mut peer = RawPeer::connect_from(server.addr, &server.ca_path(), attacker)
            .await
            .unwrap();
        peer.send(&parse(r#"{start_service, nameServer, <<"wrong">>, []}"#).unwrap())
            .await;
        assert_eq!(peer.recv().await, Some(term!({error, auth_failed})));
    }
    assert!(
        RawPeer::connect_from(server.addr, &server.ca_path(), attacker)
            .await
            .is_err(),
        "penalized: refused at accept"
    );
    let listed = ask(&admin, "penalties").await;
    let p = &listed.as_list().unwrap()[0];
    assert_eq!(text(get(p, "source")), "127.0.0.7");
    assert_eq!(get(p, "refusing"), &term!(true));
    assert!(get(p, "remaining_ms").as_int().unwrap() > 15_000);
    assert_eq!(
        ask(&admin, r#"{unblock, <<"127.0.0.7">>}"#).await,
        term!(true)
    );
    assert_eq!(ask(&admin, r#"{unblock, "127.0.0.7"}"#).await, term!(false));
    assert_eq!(ask(&admin, "penalties").await, Term::nil());
    let mut peer = RawPeer::connect_from(server.addr, &server.ca_path(), attacker)
        .await
        .expect("unblocked: let in again");
    peer.send(&parse(r#"{start_service, nameServer, <<"ABXy45">>, []}"#).unwrap())
        .await;
    let welcome = peer.recv().await.unwrap();
    assert!(welcome.as_tuple().unwrap()[0].is_atom("ok"));
    // A reload from the console of a server without a config file says so.
    let r = ask(&admin, "reload").await;
    assert!(r.as_tuple().unwrap()[0].is_atom("error"), "{r}");
}

#[tokio::test]
async fn a_client_refused_at_accept_is_told_what_it_probably_is() {
    // A listener that closes every connection at once, as a server does to a source it
    // penalizes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(tcp);
        }
    });
    let (_dir, certs) = common::make_certs();
    let started = std::time::Instant::now();
    let e = lib_chan_client::ConnectOptions::new()
        .ca_file(&certs.ca)
        .connect("127.0.0.1", addr.port(), "nameServer", "pw", Term::nil())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::RefusedAtAccept { attempts: 3, .. }),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("may be refusing this address after failed logins"),
        "{shown}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "attempts spaced"
    );
}
