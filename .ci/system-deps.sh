#!/usr/bin/env bash
# Install the system tools the tests need, with apt-get, when root and missing.
# Without root or apt-get it only reports; tests then skip (or fail under CI=true).
set -euo pipefail
declare -A NEED=(
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [qemu-aarch64]=qemu-user
  [clang]=clang
  [llvm-objdump]=llvm
  [mosquitto]=mosquitto
)
missing=()
for tool in "${!NEED[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${NEED[$tool]}")
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
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
else
  echo "missing system packages (install with apt-get install ${missing[*]}); their tests will skip" >&2
fi
