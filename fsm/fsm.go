package fsm

import (
	"crypto/sha256"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// FSM is the replicated state machine. Apply, Snapshot and Restore are called
// by raft; the read methods may be called concurrently from any goroutine.
// Every proto a method returns is a fresh copy the caller may keep and change.
type FSM struct {
	mu sync.RWMutex // Apply and Restore write; reads share
	s  *state
	// auth is the AuthView of s, replaced (under mu) after every entry
	// that changes auth state; read without a lock.
	auth atomic.Pointer[AuthView]

	watchMu sync.Mutex
	watches map[watchKey]map[uint64]chan struct{}
	watchID uint64

	// onHandoff, when set, hears each grant of a lock to a waiter (metrics).
	onHandoff func(index uint64, gapNs int64)
}

// OnLockHandoff sets fn to be called, after the Apply that made it and
// outside the fsm's lock, for every grant of a lock to a waiter, with the
// entry's index and the gap in log time since the lock fell free: 0 when
// the release granted it at once; the lock-delay, or the lag of the expiry
// behind the holder's deadline, otherwise. Grants of a lock that was
// restored from a snapshot while free report nothing. It only observes:
// the state is the same with or without it. Call it before the first Apply.
func (f *FSM) OnLockHandoff(fn func(index uint64, gapNs int64)) { f.onHandoff = fn }

// New returns an empty state machine.
func New() *FSM {
	f := &FSM{s: newState(), watches: map[watchKey]map[uint64]chan struct{}{}}
	f.publishAuth(f.s)
	return f
}

// Apply applies the committed log entry at index. cmd is the entry's
// marshalled kvpb.Command, and the result is a *kvpb.CommandResult (errors are
// results with a code, never panics). An entry that carries no command (nil
// cmd: a configuration change, a no-op) returns nil but still advances the
// applied index. The node's raft adapter decides which entries carry commands.
func (f *FSM) Apply(index uint64, cmd []byte) *kvpb.CommandResult {
	res, _ := f.apply(index, cmd, false)
	return res
}

// ApplyEvents is Apply that also returns the changes the entry made, in
// the order it made them: every change to a key, lock, cache entry or
// session, the expiries the entry's log time brought included (an entry
// that changes nothing returns none). The same log gives the same events
// on every replica. Collecting them changes nothing in the state.
func (f *FSM) ApplyEvents(index uint64, cmd []byte) (*kvpb.CommandResult, []Event) {
	return f.apply(index, cmd, true)
}

func (f *FSM) apply(index uint64, cmd []byte, collect bool) (*kvpb.CommandResult, []Event) {
	f.mu.Lock()
	s := f.s
	s.index = index
	clear(s.granted)
	s.collect, s.events, s.cause = collect, nil, causeRequest
	var res *kvpb.CommandResult
	if cmd != nil {
		res = s.applyCommand(cmd)
	}
	if s.authChanged {
		f.publishAuth(s)
	}
	touched, handoffs := s.touched, s.handoffs
	s.touched, s.handoffs = nil, nil
	events := s.events
	s.events = nil
	f.mu.Unlock()

	f.fire(touched)
	if f.onHandoff != nil {
		for _, gap := range handoffs {
			f.onHandoff(index, gap)
		}
	}
	return res, events
}

// AppliedIndex is the index of the last applied entry.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.index
}

// LogTime is the replicated clock after the last applied entry.
func (f *FSM) LogTime() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.logTime
}

// Get returns the key, or nil when absent or expired at now.
func (f *FSM) Get(key []byte, now int64) *kvpb.KeyValue {
	kv, _ := f.GetAt(key, now)
	return kv
}

// GetAt is Get judged at max(now, the state's own log time), which it
// returns: the time a response header must name. A read prepared at now
// may find state that has since applied later entries (a tick that
// expired the key); it must not claim an earlier time than that state's.
func (f *FSM) GetAt(key []byte, now int64) (*kvpb.KeyValue, int64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now = max(now, f.s.logTime)
	it, ok := f.s.getKey(string(key))
	if !ok || !it.live(now) {
		return nil, now
	}
	return it.proto(false), now
}

