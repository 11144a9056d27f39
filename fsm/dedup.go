package fsm

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Exactly-once results are remembered per (session, seq) with a digest of
// the command's body. What is remembered is metadata only (indexes,
// versions, tokens, counts, states): keys and values are left out and put
// back from the retried command, which the digest proves is the same, or
// from the current state when it still holds the same value. A result that
// cannot be rebuilt that way is either re-run (a fill whose first run
// changed nothing) or answered without its value (documented per op below).

// digestFields are left out of a body digest: the request header
// (min_pending_seq legitimately changes between retries of one command) and
// what the receiving server fills in anew on every attempt (AuthEnable's
// random token key; a password hashed with a random salt).
var digestFields = []protoreflect.Name{"header", "token_key", "password_hash"}

// bodyDigest is a digest of cmd's op that is the same on every replica and
// for every retry of one command: the first 8 bytes of sha256 over the op's
// field number and its deterministic encoding without digestFields. It is
// never 0 (0 stands for "not known": results restored from a snapshot
// written before digests existed).
func bodyDigest(cmd *kvpb.Command) uint64 {
	if d, ok := headerOnlyDigest(cmd); ok {
		return d
	}
	return reflectDigest(cmd)
}

// headerOnlyDigest is bodyDigest without reflection for the ops applied
// most (every write of a session carries a seq, so each is digested on
// every member), whose only digestFields field is the header. The field
// numbers are Command's; TestHeaderOnlyDigestMatches holds it to
// reflectDigest.
func headerOnlyDigest(cmd *kvpb.Command) (uint64, bool) {
	switch op := cmd.Op.(type) {
	case *kvpb.Command_Put:
		return digestWithoutHeader(10, op.Put, &op.Put.Header)
	case *kvpb.Command_Delete:
		return digestWithoutHeader(11, op.Delete, &op.Delete.Header)
	case *kvpb.Command_Acquire:
		return digestWithoutHeader(30, op.Acquire, &op.Acquire.Header)
	case *kvpb.Command_Release:
		return digestWithoutHeader(31, op.Release, &op.Release.Header)
	case *kvpb.Command_Store:
		return digestWithoutHeader(41, op.Store, &op.Store.Header)
	}
	return 0, false
}

// digestWithoutHeader digests op, whose header is *hdr, as if it had none.
func digestWithoutHeader(field uint32, op proto.Message, hdr **kvpb.RequestHeader) (uint64, bool) {
	h := *hdr
	*hdr = nil
	b, err := kvpb.Marshal(op)
	*hdr = h
	return digestOf(field, b), err == nil
}

// digestOf is the digest of an op's field number and encoding.
func digestOf(field uint32, b []byte) uint64 {
	h := sha256.New()
	var num [4]byte
	binary.BigEndian.PutUint32(num[:], field)
	h.Write(num[:])
	h.Write(b)
	d := binary.BigEndian.Uint64(h.Sum(nil))
	if d == 0 {
		d = 1
	}
	return d
}

// reflectDigest is bodyDigest for any op.
func reflectDigest(cmd *kvpb.Command) uint64 {
	m := cmd.ProtoReflect()
	fd := m.WhichOneof(commandOneof)
	if fd == nil {
		return 1
	}
	op := m.Get(fd).Message()
	type saved struct {
		fd protoreflect.FieldDescriptor
		v  protoreflect.Value
	}
	var put []saved
	for _, name := range digestFields {
		if f := op.Descriptor().Fields().ByName(name); f != nil && op.Has(f) {
			put = append(put, saved{f, op.Get(f)})
			op.Clear(f)
		}
	}
	b, _ := kvpb.Marshal(op.Interface()) // a message we decoded ourselves; the bytes of a deterministic proto.Marshal
	for _, s := range put {
		op.Set(s.fd, s.v)
	}
	return digestOf(uint32(fd.Number()), b)
}

// maxRememberedMessage bounds the error message a remembered result keeps
// (messages quote keys, which may be 4 KiB).
const maxRememberedMessage = 256

