package api

import (
	"bytes"
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func openWatch(t *testing.T, ctx context.Context, conn *grpc.ClientConn, req *kvpb.WatchRequest) kvpb.Watch_WatchClient {
	t.Helper()
	st, err := kvpb.NewWatchClient(conn).Watch(ctx, req)
	if err != nil {
		t.Fatalf("Watch(%v) = %v", req, err)
	}
	return st
}

// recvKind receives until a message of kind arrives, failing on an error.
func recvKind(t *testing.T, st kvpb.Watch_WatchClient, kind kvpb.WatchMessageKind) *kvpb.WatchResponse {
	t.Helper()
	for range 1000 {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv waiting for %v: %v", kind, err)
		}
		if m.GetHeader().GetServedBy() == "" {
			t.Fatalf("message %v has no header", m.GetKind())
		}
		if m.GetKind() == kind {
			return m
		}
	}
	t.Fatalf("no %v in 1000 messages", kind)
	return nil
}

func after(i uint64) *uint64 { return &i }

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestWatchStream(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	kvc := kvpb.NewKVClient(conn)
	if _, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("cfg/a"), Value: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	plain := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("cfg/"), Prefix: true})
	withPrev := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("cfg/"), Prefix: true, PrevKv: true})
	for _, st := range []kvpb.Watch_WatchClient{plain, withPrev} {
		if m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED); m.GetIndex() < 1 || m.GetSnapshot() {
			t.Fatalf("CREATED = %v; want the read index, no snapshot", m)
		}
	}
	resp, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("cfg/a"), Value: []byte("2")})
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range []kvpb.Watch_WatchClient{plain, withPrev} {
		m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS)
		if len(m.Events) != 1 {
			t.Fatalf("EVENTS = %v, want one put", m)
		}
		e := m.Events[0]
		if e.Type != kvpb.EventType_EVENT_TYPE_PUT || e.Index != resp.GetKv().GetModIndex() || string(e.Kv.Value) != "2" || e.Kv.Version != 2 {
			t.Errorf("event = %v, want PUT cfg/a=2 version 2 at %d", e, resp.GetKv().GetModIndex())
		}
		if m.GetIndex() != e.Index {
			t.Errorf("EVENTS index = %d, want %d", m.GetIndex(), e.Index)
		}
		switch {
		case i == 0 && e.PrevKv != nil:
			t.Errorf("prev_kv %v sent without being asked for", e.PrevKv)
		case i == 1 && string(e.GetPrevKv().GetValue()) != "1":
			t.Errorf("prev_kv = %v, want the old value 1", e.PrevKv)
		}
	}
}

func TestWatchProgressAndResume(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	kvc := kvpb.NewKVClient(conn)
	var idx []uint64
	for _, v := range []string{"a", "b", "c"} {
		r, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("k"), Value: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		idx = append(idx, r.GetKv().GetModIndex())
	}
	st := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("k"), AfterIndex: after(idx[0]), ProgressMs: 30})
	if m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED); m.GetIndex() != idx[0] {
		t.Fatalf("CREATED index = %d, want %d", m.GetIndex(), idx[0])
	}
	m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS)
	if len(m.Events) != 2 || string(m.Events[0].Kv.Value) != "b" || string(m.Events[1].Kv.Value) != "c" {
		t.Fatalf("resumed after %d: %v, want b and c", idx[0], m.Events)
	}
	if p := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_PROGRESS); p.GetIndex() < idx[2] {
		t.Errorf("PROGRESS index %d, want at least %d", p.GetIndex(), idx[2])
	}
}

