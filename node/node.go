package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Version is reported by Cluster.Status and `kvd version`.
var Version = "0.1.0-dev"

// Peer is one member of the initial cluster.
type Peer struct {
	Name     string // also the Raft server ID
	PeerAddr string // Raft address
}

// Limits bound requests; they are checked before anything is proposed.
// Zero fields take the documented defaults (see DefaultLimits).
type Limits struct {
	MaxKeyBytes        int           // default 4 KiB
	MaxValueBytes      int           // default 1 MiB
	MaxRequestBytes    int           // gRPC max receive size, default 1.5 MiB
	MinTTL             time.Duration // default 1s... (validated: ttl_ms in [MinTTL, MaxTTL])
	MaxTTL             time.Duration // default 1 year
	MaxListLimit       int           // default 10000; a List with limit 0 gets DefaultListLimit
	DefaultListLimit   int           // default 1000
	MaxNameBytes       int           // lock names, session names: default 512
	MaxWaitersPerLock  int           // default 1024 (copied into commands: StateLimits)
	MaxLocksPerSession int           // default 1024
	CacheMaxBytes      int64         // default 256 MiB of cache values
	MaxDedupResults    int           // per session, default 100000
	// MaxResponseBytes is the byte budget of one List or lock list answer
	// (a page stops before it, and says more), default 4 MiB; at most
	// MaxClientResponseBytes, what the Go client accepts.
	MaxResponseBytes int
	MaxSessions      int           // live sessions in the cluster, default 50000 (StateLimits)
	MaxLocks         int           // locks held, waited for or in lock-delay, default 100000 (StateLimits)
	MaxLockDelay     time.Duration // longest lock-delay of an acquire, default 1 minute (StateLimits)
	// MaxConcurrentStreams is the client port's limit of concurrent calls
	// per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), default 256.
	MaxConcurrentStreams int
	// MaxUnreadBytes bounds the answers of one client connection that are
	// built but not yet sent because its client does not read: reads that
	// would build more wait, default 8 MiB.
	MaxUnreadBytes int
	// MaxTxnOps bounds a transaction's compares, and the ops of each of
	// its branches, default 128 (etcd's --max-txn-ops).
	MaxTxnOps int
}

// MaxClientResponseBytes is the largest answer the Go client accepts, and
// so the largest MaxResponseBytes.
const MaxClientResponseBytes = 64 << 20

// DefaultLimits returns the limits a zero Limits takes.
func DefaultLimits() Limits {
	return Limits{
		MaxKeyBytes:        4 << 10,
		MaxValueBytes:      1 << 20,
		MaxRequestBytes:    3 << 19, // 1.5 MiB
		MinTTL:             time.Second,
		MaxTTL:             365 * 24 * time.Hour,
		MaxListLimit:       10000,
		DefaultListLimit:   1000,
		MaxNameBytes:       512,
		MaxWaitersPerLock:  1024,
		MaxLocksPerSession: 1024,
		CacheMaxBytes:      256 << 20,
		MaxDedupResults:    100000,

		MaxResponseBytes:     4 << 20,
		MaxSessions:          50000,
		MaxLocks:             100000,
		MaxLockDelay:         time.Minute,
		MaxConcurrentStreams: 256,
		MaxUnreadBytes:       8 << 20,
		MaxTxnOps:            128,
	}
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setInt(&l.MaxKeyBytes, d.MaxKeyBytes)
	setInt(&l.MaxValueBytes, d.MaxValueBytes)
	setInt(&l.MaxRequestBytes, d.MaxRequestBytes)
	setInt(&l.MaxListLimit, d.MaxListLimit)
	setInt(&l.DefaultListLimit, d.DefaultListLimit)
	setInt(&l.MaxNameBytes, d.MaxNameBytes)
	setInt(&l.MaxWaitersPerLock, d.MaxWaitersPerLock)
	setInt(&l.MaxLocksPerSession, d.MaxLocksPerSession)
	setInt(&l.MaxDedupResults, d.MaxDedupResults)
	setInt(&l.MaxResponseBytes, d.MaxResponseBytes)
	setInt(&l.MaxSessions, d.MaxSessions)
	setInt(&l.MaxLocks, d.MaxLocks)
	setInt(&l.MaxConcurrentStreams, d.MaxConcurrentStreams)
	setInt(&l.MaxUnreadBytes, d.MaxUnreadBytes)
	setInt(&l.MaxTxnOps, d.MaxTxnOps)
	if l.MaxLockDelay == 0 {
		l.MaxLockDelay = d.MaxLockDelay
	}
	if l.MinTTL == 0 {
		l.MinTTL = d.MinTTL
	}
	if l.MaxTTL == 0 {
		l.MaxTTL = d.MaxTTL
	}
	if l.CacheMaxBytes == 0 {
		l.CacheMaxBytes = d.CacheMaxBytes
	}
	return l
}

