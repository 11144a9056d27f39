package cache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// shared is the process-wide state of one client: the memoize session, the
// single flight per key, the keys being refreshed and the near-cache. Every
// Cache of the client uses it.
type shared struct {
	c *client.Client

	sessMu sync.Mutex // held while a session is created
	sess   *client.Session

	group singleflight.Group

	mu         sync.Mutex
	refreshing map[string]chan struct{} // closed when the refresh ends
	near       map[string]nearEntry
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
			refreshing: map[string]chan struct{}{},
			near:       map[string]nearEntry{},
			caches:     map[string]*Cache{},
		}
		registry[c] = sh
	}
	return sh
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
	sh.sessMu.Lock()
	s := sh.sess
	sh.sess = nil
	sh.sessMu.Unlock()
	if s == nil {
		return nil
	}
	return s.Close(ctx)
}

// startRefresh marks key as being refreshed; false if it already is.
func (sh *shared) startRefresh(key string) (done chan struct{}, ok bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, busy := sh.refreshing[key]; busy {
		return nil, false
	}
	done = make(chan struct{})
	sh.refreshing[key] = done
	return done, true
}

func (sh *shared) endRefresh(key string, done chan struct{}) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.refreshing, key)
	close(done)
}

// refreshOf is the done channel of a running refresh of key, or nil.
func (sh *shared) refreshOf(key string) chan struct{} {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.refreshing[key]
}

// nearEntry is a fresh value kept in the process.
type nearEntry struct {
	value  []byte
	err    error
	until  time.Time // local deadline, before the entry's fresh_until
	stored time.Time
}

// maxNearEntries bounds the near-cache; past it, expired entries are swept
// and, if that is not enough, the whole near-cache is dropped.
const maxNearEntries = 100000

// nearGet returns a near-cached value not older than d and still fresh.
func (sh *shared) nearGet(key string, d time.Duration) (nearEntry, bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.near[key]
	if !ok {
		return nearEntry{}, false
	}
	now := time.Now()
	if !now.Before(e.until) {
		delete(sh.near, key)
		return nearEntry{}, false
	}
	if !now.Before(e.stored.Add(d)) {
		return nearEntry{}, false
	}
	return e, true
}

// nearPut keeps a fresh entry served at header, for a request sent at
// sentAt. The local deadline is sentAt + (fresh_until - header.log_time):
// log time never advances faster than real time, and a response that is
// not a stale read was stamped after the request was sent, so log time
// reaches fresh_until no sooner than that. Stale reads are not kept (their
// log time may be old).
func (sh *shared) nearPut(key string, e *kvpb.CacheEntry, h *kvpb.ResponseHeader, sentAt time.Time, r *result) {
	if h == nil || h.GetStale() || h.GetLogTime() == 0 || e.GetFreshUntil() <= h.GetLogTime() {
		return
	}
	until := sentAt.Add(time.Duration(e.GetFreshUntil() - h.GetLogTime()))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := time.Now()
	if len(sh.near) >= maxNearEntries {
		for k, ne := range sh.near {
			if !now.Before(ne.until) {
				delete(sh.near, k)
			}
		}
		if len(sh.near) >= maxNearEntries {
			clear(sh.near)
		}
	}
	sh.near[key] = nearEntry{value: r.value, err: r.err, until: until, stored: now}
}

// nearDrop forgets key, or every key with the prefix.
func (sh *shared) nearDrop(key string, prefix bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !prefix {
		delete(sh.near, key)
		return
	}
	for k := range sh.near {
		if strings.HasPrefix(k, key) {
			delete(sh.near, k)
		}
	}
}
