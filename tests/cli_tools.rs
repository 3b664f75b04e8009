//! The `lib_chan` command's everyday tools, as processes: `call` through `mod_rpc`,
//! `ping` (pong and each kind of pang), passwords from files and their order, and where
//! `serve` looks for its config.
//!
//! Every child gets its own HOME and LIB_CHAN_HOME, so nothing reads or writes the real
//! `~/.lib_chan`, and every run is bounded.

mod common;
mod serve_process;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{password_hash, PASSWORD};
use lib_chan_client::{ConnectOptions, Error, Term};
use serve_process::{ServeProcess, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long one `lib_chan` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A home directory of its own for the children: HOME and LIB_CHAN_HOME.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `$HOME/.lib_chan`, the data directory when LIB_CHAN_HOME is not set.
    fn data(&self) -> PathBuf {
        self.dir.path().join(".lib_chan")
    }

    /// A command with this home, no password in the environment, and nothing on stdin.
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("HOME", self.dir.path())
            .env("LIB_CHAN_HOME", self.data())
            .env_remove("LIB_CHAN_PASSWORD")
            .env_remove("LIB_CHAN_PASSWORD_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Writes `text` to `path` with `mode`.
    fn write(&self, path: &Path, text: &str, mode: u32) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_owned()
    }
}

/// Runs `cmd` to the end, killing it after [`RUN_TIMEOUT`].
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lib_chan runs");
    // Read both pipes while waiting, so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// [`run`] from async code.
async fn run_async(cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || run(cmd)).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `DIR/lib_chan.conf` on 127.0.0.1, port 0, with `services` as (name, handler, extra
/// TOML lines), all behind the book's password.
fn write_config(
    dir: &Path,
    certs: &lib_chan_server::devcert::DevCertPaths,
    services: &[(&str, &str, &str)],
) -> PathBuf {
    let mut body = format!(
        "port = 0\nbind = \"127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    for (name, handler, extra) in services {
        body.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\npassword = \"{}\"\nhandler = \"{handler}\"\n{extra}\n",
            password_hash()
        ));
    }
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("lib_chan.conf");
    std::fs::write(&conf, body).unwrap();
    conf
}

