//! The name server's storage backends (`store = "memory" | "file:PATH" | "redis://..."`):
//! the same semantics on each, durability under `kill -9`, several servers sharing one
//! Redis, and clear start-up errors for bad stores.
//!
//! The Redis tests run Debian's `redis-server` on a free loopback port and fail (not
//! skip) when it is missing; `scripts/test.sh` installs it.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, TestServer, PASSWORD};
use lib_chan_client::Channel;
use lib_chan_protocol::{term, Term};
use lib_chan_server::devcert::DevCertPaths;
use redis_server::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_lib_chan");

/// A `lib_chan serve` process, SIGKILLed when dropped.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(conf: &Path) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(conf)
            .env_remove("LIB_CHAN_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("lib_chan serve starts");
        let stdout = child.stdout.take().unwrap();
        // Owned from here: a failure below kills the process on the way out.
        let mut serve = Serve { child, port: 0 };
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("serve prints `listening on ADDR`");
            if let Some(port) = line
                .strip_prefix("listening on ")
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
            {
                serve.port = port;
                return serve;
            }
        }
    }

    /// kill -9, and wait until it is gone.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config serving `services` (name, store) with the book's password, port 0.
fn write_config(dir: &Path, certs: &DevCertPaths, services: &[(&str, &str)]) -> PathBuf {
    let mut body = format!(
        "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    for (name, store) in services {
        body += &format!(
            "\n[[service]]\nname = \"{name}\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\nstore = \"{store}\"\n",
            common::password_hash()
        );
    }
    let conf = dir.join("lib_chan.conf");
    std::fs::write(&conf, body).unwrap();
    conf
}

async fn connect(certs: &DevCertPaths, port: u16, service: &str) -> Channel {
    within(
        "connect",
        lib_chan_client::ConnectOptions::new()
            .ca_file(&certs.ca)
            .connect("127.0.0.1", port, service, PASSWORD, Term::nil()),
    )
    .await
    .expect("connects")
}

async fn rpc(c: &Channel, t: Term) -> Term {
    within("rpc", c.rpc(t)).await.expect("rpc answered")
}

fn owner_bound(key: Term, value: Term) -> Term {
    Term::tuple([
        term!(store),
        key,
        value,
        Term::map([(term!(owner), term!(channel))]),
    ])
}

/// True when no push arrives on `c` for a moment: for "exactly one notification".
async fn no_push(c: &Channel) -> bool {
    tokio::time::timeout(Duration::from_millis(300), c.recv())
        .await
        .is_err()
}

