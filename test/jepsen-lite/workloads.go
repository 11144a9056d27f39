package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvdproject/kvd/cache"
	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Tunables of the workloads.
const (
	opTimeout       = 3 * time.Second
	attemptTimeout  = time.Second
	registerKeys    = 5
	registerPerKey  = 150 // ops on a key before moving to fresh keys
	lockNames       = 2
	lockSessionTTL  = time.Second
	lockDelay       = 300 * time.Millisecond
	memoKeys        = 3
	memoPerKey      = 60
	memoSessionTTL  = 2 * time.Second
	fillLease       = 800 * time.Millisecond
	counterKeys     = 4
	ttlMin, ttlMax  = time.Second, 2 * time.Second
	clientSessionTT = 10 * time.Second
)

// Env is what workers share.
type Env struct {
	H         *History
	Endpoints []string
	// Security, when set, is how workers and the harness reach a cluster
	// with TLS and auth on (--tls).
	Security *Security
	Resource *FencedResource
	Logger   *slog.Logger

	regOps  atomic.Int64 // register ops so far (key generation)
	memoOps atomic.Int64
	// watchWritten is the highest index of an acknowledged watch write.
	watchWritten atomic.Uint64

	rateMu   sync.Mutex
	interval time.Duration // between two operations over all workers; 0: none
	next     time.Time

	mu       sync.Mutex
	computed map[string]map[string]bool // memoize key -> values computed by fn
	regKeys  map[string]bool
	ctrKeys  map[string]bool
}

// NewEnv returns a workload environment.
func NewEnv(h *History, endpoints []string) *Env {
	return &Env{
		H: h, Endpoints: endpoints, Resource: NewFencedResource(),
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		computed: map[string]map[string]bool{},
		regKeys:  map[string]bool{},
		ctrKeys:  map[string]bool{},
	}
}

// SetRate limits operations to perSec over all workers (0: no limit).
func (e *Env) SetRate(perSec float64) {
	e.rateMu.Lock()
	defer e.rateMu.Unlock()
	e.interval = 0
	if perSec > 0 {
		e.interval = time.Duration(float64(time.Second) / perSec)
	}
}

// throttle waits for the worker's turn under the rate limit.
func (e *Env) throttle(ctx context.Context) {
	e.rateMu.Lock()
	if e.interval == 0 {
		e.rateMu.Unlock()
		return
	}
	now := time.Now()
	if e.next.Before(now) {
		e.next = now
	}
	at := e.next
	e.next = e.next.Add(e.interval)
	e.rateMu.Unlock()
	sleepCtx(ctx, time.Until(at))
}

// Security is the TLS and sign-in of a --tls run: workers sign in as a
// user with readwrite on every key, lock and cache key, but no admin role,
// so that every request goes through authentication, the permission checks
// and session ownership; the harness (nemesis, probes) uses root's client
// certificate, an admin.
type Security struct {
	WorkerTLS *tls.Config // the CA only
	AdminTLS  *tls.Config // the CA and root's client certificate
	User      string
	Password  string
}

// NewClient makes a client for one worker.
func (e *Env) NewClient() (*client.Client, error) { return e.newClientOn(e.Endpoints) }

// newClientOn makes a worker's client whose endpoints are eps, in that
// order (a watcher starts on the first).
func (e *Env) newClientOn(eps []string) (*client.Client, error) {
	cfg := e.clientConfig()
	cfg.Endpoints = eps
	if e.Security != nil {
		cfg.TLS, cfg.Username, cfg.Password = e.Security.WorkerTLS, e.Security.User, e.Security.Password
	}
	return client.New(cfg)
}

// NewAdminClient makes the harness's client: root's certificate with --tls.
func (e *Env) NewAdminClient() (*client.Client, error) {
	cfg := e.clientConfig()
	if e.Security != nil {
		cfg.TLS = e.Security.AdminTLS
	}
	return client.New(cfg)
}

func (e *Env) clientConfig() client.Config {
	return client.Config{
		Endpoints:      e.Endpoints,
		DialTimeout:    time.Second,
		AttemptTimeout: attemptTimeout,
		SessionTTL:     clientSessionTT,
		Logger:         e.Logger,
	}
}

