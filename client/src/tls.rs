//! TLS for the client: the rustls configuration, certificate pinning, and handshake
//! errors turned into messages that say what to check.
//!
//! The configuration always uses the ring provider explicitly
//! (`ClientConfig::builder_with_provider`), never the process-wide default: when two
//! providers are compiled into one program, `ClientConfig::builder()` panics. TLS 1.3 and
//! 1.2 are offered, nothing older (PROTOCOL.md section 1).
//!
//! The server's certificate is checked against one of:
//! - CA certificates from files or PEM bytes ([`ConnectOptions::ca_file`]);
//! - the system's trust store, through rustls-native-certs (the default);
//! - one pinned certificate ([`ConnectOptions::pinned_cert_file`]): [`PinnedVerifier`]
//!   accepts exactly that end-entity certificate, byte for byte, still checks that it is
//!   valid for the name dialled (PROTOCOL.md section 1), and verifies the handshake
//!   signatures with the ring provider's algorithms, so the server must hold its key.
//!
//! [`ConnectOptions::ca_file`]: crate::ConnectOptions::ca_file
//! [`ConnectOptions::pinned_cert_file`]: crate::ConnectOptions::pinned_cert_file

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::error::Error;

/// The crypto provider every configuration uses: ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where certificates come from: a PEM file, or PEM bytes already in memory.
#[derive(Clone)]
pub(crate) enum CertSource {
    /// A PEM file that may hold several certificates.
    File(PathBuf),
    /// PEM text.
    Pem(Vec<u8>),
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertSource::File(p) => write!(f, "File({})", p.display()),
            CertSource::Pem(b) => write!(f, "Pem({} bytes)", b.len()),
        }
    }
}

impl CertSource {
    /// Names the source in error messages, e.g. "CA file /etc/ca.pem".
    fn describe(&self, what: &str) -> String {
        match self {
            CertSource::File(p) => format!("{what} file {}", p.display()),
            CertSource::Pem(_) => format!("{what} PEM"),
        }
    }

    /// Every certificate in the source; at least one.
    fn load(&self, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
        let bad = |e: &dyn fmt::Display| Error::Config(format!("{}: {e}", self.describe(what)));
        let certs: Result<Vec<_>, _> = match self {
            CertSource::File(path) => CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect(),
            CertSource::Pem(pem) => CertificateDer::pem_slice_iter(pem).collect(),
        };
        let certs = certs.map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        Ok(certs)
    }
}

/// How the server's certificate is checked, for error hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustKind {
    /// CA certificates given by the caller, with or without the system roots.
    CaFiles,
    /// The system's trust store only.
    SystemRoots,
    /// One pinned certificate.
    Pinned,
    /// A `rustls::ClientConfig` given by the caller.
    Custom,
}

/// What to trust, as collected by [`ConnectOptions`](crate::ConnectOptions).
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    /// CA certificates to trust.
    pub(crate) cas: Vec<CertSource>,
    /// Also trust the system's roots (implied when nothing else is set).
    pub(crate) system_roots: bool,
    /// Trust this certificate only.
    pub(crate) pinned: Option<CertSource>,
    /// The client certificate chain and its key (PEM), presented when the server asks.
    pub(crate) client_cert: Option<(CertSource, CertSource)>,
}

impl Trust {
    /// Which kind of checking this amounts to.
    pub(crate) fn kind(&self) -> TrustKind {
        if self.pinned.is_some() {
            TrustKind::Pinned
        } else if !self.cas.is_empty() {
            TrustKind::CaFiles
        } else {
            TrustKind::SystemRoots
        }
    }

    /// Builds the rustls configuration: reads the files now.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
        let config = if let Some(pinned) = &self.pinned {
            if !self.cas.is_empty() || self.system_roots {
                return Err(Error::Config(
                    "a pinned certificate cannot be combined with CA certificates or the \
                     system roots: choose one"
                        .into(),
                ));
            }
            // The first certificate is the server's own (a chain file lists it first).
            let cert = pinned.load("pinned certificate")?.swap_remove(0);
            let verifier = PinnedVerifier {
                pinned: cert,
                algorithms: provider.signature_verification_algorithms,
            };
            let builder = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier));
            self.with_client_cert(builder)?
        } else {
            self.with_client_cert(builder.with_root_certificates(self.roots()?))?
        };
        Ok(Arc::new(config))
    }

    /// Finishes the configuration with the client certificate, or without one.
    fn with_client_cert(
        &self,
        builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    ) -> Result<ClientConfig, Error> {
        let Some((cert, key)) = &self.client_cert else {
            return Ok(builder.with_no_client_auth());
        };
        let chain = cert.load("client certificate")?;
        let key_what = key.describe("client key");
        let pem = match key {
            CertSource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| Error::Config(format!("{key_what}: {e}")))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(Error::Config(format!(
                        "{key_what} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {}`",
                        path.display()
                    )));
                }
                std::fs::read(path).map_err(|e| Error::Config(format!("{key_what}: {e}")))?
            }
            CertSource::Pem(pem) => pem.clone(),
        };
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| Error::Config(format!("{key_what}: no usable private key: {e}")))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Config(format!("{key_what}: {e}")))
    }

    /// The CA certificates, plus the system's when asked for or when no CA was given.
    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        for source in &self.cas {
            for cert in source.load("CA")? {
                roots.add(cert).map_err(|e| {
                    Error::Config(format!(
                        "{}: not a usable CA certificate: {e}",
                        source.describe("CA")
                    ))
                })?;
            }
        }
        if self.system_roots || self.cas.is_empty() {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(Error::Config(format!(
                    "no system root certificates could be loaded{why}; pass the CA that \
                     signed the server's certificate (--ca) or pin the certificate"
                )));
            }
        }
        Ok(roots)
    }
}

