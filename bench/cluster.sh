#!/usr/bin/env bash
# Cluster benchmark: what three replicas on one etcd and one JetStream cost and give, in one run.
#
# 1. Builds release `trellis` and `trellis-bench`; starts one etcd (10 ms heartbeat) and one
#    nats-server with JetStream on free loopback ports, and `trellis-bench-receiver --stats` as
#    the webhook endpoint. They run for the whole benchmark.
# 2. Publish throughput, ROUNDS rounds, each running three steps (starting one further along each
#    round, so a slow spell of the shared machine weighs on every side), each on fresh
#    processes and a topic of its own that is deleted afterwards:
#    - embedded: one `trellis serve` on its embedded log (`--fsync always`, the default);
#    - single:   one `trellis serve --storage nats://...` (embedded metadata): the baseline;
#    - cluster:  three `trellis serve --meta etcd://... --storage nats://... --node-id ...`,
#                the topic created through one replica first.
#    `trellis-loadgen` drives each closed loop with CONNECTIONS connections of 1 KiB binary-mode
#    events, spread over every replica of the step (connection i to replica i mod n). Then,
#    unless WRK=0 or wrk is missing, `wrk -t3` drives the three again the same way
#    (bench/wrk-publish.lua; for the cluster, thread i to replica i).
# 3. Publish-to-webhook latency: for embedded, single and cluster, a subscription (created
#    through one replica) to the receiver while the load generator publishes LATENCY_RATE
#    events/s open loop, stamped with their send time, spread over every replica; the receiver
#    records receipt minus send time.
# 4. Failover, KILLS times on one 3-replica cluster: a subscription's owner is read from
#    `GET /v1/cluster`, events are published at KILL_RATE/s through the two other replicas, and
#    the owner is killed with SIGKILL. Failover time = from the kill to the first delivery after
#    it (necessarily by the new owner); the gap in deliveries (last before, first after) is
#    printed beside it. The killed replica is started again and the cluster left to settle
#    (the subscription may move back to it by handoff) before the next kill.
# Prints a table with ratios against the baseline of the same run, and PASS/FAIL per target.
#
# Exits 1 if a target fails. Env overrides: ROUNDS (3), DURATION (10), WARMUP (2),
# CONNECTIONS (48, a multiple of 3), LATENCY_RATE (500), LATENCY_DURATION (10), KILLS (10),
# KILL_RATE (200), LEASE_TTL_MS (5000: the replicas' lease TTL, and the failover bound is it
# plus 1 s), WRK (1), TRELLIS_BIN (a `trellis` binary to measure instead of the one built),
# TRELLIS_ARGS (more `trellis serve` flags for every process), KEEP_WORK_DIR. Everything shares
# this machine's cores (three replicas, etcd, nats-server, the load generator and the
# receiver), so compare figures within one run. Linux only (/proc).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-48}
LATENCY_RATE=${LATENCY_RATE:-500}
LATENCY_DURATION=${LATENCY_DURATION:-10}
KILLS=${KILLS:-10}
KILL_RATE=${KILL_RATE:-200}
LEASE_TTL_MS=${LEASE_TTL_MS:-5000}
WRK=${WRK:-1}
read -r -a TRELLIS_ARGS <<<"${TRELLIS_ARGS:-}"
BODY_SIZE=1024
REPLICAS=3

