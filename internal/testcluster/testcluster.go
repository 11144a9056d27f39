// Package testcluster starts in-process kvd clusters for tests: nodes on
// raft.NewInmemTransport (connected all-to-all), in-memory raft stores, and
// gRPC (the client port's api server and the peer port's Internal service)
// over bufconn listeners, with short timeouts.
//
//	c := testcluster.Start(t, 3)
//	cl, err := client.New(client.Config{Endpoints: c.Endpoints, Dialer: c.Dialer})
//
// Endpoints look like TCP addresses ("127.0.10.1:2379") but only Dialer can
// reach them. Nodes are shut down by t.Cleanup. The API is stable: other
// packages' tests depend on it.
package testcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kvdproject/kvd/api"
	"github.com/kvdproject/kvd/node"
)

// Cluster is a running in-process cluster.
type Cluster struct {
	// Endpoints are the client addresses of the nodes, by index (including
	// nodes added later with AddNode).
	Endpoints []string
	// Dialer reaches Endpoints (bufconn); use it in client.Config.Dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	t       testing.TB
	mutate  func(i int, cfg *node.Config)
	mu      sync.Mutex
	members []*member
	lis     map[string]*bufconn.Listener
}

type member struct {
	name    string
	peer    raft.ServerAddress
	client  string
	trans   *raft.InmemTransport
	node    *node.Node
	srv     *api.Server
	conn    *grpc.ClientConn
	stopped bool
}

// Start starts n voting nodes named n1..nN bootstrapped as one cluster. It
// returns once every node serves gRPC; it does not wait for a leader (see
// WaitLeader).
func Start(t testing.TB, n int) *Cluster {
	return StartWithConfig(t, n, nil)
}

// StartWithConfig is Start with a hook that may change each node's Config
// (i is the node's index) before it starts.
func StartWithConfig(t testing.TB, n int, mutate func(i int, cfg *node.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, mutate: mutate, lis: map[string]*bufconn.Listener{}}
	c.Dialer = c.dial
	var initial []node.Peer
	for i := 0; i < n; i++ {
		m := c.newMember(i)
		initial = append(initial, node.Peer{Name: m.name, PeerAddr: string(m.peer)})
	}
	t.Cleanup(c.shutdownAll)
	for i := 0; i < n; i++ {
		c.startMember(i, initial, false)
	}
	return c
}

// DefaultConfig is the configuration testcluster gives node i (before the
// StartWithConfig hook): short timeouts, in-memory stores.
func DefaultConfig(name string) node.Config {
	return node.Config{
		Name:             name,
		InMemoryStore:    true,
		HeartbeatTimeout: 50 * time.Millisecond,
		ElectionTimeout:  50 * time.Millisecond,
		LeaderLease:      50 * time.Millisecond,
		TickInterval:     20 * time.Millisecond,
		Logger:           testLogger(),
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("KVD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newMember allocates addresses and a transport for node i, connecting it
// to every existing member.
func (c *Cluster) newMember(i int) *member {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := &member{
		name:   fmt.Sprintf("n%d", i+1),
		peer:   raft.ServerAddress(fmt.Sprintf("127.0.20.%d:2380", i+1)),
		client: fmt.Sprintf("127.0.10.%d:2379", i+1),
	}
	_, m.trans = raft.NewInmemTransport(m.peer)
	for _, o := range c.members {
		m.trans.Connect(o.peer, o.trans)
		o.trans.Connect(m.peer, m.trans)
	}
	c.members = append(c.members, m)
	c.Endpoints = append(c.Endpoints, m.client)
	return m
}

func (c *Cluster) startMember(i int, initial []node.Peer, join bool) {
	c.t.Helper()
	c.mu.Lock()
	m := c.members[i]
	lis := bufconn.Listen(1 << 20)
	peerLis := bufconn.Listen(1 << 20)
	c.lis[m.client] = lis
	c.lis[string(m.peer)] = peerLis
	c.mu.Unlock()

	cfg := DefaultConfig(m.name)
	cfg.ClientAddr = m.client
	cfg.PeerAddr = string(m.peer)
	cfg.Transport = m.trans
	cfg.PeerListener = peerLis
	cfg.Dialer = c.dial
	cfg.InitialCluster = initial
	cfg.Join = join
	if c.mutate != nil {
		c.mutate(i, &cfg)
	}
	nd, err := node.New(cfg)
	if err != nil {
		c.t.Fatalf("testcluster: node %s: %v", m.name, err)
	}
	if err := nd.Start(); err != nil {
		c.t.Fatalf("testcluster: start node %s: %v", m.name, err)
	}
	// The cheapest bcrypt cost: tests sign in often, and under -race a
	// default-cost hash takes most of a second.
	srv := api.New(nd, api.Config{Logger: cfg.Logger, BcryptCost: bcrypt.MinCost})
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///"+m.client,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(c.dial))
	if err != nil {
		c.t.Fatalf("testcluster: connect to %s: %v", m.name, err)
	}
	c.mu.Lock()
	m.node, m.srv, m.conn = nd, srv, conn
	c.mu.Unlock()
}

func (c *Cluster) dial(ctx context.Context, addr string) (net.Conn, error) {
	c.mu.Lock()
	lis, ok := c.lis[addr]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("testcluster: no node at %s", addr)
	}
	return lis.DialContext(ctx)
}

// N is the number of nodes started so far (stopped ones included).
func (c *Cluster) N() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.members)
}

