//! `lib_chan.conf`: the TOML configuration, loaded and validated before anything starts.
//!
//! Every error names the file, the line and the key, e.g.
//! `lib_chan.conf:9: service[0].password: plaintext password refused; ...`, and no
//! bad config reaches a panic. [`Config`] can also be built in code (the book's
//! `lib_chan:start_server(Conf)`), with [`Config::new`] and its public fields.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lib_chan_protocol::{Term, DEFAULT_MAX_FRAME};
use serde::Deserialize;
use toml::Spanned;

use crate::admission::AdmissionPolicy;
use crate::auth::check_hash_policy;
use crate::registry::Registry;
use crate::users::{RawUser, UserConfig};

/// The port the book's lib_chan uses.
pub const DEFAULT_PORT: u16 = 1234;

/// Where a config error was found and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or `<config>` for one built in code).
    pub file: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The key, e.g. `service[0].password`, when known.
    pub key: Option<String>,
    /// What was wrong, and how to fix it where that is not obvious.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where the server's certificate chain and private key come from.
#[derive(Clone)]
pub enum TlsSource {
    /// PEM files on disk; the key file must not be readable by group or others.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// PEM text held in memory (for embedding and tests).
    Pem {
        /// The certificate chain, leaf first.
        cert: String,
        /// The private key.
        key: String,
    },
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            TlsSource::Pem { .. } => f.write_str("Pem(<in memory>)"),
        }
    }
}

/// Where the client CA of `[tls] client_ca` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCaSource {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// PEM text held in memory.
    Pem(String),
}

/// One `[[service]]` entry: a name, its password hash, the handler and `ArgsS`.
#[derive(Clone)]
pub struct ServiceConfig {
    /// The name clients ask for, e.g. `nameServer`.
    pub name: String,
    /// The service password as an argon2id PHC string; `None`: only named users may start
    /// the service.
    pub password_hash: Option<String>,
    /// The registered handler, e.g. `mod_name_server`.
    pub handler: String,
    /// `ArgsS`, handed to the handler.
    pub args: Term,
    /// Handler-specific keys, e.g. `store` for the name server or `allow` for `mod_rpc`.
    pub options: ServiceOptions,
}

impl ServiceConfig {
    /// A service entry with no handler-specific options.
    pub fn new(name: &str, password_hash: &str, handler: &str, args: Term) -> ServiceConfig {
        ServiceConfig {
            password_hash: Some(password_hash.to_owned()),
            ..ServiceConfig::users_only(name, handler, args)
        }
    }

    /// A service without a service password: only named users ([`Config::users`]) whose
    /// `services` name it may start it.
    pub fn users_only(name: &str, handler: &str, args: Term) -> ServiceConfig {
        ServiceConfig {
            name: name.to_owned(),
            password_hash: None,
            handler: handler.to_owned(),
            args,
            options: ServiceOptions::default(),
        }
    }
}

/// The optional `[[service]]` keys that only some handlers use; a handler's factory
/// refuses the ones it does not understand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `store`: where a name server keeps its names, e.g. `memory`, `file:PATH` (a
    /// relative PATH is made relative to the config file's directory here) or
    /// `redis://HOST:PORT/DB`.
    pub store: Option<String>,
    /// `allow`: the functions `mod_rpc` may run, as `module:function/arity`.
    pub allow: Vec<String>,
    /// `command` and the other keys of a port program (`handler = "port"`).
    pub port: Option<crate::port_config::PortOptions>,
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("name", &self.name)
            .field("handler", &self.handler)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

