package fsm

import (
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func entryAt(h *harness, key string) (kvpb.CacheState, *kvpb.CacheEntry) {
	return h.f.CacheEntry([]byte(key), h.f.LogTime())
}

func TestCacheFillStoreAndStale(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(60000), h.session(60000)

	r := h.ok(fill(a, "k", 1000, 0)).GetFill()
	if r.State != kvpb.CacheState_CACHE_STATE_MISS || r.LeaseToken != h.index {
		t.Fatalf("Fill(a) = %v, want MISS with lease %d", r, h.index)
	}
	tok := r.LeaseToken
	// Same session asks again: same token.
	if r := h.ok(fill(a, "k", 1000, 0)).GetFill(); r.LeaseToken != tok {
		t.Errorf("Fill(a) again: token %d, want %d", r.LeaseToken, tok)
	}
	// Another session: FILLING, no lease.
	if r := h.ok(fill(b, "k", 1000, 0)).GetFill(); r.State != kvpb.CacheState_CACHE_STATE_FILLING || r.LeaseToken != 0 {
		t.Errorf("Fill(b) = %v, want FILLING", r)
	}
	// Stale token and wrong session rejected.
	h.code(store(a, "k", tok+100, "x", 1000, 0), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	h.code(store(b, "k", tok, "x", 1000, 0), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	e := h.ok(store(a, "k", tok, "v1", 1000, 500)).GetStore().Entry
	if string(e.Value) != "v1" || e.FreshUntil != h.f.LogTime()+1000*ms || e.StaleUntil != e.FreshUntil+500*ms || e.Lease != nil {
		t.Errorf("Store = %v", e)
	}
	filledAt := h.f.LogTime()
	if st, _ := entryAt(h, "k"); st != kvpb.CacheState_CACHE_STATE_FRESH {
		t.Errorf("state = %v, want FRESH", st)
	}
	if r := h.ok(fill(b, "k", 1000, 0)).GetFill(); r.State != kvpb.CacheState_CACHE_STATE_FRESH || string(r.Entry.Value) != "v1" {
		t.Errorf("Fill on fresh = %v", r)
	}
	// Reused token after the store: rejected, counted.
	h.code(store(a, "k", tok, "again", 1000, 0), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	if n := h.f.CacheStats().StaleStoresRejected; n != 3 {
		t.Errorf("stale_stores_rejected = %d, want 3", n)
	}

	// Stale window: the first caller gets the lease and the stale value,
	// others get the stale value without a lease.
	h.now = filledAt + 1000*ms
	r = h.ok(fill(b, "k", 1000, 0)).GetFill()
	if r.State != kvpb.CacheState_CACHE_STATE_STALE || string(r.Entry.Value) != "v1" || r.LeaseToken != h.index {
		t.Errorf("Fill(b) in stale window = %v, want STALE with a lease", r)
	}
	if r := h.ok(fill(a, "k", 1000, 5000)).GetFill(); r.State != kvpb.CacheState_CACHE_STATE_STALE || r.LeaseToken != 0 || len(r.Entry.Waiters) != 0 {
		t.Errorf("Fill(a) in stale window = %v, want STALE, no lease, not queued", r)
	}
	// Past the stale window the value is gone (removed by a tick).
	h.now = filledAt + 1500*ms
	h.ok(tick())
	if st, e := entryAt(h, "k"); st != kvpb.CacheState_CACHE_STATE_FILLING || len(e.Value) != 0 {
		t.Errorf("after stale window: %v %v, want FILLING without value", st, e)
	}
}

func TestCacheLeaseExpiryAndTakeover(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(60000), h.session(60000), h.session(60000)
	tokA := h.ok(fill(a, "k", 1000, 0)).GetFill().LeaseToken
	if r := h.ok(fill(b, "k", 300, 5000)).GetFill(); r.State != kvpb.CacheState_CACHE_STATE_FILLING || len(r.Entry.Waiters) != 1 {
		t.Errorf("Fill(b, wait) = %v, want FILLING and queued", r)
	}
	h.ok(fill(c, "k", 300, 5000))
	h.ok(fill(b, "k", 300, 5000)) // once only
	if _, e := entryAt(h, "k"); len(e.Waiters) != 2 || e.Waiters[0] != b {
		t.Errorf("waiters = %v, want [b c]", e.Waiters)
	}
	h.at(999).ok(tick())
	if _, e := entryAt(h, "k"); e.Lease.GetToken() != tokA {
		t.Errorf("lease expired early")
	}
	h.at(1000).ok(tick()) // a's lease expires: b takes over, with a's lease_ms
	_, e := entryAt(h, "k")
	if e.Lease.GetSession() != b || e.Lease.GetToken() != h.index || e.Lease.GetExpiresAt() != t0+2000*ms {
		t.Errorf("lease after expiry = %v, want b, token %d, until %d", e.Lease, h.index, t0+2000*ms)
	}
	tokB := e.Lease.Token
	if r := h.ok(fill(b, "k", 300, 0)).GetFill(); r.LeaseToken != tokB || r.State != kvpb.CacheState_CACHE_STATE_MISS {
		t.Errorf("Fill(b) after takeover = %v, want MISS with token %d", r, tokB)
	}
	h.code(store(a, "k", tokA, "late", 1000, 0), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	// b abandons: c takes over in the same apply.
	h.ok(storeReq(&kvpb.StoreRequest{Header: hdr(b, 0), Key: []byte("k"), Token: tokB, Abandon: true}))
	if _, e := entryAt(h, "k"); e.Lease.GetSession() != c || e.Lease.GetToken() != h.index {
		t.Errorf("lease after abandon = %v, want c at %d", e.Lease, h.index)
	}
	// c's session closes: the lease ends, nobody waits, the entry goes.
	h.ok(closeSession(c))
	if _, e := entryAt(h, "k"); e != nil {
		t.Errorf("entry after the last lease holder closed = %v, want nil", e)
	}
	st := h.f.CacheStats()
	if st.LeasesGranted != 3 || st.LeasesExpired != 1 {
		t.Errorf("stats = %v, want 3 granted, 1 expired", st)
	}
}

func TestCacheNegativeSetInvalidate(t *testing.T) {
	h := newHarness(t)
	a := h.session(60000)
	tok := h.ok(fill(a, "err", 1000, 0)).GetFill().LeaseToken
	e := h.ok(storeReq(&kvpb.StoreRequest{Header: hdr(a, 0), Key: []byte("err"), Token: tok, Value: []byte("boom"), TtlMs: 100, IsError: true})).GetStore().Entry
	if !e.IsError || string(e.Value) != "boom" {
		t.Errorf("negative entry = %v", e)
	}
	// CacheSet cancels a lease in progress.
	tok = h.ok(fill(a, "p/1", 1000, 0)).GetFill().LeaseToken
	h.ok(cacheSet("p/1", "set", 1000))
	h.code(store(a, "p/1", tok, "x", 1000, 0), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	h.ok(cacheSet("p/2", "v", 1000))
	h.ok(cacheSet("q", "v", 1000))
	h.ok(put("p/kv", "kv", 0))
	if n := h.ok(invalidate("p/", true)).GetInvalidate().Invalidated; n != 2 {
		t.Errorf("Invalidate(p/ prefix) = %d, want 2", n)
	}
	if n := h.ok(invalidate("q", false)).GetInvalidate().Invalidated; n != 1 {
		t.Errorf("Invalidate(q) = %d, want 1", n)
	}
	if n := h.ok(invalidate("q", false)).GetInvalidate().Invalidated; n != 0 {
		t.Errorf("Invalidate(q) again = %d, want 0", n)
	}
	if h.get("p/kv") == nil {
		t.Errorf("Invalidate removed a KV key")
	}
	if st := h.f.CacheStats(); st.Entries != 1 {
		t.Errorf("entries = %d, want 1 (err)", st.Entries)
	}
}

func TestCacheEvictionDeterministic(t *testing.T) {
	run := func() ([]string, *kvpb.CacheStatsResponse) {
		h := newHarness(t)
		h.limits = &kvpb.StateLimits{CacheMaxBytes: 30}
		for _, k := range []string{"a", "b", "c", "d"} { // 1+9 = 10 bytes each
			h.ok(cacheSet(k, "123456789", 60000))
		}
		h.ok(cacheSet("b", "123456789", 60000)) // b refreshed: newest
		var keys []string
		for _, k := range []string{"a", "b", "c", "d"} {
			if st, _ := entryAt(h, k); st == kvpb.CacheState_CACHE_STATE_FRESH {
				keys = append(keys, k)
			}
		}
		return keys, h.f.CacheStats()
	}
	keys, st := run()
	if want := []string{"b", "c", "d"}; !equalStrings(keys, want) {
		t.Errorf("kept %q, want %q", keys, want)
	}
	if st.Evictions != 1 || st.Bytes != 30 || st.MaxBytes != 30 || st.Stores != 5 {
		t.Errorf("stats = %v", st)
	}
	if keys2, _ := run(); !equalStrings(keys, keys2) {
		t.Errorf("eviction differs between runs: %q vs %q", keys, keys2)
	}
	// The entry just stored is never evicted, even alone over the bound.
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{CacheMaxBytes: 5}
	h.ok(cacheSet("big", "0123456789", 60000))
	if st, _ := entryAt(h, "big"); st != kvpb.CacheState_CACHE_STATE_FRESH {
		t.Errorf("the entry just stored was evicted")
	}
}

func TestCacheFillNeedsSession(t *testing.T) {
	h := newHarness(t)
	h.code(fill(0, "k", 1000, 0), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	h.code(store(0, "k", 1, "v", 1000, 0), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	a := h.session(60000)
	h.code(fill(a, "k", 0, 0), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
}