// ItemOverhead bounds the encoding of one listed item beyond its key and
// value bytes (field tags, lengths, indexes, version, expiry): List and
// Locks count it against their byte budget.
const ItemOverhead = 64

// List returns up to limit live keys with prefix, strictly after startAfter
// (limit <= 0: no limit), stopping before the keys and values would exceed
// maxBytes (each counted with ItemOverhead; maxBytes <= 0: no budget). The
// first key is returned whatever its size, so a page always makes
// progress. more reports that further keys match.
func (f *FSM) List(prefix, startAfter []byte, limit, maxBytes int, keysOnly bool, now int64) (kvs []*kvpb.KeyValue, more bool) {
	kvs, more, _ = f.ListAt(prefix, startAfter, limit, maxBytes, keysOnly, now)
	return kvs, more
}

// ListAt is List judged at max(now, the state's own log time), which it
// returns for the response header (see GetAt).
func (f *FSM) ListAt(prefix, startAfter []byte, limit, maxBytes int, keysOnly bool, now int64) (kvs []*kvpb.KeyValue, more bool, at int64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now = max(now, f.s.logTime)
	at = now
	p, after := string(prefix), string(startAfter)
	from := max(p, after)
	size := 0
	f.s.kv.AscendGreaterOrEqual(&kvItem{key: from}, func(it *kvItem) bool {
		if !strings.HasPrefix(it.key, p) {
			return false
		}
		if (len(startAfter) > 0 && it.key == after) || !it.live(now) {
			return true
		}
		n := len(it.key) + ItemOverhead
		if !keysOnly {
			n += len(it.value)
		}
		if (limit > 0 && len(kvs) == limit) || (maxBytes > 0 && len(kvs) > 0 && size+n > maxBytes) {
			more = true
			return false
		}
		size += n
		kvs = append(kvs, it.proto(keysOnly))
		return true
	})
	return kvs, more, at
}

// SessionCount is the number of sessions the fsm holds (live ones, and
// any whose expiry the next entry will apply).
func (f *FSM) SessionCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.s.sessions)
}

// LockCount is the number of locks the fsm holds: held, waited for, or
// within their lock-delay.
func (f *FSM) LockCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.locks.Len()
}

// HasLock reports whether the fsm holds anything for lock name.
func (f *FSM) HasLock(name []byte) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := f.s.getLock(string(name))
	return ok
}

// SessionEnded reports whether session id certainly no longer exists: the
// fsm has applied entry id (sessions are named by their creating entry)
// and holds no session id, so it was closed or expired (or the entry never
// created one). Ids are never reused, so the answer cannot change.
func (f *FSM) SessionEnded(id uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return id != 0 && f.s.index >= id && f.s.sessions[id] == nil
}

// Session returns a live session, or nil.
func (f *FSM) Session(id uint64, now int64) *kvpb.SessionInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	se := f.s.sessions[id]
	if se == nil || se.expiresAt <= now {
		return nil
	}
	return se.proto()
}

// SessionOwner returns the user who created session id ("" when auth was
// off), and whether the fsm holds the session at all (expired or not: the
// owner of an id never changes, so this is safe to ask of any replica that
// has applied the id's entry).
func (f *FSM) SessionOwner(id uint64) (owner string, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	se := f.s.sessions[id]
	if se == nil {
		return "", false
	}
	return se.owner, true
}

// LockHolder returns the session that holds lock name under token, and
// whether token is the lock's current token.
func (f *FSM) LockHolder(name []byte, token uint64) (session uint64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, found := f.s.locks.Get(lockItem{name: string(name)})
	if !found || l.token != token || token == 0 {
		return 0, false
	}
	return l.session, true
}

// Lock returns the lock's state, or nil when the fsm holds nothing for it.
// A holder whose session has expired by now is shown as gone.
func (f *FSM) Lock(name []byte, now int64) *kvpb.LockInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.lockLocked(name, now)
}

// LockAt is Lock, with the index of the state it read: a watch from that
// index continues exactly after it (an election's Observe).
func (f *FSM) LockAt(name []byte, now int64) (*kvpb.LockInfo, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.lockLocked(name, now), f.s.index
}