/// Limits and deadlines, each a `[limits]` key with the default given here.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `tls_handshake_timeout` (seconds, default 5): TCP accept to TLS established.
    pub tls_handshake_timeout: Duration,
    /// `handshake_timeout` (seconds, default 10): TCP accept to `{ok, ..}`.
    pub handshake_timeout: Duration,
    /// `max_frame` (bytes, default 1 MiB): the largest frame after the handshake.
    pub max_frame: usize,
    /// `max_connections` (default 4096): open connections in all.
    pub max_connections: usize,
    /// `max_password_checks` (default: one per core but one, at least 1): argon2
    /// verifications at once.
    pub max_password_checks: usize,
    /// `password_check_queue` (default 64): verifications waiting for a slot; past it
    /// the client gets `{error, busy}`.
    pub password_check_queue: usize,
    /// `max_calls_in_flight` (default 1024): calls per connection not yet answered;
    /// past it a call gets `{error, Ref, busy}`.
    pub max_calls_in_flight: usize,
    /// `outbound_queue` (default 1024): pushes queued per connection before a handler's
    /// `send` waits.
    pub outbound_queue: usize,
    /// `write_timeout` (seconds, default 10): a write blocked this long closes the
    /// connection with `{error, slow_consumer}`.
    pub write_timeout: Duration,
    /// `idle_timeout` (seconds, default 0 = off): close a connection silent this long.
    pub idle_timeout: Option<Duration>,
    /// `shutdown_grace` (seconds, default 5): how long shutdown waits for calls in flight.
    pub shutdown_grace: Duration,
    /// `session_grace_max` (seconds, default 10; 0 = a session ends with its last
    /// connection): the longest a session survives without a connection (PROTOCOL.md 8);
    /// a client's `grace` is clamped to it, and a client that names none gets it.
    pub session_grace_max: Duration,
    /// `max_sessions` (default 100000): sessions kept at once; past it, a login asking
    /// for a new session is answered `{error, busy}`.
    pub max_sessions: usize,
    /// `outbound_bytes` (default 4 MiB): answers and pushes queued for one connection
    /// before the middle man stops handing the handler new requests.
    pub outbound_bytes: usize,
    /// `tcp_keepalive` (seconds, default 60; 0 = off): TCP keepalive probes find peers
    /// that vanished without a word (PROTOCOL.md has no server-to-client ping).
    pub tcp_keepalive: Option<Duration>,
    /// Who may start a handshake: `unauth_drop_start` (64), `max_unauth` (256),
    /// `max_unauth_per_source` (8), and the `penalty_*` keys.
    pub admission: AdmissionPolicy,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tls_handshake_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 4096,
            // One core is left to serve authenticated clients while a password flood
            // keeps the others busy.
            max_password_checks: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            password_check_queue: 64,
            max_calls_in_flight: 1024,
            outbound_queue: 1024,
            write_timeout: Duration::from_secs(10),
            idle_timeout: None,
            shutdown_grace: Duration::from_secs(5),
            session_grace_max: Duration::from_secs(10),
            max_sessions: 100_000,
            outbound_bytes: 4 << 20,
            tcp_keepalive: Some(Duration::from_secs(60)),
            admission: AdmissionPolicy::default(),
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages; `<config>` when built in code.
    pub source: PathBuf,
    /// The address to listen on (`bind`, default 0.0.0.0).
    pub bind: IpAddr,
    /// The port (`port`, default 1234; 0 picks a free one).
    pub port: u16,
    /// The certificate and key (`[tls]`).
    pub tls: TlsSource,
    /// The services offered (`[[service]]`).
    pub services: Vec<ServiceConfig>,
    /// The named users (`[[user]]`).
    pub users: Vec<UserConfig>,
    /// `[tls] client_ca`: client certificates under this CA log in the user their subject
    /// names.
    pub client_ca: Option<ClientCaSource>,
    /// Limits and deadlines (`[limits]`).
    pub limits: Limits,
    /// Where the Prometheus metrics endpoint listens (`[metrics] listen`, e.g.
    /// `127.0.0.1:9464`; port 0 picks a free one); `None` (the default): no endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// A config with no services, listening on `bind:port`, for building in code.
    pub fn new(bind: IpAddr, port: u16, tls: TlsSource) -> Config {
        Config {
            source: PathBuf::from("<config>"),
            bind,
            port,
            tls,
            services: Vec::new(),
            users: Vec::new(),
            client_ca: None,
            limits: Limits::default(),
            metrics_listen: None,
        }
    }

    /// Reads and validates a config file against the handlers in `registry`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the line and the key.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, path, registry)
    }

    /// Parses config text; `path` names it in errors and anchors relative paths.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the line and the key.
    pub fn parse(text: &str, path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let doc = Doc { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| doc.toml_error(&e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut limits = Limits::default();
        if let Some(l) = &raw.limits {
            l.apply(&doc, &mut limits)?;
        }
        let port = match &raw.port {
            Some(p) => u16::try_from(*p.get_ref())
                .map_err(|_| doc.error(p.span(), "port", "must be from 0 to 65535"))?,
            None => DEFAULT_PORT,
        };
        let bind = match &raw.bind {
            Some(b) => b.get_ref().parse().map_err(|_| {
                doc.error(
                    b.span(),
                    "bind",
                    "not an IP address, e.g. \"0.0.0.0\" or \"::1\"",
                )
            })?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut client_ca = None;
        let tls = match raw.tls {
            Some(t) => {
                if let Some(ca) = &t.client_ca {
                    let source = ClientCaSource::File(base.join(ca.get_ref()));
                    crate::tls::client_ca(&source)
                        .map_err(|e| doc.error(ca.span(), "tls.client_ca", &e.to_string()))?;
                    client_ca = Some(source);
                }
                let tls = TlsSource::Files {
                    cert: base.join(t.cert.get_ref()),
                    key: base.join(t.key.get_ref()),
                };
                // Load the pair now, so an unreadable or mismatched file is reported
                // against the line that names it.
                if let Err(e) = crate::tls::server_config(&tls, None) {
                    let on_cert = e.concerns(&base.join(t.cert.get_ref()));
                    let (span, key) = if on_cert {
                        (t.cert.span(), "tls.cert")
                    } else {
                        (t.key.span(), "tls.key")
                    };
                    return Err(doc.error(span, key, &e.to_string()));
                }
                tls
            }
            None => {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: None,
                    key: Some("tls".into()),
                    message: "missing [tls] table with cert and key (see lib_chan.conf.example; \
                              `lib_chan gen-cert` makes development certificates)"
                        .into(),
                })
            }
        };
        let metrics_listen = match &raw.metrics {
            Some(m) => Some(m.listen.get_ref().parse().map_err(|_| {
                doc.error(
                    m.listen.span(),
                    "metrics.listen",
                    "not an address and port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"",
                )
            })?),
            None => None,
        };
        let mut services = Vec::new();
        for (i, s) in raw.service.iter().enumerate() {
            services.push(s.validate(&doc, i, registry, &services, base)?);
        }
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let mut users = Vec::new();
        for (i, u) in raw.user.iter().enumerate() {
            users.push(u.validate(&doc, i, &names, &users, client_ca.is_some())?);
        }
        if let Some(i) = unreachable_service(&services, &users) {
            let s = &raw.service[i];
            return Err(doc.error(
                s.name.span(),
                &format!("service[{i}].password"),
                &unreachable_message(&services[i].name),
            ));
        }
        Ok(Config {
            source: path.to_owned(),
            bind,
            port,
            tls,
            services,
            users,
            client_ca,
            limits,
            metrics_listen,
        })
    }

    /// Checks a config built in code: handlers registered, hashes within policy, names
    /// unique. [`Config::parse`] does the same with line numbers.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the service key at fault.
    pub fn validate(&self, registry: &Registry) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: self.source.clone(),
            line: None,
            key: Some(key),
            message,
        };
        for (i, s) in self.services.iter().enumerate() {
            if !registry.contains(&s.handler) {
                return Err(err(
                    format!("service[{i}].handler"),
                    unknown_handler(&s.handler, registry),
                ));
            }
            if let Some(hash) = &s.password_hash {
                check_hash_policy(hash)
                    .map_err(|e| err(format!("service[{i}].password"), e.to_string()))?;
            }
            registry
                .check(s)
                .map_err(|m| err(format!("service[{i}].handler"), m))?;
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(err(
                    format!("service[{i}].name"),
                    format!("service `{}` is defined twice", s.name),
                ));
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            let key = |k: &str| format!("user[{i}].{k}");
            if u.name.is_empty() || u.name.len() > lib_chan_protocol::credential::MAX_USER_NAME {
                return Err(err(key("name"), "must be 1 to 64 bytes of UTF-8".into()));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err(err(
                    key("name"),
                    format!("user `{}` is defined twice", u.name),
                ));
            }
            if let crate::users::ServiceList::Named(names) = &u.services {
                if let Some(unknown) = names
                    .iter()
                    .find(|n| !self.services.iter().any(|s| &s.name == *n))
                {
                    return Err(err(key("services"), format!("unknown service `{unknown}`")));
                }
            }
            if let Some(hash) = &u.password_hash {
                check_hash_policy(hash).map_err(|e| err(key("password"), e.to_string()))?;
            }
            if !u.has_credential() && self.client_ca.is_none() {
                return Err(err(
                    key("password"),
                    "no credential: give the user a password, an ed25519 key or a cert_sha256"
                        .into(),
                ));
            }
        }
        if let Some(i) = unreachable_service(&self.services, &self.users) {
            return Err(err(
                format!("service[{i}].password"),
                unreachable_message(&self.services[i].name),
            ));
        }
        Ok(())
    }
}

