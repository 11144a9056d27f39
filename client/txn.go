package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// CmpTarget is what a compare reads of a key: its Version, Value,
// CreateIndex, ModIndex, whether it Exists, or (for a lock or election
// name) its LockToken. Compare turns it into a condition.
type CmpTarget struct {
	key    []byte
	target kvpb.CompareTarget
}

// Version is the key's version: writes since it was created, from 1 (a
// missing key: 0).
func Version(key []byte) CmpTarget { return CmpTarget{key, kvpb.CompareTarget_COMPARE_TARGET_VERSION} }

// Value is the key's value (a missing key: empty). < and > compare bytes.
func Value(key []byte) CmpTarget { return CmpTarget{key, kvpb.CompareTarget_COMPARE_TARGET_VALUE} }

// CreateIndex is the Raft index of the entry that created the key (a
// missing key: 0).
func CreateIndex(key []byte) CmpTarget {
	return CmpTarget{key, kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX}
}

// ModIndex is the Raft index of the entry that last wrote the key (a
// missing key: 0).
func ModIndex(key []byte) CmpTarget {
	return CmpTarget{key, kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX}
}

// Exists is whether the key exists; compare it with "=" or "!=" to a bool.
func Exists(key []byte) CmpTarget { return CmpTarget{key, kvpb.CompareTarget_COMPARE_TARGET_EXISTS} }

// LockToken is the fencing token of the current grant of lock (or
// election) name, 0 while it is free: a transaction that compares it
// "=" to a token applies only while that token holds the lock.
func LockToken(name []byte) CmpTarget {
	return CmpTarget{name, kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN}
}

// Cmp is one condition of a transaction, made by Compare.
type Cmp struct {
	pb  *kvpb.Compare
	err error
}

// Err says what is wrong with a Cmp that Compare could not make (nil for
// a good one): the error Commit would return, without the compare's
// position.
func (c Cmp) Err() error { return c.err }

// compareOps are the operators Compare takes.
var compareOps = map[string]kvpb.CompareOp{
	"=":  kvpb.CompareOp_COMPARE_OP_EQUAL,
	"==": kvpb.CompareOp_COMPARE_OP_EQUAL,
	"!=": kvpb.CompareOp_COMPARE_OP_NOT_EQUAL,
	"<":  kvpb.CompareOp_COMPARE_OP_LESS,
	">":  kvpb.CompareOp_COMPARE_OP_GREATER,
}

// Compare makes the condition "target op v", for example
// Compare(Version(k), "=", 3) or Compare(Value(k), "!=", "off"). op is
// "=" (or "=="), "!=", "<" or ">". v is:
//
//   - for Version, CreateIndex, ModIndex and LockToken: a non-negative
//     integer of any Go integer type;
//   - for Value: a []byte or a string;
//   - for Exists: a bool, with op "=" or "!=" only.
//
// A Cmp that breaks these rules makes Commit fail with ErrInvalidArgument
// before anything is sent.
func Compare(t CmpTarget, op string, v any) Cmp {
	c := &kvpb.Compare{Key: t.key, Target: t.target}
	o, ok := compareOps[op]
	if !ok {
		return Cmp{err: fmt.Errorf("operator %q: want =, !=, < or >", op)}
	}
	c.Op = o
	switch t.target {
	case kvpb.CompareTarget_COMPARE_TARGET_VALUE:
		switch v := v.(type) {
		case []byte:
			c.Value = v
		case string:
			c.Value = []byte(v)
		default:
			return Cmp{err: fmt.Errorf("value: want a []byte or a string, got %T", v)}
		}
	case kvpb.CompareTarget_COMPARE_TARGET_EXISTS:
		b, ok := v.(bool)
		if !ok {
			return Cmp{err: fmt.Errorf("exists: want a bool, got %T", v)}
		}
		if o != kvpb.CompareOp_COMPARE_OP_EQUAL && o != kvpb.CompareOp_COMPARE_OP_NOT_EQUAL {
			return Cmp{err: fmt.Errorf("exists: operator %q: want = or !=", op)}
		}
		c.Exists = b
	default:
		n, err := compareNumber(v)
		if err != nil {
			return Cmp{err: fmt.Errorf("%s: %w", targetName(t.target), err)}
		}
		c.Number = n
	}
	return Cmp{pb: c}
}

