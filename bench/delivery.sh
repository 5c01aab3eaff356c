#!/usr/bin/env bash
# Delivery benchmark: how fast, how soon and how lean Trellis delivers a topic to a webhook.
#
# 1. Builds release `trellis` and `trellis-bench`.
# 2. Ceiling: drives `trellis-bench-receiver --status 200 --stats` with `trellis-loadgen`
#    (closed loop, CONCURRENCY connections, 1 KiB binary-mode CloudEvents).
# 3. Rate: publishes EVENTS such events to a topic, then creates a subscription from `earliest`
#    to the same receiver with `concurrency` fixed to CONCURRENCY, and reads the receiver's rate
#    between its first and last request. The same again with the default adaptive concurrency
#    (diagnostic). Both are compared with the ceiling, measured again after them: the mean of
#    the two runs is the figure compared with.
# 4. Latency: a live subscription (default delivery settings) while the load generator publishes
#    at LATENCY_RATE events/s, open loop, stamping each event with its send time (`ce-sentns`);
#    the receiver records receipt minus send time: publish to receipt, end to end.
# 5. Dead endpoint: a fresh `trellis serve`, a subscription to a port nothing listens on
#    (default delivery settings), PENDING small events published in batches of BATCH; then RSS,
#    and an open-loop publish probe to show the runtime still serves publishes.
# Then prints a table with PASS/FAIL per target.
#
# Exits 1 if any target fails. Env overrides: EVENTS (300000), CONCURRENCY (64), DURATION and
# WARMUP for the ceiling (10, 2), LATENCY_RATE (1000), LATENCY_DURATION (10), PENDING (1000000),
# BATCH (1000), TRELLIS_BIN (a `trellis` binary to measure instead of the one built, e.g. an
# older build to compare against). Load generator, Trellis and receiver share this machine's cores, so compare
# figures within one run. Linux only: RSS comes from /proc/<pid>/status.
set -euo pipefail

