//! Named users (PROTOCOL.md section 4.1): each client its own credential and its own list
//! of services, instead of one password per service that every client shares.
//!
//! A [`UserConfig`] is one `[[user]]` entry: the services the user may start (and those it
//! may only read), up to three credentials (an argon2id password hash, an Ed25519 public
//! key, a pinned client-certificate fingerprint; with `[tls] client_ca`, a certificate
//! under that CA naming the user counts too), and the conditions of its logins (source
//! networks, an expiry time, a switch to disable it). [`Users`] is the table the
//! handshake looks users up in; [`Identity`] is what a handler learns of who logged in.
//!
//! The `[[user]]` TOML entries are read here too (`RawUser`), with the file, line and key
//! of every error, as for the rest of the config.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;

use crate::admission::in_network;
use crate::auth::check_hash_policy;
use crate::config::{parse_network, ConfigError, Doc};

/// How a connection proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// The service's shared password (the book's lib_chan).
    ServicePassword,
    /// A named user's own password.
    Password,
    /// A named user's Ed25519 key, by a signed challenge.
    Ed25519,
    /// A named user's TLS client certificate.
    Certificate,
}

impl CredentialKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [CredentialKind; 4] = [
        CredentialKind::ServicePassword,
        CredentialKind::Password,
        CredentialKind::Ed25519,
        CredentialKind::Certificate,
    ];

    /// The name logs and metrics use: `service_password`, `password`, `ed25519`,
    /// `certificate`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ServicePassword => "service_password",
            CredentialKind::Password => "password",
            CredentialKind::Ed25519 => "ed25519",
            CredentialKind::Certificate => "certificate",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a connection logged in as, as its handler sees it ([`Session::identity`]).
///
/// [`Session::identity`]: crate::Session::identity
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The service password: no user.
    ServicePassword,
    /// A named user.
    User {
        /// The user's name.
        name: String,
        /// The credential it logged in with.
        credential: CredentialKind,
        /// The user may only read this service (`read_only` in its entry): a name server
        /// answers its stores and deletes `{error, Ref, forbidden}`.
        read_only: bool,
    },
}

impl Identity {
    /// The user's name, if a user logged in.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::ServicePassword => None,
            Identity::User { name, .. } => Some(name),
        }
    }

    /// The credential used.
    pub fn credential(&self) -> CredentialKind {
        match self {
            Identity::ServicePassword => CredentialKind::ServicePassword,
            Identity::User { credential, .. } => *credential,
        }
    }

    /// True when the connection may only read (see [`Identity::User::read_only`]).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Identity::User {
                read_only: true,
                ..
            }
        )
    }
}

/// A list of services: some by name, or all of them (`"*"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServiceList {
    /// None.
    #[default]
    None,
    /// `"*"`: every service.
    All,
    /// These, by name.
    Named(Vec<String>),
}

impl ServiceList {
    /// True when `service` is in the list.
    pub fn contains(&self, service: &str) -> bool {
        match self {
            ServiceList::None => false,
            ServiceList::All => true,
            ServiceList::Named(names) => names.iter().any(|n| n == service),
        }
    }

    fn from_names(names: &[String]) -> ServiceList {
        if names.iter().any(|n| n == "*") {
            ServiceList::All
        } else if names.is_empty() {
            ServiceList::None
        } else {
            ServiceList::Named(names.to_vec())
        }
    }
}

