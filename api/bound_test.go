package api_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// TestSessionCloseDeletesBoundKeys binds keys to a session through a
// follower (forwarded to the leader), closes the session through the
// leader, and checks on every member that exactly its keys are gone, with
// one DELETE event each in the closing entry.
func TestSessionCloseDeletesBoundKeys(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := followers(c, l)[0]
	ctx := ctxT(t, 20*time.Second)
	sid := session(t, c, f)

	st, err := kvpb.NewWatchClient(c.Conn(f)).Watch(ctx, &kvpb.WatchRequest{Key: []byte("eph/"), Prefix: true})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || m.GetKind() != kvpb.WatchMessageKind_WATCH_MESSAGE_KIND_CREATED {
		t.Fatalf("first watch message = %v, %v; want CREATED", m, err)
	}

	fk := kvpb.NewKVClient(c.Conn(f))
	for _, p := range []*kvpb.PutRequest{
		{Key: []byte("eph/a"), Value: []byte("1"), Session: sid},
		{Key: []byte("eph/b"), Value: []byte("1"), Session: sid, IfAbsent: true},
		{Key: []byte("eph/keep"), Value: []byte("1")},
	} {
		if _, err := fk.Put(ctx, p); err != nil {
			t.Fatalf("Put(%s): %v", p.Key, err)
		}
	}
	info, err := kvpb.NewSessionClient(c.Conn(l)).Get(ctx, &kvpb.GetSessionRequest{Id: sid})
	if err != nil || info.GetSession().GetKeys() != 2 {
		t.Fatalf("Session.Get = %v, %v; want 2 keys", info, err)
	}
	cr, err := kvpb.NewSessionClient(c.Conn(l)).Close(ctx, &kvpb.CloseSessionRequest{Id: sid})
	if err != nil {
		t.Fatal(err)
	}
	closed := cr.GetHeader().GetAppliedIndex()

	var deleted []string
	for range 100 {
		if len(deleted) == 2 {
			break
		}
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		for _, e := range m.GetEvents() {
			if e.GetType() != kvpb.EventType_EVENT_TYPE_DELETE {
				continue
			}
			if e.GetIndex() != closed || e.GetExpired() {
				t.Errorf("DELETE %s at index %d expired %v; want at the close's index %d, not expired", e.GetKey(), e.GetIndex(), e.GetExpired(), closed)
			}
			deleted = append(deleted, string(e.GetKey()))
		}
	}
	if want := []string{"eph/a", "eph/b"}; !slices.Equal(deleted, want) {
		t.Errorf("DELETE events for %q, want %q", deleted, want)
	}

	for i := range 3 {
		k := kv(c, i)
		eventually(t, 5*time.Second, "member applied the close", func() bool {
			return c.Node(i).Raft().AppliedIndex() >= closed
		})
		for key, want := range map[string]codes.Code{"eph/a": codes.NotFound, "eph/b": codes.NotFound, "eph/keep": codes.OK} {
			_, err := get(ctx, k, key, true)
			if status.Code(err) != want {
				t.Errorf("member %d: stale Get(%s) = %v, want %v", i, key, err, want)
			}
		}
	}
}
