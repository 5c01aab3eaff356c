#!/usr/bin/env bash
# Producer benchmark: the Rust SDK's streaming publish, on a clean network and through faults,
# beside HTTP batch publishing and NATS JetStream async publishing of the same events.
#
# 1. Builds release `trellis` and `trellis-bench`; installs nats-server from apt if missing.
# 2. In each of ROUNDS rounds, `trellis-produce` (the SDK's Producer) publishes COUNT 1 KiB
#    events to `trellis serve` over gRPC three times (rate, send->result latency, peak RSS):
#    - direct: straight to trellis;
#    - clean: through `trellis-fault-proxy` with no fault, the baseline of the faults target.
#      The proxy copies every byte on the same two cores as the producer and the runtime, a cost
#      a real network does not take from them; against this baseline the ratio measures the
#      faults and not the emulator;
#    - faulty: through the proxy resetting RESET_PCT % of connections at a random point (the
#      first RESET_FIRST of each run among them) and adding 0..JITTER_MS ms of jitter to every
#      chunk. Every record must succeed and the topic must hold exactly COUNT events.
#    The runs take turns in each round; targets are judged on the median of the rounds' ratios,
#    because one run on two shared cores moves by 15 % from noise alone.
# 3. The RSS target compares faulty with clean runs: the same path, with and without faults.
# 4. HTTP batch publish: `trellis-loadgen` posts batches of BATCH events (the same events, in
#    the JSON batch format) over HTTP_CONNECTIONS connections. The batches repeat their ids, so
#    this runtime runs with deduplication off.
# 5. JetStream: nats-server with a file-backed stream, `trellis-nats-pub` publishing COUNT 1 KiB
#    messages with as many acks outstanding as the SDK has events in flight.
#    nats-server 2.9 (Debian 12) cannot fsync per write, so Trellis is also measured with
#    `--fsync never` to compare like with like.
# Then prints a table with ratios and PASS/FAIL per target.
#
# With STORAGE=jetstream it compares instead, in ROUNDS rounds whose order rotates: the SDK
# producer into `trellis serve` on the embedded log, the same into `trellis serve --storage
# nats://...`, and raw JetStream publishing (`trellis-nats-pub`) with IN_FLIGHT x BATCH acks
# outstanding, all on one nats-server started here (see bench/producer-jetstream.sh). Targets:
# the SDK through Trellis on JetStream >= 50 % of raw JetStream, the embedded log ahead of raw
# JetStream (medians of the rounds' ratios), peak RSS of `trellis serve` on JetStream < 150 MiB.
#
# Exits 1 if a target fails. Env overrides: COUNT (200000), RESET_PCT (10), RESET_FIRST (1),
# JITTER_MS (20), ROUNDS (5), BATCH (500), HTTP_CONNECTIONS (8), IN_FLIGHT (12), STORAGE
# (embedded or jetstream). Everything shares this machine's cores, so compare figures within one
# run. Linux only.
set -euo pipefail

COUNT=${COUNT:-200000}
RESET_PCT=${RESET_PCT:-10}
JITTER_MS=${JITTER_MS:-20}
BATCH=${BATCH:-500}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-8}
# Batches in flight: enough to cover the round trip with jitter (20 ms each way needs about
# 4,000 events in flight at 100k events/s), and no more than the server's 8 MiB stream window
# lets through: 12 batches of 500 encoded events are 6.7 MB. At 16 (9 MB) the excess waited in
# the producer's HTTP/2 send buffer whenever latency held back the window updates, and the
# runs with jitter showed 2 % more RSS for it. Every run uses the same value.
IN_FLIGHT=${IN_FLIGHT:-12}
# Rounds of a direct, a clean and a faulty run.
ROUNDS=${ROUNDS:-5}
# A producer keeps one connection, and a 10 % chance per connection would most often reset none:
# the proxy's seed is moved on until the first RESET_FIRST connections of each run are reset,
# and the connections after them keep the 10 % chance. One forced reset already makes a run
# harsher than 10 %: one of its two connections or more is reset.
RESET_FIRST=${RESET_FIRST:-1}
SIZE=1024
STORAGE=${STORAGE:-embedded}
case $STORAGE in
  embedded | jetstream) ;;
  *)
    echo "error: STORAGE must be embedded or jetstream, not $STORAGE" >&2
    exit 2
    ;;
esac

