#!/usr/bin/env bash
# Connection-limit benchmark: do clients already connected keep their latency while others are
# turned away at `[http] max_connections`?
#
# 1. Builds release `trellis` and `trellis-bench`.
# 2. Starts `trellis serve` with `[http] max_connections = LIMIT`.
# 3. Quiet: CLIENTS connections publish open loop at RATE req/s; p50/p99 recorded.
# 4. Flood: the same load, and once its connections are up a Python flooder holds the rest of
#    the limit with idle sockets and keeps opening FLOOD more connections, every one refused.
# 5. Compares p99 under the flood with the quiet run, reads the refusal counter, stops Trellis
#    (exit 0 expected).
#
# Exits 1 if a target fails. Env overrides: LIMIT (64), CLIENTS (16), RATE (2000), FLOOD (200),
# DURATION (10), WARMUP (2). Linux only; needs python3 and curl.
set -euo pipefail

LIMIT=${LIMIT:-64}
CLIENTS=${CLIENTS:-16}
RATE=${RATE:-2000}
FLOOD=${FLOOD:-200}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
MAX_P99_FACTOR=2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TRELLIS=${TRELLIS_BIN:-$BIN/trellis}
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""
FLOOD_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap '[[ -n $FLOOD_PID ]] && kill "$FLOOD_PID" 2>/dev/null; cleanup' EXIT

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

port=$(free_port)
grpc_port=$(free_port)
cat >"$WORK_DIR/trellis.toml" <<TOML
[http]
max_connections = $LIMIT
TOML
"$TRELLIS" serve --config "$WORK_DIR/trellis.toml" --data-dir "$WORK_DIR/data" \
  --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc_port" >"$WORK_DIR/trellis.log" 2>&1 &
TRELLIS_PID=$!
wait_for_status "http://127.0.0.1:$port/readyz" 200 30 "$TRELLIS_PID" || die "trellis did not become ready"

url="http://127.0.0.1:$port/v1/topics/t/events"
run_load() {
  "$BIN/trellis-loadgen" --url "$url" --connections "$CLIENTS" --rate "$RATE" \
    --duration "$DURATION" --warmup "$WARMUP" --body-size 1024 --ce-binary \
    --header 'ce-specversion: 1.0' --header 'ce-type: dev.trellis.bench.connections' \
    --header 'ce-source: /trellis/bench' --header 'content-type: application/octet-stream' --json
}
jfield() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

log "quiet: $CLIENTS connections at $RATE req/s"
quiet=$(run_load)

# The clients connect first (the flood starts within their warm-up), so the flood meets a
# server whose limit is then full: it holds what is left of the limit with idle sockets, then
# opens and loses connections for ever.
log "flood: the same load while $FLOOD connections at a time are refused"
run_load >"$WORK_DIR/flooded.json" &
load_pid=$!
sleep 0.5
python3 - "$port" "$LIMIT" "$CLIENTS" "$FLOOD" <<'PY' &
import socket, sys, time
port, limit, clients, flood = (int(a) for a in sys.argv[1:])
held = []
for _ in range(limit - clients):
    held.append(socket.create_connection(("127.0.0.1", port)))
while True:
    extra = []
    for _ in range(flood):
        try:
            extra.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            pass
    time.sleep(0.05)
    for s in extra:
        s.close()
PY
FLOOD_PID=$!
wait "$load_pid"
flooded=$(cat "$WORK_DIR/flooded.json")
kill "$FLOOD_PID" 2>/dev/null || true
wait "$FLOOD_PID" 2>/dev/null || true
FLOOD_PID=""

refused=$(curl -s "http://127.0.0.1:$port/metrics" |
  awk '/^trellis_connections_refused_total\{listener="http"\}/ {print $2}')
stop_process "$TRELLIS_PID" 40
TRELLIS_PID=""
exit_rc=$STOPPED_RC

q99=$(jfield p99_ms <<<"$quiet")
f99=$(jfield p99_ms <<<"$flooded")
q50=$(jfield p50_ms <<<"$quiet")
f50=$(jfield p50_ms <<<"$flooded")
qerr=$(jfield errors <<<"$quiet")
ferr=$(jfield errors <<<"$flooded")
ratio=$(python3 -c "print(f'{$f99 / $q99:.2f}')")
ok=$(python3 -c "print($f99 <= $MAX_P99_FACTOR * $q99)")

REPORTED=1
printf '\nConnection benchmark: limit %s, %s clients at %s req/s, %s more connections at a time refused\n' \
  "$LIMIT" "$CLIENTS" "$RATE" "$FLOOD"
printf '%-34s %-28s %-14s %s\n' "" measured target result
printf '%-34s %-28s\n' "quiet p50 / p99" "$q50 / $q99 ms"
printf '%-34s %-28s\n' "under the flood p50 / p99" "$f50 / $f99 ms"
fails=0
verdict() { if [[ $1 == True || $1 == 0 ]]; then echo PASS; else echo FAIL; fails=1; fi; }
r=$(verdict "$ok"); printf '%-34s %-28s %-14s %s\n' "p99 flood / quiet" "$ratio" "<= ${MAX_P99_FACTOR}x" "$r"
r=$(verdict "$((qerr + ferr))"); printf '%-34s %-28s %-14s %s\n' "errors of connected clients" "$qerr / $ferr" "0" "$r"
printf '%-34s %-28s\n' "connections refused" "${refused:-0}"
r=$(verdict "$exit_rc"); printf '%-34s %-28s %-14s %s\n' "exit code after SIGTERM" "$exit_rc" "0" "$r"
exit "$fails"
