#!/usr/bin/env bash
# The chaos run (chaos.py: replicas on Redis, Python workers, a load of tasks under random
# faults, then the checks over the whole history), with what it needs:
#
#   tests/chaos/run.sh --short     # what tests/run.sh runs: 300 tasks, 8 faults, < 3 min
#   tests/chaos/run.sh --full      # 10,000 tasks, 50 faults, release binaries (~15 min)
#   tests/chaos/run.sh --tasks 500 --faults 12 --duration 120 --seed 7   # any chaos.py flags
#
# Flags after --short/--full override theirs. Needs root (network namespaces, veth pairs,
# nftables rules, all inside namespaces of the run's own); installs iproute2 and nftables
# from Debian packages when missing (redis-server too). Python: the venv of client/python
# ($REINS_PYTHON_VENV overrides), made or completed by client/python/venv.sh when it lacks
# the package or the checkers; ruff format --check, ruff check, mypy --strict and the
# checker's own tests (test_checker.py) run first. Binaries: target/debug (--short; `cargo build --bins`) or
# target/release (--full; `cargo build --release --bins`); --bin-dir overrides.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${REINS_PYTHON_VENV:-$repo/client/python/.venv}"

preset=()
case "${1:-}" in
  --short) shift; preset=(--tasks 300 --faults 8 --duration 75 --settle 60 --bin-dir "$repo/target/debug") ;;
  --full) shift; preset=(--tasks 10000 --faults 50 --duration 720 --settle 120 --bin-dir "$repo/target/release") ;;
esac

if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

if ! "$venv/bin/python" -c 'import reins, mypy, ruff, grpc' >/dev/null 2>&1; then
  "$repo/client/python/venv.sh" "$venv" test
fi

echo "== chaos modules: ruff format --check, ruff check, mypy --strict, the checker's tests"
(cd "$here" && "$venv/bin/ruff" format --check . && "$venv/bin/ruff" check .)
(cd "$here" && "$venv/bin/mypy" --config-file pyproject.toml ./*.py)
(cd "$here" && "$venv/bin/pytest" -q test_checker.py)

echo "== chaos run: chaos.py ${preset[*]} $*"
exec $sudo "$venv/bin/python" "$here/chaos.py" "${preset[@]}" "$@"
