package fsm

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func putBound(key, value string, session uint64, ifAbsent bool) *kvpb.Command {
	return putReq(&kvpb.PutRequest{Key: []byte(key), Value: []byte(value), Session: session, IfAbsent: ifAbsent})
}

func touchCmd(key string, ttlMs int64, f *kvpb.Fence) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Touch{Touch: &kvpb.TouchRequest{Key: []byte(key), TtlMs: ttlMs, Fence: f}}}
}

func delPrefix(prefix string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte(prefix), Prefix: true}}}
}

// sessionKeys is SessionInfo.keys of a live session.
func (h *harness) sessionKeys(id uint64) uint64 {
	h.t.Helper()
	info := h.f.Session(id, h.f.LogTime())
	if info == nil {
		h.t.Fatalf("session %d is not live", id)
	}
	return info.Keys
}

func TestTouchKeepsValueVersionAndModIndex(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	h.ok(put("k", "v", 1000)) // index 2
	h.ok(put("k", "w", 1000)) // index 3: version 2
	h.ok(putBound("b", "x", s, false))
	h.at(500)
	evs := h.applyEv(touchCmd("k", 2000, nil))
	kv := h.get("k")
	if string(kv.Value) != "w" || kv.Version != 2 || kv.ModIndex != 3 || kv.CreateIndex != 2 {
		t.Errorf("after touch: %v, want value w version 2 mod 3 create 2", kv)
	}
	if want := t0 + 2500*ms; kv.ExpiresAt != want {
		t.Errorf("expires_at = %d, want now + 2000 ms = %d", kv.ExpiresAt, want)
	}
	if len(evs) != 1 || evs[0].Change.Type != kvpb.EventType_EVENT_TYPE_TOUCH || evs[0].Change.Kv.Value != nil ||
		evs[0].Change.Kv.ExpiresAt != kv.ExpiresAt || evs[0].Change.Kv.ModIndex != 3 {
		t.Errorf("events = %v, want one TOUCH with the new deadline and no value", describe(evs))
	}
	// The old deadline no longer applies; the new one does.
	h.at(1500)
	h.ok(tick())
	if h.get("k") == nil {
		t.Fatal("key expired at its old deadline after a touch")
	}
	h.at(2500)
	h.ok(tick())
	if h.get("k") != nil {
		t.Fatal("key outlived its new deadline")
	}

	// ttl 0: no TTL any more; the answer has no value.
	h.ok(put("n", "v", 1000))
	res := h.ok(touchCmd("n", 0, nil)).GetTouch()
	if res.Kv.ExpiresAt != 0 || res.Kv.Value != nil || string(res.Kv.Key) != "n" {
		t.Errorf("touch answer = %v, want key n, no deadline, no value", res.Kv)
	}
	h.code(touchCmd("absent", 1000, nil), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	h.code(touchCmd("n", 1000, &kvpb.Fence{Lock: []byte("L"), Token: 99}), kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED)
	if h.get("n").ExpiresAt != 0 {
		t.Error("a touch refused by its fence changed the key")
	}
	tok := h.ok(acquire(s, 0, "L", 0, 0)).GetAcquire().Token
	h.ok(touchCmd("n", 1000, &kvpb.Fence{Lock: []byte("L"), Token: tok}))

	// Touching a bound key keeps the binding.
	h.ok(touchCmd("b", 5000, nil))
	if kv := h.get("b"); kv.Session != s {
		t.Errorf("touched key's session = %d, want %d", kv.Session, s)
	}
	h.ok(closeSession(s))
	if h.get("b") != nil {
		t.Error("touched bound key outlived its session")
	}
}

func TestDeletePrefix(t *testing.T) {
	h := newHarness(t)
	for _, k := range []string{"a", "app/1", "app/2", "app/3/x", "apq", "b"} {
		h.ok(put(k, "v"+k, 0))
	}
	evs := h.applyEv(delPrefix("app/"))
	if got, want := describe(evs), []string{"DELETE app/1 prev=vapp/1", "DELETE app/2 prev=vapp/2", "DELETE app/3/x prev=vapp/3/x"}; !slices.Equal(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
	kvs, _ := h.f.List(nil, nil, 0, 0, true, h.f.LogTime())
	var left []string
	for _, kv := range kvs {
		left = append(left, string(kv.Key))
	}
	if want := []string{"a", "apq", "b"}; !slices.Equal(left, want) {
		t.Errorf("keys left = %q, want %q", left, want)
	}
	if n := h.ok(delPrefix("zzz")).GetDelete().Deleted; n != 0 {
		t.Errorf("deleted = %d under an empty prefix, want 0", n)
	}
	r := h.code(&kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("a"), Prefix: true, ExpectedVersion: u64(1)}}},
		kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if !strings.Contains(r.Message, "expected_version") {
		t.Errorf("message %q does not name expected_version", r.Message)
	}
	h.code(&kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("a"), Prefix: true,
		Fence: &kvpb.Fence{Lock: []byte("L"), Token: 7}}}}, kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED)
	if h.get("a") == nil {
		t.Fatal("a fenced delete-prefix refused by its fence deleted a key")
	}
	sess := h.session(60000)
	tok := h.ok(acquire(sess, 0, "L", 0, 0)).GetAcquire().Token
	if n := h.ok(&kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("ap"), Prefix: true,
		Fence: &kvpb.Fence{Lock: []byte("L"), Token: tok}}}}).GetDelete().Deleted; n != 1 {
		t.Errorf("fenced delete-prefix with the current token deleted %d, want 1 (apq)", n)
	}
	if n := h.ok(delPrefix("")).GetDelete().Deleted; n != 2 {
		t.Errorf("delete of prefix \"\" deleted %d, want every key (2)", n)
	}
	if st := h.f.Stats(); st.Keys != 0 || st.KVBytes != 0 {
		t.Errorf("after deleting every key: %d keys, %d bytes", st.Keys, st.KVBytes)
	}
}

