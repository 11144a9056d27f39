package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
)

// memoworker builds ./test/e2e/memoworker once.
func memoworker(t *testing.T) string { return buildTool(t, "memoworker") }

type workerReport struct {
	Pid    int            `json:"pid"`
	Served int            `json:"served"`
	Errors []string       `json:"errors"`
	Values map[string]int `json:"values"`
	Stats  struct {
		Fills               uint64 `json:"fills"`
		FillsDeduplicated   uint64 `json:"fills_deduplicated"`
		StaleStoresRejected uint64 `json:"stale_stores_rejected"`
	} `json:"stats"`
}

// worker is one running memoworker process.
type worker struct {
	cmd       *exec.Cmd
	computing chan struct{} // closed when it prints "computing"
	report    chan workerReport
}

func startWorker(ctx context.Context, t *testing.T, cl *proccluster.Cluster, args ...string) *worker {
	t.Helper()
	cmd := exec.CommandContext(ctx, memoworker(t), append([]string{"--endpoints", strings.Join(cl.Endpoints(), ",")}, args...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{cmd: cmd, computing: make(chan struct{}), report: make(chan workerReport, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		computing := false
		for sc.Scan() {
			line := sc.Text()
			if line == "computing" && !computing {
				computing = true
				close(w.computing)
				continue
			}
			var r workerReport
			if json.Unmarshal([]byte(line), &r) == nil {
				w.report <- r
			}
		}
		io.Copy(io.Discard, out)
		close(w.report)
	}()
	return w
}

// wait returns the worker's report once it exits.
func (w *worker) wait(t *testing.T) workerReport {
	t.Helper()
	r, ok := <-w.report
	if err := w.cmd.Wait(); err != nil || !ok {
		t.Fatalf("memoworker %d: exit %v, report %v", w.cmd.Process.Pid, err, ok)
	}
	return r
}

func counter(ctx context.Context, t *testing.T, c *client.Client, key string) int {
	t.Helper()
	resp, err := c.Get(ctx, []byte(key))
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	n, err := strconv.Atoi(string(resp.Kv.Value))
	if err != nil {
		t.Fatalf("counter %q = %q", key, resp.Kv.Value)
	}
	return n
}

// TestMemoizeOnceAcrossProcesses: 3 processes x 50 goroutines memoizing one
// key compute it exactly once, and every caller gets that one value.
func TestMemoizeOnceAcrossProcesses(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var ws []*worker
	for i := 0; i < 3; i++ {
		ws = append(ws, startWorker(ctx, t, cl, "--key", "once", "--counter", "once-n", "--goroutines", "50", "--work", "500ms"))
	}
	values := map[string]int{}
	served := 0
	for _, w := range ws {
		r := w.wait(t)
		if len(r.Errors) > 0 {
			t.Errorf("worker %d errors: %v", r.Pid, r.Errors)
		}
		served += r.Served
		for v, n := range r.Values {
			values[v] += n
		}
	}
	c := newClient(t, cl.Endpoints())
	if n := counter(ctx, t, c, "once-n"); n != 1 {
		t.Errorf("the function ran %d times across 3 processes, want 1", n)
	}
	if served != 150 || len(values) != 1 {
		t.Errorf("served %d callers with values %v; want 150 callers, one value", served, values)
	}
}

// TestMemoizeFillerKilled: kill -9 the process holding the fill lease; a
// waiting caller takes over once the lease ends, and everyone gets a value.
func TestMemoizeFillerKilled(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	filler := startWorker(ctx, t, cl, "--key", "k", "--counter", "k-n", "--goroutines", "1", "--work", "60s", "--fill-lease", "2s")
	select {
	case <-filler.computing:
	case <-ctx.Done():
		t.Fatal("first worker never started computing")
	}
	var ws []*worker
	for i := 0; i < 2; i++ {
		ws = append(ws, startWorker(ctx, t, cl, "--key", "k", "--counter", "k-n", "--goroutines", "50", "--work", "100ms", "--fill-lease", "2s"))
	}
	filler.cmd.Process.Kill()
	filler.cmd.Wait()
	values := map[string]int{}
	for _, w := range ws {
		r := w.wait(t)
		if len(r.Errors) > 0 || r.Served != 50 {
			t.Errorf("worker %d: served %d, errors %v", r.Pid, r.Served, r.Errors)
		}
		for v := range r.Values {
			values[v]++
		}
	}
	if len(values) != 1 {
		t.Fatalf("callers got %d different values %v, want one", len(values), values)
	}
	if _, dead := values[strconv.Itoa(filler.cmd.Process.Pid)]; dead {
		t.Fatal("callers got the killed filler's value")
	}
	c := newClient(t, cl.Endpoints())
	if n := counter(ctx, t, c, "k-n"); n != 2 {
		t.Errorf("the function ran %d times, want 2 (the killed filler, then one taker)", n)
	}
}

// TestMemoizePausedFillerLateStoreRejected: a filler paused past its fill
// lease resumes and tries to store: the store is rejected (stale token) and
// the value stored by the caller that took over stays.
func TestMemoizePausedFillerLateStoreRejected(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	slow := startWorker(ctx, t, cl, "--key", "p", "--counter", "p-n", "--goroutines", "1", "--work", "1500ms", "--fill-lease", "1s")
	select {
	case <-slow.computing:
	case <-ctx.Done():
		t.Fatal("first worker never started computing")
	}
	syscall.Kill(slow.cmd.Process.Pid, syscall.SIGSTOP)
	taker := startWorker(ctx, t, cl, "--key", "p", "--counter", "p-n", "--goroutines", "5", "--work", "100ms", "--fill-lease", "5s")
	tr := taker.wait(t)
	syscall.Kill(slow.cmd.Process.Pid, syscall.SIGCONT)
	sr := slow.wait(t)

	takerValue := strconv.Itoa(tr.Pid)
	if tr.Values[takerValue] != 5 {
		t.Fatalf("taker's callers got %v, want its own value %s for all 5", tr.Values, takerValue)
	}
	if sr.Stats.StaleStoresRejected != 1 {
		t.Errorf("paused filler: stale stores rejected = %d, want 1", sr.Stats.StaleStoresRejected)
	}
	c := newClient(t, cl.Endpoints())
	resp, err := c.CacheGet(ctx, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Entry.Value); got != `"`+takerValue+`"` {
		t.Fatalf("stored value = %s, want the taker's %q", got, takerValue)
	}
	stats, err := c.CacheStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.StaleStoresRejected < 1 {
		t.Fatalf("cluster stale_stores_rejected = %d, want >= 1", stats.StaleStoresRejected)
	}
}
