package api_test

import (
	"bytes"
	"context"

	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kvdproject/kvd/api"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func kv(c *testcluster.Cluster, i int) kvpb.KVClient { return kvpb.NewKVClient(c.Conn(i)) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func put(t *testing.T, c kvpb.KVClient, key, value string, ttl time.Duration) *kvpb.PutResponse {
	t.Helper()
	resp, err := c.Put(ctxT(t, 5*time.Second), &kvpb.PutRequest{Key: []byte(key), Value: []byte(value), TtlMs: ttl.Milliseconds()})
	if err != nil {
		t.Fatalf("Put(%q) error: %v", key, err)
	}
	return resp
}

func get(ctx context.Context, c kvpb.KVClient, key string, stale bool) (*kvpb.GetResponse, error) {
	req := &kvpb.GetRequest{Key: []byte(key)}
	if stale {
		req.Consistency = kvpb.Consistency_CONSISTENCY_STALE
	}
	return c.Get(ctx, req)
}

func errInfo(err error) *kvpb.ErrorInfo {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func followers(c *testcluster.Cluster, leader int) []int {
	var out []int
	for i := 0; i < c.N(); i++ {
		if i != leader {
			out = append(out, i)
		}
	}
	return out
}

func transfer(t *testing.T, c *testcluster.Cluster, to int) int {
	t.Helper()
	cl := kvpb.NewClusterClient(c.Conn(to))
	if _, err := cl.TransferLeader(ctxT(t, 5*time.Second), &kvpb.TransferLeaderRequest{Name: c.Name(to)}); err != nil {
		t.Fatalf("TransferLeader(%s): %v", c.Name(to), err)
	}
	eventually(t, 5*time.Second, "new leader "+c.Name(to), func() bool { return c.Leader() == to })
	return c.MustLeader()
}

func TestReplication(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	resp := put(t, kv(c, l), "a", "1", 0)
	if resp.GetHeader().GetServedBy() != c.Name(l) || resp.GetHeader().GetAppliedIndex() == 0 {
		t.Errorf("Put header = %v, want served_by %s and an index", resp.GetHeader(), c.Name(l))
	}
	for _, f := range followers(c, l) {
		eventually(t, 5*time.Second, "stale read on "+c.Name(f), func() bool {
			r, err := get(t.Context(), kv(c, f), "a", true)
			return err == nil && string(r.GetKv().GetValue()) == "1" && r.GetHeader().GetStale()
		})
	}
}

func TestWriteViaFollowerIsForwarded(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	fs := followers(c, l)
	put(t, kv(c, fs[0]), "k", "via-follower", 0)
	r, err := get(ctxT(t, 5*time.Second), kv(c, fs[1]), "k", false)
	if err != nil {
		t.Fatalf("Get(k) on %s: %v", c.Name(fs[1]), err)
	}
	if got := string(r.GetKv().GetValue()); got != "via-follower" {
		t.Errorf("Get(k) = %q, want %q", got, "via-follower")
	}
	if r.GetHeader().GetStale() || r.GetHeader().GetServedBy() != c.Name(fs[1]) {
		t.Errorf("Get header = %v, want linearizable, served by %s", r.GetHeader(), c.Name(fs[1]))
	}
	// Delete of a missing key is OK with deleted=0; Get is NotFound.
	d, err := kv(c, fs[1]).Delete(ctxT(t, 5*time.Second), &kvpb.DeleteRequest{Key: []byte("missing")})
	if err != nil || d.GetDeleted() != 0 {
		t.Errorf("Delete(missing) = %v, %v; want deleted=0, nil", d, err)
	}
	_, err = get(ctxT(t, 5*time.Second), kv(c, fs[0]), "missing", false)
	if status.Code(err) != codes.NotFound || errInfo(err).GetCode() != kvpb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Errorf("Get(missing) error = %v, want NotFound with ErrorInfo NOT_FOUND", err)
	}
}