// Node returns node i.
func (c *Cluster) Node(i int) *node.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].node
}

// Name returns node i's name ("n1" for 0).
func (c *Cluster) Name(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].name
}

// Server returns node i's api server.
func (c *Cluster) Server(i int) *api.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].srv
}

// Conn returns a gRPC connection to node i (for raw kvpb clients).
func (c *Cluster) Conn(i int) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].conn
}

// Leader returns the index of the running node that is leader and has
// taken office (accepts proposals), or -1.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if !m.stopped && m.node != nil && m.node.IsLeader() {
			return i
		}
	}
	return -1
}

// WaitLeader waits until some running node leads and accepts proposals,
// and every running member (of the leader's Raft configuration) knows the
// leader's name and client address and every running member's client
// address. It returns the leader's index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if i := c.Leader(); i >= 0 && c.settled(c.Name(i)) {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("testcluster: no leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// settled reports whether every running node of the leader's configuration
// names leader with its client address and has every such node's client
// address.
func (c *Cluster) settled(leader string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	inConf := map[string]bool{}
	for _, m := range c.members {
		if m.name == leader && m.node != nil {
			f := m.node.Raft().GetConfiguration()
			if f.Error() != nil {
				return false
			}
			for _, s := range f.Configuration().Servers {
				inConf[string(s.ID)] = true
			}
		}
	}
	want := map[string]string{}
	for _, m := range c.members {
		if !m.stopped && m.node != nil && inConf[m.name] {
			want[m.name] = m.client
		}
	}
	for _, m := range c.members {
		if m.stopped || m.node == nil || !inConf[m.name] {
			continue
		}
		if name, addr := m.node.Leader(); name != leader || addr == "" {
			return false
		}
		have := map[string]string{}
		for _, mm := range m.node.FSM().Members() {
			have[mm.GetName()] = mm.GetClientAddr()
		}
		for name, addr := range want {
			if have[name] != addr {
				return false
			}
		}
	}
	return true
}

// MustLeader is WaitLeader with a 10s limit that fails the test.
func (c *Cluster) MustLeader() int {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	i, err := c.WaitLeader(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return i
}

// Stop shuts node i down gracefully. Its state is lost (stores are in memory).
func (c *Cluster) Stop(i int) {
	c.stop(i, 5*time.Second)
}

// Kill cuts node i off from its peers at once and stops it without waiting
// for in-flight requests.
func (c *Cluster) Kill(i int) {
	c.Disconnect(i)
	c.stop(i, 0)
}

func (c *Cluster) stop(i int, grace time.Duration) {
	c.mu.Lock()
	m := c.members[i]
	if m.stopped || m.node == nil {
		c.mu.Unlock()
		return
	}
	m.stopped = true
	lis, peerLis := c.lis[m.client], c.lis[string(m.peer)]
	delete(c.lis, m.client)
	delete(c.lis, string(m.peer))
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	m.srv.Stop(ctx)
	if err := m.node.Shutdown(ctx); err != nil {
		c.t.Logf("testcluster: shutdown %s: %v", m.name, err)
	}
	m.conn.Close()
	for _, l := range []*bufconn.Listener{lis, peerLis} {
		if l != nil {
			l.Close()
		}
	}
}

// Disconnect cuts node i's Raft links in both directions (a partition);
// its client endpoint and its Internal service stay reachable.
func (c *Cluster) Disconnect(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[i]
	m.trans.DisconnectAll()
	for _, o := range c.members {
		if o != m {
			o.trans.Disconnect(m.peer)
		}
	}
}

// Reconnect restores node i's Raft links.
func (c *Cluster) Reconnect(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[i]
	for _, o := range c.members {
		if o != m {
			m.trans.Connect(o.peer, o.trans)
			o.trans.Connect(m.peer, m.trans)
		}
	}
}

// AddNode starts a new empty node with Join set (not yet a member) and
// returns its index. Add it with Cluster.AddMember (name Name(i), peer
// address PeerAddr(i)).
func (c *Cluster) AddNode() int {
	c.t.Helper()
	c.newMember(c.N())
	i := c.N() - 1
	c.startMember(i, nil, true)
	return i
}

// PeerAddr returns node i's Raft address.
func (c *Cluster) PeerAddr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.members[i].peer)
}

func (c *Cluster) shutdownAll() {
	var wg sync.WaitGroup
	for i := 0; i < c.N(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop(i, 2*time.Second)
		}()
	}
	wg.Wait()
}
