#!/usr/bin/env bash
# Side-by-side: the lib_chan name server against Redis over TLS, on loopback, in one run.
#
# Builds in release mode, starts our server and a TLS redis-server (Debian's) on free
# loopback ports with the same development certificate, then for each scenario runs
# redis-benchmark and `lib_chan bench` with matching settings, alternating A B A B, and
# prints one table of medians and ratios (ours / Redis). The connect rows log in three
# ways (the service password with the server's verified-credential cache warm, a named
# user's Ed25519 key, a client certificate) against Redis reconnecting per request, and
# a second table gives the server's CPU time per connect + login + lookup for each. A
# row compares lookups through a port program (the book-style Erlang name server of
# clients/erlang/examples, run as `handler = "port"`) with the built-in name server.
# Then measures the server's memory per idle authenticated connection with 10,000
# connections.
#
#   bash bench/compare.sh            # about 3 minutes (36 s with --quick)
#   bash bench/compare.sh --quick    # under 2 minutes: one round of 1 s runs, 2,000
#                                    # idle connections, no port-program row
#   ROUNDS=3 SECONDS_PER_RUN=5 bash bench/compare.sh
#   ONLY='lookup' bash bench/compare.sh           # only the rows whose name matches
#   LIB_CHAN_BIN=/tmp/old/lib_chan bash bench/compare.sh   # another build, not rebuilt
#   SERVER_BIN=/tmp/old/lib_chan bash bench/compare.sh     # another build as the server
#                                   # only; the load generator stays this one
#   SERVER_WORKERS=1 CLIENT_WORKERS=2 bash bench/compare.sh  # runtime worker threads
#
# Needs: redis-server and redis-tools (apt-get install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if ((QUICK)); then
  ROUNDS=${ROUNDS:-1}
  SECS=${SECONDS_PER_RUN:-1}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-2000}
else
  ROUNDS=${ROUNDS:-2}
  SECS=${SECONDS_PER_RUN:-4}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
fi
ONLY=${ONLY:-}
for tool in redis-server redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install redis-server redis-tools" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
OUR_PORT=$(free_port)
REDIS_PORT=$(free_port)
"$BIN" gen-cert --out "$WORK/certs" --host localhost --host 127.0.0.1 >/dev/null
HASH=$(echo ABXy45 | "$BIN" hash-password)
# A named user with a key and a client certificate, for the login rows.
PUBLIC=$("$BIN" keygen --out "$WORK/bench.key" --name bench | awk -F'"' '/^ed25519/ {print $2}')
FINGERPRINT=$("$BIN" gen-cert --client bench --out "$WORK/certs" | awk -F'"' '/^cert_sha256/ {print $2}')
PORT_NAMES=""
if command -v escript >/dev/null && ! ((QUICK)); then
  PORT_NAMES="[[service]]