// Validate reports the first limit that is negative or inconsistent.
func (l Limits) Validate() error {
	l = l.withDefaults()
	switch {
	case l.MaxKeyBytes < 0, l.MaxValueBytes < 0, l.MaxRequestBytes < 0, l.MaxListLimit < 0,
		l.DefaultListLimit < 0, l.MaxNameBytes < 0, l.MaxWaitersPerLock < 0,
		l.MaxLocksPerSession < 0, l.CacheMaxBytes < 0, l.MaxDedupResults < 0, l.MinTTL < 0, l.MaxTTL < 0,
		l.MaxResponseBytes < 0, l.MaxSessions < 0, l.MaxLocks < 0, l.MaxLockDelay < 0,
		l.MaxConcurrentStreams < 0, l.MaxUnreadBytes < 0, l.MaxTxnOps < 0:
		return errors.New("limits: negative value")
	case l.MinTTL > l.MaxTTL:
		return fmt.Errorf("limits: min-ttl %v exceeds max-ttl %v", l.MinTTL, l.MaxTTL)
	case l.DefaultListLimit > l.MaxListLimit:
		return fmt.Errorf("limits: default-list-limit %d exceeds max-list-limit %d", l.DefaultListLimit, l.MaxListLimit)
	case l.MaxKeyBytes+l.MaxValueBytes > l.MaxRequestBytes:
		return fmt.Errorf("limits: max-key-bytes + max-value-bytes (%d) exceed max-request-bytes %d",
			l.MaxKeyBytes+l.MaxValueBytes, l.MaxRequestBytes)
	case l.MaxKeyBytes+l.MaxValueBytes+fsm.ItemOverhead > l.MaxResponseBytes:
		return fmt.Errorf("limits: max-response-bytes %d is below one key and value (max-key-bytes + max-value-bytes + %d = %d)",
			l.MaxResponseBytes, fsm.ItemOverhead, l.MaxKeyBytes+l.MaxValueBytes+fsm.ItemOverhead)
	case l.MaxResponseBytes > MaxClientResponseBytes:
		return fmt.Errorf("limits: max-response-bytes %d exceeds %d, the largest answer the Go client accepts", l.MaxResponseBytes, MaxClientResponseBytes)
	case l.MaxWaitersPerLock > 1<<31, l.MaxLocksPerSession > 1<<31, l.MaxDedupResults > 1<<31,
		l.MaxSessions > 1<<31, l.MaxLocks > 1<<31, l.MaxConcurrentStreams > 1<<31, l.MaxTxnOps > 1<<31:
		return errors.New("limits: value too large")
	case l.MaxLockDelay < time.Millisecond:
		return fmt.Errorf("limits: max-lock-delay %v is below 1ms", l.MaxLockDelay)
	}
	return nil
}

