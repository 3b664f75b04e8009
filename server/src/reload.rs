//! Live reload: a new [`Config`] validated whole and swapped in while the server runs
//! (`lib_chan serve` does it on SIGHUP).
//!
//! # What is swapped
//! Everything a connection reads from the server state lives in one generation, a
//! `ServerState`: the services by name, the TLS acceptor (certificate and key) and the
//! per-connection limits. The current generation sits behind an `RwLock<Arc<_>>` that the
//! accept loop reads once per accepted connection (never per message); a reload builds
//! the next generation completely (config checked against the registry, the TLS pair
//! loaded, every new service made) and only then replaces the pointer, so a bad config
//! changes nothing and a good one applies at once to every new connection. Connections
//! already open keep the generation they started with.
//!
//! # What survives
//! A `[[service]]` entry whose name, handler, `args` and options are unchanged keeps its
//! [`Service`](crate::Service) value, and with it its state (a name server's names, a
//! chat service's groups). When its password hash is unchanged too, the entry itself is
//! kept and its connections are left alone. Counters ([`Stats`](crate::stats::Stats),
//! metrics), the password checker (and its cache, keyed by the hash, so a changed hash
//! misses) and the admission state carry over.
//!
//! # How revocation reaches connections
//! Each `ServiceEntry` has a `CancellationToken`; each authenticated connection holds a
//! child of it, which its middle man selects on. A reload cancels the token of every entry
//! it does not carry over (the service was removed, its handler, `args` or options changed,
//! or its password hash changed), and those connections end with `{error, revoked}`.
//!
//! # What needs a restart
//! `port`, `bind`, `[metrics] listen` and the limits sized at start-up (`max_connections`,
//! `max_password_checks`, `password_check_queue`, and the admission and penalty keys)
//! are not changed by a reload: it keeps the running values, logs a warning, and lists
//! them in [`ReloadSummary::needs_restart`]. The other limits apply to new connections.
//!
//! A service made anew is made while the old one still runs (its connections are revoked
//! only once the new config is known to be good), so a handler that holds a resource
//! exclusively cannot be made twice: a name server with a `file:` store whose entry
//! changes (other than its password) but keeps the same file is refused by the reload
//! (the file is in use) and needs a restart.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServiceConfig};
use crate::registry::Registry;
use crate::server::{ServerState, ServiceEntry, StartError};
use crate::tls::{self, ClientCa, ServerTls};
use crate::users::Users;

/// The TLS side of one generation: the server's configuration (asking for client
/// certificates when the config has a client CA or a pinned certificate), its certificate
/// hash, and the client CA.
pub(crate) struct TlsGeneration {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) cert_hash: [u8; 32],
    pub(crate) client_ca: Option<ClientCa>,
    /// The certificate's subject, e.g. `CN=localhost`.
    pub(crate) cert_subject: String,
    /// The end of the certificate's validity.
    pub(crate) cert_not_after: Option<std::time::SystemTime>,
}

/// Builds the TLS side of a generation from `config`.
///
/// # Errors
/// [`StartError::Tls`] when the pair or the client CA cannot be used.
pub(crate) fn build_tls(config: &Config) -> Result<TlsGeneration, StartError> {
    let client_ca = config.client_ca.as_ref().map(tls::client_ca).transpose()?;
    let wants_certs = client_ca.is_some() || config.users.iter().any(|u| u.cert_sha256.is_some());
    let ServerTls {
        config: tls_config,
        cert_hash,
        leaf,
    } = tls::server_config(&config.tls, wants_certs.then(tls::AnyClientCert::verifier))?;
    let (cert_subject, cert_not_after) = match x509_parser::parse_x509_certificate(&leaf) {
        Ok((_, cert)) => (
            cert.subject().to_string(),
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(
                u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            )),
        ),
        Err(_) => (String::new(), None),
    };
    Ok(TlsGeneration {
        config: tls_config,
        cert_hash,
        client_ca,
        cert_subject,
        cert_not_after,
    })
}

/// The server's current generation, and the config it was made from.
pub(crate) struct Live {
    /// What new connections use; read once per accepted connection.
    current: RwLock<Arc<ServerState>>,
    /// The config in force (restart-only values as running), diffed against by the next
    /// reload; its lock also serialises reloads.
    applied: Mutex<Config>,
}

impl Live {
    pub(crate) fn new(state: ServerState, config: Config) -> Live {
        Live {
            current: RwLock::new(Arc::new(state)),
            applied: Mutex::new(config),
        }
    }

