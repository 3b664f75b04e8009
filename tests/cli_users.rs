//! The command line's side of named users, with the real binary against a real server:
//! `keygen` and `gen-cert --client` make credentials whose printed `[[user]]` lines let
//! `rpc --user NAME --key FILE` and `--cert FILE --cert-key FILE` in; a user's password
//! comes from LIB_CHAN_PASSWORD; a password file's `user=` line logs in without flags; a
//! refused login names where its credential came from and shows no secret; the flags are
//! checked; `check-config` lists the users.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::TestServer;
use lib_chan_server::{auth, ServiceList, UserConfig};

const BIN: &str = env!("CARGO_BIN_EXE_lib_chan");

/// Runs the binary off the runtime thread (the test's runtime also runs the server).
async fn lib_chan(args: Vec<String>, envs: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_remove("LIB_CHAN_PASSWORD")
            .env_remove("LIB_CHAN_PASSWORD_FILE")
            .env(
                "LIB_CHAN_HOME",
                std::env::temp_dir().join("lib_chan_cli_users_home"),
            );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value of `key = "VALUE"` in printed config lines.
fn printed(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .to_owned()
}

fn user(name: &str) -> UserConfig {
    let mut u = UserConfig::new(name);
    u.services = ServiceList::Named(vec!["nameServer".into()]);
    u
}

#[tokio::test]
async fn keys_certificates_passwords_and_password_files_log_users_in() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let dir = server.certs.ca.parent().unwrap().to_owned();
    let s = |p: &std::path::Path| p.display().to_string();
    let addr = format!("127.0.0.1:{}", server.addr.port());
    let ca = s(&server.ca_path());

    // keygen: a 0600 key and the [[user]] lines.
    let key = work.path().join("alice.key");
    let out = lib_chan(
        vec![
            "keygen".into(),
            "--out".into(),
            s(&key),
            "--name".into(),
            "alice".into(),
        ],
        vec![],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed_out = text(&out.stdout);
    assert!(printed_out.contains("name = \"alice\""), "{printed_out}");
    let public = printed(&printed_out, "ed25519");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = lib_chan(vec!["keygen".into(), "--out".into(), s(&key)], vec![]).await;
    assert!(
        !again.status.success(),
        "an existing key is not overwritten"
    );
    let other_key = work.path().join("other.key");
    assert!(
        lib_chan(vec!["keygen".into(), "--out".into(), s(&other_key)], vec![])
            .await
            .status
            .success()
    );

    // gen-cert --client: a certificate under the server's CA and its fingerprint.
    let out = lib_chan(
        vec![
            "gen-cert".into(),
            "--client".into(),
            "bob".into(),
            "--out".into(),
            s(&dir),
        ],
        vec![],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fingerprint = printed(&text(&out.stdout), "cert_sha256");

    // The printed lines go into the server's users.
    let mut config = lib_chan_server::Config::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        0,
        lib_chan_server::TlsSource::Files {
            cert: server.certs.cert.clone(),
            key: server.certs.key.clone(),
        },
    );
    config.services = common::services();
    let mut alice = user("alice");
    alice.ed25519 = Some(lib_chan_server::users::parse_public_key(&public).unwrap());
    let mut bob = user("bob");
    bob.cert_sha256 = Some(lib_chan_server::users::parse_fingerprint(&fingerprint).unwrap());
    let mut carol = user("carol");
    carol.password_hash = Some(auth::hash_password(b"carol-pw"));
    config.users = vec![alice, bob, carol];
    server
        .handle
        .as_ref()
        .unwrap()
        .reload(
            config,
            &common::registry(tokio::sync::mpsc::unbounded_channel().0),
        )
        .unwrap();

    let rpc = |extra: Vec<String>| {
        let mut args = vec![
            "rpc".into(),
            addr.clone(),
            "nameServer".into(),
            "{lookup, jim}".into(),
            "--ca".into(),
            ca.clone(),
        ];
        args.extend(extra);
        args
    };
    for (what, extra, envs) in [
        (
            "key",
            vec!["--user".into(), "alice".into(), "--key".into(), s(&key)],
            vec![],
        ),
        (
            "certificate",
            vec![
                "--user".into(),
                "bob".into(),
                "--cert".into(),
                s(&dir.join("bob.pem")),
                "--cert-key".into(),
                s(&dir.join("bob.key")),
            ],
            vec![],
        ),
        (
            "user password",
            vec!["--user".into(), "carol".into()],
            vec![("LIB_CHAN_PASSWORD", "carol-pw".to_owned())],
        ),
    ] {
        let out = lib_chan(rpc(extra), envs).await;
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "undefined\n", "{what}");
    }

    // A refused key login says which key file, and shows nothing secret.
    let out = lib_chan(
        rpc(vec![
            "--user".into(),
            "alice".into(),
            "--key".into(),
            s(&other_key),
        ]),
        vec![],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("login refused for user alice"), "{err}");
    assert!(err.contains(&s(&other_key)), "{err}");
    let secret = std::fs::read_to_string(&other_key).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!err.contains(body), "{err}");
    let out = lib_chan(
        rpc(vec!["--user".into(), "carol".into()]),
        vec![("LIB_CHAN_PASSWORD", "zq-not-it-9".to_owned())],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("LIB_CHAN_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains("zq-not-it-9"), "{err}");

    // A password file line logs alice in with no login flags.
    let file = work.path().join("passwords");
    std::fs::write(
        &file,
        format!("{addr} nameServer user=alice key=alice.key\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = lib_chan(rpc(vec!["--password-file".into(), s(&file)]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "undefined\n");

    // The flags are checked.
    let out = lib_chan(rpc(vec!["--key".into(), s(&key)]), vec![]).await;
    assert_eq!(out.status.code(), Some(2), "--key needs --user");
    let out = lib_chan(
        rpc(vec![
            "--user".into(),
            "bob".into(),
            "--cert".into(),
            s(&dir.join("bob.pem")),
        ]),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "--cert needs --cert-key");
    assert!(handle_denied(&server, "alice"));
}

fn handle_denied(server: &TestServer, user: &str) -> bool {
    server
        .handle
        .as_ref()
        .unwrap()
        .denials()
        .iter()
        .any(|d| d.user.as_deref() == Some(user))
}

#[test]
fn check_config_lists_users_and_users_only_services() {
    let (dir, certs) = common::make_certs();
    let conf = dir.path().join("lib_chan.conf");
    std::fs::write(
        &conf,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"nameServer\"\nhandler = \"mod_name_server\"\n[[user]]\nname = \"alice\"\nservices = [\"*\"]\ned25519 = \"{}\"\nexpires = \"2030-01-01T00:00:00Z\"\n",
            certs.cert.display(),
            certs.key.display(),
            "A".repeat(43) + "="
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", &conf.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("service nameServer -> mod_name_server args [] (named users only)"),
        "{shown}"
    );
    assert!(
        shown.contains("user    alice -> * [ed25519 SHA256:"),
        "{shown}"
    );
    assert!(shown.contains("expires 2030-01-01T00:00:00Z"), "{shown}");
}
