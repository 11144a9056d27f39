// Command kvd runs one kvd server node (or, with `kvd dev`, a local
// three-node cluster). It only parses flags, loads certificates, handles
// signals and exits; the member itself is a node.Node with an api.Server in
// front of it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/api"
	"github.com/kvdproject/kvd/node"
)

// usageError marks bad command-line usage (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes kvd with args and returns the exit status: 0 ok, 1 failed,
// 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "kvd: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

type serverFlags struct {
	name, dataDir, clientAddr, advertiseClient, peerAddr string
	initialCluster                                       string
	join                                                 bool
	snapshotThreshold, trailingLogs                      uint64
	snapshotInterval                                     time.Duration
	heartbeat, election, leaderLease, recoverGrace, tick time.Duration
	limits                                               node.Limits
	tls                                                  tlsFlags
	logLevel                                             string
	pprofAddr                                            string
	metricsAddr                                          string
	logStore                                             string
	quotaBytes                                           int64
	walSegmentBytes                                      int
	testClockOffset                                      time.Duration
	testPeerDial                                         string
	devParentFD                                          int
	watchHistoryBytes                                    int64
	watchHistoryEvents, watchBuffer                      int
	watchProgress                                        time.Duration
	gcPercent                                            int
	gcMinHeadroom                                        int64
}

