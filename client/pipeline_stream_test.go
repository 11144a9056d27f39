package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestPipelineGivenUpCallIsNotSentLater: a call whose caller gave up while
// it waited for the sender (blocked in Send by flow control: the member
// stopped reading) is never sent afterwards, so "not applied" stays true
// (found by review: the sender used to send it once the member read on).
func TestPipelineGivenUpCallIsNotSentLater(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	ctx := t.Context()
	if _, err := c.Add(ctx, []byte("k"), 1); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	f.mu.Lock()
	f.pipeHold = hold
	f.mu.Unlock()

	// Fill the stream's window: the member reads one more message, then
	// none, so the client's sender blocks in Send.
	big := make([]byte, 15<<10) // pipelined (under maxPipelinedRequest); 8 of them fill the window
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			c.Txn().Then(OpPut([]byte(fmt.Sprint("f", i)), big)).Commit(fctx)
		})
	}
	time.Sleep(500 * time.Millisecond)

	actx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	_, err := c.Add(actx, []byte("k"), 1)
	cancel()
	f.mu.Lock()
	before := f.counter
	f.pipeHold = nil
	f.mu.Unlock()
	if err == nil {
		t.Fatal("Add succeeded while the member read nothing")
	}
	close(hold)
	wg.Wait()
	time.Sleep(500 * time.Millisecond)
	f.mu.Lock()
	after := f.counter
	f.mu.Unlock()
	if !errors.Is(err, ErrIndeterminate) && after != before {
		t.Errorf("Add failed with %v (not ErrIndeterminate: certainly not applied), yet the member applied it later (counter %d -> %d)", err, before, after)
	}
}

// TestPipelineCloseDuringWrite: Client.Close while a pipelined write is in
// flight on the member gives ErrIndeterminate, as for a unary write.
func TestPipelineCloseDuringWrite(t *testing.T) {
	f := newFake(t, "a")
	c, err := New(Config{Endpoints: []string{"a"}, Dialer: f.dial, AttemptTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Add(t.Context(), []byte("k"), 1); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	f.mu.Lock()
	f.onAdd = func(string, int, *kvpb.AddRequest) error {
		select {
		case started <- struct{}{}:
		default:
		}
		time.Sleep(time.Second)
		return nil
	}
	f.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := c.Add(context.Background(), []byte("k"), 1)
		done <- err
	}()
	<-started
	c.Close()
	err = <-done
	time.Sleep(1200 * time.Millisecond)
	f.mu.Lock()
	counter := f.counter
	f.mu.Unlock()
	if !errors.Is(err, ErrIndeterminate) {
		t.Errorf("a write that reached the member and was applied (counter %d) failed with %v, want ErrIndeterminate", counter, err)
	}
}

// TestPipelineBatchOverServerMaxRequest: a member whose --max-request-bytes
// is below a batch of calls that it accepts one by one ends the stream with
// RESOURCE_EXHAUSTED; the calls are sent again as unary calls and succeed,
// and the connection stays unary.
func TestPipelineBatchOverServerMaxRequest(t *testing.T) {
	fakeServerOpts = []grpc.ServerOption{grpc.MaxRecvMsgSize(40 << 10)}
	defer func() { fakeServerOpts = nil }()
	f := newFake(t, "a")
	c := f.client(t, "a")
	if _, err := c.Add(t.Context(), []byte("k"), 1); err != nil {
		t.Fatal(err)
	}
	val := make([]byte, 15<<10) // pipelined, and a request each the member accepts
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := range 8 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			_, err := c.Txn().Then(OpPut([]byte(fmt.Sprint("k", i)), val)).Commit(ctx)
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			t.Logf("Txn: %v", err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of 8 Txns of 15 KiB failed against a member that takes 40 KiB requests", failed)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.txns) < 8 {
		t.Errorf("the member got %d Txns, want 8", len(f.txns))
	}
}
