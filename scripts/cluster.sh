#!/usr/bin/env bash
# Starts a local Trellis cluster on loopback, to try cluster mode: one etcd (the shared metadata
# store), one nats-server with JetStream (the shared event store) and REPLICAS `trellis serve`
# replicas (3 by default), each with its own HTTP and gRPC port. Waits until every replica
# answers /readyz, prints the addresses and a few commands to try, then keeps running until
# Ctrl-C (or SIGTERM), which stops the replicas, then NATS and etcd, and deletes the data.
#
#   scripts/cluster.sh
#
# Ports (PORT_OFFSET, default 0, is added to each): replica N serves HTTP on 10110+N and gRPC
# on 10210+N; etcd listens on 12379 (peer 12380), NATS on 14222 (monitoring 18222).
#
# Env: REPLICAS (3), PORT_OFFSET (0), LEASE_TTL_MS (the lease TTL of every replica; Trellis'
# default when unset), TRELLIS_BIN (a `trellis` binary; default target/release/trellis, built
# with `cargo build --release -p trellis` when missing), TRELLIS_ARGS (more `trellis serve`
# flags for every replica), KEEP_DATA (1: keep the data and logs when stopping).
#
# A replica killed meanwhile (say with `kill -9`, to watch failover) is reported, with the
# command that starts it again; the script stops such restarted replicas too.
set -euo pipefail

REPLICAS=${REPLICAS:-3}
PORT_OFFSET=${PORT_OFFSET:-0}
LEASE_TTL_MS=${LEASE_TTL_MS:-}
KEEP_DATA=${KEEP_DATA:-}
read -r -a EXTRA_ARGS <<<"${TRELLIS_ARGS:-}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRELLIS=${TRELLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/trellis}

ETCD_PORT=$((12379 + PORT_OFFSET))
ETCD_PEER_PORT=$((12380 + PORT_OFFSET))
NATS_PORT=$((14222 + PORT_OFFSET))
NATS_MONITOR_PORT=$((18222 + PORT_OFFSET))
http_port() { echo $((10110 + $1 + PORT_OFFSET)); }
grpc_port() { echo $((10210 + $1 + PORT_OFFSET)); }

say() { printf '%s\n' "$*"; }
log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

[[ $REPLICAS =~ ^[1-9][0-9]?$ ]] || die "REPLICAS must be a number from 1 to 99; got '$REPLICAS'"
[[ $PORT_OFFSET =~ ^[0-9]+$ ]] || die "PORT_OFFSET must be a number; got '$PORT_OFFSET'"