func TestLinearizableReadAfterLeaderChange(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	for i := range 20 {
		put(t, kv(c, l), "x", fmt.Sprint(i), 0)
	}
	c.Kill(l)
	ctx := ctxT(t, 10*time.Second)
	nl, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{nl, followers(c, l)[0], followers(c, l)[1]} {
		r, err := get(ctx, kv(c, i), "x", false)
		if err != nil {
			t.Fatalf("Get(x) on %s: %v", c.Name(i), err)
		}
		if got := string(r.GetKv().GetValue()); got != "19" {
			t.Errorf("Get(x) on %s = %q, want %q", c.Name(i), got, "19")
		}
	}
}

func TestDeadlineNotResetByLeaderChange(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	const ttl = 2 * time.Second
	start := time.Now()
	resp := put(t, kv(c, l), "ttl", "v", ttl)
	exp := resp.GetKv().GetExpiresAt()
	if exp == 0 {
		t.Fatalf("Put with ttl: expires_at = 0")
	}
	nl := transfer(t, c, followers(c, l)[0])
	r, err := get(ctxT(t, 5*time.Second), kv(c, nl), "ttl", false)
	if err != nil {
		t.Fatalf("Get(ttl) after leader change: %v", err)
	}
	if got := r.GetKv().GetExpiresAt(); got != exp {
		t.Errorf("expires_at after leader change = %d, want %d (unchanged)", got, exp)
	}
	// It expires on time: well before a full TTL after the leader change.
	eventually(t, ttl+time.Second, "key to expire", func() bool {
		_, err := get(t.Context(), kv(c, nl), "ttl", false)
		return status.Code(err) == codes.NotFound
	})
	if el := time.Since(start); el < ttl-50*time.Millisecond {
		t.Errorf("key expired after %v, before its TTL %v", el, ttl)
	}
}

func TestTickExpiresKeyOnIdleCluster(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	put(t, kv(c, l), "idle", "v", time.Second)
	// Stale reads judge against the replica's log time: the key only
	// disappears there when the leader's tick moved log time on.
	for i := 0; i < c.N(); i++ {
		eventually(t, 3*time.Second, "expiry by tick on "+c.Name(i), func() bool {
			_, err := get(t.Context(), kv(c, i), "idle", true)
			return status.Code(err) == codes.NotFound
		})
	}
}

func TestMembershipChange(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	put(t, kv(c, l), "m", "1", 0)
	n4 := c.AddNode()
	// Ask a follower: it forwards to the leader.
	f := followers(c, l)[0]
	cl := kvpb.NewClusterClient(c.Conn(f))
	if _, err := cl.AddMember(ctxT(t, 5*time.Second), &kvpb.AddMemberRequest{Name: c.Name(n4), PeerAddr: c.PeerAddr(n4)}); err != nil {
		t.Fatalf("AddMember: %v", err)
	}
	eventually(t, 5*time.Second, "n4 to replicate", func() bool {
		r, err := get(t.Context(), kv(c, n4), "m", true)
		return err == nil && string(r.GetKv().GetValue()) == "1"
	})
	eventually(t, 5*time.Second, "n4's client address in members", func() bool {
		ms, err := cl.Members(t.Context(), &kvpb.MembersRequest{})
		if err != nil {
			return false
		}
		for _, m := range ms.GetMembers() {
			if m.GetName() == c.Name(n4) {
				return m.GetClientAddr() == c.Endpoints[n4] && m.GetVoter()
			}
		}
		return false
	})
	// Linearizable read served by the new node.
	if _, err := get(ctxT(t, 5*time.Second), kv(c, n4), "m", false); err != nil {
		t.Errorf("Get on new member: %v", err)
	}

	victim := followers(c, l)[1]
	resp, err := cl.RemoveMember(ctxT(t, 5*time.Second), &kvpb.RemoveMemberRequest{Name: c.Name(victim)})
	if err != nil {
		t.Fatalf("RemoveMember: %v", err)
	}
	if len(resp.GetMembers()) != 3 {
		t.Errorf("members after remove = %v, want 3", resp.GetMembers())
	}
	for _, m := range resp.GetMembers() {
		if m.GetName() == c.Name(victim) {
			t.Errorf("removed member %s still listed", m.GetName())
		}
	}
	c.Stop(victim)
	put(t, kv(c, n4), "after", "remove", 0)
}

