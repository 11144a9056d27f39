package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvdproject/kvd/fsm"
)

// fsmAdapter is the raft.FSM raft calls: it applies through fsm.FSM, then
// records the node's clock at the apply (for the leader's time anchor) and
// the applied index, and wakes whoever waits for an index (ReadIndex).
//
// It also implements raft.ConfigurationStore so configuration entries move
// the applied index too; barrier and no-op entries never reach an FSM, see
// waitApplied.
type fsmAdapter struct {
	n *Node

	applied   atomic.Uint64
	lastApply atomic.Int64 // n.clock() at the last apply; 0: none since start
	// logTime is the fsm's log time after the last applied batch, read
	// without the fsm's lock: every proposal stamps against it, and taking
	// the fsm's read lock there queued proposals behind each Apply.
	logTime atomic.Int64

	mu         sync.Mutex
	wake       chan struct{} // closed and replaced after every apply
	restoreErr error         // the first failed Restore (checkRestored)
}

func newFSMAdapter(n *Node) *fsmAdapter {
	return &fsmAdapter{n: n, wake: make(chan struct{})}
}

var (
	_ raft.FSM                = (*fsmAdapter)(nil)
	_ raft.BatchingFSM        = (*fsmAdapter)(nil)
	_ raft.ConfigurationStore = (*fsmAdapter)(nil)
)

func (a *fsmAdapter) Apply(l *raft.Log) interface{} {
	r := a.apply(l)
	a.logTime.Store(a.n.fsm.LogTime())
	a.advance(l.Index)
	return r
}

// apply hands one entry to the fsm: the command of a LogCommand entry, or
// only its index for the other kinds. The result is nil or a
// *kvpb.CommandResult (never a typed nil inside the interface).
func (a *fsmAdapter) apply(l *raft.Log) interface{} {
	var cmd []byte
	if l.Type == raft.LogCommand {
		cmd = l.Data
		if cmd == nil {
			cmd = []byte{} // a command entry with no data: the fsm refuses it
		}
	}
	r, evs := a.n.fsm.ApplyEvents(l.Index, cmd)
	a.n.watch.Publish(l.Index, evs)
	if r != nil {
		return r
	}
	return nil
}

// ApplyBatch applies the committed entries raft hands over together (up to
// MaxAppendEntries): each command entry is still applied on its own, in
// order, with its own index (a lock's fencing token is the index of its
// granting entry), but the applied index moves, and the readers waiting for
// it wake, once per batch. Configuration entries only move the applied
// index, as StoreConfiguration does for raft's unbatched path.
func (a *fsmAdapter) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	var last uint64
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			out[i] = a.apply(l)
		} else {
			a.n.watch.Publish(l.Index, nil)
		}
		last = l.Index
	}
	a.logTime.Store(a.n.fsm.LogTime())
	if last > 0 {
		a.advance(last)
	}
	return out
}

func (a *fsmAdapter) StoreConfiguration(index uint64, _ raft.Configuration) {
	a.n.watch.Publish(index, nil)
	a.advance(index)
}

func (a *fsmAdapter) Snapshot() (raft.FSMSnapshot, error) {
	return fsmSnapshot{a.n.fsm.Snapshot(), a.n.metrics}, nil
}

// fsmSnapshot is raft's view of an fsm.Snapshot.
type fsmSnapshot struct {
	snap fsm.Snapshot
	m    *metrics
}

// Persist encodes the snapshot into raft's sink (raft calls it off the fsm
// goroutine).
func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	cw := &countingWriter{w: sink}
	w := bufio.NewWriterSize(cw, 1<<16)
	err := s.snap.Encode(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return err
	}
	s.m.snapshotPersist.Observe(time.Since(start).Seconds())
	s.m.snapshotSize.Set(float64(cw.n))
	return nil
}

// Release is a no-op: the snapshot holds no resources.
func (fsmSnapshot) Release() {}

func (a *fsmAdapter) Restore(rc io.ReadCloser) error {
	start := time.Now()
	if err := a.n.fsm.Restore(rc); err != nil {
		a.mu.Lock()
		if a.restoreErr == nil {
			a.restoreErr = err
		}
		a.mu.Unlock()
		return err
	}
	a.n.metrics.snapshotRestore.Observe(time.Since(start).Seconds())
	// The changes up to the snapshot's index are not known here: the watch
	// history starts again after it.
	a.n.watch.Reset(a.n.fsm.AppliedIndex())
	a.afterRestore()
	return nil
}

// firstRestoreErr is the error of the first Restore that failed, if any.
func (a *fsmAdapter) firstRestoreErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restoreErr
}

// afterRestore takes the applied index from the fsm (after a snapshot
// restore). The clock of the "apply" is now: that underestimates elapsed
// time, which only makes log time run late (safe).
func (a *fsmAdapter) afterRestore() {
	a.logTime.Store(a.n.fsm.LogTime())
	idx := a.n.fsm.AppliedIndex()
	if idx == 0 {
		return
	}
	a.advance(idx)
}

func (a *fsmAdapter) advance(index uint64) {
	a.lastApply.Store(a.n.clock())
	for {
		cur := a.applied.Load()
		if index <= cur || a.applied.CompareAndSwap(cur, index) {
			break
		}
	}
	a.mu.Lock()
	close(a.wake)
	a.wake = make(chan struct{})
	a.mu.Unlock()
}

// changed returns a channel closed at the next apply.
func (a *fsmAdapter) changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wake
}

// lastLogTime is the fsm's log time as of the last applied batch: never
// ahead of fsm.LogTime, behind it only while a batch is being applied.
func (a *fsmAdapter) lastLogTime() int64 { return a.logTime.Load() }

// AppliedIndex is the index of the last entry this node has applied.
func (n *Node) AppliedIndex() uint64 { return n.adapter.appliedIndex() }

// appliedIndex is the index of the last entry the fsm has applied.
func (a *fsmAdapter) appliedIndex() uint64 { return a.applied.Load() }

// WaitApplied waits until the local state reflects every entry up to index,
// or ctx ends. Entries that never reach an FSM (barriers, no-ops) are
// skipped over by looking them up in the log once raft has dispatched them.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	var recheck *time.Timer
	for {
		ch := n.adapter.changed()
		cur := n.adapter.appliedIndex()
		if cur >= index {
			return nil
		}
		if n.raft.AppliedIndex() >= index && n.onlyNonFSMEntries(cur+1, index) {
			return nil
		}
		if recheck == nil {
			recheck = time.NewTimer(20 * time.Millisecond)
			defer recheck.Stop()
		} else {
			recheck.Reset(20 * time.Millisecond)
		}
		select {
		case <-ch:
		case <-recheck.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return ErrStopped
		}
	}
}

// onlyNonFSMEntries reports whether the log entries in [from, to] are all of
// a kind raft never hands to the FSM.
func (n *Node) onlyNonFSMEntries(from, to uint64) bool {
	if to-from > 64 {
		return false
	}
	var l raft.Log
	for i := from; i <= to; i++ {
		if err := n.logStore.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}
