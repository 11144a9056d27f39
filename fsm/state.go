package fsm

import (
	"cmp"
	"slices"
	"strings"

	"github.com/google/btree"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// btreeDegree is the fan-out of every btree in the state.
const btreeDegree = 32

// The items kept in btrees are VALUES, and every slice in them is treated as
// immutable (replaced, never edited in place). With btree's copy-on-write
// Clone this makes Snapshot a cheap point-in-time copy that later Applies
// cannot disturb. The key tree is the exception in form only: it holds
// pointers to kvItems, and an item is never changed once it is in the tree
// (a write stores a new one), which keeps the same guarantee.
//
// Why pointers for keys: a btree node's slice has room for 2*degree-1
// items, and nodes are between half full and full (half full after
// sequential inserts, which a restore is). A kvItem by value costs its 80
// bytes a slot, so about 160 bytes a key; a pointer costs 8 a slot and the
// item 80 once. The key tree is the one that grows with the data; the small
// trees keep values.

// kvItem is one key.
type kvItem struct {
	key       string
	value     []byte
	createIdx uint64
	modIdx    uint64
	version   uint64
	expiresAt int64  // 0: no TTL
	session   uint64 // the session the key is bound to (0: none): deleted when it ends
}

// session is a client session. The held/waiting sets are derived from the
// locks and cache entries (rebuilt on Restore, not snapshotted).
type session struct {
	id        uint64
	ttlMs     int64
	expiresAt int64
	createdAt int64
	name      string
	owner     string // user who created it ("" when auth was off)
	// minPending is the dedup watermark: results below it are forgotten and a
	// command below it is rejected with STALE_SEQUENCE. It never goes down.
	minPending uint64
	dedup      *btree.BTreeG[dedupEntry] // by seq; results never mutated once stored

	locks      map[string]struct{} // locks held
	lockWaits  map[string]struct{} // lock lines it stands in
	leases     map[string]struct{} // cache keys whose fill lease it holds
	cacheWaits map[string]struct{} // cache keys it waits on
	keys       map[string]struct{} // keys bound to it (Put with session)
}

func newSession(id uint64) *session {
	return &session{
		id:         id,
		dedup:      btree.NewG(btreeDegree, func(a, b dedupEntry) bool { return a.seq < b.seq }),
		locks:      map[string]struct{}{},
		lockWaits:  map[string]struct{}{},
		leases:     map[string]struct{}{},
		cacheWaits: map[string]struct{}{},
		keys:       map[string]struct{}{},
	}
}

// dedupEntry is a remembered result of a session's command: metadata
// only (see slim), and the digest of the command's body (0: not known).
type dedupEntry struct {
	seq    uint64
	res    *kvpb.CommandResult
	digest uint64
}

// lockWaiter stands in a lock's FIFO line.
type lockWaiter struct {
	session     uint64
	queuedAt    int64
	waitUntil   int64
	lockDelayMs int64  // from its Acquire, kept on the lock when granted
	value       []byte // from its Acquire (an election candidate's value), the lock's value when granted
}

// lockItem is a lock that is held, has waiters or is within its delay.
type lockItem struct {
	name         string
	token        uint64 // 0: free
	session      uint64
	heldSince    int64
	waiters      []lockWaiter // FIFO; replaced, never edited in place
	delayUntil   int64
	lockDelayMs  int64
	value        []byte // the holder's value (elections); nil when free
	brokenToken  uint64
	brokenAt     int64
	brokenReason string
	// freedAt is the log time the lock last fell free (release, its
	// holder's session expiring, a break) while it stays free, for the
	// handoff gap of the next grant to a waiter. Not in the snapshot: a
	// restored free lock has 0 and its next grant reports no gap.
	freedAt int64
}

// fillLease is the right to fill a cache entry. token 0: none.
type fillLease struct {
	session   uint64
	token     uint64
	expiresAt int64
}

type cacheWaiter struct {
	session   uint64
	waitUntil int64
}

// cacheItem is one cache entry. It exists while it has a value, a lease or
// waiters.
type cacheItem struct {
	key        string
	value      []byte
	hasValue   bool
	freshUntil int64
	staleUntil int64
	filledIdx  uint64
	isError    bool
	lease      fillLease
	leaseMs    int64         // lease length given to the next waiter
	waiters    []cacheWaiter // FIFO; replaced, never edited in place
}

func (c *cacheItem) size() uint64 { return uint64(len(c.key) + len(c.value)) }

// removeAt is when the value stops being servable at all.
func (c *cacheItem) removeAt() int64 { return max(c.freshUntil, c.staleUntil) }

// fillRef orders cache entries with a value by (filled index, key) for eviction.
type fillRef struct {
	idx uint64
	key string
}

// member is a cluster member's addresses learned through the log.
type member struct {
	name, peerAddr, clientAddr string
}

// cacheCounters are the replicated cache statistics.
type cacheCounters struct {
	maxBytes            uint64
	evictions           uint64
	stores              uint64
	staleStoresRejected uint64
	leasesGranted       uint64
	leasesExpired       uint64
}

// deadlineKind orders deadlines that fall at the same log time: the order in
// which expiry handles them.
type deadlineKind uint8

const (
	dlKey         deadlineKind = iota + 1 // key TTL; name = key
	dlSession                             // session expiry; id = session
	dlLockWaiter                          // wait_until; id = session, name = lock
	dlLockGrant                           // delay_until passed: grant head; name = lock
	dlLease                               // fill lease expiry; name = cache key
	dlCacheWaiter                         // cache wait ends; id = session, name = key
	dlCache                               // cache value past its stale window; name = key
)

// deadline is one entry of the ordered deadline index.
type deadline struct {
	at   int64
	kind deadlineKind
	id   uint64
	name string
}

func deadlineLess(a, b deadline) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	if a.id != b.id {
		return a.id < b.id
	}
	return a.name < b.name
}

