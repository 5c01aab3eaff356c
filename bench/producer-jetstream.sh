# shellcheck shell=bash
# Its variables and functions come from producer.sh and bench/lib.sh, and its functions are called
# through the steps array:
# shellcheck disable=SC2034,SC2154,SC2317
# The JetStream mode of bench/producer.sh (STORAGE=jetstream): the SDK producer into Trellis on
# JetStream, into Trellis on its embedded log, and raw JetStream publishing, in one run. Sourced
# by producer.sh after the build, with its settings, `start_trellis`, `stop_trellis`, `produce`
# and `next_offset`; not run on its own.
#
# Each of ROUNDS rounds runs three steps, starting one further along each round so that a slow
# spell of the shared machine weighs on every side:
# - embedded: a fresh `trellis serve` (fsync always), `trellis-produce` sends COUNT 1 KiB events,
#   BATCH a batch, IN_FLIGHT batches in flight;
# - jetstream: the same into a fresh `trellis serve --storage nats://...`;
# - raw: `trellis-nats-pub` publishes COUNT 1 KiB payloads to a fresh file-backed stream with
#   IN_FLIGHT x BATCH acks outstanding, the SDK's window in events;
# - never (diagnostic): the embedded step again with `--fsync never`. nats-server 2.9 does not
#   fsync per write, so this is the like-for-like comparison, and its distance to the embedded
#   step is what fsync costs in this run (the mean fsync time is read from /metrics as well).
# Every topic must hold exactly COUNT events. Each step's topic or stream is deleted after it, so
# the nats-server's store holds one run's data at a time.

load_at_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
start_nats "$WORK_DIR/nats" "$WORK_DIR/nats.log"
log "nats-server $(nats-server --version | sed 's/.*v//') at $nats_url, store in $WORK_DIR/nats"

# The SDK producer into a fresh `trellis serve` on backend $1 (embedded, jetstream, or never:
# embedded with `--fsync never`), round $2. Writes trellis-produce's report to <name>.json and,
# to <name>.extra: peak RSS of trellis (MiB), trellis and nats-server CPU per event (us), exit
# code after SIGTERM, fsyncs, mean fsync time (ms).
sdk_step() {
  local backend=$1 round=$2 name args=() trellis_ticks nats_ticks stored hwm trellis_us nats_us
  local fsyncs
  name=${backend:0:3}-$round
  case $backend in
    jetstream) args=(--storage "$nats_url") ;;
    never) args=(--fsync never) ;;
  esac
  log "round $round: SDK producer into trellis on $backend, $COUNT events"
  start_trellis "$WORK_DIR/data-$name" "$WORK_DIR/trellis-$name.log" "${args[@]}"
  trellis_ticks=$(cpu_ticks "$TRELLIS_PID")
  nats_ticks=$(cpu_ticks "$NATS_PID")
  produce "$grpc_addr" "$name" "$name"
  trellis_us=$(us_per $(($(cpu_ticks "$TRELLIS_PID") - trellis_ticks)) "$COUNT")
  nats_us=$(us_per $(($(cpu_ticks "$NATS_PID") - nats_ticks)) "$COUNT")
  hwm=$(rss_mib "$TRELLIS_PID" VmHWM)
  # "count mean_ms" of the log's fsyncs; "0 0" on JetStream, which has no such histogram.
  fsyncs=$(curl -s --max-time 10 "$trellis_url/metrics" | awk '
    /^trellis_log_fsync_seconds_sum/ { sum = $NF }
    /^trellis_log_fsync_seconds_count/ { n = $NF }
    END { printf "%d %.3f", n, (n > 0) ? sum * 1000 / n : 0 }')
  stored=$(next_offset "$name")
  [[ $stored == "$COUNT" ]] || die "topic $name on $backend holds $stored events, not $COUNT"
  # Frees the nats-server's store (or the data dir's files) for the next step.
  curl -s -o /dev/null --max-time 30 -X DELETE "$trellis_url/v1/topics/$name" || true
  stop_trellis
  rm -rf "$WORK_DIR/data-$name"
  echo "$hwm $trellis_us $nats_us $STOPPED_RC $fsyncs" >"$WORK_DIR/$name.extra"
}

# Raw JetStream, round $1: report in raw-$1.json, nats-server CPU per event in raw-$1.extra.
raw_step() {
  local name=raw-$1 nats_ticks
  log "round $1: raw JetStream, $COUNT events, $((IN_FLIGHT * BATCH)) acks outstanding"
  nats_ticks=$(cpu_ticks "$NATS_PID")
  "$BIN/trellis-nats-pub" --url "$nats_url" --stream "RAW$1" --count "$COUNT" --size "$SIZE" \
    --window $((IN_FLIGHT * BATCH)) --delete-after --json >"$WORK_DIR/$name.json"
  us_per $(($(cpu_ticks "$NATS_PID") - nats_ticks)) "$COUNT" >"$WORK_DIR/$name.extra"
}

steps=("sdk_step embedded" "sdk_step jetstream" raw_step "sdk_step never")
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS (load average $(cut -d ' ' -f 1-3 /proc/loadavg))"
  for step in 0 1 2 3; do
    # shellcheck disable=SC2086 # the step is a function name and its arguments
    ${steps[$(((round + step) % 4))]} "$round"
  done
done
nats_hwm=$(rss_mib "$NATS_PID" VmHWM)
stop_process "$NATS_PID" 10
NATS_PID=""
load_at_end=$(cut -d ' ' -f 1-3 /proc/loadavg)

