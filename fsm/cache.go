package fsm

import (
	"slices"
	"strings"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func cacheWaiterIndex(ws []cacheWaiter, session uint64) int {
	return slices.IndexFunc(ws, func(w cacheWaiter) bool { return w.session == session })
}

// cacheState is the entry's state at now.
func cacheState(c cacheItem, now int64) kvpb.CacheState {
	switch {
	case c.hasValue && now < c.freshUntil:
		return kvpb.CacheState_CACHE_STATE_FRESH
	case c.hasValue && now < c.staleUntil:
		return kvpb.CacheState_CACHE_STATE_STALE
	case c.lease.token != 0 && c.lease.expiresAt > now:
		return kvpb.CacheState_CACHE_STATE_FILLING
	}
	return kvpb.CacheState_CACHE_STATE_MISS
}

// cacheProto renders an entry as seen at now: the value only while it is
// usable (fresh or stale), the lease only while it lasts, live waiters.
func (s *state) cacheProto(c cacheItem, now int64) *kvpb.CacheEntry {
	e := &kvpb.CacheEntry{Key: []byte(c.key)}
	if st := cacheState(c, now); st == kvpb.CacheState_CACHE_STATE_FRESH || st == kvpb.CacheState_CACHE_STATE_STALE {
		e.Value = cloneBytes(c.value)
		if e.Value == nil {
			e.Value = []byte{}
		}
		e.FreshUntil, e.StaleUntil, e.FilledIndex, e.IsError = c.freshUntil, c.staleUntil, c.filledIdx, c.isError
	}
	if c.lease.token != 0 && c.lease.expiresAt > now {
		e.Lease = &kvpb.FillLease{Session: c.lease.session, Token: c.lease.token, ExpiresAt: c.lease.expiresAt}
	}
	for _, w := range c.waiters {
		if se := s.sessions[w.session]; se != nil && se.expiresAt > now && w.waitUntil > now {
			e.Waiters = append(e.Waiters, w.session)
		}
	}
	return e
}

func dropValue(c *cacheItem) {
	c.value, c.hasValue, c.freshUntil, c.staleUntil, c.filledIdx, c.isError = nil, false, 0, 0, 0, false
}

// grantLease gives the fill lease to session, token = this entry's index.
func (s *state) grantLease(c *cacheItem, session uint64, leaseMs int64) {
	c.lease = fillLease{session: session, token: s.index, expiresAt: s.logTime + leaseMs*nsPerMs}
	c.leaseMs = leaseMs
	if i := cacheWaiterIndex(c.waiters, session); i >= 0 {
		c.waiters = slices.Delete(slices.Clone(c.waiters), i, i+1)
	}
	s.counters.leasesGranted++
}

// passLease gives an ended lease (expiry, abandon, session end) to the first
// waiter whose session and wait are still alive, for the entry's lease_ms.
func (s *state) passLease(c *cacheItem) {
	ws := c.waiters
	for len(ws) > 0 {
		w := ws[0]
		ws = ws[1:]
		if s.liveSession(w.session) == nil || w.waitUntil <= s.logTime {
			continue
		}
		c.waiters = ws
		s.grantLease(c, w.session, c.leaseMs)
		return
	}
	c.waiters = nil
}

func (s *state) fill(req *kvpb.FillRequest) *kvpb.CommandResult {
	switch {
	case len(req.Key) == 0:
		return invalid("key: must not be empty")
	case req.LeaseMs <= 0:
		return invalid("lease_ms: must be positive, got %d", req.LeaseMs)
	case req.WaitMs < 0:
		return invalid("wait_ms: must not be negative, got %d", req.WaitMs)
	}
	sess := req.Header.GetSession()
	key := string(req.Key)
	c, ok := s.getCache(key)
	if !ok {
		c = cacheItem{key: key}
	}
	resp := &kvpb.FillResponse{}
	result := &kvpb.CommandResult{Result: &kvpb.CommandResult_Fill{Fill: resp}}
	st := cacheState(c, s.logTime)
	stale := st == kvpb.CacheState_CACHE_STATE_STALE
	missOrStale := kvpb.CacheState_CACHE_STATE_MISS
	if stale {
		missOrStale = kvpb.CacheState_CACHE_STATE_STALE
	}
	leaseLive := c.lease.token != 0 && c.lease.expiresAt > s.logTime
	if bug("fill-lease-half") && c.lease.expiresAt-c.leaseMs*nsPerMs/2 <= s.logTime {
		leaseLive = false // a lease taken for over when half of it has run
	}

	switch {
	case st == kvpb.CacheState_CACHE_STATE_FRESH:
		resp.State = st
	case leaseLive && c.lease.session == sess:
		resp.State, resp.LeaseToken = missOrStale, c.lease.token
	case !leaseLive:
		s.grantLease(&c, sess, req.LeaseMs)
		s.putCache(c)
		resp.State, resp.LeaseToken = missOrStale, c.lease.token
	case stale:
		resp.State = st
	default:
		resp.State = kvpb.CacheState_CACHE_STATE_FILLING
		if req.WaitMs > 0 {
			until := s.logTime + req.WaitMs*nsPerMs
			c.waiters = slices.Clone(c.waiters)
			if i := cacheWaiterIndex(c.waiters, sess); i >= 0 {
				c.waiters[i].waitUntil = max(c.waiters[i].waitUntil, until)
			} else {
				c.waiters = append(c.waiters, cacheWaiter{session: sess, waitUntil: until})
			}
			s.putCache(c)
		}
	}
	resp.Entry = s.cacheProto(c, s.logTime)
	return result
}

func leaseStale(key string, token, current uint64) *kvpb.CommandResult {
	r := fail(kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN, "cache key %q: lease token %d is not current (current %d)", key, token, current)
	r.CurrentToken = current
	return r
}

// setValue stores a value in an entry, ending its lease and its line.
func (s *state) setValue(c *cacheItem, value []byte, ttlMs, staleMs int64, isError bool) {
	c.value, c.hasValue, c.isError = value, true, isError
	c.freshUntil = s.logTime + ttlMs*nsPerMs
	c.staleUntil = c.freshUntil + staleMs*nsPerMs
	c.filledIdx = s.index
	c.lease, c.waiters = fillLease{}, nil
	s.counters.stores++
	s.putCache(*c)
	s.evict(c.key)
}

func validateTTL(ttlMs, staleMs int64) *kvpb.CommandResult {
	if ttlMs <= 0 {
		return invalid("ttl_ms: must be positive, got %d", ttlMs)
	}
	if staleMs < 0 {
		return invalid("stale_ms: must not be negative, got %d", staleMs)
	}
	return nil
}

// store completes a fill: the token must be the live lease's and the lease
// must belong to the caller's session.
func (s *state) store(req *kvpb.StoreRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 {
		return invalid("key: must not be empty")
	}
	if !req.Abandon {
		if r := validateTTL(req.TtlMs, req.StaleMs); r != nil {
			return r
		}
	}
	key := string(req.Key)
	c, _ := s.getCache(key)
	if (c.lease.token == 0 || c.lease.token != req.Token || c.lease.session != req.Header.GetSession() || c.lease.expiresAt <= s.logTime) && !bug("unfenced-store") {
		s.counters.staleStoresRejected++
		return leaseStale(key, req.Token, c.lease.token)
	}
	if req.Abandon {
		c.lease = fillLease{}
		s.passLease(&c)
		s.putCache(c)
	} else {
		restore := s.because(causeFill)
		s.setValue(&c, req.Value, req.TtlMs, req.StaleMs, req.IsError)
		restore()
	}
	c, _ = s.getCache(key)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Store{Store: &kvpb.StoreResponse{Entry: s.cacheProto(c, s.logTime)}}}
}

