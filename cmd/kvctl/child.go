package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// guardedChild is a command kvctl runs only while it holds something (a
// lock for `lock acquire -- CMD`, leadership for `elect -- CMD`).
type guardedChild struct {
	argv []string
	env  []string // added to kvctl's environment
	// lost closes when what the child needs is gone. lostGrace then says
	// how long the child gets between SIGTERM and SIGKILL, the words that
	// say so, and why it was lost (for the caller's message and result).
	lost      <-chan struct{}
	lostGrace func() (grace time.Duration, why string, cause error)
	// what names what is held, for messages: `lock "x" token 5`.
	what string
	// stopGrace > 0: a signal kvctl receives stops the child (SIGTERM to
	// its group, SIGKILL after stopGrace) instead of only being forwarded.
	stopGrace time.Duration
}

// childEnd is how a guarded child ended.
type childEnd struct {
	waitErr  error     // cmd.Wait's
	lostErr  error     // set when lost closed while it ran
	signaled os.Signal // the first signal kvctl received while it ran
}

// runGuarded runs c.argv in a process group of its own (so that stopping
// it stops everything it started, sh -c 'a; b' included) with kvctl's
// stdin and stdout, and returns when it has exited. The signals kvctl
// receives (SIGINT, SIGTERM, SIGHUP) go to the child's group. When lost
// closes, the group gets SIGTERM, then SIGKILL after lostGrace's grace.
// A start error is returned as such.
func (a *app) runGuarded(c guardedChild) (childEnd, error) {
	var end childEnd
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = append(os.Environ(), c.env...)
	// kvctl writes its own messages to stderr while the child does; a
	// stderr that is not a file (tests) is shared under a lock.
	stderr := a.childStderr()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, stderr
	cmd.WaitDelay = time.Second // a grandchild holding our pipes does not hold us
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
		return end, fmt.Errorf("%s: start %s: %w", c.what, c.argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	lost := c.lost
	var kill <-chan time.Time
	var killTimer *time.Timer
	var killAt time.Time
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
	}()
	// armKill sends SIGKILL after d, unless an earlier one is due.
	armKill := func(d time.Duration) {
		if d <= 0 {
			signalGroup(syscall.SIGKILL)
			return
		}
		at := time.Now().Add(d)
		if killTimer != nil && !at.Before(killAt) {
			return
		}
		if killTimer != nil {
			killTimer.Stop()
		}
		killTimer, killAt = time.NewTimer(d), at
		kill = killTimer.C
	}
	for {
		select {
		case sig := <-sigs:
			if end.signaled == nil {
				end.signaled = sig
			}
			if c.stopGrace > 0 {
				fmt.Fprintf(stderr, "kvctl: %v: stopping %s (SIGTERM, SIGKILL in %v)\n", sig, c.argv[0], c.stopGrace)
				signalGroup(syscall.SIGTERM)
				armKill(c.stopGrace)
				continue
			}
			signalGroup(sig.(syscall.Signal))
		case <-lost:
			lost = nil
			grace, why, cause := c.lostGrace()
			end.lostErr = cause
			fmt.Fprintf(stderr, "kvctl: %s lost (%v); sending SIGTERM to %s, %s\n", c.what, cause, c.argv[0], why)
			signalGroup(syscall.SIGTERM)
			armKill(grace)
		case <-kill:
			kill = nil
			fmt.Fprintf(stderr, "kvctl: %s still running after SIGTERM; sending SIGKILL\n", c.argv[0])
			signalGroup(syscall.SIGKILL)
		case end.waitErr = <-exited:
			return end, nil
		}
	}
}

// childStderr is where a child writes its stderr: kvctl's, shared under a
// lock unless it is a file.
func (a *app) childStderr() io.Writer {
	if _, ok := a.stderr.(*os.File); ok {
		return a.stderr
	}
	if a.sharedStderr == nil {
		a.sharedStderr = &syncWriter{w: a.stderr}
	}
	return a.sharedStderr
}

// childExitErr is the error (and exit code) kvctl ends with after a child
// exited by itself: its exit code, 128+N when killed by signal N.
func childExitErr(name string, waitErr error) error {
	if waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return withCode(code, fmt.Errorf("%s exited with code %d", name, code))
	}
	return fmt.Errorf("wait for %s: %w", name, waitErr)
}

// killGrace is how long a child gets between SIGTERM and SIGKILL once
// what it needs (a lock, leadership) is lost, and the words that say so:
// flag (--kill-grace, --grace), but never longer than until the server may
// hand the lock on. That is the session's earliest expiry when the session
// failed, and the lock-delay when the lock was broken (none: at once).
func killGrace(flag time.Duration, sessionFailed bool, serverDeadline time.Time, lockDelay time.Duration, flagName string) (time.Duration, string) {
	var limit time.Duration
	var because string
	if sessionFailed {
		limit = max(0, time.Until(serverDeadline))
		because = "the server may expire the session and grant the lock to another holder"
	} else {
		limit = lockDelay
		because = "the lock was broken and its --lock-delay ends"
		if limit == 0 {
			because = "the lock was broken with no --lock-delay, so the server may already have granted it to another holder"
		}
	}
	if flag <= limit {
		return flag, fmt.Sprintf("SIGKILL in %v (%s)", flag, flagName)
	}
	if limit <= 0 {
		return 0, fmt.Sprintf("SIGKILL at once: %s (%s %v does not apply)", because, flagName, flag)
	}
	return limit, fmt.Sprintf("SIGKILL in %v, when %s (sooner than %s %v)", limit.Round(time.Millisecond), because, flagName, flag)
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