/// PROTOCOL.md section 7 on one backend, through an in-process server: the seed session
/// pipelined, keys as exact terms, names in term order, delete, watch and unwatch, and
/// owner-bound names removed when their connection closes cleanly or just drops.
async fn semantics(store: String) {
    let server = TestServer::start_with(|c| {
        c.services[0].options.store = Some(store.clone());
    })
    .await;
    let writer = server.connect("nameServer").await;
    // The seed session: the lookup is sent right behind the one-way store.
    writer
        .cast(term!({store, joe, "writing a book"}))
        .await
        .unwrap();
    assert_eq!(
        rpc(&writer, term!({lookup, joe})).await,
        term!({ok, "writing a book"}),
        "{store}"
    );
    assert_eq!(rpc(&writer, term!({lookup, jim})).await, term!(undefined));
    for (k, v) in [
        (Term::Int(1), term!(int)),
        (Term::Float(1.0), term!(float)),
        (term!("a"), term!(string)),
        (term!({ a }), term!(tuple)),
    ] {
        assert_eq!(
            rpc(&writer, Term::tuple([term!(store), k, v])).await,
            term!(true)
        );
    }
    assert_eq!(rpc(&writer, term!({lookup, 1})).await, term!({ok, int}));
    assert_eq!(
        rpc(&writer, Term::tuple([term!(lookup), Term::Float(1.0)])).await,
        term!({ok, float})
    );
    assert_eq!(
        rpc(&writer, term!(names)).await.to_string(),
        r#"[1,1.0,joe,{a},"a"]"#,
        "{store}"
    );
    assert_eq!(rpc(&writer, term!({delete, joe})).await, term!(true));
    assert_eq!(rpc(&writer, term!({delete, joe})).await, term!(true));
    assert_eq!(rpc(&writer, term!({lookup, joe})).await, term!(undefined));

    let watcher = server.connect("nameServer").await;
    assert_eq!(rpc(&watcher, term!({watch, w})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, w, 1})).await, term!(true));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, w, {ok, 1}})
    );
    assert_eq!(rpc(&writer, term!({delete, w})).await, term!(true));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, w, undefined})
    );
    assert!(no_push(&watcher).await, "one push per change ({store})");
    assert_eq!(rpc(&watcher, term!({unwatch, w})).await, term!(true));
    assert_eq!(rpc(&writer, term!({store, w, 2})).await, term!(true));
    assert!(no_push(&watcher).await, "unwatched ({store})");

    // Owner-bound, closed cleanly: the name goes, and watchers hear of it.
    assert_eq!(rpc(&watcher, term!({watch, session})).await, term!(true));
    let owner = server.connect("nameServer").await;
    assert_eq!(
        rpc(&owner, owner_bound(term!(session), term!(alive))).await,
        term!(true)
    );
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, {ok, alive}})
    );
    owner.close().await;
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, undefined}),
        "{store}"
    );
    assert_eq!(
        rpc(&writer, term!({lookup, session})).await,
        term!(undefined)
    );

    // Owner-bound, the client gone without a word (as when its process is killed).
    let mut raw = common::RawPeer::connect(server.addr, &server.certs.ca).await;
    raw.send(&Term::tuple([
        term!(start_service),
        term!(nameServer),
        Term::binary(PASSWORD.as_bytes()),
        Term::nil(),
    ]))
    .await;
    let welcome = raw.recv().await.expect("welcome");
    assert!(
        welcome.as_tuple().is_some_and(|t| t[0].is_atom("ok")),
        "{welcome}"
    );
    raw.send(&Term::tuple([
        term!(call),
        Term::Int(1),
        owner_bound(term!(session), term!(raw)),
    ]))
    .await;
    assert_eq!(raw.recv().await, Some(term!({reply, 1, true})));
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, {ok, raw}})
    );
    drop(raw);
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, session, undefined}),
        "{store}"
    );
    // A name stored over an owner-bound one is no longer the owner's: when the owner
    // goes, it stays. The owner's `marker` goes in the same release, so once its removal
    // is heard, a lookup (ordered after the release) shows what the release did.
    assert_eq!(rpc(&watcher, term!({unwatch, session})).await, term!(true));
    assert_eq!(rpc(&watcher, term!({watch, marker})).await, term!(true));
    let owner = server.connect("nameServer").await;
    for key in [term!(taken), term!(marker)] {
        assert_eq!(
            rpc(&owner, owner_bound(key, term!(first))).await,
            term!(true)
        );
    }
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, marker, {ok, first}})
    );
    assert_eq!(
        rpc(&writer, term!({store, taken, second})).await,
        term!(true)
    );
    owner.close().await;
    assert_eq!(
        within("push", watcher.recv()).await.unwrap(),
        term!({changed, marker, undefined})
    );
    assert_eq!(
        rpc(&writer, term!({lookup, taken})).await,
        term!({ok, second}),
        "{store}"
    );
}

#[tokio::test]
async fn name_server_semantics_hold_in_memory() {
    semantics("memory".into()).await;
}

#[tokio::test]
async fn name_server_semantics_hold_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    semantics(format!("file:{}", dir.path().join("names.redb").display())).await;
}

#[tokio::test]
async fn name_server_semantics_hold_in_redis() {
    let redis = RedisServer::start();
    semantics(redis.url(0)).await;
}

