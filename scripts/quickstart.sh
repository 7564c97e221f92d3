#!/usr/bin/env bash
# Quickstart: a directory server that survives the death of its host.
#
# Builds ldmirror and creates three "hosts" as network namespaces on this
# machine — data hosts a and b and a witness w — plus a client c, joined by
# a bridge. slapd (LMDB) runs on ext4 on a's mirrored volume; a few thousand
# entries are loaded; a is killed (kill -9 of ldmirror and slapd); b's agent
# takes over and serves every entry; a comes back, is resynced with only
# what differs, and `ldmirror swap` fails back. Prints a summary with
# timings. Run as root on Debian; cleans up after itself, even on failure.
set -euo pipefail
umask 077 # keys, the agent's configuration (root hooks, a password) and the logs: root's only
cd "$(dirname "$0")/.."
repo=$(pwd)
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" = 0 ] || { echo "run as root: namespaces, FUSE mounts and loop devices need it"; exit 1; }
entries=${ENTRIES:-3000}

need=()
for pkg in slapd ldap-utils fuse3 e2fsprogs util-linux iproute2; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
modprobe fuse 2>/dev/null || true
modprobe loop 2>/dev/null || true
command -v go >/dev/null || { echo "Go is not installed (expected in /usr/local/go/bin)"; exit 1; }

work=$(mktemp -d /tmp/ldmirror-quickstart.XXXXXX)
bin="$work/bin/ldmirror"
ns=ldmq$$
net=10.232.$(($$ % 200 + 20))
declare -A addr=([a]=$net.1 [b]=$net.2 [w]=$net.3 [c]=$net.4)
declare -A pid=()
ok=0
cleanup() {
  set +e
  for h in a b w; do [ -n "${pid[$h]:-}" ] && kill -TERM "${pid[$h]}" 2>/dev/null; done
  for h in a b; do
    [ -s "$work/$h/slapd.pid" ] && kill -9 "$(cat "$work/$h/slapd.pid")" 2>/dev/null
    mountpoint -q "$work/$h/mnt" && umount -l "$work/$h/mnt"
    for d in $(losetup -n -O NAME -j "$work/$h/export/volume" 2>/dev/null); do losetup -d "$d"; done
  done
  for h in a b w; do [ -n "${pid[$h]:-}" ] && wait "${pid[$h]}" 2>/dev/null; done
  for h in a b; do umount -l "$work/$h/export" 2>/dev/null; done
  for h in a b w c br; do ip netns del "$ns-$h" 2>/dev/null; done
  if [ $ok = 1 ]; then rm -rf "$work"; else echo "logs kept in $work (a.log, b.log, w.log)"; fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
now() { date +%s%3N; } # milliseconds
since() { local ms=$(($(now) - $1 + 50)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); } # seconds, 1 decimal
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out after ${limit}s waiting for $what"; exit 1
}
on() { local h=$1; shift; ip netns exec "$ns-$h" "$@"; }
count() { # count HOST: entries under ou=people, read from the client host
  on c ldapsearch -LLL -x -H "ldap://${addr[$1]}" -D cn=admin,dc=example,dc=com -w secret \
    -b ou=people,dc=example,dc=com -s one -E pr=1000/noprompt '(objectClass=inetOrgPerson)' 1.1 2>/dev/null | grep -c '^dn:'
}
has() { [ "$(count "$1")" = "$2" ]; }

step "build ldmirror"
mkdir -p "$work/bin"
go build -o "$bin" ./cmd/ldmirror

step "three hosts and a client as network namespaces on bridge $ns-br ($net.0/24)"
ip netns add "$ns-br"
on br ip link add br0 type bridge
on br ip link set br0 up
for h in a b w c; do
  ip netns add "$ns-$h"
  ip link add name eth0 netns "$ns-$h" type veth peer name "v$h" netns "$ns-br"
  on "$h" ip addr add "${addr[$h]}/24" dev eth0
  on "$h" ip link set eth0 up
  on "$h" ip link set lo up
  on br ip link set "v$h" master br0 up
  echo "  $h: ${addr[$h]}"
done

