//go:build kvdbugs

package node

import "github.com/kvdproject/kvd/fsm"

// Planted bugs for the jepsen-lite self-test (test/jepsen-lite --self-test).
// This file exists only in a build with -tags kvdbugs; without the tag the
// switches are constant (bug_off.go) and the checks compile away.

var testBugs = map[string]bool{}

// SetTestBug switches a planted bug on, in node ("stale-read",
// "ttl-wall-clock", "log-time-fast", "watch-drop-event",
// "watch-reorder-event") and fsm ("lock-ignore-expiry", "unfenced-store",
// "no-dedup", "ttl-off-by-one", "renewal-keeps-deadline",
// "dedup-lost-on-restore", "lock-delay-ignored", "fill-lease-half",
// "txn-partial"). Call it before starting a node.
func SetTestBug(name string) {
	testBugs[name] = true
	fsm.SetTestBug(name)
}

func bug(name string) bool { return testBugs[name] }

// judgeTime is the time a linearizable read judges expiry against: with
// "ttl-wall-clock", the node's wall clock instead of log time.
func (n *Node) judgeTime(now int64) int64 {
	if bug("ttl-wall-clock") {
		return n.wallNow()
	}
	return now
}

// clockRate is the node's clock: with "log-time-fast" it runs 10% fast, so
// the log time this node stamps as leader runs ahead of real time.
func (n *Node) clockRate(ns int64) int64 {
	if bug("log-time-fast") {
		return ns + ns/10
	}
	return ns
}
