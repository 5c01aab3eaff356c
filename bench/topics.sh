#!/usr/bin/env bash
# Topic-scaling benchmark: what 10,000 topics cost one `trellis serve`, and whether publishing
# to them is as quick as publishing to 10, in one run.
#
# 1. Builds release `trellis` and `trellis-bench`.
# 2. Starts `trellis serve` (fsync policy `always`) with `[topics] max_topics` above the count.
# 3. Creates TOPICS topics by publishing one event to each (auto-create), timed.
# 4. Publishes a trickle, open loop at RATE req/s in all, alternately over 10 topics and over all
#    TOPICS topics (ROUNDS times each), and compares p99 latency: the medians over the rounds.
# 5. Reads threads (/proc/PID/status), open descriptors (/proc/PID/fd), RSS (VmRSS, VmHWM) and
#    the data dir's disk use.
# 6. Stops Trellis with SIGTERM (timed, must exit 0), starts it again on the same data dir and
#    times how long until /readyz answers with every topic recovered.
#
# Exits 1 if any target fails. Env overrides: TOPICS (10000), RATE (500 req/s in all), DURATION
# (measured seconds per round, 10), WARMUP (2), ROUNDS (2), CONNECTIONS (32). Linux only.
set -euo pipefail

TOPICS=${TOPICS:-10000}
RATE=${RATE:-500}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-32}
FEW_TOPICS=10
BODY_SIZE=256

# Targets, from the topic-scaling issue.
MAX_THREADS=32
MAX_RSS_MIB=200
MAX_P99_FACTOR=2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# Runs the load generator against URL $1 (with `{topic}`) over $2 topics, writing its JSON
# report to $3; further args are passed on.
loadgen() {
  local url=$1 n_topics=$2 out=$3
  shift 3
  "$BIN/trellis-loadgen" --url "$url" --topics "$n_topics" --connections "$CONNECTIONS" \
    --body-size "$BODY_SIZE" --ce-binary --header 'ce-specversion: 1.0' \
    --header 'ce-type: dev.trellis.bench.topics' --header 'ce-source: /trellis/bench' \
    --header 'content-type: application/octet-stream' --json "$@" >"$out"
}

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

DATA=$WORK_DIR/data
CONFIG=$WORK_DIR/trellis.toml
# Room for the many topics, the few, and nothing else.
printf '[topics]\nmax_topics = %d\n' $((TOPICS + FEW_TOPICS)) >"$CONFIG"

# Starts `trellis serve` on $DATA; sets TRELLIS_PID and trellis_url once /readyz answers.
start_trellis() {
  local port
  port=$(free_port)
  trellis_url="http://127.0.0.1:$port"
  mkdir -p "$DATA"
  "$BIN/trellis" serve --config "$CONFIG" --data-dir "$DATA" --http-addr "127.0.0.1:$port" \
    --grpc-addr 127.0.0.1:0 --fsync always >>"$WORK_DIR/trellis.log" 2>&1 &
  TRELLIS_PID=$!
  wait_for_status "$trellis_url/readyz" 200 300 "$TRELLIS_PID" ||
    die "trellis serve did not answer 200 on /readyz within 300 s"
}

threads_of() { awk '$1 == "Threads:" { print $2 }' "/proc/$1/status"; }
fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
now_s() { date +%s.%N; }

log "trellis serve, data in $DATA"
start_trellis
idle_threads=$(threads_of "$TRELLIS_PID")

log "creating $TOPICS topics, one publish each"
started=$(now_s)
loadgen "$trellis_url/v1/topics/many-{topic}/events" "$TOPICS" "$WORK_DIR/create.json" \
  --requests "$TOPICS" --warmup 0 --duration 600
create_s=$(calc "$(now_s) - $started")
created=$(json_field "$WORK_DIR/create.json" ok)
((created == TOPICS)) || die "only $created of $TOPICS topics were created; see the loadgen line above"
# The few topics exist before they are measured, like the many.
loadgen "$trellis_url/v1/topics/few-{topic}/events" "$FEW_TOPICS" "$WORK_DIR/create-few.json" \
  --requests "$FEW_TOPICS" --warmup 0 --duration 60

