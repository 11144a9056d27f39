package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// pipeCall builds a call of method with req encoded.
func pipeCall(t *testing.T, tag uint64, method string, req proto.Message) *kvpb.PipelineCall {
	t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return &kvpb.PipelineCall{Tag: tag, Method: method, Request: b}
}

// recvAnswers reads answers until it has n, by tag.
func recvAnswers(t *testing.T, st kvpb.KV_PipelineClient, n int) map[uint64]*kvpb.PipelineAnswer {
	t.Helper()
	got := make(map[uint64]*kvpb.PipelineAnswer)
	for len(got) < n {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv with %d of %d answers: %v", len(got), n, err)
		}
		for _, a := range r.GetAnswers() {
			if _, dup := got[a.GetTag()]; dup {
				t.Fatalf("tag %d answered twice", a.GetTag())
			}
			got[a.GetTag()] = a
		}
	}
	return got
}

// answerStatus decodes an answer's status (nil when it succeeded).
func answerStatus(t *testing.T, a *kvpb.PipelineAnswer) *status.Status {
	t.Helper()
	if len(a.GetStatus()) == 0 {
		return nil
	}
	var sp spb.Status
	if err := proto.Unmarshal(a.GetStatus(), &sp); err != nil {
		t.Fatalf("tag %d: status does not decode: %v", a.GetTag(), err)
	}
	return status.FromProto(&sp)
}

// TestPipelineAnswersAsUnary: calls on one message and on several are
// answered by tag with what the unary calls answer: a value, NOT_FOUND with
// kvd's ErrorInfo, INVALID_ARGUMENT naming the field; an unknown method and
// a request that does not decode are refused for their tag alone, and the
// stream goes on; after the client closes its side, what is in flight is
// answered and the stream ends cleanly.
func TestPipelineAnswersAsUnary(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	st, err := kvpb.NewKVClient(conn).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	calls := []*kvpb.PipelineCall{
		pipeCall(t, 1, kvpb.KV_Put_FullMethodName, &kvpb.PutRequest{Key: []byte("k"), Value: []byte("v1")}),
		pipeCall(t, 2, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: []byte("missing")}),
		pipeCall(t, 3, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: nil}),
		pipeCall(t, 4, "/kvd.v1.Auth/UserList", &kvpb.UserListRequest{}),
		{Tag: 5, Method: kvpb.KV_Get_FullMethodName, Request: []byte{0xff, 0xff, 0xff}},
	}
	if err := st.Send(&kvpb.PipelineRequest{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	got := recvAnswers(t, st, len(calls))
	if s := answerStatus(t, got[1]); s != nil {
		t.Fatalf("put: %v", s.Err())
	}
	var put kvpb.PutResponse
	if err := proto.Unmarshal(got[1].GetResponse(), &put); err != nil || put.GetHeader().GetAppliedIndex() == 0 {
		t.Fatalf("put answer %v (%v), want a header with the entry's index", &put, err)
	}
	if s := answerStatus(t, got[2]); s == nil || s.Code() != codes.NotFound || node.ErrorInfo(s).GetCode() != kvpb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Errorf("get of a missing key: %v, want NOT_FOUND with kvd's ErrorInfo", s)
	}
	if s := answerStatus(t, got[3]); s == nil || s.Code() != codes.InvalidArgument || node.ErrorInfo(s).GetField() != "key" {
		t.Errorf("get of an empty key: %v, want INVALID_ARGUMENT naming key", s)
	}
	if s := answerStatus(t, got[4]); s == nil || s.Code() != codes.Unimplemented {
		t.Errorf("an Auth method: %v, want UNIMPLEMENTED", s)
	}
	if s := answerStatus(t, got[5]); s == nil || s.Code() != codes.InvalidArgument {
		t.Errorf("a request that does not decode: %v, want INVALID_ARGUMENT", s)
	}

	// The stream goes on: the value put above, read in a message of its own.
	if err := st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{
		pipeCall(t, 6, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: []byte("k")}),
	}}); err != nil {
		t.Fatal(err)
	}
	var g kvpb.GetResponse
	a := recvAnswers(t, st, 1)[6]
	if err := proto.Unmarshal(a.GetResponse(), &g); err != nil || string(g.GetKv().GetValue()) != "v1" {
		t.Fatalf("get after the refusals: %v (%v, status %v), want v1", &g, err, answerStatus(t, a))
	}

	// Closing the client's side: the call sent just before is still
	// answered, then the stream ends without an error.
	if err := st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{
		pipeCall(t, 7, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: []byte("k")}),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	recvAnswers(t, st, 1)
	if _, err := st.Recv(); err == nil || status.Code(err) != codes.OK && err.Error() != "EOF" {
		t.Fatalf("Recv after the last answer: %v, want the stream's clean end", err)
	}
}

