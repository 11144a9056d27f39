package cache

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// DefaultName is the name of the Cache that the package-level Memoize uses.
const DefaultName = "default"

// CachedError is a failed computation served from the cache (negative
// caching with CacheErrorsFor): the function did not run for this call.
type CachedError struct {
	Key string
	// Message is the text of the original error.
	Message string
}

func (e *CachedError) Error() string {
	return fmt.Sprintf("cache: cached error for %q: %s", e.Key, e.Message)
}

// Cache is a named set of defaults and statistics over the process-wide
// memoize state of one client. Caches of one client share the session, the
// single flight per key and the near-cache; keys are not namespaced by the
// cache's name. Safe for concurrent use.
type Cache struct {
	sh   *shared
	name string
	opts options

	hits, nearHits, misses, staleServed, fills, deduped, fillErrors, staleRejected, storeErrors atomic.Uint64

	bgMu     sync.Mutex
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

// New returns the Cache named name of c, making it with opts on first use
// (later calls return the same Cache and ignore opts). It does no I/O.
func New(c *client.Client, name string, opts ...Option) *Cache {
	sh := sharedOf(c)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if cc := sh.caches[name]; cc != nil {
		return cc
	}
	cc := &Cache{sh: sh, name: name, opts: defaultOptions().with(opts)}
	cc.bgCtx, cc.bgCancel = context.WithCancel(context.Background())
	sh.caches[name] = cc
	return cc
}

// Default is the Cache named DefaultName of c, used by Memoize.
func Default(c *client.Client) *Cache { return New(c, DefaultName) }

// Name is the cache's name.
func (cc *Cache) Name() string { return cc.name }

// Stats are counters of one Cache since it was made, in this process.
type Stats struct {
	Name string `json:"name"`
	// Hits: callers served a fresh value without waiting for a fill
	// (near-cache hits included; a cached error counts as a hit).
	Hits uint64 `json:"hits"`
	// NearHits: of the hits, those served from the near-cache.
	NearHits uint64 `json:"near_hits"`
	// Misses: callers that found no usable value (they computed, or
	// waited for whoever did).
	Misses uint64 `json:"misses"`
	// StaleServed: callers served a value past its TTL within StaleFor.
	StaleServed uint64 `json:"stale_served"`
	// Fills: computations run by this process (background refreshes
	// included).
	Fills uint64 `json:"fills"`
	// FillsDeduplicated: callers that waited for a computation instead of
	// running one: in-process single-flight sharers and callers served by
	// another process's fill.
	FillsDeduplicated uint64 `json:"fills_deduplicated"`
	// FillErrors: computations that failed.
	FillErrors uint64 `json:"fill_errors"`
	// StaleStoresRejected: stores refused because the fill lease had
	// passed to someone else (the value was still returned to its callers).
	StaleStoresRejected uint64 `json:"stale_stores_rejected"`
	// StoreErrors: other failed stores (the value was still returned).
	StoreErrors uint64 `json:"store_errors"`
}

// Stats returns the cache's counters.
func (cc *Cache) Stats() Stats {
	return Stats{
		Name:                cc.name,
		Hits:                cc.hits.Load(),
		NearHits:            cc.nearHits.Load(),
		Misses:              cc.misses.Load(),
		StaleServed:         cc.staleServed.Load(),
		Fills:               cc.fills.Load(),
		FillsDeduplicated:   cc.deduped.Load(),
		FillErrors:          cc.fillErrors.Load(),
		StaleStoresRejected: cc.staleRejected.Load(),
		StoreErrors:         cc.storeErrors.Load(),
	}
}

// Memoize returns the value of fn for key, computing it at most once across
// the cluster per TTL; see the package documentation for the flow. It uses
// the Default cache of c. The result is encoded with the codec (JSON by
// default) and every caller, the computing one included, gets the decoded
// stored form. With the JSON codec, a T that JSON cannot carry whole (a
// struct with an unexported field, at any depth; see ErrLossyType) is
// refused before anything else happens.
//
// It waits until a value is available: fresh or stale at once, or computed
// by this caller, or stored by the caller in the cluster that holds the fill
// lease (or by the next one, if that one's lease runs out), or until ctx
// ends (ctx.Err()). It returns fn's error to the callers that shared its
// computation, a *CachedError for an error cached by CacheErrorsFor, or the
// client's error (client.ErrUnavailable...). fn runs with a context that
// does not end with the caller's (it serves every caller sharing the
// flight), bounded by the caller's deadline and at least the fill lease.
func Memoize[T any](ctx context.Context, c *client.Client, key string, ttl time.Duration, fn func(context.Context) (T, error), opts ...Option) (T, error) {
	return MemoizeIn(ctx, Default(c), key, ttl, fn, opts...)
}

// MemoizeIn is Memoize counted in the Cache cc, with cc's options under
// opts.
func MemoizeIn[T any](ctx context.Context, cc *Cache, key string, ttl time.Duration, fn func(context.Context) (T, error), opts ...Option) (T, error) {
	o := cc.opts.with(opts)
	var zero T
	if _, ok := o.codec.(jsonCodec); ok {
		if err := checkJSONType(reflect.TypeFor[T]()); err != nil {
			return zero, err
		}
	}
	b, err := cc.memoize(ctx, key, ttl, func(ctx context.Context) ([]byte, error) {
		v, err := fn(ctx)
		if err != nil {
			return nil, err
		}
		b, err := o.codec.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("cache: encode %q: %w", key, err)
		}
		return b, nil
	}, o)
	if err != nil {
		return zero, err
	}
	var v T
	if err := o.codec.Unmarshal(b, &v); err != nil {
		return zero, fmt.Errorf("cache: decode %q: %w", key, err)
	}
	return v, nil
}