# Everything that is missing, each with its one-line install, before anything starts.
missing=()
command -v etcd >/dev/null || missing+=("etcd (Debian/Ubuntu: sudo apt-get install -y etcd-server)")
command -v nats-server >/dev/null || missing+=("nats-server (Debian/Ubuntu: sudo apt-get install -y nats-server)")
command -v curl >/dev/null || missing+=("curl (Debian/Ubuntu: sudo apt-get install -y curl)")
if ((${#missing[@]})); then
  printf 'error: missing %s\n' "${missing[@]}" >&2
  exit 1
fi

# True while the process runs; an exited child not yet reaped (a zombie) is not.
is_running() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
  [[ -n $state && $state != Z ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

WORK_DIR=""
ETCD_PID=""
NATS_PID=""

# Sends SIGTERM to $1 and waits up to $2 seconds, then SIGKILL.
stop_pid() {
  local pid=$1 deadline=$((SECONDS + $2))
  kill -TERM "$pid" 2>/dev/null || return 0
  while is_running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if is_running "$pid"; then
    log "process $pid ignored SIGTERM for $2 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Replicas first (they leave the cluster through etcd and flush to NATS), then NATS and etcd.
cleanup() {
  local rc=$? pid_file pid
  trap - INT TERM
  if [[ -n $WORK_DIR ]]; then
    for pid_file in "$WORK_DIR"/replica-*.pid; do
      [[ -f $pid_file ]] || continue
      pid=$(cat "$pid_file")
      if [[ -n $pid ]] && is_running "$pid"; then
        log "stopping $(basename "$pid_file" .pid) (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done
    for pid_file in "$WORK_DIR"/replica-*.pid; do
      [[ -f $pid_file ]] || continue
      pid=$(cat "$pid_file")
      [[ -n $pid ]] && stop_pid "$pid" 40
    done
  fi
  if [[ -n $NATS_PID ]]; then stop_pid "$NATS_PID" 10; fi
  if [[ -n $ETCD_PID ]]; then stop_pid "$ETCD_PID" 10; fi
  if [[ -n $WORK_DIR ]]; then
    if [[ -n $KEEP_DATA ]]; then
      log "kept data and logs in $WORK_DIR"
    else
      rm -rf "$WORK_DIR"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$NATS_PORT" "$NATS_MONITOR_PORT"; do
  port_in_use "$port" && die "port $port is in use; choose other ports with PORT_OFFSET=100"
done
for ((i = 1; i <= REPLICAS; i++)); do
  for port in "$(http_port "$i")" "$(grpc_port "$i")"; do
    port_in_use "$port" && die "port $port is in use; choose other ports with PORT_OFFSET=100"
  done
done

if [[ ! -x $TRELLIS ]]; then
  [[ -z ${TRELLIS_BIN:-} ]] || die "TRELLIS_BIN=$TRELLIS is not an executable"
  log "building trellis (cargo build --release -p trellis); this takes a few minutes once"
  (cd "$ROOT" && cargo build --release -p trellis)
fi
"$TRELLIS" serve --help 2>/dev/null | grep -q -- '--meta' ||
  die "$TRELLIS has no cluster mode (no --meta flag); rebuild it: cargo build --release -p trellis"

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-cluster.XXXXXX")

# The children run in sessions of their own, so Ctrl-C reaches only this script, which then
# stops them in order.
log "etcd on 127.0.0.1:$ETCD_PORT"
# A 10 ms heartbeat and 100 ms election timeout: on loopback etcd is ready in about 0.1 s.
setsid etcd --name trellis-local --data-dir "$WORK_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "trellis-local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state new --heartbeat-interval=10 --election-timeout=100 \
  --logger zap --log-level warn >"$WORK_DIR/etcd.log" 2>&1 </dev/null &
ETCD_PID=$!

log "nats-server with JetStream on 127.0.0.1:$NATS_PORT"
setsid nats-server -js -sd "$WORK_DIR/nats" -a 127.0.0.1 -p "$NATS_PORT" \
  -m "$NATS_MONITOR_PORT" >"$WORK_DIR/nats.log" 2>&1 </dev/null &
NATS_PID=$!

# Waits until $1 answers 200 with a body holding $2, for at most $3 seconds, while pid $4 runs;
# names the log $5 when it does not.
wait_healthy() {
  local url=$1 want=$2 deadline=$((SECONDS + $3)) pid=$4 log_file=$5 body
  while ((SECONDS < deadline)); do
    is_running "$pid" || die "$(basename "$log_file" .log) exited: $(tail -n 5 "$log_file")"
    body=$(curl -sf --max-time 1 "$url" 2>/dev/null || true)
    [[ $body == *"$want"* ]] && return 0
    sleep 0.1
  done
  die "$url did not become healthy within $3 s; see $log_file: $(tail -n 5 "$log_file")"
}
wait_healthy "http://127.0.0.1:$ETCD_PORT/health" '"health":"true"' 30 "$ETCD_PID" "$WORK_DIR/etcd.log"
wait_healthy "http://127.0.0.1:$NATS_MONITOR_PORT/healthz" '"ok"' 30 "$NATS_PID" "$WORK_DIR/nats.log"

# Each replica's start is a small script of its own: this one runs it, and it is what starts
# the replica again after it was killed. It records its pid, which stays the same through exec.
declare -A REPLICA_PID=()
for ((i = 1; i <= REPLICAS; i++)); do
  name=replica-$i
  args=(
    serve --node-id "$name" --data-dir "$WORK_DIR/$name"
    --http-addr "127.0.0.1:$(http_port "$i")" --grpc-addr "127.0.0.1:$(grpc_port "$i")"
    --meta "etcd://127.0.0.1:$ETCD_PORT" --storage "nats://127.0.0.1:$NATS_PORT"
  )
  [[ -n $LEASE_TTL_MS ]] && args+=(--lease-ttl-ms "$LEASE_TTL_MS")
  args+=("${EXTRA_ARGS[@]}")
  {
    echo '#!/usr/bin/env bash'
    printf 'echo $$ >%q\n' "$WORK_DIR/$name.pid"
    printf 'exec %q' "$TRELLIS"
    printf ' %q' "${args[@]}"
    printf ' >>%q 2>&1 </dev/null\n' "$WORK_DIR/$name.log"
  } >"$WORK_DIR/$name.sh"
  chmod +x "$WORK_DIR/$name.sh"
  log "$name: http 127.0.0.1:$(http_port "$i"), grpc 127.0.0.1:$(grpc_port "$i")"
  setsid "$WORK_DIR/$name.sh" &
  REPLICA_PID[$name]=$!
  # Killing a replica is part of trying failover: no job report from this shell about it.
  disown
done

for ((i = 1; i <= REPLICAS; i++)); do
  name=replica-$i
  url="http://127.0.0.1:$(http_port "$i")/readyz"
  deadline=$((SECONDS + 60))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]]; do
    is_running "${REPLICA_PID[$name]}" ||
      die "$name exited: $(tail -n 5 "$WORK_DIR/$name.log")"
    ((SECONDS < deadline)) ||
      die "$name did not answer 200 on /readyz within 60 s: $(tail -n 5 "$WORK_DIR/$name.log")"
    sleep 0.1
  done
done

a=http://127.0.0.1:$(http_port 1)
b=http://127.0.0.1:$(http_port $((REPLICAS > 1 ? 2 : 1)))
endpoints=""
for ((i = 1; i <= REPLICAS; i++)); do endpoints+="${endpoints:+,}127.0.0.1:$(grpc_port "$i")"; done
say ""
say "Trellis cluster of $REPLICAS replicas on loopback (data and logs in $WORK_DIR)"
say ""
printf '  %-10s %-24s %-18s %-8s %s\n' member HTTP gRPC pid log
for ((i = 1; i <= REPLICAS; i++)); do
  name=replica-$i
  printf '  %-10s %-24s %-18s %-8s %s\n' "$name" "http://127.0.0.1:$(http_port "$i")" \
    "127.0.0.1:$(grpc_port "$i")" "$(cat "$WORK_DIR/$name.pid" 2>/dev/null || echo -)" "$WORK_DIR/$name.log"
done
printf '  %-10s %-24s %-18s %-8s %s\n' etcd "http://127.0.0.1:$ETCD_PORT" "" "$ETCD_PID" "$WORK_DIR/etcd.log"
printf '  %-10s %-24s %-18s %-8s %s\n' nats "nats://127.0.0.1:$NATS_PORT" "" "$NATS_PID" "$WORK_DIR/nats.log"
cat <<EOF

Try (any replica serves any request):
  curl -s $a/v1/cluster
  $TRELLIS cluster status --server $b
  curl -s -X POST $a/v1/subscriptions -d '{"name":"billing","topic":"orders","sink":{"urls":["http://127.0.0.1:8080/hook"]}}'
  curl -s -X POST $b/v1/topics/orders/events -H 'ce-specversion: 1.0' -H 'ce-id: order-1' \\
    -H 'ce-source: /shop' -H 'ce-type: order.created' -d '{"sku":"A-42"}'
  $TRELLIS publish --endpoint $endpoints --topic orders --count 1000 --rate 200
  kill -9 <pid of the owner in /v1/cluster>   # its work moves to another replica within the lease TTL + 1 s

Ctrl-C stops everything and deletes $WORK_DIR${KEEP_DATA:+ (kept: KEEP_DATA is set)}.
EOF

# Watches the replicas: says when one goes away and how to start it again, and picks up a
# replica started again (its pid file changes).
declare -A SEEN_DOWN=()
while :; do
  for ((i = 1; i <= REPLICAS; i++)); do
    name=replica-$i
    pid=$(cat "$WORK_DIR/$name.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && is_running "$pid"; then
      if [[ -n ${SEEN_DOWN[$name]:-} ]]; then
        log "$name is running again (pid $pid)"
        unset "SEEN_DOWN[$name]"
      fi
    elif [[ -z ${SEEN_DOWN[$name]:-} ]]; then
      log "$name (pid $pid) is gone; start it again with: $WORK_DIR/$name.sh &"
      SEEN_DOWN[$name]=1
    fi
  done
  is_running "$ETCD_PID" || die "etcd exited: $(tail -n 5 "$WORK_DIR/etcd.log")"
  is_running "$NATS_PID" || die "nats-server exited: $(tail -n 5 "$WORK_DIR/nats.log")"
  sleep 1
done
