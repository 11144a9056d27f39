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

// TestKeepAliveStreamAcrossLeaderChange: one stream, opened on the leader,
// keeps renewing a session while leadership moves away from the member
// it is on (which then forwards its renewals to the new leader), and the
// expiry the renewals confirmed is the one the new leader holds.
func TestKeepAliveStreamAcrossLeaderChange(t *testing.T) {
	c := testcluster.Start(t, 3)
	leader := c.MustLeader()
	ctx := ctxT(t, 30*time.Second)
	sess := kvpb.NewSessionClient(c.Conn(leader))
	cr, err := sess.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 60_000})
	if err != nil {
		t.Fatal(err)
	}
	id := cr.GetSession().GetId()
	st, err := sess.KeepAliveStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tag := uint64(0)
	// renew renews until one renewal is confirmed; renewals caught in
	// the transfer may answer NOT_LEADER or INDETERMINATE.
	renew := func() *kvpb.KeepAliveStreamResponse {
		t.Helper()
		for range 50 {
			tag++
			if err := st.Send(&kvpb.KeepAliveStreamRequest{Id: id, Tag: tag}); err != nil {
				t.Fatalf("Send: %v", err)
			}
			r, err := st.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if r.GetTag() != tag {
				t.Fatalf("answer for tag %d, want %d", r.GetTag(), tag)
			}
			switch r.GetError().GetCode() {
			case kvpb.ErrorCode_ERROR_CODE_OK:
				return r
			case kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, kvpb.ErrorCode_ERROR_CODE_INDETERMINATE:
				time.Sleep(20 * time.Millisecond)
			default:
				t.Fatalf("renewal: %v", r)
			}
		}
		t.Fatal("no renewal confirmed in 50 tries")
		return nil
	}
	before := renew()
	if _, err := kvpb.NewClusterClient(c.Conn(leader)).TransferLeader(ctx, &kvpb.TransferLeaderRequest{}); err != nil {
		t.Fatalf("TransferLeader: %v", err)
	}
	newLeader, err := c.WaitLeader(ctx)
	if err != nil || newLeader == leader {
		t.Fatalf("leader after transfer = %d (%v), want another than %d", newLeader, err, leader)
	}
	after := renew()
	if after.GetSession().GetExpiresAt() <= before.GetSession().GetExpiresAt() {
		t.Errorf("expiry after the transfer %d, want after %d", after.GetSession().GetExpiresAt(), before.GetSession().GetExpiresAt())
	}
	if after.GetHeader().GetTerm() <= before.GetHeader().GetTerm() {
		t.Errorf("renewal after the transfer in term %d, want after term %d", after.GetHeader().GetTerm(), before.GetHeader().GetTerm())
	}
	g, err := kvpb.NewSessionClient(c.Conn(newLeader)).Get(ctx, &kvpb.GetSessionRequest{Id: id})
	if err != nil {
		t.Fatalf("Get on the new leader: %v", err)
	}
	if g.GetSession().GetExpiresAt() < after.GetSession().GetExpiresAt() {
		t.Errorf("the new leader holds expiry %d, before the %d the stream confirmed", g.GetSession().GetExpiresAt(), after.GetSession().GetExpiresAt())
	}
}
