package cache

import (
	"encoding/json"
	"time"
)

// Defaults of the options.
const (
	DefaultFillLease = 30 * time.Second
	// DefaultSessionTTL is the TTL of the process-wide memoize session that
	// owns the fill leases.
	DefaultSessionTTL = 30 * time.Second
	// maxFillWait bounds one wait for another caller's fill; the flight asks
	// again while its context lasts.
	maxFillWait = 30 * time.Second
	// storeTimeout bounds a Store sent after the computation returned.
	storeTimeout = 10 * time.Second
)

// Codec turns results into the bytes stored in kvd and back.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default codec (encoding/json).
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Option is a setting of a Cache (New) or of one call (Memoize); a call's
// options override its cache's.
type Option func(*options)

type options struct {
	staleFor  time.Duration
	errorsFor time.Duration
	fillLease time.Duration
	codec     Codec
	local     bool
	near      time.Duration
}

func defaultOptions() options {
	return options{fillLease: DefaultFillLease, codec: JSON}
}

func (o options) with(opts []Option) options {
	for _, f := range opts {
		f(&o)
	}
	if o.fillLease <= 0 {
		o.fillLease = DefaultFillLease
	}
	if o.codec == nil {
		o.codec = JSON
	}
	return o
}

// StaleFor keeps serving a value for d after its TTL while one caller
// refreshes it in the background (stale-while-revalidate), and keeps
// serving it when the refresh fails (stale-if-error).
func StaleFor(d time.Duration) Option { return func(o *options) { o.staleFor = d } }

// CacheErrorsFor stores a failed computation as an error for d (negative
// caching): callers get a *CachedError without computing again. Without it
// a failure is not cached and the next waiter computes.
func CacheErrorsFor(d time.Duration) Option { return func(o *options) { o.errorsFor = d } }

// FillLease sets how long the caller computing a value holds the key's fill
// lease (default DefaultFillLease). When it runs out without a store, the
// next waiter takes over and the late store is rejected. Make it longer
// than the computation.
func FillLease(d time.Duration) Option { return func(o *options) { o.fillLease = d } }

// WithCodec replaces the JSON codec.
func WithCodec(c Codec) Option { return func(o *options) { o.codec = c } }

// LocalReads lets the receiving node answer a fresh hit from its own state
// (a stale read: no leader round trip, but it may miss a value stored or
// invalidated an instant ago). Default: linearizable.
func LocalReads() Option { return func(o *options) { o.local = true } }

// NearCache keeps fresh values in this process for up to d, and never past
// the entry's fresh_until (converted from log time through the time the
// request was sent). A watch on the cache keeps it coherent: a store,
// invalidation or eviction made by any process drops the value within
// milliseconds on a healthy cluster, and while that watch is down (its
// member cut off, no leader) every call goes to the server instead.
func NearCache(d time.Duration) Option { return func(o *options) { o.near = d } }
