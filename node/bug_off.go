//go:build !kvdbugs

package node

// bug reports whether a planted bug is on: never, outside a kvdbugs build
// (see bug_on.go).
func bug(string) bool { return false }

// judgeTime is the time a linearizable read judges expiry against.
func (n *Node) judgeTime(now int64) int64 { return now }

// clockRate is the node's clock as it is: see bug_on.go.
func (n *Node) clockRate(ns int64) int64 { return ns }
