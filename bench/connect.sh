#!/usr/bin/env bash
# Connector benchmark: the file source connector's throughput against publishing the same lines
# through the HTTP API, in one run; with --rss, the runtime's peak RSS while the file source
# reads a 1 GiB file.
#
# Throughput (the default):
# 1. Builds release `trellis` and `trellis-bench`.
# 2. Writes a file of LINES lines of LINE_BYTES bytes (plus the `\n`), printable ASCII, each
#    line different, and starts `trellis serve` (embedded log, `--fsync always`, the default)
#    on a fresh data dir and a free loopback port.
# 3. ROUNDS rounds, each on fresh topics, the order of the two steps alternating:
#    (a) HTTP batches: `trellis-batch-publish` sends every line as its own CloudEvent (text data,
#        a unique id) in `application/cloudevents-batch+json` batches of BATCH events over
#        CONNECTIONS keep-alive connections to topic `http-<round>`; the time runs from its
#        first request to its last answer;
#    (b) the connector: `trellis-await-topic` creates a `file-source` connector on the same file
#        into topic `file-<round>` (`POST /v1/connectors`) and polls `GET /v1/topics/...` every
#        POLL_MS ms until its `next_offset` reaches LINES; the time runs from the create request
#        to that poll (nothing subtracted: up to one poll interval late, printed as the
#        resolution). Then the connector and both topics are deleted.
#    For each step it reads Trellis' CPU time from /proc and its fsyncs from /metrics.
# 4. Prints each round and the medians; ratio = connector lines/s / HTTP batch lines/s.
#
# --rss: writes RSS_BYTES (1 GiB) of such lines in the work dir, starts a fresh `trellis
# serve`, runs the file source over it to the end and reads the runtime's high-water mark
# (VmHWM). The topic then holds about as much again; both go with the work dir at the end.
#
# Exits 1 if a target fails. Env overrides: LINES (200000, about 200 MiB), LINE_BYTES (1024),
# BATCH (500, also the file source's default max_batch), CONNECTIONS (4), ROUNDS (3), POLL_MS
# (50), RSS_BYTES (1073741824), CONNECTOR_EXTRA (more connector config, a JSON fragment such as
# `"max_batch":2000`, for diagnosis), WRK (1: after the rounds, also drive the HTTP step with
# `wrk` and bench/wrk-batch.lua for WRK_DURATION (5) seconds, as a diagnostic), TRELLIS_BIN (a `trellis` binary to measure instead of the
# one built), TRELLIS_ARGS (extra `trellis serve` flags, for diagnosis, such as
# `--dedup-window-ms 0`). The batch publisher shares this machine's cores with Trellis (its CPU is printed);
# compare figures within one run. Linux only (/proc).
set -euo pipefail

MODE=throughput
case ${1:-} in
  "") ;;
  --rss) MODE=rss ;;
  *)
    echo "usage: bench/connect.sh [--rss]" >&2
    exit 2
    ;;
esac

LINES=${LINES:-200000}
LINE_BYTES=${LINE_BYTES:-1024}
BATCH=${BATCH:-500}
CONNECTIONS=${CONNECTIONS:-4}
ROUNDS=${ROUNDS:-3}
POLL_MS=${POLL_MS:-50}
RSS_BYTES=${RSS_BYTES:-1073741824}
CONNECTOR_EXTRA=${CONNECTOR_EXTRA:-}
WRK=${WRK:-1}
# Word-split on purpose: extra `trellis serve` flags, e.g. `--dedup-window-ms 0`.
read -r -a TRELLIS_ARGS <<<"${TRELLIS_ARGS:-}"
WRK_DURATION=${WRK_DURATION:-5}

# Targets, from the connector issue.
MIN_RATIO_PCT=80
MAX_RSS_MIB=150

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TRELLIS=${TRELLIS_BIN:-$BIN/trellis}
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-connect-bench.XXXXXX")
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
  got=$(curl -s -o "$out" -w '%{http_code}' --max-time 30 "$@" || true)
  [[ $got == "$want" ]] || die "curl $* answered $got, not $want: $(cat "$out" 2>/dev/null)"
}