name = \"portNames\"
password = \"$HASH\"
handler = \"port\"
command = [\"escript\", \"$PWD/clients/erlang/examples/name_server.escript\"]"
fi
{
  base_config "$OUR_PORT" $((IDLE_CONNECTIONS + 1000))
  cat <<EOF
$PORT_NAMES
[[user]]
name = "bench"
services = ["*"]
ed25519 = "$PUBLIC"
cert_sha256 = "$FINGERPRINT"
EOF
} > "$WORK/lib_chan.conf"
RUST_LOG=warn LIB_CHAN_WORKERS=${SERVER_WORKERS:-$(nproc)} "${SERVER_BIN:-$BIN}" serve --config "$WORK/lib_chan.conf" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
start_redis
for _ in $(seq 100); do
  grep -q "listening on" "$WORK/serve.log" 2>/dev/null && break
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
# lib_chan bench's operations per second; more bench flags may follow (a login, --batch,
# --service ...). The whole JSON line is left in $WORK/bench.json.
ours_rps() { # connections pipeline op [bench flags...]
  local c=$1 p=$2 op=$3 service=nameServer
  shift 3
  if [ "${1:-}" = "--service" ]; then service=$2; shift 2; fi
  "$BIN" bench "127.0.0.1:$OUR_PORT" "$service" --ca "$WORK/certs/ca.pem" --connections "$c" \
    --workers "${CLIENT_WORKERS:-$(nproc)}" \
    --pipeline "$p" --op "$op" "$@" --value-size 16 --duration "$SECS" --json 2>/dev/null |
    tail -1 > "$WORK/bench.json"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops_per_sec"])' "$WORK/bench.json"
}
# The server's CPU time so far (user + system), in clock ticks.
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

CPU_ROWS=()
row() { # name clients pipeline keepalive op requests [bench flags...]
  local name=$1 clients=$2 pipeline=$3 keepalive=$4 op=$5 requests=$6
  shift 6
  if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then return; fi
  # redis-benchmark's run about as long as ours: a quarter of the request count in --quick.
  ((QUICK)) && requests=$((requests / 4))
  local ours=() theirs=() cpu=()
  for _ in $(seq "$ROUNDS"); do
    theirs+=("$(redis_rps "$clients" "$pipeline" "$keepalive" "$requests")")
    local t0
    t0=$(server_ticks)
    ours+=("$(ours_rps "$clients" "$pipeline" "$op" "$@")")
    local ops
    ops=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops"])' "$WORK/bench.json")
    cpu+=("$(python3 -c "print(($(server_ticks) - $t0) * $TICK_US / max($ops, 1))")")
  done
  local o t
  o=$(median "${ours[@]}")
  t=$(median "${theirs[@]}")
  printf '| %s | %.0f | %.0f | %.2f | %.1f |\n' "$name" "$o" "$t" "$(python3 -c "print($o/$t)")" "$(median "${cpu[@]}")"
  if [ "$op" = connect ]; then
    CPU_ROWS+=("$(printf '| %s | %.0f |' "$name" "$(median "${cpu[@]}")")")
  fi
}

echo "server: ${SERVER_BIN:-$BIN} with ${SERVER_WORKERS:-$(nproc)} worker thread(s); lib_chan bench: ${CLIENT_WORKERS:-$(nproc)}"
echo "| scenario | lib_chan ops/s | Redis TLS ops/s | ratio | lib_chan server CPU µs/op |"
echo "|---|---|---|---|---|"
row "lookup, 1 connection" 1 1 1 lookup 60000
row "lookup, 50 connections" 50 1 1 lookup 300000
# redis-benchmark -P 16 writes 16 commands at once and waits for all 16 replies:
# `--batch` (Channel::rpc_many) does the same; without it, 16 concurrent callers share
# each connection, each waiting for its own reply.
row "lookup, 50 connections x 16 in flight, batches (as -P 16)" 50 16 1 lookup 2000000 --batch
row "lookup, 50 connections x 16 in flight, 16 callers each" 50 16 1 lookup 2000000
row "connect + service password (cache warm) + 1 lookup, 1 client" 1 1 0 connect 3000
row "connect + Ed25519 key login + 1 lookup, 1 client" 1 1 0 connect 3000 --user bench --key "$WORK/bench.key"
row "connect + client certificate login + 1 lookup, 1 client" 1 1 0 connect 3000 \
  --user bench --cert "$WORK/certs/bench.pem" --cert-key "$WORK/certs/bench.key"

echo
echo "| connect + login + 1 lookup | server CPU per round (µs) |"
echo "|---|---|"
printf '%s\n' "${CPU_ROWS[@]}"

if [ -n "$PORT_NAMES" ] && { [ -z "$ONLY" ] || [[ "port" =~ $ONLY ]]; }; then
  # The same lookups through the port program and through the built-in name server.
  builtin=() port=()
  for _ in $(seq "$ROUNDS"); do
    builtin+=("$(ours_rps 10 1 lookup)")
    port+=("$(ours_rps 10 1 lookup --service portNames)")
  done
  b=$(median "${builtin[@]}")
  p=$(median "${port[@]}")
  echo
  echo "| lookup, 10 connections | built-in ops/s | port program ops/s | ratio port / built-in |"
  echo "|---|---|---|---|"
  printf '| mod_name_server vs the book-style Erlang port name server | %.0f | %.0f | %.2f |\n' "$b" "$p" "$(python3 -c "print($p/$b)")"
fi

if [ -n "$ONLY" ] && ! [[ "idle memory" =~ $ONLY ]]; then exit 0; fi
# Memory per idle authenticated connection.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
# One login first, so that the password check's working memory (argon2, 19 MiB, kept
# for reuse) is in the baseline whichever rows ran before.
"$BIN" bench "127.0.0.1:$OUR_PORT" nameServer --ca "$WORK/certs/ca.pem" --connections 1 \
  --duration 0.2 > /dev/null 2>&1 || true
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
  echo "idle: $IDLE_CONNECTIONS authenticated connections: server RSS $((before / 1024)) MiB -> $((during / 1024)) MiB = $(python3 -c "print(f'{($during - $before) / $IDLE_CONNECTIONS:.1f}')") KiB per connection"
else
  echo "idle: could not open $IDLE_CONNECTIONS connections:"; cat "$WORK/idle.log"
fi