// cacheSet stores unconditionally; a lease in progress is cancelled (its
// holder's Store then fails) and the line is served by the new value.
func (s *state) cacheSet(req *kvpb.CacheSetRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 {
		return invalid("key: must not be empty")
	}
	if r := validateTTL(req.TtlMs, req.StaleMs); r != nil {
		return r
	}
	key := string(req.Key)
	c, ok := s.getCache(key)
	if !ok {
		c = cacheItem{key: key}
	}
	restore := s.because(causeSet)
	s.setValue(&c, req.Value, req.TtlMs, req.StaleMs, false)
	restore()
	c, _ = s.getCache(key)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_CacheSet{CacheSet: &kvpb.CacheSetResponse{Entry: s.cacheProto(c, s.logTime)}}}
}

// evict drops the values of the entries filled longest ago (never keep's)
// until the cache is within its byte bound. An evicted entry that has a
// lease or waiters stays, without a value, so the fill goes on.
func (s *state) evict(keep string) {
	defer s.because(causeEvict)()
	limit := s.counters.maxBytes
	for limit > 0 && s.cacheBytes > limit {
		var victim string
		s.byFill.Ascend(func(r fillRef) bool {
			if r.key == keep {
				return true
			}
			victim = r.key
			return false
		})
		if victim == "" {
			return
		}
		c, _ := s.getCache(victim)
		dropValue(&c)
		s.putCache(c)
		s.counters.evictions++
	}
}

// invalidate removes one entry, or every entry with the prefix, leases and
// lines included. An empty key with prefix set removes everything.
func (s *state) invalidate(req *kvpb.InvalidateRequest) *kvpb.CommandResult {
	var keys []string
	if req.Prefix {
		p := string(req.Key)
		s.cache.AscendGreaterOrEqual(cacheItem{key: p}, func(c cacheItem) bool {
			if !strings.HasPrefix(c.key, p) {
				return false
			}
			keys = append(keys, c.key)
			return true
		})
	} else {
		if len(req.Key) == 0 {
			return invalid("key: must not be empty unless prefix is set")
		}
		keys = []string{string(req.Key)}
	}
	var n uint64
	for _, k := range keys {
		if s.delCache(k) {
			n++
		}
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Invalidate{Invalidate: &kvpb.InvalidateResponse{Invalidated: n}}}
}
