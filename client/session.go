package client

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Session is a server-side session plus its command sequence numbers. Every
// write made through it is exactly-once. It keeps itself alive until Close.
// Safe for concurrent use.
//
// The client keeps its own view of the lease, ending strictly before the
// server's: Deadline is the send time of the last acknowledged keepalive
// (or of the create) + TTL - margin, with margin = max(TTL/10, 100ms) (at
// most TTL/2). The server's deadline is its log time at apply + TTL, and
// log time never runs ahead of real time, so the server cannot expire the
// session before Deadline unless the two clocks drift apart by more than
// the margin within one TTL. Keepalives are sent every TTL/3; a failed one
// is retried quickly until Deadline.
type Session struct {
	c    *Client
	id   uint64
	ttl  time.Duration
	seqs seqTracker

	mu       sync.Mutex
	deadline time.Time
	info     *kvpb.SessionInfo
	err      error
	done     chan struct{}
	timer    *time.Timer   // fires at deadline
	closed   bool          // Close was called
	acked    chan struct{} // closed and replaced at each acknowledged keepalive

	stop   context.CancelFunc // stops the keepalive goroutine
	exited chan struct{}      // closed when it has returned
}

// leaseMargin is how much earlier than the server the client gives a
// session up.
func leaseMargin(ttl time.Duration) time.Duration {
	m := max(ttl/10, 100*time.Millisecond)
	return min(m, ttl/2)
}

// NewSession creates a session with the TTL (0: Config.SessionTTL) and
// starts keeping it alive. Creation is retried until ctx ends; an attempt
// whose answer was lost leaves an orphan session that the server expires
// after ttl. ctx bounds only the creation, not the session's life.
func (c *Client) NewSession(ctx context.Context, ttl time.Duration, name string) (*Session, error) {
	if ttl == 0 {
		ttl = c.cfg.SessionTTL
	}
	sent := time.Now()
	resp, err := c.CreateSession(ctx, ttl, name)
	if err != nil {
		return nil, err
	}
	info := resp.GetSession()
	if t := time.Duration(info.GetTtlMs()) * time.Millisecond; t > 0 && t < ttl {
		ttl = t
	}
	kctx, stop := context.WithCancel(context.Background())
	s := &Session{
		c:        c,
		id:       info.GetId(),
		ttl:      ttl,
		deadline: sent.Add(ttl - leaseMargin(ttl)),
		info:     info,
		acked:    make(chan struct{}),
		done:     make(chan struct{}),
		stop:     stop,
		exited:   make(chan struct{}),
	}
	s.mu.Lock()
	s.timer = time.AfterFunc(time.Until(s.deadline), s.onDeadline)
	s.mu.Unlock()
	go s.keepalive(kctx, sent)
	return s, nil
}

// ID is the server's session id.
func (s *Session) ID() uint64 { return s.id }

// TTL is the session's time to live.
func (s *Session) TTL() time.Duration { return s.ttl }

// Client is the client the session was made with.
func (s *Session) Client() *Client { return s.c }

// Done is closed when the client can no longer be sure the session is alive:
// strictly before the server can expire it (send time of the last
// acknowledged keepalive + TTL - margin), or after Close.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why Done closed (ErrSessionExpired, context.Canceled after Close, ...).
// It is nil while Done is open. When no keepalive was acknowledged before
// Deadline, Err matches both ErrSessionLost and ErrSessionExpired (and the
// last keepalive error when there was one).
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Deadline is the client's view of the end of the lease: until then the
// server certainly holds the session. It moves forward with every
// acknowledged keepalive.
func (s *Session) Deadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

// ServerDeadline is the earliest time the server may expire the session as
// far as this client knows: the send time of the last acknowledged
// keepalive (or of the create) + TTL. Whatever the session guards must have
// stopped by then.
func (s *Session) ServerDeadline() time.Time {
	return s.Deadline().Add(leaseMargin(s.ttl))
}

