package api

import (
	"bytes"
	"context"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

type lockService struct {
	kvpb.UnimplementedLockServer
	n *Server
}

// Acquire proposes the acquire. If the caller is queued and wait_ms > 0, it
// waits on the local fsm (fsm.Watch, no polling; each change is judged by
// fsm.LockWait, which builds no protobuf) until the session holds the lock, or has left the line (its wait expired in log time, its session
// ended), or ctx ends, or wait_ms (plus a grace) has passed on this node's
// clock (log time stands still on a partitioned follower). When the wait
// ends without an answer it proposes CancelWait{leave_line_only} (header
// {session, seq: 0}: not deduplicated): the session leaves the line, but a
// grant that raced in stays, because a retry of this acquire through another
// node may already have reported it to the client; the client's own
// CancelWait, or its session's expiry, releases it. Since the acquire is in
// the log by then, the error is INDETERMINATE.
func (s *lockService) Acquire(ctx context.Context, req *kvpb.AcquireRequest) (*kvpb.AcquireResponse, error) {
	n := s.n
	start := time.Now()
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkName("name", req.GetName()),
		n.checkValue("value", req.GetValue()),
		n.checkDuration("wait_ms", req.GetWaitMs()),
		n.checkLockDelay(req.GetLockDelayMs()),
		n.checkLockCap(req.GetName()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetName(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	res, at, err := n.propose(ctx, &kvpb.Command{Op: &kvpb.Command_Acquire{Acquire: req}})
	if err != nil {
		return nil, n.toStatus(err)
	}
	if err := node.ResultError(res); err != nil {
		return nil, n.toStatus(err)
	}
	resp := res.GetAcquire()
	if resp == nil {
		resp = &kvpb.AcquireResponse{}
	}
	resp.Header = n.b.WriteHeader(at.Index, at.LogTime)
	if resp.GetAcquired() || req.GetWaitMs() <= 0 || resp.GetPosition() == 0 {
		return resp, nil
	}

	// Queued: wait for the grant on the local state machine.
	session, name := req.GetHeader().GetSession(), req.GetName()
	timer := time.NewTimer(msDuration(req.GetWaitMs()) + 4*n.b.ElectionTimeout())
	defer timer.Stop()
	if err := n.b.WaitApplied(ctx, at.Index); err != nil {
		return nil, n.toStatus(n.cancelWait(ctx, session, name, err))
	}
	for {
		ch, stop := n.b.FSM().Watch(fsm.WatchLock, name)
		now := n.b.FSM().LogTime()
		held, token, position := n.b.FSM().LockWait(name, session, now)
		if held || position == 0 {
			// The answer: the lock's state is built once, here. A change
			// between the two reads fires ch: look again.
			lock := n.b.FSM().Lock(name, now)
			if held && lock.GetToken() != token {
				stop()
				continue
			}
			stop()
			// The adapter's index advances after a whole batch: a grant read
			// from the fsm may be newer, so the header says at least its token.
			hdr := n.b.WriteHeader(max(n.b.AppliedIndex(), token), now)
			if held {
				n.metrics.acquireWait.Observe(time.Since(start).Seconds())
				return &kvpb.AcquireResponse{Header: hdr, Acquired: true, Token: token, Lock: lock}, nil
			}
			return &kvpb.AcquireResponse{Header: hdr, Acquired: false, Lock: lock}, nil
		}
		resp.Position = uint32(position)
		select {
		case <-ch:
			stop()
		case <-ctx.Done():
			stop()
			return nil, n.toStatus(n.cancelWait(ctx, session, name, ctx.Err()))
		case <-timer.C:
			stop()
			return nil, n.toStatus(n.cancelWait(ctx, session, name, errWaitEnded))
		case <-n.ctx.Done():
			stop()
			return nil, n.toStatus(n.cancelWait(ctx, session, name, errWaitEnded))
		}
	}
}

// errWaitEnded: a wait for a command already in the log (a queued acquire,
// a fill) ended on this node without an answer. The command did apply, so
// the outcome is unknown rather than "not applied"; a retry with the same
// sequence number gets the first result and waits again.
var errWaitEnded = &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
	Msg: "the wait ended on this node before an answer (the request is in the log); retry with the same sequence number"}

// cancelWait proposes CancelWait best-effort with a fresh short context
// after a waiting Acquire ended; it returns cause for the caller to report.
func (n *Server) cancelWait(ctx context.Context, session uint64, name []byte, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second+4*n.b.ElectionTimeout())
	defer cancel()
	_, _, err := n.b.Propose(cctx, &kvpb.Command{Op: &kvpb.Command_CancelWait{CancelWait: &kvpb.CancelWaitRequest{
		Header:        &kvpb.RequestHeader{Session: session, Seq: 0},
		Name:          bytes.Clone(name),
		LeaveLineOnly: true,
	}}})
	if err != nil {
		n.log.Warn("cancel wait after an acquire ended failed", "lock", string(name), "session", session, "err", err)
	}
	return cause
}

func (s *lockService) Release(ctx context.Context, req *kvpb.ReleaseRequest) (*kvpb.ReleaseResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkName("name", req.GetName()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetName(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }, func() error { return n.ownLock(ctx, req.GetName(), req.GetToken()) }); err != nil {
		return nil, n.toStatus(err)
	}
	if req.GetToken() == 0 {
		return nil, n.toStatus(invalid("token", 0, "token: required"))
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Release{Release: req}}, (*kvpb.CommandResult).GetRelease)
}