func (f *FSM) lockLocked(name []byte, now int64) *kvpb.LockInfo {
	l, ok := f.s.getLock(string(name))
	lb, broken := f.s.lastBreaks[string(name)]
	if !ok {
		if broken {
			// Free, but broken not long ago: say so.
			return &kvpb.LockInfo{Name: []byte(lb.name), BrokenToken: lb.token, BrokenAt: lb.at, BrokenReason: lb.reason}
		}
		return nil
	}
	info := f.s.lockProto(l, now)
	if info.BrokenAt == 0 && broken {
		info.BrokenToken, info.BrokenAt, info.BrokenReason = lb.token, lb.at, lb.reason
	}
	return info
}

// Locks lists locks with the prefix that are held or have waiters, by
// name, strictly after startAfter: up to limit (<= 0: no limit), stopping
// before their encoding would exceed maxBytes (<= 0: no budget; the first
// lock is returned whatever its size). more reports that further locks
// match.
func (f *FSM) Locks(prefix, startAfter []byte, limit, maxBytes int, now int64) (out []*kvpb.LockInfo, more bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, after := string(prefix), string(startAfter)
	size := 0
	f.s.locks.AscendGreaterOrEqual(lockItem{name: max(p, after)}, func(l lockItem) bool {
		if !strings.HasPrefix(l.name, p) {
			return false
		}
		if len(startAfter) > 0 && l.name == after {
			return true
		}
		info := f.s.lockProto(l, now)
		if info.Token == 0 && len(info.Waiters) == 0 {
			return true
		}
		n := proto.Size(info) + 8
		if (limit > 0 && len(out) == limit) || (maxBytes > 0 && len(out) > 0 && size+n > maxBytes) {
			more = true
			return false
		}
		size += n
		out = append(out, info)
		return true
	})
	return out, more
}

// CheckFence reports whether token still holds the lock at now (the holder's
// session has not expired by now), and the lock's current token (0: free).
func (f *FSM) CheckFence(name []byte, token uint64, now int64) (valid bool, current uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, ok := f.s.getLock(string(name))
	if !ok || l.token == 0 {
		return false, 0
	}
	se := f.s.sessions[l.session]
	if se == nil || se.expiresAt <= now {
		return false, 0
	}
	return token != 0 && token == l.token, l.token
}

// CacheEntry returns a cache entry and its state at now (nil, MISS if none).
func (f *FSM) CacheEntry(key []byte, now int64) (kvpb.CacheState, *kvpb.CacheEntry) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c, ok := f.s.getCache(string(key))
	if !ok {
		return kvpb.CacheState_CACHE_STATE_MISS, nil
	}
	return cacheState(c, now), f.s.cacheProto(c, now)
}

// CacheStats returns the replicated cache counters (the node-local hit
// counters are left zero for the caller to fill).
func (f *FSM) CacheStats() *kvpb.CacheStatsResponse {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.s
	return &kvpb.CacheStatsResponse{
		Header:              &kvpb.ResponseHeader{AppliedIndex: s.index, LogTime: s.logTime},
		Entries:             uint64(s.cache.Len()),
		Bytes:               s.cacheBytes,
		MaxBytes:            s.counters.maxBytes,
		Evictions:           s.counters.evictions,
		Stores:              s.counters.stores,
		StaleStoresRejected: s.counters.staleStoresRejected,
		LeasesGranted:       s.counters.leasesGranted,
		LeasesExpired:       s.counters.leasesExpired,
	}
}

// Stats are counts of what the state holds, for metrics. The counts are
// kept up to date by every Apply (never recounted on read); the counters
// are the replicated cache counters, the same on every replica.
type Stats struct {
	AppliedIndex uint64
	LogTime      int64

	Keys     int    // live keys (nothing expired outlives the entry that passes its deadline)
	KVBytes  uint64 // bytes of keys and values
	Sessions int

	LocksHeld   int
	LockWaiters int // sessions queued in the lines of all locks

	CacheEntries  int    // entries with a value, a fill lease or waiters
	CacheBytes    uint64 // bytes of cache keys and values, bounded by CacheMaxBytes
	CacheMaxBytes uint64
	CacheWaiters  int // sessions waiting for another's fill (single flight)
	FillLeases    int // fill leases held

	CacheStores              uint64 // values stored (fills and sets)
	CacheStaleStoresRejected uint64 // stores refused: the fill lease had passed on
	CacheEvictions           uint64 // values dropped by the byte bound
	FillLeasesGranted        uint64
	FillLeasesExpired        uint64
}

