package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newLockCommand) }

func newLockCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "lock",
		Short: "Distributed locks with fencing tokens",
		Long: `Distributed locks with fencing tokens.

A lock belongs to a session with a TTL. Its fencing token (the Raft index of
the granting entry) grows with every grant: pass it to what the lock
protects, e.g. kvctl put --fence NAME:TOKEN KEY VALUE.

Exit codes: 3 lock not acquired within --wait; 5 lock lost while the
command ran; 4 lock not found.`,
	})
	cmd.AddCommand(
		newLockAcquireCommand(a),
		newLockReleaseCommand(a),
		newLockRenewCommand(a),
		newLockShowCommand(a),
		newLockListCommand(a),
		newLockBreakCommand(a),
		newLockCheckCommand(a),
	)
	return cmd
}

// lockAcquireOptions are the flags of `lock acquire`.
type lockAcquireOptions struct {
	ttl       time.Duration
	wait      time.Duration
	lockDelay time.Duration
	killGrace time.Duration
}

func newLockAcquireCommand(a *app) *cobra.Command {
	var o lockAcquireOptions
	cmd := &cobra.Command{
		Use:   "acquire NAME [-- CMD ARGS...]",
		Short: "Take a lock; with CMD, hold it while CMD runs",
		Long: `Take the lock NAME under a new session with --ttl.

Without CMD: print the lock's name, token, session and expiry and exit 0,
leaving the session (and the lock) alive until its TTL runs out or the lock
is released (kvctl lock release NAME --token N).

With CMD: run CMD while holding the lock, keeping the session alive; CMD gets
KVD_LOCK_NAME, KVD_LOCK_TOKEN and KVD_LOCK_SESSION in its environment. CMD
runs in a process group of its own, and SIGINT, SIGTERM and SIGHUP sent to
kvctl are forwarded to that group. The lock is released when CMD exits, and
kvctl exits with CMD's exit code (128+N when killed by signal N).
If the lock is lost while CMD runs (the session could not be renewed before
its TTL, or the lock was broken), CMD's process group gets SIGTERM, then
SIGKILL after --kill-grace, but never later than the server may grant the
lock to someone else (the session's earliest expiry; for a broken lock, its
--lock-delay), and kvctl exits 5. A leader election alone does not lose it.

Exit 3 when the lock is not acquired within --wait (0: try once).`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case dash < 0 && len(args) == 1:
			case dash == 1 && len(args) > 1:
			default:
				return &usageError{"lock acquire: want NAME, optionally followed by -- CMD [ARGS...]"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.ttl <= 0 || o.wait < 0 || o.lockDelay < 0 || o.killGrace < 0 {
				return &usageError{"lock acquire: --ttl must be positive; --wait, --lock-delay and --kill-grace not negative"}
			}
			var child []string
			if len(args) > 1 {
				child = args[1:]
			}
			return a.lockAcquire(cmd.Context(), args[0], child, o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.ttl, "ttl", 60*time.Second, "TTL of the session that owns the lock")
	f.DurationVar(&o.wait, "wait", 0, "wait in the lock's FIFO line up to this long (0: try once)")
	f.DurationVar(&o.lockDelay, "lock-delay", 0, "after an involuntary release (expiry, break), grant nobody the lock for this long")
	f.DurationVar(&o.killGrace, "kill-grace", 10*time.Second, "with CMD: time between SIGTERM and SIGKILL when the lock is lost")
	return cmd
}

func (a *app) lockAcquire(ctx context.Context, name string, child []string, o lockAcquireOptions) error {
	c, err := a.Client()
	if err != nil {
		return err
	}
	sctx, cancel := a.requestContext(ctx)
	s, err := lock.NewSession(sctx, c, lock.WithTTL(o.ttl), lock.WithName("kvctl lock acquire "+name))
	cancel()
	if err != nil {
		return fmt.Errorf("lock acquire %q: create a session: %w", name, err)
	}
	// closeSession gives the session up (and with it the lock, if held).
	closeSession := func() {
		cctx, cancel := a.requestContext(context.WithoutCancel(ctx))
		defer cancel()
		s.Close(cctx)
	}
	m := lock.NewMutex(s, name, lock.WithLockDelay(o.lockDelay))
	if o.wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, o.wait)
		err = m.Lock(wctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = lock.ErrLocked
		}
	} else {
		rctx, cancel := a.requestContext(ctx)
		err = m.TryLock(rctx)
		cancel()
	}
	if err != nil {
		closeSession()
		if errors.Is(err, lock.ErrLocked) {
			within := ""
			if o.wait > 0 {
				within = fmt.Sprintf(" within --wait %v", o.wait)
			}
			return withCode(exitNotAcquired, fmt.Errorf("lock %q not acquired%s: %s", name, within, a.lockHolder(ctx, c, name)))
		}
		return fmt.Errorf("lock acquire %q: %w", name, err)
	}
	if len(child) == 0 {
		// The session must outlive kvctl: it is not closed, and keeps the
		// lock until its TTL ends or the lock is released.
		g := m.Grant()
		return a.printLockGrant(name, m.Token(), s.ID(), g.GetLock(), g.GetHeader())
	}
	return a.lockRun(ctx, m, child, o)
}