func TestWatchOlderThanHistory(t *testing.T) {
	b := newFakeBackend()
	b.hub.Close()
	b.hub = node.NewWatchHub(node.WatchConfig{HistoryEvents: 2}, b.f, func(context.Context) (uint64, error) { return b.f.AppliedIndex(), nil })
	conn := serveBackend(t, b, Config{})
	ctx := testCtx(t, 10*time.Second)
	kvc := kvpb.NewKVClient(conn)
	for _, k := range []string{"s/1", "s/2", "s/3", "s/4", "x"} {
		if _, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte(k), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	for o, _, _, _ := b.hub.HistoryRange(); o < 3; o, _, _, _ = b.hub.HistoryRange() {
		if ctx.Err() != nil {
			t.Fatalf("history still holds index %d", o)
		}
		time.Sleep(5 * time.Millisecond)
	}

	st := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("s/"), Prefix: true, AfterIndex: after(1), OutOfRangeError: true})
	_, err := st.Recv()
	c, k := codeOf(err)
	info := errInfoOf(err)
	if c != codes.OutOfRange || k != kvpb.ErrorCode_ERROR_CODE_OUT_OF_RANGE || info.GetField() != "after_index" || info.GetLimit() < 3 {
		t.Fatalf("Watch(after 1, out_of_range_error) = %v (info %v); want OutOfRange naming after_index and the oldest index", err, info)
	}

	st = openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("s/"), Prefix: true, AfterIndex: after(1)})
	if m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED); !m.GetSnapshot() {
		t.Fatalf("CREATED = %v, want snapshot true", m)
	}
	snap := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT)
	end := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_SNAPSHOT_END)
	if len(snap.Events) != 4 || snap.GetIndex() != end.GetIndex() || end.GetIndex() != b.f.AppliedIndex() {
		t.Fatalf("snapshot of %d items at %d, end at %d; want s/1..s/4 at %d", len(snap.Events), snap.GetIndex(), end.GetIndex(), b.f.AppliedIndex())
	}
}

func errInfoOf(err error) *kvpb.ErrorInfo { return node.ErrorInfo(status.Convert(err)) }

