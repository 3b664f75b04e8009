#!/usr/bin/env bash
# How cost grows with the work: the sibling of bench/compare.sh.
#
# Three sweeps, each against a fresh release server (and, for connections, a TLS
# redis-server beside it) on loopback:
#   connections  lookups at 1, 10, 50, 200, 1,000, 10,000 connections: throughput,
#                p50 and p99, ours and Redis's (redis-benchmark -c N);
#   names        10^3, 10^5, 10^6 names in the memory and the file store: lookup and
#                store rates, server memory per name, and the file's size per name;
#   value size   16 B, 1 KiB, 64 KiB values in both stores: lookup and store rates and
#                the server's memory per name.
# Figures go to docs/bench/growth.json, and bench/plot_growth.py draws them as SVG
# charts beside it (matplotlib, installed with pip when missing).
#
#   bash bench/growth.sh            # about 3.5 minutes; writes docs/bench/
#   bash bench/growth.sh --quick    # under 2 minutes: fewer points, shorter runs,
#                                   # written to a new temporary directory instead
#   OUT=/tmp/g bash bench/growth.sh # anywhere else
#   LIB_CHAN_BIN=PATH bash bench/growth.sh  # another build, not rebuilt
#
# Needs: redis-server and redis-tools; python3.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if ((QUICK)); then
  SECS=1
  CONNECTIONS=(1 10 50 200 1000)
  NAMES=(1000 100000)
  SIZES=(16 1024 65536)
else
  SECS=${SECONDS_PER_RUN:-3}
  CONNECTIONS=(1 10 50 200 1000 10000)
  NAMES=(1000 100000 1000000)
  SIZES=(16 1024 65536)
fi
for tool in redis-server redis-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install redis-server redis-tools python3" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
if ((QUICK)); then OUT=${OUT:-$(mktemp -d)}; else OUT=${OUT:-$PWD/docs/bench}; fi
mkdir -p "$OUT"
"$BIN" gen-cert --out "$WORK/certs" --host localhost --host 127.0.0.1 >/dev/null
HASH=$(echo ABXy45 | "$BIN" hash-password)
export LIB_CHAN_PASSWORD=ABXy45
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }

# Starts a fresh server on the given store ("memory" or "file:...").
start_server() {
  [ -n "$SERVER_PID" ] && { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
  rm -f "$WORK"/names.redb
  PORT=$(free_port)
  base_config "$PORT" 12000 "$1" > "$WORK/lib_chan.conf"
  RUST_LOG=warn "$BIN" serve --config "$WORK/lib_chan.conf" > "$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/serve.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }
}

# One `lib_chan bench` run; its JSON line is printed.
ours() { # connections pipeline op keys value_size
  "$BIN" bench "127.0.0.1:$PORT" nameServer --ca "$WORK/certs/ca.pem" --connections "$1" \
    --pipeline "$2" --op "$3" --keys "$4" --value-size "$5" --duration "$SECS" --json 2>/dev/null | tail -1
}

# Every figure, one JSON object per line, gathered at the end.
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
record() { echo "$1" >> "$RESULTS"; }

echo "connections: ${CONNECTIONS[*]}" >&2
start_server memory
REDIS_PORT=$(free_port)
start_redis
redis-benchmark --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" -t set -d 16 -r 1000 -n 20000 -q >/dev/null 2>&1
for c in "${CONNECTIONS[@]}"; do
  json=$(ours "$c" 1 lookup 1000 16)
  record "{\"sweep\":\"connections\",\"server\":\"lib_chan\",\"x\":$c,\"bench\":$json}"
  # About as many requests as ours answered in the same time, and at least one each.
  n=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(max(int(j["ops_per_sec"]*float(sys.argv[2])), 10*int(sys.argv[3])))' "$json" "$SECS" "$c")
  csv=$(redis-benchmark --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" -t get -d 16 -r 1000 \
    -c "$c" -n "$n" --csv 2>/dev/null | grep '"GET"' || true)
  record "$(python3 -c 'import json,sys; print(json.dumps({"sweep": "connections", "server": "redis", "x": int(sys.argv[1]), "csv": sys.argv[2]}))' "$c" "$csv")"
done
kill "$REDIS_PID"; REDIS_PID=""

for store in memory file; do
  spec=memory; [ "$store" = file ] && spec="file:names.redb"
  # The baseline: the same server and load with one 16-byte name; what a point's server
  # holds beyond it is what its names cost.
  start_server "$spec"
  ours 10 16 lookup 1 16 >/dev/null
  base=$(rss_kib)
  for n in "${NAMES[@]}"; do
    echo "names: $store, $n" >&2
    start_server "$spec"
    before=$(rss_kib)
    lookup=$(ours 10 16 lookup "$n" 16)
    after=$(rss_kib)
    store_json=$(ours 10 16 store "$n" 16)
    file=0; [ "$store" = file ] && file=$(stat -c %s "$WORK/names.redb")
    record "{\"sweep\":\"names\",\"store\":\"$store\",\"x\":$n,\"rss_before_kib\":$before,\"rss_base_kib\":$base,\"rss_after_kib\":$after,\"file_bytes\":$file,\"lookup\":$lookup,\"store_op\":$store_json}"
  done
  for size in "${SIZES[@]}"; do
    echo "value size: $store, $size B" >&2
    start_server "$spec"
    before=$(rss_kib)
    lookup=$(ours 10 16 lookup 1000 "$size")
    after=$(rss_kib)
    store_json=$(ours 10 16 store 1000 "$size")
    file=0; [ "$store" = file ] && file=$(stat -c %s "$WORK/names.redb")
    record "{\"sweep\":\"value_size\",\"store\":\"$store\",\"x\":$size,\"rss_before_kib\":$before,\"rss_base_kib\":$base,\"rss_after_kib\":$after,\"file_bytes\":$file,\"lookup\":$lookup,\"store_op\":$store_json}"
  done
done

python3 bench/plot_growth.py --results "$RESULTS" --out "$OUT" --seconds "$SECS" \
  --command "bash bench/growth.sh$( ((QUICK)) && echo ' --quick')"
echo "figures and charts in $OUT" >&2
