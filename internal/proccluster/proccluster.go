// Package proccluster starts real kvd processes on 127.0.0.1 for end-to-end
// and fault tests: each node is its own OS process with its own data dir,
// talking Raft and gRPC over real TCP. Nodes can be killed (SIGKILL), stopped
// (SIGTERM), paused (SIGSTOP) and restarted on their data.
//
// A process that ends without being asked to (a panic, a bad flag, a data
// dir it cannot open) is a failure of the cluster: Cluster.Failed is closed
// and Cluster.Err names the node, its exit status and the end of its log.
// Node.WaitReady bounds the wait for a started node to answer.
package proccluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/proto/kvpb"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds kvd and kvctl once per test process and returns their paths.
func Binaries(t testing.TB) (kvd, kvctl string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "kvd-bin-")
		if buildErr != nil {
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		for _, p := range []string{"kvd", "kvctl"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, p), "./cmd/"+p)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build ./cmd/%s: %v\n%s", p, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return filepath.Join(buildDir, "kvd"), filepath.Join(buildDir, "kvctl")
}

// moduleRoot is the directory of the kvd module: the main module when run
// from it, or the one test/jepsen-lite's module replaces it with.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kvdproject/kvd").Output()
	if err != nil {
		return "", fmt.Errorf("go list -m github.com/kvdproject/kvd (run inside the kvd module or test/jepsen-lite): %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", errors.New("go list -m github.com/kvdproject/kvd: no directory (not inside the kvd module)")
	}
	return dir, nil
}

// Options shape a cluster.
type Options struct {
	// ExtraArgs are added to every node's command line.
	ExtraArgs []string
	// TLS: certificates from pki.DevCerts under Dir/certs (a CA, node
	// certificates n1..nN, a client certificate for user "root"), mutual
	// TLS between members, and TLS on the client port.
	TLS bool
	// ClientCertAuth (with TLS): the client port requires a client
	// certificate.
	ClientCertAuth bool
	// Kvd runs this kvd binary instead of one built from ./cmd/kvd (to
	// measure another build, e.g. one from before a change).
	Kvd string
	// DataDir, when set, names the data dir of each node (by name, "n1"...),
	// e.g. one on a small filesystem of its own; default Dir/name.
	DataDir func(name string) string
}

var (
	// ErrExited: a node's process ended without being asked to (Kill, Stop).
	ErrExited = errors.New("proccluster: process exited without being asked to")
	// ErrNotReady: a started node did not answer a Status request in time.
	ErrNotReady = errors.New("proccluster: process did not answer after its start")
	// ErrStopped: the node has no process: never started, or killed or
	// stopped on purpose.
	ErrStopped = errors.New("proccluster: node is not running")
)

// logTailLines is how many of its last log lines a NodeError carries.
const logTailLines = 20

// A NodeError is a node whose process failed: it exited without being asked
// to (Err is ErrExited) or did not answer after a start (ErrNotReady).
type NodeError struct {
	Node    string // its name, e.g. "n1"
	Status  string // "exit status 2", "signal: aborted", or why it still runs without answering
	Log     string // its log file
	LogTail string // the last lines of that file
	Err     error  // ErrExited or ErrNotReady
}

func (e *NodeError) Error() string {
	what := "exited without being asked to"
	if errors.Is(e.Err, ErrNotReady) {
		what = "did not answer after its start"
	}
	tail := "\t" + strings.ReplaceAll(e.LogTail, "\n", "\n\t")
	return fmt.Sprintf("kvd %s %s (%s); its log %s ends:\n%s", e.Node, what, e.Status, e.Log, tail)
}

func (e *NodeError) Unwrap() error { return e.Err }

// Cluster is a set of kvd processes.
type Cluster struct {
	t     testing.TB
	Dir   string
	Nodes []*Node
	kvd   string
	logf  func(format string, args ...any) // without t (NewCluster)

	// Certs are the certificate files of a TLS cluster (nil without TLS).
	Certs *pki.DevFiles

	mu     sync.Mutex
	err    error         // the first node that exited without being asked to
	failed chan struct{} // closed when err is set
}

