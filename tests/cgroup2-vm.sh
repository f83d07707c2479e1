#!/usr/bin/env bash
# The docker engine on a pure cgroup v2 host (issue 3), run by tests/run.sh after tests/edge.sh. This machine
# is cgroup v1, so a qemu guest boots Debian's kernel with an initramfs built here: busybox-static, the static
# x86_64 edge build of cod, the modules it needs, and tests/cgroup2-vm/init, which mounts cgroup2 at
# /sys/fs/cgroup with cpu, memory and pids delegated and starts `cod serve --compute`. KVM when /dev/kvm
# opens and the guest reaches its init on it within 30 s (on some nested hosts KVM answers but a guest never
# leaves real mode), else TCG. On the host: a real orchestrator (the debug build) and Debian's docker-registry
# on loopback with a busybox image. Container jobs go to the orchestrator and run in the guest:
#   echo; --memory is memory.max, and /proc/self/cgroup is `0::/` (its own cgroup namespace); --cpu 0.5 is
#   cpu.max; a memory bomb fails as out of memory (memory.events); a fork bomb stops at pids.max
#   (Compute.Docker.PidsLimit 64); the node killed with its helpers (a command on the guest's second serial
#   port) leaves a running container, which its start-up sweep removes; and last, a job that mounts the
#   node's cgroup root (a `local` input) sees no container cgroup but its own.
# Network: qemu user networking with restrict=on, so the guest reaches nothing but the two guestfwd ports
# (10.0.2.100:1235 the orchestrator's libp2p port, 10.0.2.100:5000 the registry, both on host loopback), and
# it has no default route. About 45 s under TCG once the edge build exists.
# Usage: tests/cgroup2-vm.sh. Honours CARGO_TARGET_DIR (default ./target), COD_VM_MEMORY (MiB, default 1024)
# and COD_VM_ACCEL=tcg (no KVM probe).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