func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, opTimeout)
}

// Worker is one client goroutine's loop.
type Worker func(ctx context.Context, e *Env, id int, rng *rand.Rand)

// ---------------------------------------------------------------------------
// Register: reads, writes, CAS on keys with unique values.

func registerKey(e *Env, rng *rand.Rand) string {
	gen := e.regOps.Add(1) / (registerKeys * registerPerKey)
	k := fmt.Sprintf("reg/%d/%d", gen, rng.IntN(registerKeys))
	e.mu.Lock()
	e.regKeys[k] = true
	e.mu.Unlock()
	return k
}

// RegisterWorker runs register operations until ctx ends.
func RegisterWorker(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	seen := map[string]uint64{} // last version seen per key
	for n := 0; ctx.Err() == nil; n++ {
		e.throttle(ctx)
		key := registerKey(e, rng)
		octx, cancel := opCtx(ctx)
		switch p := rng.IntN(100); {
		case p < 45:
			op := e.H.Invoke(&Op{Client: id, Workload: "register", Type: "read", Key: key})
			resp, err := c.Get(octx, []byte(key))
			switch {
			case err == nil:
				op.Found, op.Value, op.Version = true, string(resp.GetKv().GetValue()), resp.GetKv().GetVersion()
				seen[key] = op.Version
				e.H.OK(op, resp.GetHeader())
			case errors.Is(err, client.ErrNotFound):
				e.H.OK(op, nil)
			default:
				e.H.Error(op, err)
			}
		case p < 80:
			v := fmt.Sprintf("c%d-%d", id, n)
			op := e.H.Invoke(&Op{Client: id, Workload: "register", Type: "write", Key: key, Value: v})
			resp, err := c.Put(octx, []byte(key), []byte(v))
			if err != nil {
				e.H.Error(op, err)
				break
			}
			op.Version = resp.GetKv().GetVersion()
			seen[key] = op.Version
			e.H.OK(op, resp.GetHeader())
		default:
			v := fmt.Sprintf("c%d-%d", id, n)
			exp := seen[key]
			if rng.IntN(4) == 0 && exp > 0 {
				exp-- // sometimes a stale expectation
			}
			op := e.H.Invoke(&Op{Client: id, Workload: "register", Type: "cas", Key: key, Value: v, Expected: &exp})
			resp, err := c.Put(octx, []byte(key), []byte(v), client.WithExpectedVersion(exp))
			if err != nil {
				e.H.Error(op, err)
				break
			}
			op.Version = resp.GetKv().GetVersion()
			seen[key] = op.Version
			e.H.OK(op, resp.GetHeader())
		}
		cancel()
	}
}

// ---------------------------------------------------------------------------
// Counters: exactly-once increments.

// CounterWorker adds 1 to counters until ctx ends.
func CounterWorker(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	for ctx.Err() == nil {
		e.throttle(ctx)
		key := fmt.Sprintf("ctr/%d", rng.IntN(counterKeys))
		e.mu.Lock()
		e.ctrKeys[key] = true
		e.mu.Unlock()
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "counter", Type: "add", Key: key, Delta: 1})
		resp, err := c.Add(octx, []byte(key), 1)
		cancel()
		if err != nil {
			e.H.Error(op, err)
			continue
		}
		op.Result = resp.GetValue()
		e.H.OK(op, resp.GetHeader())
	}
}

// ---------------------------------------------------------------------------
// TTL: short-TTL keys, read back around their deadline.

type ttlCheck struct {
	key string
	at  time.Time
}