// Info is the session as of the last acknowledged keepalive (or the
// create): its Locks list the locks it held then.
func (s *Session) Info() *kvpb.SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// isDone reports whether Done is closed.
func (s *Session) isDone() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// ack records an acknowledged keepalive sent at sent.
func (s *Session) ack(sent time.Time, info *kvpb.SessionInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if dl := sent.Add(s.ttl - leaseMargin(s.ttl)); dl.After(s.deadline) {
		s.deadline = dl
		s.timer.Reset(time.Until(dl))
	}
	if info != nil {
		s.info = info
	}
	close(s.acked)
	s.acked = make(chan struct{})
}

// Acked returns a channel closed at the next acknowledged keepalive (then
// Info holds its answer). It stays open once the session has ended: watch
// Done as well.
func (s *Session) Acked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// expire closes Done with err (first reason wins) and stops keepalives.
func (s *Session) expire(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(err)
}

func (s *Session) expireLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
	s.timer.Stop()
	s.stop()
}

// onDeadline runs when the local lease deadline timer fires.
func (s *Session) onDeadline() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if d := time.Until(s.deadline); d > 0 {
		s.timer.Reset(d) // extended meanwhile
		return
	}
	s.expireLocked(&sessionLost{})
}

// keepalive renews the session every TTL/3 (counted from the send time of
// the last acknowledged one) until ctx is cancelled or the session ends.
func (s *Session) keepalive(ctx context.Context, lastSent time.Time) {
	defer close(s.exited)
	interval := s.ttl / 3
	t := time.NewTimer(time.Until(lastSent.Add(interval)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Retried until the local deadline; past it the session is lost
		// from the client's view anyway.
		sent := time.Now()
		resp, err := s.renew(ctx, s.Deadline())
		switch {
		case err == nil:
			s.ack(sent, resp.GetSession())
			lastSent = sent
			t.Reset(time.Until(lastSent.Add(interval)))
		case ctx.Err() != nil:
			return
		case isExpired(err):
			s.expire(err)
			return
		default:
			s.c.log.Debug("kvd session keepalive failed", "session", s.id, "err", err)
			s.expire(&sessionLost{cause: err})
			return
		}
	}
}

// minKeepAliveAttempt is the shortest attempt renew makes.
const minKeepAliveAttempt = 50 * time.Millisecond

// renew sends one keepalive, retrying until deadline. Each attempt gets
// half the time left (at most Config.AttemptTimeout, at least
// minKeepAliveAttempt): an attempt stuck on a member that hangs (a paused
// leader answers nothing, and the connection stays up) gives up while
// there is still time to renew through another member, which forwards to
// the new leader once one is elected. A member that left an attempt
// unanswered is passed over for a while (Client.pick).
func (s *Session) renew(ctx context.Context, deadline time.Time) (*kvpb.KeepAliveResponse, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ctx = selfTimed(ctx)
	send := s.c.keepAliveSend(s.id)
	var last error
	var delay time.Duration
	for {
		if s.c.isClosed() {
			return nil, ErrClosed
		}
		timeout := min(s.c.cfg.AttemptTimeout, max(time.Until(deadline)/2, minKeepAliveAttempt))
		resp, r := attempt(ctx, s.c, timeout, "", send)
		if r == nil {
			return resp, nil
		}
		if r.class == classFinal {
			return nil, r.err
		}
		last = r.err
		if ctx.Err() != nil || !sleepBackoff(ctx, &delay) {
			return nil, unavailable(last, ctx.Err())
		}
	}
}

func isExpired(err error) bool {
	c := codeOf(err)
	return c == kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED || c == kvpb.ErrorCode_ERROR_CODE_NOT_FOUND
}

// Close stops keepalives and closes the session on the server, releasing its locks.
// Done closes with context.Canceled. Closing a session the server already
// expired is not an error; Close is idempotent.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.expireLocked(context.Canceled)
	s.mu.Unlock()
	<-s.exited
	_, err := s.c.CloseSession(ctx, s.id)
	return err
}

