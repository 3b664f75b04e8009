#!/usr/bin/env bash
# Soak test (not part of scripts/test.sh or CI): builds `lib_chan` and the soak driver
# (examples/soak.rs) in release mode, then runs 32 clients (reconnecting channels and the
# typed name client; --plain for hand-reconnecting ones) against a real `lib_chan serve`
# for 5 minutes with random disconnects and checks everything at the end.
#
#   bash scripts/soak.sh                       # 5 minutes
#   bash scripts/soak.sh --minutes 2           # or SOAK_MINUTES=2
#   bash scripts/soak.sh --store file --clients 64 --keep
#
# Options go to the driver (`--help` lists them). Exit status 0 means every acknowledged
# store read back, no error beyond those the deliberate disconnects explain, no
# descriptor leak, and a clean shutdown of the server.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin lib_chan --example soak
exec "${CARGO_TARGET_DIR:-target}/release/examples/soak" "$@"
