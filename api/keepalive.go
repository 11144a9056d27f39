package api

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// maxStreamRenewals bounds the renewals one KeepAliveStream holds in
// flight: read from the stream and not yet answered on it. Past it the
// handler stops reading, so a client that sends without reading makes the
// server hold at most this many answers (a few hundred bytes each) beside
// what gRPC's flow-control windows already bound. The Go client has one
// renewal in flight per session at a time, and a connection carries far
// fewer sessions renewing at once than this in the benchmarks.
const maxStreamRenewals = 256

// KeepAliveStream renews sessions for as long as the client keeps the
// stream open. Each request is checked as a unary KeepAlive is (id set,
// session not known to have ended, owned by the caller) and then queued
// with the node's shared keepalive batches (RenewSessionAsync), which
// answer on a channel with room for every renewal in flight; one
// goroutine sends the answers. A refusal is answered for its tag and the
// stream goes on; a token that stops being valid ends the stream.
func (s *sessionService) KeepAliveStream(stream kvpb.Session_KeepAliveStreamServer) error {
	n := s.n
	window := maxStreamRenewals
	if n.streamRenewals > 0 {
		window = n.streamRenewals
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	slots := make(chan struct{}, window)    // one per renewal in flight
	done := make(chan node.Renewal, window) // answers, room for every slot
	sendErr := make(chan error, 1)          // the sender's end
	go func() { sendErr <- n.sendRenewals(ctx, stream, done, slots) }()
	stop := func(err error) error {
		cancel()
		if serr := <-sendErr; err == nil && serr != nil && !errors.Is(serr, context.Canceled) {
			err = serr
		}
		return err
	}
	// take waits for a free slot; a non-nil error ends the stream with it.
	take := func() (bool, error) {
		select {
		case slots <- struct{}{}:
			return true, nil
		case err := <-sendErr: // the sender has ended
			return false, err
		case <-ctx.Done():
			return false, stop(ctx.Err())
		case <-n.ctx.Done():
			return false, stop(n.toStatus(errStopping))
		}
	}

	// One goroutine reads the stream, so that a server that stops does not
	// wait for the client's next renewal.
	reqs := make(chan *kvpb.KeepAliveStreamRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var req *kvpb.KeepAliveStreamRequest
		var err error
		select {
		case req = <-reqs:
		case err = <-recvErr:
		case <-ctx.Done():
			return stop(ctx.Err())
		case <-n.ctx.Done():
			return stop(n.toStatus(errStopping))
		}
		if errors.Is(err, io.EOF) {
			// The client sends no more: taking every slot waits until
			// what is in flight has been answered.
			for range window {
				if ok, err := take(); !ok {
					return err
				}
			}
			return stop(nil)
		}
		if err != nil {
			return stop(err)
		}
		if ok, err := take(); !ok {
			return err
		}
		if err := n.recheckToken(ctx); err != nil {
			return stop(n.toStatus(err))
		}
		id := req.GetId()
		if err := n.checkRenewal(ctx, id); err != nil {
			done <- node.Renewal{ID: id, Tag: req.GetTag(), Err: err}
			continue
		}
		n.b.RenewSessionAsync(id, req.GetTag(), done)
	}
}

// checkRenewal refuses what a unary KeepAlive refuses before proposing.
func (n *Server) checkRenewal(ctx context.Context, id uint64) error {
	if id == 0 {
		return invalid("id", 0, "id: required")
	}
	return firstErr(n.checkSessionLive(id), n.ownSession(ctx, id))
}

// recheckToken checks again, while auth is enabled, the token a stream was
// opened with: a stream lives longer than the token, which may also be
// revoked meanwhile (a password change, the user deleted).
func (n *Server) recheckToken(ctx context.Context) error {
	v := n.b.FSM().Auth()
	if !v.Enabled() {
		return nil
	}
	// A stream opened while auth was off has no token: it ends here too.
	_, err := n.identify(ctx, v)
	return err
}

// sendRenewals answers the renewals of one stream in the order their
// batches end, giving back a slot for each answer sent, until ctx ends or
// a send fails.
func (n *Server) sendRenewals(ctx context.Context, stream kvpb.Session_KeepAliveStreamServer, done <-chan node.Renewal, slots <-chan struct{}) error {
	cu := connOf(stream.Context())
	for {
		select {
		case r := <-done:
			resp := n.renewalAnswer(r)
			var size int64
			if cu != nil {
				// Counted like a unary answer until its DATA is written.
				size = int64(resp.SizeVT()) + 5
				cu.settle(0, size)
			}
			if err := stream.Send(resp); err != nil {
				if cu != nil {
					cu.sent(size) // it will not be written
				}
				return err
			}
			<-slots
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// renewalAnswer is the stream's answer to one renewal: what a unary
// KeepAlive answers, or the error it would have answered with.
func (n *Server) renewalAnswer(r node.Renewal) *kvpb.KeepAliveStreamResponse {
	err := r.Err
	if err == nil {
		err = node.ResultError(r.Res)
	}
	if err != nil {
		st, _ := status.FromError(n.toStatus(err))
		return &kvpb.KeepAliveStreamResponse{Tag: r.Tag, Id: r.ID, Error: node.ErrorInfo(st), ErrorMessage: st.Message()}
	}
	resp := &kvpb.KeepAliveStreamResponse{Header: n.b.WriteHeader(r.At.Index, r.At.LogTime), Tag: r.Tag, Id: r.ID}
	resp.Session = r.Res.GetKeepAlive().GetSession()
	return resp
}
