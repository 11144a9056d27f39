package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Retry backoff between attempts: doubling from backoffMin to backoffMax.
const (
	backoffMin = 20 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// seqTracker numbers a session's commands and knows which are in flight.
// min_pending_seq sent to the server is the lowest seq in flight: the server
// may forget every result below it.
type seqTracker struct {
	mu       sync.Mutex
	next     uint64 // next seq to hand out; seqs start at 1
	low      uint64 // lowest seq in flight, or next when none
	inflight map[uint64]struct{}
}

// begin hands out the next seq and marks it in flight.
func (t *seqTracker) begin() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next == 0 {
		t.next, t.low = 1, 1
		t.inflight = make(map[uint64]struct{})
	}
	seq := t.next
	t.next++
	if len(t.inflight) == 0 {
		t.low = seq
	}
	t.inflight[seq] = struct{}{}
	return seq
}

// end marks seq done: its result is known to the caller.
func (t *seqTracker) end(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.inflight[seq]; !ok {
		return
	}
	delete(t.inflight, seq)
	if seq != t.low {
		return
	}
	// Seqs are handed out in order, so the new lowest is above the old one.
	for t.low < t.next {
		if _, ok := t.inflight[t.low]; ok {
			break
		}
		t.low++
	}
}

// minPending is the lowest seq still in flight (the next seq when none).
func (t *seqTracker) minPending() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next == 0 {
		return 1
	}
	return t.low
}

// sendFunc makes one attempt of an RPC on cc. It must pass opts on.
type sendFunc[R any] func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (R, error)

// writeFunc makes one attempt of a mutating RPC carrying h.
type writeFunc[R any] func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (R, error)

