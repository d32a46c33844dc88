#!/usr/bin/env bash
# Build (once) the emulated Debian arm64 rootfs and install this checkout into its venv from
# binary wheels only, as a Raspberry Pi user would. Reruns reuse the rootfs and only reinstall
# lfm2q (~3 min); a fresh machine takes ~10 min on 2 cores. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
src=$(cd "$here/../.." && pwd)
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
mkdir -p "$ARM64_LOGS"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing qemu-user-static and debootstrap (Debian packages)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap >/dev/null
fi
binfmt_on

if [ ! -f "$ARM64_ROOT/.stage2-done" ]; then
  . /etc/os-release
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q >/dev/null
  mirror=$(apt-get indextargets --format '$(TARGET_OF) $(RELEASE) $(REPO_URI)' |
           awk -v s="$VERSION_CODENAME" '$1 == "deb" && $2 == s {print $3; exit}')
  [ -n "$mirror" ] || die "apt has no 'deb' source for $VERSION_CODENAME to debootstrap from"
  # an interrupted second stage cannot be resumed: start again
  if [ -e "$ARM64_ROOT" ] && [ ! -x "$ARM64_ROOT/debootstrap/debootstrap" -o -f "$ARM64_ROOT/.stage2-started" ]; then
    for m in dev sys proc; do umount -R "$ARM64_ROOT/$m" 2>/dev/null || umount -l "$ARM64_ROOT/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ARM64_ROOT"
  fi
  if [ ! -x "$ARM64_ROOT/debootstrap/debootstrap" ]; then
    mkdir -p "$ARM64_ROOT"
    say "debootstrap arm64 $VERSION_CODENAME (first stage)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$VERSION_CODENAME" "$ARM64_ROOT" "$mirror" > "$ARM64_LOGS/debootstrap-1.log" 2>&1 ||
      die "debootstrap failed: $ARM64_LOGS/debootstrap-1.log"
  fi
  cp "$QEMU" "$ARM64_ROOT/usr/bin/"
  say "debootstrap second stage, under qemu (~5 min)"
  touch "$ARM64_ROOT/.stage2-started"
  chroot "$ARM64_ROOT" /debootstrap/debootstrap --second-stage > "$ARM64_LOGS/debootstrap-2.log" 2>&1 ||
    die "debootstrap's second stage failed: $ARM64_LOGS/debootstrap-2.log"
  touch "$ARM64_ROOT/.stage2-done"; rm -f "$ARM64_ROOT/.stage2-started"
fi
cp "$QEMU" "$ARM64_ROOT/usr/bin/"
mounts_on
[ "$(in_root 'uname -m')" = aarch64 ] || die "the rootfs does not run as aarch64"
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && cp "$ca" "$ARM64_ROOT/etc/ssl/certs/host-ca-bundle.crt" && export PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-180}

say "copying $src (tracked and untracked, not ignored) to the rootfs"
rm -rf "$ARM64_ROOT$SRC_IN" "$ARM64_ROOT/src/dist"; mkdir -p "$ARM64_ROOT$SRC_IN"
git -C "$src" ls-files -z -co --exclude-standard | (cd "$src" && tar --null -T - -cf -) | tar -xf - -C "$ARM64_ROOT$SRC_IN"

[ -x "$ARM64_ROOT$VENV_IN/bin/python" ] || in_root "python3 -m venv $VENV_IN && pip install -q --only-binary=:all: --upgrade pip"
say "installing lfm2q and its dependencies, binary wheels only (no compiler)"
in_root "cd $SRC_IN && pip wheel -q --no-deps --only-binary=:all: -w /src/dist . &&
         pip install -q --only-binary=:all: /src/dist/lfm2q-*.whl 'pytest>=8' 'pytest-timeout>=2.3' 'hypothesis>=6.100' &&
         pip install -q --only-binary=:all: --force-reinstall --no-deps /src/dist/lfm2q-*.whl" \
  > "$ARM64_LOGS/pip.log" 2>&1 || die "wheels-only install failed (a dependency without an aarch64 wheel?): $ARM64_LOGS/pip.log"
in_root "pip list --format=freeze" > "$ARM64_LOGS/pip-freeze.txt"
say "rootfs ready: $ARM64_ROOT"
