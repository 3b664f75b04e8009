//! What the example services of `docs/writing-a-service.md` share: a channel server
//! run in-process, so that each example is one file with its service and a client
//! session that exercises it.
//!
//! The examples are the binaries in `src/bin/`: `counter` (state per connection,
//! typed requests, closing) and `pubsub` (state shared by all connections, pushes, a
//! subscriber that cannot keep up). `cargo run -p lib_chan_examples --bin counter` runs
//! one; `cargo test -p lib_chan_examples` runs them all, plus the tests below, which
//! check what the guide says happens when a handler panics.
//!
//! [`DemoServer`] is the part to leave behind when copying an example: in production
//! the service is registered in `lib_chan_services::registry()` and named in
//! `lib_chan.conf`, or your own program builds a `Config` and runs `Server` itself, as
//! [`DemoServer::start`] does.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use lib_chan_client::{Channel, ConnectOptions};
use lib_chan_protocol::Term;
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{auth, Config, Registry, Server, ServerHandle, ServiceConfig, TlsSource};

/// The password of every demo service: the book's.
pub const PASSWORD: &str = "ABXy45";

/// A channel server on 127.0.0.1 (a port the OS picks) with a throwaway development
/// certificate; stopped by [`DemoServer::stop`] or when dropped.
#[derive(Debug)]
pub struct DemoServer {
    handle: ServerHandle,
    addr: SocketAddr,
    ca: PathBuf,
    /// Holds the certificates; removed when the server is dropped.
    _dir: tempfile::TempDir,
}

impl DemoServer {
    /// Starts a server offering `services`, each a `(service name, handler name)` pair
    /// whose handler `registry` knows, all behind [`PASSWORD`].
    ///
    /// # Errors
    /// The certificates cannot be made, or the server cannot start (e.g. a handler
    /// name `registry` does not know).
    pub async fn start(
        registry: &Registry,
        services: &[(&str, &str)],
    ) -> Result<DemoServer, Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let certs = DevCerts::generate(&["127.0.0.1".to_owned()])?.write(dir.path())?;
        let tls = TlsSource::Files {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        };
        let mut config = Config::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, tls);
        let hash = auth::hash_password(PASSWORD.as_bytes());
        for (name, handler) in services {
            config
                .services
                .push(ServiceConfig::new(name, &hash, handler, Term::nil()));
        }
        let server = Server::bind(config, registry).await?;
        let addr = server.local_addr();
        Ok(DemoServer {
            handle: server.spawn(),
            addr,
            ca: certs.ca,
            _dir: dir,
        })
    }

    /// Opens a channel to `service`, as any client would.
    ///
    /// # Errors
    /// See [`ConnectOptions::connect`].
    pub async fn connect(&self, service: &str) -> Result<Channel, lib_chan_client::Error> {
        ConnectOptions::new()
            .ca_file(&self.ca)
            .connect(
                "127.0.0.1",
                self.addr.port(),
                service,
                PASSWORD,
                Term::nil(),
            )
            .await
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it: open channels get `{error, shutdown}`.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    //! What the guide's "When a handler panics" section says, checked.

    use std::sync::Arc;
    use std::time::Duration;

    use lib_chan_client::{CloseReason, Error};
    use lib_chan_protocol::term;
    use lib_chan_server::{Event, HandlerFuture, Registry, Service, Session};

    use super::DemoServer;

    /// Holds every call; panics on the send `boom`.
    struct Fragile;

    impl Service for Fragile {
        fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
            Box::pin(async move {
                let mut held = Vec::new();
                while let Some(event) = session.next_event().await {
                    match event {
                        Event::Call(call) if call.request().is_atom("ping") => {
                            call.reply(term!(pong));
                        }
                        Event::Call(call) => held.push(call),
                        Event::Send(x) if x.is_atom("boom") => panic!("boom"),
                        Event::Send(_) => {}
                        Event::Closed => break,
                    }
                }
            })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_its_calls_and_spares_other_connections() {
        let mut registry = Registry::new();
        registry.register("mod_fragile", |_| Ok(Arc::new(Fragile) as Arc<dyn Service>));
        let server = DemoServer::start(&registry, &[("fragile", "mod_fragile")])
            .await
            .unwrap();
        let doomed = server.connect("fragile").await.unwrap();
        let bystander = server.connect("fragile").await.unwrap();

        let in_flight = {
            let doomed = doomed.clone();
            tokio::spawn(async move { doomed.rpc(term!(wait_for_me)).await })
        };
        // The call has reached the handler once a later call on the channel is answered.
        assert_eq!(doomed.rpc(term!(ping)).await.unwrap(), term!(pong));
        doomed.cast(term!(boom)).await.unwrap();

        let result = tokio::time::timeout(Duration::from_secs(20), in_flight)
            .await
            .expect("answered in time")
            .unwrap();
        match result {
            Err(Error::Remote(reason)) => assert_eq!(reason, term!(handler_crashed)),
            other => panic!("expected handler_crashed, got {other:?}"),
        }
        let closed = tokio::time::timeout(Duration::from_secs(20), doomed.closed()).await;
        assert_eq!(closed.unwrap(), CloseReason::ClosedByServer);
        // The other connection, with its own handler, goes on.
        assert_eq!(bystander.rpc(term!(ping)).await.unwrap(), term!(pong));
        assert!(!bystander.is_closed());
        server.stop().await;
    }
}
