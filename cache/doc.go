// Package cache memoizes computed results in kvd with a TTL and a
// cluster-wide single flight: across every process using the cluster, a
// missing or expired value is computed once while the other callers wait for
// it or are served the previous value.
//
//	price, err := cache.Memoize(ctx, c, cache.Key("price", sku), 5*time.Minute,
//		func(ctx context.Context) (Price, error) { return slowLookup(ctx, sku) },
//		cache.StaleFor(time.Minute), cache.CacheErrorsFor(10*time.Second))
//
// How one call goes:
//
//   - Within a process, callers of one key share one flight
//     (golang.org/x/sync/singleflight), so one goroutine per process talks to
//     the server about that key.
//   - The flight asks the server to Fill the key: a fresh value is returned
//     at once. Otherwise the server grants the fill lease to one session in
//     the cluster and queues the others (FIFO, answered when the value is
//     stored: no polling). The lease holder computes, then stores the value
//     naming its lease token. A lease that ends without a store (the filler
//     crashed, or was paused past the lease) passes to the next waiter; the
//     old filler's late store is rejected and counted, and its callers still
//     get the value it computed.
//   - Stale-while-revalidate (StaleFor): past the TTL, within the window,
//     callers get the old value at once and the one holding the lease
//     refreshes it in the background. A failed refresh gives the lease up and
//     the old value keeps being served (stale-if-error).
//   - Negative caching (CacheErrorsFor): a failed computation is stored as an
//     error for its own TTL; other callers get a *CachedError. Without it a
//     failed fill gives the lease up so that the next waiter computes.
//
// The fill leases belong to one process-wide session per client, created on
// first use and replaced if it expires; Close(ctx, c) closes it.
//
// Invariants: a value is never served past its fresh_until (log time) as
// fresh, including from the optional near-cache, whose deadline is converted
// from log time through the time the request was sent. The near-cache
// (NearCache) is kept coherent by a watch on every cache entry, one per
// client, started on first use and stopped by Close: a change to a key by
// any process drops its near-cached value when the watch delivers it, and
// values are served only while that watch had a leader-confirmed progress
// within the last second (otherwise calls go to the server).
//
// The API is stable: new options may be added, nothing is removed.
package cache
