package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newLockCommand) }

func newLockCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lock",
		Short: "Distributed locks with fencing tokens",
		Long: `Distributed locks with fencing tokens.

A lock belongs to a session with a TTL. Its fencing token (the Raft index of
the granting entry) grows with every grant: pass it to what the lock
protects, e.g. kvctl put --fence NAME:TOKEN KEY VALUE.

Exit codes: 3 lock not acquired within --wait; 5 lock lost while the
command ran; 4 lock not found.`,
	}
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
		return err
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
			err = fmt.Errorf("%w (waited %v)", lock.ErrLocked, o.wait)
		}
	} else {
		rctx, cancel := a.requestContext(ctx)
		err = m.TryLock(rctx)
		cancel()
	}
	if err != nil {
		closeSession()
		if errors.Is(err, lock.ErrLocked) {
			return withCode(exitNotAcquired, fmt.Errorf("lock %q not acquired: %w%s", name, err, a.lockHolderHint(ctx, c, name)))
		}
		return err
	}
	if len(child) == 0 {
		// The session must outlive kvctl: it is not closed, and keeps the
		// lock until its TTL ends or the lock is released.
		g := m.Grant()
		return a.printLockGrant(name, m.Token(), s.ID(), g.GetLock(), g.GetHeader())
	}
	return a.lockRun(ctx, m, child, o)
}

// lockHolderHint names the holder of a lock for an error message.
func (a *app) lockHolderHint(ctx context.Context, c *client.Client, name string) string {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	resp, err := c.GetLock(rctx, []byte(name))
	if err != nil || resp.GetLock().GetToken() == 0 {
		return ""
	}
	li := resp.GetLock()
	return fmt.Sprintf(" (held by session %d with token %d since %s)", li.GetSession(), li.GetToken(),
		logTimeText(li.GetHeldSince(), resp.GetHeader().GetLogTime()))
}

