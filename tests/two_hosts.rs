//! Two machines: the server on host `gandalf` and the clients on host `bilbo`, each in
//! its own network namespace, joined by a veth pair (the book's last test setting: two
//! nodes on two machines).
//!
//! The addresses come from 198.18.0.0/15, the benchmarking range (RFC 2544), never from
//! a private range, so the test cannot touch a real network. `gandalf` gets a
//! certificate made by `lib_chan gen-cert --host gandalf`, and bilbo finds `gandalf`
//! through its own hosts file: `ip netns exec NS` bind-mounts `/etc/netns/NS/hosts`
//! over `/etc/hosts`. From bilbo the test runs the seed session with the `lib_chan`
//! command line and with the Rust client library, and checks that the certificate
//! check passes for `gandalf` and fails for any other name.
//!
//! How the Rust client runs inside bilbo: this test binary runs itself there, through
//! `ip netns exec BILBO <this test binary> bilbo_side_rust_client --exact
//! --include-ignored`, with the server's address and CA in environment variables. So
//! the client is real library code in a process of its own on bilbo, resolving
//! `gandalf` through bilbo's hosts file, and nothing extra has to be built (an example
//! binary would not be built by `cargo test --test two_hosts`; entering the namespace
//! from a thread with setns(2) would need `unsafe`, which the workspace forbids, and
//! would not see bilbo's hosts file). `bilbo_side_rust_client` is `#[ignore]`d, so it
//! runs only when asked for, and does nothing without those variables.
//!
//! Namespace and interface names end in this process's id, so parallel runs do not
//! collide, and a guard deletes the namespaces and their `/etc/netns` directories when
//! the test ends, also when it fails. It needs root and iproute2's `ip` (CI runs it as
//! root); without them it says why and fails, unless `LIB_CHAN_SKIP_NETNS=1`.

mod common;
mod serve_process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serve_process::{write_config, ServeProcess, BIN};

/// Set to 1 to let this test pass without running where namespaces cannot be made.
const SKIP_VAR: &str = "LIB_CHAN_SKIP_NETNS";
/// `gandalf:PORT`, for the client half run inside bilbo.
const ADDR_VAR: &str = "LIB_CHAN_TWO_HOSTS_ADDR";
/// The CA file, for the client half run inside bilbo.
const CA_VAR: &str = "LIB_CHAN_TWO_HOSTS_CA";

const GANDALF_IP: &str = "198.18.0.1";
const BILBO_IP: &str = "198.18.0.2";
const PREFIX: u8 = 30;

/// The bound on each command the test runs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Two network namespaces joined by a veth pair; deleted (with their `/etc/netns`
/// directories and any stray interface) when dropped.
struct TwoHosts {
    gandalf: String,
    bilbo: String,
    veth_gandalf: String,
    veth_bilbo: String,
}

impl TwoHosts {
    /// Creates the namespaces, the link and bilbo's hosts file. The guard exists before
    /// the first namespace does, so a failure halfway is cleaned up too.
    fn create() -> Result<TwoHosts, String> {
        let pid = std::process::id();
        let hosts = TwoHosts {
            gandalf: format!("lib_chan-gandalf-{pid}"),
            bilbo: format!("lib_chan-bilbo-{pid}"),
            // Interface names are at most 15 bytes.
            veth_gandalf: format!("lcg{pid}"),
            veth_bilbo: format!("lcb{pid}"),
        };
        let (g, b) = (&hosts.gandalf, &hosts.bilbo);
        let (vg, vb) = (&hosts.veth_gandalf, &hosts.veth_bilbo);
        ip(&["netns", "add", g])?;
        ip(&["netns", "add", b])?;
        // Both ends are born inside their namespaces: nothing touches the host's.
        ip(&[
            "link", "add", vg, "netns", g, "type", "veth", "peer", "name", vb, "netns", b,
        ])?;
        for (ns, dev, addr) in [(g, vg, GANDALF_IP), (b, vb, BILBO_IP)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX}"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        let etc = hosts.etc_dir(b);
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{BILBO_IP} bilbo\n{GANDALF_IP} gandalf\n"),
        )
        .map_err(|e| format!("{}/hosts: {e}", etc.display()))?;
        Ok(hosts)
    }

    fn etc_dir(&self, ns: &str) -> PathBuf {
        Path::new("/etc/netns").join(ns)
    }

    /// `ip netns exec NS program args...`.
    fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in [&self.gandalf, &self.bilbo] {
            let _ = quiet_ip(&["netns", "delete", ns]);
            let _ = std::fs::remove_dir_all(self.etc_dir(ns));
        }
        // Only removed when empty: another run's directory keeps it.
        let _ = std::fs::remove_dir("/etc/netns");
        // Only there if moving it into its namespace failed.
        for dev in [&self.veth_gandalf, &self.veth_bilbo] {
            let _ = quiet_ip(&["link", "delete", dev]);
        }
    }
}