    /// The current generation.
    pub(crate) fn load(&self) -> Arc<ServerState> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Validates `config` whole, builds the next generation and swaps it in, then revokes
    /// the connections of every entry not carried over. On error nothing has changed.
    fn reload(&self, mut config: Config, registry: &Registry) -> Result<ReloadSummary, StartError> {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        config.validate(registry)?;
        let tls = build_tls(&config)?;
        let old = self.load();
        let mut summary = ReloadSummary::default();
        let services = build_services(
            &config.services,
            registry,
            &old.admin,
            &old.services,
            &mut summary,
        )?;
        summary.removed = old
            .services
            .keys()
            .filter(|name| !services.contains_key(*name))
            .cloned()
            .collect();
        summary.removed.sort();
        summary.needs_restart = keep_restart_only(&applied, &mut config);
        // Entries not carried over, by identity: their connections are revoked.
        let revoked: Vec<Arc<ServiceEntry>> = old
            .services
            .iter()
            .filter(|(name, entry)| {
                services
                    .get(*name)
                    .is_none_or(|new| !Arc::ptr_eq(new, entry))
            })
            .map(|(_, entry)| Arc::clone(entry))
            .collect();
        for (name, entry) in &services {
            // Listed at zero from now on, before any connection.
            old.metrics.service(name);
            old.metrics.watch_service(name, &entry.service);
        }
        // Service values made anew or dropped: what they run on their own is stopped.
        let grace = config.limits.shutdown_grace;
        for entry in old.services.values() {
            if !services
                .values()
                .any(|n| Arc::ptr_eq(&n.service, &entry.service))
            {
                if let Some(stop) = entry.service.stop(grace) {
                    tokio::spawn(stop);
                }
            }
        }
        let users = Arc::new(Users::new(&config.users));
        let state = ServerState {
            limits: Arc::new(config.limits.clone()),
            acceptor: TlsAcceptor::from(tls.config),
            cert_hash: tls.cert_hash,
            services,
            users: Arc::clone(&users),
            client_ca: tls.client_ca,
            connections: Arc::clone(&old.connections),
            denials: Arc::clone(&old.denials),
            sessions: Arc::clone(&old.sessions),
            users_changed: Arc::clone(&old.users_changed),
            admin: Arc::clone(&old.admin),
            cert_subject: tls.cert_subject,
            cert_not_after: tls.cert_not_after,
            checker: old.checker.clone(),
            admission: Arc::clone(&old.admission),
            stats: Arc::clone(&old.stats),
            metrics: Arc::clone(&old.metrics),
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        // After the swap, so that no new connection can start on a revoked entry; one
        // that authenticated against it just before still holds a child of its token,
        // and is revoked as soon as its middle man starts.
        for entry in &revoked {
            entry.revoked.cancel();
        }
        // Connections of named users are checked against the new users one by one.
        let current = self.load();
        summary.users_revoked = current.connections.revoke_unauthorized(
            &users,
            current.client_ca.as_ref().map(|c| c.digest),
            std::time::SystemTime::now(),
        );
        current.users_changed.notify_one();
        drop(current);
        *applied = config;
        drop(applied);
        tracing::info!(%summary, source = %self.source(), "config reloaded");
        for what in &summary.needs_restart {
            tracing::warn!(change = %what, "this change needs a restart; the running value stays in force");
        }
        Ok(summary)
    }

    /// The config file in force (`<config>` for one built in code).
    pub(crate) fn source(&self) -> String {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .source
            .display()
            .to_string()
    }
}

/// Makes the entries for `configs`, reusing from `old` what is unchanged: the whole entry
/// when nothing changed, the service value alone when only the password hash did.
/// `summary` says which was which.
///
/// # Errors
/// [`StartError::Service`] when the registry cannot make a service.
pub(crate) fn build_services(
    configs: &[ServiceConfig],
    registry: &Registry,
    admin: &Arc<crate::admin::AdminHub>,
    old: &HashMap<String, Arc<ServiceEntry>>,
    summary: &mut ReloadSummary,
) -> Result<HashMap<String, Arc<ServiceEntry>>, StartError> {
    let mut services = HashMap::with_capacity(configs.len());
    for sc in configs {
        let previous = old.get(&sc.name);
        let entry = match previous {
            Some(p)
                if same_service(&p.config, sc) && p.config.password_hash == sc.password_hash =>
            {
                summary.kept.push(sc.name.clone());
                Arc::clone(p)
            }
            Some(p) if same_service(&p.config, sc) => {
                summary.password_changed.push(sc.name.clone());
                Arc::new(ServiceEntry::new(sc.clone(), Arc::clone(&p.service)))
            }
            _ => {
                let service = if sc.handler == crate::registry::ADMIN_HANDLER {
                    crate::admin::AdminService::service(admin)
                } else {
                    registry.make(sc).map_err(|message| StartError::Service {
                        name: sc.name.clone(),
                        message,
                    })?
                };
                if previous.is_some() {
                    summary.replaced.push(sc.name.clone());
                } else {
                    summary.added.push(sc.name.clone());
                }
                Arc::new(ServiceEntry::new(sc.clone(), service))
            }
        };
        services.insert(sc.name.clone(), entry);
    }
    Ok(services)
}

/// True when `new` would make the same service as `old`: same handler, `args` and
/// options (the password is not part of the service).
fn same_service(old: &ServiceConfig, new: &ServiceConfig) -> bool {
    old.handler == new.handler && old.args == new.args && old.options == new.options
}

/// Puts back into `new` the running values a reload cannot change, and says which of
/// them the new config wanted changed.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<String> {
    let mut changes = Vec::new();
    let c = &mut changes;
    keep(c, "port", &running.port, &mut new.port, |v| v.to_string());
    keep(c, "bind", &running.bind, &mut new.bind, |v| v.to_string());
    let addr = |a: &Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
    keep(
        c,
        "metrics.listen",
        &running.metrics_listen,
        &mut new.metrics_listen,
        addr,
    );
    let (r, n) = (&running.limits, &mut new.limits);
    let num = |v: &usize| v.to_string();
    keep(
        c,
        "limits.max_connections",
        &r.max_connections,
        &mut n.max_connections,
        num,
    );
    keep(
        c,
        "limits.max_password_checks",
        &r.max_password_checks,
        &mut n.max_password_checks,
        num,
    );
    keep(
        c,
        "limits.password_check_queue",
        &r.password_check_queue,
        &mut n.password_check_queue,
        num,
    );
    keep(
        c,
        "limits: admission and penalty keys",
        &r.admission,
        &mut n.admission,
        |_| "unauth_drop_start, max_unauth, max_unauth_per_source, penalty_*".to_owned(),
    );
    changes
}

