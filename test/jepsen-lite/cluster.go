package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/internal/tmpfs"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Harness is a kvd cluster of real processes whose every network path runs
// through a Proxy the harness controls:
//
//   - links[i][j] carries node i's Raft connections to node j (kvd's
//     --test-peer-dial names it for peer j on node i);
//   - clientProxy[i] is node i's advertised client address: clients, and
//     other nodes forwarding to node i, reach it through it.
//
// Every port is fixed before the first start, so a node restarts on the
// same addresses.
//
// A node that cannot be started, that exits without being killed by the
// harness, or that does not answer within startTimeout of a WaitUp fails
// the harness: Failed is closed and Err says why; the run ends.
type Harness struct {
	pc          *proccluster.Cluster
	n           int
	clientProxy []*Proxy
	links       [][]*Proxy
	logf        func(string, ...any)
	// disks[i] is node i's own small filesystem (its data dir is
	// disks[i]/data), nil without HarnessConfig.DiskBytes.
	disks []string

	mu      sync.Mutex
	offsets []time.Duration // --test-clock-offset per node
	base    [][]string      // args without the clock offset

	failMu    sync.Mutex
	err       error         // the first failure
	failed    chan struct{} // closed when err is set
	closed    chan struct{} // closed by Close: stops watch
	closeOnce sync.Once
}

// startTimeout bounds how long WaitUp waits for a node to answer.
const startTimeout = 20 * time.Second

// HarnessConfig shapes a Harness.
type HarnessConfig struct {
	Kvd   string // kvd binary
	Dir   string // data dirs and logs
	Nodes int
	// Extra arguments for every node.
	ExtraArgs []string
	// Env is added to every node's environment.
	Env []string
	// Certs, when set, serve TLS on every link: the client port with each
	// node's certificate, mutual TLS between members (see --tls).
	Certs *pki.DevFiles
	Logf  func(string, ...any)
	// DiskBytes, when > 0, puts each node's data dir on a tmpfs of this
	// size of its own (the disk-full fault fills it). NewHarness fails with
	// an error matching tmpfs.ErrNotPermitted where mounting is refused.
	DiskBytes int64
}

// NewHarness allocates ports, starts the proxies and defines the nodes; it
// does not start them.
func NewHarness(cfg HarnessConfig) (*Harness, error) {
	n := cfg.Nodes
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := proccluster.FreePortList(3*n + n*(n-1))
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	h := &Harness{n: n, logf: cfg.Logf, offsets: make([]time.Duration, n),
		failed: make(chan struct{}), closed: make(chan struct{})}
	h.pc = proccluster.NewCluster(cfg.Kvd, cfg.Dir, cfg.Logf)
	h.pc.Certs = cfg.Certs // the harness's own Status calls speak TLS too
	if cfg.DiskBytes > 0 {
		for i := 0; i < n; i++ {
			mnt := filepath.Join(cfg.Dir, nodeName(i)+"-disk")
			err := os.MkdirAll(mnt, 0o755)
			if err == nil {
				err = tmpfs.Mount(mnt, cfg.DiskBytes)
			}
			if err != nil {
				h.Close()
				return nil, err
			}
			h.disks = append(h.disks, mnt)
		}
	}
	realClient := make([]string, n)
	realPeer := make([]string, n)
	for i := 0; i < n; i++ {
		realClient[i] = addr(ports[3*i])
		realPeer[i] = addr(ports[3*i+1])
		p, err := NewProxy(fmt.Sprintf("client->%s", nodeName(i)), addr(ports[3*i+2]), realClient[i])
		if err != nil {
			h.Close()
			return nil, err
		}
		h.clientProxy = append(h.clientProxy, p)
	}
	next := 3 * n
	h.links = make([][]*Proxy, n)
	for i := 0; i < n; i++ {
		h.links[i] = make([]*Proxy, n)
		for j := 0; j < n; j++ {
			if i == j {
				continue
			}
			p, err := NewProxy(fmt.Sprintf("%s->%s", nodeName(i), nodeName(j)), addr(ports[next]), realPeer[j])
			next++
			if err != nil {
				h.Close()
				return nil, err
			}
			h.links[i][j] = p
		}
	}
	var initial []string
	for i := 0; i < n; i++ {
		initial = append(initial, nodeName(i)+"="+realPeer[i])
	}
	for i := 0; i < n; i++ {
		// The node's own name maps to its own address: raft asks the
		// address provider for the local ID on every AppendEntries it
		// sends (EncodePeer), and kvd logs a warning for each ID the
		// override leaves out.
		dial := []string{nodeName(i) + "=" + realPeer[i]}
		for j := 0; j < n; j++ {
			if j != i {
				dial = append(dial, nodeName(j)+"="+h.links[i][j].Listen)
			}
		}
		dataDir := filepath.Join(cfg.Dir, nodeName(i))
		if h.disks != nil {
			dataDir = filepath.Join(h.disks[i], "data")
		}
		args := append([]string{
			"--name", nodeName(i),
			"--data-dir", dataDir,
			"--client-addr", realClient[i],
			"--advertise-client-addr", h.clientProxy[i].Listen,
			"--peer-addr", realPeer[i],
			"--initial-cluster", strings.Join(initial, ","),
			"--test-peer-dial", strings.Join(dial, ","),
		}, cfg.ExtraArgs...)
		if cfg.Certs != nil {
			args = append(args, proccluster.TLSArgs(cfg.Certs, nodeName(i), false)...)
		}
		h.base = append(h.base, args)
		nd := h.pc.AddNode(nodeName(i), realClient[i], realPeer[i], dataDir, append([]string(nil), args...))
		nd.Env = cfg.Env
	}
	go h.watch()
	return h, nil
}

