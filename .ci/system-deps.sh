#!/usr/bin/env bash
# Install the system tools the tests need, with apt-get, when root and missing.
# Without root or apt-get it only reports; tests then skip (or fail under CI=true).
#
# The default cross toolchain (zig) is a Python wheel (ziglang, in the test and builder extras), not
# an apt package.  What stays here: the system toolchain the `--toolchain system` tests use (gcc,
# aarch64-linux-gnu-gcc, clang + ld64.lld), qemu-user for the kernel tests of every foreign
# architecture, and the target C libraries qemu runs dynamically linked test programs with.
set -euo pipefail
declare -A NEED=(
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [qemu-aarch64]=qemu-user
  [qemu-arm]=qemu-user
  [qemu-riscv64]=qemu-user
  [clang]=clang
  [llvm-objdump]=llvm
  [mosquitto]=mosquitto
  [chromium]=chromium  # the fleet console's browser test (tests/e2e/test_console_browser.py)
)
# Target glibc for qemu-user (-L SYSROOT): the dynamic loader of each architecture.
declare -A SYSROOT_FILES=(
  [/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1]=libc6-arm64-cross
  [/usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3]=libc6-armhf-cross
  [/usr/riscv64-linux-gnu/lib/ld-linux-riscv64-lp64d.so.1]=libc6-riscv64-cross
)
missing=()
for tool in "${!NEED[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${NEED[$tool]}")
done
for f in "${!SYSROOT_FILES[@]}"; do
  [ -e "$f" ] || missing+=("${SYSROOT_FILES[$f]}")
done
# the cross gcc's libc headers are only a recommendation of gcc-aarch64-linux-gnu
[ -f /usr/aarch64-linux-gnu/include/stdint.h ] || missing+=(libc6-dev-arm64-cross)
# lld ships ld64.lld as ld64.lld-<version> on Debian
if ! compgen -c | grep -q '^ld64\.lld'; then missing+=(lld); fi
# Debian keeps the PostgreSQL server binaries off PATH (/usr/lib/postgresql/<version>/bin); the
# fleet tests start a throwaway cluster from there (tests/support/postgres.py)
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
else
  echo "missing system packages (install with apt-get install ${missing[*]}); their tests will skip" >&2
fi
