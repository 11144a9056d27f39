package client

import (
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/testcluster"
)

// TestSessionRenewedOverStreamSurvivesLeaderTransfers: a session renewed
// only through the connections' keepalive streams (no member answered
// Unimplemented, so no unary KeepAlive was sent) outlives three leader
// transfers, and the server still holds it afterwards.
func TestSessionRenewedOverStreamSurvivesLeaderTransfers(t *testing.T) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	c, err := New(Config{Endpoints: tc.Endpoints, Dialer: tc.Dialer, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
