#!/usr/bin/env bash
# The virtual environment with the package `reins` installed from this directory (the build
# hook, setup.py, compiles the stubs from ../../proto), shared by run_tests.sh and
# tests/chaos/run.sh:
#
#   client/python/venv.sh VENV EXTRAS [PIP ARGS...]    # e.g. .venv test,pydantic-ai
#
# Creates VENV with $PYTHON (python3) if it has no python, makes sure its pip is 22.3+
# (tests/test_install.py uses `pip --python`), installs the build requirements of
# pyproject.toml's [build-system] once into it (so builds need no fresh isolated
# environment), then `reins[EXTRAS]` and any further pip arguments. pip rebuilds and
# reinstalls a local directory on every call.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$1"
extras="$2"
shift 2

if [[ ! -x "$venv/bin/python" ]]; then
  echo "== creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)
if ! "$py" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))'; then
  "${pip[@]}" install --upgrade "pip>=22.3"
fi

echo "== installing reins[$extras] from $here into $venv (the build hook generates the stubs)"
"${pip[@]}" install "setuptools>=77" "grpcio-tools==1.85.1"
"${pip[@]}" install --no-build-isolation "$here[$extras]" "$@"
