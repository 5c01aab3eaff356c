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
# With STORAGE=jetstream it compares instead, in ROUNDS rounds (3) whose order rotates: raw NATS
# JetStream publishing (`trellis-nats-pub`, CONNECTIONS acks outstanding, the same 1 KiB
# payload), `trellis serve` on the embedded log and `trellis serve --storage nats://...` on the
# same nats-server (started here on a free loopback port, its store in the work dir), both
# driven by `trellis-loadgen` as above; then the same two with `wrk` (unless WRK=0 or wrk is not
# installed). It prints the ratios to raw JetStream (medians of the rounds' ratios; the issue's
# ratio targets are the SDK producer's, judged by producer.sh) and the CPU per event of each
# process. Targets: peak RSS of `trellis serve` on JetStream < 150 MiB, no failed publish.
#
# Exits 1 if any target fails. Env overrides: DURATION (measured seconds, 10), WARMUP (seconds,
# 2), CONNECTIONS (64), STORAGE (embedded or jetstream), ROUNDS (3, jetstream mode), WRK (1),
# TRELLIS_BIN (a `trellis` binary to measure instead of the one built, e.g.
# an older build to compare against). Load generator and server share this machine's cores, so compare rates
# within one run, not across machines. Linux only: RSS comes from /proc/<pid>/status.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
STORAGE=${STORAGE:-embedded}
ROUNDS=${ROUNDS:-3}
WRK=${WRK:-1}
BODY_SIZE=1024
TOPIC_PATH=/v1/topics/t/events
case $STORAGE in
  embedded | jetstream) ;;
  *)
    echo "error: STORAGE must be embedded or jetstream, not $STORAGE" >&2
    exit 2
    ;;
esac

# Targets, from the benchmark issue.
MIN_RATIO_PCT=50
MAX_HALF_PEAK_P99_MS=10
MAX_IDLE_RSS_MIB=30
MAX_PEAK_RSS_MIB=150
# The JetStream issue's ratio targets, which it sets for the SDK producer (producer.sh); the
# JetStream mode prints them beside its ratios.
MIN_JETSTREAM_RATIO_PCT=50
MIN_EMBEDDED_OVER_RAW_PCT=100

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TRELLIS=${TRELLIS_BIN:-$BIN/trellis}
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
NATS_PID=""
REPORTED=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

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

# Starts `trellis serve` with fsync policy $1 on a fresh data dir $2, further args passed on;
# sets TRELLIS_PID and trellis_url once it answers /readyz.
start_trellis() {
  local fsync=$1 data=$2 port
  shift 2
  port=$(free_port)
  trellis_url="http://127.0.0.1:$port"
  mkdir -p "$data"
  # The policy is always given explicitly, so a TRELLIS_FSYNC in the environment cannot turn this
  # into a benchmark of something else. gRPC is not measured: any free port will do.
  "$TRELLIS" serve --data-dir "$data" --http-addr "127.0.0.1:$port" \
    --grpc-addr 127.0.0.1:0 --fsync "$fsync" "$@" >"$WORK_DIR/trellis.log" 2>&1 &
  TRELLIS_PID=$!
  wait_for_status "$trellis_url/readyz" 200 30 "$TRELLIS_PID" ||
    die "trellis serve did not answer 200 on /readyz within 30 s"
}

if [[ $STORAGE == jetstream ]]; then
  # It ends the run with its own exit code.
  # shellcheck source=bench/publish-jetstream.sh
  source "$ROOT/bench/publish-jetstream.sh"
fi

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
