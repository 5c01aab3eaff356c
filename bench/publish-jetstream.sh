# shellcheck shell=bash
# Its variables and functions come from publish.sh and bench/lib.sh, and its functions are called
# through the steps array:
# shellcheck disable=SC2034,SC2154,SC2317
# The JetStream mode of bench/publish.sh (STORAGE=jetstream): Trellis on JetStream, Trellis on
# its embedded log and raw JetStream publishing, in one run. Sourced by publish.sh after the
# build, with its settings, `loadgen` and `start_trellis`; not run on its own.
#
# Each of ROUNDS rounds runs three steps, starting one further along each round so that a slow
# spell of the shared machine weighs on every side:
# - raw: `trellis-nats-pub` publishes 1 KiB payloads to a fresh file-backed stream with
#   CONNECTIONS acks outstanding (the load generator keeps one request in flight on each of
#   CONNECTIONS connections, so both sides have the same window);
# - embedded: a fresh `trellis serve --fsync always`, driven by `trellis-loadgen`;
# - jetstream: a fresh `trellis serve --storage nats://...` on the same nats-server, driven the
#   same way.
# Then, unless WRK=0 or wrk is missing, `wrk` drives both Trellis backends the same way
# (bench/wrk-publish.lua, a unique `ce-id` per request), after a warm-up of WARMUP seconds.
# Every Trellis step publishes to a topic of its own and deletes it afterwards, so no round finds
# the previous one's data (or its ids in the duplicate window).
#
# The issue's ratio targets are the SDK producer's (bench/producer.sh); here, with one event per
# request, the same ratios are printed as diagnostics, beside the CPU each process spends per
# event (the client's from /usr/bin/time, where installed), which is what decides them on two
# shared cores. Targets judged here: peak RSS of `trellis serve` on JetStream, no failed
# publish, exit code 0 after SIGTERM.

ensure_nats_server
use_wrk=0
if [[ $WRK != 0 ]] && command -v wrk >/dev/null; then use_wrk=1; fi
load_at_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
# Runs a client, its user + system CPU seconds in file $1 (empty without GNU time).
client() {
  local out=$1
  shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%U %S' -o "$out" "$@"
  else
    : >"$out"
    "$@"
  fi
}
# Microseconds of client CPU per event, from the file $1 of `client` (or several such files
# concatenated), over $2 events.
client_us() {
  awk -v n="$2" '{ cpu += $1 + $2 } END { if (NR && n > 0) printf "%.1f", cpu * 1e6 / n; else printf "-" }' "$1"
}

start_nats "$WORK_DIR/nats" "$WORK_DIR/nats.log"
log "nats-server $(nats-server --version | sed 's/.*v//') at $nats_url, store in $WORK_DIR/nats"

# The raw JetStream step of round $1: report in raw-$1.json; nats-server and publisher CPU per
# event in raw-$1.extra.
raw_step() {
  local name=raw-$1 nats_ticks
  log "round $1: raw JetStream, $CONNECTIONS acks outstanding"
  nats_ticks=$(cpu_ticks "$NATS_PID")
  client "$WORK_DIR/$name.time" "$BIN/trellis-nats-pub" --url "$nats_url" --stream "RAW$1" \
    --size "$BODY_SIZE" --window "$CONNECTIONS" --count 1000000000 --duration "$DURATION" \
    --warmup "$WARMUP" --delete-after --json >"$WORK_DIR/$name.json"
  local events
  events=$(json_field "$WORK_DIR/$name.json" events)
  echo "$(us_per $(($(cpu_ticks "$NATS_PID") - nats_ticks)) "$events")" \
    "$(client_us "$WORK_DIR/$name.time" "$events")" >"$WORK_DIR/$name.extra"
}

# wrk's figures, from its output in $1: requests/s, non-2xx answers, socket errors, p99 in ms.
wrk_rate() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_non_2xx() { awk '/Non-2xx/ { n = $NF } END { print n + 0 }' "$1"; }
wrk_errors() { awk '/Socket errors:/ { gsub(",", ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' "$1"; }
wrk_p99_ms() {
  awk '$1 == "99%" {
    v = $2
    if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v) }
    else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
    printf "%.2f", v
  }' "$1"
}

