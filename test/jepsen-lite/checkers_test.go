package main

import (
	"testing"
	"time"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func u64(v uint64) *uint64 { return &v }

var mismatch = kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH.String()

func TestCheckRegister(t *testing.T) {
	tests := []struct {
		name string
		ops  []Op
		pass bool
	}{
		{"sequential", []Op{
			{Workload: "register", Type: "write", Key: "reg/0/0", Value: "a", Version: 1, Invoke: 0, Complete: 10, Outcome: OK},
			{Workload: "register", Type: "read", Key: "reg/0/0", Value: "a", Version: 1, Found: true, Invoke: 11, Complete: 20, Outcome: OK},
			{Workload: "register", Type: "cas", Key: "reg/0/0", Value: "b", Expected: u64(1), Version: 2, Invoke: 21, Complete: 30, Outcome: OK},
			{Workload: "register", Type: "cas", Key: "reg/0/0", Value: "c", Expected: u64(1), Invoke: 31, Complete: 40, Outcome: Fail, Code: mismatch},
			{Workload: "final", Type: "read", Key: "reg/0/0", Value: "b", Version: 2, Found: true, Invoke: 41, Complete: 50, Outcome: OK},
		}, true},
		{"stale read", []Op{
			{Workload: "register", Type: "write", Key: "reg/0/0", Value: "a", Version: 1, Invoke: 0, Complete: 10, Outcome: OK},
			{Workload: "register", Type: "write", Key: "reg/0/0", Value: "b", Version: 2, Invoke: 11, Complete: 20, Outcome: OK},
			{Workload: "register", Type: "read", Key: "reg/0/0", Value: "a", Version: 1, Found: true, Invoke: 21, Complete: 30, Outcome: OK},
		}, false},
		{"unknown write may appear later", []Op{
			{Workload: "register", Type: "write", Key: "reg/0/0", Value: "a", Invoke: 0, Complete: 10, Outcome: Info},
			{Workload: "register", Type: "read", Key: "reg/0/0", Found: false, Invoke: 11, Complete: 20, Outcome: OK},
			{Workload: "register", Type: "read", Key: "reg/0/0", Value: "a", Version: 1, Found: true, Invoke: 21, Complete: 30, Outcome: OK},
		}, true},
		{"failed write never appears", []Op{
			{Workload: "register", Type: "write", Key: "reg/0/0", Value: "a", Invoke: 0, Complete: 10, Outcome: Fail, Code: "ERROR_CODE_NOT_LEADER"},
			{Workload: "register", Type: "read", Key: "reg/0/0", Value: "a", Version: 1, Found: true, Invoke: 21, Complete: 30, Outcome: OK},
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckRegister(tc.ops, 5*time.Second, t.TempDir())
			if v.Pass != tc.pass {
				t.Errorf("CheckRegister pass = %v, want %v (%v)", v.Pass, tc.pass, v.Problems)
			}
			if !v.Pass && len(v.Files) == 0 {
				t.Errorf("no visualization written for a failing key")
			}
		})
	}
}

func TestCheckLocks(t *testing.T) {
	base := []Op{
		{Workload: "lock", Type: "acquire", Key: "lk/0", Token: 10, Session: 1, Index: 10, HeldSince: 100, ExpiresAt: 1100, Invoke: 0, Complete: 5, Outcome: OK},
		{Workload: "lock", Type: "fenced-put", Key: "lk/0", Token: 10, Session: 1, Index: 11, Invoke: 6, Complete: 7, Outcome: OK},
		{Workload: "lock", Type: "release", Key: "lk/0", Token: 10, Session: 1, Index: 12, Invoke: 8, Complete: 9, Outcome: OK},
		{Workload: "lock", Type: "acquire", Key: "lk/0", Token: 13, Session: 2, Index: 13, HeldSince: 200, ExpiresAt: 1200, Invoke: 9, Complete: 10, Outcome: OK},
	}
	// A retried release answered at a later index (its first result).
	base = append(base, Op{Workload: "lock", Type: "release", Key: "lk/0", Token: 10, Session: 1, Index: 20, Invoke: 8, Complete: 12, Outcome: OK})
	if v := CheckLocks(base); !v.Pass {
		t.Fatalf("CheckLocks(good) failed: %v", v.Problems)
	}
	bad := map[string]func([]Op) []Op{
		"stale fenced put": func(o []Op) []Op {
			return append(o, Op{Workload: "lock", Type: "fenced-put", Key: "lk/0", Token: 10, Session: 1, Index: 14, Effect: 14, Invoke: 11, Complete: 12, Outcome: OK})
		},
		"granted before expiry without release": func(o []Op) []Op { return append(o[:2:2], o[3]) },
		"token twice": func(o []Op) []Op {
			return append(o, Op{Workload: "lock", Type: "acquire", Key: "lk/0", Token: 13, Session: 3, Index: 13, HeldSince: 200, ExpiresAt: 1200, Invoke: 9, Complete: 10, Outcome: OK})
		},
		"release after the next grant": func(o []Op) []Op {
			return append(o, Op{Workload: "lock", Type: "release", Key: "lk/0", Token: 10, Session: 1, Index: 16, Effect: 16, Invoke: 11, Complete: 12, Outcome: OK})
		},
		"check fence valid for a stale token": func(o []Op) []Op {
			return append(o, Op{Workload: "lock", Type: "resource", Key: "lk/0", Token: 10, Session: 1, Index: 15, Invoke: 11, Complete: 12, Outcome: OK})
		},
	}
	for name, f := range bad {
		ops := f(append([]Op(nil), base...))
		if v := CheckLocks(ops); v.Pass {
			t.Errorf("CheckLocks(%s) passed, want a violation", name)
		}
	}
}

func TestCheckTTL(t *testing.T) {
	put := Op{Workload: "ttl", Type: "put-ttl", Key: "ttl/1", ExpiresAt: 1000, Invoke: 0, Complete: 5, Outcome: OK}
	tests := []struct {
		name string
		read Op
		pass bool
	}{
		{"present before", Op{Found: true, LogTime: 999, ExpiresAt: 1000}, true},
		{"present after, deadline moved by a new leader", Op{Found: true, LogTime: 1500, ExpiresAt: 2000}, true},
		{"deadline moved earlier", Op{Found: true, LogTime: 500, ExpiresAt: 900}, false},
		{"absent after", Op{Found: false, LogTime: 1000}, true},
		{"absent before: early", Op{Found: false, LogTime: 998}, false},
		{"present after: late", Op{Found: true, LogTime: 1001, ExpiresAt: 1000}, false},
	}
	for _, tc := range tests {
		r := tc.read
		r.Workload, r.Type, r.Key, r.Invoke, r.Complete, r.Outcome = "ttl", "list", "ttl/1", 10, 20, OK
		if v := CheckTTL([]Op{put, r}); v.Pass != tc.pass {
			t.Errorf("CheckTTL(%s) pass = %v, want %v", tc.name, v.Pass, tc.pass)
		}
	}
}

func TestCheckMemo(t *testing.T) {
	good := []Op{
		{Workload: "memo", Type: "fill", Key: "m", Token: 10, Session: 1, LogTime: 100, ExpiresAt: 900, State: "MISS", Invoke: 0, Complete: 5, Outcome: OK},
		{Workload: "memo", Type: "store", Key: "m", Token: 10, Value: "m1-1-t10", Session: 1, Index: 11, Invoke: 6, Complete: 7, Outcome: OK},
		{Workload: "memo", Type: "fill", Key: "m", State: "FRESH", Value: "m1-1-t10", Filled: 11, Invoke: 8, Complete: 9, Outcome: OK},
		{Workload: "memo", Type: "fill", Key: "m", Token: 20, Session: 2, LogTime: 2000, ExpiresAt: 2800, State: "MISS", Invoke: 10, Complete: 11, Outcome: OK},
	}
	if v := CheckMemo(good); !v.Pass {
		t.Fatalf("CheckMemo(good) failed: %v", v.Problems)
	}
	stale := append(append([]Op(nil), good...),
		Op{Workload: "memo", Type: "store", Key: "m", Token: 10, Value: "m1-2-t10", Session: 1, Index: 25, Effect: 25, Invoke: 12, Complete: 13, Outcome: OK})
	if v := CheckMemo(stale); v.Pass {
		t.Errorf("CheckMemo(store under superseded lease) passed")
	}
	two := append(append([]Op(nil), good[0]),
		Op{Workload: "memo", Type: "fill", Key: "m", Token: 12, Session: 2, LogTime: 200, ExpiresAt: 1000, State: "MISS", Invoke: 1, Complete: 3, Outcome: OK})
	if v := CheckMemo(two); v.Pass {
		t.Errorf("CheckMemo(two live leases) passed")
	}
}

func TestCheckCounters(t *testing.T) {
	add := func(out Outcome, r int64) Op {
		return Op{Workload: "counter", Type: "add", Key: "ctr/0", Delta: 1, Outcome: out, Result: r}
	}
	final := func(v int64) Op {
		return Op{Workload: "final", Type: "read-counter", Key: "ctr/0", Outcome: OK, Result: v}
	}
	tests := []struct {
		name string
		ops  []Op
		pass bool
	}{
		{"exact", []Op{add(OK, 1), add(OK, 2), final(2)}, true},
		{"unknown applied", []Op{add(OK, 1), add(Info, 0), final(2)}, true},
		{"double applied", []Op{add(OK, 1), add(OK, 2), final(3)}, false},
		{"lost", []Op{add(OK, 1), add(OK, 2), final(1)}, false},
		{"same result twice", []Op{add(OK, 1), add(OK, 1), final(2)}, false},
		{"no final read", []Op{add(OK, 1)}, false},
	}
	for _, tc := range tests {
		if v := CheckCounters(tc.ops); v.Pass != tc.pass {
			t.Errorf("CheckCounters(%s) pass = %v, want %v (%v)", tc.name, v.Pass, tc.pass, v.Problems)
		}
	}
}

func TestCheckDurability(t *testing.T) {
	w := func(v string, inv, comp int64) Op {
		return Op{Workload: "register", Type: "write", Key: "reg/0/0", Value: v, Invoke: inv, Complete: comp, Outcome: OK}
	}
	final := func(v string, found bool) Op {
		return Op{Workload: "final", Type: "read", Key: "reg/0/0", Value: v, Found: found, Outcome: OK, Invoke: 100, Complete: 101}
	}
	tests := []struct {
		name string
		ops  []Op
		pass bool
	}{
		{"last write survives", []Op{w("a", 0, 1), w("b", 2, 3), final("b", true)}, true},
		{"concurrent writes either", []Op{w("a", 0, 5), w("b", 1, 3), final("a", true)}, true},
		{"later write lost", []Op{w("a", 0, 1), w("b", 2, 3), final("a", true)}, false},
		{"all lost", []Op{w("a", 0, 1), final("", false)}, false},
	}
	for _, tc := range tests {
		if v := CheckDurability(tc.ops); v.Pass != tc.pass {
			t.Errorf("CheckDurability(%s) pass = %v, want %v (%v)", tc.name, v.Pass, tc.pass, v.Problems)
		}
	}
}

const ms = int64(time.Millisecond)

// The checks added for issue 11's planted bugs, each with the history it
// must fail and one it must pass.
func TestChecksAgainstTheClientsClock(t *testing.T) {
	put := Op{Workload: "ttl", Type: "put-ttl", Key: "ttl/0/1", TTLms: 1000, ExpiresAt: 5000 * ms, Invoke: 0, Complete: 10 * ms, Outcome: OK}
	absentAt := func(complete int64) []Op {
		return []Op{put, {Workload: "ttl", Type: "list", Key: "ttl/0/1", LogTime: 6000 * ms, Invoke: complete - ms, Complete: complete, Outcome: OK}}
	}
	lease := func(reason string, leftMs int64) []Op {
		return []Op{{Workload: "lock", Type: "session-end", Session: 7, Reason: reason, LeaseLeftMs: leftMs, Outcome: OK}}
	}
	grants := func(heldSince int64) []Op {
		return []Op{
			{Workload: "lock", Type: "acquire", Key: "lk/p", Token: 10, Session: 1, HeldSince: 100 * ms, ExpiresAt: 1100 * ms, LockDelayMs: 800, Invoke: 0, Complete: 5, Outcome: OK},
			{Workload: "lock", Type: "acquire", Key: "lk/p", Token: 20, Session: 2, HeldSince: heldSince, ExpiresAt: heldSince + 1000*ms, Invoke: 6, Complete: 7, Outcome: OK},
		}
	}
	runs := func(secondStart int64) []Op {
		return []Op{
			{Workload: "memo", Type: "compute", Key: "memoize/0/1", Value: "a", CallInvoke: 0, Invoke: 10 * ms, Complete: 400 * ms, Outcome: OK},
			{Workload: "memo", Type: "compute", Key: "memoize/0/1", Value: "b", CallInvoke: secondStart - 5*ms, Invoke: secondStart, Complete: secondStart + 20*ms, Outcome: OK},
		}
	}
	// Client 2's call on the key gave up at 3 s; its flight may have taken
	// a lease that its session still held when its next call on the key
	// (at 3.1 s) was answered with that same lease: the run under it was
	// certainly leased only until the first call's invocation + the lease.
	// Client 1's run at 3.4 s may then hold the next lease.
	reused := func(gaveUp bool) []Op {
		first := Op{Workload: "memo", Type: "memoize", Client: 2, Key: "memoize/0/1", Invoke: 0, Complete: 3000 * ms, Outcome: Info, Err: "context deadline exceeded"}
		if !gaveUp {
			first.Outcome, first.Err, first.Value, first.Found = OK, "", "x", true
		}
		return []Op{first,
			{Workload: "memo", Type: "memoize", Client: 2, Key: "memoize/0/1", Value: "b", Found: true, Invoke: 3100 * ms, Complete: 3710 * ms, Outcome: OK},
			{Workload: "memo", Type: "compute", Client: 2, Key: "memoize/0/1", Value: "b", CallInvoke: 3100 * ms, Invoke: 3101 * ms, Complete: 3700 * ms, Outcome: OK},
			{Workload: "memo", Type: "memoize", Client: 1, Key: "memoize/0/1", Value: "a", Found: true, Invoke: 2900 * ms, Complete: 3420 * ms, Outcome: OK},
			{Workload: "memo", Type: "compute", Client: 1, Key: "memoize/0/1", Value: "a", CallInvoke: 2900 * ms, Invoke: 3400 * ms, Complete: 3415 * ms, Outcome: OK},
		}
	}
	tests := []struct {
		name  string
		check func([]Op) *Verdict
		ops   []Op
		pass  bool
	}{
		{"memoize: a run under a lease its client's earlier call took", CheckMemo, reused(true), true},
		{"memoize: the same runs when no earlier call gave up", CheckMemo, reused(false), false},
		{"ttl: absent before invocation + TTL in real time", CheckTTL, absentAt(900 * ms), false},
		{"ttl: absent after invocation + TTL", CheckTTL, absentAt(1001 * ms), true},
		{"session: server expired it with lease left", CheckSessionLeases, lease("expired", 300), false},
		{"session: expired as the lease ran out", CheckSessionLeases, lease("expired", 10), true},
		{"session: lost on the client's side", CheckSessionLeases, lease("lost", 300), true},
		{"lock: granted inside the lock-delay after an expiry", CheckLocks, grants(1500 * ms), false},
		{"lock: granted after expiry + lock-delay", CheckLocks, grants(1900 * ms), true},
		{"memoize: two runs under live leases", CheckMemo, runs(200 * ms), false},
		{"memoize: the second run after the first", CheckMemo, runs(500 * ms), true},
		{"memoize: the first run may have outlived its lease", CheckMemo, append(runs(200 * ms)[:1:1],
			Op{Workload: "memo", Type: "compute", Key: "memoize/0/1", Value: "b", CallInvoke: 900 * ms, Invoke: 950 * ms, Complete: 960 * ms, Outcome: OK}), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if v := tc.check(tc.ops); v.Pass != tc.pass {
				t.Errorf("%s pass = %v, want %v (%v)", v.Name, v.Pass, tc.pass, v.Problems)
			}
		})
	}
}

