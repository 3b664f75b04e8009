//! Embedding a lib_chan server in a program: the book's `lib_chan:start_server(Conf)`.
//!
//! `cargo run -p lib_chan_example_embedded` runs it; `cargo test -p
//! lib_chan_example_embedded` tests it. The program has a service of its own,
//! [`Counter`] (`mod_counter`, not one of `lib_chan_services`), and needs nothing from
//! the `lib_chan` command or a config file:
//!
//! 1. [`config`] builds the whole configuration in code: address and port (0 picks a
//!    free one), the TLS certificate and key as PEM text in memory
//!    ([`TlsSource::Pem`]), and the service with its password hash and `ArgsS`;
//! 2. [`registry`] names the handler, as `lib_chan_services::registry` names the
//!    built-in ones;
//! 3. [`start`] binds and spawns the server on the caller's tokio runtime; the
//!    [`ServerHandle`] says where it listens and shuts it down;
//! 4. [`session`] is a client session against it, with the Rust client.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use lib_chan_client::{Channel, ConnectOptions, Term};
use lib_chan_server::devcert::DevCerts;
use lib_chan_server::{
    auth, Config, Event, HandlerFuture, Registry, Server, ServerHandle, Service, ServiceConfig,
    Session, TlsSource,
};

/// The service name clients ask for.
pub const SERVICE: &str = "counter";
/// The handler name the registry knows the counter by.
pub const HANDLER: &str = "mod_counter";

/// `mod_counter`: one counter per `[[service]]` entry, shared by all its connections.
///
/// `ArgsS` is the starting value (an integer); a client's `ArgsC` is the step its
/// `incr` adds (an integer; anything else means 1).
///
/// | request  | as a call, the reply  | as a send               |
/// |----------|-----------------------|-------------------------|
/// | `incr`   | the new value         | nothing                 |
/// | `{add, N}` | the new value       | nothing                 |
/// | `get`    | the value             | pushes `{count, Value}` |
#[derive(Debug)]
pub struct Counter {
    value: AtomicI64,
}

impl Counter {
    /// A counter starting at `start`.
    pub fn new(start: i64) -> Counter {
        Counter {
            value: AtomicI64::new(start),
        }
    }

    /// Carries out `request` for a connection whose step is `step`; `None` when the
    /// counter does not understand it.
    fn apply(&self, request: &Term, step: i64) -> Option<i64> {
        let add = |n: i64| self.value.fetch_add(n, Ordering::SeqCst).wrapping_add(n);
        if request.is_atom("get") {
            return Some(self.value.load(Ordering::SeqCst));
        }
        if request.is_atom("incr") {
            return Some(add(step));
        }
        match request.as_tuple()? {
            [tag, n] if tag.is_atom("add") => Some(add(n.as_int()?)),
            _ => None,
        }
    }
}

impl Service for Counter {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let step = session.args_c().as_int().unwrap_or(1);
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => match self.apply(call.request(), step) {
                        Some(value) => call.reply(Term::Int(value)),
                        None => call.bad_request(),
                    },
                    Event::Send(x) => {
                        let value = self.apply(&x, step);
                        if let (true, Some(value)) = (x.is_atom("get"), value) {
                            let push = Term::tuple([Term::atom("count"), Term::Int(value)]);
                            if session.middle_man().send(push).await.is_err() {
                                break;
                            }
                        }
                    }
                    Event::Closed => break,
                }
            }
        })
    }
}

/// A registry that knows `mod_counter`; its check wants an integer `ArgsS`.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_checked(
        HANDLER,
        |config| match config.args.as_int() {
            Some(_) => Ok(()),
            None => Err(format!(
                "mod_counter wants the starting value as args, an integer (got {})",
                config.args
            )),
        },
        |config| {
            let start = config.args.as_int().ok_or("args is not an integer")?;
            Ok(Arc::new(Counter::new(start)))
        },
    );
    registry
}

/// The configuration, built in code: 127.0.0.1 on a free port, TLS from `tls`, and the
/// `counter` service behind `password` (only its hash is kept), starting at `start`.
pub fn config(tls: TlsSource, password: &str, start: i64) -> Config {
    let mut config = Config::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, tls);
    config.services.push(ServiceConfig::new(
        SERVICE,
        &auth::hash_password(password.as_bytes()),
        HANDLER,
        Term::Int(start),
    ));
    config
}

/// A running embedded server, and the CA certificate its clients trust.
#[derive(Debug)]
pub struct Embedded {
    /// Where it listens, and how to stop it.
    pub handle: ServerHandle,
    /// The PEM of the development CA that signed its certificate.
    pub ca_pem: String,
}

/// Makes a development CA and server certificate in memory, then binds and spawns the
/// server on the current tokio runtime (call it from inside one).
///
/// # Errors
/// The certificates cannot be made, or the server cannot start.
pub async fn start(password: &str, start: i64) -> Result<Embedded, Box<dyn Error + Send + Sync>> {
    let certs = DevCerts::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let tls = TlsSource::Pem {
        cert: certs.server_pem.clone(),
        key: certs.server_key_pem.clone(),
    };
    let server = Server::bind(config(tls, password, start), &registry()).await?;
    Ok(Embedded {
        handle: server.spawn(),
        ca_pem: certs.ca_pem,
    })
}

/// Client options trusting the CA in `ca_pem`.
pub fn client_options(ca_pem: &str) -> ConnectOptions {
    ConnectOptions::new().ca_pem(ca_pem)
}

/// A session with the counter at `addr`, from two clients (the second with step 10),
/// returned as `request -> answer` lines.
///
/// # Errors
/// Connecting or a request failed.
pub async fn session(
    addr: SocketAddr,
    ca_pem: &str,
    password: &str,
) -> Result<Vec<String>, lib_chan_client::Error> {
    let connect = |step: Term| {
        client_options(ca_pem).connect("localhost", addr.port(), SERVICE, password, step)
    };
    let one = connect(Term::nil()).await?;
    let ten = connect(Term::Int(10)).await?;
    let mut lines = Vec::new();
    let mut call = async |who: &str, ch: &Channel, request: Term| {
        let answer = match ch.rpc(request.clone()).await {
            Ok(reply) => reply.to_string(),
            Err(lib_chan_client::Error::Remote(reason)) => format!("error {reason}"),
            Err(e) => return Err(e),
        };
        lines.push(format!("{who}: {request} -> {answer}"));
        Ok(())
    };
    call("one", &one, Term::atom("get")).await?;
    call("one", &one, Term::atom("incr")).await?;
    call("ten", &ten, Term::atom("incr")).await?;
    one.cast(Term::tuple([Term::atom("add"), Term::Int(5)]))
        .await?;
    call("one", &one, Term::atom("get")).await?;
    call(
        "one",
        &one,
        Term::tuple([Term::atom("add"), Term::atom("x")]),
    )
    .await?;
    ten.cast(Term::atom("get")).await?;
    let pushed = ten.recv().await;
    lines.push(format!(
        "ten: pushed {}",
        pushed.map_or_else(|| "nothing".to_owned(), |t| t.to_string())
    ));
    one.close().await;
    ten.close().await;
    Ok(lines)
}
