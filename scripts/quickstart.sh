#!/usr/bin/env bash
# Quickstart: two ldmirror hosts on 127.0.0.1 mirroring a 256 MiB volume.
# The primary's volume is attached through FUSE and a loop device, formatted
# ext4 and mounted; files are written and synced; then both backing files
# are compared. Run as root on Debian. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" = 0 ] || { echo "run as root: FUSE mounts and loop devices need it"; exit 1; }

need=()
for pkg in fuse3 e2fsprogs util-linux; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
modprobe fuse 2>/dev/null || true

work=$(mktemp -d /tmp/ldmirror-quickstart.XXXXXX)
bin="$work/ldmirror"
pids=()
dev=""
cleanup() {
  set +e
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  [ -n "$dev" ] && "$bin" detach "$dev" >/dev/null 2>&1
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out after ${limit}s waiting for $what"; exit 1
}

step "build ldmirror"
go build -o "$bin" ./cmd/ldmirror

step "create the volume on host a and its twin on host b"
id=$("$bin" init --dir "$work/a" --size 256MiB | tee /dev/stderr | grep -oE '[0-9a-f-]{36}')
"$bin" init --dir "$work/b" --size 256MiB --volume-uuid "$id"
head -c 32 /dev/urandom | base64 > "$work/secret"

step "start b (secondary) on 127.0.0.1:7789 and a (primary)"
"$bin" daemon --dir "$work/b" --role secondary --node-id b --listen 127.0.0.1:7789 --secret-file "$work/secret" 2>"$work/b.log" &
pids+=($!)
"$bin" daemon --dir "$work/a" --role primary --node-id a --peer 127.0.0.1:7789 --secret-file "$work/secret" 2>"$work/a.log" &
pids+=($!)
wait_for 10 "a to connect to b" sh -c "'$bin' status --json --dir '$work/a' | grep -q '\"link\": \"connected\"'"
"$bin" status --dir "$work/a"

step "attach a's export to a loop device, make ext4, mount"
dev=$("$bin" attach --dir "$work/a")
echo "attached $dev"
mkfs.ext4 -q "$dev"
mkdir -p "$work/mnt"
mount "$dev" "$work/mnt"

step "write 500 files and sync"
start=$(date +%s%N)
for i in $(seq 500); do head -c $((RANDOM * 4)) /dev/urandom > "$work/mnt/file$i"; done
sync
echo "wrote $(du -sh "$work/mnt" | cut -f1) in $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$bin" status --dir "$work/a"

step "unmount, detach, compare the two backing files"
umount "$work/mnt"
"$bin" detach "$dev"; dev=""
a_sum=$(sha256sum < "$work/a/volume.img" | cut -d' ' -f1)
b_sum=$(sha256sum < "$work/b/volume.img" | cut -d' ' -f1)
echo "a: $a_sum"
echo "b: $b_sum"
if [ "$a_sum" = "$b_sum" ]; then
  echo "identical: every block written on a is on b"
else
  echo "MISMATCH"; exit 1
fi