func TestWatchValidation(t *testing.T) {
	_, conn := serveFake(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	long := bytes.Repeat([]byte("k"), node.DefaultLimits().MaxKeyBytes+1)
	for _, tt := range []struct {
		req   *kvpb.WatchRequest
		field string
	}{
		{&kvpb.WatchRequest{Target: 9, Key: []byte("k")}, "target"},
		{&kvpb.WatchRequest{Key: nil}, "key"},
		{&kvpb.WatchRequest{Key: long, Prefix: true}, "key"},
		{&kvpb.WatchRequest{Key: []byte("k"), Skip: 2}, "skip"},
		{&kvpb.WatchRequest{Key: []byte("k"), ProgressMs: -1}, "progress_ms"},
		{&kvpb.WatchRequest{Key: []byte("k"), Types: []kvpb.EventType{kvpb.EventType_EVENT_TYPE_PUT, 77}}, "types[1]"},
		{&kvpb.WatchRequest{Target: kvpb.WatchTarget_WATCH_TARGET_SESSIONS, Key: []byte("x1")}, "key"},
	} {
		st := openWatch(t, ctx, conn, tt.req)
		_, err := st.Recv()
		if c, _ := codeOf(err); c != codes.InvalidArgument || errInfoOf(err).GetField() != tt.field {
			t.Errorf("Watch(%v) = %v; want InvalidArgument naming %s", tt.req, err, tt.field)
		}
	}
}

func TestWatchAuthorization(t *testing.T) {
	_, conn := serveFake(t, Config{})
	root, alice, _ := setUpAuth(t, conn)
	ctx := testCtx(t, 10*time.Second)

	// alice reads a/ only.
	st := openWatch(t, asUser(ctx, alice), conn, &kvpb.WatchRequest{Key: []byte("b/"), Prefix: true})
	if _, err := st.Recv(); !isCode(err, codes.PermissionDenied) {
		t.Errorf("alice watching b/ = %v, want PermissionDenied", err)
	}
	st = openWatch(t, asUser(ctx, alice), conn, &kvpb.WatchRequest{Key: []byte(""), Prefix: true})
	if _, err := st.Recv(); !isCode(err, codes.PermissionDenied) {
		t.Errorf("alice watching every key = %v, want PermissionDenied", err)
	}
	st = openWatch(t, asUser(ctx, alice), conn, &kvpb.WatchRequest{Target: kvpb.WatchTarget_WATCH_TARGET_SESSIONS, Prefix: true})
	if _, err := st.Recv(); !isCode(err, codes.PermissionDenied) {
		t.Errorf("alice watching every session = %v, want PermissionDenied", err)
	}
	st = openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("a/"), Prefix: true})
	if _, err := st.Recv(); !isCode(err, codes.Unauthenticated) {
		t.Errorf("watch without a token = %v, want Unauthenticated", err)
	}

	st = openWatch(t, asUser(ctx, alice), conn, &kvpb.WatchRequest{Key: []byte("a/"), Prefix: true})
	recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED)
	kvc := kvpb.NewKVClient(conn)
	if _, err := kvc.Put(asUser(ctx, root), &kvpb.PutRequest{Key: []byte("a/1"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS)

	// Revoking the permission ends the stream at its next message.
	au := kvpb.NewAuthClient(conn)
	if _, err := au.UserRevokeRole(asUser(ctx, root), &kvpb.UserRevokeRoleRequest{User: "alice", Role: "alice-role"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kvc.Put(asUser(ctx, root), &kvpb.PutRequest{Key: []byte("a/2"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.Recv()
		if err != nil {
			if !isCode(err, codes.PermissionDenied) {
				t.Errorf("stream after the revoke ended with %v, want PermissionDenied", err)
			}
			break
		}
		for _, e := range m.Events {
			if string(e.Key) == "a/2" {
				t.Fatalf("a/2 was sent after alice lost read on a/")
			}
		}
	}
}

func isCode(err error, c codes.Code) bool {
	got, _ := codeOf(err)
	return err != nil && got == c
}

// TestWatchSlowConsumerCancelled: a client that stops reading while large
// changes keep coming is cancelled with a CANCELED message naming where to
// resume, then WATCH_CANCELED (Aborted).
func TestWatchSlowConsumerCancelled(t *testing.T) {
	b := newFakeBackend()
	b.hub.Close()
	b.hub = node.NewWatchHub(node.WatchConfig{Buffer: 4}, b.f, func(context.Context) (uint64, error) { return b.f.AppliedIndex(), nil })
	conn := serveBackend(t, b, Config{})
	ctx := testCtx(t, 30*time.Second)
	st := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("big"), AfterIndex: after(0)})
	recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED)
	value := bytes.Repeat([]byte("v"), 256<<10)
	for range 100 { // 25 MiB: far more than the flow-control windows hold
		if _, _, err := b.Propose(ctx, &kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("big"), Value: value}}}); err != nil {
			t.Fatal(err)
		}
	}
	var got int
	var canceled *kvpb.WatchResponse
	for {
		m, err := st.Recv()
		if err != nil {
			if c, k := codeOf(err); c != codes.Aborted || k != kvpb.ErrorCode_ERROR_CODE_WATCH_CANCELED {
				t.Fatalf("stream ended with %v, want WATCH_CANCELED (Aborted)", err)
			}
			break
		}
		switch m.GetKind() {
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS:
			got += len(m.Events)
		case kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CANCELED:
			canceled = m
		}
	}
	if canceled == nil || got >= 100 || canceled.GetIndex() != uint64(got) {
		t.Fatalf("received %d of 100 changes, then CANCELED %v; want the index of the last one received", got, canceled)
	}
	// Resuming there gives the rest.
	st = openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("big"), AfterIndex: after(canceled.GetIndex()), Skip: canceled.GetSkip()})
	for got < 100 {
		m := recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_EVENTS)
		for _, e := range m.Events {
			got++
			if e.Index != uint64(got) {
				t.Fatalf("after the resume: change at %d, want %d", e.Index, got)
			}
		}
	}
}

func TestWatchEndsWhenServerStops(t *testing.T) {
	b := newFakeBackend()
	s := New(b, Config{})
	conn := serveOn(t, s)
	ctx := testCtx(t, 10*time.Second)
	st := openWatch(t, ctx, conn, &kvpb.WatchRequest{Key: []byte("k")})
	recvKind(t, st, kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED)
	done := make(chan struct{})
	go func() { s.Stop(context.Background()); close(done) }()
	_, err := st.Recv()
	if c, k := codeOf(err); c != codes.Unavailable || k != kvpb.ErrorCode_ERROR_CODE_NOT_LEADER {
		t.Errorf("stream at server stop ended with %v, want NOT_LEADER (watch elsewhere)", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return with a watch open")
	}
	close(b.done)
	b.hub.Close()
}
