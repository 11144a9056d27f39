package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/proccluster"
)

// kvctlCmd prepares a kvctl process against the cluster, in its own process
// group so that a test can pause or kill it together with its child.
func kvctlCmd(ctx context.Context, t *testing.T, cl *proccluster.Cluster, args ...string) *exec.Cmd {
	t.Helper()
	_, kvctl := proccluster.Binaries(t)
	cmd := exec.CommandContext(ctx, kvctl, append([]string{"--endpoints", strings.Join(cl.Endpoints(), ",")}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), "KVCTL="+kvctl, "KVD_ENDPOINTS="+strings.Join(cl.Endpoints(), ","))
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

func exitCodeOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// waitFile polls until path exists and is non-empty.
func waitFile(ctx context.Context, t *testing.T, path string) string {
	t.Helper()
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return strings.TrimSpace(string(b))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestLockCommandsNeverOverlap: two `kvctl lock acquire NAME -- CMD` at once;
// the critical sections never overlap and the second has a larger token.
func TestLockCommandsNeverOverlap(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	log := filepath.Join(t.TempDir(), "sections.log")
	script := `echo "start $KVD_LOCK_TOKEN $(date +%s%N)" >> "$LOG"; sleep 1; echo "end $KVD_LOCK_TOKEN $(date +%s%N)" >> "$LOG"`
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := 0; i < 2; i++ {
		cmd := kvctlCmd(ctx, t, cl, "lock", "acquire", "critical_section", "--ttl", "10s", "--wait", "30s", "--", "sh", "-c", script)
		cmd.Env = append(cmd.Env, "LOG="+log)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("kvctl %d: %v\n%s", i, err, outs[i])
		}
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		kind  string
		token uint64
		at    int64
	}
	var evs []ev
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("bad log line %q", line)
		}
		tok, _ := strconv.ParseUint(f[1], 10, 64)
		at, _ := strconv.ParseInt(f[2], 10, 64)
		evs = append(evs, ev{f[0], tok, at})
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	if len(evs) != 4 || evs[0].kind != "start" || evs[1].kind != "end" || evs[2].kind != "start" || evs[3].kind != "end" {
		t.Fatalf("critical sections overlap or are missing: %+v", evs)
	}
	if evs[0].token != evs[1].token || evs[2].token != evs[3].token || evs[2].token <= evs[0].token {
		t.Fatalf("tokens = %d then %d, want the second strictly larger", evs[0].token, evs[2].token)
	}
}

