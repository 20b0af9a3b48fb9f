#!/usr/bin/env bash
# Sets up a fresh Debian machine for imagefs: system packages, Python test deps, the build.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(fuse3 erofs-utils attr runc busybox-static squashfuse squashfs-tools util-linux python3-pytest strace
      libcap2-bin        # setcap: mount-tests/test_security.py
      e2fsprogs xfsprogs   # mkfs.ext4, mkfs.xfs: mount-tests/test_powercut.py
      zstd               # zstd layers: mount-tests/test_import.py
      umoci skopeo acl)  # images built by real tools (setfacl): mount-tests/test_import_tools.py, test_import_mtimes.py
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
# pytest for the machine's python3 (the Debian package serves /usr/bin/python3; pip covers
# a python3 from elsewhere, such as pyenv).
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install --quiet pytest
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing" >&2; exit 1; }
cargo build --release --locked 2>&1 | tail -n 2
# On PATH for mount(8) and fstab (mount.fuse3 looks in the system's directories).
$SUDO install -m 0755 target/release/imagefs /usr/local/bin/imagefs