func TestCheckHostileAndMemory(t *testing.T) {
	reused := kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED.String()
	tests := []struct {
		name  string
		check func([]Op) *Verdict
		op    Op
		pass  bool
	}{
		{"seq reuse refused", CheckHostile, Op{Workload: "hostile", Type: "seq-reuse", Code: reused, Outcome: OK}, true},
		{"seq reuse answered OK", CheckHostile, Op{Workload: "hostile", Type: "seq-reuse", Code: "ERROR_CODE_OK", Outcome: OK}, false},
		{"seq reuse wrote the key", CheckHostile, Op{Workload: "hostile", Type: "seq-reuse", Code: reused, Found: true, Outcome: OK}, false},
		{"list pages within budget", CheckHostile, Op{Workload: "hostile", Type: "huge-list", Result: 3 << 20, Bound: 4 << 20, Version: 12, Delta: 12, Outcome: OK}, true},
		{"list page over budget", CheckHostile, Op{Workload: "hostile", Type: "huge-list", Result: 6 << 20, Bound: 4 << 20, Version: 12, Delta: 12, Outcome: OK}, false},
		{"list lost keys", CheckHostile, Op{Workload: "hostile", Type: "huge-list", Result: 3 << 20, Bound: 4 << 20, Version: 8, Delta: 12, Outcome: OK}, false},
		{"unread within budget", CheckHostile, Op{Workload: "hostile", Type: "unread", Version: 8, Bound: 9, Outcome: OK}, true},
		{"unread over budget", CheckHostile, Op{Workload: "hostile", Type: "unread", Version: 400, Bound: 9, Outcome: OK}, false},
		{"flood refused by the cap", CheckHostile, Op{Workload: "hostile", Type: "session-flood", Version: 450, Delta: 900, Bound: 500, Outcome: OK}, true},
		{"flood refused otherwise", CheckHostile, Op{Workload: "hostile", Type: "session-flood", Version: 450, Delta: 9, Code: "ERROR_CODE_INVALID_ARGUMENT", Bound: 500, Outcome: OK}, false},
		{"flood never refused", CheckHostile, Op{Workload: "hostile", Type: "session-flood", Version: 3000, Bound: 500, Outcome: OK}, false},
		{"rss under bound", CheckMemory, Op{Workload: "memory", Type: "rss", Key: "n1", Result: 100 << 20, Bound: 512 << 20, Outcome: OK}, true},
		{"rss over bound", CheckMemory, Op{Workload: "memory", Type: "rss", Key: "n1", Result: 600 << 20, Bound: 512 << 20, Outcome: OK}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if v := tc.check([]Op{tc.op}); v.Pass != tc.pass {
				t.Errorf("%s pass = %v, want %v (%v)", v.Name, v.Pass, tc.pass, v.Problems)
			}
		})
	}
}