/// Runs `ip ARGS`; the error names the command and says what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn quiet_ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// Why namespaces cannot be made here, if they cannot.
fn cannot_run() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "it must run as root to create network namespaces (effective uid {uid})"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("iproute2's `ip` is missing (apt-get install iproute2)".to_owned()),
    }
}

/// Fails, or with `LIB_CHAN_SKIP_NETNS=1` returns `true` (skip), explaining why.
fn skip_or_fail(why: &str) -> bool {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("two_hosts: SKIPPED because {why} ({SKIP_VAR}=1)");
        return true;
    }
    panic!(
        "two_hosts cannot run: {why}. It creates two network namespaces; run it as root \
         with iproute2 installed (CI does), or set {SKIP_VAR}=1 to skip it."
    );
}

/// Runs `cmd` to its end within [`COMMAND_TIMEOUT`], killing it if it takes longer.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lib_chan ARGS` on bilbo, with the book's password in the environment.
fn lib_chan_on_bilbo(net: &TwoHosts, args: &[&str]) -> Output {
    run(net
        .exec(&net.bilbo, BIN)
        .args(args)
        .env("LIB_CHAN_PASSWORD", common::PASSWORD))
}

#[test]
fn two_machines_gandalf_serves_bilbo() {
    if let Some(why) = cannot_run() {
        if skip_or_fail(&why) {
            return;
        }
    }
    let net = match TwoHosts::create() {
        Ok(net) => net,
        Err(why) => {
            if skip_or_fail(&format!("the namespaces could not be made: {why}")) {
                return;
            }
            unreachable!()
        }
    };

    // gandalf: a certificate for its name, and the server on its address.
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let out = run(Command::new(BIN)
        .args(["gen-cert", "--host", "gandalf", "--out"])
        .arg(&certs));
    assert!(out.status.success(), "gen-cert: {}", text(&out.stderr));
    let ca = certs.join("ca.pem");
    let conf = write_config(
        dir.path(),
        GANDALF_IP,
        &certs.join("server.pem"),
        &certs.join("server.key"),
        &common::password_hash(),
        "",
    );
    let mut serve = net.exec(&net.gandalf, BIN);
    serve.arg("serve").arg("--config").arg(&conf);
    let server = ServeProcess::spawn(serve);
    let addr = format!("gandalf:{}", server.port);
    let ca_arg = ca.to_str().unwrap();

    // (a) The seed session with the command line, on bilbo, dialling gandalf by name.
    let out = lib_chan_on_bilbo(
        &net,
        &[
            "cast",
            &addr,
            "nameServer",
            r#"{store, joe, "writing a book"}"#,
            "--ca",
            ca_arg,
        ],
    );
    assert!(out.status.success(), "cast: {}", text(&out.stderr));
    let lookup = |key: &str, extra: &[&str]| {
        let request = format!("{{lookup, {key}}}");
        let mut args = vec!["rpc", &addr, "nameServer", &request, "--ca", ca_arg];
        args.extend_from_slice(extra);
        lib_chan_on_bilbo(&net, &args)
    };
    let out = lookup("joe", &[]);
    assert!(out.status.success(), "rpc: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{ok,\"writing a book\"}\n");
    let out = lookup("jim", &[]);
    assert!(out.status.success(), "rpc: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "undefined\n");

    // The certificate check: it holds `gandalf` and nothing else.
    let out = lookup("joe", &["--servername", "other"]);
    assert!(
        !out.status.success(),
        "a certificate for gandalf passed as `other`"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("TLS handshake") && err.contains("not valid for") && err.contains("other"),
        "no clear certificate name error: {err}"
    );
    let by_address = format!("{GANDALF_IP}:{}", server.port);
    let out = lib_chan_on_bilbo(
        &net,
        &[
            "rpc",
            &by_address,
            "nameServer",
            "{lookup, joe}",
            "--ca",
            ca_arg,
        ],
    );
    assert!(
        !out.status.success(),
        "the certificate passed for {GANDALF_IP}"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("not valid for") && err.contains(GANDALF_IP),
        "no clear certificate name error: {err}"
    );
    // Dialling the address and checking the name gandalf works.
    let out = lib_chan_on_bilbo(
        &net,
        &[
            "rpc",
            &by_address,
            "nameServer",
            "{lookup, joe}",
            "--ca",
            ca_arg,
            "--servername",
            "gandalf",
        ],
    );
    assert!(
        out.status.success(),
        "--servername gandalf: {}",
        text(&out.stderr)
    );

    // (b) The seed session with the Rust client library, in a process on bilbo.
    let me = std::env::current_exe().expect("the test binary's path");
    let out = run(net
        .exec(&net.bilbo, &me)
        .args([
            "bilbo_side_rust_client",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADDR_VAR, &addr)
        .env(CA_VAR, &ca)
        .env_remove(SKIP_VAR));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the Rust client on bilbo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("bilbo: rust client seed session ok"),
        "the client half did not run\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // What the Rust client stored is on gandalf.
    let out = lookup("bilbo", &[]);
    assert!(out.status.success(), "rpc: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{ok,\"there and back again\"}\n");

    // The server saw its clients come from bilbo's address, over the veth link.
    let log = server.kill();
    assert!(
        log.lines().any(|l| l.contains("lib_chan::audit: login")
            && l.contains("outcome=\"ok\"")
            && l.contains(&format!("{BILBO_IP}:"))),
        "no connection from {BILBO_IP} in the server's log:\n{log}"
    );
}

/// The client half, run inside bilbo by `two_machines_gandalf_serves_bilbo`.
#[test]
#[ignore = "run inside bilbo's network namespace by two_machines_gandalf_serves_bilbo"]
fn bilbo_side_rust_client() {
    let (Ok(addr), Ok(ca)) = (std::env::var(ADDR_VAR), std::env::var(CA_VAR)) else {
        eprintln!(
            "bilbo_side_rust_client: nothing to do outside two_machines_gandalf_serves_bilbo"
        );
        return;
    };
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let port: u16 = port.parse().expect("port");
    // bilbo's hosts file is in place: gandalf is the benchmarking-range address.
    let resolved: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .expect("gandalf resolves on bilbo")
        .collect();
    assert!(
        resolved.iter().all(|a| a.ip().to_string() == GANDALF_IP),
        "{host} resolved to {resolved:?}"
    );

    use lib_chan_client::{term, ConnectOptions, Error, Term};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = ConnectOptions::new()
            .ca_file(&ca)
            .connect_timeout(Duration::from_secs(10))
            .handshake_timeout(Duration::from_secs(10))
            .rpc_timeout(Duration::from_secs(10));
        let chan = options
            .clone()
            .connect(host, port, "nameServer", common::PASSWORD, Term::nil())
            .await
            .expect("connect to gandalf from bilbo");
        chan.cast(term!({store, bilbo, "there and back again"}))
            .await
            .unwrap();
        assert_eq!(
            chan.rpc(term!({lookup, joe})).await.unwrap(),
            term!({ok, "writing a book"})
        );
        assert_eq!(
            chan.rpc(term!({lookup, jim})).await.unwrap(),
            term!(undefined)
        );
        assert_eq!(
            chan.rpc(term!({lookup, bilbo})).await.unwrap(),
            term!({ok, "there and back again"})
        );
        chan.close().await;

        // The certificate holds gandalf only: by address, the check fails, clearly...
        match options
            .clone()
            .connect(
                GANDALF_IP,
                port,
                "nameServer",
                common::PASSWORD,
                Term::nil(),
            )
            .await
        {
            Err(Error::Tls { message, .. }) => assert!(
                message.contains("not valid for") && message.contains(GANDALF_IP),
                "{message}"
            ),
            other => panic!("dialling {GANDALF_IP} without a name override: {other:?}"),
        }
        // ... and with the name to check set to gandalf, it passes.
        let chan = options
            .server_name("gandalf")
            .connect(
                GANDALF_IP,
                port,
                "nameServer",
                common::PASSWORD,
                Term::nil(),
            )
            .await
            .expect("by address, checking the name gandalf");
        assert_eq!(
            chan.rpc(term!({lookup, joe})).await.unwrap(),
            term!({ok, "writing a book"})
        );
        chan.close().await;
    });
    println!("bilbo: rust client seed session ok");
}
