package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/election"
	"github.com/kvdproject/kvd/internal/testcluster"
)

// elect NAME VALUE -- CMD runs CMD as the leader with the term's token,
// exits with CMD's code and resigns; --show finds the leader, or exits 4.
func TestElectRunsCommandAndResigns(t *testing.T) {
	cl, c := lockTestCluster(t)
	if code, _, errs := lockCLI(t, cl, "elect", "cron", "--show"); code != exitNotFound {
		t.Fatalf("elect --show with no leader: exit %d, want %d (%s)", code, exitNotFound, errs)
	}
	code, out, errs := lockCLI(t, cl, "elect", "cron", "host-1", "--ttl", "5s", "--",
		"sh", "-c", `echo "$KVD_ELECTION_NAME $KVD_ELECTION_TOKEN $KVD_ELECTION_SESSION"; exit 7`)
	if code != 7 {
		t.Fatalf("exit code = %d, want 7 (the child's)\nstdout: %s\nstderr: %s", code, out, errs)
	}
	var name string
	var token, session uint64
	if _, err := fmt.Sscanf(out, "%s %d %d", &name, &token, &session); err != nil || name != "cron" || token == 0 || session == 0 {
		t.Fatalf("child saw %q (%v); want KVD_ELECTION_NAME=cron and non-zero token, session", out, err)
	}
	if _, err := election.LeaderOf(t.Context(), c, "cron"); !errors.Is(err, election.ErrNoLeader) {
		t.Fatalf("after CMD exited: leader %v, want ErrNoLeader (kvctl resigns)", err)
	}
}

// While a candidate leads, --show prints it; when its lock is broken the
// kvctl running CMD stops CMD and exits 5 (no --restart).
func TestElectLeadershipLostExit5(t *testing.T) {
	cl, c := lockTestCluster(t)
	type result struct {
		code      int
		out, errs string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := lockCLI(t, cl, "elect", "cron", "host-1", "--ttl", "5s", "--grace", "3s", "--", "sleep", "30")
		done <- result{code, out, errs}
	}()
	var l election.Leader
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if l, err = election.LeaderOf(t.Context(), c, "cron"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader 10s after kvctl elect started: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, out, errs := lockCLI(t, cl, "elect", "cron", "--show")
	if want := fmt.Sprintf("token %d session %d: host-1\n", l.Token, l.Session); code != 0 || out != want {
		t.Fatalf("elect --show: exit %d, %q; want 0, %q (%s)", code, out, want, errs)
	}
	if _, err := c.BreakLock(t.Context(), []byte("cron"), "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code != exitLockLost {
			t.Fatalf("kvctl elect after a break: exit %d, want %d\nstderr: %s", r.code, exitLockLost, r.errs)
		}
		if !strings.Contains(r.errs, "sending SIGTERM to sleep") {
			t.Errorf("stderr does not say the command was stopped:\n%s", r.errs)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kvctl elect still running 30s after its leadership was broken")
	}
	if _, err := c.GetLock(t.Context(), []byte("cron")); err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatal(err)
	}
}

// elect NAME --proclaim VALUE changes the leader's value under its token
// and session (flags, or the environment elect gives CMD), keeping the
// term; a superseded token is refused (exit 1), and with nobody leading it
// exits 4.
func TestElectProclaim(t *testing.T) {
	cl, c := lockTestCluster(t)
	s := testcluster.NewSession(t, c, 10*time.Second)
	e := election.New(s, "cron")
	if err := e.Campaign(t.Context(), []byte("host-1")); err != nil {
		t.Fatal(err)
	}
	tok, sid := e.Token(), s.ID()
	code, out, errs := lockCLI(t, cl, "elect", "cron", "--proclaim", "host-1 v2",
		"--token", fmt.Sprint(tok), "--session", fmt.Sprint(sid))
	if want := fmt.Sprintf("token %d session %d: host-1 v2\n", tok, sid); code != 0 || out != want {
		t.Fatalf("elect --proclaim: exit %d, %q; want 0, %q (%s)", code, out, want, errs)
	}
	l, err := election.LeaderOf(t.Context(), c, "cron")
	if err != nil || string(l.Value) != "host-1 v2" || l.Token != tok {
		t.Fatalf("leader after --proclaim = %+v, %v; want host-1 v2 under token %d", l, err, tok)
	}
	// From the environment, as CMD would.
	t.Setenv("KVD_ELECTION_TOKEN", fmt.Sprint(tok))
	t.Setenv("KVD_ELECTION_SESSION", fmt.Sprint(sid))
	if code, _, errs := lockCLI(t, cl, "elect", "cron", "--proclaim", "v3"); code != 0 {
		t.Fatalf("elect --proclaim from the environment: exit %d (%s)", code, errs)
	}
	if l, err := election.LeaderOf(t.Context(), c, "cron"); err != nil || string(l.Value) != "v3" {
		t.Fatalf("leader after --proclaim from the environment = %+v, %v; want v3", l, err)
	}
	if code, _, errs := lockCLI(t, cl, "elect", "cron", "--proclaim", "v4", "--token", fmt.Sprint(tok+1)); code != 1 || !strings.Contains(errs, "not current") {
		t.Errorf("elect --proclaim with another token: exit %d (%s); want 1, not current", code, errs)
	}
	if err := e.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := lockCLI(t, cl, "elect", "cron", "--proclaim", "v5"); code != exitNotFound {
		t.Errorf("elect --proclaim with nobody leading: exit %d (%s); want %d", code, errs, exitNotFound)
	}
	t.Setenv("KVD_ELECTION_TOKEN", "")
	if code, _, _ := lockCLI(t, cl, "elect", "cron", "--proclaim", "v6"); code != exitUsage {
		t.Errorf("elect --proclaim with no token: exit %d, want %d", code, exitUsage)
	}
}
