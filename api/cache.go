package api

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// cacheCounters are this node's cache counters since it started.
type cacheCounters struct {
	hits, staleHits, misses, waits atomic.Uint64
}

type cacheService struct {
	kvpb.UnimplementedCacheServer
	n *Server
}

func (s *cacheService) Get(ctx context.Context, req *kvpb.CacheGetRequest) (*kvpb.CacheGetResponse, error) {
	n := s.n
	if err := n.checkKey("key", req.GetKey()); err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_CACHE, req.GetKey())
	if err != nil {
		return nil, err
	}
	if _, err := n.reserveAnswer(ctx, n.cacheAnswerBytes()); err != nil {
		return nil, n.toStatus(err)
	}
	state, entry := n.b.FSM().CacheEntry(req.GetKey(), now)
	n.count(state)
	return &kvpb.CacheGetResponse{Header: hdr, State: state, Entry: entry}, nil
}

func (n *Server) count(state kvpb.CacheState) {
	switch state {
	case kvpb.CacheState_CACHE_STATE_FRESH:
		n.stats.hits.Add(1)
	case kvpb.CacheState_CACHE_STATE_STALE:
		n.stats.staleHits.Add(1)
	default:
		n.stats.misses.Add(1)
	}
}

// Fill is one step of memoize. It reads first (at the requested
// consistency): a FRESH entry is returned without proposing anything.
// Otherwise it proposes the fill; if another session holds the lease
// (FILLING) and wait_ms > 0, it waits on the local fsm (fsm.Watch) until the
// entry is FRESH, or the lease passes to this session (MISS/STALE with
// lease_token), or wait_ms passes (FILLING), or ctx ends.
func (s *cacheService) Fill(ctx context.Context, req *kvpb.FillRequest) (*kvpb.FillResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkDuration("lease_ms", req.GetLeaseMs()),
		n.checkDuration("wait_ms", req.GetWaitMs()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_CACHE, req.GetKey(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	if req.GetLeaseMs() == 0 {
		return nil, n.toStatus(invalid("lease_ms", 0, "lease_ms: required (how long a granted fill lease lasts)"))
	}
	now, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	// The fast path is a read like Cache.Get; the answers below come from
	// the fill's own command, its waits bounded by the stream limit.
	unreserve, err := n.reserveAnswer(ctx, n.cacheAnswerBytes())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if state, entry := n.b.FSM().CacheEntry(req.GetKey(), now); state == kvpb.CacheState_CACHE_STATE_FRESH {
		n.stats.hits.Add(1)
		return &kvpb.FillResponse{Header: hdr, State: state, Entry: entry}, nil
	}
	unreserve()
	var deadline <-chan time.Time
	if req.GetWaitMs() > 0 {
		t := time.NewTimer(msDuration(req.GetWaitMs()))
		defer t.Stop()
		deadline = t.C
	}
	res, at, err := n.propose(ctx, &kvpb.Command{Op: &kvpb.Command_Fill{Fill: req}})
	if err != nil {
		return nil, n.toStatus(err)
	}
	if err := node.ResultError(res); err != nil {
		return nil, n.toStatus(err)
	}
	resp := res.GetFill()
	if resp == nil {
		resp = &kvpb.FillResponse{}
	}
	resp.Header = n.b.WriteHeader(at.Index, at.LogTime)
	if resp.GetState() != kvpb.CacheState_CACHE_STATE_FILLING || req.GetWaitMs() <= 0 {
		n.count(resp.GetState())
		return resp, nil
	}

	// Another session is filling: wait for its result or for the lease.
	n.stats.waits.Add(1)
	session, key := req.GetHeader().GetSession(), req.GetKey()
	if err := n.b.WaitApplied(ctx, at.Index); err != nil {
		return nil, n.toStatus(err)
	}
	for {
		ch, stop := n.b.FSM().Watch(fsm.WatchCache, key)
		now := n.b.FSM().LogTime()
		state, entry := n.b.FSM().CacheEntry(key, now)
		// The adapter's index advances after a whole batch: the entry read
		// may be newer, so the header says at least its store or lease index.
		hdr := n.b.WriteHeader(max(n.b.AppliedIndex(), entry.GetFilledIndex(), entry.GetLease().GetToken()), now)
		switch {
		case state == kvpb.CacheState_CACHE_STATE_FRESH:
			stop()
			n.stats.hits.Add(1)
			return &kvpb.FillResponse{Header: hdr, State: state, Entry: entry}, nil
		case entry.GetLease().GetSession() == session && entry.GetLease().GetToken() != 0:
			stop()
			if state == kvpb.CacheState_CACHE_STATE_FILLING {
				state = kvpb.CacheState_CACHE_STATE_MISS // the caller holds the lease and must compute
			}
			n.count(state)
			return &kvpb.FillResponse{Header: hdr, State: state, Entry: entry, LeaseToken: entry.GetLease().GetToken()}, nil
		}
		select {
		case <-ch:
			stop()
		case <-deadline:
			stop()
			n.stats.misses.Add(1)
			return &kvpb.FillResponse{Header: hdr, State: kvpb.CacheState_CACHE_STATE_FILLING, Entry: entry}, nil
		case <-ctx.Done():
			stop()
			return nil, n.toStatus(ctx.Err())
		case <-n.ctx.Done():
			stop()
			return nil, n.toStatus(errWaitEnded)
		}
	}
}

func (s *cacheService) Store(ctx context.Context, req *kvpb.StoreRequest) (*kvpb.StoreResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkValue("value", req.GetValue()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_CACHE, req.GetKey(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	if req.GetToken() == 0 {
		return nil, n.toStatus(invalid("token", 0, "token: required"))
	}
	if !req.GetAbandon() {
		if err := firstErr(n.checkTTL("ttl_ms", req.GetTtlMs(), true), n.checkDuration("stale_ms", req.GetStaleMs())); err != nil {
			return nil, n.toStatus(err)
		}
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Store{Store: req}}, (*kvpb.CommandResult).GetStore)
}

func (s *cacheService) Set(ctx context.Context, req *kvpb.CacheSetRequest) (*kvpb.CacheSetResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkKey("key", req.GetKey()),
		n.checkValue("value", req.GetValue()),
		n.checkTTL("ttl_ms", req.GetTtlMs(), true),
		n.checkDuration("stale_ms", req.GetStaleMs()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_CACHE, req.GetKey(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_CacheSet{CacheSet: req}}, (*kvpb.CommandResult).GetCacheSet)
}

func (s *cacheService) Invalidate(ctx context.Context, req *kvpb.InvalidateRequest) (*kvpb.InvalidateResponse, error) {
	n := s.n
	check := n.checkKey
	if req.GetPrefix() {
		check = n.checkKeyLen // an empty prefix invalidates everything
	}
	if err := firstErr(n.checkHeader(req.GetHeader()), check("key", req.GetKey())); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_CACHE, req.GetKey(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Invalidate{Invalidate: req}}, (*kvpb.CommandResult).GetInvalidate)
}

func (s *cacheService) Stats(ctx context.Context, _ *kvpb.CacheStatsRequest) (*kvpb.CacheStatsResponse, error) {
	n := s.n
	now, hdr, err := n.b.Read(ctx, kvpb.Consistency_CONSISTENCY_STALE)
	if err != nil {
		return nil, n.toStatus(err)
	}
	_ = now
	st := n.b.FSM().CacheStats()
	if st == nil {
		st = &kvpb.CacheStatsResponse{}
	}
	st.Header = hdr
	st.Hits = n.stats.hits.Load()
	st.StaleHits = n.stats.staleHits.Load()
	st.Misses = n.stats.misses.Load()
	st.Waits = n.stats.waits.Load()
	return st, nil
}
