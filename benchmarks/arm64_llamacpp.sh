#!/usr/bin/env bash
# benchmarks/arm64_llamacpp.sh [MODEL.gguf...]: lfm2q against llama.cpp on the emulated
# Raspberry Pi 5 (qemu-user -cpu cortex-a76) and Pi 4 (cortex-a72), same files, one thread each.
#
# A sanity check, not a speed figure: qemu translates every NEON instruction into host code,
# so absolute tokens/s say nothing about a board and even the ratio is only a hint (qemu's
# cost per instruction is not a Cortex-A76's). The cycle estimates that do stand for the
# board are benchmarks/mca_arm64.py's.
#
# llama.cpp is the source that llama-cpp-python (the host's `llamacpp` extra, same version)
# vendors, cross-compiled here with Debian's aarch64 g++ (static llama-bench, -O3, one build
# per CPU: armv8.2-a+dotprod+fp16 for the A76, armv8-a+crc for the A72, no repacking
# disabled), and run in the rootfs of tests/arm64 (setup.sh). Build once, into
# ~/.cache/lfm2q-arm64/llama.cpp-VERSION; ~10 min on 2 cores.
# Default models: the bench's 350M-shape Q4_0 and Q4_K_M files (benchmarks/bench_compare.py
# makes them). CPUS="cortex-a76" runs one CPU only. Output: one table per CPU, to stdout. BUILD_ONLY=1 stops after the builds; JOBS=N
# sets the build's parallelism.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
. "$src/tests/arm64/lib.sh"
PY=${PY:-$src/.venv/bin/python}
PP=${PP:-32}
TG=${TG:-16}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(~/.cache/lfm2q-bench/lfm2-350m-random-q4_0.gguf
                                   ~/.cache/lfm2q-bench/lfm2-350m-random-q4_k_m.gguf)
for m in "${models[@]}"; do [ -f "$m" ] || die "no model at $m: run make bench-compare (it builds them) or name a file"; done

ver=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))") \
  || die "no llama-cpp-python in $PY's environment: run make llamacpp first"
cache=$HOME/.cache/lfm2q-arm64/llama.cpp-$ver

build() {  # build CPU ARCHFLAGS: $cache/CPU/bin/llama-bench
  local cpu=$1 flags=$2 out=$cache/$1
  [ -x "$out/bin/llama-bench" ] && return 0
  command -v aarch64-linux-gnu-g++ >/dev/null || {
    say "installing the aarch64 cross compiler (g++-aarch64-linux-gnu)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu cmake >/dev/null; }
  if [ ! -d "$cache/src" ]; then
    say "fetching llama-cpp-python $ver's source (its vendored llama.cpp)"
    local tmp; tmp=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama_cpp_python==$ver"
    mkdir -p "$tmp/x" && tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp/x"
    mkdir -p "$cache" && mv "$tmp"/x/llama_cpp_python-*/vendor/llama.cpp "$cache/src.part" && mv "$cache/src.part" "$cache/src"
    rm -rf "$tmp"
  fi
  say "cross-compiling llama-bench for $cpu ($flags)"
  rm -rf "$out.build"
  cmake -S "$cache/src" -B "$out.build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux \
    -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc \
    -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DGGML_CPU_ARM_ARCH="$flags" -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_EXE_LINKER_FLAGS=-static >/dev/null
  cmake --build "$out.build" --target llama-bench -j "${JOBS:-$(nproc)}" >/dev/null
  mkdir -p "$out/bin" && cp "$out.build/bin/llama-bench" "$out/bin/llama-bench.part"
  mv "$out/bin/llama-bench.part" "$out/bin/llama-bench"
  rm -rf "$out.build"
}

read -r -a cpus <<< "${CPUS:-cortex-a76 cortex-a72}"
declare -A arch=([cortex-a76]=armv8.2-a+dotprod+fp16 [cortex-a72]=armv8-a+crc)
for cpu in "${cpus[@]}"; do build "$cpu" "${arch[$cpu]}"; done
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
bash "$src/tests/arm64/setup.sh"  # (re)copies this checkout into the rootfs

# the binaries and models go into the rootfs (its /tmp), lfm2q is the checkout setup.sh copied
mkdir -p "$ARM64_ROOT/tmp/bench"
for cpu in "${cpus[@]}"; do cp "$cache/$cpu/bin/llama-bench" "$ARM64_ROOT/tmp/bench/llama-bench-$cpu"; done
for m in "${models[@]}"; do cp -u "$m" "$ARM64_ROOT/tmp/bench/"; done

one_cpu() {  # one_cpu CPU: lfm2q bench and llama-bench on every model, one thread
  local cpu=$1 env="cd $SRC_IN && export XDG_CACHE_HOME=/root/.cache/cpu-$1 NUMBA_NUM_THREADS=1"
  for m in "${models[@]}"; do
    local f=/tmp/bench/$(basename "$m")
    echo "== $cpu $(basename "$m")"  # (the first bench compiles: prompts of $PP tokens take the prefill kernels)
    "$here/../tests/arm64/run.sh" --cpu "$cpu" -- "$env; lfm2q bench $f -p $PP -n 4 -r 1 -t 1 >/dev/null 2>&1; \
        lfm2q bench $f -p $PP -n $TG -r 1 -t 1"
    "$here/../tests/arm64/run.sh" --cpu "$cpu" -- "/tmp/bench/llama-bench-$cpu -m $f -p $PP -n $TG -r 1 -t 1"
  done
}

for cpu in "${cpus[@]}"; do one_cpu "$cpu" > "$ARM64_LOGS/bench-$cpu.log" 2>&1 & done
wait
for cpu in "${cpus[@]}"; do cat "$ARM64_LOGS/bench-$cpu.log"; done
