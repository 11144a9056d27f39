package api

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Validation runs before anything is proposed. Every violation is an
// InvalidArgument naming the field and the limit (and the flag that sets it).

func (n *Server) checkKey(field string, key []byte) error {
	max := n.limits.MaxKeyBytes
	if len(key) == 0 {
		return invalid(field, int64(max), "%s: must not be empty", field)
	}
	return n.checkKeyLen(field, key)
}

// checkKeyLen allows an empty key (prefixes, continuations).
func (n *Server) checkKeyLen(field string, key []byte) error {
	max := n.limits.MaxKeyBytes
	if len(key) > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-key-bytes)", field, len(key), max)
	}
	return nil
}

func (n *Server) checkValue(field string, v []byte) error {
	max := n.limits.MaxValueBytes
	if len(v) > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-value-bytes)", field, len(v), max)
	}
	return nil
}

func (n *Server) checkName(field string, name []byte) error {
	max := n.limits.MaxNameBytes
	if len(name) == 0 {
		return invalid(field, int64(max), "%s: must not be empty", field)
	}
	return n.checkNameLen(field, len(name))
}

func (n *Server) checkNameLen(field string, l int) error {
	max := n.limits.MaxNameBytes
	if l > max {
		return invalid(field, int64(max), "%s: %d bytes exceeds the limit of %d (--max-name-bytes)", field, l, max)
	}
	return nil
}

// checkTTL accepts 0 (no TTL) unless required, else [MinTTL, MaxTTL].
func (n *Server) checkTTL(field string, ms int64, required bool) error {
	min, max := n.limits.MinTTL.Milliseconds(), n.limits.MaxTTL.Milliseconds()
	switch {
	case ms == 0 && !required:
		return nil
	case ms <= 0 && required:
		return invalid(field, min, "%s: required, at least %d (--min-ttl %v)", field, min, n.limits.MinTTL)
	case ms < 0:
		return invalid(field, 0, "%s: %d must not be negative", field, ms)
	case ms < min:
		return invalid(field, min, "%s: %d is below the minimum of %d (--min-ttl %v)", field, ms, min, n.limits.MinTTL)
	case ms > max:
		return invalid(field, max, "%s: %d exceeds the limit of %d (--max-ttl %v)", field, ms, max, n.limits.MaxTTL)
	}
	return nil
}

// checkDuration accepts [0, MaxTTL] milliseconds (waits, leases, windows).
func (n *Server) checkDuration(field string, ms int64) error {
	max := n.limits.MaxTTL.Milliseconds()
	if ms < 0 {
		return invalid(field, 0, "%s: %d must not be negative", field, ms)
	}
	if ms > max {
		return invalid(field, max, "%s: %d exceeds the limit of %d (--max-ttl %v)", field, ms, max, n.limits.MaxTTL)
	}
	return nil
}

func (n *Server) checkFence(f *kvpb.Fence) error {
	if f == nil {
		return nil
	}
	if err := n.checkName("fence.lock", f.GetLock()); err != nil {
		return err
	}
	if f.GetToken() == 0 {
		return invalid("fence.token", 0, "fence.token: must not be 0")
	}
	return nil
}

func (n *Server) checkSession(field string, h *kvpb.RequestHeader) error {
	if h.GetSession() == 0 {
		return invalid(field, 0, "%s: a session is required", field)
	}
	return nil
}

func (n *Server) checkHeader(h *kvpb.RequestHeader) error {
	switch {
	case h.GetSeq() != 0 && h.GetSession() == 0:
		return invalid("header.seq", 0, "header.seq: set without header.session")
	case h.GetMinPendingSeq() > h.GetSeq():
		// The lowest seq the client still waits for, which includes this one.
		return invalid("header.min_pending_seq", int64(min(h.GetSeq(), math.MaxInt64)),
			"header.min_pending_seq: %d is above header.seq %d (it is the lowest seq still in flight, so at most seq)",
			h.GetMinPendingSeq(), h.GetSeq())
	}
	return nil
}

// checkSessionLive refuses a session this member knows has ended (closed
// or expired: ids are never reused) here rather than after a trip through
// the log; one it has not heard of yet goes on to the log, which decides.
// It runs after validation and authorization, just before proposing.
func (n *Server) checkSessionLive(id uint64) error {
	if id != 0 && n.b.FSM().SessionEnded(id) {
		return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, Msg: fmt.Sprintf("session %d is unknown or expired", id)}
	}
	return nil
}

