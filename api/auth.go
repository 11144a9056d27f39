package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/node"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Authentication and authorization.
//
// While auth is disabled (the replicated flag, as this node has applied it)
// every request is allowed and names no user. Once it is enabled, every
// request but Authenticate, gRPC health and reflection must name a user,
// by one of:
//   - a token from Authenticate, in metadata "authorization: Bearer <token>":
//     an HMAC-SHA256 over (user, the user's revision, the index of the
//     entry that enabled auth, expiry) under the replicated signing key, so
//     any member can check it without asking another; changing the user's
//     password, deleting the user, or disabling auth revokes it at once;
//   - a verified client certificate, whose CN is the user's name.
//
// A token is checked against this member's wall clock; members' clocks
// should agree within a fraction of the token TTL (minutes by default).
// Roles are checked before anything is proposed. Who owns a session is
// checked against the session's creation entry, which never changes: the
// member first waits until it has applied that entry.

// adminMethods need the admin role.
var adminMethods = map[string]bool{
	kvpb.Cluster_AddMember_FullMethodName:         true,
	kvpb.Cluster_RemoveMember_FullMethodName:      true,
	kvpb.Cluster_TransferLeader_FullMethodName:    true,
	kvpb.Cluster_Snapshot_FullMethodName:          true,
	kvpb.Cluster_SnapshotSave_FullMethodName:      true,
	kvpb.Lock_Break_FullMethodName:                true,
	kvpb.Auth_AuthEnable_FullMethodName:           true,
	kvpb.Auth_AuthDisable_FullMethodName:          true,
	kvpb.Auth_UserAdd_FullMethodName:              true,
	kvpb.Auth_UserDelete_FullMethodName:           true,
	kvpb.Auth_UserList_FullMethodName:             true,
	kvpb.Auth_UserGrantRole_FullMethodName:        true,
	kvpb.Auth_UserRevokeRole_FullMethodName:       true,
	kvpb.Auth_RoleAdd_FullMethodName:              true,
	kvpb.Auth_RoleDelete_FullMethodName:           true,
	kvpb.Auth_RoleGet_FullMethodName:              true,
	kvpb.Auth_RoleList_FullMethodName:             true,
	kvpb.Auth_RoleGrantPermission_FullMethodName:  true,
	kvpb.Auth_RoleRevokePermission_FullMethodName: true,
}

// publicMethod needs no identity even with auth on: signing in, health,
// reflection, and a member's own status (role, term, indexes, leader),
// which health checks and clients looking for the leader ask before they
// can sign in. (What Status tells is no help to a forger: the peer port
// wants a member certificate.)
func publicMethod(method string) bool {
	return method == kvpb.Auth_Authenticate_FullMethodName || method == kvpb.Cluster_Status_FullMethodName ||
		strings.HasPrefix(method, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(method, "/grpc.reflection.")
}

type userKey struct{}

// authRevKey holds the auth revision a request is checked against: read
// before any check, and carried in its command so that apply refuses it if
// users, roles or the enabled flag changed in between.
type authRevKey struct{}

// userOf is the user the interceptor named ("", false when auth was
// disabled in this member's state when the request arrived).
func userOf(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(userKey{}).(string)
	return u, ok
}

// identity is the user to check a request against, judged on this
// member's auth state now: the interceptor's user; or, when auth was off
// then but is on now (a linearizable read has since caught this member
// up), the user the request's credentials name. enforced is false while
// auth is off.
func (s *Server) identity(ctx context.Context) (user string, enforced bool, err error) {
	if u, ok := userOf(ctx); ok {
		return u, true, nil
	}
	v := s.b.FSM().Auth()
	if !v.Enabled() {
		return "", false, nil
	}
	u, err := s.identify(ctx, v)
	return u, err == nil, err
}

// requireAdmin refuses a caller without the admin role (nothing while
// auth is off). Calls that change no replicated state (membership,
// transfer, snapshots) run it after a linearizable read, so a member that
// had not yet applied an auth change has caught up.
func (s *Server) requireAdmin(ctx context.Context, what string) error {
	user, enforced, err := s.identity(ctx)
	if err != nil || !enforced {
		return err
	}
	if !s.b.FSM().Auth().IsAdmin(user) {
		return denied("%s needs the admin role; user %q does not hold it", what, user)
	}
	return nil
}

// propose runs a client's command through the log, carrying the auth
// revision its checks used. A command refused at apply because auth changed
// since (AUTH_REVISION_STALE) was neither applied nor remembered: this
// member catches up to the change and answers NOT_LEADER, which clients
// retry, and the retry is checked afresh. A command naming a session this
// member knows has ended is refused without a log entry.
func (s *Server) propose(ctx context.Context, cmd *kvpb.Command) (*kvpb.CommandResult, node.Applied, error) {
	if err := s.checkSessionLive(commandSession(cmd)); err != nil {
		return nil, node.Applied{}, err
	}
	if rev, ok := ctx.Value(authRevKey{}).(uint64); ok {
		cmd.AuthRevision = &rev
	}
	res, at, err := s.b.Propose(ctx, cmd)
	if err != nil || res.GetCode() != kvpb.ErrorCode_ERROR_CODE_AUTH_REVISION_STALE {
		return res, at, err
	}
	wctx, cancel := context.WithTimeout(ctx, 4*s.b.ElectionTimeout())
	s.b.WaitApplied(wctx, res.GetAuthRevision())
	cancel()
	return nil, node.Applied{}, &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER,
		Msg: "users or roles changed while the request was in flight; it was not applied: retry"}
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return handler(ctx, req)
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return s.toStatus(err)
	}
	return handler(srv, &authedStream{ServerStream: ss, ctx: ctx})
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *authedStream) Context() context.Context { return a.ctx }

