package fsm

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/btree"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Auth state: users, roles, the enabled flag and the token-signing key, all
// replicated through the log. Passwords arrive already hashed (bcrypt, done
// by the proposing node); the key arrives in the AuthEnableOp (drawn by the
// proposing node). Apply hashes nothing and draws nothing.

const (
	// AdminRole is the built-in role that grants everything, including the
	// admin operations. It always exists and cannot be changed or deleted.
	AdminRole = "admin"
	// TokenKeySize is the length of the token-signing key an AuthEnableOp
	// must carry.
	TokenKeySize = 32
	// MaxAuthNameLen bounds user and role names.
	MaxAuthNameLen = 128
)

// userItem is one user. roles is sorted and replaced, never edited in place
// (the btree is cloned for snapshots and for the published AuthView).
type userItem struct {
	name     string
	hash     []byte // bcrypt hash; empty: certificate-only user
	roles    []string
	revision uint64 // index of the entry that created it or last set its password
}

func (u userItem) hasRole(role string) bool {
	_, ok := slices.BinarySearch(u.roles, role)
	return ok
}

func (u userItem) proto() *kvpb.User {
	return &kvpb.User{Name: u.name, Roles: slices.Clone(u.roles), HasPassword: len(u.hash) > 0, Revision: u.revision}
}

// permission is one grant of a role.
type permission struct {
	kind   kvpb.PermKind
	prefix string
	level  kvpb.PermLevel
}

func permLess(a, b permission) int {
	return cmp.Or(cmp.Compare(a.kind, b.kind), strings.Compare(a.prefix, b.prefix))
}

// roleItem is one role (never the built-in admin role). perms is sorted by
// (kind, prefix), unique on it, and replaced, never edited in place.
type roleItem struct {
	name  string
	perms []permission
}

func (r roleItem) proto() *kvpb.Role {
	out := &kvpb.Role{Name: r.name}
	for _, p := range r.perms {
		out.Permissions = append(out.Permissions, &kvpb.Permission{Kind: p.kind, Prefix: []byte(p.prefix), Level: p.level})
	}
	return out
}

func adminRoleProto() *kvpb.Role { return &kvpb.Role{Name: AdminRole, Builtin: true} }

// authState is the replicated auth state.
type authState struct {
	enabled  bool
	tokenKey []byte // set while enabled
	keyIndex uint64 // index of the entry that set tokenKey
	revision uint64 // index of the last change to any of this
	users    *btree.BTreeG[userItem]
	roles    *btree.BTreeG[roleItem]
}

func newAuthState() authState {
	return authState{
		users: btree.NewG(btreeDegree, func(a, b userItem) bool { return a.name < b.name }),
		roles: btree.NewG(btreeDegree, func(a, b roleItem) bool { return a.name < b.name }),
	}
}

// clone is a point-in-time copy (the btree clones are copy-on-write). The
// caller holds the fsm's write lock.
func (a *authState) clone() authState {
	c := *a
	c.users, c.roles = a.users.Clone(), a.roles.Clone()
	return c
}

func (a *authState) getUser(name string) (userItem, bool) { return a.users.Get(userItem{name: name}) }
func (a *authState) getRole(name string) (roleItem, bool) { return a.roles.Get(roleItem{name: name}) }

// admins counts the users holding the admin role.
func (a *authState) admins() int {
	n := 0
	a.users.Ascend(func(u userItem) bool {
		if u.hasRole(AdminRole) {
			n++
		}
		return true
	})
	return n
}

// CheckAuthName reports why name cannot be a user or role name: it must be
// 1 to MaxAuthNameLen bytes of ASCII letters, digits and "._@:-". The api
// checks requests with it before proposing; apply checks again.
func CheckAuthName(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	if len(name) > MaxAuthNameLen {
		return fmt.Errorf("%d bytes, the limit is %d", len(name), MaxAuthNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._@:-", c) >= 0) {
			return fmt.Errorf("byte %d (%q) is not a letter, digit or one of \"._@:-\"", i, c)
		}
	}
	return nil
}

