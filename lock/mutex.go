package lock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

var (
	// ErrLocked: TryLock found the lock held by another session.
	ErrLocked = errors.New("lock: held by another session")
	// ErrStaleToken: Unlock named a token that no longer holds the lock (it
	// expired or was broken, and maybe granted to someone else). Nothing was
	// released.
	ErrStaleToken = errors.New("lock: token is not current")
	// ErrNotLocked: Unlock on a Mutex that holds nothing.
	ErrNotLocked = errors.New("lock: mutex is not locked")
	// ErrAlreadyLocked: Lock or TryLock on a Mutex that already holds the lock.
	ErrAlreadyLocked = errors.New("lock: mutex is already locked")
	// ErrLost is the cause of a Mutex's Context when the lock was lost: the
	// session's view ended, or the server no longer lists the lock.
	ErrLost = errors.New("lock: lost")
	// ErrUnlocked is the cause of a Mutex's Context after Unlock.
	ErrUnlocked = errors.New("lock: unlocked")
)

// maxWait bounds one waiting Acquire when ctx has no deadline; Lock queues
// again when the server's wait ends first.
const maxWait = 24 * time.Hour

// cleanupTimeout bounds the CancelWait sent after ctx ended.
const cleanupTimeout = 5 * time.Second

// Mutex is one named lock taken under a Session. Lock, TryLock and Unlock
// must not be called concurrently with each other; Token, Lost, Context and
// Err are safe from any goroutine.
type Mutex struct {
	s         *Session
	name      []byte
	lockDelay time.Duration
	value     []byte

	mu sync.Mutex
	h  *hold // current grant, nil when not held
}

// hold is one grant of the lock.
type hold struct {
	grant    *kvpb.AcquireResponse
	token    uint64
	lost     chan struct{}
	ctx      context.Context
	cancel   context.CancelCauseFunc
	once     sync.Once
	stopOnce sync.Once
	stop     chan struct{} // closed to stop the watcher
	done     chan struct{} // closed when the watcher has returned
}

func (h *hold) stopWatch() { h.stopOnce.Do(func() { close(h.stop) }) }

func (h *hold) lose(cause error) {
	h.once.Do(func() {
		h.cancel(cause)
		close(h.lost)
	})
}

// MutexOption configures NewMutex.
type MutexOption func(*Mutex)

// WithLockDelay asks the server to grant nobody the lock for d after an
// involuntary release (session expiry or break), so that a holder that lost
// the lock without knowing has time to notice before the next one starts.
func WithLockDelay(d time.Duration) MutexOption { return func(m *Mutex) { m.lockDelay = d } }

// WithValue is the value the lock is held with while this Mutex holds it
// (LockInfo.value): an election candidate's value. Package election uses
// it; a plain lock needs none.
func WithValue(v []byte) MutexOption { return func(m *Mutex) { m.value = v } }