// TestLockHolderKilledNextWaiterAfterTTL: kill -9 the holder's kvctl; the
// next waiter gets the lock once the session's TTL has run out, not before.
func TestLockHolderKilledNextWaiterAfterTTL(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	held := filepath.Join(dir, "held")
	const ttl = 3 * time.Second
	holder := kvctlCmd(ctx, t, cl, "lock", "acquire", "critical_section", "--ttl", ttl.String(), "--", "sh", "-c", `echo "$KVD_LOCK_TOKEN $$" > "$HELD"; sleep 60`)
	holder.Env = append(holder.Env, "HELD="+held)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(waitFile(ctx, t, held))
	tok1, _ := strconv.ParseUint(f[0], 10, 64)
	childPgid, _ := strconv.Atoi(f[1])
	killed := time.Now()
	syscall.Kill(-holder.Process.Pid, syscall.SIGKILL)
	syscall.Kill(-childPgid, syscall.SIGKILL) // the orphaned command, so the test leaves nothing behind
	holder.Wait()

	waiter := kvctlCmd(ctx, t, cl, "-o", "json", "lock", "acquire", "critical_section", "--ttl", "10s", "--wait", "20s", "--", "sh", "-c", `echo $KVD_LOCK_TOKEN`)
	out, err := waiter.Output()
	if err != nil {
		t.Fatalf("waiter: %v (%s)", err, out)
	}
	got := time.Since(killed)
	tok2, _ := strconv.ParseUint(strings.TrimSpace(lastLine(string(out))), 10, 64)
	if tok2 <= tok1 {
		t.Fatalf("waiter token %d, holder token %d: want larger", tok2, tok1)
	}
	// The holder renewed at most TTL/3 before it died, so its session lives
	// at least 2/3 TTL after the kill; a grant sooner would be unsafe.
	if got < ttl/2 {
		t.Fatalf("waiter acquired %v after the holder was killed; the holder's TTL is %v", got, ttl)
	}
	t.Logf("waiter acquired %v after kill -9 of the holder (TTL %v)", got, ttl)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestPausedHolderLateWriteIsFenced: SIGSTOP the holder past its TTL, let
// another holder take the lock and write, SIGCONT: the old holder's write
// with its old token is rejected by the store.
func TestPausedHolderLateWriteIsFenced(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	held, result := filepath.Join(dir, "held"), filepath.Join(dir, "result")
	grandchild := filepath.Join(dir, "grandchild")
	// The child (a process group leader: kvctl gives CMD a group of its own)
	// starts a grandchild, then ignores SIGTERM so that its late write is
	// attempted even though kvctl notices the loss.
	script := `trap '' TERM; sleep 300 & echo $! > "$GRANDCHILD"; echo "$KVD_LOCK_TOKEN $$" > "$HELD"; sleep 1; ` +
		`"$KVCTL" put --fence "critical_section:$KVD_LOCK_TOKEN" resource late-from-old-holder; echo $? > "$RESULT"`
	holder := kvctlCmd(ctx, t, cl, "lock", "acquire", "critical_section", "--ttl", "2s", "--kill-grace", "5s", "--", "sh", "-c", script)
	holder.Env = append(holder.Env, "HELD="+held, "RESULT="+result, "GRANDCHILD="+grandchild)
	var hout bytes.Buffer
	holder.Stdout, holder.Stderr = &hout, &hout
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(waitFile(ctx, t, held))
	tok1, childPgid := f[0], f[1]
	pgid, _ := strconv.Atoi(childPgid)
	// Pause the whole holder: kvctl and its child's group.
	syscall.Kill(-holder.Process.Pid, syscall.SIGSTOP)
	syscall.Kill(-pgid, syscall.SIGSTOP)

	// Another holder gets the lock once the paused session expires, and writes.
	next := kvctlCmd(ctx, t, cl, "lock", "acquire", "critical_section", "--ttl", "30s", "--wait", "20s", "--",
		"sh", "-c", `"$KVCTL" put --fence "critical_section:$KVD_LOCK_TOKEN" resource from-new-holder`)
	if out, err := next.CombinedOutput(); err != nil {
		t.Fatalf("new holder: %v\n%s", err, out)
	}
	syscall.Kill(-pgid, syscall.SIGCONT)
	syscall.Kill(-holder.Process.Pid, syscall.SIGCONT)
	err := holder.Wait()
	if code := exitCodeOf(err); code != 5 {
		t.Errorf("old holder's kvctl exit code = %d, want 5 (lock lost)\n%s", code, hout.String())
	}
	// Losing the lock stops everything the command started.
	gpid, _ := strconv.Atoi(waitFile(ctx, t, grandchild))
	for syscall.Kill(gpid, 0) == nil {
		if ctx.Err() != nil {
			syscall.Kill(gpid, syscall.SIGKILL)
			t.Fatalf("grandchild %d still running after kvctl lost the lock and exited", gpid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The child either wrote and was rejected, or was killed before writing;
	// either way the store holds the new holder's value.
	if b, err := os.ReadFile(result); err == nil {
		if strings.TrimSpace(string(b)) == "0" {
			t.Errorf("late fenced write with old token %s succeeded", tok1)
		}
	}
	get := kvctlCmd(ctx, t, cl, "get", "resource")
	out, err := get.Output()
	if err != nil || strings.TrimSpace(string(out)) != "from-new-holder" {
		t.Fatalf("get resource = %q, %v; want from-new-holder", out, err)
	}
}

// TestLeaderKillDoesNotKillLockedCommand: a leader election alone does not
// make kvctl think the lock is lost.
func TestLeaderKillDoesNotKillLockedCommand(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	held, done := filepath.Join(dir, "held"), filepath.Join(dir, "done")
	cmd := kvctlCmd(ctx, t, cl, "lock", "acquire", "critical_section", "--ttl", "6s", "--",
		"sh", "-c", `echo $KVD_LOCK_TOKEN > "$HELD"; sleep 8; echo ok > "$DONE"`)
	cmd.Env = append(cmd.Env, "HELD="+held, "DONE="+done)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(ctx, t, held)
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader.Kill()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kvctl lock acquire -- cmd exited with %v after a leader kill:\n%s", err, out.String())
	}
	if got := waitFile(ctx, t, done); got != "ok" {
		t.Fatalf("command did not finish: %q", got)
	}
}
