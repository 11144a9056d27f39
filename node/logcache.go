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

	mu sync.RWMutex
	// ring holds copies of the entries' structs (not the pointers raft
	// hands in: on the leader those point into raft's futures, whose
	// results would stay alive with them); entry i is ring[i % len(ring)]
	// for lo <= i <= hi. The data is shared with raft.
	ring   []raft.Log
	lo, hi uint64 // lo > hi: empty
	bytes  int    // entryBytes of the entries in [lo, hi]
}

func newTailCache(store raft.LogStore, entries, maxBytes int) *tailCache {
	return &tailCache{store: store, maxBytes: maxBytes, ring: make([]raft.Log, entries), lo: 1}
}

// entryBytes is what an entry holds in memory, roughly.
func entryBytes(l *raft.Log) int { return 64 + len(l.Data) + len(l.Extensions) }

func (c *tailCache) slot(i uint64) *raft.Log { return &c.ring[i%uint64(len(c.ring))] }

func (c *tailCache) GetLog(idx uint64, log *raft.Log) error {
	c.mu.RLock()
	if c.lo <= idx && idx <= c.hi {
		*log = *c.slot(idx)
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
		// Make room first: the slot l takes may be the oldest entry's.
		for l.Index-c.lo+1 > uint64(len(c.ring)) {
			c.dropLowLocked()
		}
		*c.slot(l.Index) = *l
		c.hi = l.Index
		c.bytes += entryBytes(l)
		for c.bytes > c.maxBytes && c.lo < c.hi {
			c.dropLowLocked()
		}
	}
	return nil
}

// dropLowLocked forgets the oldest cached entry.
func (c *tailCache) dropLowLocked() {
	s := c.slot(c.lo)
	c.bytes -= entryBytes(s)
	*s = raft.Log{}
	c.lo++
}

// dropHighLocked forgets the newest cached entry.
func (c *tailCache) dropHighLocked() {
	s := c.slot(c.hi)
	c.bytes -= entryBytes(s)
	*s = raft.Log{}
	c.hi--
}

func (c *tailCache) clearLocked() {
	clear(c.ring)
	c.lo, c.hi, c.bytes = 1, 0, 0
}

// DeleteRange forgets the cached entries in [min, max], then deletes them
// from the store without holding the cache's lock (a store that waits for
// disk room must not hold up reads of cached entries, nor raft's deletion of
// old entries that frees the room). Raft deletes either a suffix (a
// conflicting tail a new leader overwrites; on its main goroutine, as every
// append) or a prefix (compaction after a snapshot, at or below the
// snapshot's index, which is below anything being appended), so no entry
// is cached again before the store has deleted it.
func (c *tailCache) DeleteRange(min, max uint64) error {
	c.mu.Lock()
	if c.lo <= c.hi && min <= c.hi && max >= c.lo {
		if min <= c.lo {
			for c.lo <= c.hi && c.lo <= max {
				c.dropLowLocked()
			}
		} else {
			for c.hi >= min {
				c.dropHighLocked()
			}
		}
	}
	c.mu.Unlock()
	return c.store.DeleteRange(min, max)
}

func (c *tailCache) FirstIndex() (uint64, error) { return c.store.FirstIndex() }
func (c *tailCache) LastIndex() (uint64, error)  { return c.store.LastIndex() }

// IsMonotonic passes on the store's answer (raft-wal's is true: raft then
// removes the whole log when it installs a snapshot, rather than keeping a
// suffix past the snapshot).
func (c *tailCache) IsMonotonic() bool {
	m, ok := c.store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

var _ raft.MonotonicLogStore = (*tailCache)(nil)
