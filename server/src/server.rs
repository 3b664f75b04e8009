//! The server: binding, the accept loop, one task per connection, graceful shutdown.
//!
//! [`Server::bind`] validates the whole configuration, makes every service and the TLS
//! setup, and binds, so that a server that starts is a server that works. [`Server::run`]
//! accepts until the shutdown future resolves, then stops accepting, lets connections
//! answer their calls in flight (bounded by `shutdown_grace`), sends them
//! `{error, shutdown}`, and returns once they are closed.
//!
//! Shutdown uses a `CancellationToken` to tell every connection and a `TaskTracker` to
//! wait for them (the pattern of tokio's shutdown guide). Errors in one connection are
//! logged inside its task and never reach the accept loop.
//!
//! What connections read (services, TLS, per-connection limits) is one generation,
//! `ServerState`, which [`reload`](crate::reload) may replace while the server runs;
//! the accept loop reads the current one once per connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lib_chan_protocol::message::ErrorReason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::Door;
use crate::admission::{Admission, Outcome, Ticket};
use crate::audit::{Denial, DenialLog};
use crate::auth::PasswordChecker;
use crate::config::{Config, ConfigError, Limits, ServiceConfig};
use crate::connections::{ConnectionInfo, ConnectionTable};
use crate::handler::Service;
use crate::handshake::Peer;
use crate::handshake::{authenticate, handshake, HandshakeFailure};
use crate::login::TlsInfo;
use crate::metrics::{self, AuthResult, Metrics};
use crate::middle_man::{self, Setup};
use crate::registry::Registry;
use crate::reload::{build_services, build_tls, Live, ReloadSummary, Reloader};
use crate::stats::{protocol_error, Stats, StatsSnapshot};
use crate::tls::ClientCa;
use crate::tls::TlsSetupError;
use crate::users::Users;

/// One configured service, ready to start handlers.
pub(crate) struct ServiceEntry {
    pub(crate) config: ServiceConfig,
    pub(crate) service: Arc<dyn Service>,
    /// Cancelled when a reload drops this entry (service removed or changed, password
    /// hash changed); each of its connections holds a child token.
    pub(crate) revoked: CancellationToken,
}