# Starts `trellis serve` on a fresh data dir $1 with its log in $2; sets TRELLIS_PID and
# trellis_url once it answers /readyz.
start_trellis() {
  local data=$1 log_file=$2 port
  port=$(free_port)
  trellis_url="http://127.0.0.1:$port"
  mkdir -p "$data"
  # `--fsync always` is the default; saying so keeps a TRELLIS_FSYNC in the environment out of
  # the result. gRPC is not measured: any free port will do.
  "$TRELLIS" serve --data-dir "$data" --http-addr "127.0.0.1:$port" \
    --grpc-addr 127.0.0.1:0 --fsync always "${TRELLIS_ARGS[@]}" >"$log_file" 2>&1 &
  TRELLIS_PID=$!
  wait_for_status "$trellis_url/readyz" 200 30 "$TRELLIS_PID" ||
    die "trellis serve did not answer 200 on /readyz within 30 s"
}

# Writes $2 lines of LINE_BYTES bytes and a `\n` to $1: a 10-digit line number, a space, and
# letters and digits from a pattern that shifts with the line, so no two lines are alike and
# none needs escaping in JSON.
write_lines() {
  awk -v n="$2" -v width="$LINE_BYTES" 'BEGIN {
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    while (length(pattern) < 2 * width + 64) pattern = pattern chars
    fill = width - 11
    if (fill < 0) fill = 0
    for (i = 0; i < n; i++) printf "%010d %s\n", i, substr(pattern, i % 62 + 1, fill)
  }' >"$1"
}

# The sum of a metric's series in Trellis' /metrics (0 when it has none yet).
metric_sum() {
  curl -s --max-time 10 "$trellis_url/metrics" |
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $NF } END { printf "%d", sum }'
}

# The connector config for file $1 into topic $2, as the body of `POST /v1/connectors`
# with name $3, written to $4.
connector_body() {
  local extra=""
  [[ -n $CONNECTOR_EXTRA ]] && extra=",$CONNECTOR_EXTRA"
  printf '{"name":"%s","config":{"connector.class":"file-source","path":"%s","topic":"%s"%s}}\n' \
    "$3" "$1" "$2" "$extra" >"$4"
}

next_offset() {
  expect_status 200 "$WORK_DIR/topic.json" "$trellis_url/v1/topics/$1"
  json_field "$WORK_DIR/topic.json" next_offset
}

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

if [[ $MODE == rss ]]; then
  n_rss_lines=$(((RSS_BYTES + LINE_BYTES) / (LINE_BYTES + 1)))
  log "writing $n_rss_lines lines of $LINE_BYTES bytes ($((RSS_BYTES >> 20)) MiB) to $WORK_DIR/lines-1g.txt"
  write_lines "$WORK_DIR/lines-1g.txt" "$n_rss_lines"
  file_mib=$(($(stat -c %s "$WORK_DIR/lines-1g.txt") >> 20))
  start_trellis "$WORK_DIR/data" "$WORK_DIR/trellis.log"
  sleep 1
  idle_rss=$(rss_mib "$TRELLIS_PID" VmRSS)
  connector_body "$WORK_DIR/lines-1g.txt" big big "$WORK_DIR/big.body.json"
  ticks=$(cpu_ticks "$TRELLIS_PID")
  log "file source over $file_mib MiB into topic \`big\`"
  # Sampled while it runs too, for the curve; the high-water mark is the figure.
  (
    while is_running "$TRELLIS_PID"; do
      printf '%s %s\n' "$(date +%s.%N)" "$(rss_mib "$TRELLIS_PID" VmRSS)"
      sleep 1
    done
  ) >"$WORK_DIR/rss-samples.txt" 2>/dev/null &
  sampler_pid=$!
  "$BIN/trellis-await-topic" --url "$trellis_url" --topic big --until "$n_rss_lines" \
    --interval-ms 200 --timeout 1800 --post /v1/connectors --post-body "$WORK_DIR/big.body.json" \
    --json >"$WORK_DIR/big.json"
  hwm=$(rss_mib "$TRELLIS_PID" VmHWM)
  end_rss=$(rss_mib "$TRELLIS_PID" VmRSS)
  us_per_line=$(us_per $(($(cpu_ticks "$TRELLIS_PID") - ticks)) "$n_rss_lines")
  dedup_bytes=$(metric_sum trellis_dedup_memory_bytes)
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampled_max=$(awk '$2 > max { max = $2 } END { printf "%.1f", max }' "$WORK_DIR/rss-samples.txt")
  stored_mib=$(du -sm "$WORK_DIR/data" | awk '{ print $1 }')
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/connectors/big"
  stop_process "$TRELLIS_PID" 30
  trellis_rc=$STOPPED_RC
  TRELLIS_PID=""
  rm -f "$WORK_DIR/lines-1g.txt"
  rate=$(json_field "$WORK_DIR/big.json" rate)
  duration=$(json_field "$WORK_DIR/big.json" duration_s)
  results=(
    "$(verdict "$hwm < $MAX_RSS_MIB")"
    "$(verdict "$trellis_rc == 0")"
  )
  REPORTED=1
  row() { printf '%-44s %-26s %-12s %s\n' "$@"; }
  echo
  echo "Connector RSS: file source over $file_mib MiB ($n_rss_lines lines of $LINE_BYTES bytes)," \
    "embedded log, --fsync always${TRELLIS_ARGS[*]:+ ${TRELLIS_ARGS[*]}}"
  row "" "measured" "target" "result"
  row "lines published" "$n_rss_lines in $(calc "$duration") s, $(calc "$rate") lines/s" "" ""
  row "trellis CPU per line" "$us_per_line us" "" ""
  row "RSS idle / at the end" "$idle_rss / $end_rss MiB" "" ""
  row "RSS high-water mark (VmHWM)" "$hwm MiB" "< $MAX_RSS_MIB MiB" "${results[0]}"
  row "  largest 1 s sample of VmRSS" "$sampled_max MiB" "" ""
  row "  deduplication memory at the end" "$(calc "$dedup_bytes / 1048576") MiB" "" ""
  row "  data dir after the run" "$stored_mib MiB" "" ""
  row "exit code after SIGTERM" "$trellis_rc" "0" "${results[1]}"
  for result in "${results[@]}"; do
    [[ $result == PASS ]] || exit 1
  done
  exit 0
