#!/usr/bin/env bash
# run.sh [--cpu MODEL] -- COMMAND...: one command in the emulated aarch64 rootfs (setup.sh
# first). --cpu is qemu's CPU model: cortex-a76 (Raspberry Pi 5: NEON + dotprod) or
# cortex-a72 (Pi 4: NEON, no dotprod). lfm2q reads the CPU's features from the hwcaps qemu
# gives the program (lfm2q/cpu.py), as on the board.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) export QEMU_CPU=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ -f "$ARM64_ROOT/.stage2-done" ] || die "no rootfs at $ARM64_ROOT: run tests/arm64/setup.sh first"
binfmt_on
mounts_on
in_root "$*"
