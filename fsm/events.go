package fsm

import (
	"bytes"
	"slices"
	"strconv"
	"strings"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Event is one change an applied entry made, as a watch streams it.
//
// Change is shared by everyone who receives the event: never modify it.
// Its values share memory with the state (and with the events before and
// after it), so keeping an event costs its metadata, plus a value only once
// the state has moved on from it. Prev is the key's state before the change
// (keys only; nil when the key did not exist), kept apart from Change so
// that a watch that did not ask for it neither sends it nor copies it.
type Event struct {
	Change *kvpb.WatchEvent
	Prev   *kvpb.KeyValue
}

// cause says why the current step changes what it changes: events carry it
// (expired), and it tells a value store from a fill, an eviction from an
// expiry and a break from a release.
type cause uint8

const (
	causeRequest cause = iota
	causeExpired       // a deadline in log time
	causeBreak         // an operator's Break
	causeSet           // Cache.Set
	causeFill          // Store under a fill lease
	causeEvict         // the cache's size bound
)

// because sets the cause of the changes made until the returned func runs:
// defer s.because(causeExpired)().
func (s *state) because(c cause) func() {
	old := s.cause
	s.cause = c
	return func() { s.cause = old }
}

// emit records an event of the current entry (only while the caller of
// Apply collects them: the events are output, never state).
func (s *state) emit(e *kvpb.WatchEvent, prev *kvpb.KeyValue) {
	if !s.collect {
		return
	}
	e.Index, e.LogTime = s.index, s.logTime
	e.Expired = s.cause == causeExpired
	s.events = append(s.events, Event{Change: e, Prev: prev})
}

// sharedProto is the key's proto with its value shared with the state
// (values are never modified in place), for events.
func (it kvItem) sharedProto(key []byte) *kvpb.KeyValue {
	return &kvpb.KeyValue{
		Key:         key,
		Value:       it.value,
		CreateIndex: it.createIdx,
		ModIndex:    it.modIdx,
		Version:     it.version,
		ExpiresAt:   it.expiresAt,
		Session:     it.session,
	}
}

// keyPut records a write of key (Put, Add).
func (s *state) keyPut(it kvItem, old kvItem, existed bool) {
	if !s.collect {
		return
	}
	k := []byte(it.key) // one copy of the key, shared by the three messages
	var prev *kvpb.KeyValue
	if existed {
		prev = old.sharedProto(k)
	}
	s.emit(&kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_KEYS, Type: kvpb.EventType_EVENT_TYPE_PUT,
		Key: k, Kv: it.sharedProto(k)}, prev)
}

// keyTouched records a new deadline of key (Touch): the kv without its
// value; prev is the key before, with its old deadline.
func (s *state) keyTouched(it, old kvItem) {
	if !s.collect {
		return
	}
	k := []byte(it.key)
	kv := it.sharedProto(k)
	kv.Value = nil
	s.emit(&kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_KEYS, Type: kvpb.EventType_EVENT_TYPE_TOUCH,
		Key: k, Kv: kv}, old.sharedProto(k))
}

// keyDeleted records the removal of key (Delete, its TTL, or the end of the
// session it is bound to).
func (s *state) keyDeleted(old kvItem) {
	if !s.collect {
		return
	}
	k := []byte(old.key)
	s.emit(&kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_KEYS, Type: kvpb.EventType_EVENT_TYPE_DELETE,
		Key: k, Kv: &kvpb.KeyValue{Key: k, ModIndex: s.index}}, old.sharedProto(k))
}

// sessionKey is a session's key in the SESSIONS namespace of watches.
func sessionKey(id uint64) []byte { return strconv.AppendUint(nil, id, 10) }

// sessionEnded records the end of a session (before its locks go).
func (s *state) sessionEnded(se *session) {
	if !s.collect {
		return
	}
	s.emit(&kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_SESSIONS, Type: kvpb.EventType_EVENT_TYPE_SESSION_END,
		Key: sessionKey(se.id), Session: se.proto()}, nil)
}

// lockChanged records what putLock changed, judged from the lock before
// and after: a new holder, a holder gone, the holder's value (Proclaim), or
// only the line. Deadlines
// moving (a renewal, a new leader's grace) and the lock-delay are not
// changes a watch reports.
func (s *state) lockChanged(old, l lockItem) {
	if !s.collect {
		return
	}
	var t kvpb.EventType
	switch {
	case s.cause == causeBreak && old.token != 0 && old.token != l.token:
		t = kvpb.EventType_EVENT_TYPE_LOCK_BREAK
	case old.token == 0 && l.token != 0:
		t = kvpb.EventType_EVENT_TYPE_LOCK_GRANT
	case old.token != 0 && l.token == 0:
		t = kvpb.EventType_EVENT_TYPE_LOCK_RELEASE
	case old.token != l.token:
		t = kvpb.EventType_EVENT_TYPE_LOCK_HANDOFF
	case l.token != 0 && !bytes.Equal(old.value, l.value):
		t = kvpb.EventType_EVENT_TYPE_LOCK_VALUE
	case !slices.EqualFunc(old.waiters, l.waiters, func(a, b lockWaiter) bool { return a.session == b.session }):
		t = kvpb.EventType_EVENT_TYPE_LOCK_QUEUE
	default:
		return
	}
	s.emit(&kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_LOCKS, Type: t,
		Key: []byte(l.name), Lock: s.lockProto(l, s.logTime)}, nil)
}

