package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// fake is a scripted kvd "cluster" of gRPC servers on bufconn: each test
// decides per request what a node answers, so the retry loop can be checked
// without raft. It applies Adds exactly-once by (session, seq) like the fsm.
type fake struct {
	t *testing.T

	mu        sync.Mutex
	lis       map[string]*bufconn.Listener
	nextID    uint64
	sessions  map[uint64]bool // live sessions
	counter   int64
	dedup     map[[2]uint64]*kvpb.AddResponse
	headers   []*kvpb.RequestHeader // every Add received, in order
	addNodes  []string              // the node each was received on
	keepalive int                   // KeepAlives received
	statuses  []*kvpb.StatusRequest // every Status received

	// onAdd decides what node answers an Add; nil: apply it.
	onAdd func(node string, n int, req *kvpb.AddRequest) error
	// onKeepAlive decides what a KeepAlive gets; nil: renew.
	onKeepAlive func(id uint64) error

	// noPipeline: the nodes answer Pipeline UNIMPLEMENTED, as an older kvd.
	noPipeline  bool
	pipeHold    chan struct{} // while set, Pipeline streams stop reading
	pipelined   int           // calls received over Pipeline streams
	pipeStreams int           // Pipeline streams opened

	txns []*kvpb.TxnRequest // every Txn received, in order
	// onTxn answers the nth Txn (from 1); nil: succeeded, no results.
	onTxn func(n int, req *kvpb.TxnRequest) (*kvpb.TxnResponse, error)
}

// fakeServerOpts are added to every fake node's server options.
var fakeServerOpts []grpc.ServerOption

func newFake(t *testing.T, nodes ...string) *fake {
	f := &fake{t: t, lis: map[string]*bufconn.Listener{}, sessions: map[uint64]bool{}, dedup: map[[2]uint64]*kvpb.AddResponse{}, nextID: 100}
	for _, name := range nodes {
		lis := bufconn.Listen(1 << 20)
		// fixed windows as kvd's (no BDP growth), small so that a test can fill one
		srv := grpc.NewServer(append([]grpc.ServerOption{grpc.InitialWindowSize(64 << 10), grpc.InitialConnWindowSize(64 << 10)}, fakeServerOpts...)...)
		n := &fakeNode{f: f, name: name}
		kvpb.RegisterKVServer(srv, n)
		kvpb.RegisterSessionServer(srv, &fakeSessions{fakeNode: n})
		kvpb.RegisterClusterServer(srv, &fakeCluster{f: f})
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		f.lis[name] = lis
	}
	return f
}

// dial connects to a fake node; unknown names are unreachable.
func (f *fake) dial(ctx context.Context, addr string) (net.Conn, error) {
	f.mu.Lock()
	lis, ok := f.lis[addr]
	f.mu.Unlock()
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	}
	return lis.DialContext(ctx)
}

// Pipeline serves each call through the unary handler of its method (KV
// and Session of this node), concurrently, as kvd does.
func (n *fakeNode) Pipeline(st kvpb.KV_PipelineServer) error {
	f := n.f
	f.mu.Lock()
	refuse := f.noPipeline
	f.pipeStreams++
	f.mu.Unlock()
	if refuse {
		return status.Error(codes.Unimplemented, "unknown method Pipeline")
	}
	handlers := map[string]grpc.MethodHandler{}
	srvs := map[string]any{}
	for desc, srv := range map[*grpc.ServiceDesc]any{&kvpb.KV_ServiceDesc: n, &kvpb.Session_ServiceDesc: fakeSessions{fakeNode: n}} {
		for _, md := range desc.Methods {
			name := "/" + desc.ServiceName + "/" + md.MethodName
			handlers[name], srvs[name] = md.Handler, srv
		}
	}
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		f.mu.Lock()
		hold := f.pipeHold
		f.mu.Unlock()
		if hold != nil {
			<-hold
		}
		req, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		for _, call := range req.GetCalls() {
			f.mu.Lock()
			f.pipelined++
			f.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := st.Context()
				if us := call.GetTimeoutUs(); us > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Duration(us)*time.Microsecond)
					defer cancel()
				}
				a := &kvpb.PipelineAnswer{Tag: call.GetTag()}
				var resp any
				err := status.Errorf(codes.Unimplemented, "method %s", call.GetMethod())
				if h := handlers[call.GetMethod()]; h != nil {
					resp, err = h(srvs[call.GetMethod()], ctx, func(m any) error { return proto.Unmarshal(call.GetRequest(), m.(proto.Message)) }, nil)
				}
				if err == nil {
					a.Response, err = proto.Marshal(resp.(proto.Message))
				}
				if err != nil {
					a.Response = nil
					a.Status, _ = proto.Marshal(status.Convert(err).Proto())
				}
				sendMu.Lock()
				defer sendMu.Unlock()
				st.Send(&kvpb.PipelineResponse{Answers: []*kvpb.PipelineAnswer{a}})
			}()
		}
	}
}

