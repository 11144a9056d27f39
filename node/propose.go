package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// waitFuture bridges a raft future to ctx: it returns the future's error, or
// ctx.Err() if ctx ends first (the future keeps running; its outcome is then
// unknown to the caller).
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// applyTimeout bounds how long raft may take to accept (enqueue) an entry.
func applyTimeout(ctx context.Context) time.Duration {
	const max = 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < max {
			if d <= 0 {
				return time.Millisecond
			}
			return d
		}
	}
	return max
}

// Applied says where a proposed command landed: its entry's index, and the
// log time once it was applied, on the node that applied it (the leader, for
// a forwarded command). The header of a write's answer carries both: a
// follower that forwarded the command may not have applied it yet, and its
// own log time can be far behind the command's stamp.
type Applied struct {
	Index   uint64
	LogTime int64
}

// applyLocal stamps cmd in epoch e, appends it to the log and waits for its
// result. The caller has checked that e is ready (or is taking office).
// Errors are *Error: NOT_LEADER when the entry was not accepted,
// INDETERMINATE when its outcome is unknown.
func (n *Node) applyLocal(ctx context.Context, e *epoch, cmd *kvpb.Command) (*kvpb.CommandResult, Applied, error) {
	if err := n.refuseWrite(cmd); err != nil {
		return nil, Applied{}, err
	}
	cmd.Stamp = n.stamp(e)
	cmd.Limits = n.limits
	data, err := kvpb.Marshal(cmd)
	if err != nil {
		return nil, Applied{}, fmt.Errorf("marshal command: %w", err)
	}
	f := n.raft.Apply(data, applyTimeout(ctx))
	err = waitFuture(ctx, f)
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout):
		return nil, Applied{}, &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: "not the leader: " + err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return nil, Applied{}, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.DeadlineExceeded,
			Msg: "deadline exceeded while the command was in flight; it may or may not have been applied"}
	case errors.Is(err, context.Canceled):
		return nil, Applied{}, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Canceled,
			Msg: "canceled while the command was in flight; it may or may not have been applied"}
	default: // ErrLeadershipLost, ErrAbortedByRestore, ErrRaftShutdown, ...
		return nil, Applied{}, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
			Msg: "outcome unknown: " + err.Error()}
	}
	res, ok := f.Response().(*kvpb.CommandResult)
	if !ok || res == nil {
		return nil, Applied{}, fmt.Errorf("fsm returned %T, want *kvpb.CommandResult", f.Response())
	}
	// The batch holding the entry has been applied: its log time is here.
	return res, Applied{Index: f.Index(), LogTime: n.adapter.lastLogTime()}, nil
}

// proposeHere proposes cmd on this node as leader: it waits until the leader
// has taken office, then applies. NOT_LEADER when this node is not leader.
func (n *Node) proposeHere(ctx context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, Applied, error) {
	e := n.currentEpoch()
	if e == nil {
		return nil, Applied{}, errNotLeader
	}
	select {
	case <-e.ready:
	case <-e.ctx.Done():
		return nil, Applied{}, errNotLeader
	case <-ctx.Done():
		// Nothing was proposed: say so (NOT_LEADER), with the context's code.
		return nil, Applied{}, &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, GRPC: status.FromContextError(ctx.Err()).Code(),
			Msg: "leader still taking office: " + ctx.Err().Error()}
	}
	return n.applyLocal(ctx, e, cmd)
}

// Propose runs cmd through the log: locally when this node is leader,
// otherwise through the leader's Internal.Propose on its peer port. It
// returns the fsm's result (whatever its code), where the entry landed, and
// errors that are *Error (NOT_LEADER: nothing was proposed; DISK_FULL,
// QUOTA_EXCEEDED: nothing was proposed because this member's or the
// leader's data dir is full or over quota; INDETERMINATE: the outcome is
// unknown) or the context's.
//
// While no leader is known it waits (up to ctx) for one; NOT_LEADER answers
// are retried, as nothing was proposed.
func (n *Node) Propose(ctx context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, Applied, error) {
	if err := n.refuseWrite(cmd); err != nil {
		return nil, Applied{}, err
	}
	var lastErr error = errNotLeader
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			if err := n.pause(ctx, n.cfg.HeartbeatTimeout/2); err != nil {
				return nil, Applied{}, lastErr
			}
		}
		ic, here, err := n.leaderConn(ctx)
		if err != nil {
			return nil, Applied{}, lastErr
		}
		var res *kvpb.CommandResult
		var at Applied
		if here {
			res, at, err = n.proposeHere(ctx, cmd)
		} else {
			res, at, err = n.forwardPropose(ctx, ic, cmd)
		}
		if err == nil {
			return res, at, nil
		}
		if !IsNotLeader(err) {
			return nil, Applied{}, err
		}
		lastErr = err
	}
	return nil, Applied{}, lastErr
}

func (n *Node) forwardPropose(ctx context.Context, ic kvpb.InternalClient, cmd *kvpb.Command) (*kvpb.CommandResult, Applied, error) {
	resp, err := ic.Propose(ctx, &kvpb.ProposeRequest{Command: cmd})
	if err != nil {
		return nil, Applied{}, forwardError(ctx, err)
	}
	return resp.GetResult(), Applied{Index: resp.GetIndex(), LogTime: resp.GetLogTime()}, nil
}

// forwardError classifies an error of a forwarded call. A status with an
// ErrorInfo is the leader's own answer. Anything else is a transport
// failure: the request may have reached the leader, so the outcome is
// unknown.
func forwardError(ctx context.Context, err error) error {
	st, _ := status.FromError(err)
	if info := ErrorInfo(st); info != nil {
		return fromStatus(st, info)
	}
	if ctx.Err() != nil {
		return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: status.Code(ctx.Err()),
			Msg: "request ended while forwarded to the leader; it may or may not have been applied"}
	}
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
		Msg: "forwarding to the leader failed; the command may or may not have been applied: " + st.Message()}
}

// awaitLeader returns the leader's name, waiting up to ctx (and at most a
// few election timeouts) for one to be known. NOT_LEADER when none is.
func (n *Node) awaitLeader(ctx context.Context) (name string, err error) {
	limit := time.Now().Add(4 * n.cfg.ElectionTimeout)
	for {
		addr, id := n.raft.LeaderWithID()
		if id != "" && addr != "" {
			return string(id), nil
		}
		if time.Now().After(limit) {
			return "", errNotLeader
		}
		if err := n.pause(ctx, 20*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// pause waits d, or returns early with an error when ctx or the node ends.
func (n *Node) pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return ErrStopped
	}
}

// Leader returns the current leader's name and advertised client address
// as far as this node knows them ("" when unknown).
func (n *Node) Leader() (name, clientAddr string) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return "", ""
	}
	name = string(id)
	if name == n.cfg.Name {
		return name, n.cfg.ClientAddr
	}
	for _, m := range n.fsm.Members() {
		if m.Name == name {
			return name, m.ClientAddr
		}
	}
	return name, ""
}
