package api_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// series sums the values (a histogram's sample counts) of the series of
// family name whose labels include want.
func series(mfs []*dto.MetricFamily, name string, want map[string]string) float64 {
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// TestServerMetrics: calls to one member's client port show up in its
// collector: gRPC calls by method and code, a queued acquire's wait, fence
// refusals of writes and of CheckFence, and the cache reads it answered.
func TestServerMetrics(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	ctx := ctxT(t, 20*time.Second)
	kvc, lc, cc := kv(c, l), kvpb.NewLockClient(c.Conn(l)), kvpb.NewCacheClient(c.Conn(l))

	put(t, kvc, "k", "v", 0)
	if _, err := get(ctx, kvc, "missing", false); status.Code(err) != codes.NotFound {
		t.Fatalf("Get(missing) = %v, want NotFound", err)
	}
	if _, err := kvc.Put(ctx, &kvpb.PutRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Put with no key = %v, want InvalidArgument", err)
	}

	// b queues for L behind a; a's release hands it over.
	a, b := session(t, c, l), session(t, c, l)
	first, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Name: []byte("L")})
	if err != nil || !first.GetAcquired() {
		t.Fatalf("Acquire(a) = %v, %v", first, err)
	}
	done := make(chan error, 1)
	go func() {
		r, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Name: []byte("L"), WaitMs: 10000})
		if err == nil && !r.GetAcquired() {
			err = status.Error(codes.Internal, "not acquired")
		}
		done <- err
	}()
	eventually(t, 5*time.Second, "b queued", func() bool {
		r, err := lc.Get(t.Context(), &kvpb.GetLockRequest{Name: []byte("L")})
		return err == nil && len(r.GetLock().GetWaiters()) == 1
	})
	time.Sleep(50 * time.Millisecond) // a wait worth measuring
	if _, err := lc.Release(ctx, &kvpb.ReleaseRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 2}, Name: []byte("L"), Token: first.GetToken()}); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting Acquire(b) = %v", err)
	}
	// a's token is stale now: a fenced write and a CheckFence refuse it.
	fence := &kvpb.Fence{Lock: []byte("L"), Token: first.GetToken()}
	if _, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("f"), Value: []byte("x"), Fence: fence}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("fenced Put with a stale token = %v, want FailedPrecondition", err)
	}
	if r, err := lc.CheckFence(ctx, &kvpb.CheckFenceRequest{Lock: []byte("L"), Token: first.GetToken()}); err != nil || r.GetValid() {
		t.Fatalf("CheckFence(stale) = %v, %v; want not valid", r, err)
	}

	// Cache: a miss, a hit, and a fill that waits for another's.
	if r, err := cc.Get(ctx, &kvpb.CacheGetRequest{Key: []byte("c1")}); err != nil || r.GetState() != kvpb.CacheState_CACHE_STATE_MISS {
		t.Fatalf("Cache.Get(c1) = %v, %v; want MISS", r, err)
	}
	if _, err := cc.Set(ctx, &kvpb.CacheSetRequest{Key: []byte("c1"), Value: []byte("v"), TtlMs: 60000}); err != nil {
		t.Fatalf("Cache.Set(c1) = %v", err)
	}
	if r, err := cc.Get(ctx, &kvpb.CacheGetRequest{Key: []byte("c1")}); err != nil || r.GetState() != kvpb.CacheState_CACHE_STATE_FRESH {
		t.Fatalf("Cache.Get(c1) = %v, %v; want FRESH", r, err)
	}
	lease, err := cc.Fill(ctx, &kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: a}, Key: []byte("c2"), LeaseMs: 10000})
	if err != nil || lease.GetLeaseToken() == 0 {
		t.Fatalf("Fill(c2) by a = %v, %v; want a lease", lease, err)
	}
	filled := make(chan error, 1)
	go func() {
		r, err := cc.Fill(ctx, &kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: b}, Key: []byte("c2"), LeaseMs: 10000, WaitMs: 10000})
		if err == nil && r.GetState() != kvpb.CacheState_CACHE_STATE_FRESH {
			err = status.Errorf(codes.Internal, "state %v", r.GetState())
		}
		filled <- err
	}()
	eventually(t, 5*time.Second, "b waiting for the fill of c2", func() bool {
		// Read the fsm itself: a Cache.Get would count as a read.
		f := c.Node(l).FSM()
		_, e := f.CacheEntry([]byte("c2"), f.LogTime())
		return len(e.GetWaiters()) == 1
	})
	if _, err := cc.Store(ctx, &kvpb.StoreRequest{Header: &kvpb.RequestHeader{Session: a}, Key: []byte("c2"),
		Token: lease.GetLeaseToken(), Value: []byte("computed"), TtlMs: 60000}); err != nil {
		t.Fatalf("Store(c2) = %v", err)
	}
	if err := <-filled; err != nil {
		t.Fatalf("waiting Fill(c2) by b = %v", err)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Server(l).Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"kvd_grpc_server_handled_total", map[string]string{"grpc_service": "kvd.v1.KV", "grpc_method": "Put", "grpc_code": "OK"}, 1, 1},
		{"kvd_grpc_server_handled_total", map[string]string{"grpc_method": "Put", "grpc_code": "InvalidArgument"}, 1, 1},
		{"kvd_grpc_server_handled_total", map[string]string{"grpc_method": "Put", "grpc_code": "FailedPrecondition"}, 1, 1},
		{"kvd_grpc_server_handled_total", map[string]string{"grpc_method": "Get", "grpc_code": "NotFound"}, 1, 1},
		{"kvd_grpc_server_handling_seconds", map[string]string{"grpc_method": "Put"}, 3, 3},
		{"kvd_grpc_server_handling_seconds", map[string]string{"grpc_method": "Acquire"}, 2, 2},
		{"kvd_lock_acquire_wait_seconds", nil, 1, 1},
		{"kvd_lock_fence_refusals_total", map[string]string{"op": "write"}, 1, 1},
		{"kvd_lock_fence_refusals_total", map[string]string{"op": "check"}, 1, 1},
		// c1's first read, and a's Fill that got the lease.
		{"kvd_cache_misses_total", nil, 2, 2},
		// c1's FRESH read, and b's Fill answered with a's value.
		{"kvd_cache_hits_total", nil, 2, 2},
		{"kvd_cache_stale_served_total", nil, 0, 0},
		{"kvd_cache_fill_waits_total", nil, 1, 1},
	} {
		if v := series(mfs, tc.name, tc.labels); v < tc.min || v > tc.max {
			t.Errorf("%s%v = %v, want %v..%v", tc.name, tc.labels, v, tc.min, tc.max)
		}
	}
	// The wait lasted at least the 50ms before the release.
	for _, mf := range mfs {
		if mf.GetName() == "kvd_lock_acquire_wait_seconds" {
			if s := mf.GetMetric()[0].GetHistogram().GetSampleSum(); s < 0.05 {
				t.Errorf("kvd_lock_acquire_wait_seconds sum = %v, want >= 0.05", s)
			}
		}
	}
	problems, err := testutil.CollectAndLint(c.Server(l).Collector())
	if err != nil {
		t.Fatalf("CollectAndLint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
