//! What ships besides the binary: the systemd unit `packaging/lib_chan.service` is
//! checked with `systemd-analyze` (Debian's systemd package; scripts/test.sh installs it
//! when missing): it must load without a warning, and its sandboxing must keep the
//! exposure score `systemd-analyze security` gives it low; and `lib_chan serve` speaks
//! sd_notify (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) as its `Type=notify` asks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The unit as shipped.
fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/lib_chan.service");
    std::fs::read_to_string(path).expect("packaging/lib_chan.service")
}

/// A copy of the unit whose ExecStart names the binary under test, since `verify`
/// refuses a unit whose program does not exist.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let text = unit_text();
    let installed = "ExecStart=/usr/local/bin/lib_chan ";
    assert!(text.contains(installed), "ExecStart changed: {text}");
    let text = text.replace(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_lib_chan")),
    );
    let unit = dir.join("lib_chan.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (Debian package systemd; scripts/test.sh installs it)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_systemd_unit_loads_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = systemd_analyze(&["verify"], &unit);
    // verify exits 0 on unknown keys and bad values, which it only warns about.
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "",
        "warnings from systemd-analyze verify"
    );
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    // An exposure of at most 2.0 on systemd's 0 to 10 scale ("OK"); the unit as
    // shipped scores about 1.1.
    let out = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &unit);
    assert!(
        out.status.success(),
        "exposure too high:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // And the options this project relies on are there, as written.
    let unit = unit_text();
    for line in [
        "User=lib_chan",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "ReadOnlyPaths=/etc/lib_chan",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
}

mod common;
mod serve_process;

/// Under `Type=notify` with `WatchdogSec`: `lib_chan serve` sends `READY=1` once it
/// listens, `WATCHDOG=1` at half the interval, and `STOPPING=1` on SIGTERM, on the socket
/// systemd names in `$NOTIFY_SOCKET` (here one the test listens on).
#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (cert_dir, certs) = common::make_certs();
    let conf = serve_process::write_config(
        cert_dir.path(),
        "127.0.0.1",
        &certs.cert,
        &certs.key,
        &common::password_hash(),
        "",
    );
    // systemd names the watched process in WATCHDOG_PID: the shell's pid is the server's
    // after exec.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec '{}' serve --config '{}'",
            serve_process::BIN,
            conf.display()
        ))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let serve = serve_process::ServeProcess::spawn(cmd);
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next().trim(), "READY=1");
    let started = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        assert_eq!(next().trim(), "WATCHDOG=1");
        pings += 1;
    }
    // Four pings at 100 ms intervals: not a burst, not late.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    serve.signal("TERM");
    loop {
        let m = next();
        if m.trim() == "STOPPING=1" {
            break;
        }
        assert_eq!(m.trim(), "WATCHDOG=1", "only pings before STOPPING");
    }
    drop(serve);
}
