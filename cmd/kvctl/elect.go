package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newElectCommand) }

// electOptions are the flags of `elect`.
type electOptions struct {
	ttl       time.Duration
	grace     time.Duration
	lockDelay time.Duration
	restart   bool
	listen    bool
	show      bool
	proclaim  bool
	token     uint64
	session   uint64
}

func newElectCommand(a *app) *cobra.Command {
	var o electOptions
	cmd := &cobra.Command{
		Use:   "elect NAME [VALUE [-- CMD ARGS...]] | elect NAME --listen | elect NAME --show | elect NAME --proclaim VALUE",
		Short: "Leader election: campaign, run a command only while leading, or watch the leader",
		Long: `Leader election. An election is a lock whose holder has a value; its
fencing token (the term's token) grows with every new leader.

kvctl elect NAME VALUE -- CMD ARGS...
  Campaign with VALUE under a session with --ttl, waiting in the election's
  FIFO line; run CMD only while this process leads. CMD gets
  KVD_ELECTION_NAME, KVD_ELECTION_TOKEN and KVD_ELECTION_SESSION in its
  environment (pass the token to what CMD drives: kvctl put --fence
  NAME:TOKEN, or the resource's own check). CMD runs in a process group of
  its own. The moment leadership is lost (the session could not be renewed
  in time: kvctl gives up before the server's expiry; or the lock was
  broken), CMD's group gets SIGTERM, then SIGKILL after --grace, but never
  later than the server may make another candidate leader. Then kvctl
  exits 5, or with --restart campaigns again (a new session, at the back of
  the line) and starts CMD anew when it leads again. When CMD exits by
  itself, kvctl resigns (the next candidate leads at once) and exits with
  CMD's exit code (128+N when killed by signal N), --restart or not.
  SIGINT, SIGTERM or SIGHUP to kvctl: CMD's group gets SIGTERM (SIGKILL
  after --grace), kvctl resigns and exits 0.

kvctl elect NAME VALUE
  Campaign; when elected print the name, value, token and session, and
  hold leadership until interrupted (then resign and exit 0). Exit 5 when
  leadership is lost meanwhile (--restart: campaign again).

kvctl elect NAME --listen
  Print the leader, then each new leader and each new value, as they
  happen (a watch, no polling), until interrupted: "token T session S: VALUE".
  A time without a leader is not printed.

kvctl elect NAME --show
  Print the current leader once. Exit 4 when there is none.

kvctl elect NAME --proclaim VALUE [--token T --session S]
  Change the leader's value without a new term (the token stays). Meant for
  CMD: the token and session default to KVD_ELECTION_TOKEN and
  KVD_ELECTION_SESSION. Exit 1 when the token is no longer the current
  term (another leader), 4 when nobody leads.

Elections default to --lock-delay 1s: after a leader's session expires or
its lock is broken, the next candidate leads one second later, so that the
old leader's CMD, stopped by the server's expiry at the latest, has surely
exited first. Only the fencing token protects against a leader that was
paused past its TTL.

Exit codes: 0 resigned on request (or --show found a leader); 1 error;
2 usage; 4 --show: no leader; 5 leadership lost (without --restart);
otherwise CMD's exit code.`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case btoi(o.listen)+btoi(o.show)+btoi(o.proclaim) > 1:
				return &usageError{"elect: --listen, --show and --proclaim exclude each other"}
			case o.proclaim:
				if len(args) != 2 || dash >= 0 {
					return &usageError{"elect: --proclaim wants NAME VALUE"}
				}
			case o.listen || o.show:
				if len(args) != 1 || dash >= 0 {
					return &usageError{"elect: --listen and --show want NAME only"}
				}
			case dash < 0 && len(args) == 2:
			case dash == 2 && len(args) > 2:
			default:
				return &usageError{"elect: want NAME VALUE, optionally followed by -- CMD [ARGS...]; or NAME --listen; or NAME --show"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.ttl <= 0 || o.grace < 0 || o.lockDelay < 0 {
				return &usageError{"elect: --ttl must be positive; --grace and --lock-delay not negative"}
			}
			switch {
			case o.show:
				return a.electShow(cmd, args[0])
			case o.listen:
				return a.electListen(cmd.Context(), args[0])
			case o.proclaim:
				return a.electProclaim(cmd, args[0], args[1], o)
			}
			var child []string
			if len(args) > 2 {
				child = args[2:]
			}
			return a.elect(cmd.Context(), args[0], args[1], child, o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.ttl, "ttl", 10*time.Second, "TTL of the session that campaigns (a crashed leader is replaced after about this long)")
	f.DurationVar(&o.grace, "grace", 10*time.Second, "with CMD: time between SIGTERM and SIGKILL when leadership is lost or kvctl is stopped")
	f.DurationVar(&o.lockDelay, "lock-delay", election.DefaultLockDelay, "after a leader's involuntary end (expiry, break), make nobody leader for this long")
	f.BoolVar(&o.restart, "restart", false, "when leadership is lost, campaign again (and restart CMD when leading again) instead of exiting 5")
	f.BoolVar(&o.listen, "listen", false, "print each change of leader or value until interrupted")
	f.BoolVar(&o.show, "show", false, "print the current leader (exit 4: none)")
	f.BoolVar(&o.proclaim, "proclaim", false, "change the leader's value (NAME VALUE), keeping its term")
	f.Uint64Var(&o.token, "token", 0, "with --proclaim: the term's token (default $KVD_ELECTION_TOKEN)")
	f.Uint64Var(&o.session, "session", 0, "with --proclaim: the leading session (default $KVD_ELECTION_SESSION)")
	return cmd
}

// electRetryMax bounds the backoff between campaigns that failed (the
// cluster unreachable) under --restart.
const electRetryMax = 10 * time.Second

// elect campaigns, and runs child (or holds leadership) while leading.
func (a *app) elect(ctx context.Context, name, value string, child []string, o electOptions) error {
	c, err := a.Client()
	if err != nil {
		return err
	}
	// SIGINT and SIGTERM end ctx (run); SIGHUP does too, here.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stop()
	backoff := time.Second
	for {
		e, err := a.campaign(ctx, c, name, value, o)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while campaigning: nothing is held
			}
			if !o.restart {
				return err
			}
			fmt.Fprintf(a.stderr, "kvctl: %v; campaigning again in %v (--restart)\n", err, backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, electRetryMax)
			continue
		}
		backoff = time.Second
		lostErr, err := a.lead(ctx, e, value, child, o)
		if lostErr == nil {
			// Stopped on request, or CMD exited by itself: give up the
			// term so that the next candidate leads at once.
			a.resign(ctx, e)
			return err
		}
		a.dropSession(ctx, e.Session())
		if !o.restart {
			return withCode(exitLockLost, fmt.Errorf("elect %q: leadership lost: %w", name, lostErr))
		}
		if ctx.Err() != nil {
			return nil
		}
		fmt.Fprintf(a.stderr, "kvctl: leadership of %s lost (%v); campaigning again (--restart)\n", name, lostErr)
	}
}

