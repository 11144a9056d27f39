package api

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/fsm"
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
	if err := n.adminAfterRead(ctx, "AddMember"); err != nil {
		return nil, n.toStatus(err)
	}
	index, err := n.b.AddMember(ctx, req)
	if err != nil {
		return nil, n.toStatus(err)
	}
	// The change may have been made by the leader: answer with a member
	// list that holds it.
	if err := n.b.WaitApplied(ctx, index); err != nil {
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
	if err := n.adminAfterRead(ctx, "RemoveMember"); err != nil {
		return nil, n.toStatus(err)
	}
	index, err := n.b.RemoveMember(ctx, req.GetName())
	if err != nil {
		return nil, n.toStatus(err)
	}
	// The change may have been made by the leader: answer with a member
	// list that holds it.
	if err := n.b.WaitApplied(ctx, index); err != nil {
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
	if err := n.adminAfterRead(ctx, "TransferLeader"); err != nil {
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
	if err := n.adminAfterRead(ctx, "Snapshot"); err != nil {
		return nil, n.toStatus(err)
	}
	index, err := n.b.Snapshot(ctx)
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.SnapshotResponse{Header: n.b.LocalHeader(), Index: index}, nil
}

// adminAfterRead runs requireAdmin after a linearizable read, for the
// admin calls that change no replicated state (the interceptor's check may
// have used auth state this member had not yet brought up to date).
func (n *Server) adminAfterRead(ctx context.Context, what string) error {
	if _, _, err := n.b.Read(ctx, kvpb.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		return err
	}
	return n.requireAdmin(ctx, what)
}

// snapshotChunkSize is the size of a SnapshotSave data part.
const snapshotChunkSize = 256 << 10

// SnapshotSave streams a consistent snapshot: info, data parts, trailer.
// Only one part is in memory at a time; a client that stops reading holds
// the encoder at gRPC's flow-control window.
func (s *clusterService) SnapshotSave(_ *kvpb.SnapshotSaveRequest, stream grpc.ServerStreamingServer[kvpb.SnapshotChunk]) error {
	n := s.n
	ctx := stream.Context()
	snap, err := n.b.ConsistentSnapshot(ctx)
	if err != nil {
		return n.toStatus(err)
	}
	// The capture followed a linearizable read: this member's auth state is
	// as new as any change made before the call.
	if err := n.requireAdmin(ctx, "SnapshotSave"); err != nil {
		return n.toStatus(err)
	}
	hdr := n.b.LocalHeader()
	if err := stream.Send(&kvpb.SnapshotChunk{Part: &kvpb.SnapshotChunk_Info{Info: &kvpb.SnapshotInfo{
		Header: hdr, Index: snap.Index(), LogTime: snap.LogTime(), FormatVersion: fsm.FormatVersion, ServedBy: hdr.GetServedBy(),
	}}}); err != nil {
		return err
	}
	h := sha256.New()
	cw := &chunkWriter{send: func(b []byte) error {
		return stream.Send(&kvpb.SnapshotChunk{Part: &kvpb.SnapshotChunk_Data{Data: b}})
	}, buf: make([]byte, 0, snapshotChunkSize)}
	if err := snap.Encode(io.MultiWriter(h, cw)); err != nil {
		return n.toStatus(fmt.Errorf("encode snapshot: %w", err))
	}
	if err := cw.flush(); err != nil {
		return err
	}
	return stream.Send(&kvpb.SnapshotChunk{Part: &kvpb.SnapshotChunk_Trailer{Trailer: &kvpb.SnapshotTrailer{
		Sha256: h.Sum(nil), Size: cw.size,
	}}})
}

// chunkWriter cuts a byte stream into parts of at most cap(buf) bytes.
type chunkWriter struct {
	send func([]byte) error
	buf  []byte
	size uint64
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	w.size += uint64(len(w.buf))
	// Send marshals the message before it returns, so the buffer is free
	// to reuse.
	err := w.send(w.buf)
	w.buf = w.buf[:0]
	return err
}
