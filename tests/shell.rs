//! `lib_chan shell` as a person uses it: in a pseudo-terminal (the rexpect crate), with
//! keys typed and the screen read. The seed session, a term over two lines, casts,
//! errors that leave the shell running, a push printed while a line is half typed
//! (which must survive it), `q().` and Ctrl-D, and a channel the server closes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{within, TestServer, PASSWORD};
use lib_chan_protocol::term;
use rexpect::process::WaitStatus;
use rexpect::session::{Options, PtySession};

/// Every expectation gives up after this long, failing the test.
const TIMEOUT_MS: u64 = 20_000;

/// `lib_chan shell` on `service` in a fresh pseudo-terminal.
fn spawn_shell(server: &TestServer, service: &str, home: &Path) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lib_chan"));
    cmd.args([
        "shell",
        &format!("127.0.0.1:{}", server.addr.port()),
        service,
    ])
    .arg("--ca")
    .arg(&server.certs.ca)
    .env("LIB_CHAN_PASSWORD", PASSWORD)
    .env("LIB_CHAN_HOME", home)
    .env_remove("LIB_CHAN_PASSWORD_FILE")
    .env("TERM", "xterm");
    let options = Options::new()
        .timeout_ms(Some(TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    rexpect::spawn_with_options(cmd, options).expect("lib_chan shell starts in a pty")
}

/// Types `keys` (a carriage return is Enter).
fn type_keys(p: &mut PtySession, keys: &str) {
    p.send(keys).unwrap();
    p.flush().unwrap();
}

/// Waits for `text` on the screen, failing the test with what came instead.
fn expect(p: &mut PtySession, text: &str) {
    if let Err(e) = p.exp_string(text) {
        panic!("expected {text:?} from the shell: {e}");
    }
}

/// Waits for the shell to exit and returns its status code.
fn exit_code(p: &mut PtySession) -> i32 {
    p.exp_eof().expect("the shell exits");
    match p.process().wait().expect("wait") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the shell did not exit normally: {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_seed_session_typed_into_the_shell() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn_shell(&server, "nameServer", home.path());
    expect(&mut p, "Connected to nameServer");
    expect(&mut p, "1> ");
    type_keys(&mut p, "{store, joe, \"writing a book\"}.\r");
    expect(&mut p, "true");
    expect(&mut p, "2> ");
    type_keys(&mut p, "{lookup, joe}.\r");
    expect(&mut p, "{ok,\"writing a book\"}");
    expect(&mut p, "3> ");

    // A term over two lines: the second gets the continuation prompt.
    type_keys(&mut p, "{lookup,\r");
    expect(&mut p, ".. ");
    type_keys(&mut p, "jim}.\r");
    expect(&mut p, "undefined");
    expect(&mut p, "4> ");

    // `!` casts; two terms on one line are sent in turn.
    type_keys(&mut p, "!{store, ann, 7}. {lookup, ann}.\r");
    expect(&mut p, "ok\r\n{ok,7}");
    expect(&mut p, "5> ");

    // Errors are printed and the shell goes on.
    type_keys(&mut p, "{a, b].\r");
    expect(&mut p, "* 1:6: expected ',' or '}' but found ']'");
    type_keys(&mut p, "{bogus, 1}.\r");
    expect(&mut p, "** error: {bad_request,{bogus,1}}");
    type_keys(&mut p, "{lookup, joe}.\r");
    expect(&mut p, "{ok,\"writing a book\"}");

    type_keys(&mut p, "q().\r");
    assert_eq!(exit_code(&mut p), 0);
    // The history was kept, private to the user.
    let history = std::fs::read_to_string(home.path().join("shell_history")).unwrap();
    assert!(history.contains("{lookup, joe}."), "{history}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.path().join("shell_history"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_push_is_printed_while_a_line_is_typed_and_the_line_survives() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn_shell(&server, "nameServer", home.path());
    expect(&mut p, "1> ");
    type_keys(&mut p, "{watch, jim}.\r");
    expect(&mut p, "true");
    expect(&mut p, "2> ");

    // Half a line typed, not sent...
    type_keys(&mut p, "{lookup, ji");
    expect(&mut p, "{lookup, ji");
    // ...when another client's store makes the name server push a change.
    rt.block_on(async {
        let other = server.connect("nameServer").await;
        let stored = within("store", other.rpc(term!({store, jim, "gardening"}))).await;
        assert_eq!(stored.unwrap(), term!(true));
        other.close().await;
    });
    expect(&mut p, "Shell got {changed,jim,{ok,\"gardening\"}}");
    // The prompt and the half line are drawn again below the push...
    expect(&mut p, "2> {lookup, ji");
    // ...and it is still the line being edited: finishing it sends `{lookup, jim}`.
    type_keys(&mut p, "m}.\r");
    expect(&mut p, "{ok,\"gardening\"}");
    expect(&mut p, "3> ");

    // Ctrl-D at an empty prompt quits cleanly too.
    p.send_control('d').unwrap();
    assert_eq!(exit_code(&mut p), 0);
}

#[test]
fn the_shell_says_when_the_server_closes_the_channel() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let mut p = spawn_shell(&server, "test", home.path());
    expect(&mut p, "1> ");
    // mod_test's `close` closes the channel without answering.
    type_keys(&mut p, "close.\r");
    // The call's error and the news of the close come from two tasks: either first.
    let said = p
        .exp_regex(r"\*\* error: no_reply[\s\S]*\*\* channel closed: closed by the server|\*\* channel closed: closed by the server[\s\S]*\*\* error: no_reply")
        .map(|(_, said)| said);
    assert!(said.is_ok(), "{said:?}");
    type_keys(&mut p, "\r");
    expect(&mut p, "lib_chan: channel closed");
    assert_eq!(exit_code(&mut p), 1);
}

#[path = "common/proxy.rs"]
mod proxy;

#[test]
fn with_reconnect_the_shell_survives_a_lost_connection() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let proxy = rt.block_on(proxy::Proxy::start(server.addr));
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lib_chan"));
    cmd.args([
        "shell",
        &format!("127.0.0.1:{}", proxy.addr.port()),
        "nameServer",
        "--reconnect",
    ])
    .arg("--ca")
    .arg(&server.certs.ca)
    .env("LIB_CHAN_PASSWORD", PASSWORD)
    .env("LIB_CHAN_HOME", home.path())
    .env_remove("LIB_CHAN_PASSWORD_FILE")
    .env("TERM", "xterm");
    let options = Options::new()
        .timeout_ms(Some(TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    let mut p = rexpect::spawn_with_options(cmd, options).unwrap();
    expect(&mut p, "1> ");
    type_keys(&mut p, "{store, joe, 1, #{owner => session}}.\r");
    expect(&mut p, "true");
    expect(&mut p, "2> ");
    rt.block_on(async { proxy.cut() });
    expect(&mut p, "** connection lost");
    expect(&mut p, "** session resumed");
    type_keys(&mut p, "{lookup, joe}.\r");
    expect(&mut p, "{ok,1}");
    type_keys(&mut p, "q().\r");
    assert_eq!(exit_code(&mut p), 0);
    // q(). closed the channel in order: the session ended, and its name with it.
    let check = rt.block_on(server.connect("nameServer"));
    let gone = rt.block_on(within("the session's name goes", async {
        loop {
            let r = check.rpc(term!({lookup, joe})).await.unwrap();
            if r == term!(undefined) {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }));
    assert_eq!(gone, term!(undefined));
}
