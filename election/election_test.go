package election_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/lock"
)

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
	cl := testcluster.StartReady(t, 3)
	c := cl.NewClient(t, nil)
	a := election.New(testcluster.NewSession(t, c, 10*time.Second), "cron")
	b := election.New(testcluster.NewSession(t, c, 10*time.Second), "cron")
	d := election.New(testcluster.NewSession(t, cl.NewClient(t, nil), 10*time.Second), "cron")
	watcher := election.New(testcluster.NewSession(t, cl.NewClient(t, nil), 10*time.Second), "cron")

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
	testcluster.Eventually(t, 5*time.Second, "b in line", func() bool { return testcluster.Waiters(t, c, "cron") == 1 })
	dDone := campaign(t, d, "d")
	testcluster.Eventually(t, 5*time.Second, "d in line", func() bool { return testcluster.Waiters(t, c, "cron") == 2 })

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
	cl := testcluster.StartReady(t, 3)
	sw := testcluster.NewNetSwitch(cl.Dialer)
	const ttl, delay = 2 * time.Second, 300 * time.Millisecond
	a := election.New(testcluster.NewSession(t, cl.NewClient(t, sw.Dial), ttl), "cron", election.WithLockDelay(delay))
	c := cl.NewClient(t, nil)
	b := election.New(testcluster.NewSession(t, c, 10*time.Second), "cron", election.WithLockDelay(delay))
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
	testcluster.Eventually(t, 5*time.Second, "b in line", func() bool { return testcluster.Waiters(t, c, "cron") == 1 })
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

// A term lost locally (the client's view of its session ran out while cut
// off) may still be held on the server until the session expires there.
// Resign after the loss still releases it, so the next candidate need not
// wait for the server's expiry and the lock-delay.
func TestResignAfterLocalLossReleasesOnServer(t *testing.T) {
	cl := testcluster.StartReady(t, 3)
	sw := testcluster.NewNetSwitch(cl.Dialer)
	const ttl = 6 * time.Second
	a := election.New(testcluster.NewSession(t, cl.NewClient(t, sw.Dial), ttl), "cron", election.WithLockDelay(5*time.Second))
	if err := a.Campaign(t.Context(), []byte("a")); err != nil {
		t.Fatal(err)
	}
	tokA := a.Token()
	sw.Cut()
	select {
	case <-a.Lost():
	case <-time.After(3 * ttl):
		t.Fatal("a.Lost() still open 3 TTLs after its network was cut")
	}
	if a.Token() != 0 {
		t.Errorf("Token after the loss = %d, want 0", a.Token())
	}
	sw.Heal()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign after the local loss = %v", err)
	}
	// Released by the Resign, or (when the server's expiry came first)
	// expired: either way no longer held under a's token.
	resp, err := cl.NewClient(t, nil).GetLock(ctx, []byte("cron"))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetLock().GetToken(); got == tokA {
		t.Fatalf("after Resign the lock is still held under a's token %d", tokA)
	}
}

// Resign on a candidate that never led, and Leader/Proclaim with nobody
// leading.
func TestNoLeader(t *testing.T) {
	cl := testcluster.StartReady(t, 3)
	e := election.New(testcluster.NewSession(t, cl.NewClient(t, nil), 10*time.Second), "nobody")
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
