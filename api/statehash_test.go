package api_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestStatusStateHash: the hash Status reports is the state's exact hash
// when nothing is being applied, concurrent callers agree, and a write
// changes it.
func TestStatusStateHash(t *testing.T) {
	c := testcluster.Start(t, 3)
	l, err := c.WaitLeader(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	put := func(k string) {
		t.Helper()
		if _, err := kv(c, l).Put(ctxT(t, 5*time.Second), &kvpb.PutRequest{Key: []byte(k), Value: []byte("v")}); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	put("a")
	n := c.Node(l)
	// The tick may append entries at any time: compare only when the
	// applied index did not move.
	eventually(t, 10*time.Second, "a cached hash equal to the state's", func() bool {
		idx := n.FSM().AppliedIndex()
		want := n.FSM().StateHash()
		got := n.Status(true).GetStateHash()
		return n.FSM().AppliedIndex() == idx && bytes.Equal(got, want)
	})
	before := n.Status(true).GetStateHash()
	put("b")
	if after := n.Status(true).GetStateHash(); bytes.Equal(before, after) {
		t.Errorf("Status().StateHash = %x after a put, want it changed", after)
	}
	var wg sync.WaitGroup
	hashes := make([][]byte, 16)
	for i := range hashes {
		wg.Go(func() { hashes[i] = n.Status(true).GetStateHash() })
	}
	wg.Wait()
	for i, h := range hashes {
		if len(h) == 0 {
			t.Errorf("concurrent Status %d: empty state hash", i)
		}
	}
}
