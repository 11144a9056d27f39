package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// randomLog builds a seeded log that exercises every op. It feeds a scratch
// FSM as it goes so that it can reuse live session ids and tokens.
func randomLog(t testing.TB, seed uint64, n int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	h := newHarness(t)
	h.limits = &kvpb.StateLimits{MaxWaitersPerLock: 4, MaxLocksPerSession: 3, CacheMaxBytes: 200, MaxDedupResults: 5}
	var log [][]byte
	var sessions []uint64
	seqs := map[uint64]uint64{}
	tokens := map[string]uint64{}
	holders := map[string]uint64{} // session of the last grant seen, for Proclaim
	keys := []string{"a", "b", "c", "d/1", "d/2"}
	pick := func() string { return keys[rng.IntN(len(keys))] }
	sess := func() uint64 {
		if len(sessions) == 0 || rng.IntN(10) == 0 {
			return uint64(rng.IntN(int(h.index + 2)))
		}
		return sessions[max(0, len(sessions)-1-rng.IntN(4))]
	}
	next := func(s uint64) *kvpb.RequestHeader {
		if rng.IntN(5) == 0 && seqs[s] > 0 {
			return &kvpb.RequestHeader{Session: s, Seq: seqs[s]} // a retry
		}
		seqs[s]++
		return &kvpb.RequestHeader{Session: s, Seq: seqs[s], MinPendingSeq: seqs[s] - uint64(rng.IntN(3))}
	}
	for range n {
		h.now += int64(rng.IntN(60)) * ms
		var cmd *kvpb.Command
		switch rng.IntN(28) {
		case 0, 1:
			cmd = put(pick(), "v", int64(rng.IntN(3))*300)
		case 2:
			cmd = del(pick())
		case 3:
			s := sess()
			cmd = add(next(s), pick(), int64(rng.IntN(5)))
		case 4:
			cmd = createSession(int64(1000 + rng.IntN(3000)))
		case 5:
			cmd = keepAlive(sess())
		case 6:
			cmd = closeSession(sess())
		case 7, 8:
			s := sess()
			cmd = acquire(s, next(s).Seq, "L"+pick(), int64(rng.IntN(3))*500, int64(rng.IntN(2))*200)
			if rng.IntN(2) == 0 {
				cmd.GetAcquire().Value = fmt.Appendf(nil, "candidate-%d", s)
			}
		case 9:
			name := "L" + pick()
			cmd = release(sess(), name, tokens[name])
		case 10:
			cmd = cancelWait(sess(), "L"+pick())
		case 11:
			name := "L" + pick()
			if rng.IntN(2) == 0 {
				s := holders[name]
				if rng.IntN(4) == 0 {
					s = sess()
				}
				cmd = proclaim(next(s), name, tokens[name], fmt.Sprintf("value-%d", h.index))
			} else {
				cmd = renew(name, tokens[name])
			}
		case 12:
			cmd = breakLock("L"+pick(), "test")
		case 13, 14:
			cmd = fill(sess(), pick(), int64(100+rng.IntN(500)), int64(rng.IntN(2))*1000)
		case 15:
			k := pick()
			c := store(sess(), k, tokens["C"+k], "value-"+k, int64(1+rng.IntN(1000)), int64(rng.IntN(500)))
			c.GetStore().Abandon = rng.IntN(4) == 0
			c.GetStore().IsError = rng.IntN(4) == 0
			cmd = c
		case 16:
			cmd = cacheSet(pick(), "set", int64(1+rng.IntN(1000)))
		case 17:
			cmd = invalidate("d/", rng.IntN(2) == 0)
		case 18:
			cmd = tick()
		case 19:
			if rng.IntN(4) == 0 {
				cmd = recoverOp(int64(rng.IntN(1000)))
			} else {
				cmd = setMember(pick(), "p", "c")
			}
		case 20, 21, 22, 23:
			cmd = randomAuthOp(rng)
		case 24:
			cmd = putReq(&kvpb.PutRequest{Key: []byte(pick()), Value: []byte("b"), Session: sess(), IfAbsent: rng.IntN(2) == 0})
		case 25:
			cmd = touchCmd(pick(), int64(rng.IntN(3))*300, nil)
		case 26:
			cmd = delPrefix("d/")
		case 27:
			s := sess()
			cmd = txnCmd(next(s), []*kvpb.Compare{cmpNum(pick(), tVersion, kvpb.CompareOp(rng.IntN(4)), uint64(rng.IntN(3)))},
				[]*kvpb.TxnOp{opPutReq(&kvpb.PutRequest{Key: []byte(pick()), Value: []byte("t"), Session: sess()}), opGet(pick())},
				[]*kvpb.TxnOp{opDel("d/", true), opGet(pick())})
		}
		res := h.apply(cmd)
		cmd.Stamp, cmd.Limits = h.now, h.limits
		data, _ := proto.Marshal(cmd)
		log = append(log, data)
		if id := res.GetCreateSession().GetSession().GetId(); id != 0 {
			sessions = append(sessions, id)
		}
		if a := cmd.GetAcquire(); a != nil && res.GetAcquire().GetToken() != 0 {
			tokens[string(a.Name)] = res.GetAcquire().Token
			holders[string(a.Name)] = a.GetHeader().GetSession()
		}
		if f := cmd.GetFill(); f != nil && res.GetFill().GetLeaseToken() != 0 {
			tokens["C"+string(f.Key)] = res.GetFill().LeaseToken
		}
	}
	return log
}

