package cache_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
)

// warmNear calls Memoize on key until the value comes from the near-cache
// (its watch has confirmed it is up to date).
func warmNear(t *testing.T, cc *cache.Cache, key string, fn func(context.Context) (string, error)) string {
	t.Helper()
	var v string
	waitFor(t, 10*time.Second, "a near-cache hit", func() bool {
		before := cc.Stats().NearHits
		var err error
		v, err = cache.MemoizeIn(t.Context(), cc, key, time.Minute, fn)
		if err != nil {
			t.Fatal(err)
		}
		return cc.Stats().NearHits > before
	})
	return v
}

// TestNearCacheCoherentAcrossClients: a value near-cached by one client is
// dropped when another client invalidates it or stores a new one, long
// before the near-cache bound (an hour) or the TTL (a minute).
func TestNearCacheCoherentAcrossClients(t *testing.T) {
	cl := startCluster(t)
	a, b := newClient(t, cl), newClient(t, cl)
	cc := cache.New(a, "near", cache.NearCache(time.Hour))
	var runs atomic.Int32
	fn := func(context.Context) (string, error) { return "v" + strconv.Itoa(int(runs.Add(1))), nil }
	if v := warmNear(t, cc, "k", fn); v != "v1" {
		t.Fatalf("warm value %q, want v1", v)
	}

	// Another client invalidates: the next computation happens here.
	if _, err := b.Invalidate(t.Context(), []byte("k"), false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the invalidation to reach the near-cache", func() bool {
		v, err := cache.MemoizeIn(t.Context(), cc, "k", time.Minute, fn)
		return err == nil && v == "v2"
	})

	// Another client stores a new value directly.
	warmNear(t, cc, "k", fn)
	if _, err := b.CacheSet(t.Context(), []byte("k"), []byte(`"from-b"`), time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the store to reach the near-cache", func() bool {
		v, err := cache.MemoizeIn(t.Context(), cc, "k", time.Minute, fn)
		return err == nil && v == "from-b"
	})
	if n := runs.Load(); n != 2 {
		t.Errorf("computed %d times, want 2", n)
	}
}

// TestNearCacheFallsBackWhenItsWatchIsDown: the member serving the
// near-cache's watch is cut off from the others; the near-cache stops
// serving (every call goes to the server, which the client reaches through
// the leader) and never serves the value another client invalidated
// meanwhile.
func TestNearCacheFallsBackWhenItsWatchIsDown(t *testing.T) {
	cl := startCluster(t)
	leader := cl.MustLeader()
	f := (leader + 1) % 3
	a, err := client.New(client.Config{Endpoints: []string{cl.Endpoints[f]}, Dialer: cl.Dialer, AttemptTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		cache.Close(ctx, a)
		a.Close()
	})
	b := newClient(t, cl)
	cc := cache.New(a, "near", cache.NearCache(time.Hour))
	var runs atomic.Int32
	fn := func(context.Context) (string, error) { return "v" + strconv.Itoa(int(runs.Add(1))), nil }
	warm := warmNear(t, cc, "k", fn)

	cl.Disconnect(f)
	if _, err := b.Invalidate(t.Context(), []byte("k"), false); err != nil {
		t.Fatal(err)
	}
	// Within about a second the near-cache gives up vouching; from then on
	// no call is served "old" from the process.
	time.Sleep(1500 * time.Millisecond)
	before := cc.Stats().NearHits
	for range 5 {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		v, err := cache.MemoizeIn(ctx, cc, "k", time.Minute, fn)
		cancel()
		if err == nil && v == warm {
			t.Fatalf("Memoize with the near-cache's member cut off = %q, the value another client invalidated", v)
		}
	}
	if after := cc.Stats().NearHits; after != before {
		t.Errorf("near-cache hits went from %d to %d while its watch was down", before, after)
	}
}
