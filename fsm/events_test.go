package fsm

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// applyEv applies one command through ApplyEvents and returns its events.
func (h *harness) applyEv(cmd *kvpb.Command) []Event {
	h.t.Helper()
	cmd.Stamp = h.now
	if cmd.Limits == nil {
		cmd.Limits = h.limits
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	h.index++
	_, evs := h.f.ApplyEvents(h.index, data)
	for _, e := range evs {
		if e.Change.Index != h.index || e.Change.LogTime != h.f.LogTime() {
			h.t.Fatalf("event %v: index %d log time %d, want the entry's %d, %d", e.Change, e.Change.Index, e.Change.LogTime, h.index, h.f.LogTime())
		}
	}
	return evs
}

// describe renders events compactly: "TYPE key [expired] detail".
func describe(evs []Event) []string {
	out := []string{}
	for _, e := range evs {
		c := e.Change
		s := strings.TrimPrefix(c.Type.String(), "EVENT_TYPE_") + " " + string(c.Key)
		if c.Expired {
			s += " expired"
		}
		switch c.Target {
		case kvpb.WatchTarget_WATCH_TARGET_KEYS:
			if c.Type == kvpb.EventType_EVENT_TYPE_PUT {
				s += fmt.Sprintf(" =%s v%d", c.Kv.Value, c.Kv.Version)
			}
			if e.Prev != nil {
				s += fmt.Sprintf(" prev=%s", e.Prev.Value)
			}
		case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
			s += fmt.Sprintf(" holder=%d", c.Lock.Session)
			for _, w := range c.Lock.Waiters {
				s += fmt.Sprintf(" w%d", w.Session)
			}
		case kvpb.WatchTarget_WATCH_TARGET_CACHE:
			if c.Cache.Value != nil {
				s += " =" + string(c.Cache.Value)
			}
			if c.Cache.Lease != nil {
				s += fmt.Sprintf(" lease=%d", c.Cache.Lease.Session)
			}
			for _, w := range c.Cache.Waiters {
				s += fmt.Sprintf(" w%d", w)
			}
		}
		out = append(out, s)
	}
	return out
}

// step is one command of an events table and the events it must emit.
type step struct {
	at   int64 // ms after t0
	cmd  func() *kvpb.Command
	want []string
}

func runSteps(t *testing.T, h *harness, steps []step) {
	t.Helper()
	for i, st := range steps {
		h.at(st.at)
		got := describe(h.applyEv(st.cmd()))
		if !slices.Equal(got, st.want) {
			t.Errorf("step %d (index %d): events\n  %q\nwant\n  %q", i, h.index, got, st.want)
		}
	}
}

func TestEventsKeys(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	runSteps(t, h, []step{
		{0, func() *kvpb.Command { return put("a", "1", 0) }, []string{"PUT a =1 v1"}},
		{1, func() *kvpb.Command { return put("a", "2", 0) }, []string{"PUT a =2 v2 prev=1"}},
		{2, func() *kvpb.Command { return add(hdr(s, 1), "n", 5) }, []string{"PUT n =5 v1"}},
		{3, func() *kvpb.Command { return del("a") }, []string{"DELETE a prev=2"}},
		{4, func() *kvpb.Command { return del("a") }, []string{}},                         // nothing to delete
		{5, func() *kvpb.Command { return add(hdr(s, 1), "n", 5) }, []string{}},           // a retry: no second change
		{6, func() *kvpb.Command { return put("t", "x", 1000) }, []string{"PUT t =x v1"}}, // expires at 1006
		{1005, tick, []string{}},
		{1006, tick, []string{"DELETE t expired prev=x"}},
		// A failed write changes nothing, but the expiries its log time
		// brings are still this entry's.
		{1007, func() *kvpb.Command { return put("u", "y", 1000) }, []string{"PUT u =y v1"}},
		{2100, func() *kvpb.Command {
			v := uint64(9)
			return putReq(&kvpb.PutRequest{Key: []byte("a"), Value: []byte("z"), ExpectedVersion: &v})
		}, []string{"DELETE u expired prev=y"}},
	})
	// The delete carries the deleting entry's index as mod_index.
	h.ok(put("d", "1", 0))
	evs := h.applyEv(del("d"))
	if len(evs) != 1 || evs[0].Change.Kv.ModIndex != h.index || evs[0].Change.Kv.Value != nil {
		t.Errorf("delete event kv = %v, want key only with mod_index %d", evs[0].Change.Kv, h.index)
	}
}

func TestEventsSessionsAndLocks(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(10000), h.session(10000), h.session(2000)
	var tokA uint64
	runSteps(t, h, []step{
		{0, func() *kvpb.Command { return acquire(a, 1, "L", 0, 0) }, []string{fmt.Sprintf("LOCK_GRANT L holder=%d", a)}},
		{1, func() *kvpb.Command { return acquire(b, 1, "L", 0, 0) }, []string{}}, // try once: no change
		{2, func() *kvpb.Command { return acquire(b, 2, "L", 5000, 0) }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d w%d", a, b)}},
		{3, func() *kvpb.Command { return acquire(c, 1, "L", 5000, 0) }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d w%d w%d", a, b, c)}},
		{4, func() *kvpb.Command { return renew("L", 4) }, []string{}}, // a renewal moves deadlines only
		{5, func() *kvpb.Command { tokA = h.index - 4; return release(a, "L", tokA) }, []string{fmt.Sprintf("LOCK_HANDOFF L holder=%d w%d", b, c)}},
		{6, func() *kvpb.Command { return cancelWait(c, "L") }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d", b)}},
		{7, func() *kvpb.Command { return breakLock("L", "ops") }, []string{"LOCK_BREAK L holder=0"}},
		{8, func() *kvpb.Command { return acquire(a, 2, "L", 0, 0) }, []string{fmt.Sprintf("LOCK_GRANT L holder=%d", a)}},
		{9, func() *kvpb.Command { return acquire(c, 2, "L", 5000, 0) }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d w%d", a, c)}},
		// c's session (ttl 2s, created at 0) expires first: it leaves the line.
		{2000, tick, []string{fmt.Sprintf("SESSION_END %d expired", c), fmt.Sprintf("LOCK_QUEUE L expired holder=%d", a)}},
		{2001, func() *kvpb.Command { return closeSession(a) }, []string{fmt.Sprintf("SESSION_END %d", a), "LOCK_RELEASE L holder=0"}},
	})
}

func TestEventsLockExpiryHandoffAndWaitTimeout(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(1000), h.session(60000), h.session(60000)
	runSteps(t, h, []step{
		{0, func() *kvpb.Command { return acquire(a, 1, "L", 0, 0) }, []string{fmt.Sprintf("LOCK_GRANT L holder=%d", a)}},
		{1, func() *kvpb.Command { return acquire(c, 1, "L", 500, 0) }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d w%d", a, c)}},
		{2, func() *kvpb.Command { return acquire(b, 1, "L", 5000, 0) }, []string{fmt.Sprintf("LOCK_QUEUE L holder=%d w%d w%d", a, c, b)}},
		{501, tick, []string{fmt.Sprintf("LOCK_QUEUE L expired holder=%d w%d", a, b)}}, // c's wait ended
		// a's session expires: the lock passes to b in the same entry.
		{1000, tick, []string{fmt.Sprintf("SESSION_END %d expired", a), fmt.Sprintf("LOCK_HANDOFF L expired holder=%d", b)}},
	})
}

func TestEventsCache(t *testing.T) {
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{CacheMaxBytes: 10}
	a, b := h.session(60000), h.session(60000)
	var tok uint64
	runSteps(t, h, []step{
		{0, func() *kvpb.Command { return fill(a, "k", 1000, 0) }, []string{fmt.Sprintf("CACHE_LEASE k lease=%d", a)}},
		{1, func() *kvpb.Command { tok = h.index; return fill(b, "k", 1000, 5000) }, []string{fmt.Sprintf("CACHE_LEASE k lease=%d w%d", a, b)}},
		{2, func() *kvpb.Command { return store(a, "k", tok, "v1", 100, 50) }, []string{"CACHE_FILL k =v1"}},
		{102, tick, []string{}}, // stale now: nothing changes in the state
		{151, tick, []string{}},
		{152, tick, []string{"CACHE_EXPIRE k expired"}}, // past the stale window (stored at 2: 100 fresh + 50 stale)
		{160, func() *kvpb.Command { return cacheSet("x", "12345", 1000) }, []string{"CACHE_STORE x =12345"}},
		// y pushes the cache past 10 bytes: x (filled first) is evicted in the same entry.
		{161, func() *kvpb.Command { return cacheSet("y", "abcd", 1000) }, []string{"CACHE_STORE y =abcd", "CACHE_EVICT x"}},
		{162, func() *kvpb.Command { return invalidate("y", false) }, []string{"CACHE_INVALIDATE y"}},
		{163, func() *kvpb.Command { return invalidate("y", false) }, []string{}},
		// A lease that runs out passes to the next waiter.
		{200, func() *kvpb.Command { return fill(a, "m", 100, 0) }, []string{fmt.Sprintf("CACHE_LEASE m lease=%d", a)}},
		{201, func() *kvpb.Command { return fill(b, "m", 100, 5000) }, []string{fmt.Sprintf("CACHE_LEASE m lease=%d w%d", a, b)}},
		{300, tick, []string{fmt.Sprintf("CACHE_LEASE m expired lease=%d", b)}},
		{301, func() *kvpb.Command { return invalidate("", true) }, []string{"CACHE_INVALIDATE m"}},
	})
}

// TestEventsDoNotChangeState: collecting events leaves the same state as
// not collecting them, and two FSMs fed the same log emit the same events.
func TestEventsDeterministic(t *testing.T) {
	for _, seed := range []uint64{1, 5, 42} {
		log := randomLog(t, seed, 3000)
		plain, a, b := New(), New(), New()
		var ea, eb bytes.Buffer
		n := 0
		for i, data := range log {
			idx := uint64(i + 1)
			plain.Apply(idx, data)
			_, evA := a.ApplyEvents(idx, data)
			_, evB := b.ApplyEvents(idx, data)
			n += len(evA)
			writeEvents(t, &ea, evA)
			writeEvents(t, &eb, evB)
		}
		if !bytes.Equal(ea.Bytes(), eb.Bytes()) {
			t.Fatalf("seed %d: the two FSMs emitted different events", seed)
		}
		if n < 500 {
			t.Errorf("seed %d: only %d events from %d entries; the log should change things often", seed, n, len(log))
		}
		if !bytes.Equal(snapshotBytes(t, plain), snapshotBytes(t, a)) {
			t.Fatalf("seed %d: ApplyEvents left a different snapshot than Apply", seed)
		}
	}
}

func writeEvents(t *testing.T, w *bytes.Buffer, evs []Event) {
	t.Helper()
	for _, e := range evs {
		for _, m := range []proto.Message{e.Change, e.Prev} {
			b, err := marshal.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(w, "%d:%x\n", len(b), b)
		}
	}
}

// TestEventsMirrorState replays a random log and keeps a mirror of keys,
// locks and cache entries built from the events alone: after every entry
// it must match the state. A change without an event would show up as a
// difference.
func TestEventsMirrorState(t *testing.T) {
	for _, seed := range []uint64{3, 11, 77} {
		log := randomLog(t, seed, 3000)
		f := New()
		keys := map[string]*kvpb.KeyValue{}
		locks := map[string]string{}
		cache := map[string]string{}
		for i, data := range log {
			idx := uint64(i + 1)
			_, evs := f.ApplyEvents(idx, data)
			for _, e := range evs {
				c := e.Change
				switch c.Target {
				case kvpb.WatchTarget_WATCH_TARGET_KEYS:
					switch c.Type {
					case kvpb.EventType_EVENT_TYPE_PUT:
						keys[string(c.Key)] = c.Kv
					case kvpb.EventType_EVENT_TYPE_TOUCH: // no value: the rest of the key is unchanged
						m := proto.CloneOf(keys[string(c.Key)])
						if m == nil || m.ModIndex != c.Kv.ModIndex || m.Version != c.Kv.Version {
							t.Fatalf("seed %d index %d: TOUCH %v of a key the mirror holds as %v", seed, idx, c.Kv, m)
						}
						m.ExpiresAt = c.Kv.ExpiresAt
						keys[string(c.Key)] = m
					default:
						delete(keys, string(c.Key))
					}
				case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
					locks[string(c.Key)] = lockSig(c.Lock)
				case kvpb.WatchTarget_WATCH_TARGET_CACHE:
					cache[string(c.Key)] = cacheSig(c.Cache)
				}
			}
			now := f.LogTime()
			kvs, _ := f.List(nil, nil, 0, 0, false, now)
			if len(kvs) != len(keys) {
				t.Fatalf("seed %d index %d: %d keys in the state, %d in the mirror", seed, idx, len(kvs), len(keys))
			}
			for _, kv := range kvs {
				m := keys[string(kv.Key)]
				if m == nil || !bytes.Equal(m.Value, kv.Value) || m.Version != kv.Version || m.ModIndex != kv.ModIndex ||
					m.Session != kv.Session { // (expires_at: a new leader's grace moves deadlines without an event)
					t.Fatalf("seed %d index %d: key %q is %v in the state, %v in the mirror", seed, idx, kv.Key, kv, m)
				}
			}
			for name, sig := range locks {
				if got := lockSig(f.Lock([]byte(name), now)); got != sig {
					t.Fatalf("seed %d index %d: lock %q is %s in the state, %s in the mirror", seed, idx, name, got, sig)
				}
			}
			for key, sig := range cache {
				_, e := f.CacheEntry([]byte(key), now)
				if got := cacheSig(e); got != sig {
					t.Fatalf("seed %d index %d: cache %q is %s in the state, %s in the mirror", seed, idx, key, got, sig)
				}
			}
		}
		if len(locks) == 0 || len(cache) == 0 {
			t.Errorf("seed %d: the log touched %d locks and %d cache keys; want some of each", seed, len(locks), len(cache))
		}
	}
}

func lockSig(l *kvpb.LockInfo) string {
	s := fmt.Sprintf("token=%d session=%d", l.GetToken(), l.GetSession())
	for _, w := range l.GetWaiters() {
		s += fmt.Sprintf(" w%d", w.Session)
	}
	return s
}

func cacheSig(e *kvpb.CacheEntry) string {
	s := fmt.Sprintf("value=%q filled=%d lease=%d/%d", e.GetValue(), e.GetFilledIndex(), e.GetLease().GetToken(), e.GetLease().GetSession())
	for _, w := range e.GetWaiters() {
		s += fmt.Sprintf(" w%d", w)
	}
	return s
}

func TestWatchStateAndLockWait(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(60000), h.session(60000)
	h.ok(put("cfg/a", "1", 0))
	h.ok(put("cfg/b", "2", 0))
	h.ok(put("other", "3", 0))
	h.ok(acquire(a, 1, "L", 0, 0))
	h.ok(acquire(b, 1, "L", 5000, 0))
	h.ok(cacheSet("c1", "v", 1000))

	ws := h.f.WatchState(kvpb.WatchTarget_WATCH_TARGET_KEYS, []byte("cfg/"), true)
	if ws.Index != h.index || len(ws.Events) != 2 || string(ws.Events[0].Key) != "cfg/a" || string(ws.Events[1].Kv.Value) != "2" {
		t.Fatalf("WatchState(keys cfg/) = index %d %v, want index %d, cfg/a and cfg/b", ws.Index, ws.Events, h.index)
	}
	for _, e := range ws.Events {
		if e.Type != kvpb.EventType_EVENT_TYPE_STATE || e.Index != h.index {
			t.Errorf("snapshot item %v: type %v index %d, want STATE at %d", e.Key, e.Type, e.Index, h.index)
		}
	}
	if ws := h.f.WatchState(kvpb.WatchTarget_WATCH_TARGET_KEYS, []byte("cfg/"), false); len(ws.Events) != 0 {
		t.Errorf("WatchState(exact cfg/) = %v, want nothing", ws.Events)
	}
	if ws := h.f.WatchState(kvpb.WatchTarget_WATCH_TARGET_LOCKS, []byte("L"), false); len(ws.Events) != 1 || ws.Events[0].Lock.Session != a {
		t.Errorf("WatchState(lock L) = %v, want held by %d", ws.Events, a)
	}
	if ws := h.f.WatchState(kvpb.WatchTarget_WATCH_TARGET_CACHE, nil, true); len(ws.Events) != 1 || string(ws.Events[0].Cache.Value) != "v" {
		t.Errorf("WatchState(cache) = %v, want c1", ws.Events)
	}
	if ws := h.f.WatchState(kvpb.WatchTarget_WATCH_TARGET_SESSIONS, nil, true); len(ws.Events) != 2 {
		t.Errorf("WatchState(sessions) = %d items, want 2", len(ws.Events))
	}

	now := h.f.LogTime()
	if held, tok, pos := h.f.LockWait([]byte("L"), a, now); !held || tok == 0 || pos != 0 {
		t.Errorf("LockWait(a) = %v %d %d, want held", held, tok, pos)
	}
	if held, _, pos := h.f.LockWait([]byte("L"), b, now); held || pos != 1 {
		t.Errorf("LockWait(b) = %v pos %d, want queued at 1", held, pos)
	}
	if held, _, pos := h.f.LockWait([]byte("L"), b, now+6000*ms); held || pos != 0 {
		t.Errorf("LockWait(b) after its wait = %v pos %d, want not in line", held, pos)
	}
	if held, _, pos := h.f.LockWait([]byte("nolock"), a, now); held || pos != 0 {
		t.Errorf("LockWait(nolock) = %v %d, want nothing", held, pos)
	}
}
