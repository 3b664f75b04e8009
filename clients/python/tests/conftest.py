"""Shared fixtures: the package on ``sys.path``, and a real ``lib_chan serve`` for the client tests.

The server fixture uses ``$LIB_CHAN_BIN`` if set, else the newer of
``target/release/lib_chan`` and ``target/debug/lib_chan`` in the repository, else runs
``cargo build --release --bin lib_chan``. When none of that gives a binary that starts,
the tests using it *fail* (``pytest.fail``), never skip.

It writes into a temporary directory: development certificates (``lib_chan gen-cert``),
argon2id hashes (``lib_chan hash-password``), an Ed25519 key for a key-login user (if
the ``cryptography`` package is there), a client certificate for a certificate-login
user (``lib_chan gen-cert --client`` when the binary has it, else ``openssl`` signing
with the development CA), and a config with the name server and three users; then it
starts ``lib_chan serve --config CONF`` on port 0 and reads the port from the line
``listening on 127.0.0.1:PORT`` on its standard output.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
PKG = HERE.parent
REPO = PKG.parent.parent
sys.path.insert(0, str(PKG))

SERVICE_PASSWORD = "ABXy45"
ALICE_PASSWORD = "alice's own secret"


def find_binary() -> Path:
    env = os.environ.get("LIB_CHAN_BIN")
    if env:
        if not os.access(env, os.X_OK):
            pytest.fail(f"LIB_CHAN_BIN={env} is not an executable")
        return Path(env)
    found = [p for p in (REPO / "target/release/lib_chan", REPO / "target/debug/lib_chan")
             if p.is_file() and os.access(p, os.X_OK)]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("no lib_chan binary in target/ and no cargo to build one")
    build = subprocess.run([cargo, "build", "--release", "--bin", "lib_chan"], cwd=REPO,
                           capture_output=True, text=True)
    binary = REPO / "target/release/lib_chan"
    if build.returncode != 0 or not binary.is_file():
        pytest.fail(f"cargo build --release --bin lib_chan failed:\n{build.stderr[-4000:]}")
    return binary


def run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    if p.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def hash_password(binary: Path, password: str) -> str:
    out = run([binary, "hash-password"], input=password + "\n").stdout.strip().splitlines()
    phc = [line for line in out if line.startswith("$argon2id$")]
    if not phc:
        pytest.fail(f"hash-password printed no argon2id hash: {out}")
    return phc[-1]


def client_certificate(binary: Path, certs: Path, work: Path, name: str) -> tuple[Path, Path]:
    """A client certificate and key for ``name``: from ``gen-cert --client`` if the binary
    has it, else made with openssl and signed by the development CA."""
    help_text = subprocess.run([str(binary), "gen-cert", "--help"], capture_output=True, text=True).stdout
    if "--client" in help_text:
        out = work / "gen-client"
        out.mkdir()
        shutil.copy(certs / "ca.pem", out / "ca.pem")
        shutil.copy(certs / "ca.key", out / "ca.key")
        p = subprocess.run([str(binary), "gen-cert", "--out", str(out), "--client", name],
                           capture_output=True, text=True, timeout=60)
        cert, key = out / f"{name}.pem", out / f"{name}.key"
        if p.returncode == 0 and cert.is_file() and key.is_file():
            return cert, key
    if shutil.which("openssl") is None:
        pytest.fail("no openssl to make a client certificate, and gen-cert has no --client")
    key, csr, cert, ext = (work / f"{name}.key", work / f"{name}.csr", work / f"{name}.pem", work / "ext.cnf")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-subj", f"/CN={name}", "-out", csr])
    ext.write_text("keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", certs / "ca.pem", "-CAkey", certs / "ca.key",
         "-CAcreateserial", "-days", "3650", "-extfile", ext, "-out", cert])
    os.chmod(key, 0o600)
    return cert, key


def cert_sha256(pem_path: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem_path.read_text().split("-----END CERTIFICATE-----")[0]
                                   + "-----END CERTIFICATE-----\n")
    return hashlib.sha256(der).hexdigest()


def ed25519_key(path: Path) -> Optional[str]:
    """Writes a new Ed25519 key (PKCS#8 PEM, mode 0600) and returns its public key in
    base64; None without the cryptography package."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        return None
    k = Ed25519PrivateKey.generate()
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass
class Server:
    binary: Path
    dir: Path
    port: int
    ca: Path
    proc: subprocess.Popen
    client_cert: Path
    client_key: Path
    bob_key: Optional[Path]
    log: Path
    conf: Path
    stdout: list = field(default_factory=list)


@pytest.fixture(scope="session")
def lib_chan_bin() -> Path:
    return find_binary()


@pytest.fixture(scope="session")
def server(lib_chan_bin: Path, tmp_path_factory) -> Server:
    d = tmp_path_factory.mktemp("lib_chan_server")
    certs = d / "certs"
    run([lib_chan_bin, "gen-cert", "--out", certs, "--host", "localhost", "--host", "127.0.0.1"])
    service_hash = hash_password(lib_chan_bin, SERVICE_PASSWORD)
    alice_hash = hash_password(lib_chan_bin, ALICE_PASSWORD)
    carol_cert, carol_key = client_certificate(lib_chan_bin, certs, d, "carol")
    bob_key = d / "bob.key"
    bob_pub = ed25519_key(bob_key)
    bob = (f'[[user]]\nname = "bob"\nservices = ["nameServer"]\ned25519 = "{bob_pub}"\n'
           if bob_pub else "")
    conf = d / "lib_chan.conf"
    conf.write_text(f"""\
port = 0
bind = "127.0.0.1"

[limits]
# The tests fail logins on purpose: keep loopback out of the per-source penalties.
penalty_exempt = ["127.0.0.0/8"]

[tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[service]]
name = "nameServer"
password = "{service_hash}"
handler = "mod_name_server"
args = "notUsed"

# Port programs (PROTOCOL.md section 9): this package's example name server, and the
# book's own mod_name_server run by clients/erlang/lib_chan_port.erl.
[[service]]
name = "pyNames"
password = "{service_hash}"
handler = "port"
command = ["{sys.executable}", "{PKG / 'examples' / 'name_server.py'}"]

[[service]]
name = "bookNames"
password = "{service_hash}"
handler = "port"
command = ["escript", "{REPO / 'clients' / 'erlang' / 'examples' / 'name_server.escript'}"]

[[user]]
name = "alice"
services = ["nameServer"]
password = "{alice_hash}"

[[user]]
name = "carol"
services = ["nameServer"]
cert_sha256 = "{cert_sha256(carol_cert)}"

{bob}""")
    proc, port, lines, stop = start_server(lib_chan_bin, conf, d / "server.log")
    srv = Server(lib_chan_bin, d, port, certs / "ca.pem", proc, carol_cert, carol_key,
                 bob_key if bob_pub else None, d / "server.log", conf, lines)
    yield srv
    stop()


def start_server(binary: Path, conf: Path, log: Path):
    """Starts ``lib_chan serve --config CONF``; returns (process, port, stdout lines,
    stop). Fails the test when it does not come up."""
    env = dict(os.environ, LIB_CHAN_HOME=str(conf.parent), RUST_LOG="info")
    env.pop("LIB_CHAN_PASSWORD", None)
    logf = open(log, "ab")
    try:
        proc = subprocess.Popen([str(binary), "serve", "--config", str(conf)], cwd=conf.parent, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf)
    except OSError as e:
        logf.close()
        pytest.fail(f"cannot run {binary}: {e}")
    lines: list = []
    port_box: list = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if line.startswith("listening on 127.0.0.1:") and not port_box:
                port_box.append(int(line.rsplit(":", 1)[1]))
                ready.set()
        ready.set()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pumper.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        logf.close()

    if not ready.wait(60) or not port_box:
        stop()
        pytest.fail(f"lib_chan serve did not say 'listening on 127.0.0.1:PORT' "
                    f"(exit {proc.poll()}):\nstdout: {lines}\nlog:\n{log.read_text()[-4000:]}")
    return proc, port_box[0], lines, stop


@pytest.fixture
def own_server(server: Server):
    """A second server with the same config, for tests that stop it."""
    proc, port, lines, stop = start_server(server.binary, server.conf, server.dir / "own_server.log")
    yield port, proc
    stop()
