package fsm

import (
	"math"
	"strconv"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func (it kvItem) proto(keysOnly bool) *kvpb.KeyValue {
	kv := &kvpb.KeyValue{
		Key:         []byte(it.key),
		CreateIndex: it.createIdx,
		ModIndex:    it.modIdx,
		Version:     it.version,
		ExpiresAt:   it.expiresAt,
	}
	if !keysOnly {
		kv.Value = cloneBytes(it.value)
	}
	return kv
}

// live reports whether the key is visible at now.
func (it kvItem) live(now int64) bool { return it.expiresAt == 0 || it.expiresAt > now }

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// checkFence returns nil when the write may go ahead: no fence, or the
// fence's token holds its lock and the holder's session is alive.
func (s *state) checkFence(f *kvpb.Fence) *kvpb.CommandResult {
	if f == nil {
		return nil
	}
	l, ok := s.getLock(string(f.Lock))
	if ok && f.Token != 0 && l.token == f.Token && s.liveSession(l.session) != nil {
		return nil
	}
	r := fail(kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED, "fence: lock %q: token %d is not current (current %d)", f.Lock, f.Token, l.token)
	r.CurrentToken = l.token
	return r
}

// checkVersion implements compare-and-set: expected nil always passes;
// 0 means the key must not exist.
func checkVersion(key string, cur uint64, expected *uint64) *kvpb.CommandResult {
	if expected == nil || *expected == cur {
		return nil
	}
	return fail(kvpb.ErrorCode_ERROR_CODE_VERSION_MISMATCH, "key %q: version is %d, expected %d", key, cur, *expected)
}

// write stores a new value for key, creating it or bumping its version.
func (s *state) write(key string, old kvItem, exists bool, value []byte, expiresAt int64) kvItem {
	it := kvItem{key: key, value: value, createIdx: s.index, modIdx: s.index, version: 1, expiresAt: expiresAt}
	if exists {
		it.createIdx = old.createIdx
		it.version = old.version + 1
	}
	s.putKey(it)
	s.keyPut(it, old, exists)
	return it
}

func (s *state) put(req *kvpb.PutRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 {
		return invalid("key: must not be empty")
	}
	if req.TtlMs < 0 {
		return invalid("ttl_ms: must not be negative, got %d", req.TtlMs)
	}
	if r := s.checkFence(req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	old, exists := s.getKey(key)
	if r := checkVersion(key, old.version, req.ExpectedVersion); r != nil {
		return r
	}
	var exp int64
	if req.TtlMs > 0 {
		exp = s.logTime + req.TtlMs*nsPerMs
	}
	it := s.write(key, old, exists, req.Value, exp)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Put{Put: &kvpb.PutResponse{Kv: it.proto(false)}}}
}

func (s *state) delete(req *kvpb.DeleteRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 {
		return invalid("key: must not be empty")
	}
	if r := s.checkFence(req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	old, _ := s.getKey(key)
	if r := checkVersion(key, old.version, req.ExpectedVersion); r != nil {
		return r
	}
	var n uint64
	if s.delKey(key) {
		n = 1
		s.keyDeleted(old)
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Delete{Delete: &kvpb.DeleteResponse{Deleted: n}}}
}

// add adds to a decimal int64 counter. Choice: the key keeps its TTL (like
// Redis INCR); a fresh counter has none.
func (s *state) add(req *kvpb.AddRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 {
		return invalid("key: must not be empty")
	}
	if r := s.checkFence(req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	old, exists := s.getKey(key)
	var n int64
	if exists {
		v, err := strconv.ParseInt(string(old.value), 10, 64)
		if err != nil {
			return fail(kvpb.ErrorCode_ERROR_CODE_NOT_INTEGER, "key %q: value %q is not a decimal int64", key, truncate(old.value))
		}
		n = v
	}
	d := req.Delta
	if (d > 0 && n > math.MaxInt64-d) || (d < 0 && n < math.MinInt64-d) {
		return invalid("delta: key %q: %d + %d overflows int64", key, n, d)
	}
	n += d
	it := s.write(key, old, exists, []byte(strconv.FormatInt(n, 10)), old.expiresAt)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Add{Add: &kvpb.AddResponse{Value: n, Kv: it.proto(false)}}}
}

func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

func (s *state) setMember(req *kvpb.SetMemberOp) *kvpb.CommandResult {
	if req.Name == "" {
		return invalid("name: must not be empty")
	}
	s.members[req.Name] = member{name: req.Name, peerAddr: req.PeerAddr, clientAddr: req.ClientAddr}
	return &kvpb.CommandResult{}
}
