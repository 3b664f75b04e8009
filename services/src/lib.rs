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
