package testcluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
)

// StartReady is Start followed by WaitLeader, bounded at 10 seconds.
func StartReady(t testing.TB, n int) *Cluster {
	t.Helper()
	c := Start(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	return c
}

// NewClient returns a client of every node that dials through dial (nil:
// the cluster's Dialer; a NetSwitch's Dial to cut it off). It is closed
// when the test ends.
func (c *Cluster) NewClient(t testing.TB, dial func(context.Context, string) (net.Conn, error)) *client.Client {
	t.Helper()
	if dial == nil {
		dial = c.Dialer
	}
	cl, err := client.New(client.Config{Endpoints: c.Endpoints, Dialer: dial})
	if err != nil {
		t.Fatalf("testcluster: client.New: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// NewSession creates a lock session of ttl on c, closed when the test ends.
func NewSession(t testing.TB, c *client.Client, ttl time.Duration) *lock.Session {
	t.Helper()
	s, err := lock.NewSession(context.Background(), c, lock.WithTTL(ttl))
	if err != nil {
		t.Fatalf("testcluster: lock.NewSession: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// Eventually checks cond every 10ms until it holds, and fails the test if
// it does not within d. For waiting on a test's own scaffolding (a line to
// form, a file to appear), not for timing the code under test.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Waiters is the number of sessions in lock name's line (0 when the server
// knows nothing of the lock).
func Waiters(t testing.TB, c *client.Client, name string) int {
	t.Helper()
	resp, err := c.GetLock(context.Background(), []byte(name))
	if errors.Is(err, client.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("testcluster: GetLock(%q): %v", name, err)
	}
	return len(resp.GetLock().GetWaiters())
}
