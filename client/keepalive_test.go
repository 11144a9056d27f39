package client

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// clusterClient starts a three-node in-process cluster with a leader and
// a client of it.
func clusterClient(t *testing.T) (*testcluster.Cluster, *Client) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	c, err := New(Config{Endpoints: tc.Endpoints, Dialer: tc.Dialer, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return tc, c
}

// TestSessionRenewedOverStreamSurvivesLeaderTransfers: a session renewed
// only through the connections' keepalive streams (no member answered
// Unimplemented, so no unary KeepAlive was sent) outlives three leader
// transfers, and the server still holds it afterwards.
func TestSessionRenewedOverStreamSurvivesLeaderTransfers(t *testing.T) {
	tc, c := clusterClient(t)
	ctx := t.Context()
	const ttl = 2 * time.Second
	s, err := c.NewSession(ctx, ttl, "stream")
	if err != nil {
		t.Fatal(err)
	}
	// waitAck waits for the session's next acknowledged keepalive.
	waitAck := func() {
		t.Helper()
		select {
		case <-s.Acked():
		case <-s.Done():
			t.Fatalf("session ended: %v", s.Err())
		case <-time.After(ttl):
			t.Fatal("no keepalive acknowledged within a TTL")
		}
	}
	waitAck()
	for i := range 3 {
		old := tc.MustLeader()
		if _, err := c.TransferLeader(ctx, ""); err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
		if now, err := tc.WaitLeader(ctx); err != nil || now == old {
			t.Fatalf("transfer %d: leader %d (%v), want another than %d", i, now, err, old)
		}
		waitAck()
		waitAck()
	}
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Err())
	default:
	}
	g, err := c.GetSession(ctx, s.ID())
	if err != nil {
		t.Fatalf("GetSession after the transfers: %v", err)
	}
	if left := time.Duration(g.GetSession().GetExpiresAt() - g.GetHeader().GetLogTime()); left <= 0 {
		t.Errorf("session due %v ago on the server", -left)
	}
	streams := 0
	c.kaStreams.Range(func(any, any) bool { streams++; return true })
	c.mu.Lock()
	unary := len(c.kaNoStream)
	c.mu.Unlock()
	if streams == 0 || unary != 0 {
		t.Errorf("%d keepalive streams open and %d members renewed by unary calls; want streams only", streams, unary)
	}
}

// TestKeepAliveFallsBackToUnary: a member without KeepAliveStream (the
// fake serves none) answers Unimplemented; the renewal is made with a
// unary call, and so are the next ones to that member.
func TestKeepAliveFallsBackToUnary(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	cr, err := c.CreateSession(t.Context(), time.Minute, "x")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := c.KeepAlive(t.Context(), cr.GetSession().GetId()); err != nil {
			t.Fatalf("KeepAlive %d: %v", i, err)
		}
	}
	f.mu.Lock()
	unaryCalls := f.keepalive
	f.mu.Unlock()
	c.mu.Lock()
	noStream := len(c.kaNoStream)
	c.mu.Unlock()
	if unaryCalls != 2 || noStream != 1 {
		t.Errorf("%d unary KeepAlives, %d members marked streamless; want 2 and 1", unaryCalls, noStream)
	}
}

// TestSessionExpiredOverStream: a session closed behind its back gets
// SESSION_EXPIRED as the answer to its next renewal on the stream, and
// ends with ErrSessionExpired, while another session renewed over the
// same stream lives on.
func TestSessionExpiredOverStream(t *testing.T) {
	_, c := clusterClient(t)
	ctx := t.Context()
	const ttl = 1200 * time.Millisecond
	gone, err := c.NewSession(ctx, ttl, "gone")
	if err != nil {
		t.Fatal(err)
	}
	kept, err := c.NewSession(ctx, ttl, "kept")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CloseSession(ctx, gone.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a session closed on the server still looks alive after 10 s")
	}
	// The server's answer, not the local deadline (ErrSessionLost).
	if err := gone.Err(); !errors.Is(err, ErrSessionExpired) || errors.Is(err, ErrSessionLost) {
		t.Errorf("Err() = %v, want the server's ErrSessionExpired", err)
	}
	for range 2 {
		select {
		case <-kept.Acked():
		case <-kept.Done():
			t.Fatalf("the other session ended: %v", kept.Err())
		case <-time.After(ttl):
			t.Fatal("the other session got no keepalive acknowledged within a TTL")
		}
	}
}

// hangSessions reads renewals and never answers them, as a member that
// hangs with its connection up (SIGSTOP) does.
type hangSessions struct {
	kvpb.UnimplementedSessionServer
}

func (hangSessions) KeepAliveStream(st kvpb.Session_KeepAliveStreamServer) error {
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// TestStreamRenewalUnansweredMovesOn: a renewal sent on the stream of a
// member that never answers gives up at its attempt's deadline (the
// stream waits on its own timer, not a context), marks the member
// unanswered, and the retry renews through the other member.
func TestStreamRenewalUnansweredMovesOn(t *testing.T) {
	lis := map[string]*bufconn.Listener{}
	for name, sessions := range map[string]kvpb.SessionServer{"hang": hangSessions{}, "ok": benchSessions{}} {
		l := bufconn.Listen(1 << 20)
		srv := grpc.NewServer()
		kvpb.RegisterSessionServer(srv, sessions)
		go srv.Serve(l)
		t.Cleanup(srv.Stop)
		lis[name] = l
	}
	c, err := New(Config{Endpoints: []string{"hang", "ok"}, AttemptTimeout: 200 * time.Millisecond,
		Dialer: func(ctx context.Context, addr string) (net.Conn, error) { return lis[addr].DialContext(ctx) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.setLeader("hang")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := c.KeepAlive(ctx, 7)
	if err != nil {
		t.Fatalf("KeepAlive with one member hanging: %v", err)
	}
	if resp.GetSession().GetId() != 7 {
		t.Errorf("answer %v, want session 7", resp)
	}
	if !c.isSuspect("hang") {
		t.Error("the member that left the renewal unanswered is not passed over")
	}
	t.Logf("renewed through the other member after %v", time.Since(start).Round(time.Millisecond))
}
