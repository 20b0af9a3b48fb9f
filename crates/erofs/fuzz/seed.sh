#!/usr/bin/env bash
# Seeds corpus/image/ with small images that mkfs.erofs makes of a small varied
# tree, one per layout the reader supports. Needs mkfs.erofs (root for the fifo).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src/dir/sub" corpus/image
printf 'hello\n' > "$src/small"
for i in $(seq 1 400); do echo "line $i of a compressible file"; done > "$src/dir/text"
head -c 9000 /dev/urandom > "$src/dir/random"
ln -s ../small "$src/dir/sub/link"
ln "$src/small" "$src/dir/hardlink"
mkfifo "$src/dir/fifo" 2>/dev/null || true
setfattr -n user.seed -v value "$src/small" 2>/dev/null || true
n=0
for args in "" "-zlz4" "-zlz4hc -Eztailpacking" "-zlz4 -Elegacy-compress" \
    "-zlz4hc -C16384" "--chunksize=4096" "-Eforce-inode-compact" \
    "-Eforce-inode-extended,noinline_data"; do
    # shellcheck disable=SC2086
    mkfs.erofs --quiet $args "corpus/image/seed$n.erofs" "$src"
    n=$((n + 1))
done
ls -l corpus/image