// authorize names the request's user (auth on) and refuses admin methods
// to non-admins.
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	if publicMethod(method) {
		return ctx, nil
	}
	v := s.b.FSM().Auth()
	ctx = context.WithValue(ctx, authRevKey{}, v.Revision())
	if !v.Enabled() {
		return ctx, nil
	}
	user, err := s.identify(ctx, v)
	if err != nil {
		return ctx, err
	}
	if adminMethods[method] && !v.IsAdmin(user) {
		m := method[strings.LastIndex(method, "/")+1:]
		return ctx, denied("%s needs the admin role; user %q does not hold it", m, user)
	}
	return context.WithValue(ctx, userKey{}, user), nil
}

func denied(format string, args ...any) error {
	return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, Msg: "permission denied: " + fmt.Sprintf(format, args...)}
}

func unauthenticated(code kvpb.ErrorCode, msg string) error {
	return &node.Error{Code: code, Msg: msg}
}

// identify finds the request's user: a token, else a verified client
// certificate.
func (s *Server) identify(ctx context.Context, v *fsm.AuthView) (string, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vals := md.Get("authorization"); len(vals) > 0 {
			tok, ok := strings.CutPrefix(vals[0], "Bearer ")
			if !ok {
				return "", unauthenticated(kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, `authorization metadata: want "Bearer <token>"`)
			}
			return checkToken(v, tok, time.Now())
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := tlsInfo(p.AuthInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			cn := ti.State.VerifiedChains[0][0].Subject.CommonName
			if cn == "" || v.User(cn) == nil {
				return "", unauthenticated(kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED,
					fmt.Sprintf("client certificate names user %q, which does not exist", cn))
			}
			return cn, nil
		}
	}
	return "", unauthenticated(kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED,
		"auth is enabled: sign in with a user name and password (--user) or a client certificate (--cert, --key)")
}

// Tokens: base64url(payload) "." base64url(HMAC-SHA256(key, payload)), with
// payload "v1|user|revision|keyIndex|expiryUnix".
func issueToken(v *fsm.AuthView, user string, revision uint64, ttl time.Duration, now time.Time) (string, error) {
	key, keyIndex := v.TokenKey()
	if len(key) == 0 {
		return "", unauthenticated(kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED, "auth is disabled: requests need no token")
	}
	payload := fmt.Sprintf("v1|%s|%d|%d|%d", user, revision, keyIndex, now.Add(ttl).Unix())
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(payload))
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(mac.Sum(nil)), nil
}