/// A server certificate that is not the pinned one.
#[derive(Debug)]
struct NotPinned;

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server's certificate is not the pinned certificate")
    }
}

impl std::error::Error for NotPinned {}

/// Accepts exactly one end-entity certificate, compared byte for byte (DER).
///
/// No CA is involved and the validity period is not checked: the pin *is* the trust
/// decision. The name dialled (or set with `server_name`) must still be one the
/// certificate holds, and the handshake signatures are verified as usual, which proves
/// the server holds the certificate's private key.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.pinned.as_ref() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotPinned)),
            )));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Turns a failed TLS handshake with `addr` into an [`Error`] with a hint.
///
/// tokio-rustls reports rustls errors as an `io::Error` wrapping a `rustls::Error`; those
/// become [`Error::Tls`]. Anything else (a reset, an early end of stream) is
/// [`Error::Io`].
pub(crate) fn handshake_error(addr: &str, name: &str, trust: TrustKind, e: io::Error) -> Error {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
    else {
        return Error::io(format!("TLS handshake with {addr}"), e);
    };
    let message = match &tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.downcast_ref::<NotPinned>().is_some() =>
        {
            format!(
                "TLS handshake with {addr} failed: the server's certificate is not the \
                 pinned certificate (did the server get a new certificate? pin that one)"
            )
        }
        _ => format!(
            "TLS handshake with {addr} failed: {tls}{}",
            hint(&tls, name, trust)
        ),
    };
    Error::Tls {
        message,
        error: tls,
    }
}

/// A parenthesised hint for a rustls error, or nothing.
fn hint(e: &rustls::Error, name: &str, trust: TrustKind) -> String {
    use CertificateError as C;
    match e {
        // BadSignature: a CA of the same name signed it, e.g. another development CA.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => match trust {
            TrustKind::CaFiles => {
                " (is --ca the CA that signed the server's certificate?)".to_string()
            }
            TrustKind::SystemRoots => " (the server's certificate is not signed by a CA in \
                 the system trust store; pass the CA that signed it with --ca)"
                .to_string(),
            _ => String::new(),
        },
        // The context variant already names what was expected and what the certificate holds.
        rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            " (dial a name it holds, or set the name to check with --servername)".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName) => format!(
            " (the certificate is not valid for {name:?}; dial a name it holds, or set the \
             name to check with --servername)"
        ),
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => " (check the clocks, or renew the server's certificate)".to_string(),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            " (is it a lib_chan TLS server?)".to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_a_config_error_naming_the_file() {
        let trust = Trust {
            cas: vec![CertSource::File("/nonexistent/ca.pem".into())],
            ..Trust::default()
        };
        match trust.client_config() {
            Err(Error::Config(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pem_without_certificates_is_a_config_error() {
        let trust = Trust {
            cas: vec![CertSource::Pem(b"not a certificate".to_vec())],
            ..Trust::default()
        };
        match trust.client_config() {
            Err(Error::Config(m)) => assert!(m.contains("no PEM certificate"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_issuer_hint_depends_on_what_was_trusted() {
        let e = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            )
        };
        let m = handshake_error("127.0.0.1:1234", "127.0.0.1", TrustKind::CaFiles, e()).to_string();
        assert_eq!(
            m,
            "TLS handshake with 127.0.0.1:1234 failed: invalid peer certificate: UnknownIssuer \
             (is --ca the CA that signed the server's certificate?)"
        );
        let m = handshake_error("h:1", "h", TrustKind::SystemRoots, e()).to_string();
        assert!(m.contains("system trust store"), "{m}");
        let m = handshake_error(
            "h:1",
            "h",
            TrustKind::CaFiles,
            io::ErrorKind::UnexpectedEof.into(),
        );
        assert!(matches!(m, Error::Io { .. }), "{m:?}");
    }
}
