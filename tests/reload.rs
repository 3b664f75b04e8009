//! Live reload: a new config swapped in while the server runs, in-process through
//! `ServerHandle::reload` and as `lib_chan serve` given SIGHUP.
//!
//! Checked: an added service is usable by new connections; a changed password revokes the
//! connections made with the old one (`{error, revoked}`, seen by the Rust client as
//! `CloseReason::ServerError(Revoked)`) and only the new one works afterwards; a removed
//! service's connections are revoked; a name server keeps its names across a reload
//! that does not touch it, and starts afresh when its entry changes; a new certificate
//! is what new connections see; a bad config (rejected with one log line by `serve`)
//! changes nothing.

mod common;
mod serve_process;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{metric, scrape, within, TestServer, PASSWORD};
use lib_chan_client::{term, Channel, CloseReason, ConnectOptions, Error, ErrorReason, Term};
use lib_chan_server::devcert::DevCertPaths;
use lib_chan_server::{auth, Config, Registry, ServerHandle, ServiceConfig, StartError, TlsSource};
use serve_process::ServeProcess;

/// The password some tests change to.
const NEW_PASSWORD: &str = "n3w-Secret";

/// The config `TestServer::start` runs: nameServer, echo and test, port 0.
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
    config
}

/// A registry like the server's (`mod_test` included; its sightings go nowhere).
fn registry() -> Registry {
    common::registry(tokio::sync::mpsc::unbounded_channel().0)
}

fn handle(server: &TestServer) -> &ServerHandle {
    server.handle.as_ref().expect("running")
}

fn service<'a>(config: &'a mut Config, name: &str) -> &'a mut ServiceConfig {
    config
        .services
        .iter_mut()
        .find(|s| s.name == name)
        .expect("configured")
}

/// The hash of [`NEW_PASSWORD`], computed once.
fn new_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password(NEW_PASSWORD.as_bytes()))
        .clone()
}

async fn connect_with(
    options: ConnectOptions,
    port: u16,
    service: &str,
    password: &str,
) -> Result<Channel, Error> {
    within(
        "connect",
        options.connect("127.0.0.1", port, service, password, Term::nil()),
    )
    .await
}

async fn connect_as(server: &TestServer, service: &str, password: &str) -> Result<Channel, Error> {
    connect_with(server.options(), server.addr.port(), service, password).await
}

/// Asserts that `ch` gets closed with `{error, revoked}`.
async fn assert_revoked(ch: &Channel) {
    assert_eq!(
        within("revocation", ch.closed()).await,
        CloseReason::ServerError(ErrorReason::Revoked)
    );
}

/// Asserts that `ch` is open and answers.
async fn assert_open(ch: &Channel, request: Term, answer: &str) {
    let reply = within("rpc", ch.rpc(request)).await.expect("answered");
    assert_eq!(reply.to_string(), answer);
    assert!(!ch.is_closed());
}

/// Asserts that a `mod_chat` channel answers (`logout` before `login` is refused).
async fn assert_chat_answers(chat: &Channel) {
    match within("rpc", chat.rpc(term!(logout))).await {
        Err(Error::Remote(r)) => assert_eq!(r, term!(not_logged_in)),
        other => panic!("{other:?}"),
    }
}