func checkToken(v *fsm.AuthView, tok string, now time.Time) (string, error) {
	malformed := unauthenticated(kvpb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "malformed token: authenticate again")
	p64, m64, ok := strings.Cut(tok, ".")
	if !ok || len(tok) > 1024 {
		return "", malformed
	}
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p64)
	sum, err2 := enc.DecodeString(m64)
	if err1 != nil || err2 != nil {
		return "", malformed
	}
	expired := unauthenticated(kvpb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED, "token expired or revoked: authenticate again")
	key, keyIndex := v.TokenKey()
	if len(key) == 0 {
		return "", expired
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(payload)
	if !hmac.Equal(sum, mac.Sum(nil)) {
		// Signed under an earlier key (auth disabled and enabled again)
		// or forged: either way the holder must sign in again.
		return "", expired
	}
	parts := strings.Split(string(payload), "|")
	if len(parts) != 5 || parts[0] != "v1" {
		return "", malformed
	}
	rev, err1 := strconv.ParseUint(parts[2], 10, 64)
	ki, err2 := strconv.ParseUint(parts[3], 10, 64)
	exp, err3 := strconv.ParseInt(parts[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return "", malformed
	}
	user := parts[1]
	cur, ok := v.UserRevision(user)
	if ki != keyIndex || !ok || cur != rev || now.Unix() >= exp {
		return "", expired
	}
	return user, nil
}

// allow refuses a request whose user's roles do not grant level on key of
// kind (nothing to check while auth is disabled).
func (s *Server) allow(ctx context.Context, kind kvpb.PermKind, key []byte, level kvpb.PermLevel) error {
	user, enforced, err := s.identity(ctx)
	if err != nil || !enforced {
		return err
	}
	if s.b.FSM().Auth().Allowed(user, kind, key, level) {
		return nil
	}
	lv := "read"
	if level == kvpb.PermLevel_PERM_LEVEL_READWRITE {
		lv = "readwrite"
	}
	kn := strings.ToLower(strings.TrimPrefix(kind.String(), "PERM_KIND_"))
	return denied("user %q needs %s on %s %q", user, lv, kn, key)
}

// authz runs the authorization checks of a request in order; the first
// refusal wins. Each is a func so that none runs (none waits) after one
// refused.
// readAllowed confirms a read at consistency c, then checks that the caller
// may read name of kind: after the read, so that a member behind on an auth
// change has caught up by then. Its errors are gRPC statuses.
func (n *Server) readAllowed(ctx context.Context, c kvpb.Consistency, kind kvpb.PermKind, name []byte) (int64, *kvpb.ResponseHeader, error) {
	now, hdr, err := n.b.Read(ctx, c)
	if err != nil {
		return 0, nil, n.toStatus(err)
	}
	if err := n.authz(func() error { return n.allow(ctx, kind, name, kvpb.PermLevel_PERM_LEVEL_READ) }); err != nil {
		return 0, nil, n.toStatus(err)
	}
	return now, hdr, nil
}

func (s *Server) authz(checks ...func() error) error {
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

// allowFence: a fenced write reads the lock's state, so it needs read on
// the lock.
func (s *Server) allowFence(ctx context.Context, f *kvpb.Fence) error {
	if f == nil {
		return nil
	}
	return s.allow(ctx, kvpb.PermKind_PERM_KIND_LOCKS, f.GetLock(), kvpb.PermLevel_PERM_LEVEL_READ)
}

// allowTxn checks every key a transaction may touch, in both branches
// (which one runs is decided in its entry): read on what it compares or
// gets (a LOCK_TOKEN compare reads a lock), readwrite on what it puts or
// deletes (a delete-prefix on the prefix), and ownership of every session
// a put binds a key to.
func (s *Server) allowTxn(ctx context.Context, req *kvpb.TxnRequest) error {
	const read, write = kvpb.PermLevel_PERM_LEVEL_READ, kvpb.PermLevel_PERM_LEVEL_READWRITE
	keys := kvpb.PermKind_PERM_KIND_KEYS
	if _, enforced, err := s.identity(ctx); err != nil || !enforced {
		return err
	}
	for _, c := range req.GetCompares() {
		kind := keys
		if c.GetTarget() == kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN {
			kind = kvpb.PermKind_PERM_KIND_LOCKS
		}
		if err := s.allow(ctx, kind, c.GetKey(), read); err != nil {
			return err
		}
	}
	for _, ops := range [][]*kvpb.TxnOp{req.GetSuccess(), req.GetFailure()} {
		for _, op := range ops {
			var err error
			switch o := op.GetOp().(type) {
			case *kvpb.TxnOp_Put:
				err = s.allow(ctx, keys, o.Put.GetKey(), write)
				if err == nil {
					err = s.ownSession(ctx, o.Put.GetSession())
				}
			case *kvpb.TxnOp_Delete:
				err = s.allow(ctx, keys, o.Delete.GetKey(), write)
			case *kvpb.TxnOp_Get:
				err = s.allow(ctx, keys, o.Get.GetKey(), read)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// ownSession refuses a request that uses a session the user did not create
// (an admin may use any). Sessions made while auth was off have no owner:
// only an admin may use them once it is on.
func (s *Server) ownSession(ctx context.Context, id uint64) error {
	if id == 0 {
		return nil
	}
	user, enforced, err := s.identity(ctx)
	if err != nil || !enforced {
		return err
	}
	v := s.b.FSM().Auth()
	if v.IsAdmin(user) {
		return nil
	}
	// The session was created by entry id: once that is applied here, its
	// owner is known for good.
	wctx, cancel := context.WithTimeout(ctx, 4*s.b.ElectionTimeout())
	err = s.b.WaitApplied(wctx, id)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER,
			Msg: fmt.Sprintf("this member has not yet applied session %d; retry (elsewhere)", id)}
	}
	owner, ok := s.b.FSM().SessionOwner(id)
	if !ok {
		return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED, Msg: fmt.Sprintf("session %d is unknown or expired", id)}
	}
	if owner != user {
		return denied("session %d belongs to another user", id)
	}
	return nil
}

// ownLock refuses a release or renewal of a lock held under token by a
// session the user does not own: knowing a token is not enough.
func (s *Server) ownLock(ctx context.Context, name []byte, token uint64) error {
	if _, enforced, err := s.identity(ctx); err != nil || !enforced {
		return err
	}
	// The token is the index of the granting entry.
	wctx, cancel := context.WithTimeout(ctx, 4*s.b.ElectionTimeout())
	err := s.b.WaitApplied(wctx, token)
	cancel()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	session, ok := s.b.FSM().LockHolder(name, token)
	if !ok {
		if err != nil {
			return &node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_LEADER,
				Msg: fmt.Sprintf("this member has not yet applied token %d; retry (elsewhere)", token)}
		}
		return nil // not the current token: the fsm answers STALE_TOKEN
	}
	return s.ownSession(ctx, session)
}

// authService is the Auth gRPC service.
type authService struct {
	kvpb.UnimplementedAuthServer
	n *Server
}

// errAuthFailed never says whether the user exists.
var errAuthFailed = unauthenticated(kvpb.ErrorCode_ERROR_CODE_AUTH_FAILED, "authentication failed: wrong user name or password")

// dummyHash is compared against when the user does not exist, so a wrong
// name costs as long as a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("kvd: no such user"), bcrypt.DefaultCost)

func (a *authService) Authenticate(ctx context.Context, req *kvpb.AuthenticateRequest) (*kvpb.AuthenticateResponse, error) {
	n := a.n
	if len(req.GetName()) > fsm.MaxAuthNameLen || len(req.GetPassword()) > maxPasswordBytes {
		return nil, n.toStatus(errAuthFailed)
	}
	v := n.b.FSM().Auth()
	if !v.Enabled() {
		return nil, n.toStatus(unauthenticated(kvpb.ErrorCode_ERROR_CODE_AUTH_DISABLED, "auth is disabled: requests need no token"))
	}
	if err := n.bcryptSlot(ctx); err != nil {
		return nil, n.toStatus(err)
	}
	defer n.bcryptDone()
	hash, rev, ok := v.Credentials(req.GetName())
	if !ok || len(hash) == 0 {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(req.GetPassword()))
		return nil, n.toStatus(errAuthFailed)
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(req.GetPassword())) != nil {
		return nil, n.toStatus(errAuthFailed)
	}
	tok, err := issueToken(v, req.GetName(), rev, n.tokenTTL, time.Now())
	if err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.AuthenticateResponse{Header: n.b.LocalHeader(), Token: tok, TtlMs: n.tokenTTL.Milliseconds()}, nil
}

// maxPasswordBytes is bcrypt's own limit.
const maxPasswordBytes = 72

// bcryptSlot bounds the CPU that password hashing and checking may take:
// a flood of Authenticate calls queues instead of taking every core.
func (s *Server) bcryptSlot(ctx context.Context) error {
	select {
	case s.bcryptSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) bcryptDone() { <-s.bcryptSem }

// hashPassword hashes a password before it is proposed (never in apply).
func (s *Server) hashPassword(ctx context.Context, password string) ([]byte, error) {
	if len(password) > maxPasswordBytes {
		return nil, invalid("password", maxPasswordBytes, "password: %d bytes exceeds bcrypt's limit of %d", len(password), maxPasswordBytes)
	}
	if err := s.bcryptSlot(ctx); err != nil {
		return nil, err
	}
	defer s.bcryptDone()
	h, err := bcrypt.GenerateFromPassword([]byte(password), s.bcryptCost)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	return h, nil
}

func checkAuthName(field, name string) error {
	if err := fsm.CheckAuthName(name); err != nil {
		return invalid(field, fsm.MaxAuthNameLen, "%s: %v", field, err)
	}
	return nil
}

// withPasswordHashed returns the password fields with a plaintext password
// replaced by its hash. Exactly one of password, hash and noPassword.
func (s *Server) withPasswordHashed(ctx context.Context, password string, hash []byte, noPassword bool) ([]byte, error) {
	set := 0
	for _, b := range []bool{password != "", len(hash) > 0, noPassword} {
		if b {
			set++
		}
	}
	if set != 1 {
		return nil, invalid("password", 0, "give exactly one of password, password_hash and no_password")
	}
	if password == "" {
		if len(hash) > 0 {
			if err := fsm.CheckPasswordHash(hash); err != nil {
				return nil, invalid("password_hash", 0, "password_hash: %v", err)
			}
		}
		return hash, nil
	}
	return s.hashPassword(ctx, password)
}

func (a *authService) AuthEnable(ctx context.Context, req *kvpb.AuthEnableRequest) (*kvpb.AuthEnableResponse, error) {
	n := a.n
	if err := n.checkHeader(req.GetHeader()); err != nil {
		return nil, n.toStatus(err)
	}
	key := make([]byte, fsm.TokenKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, n.toStatus(fmt.Errorf("token key: %w", err))
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_AuthEnable{AuthEnable: &kvpb.AuthEnableOp{Header: req.GetHeader(), TokenKey: key}}},
		func(*kvpb.CommandResult) *kvpb.AuthEnableResponse { return &kvpb.AuthEnableResponse{} })
}

func (a *authService) AuthDisable(ctx context.Context, req *kvpb.AuthDisableRequest) (*kvpb.AuthDisableResponse, error) {
	n := a.n
	if err := n.checkHeader(req.GetHeader()); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_AuthDisable{AuthDisable: req}},
		func(*kvpb.CommandResult) *kvpb.AuthDisableResponse { return &kvpb.AuthDisableResponse{} })
}