// isClosed reports whether Close was called.
func (s *Session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ownSession returns the client's own session, creating it when there is
// none or the last one ended. Concurrent callers share one creation.
func (c *Client) ownSession(ctx context.Context) (*Session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if s := c.own; s != nil && !s.isDone() {
			c.mu.Unlock()
			return s, nil
		}
		if ch := c.ownCreating; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, unavailable(nil, ctx.Err())
			}
		}
		ch := make(chan struct{})
		c.ownCreating = ch
		c.mu.Unlock()

		s, err := c.NewSession(ctx, c.cfg.SessionTTL, ownSessionName())

		c.mu.Lock()
		c.ownCreating = nil
		close(ch)
		if err == nil {
			if c.closed {
				c.mu.Unlock()
				cctx, cancel := context.WithTimeout(context.Background(), time.Second)
				s.Close(cctx)
				cancel()
				return nil, ErrClosed
			}
			c.own = s
		}
		c.mu.Unlock()
		return s, err
	}
}

func ownSessionName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("client %s pid %d", host, os.Getpid())
}

// checkOpen fails a command on a closed session.
func (s *Session) checkOpen() error {
	if s.isClosed() {
		return fmt.Errorf("kvd: session %d: %w", s.id, ErrClosed)
	}
	return nil
}

// clampWait shortens a server-side wait so that the server answers before
// ctx ends (leaving it a little time), rather than the client giving up
// with an unknown outcome.
func clampWait(ctx context.Context, wait time.Duration) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok || wait <= 0 {
		return wait
	}
	left := time.Until(dl)
	left -= min(500*time.Millisecond, left/2)
	return max(0, min(wait, left))
}

// Acquire asks for lock name under this session. It is one command: the
// server grants the lock if free, or (wait > 0) queues the session in the
// lock's FIFO line and answers when it is granted or the wait ends
// (Acquired false, Position set). The wait is shortened so that the server
// answers before ctx ends. lockDelay is the lock-delay applied after an
// involuntary release. A retry after a leader change resends the same
// command, which the server never grants twice. Errors: ErrSessionExpired,
// ErrLimitExceeded, ErrInvalidArgument, ErrIndeterminate (the session may
// be queued or hold the lock: CancelWait cleans up), ErrUnavailable.
// WithLockValue gives the value the session holds the lock with (an
// election candidate's); a session that already holds the lock keeps its
// value.
//
// The answer says what the server granted. Whether the session's lease
// still holds in this client's view when the answer arrives (Deadline,
// Done) is the caller's to check before relying on the lock: lock.Mutex
// gives such a late grant back.
func (s *Session) Acquire(ctx context.Context, name []byte, wait, lockDelay time.Duration, opts ...OpOption) (*kvpb.AcquireResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	wait = clampWait(ctx, wait)
	req := &kvpb.AcquireRequest{Name: name, WaitMs: ms(wait), LockDelayMs: ms(lockDelay), Value: applyOpts(opts).lockValue}
	return write(ctx, s.c, s, wait, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.AcquireResponse, error) {
		req.Header = h
		return kvpb.NewLockClient(cc).Acquire(ctx, req, opts...)
	})
}

// Release releases lock name held with token; the next waiter is granted in
// the same apply. ErrStaleToken if token does not hold it.
func (s *Session) Release(ctx context.Context, name []byte, token uint64) (*kvpb.ReleaseResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	req := &kvpb.ReleaseRequest{Name: name, Token: token}
	return write(ctx, s.c, s, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.ReleaseResponse, error) {
		req.Header = h
		return kvpb.NewLockClient(cc).Release(ctx, req, opts...)
	})
}

