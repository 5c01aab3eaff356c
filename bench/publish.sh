#!/usr/bin/env bash
# Publish benchmark: Trellis' durable publish rate against a bare hyper server, in one run.
#
# 1. Builds release `trellis` and `trellis-bench`.
# 2. Ceiling: drives `trellis-bench-receiver` (hyper, answers 202) with `trellis-loadgen`.
# 3. Trellis: starts `trellis serve` (default fsync policy `always`, group commit), measures idle
#    RSS, drives `POST /v1/topics/t/events` in binary mode with the same settings (closed loop,
#    peak rate), records peak RSS, then drives it again open-loop at half that peak rate.
# 4. Stops Trellis with SIGTERM, checks it exits 0.
# 5. Diagnostic: the peak-rate run again with `--fsync never` on a fresh data dir, to tell the cost
#    of durability from the rest. Then prints a table with PASS/FAIL per target.
#
# Exits 1 if any target fails. Env overrides: DURATION (measured seconds, 10), WARMUP (seconds,
# 2), CONNECTIONS (64). Load generator and server share this machine's cores, so compare rates
# within one run, not across machines. Linux only: RSS comes from /proc/<pid>/status.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
BODY_SIZE=1024
TOPIC_PATH=/v1/topics/t/events

# Targets, from the benchmark issue.
MIN_RATIO_PCT=50
MAX_HALF_PEAK_P99_MS=10
MAX_IDLE_RSS_MIB=30
MAX_PEAK_RSS_MIB=150

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# True while the process runs; a child that exited but was not yet reaped (a zombie) is not.
is_running() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
  [[ -n $state && $state != Z ]]
}

# Sends SIGTERM, waits up to $2 seconds (then SIGKILL), and sets STOPPED_RC to the exit code.
# Not for $(...): a subshell cannot wait for this shell's children.
STOPPED_RC=""
stop_process() {
  local pid=$1 timeout_s=$2 rc=0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout_s))
  while is_running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if is_running "$pid"; then
    log "process $pid ignored SIGTERM for ${timeout_s}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  STOPPED_RC=$rc
}

