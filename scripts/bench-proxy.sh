#!/usr/bin/env bash
# Connects per second through the connect proxy (docs/proxies.md) against a local backend, and
# the same with JWT, in the same run.
#
#   scripts/bench-proxy.sh
#
# Builds release, starts `herald-loadgen proxy-backend` (answers every call at once with a new
# user), then runs pairs of runs, JWT and connect proxy, alternating their order from pair to
# pair (JWT first in odd pairs). Each run starts a fresh `herald serve` pinned to core 0 and
# opens N WebSocket connections with herald-loadgen's `idle` scenario pinned to core 1 (the
# backend shares core 1): handshake, `connect` (with a token, or without one so that the node
# asks the backend) and `subscribe` per connection, C at a time. Prints connects/s of every run,
# the ratio proxy/JWT of every pair and the median ratio. Ratios are the figure to read: the
# machine is shared, and absolute rates move with other people's load (`others` in the table).
# Results: benches/results/proxy-<time>/ (results.jsonl, commands.txt, herald.log).
#
# Environment: BENCH_CONNECTIONS (N, default 10000); BENCH_REPEAT (pairs, default 5);
# BENCH_CONNECT_CONCURRENCY (C, default 128, herald-loadgen's default); BENCH_BUDGET (seconds
# after the build, default 900) stops everything when spent; BENCH_QUIET_WAIT (seconds, default
# 20): how long to wait before each run for other processes to leave the CPUs alone;
# BENCH_HERALD_PORT (18010), BENCH_BACKEND_PORT (18900); BENCH_BUILD=0 skips the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

case ${1:-} in
  "") ;;
  -h | --help)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "unknown argument $1 (see --help)" >&2
    exit 2
    ;;
esac

CONNECTIONS=${BENCH_CONNECTIONS:-10000}
REPEAT=${BENCH_REPEAT:-5}
CONCURRENCY=${BENCH_CONNECT_CONCURRENCY:-128}
BUDGET=${BENCH_BUDGET:-900}
QUIET_WAIT=${BENCH_QUIET_WAIT:-20}
HERALD_PORT=${BENCH_HERALD_PORT:-18010}
BACKEND_PORT=${BENCH_BACKEND_PORT:-18900}
SECRET=bench-secret
API_KEY=bench-key

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- cores and limits
if [ "$(nproc)" -ge 2 ]; then
  SERVER_CORE=0 CLIENT_CORE=1
else
  log "only one core: server, backend and load generator share it"
  SERVER_CORE=0 CLIENT_CORE=0
fi
# Each connection is a file descriptor in the server and in the load generator.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" != unlimited ] && [ "$FD_LIMIT" -lt $((CONNECTIONS + 500)) ]; then
  log "open-file limit $FD_LIMIT is too low for $CONNECTIONS connections"
  exit 1
fi
# Herald caps connections not yet upgraded to WebSocket per client address
# (http.max_pending_connections_per_ip, lowered at startup to a quarter of
# http.max_pending_connections, itself at most half the open-file limit); the load generator has
# at most C of them at once, all from 127.0.0.1.
PENDING=4096
if [ "$FD_LIMIT" != unlimited ] && [ $((FD_LIMIT / 2)) -lt $PENDING ]; then PENDING=$((FD_LIMIT / 2)); fi
PENDING_PER_IP=$((PENDING / 4))
if [ "$CONCURRENCY" -gt "$PENDING_PER_IP" ]; then
  log "BENCH_CONNECT_CONCURRENCY=$CONCURRENCY is above Herald's per-address cap of $PENDING_PER_IP pending connections"
  exit 1
fi

# ---------------------------------------------------------------- build
HERALD_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src proto build.rs Cargo.toml Cargo.lock benches/loadgen 2>/dev/null || echo ' (with uncommitted changes to the server or load generator)')"
if [ "${BENCH_BUILD:-1}" != 0 ]; then
  log "building release binaries"
  cargo build --release --bin herald --bin herald-loadgen
fi
HERALD=$ROOT/target/release/herald
LOADGEN=$ROOT/target/release/herald-loadgen

