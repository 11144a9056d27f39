package client

import (
	"context"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Users, roles and permissions (service Auth). Changes are exactly-once
// through the client's own session, like Put. With auth enabled, only a
// user holding the admin role may make them, or read other users.

// Authenticate exchanges a name and password for a token and its TTL. The
// client does this itself for Config.Username; call it to hand a token to
// something else. A wrong name or password is ErrAuthFailed (it never says
// which); ErrAuthDisabled when auth is off.
func (c *Client) Authenticate(ctx context.Context, name, password string) (*kvpb.AuthenticateResponse, error) {
	req := &kvpb.AuthenticateRequest{Name: name, Password: password}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.AuthenticateResponse, error) {
		return kvpb.NewAuthClient(cc).Authenticate(ctx, req, opts...)
	})
}

// AuthEnable turns authentication and authorization on. ErrNoAdmin unless a
// user holds the admin role (so nobody is locked out). Enabling it again
// changes nothing.
func (c *Client) AuthEnable(ctx context.Context) (*kvpb.AuthEnableResponse, error) {
	req := &kvpb.AuthEnableRequest{}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.AuthEnableResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).AuthEnable(ctx, req, opts...)
	})
}

// AuthDisable turns auth off; every token issued so far stops being valid.
func (c *Client) AuthDisable(ctx context.Context) (*kvpb.AuthDisableResponse, error) {
	req := &kvpb.AuthDisableRequest{}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.AuthDisableResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).AuthDisable(ctx, req, opts...)
	})
}

// AuthStatus says whether auth is enabled (WithStale).
func (c *Client) AuthStatus(ctx context.Context, opts ...OpOption) (*kvpb.AuthStatusResponse, error) {
	req := &kvpb.AuthStatusRequest{Consistency: applyOpts(opts).consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.AuthStatusResponse, error) {
		return kvpb.NewAuthClient(cc).AuthStatus(ctx, req, opts...)
	})
}

// UserAdd adds a user with a password, which the server hashes (bcrypt)
// before it reaches the log. password "" makes a user who can sign in only
// with a client certificate whose CN is name. ErrUserExists if name is
// taken.
func (c *Client) UserAdd(ctx context.Context, name, password string) (*kvpb.UserAddResponse, error) {
	req := &kvpb.UserAddRequest{Name: name, Password: password, NoPassword: password == ""}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.UserAddResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).UserAdd(ctx, req, opts...)
	})
}

// UserDelete deletes a user; its tokens stop being valid. ErrNotFound if
// there is no such user; ErrNoAdmin if it is the last admin while auth is
// enabled.
func (c *Client) UserDelete(ctx context.Context, name string) (*kvpb.UserDeleteResponse, error) {
	req := &kvpb.UserDeleteRequest{Name: name}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.UserDeleteResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).UserDelete(ctx, req, opts...)
	})
}

// UserChangePassword sets a user's password ("" : certificate-only). Tokens
// issued before it stop being valid.
func (c *Client) UserChangePassword(ctx context.Context, name, password string) (*kvpb.UserChangePasswordResponse, error) {
	req := &kvpb.UserChangePasswordRequest{Name: name, Password: password, NoPassword: password == ""}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.UserChangePasswordResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).UserChangePassword(ctx, req, opts...)
	})
}

// UserGet reads a user (WithStale). ErrNotFound if there is none.
func (c *Client) UserGet(ctx context.Context, name string, opts ...OpOption) (*kvpb.UserGetResponse, error) {
	req := &kvpb.UserGetRequest{Name: name, Consistency: applyOpts(opts).consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.UserGetResponse, error) {
		return kvpb.NewAuthClient(cc).UserGet(ctx, req, opts...)
	})
}

// UserList lists every user by name (WithStale).
func (c *Client) UserList(ctx context.Context, opts ...OpOption) (*kvpb.UserListResponse, error) {
	req := &kvpb.UserListRequest{Consistency: applyOpts(opts).consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.UserListResponse, error) {
		return kvpb.NewAuthClient(cc).UserList(ctx, req, opts...)
	})
}

