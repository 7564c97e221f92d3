// Package e2e holds ldmirror's end-to-end tests: the ldmirror binary built
// once, real daemons in network namespaces (internal/netns) with a witness,
// the FUSE export on a loop device, ext4, fio and slapd, and real faults
// (kill -9, link down, nftables drops). They need root and skip with the
// reason otherwise, and skip under -short. Run them as the README's test
// command does: go test ./e2e (about 7 minutes on 2 cores).
package e2e