// cacheChanged records what putCache changed (removed: delCache, an
// invalidation). A lease or wait deadline moving is not a change a watch
// reports; the lease passing to someone else is.
func (s *state) cacheChanged(old cacheItem, c cacheItem, removed bool) {
	if !s.collect {
		return
	}
	var t kvpb.EventType
	stored := c.hasValue && (!old.hasValue || old.filledIdx != c.filledIdx)
	switch {
	case removed:
		t = kvpb.EventType_EVENT_TYPE_CACHE_INVALIDATE
	case stored && s.cause == causeSet:
		t = kvpb.EventType_EVENT_TYPE_CACHE_STORE
	case stored:
		t = kvpb.EventType_EVENT_TYPE_CACHE_FILL
	case old.hasValue && !c.hasValue && s.cause == causeEvict:
		t = kvpb.EventType_EVENT_TYPE_CACHE_EVICT
	case old.hasValue && !c.hasValue:
		t = kvpb.EventType_EVENT_TYPE_CACHE_EXPIRE
	case old.lease.token != c.lease.token || old.lease.session != c.lease.session ||
		!slices.EqualFunc(old.waiters, c.waiters, func(a, b cacheWaiter) bool { return a.session == b.session }):
		t = kvpb.EventType_EVENT_TYPE_CACHE_LEASE
	default:
		return
	}
	e := &kvpb.WatchEvent{Target: kvpb.WatchTarget_WATCH_TARGET_CACHE, Type: t, Key: []byte(c.key)}
	if removed {
		e.Cache = &kvpb.CacheEntry{Key: []byte(c.key)}
	} else {
		e.Cache = s.sharedCacheProto(c, s.logTime)
	}
	s.emit(e, nil)
}

// sharedCacheProto is cacheProto with the value shared with the state.
func (s *state) sharedCacheProto(c cacheItem, now int64) *kvpb.CacheEntry {
	v := c.value
	c.value = nil
	e := s.cacheProto(c, now)
	if e.Value != nil {
		e.Value = v
		if e.Value == nil {
			e.Value = []byte{}
		}
	}
	return e
}

// WatchState is what a watch's snapshot holds: the watched items at one
// index, as STATE events.
type WatchState struct {
	Index   uint64
	LogTime int64
	// Events are the items in name order. Keys share their values with the
	// state; never modify them.
	Events []*kvpb.WatchEvent
}

// WatchState returns the items of target named key (or every one starting
// with key, with prefix) that exist at this moment, with the applied index
// and log time they are as of. Expired items that no entry has removed yet
// are left out, as a read at log time would.
func (f *FSM) WatchState(target kvpb.WatchTarget, key []byte, prefix bool) WatchState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.s
	now := s.logTime
	ws := WatchState{Index: s.index, LogTime: now}
	add := func(e *kvpb.WatchEvent) {
		e.Index, e.LogTime, e.Target, e.Type = s.index, now, target, kvpb.EventType_EVENT_TYPE_STATE
		ws.Events = append(ws.Events, e)
	}
	k := string(key)
	match := func(name string) bool { return name == k || (prefix && strings.HasPrefix(name, k)) }
	switch target {
	case kvpb.WatchTarget_WATCH_TARGET_KEYS:
		s.kv.AscendGreaterOrEqual(&kvItem{key: k}, func(it *kvItem) bool {
			if !match(it.key) {
				return false
			}
			if it.live(now) {
				k := []byte(it.key)
				add(&kvpb.WatchEvent{Key: k, Kv: it.sharedProto(k)})
			}
			return true
		})
	case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
		s.locks.AscendGreaterOrEqual(lockItem{name: k}, func(l lockItem) bool {
			if !match(l.name) {
				return false
			}
			if info := s.lockProto(l, now); info.Token != 0 || len(info.Waiters) > 0 {
				add(&kvpb.WatchEvent{Key: []byte(l.name), Lock: info})
			}
			return true
		})
	case kvpb.WatchTarget_WATCH_TARGET_CACHE:
		s.cache.AscendGreaterOrEqual(cacheItem{key: k}, func(c cacheItem) bool {
			if !match(c.key) {
				return false
			}
			if e := s.sharedCacheProto(c, now); e.Value != nil || e.Lease != nil || len(e.Waiters) > 0 {
				add(&kvpb.WatchEvent{Key: []byte(c.key), Cache: e})
			}
			return true
		})
	case kvpb.WatchTarget_WATCH_TARGET_SESSIONS:
		ids := make([]string, 0, len(s.sessions))
		byKey := make(map[string]*session, len(s.sessions))
		for id, se := range s.sessions {
			sk := string(sessionKey(id))
			if match(sk) && se.expiresAt > now {
				ids = append(ids, sk)
				byKey[sk] = se
			}
		}
		slices.Sort(ids)
		for _, sk := range ids {
			add(&kvpb.WatchEvent{Key: []byte(sk), Session: byKey[sk].proto()})
		}
	}
	return ws
}

// LockWait answers a queued acquirer's question about lock name at now:
// whether session holds it (and under which token), and otherwise its
// position in the line (1 is next; 0: not in the line, or its wait or
// session has ended by now). It builds no protobuf.
func (f *FSM) LockWait(name []byte, session uint64, now int64) (held bool, token uint64, position int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, ok := f.s.getLock(string(name))
	if !ok {
		return false, 0, 0
	}
	if l.token != 0 && l.session == session {
		if se := f.s.sessions[session]; se != nil && se.expiresAt > now {
			return true, l.token, 0
		}
		return false, 0, 0
	}
	pos := 0
	for _, w := range l.waiters {
		se := f.s.sessions[w.session]
		if se == nil || se.expiresAt <= now || w.waitUntil <= now {
			continue // lockProto leaves these out too
		}
		pos++
		if w.session == session {
			return false, 0, pos
		}
	}
	return false, 0, 0
}
