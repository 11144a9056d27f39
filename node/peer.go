package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// The peer port carries two protocols between members: Raft's own stream
// protocol and the Internal gRPC service (forwarded proposals, read
// indexes, membership calls). The dialing side writes one byte after the
// connection is set up (after the TLS handshake when peer TLS is on) that
// says which; the accepting side reads it and hands the connection to Raft
// or to the gRPC server (rqlite's mux is the model). A connection that sends
// anything else is closed: a raw Raft RPC from an outside process starts
// with a Raft message type, never with a header byte.
const (
	peerHeaderRaft byte = 0xd1
	peerHeaderGRPC byte = 0xd2

	// peerHandshakeTimeout bounds the TLS handshake and the header byte of
	// an accepted connection, so a peer that connects and says nothing
	// holds nothing for long.
	peerHandshakeTimeout = 10 * time.Second
)

// peerMux accepts on the peer listener and routes each connection to the
// Raft or gRPC sub-listener by its header byte.
type peerMux struct {
	lis  net.Listener
	tls  func() *tls.Config // nil: plaintext
	log  func(msg string, args ...any)
	raft *subListener
	grpc *subListener

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

func newPeerMux(lis net.Listener, tlsConf func() *tls.Config, log func(string, ...any)) *peerMux {
	m := &peerMux{lis: lis, tls: tlsConf, log: log, done: make(chan struct{})}
	m.raft = &subListener{mux: m, conns: make(chan net.Conn)}
	m.grpc = &subListener{mux: m, conns: make(chan net.Conn)}
	return m
}

// serve accepts until the listener is closed.
func (m *peerMux) serve() {
	var backoff time.Duration
	for {
		c, err := m.lis.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: wait, then go on.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			m.log("peer listener stopped", "err", err)
			return
		}
		backoff = 0
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(c)
		}()
	}
}

// route runs the TLS handshake (verifying the peer's member certificate),
// reads the header byte and hands the connection on.
func (m *peerMux) route(c net.Conn) {
	c.SetDeadline(time.Now().Add(peerHandshakeTimeout))
	if m.tls != nil {
		tc := tls.Server(c, m.tls())
		if err := tc.Handshake(); err != nil {
			m.log("peer connection refused: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		c = tc
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	var to *subListener
	switch b[0] {
	case peerHeaderRaft:
		to = m.raft
	case peerHeaderGRPC:
		to = m.grpc
	default:
		m.log("peer connection refused: unknown protocol", "remote", c.RemoteAddr().String(), "first_byte", b[0])
		c.Close()
		return
	}
	select {
	case to.conns <- c:
	case <-m.done:
		c.Close()
	}
}

func (m *peerMux) close() {
	m.closeOnce.Do(func() {
		close(m.done)
		m.lis.Close()
	})
	m.wg.Wait()
}

// subListener is the net.Listener one protocol of the peer port sees.
type subListener struct {
	mux   *peerMux
	conns chan net.Conn
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.mux.done:
		return nil, net.ErrClosed
	}
}

// Close closes the whole mux: both protocols stop together.
func (l *subListener) Close() error {
	l.mux.closeOnce.Do(func() {
		close(l.mux.done)
		l.mux.lis.Close()
	})
	return nil
}

func (l *subListener) Addr() net.Addr { return l.mux.lis.Addr() }

// peerDialer opens peer connections: TCP, then TLS when configured, then the
// header byte.
type peerDialer struct {
	tls  func() *tls.Config // nil: plaintext
	dial func(ctx context.Context, addr string) (net.Conn, error)
	// direct: the far side serves gRPC without a mux (in-process tests'
	// PeerListener), so no header byte.
	direct bool
}

func (d *peerDialer) open(ctx context.Context, addr string, header byte) (net.Conn, error) {
	dial := d.dial
	if dial == nil {
		var nd net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return nd.DialContext(ctx, "tcp", addr) }
	}
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if d.tls != nil {
		tc := tls.Client(c, d.tls())
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("peer %s: TLS handshake: %w", addr, err)
		}
		c = tc
	}
	if !d.direct {
		if _, err := c.Write([]byte{header}); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// raftLayer is Raft's raft.StreamLayer over the peer mux.
type raftLayer struct {
	*subListener
	advertise net.Addr
	dialer    *peerDialer
}

func (l *raftLayer) Addr() net.Addr { return l.advertise }

func (l *raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.dialer.open(ctx, string(address), peerHeaderRaft)
}

// peerPool keeps one gRPC connection per peer address, for the Internal
// service on the peer port.
type peerPool struct {
	dialer *peerDialer
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
}

func newPeerPool(d *peerDialer) *peerPool {
	return &peerPool{dialer: d, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerPool) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return nil, ErrStopped
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	// TLS, when on, is set up by the dialer (the header byte follows the
	// handshake), so gRPC itself sees a ready connection.
	c, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return p.dialer.open(ctx, addr, peerHeaderGRPC)
		}),
		grpc.WithInitialWindowSize(FlowWindow),
		grpc.WithInitialConnWindowSize(FlowConnWindow),
		grpc.WithDefaultCallOptions(kvpb.CallCodec()),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to peer %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerPool) close() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// gRPC flow-control windows of this node's connections, as receiver (the
