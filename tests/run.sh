#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, idempotently, then runs every test.
# Safe to run on a fresh Debian 12 machine with rustup; CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }

# Unit tests next to the code, then the process-level suite in tests/e2e (real cod processes on loopback).
cargo test --locked --lib
cargo test --locked --test e2e -- --test-threads 2