func TestValidation(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	f := followers(c, l)[0]
	conn := c.Conn(f)
	ctx := ctxT(t, 10*time.Second)
	put(t, kv(c, l), "seed", "v", 0)
	// Member registration must be done before taking the index.
	eventually(t, 5*time.Second, "every member registered", func() bool {
		ms, err := kvpb.NewClusterClient(conn).Members(t.Context(), &kvpb.MembersRequest{})
		if err != nil {
			return false
		}
		for _, m := range ms.GetMembers() {
			if m.GetClientAddr() == "" {
				return false
			}
		}
		return len(ms.GetMembers()) == 3
	})
	eventually(t, 5*time.Second, "quiet log", func() bool {
		return c.Node(l).Raft().AppliedIndex() == c.Node(l).Raft().LastIndex()
	})
	before := c.Node(l).Raft().LastIndex()

	lim := node.DefaultLimits()
	big := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	kvc, sc, lc, cc := kvpb.NewKVClient(conn), kvpb.NewSessionClient(conn), kvpb.NewLockClient(conn), kvpb.NewCacheClient(conn)
	tests := []struct {
		name  string
		field string
		call  func() error
	}{
		{"empty key", "key", func() error { _, err := kvc.Put(ctx, &kvpb.PutRequest{Value: []byte("v")}); return err }},
		{"long key", "key", func() error {
			_, err := kvc.Put(ctx, &kvpb.PutRequest{Key: big(lim.MaxKeyBytes + 1)})
			return err
		}},
		{"long value", "value", func() error {
			_, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("k"), Value: big(lim.MaxValueBytes + 1)})
			return err
		}},
		{"short ttl", "ttl_ms", func() error {
			_, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("k"), TtlMs: lim.MinTTL.Milliseconds() - 1})
			return err
		}},
		{"long ttl", "ttl_ms", func() error {
			_, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("k"), TtlMs: lim.MaxTTL.Milliseconds() + 1})
			return err
		}},
		{"negative ttl", "ttl_ms", func() error {
			_, err := kvc.Put(ctx, &kvpb.PutRequest{Key: []byte("k"), TtlMs: -1})
			return err
		}},
		{"list limit", "limit", func() error {
			_, err := kvc.List(ctx, &kvpb.ListRequest{Limit: uint32(lim.MaxListLimit + 1)})
			return err
		}},
		{"get long key", "key", func() error { _, err := kvc.Get(ctx, &kvpb.GetRequest{Key: big(lim.MaxKeyBytes + 1)}); return err }},
		{"session without ttl", "ttl_ms", func() error {
			_, err := sc.Create(ctx, &kvpb.CreateSessionRequest{})
			return err
		}},
		{"session name", "name", func() error {
			_, err := sc.Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 10000, Name: string(big(lim.MaxNameBytes + 1))})
			return err
		}},
		{"lock without session", "header.session", func() error {
			_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Name: []byte("l")})
			return err
		}},
		{"lock empty name", "name", func() error {
			_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: 1}})
			return err
		}},
		{"lock long name", "name", func() error {
			_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: 1}, Name: big(lim.MaxNameBytes + 1)})
			return err
		}},
		{"lock negative wait", "wait_ms", func() error {
			_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: 1}, Name: []byte("l"), WaitMs: -1})
			return err
		}},
		{"lock long value", "value", func() error {
			_, err := lc.Acquire(ctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: 1}, Name: []byte("l"), Value: big(lim.MaxValueBytes + 1)})
			return err
		}},
		{"proclaim long value", "value", func() error {
			_, err := lc.Proclaim(ctx, &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: 1}, Name: []byte("l"), Token: 5, Value: big(lim.MaxValueBytes + 1)})
			return err
		}},
		{"proclaim without session", "header.session", func() error {
			_, err := lc.Proclaim(ctx, &kvpb.ProclaimRequest{Name: []byte("l"), Token: 5})
			return err
		}},
		{"proclaim without token", "token", func() error {
			_, err := lc.Proclaim(ctx, &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: 1}, Name: []byte("l")})
			return err
		}},
		{"cache negative lease", "lease_ms", func() error {
			_, err := cc.Fill(ctx, &kvpb.FillRequest{Header: &kvpb.RequestHeader{Session: 1}, Key: []byte("c"), LeaseMs: -5})
			return err
		}},
		{"cache set ttl", "ttl_ms", func() error {
			_, err := cc.Set(ctx, &kvpb.CacheSetRequest{Key: []byte("c"), TtlMs: 1})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error = %v, want InvalidArgument", err)
			}
			info := errInfo(err)
			if info.GetCode() != kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || info.GetField() != tt.field {
				t.Errorf("ErrorInfo = %v, want code INVALID_ARGUMENT, field %q", info, tt.field)
			}
			if msg := status.Convert(err).Message(); !bytes.Contains([]byte(msg), []byte(tt.field)) {
				t.Errorf("message %q does not name the field %q", msg, tt.field)
			}
		})
	}
	if after := c.Node(l).Raft().LastIndex(); after != before {
		t.Errorf("last log index %d -> %d: invalid requests were proposed", before, after)
	}
}