/// Kills `lib_chan serve` with SIGKILL in the middle of a burst of stores, several
/// times over one file: every store that was answered `true` is there after each
/// restart, and owner-bound names never outlive the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_burst_loses_no_acknowledged_store() {
    const ROUNDS: i64 = 4;
    const CHANNELS: usize = 4;
    const PER_CHANNEL: i64 = 1000;
    const KILL_AFTER: usize = 200;
    let (dir, certs) = common::make_certs();
    let conf = write_config(dir.path(), &certs, &[("nameServer", "file:names.redb")]);
    let mut acknowledged: Vec<(i64, i64)> = Vec::new();
    for round in 0..=ROUNDS {
        let server = Serve::start(&conf);
        let check = connect(&certs, server.port, "nameServer").await;
        // Everything acknowledged in earlier rounds is there, with its value.
        let lookups: Vec<_> = acknowledged
            .iter()
            .map(|&(r, i)| {
                let c = check.clone();
                tokio::spawn(async move {
                    let got = c.rpc(term!({lookup, {k, (r), (i)}})).await;
                    (r, i, got)
                })
            })
            .collect();
        for l in lookups {
            let (r, i, got) = within("lookup", l).await.unwrap();
            assert_eq!(
                got.expect("lookup answered"),
                Term::tuple([
                    term!(ok),
                    Term::tuple([term!(v), Term::Int(r), Term::Int(i)])
                ]),
                "round {round}: acknowledged store {{k, {r}, {i}}} lost"
            );
        }
        // The previous round's owner-bound name went with its process.
        if round > 0 {
            let prev = Term::tuple([term!(owned), Term::Int(round - 1)]);
            assert_eq!(
                rpc(&check, Term::tuple([term!(lookup), prev])).await,
                term!(undefined),
                "round {round}: an owner-bound name outlived its server"
            );
        }
        if round == ROUNDS {
            break;
        }
        let key = Term::tuple([term!(owned), Term::Int(round)]);
        assert_eq!(rpc(&check, owner_bound(key, term!(x))).await, term!(true));

        // The burst: many stores in flight on several connections at once. A plain
        // thread kills the server as soon as KILL_AFTER stores are acknowledged, without
        // waiting for the runtime to get round to it.
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            channels.push(connect(&certs, server.port, "nameServer").await);
        }
        let count = Arc::new(AtomicUsize::new(0));
        let killer = {
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while count.load(Ordering::Acquire) < KILL_AFTER && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(200));
                }
                server.kill9();
            })
        };
        let (acks, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (c, channel) in channels.iter().enumerate() {
            for j in 0..PER_CHANNEL {
                let i = c as i64 * PER_CHANNEL + j;
                let channel = channel.clone();
                let acks = acks.clone();
                let count = Arc::clone(&count);
                tasks.push(tokio::spawn(async move {
                    let store = term!({store, {k, (round), (i)}, {v, (round), (i)}});
                    if let Ok(reply) = channel.rpc(store).await {
                        assert_eq!(reply, term!(true));
                        let _ = acks.send(i);
                        count.fetch_add(1, Ordering::Release);
                    }
                }));
            }
        }
        drop(acks);
        for t in tasks {
            within("burst task", t).await.unwrap();
        }
        within(
            "kill -9",
            tokio::task::spawn_blocking(move || killer.join()),
        )
        .await
        .unwrap()
        .unwrap();
        let mut acked = BTreeSet::new();
        while let Ok(i) = acked_rx.try_recv() {
            acked.insert(i);
        }
        assert!(
            acked.len() >= KILL_AFTER,
            "round {round}: {} acknowledged",
            acked.len()
        );
        let total = CHANNELS as i64 * PER_CHANNEL;
        assert!(
            (acked.len() as i64) < total,
            "round {round}: the kill came after the whole burst; nothing was tested"
        );
        eprintln!(
            "round {round}: {} of {total} stores acknowledged before kill -9",
            acked.len()
        );
        acknowledged.extend(acked.into_iter().map(|i| (round, i)));
    }
    assert!(acknowledged.len() >= ROUNDS as usize * KILL_AFTER);
}