passed=0 failed=0
step() { printf '\n=== cgroup2-vm: %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
start=$SECONDS
timing() { printf '(%ss so far)\n' $((SECONDS - start)); }

need=()
for pkg in qemu-system-x86 busybox-static docker-registry skopeo umoci socat cpio kmod jq curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d /tmp/cod-cgroup2-vm.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Polls `$@` until it succeeds, for at most $1 seconds; no fixed sleeps stand in for a condition.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# === the guest's kernel: Debian's, unpacked (not installed) into the target dir once ===
step "kernel and binaries"
kcache="$CARGO_TARGET_DIR/cgroup2-vm"
mkdir -p "$kcache"
kpkg="$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
[[ -n "$kpkg" ]] || { apt-get update -qq; kpkg="$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"; }
kroot="$kcache/$kpkg"
if [[ ! -d "$kroot/boot" ]]; then
  (cd "$kcache" && rm -f "$kpkg"_*.deb &&
    { apt-get download -q "$kpkg" 2>/dev/null || { apt-get update -qq && apt-get download -q "$kpkg" 2>/dev/null; }; })
  # Only the kernel and the module directories the guest loads from (86 MiB of the package's 400).
  rm -rf "$kroot.tmp" && mkdir -p "$kroot.tmp"
  dpkg-deb --fsys-tarfile "$kcache/$kpkg"_*.deb | tar -x -C "$kroot.tmp" --wildcards './boot/vmlinuz-*' \
    './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/net/*' \
    './lib/modules/*/kernel/net/core/*' './lib/modules/*/kernel/fs/overlayfs/*' \
    './lib/modules/*/kernel/drivers/char/hw_random/*'
  mv "$kroot.tmp" "$kroot"
  rm -f "$kcache/$kpkg"_*.deb
fi
kver="${kpkg#linux-image-}"
vmlinuz="$kroot/boot/vmlinuz-$kver"
[[ -f "$vmlinuz" ]] && ok "kernel $kver" || { fail "no kernel at $vmlinuz"; exit 1; }

# COD_HOST_BIN: a host build of cod to use. tests/run.sh passes the one its e2e suite just tested (`cargo
# build` would compile the crate again: cargo test built it under the test profile, 100 s in CI). Unset, this
# builds one.
if [[ -n "${COD_HOST_BIN:-}" ]]; then
  host_cod="$COD_HOST_BIN"
else
  cargo build --locked -q --bin cod
  host_cod="$CARGO_TARGET_DIR/debug/cod"
fi
edge="$(bash cross/build.sh x86_64-unknown-linux-musl --edge | tail -n1)"
ok "edge build: $edge"
timing

# === the registry, with a busybox image ===
step "registry and image"
mkdir -p "$work/registry/storage"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $work/registry/storage
http:
  addr: 127.0.0.1:0
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
registry_port() { sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/registry/log" 2>/dev/null | head -n1; }
registry_bound() { [[ -n "$(registry_port)" ]]; }
wait_for 30 registry_bound || { fail "registry did not start: $(cat "$work/registry/log")"; exit 1; }
reg_port="$(registry_port)"
layout="$work/image"
umoci init --layout "$layout"
umoci new --image "$layout:t"
umoci unpack --image "$layout:t" "$work/bundle"
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs"/{bin,etc,root,tmp}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do [[ "$applet" == busybox ]] || ln -s busybox "$rootfs/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
umoci repack --image "$layout:t" "$work/bundle"
umoci config --image "$layout:t" --config.env PATH=/bin --config.cmd /bin/sh --config.workingdir /
printf '{"default":[{"type":"insecureAcceptAnything"}]}' >"$work/policy.json"
skopeo --policy "$work/policy.json" copy -q --dest-tls-verify=false "oci:$layout:t" \
  "docker://127.0.0.1:$reg_port/cgroup2/busybox:1"
ok "busybox image pushed to 127.0.0.1:$reg_port"
# What the guest calls the registry: the guestfwd address below.
image="10.0.2.100:5000/cgroup2/busybox:1"

# === the orchestrator ===
step "orchestrator"
"$host_cod" serve --orchestrator --data-dir "$work/orch" --api-host 127.0.0.1 --api-port 0 \
  --publisher-port 0 --listen /ip4/127.0.0.1/tcp/0 --ready-file "$work/orch.json" >"$work/orch.log" 2>&1 &
pids+=($!)
wait_for 60 test -s "$work/orch.json" || { fail "orchestrator not ready: $(cat "$work/orch.log")"; exit 1; }
api="http://$(jq -r .api "$work/orch.json")"
p2p="$(jq -r '.p2p[0]' "$work/orch.json")"
p2p_port="$(sed -n 's|^/ip4/127\.0\.0\.1/tcp/\([0-9]*\).*|\1|p' <<<"$p2p")"
peer="$(sed -n 's|.*/p2p/\(.*\)$|\1|p' <<<"$p2p")"
[[ -n "$p2p_port" ]] || { fail "no loopback libp2p address in $(cat "$work/orch.json")"; exit 1; }
orch_for_guest="/ip4/10.0.2.100/tcp/1235${peer:+/p2p/$peer}"
ok "orchestrator on $api, libp2p $p2p"

# === the initramfs ===
step "initramfs"
ir="$work/initramfs"
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,etc/cod-vm,var/lib/cod,lib/modules,root}
chmod 1777 "$ir/tmp"
cp /bin/busybox "$ir/bin/busybox"
for applet in $(/bin/busybox --list); do [[ "$applet" == busybox ]] || ln -s busybox "$ir/bin/$applet"; done
cp "$edge" "$ir/bin/cod"
cp tests/cgroup2-vm/init "$ir/init"
chmod 755 "$ir/init"
mknod -m 600 "$ir/dev/console" c 5 1
mknod -m 666 "$ir/dev/null" c 1 3
# The node builds its HTTPS clients from the system's roots, as on any device.
mkdir -p "$ir/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$ir/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ir/etc/passwd"
printf 'root:x:0:\n' >"$ir/etc/group"
# The modules and their dependencies (modinfo), each loaded after what it depends on.
mods="$kroot/lib/modules/$kver"
loaded=()
add_module() {
  local name="$1" file dep
  for dep in "${loaded[@]}"; do [[ "$dep" == "$name" ]] && return; done
  file="$(find "$mods/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)"
  [[ -n "$file" ]] || { fail "module $name not in $mods"; return; }
  for dep in $(modinfo -F depends "$file" | tr ',' ' '); do add_module "$dep"; done
  loaded+=("$name")
  cp "$file" "$ir/lib/modules/"
  echo "${file##*/}" >>"$ir/etc/cod-vm/modules"
}
: >"$ir/etc/cod-vm/modules"
for m in virtio_pci virtio_net virtio_rng overlay; do add_module "$m"; done
printf 'ORCHESTRATOR=%s\nHOST_API_PORT=%s\n' "$orch_for_guest" "${api##*:}" >"$ir/etc/cod-vm/env"
cat >"$ir/etc/cod-vm/node.yaml" <<'EOF'
Compute:
  Docker:
    # The registry is not on the guest's loopback: plain HTTP has to be allowed by name.
    InsecureRegistries: ["10.0.2.100:5000"]
    # Small, so the fork bomb is cheap in a small guest.
    PidsLimit: 64
