//go:build !kvdbugs

package fsm

// bug reports whether a planted bug is on: never, outside a kvdbugs build
// (see bug_on.go).
func bug(string) bool { return false }
