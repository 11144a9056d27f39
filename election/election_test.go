package election_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/lock"
)

func startCluster(t *testing.T) *testcluster.Cluster {
	t.Helper()
	cl := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	return cl
}

func newClient(t *testing.T, cl *testcluster.Cluster, dial func(context.Context, string) (net.Conn, error)) *client.Client {
	t.Helper()
	if dial == nil {
		dial = cl.Dialer
	}
	c, err := client.New(client.Config{Endpoints: cl.Endpoints, Dialer: dial})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newSession(t *testing.T, c *client.Client, ttl time.Duration) *lock.Session {
	t.Helper()
	s, err := lock.NewSession(t.Context(), c, lock.WithTTL(ttl))
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// waitFor polls cond (test scaffolding, not the code under test) until it
// holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waiters(t *testing.T, c *client.Client, name string) int {
	t.Helper()
	resp, err := c.GetLock(t.Context(), []byte(name))
	if errors.Is(err, client.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("GetLock(%q): %v", name, err)
	}
	return len(resp.GetLock().GetWaiters())
}

// campaign starts e's Campaign in the background; the channel gets its
// result.
func campaign(t *testing.T, e *election.Election, value string) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		done <- e.Campaign(ctx, []byte(value))
	}()
	return done
}

func wait(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer in 30s", what)
	}
}

// next receives the next leader an observer reports.
func next(t *testing.T, obs <-chan election.Leader) election.Leader {
	t.Helper()
	select {
	case l, ok := <-obs:
		if !ok {
			t.Fatal("Observe channel closed")
		}
		return l
	case <-time.After(20 * time.Second):
		t.Fatal("Observe reported nothing in 20s")
	}
	return election.Leader{}
}

func seen(l election.Leader) string { return fmt.Sprintf("%s@%d", l.Value, l.Token) }

// Candidates lead in the order they campaigned, each taking over at once
// when the one before resigns; an observer sees each leader and each
// proclaimed value, in order, with the term's token.
func TestCampaignFIFOResignAndObserve(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	a := election.New(newSession(t, c, 10*time.Second), "cron")
	b := election.New(newSession(t, c, 10*time.Second), "cron")
	d := election.New(newSession(t, newClient(t, cl, nil), 10*time.Second), "cron")
	watcher := election.New(newSession(t, newClient(t, cl, nil), 10*time.Second), "cron")

	if _, err := watcher.Leader(t.Context()); !errors.Is(err, election.ErrNoLeader) {
		t.Fatalf("Leader before any campaign = %v, want ErrNoLeader", err)
	}
	octx, ocancel := context.WithCancel(t.Context())
	defer ocancel()
	obs := watcher.Observe(octx)

	if err := a.Campaign(t.Context(), []byte("a")); err != nil {
		t.Fatal(err)
	}
	tokA := a.Token()
	if err := a.Campaign(t.Context(), []byte("a")); !errors.Is(err, election.ErrAlreadyLeader) {
		t.Errorf("second Campaign = %v, want ErrAlreadyLeader", err)
	}
	bDone := campaign(t, b, "b")
	waitFor(t, 5*time.Second, "b in line", func() bool { return waiters(t, c, "cron") == 1 })
	dDone := campaign(t, d, "d")
	waitFor(t, 5*time.Second, "d in line", func() bool { return waiters(t, c, "cron") == 2 })

	if l, err := d.Leader(t.Context()); err != nil || string(l.Value) != "a" || l.Token != tokA {
		t.Fatalf("Leader = %v, %v; want a@%d", seen(l), err, tokA)
	}
	if err := b.Proclaim(t.Context(), []byte("b?")); !errors.Is(err, election.ErrNotLeader) {
		t.Errorf("Proclaim by a waiting candidate = %v, want ErrNotLeader", err)
	}
	if err := a.Proclaim(t.Context(), []byte("a2")); err != nil {
		t.Fatal(err)
	}
	if a.Token() != tokA {
		t.Errorf("token after Proclaim = %d, want %d (same term)", a.Token(), tokA)
	}
	if err := a.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Lost():
	default:
		t.Error("a.Lost() open after Resign")
	}
	wait(t, bDone, "b.Campaign")
	tokB := b.Token()
	if tokB <= tokA {
		t.Fatalf("b's token %d, a's %d: want larger", tokB, tokA)
	}
	if err := b.Proclaim(t.Context(), []byte("b2")); err != nil {
		t.Fatal(err)
	}
	if err := a.Proclaim(t.Context(), []byte("late")); !errors.Is(err, election.ErrNotLeader) {
		t.Errorf("Proclaim after Resign = %v, want ErrNotLeader", err)
	}
	if err := b.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	wait(t, dDone, "d.Campaign")
	tokD := d.Token()
	if err := d.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := d.Resign(t.Context()); err != nil {
		t.Errorf("second Resign = %v, want nil (nothing to give up)", err)
	}

	want := []string{
		fmt.Sprintf("a@%d", tokA), fmt.Sprintf("a2@%d", tokA),
		fmt.Sprintf("b@%d", tokB), fmt.Sprintf("b2@%d", tokB),
		fmt.Sprintf("d@%d", tokD),
	}
	for i, w := range want {
		if got := seen(next(t, obs)); got != w {
			t.Fatalf("observed leader %d = %s, want %s (all: %v)", i, got, w, want)
		}
	}
	if _, err := watcher.Leader(t.Context()); !errors.Is(err, election.ErrNoLeader) {
		t.Errorf("Leader after the last resign = %v, want ErrNoLeader", err)
	}
	// The observer keeps going: a new leader after a time without one.
	if err := a.Campaign(t.Context(), []byte("a3")); err != nil {
		t.Fatal(err)
	}
	if got := next(t, obs); string(got.Value) != "a3" || got.Token != a.Token() || got.Token <= tokD {
		t.Errorf("observed %s after the gap, want a3@%d", seen(got), a.Token())
	}
	ocancel()
	for range obs { // closed once ctx ends
	}
}