# One Trellis step: backend $1 (embedded or jetstream), tool $2 (loadgen or wrk), round $3, on a
# fresh `trellis serve`. Writes the tool's report to <name>.json or <name>.wrk and, to
# <name>.extra: rate, non-2xx + errors, p99 ms, peak RSS MiB, events stored, trellis and
# nats-server CPU per stored event (us), exit code after SIGTERM, client CPU per stored event.
trellis_step() {
  local backend=$1 tool=$2 round=$3 name topic url args=() trellis_ticks nats_ticks
  local rate bad p99 hwm stored trellis_us nats_us
  name=${backend:0:3}-$tool-$round
  topic=$name
  [[ $backend == jetstream ]] && args=(--storage "$nats_url")
  log "round $round: trellis on $backend, $tool"
  start_trellis always "$WORK_DIR/data-$name" "${args[@]}"
  url="$trellis_url/v1/topics/$topic/events"
  trellis_ticks=$(cpu_ticks "$TRELLIS_PID")
  nats_ticks=$(cpu_ticks "$NATS_PID")
  if [[ $tool == loadgen ]]; then
    client "$WORK_DIR/$name.time" "$BIN/trellis-loadgen" --url "$url" "${LOADGEN_ARGS[@]}" \
      >"$WORK_DIR/$name.json"
    rate=$(json_field "$WORK_DIR/$name.json" rate)
    bad=$(($(json_field "$WORK_DIR/$name.json" non_2xx) + $(json_field "$WORK_DIR/$name.json" errors)))
    p99=$(json_field "$WORK_DIR/$name.json" p99_ms)
  else
    if [[ $WARMUP != 0 ]]; then
      client "$WORK_DIR/$name.warmup.time" wrk -t2 -c"$CONNECTIONS" -d"${WARMUP}s" \
        -s "$ROOT/bench/wrk-publish.lua" "$url" >"$WORK_DIR/$name.warmup.wrk"
    fi
    client "$WORK_DIR/$name.time" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -s "$ROOT/bench/wrk-publish.lua" "$url" >"$WORK_DIR/$name.wrk"
    if [[ -f $WORK_DIR/$name.warmup.time ]]; then
      cat "$WORK_DIR/$name.warmup.time" >>"$WORK_DIR/$name.time"
    fi
    rate=$(wrk_rate "$WORK_DIR/$name.wrk")
    bad=$(($(wrk_non_2xx "$WORK_DIR/$name.wrk") + $(wrk_errors "$WORK_DIR/$name.wrk")))
    p99=$(wrk_p99_ms "$WORK_DIR/$name.wrk")
    log "wrk: $rate req/s, p99 $p99 ms, $bad non-2xx or errors"
  fi
  is_running "$TRELLIS_PID" || die "trellis serve on $backend exited during the run"
  hwm=$(rss_mib "$TRELLIS_PID" VmHWM)
  curl -s --max-time 10 "$trellis_url/v1/topics/$topic" >"$WORK_DIR/topic.json"
  stored=$(json_field "$WORK_DIR/topic.json" next_offset)
  trellis_us=$(us_per $(($(cpu_ticks "$TRELLIS_PID") - trellis_ticks)) "${stored:-0}")
  nats_us=$(us_per $(($(cpu_ticks "$NATS_PID") - nats_ticks)) "${stored:-0}")
  # Deleting the topic frees the nats-server's store for the next step.
  curl -s -o /dev/null --max-time 30 -X DELETE "$trellis_url/v1/topics/$topic" || true
  stop_process "$TRELLIS_PID" 30
  TRELLIS_PID=""
  rm -rf "$WORK_DIR/data-$name"
  # Warm-up included, on every side: the events stored count the warm-up's.
  echo "$rate $bad $p99 $hwm ${stored:-0} $trellis_us $nats_us $STOPPED_RC" \
    "$(client_us "$WORK_DIR/$name.time" "${stored:-0}")" >"$WORK_DIR/$name.extra"
}

