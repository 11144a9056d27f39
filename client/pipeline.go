package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Unary calls of KV, Session, Lock and Cache go over one KV.Pipeline
// stream per connection: a call is one small message each way instead of
// an HTTP/2 stream of its own, with its headers, HPACK work and the
// goroutine hand-offs gRPC makes for every call. The server runs each call
// exactly as the unary call (api/pipeline.go), so a call's answer, error
// and retry classification are the same either way; requests larger than
// maxPipelinedRequest still go as unary calls (large messages gain nothing
// and must not crowd out small ones). A call waits for its answer until
// its context ends; a stream that breaks fails the calls waiting on it
// (their attempt is retried as after any broken connection) and is
// dropped; a member that does not serve Pipeline (an older kvd) gets
// unary calls. Config.NoPipeline turns it off.

const (
	// maxPipelinedRequest: a request encoded larger goes as a unary call.
	maxPipelinedRequest = 16 << 10
	// pipeCallBatchBytes bounds the requests packed into one message, and
	// maxCallsPerMessage their number (the server refuses more than 1024).
	// A member whose --max-request-bytes is below a message anyway ends
	// the stream with RESOURCE_EXHAUSTED: its connection then gets unary
	// calls (runPipe).
	pipeCallBatchBytes = 64 << 10
	maxCallsPerMessage = 256
)

// pipeMethodSet holds the methods that may be pipelined: the unary methods
// of the services the server pipelines.
var pipeMethodSet = func() map[string]bool {
	m := make(map[string]bool)
	for _, desc := range []*grpc.ServiceDesc{&kvpb.KV_ServiceDesc, &kvpb.Session_ServiceDesc, &kvpb.Lock_ServiceDesc, &kvpb.Cache_ServiceDesc} {
		for _, md := range desc.Methods {
			m["/"+desc.ServiceName+"/"+md.MethodName] = true
		}
	}
	return m
}()

// pipeConn is a connection whose pipelinable calls go over its Pipeline
// stream; every other call, and every stream, goes to the connection
// itself.
type pipeConn struct {
	c  *Client
	cc *grpc.ClientConn
}

// via is the connection a request's attempt uses on cc.
func (c *Client) via(cc *grpc.ClientConn) grpc.ClientConnInterface {
	if c.cfg.NoPipeline {
		return cc
	}
	if p, ok := c.pipes.Load(cc); ok {
		return p.(*pipeConn)
	}
	p, _ := c.pipes.LoadOrStore(cc, &pipeConn{c: c, cc: cc})
	return p.(*pipeConn)
}

// connOf returns the gRPC connection under cci.
func connOf(cci grpc.ClientConnInterface) (*grpc.ClientConn, bool) {
	switch cc := cci.(type) {
	case *grpc.ClientConn:
		return cc, true
	case *pipeConn:
		return cc.cc, true
	}
	return nil, false
}

func (p *pipeConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return p.cc.NewStream(ctx, desc, method, opts...)
}

func (p *pipeConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	req, ok := args.(proto.Message)
	if !ok || !pipeMethodSet[method] || kvpb.Size(req) > maxPipelinedRequest || p.c.noPipeline(p.cc) {
		return p.cc.Invoke(ctx, method, args, reply, opts...)
	}
	var err error
	if p.c.signIn.user != "" {
		// The same sign-in as a unary call's: the token rides in the call.
		err = p.c.signIn.intercept(ctx, method, args, reply, p.cc, p.invoke, opts...)
	} else {
		err = p.invoke(ctx, method, args, reply, p.cc, opts...)
	}
	if errors.Is(err, errNoPipeline) {
		return p.cc.Invoke(ctx, method, args, reply, opts...)
	}
	return err
}

// invoke is a grpc.UnaryInvoker that sends the call on the stream and
// waits for its answer.
func (p *pipeConn) invoke(ctx context.Context, method string, args, reply any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
	st, err := p.c.pipeFor(ctx, p.cc)
	if err != nil {
		return err
	}
	body, err := kvpb.Marshal(args.(proto.Message))
	if err != nil {
		return grpcstatus.Errorf(codes.Internal, "kvd: encoding %s: %v", method, err)
	}
	w := waiterPool.Get().(*pipeWaiter)
	w.call = kvpb.PipelineCall{Method: method, Request: body}
	w.deadline, w.cancelled = time.Time{}, false
	if dl, ok := ctx.Deadline(); ok {
		if time.Until(dl) <= 0 {
			waiterPool.Put(w)
			return grpcstatus.FromContextError(context.DeadlineExceeded).Err()
		}
		w.deadline = dl // timeout_us is what is left when it is sent
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(authorizationKey); len(v) > 0 {
			w.call.Authorization = v[len(v)-1]
		}
	}
	if err := st.queue(w); err != nil {
		waiterPool.Put(w)
		return err
	}
	select {
	case a := <-w.ch:
		if a.sent {
			markSent(opts)
		}
		err := a.result(reply)
		if a.err == nil {
			// Answered, so the sender is done with it: it can be reused.
			// (A call that timed out or whose stream ended may still be in
			// the sender's hands, and is left to the collector.)
			waiterPool.Put(w)
		}
		return err
	case <-ctx.Done():
		if w.cancel() {
			markSent(opts)
		}
		st.forget(w)
		return grpcstatus.FromContextError(ctx.Err()).Err()
	}
}

