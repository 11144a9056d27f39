package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func putSeq(sess, seq, minPending uint64, key string, value []byte) *kvpb.Command {
	return putReq(&kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: sess, Seq: seq, MinPendingSeq: minPending}, Key: []byte(key), Value: value})
}

// A retry with the same body is answered from the first result (even when
// its min_pending_seq moved); a different body under a used seq is refused
// with SEQUENCE_REUSED and applies nothing.
func TestSequenceReused(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	first := h.ok(putSeq(s, 1, 1, "A", []byte("a"))).GetPut()
	r := h.code(putSeq(s, 1, 1, "B", []byte("b")), kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED)
	if !strings.Contains(r.Message, "seq 1") {
		t.Errorf("message %q does not name the seq", r.Message)
	}
	if h.get("B") != nil {
		t.Error("the refused command was applied")
	}
	h.code(add(hdr(s, 1), "A", 1), kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED) // another op
	again := h.ok(putSeq(s, 1, 0, "A", []byte("a"))).GetPut()
	if again.GetKv().GetModIndex() != first.GetKv().GetModIndex() || string(again.GetKv().GetValue()) != "a" || string(again.GetKv().GetKey()) != "A" {
		t.Errorf("retry = %v, want the first result %v", again.GetKv(), first.GetKv())
	}
	if v := h.get("A").GetVersion(); v != 1 {
		t.Errorf("A version %d after a retry, want 1 (applied once)", v)
	}

	// The digest survives a snapshot: a restored fsm refuses the same reuse.
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	h.f = g
	h.code(putSeq(s, 1, 1, "C", []byte("c")), kvpb.ErrorCode_ERROR_CODE_SEQUENCE_REUSED)
	h.ok(putSeq(s, 1, 1, "A", []byte("a")))
}

// min_pending_seq above the command's seq is refused and changes nothing:
// later seqs still apply (2^64-1 used to refuse every later write).
func TestMinPendingAboveSeqRefused(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	r := h.code(putSeq(s, 1, math.MaxUint64, "k", []byte("v")), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if !strings.Contains(r.Message, "min_pending_seq") {
		t.Errorf("message %q does not name min_pending_seq", r.Message)
	}
	if h.get("k") != nil {
		t.Error("the refused put was applied")
	}
	h.ok(putSeq(s, 2, 2, "k", []byte("v")))
	h.ok(putSeq(s, 3, 2, "k", []byte("w")))
}

// Remembered results hold no values: forty puts of 64 KiB whose results
// are all kept (min_pending_seq stays 1) leave a snapshot of about one
// value, and each retry gets its value back from the retried body.
func TestRememberedResultsHoldNoValues(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	val := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10) }
	for i := 1; i <= 40; i++ {
		h.ok(putSeq(s, uint64(i), 1, "big", val(i)))
	}
	if n := len(snapshotBytes(t, h.f)); n > 2*64<<10 {
		t.Errorf("snapshot is %d bytes with one 64 KiB key", n)
	}
	for _, i := range []int{1, 17, 40} {
		kv := h.ok(putSeq(s, uint64(i), 1, "big", val(i))).GetPut().GetKv()
		if kv.GetVersion() != uint64(i) || !bytes.Equal(kv.GetValue(), val(i)) || string(kv.GetKey()) != "big" {
			t.Errorf("retry of seq %d = version %d, %d value bytes, key %q", i, kv.GetVersion(), len(kv.GetValue()), kv.GetKey())
		}
	}
	// Add rebuilds the counter's value from its result.
	h.ok(add(hdr(s, 41), "n", 5))
	a := h.ok(add(hdr(s, 41), "n", 5)).GetAdd()
	if a.GetValue() != 5 || string(a.GetKv().GetValue()) != "5" || string(a.GetKv().GetKey()) != "n" {
		t.Errorf("retried Add = %v", a)
	}
	if v := h.get("n").GetValue(); string(v) != "5" {
		t.Errorf("n = %q after a retried add, want 5", v)
	}
}

// The slim copy a session keeps leaves out keys, values, names and
// waiters; the result handed back to the caller keeps them.
func TestSlimKeepsTheCallersResult(t *testing.T) {
	res := &kvpb.CommandResult{Message: strings.Repeat("m", 1000), Result: &kvpb.CommandResult_Fill{Fill: &kvpb.FillResponse{
		State: kvpb.CacheState_CACHE_STATE_FRESH,
		Entry: &kvpb.CacheEntry{Key: []byte("k"), Value: []byte("value"), FilledIndex: 7, Waiters: []uint64{1, 2}},
	}}}
	before := proto.CloneOf(res)
	s := slim(res)
	if !proto.Equal(res, before) {
		t.Errorf("slim changed its argument: %v", res)
	}
	e := s.GetFill().GetEntry()
	if e.Key != nil || e.Value != nil || e.Waiters != nil || e.FilledIndex != 7 || len(s.Message) > maxRememberedMessage+3 {
		t.Errorf("slim = %v, want metadata only", s)
	}
}

