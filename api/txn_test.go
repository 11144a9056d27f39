package api

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func tPut(key string) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte(key), Value: []byte("v")}}}
}

func tDel(key string, prefix bool) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte(key), Prefix: prefix}}}
}

func tGet(key string) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: []byte(key)}}}
}

func TestTxnValidation(t *testing.T) {
	b, conn := serveFake(t, Config{})
	kvc := kvpb.NewKVClient(conn)
	ctx := t.Context()
	lim := node.DefaultLimits()
	many := func(n int) []*kvpb.TxnOp {
		ops := make([]*kvpb.TxnOp, n)
		for i := range ops {
			ops[i] = tGet("k")
		}
		return ops
	}
	manyCmp := make([]*kvpb.Compare, lim.MaxTxnOps+1)
	for i := range manyCmp {
		manyCmp[i] = &kvpb.Compare{Key: []byte("k")}
	}
	big := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	tests := []struct {
		name  string
		req   *kvpb.TxnRequest
		field string
		limit int64
	}{
		{"too many compares", &kvpb.TxnRequest{Compares: manyCmp}, "compares", int64(lim.MaxTxnOps)},
		{"too many success ops", &kvpb.TxnRequest{Success: many(lim.MaxTxnOps + 1)}, "success", int64(lim.MaxTxnOps)},
		{"too many failure ops", &kvpb.TxnRequest{Failure: many(lim.MaxTxnOps + 1)}, "failure", int64(lim.MaxTxnOps)},
		{"fence in a put", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tGet("k"), {Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte("k"),
			Fence: &kvpb.Fence{Lock: []byte("l"), Token: 1}}}}}}, "success[1].put.fence", 0},
		{"header in a put", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte("k"),
			Header: &kvpb.RequestHeader{Session: 1}}}}}}, "success[0].put.header", 0},
		{"expected_version in a delete", &kvpb.TxnRequest{Failure: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("k"),
			ExpectedVersion: new(uint64)}}}}}, "failure[0].delete.expected_version", 0},
		{"consistency in a get", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: []byte("k"),
			Consistency: kvpb.Consistency_CONSISTENCY_STALE}}}}}, "success[0].get.consistency", 0},
		{"empty op", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{{}}}, "success[0]", 0},
		{"empty put key", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tPut("")}}, "success[0].put.key", int64(lim.MaxKeyBytes)},
		{"empty get key", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tGet("")}}, "success[0].get.key", int64(lim.MaxKeyBytes)},
		{"empty compare key", &kvpb.TxnRequest{Compares: []*kvpb.Compare{{}}}, "compares[0].key", int64(lim.MaxKeyBytes)},
		{"long put key", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tPut(string(big(lim.MaxKeyBytes + 1)))}}, "success[0].put.key", int64(lim.MaxKeyBytes)},
		{"long value", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte("k"),
			Value: big(lim.MaxValueBytes + 1)}}}}}, "success[0].put.value", int64(lim.MaxValueBytes)},
		{"long compare value", &kvpb.TxnRequest{Compares: []*kvpb.Compare{{Key: []byte("k"), Target: kvpb.CompareTarget_COMPARE_TARGET_VALUE,
			Value: big(lim.MaxValueBytes + 1)}}}, "compares[0].value", int64(lim.MaxValueBytes)},
		{"exists with less", &kvpb.TxnRequest{Compares: []*kvpb.Compare{{Key: []byte("k"), Target: kvpb.CompareTarget_COMPARE_TARGET_EXISTS,
			Op: kvpb.CompareOp_COMPARE_OP_LESS}}}, "compares[0].op", 0},
		{"short put ttl", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte("k"),
			TtlMs: 1}}}}}, "success[0].put.ttl_ms", lim.MinTTL.Milliseconds()},
		{"two puts of a key", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tPut("k"), tGet("k"), tPut("k")}}, "success[2].put.key", 0},
		{"put and delete of a key", &kvpb.TxnRequest{Failure: []*kvpb.TxnOp{tPut("k"), tDel("k", false)}}, "failure[1].delete.key", 0},
		{"put under a delete-prefix", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tDel("a/", true), tPut("a/x")}}, "success[1].put.key", 0},
		{"delete-prefix over a put", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tPut("a/x"), tDel("a", true)}}, "success[1].delete.key", 0},
		{"nested delete-prefixes", &kvpb.TxnRequest{Success: []*kvpb.TxnOp{tDel("a/b/", true), tDel("a/", true)}}, "success[1].delete.key", 0},
	}
	before := b.f.AppliedIndex()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kvc.Txn(ctx, tt.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error = %v, want InvalidArgument", err)
			}
			info := node.ErrorInfo(status.Convert(err))
			if info.GetField() != tt.field || info.GetLimit() != tt.limit {
				t.Errorf("ErrorInfo field %q limit %d, want %q, %d (%v)", info.GetField(), info.GetLimit(), tt.field, tt.limit, err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.field) {
				t.Errorf("message %q does not name %q", msg, tt.field)
			}
			if tt.limit == int64(lim.MaxTxnOps) && !strings.Contains(status.Convert(err).Message(), "--max-txn-ops") {
				t.Errorf("message %q does not name the flag --max-txn-ops", status.Convert(err).Message())
			}
		})
	}
	// A key read twice, or written in each branch once, is fine; a put
	// beside a delete-prefix that does not cover it too.
	ok := &kvpb.TxnRequest{
		Compares: []*kvpb.Compare{{Key: []byte("k"), Target: kvpb.CompareTarget_COMPARE_TARGET_EXISTS, Op: kvpb.CompareOp_COMPARE_OP_NOT_EQUAL, Exists: true}},
		Success:  append(many(lim.MaxTxnOps-3), tPut("k"), tDel("a/", true), tPut("b")),
		Failure:  []*kvpb.TxnOp{tPut("k")},
	}
	if _, err := kvc.Txn(ctx, ok); err != nil {
		t.Fatalf("a txn at the limits: %v", err)
	}
	if got := b.f.AppliedIndex(); got != before+1 {
		t.Errorf("applied index %d -> %d: want only the valid txn proposed", before, got)
	}

	// Delete: expected_version with prefix is refused before proposing.
	_, err := kvc.Delete(ctx, &kvpb.DeleteRequest{Key: []byte("a/"), Prefix: true, ExpectedVersion: new(uint64)})
	if info := node.ErrorInfo(status.Convert(err)); status.Code(err) != codes.InvalidArgument || info.GetField() != "expected_version" {
		t.Errorf("delete prefix with expected_version = %v, want InvalidArgument naming expected_version", err)
	}
	_, err = kvc.Touch(ctx, &kvpb.TouchRequest{Key: []byte("k"), TtlMs: -1})
	if info := node.ErrorInfo(status.Convert(err)); status.Code(err) != codes.InvalidArgument || info.GetField() != "ttl_ms" {
		t.Errorf("touch with a negative ttl = %v, want InvalidArgument naming ttl_ms", err)
	}
	if got := b.f.AppliedIndex(); got != before+1 {
		t.Errorf("applied index %d -> %d: refused requests were proposed", before+1, got)
	}
}

