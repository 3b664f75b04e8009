//! `port`: a service written in any language, as a port program (PROTOCOL.md section 9),
//! like an Erlang port opened with `open_port({spawn, Cmd}, [{packet, 4}, binary])`.
//!
//! One program per `[[service]]` entry serves every connection of the service. The server
//! starts it (no shell; a clean environment holding only `PATH`, plus the entry's `env`;
//! in `working_dir`, by default the config file's directory), sends `{hello, 2, ArgsS}`,
//! then for each connection `{open, Conn, ArgsC, Info}`, its `{chan, Conn, X}` and
//! `{call, Conn, Ref, X}`, and `{closed, Conn}`; the program answers with `{send, Conn,
//! Y}`, `{reply, Conn, Ref, Y}`, `{error, Conn, Ref, Reason}` and `{close, Conn}`. Its
//! standard error goes to the server's log line by line, tagged with the service.
//!
//! # Supervision
//! A program that exits, writes a frame that is not one of the four above (or not a
//! term, or over the frame limit), or stops reading its input for `call_timeout` is
//! treated as crashed: every call in flight gets `{error, Ref, handler_crashed}`, its
//! connections are closed, and it is started again after `restart_backoff`, doubled
//! after each crash in a row up to 60 s. After `max_restarts` crashes in a row (each
//! within a minute of its start) it is reported as failing (log, and
//! `lib_chan_service_events_total{event="port_crashes"}`), and new connections get
//! `{error, busy}` instead of waiting for it. A call not answered within `call_timeout`
//! gets `{error, Ref, timeout}`.
//!
//! # Limits
//! Frames from the program are bounded like a client's (1 MiB plus a margin); its
//! pushes go through each connection's bounded push queue (a connection that does not
//! read them is closed as a slow consumer); what the server sends it goes through a
//! bounded queue, so a program that stops reading holds up only its own service's
//! connections, and is killed once a write has waited `call_timeout`.
//!
//! # Shutdown
//! Each connection closing sends `{closed, Conn}`; then the program's standard input is
//! closed, and it is killed if it has not exited within `shutdown_grace`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::message::Ref;
use lib_chan_protocol::{etf, FrameCodec, Term, DEFAULT_MAX_FRAME};
use lib_chan_server::port_config::{PortOptions, StderrMode};
use lib_chan_server::{
    Call, Event, HandlerFuture, MiddleMan, ReadyFuture, Service, ServiceConfig, Session,
    StatusFuture,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, Notify};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Frames queued for the program before a connection's handler waits.
const TO_PROGRAM_QUEUE: usize = 1024;
/// The largest frame taken from the program: a client's limit, with room for the
/// `{reply, Conn, Ref, ...}` wrapper.
const FROM_PROGRAM_MAX: usize = DEFAULT_MAX_FRAME + 1024;
/// The longest backoff between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A start that lasts this long ends a run of crashes.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a new connection waits for a program that is starting.
const READY_WAIT: Duration = Duration::from_secs(5);
/// A line of the program's standard error is cut to this many bytes in the log.
const MAX_LOG_LINE: usize = 2048;

/// The `port` handler's service: one program for all connections of an entry.
pub struct PortService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PortService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortService")
            .field("service", &self.inner.service)
            .field("command", &self.inner.options.command)
            .finish_non_exhaustive()
    }
}

struct Inner {
    service: String,
    args_s: Term,
    options: PortOptions,
    state: Mutex<State>,
    /// Signalled when the program starts or is found failing.
    changed: Notify,
    next_conn: AtomicU64,
    stop: CancellationToken,
    /// Signalled when the supervisor has finished (after a stop).
    stopped: Notify,
    starts: AtomicU64,
    crashes: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The running program's input queue, and which start it is.
    running: Option<(mpsc::Sender<BytesMut>, u64)>,
    /// Crashed `max_restarts` times in a row.
    failing: bool,
    /// The supervisor has ended.
    done: bool,
    pid: Option<u32>,
    conns: HashMap<u64, Conn>,
}

/// One connection, as the program knows it.
struct Conn {
    mm: MiddleMan,
    /// The start of the program it was opened with.
    generation: u64,
    /// Calls sent to the program, not answered yet, with when they were sent.
    calls: HashMap<Ref, (Call, Instant)>,
}

/// A frame: `{packet, 4}` length and ETF payload.
fn frame(t: &Term) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    FrameCodec::new(usize::MAX, FROM_PROGRAM_MAX)
        .encode_term(t, &mut out)
        .ok()?;
    Some(out)
}

