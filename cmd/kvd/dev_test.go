package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvdproject/kvd/proto/kvpb"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// kvdBinary builds this command once per test process.
func kvdBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "kvd-cmd-test-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "kvd")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freeBasePort finds a base port for `kvd dev --base-port` below 32768 (so
// it cannot meet the kernel's ephemeral ports) whose six ports are free now.
func freeBasePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		base := 20000 + 10*rand.IntN(1000) // up to 29990; n3's peer port is base+201
		free := true
		for _, off := range []int{0, 1, 100, 101, 200, 201} {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+off))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no free base port for kvd dev found in 50 tries")
	return 0
}

// devProcess is a `kvd dev` run as its own process, with its stderr read
// line by line.
type devProcess struct {
	cmd   *exec.Cmd
	lines chan string // stderr, a line at a time; closed at its end
	logs  string      // file with the nodes' logs (stdout)
	seen  []string    // stderr lines read so far
}

func startDev(t *testing.T, bin, dataDir string, base int, extra ...string) *devProcess {
	t.Helper()
	logs := filepath.Join(t.TempDir(), "nodes.log")
	lf, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() })
	cmd := exec.Command(bin, append([]string{"dev", "--data-dir", dataDir, "--base-port", strconv.Itoa(base)}, extra...)...)
	cmd.Stdout = lf
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Its own process group, so a signal to it reaches dev alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &devProcess{cmd: cmd, lines: make(chan string, 100), logs: logs}
	go func() {
		defer close(d.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		// A test that failed half way: stop dev and its nodes.
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Signal(syscall.SIGTERM)
			d.waitUpTo(20 * time.Second)
		}
	})
	return d
}

// wait waits for kvd dev to end, and fails the test (after killing it) if it
// does not within timeout.
func (d *devProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	ended, err := d.waitUpTo(timeout)
	if !ended {
		t.Fatalf("kvd dev still runs %v after the signal", timeout)
	}
	return err
}

// waitUpTo waits for kvd dev to end, and kills it if it does not within
// timeout (ended false).
func (d *devProcess) waitUpTo(timeout time.Duration) (ended bool, err error) {
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-done
		return false, nil
	}
}

// waitLine reads stderr until a line matches re, and returns its submatches.
func (d *devProcess) waitLine(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				t.Fatalf("kvd dev's stderr ended before a line matching %q; it said:\n%s\nnode logs end:\n%s", re, strings.Join(d.seen, "\n"), tailFile(d.logs, 20))
			}
			d.seen = append(d.seen, l)
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no line matching %q from kvd dev within %v; it said:\n%s\nnode logs end:\n%s", re, timeout, strings.Join(d.seen, "\n"), tailFile(d.logs, 20))
		}
	}
}

var readyRE = regexp.MustCompile(`^kvd dev: (n\d) ready: client (\S+), peer (\S+), pid (\d+), (leader|follower)$`)

