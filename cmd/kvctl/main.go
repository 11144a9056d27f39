// Command kvctl is the command-line client of kvd.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/client"
)

// Exit codes. Scripts may rely on them; they are documented in the README.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitNotAcquired = 3 // lock not acquired within --wait
	exitNotFound    = 4 // key, lock, session or cache entry absent
	exitLockLost    = 5 // lock lost while the child command ran
	exitUnknown     = 6 // the write's outcome is unknown (it may have applied)
	exitAuth        = 7 // not signed in: no or wrong credentials, expired token
	exitDenied      = 8 // signed in, but the user's roles do not allow it
	exitTLS         = 9 // TLS failed: untrusted or expired certificate, wrong name, TLS against plaintext or back
)

// defaultEndpoints are the client ports of `kvd dev`.
const defaultEndpoints = "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"

// version is kvctl's version; it is kvd's (node.Version), which a test checks.
var version = "0.1.0-dev"

// unreachableTimeout is how long a request keeps trying while no endpoint
// accepts a connection (client.Config.UnreachableTimeout): a cluster that
// is down, or endpoints that are wrong, are said within about a second
// instead of after --timeout.
const unreachableTimeout = time.Second

// app holds the global flags and the lazily made client.
type app struct {
	endpoints string
	output    string // "text" or "json"
	timeout   time.Duration
	security  securityFlags // TLS and sign-in (auth.go)
	debug     bool

	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer

	client *client.Client
	// sharedStderr is stderr shared with a child command under a lock
	// (when stderr is not a file: tests).
	sharedStderr io.Writer
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode wraps err so that kvctl exits with code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// testDialer, when set (by tests), replaces net.Dial for the client: it
// reaches an in-process cluster.
var testDialer func(ctx context.Context, addr string) (net.Conn, error)

// subcommands are added by the files of this package (kv.go, lock.go, ...)
// from their init functions.
var subcommands []func(a *app) *cobra.Command

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes kvctl with args and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if a.client != nil {
		a.client.Close()
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "kvctl: %s\n", a.message(err))
	if a.debug {
		fmt.Fprintf(stderr, "kvctl: detail: %v\n", err)
	}
	return exitCode(err)
}

// grpcStatusError is an error made by gRPC's status package.
type grpcStatusError interface {
	error
	GRPCStatus() *status.Status
}

// message is the one line kvctl prints for err: what failed and why. The
// detail behind it (every retry's cause, gRPC's text) is printed by --debug.
func (a *app) message(err error) string {
	s := err.Error()
	var ce *client.Error
	if errors.As(err, &ce) && ce.Msg != "" {
		// A client-made error (no answer, outcome unknown): its summary, not
		// the text of every cause.
		if full := ce.Error(); full != ce.Msg && strings.HasSuffix(s, full) {
			s = strings.TrimSuffix(s, full) + ce.Msg
		}
		if errors.Is(err, client.ErrUnavailable) && errors.Is(err, context.DeadlineExceeded) {
			s += fmt.Sprintf(" within --timeout %v", a.timeout)
		}
		if errors.Is(err, client.ErrIndeterminate) {
			s += " (check before you retry)"
		}
		if plaintextToTLS(err) && a.security.cacert == "" {
			s += "; the members closed every connection before HTTP/2 began: do they serve TLS? (give --cacert)"
		}
	} else if se := grpcStatusError(nil); errors.As(err, &se) {
		// A gRPC error that is no kvd answer: its message and code, without
		// gRPC's "rpc error: code = ... desc = ..." framing.
		st := se.GRPCStatus()
		if full := se.Error(); st.Code() != codes.OK && strings.HasSuffix(s, full) {
			s = strings.TrimSuffix(s, full) + st.Message() + " (" + strings.ToLower(st.Code().String()) + ")"
		}
	}
	if !a.debug && strings.Contains(s, "\n") {
		s = s[:strings.Index(s, "\n")]
	}
	return s
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var te *client.TLSError
	switch {
	case errors.Is(err, client.ErrNotFound):
		return exitNotFound
	case errors.Is(err, client.ErrIndeterminate):
		return exitUnknown
	case errors.Is(err, client.ErrUnauthenticated), errors.Is(err, client.ErrAuthFailed), errors.Is(err, client.ErrTokenExpired):
		return exitAuth
	case errors.Is(err, client.ErrPermissionDenied):
		return exitDenied
	case errors.As(err, &te), plaintextToTLS(err):
		return exitTLS
	}
	return exitFailed
}

// plaintextToTLS reports whether err looks like plaintext gRPC sent to a
// port that serves TLS: the server closes the connection before HTTP/2
// begins, every time.
func plaintextToTLS(err error) bool {
	s := err.Error()
	return strings.Contains(s, "server preface") && errors.Is(err, client.ErrUnavailable)
}

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func newRoot(a *app) *cobra.Command {
	root := group(&cobra.Command{
		Use:           "kvctl",
		Short:         "Command-line client for kvd, a replicated key-value store with locks and a cache",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.output != "text" && a.output != "json" {
				return &usageError{fmt.Sprintf("-o: want text or json, got %q", a.output)}
			}
			return nil
		},
	})
	root.SetVersionTemplate("kvctl {{.Version}} (" + runtime.Version() + ")\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{err.Error()}
	})
	eps := os.Getenv("KVD_ENDPOINTS")
	if eps == "" {
		eps = defaultEndpoints
	}
	root.PersistentFlags().StringVar(&a.endpoints, "endpoints", eps, "comma-separated client addresses of cluster members (env KVD_ENDPOINTS)")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 10*time.Second, "time limit of one request, retries included")
	a.security.register(root)
	root.PersistentFlags().BoolVar(&a.debug, "debug", false, "on failure, also print the whole error: every cause, with gRPC's text")
	for _, f := range subcommands {
		root.AddCommand(f(a))
	}
	root.AddCommand(newVersionCommand(a))
	return root
}

// group makes cmd a command that only holds subcommands: alone it prints
// its help (exit 0); with an argument that names no subcommand it is bad
// usage (exit 2), as an unknown flag is.
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
		}
		return &usageError{msg + "; see " + cmd.CommandPath() + " --help"}
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	return cmd
}

func newVersionCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kvctl's version (kvd's is in kvctl cluster status -o json)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.json() {
				return a.printJSON(part(nil).set("version", version).set("go", runtime.Version()))
			}
			fmt.Fprintf(a.stdout, "kvctl %s (%s)\n", version, runtime.Version())
			return nil
		},
	}
}

// Client returns the client, making it on first use.
func (a *app) Client() (*client.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	var eps []string
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return nil, &usageError{"--endpoints: no endpoint given"}
	}
	cfg := client.Config{Endpoints: eps, Dialer: testDialer, UnreachableTimeout: unreachableTimeout}
	if err := a.configure(&cfg); err != nil {
		return nil, err
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// request returns the client and a context bounded by --timeout for one
// command's request; the caller defers cancel.
func (a *app) request(cmd *cobra.Command) (*client.Client, context.Context, context.CancelFunc, error) {
	c, err := a.Client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.requestContext(cmd.Context())
	return c, ctx, cancel, nil
}

// requestContext bounds one request by --timeout.
func (a *app) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

// json reports whether -o json was asked for.
func (a *app) json() bool { return a.output == "json" }

// printJSON writes v as one line of JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with a usage error (exit 2).
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &usageError{fmt.Sprintf("%s: want %d argument(s), got %d", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}