func (a *authService) AuthStatus(ctx context.Context, req *kvpb.AuthStatusRequest) (*kvpb.AuthStatusResponse, error) {
	n := a.n
	_, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if _, _, err := n.identity(ctx); err != nil {
		return nil, n.toStatus(err)
	}
	v := n.b.FSM().Auth()
	return &kvpb.AuthStatusResponse{Header: hdr, Enabled: v.Enabled(), Revision: v.Revision()}, nil
}

func (a *authService) UserAdd(ctx context.Context, req *kvpb.UserAddRequest) (*kvpb.UserAddResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	hash, err := n.withPasswordHashed(ctx, req.GetPassword(), req.GetPasswordHash(), req.GetNoPassword())
	if err != nil {
		return nil, n.toStatus(err)
	}
	op := proto.CloneOf(req)
	op.Password, op.PasswordHash = "", hash
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_UserAdd{UserAdd: op}}, (*kvpb.CommandResult).GetUserAdd)
}

func (a *authService) UserChangePassword(ctx context.Context, req *kvpb.UserChangePasswordRequest) (*kvpb.UserChangePasswordResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	if user, enforced, err := n.identity(ctx); err != nil {
		return nil, n.toStatus(err)
	} else if enforced && user != req.GetName() && !n.b.FSM().Auth().IsAdmin(user) {
		return nil, n.toStatus(denied("user %q may change only its own password (or needs the admin role)", user))
	}
	hash, err := n.withPasswordHashed(ctx, req.GetPassword(), req.GetPasswordHash(), req.GetNoPassword())
	if err != nil {
		return nil, n.toStatus(err)
	}
	op := proto.CloneOf(req)
	op.Password, op.PasswordHash = "", hash
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_UserChangePassword{UserChangePassword: op}}, (*kvpb.CommandResult).GetUserChangePassword)
}

