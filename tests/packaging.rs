//! What ships besides the binary: the systemd unit `packaging/lib_chan.service` is
//! checked with `systemd-analyze` (Debian's systemd package; scripts/test.sh installs it
//! when missing): it must load without a warning, and its sandboxing must keep the
//! exposure score `systemd-analyze security` gives it low.

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
