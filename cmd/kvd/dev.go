package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// devNode is one node of the `kvd dev` cluster.
type devNode struct {
	name, client, peer string
}

// devNodes are n1, n2, n3 with client ports base, base+100, base+200 on
// 127.0.0.1 and each peer port one above its client port.
func devNodes(base int) []devNode {
	var nodes []devNode
	for i := range 3 {
		port := base + 100*i
		nodes = append(nodes, devNode{
			name:   "n" + strconv.Itoa(i+1),
			client: "127.0.0.1:" + strconv.Itoa(port),
			peer:   "127.0.0.1:" + strconv.Itoa(port+1),
		})
	}
	return nodes
}

// devConfig is what `kvd dev` runs.
type devConfig struct {
	exe                         string // the kvd binary each node runs
	dataDir, logLevel, logStore string
	basePort                    int
	// tls: certificates under dataDir/certs (made once, kept while valid),
	// TLS on the client ports and mutual TLS between the nodes.
	tls bool

	// A node that exits on its own (a crash, a SIGKILL) is started again
	// after restartMin, doubling up to restartMax. One that does so more
	// than maxRestarts times in a row, each time within stableAfter of its
	// start, is given up on: dev stops the cluster and fails.
	restartMin, restartMax, stableAfter time.Duration
	maxRestarts                         int
	// slowReady is when dev says which nodes are not ready yet.
	slowReady time.Duration
}

func defaultDevConfig() devConfig {
	return devConfig{
		dataDir:     "./kvd-data",
		logLevel:    "info",
		basePort:    2379,
		restartMin:  250 * time.Millisecond,
		restartMax:  4 * time.Second,
		stableAfter: 30 * time.Second,
		maxRestarts: 5,
		slowReady:   30 * time.Second,
	}
}

func newDevCmd(stderr io.Writer) *cobra.Command {
	cfg := defaultDevConfig()
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "run a local three-node cluster (n1, n2, n3 on 127.0.0.1:2379/2479/2579)",
		Long: `dev starts three kvd processes on this machine, named n1, n2 and n3, with
client addresses 127.0.0.1:2379, :2479, :2579 and peer addresses :2380, :2480,
:2580 (--base-port moves them all), keeping their data under
--data-dir/<name>. Run it again to restart on the same data.

When every node serves and knows a leader, dev prints one line per node. A
node that crashes is started again, with a line saying so; one that keeps
crashing (more than 5 times in a row) stops the cluster. The nodes stop with
dev however it ends: Ctrl-C, SIGTERM, a closed terminal, or SIGKILL.

  kvctl --endpoints 127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579 put hello world`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.basePort < 1 || cfg.basePort > 65535-201 {
				return usageError{fmt.Errorf("--base-port %d: want 1 to %d (the nodes use it and the 201 ports above)", cfg.basePort, 65535-201)}
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable: %w", err)
			}
			cfg.exe = exe
			return runDev(cmd.Context(), cfg, cmd.OutOrStdout(), stderr)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.dataDir, "data-dir", cfg.dataDir, "parent directory of the nodes' data directories")
	fs.StringVar(&cfg.logLevel, "log-level", cfg.logLevel, "log level of the nodes")
	fs.StringVar(&cfg.logStore, "log-store", "", "Raft log store for new data dirs: wal or bolt (see kvd --help)")
	fs.IntVar(&cfg.basePort, "base-port", cfg.basePort, "client port of n1; n2 and n3 use 100 and 200 above it, each peer port is its client port + 1")
	fs.BoolVar(&cfg.tls, "tls", false, "make a CA, node and client certificates under --data-dir/certs and serve TLS on every link; prints the KVD_CACERT, KVD_CERT and KVD_KEY lines for kvctl")
	return cmd
}

// devProc is the supervisor's view of one node.
type devProc struct {
	node    devNode
	cmd     *exec.Cmd // the running process, nil when none
	started time.Time
	crashes int                  // exits in a row, each soon after its start
	ready   bool                 // this run of the process has answered healthy
	status  *kvpb.StatusResponse // its answer then
	// pending: a restart is scheduled.
	pending bool
	// stopReady ends the readiness poll of the running process.
	stopReady context.CancelFunc
}

type devExit struct {
	i   int
	cmd *exec.Cmd
	err error
}

type devReady struct {
	i   int
	cmd *exec.Cmd
	st  *kvpb.StatusResponse
}

