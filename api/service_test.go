package api

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// fakeBackend is a Backend with no Raft: Propose applies straight to a
// bare fsm. The services need nothing more, so their tests need no node.
type fakeBackend struct {
	mu    sync.Mutex
	f     *fsm.FSM
	hub   *node.WatchHub
	index uint64
	now   int64
	done  chan struct{}
	// limits, when set, replaces node.DefaultLimits.
	limits *node.Limits
}

func newFakeBackend() *fakeBackend {
	b := &fakeBackend{f: fsm.New(), now: time.Now().UnixNano(), done: make(chan struct{})}
	// Its read index is its own applied index: it is the leader of itself.
	b.hub = node.NewWatchHub(node.WatchConfig{ProgressInterval: 20 * time.Millisecond}, b.f,
		func(context.Context) (uint64, error) { return b.f.AppliedIndex(), nil })
	return b
}

func (b *fakeBackend) Propose(_ context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, node.Applied, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.now += int64(time.Millisecond)
	cmd.Stamp = b.now
	cmd.Limits = &kvpb.StateLimits{MaxWaitersPerLock: 16, MaxLocksPerSession: 16, CacheMaxBytes: 1 << 20, MaxDedupResults: 100}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, node.Applied{}, err
	}
	b.index++
	res, evs := b.f.ApplyEvents(b.index, data)
	b.hub.Publish(b.index, evs)
	return res, node.Applied{Index: b.index, LogTime: b.f.LogTime()}, nil
}

func (b *fakeBackend) Read(context.Context, kvpb.Consistency) (int64, *kvpb.ResponseHeader, error) {
	return b.f.LogTime(), b.LocalHeader(), nil
}

