package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() {
	subcommands = append(subcommands, newUserCommand, newRoleCommand, newAuthCommand)
}

// securityFlags are the global flags (and environment) of TLS and sign-in.
type securityFlags struct {
	cacert, cert, key string
	user              string
	passwordFile      string
}

// register adds the flags to root's persistent flags.
func (f *securityFlags) register(root *cobra.Command) {
	fs := root.PersistentFlags()
	fs.StringVar(&f.cacert, "cacert", os.Getenv("KVD_CACERT"), "verify servers with this CA's PEM certificate; turns TLS on (env KVD_CACERT)")
	fs.StringVar(&f.cert, "cert", os.Getenv("KVD_CERT"), "client certificate (PEM) for servers that require one; turns TLS on (env KVD_CERT)")
	fs.StringVar(&f.key, "key", os.Getenv("KVD_KEY"), "key of --cert (PEM) (env KVD_KEY)")
	fs.StringVar(&f.user, "user", os.Getenv("KVD_USER"), "sign in as this user, with the password from --password-file, KVD_PASSWORD or a prompt (env KVD_USER)")
	fs.StringVar(&f.passwordFile, "password-file", "", "read --user's password from the first line of this file")
}

// configure puts TLS and the user's credentials into cfg.
func (a *app) configure(cfg *client.Config) error {
	f := &a.security
	if f.cacert != "" || f.cert != "" || f.key != "" {
		t, err := client.TLSFromFiles(f.cacert, f.cert, f.key)
		if err != nil {
			return &usageError{strings.TrimPrefix(err.Error(), "client: ")}
		}
		cfg.TLS = t
	}
	if f.user == "" {
		if f.passwordFile != "" {
			return &usageError{"--password-file: given without --user"}
		}
		return nil
	}
	cfg.Username = f.user
	switch pw, ok := os.LookupEnv("KVD_PASSWORD"); {
	case f.passwordFile != "":
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return &usageError{fmt.Sprintf("--password-file: %v", err)}
		}
		cfg.Password = firstLine(string(b))
	case ok:
		cfg.Password = pw
	default:
		pw, err := a.prompt(fmt.Sprintf("Password for %s: ", f.user))
		if err != nil {
			return &usageError{fmt.Sprintf("--user %s: no password: give --password-file or KVD_PASSWORD, or run on a terminal (%v)", f.user, err)}
		}
		cfg.Password = pw
	}
	if cfg.Password == "" {
		return &usageError{fmt.Sprintf("--user %s: the password is empty", f.user)}
	}
	return nil
}

// firstLine is s up to its first line break.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r")
}

// prompt reads a password from the terminal without echo; tests replace it.
var prompt = func(a *app, msg string) (string, error) {
	f, ok := a.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("standard input is not a terminal")
	}
	fmt.Fprint(a.stderr, msg)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(a.stderr)
	return string(b), err
}

func (a *app) prompt(msg string) (string, error) { return prompt(a, msg) }

// newPassword reads the password a user add or passwd sets: from the first
// line of standard input with --password-stdin, else from a prompt, twice.
func (a *app) newPassword(name string, fromStdin bool) (string, error) {
	var pw string
	if fromStdin {
		line, err := bufio.NewReader(a.stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", fmt.Errorf("read the password from standard input: %w", err)
		}
		pw = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	} else {
		var err error
		if pw, err = a.prompt(fmt.Sprintf("New password for %s: ", name)); err != nil {
			return "", &usageError{fmt.Sprintf("no password: use --password-stdin, or run on a terminal (%v)", err)}
		}
		again, err := a.prompt("Again: ")
		if err != nil {
			return "", &usageError{err.Error()}
		}
		if again != pw {
			return "", &usageError{"the two passwords differ"}
		}
	}
	if pw == "" {
		return "", &usageError{"the password is empty (for a user who signs in only with a certificate, use --no-password)"}
	}
	return pw, nil
}

// ---------------------------------------------------------------------------
// kvctl user

func newUserCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "user",
		Short: "Users (who may sign in, and with which roles)",
		Long: `Users. A user signs in with a password (kvctl --user) or with a client
certificate whose CN is its name. What it may do comes from its roles; the
built-in role admin may do everything. With auth enabled, only admins manage
users.

Exit 4 when the user does not exist.`,
	})
	cmd.AddCommand(newUserAddCommand(a), newUserDeleteCommand(a), newUserGetCommand(a), newUserListCommand(a),
		newUserPasswdCommand(a), newUserRoleCommand(a, true), newUserRoleCommand(a, false))
	return cmd
}

