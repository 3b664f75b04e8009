//! The handler registry: config handler names to the code that makes services.
//!
//! Erlang's lib_chan names a handler by module and function and loads it at run time;
//! Rust cannot, so handlers are registered by name at compile time (the `services`
//! crate registers the built-in ones) and an unknown name in the config stops start-up.
//!
//! One handler is part of the server itself and known to every registry:
//! [`ADMIN_HANDLER`] (`mod_admin`, the operator's console), which the server makes with
//! access to its own state ([`crate::admin`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::ServiceConfig;
use crate::handler::Service;

/// The operator's console, built into the server.
pub const ADMIN_HANDLER: &str = "mod_admin";

/// Makes the service for one `[[service]]` entry, or says why its `args` do not suit it.
pub type ServiceFactory =
    Arc<dyn Fn(&ServiceConfig) -> Result<Arc<dyn Service>, String> + Send + Sync>;

/// Checks a `[[service]]` entry's `args` and options without making anything (no files
/// opened, no connections), so that config validation has no side effects.
pub type ServiceCheck = Arc<dyn Fn(&ServiceConfig) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Handler {
    factory: ServiceFactory,
    check: Option<ServiceCheck>,
}

/// Handler names and their factories.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Handler>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `factory` under `name` (e.g. `mod_name_server`), replacing any before.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&ServiceConfig) -> Result<Arc<dyn Service>, String> + Send + Sync + 'static,
    ) -> &mut Registry {
        self.factories.insert(
            name.to_owned(),
            Handler {
                factory: Arc::new(factory),
                check: None,
            },
        );
        self
    }

    /// Registers `factory` under `name` with `check`, which config validation runs on
    /// each entry for this handler (reporting its line) before anything is made.
    pub fn register_checked(
        &mut self,
        name: &str,
        check: impl Fn(&ServiceConfig) -> Result<(), String> + Send + Sync + 'static,
        factory: impl Fn(&ServiceConfig) -> Result<Arc<dyn Service>, String> + Send + Sync + 'static,
    ) -> &mut Registry {
        self.factories.insert(
            name.to_owned(),
            Handler {
                factory: Arc::new(factory),
                check: Some(Arc::new(check)),
            },
        );
        self
    }

    /// Runs the handler's check on `config`; Ok when it has none.
    ///
    /// # Errors
    /// The handler is not registered, or its check refused the entry.
    pub fn check(&self, config: &ServiceConfig) -> Result<(), String> {
        if config.handler == ADMIN_HANDLER {
            return crate::admin::check(config);
        }
        let is_port = config.handler == crate::port_config::PORT_HANDLER;
        if config.options.port.is_some() && !is_port {
            return Err(format!(
                "only handler = \"port\" takes command and the other port keys, not `{}`",
                config.handler
            ));
        }
        if is_port && config.options.port.is_none() {
            return Err("a port service needs `command`".into());
        }
        let handler = self
            .factories
            .get(&config.handler)
            .ok_or_else(|| format!("unknown handler `{}`", config.handler))?;
        match &handler.check {
            Some(check) => check(config),
            None => Ok(()),
        }
    }

    /// True when `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        name == ADMIN_HANDLER || self.factories.contains_key(name)
    }

    /// The registered names (and `mod_admin`), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.factories.keys().map(String::as_str).collect();
        if !self.factories.contains_key(ADMIN_HANDLER) {
            names.push(ADMIN_HANDLER);
            names.sort_unstable();
        }
        names
    }

    /// Makes the service for `config`.
    ///
    /// # Errors
    /// The handler is not registered, or its factory refused the entry's `args`.
    pub fn make(&self, config: &ServiceConfig) -> Result<Arc<dyn Service>, String> {
        let handler = self
            .factories
            .get(&config.handler)
            .ok_or_else(|| format!("unknown handler `{}`", config.handler))?;
        (handler.factory)(config)
    }
}
