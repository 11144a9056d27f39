package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Pipelined calls (KV.Pipeline). A client sends many unary calls over one
// long-lived stream per connection; each call is run through the same
// generated method handler and the same interceptors (metrics, unread
// answers, auth) as the unary call, on a pool of goroutines, and its
// answer (or the status the unary call would have failed with) goes back
// matched by tag. What a call may do, and what it costs the server in
// memory, is what the same unary call may do and costs:
//   - in flight, a connection holds at most MaxConcurrentStreams
//     pipelined calls (a slot each, taken before the call is run and given
//     back once its answer has been handed to gRPC), as it holds at most
//     that many unary calls; past that the stream is not read until
//     answers leave, and HTTP/2 flow control stops the client;
//   - answers count against the connection's unread bytes as unary
//     answers do (the unaryUnread interceptor runs for every call);
//   - a message is at most MaxRequestBytes, as a unary request is.

// pipeAnswerBatchBytes bounds the answers packed into one message: answers
// ready together leave in one message (one HTTP/2 frame and, mostly, one
// socket write) up to this size; a larger answer goes alone.
const pipeAnswerBatchBytes = 64 << 10

// maxPipeCallsPerMessage bounds the calls of one message: a message of
// empty calls decodes to ~60 times its size, and a stream holds one message
// while it waits for slots for its calls.
const maxPipeCallsPerMessage = 1024

// maxPipeStreamsPerConn bounds the Pipeline streams one connection may have
// open (the Go client opens one; a few more let a client open a new one
// before the old one has ended). Each holds at most one decoded message.
const maxPipeStreamsPerConn = 4

// maxPipeTimeout caps a call's timeout_us: a larger one (up to 2^64 µs)
// would overflow a time.Duration.
const maxPipeTimeout = 24 * time.Hour

// pipeMethod is one unary method a Pipeline call may name.
type pipeMethod struct {
	srv     any
	handler grpc.MethodHandler
}

// pipeMethods maps the full name of every unary method of KV, Session,
// Lock and Cache to its handler.
func pipeMethods(services map[*grpc.ServiceDesc]any) map[string]pipeMethod {
	m := make(map[string]pipeMethod)
	for desc, srv := range services {
		for _, md := range desc.Methods {
			m["/"+desc.ServiceName+"/"+md.MethodName] = pipeMethod{srv: srv, handler: md.Handler}
		}
	}
	return m
}

// chainUnary runs interceptors in order around a handler, as
// grpc.ChainUnaryInterceptor does for unary calls.
func chainUnary(ints []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var next func(i int) grpc.UnaryHandler
		next = func(i int) grpc.UnaryHandler {
			if i == len(ints) {
				return handler
			}
			return func(ctx context.Context, req any) (any, error) {
				return ints[i](ctx, req, info, next(i+1))
			}
		}
		return next(0)(ctx, req)
	}
}

// workerPool runs functions on goroutines kept between calls, whose
// stacks have already grown (a new goroutine per call grows its stack by
// copying, as the comment on grpc.NumStreamWorkers in New says); a call
// finding every worker busy gets a goroutine of its own.
type workerPool struct {
	size int
	once sync.Once
	work chan func()
	done <-chan struct{}
}

func (p *workerPool) run(f func()) {
	p.once.Do(func() {
		p.work = make(chan func())
		for range p.size {
			go func() {
				for {
					select {
					case f := <-p.work:
						f()
					case <-p.done:
						return
					}
				}
			}()
		}
	})
	select {
	case p.work <- f:
	default:
		go f()
	}
}

// openPipeline counts a Pipeline stream opened on the connection and
// returns the connection's semaphore of pipelined calls in flight, shared
// by every Pipeline stream on it; ok is false when the connection already
// has maxPipeStreamsPerConn open. done counts the stream closed.
func (c *connUnread) openPipeline(n int) (slots chan struct{}, done func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pipes >= maxPipeStreamsPerConn {
		return nil, nil, false
	}
	c.pipes++
	if c.slots == nil {
		c.slots = make(chan struct{}, n)
	}
	return c.slots, func() {
		c.mu.Lock()
		c.pipes--
		c.mu.Unlock()
	}, true
}

func (s *kvService) Pipeline(stream kvpb.KV_PipelineServer) error {
	return s.n.servePipeline(stream)
}

// servePipeline reads calls until the client closes its side (then it
// waits for every answer to be sent), the stream breaks or the server
// stops. Calls still running when it returns see their context end; their
// slots are given back as they finish.
func (n *Server) servePipeline(stream kvpb.KV_PipelineServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	limit := n.limits.MaxConcurrentStreams
	if limit <= 0 {
		limit = 256
	}
	cu := connOf(ctx)
	var slots chan struct{}
	if cu != nil {
		var done func()
		var ok bool
		if slots, done, ok = cu.openPipeline(limit); !ok {
			return status.Errorf(codes.ResourceExhausted, "this connection already has %d Pipeline streams open, the limit", maxPipeStreamsPerConn)
		}
		defer done()
	} else {
		slots = make(chan struct{}, limit)
	}
	// Room for every call this stream can have in flight, so a finished
	// call never waits to queue its answer.
	answers := make(chan *kvpb.PipelineAnswer, limit)
	var (
		running sync.WaitGroup
		mu      sync.Mutex
		ended   bool // no call starts after this
	)
	sent := make(chan error, 1) // the sender's end, once every answer is out
	go func() { sent <- n.sendPipelineAnswers(stream, cu, answers, slots) }()
	// start counts a call that is about to run, unless the stream has ended.
	start := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return false
		}
		running.Add(1)
		return true
	}
	// end stops new calls, lets the running ones finish (their context ends
	// unless the client closed its side) and the sender send or drop their
	// answers, and returns err, or the sender's error when err is nil. The
	// handler does not return while the sender may still use the stream.
	end := func(err error) error {
		mu.Lock()
		ended = true
		mu.Unlock()
		if err != nil {
			cancel()
		}
		running.Wait()
		close(answers)
		if serr := <-sent; err == nil {
			err = serr
		}
		return err
	}

	// The calls are read and started on a goroutine of their own, so that
	// a server that stops does not wait for the client's next message.
	readErr := make(chan error, 1)
	go func() {
		readErr <- n.readPipeline(ctx, stream, slots, start, func(call *kvpb.PipelineCall) {
			defer running.Done()
			answers <- n.pipelineCall(ctx, call)
		})
	}()
	select {
	case err := <-readErr:
		if errors.Is(err, io.EOF) {
			return end(nil)
		}
		return end(err)
	case <-n.ctx.Done():
		return end(n.toStatus(errStopping))
	}
}