// TTLWorker writes keys with short TTLs and reads them (List on the exact
// key, linearizable, so that even an absent key comes with a log time)
// before, around and after their deadline.
func TTLWorker(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	var due []ttlCheck
	nextPut := time.Now()
	for n := 0; ctx.Err() == nil; n++ {
		now := time.Now()
		if len(due) > 0 && !due[0].at.After(now) {
			chk := due[0]
			due = due[1:]
			octx, cancel := opCtx(ctx)
			op := e.H.Invoke(&Op{Client: id, Workload: "ttl", Type: "list", Key: chk.key})
			resp, err := c.List(octx, []byte(chk.key))
			cancel()
			if err != nil {
				e.H.Error(op, err)
				continue
			}
			for _, kv := range resp.GetKvs() {
				if string(kv.GetKey()) == chk.key {
					op.Found, op.Value, op.ExpiresAt = true, string(kv.GetValue()), kv.GetExpiresAt()
				}
			}
			e.H.OK(op, resp.GetHeader())
			continue
		}
		if now.Before(nextPut) {
			wait := time.Until(nextPut)
			if len(due) > 0 && due[0].at.Before(nextPut) {
				wait = time.Until(due[0].at)
			}
			sleepCtx(ctx, wait)
			continue
		}
		nextPut = now.Add(40 * time.Millisecond)
		key := fmt.Sprintf("ttl/%d/%d", id, n)
		ttl := ttlMin + time.Duration(rng.Int64N(int64(ttlMax-ttlMin)))
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "ttl", Type: "put-ttl", Key: key, Value: key, TTLms: ttl.Milliseconds()})
		resp, err := c.Put(octx, []byte(key), []byte(key), client.WithTTL(ttl))
		cancel()
		if err != nil {
			e.H.Error(op, err)
			continue
		}
		op.ExpiresAt = resp.GetKv().GetExpiresAt()
		e.H.OK(op, resp.GetHeader())
		// Reads: soon, just before, just after and well after the deadline.
		sent := time.Now()
		for _, at := range []time.Duration{
			time.Duration(rng.Int64N(int64(ttl / 2))),
			ttl - 100*time.Millisecond + time.Duration(rng.Int64N(int64(200*time.Millisecond))),
			ttl + 300*time.Millisecond + time.Duration(rng.Int64N(int64(time.Second))),
		} {
			due = insertCheck(due, ttlCheck{key, sent.Add(at)})
		}
	}
}

