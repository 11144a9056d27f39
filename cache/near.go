package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// The near-cache keeps fresh values in the process, coherent with the
// cluster through a watch on every cache entry:
//
//   - A value is kept with the index of the state it was read from; a
//     change to its key at a later index (a store, a fill, an invalidation,
//     an eviction, an expiry), made by any process, drops it as soon as the
//     watch delivers it: milliseconds on a healthy cluster.
//   - A value read before a change the watch has already delivered is not
//     kept (the watch remembers the index of each key's last change).
//   - Values are served only while the watch is healthy: it had a progress
//     message, which its member sends only after confirming with the leader
//     that it is up to date, within nearHealthy. While the watch is down or
//     its member cut off, every call goes to the server. A watch that can
//     no longer continue where it was (its member lost that history) drops
//     every value and starts again from now.
//   - A value is never served past its fresh_until (converted from log time
//     through the time the request was sent), nor past NearCache's bound.

const (
	// nearProgress is how often the near-cache's watch hears from its
	// member while idle.
	nearProgress = 200 * time.Millisecond
	// nearHealthy is how long a progress message vouches for the values:
	// a member cut off from the leader makes the near-cache fall back to
	// the server within this long.
	nearHealthy = 1 * time.Second
	// maxNearEntries bounds the near-cache; past it, expired entries are
	// swept and, if that is not enough, the whole near-cache is dropped.
	maxNearEntries = 100000
	// maxNearChanges bounds the index of each key's last change.
	maxNearChanges = 100000
)

// nearTypes are the changes that make a near-cached value wrong.
var nearTypes = []kvpb.EventType{
	kvpb.EventType_EVENT_TYPE_CACHE_STORE, kvpb.EventType_EVENT_TYPE_CACHE_FILL,
	kvpb.EventType_EVENT_TYPE_CACHE_INVALIDATE, kvpb.EventType_EVENT_TYPE_CACHE_EVICT,
	kvpb.EventType_EVENT_TYPE_CACHE_EXPIRE,
}

// nearEntry is a fresh value kept in the process.
type nearEntry struct {
	value  []byte
	err    error
	until  time.Time // local deadline, before the entry's fresh_until
	stored time.Time
	index  uint64 // the state it was read from
}

// nearCache is the process's near-cache for one client, with the watch
// that keeps it coherent. Its goroutine runs from the first use until
// close.
type nearCache struct {
	c *client.Client

	mu      sync.Mutex
	entries map[string]nearEntry
	changed map[string]uint64 // index of each key's last change seen
	// minIndex is the oldest index a value may have been read at to be
	// kept: changes after it are all seen (or in changed).
	minIndex uint64
	fresh    bool      // the watch (re)started: minIndex is set at its first item
	healthy  time.Time // values may be served until then
	running  bool
	stop     context.CancelFunc
	done     chan struct{}
}

func newNearCache(c *client.Client) *nearCache {
	// Until the watch's first item nothing is kept: a value read before
	// the watch started could miss a change made before its start.
	return &nearCache{c: c, entries: map[string]nearEntry{}, changed: map[string]uint64{}, minIndex: ^uint64(0), fresh: true}
}

// start runs the watch once (idempotent; after close it does nothing).
func (n *nearCache) start() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running || n.done != nil {
		return
	}
	n.running = true
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		n.run(ctx)
	}()
}

// close stops the watch and forgets every value.
func (n *nearCache) close() {
	n.mu.Lock()
	stop, done := n.stop, n.done
	if done == nil {
		n.done = make(chan struct{}) // never started: never will
		close(n.done)
	}
	n.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	n.mu.Lock()
	clear(n.entries)
	n.healthy = time.Time{}
	n.mu.Unlock()
}

