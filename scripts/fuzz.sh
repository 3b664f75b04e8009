#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS_PER_TARGET (default 60), one after the
# other, and reports executions, coverage and crashes. Exits non-zero if any target
# crashed (a panic, a sanitizer report, a timeout or running out of memory).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Needs the nightly toolchain (cargo-fuzz refuses stable); installs cargo-fuzz if it is
# missing. Environment:
#   FUZZ_TARGETS="etf_decode connection"   only these targets (default: all five)
#   FUZZ_BUILD="--dev -s none"             cargo-fuzz build options (default: release
#                                          with AddressSanitizer; scripts/test.sh uses
#                                          the cheaper ones above)
#   FUZZ_ARGS="-max_len=8192"              more libFuzzer options
#
# Inputs that reach new code are kept in fuzz/work/<target>/ (not committed), next to the
# committed seeds in fuzz/corpus/<target>/; crashing inputs go to
# fuzz/artifacts/<target>/. Replay one with
#   cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/crash-...
# and make it a plain #[test] in the crate whose code failed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-etf_decode frame_decoder text_parse config connection}"
read -r -a build <<<"${FUZZ_BUILD:-}"
read -r -a extra <<<"${FUZZ_ARGS:-}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly); cargo-fuzz needs it" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd fuzz
start=$(date +%s)
cargo +nightly fuzz build "${build[@]}"
echo "fuzz: targets built in $(($(date +%s) - start)) s"

crashed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  echo "fuzz: $t for $secs s (log: fuzz/$log)"
  # -timeout: an input running longer than that is a hang, reported like a crash.
  if cargo +nightly fuzz run "${build[@]}" "$t" "work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=60 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    crashed+=("$t")
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  corpus=$(find "work/$t" "corpus/$t" -type f | wc -l)
  line="$(printf '%-14s %-6s %-26s %-22s corpus %s' "$t" "$status" "${runs:-? runs}" "${cov:-cov ?}" "$corpus")"
  summary+=("$line")
  echo "  $line"
  if [ "$status" = CRASH ]; then
    { grep -m1 -A3 'panicked at' "$log" || true
      grep -E 'ERROR: |SUMMARY: |Test unit written to' "$log" || true; } | head -20 | sed 's/^/    /' || true
  fi
done

echo
echo "fuzz summary ($secs s per target):"
printf '  %s\n' "${summary[@]}"
if ((${#crashed[@]})); then
  echo "fuzz: crashes in: ${crashed[*]} (inputs in fuzz/artifacts/, logs in fuzz/work/)" >&2
  exit 1
fi
