#!/usr/bin/env bash
# Benchmarks Reins on this machine: builds the release binaries, starts a throwaway
# cluster on loopback, runs reins-bench against it and tears everything down on exit.
#
#   client/bench/run.sh                       # Redis store: replicas a, b (and c, see below)
#   client/bench/run.sh --memory              # embedded store: one replica, no Redis
#   client/bench/run.sh --cluster             # a Redis Cluster of 3 masters (redis+cluster://);
#                                             # the `cost` scenario needs one Redis and is not run
#   client/bench/run.sh -- --scenario lifecycle --duration 10s   # more reins-bench flags
#   client/bench/run.sh -- --help             # reins-bench's own flags
#   client/bench/run.sh --bin-dir DIR         # binaries already built in DIR (no cargo build),
#                                             # e.g. to compare two builds in one sitting
#   client/bench/run.sh --traces 0            # traces exported, none sampled (the overhead of
#   client/bench/run.sh --traces 100          # having them on), or every one sampled
#   client/bench/run.sh --keep-logs DIR       # the replicas' and Redis's logs kept in DIR
#   client/bench/run.sh --blackbox            # the Python black-box client (blackbox.py)
#   client/bench/run.sh --blackbox -- --rounds 50   # … with its own flags (-- --help)
#
# --blackbox runs client/bench/blackbox.py instead of reins-bench, against replicas a and
# b only (no c: nothing keeps it full), from a venv at target/bench-venv with grpcio and
# the package of client/python installed (its build hook generates the stubs there, as
# client/python/run_tests.sh does; nothing generated lands in the source tree).
#
# --traces off|0|100 (default off): with 0 or 100, an OTLP/gRPC sink (otlp_sink.py, in a venv
# at target/bench-venv with grpcio and opentelemetry-proto) counts and drops the spans, and
# the replicas export to it (OTEL_EXPORTER_OTLP_ENDPOINT) with the sampler
# parentbased_traceidratio at 0 or parentbased_always_on. reins-bench sends no trace
# context, so every call is a root: 0 samples nothing, 100 everything.
#
# The Redis cluster, all on 127.0.0.1 and free ports, state in a temporary directory:
#   - redis-server --save "" --appendonly no (its own port, never the shared 6379);
#   - reinsd a and b: --allow-exec python3 --allow-exec sleep --max-concurrency 4096. a is
#     replica A: it starts the cancel scenarios' tasks (b cancels them) and takes the
#     10,000 watchers; `sleep` is what cancel-under-load's background exec tasks run;
#   - reinsd c: --max-concurrency 1, for cross-replica dispatch. reins-bench keeps it busy
#     with one long task (--full-server), so what is started through c waits PENDING until
#     a or b, woken by the queue channel, takes it.
# With --memory only reinsd a runs, on the embedded store: cancels go through the owner.
# Every replica serves metrics (--metrics-listen on a free port), as in production: the
# figures include what recording them costs. reins-bench gets the Redis URL and the metrics
# endpoints (--redis, --metrics) for the `cost` scenario: Redis commands (INFO
# commandstats, script-internal calls included) and store round trips per short task.
#
# The replicas find `python3` (for the heartbeat tasks) first in the directory of the
# python3 this script runs, so a version manager's shim does not sit in front of it.
# They log at RUST_LOG (default info) to files that are shown if a replica fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

store=redis
bin=
traces=off
blackbox=0
keep_logs=
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --memory) store=memory; shift ;;
    --cluster) store=cluster; shift ;;
    --traces) traces=$2; shift 2 ;;
    --blackbox) blackbox=1; shift ;;
    --keep-logs) keep_logs=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    --bin-dir) bin=$(cd "$2" && pwd); shift 2 ;;
    --) shift; bench_args+=("$@"); break ;;
    *) bench_args+=("$1"); shift ;;
  esac
done

for tool in python3 $([ "$store" != memory ] && echo redis-server redis-cli); do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is needed" >&2; exit 1; }
done

if [ -z "$bin" ]; then
  echo "== cargo build --release --bins" >&2
  cargo build --release --bins
  bin=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
fi

