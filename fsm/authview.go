package fsm

import (
	"bytes"
	"slices"
	"strings"
	"sync"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// AuthView is an immutable copy of the auth state as of one applied entry:
// what the api checks every request against. The FSM publishes a new one
// after each entry that changes auth state, so reading it takes no lock and
// never waits for Apply, and one request sees one consistent state.
//
// The permissions of a user are compiled on first use and kept for the
// view's life (that is, until the next auth change), so Allowed is a map
// load and a scan of the user's few grants.
type AuthView struct {
	st    authState // its btrees are clones no one writes
	perms sync.Map  // user name -> *userPerms, filled on demand
}

// userPerms is a user's compiled permissions.
type userPerms struct {
	admin bool
	// grants[kind] are the user's grants on that kind, with any grant
	// dropped that a shorter prefix of the same or a higher level covers.
	grants [4][]grant
}

type grant struct {
	prefix []byte
	level  kvpb.PermLevel
}

// Auth returns the current auth state. It takes no lock.
func (f *FSM) Auth() *AuthView { return f.auth.Load() }

// publishAuth makes the state's auth the current AuthView. The caller holds
// the write lock (cloning marks the source trees copy-on-write).
func (f *FSM) publishAuth(s *state) {
	f.auth.Store(&AuthView{st: s.auth.clone()})
	s.authChanged = false
}

// Enabled reports whether auth is on: requests must then name a user.
func (v *AuthView) Enabled() bool { return v.st.enabled }

// Revision is the index of the entry that last changed users, roles or the
// enabled flag (0: never).
func (v *AuthView) Revision() uint64 { return v.st.revision }

// TokenKey returns the token-signing key and the index of the entry that
// set it (a token can name that index, so one signed under an earlier
// enable is told apart). nil while auth is disabled. The caller must not
// modify the key.
func (v *AuthView) TokenKey() (key []byte, index uint64) { return v.st.tokenKey, v.st.keyIndex }

// Credentials returns a user's bcrypt hash (empty for a certificate-only
// user; the caller must not modify it) and revision. ok is false when no
// such user exists.
func (v *AuthView) Credentials(name string) (hash []byte, revision uint64, ok bool) {
	u, ok := v.st.getUser(name)
	return u.hash, u.revision, ok
}

// UserRevision returns a user's revision, the index of the entry that
// created it or last set its password; ok is false when it does not exist.
// A token names the revision it was issued at.
func (v *AuthView) UserRevision(name string) (revision uint64, ok bool) {
	u, ok := v.st.getUser(name)
	return u.revision, ok
}

// IsAdmin reports whether the user exists and holds the admin role.
func (v *AuthView) IsAdmin(user string) bool {
	p := v.permsOf(user)
	return p != nil && p.admin
}

// Allowed reports whether user's roles grant level (READ or READWRITE) on
// the name key of kind: a grant of that kind whose prefix starts key, with
// a level at least level; or the admin role. An unknown user, kind or level
// is refused. For a range (a List of a prefix), pass the range's prefix: a
// grant allows it only when it covers every name in it.
//
// It does not look at Enabled: the caller decides whether to check at all.
func (v *AuthView) Allowed(user string, kind kvpb.PermKind, key []byte, level kvpb.PermLevel) bool {
	p := v.permsOf(user)
	if p == nil {
		return false
	}
	if p.admin {
		return true
	}
	if kind <= 0 || int(kind) >= len(p.grants) || level <= kvpb.PermLevel_PERM_LEVEL_UNSPECIFIED {
		return false
	}
	for _, g := range p.grants[kind] {
		if g.level >= level && bytes.HasPrefix(key, g.prefix) {
			return true
		}
	}
	return false
}

// permsOf returns the user's compiled permissions, nil for an unknown user.
func (v *AuthView) permsOf(user string) *userPerms {
	if p, ok := v.perms.Load(user); ok {
		return p.(*userPerms)
	}
	u, ok := v.st.getUser(user)
	if !ok {
		return nil // not cached: names that are not users do not fill the map
	}
	p, _ := v.perms.LoadOrStore(user, v.compile(u))
	return p.(*userPerms)
}

func (v *AuthView) compile(u userItem) *userPerms {
	p := &userPerms{}
	var all [4][]grant
	for _, name := range u.roles {
		if name == AdminRole {
			p.admin = true
			continue
		}
		r, ok := v.st.getRole(name)
		if !ok {
			continue
		}
		for _, pm := range r.perms {
			if pm.kind > 0 && int(pm.kind) < len(all) {
				all[pm.kind] = append(all[pm.kind], grant{prefix: []byte(pm.prefix), level: pm.level})
			}
		}
	}
	for k, gs := range all {
		// Shorter prefixes first (a prefix sorts before what it starts),
		// higher levels first among equal prefixes; keep a grant only if no
		// kept one covers it.
		slices.SortFunc(gs, func(a, b grant) int {
			if c := bytes.Compare(a.prefix, b.prefix); c != 0 {
				return c
			}
			return int(b.level) - int(a.level)
		})
		for _, g := range gs {
			covered := false
			for _, k := range p.grants[k] {
				if k.level >= g.level && bytes.HasPrefix(g.prefix, k.prefix) {
					covered = true
					break
				}
			}
			if !covered {
				p.grants[k] = append(p.grants[k], g)
			}
		}
	}
	return p
}

// User returns a user, nil if it does not exist.
func (v *AuthView) User(name string) *kvpb.User {
	u, ok := v.st.getUser(name)
	if !ok {
		return nil
	}
	return u.proto()
}

// Users returns every user, by name.
func (v *AuthView) Users() []*kvpb.User {
	var out []*kvpb.User
	v.st.users.Ascend(func(u userItem) bool {
		out = append(out, u.proto())
		return true
	})
	return out
}

// Role returns a role (the built-in admin role too), nil if it does not
// exist.
func (v *AuthView) Role(name string) *kvpb.Role {
	if name == AdminRole {
		return adminRoleProto()
	}
	r, ok := v.st.getRole(name)
	if !ok {
		return nil
	}
	return r.proto()
}

// Roles returns every role, the built-in admin role included, by name.
func (v *AuthView) Roles() []*kvpb.Role {
	out := []*kvpb.Role{adminRoleProto()}
	v.st.roles.Ascend(func(r roleItem) bool {
		out = append(out, r.proto())
		return true
	})
	slices.SortFunc(out, func(a, b *kvpb.Role) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AuthStatus returns whether auth is enabled and the auth revision, with
// the header of the state it was read from.
func (f *FSM) AuthStatus() *kvpb.AuthStatusResponse {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v := f.Auth()
	return &kvpb.AuthStatusResponse{
		Header:   &kvpb.ResponseHeader{AppliedIndex: f.s.index, LogTime: f.s.logTime},
		Enabled:  v.Enabled(),
		Revision: v.Revision(),
	}
}

// User returns a user, nil if it does not exist.
func (f *FSM) User(name string) *kvpb.User { return f.Auth().User(name) }

// Users returns every user, by name.
func (f *FSM) Users() []*kvpb.User { return f.Auth().Users() }

// Role returns a role (admin included), nil if it does not exist.
func (f *FSM) Role(name string) *kvpb.Role { return f.Auth().Role(name) }

// Roles returns every role, admin included, by name.
func (f *FSM) Roles() []*kvpb.Role { return f.Auth().Roles() }

// Allowed is f.Auth().Allowed: whether user may act at level on key of kind.
func (f *FSM) Allowed(user string, kind kvpb.PermKind, key []byte, level kvpb.PermLevel) bool {
	return f.Auth().Allowed(user, kind, key, level)
}
