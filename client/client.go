package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Config configures a Client. The zero value of every field but Endpoints
// has a documented default.
type Config struct {
	// Endpoints are client (gRPC) addresses of cluster members.
	Endpoints []string
	// DialTimeout bounds connecting to one endpoint. Default 2s.
	DialTimeout time.Duration
	// SessionTTL is the TTL of the client's own session, used to make plain
	// writes exactly-once. Default 60s.
	SessionTTL time.Duration
	// Dialer replaces net.Dial (tests use it for bufconn). Optional.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Logger; default slog.Default().
	Logger *slog.Logger

	// AttemptTimeout bounds one attempt of a request on one member (calls
	// that wait on the server, Acquire and Fill, get their wait on top).
	// When it passes, the request is retried elsewhere, with the same
	// sequence number for a write. Default 5s.
	AttemptTimeout time.Duration

	// TLS, when set, makes every connection TLS with this configuration
	// (TLSFromFiles makes one from PEM files). With no ServerName, each
	// endpoint's host is verified against the server's certificate. nil:
	// plaintext.
	TLS *tls.Config
	// Username and Password sign the client in: it exchanges them for a
	// token (Auth.Authenticate) on first use and sends the token with every
	// request, and when a token expires it signs in again once and retries.
	// With a client certificate whose CN names the user, leave them empty.
	// A password crosses the network only over TLS: without Config.TLS,
	// every endpoint must be a loopback address.
	Username string
	Password string
	// UnreachableTimeout, when positive, ends a request early with
	// ErrUnavailable (nothing was applied) once every endpoint it may use
	// has refused a connection and this long has passed since it began;
	// the error names the endpoints. A request that reached any member,
	// even one answering that there is no leader yet, still retries until
	// its context ends, so leader elections and a cluster with some members
	// down are ridden through as before. 0 (the default): every request
	// retries until its context ends. kvctl uses 1s.
	UnreachableTimeout time.Duration
	// NoPipeline sends every call as a unary gRPC call of its own instead
	// of over the connection's Pipeline stream (see pipeline.go): for a
	// comparison, or a proxy in between that handles only unary calls.
	NoPipeline bool
}

// Defaults of Config.
const (
	DefaultDialTimeout    = 2 * time.Second
	DefaultSessionTTL     = 60 * time.Second
	DefaultAttemptTimeout = 5 * time.Second
)

// Validate reports the first bad field of cfg.
func (cfg Config) Validate() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("client: Config.Endpoints: no endpoint")
	}
	for i, e := range cfg.Endpoints {
		if e == "" {
			return fmt.Errorf("client: Config.Endpoints[%d] is empty", i)
		}
	}
	switch {
	case cfg.DialTimeout < 0:
		return fmt.Errorf("client: Config.DialTimeout %v is negative", cfg.DialTimeout)
	case cfg.SessionTTL < 0:
		return fmt.Errorf("client: Config.SessionTTL %v is negative", cfg.SessionTTL)
	case cfg.AttemptTimeout < 0:
		return fmt.Errorf("client: Config.AttemptTimeout %v is negative", cfg.AttemptTimeout)
	case cfg.Password != "" && cfg.Username == "":
		return errors.New("client: Config.Password is set without Config.Username")
	case cfg.UnreachableTimeout < 0:
		return fmt.Errorf("client: Config.UnreachableTimeout %v is negative", cfg.UnreachableTimeout)
	}
	if cfg.Username != "" && cfg.TLS == nil {
		for _, e := range cfg.Endpoints {
			if !isLoopback(e) {
				return fmt.Errorf("client: Config.Username: the password would cross the network in the clear to %q; set Config.TLS", e)
			}
		}
	}
	return nil
}

func (cfg *Config) setDefaults() {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
}

