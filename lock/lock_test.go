package lock_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/lock"
)

// startCluster starts a 3-node in-process cluster and waits for a leader.
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

// waitFor polls cond until it holds or the deadline passes.
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

// waiters is the number of sessions in name's line.
func waiters(t *testing.T, c *client.Client, name string) int {
	t.Helper()
	resp, err := c.GetLock(t.Context(), []byte(name))
	if err != nil {
		if errors.Is(err, client.ErrNotFound) {
			return 0
		}
		t.Fatalf("GetLock(%q): %v", name, err)
	}
	return len(resp.GetLock().GetWaiters())
}

func TestMutexesNeverOverlapAndTokensGrow(t *testing.T) {
	cl := startCluster(t)
	const lockers, rounds = 3, 4
	var inside atomic.Int32
	var mu sync.Mutex
	var tokens []uint64
	var wg sync.WaitGroup
	errs := make(chan error, lockers*rounds)
	for i := 0; i < lockers; i++ {
		m := lock.NewMutex(newSession(t, newClient(t, cl, nil), 5*time.Second), "critical_section")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				err := m.Lock(ctx)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- errors.New("two holders inside the critical section")
				}
				mu.Lock()
				tokens = append(tokens, m.Token())
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
				inside.Add(-1)
				if err := m.Unlock(t.Context()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(tokens) != lockers*rounds {
		t.Fatalf("got %d grants, want %d", len(tokens), lockers*rounds)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("grant %d has token %d after token %d; want strictly larger (tokens %v)", i, tokens[i], tokens[i-1], tokens)
		}
	}
}

func TestTryLockHeldElsewhere(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	m1 := lock.NewMutex(newSession(t, c, 5*time.Second), "l")
	m2 := lock.NewMutex(newSession(t, c, 5*time.Second), "l")
	if err := m1.TryLock(t.Context()); err != nil {
		t.Fatalf("TryLock on a free lock: %v", err)
	}
	if err := m2.TryLock(t.Context()); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("TryLock on a held lock = %v, want ErrLocked", err)
	}
	if err := m1.Lock(t.Context()); !errors.Is(err, lock.ErrAlreadyLocked) {
		t.Fatalf("Lock on a held Mutex = %v, want ErrAlreadyLocked", err)
	}
	// A bounded wait ends with the context, leaving nobody in line.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := m2.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with a 300ms wait on a held lock = %v, want DeadlineExceeded", err)
	}
	waitFor(t, 5*time.Second, "the line to empty", func() bool { return waiters(t, c, "l") == 0 })
	if m2.Token() != 0 {
		t.Fatalf("m2.Token() = %d after a failed Lock, want 0", m2.Token())
	}
	select {
	case <-m2.Lost():
	default:
		t.Fatal("Lost() of a Mutex that holds nothing is open, want closed")
	}
	tok := m1.Token()
	if err := m1.Unlock(t.Context()); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	select {
	case <-time.After(time.Second):
		t.Fatal("Lost() still open after Unlock")
	case <-m1.Lost():
	}
	if err := m1.Unlock(t.Context()); !errors.Is(err, lock.ErrNotLocked) {
		t.Fatalf("second Unlock = %v, want ErrNotLocked", err)
	}
	if err := m2.TryLock(t.Context()); err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	if m2.Token() <= tok {
		t.Fatalf("new token %d, old %d: want larger", m2.Token(), tok)
	}
}

func TestCanceledWaitLeavesTheLine(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	m1 := lock.NewMutex(newSession(t, c, 5*time.Second), "l")
	m2 := lock.NewMutex(newSession(t, c, 5*time.Second), "l")
	if err := m1.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m2.Lock(ctx) }()
	waitFor(t, 5*time.Second, "m2 in line", func() bool { return waiters(t, c, "l") == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock after cancel = %v, want context.Canceled", err)
	}
	waitFor(t, 5*time.Second, "the line to empty", func() bool { return waiters(t, c, "l") == 0 })
	if err := m1.Unlock(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, err := c.GetLock(t.Context(), []byte("l"))
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatal(err)
	}
	if tok := resp.GetLock().GetToken(); tok != 0 {
		t.Fatalf("lock held with token %d after its only waiter gave up, want free", tok)
	}
}

