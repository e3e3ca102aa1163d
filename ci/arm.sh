#!/usr/bin/env bash
# ARM gateways: cross-compile for aarch64 with Debian's toolchain, run the unit tests and the
# I/O integration tests under qemu-user, report the stripped release binary size, and check armv7 builds.
#
# Installs (apt): gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf
#                 libc6-dev-armhf-cross qemu-user     (rustup: the two targets)
#
# Tests that start a process of their own (the integration tests run the real `leap-edge`
# binary; a few unit tests re-run their own test binary) need the kernel to hand aarch64
# executables to qemu: the script registers qemu-aarch64 with binfmt_misc (root only; the
# registration stays until reboot). Set ARM_BINFMT=0 to leave binfmt_misc alone: then only
# the tests that start no process run (unit tests minus those named `spawned_*`), and the
# script says so.
#
# Environment: ARM_TARGET_DIR (default target/arm) keeps these builds apart from the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${ARM_TARGET_DIR:-$PWD/target/arm}"
A64=aarch64-unknown-linux-gnu
A32=armv7-unknown-linux-gnueabihf
A64_SYSROOT=/usr/aarch64-linux-gnu

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
         libc6-dev-armhf-cross qemu-user; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

step "rust targets"
rustup target add "$A64" "$A32"

# Let the kernel run aarch64 executables through qemu, so a test's child processes run too.
binfmt_ready() {
  local probe=$1
  QEMU_LD_PREFIX=$A64_SYSROOT "$probe" --version >/dev/null 2>&1
}
register_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  [[ -e $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir" || return 1
  [[ -e $dir/qemu-aarch64 ]] && return 0
  # Magic and mask of an aarch64 ELF executable (as in QEMU's qemu-binfmt-conf.sh).
  local magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  echo ":qemu-aarch64:M::$magic:$mask:$(command -v qemu-aarch64):F" >"$dir/register"
}

step "aarch64: build the tests"
cargo test --target "$A64" --no-run
probe="$CARGO_TARGET_DIR/$A64/debug/leap-edge"
full=0
if binfmt_ready "$probe"; then
  full=1
elif [[ ${ARM_BINFMT:-1} != 0 ]] && register_binfmt && binfmt_ready "$probe"; then
  echo "registered qemu-aarch64 with binfmt_misc"
  full=1
fi

step "aarch64: tests under qemu-user"
# QEMU_LD_PREFIX: where qemu finds the aarch64 loader and libc for the processes the tests
# start (the top-level test binary gets `-L` from the runner in .cargo/config.toml).
export QEMU_LD_PREFIX=$A64_SYSROOT
# Tests that are stress runs tuned for native speed (the crash soak) read this and skip:
# they run natively in the main test step; here the point is that the ARM build behaves.
export LEAP_EDGE_TEST_EMULATED=1
if ((full)); then
  # Every unit test, and the integration modules that exercise the ARM build's own I/O (the
  # HTTPS listener and SQLite, the admin socket and CLI, Modbus to the simulator, the chain
  # webhook → dispatch → control → simulator). The rest of the suite is timing-paced for
  # native speed (control periods of 500 ms, soaks, an 80 s simulated day) and runs natively
  # in the main test step; under qemu it would only measure the emulator.
  cargo test --target "$A64" --lib
  cargo test --target "$A64" --test it -- webhook:: admin:: device_sim:: control_chain:: \
    device_profiles:: fuzz_regressions::
else
  echo "SKIPPED: integration tests and spawned_* unit tests (no binfmt_misc for aarch64)"
  cargo test --target "$A64" --lib -- --skip spawned_
fi

step "aarch64: release build"
cargo build --release --target "$A64"
bin="$CARGO_TARGET_DIR/$A64/release/leap-edge"
file "$bin" 2>/dev/null || true
qemu-aarch64 -L "$A64_SYSROOT" "$bin" --version
printf 'aarch64 stripped release binary: %s bytes (%s)\n' \
  "$(stat -c %s "$bin")" "$(du -h "$bin" | cut -f1)"
printf 'needs glibc >= %s\n' "$(aarch64-linux-gnu-objdump -T "$bin" |
  grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)"

step "armv7: release build"
cargo build --release --target "$A32"
bin32="$CARGO_TARGET_DIR/$A32/release/leap-edge"
qemu-arm -L /usr/arm-linux-gnueabihf "$bin32" --version
printf 'armv7 stripped release binary: %s bytes (%s)\n' \
  "$(stat -c %s "$bin32")" "$(du -h "$bin32" | cut -f1)"

step "done"
if ((!full)); then echo "NOTE: partial aarch64 test run (see SKIPPED above)"; fi