// checkLockDelay accepts [0, MaxLockDelay] milliseconds: longer is refused,
// never shortened (a lock-delay is a promise to the lock's next holders).
func (n *Server) checkLockDelay(ms int64) error {
	max := n.limits.MaxLockDelay.Milliseconds()
	switch {
	case ms < 0:
		return invalid("lock_delay_ms", 0, "lock_delay_ms: %d must not be negative", ms)
	case ms > max:
		return invalid("lock_delay_ms", max, "lock_delay_ms: %d exceeds the maximum of %d (--max-lock-delay %v)", ms, max, n.limits.MaxLockDelay)
	}
	return nil
}

// limitExceeded is a cluster-wide cap reached (ResourceExhausted).
func limitExceeded(field string, limit int, format string, args ...any) error {
	return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED, Field: field, Limit: int64(limit), Msg: fmt.Sprintf(format, args...)}
}

// checkSessionCap refuses a new session when this member already holds
// the cluster's maximum (the log decides too: a member's view may lag).
func (n *Server) checkSessionCap() error {
	if max, have := n.limits.MaxSessions, n.b.FSM().SessionCount(); have >= max {
		return limitExceeded("max_sessions", max,
			"sessions: %d live sessions, the cluster's limit (--max-sessions %d); close or let some expire", have, max)
	}
	return nil
}

// checkLockCap refuses an acquire that would make one lock too many.
func (n *Server) checkLockCap(name []byte) error {
	if max, have := n.limits.MaxLocks, n.b.FSM().LockCount(); have >= max && !n.b.FSM().HasLock(name) {
		return limitExceeded("max_locks", max,
			"locks: %d locks are held, waited for or in their lock-delay, the cluster's limit (--max-locks %d)", have, max)
	}
	return nil
}

// Worst-case answer sizes reserved against a connection's unread budget
// (reserveAnswer) by the reads whose answers can be large.
func (n *Server) valueAnswerBytes() int {
	return n.limits.MaxKeyBytes + n.limits.MaxValueBytes + fsm.ItemOverhead + 256
}

func (n *Server) listAnswerBytes() int { return n.limits.MaxResponseBytes + 256 }

// cacheAnswerBytes leaves room for an entry's list of waiting sessions.
func (n *Server) cacheAnswerBytes() int { return n.valueAnswerBytes() + 64<<10 }

func (n *Server) listLimit(field string, limit uint32) (int, error) {
	max := n.limits.MaxListLimit
	if int64(limit) > int64(max) {
		return 0, invalid(field, int64(max), "%s: %d exceeds the limit of %d (--max-list-limit)", field, limit, max)
	}
	if limit == 0 {
		return n.limits.DefaultListLimit, nil
	}
	return int(limit), nil
}