// ClientTLS is a client TLS configuration for a TLS cluster: the CA and the
// "root" client certificate (nil without TLS).
func (c *Cluster) ClientTLS() *tls.Config {
	if c.Certs == nil {
		return nil
	}
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(c.Certs.CACert)
	if err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert, err := tls.LoadX509KeyPair(c.Certs.Client.Cert, c.Certs.Client.Key); err == nil {
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

// dialCreds are the transport credentials for this cluster's client port.
func (c *Cluster) dialCreds() credentials.TransportCredentials {
	if conf := c.ClientTLS(); conf != nil {
		return credentials.NewTLS(conf)
	}
	return insecure.NewCredentials()
}

// TLSArgs are the kvd flags that serve node name with the certificates in
// certs: TLS on the client port (requiring client certificates when
// clientCertAuth) and mutual TLS on the peer port.
func TLSArgs(certs *pki.DevFiles, name string, clientCertAuth bool) []string {
	nf := certs.Nodes[name]
	args := []string{
		"--cert-file", nf.Cert, "--key-file", nf.Key, "--trusted-ca-file", certs.CACert,
		"--peer-cert-file", nf.Cert, "--peer-key-file", nf.Key, "--peer-trusted-ca-file", certs.CACert,
	}
	if clientCertAuth {
		args = append(args, "--client-cert-auth")
	}
	return args
}

// Failed is closed when a node's process first exits without being asked
// to; Err then says which node, how, and how its log ends.
func (c *Cluster) Failed() <-chan struct{} { return c.failed }

// Err is the first node failure (a *NodeError wrapping ErrExited), nil as
// long as every process that ended was asked to.
func (c *Cluster) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Cluster) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.failed)
	}
}

// Node is one kvd process and its fixed addresses and data dir.
type Node struct {
	Name       string
	ClientAddr string
	PeerAddr   string
	DataDir    string
	Args       []string
	// Env is added to the inherited environment of the process (e.g.
	// KVD_TEST_BUG for a kvdbugs build).
	Env []string

	c        *Cluster
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd is reaped
	stopping bool          // cmd was asked to end (Kill, Stop): its exit is no failure
	exitErr  *NodeError    // cmd ended without being asked to
	logFile  *os.File
	starts   int
}

