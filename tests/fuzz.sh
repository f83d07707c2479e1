#!/usr/bin/env bash
# Fuzzes Cod's parsers of untrusted input: tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs what it needs idempotently (a nightly toolchain and cargo-fuzz), builds the targets in
# tests/fuzz, then runs each one for SECONDS_PER_TARGET (default 60) from its seed corpus. A crash, a slow
# input (over -timeout) or an input that needs more than -rss_limit_mb is a finding: the script prints the
# reproducer's path and fails. Turn each finding into a unit test next to the code it broke (see README,
# "Fuzzing"). Not part of tests/run.sh: nightly + cargo-fuzz take long to install, and the regression tests
# that come out of fuzzing run on stable with the other unit tests.
#
# Environment: CARGO_TARGET_DIR (default tests/fuzz/target) holds the fuzz build; FUZZ_ARGS adds libFuzzer
# flags. One fuzzing process per target, in the foreground (no -jobs/-workers): build machines are shared.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(job_spec wire car dagpb layer data_url)
seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 64; }

command -v rustup >/dev/null || { echo "rustup not found: install Rust with rustup first" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
# 0.13.2 is what this was written against; `--locked` keeps its dependencies to the ones it was released with.
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
if [[ $(id -u) != 0 ]]; then
  echo "the layer target unpacks as root does (ownership, whiteout devices, trusted.* xattrs); run as root" >&2
  exit 1
fi

# Seeds: the files under tests/fuzz/corpus/*/seed-* are checked in; regenerate them if missing.
if ! compgen -G 'tests/fuzz/corpus/layer/seed-*' >/dev/null; then
  (cd tests/fuzz && python3 seeds.py)
fi
if ! compgen -G 'tests/fuzz/corpus/wire/seed-*' >/dev/null; then
  cargo test --locked --lib --features fuzzing fuzzing::tests::write_wire_seeds -- --ignored
fi

target_dir=${CARGO_TARGET_DIR:-tests/fuzz/target}
# No sanitizer: the crate denies unsafe code, so ASan would only slow the search down. Debug assertions (the
# cargo-fuzz default) stay on, so an arithmetic overflow is a finding too. 16 codegen units build faster.
build=(cargo +nightly fuzz build --fuzz-dir tests/fuzz --target-dir "$target_dir" -s none --codegen-units 16)
for t in "${targets[@]}"; do "${build[@]}" "$t"; done

# Inputs larger than the seeds matter for tars and CAR files; the rest stay small to keep the search fast.
max_len() {
  case $1 in
    layer | data_url | car) echo 131072 ;;
    *) echo 16384 ;;
  esac
}

# A dictionary of the format's keywords, where one is checked in, helps the search past key names.
dict() {
  [[ -f tests/fuzz/dict/$1.dict ]] && echo "-dict=tests/fuzz/dict/$1.dict"
  return 0
}

failed=()
for t in "${targets[@]}"; do
  artifacts="tests/fuzz/artifacts/$t/"
  mkdir -p "$artifacts" "tests/fuzz/corpus/$t"
  echo "== $t: ${seconds}s"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if ! cargo +nightly fuzz run --fuzz-dir tests/fuzz --target-dir "$target_dir" -s none --codegen-units 16 \
    "$t" "tests/fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len="$(max_len "$t")" -artifact_prefix="$artifacts" -print_final_stats=1 $(dict "$t") ${FUZZ_ARGS:-} \
    2>&1 | tee "tests/fuzz/artifacts/$t.log" | grep -E '^(#[0-9]+ +DONE|stat::|==|SUMMARY|INFO: Running)|panicked|Test unit written|artifact_prefix|Slow unit|out-of-memory|timeout'; then
    :
  fi
  if grep -q 'Test unit written to' "tests/fuzz/artifacts/$t.log"; then
    failed+=("$t")
    grep -o 'Test unit written to .*' "tests/fuzz/artifacts/$t.log" | sed "s/^/$t: reproducer: /"
  fi
done

if ((${#failed[@]})); then
  echo "fuzzing found problems in: ${failed[*]} (reproduce: cargo +nightly fuzz run --fuzz-dir tests/fuzz -s none TARGET FILE)" >&2
  exit 1
fi
echo "fuzzing: no findings in ${targets[*]} (${seconds}s each)"