steps=(raw_step "trellis_step embedded loadgen" "trellis_step jetstream loadgen")
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS (load average $(cut -d ' ' -f 1-3 /proc/loadavg))"
  for step in 0 1 2; do
    # shellcheck disable=SC2086 # the step is a function name and its arguments
    ${steps[$(((round + step) % 3))]} "$round"
  done
  if ((use_wrk)); then
    # Alternating which backend goes first.
    if ((round % 2)); then
      trellis_step embedded wrk "$round"
      trellis_step jetstream wrk "$round"
    else
      trellis_step jetstream wrk "$round"
      trellis_step embedded wrk "$round"
    fi
  fi
done
nats_hwm=$(rss_mib "$NATS_PID" VmHWM)
stop_process "$NATS_PID" 10
NATS_PID=""
load_at_end=$(cut -d ' ' -f 1-3 /proc/loadavg)

# Field $2 (1-based) of <name>.extra.
extra() { cut -d ' ' -f "$2" "$WORK_DIR/$1.extra"; }
# Field $2 of <name>.extra for every round of step $1 (`emb-loadgen` and so on).
per_round() {
  local round
  for round in $(seq 1 "$ROUNDS"); do extra "$1-$round" "$2"; done
}
max_of() { printf '%s\n' "$@" | sort -g | tail -n 1; }
sum_of() { printf '%s\n' "$@" | awk '{ s += $1 } END { print s + 0 }'; }

raw_rates=() emb_ratios=() js_ratios=() js_emb_ratios=() rows=()
wrk_js_emb=() wrk_js_raw=() wrk_rows=()
for round in $(seq 1 "$ROUNDS"); do
  raw=$(json_field "$WORK_DIR/raw-$round.json" rate)
  emb=$(extra "emb-loadgen-$round" 1)
  js=$(extra "jet-loadgen-$round" 1)
  raw_rates+=("$raw")
  emb_ratios+=("$(calc "100 * $emb / $raw")")
  js_ratios+=("$(calc "100 * $js / $raw")")
  js_emb_ratios+=("$(calc "100 * $js / $emb")")
  rows+=("$(printf '%-6s %-12s %-12s %-12s %-9s %-9s %s' "$round" "$(calc "$raw")" "$(calc "$emb")" \
    "$(calc "$js")" "${emb_ratios[-1]} %" "${js_ratios[-1]} %" "${js_emb_ratios[-1]} %")")
  if ((use_wrk)); then
    wemb=$(extra "emb-wrk-$round" 1)
    wjs=$(extra "jet-wrk-$round" 1)
    wrk_js_emb+=("$(calc "100 * $wjs / $wemb")")
    wrk_js_raw+=("$(calc "100 * $wjs / $raw")")
    wrk_rows+=("$(printf '%-6s %-12s %-12s %-9s %s' "$round" "$(calc "$wemb")" "$(calc "$wjs")" \
      "${wrk_js_emb[-1]} %" "${wrk_js_raw[-1]} %")")
  fi
done
emb_pct=$(median "${emb_ratios[@]}")
js_pct=$(median "${js_ratios[@]}")
trellis_steps=(emb-loadgen jet-loadgen)
((use_wrk)) && trellis_steps+=(emb-wrk jet-wrk)
js_hwm_all=() emb_hwm_all=() bad_all=() rc_all=()
for step in "${trellis_steps[@]}"; do
  mapfile -t hwms < <(per_round "$step" 4)
  if [[ $step == jet-* ]]; then js_hwm_all+=("${hwms[@]}"); else emb_hwm_all+=("${hwms[@]}"); fi
  mapfile -t values < <(per_round "$step" 2)
  bad_all+=("${values[@]}")
  mapfile -t values < <(per_round "$step" 8)
  rc_all+=("${values[@]}")
done
js_hwm=$(max_of "${js_hwm_all[@]}")
emb_hwm=$(max_of "${emb_hwm_all[@]}")
n_bad=$(sum_of "${bad_all[@]}")
n_bad_rc=$(printf '%s\n' "${rc_all[@]}" | grep -cv '^0$' || true)