func TestUnlockWithStaleTokenKeepsNewHolder(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	m1 := lock.NewMutex(newSession(t, c, 3*time.Second), "critical_section")
	m2 := lock.NewMutex(newSession(t, c, 3*time.Second), "critical_section")
	if err := m1.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- m2.Lock(t.Context()) }()
	waitFor(t, 5*time.Second, "m2 in line", func() bool { return waiters(t, c, "critical_section") == 1 })

	// An operator breaks m1's lock: m2 is granted, m1 notices at its next
	// keepalive answer.
	if _, err := c.BreakLock(t.Context(), []byte("critical_section"), "test"); err != nil {
		t.Fatalf("BreakLock: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("m2.Lock: %v", err)
	}
	if m2.Token() <= m1.Token() {
		t.Fatalf("m2 token %d, m1 token %d: want larger", m2.Token(), m1.Token())
	}
	select {
	case <-m1.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("m1.Lost() still open 5s after its lock was broken")
	}
	if !errors.Is(m1.Err(), lock.ErrLost) || !errors.Is(context.Cause(m1.Context()), lock.ErrLost) {
		t.Fatalf("m1.Err() = %v, cause %v; want ErrLost", m1.Err(), context.Cause(m1.Context()))
	}
	old := m1.Token()
	err := m1.Unlock(t.Context())
	if !errors.Is(err, lock.ErrStaleToken) || !errors.Is(err, client.ErrStaleToken) {
		t.Fatalf("Unlock with broken token %d = %v, want ErrStaleToken", old, err)
	}
	chk, err := c.CheckFence(t.Context(), []byte("critical_section"), m2.Token())
	if err != nil {
		t.Fatal(err)
	}
	if !chk.GetValid() {
		t.Fatalf("CheckFence(m2 token %d) invalid after m1's stale Unlock (current %d): it released the new holder", m2.Token(), chk.GetCurrentToken())
	}
	select {
	case <-m2.Lost():
		t.Fatalf("m2 lost its lock: %v", m2.Err())
	default:
	}
}

func TestFIFOOrderOfWaiters(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	holder := lock.NewMutex(newSession(t, c, 5*time.Second), "fifo")
	if err := holder.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 1; i <= 3; i++ {
		m := lock.NewMutex(newSession(t, c, 5*time.Second), "fifo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Lock(t.Context()); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			errs <- m.Unlock(t.Context())
		}()
		waitFor(t, 5*time.Second, "waiter in line", func() bool { return waiters(t, c, "fifo") == i })
	}
	if err := holder.Unlock(t.Context()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(order) != 3 || order[0] != 1 || order[1] != 2 || order[2] != 3 {
		t.Fatalf("grant order = %v, want [1 2 3]", order)
	}
}

// TestLostBeforeServerExpiry: the holder's keepalives stop (its network is
// cut); Lost closes before the server expires the session and grants the
// lock to the next waiter.
func TestLostBeforeServerExpiry(t *testing.T) {
	cl := startCluster(t)
	net1 := testcluster.NewNetSwitch(cl.Dialer)
	c1 := newClient(t, cl, net1.Dial)
	c2 := newClient(t, cl, nil)
	const ttl = 2 * time.Second
	m1 := lock.NewMutex(newSession(t, c1, ttl), "critical_section")
	m2 := lock.NewMutex(newSession(t, c2, 10*time.Second), "critical_section")
	if err := m1.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	granted := make(chan time.Time, 1)
	go func() {
		if err := m2.Lock(t.Context()); err != nil {
			t.Errorf("m2.Lock: %v", err)
			close(granted)
			return
		}
		granted <- time.Now()
	}()
	waitFor(t, 5*time.Second, "m2 in line", func() bool { return waiters(t, c2, "critical_section") == 1 })
	cut := time.Now()
	net1.Cut()

	var lostAt time.Time
	select {
	case <-m1.Lost():
		lostAt = time.Now()
	case <-time.After(3 * ttl):
		t.Fatal("m1.Lost() still open 3 TTLs after its keepalives stopped")
	}
	grantAt, ok := <-granted
	if !ok {
		return
	}
	if !lostAt.Before(grantAt) {
		t.Fatalf("m1 saw the loss at +%v, m2 was granted at +%v: want the loss first", lostAt.Sub(cut), grantAt.Sub(cut))
	}
	if !errors.Is(m1.Err(), lock.ErrLost) {
		t.Fatalf("m1.Err() = %v, want ErrLost", m1.Err())
	}
	t.Logf("keepalives cut; holder saw the loss at +%v, next waiter granted at +%v (TTL %v)", lostAt.Sub(cut), grantAt.Sub(cut), ttl)
}

// TestBreakSeenBeforeAKeepalive: a break reaches the holder through its
// watch on the lock, long before the next keepalive answer (every TTL/3 =
// 20s here) could tell it.
func TestBreakSeenBeforeAKeepalive(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl, nil)
	s := newSession(t, c, time.Minute)
	m := lock.NewMutex(s, "job")
	if err := m.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	info := s.ClientSession().Info()
	if _, err := c.BreakLock(t.Context(), []byte("job"), "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost() still open 5s after the break; the next keepalive is 20s away")
	}
	if s.ClientSession().Info() != info {
		t.Fatalf("a keepalive answer arrived meanwhile: the test did not isolate the watch")
	}
	if err := m.Err(); !errors.Is(err, lock.ErrLost) || !strings.Contains(err.Error(), "lock-break") {
		t.Errorf("Err() = %v, want ErrLost naming the break", err)
	}
}