EOF
(cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initramfs.gz"
ok "initramfs: $(du -h "$work/initramfs.gz" | cut -f1), modules: $(tr '\n' ' ' <"$ir/etc/cod-vm/modules")"

# === the guest ===
step "guest"
serial="$work/serial.log"
# The guest's second serial port takes commands (tests/cgroup2-vm/init): qemu reads ctl.in, writes ctl.out.
mkfifo "$work/ctl.in" "$work/ctl.out"
fwd() { printf 'guestfwd=tcp:10.0.2.100:%s-cmd:socat STDIO TCP:127.0.0.1:%s' "$1" "$2"; }
qemu_pid=""
boot() { # ACCEL-ARGS...
  : >"$serial"
  qemu-system-x86_64 "$@" -nodefaults -no-user-config -display none -no-reboot \
    -m "${COD_VM_MEMORY:-1024}" -smp 2 \
    -kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 rdinit=/init panic=-1 loglevel=5" \
    -serial "file:$serial" -serial "pipe:$work/ctl" \
    -netdev "user,id=n0,restrict=on,$(fwd 1235 "$p2p_port"),$(fwd 5000 "$reg_port")" \
    -device virtio-net-pci,netdev=n0 -device virtio-rng-pci >"$work/qemu.log" 2>&1 &
  qemu_pid=$!
  pids+=($qemu_pid)
  echo "qemu $*: pid $qemu_pid, serial log $serial"
}
guest_alive() { kill -0 "$qemu_pid" 2>/dev/null; }
# True once LINE-REGEX is in the serial log; fails the wait (through `exit` of the subshell) if qemu died.
# The serial console ends lines with CR LF.
serial_text() { tr -d '\r' <"$serial" 2>/dev/null; }
line_in_serial() { serial_text | grep -q "$1" || { guest_alive || { echo "qemu exited: $(cat "$work/qemu.log")"; exit 1; }; false; }; }
# KVM where /dev/kvm opens and a kernel actually runs on it: on some nested hosts it opens and answers, but
# a guest never leaves the real-mode set-up code ("Probing EDD ... ok" and nothing more). Then plain TCG.
# COD_VM_ACCEL=tcg skips the probe.
accel=tcg
if [[ "${COD_VM_ACCEL:-auto}" != tcg ]] && (exec 3<>/dev/kvm) 2>/dev/null; then
  boot -enable-kvm
  if (wait_for 30 line_in_serial '^cod-vm: '); then
    accel=kvm
  else
    echo "KVM opened but the guest did not reach its init within 30 s: using TCG"
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
fi
[[ "$accel" == kvm ]] || boot -accel tcg
boot_start=$SECONDS
boot_limit=60
[[ "$accel" == kvm ]] || boot_limit=300
if (wait_for "$boot_limit" line_in_serial '^cod-vm: starting cod'); then
  ok "guest booted with $accel in $((SECONDS - boot_start)) s"
else
  fail "guest did not boot; serial log:"
  serial_text
  cat "$work/qemu.log"
  exit 1
fi
grep -q '^cod-vm: cgroup mount \[cgroup2 /sys/fs/cgroup cgroup2 .*\] subtree_control=\[cpu memory pids\]$' <(serial_text) &&
  ok "cgroup2 at /sys/fs/cgroup with cpu, memory and pids delegated" ||
  fail "cgroup v2 set-up: $(grep '^cod-vm: cgroup' <(serial_text))"
grep -q '^cod-vm: routes \[10.0.2.0/24 dev eth0 scope link  src 10.0.2.15 ;\]$' <(serial_text) &&
  ok "the guest has only the slirp subnet route" || fail "guest routes: $(grep '^cod-vm: routes' <(serial_text))"
grep -q '^cod-vm: probe: host API port unreachable through 10.0.2.2$' <(serial_text) &&
  ok "restrict=on: the guest cannot reach the host's other loopback ports" ||
  fail "network isolation: $(grep '^cod-vm: probe' <(serial_text))"

node_connected() {
  curl -sf "$api/api/v1/orchestrator/nodes" |
    jq -e '[.Nodes[] | select(.Connection == "CONNECTED")] | length > 0' >/dev/null ||
    { guest_alive || exit 1; false; }
}
if (wait_for "$boot_limit" node_connected); then
  ok "the guest's compute node connected to the orchestrator"
else
  fail "the guest's node did not connect; serial log:"
  serial_text
  exit 1
fi
timing

# === jobs ===
step "container jobs on cgroup v2"
# submit SCRIPT [TASK-JSON-MERGED-IN]: a docker batch job running `sh -c SCRIPT`; prints the job id.
submit() {
  local job extra="${2:-}"
  [[ -n "$extra" ]] || extra='{}'
  job="$(jq -n --arg image "$image" --arg script "$1" --argjson extra "$extra" '{
    Type: "batch", Count: 1,
    Tasks: [({Name: "main",
      Engine: {Type: "docker", Params: {Image: $image, Entrypoint: ["/bin/sh", "-c"], Parameters: [$script]}},
      Publisher: {Type: "noop"},
      Timeouts: {ExecutionTimeout: 120}} * $extra)]}')"
  curl -sf -X PUT "$api/api/v1/orchestrator/jobs" -H 'content-type: application/json' \
    --data-binary "$(jq -n --argjson job "$job" '{Job: $job}')" | jq -r .JobID
}
# finished ID: the job body once it is Completed, Failed or Stopped (into $work/ID.json).
finished() {
  curl -sf "$api/api/v1/orchestrator/jobs/$1?include=executions,history" >"$work/$1.json" &&
    jq -e '.Job.State.StateType | IN("Completed", "Failed", "Stopped")' "$work/$1.json" >/dev/null ||
    { guest_alive || exit 1; false; }
}
# ended_on_node ID: every execution of the job has ended as its node reports it (Completed, Failed or
# Cancelled: 9, 10, 11), which the node does once the container and its cgroup are gone. A stopped job is
# Stopped at once in the orchestrator's view, before its node has torn anything down.
ended_on_node() {
  curl -sf "$api/api/v1/orchestrator/jobs/$1?include=executions" |
    jq -e '[.Executions.Items[].ComputeState.StateType] | all(. == 9 or . == 10 or . == 11)' >/dev/null ||
    { guest_alive || exit 1; false; }
}
# result ID: waits for the job, then prints STATE, STDOUT (on one line) and the failure messages, separated
# by US (0x1f): a tab is whitespace to `read`, which would merge an empty field into the next.
result() {
  if ! (wait_for 180 finished "$1"); then
    printf 'Timeout\x1f\x1f%s' "$(jq -c . "$work/$1.json" 2>/dev/null)"
    return
  fi
  jq -j '[.Job.State.StateType,
    (.Executions.Items[0].RunOutput.Stdout // "" | gsub("\n"; " ") | rtrimstr(" ")),
    ([.Job.State.Message, (.Executions.Items[].ComputeState.Message)] | map(select(. != null and . != "")) | join(" / "))]
    | join("\u001f")' "$work/$1.json"
}
expect() { # NAME RESULT STATE STDOUT-REGEX [MESSAGE-REGEX]
  local name="$1" got="$2" state out msg
  IFS=$'\x1f' read -r state out msg <<<"$got" || true
  if [[ "$state" == "$3" && "$out" =~ $4 && "$msg" =~ ${5:-} ]]; then
    ok "$name ($state: ${out:-no output}${msg:+; $msg})"
  else
    fail "$name: expected $3 with stdout ~ /$4/${5:+ and message ~ /$5/}, got $state, stdout '$out', message '$msg'"
  fi
}

