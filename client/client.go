package client

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// CONTRACT STUB: signatures are fixed; bodies to be written.

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
}

// Client talks to a kvd cluster. It is safe for concurrent use.
type Client struct{}

// New returns a client; it does no I/O (connections are made on first use).
func New(cfg Config) (*Client, error) { panic("unimplemented") }

// Close closes the client's own session and its connections.
func (c *Client) Close() error { panic("unimplemented") }

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
}

// WithTTL gives a put key a time to live.
func WithTTL(d time.Duration) OpOption { return func(o *opOptions) { o.ttl = d } }

// WithExpectedVersion makes a put or delete a compare-and-set on the key's
// version (0: the key must not exist).
func WithExpectedVersion(v uint64) OpOption { return func(o *opOptions) { o.expectedVersion = &v } }

// WithFence makes a write conditional on token still holding lock.
func WithFence(lock []byte, token uint64) OpOption {
	return func(o *opOptions) { o.fence = &kvpb.Fence{Lock: lock, Token: token} }
}

// WithStale serves a read from the receiving node's local state.
func WithStale() OpOption {
	return func(o *opOptions) { o.consistency = kvpb.Consistency_CONSISTENCY_STALE }
}

// WithLimit bounds a List; WithStartAfter continues one; WithKeysOnly omits values.
func WithLimit(n int) OpOption         { return func(o *opOptions) { o.limit = n } }
func WithStartAfter(k []byte) OpOption { return func(o *opOptions) { o.startAfter = k } }
func WithKeysOnly() OpOption           { return func(o *opOptions) { o.keysOnly = true } }

// KV: writes are exactly-once through the client's own session.
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...OpOption) (*kvpb.PutResponse, error) {
	panic("unimplemented")
}
func (c *Client) Get(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.GetResponse, error) {
	panic("unimplemented")
}
func (c *Client) Delete(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.DeleteResponse, error) {
	panic("unimplemented")
}
func (c *Client) List(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.ListResponse, error) {
	panic("unimplemented")
}
func (c *Client) Add(ctx context.Context, key []byte, delta int64, opts ...OpOption) (*kvpb.AddResponse, error) {
	panic("unimplemented")
}

// Session is a server-side session plus its command sequence numbers. Every
// write made through it is exactly-once. It keeps itself alive until Close.
// Safe for concurrent use.
type Session struct{}

// NewSession creates a session with the TTL and starts keeping it alive.
func (c *Client) NewSession(ctx context.Context, ttl time.Duration, name string) (*Session, error) {
	panic("unimplemented")
}

// ID is the server's session id.
func (s *Session) ID() uint64 { panic("unimplemented") }

// Done is closed when the client can no longer be sure the session is alive:
// strictly before the server can expire it (send time of the last
// acknowledged keepalive + TTL - margin), or after Close.
func (s *Session) Done() <-chan struct{} { panic("unimplemented") }

// Err says why Done closed (ErrSessionExpired, context.Canceled after Close, ...).
func (s *Session) Err() error { panic("unimplemented") }

// Close stops keepalives and closes the session on the server, releasing its locks.
func (s *Session) Close(ctx context.Context) error { panic("unimplemented") }

// Lock commands under this session.
func (s *Session) Acquire(ctx context.Context, name []byte, wait, lockDelay time.Duration) (*kvpb.AcquireResponse, error) {
	panic("unimplemented")
}
func (s *Session) Release(ctx context.Context, name []byte, token uint64) (*kvpb.ReleaseResponse, error) {
	panic("unimplemented")
}
func (s *Session) CancelWait(ctx context.Context, name []byte) error { panic("unimplemented") }

// Cache commands under this session.
func (s *Session) Fill(ctx context.Context, key []byte, lease, wait time.Duration, opts ...OpOption) (*kvpb.FillResponse, error) {
	panic("unimplemented")
}
func (s *Session) Store(ctx context.Context, req *kvpb.StoreRequest) (*kvpb.StoreResponse, error) {
	panic("unimplemented")
}

// KV writes under this session (exactly-once, and ownership for fences).
func (s *Session) Put(ctx context.Context, key, value []byte, opts ...OpOption) (*kvpb.PutResponse, error) {
	panic("unimplemented")
}

// Session-less calls.
func (c *Client) KeepAlive(ctx context.Context, id uint64) (*kvpb.KeepAliveResponse, error) {
	panic("unimplemented")
}
func (c *Client) GetSession(ctx context.Context, id uint64, opts ...OpOption) (*kvpb.GetSessionResponse, error) {
	panic("unimplemented")
}
func (c *Client) RenewLock(ctx context.Context, name []byte, token uint64) (*kvpb.RenewResponse, error) {
	panic("unimplemented")
}
func (c *Client) GetLock(ctx context.Context, name []byte, opts ...OpOption) (*kvpb.GetLockResponse, error) {
	panic("unimplemented")
}
func (c *Client) ListLocks(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.ListLocksResponse, error) {
	panic("unimplemented")
}
func (c *Client) BreakLock(ctx context.Context, name []byte, reason string) (*kvpb.BreakResponse, error) {
	panic("unimplemented")
}
func (c *Client) CheckFence(ctx context.Context, name []byte, token uint64, opts ...OpOption) (*kvpb.CheckFenceResponse, error) {
	panic("unimplemented")
}
func (c *Client) CacheGet(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.CacheGetResponse, error) {
	panic("unimplemented")
}
func (c *Client) CacheSet(ctx context.Context, key, value []byte, ttl, stale time.Duration) (*kvpb.CacheSetResponse, error) {
	panic("unimplemented")
}
func (c *Client) Invalidate(ctx context.Context, key []byte, prefix bool) (*kvpb.InvalidateResponse, error) {
	panic("unimplemented")
}
func (c *Client) CacheStats(ctx context.Context) (*kvpb.CacheStatsResponse, error) {
	panic("unimplemented")
}

// Cluster.
func (c *Client) Status(ctx context.Context, endpoint string) (*kvpb.StatusResponse, error) {
	panic("unimplemented")
}
func (c *Client) Members(ctx context.Context) (*kvpb.MembersResponse, error) { panic("unimplemented") }
func (c *Client) AddMember(ctx context.Context, name, peerAddr string, nonVoter bool) (*kvpb.AddMemberResponse, error) {
	panic("unimplemented")
}
func (c *Client) RemoveMember(ctx context.Context, name string) (*kvpb.RemoveMemberResponse, error) {
	panic("unimplemented")
}
func (c *Client) TransferLeader(ctx context.Context, name string) (*kvpb.TransferLeaderResponse, error) {
	panic("unimplemented")
}
func (c *Client) Snapshot(ctx context.Context, endpoint string) (*kvpb.SnapshotResponse, error) {
	panic("unimplemented")
}

// Errors. Every error the client returns for a server answer is an *Error;
// errors.Is matches it against these by code.
var (
	ErrNotFound        error
	ErrVersionMismatch error
	ErrFenceFailed     error
	ErrStaleToken      error
	ErrSessionExpired  error
	ErrInvalidArgument error
	ErrLimitExceeded   error
	ErrNotInteger      error
	// ErrIndeterminate: the write may or may not have been applied.
	ErrIndeterminate error
	// ErrUnavailable: no member answered, or no leader, before ctx ended.
	ErrUnavailable error
)