// waitReady waits for the three ready lines and returns each node's pid.
func (d *devProcess) waitReady(t *testing.T) map[string]int {
	t.Helper()
	pids := map[string]int{}
	for range 3 {
		m := d.waitLine(t, readyRE, 60*time.Second)
		pid, _ := strconv.Atoi(m[4])
		pids[m[1]] = pid
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if pids[n] == 0 {
			t.Fatalf("ready lines name pids %v; want one for each of n1, n2, n3", pids)
		}
		assertKvdChild(t, pids[n])
	}
	return pids
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// assertKvdChild checks that pid is a running kvd node started by dev.
func assertKvdChild(t *testing.T, pid int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(b, []byte("--dev-parent-fd")) {
		t.Fatalf("pid %d: cmdline %q (%v); want a kvd node started by kvd dev", pid, b, err)
	}
}

// processGone reports whether pid has exited (a zombie waiting for its new
// parent to reap it counts as exited).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')') // "pid (comm) STATE ..."
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

func waitGone(t *testing.T, pids map[string]int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for name, pid := range pids {
		for !processGone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("node %s (pid %d) still runs %v after its kvd dev ended", name, pid, timeout)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func kvClient(t *testing.T, addr string) kvpb.KVClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kvpb.NewKVClient(conn)
}

// within retries f for up to 20 s: a node may be electing or catching up.
func within(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDevSupervision runs `kvd dev` as users do: it reports each node
// ready; a node killed with SIGKILL is restarted and serves again; when dev
// itself is killed with SIGKILL, and then when it gets SIGHUP (a closed
// terminal), its nodes end with it, and another kvd dev starts on the same
// data dir with the data written before.
func TestDevSupervision(t *testing.T) {
	if testing.Short() {
		t.Skip("runs kvd dev and its three kvd processes")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc to see which processes are left")
	}
	bin := kvdBinary(t)
	dataDir := t.TempDir()
	base := freeBasePort(t)
	n2Addr := "127.0.0.1:" + strconv.Itoa(base+100)

	// Under nohup (or any parent that ignores SIGHUP) the ignored signal is
	// inherited by kvd dev, and SIGHUP would not end it: catching it here
	// gives the children the default action, as from a terminal.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	defer signal.Reset(syscall.SIGHUP)

	dev := startDev(t, bin, dataDir, base)
	pids := dev.waitReady(t)

	// A crashed node comes back, says so, and serves writes.
	if err := syscall.Kill(pids["n2"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dev.waitLine(t, regexp.MustCompile(`^kvd dev: n2 exited unexpectedly \(signal: killed\); restarting it in 250ms \(restart 1 of at most 5 in a row\)$`), 10*time.Second)
	m := dev.waitLine(t, regexp.MustCompile(`^kvd dev: n2 ready again: client `+regexp.QuoteMeta(n2Addr)+`, peer \S+, pid (\d+), (leader|follower)$`), 30*time.Second)
	newPid, _ := strconv.Atoi(m[1])
	if newPid == pids["n2"] {
		t.Fatalf("n2 ready again with pid %d, the pid of the process that was killed", newPid)
	}
	assertKvdChild(t, newPid)
	pids["n2"] = newPid
	kv := kvClient(t, n2Addr)
	within(t, "Put through the restarted n2", func(ctx context.Context) error {
		_, err := kv.Put(ctx, &kvpb.PutRequest{Key: []byte("survives"), Value: []byte("dev")})
		return err
	})

	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGHUP} {
		if err := dev.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		err := dev.wait(t, 20*time.Second)
		if ws, ok := dev.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != sig {
			t.Fatalf("kvd dev after %v: %v; want it ended by that signal", sig, err)
		}
		waitGone(t, pids, 20*time.Second)

		// The data dirs are free again: a new dev starts on them.
		dev = startDev(t, bin, dataDir, base)
		pids = dev.waitReady(t)
		within(t, fmt.Sprintf("Get after kvd dev ended by %v", sig), func(ctx context.Context) error {
			r, err := kv.Get(ctx, &kvpb.GetRequest{Key: []byte("survives")})
			if err == nil && string(r.GetKv().GetValue()) != "dev" {
				t.Fatalf("Get(survives) = %q, want %q", r.GetKv().GetValue(), "dev")
			}
			return err
		})
	}

	// Ctrl-C's signal: dev stops its nodes and exits 0.
	if err := dev.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := dev.wait(t, 20*time.Second); err != nil {
		t.Fatalf("kvd dev after SIGINT: %v; want exit 0", err)
	}
	waitGone(t, pids, 5*time.Second)
}

// TestDevGivesUpOnCrashLoop: a node that cannot start (its peer port is
// taken) is restarted with growing delays, then dev stops the other nodes
// and fails, naming it.
func TestDevGivesUpOnCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three kvd processes")
	}
	cfg := defaultDevConfig()
	cfg.exe = kvdBinary(t)
	cfg.dataDir = t.TempDir()
	cfg.basePort = freeBasePort(t)
	cfg.restartMin, cfg.maxRestarts = 20*time.Millisecond, 2
	taken, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(cfg.basePort+101)) // n2's peer port
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	var stdout, stderr syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	err = runDev(ctx, cfg, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "n2 keeps exiting (exit status 1)") {
		t.Fatalf("runDev = %v; want \"n2 keeps exiting (exit status 1)...\"", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("runDev returned only when the test's context ended")
	}
	want := []string{
		"kvd dev: n2 exited unexpectedly (exit status 1); restarting it in 20ms (restart 1 of at most 2 in a row)",
		"kvd dev: n2 exited unexpectedly (exit status 1); restarting it in 40ms (restart 2 of at most 2 in a row)",
		"kvd dev: n2 exited unexpectedly (exit status 1), 3 times in a row; giving up and stopping the cluster",
	}
	var got []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(l, "kvd dev: n2 ") {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kvd dev said about n2:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stdout.String(), "listen on peer address") {
		t.Errorf("n2's log does not say why it exited:\n%s", stdout.String())
	}
	// runDev returned, so it saw n1 and n3 exit: nothing of the cluster runs.
	for _, port := range []int{cfg.basePort, cfg.basePort + 200} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after runDev returned", port)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the writers of runDev.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDevBasePortRange(t *testing.T) {
	for _, p := range []string{"0", "65335", "-1"} {
		var stdout, stderr bytes.Buffer
		code := run([]string{"dev", "--data-dir", t.TempDir(), "--base-port", p}, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "--base-port "+p+": want 1 to 65334") {
			t.Errorf("kvd dev --base-port %s: exit %d, stderr %q; want 2 and the range", p, code, stderr.String())
		}
	}
}

// TestDevTLS: kvd dev --tls makes its certificates, serves TLS on the
// client ports and prints the lines that point kvctl at them; a client with
// those files writes, one without TLS is refused, and a second start keeps
// the certificates it made.
func TestDevTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real kvd processes; skipped with -short")
	}
	bin := kvdBinary(t)
	dataDir := t.TempDir()
	base := freeBasePort(t)
	d := startDev(t, bin, dataDir, base, "--tls")
	d.waitReady(t)
	env := map[string]string{}
	for _, name := range []string{"KVD_CACERT", "KVD_CERT", "KVD_KEY"} {
		m := d.waitLine(t, regexp.MustCompile(`export `+name+`=(\S+)`), 10*time.Second)
		env[name] = m[1]
	}
	conf, err := healthTLS(env["KVD_CACERT"], env["KVD_CERT"], env["KVD_KEY"])
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(base)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	within(t, "a put over TLS", func(ctx context.Context) error {
		_, err := kvpb.NewKVClient(conn).Put(ctx, &kvpb.PutRequest{Key: []byte("tls"), Value: []byte("yes")})
		return err
	})
	plain := kvClient(t, addr)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if _, err := plain.Get(ctx, &kvpb.GetRequest{Key: []byte("tls")}); err == nil {
		t.Fatal("a plaintext client read from a kvd dev --tls node")
	}
	before, err := os.ReadFile(env["KVD_CACERT"])
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.wait(t, 20*time.Second)
	d2 := startDev(t, bin, dataDir, base, "--tls")
	d2.waitReady(t)
	after, err := os.ReadFile(env["KVD_CACERT"])
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the second kvd dev --tls replaced the CA (err %v)", err)
	}
}
