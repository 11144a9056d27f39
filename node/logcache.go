package node

import (
	"sync"

	"github.com/hashicorp/raft"
)

// tailCache keeps the newest entries written to the log in memory, so that
// applying them (on a follower: read back by index once the leader's
// commit index passes them) and replicating them (on the leader) does not
// read them back from disk.
//
// Why not raft.LogCache: it holds a fixed count of entries. Under load a
// follower runs more than its 512 entries behind between appending and
// applying (the leader pipelines up to 128 AppendEntries of up to 256
// entries), so followers read most entries back with a pread each (17% of a
// follower's CPU under 1000 writing clients). A larger count would be
// unbounded in bytes: entries may be 1.5 MiB each. This cache holds the
// contiguous run [lo, hi] of the newest entries, bounded by a count and by
// their bytes.
// The cache's bounds: 32 full AppendEntries of entries, and 32 MiB.
const (
	tailCacheEntries = 8192
	tailCacheBytes   = 32 << 20
)

type tailCache struct {
	store    raft.LogStore
	maxBytes int

	mu     sync.RWMutex
	ring   []*raft.Log // entry i at ring[i % len(ring)], for lo <= i <= hi
	lo, hi uint64      // lo > hi: empty
	bytes  int
}

func newTailCache(store raft.LogStore, entries, maxBytes int) *tailCache {
	return &tailCache{store: store, maxBytes: maxBytes, ring: make([]*raft.Log, entries), lo: 1}
}

// entryBytes is what an entry holds in memory, roughly.
func entryBytes(l *raft.Log) int { return 64 + len(l.Data) + len(l.Extensions) }

func (c *tailCache) GetLog(idx uint64, log *raft.Log) error {
	c.mu.RLock()
	if c.lo <= idx && idx <= c.hi {
		*log = *c.ring[idx%uint64(len(c.ring))]
		c.mu.RUnlock()
		return nil
	}
	c.mu.RUnlock()
	return c.store.GetLog(idx, log)
}

func (c *tailCache) StoreLog(log *raft.Log) error { return c.StoreLogs([]*raft.Log{log}) }

// StoreLogs writes to the store first: only what the store holds is cached.
func (c *tailCache) StoreLogs(logs []*raft.Log) error {
	if err := c.store.StoreLogs(logs); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range logs {
		if c.lo > c.hi || l.Index != c.hi+1 {
			// Not the next entry (the first store, or after a snapshot was
			// installed): start the run again here.
			c.clearLocked()
			c.lo = l.Index
		}
		c.ring[l.Index%uint64(len(c.ring))] = l
		c.hi = l.Index
		c.bytes += entryBytes(l)
		for c.hi-c.lo+1 > uint64(len(c.ring)) || (c.bytes > c.maxBytes && c.lo < c.hi) {
			c.dropLowLocked()
		}
	}
	return nil
}

// dropLowLocked forgets the oldest cached entry.
func (c *tailCache) dropLowLocked() {
	slot := &c.ring[c.lo%uint64(len(c.ring))]
	if *slot != nil && (*slot).Index == c.lo {
		c.bytes -= entryBytes(*slot)
		*slot = nil
	}
	c.lo++
}

func (c *tailCache) clearLocked() {
	clear(c.ring)
	c.lo, c.hi, c.bytes = 1, 0, 0
}

// DeleteRange drops the cached entries in [min, max] from the cache as well:
// a suffix (a conflicting tail a new leader overwrites) or a prefix
// (compaction after a snapshot, normally older than anything cached).
func (c *tailCache) DeleteRange(min, max uint64) error {
	c.mu.Lock()
	if c.lo <= c.hi && min <= c.hi && max >= c.lo {
		c.clearLocked()
	}
	err := c.store.DeleteRange(min, max)
	c.mu.Unlock()
	return err
}

func (c *tailCache) FirstIndex() (uint64, error) { return c.store.FirstIndex() }
func (c *tailCache) LastIndex() (uint64, error)  { return c.store.LastIndex() }

// IsMonotonic passes on the store's answer (raft-wal's is true: raft then
// never deletes a suffix without first installing a snapshot).
func (c *tailCache) IsMonotonic() bool {
	m, ok := c.store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

var _ raft.MonotonicLogStore = (*tailCache)(nil)
