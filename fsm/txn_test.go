package fsm

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func txnCmd(h *kvpb.RequestHeader, cmps []*kvpb.Compare, success, failure []*kvpb.TxnOp) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Txn{Txn: &kvpb.TxnRequest{Header: h, Compares: cmps, Success: success, Failure: failure}}}
}

func opPut(key, value string) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte(key), Value: []byte(value)}}}
}

func opPutReq(r *kvpb.PutRequest) *kvpb.TxnOp { return &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: r}} }

func opDel(key string, prefix bool) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte(key), Prefix: prefix}}}
}

func opGet(key string) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: []byte(key)}}}
}

func cmpNum(key string, target kvpb.CompareTarget, op kvpb.CompareOp, n uint64) *kvpb.Compare {
	return &kvpb.Compare{Key: []byte(key), Target: target, Op: op, Number: n}
}

const (
	tVersion = kvpb.CompareTarget_COMPARE_TARGET_VERSION
	tValue   = kvpb.CompareTarget_COMPARE_TARGET_VALUE
	tCreate  = kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX
	tMod     = kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX
	tExists  = kvpb.CompareTarget_COMPARE_TARGET_EXISTS
	tToken   = kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN
	opEq     = kvpb.CompareOp_COMPARE_OP_EQUAL
	opNe     = kvpb.CompareOp_COMPARE_OP_NOT_EQUAL
	opLt     = kvpb.CompareOp_COMPARE_OP_LESS
	opGt     = kvpb.CompareOp_COMPARE_OP_GREATER
)

func TestTxnCompares(t *testing.T) {
	h := newHarness(t)
	s := h.session(1000)
	h.ok(put("k", "m", 0))                                   // index 2
	h.ok(put("k", "m", 0))                                   // index 3: version 2
	tok := h.ok(acquire(s, 0, "L", 0, 0)).GetAcquire().Token // index 4
	h.ok(acquire(s, 0, "gone", 0, 0))

	tests := []struct {
		name string
		c    *kvpb.Compare
		want bool
	}{
		{"version equal", cmpNum("k", tVersion, opEq, 2), true},
		{"version not equal", cmpNum("k", tVersion, opNe, 2), false},
		{"version less", cmpNum("k", tVersion, opLt, 3), true},
		{"version greater", cmpNum("k", tVersion, opGt, 2), false},
		{"absent version 0", cmpNum("none", tVersion, opEq, 0), true},
		{"create index", cmpNum("k", tCreate, opEq, 2), true},
		{"absent create index 0", cmpNum("none", tCreate, opEq, 0), true},
		{"mod index", cmpNum("k", tMod, opEq, 3), true},
		{"mod index greater", cmpNum("k", tMod, opGt, 2), true},
		{"absent mod index 0", cmpNum("none", tMod, opLt, 1), true},
		{"value equal", &kvpb.Compare{Key: []byte("k"), Target: tValue, Op: opEq, Value: []byte("m")}, true},
		{"value less (bytes)", &kvpb.Compare{Key: []byte("k"), Target: tValue, Op: opLt, Value: []byte("n")}, true},
		{"value greater (bytes)", &kvpb.Compare{Key: []byte("k"), Target: tValue, Op: opGt, Value: []byte("ma")}, false},
		{"absent value empty", &kvpb.Compare{Key: []byte("none"), Target: tValue, Op: opEq}, true},
		{"exists", &kvpb.Compare{Key: []byte("k"), Target: tExists, Op: opEq, Exists: true}, true},
		{"absent does not exist", &kvpb.Compare{Key: []byte("none"), Target: tExists, Op: opEq, Exists: true}, false},
		{"not exists", &kvpb.Compare{Key: []byte("none"), Target: tExists, Op: opNe, Exists: true}, true},
		{"lock token", cmpNum("L", tToken, opEq, tok), true},
		{"lock token stale", cmpNum("L", tToken, opEq, tok-1), false},
		{"free lock 0", cmpNum("free", tToken, opEq, 0), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			res := h.ok(txnCmd(nil, []*kvpb.Compare{tt.c}, nil, nil)).GetTxn()
			if res.Succeeded != tt.want {
				t.Errorf("succeeded = %v, want %v", res.Succeeded, tt.want)
			}
		})
	}
	h.t = t
	// The holder's session is past its deadline (not yet expired by an
	// entry): the lock counts as free, token 0.
	h.at(1000)
	for _, c := range []*kvpb.Compare{cmpNum("gone", tToken, opEq, 0), cmpNum("L", tToken, opEq, 0)} {
		if !h.ok(txnCmd(nil, []*kvpb.Compare{c}, nil, nil)).GetTxn().Succeeded {
			t.Errorf("compare %v: a lock whose holder's session ended should have token 0", c)
		}
	}
	// All compares must hold.
	res := h.ok(txnCmd(nil, []*kvpb.Compare{cmpNum("k", tVersion, opEq, 2), cmpNum("k", tVersion, opEq, 3)},
		[]*kvpb.TxnOp{opPut("s", "1")}, []*kvpb.TxnOp{opPut("f", "1")})).GetTxn()
	if res.Succeeded || h.get("s") != nil || h.get("f") == nil {
		t.Errorf("one compare failing: succeeded %v, success ran %v, failure ran %v", res.Succeeded, h.get("s") != nil, h.get("f") != nil)
	}
	r := h.code(txnCmd(nil, []*kvpb.Compare{{Key: []byte("k"), Target: tExists, Op: opLt}}, nil, nil), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if !strings.HasPrefix(r.Message, "compares[0].op") {
		t.Errorf("message %q does not name compares[0].op", r.Message)
	}
}

