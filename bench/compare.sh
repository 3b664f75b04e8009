#!/usr/bin/env bash
# Side-by-side: the lib_chan name server against Redis over TLS, on loopback, in one run.
#
# Builds in release mode, starts our server and a TLS redis-server (Debian's) on free
# loopback ports with the same development certificate, then for each scenario runs
# redis-benchmark and `lib_chan bench` with matching settings, alternating A B A B, and
# prints one table of medians and ratios (ours / Redis). Then measures the server's
# memory per idle authenticated connection with 10,000 connections.
#
#   bash bench/compare.sh            # about 5 minutes
#   ROUNDS=3 SECONDS_PER_RUN=5 bash bench/compare.sh
#
# Needs: redis-server and redis-tools (apt-get install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
SECS=${SECONDS_PER_RUN:-4}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
for tool in redis-server redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install redis-server redis-tools" >&2; exit 1; }
done

cargo build --release --quiet
BIN=$PWD/target/release/lib_chan
WORK=$(mktemp -d)
SERVER_PID=""
REDIS_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OUR_PORT=$(free_port)
REDIS_PORT=$(free_port)
"$BIN" gen-cert --out "$WORK/certs" --host localhost --host 127.0.0.1 >/dev/null
HASH=$(echo ABXy45 | "$BIN" hash-password)
cat > "$WORK/lib_chan.conf" <<EOF
port = $OUR_PORT
bind = "127.0.0.1"
[tls]
cert = "certs/server.pem"
key = "certs/server.key"
[limits]
max_connections = $((IDLE_CONNECTIONS + 1000))
max_unauth = 4096
unauth_drop_start = 4096
max_unauth_per_source = 4096
[[service]]
name = "nameServer"
password = "$HASH"
handler = "mod_name_server"
args = "notUsed"
EOF
# Connections need descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUST_LOG=warn "$BIN" serve --config "$WORK/lib_chan.conf" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
redis-server --port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$WORK/certs/server.pem" \
  --tls-key-file "$WORK/certs/server.key" --tls-ca-cert-file "$WORK/certs/ca.pem" \
  --tls-auth-clients no --save '' --appendonly no --maxclients 20000 > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do
  grep -q "listening on" "$WORK/serve.log" 2>/dev/null && redis-cli --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
export LIB_CHAN_PASSWORD=ABXy45
# The keys Redis GETs, with 16-byte values, as lib_chan bench stores its own first.
redis-benchmark --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" -t set -d 16 -r 1000 -n 20000 -q >/dev/null 2>&1

# redis-benchmark's requests per second (GET of 16-byte values).
redis_rps() { # clients pipeline keepalive requests
  redis-benchmark --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" -t get -d 16 -r 1000 \
    -c "$1" -P "$2" -k "$3" -n "$4" --csv 2>/dev/null | awk -F'"' '/GET/ {print $4}'
}
# lib_chan bench's operations per second.
ours_rps() { # connections pipeline op [--batch]
  "$BIN" bench "127.0.0.1:$OUR_PORT" nameServer --ca "$WORK/certs/ca.pem" --connections "$1" \
    --pipeline "$2" --op "$3" ${4:+"$4"} --value-size 16 --duration "$SECS" --json 2>/dev/null |
    tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_sec"])'
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

row() { # name clients pipeline keepalive op requests [--batch]
  local ours=() theirs=()
  for _ in $(seq "$ROUNDS"); do
    theirs+=("$(redis_rps "$2" "$3" "$4" "$6")")
    ours+=("$(ours_rps "$2" "$3" "$5" "${7:-}")")
  done
  local o t
  o=$(median "${ours[@]}")
  t=$(median "${theirs[@]}")
  printf '| %s | %.0f | %.0f | %.2f |\n' "$1" "$o" "$t" "$(python3 -c "print($o/$t)")"
}

echo "| scenario | lib_chan ops/s | Redis TLS ops/s | ratio |"
echo "|---|---|---|---|"
row "lookup, 1 connection" 1 1 1 lookup 60000
row "lookup, 50 connections" 50 1 1 lookup 300000
# redis-benchmark -P 16 writes 16 commands at once and waits for all 16 replies:
# `--batch` (Channel::rpc_many) does the same; without it, 16 concurrent callers share
# each connection, each waiting for its own reply.
row "lookup, 50 connections x 16 in flight, batches (as -P 16)" 50 16 1 lookup 2000000 --batch
row "lookup, 50 connections x 16 in flight, 16 callers each" 50 16 1 lookup 2000000
row "connect + auth + 1 lookup, 1 client" 1 1 0 connect 3000

# Memory per idle authenticated connection.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
before=$(rss_kib)
"$BIN" bench "127.0.0.1:$OUR_PORT" nameServer --ca "$WORK/certs/ca.pem" --op idle \
  --connections "$IDLE_CONNECTIONS" --duration 3 > "$WORK/idle.log" 2>&1 &
IDLE_PID=$!
for _ in $(seq 600); do grep -q holding "$WORK/idle.log" && break; sleep 0.2; done
sleep 1
during=$(rss_kib)
wait "$IDLE_PID" || true
if grep -q holding "$WORK/idle.log"; then
  echo
  echo "idle: $IDLE_CONNECTIONS authenticated connections: server RSS $((before / 1024)) MiB -> $((during / 1024)) MiB = $(((during - before) / IDLE_CONNECTIONS)) KiB per connection"
else
  echo "idle: could not open $IDLE_CONNECTIONS connections:"; cat "$WORK/idle.log"
fi
