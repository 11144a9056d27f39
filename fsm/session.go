package fsm

import (
	"slices"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func (se *session) proto() *kvpb.SessionInfo {
	info := &kvpb.SessionInfo{
		Id:        se.id,
		TtlMs:     se.ttlMs,
		ExpiresAt: se.expiresAt,
		Name:      se.name,
		CreatedAt: se.createdAt,
		Owner:     se.owner,
		Keys:      uint64(len(se.keys)),
	}
	for _, name := range sortedKeys(se.locks) {
		info.Locks = append(info.Locks, []byte(name))
	}
	return info
}

func sortedKeys(m map[string]struct{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (s *state) createSession(req *kvpb.CreateSessionRequest) *kvpb.CommandResult {
	if req.TtlMs <= 0 {
		return invalid("ttl_ms: must be positive, got %d", req.TtlMs)
	}
	// Expired sessions were removed before this op (expire), so every
	// session counted here is live.
	if maxN := s.limits.GetMaxSessions(); maxN > 0 && len(s.sessions) >= int(maxN) {
		return fail(kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED,
			"sessions: %d live sessions, the cluster's limit (--max-sessions %d); close or let some expire", len(s.sessions), maxN)
	}
	se := newSession(s.index)
	se.ttlMs = req.TtlMs
	se.name = req.Name
	se.owner = req.Owner
	se.createdAt = s.logTime
	s.sessions[se.id] = se
	s.setSessionExpiry(se, s.logTime+req.TtlMs*nsPerMs)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_CreateSession{
		CreateSession: &kvpb.CreateSessionResponse{Session: se.proto()}}}
}

// renewSession gives a session a full TTL from now.
func (s *state) renewSession(se *session) {
	if bug("renewal-keeps-deadline") {
		se.expiresAt = s.logTime + se.ttlMs*nsPerMs // answered, but not in the deadline index
		return
	}
	s.setSessionExpiry(se, s.logTime+se.ttlMs*nsPerMs)
}

func sessionExpired(id uint64) *kvpb.CommandResult {
	return fail(kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, "session %d is unknown or expired", id)
}

func (s *state) keepAlive(req *kvpb.KeepAliveRequest) *kvpb.CommandResult {
	se := s.liveSession(req.Id)
	if se == nil {
		return sessionExpired(req.Id)
	}
	s.renewSession(se)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_KeepAlive{
		KeepAlive: &kvpb.KeepAliveResponse{Session: se.proto()}}}
}

// keepAliveBatch renews each session in turn, as keepAlive would.
func (s *state) keepAliveBatch(op *kvpb.KeepAliveBatchOp) *kvpb.CommandResult {
	results := make([]*kvpb.CommandResult, len(op.GetIds()))
	for i, id := range op.GetIds() {
		results[i] = s.keepAlive(&kvpb.KeepAliveRequest{Id: id})
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_KeepAliveBatch{
		KeepAliveBatch: &kvpb.KeepAliveBatchResult{Results: results}}}
}

// closeSession ends a session. Choice: closing an unknown or expired session
// is SESSION_EXPIRED (the client may treat it as done).
func (s *state) closeSession(req *kvpb.CloseSessionRequest) *kvpb.CommandResult {
	se := s.liveSession(req.Id)
	if se == nil {
		return sessionExpired(req.Id)
	}
	s.endSession(se, false)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_CloseSession{CloseSession: &kvpb.CloseSessionResponse{}}}
}

// endSession removes a session and everything it owns: the keys bound to
// it are deleted (a DELETE event each, expired when the session expired),
// it leaves every lock and cache line, its locks are released (with
// lock-delay when expired, not when closed) and handed to the next waiter,
// its fill leases pass to the next cache waiter, and its dedup table goes.
// All in name order. Every way a session ends comes through here.
func (s *state) endSession(se *session, expired bool) {
	if expired {
		defer s.because(causeExpired)()
	}
	s.sessionEnded(se)
	s.delDeadline(deadline{at: se.expiresAt, kind: dlSession, id: se.id})
	for _, key := range sortedKeys(se.keys) {
		if it, ok := s.getKey(key); ok && it.session == se.id {
			s.delKey(key)
			s.keyDeleted(it)
		}
	}
	delete(s.sessions, se.id) // from here on it is not live: no grant goes to it

	for _, name := range sortedKeys(se.lockWaits) {
		if l, ok := s.getLock(name); ok {
			if i := waiterIndex(l.waiters, se.id); i >= 0 {
				l.waiters = slices.Delete(slices.Clone(l.waiters), i, i+1)
				s.putLock(l)
			}
		}
	}
	for _, key := range sortedKeys(se.cacheWaits) {
		if c, ok := s.getCache(key); ok {
			if i := cacheWaiterIndex(c.waiters, se.id); i >= 0 {
				c.waiters = slices.Delete(slices.Clone(c.waiters), i, i+1)
				s.putCache(c)
			}
		}
	}
	freedAt := s.logTime
	if expired {
		freedAt = se.expiresAt
	}
	for _, name := range sortedKeys(se.locks) {
		if l, ok := s.getLock(name); ok && l.token != 0 && l.session == se.id {
			s.releaseLock(&l, expired, freedAt)
			s.putLock(l)
		}
	}
	for _, key := range sortedKeys(se.leases) {
		if c, ok := s.getCache(key); ok && c.lease.token != 0 && c.lease.session == se.id {
			c.lease = fillLease{}
			s.passLease(&c)
			s.putCache(c)
		}
	}
}
