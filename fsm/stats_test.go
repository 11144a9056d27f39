package fsm

import (
	"bytes"
	"io"
	"testing"
)

// recount computes Stats the slow way, by walking the whole state.
func recount(f *FSM) Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.s
	st := Stats{
		AppliedIndex:             s.index,
		LogTime:                  s.logTime,
		Keys:                     s.kv.Len(),
		Sessions:                 len(s.sessions),
		CacheEntries:             s.cache.Len(),
		CacheMaxBytes:            s.counters.maxBytes,
		CacheStores:              s.counters.stores,
		CacheStaleStoresRejected: s.counters.staleStoresRejected,
		CacheEvictions:           s.counters.evictions,
		FillLeasesGranted:        s.counters.leasesGranted,
		FillLeasesExpired:        s.counters.leasesExpired,
	}
	s.kv.Ascend(func(it *kvItem) bool {
		st.KVBytes += uint64(len(it.key) + len(it.value))
		return true
	})
	s.locks.Ascend(func(l lockItem) bool {
		if l.token != 0 {
			st.LocksHeld++
		}
		st.LockWaiters += len(l.waiters)
		return true
	})
	s.cache.Ascend(func(c cacheItem) bool {
		st.CacheBytes += uint64(len(c.key) + len(c.value))
		st.CacheWaiters += len(c.waiters)
		if c.lease.token != 0 {
			st.FillLeases++
		}
		return true
	})
	return st
}

// TestStatsMatchRecount: the counts Apply keeps in step equal a full
// recount after every entry of random logs, and after a restore.
func TestStatsMatchRecount(t *testing.T) {
	var seen Stats // the most of each count any entry left
	for seed := uint64(1); seed <= 8; seed++ {
		log := randomLog(t, seed, 600)
		f := New()
		for i, data := range log {
			f.Apply(uint64(i+1), data)
			got, want := f.Stats(), recount(f)
			if got != want {
				t.Fatalf("seed %d, after entry %d: Stats() = %+v, recount = %+v", seed, i+1, got, want)
			}
			seen.Keys = max(seen.Keys, got.Keys)
			seen.LocksHeld = max(seen.LocksHeld, got.LocksHeld)
			seen.LockWaiters = max(seen.LockWaiters, got.LockWaiters)
			seen.CacheWaiters = max(seen.CacheWaiters, got.CacheWaiters)
			seen.FillLeases = max(seen.FillLeases, got.FillLeases)
		}

		r := New()
		if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
			t.Fatal(err)
		}
		if got, want := r.Stats(), f.Stats(); got != want {
			t.Fatalf("seed %d: Stats() after restore = %+v, want %+v", seed, got, want)
		}
	}
	// The logs must have exercised what the test checks.
	if seen.Keys == 0 || seen.LocksHeld == 0 || seen.LockWaiters == 0 || seen.CacheWaiters == 0 || seen.FillLeases == 0 {
		t.Fatalf("the random logs never held a key, a lock, a lock waiter, a cache waiter or a lease: %+v", seen)
	}
}

// TestLockHandoffGaps: a release hands over at once (gap 0); an expired
// holder's lock is handed over at the entry that expires it, the gap
// measured from the session's deadline; a break waits for the lock-delay.
func TestLockHandoffGaps(t *testing.T) {
	h := newHarness(t)
	var gaps []int64
	h.f.OnLockHandoff(func(index uint64, gap int64) {
		if index != h.index {
			t.Errorf("handoff reported with index %d, applying %d", index, h.index)
		}
		gaps = append(gaps, gap)
	})
	expect := func(what string, want ...int64) {
		t.Helper()
		if len(gaps) != len(want) {
			t.Fatalf("%s: handoff gaps %v, want %v", what, gaps, want)
		}
		for i := range want {
			if gaps[i] != want[i] {
				t.Fatalf("%s: handoff gaps %v, want %v", what, gaps, want)
			}
		}
		gaps = nil
	}

	a, b := h.session(10_000), h.session(1_000)
	tok := h.ok(acquire(a, 1, "L", 0, 0)).GetAcquire().Token
	h.ok(acquire(b, 1, "L", 60_000, 0))
	expect("queued")
	h.ok(release(a, "L", tok))
	expect("release", 0)
	if st := h.f.Stats(); st.LocksHeld != 1 || st.LockWaiters != 0 {
		t.Fatalf("after the handoff: %d held, %d waiting; want 1, 0", st.LocksHeld, st.LockWaiters)
	}

	// b (TTL 1s, created at t0) holds L; a waits. b expires at t0+1000ms;
	// the tick that notices comes 300ms later.
	h.at(10).ok(acquire(a, 2, "L", 60_000, 200))
	h.at(1300).ok(tick())
	expect("expiry", 300*ms)

	// a asked for a 200ms lock-delay: after a break, the waiter gets the
	// lock with the first entry after the delay.
	c := h.at(1400).session(60_000)
	h.ok(acquire(c, 1, "L", 60_000, 0))
	h.ok(breakLock("L", "test"))
	expect("break, within the delay")
	if st := h.f.Stats(); st.LocksHeld != 0 || st.LockWaiters != 1 {
		t.Fatalf("within the delay: %d held, %d waiting; want 0, 1", st.LocksHeld, st.LockWaiters)
	}
	h.at(1450).ok(tick())
	expect("break, still within the delay")
	h.at(1700).ok(tick())
	expect("break, after the delay", 300*ms)
}
