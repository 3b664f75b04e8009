//! Soak test: a real `lib_chan serve` under mixed load, with random disconnects, for
//! minutes. Not a unit test; `scripts/soak.sh` builds and runs it in release mode:
//!
//! ```sh
//! bash scripts/soak.sh --minutes 5          # or SOAK_MINUTES=5 bash scripts/soak.sh
//! ```
//!
//! It writes development certificates and a config into a temporary directory, starts
//! `lib_chan serve --config ... --port 0` (the `lib_chan` binary next to this example, or
//! `--server PATH`), and runs `--clients` clients (32) for `--minutes` (5). Each client
//! reaches the server through a proxy of its own that cuts its connection at random
//! (every 15 s on average, by a reset half the time and a FIN the other half), and the
//! clients themselves close in order or abandon a call half-way now and then, then
//! reconnect. They store and look up (calls, sometimes eight pipelined at once) keys
//! `{soak, Client, K}` that only they write, with values `{Seq, <<Payload>>}`, Seq
//! increasing per key, so each client knows what every key must hold: the last
//! acknowledged store, or one whose acknowledgement a deliberate disconnect lost.
//!
//! By default each client runs on a `ReconnectingChannel` with the typed `Names` client
//! (`soak_parts/reconnecting.rs`): the channel reconnects and resends by itself, so the
//! cuts should cause no error at all, and "reconnects" counts its reconnections.
//! `--plain` runs the older clients instead, which reconnect by hand, close in order or
//! abandon calls half-way, and pipeline batches of eight.
//!
//! At the end every key is read back over a fresh connection and checked, the server's
//! memory (VmRSS) and open descriptors are compared with the start, the server is sent
//! SIGTERM and must exit 0, and its log must hold no panic. Exit status 0 means nothing
//! unexpected happened: no lost or stale value, no error other than those the deliberate
//! disconnects cause, no descriptor leak.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use lib_chan_client::{Channel, ConnectOptions, Error, Term};
use lib_chan_server::auth::hash_password;
use lib_chan_server::devcert::DevCerts;
use tokio::net::{TcpListener, TcpStream};

#[path = "soak_parts/reconnecting.rs"]
mod reconnecting;

const PASSWORD: &str = "soak-password";
const SERVICE: &str = "nameServer";

#[derive(Parser, Debug)]
#[command(about = "Soak a lib_chan server: clients, random disconnects, checks at the end")]
struct Args {
    /// How long the clients run.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 5.0)]
    minutes: f64,
    /// How many clients run at once.
    #[arg(long, env = "SOAK_CLIENTS", default_value_t = 32)]
    clients: usize,
    /// Keys per client.
    #[arg(long, default_value_t = 64)]
    keys: u64,
    /// The name server's store: "memory", or "file" (a redb file in the temporary
    /// directory, fsync per acknowledged store).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Mean seconds between the proxy's cuts of one client's connection (0: never).
    #[arg(long, default_value_t = 15.0)]
    cut_every: f64,
    /// The `lib_chan` binary (default: the one next to this example).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Seed of the random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the temporary directory (config, certificates, server log).
    #[arg(long)]
    keep: bool,
    /// Clients on plain channels that reconnect by hand, instead of the reconnecting
    /// channel and the typed name client.
    #[arg(long)]
    plain: bool,
}

/// splitmix64: small, good enough for choosing operations.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// An exponentially distributed duration with the given mean.
    fn exp(&mut self, mean: f64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(-mean * (1.0 - u).ln())
    }
}

fn key(client: usize, k: u64) -> Term {
    Term::tuple([
        Term::atom("soak"),
        Term::Int(client as i64),
        Term::Int(k as i64),
    ])
}

/// The value stored with sequence number `seq`: `{Seq, <<Payload>>}`, the payload
/// (0 to 511 bytes) derived from `seq`, so a read-back is checked whole.
fn value(seq: u64) -> Term {
    let len = (seq.wrapping_mul(7919) % 512) as usize;
    Term::tuple([
        Term::Int(seq as i64),
        Term::binary(vec![(seq % 251) as u8; len]),
    ])
}

