#!/bin/sh
# run.sh: three `kvctl elect` processes on one machine stand in for three
# app servers; only the leader runs job.sh. The script crashes the leader
# (SIGKILL of its kvctl and its job), lets another take over, then stops
# the new leader gracefully (SIGTERM: it resigns, the last one leads at
# once), and cleans up. About 40 seconds.
#
# Needs kvd and kvctl on PATH (make build && export PATH="$PWD/bin:$PATH"),
# or KVD and KVCTL naming them. It starts its own `kvd dev` on ports
# 12379-12580 in a temporary directory unless KVD_ENDPOINTS names a
# running cluster.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
KVD=${KVD:-kvd}
KVCTL=${KVCTL:-kvctl}
export KVCTL
work=$(mktemp -d)
PIDS=$work/pids
mkdir "$PIDS"
export PIDS
TTL=5s

say() { echo "--- $*"; }

cleanup() {
	set +e
	# The servers' kvctl (SIGTERM: each stops its job and resigns) and the
	# listener, waited for; then the cluster.
	for f in "$PIDS"/*.kvctl "$PIDS"/listen; do
		[ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
	done
	wait_for() { # pid: wait up to 15s for it to exit
		i=0
		while kill -0 "$1" 2>/dev/null && [ $i -lt 150 ]; do
			sleep 0.1
			i=$((i + 1))
		done
	}
	for f in "$PIDS"/*.kvctl "$PIDS"/listen; do
		[ -e "$f" ] && wait_for "$(cat "$f")"
	done
	if [ -n "${dev:-}" ]; then
		kill -TERM "$dev" 2>/dev/null
		wait "$dev" 2>/dev/null
	fi
	rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${KVD_ENDPOINTS:-}" ]; then
	export KVD_ENDPOINTS=127.0.0.1:12379,127.0.0.1:12479,127.0.0.1:12579
	"$KVD" dev --base-port 12379 --data-dir "$work/data" --log-level warn >"$work/dev.log" 2>&1 &
	dev=$!
	say "started kvd dev (pid $dev), waiting for it"
	i=0
	until "$KVCTL" cluster status >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 60 ] || { cat "$work/dev.log"; exit 1; }
		sleep 0.5
	done
fi

# One app server: campaigns for cron-leader, runs job.sh only while leading,
# and campaigns again after losing leadership (--restart). Its output is
# prefixed with its name.
server() {
	mkfifo "$work/$1.out"
	sed -u "s/^/[$1] /" <"$work/$1.out" &
	"$KVCTL" elect cron-leader "$1" --ttl $TTL --restart -- sh "$here/job.sh" "$1" >"$work/$1.out" 2>&1 &
	echo $! >"$PIDS/$1.kvctl"
}
server host-1
sleep 1
server host-2
server host-3
sleep 1

mkfifo "$work/listen.out"
sed -u 's/^/--- leader now: /' <"$work/listen.out" &
"$KVCTL" elect cron-leader --listen >"$work/listen.out" &
echo $! >"$PIDS/listen"
sleep 6

leader=$("$KVCTL" elect cron-leader --show | sed 's/.*: //')
say "crashing the leader, $leader: SIGKILL to its kvctl and its job (a dead server)"
kill -9 "$(cat "$PIDS/$leader.kvctl")" "$(cat "$PIDS/$leader.job")"
rm -f "$PIDS/$leader.kvctl" "$PIDS/$leader.job"
say "another server takes over once $leader's session expires ($TTL) and the 1s lock-delay passes"
sleep 10

leader=$("$KVCTL" elect cron-leader --show | sed 's/.*: //')
say "stopping the new leader, $leader, gracefully: SIGTERM (it stops its job and resigns)"
kill -TERM "$(cat "$PIDS/$leader.kvctl")"
sleep 5

say "last run recorded: $("$KVCTL" get jobs/last-run)"
"$KVCTL" elect cron-leader --show | sed 's/^/--- leader at the end: /'
say "done"