// CheckPasswordHash reports why h is not a bcrypt hash ("$2a$", "$2b$" or
// "$2y$", a two-digit cost from 04 to 31, "$", 53 characters: 60 bytes).
// It is a check of form only: it keeps a plaintext password, or anything
// else that is not a hash, out of the replicated state.
func CheckPasswordHash(h []byte) error {
	if len(h) != 60 {
		return fmt.Errorf("%d bytes; a bcrypt hash has 60", len(h))
	}
	if h[0] != '$' || h[1] != '2' || bytes.IndexByte([]byte("aby"), h[2]) < 0 || h[3] != '$' || h[6] != '$' {
		return errors.New(`not in bcrypt form "$2b$NN$..."`)
	}
	if h[4] < '0' || h[4] > '9' || h[5] < '0' || h[5] > '9' {
		return errors.New("bcrypt cost is not two digits")
	}
	if cost := int(h[4]-'0')*10 + int(h[5]-'0'); cost < 4 || cost > 31 {
		return fmt.Errorf("bcrypt cost %d is outside 4..31", cost)
	}
	return nil
}

func badName(field, name string) *kvpb.CommandResult {
	if err := CheckAuthName(name); err != nil {
		return invalid("%s: %q: %v", field, name, err)
	}
	return nil
}

// passwordHash checks the password fields of a UserAdd or
// UserChangePassword and returns the hash to store (nil: certificate-only).
func passwordHash(password string, hash []byte, noPassword bool) ([]byte, *kvpb.CommandResult) {
	switch {
	case password != "":
		return nil, invalid("password: a plaintext password must not reach the log; the server hashes it into password_hash")
	case noPassword && len(hash) > 0:
		return nil, invalid("no_password: set together with password_hash; give one")
	case noPassword:
		return nil, nil
	case len(hash) == 0:
		return nil, invalid("password_hash: empty; give a password, a password_hash or no_password")
	}
	if err := CheckPasswordHash(hash); err != nil {
		return nil, invalid("password_hash: %v", err)
	}
	return bytes.Clone(hash), nil
}

// changedAuth records an auth change made by the current entry: the
// revision moves and the FSM publishes a new AuthView after the entry.
func (s *state) changedAuth() {
	s.auth.revision = s.index
	s.authChanged = true
}

func (s *state) authEnable(op *kvpb.AuthEnableOp) *kvpb.CommandResult {
	if len(op.TokenKey) != TokenKeySize {
		return invalid("token_key: %d bytes, want %d", len(op.TokenKey), TokenKeySize)
	}
	ok := &kvpb.CommandResult{Result: &kvpb.CommandResult_AuthEnable{AuthEnable: &kvpb.AuthEnableResponse{}}}
	if s.auth.enabled {
		// Choice: enabling again changes nothing; the key stays, so tokens
		// already issued stay valid.
		return ok
	}
	if s.auth.admins() == 0 {
		return fail(kvpb.ErrorCode_ERROR_CODE_NO_ADMIN,
			"auth enable: no user holds the %s role; add one first, or nobody could manage the cluster", AdminRole)
	}
	s.auth.enabled = true
	s.auth.tokenKey = bytes.Clone(op.TokenKey)
	s.auth.keyIndex = s.index
	s.changedAuth()
	return ok
}

// authDisable turns auth off and drops the key, so every token issued so
// far stays invalid if auth is enabled again.
func (s *state) authDisable(*kvpb.AuthDisableRequest) *kvpb.CommandResult {
	if s.auth.enabled {
		s.auth.enabled = false
		s.auth.tokenKey = nil
		s.auth.keyIndex = 0
		s.changedAuth()
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_AuthDisable{AuthDisable: &kvpb.AuthDisableResponse{}}}
}

func userNotFound(name string) *kvpb.CommandResult {
	return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "user %q does not exist", name)
}

func roleNotFound(name string) *kvpb.CommandResult {
	return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "role %q does not exist", name)
}

