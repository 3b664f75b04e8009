//! Named users for the tests, on top of `common::TestServer`:
//!
//! - alice: a password and an Ed25519 key; may start nameServer, echo and `private`;
//! - bob: a self-signed client certificate pinned by `cert_sha256`; nameServer only;
//! - carol: a password; every service, read-only on nameServer;
//! - dave: no credential of his own: a certificate under the client CA naming him;
//! - frank: alice's public key under another name; nameServer.
//!
//! `private` is a service without a service password (mod_echo): named users only.
//! The client CA is the test server's own development CA.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lib_chan_client::{ConnectOptions, Ed25519Key, Login};
use lib_chan_protocol::Term;
use lib_chan_server::devcert::{ClientCert, DevCerts};
use lib_chan_server::{
    auth, ClientCaSource, Config, ServiceConfig, ServiceList, TlsSource, UserConfig,
};

pub const ALICE_PW: &str = "alice's own secret";
pub const CAROL_PW: &str = "carol's own secret";
/// The seed of alice's key (fixed, so every test binary agrees).
pub const ALICE_SEED: [u8; 32] = [0xa1; 32];

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
    pub sha256: [u8; 32],
}

impl From<ClientCert> for Pair {
    fn from(c: ClientCert) -> Pair {
        Pair {
            cert: c.cert_pem,
            key: c.key_pem,
            sha256: c.sha256,
        }
    }
}

/// A self-signed client certificate naming `name`, signed by nobody.
pub fn self_signed(name: &str) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    Pair {
        sha256: lib_chan_server::tls::sha256(cert.der()),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn hash(pw: &str) -> String {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (a, c) = HASHES.get_or_init(|| {
        (
            auth::hash_password(ALICE_PW.as_bytes()),
            auth::hash_password(CAROL_PW.as_bytes()),
        )
    });
    if pw == ALICE_PW {
        a.clone()
    } else {
        c.clone()
    }
}

pub fn alice_key() -> Ed25519Key {
    Ed25519Key::from_seed(&ALICE_SEED)
}

/// bob's pinned self-signed certificate (made once per test binary).
pub fn bob_cert() -> &'static Pair {
    static BOB: OnceLock<Pair> = OnceLock::new();
    BOB.get_or_init(|| self_signed("bob"))
}

/// The directory of the server's development certificates, from its config.
pub fn cert_dir(config: &Config) -> PathBuf {
    match &config.tls {
        TlsSource::Files { cert, .. } => cert.parent().unwrap().to_owned(),
        TlsSource::Pem { .. } => panic!("the test server uses files"),
    }
}

/// A certificate for `name` under the CA in `dir` (the server's development CA).
pub fn ca_signed(dir: &Path, name: &str) -> Pair {
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    DevCerts::client_cert(&ca, &ca_key, name).unwrap().into()
}

pub fn user(name: &str, services: &[&str]) -> UserConfig {
    let mut u = UserConfig::new(name);
    u.services = if services == ["*"] {
        ServiceList::All
    } else {
        ServiceList::Named(services.iter().map(|s| s.to_string()).collect())
    };
    u
}

/// The users of the module docs.
pub fn users() -> Vec<UserConfig> {
    let mut alice = user("alice", &["nameServer", "echo", "private"]);
    alice.password_hash = Some(hash(ALICE_PW));
    alice.ed25519 = Some(alice_key().public_key());
    let mut bob = user("bob", &["nameServer"]);
    bob.cert_sha256 = Some(bob_cert().sha256);
    let mut carol = user("carol", &["*"]);
    carol.password_hash = Some(hash(CAROL_PW));
    carol.read_only = ServiceList::Named(vec!["nameServer".into()]);
    let dave = user("dave", &["nameServer"]);
    let mut frank = user("frank", &["nameServer"]);
    frank.ed25519 = alice.ed25519;
    vec![alice, bob, carol, dave, frank]
}

/// Adds the users, the client CA and the `private` service to a test server's config.
pub fn configure(config: &mut Config) {
    config.services.push(ServiceConfig::users_only(
        "private",
        "mod_echo",
        Term::nil(),
    ));
    config.client_ca = Some(ClientCaSource::File(cert_dir(config).join("ca.pem")));
    config.users = users();
}

/// Connects to `service` with `login`, through `options`.
pub async fn login(
    options: &ConnectOptions,
    port: u16,
    service: &str,
    login: &Login,
) -> Result<lib_chan_client::Channel, lib_chan_client::Error> {
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        options.connect_with("127.0.0.1", port, service, login, Term::nil()),
    )
    .await
    .expect("login within 20 s")
}
