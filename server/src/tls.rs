//! The server's TLS configuration: certificate chain and key to a rustls `ServerConfig`.
//!
//! Only the ring crypto provider is used, passed explicitly (a process with two providers
//! compiled in panics on rustls's implicit default). TLS 1.3 only, as PROTOCOL.md asks.
//! A key file readable by group or others is refused, as ssh refuses such keys.
//!
//! Client certificates (PROTOCOL.md section 1) authenticate nothing by themselves: when the
//! config has a `[tls] client_ca` or a user with a pinned `cert_sha256`, the server asks
//! for one ([`AnyClientCert`]), admits clients that send none, and accepts any certificate
//! whose key signs the handshake; which user, if any, it names is decided at
//! `start_service` against the live config (the login module), with the client CA's
//! verifier ([`ClientCa`]) for certificates that are not pinned.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::config::{ClientCaSource, TlsSource};

/// The certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A key file that others may read.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No certificate, or no key, in the PEM text.
    #[error("{what}: {message}")]
    Pem {
        /// The file, or `certificate`/`key` for text in memory.
        what: String,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSetupError {
    /// True when the error is about the file at `path` (as opposed to the other file
    /// of the pair, or the pair as a whole).
    pub fn concerns(&self, path: &Path) -> bool {
        match self {
            TlsSetupError::Read { path: p, .. } | TlsSetupError::KeyTooOpen { path: p, .. } => {
                p == path
            }
            TlsSetupError::Pem { what, .. } => Path::new(what) == path,
            TlsSetupError::Rustls(_) => false,
        }
    }
}

/// TLS sessions remembered for resumption.
const SESSION_CACHE: usize = 16_384;

/// The crypto provider lib_chan uses everywhere.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's provider: ring's, with TLS13_AES_128_GCM_SHA256 first. Most clients
/// (rustls, OpenSSL, Erlang's ssl) prefer AES-256-GCM-SHA384, whose SHA-384 key schedule
/// has no hardware help on x86-64, where SHA-256 has it (SHA-NI) and AES-128 takes fewer
/// rounds; both are TLS 1.3's own suites. A full handshake's server CPU measured in
/// bench/compare.sh's connect rows. The other suites stay, after it, in ring's order.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let first = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != first.suite());
    Arc::new(provider)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        error: source,
    })
}

/// Refuses a key file whose mode lets group or others read it.
///
/// # Errors
/// [`TlsSetupError::KeyTooOpen`] or [`TlsSetupError::Read`].
pub fn check_key_mode(path: &Path) -> Result<(), TlsSetupError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        error: source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsSetupError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The server's TLS setup: the rustls configuration and the SHA-256 of its end-entity
/// certificate (what a key login signs, PROTOCOL.md section 4.2).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the DER of the first certificate of the chain.
    pub cert_hash: [u8; 32],
    /// The DER of that certificate.
    pub leaf: Vec<u8>,
}

/// Builds the rustls server configuration from `source`; with `client_auth`, client
/// certificates are asked for (never required).
///
/// # Errors
/// [`TlsSetupError`] naming the file and what was wrong with it.
pub fn server_config(
    source: &TlsSource,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerTls, TlsSetupError> {
    let (cert_pem, key_pem, cert_name, key_name) = match source {
        TlsSource::Files { cert, key } => {
            check_key_mode(key)?;
            (
                read(cert)?,
                read(key)?,
                cert.display().to_string(),
                key.display().to_string(),
            )
        }
        TlsSource::Pem { cert, key } => (
            cert.as_bytes().to_vec(),
            key.as_bytes().to_vec(),
            "certificate".to_owned(),
            "key".to_owned(),
        ),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Pem {
            what: cert_name.clone(),
            message: format!("not a PEM certificate chain: {e}"),
        })?;
    let Some(leaf) = certs.first() else {
        return Err(TlsSetupError::Pem {
            what: cert_name,
            message: "holds no certificate".into(),
        });
    };
    let cert_hash = sha256(leaf);
    let leaf = leaf.to_vec();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsSetupError::Pem {
        what: key_name,
        message: format!("holds no usable private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // TLS 1.3 session resumption: reconnecting clients skip the certificate signature.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // One ticket per connection is enough to resume the next one, and each costs a
    // cache entry.
    config.send_tls13_tickets = 1;
    // The server's order of cipher suites, not the client's (see `server_provider`).
    config.ignore_client_order = true;
    Ok(ServerTls {
        config: Arc::new(config),
        cert_hash,
        leaf,
    })
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The client CA of `[tls] client_ca`: the verifier of certificate chains under it, and
/// the digest of its PEM (so a reload can tell whether it changed).
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of the PEM text.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa").finish_non_exhaustive()
    }
}

impl ClientCa {
    /// True when `chain` (end entity first) is a valid client certificate chain under
    /// this CA, now.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        match chain.split_first() {
            Some((leaf, rest)) => self
                .verifier
                .verify_client_cert(leaf, rest, UnixTime::now())
                .is_ok(),
            None => false,
        }
    }
}

/// Reads the client CA.
///
/// # Errors
/// [`TlsSetupError`] when the file cannot be read or holds no usable CA certificate.
pub fn client_ca(source: &ClientCaSource) -> Result<ClientCa, TlsSetupError> {
    let (pem, what) = match source {
        ClientCaSource::File(path) => (read(path)?, path.display().to_string()),
        ClientCaSource::Pem(text) => (text.as_bytes().to_vec(), "client CA".to_owned()),
    };
    let bad = |message: String| TlsSetupError::Pem {
        what: what.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(format!("cannot verify client certificates with it: {e}")))?;
    Ok(ClientCa {
        verifier,
        digest: sha256(&pem),
    })
}

/// Asks every client for a certificate, admits those that send none, and accepts any
/// certificate whose private key signs the handshake: possession of the key is all TLS
/// proves here; the login decides what the certificate is worth.
#[derive(Debug)]
pub struct AnyClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AnyClientCert {
    /// The verifier, on lib_chan's crypto provider.
    pub fn verifier() -> Arc<dyn ClientCertVerifier> {
        Arc::new(AnyClientCert {
            provider: crypto_provider(),
        })
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client with a self-signed (pinned) certificate must still send it,
        // and some clients (Erlang's ssl) send none that the hints do not cover.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
