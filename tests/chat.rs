//! `mod_chat`, IRC Lite, through the real server: several clients at once on the Rust
//! client, the edge cases as call errors, and members that go away badly: a `lib_chan
//! shell` process killed with SIGKILL, a TCP connection dropped without `close`, and a
//! client that stops reading, which is closed instead of slowing the group down.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{password_hash, within, RawPeer, TestServer, PASSWORD};
use lib_chan_client::{Channel, Error};
use lib_chan_protocol::{term, Term};
use lib_chan_server::ServiceConfig;

/// A server offering mod_chat as `chat`, beside the usual test services.
async fn chat_server(adjust: impl FnOnce(&mut lib_chan_server::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.services.push(ServiceConfig::new(
            "chat",
            &password_hash(),
            "mod_chat",
            Term::atom("notUsed"),
        ));
        adjust(config);
    })
    .await
}

fn s(text: &str) -> Term {
    Term::string(text)
}

fn joined(nick: &str, group: &str) -> Term {
    term!({joined, (nick), (group)})
}

fn left(nick: &str, group: &str) -> Term {
    term!({left, (nick), (group)})
}

fn msg(nick: &str, group: &str, text: Term) -> Term {
    Term::tuple([term!(msg), s(nick), s(group), text])
}

/// The next push on `ch`.
async fn next_push(ch: &Channel) -> Term {
    within("a push", ch.recv()).await.expect("channel open")
}

/// Asserts that nothing is pushed to `ch` for a short while.
async fn no_push(ch: &Channel) {
    if let Ok(t) = tokio::time::timeout(Duration::from_millis(200), ch.recv()).await {
        panic!("unexpected push {t:?}");
    }
}

async fn rpc(ch: &Channel, req: Term) -> Result<Term, Error> {
    within("rpc", ch.rpc(req)).await
}

/// The reason of a refused call.
async fn refused(ch: &Channel, req: Term) -> Term {
    match rpc(ch, req).await {
        Err(Error::Remote(reason)) => reason,
        other => panic!("expected a call error, got {other:?}"),
    }
}

/// A channel to `chat` logged in to `group` as `nick`, its own `joined` read.
async fn member(server: &TestServer, group: &str, nick: &str) -> Channel {
    let ch = server.connect("chat").await;
    assert_eq!(
        rpc(&ch, term!({login, (group), (nick)})).await.unwrap(),
        term!(true)
    );
    assert_eq!(next_push(&ch).await, joined(nick, group));
    ch
}

#[tokio::test]
async fn members_hear_joins_and_every_message_in_one_order() {
    let server = chat_server(|_| {}).await;
    let alice = member(&server, "room", "alice").await;
    let bob = member(&server, "room", "bob").await;
    assert_eq!(next_push(&alice).await, joined("bob", "room"));
    let carol = member(&server, "room", "carol").await;
    for ch in [&alice, &bob] {
        assert_eq!(next_push(ch).await, joined("carol", "room"));
    }

    // Bob and Carol talk at once; every member, the talkers included, hears all of it
    // in the same order, and each talker's lines in the order said.
    let talk = |ch: Channel, nick: &'static str| async move {
        for i in 0..20 {
            let line = Term::string(&format!("{nick} {i}"));
            assert_eq!(ch.rpc(term!({relay, (line)})).await.unwrap(), term!(true));
        }
    };
    let (b, c) = tokio::join!(
        tokio::spawn(talk(bob.clone(), "bob")),
        tokio::spawn(talk(carol.clone(), "carol"))
    );
    b.unwrap();
    c.unwrap();
    let mut heard = Vec::new();
    for ch in [&alice, &bob, &carol] {
        let mut pushes = Vec::new();
        for _ in 0..40 {
            pushes.push(next_push(ch).await);
        }
        heard.push(pushes);
    }
    assert_eq!(heard[0], heard[1]);
    assert_eq!(heard[0], heard[2]);
    for nick in ["bob", "carol"] {
        let said: Vec<Term> = heard[0]
            .iter()
            .filter(|t| t.as_tuple().unwrap()[1] == s(nick))
            .cloned()
            .collect();
        let expected: Vec<Term> = (0..20)
            .map(|i| msg(nick, "room", s(&format!("{nick} {i}"))))
            .collect();
        assert_eq!(said, expected);
    }

    assert_eq!(
        rpc(&alice, term!(members)).await.unwrap(),
        term!(["alice", "bob", "carol"])
    );

    // A member who logs out is told `true`; only the others hear that it left.
    assert_eq!(rpc(&carol, term!(logout)).await.unwrap(), term!(true));
    for ch in [&alice, &bob] {
        assert_eq!(next_push(ch).await, left("carol", "room"));
    }
    no_push(&carol).await;

    // Closing the channel in order removes the member too.
    bob.close().await;
    assert_eq!(next_push(&alice).await, left("bob", "room"));
    assert_eq!(rpc(&alice, term!(members)).await.unwrap(), term!(["alice"]));
}

