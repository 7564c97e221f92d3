#!/usr/bin/env bash
# The test command of README.md, run by .ci/run: installs what the tests need
# (Debian packages when root, Go modules), then vets and runs every test.
# As root the end-to-end tests run too (FUSE, loop devices, slapd); as
# another user they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  # prometheus: its server and promtool check the metrics exporter; systemd:
  # systemd-analyze verifies the units.
  for pkg in slapd ldap-utils fuse3 fio e2fsprogs util-linux iproute2 nftables prometheus systemd; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  modprobe fuse 2>/dev/null || true
  modprobe loop 2>/dev/null || true
fi
command -v go >/dev/null || { echo "Go is not installed (expected in /usr/local/go/bin)"; exit 1; }

echo "== go mod download"
go mod download
echo "== gofmt"
# shellcheck disable=SC2046 # one file name per word: none has a space
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "not gofmt-ed: $unformatted"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== go test"
# The end-to-end tests append their measurements (failover times, resync
# sizes) here; go test shows a passing test's log only with -v.
report=$(mktemp)
trap 'rm -f "$report"' EXIT
rc=0
LDMIRROR_E2E_REPORT=$report go test -count=1 -timeout 25m ./... || rc=$?
if [ -s "$report" ]; then
  echo "== end-to-end measurements"
  cat "$report"
fi
[ $rc = 0 ] || exit $rc
echo "== fuzz smoke (the frame decoder, 10 s)"
go test -run '^$' -fuzz FuzzReadFrame -fuzztime 10s ./transport/
if [ "$(id -u)" = 0 ]; then
  # A short fault campaign (docs/reliability.md): 20 randomized faults on
  # three namespace hosts, each checked for lost writes, divergent volumes,
  # e2fsck and two primaries. The 200-round campaigns run by hand.
  echo "== fault campaign (20 rounds, sync, about 3 min)"
  go run ./scripts/torture --rounds 20
fi
