package node

import (
	"bytes"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// countingStore counts the reads that reach the store under the cache.
type countingStore struct {
	*raft.InmemStore
	gets int
}

func (s *countingStore) GetLog(idx uint64, l *raft.Log) error {
	s.gets++
	return s.InmemStore.GetLog(idx, l)
}

func entries(from, to uint64, size int, term uint64) []*raft.Log {
	var ls []*raft.Log
	for i := from; i <= to; i++ {
		ls = append(ls, &raft.Log{Index: i, Term: term, Data: bytes.Repeat([]byte{byte(i)}, size)})
	}
	return ls
}

// newTestCache is a cache of the given bounds over an empty store.
func newTestCache(entries, maxBytes int) (*tailCache, *countingStore) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	return newTailCache(s, entries, maxBytes), s
}

// store stores logs through the cache.
func store(t *testing.T, c *tailCache, logs []*raft.Log) {
	t.Helper()
	if err := c.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
}

// get reads idx through the cache and says whether the store was asked.
func get(t *testing.T, c *tailCache, s *countingStore, idx uint64) (raft.Log, bool) {
	t.Helper()
	before := s.gets
	var l raft.Log
	if err := c.GetLog(idx, &l); err != nil {
		t.Fatalf("GetLog(%d): %v", idx, err)
	}
	if l.Index != idx {
		t.Fatalf("GetLog(%d) returned entry %d", idx, l.Index)
	}
	return l, s.gets > before
}

func TestTailCacheServesTheNewestEntries(t *testing.T) {
	c, s := newTestCache(8, 1<<20)
	for i := uint64(1); i <= 21; i += 4 {
		store(t, c, entries(i, i+3, 10, 1))
	}
	// 1..24 stored; the newest 8 (17..24) are cached.
	for i := uint64(17); i <= 24; i++ {
		if l, miss := get(t, c, s, i); miss || l.Data[0] != byte(i) {
			t.Fatalf("entry %d: store asked %v, data %v", i, miss, l.Data[:1])
		}
	}
	if _, miss := get(t, c, s, 16); !miss {
		t.Fatal("entry 16 is beyond the 8-entry bound but was served from the cache")
	}
}

func TestTailCacheIsBoundedInBytes(t *testing.T) {
	// Each entry counts 64 + 1000 bytes: 3 fit in 3300 bytes.
	c, s := newTestCache(1024, 3300)
	store(t, c, entries(1, 10, 1000, 1))
	if c.bytes > 3300 {
		t.Fatalf("cache holds %d bytes, bound 3300", c.bytes)
	}
	for i := uint64(8); i <= 10; i++ {
		if _, miss := get(t, c, s, i); miss {
			t.Fatalf("entry %d should be cached", i)
		}
	}
	if _, miss := get(t, c, s, 7); !miss {
		t.Fatal("entry 7 is over the byte bound but was served from the cache")
	}
	// One entry larger than the whole bound is still cached alone.
	store(t, c, entries(11, 11, 5000, 1))
	if c.lo != 11 || c.hi != 11 {
		t.Fatalf("cache holds [%d, %d], want [11, 11]", c.lo, c.hi)
	}
}

// A new leader overwrites a conflicting tail: the cache must never return
// the entries the store dropped.
func TestTailCacheForgetsADeletedSuffix(t *testing.T) {
	c, s := newTestCache(64, 1<<20)
	store(t, c, entries(1, 10, 10, 1))
	if err := c.DeleteRange(6, 10); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := c.GetLog(7, &l); err == nil {
		t.Fatalf("entry 7 was deleted but GetLog returned term %d", l.Term)
	}
	store(t, c, entries(6, 8, 10, 2))
	if l, miss := get(t, c, s, 7); miss || l.Term != 2 {
		t.Fatalf("entry 7 after the overwrite: store asked %v, term %d (want cached, term 2)", miss, l.Term)
	}
	// The entries before the deleted suffix stay cached.
	if l, miss := get(t, c, s, 3); miss || l.Term != 1 {
		t.Fatalf("entry 3: store asked %v, term %d (want cached, term 1)", miss, l.Term)
	}
	checkBytes(t, c)
}

// checkBytes holds the cache's byte count to the entries it caches.
func checkBytes(t *testing.T, c *tailCache) {
	t.Helper()
	want := 0
	for i := c.lo; i <= c.hi && c.lo <= c.hi; i++ {
		l := c.slot(i)
		if l.Index != i {
			t.Fatalf("slot of entry %d holds entry %d", i, l.Index)
		}
		want += entryBytes(l)
	}
	if c.bytes != want {
		t.Fatalf("cache counts %d bytes, its entries [%d, %d] hold %d", c.bytes, c.lo, c.hi, want)
	}
}

