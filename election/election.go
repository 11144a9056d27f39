package election

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

var (
	// ErrNoLeader: Leader found nobody leading the election.
	ErrNoLeader = errors.New("election: no leader")
	// ErrNotLeader: Proclaim by an Election that does not lead (it never
	// won, resigned, or its term ended: the token is no longer current).
	ErrNotLeader = errors.New("election: not the leader")
	// ErrAlreadyLeader: Campaign by an Election that already leads.
	ErrAlreadyLeader = errors.New("election: already the leader")
)

// DefaultLockDelay is the lock-delay of an election unless WithLockDelay
// says otherwise. After a leader's term ends involuntarily (its session
// expired, or an operator broke the lock), the server makes the next
// candidate leader this much later. A leader that loses its session in a
// healthy process notices before the server expires it (Lost) and must
// have stopped by the server's expiry; the second after it covers the
// stop itself (a SIGKILL delivered, a process reaped, a write in flight
// landing) before the successor begins. It adds one second to a failover
// after a crash, and does nothing for a leader that was paused past its
// TTL: only the fencing token stops that one.
const DefaultLockDelay = time.Second

// Leader is who leads an election: the holder of its lock.
type Leader struct {
	// Value is the leader's value: its Campaign value, or the last Proclaim.
	Value []byte
	// Token is the term's fencing token: the Raft index of the entry that
	// made this leader. It grows with every new term and stays the same
	// across Proclaims.
	Token uint64
	// Session is the leader's session.
	Session uint64
	// HeldSince is the log time (unix ns) the term began.
	HeldSince int64
	// Index is the Raft index this was read at (Leader) or of the entry
	// that made the change (Observe).
	Index uint64
}

// Election is one candidate in the election name, campaigning under a
// Session. Campaign, Resign and Proclaim must not be called concurrently
// with each other; Token, Lost, Context, Err, Leader and Observe are safe
// from any goroutine.
type Election struct {
	s         *lock.Session
	name      string
	lockDelay time.Duration

	mu sync.Mutex
	m  *lock.Mutex // the current term, nil when not leading
}

// Option configures New.
type Option func(*Election)

// WithLockDelay sets the election's lock-delay (default DefaultLockDelay):
// how long after a leader's involuntary end (session expiry, break) the
// next candidate is made leader. 0 hands over at once.
func WithLockDelay(d time.Duration) Option { return func(e *Election) { e.lockDelay = d } }

// New returns a candidate in the election name, campaigning under s. It
// does no I/O.
func New(s *lock.Session, name string, opts ...Option) *Election {
	e := &Election{s: s, name: name, lockDelay: DefaultLockDelay}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Name is the election's name: the name of its lock.
func (e *Election) Name() string { return e.name }

// Session is the session the candidate campaigns under.
func (e *Election) Session() *lock.Session { return e.s }

// LockDelay is the election's lock-delay (WithLockDelay).
func (e *Election) LockDelay() time.Duration { return e.lockDelay }

// term is the current term's mutex, nil when not leading: a term that was
// lost counts as none, so that Campaign may be called again. The lost
// term's mutex is kept until then, so that Resign still releases it on the
// server: a term lost locally (the session's view ran out, strictly before
// the server would expire it) may still be held there, and releasing it
// lets the next candidate in at once instead of after the session's expiry
// and the lock-delay.
func (e *Election) term() *lock.Mutex {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		return nil
	}
	select {
	case <-e.m.Lost():
		return nil
	default:
	}
	return e.m
}

// Campaign waits in the election's FIFO line until this candidate leads,
// with value as its value, or ctx ends. The server answers when it makes
// it leader (the previous leader resigned or its session expired, then
// the lock-delay passed); there is no polling. When ctx ends first the
// candidate leaves the line and Campaign returns ctx's error. Once it
// returns nil, Token is the term's fencing token and Lost closes when the
// term ends. ErrAlreadyLeader when this Election leads already; other
// errors are lock.Mutex.Lock's.
func (e *Election) Campaign(ctx context.Context, value []byte) error {
	if e.term() != nil {
		return fmt.Errorf("election %q: %w (token %d)", e.name, ErrAlreadyLeader, e.Token())
	}
	m := lock.NewMutex(e.s, e.name, lock.WithLockDelay(e.lockDelay), lock.WithValue(bytes.Clone(value)))
	if err := m.Lock(ctx); err != nil {
		return fmt.Errorf("election %q: campaign: %w", e.name, err)
	}
	e.mu.Lock()
	e.m = m
	e.mu.Unlock()
	return nil
}

// Proclaim changes the leader's value without a new term: the token stays,
// and observers see the new value. ErrNotLeader (wrapped) when this
// Election does not lead, or its token is no longer current (the term
// ended on the server); ctx's error or the client's otherwise (the
// proclaim is exactly-once, and may be retried).
func (e *Election) Proclaim(ctx context.Context, value []byte) error {
	m := e.term()
	if m == nil {
		return fmt.Errorf("election %q: proclaim: %w", e.name, ErrNotLeader)
	}
	_, err := e.s.ClientSession().Proclaim(ctx, []byte(e.name), m.Token(), value)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, client.ErrStaleToken), errors.Is(err, client.ErrSessionExpired):
		return fmt.Errorf("election %q: proclaim with token %d: %w: %w", e.name, m.Token(), ErrNotLeader, err)
	default:
		return fmt.Errorf("election %q: proclaim: %w", e.name, err)
	}
}

