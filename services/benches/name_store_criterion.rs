//! Criterion benches of the name server's stores under concurrent access: each
//! [`NameStore`] backend called directly (no server, no TLS, no client), side by side,
//! with memory as the baseline. `benches/name_store.rs` measures the same backends
//! through the real server and the Rust client instead.
//!
//! Two groups, `name_store_lookup` and `name_store_store`, with one bench id per backend:
//! `memory` ([`MemoryStore`]), `file` ([`FileStore`], a redb file in a temporary
//! directory, fsynced before each store is answered, with group commit) and `redis`
//! ([`RedisStore`] on a throwaway `redis-server` on a free loopback port; skipped with a
//! note when Debian's `redis-server` package is not installed). One iteration is `TASKS`
//! tokio tasks on a multi-thread runtime, run concurrently, each making `OPS_PER_TASK`
//! calls one after another, every call awaited; the time includes spawning and joining
//! the tasks. Throughput is in elements = calls per iteration, so Criterion prints calls
//! per second. Lookups ask for keys stored beforehand (every one is a hit); stores
//! overwrite the same keys each iteration. No key is watched.
//!
//! Run with `cargo bench -p lib_chan_services --bench name_store_criterion` (about half a
//! minute; add a filter such as `-- name_store_lookup` to run one group). `cargo test
//! --benches` runs each bench once, as a check.

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use lib_chan_protocol::Term;
use lib_chan_services::name_server::file_store::FileStore;
use lib_chan_services::name_server::redis_store::RedisStore;
use lib_chan_services::name_server::store::MemoryStore;
use lib_chan_services::name_server::{NameStore, Watchers};

/// Tasks running at once in one iteration.
const TASKS: usize = 8;
/// Calls each task makes, one after another, in one iteration.
const OPS_PER_TASK: usize = 64;
/// Calls per iteration.
const OPS: usize = TASKS * OPS_PER_TASK;
/// Every iteration is bounded: a stuck backend ends the bench instead of hanging it.
const ITERATION_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Op {
    Lookup,
    Store,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Store => "store",
        }
    }
}

/// The keys and values of one iteration, made before any clock starts: task `t` uses
/// entries `t * OPS_PER_TASK ..` of each.
#[derive(Debug)]
struct Work {
    keys: Vec<Term>,
    values: Vec<Term>,
}

impl Work {
    fn new() -> Work {
        Work {
            // `{k, I}` and a short binary, as in benches/name_store.rs.
            keys: (0..OPS)
                .map(|i| Term::tuple([Term::atom("k"), Term::Int(i as i64)]))
                .collect(),
            values: (0..OPS)
                .map(|i| Term::binary(format!("value {i}").into_bytes()))
                .collect(),
        }
    }
}

/// One iteration: `TASKS` tasks making `OPS_PER_TASK` calls `op` each, concurrently.
async fn iteration(store: &Arc<dyn NameStore>, work: &Arc<Work>, op: Op) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = Arc::clone(store);
        let work = Arc::clone(work);
        tasks.spawn(async move {
            for i in t * OPS_PER_TASK..(t + 1) * OPS_PER_TASK {
                match op {
                    Op::Lookup => {
                        let found = store.lookup(work.keys[i].clone()).await;
                        assert!(found.expect("lookup").is_some(), "key {i} was stored");
                    }
                    Op::Store => {
                        store
                            .store(work.keys[i].clone(), work.values[i].clone(), None, None)
                            .await
                            .expect("store");
                    }
                }
            }
        });
    }
    tokio::time::timeout(ITERATION_LIMIT, async {
        while let Some(t) = tasks.join_next().await {
            t.expect("bench task");
        }
    })
    .await
    .expect("iteration finished in time");
}

fn name_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = match std::process::Command::new("redis-server")
        .arg("--version")
        .output()
    {
        Ok(_) => Some(redis_server::RedisServer::start()),
        Err(_) => {
            println!(
                "note: {}: the redis benches are skipped",
                redis_server::MISSING
            );
            None
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = Arc::new(
        FileStore::open(&dir.path().join("bench.redb"), Arc::default()).expect("file store"),
    );
    let mut backends: Vec<(&str, Arc<dyn NameStore>)> = vec![
        (
            "memory",
            Arc::new(MemoryStore::new(Arc::<Watchers>::default())),
        ),
        ("file", Arc::clone(&file) as Arc<dyn NameStore>),
    ];
    if let Some(r) = &redis {
        // Its dispatcher and subscription tasks run on the bench's runtime.
        let _entered = runtime.enter();
        let store = RedisStore::open(&r.url(0), "bench", Arc::default()).expect("redis store");
        backends.push(("redis", Arc::new(store)));
    }
    println!(
        "name store: {TASKS} tasks x {OPS_PER_TASK} calls per iteration on a {}-worker \
         tokio runtime; backends: {}",
        runtime.metrics().num_workers(),
        backends
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let work = Arc::new(Work::new());
    // Every key the lookups ask for is in every backend, whatever the filter runs.
    for (_, store) in &backends {
        runtime.block_on(iteration(store, &work, Op::Store));
    }

    for op in [Op::Lookup, Op::Store] {
        let mut group = c.benchmark_group(format!("name_store_{}", op.name()));
        group.throughput(Throughput::Elements(OPS as u64));
        // An iteration of the file store's stores takes tens of milliseconds (an fsync
        // per commit): the same number of iterations in every sample.
        group.sampling_mode(SamplingMode::Flat);
        let commits_before = file.commits();
        let mut file_iterations = 0;
        for (name, store) in &backends {
            let is_file = *name == "file";
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    if is_file {
                        file_iterations += iters;
                    }
                    runtime.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            iteration(store, &work, op).await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
        group.finish();
        if let Op::Store = op {
            let commits = file.commits() - commits_before;
            if commits > 0 {
                let stores = file_iterations * OPS as u64;
                println!(
                    "note: the file store's group commit: {stores} stores in {commits} \
                     commits, {:.1} stores per commit",
                    stores as f64 / commits as f64
                );
            }
        }
    }

    // Stores first (the Redis one's tasks stop, the file's writer thread is joined),
    // then the runtime, then the Redis server.
    drop(backends);
    drop(file);
    drop(runtime);
    drop(redis);
}

criterion_group! {
    name = benches;
    // Short by default: 6 benches at about 4 s each. Criterion's own flags
    // (`--measurement-time`, `--sample-size`, ...) override these.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = name_store
}
criterion_main!(benches);
