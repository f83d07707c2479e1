#!/usr/bin/env bash
# Builds a stripped `cod` release binary for one target and prints its path as the last line.
#
#   cross/build.sh TARGET [--edge] [--qemu] [--features LIST]
#   cross/build.sh --board NAME [--edge] [--qemu]      # triple and CPU flags from targets/NAME/cargo.toml
#   cross/build.sh --gpu [TARGET]                      # glibc, dynamic (default x86_64-unknown-linux-gnu.2.28)
#
# TARGET: x86_64-unknown-linux-musl | aarch64-unknown-linux-musl | armv7-unknown-linux-musleabihf
#   --edge    the compute-only flavor (no orchestrator): compute, executor-wasm, executor-oci, storage-url,
#             storage-s3, ipfs
#   --qemu    adds the `lmdb-posix-sem` feature, so LMDB works under qemu-user (which lacks get_robust_list)
#   --gpu     the glibc flavor for GPU hosts: the default features plus `gpu` (NVML through nvml-wrapper), linked
#             dynamically against glibc 2.28, because NVML is dlopen()ed, which a static musl binary cannot do.
#             The static flavors leave `gpu` out; they still find GPUs through nvidia-smi, procfs or the Tegra
#             device tree.
#   --board   targets/NAME/cargo.toml is passed to cargo as `--config` (triple, target-cpu) and decides TARGET.
#
# Installs what it needs, idempotently: the rustup target; musl-tools (x86_64) or cargo-zigbuild + ziglang
# (aarch64, armv7, gnu.2.28); and a static libseccomp built for the target from Debian's source package, cached
# under $CARGO_TARGET_DIR/cross/. Honours CARGO_TARGET_DIR (default: ./target), so repeated builds are
# incremental. The result is copied to $CARGO_TARGET_DIR/dist/cod-<flavor>-<target> (both flavors share cargo's
# output path, so the copy keeps one from overwriting the other) and checked: a musl binary must have no
# program interpreter and no NEEDED entry, or the build fails.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

log() { printf 'cross/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

target="" flavor=full qemu=0 gpu=0 board="" extra_features=""
while (($#)); do
  case "$1" in
    --edge) flavor=edge ;;
    --qemu) qemu=1 ;;
    --gpu) gpu=1 ;;
    --board) board="${2:?--board needs a name}"; shift ;;
    --features) extra_features="${2:?--features needs a list}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$target" ]] || die "one TARGET only (got $target and $1)"; target="$1" ;;
  esac
  shift
done

config_args=()
if [[ -n "$board" ]]; then
  board_cfg="$repo/targets/$board/cargo.toml"
  [[ -f "$board_cfg" ]] || die "no board $board: expected $board_cfg (boards: $(ls "$repo/targets" | grep -v README | tr '\n' ' '))"
  board_target="$(sed -n 's/^target *= *"\(.*\)"/\1/p' "$board_cfg" | head -n1)"
  [[ -n "$board_target" ]] || die "$board_cfg has no [build] target"
  [[ -z "$target" || "$target" == "$board_target" ]] || die "--board $board builds $board_target, not $target"
  target="$board_target"
  config_args=(--config "$board_cfg")
fi
if ((gpu)); then
  target="${target:-x86_64-unknown-linux-gnu.2.28}"
  [[ "$target" == *-gnu* ]] || die "--gpu builds for glibc (a *-linux-gnu[.VERSION] target), not $target"
  [[ "$flavor" == full ]] || die "--gpu and --edge together: the GPU flavor is a full node for now"
  flavor=gpu
fi
[[ -n "$target" ]] || die "usage: cross/build.sh TARGET [--edge] [--qemu] [--board NAME] [--gpu] (see --help)"

# The triple rustup and cargo's output directory know (cargo-zigbuild takes a glibc version suffix).
triple="${target%%.[0-9]*}"
case "$triple" in
  x86_64-unknown-linux-musl) zig_triple=x86_64-linux-musl ;;
  aarch64-unknown-linux-musl) zig_triple=aarch64-linux-musl ;;
  armv7-unknown-linux-musleabihf) zig_triple=arm-linux-musleabihf ;;
  x86_64-unknown-linux-gnu) zig_triple="x86_64-linux-gnu${target#"$triple"}" ;;
  aarch64-unknown-linux-gnu) zig_triple="aarch64-linux-gnu${target#"$triple"}" ;;
  *) die "unsupported target $target (x86_64/aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf, or --gpu)" ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