// Client talks to a kvd cluster. It is safe for concurrent use.
//
// Requests go to the last known leader (learned from the leader hints in
// error answers, and from Status and Members answers); when none is known
// they go round-robin over the endpoints. Any member forwards what it cannot
// serve itself, so a follower's answer is as good as the leader's.
type Client struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by address (watch connections: by watchConn's key)
	// watchStreams counts the open watch streams of each watch connection.
	watchStreams map[string]int
	endpoints    []string
	next         int    // round-robin position
	leader       string // last known leader's client address, "" if unknown
	closed       bool
	// isClosed's copy of closed: read by every request without c.mu.
	closedFlag atomic.Bool

	// suspect holds endpoints whose last attempt went unanswered (a timeout,
	// a broken connection), until when to prefer others: a member that
	// hangs (SIGSTOP) is not tried again right away, and its old leader
	// hints are not believed meanwhile.
	suspect map[string]time.Time

	// Leader discovery in the background (see discover).
	discovering  bool
	lastDiscover time.Time
	bg           context.Context
	stopBG       context.CancelFunc
	bgWG         sync.WaitGroup

	// The client's own session, for plain writes.
	own         *Session
	ownCreating chan struct{} // closed when a running creation ends

	// One KeepAliveStream per connection (keepalive.go), and the
	// connections whose member does not serve it.
	kaStreams  sync.Map // *grpc.ClientConn -> *kaStream; added under mu
	kaNoStream map[*grpc.ClientConn]bool
	kaTag      atomic.Uint64 // the last renewal's tag

	// One Pipeline stream per connection (pipeline.go): the pipeConn of
	// each connection, its stream, and the connections whose member does
	// not serve it.
	pipes       sync.Map // *grpc.ClientConn -> *pipeConn
	pipeStreams sync.Map // *grpc.ClientConn -> *pipeStream; added under mu
	pipeRefused map[*grpc.ClientConn]bool

	signIn     *signIn
	handshakes map[string]error // last TLS handshake failure by address; see recordingCreds
}

// New returns a client; it does no I/O (connections are made on first use).
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	c := &Client{
		cfg:         cfg,
		log:         cfg.Logger,
		conns:       make(map[string]*grpc.ClientConn),
		endpoints:   append([]string(nil), cfg.Endpoints...),
		signIn:      &signIn{user: cfg.Username, password: cfg.Password},
		suspect:     make(map[string]time.Time),
		kaNoStream:  make(map[*grpc.ClientConn]bool),
		pipeRefused: make(map[*grpc.ClientConn]bool),
	}
	c.bg, c.stopBG = context.WithCancel(context.Background())
	for _, e := range c.endpoints {
		if _, err := c.conn(e); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Close closes the client's own session (best effort, waiting at most a
// second) and its connections. Calls made after Close fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	own := c.own
	c.own = nil
	c.mu.Unlock()
	if own != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		own.Close(ctx) // best effort: the server expires it anyway
		cancel()
	}
	c.mu.Lock()
	c.closed = true
	c.closedFlag.Store(true)
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	c.stopBG()
	c.bgWG.Wait()
	var errs []error
	for _, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Client) isClosed() bool { return c.closedFlag.Load() }

// conn returns the connection to addr, making it (lazily: no I/O) if needed.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) { return c.connKey(addr, addr) }

// connKey returns the connection to addr known as key (addr itself for
// requests; see watchConn), making it if needed.
func (c *Client) connKey(key, addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[key]; ok {
		return cc, nil
	}
	creds := insecure.NewCredentials()
	if c.cfg.TLS != nil {
		creds = &recordingCreds{TransportCredentials: credentials.NewTLS(c.cfg.TLS.Clone()), c: c, addr: addr}
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithChainUnaryInterceptor(c.signIn.intercept),
		grpc.WithChainStreamInterceptor(c.signIn.interceptStream),
		grpc.WithInitialWindowSize(flowWindow),
		grpc.WithInitialConnWindowSize(flowConnWindow),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes), kvpb.CallCodec()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: c.cfg.DialTimeout,
		}),
	}
	if dial := c.dialer(addr); dial != nil {
		opts = append(opts, grpc.WithContextDialer(dial))
	}
	// passthrough: the address goes to the dialer as it is (no DNS
	// resolver in between), like grpc.Dial did.
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: endpoint %q: %w", addr, err)
	}
	c.conns[key] = cc
	return cc, nil
}

// pick returns the address the next attempt goes to: the last known
// leader, else the next endpoint round-robin that is not suspect (and then
// it starts finding out who leads, so that later requests skip the
// forwarding hop).
func (c *Client) pick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader != "" {
		return c.leader
	}
	now := time.Now()
	addr := c.endpoints[c.next%len(c.endpoints)]
	for i := 0; i < len(c.endpoints); i++ {
		a := c.endpoints[(c.next+i)%len(c.endpoints)]
		if now.After(c.suspect[a]) {
			addr = a
			c.next += i
			break
		}
	}
	c.next++
	c.discoverLocked(addr)
	return addr
}