func TestSessionBoundKeys(t *testing.T) {
	h := newHarness(t)
	s1 := h.session(10000)
	s2 := h.session(60000)
	h.ok(putBound("s1/a", "1", s1, false))
	h.ok(putBound("s1/b", "1", s1, false))
	h.ok(putBound("s2/a", "1", s2, false))
	h.ok(put("free", "1", 0))
	if kv := h.get("s1/a"); kv.Session != s1 {
		t.Errorf("bound key's session = %d, want %d", kv.Session, s1)
	}
	if n := h.sessionKeys(s1); n != 2 {
		t.Errorf("session %d keys = %d, want 2", s1, n)
	}

	// Rebinding moves the key to the other session's count.
	h.ok(putBound("s1/b", "2", s2, false))
	if a, b := h.sessionKeys(s1), h.sessionKeys(s2); a != 1 || b != 2 {
		t.Errorf("after rebinding: keys %d and %d, want 1 and 2", a, b)
	}
	// A put without session unbinds.
	h.ok(put("s2/a", "plain", 0))
	if kv := h.get("s2/a"); kv.Session != 0 {
		t.Errorf("put without session left the key bound to %d", kv.Session)
	}
	if n := h.sessionKeys(s2); n != 1 {
		t.Errorf("after unbinding: session %d keys = %d, want 1", s2, n)
	}
	// Deleting a bound key unbinds it (no leak in the index).
	h.ok(putBound("s2/tmp", "1", s2, false))
	h.ok(del("s2/tmp"))
	if n := h.sessionKeys(s2); n != 1 {
		t.Errorf("after deleting a bound key: session %d keys = %d, want 1", s2, n)
	}
	// A bound key whose TTL runs out leaves the index too.
	h.ok(putReq(&kvpb.PutRequest{Key: []byte("s2/ttl"), Session: s2, TtlMs: 100}))
	h.at(200)
	h.ok(tick())
	if n := h.sessionKeys(s2); n != 1 || h.get("s2/ttl") != nil {
		t.Errorf("after a bound key's TTL: session %d keys = %d, want 1", s2, n)
	}

	// Closing s2 deletes exactly its keys, in the same entry.
	evs := h.applyEv(closeSession(s2))
	if got, want := describe(evs), []string{"SESSION_END " + string(sessionKey(s2)), "DELETE s1/b prev=2"}; !slices.Equal(got, want) {
		t.Errorf("close events = %q, want %q", got, want)
	}
	for k, want := range map[string]bool{"s1/a": true, "s1/b": false, "s2/a": true, "free": true} {
		if got := h.get(k) != nil; got != want {
			t.Errorf("after close: key %s exists = %v, want %v", k, got, want)
		}
	}

	// s1 expires: its key goes with a DELETE marked expired.
	h.at(10000)
	evs = h.applyEv(tick())
	if got, want := describe(evs), []string{"SESSION_END " + string(sessionKey(s1)) + " expired", "DELETE s1/a expired prev=1"}; !slices.Equal(got, want) {
		t.Errorf("expiry events = %q, want %q", got, want)
	}
	if h.get("s1/a") != nil {
		t.Error("bound key outlived its expired session")
	}
	// A put naming an ended session is refused and writes nothing.
	r := h.code(putBound("x", "1", s1, false), kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED)
	if !strings.HasPrefix(r.Message, "session:") || h.get("x") != nil {
		t.Errorf("put with an ended session: %q, key written: %v", r.Message, h.get("x") != nil)
	}
}