# Targets, from the cluster issue.
MIN_CLUSTER_OVER_SINGLE_PCT=100
MAX_FAILOVER_MS=$((LEASE_TTL_MS + 1000))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TRELLIS=${TRELLIS_BIN:-$BIN/trellis}
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trellis-cluster-bench.XXXXXX")
RECEIVER_PID=""
TRELLIS_PID=""
REPORTED=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# The trellis processes of the step under way, by name (`node`, `replica-1`, ...), and etcd;
# lib.sh's cleanup stops the receiver and nats-server after them.
declare -A PIDS=() HTTP_PORT=() GRPC_PORT=()
ETCD_PID=""
# shellcheck disable=SC2317 # run by the EXIT trap
cluster_cleanup() {
  local rc=$? name
  # Everything below runs whatever fails; errexit would end the trap at the first failure.
  set +e
  for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
  for name in "${!PIDS[@]}"; do stop_process "${PIDS[$name]}" 30; done
  if [[ -n $ETCD_PID ]]; then stop_process "$ETCD_PID" 10; fi
  if ((rc != 0)) && [[ -z $REPORTED ]]; then
    for name in "$WORK_DIR"/*.log; do
      [[ -s $name ]] || continue
      printf -- '--- last lines of %s ---\n' "$(basename "$name")" >&2
      tail -n 10 "$name" >&2
    done
  fi
  (exit "$rc")
  cleanup
}
trap cluster_cleanup EXIT

command -v etcd >/dev/null || die "etcd is missing: sudo apt-get install -y etcd-server"
ensure_nats_server

# Runs `curl "${@:3}"` with the answer's body in file $2, and fails the run, showing the body,
# unless it answers status $1.
expect_status() {
  local want=$1 out=$2 got
  shift 2
  got=$(curl -s -o "$out" -w '%{http_code}' --max-time 30 "$@" || true)
  [[ $got == "$want" ]] || die "curl $* answered $got, not $want: $(cat "$out" 2>/dev/null)"
}

# Starts etcd on free loopback ports with its data in the work dir; sets ETCD_PID and etcd_url.
start_etcd() {
  local port peer_port
  port=$(free_port)
  peer_port=$(free_port)
  [[ $peer_port != "$port" ]] || peer_port=$(free_port)
  etcd --name bench --data-dir "$WORK_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "bench=http://127.0.0.1:$peer_port" --initial-cluster-state new \
    --heartbeat-interval=10 --election-timeout=100 --logger zap --log-level warn \
    >"$WORK_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  etcd_url="etcd://127.0.0.1:$port"
  for _ in {1..300}; do
    [[ $(curl -s --max-time 1 "http://127.0.0.1:$port/health" || true) == *'"health":"true"'* ]] && return 0
    is_running "$ETCD_PID" || die "etcd exited: $(tail -n 5 "$WORK_DIR/etcd.log")"
    sleep 0.05
  done
  die "etcd did not become healthy within 15 s"
}

# Starts `trellis serve` as $1 on HTTP_PORT[$1] and GRPC_PORT[$1] (free ports picked at the
# first start, kept across restarts) with its data in the work dir, further args passed on;
# records it in PIDS and waits until it answers /readyz.
start_trellis_as() {
  local name=$1
  shift
  [[ -n ${HTTP_PORT[$name]:-} ]] || HTTP_PORT[$name]=$(free_port)
  [[ -n ${GRPC_PORT[$name]:-} ]] || GRPC_PORT[$name]=$(free_port)
  mkdir -p "$WORK_DIR/data-$name"
  # `--fsync always` is the default; saying so keeps a TRELLIS_FSYNC in the environment out of
  # the result (it matters only on the embedded log).
  "$TRELLIS" serve --data-dir "$WORK_DIR/data-$name" --http-addr "127.0.0.1:${HTTP_PORT[$name]}" \
    --grpc-addr "127.0.0.1:${GRPC_PORT[$name]}" --fsync always "$@" "${TRELLIS_ARGS[@]}" \
    >>"$WORK_DIR/$name.log" 2>&1 &
  PIDS[$name]=$!
}
wait_ready() {
  local name=$1
  wait_for_status "http://127.0.0.1:${HTTP_PORT[$name]}/readyz" 200 60 "${PIDS[$name]}" ||
    die "$name did not answer 200 on /readyz within 60 s: $(tail -n 5 "$WORK_DIR/$name.log")"
}
url_of() { echo "http://127.0.0.1:${HTTP_PORT[$1]}"; }

# Starts the processes of step kind $1 (embedded, single or cluster) and sets NAMES to their
# names, first the one admin calls go through.
start_step() {
  local i name
  PIDS=() HTTP_PORT=() GRPC_PORT=() NAMES=()
  case $1 in
    embedded)
      start_trellis_as node
      NAMES=(node)
      ;;
    single)
      start_trellis_as node --storage "$nats_url"
      NAMES=(node)
      ;;
    cluster)
      for ((i = 1; i <= REPLICAS; i++)); do
        start_trellis_as "replica-$i" --meta "$etcd_url" --storage "$nats_url" \
          --node-id "replica-$i" --lease-ttl-ms "$LEASE_TTL_MS"
        NAMES+=("replica-$i")
      done
      ;;
  esac
  for name in "${NAMES[@]}"; do wait_ready "$name"; done
}
stop_step() {
  local name
  for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
  STEP_RCS=()
  for name in "${!PIDS[@]}"; do
    stop_process "${PIDS[$name]}" 40
    STEP_RCS+=("$STOPPED_RC")
  done
  PIDS=()
  rm -rf "$WORK_DIR"/data-*
}

# Creates topic $1 through the first process and waits until every process knows it (the
# replicas share topics through etcd within about a second).
create_topic() {
  local topic=$1 name deadline
  expect_status 201 "$WORK_DIR/answer.json" -X PUT "$(url_of "${NAMES[0]}")/v1/topics/$topic" \
    -H 'content-type: application/json' -d '{}'
  for name in "${NAMES[@]}"; do
    deadline=$((SECONDS + 10))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$(url_of "$name")/v1/topics/$topic" || true) == 200 ]]; do
      ((SECONDS < deadline)) || die "$name does not know topic $topic 10 s after it was created"
      sleep 0.1
    done
  done
}

# The `--url` arguments for path $1 on every process of the step but $2 (a name, or empty).
urls_for() {
  local path=$1 skip=${2:-} name
  URL_ARGS=()
  for name in "${NAMES[@]}"; do
    [[ $name == "$skip" ]] || URL_ARGS+=(--url "$(url_of "$name")$path")
  done
}

# The sum of the CPU ticks of the step's processes.
step_ticks() {
  local name sum=0
  for name in "${NAMES[@]}"; do
    is_running "${PIDS[$name]}" && sum=$((sum + $(cpu_ticks "${PIDS[$name]}")))
  done
  echo "$sum"
}

CE_ARGS=(
  --ce-binary --header 'ce-specversion: 1.0' --header 'ce-type: dev.trellis.bench.cluster'
  --header 'ce-source: /trellis/bench/cluster' --header 'content-type: application/octet-stream'
)

# wrk's figures, from its output in $1: requests/s, and non-2xx answers plus socket errors.
wrk_rate() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_bad() {
  awk '/Non-2xx/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$1"
}

# One throughput step: kind $1, tool $2 (loadgen or wrk), round $3. Writes <kind>-<tool>-<round>.extra:
# rate, non-2xx + errors, p99 ms (loadgen; - for wrk), events stored, trellis CPU per event
# (all processes, us), and the 2xx answers per replica (loadgen).
throughput_step() {
  local kind=$1 tool=$2 round=$3 run topic ticks rate bad p99 stored spread="-"
  run=$kind-$tool-$round
  topic=tp-$run
  log "round $round: $kind, $tool (load average $(cut -d ' ' -f 1 /proc/loadavg))"
  start_step "$kind"
  create_topic "$topic"
  urls_for "/v1/topics/$topic/events"
  ticks=$(step_ticks)
  if [[ $tool == loadgen ]]; then
    "$BIN/trellis-loadgen" "${URL_ARGS[@]}" "${CE_ARGS[@]}" --body-size "$BODY_SIZE" \
      --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --json \
      >"$WORK_DIR/$run.json"
    rate=$(json_field "$WORK_DIR/$run.json" rate)
    bad=$(($(json_field "$WORK_DIR/$run.json" non_2xx) + $(json_field "$WORK_DIR/$run.json" errors)))
    p99=$(json_field "$WORK_DIR/$run.json" p99_ms)
    spread=$(sed -n 's/.*"ok_by_url":\[\([^]]*\)\].*/\1/p' "$WORK_DIR/$run.json" | tr ',' '/')
  else
    local addrs="" wrk_name
    for wrk_name in "${NAMES[@]}"; do addrs+="${addrs:+,}127.0.0.1:${HTTP_PORT[$wrk_name]}"; done
    if [[ $WARMUP != 0 ]]; then
      WRK_ADDRS=$addrs wrk -t3 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$ROOT/bench/wrk-publish.lua" \
        "$(url_of "${NAMES[0]}")/v1/topics/$topic/events" >"$WORK_DIR/$run.warmup.wrk"
    fi
    WRK_ADDRS=$addrs wrk -t3 -c"$CONNECTIONS" -d"${DURATION}s" -s "$ROOT/bench/wrk-publish.lua" \
      "$(url_of "${NAMES[0]}")/v1/topics/$topic/events" >"$WORK_DIR/$run.wrk"
    rate=$(wrk_rate "$WORK_DIR/$run.wrk")
    bad=$(wrk_bad "$WORK_DIR/$run.wrk")
    ((bad == 0)) || log "wrk: $(grep -E 'Non-2xx|Socket errors' "$WORK_DIR/$run.wrk" | tr '\n' ' ')"
    p99=-
  fi
  ticks=$(($(step_ticks) - ticks))
  curl -s --max-time 10 "$(url_of "${NAMES[0]}")/v1/topics/$topic" >"$WORK_DIR/topic.json"
  stored=$(json_field "$WORK_DIR/topic.json" next_offset)
  curl -s -o /dev/null --max-time 30 -X DELETE "$(url_of "${NAMES[0]}")/v1/topics/$topic" || true
  stop_step
  # Warm-up included: the events stored count the warm-up's, and so does the CPU.
  echo "$rate $bad $p99 ${stored:-0} $(us_per "$ticks" "${stored:-0}") $spread" >"$WORK_DIR/$run.extra"
}

