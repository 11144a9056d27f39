package api

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Backend is what the services need of a member: propose, read, wait, the
// fsm's read methods, and the cluster calls. *node.Node implements it; a
// service test can use a fake over a bare fsm.
type Backend interface {
	// Propose runs cmd through the log (forwarding to the leader) and
	// returns the fsm's result and where the entry landed (index and log
	// time, for WriteHeader).
	Propose(ctx context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, node.Applied, error)
	// Read prepares a read at a consistency: the time to judge expiry
	// against and the response header.
	Read(ctx context.Context, c kvpb.Consistency) (int64, *kvpb.ResponseHeader, error)
	// WaitApplied waits until the local state reflects index.
	WaitApplied(ctx context.Context, index uint64) error
	WriteHeader(index uint64, logTime int64) *kvpb.ResponseHeader
	LocalHeader() *kvpb.ResponseHeader
	AppliedIndex() uint64
	// FSM is the local state, for reads and change notifications.
	FSM() *fsm.FSM
	// WatchHub serves watches from the member's history of changes.
	WatchHub() *node.WatchHub
	// RenewSession renews a session with the next shared keepalive entry.
	RenewSession(ctx context.Context, id uint64) (*kvpb.CommandResult, node.Applied, error)
	// RenewSessionAsync queues the same renewal and answers on done, which
	// must have room for the answer (KeepAliveStream).
	RenewSessionAsync(id, tag uint64, done chan<- node.Renewal)
	Leader() (name, clientAddr string)
	// WriteHealth says whether the member takes writes that add data: a nil
	// error, or the refusal they get now (its data dir is full or over
	// quota); the channel closes at the next change.
	WriteHealth() (<-chan struct{}, error)
	Limits() node.Limits
	ElectionTimeout() time.Duration
	// Done is closed when the member shuts down.
	Done() <-chan struct{}

	Status(withHash bool) *kvpb.StatusResponse
	Members() ([]*kvpb.Member, error)
	AddMember(ctx context.Context, req *kvpb.AddMemberRequest) (uint64, error)
	RemoveMember(ctx context.Context, name string) (uint64, error)
	TransferLeader(ctx context.Context, name string) (string, error)
	Snapshot(ctx context.Context) (uint64, error)
	// ConsistentSnapshot captures the state at or after every acknowledged
	// write, for a backup.
	ConsistentSnapshot(ctx context.Context) (fsm.Snapshot, error)
}

var _ Backend = (*node.Node)(nil)

// Config configures a Server. The zero value serves plaintext.
type Config struct {
	// TLS, when set, serves TLS on the client port. Give it a
	// GetConfigForClient that reads the current certificate files so that
	// rotation needs no restart (cmd/kvd does). Verified client
	// certificates name users (their CN) once auth is enabled.
	TLS *tls.Config
	// TokenTTL is how long a token from Authenticate lasts; default 5m.
	TokenTTL time.Duration
	// BcryptCost hashes new passwords; default bcrypt.DefaultCost (10).
	BcryptCost int
	// MaxBcrypt bounds concurrent password hashes and checks, each of which
	// takes tens of milliseconds of a core; default 2.
	MaxBcrypt int
	Logger    *slog.Logger
}

// Server serves the client-facing gRPC services (KV, Session, Lock, Cache,
// Cluster, Auth, Watch, gRPC health and reflection) in front of a Backend. It never
// serves the Internal service: that lives on the peer port.
type Server struct {
	b      Backend
	limits node.Limits
	log    *slog.Logger

	tokenTTL   time.Duration
	bcryptCost int
	bcryptSem  chan struct{}

	grpc    *grpc.Server
	health  *health.Server
	stats   cacheCounters
	metrics *metrics

	// ctx ends when the server stops or the backend shuts down: long waits
	// (queued acquires, fills) watch it.
	ctx    context.Context
	cancel context.CancelFunc

	// streamRenewals, when positive, replaces maxStreamRenewals (tests).
	streamRenewals int

	// Pipelined calls (pipeline.go): the unary methods a Pipeline call may
	// name, the unary interceptors every call runs through, and the
	// goroutines that run them.
	pipeMethods   map[string]pipeMethod
	pipeIntercept grpc.UnaryServerInterceptor
	pipeWorkers   *workerPool

	mu       sync.Mutex
	stopping bool
	watching bool // watchWrites runs
}

// HealthWrites is the gRPC health service name that reports whether this
// member takes writes that add data: NOT_SERVING while its data dir is full
// or over its quota (reads, deletes and keepalives are still served). The
// overall status ("") stays SERVING then: the member still answers.
const HealthWrites = "kvd.writes"