cache="$CARGO_TARGET_DIR/cross"
mkdir -p "$cache"

# The edge flavor is built for size (Cargo.toml's `edge` profile, opt-level z: the 8 MiB budget), the others for
# speed (`release`, opt-level 2).
profile=release
[[ "$flavor" == edge ]] && profile=edge

features=()
case "$flavor" in
  edge) features=(compute executor-wasm executor-oci storage-url storage-s3 ipfs) ;;
  full) features=(orchestrator client compute executor-wasm executor-oci storage-url storage-s3 ipfs tls-self-signed) ;;
  gpu) features=(orchestrator client compute executor-wasm executor-oci storage-url storage-s3 ipfs tls-self-signed gpu) ;;
esac
# 32-bit ARM has no OCI executor: libcontainer 0.7 (youki) does not compile for 32-bit targets (tty.rs
# builds nix's `FsType`, a u32 there, from a u64 constant), so armv7 nodes run WASM jobs only.
if [[ "$target" == armv7-* ]]; then
  features=($(printf '%s\n' "${features[@]}" | grep -vx executor-oci))
  log "armv7: without executor-oci (libcontainer does not compile for 32-bit targets; cross/README.md)"
fi
((qemu)) && features+=(lmdb-posix-sem)
[[ -n "$extra_features" ]] && features+=(${extra_features//,/ })
feature_list="$(IFS=,; echo "${features[*]}")"

# === toolchain pieces (each one only when missing) ===

apt_missing=()
need_apt() { dpkg -s "$1" >/dev/null 2>&1 || apt_missing+=("$1"); }
need_apt make
need_apt gperf   # libseccomp's configure generates its syscall table with it
need_apt file
need_apt binutils   # readelf, for the static checks
need_apt xz-utils
[[ "$triple" == x86_64-unknown-linux-musl ]] && need_apt musl-tools
[[ "$triple" == x86_64-unknown-linux-musl ]] && need_apt linux-libc-dev
if ((${#apt_missing[@]})); then
  log "installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${apt_missing[@]}" >&2
fi

# The standard library. Static (musl) builds compile their own from rustup's `rust-src` with cargo's build-std,
# at the profile's opt-level; the edge flavor's also with std's `optimize_for_size` feature (smaller sorting,
# formatting and collection code): rustup's prebuilt std is compiled at opt-level 3, and fat LTO does not undo
# the inlining done before. On the x86_64 edge build that is 416,184 bytes (cross/README.md). build-std is a
# nightly cargo flag; RUSTC_BOOTSTRAP=1 lets this stable toolchain use it, for this one cargo invocation only.
# The prebuilt std is still installed where rustup has one: its self-contained musl start-up files are what the
# link uses.
# rustup answers 404 for armv7-unknown-linux-musleabihf's (cross/README.md), so that build links zig's.
build_std=0 prebuilt_std=1
[[ "$triple" == *-musl* ]] && build_std=1
if ! rustup target list --installed | grep -qx "$triple"; then
  log "rustup target add $triple"
  if ! rustup target add "$triple" >"$cache/rustup-target-add.log" 2>&1; then
    log "$(grep -m1 '^error' "$cache/rustup-target-add.log") (whole answer: $cache/rustup-target-add.log)"
    log "no prebuilt standard library for $triple: building it from rust-src (cargo -Zbuild-std)"
    build_std=1 prebuilt_std=0
  fi
fi
if ((build_std)); then
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >&2 ||
    die "rustup cannot install rust-src, from which the standard library for $triple is built"
fi

use_zig=1
[[ "$triple" == x86_64-unknown-linux-musl ]] && use_zig=0
if ((use_zig)); then
  python3 -m pip --version >/dev/null 2>&1 || {
    log "installing python3-pip (for ziglang)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq python3 python3-pip >&2
  }
  # ziglang on PyPI is the zig toolchain as a wheel; cargo-zigbuild finds it as `python3 -m ziglang`.
  python3 -m ziglang version >/dev/null 2>&1 || {
    log "pip install ziglang"
    python3 -m pip install -q --disable-pip-version-check ziglang >&2 ||
      python3 -m pip install -q --disable-pip-version-check --break-system-packages ziglang >&2
  }
  command -v cargo-zigbuild >/dev/null || {
    log "cargo install cargo-zigbuild"
    cargo install --locked -q cargo-zigbuild >&2
  }
fi

# === static libseccomp for the target ===
# libcontainer's `libseccomp` feature links libseccomp. Left to itself, libseccomp-sys finds the host's glibc
# libseccomp.so; a musl binary linked that way segfaults on first use (platform-notes, "libseccomp trap"). So we
# build Debian's libseccomp 2.5.4 as a static archive with the target's C compiler and point the crate at it.
seccomp_version=2.5.4
seccomp_lib="$cache/libseccomp-$seccomp_version/$zig_triple/lib"
build_libseccomp() {
  local src="$cache/libseccomp-$seccomp_version/source"
  if [[ ! -f "$src/libseccomp_$seccomp_version.orig.tar.gz" ]]; then
    log "fetching libseccomp's source package from Debian (apt-get source)"
    # A private apt state with one deb-src entry, so the machine's apt configuration stays as it is.
    local apt_dir="$cache/apt-src"
    mkdir -p "$apt_dir/lists/partial" "$src"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      >"$apt_dir/debian-src.sources"
    local apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir"
      -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq >&2
    (cd "$src" && apt-get "${apt_opts[@]}" source --download-only libseccomp >&2)
    ls "$src"/libseccomp_"$seccomp_version".orig.tar.gz >/dev/null ||
      die "apt-get source did not deliver libseccomp $seccomp_version"
  fi
  local work="$cache/libseccomp-$seccomp_version/$zig_triple/build"
  rm -rf "$work" && mkdir -p "$work"
  tar -xzf "$src/libseccomp_$seccomp_version.orig.tar.gz" -C "$work" --strip-components=1
  local cc host cflags="-Os -fPIC"
  if ((use_zig)); then
    # Wrappers, because configure wants CC/AR as single words. zig ships musl and kernel headers per target.
    local bin="$cache/zig-bin/$zig_triple"
    mkdir -p "$bin"
    printf '#!/bin/sh\nexec python3 -m ziglang cc -target %s "$@"\n' "$zig_triple" >"$bin/cc"
    printf '#!/bin/sh\nexec python3 -m ziglang ar "$@"\n' >"$bin/ar"
    printf '#!/bin/sh\nexec python3 -m ziglang ranlib "$@"\n' >"$bin/ranlib"
    chmod +x "$bin"/*
    cc="$bin/cc"
    export AR="$bin/ar" RANLIB="$bin/ranlib"
    host="${triple%%-*}-linux-${triple##*-linux-}"
    host="${host%%.*}"
  else
    # musl-gcc brings no kernel headers; libseccomp needs linux/ and asm/. Debian's are fine (uapi only).
    local kh="$cache/kernel-headers"
    mkdir -p "$kh"
    ln -sfn /usr/include/linux "$kh/linux"
    ln -sfn /usr/include/asm-generic "$kh/asm-generic"
    ln -sfn /usr/include/x86_64-linux-gnu/asm "$kh/asm"
    cc=musl-gcc
    cflags="$cflags -idirafter $kh"
    host=x86_64-linux-musl
  fi
  log "building static libseccomp $seccomp_version for $zig_triple"
  (cd "$work" &&
    ./configure --quiet --host="$host" --enable-static --disable-shared CC="$cc" CFLAGS="$cflags" >&2 &&
    make -s -C src -j"$(nproc)" >&2) || die "libseccomp did not build (log above)"
  mkdir -p "$seccomp_lib"
  cp "$work/src/.libs/libseccomp.a" "$seccomp_lib/"
  rm -rf "$work"
}
if [[ ",$feature_list," == *,executor-oci,* ]]; then
  [[ -f "$seccomp_lib/libseccomp.a" ]] || build_libseccomp
  export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$seccomp_lib"
fi

# === code generation and link settings (static musl builds) ===
# Passed as the target's rustflags, so host build scripts and proc macros keep theirs; cargo joins them with a
# board's own (targets/*/cargo.toml sets target-cpu the same way).
#   - no-unwind-tables.ld drops .eh_frame: panics abort, and a stripped binary's backtrace shows only addresses
#     (that file says why rustc's own switch cannot do it). Cost: a panic prints its message and location but
#     no frames.
#   - idle-order.ld puts the functions an idle, connected compute node runs (heartbeats, timers, the trim)
#     together at the start of the code, so the pages the kernel maps around each of their faults hold
#     idle-path code, not cold neighbours: the x86_64 edge node's idle RSS went from 5.8 to 3.5 MiB.
#     cross/idle-order.py writes it from a callgrind profile; its patterns match through hash changes, and a
#     stale entry matches nothing (cross/README.md, "Idle memory").
#   - x86_64 links static-pie (ASLR of the executable kept); packing its ~35,000 relative relocations as RELR
#     (binutils >= 2.38; the self-contained musl start-up code applies them) shrinks .rela.dyn from 0.8 MiB to
#     a few KiB. aarch64 and armv7 (zig) link classic static executables, which have no such relocations.
#   - no machine outliner on x86_64: it took 360,448 bytes off the edge build, but CPU-bound WASM jobs then ran
#     at half speed (README.md, "Size, memory and speed at the edge"; `cargo bench --bench edge` watches it).
#   - without rustup's prebuilt std (armv7) there are no self-contained musl start-up files, so the linker's
#     own are used (zig's musl, the same C library the prebuilt ones come from).
rustflags=()
if [[ "$triple" == *-musl* ]]; then
  # One script, because zig's linker driver passes only the last -T it is given. Its name carries a hash of
  # its text: cargo does not watch files named in link arguments, but it does rebuild when the flags change.
  script="$(cat "$repo/cross/no-unwind-tables.ld" "$repo/cross/idle-order.ld")"
  link_ld="$cache/link-$(printf '%s\n' "$script" | sha256sum | cut -c1-16).ld"
  [[ -f "$link_ld" ]] || printf '%s\n' "$script" >"$link_ld"
  rustflags+=("\"-C\", \"link-arg=-Wl,-T,$link_ld\"")
  [[ "$triple" == x86_64-* ]] && rustflags+=("\"-C\", \"link-arg=-Wl,-z,pack-relative-relocs\"")
  ((prebuilt_std)) || rustflags+=("\"-C\", \"link-self-contained=no\"")
  config_args+=(--config "target.$triple.rustflags=[$(IFS=,; echo "${rustflags[*]}")]")
fi

# === build ===

# Only the target's own settings: host build scripts and proc macros keep theirs.
cargo_cmd=(cargo build)
((use_zig)) && cargo_cmd=(cargo zigbuild)
if ((build_std)); then
  cargo_cmd=(env RUSTC_BOOTSTRAP=1 "${cargo_cmd[@]}" -Zbuild-std=std,panic_abort)
  [[ "$profile" == edge ]] && cargo_cmd+=(-Zbuild-std-features=optimize_for_size)
fi
log "building $flavor flavor for $target (features: $feature_list; profile $profile)"
"${cargo_cmd[@]}" --locked --profile "$profile" --target "$target" "${config_args[@]}" \
  --no-default-features --features "$feature_list" --bin cod >&2

built="$CARGO_TARGET_DIR/$triple/$profile/cod"
[[ -x "$built" ]] || die "cargo finished but $built is missing"
suffix=""
((qemu)) && suffix="-qemu"
[[ -n "$board" ]] && suffix="$suffix-$board"
mkdir -p "$CARGO_TARGET_DIR/dist"
out="$CARGO_TARGET_DIR/dist/cod-$flavor$suffix-$triple"
cp "$built" "$out.tmp" && mv "$out.tmp" "$out"

# === checks ===

if [[ "$triple" == *-musl* ]]; then
  if readelf -lW "$out" | grep -q 'INTERP'; then
    die "$out has a program interpreter: it is not static ($(file -b "$out"))"
  fi
  if readelf -dW "$out" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$out needs shared libraries: $(readelf -dW "$out" | grep NEEDED | tr -s ' ' | tr '\n' ';')"
  fi
fi
if readelf -SW "$out" | grep -q '\.symtab'; then
  die "$out is not stripped (the release and edge profiles set strip = true)"
fi
log "$(file -b "$out" | cut -d, -f1-2,4-), $(stat -c %s "$out") bytes"
echo "$out"