// Once the ring is full every store replaces the oldest entry: its bytes
// must leave the count (they once stayed, and the count crept up to the
// bound until the cache held almost nothing).
func TestTailCacheCountsBytesAcrossWraps(t *testing.T) {
	c, _ := newTestCache(16, 1<<20)
	for i := uint64(1); i <= 1000; i += 5 {
		store(t, c, entries(i, i+4, 40, 1))
	}
	checkBytes(t, c)
	if c.lo != 985 || c.hi != 1000 {
		t.Fatalf("cache holds [%d, %d], want [985, 1000]", c.lo, c.hi)
	}
	// Larger entries now: the cache still holds as many as fit.
	store(t, c, entries(1001, 1036, 4000, 1))
	checkBytes(t, c)
	if n := c.hi - c.lo + 1; n != 16 {
		t.Fatalf("cache holds %d entries of 4000 bytes under a 1 MiB bound, want 16", n)
	}
}

// The cache keeps its own copy of an entry's struct: on the leader raft
// hands in a pointer into its future, which holds the command's result.
func TestTailCacheCopiesTheEntry(t *testing.T) {
	c, s := newTestCache(8, 1<<20)
	ls := entries(1, 1, 10, 1)
	store(t, c, ls)
	ls[0].Term = 99
	if l, miss := get(t, c, s, 1); miss || l.Term != 1 {
		t.Fatalf("entry 1: store asked %v, term %d (want cached, term 1)", miss, l.Term)
	}
}

// Compaction deletes a prefix: what follows it stays cached.
func TestTailCacheKeepsWhatFollowsACompactedPrefix(t *testing.T) {
	c, s := newTestCache(64, 1<<20)
	store(t, c, entries(1, 20, 10, 1))
	if err := c.DeleteRange(1, 12); err != nil {
		t.Fatal(err)
	}
	if c.lo != 13 || c.hi != 20 {
		t.Fatalf("cache holds [%d, %d] after compacting 1-12, want [13, 20]", c.lo, c.hi)
	}
	checkBytes(t, c)
	if _, miss := get(t, c, s, 15); miss {
		t.Fatal("entry 15 is past the compacted prefix and should be cached")
	}
	var l raft.Log
	if err := c.GetLog(5, &l); err == nil {
		t.Fatal("entry 5 was compacted away but GetLog found it")
	}
}

// slowStore blocks DeleteRange until released.
type slowStore struct {
	*countingStore
	deleting chan struct{}
	release  chan struct{}
}

func (s *slowStore) DeleteRange(min, max uint64) error {
	close(s.deleting)
	<-s.release
	return s.countingStore.DeleteRange(min, max)
}

// A store's DeleteRange may wait (for disk room): reads of cached entries
// must not wait with it.
func TestTailCacheReadsDuringAStoreDelete(t *testing.T) {
	s := &slowStore{countingStore: &countingStore{InmemStore: raft.NewInmemStore()},
		deleting: make(chan struct{}), release: make(chan struct{})}
	c := newTailCache(s, 64, 1<<20)
	store(t, c, entries(1, 20, 10, 1))
	done := make(chan error, 1)
	go func() { done <- c.DeleteRange(1, 5) }()
	<-s.deleting
	got := make(chan raft.Log, 1)
	go func() {
		var l raft.Log
		c.GetLog(10, &l)
		got <- l
	}()
	select {
	case l := <-got:
		if l.Index != 10 {
			t.Fatalf("GetLog(10) returned entry %d", l.Index)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("GetLog of a cached entry waited for the store's DeleteRange")
	}
	close(s.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// After a snapshot is installed the next entries do not follow the cached
// run: the run starts again.
func TestTailCacheStartsAgainAfterAGap(t *testing.T) {
	c, s := newTestCache(64, 1<<20)
	store(t, c, entries(1, 5, 10, 1))
	store(t, c, entries(100, 102, 10, 3))
	if c.lo != 100 || c.hi != 102 || c.bytes != 3*(64+10) {
		t.Fatalf("cache [%d, %d] %d bytes, want [100, 102] %d", c.lo, c.hi, c.bytes, 3*(64+10))
	}
	if _, miss := get(t, c, s, 4); !miss {
		t.Fatal("entry 4 is from the old run and must come from the store")
	}
}