# Targets, from the producer issue.
MIN_FAULTY_RATIO_PCT=80
MAX_RSS_OVERHEAD_PCT=2
# Targets of the JetStream mode, from the JetStream issue.
MIN_JETSTREAM_RATIO_PCT=50
MAX_TRELLIS_RSS_MIB=150

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-producer-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""
PROXY_PID=""
NATS_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
stop_extras() {
  if [[ -n $PROXY_PID ]]; then kill "$PROXY_PID" 2>/dev/null || true; fi
}
# cleanup reads the exit status first, so it is handed on past stop_extras; errexit is off first,
# or handing it on with `(exit $rc)` would end the trap there and leave trellis running.
trap 'rc=$?; set +e; stop_extras; (exit $rc); cleanup' EXIT

ensure_nats_server

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)

# Starts `trellis serve` on data dir $1 with log $2 and extra args; sets TRELLIS_PID,
# trellis_url and grpc_addr from the line it prints.
start_trellis() {
  local data=$1 log_file=$2 line=""
  shift 2
  mkdir -p "$data"
  # The background shell truncates the file only once it runs, so the loop below could read the
  # previous server's addresses first: the file goes before the server starts.
  rm -f "$WORK_DIR/trellis.out"
  "$BIN/trellis" serve --data-dir "$data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 "$@" \
    >"$WORK_DIR/trellis.out" 2>"$log_file" &
  TRELLIS_PID=$!
  for _ in {1..300}; do
    line=$(head -n 1 "$WORK_DIR/trellis.out" 2>/dev/null || true)
    [[ -n $line ]] && break
    is_running "$TRELLIS_PID" || die "trellis serve exited: $(tail -n 5 "$log_file")"
    sleep 0.1
  done
  trellis_url=$(grep -o 'http://[^ ]*' <<<"$line" || true)
  grpc_addr=$(grep -o 'grpc://[^ ]*' <<<"$line" | sed 's#grpc://##' || true)
  [[ -n $trellis_url && -n $grpc_addr ]] || die "trellis serve printed no addresses: $line"
}

stop_trellis() {
  stop_process "$TRELLIS_PID" 30
  TRELLIS_PID=""
}

next_offset() {
  curl -s --max-time 10 "$trellis_url/v1/topics/$1" >"$WORK_DIR/topic.json"
  json_field "$WORK_DIR/topic.json" next_offset
}

# Runs the SDK producer against $1 into topic $2, report in $WORK_DIR/$3.json.
produce() {
  "$BIN/trellis-produce" --endpoint "$1" --topic "$2" --count "$COUNT" --size "$SIZE" \
    --max-in-flight "$IN_FLIGHT" --batch-events "$BATCH" --id-prefix "$3" --json \
    >"$WORK_DIR/$3.json"
}

# Starts trellis-fault-proxy in front of $grpc_addr for run $1, with the faults in the other
# arguments, its output in $WORK_DIR/proxy-$1.*; sets PROXY_PID and proxy_addr. A fresh proxy
# per run, so that each run's first RESET_FIRST connections are the ones reset, and fresh files,
# so that no address of an earlier proxy is read.
start_proxy() {
  local out=$WORK_DIR/proxy-$1.out
  "$BIN/trellis-fault-proxy" --upstream "$grpc_addr" "${@:2}" >"$out" 2>"$WORK_DIR/proxy-$1.err" &
  PROXY_PID=$!
  proxy_addr=""
  for _ in {1..100}; do
    proxy_addr=$(sed -n 's/^listening on //p' "$out" 2>/dev/null || true)
    [[ -n $proxy_addr ]] && break
    is_running "$PROXY_PID" || break
    sleep 0.05
  done
  [[ -n $proxy_addr ]] || die "trellis-fault-proxy did not start: $(cat "$WORK_DIR/proxy-$1.err")"
}

# Stops the proxy of run $1; echoes how many connections it reset, into $WORK_DIR/resets-$1.
stop_proxy() {
  stop_process "$PROXY_PID" 5
  PROXY_PID=""
  sed -n 's/.* reset \([0-9]*\) .*/\1/p' "$WORK_DIR/proxy-$1.out" >"$WORK_DIR/resets-$1"
}