EVENTS=${EVENTS:-300000}
CONCURRENCY=${CONCURRENCY:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
LATENCY_RATE=${LATENCY_RATE:-1000}
LATENCY_DURATION=${LATENCY_DURATION:-10}
PENDING=${PENDING:-1000000}
BATCH=${BATCH:-1000}
BODY_SIZE=1024
# Data of each pending event: small, so that a million of them publish in seconds.
PENDING_DATA_BYTES=64
# Open-loop publishes that probe the runtime while a million events are pending.
PROBE_RATE=500
PROBE_SECONDS=5

# Targets, from the delivery benchmark issue.
MIN_DELIVERY_RATIO_PCT=80
MAX_E2E_P99_MS=5
MAX_PENDING_RSS_MIB=100

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TRELLIS=${TRELLIS_BIN:-$BIN/trellis}
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-delivery-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# Runs `curl "${@:3}"` with the answer's body in file $2, and fails the run, showing the body,
# unless it answers status $1.
expect_status() {
  local want=$1 out=$2 got
  shift 2
  got=$(curl -s -o "$out" -w '%{http_code}' --max-time 10 "$@" || true)
  [[ $got == "$want" ]] || die "curl $* answered $got, not $want: $(cat "$out" 2>/dev/null)"
}

CE_ARGS=(
  --ce-binary --header 'ce-specversion: 1.0' --header 'ce-type: dev.trellis.bench.delivery'
  --header 'ce-source: /trellis/bench' --header 'content-type: application/octet-stream'
)
# Runs the load generator against $1, writing its JSON report to $2; further args are passed on.
# Its human-readable line goes to stderr, so the run shows progress.
loadgen() {
  local url=$1 out=$2
  shift 2
  "$BIN/trellis-loadgen" --url "$url" --json "$@" >"$out"
}

# Starts `trellis serve` on a fresh data dir $1, with its log in $2 and any further args passed
# on; sets TRELLIS_PID and
# trellis_url once it answers /readyz.
start_trellis() {
  local data=$1 log_file=$2 port
  shift 2
  port=$(free_port)
  trellis_url="http://127.0.0.1:$port"
  mkdir -p "$data"
  # `--fsync always` is the default; saying so keeps a TRELLIS_FSYNC in the environment out of
  # the result. Delivery itself does not fsync per record; this matters for the publishes.
  "$TRELLIS" serve --data-dir "$data" --http-addr "127.0.0.1:$port" \
    --grpc-addr 127.0.0.1:0 --fsync always "$@" >"$log_file" 2>&1 &
  TRELLIS_PID=$!
  wait_for_status "$trellis_url/readyz" 200 30 "$TRELLIS_PID" ||
    die "trellis serve did not answer 200 on /readyz within 30 s"
}

# Creates subscription $1 on topic $2 to URL $3, starting at $4, with delivery settings $5 (a
# JSON object).
create_subscription() {
  expect_status 201 "$WORK_DIR/answer.json" -X POST "$trellis_url/v1/subscriptions" -H 'content-type: application/json' \
    -d "{\"name\":\"$1\",\"topic\":\"$2\",\"sink\":{\"urls\":[\"$3\"]},\"start\":\"$4\",\"delivery\":$5}"
}

# The subscription $1's status, as JSON in $2.
subscription_status() { expect_status 200 "$2" "$trellis_url/v1/subscriptions/$1"; }

# Waits until subscription $1 has committed offset $2, for at most $3 seconds; fails if not.
# Polls four times a second: each poll is a curl process, and the cores are what is measured.
wait_committed() {
  local name=$1 want=$2 deadline=$((SECONDS + $3)) committed
  while ((SECONDS < deadline)); do
    subscription_status "$name" "$WORK_DIR/status.json"
    committed=$(json_field "$WORK_DIR/status.json" committed_offset)
    ((committed >= want)) && return 0
    is_running "$TRELLIS_PID" || die "trellis serve exited while delivering"
    sleep 0.25
  done
  return 1
}

# The topic $1's next offset: how many events it holds.
next_offset() {
  expect_status 200 "$WORK_DIR/topic.json" "$trellis_url/v1/topics/$1"
  json_field "$WORK_DIR/topic.json" next_offset
}

# The receiver's figures, as JSON in $1.
receiver_stats() { expect_status 200 "$1" "$receiver_url/stats"; }
receiver_reset() { expect_status 200 "$WORK_DIR/answer.json" -X POST "$receiver_url/stats/reset"; }

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

"$BIN/trellis-bench-receiver" --addr 127.0.0.1:0 --status 200 --stats \
  >"$WORK_DIR/receiver.out" 2>&1 &
RECEIVER_PID=$!
receiver_addr=""
for _ in {1..100}; do
  receiver_addr=$(sed -n 's/^listening on //p' "$WORK_DIR/receiver.out")
  [[ -n $receiver_addr ]] && break
  is_running "$RECEIVER_PID" || die "trellis-bench-receiver exited: $(cat "$WORK_DIR/receiver.out")"
  sleep 0.05
done
[[ -n $receiver_addr ]] || die "trellis-bench-receiver did not report its address"
receiver_url="http://$receiver_addr"
hook_url="$receiver_url/hook"

# The ceiling, into $WORK_DIR/$1.json. Run before and after the deliveries: this box's speed
# drifts by a fifth within minutes, and their mean is what the delivery rate is compared with.
measure_ceiling() {
  log "ceiling ($1): trellis-loadgen -> receiver, $CONCURRENCY connections, ${BODY_SIZE}-byte events"
  receiver_reset
  loadgen "$hook_url" "$WORK_DIR/$1.json" "${CE_ARGS[@]}" --body-size "$BODY_SIZE" \
    --connections "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP"
}

receiver_ticks=$(cpu_ticks "$RECEIVER_PID")
measure_ceiling ceiling
receiver_stats "$WORK_DIR/ceiling-receiver.json"
# Warm-up included on both sides: the receiver counts every request it served.
ceiling_receiver_us=$(us_per $(($(cpu_ticks "$RECEIVER_PID") - receiver_ticks)) \
  "$(json_field "$WORK_DIR/ceiling-receiver.json" requests)")

log "trellis serve, data in $WORK_DIR/data"
start_trellis "$WORK_DIR/data" "$WORK_DIR/trellis.log"

log "publishing $EVENTS ${BODY_SIZE}-byte events to topic \`backlog\`"
loadgen "$trellis_url/v1/topics/backlog/events" "$WORK_DIR/prepublish.json" "${CE_ARGS[@]}" \
  --body-size "$BODY_SIZE" --connections 64 --requests "$EVENTS" --warmup 0 --duration 3600
n_backlog=$(next_offset backlog)
((n_backlog == EVENTS)) || die "topic \`backlog\` holds $n_backlog events, not $EVENTS"

# Delivers the whole backlog to the receiver through subscription $1 with delivery settings $2;
# the receiver's stats land in $WORK_DIR/$1.json. Deletes the subscription afterwards, so the
# next phase runs on quiet cores.
deliver_backlog() {
  local name=$1 delivery=$2 started trellis_ticks receiver_ticks
  receiver_reset
  trellis_ticks=$(cpu_ticks "$TRELLIS_PID")
  receiver_ticks=$(cpu_ticks "$RECEIVER_PID")
  started=$(date +%s.%N)
  create_subscription "$name" backlog "$hook_url" earliest "$delivery"
  # Generous: even 500 events/s finishes in time.
  wait_committed "$name" "$EVENTS" $((60 + EVENTS / 500)) ||
    log "subscription $name did not deliver all $EVENTS events in time"
  # Wall time from the create request to the poll that saw the last commit: a cross-check of
  # the receiver's window that also counts the start-up and up to one poll interval.
  awk -v started="$started" -v now="$(date +%s.%N)" 'BEGIN { printf "%.3f", now - started }' \
    >"$WORK_DIR/$name.wall"
  receiver_stats "$WORK_DIR/$name.json"
  # The status polls cost the runtime a little too; at four a second it is lost in the noise.
  echo "$(($(cpu_ticks "$TRELLIS_PID") - trellis_ticks)) $(($(cpu_ticks "$RECEIVER_PID") - receiver_ticks))" \
    >"$WORK_DIR/$name.ticks"
  cp "$WORK_DIR/status.json" "$WORK_DIR/$name.status.json"
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/subscriptions/$name"
}

log "delivering the backlog: concurrency fixed at $CONCURRENCY"
deliver_backlog fixed "{\"concurrency\":$CONCURRENCY}"
log "delivering the backlog: adaptive concurrency (the default, 1 to 64)"
deliver_backlog adaptive "{}"
# Publishing the backlog peaks at about what bench/publish.sh sees; more is delivery's.
backlog_hwm=$(rss_mib "$TRELLIS_PID" VmHWM)

measure_ceiling ceiling-after

log "end-to-end latency: publishing at $LATENCY_RATE events/s, open loop, to a live subscription"
create_subscription live live "$hook_url" latest "{}"
latency_args=(
  "${CE_ARGS[@]}" --body-size "$BODY_SIZE" --connections 16 --rate "$LATENCY_RATE"
  --send-time-header ce-sentns --warmup 0
)
# Warm-up outside the measured window: connections, the topic's writer thread and the delivery
# client's pool are all set up by then, and adaptive concurrency has settled.
loadgen "$trellis_url/v1/topics/live/events" "$WORK_DIR/live-warmup.json" "${latency_args[@]}" \
  --duration "$WARMUP"
n_live=$(next_offset live)
wait_committed live "$n_live" 30 || die "the warm-up events were not delivered in 30 s"
receiver_reset
loadgen "$trellis_url/v1/topics/live/events" "$WORK_DIR/live-publish.json" "${latency_args[@]}" \
  --duration "$LATENCY_DURATION"
n_live=$(next_offset live)
wait_committed live "$n_live" 60 ||
  log "the measured events were not all delivered within 60 s"
receiver_stats "$WORK_DIR/live.json"
expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/subscriptions/live"

stop_process "$TRELLIS_PID" 30
TRELLIS_PID=""
stop_process "$RECEIVER_PID" 5
RECEIVER_PID=""

log "dead endpoint: fresh trellis serve, $PENDING events pending"
# Deduplication off: the pending events below repeat their ids from batch to batch.
start_trellis "$WORK_DIR/data-dead" "$WORK_DIR/trellis-dead.log" --dedup-window-ms 0
dead_port=$(free_port)
create_subscription dead pending "http://127.0.0.1:$dead_port/hook" earliest "{}"
# Batched mode, BATCH small events a body. Ids repeat from batch to batch, so this runtime runs
# with deduplication off; unique ids would need a body per request for nothing this benchmark
# measures.
awk -v n="$BATCH" -v size="$PENDING_DATA_BYTES" 'BEGIN {
  data = sprintf("%" size "s", ""); gsub(/ /, "x", data)
  printf "["
  for (i = 0; i < n; i++) {
    if (i) printf ","
    printf "{\"specversion\":\"1.0\",\"id\":\"pending-%d\",\"source\":\"/trellis/bench\",", i
    printf "\"type\":\"dev.trellis.bench.pending\",\"data\":\"%s\"}", data
  }
  printf "]"
}' >"$WORK_DIR/batch.json"
sleep 1
dead_idle_rss=$(rss_mib "$TRELLIS_PID" VmRSS)
loadgen "$trellis_url/v1/topics/pending/events" "$WORK_DIR/pending-publish.json" \
  --header 'content-type: application/cloudevents-batch+json' --body-file "$WORK_DIR/batch.json" \
  --connections 4 --requests $(((PENDING + BATCH - 1) / BATCH)) --warmup 0 --duration 3600