// watch fails the harness when a node's process exits by itself, until
// Close.
func (h *Harness) watch() {
	select {
	case <-h.pc.Failed():
		h.fail(h.pc.Err())
	case <-h.closed:
	}
}

// fail records the first failure and closes Failed.
func (h *Harness) fail(err error) {
	h.failMu.Lock()
	defer h.failMu.Unlock()
	if h.err == nil {
		h.err = err
		close(h.failed)
	}
}

// Failed is closed when the harness fails: a node could not be started,
// exited without being killed, or did not answer in WaitUp.
func (h *Harness) Failed() <-chan struct{} { return h.failed }

// Err is the first failure (see Failed), nil while there is none. A node's
// failure is a *proccluster.NodeError: name, exit status, end of its log.
func (h *Harness) Err() error {
	h.failMu.Lock()
	defer h.failMu.Unlock()
	return h.err
}

// WaitUp waits until every node's process answers a Status request, at
// most startTimeout in all. A node that is not running, exits by itself or
// does not answer in time fails the harness; WaitUp returns the harness's
// first failure, this one or an earlier one, and nil when every node
// answered.
func (h *Harness) WaitUp() error {
	if err := h.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for i := 0; i < h.n; i++ {
		err := h.Node(i).WaitReady(ctx)
		if errors.Is(err, proccluster.ErrStopped) {
			err = fmt.Errorf("%s: %w", nodeName(i), err)
		}
		if err != nil {
			h.fail(err)
			break
		}
	}
	return h.Err()
}

func nodeName(i int) string { return fmt.Sprintf("n%d", i+1) }

// Node is node i's process.
func (h *Harness) Node(i int) *proccluster.Node { return h.pc.Nodes[i] }

// Endpoints are the client proxies' addresses (what workload clients use).
func (h *Harness) Endpoints() []string {
	var eps []string
	for _, p := range h.clientProxy {
		eps = append(eps, p.Listen)
	}
	return eps
}

// DirectEndpoints are the nodes' own client addresses (harness probes).
func (h *Harness) DirectEndpoints() []string { return h.pc.Endpoints() }