# Receiver helpers.
receiver_stats() { expect_status 200 "$1" "$receiver_url/stats"; }
receiver_reset() { expect_status 200 "$WORK_DIR/answer.json" -X POST "$receiver_url/stats/reset"; }
# Waits until the receiver has counted at least $1 requests, for at most $2 seconds.
wait_received() {
  local want=$1 deadline=$((SECONDS + $2)) got
  while ((SECONDS < deadline)); do
    receiver_stats "$WORK_DIR/received.json"
    got=$(json_field "$WORK_DIR/received.json" requests)
    ((got >= want)) && return 0
    sleep 0.25
  done
  return 1
}

# Creates subscription $1 on topic $2 to the receiver's path $3 through the first process.
create_subscription() {
  expect_status 201 "$WORK_DIR/answer.json" -X POST "$(url_of "${NAMES[0]}")/v1/subscriptions" \
    -H 'content-type: application/json' \
    -d "{\"name\":\"$1\",\"topic\":\"$2\",\"sink\":{\"urls\":[\"$receiver_url$3\"]},\"start\":\"latest\"}"
}

# Publish-to-webhook latency of step kind $1. Writes latency-<kind>.json (the receiver's stats)
# and latency-<kind>.publish.json (the load generator's report).
latency_step() {
  local kind=$1 n topic=live-$1
  log "latency: $kind, $LATENCY_RATE events/s open loop"
  start_step "$kind"
  # A topic of its own: the JetStream steps share one nats-server.
  create_topic "$topic"
  create_subscription "$topic" "$topic" /live
  urls_for "/v1/topics/$topic/events"
  local args=("${URL_ARGS[@]}" "${CE_ARGS[@]}" --body-size "$BODY_SIZE" --connections 12
    --rate "$LATENCY_RATE" --send-time-header ce-sentns --warmup 0)
  receiver_reset
  # Warm-up outside the measured window: connections, the subscription's start and adaptive
  # concurrency are settled by then.
  "$BIN/trellis-loadgen" "${args[@]}" --duration "$WARMUP" --json >"$WORK_DIR/latency-$kind.warmup.json"
  n=$(json_field "$WORK_DIR/latency-$kind.warmup.json" ok)
  wait_received "$n" 30 || die "$kind: the warm-up events were not delivered within 30 s"
  receiver_reset
  "$BIN/trellis-loadgen" "${args[@]}" --duration "$LATENCY_DURATION" --json \
    >"$WORK_DIR/latency-$kind.publish.json"
  n=$(json_field "$WORK_DIR/latency-$kind.publish.json" ok)
  wait_received "$n" 60 || log "$kind: not every measured event was delivered within 60 s"
  receiver_stats "$WORK_DIR/latency-$kind.json"
  curl -s -o /dev/null --max-time 30 -X DELETE "$(url_of "${NAMES[0]}")/v1/subscriptions/$topic" || true
  curl -s -o /dev/null --max-time 30 -X DELETE "$(url_of "${NAMES[0]}")/v1/topics/$topic?force=true" || true
  stop_step
}