/// Waits until `done` holds of the server's stats.
async fn wait_stats(
    server: &TestServer,
    what: &str,
    done: impl Fn(&lib_chan_server::stats::StatsSnapshot) -> bool,
) {
    within(what, async {
        while !done(&handle(server).stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_added_service_serves_new_connections_and_untouched_ones_keep_state() {
    let server = TestServer::start().await;
    let names = server.connect("nameServer").await;
    within("store", names.rpc(term!({store, joe, "writing a book"})))
        .await
        .unwrap();
    assert!(matches!(
        connect_as(&server, "echo2", PASSWORD).await,
        Err(Error::AuthFailed)
    ));

    let mut config = config_of(&server);
    config.services.push(ServiceConfig::new(
        "echo2",
        &common::password_hash(),
        "mod_echo",
        Term::nil(),
    ));
    let summary = handle(&server)
        .reload(config, &registry())
        .expect("reloads");
    assert_eq!(summary.added, ["echo2"]);
    assert_eq!(summary.kept, ["nameServer", "echo", "test"]);
    assert!(summary.removed.is_empty() && summary.replaced.is_empty());
    assert!(summary.password_changed.is_empty() && summary.needs_restart.is_empty());

    let echo2 = connect_as(&server, "echo2", PASSWORD).await.expect("added");
    assert_open(&echo2, term!(hello), "hello").await;
    // The connection made before the reload is untouched, and the name server's state
    // survived: a new connection sees what the old one stored.
    assert_open(&names, term!({lookup, joe}), "{ok,\"writing a book\"}").await;
    let names2 = server.connect("nameServer").await;
    assert_open(&names2, term!({lookup, joe}), "{ok,\"writing a book\"}").await;
    assert_eq!(handle(&server).stats().closed_with("revoked"), 0);
}

#[tokio::test]
async fn a_changed_password_revokes_its_connections_and_only_the_new_one_works() {
    let server = TestServer::start().await;
    let echo = server.connect("echo").await;
    let names = server.connect("nameServer").await;
    within("store", names.rpc(term!({store, k, v})))
        .await
        .unwrap();

    let mut config = config_of(&server);
    service(&mut config, "echo").password_hash = Some(new_hash());
    let summary = handle(&server)
        .reload(config, &registry())
        .expect("reloads");
    assert_eq!(summary.password_changed, ["echo"]);
    assert_eq!(summary.kept, ["nameServer", "test"]);

    assert_revoked(&echo).await;
    assert!(matches!(
        within("rpc", echo.rpc(term!(x))).await,
        Err(Error::Closed(_))
    ));
    // Another service's connection is left alone.
    assert_open(&names, term!({lookup, k}), "{ok,v}").await;
    assert!(matches!(
        connect_as(&server, "echo", PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    let echo = connect_as(&server, "echo", NEW_PASSWORD)
        .await
        .expect("the new password works");
    assert_open(&echo, term!(hi), "hi").await;
    wait_stats(&server, "the revocation counted", |s| {
        s.closed_with("revoked") == 1
    })
    .await;
}

#[tokio::test]
async fn a_removed_service_is_revoked_and_a_changed_one_starts_afresh() {
    let server = TestServer::start().await;
    let test = server.connect("test").await;
    let names = server.connect("nameServer").await;
    within("store", names.rpc(term!({store, joe, 1})))
        .await
        .unwrap();
    let echo = server.connect("echo").await;

    let mut config = config_of(&server);
    config.services.retain(|s| s.name != "test");
    // New args: a new name server, its names empty.
    service(&mut config, "nameServer").args = term!(changed);
    let summary = handle(&server)
        .reload(config, &registry())
        .expect("reloads");
    assert_eq!(summary.removed, ["test"]);
    assert_eq!(summary.replaced, ["nameServer"]);
    assert_eq!(summary.kept, ["echo"]);

    assert_revoked(&test).await;
    assert_revoked(&names).await;
    assert_open(&echo, term!(still), "still").await;
    assert!(matches!(
        connect_as(&server, "test", PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    let names = server.connect("nameServer").await;
    assert_open(&names, term!({lookup, joe}), "undefined").await;
    wait_stats(&server, "both revocations counted", |s| {
        s.closed_with("revoked") == 2
    })
    .await;
}

#[tokio::test]
async fn a_new_certificate_is_what_new_connections_see() {
    let server = TestServer::start().await;
    let before = server.connect("echo").await;
    let (_new_dir, new_certs): (_, DevCertPaths) = common::make_certs();
    let only_new_ca = ConnectOptions::new().ca_file(&new_certs.ca);
    let port = server.addr.port();
    assert!(
        connect_with(only_new_ca.clone(), port, "echo", PASSWORD)
            .await
            .is_err(),
        "the new CA must not be trusted by the old certificate"
    );

    let mut config = config_of(&server);
    config.tls = TlsSource::Files {
        cert: new_certs.cert.clone(),
        key: new_certs.key.clone(),
    };
    let summary = handle(&server)
        .reload(config, &registry())
        .expect("reloads");
    assert_eq!(summary.kept.len(), 3, "{summary}");

    let after = connect_with(only_new_ca, port, "echo", PASSWORD)
        .await
        .expect("the new certificate is served");
    assert_open(&after, term!(new), "new").await;
    match connect_with(server.options(), port, "echo", PASSWORD).await {
        Err(Error::Tls { .. }) => {}
        other => panic!("a client trusting only the old CA connected: {other:?}"),
    }
    // The connection made under the old certificate carries on.
    assert_open(&before, term!(old), "old").await;
}

#[tokio::test]
async fn a_bad_config_changes_nothing() {
    let server = TestServer::start().await;
    let echo = server.connect("echo").await;
    let names = server.connect("nameServer").await;
    within("store", names.rpc(term!({store, joe, 1})))
        .await
        .unwrap();

    // Each starts with changes that would be visible (echo's password, an added
    // service, a name server's args) before the fault.
    let changed = || {
        let mut c = config_of(&server);
        service(&mut c, "echo").password_hash = Some(new_hash());
        service(&mut c, "nameServer").args = term!(changed);
        c.services.push(ServiceConfig::new(
            "extra",
            &common::password_hash(),
            "mod_echo",
            Term::nil(),
        ));
        c
    };
    let reg = registry();
    let mut unknown_handler = changed();
    unknown_handler.services.push(ServiceConfig::new(
        "nope",
        &common::password_hash(),
        "mod_nope",
        Term::nil(),
    ));
    match handle(&server).reload(unknown_handler, &reg) {
        Err(StartError::Config(e)) => {
            assert_eq!(e.key.as_deref(), Some("service[4].handler"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let mut missing_key = changed();
    missing_key.tls = TlsSource::Files {
        cert: server.certs.cert.clone(),
        key: server.dir.path().join("missing.key"),
    };
    match handle(&server).reload(missing_key, &reg) {
        Err(StartError::Tls(e)) => assert!(e.to_string().contains("missing.key"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Valid on paper, but the store cannot be opened: found when the service is made.
    let mut unopenable = changed();
    let mut broken = ServiceConfig::new(
        "broken",
        &common::password_hash(),
        "mod_name_server",
        Term::nil(),
    );
    broken.options.store = Some("file:/nonexistent/lib_chan/names.redb".into());
    unopenable.services.push(broken);
    match handle(&server).reload(unopenable, &reg) {
        Err(StartError::Service { name, .. }) => assert_eq!(name, "broken"),
        other => panic!("{other:?}"),
    }

    // Everything as it was: old password, no added service, connections open, the
    // name server's names intact.
    assert_open(&echo, term!(same), "same").await;
    assert_open(&names, term!({lookup, joe}), "{ok,1}").await;
    let again = server.connect("echo").await;
    assert_open(&again, term!(x), "x").await;
    assert!(matches!(
        connect_as(&server, "echo", NEW_PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    assert!(matches!(
        connect_as(&server, "extra", PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    let fresh = server.connect("nameServer").await;
    assert_open(&fresh, term!({lookup, joe}), "{ok,1}").await;
    assert_eq!(handle(&server).stats().closed_with("revoked"), 0);
}

#[tokio::test]
async fn restart_only_changes_are_reported_and_not_applied() {
    let server = TestServer::start().await;
    let mut config = config_of(&server);
    config.port = 1;
    config.limits.max_connections = 7;
    config.limits.max_calls_in_flight = 3;
    let summary = handle(&server)
        .reload(config, &registry())
        .expect("reloads");
    assert_eq!(
        summary.needs_restart.len(),
        2,
        "{:?}",
        summary.needs_restart
    );
    assert!(summary.needs_restart[0].starts_with("port (0 -> 1)"));
    assert!(summary.needs_restart[1].starts_with("limits.max_connections"));
    // Still serving on the same port; the per-connection limit applies to new
    // connections: a fourth call in flight is refused busy.
    let test = server.connect("test").await;
    let mut held: Vec<_> = (0..3)
        .map(|_| {
            let t = test.clone();
            tokio::spawn(async move { t.rpc(term!(hold)).await })
        })
        .collect();
    // With 3 holds in flight a fourth call is refused busy; when an echo slips in
    // between the holds, the last hold is the one refused.
    let mut busy = false;
    for _ in 0..100 {
        if let Err(Error::Remote(r)) = within("rpc", test.rpc(term!({echo, x}))).await {
            assert_eq!(r, term!(busy));
            busy = true;
            break;
        }
        if held.iter().any(|h| h.is_finished()) {
            for h in held.iter_mut().filter(|h| h.is_finished()) {
                match h.await {
                    Ok(Err(Error::Remote(r))) => assert_eq!(r, term!(busy)),
                    other => panic!("a held call ended: {other:?}"),
                }
            }
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        busy,
        "max_calls_in_flight = 3 did not apply to a new connection"
    );
}

/// A config file for `lib_chan serve`: nameServer and echo (echo behind `echo_hash`),
/// the metrics endpoint on a free port, and `extra` appended.
fn conf_text(certs: &DevCertPaths, echo_hash: &str, extra: &str) -> String {
    format!(
        "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\n\n\
         [[service]]\nname = \"echo\"\npassword = \"{echo_hash}\"\nhandler = \"mod_echo\"\n{extra}",
        certs.cert.display(),
        certs.key.display(),
        common::password_hash(),
    )
}

/// Waits until `server`'s standard error holds `text` `n` times.
async fn wait_log(server: &ServeProcess, text: &str, n: usize) {
    within(&format!("{n} x {text:?} in the log"), async {
        while server.stderr().matches(text).count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_broken_one_changes_nothing() {
    let (dir, certs) = common::make_certs();
    let conf = dir.path().join("lib_chan.conf");
    std::fs::write(&conf, conf_text(&certs, &common::password_hash(), "")).unwrap();
    let server = ServeProcess::start(&conf);
    let metrics = server
        .metrics_addr()
        .expect("a `metrics listening on` line");
    let options = ConnectOptions::new().ca_file(&certs.ca);
    let port = server.port;
    let echo = connect_with(options.clone(), port, "echo", PASSWORD)
        .await
        .unwrap();
    let names = connect_with(options.clone(), port, "nameServer", PASSWORD)
        .await
        .unwrap();
    within("store", names.rpc(term!({store, joe, 1})))
        .await
        .unwrap();

    // echo's password changes and a chat service is added.
    let chat = "\n[[service]]\nname = \"chat\"\npassword = \"HASH\"\nhandler = \"mod_chat\"\n"
        .replace("HASH", &common::password_hash());
    let edited = conf_text(&certs, &new_hash(), &chat);
    std::fs::write(&conf, &edited).unwrap();
    server.signal("HUP");
    wait_log(&server, "config reloaded", 1).await;

    assert_revoked(&echo).await;
    assert_open(&names, term!({lookup, joe}), "{ok,1}").await;
    assert!(matches!(
        connect_with(options.clone(), port, "echo", PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    let echo = connect_with(options.clone(), port, "echo", NEW_PASSWORD)
        .await
        .expect("the new password works");
    assert_open(&echo, term!(hi), "hi").await;
    let chat = connect_with(options.clone(), port, "chat", PASSWORD)
        .await
        .expect("the added service");
    assert_chat_answers(&chat).await;
    within("the revocation counted", async {
        while metric(
            &scrape(metrics).await,
            "lib_chan_closes_total{reason=\"revoked\"}",
        ) != Some(1.0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Broken: a plaintext password for echo. One error line naming file, line and key;
    // nothing changes.
    let broken = edited.replace(&new_hash(), "plain-text");
    let line = broken
        .lines()
        .position(|l| l.contains("plain-text"))
        .unwrap()
        + 1;
    std::fs::write(&conf, &broken).unwrap();
    assert_eq!(
        server.stderr().matches("ERROR").count(),
        0,
        "{}",
        server.stderr()
    );
    server.signal("HUP");
    wait_log(&server, "reload refused", 1).await;
    let log = server.stderr();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    let expected = format!(
        "{}:{line}: service[1].password: plaintext password refused",
        conf.display()
    );
    assert!(
        errors[0].contains(&expected),
        "{} lacks {expected}",
        errors[0]
    );
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");

    assert_open(&echo, term!(still), "still").await;
    assert_chat_answers(&chat).await;
    assert_open(&names, term!({lookup, joe}), "{ok,1}").await;
    assert!(matches!(
        connect_with(options.clone(), port, "echo", PASSWORD).await,
        Err(Error::AuthFailed)
    ));
    connect_with(options, port, "echo", NEW_PASSWORD)
        .await
        .expect("the reloaded password still works");
    drop(dir);
}

#[tokio::test]
async fn sighup_on_the_built_in_default_just_says_there_is_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(serve_process::BIN);
    cmd.args(["serve", "--port", "0"])
        .current_dir(dir.path())
        .env("LIB_CHAN_HOME", dir.path())
        .env("HOME", dir.path());
    let server = ServeProcess::spawn(cmd);
    server.signal("HUP");
    wait_log(&server, "no config file to reload", 1).await;
    // Still serving.
    let password_file = dir
        .path()
        .join(lib_chan_client::password_file::SERVE_PASSWORD_FILE_NAME);
    let password = std::fs::read_to_string(password_file).unwrap();
    let options = ConnectOptions::new().ca_file(DevCertPaths::in_dir(dir.path()).ca);
    let names = connect_with(options, server.port, "nameServer", password.trim())
        .await
        .unwrap_or_else(|e| panic!("still serving: {e:?}; server stderr:\n{}", server.stderr()));
    assert_open(&names, term!({lookup, nobody}), "undefined").await;
    assert!(!server.stderr().contains("ERROR"), "{}", server.stderr());
}
