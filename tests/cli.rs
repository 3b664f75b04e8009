//! The `lib_chan` binary as users run it: serving from a config file and by default,
//! the seed session with `lib_chan cast`/`rpc` as separate processes, and the offline
//! subcommands (gen-cert, hash-password, check-config).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lib_chan");

/// A `lib_chan serve` process, killed when dropped.
struct ServeProcess {
    child: Child,
    port: u16,
    stdout: mpsc::Receiver<String>,
}

impl ServeProcess {
    fn start(args: &[&str], envs: &[(&str, &Path)], cwd: &Path) -> ServeProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(args)
            .current_dir(cwd)
            .env_remove("LIB_CHAN_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("lib_chan serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut port = None;
        while port.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("serve prints `listening on ADDR`");
            port = line
                .strip_prefix("listening on ")
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok());
        }
        ServeProcess {
            child,
            port: port.unwrap(),
            stdout: rx,
        }
    }

    /// Sends SIGTERM and returns whether the server exited with status 0 in time.
    fn terminate(mut self) -> bool {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lib_chan(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("LIB_CHAN_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("lib_chan runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_config(dir: &Path, certs: &lib_chan_server::devcert::DevCertPaths) -> PathBuf {
    let conf = dir.join("lib_chan.conf");
    let body = format!(
        "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[[service]]\nname = \"nameServer\"\npassword = \"{}\"\nhandler = \"mod_name_server\"\nargs = \"notUsed\"\n",
        certs.cert.display(),
        certs.key.display(),
        common::password_hash()
    );
    std::fs::write(&conf, body).unwrap();
    conf
}

#[test]
fn the_seed_session_as_separate_processes() {
    let (dir, certs) = common::make_certs();
    let conf = write_config(dir.path(), &certs);
    let server = ServeProcess::start(&["--config", conf.to_str().unwrap()], &[], dir.path());
    let addr = format!("127.0.0.1:{}", server.port);
    let ca = certs.ca.to_str().unwrap();
    let pw = [("LIB_CHAN_PASSWORD", common::PASSWORD)];

    let out = lib_chan(
        &[
            "cast",
            &addr,
            "nameServer",
            r#"{store, joe, "writing a book"}"#,
            "--ca",
            ca,
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, joe}", "--ca", ca],
        &pw,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{ok,\"writing a book\"}\n");
    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, jim}", "--ca", ca],
        &pw,
    );
    assert_eq!(text(&out.stdout), "undefined\n");

    // Failures: one clear line on stderr and a non-zero exit.
    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, joe}", "--ca", ca],
        &[("LIB_CHAN_PASSWORD", "wrong")],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, joe}", "--ca", ca],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("LIB_CHAN_PASSWORD"));

    let out = lib_chan(&["rpc", &addr, "nameServer", "{lookup,", "--ca", ca], &pw);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("TERM"), "{}", text(&out.stderr));

    // A CA that did not sign the server's certificate.
    let (_other_dir, other) = common::make_certs();
    let out = lib_chan(
        &[
            "rpc",
            &addr,
            "nameServer",
            "{lookup, joe}",
            "--ca",
            other.ca.to_str().unwrap(),
        ],
        &pw,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).to_lowercase().contains("tls"),
        "{}",
        text(&out.stderr)
    );

    assert!(server.terminate(), "SIGTERM ends the server with status 0");

    // Nothing listens any more: connection refused is one clear line.
    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, joe}", "--ca", ca],
        &pw,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_without_a_config_makes_a_working_default() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let server = ServeProcess::start(
        &["--port", "0"],
        &[("LIB_CHAN_HOME", &data), ("HOME", home.path())],
        home.path(),
    );
    // The generated password is kept, mode 0600, beside the generated certificates.
    let pw_file = data.join("password");
    let password = std::fs::read_to_string(&pw_file).unwrap().trim().to_owned();
    assert_eq!(
        std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(data.join("server.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(password.len() >= 16);
    let addr = format!("localhost:{}", server.port);
    let data_s = data.to_str().unwrap();
    let envs = [
        ("LIB_CHAN_PASSWORD", password.as_str()),
        ("LIB_CHAN_HOME", data_s),
    ];
    // No --ca: the client trusts the development CA from the data directory.
    let out = lib_chan(
        &[
            "cast",
            &addr,
            "nameServer",
            "{store, joe, \"writing a book\"}",
        ],
        &envs,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lib_chan(&["rpc", &addr, "nameServer", "{lookup, joe}"], &envs);
    assert_eq!(
        text(&out.stdout),
        "{ok,\"writing a book\"}\n",
        "{}",
        text(&out.stderr)
    );
    let hint: Vec<String> = server.stdout.try_iter().collect();
    assert!(hint.iter().any(|l| l.contains("lib_chan rpc")), "{hint:?}");
    assert!(server.terminate());

    // A second start reuses the certificate and the password.
    let ca_before = std::fs::read(data.join("ca.pem")).unwrap();
    let server = ServeProcess::start(&["--port", "0"], &[("LIB_CHAN_HOME", &data)], home.path());
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca_before);
    let addr = format!("localhost:{}", server.port);
    let out = lib_chan(&["rpc", &addr, "nameServer", "{lookup, jim}"], &envs);
    assert_eq!(text(&out.stdout), "undefined\n", "{}", text(&out.stderr));
    // The default keeps its names in the data directory: joe survived the restart.
    assert!(data.join("names.redb").exists());
    let out = lib_chan(&["rpc", &addr, "nameServer", "{lookup, joe}"], &envs);
    assert_eq!(
        text(&out.stdout),
        "{ok,\"writing a book\"}\n",
        "{}",
        text(&out.stderr)
    );
}

/// `lib_chan serve | head -1`, or a supervisor that stops reading: the server's
/// standard output goes away before it has printed its banner. It must go on serving
/// (a `println!` would panic on the broken pipe and end the process).
#[test]
fn serve_keeps_serving_when_its_stdout_is_closed() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .current_dir(home.path())
        .env_remove("LIB_CHAN_PASSWORD")
        .env("LIB_CHAN_HOME", home.path())
        .env("HOME", home.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lib_chan serve starts");
    drop(child.stdout.take());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The port from the log line `lib_chan listening (TLS) addr=127.0.0.1:PORT ...`
    // (the banner on stdout is what is gone).
    let mut seen = Vec::new();
    let port: u16 = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no `lib_chan listening` log line ({e}): {seen:#?}"));
        // Plain text: standard error is a pipe, so the log has no colour codes.
        assert!(!line.contains('\u{1b}'), "{line:?}");
        if line.contains("lib_chan listening") {
            let addr = line.split("addr=").nth(1).unwrap();
            let addr = addr.split_whitespace().next().unwrap();
            break addr.rsplit_once(':').unwrap().1.parse().unwrap();
        }
        seen.push(line);
    };
    // Past the banner lines the server would have printed by now.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited: {:#?}",
        rx.try_iter().collect::<Vec<_>>()
    );
    let password = std::fs::read_to_string(home.path().join("password")).unwrap();
    let home_s = home.path().to_str().unwrap();
    let out = lib_chan(
        &[
            "rpc",
            &format!("localhost:{port}"),
            "nameServer",
            "{lookup, joe}",
        ],
        &[
            ("LIB_CHAN_PASSWORD", password.trim()),
            ("LIB_CHAN_HOME", home_s),
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(text(&out.stdout), "undefined\n", "{}", text(&out.stderr));
}

#[test]
fn gen_cert_writes_a_ca_and_a_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = lib_chan(
        &[
            "gen-cert",
            "--out",
            out_dir.to_str().unwrap(),
            "--host",
            "gandalf",
            "--host",
            "198.18.0.1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let mode = std::fs::metadata(out_dir.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hash_password_reads_stdin_and_prints_a_verifiable_hash() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ABXy45\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = text(&out.stdout).trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(lib_chan_server::auth::verify_password(&hash, b"ABXy45"));
    assert!(!lib_chan_server::auth::verify_password(&hash, b"ABXy45\n"));
}

#[test]
fn check_config_validates_and_names_file_line_and_key() {
    let (dir, certs) = common::make_certs();
    let conf = write_config(dir.path(), &certs);
    let out = lib_chan(&["check-config", conf.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("service nameServer -> mod_name_server"));

    let body = std::fs::read_to_string(&conf).unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, body.replace(&common::password_hash(), "ABXy45")).unwrap();
    let out = lib_chan(&["check-config", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:10: service[0].password: plaintext password refused",
            bad.display()
        )),
        "{err}"
    );
    assert!(err.contains("hash-password"), "{err}");

    // A key file others can read is refused, as ssh refuses one.
    std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = lib_chan(&["check-config", conf.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "serve",
        "gen-cert",
        "hash-password",
        "check-config",
        "rpc",
        "cast",
        "call",
        "ping",
        "shell",
    ] {
        let out = lib_chan(&[sub, "--help"], &[]);
        assert!(out.status.success(), "{sub}");
        assert!(text(&out.stdout).contains("Usage"), "{sub}");
    }
}