// slim returns the copy of res a session remembers: res without keys,
// values, lock names and values, waiter lists and long messages. res is not changed
// (the big fields are set aside while it is copied, not copied).
func slim(res *kvpb.CommandResult) *kvpb.CommandResult {
	var restore []func()
	bytesField := func(b *[]byte) {
		if v := *b; v != nil {
			*b = nil
			restore = append(restore, func() { *b = v })
		}
	}
	entry := func(e *kvpb.CacheEntry) {
		if e == nil {
			return
		}
		bytesField(&e.Key)
		bytesField(&e.Value)
		if w := e.Waiters; w != nil {
			e.Waiters = nil
			restore = append(restore, func() { e.Waiters = w })
		}
	}
	lockInfo := func(l *kvpb.LockInfo) {
		if l == nil {
			return
		}
		bytesField(&l.Name)
		bytesField(&l.Value)
		if w := l.Waiters; w != nil {
			l.Waiters = nil
			restore = append(restore, func() { l.Waiters = w })
		}
	}
	switch r := res.Result.(type) {
	case *kvpb.CommandResult_Put:
		if kv := r.Put.GetKv(); kv != nil {
			bytesField(&kv.Key)
			bytesField(&kv.Value)
		}
	case *kvpb.CommandResult_Add:
		if kv := r.Add.GetKv(); kv != nil {
			bytesField(&kv.Key)
			bytesField(&kv.Value)
		}
	case *kvpb.CommandResult_Touch:
		if kv := r.Touch.GetKv(); kv != nil {
			bytesField(&kv.Key)
		}
	case *kvpb.CommandResult_Txn:
		for _, op := range r.Txn.GetResults() {
			kv := op.GetPut().GetKv()
			if kv == nil {
				kv = op.GetGet().GetKv()
			}
			if kv != nil {
				bytesField(&kv.Key)
				bytesField(&kv.Value)
			}
		}
	case *kvpb.CommandResult_Acquire:
		lockInfo(r.Acquire.GetLock())
	case *kvpb.CommandResult_Proclaim:
		lockInfo(r.Proclaim.GetLock())
	case *kvpb.CommandResult_Fill:
		entry(r.Fill.GetEntry())
	case *kvpb.CommandResult_Store:
		entry(r.Store.GetEntry())
	case *kvpb.CommandResult_CacheSet:
		entry(r.CacheSet.GetEntry())
	}
	if msg := res.Message; len(msg) > maxRememberedMessage {
		res.Message = msg[:maxRememberedMessage] + "..."
		restore = append(restore, func() { res.Message = msg })
	}
	out := res.CloneVT()
	for _, f := range restore {
		f()
	}
	return out
}

