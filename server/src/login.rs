//! Login: a `start_service` credential decided against the live configuration
//! (PROTOCOL.md section 4), and the same rules re-applied to open connections when the
//! configuration changes or a user expires.
//!
//! # Uniform refusals
//! Every refusal is the same `{error, auth_failed}` to the client, and costs the work of
//! the credential kind the client *claimed*, whatever made it fail: a password login
//! always runs argon2 (against a dummy hash for an unknown user or service), a key login
//! always verifies a signature (against a dummy key for an unknown user, over a zero
//! nonce when no challenge was issued), a certificate login always hashes the
//! certificate and, with a client CA, verifies its chain. Only once the credential is
//! decided are the cheap conditions looked at (disabled, expired, source network,
//! service allowed). The precise reason goes to the audit log only.
//!
//! The verified-password cache is keyed by user *and* service, so a password that was
//! right for one service is not answered faster for a service the user may not start.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use lib_chan_protocol::credential::{
    challenge_message, Credential, Proof, NONCE_LEN, SIGNATURE_LEN,
};
use ring::signature::{KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::CertificateDer;

use crate::audit::Refusal;
use crate::auth::CheckOutcome;
use crate::server::{ServerState, ServiceEntry};
use crate::tls::{sha256, ClientCa};
use crate::users::{hex, key_fingerprint, CredentialKind, Identity, UserConfig, Users};

/// What TLS told about the connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2` (each with ` resumed` when the TLS session was resumed), or
    /// `none` for a stream without TLS (tests, fuzzing).
    pub(crate) version: &'static str,
    /// The client's certificate chain, end entity first; empty when it sent none.
    pub(crate) peer_certs: Vec<CertificateDer<'static>>,
}

/// One `start_service` to decide.
pub(crate) struct Attempt<'a> {
    pub(crate) service: &'a str,
    pub(crate) credential: Credential,
    /// The nonce of the last `challenge` on this connection, if any.
    pub(crate) nonce: Option<[u8; NONCE_LEN]>,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: &'a TlsInfo,
}

/// What a login rested on. A reload that no longer grants it revokes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// The service password (reloads handle it through the service entry).
    ServicePassword,
    /// The user's password, by the SHA-256 of its PHC string (32 bytes per connection
    /// rather than a copy of the string).
    Password([u8; 32]),
    /// The user's public key.
    Key([u8; 32]),
    /// A certificate pinned by the user's `cert_sha256`.
    PinnedCert([u8; 32]),
    /// A certificate under the client CA with this digest.
    CaCert([u8; 32]),
}

/// A login let in.
pub(crate) struct Accepted {
    pub(crate) entry: Arc<ServiceEntry>,
    pub(crate) identity: Identity,
    pub(crate) binding: Binding,
}

/// How a login ended.
pub(crate) enum Verdict {
    Accepted(Accepted),
    Refused(Refusal),
    /// Every password-check slot is taken.
    Busy,
}

/// The decision, with what the audit log shows of the credential: the key's or the
/// certificate's fingerprint, when there is one.
pub(crate) struct Decision {
    pub(crate) verdict: Verdict,
    pub(crate) fingerprint: Option<String>,
}

/// A public key no one holds the private half of, verified against when a key login
/// names an unknown user (or one without a key), so that it costs a real verification.
fn dummy_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut seed = [0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("any 32 bytes are an Ed25519 seed");
        let mut key = [0u8; 32];
        key.copy_from_slice(pair.public_key().as_ref());
        key
    })
}

