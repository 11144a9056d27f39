package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// epoch is one term of office of this node as leader.
//
// Time (docs/design.md, "Time"): on taking office the leader
// fixes anchor = log time of the newest applied entry + the time elapsed on
// this node's monotonic clock since it applied it; it then stamps
// anchor + (clock now - office), never less than the fsm's log time.
type epoch struct {
	ctx    context.Context // ends when leadership is lost
	cancel context.CancelFunc
	term   uint64
	ready  chan struct{} // closed once barrier and RecoverOp have applied

	// Set before ready is closed, read-only after.
	anchor int64
	office int64 // n.clock() when the anchor was fixed
}

// currentEpoch returns the epoch while this node is leader, else nil.
func (n *Node) currentEpoch() *epoch {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.epoch
}

// stamp is the leader's clock on the log-time scale. Only valid once e.ready
// is closed.
func (n *Node) stamp(e *epoch) int64 {
	s := e.anchor + (n.clock() - e.office)
	// Lock-free: a stamp a little below a batch being applied is harmless,
	// the fsm keeps logTime = max(logTime, stamp).
	if lt := n.adapter.lastLogTime(); s < lt {
		s = lt
	}
	return s
}

// runLeadership follows raft's leadership notifications and runs one
// leader loop per term of office.
func (n *Node) runLeadership() {
	var stopLeader func()
	defer func() {
		if stopLeader != nil {
			stopLeader()
		}
	}()
	for {
		select {
		case <-n.ctx.Done():
			return
		case isLeader := <-n.notifyCh:
			if stopLeader != nil {
				stopLeader()
				stopLeader = nil
			}
			if !isLeader {
				continue
			}
			ctx, cancel := context.WithCancel(n.ctx)
			e := &epoch{ctx: ctx, cancel: cancel, term: n.raft.CurrentTerm(), ready: make(chan struct{})}
			n.mu.Lock()
			n.epoch = e
			n.mu.Unlock()
			done := make(chan struct{})
			go func() {
				defer close(done)
				n.leaderLoop(e)
			}()
			stopLeader = func() {
				n.mu.Lock()
				if n.epoch == e {
					n.epoch = nil
				}
				n.mu.Unlock()
				cancel()
				<-done
			}
		}
	}
}

// leaderLoop takes office (barrier, anchor, RecoverOp), then ticks until
// leadership is lost.
func (n *Node) leaderLoop(e *epoch) {
	log := n.log.With("term", e.term)
	// Barrier: commits an entry of this term and waits until everything
	// before it is applied locally.
	for {
		err := waitFuture(e.ctx, n.raft.Barrier(5*n.cfg.ElectionTimeout))
		if err == nil {
			break
		}
		if e.ctx.Err() != nil || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
			errors.Is(err, raft.ErrRaftShutdown) {
			return
		}
		log.Warn("leader barrier failed; retrying", "err", err)
	}
	lt := n.fsm.LogTime()
	now := n.clock()
	if lt == 0 {
		e.anchor = n.wallNow()
	} else {
		elapsed := int64(0)
		if la := n.adapter.lastApply.Load(); la != 0 && now > la {
			elapsed = now - la
		}
		e.anchor = lt + elapsed
	}
	e.office = now

	for {
		cmd := &kvpb.Command{Op: &kvpb.Command_Recover{Recover: &kvpb.RecoverOp{GraceNs: int64(n.cfg.RecoverGrace)}}}
		_, _, err := n.applyLocal(e.ctx, e, cmd)
		if err == nil {
			break
		}
		if e.ctx.Err() != nil || IsNotLeader(err) {
			return
		}
		log.Warn("recover after taking office failed; retrying", "err", err)
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(n.cfg.HeartbeatTimeout):
		}
	}
	close(e.ready)
	log.Info("leader ready", "anchor", time.Unix(0, e.anchor).UTC().Format(time.RFC3339Nano))

	// Make sure our own client address is in the log.
	var reg sync.WaitGroup
	reg.Add(1)
	go func() {
		defer reg.Done()
		n.registerSelf(e.ctx)
	}()
	defer reg.Wait()

	t := time.NewTicker(n.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		d := n.fsm.NextDeadline()
		if d == 0 || d > n.stamp(e) {
			continue
		}
		ctx, cancel := context.WithTimeout(e.ctx, 5*n.cfg.ElectionTimeout)
		_, _, err := n.applyLocal(ctx, e, &kvpb.Command{Op: &kvpb.Command_Tick{Tick: &kvpb.TickOp{}}})
		cancel()
		if err != nil && e.ctx.Err() == nil {
			log.Warn("tick failed", "err", err)
		}
	}
}

// runMemberRegistration makes sure fsm.Members() holds this node's name,
// peer address and client address, proposing SetMemberOp (forwarded to the
// leader like any write) with backoff until it does.
func (n *Node) runMemberRegistration() {
	n.registerSelf(n.ctx)
}

func (n *Node) registerSelf(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for {
		if n.selfRegistered() {
			return
		}
		// Only a member of the configuration can usefully register.
		if n.inConfiguration() {
			pctx, cancel := context.WithTimeout(ctx, 5*n.cfg.ElectionTimeout)
			_, _, err := n.Propose(pctx, &kvpb.Command{Op: &kvpb.Command_SetMember{SetMember: &kvpb.SetMemberOp{
				Name:       n.cfg.Name,
				PeerAddr:   string(n.trans.LocalAddr()),
				ClientAddr: n.cfg.ClientAddr,
			}}})
			cancel()
			if err == nil && n.selfRegistered() {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (n *Node) selfRegistered() bool {
	for _, m := range n.fsm.Members() {
		if m.Name == n.cfg.Name {
			return m.ClientAddr == n.cfg.ClientAddr && m.PeerAddr == string(n.trans.LocalAddr())
		}
	}
	return false
}

func (n *Node) inConfiguration() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.Name) {
			return true
		}
	}
	return false
}
