package api

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// CONTRACT STUB: signatures are fixed; bodies to be written.

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
}

// Config configures a Node. Validate reports the first bad field.
type Config struct {
	Name       string
	DataDir    string
	ClientAddr string // gRPC listen address
	PeerAddr   string // Raft listen (and advertised) address
	// AdvertiseClientAddr is the client address other nodes and clients are
	// told about; default ClientAddr.
	AdvertiseClientAddr string

	// InitialCluster bootstraps an empty data dir. Ignored when the data dir
	// already holds Raft state, or when Join is set.
	InitialCluster []Peer
	// Join: start empty and wait to be added by `kvctl cluster add`.
	Join bool

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

	// --- Testing hooks. Never set in production: kvd exposes them only
	// behind flags named --test-*. ---

	// TestClockOffset shifts this node's clock (monotonic and wall).
	TestClockOffset time.Duration
	// TestPeerDialAddrs overrides the address dialled for a peer (by name):
	// the fault harness routes each directed link through its own proxy.
	TestPeerDialAddrs map[string]string

	// --- In-process tests only. ---

	// Transport replaces the TCP Raft transport (raft.NewInmemTransport).
	Transport raft.Transport
	// ClientListener replaces listening on ClientAddr (bufconn).
	ClientListener net.Listener
	// Dialer replaces net.Dial for node-to-node gRPC (forwarding).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// InMemoryStore uses raft's in-memory log and snapshot stores.
	InMemoryStore bool
}

// Node is one kvd server: raft, its stores, the fsm and the gRPC services.
type Node struct{}

// NewNode validates cfg; it does no I/O.
func NewNode(cfg Config) (*Node, error) { panic("unimplemented") }

// Start opens the stores, starts raft (bootstrapping if needed) and serves gRPC.
// It returns once serving; it does not wait for a leader.
func (n *Node) Start() error { panic("unimplemented") }

// Shutdown stops serving, then stops raft and closes the stores.
func (n *Node) Shutdown(ctx context.Context) error { panic("unimplemented") }

// ClientAddr is the address the gRPC server listens on.
func (n *Node) ClientAddr() string { panic("unimplemented") }

// Raft exposes the raft instance (tests, status).
func (n *Node) Raft() *raft.Raft { panic("unimplemented") }