// pipeWaiter is one call in flight: the call, and where its answer goes.
type pipeWaiter struct {
	call     kvpb.PipelineCall
	deadline time.Time       // the caller's, zero for none
	ch       chan pipeAnswer // room for the one answer

	mu        sync.Mutex
	queued    bool // taken by the sender, which may have sent it
	cancelled bool // its caller stopped waiting before the sender took it: never sent
}

// take is the sender's claim on w: false when its caller has stopped
// waiting or its deadline has passed (it is then never sent, so an attempt
// that gave up cannot be applied later); otherwise it sets the call's
// timeout to what is left of the deadline.
func (w *pipeWaiter) take(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.cancelled && !w.deadline.IsZero() && !now.Before(w.deadline) {
		w.cancelled = true
	}
	if w.cancelled {
		return false
	}
	w.queued = true
	if !w.deadline.IsZero() {
		w.call.TimeoutUs = uint64(max(w.deadline.Sub(now)/time.Microsecond, 1))
	}
	return true
}

// cancel marks w given up by its caller and reports whether the sender
// may already have sent it.
func (w *pipeWaiter) cancel() (sent bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.queued {
		w.cancelled = true
	}
	return w.queued
}

func (w *pipeWaiter) sent() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.queued
}

var waiterPool = sync.Pool{New: func() any { return &pipeWaiter{ch: make(chan pipeAnswer, 1)} }}

// pipeAnswer is a call's answer, or the error that ended its stream.
type pipeAnswer struct {
	a    *kvpb.PipelineAnswer
	err  error
	sent bool // the call may have reached the server
}

// result decodes the answer into reply, or returns the status it carries.
func (a pipeAnswer) result(reply any) error {
	if a.err != nil {
		return a.err
	}
	if b := a.a.GetStatus(); len(b) > 0 {
		var st status.Status
		if err := proto.Unmarshal(b, &st); err != nil {
			return grpcstatus.Errorf(codes.Internal, "kvd: the member's answer carries a status that does not decode: %v", err)
		}
		return grpcstatus.ErrorProto(&st)
	}
	if err := kvpb.Unmarshal(a.a.GetResponse(), reply.(proto.Message)); err != nil {
		return grpcstatus.Errorf(codes.Internal, "kvd: the member's answer does not decode: %v", err)
	}
	return nil
}

// pipeStream is one Pipeline stream on one connection.
type pipeStream struct {
	ready chan struct{} // closed once opening ended (cs set, or err)
	cs    kvpb.KV_PipelineClient
	stop  context.CancelFunc
	kick  chan struct{} // wakes the sender; room for one

	mu      sync.Mutex
	tag     uint64
	waiting map[uint64]*pipeWaiter // by tag
	pending []*pipeWaiter          // queued for the sender
	err     error                  // why the stream ended (or failed to open)
}

// queue numbers w, registers it for its answer and hands it to the sender.
func (st *pipeStream) queue(w *pipeWaiter) error {
	w.mu.Lock()
	w.queued = false
	w.mu.Unlock()
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		return err
	}
	st.tag++
	w.call.Tag = st.tag
	st.waiting[st.tag] = w
	st.pending = append(st.pending, w)
	st.mu.Unlock()
	select {
	case st.kick <- struct{}{}:
	default: // the sender is already woken
	}
	return nil
}

// forget drops a call its caller stopped waiting for.
func (st *pipeStream) forget(w *pipeWaiter) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.waiting[w.call.Tag] == w {
		delete(st.waiting, w.call.Tag)
	}
}

