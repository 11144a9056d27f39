package api_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Answers that must not claim a success that did not happen, or a time
// that is not the write's.

func TestRemoveUnknownMemberIsNotFound(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	for _, via := range []int{l, followers(c, l)[0]} {
		cl := kvpb.NewClusterClient(c.Conn(via))
		_, err := cl.RemoveMember(ctxT(t, 5*time.Second), &kvpb.RemoveMemberRequest{Name: "n9"})
		if status.Code(err) != codes.NotFound || errInfo(err).GetCode() != kvpb.ErrorCode_ERROR_CODE_NOT_FOUND {
			t.Errorf("RemoveMember(n9) via %s = %v, want NotFound with ErrorInfo NOT_FOUND", c.Name(via), err)
		}
	}
	ms, err := kvpb.NewClusterClient(c.Conn(l)).Members(ctxT(t, 5*time.Second), &kvpb.MembersRequest{})
	if err != nil || len(ms.GetMembers()) != 3 {
		t.Errorf("Members after removing n9 = %v, %v; want the 3 members", ms.GetMembers(), err)
	}
}

func TestTransferToNonVoterIsRefused(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	n4 := c.AddNode()
	cl := kvpb.NewClusterClient(c.Conn(l))
	if _, err := cl.AddMember(ctxT(t, 5*time.Second), &kvpb.AddMemberRequest{Name: c.Name(n4), PeerAddr: c.PeerAddr(n4), NonVoter: true}); err != nil {
		t.Fatalf("AddMember(%s, non-voter): %v", c.Name(n4), err)
	}
	_, err := cl.TransferLeader(ctxT(t, 5*time.Second), &kvpb.TransferLeaderRequest{Name: c.Name(n4)})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("TransferLeader(non-voter %s) = %v, want FailedPrecondition", c.Name(n4), err)
	}
	if got := c.MustLeader(); got != l {
		t.Errorf("leader after a refused transfer = %s, want %s unchanged", c.Name(got), c.Name(l))
	}
	_, err = cl.TransferLeader(ctxT(t, 5*time.Second), &kvpb.TransferLeaderRequest{Name: "n9"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("TransferLeader(n9) = %v, want NotFound", err)
	}
}

// A write answered by a follower carries the log time of the write (the
// leader's, where it was applied), not the follower's own, which stands
// still on an idle cluster until the follower applies the write.
func TestWriteViaFollowerHeaderHasTheWritesLogTime(t *testing.T) {
	c := testcluster.Start(t, 3)
	// A leader change between the two writes makes the test unable to
	// judge: a new leader's log time carries on from the log, not from the
	// wall clock (docs/design.md "Time in the log"), so the idle time may
	// not all show. It tries again, a bounded number of times.
	for try := 1; ; try++ {
		l := c.MustLeader()
		first := put(t, kv(c, l), fmt.Sprintf("a%d", try), "1", 0)
		// Let log time move on with no entry in the log: the next write's
		// stamp is then this much later than every entry before it.
		const idle = 1500 * time.Millisecond
		time.Sleep(idle)
		f := followers(c, l)[0]
		resp := put(t, kv(c, f), fmt.Sprintf("b%d", try), "2", 0)
		h := resp.GetHeader()
		if h.GetServedBy() != c.Name(f) || h.GetAppliedIndex() <= first.GetHeader().GetAppliedIndex() {
			t.Fatalf("Put via %s header = %v, want served by it at an index after %d", c.Name(f), h, first.GetHeader().GetAppliedIndex())
		}
		if h.GetTerm() != first.GetHeader().GetTerm() {
			if try == 3 {
				t.Skipf("the leader changed between the two writes in %d tries (terms %d, %d): cannot judge", try, first.GetHeader().GetTerm(), h.GetTerm())
			}
			continue
		}
		if lag := time.Duration(h.GetLogTime() - first.GetHeader().GetLogTime()); lag < idle {
			t.Errorf("Put via %s: header log time %v after the previous write's, want at least the %v that passed between them", c.Name(f), lag, idle)
		}
		return
	}
}

func TestHeadersCarryTheServersWallClock(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := followers(c, l)[0]
	before := time.Now().UnixNano()
	p := put(t, kv(c, f), "w", "1", time.Minute)
	g, err := get(ctxT(t, 5*time.Second), kv(c, f), "w", false)
	if err != nil {
		t.Fatalf("Get(w): %v", err)
	}
	s, err := get(ctxT(t, 5*time.Second), kv(c, f), "w", true)
	if err != nil {
		t.Fatalf("stale Get(w): %v", err)
	}
	st, err := kvpb.NewClusterClient(c.Conn(f)).Status(ctxT(t, 5*time.Second), &kvpb.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	lst, err := kvpb.NewClusterClient(c.Conn(l)).Status(ctxT(t, 5*time.Second), &kvpb.StatusRequest{})
	if err != nil {
		t.Fatalf("Status of the leader: %v", err)
	}
	after := time.Now().UnixNano()
	// A fresh cluster's log time was seeded from the wall clock and has not
	// fallen behind by more than the time since.
	if c := lst.GetLogClock(); c < before-int64(10*time.Second) || c > after {
		t.Errorf("leader's log_clock %d, want about its wall clock, in [%d - 10s, %d]", c, before, after)
	}
	if c := st.GetLogClock(); c != 0 {
		t.Errorf("follower's log_clock %d, want 0 (only the leader keeps one)", c)
	}
	for what, h := range map[string]*kvpb.ResponseHeader{"Put": p.GetHeader(), "Get": g.GetHeader(), "stale Get": s.GetHeader(), "Status": st.GetHeader(), "leader's Status": lst.GetHeader()} {
		if w := h.GetWallTime(); w < before || w > after {
			t.Errorf("%s header wall_time %d, want the server's clock during the call, in [%d, %d]", what, w, before, after)
		}
	}
}
