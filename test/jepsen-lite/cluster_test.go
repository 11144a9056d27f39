package main

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/proccluster"
)

// fakeEnv makes the test binary act as kvd (see TestMain and
// proccluster.RunFakeKVDIfAsked, which lists the modes), so these tests
// build nothing.
const fakeEnv = "JEPSEN_LITE_FAKE_KVD"

func TestMain(m *testing.M) {
	proccluster.RunFakeKVDIfAsked(fakeEnv)
	os.Exit(m.Run())
}

func TestRunStopsOnANodeThatWillNotStart(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeEnv, "panic") // inherited by the nodes
	begin := time.Now()
	s, err := Run(Config{Nodes: 3, Duration: time.Minute, Seed: 1, Out: t.TempDir(), Kvd: exe})
	// The run was given a minute of workload: ending well inside it is what
	// shows the failure stopped the run (typically in well under a second).
	if d := time.Since(begin); d > 30*time.Second {
		t.Errorf("Run took %v of its 1m workload, want it to stop at once", d)
	}
	if !errors.Is(err, proccluster.ErrExited) {
		t.Fatalf("Run = %v, %v; want an error wrapping %v", s, err, proccluster.ErrExited)
	}
	var ne *proccluster.NodeError
	if !errors.As(err, &ne) || !slices.Contains([]string{"n1", "n2", "n3"}, ne.Node) {
		t.Errorf("Run error %q does not name the node", err)
	}
	for _, want := range []string{"exit status 2", "panic: fake kvd: sealed segment without its index", "fake kvd: opening raft log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Run error %q does not contain %q", err, want)
		}
	}
}

func TestHarnessFailsWhenARestartedNodeExits(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHarness(HarnessConfig{Kvd: exe, Dir: t.TempDir(), Nodes: 3, Env: []string{fakeEnv + "=serve"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.StartAll(); err != nil {
		t.Fatalf("StartAll: %v", err)
	}
	if err := h.WaitUp(); err != nil {
		t.Fatalf("WaitUp: %v", err)
	}

	// A deliberate kill and restart is no failure.
	h.Node(1).Kill()
	if err := h.Start(1); err != nil {
		t.Fatalf("Start(1): %v", err)
	}
	if err := h.WaitUp(); err != nil {
		t.Fatalf("WaitUp after a restart: %v", err)
	}

	// A restart that panics is, at once.
	h.Node(1).Kill()
	h.Node(1).Env = []string{fakeEnv + "=panic"}
	if err := h.Start(1); err != nil {
		t.Fatalf("Start(1): %v", err)
	}
	select {
	case <-h.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("Failed() not closed 5s after n2 panicked")
	}
	err = h.WaitUp()
	var ne *proccluster.NodeError
	if !errors.As(err, &ne) || ne.Node != "n2" || ne.Status != "exit status 2" || !strings.Contains(ne.LogTail, "sealed segment without its index") {
		t.Errorf("WaitUp = %v, want n2's exit with its log tail", err)
	}
	if !errors.Is(h.Err(), proccluster.ErrExited) {
		t.Errorf("Err() = %v, want %v", h.Err(), proccluster.ErrExited)
	}
}
