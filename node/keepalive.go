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
	id  uint64
	tag uint64
	ch  chan<- Renewal // has room for this call's answer: the caller may have gone
}

// Renewal is the outcome of one renewal queued with RenewSessionAsync.
type Renewal struct {
	ID, Tag uint64
	// Res is the fsm's result for the session (OK with a
	// KeepAliveResponse, or SESSION_EXPIRED) when Err is nil.
	Res *kvpb.CommandResult
	At  Applied // where the batch's entry landed
	Err error   // the batch's proposal failed (*Error or the context's)
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

// RenewSessionAsync queues a renewal of session id with the next batch and
// returns at once; the batch sends its Renewal, carrying tag, on done.
// done must have room for it when the batch ends (a stream reserves a
// slot per renewal it queues): the batcher never waits on a receiver. The
// batch's proposal is bounded by keepAliveBatchTimeout, so an answer
// always comes.
func (n *Node) RenewSessionAsync(id, tag uint64, done chan<- Renewal) {
	n.keepAlives.enqueue(keepAliveCall{id: id, tag: tag, ch: done})
}

func (b *keepAliveBatcher) enqueue(c keepAliveCall) {
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
}

func (b *keepAliveBatcher) renew(ctx context.Context, id uint64) (*kvpb.CommandResult, Applied, error) {
	ch := make(chan Renewal, 1)
	b.enqueue(keepAliveCall{id: id, ch: ch})
	select {
	case d := <-ch:
		return d.Res, d.At, d.Err
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
			d := Renewal{ID: c.id, Tag: c.tag, At: at, Err: err}
			if err == nil {
				d.Res = results[i]
			}
			c.ch <- d
		}
	}
}
