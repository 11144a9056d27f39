package api_test

import (
	"sync"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestKeepAlivesShareEntries: concurrent renewals of many sessions, through
// the leader and a follower, all succeed, each session's expiry moves, an
// unknown session gets NotFound, and they take far fewer entries than calls.
func TestKeepAlivesShareEntries(t *testing.T) {
	c := testcluster.Start(t, 3)
	leader := c.MustLeader()
	ctx := ctxT(t, 30*time.Second)
	sess := kvpb.NewSessionClient(c.Conn(leader))

	const n = 300
	ids := make([]uint64, n)
	for i := range ids {
		resp, err := sess.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 60_000})
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		ids[i] = resp.GetSession().GetId()
	}
	before, err := kvpb.NewClusterClient(c.Conn(leader)).Status(ctx, &kvpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}

	via := []kvpb.SessionClient{sess, kvpb.NewSessionClient(c.Conn(followers(c, leader)[0]))}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := via[i%2].KeepAlive(ctx, &kvpb.KeepAliveRequest{Id: id})
			if err != nil {
				errs <- err
				return
			}
			if got := resp.GetSession().GetId(); got != id {
				t.Errorf("KeepAlive(%d) answered for session %d", id, got)
			}
			if resp.GetSession().GetExpiresAt() <= before.GetLogTime() {
				t.Errorf("KeepAlive(%d): expires_at %d not after the log time %d before the renewals",
					id, resp.GetSession().GetExpiresAt(), before.GetLogTime())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("KeepAlive: %v", err)
	}
	after, err := kvpb.NewClusterClient(c.Conn(leader)).Status(ctx, &kvpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if used := after.GetLastLogIndex() - before.GetLastLogIndex(); used >= n/2 {
		t.Errorf("%d renewals used %d log entries; want them batched into far fewer", n, used)
	} else {
		t.Logf("%d renewals used %d log entries", n, used)
	}

	_, err = sess.KeepAlive(ctx, &kvpb.KeepAliveRequest{Id: 424242})
	if info := errInfo(err); info.GetCode() != kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED {
		t.Fatalf("KeepAlive(unknown) = %v, want SESSION_EXPIRED", err)
	}
}
