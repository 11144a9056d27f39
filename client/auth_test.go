package client

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// authFake is one scripted kvd node that checks tokens the way the server
// is meant to: a KV.Get needs a valid token while auth is on, and answers
// with the user the token belongs to.
type authFake struct {
	mu        sync.Mutex
	enabled   bool
	password  string
	ttl       time.Duration
	issued    int             // tokens issued
	valid     map[string]bool // token -> still accepted
	authCalls int
	getCalls  int
	gotTokens []string // authorization metadata of each Get ("" none)
	lastReq   proto.Message
	peerCN    string // CN of the last client certificate seen
	refuseAll bool   // every token is refused as expired

	kvpb.UnimplementedAuthServer
}

type authFakeKV struct {
	kvpb.UnimplementedKVServer
	f *authFake
}

type authFakeSessions struct {
	kvpb.UnimplementedSessionServer
	f *authFake
}

const fakeAddr = "127.0.0.1:7001" // never dialled: the test dialer reaches bufconn

// serve starts the fake on bufconn with opts and returns its dialer.
func (f *authFake) serve(t *testing.T, opts ...grpc.ServerOption) func(context.Context, string) (net.Conn, error) {
	lis := bufconn.Listen(1 << 20)
	f.start(t, lis, opts)
	return func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
}

// serveTCP starts the fake on a loopback TCP port (TLS alerts need a real
// connection: bufconn fails the client's first write before it reads the
// alert) and returns a dialer that reaches it.
func (f *authFake) serveTCP(t *testing.T, opts ...grpc.ServerOption) func(context.Context, string) (net.Conn, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.start(t, lis, opts)
	var d net.Dialer
	return func(ctx context.Context, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", lis.Addr().String())
	}
}

func (f *authFake) start(t *testing.T, lis net.Listener, opts []grpc.ServerOption) {
	srv := grpc.NewServer(opts...)
	kvpb.RegisterAuthServer(srv, f)
	kvpb.RegisterKVServer(srv, authFakeKV{f: f})
	kvpb.RegisterSessionServer(srv, authFakeSessions{f: f})
	kvpb.RegisterClusterServer(srv, authFakeCluster{f: f})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
}

func newAuthFake() *authFake {
	return &authFake{enabled: true, password: "pw", ttl: time.Minute, valid: map[string]bool{}}
}

func (f *authFake) Authenticate(ctx context.Context, req *kvpb.AuthenticateRequest) (*kvpb.AuthenticateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authCalls++
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(authorizationKey)) > 0 {
		return nil, fmt.Errorf("Authenticate carried a token")
	}
	if !f.enabled {
		return nil, kvdStatus(codes.FailedPrecondition, "authentication is not enabled", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED})
	}
	if req.Name != "alice" || req.Password != f.password {
		return nil, kvdStatus(codes.Unauthenticated, "wrong user name or password", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED})
	}
	f.issued++
	tok := fmt.Sprintf("tok-%d", f.issued)
	f.valid[tok] = true
	return &kvpb.AuthenticateResponse{Token: tok, TtlMs: f.ttl.Milliseconds()}, nil
}

// check returns the error a request with ctx's token gets, nil if it may go on.
func (f *authFake) check(ctx context.Context) error {
	var tok string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(authorizationKey); len(v) == 1 {
			tok = v[0]
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			f.peerCN = ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	f.gotTokens = append(f.gotTokens, tok)
	switch {
	case !f.enabled:
		return nil
	case tok == "":
		return kvdStatus(codes.Unauthenticated, "auth is enabled: sign in", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED})
	case f.refuseAll || !strings.HasPrefix(tok, bearerPrefix) || !f.valid[strings.TrimPrefix(tok, bearerPrefix)]:
		return kvdStatus(codes.Unauthenticated, "token expired", &kvpb.ErrorInfo{Code: kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED})
	}
	return nil
}

func (k authFakeKV) Get(ctx context.Context, req *kvpb.GetRequest) (*kvpb.GetResponse, error) {
	f := k.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getCalls++
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	return &kvpb.GetResponse{Kv: &kvpb.KeyValue{Key: req.Key, Value: []byte("v")}}, nil
}

func (s authFakeSessions) Create(ctx context.Context, req *kvpb.CreateSessionRequest) (*kvpb.CreateSessionResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if err := s.f.check(ctx); err != nil {
		return nil, err
	}
	return &kvpb.CreateSessionResponse{Session: &kvpb.SessionInfo{Id: 7, TtlMs: req.TtlMs}}, nil
}

func (s authFakeSessions) KeepAlive(ctx context.Context, req *kvpb.KeepAliveRequest) (*kvpb.KeepAliveResponse, error) {
	return &kvpb.KeepAliveResponse{Session: &kvpb.SessionInfo{Id: req.Id}}, nil
}

