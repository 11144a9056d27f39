#!/bin/sh
# job.sh: the "cron job" only the leader runs. kvctl elect starts it with
# KVD_ELECTION_NAME and KVD_ELECTION_TOKEN set; every write it makes to
# kvd is fenced with the term's token, so a leader that lost its term
# (paused, cut off) cannot overwrite its successor's results.
host=$1
echo $$ > "$PIDS/$host.job"
run=0
trap 'echo "job: SIGTERM, stopping after run $run"; exit 0' TERM
while :; do
	run=$((run + 1))
	if "$KVCTL" put --fence "$KVD_ELECTION_NAME:$KVD_ELECTION_TOKEN" jobs/last-run "$host run $run (term $KVD_ELECTION_TOKEN)" >/dev/null; then
		echo "job: run $run done (term $KVD_ELECTION_TOKEN)"
	else
		echo "job: run $run refused by the fence (term $KVD_ELECTION_TOKEN)"
	fi
	sleep 2
done