func (s *state) userAdd(req *kvpb.UserAddRequest) *kvpb.CommandResult {
	if r := badName("name", req.Name); r != nil {
		return r
	}
	hash, r := passwordHash(req.Password, req.PasswordHash, req.NoPassword)
	if r != nil {
		return r
	}
	if _, ok := s.auth.getUser(req.Name); ok {
		return fail(kvpb.ErrorCode_ERROR_CODE_USER_EXISTS, "user %q already exists", req.Name)
	}
	u := userItem{name: req.Name, hash: hash, revision: s.index}
	s.auth.users.ReplaceOrInsert(u)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_UserAdd{UserAdd: &kvpb.UserAddResponse{User: u.proto()}}}
}

// lastAdmin reports whether taking the admin role from u would leave auth
// enabled with no admin.
func (s *state) lastAdmin(u userItem) bool {
	return s.auth.enabled && u.hasRole(AdminRole) && s.auth.admins() == 1
}

func (s *state) userDelete(req *kvpb.UserDeleteRequest) *kvpb.CommandResult {
	u, ok := s.auth.getUser(req.Name)
	if !ok {
		return userNotFound(req.Name)
	}
	if s.lastAdmin(u) {
		return fail(kvpb.ErrorCode_ERROR_CODE_NO_ADMIN,
			"user %q is the last user with the %s role while auth is enabled; grant the role to another user first", u.name, AdminRole)
	}
	s.auth.users.Delete(u)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_UserDelete{UserDelete: &kvpb.UserDeleteResponse{}}}
}

// userChangePassword sets the hash and the revision, so tokens issued
// before it are refused.
func (s *state) userChangePassword(req *kvpb.UserChangePasswordRequest) *kvpb.CommandResult {
	hash, r := passwordHash(req.Password, req.PasswordHash, req.NoPassword)
	if r != nil {
		return r
	}
	u, ok := s.auth.getUser(req.Name)
	if !ok {
		return userNotFound(req.Name)
	}
	u.hash, u.revision = hash, s.index
	s.auth.users.ReplaceOrInsert(u)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_UserChangePassword{
		UserChangePassword: &kvpb.UserChangePasswordResponse{User: u.proto()}}}
}

// userGrantRole gives a user a role. Choice: granting a role the user
// already has is OK and changes nothing.
func (s *state) userGrantRole(req *kvpb.UserGrantRoleRequest) *kvpb.CommandResult {
	u, ok := s.auth.getUser(req.User)
	if !ok {
		return userNotFound(req.User)
	}
	if _, ok := s.auth.getRole(req.Role); !ok && req.Role != AdminRole {
		return roleNotFound(req.Role)
	}
	if !u.hasRole(req.Role) {
		u.roles = append(slices.Clone(u.roles), req.Role)
		slices.Sort(u.roles)
		s.auth.users.ReplaceOrInsert(u)
		s.changedAuth()
	}
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_UserGrantRole{UserGrantRole: &kvpb.UserGrantRoleResponse{User: u.proto()}}}
}

func (s *state) userRevokeRole(req *kvpb.UserRevokeRoleRequest) *kvpb.CommandResult {
	u, ok := s.auth.getUser(req.User)
	if !ok {
		return userNotFound(req.User)
	}
	i, has := slices.BinarySearch(u.roles, req.Role)
	if !has {
		return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "user %q does not have role %q", req.User, req.Role)
	}
	if req.Role == AdminRole && s.lastAdmin(u) {
		return fail(kvpb.ErrorCode_ERROR_CODE_NO_ADMIN,
			"user %q is the last user with the %s role while auth is enabled; grant the role to another user first", u.name, AdminRole)
	}
	u.roles = slices.Delete(slices.Clone(u.roles), i, i+1)
	s.auth.users.ReplaceOrInsert(u)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_UserRevokeRole{UserRevokeRole: &kvpb.UserRevokeRoleResponse{User: u.proto()}}}
}

func (s *state) roleAdd(req *kvpb.RoleAddRequest) *kvpb.CommandResult {
	if r := badName("name", req.Name); r != nil {
		return r
	}
	if _, ok := s.auth.getRole(req.Name); ok || req.Name == AdminRole {
		return fail(kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS, "role %q already exists", req.Name)
	}
	r := roleItem{name: req.Name}
	s.auth.roles.ReplaceOrInsert(r)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_RoleAdd{RoleAdd: &kvpb.RoleAddResponse{Role: r.proto()}}}
}

