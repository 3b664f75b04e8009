//! `lib_chan import-conf`: a config in the shape of the book's Erlang lib_chan, converted;
//! its output passes `check-config`, and a server started on it runs the book's session.
//! Malformed input gets the file, the line and what was expected.

mod common;
mod serve_process;

use std::process::Command;

use common::within;
use lib_chan_client::{term, ConnectOptions, Term};
use serve_process::{ServeProcess, BIN};

const BOOK: &str = r#"%% lib_chan.conf as in Programming Erlang, chapter on lib_chan.
{port, 0}.
{service, nameServer, password, "ABXy45", mfa, mod_name_server, start_me_up, notUsed}.
{service, chat, password, "AsDT67aQ", mfa, mod_chat_controller, start, []}.
{service, math, password, "qwerty", mfa, mod_math, run, []}.
"#;

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("LIB_CHAN_PASSWORD")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_book_config_imports_checks_and_serves_the_seed_session() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("book.conf"), BOOK).unwrap();
    let out = run(dir.path(), &["import-conf", "book.conf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    for secret in ["ABXy45", "AsDT67aQ", "qwerty"] {
        assert!(
            !toml.contains(secret),
            "plaintext {secret} written:\n{toml}"
        );
    }
    assert!(toml.contains("# Not imported: mod_math:run"), "{toml}");
    std::fs::write(dir.path().join("lib_chan.conf"), &toml).unwrap();
    let gen = run(
        dir.path(),
        &[
            "gen-cert",
            "--out",
            "certs",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
        ],
    );
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let check = run(dir.path(), &["check-config", "lib_chan.conf"]);
    assert!(
        check.status.success(),
        "check-config refused the import: {}\n{toml}",
        String::from_utf8_lossy(&check.stderr)
    );
    let server = ServeProcess::start(&dir.path().join("lib_chan.conf"));
    let ch = within(
        "connect",
        ConnectOptions::new()
            .ca_file(dir.path().join("certs/ca.pem"))
            .connect(
                "127.0.0.1",
                server.port,
                "nameServer",
                "ABXy45",
                Term::nil(),
            ),
    )
    .await
    .expect("the book's password works on the imported config");
    ch.cast(term!({store, joe, "writing a book"}))
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
    // The chat service came across too, behind its own password.
    let chat = within(
        "chat",
        ConnectOptions::new()
            .ca_file(dir.path().join("certs/ca.pem"))
            .connect("127.0.0.1", server.port, "chat", "AsDT67aQ", Term::nil()),
    )
    .await
    .expect("chat imported");
    assert_eq!(
        within("login", chat.rpc(term!({login, "room", "joe"})))
            .await
            .unwrap(),
        term!(true)
    );
}

#[test]
fn malformed_book_configs_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.conf"),
        "{port, 1234}.\n\n{service, nameServer, password, \"x\"}.\n",
    )
    .unwrap();
    let out = run(dir.path(), &["import-conf", "bad.conf"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:3: expected {service, Name, password, P, mfa, Mod, Func, ArgsS}"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing half-written on standard output"
    );
}