// randomAuthOp is a random user, role or auth command over a few names,
// so that most succeed and some are refused.
func randomAuthOp(rng *rand.Rand) *kvpb.Command {
	users := []string{"root", "u1", "u2"}
	roles := []string{"r1", "r2", AdminRole}
	kinds := []kvpb.PermKind{keys, locks, cacheK}
	prefixes := []string{"", "a", "d/"}
	user := users[rng.IntN(len(users))]
	role := roles[rng.IntN(len(roles))]
	var hash []byte
	if rng.IntN(3) > 0 {
		hash = fakeHash(rng.IntN(100))
	}
	var cmd *kvpb.Command
	switch rng.IntN(11) {
	case 0, 1:
		cmd = userAdd(user, hash)
	case 2:
		cmd = userDelete(user)
	case 3:
		cmd = userPasswd(user, hash)
	case 4, 5:
		cmd = grantRole(user, role)
	case 6:
		cmd = revokeRole(user, role)
	case 7:
		if rng.IntN(3) == 0 {
			cmd = roleDelete(role)
		} else {
			cmd = roleAdd(role)
		}
	case 8:
		levels := []kvpb.PermLevel{read, rw}
		cmd = grantPerm(role, kinds[rng.IntN(3)], prefixes[rng.IntN(3)], levels[rng.IntN(2)])
	case 9:
		cmd = revokePerm(role, kinds[rng.IntN(3)], prefixes[rng.IntN(3)])
	case 10:
		if rng.IntN(2) == 0 {
			key := make([]byte, TokenKeySize)
			for i := range key {
				key[i] = byte(rng.IntN(256))
			}
			cmd = authEnable(key)
		} else {
			cmd = authDisable()
		}
	}
	return cmd
}

func applyAll(f *FSM, log [][]byte, from uint64) {
	for i, data := range log {
		f.Apply(from+uint64(i), data)
	}
}

func TestTwoFSMsSameLogSameSnapshot(t *testing.T) {
	users := 0
	for _, seed := range []uint64{1, 2, 3, 42} {
		log := randomLog(t, seed, 3000)
		a, b := New(), New()
		applyAll(a, log, 1)
		applyAll(b, log, 1)
		sa, sb := snapshotBytes(t, a), snapshotBytes(t, b)
		if !bytes.Equal(sa, sb) {
			t.Fatalf("seed %d: snapshots differ (%d vs %d bytes)", seed, len(sa), len(sb))
		}
		if !bytes.Equal(a.StateHash(), b.StateHash()) {
			t.Fatalf("seed %d: state hashes differ", seed)
		}
		if a.Auth().Revision() == 0 {
			t.Errorf("seed %d: the log changed no auth state; it should exercise auth too", seed)
		}
		users += len(a.Users())
	}
	// A log may end with every user deleted; the seeds together must leave
	// some, so that user records go through the snapshot.
	if users == 0 {
		t.Error("no seed's log left a user")
	}
}

// TestSnapshotRestoreMidLog restores a snapshot taken half way and applies
// the rest: the result must equal a replica that applied the whole log, so
// the derived indexes are rebuilt correctly.
func TestSnapshotRestoreMidLog(t *testing.T) {
	for _, seed := range []uint64{7, 8, 9} {
		log := randomLog(t, seed, 3000)
		whole := New()
		applyAll(whole, log, 1)

		half := New()
		applyAll(half, log[:1500], 1)
		snap := snapshotBytes(t, half)
		restored := New()
		if err := restored.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if !bytes.Equal(snapshotBytes(t, restored), snap) {
			t.Fatalf("seed %d: re-snapshot after restore differs", seed)
		}
		if !bytes.Equal(restored.StateHash(), half.StateHash()) {
			t.Fatalf("seed %d: StateHash after restore differs", seed)
		}
		if restored.NextDeadline() != half.NextDeadline() {
			t.Errorf("seed %d: NextDeadline() = %d after restore, want %d", seed, restored.NextDeadline(), half.NextDeadline())
		}
		applyAll(restored, log[1500:], 1501)
		if !bytes.Equal(snapshotBytes(t, restored), snapshotBytes(t, whole)) {
			t.Fatalf("seed %d: restored replica diverged from the whole-log replica", seed)
		}
	}
}

