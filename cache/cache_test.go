package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
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

func newClient(t *testing.T, cl *testcluster.Cluster) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: cl.Endpoints, Dialer: cl.Dialer})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		cache.Close(ctx, c)
		c.Close()
	})
	return c
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func entryState(t *testing.T, c *client.Client, key string) (kvpb.CacheState, *kvpb.CacheEntry) {
	t.Helper()
	resp, err := c.CacheGet(t.Context(), []byte(key))
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("CacheGet(%q): %v", key, err)
	}
	return resp.GetState(), resp.GetEntry()
}

type price struct {
	SKU   string `json:"sku"`
	Cents int    `json:"cents"`
}

// TestComputedOnceAcrossClients: 3 clients x 50 goroutines memoize one key;
// the function runs once and every caller gets its value.
func TestComputedOnceAcrossClients(t *testing.T) {
	cl := startCluster(t)
	var runs atomic.Int32
	fn := func(ctx context.Context) (price, error) {
		n := runs.Add(1)
		time.Sleep(300 * time.Millisecond)
		return price{SKU: "a1", Cents: 100 * int(n)}, nil
	}
	key := cache.Key("price", "a1")
	var clients []*client.Client
	for i := 0; i < 3; i++ {
		clients = append(clients, newClient(t, cl))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 150)
	for _, c := range clients {
		for g := 0; g < 50; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				p, err := cache.Memoize(ctx, c, key, time.Minute, fn)
				if err == nil && p != (price{SKU: "a1", Cents: 100}) {
					err = fmt.Errorf("Memoize = %+v, want {a1 100}", p)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("function ran %d times for 150 callers, want 1", n)
	}
	var total cache.Stats
	for _, c := range clients {
		s := cache.Default(c).Stats()
		total.Hits += s.Hits
		total.Misses += s.Misses
		total.Fills += s.Fills
		total.FillsDeduplicated += s.FillsDeduplicated
	}
	if total.Fills != 1 || total.Hits+total.Misses != 150 || total.FillsDeduplicated < 49 {
		t.Fatalf("stats over the 3 clients = %+v; want 1 fill, 150 callers, at least 49 deduplicated", total)
	}
	// A later call is a hit, without running the function.
	if _, err := cache.Memoize(t.Context(), clients[0], key, time.Minute, fn); err != nil || runs.Load() != 1 {
		t.Fatalf("hit: err %v, runs %d; want nil, 1", err, runs.Load())
	}
}

func TestNegativeCaching(t *testing.T) {
	cl := startCluster(t)
	c1, c2 := newClient(t, cl), newClient(t, cl)
	errBoom := errors.New("boom")
	var runs atomic.Int32
	failing := func(ctx context.Context) (int, error) { runs.Add(1); return 0, errBoom }
	working := func(ctx context.Context) (int, error) { runs.Add(1); return 7, nil }

	t.Run("cached", func(t *testing.T) {
		runs.Store(0)
		_, err := cache.Memoize(t.Context(), c1, "neg", time.Minute, failing, cache.CacheErrorsFor(10*time.Second))
		if !errors.Is(err, errBoom) {
			t.Fatalf("computing caller got %v, want the function's error", err)
		}
		_, err = cache.Memoize(t.Context(), c2, "neg", time.Minute, working, cache.CacheErrorsFor(10*time.Second))
		var ce *cache.CachedError
		if !errors.As(err, &ce) || ce.Message != "boom" {
			t.Fatalf("second caller got %v, want *CachedError with message boom", err)
		}
		if n := runs.Load(); n != 1 {
			t.Fatalf("function ran %d times, want 1 (the error is cached)", n)
		}
	})
	t.Run("not cached", func(t *testing.T) {
		runs.Store(0)
		_, err := cache.Memoize(t.Context(), c1, "pos", time.Minute, failing)
		if !errors.Is(err, errBoom) {
			t.Fatalf("computing caller got %v, want the function's error", err)
		}
		v, err := cache.Memoize(t.Context(), c2, "pos", time.Minute, working)
		if err != nil || v != 7 {
			t.Fatalf("next caller got %v, %v; want 7, nil (a failed fill is not cached)", v, err)
		}
		if n := runs.Load(); n != 2 {
			t.Fatalf("function ran %d times, want 2", n)
		}
		if s := cache.Default(c1).Stats(); s.FillErrors != 2 {
			t.Fatalf("c1 stats %+v, want 2 fill errors (both subtests)", s)
		}
	})
}

// TestStaleServedWhileOneRefreshRuns: past the TTL, within StaleFor, every
// caller gets the old value at once while one refresh runs.
func TestStaleServedWhileOneRefreshRuns(t *testing.T) {
	cl := startCluster(t)
	c1, c2 := newClient(t, cl), newClient(t, cl)
	opts := []cache.Option{cache.StaleFor(time.Minute)}
	if _, err := cache.Memoize(t.Context(), c1, "swr", time.Second, func(context.Context) (string, error) { return "v1", nil }, opts...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the entry to go stale", func() bool {
		s, _ := entryState(t, c1, "swr")
		return s == kvpb.CacheState_CACHE_STATE_STALE
	})
	release := make(chan struct{})
	var runs atomic.Int32
	slow := func(ctx context.Context) (string, error) {
		runs.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return "v2", nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for _, c := range []*client.Client{c1, c2} {
		for g := 0; g < 20; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				defer cancel()
				v, err := cache.Memoize(ctx, c, "swr", time.Second, slow, opts...)
				if err == nil && v != "v1" {
					err = fmt.Errorf("stale caller got %q, want v1", v)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait() // every caller returned while the refresh is still blocked
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the refresh to start", func() bool { return runs.Load() >= 1 })
	close(release)
	waitFor(t, 5*time.Second, "the refreshed value", func() bool {
		s, e := entryState(t, c1, "swr")
		return s == kvpb.CacheState_CACHE_STATE_FRESH && string(e.GetValue()) == `"v2"`
	})
	if n := runs.Load(); n != 1 {
		t.Fatalf("refresh ran %d times, want 1", n)
	}
	stale := cache.Default(c1).Stats().StaleServed + cache.Default(c2).Stats().StaleServed
	if stale != 40 {
		t.Fatalf("stale served = %d, want 40", stale)
	}
}

// TestStaleIfError: a failed refresh gives the lease up and the stale value
// keeps being served.
func TestStaleIfError(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl)
	opts := []cache.Option{cache.StaleFor(time.Minute)}
	if _, err := cache.Memoize(t.Context(), c, "sie", time.Second, func(context.Context) (string, error) { return "v1", nil }, opts...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the entry to go stale", func() bool {
		s, _ := entryState(t, c, "sie")
		return s == kvpb.CacheState_CACHE_STATE_STALE
	})
	failing := func(context.Context) (string, error) { return "", errors.New("backend down") }
	for i := 0; i < 3; i++ {
		v, err := cache.Memoize(t.Context(), c, "sie", time.Second, failing, opts...)
		if err != nil || v != "v1" {
			t.Fatalf("call %d: %q, %v; want the stale v1", i, v, err)
		}
		waitFor(t, 5*time.Second, "the failed refresh to give the lease up", func() bool {
			_, e := entryState(t, c, "sie")
			return e.GetLease().GetToken() == 0
		})
	}
	if s := cache.Default(c).Stats(); s.FillErrors == 0 {
		t.Fatalf("stats %+v: want fill errors counted", s)
	}
}

// TestExpiredFillLeaseTakeover: a filler paused past its fill lease loses
// it; the next waiter computes; the late store is rejected and counted,
// and the late filler's caller still gets its own value.
func TestExpiredFillLeaseTakeover(t *testing.T) {
	cl := startCluster(t)
	cA, cB := newClient(t, cl), newClient(t, cl)
	opts := []cache.Option{cache.FillLease(time.Second)}
	release := make(chan struct{})
	aDone := make(chan error, 1)
	var aVal string
	go func() {
		v, err := cache.Memoize(t.Context(), cA, "takeover", time.Minute, func(ctx context.Context) (string, error) {
			<-release
			return "from-A", nil
		}, opts...)
		aVal = v
		aDone <- err
	}()
	waitFor(t, 5*time.Second, "A to hold the fill lease", func() bool {
		_, e := entryState(t, cA, "takeover")
		return e.GetLease().GetToken() != 0
	})
	start := time.Now()
	vB, err := cache.Memoize(t.Context(), cB, "takeover", time.Minute, func(ctx context.Context) (string, error) {
		return "from-B", nil
	}, opts...)
	if err != nil || vB != "from-B" {
		t.Fatalf("B got %q, %v; want from-B (B takes over the expired lease)", vB, err)
	}
	t.Logf("B took over after %v", time.Since(start))
	close(release)
	if err := <-aDone; err != nil || aVal != "from-A" {
		t.Fatalf("A got %q, %v; want its own value from-A", aVal, err)
	}
	if s := cache.Default(cA).Stats(); s.StaleStoresRejected != 1 {
		t.Fatalf("A's stats %+v, want 1 stale store rejected", s)
	}
	v, err := cache.Memoize(t.Context(), cA, "takeover", time.Minute, func(context.Context) (string, error) {
		return "recomputed", nil
	}, opts...)
	if err != nil || v != "from-B" {
		t.Fatalf("after takeover: %q, %v; want from-B", v, err)
	}
}

// TestNearCacheNeverServesPastFresh: with a near-cache far longer than the
// TTL, a value is recomputed once its TTL has passed.
func TestNearCacheNeverServesPastFresh(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl)
	cc := cache.New(c, "near", cache.NearCache(time.Hour))
	var runs atomic.Int32
	fn := func(context.Context) (int, error) { return int(runs.Add(1)), nil }
	for i := 0; i < 5; i++ {
		if v, err := cache.MemoizeIn(t.Context(), cc, "n", time.Second, fn); err != nil || v != 1 {
			t.Fatalf("call %d: %v, %v; want 1", i, v, err)
		}
	}
	if s := cc.Stats(); s.Hits != 4 {
		t.Fatalf("stats %+v, want 4 hits", s)
	}
	waitFor(t, 5*time.Second, "the entry to expire", func() bool {
		s, _ := entryState(t, c, "n")
		return s != kvpb.CacheState_CACHE_STATE_FRESH
	})
	if v, err := cache.MemoizeIn(t.Context(), cc, "n", time.Second, fn); err != nil || v != 2 {
		t.Fatalf("after the TTL: %v, %v; want 2 (recomputed)", v, err)
	}
	// Invalidate drops the near-cached value too.
	if err := cc.Invalidate(t.Context(), "n"); err != nil {
		t.Fatal(err)
	}
	if v, err := cache.MemoizeIn(t.Context(), cc, "n", time.Minute, fn); err != nil || v != 3 {
		t.Fatalf("after Invalidate: %v, %v; want 3", v, err)
	}
}

