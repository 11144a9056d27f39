package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
)

// clusterClient starts a three-node in-process cluster with a leader and
// a client of it.
func clusterClient(t *testing.T) (*testcluster.Cluster, *client.Client) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	c, err := client.New(client.Config{Endpoints: tc.Endpoints, Dialer: tc.Dialer, AttemptTimeout: time.Second})
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
	streams, unary := client.KeepAliveRoutes(c)
	if streams == 0 || unary != 0 {
		t.Errorf("%d keepalive streams open and %d members renewed by unary calls; want streams only", streams, unary)
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
	if err := gone.Err(); !errors.Is(err, client.ErrSessionExpired) || errors.Is(err, client.ErrSessionLost) {
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