// Cache results: a retried Store or CacheSet gets the value it stored; a
// retried FRESH Fill whose value has since been replaced is run again (its
// first run changed nothing); a retried Fill that granted a lease over a
// stale value that is gone answers MISS with the same lease token.
func TestCacheRetriesRebuildValues(t *testing.T) {
	h := newHarness(t)
	s := h.session(60000)
	fillSeq := func(seq uint64) *kvpb.Command {
		c := fill(s, "k", 1000, 0)
		c.GetFill().Header.Seq = seq
		return c
	}
	tok := h.ok(fillSeq(1)).GetFill().GetLeaseToken()
	st := store(s, "k", tok, "v1", 1000, 5000)
	st.GetStore().Header.Seq = 2
	h.ok(st)
	st = store(s, "k", tok, "v1", 1000, 5000)
	st.GetStore().Header.Seq = 2
	if e := h.ok(st).GetStore().GetEntry(); string(e.GetValue()) != "v1" || string(e.GetKey()) != "k" {
		t.Errorf("retried Store entry = %v, want value v1", e)
	}
	if f := h.ok(fillSeq(3)).GetFill(); f.State != kvpb.CacheState_CACHE_STATE_FRESH || string(f.GetEntry().GetValue()) != "v1" {
		t.Fatalf("Fill = %v, want FRESH v1", f)
	}
	if f := h.ok(fillSeq(3)).GetFill(); string(f.GetEntry().GetValue()) != "v1" {
		t.Errorf("retried FRESH Fill = %v, want v1 (same store)", f)
	}
	cs := cacheSet("k", "v2", 1000)
	cs.GetCacheSet().Header = hdr(s, 4)
	cs.GetCacheSet().StaleMs = 5000
	h.ok(cs)
	if f := h.ok(fillSeq(3)).GetFill(); f.State != kvpb.CacheState_CACHE_STATE_FRESH || string(f.GetEntry().GetValue()) != "v2" {
		t.Errorf("retried FRESH Fill after the value changed = %v, want a fresh answer with v2", f)
	}
	if e := h.ok(cs).GetCacheSet().GetEntry(); string(e.GetValue()) != "v2" {
		t.Errorf("retried CacheSet entry = %v, want v2", e)
	}
	// Stale v2 with the lease to s; then the value is replaced.
	h.at(1500)
	f := h.ok(fillSeq(5)).GetFill()
	if f.State != kvpb.CacheState_CACHE_STATE_STALE || f.LeaseToken == 0 {
		t.Fatalf("Fill of a stale entry = %v, want STALE with the lease", f)
	}
	h.ok(invalidate("k", false))
	f2 := h.ok(fillSeq(5)).GetFill()
	if f2.State != kvpb.CacheState_CACHE_STATE_MISS || f2.LeaseToken != f.LeaseToken || f2.GetEntry().GetValue() != nil {
		t.Errorf("retried STALE Fill after the value went = %v, want MISS with lease %d", f2, f.LeaseToken)
	}
}

// TestBodyDigestIsStable: the digest of a command's body is what it was
// when digests were first written with protobuf-go's deterministic
// encoding (replicas and snapshots compare them, so they must never move).
func TestBodyDigestIsStable(t *testing.T) {
	put := &kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{
		Header: &kvpb.RequestHeader{Session: 7, Seq: 3}, Key: []byte("k"), Value: []byte("v"), TtlMs: 1000}}}
	want := func(cmd *kvpb.Command) uint64 {
		op := proto.Clone(cmd.GetPut()).(*kvpb.PutRequest)
		op.Header = nil // digestFields
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(op)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		var num [4]byte
		binary.BigEndian.PutUint32(num[:], 10) // Command.put
		h.Write(num[:])
		h.Write(b)
		return binary.BigEndian.Uint64(h.Sum(nil))
	}
	if got, w := bodyDigest(put), want(put); got != w {
		t.Fatalf("bodyDigest = %x, want %x", got, w)
	}
	if put.GetPut().GetHeader().GetSeq() != 3 {
		t.Fatal("bodyDigest changed the command's header")
	}
}

// The ops digested without reflection get the digest reflection gives, with
// and without a header, and keep their header.
func TestHeaderOnlyDigestMatches(t *testing.T) {
	hdr := func() *kvpb.RequestHeader { return &kvpb.RequestHeader{Session: 9, Seq: 4, MinPendingSeq: 2} }
	cmds := []*kvpb.Command{
		{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Header: hdr(), Key: []byte("k"), Value: []byte("v"), TtlMs: 1000}}},
		{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("k")}}},
		{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Header: hdr(), Key: []byte("k"), Prefix: true}}},
		{Op: &kvpb.Command_Acquire{Acquire: &kvpb.AcquireRequest{Header: hdr(), Name: []byte("l"), WaitMs: 5}}},
		{Op: &kvpb.Command_Release{Release: &kvpb.ReleaseRequest{Header: hdr(), Name: []byte("l"), Token: 3}}},
		{Op: &kvpb.Command_Store{Store: &kvpb.StoreRequest{Header: hdr(), Key: []byte("c"), Value: []byte("x"), TtlMs: 2000}}},
	}
	for _, cmd := range cmds {
		before := proto.Clone(cmd)
		fast, ok := headerOnlyDigest(cmd)
		if !ok {
			t.Fatalf("%v: not digested without reflection", cmd)
		}
		if slow := reflectDigest(cmd); fast != slow {
			t.Errorf("%v: digest %x without reflection, %x with", cmd, fast, slow)
		}
		if !proto.Equal(cmd, before) {
			t.Errorf("digest changed the command: %v, was %v", cmd, before)
		}
	}
	// Any other op takes the reflective path.
	if _, ok := headerOnlyDigest(&kvpb.Command{Op: &kvpb.Command_Touch{Touch: &kvpb.TouchRequest{Key: []byte("k")}}}); ok {
		t.Error("Touch is not one of the header-only ops")
	}
}
