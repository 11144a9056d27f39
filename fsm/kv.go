package fsm

import (
	"math"
	"strconv"
	"strings"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func (it kvItem) proto(keysOnly bool) *kvpb.KeyValue {
	kv := &kvpb.KeyValue{
		Key:         []byte(it.key),
		CreateIndex: it.createIdx,
		ModIndex:    it.modIdx,
		Version:     it.version,
		ExpiresAt:   it.expiresAt,
		Session:     it.session,
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

// write stores a new value for key, creating it or bumping its version,
// bound to session (0: none).
func (s *state) write(key string, old kvItem, exists bool, value []byte, expiresAt int64, session uint64) kvItem {
	it := kvItem{key: key, value: value, createIdx: s.index, modIdx: s.index, version: 1, expiresAt: expiresAt, session: session}
	if exists {
		it.createIdx = old.createIdx
		it.version = old.version + 1
	}
	s.putKey(it)
	s.keyPut(it, old, exists)
	return it
}

// ttlDeadline is the log time a TTL given now ends (0: no TTL).
func (s *state) ttlDeadline(ttlMs int64) int64 {
	if ttlMs > 0 {
		return s.logTime + ttlMs*nsPerMs
	}
	return 0
}

// checkPutBinding checks what a put's session and if_absent ask of the
// key's current state (old, exists): the session must be live, and with
// if_absent the key must not exist unless it is bound to that session.
func (s *state) checkPutBinding(req *kvpb.PutRequest, old kvItem, exists bool) *kvpb.CommandResult {
	if req.Session != 0 && s.liveSession(req.Session) == nil {
		return fail(kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, "session: session %d is unknown or expired", req.Session)
	}
	if req.IfAbsent && exists && (req.Session == 0 || old.session != req.Session) {
		if old.session != 0 {
			return fail(kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS, "if_absent: key %q exists, bound to session %d", old.key, old.session)
		}
		return fail(kvpb.ErrorCode_ERROR_CODE_KEY_EXISTS, "if_absent: key %q exists", old.key)
	}
	return nil
}

// checkKeyTTLFence checks what Put and Touch share: a key, a TTL that is
// not negative, and the fence.
func (s *state) checkKeyTTLFence(key []byte, ttlMs int64, f *kvpb.Fence) *kvpb.CommandResult {
	if len(key) == 0 {
		return invalid("key: must not be empty")
	}
	if ttlMs < 0 {
		return invalid("ttl_ms: must not be negative, got %d", ttlMs)
	}
	return s.checkFence(f)
}

func (s *state) put(req *kvpb.PutRequest) *kvpb.CommandResult {
	if r := s.checkKeyTTLFence(req.Key, req.TtlMs, req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	old, exists := s.getKey(key)
	if r := checkVersion(key, old.version, req.ExpectedVersion); r != nil {
		return r
	}
	if r := s.checkPutBinding(req, old, exists); r != nil {
		return r
	}
	it := s.write(key, old, exists, req.Value, s.ttlDeadline(req.TtlMs), req.Session)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Put{Put: &kvpb.PutResponse{Kv: it.proto(false)}}}
}

func (s *state) delete(req *kvpb.DeleteRequest) *kvpb.CommandResult {
	if len(req.Key) == 0 && !req.Prefix {
		return invalid("key: must not be empty")
	}
	if req.Prefix && req.ExpectedVersion != nil {
		return invalid("expected_version: must be unset with prefix")
	}
	if r := s.checkFence(req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	if req.Prefix {
		return &kvpb.CommandResult{Result: &kvpb.CommandResult_Delete{Delete: &kvpb.DeleteResponse{Deleted: s.deletePrefix(key)}}}
	}
	old, _ := s.getKey(key)
	if r := checkVersion(key, old.version, req.ExpectedVersion); r != nil {
		return r
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Delete{Delete: &kvpb.DeleteResponse{Deleted: s.deleteKey(key)}}}
}

// deleteKey deletes key with its DELETE event: 1 when it existed, else 0.
func (s *state) deleteKey(key string) uint64 {
	old, ok := s.getKey(key)
	if !ok {
		return 0
	}
	s.delKey(key)
	s.keyDeleted(old)
	return 1
}

// deletePrefix deletes every key that starts with prefix, in key order,
// with a DELETE event each, and returns how many.
func (s *state) deletePrefix(prefix string) uint64 {
	var keys []string
	s.kv.AscendGreaterOrEqual(&kvItem{key: prefix}, func(it *kvItem) bool {
		if !strings.HasPrefix(it.key, prefix) {
			return false
		}
		keys = append(keys, it.key)
		return true
	})
	var n uint64
	for _, k := range keys {
		n += s.deleteKey(k)
	}
	return n
}

// touchKey gives an existing key a new TTL from now (0: none), keeping its
// value, version, mod_index and session.
func (s *state) touchKey(req *kvpb.TouchRequest) *kvpb.CommandResult {
	if r := s.checkKeyTTLFence(req.Key, req.TtlMs, req.Fence); r != nil {
		return r
	}
	key := string(req.Key)
	it, ok := s.getKey(key)
	if !ok {
		return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "key %q not found", truncate(req.Key))
	}
	old := it
	it.expiresAt = s.ttlDeadline(req.TtlMs)
	s.putKey(it)
	s.keyTouched(it, old)
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_Touch{Touch: &kvpb.TouchResponse{Kv: it.proto(true)}}}
}

// add adds to a decimal int64 counter. Choice: the key keeps its TTL (like
// Redis INCR) and its session binding; a fresh counter has neither.
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
	it := s.write(key, old, exists, []byte(strconv.FormatInt(n, 10)), old.expiresAt, old.session)
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
