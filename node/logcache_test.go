package node

import (
	"bytes"
	"testing"

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
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newTailCache(s, 8, 1<<20)
	for i := uint64(1); i <= 21; i += 4 {
		if err := c.StoreLogs(entries(i, i+3, 10, 1)); err != nil {
			t.Fatal(err)
		}
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
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	// Each entry counts 64 + 1000 bytes: 3 fit in 3300 bytes.
	c := newTailCache(s, 1024, 3300)
	if err := c.StoreLogs(entries(1, 10, 1000, 1)); err != nil {
		t.Fatal(err)
	}
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
	if err := c.StoreLogs(entries(11, 11, 5000, 1)); err != nil {
		t.Fatal(err)
	}
	if c.lo != 11 || c.hi != 11 {
		t.Fatalf("cache holds [%d, %d], want [11, 11]", c.lo, c.hi)
	}
}

// A new leader overwrites a conflicting tail: the cache must never return
// the entries the store dropped.
func TestTailCacheForgetsADeletedSuffix(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newTailCache(s, 64, 1<<20)
	if err := c.StoreLogs(entries(1, 10, 10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRange(6, 10); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := c.GetLog(7, &l); err == nil {
		t.Fatalf("entry 7 was deleted but GetLog returned term %d", l.Term)
	}
	if err := c.StoreLogs(entries(6, 8, 10, 2)); err != nil {
		t.Fatal(err)
	}
	if l, miss := get(t, c, s, 7); miss || l.Term != 2 {
		t.Fatalf("entry 7 after the overwrite: store asked %v, term %d (want cached, term 2)", miss, l.Term)
	}
	// Entries before the new run come from the store.
	if l, miss := get(t, c, s, 3); !miss || l.Term != 1 {
		t.Fatalf("entry 3: store asked %v, term %d", miss, l.Term)
	}
}

// After a snapshot is installed the next entries do not follow the cached
// run: the run starts again.
func TestTailCacheStartsAgainAfterAGap(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newTailCache(s, 64, 1<<20)
	if err := c.StoreLogs(entries(1, 5, 10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.StoreLogs(entries(100, 102, 10, 3)); err != nil {
		t.Fatal(err)
	}
	if c.lo != 100 || c.hi != 102 || c.bytes != 3*(64+10) {
		t.Fatalf("cache [%d, %d] %d bytes, want [100, 102] %d", c.lo, c.hi, c.bytes, 3*(64+10))
	}
	if _, miss := get(t, c, s, 4); !miss {
		t.Fatal("entry 4 is from the old run and must come from the store")
	}
}