// lockHolder says who holds a lock, for the message of a lock not acquired.
func (a *app) lockHolder(ctx context.Context, c *client.Client, name string) string {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	resp, err := c.GetLock(rctx, []byte(name))
	li := resp.GetLock()
	if err != nil || li.GetToken() == 0 {
		return "held by another session"
	}
	return fmt.Sprintf("held by session %d with token %d since %s", li.GetSession(), li.GetToken(), when(li.GetHeldSince(), resp.GetHeader()))
}

// lockRun runs child while m is held and returns its exit code, or
// exitLockLost if the lock was lost meanwhile.
func (a *app) lockRun(ctx context.Context, m *lock.Mutex, child []string, o lockAcquireOptions) error {
	s := m.Session()
	name := m.Name()
	token := m.Token()
	// finish gives the lock and the session up. After the lock was lost the
	// token releases nothing, and the cluster is often what failed: closing
	// the session is then a courtesy (it expires anyway), tried for a
	// moment, so that a cron wrapper does not wait out --timeout.
	finish := func(lost bool) {
		cctx, cancel := a.requestContext(context.WithoutCancel(ctx))
		if lost {
			cancel()
			cctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), min(a.timeout, lostCleanup))
		}
		defer cancel()
		if !lost {
			m.Unlock(cctx)
		}
		s.Close(cctx)
	}

	end, err := a.runGuarded(guardedChild{
		argv: child,
		env: []string{
			"KVD_LOCK_NAME=" + name,
			"KVD_LOCK_TOKEN=" + strconv.FormatUint(token, 10),
			"KVD_LOCK_SESSION=" + strconv.FormatUint(s.ID(), 10),
		},
		lost: m.Lost(),
		lostGrace: func() (time.Duration, string, error) {
			lostErr := m.Err()
			failed := errors.Is(lostErr, client.ErrSessionExpired) || !time.Now().Before(s.Deadline())
			grace, why := killGrace(o.killGrace, failed, s.ServerDeadline(), m.LockDelay(), "--kill-grace")
			return grace, why, lostErr
		},
		what: fmt.Sprintf("lock %q token %d", name, token),
	})
	if err != nil {
		finish(false)
		return err
	}
	lostErr, waitErr := end.lostErr, end.waitErr
	// The child may have outlived the lock without our noticing yet (a
	// paused process resumes with every timer due at once): judge by the
	// session's deadline too.
	if lostErr == nil {
		select {
		case <-m.Lost():
			lostErr = m.Err()
		default:
			if !time.Now().Before(s.Deadline()) {
				lostErr = fmt.Errorf("%w: session %d not renewed before its deadline", lock.ErrLost, s.ID())
			}
		}
	}
	finish(lostErr != nil)
	if lostErr != nil {
		return withCode(exitLockLost, fmt.Errorf("lock %q token %d lost while %s ran: %w", name, token, child[0], lostErr))
	}
	return childExitErr(child[0], waitErr)
}

// lostCleanup bounds closing the session after the lock was lost.
const lostCleanup = time.Second