n_pending=$(next_offset pending)
# Let retries, the breaker and the offset store settle before reading memory.
sleep 3
subscription_status dead "$WORK_DIR/dead.status.json"
dead_rss_after_publish=$(rss_mib "$TRELLIS_PID" VmRSS)

log "dead endpoint: publish probe, $PROBE_RATE events/s for $PROBE_SECONDS s, open loop"
loadgen "$trellis_url/v1/topics/pending/events" "$WORK_DIR/probe.json" "${CE_ARGS[@]}" \
  --body-size "$BODY_SIZE" --connections 16 --rate "$PROBE_RATE" --duration "$PROBE_SECONDS" \
  --warmup 0
is_running "$TRELLIS_PID" || die "trellis serve exited with events pending"
dead_rss=$(rss_mib "$TRELLIS_PID" VmRSS)
dead_hwm=$(rss_mib "$TRELLIS_PID" VmHWM)
subscription_status dead "$WORK_DIR/dead.status.json"
stop_process "$TRELLIS_PID" 30
dead_exit_rc=$STOPPED_RC
TRELLIS_PID=""

ceiling_before=$(json_field "$WORK_DIR/ceiling.json" rate)
ceiling_after=$(json_field "$WORK_DIR/ceiling-after.json" rate)
ceiling_rate=$(calc "($ceiling_before + $ceiling_after) / 2")
publish_rate=$(json_field "$WORK_DIR/prepublish.json" rate)
fixed_rate=$(json_field "$WORK_DIR/fixed.json" rate)
fixed_received=$(json_field "$WORK_DIR/fixed.json" requests)
fixed_committed=$(json_field "$WORK_DIR/fixed.status.json" committed_offset)
fixed_wall_rate=$(calc "$fixed_committed / $(cat "$WORK_DIR/fixed.wall")")
fixed_pct=$(calc "100 * $fixed_rate / $ceiling_rate")
read -r fixed_trellis_ticks fixed_receiver_ticks <"$WORK_DIR/fixed.ticks"
fixed_trellis_us=$(us_per "$fixed_trellis_ticks" "$fixed_received")
fixed_receiver_us=$(us_per "$fixed_receiver_ticks" "$fixed_received")
adaptive_rate=$(json_field "$WORK_DIR/adaptive.json" rate)
adaptive_committed=$(json_field "$WORK_DIR/adaptive.status.json" committed_offset)
adaptive_pct=$(calc "100 * $adaptive_rate / $ceiling_rate")
live_published=$(json_field "$WORK_DIR/live-publish.json" ok)
live_received=$(json_field "$WORK_DIR/live.json" latency_count)
live_p50=$(json_field "$WORK_DIR/live.json" p50_ms)
live_p99=$(json_field "$WORK_DIR/live.json" p99_ms)
live_max=$(json_field "$WORK_DIR/live.json" max_ms)
live_publish_p50=$(json_field "$WORK_DIR/live-publish.json" p50_ms)
live_publish_p99=$(json_field "$WORK_DIR/live-publish.json" p99_ms)
live_send_lag_p99=$(json_field "$WORK_DIR/live-publish.json" send_lag_p99_ms)
pending_lag=$(json_field "$WORK_DIR/dead.status.json" lag)
dead_circuit=$(json_field "$WORK_DIR/dead.status.json" circuit | tr -d '"')
pending_publish_rate=$(calc "$n_pending / $(json_field "$WORK_DIR/pending-publish.json" duration_s)")
probe_ok=$(json_field "$WORK_DIR/probe.json" ok)
probe_requests=$(json_field "$WORK_DIR/probe.json" requests)
probe_p50=$(json_field "$WORK_DIR/probe.json" p50_ms)
probe_p99=$(json_field "$WORK_DIR/probe.json" p99_ms)

