#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (tests/fuzz/fuzz_targets/*, entry points in
# server/src/fuzzing.rs) with cargo fuzz (libFuzzer + AddressSanitizer), each target for
# FUZZ_SECONDS (default 600: ten minutes). Not part of tests/run.sh: run it after changing
# a parser, and before a release.
#
#   tests/fuzz.sh                                  # every target, ten minutes each
#   FUZZ_SECONDS=60 tests/fuzz.sh page_token       # one target, one minute
#
# Installs cargo-fuzz when missing. The machine's one toolchain is stable;
# RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo fuzz passes (the sanitizer).
# Corpora grow in target/fuzz/corpus/<target>; a crash stops that target, is kept in
# target/fuzz/artifacts/<target>/ and fails the run: make it a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-600}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
fuzz=(cargo fuzz run --fuzz-dir tests/fuzz --target-dir target/fuzz)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir tests/fuzz)
fi

echo "== cargo fuzz build"
cargo fuzz build --fuzz-dir tests/fuzz --target-dir target/fuzz

passed=0
failed=0
for target in "${targets[@]}"; do
  corpus=target/fuzz/corpus/$target
  artifacts=target/fuzz/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  echo "== fuzz $target for ${seconds}s"
  if "${fuzz[@]}" "$target" "$corpus" -- -max_total_time="$seconds" \
      -artifact_prefix="$artifacts/" -print_final_stats=1; then
    passed=$((passed + 1))
  else
    echo "fuzz: $target found a crash: see $artifacts" >&2
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
