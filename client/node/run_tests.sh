#!/usr/bin/env bash
# Tests of the Node SDK (@reins/sdk) against real reinsd replicas on a real redis-server.
# Installs exactly the locked packages (npm ci), builds (the proto copy, the generated
# types, tsc in strict mode) and runs `npm test` (node:test). Works from any directory.
#
# Assumes the binaries are built: `cargo build --bins` in the repository (REINSD_BIN
# overrides target/debug/reinsd, REINS_BIN the `reins` CLI next to it). The test of tasks
# started from Python creates a virtualenv with grpcio in client/node/.cache/ on first
# use. To run some tests only, after a build:
#   node --test --test-name-pattern cancel dist/test/*.test.js
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export REINSD_BIN="${REINSD_BIN:-$repo/target/debug/reinsd}"
if [[ ! -x "$REINSD_BIN" ]]; then
  echo "run_tests.sh: $REINSD_BIN is missing: run \`cargo build --bins\` in $repo first" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null 2>&1 && [[ -z "${REDIS_SERVER_BIN:-}" ]]; then
  echo "run_tests.sh: redis-server is not installed (tests/run.sh installs it)" >&2
  exit 1
fi

cd "$here"
# --ignore-scripts: nothing runs at install; the build below is the one explicit step.
npm ci --ignore-scripts --no-audit --no-fund
npm run build
npm test