/// What every connection task shares: one generation of the configuration (services,
/// TLS, limits) with the parts that outlive reloads (checker, admission, counters).
pub(crate) struct ServerState {
    pub(crate) limits: Arc<Limits>,
    pub(crate) acceptor: TlsAcceptor,
    /// SHA-256 of the certificate `acceptor` presents (what key logins sign).
    pub(crate) cert_hash: [u8; 32],
    pub(crate) services: HashMap<String, Arc<ServiceEntry>>,
    /// The named users.
    pub(crate) users: Arc<Users>,
    /// `[tls] client_ca`, when set.
    pub(crate) client_ca: Option<ClientCa>,
    /// Open authenticated connections (shared across generations).
    pub(crate) connections: Arc<ConnectionTable>,
    /// Recent refusals (shared across generations).
    pub(crate) denials: Arc<DenialLog>,
    /// Live sessions (shared across generations).
    pub(crate) sessions: Arc<crate::sessions::Sessions>,
    /// Wakes the expiry watch when a reload changed the users.
    pub(crate) users_changed: Arc<tokio::sync::Notify>,
    /// What `mod_admin` reaches the server through (shared across generations).
    pub(crate) admin: Arc<crate::admin::AdminHub>,
    /// The certificate's subject and expiry, for the console.
    pub(crate) cert_subject: String,
    pub(crate) cert_not_after: Option<std::time::SystemTime>,
    pub(crate) checker: PasswordChecker,
    pub(crate) admission: Arc<Admission>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A service refused its configuration.
    #[error("service `{name}`: {message}")]
    Service {
        /// The service.
        name: String,
        /// Why.
        message: String,
    },
    /// `max_connections` does not fit the process's open-file limit.
    #[error("limits.max_connections = {max_connections} needs about {needed} file descriptors, but the open-file limit is {limit}: raise it (ulimit -n, or LimitNOFILE= in the systemd unit) or lower max_connections")]
    FdLimit {
        /// The configured cap.
        max_connections: usize,
        /// Descriptors it needs with the margin.
        needed: u64,
        /// The soft limit.
        limit: u64,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    live: Arc<Live>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The Prometheus endpoint's listener, when `[metrics] listen` is set.
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Validates `config`, makes its services with `registry`, sets up TLS and binds.
    ///
    /// # Errors
    /// [`StartError`] saying what is wrong; nothing is left running.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Server, StartError> {
        config.validate(registry)?;
        check_fd_limit(config.limits.max_connections)?;
        let tls = build_tls(&config)?;
        let admin = crate::admin::AdminHub::new(registry);
        let services = build_services(
            &config.services,
            registry,
            &admin,
            &HashMap::new(),
            &mut ReloadSummary::default(),
        )?;
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr,
                error: source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr,
            error: source,
        })?;
        let (metrics_listener, metrics_addr) = match config.metrics_listen {
            Some(addr) => {
                let bind_error = |error| StartError::Bind { addr, error };
                let l = TcpListener::bind(addr).await.map_err(bind_error)?;
                let bound = l.local_addr().map_err(bind_error)?;
                (Some(l), Some(bound))
            }
            None => (None, None),
        };
        let limits = config.limits.clone();
        let checker = PasswordChecker::new(limits.max_password_checks, limits.password_check_queue);
        let admission = Arc::new(Admission::new(limits.admission.clone()));
        let metrics = Arc::new(Metrics::default());
        for (name, entry) in &services {
            metrics.service(name);
            metrics.watch_service(name, &entry.service);
        }
        let state = ServerState {
            limits: Arc::new(limits),
            acceptor: TlsAcceptor::from(tls.config),
            cert_hash: tls.cert_hash,
            services,
            users: Arc::new(Users::new(&config.users)),
            client_ca: tls.client_ca,
            connections: Arc::default(),
            denials: Arc::default(),
            sessions: Arc::default(),
            users_changed: Arc::default(),
            admin: Arc::clone(&admin),
            cert_subject: tls.cert_subject,
            cert_not_after: tls.cert_not_after,
            checker,
            admission,
            stats: Arc::new(Stats::default()),
            metrics,
        };
        let live = Arc::new(Live::new(state, config));
        admin.attach(&live, local_addr);
        Ok(Server {
            live,
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the Prometheus endpoint (`[metrics] listen`), when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's counters (shared: they keep counting while it runs).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.live.load().stats)
    }

    /// A handle that reloads this server's configuration while it runs (see
    /// [`Reloader::reload`]); take it before [`run`](Server::run).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: Arc::clone(&self.live),
        }
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully and returns.
    ///
    /// Run it in a task of its own (`tokio::spawn(server.run(..))`, or [`spawn`]),
    /// not straight under `Runtime::block_on`: there the accept loop would run on the
    /// calling thread, outside the runtime's workers, and every accepted connection would
    /// cost thread wake-ups (measured with `strace -c` under `lib_chan bench --op
    /// connect`: 57 system calls per connection, 6 of them futex, against 39 and none).
    ///
    /// [`spawn`]: Server::spawn
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            live,
            listener,
            metrics_listener,
            ..
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let first = live.load();
        if let Some(l) = metrics_listener {
            let (m, s) = (Arc::clone(&first.metrics), Arc::clone(&first.stats));
            let for_ready = Arc::clone(&live);
            let ready: metrics::ReadyCheck = Arc::new(move || {
                let live = Arc::clone(&for_ready);
                Box::pin(async move { crate::health::problems(&live).await })
            });
            tracker.spawn(metrics::serve(l, m, s, ready, token.child_token()));
        }
        tracker.spawn(crate::timer_floor::run(token.child_token()));
        tracker.spawn(crate::connections::watch_expiry(
            Arc::clone(&live),
            Arc::clone(&first.users_changed),
            token.child_token(),
        ));
        // Sized once: max_connections needs a restart to change.
        let connections = Arc::new(Semaphore::new(first.limits.max_connections));
        drop(first);
        let door = Door {
            live: Arc::clone(&live),
            connections,
            token: token.clone(),
            tracker: tracker.clone(),
        };
        door.accept_until(listener, shutdown).await;
        tracing::info!(open = tracker.len(), "shutting down: no longer accepting");
        token.cancel();
        tracker.close();
        let bound = live.load().limits.shutdown_grace + middle_man::LINGER * 3;
        if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
            tracing::warn!(
                open = tracker.len(),
                "connections still open after the grace period"
            );
        }
        // What services run on their own (port programs) is stopped last.
        let state = live.load();
        let grace = state.limits.shutdown_grace;
        let stops: Vec<_> = state
            .services
            .values()
            .filter_map(|e| e.service.stop(grace))
            .collect();
        drop(state);
        let _ = tokio::time::timeout(
            grace + Duration::from_secs(1),
            futures_util::future::join_all(stops),
        )
        .await;
        tracing::info!("shut down");
    }

    /// Runs one session over an already-established stream, as if it had come through
    /// TCP and TLS from `peer`: the `start_service` handshake, authentication, and the
    /// middle man until the session ends. Returns the close reason code. For fuzzing
    /// the connection state machine over an in-memory stream, and for tests.
    #[doc(hidden)]
    pub async fn serve_stream<S>(&self, stream: S, peer: SocketAddr) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let state = self.live.load();
        let deadline = tokio::time::Instant::now() + state.limits.handshake_timeout;
        let id = crate::handler::next_connection_id();
        let who = Peer {
            addr: peer,
            conn: id,
            tls: TlsInfo {
                version: "none",
                peer_certs: Vec::new(),
            },
        };
        let auth = match authenticate(stream, who, &state, deadline).await {
            Ok(auth) => auth,
            Err(failure) => return failure.code(),
        };
        let service_metrics = state.metrics.service(&auth.service.config.name);
        let setup = Setup {
            id,
            identity: Arc::new(auth.identity),
            service: Arc::clone(&auth.service.service),
            service_name: auth.service.config.name.clone(),
            args_c: auth.args_c,
            args_s: auth.service.config.args.clone(),
            peer,
            limits: Arc::clone(&state.limits),
            shutdown: CancellationToken::new(),
            revoked: auth.service.revoked.child_token(),
            metrics: service_metrics,
            counters: Arc::default(),
            session: auth.session,
        };
        middle_man::run(auth.reader, setup).await.code()
    }

    /// Runs the server in a task of its own; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let token = CancellationToken::new();
        let local_addr = self.local_addr;
        let metrics_addr = self.metrics_addr;
        let stats = self.stats();
        let reloader = self.reloader();
        let stop = token.clone();
        let task = tokio::spawn(async move { self.run(stop.cancelled_owned()).await });
        ServerHandle {
            local_addr,
            metrics_addr,
            token,
            task: Some(task),
            stats,
            reloader,
        }
    }
}

