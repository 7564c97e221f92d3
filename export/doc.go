// Package export shows a volume to applications: a FUSE mount that holds
// the device as one regular file (FileName), and the loop devices bound to
// that file, which carry the directory server's file system.
//
// The loop device turns the file system's flushes (REQ_PREFLUSH, FUA) into
// fsync on the FUSE file, which the export passes to the device: a flush on
// the mount is a flush of the mirror. The export never answers fsync with
// ENOSYS: the kernel would skip every later fsync on the mount.
package export
