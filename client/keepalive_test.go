package client

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kvdproject/kvd/proto/kvpb"
)

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
