package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// DefaultTTL is the session TTL when WithTTL is not given.
const DefaultTTL = 60 * time.Second

// Session is a server-side session that owns locks. It keeps itself alive
// (the client sends keepalives) until Close, or until the client can no
// longer be sure it is alive: then Done closes, strictly before the server
// can expire it, and every Mutex of the session reports itself lost.
// Safe for concurrent use.
type Session struct {
	c   *client.Client
	cs  *client.Session
	ttl time.Duration
}

// Option configures NewSession.
type Option func(*sessionOptions)

type sessionOptions struct {
	ttl  time.Duration
	name string
}

// WithTTL sets the session TTL (default DefaultTTL). The server releases the
// session's locks when it has heard no keepalive for this long; a shorter
// TTL hands a crashed holder's locks over sooner, a longer one rides out
// longer outages.
func WithTTL(d time.Duration) Option { return func(o *sessionOptions) { o.ttl = d } }

// WithName labels the session for people (kvctl session get, lock show).
func WithName(name string) Option { return func(o *sessionOptions) { o.name = name } }

// NewSession creates a session on the server and starts keeping it alive.
// It waits for the create command to be applied; it returns ctx's error if
// ctx ends first, or the client's error (client.ErrInvalidArgument for a TTL
// out of range, client.ErrUnavailable when no leader answered).
func NewSession(ctx context.Context, c *client.Client, opts ...Option) (*Session, error) {
	o := sessionOptions{ttl: DefaultTTL, name: "lock"}
	for _, opt := range opts {
		opt(&o)
	}
	if o.ttl <= 0 {
		return nil, fmt.Errorf("lock: session TTL %v: must be positive", o.ttl)
	}
	cs, err := c.NewSession(ctx, o.ttl, o.name)
	if err != nil {
		return nil, fmt.Errorf("lock: create session: %w", err)
	}
	return &Session{c: c, cs: cs, ttl: o.ttl}, nil
}

// ID is the server's session id: the holder named by `kvctl lock show`.
func (s *Session) ID() uint64 { return s.cs.ID() }

// TTL is the session's TTL.
func (s *Session) TTL() time.Duration { return s.ttl }

// Client is the client the session was made with.
func (s *Session) Client() *client.Client { return s.c }

// ClientSession is the underlying client session, for commands this package
// does not wrap (fenced puts under the session, cache fills).
func (s *Session) ClientSession() *client.Session { return s.cs }

// Done is closed when the client can no longer be sure the session is
// alive (strictly before the server can expire it), or after Close.
func (s *Session) Done() <-chan struct{} { return s.cs.Done() }

// Err says why Done closed: client.ErrSessionExpired when keepalives did not
// get through in time, context.Canceled after Close. Nil while Done is open.
func (s *Session) Err() error { return s.cs.Err() }

// Close stops the keepalives and closes the session on the server, which
// releases every lock it holds and takes it out of every line it waits in.
// It waits for the close to be applied and returns ctx's error or the
// client's; closing an expired session is not an error.
func (s *Session) Close(ctx context.Context) error {
	err := s.cs.Close(ctx)
	if errors.Is(err, client.ErrSessionExpired) {
		return nil
	}
	return err
}

// info is the last keepalive answer: its Locks list the locks held then.
func (s *Session) info() *kvpb.SessionInfo { return s.cs.Info() }

// acked is closed at the next acknowledged keepalive.
func (s *Session) acked() <-chan struct{} { return s.cs.Acked() }

// Deadline is when the client's view of the session ends unless a keepalive
// gets through first: strictly before the server can expire it.
func (s *Session) Deadline() time.Time { return s.cs.Deadline() }

// ServerDeadline is the earliest time the server may expire the session
// (client.Session.ServerDeadline): what the lock guards must stop by then.
func (s *Session) ServerDeadline() time.Time { return s.cs.ServerDeadline() }