// Config configures a Node. Validate reports the first bad field.
type Config struct {
	Name    string
	DataDir string
	// PeerAddr is the peer port's listen and advertised address: Raft and
	// the Internal service between members.
	PeerAddr string
	// ClientAddr is the client address other members and clients are told
	// about (the api server's, which the node does not serve itself).
	ClientAddr string

	// PeerTLS, when set, makes every connection on the peer port mutual
	// TLS between members; nil is plaintext.
	PeerTLS *PeerTLS

	// LogStore is LogStoreWAL or LogStoreBolt for a new data dir; "" keeps
	// whichever the data dir already holds and uses the WAL for a new one. A
	// value that contradicts what the data dir holds is an error at Start.
	LogStore string

	// InitialCluster bootstraps an empty data dir. Ignored when the data dir
	// already holds Raft state, or when Join is set.
	InitialCluster []Peer
	// Join: start empty and wait to be added by `kvctl cluster add`.
	Join bool

	// QuotaBytes, when > 0, refuses writes that add data (QUOTA_EXCEEDED)
	// while the data dir takes this many bytes on disk or more, as etcd's
	// NOSPACE alarm does; deletes and other writes that add nothing are
	// still accepted, so that space can be freed. 0: no quota. It must be at
	// least two WAL segments.
	QuotaBytes int64
	// WALSegmentBytes is the size of a raft-wal segment, preallocated when
	// it is created (default 64 MiB, raft-wal's own). The member keeps that
	// much free for the next one: below it, writes that add data are refused
	// (docs/design.md "A full disk").
	WALSegmentBytes int

	SnapshotThreshold uint64        // entries between snapshots, default 8192
	SnapshotInterval  time.Duration // how often raft checks, default 30s
	TrailingLogs      uint64        // default 10240

	HeartbeatTimeout time.Duration // default 500ms
	ElectionTimeout  time.Duration // default 500ms
	LeaderLease      time.Duration // default 250ms
	// Grace given to deadlines that fell due while there was no leader.
	// Default 2 * ElectionTimeout.
	RecoverGrace time.Duration
	// TickInterval: how often the leader checks for due deadlines, default 100ms.
	TickInterval time.Duration

	Limits Limits
	Logger *slog.Logger

	// Watch history and watchers (see WatchConfig; zero fields take its
	// defaults). The history is this member's own, never replicated.
	WatchHistoryBytes     int64         // default 64 MiB
	WatchHistoryEvents    int           // default 100000
	WatchBuffer           int           // events queued per watcher before it is cancelled, default 4096
	WatchProgressInterval time.Duration // how often the node confirms it is up to date for its watchers, default 250ms

	// --- Testing hooks. Never set in production: kvd exposes them only
	// behind flags named --test-*. ---

	// TestClockOffset shifts this node's clock (monotonic and wall).
	TestClockOffset time.Duration
	// TestPeerDialAddrs overrides the address dialled for a peer (by name):
	// the fault harness routes each directed link through its own proxy.
	TestPeerDialAddrs map[string]string
	// TestDiskReserve replaces the free space the member keeps in reserve:
	// > 0 that many bytes, < 0 none, so that a test can fill the disk to
	// the last byte and watch the stores run out.
	TestDiskReserve int64

	// --- In-process tests only. ---

	// Transport replaces the peer port's Raft transport
	// (raft.NewInmemTransport); PeerListener then serves the Internal
	// service in its place (bufconn).
	Transport    raft.Transport
	PeerListener net.Listener
	// Dialer replaces net.Dial for the Internal service between members.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// InMemoryStore uses raft's in-memory log and snapshot stores.
	InMemoryStore bool
}