// campaign creates a session and waits in the election's line until it
// leads, or ctx ends.
func (a *app) campaign(ctx context.Context, c *client.Client, name, value string, o electOptions) (*election.Election, error) {
	sctx, cancel := a.requestContext(ctx)
	s, err := lock.NewSession(sctx, c, lock.WithTTL(o.ttl), lock.WithName("kvctl elect "+name))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("elect %q: create a session: %w", name, err)
	}
	e := election.New(s, name, election.WithLockDelay(o.lockDelay))
	if err := e.Campaign(ctx, []byte(value)); err != nil {
		a.dropSession(ctx, s)
		return nil, fmt.Errorf("elect %q: %w", name, err)
	}
	fmt.Fprintf(a.stderr, "kvctl: elected leader of %s with token %d (session %d)\n", name, e.Token(), s.ID())
	return e, nil
}

// lead runs child while e leads, or without child holds leadership until
// ctx ends. lostErr says why leadership was lost; nil when it was not
// (ctx ended, or the child exited by itself: err is then its exit).
func (a *app) lead(ctx context.Context, e *election.Election, value string, child []string, o electOptions) (lostErr, err error) {
	s := e.Session()
	name, token := e.Name(), e.Token()
	if len(child) == 0 {
		if err := a.printElected(e, value); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-e.Lost():
			return e.Err(), nil
		}
	}
	end, err := a.runGuarded(guardedChild{
		argv: child,
		env: []string{
			"KVD_ELECTION_NAME=" + name,
			"KVD_ELECTION_TOKEN=" + strconv.FormatUint(token, 10),
			"KVD_ELECTION_SESSION=" + strconv.FormatUint(s.ID(), 10),
		},
		lost: e.Lost(),
		lostGrace: func() (time.Duration, string, error) {
			lostErr := e.Err()
			failed := errors.Is(lostErr, client.ErrSessionExpired) || !time.Now().Before(s.Deadline())
			grace, why := killGrace(o.grace, failed, s.ServerDeadline(), e.LockDelay(), "--grace")
			return grace, why, lostErr
		},
		what:      fmt.Sprintf("leadership of %q token %d", name, token),
		stopGrace: o.grace,
	})
	if err != nil {
		return nil, err
	}
	if end.lostErr != nil {
		return end.lostErr, nil
	}
	// The child may have outlived leadership without our noticing yet (a
	// paused process resumes with every timer due at once): judge by the
	// session's deadline too.
	select {
	case <-e.Lost():
		if err := e.Err(); err != nil {
			return err, nil
		}
	default:
		if !time.Now().Before(s.Deadline()) {
			return fmt.Errorf("%w: session %d not renewed before its deadline", lock.ErrLost, s.ID()), nil
		}
	}
	if end.signaled != nil || ctx.Err() != nil {
		return nil, nil // stopped on request
	}
	return nil, childExitErr(child[0], end.waitErr)
}

