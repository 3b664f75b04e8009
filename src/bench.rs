//! `lib_chan bench`: load from the client side, with latency percentiles.
//!
//! Opens `--connections` channels and keeps `--pipeline` calls in flight on each for
//! `--duration` seconds: `--pipeline` concurrent callers per channel, or with `--batch`
//! one caller sending batches of `--pipeline` calls with `Channel::rpc_many` and waiting
//! for all their replies before the next batch (what `redis-benchmark -P` does). Operations: `lookup` (of keys stored first), `store`, `echo`
//! (for `mod_echo`), `connect` (connect + authenticate + one lookup + close, repeated:
//! the reconnect rate), and `idle` (hold authenticated connections open, so a script
//! can read the server's memory). `--json` prints one JSON object on the last line, for
//! scripts such as `bench/compare.sh`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lib_chan_client::{Channel, ConnectOptions};
use lib_chan_protocol::Term;

use crate::remote::{split_address, ConnectArgs, LoginArgs};

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    /// `{lookup, Key}` on a name server, for keys stored before the run.
    Lookup,
    /// `{store, Key, Value}` on a name server.
    Store,
    /// The value itself, on `mod_echo`.
    Echo,
    /// Connect, authenticate, one `{lookup, Key}`, close: repeated.
    Connect,
    /// Open `--connections` authenticated channels and hold them for `--duration`.
    Idle,
}

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The server, HOST:PORT.
    address: String,
    /// The service, e.g. nameServer (or echo for --op echo).
    service: String,
    /// Connections (for --op connect: concurrent reconnecting clients).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Send the --pipeline calls of each connection as one batch (`rpc_many`) and wait
    /// for all replies before the next batch, as redis-benchmark -P does, instead of
    /// running --pipeline concurrent callers. Each call's latency is its batch's.
    #[arg(long)]
    batch: bool,
    /// Seconds to run (after a one-second warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The operation.
    #[arg(long, value_enum, default_value_t = Op::Lookup)]
    op: Op,
    /// Bytes in each value (a binary).
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Distinct keys used.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Threads of the load generator, each with a single-threaded runtime and its share
    /// of the connections, as redis-benchmark runs its event loop [default: one per
    /// core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// The connection details every worker shares.
struct Target {
    host: String,
    port: u16,
    service: String,
    login: lib_chan_client::Login,
    options: ConnectOptions,
}

impl Target {
    async fn connect(&self) -> Result<Channel, lib_chan_client::Error> {
        self.options
            .connect_with(
                &self.host,
                self.port,
                &self.service,
                &self.login,
                Term::nil(),
            )
            .await
    }
}

/// The request `op` sends for `key`.
fn request(op: Op, key: Term, value: &Term) -> Term {
    match op {
        Op::Store => Term::tuple([Term::atom("store"), key, value.clone()]),
        Op::Echo => value.clone(),
        Op::Lookup | Op::Connect | Op::Idle => Term::tuple([Term::atom("lookup"), key]),
    }
}

/// One `--op connect` round: connect, authenticate, one lookup, close. The channel is
/// dropped rather than awaited closed: its task sends `close` and close_notify in the
/// background while the next round connects, as `redis-benchmark -k 0` closes its
/// socket without waiting for the server's side.
async fn connect_and_lookup(target: &Target, key: Term) -> Result<Term, lib_chan_client::Error> {
    let ch = target.connect().await?;
    ch.rpc(Term::tuple([Term::atom("lookup"), key])).await
}

fn key(i: usize) -> Term {
    Term::tuple([Term::atom("key"), Term::Int(i as i64)])
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        bail!("--connections, --pipeline and --keys must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration < 1e6) {
        bail!("--duration must be a positive number of seconds");
    }
    let (host, port) = split_address(&args.address)?;
    let (options, login) =
        args.login
            .resolve(&host, port, &args.service, args.connect.options()?)?;
    let target = Arc::new(Target {
        host,
        port,
        service: args.service.clone(),
        login,
        options,
    });
    if args.op == Op::Idle {
        let runtime = crate::runtime(args.workers)?;
        let duration = Duration::from_secs_f64(args.duration);
        return runtime.block_on(idle(args, &target, duration));
    }
    bench(args, target)
}

