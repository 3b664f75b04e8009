//! `lib_chan admin HOST:PORT VERB`, the operator's console on the command line, against
//! `lib_chan serve` run from a config file with clients of several users: each verb's
//! table and `--json` document checked against what is connected; kick and kick-user
//! close exactly their connections and exit non-zero when there was nothing to do;
//! unblock lets a penalized source in again; reload prints what changed, or the config
//! error (file, line, key) and exits non-zero; a user without the console is refused with
//! exactly the words of a wrong password; `top` in a pseudo-terminal prints a line per
//! interval with the calls made meanwhile, until Ctrl-C.

mod common;
mod serve_process;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::time::Duration;

use common::{within, RawPeer, PASSWORD};
use lib_chan_client::{term, Channel, CloseReason, ConnectOptions, ErrorReason, Login, Term};
use lib_chan_protocol::parse;
use rexpect::process::WaitStatus;
use rexpect::session::Options;
use serde_json::Value;
use serve_process::{ServeProcess, BIN};

const ROOT_PW: &str = "root's console secret";
const ALICE_PW: &str = "alice's own secret";
const BOB_PW: &str = "bob's own secret";

/// The config: nameServer (the book's password), the console `admin` for root only,
/// alice and bob on nameServer; 127.0.0.1 exempt from penalties (the console runs from
/// it), 10 s of penalty per failed login elsewhere, refused at accept over 15 s.
fn conf_text(certs: &lib_chan_server::devcert::DevCertPaths) -> String {
    let hash = |pw: &str| lib_chan_server::auth::hash_password(pw.as_bytes());
    format!(
        "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [limits]\npenalty_auth_failed = 10.0\npenalty_threshold = 15.0\n\
         penalty_exempt = [\"127.0.0.1/32\"]\n\n\
         [[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\n\n\
         [[service]]\nname = \"admin\"\nhandler = \"mod_admin\"\n\n\
         [[user]]\nname = \"root\"\nservices = [\"admin\"]\npassword = \"{}\"\n\n\
         [[user]]\nname = \"alice\"\nservices = [\"nameServer\"]\npassword = \"{}\"\n\n\
         [[user]]\nname = \"bob\"\nservices = [\"nameServer\"]\npassword = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        common::password_hash(),
        hash(ROOT_PW),
        hash(ALICE_PW),
        hash(BOB_PW),
    )
}