// NewMutex returns a mutex on the lock name, owned by s. It does no I/O.
func NewMutex(s *Session, name string, opts ...MutexOption) *Mutex {
	m := &Mutex{s: s, name: []byte(name)}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Name is the lock's name.
func (m *Mutex) Name() string { return string(m.name) }

// Session is the session that owns the mutex.
func (m *Mutex) Session() *Session { return m.s }

// LockDelay is the lock-delay the Mutex asks for (WithLockDelay): after an
// involuntary release nobody is granted the lock for this long.
func (m *Mutex) LockDelay() time.Duration { return m.lockDelay }

// requeueSlack: a "not acquired" answer with more than this left before
// ctx's deadline is not the end of the wait (the client ends the server's
// wait at most 500ms early).
const requeueSlack = time.Second

// Lock takes the lock, waiting in the server's FIFO line until it is granted
// or ctx ends. The server answers when it grants the lock (a release or
// expiry hands it to the head of the line in the same apply); there is no
// polling. When ctx ends first, Lock takes the session out of the line
// (releasing the lock if it was granted meanwhile) and returns ctx.Err().
// (The client has the server end its wait just before ctx's deadline, so
// that the answer is certain; Lock then returns context.DeadlineExceeded.)
// ErrLost when the grant came back after the session's lease had ended in
// this client's view (the grant is given back). Other errors are the
// client's (client.ErrSessionExpired,
// client.ErrLimitExceeded when the line is full, client.ErrUnavailable...),
// after which the session is taken out of the line too.
func (m *Mutex) Lock(ctx context.Context) error {
	if m.held() {
		return ErrAlreadyLocked
	}
	for {
		wait := maxWait
		if dl, ok := ctx.Deadline(); ok {
			wait = time.Until(dl)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if wait < time.Millisecond {
			// Not enough time left to queue: one last try.
			wait = time.Millisecond
		}
		start := time.Now()
		resp, err := m.s.cs.Acquire(ctx, m.name, wait, m.lockDelay, client.WithLockValue(m.value))
		if err != nil {
			m.cancelWait(ctx)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("lock %q: acquire: %w", m.name, err)
		}
		if resp.GetAcquired() {
			return m.accept(ctx, resp)
		}
		if ctx.Err() != nil {
			m.cancelWait(ctx)
			return ctx.Err()
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < requeueSlack {
			// The client shortens the server's wait so that the server
			// answers just before ctx ends: the wait is over. (The session
			// left the line when its wait ended.)
			return context.DeadlineExceeded
		}
		// The server's wait ended while ctx has time left: without a
		// deadline its wait is maxWait; otherwise the session was taken out
		// of the line for another reason (a node that lost its client
		// proposes a leave-line cancel, a waiter over the locks-per-session
		// limit is dropped). Queue again, at the back of the line. Never
		// spin on a server that answers at once.
		if time.Since(start) < 10*time.Millisecond {
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				m.cancelWait(ctx)
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// TryLock takes the lock if it is free and returns at once otherwise: it
// waits only for the acquire command to be applied. It returns ErrLocked
// (wrapped, naming the holder) when another session holds the lock, ctx's
// error, or the client's.
func (m *Mutex) TryLock(ctx context.Context) error {
	if m.held() {
		return ErrAlreadyLocked
	}
	resp, err := m.s.cs.Acquire(ctx, m.name, 0, m.lockDelay, client.WithLockValue(m.value))
	if err != nil {
		return fmt.Errorf("lock %q: acquire: %w", m.name, err)
	}
	if !resp.GetAcquired() {
		li := resp.GetLock()
		return fmt.Errorf("%w: %q held by session %d with token %d", ErrLocked, m.name, li.GetSession(), li.GetToken())
	}
	return m.accept(ctx, resp)
}

// cancelWait takes the session out of the line, or releases a grant that
// raced with the end of ctx. It runs after ctx ended, so on a context of
// its own bounded by cleanupTimeout. (The server also cancels the wait of a
// client that went away; this makes it prompt.)
func (m *Mutex) cancelWait(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_ = m.s.cs.CancelWait(cctx, m.name)
}

// held reports whether the Mutex holds a grant it has not lost. A lost
// grant is forgotten, so that Lock may be called again.
func (m *Mutex) held() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return false
	}
	select {
	case <-m.h.lost:
		m.h.stopWatch()
		m.h = nil
		return false
	default:
		return true
	}
}

// granted records a grant and starts watching for its loss.
// accept takes a grant, unless the session's lease has already ended in the
// client's view (its answer came back after the local deadline, or the
// session was lost meanwhile): the client can then no longer be sure the
// server has not released the lock, so the grant is given back (best
// effort) and ErrLost returned.
func (m *Mutex) accept(ctx context.Context, resp *kvpb.AcquireResponse) error {
	select {
	case <-m.s.Done():
	default:
		if time.Now().Before(m.s.Deadline()) {
			m.granted(resp)
			return nil
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, _ = m.s.cs.Release(rctx, m.name, resp.GetToken())
	return fmt.Errorf("lock %q: %w: token %d was granted after the session's lease had ended in this client's view",
		m.name, ErrLost, resp.GetToken())
}

func (m *Mutex) granted(resp *kvpb.AcquireResponse) {
	ctx, cancel := context.WithCancelCause(context.Background())
	h := &hold{
		grant:  resp,
		token:  resp.GetToken(),
		lost:   make(chan struct{}),
		ctx:    ctx,
		cancel: cancel,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	m.mu.Lock()
	m.h = h
	m.mu.Unlock()
	go m.watch(h, resp.GetLock().GetExpiresAt())
}

// watch closes h.lost when the session's view ends, or when the lock is
// seen held under another token (broken, released elsewhere, handed on).
// Two sources tell it, neither polled: a watch on the lock from the
// granting entry on (it reports a break within milliseconds), and the
// session's keepalive answers (it lists the locks the session holds; this
// covers a watch the member refuses, say for lack of read permission).
//
// A keepalive answer counts only if the server applied it after the grant:
// its session expiry is then later than the holder expiry the grant
// reported (log time only grows). When the grant did not report one, the
// second answer to arrive after the grant counts (the client sends one
// keepalive at a time, so that one was sent after the grant).
func (m *Mutex) watch(h *hold, grantExpiry int64) {
	defer close(h.done)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	moved := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := m.s.Client()
		for ev, err := range c.Watch(ctx, m.name, client.OnLocks(), client.FromIndex(h.token)) {
			if err != nil {
				return // the keepalive answers and the session still tell
			}
			if ev.Change == nil {
				continue
			}
			if tok := ev.Change.GetLock().GetToken(); tok != h.token {
				moved <- fmt.Errorf("%w: lock %q is now held under token %d (%s at index %d), not %d",
					ErrLost, m.name, tok, eventName(ev.Change.GetType()), ev.Index, h.token)
				return
			}
		}
	}()

	first := m.s.info()
	var changes int
	last := first
	for {
		acked := m.s.acked()
		select {
		case <-h.stop:
			return
		case <-m.s.Done():
			h.lose(fmt.Errorf("%w: session %d ended: %w", ErrLost, m.s.ID(), m.s.Err()))
			return
		case err := <-moved:
			h.lose(err)
			return
		case <-acked:
		}
		info := m.s.info()
		if info == nil || info == last {
			continue
		}
		last = info
		changes++
		if grantExpiry > 0 && info.GetExpiresAt() <= grantExpiry {
			continue
		}
		if grantExpiry == 0 && changes < 2 {
			continue
		}
		if !containsName(info.GetLocks(), m.name) {
			h.lose(fmt.Errorf("%w: session %d no longer holds %q (broken or released elsewhere)", ErrLost, m.s.ID(), m.name))
			return
		}
	}
}

// eventName is "lock-break" for EVENT_TYPE_LOCK_BREAK.
func eventName(t kvpb.EventType) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(t.String(), "EVENT_TYPE_")), "_", "-")
}

func containsName(names [][]byte, name []byte) bool {
	for _, n := range names {
		if bytes.Equal(n, name) {
			return true
		}
	}
	return false
}

// Token is the fencing token of the current grant, 0 when not held. Pass it
// along with every action the lock protects (client.WithFence, or the
// resource's own check through CheckFence).
func (m *Mutex) Token() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return 0
	}
	return m.h.token
}

// Grant is the server's answer to the acquire that granted the current
// hold (lock state and expiry in log time, response header), nil when
// nothing is held.
func (m *Mutex) Grant() *kvpb.AcquireResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil
	}
	return m.h.grant
}