# ---------------------------------------------------------------- workspace, watchdog, cleanup
WORK=$(mktemp -d /tmp/herald-bench-proxy.XXXXXX)
RESULTS_DIR=$ROOT/benches/results/proxy-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/results.jsonl
COMMANDS=$RESULTS_DIR/commands.txt
: >"$RESULTS"
: >"$COMMANDS"
SERVER_PID= BACKEND_PID= WATCHDOG=

stop_process() { # pid
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop_server() {
  stop_process "$SERVER_PID"
  SERVER_PID=
}
cleanup() {
  stop_server
  stop_process "$BACKEND_PID"
  if [ -n "$WATCHDOG" ]; then
    kill $(pgrep -P "$WATCHDOG") "$WATCHDOG" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
(
  sleep "$BUDGET"
  echo "scripts/bench-proxy.sh: budget of ${BUDGET}s spent, stopping" >&2
  kill -TERM $$
) &
WATCHDOG=$!

# ---------------------------------------------------------------- configs
# The two configs differ only in how a connection is authenticated. Namespace `bench`: no
# history, no presence (subscribing costs as little as it can).
common_config() {
  cat <<EOF
[http]
listen = "127.0.0.1:$HERALD_PORT"
max_pending_connections = $PENDING
max_pending_connections_per_ip = $PENDING_PER_IP
[client]
max_connections = 100000
connection_rate_limit = 0
EOF
}
namespaces_config() {
  cat <<EOF
[api]
key = "$API_KEY"
[storage]
path = "$WORK/herald-data"
[log]
format = "text"
[channels.namespaces.bench]
allow_subscribe_for_client = true
EOF
}
{
  common_config
  echo "token_hmac_secret = \"$SECRET\""
  namespaces_config
} >"$WORK/jwt.toml"
{
  common_config
  cat <<EOF
[client.proxy.connect]
enabled = true
endpoint = "http://127.0.0.1:$BACKEND_PORT/connect"
timeout = "1s"
EOF
  namespaces_config
} >"$WORK/proxy.toml"
for mode in jwt proxy; do
  "$HERALD" check-config "$WORK/$mode.toml" >/dev/null
done

# ---------------------------------------------------------------- processes
wait_ready() { # curl arguments: polls for 10s at most
  for _ in $(seq 200); do
    curl -fs -o /dev/null "$@" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

taskset -c $CLIENT_CORE "$LOADGEN" proxy-backend --listen "127.0.0.1:$BACKEND_PORT" \
  >>"$RESULTS_DIR/backend.log" 2>&1 &
BACKEND_PID=$!
if ! wait_ready -X POST -d '{}' "http://127.0.0.1:$BACKEND_PORT/connect"; then
  log "the proxy backend did not answer within 10s, see $RESULTS_DIR/backend.log"
  exit 1
fi

start_server() { # jwt|proxy
  rm -rf "$WORK/herald-data"
  RUST_LOG=warn taskset -c $SERVER_CORE "$HERALD" serve --config "$WORK/$1.toml" >>"$RESULTS_DIR/herald.log" 2>&1 &
  SERVER_PID=$!
  if ! wait_ready "http://127.0.0.1:$HERALD_PORT/health"; then
    log "herald not ready after 10s, see $RESULTS_DIR/herald.log"
    return 1
  fi
}

# Waits (at most QUIET_WAIT s) until other processes use less than 20% of a core.
wait_quiet() {
  local waited=0 a b
  while [ "$waited" -lt "$QUIET_WAIT" ]; do
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat)
    [ $((b - a)) -lt 20 ] && return 0
    waited=$((waited + 1))
  done
  log "machine still busy after ${QUIET_WAIT}s (other processes); running anyway, see others"
}

# run_case jwt|proxy PAIR: appends the run's JSON to $RESULTS and sets RATE (connects/s, or
# empty when the run failed).
run_case() {
  local mode=$1 pair=$2 auth out calls
  case $mode in
    jwt) auth=(--token-secret "$SECRET") ;;
    proxy) auth=(--anonymous) ;;
  esac
  local args=(--target herald --url "ws://127.0.0.1:$HERALD_PORT/connection/websocket"
    --api "http://127.0.0.1:$HERALD_PORT" --api-key "$API_KEY" "${auth[@]}"
    --connect-concurrency "$CONCURRENCY" --timeout 120)
  local scenario=(idle --connections "$CONNECTIONS" --hold 0)
  RATE=
  wait_quiet
  start_server "$mode" || { stop_server; return 0; }
  printf 'taskset -c %s herald-loadgen %s --server-pid PID --label connect-%s-%s %s\n' \
    "$CLIENT_CORE" "${args[*]}" "$mode" "$pair" "${scenario[*]}" >>"$COMMANDS"
  # --timeout bounds the run; `timeout` is the backstop.
  if out=$(timeout 200 taskset -c $CLIENT_CORE "$LOADGEN" "${args[@]}" --server-pid "$SERVER_PID" \
    --label "connect-$mode-$pair" "${scenario[@]}" 2>>"$RESULTS_DIR/loadgen.log"); then
    echo "$out" >>"$RESULTS"
    if [ "$(jq -r '.connected' <<<"$out")" = "$CONNECTIONS" ]; then
      RATE=$(jq -r '.connects_per_sec' <<<"$out")
    else
      log "connect-$mode-$pair: $(jq -r '.connect_failures' <<<"$out") connections failed, see $RESULTS_DIR/loadgen.log"
    fi
    if [ "$mode" = proxy ]; then
      # The backend must have decided every connection, or the run measured something else.
      calls=$(curl -fs "http://127.0.0.1:$HERALD_PORT/metrics" |
        awk '/^herald_proxy_calls_total\{/ && /proxy="connect"/ {print $NF}')
      if [ "${calls:-0}" != "$CONNECTIONS" ]; then
        log "connect-$mode-$pair: $CONNECTIONS connections but ${calls:-no} connect proxy calls"
        RATE=
      fi
    fi
    printf '%-6s pair %d: %8.0f connects/s  cpu server %3.0f%%, load generator %3.0f%%, others (backend included) %3.0f%%\n' \
      "$mode" "$pair" "${RATE:-0}" \
      "$(jq -r '(.connect_cpu.server // 0) * 100' <<<"$out")" \
      "$(jq -r '(.connect_cpu.client // 0) * 100' <<<"$out")" \
      "$(jq -r '(.connect_cpu.others // 0) * 100' <<<"$out")"
  else
    log "connect-$mode-$pair: the load generator failed, see $RESULTS_DIR/loadgen.log"
  fi
  stop_server
}