func TestTxnOpsSeeEarlierOps(t *testing.T) {
	h := newHarness(t)
	h.ok(put("a", "old", 0))
	h.ok(put("p/1", "1", 0))
	h.ok(put("p/2", "2", 0))
	h.at(10)
	evs := h.applyEv(txnCmd(nil, []*kvpb.Compare{cmpNum("a", tVersion, opEq, 1)}, []*kvpb.TxnOp{
		opGet("a"),
		opPut("a", "new"),
		opGet("a"),
		opDel("p/", true),
		opGet("p/1"),
		opPutReq(&kvpb.PutRequest{Key: []byte("t"), Value: []byte("x"), TtlMs: 500}),
		opDel("zzz", false),
	}, nil))
	res := h.f.Get([]byte("a"), h.f.LogTime())
	if string(res.Value) != "new" {
		t.Fatalf("a = %q, want new", res.Value)
	}
	if got, want := describe(evs), []string{"PUT a =new v2 prev=old", "DELETE p/1 prev=1", "DELETE p/2 prev=2", "PUT t =x v1"}; !slices.Equal(got, want) {
		t.Errorf("events = %q, want %q", got, want)
	}
	for _, e := range evs {
		if e.Change.Index != h.index {
			t.Errorf("event index %d, want the txn's %d", e.Change.Index, h.index)
		}
	}
	if kv := h.get("t"); kv.ExpiresAt != t0+510*ms {
		t.Errorf("t expires at %d, want now + 500 ms", kv.ExpiresAt)
	}

	// The same txn, its results.
	h2 := newHarness(t)
	h2.ok(put("a", "old", 0))
	h2.ok(put("p/1", "1", 0))
	h2.ok(put("p/2", "2", 0))
	r := h2.ok(txnCmd(nil, []*kvpb.Compare{cmpNum("a", tVersion, opEq, 1)}, []*kvpb.TxnOp{
		opGet("a"), opPut("a", "new"), opGet("a"), opDel("p/", true), opGet("p/1"), opDel("zzz", false),
	}, nil)).GetTxn()
	if !r.Succeeded || len(r.Results) != 6 {
		t.Fatalf("txn = %v", r)
	}
	if g := r.Results[0].GetGet().GetKv(); string(g.GetValue()) != "old" || g.GetVersion() != 1 {
		t.Errorf("get before put = %v, want old v1", g)
	}
	if p := r.Results[1].GetPut().GetKv(); string(p.GetValue()) != "new" || p.GetVersion() != 2 || p.GetModIndex() != 4 {
		t.Errorf("put = %v, want new v2 mod 4", p)
	}
	if g := r.Results[2].GetGet().GetKv(); string(g.GetValue()) != "new" || g.GetModIndex() != 4 {
		t.Errorf("get after put = %v, want new mod 4", g)
	}
	if d := r.Results[3].GetDelete().GetDeleted(); d != 2 {
		t.Errorf("delete prefix = %d, want 2", d)
	}
	if g := r.Results[4].GetGet(); g == nil || g.Kv != nil {
		t.Errorf("get of a key the txn deleted = %v, want an empty get", r.Results[4])
	}
	if d := r.Results[5].GetDelete(); d == nil || d.Deleted != 0 {
		t.Errorf("delete of an absent key = %v, want 0", r.Results[5])
	}
}