fn seq_of(v: &Term) -> Option<u64> {
    let [seq, _] = v.as_tuple()? else {
        return None;
    };
    let seq = u64::try_from(seq.as_int()?).ok()?;
    (value(seq) == *v).then_some(seq)
}

/// What a key may hold: the last acknowledged store, or a store sent after it whose
/// outcome a disconnect hid.
#[derive(Debug, Default, Clone)]
struct KeyState {
    acked: Option<u64>,
    uncertain: BTreeSet<u64>,
    /// Stores sent before `acked` whose outcome was unknown: seeing one later means an
    /// unacknowledged store landed after an acknowledged one.
    superseded: BTreeSet<u64>,
}

/// What a lookup returned, judged against the key's state.
enum Verdict {
    Expected,
    /// An unacknowledged store turned out to have landed: now it is the known value.
    Settled,
    /// An unacknowledged store from a dropped connection overwrote a later acknowledged one.
    Stale(u64),
    /// Neither: an acknowledged store is lost, or the value is garbage.
    Lost(String),
}

impl KeyState {
    fn sent(&mut self, seq: u64) {
        self.uncertain.insert(seq);
    }
    fn acked(&mut self, seq: u64) {
        self.uncertain.remove(&seq);
        let older: Vec<u64> = self.uncertain.range(..seq).copied().collect();
        for s in older {
            self.uncertain.remove(&s);
            self.superseded.insert(s);
        }
        self.acked = Some(seq);
    }
    fn judge(&mut self, reply: &Term) -> Verdict {
        if reply.is_atom("undefined") {
            return match self.acked {
                None => Verdict::Expected,
                Some(a) => Verdict::Lost(format!("undefined, but store {a} was acknowledged")),
            };
        }
        let found = match reply.as_tuple() {
            Some([ok, v]) if ok.is_atom("ok") => seq_of(v),
            _ => None,
        };
        let Some(seq) = found else {
            let mut shown = reply.to_string();
            shown.truncate(120);
            return Verdict::Lost(format!("unexpected reply {shown}"));
        };
        if Some(seq) == self.acked {
            Verdict::Expected
        } else if self.uncertain.contains(&seq) {
            self.acked(seq);
            Verdict::Settled
        } else if self.superseded.contains(&seq) {
            Verdict::Stale(seq)
        } else {
            Verdict::Lost(format!(
                "value {seq}, expected {:?} or one of {:?}",
                self.acked, self.uncertain
            ))
        }
    }
}

/// Counters of one client, summed at the end.
#[derive(Debug, Default)]
struct Stats {
    stores: u64,
    lookups: u64,
    batches: u64,
    settled: u64,
    connects: u64,
    orderly_closes: u64,
    abandons: u64,
    /// Errors a deliberate disconnect explains (the proxy cut this client's connection).
    expected_errors: BTreeMap<String, u64>,
    unexpected_errors: BTreeMap<String, u64>,
    connect_errors: BTreeMap<String, u64>,
    lost: Vec<String>,
    stale: Vec<String>,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.stores += o.stores;
        self.lookups += o.lookups;
        self.batches += o.batches;
        self.settled += o.settled;
        self.connects += o.connects;
        self.orderly_closes += o.orderly_closes;
        self.abandons += o.abandons;
        for (mine, theirs) in [
            (&mut self.expected_errors, o.expected_errors),
            (&mut self.unexpected_errors, o.unexpected_errors),
            (&mut self.connect_errors, o.connect_errors),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        self.lost.extend(o.lost);
        self.stale.extend(o.stale);
        self.latencies_us.extend(o.latencies_us);
    }
}