func (a *authService) UserDelete(ctx context.Context, req *kvpb.UserDeleteRequest) (*kvpb.UserDeleteResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_UserDelete{UserDelete: req}}, (*kvpb.CommandResult).GetUserDelete)
}

func (a *authService) UserGrantRole(ctx context.Context, req *kvpb.UserGrantRoleRequest) (*kvpb.UserGrantRoleResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("user", req.GetUser()), checkAuthName("role", req.GetRole())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_UserGrantRole{UserGrantRole: req}}, (*kvpb.CommandResult).GetUserGrantRole)
}

func (a *authService) UserRevokeRole(ctx context.Context, req *kvpb.UserRevokeRoleRequest) (*kvpb.UserRevokeRoleResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("user", req.GetUser()), checkAuthName("role", req.GetRole())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_UserRevokeRole{UserRevokeRole: req}}, (*kvpb.CommandResult).GetUserRevokeRole)
}

func (a *authService) RoleAdd(ctx context.Context, req *kvpb.RoleAddRequest) (*kvpb.RoleAddResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_RoleAdd{RoleAdd: req}}, (*kvpb.CommandResult).GetRoleAdd)
}

func (a *authService) RoleDelete(ctx context.Context, req *kvpb.RoleDeleteRequest) (*kvpb.RoleDeleteResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_RoleDelete{RoleDelete: req}}, (*kvpb.CommandResult).GetRoleDelete)
}

