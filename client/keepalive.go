package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Keepalives go over one Session.KeepAliveStream per connection, shared by
// every renewal the client sends to that member (its sessions', and
// Client.KeepAlive's): a renewal is one small message each way instead of
// a call with its own HTTP/2 stream and headers. Each renewal carries a
// tag, and its answer comes back with it. A renewal is still one attempt
// of the usual retry loop (attempt): bounded by the attempt's timeout,
// classified the same way, and retried elsewhere. A stream that breaks
// fails the renewals waiting on it (they are retried, on a new stream) and
// is dropped; a member that does not serve the stream (an older kvd) gets
// unary KeepAlive calls instead.

// kaStream is one KeepAliveStream on one connection.
type kaStream struct {
	ready   chan struct{} // closed once opening ended (cs set, or err)
	cs      kvpb.Session_KeepAliveStreamClient
	stop    context.CancelFunc
	sendMu  sync.Mutex // gRPC allows one sender at a time
	mu      sync.Mutex
	waiting map[uint64]chan<- kaAnswer // by tag
	err     error                      // why the stream ended (or failed to open)
}

// kaAnswer is a renewal's answer, or the error that ended its stream.
type kaAnswer struct {
	resp *kvpb.KeepAliveStreamResponse
	err  error
}

// keepAliveSend is the sendFunc of one renewal of session id.
func (c *Client) keepAliveSend(id uint64) sendFunc[*kvpb.KeepAliveResponse] {
	return func(ctx context.Context, cci grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.KeepAliveResponse, error) {
		unary := func() (*kvpb.KeepAliveResponse, error) {
			if d := deadlineOf(opts); d != nil {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, d.at)
				defer cancel()
			}
			return kvpb.NewSessionClient(cci).KeepAlive(ctx, &kvpb.KeepAliveRequest{Id: id}, opts...)
		}
		cc, ok := connOf(cci)
		if !ok {
			return unary()
		}
		// A stream the server ends because it refused the token is opened
		// again once (signing in again), as a unary call is retried once.
		for try := 0; ; try++ {
			resp, err := c.renewOnStream(ctx, cc, id, opts)
			if err == nil {
				return resp, nil
			}
			if errors.Is(err, errNoKAStream) {
				return unary()
			}
			if status.Code(err) == codes.Unimplemented {
				c.mu.Lock()
				c.kaNoStream[cc] = true
				c.mu.Unlock()
				return unary()
			}
			if try > 0 || !tokenRefused(err) {
				return nil, err
			}
		}
	}
}

// renewOnStream sends one renewal on cc's stream and waits for its answer
// or ctx. An answer carrying an error is returned as the status the unary
// call would have failed with, so that classify treats both alike.
func (c *Client) renewOnStream(ctx context.Context, cc *grpc.ClientConn, id uint64, opts []grpc.CallOption) (*kvpb.KeepAliveResponse, error) {
	var timeUp <-chan time.Time // the attempt's deadline
	if d := deadlineOf(opts); d != nil {
		timeUp = d.wait()
		defer d.stop()
	}
	st, err := c.kaStreamFor(ctx, timeUp, cc)
	if err != nil {
		return nil, err
	}
	tag := c.kaTag.Add(1)
	ch := make(chan kaAnswer, 1)
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		return nil, err
	}
	st.waiting[tag] = ch
	st.mu.Unlock()

	st.sendMu.Lock()
	err = st.cs.Send(&kvpb.KeepAliveStreamRequest{Id: id, Tag: tag})
	st.sendMu.Unlock()
	if err == nil {
		markSent(opts)
	}
	// A failed Send means the stream has ended (io.EOF): its receiver
	// hands every waiter, this one too, the status it ended with.
	select {
	case a := <-ch:
		if a.err != nil {
			return nil, a.err
		}
		return answerOf(a.resp)
	case <-timeUp:
		st.forget(tag)
		return nil, errAttemptTimeout
	case <-ctx.Done():
		st.forget(tag)
		return nil, ctx.Err()
	}
}