/// A single-threaded runtime, for one shard of the load.
fn local_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")
}

/// When the callers count their calls, and when they stop.
#[derive(Debug, Default)]
struct Clock {
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// What every caller is asked to do.
#[derive(Clone)]
struct Work {
    target: Arc<Target>,
    clock: Arc<Clock>,
    op: Op,
    /// Calls per batch (1: one call at a time).
    batch: usize,
    keys: usize,
    value: Term,
}

/// Runs the load on `--workers` threads, each a single-threaded runtime holding its share
/// of the connections and their callers, so that a connection's dispatch task and its
/// callers share a core and hand work to each other without waking another thread.
fn bench(args: &BenchArgs, target: Arc<Target>) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    let value = Term::binary(vec![b'v'; args.value_size]);
    if matches!(args.op, Op::Lookup | Op::Connect) {
        local_runtime()?.block_on(preload(&target, args.keys, &value))?;
    }
    let batch = if args.batch && args.op != Op::Connect {
        args.pipeline
    } else {
        1
    };
    let work = Work {
        target,
        clock: Arc::new(Clock::default()),
        op: args.op,
        batch,
        keys: args.keys,
        value,
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let shards = args
        .workers
        .map_or(cores, usize::from)
        .clamp(1, args.connections);
    // Every shard has connected when the run starts.
    let connected = Arc::new(std::sync::Barrier::new(shards + 1));
    let mut threads = Vec::with_capacity(shards);
    for shard in 0..shards {
        let connections: Vec<usize> = (shard..args.connections).step_by(shards).collect();
        let (work, connected) = (work.clone(), Arc::clone(&connected));
        // A reconnecting client per --connections for --op connect.
        let callers = if args.op == Op::Connect {
            1
        } else {
            args.pipeline / batch
        };
        let thread = std::thread::Builder::new()
            .name(format!("bench-{shard}"))
            .spawn(move || -> anyhow::Result<Vec<Tally>> {
                local_runtime()?.block_on(run_shard(work, &connections, callers, &connected))
            })
            .context("cannot start a load thread")?;
        threads.push(thread);
    }
    connected.wait();
    std::thread::sleep(Duration::from_secs(1));
    work.clock.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(duration);
    work.clock.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    work.clock.stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut failure = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(tallies)) => {
                for t in tallies {
                    all.extend(t.latencies_us);
                    errors += t.errors;
                    first_error = first_error.or(t.first_error);
                }
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(anyhow::anyhow!("a load thread panicked"))),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    report(args, &mut all, errors, first_error, elapsed);
    Ok(())
}

/// One thread's share: opens its connections (none for `--op connect`), waits at
/// `connected` with the other shards, runs `callers` callers on each until the clock
/// stops, then closes them.
async fn run_shard(
    work: Work,
    connections: &[usize],
    callers: usize,
    connected: &std::sync::Barrier,
) -> anyhow::Result<Vec<Tally>> {
    let mut channels = Vec::new();
    let opened: anyhow::Result<()> = async {
        if work.op != Op::Connect {
            for _ in connections {
                channels.push(work.target.connect().await.context("connect")?);
            }
        }
        Ok(())
    }
    .await;
    // Waited for even after a failure, or the other shards would wait forever.
    connected.wait();
    opened?;
    let mut tasks = Vec::new();
    for (n, &connection) in connections.iter().enumerate() {
        for c in 0..callers {
            let channel = channels.get(n).cloned();
            let seed = (connection * callers + c) * 7919;
            tasks.push(tokio::spawn(caller(work.clone(), channel, seed)));
        }
    }
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.context("a bench caller panicked")?);
    }
    for ch in channels {
        ch.close().await;
    }
    Ok(tallies)
}

