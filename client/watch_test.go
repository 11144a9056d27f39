package client_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// watched runs a watch in the background and records what it yields.
type watched struct {
	mu     sync.Mutex
	events []client.Event
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

func startWatch(t *testing.T, c *client.Client, key string, opts ...client.WatchOption) *watched {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &watched{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		for ev, err := range c.Watch(ctx, []byte(key), opts...) {
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.events = append(w.events, ev)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// changes returns the changes received so far.
func (w *watched) changes() []client.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []client.Event
	for _, ev := range w.events {
		if ev.Kind == client.EventChange {
			out = append(out, ev)
		}
	}
	return out
}

func (w *watched) all() []client.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]client.Event(nil), w.events...)
}

// waitFor polls until cond holds, failing after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkSequence: the changes are puts of key with values 0..n-1 in order,
// each exactly once, indexes increasing.
func checkSequence(t *testing.T, evs []client.Event, n int) {
	t.Helper()
	if len(evs) != n {
		t.Errorf("%d changes, want %d", len(evs), n)
	}
	var last uint64
	for i, ev := range evs {
		if got := string(ev.Change.GetKv().GetValue()); got != strconv.Itoa(i) {
			t.Fatalf("change %d has value %q, want %d (a gap, a duplicate or a reordering)", i, got, i)
		}
		if ev.Index <= last {
			t.Fatalf("change %d at index %d after %d", i, ev.Index, last)
		}
		last = ev.Index
	}
}

