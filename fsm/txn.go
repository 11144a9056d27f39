package fsm

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// A transaction runs in three steps, all in its one entry:
//
//  1. judge: every compare against the state as it is (after the entry's
//     expiries), which picks the branch;
//  2. check: every op of the branch against the state as the branch's
//     earlier ops would leave it (txnView), without changing anything. The
//     first op that would fail refuses the whole transaction with its code,
//     and a message that names it ("success[2].put.if_absent: ...");
//  3. apply: the ops in order, each through the same code a lone Put,
//     Delete or Get uses (so each makes the events it would make alone).
//     Nothing in this step can fail: everything that could was checked.
//
// A refused transaction changes nothing and emits no event.

// txn applies a TxnRequest.
func (s *state) txn(req *kvpb.TxnRequest) *kvpb.CommandResult {
	held := true
	for i, c := range req.Compares {
		ok, r := s.judge(c)
		if r != nil {
			r.Message = fmt.Sprintf("compares[%d].%s", i, r.Message)
			return r
		}
		held = held && ok
	}
	ops, branch := req.Success, "success"
	if !held {
		ops, branch = req.Failure, "failure"
	}
	v := txnView{s: s, over: map[string]*kvItem{}}
	for i, op := range ops {
		if r := v.check(op); r != nil {
			r.Message = fmt.Sprintf("%s[%d].%s", branch, i, r.Message)
			return r
		}
	}
	if bug("txn-partial") && len(ops) > 1 {
		results := make([]*kvpb.TxnOpResult, len(ops))
		results[0] = s.applyTxnOp(ops[0])
		for i, op := range ops[1:] {
			results[i+1] = emptyTxnResult(op) // answered as done, never applied
		}
		return txnResult(held, results)
	}
	results := make([]*kvpb.TxnOpResult, len(ops))
	for i, op := range ops {
		results[i] = s.applyTxnOp(op)
	}
	return txnResult(held, results)
}

func txnResult(held bool, results []*kvpb.TxnOpResult) *kvpb.CommandResult {
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Txn{Txn: &kvpb.TxnResponse{Succeeded: held, Results: results}}}
}

// judge decides one compare against the current state. A compare of an
// absent key sees version, create and mod index 0 and an empty value.
func (s *state) judge(c *kvpb.Compare) (bool, *kvpb.CommandResult) {
	if len(c.Key) == 0 {
		return false, invalid("key: must not be empty")
	}
	if _, ok := kvpb.CompareOp_name[int32(c.Op)]; !ok {
		return false, invalid("op: unknown compare op %d", c.Op)
	}
	it, exists := s.getKey(string(c.Key))
	var n uint64
	switch c.Target {
	case kvpb.CompareTarget_COMPARE_TARGET_EXISTS:
		switch c.Op {
		case kvpb.CompareOp_COMPARE_OP_EQUAL:
			return exists == c.Exists, nil
		case kvpb.CompareOp_COMPARE_OP_NOT_EQUAL:
			return exists != c.Exists, nil
		}
		return false, invalid("op: EXISTS compares with EQUAL or NOT_EQUAL only, got %v", c.Op)
	case kvpb.CompareTarget_COMPARE_TARGET_VALUE:
		return compareResult(bytes.Compare(it.value, c.Value), c.Op), nil
	case kvpb.CompareTarget_COMPARE_TARGET_VERSION:
		n = it.version
	case kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX:
		n = it.createIdx
	case kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX:
		n = it.modIdx
	case kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN:
		n = s.currentToken(string(c.Key))
	default:
		return false, invalid("target: unknown compare target %d", c.Target)
	}
	switch {
	case n < c.Number:
		return compareResult(-1, c.Op), nil
	case n > c.Number:
		return compareResult(1, c.Op), nil
	}
	return compareResult(0, c.Op), nil
}

// compareResult applies op to the outcome of a three-way comparison of
// the state's side with the compare's.
func compareResult(cmp int, op kvpb.CompareOp) bool {
	switch op {
	case kvpb.CompareOp_COMPARE_OP_EQUAL:
		return cmp == 0
	case kvpb.CompareOp_COMPARE_OP_NOT_EQUAL:
		return cmp != 0
	case kvpb.CompareOp_COMPARE_OP_LESS:
		return cmp < 0
	case kvpb.CompareOp_COMPARE_OP_GREATER:
		return cmp > 0
	}
	return false
}

// currentToken is the lock's token while its holder's session is live, else 0.
func (s *state) currentToken(name string) uint64 {
	if l, ok := s.getLock(name); ok && l.token != 0 && s.liveSession(l.session) != nil {
		return l.token
	}
	return 0
}

// txnView is the keys as a branch's ops checked so far would leave them:
// over holds the keys they wrote (nil: deleted), deleted the prefixes
// they deleted (a key written after such a delete is in over). It never
// changes the state.
type txnView struct {
	s       *state
	over    map[string]*kvItem
	deleted []string
}