func TestLeaderWithClockAheadDoesNotExpireEarly(t *testing.T) {
	const skewed = 2
	c := testcluster.StartWithConfig(t, 3, func(i int, cfg *node.Config) {
		if i == skewed {
			cfg.TestClockOffset = 10 * time.Minute
		}
	})
	l := c.MustLeader()
	if l == skewed {
		l = transfer(t, c, 0)
	}
	const ttl = 3 * time.Second
	start := time.Now()
	resp := put(t, kv(c, l), "fenced", "v", ttl)
	lt := resp.GetHeader().GetLogTime()
	transfer(t, c, skewed)
	r, err := get(ctxT(t, 5*time.Second), kv(c, skewed), "fenced", false)
	if time.Since(start) < ttl-500*time.Millisecond {
		if err != nil {
			t.Fatalf("Get(fenced) on the skewed leader: %v (expired early)", err)
		}
		if d := time.Duration(r.GetHeader().GetLogTime() - lt); d > time.Minute {
			t.Errorf("log time jumped %v when the skewed node took office", d)
		}
	}
	w := put(t, kv(c, skewed), "after", "v", 0)
	if d := time.Duration(w.GetHeader().GetLogTime() - lt); d > time.Minute {
		t.Errorf("log time of a write on the skewed leader is %v ahead", d)
	}
}

func TestGarbageOnClientPort(t *testing.T) {
	_, trans := raft.NewInmemTransport("")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	nd, err := node.New(node.Config{
		Name:             "solo",
		ClientAddr:       addr,
		PeerAddr:         string(trans.LocalAddr()),
		Transport:        trans,
		PeerListener:     bufconn.Listen(1 << 16),
		InMemoryStore:    true,
		InitialCluster:   []node.Peer{{Name: "solo", PeerAddr: string(trans.LocalAddr())}},
		HeartbeatTimeout: 50 * time.Millisecond,
		ElectionTimeout:  50 * time.Millisecond,
		LeaderLease:      50 * time.Millisecond,
		Logger:           logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.Start(); err != nil {
		t.Fatal(err)
	}
	srv := api.New(nd, api.Config{Logger: logger})
	go srv.Serve(lis)
	t.Cleanup(func() {
		srv.Stop(context.Background())
		nd.Shutdown(context.Background())
	})

	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		bytes.Repeat([]byte{0xff, 0x00, 0x13}, 10000),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00\xff\xff\xff\xff"),
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(junk)
		conn.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, conn)
		conn.Close()
	}

	gc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	k := kvpb.NewKVClient(gc)
	ctx := ctxT(t, 10*time.Second)
	var perr error
	eventually(t, 5*time.Second, "put on solo node", func() bool {
		_, perr = k.Put(ctx, &kvpb.PutRequest{Key: []byte("alive"), Value: []byte("yes")})
		return perr == nil
	})
	r, err := k.Get(ctx, &kvpb.GetRequest{Key: []byte("alive")})
	if err != nil || string(r.GetKv().GetValue()) != "yes" {
		t.Fatalf("Get(alive) = %v, %v; want yes", r, err)
	}
}

