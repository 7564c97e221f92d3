#!/bin/sh
# Promotion and demotion steps for slapd (LMDB) on an ldmirror volume, for
# the LDAP agent's hooks (docs/agent.md). One step per call:
#
#   promote: slapd.sh attach; slapd.sh mount; slapd.sh start
#   demote:  slapd.sh stop;   slapd.sh umount; slapd.sh detach
#
# Every step is idempotent, so a sequence that stopped half way can be run
# again. The agent sets LDMIRROR_DIR (the volume directory) and
# LDMIRROR_EXPORT (the FUSE export file); the configuration sets:
#   LDM_MOUNT    where the volume's ext4 is mounted (slapd's LMDB lives there)
#   SLAPD_CONF   slapd.conf (its "directory" is under LDM_MOUNT)
#   SLAPD_URLS   the -h argument, e.g. "ldap://10.0.0.1:389/ ldapi://%2Frun%2Fslapd-a"
#   SLAPD_PID    the pidfile slapd.conf names
#   SLAPD_LOG    slapd's output (default: SLAPD_PID with .log for .pid)
#   LDMIRROR     the ldmirror binary (default: ldmirror on PATH)
set -eu
step=${1:?usage: slapd.sh attach|mount|start|stop|umount|detach}
ldmirror=${LDMIRROR:-ldmirror}
: "${LDMIRROR_EXPORT:?set by the agent}" "${LDM_MOUNT:?}"

loopdevs() { losetup -n -O NAME -j "$LDMIRROR_EXPORT" 2>/dev/null || true; }
# slapd_pid prints the pid in SLAPD_PID if slapd runs under it. It returns
# 1 if slapd is not running (no pidfile, or a stale one whose pid is gone or
# now another program's, which is left alone), and 2 if the pidfile does
# not hold a process id: kill reads 0 as its own process group, -1 as every
# process, and 1 is init. Nothing but a live slapd is ever signalled.
slapd_pid() {
	[ -s "$SLAPD_PID" ] || return 1
	pid=$(head -c 32 "$SLAPD_PID" | tr -d ' \t\n')
	case $pid in
	'' | *[!0-9]* | 0*)
		echo "pidfile $SLAPD_PID holds \"$pid\", not a process id: not signalled; check it and remove it" >&2
		return 2
		;;
	esac
	if [ "$pid" -le 1 ]; then
		echo "pidfile $SLAPD_PID holds $pid, which is init: not signalled; check it and remove it" >&2
		return 2
	fi
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	if [ "$comm" != slapd ]; then
		echo "pid $pid in $SLAPD_PID is $comm, not slapd: a stale pidfile; not signalled" >&2
		return 1
	fi
	echo "$pid"
}

case $step in
attach)
	dev=$(loopdevs | head -n1)
	if [ -z "$dev" ]; then
		dev=$("$ldmirror" attach --dir "$LDMIRROR_DIR")
	fi
	echo "attached $LDMIRROR_EXPORT as $dev"
	;;
mount)
	mountpoint -q "$LDM_MOUNT" && { echo "$LDM_MOUNT already mounted"; exit 0; }
	dev=$(loopdevs | head -n1)
	[ -n "$dev" ] || { echo "no loop device on $LDMIRROR_EXPORT: run the attach step first" >&2; exit 1; }
	mkdir -p "$LDM_MOUNT"
	# Mounting replays ext4's journal: the file system of a primary that
	# died is consistent again here.
	mount -o noatime "$dev" "$LDM_MOUNT"
	echo "mounted $dev on $LDM_MOUNT"
	;;
start)
	: "${SLAPD_CONF:?}" "${SLAPD_URLS:?}" "${SLAPD_PID:?}"
	rc=0
	pid=$(slapd_pid) || rc=$?
	case $rc in
	0)
		echo "slapd already running (pid $pid)"
		exit 0
		;;
	2) exit 1 ;;
	esac
	log=${SLAPD_LOG:-${SLAPD_PID%.pid}.log}
	# In the foreground (-d none: errors only) in a session of its own rather than
	# daemonized: its errors land in the log instead of syslog, and a
	# failed start is seen at once.
	setsid /usr/sbin/slapd -d none -f "$SLAPD_CONF" -h "$SLAPD_URLS" </dev/null >>"$log" 2>&1 &
	child=$!
	i=0
	until ldapsearch -LLL -x -H "${SLAPD_URLS%% *}" -s base -b "" namingContexts >/dev/null 2>&1; do
		if ! kill -0 "$child" 2>/dev/null; then
			echo "slapd exited during its start; the end of $log:" >&2
			tail -n 20 "$log" >&2
			exit 1
		fi
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "slapd does not answer on ${SLAPD_URLS%% *} after 10 s; the end of $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
		sleep 0.1
	done
	echo "slapd answers on ${SLAPD_URLS%% *} (pid $(cat "$SLAPD_PID"))"
	;;
stop)
	: "${SLAPD_PID:?}"
	rc=0
	pid=$(slapd_pid) || rc=$?
	case $rc in
	1)
		echo "slapd not running"
		exit 0
		;;
	2) exit 1 ;;
	esac
	kill -TERM "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -ge 100 ]; then
			echo "slapd (pid $pid) did not stop within 10 s of SIGTERM: killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
		sleep 0.1
	done
	echo "slapd stopped"
	;;
umount)
	if mountpoint -q "$LDM_MOUNT"; then
		umount "$LDM_MOUNT"
		echo "unmounted $LDM_MOUNT"
	fi
	;;
detach)
	for dev in $(loopdevs); do
		"$ldmirror" detach "$dev"
		echo "detached $dev"
	done
	;;
*)
	echo "unknown step $step: want attach, mount, start, stop, umount or detach" >&2
	exit 2
	;;
esac