// Memoize is the byte-level Memoize: fn's bytes are stored as they are
// (no codec). Waits and errors as the package-level Memoize.
func (cc *Cache) Memoize(ctx context.Context, key string, ttl time.Duration, fn func(context.Context) ([]byte, error), opts ...Option) ([]byte, error) {
	return cc.memoize(ctx, key, ttl, fn, cc.opts.with(opts))
}

// Invalidate removes key's entry from the cluster (and this process's
// near-cache); the next caller computes it again. It waits for the command
// to be applied and returns ctx's error or the client's.
func (cc *Cache) Invalidate(ctx context.Context, key string) error {
	cc.sh.near.drop(key, false)
	_, err := cc.sh.c.Invalidate(ctx, []byte(key), false)
	return err
}

// InvalidatePrefix removes every entry whose key starts with prefix, and
// returns how many there were. Waits and errors as Invalidate.
func (cc *Cache) InvalidatePrefix(ctx context.Context, prefix string) (uint64, error) {
	cc.sh.near.drop(prefix, true)
	resp, err := cc.sh.c.Invalidate(ctx, []byte(prefix), true)
	return resp.GetInvalidated(), err
}

// Close stops the cache's background refreshes and waits for them. (The
// process-wide session is closed by the package-level Close.)
func (cc *Cache) Close() { cc.stopRefreshes() }

func (cc *Cache) stopRefreshes() {
	cc.bgMu.Lock()
	cc.bgCancel()
	cc.bgMu.Unlock()
	cc.bg.Wait()
}

// outcome is how a flight got its answer.
type outcome int

const (
	outHit      outcome = iota // fresh value, no wait
	outStale                   // stale value served
	outComputed                // this flight computed it
	outWaited                  // another caller's fill was waited for
	outFailed                  // no answer (client error, ctx)
)

// result is what a flight hands to every caller sharing it.
type result struct {
	value   []byte
	err     error
	outcome outcome
}

func (cc *Cache) memoize(ctx context.Context, key string, ttl time.Duration, fn func(context.Context) ([]byte, error), o options) ([]byte, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("cache: memoize %q: TTL %v must be positive", key, ttl)
	}
	if key == "" {
		return nil, errors.New("cache: memoize: empty key")
	}
	if o.near > 0 {
		cc.sh.near.start()
		if e, ok := cc.sh.near.get(key, o.near); ok {
			cc.hits.Add(1)
			cc.nearHits.Add(1)
			return e.value, e.err
		}
	}
	// A caller that joins a flight just as its last caller left gets that
	// flight's cancellation: it starts a new flight (a bounded number of
	// times).
	for attempt := 0; ; attempt++ {
		res, leader := cc.join(ctx, key, ttl, fn, o)
		if res == nil {
			return nil, ctx.Err()
		}
		if errors.Is(res.err, errFlightAbandoned) && ctx.Err() == nil && attempt < 3 {
			continue
		}
		cc.count(res.outcome, leader)
		return res.value, res.err
	}
}

