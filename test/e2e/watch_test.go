package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// recorder runs a watch in the background and keeps what it yields.
type recorder struct {
	mu     sync.Mutex
	events []client.Event
	err    error
	done   chan struct{}
}

func record(t *testing.T, ctx context.Context, c *client.Client, key string, opts ...client.WatchOption) *recorder {
	t.Helper()
	r := &recorder{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		for ev, err := range c.Watch(ctx, []byte(key), opts...) {
			r.mu.Lock()
			if err != nil {
				r.err = err
			} else {
				r.events = append(r.events, ev)
			}
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func (r *recorder) changes() []client.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []client.Event
	for _, ev := range r.events {
		if ev.Kind == client.EventChange {
			out = append(out, ev)
		}
	}
	return out
}

// lines renders changes as "index type key", the part every member agrees on.
func lines(evs []client.Event) []string {
	var out []string
	for _, ev := range evs {
		c := ev.Change
		s := fmt.Sprintf("%d %s %s", ev.Index, strings.TrimPrefix(c.GetType().String(), "EVENT_TYPE_"), c.GetKey())
		if c.GetExpired() {
			s += " expired"
		}
		if l := c.GetLock(); l != nil {
			s += fmt.Sprintf(" token=%d", l.GetToken())
		}
		out = append(out, s)
	}
	return out
}

func eventuallyE2E(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWatchOnEveryNode: a watcher on each member (followers included) of
// keys, a lock and cache entries while keys are written, expire and are
// deleted, the lock changes hands and cache entries are stored and
// invalidated. Every member's stream holds the same changes, in index
// order, each once.
func TestWatchOnEveryNode(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	start, err := c.Put(ctx, []byte("start"), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	from := client.FromIndex(start.GetKv().GetModIndex())
	type trio struct{ keys, locks, cache *recorder }
	var per []trio
	for _, nd := range cl.Nodes {
		only := newClient(t, []string{nd.ClientAddr})
		per = append(per, trio{
			keys:  record(t, ctx, only, "w/", client.WithPrefix(), from),
			locks: record(t, ctx, only, "L", client.OnLocks(), from),
			cache: record(t, ctx, only, "c/", client.OnCache(), client.WithPrefix(), from),
		})
	}

	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Put(ctx, []byte("w/a"), []byte("1")))
	must(c.Put(ctx, []byte("w/ttl"), []byte("short"), client.WithTTL(time.Second)))
	must(c.Put(ctx, []byte("w/a"), []byte("2")))
	must(c.Delete(ctx, []byte("w/a")))
	s1, err := c.NewSession(ctx, 10*time.Second, "one")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.NewSession(ctx, 10*time.Second, "two")
	if err != nil {
		t.Fatal(err)
	}
	g1, err := s1.Acquire(ctx, []byte("L"), 0, 0)
	if err != nil || !g1.GetAcquired() {
		t.Fatalf("Acquire 1 = %v, %v", g1, err)
	}
	got2 := make(chan *kvpb.AcquireResponse, 1)
	go func() {
		r, err := s2.Acquire(ctx, []byte("L"), 5*time.Second, 0)
		if err != nil {
			t.Errorf("Acquire 2: %v", err)
		}
		got2 <- r
	}()
	eventuallyE2E(t, 10*time.Second, "the second session in line", func() bool {
		l, err := c.GetLock(ctx, []byte("L"))
		return err == nil && len(l.GetLock().GetWaiters()) == 1
	})
	must(s1.Release(ctx, []byte("L"), g1.GetToken()))
	g2 := <-got2
	must(s2.Release(ctx, []byte("L"), g2.GetToken()))
	must(c.CacheSet(ctx, []byte("c/1"), []byte("v"), time.Minute, 0))
	must(c.CacheSet(ctx, []byte("c/2"), []byte("v"), time.Minute, 0))
	must(c.Invalidate(ctx, []byte("c/"), true))
	// The TTL key expires through the log.
	eventuallyE2E(t, 15*time.Second, "w/ttl to expire on every member", func() bool {
		for _, p := range per {
			ch := p.keys.changes()
			if len(ch) == 0 || !ch[len(ch)-1].Change.GetExpired() {
				return false
			}
		}
		return true
	})
	eventuallyE2E(t, 15*time.Second, "every stream to catch up", func() bool {
		for _, p := range per {
			if len(p.locks.changes()) < 4 || len(p.cache.changes()) < 4 {
				return false
			}
		}
		return true
	})

	want := map[string][]string{
		"keys": {"PUT w/a", "PUT w/ttl", "PUT w/a", "DELETE w/a", "DELETE w/ttl expired"},
		"locks": {fmt.Sprintf("LOCK_GRANT L token=%d", g1.GetToken()), "LOCK_QUEUE L token=" + strconv.FormatUint(g1.GetToken(), 10),
			fmt.Sprintf("LOCK_HANDOFF L token=%d", g2.GetToken()), "LOCK_RELEASE L token=0"},
		"cache": {"CACHE_STORE c/1", "CACHE_STORE c/2", "CACHE_INVALIDATE c/1", "CACHE_INVALIDATE c/2"},
	}
	for i, p := range per {
		for name, r := range map[string]*recorder{"keys": p.keys, "locks": p.locks, "cache": p.cache} {
			got := lines(r.changes())
			var last uint64
			for j, ev := range r.changes() {
				if ev.Index < last || (ev.Index == last && name != "cache") {
					t.Errorf("%s on %s: change %d at index %d after %d", name, cl.Nodes[i].Name, j, ev.Index, last)
				}
				last = ev.Index
				if ev.ServedBy != cl.Nodes[i].Name {
					t.Errorf("%s on %s: served by %s", name, cl.Nodes[i].Name, ev.ServedBy)
				}
			}
			var types []string
			for _, l := range got {
				types = append(types, l[strings.Index(l, " ")+1:])
			}
			if strings.Join(types, "|") != strings.Join(want[name], "|") {
				t.Errorf("%s on %s:\n  %s\nwant\n  %s", name, cl.Nodes[i].Name, strings.Join(got, "\n  "), strings.Join(want[name], "\n  "))
			}
			if i > 0 {
				ref := lines(map[string]*recorder{"keys": per[0].keys, "locks": per[0].locks, "cache": per[0].cache}[name].changes())
				if strings.Join(got, "|") != strings.Join(ref, "|") {
					t.Errorf("%s: %s and %s saw different changes:\n%v\n%v", name, cl.Nodes[0].Name, cl.Nodes[i].Name, ref, got)
				}
			}
		}
	}
}

// TestWatchResumesAfterItsNodeIsKilled: SIGKILL the member serving a watch
// while changes stream; the watch resumes on another member with every
// change once, in order.
func TestWatchResumesAfterItsNodeIsKilled(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	writer := newClient(t, cl.Endpoints())
	watcher := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	first, err := writer.Put(ctx, []byte("seq"), []byte("0"))
	if err != nil {
		t.Fatal(err)
	}
	r := record(t, ctx, watcher, "seq", client.FromIndex(first.GetKv().GetModIndex()-1), client.WithProgressInterval(200*time.Millisecond))
	const n = 300
	var killed string
	for i := 1; i < n; i++ {
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := writer.Put(wctx, []byte("seq"), []byte(strconv.Itoa(i)))
		wcancel()
		if err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		if i == n/3 {
			eventuallyE2E(t, 10*time.Second, "the watch to deliver", func() bool { return len(r.changes()) > 0 })
			killed = r.changes()[0].ServedBy
			for _, nd := range cl.Nodes {
				if nd.Name == killed {
					if err := nd.Kill(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	eventuallyE2E(t, 30*time.Second, "every change", func() bool { return len(r.changes()) >= n })
	evs := r.changes()
	if len(evs) != n {
		t.Fatalf("%d changes, want %d", len(evs), n)
	}
	var last uint64
	for i, ev := range evs {
		if string(ev.Change.GetKv().GetValue()) != strconv.Itoa(i) || ev.Index <= last {
			t.Fatalf("change %d: value %q at %d after %d; want %d in index order (a gap or a duplicate)", i, ev.Change.GetKv().GetValue(), ev.Index, last, i)
		}
		last = ev.Index
	}
	after := evs[n-1].ServedBy
	if after == killed {
		t.Fatalf("the last change came from %s, the killed member", killed)
	}
	t.Logf("watch served by %s, killed; resumed on %s", killed, after)
}

// TestWatchOlderThanHistory: members keep 20 changes; a watch from index 1
// gets the watched keys at one index, marked, then live changes; asked for
// an error it gets OUT_OF_RANGE (kvctl exits 1 and says why).
func TestWatchOlderThanHistory(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{ExtraArgs: []string{"--watch-history-events", "20"}})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var last uint64
	for i := range 60 {
		r, err := c.Put(ctx, []byte(fmt.Sprintf("h/%d", i%5)), []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		last = r.GetKv().GetModIndex()
	}
	// Every member has applied them (one still behind would serve index 1
	// from its history).
	if err := cl.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	for _, err := range c.Watch(ctx, []byte("h/"), client.WithPrefix(), client.FromIndex(1), client.WithOutOfRangeError()) {
		var e *client.Error
		if !errors.Is(err, client.ErrOutOfRange) || !errors.As(err, &e) || e.Limit <= 1 {
			t.Fatalf("Watch(from 1, out of range error) = %v, want ErrOutOfRange with the oldest index", err)
		}
		break
	}
	_, kvctl := proccluster.Binaries(t)
	out, err := exec.CommandContext(ctx, kvctl, "--endpoints", strings.Join(cl.Endpoints(), ","),
		"watch", "h/", "--prefix", "--from-index", "1", "--out-of-range-error").CombinedOutput()
	if code := exitCodeOf(err); code != 1 || !strings.Contains(string(out), "older than") {
		t.Errorf("kvctl watch --from-index 1 --out-of-range-error = exit %d, %q; want 1 naming the history", code, out)
	}

	r := record(t, ctx, c, "h/", client.WithPrefix(), client.FromIndex(1))
	eventuallyE2E(t, 10*time.Second, "the snapshot", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.events) >= 6
	})
	live, err := c.Put(ctx, []byte("h/0"), []byte("live"))
	if err != nil {
		t.Fatal(err)
	}
	eventuallyE2E(t, 10*time.Second, "the live change", func() bool {
		ch := r.changes()
		return len(ch) > 0 && ch[len(ch)-1].Index == live.GetKv().GetModIndex()
	})
	state := map[string]string{}
	var snapAt uint64
	r.mu.Lock()
	for _, ev := range r.events {
		switch ev.Kind {
		case client.EventState:
			state[string(ev.Change.Key)] = string(ev.Change.GetKv().GetValue())
		case client.EventSnapshotEnd:
			snapAt = ev.Index
		case client.EventChange:
			if snapAt == 0 || ev.Index <= snapAt {
				t.Errorf("change at %d before the snapshot (at %d) ended", ev.Index, snapAt)
			}
			state[string(ev.Change.Key)] = string(ev.Change.GetKv().GetValue())
		}
	}
	r.mu.Unlock()
	want := map[string]string{"h/0": "live", "h/1": "56", "h/2": "57", "h/3": "58", "h/4": "59"}
	if fmt.Sprint(state) != fmt.Sprint(want) {
		t.Errorf("snapshot plus changes = %v, want %v", state, want)
	}
}

// TestNearCacheInvalidatedFromAnotherProcess: this process near-caches a
// value; `kvctl cache invalidate` (another process) invalidates it, and the
// next call here computes it again, long before the near-cache bound or
// the TTL would have let it go.
func TestNearCacheInvalidatedFromAnotherProcess(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		cache.Close(ctx, c)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cc := cache.New(c, "near", cache.NearCache(time.Hour))
	var runs atomic.Int32
	fn := func(context.Context) (string, error) { return "v" + strconv.Itoa(int(runs.Add(1))), nil }
	eventuallyE2E(t, 15*time.Second, "a near-cache hit", func() bool {
		before := cc.Stats().NearHits
		v, err := cache.MemoizeIn(ctx, cc, "price:42", time.Hour, fn)
		if err != nil || v != "v1" {
			t.Fatalf("Memoize = %q, %v; want v1", v, err)
		}
		return cc.Stats().NearHits > before
	})
	_, kvctl := proccluster.Binaries(t)
	out, err := exec.CommandContext(ctx, kvctl, "--endpoints", strings.Join(cl.Endpoints(), ","), "cache", "invalidate", "price:42").CombinedOutput()
	if err != nil {
		t.Fatalf("kvctl cache invalidate: %v\n%s", err, out)
	}
	invalidated := time.Now()
	var v string
	eventuallyE2E(t, 10*time.Second, "the invalidation to reach the near-cache", func() bool {
		var err error
		v, err = cache.MemoizeIn(ctx, cc, "price:42", time.Hour, fn)
		return err == nil && v == "v2"
	})
	t.Logf("near-cache dropped the value %v after kvctl returned", time.Since(invalidated))
}