// retryAnswer answers a retry of cmd from its remembered result r (which it
// does not change). rerun reports that r answered a fill that changed
// nothing and whose value is gone: the caller runs the command again,
// which applies it at most once all the same.
//
//   - Put: key and value are the retried request's (the put wrote exactly
//     them). Add: the key, and the value from the counter's result. Touch:
//     the key (its answer has no value).
//   - Txn: a put's key and value from the request, as for Put; a get's key
//     from the request, and its value from the state when the key still
//     has the mod_index of the first answer (so the same value), else the
//     first answer's metadata with value_unavailable set.
//   - Acquire: the lock's name; the waiter list is not kept (empty). The
//     holder's value is the request's when this command granted the lock
//     (token = the command's index: the grant took the request's value);
//     otherwise (another holder, or a session that already held the lock
//     and kept its value) it is left empty.
//   - Proclaim: the lock's name, and the value the proclaim set (the
//     request's); the waiter list is not kept (empty).
//   - Store, CacheSet: key, and the value when this command stored it (the
//     request's); otherwise the value the entry holds now if it is the same
//     store (same filled index), else none.
//   - Fill: key, and the entry's value if it still holds the same store.
//     Otherwise a FRESH (or STALE, lease elsewhere) answer is re-run, and a
//     STALE answer that granted the caller the lease becomes MISS with the
//     same lease token (the caller computes). Waiter lists are not kept.
func (s *state) retryAnswer(r *kvpb.CommandResult, cmd *kvpb.Command) (res *kvpb.CommandResult, rerun bool) {
	out := proto.CloneOf(r)
	current := func(key []byte, filled uint64) ([]byte, bool) {
		if c, ok := s.getCache(string(key)); ok && c.hasValue && c.filledIdx == filled {
			return nonNil(cloneBytes(c.value)), true
		}
		return nil, false
	}
	stored := func(e *kvpb.CacheEntry, key, value []byte, index uint64) {
		if e == nil {
			return
		}
		e.Key = cloneBytes(key)
		switch {
		case e.FilledIndex == 0:
		case e.FilledIndex == index:
			e.Value = nonNil(cloneBytes(value))
		default:
			if v, ok := current(key, e.FilledIndex); ok {
				e.Value = v
			} else {
				e.FilledIndex, e.FreshUntil, e.StaleUntil, e.IsError = 0, 0, 0, false
			}
		}
	}
	switch o := cmd.Op.(type) {
	case *kvpb.Command_Put:
		if kv := out.GetPut().GetKv(); kv != nil {
			kv.Key, kv.Value = cloneBytes(o.Put.Key), cloneBytes(o.Put.Value)
		}
	case *kvpb.Command_Add:
		if a := out.GetAdd(); a.GetKv() != nil {
			a.Kv.Key, a.Kv.Value = cloneBytes(o.Add.Key), strconv.AppendInt(nil, a.GetValue(), 10)
		}
	case *kvpb.Command_Touch:
		if kv := out.GetTouch().GetKv(); kv != nil {
			kv.Key = cloneBytes(o.Touch.Key)
		}
	case *kvpb.Command_Txn:
		s.retryTxn(out.GetTxn(), o.Txn)
	case *kvpb.Command_Acquire:
		a := out.GetAcquire()
		if l := a.GetLock(); l != nil {
			l.Name = cloneBytes(o.Acquire.Name)
			if a.Acquired && a.Token != 0 && a.Token == a.GetHeader().GetAppliedIndex() &&
				l.Token == a.Token && l.Session == o.Acquire.GetHeader().GetSession() {
				l.Value = cloneBytes(o.Acquire.Value)
			}
		}
	case *kvpb.Command_Proclaim:
		if l := out.GetProclaim().GetLock(); l != nil {
			l.Name, l.Value = cloneBytes(o.Proclaim.Name), cloneBytes(o.Proclaim.Value)
		}
	case *kvpb.Command_Store:
		st := out.GetStore()
		stored(st.GetEntry(), o.Store.Key, o.Store.Value, st.GetHeader().GetAppliedIndex())
	case *kvpb.Command_CacheSet:
		cs := out.GetCacheSet()
		stored(cs.GetEntry(), o.CacheSet.Key, o.CacheSet.Value, cs.GetHeader().GetAppliedIndex())
	case *kvpb.Command_Fill:
		f := out.GetFill()
		e := f.GetEntry()
		if e == nil {
			break
		}
		e.Key = cloneBytes(o.Fill.Key)
		if e.FilledIndex == 0 {
			break
		}
		if v, ok := current(o.Fill.Key, e.FilledIndex); ok {
			e.Value = v
			break
		}
		if f.State == kvpb.CacheState_CACHE_STATE_FRESH || f.LeaseToken == 0 {
			return nil, true
		}
		e.FilledIndex, e.FreshUntil, e.StaleUntil, e.IsError = 0, 0, 0, false
		f.State = kvpb.CacheState_CACHE_STATE_MISS
	}
	return out, false
}

// retryTxn puts back into a remembered txn answer r (a copy) the keys and
// values slim left out (see retryAnswer).
func (s *state) retryTxn(r *kvpb.TxnResponse, req *kvpb.TxnRequest) {
	ops := req.GetSuccess()
	if !r.GetSucceeded() {
		ops = req.GetFailure()
	}
	for i, res := range r.GetResults() {
		if i >= len(ops) {
			break
		}
		switch o := ops[i].GetOp().(type) {
		case *kvpb.TxnOp_Put:
			if kv := res.GetPut().GetKv(); kv != nil {
				kv.Key, kv.Value = cloneBytes(o.Put.Key), nonNil(cloneBytes(o.Put.Value))
			}
		case *kvpb.TxnOp_Get:
			kv := res.GetGet().GetKv()
			if kv == nil {
				break
			}
			kv.Key = cloneBytes(o.Get.Key)
			if it, ok := s.getKey(string(o.Get.Key)); ok && it.modIdx == kv.ModIndex {
				kv.Value = nonNil(cloneBytes(it.value))
			} else {
				res.ValueUnavailable = true
			}
		}
	}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