// answerOf turns a stream answer into a unary one, or into the unary
// call's error.
func answerOf(r *kvpb.KeepAliveStreamResponse) (*kvpb.KeepAliveResponse, error) {
	if info := r.GetError(); info != nil {
		s, err := status.New(codes.Unknown, r.GetErrorMessage()).WithDetails(info)
		if err != nil {
			return nil, status.Error(codes.Internal, r.GetErrorMessage())
		}
		return nil, s.Err()
	}
	return &kvpb.KeepAliveResponse{Header: r.GetHeader(), Session: r.GetSession()}, nil
}

// markSent fills the call's grpc.Peer option, as gRPC does once a unary
// call got a transport stream: the renewal may have reached the server
// (classify reads it).
func markSent(opts []grpc.CallOption) {
	for _, o := range opts {
		if p, ok := o.(grpc.PeerCallOption); ok && p.PeerAddr != nil {
			*p.PeerAddr = peer.Peer{Addr: sentAddr{}}
		}
	}
}

// sentAddr stands for the member's address in a filled grpc.Peer.
type sentAddr struct{}

func (sentAddr) Network() string { return "kvd-stream" }
func (sentAddr) String() string  { return "kvd-stream" }

func (st *kaStream) forget(tag uint64) {
	st.mu.Lock()
	delete(st.waiting, tag)
	st.mu.Unlock()
}

// endErr is the error that ended the stream (nil while it is open).
func (st *kaStream) endErr() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

// kaStreamFor returns cc's open stream, opening one when there is none.
// Opening runs in the background: the caller waits for it at most until
// ctx ends or timeUp fires.
func (c *Client) kaStreamFor(ctx context.Context, timeUp <-chan time.Time, cc *grpc.ClientConn) (*kaStream, error) {
	v, ok := c.kaStreams.Load(cc)
	if !ok {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if c.kaNoStream[cc] {
			c.mu.Unlock()
			return nil, errNoKAStream
		}
		if v, ok = c.kaStreams.Load(cc); !ok {
			sctx, stop := context.WithCancel(c.bg)
			v = &kaStream{ready: make(chan struct{}), stop: stop, waiting: make(map[uint64]chan<- kaAnswer)}
			c.kaStreams.Store(cc, v)
			c.bgWG.Add(1)
			go c.runKAStream(sctx, cc, v.(*kaStream))
		}
		c.mu.Unlock()
	}
	st := v.(*kaStream)
	select {
	case <-st.ready:
	case <-timeUp:
		return nil, errAttemptTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if st.cs == nil {
		return nil, st.endErr()
	}
	return st, nil
}

// runKAStream opens st on cc and then hands every answer to its waiter,
// until the stream ends; then it fails the renewals still waiting and
// drops st, so that the next renewal opens a new stream.
func (c *Client) runKAStream(ctx context.Context, cc *grpc.ClientConn, st *kaStream) {
	defer c.bgWG.Done()
	defer st.stop()
	cs, err := kvpb.NewSessionClient(cc).KeepAliveStream(ctx)
	if err == nil {
		st.cs = cs
	} else {
		st.mu.Lock()
		st.err = err // before ready: kaStreamFor returns it
		st.mu.Unlock()
	}
	close(st.ready)
	for err == nil {
		var resp *kvpb.KeepAliveStreamResponse
		if resp, err = cs.Recv(); err != nil {
			break
		}
		st.mu.Lock()
		ch := st.waiting[resp.GetTag()]
		delete(st.waiting, resp.GetTag())
		st.mu.Unlock()
		if ch != nil {
			ch <- kaAnswer{resp: resp}
		}
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = ErrClosed
	}
	c.kaStreams.CompareAndDelete(cc, st)
	st.mu.Lock()
	st.err = err
	waiting := st.waiting
	st.waiting = nil
	st.mu.Unlock()
	for _, ch := range waiting {
		ch <- kaAnswer{err: err}
	}
}

// errNoKAStream: the member does not serve KeepAliveStream (an older
// kvd answered Unimplemented); its renewals are unary calls.
var errNoKAStream = errors.New("kvd: member serves no KeepAliveStream")