// errStopping ends waits when the server stops.
var errStopping = errors.New("api: server stopping")

// New builds a Server; it does no I/O.
func New(b Backend, cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 5 * time.Minute
	}
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
	}
	if cfg.MaxBcrypt <= 0 {
		cfg.MaxBcrypt = 2
	}
	limits := b.Limits()
	s := &Server{b: b, limits: limits, log: cfg.Logger, tokenTTL: cfg.TokenTTL, bcryptCost: cfg.BcryptCost,
		bcryptSem: make(chan struct{}, cfg.MaxBcrypt), metrics: newMetrics()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go func() {
		select {
		case <-b.Done():
			s.cancel()
		case <-s.ctx.Done():
		}
	}()
	// Per connection: limits.MaxConcurrentStreams calls, keepalive and an
	// idle timeout (node.ServerOptions), and at most limits.MaxUnreadBytes
	// of answers its client has not read (unread.go).
	unary := []grpc.UnaryServerInterceptor{s.metrics.grpc.UnaryServerInterceptor(), s.unaryUnread, s.unaryAuth}
	s.pipeIntercept = chainUnary(unary)
	// Sized as gRPC's stream workers below, for ~1000 calls in flight: a
	// call finding none idle runs on a new goroutine, whose stack then
	// grows by copying (runtime.newstack was ~5% of the leader's CPU under
	// 1000 pipelined puts with 256 workers).
	s.pipeWorkers = &workerPool{size: 1024, done: s.ctx.Done()}
	opts := append(node.ServerOptions(uint32(limits.MaxConcurrentStreams)),
		grpc.MaxRecvMsgSize(limits.MaxRequestBytes),
		// Lists are paged at MaxResponseBytes; other answers are far smaller.
		grpc.MaxSendMsgSize(limits.MaxResponseBytes+1<<20),
		// A pool of goroutines with grown stacks serves the streams; a
		// request finding every worker busy gets a new goroutine, whose
		// stack then grows by copying (runtime.newstack was ~11% of the
		// leader's CPU under 1000 concurrent keepalives with 16 workers).
		// Writes and linearizable reads park their handler until a commit
		// or read index, so the pool is sized for ~1000 requests in
		// flight: idle workers cost a parked goroutine each, and the
		// collector shrinks their stacks. 16 -> 1024 workers: servers' CPU
		// per keepalive -6% and -8% in two interleaved pairs of runs.
		grpc.NumStreamWorkers(1024),
		// Metrics first, so calls that authentication refuses are counted;
		// then the unread-answer count, which sees every answer.
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor(), s.streamAuth),
	)
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	opts = append(opts, grpc.Creds(countingCreds{creds}))
	s.grpc = grpc.NewServer(opts...)
	services := map[*grpc.ServiceDesc]any{
		&kvpb.KV_ServiceDesc:      &kvService{n: s},
		&kvpb.Session_ServiceDesc: &sessionService{n: s},
		&kvpb.Lock_ServiceDesc:    &lockService{n: s},
		&kvpb.Cache_ServiceDesc:   &cacheService{n: s},
	}
	for desc, srv := range services {
		s.grpc.RegisterService(desc, srv)
	}
	s.pipeMethods = pipeMethods(services)
	kvpb.RegisterClusterServer(s.grpc, &clusterService{n: s})
	kvpb.RegisterAuthServer(s.grpc, &authService{n: s})
	kvpb.RegisterWatchServer(s.grpc, &watchService{n: s})
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s
}

// Serve serves lis until Stop; it returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.watchWrites()
	if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// watchWrites keeps the HealthWrites status in step with the backend until
// the server stops (which turns every status NOT_SERVING).
func (s *Server) watchWrites() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watching {
		return
	}
	s.watching = true
	set := func() <-chan struct{} {
		changed, refusal := s.b.WriteHealth()
		st := healthpb.HealthCheckResponse_SERVING
		if refusal != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		s.health.SetServingStatus(HealthWrites, st)
		return changed
	}
	changed := set()
	go func() {
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-changed:
				changed = set()
			}
		}
	}()
}

// Stop stops serving: health turns NOT_SERVING, long waits end, and
// in-flight calls get until ctx ends to finish before they are cut off.
// Stop the server before the node behind it.
func (s *Server) Stop(ctx context.Context) {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.stopping = true
	s.mu.Unlock()

	s.health.Shutdown()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
}