// state is the whole replicated state plus derived indexes.
type state struct {
	index   uint64 // last applied
	logTime int64

	kv       *btree.BTreeG[*kvItem]
	sessions map[uint64]*session
	locks    *btree.BTreeG[lockItem]
	cache    *btree.BTreeG[cacheItem]
	members  map[string]member
	// lastBreaks: the last break of each recently broken lock (noteBreak).
	lastBreaks map[string]lastBreak
	counters   cacheCounters
	auth       authState

	// limits are the StateLimits of the last command that carried them.
	// A zero limit means "no limit".
	limits *kvpb.StateLimits

	// Derived, rebuilt on Restore.
	deadlines  *btree.BTreeG[deadline]
	byFill     *btree.BTreeG[fillRef]
	cacheBytes uint64
	// Counts for Stats, kept in step by the accessors below.
	kvBytes      uint64 // keys and values
	locksHeld    int
	lockWaiters  int
	cacheWaiters int
	fillLeases   int

	// Per-apply scratch.
	granted     map[string]bool // locks granted by the current entry
	touched     []watchKey      // watches to fire after the entry
	handoffs    []int64         // log-time gaps of the entry's grants to waiters
	authChanged bool            // the entry changed auth state: publish a new AuthView
	collect     bool            // record the entry's events (ApplyEvents)
	events      []Event         // the entry's events, in the order it made them
	cause       cause           // why the current step changes what it changes
}

func newState() *state {
	return &state{
		kv:        btree.NewG(btreeDegree, func(a, b *kvItem) bool { return a.key < b.key }),
		sessions:  map[uint64]*session{},
		locks:     btree.NewG(btreeDegree, func(a, b lockItem) bool { return a.name < b.name }),
		cache:     btree.NewG(btreeDegree, func(a, b cacheItem) bool { return a.key < b.key }),
		members:   map[string]member{},
		auth:      newAuthState(),
		deadlines: btree.NewG(btreeDegree, deadlineLess),
		byFill: btree.NewG(btreeDegree, func(a, b fillRef) bool {
			return cmp.Or(cmp.Compare(a.idx, b.idx), strings.Compare(a.key, b.key)) < 0
		}),
		granted:    map[string]bool{},
		lastBreaks: map[string]lastBreak{},
	}
}

// lastBreak is the last operator break of a lock, kept after the lock's own
// record is gone (a broken lock with no waiters and no lock-delay is free),
// so `lock show` can still say who broke it, when and why.
type lastBreak struct {
	name   string
	token  uint64 // the token the break ended
	at     int64  // log time
	reason string
	index  uint64 // entry of the break: the oldest is forgotten first
}

// maxLastBreaks bounds the breaks remembered (a few hundred KiB at most).
const maxLastBreaks = 1024

// noteBreak remembers a break, forgetting the oldest beyond maxLastBreaks.
func (s *state) noteBreak(name string, token uint64, reason string) {
	s.lastBreaks[name] = lastBreak{name: name, token: token, at: s.logTime, reason: reason, index: s.index}
	if len(s.lastBreaks) <= maxLastBreaks {
		return
	}
	oldest := ""
	for n, b := range s.lastBreaks { // the minimum index is unique: the order does not matter
		if oldest == "" || b.index < s.lastBreaks[oldest].index || (b.index == s.lastBreaks[oldest].index && n < oldest) {
			oldest = n
		}
	}
	delete(s.lastBreaks, oldest)
}

