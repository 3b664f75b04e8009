//! The services lib_chan ships, and the registry that names them for `lib_chan.conf`.
//!
//! # Layout
//! - [`name_server`]: `mod_name_server`, the book's name server (PROTOCOL.md section 7).
//! - [`echo`]: `mod_echo`, answers every call with its request: for tests and benchmarks.

pub mod echo;
pub mod name_server;

use std::sync::Arc;

use lib_chan_server::{Registry, ServiceConfig};

/// A registry holding every built-in handler: `mod_name_server` and `mod_echo`.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_checked(
        "mod_name_server",
        |config| {
            no_allow(config)?;
            match config.options.store.as_deref() {
                None | Some("memory") => Ok(()),
                Some(other) => Err(format!("store `{other}` is not supported; use \"memory\"")),
            }
        },
        |_config| Ok(Arc::new(name_server::NameServer::new())),
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