func newRootCmd(stderr io.Writer) *cobra.Command {
	var f serverFlags
	root := &cobra.Command{
		Use:   "kvd",
		Short: "kvd is a key-value store replicated with Raft",
		Long: `kvd runs one node of a kvd cluster: a key-value store with TTLs, sessions,
locks with fencing tokens and a cache of computed results, replicated with Raft.

Example (first node of three):
  kvd --name n1 --data-dir /var/lib/kvd/n1 \
      --client-addr 127.0.0.1:2379 --peer-addr 127.0.0.1:2380 \
      --initial-cluster n1=127.0.0.1:2380,n2=127.0.0.1:2480,n3=127.0.0.1:2580

Run a local three-node cluster for development with "kvd dev".`,
		Args:          noArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return usageError{err}
			}
			percent, err := setGCPercent(f.gcPercent, cmd.Flags().Changed("gc-percent"))
			if err != nil {
				return usageError{err}
			}
			if f.gcMinHeadroom < 0 {
				return usageError{fmt.Errorf("--gc-min-headroom: want 0 (off) or more bytes, got %d", f.gcMinHeadroom)}
			}
			startGCTuner(percent, uint64(f.gcMinHeadroom))
			if err := f.tls.check(f.clientAddr, f.peerAddr); err != nil {
				return usageError{err}
			}
			logger, err := newLogger(stderr, f.logLevel, f.name)
			if err != nil {
				return usageError{err}
			}
			cfg.Logger = logger
			if f.pprofAddr != "" {
				stopPprof, err := servePprof(f.pprofAddr, logger)
				if err != nil {
					return usageError{err}
				}
				defer stopPprof()
			}
			ctx := cmd.Context()
			if f.devParentFD != 0 {
				var stop context.CancelFunc
				ctx, stop = watchParent(ctx, f.devParentFD, logger)
				defer stop()
			}
			return serve(ctx, cfg, f.clientAddr, f.advertiseClient, f.metricsAddr, &f.tls)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	fs := root.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.name, "name", "", "node name, unique in the cluster (also its Raft ID)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the Raft log and snapshots (created if missing)")
	fs.StringVar(&f.logStore, "log-store", "", "Raft log store for a new data dir: wal (one fsync per append) or bolt (raft-boltdb); unset, an existing data dir keeps the store it holds, and naming the other one is refused")
	fs.Int64Var(&f.quotaBytes, "quota-bytes", 0, "refuse writes that add data while the data dir takes this many bytes on disk or more (deletes are still accepted); 0: no quota")
	fs.IntVar(&f.walSegmentBytes, "wal-segment-bytes", node.DefaultWALSegmentBytes, "size of a Raft log (WAL) segment, preallocated; this much is kept free for the next one")
	fs.StringVar(&f.clientAddr, "client-addr", "127.0.0.1:2379", "gRPC listen address for clients")
	fs.StringVar(&f.advertiseClient, "advertise-client-addr", "", "client address told to other nodes and clients (default --client-addr)")
	fs.StringVar(&f.peerAddr, "peer-addr", "127.0.0.1:2380", "peer port (Raft and the internal service between members): listen and advertised address")
	fs.StringVar(&f.initialCluster, "initial-cluster", "", "bootstrap members of an empty data dir: name=peer-addr,... (ignored with existing data or --join)")
	fs.BoolVar(&f.join, "join", false, "start empty and wait to be added (kvctl cluster add)")
	fs.Uint64Var(&f.snapshotThreshold, "snapshot-threshold", 8192, "log entries between snapshots")
	fs.DurationVar(&f.snapshotInterval, "snapshot-interval", 30*time.Second, "how often Raft checks whether to snapshot")
	fs.Uint64Var(&f.trailingLogs, "trailing-logs", 10240, "log entries kept after a snapshot")
	fs.DurationVar(&f.heartbeat, "heartbeat-timeout", 500*time.Millisecond, "Raft heartbeat timeout")
	fs.DurationVar(&f.election, "election-timeout", 500*time.Millisecond, "Raft election timeout")
	fs.DurationVar(&f.leaderLease, "leader-lease", 250*time.Millisecond, "Raft leader lease timeout (not used for reads)")
	fs.DurationVar(&f.recoverGrace, "recover-grace", 0, "grace for deadlines that fell due without a leader (default 2 x election timeout)")
	fs.DurationVar(&f.tick, "tick-interval", 100*time.Millisecond, "how often the leader checks for due deadlines")

	f.tls.register(fs)

	d := node.DefaultLimits()
	l := &f.limits
	fs.IntVar(&l.MaxKeyBytes, "max-key-bytes", d.MaxKeyBytes, "largest key")
	fs.IntVar(&l.MaxValueBytes, "max-value-bytes", d.MaxValueBytes, "largest value")
	fs.IntVar(&l.MaxRequestBytes, "max-request-bytes", d.MaxRequestBytes, "largest gRPC request")
	fs.DurationVar(&l.MinTTL, "min-ttl", d.MinTTL, "shortest TTL of keys, sessions and cache entries")
	fs.DurationVar(&l.MaxTTL, "max-ttl", d.MaxTTL, "longest TTL (also bounds waits and leases)")
	fs.IntVar(&l.MaxListLimit, "max-list-limit", d.MaxListLimit, "most keys one List may ask for")
	fs.IntVar(&l.DefaultListLimit, "default-list-limit", d.DefaultListLimit, "keys a List returns when it gives no limit")
	fs.IntVar(&l.MaxNameBytes, "max-name-bytes", d.MaxNameBytes, "longest lock or session name")
	fs.IntVar(&l.MaxWaitersPerLock, "max-waiters-per-lock", d.MaxWaitersPerLock, "longest FIFO line of one lock")
	fs.IntVar(&l.MaxLocksPerSession, "max-locks-per-session", d.MaxLocksPerSession, "most locks one session may hold or wait for")
	fs.Int64Var(&l.CacheMaxBytes, "cache-max-bytes", d.CacheMaxBytes, "bound on cache values; beyond it entries are evicted")
	fs.IntVar(&l.MaxDedupResults, "max-dedup-results", d.MaxDedupResults, "results remembered per session for exactly-once retries")
	fs.IntVar(&l.MaxResponseBytes, "max-response-bytes", d.MaxResponseBytes, "byte budget of one List or lock list answer: a page stops before it and says more (at most 64 MiB)")
	fs.IntVar(&l.MaxSessions, "max-sessions", d.MaxSessions, "most live sessions in the cluster; more are refused (RESOURCE_EXHAUSTED)")
	fs.IntVar(&l.MaxLocks, "max-locks", d.MaxLocks, "most locks held, waited for or in lock-delay in the cluster; more are refused (RESOURCE_EXHAUSTED)")
	fs.DurationVar(&l.MaxLockDelay, "max-lock-delay", d.MaxLockDelay, "longest lock-delay an acquire may ask for; longer is refused, never shortened")
	fs.IntVar(&l.MaxConcurrentStreams, "max-concurrent-streams", d.MaxConcurrentStreams, "concurrent calls per client connection")
	fs.IntVar(&l.MaxUnreadBytes, "max-unread-bytes", d.MaxUnreadBytes, "answers a client connection may leave unread before its reads wait")
	fs.IntVar(&l.MaxTxnOps, "max-txn-ops", d.MaxTxnOps, "most compares in a transaction, and most ops in each of its branches")

	fs.Int64Var(&f.watchHistoryBytes, "watch-history-bytes", node.DefaultWatchHistoryBytes, "memory for the history of recent changes that watches resume from (estimated bytes)")
	fs.IntVar(&f.watchHistoryEvents, "watch-history-events", node.DefaultWatchHistoryEvents, "most changes the watch history holds")
	fs.IntVar(&f.watchBuffer, "watch-buffer", node.DefaultWatchBuffer, "changes queued for one watch stream before it is cancelled as too slow (its client resumes)")
	fs.DurationVar(&f.watchProgress, "watch-progress-interval", node.DefaultWatchProgressInterval, "how often the node confirms with the leader that it is up to date, for its watchers' progress messages")

	fs.IntVar(&f.gcPercent, "gc-percent", defaultGCPercent, "garbage collector target (Go's GOGC): the heap grows this many percent over the live data between collections; lower holds less memory for a little more CPU. -1: off. Unless this flag is given, a GOGC environment variable wins")
	fs.Int64Var(&f.gcMinHeadroom, "gc-min-headroom", defaultGCMinHeadroom, "the least the heap may grow between collections, in bytes, whatever --gc-percent gives for a small state (collecting every few megabytes costs a loaded member a fifth of its CPU); 0: --gc-percent alone")

	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.pprofAddr, "pprof-addr", "", "serve Go's /debug/pprof/ on this loopback address (e.g. 127.0.0.1:6060); default off")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics (/metrics), /healthz and /readyz over plain HTTP on this address (e.g. 127.0.0.1:9090); default off")
	fs.DurationVar(&f.testClockOffset, "test-clock-offset", 0, "TESTING ONLY: shift this node's clock by this much")
	fs.StringVar(&f.testPeerDial, "test-peer-dial", "", "TESTING ONLY: dial these addresses for peers instead: name=addr,... (fault-injection proxies)")
	fs.IntVar(&f.devParentFD, "dev-parent-fd", 0, "set by kvd dev: shut down when this inherited pipe reports end of file (the parent has gone)")
	fs.MarkHidden("dev-parent-fd")

	root.AddCommand(newDevCmd(stderr), newHealthCmd(), newVersionCmd(), newRestoreCmd(), newCertCmd())
	return root
}

