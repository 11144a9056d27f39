package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
)

var (
	appenderOnce sync.Once
	appenderBin  string
	appenderErr  error
)

// fencedAppender builds ./test/e2e/fencedappend once: the test's fenced
// resource (a file that refuses a token lower than one it holds).
func fencedAppender(t *testing.T) string {
	t.Helper()
	appenderOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kvd-fencedappend-")
		if err != nil {
			appenderErr = err
			return
		}
		appenderBin = filepath.Join(dir, "fencedappend")
		out, err := exec.Command("go", "build", "-o", appenderBin, "./fencedappend").CombinedOutput()
		if err != nil {
			appenderErr = fmt.Errorf("go build fencedappend: %v\n%s", err, out)
		}
	})
	if appenderErr != nil {
		t.Fatal(appenderErr)
	}
	return appenderBin
}

// appended is one line of the fenced file (or of its refusals).
type appended struct {
	cand  string
	token uint64
}

func readAppended(t *testing.T, path string) []appended {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []appended
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue // a line being written
		}
		tok, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatalf("%s: bad line %q", path, line)
		}
		out = append(out, appended{f[0], tok})
	}
	return out
}

// TestElectCronRealProcesses runs two `kvctl elect cron ... -- sh -c LOOP`
// against three real kvd processes. Each LOOP appends "CANDIDATE TOKEN"
// lines to a file through a fenced appender. Throughout: the file shows
// non-decreasing tokens, each token's lines from one candidate. Then:
//   - SIGKILL of the leader (kvctl and its command, a crashed server): the
//     other candidate takes over after the session TTL (+ lock-delay);
//   - SIGSTOP of the leader's kvctl past its TTL (its command keeps
//     running): the new leader starts, the old command's appends are
//     refused by the fence; after SIGCONT kvctl kills its command, which
//     writes no more;
//   - SIGKILL of the cluster's leader node: the election's leader keeps its
//     term (same token) through the Raft election;
//   - SIGTERM to the leader's kvctl: it stops its command and resigns, and
//     the other candidate leads at once (well before a TTL).
//
// A `kvctl elect cron --listen` sees exactly the terms the file shows.
func TestElectCronRealProcesses(t *testing.T) {
	skipShort(t)
	appender := fencedAppender(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	file, pids := filepath.Join(dir, "cron.log"), filepath.Join(dir, "pids")
	refusedFile := file + ".refused"
	if err := os.Mkdir(pids, 0o755); err != nil {
		t.Fatal(err)
	}
	// TTL 4s rides out a Raft election (500ms timeouts) with room to spare;
	// the lock-delay is the elections' default, 1s.
	const ttl, lockDelay = 4 * time.Second, time.Second
	loop := `echo $$ > "$PIDS/$CAND-$KVD_ELECTION_TOKEN"; while :; do "$APPENDER" "$FILE" "$CAND" "$KVD_ELECTION_TOKEN"; sleep 0.05; done`

	type candidate struct {
		name string
		cmd  *exec.Cmd
		out  *bytes.Buffer
		done chan error
	}
	var all []*candidate
	t.Cleanup(func() {
		for _, cd := range all {
			syscall.Kill(-cd.cmd.Process.Pid, syscall.SIGCONT)
			syscall.Kill(-cd.cmd.Process.Pid, syscall.SIGKILL)
		}
		ents, _ := os.ReadDir(pids)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(pids, e.Name()))
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			for _, cd := range all {
				t.Logf("kvctl elect %s output:\n%s", cd.name, cd.out)
			}
		}
	})
	start := func(name string) *candidate {
		t.Helper()
		cmd := kvctlCmd(ctx, t, cl, "elect", "cron", name, "--ttl", ttl.String(), "--grace", "2s", "--restart", "--", "sh", "-c", loop)
		cmd.Env = append(cmd.Env, "APPENDER="+appender, "FILE="+file, "CAND="+name, "PIDS="+pids)
		cd := &candidate{name: name, cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
		cmd.Stdout, cmd.Stderr = &syncBuffer{b: cd.out}, &syncBuffer{b: cd.out}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { cd.done <- cmd.Wait() }()
		all = append(all, cd)
		return cd
	}
	// waitLine waits for a line of cand with a token above after; scaffolding
	// that reads the test's own file.
	waitLine := func(cand string, after uint64, within time.Duration) (uint64, time.Time) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			for _, l := range readAppended(t, file) {
				if l.cand == cand && l.token > after {
					return l.token, time.Now()
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				t.Fatalf("no line from %s with a token above %d within %v; file: %v", cand, after, within, readAppended(t, file))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	childPid := func(cand string, token uint64) int {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(pids, fmt.Sprintf("%s-%d", cand, token)))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	queued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := c.GetLock(ctx, []byte("cron"))
			if err == nil && len(resp.GetLock().GetWaiters()) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("election line did not reach %d waiters: %v %v", n, resp, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	listen := kvctlCmd(ctx, t, cl, "elect", "cron", "--listen")
	var listened bytes.Buffer
	listen.Stdout = &syncBuffer{b: &listened}
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-listen.Process.Pid, syscall.SIGKILL)

	// Phase 0: A leads, B waits in line.
	a := start("A")
	tA1, _ := waitLine("A", 0, 20*time.Second)
	b := start("B")
	queued(1)

	// Phase 1: a crashed server (kvctl and its command die at once). B
	// leads once A's session expires and the lock-delay has passed.
	killed := time.Now()
	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	syscall.Kill(-childPid("A", tA1), syscall.SIGKILL)
	<-a.done
	tB, tookOver := waitLine("B", tA1, ttl+lockDelay+10*time.Second)
	gap := tookOver.Sub(killed)
	t.Logf("phase 1: A (token %d) killed; B led with token %d after %v (TTL %v, lock-delay %v)", tA1, tB, gap, ttl, lockDelay)
	// A renewed at most TTL/3 before it died: its session lived at least
	// 2/3 TTL more, then the lock-delay.
	if gap < 2*ttl/3+lockDelay-200*time.Millisecond {
		t.Errorf("B led %v after A was killed: sooner than A's session could expire (TTL %v) plus the lock-delay %v", gap, ttl, lockDelay)
	}
	if gap > ttl+lockDelay+3*time.Second {
		t.Errorf("B led %v after A was killed: want within TTL %v + lock-delay %v (+3s)", gap, ttl, lockDelay)
	}
	a = start("A")
	queued(1)

	// Phase 2: B's kvctl paused past its TTL; its command keeps running.
	bChild := childPid("B", tB)
	syscall.Kill(-b.cmd.Process.Pid, syscall.SIGSTOP)
	tA2, _ := waitLine("A", tB, ttl+lockDelay+10*time.Second)
	// The old command, still running with token tB, is fenced out.
	deadline := time.Now().Add(5 * time.Second)
	for !containsAppended(readAppended(t, refusedFile), appended{"B", tB}) {
		if time.Now().After(deadline) {
			t.Fatalf("no refused append from B's paused-leader command (token %d) 5s after A led with %d", tB, tA2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(-b.cmd.Process.Pid, syscall.SIGCONT)
	deadline = time.Now().Add(10 * time.Second)
	for syscall.Kill(bChild, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("B's command (pid %d) still runs 10s after its kvctl resumed", bChild)
		}
		time.Sleep(20 * time.Millisecond)
	}
	countB := func() (lines, refusals int) {
		for _, l := range readAppended(t, file) {
			if l == (appended{"B", tB}) {
				lines++
			}
		}
		for _, l := range readAppended(t, refusedFile) {
			if l.cand == "B" && l.token == tB {
				refusals++
			}
		}
		return
	}
	l1, r1 := countB()
	time.Sleep(time.Second)
	if l2, r2 := countB(); l2 != l1 || r2 != r1 {
		t.Errorf("B's old command kept writing after kvctl stopped it: lines %d -> %d, refusals %d -> %d", l1, l2, r1, r2)
	}
	t.Logf("phase 2: B paused; A led with token %d; B's command refused %d times, then killed on SIGCONT", tA2, r1)
	queued(1) // B campaigns again (--restart) and waits

	// Phase 3: kill the cluster's leader node; the election's term survives.
	node, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := len(readAppended(t, file))
	if err := node.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + lockDelay + time.Second)
	after := readAppended(t, file)
	if len(after) <= before {
		t.Fatalf("no appends in the %v after the leader node %s was killed", ttl+lockDelay+time.Second, node.Name)
	}
	for _, l := range after[before:] {
		if l != (appended{"A", tA2}) {
			t.Fatalf("after leader node %s was killed the file has %v; want only A with the same token %d", node.Name, l, tA2)
		}
	}
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	lock, err := c.GetLock(rctx, []byte("cron"))
	rcancel()
	if err != nil || lock.GetLock().GetToken() != tA2 {
		t.Fatalf("election after the node kill: %v, %v; want token %d", lock.GetLock(), err, tA2)
	}
	t.Logf("phase 3: leader node %s killed; A kept token %d (%d appends since)", node.Name, tA2, len(after)-before)

	// Phase 4: SIGTERM to the leader's kvctl: stop, resign, exit 0; B leads
	// at once, not after a TTL.
	stopped := time.Now()
	syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM)
	tB2, _ := waitLine("B", tA2, 10*time.Second)
	if d := time.Since(stopped); d >= ttl {
		t.Errorf("B led %v after A's kvctl was asked to stop: a resign hands over at once, want less than the TTL %v", d, ttl)
	}
	select {
	case err := <-a.done:
		if code := exitCodeOf(err); code != 0 {
			t.Errorf("A's kvctl exit code after SIGTERM = %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Error("A's kvctl still running 10s after SIGTERM")
	}

	// The file: non-decreasing tokens, each token written by one candidate.
	lines := readAppended(t, file)
	owner := map[uint64]string{}
	for i, l := range lines {
		if i > 0 && l.token < lines[i-1].token {
			t.Fatalf("line %d: token %d after %d: the fence let a lower token through", i, l.token, lines[i-1].token)
		}
		if o, ok := owner[l.token]; ok && o != l.cand {
			t.Fatalf("token %d written by %s and %s", l.token, o, l.cand)
		}
		owner[l.token] = l.cand
	}
	for _, l := range readAppended(t, refusedFile) {
		if l.cand != "B" || l.token != tB {
			t.Errorf("refused append %v: only the paused leader's command should have been refused", l)
		}
	}
	wantTerms := []string{fmt.Sprintf("A %d", tA1), fmt.Sprintf("B %d", tB), fmt.Sprintf("A %d", tA2), fmt.Sprintf("B %d", tB2)}
	var terms []string
	for i, l := range lines {
		if i == 0 || l.token != lines[i-1].token {
			terms = append(terms, fmt.Sprintf("%s %d", l.cand, l.token))
		}
	}
	if strings.Join(terms, ", ") != strings.Join(wantTerms, ", ") {
		t.Errorf("terms in the file: %v, want %v", terms, wantTerms)
	}

	// The listener saw the same terms, in order.
	deadline = time.Now().Add(5 * time.Second)
	var got []string
	for {
		got = got[:0]
		for _, line := range strings.Split(strings.TrimSpace((&syncBuffer{b: &listened}).String()), "\n") {
			if line != "" {
				got = append(got, line)
			}
		}
		if len(got) >= len(wantTerms) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(got) != len(wantTerms) {
		t.Fatalf("elect --listen printed %q; want one line per term %v", got, wantTerms)
	}
	for i, term := range wantTerms {
		f := strings.Fields(term)
		if !strings.HasPrefix(got[i], "token "+f[1]+" session ") || !strings.HasSuffix(got[i], ": "+f[0]) {
			t.Errorf("elect --listen line %d = %q, want token %s with value %s", i, got[i], f[1], f[0])
		}
	}
	syscall.Kill(listen.Process.Pid, syscall.SIGINT)
	if err := listen.Wait(); exitCodeOf(err) != 0 {
		t.Errorf("elect --listen after SIGINT: %v, want exit 0", err)
	}
	syscall.Kill(b.cmd.Process.Pid, syscall.SIGTERM)
	<-b.done
	if _, err := c.GetLock(ctx, []byte("cron")); err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatal(err)
	}
	t.Logf("whole scenario: %v", time.Since(began))
}

func containsAppended(ls []appended, want appended) bool {
	for _, l := range ls {
		if l == want {
			return true
		}
	}
	return false
}

// syncBuffer is a bytes.Buffer written by processes' output copiers while
// the test reads it. Several may share one Buffer (stdout and stderr), so
// they share one lock.
type syncBuffer struct{ b *bytes.Buffer }

var syncBuffers sync.Mutex

func (s *syncBuffer) Write(p []byte) (int, error) {
	syncBuffers.Lock()
	defer syncBuffers.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	syncBuffers.Lock()
	defer syncBuffers.Unlock()
	return s.b.String()
}