// suspectFor is how long an endpoint that left an attempt unanswered is
// passed over: about the time a cluster takes to elect a new leader.
const suspectFor = 2 * time.Second

// isSuspect reports whether addr left an attempt unanswered lately.
func (c *Client) isSuspect(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Before(c.suspect[addr])
}

// discoverMinInterval spaces background leader discoveries.
const discoverMinInterval = 100 * time.Millisecond

// discoverLocked asks addr in the background who leads (Cluster.Status),
// unless a discovery is running or ran recently. c.mu is held.
func (c *Client) discoverLocked(addr string) {
	if c.closed || c.discovering || time.Since(c.lastDiscover) < discoverMinInterval {
		return
	}
	c.discovering = true
	c.lastDiscover = time.Now()
	c.bgWG.Add(1)
	go func() {
		defer c.bgWG.Done()
		ctx, cancel := context.WithTimeout(c.bg, c.cfg.DialTimeout)
		defer cancel()
		var leader string
		if cc, err := c.conn(addr); err == nil {
			st, err := kvpb.NewClusterClient(cc).Status(ctx, &kvpb.StatusRequest{SkipStateHash: true})
			if err == nil {
				leader = st.GetLeaderAddr()
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.discovering = false
		if leader != "" && c.leader == "" && !c.closed {
			c.leader = leader
		}
	}()
}

// Leader returns the client address of the last known leader, "" when the
// client does not know one.
func (c *Client) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// setLeader records a leader hint.
func (c *Client) setLeader(addr string) {
	if addr == "" {
		return
	}
	c.mu.Lock()
	c.leader = addr
	c.mu.Unlock()
}

// noteFailure updates the leader from a failed attempt on addr: a hint
// wins; with none, a retryable failure means addr may not lead any more.
func (c *Client) noteFailure(addr string, r attemptResult) {
	if r.leaderAddr != "" && r.leaderAddr != addr && !c.isSuspect(r.leaderAddr) {
		c.setLeader(r.leaderAddr)
		return
	}
	if r.class == classFinal {
		return
	}
	c.mu.Lock()
	if c.leader == addr {
		c.leader = ""
	}
	if r.unanswered {
		c.suspect[addr] = time.Now().Add(suspectFor)
	}
	c.mu.Unlock()
}

// ---------------------------------------------------------------------------
// Options

// OpOption is an optional per-call setting.
type OpOption func(*opOptions)

type opOptions struct {
	ttl             time.Duration
	expectedVersion *uint64
	fence           *kvpb.Fence
	consistency     kvpb.Consistency
	limit           int
	startAfter      []byte
	keysOnly        bool
	skipStateHash   bool
	lockValue       []byte
	session         uint64
	ifAbsent        bool
}

func applyOpts(opts []OpOption) opOptions {
	var o opOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithLockValue is the value an Acquire asks to hold the lock with: an
// election candidate's value, the lock's value while its session holds it
// (see Session.Proclaim).
func WithLockValue(v []byte) OpOption { return func(o *opOptions) { o.lockValue = v } }

// WithTTL gives a put key a time to live.
func WithTTL(d time.Duration) OpOption { return func(o *opOptions) { o.ttl = d } }

// WithExpectedVersion makes a put or delete a compare-and-set on the key's
// version (0: the key must not exist).
func WithExpectedVersion(v uint64) OpOption { return func(o *opOptions) { o.expectedVersion = &v } }

// WithSession binds a put key to session id (a live session, such as one
// made with NewSession or CreateSession): the key is deleted, with a DELETE
// event, in the same entry that ends the session (close or expiry), the way
// a service registration disappears with its owner. A later put without
// WithSession unbinds the key; one naming another session rebinds it. This
// is independent of which session makes the put exactly-once.
func WithSession(id uint64) OpOption { return func(o *opOptions) { o.session = id } }

// WithIfAbsent makes a put create the key only: if the key exists the put
// is refused with ErrKeyExists, unless (with WithSession) the key is
// already bound to that same session, so that a registration can be
// repeated by its owner.
func WithIfAbsent() OpOption { return func(o *opOptions) { o.ifAbsent = true } }

// WithFence makes a write conditional on token still holding lock.
func WithFence(lock []byte, token uint64) OpOption {
	return func(o *opOptions) { o.fence = &kvpb.Fence{Lock: lock, Token: token} }
}

// WithStale serves a read from the receiving node's local state.
func WithStale() OpOption {
	return func(o *opOptions) { o.consistency = kvpb.Consistency_CONSISTENCY_STALE }
}

// WithoutStateHash makes Status leave state_hash empty, sparing the member a
// hash of its whole state (for callers that want its other fields often).
func WithoutStateHash() OpOption { return func(o *opOptions) { o.skipStateHash = true } }

// WithLimit bounds a List; WithStartAfter continues one; WithKeysOnly omits values.
func WithLimit(n int) OpOption         { return func(o *opOptions) { o.limit = n } }
func WithStartAfter(k []byte) OpOption { return func(o *opOptions) { o.startAfter = k } }
func WithKeysOnly() OpOption           { return func(o *opOptions) { o.keysOnly = true } }

// ms converts a duration to whole milliseconds, rounding up a fraction so
// that 1ns does not become 0 (which means "none").
func ms(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// ---------------------------------------------------------------------------
// KV

func putRequest(key, value []byte, o opOptions) *kvpb.PutRequest {
	return &kvpb.PutRequest{Key: key, Value: value, TtlMs: ms(o.ttl), ExpectedVersion: o.expectedVersion, Fence: o.fence, Session: o.session, IfAbsent: o.ifAbsent}
}

func deletePrefixRequest(prefix []byte, o opOptions) *kvpb.DeleteRequest {
	return &kvpb.DeleteRequest{Key: prefix, Prefix: true, Fence: o.fence}
}

func touchRequest(key []byte, ttl time.Duration, o opOptions) *kvpb.TouchRequest {
	return &kvpb.TouchRequest{Key: key, TtlMs: ms(ttl), Fence: o.fence}
}

func sendTouch(req *kvpb.TouchRequest) writeFunc[*kvpb.TouchResponse] {
	return func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.TouchResponse, error) {
		req.Header = h
		return kvpb.NewKVClient(cc).Touch(ctx, req, opts...)
	}
}

func sendPut(req *kvpb.PutRequest) writeFunc[*kvpb.PutResponse] {
	return func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.PutResponse, error) {
		req.Header = h
		return kvpb.NewKVClient(cc).Put(ctx, req, opts...)
	}
}

func sendDelete(req *kvpb.DeleteRequest) writeFunc[*kvpb.DeleteResponse] {
	return func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.DeleteResponse, error) {
		req.Header = h
		return kvpb.NewKVClient(cc).Delete(ctx, req, opts...)
	}
}

func sendAdd(req *kvpb.AddRequest) writeFunc[*kvpb.AddResponse] {
	return func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.AddResponse, error) {
		req.Header = h
		return kvpb.NewKVClient(cc).Add(ctx, req, opts...)
	}
}

