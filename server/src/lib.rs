//! The lib_chan channel server: offers the services its configuration names, each behind
//! a password, to clients that connect over TLS (PROTOCOL.md).
//!
//! # Layout
//! - [`config`]: `lib_chan.conf`, loaded and validated (file, line and key in errors).
//! - [`tls`]: the rustls server configuration from the certificate and key.
//! - [`devcert`]: development certificates (a CA and a server certificate).
//! - [`admission`]: who may start a handshake: caps, random early drop, penalties.
//! - [`stats`]: close reasons counted, protocol-error logs rate-limited.
//! - [`metrics`]: per-service counters (atomics) and the optional Prometheus endpoint.
//! - [`auth`]: argon2id password hashes, their policy, bounded verification.
//! - [`users`]: named users (`[[user]]`), their credentials, and [`Identity`].
//! - `login`: a `start_service` credential decided against the live config, uniformly.
//! - [`audit`]: one log line per login attempt, and the record of recent refusals.
//! - [`connections`]: the open connections, revoked one by one when a reload or an
//!   expiry no longer lets them in.
//! - [`registry`]: handler names to the code that makes services.
//! - [`port_config`]: the `[[service]]` keys of a port program (`handler = "port"`).
//! - [`admin`]: `mod_admin`, the operator's console, built into the server.
//! - [`handler`]: the API service authors write against ([`Service`], [`Session`], ...).
//! - `accept`: the accept loop: limits and admission at the door, a task per connection.
//! - `handshake`: TLS and `start_service`, under deadlines.
//! - `middle_man`: one task per connection between the socket and the handler.
//! - [`server`]: binding, running and graceful shutdown.
//! - [`reload`]: a new config validated and swapped in while the server runs (SIGHUP
//!   in `lib_chan serve`), revoking the connections it invalidates.
//! - [`signal`]: [`shutdown_signal`], SIGINT or SIGTERM, for [`Server::run`].
//! - `timer_floor`: one timer always due soon, so that arming a connection's timers
//!   wakes no sleeping worker.
//!
//! # Example
//! ```no_run
//! # async fn example(registry: lib_chan_server::Registry) -> Result<(), Box<dyn std::error::Error>> {
//! use lib_chan_server::{Config, Server};
//! let config = Config::load("lib_chan.conf".as_ref(), &registry)?;
//! let server = Server::bind(config, &registry).await?;
//! println!("listening on {}", server.local_addr());
//! // In a task of its own, so the accept loop runs on a runtime worker (see `run`).
//! tokio::spawn(server.run(lib_chan_server::shutdown_signal())).await?;
//! # Ok(()) }
//! ```
//!
//! # Embedding (the book's `lib_chan:start_server(Conf)`)
//!
//! A program can build the whole [`Config`] in code ([`Config::new`] with
//! [`TlsSource::Pem`], [`ServiceConfig::new`] with a hash from [`auth::hash_password`]),
//! register its own [`Service`] types in a [`Registry`], then [`Server::bind`] (port 0
//! picks a free port; [`Server::local_addr`] says which) and [`Server::spawn`] it on its
//! own tokio runtime. The [`ServerHandle`] gives the address, shuts the server down, and
//! [`reload`](ServerHandle::reload)s a new [`Config`] while it runs.
//! `examples/embedded` in the repository is a whole program doing this.
//!
//! # A service written, embedded and called (runnable)
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::sync::Arc;
//! use lib_chan_server::devcert::DevCerts;
//! use lib_chan_server::{
//!     auth, Config, Event, HandlerFuture, Registry, Server, Service, ServiceConfig, Session,
//!     TlsSource,
//! };
//! use lib_chan_client::{term, ConnectOptions, Term};
//!
//! /// The book's `mod_echo`, with a twist: `{double, N}` answers `2 * N`.
//! struct Doubler;
//!
//! impl Service for Doubler {
//!     fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
//!         Box::pin(async move {
//!             while let Some(event) = session.next_event().await {
//!                 match event {
//!                     Event::Call(call) => match call.request().as_tuple() {
//!                         Some([tag, n]) if tag.is_atom("double") && n.as_int().is_some() => {
//!                             let n = n.as_int().unwrap();
//!                             call.reply(Term::Int(2 * n));
//!                         }
//!                         _ => call.bad_request(),
//!                     },
//!                     Event::Send(x) => {
//!                         let _ = session.middle_man().send(x).await; // echo casts
//!                     }
//!                     Event::Closed => break,
//!                 }
//!             }
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The server: a development CA and certificate in memory, one service on a free port.
//! let certs = DevCerts::generate(&["localhost".to_owned()])?;
//! let tls = TlsSource::Pem { cert: certs.server_pem.clone(), key: certs.server_key_pem.clone() };
//! let mut config = Config::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, tls);
//! config.services.push(ServiceConfig::new(
//!     "doubler",
//!     &auth::hash_password(b"secret"),
//!     "mod_doubler",
//!     Term::atom("notUsed"),
//! ));
//! let mut registry = Registry::new();
//! registry.register("mod_doubler", |_| Ok(Arc::new(Doubler) as Arc<dyn Service>));
//! let handle = Server::bind(config, &registry).await?.spawn();
//!
//! // A client: trusts that CA, starts the service, calls and casts.
//! let chan = ConnectOptions::new()
//!     .ca_pem(&certs.ca_pem)
//!     .connect("localhost", handle.local_addr().port(), "doubler", "secret", Term::nil())
//!     .await?;
//! assert_eq!(chan.rpc(term!({double, 21})).await?, term!(42));
//! chan.cast(term!(hello)).await?;
//! assert_eq!(chan.recv().await, Some(term!(hello)));
//! assert!(chan.rpc(term!(nonsense)).await.is_err()); // {error, Ref, {bad_request, ..}}
//! chan.close().await;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod accept;
pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod config;
pub mod connections;
pub mod devcert;
pub mod handler;
mod handshake;
mod health;
mod login;
pub mod metrics;
mod middle_man;
mod outbound;
pub mod port_config;
pub mod registry;
pub mod reload;
pub mod server;
pub mod sessions;
pub mod signal;
pub mod stats;
mod timer_floor;
pub mod tls;
pub mod users;

pub use audit::{Denial, Refusal};
pub use config::{
    ClientCaSource, Config, ConfigError, Limits, ServiceConfig, ServiceOptions, TlsSource,
};
pub use connections::ConnectionInfo;
pub use handler::{
    Call, Event, HandlerFuture, MiddleMan, ReadyFuture, Service, Session, StatusFuture,
};
pub use middle_man::CloseReason;
pub use registry::Registry;
pub use reload::{ReloadSummary, Reloader};
pub use server::{Server, ServerHandle, StartError};
pub use sessions::SessionId;
pub use signal::shutdown_signal;
pub use users::{CredentialKind, Identity, ServiceList, UserConfig};
