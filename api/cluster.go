package api

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"

	"github.com/kvdproject/kvd/internal/procstat"
	"github.com/kvdproject/kvd/proto/kvpb"
)

type clusterService struct {
	kvpb.UnimplementedClusterServer
	n *Node
}

func (n *Node) localHeader() *kvpb.ResponseHeader {
	return &kvpb.ResponseHeader{
		AppliedIndex: n.adapter.appliedIndex(),
		LogTime:      n.fsm.LogTime(),
		ServedBy:     n.cfg.Name,
		Stale:        true,
		Term:         n.raft.CurrentTerm(),
	}
}

// Status reports this node only, from its local state.
func (s *clusterService) Status(ctx context.Context, req *kvpb.StatusRequest) (*kvpb.StatusResponse, error) {
	st := s.n.status(!req.GetSkipStateHash())
	return st, nil
}

// Status reports this node's view: role, indexes, log time, leader, hash.
func (n *Node) Status() *kvpb.StatusResponse { return n.status(true) }

func (n *Node) status(withHash bool) *kvpb.StatusResponse {
	cpu, rss := procstat.CPUMicros(), procstat.RSSBytes()
	stats := n.raft.Stats()
	u := func(k string) uint64 {
		v, _ := strconv.ParseUint(stats[k], 10, 64)
		return v
	}
	leaderName, leaderAddr := n.leader()
	var hash []byte
	if withHash {
		hash = n.stateHash()
	}
	return &kvpb.StatusResponse{
		Header:            n.localHeader(),
		Name:              n.cfg.Name,
		PeerAddr:          string(n.trans.LocalAddr()),
		ClientAddr:        n.cfg.AdvertiseClientAddr,
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
	}
}

// members merges raft's configuration with the client addresses learned
// through the log.
func (n *Node) members() ([]*kvpb.Member, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	for _, m := range n.fsm.Members() {
		addrs[m.GetName()] = m.GetClientAddr()
	}
	leaderName, _ := n.leader()
	var out []*kvpb.Member
	for _, srv := range f.Configuration().Servers {
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

func (s *clusterService) Members(ctx context.Context, _ *kvpb.MembersRequest) (*kvpb.MembersResponse, error) {
	n := s.n
	ms, err := n.members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.MembersResponse{Header: n.localHeader(), Members: ms}, nil
}

// onLeader runs a membership call on the leader: here if this node leads,
// else through the leader's Cluster service.
func (n *Node) leaderClusterClient(ctx context.Context) (kvpb.ClusterClient, bool, error) {
	name, addr, err := n.awaitLeader(ctx)
	if err != nil {
		return nil, false, err
	}
	if name == n.cfg.Name {
		return nil, true, nil
	}
	conn, err := n.peers.get(addr)
	if err != nil {
		return nil, false, errNotLeader
	}
	return kvpb.NewClusterClient(conn), false, nil
}

// raftError maps a raft membership/leadership future error.
func raftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return &kvError{code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, msg: err.Error()}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, raft.ErrLeadershipLost):
		return &kvError{code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE, msg: "outcome unknown: " + err.Error()}
	default:
		return &kvError{code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, grpc: codes.FailedPrecondition, msg: err.Error()}
	}
}