// Put writes key = value (options: WithTTL, WithExpectedVersion, WithFence,
// WithSession, WithIfAbsent). It is exactly-once through the client's own
// session: it is retried across leader changes until ctx ends and applied
// at most once. Errors: ErrVersionMismatch, ErrFenceFailed, ErrKeyExists
// (WithIfAbsent), ErrSessionExpired (WithSession of a session that is
// gone), ErrInvalidArgument, ErrIndeterminate (may have been applied),
// ErrUnavailable (was not).
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...OpOption) (*kvpb.PutResponse, error) {
	o := applyOpts(opts)
	return writeCmd(ctx, c, nil, 0, o.session != 0, sendPut(putRequest(key, value, o)))
}

// Get reads a key (linearizable; WithStale for a local read). A missing or
// expired key is ErrNotFound.
func (c *Client) Get(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.GetResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.GetRequest{Key: key, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.GetResponse, error) {
		return kvpb.NewKVClient(cc).Get(ctx, req, opts...)
	})
}

// Delete removes a key (WithExpectedVersion, WithFence), exactly-once like
// Put. Deleting a missing key is not an error: Deleted is 0.
func (c *Client) Delete(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.DeleteResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.DeleteRequest{Key: key, ExpectedVersion: o.expectedVersion, Fence: o.fence}
	return write(ctx, c, nil, 0, sendDelete(req))
}

