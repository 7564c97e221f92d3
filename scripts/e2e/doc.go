// Package e2e holds ldmirror's end-to-end tests: real daemons, the FUSE
// export on a loop device, ext4, fio and (later) slapd, driven from Go tests.
// They need root and skip with the reason otherwise, and skip under -short.
package e2e
