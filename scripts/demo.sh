#!/usr/bin/env bash
# Sets everything up, builds a small demo store with mkfs.erofs and mounts it.
# Usage: scripts/demo.sh [STORE_DIR] [MOUNTPOINT]   (defaults: /tmp/imagefs-demo/{store,mnt})
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
STORE=${1:-/tmp/imagefs-demo/store}
MNT=${2:-/tmp/imagefs-demo/mnt}
BIN="$PWD/target/release/imagefs"

if mountpoint -q "$MNT" 2>/dev/null; then "$BIN" umount "$MNT" || umount -l "$MNT"; fi
rm -rf "$STORE"; mkdir -p "$STORE/content" "$MNT"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# image NAME: a tiny tree, made into rootfs.erofs reproducibly; prints its digest hex.
image() {
  local name=$1 src="$work/$1"
  mkdir -p "$src/etc" "$src/bin"
  echo "$name" > "$src/etc/hostname"
  printf 'NAME="%s demo"\n' "$name" > "$src/etc/os-release"
  ln -sf /bin/busybox "$src/bin/sh"
  mkfs.erofs --quiet -zlz4 -T0 -U 00000000-0000-0000-0000-000000000000 --all-root "$work/$name.erofs" "$src"
  local hex; hex=$(sha256sum "$work/$name.erofs" | cut -c1-64)
  mkdir -p "$STORE/content/$hex"
  mv "$work/$name.erofs" "$STORE/content/$hex/rootfs.erofs"
  cat > "$STORE/content/$hex/metadata.json" <<JSON
{"name":"docker.io/library/$name","digest":"sha256:$hex","status":"ready","size_bytes":$(stat -c %s "$STORE/content/$hex/rootfs.erofs"),"entrypoint":["/bin/sh"],"cmd":[],"env":{},"working_dir":"/","created_at":"2026-01-01T00:00:00Z"}
JSON
  echo "$hex"
}
tag() { # tag REPO TAG HEX
  local dir="$STORE/repositories/$1" up="../"
  mkdir -p "$dir"
  for _ in $(echo "$1" | tr '/' ' '); do up="../$up"; done
  ln -s "${up}content/$3" "$dir/$2"
}
a=$(image alpine); b=$(image debian)
tag docker.io/library/alpine latest "$a"
tag docker.io/library/alpine 3.20 "$a"
tag docker.io/library/debian bookworm "$b"

"$BIN" mount --store "$STORE" "$MNT" --log-file "$(dirname "$STORE")/imagefs.log"
echo
echo "imagefs: $STORE is mounted on $MNT"
echo "  ls -l $MNT/tags/docker.io/library/alpine"
ls -l "$MNT/tags/docker.io/library/alpine"
echo "  try: ln -s $MNT/tags/docker.io/library/alpine/latest $MNT/tags/docker.io/library/alpine/stable"
echo "       rm $MNT/tags/docker.io/library/debian/bookworm   # last tag: the image leaves $STORE/content at once"
echo "  unmount: $BIN umount $MNT"