# Runs `produce` for run $1 (topic and report named $1), through a proxy with the faults in the
# other arguments, or straight to trellis with none; checks the topic holds every event.
run() {
  local endpoint=$grpc_addr
  if (($# > 1)); then
    start_proxy "$@"
    endpoint=$proxy_addr
  fi
  produce "$endpoint" "$1" "$1"
  if (($# > 1)); then stop_proxy "$1"; fi
  stored=$(next_offset "$1")
  [[ $stored == "$COUNT" ]] || die "run $1 stored $stored events, not $COUNT"
}

if [[ $STORAGE == jetstream ]]; then
  # It ends the run with its own exit code.
  # shellcheck source=bench/producer-jetstream.sh
  source "$ROOT/bench/producer-jetstream.sh"
fi

direct_run() { run "direct-$1"; }
clean_run() { run "clean-$1" --delay-ms 0; }
faulty_run() {
  run "faulty-$1" --seed 7 --reset-probability "$(calc "$RESET_PCT / 100")" \
    --reset-first "$RESET_FIRST" --jitter-ms "$JITTER_MS"
}

log "trellis serve (fsync always, the default)"
start_trellis "$WORK_DIR/data" "$WORK_DIR/trellis.log"

# Each round runs direct, clean and faulty, starting one further along each round, so that a
# slow spell of the shared machine weighs on every side; each round gives one ratio and the
# median is judged.
runs=(direct_run clean_run faulty_run)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS: $COUNT events direct, through trellis-fault-proxy without faults, and with $RESET_PCT % resets (the first $RESET_FIRST connections among them) and 0-$JITTER_MS ms jitter"
  for step in 0 1 2; do
    "${runs[$(((round + step) % 3))]}" "$round"
  done
done
stop_trellis

log "HTTP batch publish: batches of $BATCH, $HTTP_CONNECTIONS connections, deduplication off"
awk -v n="$BATCH" -v size="$SIZE" 'BEGIN {
  data = sprintf("%" size "s", ""); gsub(/ /, "x", data)
  printf "["
  for (i = 0; i < n; i++) {
    if (i) printf ","
    printf "{\"specversion\":\"1.0\",\"id\":\"http-%d\",\"source\":\"/trellis/bench\",", i
    printf "\"type\":\"dev.trellis.bench.produce\",\"data\":\"%s\"}", data
  }
  printf "]"
}' >"$WORK_DIR/batch.json"
start_trellis "$WORK_DIR/data-http" "$WORK_DIR/trellis-http.log" --dedup-window-ms 0
"$BIN/trellis-loadgen" --url "$trellis_url/v1/topics/http/events" --json \
  --header 'content-type: application/cloudevents-batch+json' --body-file "$WORK_DIR/batch.json" \
  --connections "$HTTP_CONNECTIONS" --requests $((COUNT / BATCH)) --warmup 0 --duration 3600 \
  >"$WORK_DIR/http.json"
http_stored=$(next_offset http)
stop_trellis

log "trellis serve --fsync never, for the comparison with JetStream"
start_trellis "$WORK_DIR/data-nosync" "$WORK_DIR/trellis-nosync.log" --fsync never
produce "$grpc_addr" nosync nosync
stop_trellis

log "NATS JetStream: file-backed stream, $COUNT messages, $((IN_FLIGHT * BATCH)) acks outstanding"
start_nats "$WORK_DIR/nats" "$WORK_DIR/nats.log"
"$BIN/trellis-nats-pub" --url "$nats_url" --count "$COUNT" --size "$SIZE" \
  --window $((IN_FLIGHT * BATCH)) --json >"$WORK_DIR/nats.json"
stop_process "$NATS_PID" 10
NATS_PID=""

f() { json_field "$WORK_DIR/$1.json" "$2"; }
# The median over the rounds of field $2 of runs named $1-<round>.
over_rounds() {
  local values=() round
  for round in $(seq 1 "$ROUNDS"); do values+=("$(f "$1-$round" "$2")"); done
  median "${values[@]}"
}
ratios=()
ratios_direct=()
proxy_costs=()
rss_overheads=()
faulty_ok=0
faulty_duplicates=0
resets=()
transitions=()
for round in $(seq 1 "$ROUNDS"); do
  ratios+=("$(calc "100 * $(f "faulty-$round" rate) / $(f "clean-$round" rate)")")
  ratios_direct+=("$(calc "100 * $(f "faulty-$round" rate) / $(f "direct-$round" rate)")")
  proxy_costs+=("$(calc "100 * $(f "clean-$round" rate) / $(f "direct-$round" rate)")")
  rss_overheads+=("$(calc "100 * ($(f "faulty-$round" peak_rss_kib) - $(f "clean-$round" peak_rss_kib)) / $(f "clean-$round" peak_rss_kib)")")
  faulty_ok=$((faulty_ok + $(f "faulty-$round" ok)))
  faulty_duplicates=$((faulty_duplicates + $(f "faulty-$round" duplicates)))
  resets+=("$(cat "$WORK_DIR/resets-faulty-$round")")
  transitions+=("$(f "faulty-$round" state_transitions)")
done
direct_rate=$(over_rounds direct rate)
clean_rate=$(over_rounds clean rate)
faulty_rate=$(over_rounds faulty rate)
nosync_rate=$(f nosync rate)
http_events_rate=$(calc "$(f http rate) * $BATCH")
nats_rate=$(f nats rate)
faulty_pct=$(median "${ratios[@]}")
rss_clean=$(over_rounds clean peak_rss_kib)
rss_faulty=$(over_rounds faulty peak_rss_kib)
rss_overhead_pct=$(median "${rss_overheads[@]}")

results=(
  "$(verdict "$faulty_pct >= $MIN_FAULTY_RATIO_PCT && $faulty_ok == $((ROUNDS * COUNT))")"
  "$(verdict "$rss_overhead_pct < $MAX_RSS_OVERHEAD_PCT")"
  "$(verdict "$direct_rate > $nats_rate")"
)

REPORTED=1
row() { printf '%-44s %-30s %-12s %s\n' "$@"; }
echo
echo "Producer benchmark: $COUNT events of $SIZE bytes, batches of $BATCH, $IN_FLIGHT in flight;"
echo "direct, clean and faulty figures are medians over $ROUNDS rounds"
row "" "measured" "target" "result"
row "SDK streaming publish, direct (fsync always)" "$(calc "$direct_rate") events/s" "" ""
row "  send->result p50 / p99" "$(over_rounds direct p50_ms) / $(over_rounds direct p99_ms) ms" "" ""
row "SDK through the proxy, no faults (clean)" "$(calc "$clean_rate") events/s" "" ""
row "  send->result p50 / p99" "$(over_rounds clean p50_ms) / $(over_rounds clean p99_ms) ms" "" ""
row "  clean / direct, per round" "${proxy_costs[*]} %" "" ""
row "SDK through faults ($RESET_PCT % resets, ${JITTER_MS} ms jitter)" "$(calc "$faulty_rate") events/s" "" ""
row "  send->result p50 / p99" "$(over_rounds faulty p50_ms) / $(over_rounds faulty p99_ms) ms" "" ""
row "  connections reset, per round" "${resets[*]}" "" ""
row "  state transitions, per round" "${transitions[*]}" "" ""
row "  failed / duplicate answers, all rounds" "$((ROUNDS * COUNT - faulty_ok)) / $faulty_duplicates" "" ""
row "faults / direct, per round" "${ratios_direct[*]} %" "" ""
row "faults / direct, median" "$(median "${ratios_direct[@]}") %" "" ""
row "faults / clean, per round" "${ratios[*]} %" "" ""
row "faults / clean, median" "$faulty_pct %" ">= $MIN_FAULTY_RATIO_PCT %" "${results[0]}"
row "producer peak RSS, clean / faults" "$(calc "$rss_clean / 1024") / $(calc "$rss_faulty / 1024") MiB" "" ""
row "RSS overhead under faults" "$rss_overhead_pct %" "< $MAX_RSS_OVERHEAD_PCT %" "${results[1]}"
row "HTTP batch publish ($HTTP_CONNECTIONS connections)" "$http_events_rate events/s" "" ""
row "  SDK streaming (direct) / HTTP batch" "$(calc "100 * $direct_rate / $http_events_rate") %" "" ""
row "  stored" "$http_stored" "" ""
row "SDK streaming, fsync never" "$(calc "$nosync_rate") events/s" "" ""
row "NATS JetStream async publish (file, no fsync)" "$(calc "$nats_rate") events/s" "" ""
row "  ack p50 / p99" "$(f nats p50_ms) / $(f nats p99_ms) ms" "" ""
row "  SDK (fsync always, direct) / JetStream" "$(calc "100 * $direct_rate / $nats_rate") %" "> 100 %" "${results[2]}"
row "  SDK (fsync never) / JetStream" "$(calc "100 * $nosync_rate / $nats_rate") %" "" ""
for result in "${results[@]}"; do [[ $result == PASS ]] || exit 1; done