fn int(n: u64) -> Term {
    Term::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl PortService {
    /// The service for a `handler = "port"` entry; starts its program (in the current
    /// tokio runtime).
    ///
    /// # Errors
    /// The entry has no port keys (the config check prevents it).
    pub fn open(config: &ServiceConfig) -> Result<PortService, String> {
        let options = config
            .options
            .port
            .clone()
            .ok_or("a port service needs `command`")?;
        let inner = Arc::new(Inner {
            service: config.name.clone(),
            args_s: config.args.clone(),
            options,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            next_conn: AtomicU64::new(1),
            stop: CancellationToken::new(),
            stopped: Notify::new(),
            starts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::clone(&inner)));
        Ok(PortService { inner })
    }
}

impl Drop for PortService {
    fn drop(&mut self) {
        // The program goes with the service (kill_on_drop covers a runtime shutting
        // down); `stop` is the graceful way.
        self.inner.stop.cancel();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every connection of program start `generation` (all, for `None`): its calls fail
    /// with `handler_crashed` and it is closed.
    fn crash_connections(&self, generation: Option<u64>) {
        let conns: Vec<Conn> = {
            let mut state = self.lock();
            let ids: Vec<u64> = state
                .conns
                .iter()
                .filter(|(_, c)| generation.is_none_or(|g| c.generation == g))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| state.conns.remove(id)).collect()
        };
        for conn in conns {
            for (_, (call, _)) in conn.calls {
                call.fail(Term::atom("handler_crashed"));
            }
            conn.mm.close();
        }
    }

    /// Fails calls older than `call_timeout` with `timeout`.
    fn expire_calls(&self) {
        let limit = self.options.call_timeout;
        let mut expired = Vec::new();
        {
            let mut state = self.lock();
            for conn in state.conns.values_mut() {
                let old: Vec<Ref> = conn
                    .calls
                    .iter()
                    .filter(|(_, (_, at))| at.elapsed() >= limit)
                    .map(|(r, _)| *r)
                    .collect();
                for r in old {
                    if let Some((call, _)) = conn.calls.remove(&r) {
                        expired.push(call);
                    }
                }
            }
        }
        for call in expired {
            call.fail(Term::atom("timeout"));
        }
    }

    /// Handles one frame from the program; `Err` is a protocol error of the program.
    fn handle_frame(&self, t: &Term) -> Result<(), String> {
        let items = t.as_tuple().unwrap_or(&[]);
        let conn_of = |c: &Term| c.as_int().and_then(|n| u64::try_from(n).ok());
        let bad = || {
            format!(
                "not a port frame: {}",
                lib_chan_protocol::message::snippet(t, 80)
            )
        };
        let tag = items.first().and_then(Term::as_atom).ok_or_else(bad)?;
        let mut state = self.lock();
        match (tag, &items[1..]) {
            ("send", [c, y]) => {
                let id = conn_of(c).ok_or_else(bad)?;
                if let Some(conn) = state.conns.get(&id) {
                    conn.mm.try_send_or_close(y.clone());
                } else {
                    tracing::debug!(service = %self.service, conn = id, "port: send for a connection not open; ignored");
                }
            }
            ("reply" | "error", [c, r, y]) => {
                let id = conn_of(c).ok_or_else(bad)?;
                let r = r
                    .as_int()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(bad)?;
                let call = state.conns.get_mut(&id).and_then(|c| c.calls.remove(&r));
                drop(state);
                match call {
                    Some((call, _)) if tag == "reply" => call.reply(y.clone()),
                    Some((call, _)) => call.fail(y.clone()),
                    None => {
                        tracing::debug!(service = %self.service, conn = id, call = r, "port: answer to no call in flight; ignored")
                    }
                }
            }
            ("close", [c]) => {
                let id = conn_of(c).ok_or_else(bad)?;
                if let Some(conn) = state.conns.get(&id) {
                    conn.mm.close();
                }
            }
            _ => return Err(bad()),
        }
        Ok(())
    }
}

/// Starts the program, watches it, restarts it; until stopped.
async fn supervise(inner: Arc<Inner>) {
    let o = &inner.options;
    let mut delay = o.restart_backoff;
    let mut in_a_row = 0u32;
    let mut generation = 0u64;
    loop {
        if inner.stop.is_cancelled() {
            break;
        }
        generation += 1;
        let started = Instant::now();
        let ended = run_once(&inner, generation).await;
        {
            let mut state = inner.lock();
            state.running = None;
            state.pid = None;
        }
        inner.crash_connections(Some(generation));
        if inner.stop.is_cancelled() {
            break;
        }
        inner.crashes.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() >= STABLE_AFTER {
            in_a_row = 0;
            delay = o.restart_backoff;
        }
        in_a_row += 1;
        let failing = in_a_row >= o.max_restarts;
        if failing && !inner.lock().failing {
            tracing::error!(service = %inner.service, crashes = in_a_row, "port program keeps dying: new connections get {{error, busy}} until it stays up");
        }
        inner.lock().failing = failing;
        inner.changed.notify_waiters();
        tracing::warn!(service = %inner.service, reason = %ended, restart_in_ms = delay.as_millis() as u64, "port program ended");
        tokio::select! {
            () = inner.stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
    {
        let mut state = inner.lock();
        state.running = None;
        state.done = true;
    }
    inner.crash_connections(None);
    inner.changed.notify_waiters();
    inner.stopped.notify_waiters();
}

/// Runs one start of the program until it ends; says why it ended.
async fn run_once(inner: &Arc<Inner>, generation: u64) -> String {
    let o = &inner.options;
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..])
        .current_dir(&o.working_dir)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .envs(&o.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(match o.stderr {
            StderrMode::Log => Stdio::piped(),
            StderrMode::Inherit => Stdio::inherit(),
        })
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("cannot start {:?}: {e}", o.command),
    };
    inner.starts.fetch_add(1, Ordering::Relaxed);
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return "no pipes to the program".into();
    };
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_stderr(inner.service.clone(), stderr));
    }
    let (tx, rx) = mpsc::channel(TO_PROGRAM_QUEUE);
    let hello = Term::tuple([Term::atom("hello"), Term::Int(2), inner.args_s.clone()]);
    if let Some(f) = frame(&hello) {
        let _ = tx.try_send(f);
    }
    {
        let mut state = inner.lock();
        state.running = Some((tx, generation));
        state.pid = child.id();
        state.failing = false;
    }
    inner.changed.notify_waiters();
    tracing::info!(service = %inner.service, pid = child.id().unwrap_or(0), "port program started");
    let mut reader = FramedRead::new(stdout, FrameCodec::new(FROM_PROGRAM_MAX, usize::MAX));
    let writer = write_to_program(stdin, rx, o.call_timeout, inner.stop.clone());
    tokio::pin!(writer);
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    let why = loop {
        tokio::select! {
            frame = reader.next() => match frame {
                None => break "it closed its standard output".to_owned(),
                Some(Err(e)) => break format!("bad frame from it: {e}"),
                Some(Ok(payload)) => match etf::decode(&payload) {
                    Ok(t) => {
                        if let Err(e) = inner.handle_frame(&t) {
                            break format!("protocol error: {e}");
                        }
                    }
                    Err(e) => break format!("not a term from it: {e}"),
                },
            },
            result = &mut writer => {
                match result {
                    // Stopped: its input is closed; wait for it to exit.
                    Ok(()) => {
                        return finish(child, inner.options.call_timeout).await;
                    }
                    Err(e) => break e,
                }
            }
            status = child.wait() => {
                break match status {
                    Ok(s) => format!("it exited ({s})"),
                    Err(e) => format!("waiting for it failed: {e}"),
                };
            }
            _ = sweep.tick() => inner.expire_calls(),
        }
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    why
}

