package fsm

import (
	"slices"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func waiterIndex(ws []lockWaiter, session uint64) int {
	return slices.IndexFunc(ws, func(w lockWaiter) bool { return w.session == session })
}

// proto renders a lock as seen at now: a holder whose session has expired by
// now and waiters whose wait or session has ended are left out. The
// holder's value is shown; the waiters' values are not (they are kept, and
// written to snapshots): a line of 1024 candidates with 1 MiB values would
// make every answer and watch event about the lock 1 GiB.
// Choice: a rendered lock carries at most one value.
func (s *state) lockProto(l lockItem, now int64) *kvpb.LockInfo {
	info := &kvpb.LockInfo{
		Name:         []byte(l.name),
		DelayUntil:   l.delayUntil,
		BrokenToken:  l.brokenToken,
		BrokenAt:     l.brokenAt,
		BrokenReason: l.brokenReason,
		LockDelayMs:  l.lockDelayMs,
	}
	if se := s.sessions[l.session]; l.token != 0 && se != nil && se.expiresAt > now {
		info.Token = l.token
		info.Session = l.session
		info.HeldSince = l.heldSince
		info.ExpiresAt = se.expiresAt
		info.Value = cloneBytes(l.value)
	}
	for _, w := range l.waiters {
		if se := s.sessions[w.session]; se != nil && se.expiresAt > now && w.waitUntil > now {
			info.Waiters = append(info.Waiters, &kvpb.LockWaiter{Session: w.session, QueuedAt: w.queuedAt, WaitUntil: w.waitUntil})
		}
	}
	return info
}

// grant gives a free lock to session with token = this entry's index, and
// the holder's value.
func (s *state) grant(l *lockItem, session uint64, lockDelayMs int64, value []byte) {
	l.token = s.index
	l.session = session
	l.value = value
	l.heldSince = s.logTime
	l.lockDelayMs = lockDelayMs
	l.delayUntil = 0
	l.freedAt = 0
	s.granted[l.name] = true
}

// grantNext grants a free lock to the first waiter that can take it: its
// session is alive, its wait has not ended, and it is under the per-session
// lock limit (Choice: a waiter over the limit is dropped from the line).
//
// A lock is granted at most once per entry, so that tokens (= entry index)
// stay strictly increasing per lock. When a second grant would be needed in
// the same entry, it is deferred: delayUntil = log time + 1 puts a grant in
// the deadline index for the next entry.
func (s *state) grantNext(l *lockItem) {
	if l.token != 0 || l.delayUntil > s.logTime {
		return
	}
	if s.granted[l.name] {
		if len(l.waiters) > 0 {
			l.delayUntil = s.logTime + 1
		}
		return
	}
	maxLocks := int(s.limits.GetMaxLocksPerSession())
	ws := l.waiters
	for len(ws) > 0 {
		w := ws[0]
		ws = ws[1:]
		se := s.liveSession(w.session)
		if se == nil || w.waitUntil <= s.logTime || (maxLocks > 0 && len(se.locks) >= maxLocks) {
			continue
		}
		l.waiters = ws
		if l.freedAt != 0 {
			s.handoffs = append(s.handoffs, max(s.logTime-l.freedAt, 0))
		}
		s.grant(l, w.session, w.lockDelayMs, w.value)
		return
	}
	l.waiters = nil
}

// releaseLock frees a held lock and grants the next waiter. An involuntary
// release (expiry, break) starts the lock-delay first. freedAt is when the
// lock fell free in log time: now, or the deadline of the holder's expired
// session (expiry runs at the first entry stamped after it).
func (s *state) releaseLock(l *lockItem, involuntary bool, freedAt int64) {
	l.token, l.session, l.heldSince, l.value = 0, 0, 0, nil
	l.freedAt = freedAt
	if involuntary && l.lockDelayMs > 0 && !bug("lock-delay-ignored") {
		l.delayUntil = s.logTime + l.lockDelayMs*nsPerMs
	}
	s.grantNext(l)
}

func staleToken(name string, token, current uint64) *kvpb.CommandResult {
	r := fail(kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN, "lock %q: token %d is not current (current %d)", name, token, current)
	r.CurrentToken = current
	return r
}

func (s *state) acquire(req *kvpb.AcquireRequest) *kvpb.CommandResult {
	switch {
	case len(req.Name) == 0:
		return invalid("name: must not be empty")
	case req.WaitMs < 0:
		return invalid("wait_ms: must not be negative, got %d", req.WaitMs)
	case req.LockDelayMs < 0:
		return invalid("lock_delay_ms: must not be negative, got %d", req.LockDelayMs)
	case s.limits.GetMaxLockDelayMs() > 0 && req.LockDelayMs > s.limits.GetMaxLockDelayMs():
		return invalid("lock_delay_ms: %d exceeds the limit of %d (--max-lock-delay)", req.LockDelayMs, s.limits.GetMaxLockDelayMs())
	}
	sess := req.Header.GetSession()
	name := string(req.Name)
	l, ok := s.getLock(name)
	if !ok {
		// A lock the fsm holds nothing for would become one more.
		if maxN := s.limits.GetMaxLocks(); maxN > 0 && s.locks.Len() >= int(maxN) {
			return fail(kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED,
				"locks: %d locks are held, waited for or in their lock-delay, the cluster's limit (--max-locks %d)", s.locks.Len(), maxN)
		}
		l = lockItem{name: name}
	}
	resp := &kvpb.AcquireResponse{}
	result := &kvpb.CommandResult{Result: &kvpb.CommandResult_Acquire{Acquire: resp}}

	switch {
	case l.token != 0 && l.session == sess: // idempotent (the value stays: Proclaim changes it)
		resp.Acquired, resp.Token = true, l.token
	case waiterIndex(l.waiters, sess) >= 0: // already in line
		resp.Position = uint32(waiterIndex(l.waiters, sess) + 1)
	case (l.token == 0 || bug("lock-ignore-expiry")) && len(l.waiters) == 0 && l.delayUntil <= s.logTime && !s.granted[name]:
		if maxLocks := s.limits.GetMaxLocksPerSession(); maxLocks > 0 && len(s.sessions[sess].locks) >= int(maxLocks) {
			return fail(kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED, "session %d holds %d locks, the limit", sess, maxLocks)
		}
		s.grant(&l, sess, req.LockDelayMs, cloneBytes(req.Value))
		s.putLock(l)
		resp.Acquired, resp.Token = true, l.token
	case req.WaitMs > 0:
		if maxW := s.limits.GetMaxWaitersPerLock(); maxW > 0 && len(l.waiters) >= int(maxW) {
			return fail(kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED, "lock %q has %d waiters, the limit", name, maxW)
		}
		l.waiters = append(slices.Clip(l.waiters), lockWaiter{
			session: sess, queuedAt: s.logTime, waitUntil: s.logTime + req.WaitMs*nsPerMs, lockDelayMs: req.LockDelayMs,
			value: cloneBytes(req.Value),
		})
		s.putLock(l)
		resp.Position = uint32(len(l.waiters))
	}
	resp.Lock = s.lockProto(l, s.logTime)
	return result
}

func (s *state) release(req *kvpb.ReleaseRequest) *kvpb.CommandResult {
	name := string(req.Name)
	l, ok := s.getLock(name)
	if !ok || l.token == 0 || l.token != req.Token {
		return staleToken(name, req.Token, l.token)
	}
	s.releaseLock(&l, false, s.logTime)
	s.putLock(l)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Release{Release: &kvpb.ReleaseResponse{NextToken: l.token}}}
}

