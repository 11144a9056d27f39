package fsm

import (
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
	"google.golang.org/protobuf/proto"
)

func u64(v uint64) *uint64 { return &v }

func TestPutVersionsAndCAS(t *testing.T) {
	h := newHarness(t)
	h.ok(put("a", "1", 0)) // index 1: version 1
	h.ok(put("a", "2", 0)) // index 2: version 2

	tests := []struct {
		name    string
		req     *kvpb.PutRequest
		code    kvpb.ErrorCode
		version uint64
	}{
		{"cas match", &kvpb.PutRequest{Key: []byte("a"), Value: []byte("3"), ExpectedVersion: u64(2)}, kvpb.ErrorCode_ERROR_CODE_OK, 3},
		{"cas mismatch", &kvpb.PutRequest{Key: []byte("a"), Value: []byte("x"), ExpectedVersion: u64(2)}, kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH, 3},
		{"create only, exists", &kvpb.PutRequest{Key: []byte("a"), ExpectedVersion: u64(0)}, kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH, 3},
		{"create only, new", &kvpb.PutRequest{Key: []byte("b"), Value: []byte("b"), ExpectedVersion: u64(0)}, kvpb.ErrorCode_ERROR_CODE_OK, 1},
		{"empty key", &kvpb.PutRequest{}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, 0},
		{"negative ttl", &kvpb.PutRequest{Key: []byte("a"), TtlMs: -1}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			res := h.code(putReq(tt.req), tt.code)
			if res.GetPut().GetHeader().GetAppliedIndex() != h.index {
				t.Errorf("header.applied_index = %d, want %d", res.GetPut().GetHeader().GetAppliedIndex(), h.index)
			}
			if tt.version == 0 {
				return
			}
			kv := h.get(string(tt.req.Key))
			if kv.GetVersion() != tt.version {
				t.Errorf("Get(%q).version = %d, want %d", tt.req.Key, kv.GetVersion(), tt.version)
			}
		})
	}
	kv := h.get("a")
	if string(kv.Value) != "3" || kv.CreateIndex != 1 || kv.ModIndex != 3 {
		t.Errorf("Get(a) = %v, want value 3 create 1 mod 3", kv)
	}
	res := h.code(putReq(&kvpb.PutRequest{Key: []byte("a"), ExpectedVersion: u64(7)}), kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH)
	if want := `key "a": version is 3, expected 7`; res.Message != want {
		t.Errorf("message = %q, want %q", res.Message, want)
	}
}

func TestDeleteThenPutRestartsVersion(t *testing.T) {
	h := newHarness(t)
	h.ok(put("k", "v", 0))
	h.ok(put("k", "v", 0))
	if n := h.ok(del("k")).GetDelete().Deleted; n != 1 {
		t.Errorf("Delete(k).deleted = %d, want 1", n)
	}
	if n := h.ok(del("k")).GetDelete().Deleted; n != 0 {
		t.Errorf("second Delete(k).deleted = %d, want 0", n)
	}
	h.ok(put("k", "w", 0))
	if kv := h.get("k"); kv.Version != 1 || kv.CreateIndex != h.index {
		t.Errorf("Get(k) = %v, want version 1 created at %d", kv, h.index)
	}
	h.code(&kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("k"), ExpectedVersion: u64(5)}}},
		kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH)
	h.ok(&kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("k"), ExpectedVersion: u64(1)}}})
	if kv := h.get("k"); kv != nil {
		t.Errorf("Get(k) after CAS delete = %v, want nil", kv)
	}
}