# The member that owns unit $1, from `GET /v1/cluster` on replica $2; empty while nobody does.
# Each member's object starts with its id and holds its `owns`; `unowned` follows the members.
owner_of() {
  curl -s --max-time 5 "$(url_of "$2")/v1/cluster" 2>/dev/null | sed 's/"unowned".*//' |
    awk -v RS='"id":"' -v unit="\"$1\"" 'NR > 1 && index($0, unit) { sub(/".*/, ""); print; exit }'
}
members_of() {
  curl -s --max-time 5 "$(url_of "$1")/v1/cluster" 2>/dev/null | grep -o '"id":"' | wc -l
}
# A running replica other than $1 (to ask), or the first running one.
live_replica() {
  local name
  for name in "${NAMES[@]}"; do
    [[ $name != "${1:-}" ]] && is_running "${PIDS[$name]}" && echo "$name" && return 0
  done
  return 1
}
# Waits until every replica is a member and unit $1 has an owner that stayed the same over 3
# readings a second apart (a handoff to a replica that came back is over); sets OWNER.
wait_settled() {
  local unit=$1 deadline=$((SECONDS + 60)) asked previous="" same=0
  asked=$(live_replica)
  while ((SECONDS < deadline)); do
    OWNER=$(owner_of "$unit" "$asked")
    if [[ -n $OWNER && $OWNER == "$previous" && $(members_of "$asked") -eq $REPLICAS ]]; then
      same=$((same + 1))
      ((same >= 3)) && return 0
    else
      same=0
    fi
    previous=$OWNER
    sleep 1
  done
  die "the cluster did not settle within 60 s (owner of $unit: '${OWNER:-none}')"
}