func builtinRole(what string) *kvpb.CommandResult {
	return invalid("name: role %s is built in and grants everything; it cannot be %s", AdminRole, what)
}

// roleDelete deletes a role and takes it from every user, in name order.
func (s *state) roleDelete(req *kvpb.RoleDeleteRequest) *kvpb.CommandResult {
	if req.Name == AdminRole {
		return builtinRole("deleted")
	}
	r, ok := s.auth.getRole(req.Name)
	if !ok {
		return roleNotFound(req.Name)
	}
	s.auth.roles.Delete(r)
	var holders []userItem
	s.auth.users.Ascend(func(u userItem) bool {
		if u.hasRole(r.name) {
			holders = append(holders, u)
		}
		return true
	})
	for _, u := range holders {
		i, _ := slices.BinarySearch(u.roles, r.name)
		u.roles = slices.Delete(slices.Clone(u.roles), i, i+1)
		s.auth.users.ReplaceOrInsert(u)
	}
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_RoleDelete{RoleDelete: &kvpb.RoleDeleteResponse{}}}
}

// roleGrantPermission adds a permission; one on the same kind and prefix
// has its level replaced.
func (s *state) roleGrantPermission(req *kvpb.RoleGrantPermissionRequest) *kvpb.CommandResult {
	if req.Name == AdminRole {
		return builtinRole("changed")
	}
	p := req.Permission
	switch {
	case p == nil:
		return invalid("permission: missing")
	case kindName(p.Kind) == "":
		return invalid("permission.kind: %v; want keys, locks or cache", p.Kind)
	case p.Level != kvpb.PermLevel_PERM_LEVEL_READ && p.Level != kvpb.PermLevel_PERM_LEVEL_READWRITE:
		return invalid("permission.level: %v; want read or readwrite", p.Level)
	}
	r, ok := s.auth.getRole(req.Name)
	if !ok {
		return roleNotFound(req.Name)
	}
	np := permission{kind: p.Kind, prefix: string(p.Prefix), level: p.Level}
	perms := slices.Clone(r.perms)
	if i, found := slices.BinarySearchFunc(perms, np, permLess); found {
		perms[i] = np
	} else {
		perms = slices.Insert(perms, i, np)
	}
	r.perms = perms
	s.auth.roles.ReplaceOrInsert(r)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_RoleGrantPermission{
		RoleGrantPermission: &kvpb.RoleGrantPermissionResponse{Role: r.proto()}}}
}

func (s *state) roleRevokePermission(req *kvpb.RoleRevokePermissionRequest) *kvpb.CommandResult {
	if req.Name == AdminRole {
		return builtinRole("changed")
	}
	r, ok := s.auth.getRole(req.Name)
	if !ok {
		return roleNotFound(req.Name)
	}
	i, found := slices.BinarySearchFunc(r.perms, permission{kind: req.Kind, prefix: string(req.Prefix)}, permLess)
	if !found {
		return fail(kvpb.ErrorCode_ERROR_CODE_NOT_FOUND, "role %q has no permission on %s prefix %q", req.Name, kindName(req.Kind), req.Prefix)
	}
	r.perms = slices.Delete(slices.Clone(r.perms), i, i+1)
	s.auth.roles.ReplaceOrInsert(r)
	s.changedAuth()
	return &kvpb.CommandResult{Result: &kvpb.CommandResult_RoleRevokePermission{
		RoleRevokePermission: &kvpb.RoleRevokePermissionResponse{Role: r.proto()}}}
}

// kindName is the name a permission kind has in messages ("" if unknown).
func kindName(k kvpb.PermKind) string {
	switch k {
	case kvpb.PermKind_PERM_KIND_KEYS:
		return "keys"
	case kvpb.PermKind_PERM_KIND_LOCKS:
		return "locks"
	case kvpb.PermKind_PERM_KIND_CACHE:
		return "cache"
	}
	return ""
}