func TestWatchFromAFollower(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	f := (leader + 1) % 3
	writer := newClient(t, tc)
	if _, err := writer.Put(t.Context(), []byte("w/old"), []byte("before")); err != nil {
		t.Fatal(err)
	}
	only, err := client.New(client.Config{Endpoints: []string{tc.Endpoints[f]}, Dialer: tc.Dialer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { only.Close() })
	w := startWatch(t, only, "w/", client.WithPrefix(), client.WithPrevKV())
	time.Sleep(200 * time.Millisecond) // from now: let the watch open first
	var idx []uint64
	for i := range 20 {
		r, err := writer.Put(t.Context(), []byte("w/k"), []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		idx = append(idx, r.GetKv().GetModIndex())
	}
	waitFor(t, 5*time.Second, "20 changes", func() bool { return len(w.changes()) >= 20 })
	evs := w.changes()
	checkSequence(t, evs, 20)
	for i, ev := range evs {
		if ev.Index != idx[i] || ev.ServedBy != tc.Name(f) {
			t.Errorf("change %d: index %d served by %s, want %d by the follower %s", i, ev.Index, ev.ServedBy, idx[i], tc.Name(f))
		}
		if i > 0 && string(ev.Change.GetPrevKv().GetValue()) != strconv.Itoa(i-1) {
			t.Errorf("change %d prev_kv = %v, want %d", i, ev.Change.GetPrevKv(), i-1)
		}
	}
}

// TestWatchResumesElsewhere: the member serving the watch is killed while
// changes stream; the client resumes on another member with no gap and no
// duplicate.
func TestWatchResumesElsewhere(t *testing.T) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	writer := newClient(t, tc)
	watcher := newClient(t, tc)
	w := startWatch(t, watcher, "seq", client.FromIndex(0), client.WithProgressInterval(200*time.Millisecond))
	const n = 200
	var killed string
	for i := range n {
		if _, err := writer.Put(t.Context(), []byte("seq"), []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		if i == n/2 {
			waitFor(t, 5*time.Second, "the watch to deliver", func() bool { return len(w.changes()) > 0 })
			killed = w.changes()[0].ServedBy
			for j := range tc.N() {
				if tc.Name(j) == killed {
					tc.Kill(j)
				}
			}
		}
	}
	waitFor(t, 20*time.Second, "every change after the kill", func() bool { return len(w.changes()) >= n })
	evs := w.changes()
	checkSequence(t, evs, n)
	if last := evs[n-1].ServedBy; last == killed {
		t.Errorf("last change served by %s, the killed member", last)
	}
}

func TestWatchOlderThanHistory(t *testing.T) {
	tc := testcluster.StartWithConfig(t, 3, func(_ int, cfg *node.Config) { cfg.WatchHistoryEvents = 5 })
	tc.MustLeader()
	c := newClient(t, tc)
	for i := range 20 {
		if _, err := c.Put(t.Context(), []byte(fmt.Sprintf("h/%d", i%3)), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Every member has applied the writes and dropped the oldest from its
	// history (a member still behind would serve index 1 from history).
	waitFor(t, 10*time.Second, "every member's history to move past index 1", func() bool {
		for i := range tc.N() {
			if oldest, _, _, _ := tc.Node(i).WatchHub().HistoryRange(); oldest < 2 {
				return false
			}
		}
		return true
	})
	// Asked for an error: ErrOutOfRange naming the oldest index held.
	for _, err := range c.Watch(t.Context(), []byte("h/"), client.WithPrefix(), client.FromIndex(1), client.WithOutOfRangeError()) {
		var e *client.Error
		if !errors.Is(err, client.ErrOutOfRange) || !errors.As(err, &e) || e.Limit <= 1 {
			t.Fatalf("Watch(from 1, out of range error) = %v; want ErrOutOfRange with the oldest index", err)
		}
		break
	}
	// Otherwise: the watched keys at one index, marked, then live changes.
	w := startWatch(t, c, "h/", client.WithPrefix(), client.FromIndex(1))
	waitFor(t, 5*time.Second, "the snapshot", func() bool {
		for _, ev := range w.all() {
			if ev.Kind == client.EventSnapshotEnd {
				return true
			}
		}
		return false
	})
	r, err := c.Put(t.Context(), []byte("h/0"), []byte("live"))
	if err != nil {
		t.Fatal(err)
	}
	live := r.GetKv().GetModIndex()
	waitFor(t, 5*time.Second, "the live change", func() bool {
		ch := w.changes()
		return len(ch) > 0 && ch[len(ch)-1].Index == live
	})
	// The member may be behind the writer: its snapshot is of its own index,
	// and the changes after it follow. Together they give the final state.
	all := w.all()
	state := map[string]string{}
	var snapAt uint64
	for i, ev := range all {
		switch ev.Kind {
		case client.EventState:
			if snapAt != 0 || i > 2 {
				t.Fatalf("item %d is a state after the snapshot ended: %v", i, all)
			}
			state[string(ev.Change.Key)] = string(ev.Change.GetKv().GetValue())
		case client.EventSnapshotEnd:
			snapAt = ev.Index
			for j := 0; j < i; j++ {
				if all[j].Index != snapAt {
					t.Errorf("state %d at index %d, the snapshot ended at %d", j, all[j].Index, snapAt)
				}
			}
		case client.EventChange:
			if snapAt == 0 || ev.Index <= snapAt {
				t.Fatalf("change at %d before the snapshot ended (at %d)", ev.Index, snapAt)
			}
			state[string(ev.Change.Key)] = string(ev.Change.GetKv().GetValue())
		}
	}
	if want := map[string]string{"h/0": "live", "h/1": "19", "h/2": "17"}; fmt.Sprint(state) != fmt.Sprint(want) {
		t.Errorf("snapshot plus changes = %v, want %v", state, want)
	}
}

// TestWatchLeavesAPartitionedMember: a member cut off from the others
// vouches for nothing; the client moves to another and misses nothing.
func TestWatchLeavesAPartitionedMember(t *testing.T) {
	tc := testcluster.Start(t, 3)
	leader := tc.MustLeader()
	f := (leader + 1) % 3
	writer := newClient(t, tc)
	// The watch starts on the follower (its first endpoint).
	eps := []string{tc.Endpoints[f], tc.Endpoints[leader], tc.Endpoints[(leader+2)%3]}
	wc, err := client.New(client.Config{Endpoints: eps, Dialer: tc.Dialer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wc.Close() })
	w := startWatch(t, wc, "p", client.FromIndex(0), client.WithProgressInterval(200*time.Millisecond))
	put := func(i int) {
		if _, err := writer.Put(t.Context(), []byte("p"), []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	put(0)
	waitFor(t, 5*time.Second, "the first change", func() bool { return len(w.changes()) == 1 })
	if by := w.changes()[0].ServedBy; by != tc.Name(f) {
		t.Fatalf("served by %s, want the follower %s", by, tc.Name(f))
	}
	tc.Disconnect(f)
	for i := 1; i < 30; i++ {
		put(i)
	}
	waitFor(t, 15*time.Second, "changes from another member", func() bool { return len(w.changes()) == 30 })
	evs := w.changes()
	checkSequence(t, evs, 30)
	if by := evs[29].ServedBy; by == tc.Name(f) {
		t.Errorf("the partitioned member %s still serves the watch", by)
	}
}

func TestWatchLocksAndProgress(t *testing.T) {
	tc := testcluster.Start(t, 3)
	tc.MustLeader()
	c := newClient(t, tc)
	w := startWatch(t, c, "L", client.OnLocks(), client.WithProgressNotify(), client.WithProgressInterval(100*time.Millisecond))
	waitFor(t, 5*time.Second, "a progress notification", func() bool { return len(w.all()) > 0 })
	s, err := c.NewSession(t.Context(), 10*time.Second, "w")
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Acquire(t.Context(), []byte("L"), 0, 0)
	if err != nil || !a.GetAcquired() {
		t.Fatalf("Acquire = %v, %v", a, err)
	}
	if _, err := s.Release(t.Context(), []byte("L"), a.GetToken()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "grant and release", func() bool { return len(w.changes()) == 2 })
	evs := w.changes()
	if evs[0].Change.Type != kvpb.EventType_EVENT_TYPE_LOCK_GRANT || evs[0].Change.Lock.Token != a.GetToken() ||
		evs[1].Change.Type != kvpb.EventType_EVENT_TYPE_LOCK_RELEASE || evs[1].Change.Lock.Token != 0 {
		t.Errorf("lock events = %v, %v; want grant of token %d, release", evs[0].Change, evs[1].Change, a.GetToken())
	}
	for _, ev := range w.all() {
		if ev.Kind == client.EventProgress && ev.Index == 0 {
			t.Errorf("progress at index 0")
		}
	}
}

// TestWatchUnreachable: with Config.UnreachableTimeout, a watch none of
// whose endpoints accepts a connection ends with ErrUnavailable naming
// them, instead of waiting for ctx.
func TestWatchUnreachable(t *testing.T) {
	tc := testcluster.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: []string{"127.0.99.1:2379", "127.0.99.2:2379"}, Dialer: tc.Dialer,
		UnreachableTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, err := range c.Watch(ctx, []byte("k")) {
		if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "127.0.99.2:2379") || ctx.Err() != nil {
			t.Fatalf("Watch with no endpoint reachable = %v; want ErrUnavailable naming the endpoints before ctx ends", err)
		}
		break
	}
}

// TestManyWatchesDoNotHoldUpRequests: more watches than a member serves
// calls on one connection (256); every one gets its change, and requests
// of the same client are not held up behind them.
func TestManyWatchesDoNotHoldUpRequests(t *testing.T) {
	tc := testcluster.Start(t, 1)
	tc.MustLeader()
	c, err := client.New(client.Config{Endpoints: tc.Endpoints, Dialer: tc.Dialer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	first, err := c.Put(t.Context(), []byte("many"), []byte("0"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	ws := make([]*watched, n)
	for i := range ws {
		ws[i] = startWatch(t, c, "many", client.FromIndex(first.GetKv().GetModIndex()))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, []byte("many"), []byte("1")); err != nil {
		t.Fatalf("Put with %d watches open on the client: %v", n, err)
	}
	if _, err := c.Get(ctx, []byte("many")); err != nil {
		t.Fatalf("Get with %d watches open on the client: %v", n, err)
	}
	waitFor(t, 10*time.Second, "every watch to get the change", func() bool {
		for _, w := range ws {
			if len(w.changes()) != 1 {
				return false
			}
		}
		return true
	})
}