results=(
  "$(verdict "$fixed_pct >= $MIN_DELIVERY_RATIO_PCT && $fixed_committed == $EVENTS")"
  "$(verdict "$live_p99 < $MAX_E2E_P99_MS && $live_received >= $live_published")"
  "$(verdict "$dead_hwm < $MAX_PENDING_RSS_MIB && $n_pending >= $PENDING")"
  "$(verdict "$probe_requests > 0 && $probe_ok == $probe_requests")"
)

REPORTED=1
row() { printf '%-40s %-26s %-14s %s\n' "$@"; }
echo
echo "Delivery benchmark: ${BODY_SIZE}-byte binary-mode events, one subscription, one URL," \
  "receiver trellis-bench-receiver (200)"
row "" "measured" "target" "result"
row "ceiling: loadgen -> receiver, c=$CONCURRENCY" "$(calc "$ceiling_rate") req/s" "" ""
row "  before / after the deliveries" "$(calc "$ceiling_before") / $(calc "$ceiling_after") req/s" "" ""
row "  (publishing the backlog, diagnostic)" "$(calc "$publish_rate") events/s" "" ""
row "delivery, concurrency $CONCURRENCY" "$(calc "$fixed_rate") events/s" "" ""
row "delivery / ceiling" "$fixed_pct %" ">= $MIN_DELIVERY_RATIO_PCT %" "${results[0]}"
row "  received / committed of $EVENTS" "$fixed_received / $fixed_committed" "" ""
row "  from create to last commit" "$fixed_wall_rate events/s" "" ""
row "  CPU per event: trellis / receiver" "$fixed_trellis_us / $fixed_receiver_us us" "" ""
row "  receiver CPU per request, ceiling run" "$ceiling_receiver_us us" "" ""
row "delivery, adaptive 1-64 (diagnostic)" "$(calc "$adaptive_rate") events/s, $adaptive_pct %" "" ""
row "  committed of $EVENTS" "$adaptive_committed" "" ""
row "RSS high-water mark after both (diag.)" "$backlog_hwm MiB" "" ""
row "publish->receipt at $LATENCY_RATE/s, p50 / p99" "$live_p50 / $live_p99 ms" "p99 < $MAX_E2E_P99_MS ms" "${results[1]}"
row "  max; received / published" "$live_max ms; $live_received / $live_published" "" ""
row "  publish alone, p50 / p99" "$live_publish_p50 / $live_publish_p99 ms" "" ""
row "  load generator send lag p99" "$live_send_lag_p99 ms" "" ""
row "dead endpoint: events pending (lag)" "$pending_lag, circuit $dead_circuit" ">= $PENDING" ""
row "  published at" "$pending_publish_rate events/s" "" ""
row "  RSS idle / after publish / end" "$dead_idle_rss / $dead_rss_after_publish / $dead_rss MiB" "" ""
row "  RSS high-water mark" "$dead_hwm MiB" "< $MAX_PENDING_RSS_MIB MiB" "${results[2]}"
row "  publish probe at $PROBE_RATE/s: 2xx / sent" "$probe_ok / $probe_requests" "all" "${results[3]}"
row "  publish probe p50 / p99" "$probe_p50 / $probe_p99 ms" "" ""
row "  exit code after SIGTERM" "$dead_exit_rc" "" ""

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
