#!/usr/bin/env bash
# The whole test suite, on a fresh machine: formatting, lints, unit tests, the store
# conformance suite and the end-to-end tests against real reinsd processes.
#
#   tests/run.sh
#
# Installs what it needs when it is missing (a Rust toolchain is assumed; rustfmt and
# clippy components are added with rustup when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "== build the binaries the end-to-end tests start"
cargo build --workspace --bins --locked

echo "== tests"
cargo test --workspace --locked