func TestTxnFailingCheckChangesNothing(t *testing.T) {
	h := newHarness(t)
	s1 := h.session(60000)
	s2 := h.session(60000)
	h.ok(putBound("owned", "1", s2, false))
	h.ok(put("a", "1", 0))
	tests := []struct {
		name string
		ops  []*kvpb.TxnOp
		code kvpb.ErrorCode
		msg  string
	}{
		{"if_absent on an existing key", []*kvpb.TxnOp{opPut("b", "1"), opDel("a", false), opPutReq(&kvpb.PutRequest{Key: []byte("owned"), IfAbsent: true, Session: s1})},
			kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS, "success[2].put.if_absent"},
		{"ended session", []*kvpb.TxnOp{opPut("b", "1"), opPutReq(&kvpb.PutRequest{Key: []byte("c"), Session: 999})},
			kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, "success[1].put.session"},
		{"if_absent of a key an earlier op put", []*kvpb.TxnOp{opPut("new", "1"), opPutReq(&kvpb.PutRequest{Key: []byte("new"), IfAbsent: true})},
			kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS, "success[1].put.if_absent"},
		{"fence in an op", []*kvpb.TxnOp{opPut("b", "1"), opPutReq(&kvpb.PutRequest{Key: []byte("c"), Fence: &kvpb.Fence{Lock: []byte("L"), Token: 1}})},
			kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "success[1].put.fence"},
		{"expected_version in an op", []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("a"), ExpectedVersion: u64(1)}}}},
			kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "success[0].delete.expected_version"},
		{"no op", []*kvpb.TxnOp{opPut("b", "1"), {}}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "success[1].op"},
	}
	all := func() []*kvpb.KeyValue {
		kvs, _ := h.f.List(nil, nil, 0, 0, false, h.f.LogTime())
		return kvs
	}
	kvsBefore, keysBefore := all(), h.sessionKeys(s2)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			cmd := txnCmd(nil, nil, tt.ops, nil)
			evs := h.applyEv(cmd)
			if len(evs) != 0 {
				t.Errorf("a refused txn emitted events %q", describe(evs))
			}
			res := h.code(cmd, tt.code)
			if !strings.HasPrefix(res.Message, tt.msg) {
				t.Errorf("message %q, want it to start with %q", res.Message, tt.msg)
			}
			if kvs := all(); !slices.EqualFunc(kvs, kvsBefore, func(a, b *kvpb.KeyValue) bool { return proto.Equal(a, b) }) {
				t.Errorf("a refused txn changed the keys: %v, was %v", kvs, kvsBefore)
			}
			if n := h.sessionKeys(s2); n != keysBefore {
				t.Errorf("a refused txn changed the session's keys: %d, was %d", n, keysBefore)
			}
		})
	}
	h.t = t
	// The failure branch is named too.
	res := h.code(txnCmd(nil, []*kvpb.Compare{cmpNum("a", tVersion, opEq, 9)}, nil,
		[]*kvpb.TxnOp{opPutReq(&kvpb.PutRequest{Key: []byte("a"), IfAbsent: true})}), kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS)
	if !strings.HasPrefix(res.Message, "failure[0].put") {
		t.Errorf("message %q does not name failure[0].put", res.Message)
	}
}

