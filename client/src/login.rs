//! How the client logs in (PROTOCOL.md section 4): the service password of the book's
//! lib_chan, or a named user's password, Ed25519 key or TLS client certificate.
//!
//! A [`Login`] also remembers where its credential came from (an environment variable, a
//! key file, a password file's line), so that a refused login can say so without ever
//! showing the credential. [`Ed25519Key`] reads and writes PKCS#8 PEM key files (the
//! format of `lib_chan keygen` and `openssl genpkey -algorithm ed25519`) and signs the
//! challenge of section 4.2.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::error::Error;

/// The DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 private key, for key logins.
pub struct Ed25519Key {
    pair: Ed25519KeyPair,
    /// The seed, when known (generated here or read from a PKCS#8 file), for writing it.
    seed: Option<[u8; 32]>,
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("public", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl Ed25519Key {
    /// A new random key.
    ///
    /// # Errors
    /// [`Error::Config`] when the system's random generator fails.
    pub fn generate() -> Result<Ed25519Key, Error> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        Ok(Ed25519Key::from_seed(&seed))
    }

    /// The key of a 32-byte seed (what Erlang's `crypto` calls the private key).
    pub fn from_seed(seed: &[u8; 32]) -> Ed25519Key {
        Ed25519Key {
            pair: Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed"),
            seed: Some(*seed),
        }
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`Error::Config`] when it is not an Ed25519 PKCS#8 key; `what` names it.
    pub fn from_pkcs8_pem(pem: &[u8], what: &str) -> Result<Ed25519Key, Error> {
        let bad = |m: &dyn fmt::Display| Error::Config(format!("{what}: {m}"));
        let der = match PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(&e))? {
            PrivateKeyDer::Pkcs8(der) => der,
            _ => return Err(bad(&"not a PKCS#8 private key (BEGIN PRIVATE KEY)")),
        };
        let bytes = der.secret_pkcs8_der();
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
            .map_err(|e| bad(&format!("not an Ed25519 private key ({e})")))?;
        let seed = (bytes.len() >= 48 && bytes[..16] == PKCS8_V1_PREFIX[..])
            .then(|| <[u8; 32]>::try_from(&bytes[16..48]).ok())
            .flatten();
        Ok(Ed25519Key { pair, seed })
    }