echo_job="$(submit 'echo hello from cgroup v2')"
# In its own cgroup namespace (v2, as Docker): its cgroup is the root of what it sees.
mem_job="$(submit 'cat /sys/fs/cgroup/memory.max /proc/self/cgroup' '{"Resources": {"Memory": "64Mb"}}')"
cpu_job="$(submit 'cat /sys/fs/cgroup/cpu.max' '{"Resources": {"CPU": "0.5"}}')"
bomb_job="$(submit 'dd if=/dev/zero of=/dev/null bs=256M count=1' '{"Resources": {"Memory": "64Mb"}}')"
# Counts with shell builtins only: at the limit even `ls` cannot start.
forks_job="$(submit 'cat /sys/fs/cgroup/pids.max; (i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#' \
  '{"Resources": {"Memory": "256Mb"}}')"
expect "echo" "$(result "$echo_job")" Completed '^hello from cgroup v2$'
expect "--memory 64Mb is memory.max in the container's own cgroup namespace" "$(result "$mem_job")" Completed \
  '^64000000 0::/$'
expect "--cpu 0.5 is the container's cpu.max" "$(result "$cpu_job")" Completed '^50000 100000$'
expect "a memory bomb fails as out of memory" "$(result "$bomb_job")" Failed '' 'ran out of memory \(limit 64000000 bytes\)'
got="$(result "$forks_job")"
expect "a fork bomb stops at pids.max (64)" "$got" Completed '^64 [0-9]+$'
count="$(cut -d $'\x1f' -f2 <<<"$got" | cut -d' ' -f2)"
[[ -n "$count" ]] && ((count <= 64 && count >= 40)) && ok "$count processes under pids.max 64" ||
  fail "process count under pids.max 64: '$count'"