func TestErrorTable(t *testing.T) {
	for code, want := range map[kvpb.ErrorCode]codes.Code{
		kvpb.ErrorCode_ERROR_CODE_NOT_FOUND:       codes.NotFound,
		kvpb.ErrorCode_ERROR_CODE_FENCE_FAILED:    codes.FailedPrecondition,
		kvpb.ErrorCode_ERROR_CODE_NOT_LEADER:      codes.Unavailable,
		kvpb.ErrorCode_ERROR_CODE_INDETERMINATE:   codes.Unavailable,
		kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED:  codes.ResourceExhausted,
		kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED: codes.NotFound,
	} {
		if got := api.GRPCCode(code); got != want {
			t.Errorf("GRPCCode(%v) = %v, want %v", code, got, want)
		}
	}
	for c := range kvpb.ErrorCode_name {
		if api.GRPCCode(kvpb.ErrorCode(c)) == codes.Unknown {
			t.Errorf("GRPCCode(%v) has no mapping", kvpb.ErrorCode(c))
		}
	}
}

func TestPartitionedLeaderRefusesLinearizableRead(t *testing.T) {
	c := testcluster.Start(t, 3)
	l := c.MustLeader()
	put(t, kv(c, l), "p", "old", 0)
	c.Disconnect(l)
	f := followers(c, l)[0]
	eventually(t, 5*time.Second, "a new leader", func() bool { return c.Leader() >= 0 && c.Leader() != l })
	put(t, kv(c, f), "p", "new", 0)

	r, err := get(ctxT(t, 2*time.Second), kv(c, l), "p", false)
	if err == nil && string(r.GetKv().GetValue()) == "old" {
		t.Fatalf("partitioned old leader served a stale linearizable read: %v", r)
	}
	if err != nil {
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("linearizable read on the partitioned node: %v, want Unavailable or DeadlineExceeded", err)
		}
	}
	// A stale read is served, and says so.
	r, err = get(ctxT(t, 2*time.Second), kv(c, l), "p", true)
	if err != nil || !r.GetHeader().GetStale() {
		t.Errorf("stale read on the partitioned node = %v, %v; want a stale answer", r, err)
	}
	c.Reconnect(l)
	eventually(t, 5*time.Second, "the old leader to catch up", func() bool {
		r, err := get(t.Context(), kv(c, l), "p", false)
		return err == nil && string(r.GetKv().GetValue()) == "new"
	})
}

func TestNewMemberCatchesUpFromSnapshot(t *testing.T) {
	c := testcluster.StartWithConfig(t, 3, func(i int, cfg *node.Config) {
		cfg.SnapshotThreshold = 8
		cfg.TrailingLogs = 4
		cfg.SnapshotInterval = 50 * time.Millisecond
	})
	l := c.MustLeader()
	for i := range 40 {
		put(t, kv(c, l), fmt.Sprintf("s%02d", i), fmt.Sprint(i), 0)
	}
	for i := 0; i < 3; i++ {
		r, err := kvpb.NewClusterClient(c.Conn(i)).Snapshot(ctxT(t, 5*time.Second), &kvpb.SnapshotRequest{})
		if err != nil || r.GetIndex() == 0 {
			t.Fatalf("Snapshot on %s = %v, %v; want an index", c.Name(i), r, err)
		}
	}
	n4 := c.AddNode()
	if _, err := kvpb.NewClusterClient(c.Conn(l)).AddMember(ctxT(t, 5*time.Second),
		&kvpb.AddMemberRequest{Name: c.Name(n4), PeerAddr: c.PeerAddr(n4)}); err != nil {
		t.Fatalf("AddMember: %v", err)
	}
	eventually(t, 10*time.Second, "n4 to hold every key", func() bool {
		r, err := kv(c, n4).List(t.Context(), &kvpb.ListRequest{Prefix: []byte("s"), Consistency: kvpb.Consistency_CONSISTENCY_STALE})
		return err == nil && len(r.GetKvs()) == 40
	})
	// Same state at the same index on every member.
	eventually(t, 10*time.Second, "equal state hashes", func() bool {
		a, b := c.Node(l).Status(true), c.Node(n4).Status(true)
		return a.GetAppliedIndex() == b.GetAppliedIndex() && bytes.Equal(a.GetStateHash(), b.GetStateHash())
	})
}
