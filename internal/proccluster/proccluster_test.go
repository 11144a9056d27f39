package proccluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeEnv makes the test binary act as kvd (see TestMain and
// RunFakeKVDIfAsked, which lists the modes), so these tests build nothing.
const fakeEnv = "PROCCLUSTER_FAKE_KVD"

func TestMain(m *testing.M) {
	RunFakeKVDIfAsked(fakeEnv)
	os.Exit(m.Run())
}

// fakeNode returns a cluster of one node, n1, that runs the test binary as
// a fake kvd in mode; it is not started.
func fakeNode(t *testing.T, mode string) (*Cluster, *Node) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := NewCluster(exe, t.TempDir(), t.Logf)
	ports := FreePorts(t, 2)
	client := fmt.Sprintf("127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("127.0.0.1:%d", ports[1])
	nd := c.AddNode("n1", client, peer, filepath.Join(c.Dir, "n1"), []string{"--client-addr", client})
	nd.Env = []string{fakeEnv + "=" + mode}
	t.Cleanup(func() { nd.Kill() })
	return c, nd
}

func TestWaitReadyReportsAProcessThatExitsByItself(t *testing.T) {
	c, nd := fakeNode(t, "panic")
	if err := nd.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	err := nd.WaitReady(ctx)
	if !errors.Is(err, ErrExited) {
		t.Fatalf("WaitReady = %v, want %v", err, ErrExited)
	}
	var ne *NodeError
	if !errors.As(err, &ne) {
		t.Fatalf("WaitReady = %T, want a *NodeError", err)
	}
	if ne.Node != "n1" || ne.Status != "exit status 2" {
		t.Errorf("NodeError{Node: %q, Status: %q}, want n1, exit status 2", ne.Node, ne.Status)
	}
	for _, want := range []string{"panic: fake kvd: sealed segment without its index", "fake kvd: opening raft log"} {
		if !strings.Contains(ne.LogTail, want) {
			t.Errorf("LogTail = %q, want it to contain %q", ne.LogTail, want)
		}
	}
	if strings.Contains(ne.LogTail, "fake kvd: line 5\n") {
		t.Errorf("LogTail = %q, want only the last lines", ne.LogTail)
	}
	for _, want := range []string{"kvd n1 ", "exit status 2", "sealed segment without its index"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	select {
	case <-c.Failed():
	default:
		t.Fatal("Failed() not closed after the node exited by itself")
	}
	if cerr := c.Err(); !errors.Is(cerr, ErrExited) || !strings.Contains(cerr.Error(), "kvd n1 ") {
		t.Errorf("Err() = %v, want n1's exit", cerr)
	}

	// The node can be started again after such an exit.
	nd.Env = []string{fakeEnv + "=serve"}
	if err := nd.Start(); err != nil {
		t.Fatalf("Start after the exit: %v", err)
	}
	if err := nd.WaitReady(ctx); err != nil {
		t.Errorf("WaitReady after the restart: %v", err)
	}
}

func TestWaitReadyGivesUpOnASilentProcess(t *testing.T) {
	c, nd := fakeNode(t, "silent")
	if err := nd.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	err := nd.WaitReady(ctx)
	var ne *NodeError
	if !errors.Is(err, ErrNotReady) || !errors.As(err, &ne) {
		t.Fatalf("WaitReady = %v, want a *NodeError wrapping %v", err, ErrNotReady)
	}
	if ne.Node != "n1" || !strings.Contains(ne.Status, "still running") || !strings.Contains(ne.LogTail, "fake kvd: line 30") {
		t.Errorf("NodeError = %+v, want n1, still running, its log tail", ne)
	}
	if err := nd.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err() = %v after a deliberate kill, want nil", err)
	}
}

func TestDeliberateStopsAreNoFailure(t *testing.T) {
	c, nd := fakeNode(t, "serve")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	steps := []struct {
		name string
		do   func() error
		want error // of WaitReady after the step
	}{
		{"start", nd.Start, nil},
		{"pause and resume", func() error { nd.Pause(); return nd.Resume() }, nil},
		{"kill", nd.Kill, ErrStopped},
		{"restart", nd.Start, nil},
		{"stop", nd.Stop, ErrStopped},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if err := nd.WaitReady(ctx); !errors.Is(err, s.want) {
			t.Fatalf("after %s: WaitReady = %v, want %v", s.name, err, s.want)
		}
	}
	select {
	case <-c.Failed():
		t.Errorf("Failed() closed after deliberate stops: %v", c.Err())
	default:
	}
}

func TestLogTail(t *testing.T) {
	lines := func(prefix string, n int) []string {
		var ls []string
		for i := 1; i <= n; i++ {
			ls = append(ls, fmt.Sprintf("%s %d", prefix, i))
		}
		return ls
	}
	join := func(parts ...[]string) string { return strings.Join(slices.Concat(parts...), "\n") + "\n" }
	tests := []struct {
		name, log, want string
	}{
		{"short", join([]string{"=== start 1"}, lines("l", 3)),
			"=== start 1\nl 1\nl 2\nl 3"},
		{"long", join(lines("l", 30)),
			strings.Join(lines("l", 30)[10:], "\n")},
		{"panic above the tail", join([]string{"=== start 2", "panic: boom"}, lines("frame", 25)),
			strings.Join(slices.Concat([]string{"panic: boom", "..."}, lines("frame", 25)[5:]), "\n")},
		{"panic of an earlier start", join([]string{"panic: old", "=== start 2"}, lines("l", 25)),
			strings.Join(lines("l", 25)[5:], "\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "n1.log")
			if err := os.WriteFile(path, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := logTail(path, 20); got != tt.want {
				t.Errorf("logTail = %q, want %q", got, tt.want)
			}
		})
	}
}
