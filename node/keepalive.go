package node

import (
	"context"
	"sync"
	"time"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// keepAliveBatcher renews sessions for Session.KeepAlive. Renewals grant
// nothing and answer only with the session's new expiry, so the calls that
// arrive while one renewal is in flight share the next entry (one
// KeepAliveBatchOp): a thousand clients renewing cost a few entries, not a
// thousand. One batch is in flight per node at a time; a follower's batch
// is forwarded to the leader like any proposal.
type keepAliveBatcher struct {
	n       *Node
	mu      sync.Mutex
	queue   []keepAliveCall
	running bool
}

type keepAliveCall struct {
	id uint64
	ch chan keepAliveDone // buffered: the caller may have gone
}

type keepAliveDone struct {
	res *kvpb.CommandResult
	at  Applied
	err error
}

const (
	// maxKeepAliveBatch bounds one entry (8 bytes an id, well under the
	// entry sizes that delay heartbeats).
	maxKeepAliveBatch = 4096
	// minKeepAliveBatchTimeout is the floor of keepAliveBatchTimeout.
	minKeepAliveBatchTimeout = time.Second
)

// keepAliveBatchTimeout bounds one batch's proposal: four election
// timeouts (at least a second). One batch is in flight at a time, so a
// batch forwarded to a leader that hangs (SIGSTOP, a full disk) must give
// up soon enough for the next batch to reach the new leader while the
// sessions it renews still live: a 5 s session loses its lock otherwise.
// Its callers are bounded by their own contexts and retry.
func (n *Node) keepAliveBatchTimeout() time.Duration {
	return max(4*n.cfg.ElectionTimeout, minKeepAliveBatchTimeout)
}

// RenewSession renews session id with the next batch of renewals and
// returns its result (OK with a KeepAliveResponse, or SESSION_EXPIRED) and
// where the entry landed. It waits for the batch's commit or ctx.
func (n *Node) RenewSession(ctx context.Context, id uint64) (*kvpb.CommandResult, Applied, error) {
	return n.keepAlives.renew(ctx, id)
}

func (b *keepAliveBatcher) renew(ctx context.Context, id uint64) (*kvpb.CommandResult, Applied, error) {
	ch := make(chan keepAliveDone, 1)
	b.mu.Lock()
	b.queue = append(b.queue, keepAliveCall{id: id, ch: ch})
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case d := <-ch:
		return d.res, d.at, d.err
	case <-ctx.Done():
		// The renewal may still apply: the outcome is unknown (and harmless
		// to retry).
		return nil, Applied{}, ctx.Err()
	}
}

func (b *keepAliveBatcher) run() {
	for {
		b.mu.Lock()
		batch := b.queue
		if len(batch) > maxKeepAliveBatch {
			batch = batch[:maxKeepAliveBatch:maxKeepAliveBatch]
			b.queue = append([]keepAliveCall(nil), b.queue[maxKeepAliveBatch:]...)
		} else {
			b.queue = nil
		}
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()

		ids := make([]uint64, len(batch))
		for i, c := range batch {
			ids[i] = c.id
		}
		ctx, cancel := context.WithTimeout(b.n.ctx, b.n.keepAliveBatchTimeout())
		res, at, err := b.n.Propose(ctx, &kvpb.Command{Op: &kvpb.Command_KeepAliveBatch{
			KeepAliveBatch: &kvpb.KeepAliveBatchOp{Ids: ids}}})
		cancel()
		if err == nil {
			err = ResultError(res)
		}
		results := res.GetKeepAliveBatch().GetResults()
		if err == nil && len(results) != len(batch) {
			err = &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
				Msg: "keepalive batch: the fsm answered a different number of sessions"}
		}
		for i, c := range batch {
			d := keepAliveDone{at: at, err: err}
			if err == nil {
				d.res = results[i]
			}
			c.ch <- d
		}
	}
}
