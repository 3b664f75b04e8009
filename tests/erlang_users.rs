//! Named users through the Erlang client module `clients/erlang/lib_chan_tls.erl`
//! (PROTOCOL.md sections 4.1 and 4.2): compiled with `erlc` and driven by
//! `tests/erlang/lib_chan_tls_users.escript` against a real server with a user `alice`
//! who has a password, an Ed25519 key and a pinned client certificate.
//!
//! Checked: each credential kind (the user's password as an option and as the password
//! argument, the key from a PKCS#8 file and as a raw seed, the client certificate) logs
//! in, gets a version 2 welcome naming alice, and runs the seed session; the book's
//! login still gets the version 1 welcome; a wrong password, a key registered for no
//! one, a certificate login without a certificate (or with a certificate pinned for no
//! one), a service alice may not start and an unknown user are all `{error,
//! auth_failed}`, and the server recorded the reason we meant to provoke; options that
//! cannot work are refused before anything is sent.
//!
//! Erlang is required: without `erlc` or `escript` this test fails and says which Debian
//! packages to install.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{within, TestServer};
use lib_chan_client::{term, Ed25519Key};
use lib_chan_server::devcert::{DevCertPaths, DevCerts};
use lib_chan_server::{auth, Refusal, ServiceList, TlsSource, UserConfig};

/// How long the script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Alice's own password.
const ALICE_PW: &str = "alice-erlang-pw";

const INSTALL_HINT: &str = "install Erlang/OTP from Debian: apt-get install erlang-base \
     erlang-crypto erlang-ssl erlang-public-key erlang-asn1 (erlang-base has erl, erlc and escript)";

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/erlang/lib_chan_tls.erl")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erlang/lib_chan_tls_users.escript")
}

/// Compiles the module, warnings as errors, into a fresh temporary directory.
fn compile() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("erlc")
        .arg("+warnings_as_errors")
        .arg("-o")
        .arg(dir.path())
        .arg(source())
        .output()
        .unwrap_or_else(|e| panic!("cannot run erlc ({e}): {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "erlc failed on {}:\n{}{}",
        source().display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("lib_chan_tls.beam").exists());
    dir
}

/// Writes `text` to `path` with `mode`.
fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A random 32-byte seed.
fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).unwrap();
    seed
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the script to its end (killed after [`SCRIPT_TIMEOUT`]); returns whether it
/// succeeded and what it printed.
fn run_script(args: &[&std::ffi::OsStr], home: &Path) -> (bool, String) {
    let mut child = Command::new("escript")
        .arg(script())
        .args(args)
        .env("HOME", home)
        .env_remove("LIB_CHAN_HOME")
        .env_remove("LIB_CHAN_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run escript ({e}): {INSTALL_HINT}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for escript") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "stdout:\n{}\nstderr:\n{}",
        out.join().unwrap(),
        err.join().unwrap()
    );
    match status {
        Some(s) => (s.success(), format!("{s}\n{output}")),
        None => (false, format!("killed after {SCRIPT_TIMEOUT:?}\n{output}")),
    }
}

