package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"

	"github.com/kvdproject/kvd/internal/procstat"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Status reports this node's view from its local state: role, indexes, log
// time, leader, and (withHash) the state hash.
func (n *Node) Status(withHash bool) *kvpb.StatusResponse {
	cpu, rss := procstat.CPUMicros(), procstat.RSSBytes()
	stats := n.raft.Stats()
	u := func(k string) uint64 {
		v, _ := strconv.ParseUint(stats[k], 10, 64)
		return v
	}
	leaderName, leaderAddr := n.Leader()
	var hash []byte
	if withHash {
		hash = n.stateHash()
	}
	hdr := n.LocalHeader()
	var logClock int64
	if e := n.currentEpoch(); e != nil {
		select {
		case <-e.ready:
			logClock = n.stamp(e)
		default:
		}
	}
	return &kvpb.StatusResponse{
		Header:            hdr,
		Name:              n.cfg.Name,
		PeerAddr:          string(n.trans.LocalAddr()),
		ClientAddr:        n.cfg.ClientAddr,
		Role:              strings.ToLower(n.raft.State().String()),
		Term:              n.raft.CurrentTerm(),
		CommitIndex:       n.raft.CommitIndex(),
		AppliedIndex:      n.adapter.appliedIndex(),
		LastLogIndex:      n.raft.LastIndex(),
		LogTime:           n.fsm.LogTime(),
		LeaderName:        leaderName,
		LeaderAddr:        leaderAddr,
		LastSnapshotIndex: u("last_snapshot_index"),
		StateHash:         hash,
		Version:           Version,
		CpuMicros:         cpu,
		RssBytes:          rss,
		LogClock:          logClock,
	}
}

// Members merges raft's configuration with the client addresses learned
// through the log.
func (n *Node) Members() ([]*kvpb.Member, error) {
	conf, err := n.configuration()
	if err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	for _, m := range n.fsm.Members() {
		addrs[m.GetName()] = m.GetClientAddr()
	}
	leaderName, _ := n.Leader()
	var out []*kvpb.Member
	for _, srv := range conf.Servers {
		name := string(srv.ID)
		out = append(out, &kvpb.Member{
			Name:       name,
			PeerAddr:   string(srv.Address),
			ClientAddr: addrs[name],
			Voter:      srv.Suffrage == raft.Voter,
			Leader:     name == leaderName,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (n *Node) configuration() (raft.Configuration, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, err
	}
	return f.Configuration(), nil
}

// raftError maps a raft membership/leadership future error.
func raftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, Msg: err.Error()}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, raft.ErrLeadershipLost):
		return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, Msg: "outcome unknown: " + err.Error()}
	default:
		return refused(err.Error())
	}
}

// refused is a membership or leadership call the cluster's state does not
// allow (FailedPrecondition).
func refused(msg string) *Error {
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, GRPC: codes.FailedPrecondition, Msg: msg}
}

// AddMember adds a voter (or a non-voter) through the leader and returns
// the index of the configuration entry. A name or peer address that a
// member already has is refused: re-addressing a member silently would cut
// it off (remove it, then add it again).
func (n *Node) AddMember(ctx context.Context, req *kvpb.AddMemberRequest) (uint64, error) {
	ic, here, err := n.leaderConn(ctx)
	if err != nil {
		return 0, err
	}
	if here {
		return n.addMemberHere(ctx, req)
	}
	resp, err := ic.AddMember(ctx, req)
	if err != nil {
		return 0, forwardError(ctx, err)
	}
	return resp.GetHeader().GetAppliedIndex(), nil
}

func (n *Node) addMemberHere(ctx context.Context, req *kvpb.AddMemberRequest) (uint64, error) {
	conf, err := n.configuration()
	if err != nil {
		return 0, raftError(err)
	}
	for _, srv := range conf.Servers {
		switch {
		case string(srv.ID) == req.GetName():
			return 0, refused(fmt.Sprintf("a member named %q already exists (peer address %s); to re-address it, "+
				"remove it (kvctl cluster remove %s) and add it again", req.GetName(), srv.Address, req.GetName()))
		case string(srv.Address) == req.GetPeerAddr():
			return 0, refused(fmt.Sprintf("peer address %s already belongs to member %q", req.GetPeerAddr(), srv.ID))
		}
	}
	timeout := applyTimeout(ctx)
	var f raft.IndexFuture
	if req.GetNonVoter() {
		f = n.raft.AddNonvoter(raft.ServerID(req.GetName()), raft.ServerAddress(req.GetPeerAddr()), 0, timeout)
	} else {
		f = n.raft.AddVoter(raft.ServerID(req.GetName()), raft.ServerAddress(req.GetPeerAddr()), 0, timeout)
	}
	if err := waitFuture(ctx, f); err != nil {
		return 0, raftError(err)
	}
	return f.Index(), nil
}

