//go:build kvdbugs

package fsm

// Planted bugs for the jepsen-lite self-test (test/jepsen-lite --self-test).
// This file exists only in a build with -tags kvdbugs; without the tag, bug
// is a constant false (bug_off.go) and the checks compile away.

var testBugs = map[string]bool{}

// SetTestBug switches a planted bug on: "lock-ignore-expiry",
// "unfenced-store", "no-dedup", "ttl-off-by-one" (expiry also takes the
// first key deadline not yet due), "renewal-keeps-deadline" (a renewed
// session still expires at its first deadline), "dedup-lost-on-restore"
// (remembered results are dropped when a snapshot is restored) or
// "lock-delay-ignored" (an involuntary release starts no lock-delay) or
// "fill-lease-half" (a fill lease is handed to the next caller once half of
// it has run) or "txn-partial" (a transaction that is not refused applies
// only the first op of the branch it runs, and answers the others as if
// they had run). Call it before the first Apply.
func SetTestBug(name string) { testBugs[name] = true }

func bug(name string) bool { return testBugs[name] }
