# The emulated aarch64 Debian that `make test-arm64` runs lfm2q in (qemu-user + binfmt_misc +
# chroot): paths and helpers, sourced by setup.sh, run.sh and test.sh. Defines, runs nothing.
#
# LFM2Q_ARM64_CACHE  where the rootfs and logs live, reused by later runs
#                    (default ~/.cache/lfm2q-arm64; the rootfs is ~1 GB)
ARM64_CACHE=${LFM2Q_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lfm2q-arm64}
ARM64_ROOT=$ARM64_CACHE/root
ARM64_LOGS=$ARM64_CACHE/logs
VENV_IN=/opt/lfm2q-venv         # the rootfs's venv, as seen inside it
SRC_IN=/src/lfm2q               # the copy of this checkout, inside the rootfs
QEMU=/usr/bin/qemu-aarch64-static
BINFMT=/proc/sys/fs/binfmt_misc

say() { printf '[arm64 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# aarch64 ELF files run through qemu, inside the chroot too (the F flag opens qemu now).
binfmt_on() {
  [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
    die "binfmt_misc cannot be mounted at $BINFMT: this machine cannot run aarch64 programs via qemu-user"
  if [ ! -e "$BINFMT/qemu-aarch64" ]; then
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "$conf is missing: install qemu-user-static"
    grep -v '^#' "$conf" | head -n1 > "$BINFMT/register" || die "could not register qemu-aarch64"
  fi
  grep -q '^enabled' "$BINFMT/qemu-aarch64" || echo 1 > "$BINFMT/qemu-aarch64"
}

mounts_on() {
  mountpoint -q "$ARM64_ROOT/proc" || mount -t proc proc "$ARM64_ROOT/proc"
  mountpoint -q "$ARM64_ROOT/sys" || mount --rbind /sys "$ARM64_ROOT/sys"
  mountpoint -q "$ARM64_ROOT/dev" || mount --rbind /dev "$ARM64_ROOT/dev"
  cp -L /etc/resolv.conf "$ARM64_ROOT/etc/resolv.conf" 2>/dev/null || true
}

# in_root CMD: CMD (one shell line) in the rootfs, clean environment; QEMU_CPU and the
# variables named in ARM64_PASS go through.
in_root() {
  local envs=(HOME=/root LANG=C.UTF-8 TERM=dumb PATH="$VENV_IN/bin:/usr/sbin:/usr/bin:/sbin:/bin") v
  for v in QEMU_CPU PIP_CERT PIP_DEFAULT_TIMEOUT NUMBA_CACHE_DIR NUMBA_NUM_THREADS $ARM64_PASS; do
    [ -n "${!v+x}" ] && envs+=("$v=${!v}")
  done
  chroot "$ARM64_ROOT" /usr/bin/env -i "${envs[@]}" /bin/bash -c "$*"
}
ARM64_PASS=${ARM64_PASS:-}