/// A server running in its own task.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    reloader: Reloader,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the Prometheus endpoint (`[metrics] listen`), when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Recent login refusals, merged by source, user, service and reason, most recent
    /// first (see [`DenialLog`]).
    pub fn denials(&self) -> Vec<Denial> {
        self.reloader.live.load().denials.snapshot()
    }

    /// The open authenticated connections, by id.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.reloader.live.load().connections.snapshot()
    }

    /// The metrics as the Prometheus endpoint would serve them (OpenMetrics text),
    /// with or without an endpoint configured.
    pub fn metrics_text(&self) -> String {
        let state = self.reloader.live.load();
        state.metrics.render(&state.stats.snapshot())
    }

    /// Swaps in a new configuration while the server runs: see [`Reloader::reload`].
    ///
    /// # Errors
    /// [`StartError`] saying what is wrong with `config`; the old config stays in force.
    pub fn reload(&self, config: Config, registry: &Registry) -> Result<ReloadSummary, StartError> {
        self.reloader.reload(config, registry)
    }

    /// A handle for reloading from elsewhere (e.g. a signal handler task).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.token.cancel();
    }

    /// Shuts down gracefully and waits until it is done.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Descriptors kept free beyond one per connection (listener, files, logs, the runtime).
const FD_MARGIN: u64 = 64;

/// Refuses a `max_connections` the open-file limit cannot hold.
fn check_fd_limit(max_connections: usize) -> Result<(), StartError> {
    let Some(limit) = open_file_limit() else {
        return Ok(());
    };
    let needed = max_connections as u64 + FD_MARGIN;
    if needed > limit {
        return Err(StartError::FdLimit {
            max_connections,
            needed,
            limit,
        });
    }
    Ok(())
}