func (v *txnView) lookup(key string) (kvItem, bool) {
	if it, ok := v.over[key]; ok {
		if it == nil {
			return kvItem{}, false
		}
		return *it, true
	}
	for _, p := range v.deleted {
		if strings.HasPrefix(key, p) {
			return kvItem{}, false
		}
	}
	return v.s.getKey(key)
}

// check refuses an op that would fail, and otherwise notes in the view
// what it would change. The message it returns starts with the op's name.
func (v *txnView) check(op *kvpb.TxnOp) *kvpb.CommandResult {
	prefixed := func(name string, r *kvpb.CommandResult) *kvpb.CommandResult {
		if r != nil {
			r.Message = name + "." + r.Message
		}
		return r
	}
	switch o := op.GetOp().(type) {
	case *kvpb.TxnOp_Put:
		return prefixed("put", v.checkPut(o.Put))
	case *kvpb.TxnOp_Delete:
		return prefixed("delete", v.checkDelete(o.Delete))
	case *kvpb.TxnOp_Get:
		g := o.Get
		switch {
		case len(g.Key) == 0:
			return invalid("get.key: must not be empty")
		case g.Consistency != kvpb.Consistency_CONSISTENCY_LINEARIZABLE:
			return invalid("get.consistency: must be unset in a transaction (its reads happen in its entry)")
		}
		return nil
	}
	return invalid("op: none set (put, delete or get)")
}

func (v *txnView) checkPut(p *kvpb.PutRequest) *kvpb.CommandResult {
	switch {
	case len(p.Key) == 0:
		return invalid("key: must not be empty")
	case p.TtlMs < 0:
		return invalid("ttl_ms: must not be negative, got %d", p.TtlMs)
	}
	if r := unsetInTxn(p.Header, p.ExpectedVersion, p.Fence); r != nil {
		return r
	}
	key := string(p.Key)
	old, exists := v.lookup(key)
	old.key = key
	if r := v.s.checkPutBinding(p, old, exists); r != nil {
		return r
	}
	v.over[key] = &kvItem{key: key, session: p.Session}
	return nil
}

func (v *txnView) checkDelete(d *kvpb.DeleteRequest) *kvpb.CommandResult {
	switch {
	case len(d.Key) == 0 && !d.Prefix:
		return invalid("key: must not be empty")
	}
	if r := unsetInTxn(d.Header, d.ExpectedVersion, d.Fence); r != nil {
		return r
	}
	key := string(d.Key)
	if !d.Prefix {
		v.over[key] = nil
		return nil
	}
	for k := range v.over { // only sets entries: the order does not matter
		if strings.HasPrefix(k, key) {
			v.over[k] = nil
		}
	}
	v.deleted = append(v.deleted, key)
	return nil
}

// unsetInTxn refuses the fields an op of a transaction must leave unset:
// its conditions are the compares, and it is exactly-once as a whole.
func unsetInTxn(h *kvpb.RequestHeader, expectedVersion *uint64, f *kvpb.Fence) *kvpb.CommandResult {
	switch {
	case h != nil:
		return invalid("header: must be unset in a transaction (the transaction's header counts)")
	case expectedVersion != nil:
		return invalid("expected_version: must be unset in a transaction (use a compare)")
	case f != nil:
		return invalid("fence: must be unset in a transaction (use a LOCK_TOKEN compare)")
	}
	return nil
}

// applyTxnOp applies one checked op as a lone request would.
func (s *state) applyTxnOp(op *kvpb.TxnOp) *kvpb.TxnOpResult {
	switch o := op.GetOp().(type) {
	case *kvpb.TxnOp_Put:
		key := string(o.Put.Key)
		old, exists := s.getKey(key)
		it := s.write(key, old, exists, o.Put.Value, s.ttlDeadline(o.Put.TtlMs), o.Put.Session)
		return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Put{Put: &kvpb.PutResponse{Kv: it.proto(false)}}}
	case *kvpb.TxnOp_Delete:
		var n uint64
		if o.Delete.Prefix {
			n = s.deletePrefix(string(o.Delete.Key))
		} else {
			n = s.deleteKey(string(o.Delete.Key))
		}
		return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Delete{Delete: &kvpb.DeleteResponse{Deleted: n}}}
	case *kvpb.TxnOp_Get:
		resp := &kvpb.GetResponse{}
		if it, ok := s.getKey(string(o.Get.Key)); ok {
			resp.Kv = it.proto(false)
		}
		return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Get{Get: resp}}
	}
	return &kvpb.TxnOpResult{} // not reached: check refused it
}

// emptyTxnResult is an op's result with nothing in it (the txn-partial bug).
func emptyTxnResult(op *kvpb.TxnOp) *kvpb.TxnOpResult {
	switch op.GetOp().(type) {
	case *kvpb.TxnOp_Put:
		return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Put{Put: &kvpb.PutResponse{}}}
	case *kvpb.TxnOp_Delete:
		return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Delete{Delete: &kvpb.DeleteResponse{}}}
	}
	return &kvpb.TxnOpResult{Result: &kvpb.TxnOpResult_Get{Get: &kvpb.GetResponse{}}}
}