func (f *fake) client(t *testing.T, endpoints ...string) *Client {
	c, err := New(Config{Endpoints: endpoints, Dialer: f.dial, AttemptTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fake) apply(req *kvpb.AddRequest) *kvpb.AddResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := [2]uint64{req.GetHeader().GetSession(), req.GetHeader().GetSeq()}
	if r, ok := f.dedup[k]; ok {
		return r
	}
	f.counter += req.GetDelta()
	r := &kvpb.AddResponse{Value: f.counter}
	f.dedup[k] = r
	return r
}

// fakeCluster records Status requests and names no leader.
type fakeCluster struct {
	kvpb.UnimplementedClusterServer
	f *fake
}

func (c *fakeCluster) Status(_ context.Context, req *kvpb.StatusRequest) (*kvpb.StatusResponse, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.f.statuses = append(c.f.statuses, req)
	return &kvpb.StatusResponse{}, nil
}

type fakeNode struct {
	kvpb.UnimplementedKVServer
	f    *fake
	name string
}

type fakeSessions struct {
	kvpb.UnimplementedSessionServer
	*fakeNode
}

func (n *fakeNode) Add(ctx context.Context, req *kvpb.AddRequest) (*kvpb.AddResponse, error) {
	f := n.f
	f.mu.Lock()
	f.headers = append(f.headers, req.GetHeader())
	f.addNodes = append(f.addNodes, n.name)
	num := len(f.headers)
	live := f.sessions[req.GetHeader().GetSession()]
	hook := f.onAdd
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n.name, num, req); err != nil {
			return nil, err
		}
	}
	if !live {
		return nil, kvdStatus(codes.NotFound, "session expired", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED})
	}
	return f.apply(req), nil
}

func (n fakeSessions) Create(ctx context.Context, req *kvpb.CreateSessionRequest) (*kvpb.CreateSessionResponse, error) {
	f := n.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	f.sessions[f.nextID] = true
	return &kvpb.CreateSessionResponse{Session: &kvpb.SessionInfo{Id: f.nextID, TtlMs: req.GetTtlMs(), Name: req.GetName()}}, nil
}

func (n fakeSessions) KeepAlive(ctx context.Context, req *kvpb.KeepAliveRequest) (*kvpb.KeepAliveResponse, error) {
	f := n.f
	f.mu.Lock()
	f.keepalive++
	hook := f.onKeepAlive
	live := f.sessions[req.GetId()]
	f.mu.Unlock()
	if hook != nil {
		if err := hook(req.GetId()); err != nil {
			return nil, err
		}
	}
	if !live {
		return nil, kvdStatus(codes.NotFound, "session expired", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED})
	}
	return &kvpb.KeepAliveResponse{Session: &kvpb.SessionInfo{Id: req.GetId(), Locks: [][]byte{[]byte("l")}}}, nil
}

func (n fakeSessions) Close(ctx context.Context, req *kvpb.CloseSessionRequest) (*kvpb.CloseSessionResponse, error) {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	delete(n.f.sessions, req.GetId())
	return &kvpb.CloseSessionResponse{}, nil
}

func (n *fakeNode) Txn(ctx context.Context, req *kvpb.TxnRequest) (*kvpb.TxnResponse, error) {
	f := n.f
	f.mu.Lock()
	f.txns = append(f.txns, proto.Clone(req).(*kvpb.TxnRequest))
	num := len(f.txns)
	hook := f.onTxn
	f.mu.Unlock()
	if hook != nil {
		return hook(num, req)
	}
	return &kvpb.TxnResponse{Succeeded: true}, nil
}

func notLeader(hint string) error {
	return kvdStatus(codes.Unavailable, "not the leader", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderName: hint, LeaderAddr: hint})
}

