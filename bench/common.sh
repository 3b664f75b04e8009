# What bench/compare.sh and bench/growth.sh share, sourced from the repository's top:
# the binary (LIB_CHAN_BIN, else a release build), a work directory removed on exit
# with the servers started in it (SERVER_PID, REDIS_PID), free_port, and the
# descriptor limit raised for thousands of connections.

if [ -n "${LIB_CHAN_BIN:-}" ]; then
  BIN=$LIB_CHAN_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/lib_chan
fi
WORK=$(mktemp -d)
SERVER_PID=""
REDIS_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Connections need descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The config both scripts start from: TLS with $WORK/certs, limits wide enough for
# thousands of connections from one address, and the name server (password $HASH) on
# the store given, if any. More entries may follow it in the file.
base_config() { # port max_connections [store]
  cat <<EOC
port = $1
bind = "127.0.0.1"
[tls]
cert = "certs/server.pem"
key = "certs/server.key"
[limits]
max_connections = $2
max_unauth = 4096
unauth_drop_start = 4096
max_unauth_per_source = 4096
[[service]]
name = "nameServer"
password = "$HASH"
handler = "mod_name_server"
args = "notUsed"
${3:+store = \"$3\"}
EOC
}

# A TLS redis-server on $REDIS_PORT with the same certificate, no persistence; returns
# once it answers.
start_redis() {
  redis-server --port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$WORK/certs/server.pem" \
    --tls-key-file "$WORK/certs/server.key" --tls-ca-cert-file "$WORK/certs/ca.pem" \
    --tls-auth-clients no --save '' --appendonly no --maxclients 20000 > "$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do
    redis-cli --tls --cacert "$WORK/certs/ca.pem" -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "redis-server did not answer:" >&2
  cat "$WORK/redis.log" >&2
  exit 1
}