// withDefaults returns cfg with every zero field defaulted.
func (cfg Config) withDefaults() Config {
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 8192
	}
	if cfg.WALSegmentBytes == 0 {
		cfg.WALSegmentBytes = DefaultWALSegmentBytes
	}
	if cfg.SnapshotInterval == 0 {
		cfg.SnapshotInterval = 30 * time.Second
	}
	if cfg.TrailingLogs == 0 {
		cfg.TrailingLogs = 10240
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 500 * time.Millisecond
	}
	if cfg.ElectionTimeout == 0 {
		cfg.ElectionTimeout = 500 * time.Millisecond
	}
	if cfg.LeaderLease == 0 {
		cfg.LeaderLease = 250 * time.Millisecond
		if cfg.LeaderLease > cfg.HeartbeatTimeout {
			cfg.LeaderLease = cfg.HeartbeatTimeout
		}
	}
	if cfg.RecoverGrace == 0 {
		cfg.RecoverGrace = 2 * cfg.ElectionTimeout
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 100 * time.Millisecond
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// Validate reports the first bad field of cfg (after defaults are applied).
func (cfg Config) Validate() error {
	cfg = cfg.withDefaults()
	switch {
	case cfg.Name == "":
		return errors.New("config: name is required")
	case cfg.DataDir == "" && !cfg.InMemoryStore:
		return errors.New("config: data dir is required")
	case cfg.ClientAddr == "":
		return errors.New("config: client address is required")
	case cfg.PeerAddr == "" && cfg.Transport == nil:
		return errors.New("config: peer address is required")
	case cfg.TickInterval < 0, cfg.RecoverGrace < 0, cfg.SnapshotInterval < 0:
		return errors.New("config: negative duration")
	case cfg.Transport != nil && cfg.PeerListener == nil:
		return errors.New("config: an in-memory transport needs a peer listener for the internal service")
	case cfg.PeerTLS != nil && (cfg.PeerTLS.Certificate == nil || cfg.PeerTLS.CAs == nil):
		return errors.New("config: peer TLS needs a certificate and CAs")
	case cfg.LogStore != "" && cfg.LogStore != LogStoreWAL && cfg.LogStore != LogStoreBolt:
		return fmt.Errorf("config: log store %q: want %q or %q", cfg.LogStore, LogStoreWAL, LogStoreBolt)
	case cfg.WALSegmentBytes < minWALSegmentBytes || cfg.WALSegmentBytes > maxWALSegmentBytes:
		return fmt.Errorf("config: wal-segment-bytes %d: want %d (1 MiB) to %d (1 GiB)",
			cfg.WALSegmentBytes, minWALSegmentBytes, maxWALSegmentBytes)
	case cfg.QuotaBytes < 0:
		return fmt.Errorf("config: quota-bytes %d is negative (0: no quota)", cfg.QuotaBytes)
	case cfg.QuotaBytes > 0 && cfg.QuotaBytes < 2*int64(cfg.WALSegmentBytes):
		return fmt.Errorf("config: quota-bytes %d is less than two log segments (2 x wal-segment-bytes = %d): "+
			"the log alone would fill it", cfg.QuotaBytes, 2*int64(cfg.WALSegmentBytes))
	}
	if cfg.Transport == nil {
		if _, err := net.ResolveTCPAddr("tcp", cfg.PeerAddr); err != nil {
			return fmt.Errorf("config: peer address %q: %w", cfg.PeerAddr, err)
		}
		if host, _, _ := net.SplitHostPort(cfg.PeerAddr); host == "" || net.ParseIP(host).IsUnspecified() {
			return fmt.Errorf("config: peer address %q must name a host others can reach", cfg.PeerAddr)
		}
	}
	if !cfg.Join {
		seen := map[string]bool{}
		for _, p := range cfg.InitialCluster {
			if p.Name == "" || p.PeerAddr == "" {
				return fmt.Errorf("config: initial cluster member %q=%q: name and address are required", p.Name, p.PeerAddr)
			}
			if seen[p.Name] {
				return fmt.Errorf("config: initial cluster names %q twice", p.Name)
			}
			seen[p.Name] = true
		}
		if len(cfg.InitialCluster) > 0 && !seen[cfg.Name] {
			return fmt.Errorf("config: initial cluster does not include this node %q", cfg.Name)
		}
	}
	if err := cfg.Limits.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := cfg.watchConfig().Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	rc := cfg.raftConfig()
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// WAL segment sizes: raft-wal's default, and the range Validate accepts
// (raft-wal keeps a segment's size limit in 32 bits and preallocates it).
const (
	DefaultWALSegmentBytes = 64 << 20
	minWALSegmentBytes     = 1 << 20
	maxWALSegmentBytes     = 1 << 30
)

// watchConfig is the watch hub's configuration from cfg.
func (cfg Config) watchConfig() WatchConfig {
	return WatchConfig{
		HistoryBytes:     cfg.WatchHistoryBytes,
		HistoryEvents:    cfg.WatchHistoryEvents,
		Buffer:           cfg.WatchBuffer,
		ProgressInterval: cfg.WatchProgressInterval,
		Logger:           cfg.Logger,
	}
}

// raftConfig builds raft's configuration from cfg (defaults applied).
func (cfg Config) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLease
	if cfg.HeartbeatTimeout < rc.CommitTimeout {
		rc.CommitTimeout = cfg.HeartbeatTimeout / 2
	}
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.BatchApplyCh = true
	// Group commit: the leader writes up to this many queued entries in one
	// append to its log store (one fsync with raft-wal, a bbolt transaction
	// with raft-boltdb) and sends as many in one AppendEntries, which a
	// follower also stores in one append. Still
	// one command per entry (a lock's fencing token is its entry's index).
	// With 1000 concurrent puts, 256 instead of raft's 64 cut the servers'
	// CPU per put by ~15% and raised throughput by half (kvctl bench).
	// Entries are bounded by --max-request-bytes; mind that a batch of large
	// values is one large message.
	rc.MaxAppendEntries = 256
	return rc
}

// Node is one kvd member: raft, its stores, the fsm, and the peer port
// (Raft and the Internal service). Clients reach it through package api.
type Node struct {
	cfg    Config
	log    *slog.Logger
	base   time.Time // monotonic origin of clock()
	limits *kvpb.StateLimits

	fsm     *fsm.FSM
	adapter *fsmAdapter
	watch   *WatchHub

	raft     *raft.Raft
	trans    raft.Transport
	logStore raft.LogStore
	stores   *stores    // nil with InMemoryStore
	disk     *diskGuard // nil with InMemoryStore
	snaps    *spaceSnapshots
	dataLock *os.File // flock on the data dir while open
	notifyCh chan bool

	mux      *peerMux     // nil with an in-memory transport
	internal *grpc.Server // the Internal service, on the peer port
	peers    *peerPool

	reads      readBatcher
	keepAlives keepAliveBatcher
	hasher     stateHasher
	metrics    *metrics

	mu      sync.Mutex
	epoch   *epoch // non-nil while leader
	started bool   // Start was called
	serving bool   // Start succeeded
	stopped bool

	ctx    context.Context // ends at Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New validates cfg; it does no I/O.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	l := cfg.Limits
	n := &Node{
		cfg:  cfg,
		log:  cfg.Logger.With("node", cfg.Name),
		base: time.Now(),
		limits: &kvpb.StateLimits{
			MaxWaitersPerLock:  uint32(l.MaxWaitersPerLock),
			MaxLocksPerSession: uint32(l.MaxLocksPerSession),
			CacheMaxBytes:      uint64(l.CacheMaxBytes),
			MaxDedupResults:    uint32(l.MaxDedupResults),
			MaxSessions:        uint32(l.MaxSessions),
			MaxLocks:           uint32(l.MaxLocks),
			MaxLockDelayMs:     l.MaxLockDelay.Milliseconds(),
		},
		metrics: newMetrics(),
	}
	n.reads.n = n
	n.keepAlives.n = n
	return n, nil
}

// Name is the node's name (its Raft server ID).
func (n *Node) Name() string { return n.cfg.Name }

// Limits are the node's request limits (defaults applied).
func (n *Node) Limits() Limits { return n.cfg.Limits }

// ElectionTimeout is raft's election timeout: the unit of "how long until
// another leader may be in office".
func (n *Node) ElectionTimeout() time.Duration { return n.cfg.ElectionTimeout }

// Done is closed when the node begins to shut down.
func (n *Node) Done() <-chan struct{} { return n.ctx.Done() }

// FSM is the node's state machine: read it, never apply to it.
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// WatchHub serves this member's watchers from its history of changes.
func (n *Node) WatchHub() *WatchHub { return n.watch }

// watchReadIndex is the hub's ReadIndexFunc: a read index from the leader,
// once this node has applied (and so published) every entry up to it.
func (n *Node) watchReadIndex(ctx context.Context) (uint64, error) {
	index, _, _, err := n.readIndex(ctx)
	if err != nil {
		return 0, err
	}
	if err := n.WaitApplied(ctx, index); err != nil {
		return 0, err
	}
	return index, nil
}

// Raft exposes the raft instance (tests).
func (n *Node) Raft() *raft.Raft { return n.raft }

// clock is the node's monotonic clock plus TestClockOffset, in ns since the
// node was created. Only differences of it are meaningful.
func (n *Node) clock() int64 {
	return n.clockRate(int64(time.Since(n.base) + n.cfg.TestClockOffset))
}

// wallNow is the wall clock (plus TestClockOffset); it only seeds log time.
func (n *Node) wallNow() int64 {
	return time.Now().Add(n.cfg.TestClockOffset).UnixNano()
}

// Start opens the stores, listens on the peer port and starts raft
// (bootstrapping if needed). It returns once raft runs; it does not wait
// for a leader.
func (n *Node) Start() (err error) {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("node: already started")
	}
	n.started = true
	n.mu.Unlock()

	n.ctx, n.cancel = context.WithCancel(context.Background())
	var closers []func()
	defer func() {
		if err != nil {
			n.cancel()
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
		var ce *CorruptError
		if errors.As(err, &ce) && ce.Advice == "" {
			ce.Advice = corruptAdvice(n.cfg.DataDir, n.cfg.Name)
		}
	}()

	hlog := newHCLogger(n.log, "raft")
	rc := n.cfg.raftConfig()
	rc.Logger = hlog
	n.notifyCh = make(chan bool, 16)
	rc.NotifyCh = n.notifyCh

	logs, stable, snaps, closeStores, err := n.openStores(hlog)
	if err != nil {
		return err
	}
	closers = append(closers, closeStores)
	n.logStore = logs

	dialer := &peerDialer{dial: n.cfg.Dialer, direct: n.cfg.Transport != nil}
	var serverTLS func() *tls.Config
	if n.cfg.PeerTLS != nil {
		dialer.tls = n.peerClientTLS
		serverTLS = n.peerServerTLS
	}
	n.peers = newPeerPool(dialer)
	closers = append(closers, n.peers.close)

	// The peer port: Raft and the Internal service behind one listener.
	var internalLis net.Listener
	if n.cfg.Transport != nil {
		n.trans = n.cfg.Transport
		internalLis = n.cfg.PeerListener
	} else {
		advertise, err := net.ResolveTCPAddr("tcp", n.cfg.PeerAddr)
		if err != nil {
			return fmt.Errorf("peer address %s: %w", n.cfg.PeerAddr, err)
		}
		lis, err := net.Listen("tcp", n.cfg.PeerAddr)
		if err != nil {
			return fmt.Errorf("listen on peer address %s: %w", n.cfg.PeerAddr, err)
		}
		n.mux = newPeerMux(lis, serverTLS, func(msg string, args ...any) { n.log.Warn(msg, args...) })
		closers = append(closers, n.mux.close)
		tc := &raft.NetworkTransportConfig{
			Stream:  &raftLayer{subListener: n.mux.raft, advertise: advertise, dialer: dialer},
			Logger:  hlog.Named("transport"),
			MaxPool: 3,
			Timeout: 10 * time.Second,
		}
		if len(n.cfg.TestPeerDialAddrs) > 0 {
			// Peers without an override fall back to their configured
			// address (raft logs a warning each time: name every peer).
			// Raft also asks for this node's own ID on every
			// AppendEntries: answer with its own address.
			over := maps.Clone(n.cfg.TestPeerDialAddrs)
			if _, ok := over[n.cfg.Name]; !ok {
				over[n.cfg.Name] = advertise.String()
			}
			tc.ServerAddressProvider = dialOverrides(over)
		}
		t := raft.NewNetworkTransportWithConfig(tc)
		n.trans = mainLoopHeartbeats{t}
		closers = append(closers, func() { t.Close() })
		internalLis = n.mux.grpc
	}

	// State machine, watch hub and raft.
	n.fsm = fsm.New()
	// Entries already in the log at start are replayed: their handoffs were
	// observed by the process that applied them first.
	replayTo, err := logs.LastIndex()
	if err != nil {
		return fmt.Errorf("read raft log: %w", err)
	}
	n.fsm.OnLockHandoff(func(index uint64, gap int64) {
		if index > replayTo {
			n.metrics.lockHandoff.Observe(float64(gap) / 1e9)
		}
	})
	n.watch = NewWatchHub(n.cfg.watchConfig(), n.fsm, n.watchReadIndex)
	closers = append(closers, n.watch.Close)
	n.adapter = newFSMAdapter(n)
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("read raft state: %w", err)
	}
	listed, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if n.disk != nil {
		if err := checkSnapshotDirs(n.cfg.DataDir, listed); err != nil {
			return err
		}
	}
	if !existing && !n.cfg.Join && len(n.cfg.InitialCluster) > 0 {
		var conf raft.Configuration
		for _, p := range n.cfg.InitialCluster {
			conf.Servers = append(conf.Servers, raft.Server{
				Suffrage: raft.Voter,
				ID:       raft.ServerID(p.Name),
				Address:  raft.ServerAddress(p.PeerAddr),
			})
		}
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, n.trans, conf); err != nil {
			return fmt.Errorf("bootstrap cluster: %w", dataDirErr(n.cfg.DataDir, err))
		}
	}
	r, err := raft.NewRaft(rc, n.adapter, logs, stable, snaps, n.trans)
	if err != nil {
		if cerr := n.checkRestored(listed); cerr != nil {
			return cerr
		}
		return fmt.Errorf("start raft: %w", dataDirErr(n.cfg.DataDir, err))
	}
	closers = append(closers, func() { r.Shutdown().Error() })
	if err := n.checkRestored(listed); err != nil {
		return err
	}
	n.raft = r
	n.adapter.afterRestore() // raft may have restored a snapshot in NewRaft
	n.watchLeaders()
	if n.disk != nil {
		// From now on store writes wait for space, and a member whose log
		// cannot append stands for no election.
		n.disk.setRaft(r)
		n.goFunc(n.disk.run)
	}
	if n.mux != nil {
		// Accept only now: the member check of peer TLS asks raft.
		n.goFunc(n.mux.serve)
	}

	// The Internal service. Peer TLS, when on, was set up by the mux.
	n.internal = grpc.NewServer(append(ServerOptions(peerMaxConcurrentStreams),
		grpc.MaxRecvMsgSize(n.cfg.Limits.MaxRequestBytes+(64<<10)),
	)...)
	kvpb.RegisterInternalServer(n.internal, &internalService{n: n})
	n.goFunc(n.runLeadership)
	n.goFunc(n.runMemberRegistration)
	n.goFunc(func() {
		if err := n.internal.Serve(internalLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.log.Error("internal service stopped", "err", err)
		}
	})
	n.mu.Lock()
	n.serving = true
	n.mu.Unlock()
	n.log.Info("kvd node started", "client_addr", n.cfg.ClientAddr, "peer_addr", string(n.trans.LocalAddr()),
		"peer_tls", n.cfg.PeerTLS != nil, "existing_state", existing)
	return nil
}