// userObject is the -o json form of a user.
func userObject(u *kvpb.User) *object {
	return part(nil).set("name", u.GetName()).
		set("roles", append([]string{}, u.GetRoles()...)).
		set("has_password", u.GetHasPassword()).
		set("revision", u.GetRevision())
}

func (a *app) printUser(h *kvpb.ResponseHeader, u *kvpb.User) error {
	if a.json() {
		return a.printJSON(response(h).set("user", userObject(u)))
	}
	fmt.Fprintf(a.stdout, "name:     %s\n", u.GetName())
	fmt.Fprintf(a.stdout, "roles:    %s\n", orDash(strings.Join(u.GetRoles(), ", ")))
	fmt.Fprintf(a.stdout, "password: %s\n", yesNo(u.GetHasPassword(), "yes", "no (certificate only)"))
	return nil
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// done prints what a change did, or with -o json the answer o (made with
// response, so that it starts with the header).
func (a *app) done(o *object, format string, args ...any) error {
	if a.json() {
		return a.printJSON(o)
	}
	_, err := fmt.Fprintf(a.stdout, format+"\n", args...)
	return err
}

func newUserAddCommand(a *app) *cobra.Command {
	var fromStdin, noPassword bool
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user; its password is asked for (or read with --password-stdin)",
		Example: `  kvctl user add alice
  printf '%s\n' "$PW" | kvctl user add ci-bot --password-stdin
  kvctl user add alice --no-password     # signs in with a client certificate only`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pw string
			if noPassword {
				if fromStdin {
					return &usageError{"--no-password and --password-stdin: give one"}
				}
			} else {
				var err error
				if pw, err = a.newPassword(args[0], fromStdin); err != nil {
					return err
				}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.UserAdd(ctx, args[0], pw)
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("user", userObject(resp.GetUser())), "user %s added", args[0])
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	cmd.Flags().BoolVar(&noPassword, "no-password", false, "no password: the user signs in only with a client certificate")
	return cmd
}

func newUserPasswdCommand(a *app) *cobra.Command {
	var fromStdin, noPassword bool
	cmd := &cobra.Command{
		Use:   "passwd NAME",
		Short: "Change a user's password; its tokens stop being valid",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pw string
			if noPassword {
				if fromStdin {
					return &usageError{"--no-password and --password-stdin: give one"}
				}
			} else {
				var err error
				if pw, err = a.newPassword(args[0], fromStdin); err != nil {
					return err
				}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.UserChangePassword(ctx, args[0], pw)
			if err != nil {
				return userErr(args[0], err)
			}
			return a.done(response(resp.GetHeader()).set("user", userObject(resp.GetUser())), "password of user %s changed", args[0])
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	cmd.Flags().BoolVar(&noPassword, "no-password", false, "remove the password: the user signs in only with a client certificate")
	return cmd
}

// userErr names the user in a not-found error.
func userErr(name string, err error) error {
	if errors.Is(err, client.ErrNotFound) {
		return fmt.Errorf("user %s: %w", name, err)
	}
	return err
}

func newUserDeleteCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a user; its tokens stop being valid",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.UserDelete(ctx, args[0])
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("deleted", args[0]), "user %s deleted", args[0])
		},
	}
}

func newUserGetCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a user's roles",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.UserGet(ctx, args[0])
			if err != nil {
				return userErr(args[0], err)
			}
			return a.printUser(resp.GetHeader(), resp.GetUser())
		},
	}
}

func newUserListCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the users",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.UserList(ctx)
			if err != nil {
				return err
			}
			if a.json() {
				users := []*object{}
				for _, u := range resp.GetUsers() {
					users = append(users, userObject(u))
				}
				return a.printJSON(response(resp.GetHeader()).set("users", users))
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tROLES\tPASSWORD")
			for _, u := range resp.GetUsers() {
				fmt.Fprintf(w, "%s\t%s\t%s\n", u.GetName(), orDash(strings.Join(u.GetRoles(), ",")), yesNo(u.GetHasPassword(), "yes", "no"))
			}
			return w.Flush()
		},
	}
}

// newUserRoleCommand is user grant-role (grant) or user revoke-role.
func newUserRoleCommand(a *app, grant bool) *cobra.Command {
	use, short := "grant-role USER ROLE", "Give a user a role"
	if !grant {
		use, short = "revoke-role USER ROLE", "Take a role from a user"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			var (
				u *kvpb.User
				h *kvpb.ResponseHeader
			)
			if grant {
				resp, err := c.UserGrantRole(ctx, args[0], args[1])
				if err != nil {
					return err
				}
				u, h = resp.GetUser(), resp.GetHeader()
			} else {
				resp, err := c.UserRevokeRole(ctx, args[0], args[1])
				if err != nil {
					return err
				}
				u, h = resp.GetUser(), resp.GetHeader()
			}
			return a.done(response(h).set("user", userObject(u)), "user %s: roles %s", args[0], orDash(strings.Join(u.GetRoles(), ", ")))
		},
	}
}

