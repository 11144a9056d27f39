package fsm

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// nsPerMs converts request durations (ms) to log time (ns).
const nsPerMs = int64(1_000_000)

var (
	commandOneof = (&kvpb.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op")
	resultDesc   = (&kvpb.CommandResult{}).ProtoReflect().Descriptor()
	resultOneof  = resultDesc.Oneofs().ByName("result")
)

// applyCommand decodes and applies one command entry. s.index is already
// the entry's index.
func (s *state) applyCommand(data []byte) *kvpb.CommandResult {
	cmd := &kvpb.Command{}
	if err := cmd.UnmarshalVT(data); err != nil {
		return s.finish(nil, fail(kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "command: cannot decode entry: %v", err))
	}
	if cmd.Limits != nil {
		s.limits = cmd.Limits
		s.counters.maxBytes = cmd.Limits.CacheMaxBytes
	}

	prev := s.logTime
	if r := cmd.GetRecover(); r != nil {
		s.recover(prev, cmd.Stamp, r.GraceNs)
	}
	s.logTime = max(s.logTime, cmd.Stamp)
	s.expire()

	hdr, needSession, run := s.op(cmd)
	if run == nil {
		return s.finish(cmd, fail(kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "command: no op"))
	}
	if hdr.GetSession() == 0 {
		if needSession {
			return s.finish(cmd, invalid("header.session: must name a session for this op"))
		}
		if r := s.authStale(cmd); r != nil {
			return r
		}
		return s.finish(cmd, run())
	}
	se := s.liveSession(hdr.Session)
	if se == nil {
		return s.finish(cmd, fail(kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, "session %d is unknown or expired", hdr.Session))
	}
	// Choice: seq 0 with a session checks the session but is not deduplicated
	// (the client numbers from 1).
	if hdr.Seq == 0 {
		return s.finish(cmd, run())
	}
	// min_pending_seq is the lowest seq the client still waits for, and
	// this seq is one of them. A larger one would forget results the
	// client still needs (2^64-1 would refuse every later seq): refused,
	// and nothing about the session changes.
	if hdr.MinPendingSeq > hdr.Seq {
		return s.finish(cmd, invalid("header.min_pending_seq: %d is above header.seq %d (it is the lowest seq still in flight)",
			hdr.MinPendingSeq, hdr.Seq))
	}
	digest := bodyDigest(cmd)
	if r, ok := se.dedup.Get(dedupEntry{seq: hdr.Seq}); ok && !bug("no-dedup") {
		if r.digest != 0 && r.digest != digest {
			return s.finish(cmd, fail(kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED,
				"session %d: seq %d was already used by a command with a different body; a new command needs a new seq", hdr.Session, hdr.Seq))
		}
		res, rerun := s.retryAnswer(r.res, cmd)
		if !rerun {
			return res
		}
		if r := s.authStale(cmd); r != nil {
			return r
		}
		res = s.finish(cmd, run())
		s.remember(se, hdr, res, digest)
		return res
	}
	if hdr.Seq < se.minPending {
		return s.finish(cmd, fail(kvpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE,
			"session %d: seq %d is below the forgotten watermark %d", hdr.Session, hdr.Seq, se.minPending))
	}
	if r := s.authStale(cmd); r != nil {
		return r // not remembered: the retry is checked and applied afresh
	}
	res := s.finish(cmd, run())
	s.remember(se, hdr, res, digest)
	return res
}

// authStale refuses a command whose permissions were checked against an
// auth revision older than the current one (nil when it may run). A retry
// already answered from the dedup table is not refused: it was checked and
// applied before.
func (s *state) authStale(cmd *kvpb.Command) *kvpb.CommandResult {
	if cmd.AuthRevision == nil || *cmd.AuthRevision >= s.auth.revision {
		return nil
	}
	r := s.finish(cmd, fail(kvpb.ErrorCode_ERROR_CODE_AUTH_REVISION_STALE,
		"auth changed (revision %d) after this request was checked (revision %d)", s.auth.revision, *cmd.AuthRevision))
	r.AuthRevision = s.auth.revision
	return r
}

// remember stores the slim copy of a result (see dedup.go) with the
// command's body digest for exactly-once retries, and prunes the table.
func (s *state) remember(se *session, hdr *kvpb.RequestHeader, res *kvpb.CommandResult, digest uint64) {
	se.dedup.ReplaceOrInsert(dedupEntry{seq: hdr.Seq, res: slim(res), digest: digest})
	se.minPending = max(se.minPending, hdr.MinPendingSeq)
	for {
		min, ok := se.dedup.Min()
		if !ok || min.seq >= se.minPending {
			break
		}
		se.dedup.DeleteMin()
	}
	// Choice: when the cap drops results the watermark rises past them, so
	// a retry of a forgotten command gets STALE_SEQUENCE and is never
	// applied twice.
	if maxN := int(s.limits.GetMaxDedupResults()); maxN > 0 {
		for se.dedup.Len() > maxN {
			min, _ := se.dedup.DeleteMin()
			se.minPending = max(se.minPending, min.seq+1)
		}
	}
}

// op maps a command to its request header, whether it needs a session, and
// the function that applies it.
func (s *state) op(cmd *kvpb.Command) (*kvpb.RequestHeader, bool, func() *kvpb.CommandResult) {
	switch o := cmd.Op.(type) {
	case *kvpb.Command_Put:
		return o.Put.GetHeader(), false, func() *kvpb.CommandResult { return s.put(o.Put) }
	case *kvpb.Command_Delete:
		return o.Delete.GetHeader(), false, func() *kvpb.CommandResult { return s.delete(o.Delete) }
	case *kvpb.Command_Add:
		return o.Add.GetHeader(), false, func() *kvpb.CommandResult { return s.add(o.Add) }
	case *kvpb.Command_Touch:
		return o.Touch.GetHeader(), false, func() *kvpb.CommandResult { return s.touchKey(o.Touch) }
	case *kvpb.Command_Txn:
		return o.Txn.GetHeader(), false, func() *kvpb.CommandResult { return s.txn(o.Txn) }
	case *kvpb.Command_CreateSession:
		return nil, false, func() *kvpb.CommandResult { return s.createSession(o.CreateSession) }
	case *kvpb.Command_KeepAlive:
		return nil, false, func() *kvpb.CommandResult { return s.keepAlive(o.KeepAlive) }
	case *kvpb.Command_KeepAliveBatch:
		return nil, false, func() *kvpb.CommandResult { return s.keepAliveBatch(o.KeepAliveBatch) }
	case *kvpb.Command_CloseSession:
		return nil, false, func() *kvpb.CommandResult { return s.closeSession(o.CloseSession) }
	case *kvpb.Command_Acquire:
		return o.Acquire.GetHeader(), true, func() *kvpb.CommandResult { return s.acquire(o.Acquire) }
	case *kvpb.Command_Release:
		return o.Release.GetHeader(), true, func() *kvpb.CommandResult { return s.release(o.Release) }
	case *kvpb.Command_CancelWait:
		return o.CancelWait.GetHeader(), true, func() *kvpb.CommandResult { return s.cancelWait(o.CancelWait) }
	case *kvpb.Command_Proclaim:
		return o.Proclaim.GetHeader(), true, func() *kvpb.CommandResult { return s.proclaim(o.Proclaim) }
	case *kvpb.Command_Renew:
		return nil, false, func() *kvpb.CommandResult { return s.renew(o.Renew) }
	case *kvpb.Command_Break:
		return o.Break.GetHeader(), false, func() *kvpb.CommandResult { return s.breakLock(o.Break) }
	case *kvpb.Command_Fill:
		return o.Fill.GetHeader(), true, func() *kvpb.CommandResult { return s.fill(o.Fill) }
	case *kvpb.Command_Store:
		return o.Store.GetHeader(), true, func() *kvpb.CommandResult { return s.store(o.Store) }
	case *kvpb.Command_CacheSet:
		return o.CacheSet.GetHeader(), false, func() *kvpb.CommandResult { return s.cacheSet(o.CacheSet) }
	case *kvpb.Command_Invalidate:
		return o.Invalidate.GetHeader(), false, func() *kvpb.CommandResult { return s.invalidate(o.Invalidate) }
	case *kvpb.Command_Tick, *kvpb.Command_Recover:
		return nil, false, func() *kvpb.CommandResult { return &kvpb.CommandResult{} }
	case *kvpb.Command_SetMember:
		return nil, false, func() *kvpb.CommandResult { return s.setMember(o.SetMember) }
	case *kvpb.Command_RemoveMember:
		return nil, false, func() *kvpb.CommandResult {
			delete(s.members, o.RemoveMember.GetName())
			return &kvpb.CommandResult{}
		}
	case *kvpb.Command_AuthEnable:
		return o.AuthEnable.GetHeader(), false, func() *kvpb.CommandResult { return s.authEnable(o.AuthEnable) }
	case *kvpb.Command_AuthDisable:
		return o.AuthDisable.GetHeader(), false, func() *kvpb.CommandResult { return s.authDisable(o.AuthDisable) }
	case *kvpb.Command_UserAdd:
		return o.UserAdd.GetHeader(), false, func() *kvpb.CommandResult { return s.userAdd(o.UserAdd) }
	case *kvpb.Command_UserDelete:
		return o.UserDelete.GetHeader(), false, func() *kvpb.CommandResult { return s.userDelete(o.UserDelete) }
	case *kvpb.Command_UserChangePassword:
		return o.UserChangePassword.GetHeader(), false, func() *kvpb.CommandResult { return s.userChangePassword(o.UserChangePassword) }
	case *kvpb.Command_UserGrantRole:
		return o.UserGrantRole.GetHeader(), false, func() *kvpb.CommandResult { return s.userGrantRole(o.UserGrantRole) }
	case *kvpb.Command_UserRevokeRole:
		return o.UserRevokeRole.GetHeader(), false, func() *kvpb.CommandResult { return s.userRevokeRole(o.UserRevokeRole) }
	case *kvpb.Command_RoleAdd:
		return o.RoleAdd.GetHeader(), false, func() *kvpb.CommandResult { return s.roleAdd(o.RoleAdd) }
	case *kvpb.Command_RoleDelete:
		return o.RoleDelete.GetHeader(), false, func() *kvpb.CommandResult { return s.roleDelete(o.RoleDelete) }
	case *kvpb.Command_RoleGrantPermission:
		return o.RoleGrantPermission.GetHeader(), false, func() *kvpb.CommandResult { return s.roleGrantPermission(o.RoleGrantPermission) }
	case *kvpb.Command_RoleRevokePermission:
		return o.RoleRevokePermission.GetHeader(), false, func() *kvpb.CommandResult { return s.roleRevokePermission(o.RoleRevokePermission) }
	}
	return nil, false, nil
}

// finish makes sure the result carries the op's response message (empty for
// an error) and sets its ResponseHeader. The op's oneof field numbers in
// Command equal the response's in CommandResult.
func (s *state) finish(cmd *kvpb.Command, res *kvpb.CommandResult) *kvpb.CommandResult {
	m := res.ProtoReflect()
	fd := m.WhichOneof(resultOneof)
	if fd == nil && cmd != nil {
		if opFd := cmd.ProtoReflect().WhichOneof(commandOneof); opFd != nil {
			if rfd := resultDesc.Fields().ByNumber(opFd.Number()); rfd != nil {
				m.Set(rfd, m.NewField(rfd))
				fd = rfd
			}
		}
	}
	if fd != nil {
		resp := m.Mutable(fd).Message()
		if hf := resp.Descriptor().Fields().ByName("header"); hf != nil {
			h := &kvpb.ResponseHeader{AppliedIndex: s.index, LogTime: s.logTime}
			resp.Set(hf, protoreflect.ValueOfMessage(h.ProtoReflect()))
		}
	}
	return res
}

func fail(code kvpb.ErrorCode, format string, args ...any) *kvpb.CommandResult {
	return &kvpb.CommandResult{Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *kvpb.CommandResult {
	return fail(kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, format, args...)
}

// expire handles every deadline due at log time, in index order.
func (s *state) expire() {
	for {
		d, ok := s.deadlines.Min()
		if !ok {
			return
		}
		due := d.at <= s.logTime
		if !due && !(bug("ttl-off-by-one") && d.kind == dlKey) {
			return
		}
		s.deadlines.DeleteMin()
		s.handleDeadline(d)
		if !due {
			return
		}
	}
}

// handleDeadline applies one due deadline. It checks the object still has
// that deadline, so a stale index entry is harmless.
func (s *state) handleDeadline(d deadline) {
	if d.kind != dlLockGrant {
		defer s.because(causeExpired)()
	}
	switch d.kind {
	case dlKey:
		if it, ok := s.getKey(d.name); ok && it.expiresAt == d.at {
			s.delKey(d.name)
			s.keyDeleted(it)
		}
	case dlSession:
		if se := s.sessions[d.id]; se != nil && (se.expiresAt == d.at || bug("renewal-keeps-deadline")) {
			s.endSession(se, true)
		}
	case dlLockWaiter:
		if l, ok := s.getLock(d.name); ok {
			if i := waiterIndex(l.waiters, d.id); i >= 0 && l.waiters[i].waitUntil == d.at {
				l.waiters = slices.Delete(slices.Clone(l.waiters), i, i+1)
				s.putLock(l)
			}
		}
	case dlLockGrant:
		if l, ok := s.getLock(d.name); ok && l.token == 0 && l.delayUntil == d.at {
			s.grantNext(&l)
			s.putLock(l)
		}
	case dlLease:
		if c, ok := s.getCache(d.name); ok && c.lease.token != 0 && c.lease.expiresAt == d.at {
			s.counters.leasesExpired++
			c.lease = fillLease{}
			s.passLease(&c)
			s.putCache(c)
		}
	case dlCacheWaiter:
		if c, ok := s.getCache(d.name); ok {
			if i := cacheWaiterIndex(c.waiters, d.id); i >= 0 && c.waiters[i].waitUntil == d.at {
				c.waiters = slices.Delete(slices.Clone(c.waiters), i, i+1)
				s.putCache(c)
			}
		}
	case dlCache:
		if c, ok := s.getCache(d.name); ok && c.hasValue && c.removeAt() == d.at {
			dropValue(&c)
			s.putCache(c)
		}
	}
}

// recover moves every deadline in (prev, stamp] to stamp+grace (RecoverOp).
//
// Choice: cache values (dlCache) are not moved: a cache value is not a lease
// anyone renews, and serving it longer than its TTL would be wrong; losing it
// only costs a recomputation.
func (s *state) recover(prev, stamp, grace int64) {
	if stamp <= prev {
		return
	}
	var due []deadline
	s.deadlines.AscendRange(deadline{at: prev + 1}, deadline{at: stamp + 1}, func(d deadline) bool {
		if d.kind != dlCache {
			due = append(due, d)
		}
		return true
	})
	to := stamp + grace
	for _, d := range due {
		switch d.kind {
		case dlKey:
			if it, ok := s.getKey(d.name); ok && it.expiresAt == d.at {
				it.expiresAt = to
				s.putKey(it)
			}
		case dlSession:
			if se := s.sessions[d.id]; se != nil && se.expiresAt == d.at {
				s.setSessionExpiry(se, to)
			}
		case dlLockWaiter:
			if l, ok := s.getLock(d.name); ok {
				if i := waiterIndex(l.waiters, d.id); i >= 0 && l.waiters[i].waitUntil == d.at {
					l.waiters = slices.Clone(l.waiters)
					l.waiters[i].waitUntil = to
					s.putLock(l)
				}
			}
		case dlLockGrant:
			if l, ok := s.getLock(d.name); ok && l.delayUntil == d.at {
				l.delayUntil = to
				s.putLock(l)
			}
		case dlLease:
			if c, ok := s.getCache(d.name); ok && c.lease.token != 0 && c.lease.expiresAt == d.at {
				c.lease.expiresAt = to
				s.putCache(c)
			}
		case dlCacheWaiter:
			if c, ok := s.getCache(d.name); ok {
				if i := cacheWaiterIndex(c.waiters, d.id); i >= 0 && c.waiters[i].waitUntil == d.at {
					c.waiters = slices.Clone(c.waiters)
					c.waiters[i].waitUntil = to
					s.putCache(c)
				}
			}
		}
	}
}