/// Decides one login. Never returns early on a cheap check: see the module docs.
pub(crate) async fn decide(state: &ServerState, attempt: Attempt<'_>) -> Decision {
    let entry = state.services.get(attempt.service).cloned();
    let Attempt {
        service,
        credential,
        nonce,
        peer,
        tls,
    } = attempt;
    match credential {
        Credential::ServicePassword(password) => {
            let phc = entry
                .as_ref()
                .and_then(|e| e.config.password_hash.as_deref());
            let outcome = state.checker.check(service, phc, password.0).await;
            let verdict = match (outcome, entry) {
                (CheckOutcome::Busy, _) => Verdict::Busy,
                (CheckOutcome::Valid, Some(entry)) => Verdict::Accepted(Accepted {
                    entry,
                    identity: Identity::ServicePassword,
                    binding: Binding::ServicePassword,
                }),
                (_, None) => Verdict::Refused(Refusal::UnknownService),
                (_, Some(e)) if e.config.password_hash.is_none() => {
                    Verdict::Refused(Refusal::ServiceNeedsUser)
                }
                (_, Some(_)) => Verdict::Refused(Refusal::WrongPassword),
            };
            Decision {
                verdict,
                fingerprint: None,
            }
        }
        Credential::User { name, proof } => {
            let user = state.users.get(&name).cloned();
            let (proven, kind, fingerprint) = match proof {
                Proof::Password(password) => {
                    let phc = user.as_ref().and_then(|u| u.password_hash.as_deref());
                    // Keyed by user and service: see the module docs.
                    let cache_key = format!("user\0{name}\0{service}");
                    let outcome = state.checker.check(&cache_key, phc, password.0).await;
                    let proven = match (outcome, phc) {
                        (CheckOutcome::Busy, _) => {
                            return Decision {
                                verdict: Verdict::Busy,
                                fingerprint: None,
                            }
                        }
                        (CheckOutcome::Valid, Some(phc)) => {
                            Ok(Binding::Password(sha256(phc.as_bytes())))
                        }
                        (_, None) if user.is_none() => Err(Refusal::UnknownUser),
                        (_, None) => Err(Refusal::NoSuchCredential),
                        (_, Some(_)) => Err(Refusal::WrongPassword),
                    };
                    (proven, CredentialKind::Password, None)
                }
                Proof::Ed25519(signature) => {
                    let key = user.as_ref().and_then(|u| u.ed25519);
                    let proven = verify_key(
                        key.as_ref(),
                        user.is_some(),
                        nonce.as_ref(),
                        &state.cert_hash,
                        &name,
                        service,
                        &signature,
                    );
                    (
                        proven,
                        CredentialKind::Ed25519,
                        key.map(|k| key_fingerprint(&k)),
                    )
                }
                Proof::Certificate => {
                    let (proven, fp) = verify_certificate(
                        user.as_deref(),
                        &name,
                        &tls.peer_certs,
                        state.client_ca.as_ref(),
                    );
                    (proven, CredentialKind::Certificate, fp)
                }
            };
            let verdict = match proven.and_then(|binding| {
                let user = user.as_deref().ok_or(Refusal::UnknownUser)?;
                authorize(user, entry.as_ref(), service, peer, SystemTime::now())?;
                let entry = entry.clone().ok_or(Refusal::UnknownService)?;
                Ok(Accepted {
                    identity: Identity::User {
                        name: name.clone(),
                        credential: kind,
                        read_only: user.read_only.contains(service),
                    },
                    entry,
                    binding,
                })
            }) {
                Ok(accepted) => Verdict::Accepted(accepted),
                Err(refusal) => Verdict::Refused(refusal),
            };
            Decision {
                verdict,
                fingerprint,
            }
        }
    }
}

/// The cheap conditions, once the credential is proven.
fn authorize(
    user: &UserConfig,
    entry: Option<&Arc<ServiceEntry>>,
    service: &str,
    peer: SocketAddr,
    now: SystemTime,
) -> Result<(), Refusal> {
    if let Some(why) = user.refusal(peer.ip(), now) {
        return Err(Refusal::from_code(why));
    }
    if entry.is_none() {
        return Err(Refusal::UnknownService);
    }
    if !user.services.contains(service) {
        return Err(Refusal::ServiceNotAllowed);
    }
    Ok(())
}

