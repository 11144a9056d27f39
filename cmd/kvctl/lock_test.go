package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/testcluster"
	"github.com/kvdproject/kvd/lock"
)

// lockTestCluster starts an in-process cluster, points kvctl's client at it
// and returns a client of the test's own.
func lockTestCluster(t *testing.T) (*testcluster.Cluster, *client.Client) {
	t.Helper()
	cl := testcluster.Start(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatalf("WaitLeader: %v", err)
	}
	old := testDialer
	testDialer = cl.Dialer
	t.Cleanup(func() { testDialer = old })
	c, err := client.New(client.Config{Endpoints: cl.Endpoints, Dialer: cl.Dialer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return cl, c
}

// lockCLI runs kvctl against cl and returns its exit code and output.
func lockCLI(t *testing.T, cl *testcluster.Cluster, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"--endpoints", strings.Join(cl.Endpoints, ",")}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestLockAcquireRunsCommand(t *testing.T) {
	cl, c := lockTestCluster(t)
	code, out, errs := lockCLI(t, cl, "lock", "acquire", "job", "--ttl", "5s", "--",
		"sh", "-c", `echo "$KVD_LOCK_NAME $KVD_LOCK_TOKEN $KVD_LOCK_SESSION"; exit 7`)
	if code != 7 {
		t.Fatalf("exit code = %d, want 7 (the child's)\nstdout: %s\nstderr: %s", code, out, errs)
	}
	var name string
	var token, session uint64
	if _, err := fmt.Sscanf(out, "%s %d %d", &name, &token, &session); err != nil || name != "job" || token == 0 || session == 0 {
		t.Fatalf("child saw %q (%v); want KVD_LOCK_NAME=job and non-zero KVD_LOCK_TOKEN, KVD_LOCK_SESSION", out, err)
	}
	// Released on exit.
	resp, err := c.GetLock(t.Context(), []byte("job"))
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatal(err)
	}
	if tok := resp.GetLock().GetToken(); tok != 0 {
		t.Fatalf("lock still held with token %d after the command exited", tok)
	}
	if code, _, errs := lockCLI(t, cl, "lock", "acquire", "job", "--", "sh", "-c", "true"); code != 0 {
		t.Fatalf("second acquire -- true: exit %d, want 0 (%s)", code, errs)
	}
}

func TestLockAcquireNotAcquiredExit3(t *testing.T) {
	cl, c := lockTestCluster(t)
	s, err := lock.NewSession(t.Context(), c, lock.WithTTL(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	m := lock.NewMutex(s, "busy")
	if err := m.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []string{"200ms", "0"} {
		start := time.Now()
		code, out, errs := lockCLI(t, cl, "lock", "acquire", "busy", "--wait", wait, "--", "sh", "-c", "echo ran")
		if code != exitNotAcquired {
			t.Fatalf("--wait %s: exit %d, want %d\nstdout: %s\nstderr: %s", wait, code, exitNotAcquired, out, errs)
		}
		if strings.Contains(out, "ran") {
			t.Fatalf("--wait %s: the command ran without the lock", wait)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("--wait %s took %v", wait, d)
		}
	}
	if err := m.Unlock(t.Context()); err != nil {
		t.Fatalf("Unlock: %v (did kvctl's failed wait leave a grant behind?)", err)
	}
}

func TestLockAcquireWithoutCommandKeepsTheLock(t *testing.T) {
	cl, _ := lockTestCluster(t)
	code, out, errs := lockCLI(t, cl, "-o", "json", "lock", "acquire", "kept", "--ttl", "10s")
	if code != 0 {
		t.Fatalf("acquire: exit %d\n%s", code, errs)
	}
	var got struct {
		Name    string `json:"name"`
		Token   uint64 `json:"token"`
		Session uint64 `json:"session"`
		Expires string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Name != "kept" || got.Token == 0 || got.Session == 0 || got.Expires == "" {
		t.Fatalf("acquire -o json printed %q (%v)", out, err)
	}
	tok := fmt.Sprint(got.Token)
	// The session outlived kvctl: the token still holds the lock.
	if code, out, errs := lockCLI(t, cl, "lock", "check", "kept", "--token", tok); code != 0 {
		t.Fatalf("check after acquire: exit %d, want 0\n%s%s", code, out, errs)
	}
	if code, out, errs := lockCLI(t, cl, "lock", "show", "kept"); code != 0 || !strings.Contains(out, "token:      "+tok) {
		t.Fatalf("show: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := lockCLI(t, cl, "lock", "list"); code != 0 || !strings.Contains(out, "kept") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := lockCLI(t, cl, "lock", "acquire", "kept", "--wait", "100ms"); code != exitNotAcquired {
		t.Fatalf("acquire of a held lock: exit %d, want 3\n%s", code, errs)
	}
	if code, _, errs := lockCLI(t, cl, "lock", "release", "kept", "--token", tok); code != 0 {
		t.Fatalf("release: exit %d\n%s", code, errs)
	}
	if code, _, _ := lockCLI(t, cl, "lock", "check", "kept", "--token", tok); code != 1 {
		t.Fatalf("check after release: exit %d, want 1", code)
	}
	if code, _, _ := lockCLI(t, cl, "lock", "release", "kept", "--token", tok); code != exitNotFound {
		t.Fatalf("second release with the same token, the lock free: exit %d, want %d", code, exitNotFound)
	}
	if code, _, _ := lockCLI(t, cl, "lock", "show", "kept"); code != exitNotFound {
		t.Fatalf("show of a lock the server forgot: exit %d, want %d", code, exitNotFound)
	}
}

func TestLockLostKillsCommandExit5(t *testing.T) {
	cl, c := lockTestCluster(t)
	done := make(chan int, 1)
	var out, errs string
	go func() {
		var code int
		code, out, errs = lockCLI(t, cl, "lock", "acquire", "doomed", "--ttl", "3s", "--kill-grace", "500ms", "--",
			"sh", "-c", `trap '' TERM; exec sleep 30`)
		done <- code
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.GetLock(t.Context(), []byte("doomed"))
		if err == nil && resp.GetLock().GetToken() != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("kvctl did not take the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	if code, _, errs := lockCLI(t, cl, "lock", "break", "doomed", "--reason", "test"); code != 0 {
		t.Fatalf("break: exit %d\n%s", code, errs)
	}
	select {
	case code := <-done:
		if code != exitLockLost {
			t.Fatalf("exit %d, want %d (lock lost)\nstdout: %s\nstderr: %s", code, exitLockLost, out, errs)
		}
		// Broken without a lock delay: the grace cannot apply, and kvctl
		// says why instead of "SIGKILL in 0s".
		if !strings.Contains(errs, "SIGKILL at once: the lock was broken with no --lock-delay") || !strings.Contains(errs, "--kill-grace 500ms does not apply") {
			t.Errorf("stderr = %q, want it to say SIGKILL comes at once because the lock was broken with no --lock-delay", errs)
		}
		t.Logf("kvctl exited %d %v after the break", code, time.Since(start))
	case <-time.After(15 * time.Second):
		t.Fatal("kvctl still running 15s after its lock was broken")
	}
}

func TestCacheCommands(t *testing.T) {
	cl, _ := lockTestCluster(t)
	if code, _, _ := lockCLI(t, cl, "cache", "get", "nothing"); code != exitNotFound {
		t.Fatalf("get of a missing entry: exit %d, want %d", code, exitNotFound)
	}
	if code, _, errs := lockCLI(t, cl, "cache", "set", "k1", "hello", "--ttl", "1m"); code != 0 {
		t.Fatalf("set: exit %d\n%s", code, errs)
	}
	code, out, errs := lockCLI(t, cl, "cache", "get", "k1")
	if code != 0 || !strings.Contains(out, "state:       fresh") || !strings.Contains(out, "value:       hello") {
		t.Fatalf("get: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = lockCLI(t, cl, "-o", "json", "cache", "get", "k1")
	var j struct {
		State          string `json:"state"`
		Value          string `json:"value"`
		FreshUntilInMs int64  `json:"fresh_until_in_ms"`
		FilledIndex    uint64 `json:"filled_index"`
	}
	if err := json.Unmarshal([]byte(out), &j); code != 0 || err != nil || j.State != "fresh" || j.Value != "hello" || j.FreshUntilInMs <= 0 || j.FilledIndex == 0 {
		t.Fatalf("get -o json: exit %d, %q (%v)", code, out, err)
	}
	lockCLI(t, cl, "cache", "set", "k2", "x")
	if code, out, errs := lockCLI(t, cl, "cache", "invalidate", "--prefix", "k"); code != 0 || !strings.Contains(out, "invalidated 2") {
		t.Fatalf("invalidate --prefix: exit %d\n%s%s", code, out, errs)
	}
	if code, _, _ := lockCLI(t, cl, "cache", "get", "k1"); code != exitNotFound {
		t.Fatalf("get after invalidate: exit %d, want %d", code, exitNotFound)
	}
	if code, out, errs := lockCLI(t, cl, "-o", "json", "cache", "stats"); code != 0 || !strings.Contains(out, `"stores"`) {
		t.Fatalf("stats: exit %d\n%s%s", code, out, errs)
	}
	if code, _, _ := lockCLI(t, cl, "cache", "invalidate"); code != exitUsage {
		t.Fatalf("invalidate without KEY or --prefix: exit %d, want %d", code, exitUsage)
	}
}