// TestPipelineBoundsCallsInFlight: a connection holds at most
// MaxConcurrentStreams pipelined calls in flight. With a lock held and
// limit+4 acquires that wait sent at once, exactly limit of them join the
// lock's line; the server reads the other 4 only as answers leave, and in
// the end every call is answered.
func TestPipelineBoundsCallsInFlight(t *testing.T) {
	const limit = 8
	b := newFakeBackend()
	lim := node.DefaultLimits()
	lim.MaxConcurrentStreams = limit
	b.limits = &lim
	conn := serveBackend(t, b, Config{})
	ctx := testCtx(t, 20*time.Second)
	name := []byte("l")
	sessions := make([]uint64, limit+5)
	for i := range sessions {
		sessions[i] = createSession(t, ctx, conn)
	}
	lk := kvpb.NewLockClient(conn)
	if r, err := lk.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: sessions[0], Seq: 1}, Name: name}); err != nil || !r.GetAcquired() {
		t.Fatalf("first acquire: %v %v", r, err)
	}

	st, err := kvpb.NewKVClient(conn).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var calls []*kvpb.PipelineCall
	for i, id := range sessions[1:] {
		calls = append(calls, pipeCall(t, uint64(i+1), kvpb.Lock_Acquire_FullMethodName,
			&kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: id, Seq: 1}, Name: name, WaitMs: 1500}))
	}
	if err := st.Send(&kvpb.PipelineRequest{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	waiters := func() int {
		r, err := lk.Get(ctx, &kvpb.GetLockRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.GetLock().GetWaiters())
	}
	for deadline := time.Now().Add(5 * time.Second); waiters() != limit; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d acquires waiting after 5 s, want %d", waiters(), limit)
		}
	}
	time.Sleep(200 * time.Millisecond) // time for any call past the limit to have been read
	if n := waiters(); n != limit {
		t.Fatalf("%d acquires waiting with a limit of %d calls in flight", n, limit)
	}
	// Each wait ends after 1.5 s, freeing slots for the rest.
	got := recvAnswers(t, st, len(calls))
	if len(got) != len(calls) {
		t.Fatalf("%d answers, want %d", len(got), len(calls))
	}
}

// TestPipelineCallsCarryTheirOwnToken: with auth on, each call is checked
// with the token it carries, and a call without one with the identity the
// stream was opened with; a call with a token that is not valid is refused
// for its tag alone. A stream opened without any identity is refused.
func TestPipelineCallsCarryTheirOwnToken(t *testing.T) {
	_, conn := serveFake(t, Config{})
	root, alice, _ := setUpAuth(t, conn)
	ctx := testCtx(t, 10*time.Second)

	st, err := kvpb.NewKVClient(conn).Pipeline(asUser(ctx, alice))
	if err != nil {
		t.Fatal(err)
	}
	put := func(tag uint64, key, tok string) *kvpb.PipelineCall {
		c := pipeCall(t, tag, kvpb.KV_Put_FullMethodName, &kvpb.PutRequest{Key: []byte(key), Value: []byte("v")})
		if tok != "" {
			c.Authorization = "Bearer " + tok
		}
		return c
	}
	calls := []*kvpb.PipelineCall{
		put(1, "a/x", ""),        // the stream's identity: alice, on her prefix
		put(2, "b/x", ""),        // alice outside her prefix
		put(3, "b/y", root),      // root's own token, on the same stream
		put(4, "a/z", "garbage"), // a token that is not valid
	}
	if err := st.Send(&kvpb.PipelineRequest{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	got := recvAnswers(t, st, len(calls))
	if s := answerStatus(t, got[1]); s != nil {
		t.Errorf("alice's put on a/: %v", s.Err())
	}
	if s := answerStatus(t, got[2]); s == nil || node.ErrorInfo(s).GetCode() != kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Errorf("alice's put on b/: %v, want PERMISSION_DENIED", s)
	}
	if s := answerStatus(t, got[3]); s != nil {
		t.Errorf("root's put on b/ with its own token: %v", s.Err())
	}
	if s := answerStatus(t, got[4]); s == nil || s.Code() != codes.Unauthenticated {
		t.Errorf("a put with a bad token: %v, want UNAUTHENTICATED", s)
	}

	anon, err := kvpb.NewKVClient(conn).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The refusal may already have ended the stream (Send: io.EOF); Recv
	// has the status.
	anon.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{put(1, "a/x", alice)}})
	if _, err := anon.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a stream opened without a token while auth is on: %v, want UNAUTHENTICATED", err)
	}
}

// TestPipelineCallTimeout: a call's timeout_us bounds it on the server as
// a unary call's deadline does: an acquire told to wait 10 s in a call
// that gives itself 300 ms is answered when the 300 ms are up.
func TestPipelineCallTimeout(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	a, b := createSession(t, ctx, conn), createSession(t, ctx, conn)
	lk := kvpb.NewLockClient(conn)
	if _, err := lk.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Name: []byte("l")}); err != nil {
		t.Fatal(err)
	}
	st, err := kvpb.NewKVClient(conn).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := pipeCall(t, 1, kvpb.Lock_Acquire_FullMethodName,
		&kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Name: []byte("l"), WaitMs: 10_000})
	c.TimeoutUs = 300_000
	start := time.Now()
	if err := st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{c}}); err != nil {
		t.Fatal(err)
	}
	got := recvAnswers(t, st, 1)[1]
	took := time.Since(start)
	if s := answerStatus(t, got); s == nil || s.Code() != codes.DeadlineExceeded {
		t.Errorf("acquire past its call's timeout: %v, want DEADLINE_EXCEEDED", s)
	}
	if took > 5*time.Second {
		t.Errorf("answered after %v, want about the call's 300 ms", took)
	}
}