// TestSnapshotIsPointInTime checks that Applies after Snapshot do not change
// what Encode writes.
func TestSnapshotIsPointInTime(t *testing.T) {
	log := randomLog(t, 5, 2000)
	a, b := New(), New()
	applyAll(a, log[:1000], 1)
	applyAll(b, log[:1000], 1)
	snap := a.Snapshot()
	applyAll(a, log[1000:], 1001)
	var buf bytes.Buffer
	if err := snap.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), snapshotBytes(t, b)) {
		t.Fatalf("Encode after later Applies wrote a different state")
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	h := newHarness(t)
	h.ok(put("keep", "me", 0))
	hb, _ := proto.Marshal(&kvpb.SnapshotHeader{FormatVersion: 99})
	future := append([]byte{byte(len(hb))}, hb...)
	good := snapshotBytes(t, New())
	tests := []struct {
		name string
		data []byte
	}{
		{"unknown version", future},
		{"empty", nil},
		{"truncated record", append(append([]byte{}, good...), 10, 1, 2)},
		{"unknown record kind", append(append([]byte{}, good...), 1, 99)},
	}
	for _, tt := range tests {
		err := h.f.Restore(io.NopCloser(bytes.NewReader(tt.data)))
		if !errors.Is(err, ErrSnapshotFormat) {
			t.Errorf("Restore(%s) = %v, want ErrSnapshotFormat", tt.name, err)
		}
	}
	if h.get("keep") == nil {
		t.Errorf("a rejected Restore changed the state")
	}
}

func TestWatch(t *testing.T) {
	h := newHarness(t)
	s := h.session(10000)
	lockCh, _ := h.f.Watch(WatchLock, []byte("L"))
	cacheCh, _ := h.f.Watch(WatchCache, []byte("k"))
	otherCh, cancel := h.f.Watch(WatchLock, []byte("other"))
	defer cancel()
	h.ok(acquire(s, 1, "L", 0, 0))
	select {
	case <-lockCh:
	default:
		t.Errorf("lock watch did not fire on grant")
	}
	select {
	case <-cacheCh:
		t.Errorf("cache watch fired on a lock change")
	default:
	}
	h.ok(fill(s, "k", 1000, 0))
	select {
	case <-cacheCh:
	default:
		t.Errorf("cache watch did not fire on lease grant")
	}
	// Expiry fires watches too.
	ch, _ := h.f.Watch(WatchLock, []byte("L"))
	h.at(20000).ok(tick())
	select {
	case <-ch:
	default:
		t.Errorf("lock watch did not fire on session expiry")
	}
	select {
	case <-otherCh:
		t.Errorf("watch on an untouched lock fired")
	default:
	}
	c2, cancel2 := h.f.Watch(WatchCache, []byte("k"))
	cancel2()
	h.ok(cacheSet("k", "v", 1000))
	select {
	case <-c2:
		t.Errorf("a cancelled watch fired")
	default:
	}
}

func BenchmarkApplyPut(b *testing.B) { benchmarkApplyPut(b, false) }

// BenchmarkApplyPutEvents is the node's path: the put's event is collected.
func BenchmarkApplyPutEvents(b *testing.B) { benchmarkApplyPut(b, true) }

func benchmarkApplyPut(b *testing.B, events bool) {
	f := New()
	cmd := &kvpb.Command{Stamp: t0, Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("key"), Value: bytes.Repeat([]byte("v"), 100)}}}
	datas := make([][]byte, 1024)
	for i := range datas {
		cmd.GetPut().Key = []byte{byte(i), byte(i >> 8), 'k'}
		cmd.GetPut().TtlMs = int64(i % 3 * 1000)
		cmd.Stamp = t0 + int64(i)*ms
		datas[i], _ = proto.Marshal(cmd)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if events {
			f.ApplyEvents(uint64(i), datas[i%len(datas)])
		} else {
			f.Apply(uint64(i), datas[i%len(datas)])
		}
	}
}