// readPipeline reads messages and starts their calls (run, on the worker
// pool, once start has counted them and a slot is free) until the stream
// or ctx ends; it returns why (io.EOF when the client closed its side).
func (n *Server) readPipeline(ctx context.Context, stream kvpb.KV_PipelineServer, slots chan struct{}, start func() bool, run func(*kvpb.PipelineCall)) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if k := len(req.GetCalls()); k > maxPipeCallsPerMessage {
			return status.Errorf(codes.InvalidArgument, "calls: %d calls in one message, the limit is %d", k, maxPipeCallsPerMessage)
		}
		for _, call := range req.GetCalls() {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if !start() {
				<-slots
				return ctx.Err()
			}
			n.pipeWorkers.run(func() { run(call) })
		}
	}
}

// sendPipelineAnswers sends answers as they come, packing those ready
// together into one message, and gives back a slot for each answer once
// gRPC has it (or once a send has failed: then it only drains). It returns
// when answers is closed. The connection's unread count (cu, nil when not
// counted) gets what the unary interceptor did not count of each message
// (errors, the envelope), and loses all of a message that failed to go.
func (n *Server) sendPipelineAnswers(stream kvpb.KV_PipelineServer, cu *connUnread, answers <-chan *kvpb.PipelineAnswer, slots <-chan struct{}) error {
	var sendErr error
	batch := make([]*kvpb.PipelineAnswer, 0, 64)
	for a := range answers {
		batch = append(batch[:0], a)
		size := len(a.Response) + len(a.Status)
	more:
		for size < pipeAnswerBatchBytes {
			select {
			case b, ok := <-answers:
				if !ok {
					break more
				}
				batch = append(batch, b)
				size += len(b.Response) + len(b.Status)
			default:
				break more
			}
		}
		if sendErr == nil {
			msg := &kvpb.PipelineResponse{Answers: batch}
			var total int64
			if cu != nil {
				// The interceptor counted each successful answer as a unary
				// answer: its response and gRPC's 5-byte prefix.
				total = int64(msg.SizeVT()) + 5
				var counted int64
				for _, b := range batch {
					if len(b.Status) == 0 {
						counted += int64(len(b.Response)) + 5
					}
				}
				if extra := total - counted; extra > 0 {
					cu.settle(0, extra)
				}
			}
			if sendErr = stream.Send(msg); sendErr != nil && cu != nil {
				cu.sent(total) // it will not be written
			}
		} else if cu != nil {
			for _, b := range batch {
				if len(b.Status) == 0 {
					cu.sent(int64(len(b.Response)) + 5)
				}
			}
		}
		for range batch {
			<-slots
		}
		clear(batch)
	}
	return sendErr
}

// pipelineCall runs one call as its unary method would run and returns
// its answer.
func (n *Server) pipelineCall(ctx context.Context, call *kvpb.PipelineCall) *kvpb.PipelineAnswer {
	a := &kvpb.PipelineAnswer{Tag: call.GetTag()}
	m, ok := n.pipeMethods[call.GetMethod()]
	if !ok {
		name := call.GetMethod()
		if len(name) > 64 {
			name = name[:64] + "..."
		}
		a.Status = encodeStatus(status.New(codes.Unimplemented,
			fmt.Sprintf("calls[].method: %q is not a unary method of KV, Session, Lock or Cache", name)))
		return a
	}
	// Judged afresh, as a unary call is: not as the user the stream was
	// opened by (auth may have been turned off or on since).
	ctx = context.WithValue(ctx, userKey{}, nil)
	if tok := call.GetAuthorization(); tok != "" {
		// The call's own token, in place of the stream's metadata.
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", tok))
	}
	if t := call.GetTimeoutUs(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(min(t, uint64(maxPipeTimeout/time.Microsecond)))*time.Microsecond)
		defer cancel()
	}
	dec := func(v any) error {
		if err := kvpb.UnmarshalChecked(call.GetRequest(), v.(proto.Message)); err != nil {
			return status.Errorf(codes.InvalidArgument, "calls[].request: not a valid %s: %v", call.GetMethod(), err)
		}
		return nil
	}
	resp, err := m.handler(m.srv, ctx, dec, n.pipeIntercept)
	if err == nil {
		a.Response, err = kvpb.Marshal(resp.(proto.Message))
	}
	if err != nil {
		a.Response = nil
		a.Status = encodeStatus(status.Convert(err))
	}
	return a
}

// encodeStatus encodes st as a google.rpc.Status; never empty, which would
// read as success.
func encodeStatus(st *status.Status) []byte {
	if b, err := proto.Marshal(st.Proto()); err == nil && len(b) > 0 {
		return b
	}
	// A detail or message that cannot be encoded (text that is not UTF-8).
	b, _ := proto.Marshal(status.New(codes.Internal, "kvd: the call failed with a status that cannot be encoded").Proto())
	return b
}