// Resign ends this candidate's term: Lost closes, then the lock is
// released and the next candidate in line leads in the same apply. It
// returns nil when it does not lead (never did, resigned already, or the
// term already ended on the server: there is nothing to give up). After
// another error (ctx's, the client's) it still leads and Resign may be
// called again.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	m := e.m
	e.mu.Unlock()
	if m == nil {
		return nil
	}
	err := m.Unlock(ctx)
	if err != nil && !errors.Is(err, lock.ErrStaleToken) && !errors.Is(err, lock.ErrNotLocked) {
		return fmt.Errorf("election %q: resign: %w", e.name, err)
	}
	e.mu.Lock()
	if e.m == m {
		e.m = nil
	}
	e.mu.Unlock()
	return nil
}

// Token is the fencing token of this candidate's term, 0 when it does not
// lead. Pass it with every action the leader takes on a shared resource.
func (e *Election) Token() uint64 {
	if m := e.term(); m != nil {
		return m.Token()
	}
	return 0
}

// closed is Lost's answer when not leading.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Lost is closed when the term ends: the session's view ends (strictly
// before the server can expire it), a watch sees the lock broken or held
// under another token, or Resign. It is closed already when this
// candidate does not lead.
func (e *Election) Lost() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		return closed
	}
	return e.m.Lost()
}

// Context is canceled when Lost closes (context.Cause says why: lock.ErrLost
// or lock.ErrUnlocked, wrapped). Use it for the leader's work. It is
// canceled already when this candidate does not lead.
func (e *Election) Context() context.Context {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrNotLeader)
		return ctx
	}
	return e.m.Context()
}

// Err says why Lost closed (nil while leading, ErrNotLeader when this
// candidate never led).
func (e *Election) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		return ErrNotLeader
	}
	return e.m.Err()
}

// leaderOf reads a lock's state as a leader; ok is false when it has none.
func leaderOf(li *kvpb.LockInfo, index uint64) (Leader, bool) {
	if li.GetToken() == 0 {
		return Leader{}, false
	}
	return Leader{Value: li.GetValue(), Token: li.GetToken(), Session: li.GetSession(), HeldSince: li.GetHeldSince(), Index: index}, true
}

// Leader reads who leads the election now (a linearizable read; the
// client's WithStale for a stale one). ErrNoLeader when nobody does.
func (e *Election) Leader(ctx context.Context, opts ...client.OpOption) (Leader, error) {
	return LeaderOf(ctx, e.s.Client(), e.name, opts...)
}

// LeaderOf is Election.Leader for a reader that does not campaign: it
// needs no session.
func LeaderOf(ctx context.Context, c *client.Client, name string, opts ...client.OpOption) (Leader, error) {
	resp, err := c.GetLock(ctx, []byte(name), opts...)
	if errors.Is(err, client.ErrNotFound) {
		return Leader{}, fmt.Errorf("election %q: %w", name, ErrNoLeader)
	}
	if err != nil {
		return Leader{}, fmt.Errorf("election %q: leader: %w", name, err)
	}
	l, ok := leaderOf(resp.GetLock(), resp.GetHeader().GetAppliedIndex())
	if !ok {
		return Leader{}, fmt.Errorf("election %q: %w", name, ErrNoLeader)
	}
	return l, nil
}

// Observe reports the election's leaders: first the current one (if any),
// then each new leader and each new value of the leader, in the order the
// cluster made them, until ctx ends. It reads the leader once, then
// watches the election's lock from exactly that index (client.Watch,
// which resumes on another member across failures and cancellations with
// no gap and no repeat); it never polls. A time without a leader is not
// reported: the next leader is. The channel is closed when ctx ends or the
// watch fails for good (for instance for lack of read permission on the
// lock). Receive promptly: the watch waits for the receiver.
func (e *Election) Observe(ctx context.Context) <-chan Leader {
	return Observe(ctx, e.s.Client(), e.name)
}

// Observe is Election.Observe for an observer that does not campaign: it
// needs no session.
func Observe(ctx context.Context, c *client.Client, name string) <-chan Leader {
	ch := make(chan Leader)
	go func() {
		defer close(ch)
		var last Leader
		have := false
		// emit sends l when it is a change: another term or another value.
		emit := func(l Leader, ok bool) bool {
			if !ok {
				have = false
				return true
			}
			if have && l.Token == last.Token && bytes.Equal(l.Value, last.Value) {
				return true
			}
			select {
			case ch <- l:
				last, have = l, true
				return true
			case <-ctx.Done():
				return false
			}
		}
		resp, err := c.GetLock(ctx, []byte(name))
		if err != nil && !errors.Is(err, client.ErrNotFound) {
			return
		}
		from := resp.GetHeader().GetAppliedIndex()
		if !emit(leaderOf(resp.GetLock(), from)) {
			return
		}
		var snap *kvpb.LockInfo // the lock in a snapshot being received
		var snapIndex uint64
		for ev, err := range c.Watch(ctx, []byte(name), client.OnLocks(), client.FromIndex(from)) {
			if err != nil {
				return
			}
			switch ev.Kind {
			case client.EventChange:
				if !emit(leaderOf(ev.Change.GetLock(), ev.Index)) {
					return
				}
			case client.EventState:
				// The member's history did not reach back: it sends the
				// state instead. No item for the lock means nobody holds it.
				snap, snapIndex = ev.Change.GetLock(), ev.Index
			case client.EventSnapshotEnd:
				if snap == nil {
					snapIndex = ev.Index
				}
				if !emit(leaderOf(snap, snapIndex)) {
					return
				}
				snap = nil
			}
		}
	}()
	return ch
}