func TestAdd(t *testing.T) {
	h := newHarness(t)
	h.ok(put("text", "abc", 0))
	h.ok(put("big", "9223372036854775800", 0))
	tests := []struct {
		key   string
		delta int64
		code  kvpb.ErrorCode
		want  int64
	}{
		{"n", 5, kvpb.ErrorCode_ERROR_CODE_OK, 5},
		{"n", -7, kvpb.ErrorCode_ERROR_CODE_OK, -2},
		{"text", 1, kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER, 0},
		{"big", 7, kvpb.ErrorCode_ERROR_CODE_OK, 9223372036854775807},
		{"big", 1, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, 0},
	}
	for _, tt := range tests {
		res := h.code(add(nil, tt.key, tt.delta), tt.code)
		if tt.code == kvpb.ErrorCode_ERROR_CODE_OK && res.GetAdd().Value != tt.want {
			t.Errorf("Add(%q, %d) = %d, want %d", tt.key, tt.delta, res.GetAdd().Value, tt.want)
		}
	}
	if kv := h.get("n"); string(kv.Value) != "-2" || kv.Version != 2 {
		t.Errorf("Get(n) = %v, want -2 version 2", kv)
	}
}

func TestTTLExpiry(t *testing.T) {
	h := newHarness(t)
	h.ok(put("k", "v", 1000))
	h.ok(put("forever", "v", 0))
	if got, want := h.f.NextDeadline(), t0+1000*ms; got != want {
		t.Errorf("NextDeadline() = %d, want %d", got, want)
	}
	kv := h.get("k")
	if kv.ExpiresAt != t0+1000*ms {
		t.Fatalf("expires_at = %d, want %d", kv.ExpiresAt, t0+1000*ms)
	}
	// Reads hide the key at its deadline even before any entry removes it.
	if h.f.Get([]byte("k"), t0+999*ms) == nil {
		t.Errorf("Get(k) at deadline-1ms = nil, want visible")
	}
	if got := h.f.Get([]byte("k"), t0+1000*ms); got != nil {
		t.Errorf("Get(k) at deadline = %v, want nil", got)
	}
	if kvs, _ := h.f.List(nil, nil, 0, 0, false, t0+1000*ms); len(kvs) != 1 {
		t.Errorf("List at deadline = %d keys, want 1", len(kvs))
	}
	h.at(999).ok(tick())
	if h.f.Get([]byte("k"), h.f.LogTime()) == nil {
		t.Errorf("Get(k) after tick at deadline-1ms = nil, want present")
	}
	h.at(1000).ok(tick())
	if got := h.f.Get([]byte("k"), 0); got != nil {
		t.Errorf("Get(k) after tick at deadline = %v, want removed", got)
	}
	if h.f.NextDeadline() != 0 {
		t.Errorf("NextDeadline() = %d, want 0", h.f.NextDeadline())
	}
	// A put without TTL clears it.
	h.ok(put("k", "v", 50))
	h.ok(put("k", "v", 0))
	h.at(5000).ok(tick())
	if h.get("k") == nil {
		t.Errorf("Get(k) = nil, want a key whose TTL was cleared")
	}
	// Log time never goes back.
	h.at(10).ok(tick())
	if h.f.LogTime() != t0+5000*ms {
		t.Errorf("LogTime() = %d, want %d", h.f.LogTime(), t0+5000*ms)
	}
}

func TestRecoverMovesOnlyDueDeadlines(t *testing.T) {
	h := newHarness(t)
	h.ok(put("early", "v", 100)) // expires t0+100: before prev, already gone
	h.ok(put("a", "v", 1000))
	h.ok(put("b", "v", 5000))
	h.ok(put("c", "v", 10000))
	h.at(500).ok(tick()) // prev log time t0+500; "early" expires
	h.at(5000).ok(recoverOp(2000))
	tests := []struct {
		key  string
		want int64 // expires_at, 0: gone
	}{
		{"early", 0},
		{"a", t0 + 7000*ms},
		{"b", t0 + 7000*ms},
		{"c", t0 + 10000*ms},
	}
	for _, tt := range tests {
		kv := h.get(tt.key)
		if got := kv.GetExpiresAt(); got != tt.want {
			t.Errorf("Get(%q).expires_at = %d, want %d", tt.key, got, tt.want)
		}
	}
	h.at(7000).ok(tick())
	if h.get("a") != nil || h.get("c") == nil {
		t.Errorf("after grace: a = %v (want gone), c = %v (want present)", h.get("a"), h.get("c"))
	}
}

