//! `lib_chan serve` as a child process, for tests that need a real server process: one
//! they can freeze with SIGSTOP (`keepalive.rs`) or start inside a network namespace
//! (`two_hosts.rs`).
//!
//! The port is read from the server's one stable stdout line, `listening on ADDR`, so
//! configs use port 0. Standard error is kept for failure messages. Dropping a
//! [`ServeProcess`] resumes (SIGCONT) and kills the server, so a failing test never
//! leaves one behind.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The `lib_chan` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lib_chan");

/// How long a server may take to print `listening on ADDR`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `lib_chan serve`, resumed and killed when dropped.
pub struct ServeProcess {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// The lines it printed on standard output before `listening on ADDR`, e.g.
    /// `metrics listening on ADDR`.
    pub banner: Vec<String>,
    /// What it wrote on standard error so far.
    stderr: Arc<Mutex<String>>,
    /// The thread collecting standard error; it ends when the server does.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts `lib_chan serve --config CONFIG`.
    pub fn start(config: &Path) -> ServeProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(config);
        ServeProcess::spawn(cmd)
    }

    /// Runs `cmd` (which must end up running `lib_chan serve`, e.g. through
    /// `ip netns exec NS`) and waits for its `listening on ADDR` line.
    ///
    /// # Panics
    /// When it cannot start, or exits or stays silent instead of listening.
    pub fn spawn(mut cmd: Command) -> ServeProcess {
        cmd.env_remove("LIB_CHAN_PASSWORD")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServeProcess {
            child,
            port: 0,
            banner: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        loop {
            let line = match rx.recv_timeout(START_TIMEOUT) {
                Ok(line) => line,
                Err(e) => panic!(
                    "`lib_chan serve` printed no `listening on ADDR` ({e}); stderr:\n{}",
                    server.stderr()
                ),
            };
            let port = line
                .strip_prefix("listening on ")
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok());
            if let Some(port) = port {
                server.port = port;
                return server;
            }
            server.banner.push(line);
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The metrics endpoint's address, from its `metrics listening on ADDR` line.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix("metrics listening on ")?.parse().ok())
    }

    /// Sends `signal` (a name such as `STOP`, `CONT`, `TERM`) with kill(1).
    ///
    /// # Panics
    /// When kill(1) fails.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Sends SIGSTOP and returns once every thread of the server is stopped (kill(1)
    /// returns when the signal is sent; threads running on other cores stop a little
    /// later, and could still answer meanwhile).
    ///
    /// # Panics
    /// When the server is not stopped within 5 s.
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let all_stopped = std::fs::read_dir(&tasks)
                .expect("the server's /proc entry")
                .filter_map(Result::ok)
                .all(|task| {
                    // The state follows the parenthesised command name: `pid (comm) T ...`.
                    std::fs::read_to_string(task.path().join("stat"))
                        .ok()
                        .and_then(|stat| {
                            stat.rsplit_once(')')
                                .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                        })
                        .unwrap_or(true)
                });
            if all_stopped {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server's threads did not all stop after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What the server wrote on standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills the server and returns everything it wrote on standard error.
    pub fn kill(mut self) -> String {
        self.stop();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr()
    }

    fn stop(&mut self) {
        // A stopped process would not die of SIGTERM; SIGKILL works either way, and
        // SIGCONT first keeps the kernel's bookkeeping simple.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `DIR/lib_chan.conf`: a server on `bind`, port 0, with the TLS pair
/// `cert`/`key`, the services `nameServer` (mod_name_server) and `echo` (mod_echo)
/// behind `password_hash`, and `limits` (TOML lines for the `[limits]` table, or "").
pub fn write_config(
    dir: &Path,
    bind: &str,
    cert: &Path,
    key: &Path,
    password_hash: &str,
    limits: &str,
) -> PathBuf {
    let mut body = format!(
        "port = 0\nbind = \"{bind}\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[limits]\n{limits}\n",
        cert.display(),
        key.display(),
    );
    for (name, handler) in [("nameServer", "mod_name_server"), ("echo", "mod_echo")] {
        body.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\npassword = \"{password_hash}\"\nhandler = \"{handler}\"\nargs = \"notUsed\"\n"
        ));
    }
    let conf = dir.join("lib_chan.conf");
    std::fs::write(&conf, body).expect("write the config");
    conf
}