#[tokio::test]
async fn groups_are_separate_and_a_nick_is_taken_only_within_its_group() {
    let server = chat_server(|_| {}).await;
    let alice = member(&server, "room", "alice").await;
    let other_alice = member(&server, "other", "alice").await;
    let bob = member(&server, "other", "bob").await;
    assert_eq!(next_push(&other_alice).await, joined("bob", "other"));

    rpc(&bob, term!({relay, "in other"})).await.unwrap();
    for ch in [&other_alice, &bob] {
        assert_eq!(next_push(ch).await, msg("bob", "other", s("in other")));
    }
    rpc(&alice, term!({relay, "in room"})).await.unwrap();
    // Alice in "room" heard nothing from "other": her next push is her own line.
    assert_eq!(next_push(&alice).await, msg("alice", "room", s("in room")));
    no_push(&bob).await;

    // Any term may be relayed; group and nick may be atoms or binaries too.
    let dave = server.connect("chat").await;
    let login = Term::tuple([term!(login), term!(room), Term::binary("dave")]);
    assert_eq!(rpc(&dave, login).await.unwrap(), term!(true));
    let dave_joined = Term::tuple([term!(joined), Term::binary("dave"), term!(room)]);
    assert_eq!(next_push(&dave).await, dave_joined);
    rpc(&dave, term!({relay, {a, [1, 2]}})).await.unwrap();
    let line = Term::tuple([
        term!(msg),
        Term::binary("dave"),
        term!(room),
        term!({a, [1, 2]}),
    ]);
    assert_eq!(next_push(&dave).await, line);
    // "room" the charlist and room the atom are two groups.
    no_push(&alice).await;
}

#[tokio::test]
async fn edge_cases_are_call_errors_and_sends_work_as_in_the_book() {
    let server = chat_server(|_| {}).await;
    let ch = server.connect("chat").await;
    for req in [term!({relay, "hello?"}), term!(logout), term!(members)] {
        assert_eq!(refused(&ch, req).await, term!(not_logged_in));
    }
    assert_eq!(
        rpc(&ch, term!({login, "room", "joe"})).await.unwrap(),
        term!(true)
    );
    assert_eq!(next_push(&ch).await, joined("joe", "room"));
    assert_eq!(
        refused(&ch, term!({login, "room", "joe2"})).await,
        term!(already_logged_in)
    );
    assert_eq!(
        refused(&ch, term!({login, "elsewhere", "joe"})).await,
        term!(already_logged_in)
    );

    let other = server.connect("chat").await;
    assert_eq!(
        refused(&other, term!({login, "room", "joe"})).await,
        term!(nick_taken)
    );
    for bad in [
        term!({login, "room", 42}),
        term!({login, "room", ""}),
        Term::tuple([term!(login), s("room"), s(&"x".repeat(65))]),
        term!({shout, "hi"}),
        term!({ relay }),
    ] {
        let reason = refused(&other, bad.clone()).await;
        assert_eq!(reason, term!({bad_request, (bad)}));
    }
    // After the refusals `other` is still no member: logging in works.
    assert_eq!(
        rpc(&other, term!({login, "room", "ann"})).await.unwrap(),
        term!(true)
    );
    assert_eq!(next_push(&other).await, joined("ann", "room"));
    assert_eq!(next_push(&ch).await, joined("ann", "room"));

    // Logged out, joe may not relay, and may log in elsewhere.
    assert_eq!(rpc(&ch, term!(logout)).await.unwrap(), term!(true));
    assert_eq!(next_push(&other).await, left("joe", "room"));
    assert_eq!(
        refused(&ch, term!({relay, "still here?"})).await,
        term!(not_logged_in)
    );
    assert_eq!(
        rpc(&ch, term!({login, "elsewhere", "joe"})).await.unwrap(),
        term!(true)
    );
    assert_eq!(next_push(&ch).await, joined("joe", "elsewhere"));

    // The book's client casts: the same requests as sends, nothing answered but
    // `members`; a refused send is dropped.
    let caster = server.connect("chat").await;
    caster.cast(term!({relay, "before login"})).await.unwrap();
    caster.cast(term!({login, "room", "cas"})).await.unwrap();
    assert_eq!(next_push(&caster).await, joined("cas", "room"));
    assert_eq!(next_push(&other).await, joined("cas", "room"));
    caster.cast(term!({relay, "hi all"})).await.unwrap();
    assert_eq!(next_push(&caster).await, msg("cas", "room", s("hi all")));
    assert_eq!(next_push(&other).await, msg("cas", "room", s("hi all")));
    caster.cast(term!(members)).await.unwrap();
    assert_eq!(next_push(&caster).await, term!(["ann", "cas"]));
    no_push(&ch).await;
}