func TestKVTxnTouchDeletePrefixServed(t *testing.T) {
	_, conn := serveFake(t, Config{})
	kvc, sc := kvpb.NewKVClient(conn), kvpb.NewSessionClient(conn)
	ctx := t.Context()
	sr, err := sc.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	sid := sr.GetSession().GetId()
	r, err := kvc.Txn(ctx, &kvpb.TxnRequest{
		Header: &kvpb.RequestHeader{Session: sid, Seq: 1},
		Compares: []*kvpb.Compare{{Key: []byte("leader"), Target: kvpb.CompareTarget_COMPARE_TARGET_EXISTS,
			Op: kvpb.CompareOp_COMPARE_OP_EQUAL, Exists: false}},
		Success: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte("leader"), Value: []byte("me"), Session: sid}}}, tGet("leader")},
	})
	if err != nil || !r.GetSucceeded() || len(r.GetResults()) != 2 || r.GetHeader().GetAppliedIndex() == 0 {
		t.Fatalf("Txn = %v, %v", r, err)
	}
	if g := r.GetResults()[1].GetGet().GetKv(); string(g.GetValue()) != "me" || g.GetSession() != sid {
		t.Errorf("get in the txn = %v, want value me bound to %d", g, sid)
	}
	info, err := sc.Get(ctx, &kvpb.GetSessionRequest{Id: sid})
	if err != nil || info.GetSession().GetKeys() != 1 {
		t.Errorf("Session.Get = %v, %v; want keys 1", info, err)
	}
	_, err = kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("leader"), Value: []byte("other"), IfAbsent: true})
	if c, k := codeOf(err); c != codes.AlreadyExists || k != kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS {
		t.Errorf("if_absent put of an existing key = %v, want AlreadyExists KEY_EXISTS", err)
	}
	tr, err := kvc.Touch(ctx, &kvpb.TouchRequest{Key: []byte("leader"), TtlMs: 5000})
	if err != nil || tr.GetKv().GetExpiresAt() == 0 || tr.GetKv().GetVersion() != 1 || tr.GetKv().GetValue() != nil {
		t.Errorf("Touch = %v, %v", tr, err)
	}
	if _, err := kvc.Touch(ctx, &kvpb.TouchRequest{Key: []byte("nope"), TtlMs: 5000}); status.Code(err) != codes.NotFound {
		t.Errorf("Touch of an absent key = %v, want NotFound", err)
	}
	for _, k := range []string{"p/1", "p/2", "q"} {
		if _, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte(k), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	dr, err := kvc.Delete(ctx, &kvpb.DeleteRequest{Key: []byte("p/"), Prefix: true})
	if err != nil || dr.GetDeleted() != 2 {
		t.Errorf("Delete prefix = %v, %v; want 2 deleted", dr, err)
	}
	// Closing the session deletes its key.
	if _, err := sc.Close(ctx, &kvpb.CloseSessionRequest{Id: sid}); err != nil {
		t.Fatal(err)
	}
	if _, err := kvc.Get(ctx, &kvpb.GetRequest{Key: []byte("leader")}); status.Code(err) != codes.NotFound {
		t.Errorf("Get of a key bound to a closed session = %v, want NotFound", err)
	}
	// A put naming the ended session is refused before proposing.
	_, err = kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("x"), Session: sid})
	if _, k := codeOf(err); k != kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED {
		t.Errorf("put bound to a closed session = %v, want SESSION_EXPIRED", err)
	}
}

