#!/bin/bash
# The AVX-512 VNNI panel GEMM on a host that runs it (none of the project's machines does; the
# device machines' host CPUs do): builds the library from this checkout with gcc (the flags of the
# system build), checks every ternary GEMM of the avx512 variant bit-exact against the ref variant
# (random, k % 4 tails, partial panels, the int extremes; 1 and 4 threads) and times the 2B layer's
# linears at m = 128 against the avx2 variant and, with a second native/ tree as $1, that tree's avx512.
#   bash benchmarks/avx512_panel/run.sh [OTHER_NATIVE_DIR]     (writes ${OUT:-.}/avx512-panel-check.txt)
set -e
cd "$(dirname "$0")/../.."
W=$(mktemp -d)
grep -o 'avx512_vnni\|avx512bw' /proc/cpuinfo | sort | uniq -c
grep -m1 "model name" /proc/cpuinfo
gcc --version | head -1
build() {
    local R=$1 O=$2 objs=""
    local F="-std=c11 -O3 -fPIC -fvisibility=hidden -ffp-contract=off -fno-strict-aliasing -Wall -Wextra -march=x86-64 -mtune=generic -I$R/include -I$R/src -pthread"
    mkdir -p "$O"
    for s in api cpu pool kernels_ref conv decoder; do gcc $F -c "$R/src/$s.c" -o "$O/$s.o"; objs="$objs $O/$s.o"; done
    gcc $F -mavx2 -mfma -c "$R/src/arch/x86/avx2.c" -o "$O/avx2.o"
    gcc $F -mavx512f -mavx512bw -mavx512vl -mavx512vnni -c "$R/src/arch/x86/avx512.c" -o "$O/avx512.o"
    gcc -shared -pthread -o "$O/libbitnet_edge.so" $objs "$O/avx2.o" "$O/avx512.o" -lm
}
build native "$W/cur"
OTHER="$W/cur/libbitnet_edge.so"
if [ -n "$1" ]; then build "$1" "$W/other"; OTHER="$W/other/libbitnet_edge.so"; fi
gcc -O2 -Inative/include benchmarks/avx512_panel/check.c -L"$W/cur" -lbitnet_edge -Wl,-rpath,"$W/cur" -ldl -o "$W/check"
"$W/check" "$W/cur/libbitnet_edge.so" "$OTHER" | tee "${OUT:-.}/avx512-panel-check.txt"