few_p99=()
many_p99=()
n_failed=0
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: $RATE req/s over $FEW_TOPICS topics"
  loadgen "$trellis_url/v1/topics/few-{topic}/events" "$FEW_TOPICS" "$WORK_DIR/few-$round.json" \
    --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
  log "round $round: $RATE req/s over $TOPICS topics"
  loadgen "$trellis_url/v1/topics/many-{topic}/events" "$TOPICS" "$WORK_DIR/many-$round.json" \
    --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
  few_p99+=("$(json_field "$WORK_DIR/few-$round.json" p99_ms)")
  many_p99+=("$(json_field "$WORK_DIR/many-$round.json" p99_ms)")
  for run in few many; do
    n_failed=$((n_failed + $(json_field "$WORK_DIR/$run-$round.json" non_2xx) +
      $(json_field "$WORK_DIR/$run-$round.json" errors)))
  done
done
is_running "$TRELLIS_PID" || die "trellis serve exited during the runs"

threads=$(threads_of "$TRELLIS_PID")
fds=$(fds_of "$TRELLIS_PID")
rss=$(rss_mib "$TRELLIS_PID" VmRSS)
peak_rss=$(rss_mib "$TRELLIS_PID" VmHWM)
disk_mib=$(du -sk "$DATA" | awk '{ printf "%.1f", $1 / 1024 }')

log "stopping trellis with SIGTERM"
started=$(now_s)
stop_process "$TRELLIS_PID" 120
stop_s=$(calc "$(now_s) - $started")
trellis_rc=$STOPPED_RC
TRELLIS_PID=""

log "starting again on the same data dir"
started=$(now_s)
start_trellis
restart_s=$(calc "$(now_s) - $started")
restart_threads=$(threads_of "$TRELLIS_PID")
restart_fds=$(fds_of "$TRELLIS_PID")
restart_rss=$(rss_mib "$TRELLIS_PID" VmRSS)
n_listed=$(curl -s "$trellis_url/v1/topics" | grep -o '"name":' | wc -l)
stop_process "$TRELLIS_PID" 120
TRELLIS_PID=""

# lib.sh's `median` keeps one decimal; these latencies can be well under a millisecond.
median3() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2
  }'
}
few_med=$(median3 "${few_p99[@]}")
many_med=$(median3 "${many_p99[@]}")
results=(
  "$(verdict "$threads <= $MAX_THREADS")"
  "$(verdict "$peak_rss < $MAX_RSS_MIB")"
  "$(verdict "$many_med <= $MAX_P99_FACTOR * $few_med")"
  "$(verdict "$n_failed == 0")"
  "$(verdict "$trellis_rc == 0")"
  "$(verdict "$n_listed == $TOPICS + $FEW_TOPICS")"
)

REPORTED=1
row() { printf '%-38s %-26s %-16s %s\n' "$@"; }
echo
echo "Topic benchmark: $TOPICS topics, $RATE req/s open loop over $CONNECTIONS connections," \
  "${BODY_SIZE}-byte events, $ROUNDS rounds of ${DURATION} s (+${WARMUP} s warm-up)"
row "" "measured" "target" "result"
row "create $TOPICS topics (1 publish each)" "$create_s s" "" ""
row "p99, $FEW_TOPICS topics (per round)" "${few_p99[*]} ms" "" ""
row "p99, $TOPICS topics (per round)" "${many_p99[*]} ms" "" ""
row "p99 median, $TOPICS vs $FEW_TOPICS topics" "$many_med vs $few_med ms" "<= ${MAX_P99_FACTOR}x" "${results[2]}"
row "threads (idle at start / after runs)" "$idle_threads / $threads" "<= $MAX_THREADS" "${results[0]}"
row "open descriptors" "$fds" "" ""
row "RSS now / peak" "$rss / $peak_rss MiB" "< $MAX_RSS_MIB MiB" "${results[1]}"
row "disk use of the data dir" "$disk_mib MiB" "" ""
row "non-2xx / transport errors" "$n_failed" "0" "${results[3]}"
row "SIGTERM to exit" "$stop_s s, exit $trellis_rc" "exit 0" "${results[4]}"
row "restart until /readyz" "$restart_s s" "" ""
row "after restart: threads, fds, RSS" "$restart_threads, $restart_fds, $restart_rss MiB" "" ""
row "topics listed after restart" "$n_listed" "$((TOPICS + FEW_TOPICS))" "${results[5]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