/// One `[[user]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// The name it logs in with: 1 to 64 bytes of UTF-8.
    pub name: String,
    /// `services`: what it may start.
    pub services: ServiceList,
    /// `read_only`: of those, the services it may only read (a name server refuses its
    /// stores and deletes).
    pub read_only: ServiceList,
    /// `password`: an argon2id PHC string.
    pub password_hash: Option<String>,
    /// `ed25519`: the 32-byte public key.
    pub ed25519: Option<[u8; 32]>,
    /// `cert_sha256`: the SHA-256 of a client certificate's DER.
    pub cert_sha256: Option<[u8; 32]>,
    /// `from`: the networks it may log in from (`ADDR/PREFIX`); empty means anywhere.
    pub from: Vec<(IpAddr, u8)>,
    /// `expires`: after this time it is refused, and its connections are closed.
    pub expires: Option<SystemTime>,
    /// `disabled`: refused, whatever its credentials.
    pub disabled: bool,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("services", &self.services)
            .field("read_only", &self.read_only)
            .field("password", &self.password_hash.is_some())
            .field("ed25519", &self.ed25519.map(|k| key_fingerprint(&k)))
            .field("cert_sha256", &self.cert_sha256.map(|h| hex(&h)))
            .field("from", &self.from)
            .field("expires", &self.expires)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl UserConfig {
    /// A user with no services and no credential yet, for building a config in code.
    pub fn new(name: &str) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            services: ServiceList::None,
            read_only: ServiceList::None,
            password_hash: None,
            ed25519: None,
            cert_sha256: None,
            from: Vec::new(),
            expires: None,
            disabled: false,
        }
    }

    /// True when a login from `ip` at `now` may be let in at all (not disabled, not
    /// expired, from an allowed network).
    pub fn refusal(&self, ip: IpAddr, now: SystemTime) -> Option<&'static str> {
        if self.disabled {
            return Some("disabled");
        }
        if self.expires.is_some_and(|t| now >= t) {
            return Some("expired");
        }
        let ip = ip.to_canonical();
        if !self.from.is_empty()
            && !self
                .from
                .iter()
                .any(|(net, prefix)| in_network(ip, *net, *prefix))
        {
            return Some("source_not_allowed");
        }
        None
    }

    /// True when the user has some credential of its own (a password, a key or a pinned
    /// certificate).
    pub fn has_credential(&self) -> bool {
        self.password_hash.is_some() || self.ed25519.is_some() || self.cert_sha256.is_some()
    }
}

/// The users of one config generation, by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<UserConfig>>,
}

impl Users {
    /// The table for `users` (names are unique after validation; a later duplicate wins).
    pub fn new(users: &[UserConfig]) -> Users {
        Users {
            by_name: users
                .iter()
                .map(|u| (u.name.clone(), Arc::new(u.clone())))
                .collect(),
        }
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<UserConfig>> {
        self.by_name.get(name)
    }

    /// True when some user pins a certificate (so client certificates are asked for).
    pub fn any_pinned_certificate(&self) -> bool {
        self.by_name.values().any(|u| u.cert_sha256.is_some())
    }

    /// The earliest expiry time after `now`, if any user has one.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.by_name
            .values()
            .filter_map(|u| u.expires)
            .filter(|t| *t > now)
            .min()
    }
}

/// `SHA256:BASE64` of an Ed25519 public key, as OpenSSH prints key fingerprints.
pub fn key_fingerprint(key: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a SHA-256 fingerprint: 64 hex digits, colons allowed between pairs.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || {
        format!("`{text}` is not a SHA-256 fingerprint: 64 hex digits (colons allowed), e.g. from `openssl x509 -in CERT -outform der | sha256sum`")
    };
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Reads an Ed25519 public key: standard base64 of its 32 bytes.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not standard base64: {e} (`lib_chan keygen` prints the key)"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "an Ed25519 public key is 32 bytes, this is {} (`lib_chan keygen` prints the key)",
            bytes.len()
        )
    })
}

/// Reads an RFC 3339 time, e.g. `2027-06-30T00:00:00Z` or `2027-06-30T02:00:00+02:00`.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2027-06-30T00:00:00Z: {e}"))
}

/// Formats a time as RFC 3339 (UTC), for messages.
pub fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// A `[[user]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    name: Spanned<String>,
    #[serde(default)]
    services: Option<Spanned<Vec<String>>>,
    read_only: Option<Spanned<Vec<String>>>,
    password: Option<Spanned<String>>,
    ed25519: Option<Spanned<String>>,
    cert_sha256: Option<Spanned<String>>,
    from: Option<Spanned<Vec<String>>>,
    expires: Option<Spanned<String>>,
    disabled: Option<Spanned<bool>>,
}