fi

log "writing $LINES lines of $LINE_BYTES bytes to $WORK_DIR/lines.txt"
write_lines "$WORK_DIR/lines.txt" "$LINES"
file_mib=$(calc "$(stat -c %s "$WORK_DIR/lines.txt") / 1048576")

log "trellis serve, data in $WORK_DIR/data"
start_trellis "$WORK_DIR/data" "$WORK_DIR/trellis.log"

# A short warm-up of both paths on topics of their own, so the first round does not pay for
# first allocations, the page cache or the first topic's files alone.
log "warm-up"
head -n 20000 "$WORK_DIR/lines.txt" >"$WORK_DIR/warmup.txt"
"$BIN/trellis-batch-publish" --url "$trellis_url/v1/topics/warmup-http/events" \
  --file "$WORK_DIR/warmup.txt" --batch "$BATCH" --connections "$CONNECTIONS" --json \
  >"$WORK_DIR/warmup-http.json"
connector_body "$WORK_DIR/warmup.txt" warmup-file warmup "$WORK_DIR/warmup.body.json"
"$BIN/trellis-await-topic" --url "$trellis_url" --topic warmup-file --until 20000 \
  --interval-ms "$POLL_MS" --timeout 300 --post /v1/connectors \
  --post-body "$WORK_DIR/warmup.body.json" --json >"$WORK_DIR/warmup-file.json"
expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/connectors/warmup"

# Step (a) of round $1: the HTTP batches. Writes http-$1.json (the publisher's report) and
# http-$1.extra (Trellis' CPU ticks and fsyncs over the step).
http_step() {
  local round=$1 ticks fsyncs
  log "round $round: HTTP batches of $BATCH over $CONNECTIONS connections -> topic http-$round"
  ticks=$(cpu_ticks "$TRELLIS_PID")
  fsyncs=$(metric_sum trellis_log_fsync_seconds_count)
  "$BIN/trellis-batch-publish" --url "$trellis_url/v1/topics/http-$round/events" \
    --file "$WORK_DIR/lines.txt" --batch "$BATCH" --connections "$CONNECTIONS" --json \
    >"$WORK_DIR/http-$round.json"
  echo "$(($(cpu_ticks "$TRELLIS_PID") - ticks)) $(($(metric_sum trellis_log_fsync_seconds_count) - fsyncs))" \
    >"$WORK_DIR/http-$round.extra"
  local stored
  stored=$(next_offset "http-$round")
  ((stored == LINES)) || die "topic http-$round holds $stored events, not $LINES"
}

