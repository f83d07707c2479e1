#!/usr/bin/env bash
# Edge delivery checks (issue 5), run by tests/run.sh after the Rust suites:
#   1. the generated completions and man page work (bash completes, zsh parses, man renders without warnings);
#   2. static edge builds for x86_64 and aarch64 musl: fully static (cross/build.sh checks) and within the
#      8 MiB budget (cross/check-size.sh), with the idle path's code laid out together (cross/check-idle-order.sh);
#   3. the aarch64 build runs a hybrid node under qemu-user that runs the committed hello.wasm end to end,
#      through the aarch64 CLI, and reports itself as arm64;
#   4. armv7 (32-bit, musl, its standard library built from rust-src): a static edge build within the budget,
#      run under qemu-user as a compute node of the aarch64 hybrid node, runs hello.wasm placed on it by an
#      `os_arch=arm` constraint. No OCI executor on armv7 (cross/README.md).
#   5. .deb packages for amd64, arm64 and armhf install into throw-away roots (dpkg --root, maintainer scripts
#      included), create the system user, and their units pass `systemd-analyze verify`.
# Usage: tests/edge.sh [--quick] (--quick: step 1 and the x86_64 build only).
# One CARGO_TARGET_DIR (default ./target, as cargo test) keeps repeated runs incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
quick=0
[[ "${1:-}" == --quick ]] && quick=1