// UserGrantRole gives user the role (granting one it has changes nothing).
// ErrNotFound if the user or the role does not exist.
func (c *Client) UserGrantRole(ctx context.Context, user, role string) (*kvpb.UserGrantRoleResponse, error) {
	req := &kvpb.UserGrantRoleRequest{User: user, Role: role}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.UserGrantRoleResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).UserGrantRole(ctx, req, opts...)
	})
}

// UserRevokeRole takes a role from user. ErrNotFound if the user does not
// have it; ErrNoAdmin for the admin role of the last admin while auth is
// enabled.
func (c *Client) UserRevokeRole(ctx context.Context, user, role string) (*kvpb.UserRevokeRoleResponse, error) {
	req := &kvpb.UserRevokeRoleRequest{User: user, Role: role}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.UserRevokeRoleResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).UserRevokeRole(ctx, req, opts...)
	})
}

// RoleAdd adds a role with no permissions. ErrRoleExists if name is taken
// (admin is built in).
func (c *Client) RoleAdd(ctx context.Context, name string) (*kvpb.RoleAddResponse, error) {
	req := &kvpb.RoleAddRequest{Name: name}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.RoleAddResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).RoleAdd(ctx, req, opts...)
	})
}

// RoleDelete deletes a role and takes it from every user.
func (c *Client) RoleDelete(ctx context.Context, name string) (*kvpb.RoleDeleteResponse, error) {
	req := &kvpb.RoleDeleteRequest{Name: name}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.RoleDeleteResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).RoleDelete(ctx, req, opts...)
	})
}

// RoleGet reads a role (WithStale). ErrNotFound if there is none.
func (c *Client) RoleGet(ctx context.Context, name string, opts ...OpOption) (*kvpb.RoleGetResponse, error) {
	req := &kvpb.RoleGetRequest{Name: name, Consistency: applyOpts(opts).consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.RoleGetResponse, error) {
		return kvpb.NewAuthClient(cc).RoleGet(ctx, req, opts...)
	})
}

// RoleList lists every role by name, admin included (WithStale).
func (c *Client) RoleList(ctx context.Context, opts ...OpOption) (*kvpb.RoleListResponse, error) {
	req := &kvpb.RoleListRequest{Consistency: applyOpts(opts).consistency}
	return read(ctx, c, 0, "", func(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (*kvpb.RoleListResponse, error) {
		return kvpb.NewAuthClient(cc).RoleList(ctx, req, opts...)
	})
}

// RoleGrantPermission lets role act at level (read or readwrite) on every
// name of kind (keys, locks or cache) that starts with prefix (empty: all
// of them). A permission on the same kind and prefix has its level
// replaced.
func (c *Client) RoleGrantPermission(ctx context.Context, role string, kind kvpb.PermKind, prefix []byte, level kvpb.PermLevel) (*kvpb.RoleGrantPermissionResponse, error) {
	req := &kvpb.RoleGrantPermissionRequest{Name: role, Permission: &kvpb.Permission{Kind: kind, Prefix: prefix, Level: level}}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.RoleGrantPermissionResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).RoleGrantPermission(ctx, req, opts...)
	})
}

// RoleRevokePermission removes role's permission on kind and exactly
// prefix. ErrNotFound if it has none.
func (c *Client) RoleRevokePermission(ctx context.Context, role string, kind kvpb.PermKind, prefix []byte) (*kvpb.RoleRevokePermissionResponse, error) {
	req := &kvpb.RoleRevokePermissionRequest{Name: role, Kind: kind, Prefix: prefix}
	return write(ctx, c, nil, 0, func(ctx context.Context, cc grpc.ClientConnInterface, h *kvpb.RequestHeader, opts ...grpc.CallOption) (*kvpb.RoleRevokePermissionResponse, error) {
		req.Header = h
		return kvpb.NewAuthClient(cc).RoleRevokePermission(ctx, req, opts...)
	})
}