func (s *lockService) CancelWait(ctx context.Context, req *kvpb.CancelWaitRequest) (*kvpb.CancelWaitResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkName("name", req.GetName()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetName(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_CancelWait{CancelWait: req}}, (*kvpb.CommandResult).GetCancelWait)
}

// Proclaim changes the value of a lock held with token (an election
// leader's new value) without a new grant. Checked as Release is: the
// request's session must be the caller's, and so must the session that
// holds the token; the fsm refuses a token that is not current, or that
// another session holds (STALE_TOKEN).
func (s *lockService) Proclaim(ctx context.Context, req *kvpb.ProclaimRequest) (*kvpb.ProclaimResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkSession("header.session", req.GetHeader()),
		n.checkName("name", req.GetName()),
		n.checkValue("value", req.GetValue()),
	); err != nil {
		return nil, n.toStatus(err)
	}
	if req.GetToken() == 0 {
		return nil, n.toStatus(invalid("token", 0, "token: required"))
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetName(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownSession(ctx, req.GetHeader().GetSession()) }, func() error { return n.ownLock(ctx, req.GetName(), req.GetToken()) }); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Proclaim{Proclaim: req}}, (*kvpb.CommandResult).GetProclaim)
}

func (s *lockService) Renew(ctx context.Context, req *kvpb.RenewRequest) (*kvpb.RenewResponse, error) {
	n := s.n
	if err := n.checkName("name", req.GetName()); err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.authz(func() error {
		return n.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, req.GetName(), kvpb.PermLevel_PERM_LEVEL_READWRITE)
	}, func() error { return n.ownLock(ctx, req.GetName(), req.GetToken()) }); err != nil {
		return nil, n.toStatus(err)
	}
	if req.GetToken() == 0 {
		return nil, n.toStatus(invalid("token", 0, "token: required"))
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Renew{Renew: req}}, (*kvpb.CommandResult).GetRenew)
}

func (s *lockService) Get(ctx context.Context, req *kvpb.GetLockRequest) (*kvpb.GetLockResponse, error) {
	n := s.n
	if err := n.checkName("name", req.GetName()); err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_LOCKS, req.GetName())
	if err != nil {
		return nil, err
	}
	// The header names the index of the state read (it may be newer than
	// the read's preparation): a watch from it misses and repeats nothing.
	lock, at := n.b.FSM().LockAt(req.GetName(), now)
	hdr.AppliedIndex = max(hdr.GetAppliedIndex(), at)
	if lock == nil {
		// A lock nobody holds or waits for: free, not an error.
		lock = &kvpb.LockInfo{Name: req.GetName()}
	}
	return &kvpb.GetLockResponse{Header: hdr, Lock: lock}, nil
}

// List answers one page of locks (see ListLocksRequest).
func (s *lockService) List(ctx context.Context, req *kvpb.ListLocksRequest) (*kvpb.ListLocksResponse, error) {
	n := s.n
	limit, err := n.listLimit("limit", req.GetLimit())
	if err == nil {
		err = firstErr(n.checkNameLen("prefix", len(req.GetPrefix())), n.checkNameLen("start_after", len(req.GetStartAfter())))
	}
	if err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_LOCKS, req.GetPrefix())
	if err != nil {
		return nil, err
	}
	if _, err := n.reserveAnswer(ctx, n.listAnswerBytes()); err != nil {
		return nil, n.toStatus(err)
	}
	locks, more := n.b.FSM().Locks(req.GetPrefix(), req.GetStartAfter(), limit, n.limits.MaxResponseBytes, now)
	return &kvpb.ListLocksResponse{Header: hdr, Locks: locks, More: more}, nil
}

func (s *lockService) Break(ctx context.Context, req *kvpb.BreakRequest) (*kvpb.BreakResponse, error) {
	n := s.n
	if err := firstErr(
		n.checkHeader(req.GetHeader()),
		n.checkName("name", req.GetName()),
		n.checkNameLen("reason", len(req.GetReason())),
	); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_Break{Break: req}}, (*kvpb.CommandResult).GetBreak)
}

func (s *lockService) CheckFence(ctx context.Context, req *kvpb.CheckFenceRequest) (*kvpb.CheckFenceResponse, error) {
	n := s.n
	if err := n.checkName("lock", req.GetLock()); err != nil {
		return nil, n.toStatus(err)
	}
	now, hdr, err := n.readAllowed(ctx, req.GetConsistency(), kvpb.PermKind_PERM_KIND_LOCKS, req.GetLock())
	if err != nil {
		return nil, err
	}
	valid, current := n.b.FSM().CheckFence(req.GetLock(), req.GetToken(), now)
	if !valid {
		n.metrics.fenceRefusals.WithLabelValues("check").Inc()
	}
	return &kvpb.CheckFenceResponse{Header: hdr, Valid: valid, CurrentToken: current}, nil
}