passed=0 failed=0
step() { printf '\n=== edge: %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
start=$SECONDS
timing() { printf '(%ss so far)\n' $((SECONDS - start)); }

need=()
for pkg in qemu-user-static zsh man-db groff-base systemd dpkg file binutils jq; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# === 1. completions and man page, from the host debug build (the one cargo test built) ===
step "completions and man page"
# COD_HOST_BIN: a host build of cod to use. tests/run.sh passes the one its e2e suite just tested (`cargo
# build` would compile the crate again: cargo test built it under the test profile, 100 s in CI). Unset, this
# builds one.
if [[ -n "${COD_HOST_BIN:-}" ]]; then
  host_cod="$COD_HOST_BIN"
else
  cargo build --locked -q --bin cod
  host_cod="$CARGO_TARGET_DIR/debug/cod"
fi
"$host_cod" completions bash >"$work/cod.bash"
# Drive the completion function the way bash-completion does.
got="$(bash -c 'source "$1"; COMP_WORDS=(cod wasm r); COMP_CWORD=2; _cod; echo "${COMPREPLY[*]}"' _ "$work/cod.bash" || true)"
[[ "$got" == run ]] && ok "bash completes 'cod wasm r' to run" || fail "bash completed 'cod wasm r' to '$got'"
# Every command's word list is plain words: completing after each one prints no error.
errors="$(bash -c 'source "$1"; for c in "" job wasm docker node agent auth version serve completions man; do
  COMP_WORDS=(cod $c x); COMP_CWORD=${#COMP_WORDS[@]}; ((COMP_CWORD--)); _cod; done' _ "$work/cod.bash" 2>&1 >/dev/null || true)"
[[ -z "$errors" ]] && ok "bash completion runs cleanly for every command" || fail "bash completion errors: $errors"
got="$(bash -c 'source "$1"; COMP_WORDS=(cod serve --wasm); COMP_CWORD=2; _cod; echo "${COMPREPLY[*]}"' _ "$work/cod.bash" || true)"
[[ "$got" == --wasm-slots ]] && ok "bash completes serve flags" || fail "bash completed 'cod serve --wasm' to '$got'"
"$host_cod" completions zsh >"$work/_cod"
zsh -n "$work/_cod" && ok "zsh completion parses" || fail "zsh -n rejected the zsh completion"
"$host_cod" completions fish >"$work/cod.fish"
grep -q "complete -c cod" "$work/cod.fish" && ok "fish completion generated" || fail "no fish completion"
if "$host_cod" completions tcsh >/dev/null 2>"$work/err"; then fail "unknown shell accepted"; else
  grep -q "bash, zsh, fish" "$work/err" && ok "unknown shell rejected with the list" || fail "unclear error: $(cat "$work/err")"
fi
"$host_cod" man >"$work/cod.1"
warnings="$(MANWIDTH=100 man --warnings -l "$work/cod.1" 2>&1 >/dev/null || true)"
[[ -z "$warnings" ]] && ok "man page renders without warnings" || fail "man page warnings: $warnings"
MANWIDTH=100 man -l "$work/cod.1" 2>/dev/null | grep -q "cod wasm run" && ok "man page lists cod wasm run" ||
  fail "man page lacks cod wasm run"
timing

# === 2. static builds and the size budget ===
# The issue's budget is 8 MiB, for both: past it this fails (cross/README.md, "Size", says what keeps x86_64
# under it: std built for size, regex-lite for the dependencies' regex, the lite netlink-packet-route, and no
# client verbs in the edge flavor).
budget=8388608
step "x86_64 musl edge build and size"
x86="$(bash cross/build.sh x86_64-unknown-linux-musl --edge | tail -n1)"
ok "static x86_64 edge build: $x86"
bash cross/check-size.sh "$x86" "$budget" && ok "x86_64 edge within the 8 MiB budget" ||
  fail "x86_64 edge over the 8 MiB budget"
# The idle path's code laid out together (cross/idle-order.ld): stale patterns cost an idle node MiBs of RSS.
bash cross/check-idle-order.sh "$x86" && ok "x86_64 edge has its idle path together" ||
  fail "x86_64 edge's idle-path code is missing or short (cross/idle-order.py profiles it again)"
"$x86" version 2>/dev/null | grep -q "compute,executor-wasm" && ok "static x86_64 binary runs" || fail "static x86_64 binary does not run"
# The edge flavor has no client verbs; asking for one says so and where to run it (exit 64, EX_USAGE).
code=0
out="$("$x86" --api-port 1 job list 2>&1)" || code=$?
[[ $code == 64 && "$out" == *"is not in this build"* ]] && ok "the edge build says where to run \`cod job\`" ||
  fail "the edge build's answer to \`cod job list\` (exit $code): $out"
timing
if ((quick)); then
  printf '\n%d passed, %d failed\n' "$passed" "$failed"
  ((failed == 0))
  exit
fi

step "aarch64 musl edge build and size"
a64="$(bash cross/build.sh aarch64-unknown-linux-musl --edge | tail -n1)"
ok "static aarch64 edge build: $a64"
bash cross/check-size.sh "$a64" "$budget" && ok "aarch64 edge within the 8 MiB budget" || fail "aarch64 edge over the 8 MiB budget"
bash cross/check-idle-order.sh "$a64" && ok "aarch64 edge has its idle path together" ||
  fail "aarch64 edge's idle-path code is missing or short (cross/idle-order.py profiles it again)"
timing

# === 3. a hybrid node on aarch64 under qemu-user runs a WASM job ===
step "aarch64 hybrid node under qemu-user"
# The full flavor (a hybrid node needs the orchestrator) with LMDB on POSIX semaphores: qemu-user lacks
# get_robust_list, which LMDB's robust mutexes make musl call.
a64q="$(bash cross/build.sh aarch64-unknown-linux-musl --qemu | tail -n1)"
timing
qemu=(qemu-aarch64-static "$a64q")
# hello_job WHAT LOG [FLAGS...]: runs hello.wasm through the aarch64 CLI on the hybrid node ($port) with
# `wasm run` FLAGS; ok WHAT when its output comes back, else fails with the output and shows LOG, the log of
# the node that should have run it.
hello_job() {
  local what="$1" log="$2" out
  shift 2
  if out="$("${qemu[@]}" --api-port "$port" wasm run "$@" tests/e2e/fixtures/hello.wasm one two 2>&1)" &&
    grep -q "^hello one two$" <<<"$out"; then
    ok "$what"
  else
    fail "$what: no, the job said: $out"
    cat "$log"
  fi
}
"${qemu[@]}" serve --data-dir "$work/node" --api-host 127.0.0.1 --api-port 0 --publisher-port 0 \
  --listen /ip4/127.0.0.1/tcp/0 --ready-file "$work/ready.json" >"$work/node.log" 2>&1 &
pids+=($!)
# Bounded wait for the ready file, which the node writes once every listener is up.
for ((i = 0; i < 600; i++)); do
  [[ -s "$work/ready.json" ]] && break
  kill -0 "${pids[-1]}" 2>/dev/null || break
  sleep 0.1
done
port="$(sed -n 's/.*"api": *"[^"]*:\([0-9]*\)".*/\1/p' "$work/ready.json" 2>/dev/null || true)"
if [[ -z "$port" ]]; then
  fail "the aarch64 node did not become ready under qemu; its log:"
  cat "$work/node.log"
else
  ok "aarch64 hybrid node ready on port $port"
  hello_job "hello.wasm ran end to end on the aarch64 node (submitted by the aarch64 CLI)" "$work/node.log"
  "${qemu[@]}" --api-port "$port" agent node | grep -q "os_arch=arm64" && ok "the node reports os_arch=arm64" ||
    fail "the node under qemu does not report arm64"
fi
timing

# === 4. armv7: an edge compute node under qemu-user, placed by os_arch ===
step "armv7 musl edge build, and its node under qemu-user"
# The edge flavor with LMDB on POSIX semaphores (qemu-user, as above); the size budget is checked on it, which
# the semaphore switch changes by a few KiB (cross/README.md, armv7).
a32="$(bash cross/build.sh armv7-unknown-linux-musleabihf --edge --qemu | tail -n1)"
ok "static armv7 edge build: $a32"
bash cross/check-size.sh "$a32" "$budget" && ok "armv7 edge within the 8 MiB budget" || fail "armv7 edge over the 8 MiB budget"
bash cross/check-idle-order.sh "$a32" && ok "armv7 edge has its idle path together" ||
  fail "armv7 edge's idle-path code is missing or short (cross/idle-order.py profiles it again)"
timing
orch="$(jq -r '.p2p[0] // empty' "$work/ready.json" 2>/dev/null || true)"
if [[ -z "$port" || -z "$orch" ]]; then
  fail "no aarch64 hybrid node to join (see step 3)"
else
  qemu-arm-static "$a32" serve --compute --orchestrators "$orch" --data-dir "$work/arm-node" --api-host 127.0.0.1 \
    --api-port 0 --publisher-port 0 >"$work/arm-node.log" 2>&1 &
  pids+=($!)
  arm_pid=$!
  # Bounded wait for the hybrid node to list an arm node as connected (which the node's readiness precedes).
  joined=0
  for ((i = 0; i < 600; i++)); do
    if "${qemu[@]}" --api-port "$port" node list --output json 2>/dev/null |
      jq -e 'map(select(.Info.Labels.os_arch == "arm" and .Connection == "CONNECTED")) | length == 1' >/dev/null; then
      joined=1
      break
    fi
    kill -0 "$arm_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ((joined)); then
    ok "the armv7 node joined the aarch64 hybrid node as os_arch=arm"
    hello_job "hello.wasm ran on the armv7 node (placed by os_arch=arm)" "$work/arm-node.log" \
      --constraints os_arch=arm
  else
    fail "the armv7 node did not join; its log:"
    cat "$work/arm-node.log"
  fi
fi
timing

# === 5. packages ===
step ".deb packages"
check_deb() { # DEB ARCH UNITS...
  local deb="$1" arch="$2" root="$work/root-$2"
  shift 2
  mkdir -p "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/info" "$root/etc"
  touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
  # dpkg --root runs the maintainer scripts outside a chroot here (the throw-away root has no shell);
  # the scripts honour DPKG_ROOT for exactly this.
  if dpkg --root="$root" --force-script-chrootless --force-architecture --force-unsafe-io -i "$deb" >"$work/dpkg-$arch.log" 2>&1; then
    ok "$arch package installs (maintainer scripts ran)"
  else
    fail "$arch package did not install: $(cat "$work/dpkg-$arch.log")"
    return
  fi
  for f in usr/bin/cod etc/cod/node.yaml etc/default/cod usr/share/man/man1/cod.1.gz \
    usr/share/bash-completion/completions/cod usr/share/zsh/vendor-completions/_cod; do
    [[ -s "$root/$f" ]] || fail "$arch package lacks /$f"
  done
  grep -q '^cod:' "$root/etc/passwd" && ok "$arch postinst created the cod system user" || fail "$arch: no cod user"
  dpkg --root="$root" -s cod | grep -q "Status: install ok installed" && ok "$arch package registered" ||
    fail "$arch package not registered"
  # systemd-analyze needs systemd's own targets in the root to resolve the [Install] and After= lines.
  mkdir -p "$root/usr/lib/systemd"
  cp -a /lib/systemd/system "$root/usr/lib/systemd/"
  # verify exits 0 on unknown keys and unparsable values (it only warns), so any output is a failure too.
  if MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" "$@" >"$work/verify-$arch.log" 2>&1 &&
    [[ ! -s "$work/verify-$arch.log" ]]; then
    ok "$arch units pass systemd-analyze verify: $*"
  else
    fail "$arch units: $(cat "$work/verify-$arch.log")"
  fi
  for u in "$@"; do
    systemd-analyze security --offline=true --root="$root" "$u" 2>/dev/null | tail -n1
  done
}
deb="$(bash packaging/deb/build.sh "$x86" amd64 --edge --board x86-gateway | tail -n1)"
check_deb "$deb" amd64 cod-compute.service
grep -q "WasmSlots: 4" "$work/root-amd64/etc/cod/node.yaml" && ok "board defaults installed as /etc/cod/node.yaml" ||
  fail "board defaults missing"
deb="$(bash packaging/deb/build.sh "$a64q" arm64 | tail -n1)"
check_deb "$deb" arm64 cod-compute.service cod-orchestrator.service
deb="$(bash packaging/deb/build.sh "$a32" armhf --edge | tail -n1)"
check_deb "$deb" armhf cod-compute.service
timing

printf '\n%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