cleanup() {
  local rc=$?
  if [[ -n $RECEIVER_PID ]]; then stop_process "$RECEIVER_PID" 5; fi
  if [[ -n $TRELLIS_PID ]]; then stop_process "$TRELLIS_PID" 10; fi
  # A failed target is reported in the table; the log helps only when the run itself broke.
  if ((rc != 0)) && [[ -z $REPORTED && -s $WORK_DIR/trellis.log ]]; then
    printf -- '--- last lines of the trellis log ---\n' >&2
    tail -n 30 "$WORK_DIR/trellis.log" >&2
  fi
  rm -rf "$WORK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port with no listener, below the kernel's ephemeral range (32768 and up) so the
# load generator's own client sockets cannot take it between this check and the bind.
free_port() {
  local port
  for _ in {1..200}; do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "found no free loopback port in 20000-31999"
}

# Waits until $1 answers HTTP status $2, for at most $3 seconds, while process $4 runs.
wait_for_status() {
  local url=$1 want=$2 deadline=$((SECONDS + $3)) pid=$4 got
  while ((SECONDS < deadline)); do
    is_running "$pid" || return 1
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.05
  done
  return 1
}

# VmRSS or VmHWM of a process, in MiB with one decimal.
rss_mib() { awk -v key="$2:" '$1 == key { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# A numeric field of the flat JSON object trellis-loadgen prints.
json_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }

# Float arithmetic and comparisons, which bash lacks.
calc() { awk "BEGIN { printf \"%.1f\", $1 }"; }
verdict() { awk "BEGIN { exit !($1) }" && echo PASS || echo FAIL; }

LOADGEN_ARGS=(
  --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --body-size "$BODY_SIZE"
  --ce-binary --header 'ce-specversion: 1.0' --header 'ce-type: dev.trellis.bench.publish'
  --header 'ce-source: /trellis/bench' --header 'content-type: application/octet-stream' --json
)
# Runs the load generator against $1, writing its JSON report to $2; further args are passed on.
# Its human-readable line goes to stderr, so the run shows progress.
loadgen() {
  local url=$1 out=$2
  shift 2
  "$BIN/trellis-loadgen" --url "$url" "${LOADGEN_ARGS[@]}" "$@" >"$out"
}

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

log "ceiling: trellis-bench-receiver, $CONNECTIONS connections, ${BODY_SIZE}-byte bodies"
"$BIN/trellis-bench-receiver" --addr 127.0.0.1:0 >"$WORK_DIR/receiver.out" 2>&1 &
RECEIVER_PID=$!
receiver_addr=""
for _ in {1..100}; do
  receiver_addr=$(sed -n 's/^listening on //p' "$WORK_DIR/receiver.out")
  [[ -n $receiver_addr ]] && break
  is_running "$RECEIVER_PID" || die "trellis-bench-receiver exited: $(cat "$WORK_DIR/receiver.out")"
  sleep 0.05
done
[[ -n $receiver_addr ]] || die "trellis-bench-receiver did not report its address"
loadgen "http://$receiver_addr$TOPIC_PATH" "$WORK_DIR/baseline.json"
stop_process "$RECEIVER_PID" 5
RECEIVER_PID=""

# Starts `trellis serve` with fsync policy $1 on a fresh data dir $2; sets TRELLIS_PID and
# trellis_url once it answers /readyz.
start_trellis() {
  local fsync=$1 data=$2 port
  port=$(free_port)
  trellis_url="http://127.0.0.1:$port"
  mkdir -p "$data"
  # The policy is always given explicitly, so a TRELLIS_FSYNC in the environment cannot turn this
  # into a benchmark of something else. gRPC is not measured: any free port will do.
  "$BIN/trellis" serve --data-dir "$data" --http-addr "127.0.0.1:$port" \
    --grpc-addr 127.0.0.1:0 --fsync "$fsync" >"$WORK_DIR/trellis.log" 2>&1 &
  TRELLIS_PID=$!
  wait_for_status "$trellis_url/readyz" 200 30 "$TRELLIS_PID" ||
    die "trellis serve did not answer 200 on /readyz within 30 s"
}

log "trellis serve, data in $WORK_DIR/data"
start_trellis always "$WORK_DIR/data"
sleep 1
is_running "$TRELLIS_PID" || die "trellis serve exited while idle"
idle_rss=$(rss_mib "$TRELLIS_PID" VmRSS)

log "trellis: peak rate, closed loop"
loadgen "$trellis_url$TOPIC_PATH" "$WORK_DIR/peak.json"
is_running "$TRELLIS_PID" || die "trellis serve exited during the peak-rate run"
peak_rss=$(rss_mib "$TRELLIS_PID" VmHWM)
peak_rate=$(json_field "$WORK_DIR/peak.json" rate)
half_rate=$(awk "BEGIN { printf \"%d\", $peak_rate / 2 }")
((half_rate > 0)) || die "trellis accepted no publishes at peak; see the loadgen line above"

log "trellis: half the peak rate ($half_rate req/s), open loop"
loadgen "$trellis_url$TOPIC_PATH" "$WORK_DIR/half.json" --rate "$half_rate"

log "stopping trellis with SIGTERM"
stop_process "$TRELLIS_PID" 30
trellis_rc=$STOPPED_RC
TRELLIS_PID=""

# Diagnostic, not a target: the same closed-loop run with `--fsync never` tells how much of any
# gap to the ceiling is the cost of durability (fsync) and how much is everything else.
log "trellis with --fsync never (diagnostic): peak rate, closed loop"
start_trellis never "$WORK_DIR/data-never"
loadgen "$trellis_url$TOPIC_PATH" "$WORK_DIR/never.json"
stop_process "$TRELLIS_PID" 30
TRELLIS_PID=""

base_rate=$(json_field "$WORK_DIR/baseline.json" rate)
never_rate=$(json_field "$WORK_DIR/never.json" rate)
never_pct=$(calc "100 * $never_rate / $base_rate")
ratio_pct=$(calc "100 * $peak_rate / $base_rate")
peak_p50=$(json_field "$WORK_DIR/peak.json" p50_ms)
peak_p99=$(json_field "$WORK_DIR/peak.json" p99_ms)
half_p50=$(json_field "$WORK_DIR/half.json" p50_ms)
half_p99=$(json_field "$WORK_DIR/half.json" p99_ms)
n_non_2xx=$(($(json_field "$WORK_DIR/peak.json" non_2xx) + $(json_field "$WORK_DIR/half.json" non_2xx)))
n_errors=$(($(json_field "$WORK_DIR/peak.json" errors) + $(json_field "$WORK_DIR/half.json" errors)))

results=(
  "$(verdict "$ratio_pct >= $MIN_RATIO_PCT")"
  "$(verdict "$half_p99 < $MAX_HALF_PEAK_P99_MS")"
  "$(verdict "$idle_rss < $MAX_IDLE_RSS_MIB")"
  "$(verdict "$peak_rss < $MAX_PEAK_RSS_MIB")"
  "$(verdict "$n_non_2xx + $n_errors == 0")"
  "$(verdict "$trellis_rc == 0")"
)

REPORTED=1
row() { printf '%-34s %-22s %-12s %s\n' "$@"; }
echo
echo "Publish benchmark: $CONNECTIONS connections, ${BODY_SIZE}-byte binary-mode events," \
  "${DURATION} s measured after ${WARMUP} s warm-up"
row "" "measured" "target" "result"
row "baseline (hyper, 202) rate" "$(calc "$base_rate") req/s" "" ""
row "trellis durable publish rate" "$(calc "$peak_rate") req/s" "" ""
row "trellis / baseline" "$ratio_pct %" ">= $MIN_RATIO_PCT %" "${results[0]}"
row "  diagnostic: with --fsync never" "$(calc "$never_rate") req/s, $never_pct %" "" ""
row "latency at peak, p50 / p99" "$peak_p50 / $peak_p99 ms" "" ""
row "latency at half peak, p50 / p99" "$half_p50 / $half_p99 ms" "p99 < $MAX_HALF_PEAK_P99_MS ms" "${results[1]}"
row "idle RSS" "$idle_rss MiB" "< $MAX_IDLE_RSS_MIB MiB" "${results[2]}"
row "peak RSS" "$peak_rss MiB" "< $MAX_PEAK_RSS_MIB MiB" "${results[3]}"
row "non-2xx / transport errors" "$n_non_2xx / $n_errors" "0 / 0" "${results[4]}"
row "exit code after SIGTERM" "$trellis_rc" "0" "${results[5]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