// sortedBreaks returns the remembered breaks by lock name.
func (s *state) sortedBreaks() []lastBreak {
	out := make([]lastBreak, 0, len(s.lastBreaks))
	for _, b := range s.lastBreaks {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b lastBreak) int { return strings.Compare(a.name, b.name) })
	return out
}

func (s *state) addDeadline(d deadline) {
	if d.at != 0 {
		s.deadlines.ReplaceOrInsert(d)
	}
}

func (s *state) delDeadline(d deadline) {
	if d.at != 0 {
		s.deadlines.Delete(d)
	}
}

// --- accessors that keep derived indexes in step ---

func (s *state) getKey(key string) (kvItem, bool) {
	if it, ok := s.kv.Get(&kvItem{key: key}); ok {
		return *it, true
	}
	return kvItem{}, false
}

func (it kvItem) size() uint64 { return uint64(len(it.key) + len(it.value)) }

// putKey stores a copy of it (the tree's items are never changed).
func (s *state) putKey(it kvItem) {
	if old, ok := s.kv.ReplaceOrInsert(&it); ok {
		s.delDeadline(deadline{at: old.expiresAt, kind: dlKey, name: old.key})
		s.kvBytes -= old.size()
		s.unbindKey(*old)
	}
	s.addDeadline(deadline{at: it.expiresAt, kind: dlKey, name: it.key})
	s.kvBytes += it.size()
	s.bindKey(it)
}

func (s *state) delKey(key string) bool {
	old, ok := s.kv.Delete(&kvItem{key: key})
	if ok {
		s.delDeadline(deadline{at: old.expiresAt, kind: dlKey, name: key})
		s.kvBytes -= old.size()
		s.unbindKey(*old)
	}
	return ok
}

// bindKey and unbindKey keep the sessions' sets of bound keys in step with
// the keys (every write and delete of a key goes through putKey or delKey).
func (s *state) bindKey(it kvItem) {
	if se := s.sessions[it.session]; se != nil && it.session != 0 {
		se.keys[it.key] = struct{}{}
	}
}

func (s *state) unbindKey(it kvItem) {
	if se := s.sessions[it.session]; se != nil && it.session != 0 {
		delete(se.keys, it.key)
	}
}

func (s *state) setSessionExpiry(se *session, at int64) {
	s.delDeadline(deadline{at: se.expiresAt, kind: dlSession, id: se.id})
	se.expiresAt = at
	s.addDeadline(deadline{at: at, kind: dlSession, id: se.id})
}

// liveSession returns the session if it exists and has not expired at log time.
func (s *state) liveSession(id uint64) *session {
	se := s.sessions[id]
	if se == nil || se.expiresAt <= s.logTime {
		return nil
	}
	return se
}

func (s *state) getLock(name string) (lockItem, bool) { return s.locks.Get(lockItem{name: name}) }

// putLock stores a lock, keeps the deadline index and the sessions' sets in
// step with it, and deletes it when it is free, has no line and no delay.
func (s *state) putLock(l lockItem) {
	old, had := s.locks.Get(lockItem{name: l.name})
	if had {
		s.unindexLock(old)
	}
	s.lockChanged(old, l)
	if l.token == 0 && len(l.waiters) == 0 && l.delayUntil <= s.logTime {
		if had {
			s.locks.Delete(old)
		}
	} else {
		s.locks.ReplaceOrInsert(l)
		s.indexLock(l)
	}
	s.touch(WatchLock, l.name)
}

func (s *state) unindexLock(l lockItem) {
	if l.token != 0 {
		s.locksHeld--
	}
	s.lockWaiters -= len(l.waiters)
	if se := s.sessions[l.session]; se != nil && l.token != 0 {
		delete(se.locks, l.name)
	}
	for _, w := range l.waiters {
		if se := s.sessions[w.session]; se != nil {
			delete(se.lockWaits, l.name)
		}
		s.delDeadline(deadline{at: w.waitUntil, kind: dlLockWaiter, id: w.session, name: l.name})
	}
	if l.token == 0 {
		s.delDeadline(deadline{at: l.delayUntil, kind: dlLockGrant, name: l.name})
	}
}

