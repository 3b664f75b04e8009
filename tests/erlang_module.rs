//! The Erlang client module `clients/erlang/lib_chan_tls.erl`, compiled with `erlc` and
//! driven by `tests/erlang/lib_chan_tls_test.escript` against the Rust server: the
//! book's session through the book's API, pushes, closes, errors, and the handling of
//! atoms the Erlang node does not know.
//!
//! Erlang is required: without `erlc` or `escript` these tests fail and say which Debian
//! packages to install.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{within, TestServer};
use lib_chan_client::Term;

/// How long one scenario may run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "install Erlang/OTP from Debian: apt-get install erlang-base \
     erlang-crypto erlang-ssl erlang-public-key erlang-asn1 (erlang-base has erl, erlc and escript)";

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/erlang/lib_chan_tls.erl")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erlang/lib_chan_tls_test.escript")
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

/// One run of the test escript, killed when dropped.
struct Escript {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Escript {
    /// `escript lib_chan_tls_test.escript BEAM_DIR localhost PORT CERT_DIR SCENARIO ARGS`,
    /// with `LIB_CHAN_CA` set to the server's CA and a `HOME` of its own.
    fn start(
        beam: &Path,
        port: u16,
        cert_dir: &Path,
        home: &Path,
        scenario: &str,
        args: &[&str],
    ) -> Escript {
        let mut child = Command::new("escript")
            .arg(script())
            .arg(beam)
            .arg("localhost")
            .arg(port.to_string())
            .arg(cert_dir)
            .arg(scenario)
            .args(args)
            .env("LIB_CHAN_CA", cert_dir.join("ca.pem"))
            .env("HOME", home)
            .env_remove("LIB_CHAN_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run escript ({e}): {INSTALL_HINT}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let pipe = child.stdout.take().expect("piped");
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut pipe = child.stderr.take().expect("piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Escript {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits (bounded) until the script prints `expected` on a line of its own.
    fn wait_line(&self, expected: &str) {
        let deadline = Instant::now() + SCENARIO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => continue,
                Err(e) => panic!("no line {expected:?} ({e})\n{}", self.output()),
            }
        }
    }

    /// Waits (bounded) for the script to end and checks that it succeeded and printed
    /// every line of `expected`.
    fn finish(mut self, expected: &[&str]) {
        let deadline = Instant::now() + SCENARIO_TIMEOUT;
        // The stdout thread ends (and drops its sender) when the script exits.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the escript did not finish in time\n{}", self.output())
                }
            }
        }
        let status = self.child.wait().expect("wait for escript");
        let output = self.output();
        assert!(status.success(), "the escript failed ({status})\n{output}");
        for line in expected {
            assert!(
                output.lines().any(|l| l == *line),
                "no line {line:?}\n{output}"
            );
        }
    }
}

impl Drop for Escript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scenario` to its end in a blocking task, so the in-process server keeps running.
async fn run(server: &TestServer, scenario: &'static str, expected: &'static [&'static str]) {
    let beam = compile();
    let home = tempfile::tempdir().expect("temp dir");
    let port = server.addr.port();
    let cert_dir = server.dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        Escript::start(beam.path(), port, &cert_dir, home.path(), scenario, &[]).finish(expected)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn erlang_module_runs_the_book_session_and_reports_errors() {
    let server = TestServer::start().await;
    run(
        &server,
        "seed",
        &[
            "seed session",
            "50 concurrent callers",
            "call errors",
            "connect errors",
            "default CA from the data directory",
            "disconnect",
            "seed ok",
        ],
    )
    .await;
    // The cast and the calls reached the real name server.
    let chan = server.connect("nameServer").await;
    assert_eq!(
        within("lookup", chan.rpc(lib_chan_client::term!({lookup, joe})))
            .await
            .unwrap(),
        lib_chan_client::term!({ok, "writing a book"})
    );
}

#[tokio::test]
async fn erlang_module_starts_resumes_and_ends_sessions() {
    let server = TestServer::start().await;
    run(
        &server,
        "session",
        &[
            "session started",
            "session resumed",
            "close ended the session",
            "session ok",
        ],
    )
    .await;
}

#[tokio::test]
async fn erlang_module_delivers_pushes_and_closes() {
    let server = TestServer::start().await;
    run(
        &server,
        "push",
        &[
            "watch pushes",
            "send answered by send",
            "echo",
            "closed by the service",
            "owner exit closes",
            "push ok",
        ],
    )
    .await;
}

#[tokio::test]
async fn erlang_module_never_creates_atoms_the_server_forwards() {
    let server = TestServer::start().await;
    let beam = compile();
    let home = tempfile::tempdir().expect("temp dir");
    // A name the Erlang node cannot have seen: it comes from this process only.
    let name = format!("lib_chan_unseen_{}_{}", std::process::id(), rand_suffix());
    let port = server.addr.port();
    let cert_dir = server.dir.path().to_owned();
    let arg = name.clone();
    let script = tokio::task::spawn_blocking(move || {
        let s = Escript::start(
            beam.path(),
            port,
            &cert_dir,
            home.path(),
            "unknown_atoms",
            &[&arg],
        );
        s.wait_line("watching");
        (s, beam, home)
    })
    .await
    .unwrap();

    // Another client (this one, in Rust) stores a value naming the atom.
    let chan = server.connect("nameServer").await;
    let value = Term::tuple([Term::atom("made_elsewhere"), Term::atom(&name)]);
    let stored = within(
        "store",
        chan.rpc(Term::tuple([Term::atom("store"), Term::atom("joe"), value])),
    )
    .await
    .unwrap();
    assert_eq!(stored, Term::atom("true"));

    tokio::task::spawn_blocking(move || {
        let (s, _beam, _home) = script;
        s.finish(&[
            "unknown atoms not created",
            "decoded on request",
            "unknown_atoms ok",
        ])
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn erlang_module_ignores_unknown_welcome_keys_and_refuses_bad_frames() {
    // A scripted Erlang TLS server inside the escript; only the certificates are ours.
    let (certs_dir, _paths) = common::make_certs();
    let beam = compile();
    let home = tempfile::tempdir().expect("temp dir");
    let cert_dir = certs_dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        Escript::start(beam.path(), 0, &cert_dir, home.path(), "lenient", &[]).finish(&[
            "welcome with an unknown key accepted",
            "reply and push kept undecoded",
            "a bad frame closes the channel",
            "lenient ok",
        ])
    })
    .await
    .unwrap();
}

/// A few characters that differ between runs, without a random number crate.
fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}")
}