// Start launches n nodes bootstrapped as one cluster and waits for a leader.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	kvd := opts.Kvd
	if kvd == "" {
		kvd, _ = Binaries(t)
	}
	c := &Cluster{t: t, Dir: t.TempDir(), kvd: kvd, failed: make(chan struct{})}
	ports := FreePorts(t, 2*n)
	if opts.TLS {
		var names []string
		for i := 0; i < n; i++ {
			names = append(names, fmt.Sprintf("n%d", i+1))
		}
		certs, err := pki.DevCerts(filepath.Join(c.Dir, "certs"), names, "root")
		if err != nil {
			t.Fatalf("certificates: %v", err)
		}
		c.Certs = certs
	}
	var initial []string
	for i := 0; i < n; i++ {
		nd := &Node{
			Name:       fmt.Sprintf("n%d", i+1),
			ClientAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			PeerAddr:   fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
			c:          c,
		}
		nd.DataDir = filepath.Join(c.Dir, nd.Name)
		if opts.DataDir != nil {
			nd.DataDir = opts.DataDir(nd.Name)
		}
		c.Nodes = append(c.Nodes, nd)
		initial = append(initial, nd.Name+"="+nd.PeerAddr)
	}
	for _, nd := range c.Nodes {
		nd.Args = append([]string{
			"--name", nd.Name,
			"--data-dir", nd.DataDir,
			"--client-addr", nd.ClientAddr,
			"--peer-addr", nd.PeerAddr,
			"--initial-cluster", strings.Join(initial, ","),
		}, opts.ExtraArgs...)
		if c.Certs != nil {
			nd.Args = append(nd.Args, TLSArgs(c.Certs, nd.Name, opts.ClientCertAuth)...)
		}
	}
	t.Cleanup(func() {
		for _, nd := range c.Nodes {
			nd.Kill()
		}
		if t.Failed() {
			c.DumpLogs()
		}
	})
	for _, nd := range c.Nodes {
		if err := nd.Start(); err != nil {
			t.Fatalf("start %s: %v", nd.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatalf("no leader: %v", err)
	}
	return c
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Endpoints are the client addresses of every node.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, nd := range c.Nodes {
		eps = append(eps, nd.ClientAddr)
	}
	return eps
}

// DumpLogs prints the tail of every node's log to the test log.
func (c *Cluster) DumpLogs() {
	for _, nd := range c.Nodes {
		b, err := os.ReadFile(nd.logPath())
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		switch {
		case c.t != nil:
			c.t.Logf("--- %s log (tail)\n%s", nd.Name, strings.Join(lines, "\n"))
		case c.logf != nil:
			c.logf("--- %s log (tail)\n%s", nd.Name, strings.Join(lines, "\n"))
		}
	}
}

func (nd *Node) logPath() string { return filepath.Join(nd.c.Dir, nd.Name+".log") }

// Start runs the node's process (again, on its existing data). It does not
// wait for the process to serve: see WaitReady.
func (nd *Node) Start() error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil && !isClosed(nd.exited) {
		return fmt.Errorf("%s is running", nd.Name)
	}
	f, err := os.OpenFile(nd.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	nd.starts++
	fmt.Fprintf(f, "=== start %d\n", nd.starts)
	cmd := exec.Command(nd.c.kvd, nd.Args...)
	if len(nd.Env) > 0 {
		cmd.Env = append(os.Environ(), nd.Env...)
	}
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	nd.cmd, nd.logFile, nd.exited = cmd, f, make(chan struct{})
	nd.stopping, nd.exitErr = false, nil
	go nd.reap(cmd, nd.exited, f)
	return nil
}

// reap waits for the process to end. An end nobody asked for is recorded on
// the node and fails the cluster.
func (nd *Node) reap(cmd *exec.Cmd, exited chan struct{}, f *os.File) {
	cmd.Wait()
	f.Close()
	nd.mu.Lock()
	// Start replaces cmd only after exited is closed, so stopping is still
	// about this process.
	if !nd.stopping {
		nd.exitErr = nd.failure(ErrExited, cmd.ProcessState.String())
	}
	failed := nd.exitErr
	nd.mu.Unlock()
	if failed != nil {
		nd.c.fail(failed) // before exited: whoever sees the exit sees the failure
	}
	close(exited)
}

// failure describes a failed process with the end of its log.
func (nd *Node) failure(err error, status string) *NodeError {
	return &NodeError{Node: nd.Name, Status: status, Log: nd.logPath(), LogTail: logTail(nd.logPath(), logTailLines), Err: err}
}

// WaitReady polls the node until its process answers a Status request. It
// returns nil once it does; a *NodeError wrapping ErrExited if the process
// ends without being asked to first; ErrStopped if there is no process
// (never started, or killed or stopped on purpose); and a *NodeError
// wrapping ErrNotReady if ctx ends first.
func (nd *Node) WaitReady(ctx context.Context) error {
	var last error
	for {
		nd.mu.Lock()
		cmd, exited, exitErr := nd.cmd, nd.exited, nd.exitErr
		nd.mu.Unlock()
		switch {
		case exitErr != nil:
			return exitErr
		case cmd == nil || isClosed(exited):
			return ErrStopped
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := nd.Status(sctx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			if isClosed(exited) {
				continue // report the exit
			}
			status := fmt.Sprintf("pid %d still running; last Status error: %v", cmd.Process.Pid, last)
			return nd.failure(fmt.Errorf("%w: %w", ErrNotReady, ctx.Err()), status)
		case <-exited:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// logTail returns the last n lines of the file at path. A Go panic's
// message comes first in its output and a deep stack pushes it out of the
// last lines, so when the window misses it, the last "panic:" or "fatal
// error:" line of the latest start goes first.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	defer f.Close()
	const window = 64 << 10
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	off := max(st.Size()-window, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	lines := strings.Split(string(bytes.TrimRight(b, "\n")), "\n")
	if off > 0 {
		lines = lines[1:] // the window starts within a line
	}
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	cut := len(lines) - n
	tail := lines[cut:]
	for i := cut - 1; i >= 0 && !strings.HasPrefix(lines[i], "=== start "); i-- {
		if strings.HasPrefix(lines[i], "panic: ") || strings.HasPrefix(lines[i], "fatal error: ") {
			tail = append([]string{lines[i], "..."}, tail...)
			break
		}
	}
	return strings.Join(tail, "\n")
}

// Running reports whether the process has been started and not reaped.
func (nd *Node) Running() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.cmd != nil && !isClosed(nd.exited)
}

// signal sends sig and, when wait is set, waits for the process to exit.
// SIGKILL and SIGTERM ask the process to end: its exit is no failure.
func (nd *Node) signal(sig syscall.Signal, wait bool) error {
	ending := sig == syscall.SIGTERM || sig == syscall.SIGKILL
	nd.mu.Lock()
	cmd, exited := nd.cmd, nd.exited
	if cmd != nil && ending {
		nd.stopping = true
	}
	nd.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if ending {
		// A paused process must run to handle SIGTERM.
		cmd.Process.Signal(syscall.SIGCONT)
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if !wait {
		return nil
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	nd.mu.Lock()
	if nd.cmd == cmd {
		nd.cmd = nil
	}
	nd.mu.Unlock()
	return nil
}

// Kill sends SIGKILL and waits: a crash.
func (nd *Node) Kill() error { return nd.signal(syscall.SIGKILL, true) }

// Stop sends SIGTERM and waits for a graceful exit.
func (nd *Node) Stop() error { return nd.signal(syscall.SIGTERM, true) }

// Pause sends SIGSTOP; Resume sends SIGCONT.
func (nd *Node) Pause() error  { return nd.signal(syscall.SIGSTOP, false) }
func (nd *Node) Resume() error { return nd.signal(syscall.SIGCONT, false) }

// Status asks the node for its own status over gRPC.
func (nd *Node) Status(ctx context.Context) (*kvpb.StatusResponse, error) {
	conn, err := grpc.NewClient(nd.ClientAddr, grpc.WithTransportCredentials(nd.c.dialCreds()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return kvpb.NewClusterClient(conn).Status(ctx, &kvpb.StatusRequest{})
}

// WaitLeader polls the running nodes until one reports itself leader.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	var last error
	for {
		for _, nd := range c.Nodes {
			if !nd.Running() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := nd.Status(sctx)
			cancel()
			if err != nil {
				last = err
				continue
			}
			if st.Role == "leader" {
				return nd, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitApplied polls until every running node has applied at least index.
func (c *Cluster) WaitApplied(ctx context.Context, index uint64) error {
	for _, nd := range c.Nodes {
		if !nd.Running() {
			continue
		}
		for {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := nd.Status(sctx)
			cancel()
			if err == nil && st.AppliedIndex >= index {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s did not apply index %d: %w", nd.Name, index, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Harnesses without a testing.TB (test/jepsen-lite).

// Build compiles ./cmd/kvd of the kvd module (see moduleRoot) into dir,
// with the given build tags, and returns its path.
func Build(dir string, tags ...string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "kvd")
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, "./cmd/kvd")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/kvd: %v\n%s", err, b)
	}
	return out, nil
}

// NewCluster returns a cluster with no nodes that runs the kvd binary and
// keeps node logs in dir. logf (may be nil) receives DumpLogs output. Add
// nodes with AddNode, then Start each one.
func NewCluster(kvd, dir string, logf func(format string, args ...any)) *Cluster {
	return &Cluster{Dir: dir, kvd: kvd, logf: logf, failed: make(chan struct{})}
}

// AddNode adds a node that is not started. args is its whole command line
// (Args; it may be changed between starts, e.g. to add a clock offset);
// dataDir is the node's data directory.
func (c *Cluster) AddNode(name, clientAddr, peerAddr, dataDir string, args []string) *Node {
	nd := &Node{Name: name, ClientAddr: clientAddr, PeerAddr: peerAddr, DataDir: dataDir, Args: args, c: c}
	c.Nodes = append(c.Nodes, nd)
	return nd
}

// FreePortList is FreePorts without a testing.TB.
func FreePortList(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// LogPath is the file the node's output goes to.
func (nd *Node) LogPath() string { return nd.logPath() }

// Pid is the running process's id, 0 when not running.
func (nd *Node) Pid() int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil || nd.cmd.Process == nil {
		return 0
	}
	return nd.cmd.Process.Pid
}