// run keeps the watch going until ctx ends or the client is closed.
func (n *nearCache) run(ctx context.Context) {
	defer func() {
		n.mu.Lock()
		n.running, n.healthy = false, time.Time{}
		n.mu.Unlock()
	}()
	var from *uint64 // nil: from now
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		opts := []client.WatchOption{client.OnCache(), client.WithPrefix(), client.WithProgressNotify(),
			client.WithProgressInterval(nearProgress), client.WithEventTypes(nearTypes...), client.WithOutOfRangeError()}
		if from != nil {
			opts = append(opts, client.FromIndex(*from))
		}
		var err error
		for ev, werr := range n.c.Watch(ctx, nil, opts...) {
			if werr != nil {
				err = werr
				break
			}
			idx := n.apply(ev)
			from = &idx
		}
		switch {
		case ctx.Err() != nil, errors.Is(err, client.ErrClosed):
			return
		case errors.Is(err, client.ErrOutOfRange):
			// History moved past where the watch was: what changed in
			// between is unknown.
			n.reset()
			from = nil
		default:
			// Not allowed to watch (auth), or a bad request: serve nothing
			// from the process; try again later in case it changes.
			n.mu.Lock()
			n.healthy = time.Time{}
			n.mu.Unlock()
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			delay = min(2*delay, 30*time.Second)
		}
	}
}

// apply takes one item of the watch and returns the index the watch has
// reached.
func (n *nearCache) apply(ev client.Event) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fresh {
		// The watch started at or before this item's index (for a change,
		// just before it), and sees every change after that.
		n.fresh, n.minIndex = false, ev.Index
		if ev.Kind == client.EventChange {
			n.minIndex = ev.Index - 1
		}
	}
	switch ev.Kind {
	case client.EventChange:
		key := string(ev.Change.GetKey())
		if e, ok := n.entries[key]; ok && e.index < ev.Index {
			delete(n.entries, key)
		}
		if len(n.changed) >= maxNearChanges {
			clear(n.changed)
			n.minIndex = ev.Index
		}
		n.changed[key] = ev.Index
	case client.EventProgress:
		n.healthy = time.Now().Add(nearHealthy)
	}
	return ev.Index
}

// reset drops every value: the watch lost track.
func (n *nearCache) reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.entries)
	clear(n.changed)
	n.healthy = time.Time{}
	n.minIndex, n.fresh = ^uint64(0), true // nothing read before the new watch starts is kept
}

// get returns a near-cached value not older than d and still fresh, while
// the watch vouches for it.
func (n *nearCache) get(key string, d time.Duration) (nearEntry, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.entries[key]
	if !ok {
		return nearEntry{}, false
	}
	now := time.Now()
	if !now.Before(e.until) {
		delete(n.entries, key)
		return nearEntry{}, false
	}
	if !now.Before(e.stored.Add(d)) || !now.Before(n.healthy) {
		return nearEntry{}, false
	}
	return e, true
}

// put keeps a fresh entry served at header, for a request sent at sentAt.
// The local deadline is sentAt + (fresh_until - header.log_time): log time
// never advances faster than real time, and a response that is not a stale
// read was stamped after the request was sent, so log time reaches
// fresh_until no sooner than that. Stale reads are not kept (their log time
// may be old), nor a value the watch has already seen changed since.
func (n *nearCache) put(key string, e *kvpb.CacheEntry, h *kvpb.ResponseHeader, sentAt time.Time, r *result) {
	if h == nil || h.GetStale() || h.GetLogTime() == 0 || e.GetFreshUntil() <= h.GetLogTime() {
		return
	}
	until := sentAt.Add(time.Duration(e.GetFreshUntil() - h.GetLogTime()))
	index := h.GetAppliedIndex()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running || index < n.minIndex || n.changed[key] > index {
		return
	}
	now := time.Now()
	if len(n.entries) >= maxNearEntries {
		for k, ne := range n.entries {
			if !now.Before(ne.until) {
				delete(n.entries, k)
			}
		}
		if len(n.entries) >= maxNearEntries {
			clear(n.entries)
		}
	}
	n.entries[key] = nearEntry{value: r.value, err: r.err, until: until, stored: now, index: index}
}

// drop forgets key, or every key with the prefix.
func (n *nearCache) drop(key string, prefix bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !prefix {
		delete(n.entries, key)
		return
	}
	for k := range n.entries {
		if strings.HasPrefix(k, key) {
			delete(n.entries, k)
		}
	}
}