// openStores opens the log, stable and snapshot stores (in memory, or in
// the data dir under its lock, watched by a diskGuard), and returns a func
// that closes them.
func (n *Node) openStores(hlog hclog.Logger) (raft.LogStore, raft.StableStore, *spaceSnapshots, func(), error) {
	if n.cfg.InMemoryStore {
		s := raft.NewInmemStore()
		n.snaps = &spaceSnapshots{SnapshotStore: raft.NewInmemSnapshotStore()}
		return timedLogStore{s, n.metrics.logAppend}, s, n.snaps, func() {}, nil
	}
	dir := n.cfg.DataDir
	if err := ensureDataDir(dir); err != nil {
		return nil, nil, nil, nil, err
	}
	lock, err := lockDataDir(dir)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	kind, err := chooseLogStore(dir, n.cfg.LogStore)
	if err != nil {
		lock.Close()
		return nil, nil, nil, nil, err
	}
	// Room for a couple of entries of the largest size in flight, and for
	// the stores' metadata to grow.
	slack := 2*int64(n.cfg.Limits.MaxRequestBytes) + 1<<20
	var snaps *spaceSnapshots
	newestSnapshot := func() int64 {
		if snaps == nil {
			return 0
		}
		if l, err := snaps.List(); err == nil && len(l) > 0 {
			return l[0].Size
		}
		return 0
	}
	g := newDiskGuard(dir, n.cfg.Name, n.log, n.cfg.QuotaBytes, logReserve(kind, n.cfg.WALSegmentBytes), slack,
		n.cfg.TestDiskReserve, newestSnapshot)
	st, err := openStores(dir, kind, hlog, n.metrics.logFsync, g, n.cfg.WALSegmentBytes)
	if err != nil {
		lock.Close()
		return nil, nil, nil, nil, err
	}
	closeAll := func() { g.stop(); st.close(); lock.Close() }
	n.log.Info("raft log store", "kind", kind, "dir", dir)
	if err := removeUnfinishedSnapshots(dir, n.log); err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	fss, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hlog.Named("snapshot"))
	if err != nil {
		closeAll()
		return nil, nil, nil, nil, fmt.Errorf("open snapshot store in %s: %w", dir, dataDirErr(dir, err))
	}
	snaps = &spaceSnapshots{SnapshotStore: fss, g: g}
	logs := newTailCache(timedLogStore{st.logs, n.metrics.logAppend}, tailCacheEntries, tailCacheBytes)
	g.check() // refuse writes from the start if there is no room
	n.stores = st
	n.dataLock = lock
	n.disk = g
	n.snaps = snaps
	return logs, st.stable, snaps, closeAll, nil
}

