package main

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// TestSmoke is the smoke run: the default configuration against real kvd
// processes (75 s of workload, 90 s under -race), with TLS on every link and
// auth on (--tls). -short skips it.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke run skipped in -short mode")
	}
	out, err := os.MkdirTemp("", "jepsen-lite-smoke-")
	if err != nil {
		t.Fatal(err)
	}
	d := defaultDuration
	if raceEnabled {
		d = 90 * time.Second
	}
	// TLS on every link and auth on, as a cluster people trust runs.
	cfg := Config{Nodes: 3, Duration: d, Seed: uint64(time.Now().UnixNano()), Out: out, Log: testWriter{t}, TLS: true}
	s, err := Run(cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("results kept in %s", out)
			return
		}
		os.RemoveAll(out)
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var b bytes.Buffer
	PrintSummary(&b, s)
	t.Log("\n" + b.String())
	if !s.Pass {
		t.Errorf("jepsen-lite found violations (seed %d)", s.Seed)
	}
	if s.Ops < 20000 {
		t.Errorf("%d operations, want at least 20000", s.Ops)
	}
	if len(s.Faults) < 30 {
		t.Errorf("%d faults, want at least 30", len(s.Faults))
	}
	// Every workload took part: a checker judges only what its workload
	// did, and one that did nothing passes.
	for _, k := range []string{
		"register/write", "lock/acquire", "ttl/put-ttl", "memo/fill", "counter/add", "watch/write",
		"election/campaign", "election/resource", "election/proclaim", "election/observe", "election/leader",
		"bank/transfer", "bank/read-txn", "bank/read-list", "final/read-txn",
	} {
		if s.OpsByType[k][OK] == 0 {
			t.Errorf("no successful %s operation", k)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
