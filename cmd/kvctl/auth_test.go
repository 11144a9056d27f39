package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/internal/pki"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// authServer is a fake of the Auth service (the server side is not written
// yet): users and roles in maps, passwords kept as given. It records the
// authorization metadata of every call but Authenticate.
type authServer struct {
	kvpb.UnimplementedAuthServer
	mu        sync.Mutex
	enabled   bool
	passwords map[string]string // "" : certificate-only
	users     map[string]*kvpb.User
	roles     map[string]*kvpb.Role
	tokens    []string      // authorization metadata seen
	last      proto.Message // last request
}

type fakeSessionServer struct {
	kvpb.UnimplementedSessionServer
}

func (fakeSessionServer) Create(ctx context.Context, req *kvpb.CreateSessionRequest) (*kvpb.CreateSessionResponse, error) {
	return &kvpb.CreateSessionResponse{Session: &kvpb.SessionInfo{Id: 1, TtlMs: req.TtlMs}}, nil
}

func (fakeSessionServer) Close(ctx context.Context, req *kvpb.CloseSessionRequest) (*kvpb.CloseSessionResponse, error) {
	return &kvpb.CloseSessionResponse{}, nil
}

func newAuthServer() *authServer {
	return &authServer{
		passwords: map[string]string{"root": "rootpw"},
		users:     map[string]*kvpb.User{"root": {Name: "root", Roles: []string{"admin"}, HasPassword: true}},
		roles:     map[string]*kvpb.Role{"admin": {Name: "admin", Builtin: true}},
	}
}

func kvdErr(c codes.Code, code kvpb.ErrorCode, msg string) error {
	st, _ := status.New(c, msg).WithDetails(&kvpb.ErrorInfo{Code: code})
	return st.Err()
}

// seen records a call's token and request; the caller holds s.mu.
func (s *authServer) seen(ctx context.Context, req proto.Message) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.tokens = append(s.tokens, strings.Join(md.Get("authorization"), ","))
	s.last = req
}

func (s *authServer) Authenticate(ctx context.Context, req *kvpb.AuthenticateRequest) (*kvpb.AuthenticateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pw, ok := s.passwords[req.Name]; !ok || pw == "" || pw != req.Password {
		return nil, kvdErr(codes.Unauthenticated, kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED, "wrong user name or password")
	}
	return &kvpb.AuthenticateResponse{Token: "tok-" + req.Name, TtlMs: 60_000}, nil
}

func (s *authServer) UserAdd(ctx context.Context, req *kvpb.UserAddRequest) (*kvpb.UserAddResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	if _, ok := s.users[req.Name]; ok {
		return nil, kvdErr(codes.AlreadyExists, kvpb.ErrorCode_ERROR_CODE_USER_EXISTS, "user "+req.Name+" already exists")
	}
	u := &kvpb.User{Name: req.Name, HasPassword: req.Password != ""}
	s.users[req.Name], s.passwords[req.Name] = u, req.Password
	return &kvpb.UserAddResponse{User: u}, nil
}

func (s *authServer) user(name string) (*kvpb.User, error) {
	u, ok := s.users[name]
	if !ok {
		return nil, kvdErr(codes.NotFound, kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "user "+name+" does not exist")
	}
	return u, nil
}

func (s *authServer) UserGet(ctx context.Context, req *kvpb.UserGetRequest) (*kvpb.UserGetResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	u, err := s.user(req.Name)
	return &kvpb.UserGetResponse{User: u}, err
}

func (s *authServer) UserList(ctx context.Context, req *kvpb.UserListRequest) (*kvpb.UserListResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	resp := &kvpb.UserListResponse{}
	for _, name := range sortedNames(s.users) {
		resp.Users = append(resp.Users, s.users[name])
	}
	return resp, nil
}