/// A running server and what its clients need.
struct Fixture {
    server: ServeProcess,
    options: ConnectOptions,
    ca: std::path::PathBuf,
    conf: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let (dir, certs) = common::make_certs();
        let conf = dir.path().join("lib_chan.conf");
        std::fs::write(&conf, conf_text(&certs)).unwrap();
        let server = ServeProcess::start(&conf);
        Fixture {
            server,
            options: ConnectOptions::new().ca_file(&certs.ca),
            ca: certs.ca.clone(),
            conf,
            _dir: dir,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    async fn user(&self, name: &str, pw: &str) -> Channel {
        within(
            &format!("{name} logs in"),
            self.options.connect_with(
                "127.0.0.1",
                self.server.port,
                "nameServer",
                &Login::user_password(name, pw),
                Term::nil(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    async fn book_client(&self) -> Channel {
        within(
            "the book's client connects",
            self.options.clone().connect(
                "127.0.0.1",
                self.server.port,
                "nameServer",
                PASSWORD,
                Term::nil(),
            ),
        )
        .await
        .unwrap()
    }

    /// `lib_chan admin ADDR --ca CA --user USER ARGS...` with USER's password, off the
    /// runtime thread.
    async fn admin_as(&self, user: &str, pw: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("admin")
            .arg(self.address())
            .arg("--ca")
            .arg(&self.ca)
            .args(["--user", user])
            .args(args)
            .env("LIB_CHAN_PASSWORD", pw)
            .env_remove("LIB_CHAN_PASSWORD_FILE")
            .env("LIB_CHAN_HOME", self._dir.path());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    async fn admin(&self, args: &[&str]) -> Output {
        self.admin_as("root", ROOT_PW, args).await
    }

    /// `admin ARGS` that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.admin(args).await;
        assert!(
            out.status.success(),
            "admin {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `admin ARGS --json` that must succeed; its document.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The cells of the table line whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

async fn assert_revoked(ch: &Channel) {
    let reason = within("closed by the server", ch.closed()).await;
    assert_eq!(reason, CloseReason::ServerError(ErrorReason::Revoked));
}

async fn assert_open(ch: &Channel) {
    let answer = within("still answers", ch.rpc(term!({lookup, nobody})))
        .await
        .expect("still open");
    assert_eq!(answer, term!(undefined));
}

#[tokio::test]
async fn every_verb_prints_tables_and_json_of_the_live_server() {
    let f = Fixture::start();
    let alice1 = f.user("alice", ALICE_PW).await;
    let alice2 = f.user("alice", ALICE_PW).await;
    let bob = f.user("bob", BOB_PW).await;
    let book = f.book_client().await;
    common::seed_session(&book).await;
    within("alice calls", alice1.rpc(term!({lookup, joe})))
        .await
        .unwrap();

    // info: key lines, then the services.
    let info = f.ok(&["info"]).await;
    assert!(
        info.contains(&format!("version: {}\n", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    assert!(
        info.contains(&format!("config: {}\n", f.conf.display())),
        "{info}"
    );
    assert!(info.contains("users: 3\n"), "{info}");
    assert!(info.contains("tls.subject: "), "{info}");
    let names = row(&info, "nameServer");
    assert_eq!(names[1..3], ["mod_name_server", "4"], "{info}");
    assert!(names[3..].join(" ").contains("healthy=true"), "{info}");
    let doc = f.json(&["info"]).await;
    assert_eq!(doc["users"], 3);
    assert_eq!(doc["limits"]["max_frame"], 1 << 20);

    // connections: one per client and the console itself; filters narrow it.
    let all = f.json(&["connections"]).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    let users: Vec<&Value> = all.iter().map(|c| &c["user"]).collect();
    assert_eq!(users.iter().filter(|u| **u == "alice").count(), 2);
    assert_eq!(users.iter().filter(|u| **u == "bob").count(), 1);
    assert_eq!(users.iter().filter(|u| **u == "root").count(), 1);
    let book_entry = all.iter().find(|c| c["user"].is_null()).unwrap();
    assert_eq!(book_entry["credential"], "service_password");
    // The seed session: two rpcs (its cast is not a call).
    assert_eq!(book_entry["calls"], 2, "{book_entry}");
    assert_eq!(book_entry["service"], "nameServer");
    let table = f.ok(&["connections", "--user", "alice"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and alice's two: {table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[1..].iter().all(|l| l.contains(" alice ")), "{table}");
    assert_eq!(
        f.ok(&["connections", "--peer", "10."]).await,
        "no connections\n"
    );

    // kick: exactly that connection; a second kick of it does nothing, exit 1.
    let alice1_id = all
        .iter()
        .filter(|c| c["user"] == "alice")
        .map(|c| c["id"].as_u64().unwrap())
        .min()
        .unwrap();
    // Which of alice's two is which: the one that made a call.
    let called = all
        .iter()
        .find(|c| c["user"] == "alice" && c["calls"] == 1)
        .map(|c| c["id"].as_u64().unwrap())
        .unwrap();
    assert_eq!(called, alice1_id, "ids grow with connections: {all:?}");
    let id = called.to_string();
    assert_eq!(f.ok(&["kick", &id]).await, "kicked 1 connection\n");
    assert_revoked(&alice1).await;
    assert_open(&alice2).await;
    let again = f.admin(&["kick", &id]).await;
    assert!(!again.status.success());
    assert_eq!(text(&again.stdout), format!("no connection {id}\n"));

    // kick-user: all of bob's, none of alice's; nothing left to kick: exit 1.
    assert_eq!(
        f.ok(&["kick-user", "bob"]).await,
        "kicked 1 connection of bob\n"
    );
    assert_revoked(&bob).await;
    assert_open(&alice2).await;
    assert_open(&book).await;
    let again = f.admin(&["kick-user", "bob"]).await;
    assert!(!again.status.success());
    assert_eq!(text(&again.stdout), "no connection of bob\n");

    // stats: the series of the metrics endpoint.
    let stats = f.ok(&["stats"]).await;
    assert!(
        row(&stats, "lib_chan_closes_total{reason=\"revoked\"}")[1] == "2",
        "{stats}"
    );
    let doc = f.json(&["stats"]).await;
    assert_eq!(doc["lib_chan_closes_total{reason=\"revoked\"}"], 2);
    drop((alice2, book));
}

#[tokio::test]
async fn refusals_penalties_and_unblock_from_the_command_line() {
    let f = Fixture::start();
    // A user without the console is refused with the words of a wrong password.
    let alice = f.admin_as("alice", ALICE_PW, &["info"]).await;
    let wrong = f.admin_as("root", "not root's", &["info"]).await;
    assert!(!alice.status.success() && !wrong.status.success());
    let says = |o: &Output| {
        text(&o.stderr)
            .replace("alice", "USER")
            .replace("root", "USER")
    };
    assert_eq!(says(&alice), says(&wrong));
    assert!(says(&alice).contains("refused"), "{}", says(&alice));
    assert!(!says(&wrong).contains("not root's"), "no secret shown");

    let denials = f.ok(&["denials"]).await;
    assert_eq!(
        denials.lines().count(),
        3,
        "a header, alice and root: {denials}"
    );
    let r = row(&denials, "127.0.0.1");
    assert!(r.contains(&"alice") || r.contains(&"root"), "{denials}");
    let doc = f.json(&["denials"]).await;
    let root = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == "root")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(root["service"], "admin");
    assert_eq!(root["count"], 1);

    // Two failed logins from 127.0.0.7 put it over the threshold.
    assert_eq!(f.ok(&["penalties"]).await, "no penalties\n");
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, f.server.port));
    for _ in 0..2 {
        let mut peer = RawPeer::connect_from(addr, &f.ca, attacker).await.unwrap();
        peer.send(&parse(r#"{start_service, nameServer, <<"wrong">>, []}"#).unwrap())
            .await;
        assert_eq!(peer.recv().await, Some(term!({error, auth_failed})));
    }
    // The server counts a failure once it has answered it: wait until both are in.
    let mut table = String::new();
    for _ in 0..50 {
        table = f.ok(&["penalties"]).await;
        if table.contains("true") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        RawPeer::connect_from(addr, &f.ca, attacker).await.is_err(),
        "penalized: refused at accept"
    );
    let p = row(&table, "127.0.0.7");
    assert_eq!(p[2], "true", "{table}");
    let secs: f64 = p[1].trim_end_matches('s').parse().unwrap();
    assert!(secs > 15.0 && secs <= 20.0, "{table}");
    assert_eq!(
        f.ok(&["unblock", "127.0.0.7"]).await,
        "unblocked 127.0.0.7\n"
    );
    let again = f.admin(&["unblock", "127.0.0.7"]).await;
    assert!(!again.status.success());
    assert_eq!(text(&again.stdout), "no penalty on 127.0.0.7\n");
    let bad = f.admin(&["unblock", "not-an-address"]).await;
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("invalid"),
        "{}",
        text(&bad.stderr)
    );
    let mut peer = RawPeer::connect_from(addr, &f.ca, attacker)
        .await
        .expect("unblocked: let in again");
    peer.send(&parse(r#"{start_service, nameServer, <<"ABXy45">>, []}"#).unwrap())
        .await;
    assert!(peer.recv().await.unwrap().as_tuple().unwrap()[0].is_atom("ok"));
}

#[tokio::test]
async fn reload_prints_what_changed_or_the_config_error() {
    let f = Fixture::start();
    assert_eq!(
        f.ok(&["reload"]).await,
        "no change\nkept: nameServer, admin\n"
    );
    // The same text (the same hashes) with a service added.
    let base = std::fs::read_to_string(&f.conf).unwrap();
    let echo = "\n[[service]]\nname = \"extra\"\npassword = \"HASH\"\nhandler = \"mod_echo\"\n"
        .replace("HASH", &common::password_hash());
    let edited = base + &echo;
    std::fs::write(&f.conf, &edited).unwrap();
    let out = f.ok(&["reload"]).await;
    assert!(out.starts_with("added: extra\n"), "{out}");
    let extra = f
        .options
        .clone()
        .connect("127.0.0.1", f.server.port, "extra", PASSWORD, Term::nil())
        .await
        .expect("the added service");
    assert_eq!(extra.rpc(term!(hi)).await.unwrap(), term!(hi));

    // A plaintext password: the error with file, line and key; nothing changes.
    let broken = edited.replace(&common::password_hash(), "plain-text");
    let line = broken
        .lines()
        .position(|l| l.contains("plain-text"))
        .unwrap()
        + 1;
    std::fs::write(&f.conf, &broken).unwrap();
    let out = f.admin(&["reload"]).await;
    assert!(!out.status.success());
    let expected = format!(
        "reload refused: {}:{line}: service[0].password: plaintext password refused",
        f.conf.display()
    );
    assert!(
        text(&out.stdout).starts_with(&expected),
        "{}",
        text(&out.stdout)
    );
    let doc = f.json(&["stats"]).await;
    assert!(doc.is_object());
    assert_eq!(extra.rpc(term!(still)).await.unwrap(), term!(still));
}

#[tokio::test]
async fn top_prints_a_line_per_interval_until_ctrl_c() {
    let f = Fixture::start();
    let book = f.book_client().await;
    // Calls all along, so every line has some.
    let load = tokio::spawn(async move {
        loop {
            if book.rpc(term!({lookup, joe})).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // --count and --json: that many objects, one per line.
    let out = f
        .ok(&["top", "--interval", "0.3", "--count", "3", "--json"])
        .await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        assert_eq!(l["connections"], 2.0, "the load and the console: {l}");
        assert!(l["calls_per_s"].as_f64().unwrap() > 10.0, "{l}");
        assert!(l["bytes_in_per_s"].as_f64().unwrap() > 0.0, "{l}");
    }
    let bad = f.admin(&["top", "--interval", "0"]).await;
    assert!(!bad.status.success());

    // In a terminal, until Ctrl-C.
    let mut cmd = Command::new(BIN);
    cmd.arg("admin")
        .arg(f.address())
        .arg("--ca")
        .arg(&f.ca)
        .args(["--user", "root", "top", "--interval", "0.3"])
        .env("LIB_CHAN_PASSWORD", ROOT_PW)
        .env_remove("LIB_CHAN_PASSWORD_FILE")
        .env("TERM", "xterm");
    let options = Options::new().timeout_ms(Some(20_000));
    let pty = tokio::task::spawn_blocking(move || {
        let mut p = rexpect::spawn_with_options(cmd, options).unwrap();
        p.exp_string("TIME(UTC)").expect("the header");
        p.exp_string("CALLS/S").expect("the header");
        for _ in 0..3 {
            let (_, line) = p.exp_regex(r"\d\d:\d\d:\d\d[^\r\n]*").expect("a line");
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 7, "{line}");
            assert_eq!(cells[1], "2", "{line}");
            assert!(cells[4].parse::<f64>().unwrap() > 10.0, "{line}");
        }
        p.send_control('c').unwrap();
        p.exp_eof().expect("it ends on Ctrl-C");
        p
    })
    .await
    .unwrap();
    match pty.process().wait().unwrap() {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("top did not exit normally: {other:?}"),
    }
    load.abort();
}
