#!/bin/sh
# Writes extent-a.bin and extent-b.bin: the same 4 KiB ext4 extent tree leaf
# block (metadata_csum) before and after one more hole is punched in its
# file. The leaf ends with a seeded CRC32C of the 4092 bytes before it, so
# both versions have the same whole-block CRC32C (issue 13). No mount and no
# root needed: debugfs edits the image file.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
img=$tmp/fs.img

truncate -s 16M "$img"
mkfs.ext4 -q -F -b 4096 -O metadata_csum -U 6c646d69-7272-6f72-2d74-657374646174 "$img"
head -c 262144 /dev/zero | tr '\0' x >"$tmp/src"
# 64 blocks with holes at 1, 3, ..., 9: six extents, more than the inode's
# four, so the tree gets a leaf block.
debugfs -w -f - "$img" >/dev/null 2>&1 <<CMDS
write $tmp/src frag
punch frag 1 1
punch frag 3 3
punch frag 5 5
punch frag 7 7
punch frag 9 9
CMDS

leaf() { debugfs -R "dump_extents -n frag" "$img" 2>/dev/null | awk '$1 == "0/" { print $(NF-1) }'; }
a=$(leaf)
if [ -z "$a" ]; then
	echo "frag has no extent leaf block" >&2
	exit 1
fi
dd if="$img" of=extent-a.bin bs=4096 skip="$a" count=1 status=none

debugfs -w -R "punch frag 11 11" "$img" >/dev/null 2>&1
b=$(leaf)
if [ "$a" != "$b" ]; then
	echo "the leaf moved from block $a to $b" >&2
	exit 1
fi
dd if="$img" of=extent-b.bin bs=4096 skip="$b" count=1 status=none
if ! out=$(e2fsck -fn "$img" 2>&1); then
	echo "$out" >&2
	exit 1
fi
echo "leaf block $a: extent-a.bin, extent-b.bin"