#[tokio::test]
async fn erlang_module_logs_in_as_a_named_user_with_every_credential() {
    // What the script reads: see tests/erlang/lib_chan_tls_users.escript.
    let files = tempfile::tempdir().expect("temp dir");
    let dir = files.path();
    let alice_seed = seed();
    let alice_key = Ed25519Key::from_seed(&alice_seed);
    write(
        &dir.join("alice-ed25519.key"),
        &alice_key.to_pkcs8_pem().unwrap(),
        0o600,
    );
    write(&dir.join("alice-ed25519.seed"), &hex(&alice_seed), 0o600);
    let other = Ed25519Key::generate().unwrap();
    write(
        &dir.join("other-ed25519.key"),
        &other.to_pkcs8_pem().unwrap(),
        0o600,
    );

    let alice_pw_hash = auth::hash_password(ALICE_PW.as_bytes());
    let alice_public = alice_key.public_key();
    // The client certificates are signed by the test server's dev CA, which start_with
    // makes next to the server's certificate before it calls us.
    let mut certs = None;
    let server = TestServer::start_with(|c| {
        let TlsSource::Files { cert, .. } = &c.tls else {
            panic!("the test server's certificate is a file")
        };
        let paths = DevCertPaths::in_dir(cert.parent().unwrap());
        let ca_pem = std::fs::read_to_string(&paths.ca).unwrap();
        let ca_key_pem = std::fs::read_to_string(&paths.ca_key).unwrap();
        let alice = DevCerts::client_cert(&ca_pem, &ca_key_pem, "alice").unwrap();
        let mallory = DevCerts::client_cert(&ca_pem, &ca_key_pem, "mallory").unwrap();
        let mut user = UserConfig::new("alice");
        user.services = ServiceList::Named(vec!["nameServer".into()]);
        user.password_hash = Some(alice_pw_hash.clone());
        user.ed25519 = Some(alice_public);
        user.cert_sha256 = Some(alice.sha256);
        c.users.push(user);
        certs = Some((paths.ca, alice, mallory));
    })
    .await;
    let (ca, alice_cert, mallory_cert) = certs.expect("start_with called the closure");
    assert_eq!(ca, server.certs.ca);
    alice_cert.write(dir, "alice-cert").unwrap();
    mallory_cert.write(dir, "mallory-cert").unwrap();
    std::fs::copy(&server.certs.ca, dir.join("ca.pem")).unwrap();

    let beam = compile();
    let home = tempfile::tempdir().expect("temp dir");
    let port = server.addr.port().to_string();
    let dir_arg = dir.to_owned();
    let (ok, output) = tokio::task::spawn_blocking(move || {
        let args = [
            beam.path().as_os_str(),
            "localhost".as_ref(),
            port.as_ref(),
            dir_arg.as_os_str(),
            ALICE_PW.as_ref(),
        ];
        run_script(&args, home.path())
    })
    .await
    .unwrap();
    assert!(ok, "the escript failed\n{output}");
    for line in [
        "user password option: seed session as alice",
        "user password argument: seed session as alice",
        "key file: seed session as alice",
        "raw key: seed session as alice",
        "certificate: seed session as alice",
        "certificate as {certificate, true}",
        "service password: protocol 1, no user",
        "wrong password refused",
        "unregistered key refused",
        "certificate login without a certificate refused",
        "certificate not pinned for the user refused",
        "service not allowed for the user refused",
        "unknown user refused",
        "bad options refused locally",
        "users ok",
    ] {
        assert!(
            output.lines().any(|l| l == line),
            "no line {line:?}\n{output}"
        );
    }

    let handle = server.handle.as_ref().unwrap();
    // Each refusal was refused for the reason the script meant to provoke.
    let denials = handle.denials();
    let count = |user: &str, service: &str, reason: Refusal| {
        denials
            .iter()
            .filter(|d| d.user.as_deref() == Some(user) && d.service == service)
            .filter(|d| d.reason == reason)
            .map(|d| d.count)
            .sum::<u64>()
    };
    for (user, service, reason, n) in [
        ("alice", "nameServer", Refusal::WrongPassword, 2),
        ("alice", "nameServer", Refusal::WrongSignature, 2),
        ("alice", "nameServer", Refusal::NoCertificate, 1),
        ("alice", "nameServer", Refusal::CertificateNotRecognised, 1),
        ("alice", "echo", Refusal::ServiceNotAllowed, 1),
        ("carol", "nameServer", Refusal::UnknownUser, 1),
    ] {
        assert_eq!(
            count(user, service, reason),
            n,
            "{user} {service} {reason:?}: {denials:?}"
        );
    }
    assert_eq!(
        denials.iter().map(|d| d.count).sum::<u64>(),
        8,
        "no other refusal: {denials:?}"
    );
    // And the logins let in, by credential kind.
    let text = handle.metrics_text();
    for (result, kind, n) in [
        ("ok", "service_password", 1.0),
        ("ok", "password", 2.0),
        ("ok", "ed25519", 2.0),
        ("ok", "certificate", 2.0),
        ("failed", "password", 4.0),
        ("failed", "ed25519", 2.0),
        ("failed", "certificate", 2.0),
    ] {
        let series = format!("lib_chan_logins_total{{result=\"{result}\",credential=\"{kind}\"}}");
        assert_eq!(common::metric(&text, &series), Some(n), "{series}\n{text}");
    }
    // The casts and calls reached the real name server.
    let chan = server.connect("nameServer").await;
    assert_eq!(
        within("lookup", chan.rpc(term!({lookup, joe})))
            .await
            .unwrap(),
        term!({ok, "writing a book"})
    );
}
