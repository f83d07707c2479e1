#!/usr/bin/env bash
# Fails when a static build's idle-path code (`.text.idle`, laid out by cross/idle-order.ld) is missing or
# under half of what the profile found: the script's patterns no longer match the build's functions, and an
# idle node maps several MiB more of its code (cross/build.sh says why). The fix is to profile again with
# cross/idle-order.py.
#
#   cross/check-idle-order.sh BINARY
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:?usage: cross/check-idle-order.sh BINARY}"
[[ -f "$bin" ]] || { echo "check-idle-order: $bin does not exist" >&2; exit 1; }
profiled="$(sed -n 's/.*functions, \([0-9]*\) bytes of code.*/\1/p' "$repo/cross/idle-order.ld" | head -n1)"
[[ -n "$profiled" ]] || { echo "check-idle-order: cross/idle-order.ld names no profiled size" >&2; exit 1; }
# `[ 4] .text.idle PROGBITS addr off size ...`: the index may hold a space, so fields count from the name.
hex="$(readelf -SW "$bin" | sed -n 's/.*\] \.text\.idle  *PROGBITS  *[0-9a-f]*  *[0-9a-f]*  *\([0-9a-f]*\) .*/\1/p')"
if [[ -z "$hex" ]]; then
  echo "check-idle-order: FAIL ${bin##*/} has no .text.idle section: was it linked with cross/idle-order.ld?" >&2
  exit 1
fi
size=$((16#$hex))
if ((size * 2 < profiled)); then
  echo "check-idle-order: FAIL ${bin##*/} has $size bytes of idle-path code, under half of the $profiled the profile found: run cross/idle-order.py again" >&2
  exit 1
fi
echo "check-idle-order: ok ${bin##*/} has $size bytes of idle-path code together (profiled: $profiled)"