func (s *clusterService) AddMember(ctx context.Context, req *kvpb.AddMemberRequest) (*kvpb.AddMemberResponse, error) {
	n := s.n
	if err := firstErr(n.checkName("name", []byte(req.GetName())), n.checkName("peer_addr", []byte(req.GetPeerAddr()))); err != nil {
		return nil, n.toStatus(err)
	}
	cc, here, err := n.leaderClusterClient(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	if !here {
		resp, err := cc.AddMember(ctx, req)
		if err != nil {
			return nil, n.toStatus(forwardError(ctx, err))
		}
		return resp, nil
	}
	timeout := applyTimeout(ctx)
	var f raft.IndexFuture
	if req.GetNonVoter() {
		f = n.raft.AddNonvoter(raft.ServerID(req.GetName()), raft.ServerAddress(req.GetPeerAddr()), 0, timeout)
	} else {
		f = n.raft.AddVoter(raft.ServerID(req.GetName()), raft.ServerAddress(req.GetPeerAddr()), 0, timeout)
	}
	if err := waitFuture(ctx, f); err != nil {
		return nil, n.toStatus(raftError(err))
	}
	ms, err := n.members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.AddMemberResponse{Header: n.writeHeader(f.Index(), 0), Members: ms}, nil
}

func (s *clusterService) RemoveMember(ctx context.Context, req *kvpb.RemoveMemberRequest) (*kvpb.RemoveMemberResponse, error) {
	n := s.n
	if err := n.checkName("name", []byte(req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	cc, here, err := n.leaderClusterClient(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	if !here {
		resp, err := cc.RemoveMember(ctx, req)
		if err != nil {
			return nil, n.toStatus(forwardError(ctx, err))
		}
		return resp, nil
	}
	f := n.raft.RemoveServer(raft.ServerID(req.GetName()), 0, applyTimeout(ctx))
	if err := waitFuture(ctx, f); err != nil {
		return nil, n.toStatus(raftError(err))
	}
	index := f.Index()
	if req.GetName() != n.cfg.Name {
		// Forget its client address. (A leader that removed itself steps
		// down; the next leader's members list no longer shows it anyway.)
		_, idx, err := n.propose(ctx, &kvpb.Command{Op: &kvpb.Command_RemoveMember{RemoveMember: &kvpb.RemoveMemberOp{Name: req.GetName()}}})
		if err != nil {
			return nil, n.toStatus(err)
		}
		index = idx
	}
	ms, err := n.members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.RemoveMemberResponse{Header: n.writeHeader(index, 0), Members: ms}, nil
}

func (s *clusterService) TransferLeader(ctx context.Context, req *kvpb.TransferLeaderRequest) (*kvpb.TransferLeaderResponse, error) {
	n := s.n
	cc, here, err := n.leaderClusterClient(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	if !here {
		resp, err := cc.TransferLeader(ctx, req)
		if err != nil {
			return nil, n.toStatus(forwardError(ctx, err))
		}
		return resp, nil
	}
	var f raft.Future
	if req.GetName() == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		if req.GetName() == n.cfg.Name {
			return &kvpb.TransferLeaderResponse{Header: n.localHeader(), LeaderName: n.cfg.Name}, nil
		}
		var addr raft.ServerAddress
		cf := n.raft.GetConfiguration()
		if err := cf.Error(); err != nil {
			return nil, n.toStatus(err)
		}
		for _, srv := range cf.Configuration().Servers {
			if string(srv.ID) == req.GetName() {
				addr = srv.Address
			}
		}
		if addr == "" {
			return nil, n.toStatus(&kvError{code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, msg: "no member named " + strconv.Quote(req.GetName())})
		}
		f = n.raft.LeadershipTransferToServer(raft.ServerID(req.GetName()), addr)
	}
	if err := waitFuture(ctx, f); err != nil {
		return nil, n.toStatus(raftError(err))
	}
	// Report the new leader once known.
	var name string
	for ctx.Err() == nil {
		if name, _ = n.leader(); name != "" && name != n.cfg.Name {
			break
		}
		if n.pause(ctx, 10*time.Millisecond) != nil {
			break
		}
	}
	return &kvpb.TransferLeaderResponse{Header: n.localHeader(), LeaderName: name}, nil
}

func (s *clusterService) Snapshot(ctx context.Context, _ *kvpb.SnapshotRequest) (*kvpb.SnapshotResponse, error) {
	n := s.n
	f := n.raft.Snapshot()
	if err := waitFuture(ctx, f); err != nil {
		if errors.Is(err, raft.ErrNothingNewToSnapshot) {
			stats := n.raft.Stats()
			idx, _ := strconv.ParseUint(stats["last_snapshot_index"], 10, 64)
			return &kvpb.SnapshotResponse{Header: n.localHeader(), Index: idx}, nil
		}
		return nil, n.toStatus(&kvError{code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, grpc: codes.Internal, msg: "snapshot: " + err.Error()})
	}
	meta, rc, err := f.Open()
	if err != nil {
		return nil, n.toStatus(&kvError{code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, grpc: codes.Internal, msg: "snapshot: " + err.Error()})
	}
	rc.Close()
	return &kvpb.SnapshotResponse{Header: n.localHeader(), Index: meta.Index}, nil
}

type internalService struct {
	kvpb.UnimplementedInternalServer
	n *Node
}

// Propose applies a command forwarded by a follower. It never forwards
// again: NOT_LEADER if this node is not the leader.
func (s *internalService) Propose(ctx context.Context, req *kvpb.ProposeRequest) (*kvpb.ProposeResponse, error) {
	n := s.n
	cmd := req.GetCommand()
	if cmd == nil || cmd.GetOp() == nil {
		return nil, n.toStatus(invalid("command", 0, "command: an op is required"))
	}
	if _, ok := cmd.GetOp().(*kvpb.Command_Tick); ok {
		return nil, n.toStatus(invalid("command", 0, "command: tick is proposed by the leader only"))
	}
	if _, ok := cmd.GetOp().(*kvpb.Command_Recover); ok {
		return nil, n.toStatus(invalid("command", 0, "command: recover is proposed by the leader only"))
	}
	res, index, err := n.proposeHere(ctx, cmd)
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.ProposeResponse{Result: res, Index: index, LogTime: n.fsm.LogTime()}, nil
}

// ReadIndex confirms leadership for a follower's linearizable read.
func (s *internalService) ReadIndex(ctx context.Context, _ *kvpb.ReadIndexRequest) (*kvpb.ReadIndexResponse, error) {
	n := s.n
	index, now, term, err := n.readIndexHere(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.ReadIndexResponse{Index: index, Now: now, Term: term}, nil
}
