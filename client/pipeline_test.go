package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestCallsShareOnePipelineStream: sequential and concurrent calls to a
// member go over one Pipeline stream, and each gets its own answer.
func TestCallsShareOnePipelineStream(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	ctx := t.Context()
	for i := range 5 {
		if _, err := c.Add(ctx, []byte("k"), 1); err != nil {
			t.Fatalf("Add %d: %v", i, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			if _, err := c.Add(ctx, []byte("k"), 1); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Add: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counter != 25 {
		t.Errorf("counter %d, want 25", f.counter)
	}
	// The client's own session was created over the stream too.
	if f.pipelined != 26 || f.pipeStreams != 1 {
		t.Errorf("%d calls over %d Pipeline streams, want 26 over 1", f.pipelined, f.pipeStreams)
	}
}

// TestPipelineRefusedFallsBackToUnary: a member that answers Pipeline
// UNIMPLEMENTED (an older kvd) gets unary calls, and is not asked for a
// stream again.
func TestPipelineRefusedFallsBackToUnary(t *testing.T) {
	f := newFake(t, "a")
	f.noPipeline = true
	c := f.client(t, "a")
	for i := range 3 {
		r, err := c.Add(t.Context(), []byte("k"), 2)
		if err != nil {
			t.Fatalf("Add %d: %v", i, err)
		}
		if r.GetValue() != int64(2*(i+1)) {
			t.Fatalf("Add %d = %d, want %d", i, r.GetValue(), 2*(i+1))
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pipelined != 0 || f.pipeStreams != 1 || len(f.headers) != 3 {
		t.Errorf("%d pipelined calls, %d streams asked for, %d unary Adds; want 0, 1, 3", f.pipelined, f.pipeStreams, len(f.headers))
	}
}

// TestLargeRequestGoesUnary: a request larger than maxPipelinedRequest is
// a unary call of its own.
func TestLargeRequestGoesUnary(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	big := make([]byte, maxPipelinedRequest+1)
	if _, err := c.Txn().Then(OpPut([]byte("k"), big)).Commit(t.Context()); err != nil {
		t.Fatalf("Txn: %v", err)
	}
	if _, err := c.Txn().Then(OpPut([]byte("k"), []byte("small"))).Commit(t.Context()); err != nil {
		t.Fatalf("Txn: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.txns) != 2 || f.pipelined != 2 { // the small Txn and the session's Create
		t.Errorf("%d Txns, %d pipelined calls; want 2 Txns of which 1 pipelined (+ the session's Create)", len(f.txns), f.pipelined)
	}
}

// TestPipelineCallsGiveUpAtTheirDeadline: calls whose answers come late
// or never return when their context ends, and calls racing their own
// deadlines on one stream each get their own answer or error (run with
// -race: an answer must never reach a waiter that was given up and
// reused).
func TestPipelineCallsGiveUpAtTheirDeadline(t *testing.T) {
	f := newFake(t, "a")
	f.onAdd = func(string, int, *kvpb.AddRequest) error {
		time.Sleep(2 * time.Second) // never in time
		return nil
	}
	c := f.client(t, "a")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	start := time.Now()
	_, err := c.Add(ctx, []byte("k"), 0)
	cancel()
	if !errors.Is(err, ErrIndeterminate) || time.Since(start) > time.Second {
		t.Fatalf("Add the server never answers in time: %v after %v, want ErrIndeterminate after ~300ms", err, time.Since(start))
	}

	// Each Txn's answer echoes its key's number in its header, after a
	// random delay around the callers' deadlines.
	f.onTxn = func(_ int, req *kvpb.TxnRequest) (*kvpb.TxnResponse, error) {
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		id, _ := strconv.Atoi(string(req.GetSuccess()[0].GetPut().GetKey()))
		return &kvpb.TxnResponse{Header: &kvpb.ResponseHeader{AppliedIndex: uint64(id)}, Succeeded: true}, nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered, gaveUp := 0, 0
	for g := range 16 {
		wg.Go(func() {
			for i := range 30 {
				id := g*100 + i + 1
				d := time.Duration(1+rand.IntN(4)) * time.Millisecond
				ctx, cancel := context.WithTimeout(t.Context(), d)
				r, err := c.Txn().Then(OpPut([]byte(strconv.Itoa(id)), nil)).Commit(ctx)
				cancel()
				mu.Lock()
				switch {
				case err == nil && r.GetHeader().GetAppliedIndex() != uint64(id):
					t.Errorf("call %d got the answer of call %d", id, r.GetHeader().GetAppliedIndex())
				case err == nil:
					answered++
				default:
					gaveUp++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if answered+gaveUp != 16*30 || answered == 0 {
		t.Fatalf("%d answered + %d gave up, want %d calls, some answered", answered, gaveUp, 16*30)
	}
	t.Logf("%d calls answered in time, %d gave up", answered, gaveUp)
}