# Step (b) of round $1: the file source. Writes file-$1.json (the watcher's report) and
# file-$1.extra (Trellis' CPU ticks and fsyncs over the step).
file_step() {
  local round=$1 ticks fsyncs
  log "round $round: file source -> topic file-$round"
  connector_body "$WORK_DIR/lines.txt" "file-$round" "bench-$round" "$WORK_DIR/file-$round.body.json"
  ticks=$(cpu_ticks "$TRELLIS_PID")
  fsyncs=$(metric_sum trellis_log_fsync_seconds_count)
  "$BIN/trellis-await-topic" --url "$trellis_url" --topic "file-$round" --until "$LINES" \
    --interval-ms "$POLL_MS" --timeout 1800 --post /v1/connectors \
    --post-body "$WORK_DIR/file-$round.body.json" --json >"$WORK_DIR/file-$round.json"
  echo "$(($(cpu_ticks "$TRELLIS_PID") - ticks)) $(($(metric_sum trellis_log_fsync_seconds_count) - fsyncs))" \
    >"$WORK_DIR/file-$round.extra"
  expect_status 200 "$WORK_DIR/file-$round.status.json" "$trellis_url/v1/connectors/bench-$round/status"
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/connectors/bench-$round"
}

for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then
    http_step "$round"
    file_step "$round"
  else
    file_step "$round"
    http_step "$round"
  fi
  # The disk holds the file once and each round's topics twice over; one round's is enough.
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/topics/http-$round"
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/topics/file-$round"
done

# Diagnostic: wrk sending the same batches, to show the in-tree publisher is not what limits
# the HTTP figure. wrk runs for a fixed time rather than through the file, so it measures the
# peak rate without the last batches' tail.
wrk_rate="" wrk_us=""
if [[ $WRK != 0 ]] && command -v wrk >/dev/null; then
  log "wrk: the same batches for ${WRK_DURATION} s -> topic wrk"
  wrk_ticks=$(cpu_ticks "$TRELLIS_PID")
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%U %S' -o "$WORK_DIR/wrk.time" wrk -t2 -c"$CONNECTIONS" -d"${WRK_DURATION}s" \
      -s "$ROOT/bench/wrk-batch.lua" "$trellis_url/v1/topics/wrk/events" -- "$WORK_DIR/lines.txt" \
      "$BATCH" >"$WORK_DIR/wrk.out"
  else
    : >"$WORK_DIR/wrk.time"
    wrk -t2 -c"$CONNECTIONS" -d"${WRK_DURATION}s" -s "$ROOT/bench/wrk-batch.lua" \
      "$trellis_url/v1/topics/wrk/events" -- "$WORK_DIR/lines.txt" "$BATCH" >"$WORK_DIR/wrk.out"
  fi
  wrk_ticks=$(($(cpu_ticks "$TRELLIS_PID") - wrk_ticks))
  wrk_lines=$(next_offset wrk)
  wrk_bad=$(awk '/Non-2xx|Socket errors/ { bad = 1 } END { print bad + 0 }' "$WORK_DIR/wrk.out")
  ((wrk_bad == 0)) || log "wrk saw errors: $(cat "$WORK_DIR/wrk.out")"
  wrk_rate=$(calc "$(awk '/^Requests\/sec:/ { print $2 }' "$WORK_DIR/wrk.out") * $BATCH")
  # Client CPU includes reading its lines and building every batch, at start and per request.
  wrk_us=$(awk -v n="$wrk_lines" '{ cpu += $1 + $2 } END { if (NR && n > 0) printf "%.2f", cpu * 1e6 / n; else printf "-" }' "$WORK_DIR/wrk.time")
  wrk_trellis_us=$(us_per "$wrk_ticks" "$wrk_lines")
  expect_status 204 "$WORK_DIR/answer.json" -X DELETE "$trellis_url/v1/topics/wrk"
fi

stop_process "$TRELLIS_PID" 30
trellis_rc=$STOPPED_RC
TRELLIS_PID=""

