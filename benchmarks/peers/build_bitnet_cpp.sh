#!/usr/bin/env bash
# Build bitnet.cpp (microsoft/BitNet, its llama.cpp fork) as a benchmark peer, and its i2_s model
# of the BitNet-b1.58-2B-4T shape with random ternary weights.
#
#   benchmarks/peers/build_bitnet_cpp.sh SOURCES [OUT]
#
# SOURCES holds the two fetched repositories, each a bare git directory (what a mirror or
# `git clone --bare` gives) or a plain checkout, found under any of these names:
#   SOURCES/microsoft+BitNet[/repo]  or  SOURCES/BitNet               (microsoft/BitNet)
#   SOURCES/ygqdan+BitNet-linux[/repo]  or  SOURCES/BitNet-linux      (ygqdan/BitNet-linux)
# (or name them directly: BITNET_SRC=... BITNET_LINUX_SRC=...).
# OUT (default $BITNET_EDGE_PEERS/bitnet.cpp, else ~/.cache/bitnet-edge/peers/bitnet.cpp) receives
# src/ (the assembled tree), build/ (llama-bench, llama-quantize), model-i2_s.gguf and peer.json,
# which benchmarks/decode.py reads.  Nothing is written into this repository.
#
# Why this assembly (see docs/adr/0020-cpu-decoder.md): BitNet pins a llama.cpp fork commit that
# cannot be fetched; ygqdan/BitNet-linux vendors the fork's files at the state BitNet 01eb415 pins, so
# BitNet 01eb415 is built with that tree as 3rdparty/llama.cpp.  Toolchain and flags follow BitNet's
# setup_env.py on x86 (clang, Release, -DBITNET_X86_TL2=OFF: the i2_s kernel), Debian clang-19 +
# libomp-19-dev.  The model is written as F16 by bitnet_cpp_model.py (beside this script) and turned
# into I2_S by the fork's own llama-quantize, as setup_env.py does; token_embd (the tied head) stays F16
# as in the official ggml-model-i2_s.gguf.
set -euo pipefail

BITNET_COMMIT=${BITNET_COMMIT:-01eb415}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