timing

# The sweep, on v2: a node killed with its helpers leaves a running container and its cgroup; the node
# started again on the same data dir must remove both before it is ready.
step "a killed node's container is swept when it starts again"
long_job="$(submit 'sleep 600')"
# Bounded: opening the FIFO would block for ever if qemu (its reader) were gone.
timeout 10 bash -c 'echo crash >"$1"' _ "$work/ctl.in" || fail "cannot send the guest its crash command"
if (wait_for 180 line_in_serial '^cod-vm: after restart:'); then
  long_exec="$(curl -sf "$api/api/v1/orchestrator/jobs/$long_job?include=executions" |
    jq -r '.Executions.Items[0].ID' | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]/-/g')"
  crash="$(grep '^cod-vm: after crash:' <(serial_text))"
  after="$(grep '^cod-vm: after restart:' <(serial_text))"
  [[ "$crash" =~ /$long_exec\ \]\ alive\ \[[0-9]+ ]] &&
    ok "after the kill, the container's cgroup and processes are left ($long_exec)" ||
    fail "the kill left no running container $long_exec: $crash"
  grep -q "removed containers left by a previous run containers=1$" <(serial_text) &&
    ok "the restarted node's sweep removed one container" || fail "the restarted node reported no sweep"
  [[ "$after" == "cod-vm: after restart: alive []" ]] &&
    ok "the sweep killed its processes" || fail "left after the restart: $after"
else
  fail "the crash and restart did not finish; serial log:"
  serial_text | grep -v '^\[' | tail -n 30
fi
curl -sf -X DELETE "$api/api/v1/orchestrator/jobs/$long_job" >/dev/null || true
(wait_for 120 finished "$long_job") || fail "job $long_job did not stop"
(wait_for 120 ended_on_node "$long_job") || fail "the node did not report job $long_job's execution ended"
timing

# After every job: the node's cgroup root holds the last job's own cgroup and nothing else.
step "no container cgroup left behind"
check_job="$(submit 'cd /cgroups && for d in */*/; do echo "$d"; done' \
  '{"InputSources": [{"Target": "/cgroups", "Source": {"Type": "local", "Params": {"SourcePath": "/sys/fs/cgroup/cod"}}}]}')"
got="$(result "$check_job")"
# The container (and cgroup) name is the execution id, lower-case, other characters as '-'.
own="$(jq -r '.Executions.Items[0].ID' "$work/$check_job.json" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]/-/g')"
expect "only the checking job's cgroup is under the node's cgroup root" "$got" Completed "^[^ ]+/$own/\$"

timing
if ((failed)); then
  echo "----- guest serial log -----"
  serial_text
fi
printf '\n%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