impl RawUser {
    /// Checks entry `i` against the services defined and the users before it.
    pub(crate) fn validate(
        &self,
        doc: &Doc<'_>,
        i: usize,
        services: &[&str],
        earlier: &[UserConfig],
        client_ca: bool,
    ) -> Result<UserConfig, ConfigError> {
        let key = |k: &str| format!("user[{i}].{k}");
        let name = self.name.get_ref();
        if name.is_empty() || name.len() > lib_chan_protocol::credential::MAX_USER_NAME {
            return Err(doc.error(
                self.name.span(),
                &key("name"),
                "must be 1 to 64 bytes of UTF-8",
            ));
        }
        if earlier.iter().any(|u| &u.name == name) {
            return Err(doc.error(
                self.name.span(),
                &key("name"),
                &format!("user `{name}` is defined twice"),
            ));
        }
        let list =
            |v: &Option<Spanned<Vec<String>>>, k: &str| -> Result<ServiceList, ConfigError> {
                let Some(v) = v else {
                    return Ok(ServiceList::None);
                };
                if let Some(unknown) = v
                    .get_ref()
                    .iter()
                    .find(|s| *s != "*" && !services.contains(&s.as_str()))
                {
                    return Err(doc.error(
                        v.span(),
                        &key(k),
                        &format!(
                            "unknown service `{unknown}`; services defined: {}",
                            services.join(", ")
                        ),
                    ));
                }
                Ok(ServiceList::from_names(v.get_ref()))
            };
        let user_services = list(&self.services, "services")?;
        if user_services == ServiceList::None {
            return Err(doc.error(
                self.name.span(),
                &key("services"),
                "missing or empty: list the services this user may start, or \"*\" for all",
            ));
        }
        let read_only = list(&self.read_only, "read_only")?;
        if let (Some(v), ServiceList::Named(names)) = (&self.read_only, &read_only) {
            if let Some(s) = names.iter().find(|s| !user_services.contains(s)) {
                return Err(doc.error(
                    v.span(),
                    &key("read_only"),
                    &format!("`{s}` is not among this user's services"),
                ));
            }
        }
        let password_hash = match &self.password {
            Some(p) => {
                check_hash_policy(p.get_ref())
                    .map_err(|e| doc.error(p.span(), &key("password"), &e.config_message()))?;
                Some(p.get_ref().clone())
            }
            None => None,
        };
        let ed25519 = match &self.ed25519 {
            Some(k) => Some(
                parse_public_key(k.get_ref())
                    .map_err(|m| doc.error(k.span(), &key("ed25519"), &m))?,
            ),
            None => None,
        };
        let cert_sha256 = match &self.cert_sha256 {
            Some(c) => Some(
                parse_fingerprint(c.get_ref())
                    .map_err(|m| doc.error(c.span(), &key("cert_sha256"), &m))?,
            ),
            None => None,
        };
        let from = match &self.from {
            Some(f) => f
                .get_ref()
                .iter()
                .map(|n| parse_network(n))
                .collect::<Result<_, _>>()
                .map_err(|m| doc.error(f.span(), &key("from"), &m))?,
            None => Vec::new(),
        };
        let expires = match &self.expires {
            Some(e) => Some(
                parse_time(e.get_ref()).map_err(|m| doc.error(e.span(), &key("expires"), &m))?,
            ),
            None => None,
        };
        let user = UserConfig {
            name: name.clone(),
            services: user_services,
            read_only,
            password_hash,
            ed25519,
            cert_sha256,
            from,
            expires,
            disabled: self.disabled.as_ref().is_some_and(|d| *d.get_ref()),
        };
        if !user.has_credential() && !client_ca {
            return Err(doc.error(
                self.name.span(),
                &key("password"),
                "no credential: give the user a password, an ed25519 key or a cert_sha256 \
                 (or set [tls] client_ca, under which a certificate naming the user logs it in)",
            ));
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_keys_and_times_parse_or_say_why_not() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abc")
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_public_key(&key).unwrap(), [7; 32]);
        assert!(parse_public_key("AAAA").unwrap_err().contains("32 bytes"));
        assert!(parse_public_key("not base64!").is_err());
        let t = parse_time("2027-06-30T00:00:00Z").unwrap();
        assert_eq!(parse_time("2027-06-30T02:00:00+02:00").unwrap(), t);
        assert_eq!(format_time(t), "2027-06-30T00:00:00Z");
        assert!(parse_time("2027-06-30").is_err());
    }

    #[test]
    fn refusals_cover_disabled_expired_and_source() {
        let mut u = UserConfig::new("alice");
        let now = SystemTime::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(u.refusal(ip, now), None);
        u.from = vec![("192.168.0.0".parse().unwrap(), 16)];
        assert_eq!(u.refusal(ip, now), Some("source_not_allowed"));
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let mapped: IpAddr = "::ffff:192.168.4.5".parse().unwrap();
        assert_eq!(u.refusal(mapped, now), None);
        u.expires = Some(now - std::time::Duration::from_secs(1));
        assert_eq!(u.refusal(mapped, now), Some("expired"));
        u.disabled = true;
        assert_eq!(u.refusal(mapped, now), Some("disabled"));
    }

    #[test]
    fn service_lists_know_star() {
        assert!(ServiceList::from_names(&["*".into()]).contains("x"));
        let l = ServiceList::from_names(&["a".into()]);
        assert!(l.contains("a") && !l.contains("b"));
        assert!(!ServiceList::from_names(&[]).contains("a"));
    }
}