f() { json_field "$WORK_DIR/$1.json" "$2"; }
# Field $2 (1-based) of <name>.extra.
extra() { cut -d ' ' -f "$2" "$WORK_DIR/$1.extra"; }
js_ratios=() emb_ratios=() js_emb_ratios=() rows=() raw_rates=() emb_rates=() js_rates=()
js_hwms=() emb_hwms=() exit_codes=() never_ratios=() never_rates=() fsync_counts=() fsync_ms=()
for round in $(seq 1 "$ROUNDS"); do
  raw=$(f "raw-$round" rate)
  emb=$(f "emb-$round" rate)
  js=$(f "jet-$round" rate)
  raw_rates+=("$raw") emb_rates+=("$emb") js_rates+=("$js")
  emb_ratios+=("$(calc "100 * $emb / $raw")")
  js_ratios+=("$(calc "100 * $js / $raw")")
  js_emb_ratios+=("$(calc "100 * $js / $emb")")
  js_hwms+=("$(extra "jet-$round" 1)")
  emb_hwms+=("$(extra "emb-$round" 1)")
  exit_codes+=("$(extra "jet-$round" 4)" "$(extra "emb-$round" 4)" "$(extra "nev-$round" 4)")
  never_rates+=("$(f "nev-$round" rate)")
  never_ratios+=("$(calc "100 * $(f "nev-$round" rate) / $raw")")
  fsync_counts+=("$(extra "emb-$round" 5)")
  fsync_ms+=("$(extra "emb-$round" 6)")
  rows+=("$(printf '%-6s %-11s %-11s %-11s %-9s %-9s %-9s %s' "$round" "$(calc "$raw")" \
    "$(calc "$emb")" "$(calc "$js")" "${emb_ratios[-1]} %" "${js_ratios[-1]} %" \
    "${js_emb_ratios[-1]} %" "$(extra "jet-$round" 1) / $(extra "emb-$round" 1)")")
done
js_pct=$(median "${js_ratios[@]}")
emb_pct=$(median "${emb_ratios[@]}")
js_hwm=$(printf '%s\n' "${js_hwms[@]}" | sort -g | tail -n 1)
n_bad_rc=$(printf '%s\n' "${exit_codes[@]}" | grep -cv '^0$' || true)
# The rounds' CPU per event, as "a b c".
cpu_rounds() {
  local round
  for round in $(seq 1 "$ROUNDS"); do printf '%s ' "$(extra "$1-$round" "$2")"; done
}

results=(
  "$(verdict "$js_pct >= $MIN_JETSTREAM_RATIO_PCT")"
  "$(verdict "$emb_pct > 100")"
  "$(verdict "$js_hwm < $MAX_TRELLIS_RSS_MIB")"
  "$(verdict "$n_bad_rc == 0")"
)

REPORTED=1
echo
echo "Producer benchmark, JetStream mode: $COUNT events of $SIZE bytes, batches of $BATCH," \
  "$IN_FLIGHT in flight (raw JetStream: $((IN_FLIGHT * BATCH)) acks outstanding), $ROUNDS rounds;"
echo "load average at start $load_at_start, at end $load_at_end"
echo
echo "events/s; trellis RSS peak in MiB:"
printf '%-6s %-11s %-11s %-11s %-9s %-9s %-9s %s\n' round "raw JS" "SDK emb" "SDK on JS" emb/raw \
  JS/raw JS/emb "RSS on JS / emb"
printf '%s\n' "${rows[@]}"
echo
row() { printf '%-46s %-34s %-12s %s\n' "$@"; }
row "" "measured" "target" "result"
row "raw JetStream, median" "$(median "${raw_rates[@]}") events/s" "" ""
row "SDK into trellis embedded, median" "$(median "${emb_rates[@]}") events/s" "" ""
row "SDK into trellis on JetStream, median" "$(median "${js_rates[@]}") events/s" "" ""
row "SDK on JetStream / raw JetStream, median" "$js_pct %" ">= $MIN_JETSTREAM_RATIO_PCT %" "${results[0]}"
row "SDK embedded / raw JetStream, median" "$emb_pct %" "> 100 %" "${results[1]}"
row "SDK on JetStream / embedded, median" "$(median "${js_emb_ratios[@]}") %" "" ""
row "SDK into embedded, --fsync never, median" "$(median "${never_rates[@]}") events/s" "" ""
row "  / raw JetStream, per round" "${never_ratios[*]} %" "" ""
row "  / raw JetStream, median (diagnostic)" "$(median "${never_ratios[@]}") %" "" ""
row "embedded fsyncs per run, per round" "${fsync_counts[*]}" "" ""
row "  mean fsync, per round" "${fsync_ms[*]} ms" "" ""
row "peak RSS of trellis on JetStream (max)" "$js_hwm MiB" "< $MAX_TRELLIS_RSS_MIB MiB" "${results[2]}"
row "  trellis embedded (max)" "$(printf '%s\n' "${emb_hwms[@]}" | sort -g | tail -n 1) MiB" "" ""
row "  nats-server (whole run)" "$nats_hwm MiB" "" ""
row "CPU per event, trellis on JetStream" "$(cpu_rounds jet 2)us" "" ""
row "  nats-server, under trellis" "$(cpu_rounds jet 3)us" "" ""
row "  nats-server, raw" "$(for r in $(seq 1 "$ROUNDS"); do printf '%s ' "$(cat "$WORK_DIR/raw-$r.extra")"; done)us" "" ""
row "CPU per event, trellis embedded" "$(cpu_rounds emb 2)us" "" ""
row "send->result p99: on JetStream / embedded" "$(f jet-1 p99_ms) / $(f emb-1 p99_ms) ms (round 1)" "" ""
row "runs not exiting 0 after SIGTERM" "$n_bad_rc" "0" "${results[3]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
exit 0
