package cache

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/kvdproject/kvd/client"
)

// shared is the process-wide state of one client: the memoize session, the
// single flight per key, the keys being refreshed and the near-cache (with
// its watch). Every Cache of the client uses it.
type shared struct {
	c *client.Client

	sessMu sync.Mutex // held while a session is created
	sess   *client.Session

	group singleflight.Group

	near *nearCache

	mu         sync.Mutex
	flights    map[string]*flightRefs // callers of each key's flight
	refreshing map[string]*refreshRun // the newest refresh of each key
	caches     map[string]*Cache
}

var (
	registryMu sync.Mutex
	registry   = map[*client.Client]*shared{}
)

func sharedOf(c *client.Client) *shared {
	registryMu.Lock()
	defer registryMu.Unlock()
	sh := registry[c]
	if sh == nil {
		sh = &shared{
			c:          c,
			flights:    map[string]*flightRefs{},
			refreshing: map[string]*refreshRun{},
			near:       newNearCache(c),
			caches:     map[string]*Cache{},
		}
		registry[c] = sh
	}
	return sh
}

// flightRefs counts the callers waiting on one key's flight, so that a
// flight whose callers have all gone is canceled instead of talking to the
// cluster for nobody.
type flightRefs struct {
	callers int
	cancel  context.CancelFunc // set by the flight once it runs
	left    bool               // every caller left before the flight ran
}

// joinFlight counts a caller of key's flight.
func (sh *shared) joinFlight(key string) *flightRefs {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	f := sh.flights[key]
	if f == nil {
		f = &flightRefs{}
		sh.flights[key] = f
	}
	f.callers++
	return f
}

// leaveFlight uncounts a caller; the last one out cancels the flight.
func (sh *shared) leaveFlight(key string, f *flightRefs) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f.callers--; f.callers > 0 {
		return
	}
	if sh.flights[key] == f {
		delete(sh.flights, key)
	}
	f.left = true
	if f.cancel != nil {
		f.cancel()
	}
}

// startFlight gives the flight of f its cancel func; it reports false when
// every caller has already left.
func (sh *shared) startFlight(f *flightRefs, cancel context.CancelFunc) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	f.cancel = cancel
	return !f.left
}

// session returns the memoize session, creating it (again, if the last one
// ended) under ctx.
func (sh *shared) session(ctx context.Context) (*client.Session, error) {
	sh.sessMu.Lock()
	defer sh.sessMu.Unlock()
	if s := sh.sess; s != nil {
		select {
		case <-s.Done():
		default:
			return s, nil
		}
	}
	s, err := sh.c.NewSession(ctx, DefaultSessionTTL, "memoize")
	if err != nil {
		return nil, fmt.Errorf("cache: create memoize session: %w", err)
	}
	sh.sess = s
	return s, nil
}

// dropSession forgets s after the server said it expired.
func (sh *shared) dropSession(s *client.Session) {
	sh.sessMu.Lock()
	defer sh.sessMu.Unlock()
	if sh.sess == s {
		sh.sess = nil
	}
}

// Close closes the process-wide memoize session of c, which gives up the
// fill leases it holds, after stopping the background refreshes of every
// Cache of c and waiting for them. It forgets c: a later Memoize on c
// starts afresh. It waits for the close to be applied and returns ctx's
// error or the client's.
func Close(ctx context.Context, c *client.Client) error {
	registryMu.Lock()
	sh := registry[c]
	delete(registry, c)
	registryMu.Unlock()
	if sh == nil {
		return nil
	}
	sh.mu.Lock()
	caches := make([]*Cache, 0, len(sh.caches))
	for _, cc := range sh.caches {
		caches = append(caches, cc)
	}
	sh.mu.Unlock()
	for _, cc := range caches {
		cc.stopRefreshes()
	}
	sh.near.close()
	sh.sessMu.Lock()
	s := sh.sess
	sh.sess = nil
	sh.sessMu.Unlock()
	if s == nil {
		return nil
	}
	return s.Close(ctx)
}

// startRefresh marks key as being refreshed under lease tok; false when a
// refresh under that same lease already runs. prev is the done channel of a
// refresh under an older lease, which the new one waits for.
func (sh *shared) startRefresh(key string, tok uint64) (run *refreshRun, prev chan struct{}, ok bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.refreshing[key]
	if old != nil && old.tok == tok {
		return nil, nil, false // this lease is being refreshed already
	}
	// A running refresh of an older lease (given up or expired) ends first;
	// the new lease must not be dropped, or it would sit unused until it
	// expired while every caller got the stale value.
	run = &refreshRun{done: make(chan struct{}), tok: tok}
	sh.refreshing[key] = run
	if old != nil {
		prev = old.done
	}
	return run, prev, true
}

func (sh *shared) endRefresh(key string, run *refreshRun) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.refreshing[key] == run {
		delete(sh.refreshing, key)
	}
	close(run.done)
}

// refreshOf is the done channel of a running refresh of key, or nil.
func (sh *shared) refreshOf(key string) chan struct{} {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if r := sh.refreshing[key]; r != nil {
		return r.done
	}
	return nil
}

// refreshRun is one background refresh of a key under one fill lease.
type refreshRun struct {
	done chan struct{} // closed when it has ended
	tok  uint64
}