func msDuration(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

// checkDeleteKey checks a delete's key (or, with prefix, its prefix: ""
// deletes every key); path is "" or the op's place in a transaction
// ("success[1].delete.").
func (n *Server) checkDeleteKey(path string, req *kvpb.DeleteRequest) error {
	if !req.GetPrefix() {
		return n.checkKey(path+"key", req.GetKey())
	}
	if req.ExpectedVersion != nil {
		return invalid(path+"expected_version", 0, "%sexpected_version: must be unset with prefix (a prefix names many keys)", path)
	}
	return n.checkKeyLen(path+"key", req.GetKey())
}

// checkTxn validates a transaction before it is proposed: counts within
// --max-txn-ops, every compare and op well formed and within the key and
// value limits, no field set in an op that only a lone request has, and
// no key written twice in one branch.
func (n *Server) checkTxn(req *kvpb.TxnRequest) error {
	max := n.limits.MaxTxnOps
	for _, c := range []struct {
		field string
		n     int
	}{{"compares", len(req.GetCompares())}, {"success", len(req.GetSuccess())}, {"failure", len(req.GetFailure())}} {
		if c.n > max {
			return invalid(c.field, int64(max), "%s: %d exceeds the limit of %d per transaction (--max-txn-ops)", c.field, c.n, max)
		}
	}
	for i, c := range req.GetCompares() {
		if err := n.checkCompare(fmt.Sprintf("compares[%d].", i), c); err != nil {
			return err
		}
	}
	if err := n.checkBranch("success", req.GetSuccess()); err != nil {
		return err
	}
	return n.checkBranch("failure", req.GetFailure())
}

func (n *Server) checkCompare(path string, c *kvpb.Compare) error {
	if _, ok := kvpb.CompareTarget_name[int32(c.GetTarget())]; !ok {
		return invalid(path+"target", 0, "%starget: unknown compare target %d", path, c.GetTarget())
	}
	if _, ok := kvpb.CompareOp_name[int32(c.GetOp())]; !ok {
		return invalid(path+"op", 0, "%sop: unknown compare op %d", path, c.GetOp())
	}
	switch c.GetTarget() {
	case kvpb.CompareTarget_COMPARE_TARGET_EXISTS:
		if op := c.GetOp(); op != kvpb.CompareOp_COMPARE_OP_EQUAL && op != kvpb.CompareOp_COMPARE_OP_NOT_EQUAL {
			return invalid(path+"op", 0, "%sop: EXISTS compares with EQUAL or NOT_EQUAL only, got %v", path, op)
		}
	case kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN:
		return n.checkName(path+"key", c.GetKey())
	case kvpb.CompareTarget_COMPARE_TARGET_VALUE:
		if err := n.checkValue(path+"value", c.GetValue()); err != nil {
			return err
		}
	}
	return n.checkKey(path+"key", c.GetKey())
}

// txnWrite is a key (or, prefix, every key under it) an op of a branch writes.
type txnWrite struct {
	key    string
	prefix bool
	op     string // "success[2]"
}

// overlaps reports whether a and b write a common key.
func (a txnWrite) overlaps(b txnWrite) bool {
	switch {
	case a.prefix && b.prefix:
		return strings.HasPrefix(a.key, b.key) || strings.HasPrefix(b.key, a.key)
	case a.prefix:
		return strings.HasPrefix(b.key, a.key)
	case b.prefix:
		return strings.HasPrefix(a.key, b.key)
	}
	return a.key == b.key
}

// checkBranch checks a branch's ops in order, and that no two of them
// write the same key (two puts, a put and a delete, or either under a
// delete-prefix): the result of a branch then does not hang on the order
// of its writes, and every write's watch event is its key's only one.
func (n *Server) checkBranch(branch string, ops []*kvpb.TxnOp) error {
	var writes []txnWrite
	for i, op := range ops {
		at := fmt.Sprintf("%s[%d]", branch, i)
		var w txnWrite
		var field string
		switch o := op.GetOp().(type) {
		case *kvpb.TxnOp_Put:
			p := o.Put
			path := at + ".put."
			if err := firstErr(
				unsetInTxnOp(path, p.GetHeader(), p.ExpectedVersion != nil, p.GetFence()),
				n.checkKey(path+"key", p.GetKey()),
				n.checkValue(path+"value", p.GetValue()),
				n.checkTTL(path+"ttl_ms", p.GetTtlMs(), false),
			); err != nil {
				return err
			}
			w, field = txnWrite{key: string(p.GetKey()), op: at}, path+"key"
		case *kvpb.TxnOp_Delete:
			d := o.Delete
			path := at + ".delete."
			if err := firstErr(
				unsetInTxnOp(path, d.GetHeader(), d.ExpectedVersion != nil, d.GetFence()),
				n.checkDeleteKey(path, d),
			); err != nil {
				return err
			}
			w, field = txnWrite{key: string(d.GetKey()), prefix: d.GetPrefix(), op: at}, path+"key"
		case *kvpb.TxnOp_Get:
			g := o.Get
			path := at + ".get."
			if g.GetConsistency() != kvpb.Consistency_CONSISTENCY_LINEARIZABLE {
				return invalid(path+"consistency", 0, "%sconsistency: must be unset in a transaction (its reads happen in its entry)", path)
			}
			if err := n.checkKey(path+"key", g.GetKey()); err != nil {
				return err
			}
			continue
		default:
			return invalid(at, 0, "%s: no op set (put, delete or get)", at)
		}
		for _, prev := range writes {
			if w.overlaps(prev) {
				return invalid(field, 0, "%s: %q is also written by %s of the same branch; a transaction writes a key at most once per branch", field, w.key, prev.op)
			}
		}
		writes = append(writes, w)
	}
	return nil
}

// unsetInTxnOp refuses the fields of an op that only a lone request may
// set: a transaction's conditions are its compares (a fence is a
// LOCK_TOKEN compare, expected_version a VERSION compare), and it is
// exactly-once as a whole, under its own header.
func unsetInTxnOp(path string, h *kvpb.RequestHeader, expectedVersion bool, f *kvpb.Fence) error {
	switch {
	case h != nil:
		return invalid(path+"header", 0, "%sheader: must be unset in a transaction (the transaction's header counts)", path)
	case expectedVersion:
		return invalid(path+"expected_version", 0, "%sexpected_version: must be unset in a transaction (use a VERSION compare)", path)
	case f != nil:
		return invalid(path+"fence", 0, "%sfence: must be unset in a transaction (use a LOCK_TOKEN compare)", path)
	}
	return nil
}
