#!/usr/bin/env bash
# Fuzz the notification parser and the config/profile parser, each for a bounded time
# (FUZZ_SECONDS, default 60), starting from the committed seed corpus in fuzz/corpus/.
#
# Needs a nightly toolchain (never installed by this script). With cargo-fuzz it uses
# `cargo fuzz run`; with nightly but without cargo-fuzz it builds the same libFuzzer
# binaries with cargo directly (coverage instrumentation, no AddressSanitizer: the crate
# forbids unsafe code). Without nightly it says it skipped and exits 0.
#
# New inputs go to fuzz/target/corpus-work/<target> (not committed); crashes go to
# fuzz/artifacts/<target>/ and make the script exit 1. Each crash must become a
# regression test (tests/it/fuzz_regressions.rs) before the fix is merged.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS=(notification config)
# A target folder of its own: a nightly, instrumented build must not thrash the shared one.
export CARGO_TARGET_DIR="$PWD/fuzz/target"

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: SKIPPED — no nightly toolchain (rustup toolchain list shows none); the fuzz targets were not run"
  exit 0
fi

# libfuzzer-sys compiles libFuzzer (C++) in its build script.
if ! command -v c++ >/dev/null; then
  echo "fuzz: SKIPPED — nightly is installed but no C++ compiler (c++) to build libFuzzer"
  exit 0
fi

status=0
for t in "${TARGETS[@]}"; do
  work="fuzz/target/corpus-work/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== fuzz $t for ${SECONDS_EACH}s"
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    (cd fuzz && cargo +nightly fuzz run "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -artifact_prefix="artifacts/$t/" -print_final_stats=1) \
      >"fuzz/target/$t.log" 2>&1 || status=1
  else
    echo "   (cargo-fuzz not installed: building the libFuzzer binary with cargo +nightly)"
    host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
      cargo +nightly build --quiet --release --manifest-path fuzz/Cargo.toml --target "$host" --bin "$t"
    "fuzz/target/$host/release/$t" "$work" "fuzz/corpus/$t" \
      -max_total_time="$SECONDS_EACH" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
      >"fuzz/target/$t.log" 2>&1 || status=1
  fi
  # libFuzzer prints a line per new unit; keep CI's log to the summary (full log in fuzz/target).
  grep -E '^(Done|stat::|==[0-9]+== ERROR|SUMMARY)' "fuzz/target/$t.log" || tail -n 20 "fuzz/target/$t.log"
done
if [ "$status" -ne 0 ]; then
  echo "fuzz: FOUND A CRASH — see fuzz/artifacts/; add it to tests/it/fuzz_regressions.rs"
fi
exit "$status"