# One owner kill, number $1. Appends "<kill-to-first-delivery ms> <gap ms> <killed> <new owner>"
# to failover.txt.
failover_kill() {
  local k=$1 unit=subscription/failover victim pid publisher kill_ns deadline gap_end gap_ms
  local first_ms new_owner asked
  local attempt
  # An etcd stall on a busy machine can end every lease and move the unit just before the
  # kill; then the cluster is left to settle again, up to three times.
  for attempt in 1 2 3; do
    wait_settled "$unit"
    victim=$OWNER
    pid=${PIDS[$victim]}
    # Publishing through the other replicas only: the one killed takes no publishes with it.
    urls_for /v1/topics/failover/events "$victim"
    "$BIN/trellis-loadgen" "${URL_ARGS[@]}" "${CE_ARGS[@]}" --body-size 256 --connections 4 \
      --rate "$KILL_RATE" --warmup 0 --duration $((LEASE_TTL_MS / 1000 + 10)) --json \
      >"$WORK_DIR/failover-$k.publish.json" 2>/dev/null &
    publisher=$!
    sleep 2
    receiver_reset
    sleep 0.5
    receiver_stats "$WORK_DIR/received.json"
    if (($(json_field "$WORK_DIR/received.json" requests) > 0)) &&
      [[ $(owner_of "$unit" "$(live_replica "$victim")") == "$victim" ]]; then
      break
    fi
    kill "$publisher" 2>/dev/null || true
    wait "$publisher" 2>/dev/null || true
    ((attempt < 3)) || die "kill $k: no steady deliveries from one owner in three tries"
    log "kill $k: deliveries stalled or $unit moved before the kill; letting the cluster settle again"
  done
  receiver_reset
  sleep 0.2
  kill_ns=$(date +%s%N)
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$victim]"
  # Resumed once a delivery arrives well after the kill (20 ms: a request the victim had
  # already written may still be read after it died); the longest gap then ends at the first
  # delivery after the kill.
  deadline=$((SECONDS + LEASE_TTL_MS / 1000 + 30))
  first_ms=""
  while ((SECONDS < deadline)); do
    receiver_stats "$WORK_DIR/received.json"
    if (($(json_field "$WORK_DIR/received.json" last_ns) > kill_ns + 20000000)); then
      gap_end=$(json_field "$WORK_DIR/received.json" max_gap_end_ns)
      gap_ms=$(json_field "$WORK_DIR/received.json" max_gap_ms)
      first_ms=$(awk -v end="$gap_end" -v kill="$kill_ns" 'BEGIN { printf "%.0f", (end - kill) / 1e6 }')
      break
    fi
    sleep 0.05
  done
  # A request the victim wrote just before it died can be read late on a busy machine and look
  # like a resumption; so once another member owns the unit, the longest gap since the reset
  # is the failover, and it ends at the new owner's first delivery.
  asked=$(live_replica "$victim")
  new_owner=$(owner_of "$unit" "$asked")
  while [[ -n $first_ms && ( -z $new_owner || $new_owner == "$victim" ) ]] && ((SECONDS < deadline)); do
    sleep 0.2
    new_owner=$(owner_of "$unit" "$asked")
  done
  if [[ -n $first_ms ]]; then
    sleep 0.5
    receiver_stats "$WORK_DIR/received.json"
    gap_end=$(json_field "$WORK_DIR/received.json" max_gap_end_ns)
    gap_ms=$(json_field "$WORK_DIR/received.json" max_gap_ms)
    first_ms=$(awk -v end="$gap_end" -v kill="$kill_ns" 'BEGIN { printf "%.0f", (end - kill) / 1e6 }')
  fi
  wait "$publisher" || true
  if [[ -z $first_ms ]]; then
    log "kill $k: $victim killed; no delivery within $((LEASE_TTL_MS / 1000 + 30)) s"
    first_ms=$(((LEASE_TTL_MS / 1000 + 30) * 1000))
    gap_ms=-
  else
    log "kill $k: $victim killed; first delivery after $first_ms ms (gap $(calc "$gap_ms") ms), now owned by ${new_owner:-?}"
  fi
  echo "$first_ms $(calc "${gap_ms/-/0}") $victim ${new_owner:--}" >>"$WORK_DIR/failover.txt"
  log "kill $k: starting $victim again"
  start_trellis_as "$victim" --meta "$etcd_url" --storage "$nats_url" --node-id "$victim" \
    --lease-ttl-ms "$LEASE_TTL_MS"
  wait_ready "$victim"
}