func newLockReleaseCommand(a *app) *cobra.Command {
	var token uint64
	cmd := &cobra.Command{
		Use:   "release NAME --token N",
		Short: "Release a lock held with token N",
		Long: `Release the lock NAME if token N still holds it; the next waiter is granted
in the same apply. A token that is not current releases nothing: exit 1 when
another grant holds the lock, 4 when nobody does.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == 0 {
				return &usageError{"lock release: --token is required"}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			// Release is a command of a session; the token is what names
			// the grant, so a short-lived session of our own issues it.
			s, err := c.NewSession(ctx, 10*time.Second, "kvctl lock release "+args[0])
			if err != nil {
				return fmt.Errorf("lock release %q: create a session: %w", args[0], err)
			}
			defer s.Close(context.WithoutCancel(ctx))
			resp, err := s.Release(ctx, []byte(args[0]), token)
			if err != nil {
				return tokenErr("lock release", args[0], token, err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).bytes("name", []byte(args[0])).
					set("released_token", token).set("next_token", resp.GetNextToken()))
			}
			if resp.GetNextToken() != 0 {
				fmt.Fprintf(a.stdout, "released %s token %d; granted to the next waiter with token %d\n", args[0], token, resp.GetNextToken())
			} else {
				fmt.Fprintf(a.stdout, "released %s token %d\n", args[0], token)
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&token, "token", 0, "fencing token of the grant to release")
	return cmd
}

func newLockRenewCommand(a *app) *cobra.Command {
	var token uint64
	cmd := &cobra.Command{
		Use:   "renew NAME --token N",
		Short: "Keep alive the session holding a lock with token N (exit 4: the lock is not held)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == 0 {
				return &usageError{"lock renew: --token is required"}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RenewLock(ctx, []byte(args[0]), token)
			if err != nil {
				return tokenErr("lock renew", args[0], token, err)
			}
			return a.printLock(resp.GetLock(), resp.GetHeader())
		},
	}
	cmd.Flags().Uint64Var(&token, "token", 0, "fencing token of the grant to renew")
	return cmd
}

func newLockShowCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a lock: holder, token, session, held since, expiry, waiters in order",
		Long: `Show the lock NAME: its holder, token, session, since when it is held and
when it expires, its waiters in order, a lock delay running, and its last
break. Exit 4 when the server knows nothing about NAME: no holder, no
waiters, no lock delay running and no break on record.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GetLock(ctx, []byte(args[0]))
			if err != nil {
				return fmt.Errorf("lock show %q: %w", args[0], err)
			}
			li := resp.GetLock()
			if li == nil {
				li = &kvpb.LockInfo{Name: []byte(args[0])}
			}
			if lockUnknown(li, resp.GetHeader()) {
				return withCode(exitNotFound, fmt.Errorf("lock show %q: not found (not held, no waiters, nothing on record)", args[0]))
			}
			return a.printLock(li, resp.GetHeader())
		},
	}
}