func TestPutIfAbsent(t *testing.T) {
	h := newHarness(t)
	s1 := h.session(60000)
	s2 := h.session(60000)
	h.ok(putBound("k", "1", 0, true)) // absent: written
	r := h.code(putBound("k", "2", 0, true), kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS)
	if !strings.Contains(r.Message, `"k"`) {
		t.Errorf("message %q does not name the key", r.Message)
	}
	h.code(putBound("k", "2", s1, true), kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS) // exists, bound to none
	h.ok(putBound("m", "1", s1, true))
	h.ok(putBound("m", "2", s1, true)) // bound to the same session: allowed
	if kv := h.get("m"); string(kv.Value) != "2" || kv.Version != 2 {
		t.Errorf("m = %v, want value 2 version 2", kv)
	}
	r = h.code(putBound("m", "3", s2, true), kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS)
	if !strings.Contains(r.Message, "session") {
		t.Errorf("message %q does not name the holding session", r.Message)
	}
	if kv := h.get("m"); string(kv.Value) != "2" || kv.Session != s1 {
		t.Errorf("a refused if_absent changed the key: %v", kv)
	}
	h.ok(closeSession(s1))
	h.ok(putBound("m", "4", s2, true)) // gone with s1: absent again
}

func TestBoundKeysSurviveSnapshot(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	h.ok(putBound("a", "1", s, false))
	h.ok(putBound("b", "1", s, false))
	h.ok(put("c", "1", 0))
	g := newHarness(t)
	if err := g.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	g.index, g.now = h.index, h.now
	if kv := g.get("a"); kv.Session != s {
		t.Errorf("restored key's session = %d, want %d", kv.Session, s)
	}
	if n := g.sessionKeys(s); n != 2 {
		t.Errorf("restored session keys = %d, want 2 (index rebuilt)", n)
	}
	if !bytes.Equal(snapshotBytes(t, g.f), snapshotBytes(t, h.f)) {
		t.Error("a restored state writes different snapshot bytes")
	}
	g.ok(closeSession(s))
	if g.get("a") != nil || g.get("b") != nil || g.get("c") == nil {
		t.Error("closing the session after a restore did not delete exactly its keys")
	}
}

func TestDeletePrefixRetryIsAnsweredOnce(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	h.ok(put("p/1", "1", 0))
	h.ok(put("p/2", "1", 0))
	cmd := func() *kvpb.Command {
		return &kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Header: hdr(s, 1), Key: []byte("p/"), Prefix: true}}}
	}
	if n := h.ok(cmd()).GetDelete().Deleted; n != 2 {
		t.Fatalf("deleted %d, want 2", n)
	}
	h.ok(put("p/3", "1", 0)) // a new key under the prefix: a retry must not delete it
	evs := h.applyEv(cmd())
	if len(evs) != 0 || h.get("p/3") == nil {
		t.Errorf("a retried delete-prefix applied again: events %q", describe(evs))
	}
	if n := h.ok(cmd()).GetDelete().Deleted; n != 2 {
		t.Errorf("retry answered deleted %d, want the first answer's 2", n)
	}
}