func (b *fakeBackend) WaitApplied(ctx context.Context, index uint64) error {
	if b.AppliedIndex() >= index {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (b *fakeBackend) WriteHeader(index uint64, logTime int64) *kvpb.ResponseHeader {
	return &kvpb.ResponseHeader{AppliedIndex: index, LogTime: logTime, ServedBy: "fake"}
}
func (b *fakeBackend) LocalHeader() *kvpb.ResponseHeader {
	return &kvpb.ResponseHeader{AppliedIndex: b.AppliedIndex(), LogTime: b.f.LogTime(), ServedBy: "fake", Stale: true}
}
func (b *fakeBackend) AppliedIndex() uint64     { return b.f.AppliedIndex() }
func (b *fakeBackend) FSM() *fsm.FSM            { return b.f }
func (b *fakeBackend) WatchHub() *node.WatchHub { return b.hub }
func (b *fakeBackend) RenewSession(ctx context.Context, id uint64) (*kvpb.CommandResult, node.Applied, error) {
	res, at, err := b.Propose(ctx, &kvpb.Command{Op: &kvpb.Command_KeepAliveBatch{KeepAliveBatch: &kvpb.KeepAliveBatchOp{Ids: []uint64{id}}}})
	if err != nil {
		return nil, node.Applied{}, err
	}
	return res.GetKeepAliveBatch().GetResults()[0], at, nil
}
func (b *fakeBackend) RenewSessionAsync(id, tag uint64, done chan<- node.Renewal) {
	res, at, err := b.RenewSession(context.Background(), id)
	done <- node.Renewal{ID: id, Tag: tag, Res: res, At: at, Err: err}
}
func (b *fakeBackend) Leader() (string, string)              { return "fake", "" }
func (b *fakeBackend) WriteHealth() (<-chan struct{}, error) { return nil, nil }
func (b *fakeBackend) Limits() node.Limits {
	if b.limits != nil {
		return *b.limits
	}
	return node.DefaultLimits()
}
func (b *fakeBackend) ElectionTimeout() time.Duration { return 50 * time.Millisecond }
func (b *fakeBackend) Done() <-chan struct{}          { return b.done }
func (b *fakeBackend) Status(bool) *kvpb.StatusResponse {
	return &kvpb.StatusResponse{Header: b.LocalHeader()}
}
func (b *fakeBackend) Members() ([]*kvpb.Member, error) { return nil, nil }
func (b *fakeBackend) AddMember(context.Context, *kvpb.AddMemberRequest) (uint64, error) {
	return 0, nil
}
func (b *fakeBackend) RemoveMember(context.Context, string) (uint64, error)   { return 0, nil }
func (b *fakeBackend) TransferLeader(context.Context, string) (string, error) { return "", nil }
func (b *fakeBackend) Snapshot(context.Context) (uint64, error)               { return 0, nil }
func (b *fakeBackend) ConsistentSnapshot(context.Context) (fsm.Snapshot, error) {
	return b.f.Snapshot(), nil
}

// serveFake starts a Server over a fake backend on bufconn and returns a
// connection to it.
func serveFake(t *testing.T, cfg Config) (*fakeBackend, *grpc.ClientConn) {
	t.Helper()
	b := newFakeBackend()
	return b, serveBackend(t, b, cfg)
}

// serveBackend serves b on bufconn and returns a connection to it.
func serveBackend(t *testing.T, b *fakeBackend, cfg Config) *grpc.ClientConn {
	t.Helper()
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.MinCost
	}
	s := New(b, cfg)
	t.Cleanup(func() { s.Stop(context.Background()); close(b.done); b.hub.Close() })
	return serveOn(t, s)
}

// serveOn serves s on bufconn and returns a connection to it; stopping s
// is the caller's.
func serveOn(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	go s.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///fake", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func codeOf(err error) (codes.Code, kvpb.ErrorCode) {
	st := status.Convert(err)
	return st.Code(), node.ErrorInfo(st).GetCode()
}

func asUser(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// setUpAuth makes users root (admin), alice (readwrite on keys a/, locks
// a/, cache a/) and bob (the same on b/), enables auth and returns their
// tokens.
func setUpAuth(t *testing.T, conn *grpc.ClientConn) (root, alice, bob string) {
	t.Helper()
	ctx := t.Context()
	au := kvpb.NewAuthClient(conn)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(au.UserAdd(ctx, &kvpb.UserAddRequest{Name: "root", Password: "rootpw"}))
	must(au.UserGrantRole(ctx, &kvpb.UserGrantRoleRequest{User: "root", Role: fsm.AdminRole}))
	for _, u := range []string{"alice", "bob"} {
		prefix := []byte(u[:1] + "/")
		must(au.UserAdd(ctx, &kvpb.UserAddRequest{Name: u, Password: u + "pw"}))
		must(au.RoleAdd(ctx, &kvpb.RoleAddRequest{Name: u + "-role"}))
		for _, k := range []kvpb.PermKind{kvpb.PermKind_PERM_KIND_KEYS, kvpb.PermKind_PERM_KIND_LOCKS, kvpb.PermKind_PERM_KIND_CACHE} {
			must(au.RoleGrantPermission(ctx, &kvpb.RoleGrantPermissionRequest{Name: u + "-role",
				Permission: &kvpb.Permission{Kind: k, Prefix: prefix, Level: kvpb.PermLevel_PERM_LEVEL_READWRITE}}))
		}
		must(au.UserGrantRole(ctx, &kvpb.UserGrantRoleRequest{User: u, Role: u + "-role"}))
	}
	must(au.AuthEnable(ctx, &kvpb.AuthEnableRequest{}))
	tok := func(name string) string {
		r, err := au.Authenticate(ctx, &kvpb.AuthenticateRequest{Name: name, Password: name + "pw"})
		if err != nil {
			t.Fatalf("Authenticate(%s): %v", name, err)
		}
		return r.GetToken()
	}
	return tok("root"), tok("alice"), tok("bob")
}

func TestPasswordsAreHashedBeforeTheLog(t *testing.T) {
	b, conn := serveFake(t, Config{})
	if _, err := kvpb.NewAuthClient(conn).UserAdd(t.Context(), &kvpb.UserAddRequest{Name: "carol", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	hash, _, ok := b.f.Auth().Credentials("carol")
	if !ok || bcrypt.CompareHashAndPassword(hash, []byte("s3cret")) != nil {
		t.Fatalf("stored credentials %q (ok %v) are not a bcrypt hash of the password", hash, ok)
	}
}

func TestAuthRefusals(t *testing.T) {
	_, conn := serveFake(t, Config{})
	root, alice, bob := setUpAuth(t, conn)
	ctx := t.Context()
	kv, au, lk, ca, cl := kvpb.NewKVClient(conn), kvpb.NewAuthClient(conn), kvpb.NewLockClient(conn), kvpb.NewCacheClient(conn), kvpb.NewClusterClient(conn)

	// No identity.
	_, err := kv.Get(ctx, &kvpb.GetRequest{Key: []byte("a/x")})
	if c, k := codeOf(err); c != codes.Unauthenticated || k != kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED {
		t.Errorf("Get without identity = %v; want Unauthenticated", err)
	}
	// A wrong password and an unknown user look the same.
	_, err1 := au.Authenticate(ctx, &kvpb.AuthenticateRequest{Name: "alice", Password: "nope"})
	_, err2 := au.Authenticate(ctx, &kvpb.AuthenticateRequest{Name: "mallory", Password: "nope"})
	for _, err := range []error{err1, err2} {
		if c, k := codeOf(err); c != codes.Unauthenticated || k != kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED {
			t.Errorf("Authenticate with bad credentials = %v; want AUTH_FAILED", err)
		}
	}
	if status.Convert(err1).Message() != status.Convert(err2).Message() {
		t.Errorf("wrong password says %q, unknown user says %q; want the same", status.Convert(err1).Message(), status.Convert(err2).Message())
	}
	// A forged token.
	_, err = kv.Get(asUser(ctx, alice[:len(alice)-4]+"AAAA"), &kvpb.GetRequest{Key: []byte("a/x")})
	if c, _ := codeOf(err); c != codes.Unauthenticated {
		t.Errorf("Get with a tampered token = %v; want Unauthenticated", err)
	}

	// Each user on its own prefix, refused on the other's.
	actx, bctx := asUser(ctx, alice), asUser(ctx, bob)
	if _, err := kv.Put(actx, &kvpb.PutRequest{Key: []byte("a/x"), Value: []byte("1")}); err != nil {
		t.Fatalf("alice Put(a/x): %v", err)
	}
	refused := map[string]error{}
	_, refused["bob put a/x"] = kv.Put(bctx, &kvpb.PutRequest{Key: []byte("a/x"), Value: []byte("2")})
	_, refused["bob get a/x"] = kv.Get(bctx, &kvpb.GetRequest{Key: []byte("a/x")})
	_, refused["bob list a/"] = kv.List(bctx, &kvpb.ListRequest{Prefix: []byte("a/")})
	_, refused["bob list all"] = kv.List(bctx, &kvpb.ListRequest{})
	_, refused["bob lock get a/l"] = lk.Get(bctx, &kvpb.GetLockRequest{Name: []byte("a/l")})
	_, refused["bob cache get a/c"] = ca.Get(bctx, &kvpb.CacheGetRequest{Key: []byte("a/c")})
	_, refused["bob cache set a/c"] = ca.Set(bctx, &kvpb.CacheSetRequest{Key: []byte("a/c"), Value: []byte("v"), TtlMs: 1000})
	_, refused["alice put b/x"] = kv.Put(actx, &kvpb.PutRequest{Key: []byte("b/x"), Value: []byte("2")})
	// Admin operations.
	_, refused["alice add member"] = cl.AddMember(actx, &kvpb.AddMemberRequest{Name: "n9", PeerAddr: "127.0.0.1:9"})
	_, refused["alice transfer"] = cl.TransferLeader(actx, &kvpb.TransferLeaderRequest{})
	_, refused["alice snapshot"] = cl.Snapshot(actx, &kvpb.SnapshotRequest{})
	_, refused["alice break"] = lk.Break(actx, &kvpb.BreakRequest{Name: []byte("a/l")})
	_, refused["alice user add"] = au.UserAdd(actx, &kvpb.UserAddRequest{Name: "eve", Password: "x"})
	_, refused["alice grant"] = au.UserGrantRole(actx, &kvpb.UserGrantRoleRequest{User: "alice", Role: fsm.AdminRole})
	_, refused["alice disable"] = au.AuthDisable(actx, &kvpb.AuthDisableRequest{})
	_, refused["alice passwd bob"] = au.UserChangePassword(actx, &kvpb.UserChangePasswordRequest{Name: "bob", Password: "x"})
	for what, err := range refused {
		if c, k := codeOf(err); c != codes.PermissionDenied || k != kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
			t.Errorf("%s = %v; want PermissionDenied", what, err)
		}
	}
	if msg := status.Convert(refused["bob put a/x"]).Message(); msg != `permission denied: user "bob" needs readwrite on keys "a/x"` {
		t.Errorf("refusal says %q; want it to name the user, the permission and the key", msg)
	}
	if _, err := cl.Snapshot(asUser(ctx, root), &kvpb.SnapshotRequest{}); err != nil {
		t.Errorf("root Snapshot: %v", err)
	}

	// Sessions and locks belong to their user.
	se := kvpb.NewSessionClient(conn)
	sr, err := se.Create(actx, &kvpb.CreateSessionRequest{TtlMs: 10_000, Owner: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	sid := sr.GetSession().GetId()
	if got := sr.GetSession().GetOwner(); got != "alice" {
		t.Errorf("session owner = %q; want alice (the caller, whatever the request said)", got)
	}
	ar, err := lk.Acquire(actx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: sid, Seq: 1}, Name: []byte("a/l")})
	if err != nil || !ar.GetAcquired() {
		t.Fatalf("alice Acquire(a/l) = %v, %v", ar, err)
	}
	// Bob may read the whole of a/? No: but give him read on a/ locks to
	// see the token, then show the token alone does not let him release.
	if _, err := au.RoleGrantPermission(asUser(ctx, root), &kvpb.RoleGrantPermissionRequest{Name: "bob-role",
		Permission: &kvpb.Permission{Kind: kvpb.PermKind_PERM_KIND_LOCKS, Prefix: []byte("a/"), Level: kvpb.PermLevel_PERM_LEVEL_READWRITE}}); err != nil {
		t.Fatal(err)
	}
	bsr, err := se.Create(bctx, &kvpb.CreateSessionRequest{TtlMs: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	for what, call := range map[string]func() error{
		"release with alice's token": func() error {
			_, err := lk.Release(bctx, &kvpb.ReleaseRequest{Header: &kvpb.RequestHeader{Session: bsr.GetSession().GetId(), Seq: 1}, Name: []byte("a/l"), Token: ar.GetToken()})
			return err
		},
		"proclaim on alice's lock": func() error {
			_, err := lk.Proclaim(bctx, &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: bsr.GetSession().GetId(), Seq: 2}, Name: []byte("a/l"), Token: ar.GetToken(), Value: []byte("bob")})
			return err
		},
		"proclaim under alice's session": func() error {
			_, err := lk.Proclaim(bctx, &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: sid, Seq: 2}, Name: []byte("a/l"), Token: ar.GetToken(), Value: []byte("bob")})
			return err
		},
		"renew alice's lock": func() error {
			_, err := lk.Renew(bctx, &kvpb.RenewRequest{Name: []byte("a/l"), Token: ar.GetToken()})
			return err
		},
		"keep alice's session alive": func() error {
			_, err := se.KeepAlive(bctx, &kvpb.KeepAliveRequest{Id: sid})
			return err
		},
		"close alice's session": func() error {
			_, err := se.Close(bctx, &kvpb.CloseSessionRequest{Id: sid})
			return err
		},
		"acquire under alice's session": func() error {
			_, err := lk.Acquire(bctx, &kvpb.AcquireRequest{Header: &kvpb.RequestHeader{Session: sid, Seq: 2}, Name: []byte("a/m")})
			return err
		},
	} {
		if c, _ := codeOf(call()); c != codes.PermissionDenied {
			t.Errorf("bob: %s = %v; want PermissionDenied", what, call())
		}
	}
	if r, err := lk.Get(actx, &kvpb.GetLockRequest{Name: []byte("a/l")}); err != nil || r.GetLock().GetToken() != ar.GetToken() {
		t.Errorf("after bob's attempts the lock is %v, %v; want alice's token %d still", r, err, ar.GetToken())
	}
	if r, err := lk.Proclaim(actx, &kvpb.ProclaimRequest{Header: &kvpb.RequestHeader{Session: sid, Seq: 4}, Name: []byte("a/l"), Token: ar.GetToken(), Value: []byte("alice")}); err != nil ||
		string(r.GetLock().GetValue()) != "alice" || r.GetLock().GetToken() != ar.GetToken() {
		t.Errorf("alice Proclaim = %v, %v; want value alice under token %d", r, err, ar.GetToken())
	}
	if _, err := lk.Release(actx, &kvpb.ReleaseRequest{Header: &kvpb.RequestHeader{Session: sid, Seq: 3}, Name: []byte("a/l"), Token: ar.GetToken()}); err != nil {
		t.Errorf("alice Release: %v", err)
	}

	// A changed password revokes the old token.
	if _, err := au.UserChangePassword(actx, &kvpb.UserChangePasswordRequest{Name: "alice", Password: "new"}); err != nil {
		t.Fatalf("alice changes her own password: %v", err)
	}
	_, err = kv.Get(actx, &kvpb.GetRequest{Key: []byte("a/x")})
	if c, k := codeOf(err); c != codes.Unauthenticated || k != kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED {
		t.Errorf("Get with a token from before the password change = %v; want TOKEN_EXPIRED", err)
	}
}

func TestTokenExpires(t *testing.T) {
	b := newFakeBackend()
	t.Cleanup(b.hub.Close)
	v := func() *fsm.AuthView { return b.f.Auth() }
	if _, err := issueToken(v(), "x", 1, time.Minute, time.Now()); err == nil {
		t.Fatal("issueToken with auth disabled succeeded")
	}
	_, _, err := b.Propose(t.Context(), &kvpb.Command{Op: &kvpb.Command_UserAdd{UserAdd: &kvpb.UserAddRequest{Name: "root", NoPassword: true}}})
	if err != nil {
		t.Fatal(err)
	}
	b.Propose(t.Context(), &kvpb.Command{Op: &kvpb.Command_UserGrantRole{UserGrantRole: &kvpb.UserGrantRoleRequest{User: "root", Role: fsm.AdminRole}}})
	res, _, _ := b.Propose(t.Context(), &kvpb.Command{Op: &kvpb.Command_AuthEnable{AuthEnable: &kvpb.AuthEnableOp{TokenKey: make([]byte, fsm.TokenKeySize)}}})
	if err := node.ResultError(res); err != nil {
		t.Fatal(err)
	}
	rev, _ := v().UserRevision("root")
	now := time.Now()
	tok, err := issueToken(v(), "root", rev, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := checkToken(v(), tok, now.Add(59*time.Second)); err != nil || u != "root" {
		t.Errorf("checkToken before expiry = %q, %v; want root", u, err)
	}
	if _, err := checkToken(v(), tok, now.Add(61*time.Second)); node.CodeOf(err) != kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED {
		t.Errorf("checkToken after expiry = %v; want TOKEN_EXPIRED", err)
	}
}

// TestStaleAuthRevisionIsRefusedNotRemembered: a command checked against
// auth state older than the one it applies on is refused at apply and not
// remembered, so its retry (same session and seq) is checked and applied
// afresh; the api turns the refusal into NOT_LEADER, which clients retry.
func TestStaleAuthRevisionIsRefusedNotRemembered(t *testing.T) {
	b, conn := serveFake(t, Config{})
	ctx := t.Context()
	sr, err := kvpb.NewSessionClient(conn).Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	sid := sr.GetSession().GetId()
	old := b.f.Auth().Revision()
	if _, err := kvpb.NewAuthClient(conn).RoleAdd(ctx, &kvpb.RoleAddRequest{Name: "r"}); err != nil {
		t.Fatal(err)
	}
	put := &kvpb.Command{AuthRevision: &old, Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{
		Header: &kvpb.RequestHeader{Session: sid, Seq: 1}, Key: []byte("k"), Value: []byte("v")}}}
	res, _, _ := b.Propose(ctx, proto.CloneOf(put))
	if res.GetCode() != kvpb.ErrorCode_ERROR_CODE_AUTH_REVISION_STALE || res.GetAuthRevision() <= old {
		t.Fatalf("put checked at revision %d after a change = %v; want AUTH_REVISION_STALE with the newer revision", old, res)
	}
	if kv := b.f.Get([]byte("k"), b.f.LogTime()); kv != nil {
		t.Fatalf("the refused put was applied: %v", kv)
	}
	cur := b.f.Auth().Revision()
	put.AuthRevision = &cur
	if res, _, _ := b.Propose(ctx, put); res.GetCode() != kvpb.ErrorCode_ERROR_CODE_OK {
		t.Fatalf("the retry (same seq, current revision) = %v; want OK, not the remembered refusal", res)
	}
	// Through the server: the interceptor's revision travels with the write.
	s := New(b, Config{BcryptCost: bcrypt.MinCost})
	rctx := context.WithValue(ctx, authRevKey{}, old)
	_, _, err = s.propose(rctx, &kvpb.Command{Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Key: []byte("k2"), Value: []byte("v")}}})
	if node.CodeOf(err) != kvpb.ErrorCode_ERROR_CODE_NOT_LEADER {
		t.Fatalf("propose with a stale revision = %v; want NOT_LEADER (retry)", err)
	}
}
