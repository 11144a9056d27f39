package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// fakeHash returns a string of bcrypt form, different for each n: the fsm
// checks form only (hashing happens before proposing).
func fakeHash(n int) []byte {
	h := fmt.Sprintf("$2a$10$%053d", n)
	return []byte(h)
}

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, TokenKeySize) }

func userAdd(name string, hash []byte) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserAdd{UserAdd: &kvpb.UserAddRequest{Name: name, PasswordHash: hash, NoPassword: hash == nil}}}
}

func userAddReq(r *kvpb.UserAddRequest) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserAdd{UserAdd: r}}
}

func userDelete(name string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserDelete{UserDelete: &kvpb.UserDeleteRequest{Name: name}}}
}

func userPasswd(name string, hash []byte) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserChangePassword{UserChangePassword: &kvpb.UserChangePasswordRequest{
		Name: name, PasswordHash: hash, NoPassword: hash == nil}}}
}

func grantRole(user, role string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserGrantRole{UserGrantRole: &kvpb.UserGrantRoleRequest{User: user, Role: role}}}
}

func revokeRole(user, role string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_UserRevokeRole{UserRevokeRole: &kvpb.UserRevokeRoleRequest{User: user, Role: role}}}
}

func roleAdd(name string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_RoleAdd{RoleAdd: &kvpb.RoleAddRequest{Name: name}}}
}

func roleDelete(name string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_RoleDelete{RoleDelete: &kvpb.RoleDeleteRequest{Name: name}}}
}

const (
	keys   = kvpb.PermKind_PERM_KIND_KEYS
	locks  = kvpb.PermKind_PERM_KIND_LOCKS
	cacheK = kvpb.PermKind_PERM_KIND_CACHE
	read   = kvpb.PermLevel_PERM_LEVEL_READ
	rw     = kvpb.PermLevel_PERM_LEVEL_READWRITE
)

func grantPerm(role string, kind kvpb.PermKind, prefix string, level kvpb.PermLevel) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_RoleGrantPermission{RoleGrantPermission: &kvpb.RoleGrantPermissionRequest{
		Name: role, Permission: &kvpb.Permission{Kind: kind, Prefix: []byte(prefix), Level: level}}}}
}

func revokePerm(role string, kind kvpb.PermKind, prefix string) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_RoleRevokePermission{RoleRevokePermission: &kvpb.RoleRevokePermissionRequest{
		Name: role, Kind: kind, Prefix: []byte(prefix)}}}
}

func authEnable(key []byte) *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_AuthEnable{AuthEnable: &kvpb.AuthEnableOp{TokenKey: key}}}
}

func authDisable() *kvpb.Command {
	return &kvpb.Command{Op: &kvpb.Command_AuthDisable{AuthDisable: &kvpb.AuthDisableRequest{}}}
}

func TestUserAddRefusals(t *testing.T) {
	h := newHarness(t)
	h.ok(userAdd("alice", fakeHash(1)))
	tests := []struct {
		name string
		req  *kvpb.UserAddRequest
		code kvpb.ErrorCode
		msg  string // a part of the message
	}{
		{"exists", &kvpb.UserAddRequest{Name: "alice", NoPassword: true}, kvpb.ErrorCode_ERROR_CODE_USER_EXISTS, `"alice" already exists`},
		{"empty name", &kvpb.UserAddRequest{Name: "", NoPassword: true}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "name"},
		{"long name", &kvpb.UserAddRequest{Name: strings.Repeat("a", MaxAuthNameLen+1), NoPassword: true}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "the limit is 128"},
		{"bad byte", &kvpb.UserAddRequest{Name: "al ice", NoPassword: true}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "byte 2"},
		{"plaintext", &kvpb.UserAddRequest{Name: "bob", Password: "secret"}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "password: a plaintext password"},
		{"nothing", &kvpb.UserAddRequest{Name: "bob"}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "password_hash: empty"},
		{"both", &kvpb.UserAddRequest{Name: "bob", PasswordHash: fakeHash(2), NoPassword: true}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "no_password"},
		{"not bcrypt", &kvpb.UserAddRequest{Name: "bob", PasswordHash: []byte("secret")}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "password_hash: 6 bytes"},
		{"bad cost", &kvpb.UserAddRequest{Name: "bob", PasswordHash: []byte("$2a$99$" + strings.Repeat("x", 53))}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "cost 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.code(userAddReq(tt.req), tt.code)
			if !strings.Contains(res.Message, tt.msg) {
				t.Errorf("message %q, want it to contain %q", res.Message, tt.msg)
			}
		})
	}
	if users := h.f.Users(); len(users) != 1 || users[0].Name != "alice" {
		t.Errorf("Users() = %v, want only alice: a refused add changed state", users)
	}
}