func sortedNames[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (s *authServer) UserDelete(ctx context.Context, req *kvpb.UserDeleteRequest) (*kvpb.UserDeleteResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	if _, err := s.user(req.Name); err != nil {
		return nil, err
	}
	delete(s.users, req.Name)
	return &kvpb.UserDeleteResponse{}, nil
}

func (s *authServer) UserChangePassword(ctx context.Context, req *kvpb.UserChangePasswordRequest) (*kvpb.UserChangePasswordResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	u, err := s.user(req.Name)
	if err != nil {
		return nil, err
	}
	s.passwords[req.Name] = req.Password
	u.HasPassword = req.Password != ""
	return &kvpb.UserChangePasswordResponse{User: u}, nil
}

func (s *authServer) UserGrantRole(ctx context.Context, req *kvpb.UserGrantRoleRequest) (*kvpb.UserGrantRoleResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	u, err := s.user(req.User)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(u.Roles, req.Role) {
		u.Roles = append(u.Roles, req.Role)
		slices.Sort(u.Roles)
	}
	return &kvpb.UserGrantRoleResponse{User: u}, nil
}

func (s *authServer) RoleAdd(ctx context.Context, req *kvpb.RoleAddRequest) (*kvpb.RoleAddResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	if _, ok := s.roles[req.Name]; ok {
		return nil, kvdErr(codes.AlreadyExists, kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS, "role "+req.Name+" already exists")
	}
	r := &kvpb.Role{Name: req.Name}
	s.roles[req.Name] = r
	return &kvpb.RoleAddResponse{Role: r}, nil
}

func (s *authServer) RoleGet(ctx context.Context, req *kvpb.RoleGetRequest) (*kvpb.RoleGetResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	r, ok := s.roles[req.Name]
	if !ok {
		return nil, kvdErr(codes.NotFound, kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "role "+req.Name+" does not exist")
	}
	return &kvpb.RoleGetResponse{Role: r}, nil
}

func (s *authServer) RoleList(ctx context.Context, req *kvpb.RoleListRequest) (*kvpb.RoleListResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	resp := &kvpb.RoleListResponse{}
	for _, name := range sortedNames(s.roles) {
		resp.Roles = append(resp.Roles, s.roles[name])
	}
	return resp, nil
}

func (s *authServer) RoleGrantPermission(ctx context.Context, req *kvpb.RoleGrantPermissionRequest) (*kvpb.RoleGrantPermissionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	r, ok := s.roles[req.Name]
	if !ok {
		return nil, kvdErr(codes.NotFound, kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "role "+req.Name+" does not exist")
	}
	r.Permissions = append(r.Permissions, req.Permission)
	return &kvpb.RoleGrantPermissionResponse{Role: r}, nil
}

func (s *authServer) RoleRevokePermission(ctx context.Context, req *kvpb.RoleRevokePermissionRequest) (*kvpb.RoleRevokePermissionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	r, ok := s.roles[req.Name]
	if !ok {
		return nil, kvdErr(codes.NotFound, kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "role "+req.Name+" does not exist")
	}
	i := slices.IndexFunc(r.Permissions, func(p *kvpb.Permission) bool {
		return p.Kind == req.Kind && bytes.Equal(p.Prefix, req.Prefix)
	})
	if i < 0 {
		return nil, kvdErr(codes.NotFound, kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "no such permission")
	}
	r.Permissions = slices.Delete(r.Permissions, i, i+1)
	return &kvpb.RoleRevokePermissionResponse{Role: r}, nil
}

func (s *authServer) AuthEnable(ctx context.Context, req *kvpb.AuthEnableRequest) (*kvpb.AuthEnableResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	s.enabled = true
	return &kvpb.AuthEnableResponse{}, nil
}

func (s *authServer) AuthDisable(ctx context.Context, req *kvpb.AuthDisableRequest) (*kvpb.AuthDisableResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	s.enabled = false
	return &kvpb.AuthDisableResponse{}, nil
}

func (s *authServer) AuthStatus(ctx context.Context, req *kvpb.AuthStatusRequest) (*kvpb.AuthStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen(ctx, req)
	return &kvpb.AuthStatusResponse{Enabled: s.enabled, Revision: 42}, nil
}

func (s *authServer) lastRequest() proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// serveAuth starts the fake (on lis, with opts) and points kvctl at it.
func serveAuth(t *testing.T, lis net.Listener, dial func(ctx context.Context) (net.Conn, error), opts ...grpc.ServerOption) *authServer {
	t.Helper()
	s := newAuthServer()
	srv := grpc.NewServer(opts...)
	kvpb.RegisterAuthServer(srv, s)
	kvpb.RegisterSessionServer(srv, fakeSessionServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	old := testDialer
	testDialer = func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }
	t.Cleanup(func() { testDialer = old })
	return s
}

func newFakeAuth(t *testing.T) *authServer {
	lis := bufconn.Listen(1 << 20)
	return serveAuth(t, lis, lis.DialContext)
}

// kvctlRun runs kvctl against the fake with stdin.
func kvctlRun(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"--endpoints", "127.0.0.1:2379", "--timeout", "5s"}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// withPrompt makes the password prompt answer from answers, in order.
func withPrompt(t *testing.T, answers ...string) {
	old := prompt
	prompt = func(a *app, msg string) (string, error) {
		if len(answers) == 0 {
			return "", errors.New("no more answers")
		}
		ans := answers[0]
		answers = answers[1:]
		return ans, nil
	}
	t.Cleanup(func() { prompt = old })
}

func TestUserCommands(t *testing.T) {
	s := newFakeAuth(t)
	tests := []struct {
		name   string
		stdin  string
		prompt []string
		args   []string
		code   int
		out    string // a part of stdout ("" : anything)
		errOut string // a part of stderr
	}{
		{"add from stdin", "s3cret\n", nil, []string{"user", "add", "bob", "--password-stdin"}, exitOK, "user bob added\n", ""},
		{"add exists", "x\n", nil, []string{"user", "add", "bob", "--password-stdin"}, exitFailed, "", "already exists"},
		{"add prompted", "", []string{"pw1", "pw1"}, []string{"user", "add", "carol"}, exitOK, "user carol added", ""},
		{"add prompts differ", "", []string{"pw1", "pw2"}, []string{"user", "add", "dave"}, exitUsage, "", "differ"},
		{"add empty password", "\n", nil, []string{"user", "add", "dave", "--password-stdin"}, exitUsage, "", "--no-password"},
		{"add no terminal", "", nil, []string{"user", "add", "dave"}, exitUsage, "", "--password-stdin"},
		{"add cert only", "", nil, []string{"user", "add", "erin", "--no-password"}, exitOK, "user erin added", ""},
		{"add both", "x\n", nil, []string{"user", "add", "x", "--no-password", "--password-stdin"}, exitUsage, "", "give one"},
		{"get", "", nil, []string{"user", "get", "erin"}, exitOK, "password: no (certificate only)", ""},
		{"get missing", "", nil, []string{"user", "get", "zed"}, exitNotFound, "", "user zed"},
		{"grant-role", "", nil, []string{"user", "grant-role", "bob", "app"}, exitOK, "user bob: roles app\n", ""},
		{"list", "", nil, []string{"user", "list"}, exitOK, "bob    app    yes", ""},
		{"passwd", "new\n", nil, []string{"user", "passwd", "bob", "--password-stdin"}, exitOK, "password of user bob changed", ""},
		{"passwd missing", "new\n", nil, []string{"user", "passwd", "zed", "--password-stdin"}, exitNotFound, "", "user zed"},
		{"delete", "", nil, []string{"user", "delete", "carol"}, exitOK, "user carol deleted", ""},
		{"delete args", "", nil, []string{"user", "delete"}, exitUsage, "", "want 1 argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prompt != nil {
				withPrompt(t, tt.prompt...)
			}
			code, out, errOut := kvctlRun(tt.stdin, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.errOut) {
				t.Errorf("kvctl %q: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					tt.args, code, out, errOut, tt.code, tt.out, tt.errOut)
			}
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.passwords["bob"] != "new" || s.passwords["erin"] != "" || s.users["erin"].HasPassword {
		t.Errorf("passwords on the server: bob %q, erin %q; want new and none", s.passwords["bob"], s.passwords["erin"])
	}
	if _, ok := s.users["carol"]; ok {
		t.Error("carol still exists")
	}
}

func TestUserJSON(t *testing.T) {
	newFakeAuth(t)
	code, out, errOut := kvctlRun("", "user", "get", "root", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got struct {
		User struct {
			Name        string   `json:"name"`
			Roles       []string `json:"roles"`
			HasPassword bool     `json:"has_password"`
		} `json:"user"`
	}
	u := &got.User
	if err := json.Unmarshal([]byte(out), &got); err != nil || u.Name != "root" || !slices.Equal(u.Roles, []string{"admin"}) || !u.HasPassword {
		t.Errorf("user get -o json = %s (%v), want root with role admin", out, err)
	}
}

func TestRoleCommands(t *testing.T) {
	s := newFakeAuth(t)
	for _, tt := range []struct {
		args   []string
		code   int
		out    string
		errOut string
	}{
		{[]string{"role", "add", "app"}, exitOK, "role app added", ""},
		{[]string{"role", "grant", "app", "--perm", "readwrite", "--keys", "app/"}, exitOK, `role app: readwrite on keys "app/"`, ""},
		{[]string{"role", "grant", "app", "--perm", "read", "--cache", ""}, exitOK, `read on cache ""`, ""},
		{[]string{"role", "grant", "app", "--perm", "write", "--keys", "a"}, exitUsage, "", "--perm"},
		{[]string{"role", "grant", "app", "--perm", "read"}, exitUsage, "", "exactly one of --keys"},
		{[]string{"role", "grant", "app", "--perm", "read", "--keys", "a", "--locks", "b"}, exitUsage, "", "exactly one of --keys"},
		{[]string{"role", "grant", "nope", "--perm", "read", "--locks", "b"}, exitNotFound, "", "role nope"},
		{[]string{"role", "get", "app"}, exitOK, "  keys   app/      readwrite\n  cache  \"\" (all)  read\n", ""},
		{[]string{"role", "get", "admin"}, exitOK, "built in", ""},
		{[]string{"role", "list"}, exitOK, "admin\napp\n", ""},
		{[]string{"role", "revoke", "app", "--cache", ""}, exitOK, "no permission on cache", ""},
		{[]string{"role", "revoke", "app", "--locks", "zz"}, exitNotFound, "", "role app"},
	} {
		code, out, errOut := kvctlRun("", tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.errOut) {
			t.Errorf("kvctl %q: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				tt.args, code, out, errOut, tt.code, tt.out, tt.errOut)
		}
	}
	want := &kvpb.RoleRevokePermissionRequest{Name: "app", Kind: kvpb.PermKind_PERM_KIND_LOCKS, Prefix: []byte("zz")}
	got := proto.CloneOf(s.lastRequest().(*kvpb.RoleRevokePermissionRequest))
	if got.GetHeader().GetSession() == 0 || got.GetHeader().GetSeq() == 0 {
		t.Errorf("role revoke sent header %v, want a session and seq (exactly-once)", got.GetHeader())
	}
	got.Header = nil
	if !proto.Equal(got, want) {
		t.Errorf("last request %v, want %v", got, want)
	}
	code, out, _ := kvctlRun("", "role", "get", "app", "-o", "json")
	type perm struct {
		Kind   string `json:"kind"`
		Prefix string `json:"prefix"`
		Level  string `json:"level"`
	}
	var shown struct {
		Role struct {
			Permissions []perm `json:"permissions"`
		} `json:"role"`
	}
	r := &shown.Role
	if err := json.Unmarshal([]byte(out), &shown); code != exitOK || err != nil || len(r.Permissions) != 1 ||
		r.Permissions[0] != (perm{Kind: "keys", Prefix: "app/", Level: "readwrite"}) {
		t.Errorf("role get -o json = %s (exit %d), want app with keys app/ readwrite", out, code)
	}
}

func TestAuthCommands(t *testing.T) {
	s := newFakeAuth(t)
	for _, tt := range []struct {
		args []string
		out  string
	}{
		{[]string{"auth", "status"}, "auth disabled (revision 42)\n"},
		{[]string{"auth", "enable"}, "auth enabled\n"},
		// The fake answers with no header: its fields are zero.
		{[]string{"auth", "status", "-o", "json"}, `{"header":{"applied_index":0,"log_time_ns":0,"log_time":"","served_by":"","stale":false,"term":0},"enabled":true,"revision":42}` + "\n"},
		{[]string{"auth", "disable"}, "auth disabled\n"},
	} {
		code, out, errOut := kvctlRun("", tt.args...)
		if code != exitOK || out != tt.out {
			t.Errorf("kvctl %q: exit %d, stdout %q, stderr %q; want 0 and %q", tt.args, code, out, errOut, tt.out)
		}
	}
	if s.enabled {
		t.Error("auth still enabled on the fake after auth disable")
	}
}

func TestSignInFlags(t *testing.T) {
	s := newFakeAuth(t)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("rootpw\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lastToken := func() string {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.tokens[len(s.tokens)-1]
	}

	if code, _, errOut := kvctlRun("", "--user", "root", "--password-file", pwFile, "auth", "status"); code != exitOK {
		t.Fatalf("--password-file: exit %d, %s", code, errOut)
	}
	if tok := lastToken(); tok != "Bearer tok-root" {
		t.Errorf("request carried %q, want the token of root", tok)
	}

	t.Setenv("KVD_USER", "root")
	t.Setenv("KVD_PASSWORD", "rootpw")
	if code, _, errOut := kvctlRun("", "auth", "status"); code != exitOK || lastToken() != "Bearer tok-root" {
		t.Errorf("KVD_USER/KVD_PASSWORD: exit %d (%s), token %q", code, errOut, lastToken())
	}
	t.Setenv("KVD_PASSWORD", "wrong")
	if code, _, errOut := kvctlRun("", "auth", "status"); code != exitAuth || !strings.Contains(errOut, "wrong user name or password") {
		t.Errorf("wrong password: exit %d, stderr %q", code, errOut)
	}
	os.Unsetenv("KVD_PASSWORD")
	withPrompt(t, "rootpw")
	if code, _, errOut := kvctlRun("", "auth", "status"); code != exitOK {
		t.Errorf("prompted password: exit %d, %s", code, errOut)
	}
	t.Setenv("KVD_USER", "")

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--password-file", pwFile, "auth", "status"}, "--password-file: given without --user"},
		{[]string{"--user", "root", "--password-file", pwFile + ".missing", "auth", "status"}, "--password-file"},
		{[]string{"--user", "root", "auth", "status"}, "no password"},
		{[]string{"--cacert", pwFile + ".missing", "auth", "status"}, "CA file"},
		{[]string{"--cert", pwFile, "auth", "status"}, "without its key"},
	} {
		code, _, errOut := kvctlRun("", tt.args...)
		if code != exitUsage || !strings.Contains(errOut, tt.want) {
			t.Errorf("kvctl %q: exit %d, stderr %q; want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
}

// TestTLSFlags runs kvctl over mutual TLS (loopback TCP) with --cacert,
// --cert and --key, and with the same files from the environment.
func TestTLSFlags(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.CreateCA(dir, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	node, err := pki.CreateNode(dir, "", "n1", nil, 30*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := pki.CreateClient(dir, "", "alice", 30*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(node.CertPath, node.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCert(filepath.Join(dir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	serveAuth(t, lis, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", lis.Addr().String()) }, grpc.Creds(creds))

	caFile := filepath.Join(dir, pki.CACertFile)
	code, out, errOut := kvctlRun("", "--cacert", caFile, "--cert", cl.CertPath, "--key", cl.KeyPath, "auth", "status")
	if code != exitOK || !strings.Contains(out, "auth disabled") {
		t.Fatalf("over mutual TLS: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	t.Setenv("KVD_CACERT", caFile)
	t.Setenv("KVD_CERT", cl.CertPath)
	t.Setenv("KVD_KEY", cl.KeyPath)
	if code, _, errOut := kvctlRun("", "auth", "status"); code != exitOK {
		t.Errorf("with KVD_CACERT, KVD_CERT, KVD_KEY: exit %d, stderr %q", code, errOut)
	}
	// Without a client certificate the server refuses, and kvctl says so at once.
	t.Setenv("KVD_CERT", "")
	t.Setenv("KVD_KEY", "")
	start := time.Now()
	code, _, errOut = kvctlRun("", "auth", "status")
	if code != exitTLS || !strings.Contains(errOut, "TLS with 127.0.0.1:2379 failed") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("without a client certificate: exit %d, stderr %q; want 9 and one line about TLS", code, errOut)
	}
	if time.Since(start) > 4*time.Second {
		t.Errorf("the TLS failure took %v; want it reported without retrying until --timeout", time.Since(start))
	}
}