// ---------------------------------------------------------------------------
// kvctl role

func newRoleCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "role",
		Short: "Roles (named sets of permissions on key, lock and cache prefixes)",
		Long: `Roles. A role grants read or readwrite on every key, lock name or cache
key that starts with a prefix. The role admin is built in: it grants
everything, including membership, leadership, snapshots, lock break and the
management of users and roles.

Exit 4 when the role (or the permission) does not exist.`,
	})
	cmd.AddCommand(newRoleAddCommand(a), newRoleDeleteCommand(a), newRoleGetCommand(a), newRoleListCommand(a),
		newRoleGrantCommand(a), newRoleRevokeCommand(a))
	return cmd
}

func kindText(k kvpb.PermKind) string {
	switch k {
	case kvpb.PermKind_PERM_KIND_KEYS:
		return "keys"
	case kvpb.PermKind_PERM_KIND_LOCKS:
		return "locks"
	case kvpb.PermKind_PERM_KIND_CACHE:
		return "cache"
	}
	return k.String()
}

func levelText(l kvpb.PermLevel) string {
	switch l {
	case kvpb.PermLevel_PERM_LEVEL_READ:
		return "read"
	case kvpb.PermLevel_PERM_LEVEL_READWRITE:
		return "readwrite"
	}
	return l.String()
}

// roleObject is the -o json form of a role; a permission's prefix follows
// the rule of keys (text, or base64 when not UTF-8).
func roleObject(r *kvpb.Role) *object {
	o := part(nil).set("name", r.GetName())
	if r.GetBuiltin() {
		o.set("builtin", true)
	}
	perms := []*object{}
	for _, p := range r.GetPermissions() {
		perms = append(perms, part(nil).set("kind", kindText(p.GetKind())).bytes("prefix", p.GetPrefix()).set("level", levelText(p.GetLevel())))
	}
	return o.set("permissions", perms)
}

func (a *app) printRole(h *kvpb.ResponseHeader, r *kvpb.Role) error {
	if a.json() {
		return a.printJSON(response(h).set("role", roleObject(r)))
	}
	fmt.Fprintf(a.stdout, "name: %s\n", r.GetName())
	if r.GetBuiltin() {
		fmt.Fprintln(a.stdout, "built in: grants everything, admin operations included")
		return nil
	}
	if len(r.GetPermissions()) == 0 {
		fmt.Fprintln(a.stdout, "permissions: none")
		return nil
	}
	fmt.Fprintln(a.stdout, "permissions:")
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	for _, p := range r.GetPermissions() {
		prefix := printable(p.GetPrefix())
		if len(p.GetPrefix()) == 0 {
			prefix = `"" (all)`
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", kindText(p.GetKind()), prefix, levelText(p.GetLevel()))
	}
	return w.Flush()
}

func roleErr(name string, err error) error {
	if errors.Is(err, client.ErrNotFound) {
		return fmt.Errorf("role %s: %w", name, err)
	}
	return err
}

func newRoleAddCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "add NAME",
		Short: "Add a role with no permissions",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleAdd(ctx, args[0])
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("role", roleObject(resp.GetRole())), "role %s added", args[0])
		},
	}
}

func newRoleDeleteCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a role and take it from every user",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleDelete(ctx, args[0])
			if err != nil {
				return roleErr(args[0], err)
			}
			return a.done(response(resp.GetHeader()).set("deleted", args[0]), "role %s deleted", args[0])
		},
	}
}

func newRoleGetCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a role's permissions",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleGet(ctx, args[0])
			if err != nil {
				return roleErr(args[0], err)
			}
			return a.printRole(resp.GetHeader(), resp.GetRole())
		},
	}
}

func newRoleListCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the roles",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleList(ctx)
			if err != nil {
				return err
			}
			if a.json() {
				roles := []*object{}
				for _, r := range resp.GetRoles() {
					roles = append(roles, roleObject(r))
				}
				return a.printJSON(response(resp.GetHeader()).set("roles", roles))
			}
			for _, r := range resp.GetRoles() {
				fmt.Fprintln(a.stdout, r.GetName())
			}
			return nil
		},
	}
}

// permTarget is the --keys, --locks or --cache flag of role grant/revoke.
type permTarget struct {
	keys, locks, cache string
}