# ---------------------------------------------------------------- runs
log "herald $HERALD_REV: $REPEAT pairs of $CONNECTIONS connections, $CONCURRENCY at a time"
RATIOS=() JWT_RATES=() PROXY_RATES=()
for pair in $(seq "$REPEAT"); do
  if [ $((pair % 2)) = 1 ]; then order=(jwt proxy); else order=(proxy jwt); fi
  declare -A rate=()
  for mode in "${order[@]}"; do
    run_case "$mode" "$pair"
    rate[$mode]=$RATE
  done
  if [ -n "${rate[jwt]}" ] && [ -n "${rate[proxy]}" ]; then
    JWT_RATES+=("${rate[jwt]}") PROXY_RATES+=("${rate[proxy]}")
    RATIOS+=("$(awk -v p="${rate[proxy]}" -v j="${rate[jwt]}" 'BEGIN {printf "%.3f", p / j}')")
    printf 'pair %d: proxy/JWT %s\n' "$pair" "${RATIOS[-1]}"
  else
    printf 'pair %d: incomplete, no ratio\n' "$pair"
  fi
  unset rate
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo
echo "herald $HERALD_REV, $CONNECTIONS connections, $CONCURRENCY at a time; results in $RESULTS_DIR"
if [ ${#RATIOS[@]} = 0 ]; then
  echo "no complete pair"
  exit 1
fi
printf 'median connects/s: JWT %.0f, connect proxy %.0f; median ratio proxy/JWT %.3f (%d pairs: %s)\n' \
  "$(median "${JWT_RATES[@]}")" "$(median "${PROXY_RATES[@]}")" "$(median "${RATIOS[@]}")" \
  ${#RATIOS[@]} "${RATIOS[*]}"
