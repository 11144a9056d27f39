package fsm

import (
	"bytes"
	"io"
	"testing"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// lockValue is the holder's value of lock name now (as Lock shows it), and
// its waiters' values (kept in the state; Lock does not show them).
func lockValue(h *harness, name string) (value string, waiters []string) {
	l := h.f.Lock([]byte(name), h.f.LogTime())
	for _, w := range l.GetWaiters() {
		if w.Value != nil {
			h.t.Errorf("Lock(%q) shows waiter %d's value %q; waiters' values are not shown", name, w.Session, w.Value)
		}
	}
	if it, ok := h.f.s.getLock(name); ok {
		for _, w := range it.waiters {
			if se := h.f.s.sessions[w.session]; se != nil && se.expiresAt > h.f.LogTime() && w.waitUntil > h.f.LogTime() {
				waiters = append(waiters, string(w.value))
			}
		}
	}
	return string(l.GetValue()), waiters
}

// An election's value follows the grant: the requester's value on a free
// lock, the waiter's value on a handoff (release, session expiry, break),
// and nothing once the lock is free.
func TestElectionValueThroughGrantQueueHandoff(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(10000), h.session(10000), h.session(2000)
	d := h.session(20000)

	r := h.ok(acquireValue(a, 1, "leader", 0, 0, "A")).GetAcquire()
	if !r.Acquired || string(r.GetLock().GetValue()) != "A" {
		t.Fatalf("Acquire(a, A) = %v, want acquired with value A", r)
	}
	// Re-acquire by the holder keeps its value (Proclaim changes it).
	if r := h.ok(acquireValue(a, 2, "leader", 0, 0, "A2")).GetAcquire(); string(r.GetLock().GetValue()) != "A" {
		t.Errorf("re-Acquire(a, A2).lock.value = %q, want A", r.GetLock().GetValue())
	}
	// Try-once by another candidate sees the leader's value, not its own.
	if r := h.ok(acquireValue(b, 1, "leader", 0, 0, "B")).GetAcquire(); r.Acquired || string(r.GetLock().GetValue()) != "A" {
		t.Errorf("Acquire(b, no wait) = %v, want not acquired, value A", r)
	}
	h.ok(acquireValue(b, 2, "leader", 60000, 0, "B"))
	h.ok(acquireValue(c, 1, "leader", 60000, 0, "C"))
	h.ok(acquireValue(d, 1, "leader", 60000, 0, "D"))
	if v, ws := lockValue(h, "leader"); v != "A" || len(ws) != 3 || ws[0] != "B" || ws[1] != "C" || ws[2] != "D" {
		t.Fatalf("value %q, waiters %q; want A, [B C D]", v, ws)
	}
	// Release: b takes over with its value in the same apply.
	tokA := r.Token
	rel := h.ok(release(a, "leader", tokA)).GetRelease()
	if v, ws := lockValue(h, "leader"); v != "B" || len(ws) != 2 {
		t.Fatalf("after release: value %q, waiters %q; want B, [C D]", v, ws)
	}
	if tok, s := holder(h, "leader"); tok != rel.NextToken || s != b {
		t.Fatalf("holder = (%d, %d), want (%d, %d)", tok, s, rel.NextToken, b)
	}
	// c's session expires while it waits: it leaves the line with its value.
	h.at(3000)
	h.ok(keepAlive(b))
	h.ok(keepAlive(d))
	h.ok(tick())
	if v, ws := lockValue(h, "leader"); v != "B" || len(ws) != 1 || ws[0] != "D" {
		t.Fatalf("after c expired: value %q, waiters %q; want B, [D]", v, ws)
	}
	// b's session expires: d takes over with its value.
	h.at(14000)
	h.ok(keepAlive(d))
	h.ok(tick())
	if tok, s := holder(h, "leader"); tok == 0 || s != d {
		t.Fatalf("holder after b expired = (%d, %d), want session %d", tok, s, d)
	}
	if v, _ := lockValue(h, "leader"); v != "D" {
		t.Fatalf("value after b expired = %q, want D", v)
	}
	// A break frees the lock: no holder, no value.
	h.ok(breakLock("leader", "test"))
	if l := h.f.Lock([]byte("leader"), h.f.LogTime()); l.GetToken() != 0 || l.GetValue() != nil {
		t.Errorf("after break: %v, want free with no value", l)
	}
}

// Proclaim changes the holder's value under the same token and emits
// LOCK_VALUE; a stale token, another session's token or a free lock are
// refused and change nothing.
func TestElectionProclaim(t *testing.T) {
	h := newHarness(t)
	a, b := h.session(10000), h.session(10000)
	tok := h.ok(acquireValue(a, 1, "leader", 0, 0, "v1")).GetAcquire().Token
	h.ok(acquireValue(b, 1, "leader", 60000, 0, "B"))

	evs := h.applyEv(proclaim(hdr(a, 2), "leader", tok, "v2"))
	if len(evs) != 1 || evs[0].Change.Type != kvpb.EventType_EVENT_TYPE_LOCK_VALUE ||
		evs[0].Change.Lock.GetToken() != tok || string(evs[0].Change.Lock.GetValue()) != "v2" {
		t.Fatalf("Proclaim events = %v, want one LOCK_VALUE with token %d value v2", describe(evs), tok)
	}
	if got, s := holder(h, "leader"); got != tok || s != a {
		t.Errorf("holder after proclaim = (%d, %d), want (%d, %d): the term goes on", got, s, tok, a)
	}
	if v, ws := lockValue(h, "leader"); v != "v2" || len(ws) != 1 || ws[0] != "B" {
		t.Errorf("after proclaim: value %q waiters %q, want v2 [B]", v, ws)
	}
	// A proclaim of the same value changes nothing a watch would report.
	if evs := h.applyEv(proclaim(hdr(a, 3), "leader", tok, "v2")); len(evs) != 0 {
		t.Errorf("same-value proclaim events = %v, want none", describe(evs))
	}

	// Stale token: refused, value unchanged.
	res := h.code(proclaim(hdr(a, 4), "leader", tok-1, "stale"), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	if res.CurrentToken != tok {
		t.Errorf("stale proclaim current_token = %d, want %d", res.CurrentToken, tok)
	}
	// The current token, but from a session that does not hold it.
	h.code(proclaim(hdr(b, 2), "leader", tok, "usurper"), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	// No session: invalid.
	h.code(proclaim(hdr(0, 0), "leader", tok, "anon"), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if v, _ := lockValue(h, "leader"); v != "v2" {
		t.Errorf("value after refused proclaims = %q, want v2", v)
	}

	// After a handoff the old token is stale, the new holder may proclaim.
	next := h.ok(release(a, "leader", tok)).GetRelease().NextToken
	h.code(proclaim(hdr(a, 5), "leader", tok, "late"), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN)
	h.ok(proclaim(hdr(b, 3), "leader", next, "B2"))
	if v, _ := lockValue(h, "leader"); v != "B2" {
		t.Errorf("value after b's proclaim = %q, want B2", v)
	}
	// A free lock: stale, current token 0.
	h.ok(release(b, "leader", next))
	if res := h.code(proclaim(hdr(b, 4), "leader", next, "x"), kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN); res.CurrentToken != 0 {
		t.Errorf("proclaim on a free lock: current_token = %d, want 0", res.CurrentToken)
	}
}

// A retried Proclaim is answered from the remembered result (its value
// rebuilt from the request) and not applied again; a retried Acquire that
// granted the lock gets the request's value back. Neither is remembered
// with its value.
func TestElectionRetriesAreExactlyOnce(t *testing.T) {
	h := newHarness(t)
	a := h.session(60000)
	big := bytes.Repeat([]byte("x"), 64<<10)
	acq := acquireValue(a, 1, "leader", 0, 0, string(big))
	first := h.ok(acq).GetAcquire()
	tok := first.Token
	h.ok(proclaim(hdr(a, 2), "leader", tok, "p1"))
	h.ok(proclaim(hdr(a, 3), "leader", tok, "p2"))
	before := h.index

	retryAcq := h.ok(acquireValue(a, 1, "leader", 0, 0, string(big))).GetAcquire()
	if !retryAcq.Acquired || retryAcq.Token != tok || !bytes.Equal(retryAcq.GetLock().GetValue(), big) {
		t.Errorf("retried Acquire = token %d, %d value bytes; want token %d and the request's value", retryAcq.Token, len(retryAcq.GetLock().GetValue()), tok)
	}
	p := h.ok(proclaim(hdr(a, 2), "leader", tok, "p1")).GetProclaim()
	if string(p.GetLock().GetValue()) != "p1" || string(p.GetLock().GetName()) != "leader" || p.GetLock().GetToken() != tok {
		t.Errorf("retried Proclaim = %v, want leader token %d value p1", p.GetLock(), tok)
	}
	if p.GetHeader().GetAppliedIndex() >= before {
		t.Errorf("retried Proclaim answered at index %d, want the first run's (< %d)", p.GetHeader().GetAppliedIndex(), before)
	}
	if v, _ := lockValue(h, "leader"); v != "p2" {
		t.Errorf("value after retries = %q, want p2 (the retry must not apply again)", v)
	}
	// The remembered results carry no values: the snapshot holds the value
	// once (the lock's), not the 64 KiB acquire value.
	if n := len(snapshotBytes(t, h.f)); n > 32<<10 {
		t.Errorf("snapshot is %d bytes: a remembered result kept a lock value", n)
	}
	se := h.f.s.sessions[a]
	se.dedup.Ascend(func(e dedupEntry) bool {
		var l *kvpb.LockInfo
		if r := e.res.GetAcquire(); r != nil {
			l = r.GetLock()
		}
		if r := e.res.GetProclaim(); r != nil {
			l = r.GetLock()
		}
		if l.GetValue() != nil || l.GetName() != nil {
			t.Errorf("remembered seq %d keeps name %q value %d bytes", e.seq, l.GetName(), len(l.GetValue()))
		}
		return true
	})

	// A retried acquire that queued (another session held the lock) gets
	// no value back: the value it would show is another session's.
	b := h.session(60000)
	q := h.ok(acquireValue(b, 1, "leader", 60000, 0, "B")).GetAcquire()
	if q.Position != 1 || string(q.GetLock().GetValue()) != "p2" {
		t.Fatalf("queued acquire = %v", q)
	}
	if rq := h.ok(acquireValue(b, 1, "leader", 60000, 0, "B")).GetAcquire(); rq.Position != 1 || rq.GetLock().GetValue() != nil {
		t.Errorf("retried queued acquire = %v, want position 1 and no value", rq)
	}
}

// Values survive a snapshot: the holder's and each waiter's, and the next
// grant after restore takes the waiter's value.
func TestElectionSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.session(10000), h.session(60000), h.session(60000)
	tok := h.ok(acquireValue(a, 1, "leader", 0, 0, "A")).GetAcquire().Token
	h.ok(proclaim(hdr(a, 2), "leader", tok, "A2"))
	h.ok(acquireValue(b, 1, "leader", 60000, 100, "B"))
	h.ok(acquireValue(c, 1, "leader", 60000, 0, "C"))

	snap := snapshotBytes(t, h.f)
	r := New()
	if err := r.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, r), snap) {
		t.Fatalf("re-snapshot after restore differs")
	}
	h.f = r
	if v, ws := lockValue(h, "leader"); v != "A2" || len(ws) != 2 || ws[0] != "B" || ws[1] != "C" {
		t.Fatalf("restored: value %q waiters %q, want A2 [B C]", v, ws)
	}
	h.ok(release(a, "leader", tok))
	if v, ws := lockValue(h, "leader"); v != "B" || len(ws) != 1 || ws[0] != "C" {
		t.Errorf("after release on the restored fsm: value %q waiters %q, want B [C]", v, ws)
	}
	if d := h.f.Lock([]byte("leader"), h.f.LogTime()).GetLockDelayMs(); d != 100 {
		t.Errorf("lock delay from b's acquire = %d, want 100 (kept with the waiter)", d)
	}
}