// When the leader's session is lost (its network cut), its term ends on
// its side (Lost) before the next candidate takes over, which happens
// once the server expires the session and the lock-delay passes.
func TestTakeoverOnSessionLoss(t *testing.T) {
	cl := startCluster(t)
	sw := testcluster.NewNetSwitch(cl.Dialer)
	const ttl, delay = 2 * time.Second, 300 * time.Millisecond
	a := election.New(newSession(t, newClient(t, cl, sw.Dial), ttl), "cron", election.WithLockDelay(delay))
	c := newClient(t, cl, nil)
	b := election.New(newSession(t, c, 10*time.Second), "cron", election.WithLockDelay(delay))
	obs := b.Observe(t.Context())

	if err := a.Campaign(t.Context(), []byte("a")); err != nil {
		t.Fatal(err)
	}
	tokA := a.Token()
	if l := next(t, obs); l.Token != tokA {
		t.Fatalf("observed %s first, want a@%d", seen(l), tokA)
	}
	granted := make(chan time.Time, 1)
	bDone := campaign(t, b, "b")
	go func() {
		if err := <-bDone; err != nil {
			t.Errorf("b.Campaign: %v", err)
			close(granted)
			return
		}
		granted <- time.Now()
	}()
	waitFor(t, 5*time.Second, "b in line", func() bool { return waiters(t, c, "cron") == 1 })
	cut := time.Now()
	sw.Cut()

	var lostAt time.Time
	select {
	case <-a.Lost():
		lostAt = time.Now()
	case <-time.After(3 * ttl):
		t.Fatal("a.Lost() still open 3 TTLs after its network was cut")
	}
	if !errors.Is(a.Err(), lock.ErrLost) {
		t.Errorf("a.Err() = %v, want lock.ErrLost", a.Err())
	}
	if a.Token() != 0 || a.Context().Err() == nil {
		t.Errorf("after the loss: Token %d, Context err %v; want 0 and canceled", a.Token(), a.Context().Err())
	}
	grantAt, ok := <-granted
	if !ok {
		return
	}
	if !lostAt.Before(grantAt) {
		t.Fatalf("a saw the loss at +%v, b led at +%v: want the loss first", lostAt.Sub(cut), grantAt.Sub(cut))
	}
	if l := next(t, obs); string(l.Value) != "b" || l.Token != b.Token() || l.Token <= tokA {
		t.Fatalf("observed %s after the loss, want b@%d", seen(l), b.Token())
	}
	t.Logf("network cut; a saw the loss at +%v, b led at +%v (TTL %v, lock-delay %v)", lostAt.Sub(cut), grantAt.Sub(cut), ttl, delay)
}

// Resign on a candidate that never led, and Leader/Proclaim with nobody
// leading.
func TestNoLeader(t *testing.T) {
	cl := startCluster(t)
	e := election.New(newSession(t, newClient(t, cl, nil), 10*time.Second), "nobody")
	if _, err := e.Leader(t.Context()); !errors.Is(err, election.ErrNoLeader) {
		t.Errorf("Leader = %v, want ErrNoLeader", err)
	}
	if err := e.Proclaim(t.Context(), []byte("x")); !errors.Is(err, election.ErrNotLeader) {
		t.Errorf("Proclaim = %v, want ErrNotLeader", err)
	}
	if err := e.Resign(t.Context()); err != nil {
		t.Errorf("Resign = %v, want nil", err)
	}
	if e.Token() != 0 || !errors.Is(e.Err(), election.ErrNotLeader) {
		t.Errorf("Token %d, Err %v; want 0, ErrNotLeader", e.Token(), e.Err())
	}
	select {
	case <-e.Lost():
	default:
		t.Error("Lost() open on a candidate that never led")
	}
}