/// Calls (or connects, for `--op connect`) until the clock stops; with a channel and a
/// batch above 1, sends batches with `rpc_many`.
async fn caller(work: Work, channel: Option<Channel>, seed: usize) -> Tally {
    let Work {
        target,
        clock,
        op,
        batch,
        keys,
        value,
    } = work;
    let mut tally = Tally::default();
    let mut i = seed;
    let mut next_key = || {
        i = i.wrapping_add(1);
        key(i % keys)
    };
    // Nothing shared is written per call (no common counter): the load generator's
    // cores would fight over its cache line.
    let record = |tally: &mut Tally, started: Instant, result: Result<Term, _>| {
        if clock.measuring.load(Ordering::Relaxed) {
            match result {
                Ok(_) => {
                    let us = started.elapsed().as_micros().min(u32::MAX as u128);
                    tally.latencies_us.push(us as u32);
                }
                Err(e) => tally.error(e),
            }
        }
    };
    while !clock.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match &channel {
            None => {
                let result = connect_and_lookup(&target, next_key()).await;
                record(&mut tally, started, result);
            }
            Some(ch) if batch > 1 => {
                let reqs: Vec<Term> = (0..batch)
                    .map(|_| request(op, next_key(), &value))
                    .collect();
                for result in ch.rpc_many(reqs).await {
                    record(&mut tally, started, result);
                }
            }
            Some(ch) => {
                let result = ch.rpc(request(op, next_key(), &value)).await;
                record(&mut tally, started, result);
            }
        }
    }
    tally
}

/// Stores the `keys` keys a lookup will find, in batches of calls on one channel (a
/// million names load in seconds rather than a minute of round trips).
async fn preload(target: &Target, keys: usize, value: &Term) -> anyhow::Result<()> {
    const BATCH: usize = 512;
    let ch = target.connect().await.context("connect")?;
    for first in (0..keys).step_by(BATCH) {
        let stores = (first..keys.min(first + BATCH))
            .map(|i| Term::tuple([Term::atom("store"), key(i), value.clone()]));
        for answer in ch.rpc_many(stores).await {
            answer.context("storing the keys to look up")?;
        }
    }
    ch.close().await;
    Ok(())
}

/// Holds `--connections` authenticated channels open for the duration.
async fn idle(args: &BenchArgs, target: &Target, duration: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut channels = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let ch = target
            .connect()
            .await
            .with_context(|| format!("connection {} of {}", i + 1, args.connections))?;
        channels.push(ch);
    }
    let opened = started.elapsed();
    // One line scripts can wait for before they read the server's memory.
    println!(
        "holding {} connections (opened in {:.1} s)",
        channels.len(),
        opened.as_secs_f64()
    );
    tokio::time::sleep(duration).await;
    let mut errors = 0;
    for ch in &channels {
        if ch.is_closed() {
            errors += 1;
        }
    }
    if args.json {
        println!(
            "{{\"op\":\"idle\",\"connections\":{},\"open_seconds\":{:.3},\"ops\":0,\"ops_per_sec\":0,\"p50_us\":0,\"p99_us\":0,\"p999_us\":0,\"errors\":{errors}}}",
            channels.len(),
            opened.as_secs_f64()
        );
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn report(
    args: &BenchArgs,
    latencies: &mut [u32],
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
) {
    latencies.sort_unstable();
    let ops = latencies.len();
    let ops_per_sec = ops as f64 / elapsed.as_secs_f64();
    let (p50, p99, p999) = (
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        percentile(latencies, 0.999),
    );
    let op = format!("{:?}", args.op).to_lowercase();
    println!(
        "{op}: {} connections x {} in flight{}, {} B values: {ops} ops in {:.1} s = {ops_per_sec:.0} ops/s; latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs; {errors} errors",
        args.connections,
        args.pipeline,
        if args.batch { " (batches)" } else { "" },
        args.value_size,
        elapsed.as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    if args.json {
        println!(
            "{{\"op\":\"{op}\",\"connections\":{},\"pipeline\":{},\"batch\":{},\"value_size\":{},\"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"errors\":{errors}}}",
            args.connections, args.pipeline, args.batch, args.value_size
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