func (a *authService) RoleGrantPermission(ctx context.Context, req *kvpb.RoleGrantPermissionRequest) (*kvpb.RoleGrantPermissionResponse, error) {
	n := a.n
	p := req.GetPermission()
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName()), n.checkKeyLen("permission.prefix", p.GetPrefix())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_RoleGrantPermission{RoleGrantPermission: req}}, (*kvpb.CommandResult).GetRoleGrantPermission)
}

func (a *authService) RoleRevokePermission(ctx context.Context, req *kvpb.RoleRevokePermissionRequest) (*kvpb.RoleRevokePermissionResponse, error) {
	n := a.n
	if err := firstErr(n.checkHeader(req.GetHeader()), checkAuthName("name", req.GetName()), n.checkKeyLen("prefix", req.GetPrefix())); err != nil {
		return nil, n.toStatus(err)
	}
	return writeAs(ctx, n, &kvpb.Command{Op: &kvpb.Command_RoleRevokePermission{RoleRevokePermission: req}}, (*kvpb.CommandResult).GetRoleRevokePermission)
}

func (a *authService) UserGet(ctx context.Context, req *kvpb.UserGetRequest) (*kvpb.UserGetResponse, error) {
	n := a.n
	_, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if user, enforced, err := n.identity(ctx); err != nil {
		return nil, n.toStatus(err)
	} else if enforced && user != req.GetName() && !n.b.FSM().Auth().IsAdmin(user) {
		return nil, n.toStatus(denied("user %q may look up only itself (or needs the admin role)", user))
	}
	u := n.b.FSM().Auth().User(req.GetName())
	if u == nil {
		return nil, n.toStatus(&node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, Msg: fmt.Sprintf("no user named %q", req.GetName())})
	}
	return &kvpb.UserGetResponse{Header: hdr, User: u}, nil
}

func (a *authService) UserList(ctx context.Context, req *kvpb.UserListRequest) (*kvpb.UserListResponse, error) {
	n := a.n
	_, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.requireAdmin(ctx, "UserList"); err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.UserListResponse{Header: hdr, Users: n.b.FSM().Auth().Users()}, nil
}

func (a *authService) RoleGet(ctx context.Context, req *kvpb.RoleGetRequest) (*kvpb.RoleGetResponse, error) {
	n := a.n
	_, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.requireAdmin(ctx, "RoleGet"); err != nil {
		return nil, n.toStatus(err)
	}
	r := n.b.FSM().Auth().Role(req.GetName())
	if r == nil {
		return nil, n.toStatus(&node.Error{Code: kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, Msg: fmt.Sprintf("no role named %q", req.GetName())})
	}
	return &kvpb.RoleGetResponse{Header: hdr, Role: r}, nil
}

func (a *authService) RoleList(ctx context.Context, req *kvpb.RoleListRequest) (*kvpb.RoleListResponse, error) {
	n := a.n
	_, hdr, err := n.b.Read(ctx, req.GetConsistency())
	if err != nil {
		return nil, n.toStatus(err)
	}
	if err := n.requireAdmin(ctx, "RoleList"); err != nil {
		return nil, n.toStatus(err)
	}
	return &kvpb.RoleListResponse{Header: hdr, Roles: n.b.FSM().Auth().Roles()}, nil
}