log "building release binaries"
(cd "$ROOT" && cargo build --release --quiet -p trellis -p trellis-bench)
"$TRELLIS" serve --help 2>/dev/null | grep -q -- '--meta' || die "$TRELLIS has no cluster mode (--meta)"

use_wrk=0
if [[ $WRK != 0 ]] && command -v wrk >/dev/null; then use_wrk=1; fi
load_at_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
start_etcd
start_nats "$WORK_DIR/nats" "$WORK_DIR/nats.log"
log "etcd $(etcd --version | sed -n 's/^etcd Version: //p') at $etcd_url, nats-server $(nats-server --version | sed 's/.*v//') at $nats_url"

"$BIN/trellis-bench-receiver" --addr 127.0.0.1:0 --status 200 --stats >"$WORK_DIR/receiver.out" 2>&1 &
RECEIVER_PID=$!
receiver_addr=""
for _ in {1..100}; do
  # The file is made by the child after the fork, so it may not exist yet.
  receiver_addr=$(sed -n 's/^listening on //p' "$WORK_DIR/receiver.out" 2>/dev/null || true)
  [[ -n $receiver_addr ]] && break
  is_running "$RECEIVER_PID" || die "trellis-bench-receiver exited: $(cat "$WORK_DIR/receiver.out")"
  sleep 0.05
done
[[ -n $receiver_addr ]] || die "trellis-bench-receiver did not report its address"
receiver_url="http://$receiver_addr"