/// The first service that no credential can ever start: no service password, and no
/// user (not disabled) whose `services` name it.
fn unreachable_service(services: &[ServiceConfig], users: &[UserConfig]) -> Option<usize> {
    services.iter().position(|s| {
        s.password_hash.is_none()
            && !users
                .iter()
                .any(|u| !u.disabled && u.services.contains(&s.name))
    })
}

fn unreachable_message(service: &str) -> String {
    format!(
        "service `{service}` has no password and no [[user]] (not disabled) lists it in its \
         services, so nothing could ever start it: give it a password or a user"
    )
}

/// Parses `ADDR` or `ADDR/PREFIX` (e.g. `127.0.0.1`, `2001:db8::/32`).
pub(crate) fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("`{text}` is not an address or ADDRESS/PREFIX network");
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(bad());
    }
    Ok((ip, prefix))
}

fn unknown_handler(name: &str, registry: &Registry) -> String {
    format!(
        "unknown handler `{name}`; registered handlers: {}",
        registry.names().join(", ")
    )
}

/// The config text, for turning byte spans into line numbers and keys.
pub(crate) struct Doc<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Doc<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn error(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: Some(self.line_of(span.start)),
            key: Some(key.to_owned()),
            message: message.to_owned(),
        }
    }

    /// A TOML syntax or type error: the key is read off the line the span points at.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, key) = match e.span() {
            Some(span) => {
                let line = self.line_of(span.start);
                let text = self.text.lines().nth(line - 1).unwrap_or("");
                let key = text
                    .split_once('=')
                    .map(|(k, _)| k.trim().trim_matches('"').to_owned())
                    .filter(|k| !k.is_empty() && !k.starts_with('['));
                (Some(line), key)
            }
            None => (None, None),
        };
        ConfigError {
            file: self.path.to_owned(),
            line,
            key,
            message: e.message().trim().to_owned(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    port: Option<Spanned<i64>>,
    bind: Option<Spanned<String>>,
    tls: Option<RawTls>,
    limits: Option<RawLimits>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    user: Vec<RawUser>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    tls_handshake_timeout: Option<Spanned<f64>>,
    handshake_timeout: Option<Spanned<f64>>,
    max_frame: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_password_checks: Option<Spanned<i64>>,
    password_check_queue: Option<Spanned<i64>>,
    max_calls_in_flight: Option<Spanned<i64>>,
    outbound_queue: Option<Spanned<i64>>,
    write_timeout: Option<Spanned<f64>>,
    idle_timeout: Option<Spanned<f64>>,
    shutdown_grace: Option<Spanned<f64>>,
    session_grace_max: Option<Spanned<f64>>,
    max_sessions: Option<Spanned<i64>>,
    outbound_bytes: Option<Spanned<i64>>,
    tcp_keepalive: Option<Spanned<f64>>,
    unauth_drop_start: Option<Spanned<i64>>,
    max_unauth: Option<Spanned<i64>>,
    max_unauth_per_source: Option<Spanned<i64>>,
    penalty_auth_failed: Option<Spanned<f64>>,
    penalty_timeout: Option<Spanned<f64>>,
    penalty_no_attempt: Option<Spanned<f64>>,
    penalty_threshold: Option<Spanned<f64>>,
    penalty_max: Option<Spanned<f64>>,
    penalty_max_sources: Option<Spanned<i64>>,
    penalty_exempt: Option<Spanned<Vec<String>>>,
}

impl RawLimits {
    fn apply(&self, doc: &Doc<'_>, l: &mut Limits) -> Result<(), ConfigError> {
        let secs = |v: &Option<Spanned<f64>>, key: &str, out: &mut Duration| {
            if let Some(v) = v {
                let s = *v.get_ref();
                if !(s > 0.0 && s <= 86_400.0) {
                    return Err(doc.error(
                        v.span(),
                        key,
                        "must be a number of seconds above 0 and at most 86400",
                    ));
                }
                *out = Duration::from_secs_f64(s);
            }
            Ok(())
        };
        let count = |v: &Option<Spanned<i64>>, key: &str, min: i64, max: i64, out: &mut usize| {
            if let Some(v) = v {
                let n = *v.get_ref();
                if n < min || n > max {
                    return Err(doc.error(v.span(), key, &format!("must be from {min} to {max}")));
                }
                *out = n as usize;
            }
            Ok(())
        };
        secs(
            &self.tls_handshake_timeout,
            "limits.tls_handshake_timeout",
            &mut l.tls_handshake_timeout,
        )?;
        secs(
            &self.handshake_timeout,
            "limits.handshake_timeout",
            &mut l.handshake_timeout,
        )?;
        secs(
            &self.write_timeout,
            "limits.write_timeout",
            &mut l.write_timeout,
        )?;
        secs(
            &self.shutdown_grace,
            "limits.shutdown_grace",
            &mut l.shutdown_grace,
        )?;
        // Durations where 0 means "off" (or "no penalty").
        let secs_or_zero = |v: &Option<Spanned<f64>>, key: &str, out: &mut Duration| {
            if let Some(v) = v {
                let s = *v.get_ref();
                if !(0.0..=86_400.0).contains(&s) {
                    return Err(doc.error(
                        v.span(),
                        key,
                        "must be a number of seconds from 0 to 86400",
                    ));
                }
                *out = Duration::from_secs_f64(s);
            }
            Ok(())
        };
        secs_or_zero(
            &self.session_grace_max,
            "limits.session_grace_max",
            &mut l.session_grace_max,
        )?;
        count(
            &self.max_sessions,
            "limits.max_sessions",
            1,
            1 << 24,
            &mut l.max_sessions,
        )?;
        let pen = &mut l.admission.penalties;
        secs_or_zero(
            &self.penalty_auth_failed,
            "limits.penalty_auth_failed",
            &mut pen.auth_failed,
        )?;
        secs_or_zero(
            &self.penalty_timeout,
            "limits.penalty_timeout",
            &mut pen.timed_out,
        )?;
        secs_or_zero(
            &self.penalty_no_attempt,
            "limits.penalty_no_attempt",
            &mut pen.no_attempt,
        )?;
        secs_or_zero(
            &self.penalty_threshold,
            "limits.penalty_threshold",
            &mut pen.threshold,
        )?;
        secs_or_zero(&self.penalty_max, "limits.penalty_max", &mut pen.max)?;
        count(
            &self.penalty_max_sources,
            "limits.penalty_max_sources",
            1,
            1 << 24,
            &mut pen.max_sources,
        )?;
        if let Some(list) = &self.penalty_exempt {
            pen.exempt = list
                .get_ref()
                .iter()
                .map(|net| parse_network(net))
                .collect::<Result<_, _>>()
                .map_err(|m| doc.error(list.span(), "limits.penalty_exempt", &m))?;
        }
        let adm = &mut l.admission;
        count(
            &self.unauth_drop_start,
            "limits.unauth_drop_start",
            1,
            1 << 20,
            &mut adm.unauth_drop_start,
        )?;
        count(
            &self.max_unauth,
            "limits.max_unauth",
            1,
            1 << 20,
            &mut adm.max_unauth,
        )?;
        count(
            &self.max_unauth_per_source,
            "limits.max_unauth_per_source",
            1,
            1 << 20,
            &mut adm.max_unauth_per_source,
        )?;
        if adm.unauth_drop_start > adm.max_unauth {
            let span = self
                .unauth_drop_start
                .as_ref()
                .or(self.max_unauth.as_ref())
                .map(|v| v.span())
                .unwrap_or(0..0);
            return Err(doc.error(
                span,
                "limits.unauth_drop_start",
                "must not exceed limits.max_unauth",
            ));
        }
        count(
            &self.outbound_bytes,
            "limits.outbound_bytes",
            4096,
            1 << 30,
            &mut l.outbound_bytes,
        )?;
        if let Some(v) = &self.tcp_keepalive {
            let mut d = Duration::ZERO;
            secs_or_zero(&self.tcp_keepalive, "limits.tcp_keepalive", &mut d)?;
            l.tcp_keepalive = (*v.get_ref() > 0.0).then_some(d);
        }
        if let Some(v) = &self.idle_timeout {
            let s = *v.get_ref();
            l.idle_timeout = if s == 0.0 {
                None
            } else {
                let mut d = Duration::ZERO;
                secs(&self.idle_timeout, "limits.idle_timeout", &mut d)?;
                Some(d)
            };
        }
        count(
            &self.max_frame,
            "limits.max_frame",
            4096,
            64 << 20,
            &mut l.max_frame,
        )?;
        count(
            &self.max_connections,
            "limits.max_connections",
            1,
            1 << 20,
            &mut l.max_connections,
        )?;
        count(
            &self.max_password_checks,
            "limits.max_password_checks",
            1,
            256,
            &mut l.max_password_checks,
        )?;
        count(
            &self.password_check_queue,
            "limits.password_check_queue",
            0,
            1 << 16,
            &mut l.password_check_queue,
        )?;
        count(
            &self.max_calls_in_flight,
            "limits.max_calls_in_flight",
            1,
            1 << 20,
            &mut l.max_calls_in_flight,
        )?;
        count(
            &self.outbound_queue,
            "limits.outbound_queue",
            1,
            1 << 20,
            &mut l.outbound_queue,
        )?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    password: Option<Spanned<String>>,
    handler: Spanned<String>,
    args: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<String>>>,
    command: Option<Spanned<Vec<String>>>,
    working_dir: Option<Spanned<String>>,
    env: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    max_restarts: Option<Spanned<i64>>,
    restart_backoff: Option<Spanned<f64>>,
    call_timeout: Option<Spanned<f64>>,
    stderr: Option<Spanned<String>>,
}

impl RawService {
    fn validate(
        &self,
        doc: &Doc<'_>,
        i: usize,
        registry: &Registry,
        earlier: &[ServiceConfig],
        base: &Path,
    ) -> Result<ServiceConfig, ConfigError> {
        let key = |k: &str| format!("service[{i}].{k}");
        let name = self.name.get_ref();
        if name.is_empty() {
            return Err(doc.error(self.name.span(), &key("name"), "must not be empty"));
        }
        if earlier.iter().any(|s| &s.name == name) {
            return Err(doc.error(
                self.name.span(),
                &key("name"),
                &format!("service `{name}` is defined twice"),
            ));
        }
        let handler = self.handler.get_ref();
        if let (crate::registry::ADMIN_HANDLER, Some(p)) = (handler.as_str(), &self.password) {
            return Err(doc.error(
                p.span(),
                &key("password"),
                &crate::admin::password_refused(),
            ));
        }
        if !registry.contains(handler) {
            return Err(doc.error(
                self.handler.span(),
                &key("handler"),
                &unknown_handler(handler, registry),
            ));
        }
        if let Some(password) = &self.password {
            if let Err(e) = check_hash_policy(password.get_ref()) {
                return Err(doc.error(password.span(), &key("password"), &e.config_message()));
            }
        }
        let args = match &self.args {
            Some(a) => lib_chan_protocol::parse(a.get_ref()).map_err(|e| {
                doc.error(a.span(), &key("args"), &format!("not an Erlang term: {e}"))
            })?,
            None => Term::nil(),
        };
        let store = self.store.as_ref().map(|s| {
            let text = s.get_ref();
            match text.strip_prefix("file:") {
                Some(p) if Path::new(p).is_relative() => {
                    format!("file:{}", base.join(p).display())
                }
                _ => text.clone(),
            }
        });
        let allow = self
            .allow
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default();
        let port = crate::port_config::RawPortKeys {
            command: &self.command,
            working_dir: &self.working_dir,
            env: &self.env,
            max_restarts: &self.max_restarts,
            restart_backoff: &self.restart_backoff,
            call_timeout: &self.call_timeout,
            stderr: &self.stderr,
        }
        .validate(
            doc,
            &key,
            handler == crate::port_config::PORT_HANDLER,
            self.name.span(),
            base,
        )?;
        let config = ServiceConfig {
            name: name.clone(),
            password_hash: self.password.as_ref().map(|p| p.get_ref().clone()),
            handler: handler.clone(),
            args,
            options: ServiceOptions { store, allow, port },
        };
        // The handler's check looks at args and options now, so a bad one stops start-up
        // with this entry's line.
        if let Err(message) = registry.check(&config) {
            return Err(doc.error(self.handler.span(), &key("handler"), &message));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{HandlerFuture, Service, Session};
    use std::sync::{Arc, OnceLock};

    struct Nothing;
    impl Service for Nothing {
        fn start(self: Arc<Self>, _session: Session) -> HandlerFuture {
            Box::pin(async {})
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register("mod_name_server", |_| {
            Ok(Arc::new(Nothing) as Arc<dyn Service>)
        });
        r.register("port", |_| Ok(Arc::new(Nothing) as Arc<dyn Service>));
        r
    }

    fn hash() -> &'static str {
        static H: OnceLock<String> = OnceLock::new();
        H.get_or_init(|| crate::auth::hash_password(b"ABXy45"))
    }

    fn good() -> String {
        format!(
            r#"port = 1234
bind = "127.0.0.1"

[tls]
cert = "server.pem"
key = "server.key"

[[service]]
name = "nameServer"
password = "{}"
handler = "mod_name_server"
args = "notUsed"
"#,
            hash()
        )
    }

    /// A directory holding development certificates, made once per test run.
    fn dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("lib_chan_config_test_{}", std::process::id()));
            crate::devcert::DevCerts::generate(&["localhost".into()])
                .unwrap()
                .write(&dir)
                .unwrap();
            dir
        })
    }

    fn conf_path() -> PathBuf {
        dir().join("lib_chan.conf")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &conf_path(), &registry())
    }

    #[test]
    fn a_good_config_loads_with_paths_relative_to_the_file() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.port, 1234);
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.services[0].args, Term::atom("notUsed"));
        assert_eq!(c.metrics_listen, None);
        let with_metrics =
            parse(&format!("{}\n[metrics]\nlisten = \"[::1]:9464\"\n", good())).unwrap();
        assert_eq!(
            with_metrics.metrics_listen,
            Some("[::1]:9464".parse().unwrap())
        );
        match c.tls {
            TlsSource::Files { cert, .. } => assert_eq!(cert, dir().join("server.pem")),
            other => panic!("{other:?}"),
        }
    }

    /// Each kind of error names the file, the line and the key.
    #[test]
    fn every_error_names_file_line_and_key() {
        let g = good();
        let cases: Vec<(String, usize, &str, &str)> = vec![
            (
                g.replace("port = 1234", "port = \"x\""),
                1,
                "port",
                "invalid type",
            ),
            (
                g.replace("port = 1234", "port = 99999"),
                1,
                "port",
                "0 to 65535",
            ),
            (
                g.replace("port = 1234", "prot = 1234"),
                1,
                "prot",
                "unknown field",
            ),
            (
                g.replace("bind = \"127.0.0.1\"", "bind = \"nowhere\""),
                2,
                "bind",
                "not an IP address",
            ),
            (
                g.replace(hash(), "ABXy45"),
                10,
                "service[0].password",
                "plaintext password refused",
            ),
            (
                g.replace("mod_name_server", "mod_nope"),
                11,
                "service[0].handler",
                "unknown handler `mod_nope`",
            ),
            (
                g.replace("\"notUsed\"", "\"{unclosed\""),
                12,
                "service[0].args",
                "not an Erlang term",
            ),
            (g.replace("port = 1234", "port = 1234 ="), 1, "port", ""),
            (
                format!("{g}\n[limits]\nhandshake_timeout = -1\n"),
                15,
                "limits.handshake_timeout",
                "seconds",
            ),
            (
                g.replace("\"server.pem\"", "\"missing.pem\""),
                5,
                "tls.cert",
                "cannot read",
            ),
            // ca.pem is mode 0644: as a key file it is refused.
            (
                g.replace("\"server.key\"", "\"ca.pem\""),
                6,
                "tls.key",
                "chmod 600",
            ),
            (
                g.replace("\"server.key\"", "\"ca.key\""),
                6,
                "tls.key",
                "TLS setup failed",
            ),
            (
                format!("{g}\n[limits]\nmax_frame = 10\n"),
                15,
                "limits.max_frame",
                "from 4096",
            ),
            (
                format!("{g}\n[metrics]\nlisten = \"127.0.0.1\"\n"),
                15,
                "metrics.listen",
                "address and port",
            ),
            (
                format!("{g}\n[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 1\n"),
                16,
                "port",
                "unknown field",
            ),
        ];
        for (text, line, key, words) in cases {
            let e = parse(&text).unwrap_err();
            let shown = e.to_string();
            assert_eq!(e.line, Some(line), "{shown}");
            assert_eq!(e.key.as_deref(), Some(key), "{shown}");
            assert!(
                shown.starts_with(&format!("{}:", conf_path().display())),
                "{shown}"
            );
            assert!(shown.contains(words), "{shown}");
        }
    }

    #[test]
    fn port_keys_load_for_port_services_only() {
        let port = format!(
            "{}\n[[service]]\nname = \"inv\"\npassword = \"{}\"\nhandler = \"port\"\ncommand = [\"./bin/inv.py\", \"--db\", \"inv.sqlite\"]\nenv = {{ MODE = \"test\" }}\nmax_restarts = 3\nrestart_backoff = 0.25\ncall_timeout = 5\nstderr = \"inherit\"\n",
            good(),
            hash()
        );
        let c = parse(&port).unwrap();
        let p = c.services[1].options.port.as_ref().unwrap();
        assert_eq!(
            p.command[0],
            dir().join("./bin/inv.py").display().to_string()
        );
        assert_eq!(p.command[1..], ["--db", "inv.sqlite"]);
        assert_eq!(p.working_dir, dir());
        assert_eq!(p.env["MODE"], "test");
        assert_eq!(p.max_restarts, 3);
        assert_eq!(p.restart_backoff, Duration::from_millis(250));
        assert_eq!(p.call_timeout, Duration::from_secs(5));
        assert_eq!(p.stderr, crate::port_config::StderrMode::Inherit);
        for (from, to, line, key, words) in [
            (
                "handler = \"port\"",
                "handler = \"mod_name_server\"",
                18,
                "service[1].command",
                "only handler = \"port\"",
            ),
            (
                "command = [\"./bin/inv.py\", \"--db\", \"inv.sqlite\"]\n",
                "",
                15,
                "service[1].command",
                "needs `command`",
            ),
            (
                "[\"./bin/inv.py\", \"--db\", \"inv.sqlite\"]",
                "[]",
                18,
                "service[1].command",
                "must name a program",
            ),
            (
                "stderr = \"inherit\"",
                "stderr = \"file\"",
                23,
                "service[1].stderr",
                "\"log\" or \"inherit\"",
            ),
            (
                "call_timeout = 5",
                "call_timeout = 0",
                22,
                "service[1].call_timeout",
                "above 0",
            ),
            (
                "max_restarts = 3",
                "max_restarts = 0",
                20,
                "service[1].max_restarts",
                "from 1 to 1000",
            ),
            (
                "call_timeout = 5",
                "call_timeout = 5\nworking_dir = \"nowhere\"",
                23,
                "service[1].working_dir",
                "not a directory",
            ),
        ] {
            let e = parse(&port.replace(from, to)).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    /// `good()` with a user appended: its `[[user]]` line is line 14.
    fn with_user(body: &str) -> String {
        format!("{}\n[[user]]\n{body}", good())
    }

    #[test]
    fn users_load_with_every_key() {
        let key = "A".repeat(43) + "=";
        let c = parse(&with_user(&format!(
            "name = \"alice\"\nservices = [\"nameServer\"]\nread_only = [\"nameServer\"]\npassword = \"{}\"\ned25519 = \"{key}\"\ncert_sha256 = \"{}\"\nfrom = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nexpires = \"2027-06-30T00:00:00Z\"\ndisabled = false\n",
            hash(),
            vec!["ab"; 32].join(":")
        )))
        .unwrap();
        let u = &c.users[0];
        assert_eq!(u.name, "alice");
        assert!(u.services.contains("nameServer") && !u.services.contains("chat"));
        assert!(u.read_only.contains("nameServer"));
        assert_eq!(u.cert_sha256, Some([0xab; 32]));
        assert_eq!(u.from.len(), 2);
        assert_eq!(
            crate::users::format_time(u.expires.unwrap()),
            "2027-06-30T00:00:00Z"
        );
        // A service without a password is fine when a user may start it.
        let users_only = parse(&format!(
            "{}\n[[user]]\nname = \"bob\"\nservices = [\"*\"]\ned25519 = \"{key}\"\n",
            good().replace(&format!("password = \"{}\"\n", hash()), "")
        ))
        .unwrap();
        assert_eq!(users_only.services[0].password_hash, None);
        assert_eq!(users_only.validate(&registry()), Ok(()));
    }

    #[test]
    fn user_errors_name_file_line_and_key() {
        let key = "A".repeat(43) + "=";
        let ok_key = format!("ed25519 = \"{key}\"\n");
        let cases: Vec<(String, usize, &str, &str)> = vec![
            (
                with_user(&format!(
                    "name = \"alice\"\nservices = [\"chat\"]\n{ok_key}"
                )),
                16,
                "user[0].services",
                "unknown service `chat`",
            ),
            (
                with_user(&format!("name = \"\"\nservices = [\"*\"]\n{ok_key}")),
                15,
                "user[0].name",
                "1 to 64 bytes",
            ),
            (
                with_user(&format!(
                    "name = \"{}\"\nservices = [\"*\"]\n{ok_key}",
                    "x".repeat(65)
                )),
                15,
                "user[0].name",
                "1 to 64 bytes",
            ),
            (
                format!(
                    "{}\n[[user]]\nname = \"a\"\nservices = [\"*\"]\n{ok_key}",
                    with_user(&format!("name = \"a\"\nservices = [\"*\"]\n{ok_key}"))
                ),
                20,
                "user[1].name",
                "defined twice",
            ),
            (
                with_user("name = \"a\"\nservices = [\"*\"]\ned25519 = \"AAAA\"\n"),
                17,
                "user[0].ed25519",
                "32 bytes",
            ),
            (
                with_user("name = \"a\"\nservices = [\"*\"]\ncert_sha256 = \"abc\"\n"),
                17,
                "user[0].cert_sha256",
                "64 hex digits",
            ),
            (
                with_user(&format!(
                    "name = \"a\"\nservices = [\"*\"]\n{ok_key}from = [\"10.0.0.0/33\"]\n"
                )),
                18,
                "user[0].from",
                "10.0.0.0/33",
            ),
            (
                with_user(&format!(
                    "name = \"a\"\nservices = [\"*\"]\n{ok_key}expires = \"tomorrow\"\n"
                )),
                18,
                "user[0].expires",
                "RFC 3339",
            ),
            (
                with_user("name = \"a\"\nservices = [\"*\"]\npassword = \"hunter2\"\n"),
                17,
                "user[0].password",
                "plaintext password refused",
            ),
            (
                with_user("name = \"a\"\nservices = [\"*\"]\n"),
                15,
                "user[0].password",
                "no credential",
            ),
            (
                with_user(&format!("name = \"a\"\n{ok_key}")),
                15,
                "user[0].services",
                "missing or empty",
            ),
            (
                with_user(&format!(
                    "name = \"a\"\nservices = [\"nameServer\"]\nread_only = [\"chat\"]\n{ok_key}"
                )),
                17,
                "user[0].read_only",
                "unknown service `chat`",
            ),
            (
                with_user(&format!(
                    "name = \"a\"\nservices = [\"*\"]\n{ok_key}colour = \"red\"\n"
                )),
                18,
                "colour",
                "unknown field",
            ),
            // No password and nobody to start it.
            (
                good().replace(&format!("password = \"{}\"\n", hash()), ""),
                9,
                "service[0].password",
                "nothing could ever start it",
            ),
            (
                format!(
                    "{}\n[[user]]\nname = \"a\"\nservices = [\"*\"]\n{ok_key}disabled = true\n",
                    good().replace(&format!("password = \"{}\"\n", hash()), "")
                ),
                9,
                "service[0].password",
                "nothing could ever start it",
            ),
            (
                good().replace(
                    "key = \"server.key\"",
                    "key = \"server.key\"\nclient_ca = \"nope.pem\"",
                ),
                7,
                "tls.client_ca",
                "cannot read",
            ),
        ];
        for (text, line, key, words) in cases {
            let e = parse(&text).unwrap_err();
            let shown = e.to_string();
            assert_eq!(e.key.as_deref(), Some(key), "{shown}\n{text}");
            assert_eq!(e.line, Some(line), "{shown}\n{text}");
            assert!(shown.contains(words), "{shown}");
            assert!(
                !shown.contains("hunter2") || words.contains("plaintext"),
                "{shown}"
            );
        }
    }

    #[test]
    fn missing_tls_duplicate_services_and_missing_files_are_errors() {
        let g = good();
        let no_tls = g.replace("[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n", "");
        assert!(parse(&no_tls).unwrap_err().to_string().contains("[tls]"));
        let twice = format!("{g}\n[[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\n", hash());
        let e = parse(&twice).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("service[1].name"));
        assert_eq!(e.line, Some(15));
        let e = Config::load(Path::new("/nonexistent/lib_chan.conf"), &registry()).unwrap_err();
        assert_eq!(e.line, None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lib_chan.conf: cannot read"),
            "{e}"
        );
    }
}