// Proclaim sets the value of lock name, held by this session with token,
// without a new grant: the token stays (an election leader announcing new
// data). Exactly-once. ErrStaleToken when token is not the current grant
// or another session holds it.
func (s *Session) Proclaim(ctx context.Context, name []byte, token uint64, value []byte) (*kvpb.ProclaimResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	req := &kvpb.ProclaimRequest{Name: name, Token: token, Value: value}
	return write(ctx, s.c, s, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.ProclaimResponse, error) {
		req.Header = h
		return kvpb.NewLockClient(cc).Proclaim(ctx, req, opts...)
	})
}

// CancelWait takes the session out of lock name's line; if the lock was
// granted to it meanwhile, it is released.
func (s *Session) CancelWait(ctx context.Context, name []byte) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	req := &kvpb.CancelWaitRequest{Name: name}
	_, err := write(ctx, s.c, s, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.CancelWaitResponse, error) {
		req.Header = h
		return kvpb.NewLockClient(cc).CancelWait(ctx, req, opts...)
	})
	return err
}

// Fill is one step of memoize for key (see FillRequest): the server answers
// with a fresh value, or grants this session the fill lease (state MISS, or
// STALE with LeaseToken set) for lease, or waits up to wait for another
// session's fill. The wait is shortened so that the server answers before
// ctx ends. WithStale allows a stale read of a fresh value.
func (s *Session) Fill(ctx context.Context, key []byte, lease, wait time.Duration, opts ...OpOption) (*kvpb.FillResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	o := applyOpts(opts)
	wait = clampWait(ctx, wait)
	req := &kvpb.FillRequest{Key: key, LeaseMs: ms(lease), WaitMs: ms(wait), Consistency: o.consistency}
	return write(ctx, s.c, s, wait, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.FillResponse, error) {
		req.Header = h
		return kvpb.NewCacheClient(cc).Fill(ctx, req, opts...)
	})
}

// Store stores (or with Abandon gives up) a fill under the lease token in
// req. It sets req.Header itself. ErrStaleToken if the lease is gone.
func (s *Session) Store(ctx context.Context, req *kvpb.StoreRequest) (*kvpb.StoreResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return write(ctx, s.c, s, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.StoreResponse, error) {
		req.Header = h
		return kvpb.NewCacheClient(cc).Store(ctx, req, opts...)
	})
}

// Put writes key under this session (exactly-once; WithFence for a fenced
// write by the lock holder). Same errors as Client.Put, plus
// ErrSessionExpired.
func (s *Session) Put(ctx context.Context, key, value []byte, opts ...OpOption) (*kvpb.PutResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	o := applyOpts(opts)
	return writeCmd(ctx, s.c, s, 0, o.session != 0, sendPut(putRequest(key, value, o)))
}

// Delete removes key under this session (WithExpectedVersion, WithFence).
func (s *Session) Delete(ctx context.Context, key []byte, opts ...OpOption) (*kvpb.DeleteResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	o := applyOpts(opts)
	req := &kvpb.DeleteRequest{Key: key, ExpectedVersion: o.expectedVersion, Fence: o.fence}
	return write(ctx, s.c, s, 0, sendDelete(req))
}

// DeletePrefix removes every key under prefix, exactly-once under this
// session (see Client.DeletePrefix).
func (s *Session) DeletePrefix(ctx context.Context, prefix []byte, opts ...OpOption) (*kvpb.DeleteResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return write(ctx, s.c, s, 0, sendDelete(deletePrefixRequest(prefix, applyOpts(opts))))
}

// Touch gives key a new TTL under this session (see Client.Touch).
func (s *Session) Touch(ctx context.Context, key []byte, ttl time.Duration, opts ...OpOption) (*kvpb.TouchResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return write(ctx, s.c, s, 0, sendTouch(touchRequest(key, ttl, applyOpts(opts))))
}

// Add adds delta to the counter at key under this session (WithFence).
func (s *Session) Add(ctx context.Context, key []byte, delta int64, opts ...OpOption) (*kvpb.AddResponse, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	o := applyOpts(opts)
	req := &kvpb.AddRequest{Key: key, Delta: delta, Fence: o.fence}
	return write(ctx, s.c, s, 0, sendAdd(req))
}
