//go:build kvdbugs

package fsm

import (
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestBugTxnPartial shows the planted bug does what the self-test expects:
// the txn answers success for every op but only the first one applies.
func TestBugTxnPartial(t *testing.T) {
	SetTestBug("txn-partial")
	defer delete(testBugs, "txn-partial")
	h := newHarness(t)
	r := h.ok(txnCmd(nil, nil, []*kvpb.TxnOp{opPut("a", "1"), opPut("b", "1")}, nil)).GetTxn()
	if !r.Succeeded || len(r.Results) != 2 {
		t.Fatalf("txn = %v, want success with two results", r)
	}
	if h.get("a") == nil || h.get("b") != nil {
		t.Errorf("with txn-partial: a applied %v, b applied %v; want only a", h.get("a") != nil, h.get("b") != nil)
	}
}
