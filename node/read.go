package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// readBatcher confirms leadership for linearizable reads (ReadIndex, Raft
// dissertation 6.4). Every read that arrives while no round runs joins the
// next round; one goroutine runs VerifyLeader for all of them. Reads that
// arrive during a round wait for the following one, because the round may
// have started before their commit index was recorded.
type readBatcher struct {
	n       *Node
	mu      sync.Mutex
	queue   []chan readConfirm
	running bool
}

type readConfirm struct {
	now  int64 // leader's stamp at confirmation
	term uint64
	err  error
}

// confirm waits for the next leadership confirmation round.
func (b *readBatcher) confirm(ctx context.Context) (readConfirm, error) {
	ch := make(chan readConfirm, 1)
	b.mu.Lock()
	b.queue = append(b.queue, ch)
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case c := <-ch:
		return c, c.err
	case <-ctx.Done():
		return readConfirm{}, ctx.Err()
	}
}

func (b *readBatcher) run() {
	for {
		b.mu.Lock()
		batch := b.queue
		b.queue = nil
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()

		var c readConfirm
		e := b.n.currentEpoch()
		if e != nil {
			// A new epoch stamps only once it has taken office (its anchor
			// is set before ready closes).
			select {
			case <-e.ready:
			case <-e.ctx.Done():
				e = nil
			}
		}
		if e == nil {
			c.err = errNotLeader
		} else if err := waitFuture(e.ctx, b.n.raft.VerifyLeader()); err != nil {
			c.err = errNotLeader
		} else {
			c.now, c.term = b.n.stamp(e), e.term
		}
		for _, ch := range batch {
			ch <- c
		}
	}
}

// readIndexHere is ReadIndex on this node as leader: the commit index
// recorded at arrival, confirmed by a VerifyLeader round, with the leader's
// clock at confirmation. It requires the leader to have taken office (its
// barrier and RecoverOp applied).
func (n *Node) readIndexHere(ctx context.Context) (index uint64, now int64, term uint64, err error) {
	e := n.currentEpoch()
	if e == nil {
		return 0, 0, 0, errNotLeader
	}
	select {
	case <-e.ready:
	case <-e.ctx.Done():
		return 0, 0, 0, errNotLeader
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	}
	index = n.raft.CommitIndex()
	c, err := n.reads.confirm(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return index, c.now, c.term, nil
}

// readIndex is ReadIndex asked of the leader, wherever it is.
func (n *Node) readIndex(ctx context.Context) (index uint64, now int64, term uint64, err error) {
	var lastErr error = errNotLeader
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			if err := n.pause(ctx, n.cfg.HeartbeatTimeout/2); err != nil {
				return 0, 0, 0, lastErr
			}
		}
		ic, here, err := n.leaderConn(ctx)
		if err != nil {
			return 0, 0, 0, lastErr
		}
		if here {
			index, now, term, err = n.readIndexHere(ctx)
		} else {
			index, now, term, err = n.forwardReadIndex(ctx, ic)
		}
		if err == nil {
			return index, now, term, nil
		}
		if !IsNotLeader(err) {
			return 0, 0, 0, err
		}
		lastErr = err
	}
	return 0, 0, 0, lastErr
}

func (n *Node) forwardReadIndex(ctx context.Context, ic kvpb.InternalClient) (uint64, int64, uint64, error) {
	resp, err := ic.ReadIndex(ctx, &kvpb.ReadIndexRequest{})
	if err != nil {
		if ctx.Err() != nil {
			return 0, 0, 0, ctx.Err()
		}
		if IsNotLeader(err) {
			return 0, 0, 0, err
		}
		// A read has no effect: a transport failure is simply a failed
		// read, safe to retry.
		return 0, 0, 0, &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "leader unreachable: " + err.Error()}
	}
	return resp.GetIndex(), resp.GetNow(), resp.GetTerm(), nil
}

// Read prepares a read at consistency c: for a linearizable read it runs
// ReadIndex (asking the leader when this node is a follower) and waits until
// the local state has caught up; a stale read is served from the local state
// as it is. It returns the time to judge expiry against (log-time scale) and
// the response header. Errors: *Error NOT_LEADER when no leader confirmed the
// read, INVALID_ARGUMENT for an unknown consistency, or the context's.
func (n *Node) Read(ctx context.Context, c kvpb.Consistency) (int64, *kvpb.ResponseHeader, error) {
	if c == kvpb.Consistency_CONSISTENCY_STALE || bug("stale-read") {
		now := n.fsm.LogTime()
		return now, &kvpb.ResponseHeader{
			AppliedIndex: n.adapter.appliedIndex(),
			LogTime:      now,
			ServedBy:     n.cfg.Name,
			Stale:        true,
			Term:         n.raft.CurrentTerm(),
			WallTime:     time.Now().UnixNano(),
		}, nil
	}
	if c != kvpb.Consistency_CONSISTENCY_LINEARIZABLE {
		return 0, nil, Invalid("consistency", 0, fmt.Sprintf("consistency: unknown value %d", c))
	}
	index, now, term, err := n.readIndex(ctx)
	if err != nil {
		return 0, nil, err
	}
	if err := n.WaitApplied(ctx, index); err != nil {
		return 0, nil, err
	}
	// Entries applied after the read index may carry later stamps: never
	// judge against a time before the state's own.
	if lt := n.fsm.LogTime(); now < lt {
		now = lt
	}
	return n.judgeTime(now), &kvpb.ResponseHeader{
		AppliedIndex: n.adapter.appliedIndex(),
		LogTime:      now,
		ServedBy:     n.cfg.Name,
		Term:         term,
		WallTime:     time.Now().UnixNano(),
	}, nil
}

// WriteHeader is the header of a response to a write applied at index, at
// logTime (Applied, from Propose); logTime 0 means "applied here": the log
// time of this node's last applied batch, which holds index.
func (n *Node) WriteHeader(index uint64, logTime int64) *kvpb.ResponseHeader {
	if logTime == 0 {
		logTime = n.adapter.lastLogTime()
	}
	return &kvpb.ResponseHeader{
		AppliedIndex: index,
		LogTime:      logTime,
		ServedBy:     n.cfg.Name,
		Term:         n.raft.CurrentTerm(),
		WallTime:     time.Now().UnixNano(),
	}
}

// LocalHeader is the header of an answer from this node's own state.
func (n *Node) LocalHeader() *kvpb.ResponseHeader {
	return &kvpb.ResponseHeader{
		AppliedIndex: n.adapter.appliedIndex(),
		LogTime:      n.fsm.LogTime(),
		ServedBy:     n.cfg.Name,
		Stale:        true,
		Term:         n.raft.CurrentTerm(),
		WallTime:     time.Now().UnixNano(),
	}
}

// ConsistentSnapshot captures the whole state at an index at or after every
// write acknowledged before the call (a linearizable read first), for a
// backup. The capture is cheap (copy-on-write); encoding it may take long
// and runs beside later applies.
func (n *Node) ConsistentSnapshot(ctx context.Context) (fsm.Snapshot, error) {
	if _, _, err := n.Read(ctx, kvpb.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		return fsm.Snapshot{}, err
	}
	return n.fsm.Snapshot(), nil
}