func TestUserLifecycle(t *testing.T) {
	h := newHarness(t)
	res := h.ok(userAdd("alice", fakeHash(1)))
	added := h.index
	if u := res.GetUserAdd().GetUser(); u.GetName() != "alice" || !u.GetHasPassword() || u.GetRevision() != added {
		t.Errorf("UserAdd = %v, want alice with a password at revision %d", u, added)
	}
	if res.GetUserAdd().GetHeader().GetAppliedIndex() != added {
		t.Errorf("UserAdd header = %v, want applied index %d", res.GetUserAdd().GetHeader(), added)
	}
	hash, rev, ok := h.f.Auth().Credentials("alice")
	if !ok || !bytes.Equal(hash, fakeHash(1)) || rev != added {
		t.Errorf("Credentials(alice) = %q, %d, %v; want the hash given at revision %d", hash, rev, ok, added)
	}
	h.ok(userAdd("carol", nil))
	if u := h.f.User("carol"); u == nil || u.HasPassword {
		t.Errorf("User(carol) = %v, want a certificate-only user", u)
	}
	if _, _, ok := h.f.Auth().Credentials("nobody"); ok {
		t.Error("Credentials(nobody) found a user")
	}

	// A role grant does not move the revision; a password change does.
	h.ok(grantRole("alice", AdminRole))
	if rev, _ := h.f.Auth().UserRevision("alice"); rev != added {
		t.Errorf("revision after a role grant = %d, want %d (tokens stay valid)", rev, added)
	}
	h.ok(userPasswd("alice", fakeHash(2)))
	changed := h.index
	if rev, _ := h.f.Auth().UserRevision("alice"); rev != changed {
		t.Errorf("revision after a password change = %d, want %d", rev, changed)
	}
	if hash, _, _ := h.f.Auth().Credentials("alice"); !bytes.Equal(hash, fakeHash(2)) {
		t.Errorf("hash after a password change = %q, want the new one", hash)
	}
	h.ok(userPasswd("alice", nil))
	if u := h.f.User("alice"); u.HasPassword || !slices.Equal(u.Roles, []string{AdminRole}) {
		t.Errorf("User(alice) = %v, want certificate-only, still admin", u)
	}
	h.code(userPasswd("nobody", fakeHash(3)), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	h.code(&kvpb.Command{Op: &kvpb.Command_UserChangePassword{UserChangePassword: &kvpb.UserChangePasswordRequest{
		Name: "alice", Password: "plain"}}}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)

	h.ok(userDelete("alice"))
	if h.f.User("alice") != nil {
		t.Error("alice still exists after delete")
	}
	h.code(userDelete("alice"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	// Re-created, the user has a new revision: tokens of the old one fail.
	h.ok(userAdd("alice", fakeHash(4)))
	if rev, _ := h.f.Auth().UserRevision("alice"); rev != h.index || rev == added {
		t.Errorf("revision of the re-created user = %d, want %d", rev, h.index)
	}
	if u := h.f.User("alice"); len(u.Roles) != 0 {
		t.Errorf("re-created user has roles %v, want none", u.Roles)
	}
}

func TestRoles(t *testing.T) {
	h := newHarness(t)
	h.ok(roleAdd("app"))
	h.code(roleAdd("app"), kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS)
	h.code(roleAdd(AdminRole), kvpb.ErrorCode_ERROR_CODE_ROLE_EXISTS)
	h.code(roleAdd("bad/name"), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)

	h.ok(grantPerm("app", keys, "app/", read))
	h.ok(grantPerm("app", locks, "", rw))
	res := h.ok(grantPerm("app", keys, "app/", rw)) // same kind and prefix: level replaced
	want := []*kvpb.Permission{
		{Kind: keys, Prefix: []byte("app/"), Level: rw},
		{Kind: locks, Prefix: []byte(""), Level: rw},
	}
	if got := res.GetRoleGrantPermission().GetRole().GetPermissions(); !permsEqual(got, want) {
		t.Errorf("permissions = %v, want %v", got, want)
	}
	for _, tt := range []struct {
		name string
		cmd  *kvpb.Command
		code kvpb.ErrorCode
	}{
		{"unknown role", grantPerm("nope", keys, "a", read), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND},
		{"admin", grantPerm(AdminRole, keys, "a", read), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"no kind", grantPerm("app", kvpb.PermKind_PERM_KIND_UNSPECIFIED, "a", read), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"no level", grantPerm("app", keys, "a", kvpb.PermLevel_PERM_LEVEL_UNSPECIFIED), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"missing", &kvpb.Command{Op: &kvpb.Command_RoleGrantPermission{RoleGrantPermission: &kvpb.RoleGrantPermissionRequest{Name: "app"}}}, kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"revoke absent", revokePerm("app", cacheK, ""), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND},
		{"revoke other prefix", revokePerm("app", keys, "app"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND},
		{"revoke admin", revokePerm(AdminRole, keys, ""), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"revoke unknown role", revokePerm("nope", keys, ""), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND},
		{"delete admin", roleDelete(AdminRole), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"delete unknown", roleDelete("nope"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND},
	} {
		t.Run(tt.name, func(t *testing.T) { h.code(tt.cmd, tt.code) })
	}
	if got := h.f.Role("app").GetPermissions(); !permsEqual(got, want) {
		t.Errorf("after refused commands, permissions = %v, want %v", got, want)
	}

	res = h.ok(revokePerm("app", locks, ""))
	if got := res.GetRoleRevokePermission().GetRole().GetPermissions(); !permsEqual(got, want[:1]) {
		t.Errorf("after revoke, permissions = %v, want %v", got, want[:1])
	}

	h.ok(roleAdd("aaa"))
	var names []string
	for _, r := range h.f.Roles() {
		names = append(names, r.Name)
	}
	if !slices.Equal(names, []string{"aaa", AdminRole, "app"}) {
		t.Errorf("Roles() = %v, want aaa, admin, app (by name, admin built in)", names)
	}
	if r := h.f.Role(AdminRole); r == nil || !r.Builtin {
		t.Errorf("Role(admin) = %v, want the built-in role", r)
	}
	if h.f.Role("nope") != nil {
		t.Error("Role(nope) found a role")
	}

	// Deleting a role takes it from every user.
	h.ok(userAdd("u1", nil))
	h.ok(userAdd("u2", nil))
	h.ok(grantRole("u1", "app"))
	h.ok(grantRole("u1", "aaa"))
	h.ok(grantRole("u2", "app"))
	h.ok(roleDelete("app"))
	if r1, r2 := h.f.User("u1").Roles, h.f.User("u2").Roles; !slices.Equal(r1, []string{"aaa"}) || len(r2) != 0 {
		t.Errorf("roles after delete: u1 %v, u2 %v; want [aaa] and []", r1, r2)
	}
	// A new role of the same name starts empty and is held by no one.
	h.ok(roleAdd("app"))
	if p := h.f.Role("app").GetPermissions(); len(p) != 0 {
		t.Errorf("re-created role has permissions %v", p)
	}
}

func permsEqual(a, b []*kvpb.Permission) bool {
	return slices.EqualFunc(a, b, func(x, y *kvpb.Permission) bool { return proto.Equal(x, y) })
}

func TestGrantRevokeRole(t *testing.T) {
	h := newHarness(t)
	h.ok(userAdd("alice", nil))
	h.ok(roleAdd("r"))
	h.code(grantRole("nobody", "r"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	h.code(grantRole("alice", "nope"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	h.ok(grantRole("alice", "r"))
	res := h.ok(grantRole("alice", "r")) // again: no change
	if got := res.GetUserGrantRole().GetUser().GetRoles(); !slices.Equal(got, []string{"r"}) {
		t.Errorf("roles = %v, want [r]", got)
	}
	h.ok(grantRole("alice", AdminRole))
	if got := h.f.User("alice").Roles; !slices.Equal(got, []string{AdminRole, "r"}) {
		t.Errorf("roles = %v, want [admin r] (sorted)", got)
	}
	h.code(revokeRole("alice", "other"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	h.code(revokeRole("nobody", "r"), kvpb.ErrorCode_ERROR_CODE_NOT_FOUND)
	res = h.ok(revokeRole("alice", "r"))
	if got := res.GetUserRevokeRole().GetUser().GetRoles(); !slices.Equal(got, []string{AdminRole}) {
		t.Errorf("roles = %v, want [admin]", got)
	}
}

func TestAuthEnableDisable(t *testing.T) {
	h := newHarness(t)
	if h.f.Auth().Enabled() {
		t.Fatal("auth enabled in a new fsm")
	}
	h.code(authEnable(testKey(1)), kvpb.ErrorCode_ERROR_CODE_NO_ADMIN)
	h.ok(userAdd("root", fakeHash(1)))
	h.code(authEnable(testKey(1)), kvpb.ErrorCode_ERROR_CODE_NO_ADMIN) // a user, but no admin
	h.ok(grantRole("root", AdminRole))
	h.code(authEnable(testKey(1)[:16]), kvpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	if h.f.Auth().Enabled() {
		t.Fatal("a refused enable enabled auth")
	}
	h.ok(authEnable(testKey(1)))
	enabledAt := h.index
	v := h.f.Auth()
	if key, idx := v.TokenKey(); !v.Enabled() || !bytes.Equal(key, testKey(1)) || idx != enabledAt || v.Revision() != enabledAt {
		t.Fatalf("after enable: enabled %v, key %x at %d, revision %d; want true, the command's key at %d", v.Enabled(), key, idx, v.Revision(), enabledAt)
	}
	if st := h.f.AuthStatus(); !st.Enabled || st.Revision != enabledAt || st.Header.GetAppliedIndex() != enabledAt {
		t.Errorf("AuthStatus() = %v, want enabled at revision %d", st, enabledAt)
	}
	// Enabling again keeps the key: tokens already issued stay valid.
	h.ok(authEnable(testKey(2)))
	if key, idx := h.f.Auth().TokenKey(); !bytes.Equal(key, testKey(1)) || idx != enabledAt {
		t.Errorf("second enable changed the key to %x at %d", key, idx)
	}

	// The last admin cannot go while auth is enabled.
	h.code(userDelete("root"), kvpb.ErrorCode_ERROR_CODE_NO_ADMIN)
	h.code(revokeRole("root", AdminRole), kvpb.ErrorCode_ERROR_CODE_NO_ADMIN)
	h.ok(userAdd("root2", nil))
	h.ok(grantRole("root2", AdminRole))
	h.ok(revokeRole("root", AdminRole))
	h.code(userDelete("root2"), kvpb.ErrorCode_ERROR_CODE_NO_ADMIN)

	h.ok(authDisable())
	v = h.f.Auth()
	if key, idx := v.TokenKey(); v.Enabled() || key != nil || idx != 0 || v.Revision() != h.index {
		t.Errorf("after disable: enabled %v, key %x at %d, revision %d", v.Enabled(), key, idx, v.Revision())
	}
	h.ok(authDisable()) // again: no change
	if v2 := h.f.Auth(); v2.Revision() != v.Revision() {
		t.Errorf("a second disable moved the revision to %d", v2.Revision())
	}
	h.ok(userDelete("root2")) // no admin needed while auth is off
	h.ok(grantRole("root", AdminRole))
	h.ok(authEnable(testKey(3)))
	if key, idx := h.f.Auth().TokenKey(); !bytes.Equal(key, testKey(3)) || idx != h.index {
		t.Errorf("re-enable: key %x at %d, want a new key at %d", key, idx, h.index)
	}
}

func TestAllowed(t *testing.T) {
	h := newHarness(t)
	h.ok(roleAdd("app"))
	h.ok(grantPerm("app", keys, "app/", rw))
	h.ok(grantPerm("app", keys, "shared/", read))
	h.ok(grantPerm("app", locks, "jobs/", rw))
	h.ok(roleAdd("reader"))
	h.ok(grantPerm("reader", cacheK, "", read))
	h.ok(grantPerm("reader", keys, "shared/x", rw))
	h.ok(userAdd("alice", nil))
	h.ok(grantRole("alice", "app"))
	h.ok(grantRole("alice", "reader"))
	h.ok(userAdd("bob", nil))
	h.ok(userAdd("root", nil))
	h.ok(grantRole("root", AdminRole))

	tests := []struct {
		user  string
		kind  kvpb.PermKind
		key   string
		level kvpb.PermLevel
		want  bool
	}{
		{"alice", keys, "app/1", rw, true},
		{"alice", keys, "app/1", read, true},
		{"alice", keys, "app/", read, true},
		{"alice", keys, "app", read, false}, // a List of "app" would cover "apple"
		{"alice", keys, "other", read, false},
		{"alice", keys, "shared/a", read, true},
		{"alice", keys, "shared/a", rw, false},
		{"alice", keys, "shared/xy", rw, true}, // from the second role
		{"alice", locks, "jobs/a", rw, true},
		{"alice", locks, "app/1", read, false}, // keys grants say nothing of locks
		{"alice", cacheK, "anything", read, true},
		{"alice", cacheK, "anything", rw, false},
		{"alice", keys, "app/1", kvpb.PermLevel_PERM_LEVEL_UNSPECIFIED, false},
		{"alice", kvpb.PermKind_PERM_KIND_UNSPECIFIED, "app/1", read, false},
		{"alice", kvpb.PermKind(9), "app/1", read, false},
		{"bob", keys, "app/1", read, false},
		{"nobody", keys, "app/1", read, false},
		{"root", keys, "anything", rw, true},
		{"root", locks, "", rw, true},
	}
	for _, tt := range tests {
		if got := h.f.Allowed(tt.user, tt.kind, []byte(tt.key), tt.level); got != tt.want {
			t.Errorf("Allowed(%s, %v, %q, %v) = %v, want %v", tt.user, tt.kind, tt.key, tt.level, got, tt.want)
		}
	}
	if !h.f.Auth().IsAdmin("root") || h.f.Auth().IsAdmin("alice") || h.f.Auth().IsAdmin("nobody") {
		t.Error("IsAdmin: want root only")
	}

	// A change publishes a new view; the old one keeps its answer.
	old := h.f.Auth()
	h.ok(revokePerm("app", keys, "app/"))
	if h.f.Allowed("alice", keys, []byte("app/1"), read) {
		t.Error("Allowed after the permission was revoked")
	}
	if !old.Allowed("alice", keys, []byte("app/1"), read) {
		t.Error("an earlier AuthView changed its answer")
	}
	h.ok(revokeRole("alice", "reader"))
	if h.f.Allowed("alice", cacheK, []byte("x"), read) {
		t.Error("Allowed after the role was revoked")
	}
	h.ok(grantRole("bob", "reader"))
	if !h.f.Allowed("bob", cacheK, []byte("x"), read) {
		t.Error("not Allowed after the role was granted")
	}
	h.ok(userDelete("bob"))
	if h.f.Allowed("bob", cacheK, []byte("x"), read) {
		t.Error("Allowed for a deleted user")
	}
	// Entries that change nothing of auth keep the view (and its cache).
	v := h.f.Auth()
	h.ok(put("k", "v", 0))
	if h.f.Auth() != v {
		t.Error("a put published a new AuthView")
	}
}

func TestCompileDropsCoveredGrants(t *testing.T) {
	h := newHarness(t)
	h.ok(roleAdd("r"))
	h.ok(grantPerm("r", keys, "a/", rw))
	h.ok(grantPerm("r", keys, "a/b/", read)) // covered by a/ readwrite
	h.ok(grantPerm("r", keys, "b/", read))
	h.ok(grantPerm("r", keys, "b/c/", rw)) // not covered: higher level
	h.ok(userAdd("u", nil))
	h.ok(grantRole("u", "r"))
	p := h.f.Auth().permsOf("u")
	var got []string
	for _, g := range p.grants[keys] {
		got = append(got, fmt.Sprintf("%s=%v", g.prefix, g.level))
	}
	want := []string{"a/=PERM_LEVEL_READWRITE", "b/=PERM_LEVEL_READ", "b/c/=PERM_LEVEL_READWRITE"}
	if !slices.Equal(got, want) {
		t.Errorf("compiled grants = %v, want %v", got, want)
	}
}

func TestAuthExactlyOnce(t *testing.T) {
	h := newHarness(t)
	s := h.session(10_000)
	cmd := userAdd("alice", fakeHash(1))
	cmd.GetUserAdd().Header = hdr(s, 1)
	first := h.ok(cmd)
	again := h.ok(cmd) // a retry: the first result, not USER_EXISTS
	if !proto.Equal(first, again) {
		t.Errorf("retry = %v, want the first result %v", again, first)
	}
	grant := grantRole("alice", AdminRole)
	grant.GetUserGrantRole().Header = hdr(s, 2)
	h.ok(grant)
	del := userDelete("alice")
	del.GetUserDelete().Header = hdr(s, 3)
	h.ok(del)
	h.ok(del) // deleted once; the retry does not say NOT_FOUND
	if h.f.User("alice") != nil {
		t.Error("alice exists after delete")
	}
	en := authEnable(testKey(1))
	en.GetAuthEnable().Header = hdr(12345, 1)
	h.code(en, kvpb.ErrorCode_ERROR_CODE_SESSION_EXPIRED)
}

// TestAuthSnapshotRoundTrip checks that every piece of auth state survives
// Snapshot and Restore, and that the restored replica answers the same.
func TestAuthSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.ok(roleAdd("app"))
	h.ok(grantPerm("app", keys, "app/", rw))
	h.ok(grantPerm("app", cacheK, "", read))
	h.ok(roleAdd("empty"))
	h.ok(userAdd("root", fakeHash(1)))
	h.ok(grantRole("root", AdminRole))
	h.ok(userAdd("alice", fakeHash(2)))
	h.ok(grantRole("alice", "app"))
	h.ok(userAdd("certonly", nil))
	h.ok(authEnable(testKey(7)))
	h.ok(put("k", "v", 0))

	snap := snapshotBytes(t, h.f)
	r := New()
	if err := r.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !bytes.Equal(snapshotBytes(t, r), snap) {
		t.Fatal("re-snapshot after restore differs")
	}
	a, b := h.f.Auth(), r.Auth()
	ka, ia := a.TokenKey()
	kb, ib := b.TokenKey()
	if !b.Enabled() || !bytes.Equal(ka, kb) || ia != ib || a.Revision() != b.Revision() {
		t.Errorf("restored: enabled %v, key %x at %d, revision %d; want true, %x at %d, %d", b.Enabled(), kb, ib, b.Revision(), ka, ia, a.Revision())
	}
	for _, name := range []string{"root", "alice", "certonly"} {
		ha, ra, _ := a.Credentials(name)
		hb, rb, ok := b.Credentials(name)
		if !ok || !bytes.Equal(ha, hb) || ra != rb {
			t.Errorf("Credentials(%s) after restore = %q, %d, %v; want %q, %d", name, hb, rb, ok, ha, ra)
		}
		if !proto.Equal(a.User(name), b.User(name)) {
			t.Errorf("User(%s) after restore = %v, want %v", name, b.User(name), a.User(name))
		}
	}
	if !slices.EqualFunc(a.Roles(), b.Roles(), func(x, y *kvpb.Role) bool { return proto.Equal(x, y) }) {
		t.Errorf("Roles() after restore = %v, want %v", b.Roles(), a.Roles())
	}
	if !b.Allowed("alice", keys, []byte("app/x"), rw) || b.Allowed("alice", keys, []byte("k"), read) || !b.IsAdmin("root") {
		t.Error("restored permissions answer differently")
	}
}

// TestRestoreVersion1 restores a snapshot in the format written before auth
// existed: it is read, with an empty auth state.
func TestRestoreVersion1(t *testing.T) {
	h := newHarness(t)
	h.ok(put("k", "v", 0))
	h.ok(userAdd("alice", nil))
	v1 := asVersion1(t, snapshotBytes(t, h.f))
	r := New()
	if err := r.Restore(io.NopCloser(bytes.NewReader(v1))); err != nil {
		t.Fatalf("Restore(version 1) = %v", err)
	}
	if kv := r.Get([]byte("k"), r.LogTime()); kv == nil || string(kv.Value) != "v" {
		t.Errorf("Get(k) after a version 1 restore = %v, want v", kv)
	}
	if users := r.Users(); len(users) != 0 || r.Auth().Enabled() {
		t.Errorf("auth after a version 1 restore: users %v, enabled %v; want none, false", users, r.Auth().Enabled())
	}
}

// asVersion1 rewrites a snapshot as version 1: the header says 1 and the
// auth records (kinds 9 to 11) are left out.
func asVersion1(t *testing.T, snap []byte) []byte {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(snap))
	hb, err := readRecord(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	var hdr kvpb.SnapshotHeader
	if err := proto.Unmarshal(hb, &hdr); err != nil {
		t.Fatal(err)
	}
	hdr.FormatVersion = 1
	var out bytes.Buffer
	write := func(b []byte) {
		out.Write(binary.AppendUvarint(nil, uint64(len(b))))
		out.Write(b)
	}
	hb, _ = proto.Marshal(&hdr)
	write(hb)
	dropped := 0
	for {
		b, err := readRecord(r, nil)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if recordKind(b[0]) >= recAuth {
			dropped++
			continue
		}
		write(b)
	}
	if dropped == 0 {
		t.Fatal("the snapshot had no auth records to drop")
	}
	return out.Bytes()
}

// TestAuthViewConcurrent reads the published views while entries change
// auth state (meaningful under -race).
func TestAuthViewConcurrent(t *testing.T) {
	h := newHarness(t)
	h.ok(roleAdd("r"))
	h.ok(userAdd("u", nil))
	h.ok(grantRole("u", "r"))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := h.f.Auth()
				v.Allowed("u", keys, []byte(fmt.Sprintf("p%d/x", i%50)), read)
				v.Users()
				v.Roles()
				h.f.AuthStatus()
			}
		}()
	}
	for i := range 300 {
		h.ok(grantPerm("r", keys, fmt.Sprintf("p%d/", i%50), read))
		if i%7 == 0 {
			h.ok(revokePerm("r", keys, fmt.Sprintf("p%d/", i%50)))
		}
	}
	close(stop)
	wg.Wait()
}

func BenchmarkAllowed(b *testing.B) {
	h := newHarness(b)
	h.ok(roleAdd("r"))
	for i := range 20 {
		h.ok(grantPerm("r", keys, fmt.Sprintf("tenant-%02d/", i), rw))
	}
	h.ok(userAdd("u", nil))
	h.ok(grantRole("u", "r"))
	f := h.f
	key := []byte("tenant-19/orders/123")
	if !f.Allowed("u", keys, key, rw) {
		b.Fatal("not allowed")
	}
	b.ReportAllocs()
	for b.Loop() {
		f.Allowed("u", keys, key, rw)
	}
}