// cancelWait takes the session out of the line, and releases the lock if it
// was granted to the session meanwhile, unless leave_line_only: then a grant
// stays (a retried acquire may have reported it to the client). Doing
// nothing is not an error.
func (s *state) cancelWait(req *kvpb.CancelWaitRequest) *kvpb.CommandResult {
	sess := req.Header.GetSession()
	if l, ok := s.getLock(string(req.Name)); ok {
		if i := waiterIndex(l.waiters, sess); i >= 0 {
			l.waiters = slices.Delete(slices.Clone(l.waiters), i, i+1)
		}
		if l.token != 0 && l.session == sess && !req.LeaveLineOnly {
			s.releaseLock(&l, false, s.logTime)
		}
		s.putLock(l)
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_CancelWait{CancelWait: &kvpb.CancelWaitResponse{}}}
}

// proclaim sets the value of a lock held with req.Token by the requesting
// session, without a new grant: the token (the election's term) stays.
// STALE_TOKEN when the token is not the current grant, or when another
// session holds it (a token alone does not let a session speak for the
// holder).
func (s *state) proclaim(req *kvpb.ProclaimRequest) *kvpb.CommandResult {
	name := string(req.Name)
	l, ok := s.getLock(name)
	if !ok || l.token == 0 || l.token != req.Token || s.liveSession(l.session) == nil {
		return staleToken(name, req.Token, l.token)
	}
	if sess := req.Header.GetSession(); l.session != sess {
		r := fail(kvpb.ErrorCode_ERROR_CODE_STALE_TOKEN, "lock %q: token %d is held by session %d, not by session %d",
			name, req.Token, l.session, sess)
		r.CurrentToken = l.token
		return r
	}
	l.value = cloneBytes(req.Value)
	s.putLock(l)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Proclaim{Proclaim: &kvpb.ProclaimResponse{Lock: s.lockProto(l, s.logTime)}}}
}