func (p *permTarget) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.keys, "keys", "", "the permission is on keys starting with this prefix (\"\": all keys)")
	cmd.Flags().StringVar(&p.locks, "locks", "", "... on lock names starting with this prefix")
	cmd.Flags().StringVar(&p.cache, "cache", "", "... on cache keys starting with this prefix")
}

// get returns the one kind and prefix given.
func (p *permTarget) get(cmd *cobra.Command) (kvpb.PermKind, []byte, error) {
	var (
		kind   kvpb.PermKind
		prefix string
		n      int
	)
	for _, f := range []struct {
		name  string
		kind  kvpb.PermKind
		value string
	}{{"keys", kvpb.PermKind_PERM_KIND_KEYS, p.keys}, {"locks", kvpb.PermKind_PERM_KIND_LOCKS, p.locks}, {"cache", kvpb.PermKind_PERM_KIND_CACHE, p.cache}} {
		if cmd.Flags().Changed(f.name) {
			kind, prefix = f.kind, f.value
			n++
		}
	}
	if n != 1 {
		return 0, nil, &usageError{fmt.Sprintf("%s: give exactly one of --keys PREFIX, --locks PREFIX or --cache PREFIX", cmd.CommandPath())}
	}
	return kind, []byte(prefix), nil
}

func newRoleGrantCommand(a *app) *cobra.Command {
	var (
		target permTarget
		perm   string
	)
	cmd := &cobra.Command{
		Use:   "grant ROLE --perm read|readwrite (--keys PREFIX | --locks PREFIX | --cache PREFIX)",
		Short: "Let a role read (or read and write) keys, locks or cache keys under a prefix",
		Example: `  kvctl role grant app --perm readwrite --keys app/
  kvctl role grant app --perm readwrite --locks app/
  kvctl role grant viewer --perm read --keys ''       # every key`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var level kvpb.PermLevel
			switch perm {
			case "read":
				level = kvpb.PermLevel_PERM_LEVEL_READ
			case "readwrite":
				level = kvpb.PermLevel_PERM_LEVEL_READWRITE
			default:
				return &usageError{fmt.Sprintf("--perm: want read or readwrite, got %q", perm)}
			}
			kind, prefix, err := target.get(cmd)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleGrantPermission(ctx, args[0], kind, prefix, level)
			if err != nil {
				return roleErr(args[0], err)
			}
			return a.done(response(resp.GetHeader()).set("role", roleObject(resp.GetRole())), "role %s: %s on %s %q", args[0], perm, kindText(kind), prefix)
		},
	}
	cmd.Flags().StringVar(&perm, "perm", "", "read or readwrite")
	target.register(cmd)
	return cmd
}

func newRoleRevokeCommand(a *app) *cobra.Command {
	var target permTarget
	cmd := &cobra.Command{
		Use:   "revoke ROLE (--keys PREFIX | --locks PREFIX | --cache PREFIX)",
		Short: "Take a role's permission on exactly that kind and prefix",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, prefix, err := target.get(cmd)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RoleRevokePermission(ctx, args[0], kind, prefix)
			if err != nil {
				return roleErr(args[0], err)
			}
			return a.done(response(resp.GetHeader()).set("role", roleObject(resp.GetRole())), "role %s: no permission on %s %q any more", args[0], kindText(kind), prefix)
		},
	}
	target.register(cmd)
	return cmd
}

// ---------------------------------------------------------------------------
// kvctl auth

func newAuthCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "auth",
		Short: "Turn authentication and authorization on or off",
		Long: `With auth enabled, every request must name a user (kvctl --user, or a
client certificate whose CN is the user), and the user's roles decide what
it may do. Enabling refuses to run unless a user holds the admin role:

  kvctl user add root
  kvctl user grant-role root admin
  kvctl auth enable`,
	})
	enable := &cobra.Command{
		Use:   "enable",
		Short: "Turn auth on (needs a user with the admin role)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.AuthEnable(ctx)
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("enabled", true), "auth enabled")
		},
	}
	disable := &cobra.Command{
		Use:   "disable",
		Short: "Turn auth off; every token issued so far stops being valid",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.AuthDisable(ctx)
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("enabled", false), "auth disabled")
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Say whether auth is enabled",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.AuthStatus(ctx)
			if err != nil {
				return err
			}
			return a.done(response(resp.GetHeader()).set("enabled", resp.GetEnabled()).set("revision", resp.GetRevision()),
				"auth %s (revision %d)", yesNo(resp.GetEnabled(), "enabled", "disabled"), resp.GetRevision())
		},
	}
	cmd.AddCommand(enable, disable, status)
	return cmd
}