step "certificates: a CA for the pair and a key pair per host (ldmirror pki)"
"$bin" pki init --dir "$work/pki"
for h in a b; do "$bin" pki issue --dir "$work/pki" "$h"; done
"$bin" pki issue --dir "$work/pki" --witness w
# Each host gets the CA certificate and its own pair, nothing else: the CA
# key stays in $work/pki, and w holds no key that opens the data link.
for h in a b w; do
  install -d -m 700 "$work/tls-$h"
  install -m 600 "$work/pki/ca.crt" "$work/pki/$h.crt" "$work/pki/$h.key" "$work/tls-$h/"
done
step "one resource file, r0.toml, copied to the configuration directory of a, b and w"
# The agent's hooks run on either data host: LDMIRROR_NODE (set by the
# agent) picks the host's own paths; SLAPD_URLS ldap:/// is the host's
# address in its namespace.
paths='LDM_MOUNT=$WORK/$LDMIRROR_NODE/mnt SLAPD_CONF=$WORK/$LDMIRROR_NODE/slapd.conf SLAPD_PID=$WORK/$LDMIRROR_NODE/slapd.pid'
hook() { printf '[[agent.%s]]\nname = "%s"\ncommand = "WORK=%s %s SLAPD_URLS=ldap:/// LDMIRROR=%s sh %s %s"\ntimeout = "30s"\n' \
  "$1" "$2" "$work" "$paths" "$bin" "$repo/scripts/hooks/slapd.sh" "$2"; }
{
  cat <<EOF
# r0: the quickstart's volume, its two data hosts and the witness.
mode = "sync"
timeout = "1s"
raft_timeout = "300ms"

[volume]
uuid = "$(cat /proc/sys/kernel/random/uuid)"
size = "256MiB"
EOF
  for h in a b; do
    cat <<EOF

[[host]]
id = "$h"
dir = "$work/$h"
link = "${addr[$h]}:7789"
cluster = "${addr[$h]}:7400"
ldap = "ldap://${addr[$h]}"
tls_dir = "$work/tls-$h"
EOF
  done
  cat <<EOF

[witness]
id = "w"
cluster = "${addr[w]}:7400"
dir = "$work/w"
tls_dir = "$work/tls-w"

# The agents probe the peer's slapd every 1 s and fail over after 3
# failures.
[agent]
bind_dn = "cn=admin,dc=example,dc=com"
password = "secret"
canary_dn = "cn=canary,dc=example,dc=com"
interval = "1s"
timeout = "500ms"
threshold = 3
min_swap_interval = "10s"
failback = "manual"
EOF
  for s in attach mount start; do printf '\n'; hook promote "$s"; done
  for s in stop umount detach; do printf '\n'; hook demote "$s"; done
} >"$work/r0.toml"
for h in a b w; do install -d -m 700 "$work/etc-$h" && install -m 600 "$work/r0.toml" "$work/etc-$h/"; done
# ldm HOST ARGS: ldmirror as HOST runs it (on a real host its node ID is
# its hostname, and its configuration directory /etc/ldmirror).
ldm() { local h=$1; shift; LDMIRROR_NODE_ID=$h "$bin" --config-dir "$work/etc-$h" "$@"; }
ldm a config check r0 >"$work/config-check.txt" && head -n1 "$work/config-check.txt"

step "volumes: 256 MiB on a and its twin on b (ldmirror init r0), ext4 with an LMDB directory"
ldm a init r0
ldm b init r0 >/dev/null
for h in a b; do
  cat >"$work/$h/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $work/$h/slapd.pid
argsfile $work/$h/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
sizelimit unlimited
database mdb
maxsize 268435456
suffix "dc=example,dc=com"
rootdn "cn=admin,dc=example,dc=com"
rootpw secret
directory $work/$h/mnt/ldap
index objectClass,uid eq
EOF
done
mkfs.ext4 -q -F "$work/a/volume.img"
mkdir -p "$work/a/mnt"
mount -o loop "$work/a/volume.img" "$work/a/mnt"
mkdir "$work/a/mnt/ldap"
slapadd -q -f "$work/a/slapd.conf" <<EOF
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: cn=canary,dc=example,dc=com
objectClass: organizationalRole
cn: canary
description: written by the agent's probe
EOF
umount "$work/a/mnt"
cp --sparse=always "$work/a/volume.img" "$work/b/volume.img"