func TestTxnPermissions(t *testing.T) {
	_, conn := serveFake(t, Config{})
	_, alice, bob := setUpAuth(t, conn)
	ctx := t.Context()
	actx, bctx := asUser(ctx, alice), asUser(ctx, bob)
	kvc, sc := kvpb.NewKVClient(conn), kvpb.NewSessionClient(conn)
	bs, err := sc.Create(bctx, &kvpb.CreateSessionRequest{TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	as, err := sc.Create(actx, &kvpb.CreateSessionRequest{TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	bobs, alices := bs.GetSession().GetId(), as.GetSession().GetId()
	cmp := func(key string, target kvpb.CompareTarget) []*kvpb.Compare {
		return []*kvpb.Compare{{Key: []byte(key), Target: target}}
	}
	bound := func(key string, session uint64) *kvpb.TxnOp {
		return &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte(key), Session: session}}}
	}
	allowed := map[string]*kvpb.TxnRequest{
		"own keys":               {Compares: cmp("a/x", kvpb.CompareTarget_COMPARE_TARGET_VERSION), Success: []*kvpb.TxnOp{tPut("a/x"), tGet("a/y")}, Failure: []*kvpb.TxnOp{tDel("a/z", true)}},
		"own lock token":         {Compares: cmp("a/l", kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN), Success: []*kvpb.TxnOp{tPut("a/x")}},
		"bind to own session":    {Success: []*kvpb.TxnOp{bound("a/e", alices)}},
		"delete-prefix under a/": {Success: []*kvpb.TxnOp{tDel("a/sub/", true)}},
	}
	for what, req := range allowed {
		if _, err := kvc.Txn(actx, req); err != nil {
			t.Errorf("alice txn %s: %v", what, err)
		}
	}
	refused := map[string]*kvpb.TxnRequest{
		"compare another's key":         {Compares: cmp("b/x", kvpb.CompareTarget_COMPARE_TARGET_VALUE), Success: []*kvpb.TxnOp{tPut("a/x")}},
		"lock token of another's lock":  {Compares: cmp("b/l", kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN)},
		"get another's key":             {Success: []*kvpb.TxnOp{tPut("a/x"), tGet("b/x")}},
		"put another's key in failure":  {Success: []*kvpb.TxnOp{tPut("a/x")}, Failure: []*kvpb.TxnOp{tPut("b/x")}},
		"delete another's key":          {Success: []*kvpb.TxnOp{tDel("b/x", false)}},
		"delete-prefix wider than a/":   {Success: []*kvpb.TxnOp{tDel("a", true)}},
		"bind to another's session":     {Success: []*kvpb.TxnOp{bound("a/e2", bobs)}},
		"another's session as a header": {Header: &kvpb.RequestHeader{Session: bobs, Seq: 1}, Success: []*kvpb.TxnOp{tPut("a/x")}},
	}
	for what, req := range refused {
		if _, err := kvc.Txn(actx, req); status.Code(err) != codes.PermissionDenied {
			t.Errorf("alice txn %s = %v, want PermissionDenied", what, err)
		}
	}
	if _, err := kvc.Get(actx, &kvpb.GetRequest{Key: []byte("a/e2")}); status.Code(err) != codes.NotFound {
		t.Errorf("a refused txn wrote a/e2: %v", err)
	}
	// The lone requests check the same.
	if _, err := kvc.Put(actx, &kvpb.PutRequest{Key: []byte("a/e3"), Session: bobs}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice put bound to bob's session = %v, want PermissionDenied", err)
	}
	if _, err := kvc.Delete(actx, &kvpb.DeleteRequest{Key: []byte(""), Prefix: true}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice delete of every key = %v, want PermissionDenied", err)
	}
	if _, err := kvc.Touch(actx, &kvpb.TouchRequest{Key: []byte("b/x"), TtlMs: 5000}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice touch of b/x = %v, want PermissionDenied", err)
	}
}
