#!/usr/bin/env bash
# Tests of the Python worker library, its examples and grpcurl against real reinsd
# replicas on a real redis-server. Installs what they need (client/python/requirements.txt),
# generates the stubs from proto/ and runs pytest. Works from any directory.
#
# Assumes the binaries are built: `cargo build --bins` in the repository (REINSD_BIN
# overrides target/debug/reinsd). Extra arguments go to pytest, e.g. `-k cancel -x`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

reinsd="${REINSD_BIN:-$repo/target/debug/reinsd}"
if [[ ! -x "$reinsd" ]]; then
  echo "run_tests.sh: $reinsd is missing: run \`cargo build --bins\` in $repo first" >&2
  exit 1
fi

"$python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"

cd "$here"
"$python" -m reins_worker.generate

status=0
"$python" -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "run_tests.sh: pytest collected no tests" >&2
fi
exit "$status"
