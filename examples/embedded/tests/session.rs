//! The embedding example end to end: its server in-process on the test's runtime, on a
//! runtime of its own driven by the blocking client, and the example program itself.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lib_chan_client::{Error, Term};
use lib_chan_example_embedded::{client_options, config, registry, session, start, SERVICE};
use lib_chan_server::{Server, StartError, TlsSource};

const PASSWORD: &str = "counter-secret";

/// Bounds every wait: a bug fails the test instead of hanging it.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The transcript every run of the session produces from a counter starting at 100.
fn expected_transcript() -> Vec<&'static str> {
    vec![
        "one: get -> 100",
        "one: incr -> 101",
        "ten: incr -> 111",
        "one: get -> 116",
        "one: {add,x} -> error {bad_request,{add,x}}",
        "ten: pushed {count,116}",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_runs_a_session_end_to_end() {
    let server = within("start", start(PASSWORD, 100)).await.unwrap();
    let addr = server.handle.local_addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0, "port 0 was resolved to the bound port");

    let lines = within("session", session(addr, &server.ca_pem, PASSWORD))
        .await
        .unwrap();
    assert_eq!(lines, expected_transcript());

    // The service's state outlives connections: it belongs to the [[service]] entry.
    let ch = within(
        "connect",
        client_options(&server.ca_pem).connect(
            "localhost",
            addr.port(),
            SERVICE,
            PASSWORD,
            Term::nil(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        within("get", ch.rpc(Term::atom("get"))).await.unwrap(),
        Term::Int(116)
    );
    ch.close().await;

    // Only the hash is kept, and it checks.
    let wrong = within(
        "wrong password",
        client_options(&server.ca_pem).connect(
            "localhost",
            addr.port(),
            SERVICE,
            "nope",
            Term::nil(),
        ),
    )
    .await;
    assert!(matches!(wrong, Err(Error::AuthFailed)), "{wrong:?}");

    // The handle shuts it down: nothing listens afterwards.
    within("shutdown", server.handle.shutdown()).await;
    let after = within(
        "connect after shutdown",
        client_options(&server.ca_pem).connect(
            "localhost",
            addr.port(),
            SERVICE,
            PASSWORD,
            Term::nil(),
        ),
    )
    .await;
    assert!(
        matches!(&after, Err(Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::ConnectionRefused),
        "{after:?}"
    );
}

/// A program without async code of its own: the server on a runtime the program made,
/// a blocking client on the main thread.
#[test]
fn the_server_runs_on_a_runtime_of_its_own() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(within("start", start(PASSWORD, -3)))
        .unwrap();
    let port = server.handle.local_addr().port();
    let ch = lib_chan_client::blocking::connect_with_options(
        client_options(&server.ca_pem).rpc_timeout(Duration::from_secs(10)),
        "127.0.0.1",
        port,
        SERVICE,
        PASSWORD,
        Term::Int(4),
    )
    .unwrap();
    assert_eq!(ch.rpc(Term::atom("incr")).unwrap(), Term::Int(1));
    assert_eq!(
        ch.rpc(Term::tuple([Term::atom("add"), Term::Int(-11)]))
            .unwrap(),
        Term::Int(-10)
    );
    ch.close();
    runtime.block_on(within("shutdown", server.handle.shutdown()));
}

/// The counter's registered check sees ArgsS before anything starts.
#[tokio::test]
async fn a_bad_args_s_stops_start_up() {
    let certs = lib_chan_server::devcert::DevCerts::generate(&["localhost".to_owned()]).unwrap();
    let tls = TlsSource::Pem {
        cert: certs.server_pem,
        key: certs.server_key_pem,
    };
    let mut bad = config(tls, PASSWORD, 0);
    bad.services[0].args = Term::atom("notUsed");
    let e = within("bind", Server::bind(bad, &registry()))
        .await
        .unwrap_err();
    assert!(matches!(e, StartError::Config(_)), "{e:?}");
    let shown = e.to_string();
    assert!(shown.contains("service[0].handler"), "{shown}");
    assert!(
        shown.contains("wants the starting value as args, an integer (got notUsed)"),
        "{shown}"
    );
}

/// `cargo run -p lib_chan_example_embedded`, as a process.
#[test]
fn the_example_program_runs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lib_chan_example_embedded"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("listening on 127.0.0.1:"), "{out}");
    assert_eq!(lines[1..lines.len() - 1], expected_transcript(), "{out}");
    assert_eq!(lines.last(), Some(&"shut down"), "{out}");
}