// errFlightAbandoned ends a flight whose callers have all gone.
var errFlightAbandoned = errors.New("cache: every caller of the fill left")

// join waits on key's flight (starting it if none runs); nil when ctx ends
// first.
func (cc *Cache) join(ctx context.Context, key string, ttl time.Duration, fn func(context.Context) ([]byte, error), o options) (*result, bool) {
	refs := cc.sh.joinFlight(key)
	defer cc.sh.leaveFlight(key, refs)
	leader := false
	ch := cc.sh.group.DoChan(key, func() (any, error) {
		leader = true
		fctx, cancel := flightContext(ctx, o)
		defer cancel()
		if !cc.sh.startFlight(refs, cancel) {
			return &result{err: errFlightAbandoned, outcome: outFailed}, nil
		}
		r := cc.flight(fctx, key, ttl, fn, o)
		if r.err != nil && errors.Is(fctx.Err(), context.Canceled) {
			r.err = fmt.Errorf("%w: %w", errFlightAbandoned, r.err)
		}
		return r, nil
	})
	select {
	case <-ctx.Done():
		return nil, false
	case r := <-ch:
		return r.Val.(*result), leader
	}
}

// count records one caller's outcome.
func (cc *Cache) count(out outcome, leader bool) {
	switch out {
	case outHit:
		cc.hits.Add(1)
	case outStale:
		cc.staleServed.Add(1)
	case outComputed:
		cc.misses.Add(1)
		if !leader {
			cc.deduped.Add(1)
		}
	case outWaited:
		cc.misses.Add(1)
		cc.deduped.Add(1)
	}
}

// flightContext is the context of a flight shared by several callers: it
// keeps the first caller's values but not its cancellation, and lasts as
// long as the first caller's deadline, at least the fill lease; it is
// canceled when every caller has left (leaveFlight).
func flightContext(ctx context.Context, o options) (context.Context, context.CancelFunc) {
	base := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		if min := time.Now().Add(o.fillLease); dl.Before(min) {
			dl = min
		}
		return context.WithDeadline(base, dl)
	}
	return context.WithCancel(base)
}

