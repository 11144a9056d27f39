//go:build kvdbugs

package fsm

// Planted bugs for the jepsen-lite self-test (test/jepsen-lite --self-test).
// This file exists only in a build with -tags kvdbugs; without the tag, bug
// is a constant false (bug_off.go) and the checks compile away.

var testBugs = map[string]bool{}

// SetTestBug switches a planted bug on: "lock-ignore-expiry",
// "unfenced-store" or "no-dedup". Call it before the first Apply.
func SetTestBug(name string) { testBugs[name] = true }

func bug(name string) bool { return testBugs[name] }
