package api

import (
	"context"

	"github.com/kvdproject/kvd/proto/kvpb"
)

type clusterService struct {
	kvpb.UnimplementedClusterServer
	n *Server
}

// Status reports this node only, from its local state.
func (s *clusterService) Status(ctx context.Context, req *kvpb.StatusRequest) (*kvpb.StatusResponse, error) {
	return s.n.b.Status(!req.GetSkipStateHash()), nil
}

func (s *clusterService) Members(ctx context.Context, _ *kvpb.MembersRequest) (*kvpb.MembersResponse, error) {
	n := s.n
	ms, err := n.b.Members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.MembersResponse{Header: n.b.LocalHeader(), Members: ms}, nil
}

func (s *clusterService) AddMember(ctx context.Context, req *kvpb.AddMemberRequest) (*kvpb.AddMemberResponse, error) {
	n := s.n
	if err := firstErr(n.checkName("name", []byte(req.GetName())), n.checkName("peer_addr", []byte(req.GetPeerAddr()))); err != nil {
		return nil, n.toStatus(err)
	}
	index, err := n.b.AddMember(ctx, req)
	if err != nil {
		return nil, n.toStatus(err)
	}
	ms, err := n.b.Members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.AddMemberResponse{Header: n.b.WriteHeader(index, 0), Members: ms}, nil
}

func (s *clusterService) RemoveMember(ctx context.Context, req *kvpb.RemoveMemberRequest) (*kvpb.RemoveMemberResponse, error) {
	n := s.n
	if err := n.checkName("name", []byte(req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	index, err := n.b.RemoveMember(ctx, req.GetName())
	if err != nil {
		return nil, n.toStatus(err)
	}
	ms, err := n.b.Members()
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.RemoveMemberResponse{Header: n.b.WriteHeader(index, 0), Members: ms}, nil
}

func (s *clusterService) TransferLeader(ctx context.Context, req *kvpb.TransferLeaderRequest) (*kvpb.TransferLeaderResponse, error) {
	n := s.n
	if err := n.checkNameLen("name", len(req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	leader, err := n.b.TransferLeader(ctx, req.GetName())
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.TransferLeaderResponse{Header: n.b.LocalHeader(), LeaderName: leader}, nil
}

func (s *clusterService) Snapshot(ctx context.Context, _ *kvpb.SnapshotRequest) (*kvpb.SnapshotResponse, error) {
	n := s.n
	index, err := n.b.Snapshot(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.SnapshotResponse{Header: n.b.LocalHeader(), Index: index}, nil
}