// StartAll starts every node that is not running.
func (h *Harness) StartAll() error {
	for i := 0; i < h.n; i++ {
		if !h.Node(i).Running() {
			if err := h.Start(i); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start starts node i with its current clock offset; it does not wait for
// the node to answer (WaitUp does). A node that cannot be started fails the
// harness.
func (h *Harness) Start(i int) error {
	h.mu.Lock()
	args := append([]string(nil), h.base[i]...)
	if off := h.offsets[i]; off != 0 {
		args = append(args, "--test-clock-offset", off.String())
	}
	h.mu.Unlock()
	nd := h.Node(i)
	nd.Args = args
	if err := nd.Start(); err != nil {
		err = fmt.Errorf("start %s: %w", nodeName(i), err)
		h.fail(err)
		return err
	}
	return nil
}

// SetClockOffset sets node i's clock offset for its next start.
func (h *Harness) SetClockOffset(i int, d time.Duration) {
	h.mu.Lock()
	h.offsets[i] = d
	h.mu.Unlock()
}

// Status asks node i directly (no proxy).
func (h *Harness) Status(ctx context.Context, i int) (*kvpb.StatusResponse, error) {
	if !h.Node(i).Running() {
		return nil, errors.New("not running")
	}
	return h.Node(i).Status(ctx)
}

// StatusNoHash asks node i directly for its status without the state hash
// (cheap enough to ask every second).
func (h *Harness) StatusNoHash(ctx context.Context, i int) (*kvpb.StatusResponse, error) {
	nd := h.Node(i)
	if !nd.Running() {
		return nil, errors.New("not running")
	}
	creds := insecure.NewCredentials()
	if conf := h.pc.ClientTLS(); conf != nil {
		creds = credentials.NewTLS(conf)
	}
	cc, err := grpc.NewClient("passthrough:///"+nd.ClientAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return kvpb.NewClusterClient(cc).Status(ctx, &kvpb.StatusRequest{SkipStateHash: true})
}

// Leader returns the index of the node that reports itself leader and is
// acknowledged by a majority of the running nodes' leader_name; -1 if none.
func (h *Harness) Leader(ctx context.Context) int {
	votes := map[string]int{}
	self := -1
	for i := 0; i < h.n; i++ {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := h.Status(sctx, i)
		cancel()
		if err != nil {
			continue
		}
		if st.GetRole() == "leader" {
			self = i
		}
		if st.GetLeaderName() != "" {
			votes[st.GetLeaderName()]++
		}
	}
	if self >= 0 && votes[nodeName(self)] > h.n/2 {
		return self
	}
	return -1
}

// HealNetwork heals every proxy.
func (h *Harness) HealNetwork() {
	for _, p := range h.clientProxy {
		p.Heal()
	}
	for i := range h.links {
		for _, p := range h.links[i] {
			if p != nil {
				p.Heal()
			}
		}
	}
}

// CutOneWay drops every message from node a to node b: a's requests on the
// a→b connections and a's answers on the b→a connections.
func (h *Harness) CutOneWay(a, b int) {
	h.links[a][b].Blackhole(true, false)
	h.links[b][a].Blackhole(false, true)
}

// Cut drops every message between a and b, both ways.
func (h *Harness) Cut(a, b int) {
	h.CutOneWay(a, b)
	h.CutOneWay(b, a)
}

// Partition cuts every link between the groups (each node belongs to at
// most one group; nodes in no group keep all their links).
func (h *Harness) Partition(groups ...[]int) {
	g := make([]int, h.n)
	for i := range g {
		g[i] = -1
	}
	for k, grp := range groups {
		for _, i := range grp {
			g[i] = k
		}
	}
	for a := 0; a < h.n; a++ {
		for b := a + 1; b < h.n; b++ {
			if g[a] >= 0 && g[b] >= 0 && g[a] != g[b] {
				h.Cut(a, b)
			}
		}
	}
}

// DelayLinks delays every Raft link by d.
func (h *Harness) DelayLinks(d time.Duration) {
	for i := range h.links {
		for _, p := range h.links[i] {
			if p != nil {
				p.SetDelay(d)
			}
		}
	}
}

// ResetLinks closes every open Raft connection; returns how many.
func (h *Harness) ResetLinks() int {
	n := 0
	for i := range h.links {
		for _, p := range h.links[i] {
			if p != nil {
				n += p.Reset()
			}
		}
	}
	return n
}

// CutClients blackholes node i's client proxy (clients and forwarding
// nodes cannot reach it).
func (h *Harness) CutClients(i int) { h.clientProxy[i].Blackhole(true, true) }

// KillAll kills every node (SIGKILL), concurrently.
func (h *Harness) KillAll() {
	var wg sync.WaitGroup
	for i := 0; i < h.n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h.Node(i).Kill()
		}(i)
	}
	wg.Wait()
}

// FillDisk fills node i's own filesystem (outside its data dir) until
// nothing is free, and returns how many bytes that took.
func (h *Harness) FillDisk(i int) (int64, error) {
	if h.disks == nil {
		return 0, errors.New("no filesystem of its own: the harness runs without DiskBytes")
	}
	return tmpfs.Fill(filepath.Join(h.disks[i], "filler"), 0)
}

// FreeDisk gives back what FillDisk took.
func (h *Harness) FreeDisk(i int) error {
	if h.disks == nil {
		return nil
	}
	err := os.Remove(filepath.Join(h.disks[i], "filler"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// HasDisks reports whether every node has a filesystem of its own.
func (h *Harness) HasDisks() bool { return h.disks != nil }

// Close kills the nodes, closes the proxies and unmounts the nodes' own
// filesystems.
func (h *Harness) Close() {
	h.closeOnce.Do(func() { close(h.closed) })
	if h.pc != nil {
		h.KillAll()
	}
	for _, d := range h.disks {
		if err := tmpfs.Unmount(d); err != nil && h.logf != nil {
			h.logf("unmount %s: %v", d, err)
		}
	}
	h.disks = nil
	for _, p := range h.clientProxy {
		p.Close()
	}
	for i := range h.links {
		for _, p := range h.links[i] {
			if p != nil {
				p.Close()
			}
		}
	}
}

// DumpLogs writes the tail of every node's log through logf.
func (h *Harness) DumpLogs() { h.pc.DumpLogs() }