func (s authFakeSessions) Close(ctx context.Context, req *kvpb.CloseSessionRequest) (*kvpb.CloseSessionResponse, error) {
	return &kvpb.CloseSessionResponse{}, nil
}

type authFakeCluster struct {
	kvpb.UnimplementedClusterServer
	f *authFake
}

// SnapshotSave streams an empty snapshot to a caller with a valid token.
func (k authFakeCluster) SnapshotSave(req *kvpb.SnapshotSaveRequest, stream grpc.ServerStreamingServer[kvpb.SnapshotChunk]) error {
	k.f.mu.Lock()
	err := k.f.check(stream.Context())
	k.f.mu.Unlock()
	if err != nil {
		return err
	}
	if err := stream.Send(&kvpb.SnapshotChunk{Part: &kvpb.SnapshotChunk_Info{Info: &kvpb.SnapshotInfo{Index: 1}}}); err != nil {
		return err
	}
	sum := sha256.Sum256(nil)
	return stream.Send(&kvpb.SnapshotChunk{Part: &kvpb.SnapshotChunk_Trailer{Trailer: &kvpb.SnapshotTrailer{Sha256: sum[:]}}})
}

func (f *authFake) UserAdd(ctx context.Context, req *kvpb.UserAddRequest) (*kvpb.UserAddResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	f.lastReq = req
	return &kvpb.UserAddResponse{User: &kvpb.User{Name: req.Name, HasPassword: req.Password != ""}}, nil
}

func (f *authFake) RoleGrantPermission(ctx context.Context, req *kvpb.RoleGrantPermissionRequest) (*kvpb.RoleGrantPermissionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	f.lastReq = req
	return &kvpb.RoleGrantPermissionResponse{Role: &kvpb.Role{Name: req.Name, Permissions: []*kvpb.Permission{req.Permission}}}, nil
}

func (f *authFake) counts() (auth, get int, tokens []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.authCalls, f.getCalls, append([]string(nil), f.gotTokens...)
}

func authClient(t *testing.T, dial func(context.Context, string) (net.Conn, error), cfg Config) *Client {
	t.Helper()
	cfg.Endpoints = []string{fakeAddr}
	cfg.Dialer = dial
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = time.Second
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSignInOnceForConcurrentCalls(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Get(t.Context(), []byte("k"))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	auth, get, tokens := f.counts()
	if auth != 1 || get != 20 {
		t.Errorf("%d Authenticate and %d Get calls, want 1 and 20", auth, get)
	}
	for _, tok := range tokens {
		if tok != "Bearer tok-1" {
			t.Errorf("a Get carried %q, want \"Bearer tok-1\"", tok)
		}
	}
}

func TestExpiredTokenSignsInAgainOnce(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatalf("Get: %v", err)
	}
	f.mu.Lock()
	f.valid["tok-1"] = false
	f.mu.Unlock()
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatalf("Get after the token expired: %v", err)
	}
	auth, get, tokens := f.counts()
	if want := []string{"Bearer tok-1", "Bearer tok-1", "Bearer tok-2"}; auth != 2 || get != 3 || !equalStrings(tokens, want) {
		t.Errorf("%d Authenticate, Gets with %q; want 2 and %q", auth, tokens, want)
	}

	// A server that refuses every token: one more sign-in, then the error.
	f.mu.Lock()
	f.refuseAll = true
	f.mu.Unlock()
	_, err := c.Get(t.Context(), []byte("k"))
	if !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("Get with every token refused = %v, want ErrTokenExpired", err)
	}
	auth2, get2, _ := f.counts()
	if auth2-auth != 1 || get2-get != 2 {
		t.Errorf("with every token refused: %d more Authenticate and %d more Gets, want 1 and 2", auth2-auth, get2-get)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestStreamCarriesToken: a streaming call carries the token; when the
// server refuses it, that call fails and the next one signs in again.
func TestStreamCarriesToken(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	save := func() error {
		_, _, err := c.SnapshotSave(t.Context(), func(*kvpb.SnapshotInfo) (io.Writer, error) { return io.Discard, nil })
		return err
	}
	if err := save(); err != nil {
		t.Fatalf("SnapshotSave: %v", err)
	}
	f.mu.Lock()
	f.valid["tok-1"] = false
	f.mu.Unlock()
	if err := save(); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("SnapshotSave with a refused token = %v, want ErrTokenExpired", err)
	}
	if err := save(); err != nil {
		t.Fatalf("SnapshotSave after the refusal: %v", err)
	}
	auth, _, tokens := f.counts()
	if want := []string{"Bearer tok-1", "Bearer tok-1", "Bearer tok-2"}; auth != 2 || !equalStrings(tokens, want) {
		t.Errorf("%d Authenticate, streams with %q; want 2 and %q", auth, tokens, want)
	}
}