// closed is returned by Lost when nothing is held.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Lost is closed when the current grant is lost or given up: when the
// session's view ends (strictly before the server can expire the session),
// when a watch on the lock sees it held under another token (broken: within
// milliseconds on a healthy cluster) or a keepalive answer no longer lists
// it, or on Unlock. It is closed already when nothing is held.
func (m *Mutex) Lost() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return closed
	}
	return m.h.lost
}

// Context is canceled when Lost closes; context.Cause says why (ErrLost or
// ErrUnlocked, wrapped). Use it for work that must stop with the lock.
// It is canceled already when nothing is held.
func (m *Mutex) Context() context.Context {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrNotLocked)
		return ctx
	}
	return m.h.ctx
}

// Err says why Lost closed (nil while the lock is held).
func (m *Mutex) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return ErrNotLocked
	}
	if m.h.ctx.Err() == nil {
		return nil
	}
	return context.Cause(m.h.ctx)
}

// Unlock closes Lost first, then releases the lock naming its token, and
// waits for the release to be applied (the next waiter is granted in the
// same apply). It never releases another holder's lock: when the token is
// no longer current (expired, broken) it returns an error matching both
// ErrStaleToken and client.ErrStaleToken and releases nothing. It returns
// ErrNotLocked when nothing is held, ctx's error or the client's otherwise;
// after such an error the Mutex still has the token and Unlock may be
// called again (the release is exactly-once).
func (m *Mutex) Unlock(ctx context.Context) error {
	m.mu.Lock()
	h := m.h
	m.mu.Unlock()
	if h == nil {
		return ErrNotLocked
	}
	h.lose(ErrUnlocked)
	h.stopWatch()
	<-h.done
	_, err := m.s.cs.Release(ctx, m.name, h.token)
	switch {
	case err == nil:
	case errors.Is(err, client.ErrStaleToken), errors.Is(err, client.ErrSessionExpired):
		err = fmt.Errorf("%w: release %q token %d: %w", ErrStaleToken, m.name, h.token, err)
	default:
		return fmt.Errorf("lock %q: release token %d: %w", m.name, h.token, err)
	}
	m.mu.Lock()
	if m.h == h {
		m.h = nil
	}
	m.mu.Unlock()
	return err
}
