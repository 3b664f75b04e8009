//! The server's TLS configuration: certificate chain and key to a rustls `ServerConfig`.
//!
//! Only the ring crypto provider is used, passed explicitly (a process with two providers
//! compiled in panics on rustls's implicit default). TLS 1.3 only, as PROTOCOL.md asks.
//! A key file readable by group or others is refused, as ssh refuses such keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

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

/// Builds the rustls server configuration from `source`.
///
/// # Errors
/// [`TlsSetupError`] naming the file and what was wrong with it.
pub fn server_config(source: &TlsSource) -> Result<Arc<ServerConfig>, TlsSetupError> {
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
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            what: cert_name,
            message: "holds no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsSetupError::Pem {
        what: key_name,
        message: format!("holds no usable private key: {e}"),
    })?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // TLS 1.3 session resumption: reconnecting clients skip the certificate signature.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // One ticket per connection is enough to resume the next one, and each costs a
    // cache entry.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
