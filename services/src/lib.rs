//! The services lib_chan ships, and the registry that names them for `lib_chan.conf`.
//!
//! # Layout
//! - [`name_server`]: `mod_name_server`, the book's name server (PROTOCOL.md section 7),
//!   its names in memory, in a redb file or in Redis (the entry's `store` key).
//! - [`echo`]: `mod_echo`, answers every call with its request: for tests and benchmarks.
//! - [`rpc`]: `mod_rpc`, `rpc:call` limited to the functions its entry's `allow` names.
//! - [`chat`]: `mod_chat`, IRC Lite, the book's chat: groups, nicks, relayed messages.
//! - [`port`]: `port`, a service in any language: an external program speaking frames
//!   on its standard input and output (PROTOCOL.md section 9).
//!
//! # The name server, embedded, with a watch that survives a reconnection (runnable)
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use lib_chan_client::names::{Owner, Written};
//! use lib_chan_client::{term, ConnectOptions, Login, Names, ReconnectPolicy, Term};
//! use lib_chan_server::{auth, devcert::DevCerts, Config, Server, ServiceConfig, TlsSource};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let certs = DevCerts::generate(&["localhost".to_owned()])?;
//! let tls = TlsSource::Pem { cert: certs.server_pem.clone(), key: certs.server_key_pem.clone() };
//! let mut config = Config::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, tls);
//! config.services.push(ServiceConfig::new(
//!     "nameServer",
//!     &auth::hash_password(b"ABXy45"),
//!     "mod_name_server",
//!     Term::atom("notUsed"),
//! ));
//! let handle = Server::bind(config, &lib_chan_services::registry()).await?.spawn();
//! let port = handle.local_addr().port();
//! let options = ConnectOptions::new().ca_pem(&certs.ca_pem);
//!
//! // The book's seed session.
//! let chan = options.clone().connect("localhost", port, "nameServer", "ABXy45", Term::nil()).await?;
//! chan.cast(term!({store, joe, "writing a book"})).await?;
//! assert_eq!(chan.rpc(term!({lookup, joe})).await?, term!({ok, "writing a book"}));
//! assert_eq!(chan.rpc(term!({lookup, jim})).await?, term!(undefined));
//!
//! // A reconnecting channel, the typed client, a watch and a leader election.
//! let rc = options
//!     .reconnect(ReconnectPolicy::new())
//!     .connect_reconnecting("localhost", port, "nameServer", &Login::service_password("ABXy45"), Term::nil())
//!     .await?;
//! let names = Names::new(rc);
//! let mut watch = names.watch(term!(joe)).await?;
//! assert_eq!(names.store_if(term!(leader), term!(me), 0, Some(Owner::Session)).await?, Written::Done);
//! chan.rpc(term!({store, joe, "done"})).await?;
//! let change = watch.next().await.expect("a change");
//! assert_eq!(change.value, Some(term!("done")));
//! assert!(change.mod_rev > 0);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod chat;
pub mod echo;
pub mod name_server;
pub mod port;
pub mod rpc;

use std::sync::Arc;

use lib_chan_server::{Registry, ServiceConfig};

/// A registry holding every built-in handler: `mod_name_server`, `mod_echo`,
/// `mod_chat`, `mod_rpc` and `port` (and, built into the server, `mod_admin`).
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_checked(
        lib_chan_server::port_config::PORT_HANDLER,
        |config| {
            no_allow(config)?;
            match &config.options.store {
                None => Ok(()),
                Some(_) => Err("a port service takes no `store`".into()),
            }
        },
        |config| Ok(Arc::new(port::PortService::open(config)?)),
    );
    // The name spaces by service name: each name server made publishes its own, and
    // mod_rpc's `kvs` looks one up at call time, as `[[service]]` order is arbitrary.
    let spaces = rpc::NameSpaces::default();
    let published = spaces.clone();
    r.register_checked(
        "mod_name_server",
        |config| {
            no_allow(config)?;
            // Syntax only: the file is opened and Redis reached when the service is made.
            name_server::StoreSpec::parse(config.options.store.as_deref()).map(|_| ())
        },
        move |config| {
            let server = name_server::NameServer::open(config)?;
            published.publish(&config.name, server.space());
            Ok(Arc::new(server))
        },
    );
    r.register_checked(
        "mod_echo",
        |config| {
            no_allow(config)?;
            match &config.options.store {
                None => Ok(()),
                Some(_) => Err("mod_echo takes no `store`".into()),
            }
        },
        |_config| Ok(Arc::new(echo::Echo)),
    );
    r.register_checked(
        "mod_chat",
        |config| {
            no_allow(config)?;
            match &config.options.store {
                None => Ok(()),
                Some(_) => Err("mod_chat takes no `store`".into()),
            }
        },
        |_config| Ok(Arc::new(chat::Chat::new())),
    );
    r.register_checked("mod_rpc", rpc::check, move |config| {
        Ok(Arc::new(rpc::Rpc::new(config, spaces.clone())?))
    });
    r
}

/// Refuses `allow`, which only `mod_rpc` understands.
fn no_allow(config: &ServiceConfig) -> Result<(), String> {
    if config.options.allow.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "handler `{}` takes no `allow` list",
            config.handler
        ))
    }
}