// runDev runs the three nodes until ctx ends or SIGINT/SIGTERM, restarting
// any that exits on its own. It returns nil after a requested stop, and an
// error if a node could not be started or kept crashing.
//
// The nodes die with dev, whatever kills it. Each is handed the read end of
// a pipe as fd 3 (--dev-parent-fd 3) and only this process holds the write
// end; however this process ends, even by SIGKILL, the kernel closes that
// end, every node reads end of file and shuts down as it does on SIGTERM.
// We chose this over Linux's Pdeathsig, which fires when the *thread* that
// forked the child exits, not the process: Go forks from whatever OS thread
// the calling goroutine happens to run on, and the runtime may end that
// thread (it does when a goroutine that locked it exits), which would kill
// a healthy node. Pdeathsig would need one locked thread doing every start
// for the whole run. The pipe has no such trap, works on every Unix (macOS
// has no Pdeathsig), and lets a node shut down cleanly.
func runDev(ctx context.Context, cfg devConfig, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir %s: %w", cfg.dataDir, err)
	}
	parentR, parentW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pipe for the nodes: %w", err)
	}
	defer parentR.Close()
	// Closed last: by then every node has exited, or been sent SIGKILL.
	defer parentW.Close()

	nodes := devNodes(cfg.basePort)
	var initial, names []string
	for _, n := range nodes {
		initial = append(initial, n.name+"="+n.peer)
		names = append(names, n.name)
	}
	creds := insecure.NewCredentials()
	var certs *pki.DevFiles
	if cfg.tls {
		certs, err = pki.DevCerts(filepath.Join(cfg.dataDir, "certs"), names, "root")
		if err != nil {
			return fmt.Errorf("certificates: %w", err)
		}
		conf, err := healthTLS(certs.CACert, certs.Client.Cert, certs.Client.Key)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(conf)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	var out sync.Mutex // one line at a time, on either writer
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintf(stderr, "kvd dev: "+format+"\n", args...)
	}

	done := make(chan struct{}) // closed when runDev returns
	var wg sync.WaitGroup
	defer func() {
		close(done)
		wg.Wait()
	}()
	exited := make(chan devExit)
	readyc := make(chan devReady)
	restart := make(chan int)

	procs := make([]*devProc, len(nodes))
	for i, n := range nodes {
		procs[i] = &devProc{node: n}
	}

	start := func(i int) error {
		p := procs[i]
		n := p.node
		c := exec.Command(cfg.exe,
			"--name", n.name,
			"--data-dir", filepath.Join(cfg.dataDir, n.name),
			"--client-addr", n.client,
			"--peer-addr", n.peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--log-level", cfg.logLevel,
			"--dev-parent-fd", "3",
		)
		if cfg.logStore != "" {
			c.Args = append(c.Args, "--log-store", cfg.logStore)
		}
		if certs != nil {
			nf := certs.Nodes[n.name]
			c.Args = append(c.Args,
				"--cert-file", nf.Cert, "--key-file", nf.Key, "--trusted-ca-file", certs.CACert,
				"--peer-cert-file", nf.Cert, "--peer-key-file", nf.Key, "--peer-trusted-ca-file", certs.CACert)
		}
		c.ExtraFiles = []*os.File{parentR} // fd 3
		// Its own process group: a Ctrl-C on the terminal reaches dev
		// only, which stops the nodes in order.
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		pr, pw := io.Pipe()
		c.Stdout, c.Stderr = pw, pw
		if err := c.Start(); err != nil {
			pw.Close()
			return fmt.Errorf("start %s: %w", n.name, err)
		}
		p.cmd, p.started, p.ready = c, time.Now(), false
		rctx, stopReady := context.WithCancel(context.Background())
		p.stopReady = stopReady
		wg.Add(3)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				out.Lock()
				fmt.Fprintf(stdout, "%-3s| %s\n", n.name, sc.Text())
				out.Unlock()
			}
			io.Copy(io.Discard, pr)
		}()
		go func() {
			defer wg.Done()
			err := c.Wait()
			pw.Close()
			select {
			case exited <- devExit{i, c, err}:
			case <-done:
			}
		}()
		go func() {
			defer wg.Done()
			st, ok := awaitReady(rctx, n.client, creds)
			if !ok {
				return
			}
			select {
			case readyc <- devReady{i, c, st}:
			case <-rctx.Done():
			case <-done:
			}
		}()
		return nil
	}

	running := 0
	stopping := false
	var failure error
	var kill <-chan time.Time
	stopAll := func(sig os.Signal) {
		for _, p := range procs {
			if p.cmd != nil {
				p.cmd.Process.Signal(sig)
			}
		}
	}
	beginStop := func(sig os.Signal) {
		stopping = true
		stopAll(sig)
		kill = time.After(15 * time.Second)
	}

	for i := range procs {
		if err := start(i); err != nil {
			beginStop(syscall.SIGTERM)
			failure = err
			break
		}
		running++
	}

	clusterReady := false
	slow := time.After(cfg.slowReady)
	for running > 0 || (!stopping && anyPending(procs)) {
		select {
		case sig := <-sigs:
			if stopping {
				stopAll(syscall.SIGKILL)
				continue
			}
			beginStop(sig)
		case <-ctx.Done():
			if !stopping {
				beginStop(syscall.SIGTERM)
			}
		case <-kill:
			stopAll(syscall.SIGKILL)
		case e := <-exited:
			p := procs[e.i]
			if p.cmd != e.cmd {
				continue
			}
			p.cmd, p.ready = nil, false
			p.stopReady()
			running--
			if stopping {
				continue
			}
			how := "exit status 0"
			if e.err != nil {
				how = e.err.Error()
			}
			if e.err == nil {
				// A clean exit: someone sent the node SIGTERM or
				// SIGINT. Leave it stopped.
				say("%s stopped (%s); not restarting it", p.node.name, how)
				continue
			}
			if time.Since(p.started) >= cfg.stableAfter {
				p.crashes = 0
			}
			p.crashes++
			if p.crashes > cfg.maxRestarts {
				say("%s exited unexpectedly (%s), %d times in a row; giving up and stopping the cluster", p.node.name, how, p.crashes)
				failure = fmt.Errorf("%s keeps exiting (%s); its log is above", p.node.name, how)
				beginStop(syscall.SIGTERM)
				continue
			}
			delay := min(cfg.restartMin<<(p.crashes-1), cfg.restartMax)
			say("%s exited unexpectedly (%s); restarting it in %v (restart %d of at most %d in a row)",
				p.node.name, how, delay, p.crashes, cfg.maxRestarts)
			p.pending = true
			i := e.i
			time.AfterFunc(delay, func() {
				select {
				case restart <- i:
				case <-done:
				}
			})
		case i := <-restart:
			p := procs[i]
			p.pending = false
			if stopping {
				continue
			}
			if err := start(i); err != nil {
				failure = err
				beginStop(syscall.SIGTERM)
				continue
			}
			running++
		case r := <-readyc:
			p := procs[r.i]
			if p.cmd != r.cmd || stopping {
				continue
			}
			p.ready, p.status = true, r.st
			if clusterReady {
				say("%s ready again: %s", p.node.name, readyLine(p))
				continue
			}
			if allReady(procs) {
				clusterReady = true
				for _, q := range procs {
					say("%s ready: %s", q.node.name, readyLine(q))
				}
				if certs != nil {
					say("TLS on every link; for kvctl:")
					for _, l := range kvctlExports(certs) {
						say("  %s", l)
					}
				}
			}
		case <-slow:
			if clusterReady || stopping {
				continue
			}
			var waiting []string
			for _, p := range procs {
				if !p.ready {
					waiting = append(waiting, p.node.name)
				}
			}
			say("not ready after %v: %s still knows no leader or does not answer (see the log)", cfg.slowReady, strings.Join(waiting, ", "))
		}
	}
	if failure != nil {
		return failure
	}
	if !stopping {
		return errors.New("every node has stopped")
	}
	return nil
}

