package api

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// countingBackend counts the renewals the stream handler queued.
type countingBackend struct {
	*fakeBackend
	queued atomic.Int64
}

func (b *countingBackend) RenewSessionAsync(id, tag uint64, done chan<- node.Renewal) {
	b.queued.Add(1)
	b.fakeBackend.RenewSessionAsync(id, tag, done)
}

func createSession(t *testing.T, ctx context.Context, conn *grpc.ClientConn) uint64 {
	t.Helper()
	r, err := kvpb.NewSessionClient(conn).Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 60_000})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return r.GetSession().GetId()
}

// renewOn sends one renewal on st and reads its answer.
func renewOn(t *testing.T, st kvpb.Session_KeepAliveStreamClient, id, tag uint64) *kvpb.KeepAliveStreamResponse {
	t.Helper()
	if err := st.Send(&kvpb.KeepAliveStreamRequest{Id: id, Tag: tag}); err != nil {
		t.Fatalf("Send(id %d): %v", id, err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatalf("Recv after renewing %d: %v", id, err)
	}
	if r.GetTag() != tag || r.GetId() != id {
		t.Fatalf("answer for tag %d id %d, want tag %d id %d", r.GetTag(), r.GetId(), tag, id)
	}
	return r
}

// TestKeepAliveStreamAnswersEachRenewal: renewals succeed with the
// session's new expiry and the entry's header; a bad id or an unknown
// session is answered for its tag with the error a unary KeepAlive gives,
// and the stream goes on.
func TestKeepAliveStreamAnswersEachRenewal(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	id := createSession(t, ctx, conn)
	st, err := kvpb.NewSessionClient(conn).KeepAliveStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := renewOn(t, st, id, 1)
	if first.GetError() != nil || first.GetSession().GetId() != id || first.GetHeader().GetAppliedIndex() == 0 {
		t.Fatalf("renewal = %v, want session %d with a header", first, id)
	}
	bad := renewOn(t, st, 0, 2)
	if bad.GetError().GetCode() != kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || bad.GetError().GetField() != "id" {
		t.Errorf("renewal of id 0 = %v, want INVALID_ARGUMENT naming id", bad)
	}
	gone := renewOn(t, st, 424242, 3)
	if gone.GetError().GetCode() != kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED || gone.GetErrorMessage() == "" {
		t.Errorf("renewal of an unknown session = %v, want SESSION_EXPIRED with a message", gone)
	}
	again := renewOn(t, st, id, 4)
	if again.GetError() != nil || again.GetSession().GetExpiresAt() <= first.GetSession().GetExpiresAt() {
		t.Errorf("renewal after refusals = %v, want expiry after %d", again, first.GetSession().GetExpiresAt())
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err == nil {
		t.Fatal("Recv after CloseSend with nothing in flight returned an answer, want the stream's end")
	}
}

// TestKeepAliveStreamOwnership: with auth on, a renewal of another user's
// session is PERMISSION_DENIED for its tag while the caller's own renew on
// the same stream; a stream without a token is refused; a token revoked
// while the stream is open (a password change) ends the stream.
func TestKeepAliveStreamOwnership(t *testing.T) {
	_, conn := serveFake(t, Config{})
	root, alice, bob := setUpAuth(t, conn)
	ctx := testCtx(t, 10*time.Second)
	aliceID := createSession(t, asUser(ctx, alice), conn)
	bobID := createSession(t, asUser(ctx, bob), conn)

	st, err := kvpb.NewSessionClient(conn).KeepAliveStream(asUser(ctx, bob))
	if err != nil {
		t.Fatal(err)
	}
	if r := renewOn(t, st, aliceID, 1); r.GetError().GetCode() != kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Errorf("bob renewing alice's session = %v, want PERMISSION_DENIED", r)
	}
	if r := renewOn(t, st, bobID, 2); r.GetError() != nil {
		t.Errorf("bob renewing his own session = %v, want it renewed", r)
	}
	rs, err := kvpb.NewSessionClient(conn).KeepAliveStream(asUser(ctx, root))
	if err != nil {
		t.Fatal(err)
	}
	if r := renewOn(t, rs, aliceID, 1); r.GetError() != nil {
		t.Errorf("an admin renewing alice's session = %v, want it renewed", r)
	}

	anon, err := kvpb.NewSessionClient(conn).KeepAliveStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	anon.Send(&kvpb.KeepAliveStreamRequest{Id: aliceID, Tag: 1})
	if _, err := anon.Recv(); grpcCode(err) != codes.Unauthenticated {
		t.Errorf("a stream without a token: %v, want Unauthenticated", err)
	}

	au := kvpb.NewAuthClient(conn)
	if _, err := au.UserChangePassword(asUser(ctx, root), &kvpb.UserChangePasswordRequest{Name: "bob", Password: "new-pw"}); err != nil {
		t.Fatal(err)
	}
	st.Send(&kvpb.KeepAliveStreamRequest{Id: bobID, Tag: 3})
	_, err = st.Recv()
	if c, e := codeOf(err); c != codes.Unauthenticated || e != kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED {
		t.Errorf("renewal after bob's token was revoked: %v, want the stream ended with TOKEN_EXPIRED", err)
	}
}

func grpcCode(err error) codes.Code { c, _ := codeOf(err); return c }

// TestKeepAliveStreamUnreadIsBounded: a client that sends renewals and
// never reads their answers makes the server stop reading its stream once
// the answers it could not send fill the flow-control windows and the
// stream's renewals in flight reach their bound; when the client reads,
// every renewal is answered.
func TestKeepAliveStreamUnreadIsBounded(t *testing.T) {
	b := &countingBackend{fakeBackend: newFakeBackend()}
	s := New(b, Config{})
	s.streamRenewals = 16
	t.Cleanup(func() { s.Stop(context.Background()); close(b.done); b.hub.Close() })
	lis := bufconn.Listen(1 << 20)
	go s.Serve(lis)
	// Fixed 64 KiB windows: gRPC does not grow them, so the client's
	// transport takes at most that much of answers nobody reads.
	conn, err := grpc.NewClient("passthrough:///fake", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := testCtx(t, 60*time.Second)
	id := createSession(t, ctx, conn)
	st, err := kvpb.NewSessionClient(conn).KeepAliveStream(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// ~20 bytes a request: far below the server's 1 MiB receive window,
	// so sending never blocks; the answers (~80 bytes each) are far more
	// than the 64 KiB the client takes, plus gRPC's 64 KiB send quota.
	const k = 5_000
	for tag := uint64(1); tag <= k; tag++ {
		if err := st.Send(&kvpb.KeepAliveStreamRequest{Id: id, Tag: tag}); err != nil {
			t.Fatalf("Send(tag %d): %v", tag, err)
		}
	}
	// The server reads until its sends block; wait for it to settle.
	last, stableSince := int64(-1), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if q := b.queued.Load(); q != last {
			last, stableSince = q, time.Now()
		} else if time.Since(stableSince) > 300*time.Millisecond {
			break
		}
	}
	if last >= k {
		t.Fatalf("the server read all %d renewals of a client that reads nothing; want it to stop", k)
	}
	t.Logf("the server stopped after reading %d of %d renewals", last, k)

	seen := make(map[uint64]bool, k)
	for range k {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv after %d answers: %v", len(seen), err)
		}
		if r.GetError() != nil || seen[r.GetTag()] {
			t.Fatalf("answer %v: want each tag renewed once", r)
		}
		seen[r.GetTag()] = true
	}
}