func (s *state) indexLock(l lockItem) {
	if l.token != 0 {
		s.locksHeld++
	}
	s.lockWaiters += len(l.waiters)
	if se := s.sessions[l.session]; se != nil && l.token != 0 {
		se.locks[l.name] = struct{}{}
	}
	for _, w := range l.waiters {
		if se := s.sessions[w.session]; se != nil {
			se.lockWaits[l.name] = struct{}{}
		}
		s.addDeadline(deadline{at: w.waitUntil, kind: dlLockWaiter, id: w.session, name: l.name})
	}
	// When the delay of a free lock passes, its head waiter is granted, or
	// the lock, now empty, is deleted. (grantNext defers a grant the current
	// entry cannot make by setting delayUntil to log time + 1.)
	if l.token == 0 && l.delayUntil > 0 {
		s.addDeadline(deadline{at: l.delayUntil, kind: dlLockGrant, name: l.name})
	}
}

func (s *state) getCache(key string) (cacheItem, bool) { return s.cache.Get(cacheItem{key: key}) }

// putCache stores a cache entry (deleting it when it has no value, lease or
// waiters) and keeps the indexes, byte count and sessions' sets in step.
func (s *state) putCache(c cacheItem) {
	old, had := s.cache.Get(cacheItem{key: c.key})
	if had {
		s.unindexCache(old)
		s.cache.Delete(old)
	}
	s.cacheChanged(old, c, false)
	if c.hasValue || c.lease.token != 0 || len(c.waiters) > 0 {
		s.cache.ReplaceOrInsert(c)
		s.indexCache(c)
	}
	s.touch(WatchCache, c.key)
}

func (s *state) delCache(key string) bool {
	old, had := s.cache.Get(cacheItem{key: key})
	if had {
		s.unindexCache(old)
		s.cache.Delete(old)
		s.touch(WatchCache, key)
		s.cacheChanged(old, old, true)
	}
	return had
}

func (s *state) unindexCache(c cacheItem) {
	s.cacheBytes -= c.size()
	s.cacheWaiters -= len(c.waiters)
	if c.lease.token != 0 {
		s.fillLeases--
	}
	if c.hasValue {
		s.byFill.Delete(fillRef{c.filledIdx, c.key})
		s.delDeadline(deadline{at: c.removeAt(), kind: dlCache, name: c.key})
	}
	if c.lease.token != 0 {
		if se := s.sessions[c.lease.session]; se != nil {
			delete(se.leases, c.key)
		}
		s.delDeadline(deadline{at: c.lease.expiresAt, kind: dlLease, name: c.key})
	}
	for _, w := range c.waiters {
		if se := s.sessions[w.session]; se != nil {
			delete(se.cacheWaits, c.key)
		}
		s.delDeadline(deadline{at: w.waitUntil, kind: dlCacheWaiter, id: w.session, name: c.key})
	}
}

func (s *state) indexCache(c cacheItem) {
	s.cacheBytes += c.size()
	s.cacheWaiters += len(c.waiters)
	if c.lease.token != 0 {
		s.fillLeases++
	}
	if c.hasValue {
		s.byFill.ReplaceOrInsert(fillRef{c.filledIdx, c.key})
		s.addDeadline(deadline{at: c.removeAt(), kind: dlCache, name: c.key})
	}
	if c.lease.token != 0 {
		if se := s.sessions[c.lease.session]; se != nil {
			se.leases[c.key] = struct{}{}
		}
		s.addDeadline(deadline{at: c.lease.expiresAt, kind: dlLease, name: c.key})
	}
	for _, w := range c.waiters {
		if se := s.sessions[w.session]; se != nil {
			se.cacheWaits[c.key] = struct{}{}
		}
		s.addDeadline(deadline{at: w.waitUntil, kind: dlCacheWaiter, id: w.session, name: c.key})
	}
}

// rebuild recomputes every derived index from the replicated state (Restore).
func (s *state) rebuild() {
	s.deadlines.Clear(false)
	s.byFill.Clear(false)
	s.cacheBytes, s.kvBytes = 0, 0
	s.locksHeld, s.lockWaiters, s.cacheWaiters, s.fillLeases = 0, 0, 0, 0
	for _, se := range s.sessions {
		s.addDeadline(deadline{at: se.expiresAt, kind: dlSession, id: se.id})
		clear(se.keys)
	}
	s.kv.Ascend(func(it *kvItem) bool {
		s.addDeadline(deadline{at: it.expiresAt, kind: dlKey, name: it.key})
		s.kvBytes += it.size()
		s.bindKey(*it)
		return true
	})
	s.locks.Ascend(func(l lockItem) bool { s.indexLock(l); return true })
	s.cache.Ascend(func(c cacheItem) bool { s.indexCache(c); return true })
}