kinds=(embedded single cluster)
for ((round = 1; round <= ROUNDS; round++)); do
  for step in 0 1 2; do
    throughput_step "${kinds[$(((round + step) % 3))]}" loadgen "$round"
  done
  if ((use_wrk)); then
    for step in 0 1 2; do
      throughput_step "${kinds[$(((round + step + 1) % 3))]}" wrk "$round"
    done
  fi
done

for kind in embedded single cluster; do latency_step "$kind"; done

log "failover: $KILLS owner kills, lease TTL $LEASE_TTL_MS ms, publishing $KILL_RATE events/s"
start_step cluster
create_topic failover
create_subscription failover failover /failover
: >"$WORK_DIR/failover.txt"
for ((k = 1; k <= KILLS; k++)); do failover_kill "$k"; done
stop_step
failover_rcs=("${STEP_RCS[@]}")
load_at_end=$(cut -d ' ' -f 1-3 /proc/loadavg)

# Field $2 (1-based) of <name>.extra.
extra() { cut -d ' ' -f "$2" "$WORK_DIR/$1.extra"; }
per_round() {
  local round
  for round in $(seq 1 "$ROUNDS"); do extra "$1-$round" "$2"; done
}
median_of() {
  local values
  mapfile -t values < <(per_round "$1" "$2")
  median "${values[@]}"
}
sum_of() { printf '%s\n' "$@" | awk '{ s += $1 } END { print s + 0 }'; }

tools=(loadgen)
((use_wrk)) && tools+=(wrk)
rows=() cluster_ratios=() bad_all=()
for tool in "${tools[@]}"; do
  for ((round = 1; round <= ROUNDS; round++)); do
    emb=$(extra "embedded-$tool-$round" 1)
    single=$(extra "single-$tool-$round" 1)
    cluster=$(extra "cluster-$tool-$round" 1)
    ratio=$(calc "100 * $cluster / $single")
    [[ $tool == loadgen ]] && cluster_ratios+=("$ratio")
    for kind in "${kinds[@]}"; do bad_all+=("$(extra "$kind-$tool-$round" 2)"); done
    rows+=("$(printf '%-8s %-6s %-11s %-11s %-11s %-15s %-12s %-10s %s' "$tool" "$round" "$(calc "$emb")" \
      "$(calc "$single")" "$(calc "$cluster")" "$ratio %" "$(calc "100 * $cluster / $emb") %" \
      "$(extra "embedded-$tool-$round" 2)/$(extra "single-$tool-$round" 2)/$(extra "cluster-$tool-$round" 2)" \
      "$(extra "cluster-$tool-$round" 6)")")
  done
done
n_bad=$(sum_of "${bad_all[@]}")
cluster_pct=$(median "${cluster_ratios[@]}")

mapfile -t failover_ms < <(cut -d ' ' -f 1 "$WORK_DIR/failover.txt")
mapfile -t gap_ms < <(cut -d ' ' -f 2 "$WORK_DIR/failover.txt")
n_met=$(awk -v max="$MAX_FAILOVER_MS" '$1 <= max { n++ } END { print n + 0 }' "$WORK_DIR/failover.txt")
n_bad_rc=$(printf '%s\n' "${failover_rcs[@]}" | grep -cv '^0$' || true)

results=(
  "$(verdict "$cluster_pct >= $MIN_CLUSTER_OVER_SINGLE_PCT")"
  "$(verdict "$n_met == $KILLS")"
  "$(verdict "$n_bad == 0")"
  "$(verdict "$n_bad_rc == 0")"
)

REPORTED=1
echo
echo "Cluster benchmark: $REPLICAS replicas on etcd $(etcd --version | sed -n 's/^etcd Version: //p')" \
  "and nats-server $(nats-server --version | sed 's/.*v//'), $CONNECTIONS connections, ${BODY_SIZE}-byte" \
  "events, ${DURATION} s measured after ${WARMUP} s warm-up, $ROUNDS rounds; lease TTL $LEASE_TTL_MS ms;"