// DeletePrefix removes every key that starts with prefix, in one entry
// (prefix empty: every key), exactly-once like Put; WithFence applies.
// Deleted in the answer is how many keys went. A watcher sees one DELETE
// event per key.
func (c *Client) DeletePrefix(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.DeleteResponse, error) {
	return write(ctx, c, nil, 0, sendDelete(deletePrefixRequest(prefix, applyOpts(opts))))
}

// Touch gives the existing key a new TTL counted from now (0: no TTL),
// keeping its value, version and mod index; WithFence applies. It is
// exactly-once like Put. A missing or expired key is ErrNotFound. The
// answer's Kv is the key after the touch, without its value; watchers see a
// TOUCH event.
func (c *Client) Touch(ctx context.Context, key []byte, ttl time.Duration, opts ...OpOption) (*kvpb.TouchResponse, error) {
	return write(ctx, c, nil, 0, sendTouch(touchRequest(key, ttl, applyOpts(opts))))
}

// List returns one page of keys with prefix, in key order (WithLimit,
// WithStartAfter, WithKeysOnly, WithStale). A page ends at the limit or at
// the server's response byte budget (--max-response-bytes), whichever
// comes first. More says another page exists: ask again WithStartAfter
// the last key.
func (c *Client) List(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.ListResponse, error) {
	o := applyOpts(opts)
	if o.limit < 0 {
		return nil, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf("kvd: limit %d is negative", o.limit), Field: "limit"}
	}
	req := &kvpb.ListRequest{Prefix: prefix, StartAfter: o.startAfter, Limit: uint32(min(o.limit, 1<<31)), KeysOnly: o.keysOnly, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.ListResponse, error) {
		return kvpb.NewKVClient(cc).List(ctx, req, opts...)
	})
}

// Add adds delta to the decimal int64 counter at key (absent: 0), exactly
// once (a retried Add never adds twice). ErrNotInteger if the value is not a
// decimal integer.
func (c *Client) Add(ctx context.Context, key []byte, delta int64, opts ...OpOption) (*kvpb.AddResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.AddRequest{Key: key, Delta: delta, Fence: o.fence}
	return write(ctx, c, nil, 0, sendAdd(req))
}

// ---------------------------------------------------------------------------
// Session-less calls

// CreateSession creates a session on the server and nothing else: no
// keepalives, no sequence numbers (NewSession does both). It is for tools
// such as kvctl that hand the id to someone else. ttl 0 means
// Config.SessionTTL.
func (c *Client) CreateSession(ctx context.Context, ttl time.Duration, name string) (*kvpb.CreateSessionResponse, error) {
	if ttl == 0 {
		ttl = c.cfg.SessionTTL
	}
	req := &kvpb.CreateSessionRequest{TtlMs: ms(ttl), Name: name}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.CreateSessionResponse, error) {
		return kvpb.NewSessionClient(cc).Create(ctx, req, opts...)
	})
}

// KeepAlive renews session id once (retried until ctx ends), over the
// connection's shared keepalive stream, as a Session renews itself.
// ErrSessionExpired if the server no longer has it.
func (c *Client) KeepAlive(ctx context.Context, id uint64) (*kvpb.KeepAliveResponse, error) {
	return read(selfTimed(ctx), c, 0, "", c.keepAliveSend(id))
}

// CloseSession closes session id on the server, releasing its locks.
// Closing a session that is already gone is not an error: the response is
// then empty (no header: the server had nothing to close).
func (c *Client) CloseSession(ctx context.Context, id uint64) (*kvpb.CloseSessionResponse, error) {
	req := &kvpb.CloseSessionRequest{Id: id}
	resp, err := read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.CloseSessionResponse, error) {
		return kvpb.NewSessionClient(cc).Close(ctx, req, opts...)
	})
	if errors.Is(err, ErrSessionExpired) || errors.Is(err, ErrNotFound) {
		return &kvpb.CloseSessionResponse{}, nil
	}
	return resp, err
}

// GetSession reads a session (WithStale). ErrNotFound or ErrSessionExpired
// when it is gone.
func (c *Client) GetSession(ctx context.Context, id uint64, opts ...OpOption) (*kvpb.GetSessionResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.GetSessionRequest{Id: id, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.GetSessionResponse, error) {
		return kvpb.NewSessionClient(cc).Get(ctx, req, opts...)
	})
}

// RenewLock keeps alive the session holding lock name with token.
// ErrStaleToken if token no longer holds it.
func (c *Client) RenewLock(ctx context.Context, name []byte, token uint64) (*kvpb.RenewResponse, error) {
	req := &kvpb.RenewRequest{Name: name, Token: token}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.RenewResponse, error) {
		return kvpb.NewLockClient(cc).Renew(ctx, req, opts...)
	})
}

