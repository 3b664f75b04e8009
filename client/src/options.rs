//! [`ConnectOptions`]: how to reach and trust a channel server, and the timeouts.
//!
//! A by-value builder in the style of async-nats: start from [`ConnectOptions::new`],
//! chain setters, and end with [`ConnectOptions::connect`]. [`crate::connect`] is the
//! same with every default.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lib_chan_protocol::Term;
use rustls::ClientConfig;

use crate::channel::Channel;
use crate::error::Error;
use crate::login::Login;
use crate::tls::{CertSource, Trust, TrustKind};

/// How long the TCP connection may take to open, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake plus `start_service` may take until the welcome, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Channel::rpc`] waits for its reply, by default.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The session a connection asks for ([`ConnectOptions::session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRequest {
    /// Start a session.
    New,
    /// Resume the session with this id (from [`Channel::session_id`](crate::Channel::session_id)).
    Resume(Vec<u8>),
}

/// Options for connecting to a channel server.
///
/// | setting | default |
/// |---|---|
/// | trust | the system's root certificates |
/// | name checked in the certificate (and sent as SNI) | the host dialled |
/// | [`connect_timeout`](Self::connect_timeout) (TCP) | 10 s |
/// | [`handshake_timeout`](Self::handshake_timeout) (TLS + `start_service`) | 10 s |
/// | [`rpc_timeout`](Self::rpc_timeout) (default for [`Channel::rpc`]) | 30 s |
/// | [`keepalive`](Self::keepalive) (pings, and a dead server detected) | off |
///
/// Cloning is cheap, and clones share the TLS configuration once it is built (CA files
/// are read on the first connect, not on every one).
///
/// # Examples
///
/// ```no_run
/// use lib_chan_client::{ConnectOptions, Term};
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), lib_chan_client::Error> {
/// let chan = ConnectOptions::new()
///     .ca_file("certs/ca.pem")
///     .rpc_timeout(Duration::from_secs(5))
///     .connect("localhost", 1234, "nameServer", "ABXy45", Term::nil())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    pub(crate) trust: Trust,
    /// A whole rustls configuration given by the caller; overrides `trust`.
    pub(crate) custom_tls: Option<Arc<ClientConfig>>,
    pub(crate) server_name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) rpc_timeout: Duration,
    /// The keepalive interval; `None` sends no pings.
    pub(crate) keepalive: Option<Duration>,
    /// The session to ask for (PROTOCOL.md 8); `None`: none, and a book-password login
    /// stays the version 1 handshake.
    pub(crate) session: Option<SessionRequest>,
    /// The grace to ask for with a session.
    pub(crate) session_grace: Option<Duration>,
    /// How [`connect_reconnecting`](ConnectOptions::connect_reconnecting) retries.
    pub(crate) reconnect: Option<crate::reconnect::ReconnectPolicy>,
    /// The configuration built from `trust`, shared by clones; a setter that changes the
    /// trust replaces it with an empty one.
    built: Arc<OnceLock<Arc<ClientConfig>>>,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            trust: Trust::default(),
            custom_tls: None,
            server_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            keepalive: None,
            session: None,
            session_grace: None,
            reconnect: None,
            built: Arc::default(),
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("cas", &self.trust.cas)
            .field("system_roots", &self.trust.system_roots)
            .field("pinned", &self.trust.pinned)
            .field("custom_tls", &self.custom_tls.is_some())
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("keepalive", &self.keepalive)
            .field("session", &self.session)
            .field("session_grace", &self.session_grace)
            .finish()
    }
}

impl ConnectOptions {
    /// The defaults: system roots, 10 s connect, 10 s handshake, 30 s rpc.
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    fn trust_changed(mut self) -> ConnectOptions {
        self.built = Arc::default();
        self
    }