echo "load average at start $load_at_start, at end $load_at_end"
echo
echo "Publish throughput, events/s (cluster: spread over the replicas; errors = non-2xx and"
echo "transport errors, embedded/single/cluster; spread = the cluster's 2xx per replica):"
printf '%-8s %-6s %-11s %-11s %-11s %-15s %-12s %-10s %s\n' tool round embedded single cluster \
  cluster/single cluster/emb "errors" spread
printf '%s\n' "${rows[@]}"
echo
echo "Failover, $KILLS SIGKILLs of the owner of subscription/failover at $KILL_RATE events/s:"
printf '%-5s %-11s %-22s %-18s %s\n' kill killed "kill to 1st delivery" "delivery gap" "new owner"
k=0
while read -r first gap victim new_owner; do
  k=$((k + 1))
  printf '%-5s %-11s %-22s %-18s %s\n' "$k" "$victim" "$first ms" "$gap ms" "$new_owner"
done <"$WORK_DIR/failover.txt"
echo
row() { printf '%-50s %-30s %-14s %s\n' "$@"; }
row "" "measured" "target" "result"
for kind in "${kinds[@]}"; do
  row "publish, $kind (loadgen), median" "$(median_of "$kind-loadgen" 1) events/s" "" ""
done
row "cluster / single replica on JetStream, median" "$cluster_pct %" ">= $MIN_CLUSTER_OVER_SINGLE_PCT %" "${results[0]}"
row "  cluster / embedded, median" "$(calc "100 * $(median_of cluster-loadgen 1) / $(median_of embedded-loadgen 1)") %" "" ""
if ((use_wrk)); then
  for kind in "${kinds[@]}"; do
    row "  wrk -t3: $kind, median" "$(median_of "$kind-wrk" 1) req/s" "" ""
  done
  row "  wrk: cluster / single, median" "$(calc "100 * $(median_of cluster-wrk 1) / $(median_of single-wrk 1)") %" "" ""
fi
row "trellis CPU per event, emb. / single / cluster" "$(median_of embedded-loadgen 5) / $(median_of single-loadgen 5) / $(median_of cluster-loadgen 5) us" "" ""
row "publish p99, emb. / single / cluster" "$(median_of embedded-loadgen 3) / $(median_of single-loadgen 3) / $(median_of cluster-loadgen 3) ms" "" ""
for kind in "${kinds[@]}"; do
  f=$WORK_DIR/latency-$kind.json
  row "publish->webhook at $LATENCY_RATE/s, $kind p50/p99/max" \
    "$(json_field "$f" p50_ms) / $(json_field "$f" p99_ms) / $(json_field "$f" max_ms) ms" "" ""
  row "  received / published" "$(json_field "$f" latency_count) / $(json_field "$WORK_DIR/latency-$kind.publish.json" ok)" "" ""
done
ratio2() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
row "  cluster / embedded, p50 / p99" "$(ratio2 "$(json_field "$WORK_DIR/latency-cluster.json" p50_ms)" "$(json_field "$WORK_DIR/latency-embedded.json" p50_ms)")x / $(ratio2 "$(json_field "$WORK_DIR/latency-cluster.json" p99_ms)" "$(json_field "$WORK_DIR/latency-embedded.json" p99_ms)")x" "" ""
row "failover, kill to 1st delivery, min/median/max" "$(printf '%s\n' "${failover_ms[@]}" | sort -g | head -n 1) / $(median "${failover_ms[@]}") / $(printf '%s\n' "${failover_ms[@]}" | sort -g | tail -n 1) ms" "" ""
row "  kills within TTL + 1 s" "$n_met of $KILLS" "<= $MAX_FAILOVER_MS ms, all" "${results[1]}"
row "  delivery gap, min/median/max" "$(printf '%s\n' "${gap_ms[@]}" | sort -g | head -n 1) / $(median "${gap_ms[@]}") / $(printf '%s\n' "${gap_ms[@]}" | sort -g | tail -n 1) ms" "" ""
row "non-2xx / transport errors, throughput runs" "$n_bad" "0" "${results[2]}"
row "replicas not exiting 0 after SIGTERM (failover)" "$n_bad_rc" "0" "${results[3]}"

for result in "${results[@]}"; do
  [[ $result == PASS ]] || exit 1
done
exit 0