// ProclaimAs sets the value of lock name, held with token by session, a
// session this client does not drive: the command that `kvctl elect` runs
// proclaims through the session of the kvctl that leads
// (KVD_ELECTION_SESSION). It is sent with seq 0, so it is not
// deduplicated, and is retried like a read: setting a value twice under
// one token is the same as setting it once. With auth on, the caller must
// own the session (or be an admin). ErrStaleToken when token is not the
// session's current grant.
func (c *Client) ProclaimAs(ctx context.Context, session uint64, name []byte, token uint64, value []byte) (*kvpb.ProclaimResponse, error) {
	req := &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: session}, Name: name, Token: token, Value: value}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.ProclaimResponse, error) {
		return kvpb.NewLockClient(cc).Proclaim(ctx, req, opts...)
	})
}

// GetLock reads a lock's state (WithStale). A lock the server knows
// nothing about is ErrNotFound.
func (c *Client) GetLock(ctx context.Context, name []byte, opts ...OpOption) (*kvpb.GetLockResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.GetLockRequest{Name: name, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.GetLockResponse, error) {
		return kvpb.NewLockClient(cc).Get(ctx, req, opts...)
	})
}

// ListLocks returns one page of the locks with prefix that are held or
// have waiters, in name order (WithLimit, WithStartAfter, WithStale). More
// says another page exists: ask again WithStartAfter the last name.
func (c *Client) ListLocks(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.ListLocksResponse, error) {
	o := applyOpts(opts)
	if o.limit < 0 {
		return nil, &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf("kvd: limit %d is negative", o.limit), Field: "limit"}
	}
	req := &kvpb.ListLocksRequest{Prefix: prefix, StartAfter: o.startAfter, Limit: uint32(min(o.limit, 1<<31)), Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.ListLocksResponse, error) {
		return kvpb.NewLockClient(cc).List(ctx, req, opts...)
	})
}

// BreakLock forcibly releases a lock (operator override), exactly-once
// through the client's own session.
func (c *Client) BreakLock(ctx context.Context, name []byte, reason string) (*kvpb.BreakResponse, error) {
	req := &kvpb.BreakRequest{Name: name, Reason: reason}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.BreakResponse, error) {
		req.Header = h
		return kvpb.NewLockClient(cc).Break(ctx, req, opts...)
	})
}

// CheckFence asks whether token still holds lock name (WithStale).
func (c *Client) CheckFence(ctx context.Context, name []byte, token uint64, opts ...OpOption) (*kvpb.CheckFenceResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.CheckFenceRequest{Lock: name, Token: token, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.CheckFenceResponse, error) {
		return kvpb.NewLockClient(cc).CheckFence(ctx, req, opts...)
	})
}

// CacheGet reads a cache entry and its state (WithStale). A miss is not an
// error: State is MISS.
func (c *Client) CacheGet(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.CacheGetResponse, error) {
	o := applyOpts(opts)
	req := &kvpb.CacheGetRequest{Key: key, Consistency: o.consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.CacheGetResponse, error) {
		return kvpb.NewCacheClient(cc).Get(ctx, req, opts...)
	})
}

// CacheSet stores a value in the cache directly (no fill lease), fresh for
// ttl and then served stale for stale more; exactly-once.
func (c *Client) CacheSet(ctx context.Context, key, value []byte, ttl, stale time.Duration) (*kvpb.CacheSetResponse, error) {
	req := &kvpb.CacheSetRequest{Key: key, Value: value, TtlMs: ms(ttl), StaleMs: ms(stale)}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.CacheSetResponse, error) {
		req.Header = h
		return kvpb.NewCacheClient(cc).Set(ctx, req, opts...)
	})
}

// Invalidate removes a cache entry, or every entry under a prefix;
// exactly-once.
func (c *Client) Invalidate(ctx context.Context, key []byte, prefix bool) (*kvpb.InvalidateResponse, error) {
	req := &kvpb.InvalidateRequest{Key: key, Prefix: prefix}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.InvalidateResponse, error) {
		req.Header = h
		return kvpb.NewCacheClient(cc).Invalidate(ctx, req, opts...)
	})
}