    /// Trusts the CA certificates in this PEM file (read when connecting). May be given
    /// several times; the system roots are then no longer trusted unless
    /// [`system_roots`](Self::system_roots) is also set.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> ConnectOptions {
        self.trust.cas.push(CertSource::File(path.into()));
        self.trust_changed()
    }

    /// Trusts the CA certificates in this PEM text, as [`ca_file`](Self::ca_file) does.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> ConnectOptions {
        self.trust.cas.push(CertSource::Pem(pem.as_ref().to_vec()));
        self.trust_changed()
    }

    /// Accepts only the certificate in this PEM file (the first one, when it holds a
    /// chain): the server's certificate must be byte for byte the same. No CA is
    /// consulted and its dates are not checked, but the name dialled (or
    /// [`server_name`](Self::server_name)) must be one it holds, and the server must
    /// prove it has the certificate's key. Cannot be combined with CA certificates or
    /// the system roots.
    pub fn pinned_cert_file(mut self, path: impl Into<PathBuf>) -> ConnectOptions {
        self.trust.pinned = Some(CertSource::File(path.into()));
        self.trust_changed()
    }

    /// Pins the certificate in this PEM text, as [`pinned_cert_file`](Self::pinned_cert_file)
    /// does.
    pub fn pinned_cert_pem(mut self, pem: impl AsRef<[u8]>) -> ConnectOptions {
        self.trust.pinned = Some(CertSource::Pem(pem.as_ref().to_vec()));
        self.trust_changed()
    }

    /// Trusts the system's root certificates (through rustls-native-certs). This is the
    /// default when no CA and no pin is set; with [`ca_file`](Self::ca_file) it trusts
    /// both.
    pub fn system_roots(mut self) -> ConnectOptions {
        self.trust.system_roots = true;
        self.trust_changed()
    }

    /// Presents this client certificate (PEM chain, leaf first) with its private key
    /// (PEM, a file of mode 0600) when the server asks for one: the credential of
    /// [`Login::certificate`]. Both files are read when connecting.
    pub fn client_cert_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ConnectOptions {
        self.trust.client_cert =
            Some((CertSource::File(cert.into()), CertSource::File(key.into())));
        self.trust_changed()
    }

    /// As [`client_cert_files`](Self::client_cert_files), from PEM text in memory.
    pub fn client_cert_pem(
        mut self,
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> ConnectOptions {
        self.trust.client_cert = Some((
            CertSource::Pem(cert.as_ref().to_vec()),
            CertSource::Pem(key.as_ref().to_vec()),
        ));
        self.trust_changed()
    }

    /// Uses this rustls configuration as it is, e.g. for client certificates (mutual
    /// TLS). It overrides the CA, pin and system-root settings. Build it with
    /// `ClientConfig::builder_with_provider`, not `ClientConfig::builder()`, which panics
    /// when two crypto providers are compiled in.
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> ConnectOptions {
        self.custom_tls = Some(config);
        self
    }

    /// Checks this name in the server's certificate, and sends it as SNI, instead of the
    /// host dialled: e.g. dial `127.0.0.1` and check `gandalf`. A DNS name or an IP
    /// address.
    pub fn server_name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.server_name = Some(name.into());
        self
    }

    /// How long opening the TCP connection (name lookup included) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.connect_timeout = timeout;
        self
    }

    /// How long the TLS handshake plus `start_service` may take, until the welcome (or,
    /// for [`ping`](crate::ping), until the pong).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// How long [`Channel::rpc`] waits for a reply; [`Channel::rpc_timeout`] sets it per
    /// call.
    pub fn rpc_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.rpc_timeout = timeout;
        self
    }

    /// Keeps the connection alive and watches the server, like Erlang's `monitor_node`:
    /// every `interval` the channel sends `{ping, Ref}` (answered by the server itself,
    /// never seen by the service), and when a ping has gone unanswered for a whole
    /// interval with nothing else heard from the server meanwhile, the channel closes with
    /// [`CloseReason::KeepaliveTimeout`]. [`Channel::closed`] then resolves, and waiting
    /// calls fail with that reason. A dead server is so reported within about two
    /// intervals of its last sign of life. A zero `interval` turns keepalive off (the
    /// default).
    ///
    /// The pings also keep an otherwise idle connection from reaching the server's
    /// `idle_timeout`. While the program leaves pushes unread and the push queue is full,
    /// the channel is not reading, so silence then proves nothing and is not held against
    /// the server.
    ///
    /// Choose an interval well above the round trip time and above the time it takes to
    /// send the largest frame you send: frames are never interleaved, so a ping waits for
    /// the frame before it, and a server that has stopped reading (frozen, or with a
    /// handler so far behind that it applies backpressure) for a whole interval counts as
    /// dead.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lib_chan_client::{ConnectOptions, Term};
    /// use std::time::Duration;
    ///
    /// # async fn demo() -> Result<(), lib_chan_client::Error> {
    /// let chan = ConnectOptions::new()
    ///     .keepalive(Duration::from_secs(5))
    ///     .connect("localhost", 1234, "nameServer", "ABXy45", Term::nil())
    ///     .await?;
    /// let why = chan.closed().await; // e.g. CloseReason::KeepaliveTimeout { .. }
    /// eprintln!("server gone: {why}");
    /// # Ok(()) }
    /// ```
    ///
    /// [`CloseReason::KeepaliveTimeout`]: crate::CloseReason::KeepaliveTimeout
    pub fn keepalive(mut self, interval: Duration) -> ConnectOptions {
        self.keepalive = (!interval.is_zero()).then_some(interval);
        self
    }

    /// Asks for a session (PROTOCOL.md 8): [`SessionRequest::New`] starts one,
    /// [`SessionRequest::Resume`] resumes the one whose id an earlier
    /// [`Channel::session_id`](crate::Channel::session_id) gave. The server answers a
    /// resume it cannot honour (unknown, ended, another identity) with a new session:
    /// compare the ids to tell. What belongs to the session (a name server's `#{owner =>
    /// session}` names) outlives a lost connection by the session's grace; a
    /// [`Channel::close`](crate::Channel::close) ends it.
    pub fn session(mut self, request: SessionRequest) -> ConnectOptions {
        self.session = Some(request);
        self
    }

    /// The grace to ask for with [`session`](ConnectOptions::session): how long the
    /// session survives without a connection. The server clamps it to its own maximum
    /// (10 s by default) and says what it chose ([`Channel::session_grace`](crate::Channel::session_grace)).
    pub fn session_grace(mut self, grace: Duration) -> ConnectOptions {
        self.session_grace = Some(grace);
        self
    }

    /// How a channel from [`connect_reconnecting`](ConnectOptions::connect_reconnecting)
    /// retries when its connection is lost (backoff, limits, other addresses, the cast
    /// queue); [`ReconnectPolicy::default`](crate::ReconnectPolicy) when not set.
    pub fn reconnect(mut self, policy: crate::reconnect::ReconnectPolicy) -> ConnectOptions {
        self.reconnect = Some(policy);
        self
    }

    /// Connects as [`connect_with`](ConnectOptions::connect_with) does, and returns a
    /// channel that survives lost connections: it logs in again with `login` and resumes
    /// its session (one is asked for unless [`session`](ConnectOptions::session) chose).
    /// See [`ReconnectingChannel`](crate::ReconnectingChannel).
    ///
    /// # Errors
    /// The first connection's, as [`connect_with`](ConnectOptions::connect_with).
    pub async fn connect_reconnecting(
        &self,
        host: &str,
        port: u16,
        service: &str,
        login: &Login,
        args: Term,
    ) -> Result<crate::ReconnectingChannel, Error> {
        let policy = self.reconnect.clone().unwrap_or_default();
        crate::ReconnectingChannel::connect(self, policy, host, port, service, login, args).await
    }

    /// Connects to `host:port` (a DNS name or an IP address), checks the server's
    /// certificate, and starts `service` with `password` and `args` (lib_chan's `ArgsC`).
    ///
    /// # Errors
    /// - [`Error::Config`]: a CA or pinned file cannot be used, or the name to check is
    ///   neither a DNS name nor an IP address;
    /// - [`Error::Io`]: the TCP connection failed (e.g. refused);
    /// - [`Error::Timeout`]: a phase took longer than its timeout;
    /// - [`Error::Tls`]: the certificate was refused (the message says why);
    /// - [`Error::AuthFailed`], [`Error::Busy`], [`Error::Refused`]: the server said no;
    /// - [`Error::Protocol`]: the server's answer was not a lib_chan handshake answer;
    /// - [`Error::Encode`]: the `start_service` frame would exceed 4 KiB (`args` too big).
    pub async fn connect(
        self,
        host: &str,
        port: u16,
        service: &str,
        password: impl AsRef<[u8]>,
        args: Term,
    ) -> Result<Channel, Error> {
        let login = Login::service_password(password);
        crate::handshake::connect(&self, host, port, service, &login, args).await
    }

    /// As [`connect`](Self::connect), logging in with `login`: the service password, or
    /// a named user's password, Ed25519 key or client certificate (PROTOCOL.md section
    /// 4.1). A key login first asks for a challenge and signs it.
    ///
    /// ```no_run
    /// use lib_chan_client::{ConnectOptions, Login, Term};
    ///
    /// # async fn demo() -> Result<(), lib_chan_client::Error> {
    /// let login = Login::ed25519_file("alice", "alice.key")?;
    /// let chan = ConnectOptions::new()
    ///     .ca_file("certs/ca.pem")
    ///     .connect_with("localhost", 1234, "nameServer", &login, Term::nil())
    ///     .await?;
    /// assert_eq!(chan.welcome().user.as_deref(), Some("alice"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect); a refused user login is [`Error::LoginFailed`],
    /// which names the user and where the credential came from.
    pub async fn connect_with(
        &self,
        host: &str,
        port: u16,
        service: &str,
        login: &Login,
        args: Term,
    ) -> Result<Channel, Error> {
        crate::handshake::connect(self, host, port, service, login, args).await
    }

    /// The rustls configuration to use, built on first use and then shared.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(config) = &self.custom_tls {
            return Ok(config.clone());
        }
        if let Some(config) = self.built.get() {
            return Ok(config.clone());
        }
        let config = self.trust.client_config()?;
        // Two racing first connects may both build it; either result is fine.
        Ok(self.built.get_or_init(|| config).clone())
    }

    /// How the certificate is checked, for error hints.
    pub(crate) fn trust_kind(&self) -> TrustKind {
        if self.custom_tls.is_some() {
            TrustKind::Custom
        } else {
            self.trust.kind()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_ones() {
        let o = ConnectOptions::new();
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
        assert_eq!(o.handshake_timeout, Duration::from_secs(10));
        assert_eq!(o.rpc_timeout, Duration::from_secs(30));
        assert_eq!(o.keepalive, None);
        let every = Duration::from_millis(200);
        assert_eq!(o.clone().keepalive(every).keepalive, Some(every));
        assert_eq!(o.clone().keepalive(Duration::ZERO).keepalive, None);
        assert_eq!(o.trust_kind(), TrustKind::SystemRoots);
        assert_eq!(o.clone().ca_pem("x").trust_kind(), TrustKind::CaFiles);
        assert_eq!(o.pinned_cert_pem("x").trust_kind(), TrustKind::Pinned);
    }

    #[test]
    fn pin_and_ca_together_is_a_config_error() {
        let o = ConnectOptions::new()
            .pinned_cert_pem("x")
            .ca_file("/nonexistent");
        assert!(matches!(o.client_config(), Err(Error::Config(_))));
    }

    #[test]
    fn debug_does_not_dump_pem_bytes() {
        let o = ConnectOptions::new().ca_pem(vec![b'x'; 500]);
        let s = format!("{o:?}");
        assert!(s.contains("500 bytes"), "{s}");
        assert!(!s.contains("xxxx"), "{s}");
    }
}
