//go:build kvdbugs

package main

import (
	"os"

	"github.com/kvdproject/kvd/node"
)

// A kvdbugs build (test/jepsen-lite --self-test) switches on the planted
// bug named by KVD_TEST_BUG. Without the tag this file does not exist.
func init() {
	if b := os.Getenv("KVD_TEST_BUG"); b != "" {
		node.SetTestBug(b)
	}
}