// RemoveMember removes a member through the leader and forgets its client
// address; NOT_FOUND when there is no such member. It returns the index of
// the last entry it wrote.
func (n *Node) RemoveMember(ctx context.Context, name string) (uint64, error) {
	ic, here, err := n.leaderConn(ctx)
	if err != nil {
		return 0, err
	}
	if here {
		return n.removeMemberHere(ctx, name)
	}
	resp, err := ic.RemoveMember(ctx, &kvpb.RemoveMemberRequest{Name: name})
	if err != nil {
		return 0, forwardError(ctx, err)
	}
	return resp.GetHeader().GetAppliedIndex(), nil
}

func (n *Node) removeMemberHere(ctx context.Context, name string) (uint64, error) {
	conf, err := n.configuration()
	if err != nil {
		return 0, raftError(err)
	}
	found := false
	for _, srv := range conf.Servers {
		found = found || string(srv.ID) == name
	}
	if !found {
		return 0, &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, Msg: "no member named " + strconv.Quote(name)}
	}
	f := n.raft.RemoveServer(raft.ServerID(name), 0, applyTimeout(ctx))
	if err := waitFuture(ctx, f); err != nil {
		return 0, raftError(err)
	}
	index := f.Index()
	if name != n.cfg.Name {
		// Forget its client address. (A leader that removed itself steps
		// down; the next leader's members list no longer shows it anyway.)
		_, at, err := n.Propose(ctx, &kvpb.Command{Op: &kvpb.Command_RemoveMember{RemoveMember: &kvpb.RemoveMemberOp{Name: name}}})
		if err != nil {
			return 0, err
		}
		index = at.Index
	}
	return index, nil
}

// TransferLeader moves leadership to the named voter ("" lets raft pick)
// and returns the new leader's name once known.
func (n *Node) TransferLeader(ctx context.Context, name string) (string, error) {
	ic, here, err := n.leaderConn(ctx)
	if err != nil {
		return "", err
	}
	if here {
		return n.transferLeaderHere(ctx, name)
	}
	resp, err := ic.TransferLeader(ctx, &kvpb.TransferLeaderRequest{Name: name})
	if err != nil {
		return "", forwardError(ctx, err)
	}
	return resp.GetLeaderName(), nil
}

func (n *Node) transferLeaderHere(ctx context.Context, name string) (string, error) {
	var f raft.Future
	if name == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		if name == n.cfg.Name {
			return name, nil
		}
		conf, err := n.configuration()
		if err != nil {
			return "", raftError(err)
		}
		var target *raft.Server
		for i, srv := range conf.Servers {
			if string(srv.ID) == name {
				target = &conf.Servers[i]
			}
		}
		switch {
		case target == nil:
			return "", &Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, Msg: "no member named " + strconv.Quote(name)}
		case target.Suffrage != raft.Voter:
			return "", refused(fmt.Sprintf("member %q is a non-voter and cannot lead; make it a voter first", name))
		}
		f = n.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := waitFuture(ctx, f); err != nil {
		if name != "" && strings.Contains(err.Error(), "timeout") {
			return "", refused(fmt.Sprintf("leadership transfer to %q timed out: it may still be catching up on the log; "+
				"retry in a few seconds (%v)", name, err))
		}
		return "", raftError(err)
	}
	// Report the new leader once known.
	var leader string
	for ctx.Err() == nil {
		if leader, _ = n.Leader(); leader != "" && leader != n.cfg.Name {
			break
		}
		if n.pause(ctx, 10*time.Millisecond) != nil {
			break
		}
	}
	return leader, nil
}

// Snapshot makes this node take a Raft snapshot now and returns its index
// (the last one's when nothing was applied since).
func (n *Node) Snapshot(ctx context.Context) (uint64, error) {
	f := n.raft.Snapshot()
	if err := waitFuture(ctx, f); err != nil {
		if errors.Is(err, raft.ErrNothingNewToSnapshot) {
			idx, _ := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64)
			return idx, nil
		}
		return 0, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Internal, Msg: "snapshot: " + err.Error()}
	}
	meta, rc, err := f.Open()
	if err != nil {
		return 0, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, GRPC: codes.Internal, Msg: "snapshot: " + err.Error()}
	}
	rc.Close()
	return meta.Index, nil
}