// checkRestored makes sure raft restored the newest snapshot in NewRaft.
// When the newest cannot be opened or restored, raft quietly falls back to
// an older one (whose following log may be gone) or fails with "failed to
// load any existing snapshots": say which snapshot is damaged instead.
func (n *Node) checkRestored(listed []*raft.SnapshotMeta) error {
	ids, errs := n.snaps.opened()
	if n.disk == nil || len(listed) == 0 {
		return nil
	}
	newest := listed[0]
	if len(ids) == 0 || ids[0] != newest.ID {
		return nil // raft restored nothing (or not in this order): nothing to judge
	}
	dir := filepath.Join(n.cfg.DataDir, "snapshots", newest.ID)
	where := fmt.Sprintf("snapshot at index %d", newest.Index)
	if err := errs[newest.ID]; err != nil {
		what := err.Error()
		if what == "CRC mismatch" {
			what = "its contents do not match the CRC-64 in meta.json"
		}
		return &CorruptError{File: filepath.Join(dir, "state.bin"), Offset: -1, Index: where, What: what}
	}
	if rerr := n.adapter.firstRestoreErr(); rerr != nil {
		return &CorruptError{File: filepath.Join(dir, "state.bin"), Offset: -1, Index: where,
			What: "it cannot be restored: " + rerr.Error()}
	}
	return nil
}