// sleepBackoff sleeps for the current delay (or until ctx ends) and doubles it.
func sleepBackoff(ctx context.Context, d *time.Duration) bool {
	if *d == 0 {
		*d = backoffMin
	}
	t := time.NewTimer(*d)
	defer t.Stop()
	*d = min(*d*2, backoffMax)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt makes one attempt, bounded by timeout, on the endpoint the client
// prefers, records what it learns about the leader, and classifies a
// failure.
func attempt[R any](ctx context.Context, c *Client, timeout time.Duration, endpoint string, send sendFunc[R]) (R, *attemptResult) {
	var zero R
	addr := endpoint
	if addr == "" {
		addr = c.pick()
	}
	cc, err := c.conn(addr)
	if err != nil {
		return zero, &attemptResult{class: classFinal, err: err}
	}
	// The attempt's own deadline, as a context unless the caller's comes
	// first or the send bounds its own wait (selfTimed): a context and
	// timer of its own are several allocations on every request.
	pp := attemptPool.Get().(*attemptOpts)
	pp.p = peer.Peer{}
	pp.dl.at = time.Now().Add(timeout)
	actx, cancel := ctx, context.CancelFunc(nil)
	dl, ok := ctx.Deadline()
	if ok && dl.Before(pp.dl.at) {
		pp.dl.at = dl
	} else if !isSelfTimed(ctx) {
		actx, cancel = context.WithDeadline(ctx, pp.dl.at)
	}
	resp, err := send(actx, c.via(cc), pp.opts...)
	timedOut := ctx.Err() == nil && (actx.Err() != nil || errors.Is(err, errAttemptTimeout))
	if cancel != nil {
		cancel()
	}
	sent := sentFrom(&pp.p)
	pp.p = peer.Peer{}
	attemptPool.Put(pp)
	if err == nil {
		return resp, nil
	}
	r := classify(err, sent)
	r.addr = addr
	if _, isKvd := r.err.(*Error); !isKvd && (timedOut || status.Code(err) == codes.Unavailable) {
		r.unanswered = true
	}
	if r.class == classRetry && c.cfg.TLS != nil && status.Code(err) == codes.Unavailable {
		if herr := c.handshakeFailure(addr); herr != nil {
			r = attemptResult{class: classFinal, err: &TLSError{Addr: addr, Err: herr}}
		}
	}
	c.noteFailure(addr, r)
	return zero, &r
}

// attemptOpts are the call options of one attempt, kept for reuse (new
// ones were allocations on every call's success path): grpc.Peer, which
// says whether the call reached a transport stream, and the attempt's
// deadline, for sends that bound their own wait.
type attemptOpts struct {
	p    peer.Peer
	dl   attemptDeadline
	opts []grpc.CallOption
}

var attemptPool = sync.Pool{New: func() any {
	pp := &attemptOpts{}
	pp.opts = []grpc.CallOption{grpc.Peer(&pp.p), &pp.dl}
	return pp
}}

// attemptDeadline carries an attempt's deadline to its send (gRPC itself
// ignores it). A selfTimed send waits at most until then, with the timer
// kept here, and then fails with errAttemptTimeout.
type attemptDeadline struct {
	grpc.EmptyCallOption
	at    time.Time
	timer *time.Timer
}

// errAttemptTimeout is a selfTimed send's answer when its attempt's time
// is up: the attempt went unanswered.
var errAttemptTimeout = fmt.Errorf("kvd: attempt timed out: %w", context.DeadlineExceeded)

// deadlineOf finds the attempt's deadline among a send's options.
func deadlineOf(opts []grpc.CallOption) *attemptDeadline {
	for _, o := range opts {
		if d, ok := o.(*attemptDeadline); ok {
			return d
		}
	}
	return nil
}

// wait returns a channel that fires at the deadline; stop ends it.
func (d *attemptDeadline) wait() <-chan time.Time {
	if d.timer == nil {
		d.timer = time.NewTimer(time.Until(d.at))
	} else {
		d.timer.Reset(time.Until(d.at))
	}
	return d.timer.C
}

func (d *attemptDeadline) stop() { d.timer.Stop() }

type selfTimedKey struct{}

// selfTimed marks ctx for attempts whose send bounds its own wait by the
// attempt's deadline (the keepalive stream), so that attempt makes no
// context for it.
func selfTimed(ctx context.Context) context.Context {
	return context.WithValue(ctx, selfTimedKey{}, true)
}

func isSelfTimed(ctx context.Context) bool { return ctx.Value(selfTimedKey{}) != nil }

// reach follows, over one request's attempts, whether any member accepted
// a connection. While none has and every endpoint the request may use has
// refused one, for Config.UnreachableTimeout since the request began, the
// request gives up: the cluster is down or the endpoints are wrong, and
// waiting for ctx would only leave the caller in silence. A request that
// reached any member (a "no leader" answer included) is not cut short:
// that is a leader election, and retries get through it.
type reach struct {
	start    time.Time
	only     string // the one endpoint the request may use; "" for all
	refused  map[string]bool
	answered bool
}

func newReach(endpoint string) *reach { return &reach{start: time.Now(), only: endpoint} }

// giveUp records a failed attempt and returns the error to end the request
// with, or nil to go on retrying.
func (u *reach) giveUp(c *Client, r *attemptResult) error {
	if !r.noConn {
		u.answered = true
	}
	if u.answered || c.cfg.UnreachableTimeout <= 0 {
		return nil
	}
	if u.refused == nil {
		u.refused = make(map[string]bool)
	}
	u.refused[r.addr] = true
	eps := c.endpoints
	if u.only != "" {
		eps = []string{u.only}
	}
	for _, e := range eps {
		if !u.refused[e] {
			return nil
		}
	}
	if time.Since(u.start) < c.cfg.UnreachableTimeout {
		return nil
	}
	return unreachable(eps, r.err)
}

// read runs an RPC that changes nothing (or whose repetition is harmless),
// retrying every retryable failure until ctx ends. endpoint "" lets the
// client pick (leader first); otherwise every attempt goes there.
func read[R any](ctx context.Context, c *Client, extra time.Duration, endpoint string, send sendFunc[R]) (R, error) {
	var zero R
	var last error
	var delay time.Duration
	u := newReach(endpoint)
	for {
		if c.isClosed() {
			return zero, ErrClosed
		}
		resp, r := attempt(ctx, c, c.cfg.AttemptTimeout+extra, endpoint, send)
		if r == nil {
			return resp, nil
		}
		if r.class == classFinal {
			return zero, r.err
		}
		if err := u.giveUp(c, r); err != nil {
			return zero, err
		}
		last = r.err
		if ctx.Err() != nil || !sleepBackoff(ctx, &delay) {
			return zero, unavailable(last, ctx.Err())
		}
	}
}

// once runs a non-idempotent RPC without a session header (cluster
// changes): it is retried only when it certainly was not applied.
func once[R any](ctx context.Context, c *Client, send sendFunc[R]) (R, error) {
	var zero R
	var last error
	var delay time.Duration
	u := newReach("")
	for {
		if c.isClosed() {
			return zero, ErrClosed
		}
		resp, r := attempt(ctx, c, c.cfg.AttemptTimeout, "", send)
		if r == nil {
			return resp, nil
		}
		switch r.class {
		case classFinal:
			return zero, r.err
		case classMaybe:
			return zero, indeterminate(r.err, ctx.Err())
		}
		if err := u.giveUp(c, r); err != nil {
			return zero, err
		}
		last = r.err
		if ctx.Err() != nil || !sleepBackoff(ctx, &delay) {
			return zero, unavailable(last, ctx.Err())
		}
	}
}

// write runs a mutating command exactly-once under a session: every
// attempt carries the same (session, seq), so the server applies it at most
// once and a retry gets the first result. s nil means the client's own
// session, which is created (or recreated after it expired) as needed.
//
// It retries NOT_LEADER, connection failures and lost answers until ctx
// ends. It returns ErrIndeterminate if an attempt may have reached the log
// and no definite answer came, ErrUnavailable if none can have.
func write[R any](ctx context.Context, c *Client, s *Session, extra time.Duration, send writeFunc[R]) (R, error) {
	return writeCmd(ctx, c, s, extra, false, send)
}

// writeCmd is write for a command that may also name a session in its
// body (binds names a put's session, WithSession): SESSION_EXPIRED may then
// be about that session rather than s, and the client asks the server
// which before it gives s up.
func writeCmd[R any](ctx context.Context, c *Client, s *Session, extra time.Duration, binds bool, send writeFunc[R]) (R, error) {
	var zero R
	own := s == nil
	if own {
		var err error
		if s, err = c.ownSession(ctx); err != nil {
			return zero, err
		}
	}
	seq := s.seqs.begin()
	defer func() { s.seqs.end(seq) }()

	var (
		last  error
		maybe bool // an attempt of this command may have been applied
		delay time.Duration
		u     = newReach("")
	)
	for {
		if c.isClosed() {
			if maybe {
				return zero, indeterminate(ErrClosed, nil)
			}
			return zero, ErrClosed
		}
		h := &kvpb.RequestHeader{Session: s.id, Seq: seq, MinPendingSeq: s.seqs.minPending()}
		resp, r := attempt(ctx, c, c.cfg.AttemptTimeout+extra, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (R, error) {
			return send(ctx, cc, h, opts...)
		})
		if r == nil {
			return resp, nil
		}
		switch r.class {
		case classFinal:
			code := codeOf(r.err)
			switch {
			case code == kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED && binds && !c.sessionGone(ctx, s.id):
				// The session the command binds a key to has ended, not
				// s. An earlier attempt may have been applied before it
				// ended (a retry is refused before the log).
				if maybe {
					return zero, indeterminate(r.err, nil)
				}
				return zero, r.err
			case code == kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED:
				s.expire(r.err)
				if own && !maybe {
					// Nothing of this command can have been applied: run it
					// again under a new session.
					if !sleepBackoff(ctx, &delay) {
						return zero, unavailable(r.err, ctx.Err())
					}
					ns, err := c.ownSession(ctx)
					if err != nil {
						return zero, err
					}
					s.seqs.end(seq)
					s, seq = ns, ns.seqs.begin()
					continue
				}
				if maybe {
					return zero, indeterminate(r.err, nil)
				}
				return zero, r.err
			case code == kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE && maybe:
				// The server forgot the first result: it was applied, but
				// what it answered is lost.
				return zero, indeterminate(r.err, nil)
			case (code == kvpb.ErrorCode_ERROR_CODE_DISK_FULL || code == kvpb.ErrorCode_ERROR_CODE_QUOTA_EXCEEDED) && maybe:
				// This attempt was refused before the log, but an earlier
				// one may have been applied.
				return zero, indeterminate(r.err, nil)
			case code == kvpb.ErrorCode_ERROR_CODE_OK && maybe:
				// Not a kvd answer (e.g. an internal error) after an attempt
				// that may have been applied.
				return zero, indeterminate(r.err, nil)
			}
			return zero, r.err
		case classMaybe:
			maybe = true
		}
		// An attempt that may have been applied reached a member, so this
		// gives up only while nothing can have been.
		if err := u.giveUp(c, r); err != nil {
			return zero, err
		}
		last = r.err
		if ctx.Err() != nil || !sleepBackoff(ctx, &delay) {
			if maybe {
				return zero, indeterminate(last, ctx.Err())
			}
			return zero, unavailable(last, ctx.Err())
		}
	}
}

// sessionGone reports whether the server says session id has ended; false
// when it is live or the question got no answer.
func (c *Client) sessionGone(ctx context.Context, id uint64) bool {
	_, err := c.GetSession(ctx, id)
	return isExpired(err)
}

// codeOf returns the ErrorCode of a kvd answer, OK for any other error.
func codeOf(err error) kvpb.ErrorCode {
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return kvpb.ErrorCode_ERROR_CODE_OK
}
