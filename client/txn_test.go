package client

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// The builder makes the request the proto describes.
func TestTxnRequest(t *testing.T) {
	k := []byte("k")
	got, err := (&Txn{}).
		If(Compare(Version(k), "=", 7),
			Compare(Value(k), "!=", "x"),
			Compare(Value(k), "<", []byte{0xff}),
			Compare(CreateIndex(k), ">", uint64(3)),
			Compare(ModIndex(k), "<", int32(9)),
			Compare(Exists(k), "=", false),
			Compare(LockToken([]byte("L")), "==", 42)).
		Then(OpPut(k, []byte("v"), WithTTL(1500*time.Microsecond), WithSession(12), WithIfAbsent()),
			OpDelete([]byte("d")),
			OpDeletePrefix([]byte("p/")),
			OpGet(k)).
		Else(OpGet([]byte("other"))).
		Request()
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	want := &kvpb.TxnRequest{
		Compares: []*kvpb.Compare{
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_VERSION, Op: kvpb.CompareOp_COMPARE_OP_EQUAL, Number: 7},
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_VALUE, Op: kvpb.CompareOp_COMPARE_OP_NOT_EQUAL, Value: []byte("x")},
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_VALUE, Op: kvpb.CompareOp_COMPARE_OP_LESS, Value: []byte{0xff}},
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX, Op: kvpb.CompareOp_COMPARE_OP_GREATER, Number: 3},
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX, Op: kvpb.CompareOp_COMPARE_OP_LESS, Number: 9},
			{Key: k, Target: kvpb.CompareTarget_COMPARE_TARGET_EXISTS, Op: kvpb.CompareOp_COMPARE_OP_EQUAL, Exists: false},
			{Key: []byte("L"), Target: kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN, Op: kvpb.CompareOp_COMPARE_OP_EQUAL, Number: 42},
		},
		Success: []*kvpb.TxnOp{
			{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: k, Value: []byte("v"), TtlMs: 2, Session: 12, IfAbsent: true}}},
			{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("d")}}},
			{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("p/"), Prefix: true}}},
			{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: k}}},
		},
		Failure: []*kvpb.TxnOp{{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: []byte("other")}}}},
	}
	if !proto.Equal(got, want) {
		t.Errorf("Request() =\n%v\nwant\n%v", got, want)
	}
}

// A compare or op made wrong fails Commit before anything is sent, naming
// the compare or op and what is wrong.
func TestTxnArgumentErrors(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	k := []byte("k")
	tests := []struct {
		name      string
		txn       *Txn
		wantField string
		wantMsg   string
	}{
		{"bad operator", c.Txn().If(Compare(Version(k), "<=", 1)), "compares[0]", `operator "<="`},
		{"negative number", c.Txn().If(Compare(Version(k), "=", 1), Compare(ModIndex(k), ">", -1)), "compares[1]", "mod index: -1 is negative"},
		{"string for a number", c.Txn().If(Compare(CreateIndex(k), "=", "3")), "compares[0]", "want an integer, got string"},
		{"number for a value", c.Txn().If(Compare(Value(k), "=", 3)), "compares[0]", "want a []byte or a string, got int"},
		{"exists not bool", c.Txn().If(Compare(Exists(k), "=", "yes")), "compares[0]", "want a bool"},
		{"exists less", c.Txn().If(Compare(Exists(k), "<", true)), "compares[0]", "want = or !="},
		{"zero compare", c.Txn().If(Cmp{}), "compares[0]", "not made by"},
		{"put expected version", c.Txn().Then(OpGet(k), OpPut(k, nil, WithExpectedVersion(1))), "success[1]", "WithExpectedVersion"},
		{"put fence", c.Txn().Else(OpPut(k, nil, WithFence([]byte("L"), 1))), "failure[0]", "WithFence"},
		{"zero op", c.Txn().Then(Op{}), "success[0]", "not made by"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.txn.Commit(t.Context())
			var e *Error
			if !errors.Is(err, ErrInvalidArgument) || !errors.As(err, &e) {
				t.Fatalf("Commit = %v, want ErrInvalidArgument", err)
			}
			if e.Field != tt.wantField || !strings.Contains(e.Msg, tt.wantMsg) || !strings.Contains(e.Msg, tt.wantField) {
				t.Errorf("Commit = %q (field %q), want field %q and a message naming it with %q", e.Msg, e.Field, tt.wantField, tt.wantMsg)
			}
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.txns) != 0 {
		t.Errorf("the server received %d transactions, want none", len(f.txns))
	}
}

// A transaction whose answer is lost is retried with the same (session,
// seq) and the same body, so the server applies it once; the caller gets
// the answer of the attempt that got through.
func TestTxnRetryKeepsSequence(t *testing.T) {
	f := newFake(t, "a", "b")
	f.onTxn = func(n int, req *kvpb.TxnRequest) (*kvpb.TxnResponse, error) {
		if n == 1 {
			return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
		}
		return &kvpb.TxnResponse{Succeeded: false, Results: []*kvpb.TxnOpResult{
			{Result: &kvpb.TxnOpResult_Get{Get: &kvpb.GetResponse{Kv: &kvpb.KeyValue{Key: []byte("k"), Value: []byte("v")}}}},
		}}, nil
	}
	c := f.client(t, "a", "b")
	resp, err := c.Txn().
		If(Compare(Value([]byte("k")), "=", "x")).
		Then(OpPut([]byte("k"), []byte("y"))).
		Else(OpGet([]byte("k"))).
		Commit(t.Context())
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if resp.GetSucceeded() || len(resp.GetResults()) != 1 || string(resp.GetResults()[0].GetGet().GetKv().GetValue()) != "v" {
		t.Errorf("Commit = %v, want the failure branch with get k = v", resp)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.txns) != 2 {
		t.Fatalf("the server received %d attempts, want 2", len(f.txns))
	}
	h1, h2 := f.txns[0].GetHeader(), f.txns[1].GetHeader()
	if h1.GetSession() == 0 || h1.GetSession() != h2.GetSession() || h1.GetSeq() != h2.GetSeq() {
		t.Errorf("attempts carried (%d, %d) and (%d, %d), want the same (session, seq)", h1.GetSession(), h1.GetSeq(), h2.GetSession(), h2.GetSeq())
	}
	if !proto.Equal(f.txns[0], f.txns[1]) {
		t.Errorf("attempts differ:\n%v\n%v", f.txns[0], f.txns[1])
	}
}

// A Txn made without a client can build a request but not commit it.
func TestTxnWithoutClient(t *testing.T) {
	if _, err := (&Txn{}).Then(OpGet([]byte("k"))).Commit(t.Context()); err == nil || !strings.Contains(err.Error(), "not made by Client.Txn") {
		t.Errorf("Commit of a zero Txn = %v, want an error saying to use Client.Txn", err)
	}
}

// Session.Txn runs under that session, and refuses to once it is closed.
func TestSessionTxn(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	s, err := c.NewSession(t.Context(), time.Minute, "t")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	if _, err := s.Txn().Then(OpGet([]byte("k"))).Commit(t.Context()); err != nil {
		t.Fatalf("Session.Txn Commit: %v", err)
	}
	f.mu.Lock()
	got := f.txns[0].GetHeader().GetSession()
	f.mu.Unlock()
	if got != s.ID() {
		t.Errorf("Session.Txn carried session %d, want %d", got, s.ID())
	}
	s.Close(t.Context())
	if _, err := s.Txn().Commit(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit on a closed session = %v, want ErrClosed", err)
	}
}