/// After its input was closed on a stop: waits for the program to exit, killing it
/// after `grace`.
async fn finish(mut child: Child, grace: Duration) -> String {
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => format!("stopped ({s})"),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            "killed: it did not exit after its input closed".into()
        }
    }
}

/// Writes queued frames to the program's standard input, each within `limit`; on
/// `stop`, writes what is queued and closes the input (`Ok`). A write that takes longer
/// than `limit` means the program is stuck (`Err`).
async fn write_to_program(
    mut stdin: ChildStdin,
    mut rx: mpsc::Receiver<BytesMut>,
    limit: Duration,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            () = stop.cancelled() => {
                while let Ok(f) = rx.try_recv() {
                    if tokio::time::timeout(limit, stdin.write_all(&f)).await.is_err() {
                        break;
                    }
                }
                let _ = stdin.shutdown().await;
                return Ok(());
            }
        };
        let Some(f) = next else {
            // Every sender gone: only at a stop.
            let _ = stdin.shutdown().await;
            return Ok(());
        };
        match tokio::time::timeout(limit, stdin.write_all(&f)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("writing to it failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "it did not read its input for {} s: stuck",
                    limit.as_secs_f64()
                ))
            }
        }
    }
}

/// The program's standard error, line by line, into the log.
async fn log_stderr(service: String, stderr: tokio::process::ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a line without an end is logged in pieces.
        let read = (&mut lines)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                tracing::info!(target: "lib_chan::port", %service, "{}", line.trim_end().escape_debug());
            }
        }
    }
}

