package fsm

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
	"google.golang.org/protobuf/proto"
)

func holder(h *harness, name string) (token, session uint64) {
	l := h.f.Lock([]byte(name), h.f.LogTime())
	return l.GetToken(), l.GetSession()
}

func TestLockGrantQueueHandoff(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(10000), h.session(10000), h.session(10000)

	r := h.ok(acquire(a, 1, "db", 0, 0)).GetAcquire()
	if !r.Acquired || r.Token != h.index {
		t.Fatalf("Acquire(a) = %v, want acquired with token %d", r, h.index)
	}
	tokA := r.Token
	// Idempotent re-acquire.
	if r := h.ok(acquire(a, 2, "db", 0, 0)).GetAcquire(); !r.Acquired || r.Token != tokA {
		t.Errorf("re-Acquire(a) = %v, want token %d", r, tokA)
	}
	// Try-once by another session.
	if r := h.ok(acquire(b, 1, "db", 0, 0)).GetAcquire(); r.Acquired || r.Position != 0 || r.Lock.GetToken() != tokA {
		t.Errorf("Acquire(b, no wait) = %v, want not acquired, lock held by %d", r, tokA)
	}
	// FIFO line.
	if r := h.ok(acquire(b, 2, "db", 5000, 0)).GetAcquire(); r.Position != 1 {
		t.Errorf("Acquire(b, wait).position = %d, want 1", r.Position)
	}
	if r := h.ok(acquire(c, 1, "db", 5000, 0)).GetAcquire(); r.Position != 2 {
		t.Errorf("Acquire(c, wait).position = %d, want 2", r.Position)
	}
	if r := h.ok(acquire(b, 3, "db", 5000, 0)).GetAcquire(); r.Position != 1 {
		t.Errorf("Acquire(b) again: position = %d, want 1 (no duplicate)", r.Position)
	}
	if n := len(h.f.Lock([]byte("db"), h.f.LogTime()).Waiters); n != 2 {
		t.Errorf("waiters = %d, want 2", n)
	}
	if got := h.f.Session(a, h.f.LogTime()).Locks; len(got) != 1 || string(got[0]) != "db" {
		t.Errorf("Session(a).locks = %q, want [db]", got)
	}
	// Release hands off to b in the same apply with token = that index.
	rel := h.ok(release(a, "db", tokA)).GetRelease()
	if rel.NextToken != h.index {
		t.Errorf("Release.next_token = %d, want %d", rel.NextToken, h.index)
	}
	if tok, s := holder(h, "db"); tok != h.index || s != b {
		t.Errorf("holder = (%d, %d), want (%d, %d)", tok, s, h.index, b)
	}
	tokB := rel.NextToken
	// Release with the stale token: STALE_TOKEN, holder untouched.
	res := h.code(release(a, "db", tokA), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	if res.CurrentToken != tokB {
		t.Errorf("current_token = %d, want %d", res.CurrentToken, tokB)
	}
	if tok, s := holder(h, "db"); tok != tokB || s != b {
		t.Errorf("holder after stale release = (%d, %d), want (%d, %d)", tok, s, tokB, b)
	}
	// Renew with a stale token fails too; with the right one it keeps b alive.
	h.code(renew("db", tokA), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	h.at(3000)
	if l := h.ok(renew("db", tokB)).GetRenew().Lock; l.ExpiresAt != t0+13000*ms {
		t.Errorf("Renew: expires_at = %d, want %d", l.ExpiresAt, t0+13000*ms)
	}
	// c is next; it cancels its wait and the lock frees when b releases.
	h.ok(cancelWait(c, "db"))
	h.ok(release(b, "db", tokB))
	if l := h.f.Lock([]byte("db"), h.f.LogTime()); l != nil {
		t.Errorf("Lock(db) = %v after last release, want nil (deleted)", l)
	}
}

func TestLockRequiresSessionAndLimits(t *testing.T) {
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{MaxWaitersPerLock: 1, MaxLocksPerSession: 1}
	res := h.code(acquire(0, 0, "x", 0, 0), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if res.Message == "" || res.GetAcquire().GetHeader().GetAppliedIndex() != h.index {
		t.Errorf("session-0 Acquire = %v, want a message and a header", res)
	}
	a, b, c := h.session(10000), h.session(10000), h.session(10000)
	h.ok(acquire(a, 0, "x", 0, 0))
	h.code(acquire(a, 0, "y", 0, 0), kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED)
	h.ok(acquire(b, 0, "x", 1000, 0))
	h.code(acquire(c, 0, "x", 1000, 0), kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED)
}

func TestLockRetriedAcquireDoesNotGrantTwice(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(10000), h.session(10000)
	first := h.ok(acquire(a, 1, "m", 0, 0))
	h.ok(release(a, "m", first.GetAcquire().Token))
	h.ok(acquire(b, 1, "m", 0, 0))
	retry := h.ok(acquire(a, 1, "m", 0, 0))
	if !proto.Equal(first, retry) {
		t.Errorf("retried Acquire = %v, want the first result %v", retry, first)
	}
	if _, s := holder(h, "m"); s != b {
		t.Errorf("holder session = %d, want %d: a retry must not grant", s, b)
	}
}

func TestLockSessionExpiryGrantsNextAndWaitTimeout(t *testing.T) {
	h := newHarness(t)
	a := h.session(1000)
	b := h.session(60000)
	c := h.session(60000)
	h.ok(acquire(a, 0, "L", 0, 0))
	h.ok(acquire(c, 0, "L", 500, 0)) // leaves the line at 500ms
	h.ok(acquire(b, 0, "L", 5000, 0))
	h.at(499).ok(tick())
	if n := len(h.f.Lock([]byte("L"), h.f.LogTime()).Waiters); n != 2 {
		t.Errorf("waiters at 499ms = %d, want 2", n)
	}
	h.at(500).ok(tick())
	if n := len(h.f.Lock([]byte("L"), h.f.LogTime()).Waiters); n != 1 {
		t.Errorf("waiters at 500ms = %d, want 1", n)
	}
	h.at(1000).ok(tick()) // a expires: b granted with this tick's index
	if tok, s := holder(h, "L"); tok != h.index || s != b {
		t.Errorf("holder = (%d, %d), want (%d, %d)", tok, s, h.index, b)
	}
	if v, cur := h.f.CheckFence([]byte("L"), h.index, h.f.LogTime()); !v || cur != h.index {
		t.Errorf("CheckFence(new token) = %v, %d; want true, %d", v, cur, h.index)
	}
	if v, _ := h.f.CheckFence([]byte("L"), h.index, t0+61000*ms); v {
		t.Errorf("CheckFence at a time past the holder's session = valid, want invalid")
	}
}

func TestLockBreakAndLockDelay(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(60000), h.session(60000)
	tokA := h.ok(acquire(a, 0, "L", 0, 2000)).GetAcquire().Token
	h.ok(acquire(b, 0, "L", 10000, 0))
	br := h.ok(breakLock("L", "stuck")).GetBreak()
	if br.BrokenToken != tokA || br.NextToken != 0 || br.DelayUntil != t0+2000*ms || br.ClearedDelayUntil != 0 {
		t.Errorf("Break = %v, want broken %d, no grant, lock-delay until %d", br, tokA, t0+2000*ms)
	}
	l := h.f.Lock([]byte("L"), h.f.LogTime())
	if l.Token != 0 || l.DelayUntil != t0+2000*ms || l.BrokenReason != "stuck" || l.BrokenToken != tokA {
		t.Errorf("Lock after break = %v", l)
	}
	if h.f.NextDeadline() != t0+2000*ms {
		t.Errorf("NextDeadline() = %d, want the delay end %d", h.f.NextDeadline(), t0+2000*ms)
	}
	h.at(1999).ok(tick())
	if tok, _ := holder(h, "L"); tok != 0 {
		t.Errorf("granted during lock-delay")
	}
	h.at(2000).ok(tick())
	if tok, s := holder(h, "L"); tok != h.index || s != b {
		t.Errorf("holder after delay = (%d, %d), want (%d, %d)", tok, s, h.index, b)
	}
	// A voluntary release (close) has no delay.
	tokB, _ := holder(h, "L")
	h.ok(release(b, "L", tokB))
	h.ok(acquire(b, 0, "L2", 0, 5000))
	h.ok(closeSession(b))
	if r := h.ok(acquire(a, 0, "L2", 0, 0)).GetAcquire(); !r.Acquired {
		t.Errorf("Acquire after close = %v, want granted without delay", r)
	}
	// Expiry is involuntary: delay applies.
	c := h.session(100)
	h.ok(acquire(c, 0, "L3", 0, 1000))
	h.at(2100).ok(tick())
	if r := h.ok(acquire(a, 0, "L3", 0, 0)).GetAcquire(); r.Acquired {
		t.Errorf("Acquire during lock-delay after expiry = acquired, want not")
	}
}

func TestFencedWrites(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(60000), h.session(60000)
	tokA := h.ok(acquire(a, 0, "L", 0, 0)).GetAcquire().Token
	fenced := func(token uint64) *kvpb.Command {
		return putReq(&kvpb.PutRequest{Key: []byte("k"), Value: []byte("v"), Fence: &kvpb.Fence{Lock: []byte("L"), Token: token}})
	}
	h.ok(fenced(tokA))
	h.ok(release(a, "L", tokA))
	tokB := h.ok(acquire(b, 0, "L", 0, 0)).GetAcquire().Token
	tests := []struct {
		name string
		cmd  *kvpb.Command
	}{
		{"put", fenced(tokA)},
		{"delete", &kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte("k"), Fence: &kvpb.Fence{Lock: []byte("L"), Token: tokA}}}}},
		{"add", &kvpb.Command{Op: &kvpb.Command_Add{Add: &kvpb.AddRequest{Key: []byte("n"), Delta: 1, Fence: &kvpb.Fence{Lock: []byte("L"), Token: tokA}}}}},
		{"unknown lock", putReq(&kvpb.PutRequest{Key: []byte("k"), Fence: &kvpb.Fence{Lock: []byte("nope"), Token: 1}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			res := h.code(tt.cmd, kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED)
			if tt.name != "unknown lock" && res.CurrentToken != tokB {
				t.Errorf("current_token = %d, want %d", res.CurrentToken, tokB)
			}
		})
	}
	h.t = t
	if kv := h.get("k"); kv.Version != 1 {
		t.Errorf("fenced-out writes changed k: %v", kv)
	}
	if h.get("n") != nil {
		t.Errorf("fenced-out add created n")
	}
	h.ok(fenced(tokB))
}

// TestLockOneGrantPerEntry: when a holder's session and its successor's
// session expire in the same entry, the lock is granted once; the next grant
// waits for the next entry so tokens stay strictly increasing.
func TestLockOneGrantPerEntry(t *testing.T) {
	h := newHarness(t)
	a := h.session(1000)
	b := h.session(60000)
	c := h.session(60000)
	h.ok(acquire(a, 0, "L", 0, 0))
	h.ok(acquire(b, 0, "L", 5000, 0))
	h.ok(acquire(c, 0, "L", 5000, 0))
	// a expires at the same entry where b cancels: b is granted in expiry,
	// then its cancel releases; c must not get the same token.
	h.at(1000)
	h.ok(cancelWait(b, "L"))
	tokB := h.index
	if tok, _ := holder(h, "L"); tok != 0 {
		t.Errorf("lock granted twice in entry %d (token %d)", tokB, tok)
	}
	h.at(1001).ok(tick())
	if tok, s := holder(h, "L"); tok != h.index || s != c || tok <= tokB {
		t.Errorf("holder = (%d, %d), want (%d, %d)", tok, s, h.index, c)
	}
}

func TestLocksList(t *testing.T) {
	h := newHarness(t)
	a := h.session(60000)
	for _, n := range []string{"x/b", "x/a", "y"} {
		h.ok(acquire(a, 0, n, 0, 0))
	}
	got, more := h.f.Locks([]byte("x/"), nil, 0, 0, h.f.LogTime())
	if len(got) != 2 || string(got[0].Name) != "x/a" || string(got[1].Name) != "x/b" || more {
		t.Errorf("Locks(x/) = %v, more=%v, want x/a, x/b", got, more)
	}
	if locks := h.f.Session(a, h.f.LogTime()).Locks; len(locks) != 3 || string(locks[0]) != "x/a" {
		t.Errorf("Session.locks = %q, want sorted", locks)
	}
}

func TestLockDelayWithoutWaitersIsDeletedAfter(t *testing.T) {
	h := newHarness(t)
	a := h.session(60000)
	h.ok(acquire(a, 0, "L", 0, 1000))
	h.ok(breakLock("L", "x"))
	if h.f.Lock([]byte("L"), h.f.LogTime()) == nil {
		t.Fatalf("Lock(L) = nil during its delay, want the delay shown")
	}
	h.at(1000).ok(tick())
	// The lock's record is gone; only its last break is remembered.
	if l := h.f.Lock([]byte("L"), h.f.LogTime()); l.GetToken() != 0 || len(l.GetWaiters()) != 0 || l.GetDelayUntil() != 0 ||
		l.GetBrokenReason() != "x" {
		t.Errorf("Lock(L) = %v after the delay, want free with only the last break (reason x)", l)
	}
	if got, _ := h.f.Locks(nil, nil, 0, 0, h.f.LogTime()); len(got) != 0 {
		t.Errorf("Locks() = %v after the delay, want none", got)
	}
	if d := h.f.NextDeadline(); d != t0+60000*ms {
		t.Errorf("NextDeadline() = %d, want the session's %d", d, t0+60000*ms)
	}
}

// TestCancelWaitLeaveLineOnly: the cancel a node proposes for a waiting
// client that went away takes the session out of the line but never releases
// a grant that raced in (a retry elsewhere may have reported it).
func TestCancelWaitLeaveLineOnly(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(10_000), h.session(10_000), h.session(10_000)
	h.ok(acquire(a, 1, "L", 0, 0))
	h.ok(acquire(b, 1, "L", 5_000, 0))
	h.ok(acquire(c, 1, "L", 5_000, 0))

	// c leaves the line; b stays first.
	leave := func(sess uint64) *kvpb.Command {
		return &kvpb.Command{Op: &kvpb.Command_CancelWait{CancelWait: &kvpb.CancelWaitRequest{
			Header: hdr(sess, 0), Name: []byte("L"), LeaveLineOnly: true}}}
	}
	h.ok(leave(c))
	if l := h.f.Lock([]byte("L"), h.f.LogTime()); len(l.GetWaiters()) != 1 || l.GetWaiters()[0].GetSession() != b {
		t.Fatalf("waiters after c left = %v, want only b", l.GetWaiters())
	}

	// a releases: b is granted; a leave-line-only cancel from b must keep it.
	tok := h.f.Lock([]byte("L"), h.f.LogTime()).GetToken()
	h.ok(release(a, "L", tok))
	granted := h.f.Lock([]byte("L"), h.f.LogTime())
	if granted.GetSession() != b {
		t.Fatalf("holder after release = session %d, want %d", granted.GetSession(), b)
	}
	h.ok(leave(b))
	if l := h.f.Lock([]byte("L"), h.f.LogTime()); l.GetSession() != b || l.GetToken() != granted.GetToken() {
		t.Fatalf("after leave-line-only cancel: holder %d token %d, want %d token %d",
			l.GetSession(), l.GetToken(), b, granted.GetToken())
	}
	// A plain CancelWait from the holder does release.
	h.ok(cancelWait(b, "L"))
	if l := h.f.Lock([]byte("L"), h.f.LogTime()); l.GetToken() != 0 {
		t.Fatalf("after CancelWait by the holder: token %d, want free", l.GetToken())
	}
}

// An operator's break of a free lock within its lock-delay clears the
// delay and grants the next waiter at once; a break of a free lock without
// one is NOT_FOUND.
func TestBreakClearsLockDelay(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(60000), h.session(60000)
	h.ok(acquire(a, 0, "L", 0, 50000))
	h.ok(breakLock("L", "stuck"))
	h.ok(acquire(b, 0, "L", 10000, 0))
	if tok, _ := holder(h, "L"); tok != 0 {
		t.Fatal("granted during lock-delay")
	}
	br := h.at(100).ok(breakLock("L", "clear the delay")).GetBreak()
	if br.ClearedDelayUntil != t0+50000*ms || br.BrokenToken != 0 || br.NextToken != h.index {
		t.Errorf("Break in lock-delay = %v, want cleared delay until %d and the waiter granted at %d", br, t0+50000*ms, h.index)
	}
	if tok, s := holder(h, "L"); tok != h.index || s != b {
		t.Errorf("holder = (%d, %d), want (%d, %d)", tok, s, h.index, b)
	}
	h.ok(release(b, "L", h.index))
	h.code(breakLock("L", "nothing"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
}

// The lock-delay maximum travels in StateLimits: a longer delay is refused,
// never clamped.
func TestLockDelayMaximum(t *testing.T) {
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{MaxLockDelayMs: 60000}
	a := h.session(60000)
	r := h.code(acquire(a, 0, "L", 0, 60001), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if !strings.Contains(r.Message, "--max-lock-delay") {
		t.Errorf("message %q does not name the flag", r.Message)
	}
	if h.f.Lock([]byte("L"), h.f.LogTime()) != nil {
		t.Error("a refused acquire left a lock behind")
	}
	h.ok(acquire(a, 0, "L", 0, 60000))
}

// Caps on sessions and locks travel in StateLimits and refuse new ones
// with LIMIT_EXCEEDED naming the cap and its flag; expired sessions do not
// count.
func TestSessionAndLockCaps(t *testing.T) {
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{MaxSessions: 2, MaxLocks: 2}
	a := h.session(1000)
	b := h.session(60000)
	r := h.code(createSession(60000), kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED)
	if !strings.Contains(r.Message, "--max-sessions 2") {
		t.Errorf("message %q does not name the cap", r.Message)
	}
	h.ok(acquire(b, 0, "L1", 0, 0))
	h.ok(acquire(b, 0, "L2", 0, 0))
	r = h.code(acquire(b, 0, "L3", 0, 0), kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED)
	if !strings.Contains(r.Message, "--max-locks 2") {
		t.Errorf("message %q does not name the cap", r.Message)
	}
	// Waiting for a lock that exists does not make a new one.
	h.ok(acquire(a, 0, "L1", 500, 0))
	h.at(2000) // a has expired: its slot is free again
	h.session(60000)
	if n := h.f.SessionCount(); n != 2 {
		t.Errorf("SessionCount = %d, want 2", n)
	}
}

// TestLastBreakIsRemembered: a lock broken with no lock-delay and no waiter
// is free at once, and still shows who broke it, when and why; the memory
// is bounded, forgetting the oldest break first, and survives a snapshot.
func TestLastBreakIsRemembered(t *testing.T) {
	h := newHarness(t)
	a := h.session(60000)
	tok := h.ok(acquire(a, 1, "job", 0, 0)).GetAcquire().GetToken()
	h.ok(breakLock("job", "stuck job"))
	l := h.f.Lock([]byte("job"), h.f.LogTime())
	if l.GetToken() != 0 || l.GetBrokenToken() != tok || l.GetBrokenReason() != "stuck job" || l.GetBrokenAt() == 0 {
		t.Fatalf("Lock(job) after a break = %v; want free, broken token %d, reason \"stuck job\"", l, tok)
	}
	// A new holder on a fresh record still shows the last break.
	b := h.session(60000)
	h.ok(acquire(b, 1, "job", 0, 0))
	if l := h.f.Lock([]byte("job"), h.f.LogTime()); l.GetToken() == 0 || l.GetBrokenReason() != "stuck job" {
		t.Errorf("Lock(job) held again = %v; want the new holder and the last break", l)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if l := g.Lock([]byte("job"), g.LogTime()); l.GetBrokenReason() != "stuck job" {
		t.Errorf("after restore Lock(job) = %v; want the last break", l)
	}
	for i := 0; i < maxLastBreaks+5; i++ {
		name := fmt.Sprintf("L%04d", i)
		h.ok(acquire(b, uint64(10+2*i), name, 0, 0))
		h.ok(breakLock(name, "r"))
	}
	if n := len(h.f.s.lastBreaks); n != maxLastBreaks {
		t.Errorf("%d breaks remembered; want the bound %d", n, maxLastBreaks)
	}
	if l := h.f.Lock([]byte("job"), h.f.LogTime()); l.GetBrokenReason() == "stuck job" {
		t.Errorf("the oldest break is still remembered after %d newer ones", maxLastBreaks+5)
	}
}
