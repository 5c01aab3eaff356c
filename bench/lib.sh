# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts: logging, process control, ports, /proc readings.
# Sourced, not run. The script sets WORK_DIR, RECEIVER_PID, TRELLIS_PID and REPORTED before
# sourcing (and NATS_PID, if it starts nats-server with `start_nats`); `cleanup` stops whatever
# they name and removes WORK_DIR on exit, unless KEEP_WORK_DIR is set (to read the logs of a run
# that went wrong).

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
# shellcheck disable=SC2034 # read by the sourcing script
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
  # shellcheck disable=SC2034 # read by the sourcing script
  STOPPED_RC=$rc
}

cleanup() {
  local rc=$?
  if [[ -n $RECEIVER_PID ]]; then stop_process "$RECEIVER_PID" 5; fi
  if [[ -n $TRELLIS_PID ]]; then stop_process "$TRELLIS_PID" 10; fi
  # After trellis, which may still be flushing to it.
  if [[ -n ${NATS_PID:-} ]]; then stop_process "$NATS_PID" 10; fi
  # A failed target is reported in the table; the log helps only when the run itself broke.
  if ((rc != 0)) && [[ -z $REPORTED && -s $WORK_DIR/trellis.log ]]; then
    printf -- '--- last lines of the trellis log ---\n' >&2
    tail -n 30 "$WORK_DIR/trellis.log" >&2
  fi
  if [[ -n ${KEEP_WORK_DIR:-} ]]; then
    log "kept $WORK_DIR"
  else
    rm -rf "$WORK_DIR"
  fi
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

# A numeric field of a JSON document whose field names are unique (trellis-loadgen's report,
# the receiver's stats, a subscription with its status). Empty if the field is missing.
json_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }

# The median of the numbers given as arguments (the mean of the middle two for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit 1
    if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2
  }'
}

# Float arithmetic and comparisons, which bash lacks.
calc() { awk "BEGIN { printf \"%.1f\", $1 }"; }
verdict() { awk "BEGIN { exit !($1) }" && echo PASS || echo FAIL; }

# CPU time a process has used so far (user + system), in clock ticks. The fields are counted
# after the `)` that ends the command name, which may itself hold spaces.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# Microseconds of CPU per unit: ticks $1, units $2.
us_per() { awk -v ticks="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0) ? ticks * 1e6 / hz / n : 0 }'; }

# Installs nats-server from apt where it is missing (Debian 12 packages 2.9).
ensure_nats_server() {
  command -v nats-server >/dev/null && return 0
  log "installing nats-server from apt"
  local sudo_cmd=""
  [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nats-server
}

# Starts `nats-server -js` on a free loopback port with its store in $1, its log in $2; sets
# NATS_PID and nats_url once it accepts connections. `cleanup` stops it.
start_nats() {
  local store=$1 log_file=$2 port
  port=$(free_port)
  mkdir -p "$store"
  nats-server -js -sd "$store" -a 127.0.0.1 -p "$port" >"$log_file" 2>&1 &
  NATS_PID=$!
  # shellcheck disable=SC2034 # read by the sourcing script
  nats_url="nats://127.0.0.1:$port"
  for _ in {1..200}; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    is_running "$NATS_PID" || die "nats-server exited: $(tail -n 5 "$log_file")"
    sleep 0.05
  done
  die "nats-server did not accept connections on port $port within 10 s"
}