// flight is the one goroutine of this process that talks to the server
// about key until it has an answer for its callers.
func (cc *Cache) flight(ctx context.Context, key string, ttl time.Duration, fn func(context.Context) ([]byte, error), o options) *result {
	var fillOpts []client.OpOption
	if o.local {
		fillOpts = append(fillOpts, client.WithStale())
	}
	waited, retried := false, false
	for {
		if err := ctx.Err(); err != nil {
			return &result{err: err, outcome: outFailed}
		}
		sess, err := cc.sh.session(ctx)
		if err != nil {
			return &result{err: err, outcome: outFailed}
		}
		// The first ask does not wait, so that a fresh answer is known to
		// be a hit; after a FILLING answer the flight waits for the fill.
		var wait time.Duration
		if waited {
			wait = maxFillWait
			if dl, ok := ctx.Deadline(); ok {
				wait = min(wait, time.Until(dl))
			}
			wait = max(wait, time.Millisecond)
		}
		sentAt := time.Now()
		resp, err := sess.Fill(ctx, []byte(key), o.fillLease, wait, fillOpts...)
		if err != nil {
			if errors.Is(err, client.ErrSessionExpired) && !retried {
				// The session ended under us: its leases are gone too.
				retried = true
				cc.sh.dropSession(sess)
				continue
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return &result{err: fmt.Errorf("cache: fill %q: %w", key, err), outcome: outFailed}
		}
		e := resp.GetEntry()
		switch resp.GetState() {
		case kvpb.CacheState_CACHE_STATE_FRESH:
			r := entryResult(key, e)
			r.outcome = outHit
			if waited {
				r.outcome = outWaited
			}
			if o.near > 0 {
				cc.sh.near.put(key, e, resp.GetHeader(), sentAt, r)
			}
			return r
		case kvpb.CacheState_CACHE_STATE_STALE:
			r := entryResult(key, e)
			r.outcome = outStale
			if tok := resp.GetLeaseToken(); tok != 0 {
				cc.refresh(sess, key, tok, ttl, fn, o)
			}
			return r
		case kvpb.CacheState_CACHE_STATE_MISS:
			tok := resp.GetLeaseToken()
			if done := cc.sh.refreshOf(key); done != nil {
				// Our own background refresh holds the lease (the session
				// is shared): wait for it rather than compute twice.
				waited = true
				select {
				case <-done:
				case <-ctx.Done():
				}
				continue
			}
			if tok == 0 {
				waited = true
				pause(ctx, sentAt)
				continue
			}
			return cc.fill(ctx, sess, key, tok, ttl, fn, o)
		default: // FILLING: someone else fills (and our wait, if any, ended first).
			if waited {
				pause(ctx, sentAt)
			}
			waited = true
		}
	}
}

// pause keeps a flight from spinning on a server that answers at once.
func pause(ctx context.Context, sentAt time.Time) {
	if time.Since(sentAt) >= 10*time.Millisecond {
		return
	}
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// entryResult is what callers get from a stored entry.
func entryResult(key string, e *kvpb.CacheEntry) *result {
	if e.GetIsError() {
		return &result{err: &CachedError{Key: key, Message: string(e.GetValue())}}
	}
	v := e.GetValue()
	if v == nil {
		v = []byte{}
	}
	return &result{value: v}
}

// fill computes under the lease tok and stores the result (or gives the
// lease up). The computed value goes to the callers even if the store is
// rejected.
func (cc *Cache) fill(ctx context.Context, sess *client.Session, key string, tok uint64, ttl time.Duration, fn func(context.Context) ([]byte, error), o options) *result {
	cc.fills.Add(1)
	v, ferr := fn(ctx)
	req := &kvpb.StoreRequest{Key: []byte(key), Token: tok}
	r := &result{outcome: outComputed}
	switch {
	case ferr == nil:
		if v == nil {
			v = []byte{}
		}
		req.Value, req.TtlMs, req.StaleMs = v, millis(ttl), millis(o.staleFor)
		r.value = v
	case o.errorsFor > 0:
		cc.fillErrors.Add(1)
		req.Value, req.IsError, req.TtlMs = []byte(ferr.Error()), true, millis(o.errorsFor)
		r.err = ferr
	default:
		cc.fillErrors.Add(1)
		req.Abandon = true
		r.err = ferr
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	sentAt := time.Now()
	resp, err := sess.Store(sctx, req)
	switch {
	case err == nil:
		if o.near > 0 && ferr == nil {
			cc.sh.near.put(key, resp.GetEntry(), resp.GetHeader(), sentAt, r)
		}
	case errors.Is(err, client.ErrStaleToken):
		cc.staleRejected.Add(1)
	default:
		cc.storeErrors.Add(1)
	}
	return r
}

// refresh recomputes a stale entry in the background under the lease tok,
// once per process at a time. A failed refresh gives the lease up and the
// stale value keeps being served (stale-if-error).
func (cc *Cache) refresh(sess *client.Session, key string, tok uint64, ttl time.Duration, fn func(context.Context) ([]byte, error), o options) {
	run, prev, ok := cc.sh.startRefresh(key, tok)
	if !ok {
		return
	}
	cc.bgMu.Lock()
	if cc.bgCtx.Err() != nil {
		cc.bgMu.Unlock()
		cc.sh.endRefresh(key, run)
		return
	}
	cc.bg.Add(1)
	cc.bgMu.Unlock()
	go func() {
		defer cc.bg.Done()
		defer cc.sh.endRefresh(key, run)
		if prev != nil {
			select {
			case <-prev:
			case <-cc.bgCtx.Done():
			}
		}
		ctx, cancel := context.WithTimeout(cc.bgCtx, o.fillLease)
		defer cancel()
		cc.fills.Add(1)
		v, ferr := fn(ctx)
		req := &kvpb.StoreRequest{Key: []byte(key), Token: tok}
		if ferr != nil {
			cc.fillErrors.Add(1)
			req.Abandon = true
		} else {
			if v == nil {
				v = []byte{}
			}
			req.Value, req.TtlMs, req.StaleMs = v, millis(ttl), millis(o.staleFor)
		}
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		defer scancel()
		_, err := sess.Store(sctx, req)
		switch {
		case err == nil:
			cc.sh.near.drop(key, false)
		case errors.Is(err, client.ErrStaleToken):
			cc.staleRejected.Add(1)
		default:
			cc.storeErrors.Add(1)
		}
	}()
}

// millis rounds d up to whole milliseconds (0 stays 0).
func millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
