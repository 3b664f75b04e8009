#!/usr/bin/env bash
# Installs what the tests need (Debian packages: Erlang for the interop and port
# tests, redis-server for the name server's Redis store tests; pytest for the Python
# package) and runs the whole suite: formatting, lints, every test. The README's test command; .ci/run
# runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! command -v erl >/dev/null || ! command -v escript >/dev/null || ! command -v erlc >/dev/null \
   || ! erl -noshell -eval '{ok, _} = application:ensure_all_started(ssl), halt().' >/dev/null 2>&1; then
  need+=(erlang-base erlang-crypto erlang-ssl erlang-public-key erlang-asn1)
fi
if ! command -v redis-server >/dev/null; then
  need+=(redis-server)
fi
# tests/two_hosts.rs makes two network namespaces with iproute2's `ip` (as root).
if ! command -v ip >/dev/null && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  need+=(iproute2)
fi
# tests/manuals.rs renders the generated man pages with man(1).
if ! command -v man >/dev/null; then
  need+=(man-db)
fi
# tests/packaging.rs checks the systemd unit with systemd-analyze.
if ! command -v systemd-analyze >/dev/null; then
  need+=(systemd)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
# One crypto provider only: with aws-lc-rs compiled in beside ring, rustls's implicit
# provider choice panics at run time.
if cargo tree --workspace -i aws-lc-sys >/dev/null 2>&1; then
  echo "aws-lc-sys is in the dependency tree: keep rustls on the ring provider" >&2
  exit 1
fi
cargo clippy --workspace --all-targets -- -D warnings
# The library crates' API docs build without a warning (broken links, missing docs).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q \
  -p lib_chan_protocol -p lib_chan_client -p lib_chan_server -p lib_chan_services
# The two crates other programs depend on have a publishable layout.
for crate in lib_chan_client lib_chan_server; do
  cargo package --list --allow-dirty -q -p "$crate" 2>/dev/null | grep -qx README.md \
    || { echo "$crate: cargo package --list lacks README.md" >&2; exit 1; }
done
status=0
cargo test --workspace --no-fail-fast || status=$?

# The Python client and port-program package (clients/python), against the debug
# binary the cargo tests just built. pytest from PyPI; cryptography for its key logins.
if ! python3 -c 'import pytest, cryptography' 2>/dev/null; then
  python3 -m pip install -q pytest cryptography
fi
LIB_CHAN_BIN="$PWD/target/debug/lib_chan" python3 -m pytest -q clients/python/tests || status=$?

# The Debian package (packaging/deb.sh), made from the debug binary the cargo tests just
# built (no release build), checked, installed with dpkg, used and purged: as root only
# (a note otherwise). About 12 s, plus 1 m 45 s on 2 cores the first time, to install
# cargo-deb.
bash packaging/test-deb.sh || status=$?
if [ "$status" -ne 0 ]; then
  exit "$status"
fi

# Fuzzing smoke run: every target in fuzz/ for 10 s. cargo-fuzz needs the nightly
# toolchain; a stable-only machine skips this step (not a failure). From a clean state on
# 2 cores the release build with AddressSanitizer takes about 8.5 minutes (plus 1 to 2.5
# to install cargo-fuzz), so CI builds without optimisation or ASan: about 3.5 minutes,
# 4.5 with the runs. `bash scripts/fuzz.sh` (release, ASan) is the one to run for longer.
if cargo +nightly --version >/dev/null 2>&1; then
  FUZZ_BUILD="${FUZZ_BUILD:---dev -s none}" bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
else
  echo "note: fuzzing skipped: no nightly toolchain (cargo-fuzz needs it; rustup toolchain install nightly)"
fi