func TestTxnBindsKeysToSessions(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	r := h.ok(txnCmd(nil, []*kvpb.Compare{{Key: []byte("leader"), Target: tExists, Op: opEq}},
		[]*kvpb.TxnOp{opPutReq(&kvpb.PutRequest{Key: []byte("leader"), Value: []byte("me"), Session: s, IfAbsent: true})}, nil)).GetTxn()
	if !r.Succeeded || r.Results[0].GetPut().GetKv().GetSession() != s {
		t.Fatalf("txn = %v", r)
	}
	if n := h.sessionKeys(s); n != 1 {
		t.Errorf("session keys = %d, want 1", n)
	}
	h.ok(closeSession(s))
	if h.get("leader") != nil {
		t.Error("key bound by a txn outlived its session")
	}
}

func TestTxnDedupRetry(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	h.ok(put("g1", "first", 0))
	h.ok(put("g2", "same", 0))
	cmd := func() *kvpb.Command {
		return txnCmd(hdr(s, 1), []*kvpb.Compare{{Key: []byte("g1"), Target: tExists, Op: opEq, Exists: true}},
			[]*kvpb.TxnOp{opPut("p", "written"), opGet("g1"), opGet("g2"), opGet("p"), opGet("absent")}, nil)
	}
	first := h.ok(cmd()).GetTxn()
	h.ok(put("g1", "changed", 0))
	retry := h.ok(cmd()).GetTxn()
	if v := h.get("p").Version; v != 1 {
		t.Fatalf("retry applied the txn again: p version %d", v)
	}
	if !retry.Succeeded || len(retry.Results) != 5 {
		t.Fatalf("retry = %v", retry)
	}
	if p := retry.Results[0].GetPut().GetKv(); string(p.GetKey()) != "p" || string(p.GetValue()) != "written" || p.GetModIndex() != first.Results[0].GetPut().GetKv().GetModIndex() {
		t.Errorf("retried put = %v, want the first answer with key and value", p)
	}
	g1 := retry.Results[1]
	if !g1.ValueUnavailable || g1.GetGet().GetKv().GetValue() != nil || string(g1.GetGet().GetKv().GetKey()) != "g1" ||
		g1.GetGet().GetKv().GetModIndex() != first.Results[1].GetGet().GetKv().GetModIndex() {
		t.Errorf("retried get of a changed key = %v, want value_unavailable with the first metadata", g1)
	}
	if g2 := retry.Results[2]; g2.ValueUnavailable || string(g2.GetGet().GetKv().GetValue()) != "same" {
		t.Errorf("retried get of an unchanged key = %v, want its value", g2)
	}
	if gp := retry.Results[3]; gp.ValueUnavailable || string(gp.GetGet().GetKv().GetValue()) != "written" {
		t.Errorf("retried get of the txn's own put = %v, want its value", gp)
	}
	if ga := retry.Results[4]; ga.ValueUnavailable || ga.GetGet() == nil || ga.GetGet().Kv != nil {
		t.Errorf("retried get of an absent key = %v, want an empty get", ga)
	}
	// What is remembered holds no keys or values.
	se := h.f.s.sessions[s]
	d, _ := se.dedup.Get(dedupEntry{seq: 1})
	for i, r := range d.res.GetTxn().GetResults() {
		kv := r.GetPut().GetKv()
		if kv == nil {
			kv = r.GetGet().GetKv()
		}
		if kv.GetKey() != nil || kv.GetValue() != nil {
			t.Errorf("remembered result %d keeps key %q value %q", i, kv.GetKey(), kv.GetValue())
		}
	}

	// Touch: remembered without its key, answered with it.
	h.ok(touchReq(hdr(s, 2), "g2", 5000))
	r := h.ok(touchReq(hdr(s, 2), "g2", 5000)).GetTouch()
	if string(r.GetKv().GetKey()) != "g2" {
		t.Errorf("retried touch kv = %v, want key g2", r.GetKv())
	}
}

func touchReq(hd *kvpb.RequestHeader, key string, ttlMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Touch{Touch: &kvpb.TouchRequest{Header: hd, Key: []byte(key), TtlMs: ttlMs}}}
}
