# Helpers shared by tests/deploy/validate.sh and tests/deploy/image.sh (sourced).
#
# Counting: `pass NAME`, `fail NAME [WHY]`, `skip NAME WHY`; `finish` prints the closing
# line `<suite>: N passed, N failed[, N skipped]` and exits non-zero on any failure.

deploy_tests="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$deploy_tests/../.." && pwd)"
passed=0
failed=0
skipped=0

pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1${2:+: $2}"; }
skip() { skipped=$((skipped + 1)); echo "skip $1: $2"; }
finish() {
  local line="$suite: $passed passed, $failed failed"
  if [[ $skipped -gt 0 ]]; then line="$line, $skipped skipped"; fi
  echo "$line"
  [[ $failed -eq 0 ]]
}

# The venv holding tests/deploy/requirements.txt ($REINS_DEPLOY_VENV, default
# target/deploy-venv, which .gitignore's /target covers). Installs on first use; later
# runs only check the pins. Sets $venv.
deploy_venv() {
  venv="${REINS_DEPLOY_VENV:-$repo/target/deploy-venv}"
  local python="${PYTHON:-python3}"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$deploy_tests/requirements.txt"
}

# Seconds since the epoch with milliseconds, for timings.
now() { date +%s.%3N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
