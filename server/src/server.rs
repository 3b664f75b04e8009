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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::PasswordChecker;
use crate::config::{Config, ConfigError, Limits, ServiceConfig};
use crate::handler::Service;
use crate::handshake::{handshake, HandshakeFailure};
use crate::middle_man::{self, Setup};
use crate::registry::Registry;
use crate::tls::{self, TlsSetupError};

/// One configured service, ready to start handlers.
pub(crate) struct ServiceEntry {
    pub(crate) config: ServiceConfig,
    pub(crate) service: Arc<dyn Service>,
}

/// What every connection task shares.
pub(crate) struct ServerState {
    pub(crate) limits: Arc<Limits>,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) services: HashMap<String, Arc<ServiceEntry>>,
    pub(crate) checker: PasswordChecker,
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
    state: Arc<ServerState>,
    listener: TcpListener,
    local_addr: SocketAddr,
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
        let tls_config = tls::server_config(&config.tls)?;
        let mut services = HashMap::new();
        for sc in &config.services {
            let service = registry.make(sc).map_err(|message| StartError::Service {
                name: sc.name.clone(),
                message,
            })?;
            services.insert(
                sc.name.clone(),
                Arc::new(ServiceEntry {
                    config: sc.clone(),
                    service,
                }),
            );
        }
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
        let limits = config.limits;
        let checker = PasswordChecker::new(limits.max_password_checks, limits.password_check_queue);
        Ok(Server {
            state: Arc::new(ServerState {
                limits: Arc::new(limits),
                acceptor: TlsAcceptor::from(tls_config),
                services,
                checker,
            }),
            listener,
            local_addr,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            state, listener, ..
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let connections = Arc::new(Semaphore::new(state.limits.max_connections));
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(10);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff = Duration::from_millis(10);
                        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                            tracing::warn!(%peer, "connection limit reached; refusing");
                            drop(tcp);
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        tracker.spawn(connection(tcp, peer, Arc::clone(&state), token.child_token(), permit));
                    }
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        // EMFILE and the like: back off, never exit.
                        tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
        drop(listener);
        tracing::info!(open = tracker.len(), "shutting down: no longer accepting");
        token.cancel();
        tracker.close();
        let bound = state.limits.shutdown_grace + middle_man::LINGER * 3;
        if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
            tracing::warn!(
                open = tracker.len(),
                "connections still open after the grace period"
            );
        }
        tracing::info!("shut down");
    }

    /// Runs the server in a task of its own; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let token = CancellationToken::new();
        let local_addr = self.local_addr;
        let stop = token.clone();
        let task = tokio::spawn(async move { self.run(stop.cancelled_owned()).await });
        ServerHandle {
            local_addr,
            token,
            task: Some(task),
        }
    }
}

/// A server running in its own task.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// One connection from accept to close.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    token: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    tracing::info!(%peer, "connection opened");
    let auth = tokio::select! {
        result = handshake(tcp, peer, &state) => result,
        () = token.cancelled() => Err(HandshakeFailure::Gone("server shutting down".into())),
    };
    let auth = match auth {
        Ok(auth) => auth,
        Err(failure) => {
            tracing::info!(%peer, reason = %failure.code(), detail = failure.detail(), "closed before authentication");
            return;
        }
    };
    let service_name = auth.service.config.name.clone();
    let setup = Setup {
        service: Arc::clone(&auth.service.service),
        service_name: service_name.clone(),
        args_c: auth.args_c,
        args_s: auth.service.config.args.clone(),
        peer,
        limits: Arc::clone(&state.limits),
        shutdown: token,
    };
    let reason = middle_man::run(auth.reader, setup).await;
    tracing::info!(%peer, service = %service_name, reason = %reason.code(), "connection closed");
}