// Stats returns the state's counts. It takes the read lock once and does
// O(1) work.
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.s
	return Stats{
		AppliedIndex: s.index,
		LogTime:      s.logTime,

		Keys:     s.kv.Len(),
		KVBytes:  s.kvBytes,
		Sessions: len(s.sessions),

		LocksHeld:   s.locksHeld,
		LockWaiters: s.lockWaiters,

		CacheEntries:  s.cache.Len(),
		CacheBytes:    s.cacheBytes,
		CacheMaxBytes: s.counters.maxBytes,
		CacheWaiters:  s.cacheWaiters,
		FillLeases:    s.fillLeases,

		CacheStores:              s.counters.stores,
		CacheStaleStoresRejected: s.counters.staleStoresRejected,
		CacheEvictions:           s.counters.evictions,
		FillLeasesGranted:        s.counters.leasesGranted,
		FillLeasesExpired:        s.counters.leasesExpired,
	}
}

// Members returns the members whose addresses came through the log, by name.
func (f *FSM) Members() []*kvpb.Member {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return membersProto(f.s.members)
}

// ForgetMembers drops the member records (names, peer and client
// addresses). It is for `kvd restore` alone, before the state becomes the
// first snapshot of a new cluster: a backup's records describe the old
// cluster, and a member of the new one would otherwise send clients to the
// old cluster's addresses until it registered its own.
func (f *FSM) ForgetMembers() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.s.members)
}

func membersProto(m map[string]member) []*kvpb.Member {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]*kvpb.Member, 0, len(names))
	for _, n := range names {
		mb := m[n]
		out = append(out, &kvpb.Member{Name: mb.name, PeerAddr: mb.peerAddr, ClientAddr: mb.clientAddr})
	}
	return out
}

// NextDeadline is the earliest pending deadline in log time, 0 if none. When
// it is at or before the leader's clock, a TickOp is due.
func (f *FSM) NextDeadline() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	d, ok := f.s.deadlines.Min()
	if !ok {
		return 0
	}
	return d.at
}

// StateHash is the sha256 of the snapshot encoding of the current state.
func (f *FSM) StateHash() []byte {
	f.mu.Lock() // capture clones btrees, which writes to the source trees
	snap := f.s.capture()
	f.mu.Unlock()
	h := sha256.New()
	if err := snap.encode(h); err != nil {
		return nil // a hash writer does not fail
	}
	return h.Sum(nil)
}

// Snapshot is a point-in-time copy of the whole state.
type Snapshot struct{ snap *snapshot }

// Encode writes the snapshot in the versioned format Restore reads. It may
// run concurrently with later Applies. The SHA-256 of what it writes is
// the state hash (StateHash) of the captured state.
func (s Snapshot) Encode(w io.Writer) error { return s.snap.encode(w) }

// Index is the applied index of the captured state.
func (s Snapshot) Index() uint64 { return s.snap.index }

// LogTime is the log time of the captured state.
func (s Snapshot) LogTime() int64 { return s.snap.logTime }

// FormatVersion is the snapshot format Encode writes.
const FormatVersion = formatVersion

// Snapshot captures a point-in-time copy of the state cheaply (btree clones
// are copy-on-write).
func (f *FSM) Snapshot() Snapshot {
	f.mu.Lock() // Clone marks the source trees copy-on-write: exclusive
	defer f.mu.Unlock()
	return Snapshot{f.s.capture()}
}

// Restore replaces the whole state with a snapshot's. It rejects a snapshot
// whose format version it does not know, leaving the state untouched. Every
// watch fires.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := decodeSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.s = s
	f.publishAuth(s)
	f.mu.Unlock()
	f.fireAll()
	return nil
}
