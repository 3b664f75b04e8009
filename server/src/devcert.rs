//! Development certificates: a private CA and a server certificate signed by it.
//!
//! `lib_chan gen-cert` and the default `lib_chan serve` use this, and so do the tests.
//! A CA plus a leaf is what both rustls and Erlang's `ssl` accept (a lone self-signed
//! leaf is rejected by Erlang as `selfsigned_peer`, and a CA used as the server
//! certificate is rejected by rustls as `CaUsedAsEndEntity`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate signed by it, all in PEM.
#[derive(Clone)]
pub struct DevCerts {
    /// The CA certificate, which clients trust.
    pub ca_pem: String,
    /// The CA's private key, kept to sign more server certificates later.
    pub ca_key_pem: String,
    /// The server certificate chain (leaf, then CA).
    pub server_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
}

impl std::fmt::Debug for DevCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCerts").finish_non_exhaustive()
    }
}

/// A client certificate for a named user, from [`DevCerts::client_cert`].
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER: a `[[user]]` entry's `cert_sha256`.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("sha256", &crate::users::hex(&self.sha256))
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Writes `NAME.pem` and `NAME.key` (mode 0600) into `dir`; returns their paths.
    ///
    /// # Errors
    /// [`DevCertError::Write`] naming the file that could not be written.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), DevCertError> {
        fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
            path: dir.to_owned(),
            error: source,
        })?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &self.cert_pem, 0o644)?;
        write_file(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

/// Paths of the files [`DevCerts::write`] makes in a directory.
#[derive(Debug, Clone)]
pub struct DevCertPaths {
    /// `DIR/ca.pem`.
    pub ca: PathBuf,
    /// `DIR/ca.key` (mode 0600).
    pub ca_key: PathBuf,
    /// `DIR/server.pem`.
    pub cert: PathBuf,
    /// `DIR/server.key` (mode 0600).
    pub key: PathBuf,
}

impl DevCertPaths {
    /// The paths in `dir`.
    pub fn in_dir(dir: &Path) -> DevCertPaths {
        DevCertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// True when every file is there.
    pub fn all_exist(&self) -> bool {
        [&self.ca, &self.ca_key, &self.cert, &self.key]
            .iter()
            .all(|p| p.exists())
    }
}

/// A failure to make or write certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// rcgen refused.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl DevCerts {
    /// Makes a new CA and a server certificate for `hosts` (DNS names or IP addresses).
    ///
    /// # Errors
    /// [`DevCertError::Generate`] when a host is neither a DNS name nor an IP address.
    pub fn generate(hosts: &[String]) -> Result<DevCerts, DevCertError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        // A name of its own, so that a client trusting another development CA is told
        // UnknownIssuer rather than a confusing BadSignature.
        let serial: String = ca_key
            .public_key_raw()
            .iter()
            .rev()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(
            DnType::CommonName,
            format!("lib_chan development CA {serial}"),
        );
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        ca_params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().map(String::as_str).unwrap_or("lib_chan"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let server_cert = params.signed_by(&server_key, &issuer)?;

        Ok(DevCerts {
            ca_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            server_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// Makes a client certificate for the user `name` (its subject common name and a DNS
    /// name, as `[tls] client_ca` maps certificates to users), signed by the CA of
    /// `ca_pem` and `ca_key_pem` (e.g. `ca.pem` and `ca.key` of [`DevCerts::write`]).
    ///
    /// # Errors
    /// [`DevCertError::Generate`] when the CA pair cannot be read or used.
    pub fn client_cert(
        ca_pem: &str,
        ca_key_pem: &str,
        name: &str,
    ) -> Result<ClientCert, DevCertError> {
        let ca_key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
        let key = KeyPair::generate()?;
        // A DNS name only where rcgen accepts the user name as one.
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .or_else(|_| CertificateParams::new(Vec::<String>::new()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ClientCert {
            sha256: crate::tls::sha256(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the four files into `dir` (created if needed); key files get mode 0600.
    ///
    /// # Errors
    /// [`DevCertError::Write`] naming the file that could not be written.
    pub fn write(&self, dir: &Path) -> Result<DevCertPaths, DevCertError> {
        let paths = DevCertPaths::in_dir(dir);
        fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
            path: dir.to_owned(),
            error: source,
        })?;
        write_file(&paths.ca, &self.ca_pem, 0o644)?;
        write_file(&paths.ca_key, &self.ca_key_pem, 0o600)?;
        write_file(&paths.cert, &self.server_pem, 0o644)?;
        write_file(&paths.key, &self.server_key_pem, 0o600)?;
        Ok(paths)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), DevCertError> {
    let err = |source| DevCertError::Write {
        path: path.to_owned(),
        error: source,
    };
    // Remove first so that an existing file's looser mode does not survive.
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_ca_and_a_leaf_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("lib_chan_devcert_{}", std::process::id()));
        let certs = DevCerts::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let paths = certs.write(&dir).unwrap();
        assert!(paths.all_exist());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.key), 0o600);
        assert_eq!(mode(&paths.ca_key), 0o600);
        // The chain holds the leaf and the CA.
        assert_eq!(certs.server_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_ne!(certs.ca_pem, certs.server_pem);
        fs::remove_dir_all(&dir).unwrap();
    }
}