#[test]
fn call_runs_allowed_functions_through_mod_rpc() {
    let home = Home::new();
    let (dir, certs) = common::make_certs();
    let conf = write_config(
        dir.path(),
        &certs,
        &[
            (
                "rpc",
                "mod_rpc",
                "args = \"nameServer\"\nallow = [\"kvs:store/2\", \"kvs:lookup/1\", \"erlang:node/0\"]",
            ),
            ("nameServer", "mod_name_server", ""),
        ],
    );
    let server = ServeProcess::start(&conf);
    let addr = format!("127.0.0.1:{}", server.port);
    let lib_chan = |args: &[&str]| {
        let mut cmd = home.command();
        cmd.args(args)
            .args(["--ca", certs.ca.to_str().unwrap()])
            .env("LIB_CHAN_PASSWORD", PASSWORD);
        run(cmd)
    };

    let out = lib_chan(&["call", &addr, "rpc", "kvs", "store", "weather", "fine"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "true\n");
    let out = lib_chan(&["call", &addr, "rpc", "kvs", "lookup", "weather"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{ok,fine}\n");
    // The name server's clients see the same names.
    let out = lib_chan(&["rpc", &addr, "nameServer", "{lookup, weather}"]);
    assert_eq!(text(&out.stdout), "{ok,fine}\n", "{}", text(&out.stderr));
    // Each argument is one term.
    let out = lib_chan(&[
        "call",
        &addr,
        "rpc",
        "kvs",
        "store",
        "{joe, -1}",
        "\"writing a book\"",
    ]);
    assert_eq!(text(&out.stdout), "true\n", "{}", text(&out.stderr));
    let out = lib_chan(&["call", &addr, "rpc", "kvs", "lookup", "{joe,-1}"]);
    assert_eq!(text(&out.stdout), "{ok,\"writing a book\"}\n");
    let out = lib_chan(&["call", &addr, "rpc", "erlang", "node"]);
    assert!(
        text(&out.stdout).starts_with("'lib_chan@") || text(&out.stdout).starts_with("lib_chan@")
    );

    // Not allowed: Erlang's answer on stdout, one line on stderr, a non-zero exit.
    let out = lib_chan(&["call", &addr, "rpc", "os", "cmd", "\"ls\""]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stdout),
        "{badrpc,{'EXIT',{undef,[{os,cmd,[\"ls\"],[]}]}}}\n"
    );
    let err = text(&out.stderr);
    assert!(err.contains("os:cmd/1 is not allowed"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A bad argument is reported before connecting.
    let out = lib_chan(&["call", &addr, "rpc", "kvs", "store", "a", "{b,"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ARG 2"), "{}", text(&out.stderr));
}

/// What a pretend server on 127.0.0.1 does after accepting.
#[derive(Clone, Copy)]
enum Pretender {
    /// Completes TLS, then answers with an HTTP error.
    TlsGarbage,
    /// Completes TLS, then closes.
    TlsClose,
    /// Completes TLS, then says nothing.
    TlsSilent,
    /// No TLS: writes an SSH banner.
    PlainBanner,
}

/// Starts a pretend server; returns its address and the CA its certificate chains to.
async fn pretender(kind: Pretender) -> (SocketAddr, tempfile::TempDir, PathBuf) {
    let (dir, certs) = common::make_certs();
    let tls = lib_chan_server::tls::server_config(
        &lib_chan_server::TlsSource::Files {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        },
        None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let bounded = Duration::from_secs(30);
                if let Pretender::PlainBanner = kind {
                    let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
                    let _ = tokio::time::timeout(bounded, tcp.read(&mut [0; 1024])).await;
                    return;
                }
                let Ok(Ok(mut tls)) = tokio::time::timeout(bounded, acceptor.accept(tcp)).await
                else {
                    return;
                };
                match kind {
                    Pretender::TlsGarbage => {
                        let _ = tls.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        let _ = tls.flush().await;
                        let _ = tokio::time::timeout(bounded, tls.read(&mut [0; 1024])).await;
                    }
                    Pretender::TlsClose => {
                        let _ = tls.shutdown().await;
                    }
                    Pretender::TlsSilent => tokio::time::sleep(bounded).await,
                    Pretender::PlainBanner => {}
                }
            });
        }
    });
    let ca = certs.ca.clone();
    (addr, dir, ca)
}

/// `lib_chan ping ADDR --ca CA [extra]`.
async fn ping(home: &Home, addr: &str, ca: &Path, extra: &[&str]) -> Output {
    let mut cmd = home.command();
    cmd.args(["ping", addr, "--ca", ca.to_str().unwrap()])
        .args(extra);
    run_async(cmd).await
}

/// Asserts a pang of `kind`: one line on stdout, a non-zero exit.
fn assert_pang(out: &Output, kind: &str) -> String {
    let shown = text(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.starts_with(&format!("pang: {kind}: ")),
        "expected pang: {kind}, got {shown:?}; stderr {}",
        text(&out.stderr)
    );
    assert_eq!(shown.lines().count(), 1, "{shown}");
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_says_pong_or_pang_with_the_reason() {
    let home = Home::new();

    // A live server: pong and the round trip time, no password needed.
    let server = common::TestServer::start().await;
    let live = format!("127.0.0.1:{}", server.addr.port());
    let out = ping(&home, &live, &server.ca_path(), &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with(&format!("pong: {live} answered in ")),
        "{shown}"
    );
    assert!(shown.trim_end().ends_with(" ms"), "{shown}");

    // The certificate is still checked: another CA is a TLS failure.
    let (_other_dir, other) = common::make_certs();
    let out = ping(&home, &live, &other.ca, &[]).await;
    let shown = assert_pang(&out, "TLS failure");
    assert!(shown.contains("--ca"), "{shown}");

    // Nothing listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let out = ping(&home, &closed.to_string(), &server.ca_path(), &[]).await;
    let shown = assert_pang(&out, "connection refused");
    assert!(
        shown.contains("refused (is the server running?)"),
        "{shown}"
    );

    // TLS servers that do not speak lib_chan.
    let (addr, _d1, ca) = pretender(Pretender::TlsGarbage).await;
    let out = ping(&home, &addr.to_string(), &ca, &[]).await;
    let shown = assert_pang(&out, "not a lib_chan server");
    assert!(shown.contains("is it a lib_chan server?"), "{shown}");

    let (addr, _d2, ca) = pretender(Pretender::TlsClose).await;
    let out = ping(&home, &addr.to_string(), &ca, &[]).await;
    assert_pang(&out, "not a lib_chan server");

    let (addr, _d3, ca) = pretender(Pretender::TlsSilent).await;
    let started = Instant::now();
    let out = ping(&home, &addr.to_string(), &ca, &["--timeout", "1"]).await;
    let shown = assert_pang(&out, "timeout");
    assert!(shown.contains("ping timed out"), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "--timeout bounds it"
    );

    // Not TLS at all.
    let (addr, _d4, ca) = pretender(Pretender::PlainBanner).await;
    let out = ping(&home, &addr.to_string(), &ca, &[]).await;
    assert_pang(&out, "TLS failure");

    // A bad address is a usage error on stderr, not a pang.
    let out = ping(&home, "nowhere", &server.ca_path(), &[]).await;
    assert!(!out.status.success());
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_come_from_env_then_named_file_then_default_file() {
    let home = Home::new();
    let server = common::TestServer::start().await;
    let addr = format!("127.0.0.1:{}", server.addr.port());
    let ca = server.ca_path();
    let default_file = home.data().join("passwords");
    let lookup = |envs: Vec<(&'static str, String)>, extra: Vec<String>| {
        let mut cmd = home.command();
        cmd.args(["rpc", &addr, "nameServer", "{lookup, joe}", "--ca"])
            .arg(&ca)
            .args(extra)
            .envs(envs);
        run_async(cmd)
    };
    let ok = |out: &Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "undefined\n");
    };
    let refused = |out: &Output, source: &str| {
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("authentication failed"), "{err}");
        assert!(
            err.contains(&format!("(the password came from {source})")),
            "{err}"
        );
    };

    // No source at all (and no terminal): a clear error naming every way to give one.
    let out = lookup(vec![], vec![]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for words in [
        "no password for service nameServer on 127.0.0.1:",
        "LIB_CHAN_PASSWORD",
        "--password-file",
        &default_file.display().to_string(),
    ] {
        assert!(err.contains(words), "{words}: {err}");
    }

    // The default file, keyed by host:port and service; the first match wins.
    home.write(
        &default_file,
        &format!(
            "# HOST[:PORT] SERVICE PASSWORD\n127.0.0.1:{port} echo wrong\n127.0.0.1:{port} nameServer {PASSWORD}\n* * wrong\n",
            port = server.addr.port()
        ),
        0o600,
    );
    ok(&lookup(vec![], vec![]).await);
    home.write(&default_file, "127.0.0.1 nameServer wrong\n", 0o600);
    refused(
        &lookup(vec![], vec![]).await,
        &format!("{} line 1", default_file.display()),
    );

    // A named file comes before the default one: the option, else the variable.
    let named = home.write(&home.dir.path().join("pw"), &format!("{PASSWORD}\n"), 0o600);
    ok(&lookup(
        vec![],
        vec!["--password-file".into(), named.display().to_string()],
    )
    .await);
    ok(&lookup(
        vec![("LIB_CHAN_PASSWORD_FILE", named.display().to_string())],
        vec![],
    )
    .await);
    // The option wins over the variable.
    let wrong = home.write(&home.dir.path().join("wrong"), "wrong\n", 0o600);
    ok(&lookup(
        vec![("LIB_CHAN_PASSWORD_FILE", wrong.display().to_string())],
        vec!["--password-file".into(), named.display().to_string()],
    )
    .await);
    refused(
        &lookup(
            vec![("LIB_CHAN_PASSWORD_FILE", wrong.display().to_string())],
            vec![],
        )
        .await,
        &format!("{} line 1", wrong.display()),
    );
    // A named file without an entry for this host and service is an error of its own.
    let other = home.write(
        &home.dir.path().join("other"),
        "gandalf nameServer x\n",
        0o600,
    );
    let out = lookup(
        vec![],
        vec!["--password-file".into(), other.display().to_string()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("has no password for service nameServer on 127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );

    // LIB_CHAN_PASSWORD comes before everything.
    ok(&lookup(
        vec![("LIB_CHAN_PASSWORD", PASSWORD.into())],
        vec!["--password-file".into(), wrong.display().to_string()],
    )
    .await);
    refused(
        &lookup(
            vec![("LIB_CHAN_PASSWORD", "wrong".into())],
            vec!["--password-file".into(), named.display().to_string()],
        )
        .await,
        "LIB_CHAN_PASSWORD",
    );

    // A file others may read is refused, with the fix; nothing is sent.
    std::fs::set_permissions(&named, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = lookup(
        vec![],
        vec!["--password-file".into(), named.display().to_string()],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("run `chmod 600 {}`", named.display())),
        "{err}"
    );
    assert!(
        err.contains("readable or writable by group or others (mode 644)"),
        "{err}"
    );
    std::fs::set_permissions(&default_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = lookup(vec![], vec![]).await;
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
}

/// A `lib_chan serve` with no `--config`, run in `cwd` with `home` (and LIB_CHAN_HOME
/// as given, else unset).
fn serve_in(cwd: &Path, home: &Path, lib_chan_home: Option<&Path>) -> ServeProcess {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--port", "0"])
        .current_dir(cwd)
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .env_remove("LIB_CHAN_HOME");
    if let Some(dir) = lib_chan_home {
        cmd.env("LIB_CHAN_HOME", dir);
    }
    ServeProcess::spawn(cmd)
}

/// The server's log once it holds every one of `words` (it is read from a pipe by
/// another thread, so it may lag behind the `listening on` line).
fn log_with(server: &ServeProcess, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.stderr();
        if words.iter().all(|w| log.contains(w)) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{words:?} not in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Which of `services` the server on `port` offers (trusting `ca`).
fn offered(port: u16, ca: &Path, services: &[&str]) -> Vec<String> {
    services
        .iter()
        .filter(|service| {
            let result = lib_chan_client::blocking::connect_with_options(
                ConnectOptions::new()
                    .ca_file(ca)
                    .handshake_timeout(Duration::from_secs(10)),
                "127.0.0.1",
                port,
                service,
                PASSWORD,
                Term::nil(),
            );
            match result {
                Ok(ch) => {
                    ch.close();
                    true
                }
                Err(Error::AuthFailed) => false,
                Err(e) => panic!("{service}: {e}"),
            }
        })
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn serve_reads_cwd_then_home_config_then_serves_the_default() {
    let root = tempfile::tempdir().unwrap();
    let (cwd, home, other) = (
        root.path().join("work"),
        root.path().join("home"),
        root.path().join("other"),
    );
    let (_certs_dir, certs) = common::make_certs();
    let cwd_conf = write_config(&cwd, &certs, &[("fromCwd", "mod_echo", "")]);
    let home_conf = write_config(
        &home.join(".lib_chan"),
        &certs,
        &[("fromHome", "mod_echo", "")],
    );
    let other_conf = write_config(&other, &certs, &[("fromLibChanHome", "mod_echo", "")]);
    let all = ["fromCwd", "fromHome", "fromLibChanHome"];

    // 1. ./lib_chan.conf first.
    let server = serve_in(&cwd, &home, None);
    assert_eq!(offered(server.port, &certs.ca, &all), ["fromCwd"]);
    log_with(&server, &["using config file config=lib_chan.conf"]);
    drop(server);

    // 2. Then $HOME/.lib_chan/lib_chan.conf.
    std::fs::remove_file(&cwd_conf).unwrap();
    let server = serve_in(&cwd, &home, None);
    assert_eq!(offered(server.port, &certs.ca, &all), ["fromHome"]);
    log_with(&server, &[&format!("config={}", home_conf.display())]);
    drop(server);

    // 2b. The data directory is $LIB_CHAN_HOME when that is set.
    let server = serve_in(&cwd, &home, Some(&other));
    assert_eq!(offered(server.port, &certs.ca, &all), ["fromLibChanHome"]);
    log_with(&server, &[&format!("config={}", other_conf.display())]);
    drop(server);

    // 3. Neither: the working default, saying where it looked.
    std::fs::remove_file(&home_conf).unwrap();
    let server = serve_in(&cwd, &home, None);
    log_with(
        &server,
        &[
            "no config file found",
            &format!(
                "looked_in=lib_chan.conf, {}",
                home.join(".lib_chan/lib_chan.conf").display()
            ),
        ],
    );
    // Its generated password is found by the client on the same account, for
    // localhost's nameServer, with no password given at all.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "rpc",
        &format!("localhost:{}", server.port),
        "nameServer",
        "{lookup, joe}",
    ])
    .env("HOME", &home)
    .env_remove("LIB_CHAN_HOME")
    .env_remove("LIB_CHAN_PASSWORD")
    .env_remove("LIB_CHAN_PASSWORD_FILE")
    .stdin(Stdio::null());
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        text(&out.stderr),
        server.stderr()
    );
    assert_eq!(text(&out.stdout), "undefined\n");
}

/// The value of `"key":VALUE` in the one-line JSON object `lib_chan bench --json` ends
/// with.
fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    &rest[..rest.find([',', '}']).unwrap()]
}

#[test]
fn bench_runs_each_operation_and_reports_what_it_did() {
    let home = Home::new();
    let (dir, certs) = common::make_certs();
    let conf = write_config(
        dir.path(),
        &certs,
        &[
            ("nameServer", "mod_name_server", ""),
            ("echo", "mod_echo", ""),
        ],
    );
    let server = ServeProcess::start(&conf);
    let addr = format!("127.0.0.1:{}", server.port);
    let lib_chan = |args: &[&str], password: &str| {
        let mut cmd = home.command();
        cmd.args(args)
            .args(["--ca", certs.ca.to_str().unwrap()])
            .env("LIB_CHAN_PASSWORD", password);
        run(cmd)
    };
    let bench = |service: &str, op: &str, extra: &[&str]| {
        let mut args = vec![
            "bench",
            &addr,
            service,
            "--op",
            op,
            "--duration",
            "0.3",
            "--keys",
            "20",
            "--value-size",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = lib_chan(&args, PASSWORD);
        assert!(out.status.success(), "{op}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let json = stdout.trim_end().lines().last().unwrap().to_owned();
        assert_eq!(json_field(&json, "errors"), "0", "{op}: {stdout}");
        let ops: u64 = json_field(&json, "ops").parse().unwrap();
        assert!(ops > 0, "{op}: {stdout}");
        for p in ["p50_us", "p99_us", "p999_us"] {
            json_field(&json, p).parse::<u64>().unwrap();
        }
        json
    };

    // Stores really store: afterwards a key holds the bench's value (5 bytes of `v`).
    let json = bench(
        "nameServer",
        "store",
        &["--connections", "2", "--pipeline", "3"],
    );
    assert_eq!(json_field(&json, "pipeline"), "3");
    assert_eq!(json_field(&json, "batch"), "false");
    let out = lib_chan(
        &["rpc", &addr, "nameServer", "{lookup, {key, 7}}"],
        PASSWORD,
    );
    assert_eq!(
        text(&out.stdout),
        "{ok,<<\"vvvvv\">>}\n",
        "{}",
        text(&out.stderr)
    );

    let json = bench(
        "nameServer",
        "lookup",
        &["--connections", "2", "--pipeline", "8", "--batch"],
    );
    assert_eq!(json_field(&json, "batch"), "true");
    bench("echo", "echo", &["--pipeline", "4", "--batch"]);
    bench("nameServer", "connect", &[]);

    // Lookups against a service that does not answer them as the name server does are
    // errors, counted, with the first one shown; a wrong password stops the run.
    let out = lib_chan(
        &[
            "bench",
            &addr,
            "nameServer",
            "--op",
            "echo",
            "--duration",
            "0.3",
        ],
        PASSWORD,
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("first error:"), "{stdout}");
    let out = lib_chan(
        &["bench", &addr, "nameServer", "--duration", "0.3"],
        "wrong",
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("auth"), "{}", text(&out.stderr));
}