REPORTED=1
ratios=() http_rates=() file_rates=() http_us=() file_us=() client_us=() http_per_fsync=()
file_per_fsync=() file_running=() file_first=() duplicates=0
echo
echo "Connector benchmark: $LINES lines of $LINE_BYTES bytes ($file_mib MiB), embedded log," \
  "--fsync always${TRELLIS_ARGS[*]:+ ${TRELLIS_ARGS[*]}}${CONNECTOR_EXTRA:+, connector $CONNECTOR_EXTRA}; HTTP batches of $BATCH over $CONNECTIONS connections; polls every $POLL_MS ms"
printf '%-6s %-16s %-16s %-8s %-18s %-20s %-16s %s\n' round "HTTP lines/s" "file lines/s" ratio \
  "CPU/line HTTP/file" "events/fsync HTTP/file" "client CPU/line" "file: first events; rate after"
for ((round = 1; round <= ROUNDS; round++)); do
  http_rate=$(json_field "$WORK_DIR/http-$round.json" rate)
  file_rate=$(json_field "$WORK_DIR/file-$round.json" rate)
  read -r h_ticks h_fsyncs <"$WORK_DIR/http-$round.extra"
  read -r f_ticks f_fsyncs <"$WORK_DIR/file-$round.extra"
  ratio=$(calc "100 * $file_rate / $http_rate")
  ratios+=("$ratio")
  http_rates+=("$http_rate")
  file_rates+=("$file_rate")
  http_us+=("$(us_per "$h_ticks" "$LINES")")
  file_us+=("$(us_per "$f_ticks" "$LINES")")
  client_us+=("$(calc "$(json_field "$WORK_DIR/http-$round.json" client_cpu_us_per_line)")")
  http_per_fsync+=("$(calc "$LINES / ($h_fsyncs > 0 ? $h_fsyncs : 1)")")
  file_per_fsync+=("$(calc "$LINES / ($f_fsyncs > 0 ? $f_fsyncs : 1)")")
  file_first+=("$(calc "1000 * $(json_field "$WORK_DIR/file-$round.json" first_seen_s)")")
  file_running+=("$(json_field "$WORK_DIR/file-$round.json" running_rate)")
  duplicates=$((duplicates + $(json_field "$WORK_DIR/http-$round.json" duplicates)))
  i=$((round - 1))
  printf '%-6s %-16s %-16s %-8s %-18s %-20s %-16s %s\n' "$round" "$(calc "$http_rate")" \
    "$(calc "$file_rate")" "$ratio %" "${http_us[i]} / ${file_us[i]} us" \
    "${http_per_fsync[i]} / ${file_per_fsync[i]}" "${client_us[i]} us" \
    "${file_first[i]} ms; $(calc "${file_running[i]}")/s"
done
median_ratio=$(median "${ratios[@]}")
results=(
  "$(verdict "$median_ratio >= $MIN_RATIO_PCT")"
  "$(verdict "$duplicates == 0 && $trellis_rc == 0")"
)
echo
row() { printf '%-44s %-30s %-12s %s\n' "$@"; }
row "" "median (min-max)" "target" "result"
row "HTTP batches, lines/s" "$(median "${http_rates[@]}") ($(printf '%s\n' "${http_rates[@]}" | sort -g | sed -n '1p;$p' | paste -sd-))" "" ""
row "file source, lines/s" "$(median "${file_rates[@]}") ($(printf '%s\n' "${file_rates[@]}" | sort -g | sed -n '1p;$p' | paste -sd-))" "" ""
row "file source / HTTP batches" "$median_ratio % ($(printf '%s\n' "${ratios[@]}" | sort -g | sed -n '1p;$p' | paste -sd-))" ">= $MIN_RATIO_PCT %" "${results[0]}"
row "trellis CPU per line, HTTP / file" "$(median "${http_us[@]}") / $(median "${file_us[@]}") us" "" ""
row "events per fsync, HTTP / file" "$(median "${http_per_fsync[@]}") / $(median "${file_per_fsync[@]}")" "" ""
row "batch publisher CPU per line (in window)" "$(median "${client_us[@]}") us" "" ""
if [[ -n $wrk_rate ]]; then
  row "  diagnostic: wrk, same batches, ${WRK_DURATION} s" "$wrk_rate lines/s" "" ""
  row "  wrk CPU / trellis CPU per line" "$wrk_us / $wrk_trellis_us us" "" ""
fi
row "file source: first events after" "$(median "${file_first[@]}") ms" "" ""
row "duplicates; exit code after SIGTERM" "$duplicates; $trellis_rc" "0; 0" "${results[1]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