// seqs returns the (session, seq) of every Add received.
func (f *fake) seqs() [][2]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][2]uint64
	for _, h := range f.headers {
		out = append(out, [2]uint64{h.GetSession(), h.GetSeq()})
	}
	return out
}

func TestWriteFollowsLeaderHint(t *testing.T) {
	f := newFake(t, "a", "b")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error {
		if node == "a" {
			return notLeader("b")
		}
		return nil
	}
	c := f.client(t, "a")
	resp, err := c.Add(t.Context(), []byte("k"), 5)
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	if resp.GetValue() != 5 {
		t.Errorf("Add = %d, want 5", resp.GetValue())
	}
	if got := c.Leader(); got != "b" {
		t.Errorf("Leader() = %q, want b", got)
	}
	seqs := f.seqs()
	if len(seqs) != 2 || seqs[0] != seqs[1] {
		t.Errorf("attempts carried %v, want two with the same (session, seq)", seqs)
	}
	// The next write goes straight to the leader with the next seq.
	if _, err := c.Add(t.Context(), []byte("k"), 1); err != nil {
		t.Fatalf("Add: %v", err)
	}
	f.mu.Lock()
	last, lastNode := f.headers[len(f.headers)-1], f.addNodes[len(f.addNodes)-1]
	f.mu.Unlock()
	if lastNode != "b" || last.GetSeq() != seqs[0][1]+1 || last.GetMinPendingSeq() != last.GetSeq() {
		t.Errorf("second Add went to %s with %v, want b with seq %d, min_pending = seq", lastNode, last, seqs[0][1]+1)
	}
}

func TestWriteLostAnswerAppliesOnce(t *testing.T) {
	f := newFake(t, "a", "b")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error {
		if n <= 2 {
			// Applied, but the answer is lost on the way back.
			f.apply(req)
			return status.Error(codes.Unavailable, "error reading from server: EOF")
		}
		return nil
	}
	c := f.client(t, "a", "b")
	resp, err := c.Add(t.Context(), []byte("k"), 7)
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	if resp.GetValue() != 7 || f.counter != 7 {
		t.Errorf("Add = %d, counter %d, want 7 and 7 (applied once)", resp.GetValue(), f.counter)
	}
	seqs := f.seqs()
	if len(seqs) != 3 || seqs[0] != seqs[1] || seqs[1] != seqs[2] {
		t.Errorf("attempts carried %v, want three with the same (session, seq)", seqs)
	}
}

func TestWriteIndeterminate(t *testing.T) {
	f := newFake(t, "a")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error {
		return kvdStatus(codes.Unavailable, "leadership lost while committing", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_INDETERMINATE})
	}
	c := f.client(t, "a")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Add(ctx, []byte("k"), 1)
	if !errors.Is(err, ErrIndeterminate) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Add = %v, want ErrIndeterminate (and not ErrUnavailable)", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Add = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if seqs := f.seqs(); len(seqs) < 2 || seqs[0] != seqs[len(seqs)-1] {
		t.Errorf("attempts carried %v, want several with the same (session, seq)", seqs)
	}
}

func TestWriteUnavailable(t *testing.T) {
	f := newFake(t, "a")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error { return notLeader("") }
	c := f.client(t, "a", "nowhere")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Add(ctx, []byte("k"), 1)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrIndeterminate) {
		t.Fatalf("Add = %v, want ErrUnavailable (and not ErrIndeterminate)", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Add = %v, want it to wrap context.DeadlineExceeded", err)
	}

	// Nothing reachable at all: the session cannot even be created.
	c2 := f.client(t, "nowhere", "neither")
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := c2.Add(ctx, []byte("k"), 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Add to unreachable endpoints = %v, want ErrUnavailable", err)
	}
}

func TestWriteSessionExpiredRecreates(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	if _, err := c.Add(t.Context(), []byte("k"), 1); err != nil {
		t.Fatalf("Add: %v", err)
	}
	first := f.seqs()[0][0]
	// The server forgets the session: the next Add is rerun under a new one.
	f.mu.Lock()
	delete(f.sessions, first)
	f.mu.Unlock()
	resp, err := c.Add(t.Context(), []byte("k"), 1)
	if err != nil {
		t.Fatalf("Add after the session expired: %v", err)
	}
	seqs := f.seqs()
	if resp.GetValue() != 2 || len(seqs) != 3 || seqs[2][0] == first || seqs[2][1] != 1 {
		t.Errorf("Add = %d with attempts %v, want 2 and the last under a new session with seq 1", resp.GetValue(), seqs)
	}
}