/// A short name for an error's kind.
fn kind(e: &Error) -> String {
    match e {
        Error::Closed(reason) => {
            let text = reason.to_string();
            let short: String = text
                .split(':')
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            format!("closed ({short})")
        }
        Error::Io { error, .. } => format!("io ({:?})", error.kind()),
        Error::Timeout(phase) => format!("timeout ({phase})"),
        Error::Remote(t) => format!("remote ({t})"),
        Error::Refused(r) => format!("refused ({r})"),
        other => {
            let d = format!("{other:?}");
            d.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
        }
    }
}

/// One client's proxy: forwards each connection to the server and cuts it after a
/// random time; `cuts` counts the cuts, so the client can tell its errors apart.
async fn proxy(
    listener: TcpListener,
    server: SocketAddr,
    cuts: Arc<AtomicU64>,
    mean: f64,
    mut rng: Rng,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let lifetime = (mean > 0.0).then(|| rng.exp(mean));
        let reset = rng.one_in(2);
        let cuts = Arc::clone(&cuts);
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(server).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let pipe = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
            match lifetime {
                None => {
                    let _ = pipe.await;
                }
                Some(lifetime) => {
                    tokio::select! {
                        _ = pipe => {}
                        () = tokio::time::sleep(lifetime) => {
                            // Counted before the sockets go, so that the client's error
                            // always finds the cut counted.
                            cuts.fetch_add(1, Ordering::SeqCst);
                            if reset {
                                let _ = inbound.set_zero_linger();
                                let _ = outbound.set_zero_linger();
                            }
                        }
                    }
                }
            }
        });
    }
}

struct Client {
    id: usize,
    keys: Vec<KeyState>,
    next_seq: u64,
    rng: Rng,
    stats: Stats,
    options: ConnectOptions,
    port: u16,
    cuts: Arc<AtomicU64>,
}

/// A connection and the cut count when it was made.
struct Conn {
    ch: Channel,
    cuts_at_connect: u64,
}

