package fsm

import (
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestKeepAliveBatch: one entry renews every live session it names, in
// order, and reports SESSION_EXPIRED for the others without failing them.
func TestKeepAliveBatch(t *testing.T) {
	h := newHarness(t)
	a := h.session(1_000)
	b := h.session(5_000)
	h.at(2_000).ok(tick()) // a expired at 1s; b lives until 5s
	res := h.ok(&kvpb.Command{Op: &kvpb.Command_KeepAliveBatch{KeepAliveBatch: &kvpb.KeepAliveBatchOp{Ids: []uint64{b, a, 999}}}})
	rs := res.GetKeepAliveBatch().GetResults()
	if len(rs) != 3 {
		t.Fatalf("got %d results, want 3", len(rs))
	}
	if rs[0].GetCode() != kvpb.ErrorCode_ERROR_CODE_OK || rs[0].GetKeepAlive().GetSession().GetId() != b {
		t.Fatalf("result for live session b = %v", rs[0])
	}
	if want := h.f.LogTime() + 5_000*ms; rs[0].GetKeepAlive().GetSession().GetExpiresAt() != want {
		t.Fatalf("b expires at %d, want %d", rs[0].GetKeepAlive().GetSession().GetExpiresAt(), want)
	}
	for i, id := range []uint64{a, 999} {
		if got := rs[i+1].GetCode(); got != kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED {
			t.Fatalf("result for session %d = %v, want SESSION_EXPIRED", id, got)
		}
	}
	if h.f.Session(b, h.f.LogTime()) == nil {
		t.Fatal("session b is not alive after the batch renewed it")
	}
}
