package fsm

import (
	"bytes"
	"io"
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

// TestSessionOwnerSurvivesSnapshot: the owner a session was created with is
// kept, shown, and carried through a snapshot; a lock's holder is found by
// its current token only.
func TestSessionOwnerSurvivesSnapshot(t *testing.T) {
	h := newHarness(t)
	cmd := createSession(10_000)
	cmd.GetCreateSession().Owner = "alice"
	id := h.ok(cmd).GetCreateSession().GetSession().GetId()
	if owner, ok := h.f.SessionOwner(id); !ok || owner != "alice" {
		t.Fatalf("SessionOwner(%d) = %q, %v; want alice, true", id, owner, ok)
	}
	token := h.ok(acquire(id, 1, "L", 0, 0)).GetAcquire().GetToken()
	if s, ok := h.f.LockHolder([]byte("L"), token); !ok || s != id {
		t.Errorf("LockHolder(L, %d) = %d, %v; want %d, true", token, s, ok, id)
	}
	if _, ok := h.f.LockHolder([]byte("L"), token+1); ok {
		t.Errorf("LockHolder(L, %d) found a holder for a token that is not current", token+1)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if owner, ok := g.SessionOwner(id); !ok || owner != "alice" {
		t.Errorf("after restore SessionOwner(%d) = %q, %v; want alice, true", id, owner, ok)
	}
	if got := g.Session(id, g.LogTime()).GetOwner(); got != "alice" {
		t.Errorf("after restore Session(%d).Owner = %q, want alice", id, got)
	}
	if _, ok := h.f.SessionOwner(id + 1000); ok {
		t.Errorf("SessionOwner of an unknown id reported ok")
	}
}