impl Client {
    async fn connect(&mut self) -> Conn {
        loop {
            let cuts_at_connect = self.cuts.load(Ordering::SeqCst);
            match self
                .options
                .clone()
                .connect("127.0.0.1", self.port, SERVICE, PASSWORD, Term::nil())
                .await
            {
                Ok(ch) => {
                    self.stats.connects += 1;
                    return Conn {
                        ch,
                        cuts_at_connect,
                    };
                }
                Err(e) => {
                    // A cut during the handshake is deliberate; anything else is not.
                    if self.cuts.load(Ordering::SeqCst) == cuts_at_connect {
                        *self.stats.connect_errors.entry(kind(&e)).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Files an error: expected if the proxy cut this connection, else unexpected.
    fn error(&mut self, conn: &Conn, e: &Error) {
        let map = if self.cuts.load(Ordering::SeqCst) != conn.cuts_at_connect {
            &mut self.stats.expected_errors
        } else {
            &mut self.stats.unexpected_errors
        };
        *map.entry(kind(e)).or_default() += 1;
    }

    fn store_term(&mut self, k: u64) -> (u64, Term) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.keys[k as usize].sent(seq);
        let t = Term::tuple([Term::atom("store"), key(self.id, k), value(seq)]);
        (seq, t)
    }

    fn lookup_term(&self, k: u64) -> Term {
        Term::tuple([Term::atom("lookup"), key(self.id, k)])
    }

    fn judge(&mut self, k: u64, reply: &Term) {
        match self.keys[k as usize].judge(reply) {
            Verdict::Expected => {}
            Verdict::Settled => self.stats.settled += 1,
            Verdict::Stale(seq) => self.stats.stale.push(format!(
                "client {} key {k}: value {seq} from an unacknowledged store",
                self.id
            )),
            Verdict::Lost(what) => self
                .stats
                .lost
                .push(format!("client {} key {k}: {what}", self.id)),
        }
    }

    /// One store or lookup. Returns false when the connection is gone.
    async fn one(&mut self, conn: &Conn) -> bool {
        let k = self.rng.below(self.keys.len() as u64);
        let started = Instant::now();
        if self.rng.below(100) < 55 {
            let (seq, req) = self.store_term(k);
            match conn.ch.rpc(req).await {
                Ok(reply) if reply.is_atom("true") => {
                    self.keys[k as usize].acked(seq);
                    self.stats.stores += 1;
                }
                Ok(other) => self.stats.lost.push(format!("store answered {other}")),
                Err(e) => {
                    self.error(conn, &e);
                    return false;
                }
            }
        } else {
            match conn.ch.rpc(self.lookup_term(k)).await {
                Ok(reply) => {
                    self.judge(k, &reply);
                    self.stats.lookups += 1;
                }
                Err(e) => {
                    self.error(conn, &e);
                    return false;
                }
            }
        }
        self.stats
            .latencies_us
            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        true
    }

    /// Eight calls on distinct keys at once, pipelined on the one connection.
    async fn batch(&mut self, conn: &Conn) -> bool {
        let mut ks = BTreeSet::new();
        while ks.len() < 8.min(self.keys.len()) {
            ks.insert(self.rng.below(self.keys.len() as u64));
        }
        let mut reqs = Vec::new();
        for &k in &ks {
            if self.rng.one_in(2) {
                let (seq, t) = self.store_term(k);
                reqs.push((k, Some(seq), t));
            } else {
                reqs.push((k, None, self.lookup_term(k)));
            }
        }
        let replies =
            futures_util::future::join_all(reqs.iter().map(|(_, _, t)| conn.ch.rpc(t.clone())))
                .await;
        self.stats.batches += 1;
        let mut ok = true;
        for ((k, seq, _), reply) in reqs.into_iter().zip(replies) {
            match (seq, reply) {
                (Some(seq), Ok(r)) if r.is_atom("true") => {
                    self.keys[k as usize].acked(seq);
                    self.stats.stores += 1;
                }
                (Some(_), Ok(other)) => self.stats.lost.push(format!("store answered {other}")),
                (None, Ok(r)) => {
                    self.judge(k, &r);
                    self.stats.lookups += 1;
                }
                (_, Err(e)) => {
                    if ok {
                        self.error(conn, &e);
                    }
                    ok = false;
                }
            }
        }
        ok
    }

    async fn run(mut self, until: Instant) -> Self {
        let mut conn = self.connect().await;
        while Instant::now() < until {
            let alive = if self.rng.one_in(20) {
                self.batch(&conn).await
            } else {
                self.one(&conn).await
            };
            if !alive {
                conn = self.connect().await;
                continue;
            }
            if self.rng.one_in(1500) {
                // An orderly close, as a client that is done would.
                conn.ch.close().await;
                self.stats.orderly_closes += 1;
                conn = self.connect().await;
            } else if self.rng.one_in(1500) {
                // Abandon a store half-way: the call is dropped, then the channel.
                let k = self.rng.below(self.keys.len() as u64);
                let (_, req) = self.store_term(k);
                let ch = conn.ch.clone();
                let call = tokio::spawn(async move { ch.rpc(req).await });
                tokio::time::sleep(Duration::from_micros(self.rng.below(2000))).await;
                call.abort();
                drop(conn);
                self.stats.abandons += 1;
                conn = self.connect().await;
            }
        }
        conn.ch.close().await;
        self
    }

    /// Reads every key back over a connection straight to the server.
    async fn verify(&mut self, options: &ConnectOptions, port: u16) -> Result<(), Error> {
        let ch = options
            .clone()
            .connect("127.0.0.1", port, SERVICE, PASSWORD, Term::nil())
            .await?;
        let keys: Vec<u64> = (0..self.keys.len() as u64).collect();
        for group in keys.chunks(16) {
            let replies =
                futures_util::future::join_all(group.iter().map(|&k| ch.rpc(self.lookup_term(k))))
                    .await;
            for (&k, reply) in group.iter().zip(replies) {
                self.judge(k, &reply?);
            }
        }
        ch.close().await;
        Ok(())
    }
}

/// What /proc says about the server.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: u64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    ProcStats {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn percentile(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    let us = sorted[i];
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// Starts `lib_chan serve` and waits for its "listening on ADDR" line.
fn start_server(bin: &Path, dir: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.join("lib_chan.conf"))
        .args(["--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    break addr.parse()?;
                }
            }
            _ => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                anyhow::bail!("the server did not start:\n{log}");
            }
        }
    };
    // Keep reading its stdout so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

fn write_config(dir: &Path, store: &str) -> anyhow::Result<()> {
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    DevCerts::generate(&hosts)?.write(dir)?;
    let store = match store {
        "memory" => "memory".to_string(),
        "file" => "file:names.redb".to_string(),
        other => anyhow::bail!("--store is memory or file, not {other}"),
    };
    let config = format!(
        r#"bind = "127.0.0.1"
[tls]
cert = "server.pem"
key = "server.key"
[limits]
# Every client comes from 127.0.0.1, through its proxy: the per-source caps and
# penalties meant for attackers would otherwise throttle the reconnects.
max_unauth_per_source = 256
penalty_exempt = ["127.0.0.1"]
[[service]]
name = "{SERVICE}"
password = "{hash}"
handler = "mod_name_server"
store = "{store}"
"#,
        hash = hash_password(PASSWORD.as_bytes()),
    );
    std::fs::write(dir.join("lib_chan.conf"), config)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let bin = match &args.server {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe()?;
            // target/release/examples/soak -> target/release/lib_chan
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("lib_chan"))
                .ok_or_else(|| anyhow::anyhow!("cannot find the lib_chan binary; pass --server"))?
        }
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    write_config(&dir, &args.store)?;
    let (mut child, addr) = start_server(&bin, &dir)?;
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(1));
    let before = proc_stats(pid);
    println!(
        "soak: {} {} clients for {} min against {} (pid {pid}, store {}), seed {seed}",
        args.clients,
        if args.plain { "plain" } else { "reconnecting" },
        args.minutes,
        addr,
        args.store
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let peak = Arc::new(Mutex::new(before));
    // The server's RSS and descriptors, eight times over the run: a leak shows as a climb.
    let timeline = Arc::new(Mutex::new(vec![(0u64, before)]));
    let every = ((args.minutes * 60.0 / 8.0).round() as u64).max(1);
    let (stats, cuts, elapsed, verify_errors) = runtime.block_on(async {
        let options = ConnectOptions::new()
            .ca_file(dir.join("ca.pem"))
            .rpc_timeout(Duration::from_secs(10));
        let mut seeds = Rng(seed);
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(args.minutes * 60.0);
        let sampler = {
            let peak = Arc::clone(&peak);
            let timeline = Arc::clone(&timeline);
            tokio::spawn(async move {
                for second in 1u64.. {
                    tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
                    let now = proc_stats(pid);
                    if second % every == 0 {
                        timeline.lock().expect("timeline").push((second, now));
                    }
                    let mut p = peak.lock().expect("peak");
                    p.rss_kib = p.rss_kib.max(now.rss_kib);
                    p.hwm_kib = p.hwm_kib.max(now.hwm_kib);
                    p.threads = p.threads.max(now.threads);
                    p.fds = p.fds.max(now.fds);
                }
            })
        };
        let mut all_cuts = Vec::new();
        let mut tasks = Vec::new();
        for id in 0..args.clients {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let cuts = Arc::new(AtomicU64::new(0));
            all_cuts.push(Arc::clone(&cuts));
            tokio::spawn(proxy(
                listener,
                addr,
                Arc::clone(&cuts),
                args.cut_every,
                Rng(seeds.next()),
            ));
            let client = Client {
                id,
                keys: vec![KeyState::default(); args.keys as usize],
                next_seq: 0,
                rng: Rng(seeds.next()),
                stats: Stats::default(),
                options: options.clone(),
                port,
                cuts,
            };
            tasks.push(if args.plain {
                tokio::spawn(client.run(until))
            } else {
                tokio::spawn(client.run_reconnecting(until))
            });
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await?);
        }
        let elapsed = started.elapsed();
        let mut verify_errors = Vec::new();
        let mut stats = Stats::default();
        for mut c in clients {
            if let Err(e) = c.verify(&options, addr.port()).await {
                verify_errors.push(format!("client {}: {e}", c.id));
            }
            stats.merge(std::mem::take(&mut c.stats));
        }
        sampler.abort();
        let cuts: u64 = all_cuts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        anyhow::Ok((stats, cuts, elapsed, verify_errors))
    })?;
    drop(runtime);

    // Connections linger about a second after they close; give them time to go.
    let mut after = proc_stats(pid);
    for _ in 0..20 {
        if after.fds <= before.fds {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        after = proc_stats(pid);
    }
    let alive = child.try_wait()?.is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = child.wait()?;
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();

    let mut lat = stats.latencies_us.clone();
    lat.sort_unstable();
    let ops = stats.stores + stats.lookups;
    let peak = *peak.lock().expect("peak");
    let show = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let reconnects = stats.connects.saturating_sub(args.clients as u64);
    println!("ran {:.0} s", elapsed.as_secs_f64());
    println!(
        "ops: {ops} ({:.0}/s): {} stores acknowledged, {} lookups checked, {} pipelined batches of 8",
        ops as f64 / elapsed.as_secs_f64(),
        stats.stores,
        stats.lookups,
        stats.batches
    );
    println!(
        "latency per call: p50 {}, p99 {}, p99.9 {}, max {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0)
    );
    println!(
        "disconnects: {cuts} cut by the proxy, {} orderly closes, {} calls abandoned; {reconnects} reconnects",
        stats.orderly_closes, stats.abandons
    );
    println!(
        "errors explained by a cut: {}",
        show(&stats.expected_errors)
    );
    println!("unexpected errors: {}", show(&stats.unexpected_errors));
    println!(
        "connect failures (not cut): {}",
        show(&stats.connect_errors)
    );
    println!(
        "read-back: {} keys; {} unacknowledged stores found applied; {} lost; {} stale; verify errors: {}",
        args.clients as u64 * args.keys,
        stats.settled,
        stats.lost.len(),
        stats.stale.len(),
        verify_errors.len()
    );
    for l in stats
        .lost
        .iter()
        .chain(&stats.stale)
        .chain(&verify_errors)
        .take(10)
    {
        println!("  {l}");
    }
    println!(
        "server: RSS {} -> {} (peak {}, VmHWM {}), fds {} -> {} (peak {}), threads {} -> {} (peak {})",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(peak.rss_kib),
        mib(peak.hwm_kib.max(after.hwm_kib)),
        before.fds,
        after.fds,
        peak.fds,
        before.threads,
        after.threads,
        peak.threads
    );
    let timeline: Vec<String> = timeline
        .lock()
        .expect("timeline")
        .iter()
        .map(|(t, p)| format!("{t}s {} {}fd", mib(p.rss_kib), p.fds))
        .collect();
    println!("server over time: {}", timeline.join(", "));
    println!(
        "server: alive at the end: {alive}; SIGTERM exit: {exit}; log: {panics} panics, {errors} ERROR, {warnings} WARN lines"
    );

    let mut failures = Vec::new();
    if !stats.lost.is_empty() || !verify_errors.is_empty() {
        failures.push("acknowledged stores did not read back");
    }
    if !stats.stale.is_empty() {
        failures.push("stale values");
    }
    if !stats.unexpected_errors.is_empty() || !stats.connect_errors.is_empty() {
        failures.push("unexpected errors");
    }
    if after.fds > before.fds + 2 {
        failures.push("descriptors leaked");
    }
    if !alive || !exit.success() || panics > 0 {
        failures.push("the server died, panicked or did not shut down cleanly");
    }
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    if failures.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        println!("soak: FAIL: {}", failures.join("; "));
        std::process::exit(1);
    }
}
