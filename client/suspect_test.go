package client

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// A member that left an attempt unanswered is passed over by the round
// robin, and its leader hints are not believed, for suspectFor; a member
// that answered (even with an error) is not.
func TestUnansweredEndpointIsPassedOver(t *testing.T) {
	c, err := New(Config{Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.noteFailure("127.0.0.1:1", attemptResult{class: classMaybe, err: status.Error(codes.DeadlineExceeded, "x"), unanswered: true})
	c.noteFailure("127.0.0.1:2", attemptResult{class: classRetry, err: &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER}})
	for i := 0; i < 6; i++ {
		if got := c.pick(); got == "127.0.0.1:1" {
			t.Fatalf("pick %d chose the member that did not answer", i)
		}
	}
	c.noteFailure("127.0.0.1:3", attemptResult{class: classRetry, err: &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER}, leaderAddr: "127.0.0.1:1"})
	if l := c.Leader(); l != "" {
		t.Errorf("leader hint naming the member that did not answer was believed: %q", l)
	}
	c.mu.Lock()
	c.suspect["127.0.0.1:1"] = time.Now().Add(-time.Millisecond)
	c.mu.Unlock()
	c.noteFailure("127.0.0.1:3", attemptResult{class: classRetry, err: &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER}, leaderAddr: "127.0.0.1:1"})
	if l := c.Leader(); l != "127.0.0.1:1" {
		t.Errorf("leader = %q after the suspicion ended, want the hint", l)
	}
}

// The attempt that times out on its own (the caller's context still alive)
// marks its member unanswered; one the caller canceled does not.
func TestAttemptTimeoutMarksUnanswered(t *testing.T) {
	c, err := New(Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hang := func(ctx context.Context, _ grpc.ClientConnInterface, _ ...grpc.CallOption) (struct{}, error) {
		<-ctx.Done()
		return struct{}{}, status.FromContextError(ctx.Err()).Err()
	}
	_, r := attempt(context.Background(), c, 20*time.Millisecond, "127.0.0.1:1", hang)
	if r == nil || !r.unanswered {
		t.Errorf("timed-out attempt: %+v, want unanswered", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, r = attempt(ctx, c, time.Second, "127.0.0.1:1", hang)
	if r == nil || r.unanswered {
		t.Errorf("canceled attempt: %+v, want answered (the caller gave up)", r)
	}
}
