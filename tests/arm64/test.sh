#!/usr/bin/env bash
# make test-arm64: lfm2q on an emulated Raspberry Pi 5 (cortex-a76: NEON + dotprod) and Pi 4
# (cortex-a72: NEON only), installed from binary wheels only:
#   1. `lfm2q info`, then the built-in model's greedy `generate` on each CPU: the same text as
#      this host's (x86) run, and `lfm2q run` fed a question on stdin;
#   2. the kernel tests against their NumPy / portable oracles on each CPU.
# The two CPUs run side by side (one core each). Logs: $ARM64_LOGS. Cold numba caches: the
# first compile under emulation takes minutes (see README, "aarch64").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
src=$(cd "$here/../.." && pwd)
lfm2q=${LFM2Q_HOST:-$src/.venv/bin/lfm2q}
[ -x "$lfm2q" ] || die "no host lfm2q at $lfm2q: run make install first"
t0=$SECONDS
bash "$here/setup.sh"

PROMPT="The meaning of"
want=$("$lfm2q" generate -p "$PROMPT" -n 16)
KERNEL_TESTS="tests/test_neon.py tests/test_cpu.py tests/test_isa_portable.py tests/test_intdot.py tests/test_kernels.py"

on_cpu() {  # on_cpu CPU: steps 1 and 2 on one emulated CPU; its log in $ARM64_LOGS/CPU.log
  local cpu=$1 log=$ARM64_LOGS/$1.log
  # numba's cache per CPU model, under lfm2q's own folder per source hash (numba_cache.py):
  # a cache left by another version of the sources is never reused
  local env="cd $SRC_IN && export XDG_CACHE_HOME=/root/.cache/cpu-$cpu NUMBA_NUM_THREADS=1"
  {
    echo "== $cpu: lfm2q info"
    "$here/run.sh" --cpu "$cpu" -- "$env; lfm2q info" || return 1
    echo "== $cpu: generate"
    local s=$SECONDS
    got=$("$here/run.sh" --cpu "$cpu" -- "$env; lfm2q generate -p '$PROMPT' -n 16") || return 1
    echo "$got"
    echo "(generate took $((SECONDS - s)) s)"
    [ "$got" = "$want" ] || { echo "FAIL: $cpu generated a different text than x86: [$got] vs [$want]"; return 1; }
    echo "== $cpu: run (REPL on stdin)"
    "$here/run.sh" --cpu "$cpu" -- "$env; printf 'What is the capital of France?\n/exit\n' | lfm2q run" || return 1
    echo "== $cpu: kernel tests"
    "$here/run.sh" --cpu "$cpu" -- "$env; python -m pytest -q -p no:cacheprovider \
        --timeout 3000 $KERNEL_TESTS" || return 1
  } > "$log" 2>&1
}

pids=()
for cpu in cortex-a76 cortex-a72; do on_cpu "$cpu" & pids+=($!); done
fail=0
for i in 0 1; do
  cpu=$([ $i = 0 ] && echo cortex-a76 || echo cortex-a72)
  if wait "${pids[$i]}"; then say "$cpu: passed"; else say "$cpu: FAILED"; fail=1; fi
  grep -E '^(==|cpu |kernel |\(generate|FAIL|[0-9]+ passed|.*(failed|error))' "$ARM64_LOGS/$cpu.log" | sed "s/^/  $cpu | /" >&2 || true
done
say "done in $((SECONDS - t0)) s"
[ $fail = 0 ] || { tail -n 40 "$ARM64_LOGS"/cortex-a7*.log >&2; exit 1; }
echo "2 passed, 0 failed"  # the two emulated CPUs