func TestWriteSessionExpiredAfterMaybe(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error {
		if n == 1 {
			f.apply(req)
			f.mu.Lock()
			delete(f.sessions, req.GetHeader().GetSession())
			f.mu.Unlock()
			return status.Error(codes.Unavailable, "connection reset")
		}
		return nil
	}
	_, err := c.Add(t.Context(), []byte("k"), 1)
	if !errors.Is(err, ErrIndeterminate) {
		t.Fatalf("Add = %v, want ErrIndeterminate (the first attempt may have applied)", err)
	}
	if f.counter != 1 {
		t.Errorf("counter = %d, want 1", f.counter)
	}
}

func TestMinPendingSeq(t *testing.T) {
	f := newFake(t, "a")
	release := make(chan struct{})
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error {
		if string(req.GetKey()) == "slow" {
			<-release
		}
		return nil
	}
	c, err := New(Config{Endpoints: []string{"a"}, Dialer: f.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error)
	go func() {
		_, err := c.Add(t.Context(), []byte("slow"), 1)
		done <- err
	}()
	// Wait until the slow one is in flight.
	for len(f.seqs()) == 0 {
		time.Sleep(time.Millisecond)
	}
	for range 3 {
		if _, err := c.Add(t.Context(), []byte("fast"), 1); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("slow Add: %v", err)
	}
	if _, err := c.Add(t.Context(), []byte("fast"), 1); err != nil {
		t.Fatalf("Add: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	want := [][2]uint64{{1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 5}}
	for i, h := range f.headers {
		if got := [2]uint64{h.GetSeq(), h.GetMinPendingSeq()}; got != want[i] {
			t.Errorf("Add %d: (seq, min_pending) = %v, want %v", i, got, want[i])
		}
	}
}

func TestSessionKeepAliveAndDone(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	const ttl = 600 * time.Millisecond
	start := time.Now()
	s, err := c.NewSession(t.Context(), ttl, "test")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	if dl := s.Deadline(); dl.After(start.Add(ttl)) || dl.Before(start.Add(ttl-leaseMargin(ttl)-50*time.Millisecond)) {
		t.Errorf("Deadline() = start+%v, want start+TTL-margin", dl.Sub(start))
	}
	// Keepalives move the deadline.
	deadline := time.Now().Add(2 * time.Second)
	for !s.Deadline().After(start.Add(ttl)) {
		if time.Now().After(deadline) {
			t.Fatalf("Deadline() did not move past start+TTL; keepalives: %d", f.keepalive)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info := s.Info(); len(info.GetLocks()) != 1 {
		t.Errorf("Info() = %v, want the last keepalive's answer", info)
	}
	// The server stops answering: Done closes at the local deadline,
	// strictly before the server would expire the session.
	f.mu.Lock()
	f.onKeepAlive = func(uint64) error { return status.Error(codes.Unavailable, "connection refused") }
	f.mu.Unlock()
	dl := s.Deadline()
	select {
	case <-s.Done():
	case <-time.After(2 * ttl):
		t.Fatal("Done not closed")
	}
	if now := time.Now(); now.Before(dl) {
		t.Errorf("Done closed %v before Deadline()", dl.Sub(now))
	}
	if err := s.Err(); !errors.Is(err, ErrSessionLost) || !errors.Is(err, ErrSessionExpired) {
		t.Errorf("Err() = %v, want ErrSessionLost and ErrSessionExpired", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestSessionExpiredByServer(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	s, err := c.NewSession(t.Context(), 300*time.Millisecond, "test")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	f.mu.Lock()
	delete(f.sessions, s.ID())
	f.mu.Unlock()
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed")
	}
	if err := s.Err(); !errors.Is(err, ErrSessionExpired) || errors.Is(err, ErrSessionLost) {
		t.Errorf("Err() = %v, want ErrSessionExpired from the server", err)
	}
}

func TestSessionClose(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	s, err := c.NewSession(t.Context(), time.Second, "test")
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done open after Close")
	}
	if !errors.Is(s.Err(), context.Canceled) {
		t.Errorf("Err() = %v, want context.Canceled", s.Err())
	}
	f.mu.Lock()
	live := f.sessions[s.ID()]
	f.mu.Unlock()
	if live {
		t.Error("session still live on the server after Close")
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Add(t.Context(), []byte("k"), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Add on a closed session = %v, want ErrClosed", err)
	}
}

func TestClientCloseClosesOwnSession(t *testing.T) {
	f := newFake(t, "a")
	c, err := New(Config{Endpoints: []string{"a"}, Dialer: f.dial})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Add(t.Context(), []byte("k"), 1); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.sessions); n != 0 {
		t.Errorf("%d sessions live after Close, want 0: %v", n, fmt.Sprint(f.sessions))
	}
}

// With Config.UnreachableTimeout, a request none of whose endpoints accepts
// a connection ends early, names them, and says nothing was applied, on
// every retry path: reads, writes under a session, and once-only calls.
func TestUnreachableEndsEarly(t *testing.T) {
	f := newFake(t)
	c, err := New(Config{Endpoints: []string{"nowhere", "neither"}, Dialer: f.dial, UnreachableTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	calls := map[string]func(ctx context.Context) error{
		"Get":          func(ctx context.Context) error { _, err := c.Get(ctx, []byte("k")); return err },
		"Add":          func(ctx context.Context) error { _, err := c.Add(ctx, []byte("k"), 1); return err },
		"RemoveMember": func(ctx context.Context) error { _, err := c.RemoveMember(ctx, "n9"); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			err := call(ctx)
			if ctx.Err() != nil {
				t.Fatalf("%s returned only when its context ended (%v)", name, err)
			}
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrIndeterminate) {
				t.Fatalf("%s = %v, want ErrUnavailable (and not ErrIndeterminate)", name, err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Msg != "kvd: unavailable: no endpoint accepts a connection (tried nowhere, neither)" {
				t.Errorf("%s: Msg = %q, want it to name both endpoints", name, e.Msg)
			}
		})
	}

	// Status of one member gives up on that member alone.
	c2, err := New(Config{Endpoints: []string{"nowhere"}, Dialer: f.dial, UnreachableTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c2.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := c2.Status(ctx, "elsewhere"); !errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
		t.Errorf("Status(elsewhere) = %v (context err %v), want ErrUnavailable before the context ends", err, ctx.Err())
	}
}

// A member that answers, even "no leader", keeps the request retrying
// until its context ends: that is an election, not a cluster that is down.
// And a member that is down does not stop the others from serving.
func TestUnreachableLeavesElectionsAndFailoverAlone(t *testing.T) {
	f := newFake(t, "a")
	f.onAdd = func(node string, n int, req *kvpb.AddRequest) error { return notLeader("") }
	c, err := New(Config{Endpoints: []string{"nowhere", "a"}, Dialer: f.dial, AttemptTimeout: 200 * time.Millisecond, UnreachableTimeout: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := c.Add(ctx, []byte("k"), 1); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add during an election = %v, want ErrUnavailable after the context's deadline", err)
	}

	f.onAdd = nil
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		resp, err := c.Add(ctx, []byte("k"), 1)
		if err != nil {
			t.Fatalf("Add #%d with one member down = %v, want it applied by the other", i, err)
		}
		if resp.GetValue() != int64(i+1) {
			t.Errorf("Add #%d = %d, want %d", i, resp.GetValue(), i+1)
		}
	}
}

// TestDiscoverySkipsStateHash: looking for the leader asks a member's
// Status without the state hash, which would make the member encode and
// hash its whole state.
func TestDiscoverySkipsStateHash(t *testing.T) {
	f := newFake(t, "a")
	c := f.client(t, "a")
	if _, err := c.Add(context.Background(), []byte("k"), 1); err != nil {
		t.Fatalf("Add: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var got []*kvpb.StatusRequest
	for time.Now().Before(deadline) {
		f.mu.Lock()
		got = append([]*kvpb.StatusRequest(nil), f.statuses...)
		f.mu.Unlock()
		if len(got) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(got) == 0 {
		t.Fatal("no Status request within 10 s of a request with no known leader")
	}
	for i, req := range got {
		if !req.SkipStateHash {
			t.Errorf("Status request %d asks for the state hash", i)
		}
	}
}