func insertCheck(due []ttlCheck, c ttlCheck) []ttlCheck {
	i := len(due)
	for i > 0 && due[i-1].at.After(c.at) {
		i--
	}
	due = append(due, ttlCheck{})
	copy(due[i+1:], due[i:])
	due[i] = c
	return due
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ---------------------------------------------------------------------------
// Sessions shared by the lock and memo workers.

// watchSession records when the client's view of session s ended, why,
// and how long the client's own lease (Deadline) still had to run then.
func watchSession(e *Env, id int, workload string, s *client.Session) {
	go func() {
		<-s.Done()
		left := time.Until(s.Deadline())
		op := e.H.Invoke(&Op{Client: id, Workload: workload, Type: "session-end", Session: s.ID(),
			LeaseLeftMs: left.Milliseconds(), Reason: sessionEndReason(s.Err())})
		e.H.OK(op, nil)
	}()
}

// sessionEndReason names why a session's Done closed.
func sessionEndReason(err error) string {
	switch {
	case errors.Is(err, client.ErrSessionLost):
		return "lost" // the client's own lease ran out first
	case errors.Is(err, client.ErrSessionExpired):
		return "expired" // the server said it had expired
	}
	return "closed"
}

// ---------------------------------------------------------------------------
// Lock: acquire, fenced write to the store and to an outside resource,
// release.

// FencedResource is a resource outside kvd that protects itself with
// fencing tokens: it remembers the highest token it accepted per lock and
// rejects lower ones; for a token not lower, it asks kvd (CheckFence,
// linearizable) whether the token still holds the lock.
type FencedResource struct {
	mu      sync.Mutex
	highest map[string]uint64
}

// NewFencedResource returns an empty resource.
func NewFencedResource() *FencedResource {
	return &FencedResource{highest: map[string]uint64{}}
}

// Write tries a write under token, recording it in h as op.
func (r *FencedResource) Write(ctx context.Context, c *client.Client, h *History, op *Op) {
	r.mu.Lock()
	defer r.mu.Unlock() // one writer at a time: the resource is serial
	if op.Token < r.highest[op.Key] {
		h.Fail(op, fmt.Errorf("resource: token %d below highest %d", op.Token, r.highest[op.Key]))
		return
	}
	resp, err := c.CheckFence(ctx, []byte(op.Key), op.Token)
	if err != nil {
		h.Fail(op, fmt.Errorf("resource: check fence: %w", err))
		return
	}
	if !resp.GetValid() {
		setHeader(op, resp.GetHeader())
		h.Fail(op, fmt.Errorf("resource: token %d not current (current %d)", op.Token, resp.GetCurrentToken()))
		return
	}
	r.highest[op.Key] = op.Token
	h.OK(op, resp.GetHeader())
}

// LockWorker cycles acquire, fenced put, resource write, release on one of
// lockNames locks. With raw set it uses client.Session calls (every answer
// recorded with its header); otherwise the lock.Mutex recipe.
func LockWorker(raw bool) Worker {
	return func(ctx context.Context, e *Env, id int, rng *rand.Rand) {
		c, err := e.NewClient()
		if err != nil {
			return
		}
		defer c.Close()
		var ls *lock.Session
		for n := 0; ctx.Err() == nil; n++ {
			if ls = keepLockSession(ctx, e, c, ls, id, "lock"); ls == nil {
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			e.throttle(ctx)
			name := fmt.Sprintf("lk/%d", rng.IntN(lockNames))
			if raw {
				lockCycleRaw(ctx, e, c, ls.ClientSession(), id, name, rng)
			} else {
				lockCycleMutex(ctx, e, c, ls, id, name, rng)
			}
		}
		if ls != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ls.Close(cctx)
			cancel()
		}
	}
}

// keepLockSession returns ls while it lives; once its Done closed it
// closes it (recorded as a close-session of workload) and makes a new one
// (TTL lockSessionTTL), watched by watchSession. It returns nil when no
// session could be made.
func keepLockSession(ctx context.Context, e *Env, c *client.Client, ls *lock.Session, id int, workload string) *lock.Session {
	if ls != nil {
		select {
		case <-ls.Done():
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			op := e.H.Invoke(&Op{Client: id, Workload: workload, Type: "close-session", Session: ls.ID()})
			if err := ls.Close(cctx); err != nil {
				e.H.Error(op, err)
			} else {
				e.H.OK(op, nil)
			}
			cancel()
			ls = nil
		default:
			return ls
		}
	}
	sctx, cancel := opCtx(ctx)
	defer cancel()
	s, err := lock.NewSession(sctx, c, lock.WithTTL(lockSessionTTL), lock.WithName(fmt.Sprintf("jepsen-%s-%d", workload, id)))
	if err != nil {
		return nil
	}
	watchSession(e, id, workload, s.ClientSession())
	return s
}

func recordGrant(op *Op, resp *kvpb.AcquireResponse) {
	op.Token = resp.GetToken()
	li := resp.GetLock()
	op.HeldSince, op.ExpiresAt, op.LockDelayMs = li.GetHeldSince(), li.GetExpiresAt(), li.GetLockDelayMs()
	if li.GetSession() != 0 {
		op.Session = li.GetSession()
	}
}

// useLock does the protected work under token: a fenced put, then the
// outside resource; both are recorded as operations of workload.
func useLock(ctx context.Context, e *Env, workload string, c *client.Client, s *client.Session, id int, name string, token uint64, n int) {
	octx, cancel := opCtx(ctx)
	defer cancel()
	op := e.H.Invoke(&Op{Client: id, Workload: workload, Type: "fenced-put", Key: name, Token: token, Session: s.ID(), Value: fmt.Sprintf("%d-%d", token, n)})
	resp, err := s.Put(octx, []byte("lkdata/"+name), []byte(op.Value), client.WithFence([]byte(name), token))
	if err != nil {
		e.H.Error(op, err)
		return
	}
	op.Effect = resp.GetKv().GetModIndex()
	e.H.OK(op, resp.GetHeader())
	rop := e.H.Invoke(&Op{Client: id, Workload: workload, Type: "resource", Key: name, Token: token, Session: s.ID()})
	e.Resource.Write(octx, c, e.H, rop)
}

func lockCycleRaw(ctx context.Context, e *Env, c *client.Client, s *client.Session, id int, name string, rng *rand.Rand) {
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	op := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "acquire", Key: name, Session: s.ID()})
	// Some grants carry a lock-delay: an involuntary release of them (the
	// session expired) must keep the lock from its next holder that long.
	var delay time.Duration
	if rng.IntN(3) == 0 {
		delay = lockDelay
	}
	resp, err := s.Acquire(octx, []byte(name), time.Second, delay)
	cancel()
	if err != nil || !resp.GetAcquired() {
		if err != nil {
			e.H.Error(op, err)
		} else {
			op.Session = s.ID()
			e.H.Fail(op, errors.New("not acquired"))
		}
		// Leave the line (and release a grant that raced with the end).
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		cop := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "cancel-wait", Key: name, Session: s.ID()})
		if err := s.CancelWait(cctx, []byte(name)); err != nil {
			e.H.Error(cop, err)
		} else {
			e.H.OK(cop, nil)
		}
		cancel()
		return
	}
	recordGrant(op, resp)
	op.Session = s.ID()
	e.H.OK(op, resp.GetHeader())
	token := op.Token
	useLock(ctx, e, "lock", c, s, id, name, token, int(op.ID))
	sleepCtx(ctx, time.Duration(rng.IntN(30))*time.Millisecond)
	rctx, cancel := opCtx(ctx)
	defer cancel()
	rop := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "release", Key: name, Token: token, Session: s.ID()})
	rresp, err := s.Release(rctx, []byte(name), token)
	if err != nil {
		e.H.Error(rop, err)
		return
	}
	rop.Effect = rresp.GetNextToken() // the release's own index when it granted a waiter
	e.H.OK(rop, rresp.GetHeader())
}