// config is the node's configuration from the flags. Its ClientAddr is the
// one the client port will advertise, set by serve once it listens.
func (f *serverFlags) config() (node.Config, error) {
	cfg := node.Config{
		Name:              f.name,
		DataDir:           f.dataDir,
		LogStore:          f.logStore,
		QuotaBytes:        f.quotaBytes,
		WALSegmentBytes:   f.walSegmentBytes,
		ClientAddr:        f.clientAddr,
		PeerAddr:          f.peerAddr,
		Join:              f.join,
		SnapshotThreshold: f.snapshotThreshold,
		SnapshotInterval:  f.snapshotInterval,
		TrailingLogs:      f.trailingLogs,
		HeartbeatTimeout:  f.heartbeat,
		ElectionTimeout:   f.election,
		LeaderLease:       f.leaderLease,
		RecoverGrace:      f.recoverGrace,
		TickInterval:      f.tick,
		Limits:            f.limits,
		TestClockOffset:   f.testClockOffset,

		WatchHistoryBytes:     f.watchHistoryBytes,
		WatchHistoryEvents:    f.watchHistoryEvents,
		WatchBuffer:           f.watchBuffer,
		WatchProgressInterval: f.watchProgress,
	}
	switch {
	case f.watchHistoryBytes < 1:
		return cfg, fmt.Errorf("--watch-history-bytes: want at least 1, got %d", f.watchHistoryBytes)
	case f.watchHistoryEvents < 1:
		return cfg, fmt.Errorf("--watch-history-events: want at least 1, got %d", f.watchHistoryEvents)
	case f.watchBuffer < 1:
		return cfg, fmt.Errorf("--watch-buffer: want at least 1, got %d", f.watchBuffer)
	case f.watchProgress < time.Millisecond:
		return cfg, fmt.Errorf("--watch-progress-interval: want at least 1ms, got %v", f.watchProgress)
	}
	if f.name == "" {
		return cfg, errors.New("--name is required")
	}
	if f.dataDir == "" {
		return cfg, errors.New("--data-dir is required")
	}
	if f.logStore != "" && f.logStore != node.LogStoreWAL && f.logStore != node.LogStoreBolt {
		return cfg, fmt.Errorf("--log-store %q: want %s or %s", f.logStore, node.LogStoreWAL, node.LogStoreBolt)
	}
	peers, err := parsePairs("--initial-cluster", f.initialCluster)
	if err != nil {
		return cfg, err
	}
	for _, p := range peers {
		cfg.InitialCluster = append(cfg.InitialCluster, node.Peer{Name: p[0], PeerAddr: p[1]})
	}
	if len(peers) == 0 && !f.join {
		// A single node cluster of itself.
		cfg.InitialCluster = []node.Peer{{Name: f.name, PeerAddr: f.peerAddr}}
	}
	dial, err := parsePairs("--test-peer-dial", f.testPeerDial)
	if err != nil {
		return cfg, err
	}
	if len(dial) > 0 {
		cfg.TestPeerDialAddrs = map[string]string{}
		for _, p := range dial {
			cfg.TestPeerDialAddrs[p[0]] = p[1]
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// parsePairs parses "a=x,b=y".
func parsePairs(flag, s string) ([][2]string, error) {
	var out [][2]string
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, item := range strings.Split(s, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("%s: %q is not name=address", flag, item)
		}
		out = append(out, [2]string{name, addr})
	}
	return out, nil
}

func newLogger(w io.Writer, level, name string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
}

// errParentGone ends a node started by kvd dev whose parent has gone.
var errParentGone = errors.New("the parent kvd dev has gone")

// watchParent returns a context that ends, with cause errParentGone, when
// the pipe inherited as fd reads end of file: every write end is closed, so
// the kvd dev holding it has exited, however it died (see runDev).
func watchParent(ctx context.Context, fd int, log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	pipe := os.NewFile(uintptr(fd), "kvd-dev-parent")
	go func() {
		// Nothing is written to it: Read returns at end of file, or at
		// once with an error if fd is not an open pipe.
		buf := make([]byte, 64)
		var err error
		for err == nil {
			_, err = pipe.Read(buf)
		}
		if !errors.Is(err, io.EOF) {
			log.Error("cannot watch the parent kvd dev; shutting down", "fd", fd, "err", err)
		}
		cancel(errParentGone)
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// serve runs a member until SIGINT/SIGTERM (or until ctx ends), then shuts
// it down gracefully: the client port first, then the node. SIGHUP reloads
// the certificate files. With metricsAddr, it also serves metrics there.
func serve(parent context.Context, cfg node.Config, clientAddr, advertise, metricsAddr string, tf *tlsFlags) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	certs, err := tf.load()
	if err != nil {
		return usageError{err}
	}
	lis, err := net.Listen("tcp", clientAddr)
	if err != nil {
		return fmt.Errorf("listen on client address %s: %w", clientAddr, err)
	}
	defer lis.Close()
	var metricsLis net.Listener
	if metricsAddr != "" {
		if metricsLis, err = net.Listen("tcp", metricsAddr); err != nil {
			return fmt.Errorf("listen on metrics address %s: %w", metricsAddr, err)
		}
		defer metricsLis.Close()
		raftMetrics() // before raft starts: its first election is reported
	}
	cfg.ClientAddr = advertise
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = lis.Addr().String()
	}
	cfg.PeerTLS = certs.peerTLS()
	nd, err := node.New(cfg)
	if err != nil {
		return usageError{err}
	}
	if err := nd.Start(); err != nil {
		return err
	}
	srv := api.New(nd, api.Config{TLS: certs.clientTLS(), Logger: cfg.Logger})
	if metricsLis != nil {
		stopMetrics, err := serveMetrics(metricsLis, nd, cfg.Logger, nd.Collector(), srv.Collector())
		if err != nil {
			return errors.Join(err, nd.Shutdown(context.Background()))
		}
		// Deferred, so it runs after the node has stopped: /readyz
		// answers "not ready" while the member shuts down.
		defer stopMetrics()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	reloadCtx, stopReload := context.WithCancel(ctx)
	defer stopReload()
	go certs.watch(reloadCtx, cfg.Logger)

	var serveErr error
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(parent), errParentGone) {
			cfg.Logger.Warn("the parent kvd dev has gone; shutting down")
		} else {
			cfg.Logger.Info("signal received; shutting down")
		}
	case serveErr = <-served:
		cfg.Logger.Error("client port stopped", "err", serveErr)
	}
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Stop(sctx)
	return errors.Join(serveErr, nd.Shutdown(sctx))
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the kvd version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := node.Version
			if bi, ok := debug.ReadBuildInfo(); ok {
				fmt.Fprintf(cmd.OutOrStdout(), "kvd %s (%s)\n", v, bi.GoVersion)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kvd %s\n", v)
			return nil
		},
	}
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}