// compareNumber converts v, any Go integer, to the uint64 of a numeric
// compare.
func compareNumber(v any) (uint64, error) {
	var n int64
	switch v := v.(type) {
	case uint64:
		return v, nil
	case uint:
		return uint64(v), nil
	case uint32:
		return uint64(v), nil
	case uint16:
		return uint64(v), nil
	case uint8:
		return uint64(v), nil
	case int:
		n = int64(v)
	case int64:
		n = v
	case int32:
		n = int64(v)
	case int16:
		n = int64(v)
	case int8:
		n = int64(v)
	default:
		return 0, fmt.Errorf("want an integer, got %T", v)
	}
	if n < 0 {
		return 0, fmt.Errorf("%d is negative", n)
	}
	return uint64(n), nil
}

// targetName is how errors name a compare target.
func targetName(t kvpb.CompareTarget) string {
	switch t {
	case kvpb.CompareTarget_COMPARE_TARGET_VERSION:
		return "version"
	case kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX:
		return "create index"
	case kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX:
		return "mod index"
	case kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN:
		return "lock token"
	}
	return t.String()
}

// Op is one operation of a transaction's branch, made by OpPut, OpDelete,
// OpDeletePrefix or OpGet.
type Op struct {
	pb  *kvpb.TxnOp
	err error
}

// Err says what is wrong with an Op its constructor could not make (nil
// for a good one).
func (op Op) Err() error { return op.err }

// OpPut writes key = value. Options: WithTTL, WithSession and WithIfAbsent,
// as for Put. WithExpectedVersion and WithFence have no place in a
// transaction (its compares are its conditions: Version, LockToken), and
// make Commit fail with ErrInvalidArgument.
func OpPut(key, value []byte, opts ...OpOption) Op {
	o := applyOpts(opts)
	switch {
	case o.expectedVersion != nil:
		return Op{err: fmt.Errorf("put %q: WithExpectedVersion: use a Compare on Version instead", key)}
	case o.fence != nil:
		return Op{err: fmt.Errorf("put %q: WithFence: use a Compare on LockToken instead", key)}
	}
	return Op{pb: &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: putRequest(key, value, o)}}}
}

// OpDelete removes key; its result's Deleted is 1, or 0 when the key did
// not exist.
func OpDelete(key []byte) Op {
	return Op{pb: &kvpb.TxnOp{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: key}}}}
}

// OpDeletePrefix removes every key that starts with prefix; its result's
// Deleted is how many.
func OpDeletePrefix(prefix []byte) Op {
	return Op{pb: &kvpb.TxnOp{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: prefix, Prefix: true}}}}
}

// OpGet reads key inside the transaction, seeing the writes of the ops
// before it; its result's Kv is unset when the key does not exist.
func OpGet(key []byte) Op {
	return Op{pb: &kvpb.TxnOp{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: key}}}}
}

// Txn is a transaction being built: If the compares all hold, Then ops
// run, Else the Else ops, all in one log entry, and Commit sends it. Make
// one with Client.Txn (exactly-once under the client's own session) or
// Session.Txn. If, Then and Else each add to what earlier calls gave; the
// order of the calls does not matter. A Txn is not safe for concurrent
// building, but Commit may be called again (it is then a new command).
//
//	resp, err := c.Txn().
//		If(client.Compare(client.Value(k), "=", "idle")).
//		Then(client.OpPut(k, []byte("busy"))).
//		Else(client.OpGet(k)).
//		Commit(ctx)
type Txn struct {
	c        *Client
	s        *Session // nil: the client's own session
	compares []Cmp
	success  []Op
	failure  []Op
}