step "ldmirror up r0 on w, b and a"
up() { # up HOST: in HOST's network namespace, logging to $work/HOST.log
  # nsenter --net, not ip netns exec: that one also gives the daemon a
  # mount namespace of its own, and the ext4 its hooks mount would then be
  # unmounted (and synced through the export) by the dying daemon itself.
  nsenter --net="/run/netns/$ns-$1" env LDMIRROR_NODE_ID="$1" "$bin" --config-dir "$work/etc-$1" up r0 2>>"$work/$1.log" &
  pid[$1]=$!
}
up w
up b
up a
wait_for 30 "a to be promoted" ldm a promote r0 a --force --reason "quickstart: first primary"
wait_for 60 "slapd on a" on c ldapsearch -x -H "ldap://${addr[a]}" -s base -b "" namingContexts

step "load $entries inetOrgPerson entries into slapd on a (ldapadd from the client host)"
for i in $(seq 1 "$entries"); do
  printf 'dn: uid=user%d,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: user%d\ncn: User %d\nsn: %d\nmail: user%d@example.com\n\n' "$i" "$i" "$i" "$i" "$i"
done >"$work/people.ldif"
t=$(now)
on c ldapadd -x -c -H "ldap://${addr[a]}" -D cn=admin,dc=example,dc=com -w secret -f "$work/people.ldif" >/dev/null
load_s=$(since "$t")
echo "  $entries entries in $load_s s"
ldm a status r0

step "kill a: kill -9 of its ldmirror and its slapd"
t=$(now)
kill -9 "${pid[a]}" "$(cat "$work/a/slapd.pid")"
{ wait "${pid[a]}"; } 2>/dev/null || true
unset "pid[a]"
wait_for 60 "b to serve all $entries entries" has b "$entries"
failover_s=$(since "$t")
echo "  b serves all $entries entries, $failover_s s after the kill"
ldm b status r0

step "write 100 more entries on b while a is down"
sed -n "1,$((100 * 7))p" "$work/people.ldif" | sed 's/user\([0-9]*\)/extra\1/g' >"$work/extra.ldif"
on c ldapadd -x -H "ldap://${addr[b]}" -D cn=admin,dc=example,dc=com -w secret -f "$work/extra.ldif" >/dev/null
total=$((entries + 100))

step "bring a back: it rejoins as secondary and b resyncs only what differs"
umount -l "$work/a/mnt" 2>/dev/null || true
for d in $(losetup -n -O NAME -j "$work/a/export/volume"); do losetup -d "$d"; done
t=$(now)
up a
wait_for 120 "a to be resynced" sh -c "LDMIRROR_NODE_ID=b '$bin' --config-dir '$work/etc-b' status r0 --json | grep -qE '\"peer_disk\": ?\"uptodate\"'"
resync_s=$(since "$t")
resynced=$(ldm b status r0 --json | grep -oE '"resync_total_blocks": ?[0-9]+' | grep -oE '[0-9]+$')
resynced=${resynced:-0}
copied=$(ldm b status r0 --json | grep -oE '"resync_sent_blocks": ?[0-9]+' | grep -oE '[0-9]+$')
copied=${copied:-0}
echo "  a uptodate after $resync_s s: $resynced of $((256 * 256)) blocks compared, $copied copied (the rest were equal)"

step "fail back: ldmirror swap on b (stops slapd on b, hands the role over, starts slapd on a)"
t=$(now)
ldm b swap r0
wait_for 60 "a to serve all $total entries" has a "$total"
failback_s=$(since "$t")
wait_for 30 "a's agent to finish its promotion" sh -c "LDMIRROR_NODE_ID=a '$bin' --config-dir '$work/etc-a' status r0 | grep -q 'primary-serving'"
ldm a status r0

ok=1
cat <<EOF

== summary
  entries loaded on a          $entries in $load_s s
  failover (kill -9 of a)      b served every entry after $failover_s s
  written on b while a down    100 entries
  a back and resynced          $resync_s s; $copied of $((256 * 256)) blocks copied ($resynced compared)
  failback (ldmirror swap)     a served all $total entries after $failback_s s
EOF
