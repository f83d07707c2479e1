#!/usr/bin/env bash
# Fails when a binary is over the edge size budget (default 8 MiB = 8388608 bytes, stripped; issue 5).
#
#   cross/check-size.sh BINARY [BUDGET_BYTES]
#
# CI runs it on the static edge builds for x86_64 and aarch64 (tests/edge.sh). Over budget, it names the
# way to find out why: `cargo bloat` on the same target and features (cross/README.md, "Size").
set -euo pipefail
bin="${1:?usage: cross/check-size.sh BINARY [BUDGET_BYTES]}"
budget="${2:-8388608}"
[[ -f "$bin" ]] || { echo "check-size: $bin does not exist" >&2; exit 1; }
size="$(stat -c %s "$bin")"
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
if ((size > budget)); then
  echo "check-size: FAIL ${bin##*/} is $(mib "$size") ($size bytes), over the budget of $(mib "$budget") by $(mib $((size - budget)))" >&2
  echo "check-size: see what grew with: cargo bloat --profile edge --crates --target <triple> --no-default-features --features <flavor>" >&2
  exit 1
fi
echo "check-size: ok ${bin##*/} is $(mib "$size") ($size bytes), $(mib $((budget - size))) under the budget of $(mib "$budget")"