func TestKey(t *testing.T) {
	tests := []struct {
		fn   string
		args []any
		want string
	}{
		{"price", []any{"a1"}, `price("a1")`},
		{"f", nil, `f()`},
		{"f", []any{1, true, map[string]int{"b": 2, "a": 1}}, `f(1,true,{"a":1,"b":2})`},
	}
	for _, tt := range tests {
		if got := cache.Key(tt.fn, tt.args...); got != tt.want {
			t.Errorf("Key(%q, %v) = %q, want %q", tt.fn, tt.args, got, tt.want)
		}
	}
	long := make([]byte, 300)
	if k := cache.Key("f", string(long)); len(k) > 100 || k != cache.Key("f", string(long)) {
		t.Errorf("Key of a long argument = %q: want short and stable", k)
	}
}

// TestFlightCanceledWhenEveryCallerLeaves: a fill shared by callers without
// deadlines stops (its function's context ends) once every caller has gone,
// and the next caller starts a fresh flight.
func TestFlightCanceledWhenEveryCallerLeaves(t *testing.T) {
	cl := startCluster(t)
	c := newClient(t, cl)
	started := make(chan struct{})
	stopped := make(chan struct{})
	fn := func(ctx context.Context) (string, error) {
		close(started)
		<-ctx.Done()
		close(stopped)
		return "", ctx.Err()
	}
	ctx, cancel := context.WithCancel(t.Context()) // no deadline
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := cache.Memoize(ctx, c, "abandoned", time.Minute, fn, cache.FillLease(time.Second))
			errs <- err
		}()
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the function never started")
	}
	cancel()
	for i := 0; i < 2; i++ {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("Memoize after cancel = %v, want context.Canceled", err)
		}
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the shared fill kept running after every caller left")
	}
	v, err := cache.Memoize(t.Context(), c, "abandoned", time.Minute, func(context.Context) (string, error) { return "fresh", nil })
	if err != nil || v != "fresh" {
		t.Fatalf("Memoize after the abandoned flight = %q, %v; want fresh", v, err)
	}
}