func lockCycleMutex(ctx context.Context, e *Env, c *client.Client, ls *lock.Session, id int, name string, rng *rand.Rand) {
	m := lock.NewMutex(ls, name)
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	op := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "acquire", Key: name, Session: ls.ID(), Recipe: "mutex"})
	err := m.Lock(octx)
	cancel()
	if err != nil {
		// Lock takes the session out of the line itself. Any grant it may
		// have released is recorded as a cancel-wait of unknown outcome.
		e.H.Error(op, err)
		cop := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "cancel-wait", Key: name, Session: ls.ID()})
		e.H.Info(cop, errors.New("lock.Mutex cleanup"))
		return
	}
	g := m.Grant()
	recordGrant(op, g)
	op.Session = ls.ID()
	e.H.OK(op, g.GetHeader())
	token := m.Token()
	select {
	case <-m.Lost():
	default:
		useLock(ctx, e, "lock", c, ls.ClientSession(), id, name, token, int(op.ID))
	}
	sleepCtx(ctx, time.Duration(rng.IntN(30))*time.Millisecond)
	rctx, cancel := opCtx(ctx)
	defer cancel()
	rop := e.H.Invoke(&Op{Client: id, Workload: "lock", Type: "release", Key: name, Token: token, Session: ls.ID()})
	if err := m.Unlock(rctx); err != nil {
		if errors.Is(err, lock.ErrNotLocked) || errors.Is(err, client.ErrStaleToken) {
			e.H.Fail(rop, err)
		} else {
			e.H.Info(rop, err)
		}
		return
	}
	// Unlock gives no header: the release is known to have happened,
	// not where in the log.
	e.H.OK(rop, nil)
}

// ---------------------------------------------------------------------------
// Memoize: raw Fill/Store with the lease token in the value, and the
// cache.Memoize recipe.

func memoKey(e *Env, prefix string, rng *rand.Rand) string {
	gen := e.memoOps.Add(1) / (memoKeys * memoPerKey)
	return fmt.Sprintf("%s/%d/%d", prefix, gen, rng.IntN(memoKeys))
}