// TestPipelineStopDoesNotWaitForOpenStreams: Server.Stop with a Pipeline
// stream or a KeepAliveStream open (the Go client keeps both open on every
// connection) returns without waiting out its context (found by review:
// the handlers were blocked reading the client's next message).
func TestPipelineStopDoesNotWaitForOpenStreams(t *testing.T) {
	for _, kind := range []string{"pipeline", "keepalive-stream"} {
		t.Run(kind, func(t *testing.T) {
			b := newFakeBackend()
			s := New(b, Config{BcryptCost: bcrypt.MinCost})
			t.Cleanup(func() { close(b.done); b.hub.Close() })
			conn := serveOn(t, s)
			ctx := testCtx(t, 30*time.Second)
			if kind == "pipeline" {
				st, err := kvpb.NewKVClient(conn).Pipeline(ctx)
				if err != nil {
					t.Fatal(err)
				}
				st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{pipeCall(t, 1, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: []byte("k")})}})
				recvAnswers(t, st, 1)
			} else {
				id := createSession(t, ctx, conn)
				st, err := kvpb.NewSessionClient(conn).KeepAliveStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				renewOn(t, st, id, 1)
			}
			sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s.Stop(sctx)
			if sctx.Err() != nil {
				t.Fatalf("Stop waited out its whole context with a %s open", kind)
			}
		})
	}
}

// TestPipelineBoundsWhatAConnectionHolds: a connection may have at most
// maxPipeStreamsPerConn Pipeline streams, a message at most
// maxPipeCallsPerMessage calls (each bound refused with a status naming
// it), and the answer to an unknown method does not echo a huge name.
func TestPipelineBoundsWhatAConnectionHolds(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	var open []kvpb.KV_PipelineClient
	for range maxPipeStreamsPerConn {
		st, err := kvpb.NewKVClient(conn).Pipeline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{pipeCall(t, 1, kvpb.KV_Get_FullMethodName, &kvpb.GetRequest{Key: []byte("k")})}})
		recvAnswers(t, st, 1) // open for sure
		open = append(open, st)
	}
	extra, err := kvpb.NewKVClient(conn).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	extra.Send(&kvpb.PipelineRequest{})
	if _, err := extra.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream %d on one connection: %v, want RESOURCE_EXHAUSTED", maxPipeStreamsPerConn+1, err)
	}

	st := open[0]
	name := strings.Repeat("x", 1<<20)
	if err := st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{{Tag: 2, Method: name}}}); err != nil {
		t.Fatal(err)
	}
	if a := recvAnswers(t, st, 1)[2]; len(a.GetStatus()) > 512 {
		t.Errorf("the answer to a 1 MiB unknown method name is %d bytes", len(a.GetStatus()))
	}

	many := &kvpb.PipelineRequest{Calls: make([]*kvpb.PipelineCall, maxPipeCallsPerMessage+1)}
	for i := range many.Calls {
		many.Calls[i] = &kvpb.PipelineCall{Tag: uint64(i)}
	}
	st.Send(many)
	_, err = st.Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "1024") {
		t.Fatalf("a message of %d calls: %v, want INVALID_ARGUMENT naming the limit", len(many.Calls), err)
	}
}

// TestPipelineCallsIgnoreTheStreamsUserOnceAuthIsOff: a call is judged on
// the auth state now, as a unary call is: with auth turned off after the
// stream was opened by alice, a put outside her prefix succeeds (found by
// review: the stream's user was kept and still checked).
func TestPipelineCallsIgnoreTheStreamsUserOnceAuthIsOff(t *testing.T) {
	_, conn := serveFake(t, Config{})
	root, alice, _ := setUpAuth(t, conn)
	ctx := testCtx(t, 10*time.Second)
	st, err := kvpb.NewKVClient(conn).Pipeline(asUser(ctx, alice))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kvpb.NewAuthClient(conn).AuthDisable(asUser(ctx, root), &kvpb.AuthDisableRequest{}); err != nil {
		t.Fatal(err)
	}
	st.Send(&kvpb.PipelineRequest{Calls: []*kvpb.PipelineCall{
		pipeCall(t, 1, kvpb.KV_Put_FullMethodName, &kvpb.PutRequest{Key: []byte("b/y"), Value: []byte("v")}),
		{Tag: 2, Method: kvpb.Session_Create_FullMethodName, Request: []byte{0x12, 0x01, 0xff}}, // name "\xff"
	}})
	got := recvAnswers(t, st, 2)
	if s := answerStatus(t, got[1]); s != nil {
		t.Errorf("pipelined put on b/ with auth off: %v", s.Err())
	}
	if s := answerStatus(t, got[2]); s == nil || s.Code() != codes.InvalidArgument {
		t.Errorf("a session name that is not UTF-8: %v, want INVALID_ARGUMENT (it would break every snapshot)", s)
	}
}