/// Two channel servers, one Redis: one name space, watches across servers, and
/// owner-bound names that go with their connection or, when their server dies, with
/// its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_redis_name_space() {
    let redis = RedisServer::start();
    let (dir, certs) = common::make_certs();
    let url = redis.url(3);
    let conf = write_config(
        dir.path(),
        &certs,
        &[("nameServer", &url), ("otherNames", &url)],
    );
    let one = Serve::start(&conf);
    let two = Serve::start(&conf);
    assert_ne!(one.port, two.port);
    let a = connect(&certs, one.port, "nameServer").await;
    let b = connect(&certs, two.port, "nameServer").await;

    // A store through one is read through the other.
    assert_eq!(
        rpc(&a, term!({store, joe, "writing a book"})).await,
        term!(true)
    );
    assert_eq!(
        rpc(&b, term!({lookup, joe})).await,
        term!({ok, "writing a book"})
    );
    assert_eq!(rpc(&b, term!({store, 2, two})).await, term!(true));
    assert_eq!(rpc(&a, term!(names)).await.to_string(), "[2,joe]");
    // Another service on the same Redis has a name space of its own.
    let other = connect(&certs, one.port, "otherNames").await;
    assert_eq!(rpc(&other, term!({lookup, joe})).await, term!(undefined));
    assert_eq!(rpc(&other, term!(names)).await, Term::nil());

    // A watch through one fires, once, for a store through the other; a watcher on
    // the writer's own server also hears it once.
    let near = connect(&certs, one.port, "nameServer").await;
    assert_eq!(rpc(&b, term!({watch, w})).await, term!(true));
    assert_eq!(rpc(&near, term!({watch, w})).await, term!(true));
    assert_eq!(rpc(&a, term!({store, w, 1})).await, term!(true));
    for watcher in [&b, &near] {
        assert_eq!(
            within("push", watcher.recv()).await.unwrap(),
            term!({changed, w, {ok, 1}})
        );
    }
    assert_eq!(rpc(&b, term!({delete, w})).await, term!(true));
    for watcher in [&b, &near] {
        assert_eq!(
            within("push", watcher.recv()).await.unwrap(),
            term!({changed, w, undefined})
        );
        assert!(no_push(watcher).await, "a change notified twice");
    }

    // Owner-bound names vanish, everywhere, when their connection drops.
    assert_eq!(rpc(&b, term!({watch, session})).await, term!(true));
    let owner = connect(&certs, one.port, "nameServer").await;
    assert_eq!(
        rpc(&owner, owner_bound(term!(session), term!(alive))).await,
        term!(true)
    );
    assert_eq!(
        within("push", b.recv()).await.unwrap(),
        term!({changed, session, {ok, alive}})
    );
    assert_eq!(rpc(&b, term!({lookup, session})).await, term!({ok, alive}));
    drop(owner);
    assert_eq!(
        within("push", b.recv()).await.unwrap(),
        term!({changed, session, undefined})
    );
    assert_eq!(rpc(&b, term!({lookup, session})).await, term!(undefined));

    // When a server dies, its connections' owner-bound names expire with their TTL;
    // its plain names stay.
    let doomed = connect(&certs, two.port, "nameServer").await;
    assert_eq!(
        rpc(&doomed, owner_bound(term!(orphan), term!(x))).await,
        term!(true)
    );
    assert_eq!(rpc(&doomed, term!({store, kept, y})).await, term!(true));
    assert_eq!(rpc(&a, term!({lookup, orphan})).await, term!({ok, x}));
    let killed = Instant::now();
    two.kill9();
    let ttl = lib_chan_services::name_server::redis_store::OWNER_TTL;
    within("the orphan expires", async {
        while rpc(&a, term!({lookup, orphan})).await != term!(undefined) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= ttl + Duration::from_secs(2),
        "expired after {gone_after:?}"
    );
    eprintln!("owner-bound name of a killed server expired after {gone_after:?}");
    assert_eq!(rpc(&a, term!({lookup, kept})).await, term!({ok, y}));
    // The refresh keeps a live server's owner-bound names past the TTL.
    let live = connect(&certs, one.port, "nameServer").await;
    assert_eq!(
        rpc(&live, owner_bound(term!(lasting), term!(z))).await,
        term!(true)
    );
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(rpc(&a, term!({lookup, lasting})).await, term!({ok, z}));
    drop(one);
}

/// Runs `lib_chan ARGS` and returns (success, stderr); a server that does not exit
/// within 30 s fails the test.
fn run_to_exit(args: &[&str], conf: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg(conf)
        .env_remove("LIB_CHAN_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lib_chan {args:?} did not exit: it started despite a bad store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

#[test]
fn bad_stores_are_clear_start_up_errors() {
    let (dir, certs) = common::make_certs();
    let serve = ["serve", "--config"];

    // Garbage where the store file should be.
    let corrupt = dir.path().join("corrupt.redb");
    std::fs::write(&corrupt, vec![0xa5; 64 * 1024]).unwrap();
    let conf = write_config(dir.path(), &certs, &[("nameServer", "file:corrupt.redb")]);
    let (ok, err) = run_to_exit(&serve, &conf);
    assert!(!ok, "{err}");
    assert!(err.contains(&corrupt.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("corrupt file: {}", err.trim());

    // A path that cannot be created (its directory is a plain file).
    std::fs::write(dir.path().join("plain"), b"x").unwrap();
    let conf = write_config(
        dir.path(),
        &certs,
        &[("nameServer", "file:plain/names.redb")],
    );
    let (ok, err) = run_to_exit(&serve, &conf);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&dir.path().join("plain/names.redb").display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("unwritable file: {}", err.trim());

    // A store kind nobody knows: a config error with file, line and key, from
    // check-config and serve alike.
    let conf = write_config(dir.path(), &certs, &[("nameServer", "ftp://x")]);
    for args in [&["check-config"][..], &serve[..]] {
        let (ok, err) = run_to_exit(args, &conf);
        assert!(!ok, "{err}");
        let line = err
            .lines()
            .find(|l| l.contains("ftp://x"))
            .unwrap_or_else(|| panic!("{err}"));
        let at = format!("{}:", conf.display());
        let rest = line
            .split_once(&at)
            .unwrap_or_else(|| panic!("no file in {line}"))
            .1;
        let (line_no, rest) = rest.split_once(": ").unwrap();
        assert!(line_no.parse::<usize>().is_ok(), "no line in {line}");
        assert!(rest.starts_with("service[0]."), "no key in {line}");
        assert!(rest.contains("file:PATH"), "{line}");
    }

    // A Redis that is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let conf = write_config(dir.path(), &certs, &[("nameServer", &url)]);
    let (ok, err) = run_to_exit(&serve, &conf);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&url) && err.contains("cannot reach Redis"),
        "{err}"
    );
}