results=(
  "$(verdict "$js_hwm < $MAX_PEAK_RSS_MIB")"
  "$(verdict "$n_bad == 0")"
  "$(verdict "$n_bad_rc == 0")"
)
# The median over the rounds of field $2 of step $1's extra file.
median_of() {
  local values
  mapfile -t values < <(per_round "$1" "$2")
  median "${values[@]}"
}
raw_field_median() {
  local values=() round
  for round in $(seq 1 "$ROUNDS"); do values+=("$(extra "raw-$round" "$1")"); done
  if [[ ${values[0]} == - ]]; then echo -; else median "${values[@]}"; fi
}
client_median() {
  if [[ $(extra "$1-1" 9) == - ]]; then echo -; else median_of "$1" 9; fi
}

REPORTED=1
echo
echo "Publish benchmark, JetStream mode: $CONNECTIONS connections (raw: $CONNECTIONS acks outstanding)," \
  "${BODY_SIZE}-byte events, ${DURATION} s measured after ${WARMUP} s warm-up, $ROUNDS rounds;"
echo "load average at start $load_at_start, at end $load_at_end"
echo
echo "trellis-loadgen, req/s (raw: events/s):"
printf '%-6s %-12s %-12s %-12s %-9s %-9s %s\n' round "raw JS" embedded "on JS" emb/raw JS/raw JS/emb
printf '%s\n' "${rows[@]}"
if ((use_wrk)); then
  echo
  echo "wrk -t2 -c$CONNECTIONS, req/s (raw JetStream from the same round):"
  printf '%-6s %-12s %-12s %-9s %s\n' round embedded "on JS" JS/emb JS/raw
  printf '%s\n' "${wrk_rows[@]}"
fi
echo
row() { printf '%-46s %-28s %-12s %s\n' "$@"; }
row "" "measured" "target" "result"
row "raw JetStream, median" "$(median "${raw_rates[@]}") events/s" "" ""
row "  ack p50 / p99 (round 1)" "$(json_field "$WORK_DIR/raw-1.json" p50_ms) / $(json_field "$WORK_DIR/raw-1.json" p99_ms) ms" "" ""
row "trellis on JetStream / raw, median" "$js_pct %" "(SDK: >= $MIN_JETSTREAM_RATIO_PCT %)" "diagnostic"
row "  p99 per round" "$(per_round jet-loadgen 3 | tr '\n' ' ')ms" "" ""
row "trellis embedded / raw, median" "$emb_pct %" "(SDK: > $MIN_EMBEDDED_OVER_RAW_PCT %)" "diagnostic"
row "  p99 per round" "$(per_round emb-loadgen 3 | tr '\n' ' ')ms" "" ""
row "trellis on JetStream / embedded, median" "$(median "${js_emb_ratios[@]}") %" "" ""
if ((use_wrk)); then
  row "wrk: on JetStream / embedded, median" "$(median "${wrk_js_emb[@]}") %" "" ""
  row "wrk: on JetStream / raw, median" "$(median "${wrk_js_raw[@]}") %" "" ""
fi
row "CPU per event, medians (client / trellis / nats-server):" "" "" ""
row "  raw JetStream (trellis-nats-pub)" "$(raw_field_median 2) / - / $(raw_field_median 1) us" "" ""
row "  trellis embedded (trellis-loadgen)" "$(client_median emb-loadgen) / $(median_of emb-loadgen 6) / - us" "" ""
row "  trellis on JetStream (trellis-loadgen)" "$(client_median jet-loadgen) / $(median_of jet-loadgen 6) / $(median_of jet-loadgen 7) us" "" ""
if ((use_wrk)); then
  row "  trellis on JetStream (wrk)" "$(client_median jet-wrk) / $(median_of jet-wrk 6) / $(median_of jet-wrk 7) us" "" ""
fi
row "peak RSS, trellis on JetStream (all runs)" "$js_hwm MiB" "< $MAX_PEAK_RSS_MIB MiB" "${results[0]}"
row "  trellis embedded (all runs)" "$emb_hwm MiB" "" ""
row "  nats-server (whole run)" "$nats_hwm MiB" "" ""
row "non-2xx / transport errors, all trellis runs" "$n_bad" "0" "${results[1]}"
row "runs not exiting 0 after SIGTERM" "$n_bad_rc" "0" "${results[2]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
exit 0