func anyPending(procs []*devProc) bool {
	for _, p := range procs {
		if p.pending {
			return true
		}
	}
	return false
}

func allReady(procs []*devProc) bool {
	for _, p := range procs {
		if !p.ready {
			return false
		}
	}
	return true
}

// readyLine describes a ready node: its addresses, pid, and role when it
// answered.
func readyLine(p *devProc) string {
	return fmt.Sprintf("client %s, peer %s, pid %d, %s", p.node.client, p.node.peer, p.cmd.Process.Pid, p.status.GetRole())
}

// awaitReady polls the node at addr until it serves and knows a leader, and
// returns its status; false if ctx ends first (the process exited) or after
// ten minutes.
func awaitReady(ctx context.Context, addr string, creds credentials.TransportCredentials) (*kvpb.StatusResponse, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		st, err := checkHealth(cctx, addr, creds)
		ccancel()
		if err == nil {
			return st, true
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, false
		}
	}
}

// kvctlExports are the shell lines that point kvctl at dev's certificates.
func kvctlExports(certs *pki.DevFiles) []string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	return []string{
		"export KVD_CACERT=" + abs(certs.CACert),
		"export KVD_CERT=" + abs(certs.Client.Cert),
		"export KVD_KEY=" + abs(certs.Client.Key),
	}
}