/// The soft open-file limit, read from /proc (no unsafe code needed).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// One connection from accept to close.
pub(crate) async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    token: CancellationToken,
    _permit: OwnedSemaphorePermit,
    ticket: Ticket,
) {
    let _open = state.stats.opened();
    let id = crate::handler::next_connection_id();
    protocol_error!(%peer, conn = id, "connection opened");
    let auth = tokio::select! {
        // Boxed: its state (TLS accept, the first frame) is freed once it is done,
        // instead of staying part of this task's allocation for the connection's life.
        result = Box::pin(handshake(tcp, peer, id, &state)) => result,
        () = token.cancelled() => Err(HandshakeFailure::Gone("server shutting down".into())),
    };
    let auth = match auth {
        Ok(auth) => {
            ticket.finish(Outcome::Clean);
            state.metrics.auth(AuthResult::Ok);
            auth
        }
        Err(failure) => {
            ticket.finish(failure.outcome());
            match &failure {
                HandshakeFailure::Refused(ErrorReason::AuthFailed) => {
                    state.metrics.auth(AuthResult::Failed);
                }
                HandshakeFailure::Refused(ErrorReason::Busy) => {
                    state.metrics.auth(AuthResult::Busy);
                }
                _ => {}
            }
            state.stats.count_close(&failure.code());
            protocol_error!(%peer, reason = %failure.code(), detail = failure.detail(), "closed before authentication");
            return;
        }
    };
    let _authenticated = state.stats.authenticated();
    let service_name = auth.service.config.name.clone();
    let service_metrics = state.metrics.service(&service_name);
    let _connected = service_metrics.connected();
    let revoked = auth.service.revoked.child_token();
    let identity = Arc::new(auth.identity);
    let counters = Arc::new(crate::connections::ConnCounters::default());
    let _registered = state.connections.register(
        ConnectionInfo {
            id,
            peer,
            service: service_name.clone(),
            user: identity.user().map(str::to_owned),
            credential: identity.credential(),
            tls: auth.tls.version,
            since: std::time::SystemTime::now(),
            calls: 0,
            bytes_in: 0,
            bytes_out: 0,
            in_flight: 0,
            session: auth.session.as_ref().map(|s| s.id()),
        },
        Arc::clone(&identity),
        auth.binding,
        revoked.clone(),
        Arc::clone(&counters),
    );
    let setup = Setup {
        id,
        identity,
        service: Arc::clone(&auth.service.service),
        service_name: service_name.clone(),
        args_c: auth.args_c,
        args_s: auth.service.config.args.clone(),
        peer,
        limits: Arc::clone(&state.limits),
        shutdown: token,
        revoked,
        metrics: service_metrics,
        counters,
        session: auth.session,
    };
    let reason = middle_man::run(auth.reader, setup).await;
    state.stats.count_close(&reason.code());
    tracing::info!(%peer, service = %service_name, reason = %reason.code(), "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_and_checked() {
        let limit = open_file_limit().expect("Linux has /proc/self/limits");
        assert!(limit >= 16);
        if limit < u64::MAX / 2 {
            assert!(matches!(
                check_fd_limit(limit as usize),
                Err(StartError::FdLimit { .. })
            ));
        }
        assert!(check_fd_limit(1).is_ok());
    }
}
#[cfg(test)]
mod footprint {
    use tokio::net::TcpStream;
    use tokio_rustls::server::TlsStream;

    /// The size of the future an async fn of two or six arguments returns.
    fn future_size2<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn future_size6<A, B, C, D, E, G, F>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its task's future for its whole life: with the TLS
    /// stream inline (1.2 KiB) it was carried three times over (the handshake's result,
    /// the middle man's argument, its connection state), 7.7 KiB in all. Boxed once, the
    /// future is under 3 KiB; this keeps it there.
    #[test]
    fn a_connection_task_stays_small() {
        let tls = std::mem::size_of::<TlsStream<TcpStream>>();
        let run = future_size2(crate::middle_man::run::<Box<TlsStream<TcpStream>>>);
        let connection = future_size6(super::connection);
        assert!(tls > 1000, "the TLS stream is {tls} bytes: worth boxing?");
        assert!(run <= 2560, "the middle man's future is {run} bytes");
        assert!(
            connection <= 3072,
            "a connection's future is {connection} bytes"
        );
    }
}