work=$(mktemp -d -t reins-bench.XXXXXX)
children=()
cleanup() {
  # SIGTERM lets a replica settle its tasks (killing their process groups) before it exits.
  for child in "${children[@]}"; do kill -TERM "$child" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for child in "${children[@]}"; do kill -0 "$child" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for child in "${children[@]}"; do kill -KILL "$child" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs" && cp "$work"/*.log "$keep_logs"/ 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "run.sh: $1" >&2
  for log in "$work"/*.log; do
    [ -e "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_url=
start_redis() {
  # Another process may take the port between the probe and the bind: try again.
  for _ in 1 2 3 4 5; do
    local port
    port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$work" --daemonize no --loglevel warning >"$work/redis.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
        children+=("$pid")
        redis_url="redis://127.0.0.1:$port"
        return
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
  done
  fail "redis-server did not start"
}

# Three cluster-enabled redis-servers joined by `redis-cli --cluster create` (no replicas).
start_redis_cluster() {
  local nodes=() i port bus
  for i in 1 2 3; do
    port=$(free_port)
    bus=$(free_port)
    mkdir -p "$work/redis-$i"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-config-file nodes.conf --save "" --appendonly no --dir "$work/redis-$i" \
      --daemonize no --loglevel warning >"$work/redis-$i.log" 2>&1 &
    children+=("$!")
    for _ in $(seq 100); do
      [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
      sleep 0.05
    done
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$work/cluster-create.log" 2>&1 ||
    fail "redis-cli --cluster create failed"
  for _ in $(seq 200); do
    if redis-cli -p "${nodes[0]#*:}" cluster info | grep -q 'cluster_state:ok'; then
      redis_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
      return
    fi
    sleep 0.05
  done
  fail "the Redis Cluster did not settle"
}

case "$traces" in
  off) ;;
  0) export OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0 ;;
  100) export OTEL_TRACES_SAMPLER=parentbased_always_on ;;
  *) echo "run.sh: --traces takes off, 0 or 100" >&2; exit 2 ;;
esac
venv=target/bench-venv
pip_install() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@"
}
if [ "$blackbox" = 1 ]; then
  # The package's build requirements first, so it builds without an isolated environment.
  pip_install "setuptools>=77" "grpcio-tools==1.85.1"
  pip_install --no-build-isolation ./client/python
fi
if [ "$traces" != off ]; then
  pip_install "grpcio>=1.85.1" "protobuf>=7.35.1,<8" "opentelemetry-proto==1.45.2"
  "$venv/bin/python" client/bench/otlp_sink.py >"$work/sink.out" 2>"$work/sink.log" &
  sink=$!
  children+=("$sink")
  for _ in $(seq 200); do
    sink_port=$(sed -n 's/^otlp sink listening on //p' "$work/sink.out")
    [ -n "$sink_port" ] && break
    kill -0 "$sink" 2>/dev/null || fail "the OTLP sink exited"
    sleep 0.05
  done
  [ -n "$sink_port" ] || fail "the OTLP sink did not start"
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
  echo "== traces: exported to the sink on port $sink_port, sampler $OTEL_TRACES_SAMPLER ${OTEL_TRACES_SAMPLER_ARG:-}" >&2
fi

declare -A url pid metrics
python_dir=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")
# start_reinsd NAME [reinsd flags…]: replica NAME on a free port (reinsd prints it).
start_reinsd() {
  local name=$1
  shift
  local metrics_port
  metrics_port=$(free_port)
  metrics[$name]="http://127.0.0.1:$metrics_port"
  # Created here: the background replica opens them a moment later than the polls below.
  : >"$work/$name.out"
  PATH="$python_dir:$PATH" "$bin/reinsd" --listen 127.0.0.1:0 --replica-id "$name" \
    --allow-exec python3 --allow-exec sleep --shutdown-grace 1s --metrics-listen "127.0.0.1:$metrics_port" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pid[$name]=$!
  children+=("${pid[$name]}")
  for _ in $(seq 200); do
    local address
    address=$(sed -n 's/^reinsd listening on //p' "$work/$name.out")
    if [ -n "$address" ]; then
      url[$name]="http://$address"
      return
    fi
    kill -0 "${pid[$name]}" 2>/dev/null || fail "reinsd $name exited"
    sleep 0.05
  done
  fail "reinsd $name did not start listening"
}

servers=()
if [ "$store" != memory ]; then
  if [ "$store" = cluster ]; then start_redis_cluster; else start_redis; fi
  start_reinsd a --redis-url "$redis_url" --max-concurrency 4096
  start_reinsd b --redis-url "$redis_url" --max-concurrency 4096
  if [ "$blackbox" = 1 ]; then
    servers=(--server "a=${url[a]}" --server "b=${url[b]}")
    echo "== store: Redis $redis_url; replicas a ${url[a]}, b ${url[b]}" >&2
  else
    start_reinsd c --redis-url "$redis_url" --max-concurrency 1
    servers=(--server "a=${url[a]}" --server "b=${url[b]}" --full-server "c=${url[c]}"
      --metrics "${metrics[a]}" --metrics "${metrics[b]}" --metrics "${metrics[c]}")
    if [ "$store" = redis ]; then servers+=(--redis "$redis_url"); fi
    echo "== store: Redis $redis_url; replicas a ${url[a]}, b ${url[b]}, c ${url[c]} (full)" >&2
  fi
else
  start_reinsd a --max-concurrency 4096
  servers=(--server "a=${url[a]}")
  echo "== store: embedded (memory); replica a ${url[a]}" >&2
fi
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $([ "$blackbox" = 1 ] && echo blackbox.py || echo reins-bench) ${bench_args[*]}" >&2

status=0
if [ "$blackbox" = 1 ]; then
  "$venv/bin/python" client/bench/blackbox.py "${servers[@]}" "${bench_args[@]}" || status=$?
else
  "$bin/reins-bench" "${servers[@]}" --server-pid "${pid[a]}" "${bench_args[@]}" || status=$?
fi
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for name in "${!pid[@]}"; do
  kill -0 "${pid[$name]}" 2>/dev/null || fail "reinsd $name died during the run"
done
if [ "$traces" != off ]; then
  # The replicas flush their spans as they stop, then the sink says how many it got.
  for name in "${!pid[@]}"; do kill -TERM "${pid[$name]}" 2>/dev/null || true; done
  for name in "${!pid[@]}"; do
    for _ in $(seq 100); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
  done
  kill -TERM "$sink" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$sink" 2>/dev/null || break; sleep 0.1; done
  cat "$work/sink.log" >&2
fi
exit "$status"