// BenchmarkApplyPutSession is a put of a client with a session, as the Go
// client sends every write: checked against the session, digested and
// remembered for exactly-once retries. The session's dedup table stays
// small (each command's min_pending_seq is its own seq).
func BenchmarkApplyPutSession(b *testing.B) {
	h := newHarness(b)
	id := h.session(3_600_000)
	datas := make([][]byte, b.N)
	for i := range datas {
		cmd := putReq(&kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: id, Seq: uint64(i + 1), MinPendingSeq: uint64(i + 1)},
			Key: []byte{byte(i), byte(i >> 8), 'k'}, Value: bytes.Repeat([]byte("v"), 100)})
		cmd.Stamp = t0 + int64(i)*1000
		datas[i], _ = proto.Marshal(cmd)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if res, _ := h.f.ApplyEvents(h.index+uint64(i)+1, datas[i]); res.Code != kvpb.ErrorCode_ERROR_CODE_OK {
			b.Fatalf("put %d: %v %s", i, res.Code, res.Message)
		}
	}
}

// TestConcurrentReadsAndEncode runs Encode and the read methods while
// entries are applied (meaningful under -race).
func TestConcurrentReadsAndEncode(t *testing.T) {
	log := randomLog(t, 11, 2000)
	f := New()
	applyAll(f, log[:500], 1)
	snap := f.Snapshot()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := snap.Encode(io.Discard); err != nil {
			t.Error(err)
		}
		for range 200 {
			now := f.LogTime()
			f.Get([]byte("a"), now)
			f.List(nil, nil, 0, 0, false, now)
			f.Locks(nil, nil, 0, 0, now)
			f.CacheEntry([]byte("b"), now)
			f.CacheStats()
			f.Members()
			f.NextDeadline()
			ch, cancel := f.Watch(WatchLock, []byte("La"))
			cancel()
			_ = ch
		}
	}()
	applyAll(f, log[500:], 501)
	<-done
}

// TestKeyRecordMatchesProto: a key's record, encoded by hand, has exactly
// the bytes of the deterministic marshalling of its proto (what earlier
// builds wrote, and what the state hash of every replica is made of), and
// reads back into the same item.
func TestKeyRecordMatchesProto(t *testing.T) {
	items := []*kvItem{
		{key: "k"},
		{key: "k", value: []byte{}, createIdx: 1, modIdx: 1, version: 1},
		{key: "a/b", value: []byte("v"), createIdx: 7, modIdx: 9, version: 3},
		{key: "ttl", value: bytes.Repeat([]byte{0xff}, 300), createIdx: 1 << 40, modIdx: 1<<40 + 1, version: 2, expiresAt: t0 + 5*ms},
		{key: string([]byte{0, 1, 2}), value: []byte{0}, createIdx: 5, modIdx: 5, version: 1, session: 42},
		{key: "neg", value: []byte("x"), createIdx: 1, modIdx: 1, version: 1, expiresAt: -1},
	}
	for _, it := range items {
		want, err := marshal.Marshal(it.proto(false))
		if err != nil {
			t.Fatal(err)
		}
		got := appendKeyValue(nil, it)
		if !bytes.Equal(got, want) {
			t.Errorf("%q: hand-encoded %x, proto %x", it.key, got, want)
		}
		back, err := parseKeyValue(got)
		if err != nil {
			t.Fatalf("%q: %v", it.key, err)
		}
		if !proto.Equal(back.proto(false), it.proto(false)) {
			t.Errorf("%q: read back as %v, want %v", it.key, back.proto(false), it.proto(false))
		}
	}
	// A field this build does not know is skipped, as proto.Unmarshal does.
	b := appendKeyValue(nil, items[2])
	b = protowire.AppendTag(b, 99, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("later"))
	if back, err := parseKeyValue(b); err != nil || !proto.Equal(back.proto(false), items[2].proto(false)) {
		t.Errorf("with an unknown field: %v, %v", back, err)
	}
	// A field cut short is an error, never a half-read key.
	long := appendKeyValue(nil, items[3])
	for _, n := range []int{1, 4, 20, 200} {
		if it, err := parseKeyValue(long[:n]); err == nil {
			t.Errorf("cut at %d of %d: read %v, want an error", n, len(long), it.proto(false))
		}
	}
}

// A record that cannot be encoded fails the snapshot: it is never written
// with the record left out. (Requests are checked at the edge, so this
// takes state that could only come from a bug: a session name that is not
// UTF-8.)
func TestSnapshotFailsOnARecordItCannotEncode(t *testing.T) {
	h := newHarness(t)
	id := h.session(60_000)
	h.f.s.sessions[id].name = "bad \xff name"
	err := h.f.Snapshot().Encode(io.Discard)
	if err == nil || !strings.Contains(err.Error(), "SessionInfo") {
		t.Fatalf("Encode with a session name that is not UTF-8: err = %v, want an error naming SessionInfo", err)
	}
}
