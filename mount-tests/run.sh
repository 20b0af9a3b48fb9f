#!/usr/bin/env bash
# Runs the imagefs mount tests against $IMAGEFS_BIN (default: target/debug/imagefs of this repo).
# Needs root, /dev/fuse, mkfs.erofs, fusermount3, setpriv; installs what is missing.
# Extra arguments go to pytest, e.g.: mount-tests/run.sh -m "not slow" -k symlink
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
cd "$here"
export IMAGEFS_TEST_TMP="$(mktemp -d /tmp/imagefs-mount-tests.XXXXXX)"
chmod 755 "$IMAGEFS_TEST_TMP"
status=0
python3 -m pytest -q "$@" || status=$?
# never leave a mount behind (only this run's: concurrent runs use their own directory)
{ grep -o " $IMAGEFS_TEST_TMP/[^ ]*" /proc/mounts || true; } | while read -r mp; do
  fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
done
grep -q " $IMAGEFS_TEST_TMP/" /proc/mounts || rm -rf "$IMAGEFS_TEST_TMP"
exit $status
