//! Store and lookup throughput of each name server backend (memory, file, Redis),
//! through the real server and the Rust client, in one run, relative to memory.
//!
//! `cargo bench -p lib_chan_services --bench name_store` (release build). It starts one
//! in-process server over TLS on 127.0.0.1 with three name server services, one per
//! backend, and a throwaway `redis-server` on a free loopback port (Debian's
//! `redis-server` package; without it the Redis row is skipped). For each backend it runs
//! `OPS` stores, then `OPS` lookups of the same keys, from `CHANNELS` connections with
//! `TASKS` calls in flight on each, and prints ops per second and the ratio to memory.
//! `NAME_STORE_BENCH_OPS` overrides `OPS`.

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use lib_chan_client::{Channel, ConnectOptions};
use lib_chan_protocol::Term;
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{auth, Config, Server, ServiceConfig, TlsSource};

/// Stores (and then lookups) per backend.
const OPS: usize = 20_000;
/// Connections per backend.
const CHANNELS: usize = 8;
/// Calls in flight on each connection.
const TASKS: usize = 32;
/// Every wait is bounded: a stuck backend ends the bench instead of hanging it.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

const PASSWORD: &str = "ABXy45";

fn main() {
    let ops = std::env::var("NAME_STORE_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OPS);
    let redis = match std::process::Command::new("redis-server")
        .arg("--version")
        .output()
    {
        Ok(_) => Some(redis_server::RedisServer::start()),
        Err(_) => {
            eprintln!("{}: the Redis row is skipped", redis_server::MISSING);
            None
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = DevCerts::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("certificates")
        .write(dir.path())
        .expect("write certificates");
    let mut backends = vec![
        ("memory", "memory".to_owned()),
        (
            "file",
            format!("file:{}", dir.path().join("bench.redb").display()),
        ),
    ];
    if let Some(r) = &redis {
        backends.push(("redis", r.url(0)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut config = Config::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
            TlsSource::Files {
                cert: certs.cert.clone(),
                key: certs.key.clone(),
            },
        );
        let hash = auth::hash_password(PASSWORD.as_bytes());
        for (name, store) in &backends {
            let mut s = ServiceConfig::new(name, &hash, "mod_name_server", Term::nil());
            s.options.store = Some(store.clone());
            config.services.push(s);
        }
        let server = Server::bind(config, &lib_chan_services::registry())
            .await
            .expect("server starts");
        let port = server.local_addr().port();
        let handle = server.spawn();
        let options = ConnectOptions::new().ca_file(&certs.ca);
        println!(
            "name store throughput: {ops} stores then {ops} lookups per backend, \
             {CHANNELS} connections x {TASKS} calls in flight, TLS on 127.0.0.1"
        );
        let mut rows = Vec::new();
        for (name, _) in &backends {
            let mut channels = Vec::new();
            for _ in 0..CHANNELS {
                channels.push(
                    options
                        .clone()
                        .connect("127.0.0.1", port, name, PASSWORD, Term::nil())
                        .await
                        .expect("connects"),
                );
            }
            // Warm up: connections, the store's file or Redis connection, caches.
            run(&channels, 1_000, |i| store(i + 1_000_000_000)).await;
            let stores = run(&channels, ops, store).await;
            let lookups = run(&channels, ops, |i| {
                Term::tuple([Term::atom("lookup"), key(i)])
            })
            .await;
            rows.push((*name, stores, lookups));
            for c in channels {
                c.close().await;
            }
        }
        let (mem_s, mem_l) = (rows[0].1, rows[0].2);
        println!(
            "| backend | stores/s | vs memory | lookups/s | vs memory |\n|---|---:|---:|---:|---:|"
        );
        for (name, s, l) in rows {
            println!(
                "| {name} | {s:.0} | {:.2} | {l:.0} | {:.2} |",
                s / mem_s,
                l / mem_l
            );
        }
        handle.shutdown().await;
    });
    drop(redis);
}

fn key(i: usize) -> Term {
    Term::tuple([Term::atom("k"), Term::Int(i as i64)])
}

fn store(i: usize) -> Term {
    Term::tuple([
        Term::atom("store"),
        key(i),
        Term::binary(format!("value {i}").into_bytes()),
    ])
}

/// Runs `n` calls `request(i)` spread over `channels`, `TASKS` in flight on each, and
/// returns calls per second. Every call must succeed.
async fn run(channels: &[Channel], n: usize, request: impl Fn(usize) -> Term) -> f64 {
    let workers = channels.len() * TASKS;
    // Requests are made before the clock starts.
    let requests: Vec<Vec<Term>> = (0..workers)
        .map(|w| (w..n).step_by(workers).map(&request).collect())
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, requests) in requests.into_iter().enumerate() {
        let channel = channels[w % channels.len()].clone();
        tasks.spawn(async move {
            for r in requests {
                channel.rpc(r).await.expect("call answered");
            }
        });
    }
    tokio::time::timeout(PHASE_LIMIT, async {
        while let Some(t) = tasks.join_next().await {
            t.expect("bench task");
        }
    })
    .await
    .expect("phase finished in time");
    n as f64 / started.elapsed().as_secs_f64()
}