// Txn starts a transaction that runs exactly-once under the client's own
// session.
func (c *Client) Txn() *Txn { return &Txn{c: c} }

// Txn starts a transaction that runs exactly-once under this session.
func (s *Session) Txn() *Txn { return &Txn{c: s.c, s: s} }

// If adds compares: the success ops run only when every compare holds (no
// compare at all: always).
func (t *Txn) If(cs ...Cmp) *Txn {
	t.compares = append(t.compares, cs...)
	return t
}

// Then adds ops to the success branch.
func (t *Txn) Then(ops ...Op) *Txn {
	t.success = append(t.success, ops...)
	return t
}

// Else adds ops to the failure branch.
func (t *Txn) Else(ops ...Op) *Txn {
	t.failure = append(t.failure, ops...)
	return t
}

// Request returns the TxnRequest that Commit would send (without its
// header), or the ErrInvalidArgument that Commit would return for a
// compare or op that was made wrong.
func (t *Txn) Request() (*kvpb.TxnRequest, error) {
	req := &kvpb.TxnRequest{}
	for i, c := range t.compares {
		if c.err != nil || c.pb == nil {
			return nil, txnArgError(fmt.Sprintf("compares[%d]", i), c.err)
		}
		req.Compares = append(req.Compares, c.pb)
	}
	branch := func(name string, ops []Op) ([]*kvpb.TxnOp, error) {
		out := make([]*kvpb.TxnOp, 0, len(ops))
		for i, op := range ops {
			if op.err != nil || op.pb == nil {
				return nil, txnArgError(fmt.Sprintf("%s[%d]", name, i), op.err)
			}
			out = append(out, op.pb)
		}
		return out, nil
	}
	var err error
	if req.Success, err = branch("success", t.success); err != nil {
		return nil, err
	}
	if req.Failure, err = branch("failure", t.failure); err != nil {
		return nil, err
	}
	return req, nil
}

// txnArgError is the ErrInvalidArgument of a compare or op that was made
// wrong (err nil: a zero Cmp or Op, not made by its constructors).
func txnArgError(field string, err error) error {
	msg := "not made by Compare or an Op constructor"
	if err != nil {
		msg = err.Error()
	}
	return &Error{Code: kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf("kvd: txn %s: %s", field, msg), Field: field}
}

// Commit sends the transaction and waits for its answer. It is one
// command, exactly-once like Put: retried across leader changes until ctx
// ends and applied at most once, a retry getting the first answer.
//
// Succeeded in the answer says which branch ran; Results has one entry
// per op of that branch, in order (Put, Delete or Get). The failure branch
// running is not an error. A get in a retried transaction whose key has
// changed since the first answer has ValueUnavailable set: its metadata is
// the first answer's, its value is no longer known.
//
// Errors: ErrInvalidArgument (a compare or op made wrong, or a limit such
// as --max-txn-ops or a key written twice in one branch: nothing was
// proposed), ErrKeyExists (an OpPut WithIfAbsent of a key that exists, in
// the branch that ran: nothing of the branch was applied),
// ErrSessionExpired (an OpPut WithSession of a session that is gone),
// ErrIndeterminate (may have been applied), ErrUnavailable (was not).
func (t *Txn) Commit(ctx context.Context) (*kvpb.TxnResponse, error) {
	if t.c == nil {
		return nil, errors.New("kvd: Txn.Commit: the Txn was not made by Client.Txn or Session.Txn")
	}
	req, err := t.Request()
	if err != nil {
		return nil, err
	}
	if t.s != nil {
		if err := t.s.checkOpen(); err != nil {
			return nil, err
		}
	}
	binds := false
	for _, ops := range [][]*kvpb.TxnOp{req.Success, req.Failure} {
		for _, op := range ops {
			binds = binds || op.GetPut().GetSession() != 0
		}
	}
	return writeCmd(ctx, t.c, t.s, 0, binds, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.TxnResponse, error) {
		req.Header = h
		return kvpb.NewKVClient(cc).Txn(ctx, req, opts...)
	})
}
