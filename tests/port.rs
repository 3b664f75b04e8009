//! Port programs (`handler = "port"`, PROTOCOL.md section 9) behind a real server: the
//! seed session through a port name server from the Rust client and the command line;
//! a program that crashes mid-call, exits at start, writes garbage, never reads, or
//! answers slowly, each with the other connections and services carrying on; reload
//! adding and removing a port service; shutdown with a call in flight.
//!
//! The programs are escripts in `tests/ports/`; the tests fail (not skip) without
//! Erlang's `escript`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{within, TestServer, PASSWORD};
use lib_chan_client::{term, Channel, Error, Term};
use lib_chan_server::port_config::{PortOptions, StderrMode};
use lib_chan_server::{Config, ServiceConfig};

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ports")
        .join(name)
}

fn escript() -> String {
    let found = std::process::Command::new("escript")
        .arg("-h")
        .output()
        .is_ok();
    assert!(
        found,
        "escript (Erlang) is needed: apt-get install erlang-base"
    );
    "escript".into()
}

/// A port service running `tests/ports/NAME`, with quick restarts and a short call
/// timeout.
fn port_service(service: &str, name: &str, env: &[(&str, String)]) -> ServiceConfig {
    let mut s = ServiceConfig::new(service, &common::password_hash(), "port", Term::nil());
    s.options.port = Some(PortOptions {
        command: vec![escript(), program(name).display().to_string()],
        working_dir: std::env::temp_dir(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        max_restarts: 3,
        restart_backoff: Duration::from_millis(100),
        call_timeout: Duration::from_secs(2),
        stderr: StderrMode::Log,
    });
    s
}

async fn connect(server: &TestServer, service: &str) -> Result<Channel, Error> {
    within(
        "connect",
        server.options().connect(
            "127.0.0.1",
            server.addr.port(),
            service,
            PASSWORD,
            Term::nil(),
        ),
    )
    .await
}

async fn start(services: Vec<ServiceConfig>) -> TestServer {
    TestServer::start_with(move |c: &mut Config| c.services.extend(services)).await
}

#[tokio::test]
async fn the_seed_session_runs_through_a_port_name_server() {
    let server = start(vec![port_service("names", "name_server.escript", &[])]).await;
    let ch = connect(&server, "names")
        .await
        .expect("a port service starts");
    common::seed_session(&ch).await;
    // Two connections are two Conns of one program, sharing its names.
    let other = connect(&server, "names").await.unwrap();
    let (a, b) = (
        within("rpc", ch.rpc(term!({ whoami }))).await.unwrap(),
        within("rpc", other.rpc(term!({ whoami }))).await.unwrap(),
    );
    assert_ne!(a, b);
    assert_eq!(
        within("rpc", other.rpc(term!({lookup, joe})))
            .await
            .unwrap(),
        term!({ok, "writing a book"})
    );
    match within("rpc", ch.rpc(term!(nonsense))).await {
        Err(Error::Remote(r)) => assert_eq!(r, term!({bad_request, nonsense})),
        other => panic!("{other:?}"),
    }
    // And from the command line.
    let (addr, ca) = (
        format!("127.0.0.1:{}", server.addr.port()),
        server.ca_path().display().to_string(),
    );
    // Off the test's runtime thread, which also runs the server.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lib_chan"))
            .args(["rpc", &addr, "names", "{lookup, joe}", "--ca", &ca])
            .env("LIB_CHAN_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{ok,\"writing a book\"}\n"
    );
}

#[tokio::test]
async fn a_crash_mid_call_fails_its_calls_closes_its_connections_and_restarts() {
    let server = start(vec![port_service("names", "name_server.escript", &[])]).await;
    let echo = connect(&server, "echo").await.unwrap();
    let ch = connect(&server, "names").await.unwrap();
    let bystander = connect(&server, "names").await.unwrap();
    within("store", ch.rpc(term!({store, k, v}))).await.unwrap();
    let slow = tokio::spawn({
        let ch = ch.clone();
        async move { ch.rpc(term!({slow, 5000, late})).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    match within("crash", ch.rpc(term!({ crash }))).await {
        Err(Error::Remote(r)) => assert_eq!(r, term!(handler_crashed)),
        Err(Error::Closed(_)) => {}
        other => panic!("{other:?}"),
    }
    match within("slow call", slow).await.unwrap() {
        Err(Error::Remote(r)) => assert_eq!(r, term!(handler_crashed)),
        other => panic!("the call in flight must fail: {other:?}"),
    }
    within("closed", ch.closed()).await;
    within("closed", bystander.closed()).await;
    // Another service never noticed.
    assert_eq!(
        within("echo", echo.rpc(term!(hi))).await.unwrap(),
        term!(hi)
    );
    // The program is started again: a new connection works (with fresh names).
    let again = within("restart", async {
        loop {
            if let Ok(ch) = connect(&server, "names").await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        within("rpc", again.rpc(term!({lookup, k}))).await.unwrap(),
        term!(undefined)
    );
    let text = server.handle.as_ref().unwrap().metrics_text();
    assert!(
        text.contains("lib_chan_service_events_total{service=\"names\",event=\"port_crashes\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_program_that_exits_at_start_makes_connections_busy_not_hang() {
    let server = start(vec![port_service("dead", "exits_at_start.escript", &[])]).await;
    // While it starts and dies: busy, or a welcome whose channel is closed when the
    // program dies; never a hang.
    let started = Instant::now();
    match connect(&server, "dead").await {
        Err(Error::Busy) => {}
        Ok(ch) => {
            within("closed when the program died", ch.closed()).await;
        }
        Err(e) => panic!("{e:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered in time"
    );
    // After max_restarts crashes in a row it is failing: busy at once.
    within("failing", async {
        loop {
            let text = server.handle.as_ref().unwrap().metrics_text();
            if common::metric(
                &text,
                "lib_chan_service_events_total{service=\"dead\",event=\"port_crashes\"}",
            )
            .is_some_and(|n| n >= 3.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let started = Instant::now();
    assert!(matches!(connect(&server, "dead").await, Err(Error::Busy)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failing: busy at once"
    );
    assert_eq!(
        within(
            "echo",
            connect(&server, "echo").await.unwrap().rpc(term!(x))
        )
        .await
        .unwrap(),
        term!(x)
    );
}

#[tokio::test]
async fn garbage_from_the_program_is_its_crash_never_the_servers() {
    let server = start(vec![port_service("junk", "garbage.escript", &[])]).await;
    let ch = connect(&server, "junk").await.unwrap();
    match within("call", ch.rpc(term!(anything))).await {
        Err(Error::Remote(r)) => assert_eq!(r, term!(handler_crashed)),
        Err(Error::Closed(_)) => {}
        other => panic!("{other:?}"),
    }
    let echo = connect(&server, "echo").await.unwrap();
    assert_eq!(
        within("echo", echo.rpc(term!(ok))).await.unwrap(),
        term!(ok)
    );
}

#[tokio::test]
async fn a_program_that_never_reads_holds_up_only_its_own_service() {
    let server = start(vec![port_service("deaf", "never_reads.escript", &[])]).await;
    let deaf = connect(&server, "deaf").await.unwrap();
    let echo = connect(&server, "echo").await.unwrap();
    // More than a pipe holds: the writes to the program block.
    let big = Term::binary(vec![b'x'; 32 * 1024]);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let ch = deaf.clone();
            let big = big.clone();
            tokio::spawn(async move { ch.rpc(Term::tuple([term!(store), term!(k), big])).await })
        })
        .collect();
    // Meanwhile another service answers at once, every time.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(
            within("echo", echo.rpc(Term::Int(i))).await.unwrap(),
            Term::Int(i)
        );
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("echo's slowest answer while the port program was stuck: {worst:?}");
    // Every call to the deaf program ends (timeout or crash), none hangs.
    for c in calls {
        let r = within("deaf call", c).await.unwrap();
        assert!(
            matches!(r, Err(Error::Remote(_)) | Err(Error::Closed(_))),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_answer_does_not_hold_up_other_connections() {
    let server = start(vec![port_service("names", "name_server.escript", &[])]).await;
    let a = connect(&server, "names").await.unwrap();
    let b = connect(&server, "names").await.unwrap();
    let slow = tokio::spawn({
        let a = a.clone();
        async move {
            let r = a.rpc(term!({slow, 1000, done})).await;
            (r, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert_eq!(
        within("lookup", b.rpc(term!({lookup, nobody})))
            .await
            .unwrap(),
        term!(undefined)
    );
    let fast = t.elapsed();
    let (r, slow_at) = within("slow", slow).await.unwrap();
    assert_eq!(r.unwrap(), term!(done));
    assert!(slow_at > t + fast, "the fast answer came first");
    assert!(fast < Duration::from_millis(900), "{fast:?}");
}

/// Waits until `path` holds `text`.
async fn wait_file(path: &Path, text: &str) {
    within("pid file", async {
        loop {
            if std::fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn reload_adds_and_removes_port_services_and_stops_their_programs() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut config = Config::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        0,
        lib_chan_server::TlsSource::Files {
            cert: server.certs.cert.clone(),
            key: server.certs.key.clone(),
        },
    );
    config.services = common::services();
    config.services.push(port_service(
        "names",
        "name_server.escript",
        &[("PID_FILE", pid_file.display().to_string())],
    ));
    let registry = common::registry(tokio::sync::mpsc::unbounded_channel().0);
    let handle = server.handle.as_ref().unwrap();
    let summary = handle.reload(config.clone(), &registry).unwrap();
    assert_eq!(summary.added, ["names"]);
    let ch = connect(&server, "names").await.unwrap();
    assert_eq!(
        within("rpc", ch.rpc(term!({lookup, x}))).await.unwrap(),
        term!(undefined)
    );
    wait_file(&pid_file, "").await;
    config.services.retain(|s| s.name != "names");
    let summary = handle.reload(config, &registry).unwrap();
    assert_eq!(summary.removed, ["names"]);
    within("revoked", ch.closed()).await;
    // The program got its input closed (and said so before exiting).
    wait_file(&pid_file, "stopped").await;
    assert!(matches!(
        connect(&server, "names").await,
        Err(Error::AuthFailed)
    ));
}

#[tokio::test]
async fn shutdown_answers_the_call_in_flight_then_stops_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut server = start(vec![port_service(
        "names",
        "name_server.escript",
        &[("PID_FILE", pid_file.display().to_string())],
    )])
    .await;
    let ch = connect(&server, "names").await.unwrap();
    wait_file(&pid_file, "").await;
    let slow = tokio::spawn({
        let ch = ch.clone();
        async move { ch.rpc(term!({slow, 300, finished})).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    within("shutdown", server.handle.take().unwrap().shutdown()).await;
    assert_eq!(
        within("slow", slow).await.unwrap().unwrap(),
        term!(finished)
    );
    wait_file(&pid_file, "stopped").await;
}

/// A port service running one of the book-style examples in `clients/erlang/examples`.
fn book_example(service: &str, script: &str) -> ServiceConfig {
    let mut s = port_service(service, "name_server.escript", &[]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients/erlang/examples")
        .join(script);
    s.options.port.as_mut().unwrap().command = vec![escript(), path.display().to_string()];
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_own_modules_serve_every_client_as_port_programs() {
    let server = TestServer::start_with(|c: &mut Config| {
        // The book's mod_name_server (and kvs) in place of the built-in name server.
        c.services.retain(|s| s.name != "nameServer");
        c.services
            .push(book_example("nameServer", "name_server.escript"));
        c.services.push(book_example("chat", "chat.escript"));
    })
    .await;
    // The Rust client.
    let ch = connect(&server, "nameServer").await.unwrap();
    within("cast", ch.cast(term!({store, joe, "writing a book"})))
        .await
        .unwrap();
    assert_eq!(
        within("rpc", ch.rpc(term!({lookup, joe}))).await.unwrap(),
        term!({ok, "writing a book"})
    );
    assert_eq!(
        within("rpc", ch.rpc(term!({lookup, jim}))).await.unwrap(),
        term!(undefined)
    );
    let (addr, ca, port) = (
        format!("127.0.0.1:{}", server.addr.port()),
        server.ca_path().display().to_string(),
        server.addr.port().to_string(),
    );
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erlang/seed_session.escript");
    let (cli, erl) = tokio::task::spawn_blocking(move || {
        // The command line.
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_lib_chan"))
            .args(["rpc", &addr, "nameServer", "{lookup, joe}", "--ca", &ca])
            .env("LIB_CHAN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        // An Erlang node with nothing but ssl: the book's session, then 100 calls.
        let erl = std::process::Command::new("escript")
            .arg(&seed)
            .args(["localhost", &port, &ca])
            .output()
            .unwrap();
        (cli, erl)
    })
    .await
    .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout),
        "{ok,\"writing a book\"}\n"
    );
    let erl_out = String::from_utf8_lossy(&erl.stdout);
    assert!(
        erl.status.success() && erl_out.contains("seed session ok"),
        "{erl_out}\n{}",
        String::from_utf8_lossy(&erl.stderr)
    );
    // The book-style chat: two members hear each other.
    let joe = connect(&server, "chat").await.unwrap();
    let jim = connect(&server, "chat").await.unwrap();
    assert_eq!(
        within("login", joe.rpc(term!({login, "room", "joe"})))
            .await
            .unwrap(),
        term!(true)
    );
    assert_eq!(
        within("login", jim.rpc(term!({login, "room", "jim"})))
            .await
            .unwrap(),
        term!(true)
    );
    assert_eq!(
        within("relay", jim.rpc(term!({relay, "hello"})))
            .await
            .unwrap(),
        term!(true)
    );
    let heard = within("pushes", async {
        let mut seen = Vec::new();
        while let Some(t) = joe.recv().await {
            let done = t == term!({msg, "jim", "room", "hello"});
            seen.push(t);
            if done {
                return seen;
            }
        }
        seen
    })
    .await;
    assert!(heard.contains(&term!({joined, "jim", "room"})), "{heard:?}");
}

#[tokio::test]
async fn a_python_port_program_serves_the_seed_session() {
    let server = TestServer::start_with(|c: &mut Config| {
        let mut s = port_service("pyNames", "name_server.escript", &[]);
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/examples/name_server.py");
        s.options.port.as_mut().unwrap().command =
            vec!["python3".into(), script.display().to_string()];
        c.services.push(s);
    })
    .await;
    let ch = connect(&server, "pyNames")
        .await
        .expect("the Python program starts");
    common::seed_session(&ch).await;
}