// resign gives the term and the session up, on a context of its own (ctx
// may have ended: that is often why).
func (a *app) resign(ctx context.Context, e *election.Election) {
	cctx, cancel := a.requestContext(context.WithoutCancel(ctx))
	defer cancel()
	if err := e.Resign(cctx); err != nil {
		fmt.Fprintf(a.stderr, "kvctl: %v (the next candidate leads when the session expires)\n", err)
	}
	e.Session().Close(cctx)
}

// dropSession closes a session whose term was lost, briefly: it expires
// anyway, and the cluster is often what failed.
func (a *app) dropSession(ctx context.Context, s *lock.Session) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(a.timeout, lostCleanup))
	defer cancel()
	s.Close(cctx)
}

// printElected prints what `elect NAME VALUE` won.
func (a *app) printElected(e *election.Election, value string) error {
	if a.json() {
		return a.printJSON(part(nil).bytes("name", []byte(e.Name())).bytes("value", []byte(value)).
			set("token", e.Token()).set("session", e.Session().ID()))
	}
	fmt.Fprintf(a.stdout, "name:    %s\nvalue:   %s\ntoken:   %d\nsession: %d\n", e.Name(), printable([]byte(value)), e.Token(), e.Session().ID())
	return nil
}

// printLeader prints one leader: a line of text, or a JSON object (with the
// header of the response that said so, when there is one).
func (a *app) printLeader(name string, l election.Leader, h *kvpb.ResponseHeader) error {
	if a.json() {
		o := part(h)
		if h != nil {
			o = response(h)
		}
		return a.printJSON(o.bytes("name", []byte(name)).bytes("value", l.Value).
			set("token", l.Token).set("session", l.Session).instant("held_since", l.HeldSince).set("index", l.Index))
	}
	_, err := fmt.Fprintf(a.stdout, "token %d session %d: %s\n", l.Token, l.Session, printable(l.Value))
	return err
}

func (a *app) electShow(cmd *cobra.Command, name string) error {
	c, ctx, cancel, err := a.request(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := c.GetLock(ctx, []byte(name))
	li := resp.GetLock()
	if errors.Is(err, client.ErrNotFound) || (err == nil && li.GetToken() == 0) {
		return withCode(exitNotFound, fmt.Errorf("elect %q: no leader", name))
	}
	if err != nil {
		return fmt.Errorf("elect %q --show: %w", name, err)
	}
	l := election.Leader{Value: li.GetValue(), Token: li.GetToken(), Session: li.GetSession(),
		HeldSince: li.GetHeldSince(), Index: resp.GetHeader().GetAppliedIndex()}
	return a.printLeader(name, l, resp.GetHeader())
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// electProclaim sets the leader's value under its term's token and
// session, given or from the environment kvctl elect gives CMD.
func (a *app) electProclaim(cmd *cobra.Command, name, value string, o electOptions) error {
	for _, f := range []struct {
		v    *uint64
		flag string
		env  string
	}{{&o.token, "--token", "KVD_ELECTION_TOKEN"}, {&o.session, "--session", "KVD_ELECTION_SESSION"}} {
		if *f.v != 0 {
			continue
		}
		env := os.Getenv(f.env)
		if env == "" {
			return &usageError{fmt.Sprintf("elect --proclaim: %s is required (or %s, which kvctl elect sets for CMD)", f.flag, f.env)}
		}
		n, err := strconv.ParseUint(env, 10, 64)
		if err != nil || n == 0 {
			return &usageError{fmt.Sprintf("elect --proclaim: %s=%q is not a positive integer", f.env, env)}
		}
		*f.v = n
	}
	c, ctx, cancel, err := a.request(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := c.ProclaimAs(ctx, o.session, []byte(name), o.token, []byte(value))
	if err != nil {
		return tokenErr("elect --proclaim", name, o.token, err)
	}
	li := resp.GetLock()
	l := election.Leader{Value: []byte(value), Token: li.GetToken(), Session: li.GetSession(),
		HeldSince: li.GetHeldSince(), Index: resp.GetHeader().GetAppliedIndex()}
	return a.printLeader(name, l, resp.GetHeader())
}

func (a *app) electListen(ctx context.Context, name string) error {
	c, err := a.Client()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stop()
	for l := range election.Observe(ctx, c, name) {
		if err := a.printLeader(name, l, nil); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil // interrupted
	}
	// The watch ended for good: say why.
	if _, err := election.LeaderOf(context.WithoutCancel(ctx), c, name); err != nil && !errors.Is(err, election.ErrNoLeader) {
		return fmt.Errorf("elect %q --listen: %w", name, err)
	}
	return fmt.Errorf("elect %q --listen: the watch ended", name)
}