func TestWrongPassword(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "wrong"})
	_, err := c.Get(t.Context(), []byte("k"))
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Get = %v, want ErrAuthFailed", err)
	}
	if auth, get, _ := f.counts(); auth != 1 || get != 0 {
		t.Errorf("%d Authenticate and %d Get calls, want 1 and 0", auth, get)
	}
	if _, err := c.Authenticate(t.Context(), "alice", "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("Authenticate = %v, want ErrAuthFailed", err)
	}
}

func TestAuthDisabledThenEnabled(t *testing.T) {
	f := newAuthFake()
	f.enabled = false
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatalf("Get with auth disabled: %v", err)
	}
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatalf("Get with auth disabled: %v", err)
	}
	auth, _, tokens := f.counts()
	if auth != 1 || !equalStrings(tokens, []string{"", ""}) {
		t.Errorf("with auth disabled: %d Authenticate, Gets with %q; want 1 and no tokens", auth, tokens)
	}
	f.mu.Lock()
	f.enabled = true
	f.mu.Unlock()
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatalf("Get after auth was enabled: %v", err)
	}
	auth, _, tokens = f.counts()
	if want := []string{"", "", "", "Bearer tok-1"}; auth != 2 || !equalStrings(tokens, want) {
		t.Errorf("after enable: %d Authenticate, Gets with %q; want 2 and %q", auth, tokens, want)
	}
	if _, err := c.Authenticate(t.Context(), "alice", "pw"); err != nil {
		t.Errorf("Authenticate with auth on: %v", err)
	}
}

func TestTokenRenewedBeforeTTL(t *testing.T) {
	f := newAuthFake()
	f.ttl = 100 * time.Millisecond
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(95 * time.Millisecond) // past nine tenths of the TTL
	if _, err := c.Get(t.Context(), []byte("k")); err != nil {
		t.Fatal(err)
	}
	if auth, get, tokens := f.counts(); auth != 2 || get != 2 || tokens[1] != "Bearer tok-2" {
		t.Errorf("%d Authenticate, %d Gets with %q; want the second Get to carry a new token without a refusal", auth, get, tokens)
	}
}

func TestNoSignInWithoutUsername(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{})
	if _, err := c.Get(t.Context(), []byte("k")); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Get without a user on an auth-enabled server = %v, want ErrUnauthenticated", err)
	}
	if auth, _, _ := f.counts(); auth != 0 {
		t.Errorf("%d Authenticate calls without Config.Username, want 0", auth)
	}
}

func TestAuthRequests(t *testing.T) {
	f := newAuthFake()
	c := authClient(t, f.serve(t), Config{Username: "alice", Password: "pw"})
	if _, err := c.UserAdd(t.Context(), "bob", "secret"); err != nil {
		t.Fatalf("UserAdd: %v", err)
	}
	f.mu.Lock()
	req := f.lastReq.(*kvpb.UserAddRequest)
	f.mu.Unlock()
	if req.Name != "bob" || req.Password != "secret" || req.NoPassword || req.Header.GetSession() != 7 || req.Header.GetSeq() == 0 {
		t.Errorf("UserAdd sent %v, want bob with the password under session 7", req)
	}
	if _, err := c.UserAdd(t.Context(), "carol", ""); err != nil {
		t.Fatalf("UserAdd: %v", err)
	}
	f.mu.Lock()
	req = f.lastReq.(*kvpb.UserAddRequest)
	f.mu.Unlock()
	if req.Password != "" || !req.NoPassword {
		t.Errorf("UserAdd without a password sent %v, want no_password", req)
	}
	resp, err := c.RoleGrantPermission(t.Context(), "app", kvpb.PermKind_PERM_KIND_LOCKS, []byte("jobs/"), kvpb.PermLevel_PERM_LEVEL_READ)
	if err != nil {
		t.Fatalf("RoleGrantPermission: %v", err)
	}
	want := &kvpb.Permission{Kind: kvpb.PermKind_PERM_KIND_LOCKS, Prefix: []byte("jobs/"), Level: kvpb.PermLevel_PERM_LEVEL_READ}
	if got := resp.GetRole().GetPermissions(); len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("RoleGrantPermission sent %v, want %v", got, want)
	}
	// Unimplemented on the fake: the error comes back as it is.
	if _, err := c.RoleList(t.Context()); err == nil {
		t.Error("RoleList on a server without it = nil error")
	}
}

func TestConfigAuthValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string // "" for valid
	}{
		{Config{Endpoints: []string{"127.0.0.1:2379", "localhost:2479", "[::1]:2579"}, Username: "u"}, ""},
		{Config{Endpoints: []string{"127.0.0.1:2379", "10.0.0.5:2379"}, Username: "u"}, `in the clear to "10.0.0.5:2379"`},
		{Config{Endpoints: []string{"db.example:2379"}, Username: "u", TLS: &tls.Config{}}, ""},
		{Config{Endpoints: []string{"127.0.0.1:2379"}, Password: "p"}, "Password is set without"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// tlsFixture is a CA with a node certificate for the fake server and a
// client certificate for alice, on disk.
type tlsFixture struct {
	dir                  string
	server               tls.Certificate
	ca                   *x509.CertPool
	clientCert, clientKy string
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.CreateCA(dir, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	n, err := pki.CreateNode(dir, "", "n1", nil, 30*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := pki.CreateClient(dir, "", "alice", 30*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(n.CertPath, n.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCert(filepath.Join(dir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tlsFixture{dir: dir, server: pair, ca: pool, clientCert: cl.CertPath, clientKy: cl.KeyPath}
}

func (x *tlsFixture) serverCreds(requireClient bool) grpc.ServerOption {
	cfg := &tls.Config{Certificates: []tls.Certificate{x.server}, ClientCAs: x.ca, MinVersion: tls.VersionTLS12}
	if requireClient {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(cfg))
}

func TestTLS(t *testing.T) {
	x := newTLSFixture(t)
	caFile := filepath.Join(x.dir, pki.CACertFile)

	t.Run("mutual TLS", func(t *testing.T) {
		f := newAuthFake()
		f.enabled = false
		cfg, err := TLSFromFiles(caFile, x.clientCert, x.clientKy)
		if err != nil {
			t.Fatalf("TLSFromFiles: %v", err)
		}
		c := authClient(t, f.serveTCP(t, x.serverCreds(true)), Config{TLS: cfg})
		if _, err := c.Get(t.Context(), []byte("k")); err != nil {
			t.Fatalf("Get over mutual TLS: %v", err)
		}
		f.mu.Lock()
		cn := f.peerCN
		f.mu.Unlock()
		if cn != "alice" {
			t.Errorf("server saw client certificate CN %q, want alice", cn)
		}
	})

	other := t.TempDir()
	if _, err := pki.CreateCA(other, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		tls   func(t *testing.T) *tls.Config
		opts  []grpc.ServerOption
		check func(error) bool
	}{
		{"unknown CA", func(t *testing.T) *tls.Config {
			cfg, err := TLSFromFiles(filepath.Join(other, pki.CACertFile), "", "")
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}, []grpc.ServerOption{x.serverCreds(false)}, func(err error) bool { return errors.As(err, new(x509.UnknownAuthorityError)) }},
		{"wrong server name", func(t *testing.T) *tls.Config {
			cfg, _ := TLSFromFiles(caFile, "", "")
			cfg.ServerName = "n2"
			return cfg
		}, []grpc.ServerOption{x.serverCreds(false)}, func(err error) bool { return errors.As(err, new(x509.HostnameError)) }},
		{"plaintext server", func(t *testing.T) *tls.Config {
			cfg, _ := TLSFromFiles(caFile, "", "")
			return cfg
		}, nil, func(err error) bool { return errors.As(err, new(tls.RecordHeaderError)) }},
		{"client certificate required", func(t *testing.T) *tls.Config {
			cfg, _ := TLSFromFiles(caFile, "", "")
			return cfg
		}, []grpc.ServerOption{x.serverCreds(true)}, isTLSAlert},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newAuthFake()
			f.enabled = false
			c := authClient(t, f.serveTCP(t, tt.opts...), Config{TLS: tt.tls(t)})
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err := c.Get(ctx, []byte("k"))
			var te *TLSError
			if !errors.As(err, &te) || !tt.check(err) {
				t.Fatalf("Get = %v (%T), want a TLSError of the right kind", err, err)
			}
			if ctx.Err() != nil {
				t.Errorf("the TLS failure was retried until the deadline; want it returned at once")
			}
			if !strings.Contains(err.Error(), fakeAddr) {
				t.Errorf("error %q does not name the address", err)
			}
		})
	}

	if _, err := TLSFromFiles(filepath.Join(x.dir, "nope.crt"), "", ""); err == nil {
		t.Error("TLSFromFiles with a missing CA file = nil error")
	}
	if _, err := TLSFromFiles(caFile, x.clientCert, ""); err == nil || !strings.Contains(err.Error(), "without its key") {
		t.Errorf("TLSFromFiles with a certificate and no key = %v", err)
	}
	if _, err := TLSFromFiles(x.clientCert+"x", "", ""); err == nil {
		t.Error("TLSFromFiles with a bad path = nil error")
	}
}