// pipeFor returns cc's open stream, opening one when there is none. The
// caller waits for the opening at most until ctx ends.
func (c *Client) pipeFor(ctx context.Context, cc *grpc.ClientConn) (*pipeStream, error) {
	v, ok := c.pipeStreams.Load(cc)
	if !ok {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if v, ok = c.pipeStreams.Load(cc); !ok {
			sctx, stop := context.WithCancel(c.bg)
			v = &pipeStream{ready: make(chan struct{}), stop: stop, kick: make(chan struct{}, 1), waiting: make(map[uint64]*pipeWaiter)}
			c.pipeStreams.Store(cc, v)
			c.bgWG.Add(1)
			go c.runPipe(sctx, cc, v.(*pipeStream))
		}
		c.mu.Unlock()
	}
	st := v.(*pipeStream)
	select {
	case <-st.ready:
	case <-ctx.Done():
		return nil, grpcstatus.FromContextError(ctx.Err()).Err()
	}
	if st.cs == nil {
		st.mu.Lock()
		defer st.mu.Unlock()
		return nil, st.err
	}
	return st, nil
}

func (c *Client) noPipeline(cc *grpc.ClientConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pipeRefused[cc]
}

// runPipe opens st on cc, starts its sender, and hands every answer to its
// waiter until the stream ends; then it fails the calls still waiting and
// drops st, so that the next call opens a new stream.
func (c *Client) runPipe(ctx context.Context, cc *grpc.ClientConn, st *pipeStream) {
	defer c.bgWG.Done()
	defer st.stop()
	// An answer may be as large as the largest unary answer, plus its
	// envelope.
	cs, err := kvpb.NewKVClient(cc).Pipeline(ctx, grpc.MaxCallRecvMsgSize(maxResponseBytes+1<<20))
	if err == nil {
		st.cs = cs
		c.bgWG.Add(1)
		go c.sendPipe(ctx, st)
	} else {
		st.mu.Lock()
		st.err = err // before ready: pipeFor returns it
		st.mu.Unlock()
	}
	close(st.ready)
	var answered []*pipeWaiter
	for err == nil {
		var resp *kvpb.PipelineResponse
		if resp, err = cs.Recv(); err != nil {
			break
		}
		answers := resp.GetAnswers()
		answered = answered[:0]
		st.mu.Lock()
		for _, a := range answers {
			w := st.waiting[a.GetTag()]
			delete(st.waiting, a.GetTag())
			answered = append(answered, w)
		}
		st.mu.Unlock()
		for i, w := range answered {
			if w != nil {
				w.ch <- pipeAnswer{a: answers[i], sent: true}
			}
		}
		clear(answered)
	}
	switch grpcstatus.Code(err) {
	case codes.Unimplemented:
		// An older member: it ran none of the calls.
		c.mu.Lock()
		c.pipeRefused[cc] = true
		c.mu.Unlock()
		err = errNoPipeline
	case codes.ResourceExhausted:
		// A message over the member's --max-request-bytes: the calls in
		// it did not run, others on the stream may have. Every call waiting
		// is sent again as a unary call (under the same session and seq, so
		// a write is still applied at most once), and so is every later
		// call to this member.
		c.mu.Lock()
		c.pipeRefused[cc] = true
		c.mu.Unlock()
		err = errNoPipeline
	}
	c.pipeStreams.CompareAndDelete(cc, st)
	st.mu.Lock()
	st.err = err
	waiting := st.waiting
	st.waiting = nil
	st.pending = nil
	st.mu.Unlock()
	st.stop() // ends the sender
	for _, w := range waiting {
		w.ch <- pipeAnswer{err: err, sent: w.sent()}
	}
}

// sendPipe sends the queued calls, those queued together in one message,
// until the stream ends.
func (c *Client) sendPipe(ctx context.Context, st *pipeStream) {
	defer c.bgWG.Done()
	var (
		batch []*pipeWaiter
		calls []*kvpb.PipelineCall
	)
	for {
		select {
		case <-st.kick:
		case <-ctx.Done():
			return
		}
		for {
			st.mu.Lock()
			batch, st.pending = st.pending, batch[:0]
			st.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i := 0; i < len(batch); {
				calls = calls[:0]
				size := 0
				now := time.Now()
				for ; i < len(batch) && len(calls) < maxCallsPerMessage && (len(calls) == 0 || size+len(batch[i].call.Request) <= pipeCallBatchBytes); i++ {
					if w := batch[i]; w.take(now) {
						calls = append(calls, &w.call)
						size += len(w.call.Request)
					}
				}
				if len(calls) == 0 {
					continue
				}
				if err := st.cs.Send(&kvpb.PipelineRequest{Calls: calls}); err != nil {
					// The stream has ended: its receiver fails every call.
					return
				}
			}
			clear(batch)
			clear(calls)
		}
	}
}

// errNoPipeline: the member does not serve Pipeline (an older kvd
// answered UNIMPLEMENTED); calls to it are unary.
var errNoPipeline = errors.New("kvd: member serves no Pipeline")
