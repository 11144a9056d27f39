package fsm

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// t0 is the log time the tests start at (unix ns).
const t0 = int64(1_700_000_000_000_000_000)

const ms = int64(1_000_000)

// harness applies commands to one FSM with increasing indexes.
type harness struct {
	t      testing.TB
	f      *FSM
	index  uint64
	now    int64 // stamp of the next command
	limits *kvpb.StateLimits
}

func newHarness(t testing.TB) *harness {
	return &harness{t: t, f: New(), now: t0}
}

// at sets the stamp of the next commands to t0 + d ms.
func (h *harness) at(dms int64) *harness { h.now = t0 + dms*ms; return h }

// apply applies one command and returns its result.
func (h *harness) apply(cmd *kvpb.Command) *kvpb.CommandResult {
	h.t.Helper()
	cmd.Stamp = h.now
	if cmd.Limits == nil {
		cmd.Limits = h.limits
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	h.index++
	res := h.f.Apply(h.index, data)
	if res == nil {
		h.t.Fatalf("Apply of a command returned no result")
	}
	return res
}

// ok applies and fails the test unless the result is OK.
func (h *harness) ok(cmd *kvpb.Command) *kvpb.CommandResult {
	h.t.Helper()
	res := h.apply(cmd)
	if res.Code != kvpb.ErrorCode_ERROR_CODE_OK {
		h.t.Fatalf("index %d: %v: %s", h.index, res.Code, res.Message)
	}
	return res
}

// code applies and checks the error code.
func (h *harness) code(cmd *kvpb.Command, want kvpb.ErrorCode) *kvpb.CommandResult {
	h.t.Helper()
	res := h.apply(cmd)
	if res.Code != want {
		h.t.Fatalf("index %d: code = %v (%s), want %v", h.index, res.Code, res.Message, want)
	}
	return res
}

func (h *harness) session(ttlMs int64) uint64 {
	h.t.Helper()
	return h.ok(createSession(ttlMs)).GetCreateSession().Session.Id
}

func (h *harness) get(key string) *kvpb.KeyValue { return h.f.Get([]byte(key), h.f.LogTime()) }

func hdr(session, seq uint64) *kvpb.RequestHeader {
	return &kvpb.RequestHeader{Session: session, Seq: seq}
}

func put(key, value string, ttlMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte(key), Value: []byte(value), TtlMs: ttlMs}}}
}

func putReq(r *kvpb.PutRequest) *kvpb.Command { return &kvpb.Command{Op: &kvpb.Command_Put{Put: r}} }

func del(key string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Delete{Delete: &kvpb.DeleteRequest{Key: []byte(key)}}}
}

func add(h *kvpb.RequestHeader, key string, delta int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Add{Add: &kvpb.AddRequest{Header: h, Key: []byte(key), Delta: delta}}}
}

func createSession(ttlMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_CreateSession{CreateSession: &kvpb.CreateSessionRequest{TtlMs: ttlMs, Name: "test"}}}
}

func keepAlive(id uint64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_KeepAlive{KeepAlive: &kvpb.KeepAliveRequest{Id: id}}}
}

func closeSession(id uint64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_CloseSession{CloseSession: &kvpb.CloseSessionRequest{Id: id}}}
}

func tick() *kvpb.Command { return &kvpb.Command{Op: &kvpb.Command_Tick{Tick: &kvpb.TickOp{}}} }

func recoverOp(graceMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Recover{Recover: &kvpb.RecoverOp{GraceNs: graceMs * ms}}}
}

func acquire(sess, seq uint64, name string, waitMs, delayMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Acquire{Acquire: &kvpb.AcquireRequest{
		Header: hdr(sess, seq), Name: []byte(name), WaitMs: waitMs, LockDelayMs: delayMs}}}
}

func release(sess uint64, name string, token uint64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Release{Release: &kvpb.ReleaseRequest{Header: hdr(sess, 0), Name: []byte(name), Token: token}}}
}

func cancelWait(sess uint64, name string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_CancelWait{CancelWait: &kvpb.CancelWaitRequest{Header: hdr(sess, 0), Name: []byte(name)}}}
}

func acquireValue(sess, seq uint64, name string, waitMs, delayMs int64, value string) *kvpb.Command {
	c := acquire(sess, seq, name, waitMs, delayMs)
	c.GetAcquire().Value = []byte(value)
	return c
}

func proclaim(h *kvpb.RequestHeader, name string, token uint64, value string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Proclaim{Proclaim: &kvpb.ProclaimRequest{Header: h, Name: []byte(name), Token: token, Value: []byte(value)}}}
}

func renew(name string, token uint64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Renew{Renew: &kvpb.RenewRequest{Name: []byte(name), Token: token}}}
}

func breakLock(name, reason string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Break{Break: &kvpb.BreakRequest{Name: []byte(name), Reason: reason}}}
}

func fill(sess uint64, key string, leaseMs, waitMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Fill{Fill: &kvpb.FillRequest{Header: hdr(sess, 0), Key: []byte(key), LeaseMs: leaseMs, WaitMs: waitMs}}}
}

func store(sess uint64, key string, token uint64, value string, ttlMs, staleMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Store{Store: &kvpb.StoreRequest{Header: hdr(sess, 0), Key: []byte(key), Token: token,
		Value: []byte(value), TtlMs: ttlMs, StaleMs: staleMs}}}
}

func storeReq(r *kvpb.StoreRequest) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Store{Store: r}}
}

func cacheSet(key, value string, ttlMs int64) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_CacheSet{CacheSet: &kvpb.CacheSetRequest{Key: []byte(key), Value: []byte(value), TtlMs: ttlMs}}}
}

func invalidate(key string, prefix bool) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_Invalidate{Invalidate: &kvpb.InvalidateRequest{Key: []byte(key), Prefix: prefix}}}
}

func setMember(name, peer, client string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_SetMember{SetMember: &kvpb.SetMemberOp{Name: name, PeerAddr: peer, ClientAddr: client}}}
}

func removeMember(name string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_RemoveMember{RemoveMember: &kvpb.RemoveMemberOp{Name: name}}}
}

// snapshotBytes persists a snapshot of f into memory.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.Snapshot().Encode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