func (s *state) renew(req *kvpb.RenewRequest) *kvpb.CommandResult {
	name := string(req.Name)
	l, ok := s.getLock(name)
	se := s.liveSession(l.session)
	if !ok || l.token == 0 || l.token != req.Token || se == nil {
		return staleToken(name, req.Token, l.token)
	}
	s.renewSession(se)
	s.touch(WatchLock, name)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Renew{Renew: &kvpb.RenewResponse{Lock: s.lockProto(l, s.logTime)}}}
}

// breakLock is an operator's override. A held lock is released
// involuntarily: its lock-delay starts (the holder may not know yet). A free
// lock within its lock-delay has the delay cleared, and its next waiter is
// granted. Anything else (free, no delay) is NOT_FOUND.
func (s *state) breakLock(req *kvpb.BreakRequest) *kvpb.CommandResult {
	name := string(req.Name)
	l, ok := s.getLock(name)
	if ok && l.token == 0 && l.delayUntil > s.logTime {
		cleared := l.delayUntil
		l.delayUntil = 0
		l.brokenAt, l.brokenReason = s.logTime, req.Reason
		s.noteBreak(name, l.brokenToken, req.Reason)
		s.grantNext(&l)
		s.putLock(l)
		return &kvpb.CommandResult{Result: &kvpb.CommandResult_Break{Break: &kvpb.BreakResponse{
			NextToken: l.token, ClearedDelayUntil: cleared}}}
	}
	if !ok || l.token == 0 {
		return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "lock %q is not held and has no pending lock-delay", name)
	}
	defer s.because(causeBreak)()
	broken := l.token
	l.brokenToken, l.brokenAt, l.brokenReason = broken, s.logTime, req.Reason
	s.noteBreak(name, broken, req.Reason)
	s.releaseLock(&l, true, s.logTime)
	s.putLock(l)
	resp := &kvpb.BreakResponse{BrokenToken: broken, NextToken: l.token}
	if l.token == 0 && l.delayUntil > s.logTime {
		resp.DelayUntil = l.delayUntil
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Break{Break: resp}}
}