/// Reads a child's standard output line by line on a thread.
fn lines_of(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line equal to `want`, returning what came before it.
fn wait_for_line(rx: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == want => return before,
            Ok(line) => before.push(line),
            Err(e) => panic!("no line {want:?} ({e}); got {before:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_process_is_removed_and_the_others_are_told() {
    let server = chat_server(|_| {}).await;
    let alice = member(&server, "room", "alice").await;
    let bob = member(&server, "room", "bob").await;
    assert_eq!(next_push(&alice).await, joined("bob", "room"));

    // Carol is a separate process: `lib_chan shell`, reading its terms from a pipe.
    let home = tempfile::tempdir().unwrap();
    let mut carol = Command::new(env!("CARGO_BIN_EXE_lib_chan"))
        .args([
            "shell",
            &format!("127.0.0.1:{}", server.addr.port()),
            "chat",
        ])
        .arg("--ca")
        .arg(&server.certs.ca)
        .env("LIB_CHAN_PASSWORD", PASSWORD)
        .env("LIB_CHAN_HOME", home.path())
        .env_remove("LIB_CHAN_PASSWORD_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lib_chan shell starts");
    let mut stdin = carol.stdin.take().unwrap();
    let out = lines_of(carol.stdout.take().unwrap());
    writeln!(stdin, r#"{{login, "room", "carol"}}."#).unwrap();
    // The reply and her own `joined` push, in either order.
    let mut seen = wait_for_line(&out, "true");
    if seen.is_empty() {
        seen = wait_for_line(&out, r#"Shell got {joined,"carol","room"}"#);
        assert!(seen.is_empty(), "{seen:?}");
    } else {
        assert_eq!(seen, [r#"Shell got {joined,"carol","room"}"#]);
    }
    for ch in [&alice, &bob] {
        assert_eq!(next_push(ch).await, joined("carol", "room"));
    }
    rpc(&alice, term!({relay, "carol, still there?"}))
        .await
        .unwrap();
    wait_for_line(
        &out,
        r#"Shell got {msg,"alice","room","carol, still there?"}"#,
    );

    // SIGKILL: no `close`, no TLS close_notify; the kernel closes the socket.
    carol.kill().unwrap();
    carol.wait().unwrap();
    for ch in [&alice, &bob] {
        assert_eq!(
            next_push(ch).await,
            msg("alice", "room", s("carol, still there?"))
        );
        assert_eq!(next_push(ch).await, left("carol", "room"));
    }
    assert_eq!(
        rpc(&bob, term!(members)).await.unwrap(),
        term!(["alice", "bob"])
    );
    // The nick is free again.
    let carol2 = member(&server, "room", "carol").await;
    assert_eq!(next_push(&alice).await, joined("carol", "room"));
    carol2.close().await;
}

#[tokio::test]
async fn a_connection_dropped_without_close_is_removed() {
    let server = chat_server(|_| {}).await;
    let alice = member(&server, "room", "alice").await;
    let mut dave = RawPeer::connect(server.addr, &server.certs.ca).await;
    dave.send(&term!({start_service, chat, (PASSWORD), []}))
        .await;
    assert_eq!(dave.recv().await.unwrap().as_tuple().unwrap()[0], term!(ok));
    dave.send(&term!({call, 1, {login, "room", "dave"}})).await;
    // The handler queues dave's own `joined` first, then the reply: frames leave in
    // that order.
    assert_eq!(
        dave.recv().await.unwrap(),
        term!({send, {joined, "dave", "room"}})
    );
    assert_eq!(dave.recv().await.unwrap(), term!({reply, 1, true}));
    assert_eq!(next_push(&alice).await, joined("dave", "room"));
    drop(dave);
    assert_eq!(next_push(&alice).await, left("dave", "room"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_is_closed_and_never_slows_the_group() {
    let server = chat_server(|config| {
        config.limits.outbound_queue = 8;
        config.limits.write_timeout = Duration::from_secs(30);
    })
    .await;
    let alice = member(&server, "room", "alice").await;
    // Slow logs in and then reads nothing more.
    let mut slow = RawPeer::connect(server.addr, &server.certs.ca).await;
    slow.send(&term!({start_service, chat, (PASSWORD), []}))
        .await;
    assert_eq!(slow.recv().await.unwrap().as_tuple().unwrap()[0], term!(ok));
    slow.send(&term!({call, 1, {login, "room", "slow"}})).await;
    assert_eq!(next_push(&alice).await, joined("slow", "room"));

    // Alice reads everything (on another task) and talks in large lines until the
    // group is told that slow left. Each relay must be answered at once: it never
    // waits for slow, whose socket buffers are full.
    let listener = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut lines = 0usize;
            loop {
                let push = alice.recv().await.expect("alice stays connected");
                if push == left("slow", "room") {
                    return lines;
                }
                lines += 1;
            }
        })
    };
    let text = Term::binary(vec![b'x'; 256 * 1024]);
    let mut relays = 0;
    while !listener.is_finished() {
        assert!(relays < 400, "slow was never dropped");
        let started = std::time::Instant::now();
        let reply = rpc(&alice, term!({relay, (text.clone())})).await.unwrap();
        assert_eq!(reply, term!(true));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a relay waited {:?}",
            started.elapsed()
        );
        relays += 1;
    }
    let heard = within("alice's listener", listener).await.unwrap();
    assert!(heard <= relays, "{heard} > {relays}");
    assert_eq!(rpc(&alice, term!(members)).await.unwrap(), term!(["alice"]));
    // Slow's connection was closed: reading it now drains what was queued, then ends.
    assert!(slow.closed().await);
}
