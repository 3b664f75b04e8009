#!/usr/bin/env bash
# The Debian package, built from the debug binary `cargo test` left (packaging/deb.sh
# --debug: no second build), checked, installed on this machine, used and purged:
# every asset is in it, `dpkg -i` (the package is lib-chan: Debian names have no `_`) creates the user lib_chan, `lib_chan --version`
# answers, the unit loads without a warning in systemd-analyze, the man pages render,
# the completions load, and `dpkg --purge` takes it all away. scripts/test.sh runs it
# after the cargo tests.
#
# Root only (dpkg -i): anyone else gets a note and exit 0. Installs cargo-deb when it is
# missing. Refuses to run where the lib-chan package is already installed (it would
# replace and then purge it). Exits non-zero on any failure; its last line is a summary
# with the time each step took.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "note: the .deb install test skipped: it needs root (dpkg -i); run packaging/test-deb.sh as root"
  exit 0
fi
if ! command -v dpkg >/dev/null; then
  echo "note: the .deb install test skipped: no dpkg (not a Debian system)"
  exit 0
fi
if dpkg-query -W -f='${Status}' lib-chan 2>/dev/null | grep -q 'installed'; then
  echo "deb test: the lib-chan package is installed on this machine; the test would replace and purge it (dpkg --purge lib-chan first)" >&2
  exit 1
fi

passed=0
failed=0
times=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Seconds since START (from `date +%s%N`), to a tenth.
elapsed() {
  local ds=$((($(date +%s%N) - $1) / 100000000))
  echo "$((ds / 10)).$((ds % 10))"
}

# step NAME COMMAND...: runs it, times it, counts it; its output is shown only if it fails.
step() {
  local name=$1 start secs
  shift
  start=$(date +%s%N)
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    secs=$(elapsed "$start")
    times+=("$name ${secs}s")
    echo "ok    $name (${secs} s)"
  else
    failed=$((failed + 1))
    secs=$(elapsed "$start")
    times+=("$name FAILED")
    echo "FAIL  $name (${secs} s):"
    sed 's/^/      /' "$log" | tail -40
  fi
}

# What the package must install.
assets=(
  /usr/bin/lib_chan
  /usr/lib/systemd/system/lib_chan.service
  /usr/lib/sysusers.d/lib_chan.conf
  /etc/lib_chan/lib_chan.conf.example
  /usr/share/man/man1/lib_chan.1.gz
  /usr/share/man/man1/lib_chan-serve.1.gz
  /usr/share/bash-completion/completions/lib_chan
  /usr/share/zsh/vendor-completions/_lib_chan
  /usr/share/fish/vendor_completions.d/lib_chan.fish
)
deb=""

install_cargo_deb() {
  # 3.8 packages a dev-profile binary with a warning; a later release may refuse to.
  cargo deb --version || cargo install --locked cargo-deb --version 3.8.0
}

build_deb() {
  bash packaging/deb.sh --debug || return 1
  deb=$(ls "${CARGO_TARGET_DIR:-target}"/debian/lib-chan_*.deb) || return 1
  echo "$deb"
}

contents() {
  local listing path missing=0
  listing=$(dpkg-deb -c "$deb") || return 1
  for path in "${assets[@]}"; do
    if ! grep -q " \.$path\$" <<<"$listing"; then
      echo "not in the package: $path"
      missing=1
    fi
  done
  # The unit as packaged runs the packaged binary; the example config is a conffile.
  dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/lib/systemd/system/lib_chan.service \
    | grep -x 'ExecStart=/usr/bin/lib_chan serve --config /etc/lib_chan/lib_chan.conf' \
    || { echo "the packaged unit's ExecStart is not /usr/bin/lib_chan"; missing=1; }
  dpkg-deb -I "$deb" conffiles | grep -x /etc/lib_chan/lib_chan.conf.example \
    || { echo "lib_chan.conf.example is not a conffile"; missing=1; }
  return "$missing"
}

install_deb() {
  DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
}

version() {
  local want out
  want=$(dpkg-deb -f "$deb" Version)
  want=${want%-*}
  out=$(/usr/bin/lib_chan --version) || return 1
  echo "$out"
  [ "$out" = "lib_chan $want" ] || { echo "expected: lib_chan $want"; return 1; }
}

user() {
  if ! command -v systemd-sysusers >/dev/null; then
    echo "no systemd-sysusers: the postinst creates no user"
    return 0
  fi
  getent passwd lib_chan
}

verify_unit() {
  local err
  err=$(systemd-analyze verify /usr/lib/systemd/system/lib_chan.service 2>&1 >/dev/null) \
    || { echo "$err"; return 1; }
  [ -z "$err" ] || { echo "warnings: $err"; return 1; }
}

listed() {
  local listing path missing=0
  listing=$(dpkg -L lib-chan) || return 1
  for path in "${assets[@]}"; do
    grep -qx "$path" <<<"$listing" || { echo "dpkg -L lacks $path"; missing=1; }
    [ -e "$path" ] || { echo "not on disk: $path"; missing=1; }
  done
  return "$missing"
}

man_page() {
  local out
  out=$(MANWIDTH=80 man -P cat -l /usr/share/man/man1/lib_chan-serve.1.gz 2>&1) \
    || { echo "$out"; return 1; }
  grep -q 'lib_chan-serve' <<<"$out" && grep -q -- '--config' <<<"$out" \
    || { echo "the page does not read as lib_chan-serve's: $out"; return 1; }
}

completions() {
  bash -c 'source /usr/share/bash-completion/completions/lib_chan && complete -p lib_chan'
}

purge() {
  local path left=0
  DEBIAN_FRONTEND=noninteractive dpkg --purge lib-chan || return 1
  for path in "${assets[@]}"; do
    [ ! -e "$path" ] || { echo "still there after purge: $path"; left=1; }
  done
  if dpkg-query -W -f='${Status}' lib-chan 2>/dev/null | grep -q installed; then
    echo "dpkg still has lib-chan installed"
    left=1
  fi
  return "$left"
}

started=$(date +%s%N)
step "cargo-deb" install_cargo_deb
[ "$failed" -eq 0 ] && step "build .deb" build_deb
if [ "$failed" -eq 0 ]; then
  step "dpkg-deb -c" contents
  step "dpkg -i" install_deb
  if dpkg-query -W -f='${Status}' lib-chan 2>/dev/null | grep -q installed; then
    step "--version" version
    step "user lib_chan" user
    step "systemd-analyze verify" verify_unit
    step "dpkg -L" listed
    step "man -l" man_page
    step "bash completion" completions
    step "dpkg --purge" purge
  fi
fi
# Leave nothing installed, whatever failed.
if dpkg-query -W -f='${Status}' lib-chan 2>/dev/null | grep -q installed; then
  dpkg --purge lib-chan >/dev/null 2>&1 || true
fi
total=$(elapsed "$started")
summary=$(
  IFS=,
  echo "${times[*]}"
)
echo "deb install test: $passed steps passed, $failed failed in ${total} s (${summary//,/, })"
[ "$failed" -eq 0 ]
