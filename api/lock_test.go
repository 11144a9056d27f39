package api_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func session(t *testing.T, c *testcluster.Cluster, i int) uint64 {
	t.Helper()
	resp, err := kvpb.NewSessionClient(c.Conn(i)).Create(ctxT(t, 5*time.Second), &kvpb.CreateSessionRequest{TtlMs: 30000, Name: "test"})
	if err != nil {
		t.Fatalf("Session.Create: %v", err)
	}
	return resp.GetSession().GetId()
}

func TestLockWaitIsGrantedOnRelease(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := followers(c, l)[0]
	a, b := session(t, c, l), session(t, c, f)
	lc := kvpb.NewLockClient(c.Conn(l))
	first, err := lc.Acquire(ctxT(t, 5*time.Second), &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Name: []byte("L")})
	if err != nil || !first.GetAcquired() {
		t.Fatalf("Acquire(a) = %v, %v; want acquired", first, err)
	}
	type result struct {
		resp *kvpb.AcquireResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// Waits on a follower: the grant is seen on its local fsm.
		resp, err := kvpb.NewLockClient(c.Conn(f)).Acquire(ctxT(t, 10*time.Second),
			&kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Name: []byte("L"), WaitMs: 10000})
		done <- result{resp, err}
	}()
	eventually(t, 5*time.Second, "b queued", func() bool {
		r, err := lc.Get(t.Context(), &kvpb.GetLockRequest{Name: []byte("L")})
		return err == nil && len(r.GetLock().GetWaiters()) == 1
	})
	if _, err := lc.Release(ctxT(t, 5*time.Second), &kvpb.ReleaseRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 2}, Name: []byte("L"), Token: first.GetToken()}); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case r := <-done:
		if r.err != nil || !r.resp.GetAcquired() || r.resp.GetToken() <= first.GetToken() {
			t.Fatalf("waiting Acquire = %v, %v; want acquired with a token > %d", r.resp, r.err, first.GetToken())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting Acquire not granted after release")
	}
}

func TestLockWaitCanceledLeavesTheLine(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	a, b := session(t, c, l), session(t, c, l)
	lc := kvpb.NewLockClient(c.Conn(l))
	if r, err := lc.Acquire(ctxT(t, 5*time.Second), &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Name: []byte("L")}); err != nil || !r.GetAcquired() {
		t.Fatalf("Acquire(a) = %v, %v", r, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Name: []byte("L"), WaitMs: 60000})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Acquire with a short deadline: %v, want DeadlineExceeded", err)
	}
	eventually(t, 5*time.Second, "b out of the line", func() bool {
		r, err := lc.Get(t.Context(), &kvpb.GetLockRequest{Name: []byte("L")})
		return err == nil && len(r.GetLock().GetWaiters()) == 0 && r.GetLock().GetSession() == a
	})
}

func TestCacheFillWaitsForFiller(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := followers(c, l)[0]
	a, b := session(t, c, l), session(t, c, f)
	cl := kvpb.NewCacheClient(c.Conn(l))
	first, err := cl.Fill(ctxT(t, 5*time.Second), &kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 1}, Key: []byte("K"), LeaseMs: 5000})
	if err != nil || first.GetState() != kvpb.CacheState_CACHE_STATE_MISS || first.GetLeaseToken() == 0 {
		t.Fatalf("Fill(a) = %v, %v; want MISS with a lease", first, err)
	}
	done := make(chan *kvpb.FillResponse, 1)
	go func() {
		r, err := kvpb.NewCacheClient(c.Conn(f)).Fill(ctxT(t, 10*time.Second),
			&kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: b, Seq: 1}, Key: []byte("K"), LeaseMs: 5000, WaitMs: 5000})
		if err != nil {
			t.Errorf("Fill(b): %v", err)
		}
		done <- r
	}()
	eventually(t, 5*time.Second, "b waiting", func() bool {
		r, err := cl.Get(t.Context(), &kvpb.CacheGetRequest{Key: []byte("K")})
		return err == nil && len(r.GetEntry().GetWaiters()) == 1
	})
	if _, err := cl.Store(ctxT(t, 5*time.Second), &kvpb.StoreRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 2}, Key: []byte("K"),
		Token: first.GetLeaseToken(), Value: []byte("computed"), TtlMs: 60000}); err != nil {
		t.Fatalf("Store: %v", err)
	}
	select {
	case r := <-done:
		if r.GetState() != kvpb.CacheState_CACHE_STATE_FRESH || string(r.GetEntry().GetValue()) != "computed" {
			t.Fatalf("waiting Fill = %v, want FRESH computed", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting Fill did not return after the store")
	}
	// A fresh entry is served without proposing.
	before := c.Node(l).Raft().LastIndex()
	r, err := cl.Fill(ctxT(t, 5*time.Second), &kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: a, Seq: 3}, Key: []byte("K"), LeaseMs: 5000})
	if err != nil || r.GetState() != kvpb.CacheState_CACHE_STATE_FRESH {
		t.Fatalf("Fill(fresh) = %v, %v", r, err)
	}
	if after := c.Node(l).Raft().LastIndex(); after != before {
		t.Errorf("Fill of a fresh entry proposed (last index %d -> %d)", before, after)
	}
	st, err := kvpb.NewCacheClient(c.Conn(f)).Stats(ctxT(t, 5*time.Second), &kvpb.CacheStatsRequest{})
	if err != nil || st.GetWaits() != 1 || st.GetHits() == 0 {
		t.Errorf("Stats on the waiting node = %v, %v; want waits=1, hits>0", st, err)
	}
}