    /// Reads a PKCS#8 PEM key file, refusing one that group or others may read (as ssh
    /// refuses such keys).
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Ed25519Key, Error> {
        use std::os::unix::fs::PermissionsExt;
        let what = format!("key file {}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| Error::Config(format!("{what}: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{what} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        let pem = std::fs::read(path).map_err(|e| Error::Config(format!("{what}: {e}")))?;
        Ed25519Key::from_pkcs8_pem(&pem, &what)
    }

    /// The key as PKCS#8 (v1) PEM, as `openssl genpkey -algorithm ed25519` writes it;
    /// `None` for a key whose seed is not known.
    pub fn to_pkcs8_pem(&self) -> Option<String> {
        let seed = self.seed?;
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        Some(format!(
            "-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"
        ))
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The public key in standard base64, as a `[[user]]` entry's `ed25519` key holds it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// The credential a connection logs in with, and where it came from.
#[derive(Clone)]
pub struct Login {
    pub(crate) kind: LoginKind,
    source: Option<String>,
}

#[derive(Clone)]
pub(crate) enum LoginKind {
    ServicePassword(Vec<u8>),
    UserPassword { user: String, password: Vec<u8> },
    Key { user: String, key: Arc<Ed25519Key> },
    Certificate { user: String },
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("kind", &self.kind_name())
            .field("user", &self.user())
            .field("source", &self.source)
            .finish()
    }
}

impl Login {
    fn new(kind: LoginKind) -> Login {
        Login { kind, source: None }
    }

    /// The service's password, shared by every client (the book's lib_chan).
    pub fn service_password(password: impl AsRef<[u8]>) -> Login {
        Login::new(LoginKind::ServicePassword(password.as_ref().to_vec()))
    }

    /// A named user's own password.
    pub fn user_password(user: impl Into<String>, password: impl AsRef<[u8]>) -> Login {
        Login::new(LoginKind::UserPassword {
            user: user.into(),
            password: password.as_ref().to_vec(),
        })
    }

    /// A named user's Ed25519 key: the client asks for a challenge and signs it, bound to
    /// this TLS connection's server certificate, so the login cannot be relayed.
    pub fn ed25519(user: impl Into<String>, key: Ed25519Key) -> Login {
        Login::new(LoginKind::Key {
            user: user.into(),
            key: Arc::new(key),
        })
        .source_if_none("an Ed25519 key")
    }

    /// A named user's key read from a PKCS#8 PEM file (see [`Ed25519Key::from_file`]).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be used.
    pub fn ed25519_file(user: impl Into<String>, path: impl AsRef<Path>) -> Result<Login, Error> {
        let path = path.as_ref();
        Ok(Login::ed25519(user, Ed25519Key::from_file(path)?)
            .from_source(format!("key file {}", path.display())))
    }

    /// A named user's TLS client certificate, which the connection presents (set it
    /// with [`ConnectOptions::client_cert_files`](crate::ConnectOptions::client_cert_files)).
    pub fn certificate(user: impl Into<String>) -> Login {
        Login::new(LoginKind::Certificate { user: user.into() })
            .source_if_none("the client certificate")
    }

    /// Says where the credential came from (e.g. `LIB_CHAN_PASSWORD`, `key file
    /// ~/.lib_chan/alice.key`), for the error of a refused login. Never the credential.
    pub fn from_source(mut self, source: impl Into<String>) -> Login {
        self.source = Some(source.into());
        self
    }

    fn source_if_none(mut self, source: &str) -> Login {
        self.source.get_or_insert_with(|| source.to_owned());
        self
    }

    /// Where the credential came from, when known.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The user, for a named user's login.
    pub fn user(&self) -> Option<&str> {
        match &self.kind {
            LoginKind::ServicePassword(_) => None,
            LoginKind::UserPassword { user, .. }
            | LoginKind::Key { user, .. }
            | LoginKind::Certificate { user } => Some(user),
        }
    }

    /// `service password`, `password`, `ed25519 key` or `certificate`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            LoginKind::ServicePassword(_) => "service password",
            LoginKind::UserPassword { .. } => "password",
            LoginKind::Key { .. } => "ed25519 key",
            LoginKind::Certificate { .. } => "certificate",
        }
    }

    /// The error for a refused login: it names the user, the kind and the source.
    pub(crate) fn refused(&self) -> Error {
        match self.user() {
            None => Error::AuthFailed,
            Some(user) => Error::LoginFailed {
                user: user.to_owned(),
                credential: self.kind_name(),
                origin: self.source.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pkcs8_pem_and_sign() {
        let key = Ed25519Key::generate().unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = Ed25519Key::from_pkcs8_pem(pem.as_bytes(), "test").unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.to_pkcs8_pem().unwrap(), pem);
        let sig = key.sign(b"hello");
        assert_eq!(sig.len(), 64);
        let public =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key());
        assert!(public.verify(b"hello", &sig).is_ok());
        assert!(public.verify(b"hellp", &sig).is_err());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn an_openssl_key_reads() {
        // `openssl genpkey -algorithm ed25519`, the RFC 8410 example key.
        let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = Ed25519Key::from_pkcs8_pem(pem, "test").unwrap();
        assert_eq!(
            key.public_key_base64(),
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
        );
        assert!(Ed25519Key::from_pkcs8_pem(b"garbage", "k")
            .unwrap_err()
            .to_string()
            .contains("k:"));
    }

    #[test]
    fn a_refused_login_names_its_source_not_its_secret() {
        let e = Login::user_password("alice", "hunter2")
            .from_source("LIB_CHAN_PASSWORD")
            .refused();
        let shown = e.to_string();
        assert!(
            shown.contains("alice") && shown.contains("LIB_CHAN_PASSWORD"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"));
        assert!(!format!("{:?}", Login::service_password("hunter2")).contains("hunter2"));
        assert!(matches!(
            Login::service_password("x").refused(),
            Error::AuthFailed
        ));
    }
}