func TestList(t *testing.T) {
	h := newHarness(t)
	for _, k := range []string{"a/1", "a/2", "a/3", "b/1"} {
		h.ok(put(k, "v"+k, 0))
	}
	h.ok(put("a/0", "short", 10))
	now := h.f.LogTime() + 10*ms
	tests := []struct {
		prefix, after string
		limit         int
		want          []string
		more          bool
	}{
		{"a/", "", 0, []string{"a/1", "a/2", "a/3"}, false},
		{"a/", "", 2, []string{"a/1", "a/2"}, true},
		{"a/", "a/2", 0, []string{"a/3"}, false},
		{"", "", 0, []string{"a/1", "a/2", "a/3", "b/1"}, false},
		{"c", "", 0, nil, false},
	}
	for _, tt := range tests {
		kvs, more := h.f.List([]byte(tt.prefix), []byte(tt.after), tt.limit, 0, true, now)
		var got []string
		for _, kv := range kvs {
			got = append(got, string(kv.Key))
			if kv.Value != nil {
				t.Errorf("keysOnly List returned value for %q", kv.Key)
			}
		}
		if !equalStrings(got, tt.want) || more != tt.more {
			t.Errorf("List(%q, %q, %d) = %q, %v; want %q, %v", tt.prefix, tt.after, tt.limit, got, more, tt.want, tt.more)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSessions(t *testing.T) {
	h := newHarness(t)
	id := h.session(1000)
	if id != 1 {
		t.Fatalf("session id = %d, want 1 (the index)", id)
	}
	h.at(800).ok(keepAlive(id))
	if s := h.f.Session(id, h.f.LogTime()); s.GetExpiresAt() != t0+1800*ms {
		t.Errorf("Session(%d).expires_at = %d, want %d", id, s.GetExpiresAt(), t0+1800*ms)
	}
	h.at(1799).ok(tick())
	if h.f.Session(id, h.f.LogTime()) == nil {
		t.Errorf("Session(%d) expired early", id)
	}
	h.at(1800).ok(tick())
	if h.f.Session(id, 0) != nil {
		t.Errorf("Session(%d) present after expiry", id)
	}
	h.code(keepAlive(id), kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED)
	h.code(closeSession(id), kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED)
	h.code(createSession(0), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	id2 := h.session(1000)
	h.ok(closeSession(id2))
	if h.f.Session(id2, h.f.LogTime()) != nil {
		t.Errorf("Session(%d) present after close", id2)
	}
	// A write through a dead session is not applied.
	h.code(add(hdr(id2, 1), "n", 1), kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED)
	if h.get("n") != nil {
		t.Errorf("Add through a closed session was applied")
	}
}

func TestDedup(t *testing.T) {
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{MaxDedupResults: 3}
	id := h.session(60000)

	first := h.ok(add(hdr(id, 1), "n", 5))
	retry := h.ok(add(hdr(id, 1), "n", 5))
	if !proto.Equal(first, retry) {
		t.Errorf("retried Add result = %v, want the first %v", retry, first)
	}
	if kv := h.get("n"); string(kv.Value) != "5" {
		t.Errorf("Get(n) = %q after a retried Add, want 5", kv.Value)
	}
	// Errors are remembered too.
	h.ok(put("t", "x", 0))
	e1 := h.apply(add(hdr(id, 2), "t", 1))
	h.ok(put("t", "1", 0))
	e2 := h.apply(add(hdr(id, 2), "t", 1))
	if e1.Code != kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER || !proto.Equal(e1, e2) {
		t.Errorf("retried failed Add = %v, want the first %v", e2, e1)
	}
	// min_pending_seq prunes; older seqs are then stale.
	h.ok(add(&kvpb.RequestHeader{Session: id, Seq: 3, MinPendingSeq: 3}, "n", 1))
	h.code(add(hdr(id, 1), "n", 5), kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE)
	h.code(add(hdr(id, 2), "n", 5), kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE)
	// The watermark never goes down.
	h.ok(add(&kvpb.RequestHeader{Session: id, Seq: 4, MinPendingSeq: 1}, "n", 1))
	h.code(add(hdr(id, 2), "n", 5), kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE)
	// The cap drops the lowest seqs and raises the watermark past them.
	h.ok(add(hdr(id, 5), "n", 1))
	h.ok(add(hdr(id, 6), "n", 1)) // table 4,5,6 then 3 dropped
	h.ok(add(hdr(id, 7), "n", 1)) // 4 dropped
	h.code(add(hdr(id, 4), "n", 1), kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE)
	h.ok(add(hdr(id, 7), "n", 1)) // still remembered
	if kv := h.get("n"); string(kv.Value) != "10" {
		t.Errorf("Get(n) = %q, want 10", kv.Value)
	}
	// Session 0: applied without dedup.
	h.ok(add(nil, "z", 1))
	h.ok(add(nil, "z", 1))
	if kv := h.get("z"); string(kv.Value) != "2" {
		t.Errorf("Get(z) = %q, want 2", kv.Value)
	}
}

func TestMembers(t *testing.T) {
	h := newHarness(t)
	h.ok(setMember("n2", "p2", "c2"))
	h.ok(setMember("n1", "p1", "c1"))
	h.ok(setMember("n2", "p2b", "c2b"))
	h.ok(setMember("n3", "p3", "c3"))
	h.ok(removeMember("n3"))
	got := h.f.Members()
	want := []*kvpb.Member{{Name: "n1", PeerAddr: "p1", ClientAddr: "c1"}, {Name: "n2", PeerAddr: "p2b", ClientAddr: "c2b"}}
	if len(got) != len(want) {
		t.Fatalf("Members() = %v, want %v", got, want)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("Members()[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestGarbageAndOtherEntries(t *testing.T) {
	h := newHarness(t)
	for i, data := range [][]byte{{0xff, 0xff, 0xff}, {0x0a}, []byte("not a proto at all"), nil} {
		if data == nil {
			data = []byte{} // a command entry with empty data: no op
		}
		res := h.f.Apply(uint64(i+1), data)
		if res == nil || res.Code != kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
			t.Errorf("Apply(%q) = %v, want INVALID_ARGUMENT", data, res)
		}
	}
	if r := h.f.Apply(9, nil); r != nil {
		t.Errorf("Apply(noop) = %v, want nil", r)
	}
	if h.f.AppliedIndex() != 9 {
		t.Errorf("AppliedIndex() = %d, want 9", h.f.AppliedIndex())
	}
}

// TestReadsNameTheTimeTheyJudgedAt: a read prepared at an earlier time
// than the state's own log time (the state applied more entries since) is
// judged at the state's time, and says so, so an expired key is never
// reported absent at a time before its deadline.
func TestReadsNameTheTimeTheyJudgedAt(t *testing.T) {
	h := newHarness(t)
	h.ok(put("k", "v", 1000))
	deadline := h.f.Get([]byte("k"), h.f.LogTime()).GetExpiresAt()
	h.at(2000).ok(tick()) // the key expires in this entry
	early := deadline - int64(500*ms)
	kv, at := h.f.GetAt([]byte("k"), early)
	if kv != nil || at < deadline {
		t.Errorf("GetAt(k, %d) = %v at %d; want absent at a time >= the deadline %d", early, kv, at, deadline)
	}
	kvs, _, at := h.f.ListAt(nil, nil, 0, 0, false, early)
	if len(kvs) != 0 || at < deadline {
		t.Errorf("ListAt(%d) = %v at %d; want none at a time >= the deadline %d", early, kvs, at, deadline)
	}
	if _, at := h.f.GetAt([]byte("k"), h.f.LogTime()+5); at != h.f.LogTime()+5 {
		t.Errorf("GetAt with a later time answered at %d; want that time", at)
	}
}