// MemoWorker runs Fill and Store on cache keys, sometimes storing after
// its lease ran out.
func MemoWorker(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	var s *client.Session
	for n := 0; ctx.Err() == nil; n++ {
		if s != nil {
			select {
			case <-s.Done():
				s = nil
			default:
			}
		}
		if s == nil {
			sctx, cancel := opCtx(ctx)
			ns, err := c.NewSession(sctx, memoSessionTTL, fmt.Sprintf("jepsen-memo-%d", id))
			cancel()
			if err != nil {
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			s = ns
			watchSession(e, id, "memo", s)
		}
		e.throttle(ctx)
		key := memoKey(e, "memo", rng)
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "memo", Type: "fill", Key: key, Session: s.ID()})
		resp, err := s.Fill(octx, []byte(key), fillLease, time.Second)
		cancel()
		if err != nil {
			e.H.Error(op, err)
			continue
		}
		ent := resp.GetEntry()
		op.State = strings.TrimPrefix(resp.GetState().String(), "CACHE_STATE_")
		op.Token = resp.GetLeaseToken()
		op.Value, op.Filled = string(ent.GetValue()), ent.GetFilledIndex()
		op.Found = len(ent.GetValue()) > 0
		if l := ent.GetLease(); l != nil {
			op.ExpiresAt = l.GetExpiresAt()
		}
		e.H.OK(op, resp.GetHeader())
		if op.Token == 0 {
			continue
		}
		// We hold the fill lease: compute and store.
		work := time.Duration(rng.IntN(20)) * time.Millisecond
		if rng.IntN(8) == 0 {
			work = fillLease + 300*time.Millisecond // outlive the lease
		}
		sleepCtx(ctx, work)
		v := fmt.Sprintf("m%d-%d-t%d", id, n, op.Token)
		sctx, cancel := opCtx(ctx)
		sop := e.H.Invoke(&Op{Client: id, Workload: "memo", Type: "store", Key: key, Token: op.Token, Value: v, Session: s.ID()})
		sresp, err := s.Store(sctx, &kvpb.StoreRequest{Key: []byte(key), Token: op.Token, Value: []byte(v), TtlMs: 1000})
		cancel()
		if err != nil {
			e.H.Error(sop, err)
			continue
		}
		sop.Filled = sresp.GetEntry().GetFilledIndex()
		sop.Effect = sop.Filled
		e.H.OK(sop, sresp.GetHeader())
	}
	if s != nil {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s.Close(cctx)
		cancel()
	}
}

// MemoizeWorker calls cache.Memoize; every caller must get a value that
// some caller's fn computed for that key.
func MemoizeWorker(ctx context.Context, e *Env, id int, rng *rand.Rand) {
	c, err := e.NewClient()
	if err != nil {
		return
	}
	defer c.Close()
	cc := cache.New(c, fmt.Sprintf("jepsen-%d", id), cache.FillLease(fillLease))
	defer cc.Close()
	for n := 0; ctx.Err() == nil; n++ {
		e.throttle(ctx)
		key := memoKey(e, "memoize", rng)
		octx, cancel := opCtx(ctx)
		op := e.H.Invoke(&Op{Client: id, Workload: "memo", Type: "memoize", Key: key})
		// A run takes a while, sometimes most of its lease. (Drawn here:
		// fn may run on the cache's goroutine after this call returned.)
		work := time.Duration(5+rng.IntN(20)) * time.Millisecond
		if rng.IntN(10) == 0 {
			work = 3 * fillLease / 4 // never more than its lease
		}
		v, err := cc.Memoize(octx, key, time.Second, func(ctx context.Context) ([]byte, error) {
			// Each run is recorded: the memoize checker counts them and
			// finds runs for one key under two live leases at once.
			val := fmt.Sprintf("z%d-%d", id, n)
			run := e.H.Invoke(&Op{Client: id, Workload: "memo", Type: "compute", Key: key, Value: val, CallInvoke: op.Invoke})
			sleepCtx(ctx, work)
			e.mu.Lock()
			if e.computed[key] == nil {
				e.computed[key] = map[string]bool{}
			}
			e.computed[key][val] = true
			e.mu.Unlock()
			e.H.OK(run, nil)
			return []byte(val), nil
		})
		cancel()
		if err != nil {
			e.H.Error(op, err)
			continue
		}
		op.Value = string(v)
		op.Found = e.Computed(key, op.Value)
		e.H.OK(op, nil)
	}
}

// Computed reports whether fn computed val for the memoize key.
func (e *Env) Computed(key, val string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.computed[key][val]
}
