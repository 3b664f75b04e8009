//! The services lib_chan ships, and the registry that names them for `lib_chan.conf`.
//!
//! # Layout
//! - [`name_server`]: `mod_name_server`, the book's name server (PROTOCOL.md section 7).
//! - [`echo`]: `mod_echo`, answers every call with its request: for tests and benchmarks.

pub mod echo;
pub mod name_server;

use std::sync::Arc;

use lib_chan_server::Registry;

/// A registry holding every built-in handler: `mod_name_server` and `mod_echo`.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("mod_name_server", |_config| {
        Ok(Arc::new(name_server::NameServer::new()))
    });
    r.register("mod_echo", |_config| Ok(Arc::new(echo::Echo)));
    r
}