// CacheStats returns the cache counters of the member that answers.
func (c *Client) CacheStats(ctx context.Context) (*kvpb.CacheStatsResponse, error) {
	req := &kvpb.CacheStatsRequest{}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.CacheStatsResponse, error) {
		return kvpb.NewCacheClient(cc).Stats(ctx, req, opts...)
	})
}

// ---------------------------------------------------------------------------
// Cluster

// Status asks one specific member (its client address; dialled if it is not
// among the endpoints) about itself. Only connection failures are retried,
// on the same member, until ctx ends: give ctx a short deadline to find out
// whether a member is reachable. endpoint "" asks whichever member the
// client picks.
func (c *Client) Status(ctx context.Context, endpoint string, opts ...OpOption) (*kvpb.StatusResponse, error) {
	req := &kvpb.StatusRequest{SkipStateHash: applyOpts(opts).skipStateHash}
	resp, err := read(ctx, c, 0, endpoint, func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.StatusResponse, error) {
		return kvpb.NewClusterClient(cc).Status(ctx, req, opts...)
	})
	if err == nil {
		c.setLeader(resp.GetLeaderAddr())
	}
	return resp, err
}

// Members lists the cluster's members; the one marked leader becomes the
// client's preferred endpoint.
func (c *Client) Members(ctx context.Context) (*kvpb.MembersResponse, error) {
	resp, err := read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.MembersResponse, error) {
		return kvpb.NewClusterClient(cc).Members(ctx, &kvpb.MembersRequest{}, opts...)
	})
	if err == nil {
		for _, m := range resp.GetMembers() {
			if m.GetLeader() {
				c.setLeader(m.GetClientAddr())
			}
		}
	}
	return resp, err
}

// AddMember adds a member (a voter unless nonVoter). Repeating it is
// harmless, so it is retried like a read.
func (c *Client) AddMember(ctx context.Context, name, peerAddr string, nonVoter bool) (*kvpb.AddMemberResponse, error) {
	req := &kvpb.AddMemberRequest{Name: name, PeerAddr: peerAddr, NonVoter: nonVoter}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.AddMemberResponse, error) {
		return kvpb.NewClusterClient(cc).AddMember(ctx, req, opts...)
	})
}

// RemoveMember removes a member. It is retried only when it certainly was
// not applied; otherwise ErrIndeterminate.
func (c *Client) RemoveMember(ctx context.Context, name string) (*kvpb.RemoveMemberResponse, error) {
	req := &kvpb.RemoveMemberRequest{Name: name}
	return once(ctx, c, func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.RemoveMemberResponse, error) {
		return kvpb.NewClusterClient(cc).RemoveMember(ctx, req, opts...)
	})
}

// TransferLeader moves leadership to the named member ("" lets Raft pick).
// It is retried only when it certainly was not applied; otherwise
// ErrIndeterminate.
func (c *Client) TransferLeader(ctx context.Context, name string) (*kvpb.TransferLeaderResponse, error) {
	req := &kvpb.TransferLeaderRequest{Name: name}
	resp, err := once(ctx, c, func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.TransferLeaderResponse, error) {
		return kvpb.NewClusterClient(cc).TransferLeader(ctx, req, opts...)
	})
	if err == nil {
		// The old leader is no longer the leader; learn the new one lazily.
		c.mu.Lock()
		c.leader = ""
		c.mu.Unlock()
	}
	return resp, err
}

// Snapshot makes one member take a snapshot now: endpoint, or the member
// the client picks when endpoint is "".
func (c *Client) Snapshot(ctx context.Context, endpoint string) (*kvpb.SnapshotResponse, error) {
	return read(ctx, c, 0, endpoint, func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.SnapshotResponse, error) {
		return kvpb.NewClusterClient(cc).Snapshot(ctx, &kvpb.SnapshotRequest{}, opts...)
	})
}

// gRPC flow-control windows of the client's connections, as receiver. Fixed
// windows turn off gRPC's bandwidth-delay probing, whose PINGs add a round
// of packets and wake-ups to every call (see the same constants in api).
const (
	flowWindow     = 1 << 20
	flowConnWindow = 4 << 20
)

// maxResponseBytes is the largest answer the client accepts (gRPC's
// default is 4 MiB). A server pages lists at its --max-response-bytes,
// which it keeps at or below this (node.MaxClientResponseBytes).
const maxResponseBytes = 64 << 20