// goFunc runs f in a goroutine owned by the node; Shutdown waits for it.
func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// ensureDataDir creates dir and checks that it is writable.
func ensureDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".kvd-write-check-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	// The data dir's own entry, if MkdirAll just made it.
	return syncDir(filepath.Dir(filepath.Clean(dir)))
}

// dialOverrides is the raft.ServerAddressProvider for TestPeerDialAddrs:
// an override address for a peer name, or an error so raft dials the
// address in its configuration.
type dialOverrides map[string]string

func (d dialOverrides) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := d[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	return "", errors.New("no override")
}

// Shutdown stops the node's loops, the Internal service and raft, and
// closes the stores. In-flight peer calls get until ctx ends to finish.
// Stop the api server in front of the node first.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	if !n.serving || n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.mu.Unlock()

	// Stop loops and long waits first so GracefulStop is not held up.
	n.cancel()
	if n.disk != nil {
		// Store writes waiting for space give up, so that raft can stop.
		// (If one was storing raft's term, raft panics: the term was never
		// stored nor used, so nothing is lost.)
		n.disk.stop()
	}
	done := make(chan struct{})
	go func() {
		n.internal.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		n.internal.Stop()
		<-done
	}

	var errs []error
	if err := n.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
	}
	if c, ok := n.trans.(raft.WithClose); ok && n.cfg.Transport == nil {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close transport: %w", err))
		}
	}
	if n.mux != nil {
		n.mux.close()
	}
	n.wg.Wait()
	if n.stores != nil {
		if err := n.stores.close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log: %w", err))
		}
	}
	if n.dataLock != nil {
		n.dataLock.Close()
	}
	n.watch.Close()
	n.peers.close()
	n.log.Info("kvd node stopped")
	return errors.Join(errs...)
}

// PeerAddr is the address the peer port listens on.
func (n *Node) PeerAddr() string {
	if n.mux != nil {
		return n.mux.lis.Addr().String()
	}
	return n.cfg.PeerAddr
}

// IsLeader reports whether this node is leader and has finished taking office
// (barrier and recover applied), so it accepts proposals.
func (n *Node) IsLeader() bool {
	e := n.currentEpoch()
	if e == nil {
		return false
	}
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}