/// When `new` differs from `running`, records `what` (shown with `show`) in `changes`
/// and puts the running value back.
fn keep<T: PartialEq + Clone>(
    changes: &mut Vec<String>,
    what: &str,
    running: &T,
    new: &mut T,
    show: impl Fn(&T) -> String,
) {
    if running != new {
        changes.push(format!("{what} ({} -> {})", show(running), show(new)));
        *new = running.clone();
    }
}

/// What a reload changed, by service name (each list in config order, `removed` sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadSummary {
    /// New services.
    pub added: Vec<String>,
    /// Services no longer offered; their connections were revoked.
    pub removed: Vec<String>,
    /// Services whose handler, `args` or options changed: made anew (their state starts
    /// afresh) and their connections revoked.
    pub replaced: Vec<String>,
    /// Services whose password hash changed: same service value (state kept), connections
    /// revoked.
    pub password_changed: Vec<String>,
    /// Services unchanged: same service value, connections left open.
    pub kept: Vec<String>,
    /// Changes in the new config that need a restart and were not applied.
    pub needs_restart: Vec<String>,
    /// Connections of named users revoked because the new users no longer let them in.
    pub users_revoked: usize,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("replaced", &self.replaced),
            ("password changed", &self.password_changed),
            ("kept", &self.kept),
        ] {
            if names.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{what}: {}", names.join(", "))?;
        }
        if first {
            f.write_str("no services")?;
        }
        if self.users_revoked > 0 {
            write!(f, "; user connections revoked: {}", self.users_revoked)?;
        }
        Ok(())
    }
}

/// Reloads a running server's configuration; cheap to clone, usable from any task or
/// thread (e.g. a SIGHUP handler). [`Server::reloader`](crate::Server::reloader) and
/// [`ServerHandle::reload`](crate::ServerHandle::reload) give one.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) live: Arc<Live>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Validates all of `config` (against `registry`, loading the TLS pair and making
    /// every new or changed service) and swaps it in at once: new connections get the new
    /// services, passwords, certificate and per-connection limits; connections to a
    /// removed or replaced service, or authenticated with a password whose hash changed,
    /// are closed with `{error, revoked}`. Unchanged services keep their state. See the
    /// [module docs](crate::reload) for what needs a restart instead.
    ///
    /// Call it from within the server's tokio runtime (a service may need it to open its
    /// store). It blocks while services are made (files opened, a Redis reached), as
    /// [`Server::bind`](crate::Server::bind) does; `spawn_blocking` suits it.
    ///
    /// # Errors
    /// [`StartError`] saying what is wrong with the new config; the old one stays in
    /// force, untouched.
    pub fn reload(&self, config: Config, registry: &Registry) -> Result<ReloadSummary, StartError> {
        self.live.reload(config, registry)
    }
}

impl ServiceEntry {
    /// A new entry with a fresh revocation token.
    pub(crate) fn new(config: ServiceConfig, service: Arc<dyn crate::Service>) -> ServiceEntry {
        ServiceEntry {
            config,
            service,
            revoked: CancellationToken::new(),
        }
    }
}