/// A key login: always one full signature verification.
fn verify_key(
    key: Option<&[u8; 32]>,
    user_known: bool,
    nonce: Option<&[u8; NONCE_LEN]>,
    cert_hash: &[u8; 32],
    name: &str,
    service: &str,
    signature: &[u8],
) -> Result<Binding, Refusal> {
    let msg = challenge_message(nonce.unwrap_or(&[0; NONCE_LEN]), cert_hash, name, service);
    // A signature of the wrong length is verified as zeros, so that it costs the same.
    let zeros = [0u8; SIGNATURE_LEN];
    let sig = if signature.len() == SIGNATURE_LEN {
        signature
    } else {
        &zeros
    };
    let valid = UnparsedPublicKey::new(&ED25519, key.unwrap_or(dummy_key()))
        .verify(&msg, sig)
        .is_ok();
    match (key, nonce) {
        (None, _) if !user_known => Err(Refusal::UnknownUser),
        (None, _) => Err(Refusal::NoSuchCredential),
        (Some(_), None) => Err(Refusal::NoChallenge),
        (Some(k), Some(_)) if valid && signature.len() == SIGNATURE_LEN => Ok(Binding::Key(*k)),
        (Some(_), Some(_)) => Err(Refusal::WrongSignature),
    }
}

/// A certificate login: the certificate is always hashed, and with a client CA its chain
/// always verified. Returns the binding and the certificate's fingerprint.
fn verify_certificate(
    user: Option<&UserConfig>,
    name: &str,
    chain: &[CertificateDer<'static>],
    ca: Option<&ClientCa>,
) -> (Result<Binding, Refusal>, Option<String>) {
    let Some(leaf) = chain.first() else {
        return (Err(Refusal::NoCertificate), None);
    };
    let fp = sha256(leaf);
    let under_ca = ca.is_some_and(|ca| ca.verifies(chain) && certificate_names(leaf, name));
    let proven = match user {
        None => Err(Refusal::UnknownUser),
        Some(u) if u.cert_sha256 == Some(fp) => Ok(Binding::PinnedCert(fp)),
        Some(_) if under_ca => Ok(Binding::CaCert(ca.map_or([0; 32], |c| c.digest))),
        Some(_) => Err(Refusal::CertificateNotRecognised),
    };
    (proven, Some(hex(&fp)))
}

/// True when the certificate's subject common name, or one of its DNS or URI subject
/// alternative names, is `name` (as etcd and PostgreSQL map certificates to users).
pub(crate) fn certificate_names(der: &CertificateDer<'_>, name: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str().is_ok_and(|cn| cn == name));
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|g| match g {
                GeneralName::DNSName(n) | GeneralName::URI(n) => *n == name,
                _ => false,
            })
        });
    cn || san
}

/// Whether an open connection that logged in as `user` with `binding` to `service` from
/// `peer` would still be let in by `users` (and the client CA digest `ca`) at `now`, with
/// the same access; `Err` says why not.
pub(crate) fn still_allowed(
    users: &Users,
    ca: Option<[u8; 32]>,
    identity: &Identity,
    binding: &Binding,
    service: &str,
    peer: SocketAddr,
    now: SystemTime,
) -> Result<(), &'static str> {
    let Identity::User {
        name, read_only, ..
    } = identity
    else {
        return Ok(());
    };
    let Some(user) = users.get(name) else {
        return Err("user removed");
    };
    if let Some(why) = user.refusal(peer.ip(), now) {
        return Err(why);
    }
    if !user.services.contains(service) {
        return Err("service no longer allowed");
    }
    if user.read_only.contains(service) != *read_only {
        return Err("access changed");
    }
    let same = match binding {
        Binding::ServicePassword => true,
        Binding::Password(digest) => user
            .password_hash
            .as_ref()
            .is_some_and(|phc| sha256(phc.as_bytes()) == *digest),
        Binding::Key(k) => user.ed25519.as_ref() == Some(k),
        Binding::PinnedCert(fp) => user.cert_sha256.as_ref() == Some(fp),
        Binding::CaCert(digest) => ca.as_ref() == Some(digest),
    };
    if same {
        Ok(())
    } else {
        Err("credential changed")
    }
}