die() { echo "build_bitnet_cpp: $*" >&2; exit 1; }
say() { echo "build_bitnet_cpp: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 SOURCES [OUT]  (SOURCES holds microsoft+BitNet and ygqdan+BitNet-linux)"
SOURCES=$1
OUT=${2:-${BITNET_EDGE_PEERS:-$HOME/.cache/bitnet-edge/peers}/bitnet.cpp}

find_repo() {  # find_repo NAME...: the first existing candidate under SOURCES
    local n c
    for n in "$@"; do
        for c in "$SOURCES/$n/repo" "$SOURCES/$n"; do
            if [ -d "$c" ]; then echo "$c"; return 0; fi
        done
    done
    return 1
}
BITNET_SRC=${BITNET_SRC:-$(find_repo microsoft+BitNet BitNet || true)}
BITNET_LINUX_SRC=${BITNET_LINUX_SRC:-$(find_repo ygqdan+BitNet-linux BitNet-linux || true)}
[ -n "$BITNET_SRC" ] || die "microsoft/BitNet not found under $SOURCES (microsoft+BitNet/repo or BitNet)"
[ -n "$BITNET_LINUX_SRC" ] || die "ygqdan/BitNet-linux not found under $SOURCES (ygqdan+BitNet-linux/repo or BitNet-linux)"

gitdir() {  # the git directory of a bare repository or a checkout
    if [ -f "$1/HEAD" ] && [ -d "$1/objects" ]; then echo "$1"; elif [ -d "$1/.git" ]; then echo "$1/.git"; else
        die "$1 is not a git repository"; fi
}

# ---- toolchain --------------------------------------------------------------------------------
need=()
command -v clang-19 >/dev/null || need+=(clang-19)
command -v cmake >/dev/null || need+=(cmake)
ls /usr/lib/llvm-19/lib/libomp.so >/dev/null 2>&1 || need+=(libomp-19-dev)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    else
        die "missing ${need[*]}; install with: sudo apt-get install ${need[*]}"
    fi
fi
"$PY" -c "import numpy" 2>/dev/null || die "$PY needs numpy (set PYTHON=...)"

# ---- sources ----------------------------------------------------------------------------------
# Extract a tree file by file, skipping blobs the copy lacks (a mirror may hold the tree without
# its largest binaries: vocab GGUFs under models/, images; none is needed to build).
extract() {  # extract GITDIR REV PATHSPEC DEST
    local gd=$1 rev=$2 spec=$3 dest=$4 mode type sha path skipped=0
    while IFS= read -r -d '' line; do
        read -r mode type sha <<<"${line%%$'\t'*}"
        path=${line#*$'\t'}
        [ "$type" = blob ] || continue
        if ! git --git-dir="$gd" cat-file -e "$sha" 2>/dev/null; then skipped=$((skipped + 1)); continue; fi
        mkdir -p "$dest/$(dirname "$path")"
        if [ "$mode" = 120000 ]; then
            ln -sfn "$(git --git-dir="$gd" cat-file blob "$sha")" "$dest/$path"
        else
            git --git-dir="$gd" cat-file blob "$sha" >"$dest/$path"
            [ "$mode" = 100755 ] && chmod +x "$dest/$path"
        fi
    done < <(git --git-dir="$gd" ls-tree -r -z "$rev" -- $spec)
    [ $skipped -eq 0 ] || say "skipped $skipped file(s) absent from $gd (not needed to build)"
}

BG=$(gitdir "$BITNET_SRC")
LG=$(gitdir "$BITNET_LINUX_SRC")
bitnet_sha=$(git --git-dir="$BG" rev-parse --verify "$BITNET_COMMIT^{commit}") || die "$BITNET_COMMIT not in $BITNET_SRC"
linux_sha=$(git --git-dir="$LG" rev-parse --verify "HEAD^{commit}")
SRC=$OUT/src
stamp="$bitnet_sha $linux_sha"
if [ "$(cat "$SRC/.bne-sources" 2>/dev/null || true)" != "$stamp" ]; then
    say "assembling sources: BitNet $bitnet_sha + BitNet-linux $linux_sha:3rdparty/llama.cpp"
    rm -rf "$SRC" && mkdir -p "$SRC"
    git --git-dir="$BG" archive "$bitnet_sha" | tar -x -C "$SRC"
    rm -rf "$SRC/3rdparty/llama.cpp"
    extract "$LG" "$linux_sha" 3rdparty/llama.cpp "$SRC"
    [ -f "$SRC/3rdparty/llama.cpp/CMakeLists.txt" ] || die "no 3rdparty/llama.cpp in $BITNET_LINUX_SRC"
    # 01eb415's i2_s kernel drops a const that clang refuses (BitNet's later commits fix exactly this line;
    # the file is otherwise identical to BitNet's HEAD).
    sed -i 's/^\(\s*\)int8_t \* y_col = y + col \* by;/\1const int8_t * y_col = y + col * by;/' "$SRC/src/ggml-bitnet-mad.cpp"
    echo "$stamp" >"$SRC/.bne-sources"
fi

# The vendored tree lacks common/cmake/build-info-gen-cpp.cmake (its build-info.cpp generator):
# write one that fills common/build-info.cpp.in with this build's identity.
gen=$SRC/3rdparty/llama.cpp/common/cmake/build-info-gen-cpp.cmake
if [ ! -f "$gen" ]; then
    mkdir -p "$(dirname "$gen")"
    cat >"$gen" <<EOF
# written by bitnet-edge benchmarks/peers/build_bitnet_cpp.sh (run with cmake -P from the llama.cpp root)
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "bitnet-${bitnet_sha:0:7}+linux-${linux_sha:0:7}")
set(BUILD_COMPILER "\${CMAKE_C_COMPILER_ID} \${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "x86_64-linux")
configure_file(common/build-info.cpp.in common/build-info.cpp.tmp @ONLY)
execute_process(COMMAND \${CMAKE_COMMAND} -E copy_if_different common/build-info.cpp.tmp common/build-info.cpp)
EOF
fi

# setup_env.py runs the TL2 codegen before configuring (the build includes its header even for i2_s);
# these are the arguments it uses for BitNet-b1.58-2B-4T on x86.
if [ ! -f "$SRC/include/bitnet-lut-kernels.h" ]; then
    (cd "$SRC" && "$PY" utils/codegen_tl2.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 96,96,96 \
        --bm 32,32,32 >/dev/null)
fi

# ---- build ------------------------------------------------------------------------------------
BUILD=$OUT/build
if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-quantize" ] || [ "$SRC/.bne-sources" -nt "$BUILD/bin/llama-bench" ]; then
    say "configuring and building llama-bench llama-quantize ($JOBS jobs)"
    cmake -S "$SRC" -B "$BUILD" -DBITNET_X86_TL2=OFF -DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19 \
        -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log" >&2; die "configure failed ($OUT/configure.log)"; }
    cmake --build "$BUILD" --target llama-bench llama-quantize -j "$JOBS" >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log" >&2; die "build failed ($OUT/build.log)"; }
fi

# ---- model ------------------------------------------------------------------------------------
MODEL=$OUT/model-i2_s.gguf
if [ ! -f "$MODEL" ]; then
    say "writing the random 2B-4T-shaped F16 model"
    # the gguf package of $PY (pip gguf), else the fork's gguf-py (which also needs sentencepiece)
    gpath=""
    "$PY" -c "import gguf" 2>/dev/null || gpath="$SRC/3rdparty/llama.cpp/gguf-py"
    PYTHONPATH="$gpath${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$HERE/bitnet_cpp_model.py" --out "$OUT/model-f16.gguf"
    say "quantizing to I2_S with the fork's llama-quantize"
    "$BUILD/bin/llama-quantize" "$OUT/model-f16.gguf" "$MODEL.tmp" I2_S 1 >"$OUT/quantize.log" 2>&1 \
        || { tail -30 "$OUT/quantize.log" >&2; die "quantize failed ($OUT/quantize.log)"; }
    mv "$MODEL.tmp" "$MODEL"
    rm -f "$OUT/model-f16.gguf"
fi

cat >"$OUT/peer.json" <<EOF
{
  "engine": "bitnet.cpp i2_s",
  "llama_bench": "$BUILD/bin/llama-bench",
  "llama_quantize": "$BUILD/bin/llama-quantize",
  "model": "$MODEL",
  "model_bytes": $(stat -c %s "$MODEL"),
  "bitnet_commit": "$bitnet_sha",
  "llama_cpp_tree": "ygqdan/BitNet-linux@$linux_sha:3rdparty/llama.cpp",
  "compiler": "$(clang-19 --version | head -1)",
  "cmake_flags": "-DBITNET_X86_TL2=OFF -DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19 -DCMAKE_BUILD_TYPE=Release"
}
EOF
say "done: $OUT/peer.json"
echo "$OUT/peer.json"