impl Service for PortService {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let inner = &self.inner;
            let mm = session.middle_man().clone();
            let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
            let tx = {
                let mut state = inner.lock();
                let Some((tx, generation)) = state.running.clone() else {
                    drop(state);
                    mm.close();
                    return;
                };
                state.conns.insert(
                    conn,
                    Conn {
                        mm: mm.clone(),
                        generation,
                        calls: HashMap::new(),
                    },
                );
                tx
            };
            let mut info = vec![(
                Term::atom("peer"),
                Term::binary(mm.peer().to_string().as_bytes()),
            )];
            if let Some(user) = session.identity().user() {
                info.push((Term::atom("user"), Term::binary(user.as_bytes())));
            }
            let open = Term::tuple([
                Term::atom("open"),
                int(conn),
                session.args_c().clone(),
                Term::map(info),
            ]);
            let send = |t: Term| {
                let tx = tx.clone();
                async move {
                    match frame(&t) {
                        Some(f) => tx.send(f).await.is_ok(),
                        None => true,
                    }
                }
            };
            let mut alive = send(open).await;
            while alive {
                let Some(event) = session.next_event().await else {
                    break;
                };
                alive = match event {
                    Event::Send(x) => send(Term::tuple([Term::atom("chan"), int(conn), x])).await,
                    Event::Call(call) => {
                        let (r, x) = (call.id(), call.request().clone());
                        let registered = match inner.lock().conns.get_mut(&conn) {
                            Some(c) => {
                                c.calls.insert(r, (call, Instant::now()));
                                true
                            }
                            None => false,
                        };
                        registered
                            && send(Term::tuple([Term::atom("call"), int(conn), int(r), x])).await
                    }
                    Event::Closed => break,
                };
            }
            let still_open = inner.lock().conns.remove(&conn).is_some();
            if still_open {
                let _ = send(Term::tuple([Term::atom("closed"), int(conn)])).await;
            }
        })
    }

    fn ready(&self) -> Option<ReadyFuture> {
        let inner = Arc::clone(&self.inner);
        Some(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + READY_WAIT;
            loop {
                let changed = inner.changed.notified();
                {
                    let state = inner.lock();
                    if state.running.is_some() {
                        return true;
                    }
                    if state.failing || state.done {
                        return false;
                    }
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return false;
                }
            }
        }))
    }

    fn stop(&self, grace: Duration) -> Option<ReadyFuture> {
        let inner = Arc::clone(&self.inner);
        Some(Box::pin(async move {
            let stopped = inner.stopped.notified();
            if inner.lock().done {
                return true;
            }
            inner.stop.cancel();
            tokio::time::timeout(grace + Duration::from_secs(1), stopped)
                .await
                .is_ok()
        }))
    }

    fn status(&self) -> Option<StatusFuture> {
        let state = self.inner.lock();
        let status = Term::map([
            (
                Term::atom("command"),
                Term::binary(self.inner.options.command.join(" ").as_bytes()),
            ),
            (
                Term::atom("running"),
                Term::atom(if state.running.is_some() {
                    "true"
                } else {
                    "false"
                }),
            ),
            (
                Term::atom("pid"),
                state.pid.map_or(Term::atom("undefined"), |p| int(p.into())),
            ),
            (
                Term::atom("failing"),
                Term::atom(if state.failing { "true" } else { "false" }),
            ),
            (
                Term::atom("starts"),
                int(self.inner.starts.load(Ordering::Relaxed)),
            ),
            (
                Term::atom("crashes"),
                int(self.inner.crashes.load(Ordering::Relaxed)),
            ),
            (Term::atom("connections"), int(state.conns.len() as u64)),
        ]);
        Some(Box::pin(std::future::ready(status)))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("port_starts", self.inner.starts.load(Ordering::Relaxed)),
            ("port_crashes", self.inner.crashes.load(Ordering::Relaxed)),
        ]
    }
}