// servers and the peer pool). Giving gRPC fixed windows turns off its
// bandwidth-delay probing, which answers received data with a PING: on a
// request/response exchange that is an extra round of packets and wake-ups
// per call. On loopback, 1-client puts went from 566 to 679 req/s and
// linearizable gets from 1,626 to 1,999 (medians of 5 interleaved runs), and
// kvctl's CPU per put fell by ~40%. 1 MiB per stream is below the request
// limit's default (1.5 MiB), so the largest request takes one window update.
const (
	FlowWindow     = 1 << 20
	FlowConnWindow = 4 << 20
)

// peerAddr is the address to dial for member name: the test override when
// one is set, else its address in the Raft configuration.
func (n *Node) peerAddr(name string, configured raft.ServerAddress) string {
	if a, ok := n.cfg.TestPeerDialAddrs[name]; ok {
		return a
	}
	return string(configured)
}

// leaderConn returns a connection to the leader's peer port, or isSelf when
// this node leads.
func (n *Node) leaderConn(ctx context.Context) (kvpb.InternalClient, bool, error) {
	name, err := n.awaitLeader(ctx)
	if err != nil {
		return nil, false, err
	}
	if name == n.cfg.Name {
		return nil, true, nil
	}
	addr, id := n.raft.LeaderWithID()
	if string(id) != name || addr == "" {
		return nil, false, errNotLeader
	}
	conn, err := n.peers.get(n.peerAddr(name, addr))
	if err != nil {
		return nil, false, errNotLeader
	}
	return kvpb.NewInternalClient(conn), false, nil
}

// internalService is served on the peer port only: what members ask of the
// leader.
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
		return nil, peerStatus(Invalid("command", 0, "command: an op is required"))
	}
	switch cmd.GetOp().(type) {
	case *kvpb.Command_Tick, *kvpb.Command_Recover:
		return nil, peerStatus(Invalid("command", 0, "command: tick and recover are proposed by the leader only"))
	}
	res, at, err := n.proposeHere(ctx, cmd)
	if err != nil {
		return nil, peerStatus(err)
	}
	return &kvpb.ProposeResponse{Result: res, Index: at.Index, LogTime: at.LogTime}, nil
}

// ReadIndex confirms leadership for a follower's linearizable read.
func (s *internalService) ReadIndex(ctx context.Context, _ *kvpb.ReadIndexRequest) (*kvpb.ReadIndexResponse, error) {
	index, now, term, err := s.n.readIndexHere(ctx)
	if err != nil {
		return nil, peerStatus(err)
	}
	return &kvpb.ReadIndexResponse{Index: index, Now: now, Term: term}, nil
}

func (s *internalService) AddMember(ctx context.Context, req *kvpb.AddMemberRequest) (*kvpb.AddMemberResponse, error) {
	index, err := s.n.addMemberHere(ctx, req)
	if err != nil {
		return nil, peerStatus(err)
	}
	return &kvpb.AddMemberResponse{Header: s.n.WriteHeader(index, 0)}, nil
}

func (s *internalService) RemoveMember(ctx context.Context, req *kvpb.RemoveMemberRequest) (*kvpb.RemoveMemberResponse, error) {
	index, err := s.n.removeMemberHere(ctx, req.GetName())
	if err != nil {
		return nil, peerStatus(err)
	}
	return &kvpb.RemoveMemberResponse{Header: s.n.WriteHeader(index, 0)}, nil
}

func (s *internalService) TransferLeader(ctx context.Context, req *kvpb.TransferLeaderRequest) (*kvpb.TransferLeaderResponse, error) {
	name, err := s.n.transferLeaderHere(ctx, req.GetName())
	if err != nil {
		return nil, peerStatus(err)
	}
	return &kvpb.TransferLeaderResponse{Header: s.n.LocalHeader(), LeaderName: name}, nil
}

// mainLoopHeartbeats is the peer port's Raft transport with Raft's
// heartbeat fast path turned off: a heartbeat goes to Consumer like every
// other RPC, so Raft's main goroutine handles it.
//
// Why: on the fast path (hashicorp/raft up to at least v1.7.3, upstream
// issue #695) the transport goroutine runs appendEntries, and a heartbeat
// of a newer term changes currentTerm and the state to follower while the
// main goroutine may still be in its leader loop. A deposed leader that
// resumes (after a pause, a partition) with proposals queued then writes
// them under the NEW term at indexes where the new leader has other
// entries. The follower's conflict check compares terms only, keeps its
// own entries, and applies them once the new leader's commit index passes
// them: its state diverges for good (jepsen-lite: a leader paused 2.5s,
// then one member answered a retried write from its dedup table).
//
// The cost: while the main goroutine is busy (a slow log write) a
// heartbeat waits behind it. AppendEntries already do, and a follower that
// times out meanwhile only asks for a pre-vote, which members with a
// leader refuse.
type mainLoopHeartbeats struct{ *raft.NetworkTransport }

// SetHeartbeatHandler ignores the handler Raft offers (see mainLoopHeartbeats).
func (mainLoopHeartbeats) SetHeartbeatHandler(func(raft.RPC)) {}

// Raft finds pre-vote and Close by these interfaces: the wrapper must keep them.
var (
	_ raft.WithPreVote = mainLoopHeartbeats{}
	_ raft.WithClose   = mainLoopHeartbeats{}
)