// lockRun runs child while m is held and returns its exit code, or
// exitLockLost if the lock was lost meanwhile.
func (a *app) lockRun(ctx context.Context, m *lock.Mutex, child []string, o lockAcquireOptions) error {
	s := m.Session()
	name := m.Name()
	token := m.Token()
	finish := func() {
		cctx, cancel := a.requestContext(context.WithoutCancel(ctx))
		defer cancel()
		m.Unlock(cctx) // a stale token releases nothing; the session close below does the rest
		s.Close(cctx)
	}

	cmd := exec.Command(child[0], child[1:]...)
	cmd.Env = append(os.Environ(),
		"KVD_LOCK_NAME="+name,
		"KVD_LOCK_TOKEN="+strconv.FormatUint(token, 10),
		"KVD_LOCK_SESSION="+strconv.FormatUint(s.ID(), 10),
	)
	// kvctl writes its own messages to stderr while the child does; a
	// stderr that is not a file (tests) is shared under a lock.
	stderr := a.stderr
	if _, ok := stderr.(*os.File); !ok {
		stderr = &syncWriter{w: stderr}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, stderr
	cmd.WaitDelay = time.Second // a grandchild holding our pipes does not hold us
	// The child leads a process group of its own, so that losing the lock
	// stops everything it started (sh -c 'a; b' included), not only itself.
	// kvctl forwards the signals it receives to that group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	signalGroup := func(sig syscall.Signal) {
		if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil {
			cmd.Process.Signal(sig)
		}
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	if err := cmd.Start(); err != nil {
		finish()
		return fmt.Errorf("lock %q: start %s: %w", name, child[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	lost := m.Lost()
	var kill <-chan time.Time
	var lostErr error
	var waitErr error
loop:
	for {
		select {
		case sig := <-sigs:
			signalGroup(sig.(syscall.Signal))
		case <-lost:
			lost = nil
			lostErr = m.Err()
			// SIGKILL comes after --kill-grace, but never later than the
			// server may hand the lock on: the session's earliest expiry
			// (when the session failed), or at once (when it was broken).
			grace := o.killGrace
			if errors.Is(lostErr, client.ErrSessionExpired) || !time.Now().Before(s.Deadline()) {
				grace = min(grace, max(0, time.Until(s.ServerDeadline())))
			} else {
				grace = min(grace, m.LockDelay())
			}
			fmt.Fprintf(stderr, "kvctl: lock %q token %d lost (%v); sending SIGTERM to %s, SIGKILL in %v\n",
				name, token, lostErr, child[0], grace.Round(time.Millisecond))
			signalGroup(syscall.SIGTERM)
			t := time.NewTimer(grace)
			defer t.Stop()
			kill = t.C
		case <-kill:
			kill = nil
			fmt.Fprintf(stderr, "kvctl: %s still running after SIGTERM; sending SIGKILL\n", child[0])
			signalGroup(syscall.SIGKILL)
		case waitErr = <-exited:
			break loop
		}
	}
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
	finish()
	if lostErr != nil {
		return withCode(exitLockLost, fmt.Errorf("lock %q token %d lost while %s ran: %w", name, token, child[0], lostErr))
	}
	if waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return withCode(code, fmt.Errorf("%s exited with code %d", child[0], code))
	}
	return fmt.Errorf("lock %q: wait for %s: %w", name, child[0], waitErr)
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func newLockReleaseCommand(a *app) *cobra.Command {
	var token uint64
	cmd := &cobra.Command{
		Use:   "release NAME --token N",
		Short: "Release a lock held with token N",
		Long: `Release the lock NAME if token N still holds it; the next waiter is granted
in the same apply. A token that is not current releases nothing (error).`,
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
				return err
			}
			defer s.Close(context.WithoutCancel(ctx))
			resp, err := s.Release(ctx, []byte(args[0]), token)
			if err != nil {
				return fmt.Errorf("release %q token %d: %w", args[0], token, err)
			}
			if a.json() {
				return a.printJSON(map[string]any{"name": args[0], "released_token": token, "next_token": resp.GetNextToken()})
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
		Short: "Keep alive the session holding a lock with token N",
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
				return fmt.Errorf("renew %q token %d: %w", args[0], token, err)
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
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GetLock(ctx, []byte(args[0]))
			if err != nil {
				return fmt.Errorf("lock %q: %w", args[0], err)
			}
			li := resp.GetLock()
			if li == nil {
				li = &kvpb.LockInfo{Name: []byte(args[0])}
			}
			return a.printLock(li, resp.GetHeader())
		},
	}
}

func newLockListCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list [PREFIX]",
		Short: "List locks that are held or have waiters",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return &usageError{"lock list: want at most one PREFIX"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var prefix []byte
			if len(args) == 1 {
				prefix = []byte(args[0])
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListLocks(ctx, prefix)
			if err != nil {
				return err
			}
			now := resp.GetHeader().GetLogTime()
			if a.json() {
				out := make([]lockJSON, 0, len(resp.GetLocks()))
				for _, li := range resp.GetLocks() {
					out = append(out, toLockJSON(li, now))
				}
				return a.printJSON(map[string]any{"locks": out, "log_time": logTimeRFC3339(now)})
			}
			for _, li := range resp.GetLocks() {
				holder := "free"
				if li.GetToken() != 0 {
					holder = fmt.Sprintf("token %d session %d expires %s", li.GetToken(), li.GetSession(), logTimeText(li.GetExpiresAt(), now))
				}
				fmt.Fprintf(a.stdout, "%s\t%s\t%d waiting\n", li.GetName(), holder, len(li.GetWaiters()))
			}
			return nil
		},
	}
}

func newLockBreakCommand(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "break NAME [--reason R]",
		Short: "Forcibly release a lock (operator override)",
		Long: `Forcibly release the lock NAME: the holder's token stops being valid at
once (fenced writes with it are rejected), the break is recorded on the lock,
and the next waiter is granted.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.BreakLock(ctx, []byte(args[0]), reason)
			if err != nil {
				return fmt.Errorf("break %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(map[string]any{"name": args[0], "broken_token": resp.GetBrokenToken(), "next_token": resp.GetNextToken()})
			}
			fmt.Fprintf(a.stdout, "broke %s token %d", args[0], resp.GetBrokenToken())
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
		Short: "Check a fencing token: exit 0 if it still holds the lock, 1 if not",
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
				return err
			}
			if a.json() {
				if err := a.printJSON(map[string]any{"name": args[0], "token": token, "valid": resp.GetValid(), "current_token": resp.GetCurrentToken()}); err != nil {
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

// lockJSON is the -o json form of a lock.
type lockJSON struct {
	Name        string       `json:"name"`
	Token       uint64       `json:"token"`
	Session     uint64       `json:"session"`
	HeldSince   string       `json:"held_since,omitempty"`
	ExpiresAt   string       `json:"expires_at,omitempty"`
	ExpiresInMs int64        `json:"expires_in_ms,omitempty"`
	Waiters     []waiterJSON `json:"waiters"`
	DelayUntil  string       `json:"delay_until,omitempty"`
	LockDelayMs int64        `json:"lock_delay_ms,omitempty"`
	BrokenToken uint64       `json:"broken_token,omitempty"`
	BrokenAt    string       `json:"broken_at,omitempty"`
	BrokenWhy   string       `json:"broken_reason,omitempty"`
}

type waiterJSON struct {
	Session   uint64 `json:"session"`
	QueuedAt  string `json:"queued_at"`
	WaitUntil string `json:"wait_until"`
}

func toLockJSON(li *kvpb.LockInfo, now int64) lockJSON {
	j := lockJSON{
		Name:        string(li.GetName()),
		Token:       li.GetToken(),
		Session:     li.GetSession(),
		HeldSince:   logTimeRFC3339(li.GetHeldSince()),
		ExpiresAt:   logTimeRFC3339(li.GetExpiresAt()),
		Waiters:     []waiterJSON{},
		DelayUntil:  logTimeRFC3339(li.GetDelayUntil()),
		LockDelayMs: li.GetLockDelayMs(),
		BrokenToken: li.GetBrokenToken(),
		BrokenAt:    logTimeRFC3339(li.GetBrokenAt()),
		BrokenWhy:   li.GetBrokenReason(),
	}
	if li.GetExpiresAt() != 0 && now != 0 {
		j.ExpiresInMs = time.Duration(li.GetExpiresAt() - now).Milliseconds()
	}
	for _, w := range li.GetWaiters() {
		j.Waiters = append(j.Waiters, waiterJSON{Session: w.GetSession(), QueuedAt: logTimeRFC3339(w.GetQueuedAt()), WaitUntil: logTimeRFC3339(w.GetWaitUntil())})
	}
	return j
}

// printLockGrant prints what `lock acquire` without CMD got.
func (a *app) printLockGrant(name string, token, session uint64, li *kvpb.LockInfo, h *kvpb.ResponseHeader) error {
	now := h.GetLogTime()
	if a.json() {
		return a.printJSON(map[string]any{
			"name":          name,
			"token":         token,
			"session":       session,
			"expires_at":    logTimeRFC3339(li.GetExpiresAt()),
			"expires_in_ms": time.Duration(li.GetExpiresAt() - now).Milliseconds(),
		})
	}
	fmt.Fprintf(a.stdout, "name:    %s\ntoken:   %d\nsession: %d\nexpires: %s\n", name, token, session, logTimeText(li.GetExpiresAt(), now))
	return nil
}

// printLock prints a lock's state as of header.
func (a *app) printLock(li *kvpb.LockInfo, h *kvpb.ResponseHeader) error {
	now := h.GetLogTime()
	if a.json() {
		return a.printJSON(toLockJSON(li, now))
	}
	w := a.stdout
	fmt.Fprintf(w, "name:       %s\n", li.GetName())
	if li.GetToken() == 0 {
		fmt.Fprintf(w, "holder:     none (free)\n")
	} else {
		fmt.Fprintf(w, "token:      %d\n", li.GetToken())
		fmt.Fprintf(w, "session:    %d\n", li.GetSession())
		fmt.Fprintf(w, "held since: %s\n", logTimeText(li.GetHeldSince(), now))
		fmt.Fprintf(w, "expires:    %s\n", logTimeText(li.GetExpiresAt(), now))
	}
	if li.GetLockDelayMs() != 0 {
		fmt.Fprintf(w, "lock delay: %v\n", time.Duration(li.GetLockDelayMs())*time.Millisecond)
	}
	if li.GetDelayUntil() > now {
		fmt.Fprintf(w, "no grant before: %s\n", logTimeText(li.GetDelayUntil(), now))
	}
	if li.GetBrokenToken() != 0 {
		fmt.Fprintf(w, "last break: token %d at %s", li.GetBrokenToken(), logTimeText(li.GetBrokenAt(), now))
		if li.GetBrokenReason() != "" {
			fmt.Fprintf(w, " (%s)", li.GetBrokenReason())
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "waiters:    %d\n", len(li.GetWaiters()))
	for i, wt := range li.GetWaiters() {
		fmt.Fprintf(w, "  %d. session %d, queued %s, waits until %s\n", i+1, wt.GetSession(),
			logTimeText(wt.GetQueuedAt(), now), logTimeText(wt.GetWaitUntil(), now))
	}
	return nil
}

// logTimeRFC3339 formats a log time (unix ns); "" for 0.
func logTimeRFC3339(t int64) string {
	if t == 0 {
		return ""
	}
	return time.Unix(0, t).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// logTimeText formats a log time with how far it is from now (the
// response's log time): "2026-11-22T04:10:00.000Z (in 59.9s)".
func logTimeText(t, now int64) string {
	if t == 0 {
		return "-"
	}
	s := logTimeRFC3339(t)
	if now == 0 {
		return s
	}
	d := time.Duration(t - now).Round(time.Millisecond)
	switch {
	case d > 0:
		return fmt.Sprintf("%s (in %v)", s, d)
	case d < 0:
		return fmt.Sprintf("%s (%v ago)", s, -d)
	}
	return s + " (now)"
}