func newLockListCommand(a *app) *cobra.Command {
	var (
		limit      int
		startAfter string
	)
	cmd := &cobra.Command{
		Use:   "list [PREFIX]",
		Short: "List locks that are held or have waiters",
		Long: `List the locks starting with PREFIX (all without it) that are held or
have waiters, in name order.

--limit 0 (the default) pages through every lock, one server page at a time
(each page is its own read, so a listing of many pages is not one snapshot).
--limit N lists at most N; when more match, text output ends with a note on
stderr naming the --start-after to continue with, and -o json has "more":
true.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return &usageError{"lock list: want at most one PREFIX"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return &usageError{fmt.Sprintf("--limit %d is negative", limit)}
			}
			var prefix []byte
			if len(args) == 1 {
				prefix = []byte(args[0])
			}
			c, err := a.Client()
			if err != nil {
				return err
			}
			var (
				locks []*kvpb.LockInfo
				more  bool
				h     *kvpb.ResponseHeader
				after = []byte(startAfter)
			)
			for {
				want := 0 // the server's default page
				if limit > 0 {
					want = limit - len(locks)
				}
				ctx, cancel := a.requestContext(cmd.Context())
				resp, err := c.ListLocks(ctx, prefix, client.WithLimit(want), client.WithStartAfter(after))
				cancel()
				if err != nil {
					return fmt.Errorf("lock list: %w", err)
				}
				h = resp.GetHeader()
				locks = append(locks, resp.GetLocks()...)
				more = resp.GetMore()
				if !more || len(resp.GetLocks()) == 0 || (limit > 0 && len(locks) >= limit) {
					break
				}
				after = resp.GetLocks()[len(resp.GetLocks())-1].GetName()
			}
			if a.json() {
				out := []*object{}
				for _, li := range locks {
					out = append(out, lockObject(li, h))
				}
				return a.printJSON(response(h).set("locks", out).set("more", more))
			}
			for _, li := range locks {
				holder := "free"
				if li.GetToken() != 0 {
					holder = fmt.Sprintf("token %d session %d expires %s", li.GetToken(), li.GetSession(), when(li.GetExpiresAt(), h))
				}
				fmt.Fprintf(a.stdout, "%s\t%s\t%d waiting\n", printable(li.GetName()), holder, len(li.GetWaiters()))
			}
			if more && len(locks) > 0 {
				fmt.Fprintf(a.stderr, "kvctl: more locks match: continue with --start-after %s\n", strconv.Quote(string(locks[len(locks)-1].GetName())))
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "at most N locks (0: page through all)")
	cmd.Flags().StringVar(&startAfter, "start-after", "", "list locks strictly after this name")
	return cmd
}

func newLockBreakCommand(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "break NAME [--reason R]",
		Short: "Forcibly release a lock (operator override)",
		Long: `Forcibly release the lock NAME: the holder's token stops being valid at
once (fenced writes with it are rejected), and the lock's lock-delay (if its
holder asked for one) starts before the next waiter is granted, as for an
expired holder. Breaking a lock that is free but within its lock-delay
clears the delay: the next waiter is granted at once. The output says which.
The break (token, time, --reason) is recorded on the lock for lock show
while the lock has a holder, waiters or a lock delay running; a lock left
with none of these is forgotten, its break record with it. Exit 4 when the
lock is neither held nor within a lock-delay.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.BreakLock(ctx, []byte(args[0]), reason)
			if errors.Is(err, client.ErrNotFound) {
				return withCode(exitNotFound, fmt.Errorf("lock break %q: the lock is not held and has no lock-delay running (not found)", args[0]))
			}
			if err != nil {
				return fmt.Errorf("lock break %q: %w", args[0], err)
			}
			if a.json() {
				o := response(resp.GetHeader()).bytes("name", []byte(args[0])).
					set("broken_token", resp.GetBrokenToken()).set("next_token", resp.GetNextToken()).
					instant("delay_until", resp.GetDelayUntil()).instant("cleared_delay_until", resp.GetClearedDelayUntil())
				if reason != "" {
					o.set("reason", reason)
				}
				return a.printJSON(o)
			}
			h := resp.GetHeader()
			if resp.GetBrokenToken() != 0 {
				fmt.Fprintf(a.stdout, "broke %s token %d", args[0], resp.GetBrokenToken())
			} else {
				fmt.Fprintf(a.stdout, "%s was free", args[0])
			}
			if reason != "" {
				fmt.Fprintf(a.stdout, " (%s)", reason)
			}
			if d := resp.GetDelayUntil(); d != 0 {
				fmt.Fprintf(a.stdout, "; its lock-delay runs until %s (break again to clear it)", when(d, h))
			}
			if d := resp.GetClearedDelayUntil(); d != 0 {
				fmt.Fprintf(a.stdout, "; cleared its lock-delay, which ran until %s", when(d, h))
			}
			if resp.GetNextToken() != 0 {
				fmt.Fprintf(a.stdout, "; granted to the next waiter with token %d", resp.GetNextToken())
			}
			fmt.Fprintln(a.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded on the lock for people")
	return cmd
}

func newLockCheckCommand(a *app) *cobra.Command {
	var token uint64
	cmd := &cobra.Command{
		Use:   "check NAME --token N",
		Short: "Check a fencing token: exit 0 if it still holds the lock, 1 if not (a free lock included)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == 0 {
				return &usageError{"lock check: --token is required"}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.CheckFence(ctx, []byte(args[0]), token)
			if err != nil {
				return fmt.Errorf("lock check %q: %w", args[0], err)
			}
			if a.json() {
				if err := a.printJSON(response(resp.GetHeader()).bytes("name", []byte(args[0])).
					set("token", token).set("valid", resp.GetValid()).set("current_token", resp.GetCurrentToken())); err != nil {
					return err
				}
			} else if resp.GetValid() {
				fmt.Fprintf(a.stdout, "valid: token %d holds %s\n", token, args[0])
			}
			if !resp.GetValid() {
				return withCode(exitFailed, fmt.Errorf("token %d does not hold %s (current token %d)", token, args[0], resp.GetCurrentToken()))
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&token, "token", 0, "fencing token to check")
	return cmd
}

// printLockGrant prints what `lock acquire` without CMD got.
func (a *app) printLockGrant(name string, token, session uint64, li *kvpb.LockInfo, h *kvpb.ResponseHeader) error {
	if a.json() {
		return a.printJSON(response(h).bytes("name", []byte(name)).
			set("token", token).
			set("session", session).
			instant("expires_at", li.GetExpiresAt()))
	}
	fmt.Fprintf(a.stdout, "name:    %s\ntoken:   %d\nsession: %d\nexpires: %s\n", name, token, session, when(li.GetExpiresAt(), h))
	return nil
}

// lockUnknown reports whether the server knows nothing about a lock: no
// holder, no waiters, no lock delay running, no break on record.
func lockUnknown(li *kvpb.LockInfo, h *kvpb.ResponseHeader) bool {
	return li.GetToken() == 0 && len(li.GetWaiters()) == 0 && li.GetDelayUntil() <= h.GetLogTime() && li.GetBrokenToken() == 0
}

// printLock prints a lock's state as of header h.
func (a *app) printLock(li *kvpb.LockInfo, h *kvpb.ResponseHeader) error {
	if a.json() {
		return a.printJSON(response(h).set("lock", lockObject(li, h)))
	}
	now := h.GetLogTime()
	w := a.stdout
	fmt.Fprintf(w, "name:       %s\n", printable(li.GetName()))
	if li.GetToken() == 0 {
		fmt.Fprintf(w, "holder:     none (free)\n")
	} else {
		fmt.Fprintf(w, "token:      %d\n", li.GetToken())
		fmt.Fprintf(w, "session:    %d\n", li.GetSession())
		fmt.Fprintf(w, "held since: %s\n", when(li.GetHeldSince(), h))
		fmt.Fprintf(w, "expires:    %s\n", when(li.GetExpiresAt(), h))
		if li.GetValue() != nil {
			fmt.Fprintf(w, "value:      %s\n", printable(li.GetValue()))
		}
	}
	if li.GetLockDelayMs() != 0 {
		fmt.Fprintf(w, "lock delay: %v\n", time.Duration(li.GetLockDelayMs())*time.Millisecond)
	}
	if li.GetDelayUntil() > now {
		fmt.Fprintf(w, "no grant before: %s\n", when(li.GetDelayUntil(), h))
	}
	if li.GetBrokenToken() != 0 {
		fmt.Fprintf(w, "last break: token %d at %s", li.GetBrokenToken(), when(li.GetBrokenAt(), h))
		if li.GetBrokenReason() != "" {
			fmt.Fprintf(w, " (%s)", li.GetBrokenReason())
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "waiters:    %d\n", len(li.GetWaiters()))
	for i, wt := range li.GetWaiters() {
		fmt.Fprintf(w, "  %d. session %d, queued %s, waits until %s\n", i+1, wt.GetSession(),
			when(wt.GetQueuedAt(), h), when(wt.GetWaitUntil(), h))
	}
	return nil
}

// tokenErr says why a release or renew with token did nothing: the lock is
// free (exit 4, not found, as for lock show) or another grant holds it.
func tokenErr(what, name string, token uint64, err error) error {
	var ce *client.Error
	if errors.Is(err, client.ErrStaleToken) && errors.As(err, &ce) {
		if ce.CurrentToken == 0 {
			return withCode(exitNotFound, fmt.Errorf("%s %q token %d: the lock is not held (not found)", what, name, token))
		}
		return fmt.Errorf("%s %q token %d: token is not current: the lock is held with token %d", what, name, token, ce.CurrentToken)
	}
	return fmt.Errorf("%s %q token %d: %w", what, name, token, err)
}
